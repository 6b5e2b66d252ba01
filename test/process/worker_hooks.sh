#!/usr/bin/env bash
#
# JavaScript hooks run by the background worker (README "Hooks (JavaScript)"),
# against a real cluster and the bundled SCIM 2.0 target
# (test/targets/scim_server.py):
#   - a before hook that computes userName: the target gets the computed value,
#     the account records it, the attempt history names the hook and version;
#   - two before hooks chained by their order option;
#   - scope: object class, disabled hooks, other tenants, connector-NULL hooks;
#   - skip, veto (fatal and failure "ignore"), after hooks (shadow_attributes,
#     ctx.response, ctx.shadow, the other ctx fields), on_error hooks
#     ({retry: false}, and nothing); nothing survives from one call to the next;
#   - update_hook: new operations run the new version;
#   - noop connectors with hooks (transform and skip);
#   - the hook thread: the worker runs before hooks on a thread of its own;
#     300 operations claimed in full batches each get their own hook's answer
#     (skip, veto, transform by their own attributes); an operation whose hook
#     changed while it waited for the thread runs the new version; attributes
#     of every JSON shape reach the thread's hook exactly as enqueued;
#   - hostile hooks (endless loops, a loop in finally, a catch that tries to
#     resume, a memory bomb, catastrophic regex backtracking, deep recursion,
#     the Function constructor, Object.prototype pollution, an enormous result):
#     each dead-letters its operation with a clear error while the worker, its
#     pid and the postmaster's children stay as they were, and the next ordinary
#     operation completes (and sees no pollution and no removed global);
#   - kill -9 of the worker while a slow hook runs: the launcher restarts it and
#     the operation ends exactly once, by the rules;
#   - SIGTERM while the hook thread runs endless hooks: the worker stops within
#     a second or two (the hooks are cancelled), gives the operations back
#     unattempted, and its successor runs them.
# Exit 0 = pass.
#
# Environment: XPROV_PORT (cluster port, default 55465), XPROV_HOOKS_SCIM_PORT
# (SCIM target port, default 18351), XPROV_PGBIN (see test/lib/cluster.sh).

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export XPROV_PORT="${XPROV_PORT:-55465}"
SCIM_PORT="${XPROV_HOOKS_SCIM_PORT:-18351}"
. test/lib/cluster.sh
. test/lib/check.sh
. test/lib/target.sh

DB=xprov_hooks
SCIM=http://127.0.0.1:$SCIM_PORT

scim_pid=""
scim_start() { target_start scim_pid test/targets/scim_server.py "$SCIM_PORT" "$XPROV_CLUSTER_DIR/scim.log"; }
scim_stop() { target_stop scim_pid; }
fault() { curl -sf -X POST -d "$1" "$SCIM/_admin/fault" >/dev/null; }

# The target's user of userName $1, as "attr=value" for the attributes $2.. (or "none").
target_user()
{
	curl -sf "$SCIM/_admin/users" | python3 -c "
import json, sys
users = [u for u in json.load(sys.stdin) if u['userName'].lower() == sys.argv[1].lower()]
if not users:
    print('none')
else:
    print(' '.join('%s=%s' % (a, users[0].get(a)) for a in sys.argv[2:]) or 'found')" "$@"
}
# How many requests the target received with X-Request-Id $1 (an operation id).
target_saw()
{
	curl -sf "$SCIM/_admin/requests?since=0" | python3 -c "
import json, sys
print(sum(1 for r in json.load(sys.stdin) if r['request_id'] == sys.argv[1]))" "$1"
}

conn() { q "SELECT id FROM xprov.connectors WHERE name = '$1'"; }
hook() { q "SELECT id FROM hook_names WHERE name = '$1'"; }
status() { q "SELECT status FROM xprov.operations WHERE id = '$1'"; }
# wait_status OP WANT SECONDS: the operation's status once it is WANT, or the last seen
wait_status() { wait_for "SELECT status FROM xprov.operations WHERE id = '$1'" "$3" "$2"; }
# The hooks recorded in the attempt history of an operation, in order:
# "name/phase/vVERSION/outcome ...".
hooks_of() { q "SELECT hook_history('$1')"; }

# enq TENANT CONNECTOR_NAME TYPE CLASS ATTRIBUTES KEY: enqueue, print the id.
# KEY names the subject (identity md5(KEY)).
enq()
{
	q "SELECT xprov.enqueue(tenant_id => '$1', connector_id => (SELECT id FROM xprov.connectors WHERE name = '$2'),
		identity_id => md5('$6')::uuid, operation_type => '$3', object_class => '$4',
		attributes => '$5'::jsonb)"
}

worker_pid() { q "SELECT pid FROM xprov.worker_status()"; }
start_time() { q "SELECT pg_postmaster_start_time()"; }
# the checkpointer gets a new pid whenever the postmaster reinitializes after a crash
checkpointer_pid() { q "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'"; }
crashes() { grep -cE 'terminated by signal|PANIC|all server processes terminated' "$XPROV_SERVER_LOG" || true; }

on_check_failure()
{
	q "SELECT * FROM xprov.worker_status()" || true
	q "SELECT id, connector_id, status, attempts, last_error FROM xprov.operations
		WHERE status NOT IN ('completed') ORDER BY created_at DESC LIMIT 10" || true
	grep -E 'xprov|ERROR|FATAL|terminated' "$XPROV_SERVER_LOG" | tail -15 || true
}

cluster_start "xprov.database_name = '$DB'" "xprov.retry_base = '200ms'" "xprov.retry_max = '2s'" \
	"xprov.max_attempts = 4" "xprov.http_timeout = '5s'" >/dev/null
export PGDATABASE=$DB
trap 'scim_stop; cluster_stop' EXIT
scim_start
psql -qAtX -d postgres -c "CREATE DATABASE $DB"
q "CREATE EXTENSION xprov"
check "one worker runs on $DB" \
	"$(wait_for "SELECT count(*) FROM xprov.worker_status() WHERE database = '$DB'" 20 1)" 1

