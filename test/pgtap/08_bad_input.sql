-- Bad input and wrong-state calls: each with its SQLSTATE, and nothing half-written
-- (enqueue_batch's malformed elements are in 03_batch.sql, add_connector's in 01_connectors.sql)
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS xprov;

BEGIN;
SELECT plan(51);
\ir common.psql

SELECT FROM pg_temp.tenant('t1');
SELECT FROM pg_temp.tenant('t2');
SELECT FROM pg_temp.conn('c1', 't1');
SELECT FROM pg_temp.conn('c2', 't2');

CREATE FUNCTION pg_temp.n() RETURNS bigint LANGUAGE sql AS $$
    SELECT count(*) FROM xprov.operations WHERE tenant_id IN (pg_temp.id('t1'), pg_temp.id('t2'))
$$;

-- ---------------------------------------------------------------- enqueue
SELECT throws_ok($$SELECT xprov.enqueue(pg_temp.id('t1'), gen_random_uuid(), gen_random_uuid(), 'create', 'user', '{}')$$,
                 '42704', NULL, 'enqueue: unknown connector -> 42704');
SELECT matches(pg_temp.err($$SELECT xprov.enqueue(pg_temp.id('t1'), NULL, gen_random_uuid(), 'create', 'user', '{}')$$),
               '^(42704|22004): ', 'enqueue: NULL connector -> 42704 or 22004');
SELECT throws_ok($$SELECT xprov.enqueue(pg_temp.id('t1'), pg_temp.id('c2'), gen_random_uuid(), 'create', 'user', '{}')$$,
                 '42501', NULL, 'enqueue: connector of another tenant -> 42501');
SELECT throws_ok($$SELECT xprov.enqueue(pg_temp.id('t1'), pg_temp.id('c1'), gen_random_uuid(), 'upsert', 'user', '{}')$$,
                 '22023', NULL, 'enqueue: unknown operation type -> 22023');
SELECT throws_ok($$SELECT xprov.enqueue(pg_temp.id('t1'), pg_temp.id('c1'), gen_random_uuid(), 'CREATE', 'user', '{}')$$,
                 '22023', NULL, 'enqueue: operation types are lower case -> 22023');
SELECT matches(pg_temp.err($$SELECT xprov.enqueue(pg_temp.id('t1'), pg_temp.id('c1'), gen_random_uuid(), NULL, 'user', '{}')$$),
               '^(22023|22004): ', 'enqueue: NULL operation type -> 22023 or 22004');
SELECT throws_ok($$SELECT xprov.enqueue(pg_temp.id('t1'), pg_temp.id('c1'), gen_random_uuid(), 'create', 'user', '[1, 2]')$$,
                 '22023', NULL, 'enqueue: attributes that are an array -> 22023');
SELECT throws_ok($$SELECT xprov.enqueue(pg_temp.id('t1'), pg_temp.id('c1'), gen_random_uuid(), 'create', 'user', '"x"')$$,
                 '22023', NULL, 'enqueue: attributes that are a string -> 22023');
SELECT throws_ok($$SELECT xprov.enqueue(pg_temp.id('t1'), pg_temp.id('c1'), gen_random_uuid(), 'create', 'user', 'null')$$,
                 '22023', NULL, 'enqueue: attributes that are JSON null -> 22023');
SELECT throws_ok($$SELECT xprov.enqueue(pg_temp.id('t1'), pg_temp.id('c1'), NULL, 'create', 'user', '{}')$$,
                 '22004', NULL, 'enqueue: no identity_id and no target_uid -> 22004');
SELECT throws_ok($$SELECT xprov.enqueue(pg_temp.id('t1'), pg_temp.id('c1'), NULL, 'create', 'user', '{}', '')$$,
                 '22004', NULL, 'enqueue: no identity_id and an empty target_uid -> 22004');
SELECT throws_ok($$SELECT xprov.enqueue(pg_temp.id('t1'), pg_temp.id('c1'), gen_random_uuid(), 'create', NULL, '{}')$$,
                 '22023', NULL, 'enqueue: NULL object_class -> 22023');
SELECT throws_ok($$SELECT xprov.enqueue(pg_temp.id('t1'), pg_temp.id('c1'), gen_random_uuid(), 'create', '', '{}')$$,
                 '22023', NULL, 'enqueue: empty object_class -> 22023');
SELECT throws_ok($$SELECT xprov.enqueue(NULL, pg_temp.id('c1'), gen_random_uuid(), 'create', 'user', '{}')$$,
                 '22004', NULL, 'enqueue: NULL tenant_id -> 22004');
SET LOCAL xprov.max_attributes_size = 1;   -- kB
SELECT throws_ok($$SELECT xprov.enqueue(pg_temp.id('t1'), pg_temp.id('c1'), gen_random_uuid(), 'create', 'user',
                                        jsonb_build_object('blob', repeat('x', 5000)))$$,
                 '54000', NULL, 'enqueue: attributes over xprov.max_attributes_size -> 54000');
