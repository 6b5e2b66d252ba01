-- in_progress -> failed -> in_progress ... -> dead_letter; permanent failures; backoff with jitter;
-- retry_after; xprov.retry / xprov.skip / xprov.cancel; xprov.dead_letters; xprov.operation_attempts
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS xprov;

BEGIN;
SELECT plan(67);
\ir common.psql

SET LOCAL xprov.retry_base = 1000;      -- ms
SET LOCAL xprov.retry_max = 3000;       -- ms
SET LOCAL xprov.max_attempts = 10;

SELECT FROM pg_temp.tenant('t1');
SELECT FROM pg_temp.conn('c1', 't1');

-- ---------------------------------------------------------------- one transient failure
SELECT FROM pg_temp.enq('f1', 'c1', 'f1');
SELECT is(pg_temp.deqs(), ARRAY['f1'], 'f1 is handed out');
SELECT lives_ok($$SELECT xprov.fail(pg_temp.id('f1'), 'HTTP 503 service unavailable')$$, 'fail(id, error)');
SELECT results_eq($$SELECT status, attempts, last_error FROM xprov.operations WHERE id = pg_temp.id('f1')$$,
                  $$VALUES ('failed'::text, 1, 'HTTP 503 service unavailable'::text)$$,
                  'a transient failure leaves the operation failed (waiting for a retry) with the error');
SELECT ok((SELECT next_attempt_at BETWEEN now() + interval '500 ms' AND now() + interval '1000 ms'
             FROM xprov.operations WHERE id = pg_temp.id('f1')),
          'first retry after [0.5, 1.0] x retry_base');
SELECT results_eq(
    $$SELECT attempt, outcome, error, finished_at IS NOT NULL FROM xprov.operation_attempts
       WHERE operation_id = pg_temp.id('f1')$$,
    $$VALUES (1, 'failed'::text, 'HTTP 503 service unavailable'::text, true)$$,
    'operation_attempts records the failed attempt');
SELECT is(pg_temp.deqs(), '{}', 'a failed operation is not handed out before its next attempt time');
SELECT is((SELECT failed FROM xprov.stats(pg_temp.id('t1'))), 1::bigint, 'stats: 1 failed');
SELECT throws_ok($$SELECT xprov.fail(pg_temp.id('f1'), 'again')$$, '55000', NULL,
                 'failing an operation that is not leased -> 55000');
-- skip of a failed operation (done now, before its retry time could pass)
SELECT lives_ok($$SELECT xprov.skip(pg_temp.id('f1'), 'obsolete')$$, 'skip(failed)');
SELECT is(pg_temp.status('f1'), 'skipped', 'failed -> skipped');

-- ---------------------------------------------------------------- jitter
-- (own connector, disabled afterwards, so that these retries never come due during the test)
SELECT FROM pg_temp.conn('cj', 't1');
SELECT pg_temp.enq('j' || g, 'cj', 'jitter-' || g) FROM generate_series(1, 30) g \g /dev/null
SELECT is(cardinality(pg_temp.deqs(30)), 30, '30 operations handed out');
SELECT is((SELECT count(xprov.fail(pg_temp.id('j' || g), 'timeout')) FROM generate_series(1, 30) g), 30::bigint,
          'all 30 fail transiently');
SELECT is((SELECT count(*) FROM xprov.operations o JOIN _ids USING (id)
            WHERE _ids.name ~ '^j\d+$'
              AND o.status = 'failed'
              AND o.next_attempt_at BETWEEN now() + interval '500 ms' AND now() + interval '1000 ms'), 30::bigint,
          'every first-retry delay lies in [0.5, 1.0] x retry_base');
SELECT cmp_ok((SELECT count(DISTINCT o.next_attempt_at) FROM xprov.operations o JOIN _ids USING (id)
                WHERE _ids.name ~ '^j\d+$'), '>', 20::bigint,
              'the delays are jittered (not all equal)');
SELECT pg_temp.try($$SELECT xprov.set_connector_enabled(pg_temp.id('cj'), false)$$) \g /dev/null

-- ---------------------------------------------------------------- retry_after
SELECT FROM pg_temp.enq('r1', 'c1', 'r1');
SELECT is(pg_temp.deqs(), ARRAY['r1'], 'r1 is handed out');
SELECT lives_ok($$SELECT xprov.fail(pg_temp.id('r1'), 'HTTP 429', retry_after => '42 seconds')$$,
                'fail with retry_after');
