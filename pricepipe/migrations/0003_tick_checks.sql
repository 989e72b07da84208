-- 0003: the database refuses what the tick model refuses, as defence in
-- depth behind pricepipe.tick validation (rows loaded by hand, other
-- writers). In PostgreSQL NaN compares greater than every number, so
-- "price < 'Infinity'" also rules out NaN. A persist worker dead-letters a
-- row these checks refuse (see docs/workers.md).
ALTER TABLE ticks
    ADD CONSTRAINT ticks_price_finite_positive
        CHECK (price > 0 AND price < 'Infinity'::double precision),
    ADD CONSTRAINT ticks_size_finite_non_negative
        CHECK (size IS NULL OR (size >= 0 AND size < 'Infinity'::double precision));
