#!/usr/bin/env bash
#
# ALTER EXTENSION xprov UPDATE from 0.1.0 to the current version, on a
# database that has been in use, with the background worker running:
#   - database "upgraded": CREATE EXTENSION xprov VERSION '0.1.0', then state
#     made through 0.1.0's own API: two tenants; noop, rest and external
#     connectors (bearer credentials in config.auth, a secret replaced with
#     set_connector_secret); operations completed by the worker against the
#     bundled REST target (test/targets/rest_server.py) and by hand
#     (dequeue/complete), one dead-lettered, one failed waiting for its retry,
#     one leased, pending ones (a disabled connector, not_before, an
#     idempotency key); hooks with versions, one disabled; an identity source
#     over an application table, rules in two tiers (one fuzzy: pg_trgm) and
#     thresholds; a correlation case resolved into decisions and one still
#     open with its operation parked; reactions, a reconciliation threshold and
#     a completed reconciliation preview with its discrepancies.  Every table
#     of the extension but the staged listing has rows;
#   - the update runs while the worker has a request in flight (the REST
#     target holds it for a few seconds);
#   - afterwards: the version is the new one; every table keeps its rows
#     (the update in flight adds its operation and result); the configuration
#     tables and the public views show the same rows in their 0.1.0 columns
#     to a superuser, and a tenant role (where the version has them: 0.2.0's
#     xprov_operator and row-level security) sees each tenant's old rows, all
#     and only those; correlate_owner answers as before; the operation in
#     flight completes once; the operations waiting at the update all finish (a
#     connector re-enabled, the parked one's case resolved, the external ones
#     completed on their old lease, retried, skipped, cancelled); new
#     operations run through the hooks; hook histories are JSON as stored by
#     the new library while 0.1.0 is installed, compact after the update, and
#     both read back as JSON; a reconciliation still runs;
#   - database "fresh": CREATE EXTENSION xprov (the default version: the base
#     script and the update scripts) after the update above, so with the
#     roles it made already in the cluster;
#   - the catalogs of both (test/process/catalog_snapshot.sql: every member
#     of the extension, their columns, constraints, indexes, triggers,
#     policies, privileges, options, comments, init privileges, extconfig,
#     the xprov_* roles) identical; first, the snapshot is shown to notice a
#     few harmless changes made in a transaction that is rolled back.
# The installed extension scripts must be this checkout's (make install):
# the test says so and fails otherwise.  On failure the server log is printed.
# Exit 0 = pass.
#
# Environment: XPROV_PORT (cluster port, default 55471),
# XPROV_UPGRADE_REST_PORT (REST target port, default 18471), XPROV_PGBIN (see
# test/lib/cluster.sh), PG_CONFIG (to find the installed scripts; default
# $XPROV_PGBIN/pg_config).

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export XPROV_PORT="${XPROV_PORT:-55471}"
REST_PORT="${XPROV_UPGRADE_REST_PORT:-18471}"
. test/lib/cluster.sh
. test/lib/check.sh
. test/lib/target.sh

OLD=0.1.0
NEW=$(sed -n "s/^default_version *= *'\(.*\)'/\1/p" xprov.control)
DB=upgraded
FRESH=fresh
SNAPSHOT=test/process/catalog_snapshot.sql
REST=http://127.0.0.1:$REST_PORT
TOKEN=upgrade-token-$RANDOM$RANDOM
T1=a1000000-0000-4000-8000-000000000001
T2=a2000000-0000-4000-8000-000000000002

qd() { psql -qAtX -v ON_ERROR_STOP=1 -d "$1" -c "$2"; }
status() { q "SELECT status FROM xprov.operations WHERE id = '$1'"; }
wait_status() { wait_for "SELECT status FROM xprov.operations WHERE id = '$1'" "$3" "$2"; }
# enq TENANT CONNECTOR KEY TYPE ATTRIBUTES [MORE ARGUMENTS]: an operation for
# identity md5(KEY); prints its id.
enq()
{
	q "SELECT xprov.enqueue(tenant_id => '$1', connector_id => '$2', identity_id => md5('$3')::uuid,
		operation_type => '$4', object_class => 'user', attributes => '$5'::jsonb ${6:+, $6})"
}
# enq_many TENANT CONNECTOR COUNT TAG: COUNT updates of subjects TAG-1..COUNT (by target_uid).
enq_many()
{
	q "SELECT count(*) FROM xprov.enqueue_batch((SELECT jsonb_agg(jsonb_build_object(
		'tenant_id', '$1', 'connector_id', '$2', 'target_uid', '$4-' || g,
		'operation_type', 'update', 'object_class', 'user', 'attributes', jsonb_build_object('n', g))
		ORDER BY g) FROM generate_series(1, $3) g))" >/dev/null
}
unfinished() { q "SELECT count(*) FROM xprov.operations WHERE status NOT IN ('completed', 'skipped', 'cancelled')"; }
rest_accounts() { curl -sf "$REST/_admin/accounts"; }
# inflight OPID: 1 while the REST target holds that operation's request unanswered.
inflight()
{
	curl -sf "$REST/_admin/requests?since=0" | python3 -c "
import json, sys
print(sum(1 for r in json.load(sys.stdin) if r['request_id'] == sys.argv[1] and r['status'] is None))" "$1"
}

