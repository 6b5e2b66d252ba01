-- Two concurrent dequeuers (dblink sessions a and b) on committed data:
--   1. both in open transactions (FOR NO KEY UPDATE SKIP LOCKED): never the same operation,
--      never two operations of one subject in flight, per-subject completion order = enqueue order;
--   2. committed claims with long leases: the same, checked also through xprov.operations;
--   3. a real race (dblink_send_query): simultaneous dequeues never hand out one operation twice.
-- Everything this file commits belongs to a fresh tenant; at the end all its operations are
-- completed and its connector is disabled.
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS xprov;
CREATE EXTENSION IF NOT EXISTS dblink;

BEGIN;
SELECT plan(17);
\set committed_isolation 1
\ir common.psql

SELECT FROM pg_temp.tenant('T');
SELECT FROM dblink_connect('setup', pg_temp.connstr());
SELECT FROM dblink_connect('a', pg_temp.connstr());
SELECT FROM dblink_connect('b', pg_temp.connstr());

-- committed connector
SELECT FROM pg_temp.put('C', (SELECT id FROM dblink('setup',
    format($$SELECT xprov.add_connector(%L, 'conc-' || left(md5(random()::text), 8), 'external', NULL)$$, pg_temp.id('T')))
    AS t(id uuid)));

-- committed enqueue of p_subjects x p_per ops, round-robin; target_uid = phase-subject, attributes.k = 1..p_per
CREATE FUNCTION pg_temp.seed(p_phase text, p_subjects int, p_per int) RETURNS bigint LANGUAGE sql AS $$
    SELECT count(*) FROM dblink('setup', format('SELECT * FROM xprov.enqueue_batch(%L)',
        (SELECT jsonb_agg(jsonb_build_object('tenant_id', pg_temp.id('T'), 'connector_id', pg_temp.id('C'),
                                             'operation_type', 'update', 'object_class', 'user',
                                             'target_uid', p_phase || '-' || s, 'attributes', jsonb_build_object('k', k))
                          ORDER BY k, s)
           FROM generate_series(1, p_per) k, generate_series(1, p_subjects) s))) AS t(id uuid)
$$;

CREATE TEMP TABLE claims (phase int, round int, sess text, id uuid, subject text, k int);
CREATE TEMP TABLE done (seq serial, phase int, sess text, id uuid, subject text, k int);
CREATE TEMP TABLE violations (phase int, round int, what text);

CREATE FUNCTION pg_temp.claim(p_phase int, p_round int, p_sess text, p_batch int) RETURNS int LANGUAGE plpgsql AS $$
DECLARE n int;
BEGIN
    INSERT INTO claims
    SELECT p_phase, p_round, p_sess, t.*
      FROM dblink(p_sess, format($q$SELECT id, target_uid, (attributes->>'k')::int
                                    FROM xprov.dequeue(%s, '10 minutes')
                                   WHERE tenant_id = %L$q$, p_batch, pg_temp.id('T')))
           AS t(id uuid, subject text, k int);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

