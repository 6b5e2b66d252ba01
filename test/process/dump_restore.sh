#!/usr/bin/env bash
#
# pg_dump and pg_restore of a database with xprov: the configuration comes
# back, the runtime state does not, and the restored database works.
#   - a database configured fully: a scim2 connector with bearer credentials
#     against the bundled SCIM target (test/targets/scim_server.py, which
#     requires the token), a noop connector, a before hook (two versions), an
#     after hook and a disabled tenant-wide on_error hook, an identity source
#     over an application table (its own schema, an index on
#     xprov.normalize_text()), correlation rules in two tiers and thresholds,
#     a correlation decision made by resolving a disputed case, reactions and a
#     reconciliation threshold; and runtime state: operations run by the
#     worker, shadows, a resolved case, a reconciliation preview with its
#     discrepancies, an operation still pending;
#   - pg_dump -Fc, createdb, pg_restore -d: exit 0 and nothing on stderr;
#   - in the restored database: every configuration table identical row for
#     row (and the hooks' identity sequence), every runtime table empty, the
#     xprov.hooks view, the hook scripts compiling and running, the same
#     answers from correlate_owner (a rule's, a tier-2 rule's, a decision's),
#     try_operation creating a user on the SCIM target through the restored
#     credentials and hooks, a new hook ordered after the restored ones, and
#     the queue taking work;
#   - the restored database dumped and restored again (the application table
#     restored by the same dump each time): still identical.
# The worker serves only the source database (xprov.database_name): it makes
# the runtime state there.  The restored databases need no worker:
# try_operation runs in the session.
# Exit 0 = pass.
#
# Environment: XPROV_PORT (cluster port, default 55497), XPROV_DUMP_SCIM_PORT
# (SCIM target port, default 18497), XPROV_PGBIN (see test/lib/cluster.sh;
# pg_dump, pg_restore and createdb are taken from there too).

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export XPROV_PORT="${XPROV_PORT:-55497}"
SCIM_PORT="${XPROV_DUMP_SCIM_PORT:-18497}"
. test/lib/cluster.sh
. test/lib/check.sh
. test/lib/target.sh

DB=xprov_dump_src
R1=xprov_dump_restored
R2=xprov_dump_restored2
SCIM=http://127.0.0.1:$SCIM_PORT
TOKEN=dump-restore-token-42
T=f0000000-0000-4000-8000-000000000001

CONFIG_TABLES="connector connector_secret hook hook_version identity_source correlation_rule correlation_threshold
	correlation_decision reaction reconciliation_threshold webhook tenant_binding"
RUNTIME_TABLES="op subject lane op_result op_failure idempotency shadow correlation_case
	reconciliation_run reconciliation_item discrepancy webhook_delivery"

scim_pid=""
scim_start() { target_start scim_pid test/targets/scim_server.py "$SCIM_PORT" "$XPROV_CLUSTER_DIR/scim.log" --token "$TOKEN"; }
scim_stop() { target_stop scim_pid; }
scim_post()
{
	curl -sf -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/scim+json' \
		-d "$1" "$SCIM/scim/v2/Users" | python3 -c "import json,sys; print(json.load(sys.stdin)['id'])"
}
# tuser USERNAME ATTR: the target's user's attribute, or "none".
tuser()
{
	curl -sf "$SCIM/_admin/users" | python3 -c "
import json, sys
users = [u for u in json.load(sys.stdin) if u['userName'] == sys.argv[1]]
print(users[0].get(sys.argv[2]) if len(users) == 1 else 'none')" "$1" "$2"
}

