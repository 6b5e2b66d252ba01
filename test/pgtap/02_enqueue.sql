-- xprov.enqueue: what it stores, defaults, transactional behaviour
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS xprov;

BEGIN;
SELECT plan(27);
\ir common.psql

SELECT FROM pg_temp.tenant('t1');
SELECT FROM pg_temp.conn('c1', 't1');
SELECT FROM pg_temp.put('i1', gen_random_uuid());

-- every parameter, positional
SELECT isnt(pg_temp.put('full', xprov.enqueue(pg_temp.id('t1'), pg_temp.id('c1'), pg_temp.id('i1'), 'create', 'user',
                                              '{"userName": "alice", "emails": [{"value": "a@example.test"}]}',
                                              'alice-uid', 5, '2100-01-01 00:00:00+00', 'key-full')),
            NULL, 'enqueue with every parameter returns an id');

SELECT results_eq(
    $$SELECT tenant_id, connector_id, identity_id, target_uid, operation_type, object_class, attributes,
             priority, not_before, idempotency_key
        FROM xprov.operations WHERE id = pg_temp.id('full')$$,
    $$VALUES (pg_temp.id('t1'), pg_temp.id('c1'), pg_temp.id('i1'), 'alice-uid'::text, 'create'::text, 'user'::text,
              '{"userName": "alice", "emails": [{"value": "a@example.test"}]}'::jsonb, 5,
              '2100-01-01 00:00:00+00'::timestamptz, 'key-full'::text)$$,
    'operations view shows every enqueued field');

SELECT results_eq(
    $$SELECT status, attempts, retry_count, last_error, finished_at, result, result_target_uid
        FROM xprov.operations WHERE id = pg_temp.id('full')$$,
    $$VALUES ('pending'::text, 0, 0, NULL::text, NULL::timestamptz, NULL::jsonb, NULL::text)$$,
    'a new operation is pending with no attempts, no error, no result');

SELECT ok((SELECT created_at BETWEEN now() AND clock_timestamp() FROM xprov.operations WHERE id = pg_temp.id('full')),
          'created_at is the enqueue time');

-- named parameters and defaults
SELECT lives_ok($$SELECT pg_temp.put('named', xprov.enqueue(tenant_id => pg_temp.id('t1'),
        connector_id => pg_temp.id('c1'), identity_id => gen_random_uuid(), operation_type => 'update',
        object_class => 'user', attributes => '{"a": 1}'))$$,
    'enqueue with named parameters and defaults');
SELECT results_eq(
    $$SELECT target_uid, priority, not_before, idempotency_key, status FROM xprov.operations WHERE id = pg_temp.id('named')$$,
    $$VALUES (NULL::text, 0, NULL::timestamptz, NULL::text, 'pending'::text)$$,
    'defaults: target_uid NULL, priority 0, not_before NULL, idempotency_key NULL');

-- NULL attributes are stored as an empty object
SELECT lives_ok($$SELECT pg_temp.put('nullattrs', xprov.enqueue(pg_temp.id('t1'), pg_temp.id('c1'), gen_random_uuid(),
                                                   'update', 'user', NULL))$$,
                'enqueue with NULL attributes is accepted');
SELECT is((SELECT attributes FROM xprov.operations WHERE id = pg_temp.id('nullattrs')), '{}'::jsonb,
          'NULL attributes are stored as {}');

-- subject by target_uid only
SELECT lives_ok($$SELECT pg_temp.put('byuid', xprov.enqueue(pg_temp.id('t1'), pg_temp.id('c1'), NULL, 'delete', 'group',
                                               '{}', 'grp-42'))$$,
                'enqueue with only a target_uid (no identity_id) is accepted');
SELECT results_eq($$SELECT identity_id, target_uid, status FROM xprov.operations WHERE id = pg_temp.id('byuid')$$,
                  $$VALUES (NULL::uuid, 'grp-42'::text, 'pending'::text)$$,
                  'the target_uid-only operation is stored and pending');

-- all operation types
SELECT lives_ok($$SELECT xprov.enqueue(pg_temp.id('t1'), pg_temp.id('c1'), gen_random_uuid(), t, 'user', '{}')
                    FROM unnest(ARRAY['create', 'update', 'delete', 'enable', 'disable']) AS t$$,
                'every operation type (create, update, delete, enable, disable) is accepted');
SELECT is(array(SELECT DISTINCT operation_type FROM xprov.operations WHERE tenant_id = pg_temp.id('t1') ORDER BY 1),
          ARRAY['create', 'delete', 'disable', 'enable', 'update'], 'all five operation types are stored');

SELECT is((SELECT count(*) FROM xprov.operations WHERE tenant_id = pg_temp.id('t1')), 9::bigint,
          'nine operations so far');
SELECT is((SELECT count(DISTINCT id) FROM xprov.operations WHERE tenant_id = pg_temp.id('t1')), 9::bigint,
          'every operation has its own id');

-- the same subject can be enqueued many times (a FIFO, not a set)
SELECT lives_ok($$SELECT xprov.enqueue(pg_temp.id('t1'), pg_temp.id('c1'), pg_temp.id('i1'), 'update', 'user',
                                       jsonb_build_object('n', g)) FROM generate_series(1, 3) g$$,
                'the same subject can be enqueued repeatedly');