SELECT lives_ok($$SELECT xprov.enqueue(pg_temp.id('t1'), pg_temp.id('c1'), gen_random_uuid(), 'create', 'user',
                                       jsonb_build_object('blob', repeat('x', 500)))$$,
                'enqueue: attributes under the limit are accepted');
RESET xprov.max_attributes_size;
SELECT lives_ok($$SELECT xprov.enqueue(pg_temp.id('t1'), pg_temp.id('c1'), gen_random_uuid(), 'create', 'user',
                                       jsonb_build_object('blob', repeat('x', 5000)))$$,
                'enqueue: the same attributes pass under the default limit (1MB)');
SELECT throws_ok($$SELECT xprov.enqueue(pg_temp.id('t1'), pg_temp.id('c1'), gen_random_uuid(), 'create', 'user',
                                        jsonb_build_object('blob', repeat('x', 1100 * 1024)))$$,
                 '54000', NULL, 'enqueue: attributes over the default 1MB -> 54000');
SELECT is(pg_temp.n(), 2::bigint, 'only the two valid enqueues inserted operations');
SELECT is((SELECT count(*) FROM xprov.operations WHERE connector_id IN (pg_temp.id('c1'), pg_temp.id('c2'))),
          2::bigint, 'no operation was written for the other tenant''s connector');

-- ---------------------------------------------------------------- dequeue
SELECT throws_ok($$SELECT * FROM xprov.dequeue(0)$$, '22023', NULL, 'dequeue(0) -> 22023');
SELECT throws_ok($$SELECT * FROM xprov.dequeue(-1)$$, '22023', NULL, 'dequeue(-1) -> 22023');
SELECT throws_ok($$SELECT * FROM xprov.dequeue(NULL)$$, '22023', NULL, 'dequeue(NULL) -> 22023');
SELECT throws_ok($$SELECT * FROM xprov.dequeue(10, '0 seconds')$$, '22023', NULL, 'dequeue with a zero lease -> 22023');
SELECT throws_ok($$SELECT * FROM xprov.dequeue(10, '-5 minutes')$$, '22023', NULL, 'dequeue with a negative lease -> 22023');
SELECT is((SELECT in_progress FROM xprov.stats(pg_temp.id('t1'))), 0::bigint, 'rejected dequeues claimed nothing');

-- ---------------------------------------------------------------- wrong state
-- p: pending, ip: in_progress, f: failed, d: dead_letter, c: completed, s: skipped, x: cancelled
SELECT FROM pg_temp.enq('ip', 'c1', 's-ip');
SELECT FROM pg_temp.enq('f', 'c1', 's-f');
SELECT FROM pg_temp.enq('d', 'c1', 's-d');
SELECT FROM pg_temp.enq('c', 'c1', 's-c');
SELECT is(array(SELECT n FROM pg_temp.deq(100) n WHERE n !~ '^unknown' ORDER BY n), ARRAY['c', 'd', 'f', 'ip'], 'claim four');
SELECT pg_temp.try($$SELECT xprov.fail(pg_temp.id('f'), 'HTTP 503', retry_after => '1 hour')$$) \g /dev/null
SELECT pg_temp.try($$SELECT xprov.fail(pg_temp.id('d'), 'HTTP 400', permanent => true)$$) \g /dev/null
SELECT pg_temp.try($$SELECT xprov.complete(pg_temp.id('c'))$$) \g /dev/null
SELECT FROM pg_temp.enq('p', 'c1', 's-p');
SELECT FROM pg_temp.enq('s', 'c1', 's-s');
SELECT FROM pg_temp.enq('x', 'c1', 's-x');
SELECT pg_temp.try($$SELECT xprov.skip(pg_temp.id('s'), 'skip')$$) \g /dev/null
SELECT pg_temp.try($$SELECT xprov.cancel(pg_temp.id('x'))$$) \g /dev/null
SELECT is(array(SELECT pg_temp.status(n) FROM unnest(ARRAY['p', 'ip', 'f', 'd', 'c', 's', 'x']) n),
          ARRAY['pending', 'in_progress', 'failed', 'dead_letter', 'completed', 'skipped', 'cancelled'],
          'one operation in each status');

-- complete / fail need a leased (in_progress) operation
SELECT is(array(SELECT left(pg_temp.err(format('SELECT xprov.complete(%L)', pg_temp.id(n))), 5)
                  FROM unnest(ARRAY['p', 'f', 'd', 'c', 's', 'x']) n),
          ARRAY['55000', '55000', '55000', '55000', '55000', '55000'],
          'complete of a pending, failed, dead_letter, completed, skipped or cancelled operation -> 55000');
SELECT is(array(SELECT left(pg_temp.err(format('SELECT xprov.fail(%L, %L)', pg_temp.id(n), 'e')), 5)
                  FROM unnest(ARRAY['p', 'f', 'd', 'c', 's', 'x']) n),
          ARRAY['55000', '55000', '55000', '55000', '55000', '55000'],
          'fail of a pending, failed, dead_letter, completed, skipped or cancelled operation -> 55000');
