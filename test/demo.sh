#!/usr/bin/env bash
#
# test/demo.sh -- the main job, end to end: an HR application provisions
# ~3,000 employees to a SCIM 2.0 directory through xprov's background worker,
# while the directory goes through three outages.
#
#   bash test/demo.sh            (as root on Debian 12; installs what it needs)
#
# What it does: installs the Debian packages (test/install-deps.sh), builds
# and installs xprov, starts a private PostgreSQL 15 cluster (test/lib/cluster.sh)
# whose xprov worker serves the database xprov_demo, and starts the bundled
# SCIM target (test/targets/scim_server.py) with a random bearer token.  Then:
#   1. registers a scim2 connector (bearer auth) and shows xprov.connectors;
#   2. in one application transaction, inserts the employees into the app's
#      own table and enqueues their creates, the promotions, transfers and
#      leavers that follow (same identity_id: ordered per person) and a few
#      contractor records the directory will reject, in one enqueue_batch;
#   3. follows the drain live (xprov.stats() + xprov.worker_status());
#   4. meanwhile makes the directory answer 503 for 3 s, drop connections
#      for 2 s and refuse the token (401) for 3 s, and shows the circuit
#      breaker pausing the connector and resuming it;
#   5. prints the outcome and checks it against the directory: every employee
#      exists there exactly once, linked in xprov.accounts, with the title,
#      department and active flag the application has;
#   6. shows the shadows, then hires two more: one whose account the directory
#      already has (linked, not duplicated) and a duplicate HR record of a
#      colleague (parked with a correlation case, which is rejected).
#      Exit 1 if anything does not add up.
#
# Environment:
#   DEMO_KEEP=1           leave the cluster and the SCIM target running
#   DEMO_EMPLOYEES=3000   how many employees the feed brings
#   DEMO_TIMEOUT=90       seconds the drain may take before the demo gives up
#   DEMO_SCIM_PORT=18340  first port tried for the SCIM target (9 more after it)
#   XPROV_PORT=55450      port of the private cluster (it listens on a unix socket only)

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export XPROV_PORT="${XPROV_PORT:-55450}"
SCIM_PORT="${DEMO_SCIM_PORT:-18340}"
EMPLOYEES="${DEMO_EMPLOYEES:-3000}"
TIMEOUT="${DEMO_TIMEOUT:-90}"
KEEP="${DEMO_KEEP:-0}"
DB=xprov_demo
TENANT=a0000000-0000-4000-8000-00000000ac3e
ENTERPRISE=urn:ietf:params:scim:schemas:extension:enterprise:2.0:User

# --- output ------------------------------------------------------------------

if [ -t 1 ]; then
	TTY=1 BOLD=$'\e[1m' DIM=$'\e[2m' RED=$'\e[31m' GREEN=$'\e[32m' YELLOW=$'\e[33m' CYAN=$'\e[36m' OFF=$'\e[0m'
else
	TTY=0 BOLD='' DIM='' RED='' GREEN='' YELLOW='' CYAN='' OFF=''
