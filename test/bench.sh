#!/usr/bin/env bash
# xprov benchmark, run by `make bench` (DESIGN.md §6 quality bars).
#
# Starts its own private cluster (test/lib/cluster.sh, port $XPROV_PORT, default 55434) and
# prints every xprov figure beside a baseline measured in the same run on the same cluster:
# the machine is noisy, so only comparisons made in the same run mean anything. Every timed
# loop is a pgbench custom script (-M prepared), so no process is spawned per call and no
# PL/pgSQL runs in the loop.
#
#   1. enqueue, 1 op per transaction, 4 clients   vs  a plain INSERT of a similar row
#   2. enqueue_batch, 1,000 ops per call          vs  INSERT ... SELECT FROM jsonb_to_recordset
#                                                     of the same prebuilt JSON (and vs
#                                                     generate_series, with no JSON at all)
#   3. drain 200k ops over 20k subjects, 1 client vs  a classic single-table SKIP LOCKED
#      (dequeue(100), then complete_batch)            claim/complete loop, no per-subject order
#   4. the same drains while a REPEATABLE READ snapshot pins the xmin horizon
#   5. xprov.op n_dead_tup / n_tup_upd / n_tup_del after the drains (must be 0)
#
# Every drain runs in a fresh copy (CREATE DATABASE ... TEMPLATE) of one database loaded once
# with both queues, so all drains start from the same physical state, and the barred drains
# run BENCH_REPEAT times, alternating xprov and baseline; the best run of each counts.
#
# Benchmarks are not tests: the script exits 0 when a bar is missed (it prints FAIL) and
# non-zero only when it cannot run at all. Knobs (environment):
#   XPROV_PORT (55434)  BENCH_ENQ_SECS (8)  BENCH_SUBJECTS (20000)  BENCH_PER_SUBJECT (10)
#   BENCH_CLAIM (100)  BENCH_REPEAT (2)  BENCH_DRAIN_CAP (120 s per drain)
#   BENCH_PINNED_CAP (150 s)  BENCH_VARIANTS (1: also time the one-commit drain, and sample
#   the per-op complete() drain for BENCH_SAMPLE_SECS (6) on the operations left by step 2)
#   BENCH_PROFILE (0: 1 preloads pg_stat_statements and prints the top statements per xprov drain)
#   XPROV_KEEP_CLUSTER (0: 1 keeps the cluster directory, see test/lib/cluster.sh)

set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export XPROV_PORT=${XPROV_PORT:-55434}
# shellcheck source-path=SCRIPTDIR source=lib/cluster.sh
. "$here/lib/cluster.sh"

ENQ_SECS=${BENCH_ENQ_SECS:-8}
SUBJECTS=${BENCH_SUBJECTS:-20000}
PER_SUBJECT=${BENCH_PER_SUBJECT:-10}
CLAIM=${BENCH_CLAIM:-100}
REPEAT=${BENCH_REPEAT:-2}
DRAIN_CAP=${BENCH_DRAIN_CAP:-120}
PINNED_CAP=${BENCH_PINNED_CAP:-150}
SAMPLE_SECS=${BENCH_SAMPLE_SECS:-6}
VARIANTS=${BENCH_VARIANTS:-1}
PROFILE=${BENCH_PROFILE:-0}
BATCH=1000                                   # ops per enqueue_batch call / batched INSERT
NB=$(( (SUBJECTS + BATCH - 1) / BATCH ))     # prebuilt batches; batch b holds subjects b*1000 .. b*1000+999
SUBJECTS=$(( NB * BATCH ))
DRAIN_OPS=$(( SUBJECTS * PER_SUBJECT ))
MAIN_DB=xprov_bench                          # steps 1 and 2
TPL_DB=xprov_bench_loaded                    # both queues loaded; copied for every drain
RUN_DB=xprov_bench_drain                     # the copy being drained
DB=$MAIN_DB                                  # the database q/pgbench talk to
TENANT=00000000-0000-4000-8000-00000000be01
CONN=''                                      # connector id, set by reset_xprov
PIN_PID=''

work=$(mktemp -d /tmp/xprov-bench.XXXXXX)
chmod 755 "$work"

say() { printf '%s\n' "$*"; }
die() { printf 'bench: ERROR: %s\n' "$*" >&2; exit 1; }
q() { psql -X -q -At -v ON_ERROR_STOP=1 -d "$DB" -c "$1"; }
qpg() { psql -X -q -At -v ON_ERROR_STOP=1 -d postgres -c "$1"; }
now_ns() { date +%s%N; }