SELECT results_eq($$SELECT status, next_attempt_at FROM xprov.operations WHERE id = pg_temp.id('r1')$$,
                  $$VALUES ('failed'::text, now() + interval '42 seconds')$$,
                  'retry_after sets the next attempt to exactly now() + retry_after');

-- ---------------------------------------------------------------- exponential growth and cap
-- (own connector, disabled afterwards)
-- g: 2nd failure -> [0.5, 1] x min(3000, 1000 * 2^1) ms
SELECT FROM pg_temp.conn('cg', 't1');
SELECT FROM pg_temp.enq('g', 'cg', 'g');
SELECT is(pg_temp.deqs(), ARRAY['g'], 'g is handed out');
SELECT pg_temp.try($$SELECT xprov.fail(pg_temp.id('g'), 'e1', retry_after => '0')$$) \g /dev/null
SELECT is((SELECT retry_count FROM xprov.dequeue(10) WHERE id = pg_temp.id('g')), 1,
          'after retry_after 0 g is ready again, with retry_count 1');
SELECT pg_temp.try($$SELECT xprov.fail(pg_temp.id('g'), 'e2')$$) \g /dev/null
SELECT ok((SELECT next_attempt_at BETWEEN now() + interval '1000 ms' AND now() + interval '2000 ms'
             FROM xprov.operations WHERE id = pg_temp.id('g')),
          'second retry after [0.5, 1.0] x 2 x retry_base');
-- h: 3rd failure -> [0.5, 1] x min(3000, 4000) ms
SELECT FROM pg_temp.enq('h', 'cg', 'h');
SELECT is(pg_temp.deqs(), ARRAY['h'], 'h is handed out');
SELECT pg_temp.try($$SELECT xprov.fail(pg_temp.id('h'), 'e1', retry_after => '0')$$) \g /dev/null
SELECT is((SELECT retry_count FROM xprov.dequeue(10) WHERE id = pg_temp.id('h')), 1, 'h retry_count 1');
SELECT pg_temp.try($$SELECT xprov.fail(pg_temp.id('h'), 'e2', retry_after => '0')$$) \g /dev/null
SELECT is((SELECT retry_count FROM xprov.dequeue(10) WHERE id = pg_temp.id('h')), 2, 'h retry_count 2');
SELECT pg_temp.try($$SELECT xprov.fail(pg_temp.id('h'), 'e3')$$) \g /dev/null
SELECT ok((SELECT next_attempt_at BETWEEN now() + interval '1500 ms' AND now() + interval '3000 ms'
             FROM xprov.operations WHERE id = pg_temp.id('h')),
          'third retry after [0.5, 1.0] x retry_max (the cap)');
SELECT is((SELECT attempts FROM xprov.operations WHERE id = pg_temp.id('h')), 3, 'h has 3 attempts');
SELECT pg_temp.try($$SELECT xprov.set_connector_enabled(pg_temp.id('cg'), false)$$) \g /dev/null

-- ---------------------------------------------------------------- max_attempts -> dead_letter
SET LOCAL xprov.max_attempts = 3;
SELECT FROM pg_temp.enq('m1', 'c1', 'm');
SELECT FROM pg_temp.enq('m2', 'c1', 'm');
SELECT is((SELECT retry_count FROM xprov.dequeue(10) WHERE id = pg_temp.id('m1')), 0, 'm1 attempt 1');
SELECT pg_temp.try($$SELECT xprov.fail(pg_temp.id('m1'), 'boom 1', retry_after => '0')$$) \g /dev/null
SELECT is(pg_temp.status('m1'), 'failed', 'after attempt 1 of 3: failed');
SELECT is((SELECT retry_count FROM xprov.dequeue(10) WHERE id = pg_temp.id('m1')), 1, 'm1 attempt 2');
SELECT pg_temp.try($$SELECT xprov.fail(pg_temp.id('m1'), 'boom 2', retry_after => '0')$$) \g /dev/null
SELECT is(pg_temp.status('m1'), 'failed', 'after attempt 2 of 3: failed');
SELECT is((SELECT retry_count FROM xprov.dequeue(10) WHERE id = pg_temp.id('m1')), 2, 'm1 attempt 3');
SELECT pg_temp.try($$SELECT xprov.fail(pg_temp.id('m1'), 'boom 3', retry_after => '0')$$) \g /dev/null
SELECT results_eq($$SELECT status, attempts, last_error FROM xprov.operations WHERE id = pg_temp.id('m1')$$,
                  $$VALUES ('dead_letter'::text, 3, 'boom 3'::text)$$,
                  'after attempt 3 of 3 (max_attempts): dead_letter, even with a retry_after');