fi
step() { printf '\n%s== %s%s\n' "$BOLD" "$*" "$OFF"; }
say() { printf '   %s\n' "$*"; }
indent() { sed 's/^/   /'; }
# psql's aligned output, indented, without the blank line after the table
table() { psql -qX -P footer=off "$@" | sed '/^$/d; s/^/   /'; }
# 1234567 -> 1,234,567
num()
{
	local n=$1 out=""
	while [ ${#n} -gt 3 ]; do
		out=",${n: -3}$out"
		n=${n:0:${#n}-3}
	done
	printf '%s' "$n$out"
}
now_ms() { local t=${EPOCHREALTIME/[.,]/}; printf '%d' $((t / 1000)); }
secs() { printf '%d.%d' $(($1 / 1000)) $(($1 % 1000 / 100)); }	# ms -> "12.3"
T0=$(now_ms)

# --- clean-up ------------------------------------------------------------------

scim_pid=""
progress_open=0
on_exit()
{
	local rc=$?

	[ "$progress_open" = 1 ] && printf '\n'
	[ "$TTY" = 1 ] && printf '\e[?25h'		# the cursor, if the progress line hid it
	if [ "$rc" -ne 0 ] && [ -n "${XPROV_SERVER_LOG:-}" ] && [ -f "$XPROV_SERVER_LOG" ]; then
		printf '\n%sdemo failed (exit %d); the last lines of the server log:%s\n' "$RED" "$rc" "$OFF"
		grep -v 'statement:' "$XPROV_SERVER_LOG" | tail -n 15 | indent
	fi
	if [ "$KEEP" = 1 ] && [ -n "${XPROV_CLUSTER_DIR:-}" ]; then
		step "Left running (DEMO_KEEP=1)"
		say "PostgreSQL: psql \"host=$XPROV_CLUSTER_DIR port=$XPROV_PORT dbname=$DB user=postgres\""
		[ -n "$scim_pid" ] && say "SCIM target: $SCIM/scim/v2 (pid $scim_pid, Authorization: Bearer $TOKEN)"
		say "stop both:  runuser -u postgres -- $XPROV_PGBIN/pg_ctl -D $XPROV_PGDATA stop -m fast; ${scim_pid:+kill $scim_pid; }rm -rf $XPROV_CLUSTER_DIR"
		return
	fi
	if [ -n "$scim_pid" ]; then
		kill "$scim_pid" 2>/dev/null || true
		wait "$scim_pid" 2>/dev/null || true
	fi
	cluster_stop
}

# --- 0. setup -------------------------------------------------------------------

step "Setting up: Debian packages, build, a private PostgreSQL 15 cluster, a SCIM 2.0 target"
setup_log=$(mktemp /tmp/xprov-demo-setup.XXXXXX)
trap 'rm -f "$setup_log"' EXIT
say "Debian packages (test/install-deps.sh; the first run on a fresh machine takes a few minutes)"
if ! test/install-deps.sh >"$setup_log" 2>&1; then
	cat "$setup_log"
	exit 1
fi
say "  $(grep -E '^(all |installing:)' "$setup_log" | head -n 1)"
say "make && make install"
if ! { make -s && make -s install; } >"$setup_log" 2>&1; then
	tail -n 40 "$setup_log"
	exit 1
fi
rm -f "$setup_log"
trap - EXIT

. test/lib/cluster.sh
# The worker serves $DB (fixed at server start; created below, it is picked
# up within a second or two).  Short retry delays keep the demo short.
cluster_err=$(mktemp /tmp/xprov-demo-cluster.XXXXXX)
if ! cluster_start "xprov.database_name = '$DB'" \
		"xprov.retry_base = '500ms'" "xprov.retry_max = '4s'" \
		"xprov.http_timeout = '10s'" 2>"$cluster_err" </dev/null; then
	cat "$cluster_err" >&2
	rm -f "$cluster_err"
	exit 1
fi
rm -f "$cluster_err"
trap on_exit EXIT		# calls cluster_stop (test/lib/cluster.sh asks for that)
say "PostgreSQL $("$XPROV_PGBIN/postgres" -V | awk '{print $3}') in $XPROV_CLUSTER_DIR (port $XPROV_PORT, unix socket only)"

psql -qAtX -v ON_ERROR_STOP=1 -c "CREATE DATABASE $DB" >/dev/null
export PGDATABASE=$DB
q() { psql -qAtX -v ON_ERROR_STOP=1 "$@"; }
q -c "CREATE EXTENSION xprov" >/dev/null
say "xprov $(q -c "SELECT extversion FROM pg_extension WHERE extname = 'xprov'") in database $DB; $(q -c "
	SELECT string_agg(key || ' ' || value, ', ' ORDER BY key) FROM jsonb_each_text(xprov.build_info())
	 WHERE key IN ('libcurl', 'cjson', 'duktape')")"
t=$(now_ms)
worker=""
while [ $(($(now_ms) - t)) -lt 30000 ]; do
	worker=$(q -c "SELECT pid FROM xprov.worker_status() WHERE database = current_database() LIMIT 1")
	[ -n "$worker" ] && break
	sleep 0.1
done
if [ -z "$worker" ]; then
	echo "${RED}no xprov worker started for database $DB within 30 s${OFF}" >&2
	exit 1
fi
say "background worker pid $worker serves $DB (it picked the new database up in $(secs $(($(now_ms) - t))) s)"

# The SCIM 2.0 target: in memory, with a fault switch (/_admin/fault).
TOKEN=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
scim_log=$XPROV_CLUSTER_DIR/scim.log
for port in $(seq "$SCIM_PORT" $((SCIM_PORT + 9))); do
	python3 test/targets/scim_server.py --port "$port" --token "$TOKEN" >"$scim_log" 2>&1 &
	scim_pid=$!
	for _ in $(seq 1 50); do
		grep -q listening "$scim_log" && break
		kill -0 "$scim_pid" 2>/dev/null || break
		sleep 0.1
	done
	if grep -q listening "$scim_log"; then
		SCIM_PORT=$port
		break
	fi
	kill "$scim_pid" 2>/dev/null || true
	wait "$scim_pid" 2>/dev/null || true
	scim_pid=""
done
if [ -z "$scim_pid" ]; then
	echo "${RED}the SCIM target did not start on any port of $SCIM_PORT..$((SCIM_PORT + 9)):${OFF}" >&2
	cat "$scim_log" >&2
	exit 1
fi
SCIM=http://127.0.0.1:$SCIM_PORT
say "SCIM 2.0 target (test/targets/scim_server.py) on $SCIM/scim/v2, bearer token required"

fault() { curl -sf -X POST -d "$1" "$SCIM/_admin/fault" >/dev/null; }
scim_stat() { curl -sf "$SCIM/_admin/stats" | python3 -c 'import json, sys; print(eval(sys.argv[1], {}, json.load(sys.stdin)))' "$1"; }

# --- 1. the connector ----------------------------------------------------------

step "1. Register the directory as a scim2 connector (bearer token auth)"
CONN=$(q -v tenant="$TENANT" -v url="$SCIM/scim/v2" -v token="$TOKEN" <<'SQL'
SELECT xprov.add_connector(:'tenant', 'corp-directory', 'scim2', :'url',
		jsonb_build_object('auth', jsonb_build_object('type', 'bearer', 'token', :'token'),
						   'timeout_ms', 5000, 'max_in_flight', 32));
SQL
)
say "SELECT name, kind, base_url, config, auth_type, enabled FROM xprov.connectors;   -- the token is kept apart"
table -c "SELECT name, kind, base_url, config, auth_type, enabled FROM xprov.connectors"
echo
say "A JavaScript hook for the tenant's users (runs in the worker's sandbox before each request):"
HOOK_JS='function hook(ctx) {
  var a = ctx.attributes;
  if (ctx.operation_type === "create" && a.name && a.name.givenName)
    a.nickName = a.name.givenName.toLowerCase();
  return { attributes: a };
}'
q -v tenant="$TENANT" -v conn="$CONN" -v js="$HOOK_JS" >/dev/null <<'SQL'
SELECT xprov.add_hook(:'tenant', :'conn', 'user', 'before', :'js', '{"timeout_ms": 50}');
SQL
sed 's/^/      /' <<<"$HOOK_JS"

# --- 2. the application's transaction --------------------------------------------

step "2. The HR application's transaction: $(num "$EMPLOYEES") hires, what changed since, one enqueue_batch"
# The application's own table, and its job catalogue.
q >/dev/null <<'SQL'
CREATE SCHEMA app;
CREATE TABLE app.job (department text, level int, title text, PRIMARY KEY (department, level));
INSERT INTO app.job VALUES
	('Engineering', 1, 'Software Engineer'), ('Engineering', 2, 'Senior Software Engineer'),
	('Engineering', 3, 'Engineering Manager'),
	('Sales', 1, 'Sales Development Representative'), ('Sales', 2, 'Account Executive'),
	('Sales', 3, 'Regional Sales Director'),
	('Customer Success', 1, 'Support Specialist'), ('Customer Success', 2, 'Customer Success Manager'),
	('Customer Success', 3, 'Head of Support'),
	('Operations', 1, 'Operations Analyst'), ('Operations', 2, 'Logistics Planner'),
	('Operations', 3, 'Operations Manager'),
	('Marketing', 1, 'Marketing Coordinator'), ('Marketing', 2, 'Product Marketing Manager'),
	('Marketing', 3, 'Head of Brand'),
	('Finance', 1, 'Accounts Payable Clerk'), ('Finance', 2, 'Financial Analyst'),
	('Finance', 3, 'Finance Controller'),
	('People', 1, 'Recruiter'), ('People', 2, 'HR Business Partner'), ('People', 3, 'People Director'),
	('Legal', 1, 'Paralegal'), ('Legal', 2, 'Corporate Counsel'), ('Legal', 3, 'General Counsel');
CREATE TABLE app.employee (
	id			uuid PRIMARY KEY DEFAULT gen_random_uuid(),	-- xprov's identity_id
	employee_no	text NOT NULL UNIQUE,
	kind		text NOT NULL,			-- employee | contractor
	given_name	text NOT NULL,
	family_name	text NOT NULL,
	user_name	text UNIQUE,
	email		text,
	department	text NOT NULL,
	level		int NOT NULL,
	title		text NOT NULL,
	active		boolean NOT NULL DEFAULT true
);
SQL

t=$(now_ms)
feed=$(q -F ' ' -v n="$EMPLOYEES" -v conn="$CONN" -v tenant="$TENANT" <<'SQL'
BEGIN;
-- The feed's hires: realistic names; userName first.last, numbered when taken.
INSERT INTO app.employee (employee_no, kind, given_name, family_name, user_name, email, department, level, title)
SELECT p.employee_no, 'employee', p.given_name, p.family_name, p.user_name, p.user_name || '@acme.example',
	   p.department, p.level, j.title
  FROM (SELECT *, lower(given_name || '.' || family_name)
				  || CASE WHEN rn > 1 THEN rn::text ELSE '' END AS user_name
		  FROM (SELECT *, row_number() OVER (PARTITION BY given_name, family_name ORDER BY i) AS rn
				  FROM (SELECT i, 'E' || (100000 + i) AS employee_no,
							   (ARRAY['Olivia','Liam','Emma','Noah','Amelia','Oliver','Ava','Elijah','Sophia',
									  'James','Isabella','William','Mia','Benjamin','Charlotte','Lucas','Harper',
									  'Henry','Evelyn','Theodore','Luna','Jack','Camila','Levi','Gianna',
									  'Alexander','Sofia','Jackson','Aria','Mateo','Scarlett','Daniel','Emily',
									  'Michael','Ella','Mason','Chloe','Sebastian','Layla','Ethan','Nora','Logan',
									  'Zoe','Owen','Hannah','Samuel','Priya','Arjun','Mei','Wei','Yuki','Hiroshi',
									  'Fatima','Omar','Aisha','Diego','Lucia','Carlos','Ingrid','Lars','Anika',
									  'Chiara','Kofi','Amara'])[1 + abs(hashint4(i)) % 64] AS given_name,
							   (ARRAY['Smith','Johnson','Williams','Brown','Jones','Garcia','Miller','Davis',
									  'Rodriguez','Martinez','Hernandez','Lopez','Gonzalez','Wilson','Anderson',
									  'Thomas','Taylor','Moore','Jackson','Martin','Lee','Perez','Thompson',
									  'White','Harris','Sanchez','Clark','Ramirez','Lewis','Robinson','Walker',
									  'Young','Allen','King','Wright','Scott','Torres','Nguyen','Hill','Flores',
									  'Green','Adams','Nelson','Baker','Hall','Rivera','Campbell','Mitchell',
									  'Carter','Roberts','Patel','Kim','Chen','Singh','Muller','Rossi',
									  'Kowalski','Novak','Jensen','Larsen','Okafor','Mensah','Tanaka','Suzuki',
									  'Sato','Ahmed','Khan','Ali','Silva','Santos','Costa','Dubois','Moreau',
									  'Fischer','Weber','Schneider','Bianchi','Romano','Ivanova','Petrov'])
									 [1 + abs(hashint4(i + 1000003)) % 80] AS family_name,
							   CASE WHEN d < 30 THEN 'Engineering' WHEN d < 50 THEN 'Sales'
									WHEN d < 65 THEN 'Customer Success' WHEN d < 75 THEN 'Operations'
									WHEN d < 83 THEN 'Marketing' WHEN d < 90 THEN 'Finance'
									WHEN d < 95 THEN 'People' ELSE 'Legal' END AS department,
							   CASE WHEN l < 6 THEN 1 WHEN l < 9 THEN 2 ELSE 3 END AS level
						  FROM generate_series(1, :n) AS i,
							   LATERAL (SELECT abs(hashint4(i + 2000003)) % 100 AS d,
											   abs(hashint4(i + 3000017)) % 10 AS l) AS h) AS x) AS y) AS p
  JOIN app.job j USING (department, level);

-- Five contractors whose records are not ready: three have no login name
-- yet, two carry HR's onboarding status where SCIM wants a boolean.
INSERT INTO app.employee (employee_no, kind, given_name, family_name, user_name, email, department, level, title)
VALUES ('C900001', 'contractor', 'Ravi', 'Menon', NULL, NULL, 'Engineering', 1, 'Software Engineer'),
	   ('C900002', 'contractor', 'Julia', 'Becker', NULL, NULL, 'Marketing', 1, 'Marketing Coordinator'),
	   ('C900003', 'contractor', 'Tomasz', 'Wojcik', NULL, NULL, 'Operations', 1, 'Operations Analyst'),
	   ('C900004', 'contractor', 'Grace', 'Osei', 'grace.osei.c', 'grace.osei.c@acme.example', 'Finance', 1, 'Accounts Payable Clerk'),
	   ('C900005', 'contractor', 'Marco', 'Ferri', 'marco.ferri.c', 'marco.ferri.c@acme.example', 'Legal', 1, 'Paralegal');

-- What the application hands to xprov, in order.
CREATE TEMP TABLE outbox (seq bigserial, identity_id uuid, operation_type text, attributes jsonb) ON COMMIT DROP;
INSERT INTO outbox (identity_id, operation_type, attributes)
SELECT id, 'create', jsonb_strip_nulls(jsonb_build_object(
		   'userName', user_name,
		   'externalId', employee_no,
		   'name', jsonb_build_object('givenName', given_name, 'familyName', family_name),
		   'displayName', given_name || ' ' || family_name,
		   'emails', CASE WHEN email IS NOT NULL THEN
					 jsonb_build_array(jsonb_build_object('value', email, 'type', 'work', 'primary', true)) END,
		   'title', title,
		   'active', CASE WHEN kind = 'contractor' AND user_name IS NOT NULL THEN to_jsonb('pending'::text)
						  ELSE 'true'::jsonb END,
		   'urn:ietf:params:scim:schemas:extension:enterprise:2.0:User',
			   jsonb_build_object('employeeNumber', employee_no, 'department', department)))
  FROM app.employee ORDER BY kind DESC, employee_no;

-- Promotions (every 9th hire), transfers to the next department (every 23rd),
-- leavers (every 31st): the app updates its row and enqueues the change.
WITH promoted AS (
	UPDATE app.employee e SET level = e.level + 1, title = j.title
	  FROM app.job j
	 WHERE e.kind = 'employee' AND substr(e.employee_no, 2)::int % 9 = 0 AND e.level < 3
	   AND j.department = e.department AND j.level = e.level + 1
	RETURNING e.id, e.employee_no, e.title)
INSERT INTO outbox (identity_id, operation_type, attributes)
SELECT id, 'update', jsonb_build_object('title', title) FROM promoted ORDER BY employee_no;

WITH depts AS (
	SELECT department, coalesce(lead(department) OVER w, first_value(department) OVER w) AS next
	  FROM (SELECT DISTINCT department FROM app.job) d
	WINDOW w AS (ORDER BY department)
), moved AS (
	UPDATE app.employee e SET department = d.next, title = j.title
	  FROM depts d, app.job j
	 WHERE e.kind = 'employee' AND substr(e.employee_no, 2)::int % 23 = 0
	   AND d.department = e.department AND j.department = d.next AND j.level = e.level
	RETURNING e.id, e.employee_no, e.title, e.department)
INSERT INTO outbox (identity_id, operation_type, attributes)
SELECT id, 'update', jsonb_build_object('title', title,
		   'urn:ietf:params:scim:schemas:extension:enterprise:2.0:User', jsonb_build_object('department', department))
  FROM moved ORDER BY employee_no;

WITH gone AS (
	UPDATE app.employee e SET active = false
	 WHERE e.kind = 'employee' AND substr(e.employee_no, 2)::int % 31 = 0
	RETURNING e.id, e.employee_no)
INSERT INTO outbox (identity_id, operation_type, attributes)
SELECT id, 'disable', '{}' FROM gone ORDER BY employee_no;

-- One call.
SELECT clock_timestamp() AS t0 \gset
SELECT count(*) AS n_ops FROM xprov.enqueue_batch((
	SELECT jsonb_agg(jsonb_build_object('tenant_id', :'tenant', 'connector_id', :'conn',
			   'identity_id', identity_id, 'operation_type', operation_type, 'object_class', 'user',
			   'attributes', attributes) ORDER BY seq)
	  FROM outbox)) \gset
SELECT :n_ops,
	   count(*) FILTER (WHERE operation_type = 'create' AND attributes ? 'userName' AND attributes->'active' = 'true'),
	   count(*) FILTER (WHERE operation_type = 'update' AND NOT attributes ? 'urn:ietf:params:scim:schemas:extension:enterprise:2.0:User'),
	   count(*) FILTER (WHERE operation_type = 'update' AND attributes ? 'urn:ietf:params:scim:schemas:extension:enterprise:2.0:User'),
	   count(*) FILTER (WHERE operation_type = 'disable'),
	   count(*) FILTER (WHERE operation_type = 'create' AND NOT (attributes ? 'userName' AND attributes->'active' = 'true')),
	   round(extract(epoch FROM clock_timestamp() - :'t0') * 1000)
  FROM outbox;
COMMIT;
SQL
)
ms_tx=$(($(now_ms) - t))
read -r n_ops n_creates n_promoted n_transferred n_left n_bad ms_batch <<<"$feed"
total=$n_ops
say "BEGIN;"
say "  INSERT INTO app.employee ...                       $(num "$EMPLOYEES") hires + 5 contractors"
say "  UPDATE app.employee ...                            $(num "$n_promoted") promotions, $(num "$n_transferred") transfers, $(num "$n_left") leavers"
say "  SELECT xprov.enqueue_batch('[...]');               $(num "$n_ops") operations in one call: ${BOLD}${ms_batch} ms${OFF}"
say "COMMIT;                                              whole transaction: ${BOLD}${ms_tx} ms${OFF}"
say ""
say "$(num "$n_creates") creates (userName, name, emails, title, enterprise department and employeeNumber),"
say "then the changes, queued behind each person's create (same identity_id: run in order);"
say "5 contractor creates the directory will reject (no userName, or \"active\": \"pending\")."
say "The first create's attributes:"
q -c "SELECT jsonb_pretty(o.attributes) FROM xprov.operations o JOIN app.employee e ON e.id = o.identity_id
	   WHERE e.employee_no = 'E100001' AND o.operation_type = 'create'" | sed 's/^/      /'
say "The worker was woken at commit; it is already working."

# --- 3 + 4. the drain, live, with outages ------------------------------------------

step "3. Draining through the worker, while the directory has a bad day"
say "${DIM}(per create: GET /Users?filter=userName eq \"...\" to correlate, then POST; PATCH for updates and disables)${OFF}"

if [ "$TTY" = 1 ]; then
	COLS=$(tput cols 2>/dev/null || echo 120)
	printf '\e[?25l'
else
	COLS=1000
fi
drain_t0=$t
el=0
event()
{
	[ "$progress_open" = 1 ] && printf '\r\e[K'
	progress_open=0
	printf '   %s%6ss%s  %s\n' "$DIM" "$(secs "$el")" "$OFF" "$*"
}
bar()
{
	local width=20 fill=$(($1 * 20 / $2)) out="" i
	for ((i = 0; i < width; i++)); do
		if [ "$i" -lt "$fill" ]; then out+="#"; else out+="."; fi
	done
	printf '%s' "$out"
}

# The breaker's decisions, as the worker logs them.
BREAKER_RE='xprov worker: (pausing connector|connector .* is answering again)'
breaker_seen=$(grep -cE "$BREAKER_RE" "$XPROV_SERVER_LOG" || true)
breaker_events()
{
	local lines last ms
	lines=$(grep -E "$BREAKER_RE" "$XPROV_SERVER_LOG" | tail -n +$((breaker_seen + 1)) || true)
	[ -n "$lines" ] || return 0
	breaker_seen=$((breaker_seen + $(wc -l <<<"$lines")))
	# What the breaker did since the last sample, net: requests that were
	# already in flight when it opened may close it again for a moment.
	last=$(tail -n 1 <<<"$lines")
	if [[ $last =~ pausing\ connector\ .*\ for\ ([0-9]+)\ ms ]]; then
		ms=${BASH_REMATCH[1]}
		if [ "$paused_since" = 0 ]; then
			paused_since=$now
			event "${CYAN}circuit breaker opens: connector paused for $(secs "$ms") s; its queued operations wait, no attempt spent${OFF}"
			announce_paused=1
		else
			event "${CYAN}circuit breaker: still failing, paused again for $(secs "$ms") s${OFF}"
		fi
	elif [ "$paused_since" != 0 ]; then
		event "${CYAN}circuit breaker closes: the target answered again, connector resumed ($(secs $((now - paused_since))) s after it paused)${OFF}"
		paused_since=0 healthy_since=$now
	fi
}

TICK_SQL="SELECT s.completed, s.pending, s.in_progress, s.failed, s.dead_letter,
		 coalesce(w.in_flight, 0), coalesce(w.paused, 0), coalesce(w.n, 0)
	FROM xprov.stats() s,
		 (SELECT sum(in_flight) AS in_flight, sum(paused_connectors) AS paused, count(*) AS n
			FROM xprov.worker_status() WHERE database = current_database()) w"
phase=0 phase_until=0 paused_since=0 healthy_since=$drain_t0 announce_paused=0 peak=0 last_print=-10000
hist_t=("$drain_t0") hist_c=(0)
completed=0 pending=0 in_progress=0 failed=0 dead=0 in_flight=0 paused=0 workers=0
while :; do
	now=$(now_ms)
	el=$((now - drain_t0))
	if ! sample=$(q -F ' ' -c "$TICK_SQL"); then
		sleep 0.25
		continue
	fi
	read -r completed pending in_progress failed dead in_flight paused workers <<<"$sample"
	finished=$((completed + dead))

	# ops/s over the last second or so
	hist_t+=("$now") hist_c+=("$completed")
	if [ ${#hist_t[@]} -gt 5 ]; then hist_t=("${hist_t[@]:1}") hist_c=("${hist_c[@]:1}"); fi
	rate=0
	dt=$((now - hist_t[0]))
	[ "$dt" -gt 0 ] && rate=$(((completed - hist_c[0]) * 1000 / dt))
	[ "$rate" -gt "$peak" ] && peak=$rate

	# The directory's bad day: three outages, set off by progress, each once
	# the connector has run normally for a moment after the one before.
	calm=0
	[ "$paused_since" = 0 ] && [ $((now - healthy_since)) -ge 500 ] && calm=1
	case $phase in
	0) if [ $((finished * 100)) -ge $((total * 25)) ]; then
		fault '{"mode": "503", "count": -1}'
		event "${YELLOW}target outage: the directory answers 503 Service Unavailable, for 3 s${OFF}"
		phase=1 phase_until=$((now + 3000))
	fi ;;
	1) if [ "$now" -ge "$phase_until" ]; then
		fault '{"mode": "clear"}'
		event "${GREEN}target: the 503s are over${OFF}"
		phase=2
	fi ;;
	2) if [ "$calm" = 1 ] && [ $((finished * 100)) -ge $((total * 45)) ]; then
		fault '{"mode": "drop", "count": -1}'
		event "${YELLOW}target outage: the directory drops every connection without an answer, for 2 s${OFF}"
		phase=3 phase_until=$((now + 2000))
	fi ;;
	3) if [ "$now" -ge "$phase_until" ]; then
		fault '{"mode": "clear"}'
		event "${GREEN}target: answering again${OFF}"
		phase=4
	fi ;;
	4) if [ "$calm" = 1 ] && [ $((finished * 100)) -ge $((total * 65)) ]; then
		fault '{"mode": "401", "count": -1}'
		event "${YELLOW}target outage: the directory rejects our token (401 Unauthorized), for 3 s${OFF}"
		phase=5 phase_until=$((now + 3000))
	fi ;;
	5) if [ "$now" -ge "$phase_until" ]; then
		fault '{"mode": "clear"}'
		event "${GREEN}target: the token is accepted again${OFF}"
		phase=6
	fi ;;
	esac
	breaker_events
	if [ "$announce_paused" = 1 ] && [ "$paused" -gt 0 ]; then
		event "${CYAN}xprov.worker_status(): paused_connectors = $paused, in_flight = $in_flight${OFF}"
		announce_paused=0
	fi

	done_now=0
	[ $((pending + in_progress + failed)) -eq 0 ] && [ "$finished" -ge "$total" ] && done_now=1

	if [ "$COLS" -ge 124 ]; then
		line=$(printf '%6ss [%s] %3d%%  done %s/%s  pending %s  retrying %s  dead %s  in flight %s  paused %s  %s ops/s' \
			"$(secs "$el")" "$(bar "$finished" "$total")" $((finished * 100 / total)) \
			"$(num "$completed")" "$(num "$total")" "$(num "$pending")" "$(num "$failed")" "$dead" \
			"$in_flight" "$paused" "$(num "$rate")")
	else
		line=$(printf '%5ss %3d%% done %s pend %s retry %s dead %s infl %s paused %s %s/s' \
			"$(secs "$el")" $((finished * 100 / total)) "$(num "$completed")" "$(num "$pending")" \
			"$(num "$failed")" "$dead" "$in_flight" "$paused" "$(num "$rate")")
	fi
	if [ "$TTY" = 1 ]; then
		printf '\r   %s\e[K' "${line:0:COLS-4}"
		progress_open=1
	elif [ $((now - last_print)) -ge 2000 ] || [ "$done_now" = 1 ]; then
		printf '   %s\n' "$line"
		last_print=$now
	fi

	if [ "$done_now" = 1 ]; then
		[ "$phase" -lt 6 ] && fault '{"mode": "clear"}'
		break
	fi
	if [ "$el" -gt $((TIMEOUT * 1000)) ]; then
		[ "$progress_open" = 1 ] && printf '\n'
		progress_open=0
		printf '\n%sSTALLED: not finished after %s s (completed %s, pending %s, in progress %s, retrying %s, dead %s; %s worker(s))%s\n' \
			"$RED" "$TIMEOUT" "$completed" "$pending" "$in_progress" "$failed" "$dead" "$workers" "$OFF"
		table -c "SELECT pid, state, operations_done, in_flight, paused_connectors, last_error FROM xprov.worker_status()"
		table -c "SELECT status, count(*), min(next_attempt_at) AS next_attempt, max(last_error) AS an_error FROM xprov.operations WHERE status NOT IN ('completed', 'dead_letter') GROUP BY 1"
		exit 1
	fi
	# about 4 samples a second
	spent=$(($(now_ms) - now))
	[ "$spent" -lt 250 ] && sleep "0.$(printf '%03d' $((250 - spent)))"
