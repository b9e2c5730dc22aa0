-- The sinks' own database role (issue 11): it creates and writes its tables in a schema of its own and cannot
-- read Django's tables. Run once by the postgres image on an empty data volume (docker-entrypoint-initdb.d,
-- docker-compose.yml), as the owner role (POSTGRES_USER) connected to Django's database (POSTGRES_DB):
--   psql -v ON_ERROR_STOP=1 -U hubsched -d hubsched -f deploy/postgres-init.sql
-- Reads from the environment (psql's \getenv, PostgreSQL 15+; never a command line):
--   HUBSCHED_SINK_PASSWORD  the role's password (required)
--   HUBSCHED_SINK_ROLE      the role's name, also its schema's (default hubsched_sink)
-- The sink's URL then names the role: postgresql+psycopg2://hubsched_sink:PASSWORD@postgres:5432/hubsched

\set ON_ERROR_STOP on
\getenv sink_password HUBSCHED_SINK_PASSWORD
\getenv sink_role HUBSCHED_SINK_ROLE
\if :{?sink_role}
\else
  \set sink_role hubsched_sink
\endif
\if :{?sink_password}
\else
  \set sink_password ''
\endif
SELECT :'sink_password' = '' AS sink_password_missing \gset
\if :sink_password_missing
  DO $$ BEGIN RAISE EXCEPTION 'HUBSCHED_SINK_PASSWORD is not set: the sink role needs a password'; END $$;
\endif

-- No superuser, no databases or roles of its own; NOINHERIT: it gets no privilege through a role it joins later.
CREATE ROLE :"sink_role" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION PASSWORD :'sink_password';

-- Its tables live in its own schema, which it owns (create, write, index, drop); its search_path starts there, so
-- the sinks' unqualified table names (hubsched_values, its ledger) land in it.
CREATE SCHEMA :"sink_role" AUTHORIZATION :"sink_role";
ALTER ROLE :"sink_role" IN DATABASE :"DBNAME" SET search_path = :"sink_role";

-- Django's tables are in schema public, owned by the owner role, with no grant to anyone: the sink role cannot read
-- them. Take away PUBLIC's USAGE on that schema too, so the sink role can neither look up nor create objects there;
-- the owner role keeps everything (PostgreSQL 15: public belongs to pg_database_owner, the database's owner).
REVOKE ALL ON SCHEMA public FROM PUBLIC;
