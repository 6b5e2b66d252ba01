-- idempotency_key: deduplication while unfinished, per tenant, repeat after finish, within a batch
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS xprov;

BEGIN;
SELECT plan(29);
\ir common.psql

SELECT FROM pg_temp.tenant('t1');
SELECT FROM pg_temp.tenant('t2');
SELECT FROM pg_temp.conn('c1', 't1');
SELECT FROM pg_temp.conn('c1b', 't1');
SELECT FROM pg_temp.conn('c2', 't2');

-- enqueue for tenant of p_conn with key p_key on subject p_subject; returns the id
CREATE FUNCTION pg_temp.k(p_conn text, p_subject text, p_key text, p_attrs jsonb DEFAULT '{}') RETURNS uuid
LANGUAGE sql AS $$
    SELECT xprov.enqueue((SELECT tenant_id FROM xprov.connectors WHERE id = pg_temp.id(p_conn)), pg_temp.id(p_conn),
                         NULL, 'update', 'user', p_attrs, p_subject, 0, NULL, p_key)
$$;
CREATE FUNCTION pg_temp.n(p_tenant text) RETURNS bigint LANGUAGE sql AS $$
    SELECT count(*) FROM xprov.operations WHERE tenant_id = pg_temp.id(p_tenant)
$$;

-- ---------------------------------------------------------------- basic deduplication
SELECT FROM pg_temp.put('first', pg_temp.k('c1', 'alice', 'K-basic', '{"v": 1}'));
SELECT is(pg_temp.k('c1', 'alice', 'K-basic', '{"v": 2}'), pg_temp.id('first'),
          'the same key while the first operation is pending returns the first id');
SELECT is(pg_temp.n('t1'), 1::bigint, 'and inserts nothing');
SELECT is((SELECT attributes FROM xprov.operations WHERE id = pg_temp.id('first')), '{"v": 1}'::jsonb,
          'the first operation is unchanged');
SELECT is(pg_temp.k('c1b', 'someone-else', 'K-basic'), pg_temp.id('first'),
          'keys are per tenant: another connector of the same tenant gets the same id');
SELECT isnt(pg_temp.k('c2', 'alice', 'K-basic'), pg_temp.id('first'), 'another tenant with the same key gets a new operation');
SELECT is(pg_temp.n('t2'), 1::bigint, 'which is inserted');
SELECT isnt(pg_temp.k('c1', 'bob', NULL), pg_temp.k('c1', 'bob', NULL), 'no key: no deduplication');
SELECT is(pg_temp.n('t1'), 3::bigint, 'both unkeyed operations are inserted');

-- a rolled-back keyed enqueue does not hold the key
SAVEPOINT sp;
SELECT FROM pg_temp.put('rolledback', pg_temp.k('c1', 'carol', 'K-rollback'));
ROLLBACK TO SAVEPOINT sp;
SELECT isnt(pg_temp.k('c1', 'carol', 'K-rollback'),
            (SELECT id FROM _ids WHERE name = 'rolledback'), 'a key whose operation was rolled back is free again');
SELECT is(pg_temp.n('t1'), 4::bigint, 'the new keyed operation is inserted');

-- ---------------------------------------------------------------- per status
-- in_progress, failed, dead_letter, completed: claimed first
SELECT FROM pg_temp.put('kip', pg_temp.k('c1', 's-ip', 'K-ip'));
SELECT FROM pg_temp.put('kf', pg_temp.k('c1', 's-f', 'K-f'));
SELECT FROM pg_temp.put('kd', pg_temp.k('c1', 's-d', 'K-d'));
SELECT FROM pg_temp.put('kc', pg_temp.k('c1', 's-c', 'K-c'));
SELECT pg_temp.try($$SELECT xprov.set_connector_enabled(pg_temp.id('c1b'), false)$$) \g /dev/null
SELECT is(array(SELECT n FROM pg_temp.deq(100) n WHERE n LIKE 'k%' ORDER BY n), ARRAY['kc', 'kd', 'kf', 'kip'],
          'claim the four');