done
[ "$progress_open" = 1 ] && printf '\n'
progress_open=0
[ "$TTY" = 1 ] && printf '\e[?25h'
drain_ms=$(($(now_ms) - drain_t0))
say "all $(num "$total") operations settled $(secs "$drain_ms") s after the commit"

# --- 5. the outcome ------------------------------------------------------------------

step "4. Outcome"
say "SELECT * FROM xprov.stats();"
table -c "SELECT * FROM xprov.stats()"
echo
say "Attempts by outcome (xprov.operation_attempts):"
table <<'SQL'
SELECT outcome, coalesce(http_status::text, '') AS http, count(*) AS attempts,
	   coalesce(left(regexp_replace((array_agg(error ORDER BY started_at DESC) FILTER (WHERE error IS NOT NULL))[1],
							 '[0-9a-f]{8}-[0-9a-f-]{27}', '{id}'), 90), '') AS "an error"
  FROM xprov.operation_attempts
 GROUP BY 1, 2 ORDER BY 3 DESC;
SQL
echo
say "Dead letters (xprov.dead_letters; each blocks only its own person):"
table <<'SQL'
SELECT e.employee_no AS "employee", e.given_name || ' ' || e.family_name AS name,
	   d.operation_type AS op, d.attempts, d.last_error
  FROM xprov.dead_letters d JOIN app.employee e ON e.id = d.identity_id
 ORDER BY 1;
