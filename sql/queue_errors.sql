--
-- queue_errors: every rejected call of the queue API reports its SQLSTATE and writes nothing.
-- (VERBOSITY sqlstate: the expected output pins the SQLSTATEs, not the message wording,
-- which the pgTAP suite checks where it matters.)
--
CREATE EXTENSION xprov;

\set tenant '00000000-0000-0000-0000-00000000000a'
\set other '00000000-0000-0000-0000-00000000000b'
SELECT xprov.add_connector(:'tenant', 'crm', 'external', NULL) AS crm \gset
SELECT xprov.add_connector(:'other', 'crm', 'external', NULL) AS other_crm \gset

\set VERBOSITY sqlstate

-- connectors
SELECT xprov.add_connector(:'tenant', 'crm', 'external', NULL);             -- duplicate name: 23505
SELECT xprov.add_connector(:'tenant', 'x', 'ldap', NULL);                   -- unknown kind: 22023
SELECT xprov.add_connector(NULL, 'x', 'external', NULL);                    -- NULL tenant: 22004
SELECT xprov.add_connector(:'tenant', 'x', 'scim2', NULL);                  -- scim2 without base_url: 22023
SELECT xprov.add_connector(:'tenant', 'x', 'rest', 'ftp://example.test/');  -- not http(s): 22023
SELECT xprov.add_connector(:'tenant', 'x', 'external', NULL, '[]');         -- config not an object: 22023
SELECT xprov.set_connector_enabled('00000000-0000-0000-0000-000000000000', false);  -- unknown: 42704

-- enqueue
SELECT xprov.enqueue(:'tenant', '00000000-0000-0000-0000-000000000000', NULL, 'create', 'user', '{}', 'u');  -- 42704
SELECT xprov.enqueue(:'tenant', :'other_crm', NULL, 'create', 'user', '{}', 'u');   -- another tenant's connector: 42501
SELECT xprov.enqueue(:'tenant', :'crm', NULL, 'upsert', 'user', '{}', 'u');         -- unknown operation type: 22023
SELECT xprov.enqueue(:'tenant', :'crm', NULL, 'create', 'user', '[]', 'u');         -- attributes not an object: 22023
SELECT xprov.enqueue(:'tenant', :'crm', NULL, 'create', 'user', '{}');              -- no subject: 22004
SELECT xprov.enqueue(:'tenant', :'crm', NULL, 'create', '', '{}', 'u');             -- empty object class: 22023
SELECT xprov.enqueue(NULL, :'crm', NULL, 'create', 'user', '{}', 'u');              -- NULL tenant: 22004
SET xprov.max_attributes_size = 1;
SELECT xprov.enqueue(:'tenant', :'crm', NULL, 'create', 'user',
                     jsonb_build_object('blob', repeat('x', 4096)), 'u');           -- too large: 54000
RESET xprov.max_attributes_size;

-- enqueue_batch: the whole batch is rejected, and the message names the (0-based) element
SELECT xprov.enqueue_batch('{}');                                                    -- not an array: 22023
\set VERBOSITY default
CREATE FUNCTION pg_temp.try_batch(ops jsonb) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    PERFORM xprov.enqueue_batch(ops);
    RETURN 'accepted';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || coalesce(' at ' || substring(SQLERRM FROM 'element \d+'), ' (no element named)');
END $$;
CREATE FUNCTION pg_temp.el(target text, extra jsonb DEFAULT '{}') RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_build_object('tenant_id', '00000000-0000-0000-0000-00000000000a',
                              'connector_id', (SELECT id FROM xprov.connectors
                                                WHERE tenant_id = '00000000-0000-0000-0000-00000000000a' AND name = 'crm'),
                              'operation_type', 'create', 'object_class', 'user', 'target_uid', target) || extra
$$;
SELECT pg_temp.try_batch(jsonb_build_array(pg_temp.el('a'), pg_temp.el('b', '{"operation_type": "upsert"}'))) AS bad_type;
SELECT pg_temp.try_batch(jsonb_build_array(pg_temp.el('a'), pg_temp.el('b'), pg_temp.el('c', '{"target_uid": null}')))
       AS no_subject;
SELECT pg_temp.try_batch(jsonb_build_array(pg_temp.el('a'),
           pg_temp.el('b', jsonb_build_object('connector_id', :'other_crm')))) AS other_tenant;
SELECT pg_temp.try_batch(jsonb_build_array('42'::jsonb, pg_temp.el('b'))) AS not_an_object;
SELECT pg_temp.try_batch(jsonb_build_array(pg_temp.el('a'), pg_temp.el('b', '{"attributes": [1]}'))) AS bad_attributes;
SELECT pg_temp.try_batch(jsonb_build_array(pg_temp.el('a'), pg_temp.el('b'))) AS good_batch;
SELECT count(*) AS operations FROM xprov.operations;   -- only the good batch's two
\set VERBOSITY sqlstate

-- wrong state and unknown ids
SELECT id AS op FROM xprov.operations WHERE target_uid = 'a' \gset
SELECT xprov.complete(:'op');                         -- pending, not leased: 55000
SELECT xprov.fail(:'op', 'e');                        -- 55000
SELECT xprov.retry(:'op');                            -- not a dead letter: 55000
SELECT count(*) AS claimed FROM xprov.dequeue(10);
SELECT xprov.cancel(:'op');                           -- in progress: 55000
SELECT xprov.skip(:'op', 'r');                        -- in progress: 55000
SELECT xprov.complete(:'op');                         -- fine
SELECT xprov.complete(:'op');                         -- already completed: 55000
SELECT xprov.complete('00000000-0000-0000-0000-000000000000');       -- unknown: 42704
SELECT xprov.fail('00000000-0000-0000-0000-000000000000', 'e');      -- 42704
SELECT xprov.retry('00000000-0000-0000-0000-000000000000');          -- 42704
SELECT xprov.skip('00000000-0000-0000-0000-000000000000', 'r');      -- 42704
SELECT xprov.cancel('00000000-0000-0000-0000-000000000000');         -- 42704

-- dequeue arguments
SELECT * FROM xprov.dequeue(0);                        -- 22023
SELECT * FROM xprov.dequeue(NULL);                     -- 22023
SELECT * FROM xprov.dequeue(10, '0 seconds');          -- 22023

\set VERBOSITY default
SELECT * FROM xprov.stats(:'tenant');
DROP EXTENSION xprov;