# The extension's tables (space-separated names), and per table its columns
# as they are now (so that rows can be compared after an update adds columns).
member_tables()
{
	q "SELECT string_agg(c.relname, ' ' ORDER BY c.relname) FROM pg_depend d JOIN pg_class c ON c.oid = d.objid
		WHERE d.classid = 'pg_class'::regclass AND d.deptype = 'e' AND c.relkind IN ('r', 'p')
		  AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'xprov')"
}
config_tables()
{
	q "SELECT string_agg(c.relname, ' ' ORDER BY c.relname) FROM pg_extension e, unnest(e.extconfig) r
		JOIN pg_class c ON c.oid = r WHERE e.extname = 'xprov' AND c.relkind = 'r'"
}
# columns_of NAME...: lines "NAME|col, col, ..." for relations xprov.NAME
columns_of()
{
	local IFS=,
	q "SELECT c.relname || '|' || string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum)
		FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
		WHERE c.relnamespace = 'xprov'::regnamespace AND c.relname = ANY ('{$*}')
		GROUP BY c.relname"
}
# table_counts TABLES: "name=rows ..." (one query: each psql costs a connection)
table_counts()
{
	local t sql=""
	for t in $1; do
		sql+="${sql:+ UNION ALL }SELECT '$t' AS t, count(*) AS n FROM xprov.$t"
	done
	q "SELECT string_agg(t || '=' || n, ' ' ORDER BY t) FROM ($sql) c"
}
# rows_md5 NAME...: a line "NAME rows md5" for each relation xprov.NAME, of
# its rows in the columns cols[NAME], less those matching filter[NAME].
rows_md5()
{
	local r sql=""
	for r in "$@"; do
		sql+="${sql:+ UNION ALL }SELECT '$r' AS r, count(*) AS n,
			md5(coalesce(string_agg(x::text, E'\n' ORDER BY x::text), '')) AS m
			FROM (SELECT ${cols[$r]} FROM xprov.$r ${filter[$r]:+WHERE ${filter[$r]}}) x"
	done
	q "SELECT r || ' ' || n || ' ' || m FROM ($sql) s ORDER BY r"
}

# shellcheck disable=SC2034 # set and read through its name (test/lib/target.sh)
rest_pid=""
on_exit()
{
	local rc=$?
	target_stop rest_pid
	if [ "$rc" -ne 0 ] || [ "$failures" -ne 0 ]; then
		cluster_log
	fi
	cluster_stop
}
on_check_failure()
{
	q "SELECT * FROM xprov.worker_status()" || true
	q "SELECT id, operation_type, status, attempts, last_error FROM xprov.operations
		WHERE status NOT IN ('completed', 'skipped', 'cancelled') ORDER BY created_at DESC LIMIT 8" || true
	grep -E 'xprov|ERROR|FATAL|terminated' "$XPROV_SERVER_LOG" | tail -15 || true
}

# --- the installed scripts are this checkout's ------------------------------------------
pg_config_bin="${PG_CONFIG:-$XPROV_PGBIN/pg_config}"
ext_dir="$("$pg_config_bin" --sharedir)/extension"
stale=""
for f in xprov.control sql/xprov--*.sql; do
	cmp -s "$f" "$ext_dir/$(basename "$f")" || stale+=" $(basename "$f")"
done
check "the installed extension files are this checkout's ($ext_dir)" "${stale:-none differ}" "none differ"
if [ -n "$stale" ]; then
	echo "# run: make PG_CONFIG=$pg_config_bin install" >&2
	exit 1
fi
check "the update goes from $OLD to a newer version" "$([ -n "$NEW" ] && [ "$NEW" != "$OLD" ] && echo yes)" yes

cluster_start "xprov.database_name = '$DB'" "xprov.workers = 1" "xprov.retry_base = '200ms'" \
	"xprov.retry_max = '2s'" "xprov.max_attempts = 4" "xprov.http_timeout = '10s'" >/dev/null
