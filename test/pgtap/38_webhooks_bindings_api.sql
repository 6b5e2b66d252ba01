-- Bad input to the webhook and tenant-binding functions (the end-to-end behaviour is in
-- test/process/webhooks.sh and 36_roles_tenants.sql): every NULL, unknown id and bad value
-- refused with its SQLSTATE, and nothing written.
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS xprov;

BEGIN;
SELECT plan(16);
\ir common.psql

SELECT pg_temp.tenant('T');
SELECT pg_temp.put('w', xprov.add_webhook(pg_temp.id('T'), 'http://127.0.0.1:9/hooks',
                                          ARRAY['operation.completed'], 'pgtap-webhook-secret'));

SELECT throws_ok($$SELECT xprov.add_webhook(NULL, 'http://127.0.0.1:9/h', '{operation.completed}', 'pgtap-webhook-secret')$$,
                 '22004', 'tenant_id, url, events and secret must not be null', 'add_webhook: a NULL tenant');
SELECT throws_ok($$SELECT xprov.add_webhook(gen_random_uuid(), NULL, '{operation.completed}', 'pgtap-webhook-secret')$$,
                 '22004', NULL, 'add_webhook: a NULL url');
SELECT throws_ok($$SELECT xprov.add_webhook(gen_random_uuid(), 'http://127.0.0.1:9/h', NULL, 'pgtap-webhook-secret')$$,
                 '22004', NULL, 'add_webhook: NULL events');
SELECT throws_ok($$SELECT xprov.add_webhook(gen_random_uuid(), 'http://127.0.0.1:9/' || repeat('x', 3000), '{operation.completed}', 'pgtap-webhook-secret')$$,
                 '54000', 'url is too long', 'add_webhook: a url of 3,000 characters');
SELECT throws_ok($$SELECT xprov.add_webhook(gen_random_uuid(), 'http://127.0.0.1:9/a/../b', '{operation.completed}', 'pgtap-webhook-secret')$$,
                 '22023', NULL, 'add_webhook: a dot segment in the url');
SELECT throws_ok($$SELECT xprov.set_webhook_enabled(NULL, true)$$, '22004', NULL, 'set_webhook_enabled: a NULL id');
SELECT throws_ok($$SELECT xprov.set_webhook_enabled(pg_temp.id('w'), NULL)$$, '22004', NULL, 'set_webhook_enabled: NULL enabled');
SELECT throws_ok($$SELECT xprov.set_webhook_enabled(gen_random_uuid(), false)$$, '42704', NULL, 'set_webhook_enabled: an unknown webhook');
SELECT throws_ok($$SELECT xprov.retry_webhook_delivery(NULL)$$, '22004', NULL, 'retry_webhook_delivery: a NULL id');
SELECT throws_ok($$SELECT xprov.purge_webhook_deliveries('-1 day')$$, '22023', NULL, 'purge_webhook_deliveries: a negative age');
SELECT throws_ok($$SELECT xprov.purge_webhook_deliveries(NULL)$$, '22023', NULL, 'purge_webhook_deliveries: a NULL age');
SELECT throws_ok($$SELECT xprov.bind_tenant(NULL, gen_random_uuid())$$, '22004', NULL, 'bind_tenant: a NULL role');
SELECT throws_ok($$SELECT xprov.bind_tenant('postgres', NULL)$$, '22004', NULL, 'bind_tenant: a NULL tenant');
SELECT throws_ok($$SELECT xprov.unbind_tenant(NULL, gen_random_uuid())$$, '22004', NULL, 'unbind_tenant: a NULL role');
SELECT is(xprov.unbind_tenant('postgres', gen_random_uuid()), false, 'unbind_tenant: a binding that does not exist -> false');
SELECT is((SELECT count(*) FROM xprov.tenant_binding) + (SELECT count(*) FROM xprov.webhook WHERE tenant_id <> pg_temp.id('T')),
          0::bigint, 'nothing was written by the refused calls');

SELECT * FROM finish();
ROLLBACK;