qd() { psql -qAtX -v ON_ERROR_STOP=1 -d "$1" -c "$2"; }
status() { q "SELECT status FROM xprov.operations WHERE id = '$1'"; }
wait_status() { wait_for "SELECT status FROM xprov.operations WHERE id = '$1'" "$3" "$2"; }
enq()
{
	q "SELECT xprov.enqueue(tenant_id => '$T', connector_id => '$C', identity_id => md5('$1')::uuid,
		operation_type => 'create', object_class => 'user', attributes => '$2'::jsonb)"
}
# config_md5 DB: one line per configuration table: its name, rows and md5 of its rows in order.
config_md5()
{
	local t
	for t in $CONFIG_TABLES; do
		qd "$1" "SELECT '$t ' || count(*) || ' ' || md5(coalesce(string_agg(x::text, E'\n' ORDER BY x::text), ''))
			FROM xprov.$t x"
	done
	qd "$1" "SELECT 'hook_created_seq ' || last_value || ' ' || is_called FROM xprov.hook_created_seq_seq"
}
runtime_rows()
{
	local t out=""
	for t in $RUNTIME_TABLES; do
		out+="$t=$(qd "$1" "SELECT count(*) FROM xprov.$t") "
	done
	printf '%s' "${out% }"
}
# owners DB: correlate_owner's answers for a few accounts, one line each.
owners()
{
	local acct
	for acct in "{\"id\": \"x1\", \"userName\": \"a\", \"emails\": [{\"value\": \"ADA@example.com\"}]}" \
		"{\"id\": \"x2\", \"userName\": \"b\", \"name\": {\"givenName\": \" Grace \", \"familyName\": \"HÓPPER\"}}" \
		"{\"id\": \"$twin_a\", \"userName\": \"legacy.twin.a\", \"emails\": [{\"value\": \"twin@example.com\"}]}" \
		"{\"id\": \"$twin_b\", \"userName\": \"legacy.twin.b\", \"emails\": [{\"value\": \"twin@example.com\"}]}" \
		"{\"id\": \"x3\", \"userName\": \"nobody\", \"emails\": [{\"value\": \"nobody@example.com\"}]}"; do
		qd "$1" "SELECT coalesce(string_agg(concat_ws(' ', identity_id, round(confidence::numeric, 3), match_type, evidence),
				' | ' ORDER BY identity_id), 'no owner')
			FROM xprov.correlate_owner('$T', '$C', '$acct'::jsonb)"
	done
}
# dump_restore FROM TO FILE: pg_dump -Fc FROM, createdb TO, pg_restore into it;
# checks the exit codes and that pg_restore printed nothing.
dump_restore()
{
	local from=$1 to=$2 file=$3 rc=0
	"$XPROV_PGBIN/pg_dump" -Fc -d "$from" -f "$file" 2>"$file.dump.err" || rc=$?
	check "pg_dump $from: exit 0, nothing on stderr" "$rc $(cat "$file.dump.err")" "0 "
	"$XPROV_PGBIN/createdb" "$to"
	rc=0
	"$XPROV_PGBIN/pg_restore" -d "$to" "$file" >"$file.restore.out" 2>&1 || rc=$?
	check "pg_restore into $to: exit 0, no output" "$rc $(cat "$file.restore.out")" "0 "
}

on_check_failure()
{
	q "SELECT id, operation_type, status, attempts, last_error FROM xprov.operations
		ORDER BY created_at DESC LIMIT 8" || true
	grep -E 'xprov|ERROR|FATAL' "$XPROV_SERVER_LOG" | tail -15 || true
}

cluster_start "xprov.database_name = '$DB'" "xprov.retry_base = '200ms'" "xprov.retry_max = '2s'" \
	"xprov.max_attempts = 4" "xprov.http_timeout = '10s'" >/dev/null
trap 'scim_stop; cluster_stop' EXIT
scim_start
export PGDATABASE=$DB
psql -qAtX -d postgres -c "CREATE DATABASE $DB"

