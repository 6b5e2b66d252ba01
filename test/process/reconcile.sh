#!/usr/bin/env bash
#
# Reconciliation end to end, through the public SQL interface (xprov.reconcile,
# reconcile_preview, wait_run, cancel_run, approve_run, set_reaction,
# set_reconciliation_threshold, xprov.reconciliation_runs, xprov.discrepancies)
# against the bundled SCIM 2.0 target (test/targets/scim_server.py) and REST
# target (test/targets/rest_server.py), executed by the xprov reconciler:
#   - every discrepancy type, made by changing the target and the identity
#     table behind xprov's back: missing (an account deleted), mismatch (an
#     attribute changed, named in differences), orphan (a stranger's account),
#     unlinked (one identity matches), disputed (two identities match),
#     collision (the matching identity has an account already), unqualified
#     (the identity row deleted); types, accounts, owners, candidates and the
#     run's statistics checked exactly;
#   - preview changes nothing (shadows, operations, correlation cases, the
#     target's users) and leaves its discrepancies planned;
#   - the mass-change threshold pauses an apply run with nothing applied;
#     cancel_run of the paused run cancels it; approve_run refuses a run that
#     is not paused, and resumes a paused one, which then applies; cancel_run
#     of a running run stops it at its next page;
#   - apply carries out the reactions: the missing account re-created, the
#     mismatch updated, the orphan disabled, the unqualified account deleted,
#     the unlinked one linked, cases opened for disputed and collision; a
#     second preview finds only what the reactions leave;
#   - the tenant context: none, or another tenant's, is refused (42501);
#   - a target failing mid-listing fails the run (the error names the page)
#     with no discrepancy at all; one transient failure is retried;
#   - xprov.reconcile_page_size is reloaded with pg_reload_conf();
#   - kill -9 of the reconciler mid-listing: the postmaster restarts its
#     processes, the run goes on from its checkpoint (no second listing from
#     the first page) and completes with the right result;
#   - a REST connector is listed through its cursor paging, and a missing and
#     an orphan account are found and repaired;
#   - a pg_cron job runs a reconciliation, and its command runs by hand too;
#   - the postmaster survives all of it.
# Exit 0 = pass.
#
# Environment: XPROV_PORT (cluster port, default 55491), XPROV_RECON_SCIM_PORT
# (SCIM target, default 18491), XPROV_RECON_REST_PORT (REST target, default
# 18492), XPROV_PGBIN (see test/lib/cluster.sh).

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export XPROV_PORT="${XPROV_PORT:-55491}"
SCIM_PORT="${XPROV_RECON_SCIM_PORT:-18491}"
REST_PORT="${XPROV_RECON_REST_PORT:-18492}"
. test/lib/cluster.sh
. test/lib/check.sh
. test/lib/target.sh

DB=xprov_recon
SCIM=http://127.0.0.1:$SCIM_PORT
REST=http://127.0.0.1:$REST_PORT
T=f0000000-0000-4000-8000-000000000001		# the SCIM connectors' tenant
T2=f0000000-0000-4000-8000-000000000002		# the REST connectors' tenant
USER_URN=urn:ietf:params:scim:schemas:core:2.0:User
started=$(date +%s)
# the interpreter itself: a version manager's python3 shim can take a second to start
PY=$(python3 -c 'import sys; print(sys.executable)')

scim_pid=""
rest_pid=""
fault() { curl -sf -X POST -d "$1" "$SCIM/_admin/fault" >/dev/null; }
# tuser USERNAME EXPR: the target's user of that userName (any case), as the
# python expression EXPR over u, or "none".
tuser()
{
	curl -sf "$SCIM/_admin/users" | "$PY" -c "
import json, sys
us = [u for u in json.load(sys.stdin) if u['userName'].lower() == sys.argv[1].lower()]
print(eval(sys.argv[2], {}, {'u': us[0]}) if us else 'none')" "$1" "$2"
}
# scim_load JSON: load a list of users onto the target, behind xprov's back.
scim_load() { curl -sf -X POST -d "$1" "$SCIM/_admin/users" >/dev/null; }
# list_gets RUN [SINCE]: the startIndex of each list page the SCIM target got
# for the run (from log entry SINCE on), with its status, in order.
list_gets()
{
	curl -sf "$SCIM/_admin/requests?since=${2:-0}" | "$PY" -c "
import json, sys
from urllib.parse import parse_qs
out = []
for r in json.load(sys.stdin):
    if r['method'] == 'GET' and (r['request_id'] or '').startswith('reconciliation-' + sys.argv[1]):
        qs = parse_qs(r['query'])
        out.append('%s/%s:%s' % (qs['startIndex'][0], qs['count'][0], r['status']))
print(' '.join(out) or 'none')" "$1"
}
scim_log_length() { curl -sf "$SCIM/_admin/requests?since=0" | "$PY" -c "import json,sys; print(len(json.load(sys.stdin)))"; }

