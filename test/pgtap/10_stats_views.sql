-- xprov.stats, the shape of the public views, types and functions, xprov.build_info
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS xprov;

BEGIN;
SELECT plan(39);
\ir common.psql

-- ---------------------------------------------------------------- shape of the contract
CREATE FUNCTION pg_temp.missing(p_rel text, p_cols text[]) RETURNS text[] LANGUAGE sql AS $$
    SELECT coalesce(array_agg(c ORDER BY c), '{}') FROM unnest(p_cols) c
     WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a
                        WHERE a.attrelid = p_rel::regclass AND a.attname = c AND a.attnum > 0 AND NOT a.attisdropped)
$$;
SELECT is(pg_temp.missing('xprov.connectors', '{id,tenant_id,name,kind,base_url,config,enabled,created_at}'), '{}',
          'xprov.connectors has every contract column');
SELECT is(pg_temp.missing('xprov.operations', '{id,tenant_id,connector_id,identity_id,target_uid,operation_type,object_class,
          attributes,priority,retry_count,next_retry_at,not_before,idempotency_key,status,attempts,next_attempt_at,
          last_error,created_at,finished_at,result,result_target_uid}'), '{}',
          'xprov.operations has every contract column');
SELECT is(pg_temp.missing('xprov.operation_attempts', '{operation_id,attempt,started_at,finished_at,outcome,http_status,
          error,duration}'), '{}', 'xprov.operation_attempts has every contract column');
SELECT is(pg_temp.missing('xprov.dead_letters', '{id,tenant_id,connector_id,identity_id,target_uid,operation_type,
          object_class,attributes,attempts,last_error,created_at,failed_at}'), '{}',
          'xprov.dead_letters has every contract column');
SELECT is(pg_temp.missing('xprov.queued_operation', '{id,tenant_id,connector_id,identity_id,target_uid,operation_type,
          object_class,attributes,priority,retry_count,next_retry_at,not_before,idempotency_key,created_at,
          lease_expires_at}'), '{}', 'xprov.queued_operation has every contract field');
SELECT is((SELECT array_agg(format_type(atttypid, atttypmod) ORDER BY attnum) FROM pg_attribute
            WHERE attrelid = 'xprov.queued_operation'::regclass AND attname IN ('id', 'attributes', 'priority', 'retry_count',
                                                                                'next_retry_at')),
          ARRAY['uuid', 'jsonb', 'integer', 'integer', 'timestamp with time zone'],
          'queued_operation field types');

SELECT has_function('xprov', 'add_connector', ARRAY['uuid', 'text', 'text', 'text', 'jsonb'], 'add_connector(uuid, text, text, text, jsonb)');
SELECT has_function('xprov', 'set_connector_enabled', ARRAY['uuid', 'boolean'], 'set_connector_enabled(uuid, boolean)');
SELECT has_function('xprov', 'enqueue', ARRAY['uuid', 'uuid', 'uuid', 'text', 'text', 'jsonb', 'text', 'integer',
                                              'timestamp with time zone', 'text'], 'enqueue(...) with the contract parameters');
SELECT has_function('xprov', 'enqueue_batch', ARRAY['jsonb'], 'enqueue_batch(jsonb)');
SELECT has_function('xprov', 'dequeue', ARRAY['integer', 'interval'], 'dequeue(integer, interval)');
SELECT has_function('xprov', 'complete', ARRAY['uuid', 'text', 'jsonb'], 'complete(uuid, text, jsonb)');
SELECT has_function('xprov', 'complete_batch', ARRAY['uuid[]'], 'complete_batch(uuid[])');
SELECT has_function('xprov', 'fail', ARRAY['uuid', 'text', 'boolean', 'interval'], 'fail(uuid, text, boolean, interval)');
SELECT has_function('xprov', 'retry', ARRAY['uuid'], 'retry(uuid)');
SELECT has_function('xprov', 'skip', ARRAY['uuid', 'text'], 'skip(uuid, text)');
SELECT has_function('xprov', 'cancel', ARRAY['uuid'], 'cancel(uuid)');
SELECT has_function('xprov', 'stats', ARRAY['uuid', 'uuid'], 'stats(uuid, uuid)');
SELECT function_returns('xprov', 'dequeue', ARRAY['integer', 'interval'], 'setof xprov.queued_operation',
                        'dequeue returns setof xprov.queued_operation');
SELECT function_returns('xprov', 'enqueue_batch', ARRAY['jsonb'], 'setof uuid', 'enqueue_batch returns setof uuid');

-- ---------------------------------------------------------------- GUCs
SELECT is(array(SELECT current_setting(g) FROM unnest(ARRAY['xprov.max_attempts', 'xprov.retry_base', 'xprov.retry_max',
                                                            'xprov.max_attributes_size']) g),
          ARRAY['10', '2s', '1h', '1MB'], 'GUC defaults: max_attempts 10, retry_base 2s, retry_max 1h, max_attributes_size 1MB');

-- ---------------------------------------------------------------- build_info
SELECT is(jsonb_typeof(xprov.build_info()), 'object', 'build_info() returns a JSON object');
SELECT ok(xprov.build_info() ?& ARRAY['libcurl', 'cjson', 'duktape', 'postgres_built'],
          'build_info names libcurl, cJSON, duktape and the PostgreSQL it was built for');
SELECT is(split_part(xprov.build_info()->>'postgres_built', '.', 1), split_part(current_setting('server_version'), '.', 1),
          'built for this PostgreSQL major version');
SELECT is(xprov.build_info()->>'duktape_runtime', xprov.build_info()->>'duktape', 'the embedded duktape runs');

-- ---------------------------------------------------------------- stats
SELECT FROM pg_temp.tenant('t1');
SELECT FROM pg_temp.tenant('t2');
SELECT FROM pg_temp.conn('c1', 't1');
SELECT FROM pg_temp.conn('c1b', 't1');
SELECT FROM pg_temp.conn('c2', 't2');

SELECT results_eq($$SELECT pending, in_progress, failed, dead_letter, completed, skipped, cancelled FROM xprov.stats(pg_temp.id('t1'))$$,
                  $$VALUES (0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint)$$,
                  'stats of a tenant without operations: all zero');
-- on c1: completed, failed, dead_letter, in_progress (claimed), then pending x2 (same subject), skipped, cancelled
SELECT FROM pg_temp.enq('c', 'c1', 's-c');
SELECT FROM pg_temp.enq('f', 'c1', 's-f');
SELECT FROM pg_temp.enq('d', 'c1', 's-d');
SELECT FROM pg_temp.enq('ip', 'c1', 's-ip');
SELECT is(pg_temp.deqs(), ARRAY['c', 'd', 'f', 'ip'], 'claim four');
SELECT pg_temp.try($$SELECT xprov.complete(pg_temp.id('c'))$$) \g /dev/null
SELECT pg_temp.try($$SELECT xprov.fail(pg_temp.id('f'), 'HTTP 502', retry_after => '1 hour')$$) \g /dev/null
SELECT pg_temp.try($$SELECT xprov.fail(pg_temp.id('d'), 'HTTP 404', permanent => true)$$) \g /dev/null
SELECT FROM pg_temp.enq('p1', 'c1', 's-p');
SELECT FROM pg_temp.enq('p2', 'c1', 's-p');
SELECT FROM pg_temp.enq('s', 'c1', 's-s');
SELECT FROM pg_temp.enq('x', 'c1', 's-x');
SELECT pg_temp.try($$SELECT xprov.skip(pg_temp.id('s'), 'n/a')$$) \g /dev/null
SELECT pg_temp.try($$SELECT xprov.cancel(pg_temp.id('x'))$$) \g /dev/null
-- on c1b (same tenant): 3 pending; on c2 (other tenant): 2 pending
SELECT FROM pg_temp.enq('b1', 'c1b', 'b');
SELECT FROM pg_temp.enq('b2', 'c1b', 'b');
SELECT FROM pg_temp.enq('b3', 'c1b', 'bb');
SELECT FROM pg_temp.enq('o1', 'c2', 'o');
SELECT FROM pg_temp.enq('o2', 'c2', 'o2');

SELECT results_eq($$SELECT pending, in_progress, failed, dead_letter, completed, skipped, cancelled FROM xprov.stats(connector_id => pg_temp.id('c1'))$$,
                  $$VALUES (2::bigint, 1::bigint, 1::bigint, 1::bigint, 1::bigint, 1::bigint, 1::bigint)$$,
                  'stats(connector): pending 2, in_progress 1, failed 1, dead_letter 1, completed 1, skipped 1, cancelled 1');
SELECT results_eq($$SELECT pending, in_progress, failed, dead_letter, completed, skipped, cancelled
                      FROM xprov.stats(pg_temp.id('t1'))$$,
                  $$VALUES (5::bigint, 1::bigint, 1::bigint, 1::bigint, 1::bigint, 1::bigint, 1::bigint)$$,
                  'stats(tenant) adds the tenant''s other connector (3 more pending)');
SELECT results_eq($$SELECT pending, in_progress, failed, dead_letter, completed, skipped, cancelled FROM xprov.stats(pg_temp.id('t1'), pg_temp.id('c1b'))$$,
                  $$VALUES (3::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint)$$,
                  'stats(tenant, connector)');
SELECT results_eq($$SELECT pending, in_progress, failed, dead_letter, completed, skipped, cancelled FROM xprov.stats(pg_temp.id('t2'))$$,
                  $$VALUES (2::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint)$$,
                  'stats of the other tenant');
SELECT results_eq($$SELECT pending, in_progress, failed, dead_letter, completed, skipped, cancelled FROM xprov.stats(pg_temp.id('t2'), pg_temp.id('c1'))$$,
                  $$VALUES (0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint)$$,
                  'stats of a tenant and another tenant''s connector: nothing');
SELECT ok((SELECT s.pending >= 7 AND s.completed >= 1 AND s.dead_letter >= 1 FROM xprov.stats() s),
          'stats() counts every tenant');
SELECT is((SELECT count(*) FROM xprov.operations WHERE tenant_id = pg_temp.id('t1')),
          (SELECT pending + in_progress + failed + dead_letter + completed + skipped + cancelled FROM xprov.stats(pg_temp.id('t1'))),
          'the stats add up to the number of operations');
SELECT results_eq($$SELECT status, count(*) FROM xprov.operations WHERE tenant_id = pg_temp.id('t1') GROUP BY 1 ORDER BY 1$$,
                  $$VALUES ('cancelled'::text, 1::bigint), ('completed', 1), ('dead_letter', 1), ('failed', 1),
                           ('in_progress', 1), ('pending', 5), ('skipped', 1)$$,
                  'the operations view agrees with stats');

-- ---------------------------------------------------------------- views
SELECT results_eq($$SELECT pg_temp.nm(id), attempts, last_error FROM xprov.dead_letters WHERE tenant_id = pg_temp.id('t1')$$,
                  $$VALUES ('d'::text, 1, 'HTTP 404'::text)$$, 'dead_letters lists exactly the dead letter');
SELECT results_eq($$SELECT pg_temp.nm(operation_id), attempt, outcome, error FROM xprov.operation_attempts
                     WHERE operation_id IN (SELECT id FROM _ids) AND finished_at IS NOT NULL ORDER BY 1$$,
                  $$VALUES ('c'::text, 1, 'completed'::text, NULL::text), ('d', 1, 'dead_letter', 'HTTP 404'),
                           ('f', 1, 'failed', 'HTTP 502')$$,
                  'operation_attempts lists the finished attempts with their outcome');
SELECT ok((SELECT bool_and(duration = finished_at - started_at AND started_at <= finished_at)
             FROM xprov.operation_attempts WHERE operation_id IN (SELECT id FROM _ids) AND finished_at IS NOT NULL),
          'duration = finished_at - started_at');
SELECT results_eq($$SELECT pg_temp.nm(id), finished_at IS NOT NULL FROM xprov.operations
                     WHERE tenant_id = pg_temp.id('t1') ORDER BY 1$$,
                  $$VALUES ('b1'::text, false), ('b2', false), ('b3', false), ('c', true), ('d', false), ('f', false),
                           ('ip', false), ('p1', false), ('p2', false), ('s', true), ('x', true)$$,
                  'finished_at is set exactly for completed, skipped and cancelled operations');

SELECT * FROM finish();
ROLLBACK;
