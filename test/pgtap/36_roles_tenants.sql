-- Roles and tenant isolation, as each role: xprov_app, xprov_operator, xprov_admin,
-- xprov_processor and a role with no xprov grant.  Tenant A's roles must not see, count,
-- modify, enqueue to, reconcile or resolve anything of tenant B, through tables, views or
-- functions; secrets are readable by no role; audit columns name the caller, not the
-- functions' owner.
--
-- Everything happens in one rolled-back transaction: test roles included.  pgTAP's and
-- common.psql's temp tables are granted to PUBLIC so that the assertions can run under
-- SET ROLE.
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS xprov;

\if :{?rest_url}
\else
\set rest_url http://127.0.0.1:18302/rest
\endif

BEGIN;
SELECT plan(95);
\ir common.psql

SELECT set_config('xtest.rest_url', :'rest_url', true) \g /dev/null

CREATE ROLE xt_app_a NOLOGIN IN ROLE xprov_app;
CREATE ROLE xt_op_a NOLOGIN IN ROLE xprov_operator;
CREATE ROLE xt_admin NOLOGIN IN ROLE xprov_admin;
CREATE ROLE xt_proc NOLOGIN IN ROLE xprov_processor;
CREATE ROLE xt_nobody NOLOGIN;

-- Tenants A and B, each with an external and a REST connector; B's REST connector has a
-- bearer secret.
SELECT pg_temp.tenant('A'), pg_temp.tenant('B');
SELECT pg_temp.conn('ea', 'A'), pg_temp.conn('eb', 'B');
SELECT pg_temp.put('ra', xprov.add_connector(pg_temp.id('A'), 'ra-' || gen_random_uuid(), 'rest',
											 current_setting('xtest.rest_url')));
SELECT pg_temp.put('rb', xprov.add_connector(pg_temp.id('B'), 'rb-' || gen_random_uuid(), 'rest',
											 current_setting('xtest.rest_url'),
											 '{"auth": {"type": "bearer", "token": "tok-B-very-secret"}}'));

-- Operations: a1, a2 of A; b1, b2 of B.  a1 and b1 dead-letter; b2 completes with an account.
SELECT pg_temp.enq('a1', 'ea', 'sa1'), pg_temp.enq('a2', 'ea', 'sa2'),
			pg_temp.enq('b1', 'eb', 'sb1'), pg_temp.enq('b2', 'eb', 'sb2', 'create');
SELECT FROM xprov.dequeue(10);
SELECT xprov.fail(pg_temp.id('a1'), 'boom A', true), xprov.fail(pg_temp.id('b1'), 'boom B', true);
SELECT xprov.complete(pg_temp.id('b2'), 'uid-b2');

-- B's configuration and cases: a hook, an open correlation case, runs of both tenants.
SELECT pg_temp.put('hb', xprov.add_hook(pg_temp.id('B'), pg_temp.id('eb'), 'user', 'before',
										'function hook(ctx) { return; }'));
INSERT INTO xprov.correlation_case (id, tenant_id, connector_id, object_class, origin, target_uid,
									situation, reason, candidates)
VALUES (pg_temp.put('cb', gen_random_uuid()), pg_temp.id('B'), pg_temp.id('rb'), 'user', 'reconciliation',
		'uid-b9', 'disputed', 'test', '[]'),
	   (pg_temp.put('ca', gen_random_uuid()), pg_temp.id('A'), pg_temp.id('ra'), 'user', 'reconciliation',
		'uid-a9', 'disputed', 'test', '[]');
SELECT set_config('xprov.tenant_id', pg_temp.id('B')::text, true) \g /dev/null
SELECT pg_temp.put('runb', xprov.reconcile_preview(pg_temp.id('rb')));
SELECT set_config('xprov.tenant_id', pg_temp.id('A')::text, true) \g /dev/null
SELECT pg_temp.put('runa', xprov.reconcile_preview(pg_temp.id('ra')));
RESET xprov.tenant_id;

