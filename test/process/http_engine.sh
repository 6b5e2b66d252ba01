#!/usr/bin/env bash
#
# The HTTP engine through xprov.try_operation() against the reference REST
# server (test/targets/rest_server.py):
#  - 200 operations from 4 concurrent sessions all complete, each request
#    carries X-Request-Id = its operation id, nothing runs twice;
#  - a backend's memory stays flat over 1,500 more operations (no per-request
#    leak of curl handles, header lists or buffers);
#  - pg_cancel_backend and statement_timeout during a hanging request return
#    within 2 s and leave the backend usable; pg_terminate_backend ends it
#    cleanly;
#  - a response over xprov.max_response_size is cut, and a create that needs
#    it is retried;
#  - the server log shows no crashed backend.
# Exit 0 = pass.  Environment: XPROV_PROC_REST_PORT (the target's port,
# default 18303), XPROV_TARGETS_DIR (test/targets).

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export XPROV_PORT="${XPROV_PORT:-55463}"
REST_PORT="${XPROV_PROC_REST_PORT:-18303}"
TARGETS_DIR="${XPROV_TARGETS_DIR:-test/targets}"
BASE="http://127.0.0.1:$REST_PORT"

. test/lib/check.sh
admin() { curl -sS --max-time 10 -X "$1" "$BASE/_admin/$2" ${3:+-d "$3"}; }
server_stat() { admin GET stats | python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }

# --------------------------------------------------------------------------
# the target, stopped by the EXIT trap that test/lib/cluster.sh keeps
tmp=$(mktemp -d)
python3 "$TARGETS_DIR/rest_server.py" --port "$REST_PORT" >"$tmp/rest.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$tmp"' EXIT
for _ in $(seq 1 100); do
	grep -q "^listening on 127.0.0.1:$REST_PORT\$" "$tmp/rest.log" && break
	sleep 0.1
done
grep -q "^listening" "$tmp/rest.log" || { echo "rest_server.py did not start:"; cat "$tmp/rest.log"; exit 1; }

. test/lib/cluster.sh
cluster_start >/dev/null
q "CREATE EXTENSION xprov" >/dev/null
tenant=d0000000-0000-4000-8000-000000000001
conn=$(q "SELECT xprov.add_connector('$tenant', 'http', 'rest', '$BASE/rest',
	jsonb_build_object('auth', jsonb_build_object('type', 'bearer', 'token', 'TOPSECRET-' || 'proc')))")
try_sql="xprov.try_operation('$conn', 'create', 'user', jsonb_build_object('userName', 'u-' || g), NULL, gen_random_uuid())"

# --------------------------------------------------------------------------
# 200 operations from 4 sessions at once
admin POST reset >/dev/null
sessions=()
for s in 1 2 3 4; do
	psql -qAtX -v ON_ERROR_STOP=1 -c "SELECT count(*) FILTER (WHERE r ->> 'outcome' = 'completed')
		FROM generate_series($s * 1000 + 1, $s * 1000 + 50) g, LATERAL $try_sql r" >"$tmp/s$s.out" 2>&1 &
	sessions+=($!)
done
wait "${sessions[@]}" || true
check "200 concurrent operations complete" "$(awk '{n += $1} END {print n}' "$tmp"/s?.out)" 200
check "the target made 200 accounts" "$(server_stat accounts)" 200
check "... in 200 executions, no replays" "$(server_stat executions)/$(server_stat replays)" 200/0
check "every request carried X-Request-Id" "$(server_stat request_ids_missing)" 0
check "... equal to its operation id" "$(server_stat request_id_mismatches)" 0

# --------------------------------------------------------------------------
# memory of one backend over many operations
rss_kb() { awk '/^RssAnon:/ {print $2}' "/proc/$1/status"; }
coproc PSQL { psql -qAtX -v ON_ERROR_STOP=1 2>&1; }
# bash unsets PSQL_PID once the coprocess has exited and been reaped: keep it
psql_pid=$PSQL_PID
echo "SELECT pg_backend_pid();" >&"${PSQL[1]}"
read -r pid <&"${PSQL[0]}"
run_batch()
{
	echo "SELECT count(*) FILTER (WHERE r ->> 'outcome' = 'completed')
		FROM generate_series($1, $2) g, LATERAL $try_sql r;" >&"${PSQL[1]}"
	read -r done_count <&"${PSQL[0]}"
	echo "$done_count"
}
check "300 operations in one session complete" "$(run_batch 10001 10300)" 300
before=$(rss_kb "$pid")
check "1,500 more complete" "$(run_batch 10301 11800)" 1500
after=$(rss_kb "$pid")
echo "# backend RssAnon: $before kB after 300 operations, $after kB after 1,800"
check "the backend's private memory grew by less than 1 MB" "$([ $((after - before)) -lt 1024 ] && echo yes || echo "no ($before -> $after kB)")" yes
exec {PSQL[1]}>&-
wait "$psql_pid" 2>/dev/null || true

