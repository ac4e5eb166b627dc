-- No DELIMITER: CREATE PROCEDURE ... BEGIN ... END; as the server's bootstrap reads it.
CREATE TABLE tally (k VARCHAR(20) PRIMARY KEY, n INT NOT NULL);

CREATE PROCEDURE bump(IN p_key VARCHAR(20))
BEGIN
  DECLARE existing INT DEFAULT NULL;
  SELECT n INTO existing FROM tally WHERE k = p_key;
  CASE
    WHEN existing IS NULL THEN INSERT INTO tally VALUES (p_key, 1);
    ELSE UPDATE tally SET n = n + 1 WHERE k = p_key;
  END CASE;
  label1: LOOP
    LEAVE label1;
  END LOOP label1;
  REPEAT
    SET existing = 0;
  UNTIL existing = 0 END REPEAT;
END;

CREATE TRIGGER tally_bi BEFORE INSERT ON tally FOR EACH ROW
BEGIN
  IF NEW.n IS NULL THEN
    SET NEW.n = 0;
  END IF;
END;

CALL bump('a');
CALL bump('a');
CALL bump('b');
