#!/usr/bin/env bash
#
# The background worker's life cycle, with noop connectors (no HTTP): it
# drains what is enqueued, in order per subject; it is woken at commit, not
# by polling; a disabled connector holds its operations; xprov.workers
# follows a reload; SIGTERM and kill -9 of a worker, and an immediate
# restart of the server mid-drain, lose nothing and finish nothing twice;
# DROP EXTENSION and DROP DATABASE go through while the worker runs.
# Exit 0 = pass.

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export XPROV_PORT="${XPROV_PORT:-55462}"
. test/lib/cluster.sh
. test/lib/check.sh

DB=xprov_worker
qp() { psql -qAtX -v ON_ERROR_STOP=1 -d postgres -c "$1"; }


worker_pids() { qp "SELECT string_agg(pid::text, ' ' ORDER BY pid) FROM pg_stat_activity WHERE backend_type = 'xprov worker'"; }

tenant=c0000000-0000-4000-8000-000000000001
enqueue()	# $1 connector, $2 count, $3 subjects, $4 tag
{
	q "SELECT count(*) FROM xprov.enqueue_batch((SELECT jsonb_agg(jsonb_build_object(
		'tenant_id', '$tenant', 'connector_id', '$1', 'target_uid', '$4-' || (g % $3),
		'operation_type', 'update', 'object_class', 'user',
		'attributes', jsonb_build_object('n', g)) ORDER BY g)
		FROM generate_series(1, $2) g))" >/dev/null
}
completed() { q "SELECT completed FROM xprov.stats(connector_id => '$1')"; }

cluster_start "xprov.database_name = '$DB'" "xprov.worker_nap = '10min'" >/dev/null
export PGDATABASE=$DB
qp "CREATE DATABASE $DB"
q "CREATE EXTENSION xprov"

check "one worker runs on $DB" \
	"$(wait_for "SELECT count(*) || ' ' || min(database) FROM xprov.worker_status()" 10 "1 $DB")" "1 $DB"

# --- drain in order, woken at commit (the nap is 10 minutes) --------------
noop=$(q "SELECT xprov.add_connector('$tenant', 'noop', 'noop', NULL)")
enqueue "$noop" 2000 200 a
check "wait_idle sees the drain finish" "$(q "SELECT xprov.wait_idle('30 s')")" t
check "2,000 operations completed" "$(completed "$noop")" 2000
check "each subject's operations completed in enqueue order" \
	"$(q "SELECT count(*) FROM (SELECT r.finished_at, lag(r.finished_at) OVER w AS prev
		FROM xprov.op o JOIN xprov.op_result r ON r.op_id = o.id
		WINDOW w AS (PARTITION BY o.lane_id ORDER BY o.seq)) s WHERE prev > finished_at")" 0
check "one attempt each" "$(q "SELECT count(*) FROM xprov.operations WHERE attempts <> 1")" 0
check "worker_status counts them" "$(q "SELECT operations_done >= 2000 FROM xprov.worker_status()")" t
check "the worker shows in pg_stat_activity" \
	"$(qp "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'xprov worker' AND datname = '$DB'")" 1
check "a worker that ran no hook has no hook thread (one thread)" \
	"$(ls /proc/"$(worker_pids)"/task | wc -l)" 1

id=$(q "SELECT xprov.enqueue('$tenant', '$noop', NULL, 'update', 'user', '{}', 'single')")
check "a single enqueue is picked up at commit, not after the 10 min nap" \
	"$(wait_for "SELECT status FROM xprov.operations WHERE id = '$id'" 5 completed)" completed

# --- concurrent producers while the worker drains -----------------------
# Two sessions enqueue batches to random subjects, often the same ones, while
# the worker completes them: each subject's operations must run once each,
# in the order their enqueues committed.
cat >"$XPROV_CLUSTER_DIR/produce.sql" <<SQL
SELECT count(*) FROM xprov.enqueue_batch((SELECT jsonb_agg(jsonb_build_object(
	'tenant_id', '$tenant', 'connector_id', '$noop', 'target_uid', 'race-' || (random() * 300)::int,
	'operation_type', 'update', 'object_class', 'user', 'attributes', '{}'::jsonb))
	FROM generate_series(1, 10)));
SELECT xprov.enqueue('$tenant', '$noop', NULL, 'update', 'user', '{}', 'race-' || (random() * 300)::int);
SQL
"$XPROV_PGBIN/pgbench" -n -c 2 -j 2 -T 6 -R 200 -f "$XPROV_CLUSTER_DIR/produce.sql" "$DB" >"$XPROV_CLUSTER_DIR/pgbench.log" 2>&1 || true
check "the producers' operations all complete" "$(q "SELECT xprov.wait_idle('60 s')")" t
check "none is left behind an idle lane" \
	"$(q "SELECT count(*) FROM xprov.operations WHERE target_uid LIKE 'race-%' AND status <> 'completed'")" 0
check "each completed once (results = operations)" \
	"$(q "SELECT count(*) = (SELECT count(*) FROM xprov.op_result r JOIN xprov.op o ON o.id = r.op_id WHERE o.target_uid LIKE 'race-%')
		FROM xprov.op WHERE target_uid LIKE 'race-%'")" t
check "in commit order per subject" \
	"$(q "SELECT count(*) FROM (SELECT r.finished_at, lag(r.finished_at) OVER w AS prev
		FROM xprov.op o JOIN xprov.op_result r ON r.op_id = o.id WHERE o.target_uid LIKE 'race-%'
		WINDOW w AS (PARTITION BY o.lane_id ORDER BY o.seq)) s WHERE prev > finished_at")" 0
