-- 0500: pricepipe_reader, the read-only role of the HTTP API (least privilege).
--
-- NOLOGIN: it is a group role. An operator creates the API's login role in it,
-- e.g. CREATE ROLE pricepipe_api LOGIN PASSWORD '...' IN ROLE pricepipe_reader;
-- and points PRICEPIPE_DATABASE_READ_URL at that login. Roles are shared by the
-- whole cluster (every database), hence the existence check: the role may
-- already be there from another database.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pricepipe_reader') THEN
        CREATE ROLE pricepipe_reader NOLOGIN;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA public TO pricepipe_reader;
-- Reading ticks through the partitioned parent checks the parent's grant only,
-- so daily partitions created later need no grant of their own.
GRANT SELECT ON ALL TABLES IN SCHEMA public TO pricepipe_reader;
-- Tables that later migrations create (as the same migrating role) too.
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO pricepipe_reader;