# Tenants: main (every connector-specific hook), scope and other (scope tests).
TM=f0000000-0000-4000-8000-000000000001
TS=f0000000-0000-4000-8000-000000000002
TO=f0000000-0000-4000-8000-000000000003

# --- setup: connectors and hooks, all defined before any operation runs ------
# hook_names gives each hook a name for readable histories.
psql -qAtX -v ON_ERROR_STOP=1 -v scim="$SCIM/scim/v2" -v tm="$TM" -v ts="$TS" -v to="$TO" <<'SQL' >/dev/null
CREATE TABLE hook_names (id uuid PRIMARY KEY, name text UNIQUE NOT NULL);
CREATE FUNCTION named_hook(name text, tenant uuid, connector text, object_class text,
						   phase text, script text, options jsonb DEFAULT '{}')
RETURNS uuid LANGUAGE sql AS $$
	INSERT INTO hook_names
	SELECT xprov.add_hook(tenant, (SELECT id FROM xprov.connectors c WHERE c.name = connector),
						  object_class, phase, script, options), name
	RETURNING id
$$;
CREATE FUNCTION hook_history(op uuid) RETURNS text LANGUAGE sql AS $$
	SELECT coalesce(string_agg(coalesce(n.name, h->>'hook_id') || '/' || (h->>'phase') || '/v'
							   || (h->>'version') || '/' || (h->>'outcome'), ' '
							   ORDER BY a.attempt, a.started_at, x.ord), '')
	  FROM xprov.operation_attempts a
	 CROSS JOIN LATERAL jsonb_array_elements(coalesce(a.hooks, '[]')) WITH ORDINALITY x(h, ord)
	  LEFT JOIN hook_names n ON n.id::text = h->>'hook_id'
	 WHERE a.operation_id = op
$$;

SELECT xprov.add_connector(:'tm', name, 'scim2', :'scim', '{"timeout_ms": 2000}')
  FROM unnest(ARRAY['scim_transform', 'scim_order', 'scim_skip', 'scim_veto', 'scim_veto_ignore',
					'scim_after', 'scim_noretry', 'scim_retry', 'scim_ok', 'scim_state']) name;
SELECT xprov.add_connector(:'tm', name, 'noop', NULL)
  FROM unnest(ARRAY['noop_hooked', 'noop_update', 'noop_kill', 'noop_probe', 'noop_batch', 'noop_term',
					'noop_slow2', 'noop_ver', 'noop_plain', 'noop_echo',
					'h_loop', 'h_finally', 'h_catch', 'h_memory', 'h_regex', 'h_recursion',
					'h_escape', 'h_pollute', 'h_big']) name;
SELECT xprov.add_connector(:'tm', 'shape_' || n, 'noop', NULL) FROM generate_series(1, 15) n;
SELECT xprov.add_connector(:'tm', 'scim_shape', 'scim2', :'scim', '{"timeout_ms": 2000}');
SELECT xprov.add_connector(:'tm', 'h_getter', 'noop', NULL);
SELECT xprov.add_connector(:'ts', 'scope_1', 'noop', NULL);
SELECT xprov.add_connector(:'ts', 'scope_2', 'noop', NULL);
SELECT xprov.add_connector(:'to', 'other_1', 'noop', NULL);

-- transform: userName from the name parts (the target refuses a user without one)
SELECT named_hook('transform', :'tm', 'scim_transform', 'user', 'before', $js$
function hook(ctx) {
	var a = ctx.attributes;
	a.userName = ('hk.' + a.name.givenName + '.' + a.name.familyName).toLowerCase();
	return { attributes: a };
}
$js$);

-- order: "second" is created first, "first" runs first by its order option
SELECT named_hook('second', :'tm', 'scim_order', 'user', 'before', $js$
function hook(ctx) {
	var a = ctx.attributes;
	a.title = a.title + '>second';
	return { attributes: a };
}
$js$, '{"order": 2}');
SELECT named_hook('first', :'tm', 'scim_order', 'user', 'before', $js$
function hook(ctx) {
	var a = ctx.attributes;
	a.title = 'first';
	return { attributes: a };
}
$js$, '{"order": 1}');

-- scope: created before the tenant-wide one, yet runs after it
SELECT named_hook('scope_group', :'ts', 'scope_1', 'group', 'before',
				  'function hook(ctx) { }');
SELECT named_hook('scope_disabled', :'ts', 'scope_1', 'user', 'before',
				  'function hook(ctx) { return { skip: true, reason: "disabled hook ran" }; }');
SELECT xprov.set_hook_enabled((SELECT id FROM hook_names WHERE name = 'scope_disabled'), false);
SELECT named_hook('scope_all', :'ts', NULL, NULL, 'before', 'function hook(ctx) { }');
SELECT named_hook('other_tenant', :'to', NULL, NULL, 'before', 'function hook(ctx) { }');

-- skip
SELECT named_hook('skip_contractors', :'tm', 'scim_skip', 'user', 'before', $js$
function hook(ctx) {
	if (ctx.attributes.title === 'Contractor')
		return { skip: true, reason: 'contractor' };
}
$js$);

-- veto, fatal and ignored: one script on two connectors
SELECT named_hook(v.name, :'tm', v.connector, 'user', 'before', $js$
function hook(ctx) {
	if (ctx.attributes.title === 'Admin')
		throw new Error('policy: no admins');
}
$js$, v.options::jsonb)
  FROM (VALUES ('veto', 'scim_veto', '{}'),
			   ('veto_ignore', 'scim_veto_ignore', '{"failure": "ignore"}')) v(name, connector, options);

-- after: what the account records, with the target's answer and the context
SELECT named_hook('after', :'tm', 'scim_after', 'user', 'after', $js$
function hook(ctx) {
	return { shadow_attributes: {
		userName: ctx.attributes.userName || ctx.shadow.attributes.userName,
		recorded_by: 'after',
		http_status: ctx.response.status,
		uid: ctx.response.target_uid,
		kind: ctx.operation_type + '/' + ctx.object_class,
		shadow_uid: ctx.shadow === null ? 'none' : ctx.shadow.target_uid,
		ctx: [ctx.operation_id, ctx.tenant_id, ctx.connector_id, ctx.identity_id, ctx.attempt].join(' ')
	} };
}
$js$);

