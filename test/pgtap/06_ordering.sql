-- Ordering: FIFO per subject (one in flight per subject), what a subject is, priority across
-- subjects, not_before, a dead-lettered head blocks only its own subject
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS xprov;

BEGIN;
SELECT plan(34);
\ir common.psql

SELECT FROM pg_temp.tenant('t1');
SELECT FROM pg_temp.conn('c1', 't1');
SELECT FROM pg_temp.conn('c2', 't1');

-- ---------------------------------------------------------------- FIFO per subject
-- enqueue order: a1 b1 a2 a3 b2 a4 b3 a5
SELECT FROM pg_temp.enq('a1', 'c1', 'A');
SELECT FROM pg_temp.enq('b1', 'c1', 'B');
SELECT FROM pg_temp.enq('a2', 'c1', 'A');
SELECT FROM pg_temp.enq('a3', 'c1', 'A');
SELECT FROM pg_temp.enq('b2', 'c1', 'B');
SELECT FROM pg_temp.enq('a4', 'c1', 'A');
SELECT FROM pg_temp.enq('b3', 'c1', 'B');
SELECT FROM pg_temp.enq('a5', 'c1', 'A');

SELECT is(pg_temp.deqs(), ARRAY['a1', 'b1'], 'only the head of each subject is handed out');
SELECT is(pg_temp.deqs(), '{}', 'nothing more while both heads are in flight');
SELECT is(array(SELECT pg_temp.status(n) FROM unnest(ARRAY['a2', 'a3', 'b2']) n), ARRAY['pending', 'pending', 'pending'],
          'the operations behind the heads are pending');
SELECT pg_temp.try($$SELECT xprov.complete(pg_temp.id('a1'))$$) \g /dev/null
SELECT is(pg_temp.deqs(), ARRAY['a2'], 'completing a1 releases a2 (and only a2)');
SELECT is(pg_temp.deqs(), '{}', 'b2 still waits for b1');
SELECT pg_temp.try($$SELECT xprov.complete(pg_temp.id('b1'))$$) \g /dev/null
SELECT pg_temp.try($$SELECT xprov.complete(pg_temp.id('a2'))$$) \g /dev/null
SELECT is(pg_temp.deqs(), ARRAY['a3', 'b2'], 'then a3 and b2');
SELECT pg_temp.try($$SELECT xprov.complete(pg_temp.id('a3'))$$) \g /dev/null
SELECT pg_temp.try($$SELECT xprov.complete(pg_temp.id('b2'))$$) \g /dev/null
SELECT is(pg_temp.drain(1), 3, 'draining one at a time hands out the remaining three');
SELECT is(array(SELECT name FROM _log WHERE name LIKE 'a%' ORDER BY seq), ARRAY['a4', 'a5'],
          'a4 before a5 (the order across subjects depends on when each head became ready)');
TRUNCATE _log;

-- a larger drain: 10 subjects x 20 operations, enqueued round-robin, drained in batches
SELECT pg_temp.enq('L' || s || '-' || lpad(k::text, 2, '0'), 'c1', 'L' || s)
  FROM generate_series(1, 20) k, generate_series(1, 10) s ORDER BY k, s \g /dev/null
SELECT is(pg_temp.drain(7), 200, 'all 200 operations drained');
SELECT is((SELECT count(*) FROM (
              SELECT name, lag(name) OVER (PARTITION BY split_part(name, '-', 1) ORDER BY seq) AS prev FROM _log) s
            WHERE prev IS NOT NULL AND prev > name), 0::bigint,
          'per subject, the completion order equals the enqueue order');
SELECT is((SELECT count(DISTINCT name) FROM _log), 200::bigint, 'each operation handed out exactly once');
TRUNCATE _log;

-- ---------------------------------------------------------------- what a subject is
SELECT FROM pg_temp.put('X', gen_random_uuid());
-- same identity, different object class -> different subjects
SELECT FROM pg_temp.put('u', xprov.enqueue(pg_temp.id('t1'), pg_temp.id('c1'), pg_temp.id('X'), 'update', 'user', '{}'));
SELECT FROM pg_temp.put('g', xprov.enqueue(pg_temp.id('t1'), pg_temp.id('c1'), pg_temp.id('X'), 'update', 'group', '{}'));
-- same identity and class, other connector -> different subject
SELECT FROM pg_temp.put('o', xprov.enqueue(pg_temp.id('t1'), pg_temp.id('c2'), pg_temp.id('X'), 'update', 'user', '{}'));
-- same identity, class and connector, another target_uid -> same subject (identity wins)
SELECT FROM pg_temp.put('u2', xprov.enqueue(pg_temp.id('t1'), pg_temp.id('c1'), pg_temp.id('X'), 'update', 'user', '{}',
                                            'other-uid'));
-- no identity, target_uid only -> subject is the target_uid
SELECT FROM pg_temp.put('t1a', xprov.enqueue(pg_temp.id('t1'), pg_temp.id('c1'), NULL, 'update', 'user', '{}', 'T-1'));
SELECT FROM pg_temp.put('t1b', xprov.enqueue(pg_temp.id('t1'), pg_temp.id('c1'), NULL, 'update', 'user', '{}', 'T-1'));
SELECT is(pg_temp.deqs(), ARRAY['g', 'o', 't1a', 'u'],
          'subjects are (connector, object class, identity_id or else target_uid)');
SELECT is(pg_temp.status('u2'), 'pending', 'u2 (same identity as u, another target_uid) waits behind u');
SELECT is(pg_temp.status('t1b'), 'pending', 't1b waits behind t1a (same target_uid)');
SELECT is(pg_temp.cb(ARRAY['g', 'o', 't1a', 'u']), 4::bigint,
          'complete the four heads');