-- every id as a psql variable, for statements run under another role
SELECT string_agg(format('\set %s %s', name, id), E'\n') AS ids FROM _ids \gset
:ids

GRANT ALL ON ALL TABLES IN SCHEMA pg_temp TO PUBLIC;
GRANT ALL ON ALL SEQUENCES IN SCHEMA pg_temp TO PUBLIC;

-- ---------------------------------------------------------------------------
-- xprov_app of tenant A
SET LOCAL ROLE xt_app_a;
SELECT set_config('xprov.tenant_id', :'A', true) \g /dev/null

SELECT is((SELECT array_agg(pg_temp.nm(id) ORDER BY pg_temp.nm(id)) FROM xprov.operations
			WHERE id IN (:'a1', :'a2', :'b1', :'b2')),
		  '{a1,a2}', 'app A: xprov.operations shows A''s operations only');
SELECT is((SELECT count(*) FROM xprov.operations WHERE tenant_id <> :'A'), 0::bigint,
		  'app A: no row of another tenant in xprov.operations, even counted');
SELECT is((SELECT count(*) FROM xprov.op WHERE tenant_id = :'B'), 0::bigint,
		  'app A: the table xprov.op hides B''s rows too');
SELECT is((SELECT count(*) FROM xprov.op_failure f WHERE f.op_id = :'b1'), 0::bigint,
		  'app A: B''s attempts are hidden in xprov.op_failure');
SELECT is((SELECT count(*) FROM xprov.operation_attempts WHERE tenant_id = :'B'), 0::bigint,
		  'app A: xprov.operation_attempts shows no attempt of B');
SELECT is((SELECT array_agg(pg_temp.nm(id)) FROM xprov.dead_letters WHERE id IN (:'a1', :'b1')), '{a1}',
		  'app A: xprov.dead_letters shows A''s dead letter only');
SELECT is((SELECT count(*) FROM xprov.shadows WHERE tenant_id = :'B')
		  + (SELECT count(*) FROM xprov.accounts WHERE tenant_id = :'B')
		  + (SELECT count(*) FROM xprov.shadow WHERE tenant_id = :'B'), 0::bigint,
		  'app A: B''s shadows and accounts are hidden');
SELECT is((SELECT array_agg(pg_temp.nm(id)) FROM xprov.reconciliation_runs WHERE id IN (:'runa', :'runb')),
		  '{runa}', 'app A: xprov.reconciliation_runs shows A''s run only');
SELECT is((SELECT array_agg(pg_temp.nm(id) ORDER BY pg_temp.nm(id)) FROM xprov.connectors
			WHERE id IN (:'ea', :'eb', :'ra', :'rb')),
		  '{ea,ra}', 'app A: xprov.connectors shows A''s connectors only');
SELECT is((SELECT count(*) FROM xprov.connector_secret), 0::bigint,
		  'app A: not even the existence of B''s secret shows');
SELECT is(pg_temp.err('SELECT secret FROM xprov.connector_secret'),
		  '42501: permission denied for table connector_secret', 'app A: the secret column is not readable');
SELECT is(pg_temp.err('SELECT * FROM xprov.connector_secret'),
		  '42501: permission denied for table connector_secret', 'app A: nor through SELECT *');
SELECT is(pg_temp.err('SELECT * FROM xprov.correlation_cases'),
		  '42501: permission denied for view correlation_cases', 'app A: correlation cases are the operator''s');
SELECT is(pg_temp.err('SELECT * FROM xprov.hooks'),
		  '42501: permission denied for view hooks', 'app A: hooks are not the app''s to read');
SELECT is(pg_temp.err('SELECT * FROM xprov.idempotency'),
		  '42501: permission denied for table idempotency', 'app A: internal tables stay closed');

