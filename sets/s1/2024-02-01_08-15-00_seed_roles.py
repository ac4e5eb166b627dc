"""Roles, seeded from Python so the list lives next to the code that uses it."""

ROLES = ["admin", "editor", "viewer"]


def up(db):
    db.execute("CREATE TABLE roles (name TEXT PRIMARY KEY, description TEXT NOT NULL)")
    for role in ROLES:
        db.execute("INSERT INTO roles (name, description) VALUES (?, ?)", (role, f"{role} role"))