-- state: the top level runs at every call, so nothing survives between calls
SELECT named_hook('state', :'tm', 'scim_state', 'user', 'before', $js$
var calls = [];
function hook(ctx) {
	calls.push(ctx.operation_id);
	var a = ctx.attributes;
	a.calls = calls.length;
	return { attributes: a };
}
$js$);

-- on_error
SELECT named_hook('no_retry', :'tm', 'scim_noretry', 'user', 'on_error', $js$
function hook(ctx) {
	if (ctx.error && ctx.error.http_status === 500)
		return { retry: false };
}
$js$);
SELECT named_hook('on_error_nothing', :'tm', 'scim_retry', 'user', 'on_error',
				  'function hook(ctx) { }');

-- versions
SELECT named_hook('versioned', :'tm', 'noop_update', 'user', 'before', 'function hook(ctx) { }');

-- noop: transform and skip
SELECT named_hook('noop_transform', :'tm', 'noop_hooked', 'user', 'before', $js$
function hook(ctx) {
	var a = ctx.attributes;
	if (a.title === 'Contractor')
		return { skip: true, reason: 'contractor (noop)' };
	a.seen = true;
	return { attributes: a };
}
$js$);

-- hostile, each alone on its connector, 100 ms
SELECT named_hook('h_loop', :'tm', 'h_loop', 'user', 'before',
	'function hook(ctx) { while (true) {} }', '{"timeout_ms": 100}');
SELECT named_hook('h_finally', :'tm', 'h_finally', 'user', 'before',
	'function hook(ctx) { try { while (true) {} } finally { while (true) {} } }', '{"timeout_ms": 100}');
SELECT named_hook('h_catch', :'tm', 'h_catch', 'user', 'before',
	'function hook(ctx) { try { while (true) {} } catch (e) {} return { attributes: { escaped: true } }; }',
	'{"timeout_ms": 100}');
SELECT named_hook('h_memory', :'tm', 'h_memory', 'user', 'before', $js$
function hook(ctx) {
	var keep = [], s = 'x';
	while (true) { s = s + s; keep.push(s); }
}
$js$, '{"timeout_ms": 100, "memory_kb": 2048}');
SELECT named_hook('h_regex', :'tm', 'h_regex', 'user', 'before',
	'function hook(ctx) { return { attributes: { m: /(a+)+b/.test(new Array(41).join("a")) } }; }',
	'{"timeout_ms": 100}');
SELECT named_hook('h_recursion', :'tm', 'h_recursion', 'user', 'before',
	'function f(n) { return f(n + 1) + 1; } function hook(ctx) { return { attributes: { n: f(0) } }; }',
	'{"timeout_ms": 100}');
SELECT named_hook('h_escape', :'tm', 'h_escape', 'user', 'before', $js$
function hook(ctx) {
	var g = ctx.constructor.constructor('return this')();
	return { attributes: { escaped: typeof g } };
}
$js$, '{"timeout_ms": 100}');
SELECT named_hook('h_pollute', :'tm', 'h_pollute', 'user', 'before',
	'function hook(ctx) { Object.prototype.polluted = 1; }', '{"timeout_ms": 100}');
SELECT named_hook('h_big', :'tm', 'h_big', 'user', 'before', $js$
function hook(ctx) {
	var s = 'x';
	for (var i = 0; i < 21; i++) s = s + s;		/* 2 MB */
	return { attributes: { big: s } };
}
$js$, '{"timeout_ms": 100}');

-- the ordinary hook that runs after each hostile one: it reports what it sees
SELECT named_hook('ok_check', :'tm', 'scim_ok', 'user', 'before', $js$
function hook(ctx) {
	var a = ctx.attributes;
	a.clean = ({}).polluted === undefined && !('polluted' in Object.prototype);
	a.globals = [typeof Duktape, typeof Buffer, typeof ArrayBuffer, typeof Uint8Array,
				 typeof CBOR, typeof Proxy, typeof Reflect, typeof TextEncoder,
				 typeof TextDecoder, typeof performance].join(',');
	return { attributes: a };
}
$js$);

-- answers: what a before hook may return, and what it may not (one connector each)
SELECT named_hook('shape_' || n, :'tm', 'shape_' || n, 'user', 'before', 'function hook(ctx) { ' || body || ' }')
  FROM (VALUES (1, 'return null;'),
			   (2, 'return [1, 2];'),
			   (3, 'return "attributes";'),
			   (4, 'return 42;'),
			   (5, 'return { attributes: [1, 2] };'),
			   (6, 'return { skip: "yes" };'),
			   (7, 'return { attributes: {}, extra: 1 };'),
			   (8, 'return { a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7, h: 8, attributes: {} };'),
			   (9, 'return { skip: true };'),
			   (10, 'return { skip: false, attributes: { x: 1 } };'),
			   (11, 'return { attributes: { x: 1 }, skip: undefined, reason: function () {} };'),
			   (12, 'return { skip: true, reason: "" };'),
			   (13, 'return new Date(0);'),
			   (14, 'return { toJSON: function () { return { skip: true, reason: "said toJSON" }; } };'),
			   (15, 'var o = Object.create({ inherited: 1 }); o.attributes = { x: 2 }; return o;')) v(n, body);
SELECT named_hook('scim_shape', :'tm', 'scim_shape', 'user', 'before', $js$
function hook(ctx) {
	var a = ctx.attributes;
	return { attributes: { userName: a.userName + '.\u00e9\ud83d\ude00', nick: a.nick,
						   gone: undefined, fn: function () {},
						   nested: { list: [1, 'two', null, { three: true }], n: -1.5 } } };
}
$js$);
SELECT named_hook('h_getter', :'tm', 'h_getter', 'user', 'before',
	'function hook(ctx) { return { attributes: { get x() { while (true) {} } } }; }',
	'{"timeout_ms": 100}');

-- slow, for the kill -9
SELECT named_hook('slow', :'tm', 'noop_kill', 'user', 'before',
	'function hook(ctx) { while (true) {} }', '{"timeout_ms": 3000}');

