-- Labelled alerts: one row per analysed alert, the eight model features (NULL = missing), the analyst's
-- label and when it was given. Training reads the rows labelled within the lookback window.
CREATE TABLE IF NOT EXISTS labelled_alerts (
    alert_id                  text PRIMARY KEY,
    caller                    text NOT NULL,
    call_rate_per_hour        double precision,  -- calls/hour
    avg_call_duration_s       double precision,  -- seconds
    unique_destinations_ratio double precision,  -- 0-1
    international_ratio       double precision,  -- 0-1
    short_call_ratio          double precision,  -- 0-1, calls shorter than 10 s
    night_call_ratio          double precision,  -- 0-1, calls 00:00-06:00 local time
    cli_mismatch_ratio        double precision,  -- 0-1
    sim_age_days              double precision,  -- days since SIM activation
    is_fraud                  smallint NOT NULL CHECK (is_fraud IN (0, 1)),
    labelled_at               timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS labelled_alerts_labelled_at_idx ON labelled_alerts (labelled_at);
