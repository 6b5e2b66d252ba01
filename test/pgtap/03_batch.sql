-- xprov.enqueue_batch: fields, order of returned ids, empty batch, malformed batches
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS xprov;

BEGIN;
SELECT plan(39);
\ir common.psql

SELECT FROM pg_temp.tenant('t1');
SELECT FROM pg_temp.tenant('t2');
SELECT FROM pg_temp.conn('c1', 't1');
SELECT FROM pg_temp.conn('c2', 't2');
SELECT FROM pg_temp.put('i1', gen_random_uuid());

-- a helper building one well-formed element
CREATE FUNCTION pg_temp.el(p_n int, p_subject text DEFAULT NULL) RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_build_object('tenant_id', pg_temp.id('t1'), 'connector_id', pg_temp.id('c1'),
                              'operation_type', 'update', 'object_class', 'user',
                              'target_uid', coalesce(p_subject, 'uid-' || p_n),
                              'attributes', jsonb_build_object('n', p_n))
$$;
CREATE FUNCTION pg_temp.ops() RETURNS bigint LANGUAGE sql AS $$
    SELECT count(*) FROM xprov.operations WHERE tenant_id IN (pg_temp.id('t1'), pg_temp.id('t2'))
$$;

-- ---------------------------------------------------------------- happy path
CREATE TEMP TABLE b1 AS
    SELECT * FROM xprov.enqueue_batch(jsonb_build_array(pg_temp.el(0), pg_temp.el(1), pg_temp.el(2), pg_temp.el(3)))
           WITH ORDINALITY AS b(id, ord);
SELECT is((SELECT array_agg(o.attributes->>'n' ORDER BY b1.ord) FROM b1 JOIN xprov.operations o ON o.id = b1.id),
          ARRAY['0', '1', '2', '3'], 'enqueue_batch returns one id per element, in input order');
SELECT is((SELECT count(*) FROM (SELECT id > lag(id) OVER (ORDER BY ord) AS up FROM b1) x WHERE up),
          3::bigint, 'a session''s ids increase in the order of its operations');
SELECT is((SELECT count(*) FROM (SELECT id, get_byte(uuid_send(id), 6) >> 4 AS version,
                                        get_byte(uuid_send(id), 8) >> 6 AS variant,
                                        id > lag(id) OVER (ORDER BY n) AS up
                                   FROM (SELECT n, xprov._new_id() AS id FROM generate_series(1, 20000) n) g) x
            WHERE version = 7 AND variant = 2 AND up IS NOT FALSE),
          20000::bigint, '... 20,000 in a row too (more than a millisecond''s count): each a UUIDv7');
SELECT is((SELECT count(DISTINCT left(id::text, 13)) > 1 FROM (SELECT xprov._new_id() AS id FROM generate_series(1, 5000)) g),
          true, '... whose first 48 bits move on when the count is full');

SELECT lives_ok($q$SELECT pg_temp.put('full', id) FROM xprov.enqueue_batch(jsonb_build_array(jsonb_build_object(
        'tenant_id', pg_temp.id('t1'), 'connector_id', pg_temp.id('c1'), 'identity_id', pg_temp.id('i1'),
        'operation_type', 'create', 'object_class', 'user', 'attributes', '{"userName": "bob"}'::jsonb,
        'target_uid', 'bob-uid', 'priority', 7, 'not_before', '2100-01-01T00:00:00Z',
        'idempotency_key', 'batch-full'))) AS id$q$,
    'enqueue_batch with every field');
SELECT results_eq(
    $$SELECT tenant_id, connector_id, identity_id, target_uid, operation_type, object_class, attributes,
             priority, not_before, idempotency_key, status
        FROM xprov.operations WHERE id = pg_temp.id('full')$$,
    $$VALUES (pg_temp.id('t1'), pg_temp.id('c1'), pg_temp.id('i1'), 'bob-uid'::text, 'create'::text, 'user'::text,
              '{"userName": "bob"}'::jsonb, 7, '2100-01-01 00:00:00+00'::timestamptz, 'batch-full'::text,
              'pending'::text)$$,
    'every batch field is stored like enqueue would store it');