trap on_exit EXIT
target_start rest_pid test/targets/rest_server.py "$REST_PORT" "$XPROV_CLUSTER_DIR/rest.log" --token "$TOKEN"
export PGDATABASE=$DB
psql -qAtX -d postgres -c "CREATE DATABASE $DB"

# --- version 0.1.0, in use ----------------------------------------------------------------
psql -qX -v ON_ERROR_STOP=1 >/dev/null <<SQL
CREATE EXTENSION xprov VERSION '$OLD';
CREATE EXTENSION pg_trgm;		-- fuzzy correlation items
CREATE SCHEMA app;
CREATE TABLE app.person (
	id			uuid PRIMARY KEY,
	tenant_id	uuid NOT NULL,
	email		text NOT NULL,
	first_name	text,
	last_name	text,
	extra		jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX person_name ON app.person (xprov.normalize_text(last_name));
INSERT INTO app.person
SELECT md5(k)::uuid, '$T1', e, f, l, '{}'
  FROM (VALUES ('ada', 'ada@example.com', 'Ada', 'Lovelace'),
			   ('grace', 'grace@example.com', 'Grace', 'Hopper'),
			   ('twin', 'twin@example.com', 'Twin', 'One'),
			   ('twin2', 'twin@example.com', 'Twin', 'Two'),
			   ('new1', 'new1@example.com', 'New', 'One')) v(k, e, f, l);
SQL
check "xprov $OLD is installed in $DB" "$(q "SELECT extversion FROM pg_extension WHERE extname = 'xprov'")" "$OLD"
check "the worker runs on $DB" "$(wait_for "SELECT count(*) FROM xprov.worker_status() WHERE database = '$DB'" 20 1)" 1

# tenant 1: a rest connector with bearer credentials and hooks, a noop one, an external one
HR=$(q "SELECT xprov.add_connector('$T1', 'hr', 'rest', '$REST/rest',
		'{\"auth\": {\"type\": \"bearer\", \"token\": \"$TOKEN\"}, \"timeout_ms\": 8000}')")
SINK1=$(q "SELECT xprov.add_connector('$T1', 'sink', 'noop', NULL)")
EXT=$(q "SELECT xprov.add_connector('$T1', 'ext', 'external', NULL, '{\"max_in_flight\": 4}')")
# tenant 2: a noop connector, and a rest one whose credentials are replaced
SINK2=$(q "SELECT xprov.add_connector('$T2', 'sink', 'noop', NULL)")
CRM=$(q "SELECT xprov.add_connector('$T2', 'crm', 'rest', '$REST/rest',
		'{\"auth\": {\"type\": \"header\", \"header_name\": \"X-Api-Key\", \"value\": \"wrong\"}}')")
q "SELECT xprov.set_connector_secret('$CRM', '{\"type\": \"bearer\", \"token\": \"$TOKEN\"}')" >/dev/null

H1=$(q "SELECT xprov.add_hook('$T1', '$HR', 'user', 'before', \$js\$
function hook(ctx) { var a = ctx.attributes; a.title = 'hooked-v1'; return { attributes: a }; }
\$js\$, '{\"timeout_ms\": 50, \"failure\": \"fatal\"}')")
q "SELECT xprov.update_hook('$H1', \$js\$
function hook(ctx) { var a = ctx.attributes; a.title = 'hooked-v2'; return { attributes: a }; }
\$js\$)" >/dev/null
q "SELECT xprov.add_hook('$T1', '$HR', 'user', 'after', 'function hook(ctx) { return {}; }', '{\"order\": 5, \"failure\": \"ignore\"}')" >/dev/null
H3=$(q "SELECT xprov.add_hook('$T2', NULL, NULL, 'on_error', 'function hook(ctx) { return { retry: false }; }')")
q "SELECT xprov.set_hook_enabled('$H3', false)" >/dev/null

q "SELECT xprov.set_identity_source('$T1', 'app.person', '{\"tenant_column\": \"tenant_id\",
		\"attributes_column\": \"extra\", \"columns\": {\"given\": \"first_name\", \"family\": \"last_name\"}}')" >/dev/null
q "SELECT xprov.add_correlation_rule('$HR', 'user',
		'{\"name\": \"mail\", \"items\": [{\"target\": \"emails.0.value\", \"identity\": \"email\", \"match\": \"case_insensitive\"}]}')" >/dev/null