# cluster.sh keeps this trap and runs it after stopping the cluster
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    stop_pin
    rm -rf "$work"
}
trap cleanup EXIT

# ---------------------------------------------------------------- result table
ROWS=()
row() { ROWS+=("$1|$2|$3|$4|$5|$6"); }      # what | xprov | baseline | ratio | bar | verdict
fmt_rate() { if [ -n "$1" ]; then LC_ALL=C printf "%'.0f" "$1"; else printf 'n/a'; fi; }
ratio() { awk -v a="${1:-0}" -v b="${2:-0}" 'BEGIN { if (a > 0 && b > 0) printf "%.2f", a / b; else printf "" }'; }
ge() { awk -v a="${1:-}" -v b="$2" 'BEGIN { exit !(a != "" && a + 0 >= b + 0) }'; }
max() { awk -v a="${1:-0}" -v b="${2:-0}" 'BEGIN { print (a + 0 >= b + 0) ? a : b }'; }
scale() { awk -v t="$1" -v n="$2" 'BEGIN { if (t != "") printf "%.0f", t * n }'; }

# ---------------------------------------------------------------- SQL pieces
# ~250 B of attributes for subject number s (the same expression in every script, both sides).
attrs_sql() {
    local s=$1
    printf "jsonb_build_object('userName', 'user' || %s || '@example.com', 'givenName', 'Given' || %s, 'familyName', 'Family' || %s, 'displayName', 'Given ' || %s || ' Family ' || %s, 'title', 'Senior Software Engineer', 'department', 'Platform Engineering', 'employeeNumber', %s, 'active', true)" \
        "$s" "$s" "$s" "$s" "$s" "$s"
}
subject_sql() { printf "md5('s' || %s)::uuid" "$1"; }    # identity uuid for subject number s

setup_db() {
    qpg "CREATE DATABASE $DB" || die "CREATE DATABASE $DB failed"
    q "
    CREATE FUNCTION bench_attrs(s int) RETURNS jsonb LANGUAGE sql IMMUTABLE AS \$\$ SELECT $(attrs_sql s) \$\$;
    CREATE FUNCTION bench_subject(s int) RETURNS uuid LANGUAGE sql IMMUTABLE AS \$\$ SELECT $(subject_sql s) \$\$;
    -- the raw baseline: a classic single job table (research/queues.md §6, design A)
    CREATE TABLE jobs (
        id             bigserial PRIMARY KEY,
        tenant_id      uuid NOT NULL,
        connector_id   uuid NOT NULL,
        subject        uuid NOT NULL,
        operation_type text NOT NULL,
        object_class   text NOT NULL,
        attributes     jsonb NOT NULL,
        priority       int NOT NULL DEFAULT 0,
        run_at         timestamptz NOT NULL DEFAULT now(),
        state          text NOT NULL DEFAULT 'ready',
        attempts       int NOT NULL DEFAULT 0,
        locked_until   timestamptz,
        created_at     timestamptz NOT NULL DEFAULT now());
    CREATE INDEX jobs_claim ON jobs (priority DESC, run_at, id) WHERE state = 'ready';
    CREATE TABLE job_result (
        id          bigint PRIMARY KEY,
        outcome     text NOT NULL,
        attempts    int NOT NULL,
        finished_at timestamptz NOT NULL);
    CREATE TABLE bench_batch (n int PRIMARY KEY, payload jsonb NOT NULL);
    " || die "schema setup failed"
    if [ "$PROFILE" = 1 ]; then q "CREATE EXTENSION pg_stat_statements" || die "pg_stat_statements"; fi
}

# Fresh extension (fresh tables and statistics), one external connector, and the prebuilt
# enqueue_batch payloads (NB arrays of 1000 operations on distinct subjects) for it.
reset_xprov() {
    q "SET client_min_messages = warning; DROP EXTENSION IF EXISTS xprov CASCADE" >/dev/null || die "DROP EXTENSION xprov failed"
    q "CREATE EXTENSION xprov" || die "CREATE EXTENSION xprov failed (is it installed? make install)"
    CONN=$(q "SELECT xprov.add_connector('$TENANT', 'bench', 'external', NULL, '{}')") || die "add_connector failed"
    q "TRUNCATE bench_batch;
       INSERT INTO bench_batch
       SELECT b, jsonb_agg(jsonb_build_object(
                  'tenant_id', '$TENANT', 'connector_id', '$CONN',
                  'identity_id', bench_subject(s), 'operation_type', 'update',
                  'object_class', 'User', 'attributes', bench_attrs(s)) ORDER BY s)
       FROM generate_series(0, $NB - 1) b, generate_series(b * $BATCH, b * $BATCH + $BATCH - 1) s
       GROUP BY b" || die "building bench_batch failed"
    q "VACUUM ANALYZE bench_batch" || die "VACUUM bench_batch failed"
}

