#!/usr/bin/env bash
#
# Shadows and correlation cases, driven by the background worker against the
# bundled SCIM 2.0 target (test/targets/scim_server.py), checked through the
# public SQL interface (xprov.shadows, xprov.operations, xprov.stats(),
# xprov.correlation_cases, xprov.correlation_decisions, xprov.correlate(),
# xprov.resolve_case(), xprov.purge_tombstones()):
#   - a shadow's lifecycle: conceived while its create is in flight, live and
#     linked with the target's uid, account and version; reaping while its
#     delete is in flight, then a tombstone; a new create of the subject gets a
#     new shadow; an update answered 404 (the account deleted by hand) buries it;
#   - the partial unique indexes: one shadow alive per target account and per
#     exclusive owner; dead ones do not count; purge_tombstones();
#   - the create path: an account on the target with the userName in another
#     case is linked, not duplicated; an account linked to another identity is
#     never touched: the create parks with a collision case, which link cannot
#     take over, reject skips, create_new releases (and the 409 then
#     dead-letters by the decision);
#   - the rules: one foreign shadow matching by email is adopted; two make a
#     disputed case, resolved by linking one, which sticks as a decision;
#   - kill -9 of the worker with a create in flight: done exactly once, on the
#     same shadow;
#   - the postmaster survives all of it.
# Exit 0 = pass.
#
# Environment: XPROV_PORT (cluster port, default 55481), XPROV_SHADOWS_SCIM_PORT
# (SCIM target port, default 18481), XPROV_PGBIN (see test/lib/cluster.sh).

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export XPROV_PORT="${XPROV_PORT:-55481}"
SCIM_PORT="${XPROV_SHADOWS_SCIM_PORT:-18481}"
. test/lib/cluster.sh
. test/lib/check.sh
. test/lib/target.sh

DB=xprov_shadows
SCIM=http://127.0.0.1:$SCIM_PORT
T=e0000000-0000-4000-8000-000000000001

scim_pid=""
scim_start() { target_start scim_pid test/targets/scim_server.py "$SCIM_PORT" "$XPROV_CLUSTER_DIR/scim.log"; }
scim_stop() { target_stop scim_pid; }
fault() { curl -sf -X POST -d "$1" "$SCIM/_admin/fault" >/dev/null; }
stat() { curl -sf "$SCIM/_admin/stats" | python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1], {}, d))" "$1"; }

# scim_post JSON: create a user on the target through its SCIM API; prints its id.
scim_post()
{
	curl -sf -X POST -H 'Content-Type: application/scim+json' -d "$1" "$SCIM/scim/v2/Users" |
		python3 -c "import json,sys; print(json.load(sys.stdin)['id'])"
}
# scim_delete UID: delete a user through the SCIM API; prints the HTTP status.
scim_delete() { curl -s -o /dev/null -w '%{http_code}' -X DELETE "$SCIM/scim/v2/Users/$1"; }
# tuser UID ATTR...: the target's user UID as "value value ..." (meta.version
# for "version"), or "none".
tuser()
{
	curl -sf "$SCIM/_admin/users" | python3 -c "
import json, sys
users = [u for u in json.load(sys.stdin) if u['id'] == sys.argv[1]]
if not users:
    print('none')
else:
    u = users[0]
    print(' '.join(str(u['meta']['version'] if a == 'version' else u.get(a)) for a in sys.argv[2:]))" "$@"
}
# tnamed NAME: "count id" of the target's users whose userName is NAME in any case.
tnamed()
{
	curl -sf "$SCIM/_admin/users" | python3 -c "
import json, sys
users = [u for u in json.load(sys.stdin) if u['userName'].lower() == sys.argv[1].lower()]
print(len(users), users[0]['id'] if len(users) == 1 else '-')" "$1"
}
# reqs OPID: the methods of the requests the target got for an operation, in order.
reqs()
{
	curl -sf "$SCIM/_admin/requests?since=0" | python3 -c "
import json, sys
print(' '.join(r['method'] for r in json.load(sys.stdin) if r['request_id'] == sys.argv[1]) or 'none')" "$1"
}
# inflight OPID METHOD: 1 while the target holds such a request unanswered.
inflight()
{
	curl -sf "$SCIM/_admin/requests?since=0" | python3 -c "
import json, sys
print(sum(1 for r in json.load(sys.stdin)
          if r['request_id'] == sys.argv[1] and r['method'] == sys.argv[2] and r['status'] is None))" "$1" "$2"
}
# requests_to UID: how many requests (any operation) addressed /Users/UID with METHODs other than GET.
writes_to()
{
	curl -sf "$SCIM/_admin/requests?since=0" | python3 -c "
import json, sys
print(sum(1 for r in json.load(sys.stdin)
          if r['path'].endswith('/Users/' + sys.argv[1]) and r['method'] != 'GET'))" "$1"
}

