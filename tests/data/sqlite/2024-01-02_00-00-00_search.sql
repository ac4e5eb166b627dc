-- Full-text search over products and notes, kept in sync by triggers
-- (the external-content pattern from the FTS5 documentation; 'delete' rows; included).

CREATE TABLE note (
    id      INTEGER PRIMARY KEY,
    title   TEXT NOT NULL,
    body    TEXT NOT NULL DEFAULT '',
    lang    TEXT NOT NULL DEFAULT 'en' CHECK (lang GLOB '[a-z][a-z]')
);

CREATE VIRTUAL TABLE note_fts USING fts5(
    title, body,
    content = 'note', content_rowid = 'id',
    tokenize = "unicode61 remove_diacritics 2 tokenchars '-_'"
);

CREATE TRIGGER note_fts_ai AFTER INSERT ON note BEGIN
  INSERT INTO note_fts (rowid, title, body) VALUES (new.id, new.title, new.body);
END;
CREATE TRIGGER note_fts_ad AFTER DELETE ON note BEGIN
  INSERT INTO note_fts (note_fts, rowid, title, body) VALUES ('delete', old.id, old.title, old.body);
END;
CREATE TRIGGER note_fts_au AFTER UPDATE ON note BEGIN
  INSERT INTO note_fts (note_fts, rowid, title, body) VALUES ('delete', old.id, old.title, old.body);
  INSERT INTO note_fts (rowid, title, body) VALUES (new.id, new.title, new.body);
END;

-- A contentless-delete index over product titles, filled by a trigger with a CASE ... END.
CREATE VIRTUAL TABLE product_fts USING fts5(sku UNINDEXED, title, kind, prefix = '2 3');
CREATE TRIGGER product_fts_ai AFTER INSERT ON product BEGIN
  INSERT INTO product_fts (sku, title, kind)
  VALUES (new.sku, new.title,
          CASE
            WHEN new.tags LIKE '%"books"%' THEN 'book; printed'
            WHEN new.price_cents > 2000 THEN 'premium'
            ELSE 'standard'
          END);
END;
CREATE TRIGGER product_fts_ad AFTER DELETE ON product BEGIN
  DELETE FROM product_fts WHERE sku = old.sku;
END;
INSERT INTO product_fts (sku, title, kind) SELECT sku, title, 'backfill; initial' FROM product;

-- An R*Tree for delivery zones and a plain vocabulary view over the index.
CREATE VIRTUAL TABLE zone_box USING rtree(id, min_lat, max_lat, min_lon, max_lon);
CREATE VIRTUAL TABLE note_vocab USING fts5vocab(note_fts, 'row');

INSERT INTO note (title, body, lang) VALUES
  ('Café opening hours', 'Mon–Fri 8:00–18:00; closed on Sundays -- and holidays', 'en'),
  ('Öffnungszeiten', 'Mo–Fr 8–18 Uhr; sonntags geschlossen', 'de'),
  ('営業時間', '月曜〜金曜; 日曜定休', 'ja');
UPDATE note SET body = body || ' (updated; twice)' WHERE lang = 'de';
INSERT INTO product (sku, title, price_cents, tags) VALUES ('LAMP-7', 'Lamp; brass', 4900, '["home"]');
INSERT INTO zone_box VALUES (1, 47.3, 55.1, 5.9, 15.0), (2, 35.6, 35.8, 139.6, 139.9);

CREATE VIEW note_search AS
SELECT n.id, n.title, snippet(note_fts, 1, '[', ']', '…', 8) AS excerpt, bm25(note_fts) AS rank
  FROM note_fts JOIN note n ON n.id = note_fts.rowid
