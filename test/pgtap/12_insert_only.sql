-- The operation log xprov.op is insert-only: a full drain (complete, complete_batch, transient
-- and permanent failures, retry, skip, cancel, lease expiry) leaves it without a single dead
-- tuple, update or delete.
--   part 1: inside this test's transaction, pg_stat_xact_user_tables counts no UPDATE/DELETE;
--   part 2: in a throw-away database (so that no other test's rolled-back inserts count as dead
--           tuples), committed work, then pg_stat_user_tables after pg_stat_force_next_flush()
--           and pgstattuple's physical count.
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS xprov;
CREATE EXTENSION IF NOT EXISTS dblink;

BEGIN;
SELECT plan(17);
\ir common.psql

-- ================================================================ part 1: this transaction
SELECT FROM pg_temp.tenant('t1');
SELECT FROM pg_temp.conn('c1', 't1');
SELECT pg_temp.enq('o' || s || '-' || k, 'c1', 'S' || s) FROM generate_series(1, 5) k, generate_series(1, 20) s \g /dev/null
CREATE TEMP TABLE failed_once (name text PRIMARY KEY);
CREATE FUNCTION pg_temp.cycle() RETURNS int LANGUAGE plpgsql AS $$
DECLARE r record; n int := 0; rounds int := 0;
BEGIN
    -- cancel and skip a few pending ones up front
    PERFORM xprov.cancel(pg_temp.id('o' || s || '-5')) FROM generate_series(1, 3) s;
    PERFORM xprov.skip(pg_temp.id('o' || s || '-4'), 'skip') FROM generate_series(4, 6) s;
    LOOP
        rounds := rounds + 1;
        EXIT WHEN rounds > 200;
        n := 0;
        FOR r IN SELECT id, retry_count, pg_temp.nm(id) AS name FROM xprov.dequeue(7) LOOP
            n := n + 1;
            IF r.name LIKE 'o7-%' AND NOT EXISTS (SELECT 1 FROM failed_once f WHERE f.name = r.name) THEN
                INSERT INTO failed_once VALUES (r.name);
                PERFORM xprov.fail(r.id, 'transient', retry_after => '0');
            ELSIF r.name = 'o8-1' AND NOT EXISTS (SELECT 1 FROM failed_once f WHERE f.name = r.name) THEN
                INSERT INTO failed_once VALUES (r.name);
                PERFORM xprov.fail(r.id, 'permanent', permanent => true);
                PERFORM xprov.retry(r.id);
            ELSIF r.name = 'o9-1' THEN
                PERFORM xprov.fail(r.id, 'permanent', permanent => true);
                PERFORM xprov.skip(r.id, 'give up');
            ELSIF r.name LIKE 'o1_-%' THEN
                PERFORM xprov.complete_batch(ARRAY[r.id]);
            ELSE
                PERFORM xprov.complete(r.id, 'uid', '{"ok": true}');
            END IF;
        END LOOP;
        EXIT WHEN n = 0;
    END LOOP;
    RETURN rounds;
END $$;
SELECT cmp_ok(pg_temp.cycle(), '<', 200, 'part 1: the queue drains');
SELECT results_eq($$SELECT pending, in_progress, failed, dead_letter FROM xprov.stats(pg_temp.id('t1'))$$,
                  $$VALUES (0::bigint, 0::bigint, 0::bigint, 0::bigint)$$, 'part 1: nothing is left unfinished');
SELECT results_eq($$SELECT completed, skipped, cancelled FROM xprov.stats(pg_temp.id('t1'))$$,
                  $$VALUES (93::bigint, 4::bigint, 3::bigint)$$, 'part 1: 93 completed, 4 skipped, 3 cancelled');
SELECT results_eq($$SELECT n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_xact_user_tables WHERE relid = 'xprov.op'::regclass$$,
                  $$VALUES (100::bigint, 0::bigint, 0::bigint)$$,
                  'part 1: xprov.op saw 100 inserts and not one UPDATE or DELETE in this transaction');

-- ================================================================ part 2: a fresh database
CREATE FUNCTION pg_temp.connstr_db(p_db text) RETURNS text LANGUAGE sql AS $$
    SELECT regexp_replace(pg_temp.connstr(), 'dbname=\S+', 'dbname=' || p_db)