SQL

# The directory against the application, person by person.
curl -sf "$SCIM/_admin/users" -o "$XPROV_CLUSTER_DIR/target-users.json"
q -v conn="$CONN" -o "$XPROV_CLUSTER_DIR/app-employees.json" <<'SQL'
SELECT json_agg(json_build_object('user_name', e.user_name, 'uid', a.target_uid, 'title', e.title,
		   'given_name', e.given_name,
		   'department', e.department, 'active', e.active))
  FROM app.employee e
  LEFT JOIN xprov.accounts a ON a.identity_id = e.id AND a.connector_id = :'conn'
 WHERE e.kind = 'employee';
SQL
compared=$(python3 - "$XPROV_CLUSTER_DIR/target-users.json" "$XPROV_CLUSTER_DIR/app-employees.json" "$ENTERPRISE" <<'PY'
import json, sys
users = json.load(open(sys.argv[1]))
emps = json.load(open(sys.argv[2])) or []
ext = sys.argv[3]
by_name = {}
for u in users:
    by_name.setdefault(u["userName"].lower(), []).append(u)
want = {e["user_name"].lower(): e for e in emps}
present = missing = duplicated = wrong_link = stale = no_nick = 0
for name, e in want.items():
    found = by_name.get(name, [])
    if not found:
        missing += 1
        continue
    present += 1
    if len(found) > 1:
        duplicated += 1
    u = found[0]
    if e["uid"] != u["id"]:
        wrong_link += 1
    if (u.get("title"), u.get(ext, {}).get("department"), u.get("active")) != \
            (e["title"], e["department"], e["active"]):
        stale += 1
    if u.get("nickName") != e["given_name"].lower():
        no_nick += 1
extra = sum(len(v) for k, v in by_name.items() if k not in want)
print(present, missing, duplicated, extra, wrong_link, stale, no_nick)
PY
)
read -r present missing duplicated extra wrong_link stale no_nick <<<"$compared"
read -r accounts account_uids <<<"$(q -F ' ' -c "SELECT count(*), count(DISTINCT target_uid) FROM xprov.accounts WHERE connector_id = '$CONN'")"
target_users=$(scim_stat users)
target_dups=$(scim_stat 'len(duplicate_usernames)')
target_requests=$(scim_stat requests_total)
target_by_method=$(scim_stat '", ".join("%s %d" % kv for kv in sorted(requests.items()))')
no_request_id=$(scim_stat request_ids_missing)
read -r s_pending s_in_progress s_failed s_dead s_completed <<<"$(q -F ' ' -c "SELECT pending, in_progress, failed, dead_letter, completed FROM xprov.stats()")"
disabled_on_target=$(python3 -c 'import json, sys; print(sum(1 for u in json.load(open(sys.argv[1])) if u.get("active") is False))' "$XPROV_CLUSTER_DIR/target-users.json")