q "SELECT xprov.add_correlation_rule('$HR', 'user',
		'{\"name\": \"name\", \"tier\": 2, \"weight\": 0.6, \"items\": [
			{\"target\": \"name.givenName\", \"identity\": \"given\", \"match\": \"normalized\"},
			{\"target\": \"name.familyName\", \"identity\": \"family\", \"match\": \"fuzzy\", \"min_score\": 0.4}]}')" >/dev/null
q "SELECT xprov.set_correlation_thresholds('$HR', definite => 0.9, candidate => 0.5)" >/dev/null
q "SELECT xprov.set_reaction('$HR', 'missing', 'create')" >/dev/null
q "SELECT xprov.set_reaction('$HR', 'orphan', 'disable')" >/dev/null
q "SELECT xprov.set_reaction('$CRM', 'mismatch', 'update')" >/dev/null
q "SELECT xprov.set_reconciliation_threshold('$HR', max_actions => 100, max_percent => 50)" >/dev/null

# the worker: creates through the hooks on the REST target, noop operations of both tenants
enq "$T1" "$HR" ada create '{"userName": "ada@example.com", "emails": [{"value": "ada@example.com"}]}' >/dev/null
enq "$T1" "$HR" grace create '{"userName": "grace@example.com", "emails": [{"value": "grace@example.com"}]}' >/dev/null
enq "$T2" "$CRM" ada2 create '{"userName": "ada2"}' >/dev/null
enq_many "$T1" "$SINK1" 40 s1
enq_many "$T2" "$SINK2" 30 s2
check "the worker completes the first operations" "$(q "SELECT xprov.wait_idle('30 s')") $(unfinished)" "t 0"
check "the before hook's version 2 shaped the REST account" \
	"$(rest_accounts | jq -r '[.[] | select(.attributes.userName == "ada@example.com") | .attributes.title] | join(" ")')" hooked-v2

# a correlation case resolved into decisions: two accounts on the target, known
# as foreign shadows, with twin's e-mail; then one left open, its create parked
foreign()
{
	q "INSERT INTO xprov.shadow (tenant_id, connector_id, object_class, lifecycle, situation, target_uid, observed, observed_at)
		VALUES ('$T1', '$HR', 'user', 'live', 'unlinked', '$1',
				jsonb_build_object('uid', '$1', 'userName', '$1', 'emails', jsonb_build_array(jsonb_build_object('value', '$2'))), now())" >/dev/null
}
foreign legacy-a TWIN@example.com
foreign legacy-b twin@Example.com
op=$(enq "$T1" "$HR" twin create '{"userName": "twin", "emails": [{"value": "twin@example.com"}]}')
check "a create matching two accounts parks" "$(wait_status "$op" parked 15)" parked
case1=$(q "SELECT id FROM xprov.correlation_cases WHERE operation_id = '$op' AND status = 'open'")
q "SELECT xprov.resolve_case('$case1', 'create_new')" >/dev/null
check "resolved create_new: the create completes" "$(wait_status "$op" completed 15)" completed
PARKED=$(enq "$T1" "$HR" twin2 create '{"userName": "twin2", "emails": [{"value": "twin@example.com"}]}')
check "another create matching them parks, and stays parked" "$(wait_status "$PARKED" parked 15)" parked

# a reconciliation preview: discrepancies, nothing changed
q "SET xprov.tenant_id = '$T1'; SELECT xprov.reconcile_preview('$HR')" >/dev/null
run=$(q "SELECT id FROM xprov.reconciliation_runs WHERE connector_id = '$HR'")
check "a reconciliation preview completes" "$(q "SET xprov.tenant_id = '$T1'; SELECT xprov.wait_run('$run', '60 seconds')")" completed

# external processing by hand: completed, dead-lettered, failed (retry in an hour), leased
for k in e1 e2 e3 e4; do
	enq "$T1" "$EXT" "$k" update "{\"k\": \"$k\"}" >/dev/null
done
check "dequeue leases the four external operations" \
	"$(q "SELECT count(*) FROM xprov.dequeue(batch => 10, lease => '30 minutes')")" 4
read -r E1 E2 E3 E4 <<<"$(q "SELECT string_agg(o.id::text, ' ' ORDER BY k.n)
	FROM unnest('{e1,e2,e3,e4}'::text[]) WITH ORDINALITY k(key, n) JOIN xprov.op o ON o.identity_id = md5(k.key)::uuid")"
q "SELECT xprov.complete('$E1', target_uid => 'ext-1', result => '{\"http_status\": 200}')" >/dev/null
q "SELECT xprov.fail('$E2', '400 userName is required', permanent => true)" >/dev/null
q "SELECT xprov.fail('$E3', '503 Service Unavailable', retry_after => '1 hour')" >/dev/null
# pending: one behind an idempotency key, one not before tomorrow, and 20 of a disabled connector
E5=$(enq "$T1" "$EXT" e5 update '{}' "idempotency_key => 'ext-pending'")
LATER=$(enq "$T1" "$SINK1" later update '{}' "not_before => now() + interval '1 day'")
q "SELECT xprov.set_connector_enabled('$SINK2', false)" >/dev/null
enq_many "$T2" "$SINK2" 20 held
check "the worker is idle with work waiting" "$(q "SELECT xprov.wait_idle('30 s')")" t
# operations by status, less the update in flight across the update (X, below)
statuses()
{
	q "SELECT string_agg(status || '=' || n, ' ' ORDER BY status) FROM (SELECT status, count(*) n
		FROM xprov.operations WHERE id <> '${X:-00000000-0000-0000-0000-000000000000}' GROUP BY 1) s"
}
before_status=$(statuses)
check "operations by status before the update" "$before_status" \
	"completed=75 dead_letter=1 failed=1 in_progress=1 parked=1 pending=22"

# What 0.1.0 holds and shows, taken while the worker is idle: rows per table;
# the configuration tables' and the public views' rows, in their 0.1.0
# columns (an update may add columns); correlate_owner's answer.
TABLES=$(member_tables)
before_counts=$(table_counts "$TABLES")
echo "# rows in $DB at $OLD: $before_counts"
check "every table of the extension has rows but the staged listing of runs" \
	"$(tr ' ' '\n' <<<"$before_counts" | grep '=0$' | paste -sd' ')" "reconciliation_item=0"
CONFIG=$(config_tables)
VIEWS="connectors hooks hook_versions correlation_rules correlation_cases correlation_decisions reactions
	reconciliation_thresholds reconciliation_runs discrepancies dead_letters operations operation_attempts"
declare -A cols filter
# (captured first: set -e does not see a failure inside < <(...))
# shellcheck disable=SC2086 # lists of names
out=$(columns_of $CONFIG $VIEWS)
while IFS='|' read -r r c; do
	cols[$r]=$c
done <<<"$out"
declare -A before_rows after_rows
# shellcheck disable=SC2086 # lists of names
out=$(rows_md5 $CONFIG $VIEWS)
while read -r r n m; do
	before_rows[$r]="$n $m"
done <<<"$out"
owner_answer="SELECT coalesce(string_agg(concat_ws(' ', identity_id, round(confidence::numeric, 3), match_type),
		' | ' ORDER BY identity_id), 'no owner')
	FROM xprov.correlate_owner('$T1', '$HR', '{\"id\": \"x\", \"emails\": [{\"value\": \"GRACE@example.com\"}],
		\"name\": {\"givenName\": \"ada\", \"familyName\": \"Lovelase\"}}'::jsonb)"
before_owner=$(q "$owner_answer")
check "correlate_owner finds grace by e-mail (tier 1)" "$(cut -d' ' -f1,3 <<<"$before_owner")" "$(q "SELECT md5('grace')::uuid") definite"
worker_before=$(q "SELECT pid FROM xprov.worker_status()")

# --- the update, with a request in flight ----------------------------------------------------
# An update of an account that exists: it adds an operation and its result, nothing else.
curl -sf -X POST -d '{"mode": "delay", "delay_ms": 4000, "count": 1, "path_prefix": "/rest/execute"}' "$REST/_admin/fault" >/dev/null
X=$(enq "$T1" "$HR" ada update '{"displayName": "Ada L."}')
check "an update is in flight at the REST target" \
	"$(wait_for "SELECT status FROM xprov.operations WHERE id = '$X'" 10 in_progress) $(inflight "$X")" "in_progress 1"
t0=$(date +%s%N)
rc=0
out=$(PGOPTIONS='-c statement_timeout=60s' psql -qAtX -v ON_ERROR_STOP=1 -c "ALTER EXTENSION xprov UPDATE" 2>&1) || rc=$?
echo "# ALTER EXTENSION xprov UPDATE took $(( ($(date +%s%N) - t0) / 1000000 )) ms; the request still in flight after it: $(inflight "$X")"
check "ALTER EXTENSION xprov UPDATE succeeds on a database in use" "$rc $out" "0 "
if [ "$rc" -ne 0 ]; then
	exit 1
fi
check "$DB is at $NEW" "$(q "SELECT extversion FROM pg_extension WHERE extname = 'xprov'")" "$NEW"
check "the operation in flight during the update completes" "$(wait_status "$X" completed 20)" completed
check "... executed once, the new attribute at the target" \
	"$(curl -sf "$REST/_admin/requests?since=0" | jq --arg x "$X" '[.[] | select(.request_id == $x)] | length') $(rest_accounts |
		jq -r '[.[] | select(.attributes.userName == "ada@example.com") | .attributes.displayName] | join(" ")')" "1 Ada L."