$$;
SELECT FROM dblink_exec(pg_temp.connstr(), 'DROP DATABASE IF EXISTS xprov_tap_insert_only WITH (FORCE)');
SELECT FROM dblink_exec(pg_temp.connstr(), 'CREATE DATABASE xprov_tap_insert_only');
SELECT FROM dblink_connect('io', pg_temp.connstr_db('xprov_tap_insert_only'));
SELECT FROM dblink_exec('io', 'CREATE EXTENSION xprov');
SELECT FROM dblink_exec('io', 'CREATE EXTENSION pgstattuple');
-- no autovacuum on the log, so that nothing can hide dead tuples by vacuuming them away
SELECT FROM dblink_exec('io', 'ALTER TABLE xprov.op SET (autovacuum_enabled = false)');
SELECT FROM dblink_exec('io', $io$
CREATE FUNCTION public.seed() RETURNS bigint LANGUAGE sql AS $f$
    SELECT xprov.add_connector('00000000-0000-0000-0000-000000000001', 'ext', 'external', NULL);
    SELECT count(*) FROM xprov.connectors c, xprov.enqueue_batch((
        SELECT jsonb_agg(jsonb_build_object('tenant_id', '00000000-0000-0000-0000-000000000001', 'connector_id', c.id,
                                            'operation_type', 'update', 'object_class', 'user',
                                            'target_uid', 'S' || s, 'attributes', jsonb_build_object('k', k))
                         ORDER BY k, s)
          FROM generate_series(1, 10) k, generate_series(1, 200) s)) AS e
$f$
$io$);
-- one transaction per claimed batch, the way a processor works
SELECT FROM dblink_exec('io', 'CREATE TABLE public.failed_once (id uuid PRIMARY KEY)');
SELECT FROM dblink_exec('io', $io$
CREATE PROCEDURE public.drain(INOUT rounds int DEFAULT 0) LANGUAGE plpgsql AS $p$
DECLARE r record; n int; idle int := 0; ids uuid[];
BEGIN
    -- a few cancels and skips of pending operations, and one expired lease
    PERFORM xprov.cancel(id) FROM xprov.operations WHERE target_uid IN ('S1', 'S2') AND attributes->>'k' = '10';
    PERFORM xprov.skip(id, 'skip') FROM xprov.operations WHERE target_uid IN ('S3', 'S4') AND attributes->>'k' = '9';
    COMMIT;
    PERFORM id FROM xprov.dequeue(3, '1 millisecond');
    COMMIT;
    PERFORM pg_sleep(1.1);
    LOOP
        rounds := rounds + 1;
        EXIT WHEN rounds > 5000 OR idle > 25;
        n := 0; ids := '{}';
        FOR r IN SELECT id, retry_count, target_uid, (attributes->>'k')::int AS k FROM xprov.dequeue(50) LOOP
            n := n + 1;
            IF r.k = 2 AND r.target_uid LIKE 'S_' AND NOT EXISTS (SELECT 1 FROM public.failed_once f WHERE f.id = r.id) THEN
                INSERT INTO public.failed_once VALUES (r.id);
                PERFORM xprov.fail(r.id, 'HTTP 503', retry_after => '0');
            ELSIF r.k = 3 AND r.target_uid IN ('S10', 'S11') AND NOT EXISTS (SELECT 1 FROM public.failed_once f WHERE f.id = r.id) THEN
                INSERT INTO public.failed_once VALUES (r.id);
                PERFORM xprov.fail(r.id, 'HTTP 400', permanent => true);
                PERFORM xprov.retry(r.id);
            ELSIF r.k = 4 AND r.target_uid = 'S12' THEN
                PERFORM xprov.fail(r.id, 'HTTP 400', permanent => true);
                PERFORM xprov.skip(r.id, 'give up');
            ELSIF r.k % 2 = 0 THEN
                ids := ids || r.id;
            ELSE
                PERFORM xprov.complete(r.id, r.target_uid || '-uid', jsonb_build_object('k', r.k));
            END IF;
        END LOOP;
        PERFORM xprov.complete_batch(ids);
        COMMIT;
        IF n = 0 THEN idle := idle + 1; PERFORM pg_sleep(0.05); ELSE idle := 0; END IF;
    END LOOP;
END $p$
$io$);

SELECT is((SELECT n FROM dblink('io', 'SELECT public.seed()') AS t(n bigint)), 2000::bigint,
          'part 2: 2000 operations over 200 subjects committed');
