-- An enqueue keeps each connector's tenant and kind per backend (src/connector_cache.c).  A
-- session (dblink 'app', a superuser session that has enqueued before) must see every committed
-- change of xprov.connector at its next enqueue, made by another session (dblink 'admin'); and a
-- change of its own transaction at once, without keeping it when that transaction rolls back.
-- The connector this file commits is left disabled, its operations cancelled.
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS xprov;
CREATE EXTENSION IF NOT EXISTS dblink;

BEGIN;
SELECT plan(11);
\set committed_isolation 1
\ir common.psql

SELECT FROM pg_temp.tenant('A');
SELECT FROM pg_temp.tenant('B');
SELECT FROM dblink_connect('admin', pg_temp.connstr());
SELECT FROM dblink_connect('app', pg_temp.connstr());
SELECT FROM pg_temp.put('C', (SELECT id FROM dblink('admin',
    format($$SELECT xprov.add_connector(%L, 'conncache-' || left(md5(random()::text), 8), 'external', NULL)$$,
           pg_temp.id('A'))) AS t(id uuid)));

CREATE FUNCTION pg_temp.admin(p_sql text) RETURNS void LANGUAGE sql AS $$
    SELECT dblink_exec('admin', p_sql) $$;
-- the app session's enqueue for tenant p_tenant to subject p_uid: 'OK' or the SQLSTATE it raised
CREATE FUNCTION pg_temp.app(p_tenant text, p_uid text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    sqlstate_ text;
BEGIN
    PERFORM * FROM dblink('app', format($q$SELECT xprov.enqueue(%L, %L, NULL, 'update', 'user', '{}', %L)$q$,
                                        pg_temp.id(p_tenant), pg_temp.id('C'), p_uid)) AS t(id uuid);
    RETURN 'OK';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS sqlstate_ = RETURNED_SQLSTATE;
    RETURN sqlstate_;
END $$;
CREATE FUNCTION pg_temp.claimant(p_uid text) RETURNS "char" LANGUAGE sql AS $$
    SELECT claimant FROM xprov.subject WHERE connector_id = pg_temp.id('C') AND subject = 't:' || p_uid
$$;

SELECT is(pg_temp.app('A', 'cc-1'), 'OK', 'the app session enqueues to its tenant''s connector (and keeps it)');
SELECT is(pg_temp.app('B', 'cc-1'), '42501', 'not for another tenant (42501: a superuser is told whose it is)');

SELECT FROM pg_temp.admin(format('UPDATE xprov.connector SET tenant_id = %L WHERE id = %L',
                                 pg_temp.id('B'), pg_temp.id('C')));
SELECT is(pg_temp.app('A', 'cc-2'), '42501',
          'a committed change of the connector''s tenant counts at the next enqueue');
SELECT is(pg_temp.app('B', 'cc-2'), 'OK', '... for the new tenant too');

SELECT FROM pg_temp.admin(format($$UPDATE xprov.connector SET kind = 'noop', enabled = false WHERE id = %L$$,
                                 pg_temp.id('C')));
SELECT is(pg_temp.app('B', 'cc-3'), 'OK', 'after a change of kind');
SELECT is(pg_temp.claimant('cc-3'), 'w'::"char", '... a new subject is the background worker''s to claim');

-- the app session's own transaction: its change counts at once, and not after a rollback
SELECT FROM dblink_exec('app', 'BEGIN');
SELECT FROM dblink_exec('app', format('UPDATE xprov.connector SET tenant_id = %L WHERE id = %L',
                                      pg_temp.id('A'), pg_temp.id('C')));
SELECT is(pg_temp.app('A', 'cc-4'), 'OK', 'a change of the session''s own transaction counts at once');
SELECT FROM dblink_exec('app', 'ROLLBACK');
SELECT is(pg_temp.app('A', 'cc-5'), '42501', 'and is forgotten when that transaction rolls back');
SELECT is(pg_temp.app('B', 'cc-5'), 'OK', '... where the committed tenant holds');

-- the trigger function is for the trigger only
SELECT throws_ok($$SELECT xprov._connectors_changed()$$, '39P01',
                 'xprov._connectors_changed() must be called as a trigger',
                 'called directly, the trigger function refuses with 39P01');
SET LOCAL ROLE xprov_app;
SELECT throws_ok($$SELECT xprov._connectors_changed()$$, '42501', NULL,
                 'an application role may not even call it');
RESET ROLE;

-- cleanup (committed)
SELECT FROM pg_temp.admin(format($q$DO $c$ BEGIN PERFORM xprov.cancel(o.id) FROM xprov.operations o
                                        WHERE o.connector_id = %L AND o.status = 'pending'; END $c$$q$,
                            pg_temp.id('C')));
SELECT FROM dblink_disconnect('app');
SELECT FROM dblink_disconnect('admin');

SELECT * FROM finish();
ROLLBACK;