# --- the application and xprov's configuration ---------------------------------------
psql -qX -v ON_ERROR_STOP=1 >/dev/null <<SQL
CREATE SCHEMA app;
CREATE TABLE app.person (
	id			uuid PRIMARY KEY,
	tenant_id	uuid NOT NULL,
	email		text NOT NULL,
	first_name	text,
	last_name	text,
	extra		jsonb NOT NULL DEFAULT '{}'
);
CREATE EXTENSION xprov;
CREATE INDEX person_email ON app.person (lower(email));
CREATE INDEX person_name ON app.person (xprov.normalize_text(first_name), xprov.normalize_text(last_name));
INSERT INTO app.person VALUES
	(md5('ada')::uuid, '$T', 'ada@example.com', 'Ada', 'Lovelace', '{"department": "math"}'),
	(md5('grace')::uuid, '$T', 'grace@example.com', 'Grace', 'Hopper', '{}'),
	(md5('twin')::uuid, '$T', 'twin@example.com', 'Twin', 'Person', '{}'),
	(md5('lina')::uuid, '$T', 'lina@example.com', 'Lina', 'Lind', '{}');
SQL
check "the worker runs on $DB" "$(wait_for "SELECT count(*) FROM xprov.worker_status() WHERE database = '$DB'" 20 1)" 1
C=$(q "SELECT xprov.add_connector('$T', 'directory', 'scim2', '$SCIM/scim/v2',
		'{\"auth\": {\"type\": \"bearer\", \"token\": \"$TOKEN\"}, \"timeout_ms\": 8000}')")
N=$(q "SELECT xprov.add_connector('$T', 'sink', 'noop', NULL)")
q "SELECT xprov.bind_tenant('postgres', '$T')" >/dev/null
# a subscriber that never answers: its deliveries are runtime state
q "SELECT xprov.add_webhook('$T', 'http://127.0.0.1:9/hooks', ARRAY['operation.completed'], 'dump-restore-webhook-secret')" >/dev/null
q "SELECT xprov.set_connector_enabled('$N', false)" >/dev/null
H1=$(q "SELECT xprov.add_hook('$T', '$C', 'user', 'before', \$js\$
function hook(ctx) {
  var a = ctx.attributes;
  a.title = 'hooked-v1';
  return { attributes: a };
}
\$js\$, '{\"timeout_ms\": 50, \"memory_kb\": 8192, \"failure\": \"fatal\"}')")
q "SELECT xprov.update_hook('$H1', \$js\$
function hook(ctx) {
  var a = ctx.attributes;
  if (a.name && !a.displayName) a.displayName = a.name.givenName + ' ' + a.name.familyName;
  a.title = 'hooked-v2';
  return { attributes: a };
}
\$js\$)" >/dev/null
H2=$(q "SELECT xprov.add_hook('$T', '$C', 'user', 'after', \$js\$
function hook(ctx) {
  return { shadow_attributes: { userName: ctx.attributes.userName, title: ctx.attributes.title, after: true } };
}
\$js\$, '{\"order\": 5, \"failure\": \"ignore\"}')")
H3=$(q "SELECT xprov.add_hook('$T', NULL, NULL, 'on_error', 'function hook(ctx) { return { retry: false }; }')")
q "SELECT xprov.set_hook_enabled('$H3', false)" >/dev/null
q "SELECT xprov.set_identity_source('$T', 'app.person', '{\"tenant_column\": \"tenant_id\",
		\"attributes_column\": \"extra\", \"columns\": {\"given\": \"first_name\", \"family\": \"last_name\"}}')" >/dev/null
q "SELECT xprov.add_correlation_rule('$C', 'user',
		'{\"name\": \"mail\", \"items\": [{\"target\": \"emails.0.value\", \"identity\": \"email\", \"match\": \"case_insensitive\"}]}')" >/dev/null
