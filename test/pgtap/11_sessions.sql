-- Behaviour across sessions and over time, on committed data (dblink):
-- transactional enqueue / dequeue, lease expiry, not_before and backoff coming due,
-- priority right after commits, whole-batch rejection.
-- Everything committed here belongs to a fresh tenant and is resolved (completed, cancelled or
-- skipped) at the end; the connector is then disabled.
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS xprov;
CREATE EXTENSION IF NOT EXISTS dblink;

BEGIN;
SELECT plan(32);
\set committed_isolation 1
\ir common.psql

SELECT FROM pg_temp.tenant('T');
SELECT FROM dblink_connect('s', pg_temp.connstr());

-- run p_sql in session p_conn (autocommit unless a transaction is open there), return the rows as uuid / text
CREATE FUNCTION pg_temp.q(p_conn text, p_sql text) RETURNS SETOF text LANGUAGE sql AS $$
    SELECT x FROM dblink(p_conn, p_sql) AS t(x text)
$$;
-- a new session named p_name
CREATE FUNCTION pg_temp.sess(p_name text) RETURNS void LANGUAGE sql AS $$
    SELECT FROM dblink_connect(p_name, pg_temp.connstr())
$$;
-- committed enqueue in session s on connector C; subject p_subject; registered as p_name
CREATE FUNCTION pg_temp.cenq(p_name text, p_subject text, p_priority int DEFAULT 0, p_not_before text DEFAULT NULL)
RETURNS uuid LANGUAGE sql AS $$
    SELECT pg_temp.put(p_name, (SELECT q::uuid FROM pg_temp.q('s', format(
        $f$SELECT xprov.enqueue(%L, %L, NULL, 'update', 'user', '{}', %L, %s, %s)::text$f$,
        pg_temp.id('T'), pg_temp.id('C'), p_subject, p_priority, coalesce(p_not_before, 'NULL')))))
$$;
-- dequeue in session p_conn; names of the claimed operations (sorted)
CREATE FUNCTION pg_temp.cdeq(p_conn text, p_batch int DEFAULT 10, p_lease text DEFAULT '5 minutes') RETURNS text[]
LANGUAGE sql AS $$
    SELECT coalesce(array_agg(pg_temp.nm(x::uuid) ORDER BY 1), '{}')
      FROM pg_temp.q(p_conn, format('SELECT id::text FROM xprov.dequeue(%s, %L)', p_batch, p_lease)) AS x
$$;
-- keep dequeuing in p_conn (up to 3 s) until p_name has been claimed; true if it was
CREATE FUNCTION pg_temp.cdeq_wait(p_conn text, p_name text) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE deadline timestamptz := clock_timestamp() + interval '3 seconds';
BEGIN
    LOOP
        IF p_name = ANY (pg_temp.cdeq(p_conn)) THEN RETURN true; END IF;
        IF pg_temp.status(p_name) = 'in_progress' THEN RETURN true; END IF;
        EXIT WHEN clock_timestamp() > deadline;
        PERFORM pg_sleep(0.05);
    END LOOP;
    RETURN false;