# --------------------------------------------------------------------------
# cancel, statement_timeout and terminate while the target hangs

# start_hanging NAME SQL...: a session (application_name NAME, process
# $hanging) that runs the statements; the first one hits a hanging request
start_hanging()
{
	local name=$1

	shift
	admin POST fault '{"mode": "hang", "delay_ms": 30000}' >/dev/null
	printf '%s\n' "$@" | PGAPPNAME=$name psql -qAtX >"$tmp/$name.out" 2>&1 &
	hanging=$!
	for _ in $(seq 1 100); do
		[ "$(q "SELECT count(*) FROM pg_stat_activity WHERE application_name = '$name'
				AND state = 'active' AND query LIKE '%try_operation%'")" = 1 ] && return 0
		sleep 0.05
	done
	echo "# session $name did not start its request"
	return 1
}
after_sql="SELECT 'after: ' || ($try_sql ->> 'outcome') FROM (SELECT 20001 AS g) s;"

start_hanging cancel "SELECT $try_sql FROM (SELECT 20000 AS g) s;" "$after_sql"
sleep 0.3
t0=$(now_ms)
q "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'cancel'" >/dev/null
for _ in $(seq 1 100); do
	grep -q '^after: ' "$tmp/cancel.out" && break
	sleep 0.02
done
elapsed=$(($(now_ms) - t0))
wait "$hanging" || true
check "pg_cancel_backend during a hanging request cancels the statement" \
	"$(grep -c 'canceling statement due to user request' "$tmp/cancel.out")" 1
check "... within 2 s" "$([ "$elapsed" -lt 2000 ] && echo yes || echo "no: $elapsed ms")" yes
check "... and the same backend then completes an operation" "$(grep '^after: ' "$tmp/cancel.out")" "after: completed"

t0=$(now_ms)
start_hanging timeout "SET statement_timeout = '1s';" "SELECT $try_sql FROM (SELECT 20002 AS g) s;" \
	"RESET statement_timeout;" "SELECT 'after: ' || ($try_sql ->> 'outcome') FROM (SELECT 20003 AS g) s;"
wait "$hanging" || true
elapsed=$(($(now_ms) - t0))
check "statement_timeout during a hanging request cancels the statement" \
	"$(grep -c 'canceling statement due to statement timeout' "$tmp/timeout.out")" 1
check "... within 2 s" "$([ "$elapsed" -lt 2500 ] && echo yes || echo "no: $elapsed ms")" yes
check "... and the backend then completes an operation" "$(grep '^after: ' "$tmp/timeout.out")" "after: completed"

start_hanging terminate "SELECT $try_sql FROM (SELECT 20004 AS g) s;"
t0=$(now_ms)
q "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE application_name = 'terminate'" >/dev/null
wait "$hanging" || true
elapsed=$(($(now_ms) - t0))
check "pg_terminate_backend during a hanging request ends the backend" \
	"$(grep -c 'terminating connection due to administrator command' "$tmp/terminate.out")" 1
check "... within 2 s" "$([ "$elapsed" -lt 2000 ] && echo yes || echo "no: $elapsed ms")" yes
admin POST fault '{"mode": "clear"}' >/dev/null

# --------------------------------------------------------------------------
# responses beyond xprov.max_response_size
q "ALTER SYSTEM SET xprov.max_response_size = '1kB'" >/dev/null
q "SELECT pg_reload_conf()" >/dev/null
sleep 0.5
big=$(q "SELECT xprov.try_operation('$conn', 'create', 'user',
	jsonb_build_object('userName', 'big', 'blob', repeat('x', 4000))) ->> 'error'")
check "a create answered beyond xprov.max_response_size is retried" \
	"$big" "POST /rest/execute: HTTP 201 with a response larger than xprov.max_response_size"
q "ALTER SYSTEM RESET xprov.max_response_size" >/dev/null
q "SELECT pg_reload_conf()" >/dev/null

# --------------------------------------------------------------------------
check "no backend crashed" \
	"$(grep -cE 'terminated by signal|server process .* was terminated|was terminated by exception' "$XPROV_SERVER_LOG" || true)" 0
check "no secret in the server log" "$(grep -c 'TOPSECRET' "$XPROV_SERVER_LOG" || true)" 0

cluster_stop
[ "$failures" -eq 0 ]