-- the hook thread: each operation's answer depends on its own ctx
SELECT named_hook('batch', :'tm', 'noop_batch', 'user', 'before', $js$
function hook(ctx) {
	var n = ctx.attributes.n;
	if (n % 3 === 0) return { skip: true, reason: 'skip ' + n + ' ' + ctx.operation_id };
	if (n % 3 === 1) throw new Error('veto ' + n);
	return { attributes: { n: n, doubled: n * 2 } };
}
$js$);

-- the hook thread reads the attributes' jsonb itself: what it saw, as JSON
SELECT named_hook('echo', :'tm', 'noop_echo', 'user', 'before',
	'function hook(ctx) { return { skip: true, reason: JSON.stringify(ctx.attributes) }; }');

-- a hook that changes while its operation waits for the hook thread
SELECT named_hook('slow2', :'tm', 'noop_slow2', 'user', 'before',
	'function hook(ctx) { var t = Date.now(); while (Date.now() - t < 3000) {} }', '{"timeout_ms": 5000}');
SELECT named_hook('ver', :'tm', 'noop_ver', 'user', 'before',
	'function hook(ctx) { return { skip: true, reason: "version 1" }; }');

-- endless when asked, for the SIGTERM
SELECT named_hook('endless', :'tm', 'noop_term', 'user', 'before',
	'function hook(ctx) { if (ctx.attributes.slow) { while (true) {} } }', '{"timeout_ms": 5000}');

SELECT named_hook('probe', :'tm', 'noop_probe', 'user', 'before', 'function hook(ctx) { }');
SQL
check "50 hooks defined" "$(q "SELECT count(*) FROM hook_names")" 50

# Hooks defined last are in force once a probe operation shows the probe hook.
probe=""
for i in $(seq 1 30); do
	id=$(enq "$TM" noop_probe create user '{}' "probe$i")
	wait_status "$id" completed 5 >/dev/null
	if [ "$(hooks_of "$id")" = "probe/before/v1/unchanged" ]; then probe=ok; break; fi
	sleep 0.5
done
check "a new hook is in force within a few seconds" "$probe" ok