reset_raw() { q "TRUNCATE jobs, job_result RESTART IDENTITY" || die "TRUNCATE jobs failed"; }

settle() { q "CHECKPOINT" >/dev/null; }

# pgb LOG pgbench-args... : runs pgbench on $DB, prints its tps (without connection time)
pgb() {
    local log=$1; shift
    pgbench "$@" -d "$DB" >"$log" 2>&1
    local rc=$? tps
    tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p' "$log" | tail -1)
    if [ $rc -ne 0 ] || [ -z "$tps" ]; then
        say "    pgbench exited $rc:" >&2
        tail -5 "$log" | sed 's/^/    | /' >&2
    fi
    printf '%s' "$tps"
}

# ---------------------------------------------------------------- pinned snapshot
# The pin must be in the drained database: a snapshot in another database does not hold back
# the horizon of non-shared tables.
start_pin() {
    PGAPPNAME=xprov_bench_pin psql -X -q -d "$DB" \
        -c "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM pg_class; SELECT pg_sleep(600);" \
        >/dev/null 2>&1 &
    PIN_PID=$!
    for _ in $(seq 1 50); do
        [ "$(q "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'xprov_bench_pin' AND backend_xmin IS NOT NULL")" = 1 ] && return 0
        sleep 0.1
    done
    die "could not establish the pinned snapshot"
}

stop_pin() {
    [ -n "$PIN_PID" ] || return 0
    qpg "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'xprov_bench_pin'" >/dev/null 2>&1
    wait "$PIN_PID" 2>/dev/null
    PIN_PID=''
}

# ---------------------------------------------------------------- scripts
# A drain client ends itself with a failing \set (division by zero) once a claim comes back
# empty: pgbench has no exit meta-command, and -t N would either stop early or spin on empty
# claims. The timed interval is the wall time of the whole pgbench run; completions are counted
# in the database afterwards, so an abort for any other reason shows as an incomplete drain.
END_IF_EMPTY='\if :n = 0
\set drained 1 / 0
\endif'

write_scripts() {
    local s=':s::int'
    cat >"$work/enq_xprov.sql" <<EOF
\set s random(0, $SUBJECTS - 1)
SELECT xprov.enqueue(:tenant::uuid, :conn::uuid, $(subject_sql "$s"), 'update', 'User', $(attrs_sql "$s"));
EOF
    cat >"$work/enq_raw.sql" <<EOF
\set s random(0, $SUBJECTS - 1)
INSERT INTO jobs (tenant_id, connector_id, subject, operation_type, object_class, attributes)
VALUES (:tenant::uuid, :conn::uuid, $(subject_sql "$s"), 'update', 'User', $(attrs_sql "$s")) RETURNING id;
EOF
    # batch number b is congruent to the client id modulo the client count: clients never share
    # subjects, so concurrent batches never wait on each other's lane rows.
    cat >"$work/batch_xprov.sql" <<EOF
\set b :client_id + :nclients * random(0, $NB / :nclients - 1)
SELECT count(*) FROM xprov.enqueue_batch((SELECT payload FROM bench_batch WHERE n = :b));
EOF
    cat >"$work/batch_raw.sql" <<EOF
\set b :client_id + :nclients * random(0, $NB / :nclients - 1)
INSERT INTO jobs (tenant_id, connector_id, subject, operation_type, object_class, attributes)
SELECT x.tenant_id, x.connector_id, x.identity_id, x.operation_type, x.object_class, coalesce(x.attributes, '{}')
FROM jsonb_to_recordset((SELECT payload FROM bench_batch WHERE n = :b))
     AS x(tenant_id uuid, connector_id uuid, identity_id uuid, operation_type text, object_class text, attributes jsonb);
EOF
    cat >"$work/batch_raw_gs.sql" <<EOF
\set b :client_id + :nclients * random(0, $NB / :nclients - 1)
INSERT INTO jobs (tenant_id, connector_id, subject, operation_type, object_class, attributes)
SELECT :tenant::uuid, :conn::uuid, $(subject_sql g), 'update', 'User', $(attrs_sql g)
FROM generate_series(:b::int * $BATCH, :b::int * $BATCH + $BATCH - 1) g;
EOF

    # xprov, worker shape: claim (commit), then complete the batch (commit): 2 commits per batch
    cat >"$work/drain_xprov.sql" <<EOF
SELECT coalesce(array_agg(id), '{}') AS ids, count(*) AS n FROM xprov.dequeue($CLAIM) \gset
$END_IF_EMPTY
SELECT xprov.complete_batch(:ids::uuid[]);
EOF
    # xprov, ack with the next claim: complete batch k-1 and claim batch k in one transaction
    cat >"$work/drain_xprov_1tx.sql" <<EOF
BEGIN;
\if :n > 0
SELECT xprov.complete_batch(:ids::uuid[]);
\endif
SELECT coalesce(array_agg(id), '{}') AS ids, count(*) AS n FROM xprov.dequeue($CLAIM) \gset
COMMIT;
$END_IF_EMPTY
EOF
    # xprov, 2 commits per batch, one xprov.complete() call per operation
    cat >"$work/drain_xprov_each.sql" <<EOF
SELECT coalesce(array_agg(id), '{}') AS ids, count(*) AS n FROM xprov.dequeue($CLAIM) \gset
$END_IF_EMPTY
SELECT xprov.complete(id) FROM unnest(:ids::uuid[]) AS id;
EOF

    local claim_raw="WITH c AS MATERIALIZED (
    SELECT id FROM jobs WHERE state = 'ready' AND run_at <= now()
    ORDER BY priority DESC, run_at, id LIMIT $CLAIM FOR UPDATE SKIP LOCKED),
