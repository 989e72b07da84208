-- 0001: instruments, partitioned ticks, and the partition helper.

-- Metadata per symbol; the seed stockstreamer's stock_image_urls and
-- stock_highlow in one table.
CREATE TABLE instruments (
    symbol       text PRIMARY KEY,
    name         text,
    logo_url     text,
    currency     text,
    exchange     text,
    week52_high  double precision,
    week52_low   double precision,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Raw ticks, one row per stream entry. The primary key holds the packed Redis
-- entry ID (pricepipe.codec.pack_entry_id), so a redelivered entry conflicts
-- instead of adding a second row. It must include the partition key `ts`
-- (PostgreSQL: unique constraints on partitioned tables include all partition
-- columns), and its (symbol, ts) prefix serves symbol + time-range queries.
CREATE TABLE ticks (
    symbol    text             NOT NULL,
    ts        timestamptz      NOT NULL,
    price     double precision NOT NULL,
    size      double precision,
    source    text             NOT NULL,
    recv_ts   timestamptz,
    entry_id  bigint           NOT NULL,
    PRIMARY KEY (symbol, ts, entry_id)
) PARTITION BY RANGE (ts);

-- Daily partitions named ticks_YYYYMMDD, created ahead of time by
-- ensure_tick_partitions(first_day, last_day). Identifiers are quoted with
-- format('%I'); values never reach SQL text.
CREATE FUNCTION ensure_tick_partitions(first_day date, last_day date)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    day date := first_day;
    created integer := 0;
    part text;
BEGIN
    WHILE day <= last_day LOOP
        part := 'ticks_' || to_char(day, 'YYYYMMDD');
        IF to_regclass(format('%I', part)) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE IF NOT EXISTS %I PARTITION OF ticks FOR VALUES FROM (%L) TO (%L)',
                part,
                (day::timestamp AT TIME ZONE 'UTC'),
                ((day + 1)::timestamp AT TIME ZONE 'UTC'));
            created := created + 1;
        END IF;
        day := day + 1;
    END LOOP;
    RETURN created;
END;
$$;

SELECT ensure_tick_partitions((now() AT TIME ZONE 'UTC')::date - 1,
                              (now() AT TIME ZONE 'UTC')::date + 7);