# tq TENANT SQL: q in the tenant context TENANT (none when empty).
tq() { PGOPTIONS="${1:+-c xprov.tenant_id=$1}" q "$2"; }
# sqlstate TENANT SQL [keep]: "ok" or the SQLSTATE SQL raised in that tenant
# context; without keep, what it did is rolled back.
sqlstate() { tq "$1" "SELECT try_sql(\$q\$$2\$q\$, ${3:-false})"; }
# run_field RUN EXPR: EXPR over the run's row of xprov.reconciliation_runs (r).
run_field() { q "SELECT $2 FROM xprov.reconciliation_runs r WHERE r.id = '$1'"; }
wait_run() { q "SELECT xprov.wait_run('$1', '${2:-60} seconds')"; }
# discs RUN: the run's discrepancies as "type account owner", sorted; accounts
# and identities by the names the test gave them (tables acct and names).
discs()
{
	q "SELECT coalesce(string_agg(d.type || ' ' || coalesce(a.name, d.target_uid, '-') || ' ' || coalesce(n.name, '-'),
							  ', ' ORDER BY d.type, a.name), 'none')
		 FROM xprov.discrepancies d
		 LEFT JOIN acct a ON a.uid = d.target_uid
		 LEFT JOIN names n ON n.id = d.identity_id
		WHERE d.run_id = '$1'"
}
# disc RUN TYPE EXPR: EXPR over the run's discrepancy of that type (d).
disc() { q "SELECT $3 FROM xprov.discrepancies d WHERE d.run_id = '$1' AND d.type = '$2'"; }
# remember_accounts: name every SCIM account (userName before the @) in acct.
remember_accounts()
{
	q "INSERT INTO acct VALUES $(curl -sf "$SCIM/_admin/users" | "$PY" -c "
import json, sys
print(', '.join(\"('%s', '%s')\" % (u['id'], u['userName'].split('@')[0].lower()) for u in json.load(sys.stdin)))")
	   ON CONFLICT (uid) DO NOTHING"
}
# snapshot: what a preview must not change: shadows, operations, correlation
# cases (but those of the pg_cron job's connector, whose runs come when they
# come) and the SCIM target's users.
snapshot()
{
	echo "shadows $(q "SELECT count(*) || ':' || md5(coalesce(string_agg(s::text, '|' ORDER BY s.id), '')) FROM xprov.shadows s
			WHERE s.connector_id <> '$X'")" \
		"operations $(q "SELECT count(*) || ':' || md5(coalesce(string_agg(o.id || o.status, '|' ORDER BY o.id), '')) FROM xprov.operations o
			WHERE o.connector_id <> '$X'")" \
		"cases $(q "SELECT count(*) || ':' || md5(coalesce(string_agg(c::text, '|' ORDER BY c.id), '')) FROM xprov.correlation_cases c
			WHERE c.connector_id <> '$X'")" \
		"target $(curl -sf "$SCIM/_admin/users" | md5sum | cut -c1-32)"
}
postmaster_pid() { head -n 1 "$XPROV_PGDATA/postmaster.pid"; }
reconciler_pid() { q "SELECT pid FROM pg_stat_activity WHERE backend_type = 'xprov reconciler'"; }

on_check_failure()
{
	q "SELECT id, connector, mode, status, phase, processed, error, statistics FROM xprov.reconciliation_runs
		ORDER BY created_at DESC LIMIT 4" || true
	q "SELECT run_id, type, target_uid, identity_id, action, status, operation_status FROM xprov.discrepancies
		ORDER BY id DESC LIMIT 10" || true
	q "SELECT id, operation_type, status, last_error FROM xprov.operations WHERE status <> 'completed' LIMIT 8" || true
	grep -E 'xprov|ERROR|FATAL|terminated' "$XPROV_SERVER_LOG" | tail -15 || true
}

# pg_cron in the test database, its jobs run by background workers (the
# cluster listens on no TCP port).  Until the database exists, pg_cron's
# launcher fails to start and is restarted by the postmaster.
cluster_start "xprov.database_name = '$DB'" "cron.database_name = '$DB'" "cron.use_background_workers = on" \
	"xprov.retry_base = '200ms'" "xprov.retry_max = '2s'" "xprov.max_attempts = 4" \
	"xprov.http_timeout = '10s'" >/dev/null
export PGDATABASE=$DB
trap 'target_stop scim_pid; target_stop rest_pid; cluster_stop' EXIT
target_start scim_pid test/targets/scim_server.py "$SCIM_PORT" "$XPROV_CLUSTER_DIR/scim.log"
target_start rest_pid test/targets/rest_server.py "$REST_PORT" "$XPROV_CLUSTER_DIR/rest.log"
psql -qAtX -d postgres -c "CREATE DATABASE $DB"
q "CREATE EXTENSION xprov"
q "CREATE EXTENSION pg_cron"
create_try_sql
psql -qAtX -v ON_ERROR_STOP=1 -v t="$T" <<'SQL' >/dev/null
-- the test's names for accounts (by target uid) and identities
CREATE TABLE acct (uid text PRIMARY KEY, name text NOT NULL);
CREATE TABLE names (id uuid PRIMARY KEY, name text NOT NULL);
INSERT INTO names SELECT md5(n)::uuid, n
  FROM unnest(ARRAY['ann', 'bob', 'cid', 'dan', 'eve', 'fay', 'gus1', 'gus2']) n;
-- the identity source: ann..eve get accounts; fay has none; gus1 and gus2
-- share an email
CREATE TABLE people (id uuid PRIMARY KEY, tenant_id uuid NOT NULL, email text NOT NULL);
INSERT INTO people SELECT id, :'t', CASE WHEN name LIKE 'gus%' THEN 'gus' ELSE name END || '@example.com'
  FROM names;
SELECT xprov.set_identity_source(:'t', 'people'::regclass, '{"tenant_column": "tenant_id"}');
SQL
check "a worker and the reconciler run on $DB" \
	"$(wait_for "SELECT count(*) FROM pg_stat_activity WHERE datname = '$DB'
		AND backend_type IN ('xprov worker', 'xprov reconciler')" 20 2)" 2
postmaster0=$(postmaster_pid)

C=$(q "SELECT xprov.add_connector('$T', 'scim', 'scim2', '$SCIM/scim/v2', '{\"timeout_ms\": 8000}')")
K=$(q "SELECT xprov.add_connector('$T', 'scim-bulk', 'scim2', '$SCIM/scim/v2', '{\"timeout_ms\": 8000}')")
R=$(q "SELECT xprov.add_connector('$T2', 'rest', 'rest', '$REST/rest', '{}')")
X=$(q "SELECT xprov.add_connector('$T2', 'rest-nightly', 'rest', '$REST/rest', '{}')")
N=$(q "SELECT xprov.add_connector('$T', 'noop', 'noop', NULL, '{}')")
q "SELECT xprov.add_correlation_rule('$C', 'user',
	'{\"name\": \"userName is the email\", \"items\": [{\"target\": \"userName\", \"identity\": \"email\", \"match\": \"case_insensitive\"}]}')" >/dev/null
