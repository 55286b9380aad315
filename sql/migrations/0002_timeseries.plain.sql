-- Time series on plain PostgreSQL: native range partitioning, one partition per UTC month,
-- created on demand by velo_ensure_month_partition() (the sink calls it for the months it
-- sees), plus a DEFAULT partition so a row is never rejected for lack of a partition.
--
-- The primary keys are the natural keys of operators/records.py, ordered so that the key
-- index also serves the product's lookups: (market_id, selection_id, publish_time DESC)
-- is a backward scan of the runner_ticks key, (market_id, publish_time DESC) of the
-- market_ticks key. A second index on the same columns would only slow ingest.

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
) PARTITION BY RANGE (publish_time);
CREATE TABLE runner_ticks_default PARTITION OF runner_ticks DEFAULT;

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
) PARTITION BY RANGE (publish_time);
CREATE TABLE market_ticks_default PARTITION OF market_ticks DEFAULT;

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
) PARTITION BY RANGE (window_start);
CREATE TABLE window_aggregates_default PARTITION OF window_aggregates DEFAULT;

-- Create the partition of `parent` for the UTC month containing `month_start`; true when
-- created, false when it existed. Rows of that month already sitting in the DEFAULT
-- partition are moved into the new partition first (ATTACH would fail otherwise).
-- Safe to call from concurrent writers: a transaction-scoped advisory lock per partition.
CREATE FUNCTION velo_ensure_month_partition(parent text, month_start date)
RETURNS boolean
LANGUAGE plpgsql
AS $$
DECLARE
    first_day   timestamp := date_trunc('month', month_start::timestamp);
    lower_bound timestamptz := first_day AT TIME ZONE 'UTC';
    upper_bound timestamptz := (first_day + interval '1 month') AT TIME ZONE 'UTC';
    partition   text := format('%s_%s', parent, to_char(first_day, 'YYYY_MM'));
    key_column  text;
BEGIN
    IF to_regclass(quote_ident(partition)) IS NOT NULL THEN
        RETURN false;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('velo_partition:' || partition));
    -- Read pg_class with a fresh snapshot: an advisory lock does not refresh the catalog
    -- cache that to_regclass uses, so it could miss a partition another writer just made.
    IF EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE c.relname = partition AND n.nspname = current_schema()) THEN
        RETURN false;
    END IF;

    SELECT a.attname INTO STRICT key_column
    FROM pg_partitioned_table p
    JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0]
    WHERE p.partrelid = quote_ident(parent)::regclass;

    EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS)', partition, parent);
    EXECUTE format(
        'WITH moved AS (DELETE FROM %I WHERE %I >= $1 AND %I < $2 RETURNING *) '
        'INSERT INTO %I SELECT * FROM moved',
        parent || '_default', key_column, key_column, partition
    ) USING lower_bound, upper_bound;
    EXECUTE format(
        'ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
        parent, partition, lower_bound, upper_bound
    );
    RETURN true;
END;
$$;
