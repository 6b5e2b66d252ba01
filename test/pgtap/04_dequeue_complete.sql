-- pending -> in_progress -> completed: xprov.dequeue, xprov.complete, xprov.complete_batch,
-- batch size, disabled connectors, non-external connectors
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS xprov;

BEGIN;
SELECT plan(46);
\ir common.psql

SELECT FROM pg_temp.tenant('t1');
SELECT FROM pg_temp.conn('c1', 't1');
SELECT FROM pg_temp.put('i1', gen_random_uuid());
SELECT FROM pg_temp.put('a', xprov.enqueue(pg_temp.id('t1'), pg_temp.id('c1'), pg_temp.id('i1'), 'create', 'user',
                                           '{"userName": "alice"}', 'alice-uid', 3, NULL, 'key-a'));

-- ---------------------------------------------------------------- dequeue
CREATE TEMP TABLE d1 AS SELECT * FROM xprov.dequeue(10);
SELECT is((SELECT count(*) FROM d1), 1::bigint, 'dequeue hands out the one ready operation');
SELECT results_eq(
    $$SELECT id, tenant_id, connector_id, identity_id, target_uid, operation_type, object_class, attributes,
             priority, retry_count, not_before, idempotency_key FROM d1$$,
    $$VALUES (pg_temp.id('a'), pg_temp.id('t1'), pg_temp.id('c1'), pg_temp.id('i1'), 'alice-uid'::text,
              'create'::text, 'user'::text, '{"userName": "alice"}'::jsonb, 3, 0, NULL::timestamptz, 'key-a'::text)$$,
    'the queued_operation carries the enqueued fields and retry_count 0');
SELECT is((SELECT created_at FROM d1), (SELECT created_at FROM xprov.operations WHERE id = pg_temp.id('a')),
          'queued_operation.created_at is the enqueue time');
SELECT ok((SELECT lease_expires_at BETWEEN now() + interval '5 minutes' AND clock_timestamp() + interval '5 minutes'
             FROM d1), 'default lease is 5 minutes from the claim');
SELECT results_eq($$SELECT status, attempts FROM xprov.operations WHERE id = pg_temp.id('a')$$,
                  $$VALUES ('in_progress'::text, 1)$$, 'the claimed operation is in_progress, attempt 1');
SELECT is_empty($$SELECT * FROM xprov.dequeue(10)$$, 'a leased operation is not handed out again');
SELECT results_eq($$SELECT pending, in_progress FROM xprov.stats(pg_temp.id('t1'))$$,
                  $$VALUES (0::bigint, 1::bigint)$$, 'stats: 0 pending, 1 in progress');
SELECT is((SELECT count(*) FROM xprov.operation_attempts WHERE operation_id = pg_temp.id('a') AND finished_at IS NOT NULL),
          0::bigint, 'no finished attempt while in flight');

-- ---------------------------------------------------------------- complete
SELECT lives_ok($$SELECT xprov.complete(pg_temp.id('a'), 'remote-42', '{"etag": "W/1"}')$$,
                'complete(id, target_uid, result)');
SELECT results_eq(
    $$SELECT status, attempts, result, result_target_uid, last_error FROM xprov.operations WHERE id = pg_temp.id('a')$$,
    $$VALUES ('completed'::text, 1, '{"etag": "W/1"}'::jsonb, 'remote-42'::text, NULL::text)$$,
    'completed, with the result and the target uid');
SELECT ok((SELECT finished_at BETWEEN now() AND clock_timestamp() FROM xprov.operations WHERE id = pg_temp.id('a')),
          'finished_at is the completion time');
SELECT results_eq(
    $$SELECT attempt, outcome, error, http_status, started_at IS NOT NULL, finished_at IS NOT NULL,
             duration >= interval '0'
        FROM xprov.operation_attempts WHERE operation_id = pg_temp.id('a')$$,
    $$VALUES (1, 'completed'::text, NULL::text, NULL::int, true, true, true)$$,
    'operation_attempts: one completed attempt with start, end and duration');
