-- Database and roles for pricepipe; run by install.sh as the PostgreSQL superuser:
--
--   psql -v ON_ERROR_STOP=1 -v dbname=pricepipe -v writer=pricepipe_writer \
--        -v writer_password=... -v reader=pricepipe_reader -v reader_password=... \
--        -f roles.sql
--
-- Idempotent: every statement is guarded or repeatable, so re-running it (an
-- upgrade, a password rotation) changes nothing but the passwords. Values
-- reach SQL only through psql's :'var' (literal) and :"var" (identifier)
-- quoting or format('%I', '%L'): never pasted into the text.
--
-- * writer: owns the database and therefore every table the migrations
--   create (creating daily ticks partitions requires owning `ticks`).
-- * reader: may connect and SELECT, nothing else; default privileges extend
--   SELECT to tables the writer creates later (new migrations, partitions).

\set ON_ERROR_STOP on

SELECT format('CREATE ROLE %I LOGIN', :'writer')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'writer') \gexec
SELECT format('CREATE ROLE %I LOGIN', :'reader')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'reader') \gexec

ALTER ROLE :"writer" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'writer_password';
ALTER ROLE :"reader" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'reader_password';
-- Defence in depth beside the grants: the reader's sessions are read-only.
ALTER ROLE :"reader" SET default_transaction_read_only = on;

SELECT format('CREATE DATABASE %I OWNER %I', :'dbname', :'writer')
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'dbname') \gexec
ALTER DATABASE :"dbname" OWNER TO :"writer";

-- Nobody but the two roles may connect.
REVOKE ALL ON DATABASE :"dbname" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"dbname" TO :"writer";
GRANT CONNECT ON DATABASE :"dbname" TO :"reader";

\connect :"dbname"

-- PostgreSQL 15+ no longer lets PUBLIC create in schema public; grant the
-- writer explicitly so migrations work on every version.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO :"writer";
GRANT USAGE ON SCHEMA public TO :"reader";

GRANT SELECT ON ALL TABLES IN SCHEMA public TO :"reader";
ALTER DEFAULT PRIVILEGES FOR ROLE :"writer" IN SCHEMA public GRANT SELECT ON TABLES TO :"reader";
