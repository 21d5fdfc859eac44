-- Roles and the app's database, with least privilege. Run once, by
-- postgres/entrypoint.sh, on the first start of an empty data directory, as the
-- superuser. Each role gets a SCRAM-SHA-256 verifier (secrets/generate.py computes
-- it), which PostgreSQL stores as given: the password itself never reaches this
-- server, and is never stored here.
\set ON_ERROR_STOP on
\getenv owner_verifier INIT_OWNER_VERIFIER
\getenv app_verifier INIT_APP_VERIFIER
\getenv pgbouncer_auth_verifier INIT_PGBOUNCER_AUTH_VERIFIER
\getenv monitor_verifier INIT_MONITOR_VERIFIER

SET password_encryption = 'scram-sha-256';

-- Owns the database and its schema; runs migrations straight to PostgreSQL.
CREATE ROLE chat_owner LOGIN PASSWORD :'owner_verifier';

-- The app at runtime: reads and writes rows, cannot change the schema.
-- Membership in pooled_login is what lets PgBouncer's auth_query see its verifier.
CREATE ROLE pooled_login NOLOGIN;
CREATE ROLE chat_app LOGIN PASSWORD :'app_verifier' IN ROLE pooled_login;
-- Limits for every session of the app role (set at login, so they also hold on
-- PgBouncer's server connections without a SET through the pooler):
--   a runaway statement is cancelled, and a transaction left open by a crashed
--   client frees its server connection instead of pinning it for good.
ALTER ROLE chat_app SET statement_timeout = '5s';
ALTER ROLE chat_app SET idle_in_transaction_session_timeout = '10s';

-- PgBouncer's lookup user: may only call pgbouncer.user_lookup().
CREATE ROLE pgbouncer_auth LOGIN PASSWORD :'pgbouncer_auth_verifier';

-- The load test's monitor: reads pg_stat_activity for every role, nothing else.
CREATE ROLE chat_monitor LOGIN PASSWORD :'monitor_verifier' IN ROLE pg_monitor;

CREATE DATABASE chat OWNER chat_owner ENCODING 'UTF8' TEMPLATE template0;
REVOKE ALL ON DATABASE chat FROM PUBLIC;
GRANT CONNECT ON DATABASE chat TO chat_app, pgbouncer_auth, chat_monitor;

\connect chat

-- PostgreSQL 15+ owns "public" by pg_database_owner (chat_owner here) and gives
-- PUBLIC no CREATE; spelt out so the grant list is the whole story.
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO chat_app;

-- Tables and sequences chat_owner creates in migrations are usable by the app.
ALTER DEFAULT PRIVILEGES FOR ROLE chat_owner IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO chat_app;
ALTER DEFAULT PRIVILEGES FOR ROLE chat_owner IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO chat_app;