SELECT is(array(SELECT left(pg_temp.err(format('SELECT xprov.fail(%L, %L, true)', pg_temp.id(n), 'e')), 5)
                  FROM unnest(ARRAY['p', 'f', 'c']) n),
          ARRAY['55000', '55000', '55000'], 'permanent fail of an operation that is not leased -> 55000');
SELECT matches(pg_temp.err($$SELECT xprov.complete_batch(ARRAY[pg_temp.id('p'), pg_temp.id('c'), pg_temp.id('s')])$$),
               '^55000: ', 'complete_batch of pending/completed/skipped operations -> 55000, nothing completed (statuses checked below)');
SELECT matches(pg_temp.err($$SELECT xprov.complete_batch(ARRAY[pg_temp.id('p'), NULL])$$),
               '^22004: ', 'complete_batch with a NULL id -> 22004');
SELECT matches(pg_temp.err($$SELECT xprov.complete_batch(ARRAY[gen_random_uuid()])$$),
               '^42704: ', 'complete_batch of an unknown id -> 42704');
-- retry needs a dead letter
SELECT is(array(SELECT left(pg_temp.err(format('SELECT xprov.retry(%L)', pg_temp.id(n))), 5)
                  FROM unnest(ARRAY['p', 'ip', 'f', 'c', 's', 'x']) n),
          ARRAY['55000', '55000', '55000', '55000', '55000', '55000'],
          'retry of anything but a dead letter -> 55000');
-- cancel needs a pending operation
SELECT is(array(SELECT left(pg_temp.err(format('SELECT xprov.cancel(%L)', pg_temp.id(n))), 5)
                  FROM unnest(ARRAY['ip', 'f', 'd', 'c', 's', 'x']) n),
          ARRAY['55000', '55000', '55000', '55000', '55000', '55000'],
          'cancel of anything but a pending operation -> 55000');
-- skip: pending, failed, dead_letter only
SELECT is(array(SELECT left(pg_temp.err(format('SELECT xprov.skip(%L, %L)', pg_temp.id(n), 'r')), 5)
                  FROM unnest(ARRAY['ip', 'c', 's', 'x']) n),
          ARRAY['55000', '55000', '55000', '55000'],
          'skip of an in_progress, completed, skipped or cancelled operation -> 55000');
SELECT throws_ok($$SELECT xprov.skip(pg_temp.id('ip'), 'r')$$, '55000', NULL, 'skip of an in_progress operation -> 55000');
SELECT throws_ok($$SELECT xprov.cancel(pg_temp.id('ip'))$$, '55000', NULL, 'cancel of an in_progress operation -> 55000');
SELECT throws_ok($$SELECT xprov.retry(pg_temp.id('p'))$$, '55000', NULL, 'retry of a pending operation -> 55000');
SELECT throws_ok($$SELECT xprov.complete(pg_temp.id('p'))$$, '55000', NULL, 'complete of a pending operation -> 55000');
SELECT is(array(SELECT pg_temp.status(n) FROM unnest(ARRAY['p', 'ip', 'f', 'd', 'c', 's', 'x']) n),
          ARRAY['pending', 'in_progress', 'failed', 'dead_letter', 'completed', 'skipped', 'cancelled'],
          'the rejected calls changed no status');

-- ---------------------------------------------------------------- unknown operation ids
SELECT throws_ok($$SELECT xprov.complete(gen_random_uuid())$$, '42704', NULL, 'complete: unknown id -> 42704');
SELECT throws_ok($$SELECT xprov.fail(gen_random_uuid(), 'e')$$, '42704', NULL, 'fail: unknown id -> 42704');
SELECT throws_ok($$SELECT xprov.fail(gen_random_uuid(), 'e', true)$$, '42704', NULL, 'fail(permanent): unknown id -> 42704');
SELECT throws_ok($$SELECT xprov.retry(gen_random_uuid())$$, '42704', NULL, 'retry: unknown id -> 42704');
SELECT throws_ok($$SELECT xprov.skip(gen_random_uuid(), 'r')$$, '42704', NULL, 'skip: unknown id -> 42704');
SELECT throws_ok($$SELECT xprov.cancel(gen_random_uuid())$$, '42704', NULL, 'cancel: unknown id -> 42704');
SELECT matches(pg_temp.err('SELECT xprov.complete(NULL)'), '^(42704|22004): ', 'complete: NULL id -> 42704 or 22004');
SELECT matches(pg_temp.err('SELECT xprov.cancel(NULL)'), '^(42704|22004): ', 'cancel: NULL id -> 42704 or 22004');

SELECT is(pg_temp.n(), 9::bigint, 'nine operations in the end: none of the rejected calls inserted one');

SELECT * FROM finish();
ROLLBACK;