-- writing
SELECT is(pg_temp.err(format('SELECT xprov.enqueue(%L, %L, NULL, ''update'', ''user'', ''{}'', ''s'')',
							 :'B', :'eb')),
		  format('42501: tenant %s is not the tenant in context', :'B'),
		  'app A: enqueue for tenant B is refused');
SELECT is(pg_temp.err(format('SELECT xprov.enqueue(%L, %L, NULL, ''update'', ''user'', ''{}'', ''s'')',
							 :'A', :'eb')),
		  format('42704: connector %s does not exist', :'eb'),
		  'app A: B''s connector does not exist for A');
SELECT is(pg_temp.err(format('SELECT xprov.enqueue_batch(%L)',
							 jsonb_build_array(
								 jsonb_build_object('tenant_id', :'A', 'connector_id', :'ea', 'operation_type', 'update',
													'object_class', 'user', 'attributes', '{}'::jsonb, 'target_uid', 'x1'),
								 jsonb_build_object('tenant_id', :'B', 'connector_id', :'eb', 'operation_type', 'update',
													'object_class', 'user', 'attributes', '{}'::jsonb, 'target_uid', 'x2')))),
		  format('42501: enqueue_batch element 1: tenant %s is not the tenant in context', :'B'),
		  'app A: a batch with one element of B is refused, naming the element');
SELECT ok(pg_temp.err(format('SELECT xprov.enqueue(%L, %L, NULL, ''update'', ''user'', ''{"k": 1}'', ''sa3'')',
							 :'A', :'ea')) = 'OK',
		  'app A: enqueue for A to A''s connector works');
SELECT is((SELECT count(*) FROM xprov.operations WHERE target_uid = 'sa3'), 1::bigint,
		  'app A: and the app reads its new operation back');
SELECT is(pg_temp.err(format('UPDATE xprov.op SET attributes = ''{}'' WHERE id = %L', :'a2')),
		  '42501: permission denied for table op', 'app A: tables are not writable, even its own rows');
SELECT is(pg_temp.err(format('DELETE FROM xprov.shadow WHERE tenant_id = %L', :'B')),
		  '42501: permission denied for table shadow', 'app A: nor deletable');
SELECT is(pg_temp.err(format('SELECT xprov.retry(%L)', :'a1')),
		  '42501: permission denied for function retry', 'app A: retry is the operator''s');
SELECT is(pg_temp.err(format('SELECT xprov.add_hook(%L, NULL, NULL, ''before'', ''function hook(ctx) {}'')', :'A')),
		  '42501: permission denied for function add_hook', 'app A: cannot create hooks');
SELECT is(pg_temp.err(format('SELECT xprov.set_connector_secret(%L, ''{"type": "bearer", "token": "x"}'')', :'ra')),
		  '42501: permission denied for function set_connector_secret', 'app A: cannot set secrets');
SELECT is(pg_temp.err(format('SELECT xprov.reconcile(%L)', :'ra')),
		  '42501: permission denied for function reconcile', 'app A: cannot start reconciliations');
SELECT is(pg_temp.err('SELECT * FROM xprov.dequeue(1)'),
		  '42501: permission denied for function dequeue', 'app A: cannot claim operations');
SELECT is(pg_temp.err('SELECT xprov._caller_is_admin()'),
		  '42501: permission denied for function _caller_is_admin', 'app A: internal functions stay closed');

-- stats and waiting
SELECT is((SELECT dead_letter FROM xprov.stats()), 1::bigint, 'app A: stats() counts the tenant in context');
SELECT is(pg_temp.err(format('SELECT * FROM xprov.stats(%L)', :'B')),
		  format('42501: tenant %s is not the tenant in context', :'B'), 'app A: stats of B are refused');
SELECT is(pg_temp.err(format('SELECT xprov.wait_run(%L, ''0'')', :'runb')),
		  format('42704: reconciliation run %s does not exist', :'runb'), 'app A: B''s run does not exist');
SELECT is(pg_temp.err(format('SELECT xprov.wait_run(%L, ''0'')', :'runa')), 'OK', 'app A: its own run can be awaited');