u AS (
    UPDATE jobs j SET state = 'running', attempts = j.attempts + 1, locked_until = now() + interval '5 minutes'
    FROM c WHERE j.id = c.id RETURNING j.*)
SELECT coalesce(array_agg(id), '{}') AS ids, count(*) AS n FROM u \gset"
    local complete_raw="WITH d AS (DELETE FROM jobs WHERE id = ANY(:ids::bigint[]) AND state = 'running' RETURNING id, attempts)
INSERT INTO job_result (id, outcome, attempts, finished_at) SELECT id, 'completed', attempts, now() FROM d;"
    cat >"$work/drain_raw.sql" <<EOF
$claim_raw
$END_IF_EMPTY
$complete_raw
EOF
    cat >"$work/drain_raw_1tx.sql" <<EOF
BEGIN;
\if :n > 0
$complete_raw
\endif
$claim_raw
COMMIT;
$END_IF_EMPTY
EOF
}

# ---------------------------------------------------------------- loads and checks
# PER_SUBJECT rounds over all subjects: every subject gets PER_SUBJECT operations, in order.
load_xprov() {
    q "DO \$\$ BEGIN
         FOR g IN 1 .. $PER_SUBJECT LOOP
           FOR b IN 0 .. $NB - 1 LOOP
             PERFORM count(*) FROM xprov.enqueue_batch((SELECT payload FROM bench_batch WHERE n = b));
           END LOOP;
         END LOOP;
       END \$\$;" || die "loading xprov failed"
}

load_raw() {
    q "INSERT INTO jobs (tenant_id, connector_id, subject, operation_type, object_class, attributes)
       SELECT '$TENANT', '$CONN', bench_subject(s), 'update', 'User', bench_attrs(s)
       FROM generate_series(1, $PER_SUBJECT) g, generate_series(0, $SUBJECTS - 1) s ORDER BY g, s" || die "loading jobs failed"
}

# prints the completed count; complains unless everything was completed
check_xprov() {
    local st completed
    st=$(q "SELECT pending, in_progress, failed, dead_letter, completed, skipped, cancelled FROM xprov.stats()")
    completed=$(cut -d'|' -f5 <<<"$st")
    if [ "${SAMPLE_MODE:-0}" != 1 ] && [ "$st" != "0|0|0|0|$DRAIN_OPS|0|0" ]; then
        say "    ERROR: xprov drain incomplete: stats() pending|in_progress|failed|dead_letter|completed|skipped|cancelled = ${st:-?} (expected 0|0|0|0|$DRAIN_OPS|0|0)" >&2
    fi
    printf '%s' "${completed:-0}"
}

