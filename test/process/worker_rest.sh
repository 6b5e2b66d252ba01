#!/usr/bin/env bash
#
# The worker over xprov's REST connector protocol (test/targets/REST_PROTOCOL.md)
# against its reference server: provisioning end to end with one execution
# per operation, accounts linked to the uids the target returned, a
# connector's rate limit and max_in_flight obeyed, and a secret never
# showing up in what xprov records.  Exit 0 = pass.

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export XPROV_PORT="${XPROV_PORT:-55464}"
REST_PORT="${XPROV_REST_TEST_PORT:-18331}"
. test/lib/cluster.sh
. test/lib/check.sh
. test/lib/target.sh

DB=xprov_worker
REST=http://127.0.0.1:$REST_PORT
TOKEN=s3cr3t-$RANDOM$RANDOM
stat() { curl -sf "$REST/_admin/stats" | python3 -c "import json,sys; print(json.load(sys.stdin)[sys.argv[1]])" "$1"; }
completed_within()	# $1 connector, $2 expected completed, $3 seconds
{
	local got=""

	for _ in $(seq 1 $(($3 * 10))); do
		got=$(q "SELECT completed FROM xprov.stats(connector_id => '$1')")
		[ "$got" = "$2" ] && break
		sleep 0.1
	done
	printf '%s' "$got"
}

rest_pid=""
cluster_start "xprov.database_name = '$DB'" "xprov.retry_base = '200ms'" >/dev/null
export PGDATABASE=$DB
trap 'target_stop rest_pid; cluster_stop' EXIT
target_start rest_pid test/targets/rest_server.py "$REST_PORT" "$XPROV_CLUSTER_DIR/rest.log" --token "$TOKEN"
psql -qAtX -d postgres -c "CREATE DATABASE $DB"
q "CREATE EXTENSION xprov"

tenant=e0000000-0000-4000-8000-000000000001
conn=$(q "SELECT xprov.add_connector('$tenant', 'rest', 'rest', '$REST/rest',
	'{\"auth\": {\"type\": \"bearer\", \"token\": \"$TOKEN\"}}')")
ops()	# $1 type, $2 count, $3 attributes expression over g
{
	q "SELECT count(*) FROM xprov.enqueue_batch((SELECT jsonb_agg(jsonb_build_object(
		'tenant_id', '$tenant', 'connector_id', '$conn', 'identity_id', md5('p' || g)::uuid,
		'operation_type', '$1', 'object_class', 'user', 'attributes', $3) ORDER BY g)
		FROM generate_series(1, $2) g))" >/dev/null
}

ops create 200 "jsonb_build_object('userName', 'p' || g)"
ops update 200 "jsonb_build_object('title', 'T' || g)"
ops disable 50 "'{}'::jsonb"
check "600 operations over 200 subjects complete" "$(completed_within "$conn" 450 60)" 450
check "the target executed each once" "$(stat executions)" 450
check "it holds 200 accounts" "$(stat accounts)" 200
check "each create linked the uid the target returned" \
	"$(q "SELECT count(DISTINCT target_uid) FROM xprov.accounts WHERE connector_id = '$conn'")" 200
check "updates addressed that uid (no second account)" \
	"$(curl -sf "$REST/_admin/accounts" | python3 -c "import json,sys; a=json.load(sys.stdin); print(sum(1 for x in a if x['attributes'].get('title','').startswith('T')))")" 200
check "the account attributes xprov keeps merged the update" \
	"$(q "SELECT count(*) FROM xprov.accounts WHERE attributes ? 'userName' AND attributes ? 'title'")" 200
check "every request carried X-Request-Id" "$(stat request_ids_missing)" 0

# --- an operator changes a lane while its head is leased ---------------------
# The worker finds a lease again by the lane version its claim wrote.  Skipping
# the operation behind the head writes a new version; the head's outcome must
# still be recorded, once, whether it completes or fails and is retried.
status_of() { q "SELECT status FROM xprov.operations WHERE id = '$1'"; }
lane_moves()	# $1 identity seed, $2 fault (JSON) for the head's first request
{
	local who="md5('$1')::uuid" head behind

	curl -sf -X POST -d "$2" "$REST/_admin/fault" >/dev/null
	head=$(q "SELECT xprov.enqueue('$tenant', '$conn', $who, 'update', 'user', '{\"title\": \"head\"}')")
	behind=$(q "SELECT xprov.enqueue('$tenant', '$conn', $who, 'update', 'user', '{\"title\": \"behind\"}')")
	for _ in $(seq 1 50); do
		[ "$(status_of "$head")" = in_progress ] && break
		sleep 0.1
	done
	q "SELECT xprov.skip('$behind', 'superseded')" >/dev/null
	for _ in $(seq 1 100); do
		[ "$(status_of "$head")" = completed ] && break
		sleep 0.1
	done
	printf '%s, %s requests' "$(q "SELECT o.status || ', ' || b.status || ', lane ' || l.state::text
	     FROM xprov.operations o, xprov.operations b, xprov.op, xprov.lane l
	    WHERE o.id = '$head' AND b.id = '$behind' AND op.id = o.id AND l.lane_id = op.lane_id")" \
		"$(curl -sf "$REST/_admin/requests?since=0" | python3 -c \
		"import json,sys; print(sum(r['request_id'] == sys.argv[1] for r in json.load(sys.stdin)))" "$head")"
}
before=$(stat executions)
check "a skip behind a leased head: the head's completion is still recorded" \
	"$(lane_moves p1 '{"mode": "delay", "delay_ms": 1500, "count": 1}')" "completed, skipped, lane i, 1 requests"