check "the worker met no error" "$(q "SELECT coalesce(last_error, '') FROM xprov.worker_status()")" ""

# --- a disabled connector holds its operations --------------------------
q "SELECT xprov.set_connector_enabled('$noop', false)" >/dev/null
enqueue "$noop" 50 10 held
check "wait_idle ignores a disabled connector's operations" "$(q "SELECT xprov.wait_idle('10 s')")" t
sleep 1
check "a disabled connector's operations stay pending" \
	"$(q "SELECT pending FROM xprov.stats(connector_id => '$noop')")" 50
q "SELECT xprov.set_connector_enabled('$noop', true)" >/dev/null
check "enabled again, they run at once (the nap is 10 minutes)" \
	"$(wait_for "SELECT pending FROM xprov.stats(connector_id => '$noop')" 10 0)" 0

# --- SIGHUP: xprov.workers follows a reload ------------------------------
q "ALTER SYSTEM SET xprov.workers = 2" >/dev/null; q "SELECT pg_reload_conf()" >/dev/null
check "xprov.workers = 2 after a reload starts a second worker" \
	"$(wait_for "SELECT count(*) FROM xprov.worker_status()" 10 2)" 2
q "ALTER SYSTEM SET xprov.workers = 1" >/dev/null; q "SELECT pg_reload_conf()" >/dev/null
check "and back to one" "$(wait_for "SELECT count(*) FROM xprov.worker_status()" 10 1)" 1

# --- SIGTERM: the worker exits and is started again with a new epoch -----
old_pid=$(q "SELECT pid FROM xprov.worker_status()")
old_epoch=$(q "SELECT epoch FROM xprov.worker_status()")
enqueue "$noop" 20000 2000 term
q "SELECT pg_terminate_backend($old_pid)" >/dev/null
check "a terminated worker is replaced" \
	"$(wait_for "SELECT count(*) FROM xprov.worker_status() WHERE pid <> $old_pid AND epoch > $old_epoch" 10 1)" 1
check "the drain finishes after SIGTERM" "$(q "SELECT xprov.wait_idle('60 s')")" t
check "nothing lost or finished twice after SIGTERM" \
	"$(q "SELECT count(*) FILTER (WHERE status = 'completed') || '/' || count(*) FROM xprov.operations WHERE target_uid LIKE 'term-%'")" "20000/20000"

# --- kill -9 mid-drain: the postmaster restarts everything ---------------
enqueue "$noop" 30000 3000 kill
sleep 0.3
kill -9 "$(q "SELECT pid FROM xprov.worker_status()")"
sleep 3
check "after kill -9 the worker comes back" "$(wait_for "SELECT count(*) FROM xprov.worker_status()" 30 1)" 1
check "the drain finishes after kill -9" "$(q "SELECT xprov.wait_idle('90 s')")" t
check "nothing lost or finished twice after kill -9" \
	"$(q "SELECT count(*) FILTER (WHERE status = 'completed') || '/' || count(*) FROM xprov.operations WHERE target_uid LIKE 'kill-%'")" "30000/30000"

# --- pg_ctl restart -m immediate mid-drain -------------------------------
enqueue "$noop" 30000 3000 crash
sleep 0.3
cluster_restart immediate
check "after an immediate restart the worker comes back" \
	"$(wait_for "SELECT count(*) FROM xprov.worker_status()" 30 1)" 1
check "the drain finishes after an immediate restart" "$(q "SELECT xprov.wait_idle('90 s')")" t
check "nothing lost or finished twice after an immediate restart" \
	"$(q "SELECT count(*) FILTER (WHERE status = 'completed') || '/' || count(*) FROM xprov.operations WHERE target_uid LIKE 'crash-%'")" "30000/30000"
check "no lease is left behind" "$(q "SELECT count(*) FROM xprov.lane WHERE state = 'l'")" 0

# --- DROP EXTENSION while the worker runs, and back ----------------------
enqueue "$noop" 20000 2000 drop
rc=0; timeout 20 psql -qAtX -d "$DB" -c "DROP EXTENSION xprov" || rc=$?
check "DROP EXTENSION during a drain returns" "$rc" 0
sleep 1
check "the worker survives its extension being dropped" "$(worker_pids | wc -w)" 1
q "CREATE EXTENSION xprov"
noop=$(q "SELECT xprov.add_connector('$tenant', 'noop', 'noop', NULL)")
enqueue "$noop" 1000 100 again
check "a recreated extension is served" "$(q "SELECT xprov.wait_idle('30 s')")/$(completed "$noop")" "t/1000"

# --- DROP DATABASE while the worker runs ---------------------------------
enqueue "$noop" 20000 2000 dropdb
rc=0; timeout 30 psql -qAtX -d postgres -c "DROP DATABASE $DB" || rc=$?
check "DROP DATABASE (without FORCE) of the workers' database succeeds" "$rc" 0
check "it is gone" "$(qp "SELECT count(*) FROM pg_database WHERE datname = '$DB'")" 0
qp "CREATE DATABASE $DB"
q "CREATE EXTENSION xprov"
check "workers come back once the database exists again" \
	"$(wait_for "SELECT count(*) FROM xprov.worker_status()" 40 1)" 1

check "no process crashed" \
	"$(grep -cE 'terminated by signal (6|11)|PANIC' "$XPROV_SERVER_LOG" || true)" 0

cluster_stop
[ "$failures" -eq 0 ]