# (a worker may restart for an update; what matters is that nothing ran twice)
echo "# worker pid before the update $worker_before, after $(q "SELECT pid FROM xprov.worker_status()")"

# --- what was there is still there -----------------------------------------------------------
check "every table keeps its rows (op and op_result: + the update in flight)" "$(table_counts "$TABLES")" \
	"$(tr ' ' '\n' <<<"$before_counts" | awk -F= '$1 == "op" || $1 == "op_result" { $2++ } { print $1 "=" $2 }' | paste -sd' ')"
filter[operations]="id <> '$X'"
filter[operation_attempts]="operation_id <> '$X'"
# shellcheck disable=SC2086 # lists of names
out=$(rows_md5 $CONFIG $VIEWS)
while read -r r n m; do
	after_rows[$r]="$n $m"
done <<<"$out"
for r in $CONFIG $VIEWS; do
	what=view
	[[ " $CONFIG " == *" $r "* ]] && what="configuration table"
	check "$what xprov.$r: the same rows in its $OLD columns, for a superuser" \
		"${after_rows[$r]:-none}" "${before_rows[$r]}"
done
check "xprov.operations: the same statuses (but the update in flight: completed)" "$(statuses)" "$before_status"
check "xprov.stats() counts every operation" \
	"$(q "SELECT pending + in_progress + failed + dead_letter + completed + skipped + cancelled + parked FROM xprov.stats()")" \
	"$(q "SELECT count(*) FROM xprov.op")"
