-- Reporting: a recursive calendar view, window functions, an UPSERT trigger and a
-- final PRAGMA without a semicolon, as hand-written scripts often end.
CREATE TABLE daily_sales (
    day         TEXT PRIMARY KEY CHECK (day = date(day)),
    orders      INTEGER NOT NULL DEFAULT 0,
    revenue     INTEGER NOT NULL DEFAULT 0,
    remark      TEXT    -- free text: 'storm; shop closed early'
);

CREATE TRIGGER order_paid_sales AFTER UPDATE OF state ON "order"
WHEN NEW.state = 'paid'
BEGIN
    INSERT INTO daily_sales (day, orders, revenue)
    VALUES (date('now'), 1, NEW.total_cents)
    ON CONFLICT (day) DO UPDATE SET orders = orders + 1,
                                    revenue = revenue + excluded.revenue,
                                    remark = CASE WHEN daily_sales.orders + 1 >= 100
                                                  THEN 'record day; ' || (daily_sales.orders + 1)
                                                  ELSE daily_sales.remark END;
END;

CREATE VIEW calendar_2024 AS
WITH RECURSIVE d(day) AS (
    SELECT '2024-01-01'
    UNION ALL
    SELECT date(day, '+1 day') FROM d WHERE day < '2024-12-31'
)
SELECT day, strftime('%W', day) AS week FROM d;

CREATE VIEW sales_ranked AS
SELECT day, revenue,
       rank() OVER (ORDER BY revenue DESC) AS rnk,
       sum(revenue) OVER (ORDER BY day ROWS BETWEEN 6 PRECEDING AND CURRENT ROW) AS week_revenue
  FROM daily_sales;

INSERT INTO daily_sales (day, orders, revenue, remark) VALUES
    ('2024-01-02', 3, 7410, 'storm; shop closed early'),
    ('2024-01-03', 5, 12990, NULL);

ALTER TABLE customer ADD COLUMN loyalty TEXT NOT NULL DEFAULT 'bronze' CHECK (loyalty IN ('bronze', 'silver', 'gold'));
ALTER TABLE note RENAME COLUMN lang TO language;
DROP INDEX order_open;
CREATE INDEX order_open ON "order" (customer_id) WHERE state = 'cart';

pragma user_version = 7