SELECT results_eq(
    $$SELECT id, tenant_id, connector_id, target_uid, operation_type, object_class, attributes, attempts, last_error,
             failed_at BETWEEN now() AND clock_timestamp()
        FROM xprov.dead_letters WHERE tenant_id = pg_temp.id('t1')$$,
    $$VALUES (pg_temp.id('m1'), pg_temp.id('t1'), pg_temp.id('c1'), 'm'::text, 'update'::text, 'user'::text,
              '{"name": "m1"}'::jsonb, 3, 'boom 3'::text, true)$$,
    'dead_letters lists m1 with its attempts, last error and failure time');
SELECT results_eq(
    $$SELECT attempt, outcome, error FROM xprov.operation_attempts WHERE operation_id = pg_temp.id('m1') ORDER BY attempt$$,
    $$VALUES (1, 'failed'::text, 'boom 1'::text), (2, 'failed', 'boom 2'), (3, 'dead_letter', 'boom 3')$$,
    'operation_attempts: failed, failed, dead_letter');
SELECT is(pg_temp.deqs(), '{}', 'neither the dead-lettered m1 nor m2 behind it is handed out');
SELECT is(pg_temp.status('m2'), 'pending', 'm2 stays pending behind the dead letter');
SELECT is((SELECT dead_letter FROM xprov.stats(pg_temp.id('t1'))), 1::bigint, 'stats: 1 dead_letter');
SELECT throws_ok($$SELECT xprov.complete(pg_temp.id('m1'))$$, '55000', NULL, 'completing a dead letter -> 55000');

-- ---------------------------------------------------------------- retry: dead_letter -> pending
SELECT lives_ok($$SELECT xprov.retry(pg_temp.id('m1'))$$, 'retry(dead letter)');
SELECT is(pg_temp.status('m1'), 'pending', 'a retried dead letter is pending');
SELECT is((SELECT count(*) FROM xprov.dead_letters WHERE id = pg_temp.id('m1')), 0::bigint,
          'and no longer in dead_letters');
SELECT is((SELECT dead_letter FROM xprov.stats(pg_temp.id('t1'))), 0::bigint, 'stats: 0 dead_letter');
SELECT is(pg_temp.deqs(), ARRAY['m1'], 'the retried operation is handed out again (before m2)');
-- a retried operation gets a fresh budget of max_attempts attempts
SELECT pg_temp.try($$SELECT xprov.fail(pg_temp.id('m1'), 'again 1', retry_after => '0')$$) \g /dev/null
SELECT is(pg_temp.status('m1'), 'failed', 'retried m1: first new failure -> failed, not dead_letter');
SELECT is(pg_temp.deqs(), ARRAY['m1'], 'm1 again');
SELECT pg_temp.try($$SELECT xprov.fail(pg_temp.id('m1'), 'again 2', retry_after => '0')$$) \g /dev/null
SELECT is(pg_temp.status('m1'), 'failed', 'retried m1: second new failure -> still failed');
SELECT is(pg_temp.deqs(), ARRAY['m1'], 'm1 once more');
SELECT pg_temp.try($$SELECT xprov.complete(pg_temp.id('m1'))$$) \g /dev/null
SELECT is(pg_temp.deqs(), ARRAY['m2'], 'with m1 completed, m2 is handed out');
SELECT pg_temp.try($$SELECT xprov.complete(pg_temp.id('m2'))$$) \g /dev/null

-- ---------------------------------------------------------------- permanent failure, skip of a dead letter
SELECT FROM pg_temp.enq('p1', 'c1', 'p');
SELECT FROM pg_temp.enq('p2', 'c1', 'p');
SELECT is(pg_temp.deqs(), ARRAY['p1'], 'p1 is handed out');
SELECT lives_ok($$SELECT xprov.fail(pg_temp.id('p1'), 'HTTP 400 invalid attribute', permanent => true)$$,
                'fail(..., permanent => true)');
