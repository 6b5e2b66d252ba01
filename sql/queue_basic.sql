--
-- queue_basic: the operation queue end to end through its public SQL API
-- (external connector: this session plays the outside processor).
-- Prints names, statuses and counts, never generated ids or times.
--
CREATE EXTENSION xprov;

\set tenant '00000000-0000-0000-0000-00000000000a'
\set other '00000000-0000-0000-0000-00000000000b'
\set alice '00000000-0000-0000-0000-0000000a11ce'

SELECT xprov.add_connector(:'tenant', 'crm', 'external', NULL) AS crm \gset
SELECT xprov.add_connector(:'other', 'crm', 'external', NULL) AS other_crm \gset
SELECT xprov.add_connector(:'tenant', 'directory', 'scim2', 'https://scim.example.test/v2',
                           '{"auth": {"type": "bearer", "token": "s3cr3t"}, "timeout_ms": 5000}') IS NOT NULL AS added;
SELECT tenant_id = :'tenant' AS own_tenant, name, kind, base_url, config, auth_type, enabled
  FROM xprov.connectors ORDER BY tenant_id, name;

-- what a processor sees: n is a label carried in the attributes
CREATE VIEW ops AS
  SELECT (attributes->>'n')::int AS n, operation_type AS type, coalesce(identity_id::text, target_uid) = :'alice' AS alice,
         target_uid, priority, status, attempts, last_error, result, result_target_uid
    FROM xprov.operations;

-- alice: create, then update (one subject: identity alice, object class user)
SELECT xprov.enqueue(:'tenant', :'crm', :'alice', 'create', 'user', '{"n": 1, "userName": "alice"}') IS NOT NULL AS enqueued;
SELECT xprov.enqueue(:'tenant', :'crm', :'alice', 'update', 'user', '{"n": 2, "title": "engineer"}') IS NOT NULL AS enqueued;
-- bob is known only by his account id on the target
SELECT xprov.enqueue(:'tenant', :'crm', NULL, 'disable', 'user', '{"n": 3}', target_uid => 'bob-42') IS NOT NULL AS enqueued;
-- carol, urgent
SELECT xprov.enqueue(:'tenant', :'crm', NULL, 'delete', 'user', '{"n": 4}', target_uid => 'carol-7', priority => 10)
       IS NOT NULL AS enqueued;
-- the same idempotency key twice: one operation
SELECT xprov.enqueue(:'tenant', :'crm', NULL, 'enable', 'user', '{"n": 5}', target_uid => 'dave-1', idempotency_key => 'dave-enable')
     = xprov.enqueue(:'tenant', :'crm', NULL, 'enable', 'user', '{"n": 6}', target_uid => 'dave-1', idempotency_key => 'dave-enable')
       AS same_id;
-- a batch for the other tenant
SELECT count(*) AS batch_ids FROM xprov.enqueue_batch(jsonb_build_array(
    jsonb_build_object('tenant_id', :'other', 'connector_id', :'other_crm', 'operation_type', 'create',
                       'object_class', 'group', 'target_uid', 'g1', 'attributes', '{"n": 100}'::jsonb),
    jsonb_build_object('tenant_id', :'other', 'connector_id', :'other_crm', 'operation_type', 'update',
                       'object_class', 'group', 'target_uid', 'g1', 'attributes', '{"n": 101}'::jsonb)));

SELECT n, type, alice, target_uid, priority, status, attempts FROM ops ORDER BY n;
SELECT * FROM xprov.stats(:'tenant');
SELECT * FROM xprov.stats(:'other');

-- the other tenant's connector is switched off: only this tenant's work is handed out
SELECT xprov.set_connector_enabled(:'other_crm', false);

-- first claim: the head of every subject, priority first; alice's update waits for her create
SELECT (attributes->>'n')::int AS n, operation_type, priority, retry_count FROM xprov.dequeue(10) ORDER BY n;
SELECT n, type, status, attempts FROM ops WHERE n < 100 ORDER BY n;
SELECT count(*) AS nothing_more FROM xprov.dequeue(10);

SELECT id AS op1 FROM xprov.operations WHERE attributes->>'n' = '1' \gset
SELECT id AS op2 FROM xprov.operations WHERE attributes->>'n' = '2' \gset
SELECT id AS op3 FROM xprov.operations WHERE attributes->>'n' = '3' \gset
SELECT id AS op4 FROM xprov.operations WHERE attributes->>'n' = '4' \gset
SELECT id AS op5 FROM xprov.operations WHERE attributes->>'n' = '5' \gset

-- outcomes: alice's create worked, bob's target is down, carol's delete is refused, dave's enable worked
SELECT xprov.complete(:'op1', 'crm-alice', '{"etag": "1"}');
SELECT xprov.fail(:'op3', 'HTTP 503 service unavailable', retry_after => '1 hour');
SELECT xprov.fail(:'op4', 'HTTP 403 cannot delete an admin', permanent => true);
SELECT xprov.complete_batch(ARRAY[:'op5']::uuid[]) AS completed;
SELECT n, type, status, attempts, last_error, result, result_target_uid FROM ops WHERE n < 100 ORDER BY n;
SELECT (attributes->>'n')::int AS n, attempts, last_error FROM xprov.dead_letters;

-- alice's update is next; bob waits for his retry time; carol is parked
SELECT (attributes->>'n')::int AS n, operation_type, retry_count FROM xprov.dequeue(10);
SELECT xprov.complete(:'op2');

-- the operator retries carol's delete: it is handed out again
SELECT xprov.retry(:'op4');
SELECT n, status FROM ops WHERE n = 4;
SELECT (attributes->>'n')::int AS n, operation_type FROM xprov.dequeue(10);
SELECT xprov.complete(:'op4');

-- and gives up on bob
SELECT xprov.skip(:'op3', 'account already removed by hand');
-- an operation that is no longer wanted
SELECT xprov.enqueue(:'tenant', :'crm', NULL, 'update', 'user', '{"n": 7}', target_uid => 'erin-3') AS op7 \gset
SELECT xprov.cancel(:'op7');

SELECT n, type, status, attempts FROM ops WHERE n < 100 ORDER BY n;
SELECT (SELECT (attributes->>'n')::int FROM xprov.operations o WHERE o.id = a.operation_id) AS n,
       attempt, outcome, error
  FROM xprov.operation_attempts a
 WHERE tenant_id = :'tenant'
 ORDER BY 1, 2;
SELECT * FROM xprov.stats(:'tenant');
SELECT * FROM xprov.stats(connector_id => :'crm');
SELECT count(*) AS nothing_left FROM xprov.dequeue(10);

-- the other tenant's connector back on: its two operations come out one at a time, in order
SELECT xprov.set_connector_enabled(:'other_crm', true);
SELECT (attributes->>'n')::int AS n, object_class, target_uid FROM xprov.dequeue(10);
SELECT xprov.complete(id) FROM xprov.operations WHERE tenant_id = :'other' AND status = 'in_progress';
SELECT (attributes->>'n')::int AS n, object_class, target_uid FROM xprov.dequeue(10);
SELECT xprov.complete(id) FROM xprov.operations WHERE tenant_id = :'other' AND status = 'in_progress';
SELECT * FROM xprov.stats(:'other');

DROP VIEW ops;
DROP EXTENSION xprov;
