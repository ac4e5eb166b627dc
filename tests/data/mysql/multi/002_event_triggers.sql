--
-- Summary counters kept by triggers, in the style of a video-surveillance
-- system's triggers file: lower-case "delimiter //", a DROP ... IF EXISTS
-- in a chunk of its own, then chunks holding a DROP and a CREATE together,
-- bodies that end "END;" with the delimiter on the next line.
--

CREATE TABLE monitor (
  id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  name VARCHAR(64) NOT NULL
) ENGINE=InnoDB;

CREATE TABLE monitor_status (
  monitor_id INT UNSIGNED NOT NULL PRIMARY KEY,
  total_events INT UNSIGNED NOT NULL DEFAULT 0,
  total_disk_space BIGINT UNSIGNED NOT NULL DEFAULT 0,
  archived_events INT UNSIGNED NOT NULL DEFAULT 0
) ENGINE=InnoDB;

CREATE TABLE event (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  monitor_id INT UNSIGNED NOT NULL,
  disk_space BIGINT UNSIGNED NULL,
  archived TINYINT NOT NULL DEFAULT 0,
  KEY monitor_id (monitor_id)
) ENGINE=InnoDB;

delimiter //

DROP TRIGGER IF EXISTS monitor_insert_trigger//
CREATE TRIGGER monitor_insert_trigger AFTER INSERT ON monitor
FOR EACH ROW
  INSERT INTO monitor_status (monitor_id) VALUES (NEW.id);
//

DROP TRIGGER IF EXISTS event_insert_trigger;
CREATE TRIGGER event_insert_trigger AFTER INSERT ON event
FOR EACH ROW
BEGIN
  UPDATE monitor_status
  SET total_events = total_events + 1,
      total_disk_space = total_disk_space + IFNULL(NEW.disk_space, 0),
      archived_events = archived_events + IF(NEW.archived, 1, 0)
  WHERE monitor_id = NEW.monitor_id;
END;
//

DROP TRIGGER IF EXISTS event_update_trigger;
DROP TRIGGER IF EXISTS event_delete_trigger;
CREATE TRIGGER event_update_trigger AFTER UPDATE ON event
FOR EACH ROW
BEGIN
  DECLARE diff BIGINT DEFAULT 0;

  SET diff = CAST(IFNULL(NEW.disk_space, 0) AS SIGNED) - CAST(IFNULL(OLD.disk_space, 0) AS SIGNED);
  IF diff <> 0 OR NEW.archived <> OLD.archived THEN
    UPDATE monitor_status
    SET total_disk_space = CAST(total_disk_space AS SIGNED) + diff,
        archived_events = archived_events + (NEW.archived - OLD.archived)
    WHERE monitor_id = NEW.monitor_id;
  END IF;
END;
CREATE TRIGGER event_delete_trigger BEFORE DELETE ON event
FOR EACH ROW
BEGIN
  UPDATE monitor_status
  SET total_events = total_events - 1,
      total_disk_space = total_disk_space - IFNULL(OLD.disk_space, 0),
      archived_events = archived_events - IF(OLD.archived, 1, 0)
  WHERE monitor_id = OLD.monitor_id;
END;
//

delimiter ;

INSERT INTO monitor (name) VALUES ('front door'), ('back yard');
INSERT INTO event (monitor_id, disk_space, archived) VALUES (1, 100, 0), (1, 50, 1), (2, 10, 0);
UPDATE event SET disk_space = 300 WHERE id = 1;
DELETE FROM event WHERE id = 3;