END $$;
-- run an expression in session p_conn; on error warn and go on (later assertions check the effect)
CREATE FUNCTION pg_temp.cdo(p_conn text, p_sql text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_temp.q(p_conn, 'SELECT (' || p_sql || ')::text');
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'step failed in session %: % -> %: %', p_conn, p_sql, SQLSTATE, SQLERRM;
END $$;

SELECT FROM pg_temp.put('C', (SELECT q::uuid FROM pg_temp.q('s',
    format($$SELECT xprov.add_connector(%L, 'sess-' || left(md5(random()::text), 8), 'external', NULL)::text$$, pg_temp.id('T')))));
SELECT FROM pg_temp.sess('a');
SELECT FROM pg_temp.sess('b');

-- ---------------------------------------------------------------- transactional enqueue
SELECT FROM dblink_exec('s', 'BEGIN');
SELECT FROM pg_temp.cenq('u1', 'U');
SELECT is((SELECT count(*) FROM xprov.operations WHERE tenant_id = pg_temp.id('T')), 0::bigint,
          'an uncommitted enqueue is invisible to other sessions');
SELECT is(pg_temp.cdeq('a'), '{}', 'and is not handed out to them');
SELECT FROM dblink_exec('s', 'ROLLBACK');
SELECT is((SELECT count(*) FROM xprov.operations WHERE tenant_id = pg_temp.id('T')), 0::bigint,
          'a rolled-back enqueue leaves nothing');
SELECT is(pg_temp.cdeq('a'), '{}', 'nothing to hand out after the rollback');

SELECT FROM dblink_exec('s', 'BEGIN');
SELECT FROM pg_temp.cenq('u2', 'U');
SELECT FROM dblink_exec('s', 'COMMIT');
SELECT is(pg_temp.status('u2'), 'pending', 'a committed enqueue is visible');

-- ---------------------------------------------------------------- transactional dequeue
SELECT FROM dblink_exec('a', 'BEGIN');
SELECT is(pg_temp.cdeq('a'), ARRAY['u2'], 'a claims u2 in an open transaction');
SELECT is(pg_temp.status('u2'), 'pending', 'an uncommitted claim is invisible to others: still pending');
SELECT is(pg_temp.cdeq('b'), '{}', 'and b cannot claim it meanwhile (locked, skipped)');
SELECT FROM dblink_exec('a', 'ROLLBACK');
SELECT results_eq($$SELECT status, attempts FROM xprov.operations WHERE id = pg_temp.id('u2')$$,
                  $$VALUES ('pending'::text, 0)$$, 'after a rolls back, u2 is pending with no attempt counted');
SELECT is(pg_temp.cdeq('b'), ARRAY['u2'], 'after a rolls back, u2 is immediately handed out to b');
-- (should the above fail, get u2 claimed anyway so that the rest of the file can go on)
SELECT pg_temp.cdeq_wait('b', 'u2') \g /dev/null
SELECT FROM pg_temp.cdo('b', format('xprov.complete(%L)', pg_temp.id('u2')));
SELECT is(pg_temp.status('u2'), 'completed', 'b completed it');

-- ---------------------------------------------------------------- lease expiry
SELECT FROM pg_temp.cenq('l1', 'L');
SELECT FROM pg_temp.cenq('l2', 'L');
SELECT is(pg_temp.cdeq('a', 10, '1 millisecond'), ARRAY['l1'], 'l1 claimed with a 1 ms lease');
SELECT pg_sleep(0.05) \g /dev/null
-- a fresh session: xprov looks for expired leases at most once a second per session
SELECT FROM pg_temp.sess('c');
CREATE TEMP TABLE reclaimed AS
    SELECT * FROM dblink('c', 'SELECT id, retry_count FROM xprov.dequeue(10)') AS t(id uuid, retry_count int);
SELECT results_eq($$SELECT pg_temp.nm(id), retry_count FROM reclaimed$$, $$VALUES ('l1'::text, 1)$$,
                  'the expired lease is reclaimed: l1 is handed out again with retry_count 1 (and l2 still waits)');
SELECT results_eq($$SELECT attempt, outcome FROM xprov.operation_attempts
                     WHERE operation_id = pg_temp.id('l1') AND finished_at IS NOT NULL$$,
                  $$VALUES (1, 'lease_expired'::text)$$, 'operation_attempts records attempt 1 as lease_expired');
SELECT results_eq($$SELECT status, attempts FROM xprov.operations WHERE id = pg_temp.id('l1')$$,
                  $$VALUES ('in_progress'::text, 2)$$, 'l1 is in progress, attempt 2');
SELECT FROM pg_temp.cdo('c', format('xprov.complete(%L)', pg_temp.id('l1')));
SELECT is(pg_temp.cdeq('c'), ARRAY['l2'], 'after l1 completes, l2 follows');
SELECT FROM pg_temp.cdo('c', format('xprov.complete(%L)', pg_temp.id('l2')));

-- an expiry that uses up the last attempt dead-letters the operation
SELECT FROM pg_temp.cenq('e1', 'E');
SELECT FROM pg_temp.sess('d');
SELECT FROM dblink_exec('d', 'SET xprov.max_attempts = 1');
SELECT is(pg_temp.cdeq('d', 10, '1 millisecond'), ARRAY['e1'], 'e1 claimed with a 1 ms lease and max_attempts 1');
SELECT pg_sleep(0.05) \g /dev/null
SELECT FROM pg_temp.sess('e');
SELECT FROM dblink_exec('e', 'SET xprov.max_attempts = 1');
SELECT is(pg_temp.cdeq('e'), '{}', 'the expired lease on the last attempt is not handed out again');
SELECT results_eq($$SELECT status, attempts FROM xprov.operations WHERE id = pg_temp.id('e1')$$,
                  $$VALUES ('dead_letter'::text, 1)$$, 'it is dead-lettered');
SELECT FROM dblink_disconnect('d');
SELECT FROM dblink_disconnect('e');

-- ---------------------------------------------------------------- not_before coming due
SELECT FROM pg_temp.cenq('n1', 'N', 0, format('%L::timestamptz', clock_timestamp() + interval '1 second'));
SELECT is(pg_temp.cdeq('a'), '{}', 'an operation with not_before 1 s ahead is not handed out yet');
SELECT pg_sleep(1.1) \g /dev/null
SELECT is(pg_temp.cdeq('a'), ARRAY['n1'], 'once not_before has passed it is handed out');
SELECT FROM pg_temp.cdo('a', format('xprov.complete(%L)', pg_temp.id('n1')));

-- ---------------------------------------------------------------- backoff coming due
SELECT FROM dblink_exec('b', 'SET xprov.retry_base = 200');
SELECT FROM pg_temp.cenq('r1', 'R');
SELECT is(pg_temp.cdeq('b'), ARRAY['r1'], 'r1 claimed');
SELECT FROM pg_temp.cdo('b', format('xprov.fail(%L, %L)', pg_temp.id('r1'), 'HTTP 503'));
SELECT ok((SELECT next_attempt_at <= clock_timestamp() + interval '200 ms' FROM xprov.operations WHERE id = pg_temp.id('r1')),
          'retry_base 200 ms: next attempt within 200 ms');
SELECT pg_sleep(0.3) \g /dev/null
SELECT results_eq(format('SELECT * FROM dblink(%L, %L) AS t(id uuid, retry_count int)', 'b',
                         'SELECT id, retry_count FROM xprov.dequeue(10)'),
                  format('VALUES (%L::uuid, 1)', pg_temp.id('r1')),
                  'once the backoff has passed r1 is handed out again, retry_count 1');
SELECT FROM pg_temp.cdo('b', format('xprov.complete(%L)', pg_temp.id('r1')));

-- ---------------------------------------------------------------- priority right after commits
-- P (priority 5): p1, p2; Q (priority 0): q1, q2, q3
SELECT FROM pg_temp.cenq('p1', 'P', 5);
SELECT FROM pg_temp.cenq('p2', 'P', 5);
SELECT FROM pg_temp.cenq('q1', 'Q1', 0);
SELECT FROM pg_temp.cenq('q2', 'Q2', 0);
SELECT FROM pg_temp.cenq('q3', 'Q3', 0);
SELECT is(pg_temp.cdeq('a', 1), ARRAY['p1'], 'priority 5 first: p1');
SELECT is(pg_temp.cdeq('b', 1), ARRAY['q1'], 'then q1');
SELECT FROM pg_temp.cdo('a', format('xprov.complete(%L)', pg_temp.id('p1')));
SELECT is(pg_temp.cdeq('b', 1), ARRAY['p2'],
          'right after p1 completes (committed), p2 (priority 5) comes before q2 (priority 0)');
SELECT FROM pg_temp.cenq('h1', 'H', 10);
SELECT is(pg_temp.cdeq('a', 1), ARRAY['h1'],
          'right after a committed enqueue of priority 10, it comes before q2 (priority 0)');
SELECT is(pg_temp.cdeq('a', 10), ARRAY['q2', 'q3'], 'then the rest');

-- ---------------------------------------------------------------- whole-batch rejection, committed
SELECT is(pg_temp.err(format('SELECT * FROM dblink(%L, %L) AS t(id uuid)', 's',
              format('SELECT * FROM xprov.enqueue_batch(%L)', jsonb_build_array(
                       jsonb_build_object('tenant_id', pg_temp.id('T'), 'connector_id', pg_temp.id('C'), 'operation_type', 'create',
                                          'object_class', 'user', 'target_uid', 'batch-ok'),
                       jsonb_build_object('tenant_id', pg_temp.id('T'), 'connector_id', pg_temp.id('C'), 'operation_type', 'create',
                                          'object_class', 'user', 'target_uid', 'batch-ok-2'),
                       jsonb_build_object('tenant_id', pg_temp.id('T'), 'connector_id', pg_temp.id('C'), 'operation_type', 'nope',
                                          'object_class', 'user', 'target_uid', 'batch-bad')))))
          ~ '^22023: .*\melement 2\M', true, 'a batch with a bad element 2 fails (22023, element 2) in an autocommit session');
SELECT is((SELECT count(*) FROM xprov.operations WHERE tenant_id = pg_temp.id('T') AND target_uid LIKE 'batch-%'), 0::bigint,
          'and commits none of its elements');

-- ---------------------------------------------------------------- cleanup (committed)
SELECT FROM pg_temp.q('s', format($q$SELECT count(CASE
        WHEN status = 'in_progress' THEN xprov.complete(id)::text
        WHEN status = 'pending' THEN xprov.cancel(id)::text
        WHEN status IN ('failed', 'dead_letter') THEN xprov.skip(id, 'test cleanup')::text END)::text
      FROM xprov.operations WHERE tenant_id = %L$q$, pg_temp.id('T')));
SELECT FROM pg_temp.q('s', format('SELECT xprov.set_connector_enabled(%L, false)::text', pg_temp.id('C')));
SELECT is((SELECT pending + in_progress + failed + dead_letter FROM xprov.stats(pg_temp.id('T'))), 0::bigint,
          'cleanup: nothing of this test is left unfinished');
SELECT dblink_disconnect(c) FROM unnest(dblink_get_connections()) c \g /dev/null

SELECT * FROM finish();
ROLLBACK;
