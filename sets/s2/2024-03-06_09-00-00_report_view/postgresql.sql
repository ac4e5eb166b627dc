CREATE VIEW weekly_report AS
SELECT to_char(day::date, 'IYYY-IW') AS week, SUM(signups) AS signups
FROM daily_report GROUP BY 1;
