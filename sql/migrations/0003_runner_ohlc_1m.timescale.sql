-- One-minute OHLC of last traded price and traded volume per runner, as a TimescaleDB
-- continuous aggregate. Same columns as the plain-PostgreSQL materialized view (see
-- 0003_runner_ohlc_1m.plain.sql for their meaning). first()/last() order by publish_time
-- only; two ticks of one runner in the same millisecond may tie (the plain view breaks the
-- tie on seq).
--
-- materialized_only = false: queries add the not-yet-materialized recent rows in real
-- time, so the view is current without a manual refresh. The policy materializes every
-- invalidated range (start_offset NULL = from the first row), so replays of old
-- recordings are aggregated too, not only the last hours.
CREATE MATERIALIZED VIEW runner_ohlc_1m
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT
    time_bucket(INTERVAL '1 minute', publish_time) AS bucket,
    market_id,
    selection_id,
    handicap,
    first(ltp, publish_time) FILTER (WHERE ltp IS NOT NULL) AS open_ltp,
    max(ltp) AS high_ltp,
    min(ltp) AS low_ltp,
    last(ltp, publish_time) FILTER (WHERE ltp IS NOT NULL) AS close_ltp,
    last(traded_volume, publish_time) - first(traded_volume, publish_time) AS volume,
    last(traded_volume, publish_time) AS traded_volume,
    count(*) AS ticks
FROM runner_ticks
GROUP BY time_bucket(INTERVAL '1 minute', publish_time), market_id, selection_id, handicap
WITH NO DATA;

SELECT add_continuous_aggregate_policy(
    continuous_aggregate => 'runner_ohlc_1m',
    start_offset => NULL::interval,
    end_offset => INTERVAL '1 minute',
    schedule_interval => INTERVAL '5 minutes',
    if_not_exists => TRUE
);

-- Same entry point as the plain path; here the policy and real-time aggregation keep the
-- view current, so there is nothing to do.
CREATE FUNCTION velo_refresh_ohlc()
RETURNS text
LANGUAGE sql
AS $$
    SELECT 'runner_ohlc_1m is a continuous aggregate: refreshed by its policy, real-time for recent rows'::text
$$;