SELECT lives_ok($q$SELECT pg_temp.put('minimal', id) FROM xprov.enqueue_batch(jsonb_build_array(jsonb_build_object(
        'tenant_id', pg_temp.id('t1'), 'connector_id', pg_temp.id('c1'), 'identity_id', gen_random_uuid(),
        'operation_type', 'update', 'object_class', 'user'))) AS id$q$,
    'enqueue_batch with only the required fields');
SELECT results_eq(
    $$SELECT attributes, target_uid, priority, not_before, idempotency_key FROM xprov.operations WHERE id = pg_temp.id('minimal')$$,
    $$VALUES ('{}'::jsonb, NULL::text, 0, NULL::timestamptz, NULL::text)$$,
    'omitted batch fields take the enqueue defaults (attributes {}, priority 0, NULLs)');

SELECT is_empty($$SELECT * FROM xprov.enqueue_batch('[]')$$, 'an empty batch returns no rows');
SELECT is(pg_temp.ops(), 6::bigint, 'six operations so far (the empty batch added none)');

SELECT is((SELECT count(DISTINCT id) FROM xprov.enqueue_batch(
              (SELECT jsonb_agg(pg_temp.el(g, 'bulk-' || (g % 100))) FROM generate_series(1, 2000) g)) AS b(id)),
          2000::bigint, 'a 2000-element batch returns 2000 distinct ids');
SELECT is((SELECT count(*) FROM xprov.operations WHERE tenant_id = pg_temp.id('t1') AND target_uid LIKE 'bulk-%'
                                                   AND status = 'pending'), 2000::bigint,
          'all 2000 are pending');

-- elements of one subject keep the batch order (FIFO) on dequeue; on their own
-- connector, with c1 (2000+ pending operations) disabled meanwhile
SELECT FROM pg_temp.conn('cf', 't1');
SELECT pg_temp.try($$SELECT xprov.set_connector_enabled(pg_temp.id('c1'), false)$$) \g /dev/null
SELECT pg_temp.put('f' || n, id)
  FROM xprov.enqueue_batch(jsonb_build_array(
           pg_temp.el(1, 'fifo') || jsonb_build_object('connector_id', pg_temp.id('cf')),
           pg_temp.el(2, 'fifo') || jsonb_build_object('connector_id', pg_temp.id('cf')),
           pg_temp.el(3, 'fifo') || jsonb_build_object('connector_id', pg_temp.id('cf'))))
       WITH ORDINALITY AS b(id, n) \g /dev/null
SELECT is(pg_temp.deqs(), ARRAY['f1'], 'only the first batch element of a subject is handed out');
SELECT pg_temp.try($$SELECT xprov.complete(pg_temp.id('f1'))$$) \g /dev/null
SELECT is(pg_temp.drain(), 2, 'the two others follow');
SELECT is(array(SELECT name FROM _log ORDER BY seq), ARRAY['f2', 'f3'], 'in batch order');
SELECT pg_temp.try($$SELECT xprov.set_connector_enabled(pg_temp.id('c1'), true)$$) \g /dev/null

-- a subject's operations are numbered in enqueue order, whether they come one
-- at a time or in batches, and walked by its lane in that order
SELECT pg_temp.put('n1', xprov.enqueue(pg_temp.id('t1'), pg_temp.id('cf'), NULL, 'update', 'user', '{}', 'numbered')) \g /dev/null
SELECT pg_temp.put('n' || (n + 1), id)
  FROM xprov.enqueue_batch(jsonb_build_array(
           pg_temp.el(1, 'numbered') || jsonb_build_object('connector_id', pg_temp.id('cf')),
           pg_temp.el(2, 'other') || jsonb_build_object('connector_id', pg_temp.id('cf')),
           pg_temp.el(3, 'numbered') || jsonb_build_object('connector_id', pg_temp.id('cf'))))
       WITH ORDINALITY AS b(id, n) \g /dev/null
