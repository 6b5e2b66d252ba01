#!/usr/bin/env bash
#
# Durability across a crash: operations whose enqueue committed survive
# `pg_ctl restart -m immediate` (no shutdown checkpoint, WAL replay), an
# enqueue still open at the crash leaves nothing, leases taken before the
# crash come back when they expire, and the fresh shared claim cursor finds
# every ready operation.  Exit 0 = pass.

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export XPROV_PORT="${XPROV_PORT:-55461}"
. test/lib/cluster.sh

. test/lib/check.sh

cluster_start >/dev/null
q "CREATE EXTENSION xprov" >/dev/null
tenant=b0000000-0000-4000-8000-000000000001
conn=$(q "SELECT xprov.add_connector('$tenant', 'crash', 'external', NULL)")

# 2,000 committed operations over 200 subjects, in 20 separate transactions
for i in $(seq 1 20); do
	q "SELECT count(*) FROM xprov.enqueue_batch((SELECT jsonb_agg(jsonb_build_object(
		'tenant_id', '$tenant', 'connector_id', '$conn', 'target_uid', 'acct-' || (g % 200),
		'operation_type', 'update', 'object_class', 'user',
		'attributes', jsonb_build_object('batch', $i, 'n', g)) ORDER BY g)
		FROM generate_series(1, 100) g))" >/dev/null
done
# 50 leased with a short lease, 50 completed, before the crash
q "SELECT xprov.complete_batch(array_agg(id)) FROM xprov.dequeue(50, '1 minute')" >/dev/null
q "SELECT count(*) FROM xprov.dequeue(50, '2 seconds')" >/dev/null

# an enqueue whose transaction is still open when the server dies
psql -qX -c "BEGIN; SELECT xprov.enqueue('$tenant', '$conn', NULL, 'create', 'user', '{}', 'uncommitted');
	SELECT pg_sleep(60);" >/dev/null 2>&1 &
sleep 1

cluster_restart immediate
wait || true

check "committed operations survive" "$(q "SELECT count(*) FROM xprov.operations")" 2000
check "the open enqueue left nothing" \
	"$(q "SELECT count(*) FROM xprov.operations WHERE target_uid = 'uncommitted'")" 0
check "statuses after recovery" \
	"$(q "SELECT format('%s/%s/%s', pending, in_progress, completed) FROM xprov.stats()")" "1900/50/50"

sleep 2.5		# the short leases run out
drained=0
for _ in $(seq 1 100); do
	n=$(q "SELECT coalesce(xprov.complete_batch(array_agg(id)), 0) FROM xprov.dequeue(100, '1 minute')")
	drained=$((drained + n))
	[ "$n" -eq 0 ] && break
done
check "every remaining operation is handed out exactly once" "$drained" 1950
check "all completed" "$(q "SELECT format('%s/%s/%s', pending, in_progress, completed) FROM xprov.stats()")" "0/0/2000"
check "expired leases are recorded as attempts" \
	"$(q "SELECT count(*) FROM xprov.operation_attempts WHERE outcome = 'lease_expired'")" 50
check "per-subject completion order equals enqueue order" \
	"$(q "SELECT count(*) FROM (SELECT o.seq, lag(o.seq) OVER w AS prev_seq, r.finished_at, lag(r.finished_at) OVER w AS prev_fin
		FROM xprov.op o JOIN xprov.op_result r ON r.op_id = o.id
		WINDOW w AS (PARTITION BY o.lane_id ORDER BY o.seq)) s WHERE prev_fin > finished_at")" 0

cluster_stop
[ "$failures" -eq 0 ]
