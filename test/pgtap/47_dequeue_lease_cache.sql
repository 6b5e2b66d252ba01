-- A backend keeps the leases xprov.dequeue() gave out (src/lease_cache.c), and complete_batch,
-- complete and fail find those operations' lanes by the version the claim wrote.  That is only
-- a hint: a lease that moved since (completed, failed or reclaimed elsewhere, the claim rolled
-- back, the tables truncated) must be judged exactly as without it.  The processor is a second
-- session (dblink 'p'), whose statements each commit, as a real processor's do; another
-- session ('q') moves leases behind its back.
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS xprov;
CREATE EXTENSION IF NOT EXISTS dblink;

BEGIN;
SELECT plan(22);
\set committed_isolation 1
\ir common.psql

SELECT FROM pg_temp.tenant('T');
SELECT FROM dblink_connect('p', pg_temp.connstr());
SELECT FROM dblink_connect('q', pg_temp.connstr());
SELECT FROM pg_temp.put('C', (SELECT id FROM dblink('p',
    format($$SELECT xprov.add_connector(%L, 'leases-' || left(md5(random()::text), 8), 'external', NULL)$$,
           pg_temp.id('T'))) AS t(id uuid)));

-- committed: enqueue n operations to subjects prefix1..prefixn, named prefix1..prefixn
CREATE FUNCTION pg_temp.enqueue(p_prefix text, p_n int) RETURNS void LANGUAGE sql AS $$
    SELECT count(pg_temp.put(p_prefix || g, (SELECT id FROM dblink('p', format(
               $q$SELECT xprov.enqueue(%L, %L, NULL, 'update', 'user', '{}', %L, 0, NULL, %L)$q$,
               pg_temp.id('T'), pg_temp.id('C'), 'lc-' || p_prefix || g, 'key-' || p_prefix || g))
           AS t(id uuid))))
      FROM generate_series(1, p_n) g
$$;
-- in session p_session: dequeue p_n, return their names in name order
CREATE FUNCTION pg_temp.deq_in(p_session text, p_n int) RETURNS text[] LANGUAGE sql AS $$
    SELECT coalesce(array_agg(pg_temp.nm(id) ORDER BY pg_temp.nm(id)), '{}')
      FROM dblink(p_session, format('SELECT id FROM xprov.dequeue(%s)', p_n)) AS t(id uuid)
$$;
-- in session p_session, statement p_sql on the named operations (%s: their ids as uuid[])
CREATE FUNCTION pg_temp.run_in(p_session text, p_sql text, VARIADIC p_names text[]) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE r text;
BEGIN
    SELECT v INTO r FROM dblink(p_session, format(p_sql,
        quote_literal(ARRAY(SELECT pg_temp.id(n) FROM unnest(p_names) n)::text) || '::uuid[]')) AS t(v text);
    RETURN 'OK: ' || coalesce(r, 'NULL');
EXCEPTION WHEN OTHERS THEN
    RETURN regexp_replace(SQLERRM, '[0-9a-f-]{36}', '<id>');
END $$;
CREATE FUNCTION pg_temp.statuses(VARIADIC p_names text[]) RETURNS text[] LANGUAGE sql AS $$
    SELECT array_agg(o.status ORDER BY n.k)
      FROM unnest(p_names) WITH ORDINALITY AS n(name, k)
      JOIN xprov.operations o ON o.id = pg_temp.id(n.name)
$$;
CREATE FUNCTION pg_temp.results(VARIADIC p_names text[]) RETURNS bigint LANGUAGE sql AS $$
    SELECT count(*) FROM xprov.op_result WHERE op_id IN (SELECT pg_temp.id(n) FROM unnest(p_names) n)
$$;

-- ---------------------------------------------------------------- the common case
SELECT FROM pg_temp.enqueue('a', 3);
SELECT is(pg_temp.deq_in('p', 10), '{a1,a2,a3}', 'the processor dequeues three');
SELECT is(pg_temp.run_in('p', 'SELECT xprov.complete_batch(%s)::text', 'a1', 'a2', 'a1', 'a3'), 'OK: 3',
          'complete_batch in a later transaction of the same session: a repeated id counts once');
SELECT is(pg_temp.statuses('a1', 'a2', 'a3'), '{completed,completed,completed}', '... all three completed');
SELECT is(pg_temp.results('a1', 'a2', 'a3'), 3::bigint, '... with one result each');
SELECT is((SELECT count(*) FROM xprov.idempotency WHERE key LIKE 'key-a%'), 0::bigint,
          '... and their idempotency keys released');
