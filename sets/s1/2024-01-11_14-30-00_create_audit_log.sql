CREATE TABLE audit_log (
    id      INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users (id),
    action  TEXT NOT NULL,
    at      INTEGER NOT NULL DEFAULT (strftime('%s', 'now'))
);

-- Every change to a user is written to the audit log; the body holds ';'.
CREATE TRIGGER users_audit_update AFTER UPDATE ON users
BEGIN
    INSERT INTO audit_log (user_id, action)
    VALUES (NEW.id, CASE WHEN OLD.email <> NEW.email THEN 'email changed; was ' || OLD.email ELSE 'updated' END);
END;