who() { q "SELECT md5('$1')::uuid"; }
# enq CONNECTOR KEY TYPE ATTRIBUTES: enqueue for identity md5(KEY); prints the id.
enq()
{
	q "SELECT xprov.enqueue(tenant_id => '$T', connector_id => '$1', identity_id => md5('$2')::uuid,
		operation_type => '$3', object_class => 'user', attributes => '$4'::jsonb)"
}
status() { q "SELECT status FROM xprov.operations WHERE id = '$1'"; }
wait_status() { wait_for "SELECT status FROM xprov.operations WHERE id = '$1'" "$3" "$2"; }
# shd CONNECTOR KEY EXPR [FILTER]: EXPR over the subject's shadows (alias s of
# xprov.shadows), one row per shadow, oldest first.
shd()
{
	q "SELECT $3 FROM xprov.shadows s WHERE s.connector_id = '$1' AND s.subject = 'i:' || md5('$2')::uuid
		${4:+AND $4} ORDER BY s.created_at, s.dead_at NULLS LAST"
}
# sqlstate SQL [keep]: "ok" or the SQLSTATE SQL raised; without keep, what it did is rolled back.
sqlstate() { q "SELECT try_sql(\$q\$$1\$q\$, ${2:-false})"; }

worker_pid() { q "SELECT pid FROM xprov.worker_status()"; }
postmaster_pid() { head -n 1 "$XPROV_PGDATA/postmaster.pid"; }
checkpointer_pid() { q "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'"; }

on_check_failure()
{
	q "SELECT * FROM xprov.worker_status()" || true
	q "SELECT lane_id, state, attempts, run_at, last_error FROM xprov.lane WHERE state <> 'i'" || true
	q "SELECT id, operation_type, status, attempts, last_error FROM xprov.operations
		WHERE status <> 'completed' ORDER BY created_at DESC LIMIT 8" || true
	q "SELECT id, subject, lifecycle, situation, target_uid, identity_id FROM xprov.shadows
		ORDER BY updated_at DESC LIMIT 8" || true
	grep -E 'xprov|ERROR|FATAL|terminated' "$XPROV_SERVER_LOG" | tail -15 || true
}

cluster_start "xprov.database_name = '$DB'" "xprov.retry_base = '200ms'" "xprov.retry_max = '2s'" \
	"xprov.max_attempts = 4" "xprov.http_timeout = '10s'" >/dev/null
export PGDATABASE=$DB
trap 'scim_stop; cluster_stop' EXIT
scim_start
psql -qAtX -d postgres -c "CREATE DATABASE $DB"
q "CREATE EXTENSION xprov"
create_try_sql
check "one worker runs on $DB" \
	"$(wait_for "SELECT count(*) FROM xprov.worker_status() WHERE database = '$DB'" 20 1)" 1
postmaster0=$(postmaster_pid)
ckpt0=$(checkpointer_pid)
# main: the create path without rules; rules: correlation rules on emails
C=$(q "SELECT xprov.add_connector('$T', 'main', 'scim2', '$SCIM/scim/v2', '{\"timeout_ms\": 8000}')")
R=$(q "SELECT xprov.add_connector('$T', 'rules', 'scim2', '$SCIM/scim/v2', '{\"timeout_ms\": 8000}')")

# --- lifecycle: conceived, live, reaping, tombstone, a new shadow -------------
fault '{"mode": "delay", "delay_ms": 2500, "count": 1, "method": "POST"}'
op=$(enq "$C" lina create '{"userName": "lina@example.com", "displayName": "Lina", "title": null}')
check "create in flight: the target holds the POST" \
	"$(for _ in $(seq 1 50); do [ "$(inflight "$op" POST)" = 1 ] && { echo 1; break; }; sleep 0.1; done)" 1
check "create in flight: the shadow is conceived, without a uid, pending, its owner set" \
	"$(shd "$C" lina "s.lifecycle || ' ' || coalesce(s.target_uid, 'no-uid') || ' ' || s.state || ' ' || (s.identity_id = md5('lina')::uuid)")" \
	"conceived no-uid pending true"