SELECT pg_temp.try($$SELECT xprov.fail(pg_temp.id('kf'), 'HTTP 503', retry_after => '1 hour')$$) \g /dev/null
SELECT pg_temp.try($$SELECT xprov.fail(pg_temp.id('kd'), 'HTTP 400', permanent => true)$$) \g /dev/null
SELECT pg_temp.try($$SELECT xprov.complete(pg_temp.id('kc'))$$) \g /dev/null
-- pending, skipped, cancelled
SELECT FROM pg_temp.put('kp', pg_temp.k('c1', 's-p', 'K-p'));
SELECT FROM pg_temp.put('ks', pg_temp.k('c1', 's-s', 'K-s'));
SELECT FROM pg_temp.put('kx', pg_temp.k('c1', 's-x', 'K-x'));
SELECT pg_temp.try($$SELECT xprov.skip(pg_temp.id('ks'), 'not needed')$$) \g /dev/null
SELECT pg_temp.try($$SELECT xprov.cancel(pg_temp.id('kx'))$$) \g /dev/null
SELECT is(array(SELECT pg_temp.status(n) FROM unnest(ARRAY['kp', 'kip', 'kf', 'kd', 'kc', 'ks', 'kx']) n),
          ARRAY['pending', 'in_progress', 'failed', 'dead_letter', 'completed', 'skipped', 'cancelled'],
          'one keyed operation in each status');

CREATE TEMP TABLE before AS SELECT pg_temp.n('t1') AS n;
SELECT is(pg_temp.k('c1', 's-p', 'K-p'), pg_temp.id('kp'), 'same key while pending -> same id');
SELECT is(pg_temp.k('c1', 's-ip', 'K-ip'), pg_temp.id('kip'), 'same key while in_progress -> same id');
SELECT is(pg_temp.k('c1', 's-f', 'K-f'), pg_temp.id('kf'), 'same key while failed -> same id');
SELECT is(pg_temp.k('c1', 's-d', 'K-d'), pg_temp.id('kd'), 'same key while dead_letter -> same id');
SELECT is(pg_temp.n('t1'), (SELECT n FROM before), 'none of these inserted anything');

SELECT isnt(pg_temp.put('kc2', pg_temp.k('c1', 's-c', 'K-c')), pg_temp.id('kc'), 'same key after completed -> new operation');
SELECT isnt(pg_temp.put('ks2', pg_temp.k('c1', 's-s', 'K-s')), pg_temp.id('ks'), 'same key after skipped -> new operation');
SELECT isnt(pg_temp.put('kx2', pg_temp.k('c1', 's-x', 'K-x')), pg_temp.id('kx'), 'same key after cancelled -> new operation');
SELECT is(pg_temp.n('t1'), (SELECT n FROM before) + 3, 'three operations inserted');
SELECT is(array(SELECT pg_temp.status(n) FROM unnest(ARRAY['kc2', 'ks2', 'kx2']) n), ARRAY['pending', 'pending', 'pending'],
          'the repeats are pending');
SELECT is(pg_temp.k('c1', 's-c', 'K-c'), pg_temp.id('kc2'), 'the key now dedupes to the new operation');

-- a retried dead letter keeps its key
SELECT pg_temp.try($$SELECT xprov.retry(pg_temp.id('kd'))$$) \g /dev/null
SELECT is(pg_temp.k('c1', 's-d', 'K-d'), pg_temp.id('kd'), 'same key after retry (pending again) -> same id');

-- ---------------------------------------------------------------- within enqueue_batch
CREATE FUNCTION pg_temp.bel(p_subject text, p_key text) RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_build_object('tenant_id', pg_temp.id('t1'), 'connector_id', pg_temp.id('c1'),
                              'operation_type', 'update', 'object_class', 'user', 'target_uid', p_subject,
                              'idempotency_key', p_key)
$$;
DELETE FROM before;
INSERT INTO before SELECT pg_temp.n('t1');
CREATE TEMP TABLE b AS
    SELECT * FROM xprov.enqueue_batch(jsonb_build_array(pg_temp.bel('b1', 'KB-1'), pg_temp.bel('b2', 'KB-2'),
                                                        pg_temp.bel('b1', 'KB-1'), pg_temp.bel('s-p', 'K-p'),
                                                        pg_temp.bel('b3', NULL)))
           WITH ORDINALITY AS r(id, ord);
SELECT is((SELECT count(*) FROM b), 5::bigint, 'the batch returns one id per element');
SELECT is((SELECT id FROM b WHERE ord = 3), (SELECT id FROM b WHERE ord = 1),
          'a repeated key within one batch returns the first element''s id');
SELECT is((SELECT id FROM b WHERE ord = 4), pg_temp.id('kp'),
          'a batch element with the key of an unfinished operation returns that operation''s id');
SELECT is(pg_temp.n('t1'), (SELECT n FROM before) + 3, 'the batch inserted three operations (b1, b2, b3)');
SELECT is((SELECT count(DISTINCT id) FROM b), 4::bigint, 'four distinct ids in the answer');

SELECT * FROM finish();
ROLLBACK;