# --- before: transform -------------------------------------------------------
people=("Ada Lovelace" "Grace Hopper" "Alan Turing" "Edsger Dijkstra" "Barbara Liskov")
ids=()
for p in "${people[@]}"; do
	ids+=("$(enq "$TM" scim_transform create user \
		"{\"name\": {\"givenName\": \"${p% *}\", \"familyName\": \"${p#* }\"}, \"displayName\": \"$p\"}" "t-$p")")
done
check "5 creates whose userName a hook computes complete" \
	"$(wait_for "SELECT count(*) FILTER (WHERE status = 'completed') FROM xprov.operations
		WHERE connector_id = '$(conn scim_transform)'" 20 5)" 5
check "the target received the computed userName" \
	"$(target_user hk.ada.lovelace userName displayName)" "userName=hk.ada.lovelace displayName=Ada Lovelace"
check "every computed userName reached the target" \
	"$(for p in "${people[@]}"; do n=${p,,}; target_user "hk.${n/ /.}" userName; done | tr '\n' ' ')" \
	"userName=hk.ada.lovelace userName=hk.grace.hopper userName=hk.alan.turing userName=hk.edsger.dijkstra userName=hk.barbara.liskov "
check "the account records the transformed attributes" \
	"$(q "SELECT attributes->>'userName' || ' ' || (attributes->'name'->>'familyName') FROM xprov.accounts
		WHERE connector_id = '$(conn scim_transform)' AND identity_id = md5('t-Grace Hopper')::uuid")" \
	"hk.grace.hopper Hopper"
check "the account is linked to the target's user" \
	"$(q "SELECT target_uid FROM xprov.accounts WHERE identity_id = md5('t-Ada Lovelace')::uuid")" \
	"$(curl -sf "$SCIM/_admin/users" | python3 -c "import json,sys; print([u['id'] for u in json.load(sys.stdin) if u['userName'] == 'hk.ada.lovelace'][0])")"
check "the history names the hook: before, version 1, outcome attributes" \
	"$(hooks_of "${ids[0]}")" "transform/before/v1/attributes"
check "with its hook_id, version and a duration in µs" \
	"$(q "SELECT h->>'hook_id' = '$(hook transform)' AND h->'version' = '1' AND jsonb_typeof(h->'duration_us') = 'number'
		AND (h->>'duration_us')::numeric >= 0
		FROM xprov.operation_attempts a, jsonb_array_elements(a.hooks) h WHERE a.operation_id = '${ids[0]}'")" t
check "every completed operation records its hook" \
	"$(q "SELECT count(*) FROM xprov.operation_attempts a, jsonb_array_elements(a.hooks) h
		WHERE a.connector_id = '$(conn scim_transform)' AND a.outcome = 'completed' AND h->>'outcome' = 'attributes'")" 5

# --- order -----------------------------------------------------------------------
id=$(enq "$TM" scim_order create user '{"userName": "ordered", "title": "none"}' order1)
check "two chained before hooks: completed" "$(wait_status "$id" completed 10)" completed
check "the second (order 2) saw the first's (order 1) output" "$(target_user ordered title)" "title=first>second"
check "the history lists them in order" "$(hooks_of "$id")" \
	"first/before/v1/attributes second/before/v1/attributes"

# --- scope -----------------------------------------------------------------------
u1=$(enq "$TS" scope_1 create user '{}' s-u1)
u2=$(enq "$TS" scope_2 create user '{}' s-u2)
g1=$(enq "$TS" scope_1 create group '{}' s-g1)
o1=$(enq "$TO" other_1 create user '{}' s-o1)
for x in "$u1" "$u2" "$g1" "$o1"; do wait_status "$x" completed 10 >/dev/null; done
check "scope: a user on connector 1 completes (the disabled hook did not skip it)" "$(status "$u1")" completed
check "scope: only the tenant-wide hook ran for a user (not the group hook, not the disabled one, not the other tenant's)" \
	"$(hooks_of "$u1")" "scope_all/before/v1/unchanged"
check "scope: the connector-NULL hook runs for the tenant's other connector too" \
	"$(hooks_of "$u2")" "scope_all/before/v1/unchanged"
check "scope: a group runs the group hook, after the tenant-wide one" \
	"$(hooks_of "$g1")" "scope_all/before/v1/unchanged scope_group/before/v1/unchanged"
check "scope: the other tenant runs its own hook only" \
	"$(hooks_of "$o1")" "other_tenant/before/v1/unchanged"

# --- skip ------------------------------------------------------------------------
s1=$(enq "$TM" scim_skip create user '{"userName": "skip.emp1", "title": "Employee"}' sk1)
s2=$(enq "$TM" scim_skip create user '{"userName": "skip.con1", "title": "Contractor"}' sk2)
s3=$(enq "$TM" scim_skip create user '{"userName": "skip.emp2", "title": "Employee"}' sk3)
s4=$(enq "$TM" scim_skip create user '{"userName": "skip.con2", "title": "Contractor"}' sk4)
check "skip: contractors end skipped" "$(wait_status "$s2" skipped 10) $(wait_status "$s4" skipped 10)" "skipped skipped"
check "skip: the others complete" "$(wait_status "$s1" completed 10) $(wait_status "$s3" completed 10)" "completed completed"
check "skip: the reason is recorded" \
	"$(q "SELECT last_error LIKE '%contractor%' FROM xprov.operations WHERE id = '$s2'")" t
check "skip: the target never saw a skipped operation" "$(target_saw "$s2") $(target_saw "$s4")" "0 0"
check "skip: nor its user" "$(target_user skip.con1) $(target_user skip.con2)" "none none"
check "skip: the employees are there" "$(target_user skip.emp1 title)" "title=Employee"
check "skip: the history shows the skip" "$(hooks_of "$s2")" "skip_contractors/before/v1/skip"

# --- veto ------------------------------------------------------------------------
v1=$(enq "$TM" scim_veto create user '{"userName": "veto.admin", "title": "Admin"}' v1)
v2=$(enq "$TM" scim_veto create user '{"userName": "veto.user", "title": "User"}' v2)
check "veto: a throwing hook dead-letters the operation" "$(wait_status "$v1" dead_letter 10)" dead_letter
check "veto: at the first attempt" "$(q "SELECT attempts FROM xprov.operations WHERE id = '$v1'")" 1
check "veto: last_error has the JS message" \
	"$(q "SELECT last_error LIKE '%policy: no admins%' FROM xprov.operations WHERE id = '$v1'")" t
check "veto: and the line" "$(q "SELECT last_error ~* 'line' FROM xprov.operations WHERE id = '$v1'")" t
check "veto: the target never saw it" "$(target_saw "$v1")" 0
check "veto: the history shows the failed hook" "$(hooks_of "$v1")" "veto/before/v1/failed"
check "veto: a permitted user completes" "$(wait_status "$v2" completed 10)" completed
check "veto: its hook left it unchanged" "$(hooks_of "$v2")" "veto/before/v1/unchanged"
vi=$(enq "$TM" scim_veto_ignore create user '{"userName": "veto.ignored", "title": "Admin"}' vi)
check "veto, failure ignore: the operation completes" "$(wait_status "$vi" completed 10)" completed
check "veto, failure ignore: the history shows outcome ignored" "$(hooks_of "$vi")" "veto_ignore/before/v1/ignored"
check "veto, failure ignore: with the error" \
	"$(q "SELECT h->>'error' LIKE '%policy: no admins%' FROM xprov.operation_attempts a, jsonb_array_elements(a.hooks) h
		WHERE a.operation_id = '$vi'")" t
check "veto, failure ignore: the user reached the target as enqueued" "$(target_user veto.ignored title)" "title=Admin"

# --- after -----------------------------------------------------------------------
a1=$(enq "$TM" scim_after create user '{"userName": "after.one", "displayName": "After One"}' a1)
check "after: the operation completes" "$(wait_status "$a1" completed 10)" completed
check "after: the account records the shadow_attributes" \
	"$(q "SELECT (attributes - 'uid' - 'ctx')::text FROM xprov.accounts WHERE identity_id = md5('a1')::uuid")" \
	'{"kind": "create/user", "userName": "after.one", "shadow_uid": "none", "http_status": 201, "recorded_by": "after"}'
check "after: ctx.response.target_uid is the account's target_uid" \
	"$(q "SELECT attributes->>'uid' = target_uid FROM xprov.accounts WHERE identity_id = md5('a1')::uuid")" t
check "after: ctx has operation_id, tenant_id, connector_id, identity_id, attempt" \
	"$(q "SELECT attributes->>'ctx' FROM xprov.accounts WHERE identity_id = md5('a1')::uuid")" \
	"$a1 $TM $(conn scim_after) $(q "SELECT md5('a1')::uuid") 1"
check "after: the target got the attributes sent (not the shadow)" "$(target_user after.one displayName)" \
	"displayName=After One"
check "after: the history shows it" "$(hooks_of "$a1")" "after/after/v1/shadow_attributes"
a2=$(enq "$TM" scim_after update user '{"displayName": "After Two"}' a1)
check "after, on an update: completes" "$(wait_status "$a2" completed 10)" completed
check "after, on an update: the target has the update" "$(target_user after.one displayName)" "displayName=After Two"
check "after, on an update: ctx.shadow is the account as last provisioned; the status is the PATCH's" \
	"$(q "SELECT (attributes - 'uid' - 'ctx' - 'shadow_uid')::text || ' ' || (attributes->>'shadow_uid' = target_uid)
		FROM xprov.accounts WHERE identity_id = md5('a1')::uuid")" \
	'{"kind": "update/user", "userName": "after.one", "http_status": 200, "recorded_by": "after"} true'

# --- nothing survives from one call to the next --------------------------------
for i in 1 2 3; do enq "$TM" scim_state create user "{\"userName\": \"state.$i\"}" "state$i" >/dev/null; done
check "state: three creates complete" \
	"$(wait_for "SELECT count(*) FILTER (WHERE status = 'completed') FROM xprov.operations
		WHERE connector_id = '$(conn scim_state)'" 15 3)" 3
check "state: each call started afresh (a top-level array held one element each time)" \
	"$(q "SELECT string_agg(attributes->>'calls', ' ') FROM xprov.accounts WHERE connector_id = '$(conn scim_state)'")" "1 1 1"

# --- on_error --------------------------------------------------------------------
q "SELECT xprov.wait_idle('10 s')" >/dev/null
fault '{"mode": "500", "count": 1, "path_prefix": "/scim/v2/Users"}'
e1=$(enq "$TM" scim_noretry create user '{"userName": "err.noretry"}' e1)
check "on_error {retry: false}: dead-lettered" "$(wait_status "$e1" dead_letter 10)" dead_letter
check "on_error {retry: false}: at the first attempt" "$(q "SELECT attempts FROM xprov.operations WHERE id = '$e1'")" 1
check "on_error {retry: false}: the target was asked once" "$(target_saw "$e1")" 1
check "on_error {retry: false}: the history shows no_retry" "$(hooks_of "$e1")" "no_retry/on_error/v1/no_retry"
q "SELECT xprov.wait_idle('10 s')" >/dev/null
fault '{"mode": "500", "count": 2, "path_prefix": "/scim/v2/Users"}'
e2=$(enq "$TM" scim_retry create user '{"userName": "err.retry"}' e2)
check "on_error returning nothing: retried to completion" "$(wait_status "$e2" completed 20)" completed
check "on_error returning nothing: after 3 attempts" "$(q "SELECT attempts FROM xprov.operations WHERE id = '$e2'")" 3
check "on_error returning nothing: the hook ran after each failure" "$(hooks_of "$e2")" \
	"on_error_nothing/on_error/v1/unchanged on_error_nothing/on_error/v1/unchanged"
check "on_error returning nothing: the user exists once" "$(target_user err.retry userName)" "userName=err.retry"
fault '{"mode": "clear"}'

# --- noop connector --------------------------------------------------------------
n1=$(enq "$TM" noop_hooked create user '{"title": "Employee"}' n1)
n2=$(enq "$TM" noop_hooked create user '{"title": "Contractor"}' n2)
check "noop with a before hook: completes" "$(wait_status "$n1" completed 10)" completed
check "noop with a before hook: the history shows the hook" "$(hooks_of "$n1")" "noop_transform/before/v1/attributes"
check "noop with a before hook: a skip" "$(wait_status "$n2" skipped 10)" skipped
check "noop: the skip's reason is recorded" \
	"$(q "SELECT last_error LIKE '%contractor (noop)%' FROM xprov.operations WHERE id = '$n2'")" t

# --- the hook thread: many operations, each its own answer -------------------------
check "the worker runs its hooks on a thread of its own" \
	"$(grep -lx 'xprov hooks' /proc/"$(worker_pid)"/task/*/comm 2>/dev/null | wc -l)" 1
# disabled while 300 are enqueued, so that the worker claims them in full batches
q "SELECT xprov.set_connector_enabled('$(conn noop_batch)', false)" >/dev/null
q "SELECT count(*) FROM xprov.enqueue_batch((SELECT jsonb_agg(jsonb_build_object(
	'tenant_id', '$TM', 'connector_id', '$(conn noop_batch)', 'identity_id', md5('batch' || n)::uuid,
	'operation_type', 'update', 'object_class', 'user', 'attributes', jsonb_build_object('n', n)))
	FROM generate_series(1, 300) n))" >/dev/null
