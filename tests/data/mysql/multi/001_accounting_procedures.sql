-- Session accounting for a network access server, in the style of a RADIUS
-- server's stored-procedure schema: each DELIMITER $$ chunk drops the old
-- procedure and creates the new one, two statements sent as one chunk.

CREATE TABLE acct_session (
  acct_id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  session_id VARCHAR(64) NOT NULL,
  username VARCHAR(64) NOT NULL DEFAULT '',
  nas_ip VARCHAR(45) NOT NULL DEFAULT '',
  start_time DATETIME NULL,
  update_time DATETIME NULL,
  stop_time DATETIME NULL,
  session_seconds INT UNSIGNED NULL,
  input_octets BIGINT UNSIGNED NOT NULL DEFAULT 0,
  output_octets BIGINT UNSIGNED NOT NULL DEFAULT 0,
  terminate_cause VARCHAR(32) NOT NULL DEFAULT '',
  UNIQUE KEY session_nas (session_id, nas_ip),
  KEY username (username)
) ENGINE=InnoDB;

CREATE TABLE usage_period (
  username VARCHAR(64) NOT NULL,
  period_start DATETIME NOT NULL,
  period_end DATETIME NULL,
  octets BIGINT UNSIGNED NOT NULL DEFAULT 0,
  PRIMARY KEY (username, period_start)
) ENGINE=InnoDB;

DELIMITER $$

DROP PROCEDURE IF EXISTS acct_start;
CREATE PROCEDURE acct_start (
  IN p_session_id VARCHAR(64),
  IN p_username VARCHAR(64),
  IN p_nas_ip VARCHAR(45),
  IN p_time DATETIME
)
SQL SECURITY INVOKER
BEGIN
  -- A retransmitted start must not create a second row; ';' inside a body is fine.
  INSERT INTO acct_session (session_id, username, nas_ip, start_time, update_time)
  VALUES (p_session_id, p_username, p_nas_ip, p_time, p_time)
  ON DUPLICATE KEY UPDATE update_time = p_time;
END$$

DROP PROCEDURE IF EXISTS acct_stop;
CREATE PROCEDURE acct_stop (
  IN p_session_id VARCHAR(64),
  IN p_nas_ip VARCHAR(45),
  IN p_time DATETIME,
  IN p_in BIGINT UNSIGNED,
  IN p_out BIGINT UNSIGNED,
  IN p_cause VARCHAR(32)
)
SQL SECURITY INVOKER
BEGIN
  DECLARE v_start DATETIME DEFAULT NULL;

  SELECT start_time INTO v_start FROM acct_session
  WHERE session_id = p_session_id AND nas_ip = p_nas_ip;

  IF v_start IS NULL THEN
    -- Stop without start: record what we know, as the accounting server does.
    INSERT INTO acct_session (session_id, nas_ip, stop_time, input_octets, output_octets, terminate_cause)
    VALUES (p_session_id, p_nas_ip, p_time, p_in, p_out, p_cause);
  ELSE
    UPDATE acct_session
    SET stop_time = p_time,
        session_seconds = TIMESTAMPDIFF(SECOND, v_start, p_time),
        input_octets = p_in,
        output_octets = p_out,
        terminate_cause = p_cause
    WHERE session_id = p_session_id AND nas_ip = p_nas_ip;
  END IF;
END$$

DROP PROCEDURE IF EXISTS new_usage_period;
CREATE PROCEDURE new_usage_period ()
SQL SECURITY INVOKER
BEGIN
  DECLARE v_start DATETIME;
  DECLARE v_end DATETIME;

  SELECT IFNULL(MAX(period_end), '1970-01-01 00:00:00') INTO v_start FROM usage_period;
  SET v_end = NOW();

  INSERT INTO usage_period (username, period_start, period_end, octets)
  SELECT username, v_start, v_end, SUM(input_octets + output_octets)
  FROM acct_session
  WHERE username <> '' AND IFNULL(stop_time, update_time) > v_start
  GROUP BY username
  ON DUPLICATE KEY UPDATE octets = octets + VALUES(octets);
END$$

DELIMITER ;

CALL acct_start('s-0001', 'alice', '192.0.2.1', '2024-05-01 10:00:00');
CALL acct_start('s-0001', 'alice', '192.0.2.1', '2024-05-01 10:00:00');
CALL acct_stop('s-0001', '192.0.2.1', '2024-05-01 10:30:00', 1000, 2500, 'User-Request');