check_raw() {
    local left done_
    left=$(q "SELECT count(*) FROM jobs")
    done_=$(q "SELECT count(*) FROM job_result")
    if [ "$left" != 0 ] || [ "$done_" != "$DRAIN_OPS" ]; then
        say "    ERROR: raw drain incomplete: $left jobs left, $done_ results (expected 0 and $DRAIN_OPS)" >&2
    fi
    printf '%s' "${done_:-0}"
}

# relation -> "n_dead_tup|n_tup_upd|n_tup_del|n_tup_ins|n_tup_hot_upd"
table_stats() {
    q "SELECT pg_stat_force_next_flush()" >/dev/null
    sleep 1
    q "SELECT n_dead_tup || '|' || n_tup_upd || '|' || n_tup_del || '|' || n_tup_ins || '|' || n_tup_hot_upd
       FROM pg_stat_user_tables WHERE relid = '$1'::regclass"
}

profile_reset() { [ "$PROFILE" = 1 ] && q "SELECT pg_stat_statements_reset()" >/dev/null; return 0; }
profile_print() {
    [ "$PROFILE" = 1 ] || return 0
    say "    top statements (pg_stat_statements, track=all):"
    q "SELECT lpad(round(total_exec_time)::text, 7) || ' ms ' || lpad(calls::text, 7) || ' calls '
              || lpad(round((total_exec_time / calls * 1000)::numeric)::text, 6) || ' us/call '
              || lpad((shared_blks_hit / calls)::text, 6) || ' hits/call '
              || lpad((wal_records / calls)::text, 5) || ' WAL/call  '
              || regexp_replace(left(query, 110), '\s+', ' ', 'g')
       FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
        AND calls >= 10
       ORDER BY total_exec_time DESC LIMIT 8" | sed 's/^/      /'
}

# run_drain SIDE SCRIPT CAP PINNED: drain the queue loaded in $DB with one pgbench client.
# Sets D_RATE (completed ops / wall seconds), D_DONE, D_SECS, and D_OP / D_LANE (xprov) or
# D_JOBS (raw): table counters right after the drain, while a pin is still held.
run_drain() {
    local side=$1 script=$2 cap=$3 pinned=$4 log="$work/$2.$4.log" t0 t1
    settle
    [ "$side" = xprov ] && profile_reset
    [ "$pinned" = 1 ] && start_pin
    t0=$(now_ns)
    pgbench -n -c 1 -M prepared -T "$cap" -D n=0 -D ids='{}' -f "$work/$script.sql" -d "$DB" >"$log" 2>&1
    t1=$(now_ns)
    # counters before the pin goes: autovacuum resets n_dead_tup as soon as it can clean up
    if [ "${SAMPLE_MODE:-0}" != 1 ]; then
        if [ "$side" = xprov ]; then
            D_OP=$(table_stats xprov.op); D_LANE=$(table_stats xprov.lane)
        else
            D_JOBS=$(table_stats jobs)
        fi
    fi
    [ "$pinned" = 1 ] && stop_pin
    # the expected end: "division by zero", "aborted in command N (set)", "Run was aborted"
    grep -e 'error' -e 'FATAL' "$log" | grep -v -e 'division by zero' -e 'aborted in command [0-9]* (set)' \
        -e 'Run was aborted' | head -5 | sed 's/^/    pgbench: /' >&2
    D_SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", (b - a) / 1e9 }')
    if [ "$side" = xprov ]; then D_DONE=$(check_xprov); else D_DONE=$(check_raw); fi
    D_RATE=$(awk -v n="$D_DONE" -v s="$D_SECS" 'BEGIN { printf "%.0f", n / s }')
    [ "$side" = xprov ] && profile_print
    return 0
}

# drain SIDE SCRIPT CAP PINNED LABEL: run_drain on a fresh copy of the loaded database.
drain() {
    local side=$1 script=$2 cap=$3 pinned=$4 label=$5
    DB=$RUN_DB
    qpg "DROP DATABASE IF EXISTS $RUN_DB" >/dev/null 2>&1
    qpg "CREATE DATABASE $RUN_DB TEMPLATE $TPL_DB STRATEGY FILE_COPY" || die "copying $TPL_DB failed"
    run_drain "$side" "$script" "$cap" "$pinned"
    DB=$MAIN_DB
    qpg "DROP DATABASE $RUN_DB" || die "DROP DATABASE $RUN_DB failed"
    local extra=''
    [ "$D_DONE" != "$DRAIN_OPS" ] && extra="  INCOMPLETE"
    say "    $label: $D_DONE ops in ${D_SECS}s = $(fmt_rate "$D_RATE") ops/s$extra"
}