CREATE FUNCTION pg_temp.complete_claims(p_phase int, p_round int, p_sess text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE c record;
BEGIN
    FOR c IN SELECT * FROM claims WHERE phase = p_phase AND round = p_round AND sess = p_sess ORDER BY subject LOOP
        PERFORM * FROM dblink(p_sess, format('SELECT xprov.complete(%L)::text', c.id)) AS t(x text);
        INSERT INTO done (phase, sess, id, subject, k) VALUES (p_phase, p_sess, c.id, c.subject, c.k);
    END LOOP;
END $$;

CREATE FUNCTION pg_temp.check_round(p_phase int, p_round int) RETURNS void LANGUAGE sql AS $$
    INSERT INTO violations
    SELECT p_phase, p_round, 'operation ' || id || ' claimed twice' FROM claims
     WHERE phase = p_phase AND round = p_round GROUP BY id HAVING count(*) > 1
    UNION ALL
    SELECT p_phase, p_round, 'subject ' || subject || ' has ' || count(*) || ' operations in flight' FROM claims
     WHERE phase = p_phase AND round = p_round GROUP BY subject HAVING count(*) > 1
$$;

-- ================================================================ phase 1: open transactions
SELECT is(pg_temp.seed('p1', 4, 6), 24::bigint, 'phase 1: 4 subjects x 6 operations committed');

DO $$
DECLARE r int := 0; got int; first text; second text; deadline timestamptz := clock_timestamp() + interval '30 seconds';
BEGIN
    WHILE (SELECT count(*) FROM done WHERE phase = 1) < 24 AND clock_timestamp() < deadline LOOP
        r := r + 1;
        first := CASE WHEN r % 2 = 1 THEN 'a' ELSE 'b' END;
        second := CASE WHEN r % 2 = 1 THEN 'b' ELSE 'a' END;
        PERFORM dblink_exec(first, 'BEGIN');
        got := pg_temp.claim(1, r, first, 3);
        PERFORM dblink_exec(second, 'BEGIN');        -- while first still holds its claims uncommitted
        got := got + pg_temp.claim(1, r, second, 3);
        PERFORM pg_temp.check_round(1, r);
        PERFORM pg_temp.complete_claims(1, r, first);
        PERFORM dblink_exec(first, 'COMMIT');
        PERFORM pg_temp.complete_claims(1, r, second);
        PERFORM dblink_exec(second, 'COMMIT');
        IF got = 0 THEN PERFORM pg_sleep(0.05); END IF;
    END LOOP;
END $$;

SELECT is((SELECT count(*) FROM done WHERE phase = 1), 24::bigint, 'phase 1: all 24 operations completed');
SELECT is((SELECT count(DISTINCT id) FROM done WHERE phase = 1), 24::bigint, 'phase 1: each exactly once');
SELECT is(array(SELECT what FROM violations WHERE phase = 1), '{}',
          'phase 1: never the same operation or two operations of one subject claimed at once');
SELECT cmp_ok((SELECT count(DISTINCT sess) FROM done WHERE phase = 1), '=', 2::bigint,
              'phase 1: both sessions did work');
SELECT cmp_ok((SELECT count(*) FROM (SELECT round FROM claims WHERE phase = 1 GROUP BY round
                                       HAVING count(DISTINCT sess) = 2) s), '>', 0::bigint,
              'phase 1: in some round both sessions held claims at the same time');
SELECT is((SELECT count(*) FROM (
              SELECT k, lag(k) OVER (PARTITION BY subject ORDER BY seq) AS prev FROM done WHERE phase = 1) s
            WHERE prev IS NOT NULL AND k <> prev + 1), 0::bigint,
          'phase 1: per subject, completion order = enqueue order');

-- ================================================================ phase 2: committed claims, long leases
SELECT is(pg_temp.seed('p2', 5, 5), 25::bigint, 'phase 2: 5 subjects x 5 operations committed');

DO $$
DECLARE r int := 0; got int; deadline timestamptz := clock_timestamp() + interval '30 seconds';
BEGIN
    WHILE (SELECT count(*) FROM done WHERE phase = 2) < 25 AND clock_timestamp() < deadline LOOP
        r := r + 1;
        got := pg_temp.claim(2, r, 'a', 2);          -- committed: leased until completed
        got := got + pg_temp.claim(2, r, 'b', 4);
        PERFORM pg_temp.check_round(2, r);
        -- what every other session sees: at most one in_progress operation per subject
        INSERT INTO violations
        SELECT 2, r, 'operations view: ' || target_uid || ' has ' || count(*) || ' in progress'
          FROM xprov.operations WHERE tenant_id = (SELECT pg_temp.id('T')) AND status = 'in_progress'
         GROUP BY target_uid HAVING count(*) > 1;
        INSERT INTO violations
        SELECT 2, r, 'operations view: ' || count(*) || ' in progress, ' || got || ' claimed'
          FROM xprov.operations WHERE tenant_id = (SELECT pg_temp.id('T')) AND status = 'in_progress'
        HAVING count(*) <> got;
        PERFORM pg_temp.complete_claims(2, r, 'b');
        PERFORM pg_temp.complete_claims(2, r, 'a');
        IF got = 0 THEN PERFORM pg_sleep(0.05); END IF;
    END LOOP;
END $$;

SELECT is((SELECT count(*) FROM done WHERE phase = 2), 25::bigint, 'phase 2: all 25 operations completed');
SELECT is((SELECT count(DISTINCT id) FROM done WHERE phase = 2), 25::bigint, 'phase 2: each exactly once');
SELECT is(array(SELECT what FROM violations WHERE phase = 2), '{}',
          'phase 2: never the same operation or two operations of one subject in flight');
SELECT is((SELECT count(*) FROM (
              SELECT k, lag(k) OVER (PARTITION BY subject ORDER BY seq) AS prev FROM done WHERE phase = 2) s
            WHERE prev IS NOT NULL AND k <> prev + 1), 0::bigint,
          'phase 2: per subject, completion order = enqueue order');

-- ================================================================ phase 3: a real race
SELECT is(pg_temp.seed('p3', 200, 1), 200::bigint, 'phase 3: 200 subjects x 1 operation committed');
SELECT FROM dblink_exec('a', 'BEGIN');
SELECT FROM dblink_exec('b', 'BEGIN');
SELECT dblink_send_query('a', format($q$SELECT id, target_uid, (attributes->>'k')::int FROM xprov.dequeue(150, '10 minutes')
                                       WHERE tenant_id = %L$q$, pg_temp.id('T'))) \g /dev/null
SELECT dblink_send_query('b', format($q$SELECT id, target_uid, (attributes->>'k')::int FROM xprov.dequeue(150, '10 minutes')
                                       WHERE tenant_id = %L$q$, pg_temp.id('T'))) \g /dev/null
INSERT INTO claims SELECT 3, 1, 'a', t.* FROM dblink_get_result('a') AS t(id uuid, subject text, k int);
INSERT INTO claims SELECT 3, 1, 'b', t.* FROM dblink_get_result('b') AS t(id uuid, subject text, k int);
-- consume the end-of-results of the async queries
SELECT FROM dblink_get_result('a') AS t(id uuid, subject text, k int);
SELECT FROM dblink_get_result('b') AS t(id uuid, subject text, k int);
SELECT is((SELECT count(*) FROM (SELECT id FROM claims WHERE phase = 3 GROUP BY id HAVING count(*) > 1) s), 0::bigint,
          'phase 3: simultaneous dequeues never hand out the same operation');
SELECT cmp_ok((SELECT count(*) FROM claims WHERE phase = 3), '>=', 150::bigint,
              'phase 3: together they claimed at least one full batch');
SELECT pg_temp.complete_claims(3, 1, 'a') \g /dev/null
SELECT pg_temp.complete_claims(3, 1, 'b') \g /dev/null
SELECT FROM dblink_exec('a', 'COMMIT');
SELECT FROM dblink_exec('b', 'COMMIT');
DO $$
DECLARE r int := 1; got int; deadline timestamptz := clock_timestamp() + interval '30 seconds';
BEGIN
    WHILE (SELECT count(*) FROM done WHERE phase = 3) < 200 AND clock_timestamp() < deadline LOOP
        r := r + 1;
        got := pg_temp.claim(3, r, 'a', 100);
        PERFORM pg_temp.complete_claims(3, r, 'a');
        IF got = 0 THEN PERFORM pg_sleep(0.05); END IF;
    END LOOP;
END $$;
SELECT is((SELECT count(DISTINCT id) FROM done WHERE phase = 3), 200::bigint,
          'phase 3: every operation was handed out and completed exactly once');

-- ================================================================ end state and cleanup
SELECT results_eq(format('SELECT * FROM dblink(%L, %L) AS t(p bigint, ip bigint, f bigint, d bigint, c bigint, s bigint, x bigint)',
                         'setup', format('SELECT pending, in_progress, failed, dead_letter, completed, skipped, cancelled FROM xprov.stats(%L)', pg_temp.id('T'))),
                  $$VALUES (0::bigint, 0::bigint, 0::bigint, 0::bigint, 249::bigint, 0::bigint, 0::bigint)$$,
                  'committed end state: all 249 operations completed, nothing else');
SELECT FROM dblink('setup', format('SELECT xprov.set_connector_enabled(%L, false)::text', pg_temp.id('C'))) AS t(x text);
SELECT FROM dblink_disconnect('a');
SELECT FROM dblink_disconnect('b');
SELECT FROM dblink_disconnect('setup');

SELECT * FROM finish();
ROLLBACK;
