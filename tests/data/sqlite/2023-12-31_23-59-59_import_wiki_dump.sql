PRAGMA foreign_keys=OFF;
BEGIN TRANSACTION;
CREATE TABLE wiki_page (id INTEGER PRIMARY KEY AUTOINCREMENT, slug TEXT NOT NULL UNIQUE, title TEXT NOT NULL, body TEXT NOT NULL, rev INTEGER NOT NULL DEFAULT 1 CHECK (rev > 0));
INSERT INTO wiki_page VALUES(1,'start','Start page',replace('Welcome!\nLine two; with a semicolon -- and dashes.\n/* not a comment */ END;','\n',char(10)),1);
INSERT INTO wiki_page VALUES(2,'naïve','Naïve café — über','Ünïcödé ✓ 日本語; ok (edited)',2);
INSERT INTO wiki_page VALUES(3,'quotes','It''s "quoted"','BEGIN TRANSACTION; COMMIT; -- inside a string',1);
CREATE TABLE wiki_revision (page_id INTEGER NOT NULL REFERENCES wiki_page(id), rev INTEGER NOT NULL, body TEXT NOT NULL, author TEXT, PRIMARY KEY (page_id, rev)) WITHOUT ROWID;
INSERT INTO wiki_revision VALUES(2,1,'Ünïcödé ✓ 日本語; ok','trigger; auto');
PRAGMA writable_schema=ON;
INSERT INTO sqlite_schema(type,name,tbl_name,rootpage,sql)VALUES('table','wiki_fts','wiki_fts',0,'CREATE VIRTUAL TABLE wiki_fts USING fts5(title, body, content=''wiki_page'', content_rowid=''id'')');
CREATE TABLE IF NOT EXISTS 'wiki_fts_data'(id INTEGER PRIMARY KEY, block BLOB);
INSERT INTO wiki_fts_data VALUES(1,X'030816');
INSERT INTO wiki_fts_data VALUES(10,X'000000000101010001010101');
INSERT INTO wiki_fts_data VALUES(137438953473,X'00000139023061010801010607020601010602026e6401060101080105626567696e030601010201046361666502020302066f6d6d656e74010601010c050269740306010104010664617368657301060101090106656469746564020601010502026e64010601010d0106696e73696465030601010502017403020201046c696e65010601010301056e6169766502020202026f74010601010a01026f6b0206010104010470616765010203010671756f7465640302040101730302030208656d69636f6c6f6e0106010107020474617274010202030472696e670306010107010b7472616e73616374696f6e03060101030202776f010601010401047562657202020402066e69636f64650206010102010777656c636f6d650106010102020369746801060101050109e697a5e69cace8aa9e0206010103040e090c090d090d0d090d060b0a0909090b060f090b1209090d0e0a');
CREATE TABLE IF NOT EXISTS 'wiki_fts_idx'(segid, term, pgno, PRIMARY KEY(segid, term)) WITHOUT ROWID;
INSERT INTO wiki_fts_idx VALUES(1,X'',2);
CREATE TABLE IF NOT EXISTS 'wiki_fts_docsize'(id INTEGER PRIMARY KEY, sz BLOB);
INSERT INTO wiki_fts_docsize VALUES(1,X'020c');
INSERT INTO wiki_fts_docsize VALUES(2,X'0304');
INSERT INTO wiki_fts_docsize VALUES(3,X'0306');
CREATE TABLE IF NOT EXISTS 'wiki_fts_config'(k PRIMARY KEY, v) WITHOUT ROWID;
INSERT INTO wiki_fts_config VALUES('version',4);
DELETE FROM sqlite_sequence;
INSERT INTO sqlite_sequence VALUES('wiki_page',4);
CREATE INDEX wiki_page_title ON wiki_page (title COLLATE NOCASE);
CREATE TRIGGER wiki_page_rev BEFORE UPDATE OF body ON wiki_page
BEGIN
  INSERT INTO wiki_revision (page_id, rev, body, author) VALUES (OLD.id, OLD.rev, OLD.body, 'trigger; auto');
END;
CREATE TRIGGER wiki_page_bump AFTER UPDATE OF body ON wiki_page
BEGIN
  UPDATE wiki_page SET rev = OLD.rev + 1 WHERE id = NEW.id;
END;
CREATE VIEW wiki_latest AS SELECT slug, title, rev, CASE WHEN length(body) > 40 THEN substr(body, 1, 40) || '…' ELSE body END AS teaser FROM wiki_page;
CREATE TRIGGER wiki_fts_au AFTER UPDATE ON wiki_page BEGIN INSERT INTO wiki_fts(wiki_fts, rowid, title, body) VALUES('delete', old.id, old.title, old.body); INSERT INTO wiki_fts(rowid, title, body) VALUES (new.id, new.title, new.body); END;
PRAGMA writable_schema=OFF;
COMMIT;
