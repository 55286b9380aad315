-- Reference tables, the same on plain PostgreSQL and TimescaleDB.
-- Column order = field order of the records in operators/records.py.
-- No foreign keys: a market definition and its runners may land in different sink batches,
-- and the sink must never reject rows because of where a batch boundary fell.

-- Latest market definition; upserted, newest (version, last_publish_time) wins.
CREATE TABLE markets (
    market_id           text PRIMARY KEY,
    event_id            text,
    event_type_id       text,
    market_type         text,
    name                text,
    event_name          text,
    venue               text,
    country_code        text,
    market_time         timestamptz,
    number_of_winners   integer,
    status              text NOT NULL,
    in_play             boolean NOT NULL,
    bet_delay           integer NOT NULL,
    version             bigint NOT NULL,
    bsp_market          boolean NOT NULL,
    last_publish_time   timestamptz NOT NULL
);
-- Racecards and the live dashboard ask for markets still open, by start time.
CREATE INDEX markets_open_by_start ON markets (market_time) WHERE status <> 'CLOSED';
CREATE INDEX markets_by_event ON markets (event_id);

-- Latest runner definition; upserted, latest write wins.
CREATE TABLE runners (
    market_id           text NOT NULL,
    selection_id        bigint NOT NULL,
    handicap            double precision NOT NULL,
    name                text,
    sort_priority       integer,
    status              text NOT NULL,
    adjustment_factor   double precision,
    removal_date        timestamptz,
    bsp                 double precision,
    PRIMARY KEY (market_id, selection_id)
);
-- Field of a race without non-runners: the scorer reads only active runners.
CREATE INDEX runners_active ON runners (market_id, sort_priority) WHERE status = 'ACTIVE';

-- Settled outcome per runner (WINNER / LOSER / REMOVED / PLACED ...).
CREATE TABLE results (
    market_id           text NOT NULL,
    selection_id        bigint NOT NULL,
    handicap            double precision NOT NULL,
    status              text NOT NULL,
    bsp                 double precision,
    settled_time        timestamptz NOT NULL,
    PRIMARY KEY (market_id, selection_id, handicap)
);
CREATE INDEX results_by_settled_time ON results (settled_time);

-- Lines and messages that could not be used, with why; key (source, position, reason).
CREATE TABLE dead_letters (
    source              text NOT NULL,
    position            bigint NOT NULL,
    reason              text NOT NULL,
    raw                 text NOT NULL,
    recorded_time       timestamptz NOT NULL,
    PRIMARY KEY (source, position, reason)
);
CREATE INDEX dead_letters_recent ON dead_letters (recorded_time DESC);
