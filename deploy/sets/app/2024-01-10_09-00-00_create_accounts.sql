-- Accounts of the example application; portable between PostgreSQL and MySQL/MariaDB.
CREATE TABLE accounts (
    id         BIGINT PRIMARY KEY,
    email      VARCHAR(255) NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);