check "create in flight: the operation is in progress, the shadow's 1 pending operation too" \
	"$(status "$op") $(shd "$C" lina "s.pending_operations || ' ' || (SELECT string_agg(p.status, ',') FROM xprov.shadow_pending_operations p WHERE p.shadow_id = s.id)")" \
	"in_progress 1 in_progress"
lina_shadow=$(shd "$C" lina s.id)
check "the create completes" "$(wait_status "$op" completed 15)" completed
read -r n lina_uid <<<"$(tnamed lina@example.com)"
check "one lina on the target" "$n" 1
check "completed: the same shadow is live, linked, active, with the target's uid" \
	"$(shd "$C" lina "s.id || ' ' || s.lifecycle || ' ' || s.situation || ' ' || s.state || ' ' || s.target_uid")" \
	"$lina_shadow live linked active $lina_uid"
check "completed: observed is the account as the target returned it, version its meta.version" \
	"$(shd "$C" lina "(s.observed ->> 'id') || ' ' || (s.observed ->> 'userName') || ' ' || (s.observed_at IS NOT NULL) || ' ' || (s.observed ? 'linked') || ' ' || s.version")" \
	"$lina_uid lina@example.com true false $(tuser "$lina_uid" version)"
check "completed: expected is what was provisioned, nulls stripped" \
	"$(shd "$C" lina "s.expected::text")" '{"userName": "lina@example.com", "displayName": "Lina"}'
check "completed: nothing pending, not dead" "$(shd "$C" lina "s.pending_operations || ' ' || coalesce(s.dead_at::text, 'alive')")" "0 alive"

op=$(enq "$C" lina update '{"displayName": "Lina Two", "nickName": "li"}')
check "an update completes" "$(wait_status "$op" completed 10)" completed
check "update: the same shadow; expected merged; observed and version follow the target" \
	"$(shd "$C" lina "s.id || ' ' || (s.expected ->> 'userName') || ' ' || (s.expected ->> 'displayName') || ' ' || (s.observed ->> 'displayName') || ' ' || s.version")" \
	"$lina_shadow lina@example.com Lina Two Lina Two $(tuser "$lina_uid" version)"
op=$(enq "$C" lina update '{"nickName": null}')
check "an update removing an attribute completes" "$(wait_status "$op" completed 10)" completed
check "update with a null: expected no longer has it, nor has the target" \
	"$(shd "$C" lina "(s.expected ? 'nickName') || ' ' || (s.observed ? 'nickName')") $(tuser "$lina_uid" nickName)" \
	"false false None"

fault '{"mode": "delay", "delay_ms": 2500, "count": 1, "method": "DELETE"}'
op=$(enq "$C" lina delete '{}')
check "delete in flight: the target holds the DELETE" \
	"$(for _ in $(seq 1 50); do [ "$(inflight "$op" DELETE)" = 1 ] && { echo 1; break; }; sleep 0.1; done)" 1
check "delete in flight: the shadow is reaping, still with its uid, pending, 1 pending operation" \
	"$(shd "$C" lina "s.id || ' ' || s.lifecycle || ' ' || s.target_uid || ' ' || s.state || ' ' || s.pending_operations")" \
	"$lina_shadow reaping $lina_uid pending 1"
check "the delete completes" "$(wait_status "$op" completed 15)" completed
check "deleted: the shadow is a tombstone, situation deleted, dead, dead_at set" \
	"$(shd "$C" lina "s.id || ' ' || s.lifecycle || ' ' || s.situation || ' ' || s.state || ' ' || (s.dead_at IS NOT NULL) || ' ' || s.pending_operations")" \
	"$lina_shadow tombstone deleted dead true 0"
check "deleted: the target has no lina, xprov.accounts no longer lists it" \
	"$(tnamed lina@example.com) $(q "SELECT count(*) FROM xprov.accounts WHERE connector_id = '$C' AND identity_id = md5('lina')::uuid")" \
	"0 - 0"
op=$(enq "$C" lina create '{"userName": "lina@example.com", "displayName": "Lina Again"}')
check "a create after the delete completes" "$(wait_status "$op" completed 10)" completed
read -r n lina_uid2 <<<"$(tnamed lina@example.com)"
check "re-created: a new account on the target" "$n $([ "$lina_uid2" != "$lina_uid" ] && echo new)" "1 new"
check "re-created: the tombstone stays, a new shadow is live with the new uid" \
	"$(shd "$C" lina "s.lifecycle || ':' || s.target_uid || ':' || (s.id = '$lina_shadow')" | tr '\n' ' ')" \
	"tombstone:$lina_uid:true live:$lina_uid2:false "