q "SELECT xprov.add_correlation_rule('$C', 'user',
	'{\"name\": \"first email\", \"items\": [{\"target\": \"emails.0.value\", \"identity\": \"email\", \"match\": \"case_insensitive\"}]}')" >/dev/null

# --- pg_cron: scheduled first, checked at the end (minute granularity) -------
# on its own connector, so that its runs touch nothing the other checks look at
cron_command="SET xprov.tenant_id = '$T2'; SELECT xprov.reconcile('$X')"
cron_job=$(q "SELECT cron.schedule('xprov-nightly', '* * * * *', \$c\$$cron_command\$c\$)")
cron_scheduled=$(date +%s)

# --- provisioning through the worker -------------------------------------------
q "SELECT count(*) FROM xprov.enqueue_batch((SELECT jsonb_agg(jsonb_build_object(
	'tenant_id', '$T', 'connector_id', '$C', 'identity_id', md5(n)::uuid, 'operation_type', 'create',
	'object_class', 'user', 'attributes', jsonb_build_object('schemas', jsonb_build_array('$USER_URN'),
	'userName', n || '@example.com', 'displayName', initcap(n)))) FROM unnest(ARRAY['ann', 'bob', 'cid', 'dan', 'eve']) n))" >/dev/null
check "five accounts provisioned by the worker" \
	"$(q "SELECT xprov.wait_idle('30 seconds')") $(q "SELECT count(*) FROM xprov.operations WHERE status = 'completed'")" "t 5"
check "five live linked shadows" \
	"$(q "SELECT count(*) FROM xprov.shadows WHERE connector_id = '$C' AND lifecycle = 'live' AND situation = 'linked'")" 5
remember_accounts

# --- the tenant context ------------------------------------------------------------
check "reconcile, reconcile_preview without a tenant context: 42501" \
	"$(sqlstate "" "SELECT xprov.reconcile('$C')") $(sqlstate "" "SELECT xprov.reconcile_preview('$C')")" "42501 42501"
check "its message says there is no tenant context" \
	"$(q "DO \$\$BEGIN PERFORM xprov.reconcile('$C'); EXCEPTION WHEN insufficient_privilege THEN RAISE NOTICE '%', SQLERRM; END\$\$" 2>&1)" \
	"NOTICE:  no tenant context: xprov.tenant_id is not set"
check "reconcile in another tenant's context (either way round): 42501" \
	"$(sqlstate "$T2" "SELECT xprov.reconcile('$C')") $(sqlstate "$T" "SELECT xprov.reconcile_preview('$R')")" "42501 42501"
check "an empty tenant context: 42501" \
	"$(PGOPTIONS="-c xprov.tenant_id=" q "SELECT try_sql('SELECT xprov.reconcile(''$C'')', false)")" 42501
check "a malformed one is refused when the session starts" \
	"$(PGOPTIONS="-c xprov.tenant_id=not-a-uuid" psql -qAtX -c "SELECT 1" 2>&1 | grep -c "xprov.tenant_id must be a UUID or empty")" 1
check "in the connector's tenant context: ok" "$(sqlstate "$T" "SELECT xprov.reconcile_preview('$C')")" ok
check "a noop connector cannot be reconciled: 0A000; an unknown mode: 22023" \
	"$(sqlstate "$T" "SELECT xprov.reconcile('$N')") $(sqlstate "$T" "SELECT xprov.reconcile('$C', 'user', 'fix')")" "0A000 22023"
check "set_reaction refuses an action that does not fit: 22023" \
	"$(sqlstate "" "SELECT xprov.set_reaction('$C', 'disputed', 'delete')") $(sqlstate "" "SELECT xprov.set_reaction('$C', 'orphan', 'link')")" \
	"22023 22023"
check "no run was left behind by any of that" "$(q "SELECT count(*) FROM xprov.reconciliation_runs WHERE connector_id <> '$X'")" 0

# --- every discrepancy, behind xprov's back ------------------------------------------
ann_uid=$(tuser ann@example.com "u['id']")
cid_uid=$(tuser cid@example.com "u['id']")
check "ann's account deleted on the target" \
	"$(curl -s -o /dev/null -w '%{http_code}' -X DELETE "$SCIM/scim/v2/Users/$ann_uid")" 204
check "cid's displayName changed on the target" \
	"$(curl -s -o /dev/null -w '%{http_code}' -X PATCH -H 'Content-Type: application/scim+json' \
		-d '{"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{"op": "replace", "path": "displayName", "value": "Cid Changed"}]}' \
		"$SCIM/scim/v2/Users/$cid_uid")" 200
scim_load '[{"userName": "stranger@example.org", "displayName": "Nobody Knows"},
			{"userName": "fay@example.com"},
			{"userName": "gus@example.com"},
			{"userName": "robert.b@example.net", "emails": [{"value": "BOB@example.com"}]}]'
