CREATE TABLE daily_report (
    day      TEXT PRIMARY KEY,   -- ISO date
    signups  INTEGER NOT NULL DEFAULT 0,
    note     TEXT               -- free text, e.g. 'résumé; déjà vu'
);
