#!/usr/bin/env bash
#
# The worker against the bundled SCIM 2.0 target (test/targets/scim_server.py):
# a few hundred users provisioned end to end; every fault switch (500 burst,
# 429 + Retry-After, slow responses past the timeout, dropped connections,
# garbage bodies, 401, the target down, a create that succeeded but whose
# answer was lost); SIGTERM, kill -9 and an immediate restart with requests
# in flight.  After each, every operation is completed exactly once at the
# target: one account per user, linked to the right id.  Exit 0 = pass.

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export XPROV_PORT="${XPROV_PORT:-55463}"
SCIM_PORT="${XPROV_SCIM_PORT:-18321}"
. test/lib/cluster.sh
. test/lib/check.sh
. test/lib/target.sh

DB=xprov_worker
SCIM=http://127.0.0.1:$SCIM_PORT

scim_pid=""
scim_start() { target_start scim_pid test/targets/scim_server.py "$SCIM_PORT" "$XPROV_CLUSTER_DIR/scim.log"; }
scim_stop() { target_stop scim_pid; }
fault() { curl -sf -X POST -d "$1" "$SCIM/_admin/fault" >/dev/null; }
stat() { curl -sf "$SCIM/_admin/stats" | python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1], {}, d))" "$1"; }

# Users on the target whose userName starts with $1, and how many distinct.
target_users() { curl -sf "$SCIM/_admin/users" | python3 -c "
import json, sys
users = [u for u in json.load(sys.stdin) if u['userName'].startswith(sys.argv[1])]
print(len(users), len({u['userName'].lower() for u in users}))" "$1"; }

# Every account xprov linked for prefix $1 points at the target's user of that userName.
links_match() {
	curl -sf "$SCIM/_admin/users" -o "$XPROV_CLUSTER_DIR/users.json"
	q "SELECT attributes->>'userName' || '|' || target_uid FROM xprov.accounts WHERE attributes->>'userName' LIKE '$1%'" \
	| python3 -c "
import json, sys
ids = {u['userName']: u['id'] for u in json.load(open(sys.argv[1]))}
rows = [l.strip().split('|') for l in sys.stdin if l.strip()]
bad = [r for r in rows if ids.get(r[0]) != r[1]]
print('%d linked, %d wrong' % (len(rows), len(bad)))" "$XPROV_CLUSTER_DIR/users.json"
}

# When a check fails, what the worker and the lanes were doing.
done_within()	# $1 prefix, $2 seconds: wait until all of the prefix's operations completed
{
	wait_for "SELECT count(*) FILTER (WHERE status = 'completed') || '/' || count(*)
		FROM xprov.operations WHERE attributes->>'userName' LIKE '$1%'" "$2" "$(q "SELECT count(*) || '/' || count(*) FROM xprov.operations WHERE attributes->>'userName' LIKE '$1%'")"
}

on_check_failure()
{
	q "SELECT * FROM xprov.worker_status()"
	q "SELECT lane_id, state, attempts, attempt_base, run_at, last_error FROM xprov.lane WHERE state <> 'i'"
	grep -E 'xprov' "$XPROV_SERVER_LOG" | tail -20
}

tenant=d0000000-0000-4000-8000-000000000001
creates()	# $1 prefix, $2 count
{
	q "SELECT count(*) FROM xprov.enqueue_batch((SELECT jsonb_agg(jsonb_build_object(
		'tenant_id', '$tenant', 'connector_id', '$conn', 'identity_id', md5('$1' || g)::uuid,
		'operation_type', 'create', 'object_class', 'user',
		'attributes', jsonb_build_object('userName', '$1' || g, 'displayName', 'User $1' || g,
										 'name', jsonb_build_object('givenName', 'G' || g)))
		ORDER BY g) FROM generate_series(1, $2) g))" >/dev/null
}
done_ok()	# all operations of prefix $1 completed: "completed/total"
{
	q "SELECT count(*) FILTER (WHERE status = 'completed') || '/' || count(*)
		 FROM xprov.operations WHERE attributes->>'userName' LIKE '$1%'"
}

cluster_start "xprov.database_name = '$DB'" "xprov.retry_base = '200ms'" "xprov.retry_max = '2s'" \
	"xprov.max_attempts = 4" "xprov.http_timeout = '5s'" >/dev/null
export PGDATABASE=$DB
trap 'scim_stop; cluster_stop' EXIT
scim_start
psql -qAtX -d postgres -c "CREATE DATABASE $DB"
q "CREATE EXTENSION xprov"
conn=$(q "SELECT xprov.add_connector('$tenant', 'scim', 'scim2', '$SCIM/scim/v2', '{\"timeout_ms\": 1000}')")

# --- a few hundred users ---------------------------------------------------
creates bulk 300
check "300 creates finish" "$(q "SELECT xprov.wait_idle('60 s')")" t
check "all completed" "$(done_ok bulk)" "300/300"
check "300 users on the target, no duplicate" "$(target_users bulk)" "300 300"
check "every account is linked to its user's id" "$(links_match bulk)" "300 linked, 0 wrong"
check "every request carried X-Request-Id" "$(stat request_ids_missing)" 0
q "SELECT count(*) FROM xprov.enqueue_batch((SELECT jsonb_agg(jsonb_build_object(
	'tenant_id', '$tenant', 'connector_id', '$conn', 'identity_id', md5('bulk' || g)::uuid,
	'operation_type', 'update', 'object_class', 'user',
	'attributes', jsonb_build_object('title', 'Engineer ' || g))) FROM generate_series(1, 300) g))" >/dev/null
check "300 updates finish" "$(q "SELECT xprov.wait_idle('60 s')")" t
check "updates reached the target" \
	"$(curl -sf "$SCIM/_admin/users" | python3 -c "import json,sys; print(sum(1 for u in json.load(sys.stdin) if u.get('title','').startswith('Engineer')))")" 300
