-- PgBouncer's auth_query function (pgbouncer.ini: auth_query). PgBouncer logs in
-- as pgbouncer_auth and asks for the SCRAM verifier of the role a client names,
-- so no app password, not even a hash, is kept in PgBouncer's files.
\set ON_ERROR_STOP on
\connect chat

-- The function's owner: a role that cannot log in and may read only the columns
-- of pg_authid the lookup needs. The usual recipe makes a superuser own a
-- SECURITY DEFINER function; this one grants no more than it must.
CREATE ROLE pgbouncer_lookup NOLOGIN;
GRANT SELECT (rolname, rolpassword, rolsuper, rolcanlogin, rolvaliduntil,
              rolreplication, rolbypassrls, rolcreaterole)
    ON pg_catalog.pg_authid TO pgbouncer_lookup;

-- A schema of its own, so nothing else is on pgbouncer_auth's search path.
CREATE SCHEMA pgbouncer AUTHORIZATION pgbouncer_lookup;
REVOKE ALL ON SCHEMA pgbouncer FROM PUBLIC;
GRANT USAGE ON SCHEMA pgbouncer TO pgbouncer_auth;

-- SECURITY DEFINER: runs with pgbouncer_lookup's column grant, for the one role
-- asked for, and only for members of pooled_login that may log in now: never the
-- verifier of a role that could do more than the app (superuser, replication,
-- bypassing row security, creating roles), nor the schema owner's. search_path is
-- pinned to the catalog, with pg_temp last, so an object planted in another
-- schema, or a temporary one, cannot stand in for a catalog object.
SET ROLE pgbouncer_lookup;
CREATE FUNCTION pgbouncer.user_lookup(p_username text)
    RETURNS TABLE (usename name, passwd text)
    LANGUAGE sql
    STABLE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT a.rolname, a.rolpassword
    FROM pg_catalog.pg_authid AS a
    WHERE a.rolname = p_username
      AND a.rolcanlogin
      AND NOT a.rolsuper
      AND NOT a.rolreplication
      AND NOT a.rolbypassrls
      AND NOT a.rolcreaterole
      AND (a.rolvaliduntil IS NULL OR a.rolvaliduntil > pg_catalog.now())
      AND pg_catalog.pg_has_role(a.rolname, 'pooled_login', 'MEMBER')
$$;
REVOKE ALL ON FUNCTION pgbouncer.user_lookup(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgbouncer.user_lookup(text) TO pgbouncer_auth;
RESET ROLE;