echo
say "Accounts:  xprov.accounts $(num "$accounts") linked ($(num "$account_uids") distinct target ids)"
say "           directory (/_admin/stats) $(num "$target_users") users, $target_dups duplicate userNames, $(num "$disabled_on_target") disabled"
say "           the directory compared with app.employee, person by person: $(num "$present") present, $missing missing,"
say "           $duplicated duplicated, $extra unexpected, $wrong_link linked to the wrong id, $stale with a stale title/department/active"
say "           $no_nick without the nickName the before hook computes"
read -r hook_runs hook_p50 hook_p99 <<<"$(q -F ' ' -c "SELECT count(*), coalesce(percentile_disc(0.5) WITHIN GROUP (ORDER BY (h->>'duration_us')::int), 0),
	coalesce(percentile_disc(0.99) WITHIN GROUP (ORDER BY (h->>'duration_us')::int), 0)
	FROM xprov.operation_attempts a, jsonb_array_elements(a.hooks) h")"
say "Hook:      the before hook ran $(num "$hook_runs") times (every attempt of every operation; xprov.operation_attempts.hooks),"
say "           ${hook_p50} us per run at the median, ${hook_p99} us at p99"
say "Traffic:   $(num "$target_requests") SCIM requests ($target_by_method), $no_request_id without X-Request-Id"
say "Throughput: $(num "$s_completed") operations completed in $(secs "$drain_ms") s = ${BOLD}$(num $((s_completed * 1000 / drain_ms))) ops/s${OFF} overall, outages included;"
say "           $(num "$peak") ops/s at best (1 s window), through a single-process Python SCIM server"
echo
say "SELECT * FROM xprov.worker_status();"
table -c "SELECT pid, state, operations_done, operations_failed, in_flight, paused_connectors,
	left(last_error, 60) AS last_error FROM xprov.worker_status()"

