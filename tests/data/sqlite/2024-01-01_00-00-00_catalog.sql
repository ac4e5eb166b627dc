-- Catalog of a small web shop; the statements below are what the sqlite3 shell runs.
-- Comments hold ';' and even a fake end: END; COMMIT; -- none of it is SQL.
/* A block comment; with "quotes", 'quotes' and a ; or two;
   spanning lines. */

PRAGMA foreign_keys = ON;

CREATE TABLE customer (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    email       TEXT    NOT NULL COLLATE NOCASE UNIQUE,
    full_name   TEXT    NOT NULL DEFAULT '',             -- e.g. 'Doe; John'
    country     TEXT    NOT NULL DEFAULT 'DE' CHECK (length(country) = 2),
    status      TEXT    NOT NULL DEFAULT 'active'
                CHECK (status IN ('active', 'suspended; pending review', 'closed -- for good')),
    created_at  INTEGER NOT NULL DEFAULT (strftime('%s', 'now')),
    note        TEXT CHECK (note IS NULL OR note NOT LIKE '%--%;%')
);

CREATE TABLE product (
    sku         TEXT PRIMARY KEY,
    title       TEXT NOT NULL,
    price_cents INTEGER NOT NULL CHECK (price_cents >= 0),
    vat_rate    REAL NOT NULL DEFAULT 0.19 CHECK (vat_rate BETWEEN 0 AND 1),
    gross_cents INTEGER GENERATED ALWAYS AS (CAST(round(price_cents * (1 + vat_rate)) AS INTEGER)) VIRTUAL,
    tags        TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(tags)),
    discontinued INTEGER NOT NULL DEFAULT 0 CHECK (discontinued IN (0, 1))
) WITHOUT ROWID;

CREATE TABLE "order" (
    id          INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES customer (id) ON DELETE CASCADE,
    state       TEXT NOT NULL DEFAULT 'cart'
                CHECK (state IN ('cart', 'paid', 'shipped', 'cancelled')),
    total_cents INTEGER NOT NULL DEFAULT 0,
    updated_at  INTEGER
);

CREATE TABLE order_line (
    order_id    INTEGER NOT NULL REFERENCES "order" (id) ON DELETE CASCADE,
    sku         TEXT    NOT NULL REFERENCES product (sku),
    qty         INTEGER NOT NULL CHECK (qty > 0),
    unit_cents  INTEGER NOT NULL,
    PRIMARY KEY (order_id, sku)
);

CREATE TABLE [audit; trail] (
    id     INTEGER PRIMARY KEY,
    `table` TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT,
    at     INTEGER NOT NULL DEFAULT (unixepoch())
);

CREATE TABLE setting (key TEXT PRIMARY KEY, value ANY) STRICT;

-- Partial and expression indexes.
CREATE INDEX customer_active_email ON customer (email) WHERE status = 'active';
CREATE UNIQUE INDEX product_title_live ON product (lower(title)) WHERE discontinued = 0;
CREATE INDEX order_open ON "order" (customer_id, updated_at DESC) WHERE state IN ('cart', 'paid');

-- Totals stay right whatever touches the lines; trigger bodies hold ';', CASE ... END and strings with ';'.
CREATE TRIGGER order_line_ai AFTER INSERT ON order_line
BEGIN
    UPDATE "order"
       SET total_cents = total_cents + NEW.qty * NEW.unit_cents,
           updated_at  = unixepoch()
     WHERE id = NEW.order_id;
    INSERT INTO [audit; trail] (`table`, action, detail)
    VALUES ('order_line', 'insert',
            CASE WHEN NEW.qty > 10 THEN 'bulk; ' || NEW.qty || ' x ' || NEW.sku
                 WHEN NEW.qty = 1 THEN 'single'
                 ELSE 'qty ' || NEW.qty END);
END;

CREATE TRIGGER order_line_ad AFTER DELETE ON order_line
BEGIN
    UPDATE "order" SET total_cents = total_cents - OLD.qty * OLD.unit_cents, updated_at = unixepoch()
     WHERE id = OLD.order_id;
END;

CREATE TRIGGER order_state_guard BEFORE UPDATE OF state ON "order"
WHEN OLD.state = 'cancelled' AND NEW.state <> 'cancelled'
BEGIN
    SELECT RAISE(ABORT, 'order cancelled; it cannot change state -- open a new one');
END;

CREATE TRIGGER order_state_audit AFTER UPDATE OF state ON "order"
FOR EACH ROW WHEN OLD.state IS NOT NEW.state
BEGIN
    INSERT INTO [audit; trail] (`table`, action, detail)
    VALUES ('order', 'state',
            CASE NEW.state
                WHEN 'paid'      THEN 'paid; ' || printf('%.2f', NEW.total_cents / 100.0) || ' €'
                WHEN 'shipped'   THEN 'shipped'
                WHEN 'cancelled' THEN 'cancelled; was ' || OLD.state
                ELSE 'other'
            END);
    UPDATE "order" SET updated_at = unixepoch() WHERE id = NEW.id;
END;

CREATE VIEW order_summary AS
SELECT o.id,
       c.email,
       o.state,
       count(l.sku)                          AS lines,
       coalesce(sum(l.qty * l.unit_cents), 0) AS total_cents,
       CASE WHEN o.state = 'cart' THEN 'open; editable' ELSE 'closed' END AS phase
  FROM "order" o
  JOIN customer c ON c.id = o.customer_id
  LEFT JOIN order_line l ON l.order_id = o.id
 GROUP BY o.id;

-- Writable view: INSTEAD OF trigger.
CREATE VIEW customer_directory AS SELECT id, email, full_name FROM customer WHERE status = 'active';
CREATE TRIGGER customer_directory_ins INSTEAD OF INSERT ON customer_directory
BEGIN
    INSERT INTO customer (email, full_name) VALUES (NEW.email, coalesce(NEW.full_name, ''));
END;

INSERT INTO customer (email, full_name, country) VALUES
    ('jürgen@example.de', 'Jürgen Müller; GmbH', 'DE'),
    ('yuki@example.jp',   '佐藤 由紀',             'JP'),
    ('ana@example.pt',    'Ana ''Nini'' Conceição', 'PT');
INSERT INTO product (sku, title, price_cents, tags) VALUES
    ('MUG-01',  'Mug "☕; large"',  1290, '["kitchen", "gift"]'),
    ('TEE-42',  'T-shirt -- 42',   2500, '[]'),
    ('BOOK-π',  'Ψ; a novel',      1999, '["books"]');
INSERT INTO "order" (id, customer_id) VALUES (1, 1), (2, 2);
INSERT INTO order_line VALUES (1, 'MUG-01', 2, 1290), (1, 'TEE-42', 12, 2500), (2, 'BOOK-π', 1, 1999);
UPDATE "order" SET state = 'paid' WHERE id = 1;
INSERT INTO customer_directory (email, full_name) VALUES ('new@example.org', 'Ñew Ûser');
INSERT INTO setting VALUES ('greeting', 'Grüß Gott; servus'), ('max_cart', 50);