check "updates addressed the linked account (no new users)" "$(target_users bulk)" "300 300"

# --- 500 burst: retried, then done -------------------------------------------
fault '{"mode": "500", "count": 4}'
creates burst 10
check "a 500 burst is retried to completion" "$(done_within burst 30)" "10/10"
check "the 500s are in the attempt history" \
	"$(q "SELECT count(*) >= 1 FROM xprov.operation_attempts WHERE http_status = 500")" t

# --- 429 with Retry-After ----------------------------------------------------
fault '{"mode": "429", "count": 1, "retry_after": 1}'
creates throttled 1
check "a 429 is retried" "$(wait_for "SELECT count(*) FILTER (WHERE status = 'completed') || '/' || count(*)
	FROM xprov.operations WHERE attributes->>'userName' LIKE 'throttled%'" 30 1/1)" "1/1"
check "Retry-After: 1 was honoured" \
	"$(q "SELECT bool_and(r.finished_at - f.finished_at >= interval '0.9 s')
		FROM xprov.operation_attempts f JOIN xprov.operations o ON o.id = f.operation_id
		JOIN xprov.op_result r ON r.op_id = o.id
		WHERE f.http_status = 429 AND o.attributes->>'userName' LIKE 'throttled%'")" t

# --- slower than the connector's 1 s timeout ---------------------------------
fault '{"mode": "delay", "delay_ms": 1500, "count": 1}'
creates slow 1
check "a timed-out request is retried" "$(done_within slow 30)" "1/1"
check "the timeout is in the attempt history" \
	"$(q "SELECT count(*) >= 1 FROM xprov.operation_attempts WHERE error ILIKE '%timed out%'")" t

# --- dropped connections and garbage ----------------------------------------
fault '{"mode": "drop", "count": 3}'
fault '{"mode": "garbage", "count": 2}'
creates flaky 5
check "dropped connections and garbage bodies are retried" \
	"$(done_within flaky 30)" "5/5"
check "and made no duplicate" "$(target_users flaky)" "5 5"

# --- the account was created but the answer was lost -------------------------
fault '{"mode": "drop", "count": 1, "method": "POST", "after": true}'
creates lost 1
check "a create whose answer was lost completes" "$(done_within lost 30)" "1/1"
check "by linking the account it made, not a second one" "$(target_users lost)" "1 1"
check "linked to the right id" "$(links_match lost)" "1 linked, 0 wrong"

# --- 401: the connector pauses, attempts are not spent -----------------------
fault '{"mode": "401", "count": -1}'
creates unauthorized 10
check "401 pauses the connector" \
	"$(wait_for "SELECT paused_connectors FROM xprov.worker_status()" 10 1)" 1
sleep 4		# longer than max_attempts (4) retries at 200 ms..2 s would take
fault '{"mode": "clear"}'
check "after the credentials work again everything completes" \
	"$(done_within unauthorized 60)" "10/10"
check "nothing was dead-lettered while paused" "$(q "SELECT count(*) FROM xprov.dead_letters")" 0
check "the pause is in the attempt history" \
	"$(q "SELECT count(*) >= 1 FROM xprov.operation_attempts WHERE outcome = 'connector_unavailable' AND http_status = 401")" t

# --- the target is down: connection refused ----------------------------------
scim_stop
creates down 10
check "connection refused pauses the connector" \
	"$(wait_for "SELECT paused_connectors FROM xprov.worker_status()" 10 1)" 1
sleep 3
scim_start
check "when the target is back everything completes" \
	"$(done_within down 60)" "10/10"
check "nothing was dead-lettered while it was down" "$(q "SELECT count(*) FROM xprov.dead_letters")" 0
check "the users exist once each" "$(target_users down)" "10 10"

# --- SIGTERM with requests in flight -----------------------------------------
fault '{"mode": "delay", "delay_ms": 300, "count": 60}'
creates term 60
sleep 1
q "SELECT pg_terminate_backend(pid) FROM xprov.worker_status()" >/dev/null
check "after SIGTERM with requests in flight, all complete" \
	"$(done_within term 60)" "60/60"
check "once each at the target" "$(target_users term)" "60 60"
check "linked right" "$(links_match term)" "60 linked, 0 wrong"

# --- kill -9 with requests in flight -----------------------------------------
fault '{"mode": "delay", "delay_ms": 300, "count": 150}'
creates killed 150
sleep 1.5
kill -9 "$(q "SELECT pid FROM xprov.worker_status()")"
sleep 3
wait_for "SELECT count(*) FROM xprov.worker_status()" 30 1 >/dev/null
check "after kill -9 mid-batch, all complete" \
	"$(done_within killed 90)" "150/150"
check "once each at the target" "$(target_users killed)" "150 150"
check "linked right" "$(links_match killed)" "150 linked, 0 wrong"

# --- immediate restart with requests in flight -------------------------------
fault '{"mode": "delay", "delay_ms": 300, "count": 150}'
creates crashed 150
sleep 1.5
cluster_restart immediate
wait_for "SELECT count(*) FROM xprov.worker_status()" 30 1 >/dev/null
check "after an immediate restart mid-run, all complete" \
	"$(done_within crashed 90)" "150/150"
check "once each at the target" "$(target_users crashed)" "150 150"
check "linked right" "$(links_match crashed)" "150 linked, 0 wrong"

check "no dead letters at all" "$(q "SELECT count(*) FROM xprov.dead_letters")" 0
check "no process crashed" \
	"$(grep -cE 'terminated by signal (6|11)|PANIC' "$XPROV_SERVER_LOG" || true)" 0
[ "$failures" -eq 0 ]