# three dropped connections: each is an outcome recorded under the moved lane
check "a skip behind a leased head: so are its failed tries, then the completion" \
	"$(lane_moves p2 '{"mode": "hang", "delay_ms": 500, "count": 3}')" "completed, skipped, lane i, 4 requests"
check "the target executed each head once" "$(( $(stat executions) - before ))" 2
check "no outcome was dropped as no longer leased" \
	"$(grep -c 'no longer leased' "$XPROV_SERVER_LOG" || true)" 0

# --- a connector's own limits ------------------------------------------------
limited=$(q "SELECT xprov.add_connector('$tenant', 'limited', 'rest', '$REST/rest',
	'{\"auth\": {\"type\": \"bearer\", \"token\": \"$TOKEN\"}, \"rate_limit\": 10}')")
t0=$(date +%s.%N)
q "SELECT count(*) FROM xprov.enqueue_batch((SELECT jsonb_agg(jsonb_build_object(
	'tenant_id', '$tenant', 'connector_id', '$limited', 'target_uid', 'r' || g,
	'operation_type', 'delete', 'object_class', 'user', 'attributes', '{}'::jsonb))
	FROM generate_series(1, 30) g))" >/dev/null
completed_within "$limited" 30 30 >/dev/null
check "rate_limit 10/s: 30 requests take at least 1.8 s (10 at once, then 10 per second)" \
	"$(python3 -c "import sys,time; print(time.time() - float(sys.argv[1]) >= 1.8)" "$t0")" True

narrow=$(q "SELECT xprov.add_connector('$tenant', 'narrow', 'rest', '$REST/rest',
	'{\"auth\": {\"type\": \"bearer\", \"token\": \"$TOKEN\"}, \"max_in_flight\": 2}')")
curl -sf -X POST -d '{"mode": "delay", "delay_ms": 300, "count": 12}' "$REST/_admin/fault" >/dev/null
t0=$(date +%s.%N)
q "SELECT count(*) FROM xprov.enqueue_batch((SELECT jsonb_agg(jsonb_build_object(
	'tenant_id', '$tenant', 'connector_id', '$narrow', 'target_uid', 'n' || g,
	'operation_type', 'delete', 'object_class', 'user', 'attributes', '{}'::jsonb))
	FROM generate_series(1, 12) g))" >/dev/null
completed_within "$narrow" 12 30 >/dev/null
check "max_in_flight 2: 12 requests of 300 ms take at least 1.8 s" \
	"$(python3 -c "import sys,time; print(time.time() - float(sys.argv[1]) >= 1.8)" "$t0")" True

# --- a target that echoes the request: the token is redacted from the record --
curl -sf -X POST -d '{"mode": "echo", "count": 1}' "$REST/_admin/fault" >/dev/null
q "SELECT xprov.enqueue('$tenant', '$conn', NULL, 'delete', 'user', '{}', 'echoed')" >/dev/null
echoed=""
for _ in $(seq 1 100); do
	echoed=$(q "SELECT last_error FROM xprov.operations WHERE target_uid = 'echoed' AND status = 'dead_letter'")
	[ -n "$echoed" ] && break
	sleep 0.1
done
check "an echoed Authorization header is recorded redacted" \
	"$(printf '%s' "$echoed" | grep -o 'Bearer \[redacted\]')" "Bearer [redacted]"
check "and the token appears in no recorded error, view or log" \
	"$( { q "SELECT * FROM xprov.operation_attempts"; q "SELECT * FROM xprov.operations";
		cat "$XPROV_SERVER_LOG"; } | grep -c "$TOKEN" || true)" 0

# --- a wrong token: paused, never dead-lettered, never leaked ----------------
bad=$(q "SELECT xprov.add_connector('$tenant', 'bad', 'rest', '$REST/rest',
	'{\"auth\": {\"type\": \"bearer\", \"token\": \"wrong-$TOKEN\"}}')")
q "SELECT xprov.enqueue('$tenant', '$bad', NULL, 'delete', 'user', '{}', 'x1')" >/dev/null
sleep 2
check "a rejected token pauses the connector" "$(q "SELECT paused_connectors FROM xprov.worker_status()")" 1
check "its operation waits, not dead" \
	"$(q "SELECT status FROM xprov.operations WHERE connector_id = '$bad'")" pending
check "the token appears in no recorded error, view or log" \
	"$( { q "SELECT * FROM xprov.operation_attempts"; q "SELECT * FROM xprov.operations";
		q "SELECT * FROM xprov.connectors"; q "SELECT * FROM xprov.worker_status()";
		q "SELECT query FROM pg_stat_activity";
		cat "$XPROV_SERVER_LOG"; } | grep -c "$TOKEN" || true)" 0

check "no process crashed" \
	"$(grep -cE 'terminated by signal (6|11)|PANIC' "$XPROV_SERVER_LOG" || true)" 0
[ "$failures" -eq 0 ]