# ================================================================ main
command -v pgbench >/dev/null || die "pgbench not found"
# xprov stays preloaded (cluster.sh does it): its claim cursor lives in shared memory.
settings=(
    "shared_buffers = '512MB'"
    "synchronous_commit = on"
    "fsync = on"
    "autovacuum_naptime = '10s'"
    "autovacuum_vacuum_scale_factor = 0.02"
    "autovacuum_analyze_scale_factor = 0.02"
    "max_wal_size = '8GB'"
    "min_wal_size = '1GB'"
    "checkpoint_timeout = '30min'"
    "wal_buffers = '16MB'"
)
[ "$PROFILE" = 1 ] && settings+=("shared_preload_libraries = 'xprov, pg_cron, pg_stat_statements'"
                                 "pg_stat_statements.track = all")
cluster_start "${settings[@]}" || die "cluster_start failed"
DB=$MAIN_DB setup_db
write_scripts

say "xprov bench: PostgreSQL $(q 'SHOW server_version'), $(nproc) CPUs, port $PGPORT, $(date -u '+%Y-%m-%d %H:%M UTC')"
say "  subjects $SUBJECTS, drain $DRAIN_OPS ops ($PER_SUBJECT per subject), claim $CLAIM, best of $REPEAT runs per barred drain,"
say "  attributes $(q "SELECT octet_length(bench_attrs(12345)::text)") B of JSON, load average $(cut -d' ' -f1-3 /proc/loadavg)"
say ""

# ---- 1. enqueue, one op per transaction, 4 clients
say "1. enqueue, 1 op/transaction, 4 clients, ${ENQ_SECS}s each"
reset_xprov; reset_raw; settle
E1=$(pgb "$work/enq_xprov.log" -n -c 4 -j 2 -T "$ENQ_SECS" -M prepared -D tenant="$TENANT" -D conn="$CONN" -f "$work/enq_xprov.sql")
E1=$(scale "$E1" 1)
settle
E1B=$(pgb "$work/enq_raw.log" -n -c 4 -j 2 -T "$ENQ_SECS" -M prepared -D tenant="$TENANT" -D conn="$CONN" -f "$work/enq_raw.sql")
E1B=$(scale "$E1B" 1)
say "    xprov.enqueue $(fmt_rate "$E1") ops/s, raw INSERT $(fmt_rate "$E1B") ops/s"
ge "$E1" 10000 && v=PASS || v=FAIL
row "Enqueue, 1 op/txn, 4 clients" "$E1" "$E1B" "$(ratio "$E1" "$E1B")" ">= 10,000/s" "$v"

# ---- 2. enqueue, batched
say "2. enqueue_batch, $BATCH ops/call, $DRAIN_OPS ops"
for clients in 1 2; do
    per=$(( DRAIN_OPS / BATCH / clients ))
    reset_xprov; reset_raw; settle
    t=$(pgb "$work/batch_xprov.$clients.log" -n -c "$clients" -j "$clients" -t "$per" -M prepared -D nclients="$clients" -f "$work/batch_xprov.sql")
    E2=$(scale "$t" "$BATCH")
    n_ok=$(q "SELECT pending FROM xprov.stats()")
    [ "$n_ok" = "$DRAIN_OPS" ] || say "    ERROR: expected $DRAIN_OPS pending operations after the batched enqueue, found $n_ok" >&2
    settle
    t=$(pgb "$work/batch_raw.$clients.log" -n -c "$clients" -j "$clients" -t "$per" -M prepared -D nclients="$clients" -f "$work/batch_raw.sql")
    E2B=$(scale "$t" "$BATCH")
    msg="    $clients client(s): xprov.enqueue_batch $(fmt_rate "$E2") ops/s, INSERT..SELECT jsonb_to_recordset $(fmt_rate "$E2B") ops/s"
    if [ "$clients" = 1 ]; then
        reset_raw; settle
        t=$(pgb "$work/batch_raw_gs.$clients.log" -n -c "$clients" -j "$clients" -t "$per" -M prepared -D nclients="$clients" \
                -D tenant="$TENANT" -D conn="$CONN" -f "$work/batch_raw_gs.sql")
        E2G=$(scale "$t" "$BATCH")
        msg="$msg, INSERT..SELECT generate_series $(fmt_rate "$E2G") ops/s"
    fi
    say "$msg"
    ge "$E2" 100000 && v=PASS || v=FAIL
    row "Enqueue batched (1000/call), $clients client(s)" "$E2" "$E2B" "$(ratio "$E2" "$E2B")" ">= 100,000/s" "$v"
    [ "$clients" = 1 ] && row "  same, baseline from generate_series" "$E2" "$E2G" "$(ratio "$E2" "$E2G")" "info" ""
