-- The worker's SQL surface: xprov.worker_status(), xprov.wait_idle(), the
-- accounts view and the new attempt outcomes.  The worker itself is exercised
-- by test/process/worker_*.sh; this database is not the one it serves.
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS xprov;

BEGIN;
SELECT plan(13);
\ir common.psql

SELECT has_function('xprov', 'worker_status', '{}'::text[], 'xprov.worker_status() exists');
SELECT is((SELECT proargnames FROM pg_proc WHERE oid = 'xprov.worker_status'::regproc),
          '{worker,pid,database,state,started_at,epoch,operations_done,operations_failed,in_flight,paused_connectors,last_error,last_error_at}'::text[],
          'worker_status() returns its documented columns');
SELECT lives_ok('SELECT * FROM xprov.worker_status()', 'worker_status() can be called');
SELECT ok((SELECT bool_and(pid > 0 AND state IS NOT NULL AND operations_done >= 0 AND in_flight >= 0)
             FROM xprov.worker_status()) IS NOT false,
          'every worker_status row has a pid, a state and counters');
SELECT is((SELECT count(*) FROM xprov.worker_status() WHERE database = 'postgres'),
          (SELECT setting::int::bigint FROM pg_settings WHERE name = 'xprov.workers'),
          'the configured number of workers serve xprov.database_name');

SELECT has_function('xprov', 'wait_idle', ARRAY['interval'], 'xprov.wait_idle(interval) exists');
SELECT throws_ok($$SELECT xprov.wait_idle(NULL)$$, '22004', 'timeout must not be null',
                 'wait_idle(NULL) is refused');

-- nothing of an enabled worker connector is ready here: idle at once
SELECT pg_temp.try($$SELECT xprov.set_connector_enabled(id, false) FROM xprov.connectors
                     WHERE kind IN ('noop', 'scim2', 'rest') AND enabled$$);
SELECT is(xprov.wait_idle('0 s'), true, 'wait_idle is true when nothing is ready');

SELECT pg_temp.put('noop', xprov.add_connector(gen_random_uuid(), 'wait-idle', 'noop', NULL));
SELECT pg_temp.put('op', xprov.enqueue((SELECT tenant_id FROM xprov.connectors WHERE id = pg_temp.id('noop')),
                                       pg_temp.id('noop'), NULL, 'update', 'user', '{}', 'u1'));
SELECT is(xprov.wait_idle('50 ms'), false, 'wait_idle times out while a ready operation waits for a worker');
SELECT is(xprov.wait_idle('-1 s'), false, 'a negative timeout checks once');
SELECT xprov.set_connector_enabled(pg_temp.id('noop'), false);
SELECT is(xprov.wait_idle('0 s'), true, 'operations of a disabled connector do not count');

SELECT has_view('xprov', 'accounts', 'xprov.accounts exists');
SELECT is((SELECT count(*) FROM pg_attribute WHERE attrelid = 'xprov.accounts'::regclass AND attnum > 0
             AND attname IN ('tenant_id', 'connector_id', 'object_class', 'identity_id', 'target_uid',
                             'subject', 'attributes', 'created_at', 'updated_at')), 9::bigint,
          'xprov.accounts has its columns');

SELECT * FROM finish();
ROLLBACK;
