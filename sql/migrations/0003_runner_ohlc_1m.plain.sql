-- One-minute OHLC of last traded price and traded volume per runner, as a materialized
-- view on plain PostgreSQL. Same columns as the TimescaleDB continuous aggregate:
--   bucket           minute start (UTC-aligned, like time_bucket)
--   open/high/low/close_ltp   over ticks with a last traded price, ordered by (publish_time, seq)
--   volume           change of the runner's cumulative traded volume within the minute
--   traded_volume    cumulative traded volume at the minute's last tick
--   ticks            runner ticks in the minute
-- The exact volume matched in a minute is traded_volume minus the previous bucket's
-- traded_volume (lag() over the runner), because a minute's first tick already carries
-- what traded since the previous tick.
CREATE MATERIALIZED VIEW runner_ohlc_1m AS
SELECT
    date_bin(INTERVAL '1 minute', publish_time, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket,
    market_id,
    selection_id,
    handicap,
    (array_agg(ltp ORDER BY publish_time, seq) FILTER (WHERE ltp IS NOT NULL))[1] AS open_ltp,
    max(ltp) AS high_ltp,
    min(ltp) AS low_ltp,
    (array_agg(ltp ORDER BY publish_time DESC, seq DESC) FILTER (WHERE ltp IS NOT NULL))[1]
        AS close_ltp,
    (array_agg(traded_volume ORDER BY publish_time DESC, seq DESC))[1]
        - (array_agg(traded_volume ORDER BY publish_time, seq))[1] AS volume,
    (array_agg(traded_volume ORDER BY publish_time DESC, seq DESC))[1] AS traded_volume,
    count(*) AS ticks
FROM runner_ticks
GROUP BY 1, 2, 3, 4
WITH DATA;

-- Required by REFRESH ... CONCURRENTLY, and the lookup the charts use.
CREATE UNIQUE INDEX runner_ohlc_1m_key ON runner_ohlc_1m (market_id, selection_id, handicap, bucket);

-- Bring runner_ohlc_1m up to date; readers are not blocked (CONCURRENTLY) once the view
-- has been populated. `velo db refresh` calls this; the TimescaleDB path has a no-op twin.
CREATE FUNCTION velo_refresh_ohlc()
RETURNS text
LANGUAGE plpgsql
AS $$
BEGIN
    IF (SELECT ispopulated FROM pg_matviews
        WHERE matviewname = 'runner_ohlc_1m' AND schemaname = current_schema()) THEN
        REFRESH MATERIALIZED VIEW CONCURRENTLY runner_ohlc_1m;
        RETURN 'runner_ohlc_1m refreshed concurrently';
    END IF;
    REFRESH MATERIALIZED VIEW runner_ohlc_1m;
    RETURN 'runner_ohlc_1m refreshed';
END;
$$;