SELECT results_eq($$SELECT status, attempts, last_error FROM xprov.operations WHERE id = pg_temp.id('p1')$$,
                  $$VALUES ('dead_letter'::text, 1, 'HTTP 400 invalid attribute'::text)$$,
                  'a permanent failure dead-letters at once (attempt 1 of 3)');
SELECT is((SELECT outcome FROM xprov.operation_attempts WHERE operation_id = pg_temp.id('p1')), 'dead_letter',
          'the attempt outcome is dead_letter');
SELECT is(pg_temp.deqs(), '{}', 'p2 is blocked by the dead letter');
SELECT lives_ok($$SELECT xprov.skip(pg_temp.id('p1'), 'operator: bad data, not retrying')$$, 'skip(dead letter)');
SELECT results_eq($$SELECT status, finished_at IS NOT NULL FROM xprov.operations WHERE id = pg_temp.id('p1')$$,
                  $$VALUES ('skipped'::text, true)$$, 'the skipped operation is finished as skipped');
SELECT is((SELECT count(*) FROM xprov.dead_letters WHERE id = pg_temp.id('p1')), 0::bigint,
          'a skipped operation is no longer a dead letter');
SELECT is(pg_temp.deqs(), ARRAY['p2'], 'skipping the dead-lettered head unblocks p2');
SELECT pg_temp.try($$SELECT xprov.complete(pg_temp.id('p2'))$$) \g /dev/null

-- ---------------------------------------------------------------- skip of pending operations
SELECT FROM pg_temp.enq('q1', 'c1', 'q');
SELECT FROM pg_temp.enq('q2', 'c1', 'q');
SELECT FROM pg_temp.enq('q3', 'c1', 'q');
SELECT lives_ok($$SELECT xprov.skip(pg_temp.id('q2'), 'superseded')$$, 'skip(pending, not the head)');
SELECT is(pg_temp.drain(), 2, 'draining hands out two operations of q');
SELECT is(array(SELECT name FROM _log WHERE name LIKE 'q%' ORDER BY seq), ARRAY['q1', 'q3'],
          'q1 then q3: the skipped q2 is never handed out');

SELECT FROM pg_temp.enq('s1', 'c1', 's');
SELECT FROM pg_temp.enq('s2', 'c1', 's');
SELECT lives_ok($$SELECT xprov.skip(pg_temp.id('s1'), 'not needed')$$, 'skip(pending head)');
SELECT is(pg_temp.deqs(), ARRAY['s2'], 'skipping the pending head makes the next operation ready');
SELECT pg_temp.try($$SELECT xprov.complete(pg_temp.id('s2'))$$) \g /dev/null

-- ---------------------------------------------------------------- cancel
SELECT FROM pg_temp.enq('x1', 'c1', 'x');
SELECT FROM pg_temp.enq('x2', 'c1', 'x');
SELECT FROM pg_temp.enq('x3', 'c1', 'x');
SELECT lives_ok($$SELECT xprov.cancel(pg_temp.id('x1'))$$, 'cancel(pending head)');
SELECT lives_ok($$SELECT xprov.cancel(operation_id => pg_temp.id('x3'))$$, 'cancel(pending, not the head)');
SELECT results_eq($$SELECT pg_temp.nm(id), status, finished_at IS NOT NULL FROM xprov.operations
                    WHERE id IN (pg_temp.id('x1'), pg_temp.id('x3')) ORDER BY 1$$,
                  $$VALUES ('x1'::text, 'cancelled'::text, true), ('x3', 'cancelled', true)$$,
                  'both are cancelled and finished');
SELECT is(pg_temp.deqs(), ARRAY['x2'], 'only x2 is handed out');
SELECT pg_temp.try($$SELECT xprov.complete(pg_temp.id('x2'))$$) \g /dev/null
SELECT is(pg_temp.deqs(), '{}', 'the cancelled x3 is never handed out');

SELECT results_eq($$SELECT pending, in_progress, failed, dead_letter, completed, skipped, cancelled FROM xprov.stats(pg_temp.id('t1'))$$,
                  $$VALUES (0::bigint, 0::bigint, 33::bigint, 0::bigint, 7::bigint, 4::bigint, 2::bigint)$$,
                  'stats: 33 failed (30 j + r1 + g + h), 7 completed, 4 skipped (f1 p1 q2 s1), 2 cancelled');

SELECT * FROM finish();
ROLLBACK;