q "SELECT xprov.set_connector_enabled('$(conn noop_batch)', true)" >/dev/null
check "hook thread: all 300 operations end" \
	"$(wait_for "SELECT count(*) FROM xprov.operations WHERE connector_id = '$(conn noop_batch)'
		AND status IN ('completed', 'skipped', 'dead_letter')" 60 300)" 300
check "hook thread: each ended by its own hook's answer (skipped naming its own id, vetoed naming its own n, transformed)" \
	"$(q "SELECT count(*) FILTER (WHERE n % 3 = 0 AND status = 'skipped' AND last_error = 'skip ' || n || ' ' || id)
		|| ' ' || count(*) FILTER (WHERE n % 3 = 1 AND status = 'dead_letter' AND last_error ~ ('Error: veto ' || n || '\\y'))
		|| ' ' || count(*) FILTER (WHERE n % 3 = 2 AND status = 'completed' AND hook_history(id) = 'batch/before/v1/attributes')
		FROM (SELECT *, (attributes->>'n')::int AS n FROM xprov.operations
			  WHERE connector_id = '$(conn noop_batch)') o")" "100 100 100"

# Attributes of every JSON shape, as the hook thread renders them from jsonb: escapes
# and control characters, non-ASCII, numbers in numeric's short and long forms, nested
# containers, more members than jsonb stores without offsets (32), long strings.
q "SELECT xprov.set_connector_enabled('$(conn noop_echo)', false)" >/dev/null
q "CREATE TABLE echo_in AS SELECT n, CASE n % 4
	WHEN 0 THEN jsonb_build_object('s', E'q\"\\\\/\\b\\f\\n\\r\\t\\u0001\\u001f é 😀 ' || n, 'e', '', 'nul', NULL,
	                               't', true, 'f', false, 'o', '{}'::jsonb, 'a', '[]'::jsonb)
	WHEN 1 THEN jsonb_build_object('i', n, 'neg', -n, 'frac', n / 8.0, 'tiny', 0.00001 * n, 'big', 1e60 * n,
	                               'small', 1e-70 * n, 'scale', 1.500, 'zero', 0, 'nzero', -0.0)
	WHEN 2 THEN (SELECT jsonb_object_agg('key' || k, jsonb_build_array(k, 'v' || k, jsonb_build_object('d', k)))
	             FROM generate_series(1, 40 + n % 7) k)
	ELSE jsonb_build_object('long', repeat('x', 3000 + n), 'deep', '{\"a\": [[{\"b\": [1, {\"c\": null}]}]]}'::jsonb)
	END AS attributes FROM generate_series(1, 40) n" >/dev/null
