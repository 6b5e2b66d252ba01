-- The answer "may this role act for the tenant in context" is kept per backend (src/tenant_guard.c)
-- until bindings, roles or memberships change.  Each change below is committed by one session
-- (dblink 'admin') while another (dblink 'app', logged in as an application role) has asked
-- before and asks again: its next statement must see the change, through xprov._session_tenant(),
-- row-level security and enqueue alike.  The roles and rows this file commits are removed at
-- the end.
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS xprov;
CREATE EXTENSION IF NOT EXISTS dblink;

BEGIN;
SELECT plan(17);
\set committed_isolation 1
\ir common.psql

SELECT FROM pg_temp.tenant('A');
SELECT FROM pg_temp.tenant('B');
SELECT FROM dblink_connect('admin', pg_temp.connstr());
SELECT dblink_exec('admin', $$
    DELETE FROM xprov.tenant_binding WHERE role_name IN ('xc_app', 'xc_group');
    DROP ROLE IF EXISTS xc_app; DROP ROLE IF EXISTS xc_group;
    CREATE ROLE xc_app LOGIN IN ROLE xprov_app;
    CREATE ROLE xc_group NOLOGIN$$) \g /dev/null
SELECT FROM pg_temp.put('CB', (SELECT id FROM dblink('admin',
    format($$SELECT xprov.add_connector(%L, 'cache-' || left(md5(random()::text), 8), 'external', NULL)$$,
           pg_temp.id('B'))) AS t(id uuid)));
SELECT FROM pg_temp.put('OB', (SELECT id FROM dblink('admin',
    format($$SELECT xprov.enqueue(%L, %L, NULL, 'update', 'user', '{}', 'cache-subject')$$,
           pg_temp.id('B'), pg_temp.id('CB'))) AS t(id uuid)));

SELECT FROM dblink_connect('app', regexp_replace(pg_temp.connstr(), 'user=\S+', 'user=xc_app'));
SELECT FROM dblink('app', format('SELECT set_config(%L, %L, false)', 'xprov.tenant_id', pg_temp.id('B'))) AS t(x text);

-- what the application session sees now: its tenant, its operation, its enqueue
CREATE FUNCTION pg_temp.app_tenant() RETURNS text LANGUAGE sql AS $$
    SELECT coalesce(pg_temp.nm(t), 'none') FROM dblink('app', 'SELECT xprov._session_tenant()') AS r(t uuid)
$$;
CREATE FUNCTION pg_temp.app_sees() RETURNS bigint LANGUAGE sql AS $$
    SELECT n FROM dblink('app', 'SELECT count(*) FROM xprov.operations') AS r(n bigint)
$$;
CREATE FUNCTION pg_temp.app_enqueue() RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    PERFORM * FROM dblink('app', format($q$SELECT xprov.enqueue(%L, %L, NULL, 'update', 'user', '{}', 'cache-app')$q$,
                                        pg_temp.id('B'), pg_temp.id('CB'))) AS r(id uuid);
    RETURN 'enqueued';
EXCEPTION WHEN OTHERS THEN
    RETURN CASE WHEN SQLERRM LIKE '%may not act for tenant%' THEN 'refused' ELSE SQLERRM END;
END $$;
-- a command, or (SELECT ...) a call whose result is not needed, in the admin session
CREATE FUNCTION pg_temp.admin(p_sql text) RETURNS void LANGUAGE sql AS $$
    SELECT dblink_exec('admin', CASE WHEN p_sql ~* '^select '
                                     THEN format('DO $d$ BEGIN PERFORM %s; END $d$', substr(p_sql, 8))
                                     ELSE p_sql END) $$;

SELECT is(pg_temp.app_tenant(), 'B', 'unbound: the session''s tenant');
SELECT is(pg_temp.app_tenant(), 'B', 'asked again (the kept answer): the same');
SELECT is(pg_temp.app_sees(), 1::bigint, 'unbound: row-level security shows the tenant''s operation');