check "correlate_owner answers as before" "$(q "$owner_answer")" "$before_owner"

# Rows written at 0.1.0 under the new version's row-level security (from
# 0.2.0 on, tenant roles see the rows of the tenant in xprov.tenant_id): each
# tenant sees all of its own rows, and only those.
if [ "$(q "SELECT count(*) FROM pg_roles WHERE rolname = 'xprov_operator'")" = 1 ]; then
	TENANT_VIEWS="operations operation_attempts dead_letters shadows accounts connectors reconciliation_runs
		discrepancies correlation_cases correlation_decisions correlation_rules hooks"
	# tenant_counts [FILTER]: rows per view, as the role in use
	tenant_counts()
	{
		local v sql=""
		for v in $TENANT_VIEWS; do
			sql+="${sql:+, }'$v=' || (SELECT count(*) FROM xprov.$v ${1:+WHERE $1})"
		done
		printf 'SELECT concat_ws(%s, %s)' "' '" "$sql"
	}
	psql -qAtX -d postgres -c "CREATE ROLE upgrade_operator IN ROLE xprov_operator"
	for t in "$T1" "$T2"; do
		check "tenant ${t:0:2}'s old rows, all and only those, for a tenant role (xprov_operator)" \
			"$(q "SET ROLE upgrade_operator; SET xprov.tenant_id = '$t'; $(tenant_counts)")" \
			"$(q "$(tenant_counts "tenant_id = '$t'")")"
	done
	psql -qAtX -d postgres -c "DROP ROLE upgrade_operator"
fi

# --- the work waiting at the update finishes ---------------------------------------------------
q "SELECT xprov.set_connector_enabled('$SINK2', true)" >/dev/null
check "a connector re-enabled: its 20 operations complete" \
	"$(wait_for "SELECT count(*) FROM xprov.operations WHERE connector_id = '$SINK2' AND status = 'completed'" 20 50)" 50
case2=$(q "SELECT id FROM xprov.correlation_cases WHERE operation_id = '$PARKED' AND status = 'open'")
q "SET xprov.tenant_id = '$T1'; SELECT xprov.resolve_case('$case2', 'reject')" >/dev/null
check "the parked create's case rejected: skipped" "$(status "$PARKED")" skipped
q "SELECT xprov.complete('$E4', target_uid => 'ext-4')" >/dev/null
check "a lease taken before the update completes after it" "$(status "$E4")" completed
q "SELECT xprov.retry('$E2')" >/dev/null
check "the dead letter retried, and the pending external one, dequeued" \
	"$(q "SELECT string_agg(id::text, ' ' ORDER BY id) FROM xprov.dequeue(batch => 10)")" \
	"$(printf '%s\n' "$E2" "$E5" | LC_ALL=C sort | paste -sd' ')"