check "re-created: xprov.accounts lists the new account only" \
	"$(q "SELECT string_agg(target_uid, ',') FROM xprov.accounts WHERE connector_id = '$C' AND identity_id = md5('lina')::uuid")" \
	"$lina_uid2"

# --- an update answered 404: the account was deleted by hand ------------------
op=$(enq "$C" gina create '{"userName": "gina@example.com"}')
check "gina's create completes" "$(wait_status "$op" completed 10)" completed
read -r _ gina_uid <<<"$(tnamed gina@example.com)"
check "gina's account deleted by hand on the target" "$(scim_delete "$gina_uid")" 204
op=$(enq "$C" gina update '{"title": "Gone"}')
check "the update answered 404 is dead-lettered" "$(wait_status "$op" dead_letter 10)" dead_letter
check "its error says the account no longer exists, its attempt the 404" \
	"$(q "SELECT (last_error LIKE '%no longer exists%') || ' ' || (SELECT string_agg(http_status::text, ',') FROM xprov.operation_attempts WHERE operation_id = '$op')
		FROM xprov.operations WHERE id = '$op'")" "true 404"
check "the shadow is a tombstone, situation deleted, dead_at set, same uid; no new gina on the target" \
	"$(shd "$C" gina "s.lifecycle || ' ' || s.situation || ' ' || s.state || ' ' || (s.dead_at IS NOT NULL) || ' ' || s.target_uid") $(tnamed gina@example.com)" \
	"tombstone deleted dead true $gina_uid 0 -"

# --- an account in another case on the target is linked, not duplicated ------
ada_uid=$(scim_post '{"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "ADA@Example.com", "displayName": "Ada (before)"}')
users0=$(stat users)
op=$(enq "$C" ada create '{"userName": "ada@example.com", "displayName": "Ada Lovelace"}')
check "ada's create completes" "$(wait_status "$op" completed 10)" completed
check "ada: linked (result has linked: true), on the account that existed" \
	"$(q "SELECT (result ->> 'linked') || ' ' || result_target_uid FROM xprov.operations WHERE id = '$op'")" "true $ada_uid"
check "ada: the target was looked up and patched, not posted to; no new user" \
	"$(reqs "$op"), $(stat users)" "GET PATCH, $users0"
check "ada: the account now has the provisioned values" "$(tuser "$ada_uid" userName displayName)" \
	"ada@example.com Ada Lovelace"
check "ada: the shadow is live, linked, with that uid, and its version" \
	"$(shd "$C" ada "s.lifecycle || ' ' || s.situation || ' ' || s.target_uid || ' ' || s.version || ' ' || (s.observed ? 'linked')")" \
	"live linked $ada_uid $(tuser "$ada_uid" version) false"

# --- the partial unique indexes ----------------------------------------------
check "a second shadow alive for ada's account: unique_violation" \
	"$(sqlstate "INSERT INTO xprov.shadow (tenant_id, connector_id, object_class, lifecycle, target_uid)
		VALUES ('$T', '$C', 'user', 'live', '$ada_uid')")" 23505
check "a second exclusive shadow alive for ada (another account): unique_violation" \
	"$(sqlstate "INSERT INTO xprov.shadow (tenant_id, connector_id, object_class, identity_id, lifecycle, target_uid)
		VALUES ('$T', '$C', 'user', md5('ada')::uuid, 'live', 'another-account')")" 23505
check "a second one not exclusive: allowed" \
	"$(sqlstate "INSERT INTO xprov.shadow (tenant_id, connector_id, object_class, identity_id, lifecycle, target_uid, exclusive)
		VALUES ('$T', '$C', 'user', md5('ada')::uuid, 'live', 'another-account', false)")" ok
check "live without a target_uid, a tombstone without dead_at: check_violation" \
	"$(sqlstate "INSERT INTO xprov.shadow (tenant_id, connector_id, object_class, lifecycle)
		VALUES ('$T', '$C', 'user', 'live')") $(sqlstate "INSERT INTO xprov.shadow (tenant_id, connector_id, object_class, lifecycle, target_uid)
		VALUES ('$T', '$C', 'user', 'tombstone', 'x')")" "23514 23514"
