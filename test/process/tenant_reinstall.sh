#!/usr/bin/env bash
#
# The answer on tenant context that each backend keeps (src/tenant_guard.c)
# does not outlive the bindings table: an application's session that was
# refused for a tenant by a binding asks again after DROP EXTENSION and
# CREATE EXTENSION in another session, and is allowed, as a fresh install
# (no bindings) allows it.  Its backend lives through both, as a pooled
# connection would.  (The install empties the bindings table to void kept
# answers.  Here the reinstall's other catalog invalidations void them as
# well; on a long-lived scratch cluster they did not, and the answer was
# stale without it.)  The connectors a backend has enqueued to
# (src/connector_cache.c) do not outlive the connector table either: after
# the reinstall, an enqueue to a connector of the old table is refused.
# Exit 0 = pass.

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export XPROV_PORT="${XPROV_PORT:-55469}"
. test/lib/cluster.sh
. test/lib/check.sh

DB=xprov_reinstall
cluster_start "xprov.workers = 0" >/dev/null
export PGDATABASE=$DB
trap 'cluster_stop' EXIT
psql -qAtX -d postgres -c "CREATE DATABASE $DB"
q "CREATE EXTENSION xprov; CREATE EXTENSION dblink; CREATE ROLE xr_app LOGIN IN ROLE xprov_app"

# one psql per step closes dblink's connection: hold it in a long-lived session instead
coproc HOLDER { psql -qAtX -v ON_ERROR_STOP=1 2>&1; }
hold() { printf '%s\n' "$1" >&"${HOLDER[1]}"; read -r -t 20 line <&"${HOLDER[0]}"; printf '%s' "$line"; }
hold "SELECT dblink_connect('app', 'host=$XPROV_CLUSTER_DIR port=$XPROV_PORT dbname=$DB user=xr_app');" >/dev/null
hold "SELECT x FROM dblink('app', \$\$SELECT set_config('xprov.tenant_id', 'b0000000-0000-4000-8000-0000000000b1', false)\$\$) AS t(x text);" >/dev/null
ask() { hold "SELECT coalesce(x::text, 'none') FROM dblink('app', 'SELECT xprov._session_tenant()') AS t(x uuid);"; }
pid=$(hold "SELECT x FROM dblink('app', 'SELECT pg_backend_pid()') AS t(x int);")

# (an error in that session comes back as a notice too, which would come between the answers)
hold "SET client_min_messages = warning; SELECT 1;" >/dev/null
hold "SELECT dblink_connect('su', 'host=$XPROV_CLUSTER_DIR port=$XPROV_PORT dbname=$DB user=postgres');" >/dev/null
conn=$(hold "SELECT xprov.add_connector('b0000000-0000-4000-8000-0000000000b1', 'reinstall', 'external', NULL);")
# 'N message': how many ids the superuser session's enqueue to that connector returned, and its error
enqueue() { hold "SELECT count(*) || ' ' || split_part(dblink_error_message('su'), E'\\n', 1) FROM dblink('su', \$\$SELECT xprov.enqueue('b0000000-0000-4000-8000-0000000000b1', '$conn', NULL, 'update', 'user', '{}', 'subject')\$\$, false) AS t(id uuid);"; }

check "unbound: the session's tenant" "$(ask)" b0000000-0000-4000-8000-0000000000b1
check "a superuser's session enqueues to the connector" "$(enqueue)" "1 OK"
hold "SELECT xprov.bind_tenant('xr_app', 'a0000000-0000-4000-8000-0000000000a1') IS NULL;" >/dev/null
check "bound to another tenant: refused" "$(ask)" none
hold "DROP EXTENSION xprov CASCADE; SELECT 1;" >/dev/null
hold "CREATE EXTENSION xprov; SELECT 1;" >/dev/null
check "after DROP and CREATE EXTENSION (no bindings): allowed again" "$(ask)" b0000000-0000-4000-8000-0000000000b1
check "the connector of the dropped extension does not exist for that session" "$(enqueue)" \
	"0 ERROR:  connector $conn does not exist"
check "in the same backend all along" "$(hold "SELECT x FROM dblink('app', 'SELECT pg_backend_pid()') AS t(x int);")" "$pid"

hold "SELECT dblink_disconnect('app'), dblink_disconnect('su');" >/dev/null
exec {HOLDER[1]}>&-
q "DROP ROLE xr_app" >/dev/null
[ "$failures" -eq 0 ]