q "DELETE FROM people WHERE id = md5('dan')::uuid"
remember_accounts
q "SELECT xprov.set_reaction('$C', t, a) FROM (VALUES ('missing', 'create'), ('mismatch', 'update'),
	('orphan', 'disable'), ('unlinked', 'link'), ('unqualified', 'delete'), ('collision', 'report')) v(t, a)" >/dev/null
check "xprov.reactions shows the reactions, disputed by default" \
	"$(q "SELECT string_agg(discrepancy_type || '=' || action || CASE WHEN is_default THEN '*' ELSE '' END, ' ' ORDER BY discrepancy_type)
		FROM xprov.reactions WHERE connector_id = '$C'")" \
	"collision=report disputed=report* mismatch=update missing=create orphan=disable unlinked=link unqualified=delete"

# --- preview: every type, and nothing changed -------------------------------------------
before=$(snapshot)
log0=$(scim_log_length)
run=$(tq "$T" "SELECT xprov.reconcile_preview('$C')")
check "preview: the run completes" "$(wait_run "$run")" completed
check "preview: one discrepancy of each type, on the right accounts and owners" "$(discs "$run")" \
	"collision robert.b bob, disputed gus -, mismatch cid cid, missing ann ann, orphan stranger -, unlinked fay fay, unqualified dan dan"
check "preview: mismatch names the attribute that differs, expected and actual" \
	"$(disc "$run" mismatch "differences::text")" '{"displayName": {"actual": "Cid Changed", "expected": "Cid"}}'
check "preview: candidates: both gus for disputed, bob for collision, fay for unlinked" \
	"$(q "SELECT d.type || ':' || string_agg(n.name || '/' || (e ->> 'confidence'), ',' ORDER BY n.name)
		FROM xprov.discrepancies d CROSS JOIN jsonb_array_elements(d.candidates) e JOIN names n ON n.id = (e ->> 'identity_id')::uuid
		WHERE d.run_id = '$run' GROUP BY d.type ORDER BY d.type" | paste -sd' ')" \
	"collision:bob/1 disputed:gus1/1,gus2/1 unlinked:fay/1"
check "preview: the listed accounts carry their attributes, the missing one none" \
	"$(disc "$run" orphan "attributes ->> 'displayName'") $(disc "$run" missing "coalesce(attributes::text, 'none')")" \
	"Nobody Knows none"
check "preview: every discrepancy planned, with its reaction, no operation, no case" \
	"$(q "SELECT string_agg(type || '=' || action, ' ' ORDER BY type) || ' ' || bool_and(status = 'planned')
		|| ' ' || count(operation_id) || ' ' || count(case_id) FROM xprov.discrepancies WHERE run_id = '$run'")" \
	"collision=report disputed=report mismatch=update missing=create orphan=disable unlinked=link unqualified=delete true 0 0"
check "preview: the run's statistics" \
	"$(run_field "$run" "r.mode || ' ' || r.phase || ' ' || r.processed || '/' || r.total || ' ' || (r.statistics ->> 'accounts_total')
		|| ' ' || (r.statistics ->> 'accounts_processed') || ' ' || (r.statistics ->> 'pages') || ' ' || (r.statistics ->> 'listing_passes')
		|| ' ' || (r.statistics ->> 'restarts') || ' ' || (r.statistics ->> 'shadows_compared') || ' ' || (r.statistics ->> 'shadows_busy')
		|| ' ' || (r.statistics ->> 'paging_slipped') || ' ' || (r.error IS NULL)")" \
	"preview finalization 8/8 8 8 1 1 0 5 0 false true"
check "preview: discrepancy counts and planned actions in the statistics" \
	"$(run_field "$run" "(r.statistics -> 'discrepancies')::text || ' ' || (r.statistics -> 'actions_planned')::text")" \
	'{"orphan": 1, "missing": 1, "disputed": 1, "mismatch": 1, "unlinked": 1, "collision": 1, "unqualified": 1} {"link": 1, "create": 1, "delete": 1, "report": 2, "update": 1, "disable": 1}'
check "preview: timings recorded" \
	"$(run_field "$run" "(r.statistics ->> 'duration_ms')::float >= 0 AND (r.statistics ->> 'listing_ms')::float >= 0
		AND (r.statistics ->> 'diff_ms')::float >= 0 AND r.started_at IS NOT NULL AND r.finished_at >= r.started_at")" t
check "preview: one list page, startIndex 1, count 1000 (the default page size)" "$(list_gets "$run" "$log0")" "1/1000:200"
check "preview: shadows, operations, correlation cases and the target unchanged" "$(snapshot)" "$before"

# --- the threshold pauses; cancel and approve -------------------------------------------
q "SELECT xprov.set_reconciliation_threshold('$C', 2)" >/dev/null
check "xprov.reconciliation_thresholds: 2 actions, no percentage; the default elsewhere" \
	"$(q "SELECT coalesce(max_actions::text, '-') || ' ' || coalesce(max_percent::text, '-') FROM xprov.reconciliation_thresholds
		WHERE connector_id IN ('$C', '$K') ORDER BY connector_id = '$C' DESC" | paste -sd' ')" "2 - 1000 50"