done
X_EACH=''
if [ "$VARIANTS" = 1 ]; then
    # one xprov.complete() call per operation is far slower than complete_batch: sample it for
    # SAMPLE_SECS on the operations just enqueued instead of draining a fresh copy
    q "VACUUM ANALYZE" >/dev/null
    SAMPLE_MODE=1 run_drain xprov drain_xprov_each "$SAMPLE_SECS" 0; X_EACH=$D_RATE
    say "    sample, xprov dequeue + one complete() per op: $D_DONE ops in ${D_SECS}s = $(fmt_rate "$D_RATE") ops/s"
fi

# ---- the loaded database that every drain copies
say "   (loading $DRAIN_OPS operations into each queue)"
DB=$TPL_DB setup_db
DB=$TPL_DB reset_xprov
DB=$TPL_DB load_xprov
DB=$TPL_DB load_raw
DB=$TPL_DB q "VACUUM ANALYZE" || die "VACUUM failed"

# ---- 3 and 4. drains, clean and pinned
say "3+4. drain $DRAIN_OPS ops over $SUBJECTS subjects, 1 client, claim $CLAIM; 'pinned' = REPEATABLE READ snapshot held open"
X_CLEAN=''; R_CLEAN=''; X_PIN=''; R_PIN=''
X_CLEAN_OK=1; R_CLEAN_OK=1; X_PIN_OK=1; R_PIN_OK=1
OP_BAD=0; OP_ALL=''; LANE_PIN=''; JOBS_PIN=''
note_op() {  # remember the operation log's counters of every xprov drain
    OP_ALL="$OP_ALL $1:${D_OP:-?}"
    [ "$(cut -d'|' -f1-3 <<<"${D_OP:-x}")" = "0|0|0" ] || OP_BAD=1
}
for r_ in $(seq 1 "$REPEAT"); do
    drain xprov drain_xprov "$DRAIN_CAP" 0 "run $r_ xprov  dequeue + complete_batch, 2 commits/batch"
    X_CLEAN=$(max "$X_CLEAN" "$D_RATE"); [ "$D_DONE" = "$DRAIN_OPS" ] || X_CLEAN_OK=0; note_op clean
    drain raw drain_raw "$DRAIN_CAP" 0 "run $r_ raw    SKIP LOCKED claim + DELETE/INSERT result, 2 commits/batch"
    R_CLEAN=$(max "$R_CLEAN" "$D_RATE"); [ "$D_DONE" = "$DRAIN_OPS" ] || R_CLEAN_OK=0
    drain xprov drain_xprov "$DRAIN_CAP" 1 "run $r_ xprov  pinned"
    X_PIN=$(max "$X_PIN" "$D_RATE"); [ "$D_DONE" = "$DRAIN_OPS" ] || X_PIN_OK=0; note_op pinned
    LANE_PIN=$D_LANE
done
drain raw drain_raw "$PINNED_CAP" 1 "run 1 raw    pinned (once: it is slow)"
R_PIN=$D_RATE; [ "$D_DONE" = "$DRAIN_OPS" ] || R_PIN_OK=0; JOBS_PIN=$D_JOBS
if [ "$VARIANTS" = 1 ]; then
    drain xprov drain_xprov_1tx "$DRAIN_CAP" 0 "variant xprov  complete_batch(k-1) + dequeue(k) in 1 commit"
    X_1TX=$D_RATE; X_1TX_OK=$([ "$D_DONE" = "$DRAIN_OPS" ] && echo 1 || echo 0); note_op 1tx
    drain raw drain_raw_1tx "$DRAIN_CAP" 0 "variant raw    complete(k-1) + claim(k) in 1 commit"
    R_1TX=$D_RATE; R_1TX_OK=$([ "$D_DONE" = "$DRAIN_OPS" ] && echo 1 || echo 0)
fi