-- without a tenant in context, nothing
RESET xprov.tenant_id;
SELECT is((SELECT count(*) FROM xprov.operations) + (SELECT count(*) FROM xprov.connectors), 0::bigint,
		  'app, no tenant in context: sees no row at all');
SELECT is(pg_temp.err(format('SELECT xprov.enqueue(%L, %L, NULL, ''update'', ''user'', ''{}'', ''s'')',
							 :'A', :'ea')),
		  '42501: no tenant context: xprov.tenant_id is not set', 'app, no tenant in context: cannot enqueue');
SELECT is(pg_temp.err('SELECT * FROM xprov.stats()'),
		  '42501: no tenant context: xprov.tenant_id is not set', 'app, no tenant in context: no stats');
SELECT is(pg_temp.err('SET xprov.tenant_id = ''A'''),
		  '22023: xprov.tenant_id must be a UUID or empty', 'xprov.tenant_id accepts only a UUID');
SELECT is(pg_temp.err('SET xprov.tenant_id = ''x''''; DROP TABLE xprov.op; --'''),
		  '22023: xprov.tenant_id must be a UUID or empty',
		  'xprov.tenant_id: an injection attempt is just an invalid value');
SELECT is(pg_temp.err('SET xprov.tenant_id = ''{' || replace(:'A', '-', '') || '}'''), 'OK',
		  'xprov.tenant_id accepts the other spellings uuid_in accepts');
SELECT is((SELECT count(*) FROM xprov.operations WHERE id = :'a2'), 1::bigint,
		  'app: a braced tenant id names the same tenant');
RESET ROLE;

-- ---------------------------------------------------------------------------
-- xprov_operator of tenant A
SET LOCAL ROLE xt_op_a;
SELECT set_config('xprov.tenant_id', :'A', true) \g /dev/null

SELECT is(pg_temp.err(format('SELECT xprov.retry(%L)', :'b1')),
		  format('42704: operation %s does not exist', :'b1'), 'operator A: B''s dead letter does not exist');
SELECT is(pg_temp.err(format('SELECT xprov.skip(%L, ''no'')', :'b1')),
		  format('42704: operation %s does not exist', :'b1'), 'operator A: cannot skip B''s operation');
SELECT is(pg_temp.err(format('SELECT xprov.cancel(%L)', :'b2')),
		  format('42704: operation %s does not exist', :'b2'), 'operator A: cannot cancel B''s operation');
SELECT is(pg_temp.err(format('SELECT xprov.retry(%L)', :'a1')), 'OK', 'operator A: retries A''s dead letter');
SELECT is((SELECT status FROM xprov.operations WHERE id = :'a1'), 'pending', 'operator A: which is pending again');
SELECT is(pg_temp.err(format('SELECT xprov.resolve_case(%L, ''reject'')', :'cb')),
		  format('42704: correlation case %s does not exist', :'cb'), 'operator A: B''s case does not exist');
SELECT is(pg_temp.err(format('SELECT xprov.resolve_case(%L, ''reject'')', :'ca')), 'OK',
		  'operator A: resolves A''s case');
SELECT is((SELECT decided_by FROM xprov.correlation_cases WHERE id = :'ca'), 'xt_op_a',
		  'operator A: the case names the operator as decider, not the functions'' owner');
SELECT is((SELECT array_agg(pg_temp.nm(id)) FROM xprov.correlation_cases WHERE id IN (:'ca', :'cb')), '{ca}',
		  'operator A: xprov.correlation_cases shows A''s case only');
SELECT is((SELECT count(*) FROM xprov.hooks WHERE tenant_id = :'B')
		  + (SELECT count(*) FROM xprov.hook_versions WHERE hook_id = :'hb'), 0::bigint,
		  'operator A: B''s hooks and their scripts are hidden');