run_p=$(tq "$T" "SELECT xprov.reconcile('$C')")
check "threshold: the apply run pauses" "$(wait_run "$run_p")" paused
check "threshold: paused_for says 5 actions planned over 9 accounts, limit 2" \
	"$(run_field "$run_p" "(r.statistics #>> '{paused_for,actions_planned}') || ' ' || (r.statistics #>> '{paused_for,accounts}')
		|| ' ' || (r.statistics #>> '{paused_for,max_actions}') || ' ' || r.phase")" "5 9 2 reactions"
check "threshold: nothing applied (no shadow, operation or case changed, target untouched), all planned" \
	"$(snapshot) $(q "SELECT bool_and(status = 'planned') || ' ' || count(operation_id) FROM xprov.discrepancies WHERE run_id = '$run_p'")" \
	"$before true 0"
check "a paused run blocks another one of the connector: 55006" "$(sqlstate "$T" "SELECT xprov.reconcile_preview('$C')")" 55006
check "approve_run, cancel_run without the tenant context: 42501" \
	"$(sqlstate "" "SELECT xprov.approve_run('$run_p')") $(sqlstate "$T2" "SELECT xprov.cancel_run('$run_p')")" "42501 42501"
check "approve_run of a run that is not paused (the completed preview): 55000" \
	"$(sqlstate "$T" "SELECT xprov.approve_run('$run')")" 55000
check "cancel_run of the paused run" "$(sqlstate "$T" "SELECT xprov.cancel_run('$run_p')" true)" ok
check "cancelled: status, its discrepancies cancelled, nothing applied" \
	"$(run_field "$run_p" "r.status || ' ' || (r.approved_at IS NULL)")
$(q "SELECT string_agg(DISTINCT status, ',') FROM xprov.discrepancies WHERE run_id = '$run_p'") $(snapshot)" \
	"cancelled true
cancelled $before"
check "cancel_run, approve_run of the cancelled run: 55000" \
	"$(sqlstate "$T" "SELECT xprov.cancel_run('$run_p')") $(sqlstate "$T" "SELECT xprov.approve_run('$run_p')")" "55000 55000"

# --- apply: the reactions repair the target ---------------------------------------------
q "SELECT xprov.set_reconciliation_threshold('$C', 100, 100)" >/dev/null
run_a=$(tq "$T" "SELECT xprov.reconcile('$C')")
check "apply: the run completes without pausing" "$(wait_run "$run_a")" completed
check "apply: the same discrepancies as the preview" "$(discs "$run_a")" "$(discs "$run")"
check "apply: actions taken" "$(run_field "$run_a" "(r.statistics -> 'actions_taken')::text || ' ' || (r.statistics ? 'paused_for')")" \
	'{"link": 1, "create": 1, "delete": 1, "update": 1, "disable": 1} false'
check "apply: the operations run" "$(q "SELECT xprov.wait_idle('30 seconds')")" t
check "apply: target changes went through the queue, each completed, keyed by run and discrepancy" \
	"$(q "SELECT string_agg(d.type || ':' || o.operation_type || ':' || o.status || ':'
			|| (o.idempotency_key = 'reconciliation:' || d.run_id || ':' || d.id), ' ' ORDER BY d.type)
		FROM xprov.discrepancies d JOIN xprov.operations o ON o.id = d.operation_id WHERE d.run_id = '$run_a'")" \
	"mismatch:update:completed:true missing:create:completed:true orphan:disable:completed:true unqualified:delete:completed:true"
check "apply: discrepancy statuses: applied, reported for report" \
	"$(q "SELECT string_agg(type || '=' || status, ' ' ORDER BY type) FROM xprov.discrepancies WHERE run_id = '$run_a'")" \
	"collision=reported disputed=reported mismatch=applied missing=applied orphan=applied unlinked=applied unqualified=applied"
ann_uid2=$(tuser ann@example.com "u['id']")
check "apply: missing ann re-created on the target (a new account, as provisioned)" \
	"$(tuser ann@example.com "u['displayName']") $([ "$ann_uid2" != "$ann_uid" ] && echo new)" "Ann new"
check "apply: mismatch cid updated back" "$(tuser cid@example.com "u['displayName']")" Cid
check "apply: orphan disabled, unqualified dan deleted" \
	"$(tuser stranger@example.org "u.get('active')") $(tuser dan@example.com "u['id']")" "False none"
check "apply: the disputed and the colliding accounts untouched" \
	"$(tuser gus@example.com "u['meta']['version']") $(tuser robert.b@example.net "u['meta']['version']")" 'W/"1" W/"1"'
remember_accounts
check "apply: ann's old shadow a tombstone, the new one live and linked with the new account" \
	"$(q "SELECT string_agg(a.name || ':' || s.lifecycle || ':' || s.situation, ' ' ORDER BY s.created_at)
		FROM xprov.shadows s JOIN acct a ON a.uid = s.target_uid
		WHERE s.connector_id = '$C' AND s.identity_id = md5('ann')::uuid")" "ann:tombstone:deleted ann:live:linked"
check "apply: fay's account linked to fay, expected what the target has" \
	"$(q "SELECT s.lifecycle || ' ' || s.situation || ' ' || (s.identity_id = md5('fay')::uuid) || ' ' || (s.expected ->> 'userName')
		FROM xprov.shadows s WHERE s.target_uid = '$(tuser fay@example.com "u['id']")'")" "live linked true fay@example.com"
check "apply: dan's shadow a tombstone" \
	"$(q "SELECT string_agg(s.lifecycle, ',') FROM xprov.shadows s WHERE s.identity_id = md5('dan')::uuid")" tombstone
check "apply: stranger, gus and robert.b have unowned shadows: unmatched, disputed, collision" \
	"$(q "SELECT string_agg(a.name || ':' || s.situation || ':' || coalesce(s.identity_id::text, 'nobody'), ' ' ORDER BY a.name)
		FROM xprov.shadows s JOIN acct a ON a.uid = s.target_uid
		WHERE s.connector_id = '$C' AND a.name IN ('stranger', 'gus', 'robert.b')")" \
	"gus:disputed:nobody robert.b:collision:nobody stranger:unmatched:nobody"
check "apply: a correlation case each for gus (disputed, both gus) and robert.b (collision, bob)" \
	"$(q "SELECT string_agg(a.name || ':' || c.situation || ':' || c.status || ':' || c.origin || ':'
			|| (SELECT string_agg(n.name, ',' ORDER BY n.name) FROM jsonb_array_elements(c.candidates) e
				  JOIN names n ON n.id = (e ->> 'identity_id')::uuid), ' ' ORDER BY a.name)
		FROM xprov.correlation_cases c JOIN acct a ON a.uid = c.target_uid WHERE c.connector_id = '$C'")" \
	"gus:disputed:open:reconciliation:gus1,gus2 robert.b:collision:open:reconciliation:bob"
check "apply: the discrepancies name their cases" \
	"$(q "SELECT count(*) FROM xprov.discrepancies d JOIN xprov.correlation_cases c ON c.id = d.case_id
		WHERE d.run_id = '$run_a' AND c.target_uid = d.target_uid")" 2
check "approve_run of the completed apply run: 55000" "$(sqlstate "$T" "SELECT xprov.approve_run('$run_a')")" 55000

run2=$(tq "$T" "SELECT xprov.reconcile_preview('$C')")
check "a second preview completes" "$(wait_run "$run2")" completed
check "it finds only what the reactions leave: the disabled orphan, the disputed and the colliding account" \
	"$(discs "$run2")" "collision robert.b bob, disputed gus -, orphan stranger -"
check "it opens no second case" "$(q "SELECT count(*) FROM xprov.correlation_cases WHERE connector_id = '$C'")" 2

# --- approve_run resumes a paused run ---------------------------------------------
curl -sf -X PATCH -H 'Content-Type: application/scim+json' \
	-d '{"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{"op": "replace", "path": "displayName", "value": "Evil Eve"}]}' \
	"$SCIM/scim/v2/Users/$(tuser eve@example.com "u['id']")" >/dev/null
q "SELECT xprov.set_reconciliation_threshold('$C', 0)" >/dev/null
ops0=$(q "SELECT count(*) FROM xprov.operations")
run_b=$(tq "$T" "SELECT xprov.reconcile('$C')")
check "threshold 0: the apply run pauses, nothing queued" \
	"$(wait_run "$run_b") $(run_field "$run_b" "r.statistics #>> '{paused_for,actions_planned}'") $(q "SELECT count(*) FROM xprov.operations")" \
	"paused 1 $ops0"
check "approve_run of the paused run" "$(sqlstate "$T" "SELECT xprov.approve_run('$run_b')" true)" ok
check "approved: the run completes, approved_by and approved_at set" \
	"$(wait_run "$run_b") $(run_field "$run_b" "r.approved_by || ' ' || (r.approved_at IS NOT NULL)")" "completed postgres true"
check "approved: eve's mismatch updated on the target; the orphan, disabled already, only reported" \
	"$(q "SELECT xprov.wait_idle('30 seconds')") $(tuser eve@example.com "u['displayName']") \
$(q "SELECT string_agg(d.type || ':' || d.action || ':' || d.status || ':' || coalesce(d.operation_status, '-'), ' ' ORDER BY d.type)
		FROM xprov.discrepancies d WHERE d.run_id = '$run_b'")" \
	"t Eve collision:report:reported:- disputed:report:reported:- mismatch:update:applied:completed orphan:report:reported:-"
q "SELECT xprov.set_reconciliation_threshold('$C', 100, 100)" >/dev/null

# --- the page size is reloaded; a target failing mid-listing ------------------------------
q "ALTER SYSTEM SET xprov.reconcile_page_size = 5" >/dev/null
q "SELECT pg_reload_conf()" >/dev/null
check "xprov.reconcile_page_size reloaded" "$(wait_for "SHOW xprov.reconcile_page_size" 10 5)" 5
sleep 0.3						# the reconciler takes the SIGHUP at its next step
ops0=$(q "SELECT count(*) FROM xprov.operations")
shadows0=$(snapshot | cut -d' ' -f1-2)
log0=$(scim_log_length)
# the first list page is served (a no-op delay), every later GET fails
fault '{"mode": "delay", "delay_ms": 1, "count": 1, "method": "GET", "path_prefix": "/scim/v2/Users"}'
fault '{"mode": "500", "count": -1, "method": "GET", "path_prefix": "/scim/v2/Users"}'
run_f=$(tq "$T" "SELECT xprov.reconcile('$C')")
check "failing target: the apply run fails" "$(wait_run "$run_f")" failed
fault '{"mode": "clear"}'
check "failing target: the error names the page, the attempts and the HTTP status" \
	"$(run_field "$run_f" "r.error LIKE 'listing the target failed at page 6 after 4 attempts: GET $SCIM/scim/v2/Users?startIndex=6&count=5: HTTP 500%'")" t
check "failing target: page 1 once, page 6 four times, 5 accounts a page" \
	"$(list_gets "$run_f" "$log0")" "1/5:200 6/5:500 6/5:500 6/5:500 6/5:500"
check "failing target: no discrepancy recorded (no false missing), no diff counts" \
	"$(q "SELECT count(*) FROM xprov.discrepancies WHERE run_id = '$run_f'") $(run_field "$run_f" "r.phase || ' ' || (r.statistics ? 'discrepancies')")" \
	"0 listing false"
check "failing target: nothing queued, no shadow changed" \
	"$(q "SELECT count(*) FROM xprov.operations") $(snapshot | cut -d' ' -f1-2)" "$ops0 $shadows0"

log0=$(scim_log_length)
fault '{"mode": "500", "count": 1, "method": "GET", "path_prefix": "/scim/v2/Users"}'
run_t=$(tq "$T" "SELECT xprov.reconcile_preview('$C')")
check "one transient failure: the run completes" "$(wait_run "$run_t")" completed
check "one transient failure: the first page was tried again" "$(list_gets "$run_t" "$log0")" "1/5:500 1/5:200 6/5:200"
check "one transient failure: the listing is whole (8 accounts, 2 pages), the result the same" \
	"$(run_field "$run_t" "(r.statistics ->> 'accounts_total') || ' ' || (r.statistics ->> 'pages')") $(discs "$run_t")" \
	"8 2 collision robert.b bob, disputed gus -, orphan stranger -"

# --- the REST connector: cursor paging, missing and orphan ---------------------------------
q "SELECT count(*) FROM xprov.enqueue_batch((SELECT jsonb_agg(jsonb_build_object(
	'tenant_id', '$T2', 'connector_id', '$R', 'identity_id', md5('r' || g)::uuid, 'operation_type', 'create',
	'object_class', 'user', 'attributes', jsonb_build_object('userName', 'r' || g))) FROM generate_series(1, 12) g))" >/dev/null