SELECT pg_temp.put('n5', xprov.enqueue(pg_temp.id('t1'), pg_temp.id('cf'), NULL, 'update', 'user', '{}', 'numbered')) \g /dev/null
SELECT is((SELECT count(DISTINCT o.seq) FROM xprov.op o
            WHERE o.id IN (pg_temp.id('n1'), pg_temp.id('n2'), pg_temp.id('n4'), pg_temp.id('n5'))),
          4::bigint, 'a subject''s operations have numbers of their own, singles and batches alike');
SELECT is(array(SELECT n FROM unnest(ARRAY['n1', 'n2', 'n4', 'n5']) n
                  JOIN xprov.op o ON o.id = pg_temp.id(n) ORDER BY o.seq),
          ARRAY['n1', 'n2', 'n4', 'n5'], 'in the order they were enqueued');

-- uuids in any spelling uuid_in accepts (the canonical one is read without it)
CREATE TEMP TABLE spelled AS
    SELECT b.id FROM xprov.enqueue_batch((
        SELECT jsonb_agg(pg_temp.el(1, 'spelled-' || s) || jsonb_build_object(
                             'connector_id', s, 'tenant_id', upper(pg_temp.id('t1')::text)))
          FROM unnest(ARRAY[pg_temp.id('cf')::text, upper(pg_temp.id('cf')::text), '{' || pg_temp.id('cf') || '}',
                            replace(pg_temp.id('cf')::text, '-', '')]) s)) b(id);
SELECT is((SELECT array_agg(o.connector_id = pg_temp.id('cf') AND o.tenant_id = pg_temp.id('t1'))
             FROM spelled JOIN xprov.op o ON o.id = spelled.id),
          ARRAY[true, true, true, true], 'canonical, upper case, braced and unhyphenated uuids name the same connector');

-- ---------------------------------------------------------------- malformed batches
SELECT throws_ok($$SELECT xprov.enqueue_batch('{"tenant_id": null}')$$, '22023', NULL, 'ops that is an object -> 22023');
SELECT throws_ok($$SELECT xprov.enqueue_batch('"x"')$$, '22023', NULL, 'ops that is a string -> 22023');
SELECT throws_ok($$SELECT xprov.enqueue_batch('null')$$, '22023', NULL, 'ops that is JSON null -> 22023');

SELECT matches(pg_temp.err(format('SELECT xprov.enqueue_batch(%L)',
                                  jsonb_build_array(42, pg_temp.el(1)))),
               '^22023: .*\melement 0\M', 'element that is not an object -> 22023 naming element 0');
SELECT matches(pg_temp.err(format('SELECT xprov.enqueue_batch(%L)',
                                  jsonb_build_array(pg_temp.el(1), pg_temp.el(2),
                                                    pg_temp.el(3) || '{"operation_type": "upsert"}'))),
               '^22023: .*\melement 2\M', 'unknown operation_type in element 2 -> 22023 naming element 2');
SELECT matches(pg_temp.err(format('SELECT xprov.enqueue_batch(%L)',
                                  jsonb_build_array(pg_temp.el(1),
                                                    pg_temp.el(2) || jsonb_build_object('connector_id', gen_random_uuid())))),
               '^42704: .*\melement 1\M', 'unknown connector in element 1 -> 42704 naming element 1');
SELECT matches(pg_temp.err(format('SELECT xprov.enqueue_batch(%L)',
                                  jsonb_build_array(pg_temp.el(1),
                                                    pg_temp.el(2) || jsonb_build_object('connector_id', pg_temp.id('c2'))))),
               '^42501: .*\melement 1\M', 'connector of another tenant in element 1 -> 42501 naming element 1');
SELECT matches(pg_temp.err(format('SELECT xprov.enqueue_batch(%L)',
                                  jsonb_build_array(pg_temp.el(1), pg_temp.el(2), pg_temp.el(3),
                                                    pg_temp.el(4) - 'target_uid'))),
               '^22004: .*\melement 3\M', 'no identity_id and no target_uid in element 3 -> 22004 naming element 3');
SELECT matches(pg_temp.err(format('SELECT xprov.enqueue_batch(%L)',
                                  jsonb_build_array(pg_temp.el(1) || '{"target_uid": ""}'))),
               '^22004: .*\melement 0\M', 'empty target_uid as the only subject -> 22004 naming element 0');
