-- Routines and triggers the way the mysql/mariadb client reads them: DELIMITER blocks.
CREATE TABLE account (
  id INT PRIMARY KEY AUTO_INCREMENT,
  name VARCHAR(100) NOT NULL,
  balance DECIMAL(10, 2) NOT NULL DEFAULT 0
) ENGINE=InnoDB;

CREATE TABLE audit (
  id INT PRIMARY KEY AUTO_INCREMENT,
  account_id INT NOT NULL,
  note VARCHAR(255) NOT NULL
) ENGINE=InnoDB;

DELIMITER $$
CREATE TRIGGER account_ai AFTER INSERT ON account
FOR EACH ROW
BEGIN
  IF NEW.balance < 0 THEN
    INSERT INTO audit (account_id, note) VALUES (NEW.id, 'negative; opened in debt');
  ELSE
    INSERT INTO audit (account_id, note) VALUES (NEW.id, CONCAT('opened; balance ', NEW.balance));
  END IF;
END$$

CREATE PROCEDURE deposit(IN p_id INT, IN p_amount DECIMAL(10, 2))
BEGIN
  DECLARE v_count INT DEFAULT 0;
  SELECT COUNT(*) INTO v_count FROM account WHERE id = p_id;
  IF v_count = 0 THEN
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'no such account; nothing deposited';
  END IF;
  UPDATE account SET balance = balance + p_amount WHERE id = p_id;
END $$

CREATE FUNCTION double_it(x INT) RETURNS INT DETERMINISTIC
BEGIN
  RETURN x * 2;
END
$$
DELIMITER ;

DELIMITER //
CREATE PROCEDURE count_down(IN n INT)
BEGIN
  WHILE n > 0 DO
    SET n = n - 1;
  END WHILE;
END //
DELIMITER ;

INSERT INTO account (name, balance) VALUES ('alice', 10.50), ('bob', -3.00);
