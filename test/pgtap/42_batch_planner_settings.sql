-- enqueue_batch advances its lanes in a statement planned with nested loops over index scans
-- only (src/spi_util.c: enable_hashjoin, enable_mergejoin, enable_seqscan and enable_bitmapscan
-- off while it is planned and run).  The caller's settings must come back afterwards: after a
-- normal call, after an error inside that statement that the caller traps (a lane locked by
-- another session, dblink 'locker', with lock_timeout), and with the caller's own values.
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS xprov;
CREATE EXTENSION IF NOT EXISTS dblink;

BEGIN;
SELECT plan(6);
\set committed_isolation 1
\ir common.psql

SELECT FROM pg_temp.tenant('A');
SELECT FROM dblink_connect('locker', pg_temp.connstr());
SELECT FROM pg_temp.put('C', (SELECT id FROM dblink('locker',
    format($$SELECT xprov.add_connector(%L, 'planner-' || left(md5(random()::text), 8), 'external', NULL)$$,
           pg_temp.id('A'))) AS t(id uuid)));
SELECT FROM dblink('locker', format($$SELECT xprov.enqueue(%L, %L, NULL, 'update', 'user', '{}', 'locked')$$,
                                    pg_temp.id('A'), pg_temp.id('C'))) AS t(id uuid);

-- a batch of one operation to each subject named
CREATE FUNCTION pg_temp.batch(VARIADIC p_uids text[]) RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_agg(jsonb_build_object('tenant_id', pg_temp.id('A'), 'connector_id', pg_temp.id('C'),
                                        'target_uid', u, 'operation_type', 'update', 'object_class', 'user'))
      FROM unnest(p_uids) u
$$;
CREATE FUNCTION pg_temp.methods() RETURNS text LANGUAGE sql AS $$
    SELECT string_agg(current_setting(m), ' ' ORDER BY m)
      FROM unnest(ARRAY['enable_bitmapscan', 'enable_hashjoin', 'enable_mergejoin', 'enable_seqscan']) m
$$;
-- the SQLSTATE enqueue_batch raised, trapped here, or 'OK'
CREATE FUNCTION pg_temp.trapped_batch(p_batch jsonb) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    PERFORM count(*) FROM xprov.enqueue_batch(p_batch);
    RETURN 'OK';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE;
END $$;

-- (not to 'locked' yet: this transaction would hold its lane until the end)
SELECT is((SELECT count(*) FROM xprov.enqueue_batch(pg_temp.batch('free', 'new'))), 2::bigint, 'a batch');
SELECT is(pg_temp.methods(), 'on on on on', 'the planner settings are back after the call');

SELECT FROM dblink_exec('locker', 'BEGIN');
SELECT FROM dblink('locker', format($$SELECT 1 FROM xprov.lane l JOIN xprov.subject s USING (lane_id)
                                       WHERE s.connector_id = %L AND s.subject = 't:locked' FOR UPDATE OF l$$,
                                    pg_temp.id('C'))) AS t(x int);
SET LOCAL lock_timeout = '200ms';
SELECT is(pg_temp.trapped_batch(pg_temp.batch('free', 'locked')), '55P03', 'a lane locked by another session: the lane update times out');
SELECT is(pg_temp.methods(), 'on on on on', 'the planner settings are back after that error, trapped by the caller');
RESET lock_timeout;
SELECT FROM dblink_exec('locker', 'ROLLBACK');

-- cleanup (committed), while this transaction holds no lane the committed rows use: the
-- committed operation cancelled, the connector left disabled
SELECT FROM dblink_exec('locker', format($q$DO $c$ BEGIN PERFORM xprov.cancel(o.id) FROM xprov.operations o
                                              WHERE o.connector_id = %L AND o.status = 'pending'; END $c$$q$,
                                         pg_temp.id('C')));
SELECT FROM dblink_exec('locker', format('DO $d$ BEGIN PERFORM xprov.set_connector_enabled(%L, false); END $d$',
                                         pg_temp.id('C')));
SELECT FROM dblink_disconnect('locker');

SET LOCAL enable_seqscan = off;
SET LOCAL enable_hashjoin = off;
SELECT is(pg_temp.trapped_batch(pg_temp.batch('free', 'locked')), 'OK', 'the batch goes through once the lane is free');
SELECT is(pg_temp.methods(), 'on off on off', 'the caller''s own settings are kept (hashjoin and seqscan off)');


SELECT * FROM finish();
ROLLBACK;