SELECT FROM pg_temp.admin(format('SELECT xprov.bind_tenant(%L, %L)', 'xc_app', pg_temp.id('A')));
SELECT is(pg_temp.app_tenant(), 'none', 'bound to A by another session: B is refused at the next statement');
SELECT is(pg_temp.app_sees(), 0::bigint, 'bound to A: row-level security shows nothing of B');
SELECT is(pg_temp.app_enqueue(), 'refused', 'bound to A: an enqueue for B is refused');

SELECT FROM pg_temp.admin(format('SELECT xprov.unbind_tenant(%L, %L)', 'xc_app', pg_temp.id('A')));
SELECT is(pg_temp.app_tenant(), 'B', 'unbound by another session: B again');
SELECT is(pg_temp.app_enqueue(), 'enqueued', 'unbound: the enqueue for B goes through');

-- a binding of a group counts for its members, from the moment they are
SELECT FROM pg_temp.admin(format('SELECT xprov.bind_tenant(%L, %L)', 'xc_group', pg_temp.id('A')));
SELECT is(pg_temp.app_tenant(), 'B', 'a group is bound to A; not a member: B');
SELECT FROM pg_temp.admin('GRANT xc_group TO xc_app');
SELECT is(pg_temp.app_tenant(), 'none', 'made a member of the group: refused at the next statement');
SELECT is(pg_temp.app_enqueue(), 'refused', 'and its enqueue too');
SELECT FROM pg_temp.admin('REVOKE xc_group FROM xc_app');
SELECT is(pg_temp.app_tenant(), 'B', 'membership revoked: B again');

-- a change not yet committed counts for nothing, nor once rolled back
SELECT FROM pg_temp.admin('BEGIN');
SELECT FROM pg_temp.admin(format('SELECT xprov.bind_tenant(%L, %L)', 'xc_app', pg_temp.id('A')));
SELECT is(pg_temp.app_tenant(), 'B', 'a binding not yet committed: B');
SELECT FROM pg_temp.admin('ROLLBACK');
SELECT is(pg_temp.app_tenant(), 'B', 'the binding rolled back: B');

-- the session's own setting is part of the question
SELECT FROM pg_temp.admin(format('SELECT xprov.bind_tenant(%L, %L)', 'xc_app', pg_temp.id('A')));
SELECT FROM dblink('app', format('SELECT set_config(%L, %L, false)', 'xprov.tenant_id', pg_temp.id('A'))) AS t(x text);
SELECT is(pg_temp.app_tenant(), 'A', 'bound to A, A in context: A');
SELECT FROM dblink('app', format('SELECT set_config(%L, %L, false)', 'xprov.tenant_id', pg_temp.id('B'))) AS t(x text);
SELECT is(pg_temp.app_tenant(), 'none', 'B in context again: refused');

-- a role that stops being an application role loses nothing it did not have; one made admin acts for all
SELECT FROM pg_temp.admin('GRANT xprov_admin TO xc_app');
SELECT is(pg_temp.app_tenant(), 'B', 'made xprov_admin: acts for B, bindings or not');

-- cleanup (committed)
SELECT FROM dblink_disconnect('app');
SELECT FROM pg_temp.admin(format('SELECT xprov.unbind_tenant(r, %L) FROM unnest(ARRAY[%L, %L]) r',
                            pg_temp.id('A'), 'xc_app', 'xc_group'));
SELECT FROM pg_temp.admin(format($q$DO $c$ BEGIN PERFORM xprov.cancel(o.id) FROM xprov.operations o
                                        WHERE o.connector_id = %L AND o.status = 'pending'; END $c$$q$,
                            pg_temp.id('CB')));
SELECT FROM pg_temp.admin(format('SELECT xprov.set_connector_enabled(%L, false)', pg_temp.id('CB')));
SELECT FROM pg_temp.admin('DROP ROLE xc_app; DROP ROLE xc_group');
SELECT FROM dblink_disconnect('admin');

SELECT * FROM finish();
ROLLBACK;