SELECT is(pg_temp.err(format('SELECT xprov.reconcile_preview(%L)', :'rb')),
		  format('42704: connector %s does not exist', :'rb'), 'operator A: cannot reconcile B''s connector');
SELECT is(pg_temp.err(format('SELECT xprov.cancel_run(%L)', :'runb')),
		  format('42704: reconciliation run %s does not exist', :'runb'), 'operator A: cannot cancel B''s run');
SELECT is(pg_temp.err(format('SELECT xprov.approve_run(%L)', :'runb')),
		  format('42704: reconciliation run %s does not exist', :'runb'), 'operator A: cannot approve B''s run');
SELECT is(pg_temp.err(format('SELECT xprov.cancel_run(%L)', :'runa')), 'OK', 'operator A: cancels A''s run');
SELECT pg_temp.put('runa2', xprov.reconcile_preview(:'ra'));
SELECT is((SELECT requested_by FROM xprov.reconciliation_runs WHERE id = pg_temp.id('runa2')), 'xt_op_a',
		  'operator A: a run names the operator who requested it');
SELECT is(pg_temp.err(format('SELECT * FROM xprov.correlate(%L, %L, ''{}'')', :'B', :'rb')),
		  format('42501: tenant %s is not the tenant in context', :'B'), 'operator A: cannot correlate for B');
SELECT is((SELECT count(*) FROM xprov.reactions WHERE tenant_id = :'B')
		  + (SELECT count(*) FROM xprov.reconciliation_thresholds WHERE tenant_id = :'B')
		  + (SELECT count(*) FROM xprov.discrepancies WHERE tenant_id = :'B'), 0::bigint,
		  'operator A: B''s reactions, thresholds and discrepancies are hidden');
SELECT is(pg_temp.err(format('SELECT xprov.set_reaction(%L, ''orphan'', ''report'')', :'ra')),
		  '42501: permission denied for function set_reaction', 'operator A: reactions are the admin''s');
SELECT is(pg_temp.err(format('SELECT xprov.set_connector_enabled(%L, false)', :'ra')),
		  '42501: permission denied for function set_connector_enabled', 'operator A: connectors are the admin''s');
SELECT is(pg_temp.err('SELECT secret FROM xprov.connector_secret'),
		  '42501: permission denied for table connector_secret', 'operator A: secrets are not readable');
RESET ROLE;

-- ---------------------------------------------------------------------------
-- xprov_admin: every tenant, but no secret
SET LOCAL ROLE xt_admin;
RESET xprov.tenant_id;
SELECT is((SELECT count(*) FROM xprov.operations WHERE id IN (:'a1', :'a2', :'b1', :'b2')), 4::bigint,
		  'admin: sees every tenant''s operations without a tenant in context');
SELECT is((SELECT auth_type FROM xprov.connectors WHERE id = :'rb'), 'bearer',
		  'admin: the connectors view shows the type of B''s credentials');
SELECT is((SELECT count(*) FROM xprov.connectors WHERE config::text LIKE '%tok-B%'), 0::bigint,
		  'admin: and never the token');
SELECT is(pg_temp.err('SELECT secret FROM xprov.connector_secret'),
		  '42501: permission denied for table connector_secret', 'admin: cannot read secrets either');
SELECT is(pg_temp.err(format('SELECT xprov.set_connector_secret(%L, ''{"type": "bearer", "tokn": "tok-B-typo"}'')', :'rb'))
		  LIKE '%tok-B%', false, 'admin: a refused secret is not repeated in the error');
SELECT is(pg_temp.err(format('SELECT xprov.set_connector_secret(%L, ''{"type": "bearer", "token": "tok-B-2"}'')', :'rb')),
		  'OK', 'admin: replaces B''s secret');
SELECT is(pg_temp.err(format('SELECT xprov.add_connector(%L, ''adm-'' || gen_random_uuid(), ''noop'', NULL)', :'B')), 'OK',
		  'admin: adds a connector for any tenant');