check "a dead shadow of ada's account and owner (a month old) does not conflict" \
	"$(sqlstate "INSERT INTO xprov.shadow (tenant_id, connector_id, object_class, identity_id, lifecycle, target_uid, situation, dead_at)
		VALUES ('$T', '$C', 'user', md5('ada')::uuid, 'tombstone', '$ada_uid', 'deleted', now() - interval '30 days')" true)" ok
check "the old tombstone shows as dead in xprov.shadows (no subject)" \
	"$(q "SELECT s.state || ' ' || coalesce(s.subject, 'none') FROM xprov.shadows s
		WHERE s.target_uid = '$ada_uid' AND s.dead_at < now() - interval '1 day'")" "dead none"
dead0=$(q "SELECT count(*) FROM xprov.shadows WHERE state = 'dead'")
check "purge_tombstones(NULL), purge_tombstones('-1 day'): invalid_parameter_value" \
	"$(sqlstate "SELECT xprov.purge_tombstones(NULL)") $(sqlstate "SELECT xprov.purge_tombstones('-1 day')")" "22023 22023"
check "purge_tombstones() removes the month-old tombstone only" "$(q "SELECT xprov.purge_tombstones()")" 1
check "the recent tombstones stay, and ada's live shadow" \
	"$(q "SELECT count(*) FROM xprov.shadows WHERE state = 'dead'") $(shd "$C" ada "s.lifecycle")" "$((dead0 - 1)) live"
check "a second purge removes nothing" "$(q "SELECT xprov.purge_tombstones('7 days')")" 0

# --- collision: another identity's account has the userName -------------------
op=$(enq "$C" alan create '{"userName": "alan@example.com", "displayName": "Alan"}')
check "alan's create completes" "$(wait_status "$op" completed 10)" completed
read -r _ alan_uid <<<"$(tnamed alan@example.com)"
alan_version=$(tuser "$alan_uid" version)
users0=$(stat users)
writes0=$(writes_to "$alan_uid")
b1=$(enq "$C" bob1 create '{"userName": "ALAN@example.com", "displayName": "Bob One"}')
check "bob1's create with alan's userName (other case) parks" "$(wait_status "$b1" parked 10)" parked
check "bob1: only the lookup reached the target (no POST, no PATCH)" "$(reqs "$b1")" GET
check "bob1: nothing was written to alan's account, which is unchanged; no new user on the target" \
	"$(writes_to "$alan_uid") $(tuser "$alan_uid" userName displayName version) $(stat users)" \
	"$writes0 alan@example.com Alan $alan_version $users0"
check "xprov.stats() counts it as parked, not pending" \
	"$(q "SELECT pending || ' ' || parked FROM xprov.stats('$T', '$C')")" "0 1"
case1=$(q "SELECT id FROM xprov.correlation_cases WHERE operation_id = '$b1'")
check "last_error names the case" \
	"$(q "SELECT last_error LIKE 'parked: correlation case $case1%' FROM xprov.operations WHERE id = '$b1'")" t
check "the attempt history shows the parking" \
	"$(q "SELECT string_agg(outcome || ':' || (error LIKE 'parked: correlation case $case1%'), ' ' ORDER BY attempt)
		FROM xprov.operation_attempts WHERE operation_id = '$b1'")" "parked:true"
check "one open case: create, collision, for bob1, its operation parked" \
	"$(q "SELECT count(*) || ' ' || min(origin) || ' ' || min(situation) || ' ' || bool_and(identity_id = md5('bob1')::uuid)
		|| ' ' || min(operation_status) FROM xprov.correlation_cases WHERE operation_id = '$b1' AND status = 'open'")" \
	"1 create collision true parked"
check "the case's candidate is alan's account, linked to alan" \
	"$(q "SELECT jsonb_array_length(candidates) || ' ' || (candidates -> 0 ->> 'target_uid') || ' '
		|| (candidates -> 0 ->> 'linked_identity' = md5('alan')::uuid::text) FROM xprov.correlation_cases WHERE id = '$case1'")" \
	"1 $alan_uid true"
check "bob1's shadow is proposed, without a uid, marked collision, 1 parked operation" \
	"$(shd "$C" bob1 "s.lifecycle || ' ' || coalesce(s.target_uid, 'no-uid') || ' ' || s.situation || ' ' || s.state || ' '
		|| (SELECT string_agg(p.status, ',') FROM xprov.shadow_pending_operations p WHERE p.shadow_id = s.id)")" \
	"proposed no-uid collision pending parked"