SELECT is(pg_temp.run_in('p', 'SELECT xprov.complete_batch(%s)::text', 'a2'), 'cannot complete operation <id>',
          'completing one again is refused');

-- ---------------------------------------------------------------- a lease moved behind the processor's back
SELECT FROM pg_temp.enqueue('b', 4);
SELECT is(pg_temp.deq_in('p', 10), '{b1,b2,b3,b4}', 'the processor dequeues four');
SELECT is(pg_temp.run_in('q', 'SELECT xprov.complete_batch(%s)::text', 'b1'), 'OK: 1',
          'another session completes one of them');
SELECT is(pg_temp.run_in('p', 'SELECT xprov.complete_batch(%s)::text', 'b4', 'b1'), 'cannot complete operation <id>',
          'the processor''s batch with it is refused, though its lease of it is kept');
SELECT is(pg_temp.statuses('b1', 'b4'), '{completed,in_progress}', '... and nothing of that batch was written');
SELECT is(pg_temp.run_in('q', $$SELECT xprov.fail((%s)[1], 'boom')::text$$, 'b2'), 'OK: ',
          'another session fails another one (it is retried later)');
SELECT is(pg_temp.run_in('p', 'SELECT xprov.complete((%s)[1])::text', 'b2'), 'cannot complete operation <id>',
          'the processor''s complete() of it is refused');
SELECT is(pg_temp.run_in('q', 'SELECT xprov.complete_batch(%s)::text', 'b3'), 'OK: 1',
          'another session completes a third');
SELECT is(pg_temp.run_in('p', $$SELECT xprov.fail((%s)[1], 'late')::text$$, 'b3'), 'cannot fail operation <id>',
          'the processor''s fail() of it is refused');
SELECT is(pg_temp.run_in('p', 'SELECT xprov.complete_batch(%s)::text', 'b4'), 'OK: 1',
          'the lease that did not move completes');
SELECT is(pg_temp.statuses('b1', 'b2', 'b3', 'b4'), '{completed,failed,completed,completed}',
          '... each operation as the sessions left it');

-- ---------------------------------------------------------------- mixed, rolled back, truncated
SELECT FROM pg_temp.enqueue('c', 2);
SELECT is(pg_temp.deq_in('q', 1) || pg_temp.deq_in('p', 1), '{c1,c2}', 'each session dequeues one');
SELECT is(pg_temp.run_in('p', 'SELECT xprov.complete_batch(%s)::text', 'c1', 'c2'), 'OK: 2',
          'the processor completes both, one kept and one dequeued elsewhere');
SELECT FROM pg_temp.enqueue('d', 1);
SELECT FROM dblink_exec('p', 'BEGIN');
SELECT is(pg_temp.deq_in('p', 1), '{d1}', 'a dequeue in a transaction');
SELECT FROM dblink_exec('p', 'ROLLBACK');
SELECT is(pg_temp.run_in('p', 'SELECT xprov.complete_batch(%s)::text', 'd1'), 'cannot complete operation <id>',
          'rolled back: the lease kept from it does not complete the operation');
SELECT is(pg_temp.deq_in('p', 1) || pg_temp.run_in('p', 'SELECT xprov.complete((%s)[1])::text', 'd1'),
          '{d1,"OK: "}', 'dequeued again, it completes');

-- fail() of a kept lease: retried later, as any failure
SELECT FROM pg_temp.enqueue('e', 1);
SELECT FROM pg_temp.deq_in('p', 1);
SELECT is(pg_temp.run_in('p', $$SELECT xprov.fail((%s)[1], 'boom')::text$$, 'e1') || ' ' || pg_temp.statuses('e1')::text,
          'OK:  {failed}', 'fail() of a kept lease records the failure');

-- cleanup (committed): every operation of C skipped or finished, the connector disabled
SELECT FROM dblink_exec('p', format($q$DO $c$ BEGIN PERFORM xprov.skip(o.id, 'test cleanup') FROM xprov.operations o
                                      WHERE o.connector_id = %L AND o.status IN ('pending', 'failed'); END $c$$q$,
                                    pg_temp.id('C')));
SELECT FROM dblink('p', format('SELECT xprov.set_connector_enabled(%L, false)', pg_temp.id('C'))) AS t(v text);
SELECT FROM dblink_disconnect('p');
SELECT FROM dblink_disconnect('q');

SELECT * FROM finish();
ROLLBACK;
