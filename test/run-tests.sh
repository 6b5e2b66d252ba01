#!/usr/bin/env bash
#
# test/run-tests.sh -- build xprov and run every test suite on a private cluster.
#
# Usage: test/run-tests.sh        (as root; `make test` and .ci/run call this)
#
# Steps:
#  1. Install the Debian packages needed to build and test (only missing ones;
#     `apt-get update` only if the install fails).  Needs root.
#  2. make && make install.
#  3. Start a throw-away cluster (test/lib/cluster.sh: port $XPROV_PORT,
#     default 55432, unix socket only, xprov + pg_cron preloaded).
#  4. pg_regress: `make installcheck` (sql/NAME.sql vs expected/NAME.out; each
#     test does CREATE EXTENSION itself; database contrib_regression).
#  5. pgTAP: pg_prove over test/pgtap/*.sql, in sorted order, all in ONE
#     database ($XPROV_TAP_DB, default xprov_tap) created fresh for the suite.
#     The test targets (test/targets/scim_server.py, rest_server.py) run
#     meanwhile on 127.0.0.1:$XPROV_SCIM_PORT and :$XPROV_REST_PORT, and a
#     second SCIM server without PATCH (--no-patch) on
#     :$XPROV_SCIM_NOPATCH_PORT; pg_prove passes their base URLs as the psql
#     variables scim_url, rest_url and scim_nopatch_url.
#     Each file starts with
#         CREATE EXTENSION IF NOT EXISTS pgtap;
#         CREATE EXTENSION IF NOT EXISTS xprov;
#     and must leave no state that the next file could trip over (wrap in
#     BEGIN ... ROLLBACK where possible, otherwise use fresh tenant ids).  One
#     shared database rather than one per file, because the background worker
#     serves a configured database, not every database a test creates.
#  6. Stop that cluster, then run each executable test/process/*.sh (process-
#     level tests: restarts, kills, faults).  Each starts its own cluster with
#     test/lib/cluster.sh; exit 0 = pass, 77 = skipped, anything else = fail.
#     Output goes to results/process/NAME.log and is printed on failure.
#
# On failure, regression.diffs and the server log are printed.  The last line
# is "N passed, N failed" (", N skipped" when any); exit status is non-zero if
# anything failed.  Units: one pg_regress test, one pgTAP file, one process
# script each.
#
# Environment: XPROV_PORT (55432), XPROV_TAP_DB (xprov_tap),
# XPROV_SUITE_TIMEOUT (seconds per suite / process script, default 1200),
# XPROV_KEEP_CLUSTER=1 (keep the cluster dir for inspection),
# PG_CONFIG (pg_config of the PostgreSQL to build for and test against;
# default: the one on PATH), XPROV_PGBIN (its bin dir; default
# `$PG_CONFIG --bindir`), XPROV_SCIM_PORT (18301), XPROV_REST_PORT (18302),
# XPROV_SCIM_NOPATCH_PORT (18303), XPROV_TARGETS_DIR (test/targets); process
# tests may read more (see each).

set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
export XPROV_ROOT=$ROOT
export XPROV_PORT="${XPROV_PORT:-55432}"
TAP_DB="${XPROV_TAP_DB:-xprov_tap}"
SUITE_TIMEOUT="${XPROV_SUITE_TIMEOUT:-1200}"
# make reads PG_CONFIG from the environment too, so build and tests agree.
export PG_CONFIG="${PG_CONFIG:-pg_config}"
if [ -z "${XPROV_PGBIN:-}" ]; then
	XPROV_PGBIN=$("$PG_CONFIG" --bindir 2>/dev/null || echo /usr/lib/postgresql/15/bin)
fi
export XPROV_PGBIN
PGBIN=$XPROV_PGBIN
SCIM_PORT="${XPROV_SCIM_PORT:-18301}"
REST_PORT="${XPROV_REST_PORT:-18302}"
SCIM_NOPATCH_PORT="${XPROV_SCIM_NOPATCH_PORT:-18303}"
TARGETS_DIR="${XPROV_TARGETS_DIR:-test/targets}"