r=$(ratio "$X_CLEAN" "$R_CLEAN")
if [ "$X_CLEAN_OK$R_CLEAN_OK" != 11 ]; then v="FAIL (incomplete)"
elif ge "$r" 0.7; then v=PASS
elif ge "$r" 0.5; then v="PASS (< 0.7x of DESIGN)"
else v=FAIL; fi
row "Drain, 2 commits/batch (claim; complete_batch)" "$X_CLEAN" "$R_CLEAN" "$r" ">= 0.5x raw (0.7x)" "$v"
if [ "$VARIANTS" = 1 ]; then
    v=''; [ "$X_1TX_OK$R_1TX_OK" = 11 ] || v="FAIL (incomplete)"
    row "Drain, 1 commit/batch (ack with next claim)" "$X_1TX" "$R_1TX" "$(ratio "$X_1TX" "$R_1TX")" "info" "$v"
    row "Drain, complete() per op (${SAMPLE_SECS}s sample)" "$X_EACH" "$R_CLEAN" "$(ratio "$X_EACH" "$R_CLEAN")" "info" ""
fi
v=''
[ "$X_PIN_OK" = 1 ] || v="FAIL (incomplete)"
[ "$R_PIN_OK" = 1 ] || v="${v:-info} (raw capped at ${PINNED_CAP}s)"
row "Drain, pinned snapshot" "$X_PIN" "$R_PIN" "$(ratio "$X_PIN" "$R_PIN")" "info" "$v"
xr=$(ratio "$X_PIN" "$X_CLEAN"); rr=$(ratio "$R_PIN" "$R_CLEAN")
if [ "$X_PIN_OK$X_CLEAN_OK" != 11 ]; then v="FAIL (incomplete)"
elif ge "$xr" 0.8; then v=PASS; else v=FAIL; fi
row "Pinned / clean (each its own)" "${xr}x" "${rr}x" "" "xprov >= 0.8x" "$v"

# ---- 5. dead tuples of the operation log
say "5. table counters right after each drain (each copy starts at zero): n_dead_tup|n_tup_upd|n_tup_del|n_tup_ins|n_tup_hot_upd"
for s_ in $OP_ALL; do say "    xprov.op   ${s_%%:*} drain: ${s_#*:}"; done
say "    xprov.lane pinned drain: $LANE_PIN"
say "    jobs (raw) pinned drain: $JOBS_PIN"
[ "$OP_BAD" = 0 ] && v=PASS || v=FAIL
last_op=${OP_ALL##* }; last_op=${last_op#*:}
row "xprov.op dead/upd/del, every drain" "$(cut -d'|' -f1-3 <<<"$last_op" | tr '|' '/')" "" "" "= 0/0/0" "$v"
row "xprov.lane vs jobs dead/upd/del, pinned" "$(cut -d'|' -f1-3 <<<"$LANE_PIN" | tr '|' '/')" \
    "$(cut -d'|' -f1-3 <<<"$JOBS_PIN" | tr '|' '/')" "" "info" ""

# ---------------------------------------------------------------- summary
say ""
say "Summary, ops/s (baseline = raw SQL on the same cluster in this run; ratio = xprov / baseline); bench took $(( SECONDS / 60 ))m$(( SECONDS % 60 ))s"
{
    printf '%s|%s|%s|%s|%s|%s\n' "What" "xprov" "Baseline" "Ratio" "Bar" "Result"
    for r_ in "${ROWS[@]}"; do
        IFS='|' read -r w x b ra ba ve <<<"$r_"
        [[ $x =~ ^[0-9]+$ ]] && x=$(fmt_rate "$x")
        [[ $b =~ ^[0-9]+$ ]] && b=$(fmt_rate "$b")
        [[ $ra =~ ^[0-9.]+$ ]] && ra="${ra}x"
        printf '%s|%s|%s|%s|%s|%s\n' "$w" "${x:--}" "${b:--}" "${ra:--}" "$ba" "${ve:--}"
    done
} | column -t -s '|' -o '  '
say ""
say "Notes:"
say "  - Baseline queue: one classic jobs table with a partial index (priority DESC, run_at, id) WHERE state='ready';"
say "    claim = CTE SKIP LOCKED + UPDATE state='running' RETURNING, complete = DELETE RETURNING -> INSERT job_result."
say "    It has NO per-subject ordering and no one-in-flight-per-subject rule; xprov has both."
say "  - Drains: one pgbench client (-M prepared) loops until a claim comes back empty; rate = completed ops / wall"
say "    time of the pgbench run, on a fresh copy of the same loaded database; completion checked with xprov.stats()."
say "  - Batched enqueue: both sides read the same prebuilt 1000-element jsonb from a table (building it is not timed)."
say "  - Enqueue, 1 op/txn: commit-bound (synchronous_commit=on): the raw INSERT shows what this disk allows."
exit 0
