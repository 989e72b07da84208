-- 0004: trades and quotes replace ticks; bars are built from trades only,
-- with traded volume, notional (for VWAP) and the trade count.
--
-- Existing ticks become trades (a size of 0 becomes unknown, NULL: a trade
-- of nothing is not a trade), their bars are recomputed, then the ticks
-- table goes. Both new tables are partitioned by day like ticks were, and
-- idempotent the same way: the primary key holds the packed Redis entry ID
-- (pricepipe.codec.pack_entry_id), so a redelivered entry conflicts instead
-- of adding a row. Trades also have the venue's trade id, unique per
-- symbol and event time, so a trade that arrives both live and from a
-- backfill or a gap repair is stored once.
--
-- Two indexes per table serve every read: the primary key (symbol,
-- entry_id, ts) reads a range of entry IDs in stream order (filling a
-- reader's gap exactly); (symbol, ts, ...) reads a time range. For trades
-- the venue-id key is that time index too. Unique keys of a partitioned
-- table must hold the partition column ts, hence its place in both.

-- Daily partitions named <parent>_YYYYMMDD. Identifiers are quoted with
-- format('%I'); values never reach SQL text.
CREATE FUNCTION ensure_partitions(parent text, first_day date, last_day date)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    day date := first_day;
    created integer := 0;
    part text;
BEGIN
    IF parent NOT IN ('trades', 'quotes') THEN
        RAISE EXCEPTION 'not a partitioned event table: %', parent;
    END IF;
    WHILE day <= last_day LOOP
        part := parent || '_' || to_char(day, 'YYYYMMDD');
        IF to_regclass(format('%I', part)) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE IF NOT EXISTS %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                part, parent,
                (day::timestamp AT TIME ZONE 'UTC'),
                ((day + 1)::timestamp AT TIME ZONE 'UTC'));
            created := created + 1;
        END IF;
        day := day + 1;
    END LOOP;
    RETURN created;
END;
$$;

-- In PostgreSQL NaN compares greater than every number, so "x < 'Infinity'"
-- also rules out NaN. The checks refuse what pricepipe.events refuses, as
-- defence in depth (rows loaded by hand, other writers).
CREATE TABLE trades (
    symbol    text             NOT NULL,
    ts        timestamptz      NOT NULL,
    price     double precision NOT NULL
        CHECK (price > 0 AND price < 'Infinity'::double precision),
    size      double precision
        CHECK (size IS NULL OR (size > 0 AND size < 'Infinity'::double precision)),
    side      text             CHECK (side IN ('buy', 'sell')),
    trade_id  text,
    source    text             NOT NULL,
    recv_ts   timestamptz,
    entry_id  bigint           NOT NULL,
    PRIMARY KEY (symbol, entry_id, ts)
) PARTITION BY RANGE (ts);

-- NULL trade ids (sources without them) never conflict with each other.
CREATE UNIQUE INDEX trades_venue_id ON trades (symbol, ts, trade_id);

CREATE TABLE quotes (
    symbol    text             NOT NULL,
    ts        timestamptz      NOT NULL,
    bid       double precision CHECK (bid > 0 AND bid < 'Infinity'::double precision),
    bid_size  double precision CHECK (bid_size >= 0 AND bid_size < 'Infinity'::double precision),
    ask       double precision CHECK (ask > 0 AND ask < 'Infinity'::double precision),
    ask_size  double precision CHECK (ask_size >= 0 AND ask_size < 'Infinity'::double precision),
    source    text             NOT NULL,
    recv_ts   timestamptz,
    entry_id  bigint           NOT NULL,
    PRIMARY KEY (symbol, entry_id, ts),
    CHECK (bid IS NOT NULL OR ask IS NOT NULL),
    CHECK (bid_size IS NULL OR bid IS NOT NULL),
    CHECK (ask_size IS NULL OR ask IS NOT NULL),
    CHECK (bid IS NULL OR ask IS NULL OR bid <= ask)
) PARTITION BY RANGE (ts);

CREATE INDEX quotes_time ON quotes (symbol, ts);

SELECT ensure_partitions('trades', d, d)
  FROM (SELECT DISTINCT (ts AT TIME ZONE 'UTC')::date AS d FROM ticks) AS days;

INSERT INTO trades (symbol, ts, price, size, side, trade_id, source, recv_ts, entry_id)
SELECT symbol, ts, price, nullif(size, 0), NULL, NULL, source, recv_ts, entry_id FROM ticks;

-- One-minute bars of trades. open/close are the prices of the earliest and
-- latest trade of the minute by (ts, entry_id); open_key/close_key keep that
-- order key so a late trade replaces them only when it really is earlier
-- or later. volume and notional (sum of price * size) count trades with a
-- size; vwap = notional / volume.
DROP TABLE bars_1m;
CREATE TABLE bars_1m (
    symbol       text             NOT NULL,
    bucket       timestamptz      NOT NULL,   -- start of the minute, UTC
    open         double precision NOT NULL,
    high         double precision NOT NULL,
    low          double precision NOT NULL,
    close        double precision NOT NULL,
    volume       double precision NOT NULL DEFAULT 0,
    notional     double precision NOT NULL DEFAULT 0,
    trade_count  bigint           NOT NULL,
    open_ts      timestamptz      NOT NULL,
    open_entry   bigint           NOT NULL,
    close_ts     timestamptz      NOT NULL,
    close_entry  bigint           NOT NULL,
    PRIMARY KEY (symbol, bucket)
);

INSERT INTO bars_1m (symbol, bucket, open, high, low, close, volume, notional, trade_count,
                     open_ts, open_entry, close_ts, close_entry)
SELECT symbol, date_bin(interval '1 minute', ts, timestamptz 'epoch') AS bucket,
       (array_agg(price ORDER BY ts, entry_id))[1], max(price), min(price),
       (array_agg(price ORDER BY ts DESC, entry_id DESC))[1],
       coalesce(sum(size), 0), coalesce(sum(price * size), 0), count(*),
       min(ts), (array_agg(entry_id ORDER BY ts, entry_id))[1],
       max(ts), (array_agg(entry_id ORDER BY ts DESC, entry_id DESC))[1]
  FROM trades
 GROUP BY 1, 2;

DROP TABLE ticks;
DROP FUNCTION ensure_tick_partitions(date, date);

SELECT ensure_partitions(parent, (now() AT TIME ZONE 'UTC')::date - 1,
                         (now() AT TIME ZONE 'UTC')::date + 7)
  FROM (VALUES ('trades'), ('quotes')) AS p(parent);