SELECT is(pg_temp.drain(), 2, 'then the two waiting operations are handed out');
SELECT is(array(SELECT name FROM _log ORDER BY name), ARRAY['t1b', 'u2'], 'u2 and t1b');
TRUNCATE _log;

-- ---------------------------------------------------------------- priority
SELECT FROM pg_temp.enq('p0', 'c1', 'P0', p_priority => 0);
SELECT FROM pg_temp.enq('p5', 'c1', 'P5', p_priority => 5);
SELECT FROM pg_temp.enq('pm5', 'c1', 'PM5', p_priority => -5);
SELECT FROM pg_temp.enq('p10', 'c1', 'P10', p_priority => 10);
SELECT FROM pg_temp.enq('p5b', 'c1', 'P5B', p_priority => 5);
SELECT is(array(SELECT pg_temp.deqs(1) FROM generate_series(1, 5)),
          ARRAY[ARRAY['p10'], ARRAY['p5'], ARRAY['p5b'], ARRAY['p0'], ARRAY['pm5']],
          'higher priority first across subjects; equal priority: older first; negative last');
SELECT is(pg_temp.cb(ARRAY['p0', 'p5', 'pm5', 'p10', 'p5b']),
          5::bigint, 'complete them');

-- within a subject FIFO wins over priority; a new head brings its own priority
SELECT FROM pg_temp.enq('w1', 'c1', 'W', p_priority => 0);
SELECT FROM pg_temp.enq('w2', 'c1', 'W', p_priority => 100);
SELECT FROM pg_temp.enq('z1', 'c1', 'Z', p_priority => 50);
SELECT is(pg_temp.deqs(10), ARRAY['w1', 'z1'], 'w2 (priority 100) does not overtake w1 (priority 0) of its subject');
SELECT pg_temp.try($$SELECT xprov.complete(pg_temp.id('w1'))$$) \g /dev/null
SELECT pg_temp.try($$SELECT xprov.complete(pg_temp.id('z1'))$$) \g /dev/null
SELECT FROM pg_temp.enq('y1', 'c1', 'Y', p_priority => 10);
SELECT is(pg_temp.deqs(1), ARRAY['w2'], 'once w2 is the head its priority 100 beats y1 (priority 10)');
SELECT is(pg_temp.deqs(1), ARRAY['y1'], 'then y1');
SELECT is(pg_temp.cb(ARRAY['w2', 'y1']), 2::bigint, 'complete them');

-- ---------------------------------------------------------------- not_before
SELECT FROM pg_temp.enq('n1', 'c1', 'N', p_not_before => now() + interval '1 hour');
SELECT FROM pg_temp.enq('n2', 'c1', 'N');
SELECT FROM pg_temp.enq('m1', 'c1', 'M', p_not_before => now() - interval '1 minute');
SELECT FROM pg_temp.enq('k1', 'c1', 'K');
SELECT is(pg_temp.deqs(), ARRAY['k1', 'm1'],
          'not_before in the future delays the operation and the later ones of its subject; a past not_before does not');
SELECT results_eq($$SELECT status, next_attempt_at FROM xprov.operations WHERE id = pg_temp.id('n1')$$,
                  $$VALUES ('pending'::text, now() + interval '1 hour')$$,
                  'the delayed operation is pending, next attempt at its not_before');
SELECT is(pg_temp.status('n2'), 'pending', 'n2 waits behind n1');
SELECT is(pg_temp.cb(ARRAY['k1', 'm1']), 2::bigint, 'complete k1 and m1');
SELECT is(pg_temp.deqs(), '{}', 'nothing else is ready');
SELECT lives_ok($$SELECT xprov.cancel(pg_temp.id('n1'))$$, 'cancel the delayed n1');
SELECT is(pg_temp.deqs(), ARRAY['n2'], 'n2 becomes ready');
SELECT pg_temp.try($$SELECT xprov.complete(pg_temp.id('n2'))$$) \g /dev/null

-- ---------------------------------------------------------------- a dead letter blocks only its subject
SELECT FROM pg_temp.enq('d1', 'c1', 'D');
SELECT FROM pg_temp.enq('d2', 'c1', 'D');
SELECT FROM pg_temp.enq('e1', 'c1', 'E');
SELECT FROM pg_temp.enq('e2', 'c1', 'E');
SELECT FROM pg_temp.enq('e3', 'c1', 'E');
SELECT is(pg_temp.deqs(), ARRAY['d1', 'e1'], 'd1 and e1 handed out');
SELECT pg_temp.try($$SELECT xprov.fail(pg_temp.id('d1'), 'HTTP 422', permanent => true)$$) \g /dev/null
SELECT pg_temp.try($$SELECT xprov.complete(pg_temp.id('e1'))$$) \g /dev/null
SELECT is(pg_temp.drain(), 2, 'the other subject drains');
SELECT is(array(SELECT name FROM _log ORDER BY seq), ARRAY['e2', 'e3'], 'e2, e3 (and not d2)');
SELECT results_eq($$SELECT pg_temp.nm(id), status FROM xprov.operations WHERE id IN (pg_temp.id('d1'), pg_temp.id('d2'))
                    ORDER BY 1$$,
                  $$VALUES ('d1'::text, 'dead_letter'::text), ('d2', 'pending')$$,
                  'd1 is dead-lettered and d2 waits behind it');

SELECT * FROM finish();
ROLLBACK;