q "SELECT xprov.complete_batch(ARRAY['$E2', '$E5']::uuid[])" >/dev/null
q "SELECT xprov.skip('$E3', 'obsolete after the upgrade')" >/dev/null
q "SELECT xprov.cancel('$LATER')" >/dev/null
check "the idempotency key is free again" \
	"$(q "SELECT count(*) FROM xprov.idempotency WHERE key = 'ext-pending'")" 0

# --- new work ----------------------------------------------------------------------------------
enq_many "$T1" "$SINK1" 10 after
enq "$T1" "$HR" new1 create '{"userName": "new1@example.com", "emails": [{"value": "new1@example.com"}]}' >/dev/null
enq "$T2" "$CRM" new2 create '{"userName": "new2"}' >/dev/null
check "new operations complete, and nothing is left unfinished" \
	"$(q "SELECT xprov.wait_idle('30 s')") $(unfinished)" "t 0"
check "a new create ran through the hooks (version 2)" \
	"$(rest_accounts | jq -r '[.[] | select(.attributes.userName == "new1@example.com") | .attributes.title] | join(" ")')" hooked-v2
check "... and is linked" "$(q "SELECT count(*) FROM xprov.accounts WHERE identity_id = md5('new1')::uuid AND target_uid IS NOT NULL")" 1
# hook histories: JSON while 0.1.0 was installed, compact after the update; both read as JSON
hook_history_of() {
	q "SELECT string_agg(h->>'phase' || '/v' || (h->>'version') || '/' || (h->>'outcome')
	                     || CASE WHEN h->>'hook_id' = '$H1' THEN '/H1' ELSE '' END, ' ' ORDER BY x.n)
	     FROM xprov.operations o JOIN xprov.operation_attempts a ON a.operation_id = o.id,
	          jsonb_array_elements(a.hooks) WITH ORDINALITY x(h, n)
	    WHERE o.identity_id = md5('$1')::uuid AND o.operation_type = 'create'"
}
check "a history written at $OLD is stored as JSON and reads as it did" \
	"$(q "SELECT r.hooks LIKE '[%' FROM xprov.op_result r JOIN xprov.op o ON o.id = r.op_id
		WHERE o.identity_id = md5('ada')::uuid AND o.operation_type = 'create'") $(hook_history_of ada)" \
	"t before/v2/attributes/H1 after/v1/unchanged"
check "a history written at $NEW is stored compactly and reads as JSON" \
	"$(q "SELECT r.hooks ~ '^ba:2:[0-9]+:[A-Za-z0-9+/]{22} au:1:[0-9]+:[A-Za-z0-9+/]{22}$' FROM xprov.op_result r
		JOIN xprov.op o ON o.id = r.op_id WHERE o.identity_id = md5('new1')::uuid AND o.operation_type = 'create'") $(hook_history_of new1)" \
	"t before/v2/attributes/H1 after/v1/unchanged"
run=$(q "SET xprov.tenant_id = '$T1'; SELECT xprov.reconcile_preview('$HR')")
check "a reconciliation preview runs at $NEW" "$(q "SET xprov.tenant_id = '$T1'; SELECT xprov.wait_run('$run', '60 seconds')")" completed
check "no process crashed" "$(grep -cE 'terminated by signal|PANIC' "$XPROV_SERVER_LOG" || true)" 0

# --- an administrator's grants made at 0.1.0 ---------------------------------------------------
# 0.1.0 has no roles of its own: an application that is not a superuser was
# given privileges by hand.  After the update they are still the
# administrator's: pg_dump, which leaves out the privileges pg_init_privs
# records as the extension's own, dumps the same GRANTs as before.  (Its own
# database, so that the catalog comparison below sees none of this.)
LEGACY=upgraded_with_grants
GRANTEE=upgrade_legacy_app
psql -qAtX -d postgres -c "CREATE DATABASE $LEGACY" -c "CREATE ROLE $GRANTEE"
qd "$LEGACY" "CREATE EXTENSION xprov VERSION '$OLD'"
qd "$LEGACY" "GRANT USAGE ON SCHEMA xprov TO $GRANTEE;
	GRANT SELECT ON xprov.op, xprov.operations, xprov.connector_secret TO $GRANTEE;
	GRANT EXECUTE ON FUNCTION xprov.dequeue(integer, interval) TO $GRANTEE"
# What 0.1.0 took for an application to enqueue: the tables, by hand.
qd "$LEGACY" "GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA xprov TO $GRANTEE;
	GRANT USAGE ON ALL SEQUENCES IN SCHEMA xprov TO $GRANTEE"