q "SELECT count(*) FROM xprov.enqueue_batch((SELECT jsonb_agg(jsonb_build_object(
	'tenant_id', '$TM', 'connector_id', '$(conn noop_echo)', 'identity_id', md5('echo' || n)::uuid,
	'operation_type', 'update', 'object_class', 'user', 'attributes', attributes)) FROM echo_in))" >/dev/null
q "SELECT xprov.set_connector_enabled('$(conn noop_echo)', true)" >/dev/null
check "hook thread: 40 operations with attributes of every shape end" \
	"$(wait_for "SELECT count(*) FROM xprov.operations WHERE connector_id = '$(conn noop_echo)'
		AND status = 'skipped'" 30 40)" 40
check "hook thread: each hook saw its attributes exactly (as JSON, equal to the enqueued jsonb)" \
	"$(q "SELECT count(*) FROM xprov.operations o JOIN echo_in e ON o.identity_id = md5('echo' || e.n)::uuid
		WHERE o.connector_id = '$(conn noop_echo)' AND o.last_error::jsonb = e.attributes")" 40

# A's slow hook keeps the thread busy; B, claimed meanwhile, waits with its hook's call
# made for version 1; the hook changes; C's claim loads the change; then B starts.
a=$(enq "$TM" noop_slow2 create user '{}' slow2)
check "hook thread: a slow hook runs" "$(wait_status "$a" in_progress 10)" in_progress
b=$(enq "$TM" noop_ver create user '{}' ver)
check "hook thread: an operation waits for it" "$(wait_status "$b" in_progress 10)" in_progress
q "SELECT xprov.update_hook('$(hook ver)', 'function hook(ctx) { return { skip: true, reason: \"version 2\" }; }')" >/dev/null
c=$(enq "$TM" noop_plain create user '{}' plain)
check "hook thread: another operation completes meanwhile" "$(wait_status "$c" completed 10)" completed
check "hook thread: the slow hook still runs" "$(status "$a")" in_progress
check "hook thread: the waiting operation ran the hook's new version" \
	"$(wait_status "$b" skipped 15) $(q "SELECT last_error LIKE '%version 2%' FROM xprov.operations WHERE id = '$b'") $(hooks_of "$b")" \
	"skipped t ver/before/v2/skip"

# --- answers a before hook may and may not give --------------------------------
# shape OP_NUMBER WANT_STATUS [ERROR_REGEX]
shape()
{
	local n=$1 want=$2 error=${3:-} op

	op=$(enq "$TM" "shape_$n" create user '{"title": "Shape"}' "shape$n")
	check "shape $n: $want" "$(wait_status "$op" "$want" 10)" "$want"
	if [ -n "$error" ]; then
		check "shape $n: the error says /$error/" \
			"$(q "SELECT coalesce(last_error ~ '$error', false) FROM xprov.operations WHERE id = '$op'")" t
	fi
}
shape 1 completed
shape 2 dead_letter 'returned an array, not an object'
shape 3 dead_letter 'returned a string, not an object'
shape 4 dead_letter 'returned a scalar, not an object'
shape 5 dead_letter 'a before hook returns \{attributes'
shape 6 dead_letter 'a before hook returns \{attributes'
shape 7 dead_letter 'a before hook returns \{attributes'
shape 8 dead_letter 'a before hook returns \{attributes'
shape 9 skipped 'skipped by a before hook'
shape 10 completed
shape 11 completed
shape 12 skipped 'skipped by a before hook'
# what JSON.stringify makes of them: a Date is a string, toJSON answers, inherited members are not written
shape 13 dead_letter 'returned a string, not an object'
shape 14 skipped 'said toJSON'
shape 15 completed
check "shape: the history names the outcomes" \
	"$(for n in 1 5 9 10 15; do hooks_of "$(q "SELECT id FROM xprov.operations WHERE identity_id = md5('shape$n')::uuid")"; done | tr '\n' ' ')" \
	"shape_1/before/v1/unchanged shape_5/before/v1/failed shape_9/before/v1/skip shape_10/before/v1/attributes shape_15/before/v1/attributes "
sh=$(enq "$TM" scim_shape create user '{"userName": "shape.utf", "nick": "Ünïcödé"}' shape-utf)
check "shape: attributes with non-ASCII text and nesting complete" "$(wait_status "$sh" completed 10)" completed
check "shape: the target got the text intact (a character outside the BMP too)" \
	"$(target_user "shape.utf.é😀" userName nick)" "userName=shape.utf.é😀 nick=Ünïcödé"
check "shape: undefined and functions are left out, nested values kept" \
	"$(q "SELECT (attributes ? 'gone') || ' ' || (attributes ? 'fn') || ' ' || (attributes->'nested')::text
		FROM xprov.accounts WHERE identity_id = md5('shape-utf')::uuid")" \
	'false false {"n": -1.5, "list": [1, "two", null, {"three": true}]}'

# --- update_hook -----------------------------------------------------------------
u=$(enq "$TM" noop_update create user '{}' upd0)
wait_status "$u" completed 10 >/dev/null
check "update_hook: version 1 runs first" "$(hooks_of "$u")" "versioned/before/v1/unchanged"
check "update_hook returns the new version" \
	"$(q "SELECT xprov.update_hook('$(hook versioned)', 'function hook(ctx) { var a = ctx.attributes; a.v = 2; return { attributes: a }; }')")" 2
check "xprov.hooks shows version 2" "$(q "SELECT version FROM xprov.hooks WHERE id = '$(hook versioned)'")" 2
seen=""
for i in $(seq 1 30); do
	u=$(enq "$TM" noop_update create user '{}' "upd$i")
	wait_status "$u" completed 5 >/dev/null
	seen=$(hooks_of "$u")
	[ "$seen" = "versioned/before/v2/attributes" ] && break
	sleep 0.5
done
check "update_hook: new operations run version 2 within a few seconds" "$seen" "versioned/before/v2/attributes"