SELECT cmp_ok((SELECT r FROM dblink('io', 'CALL public.drain()') AS t(r int)), '<', 5000, 'part 2: the drain finishes');
SELECT results_eq($$SELECT * FROM dblink('io', 'SELECT pending, in_progress, failed, dead_letter, completed, skipped, cancelled FROM xprov.stats()')
                         AS t(p bigint, ip bigint, f bigint, d bigint, c bigint, s bigint, x bigint)$$,
                  $$VALUES (0::bigint, 0::bigint, 0::bigint, 0::bigint, 1995::bigint, 3::bigint, 2::bigint)$$,
                  'part 2: fully drained: 1995 completed, 3 skipped, 2 cancelled');
SELECT cmp_ok((SELECT n FROM dblink('io', $$SELECT count(*) FROM xprov.operation_attempts WHERE outcome <> 'completed'$$)
                   AS t(n bigint)), '=', 15::bigint,
              'part 2: the drain went through 15 failed attempts (9 transient, 3 dead letters, 3 expired leases)');

SELECT FROM dblink('io', 'SELECT pg_stat_force_next_flush()') AS t(x text);
SELECT FROM dblink('io', 'SELECT pg_sleep(0.1)') AS t(x text);
CREATE TEMP TABLE io_stats AS
    SELECT * FROM dblink('io', $$SELECT relname::text, n_tup_ins, n_tup_upd, n_tup_del, n_dead_tup
                                   FROM pg_stat_user_tables WHERE schemaname = 'xprov'$$)
         AS t(relname text, n_tup_ins bigint, n_tup_upd bigint, n_tup_del bigint, n_dead_tup bigint);
SELECT is((SELECT n_tup_ins FROM io_stats WHERE relname = 'op'), 2000::bigint,
          'part 2: the statistics are flushed (xprov.op: 2000 inserts)');
SELECT is((SELECT n_dead_tup FROM io_stats WHERE relname = 'op'), 0::bigint, 'part 2: xprov.op has n_dead_tup = 0');
SELECT is((SELECT n_tup_upd FROM io_stats WHERE relname = 'op'), 0::bigint, 'part 2: xprov.op has n_tup_upd = 0');
SELECT is((SELECT n_tup_del FROM io_stats WHERE relname = 'op'), 0::bigint, 'part 2: xprov.op has n_tup_del = 0');
SELECT results_eq($$SELECT * FROM dblink('io', $q$SELECT tuple_count, dead_tuple_count FROM pgstattuple('xprov.op')$q$)
                         AS t(live bigint, dead bigint)$$,
                  $$VALUES (2000::bigint, 0::bigint)$$, 'part 2: pgstattuple: 2000 live tuples, 0 dead in xprov.op');
SELECT is(array(SELECT relname || ': ' || n_tup_upd || ' updates, ' || n_tup_del || ' deletes' FROM io_stats
                 WHERE relname IN ('op_result', 'op_failure') AND (n_tup_upd > 0 OR n_tup_del > 0)), '{}',
          'part 2: op_result and op_failure are append-only too');
SELECT cmp_ok((SELECT n_tup_ins FROM io_stats WHERE relname = 'op_result'), '=', 2000::bigint,
              'part 2: one op_result row per operation');

SELECT FROM dblink_disconnect('io');
SELECT FROM dblink_exec(pg_temp.connstr(), 'DROP DATABASE xprov_tap_insert_only WITH (FORCE)');
SELECT is((SELECT count(*) FROM pg_database WHERE datname = 'xprov_tap_insert_only'), 0::bigint,
          'the throw-away database is dropped');

-- the log is analyzed often (its plans follow its size); its payloads are left out of that
SELECT is((SELECT array_agg(a.attrelid::regclass || '.' || a.attname || ' ' || a.attstattarget
                            ORDER BY a.attrelid::regclass::text, a.attname)
             FROM pg_attribute a
            WHERE a.attrelid IN ('xprov.op'::regclass, 'xprov.op_result'::regclass)
              AND a.attname IN ('attributes', 'result', 'hooks', 'lane_id', 'status')),
          ARRAY['xprov.op.attributes 0', 'xprov.op.lane_id -1', 'xprov.op_result.hooks 0',
                'xprov.op_result.result 0', 'xprov.op_result.status -1'],
          'ANALYZE samples no payload of the log or its outcomes; their keys keep their statistics');

SELECT * FROM finish();
ROLLBACK;