q "SELECT xprov.add_correlation_rule('$C', 'user',
		'{\"name\": \"name\", \"tier\": 2, \"weight\": 0.6, \"items\": [
			{\"target\": \"name.givenName\", \"identity\": \"given\", \"match\": \"normalized\"},
			{\"target\": \"name.familyName\", \"identity\": \"family\", \"match\": \"normalized\"}]}')" >/dev/null
q "SELECT xprov.set_correlation_thresholds('$C', definite => 0.9, candidate => 0.5)" >/dev/null
q "SELECT xprov.set_reaction('$C', 'missing', 'create')" >/dev/null
q "SELECT xprov.set_reaction('$C', 'orphan', 'disable')" >/dev/null
q "SELECT xprov.set_reaction('$C', 'mismatch', 'update')" >/dev/null
q "SELECT xprov.set_reconciliation_threshold('$C', max_actions => 100, max_percent => 5)" >/dev/null

# --- runtime state: operations, shadows, a case resolved into a decision -------------
op=$(enq lina '{"userName": "lina@example.com", "name": {"givenName": "Lina", "familyName": "Lind"}, "emails": [{"value": "lina@example.com"}]}')
check "a create through the hooks completes" "$(wait_status "$op" completed 15)" completed
check "the before hook's version 2 shaped the account" \
	"$(tuser lina@example.com title) $(tuser lina@example.com displayName)" "hooked-v2 Lina Lind"
check "the after hook's shadow attributes are the shadow's" \
	"$(q "SELECT expected ->> 'after' FROM xprov.shadows WHERE identity_id = md5('lina')::uuid AND dead_at IS NULL")" true
# two accounts made on the target by hand, known as foreign shadows, with twin's e-mail
foreign()
{
	local uid
	uid=$(scim_post "{\"schemas\": [\"urn:ietf:params:scim:schemas:core:2.0:User\"], \"userName\": \"$1\", \"emails\": [{\"value\": \"$2\"}]}")
	q "INSERT INTO xprov.shadow (tenant_id, connector_id, object_class, lifecycle, situation, target_uid, observed, observed_at)
		VALUES ('$T', '$C', 'user', 'live', 'unlinked', '$uid',
				jsonb_build_object('id', '$uid', 'userName', '$1', 'emails', jsonb_build_array(jsonb_build_object('value', '$2'))), now())" >/dev/null
	echo "$uid"
}
twin_a=$(foreign legacy.twin.a TWIN@example.com)
twin_b=$(foreign legacy.twin.b twin@Example.com)
op=$(enq twin '{"userName": "twin.new", "emails": [{"value": "twin@example.com"}]}')
check "a create matching two accounts parks" "$(wait_status "$op" parked 15)" parked
case1=$(q "SELECT id FROM xprov.correlation_cases WHERE operation_id = '$op' AND status = 'open'")
q "SELECT xprov.resolve_case('$case1', 'link', target_uid => '$twin_b')" >/dev/null
check "resolved by linking one: the create completes" "$(wait_status "$op" completed 15)" completed
check "a confirmed decision" \
	"$(q "SELECT target_uid || ' ' || decision FROM xprov.correlation_decisions WHERE identity_id = md5('twin')::uuid")" \
	"$twin_b confirmed"
q "SET xprov.tenant_id = '$T'; SELECT xprov.reconcile_preview('$C')" >/dev/null
run=$(q "SELECT id FROM xprov.reconciliation_runs WHERE connector_id = '$C'")
check "a reconciliation preview completes" "$(q "SELECT xprov.wait_run('$run', '60 seconds')")" completed
q "SELECT xprov.enqueue(tenant_id => '$T', connector_id => '$C', identity_id => md5('grace')::uuid,
	operation_type => 'update', object_class => 'user', attributes => '{\"title\": \"later\"}',
	not_before => now() + interval '1 day', idempotency_key => 'pending-one')" >/dev/null
src_runtime=$(runtime_rows "$DB")
echo "# runtime rows in $DB: $src_runtime"
check "$DB has runtime state in every runtime table but the staged listing" \
	"$(grep -Eo '[a-z_]+=0' <<<"$src_runtime" | paste -sd' ')" "reconciliation_item=0"
check "$DB's extension registers the configuration tables and the hooks' sequence for pg_dump" \
	"$(q "SELECT string_agg(c.relname, ' ' ORDER BY c.relname) FROM pg_extension e, unnest(e.extconfig) r, pg_class c
		WHERE e.extname = 'xprov' AND c.oid = r")" \
	"connector connector_secret correlation_decision correlation_rule correlation_threshold hook hook_created_seq_seq hook_version identity_source reaction reconciliation_threshold tenant_binding webhook"
src_config=$(config_md5 "$DB")
src_owners=$(owners "$DB")
echo "# correlate_owner in $DB:"
sed 's/^/#   /' <<<"$src_owners"
echo "# configuration in $DB:"
sed 's/^/#   /' <<<"$src_config"
check "$DB: every configuration table has rows" "$(grep -c ' 0 ' <<<"$src_config" || true)" 0
twin_id=$(q "SELECT md5('twin')::uuid")
check "correlate_owner in $DB: the chosen account is twin's existing link" \
	"$(sed -n 4p <<<"$src_owners" | cut -d' ' -f1,3)" "$twin_id existing_link"

# --- dump and restore -------------------------------------------------------------------
dump_restore "$DB" "$R1" "$XPROV_CLUSTER_DIR/src.dump"
toc=$("$XPROV_PGBIN/pg_restore" -l "$XPROV_CLUSTER_DIR/src.dump")
at() { grep -n -- " $1\$" <<<"$toc" | head -n 1 | cut -d: -f1; }		# line of a TOC entry, by its end
# shellcheck disable=SC2086 # CONFIG_TABLES: a list of words
check "the dump holds the data of exactly the configuration tables, and the hooks' sequence" \
	"$(grep -Eo '(TABLE DATA|SEQUENCE SET) xprov [a-z_]+' <<<"$toc" | awk '{print $NF}' | LC_ALL=C sort | paste -sd' ')" \
	"$(printf '%s\n' $CONFIG_TABLES hook_created_seq_seq | LC_ALL=C sort | paste -sd' ')"
check "pg_restore creates the application table before it loads identity_source (its regclass)" \
	"$([ "$(at "TABLE app person postgres")" -lt "$(at "TABLE DATA xprov identity_source postgres")" ] && echo before)" before
check "pg_restore loads hook before hook_version (its foreign key)" \
	"$([ "$(at "TABLE DATA xprov hook postgres")" -lt "$(at "TABLE DATA xprov hook_version postgres")" ] && echo before)" before
check "$R1: every configuration row identical" "$(config_md5 "$R1")" "$src_config"
check "$R1: every runtime table empty" "$(runtime_rows "$R1")" "$(runtime_rows "$R1" | sed 's/=[0-9]*/=0/g')"
check "$R1: the application's rows and index came along" \
	"$(qd "$R1" "SELECT count(*) FROM app.person") $(qd "$R1" "SELECT count(*) FROM pg_indexes WHERE schemaname = 'app'")" "4 3"
check "$R1: identity_source names the restored application table" \
	"$(qd "$R1" "SELECT relation::text || ' ' || (relation = 'app.person'::regclass) FROM xprov.identity_source")" "app.person true"
check "$R1: xprov.hooks shows the three hooks, their versions and states" \
	"$(qd "$R1" "SELECT string_agg(phase || ':' || version || ':' || enabled, ' ' ORDER BY phase) FROM xprov.hooks")" \
	"after:1:true before:2:true on_error:1:false"
check "$R1: the after hook keeps its options" \
	"$(qd "$R1" "SELECT run_order || ' ' || failure || ' ' || timeout_ms FROM xprov.hook WHERE id = '$H2'")" "5 ignore 100"
check "$R1: xprov.hook_versions has all four versions" "$(qd "$R1" "SELECT count(*) FROM xprov.hook_versions")" 4
check "$R1: every hook script compiles" \
	"$(qd "$R1" "SELECT count(*) FROM xprov.hooks h, LATERAL (SELECT xprov.validate_script(h.script)) v")" 3
check "$R1: the before hook's script runs" \
	"$(qd "$R1" "SELECT xprov.execute_script(script, '{\"attributes\": {\"name\": {\"givenName\": \"A\", \"familyName\": \"B\"}}}')
		-> 'attributes' ->> 'displayName' FROM xprov.hooks WHERE id = '$H1'")" "A B"
check "$R1: correlate_owner answers as in $DB" "$(owners "$R1")" "$src_owners"
check "$R1: without shadows, the chosen account is still twin's: the restored decision answers" \
	"$(owners "$R1" | sed -n 4p | cut -d' ' -f1,3) $(qd "$R1" "SELECT count(*) FROM xprov.shadow")" "$twin_id existing_link 0"
check "$R1: the connectors view shows the restored credentials' kind, not the token" \
	"$(qd "$R1" "SELECT auth_type || ' ' || (config ? 'auth') FROM xprov.connectors WHERE id = '$C'")" 'bearer false'
res=$(qd "$R1" "SELECT xprov.try_operation('$C', 'create', 'user',
	'{\"userName\": \"restored.one\", \"name\": {\"givenName\": \"Re\", \"familyName\": \"Stored\"}}', NULL, md5('restored')::uuid)")
check "$R1: try_operation creates a user through the restored connector, credentials and hooks" \
	"$(jq -r '[.outcome, .attributes_sent.title, (.hooks | length)] | join(" ")' <<<"$res") $(tuser restored.one title) $(tuser restored.one displayName)" \
	"completed hooked-v2 2 hooked-v2 Re Stored"
H4=$(qd "$R1" "SELECT xprov.add_hook('$T', '$C', 'user', 'before', 'function hook(ctx) { }')")
check "$R1: a hook added after the restore comes after the restored ones" \
	"$(qd "$R1" "SELECT created_seq > (SELECT max(created_seq) FROM xprov.hook WHERE id <> '$H4') FROM xprov.hook WHERE id = '$H4'")" t
qd "$R1" "SELECT xprov.enqueue(tenant_id => '$T', connector_id => '$C', identity_id => md5('grace')::uuid,
	operation_type => 'update', object_class => 'user', attributes => '{}', idempotency_key => 'pending-one')" >/dev/null