# Extra postgresql.conf lines for the suite's cluster (see test/lib/cluster.sh).
CLUSTER_SETTINGS=()

passed=0
failed=0
skipped=0
failures=()
show_diagnostics=0

step()
{
	printf '\n=== %s ===\n' "$*"
}

pass()
{
	passed=$((passed + 1))
}

fail()
{
	failed=$((failed + 1))
	failures+=("$1")
	show_diagnostics=1
}

# Test targets: HTTP servers that the connector tests talk to.
target_pids=()

# start_target SCRIPT PORT [ARG...]: start a target in the background and
# wait for its "listening on 127.0.0.1:PORT" line; its output goes to
# results/targets/NAME-PORT.log.
start_target()
{
	local script=$1 port=$2 pid rc=0

	shift 2
	mkdir -p results/targets
	target_start pid "$script" "$port" "results/targets/$(basename "$script" .py)-$port.log" "$@" || rc=$?
	[ -n "$pid" ] && target_pids+=("$pid")
	return $rc
}

stop_targets()
{
	local pid

	for pid in "${target_pids[@]}"; do
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	target_pids=()
}

# Set before cluster_start, so that test/lib/cluster.sh keeps it in its own
# EXIT trap: the targets go away however the script ends.
trap stop_targets EXIT

summary_and_exit()
{
	echo
	if [ ${#failures[@]} -gt 0 ]; then
		echo "FAILED:"
		printf '  %s\n' "${failures[@]}"
	fi
	if [ "$skipped" -gt 0 ]; then
		echo "$passed passed, $failed failed, $skipped skipped"
	else
		echo "$passed passed, $failed failed"
	fi
	if [ "$failed" -eq 0 ]; then
		exit 0
	fi
	exit 1
}

# --------------------------------------------------------------------------
step "packages"

if ! test/install-deps.sh; then
	fail "packages (test/install-deps.sh)"
	summary_and_exit
fi

# --------------------------------------------------------------------------
step "build"

start=$SECONDS
if ! make -j"$(nproc)" || ! make install >/dev/null; then
	fail "build (make / make install)"
	summary_and_exit
fi
echo "built and installed in $((SECONDS - start)) s"

# --------------------------------------------------------------------------
step "cluster"

# shellcheck source=test/lib/cluster.sh
. test/lib/cluster.sh
# shellcheck source=test/lib/target.sh
. test/lib/target.sh
if ! cluster_start "${CLUSTER_SETTINGS[@]}"; then
	fail "cluster start"
	summary_and_exit
fi

# --------------------------------------------------------------------------
step "pg_regress (sql/, expected/)"

# Same rule as REGRESS in the Makefile: sql/*.sql minus the extension script.
regress_tests=()
for f in sql/*.sql; do
	[ -e "$f" ] || continue
	case $(basename "$f") in xprov--*) continue ;; esac
	regress_tests+=("$(basename "$f" .sql)")
done
rm -f regression.diffs regression.out
if [ ${#regress_tests[@]} -eq 0 ]; then
	echo "no pg_regress tests"
else
	rc=0
	mkdir -p results
	timeout --kill-after=30 "$SUITE_TIMEOUT" make -s --no-print-directory installcheck \
		2>&1 | tee results/installcheck.log || rc=$?
	# PG15 prints one line per test: "test NAME ... ok" (serial) or
	# "     NAME ... ok" (parallel group); "failed (ignored)" counts as passed.
	np=$(grep -cE '^(test| ) +[^ ]+ +\.\.\. (ok|failed \(ignored\))' results/installcheck.log || true)
	nf=$(grep -cE '^(test| ) +[^ ]+ +\.\.\. FAILED' results/installcheck.log || true)
	passed=$((passed + np))
	while read -r t; do
		fail "pg_regress: $t"
	done < <(grep -E '^(test| ) +[^ ]+ +\.\.\. FAILED' results/installcheck.log |
		awk '{print ($1 == "test") ? $2 : $1}')
	if [ "$rc" -ne 0 ] && [ "$nf" -eq 0 ]; then
		fail "pg_regress (exit $rc, see output above)"
	fi
fi

# --------------------------------------------------------------------------
step "pgTAP (test/pgtap/*.sql, database $TAP_DB)"

shopt -s nullglob
tap_files=(test/pgtap/*.sql)
shopt -u nullglob
if [ ${#tap_files[@]} -eq 0 ]; then
	echo "no pgTAP files"
elif ! PGOPTIONS="-c client_min_messages=warning" cluster_psql -d postgres \
		-c "DROP DATABASE IF EXISTS $TAP_DB WITH (FORCE)" \
		-c "CREATE DATABASE $TAP_DB"; then
	fail "pgTAP: create database $TAP_DB"
else
	# Files that need no target still run when a target cannot start.
	start_target "$TARGETS_DIR/scim_server.py" "$SCIM_PORT" || fail "test target scim_server.py"
	start_target "$TARGETS_DIR/rest_server.py" "$REST_PORT" || fail "test target rest_server.py"
	start_target "$TARGETS_DIR/scim_server.py" "$SCIM_NOPATCH_PORT" --no-patch ||
		fail "test target scim_server.py --no-patch"
	for f in "${tap_files[@]}"; do
		# One pg_prove per file: exact per-file status, and a hung file is
		# cut off without losing the others' results.
		rc=0
		# client_min_messages: keep "already exists, skipping" notices out
		# of the TAP stream; a file may set it otherwise.
		out=$(PGOPTIONS="-c client_min_messages=warning" \
			timeout --kill-after=30 "$SUITE_TIMEOUT" \
			pg_prove --psql-bin "$PGBIN/psql" -d "$TAP_DB" --nocolor -f "$f" \
			-S "scim_url=http://127.0.0.1:$SCIM_PORT/scim/v2" \
			-S "rest_url=http://127.0.0.1:$REST_PORT/rest" \
			-S "scim_nopatch_url=http://127.0.0.1:$SCIM_NOPATCH_PORT/scim/v2" \
			</dev/null 2>&1) || rc=$?
		printf '%s\n' "$out" | grep -vE '^(All tests successful\.|Files=1, |Result: PASS)' || true
		if [ "$rc" -eq 0 ]; then
			pass
		else
			fail "pgTAP: $f"
		fi
	done
	stop_targets
fi

# --------------------------------------------------------------------------
if [ "$show_diagnostics" = 1 ]; then
	step "diagnostics"
	if [ -s regression.diffs ]; then
		echo "----- regression.diffs -----"
		cat regression.diffs
		echo "----- end of regression.diffs -----"
	fi
	cluster_log
fi
cluster_stop

# --------------------------------------------------------------------------
step "process tests (test/process/*.sh)"

shopt -s nullglob
proc_files=(test/process/*.sh)
shopt -u nullglob
ran_any=0
for f in "${proc_files[@]}"; do
	[ -x "$f" ] || { echo "not executable, skipped: $f"; continue; }
	ran_any=1
	name=$(basename "$f" .sh)
	mkdir -p results/process
	log=results/process/$name.log
	t0=$SECONDS
	rc=0
	timeout --kill-after=30 "$SUITE_TIMEOUT" "$f" </dev/null >"$log" 2>&1 || rc=$?
	case $rc in
		0)
			pass
			echo "ok       $f ($((SECONDS - t0)) s)"
			# lines a passing test marks with "## " are worth seeing anyway
			grep '^## ' "$log" | sed 's/^/    /' || true ;;
		77)
			skipped=$((skipped + 1))
			echo "skipped  $f: $(tail -n 1 "$log")" ;;
		*)
			fail "process: $f (exit $rc)"
			echo "FAILED   $f (exit $rc, $((SECONDS - t0)) s); output:"
			sed 's/^/    /' "$log" ;;
	esac
done
[ "$ran_any" = 1 ] || echo "no process tests"

summary_and_exit
