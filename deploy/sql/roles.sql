-- Database and roles for pricepipe; run by install.sh as the PostgreSQL superuser,
-- before the first migration:
--
--   psql -v ON_ERROR_STOP=1 -v dbname=pricepipe -v writer=pricepipe_writer \
--        -v reader=pricepipe_reader -v api=pricepipe_api -f roles.sql
--   (with \set writer_password ... and \set api_password ... fed on stdin)
--
-- Idempotent: every statement is guarded or repeatable, so re-running it (an
-- upgrade, a password rotation) changes nothing but the passwords. Values
-- reach SQL only through psql's :'var' (literal) and :"var" (identifier)
-- quoting or format('%I', '%L'): never pasted into the text.
--
-- * writer (LOGIN): owns the database and therefore every table the
--   migrations create (creating daily ticks partitions requires owning
--   `ticks`). Persist workers, jobs and migrations use it. It may not create
--   roles, so the reader group must exist before migrations run.
-- * reader (NOLOGIN group, `pricepipe_reader`: migration 0500 grants it
--   SELECT on the tables it creates): may read, nothing else.
-- * api (LOGIN, member of reader): what PRICEPIPE_DATABASE_READ_URL uses;
--   its sessions are read-only by default as well.

\set ON_ERROR_STOP on

SELECT format('CREATE ROLE %I LOGIN', :'writer')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'writer') \gexec
SELECT format('CREATE ROLE %I NOLOGIN', :'reader')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'reader') \gexec
SELECT format('CREATE ROLE %I LOGIN', :'api')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'api') \gexec

ALTER ROLE :"writer" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'writer_password';
ALTER ROLE :"reader" WITH NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
ALTER ROLE :"api" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'api_password';
GRANT :"reader" TO :"api";
-- Defence in depth beside the grants: the API's sessions are read-only.
ALTER ROLE :"api" SET default_transaction_read_only = on;

SELECT format('CREATE DATABASE %I OWNER %I', :'dbname', :'writer')
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'dbname') \gexec
ALTER DATABASE :"dbname" OWNER TO :"writer";

-- Nobody but these roles may connect.
REVOKE ALL ON DATABASE :"dbname" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"dbname" TO :"writer";
GRANT CONNECT ON DATABASE :"dbname" TO :"reader";

\connect :"dbname"

-- PostgreSQL 15+ no longer lets PUBLIC create in schema public; grant the
-- writer explicitly so migrations work on every version.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO :"writer";
GRANT USAGE ON SCHEMA public TO :"reader";

-- Tables that exist already (a re-run) and those the writer creates later.
GRANT SELECT ON ALL TABLES IN SCHEMA public TO :"reader";
ALTER DEFAULT PRIVILEGES FOR ROLE :"writer" IN SCHEMA public GRANT SELECT ON TABLES TO :"reader";