check "alan's shadow is untouched: live, linked, alan's" \
	"$(shd "$C" alan "s.lifecycle || ' ' || s.situation || ' ' || s.target_uid")" "live linked $alan_uid"

check "resolve_case link, with or without alan's uid: refused, the account is alan's (55000)" \
	"$(sqlstate "SELECT xprov.resolve_case('$case1', 'link')") $(sqlstate "SELECT xprov.resolve_case('$case1', 'link', target_uid => '$alan_uid')")" \
	"55000 55000"
check "resolve_case with an unknown decision: 22023" "$(sqlstate "SELECT xprov.resolve_case('$case1', 'maybe')")" 22023
check "resolve_case with an unknown case: 42704" \
	"$(sqlstate "SELECT xprov.resolve_case(gen_random_uuid(), 'reject')")" 42704
check "resolve_case with a NULL case, a NULL decision: 22004" \
	"$(sqlstate "SELECT xprov.resolve_case(NULL, 'reject')") $(sqlstate "SELECT xprov.resolve_case('$case1', NULL)")" "22004 22004"
check "after the refusals the case is still open, the operation parked" \
	"$(q "SELECT status || ' ' || operation_status FROM xprov.correlation_cases WHERE id = '$case1'")" "open parked"
check "resolve_case reject succeeds" "$(sqlstate "SELECT xprov.resolve_case('$case1', 'reject')" true)" ok
check "reject: the operation is skipped, its reason names the case, nothing more was sent" \
	"$(q "SELECT status || ' ' || (last_error LIKE '%correlation case $case1%') FROM xprov.operations WHERE id = '$b1'") $(reqs "$b1")" \
	"skipped true GET"
check "reject: the case is resolved, decision reject" \
	"$(q "SELECT status || ' ' || decision || ' ' || operation_status FROM xprov.correlation_cases WHERE id = '$case1'")" \
	"resolved reject skipped"
check "reject: a rejected decision pairs alan's account and bob1" \
	"$(q "SELECT string_agg(decision || ' ' || (identity_id = md5('bob1')::uuid) || ' ' || (case_id = '$case1'), ',')
		FROM xprov.correlation_decisions WHERE target_uid = '$alan_uid'")" "rejected true true"
check "a second resolve of the case: 55000" "$(sqlstate "SELECT xprov.resolve_case('$case1', 'create_new')")" 55000
check "stats: nothing parked any more" "$(q "SELECT parked FROM xprov.stats('$T', '$C')")" 0

b2=$(enq "$C" bob2 create '{"userName": "Alan@Example.COM", "displayName": "Bob Two"}')
check "bob2's create with alan's userName parks" "$(wait_status "$b2" parked 10)" parked
case2=$(q "SELECT id FROM xprov.correlation_cases WHERE operation_id = '$b2' AND status = 'open'")
check "bob2: a collision case with alan's account" \
	"$(q "SELECT situation || ' ' || (candidates -> 0 ->> 'target_uid') FROM xprov.correlation_cases WHERE id = '$case2'")" \
	"collision $alan_uid"
check "resolve_case create_new succeeds" "$(sqlstate "SELECT xprov.resolve_case('$case2', 'create_new')" true)" ok
check "create_new: a rejected decision pairs alan's account and bob2" \
	"$(q "SELECT decision FROM xprov.correlation_decisions WHERE target_uid = '$alan_uid' AND identity_id = md5('bob2')::uuid")" \
	rejected
check "create_new: the operation runs again and dead-letters on the target's 409" \
	"$(wait_status "$b2" dead_letter 15)" dead_letter
check "create_new: the error says a correlation decision says the account is not this identity's" \
	"$(q "SELECT last_error ~ '409' AND last_error LIKE '%correlation decision says%not this identity''s%'
		FROM xprov.operations WHERE id = '$b2'")" t
check "create_new: the case is resolved create_new" \
	"$(q "SELECT status || ' ' || decision FROM xprov.correlation_cases WHERE id = '$case2'")" "resolved create_new"
check "create_new: bob2 posted once (refused) and patched nothing" \
	"$(reqs "$b2" | tr ' ' '\n' | grep -v GET | tr '\n' ' ')" "POST "
check "after both: alan's account is unchanged, never written to" \
	"$(tuser "$alan_uid" userName displayName version) $(writes_to "$alan_uid")" \
	"alan@example.com Alan $alan_version $writes0"
