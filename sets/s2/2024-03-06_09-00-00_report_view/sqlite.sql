CREATE VIEW weekly_report AS
SELECT strftime('%Y-%W', day) AS week, SUM(signups) AS signups
FROM daily_report GROUP BY 1
