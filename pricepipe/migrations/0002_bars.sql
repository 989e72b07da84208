-- 0002: one-minute OHLCV bars, maintained incrementally by the persist
-- workers in the same transaction as the raw ticks (so they agree).
--
-- open/close are the prices of the earliest/latest tick of the minute by
-- (ts, entry_id); open_key/close_key keep that order key so a late tick
-- replaces open or close only when it really is earlier or later.
CREATE TABLE bars_1m (
    symbol       text             NOT NULL,
    bucket       timestamptz      NOT NULL,   -- start of the minute, UTC
    open         double precision NOT NULL,
    high         double precision NOT NULL,
    low          double precision NOT NULL,
    close        double precision NOT NULL,
    volume       double precision NOT NULL DEFAULT 0,
    tick_count   bigint           NOT NULL,
    open_ts      timestamptz      NOT NULL,
    open_entry   bigint           NOT NULL,
    close_ts     timestamptz      NOT NULL,
    close_entry  bigint           NOT NULL,
    PRIMARY KEY (symbol, bucket)
);
