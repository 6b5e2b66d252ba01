-- The claim cursor (src/claim_cursor.c) under two claims that overlap a rewind.  Claim b begins
-- from the cursor K and is then held up (it waits for a lock on xprov.lane); meanwhile lanes
-- become ready behind K (a connector is enabled: a rewind to the start), and claim a starts from
-- the rewind and fills its batch before it reaches K.  When b ends, the cursor must not move past
-- the lanes between a's last key and K: before the fix, b set it to its own last key, and those
-- lanes waited for the periodic reset (60 s).  Everything runs in dblink sessions (committed);
-- this session never touches xprov.lane, whose lock the test plays with.
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS xprov;
CREATE EXTENSION IF NOT EXISTS dblink;

BEGIN;
SELECT plan(6);
-- the helpers' bodies would lock xprov.lane (through xprov.operations) until the end
SET LOCAL check_function_bodies = off;
\set committed_isolation 1
\ir common.psql

SELECT FROM pg_temp.tenant('T');
SELECT count(dblink_connect(s, pg_temp.connstr())) FROM unnest(ARRAY['setup', 'a', 'b', 'x', 'locker']) s \g /dev/null
CREATE FUNCTION pg_temp.setup(p_sql text) RETURNS text LANGUAGE sql AS $$
    SELECT v FROM dblink('setup', p_sql) AS t(v text) $$;
-- target uids of what session p_sess dequeues, in order
CREATE FUNCTION pg_temp.claim(p_sess text, p_batch int) RETURNS text[] LANGUAGE sql AS $$
    SELECT coalesce(array_agg(u), '{}') FROM dblink(p_sess,
        format($q$SELECT target_uid FROM xprov.dequeue(%s, '10 minutes')$q$, p_batch)) AS t(u text) $$;
-- a connector of tenant T with one operation for each of p_n subjects p_prefix || 1..p_n
CREATE FUNCTION pg_temp.loaded(p_name text, p_prefix text, p_n int) RETURNS uuid LANGUAGE sql AS $$
    SELECT pg_temp.put(p_name, pg_temp.setup(format(
        $q$SELECT xprov.add_connector(%L, 'race-' || left(md5(random()::text), 8), 'external', NULL)$q$,
        pg_temp.id('T')))::uuid);
    SELECT pg_temp.setup(format($q$SELECT count(*) FROM xprov.enqueue_batch(%L)$q$,
        (SELECT jsonb_agg(jsonb_build_object('tenant_id', pg_temp.id('T'), 'connector_id', pg_temp.id(p_name),
                                             'operation_type', 'update', 'object_class', 'user',
                                             'target_uid', p_prefix || s, 'attributes', '{}'::jsonb) ORDER BY s)
           FROM generate_series(1, p_n) s)));
    SELECT pg_temp.id(p_name)
$$;
-- poll p_sql (one value, run in the setup session: a fresh snapshot each time) until it
-- returns p_want or p_secs pass; returns the last value
CREATE FUNCTION pg_temp.wait_for(p_sql text, p_secs float8, p_want text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v text;
    deadline timestamptz := clock_timestamp() + make_interval(secs => p_secs);
BEGIN
    LOOP
        v := pg_temp.setup(p_sql);
        EXIT WHEN v IS NOT DISTINCT FROM p_want OR clock_timestamp() > deadline;
        PERFORM pg_sleep(0.05);
    END LOOP;
    RETURN v;
END $$;
CREATE FUNCTION pg_temp.enable(p_name text, p_on boolean) RETURNS void LANGUAGE sql AS $$
    SELECT FROM pg_temp.setup(format('SELECT xprov.set_connector_enabled(%L, %L)::text', pg_temp.id(p_name), p_on))
$$;

-- D's six subjects are ready first but D is disabled; C's four come after them
SELECT FROM pg_temp.loaded('D', 'd', 6);
SELECT FROM pg_temp.enable('D', false);
SELECT FROM pg_temp.loaded('C', 'c', 4);

-- x puts the cursor K on c1
SELECT is(pg_temp.claim('x', 1), ARRAY['c1'], 'a first claim takes c1: the cursor is there');

-- a holds xprov.lane (ROW EXCLUSIVE) so that its claim will not queue behind the locker's
-- ACCESS EXCLUSIVE request, which holds b up after b has read the cursor
SELECT FROM dblink_exec('a', 'BEGIN');
SELECT FROM dblink_exec('a', 'LOCK TABLE xprov.lane IN ROW EXCLUSIVE MODE');
CREATE TEMP TABLE b_pid AS SELECT pid FROM dblink('b', 'SELECT pg_backend_pid()') AS t(pid int);
SELECT FROM dblink_send_query('locker', 'DO $d$ BEGIN LOCK TABLE xprov.lane IN ACCESS EXCLUSIVE MODE; END $d$');
SELECT FROM pg_temp.wait_for($$SELECT count(*) FROM pg_stat_activity
                                WHERE wait_event_type = 'Lock' AND query LIKE 'DO %ACCESS EXCLUSIVE%'$$, 5, '1');
SELECT FROM dblink_send_query('b', $$SELECT target_uid FROM xprov.dequeue(2, '10 minutes')$$);
SELECT is(pg_temp.wait_for(format($$SELECT count(*) FROM pg_stat_activity
                                     WHERE pid = %s AND wait_event_type = 'Lock'$$, (SELECT pid FROM b_pid)), 5, '1'),
          '1', 'claim b has begun from the cursor and waits for xprov.lane');

-- D's lanes, behind K, become claimable (a rewind to the start); a takes two of them
SELECT FROM pg_temp.enable('D', true);
SELECT is(pg_temp.claim('a', 2), ARRAY['d1', 'd2'], 'claim a starts from the rewind and fills its batch');
SELECT FROM dblink_exec('a', 'COMMIT');
SELECT is((SELECT coalesce(array_agg(u), '{}') FROM dblink_get_result('b') AS t(u text)), ARRAY['c2', 'c3'],
          'claim b goes on from where it began');
SELECT FROM dblink_get_result('b') AS t(u text);
SELECT FROM dblink_get_result('locker') AS t(v text);
SELECT FROM dblink_get_result('locker') AS t(v text);

SELECT is((SELECT array_agg(u ORDER BY u) FROM unnest(pg_temp.claim('x', 10)) u),
          ARRAY['c4', 'd3', 'd4', 'd5', 'd6'],
          'the next claim finds every lane left, those between a''s last and K too');
SELECT is(pg_temp.setup(format($q$SELECT count(*) FROM xprov.lane WHERE tenant_id = %L AND state = 'r'$q$,
                               pg_temp.id('T'))), '0', 'no lane is left ready');

-- cleanup (committed)
SELECT FROM pg_temp.setup(format($q$SELECT count(xprov.complete(o.id)) FROM xprov.operations o
                                    WHERE o.tenant_id = %L AND o.status = 'in_progress'$q$, pg_temp.id('T')));
SELECT FROM pg_temp.enable('C', false);
SELECT FROM pg_temp.enable('D', false);
SELECT count(dblink_disconnect(s)) FROM unnest(ARRAY['setup', 'a', 'b', 'x', 'locker']) s \g /dev/null

SELECT * FROM finish();
ROLLBACK;
