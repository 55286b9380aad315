-- Time series on TimescaleDB (>= 2.13, generalized create_hypertable/by_range API):
-- hypertables chunked on publish_time / window_start, columnar compression segmented by
-- runner, and a background policy compressing chunks once they are a week old.
--
-- Same columns and natural keys as 0002_timeseries.plain.sql (a test compares them). Keys
-- include the time column, as hypertables require. create_default_indexes => FALSE: the
-- keys already lead with market_id/selection_id and end in time, which is what the product
-- queries, and chunk exclusion handles pure time ranges without a separate time index.

CREATE EXTENSION IF NOT EXISTS timescaledb;

CREATE TABLE runner_ticks (
    market_id           text NOT NULL,
    selection_id        bigint NOT NULL,
    handicap            double precision NOT NULL,
    publish_time        timestamptz NOT NULL,
    seq                 bigint NOT NULL,
    status              text NOT NULL,
    in_play             boolean NOT NULL,
    best_back           double precision,
    best_back_size      double precision,
    best_lay            double precision,
    best_lay_size       double precision,
    ltp                 double precision,
    traded_volume       double precision NOT NULL,
    spread_ticks        integer,
    weight_of_money     double precision,
    implied_probability double precision,
    vwap                double precision,
    spn                 double precision,
    spf                 double precision,
    seconds_to_off      double precision,
    PRIMARY KEY (market_id, selection_id, publish_time, seq, handicap)
);
SELECT create_hypertable(
    relation => 'runner_ticks',
    dimension => by_range(column_name => 'publish_time', partition_interval => INTERVAL '1 day'),
    create_default_indexes => FALSE,
    if_not_exists => TRUE
);
ALTER TABLE runner_ticks SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'market_id, selection_id',
    timescaledb.compress_orderby = 'publish_time DESC, seq DESC, handicap'
);
SELECT add_compression_policy(
    hypertable => 'runner_ticks',
    compress_after => INTERVAL '7 days',
    if_not_exists => TRUE
);

CREATE TABLE market_ticks (
    market_id           text NOT NULL,
    publish_time        timestamptz NOT NULL,
    seq                 bigint NOT NULL,
    status              text NOT NULL,
    in_play             boolean NOT NULL,
    total_matched       double precision NOT NULL,
    back_overround      double precision,
    lay_overround       double precision,
    active_runners      integer NOT NULL,
    seconds_to_off      double precision,
    PRIMARY KEY (market_id, publish_time, seq)
);
SELECT create_hypertable(
    relation => 'market_ticks',
    dimension => by_range(column_name => 'publish_time', partition_interval => INTERVAL '7 days'),
    create_default_indexes => FALSE,
    if_not_exists => TRUE
);
ALTER TABLE market_ticks SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'market_id',
    timescaledb.compress_orderby = 'publish_time DESC, seq DESC'
);
SELECT add_compression_policy(
    hypertable => 'market_ticks',
    compress_after => INTERVAL '7 days',
    if_not_exists => TRUE
);

CREATE TABLE window_aggregates (
    market_id           text NOT NULL,
    selection_id        bigint NOT NULL,
    handicap            double precision NOT NULL,
    window_secs         integer NOT NULL,
    window_start        timestamptz NOT NULL,
    window_end          timestamptz NOT NULL,
    updates             integer NOT NULL,
    open_ltp            double precision,
    high_ltp            double precision,
    low_ltp             double precision,
    close_ltp           double precision,
    price_move_ticks    integer,
    traded_volume       double precision NOT NULL,
    back_added          double precision NOT NULL,
    back_removed        double precision NOT NULL,
    lay_added           double precision NOT NULL,
    lay_removed         double precision NOT NULL,
    wom_open            double precision,
    wom_close           double precision,
    PRIMARY KEY (market_id, selection_id, window_secs, window_start, handicap)
);
SELECT create_hypertable(
    relation => 'window_aggregates',
    dimension => by_range(column_name => 'window_start', partition_interval => INTERVAL '7 days'),
    create_default_indexes => FALSE,
    if_not_exists => TRUE
);
ALTER TABLE window_aggregates SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'market_id, selection_id',
    timescaledb.compress_orderby = 'window_start DESC, window_secs, handicap'
);
SELECT add_compression_policy(
    hypertable => 'window_aggregates',
    compress_after => INTERVAL '7 days',
    if_not_exists => TRUE
);
