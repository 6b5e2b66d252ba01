#!/usr/bin/env bash
#
# xprov.allowed_hosts in the worker: a connector added while its host was
# allowed, then the setting narrowed by a reload (ALTER SYSTEM +
# pg_reload_conf), has every operation dead-lettered after one attempt with
# the setting named in its error, no request reaching the target, the
# connector not paused (more operations than the breaker's failure count)
# and the worker still the same process; widened again by a reload, the
# next operation completes.  Exit 0 = pass.

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export XPROV_PORT="${XPROV_PORT:-55467}"
SCIM_PORT="${XPROV_SCIM_TEST_PORT:-18367}"
. test/lib/cluster.sh
. test/lib/check.sh
. test/lib/target.sh

DB=xprov_worker
SCIM=http://127.0.0.1:$SCIM_PORT
requests() { curl -sf "$SCIM/_admin/stats" | python3 -c "import json,sys; print(json.load(sys.stdin)['requests_total'])"; }
reload_with() # $1: the setting's new value, or DEFAULT
{
	if [ "$1" = DEFAULT ]; then
		q "ALTER SYSTEM RESET xprov.allowed_hosts" >/dev/null
	else
		q "ALTER SYSTEM SET xprov.allowed_hosts = '$1'" >/dev/null
	fi
	q "SELECT pg_reload_conf()" >/dev/null
	sleep 1		# SIGHUP reaches the worker asynchronously
}

scim_pid=""
cluster_start "xprov.database_name = '$DB'" "xprov.retry_base = '200ms'" >/dev/null
export PGDATABASE=$DB
trap 'target_stop scim_pid; cluster_stop' EXIT
target_start scim_pid test/targets/scim_server.py "$SCIM_PORT" "$XPROV_CLUSTER_DIR/scim.log"
psql -qAtX -d postgres -c "CREATE DATABASE $DB"
q "CREATE EXTENSION xprov"

tenant=e0000000-0000-4000-8000-000000000035
reload_with "127.0.0.1:$SCIM_PORT"
conn=$(q "SELECT xprov.add_connector('$tenant', 'scim', 'scim2', '$SCIM/scim/v2')")
worker=$(wait_for "SELECT pid IS NOT NULL FROM xprov.worker_status()" 20 t)
check "the worker runs" "$worker" t
pid=$(q "SELECT pid FROM xprov.worker_status()")

reload_with "*.example.com"
before=$(requests)
q "SELECT count(*) FROM xprov.enqueue_batch((SELECT jsonb_agg(jsonb_build_object(
	'tenant_id', '$tenant', 'connector_id', '$conn', 'identity_id', md5('h' || g)::uuid,
	'operation_type', 'create', 'object_class', 'user',
	'attributes', jsonb_build_object('userName', 'h' || g)) ORDER BY g)
	FROM generate_series(1, 12) g))" >/dev/null
check "narrowed by a reload: every operation dead-letters" \
	"$(wait_for "SELECT count(*) FILTER (WHERE status = 'dead_letter') FROM xprov.operations WHERE connector_id = '$conn'" 30 12)" 12
check "after one attempt each" \
	"$(q "SELECT count(*) FROM xprov.op_failure f JOIN xprov.operations o ON o.id = f.op_id WHERE o.connector_id = '$conn'")" 12
check "the error names the host and the setting" \
	"$(q "SELECT DISTINCT f.error FROM xprov.op_failure f JOIN xprov.operations o ON o.id = f.op_id WHERE o.connector_id = '$conn'")" \
	'GET /Users: host "127.0.0.1" is not in xprov.allowed_hosts'
check "no request reached the target" "$(requests)" "$before"
check "the connector was not paused" \
	"$(grep -c 'pausing connector' "$XPROV_SERVER_LOG" || true)" 0
check "the worker is the same process" "$(q "SELECT pid FROM xprov.worker_status()")" "$pid"

reload_with DEFAULT
q "SELECT xprov.enqueue('$tenant', '$conn', md5('h-after')::uuid, 'create', 'user', '{\"userName\": \"h-after\"}')" >/dev/null
check "widened by a reload: the next operation completes" \
	"$(wait_for "SELECT count(*) FILTER (WHERE status = 'completed') FROM xprov.operations WHERE connector_id = '$conn'" 30 1)" 1
check "and reached the target" "$(q "SELECT $(requests) > $before")" t

[ "$failures" -eq 0 ]