check "$R1: the queue takes work (the idempotency key is free again)" "$(qd "$R1" "SELECT pending FROM xprov.stats()")" 1

# --- twice: the source again, and the restored database dumped and restored ---------------
dump_restore "$DB" "${R1}_again" "$XPROV_CLUSTER_DIR/src2.dump"
check "${R1}_again: every configuration row identical" "$(config_md5 "${R1}_again")" "$src_config"
dump_restore "$R1" "$R2" "$XPROV_CLUSTER_DIR/r1.dump"
check "$R2 (restored from a restored database): every configuration row identical to $R1's" \
	"$(config_md5 "$R2")" "$(config_md5 "$R1")"
check "$R2: the runtime tables empty again (the restored queue's operations not carried)" \
	"$(runtime_rows "$R2")" "$(runtime_rows "$R2" | sed 's/=[0-9]*/=0/g')"
check "$R2: correlate_owner answers as in $DB" "$(owners "$R2")" "$src_owners"
res=$(qd "$R2" "SELECT xprov.try_operation('$C', 'create', 'user', '{\"userName\": \"restored.two\"}', NULL, md5('restored2')::uuid)")
check "$R2: try_operation creates a user" "$(jq -r '.outcome + " " + .attributes_sent.title' <<<"$res") $(tuser restored.two title)" \
	"completed hooked-v2 hooked-v2"
check "$DB's worker still serves $DB: a create completes" \
	"$(op=$(enq ada '{"userName": "ada@example.com"}'); wait_status "$op" completed 15)" completed

scim_stop
cluster_stop
echo "dump_restore: $failures failure(s)"
[ "$failures" -eq 0 ]
