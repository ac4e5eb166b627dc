# A hash comment; with a semicolon
-- a dash comment; with a semicolon
/* a block comment; with a semicolon */
CREATE TABLE `odd;name` (
  id INT PRIMARY KEY,
  `col;umn` VARCHAR(200) CHARACTER SET utf8mb4 NOT NULL COMMENT 'a comment; with a semicolon',
  note TEXT
) DEFAULT CHARSET=utf8mb4;

INSERT INTO `odd;name` VALUES
  (1, 'plain; semicolon', "double \"quoted\"; text"),
  (2, 'it''s; doubled quote', 'backslash \' quote; here'),
  (3, 'héllo wörld; ünïcode', '漢字; かな'),
  (4, 'emoji 🚀; 🎉', 'end -- not a comment; really');
/*!40101 SET @saved = 1 */;
INSERT INTO `odd;name` (id, `col;umn`) VALUES (5, 'after a versioned comment');