# --- 5. shadows and correlation ----------------------------------------------------------

step "5. Shadows, and correlation before every create"
say "SELECT lifecycle, state, situation, count(*) FROM xprov.shadows GROUP BY 1, 2, 3;"
table -c "SELECT lifecycle, state, situation, count(*) FROM xprov.shadows GROUP BY 1, 2, 3 ORDER BY 4 DESC"
echo
# Two new hires.  Marie already has an account on the directory (made by hand,
# in another case); Olivia's second HR record is a duplicate of a colleague.
dup_of=$(q -c "SELECT user_name FROM app.employee WHERE employee_no = 'E100002'")
curl -sf -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/scim+json' "$SCIM/scim/v2/Users" \
	-d '{"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "MARIE.CURIE", "title": "Physicist"}' \
	-o "$XPROV_CLUSTER_DIR/marie.json"
marie_uid=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["id"])' "$XPROV_CLUSTER_DIR/marie.json")
users_before=$(scim_stat users)
say "The directory already has an account MARIE.CURIE (made by hand); HR now hires marie.curie,"
say "and enters a colleague a second time as ${dup_of^^}:"
q -v tenant="$TENANT" -v conn="$CONN" -v dup="${dup_of^^}" >/dev/null <<'SQL'
WITH hired AS (
	INSERT INTO app.employee (employee_no, kind, given_name, family_name, user_name, department, level, title)
	VALUES ('E200001', 'employee', 'Marie', 'Curie', 'marie.curie', 'Research', 3, 'Physicist'),
		   ('E200002', 'employee', 'Duplicate', 'Record', :'dup', 'Research', 1, 'Analyst')
	RETURNING id, user_name, given_name, family_name, title)
SELECT count(xprov.enqueue(:'tenant', :'conn', id, 'create', 'user',
		   jsonb_build_object('userName', user_name, 'title', title,
							  'name', jsonb_build_object('givenName', given_name, 'familyName', family_name))))
  FROM hired;
SQL
q -c "SELECT xprov.wait_idle('30 s')" >/dev/null
table <<'SQL'
SELECT e.employee_no AS employee, e.user_name, o.status,
	   coalesce(s.lifecycle || ' / ' || s.situation, '') AS shadow,
	   coalesce(left(s.target_uid, 8) || '...', '') AS target_uid,
	   left(coalesce(o.last_error, ''), 70) AS last_error
  FROM app.employee e
  JOIN xprov.operations o ON o.identity_id = e.id
  LEFT JOIN xprov.shadows s ON s.identity_id = e.id AND s.dead_at IS NULL
 WHERE e.employee_no IN ('E200001', 'E200002') ORDER BY 1;