check "after both: no new user on the target, no duplicate userName" "$(stat users) $(stat duplicate_usernames)" "$users0 []"

# --- rules: foreign shadows matched by email ------------------------------------
psql -qAtX -v ON_ERROR_STOP=1 -v t="$T" -v r="$R" <<'SQL' >/dev/null
CREATE TABLE people (id uuid PRIMARY KEY, tenant_id uuid NOT NULL, email text NOT NULL);
INSERT INTO people VALUES (md5('solo')::uuid, :'t', 'solo@example.com'),
						  (md5('twin')::uuid, :'t', 'twin@example.com');
SELECT xprov.set_identity_source(:'t', 'people'::regclass, '{"id_column": "id", "tenant_column": "tenant_id"}');
SELECT xprov.add_correlation_rule(:'r', 'user',
	'{"items": [{"target": "emails.0.value", "identity": "email", "match": "case_insensitive"}]}');
SQL
# foreign accounts: on the target, and shadows found there (no lane, no owner)
foreign()	# USERNAME EMAIL: create the account and its foreign shadow; prints the uid
{
	local uid
	uid=$(scim_post "{\"schemas\": [\"urn:ietf:params:scim:schemas:core:2.0:User\"], \"userName\": \"$1\", \"emails\": [{\"value\": \"$2\"}]}")
	q "INSERT INTO xprov.shadow (tenant_id, connector_id, object_class, lifecycle, situation, target_uid, observed, observed_at)
		VALUES ('$T', '$R', 'user', 'live', 'unlinked', '$uid',
				jsonb_build_object('id', '$uid', 'userName', '$1', 'emails', jsonb_build_array(jsonb_build_object('value', '$2'))), now())" >/dev/null
	echo "$uid"
}
solo_uid=$(foreign legacy.solo Solo@Example.com)
twin_a=$(foreign legacy.twin.a TWIN@example.com)
twin_b=$(foreign legacy.twin.b twin@Example.com)
solo_shadow=$(q "SELECT id FROM xprov.shadows WHERE target_uid = '$solo_uid'")
users0=$(stat users)

op=$(enq "$R" solo create '{"userName": "solo.new", "emails": [{"value": "solo@example.com"}]}')
check "solo: a create matching one foreign shadow by email completes" "$(wait_status "$op" completed 10)" completed
check "solo: linked to the foreign account, by a PATCH (no lookup, no POST)" \
	"$(q "SELECT (result ->> 'linked') || ' ' || result_target_uid FROM xprov.operations WHERE id = '$op'") $(reqs "$op")" \
	"true $solo_uid PATCH"
check "solo: no new user on the target; the account got the new userName" \
	"$(stat users) $(tuser "$solo_uid" userName)" "$users0 solo.new"
check "solo: the foreign shadow is adopted: the subject's, solo's, live, linked" \
	"$(q "SELECT (s.subject = 'i:' || md5('solo')::uuid) || ' ' || (s.identity_id = md5('solo')::uuid) || ' ' || s.lifecycle
		|| ' ' || s.situation || ' ' || (s.observed ->> 'userName') FROM xprov.shadows s WHERE s.id = '$solo_shadow'")" \
	"true true live linked solo.new"
check "solo: the subject has one shadow alive, the adopted one, the account has one too" \
	"$(shd "$R" solo "s.id" "s.dead_at IS NULL") $(q "SELECT count(*) FROM xprov.shadows WHERE target_uid = '$solo_uid' AND dead_at IS NULL")" \
	"$solo_shadow 1"

op=$(enq "$R" twin create '{"userName": "twin.new", "emails": [{"value": "twin@example.com"}]}')
check "twin: a create matching two foreign shadows parks" "$(wait_status "$op" parked 10)" parked
check "twin: nothing reached the target" "$(reqs "$op")" none
case3=$(q "SELECT id FROM xprov.correlation_cases WHERE operation_id = '$op' AND status = 'open'")
check "twin: a disputed case with both accounts as candidates" \
	"$(q "SELECT situation || ' ' || jsonb_array_length(candidates) || ' '
		|| (SELECT string_agg(e ->> 'target_uid', ',' ORDER BY e ->> 'target_uid') FROM jsonb_array_elements(candidates) e)
		|| ' ' || (identity_id = md5('twin')::uuid) FROM xprov.correlation_cases WHERE id = '$case3'")" \
	"disputed 2 $(printf '%s\n' "$twin_a" "$twin_b" | LC_ALL=C sort | paste -sd,) true"
