-- Model win probabilities scored in the dataflow before the off; the same on both paths
-- (a few rows per runner per race: no partitioning needed).
-- Key: (market_id, selection_id, model_version, publish_time); rows are never updated.
CREATE TABLE predictions (
    market_id                text NOT NULL,
    selection_id             bigint NOT NULL,
    publish_time             timestamptz NOT NULL,
    model_version            text NOT NULL,
    market_probability       double precision NOT NULL,
    fundamental_probability  double precision NOT NULL,
    win_probability          double precision NOT NULL,
    PRIMARY KEY (market_id, selection_id, model_version, publish_time)
);
-- "Latest prices and model view of this race": by market, newest first.
CREATE INDEX predictions_by_market_time ON predictions (market_id, publish_time DESC);