SQL
marie_linked=$(q -c "SELECT count(*) FROM xprov.shadows s JOIN app.employee e ON e.id = s.identity_id
	WHERE e.employee_no = 'E200001' AND s.target_uid = '$marie_uid' AND s.lifecycle = 'live'")
say "Marie's create found MARIE.CURIE (GET ?filter=userName eq, case-insensitive), checked nobody owns it, linked"
say "it and updated it: no second account.  The duplicate's create found its colleague's account, which belongs"
say "to someone else: it did not create, link or touch anything, and waits for a person (a correlation case):"
echo
say "SELECT situation, reason, candidates FROM xprov.correlation_cases WHERE status = 'open';"
table -c "SELECT situation, left(reason, 100) AS reason, jsonb_array_length(candidates) AS candidates
	FROM xprov.correlation_cases WHERE status = 'open'"
case_id=$(q -c "SELECT id FROM xprov.correlation_cases WHERE status = 'open'")
say "SELECT xprov.resolve_case(id, 'reject');   -- a duplicate record: it must get no account"
q -c "SELECT xprov.resolve_case('$case_id', 'reject')" >/dev/null
table -c "SELECT o.status, o.last_error, (SELECT count(*) FROM xprov.correlation_decisions WHERE case_id = '$case_id') AS decisions_kept
	FROM xprov.operations o JOIN app.employee e ON e.id = o.identity_id WHERE e.employee_no = 'E200002'"
dup_status=$(q -c "SELECT o.status FROM xprov.operations o JOIN app.employee e ON e.id = o.identity_id WHERE e.employee_no = 'E200002'")
users_after=$(scim_stat users)
target_dups_after=$(scim_stat 'len(duplicate_usernames)')

# --- 6. reconciliation ------------------------------------------------------------------

step "6. Reconciliation: the directory drifts; xprov finds out, previews, and repairs"
# correlation needs the identity source: app.employee itself, read in place
q -v tenant="$TENANT" -v conn="$CONN" >/dev/null <<'SQL'
SELECT xprov.set_identity_source(:'tenant', 'app.employee', '{}');
SELECT xprov.add_correlation_rule(:'conn', 'user',
	   '{"name": "userName is user_name", "items": [{"target": "userName", "identity": "user_name", "match": "case_insensitive"}]}');
SQL
say "SELECT xprov.set_identity_source(tenant, 'app.employee', '{}');   -- read in place, through its indexes"
say "SELECT xprov.add_correlation_rule(conn, 'user', '{\"items\": [{\"target\": \"userName\", \"identity\": \"user_name\", \"match\": \"case_insensitive\"}]}');"
echo
# start_run MODE: a reconciliation of the directory, in the tenant's context; prints its id
start_run()
{
	q -v tenant="$TENANT" -v conn="$CONN" -v mode="$1" <<'SQL'
SET xprov.tenant_id = :'tenant';
SELECT xprov.reconcile(:'conn', 'user', :'mode');
SQL
}
uid_of() { q -c "SELECT s.target_uid FROM xprov.shadows s JOIN app.employee e ON e.id = s.identity_id
	WHERE e.employee_no = '$1' AND s.lifecycle = 'live'"; }
scim_call() { curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/scim+json' "$@"; }
patch_body() { printf '{"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{"op": "replace", "path": "%s", "value": %s}]}' "$1" "$2"; }
leaver=$(q -c "SELECT employee_no FROM app.employee WHERE NOT active AND kind = 'employee' ORDER BY employee_no LIMIT 1")
say "Meanwhile, by hand on the directory and in HR:"
say "  an administrator deletes E100010's account                  HTTP $(scim_call -X DELETE "$SCIM/scim/v2/Users/$(uid_of E100010)")"
say "  and gives E100020 another title                              HTTP $(scim_call -X PATCH -d "$(patch_body title '"Chief Everything"')" "$SCIM/scim/v2/Users/$(uid_of E100020)")"
say "  and re-enables the leaver $leaver                             HTTP $(scim_call -X PATCH -d "$(patch_body active true)" "$SCIM/scim/v2/Users/$(uid_of "$leaver")")"
say "  and creates temp.admin, whom nobody owns                     HTTP $(scim_call -X POST -d '{"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "temp.admin"}' "$SCIM/scim/v2/Users")"
q >/dev/null <<'SQL'
INSERT INTO app.employee (employee_no, kind, given_name, family_name, user_name, department, level, title)
VALUES ('E200003', 'employee', 'Ada', 'Lovelace', 'ada.lovelace', 'Research', 2, 'Analyst');
SQL
say "  and creates ada.lovelace for a hire HR entered without provisioning  HTTP $(scim_call -X POST -d '{"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "Ada.Lovelace", "title": "Analyst"}' "$SCIM/scim/v2/Users")"
gone_uid=$(uid_of E100030)
q -c "DELETE FROM app.employee WHERE employee_no = 'E100030'" >/dev/null
say "  HR deletes E100030's record outright (the account stays on the directory)"
echo
say "SET xprov.tenant_id = '$TENANT';   -- reconciliation acts for one tenant"
say "SELECT xprov.reconcile_preview(conn);  SELECT xprov.wait_run(run);"
t=$(now_ms)
run=$(start_run preview)
preview_status=$(q -c "SELECT xprov.wait_run('$run', '60 s')")
say "preview $preview_status in $(secs $(($(now_ms) - t))) s; it changed nothing, and plans:"
table <<SQL
SELECT d.type, coalesce(e.employee_no, '') AS employee,
	   coalesce(d.attributes ->> 'userName', s.observed ->> 'userName', '') AS user_name,
	   coalesce((SELECT string_agg(k || ': ' || (v ->> 'actual') || ' (expected ' || (v ->> 'expected') || ')', ', ')
				   FROM jsonb_each(d.differences) x(k, v)), '') AS differences,
	   d.action, d.status
  FROM xprov.discrepancies d
  LEFT JOIN app.employee e ON e.id = d.identity_id
  LEFT JOIN xprov.shadows s ON s.id = d.shadow_id
 WHERE d.run_id = '$run' ORDER BY d.type;
SQL
preview_found=$(q -c "SELECT string_agg(type, ',' ORDER BY type) FROM xprov.discrepancies WHERE run_id = '$run'")
echo
say "The operator picks reactions, then applies:"
q -v conn="$CONN" >/dev/null <<'SQL'
SELECT xprov.set_reaction(:'conn', 'missing', 'create'), xprov.set_reaction(:'conn', 'mismatch', 'update'),
	   xprov.set_reaction(:'conn', 'orphan', 'disable'), xprov.set_reaction(:'conn', 'unlinked', 'link'),
	   xprov.set_reaction(:'conn', 'unqualified', 'delete');
SQL
say "SELECT xprov.set_reaction(conn, 'missing', 'create');  -- mismatch: update, orphan: disable,"
say "                                                       -- unlinked: link, unqualified: delete"
say "SELECT xprov.reconcile(conn);"
t=$(now_ms)
run=$(start_run apply)
apply_status=$(q -c "SELECT xprov.wait_run('$run', '60 s')")
q -c "SELECT xprov.wait_idle('30 s')" >/dev/null
say "apply $apply_status; its operations ran through the queue like any other ($(secs $(($(now_ms) - t))) s):"
table <<SQL
SELECT d.type, d.action, d.status, coalesce(d.operation_status, '') AS operation, coalesce(s.lifecycle || ' / ' || s.situation, '') AS shadow
  FROM xprov.discrepancies d LEFT JOIN xprov.shadows s ON s.id = d.shadow_id
 WHERE d.run_id = '$run' ORDER BY d.type;
SQL
table -c "SELECT status, statistics -> 'accounts_total' AS accounts, statistics -> 'listing_ms' AS listing_ms,
	statistics -> 'diff_ms' AS diff_ms, statistics -> 'duration_ms' AS total_ms FROM xprov.reconciliation_runs WHERE id = '$run'"
run=$(start_run preview)
q -c "SELECT xprov.wait_run('$run', '60 s')" >/dev/null
after_found=$(q -c "SELECT coalesce(string_agg(type, ',' ORDER BY type), 'none') FROM xprov.discrepancies WHERE run_id = '$run'")
say "A new preview finds: $after_found   (temp.admin is disabled; it stays an orphan until someone deletes or claims it)"
say "Nightly, with pg_cron:  SELECT cron.schedule('xprov-nightly', '0 2 * * *',"
say "  \$\$SET xprov.tenant_id = '$TENANT'; SELECT xprov.reconcile('$CONN')\$\$);"
recreated=$(q -c "SELECT count(*) FROM xprov.shadows s JOIN app.employee e ON e.id = s.identity_id
	WHERE e.employee_no = 'E100010' AND s.lifecycle = 'live'")
title_back=$(curl -sf -H "Authorization: Bearer $TOKEN" "$SCIM/scim/v2/Users/$(uid_of E100020)" | python3 -c 'import json, sys; print(json.load(sys.stdin).get("title"))')
leaver_active=$(curl -sf -H "Authorization: Bearer $TOKEN" "$SCIM/scim/v2/Users/$(uid_of "$leaver")" | python3 -c 'import json, sys; print(json.load(sys.stdin).get("active"))')
gone_status=$(scim_call "$SCIM/scim/v2/Users/$gone_uid")

# --- checks ---------------------------------------------------------------------------

problems=()
expect() { [ "$2" = "$3" ] || problems+=("$1: $2, expected $3"); }
expect "pending + in progress + retrying" $((s_pending + s_in_progress + s_failed)) 0
expect "completed operations" "$s_completed" $((total - n_bad))
expect "dead letters" "$s_dead" "$n_bad"
expect "dead letters that are not the contractors' creates" \
	"$(q -c "SELECT count(*) FROM xprov.dead_letters d JOIN app.employee e ON e.id = d.identity_id WHERE e.kind <> 'contractor' OR d.operation_type <> 'create'")" 0
expect "accounts linked" "$accounts" "$n_creates"
expect "distinct target ids linked" "$account_uids" "$n_creates"
expect "users on the directory" "$target_users" "$n_creates"
expect "employees on the directory" "$present" "$n_creates"
expect "missing on the directory" "$missing" 0
expect "duplicated on the directory" "$duplicated" 0
expect "duplicate userNames on the directory" "$target_dups" 0
expect "unexpected users on the directory" "$extra" 0
expect "accounts linked to the wrong id" "$wrong_link" 0
expect "users with a stale title, department or active flag" "$stale" 0
expect "users without the hook's nickName" "$no_nick" 0
expect "disabled users on the directory" "$disabled_on_target" "$n_left"
expect "requests without X-Request-Id" "$no_request_id" 0
expect "Marie's pre-existing account linked" "$marie_linked" 1
expect "users the two late hires added to the directory" $((users_after - users_before)) 0
expect "duplicate userNames on the directory after them" "$target_dups_after" 0
expect "the duplicate record's create after the case was rejected" "$dup_status" skipped
expect "reconciliation preview" "$preview_status" completed
expect "discrepancies the preview found" "$preview_found" "mismatch,mismatch,missing,orphan,unlinked,unqualified"
expect "reconciliation apply" "$apply_status" completed
expect "discrepancies after the repair" "$after_found" orphan
expect "E100010's account re-created" "$recreated" 1
expect "E100020's title on the directory" "$title_back" "$(q -c "SELECT title FROM app.employee WHERE employee_no = 'E100020'")"
expect "the re-enabled leaver on the directory: active" "$leaver_active" False
expect "the account of the deleted HR record (GET)" "$gone_status" 404

echo
if [ ${#problems[@]} -eq 0 ]; then
	say "${GREEN}${BOLD}OK${OFF}${GREEN}: every employee exists once on the directory, linked, in the state the application holds;"
	say "the 5 rejected contractors wait in the dead-letter queue; no operation was lost or ran twice;"
	say "an account the directory already had was linked, and a duplicate HR record took over nothing;"
	say "reconciliation found every drift made by hand and repaired it through the queue.${OFF}"
else
	say "${RED}${BOLD}FAILED${OFF}${RED}: the numbers do not add up:${OFF}"
	for p in "${problems[@]}"; do say "  - $p"; done
fi

# --- what next --------------------------------------------------------------------------

step "What to try next"
if [ "$KEEP" = 1 ]; then
	say "psql \"host=$XPROV_CLUSTER_DIR port=$XPROV_PORT dbname=$DB user=postgres\""
else
	say "The cluster and the directory stop with the demo; DEMO_KEEP=1 bash test/demo.sh keeps them. Then:"
	say "psql \"host=<cluster dir> port=$XPROV_PORT dbname=$DB user=postgres\""
fi
cat <<EOF | indent
  SELECT * FROM xprov.dead_letters;                        -- why the contractors were rejected
  SELECT xprov.skip(id, 'fixed in HR') FROM xprov.dead_letters;
  SELECT operation_type, status, attempts, finished_at      -- one person's history
    FROM xprov.operations WHERE identity_id = (SELECT id FROM app.employee WHERE employee_no = 'E100207')
   ORDER BY created_at;
  SELECT * FROM xprov.operation_attempts WHERE outcome <> 'completed' ORDER BY started_at LIMIT 20;
  SELECT xprov.enqueue('$TENANT', '$CONN',
         (SELECT id FROM app.employee WHERE employee_no = 'E100001'), 'update', 'user', '{"title": "CTO"}');
curl -s -H "Authorization: Bearer $TOKEN" '$SCIM/scim/v2/Users?filter=userName%20sw%20%22olivia%22&count=3'
curl -s -X POST -d '{"mode": "503", "count": 20}' $SCIM/_admin/fault   # another outage
EOF
say "Elapsed: $(secs $(($(now_ms) - T0))) s in all."

[ ${#problems[@]} -eq 0 ]
