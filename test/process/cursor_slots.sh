#!/usr/bin/env bash
#
# More databases use xprov than there are shared claim-cursor slots (32):
# the least recently used slot is taken over, and every database keeps
# handing out all of its ready operations, in priority order.  Exit 0 = pass.

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export XPROV_PORT="${XPROV_PORT:-55462}"
. test/lib/cluster.sh

cluster_start >/dev/null
failures=0
tenant=c0000000-0000-4000-8000-000000000001
for round in 1 2; do
	for i in $(seq 1 36); do
		db="slots_$i"
		if [ "$round" -eq 1 ]; then
			createdb "$db"
			psql -qAtX -d "$db" -c "CREATE EXTENSION xprov" >/dev/null
			psql -qAtX -d "$db" -c "SELECT xprov.add_connector('$tenant', 'c', 'external', NULL)" >/dev/null
		fi
		got=$(psql -qAtX -d "$db" -v ON_ERROR_STOP=1 <<SQL
SELECT count(*) FROM xprov.enqueue_batch((SELECT jsonb_agg(jsonb_build_object('tenant_id', '$tenant',
	'connector_id', (SELECT id FROM xprov.connectors), 'target_uid', 'u' || g, 'operation_type', 'update',
	'object_class', 'user', 'priority', g)) FROM generate_series(1, 3) g)) \\g /dev/null
SELECT string_agg(target_uid, ',') FROM xprov.dequeue(10);
SELECT count(xprov.complete(id)) FROM xprov.operations WHERE status = 'in_progress' \\g /dev/null
SQL
)
		if [ "$got" != "u3,u2,u1" ]; then
			echo "not ok - round $round database $db handed out '$got', want 'u3,u2,u1'"
			failures=$((failures + 1))
		fi
	done
done
[ "$failures" -eq 0 ] && echo "ok - 36 databases x 2 rounds hand out all their operations in priority order"
cluster_stop
[ "$failures" -eq 0 ]
