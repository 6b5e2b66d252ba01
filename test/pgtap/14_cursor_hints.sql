-- The shared claim cursor must never strand a ready operation behind it until the
-- (60 s) periodic reset: lanes that a claim skipped because an enqueue held them
-- locked come back when that enqueue rolls back, and more retries coming due than
-- the cursor remembers individually are all handed out when due, and lanes that an
-- enqueue_batch makes ready ahead of the cursor, new or idle, are claimed first (dblink).
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS xprov;
CREATE EXTENSION IF NOT EXISTS dblink;

BEGIN;
SELECT plan(7);
\ir common.psql

SELECT FROM pg_temp.tenant('T');
SELECT FROM dblink_connect('a', pg_temp.connstr());
SELECT FROM dblink_connect('b', pg_temp.connstr());
SELECT FROM pg_temp.put('C', (SELECT x::uuid FROM dblink('a',
    format($$SELECT xprov.add_connector(%L, 'hints-' || left(md5(random()::text), 8), 'external', NULL)::text$$,
           pg_temp.id('T'))) AS t(x text)));

CREATE FUNCTION pg_temp.enq_sql(p_uid text, p_priority int DEFAULT 0) RETURNS text LANGUAGE sql AS $$
    SELECT format($f$SELECT xprov.enqueue(%L, %L, NULL, 'update', 'user', '{}', %L, %s)::text$f$,
                  pg_temp.id('T'), pg_temp.id('C'), p_uid, p_priority)
$$;
CREATE FUNCTION pg_temp.deq(p_conn text, p_batch int) RETURNS text[] LANGUAGE sql AS $$
    SELECT coalesce(array_agg(x ORDER BY x), '{}') FROM dblink(p_conn, format(
        $f$SELECT target_uid FROM xprov.dequeue(%s, '10 minutes') WHERE connector_id = %L$f$,
        p_batch, pg_temp.id('C'))) AS t(x text)
$$;

-- h (priority 5) and l1..l3 (priority 0) are ready; a locks h's lane by enqueueing behind it
SELECT FROM dblink('b', pg_temp.enq_sql('h', 5)) AS t(x text);
SELECT FROM generate_series(1, 3) g, LATERAL dblink('b', pg_temp.enq_sql('l' || g)) AS t(x text);
SELECT FROM dblink_exec('a', 'BEGIN');
SELECT FROM dblink('a', pg_temp.enq_sql('h', 5)) AS t(x text);
SELECT is(pg_temp.deq('b', 2), ARRAY['l1', 'l2'], 'a claim skips the locked lane and moves past it');
SELECT FROM dblink_exec('a', 'ROLLBACK');
SELECT is(pg_temp.deq('b', 1), ARRAY['h'],
          'after the enqueue rolls back, the skipped lane is handed out first, at once');

-- 80 priority-9 subjects fail with retries due in 0.3 .. 1.1 s, more than the 64 keys
-- the cursor remembers; meanwhile claims move past them to priority-0 work
SELECT FROM generate_series(1, 80) g, LATERAL dblink('b', pg_temp.enq_sql('r' || lpad(g::text, 2, '0'), 9)) AS t(x text);
SELECT is(cardinality(pg_temp.deq('b', 80)), 80, 'the 80 retry subjects are claimed');
SELECT FROM dblink('b', format($f$SELECT count(xprov.fail(id, 'busy', retry_after => make_interval(secs => 0.3 + 0.01 * n)))::text
                                   FROM (SELECT id, row_number() OVER (ORDER BY target_uid) AS n FROM xprov.operations
                                          WHERE connector_id = %L AND status = 'in_progress' AND target_uid LIKE 'r%%') s$f$,
                               pg_temp.id('C'))) AS t(x text);
SELECT FROM generate_series(1, 3) g, LATERAL dblink('b', pg_temp.enq_sql('m' || g)) AS t(x text);
SELECT is(pg_temp.deq('b', 4), ARRAY['l3', 'm1', 'm2', 'm3'], 'lower-priority work is claimed while the retries wait');
SELECT pg_sleep(1.3);
SELECT is(cardinality(pg_temp.deq('b', 100)), 80, 'every retry is handed out once due, long before the periodic reset');

-- enqueue_batch reports the lanes it makes ready: with the cursor past p1, a new subject (q)
-- and an idle one (m1) of higher priority come next, not p2 and p3
CREATE FUNCTION pg_temp.batch_sql(p_items jsonb) RETURNS text LANGUAGE sql AS $$
    SELECT format($f$SELECT count(*)::text FROM xprov.enqueue_batch(%L)$f$,
                  (SELECT jsonb_agg(jsonb_build_object('tenant_id', pg_temp.id('T'), 'connector_id', pg_temp.id('C'),
                                                       'target_uid', e->>'uid', 'operation_type', 'update',
                                                       'object_class', 'user', 'priority', (e->>'priority')::int))
                     FROM jsonb_array_elements(p_items) e))
$$;
SELECT FROM dblink('b', format($$SELECT count(xprov.complete(id))::text FROM xprov.operations
                                  WHERE connector_id = %L AND status = 'in_progress'$$, pg_temp.id('C'))) AS t(x text);
SELECT FROM dblink('b', pg_temp.batch_sql('[{"uid": "p1", "priority": 0}, {"uid": "p2", "priority": 0},
                                            {"uid": "p3", "priority": 0}]')) AS t(x text);
SELECT is(pg_temp.deq('b', 1), ARRAY['p1'], 'a claim moves the cursor past p1');
SELECT FROM dblink('b', pg_temp.batch_sql('[{"uid": "q", "priority": 7}, {"uid": "m1", "priority": 8}]')) AS t(x text);
SELECT is(pg_temp.deq('b', 2), ARRAY['m1', 'q'],
          'a batch''s new and idle lanes ahead of the cursor are claimed next, at once');

-- resolve everything so later files see nothing of ours
SELECT FROM dblink('b', format($$SELECT count(xprov.complete(id))::text FROM xprov.operations
                                  WHERE connector_id = %L AND status = 'in_progress'$$, pg_temp.id('C'))) AS t(x text);
SELECT FROM dblink('b', format($$SELECT count(xprov.cancel(id))::text FROM xprov.operations
                                  WHERE connector_id = %L AND status = 'pending'$$, pg_temp.id('C'))) AS t(x text);
SELECT FROM dblink('b', format($$SELECT xprov.set_connector_enabled(%L, false)::text$$, pg_temp.id('C'))) AS t(x text);

SELECT FROM dblink_disconnect('a');
SELECT FROM dblink_disconnect('b');
SELECT * FROM finish();
ROLLBACK;