SELECT is((SELECT count(*) FROM xprov.operations WHERE identity_id = pg_temp.id('i1') AND status = 'pending'),
          4::bigint, 'all four operations of the subject are pending');

-- transactional: a rolled-back enqueue leaves nothing behind
SAVEPOINT before_enqueue;
SELECT FROM generate_series(1, 3) AS g
 WHERE xprov.enqueue(pg_temp.id('t1'), pg_temp.id('c1'), gen_random_uuid(), 'create', 'user',
                     jsonb_build_object('g', g)) IS NULL;
SELECT is((SELECT count(*) FROM xprov.operations WHERE tenant_id = pg_temp.id('t1')), 15::bigint,
          'three more operations inside the savepoint');
ROLLBACK TO SAVEPOINT before_enqueue;
SELECT is((SELECT count(*) FROM xprov.operations WHERE tenant_id = pg_temp.id('t1')), 12::bigint,
          'rolling back the enqueue leaves no operation');
SELECT is((SELECT pending FROM xprov.stats(pg_temp.id('t1'))), 12::bigint,
          'stats agree after the rollback');

-- several enqueues to one new subject in one statement (a SELECT calling enqueue per row): each
-- sees the subject and lane the one before made, as successive statements would
CREATE FUNCTION pg_temp.lane_ops(p_uid text) RETURNS text[] LANGUAGE sql AS $$
    SELECT array_agg(o.attributes ->> 'g' ORDER BY o.seq)
      FROM xprov.op o JOIN xprov.subject s ON s.lane_id = o.lane_id
     WHERE s.connector_id = pg_temp.id('c1') AND s.subject = 't:' || p_uid
$$;
SELECT is((SELECT count(*) FROM generate_series(1, 3) AS g
            WHERE xprov.enqueue(pg_temp.id('t1'), pg_temp.id('c1'), NULL, 'update', 'user',
                                jsonb_build_object('g', g), 'one-statement') IS NOT NULL),
          3::bigint, 'three enqueues to one new subject in one statement succeed');
SELECT is(pg_temp.lane_ops('one-statement'), ARRAY['1', '2', '3'],
          '... into the one lane of the one subject, in their order');
SELECT is((SELECT count(*) FROM generate_series(1, 2) AS g,
                 xprov.enqueue_batch(jsonb_build_array(jsonb_build_object(
                     'tenant_id', pg_temp.id('t1'), 'connector_id', pg_temp.id('c1'), 'operation_type', 'update',
                     'object_class', 'user', 'target_uid', 'one-statement-batch', 'attributes',
                     jsonb_build_object('g', g))))),
          2::bigint, 'two batches to one new subject in one statement succeed');
SELECT is(pg_temp.lane_ops('one-statement-batch'), ARRAY['1', '2'], '... into one lane, in their order');
SELECT is((SELECT count(*) FROM generate_series(1, 4) AS g,
                 LATERAL (SELECT xprov.enqueue(pg_temp.id('t1'), pg_temp.id('c1'), NULL, 'update', 'user',
                                               jsonb_build_object('g', g), 'one-statement-mixed') AS id
                           WHERE g % 2 = 1
                          UNION ALL
                          SELECT * FROM xprov.enqueue_batch(jsonb_build_array(jsonb_build_object(
                              'tenant_id', pg_temp.id('t1'), 'connector_id', pg_temp.id('c1'),
                              'operation_type', 'update', 'object_class', 'user',
                              'target_uid', 'one-statement-mixed', 'attributes', jsonb_build_object('g', g))))
                           WHERE g % 2 = 0) AS e),
          4::bigint, 'single and batched enqueues to one new subject, alternating in one statement');
SELECT is(pg_temp.lane_ops('one-statement-mixed'), ARRAY['1', '2', '3', '4'], '... into one lane, in their order');
-- the same through an application's row trigger: one multi-row INSERT, one subject twice
CREATE TEMP TABLE app_account (uid text, title text);
CREATE FUNCTION pg_temp.provision() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM xprov.enqueue(pg_temp.id('t1'), pg_temp.id('c1'), NULL, 'update', 'user',
                          jsonb_build_object('g', NEW.title), NEW.uid);
    RETURN NULL;
END $$;
CREATE TRIGGER provision AFTER INSERT ON app_account FOR EACH ROW EXECUTE FUNCTION pg_temp.provision();
INSERT INTO app_account VALUES ('one-statement-trigger', '1'), ('one-statement-trigger', '2');
SELECT is(pg_temp.lane_ops('one-statement-trigger'), ARRAY['1', '2'],
          'a row trigger enqueueing for two rows of one new subject: one lane, in order');
SELECT is((SELECT array_agg(l.state::text || ':' || (l.next_seq = (SELECT min(o.seq) FROM xprov.op o
                                                                     WHERE o.lane_id = l.lane_id))::text
                            ORDER BY s.subject)
             FROM xprov.subject s JOIN xprov.lane l ON l.lane_id = s.lane_id
            WHERE s.connector_id = pg_temp.id('c1') AND s.subject LIKE 't:one-statement%'),
          ARRAY['r:true', 'r:true', 'r:true', 'r:true'], 'each lane is ready with its first operation as head');

SELECT * FROM finish();
ROLLBACK;