SELECT results_eq($$SELECT pending, in_progress, completed FROM xprov.stats(pg_temp.id('t1'))$$,
                  $$VALUES (0::bigint, 0::bigint, 1::bigint)$$, 'stats: 1 completed');
SELECT throws_ok($$SELECT xprov.complete(pg_temp.id('a'))$$, '55000', NULL, 'completing twice -> 55000');
SELECT is_empty($$SELECT * FROM xprov.dequeue(10)$$, 'a completed operation is never handed out again');

-- complete with defaults
SELECT FROM pg_temp.enq('b', 'c1', 'bob');
SELECT is(pg_temp.deqs(), ARRAY['b'], 'dequeue hands out b');
SELECT lives_ok($$SELECT xprov.complete(pg_temp.id('b'))$$, 'complete(id) with defaults');
SELECT results_eq($$SELECT status, result, result_target_uid FROM xprov.operations WHERE id = pg_temp.id('b')$$,
                  $$VALUES ('completed'::text, NULL::jsonb, NULL::text)$$, 'completed without result');

-- dequeue with named parameters and an explicit lease
SELECT FROM pg_temp.enq('c', 'c1', 'carol');
CREATE TEMP TABLE d2 AS SELECT * FROM xprov.dequeue(batch => 1, lease => '30 seconds');
SELECT is((SELECT pg_temp.nm(id) FROM d2), 'c', 'dequeue(batch =>, lease =>) hands out c');
SELECT ok((SELECT lease_expires_at BETWEEN now() + interval '30 seconds' AND clock_timestamp() + interval '30 seconds'
             FROM d2), 'the lease is the requested 30 seconds');
SELECT is((SELECT next_attempt_at FROM xprov.operations WHERE id = pg_temp.id('c')),
          (SELECT lease_expires_at FROM d2), 'operations.next_attempt_at of a leased op is its lease expiry');
SELECT lives_ok($$SELECT xprov.complete(operation_id => pg_temp.id('c'), target_uid => 'carol-1', result => '{}')$$,
                'complete with named parameters');

-- ---------------------------------------------------------------- batch size
SELECT pg_temp.enq('s' || g, 'c1', 'subject-' || g) FROM generate_series(1, 5) g \g /dev/null
SELECT is(cardinality(pg_temp.deqs(2)), 2, 'dequeue(2) hands out 2 of 5 ready operations');
SELECT is(cardinality(pg_temp.deqs(10)), 3, 'dequeue(10) hands out the remaining 3');
SELECT is((SELECT in_progress FROM xprov.stats(pg_temp.id('t1'))), 5::bigint, '5 in progress');

-- ---------------------------------------------------------------- complete_batch
SELECT is(pg_temp.cb(ARRAY(SELECT 's' || g FROM generate_series(1, 5) g)), 5::bigint,
          'complete_batch returns the number of operations it completed');
SELECT is((SELECT count(*) FROM xprov.operations WHERE tenant_id = pg_temp.id('t1') AND status = 'completed'),
          8::bigint, 'all eight operations are completed');
SELECT is((SELECT count(*) FROM xprov.operation_attempts a JOIN _ids ON _ids.id = a.operation_id
            WHERE _ids.name LIKE 's_' AND a.outcome = 'completed'), 5::bigint,
          'complete_batch records a completed attempt for each');
-- a batch above 128 operations records through the per-row form of the statement
-- (src/outcome.c), with operations behind each head so that the lanes move on
SELECT pg_temp.enq('big' || g || '_' || k, 'c1', 'big-' || g) FROM generate_series(1, 150) g, generate_series(1, 2) k \g /dev/null
SELECT is(cardinality(pg_temp.deqs(200)), 150, 'dequeue(200) hands out the 150 heads');
SELECT is(pg_temp.cb(ARRAY(SELECT 'big' || g || '_1' FROM generate_series(1, 150) g)), 150::bigint,
          'complete_batch of 150 operations completes 150');