check "REST: twelve accounts provisioned" \
	"$(q "SELECT xprov.wait_idle('30 seconds')") $(q "SELECT count(*) FROM xprov.shadows WHERE connector_id = '$R' AND lifecycle = 'live'")" "t 12"
r3_uid=$(q "SELECT target_uid FROM xprov.shadows WHERE connector_id = '$R' AND identity_id = md5('r3')::uuid")
opid=$(cat /proc/sys/kernel/random/uuid)
curl -sf -o /dev/null -X POST -H 'Content-Type: application/json' -H "X-Request-Id: $opid" \
	-d "{\"protocol\": 1, \"operation_id\": \"$opid\", \"type\": \"delete\", \"object_class\": \"user\",
		 \"uid\": \"$r3_uid\", \"identity_id\": null, \"attributes\": {}, \"attempt\": 1}" "$REST/rest/execute"
check "REST: r3's account deleted on the target" \
	"$(curl -sf "$REST/_admin/accounts" | "$PY" -c "import json,sys; print(sum(a['uid'] == sys.argv[1] for a in json.load(sys.stdin)))" "$r3_uid")" 0
curl -sf -X POST -d '[{"uid": "foreign-1", "attributes": {"userName": "intruder"}}]' "$REST/_admin/accounts" >/dev/null
rlog0=$(curl -sf "$REST/_admin/requests?since=0" | "$PY" -c "import json,sys; print(len(json.load(sys.stdin)))")
run_r=$(tq "$T2" "SELECT xprov.reconcile_preview('$R')")
check "REST: the preview completes" "$(wait_run "$run_r")" completed
check "REST: r3 missing, the foreign account orphan" \
	"$(q "SELECT string_agg(d.type || ' ' || d.target_uid || ' ' || coalesce((d.identity_id = md5('r3')::uuid)::text, '-'), ', ' ORDER BY d.type)
		FROM xprov.discrepancies d WHERE d.run_id = '$run_r'")" "missing $r3_uid true, orphan foreign-1 -"