check "twin: link without naming one: 22023" "$(sqlstate "SELECT xprov.resolve_case('$case3', 'link')")" 22023
check "twin: link to an account that is no candidate: 22023" \
	"$(sqlstate "SELECT xprov.resolve_case('$case3', 'link', target_uid => '$solo_uid')")" 22023
check "twin: still parked after the refusals" "$(status "$op")" parked
check "twin: resolve_case link, naming one candidate, succeeds" \
	"$(sqlstate "SELECT xprov.resolve_case('$case3', 'link', target_uid => '$twin_b')" true)" ok
check "twin: a confirmed decision pairs the chosen account and twin" \
	"$(q "SELECT string_agg(target_uid || ' ' || decision, ',') FROM xprov.correlation_decisions
		WHERE identity_id = md5('twin')::uuid")" "$twin_b confirmed"
check "twin: released, the create completes" "$(wait_status "$op" completed 10)" completed
check "twin: linked to the chosen account" \
	"$(q "SELECT (result ->> 'linked') || ' ' || result_target_uid FROM xprov.operations WHERE id = '$op'")" "true $twin_b"
check "twin: the chosen account got the new userName, the other is untouched" \
	"$(tuser "$twin_b" userName) $(tuser "$twin_a" userName version)" 'twin.new legacy.twin.a W/"1"'
check "twin: the chosen account's foreign shadow is twin's, live, linked" \
	"$(shd "$R" twin "s.target_uid || ' ' || s.lifecycle || ' ' || s.situation" "s.dead_at IS NULL")" "$twin_b live linked"
check "twin: the other foreign shadow stays foreign; no new user on the target" \
	"$(q "SELECT coalesce(s.subject, 'none') || ' ' || coalesce(s.identity_id::text, 'none') || ' ' || s.lifecycle
		FROM xprov.shadows s WHERE s.target_uid = '$twin_a'") $(stat users)" "none none live $users0"
check "twin: correlate() for twin now answers the chosen account as existing_link" \
	"$(q "SELECT string_agg(uid || ' ' || match_type, ',') FROM xprov.correlate('$T', '$R', '{\"identity_id\": \"$(who twin)\"}')")" \
	"$twin_b existing_link"

# --- kill -9 of the worker with a create in flight --------------------------------
check "no crash-restart of the server so far (same checkpointer)" "$(checkpointer_pid)" "$ckpt0"
fault '{"mode": "delay", "delay_ms": 4000, "count": 1, "method": "POST"}'
op=$(enq "$C" kirk create '{"userName": "kirk@example.com", "displayName": "Kirk"}')
check "kill: the target holds the create's POST" \
	"$(for _ in $(seq 1 50); do [ "$(inflight "$op" POST)" = 1 ] && { echo 1; break; }; sleep 0.1; done)" 1
check "kill: the shadow is conceived" "$(shd "$C" kirk "s.lifecycle")" conceived
kirk_shadow=$(shd "$C" kirk s.id)
pid0=$(worker_pid)
kill -9 "$pid0"
sleep 2
check "kill: a new worker runs" \
	"$(wait_for "SELECT count(*) FROM xprov.worker_status() WHERE pid <> $pid0" 60 1)" 1
check "kill: the create completes" "$(wait_status "$op" completed 40)" completed
check "kill: the killed attempt is recorded as worker_restarted" \
	"$(q "SELECT count(*) FROM xprov.operation_attempts WHERE operation_id = '$op' AND outcome = 'worker_restarted'")" 1
sleep 2.5		# the delayed first POST has reached the target by now
read -r n kirk_uid <<<"$(tnamed kirk@example.com)"
check "kill: one kirk on the target, no duplicate userName there" "$n $(stat duplicate_usernames)" "1 []"
check "kill: one shadow for the subject, the conceived one, live with the account's uid" \
	"$(shd "$C" kirk "s.id || ' ' || s.lifecycle || ' ' || s.target_uid")" "$kirk_shadow live $kirk_uid"

check "the postmaster is the same process throughout" "$(postmaster_pid)" "$postmaster0"
check "no process crashed (signal 6/11, PANIC)" \
	"$(grep -cE 'terminated by signal (6|11)|PANIC' "$XPROV_SERVER_LOG" || true)" 0
check "the only crash-restart was the kill -9" \
	"$(grep -cE 'terminated by signal 9' "$XPROV_SERVER_LOG" || true)" 1
[ "$failures" -eq 0 ]