SELECT is((SELECT count(*) FROM xprov.operations o JOIN _ids ON _ids.id = o.id
            WHERE _ids.name LIKE 'big%\_2' AND o.status = 'pending'), 150::bigint,
          'each lane moved on to its second operation');
SELECT is(cardinality(pg_temp.deqs(200)), 150, 'the 150 second operations are handed out');
SELECT is(pg_temp.cb(ARRAY(SELECT 'big' || g || '_2' FROM generate_series(1, 150) g)), 150::bigint,
          'and completed in one batch');
SELECT is((SELECT count(*) FROM xprov.lane l JOIN xprov.subject s USING (lane_id)
            WHERE s.subject LIKE 't:big-%' AND l.state <> 'i'), 0::bigint,
          'every big lane is idle afterwards');
SELECT is(xprov.complete_batch('{}'), 0::bigint, 'complete_batch of an empty array completes nothing');
SELECT is(xprov.complete_batch(NULL), 0::bigint, 'complete_batch of NULL (array_agg over an empty dequeue) completes nothing');

-- ---------------------------------------------------------------- disabled connector
SELECT FROM pg_temp.enq('d1', 'c1', 'dave');
SELECT pg_temp.try($$SELECT xprov.set_connector_enabled(pg_temp.id('c1'), false)$$) \g /dev/null
SELECT is(pg_temp.deqs(), '{}', 'operations of a disabled connector are not handed out');
SELECT is(pg_temp.status('d1'), 'pending', 'they stay pending');
SELECT pg_temp.try($$SELECT xprov.set_connector_enabled(pg_temp.id('c1'), true)$$) \g /dev/null
SELECT is(pg_temp.deqs(), ARRAY['d1'], 'once re-enabled they are handed out');
SELECT pg_temp.try($$SELECT xprov.complete(pg_temp.id('d1'))$$) \g /dev/null

-- ---------------------------------------------------------------- only external connectors
SELECT FROM pg_temp.conn('noop', 't1', 'noop');
SELECT FROM pg_temp.conn('rest', 't1', 'rest');
SELECT FROM pg_temp.conn('scim', 't1', 'scim2');
SELECT FROM pg_temp.enq('n1', 'noop', 'x');
SELECT FROM pg_temp.enq('r1', 'rest', 'x');
SELECT FROM pg_temp.enq('k1', 'scim', 'x');
SELECT FROM pg_temp.enq('e1', 'c1', 'x');
SELECT is(pg_temp.deqs(), ARRAY['e1'], 'dequeue hands out only the external connector''s operation');
SELECT is(array(SELECT pg_temp.status(n) FROM unnest(ARRAY['n1', 'r1', 'k1']) n),
          ARRAY['pending', 'pending', 'pending'], 'noop, rest and scim2 operations stay pending for the worker');
SELECT throws_ok($$SELECT xprov.complete(pg_temp.id('n1'))$$, '55000', NULL,
                 'completing an operation that was never leased -> 55000');
SELECT pg_temp.try($$SELECT xprov.complete(pg_temp.id('e1'))$$) \g /dev/null

-- ---------------------------------------------------------------- defaults of dequeue
SELECT pg_temp.enq('z' || g, 'c1', 'zed-' || g) FROM generate_series(1, 12) g \g /dev/null
SELECT is((SELECT count(*) FROM xprov.dequeue()), 10::bigint, 'dequeue() defaults to a batch of 10');
SELECT is((SELECT count(*) FROM xprov.dequeue()), 2::bigint, 'then the remaining 2');
SELECT ok((SELECT bool_and(next_attempt_at BETWEEN now() + interval '5 minutes' AND clock_timestamp() + interval '5 minutes')
             FROM xprov.operations o JOIN _ids ON _ids.id = o.id WHERE _ids.name LIKE 'z%'),
          'dequeue() defaults to a 5 minute lease');
SELECT is((SELECT count(*) FROM xprov.operations WHERE tenant_id = pg_temp.id('t1') AND status = 'in_progress'),
          12::bigint, 'all twelve in progress');

SELECT * FROM finish();
ROLLBACK;