check "REST: 12 accounts in 3 pages" \
	"$(run_field "$run_r" "(r.statistics ->> 'accounts_total') || ' ' || (r.statistics ->> 'pages')")" "12 3"
check "REST: 3 list requests, limit 5, the first without a cursor, then the (increasing) cursors the target gave" \
	"$(curl -sf "$REST/_admin/requests?since=$rlog0" | "$PY" -c "
import json, sys
from urllib.parse import parse_qs
out = []
for r in json.load(sys.stdin):
    if r['path'] == '/rest/list' and (r['request_id'] or '').startswith('reconciliation-' + sys.argv[1]):
        qs = parse_qs(r['query'])
        out.append((qs['object_class'][0], qs['limit'][0], qs.get('cursor', [None])[0]))
cursors = [c for _, _, c in out]
print(len(out), ' '.join(sorted({'%s/%s' % (o, l) for o, l, _ in out})), cursors[0] is None,
      all(c is not None and c.isdigit() for c in cursors[1:]) and cursors[1:] == sorted(cursors[1:], key=int))" "$run_r")" \
	"3 user/5 True True"
q "SELECT xprov.set_reaction('$R', 'missing', 'create'), xprov.set_reaction('$R', 'orphan', 'delete')" >/dev/null
run_ra=$(tq "$T2" "SELECT xprov.reconcile('$R')")
check "REST: apply completes, its operations too" "$(wait_run "$run_ra") $(q "SELECT xprov.wait_idle('30 seconds')")" "completed t"
check "REST: r3 has an account again, the foreign one is gone" \
	"$(curl -sf "$REST/_admin/accounts" | "$PY" -c "
import json, sys
accs = json.load(sys.stdin)
print(sum(a['attributes'].get('userName') == 'r3' for a in accs), sum(a['uid'] == 'foreign-1' for a in accs))")" "1 0"

# --- kill -9 of the reconciler mid-listing ----------------------------------------------
scim_load "$("$PY" -c "import json; print(json.dumps([{'userName': 'bulk%02d@example.org' % i} for i in range(60)]))")"
users=$(curl -sf "$SCIM/_admin/users" | "$PY" -c "import json,sys; print(len(json.load(sys.stdin)))")
pid0=$(reconciler_pid)
check "kill: the reconciler is a process of its own, in $DB" \
	"$(q "SELECT application_name || ' ' || datname FROM pg_stat_activity WHERE pid = $pid0")" "xprov reconciler $DB"