SELECT is(pg_temp.err(format('SELECT xprov.add_hook(%L, NULL, NULL, ''before'', ''function hook(ctx) {}'')', :'A')),
		  'OK', 'admin: adds hooks');
SELECT is(pg_temp.err('SELECT xprov.set_identity_source(gen_random_uuid(), ''pg_authid'')'),
		  '42501: permission denied for function set_identity_source',
		  'admin: cannot register identity sources (xprov reads them with its owner''s rights)');
SELECT is(pg_temp.err('SELECT count(*) FROM xprov.worker_status()'), 'OK', 'admin: reads the workers'' status');
SELECT is(pg_temp.err(format('SELECT xprov.retry(%L)', :'b1')), 'OK', 'admin: retries B''s dead letter');
SELECT is(pg_temp.err('UPDATE xprov.connector SET enabled = false'),
		  '42501: permission denied for table connector', 'admin: writes only through the functions');
RESET ROLE;

-- ---------------------------------------------------------------------------
-- xprov_processor: claims and completes for every tenant, reads nothing
SET LOCAL ROLE xt_proc;
SELECT is((SELECT array_agg(pg_temp.nm(id) ORDER BY pg_temp.nm(id)) FROM xprov.dequeue(10)
			WHERE id IN (:'a1', :'a2', :'b1', :'b2')),
		  '{a1,b1}', 'processor: claims the operations of every tenant''s external connectors');
SELECT is(pg_temp.err(format('SELECT xprov.complete(%L)', :'b1')), 'OK', 'processor: completes B''s operation');
SELECT is(pg_temp.err(format('SELECT xprov.fail(%L, ''x'')', :'a1')), 'OK', 'processor: fails A''s operation');
SELECT is(pg_temp.err('SELECT count(*) FROM xprov.operations'),
		  '42501: permission denied for view operations', 'processor: reads no view');
SELECT is(pg_temp.err(format('SELECT xprov.retry(%L)', :'a1')),
		  '42501: permission denied for function retry', 'processor: has no operator rights');
RESET ROLE;

-- ---------------------------------------------------------------------------
-- a role with no xprov grant: nothing at all
SET LOCAL ROLE xt_nobody;
SELECT set_config('xprov.tenant_id', :'A', true) \g /dev/null
SELECT is(pg_temp.err('SELECT count(*) FROM xprov.operations'),
		  '42501: permission denied for schema xprov', 'no grant: the schema is closed');
SELECT is(pg_temp.err(format('SELECT xprov.enqueue(%L, %L, NULL, ''update'', ''user'', ''{}'', ''s'')', :'A', :'ea')),
		  '42501: permission denied for schema xprov', 'no grant: cannot enqueue');
SELECT is(pg_temp.err('SELECT xprov.normalize_text(''Ä b'')'),
		  '42501: permission denied for schema xprov', 'no grant: not even the public helper without USAGE');
RESET ROLE;

-- ---------------------------------------------------------------------------
-- tenant bindings: a role bound to tenant A acts for A only, whatever its session sets
SELECT xprov.bind_tenant('xt_app_a', :'A');
SET LOCAL ROLE xt_app_a;
SELECT set_config('xprov.tenant_id', :'B', true) \g /dev/null
SELECT is((SELECT count(*) FROM xprov.operations) + (SELECT count(*) FROM xprov.op), 0::bigint,
		  'bound to A, B in context: nothing of B is visible, through views or tables');
SELECT is(pg_temp.err(format('SELECT xprov.enqueue(%L, %L, NULL, ''update'', ''user'', ''{}'', ''s'')', :'B', :'eb')),
		  format('42501: role xt_app_a may not act for tenant %s', :'B'), 'bound to A: cannot enqueue for B');
SELECT is(pg_temp.err('SELECT * FROM xprov.stats()'),
		  format('42501: role xt_app_a may not act for tenant %s', :'B'), 'bound to A: no stats of B');