SELECT matches(pg_temp.err(format('SELECT xprov.enqueue_batch(%L)',
                                  jsonb_build_array(pg_temp.el(1), pg_temp.el(2) || '{"attributes": [1, 2]}'))),
               '^22023: .*\melement 1\M', 'attributes that are an array in element 1 -> 22023 naming element 1');
SELECT matches(pg_temp.err(format('SELECT xprov.enqueue_batch(%L)',
                                  jsonb_build_array(pg_temp.el(1), pg_temp.el(2) - 'tenant_id'))),
               '^22004: .*\melement 1\M', 'missing tenant_id in element 1 -> 22004 naming element 1');
SELECT matches(pg_temp.err(format('SELECT xprov.enqueue_batch(%L)',
                                  jsonb_build_array(pg_temp.el(1), pg_temp.el(2) || '{"object_class": ""}'))),
               '^22023: .*\melement 1\M', 'empty object_class in element 1 -> 22023 naming element 1');
SELECT matches(pg_temp.err(format('SELECT xprov.enqueue_batch(%L)',
                                  jsonb_build_array(pg_temp.el(1), pg_temp.el(2) || '{"tenant_id": "not-a-uuid"}'))),
               '^(22023|22P02): .*\melement 1\M', 'malformed tenant_id uuid in element 1 -> error naming element 1');
SELECT matches(pg_temp.err(format('SELECT xprov.enqueue_batch(%L)',
                                  jsonb_build_array(pg_temp.el(1), pg_temp.el(2) || '{"priority": "high"}'))),
               '^(22023|22P02): .*\melement 1\M', 'non-integer priority in element 1 -> error naming element 1');
SELECT matches(pg_temp.err(format('SELECT xprov.enqueue_batch(%L)',
                                  jsonb_build_array(pg_temp.el(1), pg_temp.el(2) || '{"not_before": "someday"}'))),
               '^(22023|22007): .*\melement 1\M', 'malformed not_before in element 1 -> error naming element 1');
SET LOCAL xprov.max_attributes_size = 1;
SELECT matches(pg_temp.err(format('SELECT xprov.enqueue_batch(%L)',
                                  jsonb_build_array(pg_temp.el(1),
                                                    pg_temp.el(2) || jsonb_build_object('attributes',
                                                        jsonb_build_object('blob', repeat('x', 4000)))))),
               '^54000: .*\melement 1\M', 'oversized attributes in element 1 -> 54000 naming element 1');
RESET xprov.max_attributes_size;

-- none of the rejected batches left anything behind
SELECT is(pg_temp.ops(), 2018::bigint, 'rejected batches inserted nothing');

-- a bad element rejects the whole batch even when the caller traps the error
-- (plpgsql exception block = subtransaction; the good elements must not survive on their own)
CREATE FUNCTION pg_temp.try_batch(p jsonb) RETURNS int LANGUAGE plpgsql AS $$
DECLARE n int := 0; r uuid;
BEGIN
    BEGIN
        FOR r IN SELECT * FROM xprov.enqueue_batch(p) LOOP n := n + 1; END LOOP;
    EXCEPTION WHEN OTHERS THEN
        RETURN -1;
    END;
    RETURN n;
END $$;
SELECT is(pg_temp.try_batch(jsonb_build_array(pg_temp.el(1, 'atomic'), pg_temp.el(2, 'atomic'),
                                              pg_temp.el(3, 'atomic') || '{"operation_type": "bogus"}')),
          -1, 'a batch with a bad last element raises instead of returning the good ones');
SELECT is((SELECT count(*) FROM xprov.operations WHERE target_uid = 'atomic'), 0::bigint,
          'no element of the rejected batch was enqueued');
SELECT is(pg_temp.ops(), 2018::bigint, 'operation count unchanged after the rejected batch');

-- enqueue_batch is STRICT-or-equivalent on SQL NULL: no rows, no error
SELECT is((SELECT count(*) FROM xprov.enqueue_batch(NULL)), 0::bigint, 'enqueue_batch(NULL) returns no rows');

SELECT * FROM finish();
ROLLBACK;