# --- hostile hooks ---------------------------------------------------------------
pid0=$(worker_pid)
start0=$(start_time)
ckpt0=$(checkpointer_pid)
crashes0=$(crashes)
# hostile NAME ERROR_REGEX: the operation dead-letters with an error matching
# ERROR_REGEX; the worker and the server carry on; the next ordinary operation
# completes, sees no pollution and no removed global.
hostile()
{
	local name=$1 want=$2 op ok

	op=$(enq "$TM" "$name" create user '{}' "hostile-$name")
	check "$name: dead-lettered" "$(wait_status "$op" dead_letter 15)" dead_letter
	check "$name: error matches /$want/" \
		"$(q "SELECT coalesce(last_error ~* '$want', false) FROM xprov.operations WHERE id = '$op'")" t
	echo "# $name: $(q "SELECT last_error FROM xprov.operations WHERE id = '$op'")"
	check "$name: the history shows the failed hook" "$(hooks_of "$op")" "$name/before/v1/failed"
	check "$name: same worker (pid $pid0)" "$(worker_pid)" "$pid0"
	check "$name: the postmaster did not restart" "$(start_time)" "$start0"
	check "$name: no crash-restart of the server (same checkpointer)" "$(checkpointer_pid)" "$ckpt0"
	ok=$(enq "$TM" scim_ok create user "{\"userName\": \"ok.after.$name\"}" "ok-$name")
	check "$name: the next ordinary operation completes" "$(wait_status "$ok" completed 15)" completed
	check "$name: its hook saw no pollution and no removed global" \
		"$(q "SELECT attributes->>'clean' || ' ' || (attributes->>'globals') FROM xprov.accounts
			WHERE identity_id = md5('ok-$name')::uuid")" \
		"true undefined,undefined,undefined,undefined,undefined,undefined,undefined,undefined,undefined,undefined"
}
hostile h_loop 'time limit'
hostile h_finally 'time limit'
hostile h_catch 'time limit'
hostile h_memory 'memory limit'
hostile h_regex 'time limit'
hostile h_recursion 'RangeError|limit'
hostile h_escape 'Error'
hostile h_pollute 'TypeError'
hostile h_big 'too large|larger than'
hostile h_getter 'time limit'
check "no server process crashed or was restarted" "$(crashes)" "$crashes0"
check "the worker is still the same" "$(worker_pid)" "$pid0"

# --- kill -9 of the worker while a slow hook runs --------------------------------
k=$(enq "$TM" noop_kill create user '{}' kill1)
check "kill: the slow hook's operation is in progress" "$(wait_status "$k" in_progress 10)" in_progress
sleep 0.5
check "kill: still in progress (the hook runs)" "$(status "$k")" in_progress
# the hook runs on the hook thread; the main thread may look for work meanwhile,
# in transactions of a few ms, but none lasts while the hook runs
check "kill: the worker holds no transaction open while the hook runs" \
	"$(q "SELECT coalesce(clock_timestamp() - xact_start < interval '200 ms', true)
		FROM pg_stat_activity WHERE pid = $pid0")" t
kill -9 "$pid0"
sleep 2
check "kill: the launcher starts a new worker" \
	"$(wait_for "SELECT count(*) FROM xprov.worker_status() WHERE pid <> $pid0" 60 1)" 1
check "kill: the operation is dead-lettered by the hook's time limit on its next attempt" \
	"$(wait_status "$k" dead_letter 30)" dead_letter
check "kill: its error is the time limit" \
	"$(q "SELECT last_error ~* 'time limit' FROM xprov.operations WHERE id = '$k'")" t
check "kill: two attempts, the killed one recorded as worker_restarted" \
	"$(q "SELECT string_agg(outcome, ' ' ORDER BY attempt) FROM xprov.operation_attempts WHERE operation_id = '$k'")" \
	"worker_restarted dead_letter"
check "kill: not lost, not duplicated (one operation, no result)" \
	"$(q "SELECT count(*) || ' ' || (SELECT count(*) FROM xprov.op_result WHERE op_id = '$k')
		FROM xprov.operations WHERE connector_id = '$(conn noop_kill)'")" "1 0"
ok=$(enq "$TM" scim_ok create user '{"userName": "ok.after.kill"}' ok-kill)
check "kill: an ordinary operation completes after the restart" "$(wait_status "$ok" completed 15)" completed

# --- SIGTERM while the hook thread runs endless hooks ----------------------------
pid1=$(worker_pid)
terms=()
for i in 1 2 3; do terms+=("$(enq "$TM" noop_term create user '{"slow": true}' "term$i")"); done
check "term: the endless hooks' operations are in progress" \
	"$(wait_for "SELECT count(*) FROM xprov.operations WHERE connector_id = '$(conn noop_term)'
		AND status = 'in_progress'" 10 3)" 3
sleep 0.3
# the hook's time limit is 5 s: a worker gone within 2 s cancelled the hook
kill -TERM "$pid1"
gone=no
for i in $(seq 1 20); do
	if ! kill -0 "$pid1" 2>/dev/null; then gone=yes; break; fi
	sleep 0.1
done
check "term: the worker exits within 2 s, its hooks cancelled" "$gone" yes
check "term: the launcher starts a new worker" \
	"$(wait_for "SELECT count(*) FROM xprov.worker_status() WHERE pid NOT IN ($pid0, $pid1)" 60 1)" 1
check "term: the operations were given back, not attempted" \
	"$(q "SELECT count(*) FROM xprov.operation_attempts a JOIN xprov.operations o ON o.id = a.operation_id
		WHERE o.connector_id = '$(conn noop_term)' AND a.outcome NOT IN ('in_progress')")" 0
# the successor runs them: the endless hooks hit their time limit
check "term: the successor runs them to their time limit" \
	"$(wait_for "SELECT count(*) FROM xprov.operations WHERE connector_id = '$(conn noop_term)'
		AND status = 'dead_letter' AND last_error ~* 'time limit'" 60 3)" 3
ok=$(enq "$TM" noop_term create user '{}' term-ok)
check "term: an ordinary operation completes after the restart" "$(wait_status "$ok" completed 15)" completed

check "no process crashed (signal 6/11, PANIC)" \
	"$(grep -cE 'terminated by signal (6|11)|PANIC' "$XPROV_SERVER_LOG" || true)" 0
[ "$failures" -eq 0 ]