SELECT is(pg_temp.err(format('SELECT xprov.wait_run(%L, ''0'')', :'runb')),
		  format('42501: role xt_app_a may not act for tenant %s', :'B'), 'bound to A: B''s runs are out of reach');
SELECT set_config('xprov.tenant_id', :'A', true) \g /dev/null
SELECT is((SELECT count(*) FROM xprov.operations WHERE id = :'a2'), 1::bigint, 'bound to A, A in context: A''s rows');
SELECT is(pg_temp.err('SELECT xprov.bind_tenant(''xt_app_a'', gen_random_uuid())'),
		  '42501: permission denied for function bind_tenant', 'a bound role cannot bind itself to more');
RESET ROLE;
SET LOCAL ROLE xt_op_a;
SELECT set_config('xprov.tenant_id', :'B', true) \g /dev/null
SELECT is((SELECT count(*) FROM xprov.operations WHERE id = :'b2'), 1::bigint,
		  'a role bound to nothing acts for the tenant its session names');
RESET ROLE;
SET LOCAL ROLE xt_admin;
SELECT is((SELECT array_agg(role_name::text) FROM xprov.tenant_bindings WHERE tenant_id = :'A'), '{xt_app_a}',
		  'admin: xprov.tenant_bindings lists the binding');
SELECT is(xprov.unbind_tenant('xt_app_a', :'A'), true, 'admin: unbinds');
RESET ROLE;
SET LOCAL ROLE xt_app_a;
SELECT set_config('xprov.tenant_id', :'B', true) \g /dev/null
SELECT is((SELECT count(*) FROM xprov.operations WHERE id = :'b2'), 1::bigint,
		  'unbound again: the session''s tenant counts again');
RESET ROLE;
SELECT is(pg_temp.err('SELECT xprov.bind_tenant(''xt_no_such_role'', gen_random_uuid())'),
		  '42704: role "xt_no_such_role" does not exist', 'binding an unknown role is refused');

-- ---------------------------------------------------------------------------
-- the catalog: nothing for PUBLIC, every SECURITY DEFINER function pinned
SELECT is((SELECT array_agg(p.proname::text ORDER BY p.proname) FROM pg_proc p
			WHERE p.pronamespace = 'xprov'::regnamespace AND has_function_privilege('public', p.oid, 'EXECUTE')),
		  '{normalize_text}', 'PUBLIC may execute normalize_text only (for expression indexes)');
SELECT is((SELECT array_agg(c.relname::text ORDER BY c.relname) FROM pg_class c
			WHERE c.relnamespace = 'xprov'::regnamespace AND c.relkind IN ('r', 'v', 'S')
			  AND (has_table_privilege('public', c.oid, 'SELECT') OR has_table_privilege('public', c.oid, 'INSERT'))),
		  NULL, 'PUBLIC has no privilege on any table, view or sequence');
SELECT is((SELECT array_agg(c.relname::text ORDER BY c.relname) FROM pg_class c
			WHERE c.relnamespace = 'xprov'::regnamespace AND c.relkind = 'r' AND NOT c.relrowsecurity),
		  NULL, 'every table has row-level security');
SELECT is((SELECT array_agg(c.relname::text ORDER BY c.relname) FROM pg_class c
			WHERE c.relnamespace = 'xprov'::regnamespace AND c.relkind = 'v'
			  AND NOT coalesce('security_invoker=true' = ANY (c.reloptions), false)),
		  NULL, 'every view runs with the reader''s rights');
SELECT is((SELECT array_agg(p.proname::text ORDER BY p.proname) FROM pg_proc p
			WHERE p.pronamespace = 'xprov'::regnamespace AND p.prosecdef
			  AND NOT coalesce('search_path=pg_catalog, pg_temp' = ANY (p.proconfig), false)),
		  NULL, 'every SECURITY DEFINER function pins search_path to pg_catalog, pg_temp');

SELECT * FROM finish();
ROLLBACK;