legacy_conn=$(qd "$LEGACY" "SELECT xprov.add_connector('$T1', 'legacy', 'external', NULL)")
# This library with a database still at 0.1.0 (between make install and the
# update): no tenant model yet, so no tenant context is asked for.
check "at $OLD under this library, a role granted the tables by hand still enqueues" \
	"$(qd "$LEGACY" "SET ROLE $GRANTEE; SELECT count(*) FROM xprov.enqueue('$T1', '$legacy_conn', NULL, 'update', 'user', '{}', 'u1')" 2>&1)" 1
dumped_grants() { "$XPROV_PGBIN/pg_dump" -s -d "$LEGACY" | grep -E "^(GRANT|REVOKE) .* $GRANTEE;\$" | LC_ALL=C sort; }
grants_before=$(dumped_grants)
qd "$LEGACY" "ALTER EXTENSION xprov UPDATE"
grants_after=$(dumped_grants)
check "an administrator's grants made at $OLD: pg_dump still dumps them after the update" \
	"$(diff <(echo "$grants_before") <(echo "$grants_after") | grep '^[<>]' | paste -sd'|' || true)" ""
if [ "$grants_after" != "$grants_before" ]; then
	echo "# pg_init_privs (the privileges pg_dump takes for the extension's own) naming $GRANTEE:"
	qd "$LEGACY" "SELECT pg_describe_object(classoid, objoid, objsubid) || ': ' || initprivs::text
		FROM pg_init_privs WHERE initprivs::text LIKE '%$GRANTEE%' ORDER BY 1" | sed 's/^/#   /'
fi
psql -qAtX -d postgres -c "DROP DATABASE $LEGACY" -c "DROP ROLE $GRANTEE"

# --- the catalogs: updated = installed fresh ---------------------------------------------------
psql -qAtX -d postgres -c "CREATE DATABASE $FRESH"
rc=0
out=$(psql -qAtX -v ON_ERROR_STOP=1 -d "$FRESH" -c "CREATE EXTENSION xprov" 2>&1) || rc=$?
check "CREATE EXTENSION xprov in a second database (its roles already made)" "$rc $out" "0 "
if [ "$rc" -eq 0 ]; then
	check "$FRESH is at $NEW" "$(qd "$FRESH" "SELECT extversion FROM pg_extension WHERE extname = 'xprov'")" "$NEW"
	snap_fresh=$XPROV_CLUSTER_DIR/$FRESH.snapshot
	snap_upgraded=$XPROV_CLUSTER_DIR/$DB.snapshot
	psql -X -q -At -v ON_ERROR_STOP=1 -d "$FRESH" -f "$SNAPSHOT" >"$snap_fresh"
	# The snapshot notices changes: a few harmless ones, rolled back.
	psql -X -q -At -v ON_ERROR_STOP=1 -d "$FRESH" >"$snap_fresh.changed" <<SQL
BEGIN;
COMMENT ON TABLE xprov.connector IS 'self-check';
GRANT SELECT ON xprov.hook TO PUBLIC;
ALTER TABLE xprov.op ALTER COLUMN priority SET DEFAULT 7;
DO \$\$ BEGIN EXECUTE format('ALTER FUNCTION %s SET work_mem = ''1MB''',
	(SELECT min(p.oid::regprocedure::text) FROM pg_proc p WHERE p.pronamespace = 'xprov'::regnamespace AND p.prokind = 'f')); END \$\$;
\\i $SNAPSHOT
ROLLBACK;
SQL
	changed=$( { diff "$snap_fresh" "$snap_fresh.changed" || true; } | sed -n 's/^> \([a-z_]*\)|.*/\1/p' | LC_ALL=C sort -u | paste -sd' ' || true)
	check "the catalog snapshot sees a comment, a grant, a default and a function setting change" \
		"$changed" "column comment function functiondef relation"
	psql -X -q -At -v ON_ERROR_STOP=1 -d "$DB" -f "$SNAPSHOT" >"$snap_upgraded"
	echo "# catalog snapshot: $(wc -l <"$snap_fresh") lines; $(cut -d'|' -f1 "$snap_fresh" | uniq -c | awk '{printf "%s %s, ", $2, $1}')"
	diffs=$(diff -u --label "$FRESH (CREATE EXTENSION)" --label "$DB ($OLD + ALTER EXTENSION UPDATE)" \
		"$snap_fresh" "$snap_upgraded" || true)
	check "the catalogs of the updated and the freshly installed extension are identical" \
		"$(grep -c '^[-+][a-z]' <<<"$diffs" || true) lines differ" "0 lines differ"
	[ -z "$diffs" ] || printf '%s\n' "$diffs"
fi

echo "upgrade: $failures failure(s)"
[ "$failures" -eq 0 ]