# 14 pages of 5 accounts, 400 ms each
fault '{"mode": "delay", "delay_ms": 400, "count": -1, "method": "GET", "path_prefix": "/scim/v2/Users"}'
run_k=$(tq "$T" "SELECT xprov.reconcile_preview('$K')")
check "kill: the listing is under way (3 pages staged)" \
	"$(wait_for "SELECT processed >= 15 FROM xprov.reconciliation_runs WHERE id = '$run_k'" 20 t)" t
read -r staged at_kill <<<"$(run_field "$run_k" "r.processed || ' ' || r.status || '/' || r.phase")"
mark=$(scim_log_length)
kill -9 "$pid0"
check "kill: killed mid-listing (running, listing, $staged of $users accounts staged)" \
	"$at_kill $((staged < users))" "running/listing 1"
sleep 1
check "kill: the run completes after the restart" \
	"$(wait_for "SELECT status FROM xprov.reconciliation_runs WHERE id = '$run_k'" 60 completed)" completed
check "kill: a new reconciler runs" "$(q "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'xprov reconciler' AND pid <> $pid0")" 1
check "kill: the run counts the restart" "$(run_field "$run_k" "r.statistics ->> 'restarts'")" 1
check "kill: the first page was fetched once; after the kill, nothing before the checkpoint again" \
	"$(list_gets "$run_k" | tr ' ' '\n' | grep -c '^1/' || true) $(list_gets "$run_k" "$mark" | "$PY" -c "
import sys
print(min(int(x.split('/')[0]) for x in sys.stdin.read().split()) > int(sys.argv[1]))" "$staged")" "1 True"
check "kill: every account listed once and found an orphan (no owner on this connector)" \
	"$(run_field "$run_k" "(r.statistics ->> 'accounts_total') || ' ' || (r.statistics -> 'discrepancies')::text")
$(q "SELECT count(DISTINCT target_uid) FROM xprov.discrepancies WHERE run_id = '$run_k'")" \
	"$users {\"orphan\": $users}
$users"
check "kill: the run's pages add up to the listing" "$(run_field "$run_k" "r.statistics ->> 'pages'")" \
	"$(( (users + 4) / 5 ))"

run_c=$(tq "$T" "SELECT xprov.reconcile_preview('$K')")
check "cancel_run of a running run: it stops at its next page, cancelled, without discrepancies" \
	"$(wait_for "SELECT processed >= 5 FROM xprov.reconciliation_runs WHERE id = '$run_c'" 20 t) \
$(sqlstate "$T" "SELECT xprov.cancel_run('$run_c')" true) $(wait_run "$run_c") \
$(run_field "$run_c" "r.phase || ' ' || r.cancel_requested") $(q "SELECT count(*) FROM xprov.discrepancies WHERE run_id = '$run_c'")" \
	"t ok cancelled listing true 0"
fault '{"mode": "clear"}'
q "ALTER SYSTEM RESET xprov.reconcile_page_size" >/dev/null
q "SELECT pg_reload_conf()" >/dev/null

# --- pg_cron -----------------------------------------------------------------------------
# cron_ran SECONDS_AFTER_SCHEDULING: wait until then for a successful run of the job.
cron_ran()
{
	local wait_s=$(( $1 - ($(date +%s) - cron_scheduled) ))

	[ "$wait_s" -lt 1 ] && wait_s=1
	wait_for "SELECT count(*) > 0 FROM cron.job_run_details WHERE jobid = $cron_job AND status = 'succeeded'" "$wait_s" t
}
cron_ok=$(cron_ran 75)
if [ "$cron_ok" != t ]; then
	# the first minute's run can fall into the crash-restart of the kill -9
	echo "# pg_cron: no successful run in the first minute: $(q "SELECT coalesce(string_agg(status, ','), 'none')
		FROM cron.job_run_details WHERE jobid = $cron_job"); waiting for the next one"
	cron_ok=$(cron_ran 140)
fi
check "pg_cron: the job ran and succeeded" "$cron_ok" t
q "SELECT cron.unschedule('xprov-nightly')" >/dev/null
cron_run=$(q "SELECT id FROM xprov.reconciliation_runs WHERE connector_id = '$X' ORDER BY created_at LIMIT 1")
check "pg_cron: it requested an apply run of the connector, in its tenant" \
	"$(run_field "$cron_run" "r.mode || ' ' || r.tenant_id || ' ' || r.connector")" "apply $T2 rest-nightly"
check "pg_cron: the run completes" "$(wait_run "$cron_run")" completed
for r in $(q "SELECT id FROM xprov.reconciliation_runs WHERE connector_id = '$X'"); do
	wait_run "$r" >/dev/null
done
by_hand=$(psql -qAtX -v ON_ERROR_STOP=1 -c "$cron_command")
check "the job's command by hand: a run, which completes" "$(wait_run "$by_hand")" completed

check "the postmaster is the same process throughout" "$(postmaster_pid)" "$postmaster0"
check "no process crashed (signal 6/11, PANIC)" \
	"$(grep -cE 'terminated by signal (6|11)|PANIC' "$XPROV_SERVER_LOG" || true)" 0
check "the only crash-restart was the kill -9" \
	"$(grep -cE 'terminated by signal 9' "$XPROV_SERVER_LOG" || true)" 1
echo "# $(($(date +%s) - started)) s"
[ "$failures" -eq 0 ]
