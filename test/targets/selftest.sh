#!/usr/bin/env bash
#
# test/targets/selftest.sh -- exercise the SCIM and REST test targets with curl
# and assert what they answer.
#
# Usage: test/targets/selftest.sh        (needs python3 and curl)
#
# Starts scim_server.py (with a token, and a second one with --no-patch) and
# rest_server.py on free loopback ports (--port 0), walks through every
# feature (CRUD, uniqueness, filters, paging, PATCH, ETags, faults,
# idempotency, correlation, list paging), measures keep-alive throughput,
# stops the servers with SIGTERM and checks that they exit cleanly.  Stops at
# the first failed check with a message and exit status 1; the last line on
# success is "selftest: N checks passed".
#
# Environment: SELFTEST_MIN_RPS (500): the keep-alive create rate below which
# the throughput check fails.

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

MIN_RPS=${SELFTEST_MIN_RPS:-500}
SCIM_TOKEN=scim-token
REST_TOKEN=rest-token
USER_URN=urn:ietf:params:scim:schemas:core:2.0:User
GROUP_URN=urn:ietf:params:scim:schemas:core:2.0:Group
PATCH_URN=urn:ietf:params:scim:api:messages:2.0:PatchOp

TMP=$(mktemp -d)
declare -A PIDS=() PORTS=()
N=0
STATUS='' RC=0

cleanup() {
	local pid
	for pid in "${PIDS[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	kill "${JSONEVAL_PID-}" 2>/dev/null || true
	rm -rf "$TMP"
}
trap cleanup EXIT

fail() {
	echo "selftest: FAIL: $*" >&2
	if [ -s "$TMP/body" ]; then
		echo "last response: HTTP $STATUS, curl rc $RC:" >&2
		head -c 2000 "$TMP/body" >&2
		echo >&2
	fi
	exit 1
}

pass() { N=$((N + 1)); }

# start NAME SCRIPT ARGS...: start a server on a free port, wait for its
# "listening on 127.0.0.1:PORT" line, set PORTS[NAME].
start() {
	local name=$1 script=$2 i
	shift 2
	python3 "$script" --port 0 "$@" >"$TMP/$name.out" 2>"$TMP/$name.err" &
	PIDS[$name]=$!
	for i in $(seq 200); do
		PORTS[$name]=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9][0-9]*\)$/\1/p' "$TMP/$name.out")
		if [ -n "${PORTS[$name]}" ]; then
			pass
			return
		fi
		kill -0 "${PIDS[$name]}" 2>/dev/null || break
		sleep 0.05
	done
	cat "$TMP/$name.err" >&2
	fail "$name did not start"
}

# stop NAME: SIGTERM, then the server must exit with status 0 within 5 s.
stop() {
	local pid=${PIDS[$1]} rc=0 i
	kill -TERM "$pid"
	for i in $(seq 100); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.05
	done
	kill -0 "$pid" 2>/dev/null && fail "$1 still running 5 s after SIGTERM"
	wait "$pid" || rc=$?
	unset "PIDS[$1]"
	[ "$rc" -eq 0 ] || fail "$1 exited with status $rc after SIGTERM"
	if grep -q Traceback "$TMP/$1.err"; then
		cat "$TMP/$1.err" >&2
		fail "$1 printed a traceback"
	fi
	pass
}

# http METHOD URL [BODY [CURL ARGS...]]: sets STATUS (000 when no response)
# and RC (curl's exit status); body in $TMP/body, headers in $TMP/headers.
http() {
	local method=$1 url=$2 body=${3-}
	shift $(($# < 3 ? $# : 3))
	local args=(-sS -o "$TMP/body" -D "$TMP/headers" -w '%{http_code}' --max-time 10)
	[ "$method" = GET ] || args+=(-X "$method")
	[ -z "$body" ] || args+=(--data-binary "$body")
	: >"$TMP/body"
	RC=0
	STATUS=$(curl "${args[@]}" "$@" "$url" 2>"$TMP/curl.err") || RC=$?
}

# scim METHOD PATH [BODY [CURL ARGS...]]: a request to /scim/v2 with the token,
# a SCIM content type and an X-Request-Id; TOKEN=, CTYPE= and RID= before the
# call override them (curl would send a header given twice twice).
scim() {
	local method=$1 path=$2 body=${3-}
	shift $(($# < 3 ? $# : 3))
	http "$method" "$S/scim/v2$path" "$body" -H "Authorization: Bearer ${TOKEN-$SCIM_TOKEN}" \
		-H "Content-Type: ${CTYPE-application/scim+json}" -H "X-Request-Id: ${RID-selftest-$N}" "$@"
}

# search FILTER [CURL ARGS...]: GET /Users?filter=FILTER
search() {
	local filter=$1
	shift
	scim GET "/Users" "" -G --data-urlencode "filter=$filter" "$@"
}

# rest PATH [BODY [CURL ARGS...]]: POST (with a body) or GET to /rest, with
# the token and an X-Request-Id (CTYPE= and RID= override as for scim).
rest() {
	local path=$1 body=${2-} method=GET
	shift $(($# < 2 ? $# : 2))
	[ -z "$body" ] || method=POST
	http "$method" "$R/rest$path" "$body" -H "Authorization: Bearer $REST_TOKEN" \
		-H "Content-Type: ${CTYPE-application/json}" -H "X-Request-Id: ${RID-selftest-$N}" "$@"
}

# execute OP_ID TYPE UID IDENTITY ATTRIBUTES [CURL ARGS...]: POST /rest/execute
# (UID and IDENTITY: a JSON value, e.g. null or "\"abc\"").
execute() {
	local op=$1 type=$2 uid=$3 identity=$4 attributes=$5
	shift 5
	RID=$op rest /execute "{\"protocol\":1,\"operation_id\":\"$op\",\"type\":\"$type\",\"object_class\":\"user\",\"uid\":$uid,\"identity_id\":$identity,\"attributes\":$attributes,\"attempt\":1}" "$@"
}

# admin BASE METHOD PATH [BODY]
admin() {
	http "$2" "$1/_admin$3" "${4-}" -H "Content-Type: application/json"
	[ "$STATUS" = 200 ] || [ "$STATUS" = 201 ] || fail "admin $2 $3: HTTP $STATUS"
}

# One Python process evaluates every JSON expression: python3 takes up to a
# second to start on some machines, and there are hundreds of checks.
# Protocol: "FILE<TAB>EXPR" in, one line out (a string as is, else JSON).
coproc JSONEVAL {
	python3 -u -c 'import json, sys
for line in sys.stdin:
    path, expr = line.rstrip("\n").split("\t", 1)
    try:
        with open(path) as f:
            d = json.load(f)
        r = eval(expr)
        out = r if isinstance(r, str) else json.dumps(r)
    except Exception as e:
        out = "!error %s: %s" % (type(e).__name__, e)
    print(out.replace("\n", " "))'
}

# j EXPR: a Python expression over the last response body, parsed as `d`.
j() {
	local out
	printf '%s\t%s\n' "$TMP/body" "$1" >&"${JSONEVAL[1]}"
	IFS= read -r out <&"${JSONEVAL[0]}"
	case $out in
	"!error "*) fail "cannot evaluate $1 on the response: ${out#!error }" ;;
	esac
	printf '%s\n' "$out"
}

# expect_status CODE WHAT
expect_status() {
	[ "$STATUS" = "$1" ] || fail "$2: expected HTTP $1, got $STATUS (curl rc $RC)"
	pass
}

# expect WHAT EXPR VALUE: j EXPR must print VALUE.
expect() {
	local got
	got=$(j "$2")
	[ "$got" = "$3" ] || fail "$1: $2 is $got, expected $3"
	pass
}

# expect_header WHAT NAME VALUE
expect_header() {
	local got
	got=$(tr -d '\r' <"$TMP/headers" | sed -n "s/^$2: //Ip" | tail -n 1)
	[ "$got" = "$3" ] || fail "$1: header $2 is '$got', expected '$3'"
	pass
}

# expect_scim_error WHAT STATUS SCIMTYPE ("" for none)
expect_scim_error() {
	expect_status "$2" "$1"
	expect "$1 (error body)" '[d["schemas"], d["status"], d.get("scimType", "")]' \
		"[[\"urn:ietf:params:scim:api:messages:2.0:Error\"], \"$2\", \"$3\"]"
	expect_header "$1 (content type)" Content-Type application/scim+json
}

# expect_no_response WHAT CURL_RC
expect_no_response() {
	if [ "$STATUS" != 000 ] || [ "$RC" != "$2" ]; then
		fail "$1: expected no response (curl rc $2), got HTTP $STATUS, curl rc $RC"
	fi
	pass
}

scim_stat() { admin "$S" GET /stats && j "d[\"$1\"]"; }
rest_stat() { admin "$R" GET /stats && j "d[\"$1\"]"; }

user_json() { # userName [extra members]
	echo "{\"schemas\":[\"$USER_URN\"],\"userName\":\"$1\"${2:+,$2}}"
}

patch_json() { # operations (a JSON array)
	echo "{\"schemas\":[\"$PATCH_URN\"],\"Operations\":$1}"
}

start scim scim_server.py --token "$SCIM_TOKEN"
start nopatch scim_server.py --no-patch
start rest rest_server.py --token "$REST_TOKEN"
S=http://127.0.0.1:${PORTS[scim]}
R=http://127.0.0.1:${PORTS[rest]}

########################################################################
echo "== SCIM: authentication and discovery"

http GET "$S/scim/v2/Users"
expect_scim_error "no token" 401 ""
expect_header "no token" WWW-Authenticate 'Bearer realm="scim"'
TOKEN=wrong scim GET /Users
expect_scim_error "wrong token" 401 ""
scim GET /ServiceProviderConfig
expect_status 200 "ServiceProviderConfig"
expect "ServiceProviderConfig" '[d["patch"]["supported"], d["etag"]["supported"], d["filter"]["supported"], d["bulk"]["supported"]]' '[true, true, true, false]'
scim GET /ResourceTypes
expect "ResourceTypes" '[r["endpoint"] for r in d["Resources"]]' '["/Users", "/Groups"]'
scim GET /ResourceTypes/Group
expect "ResourceTypes/Group" 'd["schema"]' "$GROUP_URN"
scim GET /Schemas
expect "Schemas" 'd["totalResults"] == len(d["Resources"]) == 3' true
scim GET "/Schemas/$USER_URN"
expect "Schemas/User" '[a["name"] for a in d["attributes"] if a["uniqueness"] == "server"]' '["userName"]'
scim GET /Nothing
expect_scim_error "unknown endpoint" 404 ""

########################################################################
echo "== SCIM: create, read, uniqueness, validation"

scim POST /Users "$(user_json Ada '"externalId":"EXT-1","name":{"givenName":"Ada","familyName":"Lovelace"},"emails":[{"value":"ada@work.org","type":"work"},{"value":"ada@home.net","type":"home"}],"title":"Countess","password":"secret"')"
expect_status 201 "create Ada"
ADA=$(j 'd["id"]')
expect "create Ada: id is a UUID" 'len(d["id"]) == 36 and d["id"].count("-") == 4' true
expect "create Ada: meta" '[d["meta"]["resourceType"], d["meta"]["version"], d["meta"]["created"] == d["meta"]["lastModified"]]' '["User", "W/\"1\"", true]'
expect "create Ada: externalId kept, active defaulted" '[d["externalId"], d["active"]]' '["EXT-1", true]'
expect "create Ada: password never returned" '"password" in d' false
expect_header "create Ada" ETag 'W/"1"'
expect_header "create Ada" Location "$S/scim/v2/Users/$ADA"
expect "create Ada: meta.location" 'd["meta"]["location"]' "$S/scim/v2/Users/$ADA"
expect_header "create Ada" Content-Type application/scim+json

scim POST /Users "$(user_json ADA)"
expect_scim_error "duplicate userName, other case" 409 uniqueness
scim POST /Users '{"schemas":["'$USER_URN'"],"displayName":"nobody"}'
expect_scim_error "missing userName" 400 invalidValue
scim POST /Users '{"userName":"noschemas"}'
expect_scim_error "missing schemas" 400 invalidValue
scim POST /Users "$(user_json badactive '"active":"true"')"
expect_scim_error "active not a boolean" 400 invalidValue
scim POST /Users '{"schemas": ["'$USER_URN'"], "userName": '
expect_scim_error "malformed JSON" 400 invalidSyntax
scim POST /Users '[1, 2]'
expect_scim_error "JSON not an object" 400 invalidSyntax
CTYPE=text/plain scim POST /Users "$(user_json plain)"
expect_scim_error "wrong content type" 415 ""
CTYPE="application/json; charset=utf-8" scim POST /Users "$(user_json plainjson)"
expect_status 201 "application/json accepted"
scim DELETE "/Users/$(j 'd["id"]')"
expect_status 204 "delete plainjson"

scim GET "/Users/$ADA"
expect_status 200 "get Ada"
expect "get Ada" '[d["userName"], d["name"]["familyName"]]' '["Ada", "Lovelace"]'
expect_header "get Ada" ETag 'W/"1"'
scim GET /Users/no-such-id
expect_scim_error "get unknown id" 404 ""
scim PATCH /Users "$(patch_json '[]')"
expect_scim_error "PATCH on the collection" 405 ""

scim POST /Users "$(user_json bob '"name":{"familyName":"Builder"},"emails":[{"value":"bob@work.org","type":"work"}],"title":"Builder"')"
BOB=$(j 'd["id"]')
scim POST /Users "$(user_json 'q\"uote\\back' '"name":{"familyName":"Quoter"},"emails":[{"value":"q@home.net","type":"home"}]')"
expect_status 201 "create a userName with a quote and a backslash"
expect "userName with escapes" 'd["userName"]' 'q"uote\back'
QUOTE=$(j 'd["id"]')
scim POST /Users "$(user_json dave '"active":false,"emails":[{"value":"dave@work.org","type":"work"}]')"
DAVE=$(j 'd["id"]')
scim POST /Users "$(user_json erin '"name":{"familyName":"Eriksen"},"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User":{"employeeNumber":"701","department":"R&D"}')"
expect_status 201 "create erin with the enterprise extension"
expect "extension declared in schemas" '"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User" in d["schemas"]' true
ERIN=$(j 'd["id"]')

########################################################################
echo "== SCIM: filters"

# filter_ids FILTER EXPECTED: the ids matched, in creation order.
filter_ids() {
	search "$1"
	expect_status 200 "filter $1"
	expect "filter $1" '[r["id"] for r in d["Resources"]] if d["totalResults"] == len(d["Resources"]) else "bad totalResults"' "$2"
}
ids() { # id... -> JSON list
	local out='' id
	for id in "$@"; do out+="${out:+, }\"$id\""; done
	echo "[$out]"
}

filter_ids 'userName eq "ada"' "$(ids "$ADA")"
filter_ids 'USERNAME EQ "ADA"' "$(ids "$ADA")"
filter_ids 'userName eq "nobody"' '[]'
filter_ids 'userName eq "q\"uote\\back"' "$(ids "$QUOTE")"
filter_ids 'userName co "\""' "$(ids "$QUOTE")"
filter_ids 'userName sw "B"' "$(ids "$BOB")"
filter_ids 'userName co "A"' "$(ids "$ADA" "$QUOTE" "$DAVE")"
filter_ids 'userName ew "IN"' "$(ids "$ERIN")"
filter_ids 'userName ne "ada"' "$(ids "$BOB" "$QUOTE" "$DAVE" "$ERIN")"
filter_ids 'name.familyName eq "builder"' "$(ids "$BOB")"
filter_ids 'name.familyName pr' "$(ids "$ADA" "$BOB" "$QUOTE" "$ERIN")"
filter_ids 'title pr and not (title eq "Builder")' "$(ids "$ADA")"
filter_ids 'emails.value ew "@work.org"' "$(ids "$ADA" "$BOB" "$DAVE")"
filter_ids 'emails[type eq "home"]' "$(ids "$ADA" "$QUOTE")"
filter_ids 'emails[type eq "work" and value sw "b"]' "$(ids "$BOB")"
filter_ids 'emails co "q@"' "$(ids "$QUOTE")"
filter_ids 'active eq false' "$(ids "$DAVE")"
filter_ids 'not (active eq true)' "$(ids "$DAVE")"
filter_ids '(userName eq "ada" or userName eq "bob") and active eq true' "$(ids "$ADA" "$BOB")"
filter_ids 'userName eq "ada" or userName eq "bob" and active eq false' "$(ids "$ADA")"
filter_ids 'externalId eq "EXT-1"' "$(ids "$ADA")"
filter_ids 'externalId eq "ext-1"' '[]'
filter_ids 'externalId eq null' "$(ids "$BOB" "$QUOTE" "$DAVE" "$ERIN")"
filter_ids "id eq \"$BOB\"" "$(ids "$BOB")"
filter_ids 'meta.created gt "2000-01-01T00:00:00Z"' "$(ids "$ADA" "$BOB" "$QUOTE" "$DAVE" "$ERIN")"
filter_ids 'urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber eq "701"' "$(ids "$ERIN")"
filter_ids 'urn:ietf:params:scim:schemas:core:2.0:User:userName eq "bob"' "$(ids "$BOB")"
for bad in 'userName eq' 'userName foo "x"' '(userName eq "x"' 'userName eq "x" junk' \
	'userName eq "unterminated' 'userName eq bareword' 'active gt true' 'userName co 5' \
	'emails[type eq "work"' 'user@name eq "x"' 'userName eq "bad \q escape"' ''; do
	search "$bad"
	expect_scim_error "invalid filter '$bad'" 400 invalidFilter
done

########################################################################
echo "== SCIM: paging"

for i in 1 2 3 4 5 6 7; do
	scim POST /Users "$(user_json "paged$i")"
	expect_status 201 "create paged$i"
done
scim GET /Users "" -G -d count=1000
ALL=$(j '[r["id"] for r in d["Resources"]]')
expect "list all" 'd["totalResults"]' 12
collected=() page=()
for start in 1 4 7 10 13; do
	scim GET /Users "" -G -d startIndex=$start -d count=3
	expect "page at $start" '[d["startIndex"], d["totalResults"], d["itemsPerPage"] == len(d["Resources"])]' "[$start, 12, true]"
	read -ra page <<<"$(j '" ".join(r["id"] for r in d["Resources"])')"
	collected+=("${page[@]}")
done
[ "$(printf '"%s", ' "${collected[@]}" | sed 's/, $//; s/^/[/; s/$/]/')" = "$ALL" ] ||
	fail "paging by 3 does not give every user once, in creation order"
pass
scim GET /Users "" -G -d count=0
expect "count=0" '[d["totalResults"], d["itemsPerPage"], d["Resources"]]' '[12, 0, []]'
scim GET /Users "" -G -d count=5000 -d startIndex=0
expect "count above the maximum, startIndex 0" '[d["startIndex"], d["itemsPerPage"]]' '[1, 12]'
scim GET /Users "" -G -d startIndex=50
expect "startIndex past the end" '[d["totalResults"], d["itemsPerPage"]]' '[12, 0]'
search 'userName sw "paged"' -d startIndex=3 -d count=2
expect "filter with paging" '[d["totalResults"], [r["userName"] for r in d["Resources"]]]' '[7, ["paged3", "paged4"]]'
scim GET /Users "" -G -d count=many
expect_scim_error "count not a number" 400 invalidValue

########################################################################
echo "== SCIM: PUT and If-Match"

scim GET "/Users/$ADA"
CREATED=$(j 'd["meta"]["created"]')
scim PUT "/Users/$ADA" "$(user_json Ada '"externalId":"EXT-1","name":{"givenName":"Ada","familyName":"King"},"emails":[{"value":"ada@work.org","type":"work"},{"value":"ada@home.net","type":"home"}]')" -H 'If-Match: W/"1"'
expect_status 200 "PUT with a matching If-Match"
expect "PUT replaced" '[d["id"], d["name"]["familyName"], "title" in d, d["meta"]["version"], d["meta"]["created"]]' "[\"$ADA\", \"King\", false, \"W/\\\"2\\\"\", \"$CREATED\"]"
expect_header "PUT" ETag 'W/"2"'
scim PUT "/Users/$ADA" "$(user_json Ada)" -H 'If-Match: W/"1"'
expect_scim_error "PUT with a stale If-Match" 412 ""
scim GET "/Users/$ADA"
expect "stale PUT changed nothing" '[d["meta"]["version"], d["name"]["familyName"]]' '["W/\"2\"", "King"]'
scim PUT "/Users/$ADA" "$(user_json Ada '"externalId":"EXT-1","name":{"givenName":"Ada","familyName":"King"},"emails":[{"value":"ada@work.org","type":"work"},{"value":"ada@home.net","type":"home"}]')" -H 'If-Match: *'
expect "PUT without a change keeps the version" 'd["meta"]["version"]' 'W/"2"'
scim PUT "/Users/$BOB" "$(user_json ADA)"
expect_scim_error "PUT to a taken userName" 409 uniqueness
scim PUT /Users/no-such-id "$(user_json ghost)"
expect_scim_error "PUT unknown id" 404 ""
scim PUT "/Users/$BOB" "$(user_json Bobby '"name":{"familyName":"Builder"},"emails":[{"value":"bob@work.org","type":"work"}],"title":"Builder"')"
expect "PUT renames" '[d["userName"], d["meta"]["version"]]' '["Bobby", "W/\"2\""]'
filter_ids 'userName eq "bob"' '[]'
filter_ids 'userName eq "BOBBY"' "$(ids "$BOB")"
scim POST /Users "$(user_json bob)"
expect_status 201 "the old userName is free again"
scim DELETE "/Users/$(j 'd["id"]')"

########################################################################
echo "== SCIM: PATCH"

scim PATCH "/Users/$ADA" "$(patch_json '[{"op":"replace","path":"active","value":false}]')"
expect_status 200 "PATCH replace active"
expect "PATCH replace active" '[d["active"], d["meta"]["version"]]' '[false, "W/\"3\""]'
expect_header "PATCH" ETag 'W/"3"'
scim PATCH "/Users/$ADA" "$(patch_json '[{"op":"Replace","path":"name.givenName","value":"Augusta"}]')"
expect "PATCH Replace (capitalized) name.givenName" '[d["name"]["givenName"], d["name"]["familyName"]]' '["Augusta", "King"]'
scim PATCH "/Users/$ADA" "$(patch_json '[{"op":"add","path":"emails","value":[{"value":"ada@other.org","type":"other"}]}]')"
expect "PATCH add emails appends" '[e["type"] for e in d["emails"]]' '["work", "home", "other"]'
scim PATCH "/Users/$ADA" "$(patch_json '[{"op":"replace","path":"emails[type eq \"work\"].value","value":"countess@work.org"}]')"
expect "PATCH replace a filtered sub-attribute" '[e["value"] for e in d["emails"]]' '["countess@work.org", "ada@home.net", "ada@other.org"]'
scim PATCH "/Users/$ADA" "$(patch_json '[{"op":"remove","path":"emails[type eq \"home\"]"},{"op":"remove","path":"name.givenName"}]')"
expect "PATCH remove a filtered value and a sub-attribute" '[[e["type"] for e in d["emails"]], d["name"]]' '[["work", "other"], {"familyName": "King"}]'
scim PATCH "/Users/$ADA" "$(patch_json '[{"op":"replace","value":{"displayName":"Ada King","name":{"formatted":"Ada King"},"active":true}}]')"
expect "PATCH replace without a path merges" '[d["displayName"], d["name"], d["active"]]' '["Ada King", {"familyName": "King", "formatted": "Ada King"}, true]'
scim PATCH "/Users/$ADA" "$(patch_json '[{"op":"add","value":{"name.givenName":"Ada","urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department":"Math"}}]')"
expect "PATCH add without a path: dotted and extension keys" '[d["name"]["givenName"], d["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"]["department"]]' '["Ada", "Math"]'
VERSION=$(j 'd["meta"]["version"]')
scim PATCH "/Users/$ADA" "$(patch_json '[{"op":"replace","path":"displayName","value":"Ada King"}]')"
expect "PATCH without a change keeps the version" 'd["meta"]["version"]' "$VERSION"
scim PATCH "/Users/$ADA" "$(patch_json '[{"op":"replace","path":"title","value":"X"}]')" -H 'If-Match: W/"1"'
expect_scim_error "PATCH with a stale If-Match" 412 ""
scim PATCH "/Users/$ADA" "$(patch_json '[{"op":"replace","path":"title","value":"X"}]')" -H "If-Match: $VERSION"
expect "PATCH with a matching If-Match" 'd["title"]' X
scim PATCH "/Users/$ADA" '{"Operations":[{"op":"replace","path":"title","value":"Y"}]}'
expect_scim_error "PATCH without schemas" 400 invalidSyntax
scim PATCH "/Users/$ADA" "$(patch_json '[{"op":"move","path":"title","value":"Y"}]')"
expect_scim_error "PATCH with an unknown op" 400 invalidSyntax
scim PATCH "/Users/$ADA" "$(patch_json '[]')"
expect_scim_error "PATCH without operations" 400 invalidSyntax
scim PATCH "/Users/$ADA" "$(patch_json '[{"op":"replace","path":"title"}]')"
expect_scim_error "PATCH replace without a value" 400 invalidSyntax
scim PATCH "/Users/$ADA" "$(patch_json '[{"op":"remove"}]')"
expect_scim_error "PATCH remove without a path" 400 noTarget
scim PATCH "/Users/$ADA" "$(patch_json '[{"op":"replace","path":"emails[type eq","value":"x"}]')"
expect_scim_error "PATCH with a bad path filter" 400 invalidPath
scim PATCH "/Users/$ADA" "$(patch_json '[{"op":"replace","path":"a.b.c","value":"x"}]')"
expect_scim_error "PATCH with a too deep path" 400 invalidPath
scim PATCH "/Users/$ADA" "$(patch_json '[{"op":"replace","path":"id","value":"x"}]')"
expect_scim_error "PATCH id" 400 mutability
scim PATCH "/Users/$ADA" "$(patch_json '[{"op":"replace","path":"emails[type eq \"fax\"].value","value":"x"}]')"
expect_scim_error "PATCH a filter without a match" 400 noTarget
scim PATCH "/Users/$ADA" "$(patch_json '[{"op":"replace","path":"title","value":"Z"},{"op":"replace","path":"userName","value":"dave"}]')"
expect_scim_error "PATCH to a taken userName" 409 uniqueness
scim PATCH "/Users/$ADA" "$(patch_json '[{"op":"remove","path":"userName"}]')"
expect_scim_error "PATCH removing userName" 400 invalidValue
scim GET "/Users/$ADA"
expect "failed PATCHes changed nothing" '[d["title"], d["userName"], d["meta"]["version"]]' '["X", "Ada", "W/\"10\""]'
scim PATCH /Users/no-such-id "$(patch_json '[{"op":"replace","path":"title","value":"X"}]')"
expect_scim_error "PATCH unknown id" 404 ""

########################################################################
echo "== SCIM: groups and members"

scim POST /Groups "{\"schemas\":[\"$GROUP_URN\"],\"displayName\":\"Admins\",\"members\":[{\"value\":\"$ADA\"}]}"
expect_status 201 "create group"
ADMINS=$(j 'd["id"]')
expect "create group" '[d["meta"]["resourceType"], [m["value"] for m in d["members"]]]' "[\"Group\", [\"$ADA\"]]"
scim POST /Groups "{\"schemas\":[\"$GROUP_URN\"],\"displayName\":\"admins\"}"
expect_scim_error "duplicate displayName" 409 uniqueness
scim POST /Groups "{\"schemas\":[\"$GROUP_URN\"]}"
expect_scim_error "group without displayName" 400 invalidValue
scim PATCH "/Groups/$ADMINS" "$(patch_json "[{\"op\":\"add\",\"path\":\"members\",\"value\":[{\"value\":\"$BOB\"},{\"value\":\"$QUOTE\"}]}]")"
expect "PATCH add members" '[m["value"] for m in d["members"]]' "$(ids "$ADA" "$BOB" "$QUOTE")"
scim PATCH "/Groups/$ADMINS" "$(patch_json "[{\"op\":\"add\",\"path\":\"members\",\"value\":[{\"value\":\"$BOB\"}]}]")"
expect "PATCH add an existing member" '[m["value"] for m in d["members"]]' "$(ids "$ADA" "$BOB" "$QUOTE")"
scim PATCH "/Groups/$ADMINS" "$(patch_json "[{\"op\":\"add\",\"path\":\"members\",\"value\":[{\"value\":\"no-such-user\"}]}]")"
expect_scim_error "PATCH add an unknown member" 400 invalidValue
scim GET /Groups "" -G --data-urlencode "filter=members[value eq \"$BOB\"]"
expect "filter groups by member" '[g["id"] for g in d["Resources"]]' "$(ids "$ADMINS")"
scim GET /Groups "" -G --data-urlencode "filter=members.value eq \"$DAVE\""
expect "filter groups by a non-member" 'd["totalResults"]' 0
scim PATCH "/Groups/$ADMINS" "$(patch_json "[{\"op\":\"remove\",\"path\":\"members[value eq \\\"$BOB\\\"]\"}]")"
expect "PATCH remove members[value eq ...]" '[m["value"] for m in d["members"]]' "$(ids "$ADA" "$QUOTE")"
scim PATCH "/Groups/$ADMINS" "$(patch_json "[{\"op\":\"remove\",\"path\":\"members\",\"value\":[{\"value\":\"$QUOTE\"}]}]")"
expect "PATCH remove members with a value" '[m["value"] for m in d["members"]]' "$(ids "$ADA")"
scim PATCH "/Groups/$ADMINS" "$(patch_json "[{\"op\":\"replace\",\"path\":\"members\",\"value\":[{\"value\":\"$BOB\"},{\"value\":\"$DAVE\"}]}]")"
expect "PATCH replace members" '[m["value"] for m in d["members"]]' "$(ids "$BOB" "$DAVE")"
scim PUT "/Groups/$ADMINS" "{\"schemas\":[\"$GROUP_URN\"],\"displayName\":\"Admins\",\"members\":[{\"value\":\"$DAVE\"},{\"value\":\"$ERIN\"}]}"
expect "PUT group" '[m["value"] for m in d["members"]]' "$(ids "$DAVE" "$ERIN")"

########################################################################
echo "== SCIM: DELETE"

scim DELETE "/Users/$DAVE" "" -H 'If-Match: W/"7"'
expect_scim_error "DELETE with a stale If-Match" 412 ""
scim DELETE "/Users/$DAVE"
expect_status 204 "DELETE"
[ ! -s "$TMP/body" ] || fail "DELETE: 204 with a body"
pass
scim GET "/Users/$DAVE"
expect_scim_error "GET after DELETE" 404 ""
scim DELETE "/Users/$DAVE"
expect_scim_error "DELETE again" 404 ""
scim GET "/Groups/$ADMINS"
expect "a deleted user leaves its groups" '[m["value"] for m in d["members"]]' "$(ids "$ERIN")"

########################################################################
echo "== SCIM: test API"

admin "$S" GET /stats
expect "stats" '[d["users"], d["groups"], d["duplicate_usernames"], d["request_ids_missing"], d["requests_total"] == sum(d["requests"].values())]' '[11, 1, [], 1, true]'
SINCE=$(j 'd["requests_total"]')
RID=rid-123 scim GET "/Users/$BOB"
http GET "$S/scim/v2/Users/$BOB" "" -H "Authorization: Bearer $SCIM_TOKEN"
admin "$S" GET "/requests?since=$SINCE"
expect "request log" '[[e["i"], e["method"], e["path"], e["status"], e["request_id"], e["fault"]] for e in d]' \
	"[[$SINCE, \"GET\", \"/scim/v2/Users/$BOB\", 200, \"rid-123\", null], [$((SINCE + 1)), \"GET\", \"/scim/v2/Users/$BOB\", 200, null, null]]"
search 'userName eq "ada"'
admin "$S" GET "/requests?since=$((SINCE + 2))"
expect "request log: query" 'd[0]["query"]' 'filter=userName+eq+%22ada%22'
admin "$S" GET /stats
expect "stats: requests without X-Request-Id" 'd["request_ids_missing"]' 2
admin "$S" GET /users
expect "admin users" 'len(d)' 11
admin "$S" POST /users '[{"userName":"foreign1","externalId":"F1"},{"id":"fixed-id","userName":"foreign2"}]'
expect "admin load users" '[u["userName"] for u in d]' '["foreign1", "foreign2"]'
scim GET /Users/fixed-id
expect "a loaded user with a given id" 'd["userName"]' foreign2
http POST "$S/_admin/users" '[{"userName":"foreign3"},{"userName":"FOREIGN1"}]'
expect_status 409 "admin load: uniqueness"
expect "admin load: partial" '[u["userName"] for u in d["created"]]' '["foreign3"]'
admin "$S" GET /groups
expect "admin groups" '[g["displayName"] for g in d]' '["Admins"]'
http GET "$S/_admin/nothing"
expect_status 404 "unknown admin endpoint"

########################################################################
echo "== SCIM: faults"

users() { scim_stat users; }
U=$(users)
admin "$S" POST /fault '{"mode":"500","count":2,"method":"POST","path_prefix":"/scim/v2/Users"}'
expect "fault queued" 'len(d["faults"])' 1
scim POST /Users "$(user_json f1)"
expect_scim_error "fault 500 (1)" 500 ""
scim GET "/Users/$BOB"
expect_status 200 "fault filtered by method"
scim POST /Groups "{\"schemas\":[\"$GROUP_URN\"],\"displayName\":\"Faulty\"}"
expect_status 201 "fault filtered by path_prefix"
scim DELETE "/Groups/$(j 'd["id"]')"
scim POST /Users "$(user_json f1)"
expect_scim_error "fault 500 (2)" 500 ""
[ "$(users)" = "$U" ] || fail "a faulted create changed state"
pass
scim POST /Users "$(user_json f1)"
expect_status 201 "after the fault count"
U=$((U + 1))

admin "$S" POST /fault '{"mode":"503","retry_after":7}'
scim GET "/Users/$BOB"
expect_scim_error "fault 503" 503 ""
expect_header "fault 503" Retry-After 7
admin "$S" POST /fault '{"mode":"429"}'
scim POST /Users "$(user_json f2)"
expect_scim_error "fault 429" 429 ""
expect_header "fault 429" Retry-After 1
admin "$S" POST /fault '{"mode":"401"}'
scim POST /Users "$(user_json f2)"
expect_scim_error "fault 401" 401 ""
admin "$S" POST /fault '{"mode":"garbage"}'
scim POST /Users "$(user_json f2)"
expect_status 200 "fault garbage"
[ "$(cat "$TMP/body")" = "<html>this is not JSON" ] || fail "fault garbage: body $(cat "$TMP/body")"
pass
admin "$S" POST /fault '{"mode":"drop"}'
scim POST /Users "$(user_json f2)"
expect_no_response "fault drop" 52
[ "$(users)" = "$U" ] || fail "faulted creates changed state"
pass

admin "$S" POST /fault '{"mode":"delay","delay_ms":400}'
t0=$(date +%s%N)
scim POST /Users "$(user_json f2)"
elapsed=$((($(date +%s%N) - t0) / 1000000))
expect_status 201 "fault delay"
[ "$elapsed" -ge 400 ] || fail "fault delay: answered after $elapsed ms"
pass
U=$((U + 1))
admin "$S" POST /fault '{"mode":"hang","delay_ms":1500}'
scim POST /Users "$(user_json f3)" --max-time 0.5
expect_no_response "fault hang (client timeout)" 28

admin "$S" POST /fault '{"mode":"500","after":true}'
scim POST /Users "$(user_json after1)"
expect_scim_error "fault 500 after processing" 500 ""
[ "$(users)" = $((U + 1)) ] || fail "fault 500 after: the user was not created"
pass
scim POST /Users "$(user_json after1)"
expect_scim_error "retry of a create the target did" 409 uniqueness
admin "$S" POST /fault '{"mode":"drop","after":true}'
scim POST /Users "$(user_json after2)"
expect_no_response "fault drop after processing" 52
[ "$(users)" = $((U + 2)) ] || fail "fault drop after: the user was not created"
pass
U=$((U + 2))

admin "$S" POST /fault '{"mode":"503","count":-1}'
for i in 1 2 3; do
	scim GET "/Users/$BOB"
	expect_status 503 "fault count -1 ($i)"
done
admin "$S" POST /fault '{"mode":"clear"}'
expect "fault clear" 'd["faults"]' '[]'
scim GET "/Users/$BOB"
expect_status 200 "after clear"

admin "$S" POST /fault '{"mode":"500"}'
admin "$S" POST /fault '{"mode":"429","retry_after":2}'
scim GET "/Users/$BOB"
expect_status 500 "queued faults (1)"
scim GET "/Users/$BOB"
expect_status 429 "queued faults (2)"
scim GET "/Users/$BOB"
expect_status 200 "queued faults (3)"
admin "$S" POST /fault '{"mode":"500"}'
admin "$S" GET /stats
expect "admin is never faulted" 'd["faults_pending"]' 1
admin "$S" POST /fault '{"mode":"clear"}'
admin "$S" GET "/requests?since=0"
expect "request log: faults" '[e["fault"] for e in d if e["fault"]][-4:]' '["503", "503", "500", "429"]'
expect "request log: drop has no status" '[e["status"] for e in d if e["fault"] == "drop"]' '[null, null]'
for bad in '{"mode":"404"}' '{"mode":"500","count":0}' '{"mode":"delay","after":true}' '{"mode":"500","delay_ms":"x"}' '[]'; do
	http POST "$S/_admin/fault" "$bad"
	expect_status 400 "bad fault $bad"
done

admin "$S" POST /reset
admin "$S" GET /stats
expect "reset" '[d["users"], d["groups"], d["requests_total"], d["faults_pending"]]' '[0, 0, 0, 0]'

########################################################################
echo "== SCIM: --no-patch"

N_URL=http://127.0.0.1:${PORTS[nopatch]}/scim/v2
http POST "$N_URL/Users" "$(user_json np)" -H "Content-Type: application/scim+json"
expect_status 201 "no-patch: create without a token"
NP=$(j 'd["id"]')
http PATCH "$N_URL/Users/$NP" "$(patch_json '[{"op":"replace","path":"title","value":"x"}]')" -H "Content-Type: application/scim+json"
expect_scim_error "no-patch: PATCH" 501 ""
http PUT "$N_URL/Users/$NP" "$(user_json np '"title":"x"')" -H "Content-Type: application/scim+json" -H 'If-Match: W/"1"'
expect "no-patch: PUT" '[d["title"], d["meta"]["version"]]' '["x", "W/\"2\""]'
http GET "$N_URL/ServiceProviderConfig"
expect "no-patch: ServiceProviderConfig" 'd["patch"]["supported"]' false

########################################################################
echo "== REST: health, auth, validation"

http GET "$R/rest/health" "" -H "X-Request-Id: noauth"
expect_status 401 "REST without a token"
expect "REST 401 body" 'd["retryable"]' false
rest /health
expect "REST health" 'd' '{"ok": true}'
rest /nothing
expect_status 404 "REST unknown endpoint"

OP1=11111111-1111-4111-8111-000000000001
ID1=aaaaaaaa-0000-4000-8000-000000000001
execute "$OP1" create null "\"$ID1\"" '{"userName":"ada","title":"Countess","gone":null}'
expect_status 201 "REST create"
UID1=$(j 'd["uid"]')
expect "REST create" '[d["identity_id"], d["enabled"], d["attributes"]]' "[\"$ID1\", true, {\"userName\": \"ada\", \"title\": \"Countess\"}]"
cp "$TMP/body" "$TMP/first"
execute "$OP1" create null "\"$ID1\"" '{"userName":"ada","title":"Countess","gone":null}'
expect_status 201 "REST replay: same status"
cmp -s "$TMP/body" "$TMP/first" || fail "REST replay: a different body"
pass
RID=$OP1 rest /execute "{\"protocol\":1,\"operation_id\":\"$OP1\",\"type\":\"create\",\"object_class\":\"user\",\"uid\":null,\"identity_id\":\"$ID1\",\"attributes\":{\"userName\":\"ada\",\"title\":\"Countess\",\"gone\":null},\"attempt\":2}"
expect_status 201 "REST replay of attempt 2"
execute "$OP1" update "\"$UID1\"" null '{}'
expect_status 422 "REST operation_id reused for another request"
expect "REST 422" 'd["retryable"]' false
admin "$R" GET /stats
expect "REST stats after replays" '[d["accounts"], d["executions"], d["replays"]]' '[1, 1, 2]'

execute 11111111-1111-4111-8111-000000000002 create null "\"$ID1\"" '{"userName":"ada","mail":"ada@x"}'
expect_status 200 "REST create correlated by identity_id"
expect "REST correlation" '[d["uid"], d["attributes"]]' "[\"$UID1\", {\"userName\": \"ada\", \"title\": \"Countess\", \"mail\": \"ada@x\"}]"
execute 11111111-1111-4111-8111-000000000003 update "\"$UID1\"" null '{"title":"Analyst","mail":null}'
expect "REST update merges, null removes" 'd["attributes"]' '{"userName": "ada", "title": "Analyst"}'
execute 11111111-1111-4111-8111-000000000004 update null "\"$ID1\"" '{"dept":"math"}'
expect "REST update by identity_id" '[d["uid"], d["attributes"]["dept"]]' "[\"$UID1\", \"math\"]"
execute 11111111-1111-4111-8111-000000000005 disable "\"$UID1\"" null '{}'
expect "REST disable" 'd["enabled"]' false
execute 11111111-1111-4111-8111-000000000006 enable null "\"$ID1\"" '{}'
expect "REST enable" 'd["enabled"]' true
execute 11111111-1111-4111-8111-000000000007 update '"no-such-uid"' null '{}'
expect_status 404 "REST update unknown uid"
expect "REST 404" 'd' '{"error": "not found", "retryable": false}'
execute 11111111-1111-4111-8111-000000000008 update null null '{}'
expect_status 400 "REST update without uid and identity_id"
execute 11111111-1111-4111-8111-000000000009 create '"my-uid"' null '{"userName":"given"}'
expect "REST create with a uid" '[d["uid"], d["identity_id"]]' '["my-uid", null]'
execute 11111111-1111-4111-8111-000000000010 create '"my-uid"' null '{"userName":"again"}'
expect_status 409 "REST create with a taken uid"
for bad in '{"protocol":2,"operation_id":"x","type":"create","object_class":"user"}' \
	'{"protocol":1,"operation_id":"","type":"create","object_class":"user"}' \
	'{"protocol":1,"operation_id":"x","type":"rename","object_class":"user"}' \
	'{"protocol":1,"operation_id":"x","type":"create","object_class":"user","attributes":[]}' \
	'{"protocol":1,"operation_id":"x","type":"create","object_class":"user","attempt":0}' \
	'{"protocol":1,"operation_id":"x","type":"create"' '"x"'; do
	rest /execute "$bad"
	expect_status 400 "REST bad request $bad"
	expect "REST 400" 'd["retryable"]' false
done
CTYPE=text/plain rest /execute '{}'
expect_status 415 "REST wrong content type"
rest /execute
expect_status 405 "REST GET /execute"

OPD=11111111-1111-4111-8111-000000000011
execute "$OPD" delete "\"$UID1\"" null '{}'
expect "REST delete" 'd' "{\"uid\": \"$UID1\"}"
execute 11111111-1111-4111-8111-000000000012 delete "\"$UID1\"" null '{}'
expect_status 404 "REST delete again"
execute "$OPD" delete "\"$UID1\"" null '{}'
expect_status 200 "REST replay of the delete"
execute 11111111-1111-4111-8111-000000000013 create null "\"$ID1\"" '{"userName":"ada"}'
expect_status 201 "REST create after delete: a new account"

http POST "$R/rest/execute" '{"protocol":1,"operation_id":"norid","type":"create","object_class":"user"}' \
	-H "Authorization: Bearer $REST_TOKEN" -H "Content-Type: application/json"
expect_status 201 "REST execute without X-Request-Id"
RID=other rest /execute '{"protocol":1,"operation_id":"mismatch","type":"create","object_class":"user"}'
expect_status 201 "REST execute with another X-Request-Id"
admin "$R" GET /stats
expect "REST stats: request ids" '[d["request_ids_missing"], d["request_id_mismatches"]]' '[1, 1]'

########################################################################
echo "== REST: list"

admin "$R" POST /reset
for i in $(seq 1 25); do
	execute "22222222-2222-4222-8222-$(printf %012d "$i")" create null "\"bbbbbbbb-0000-4000-8000-$(printf %012d "$i")\"" "{\"n\":$i}" >/dev/null
	expect_status 201 "REST create $i"
done
RID=g1 rest /execute '{"protocol":1,"operation_id":"g1","type":"create","object_class":"group","attributes":{"name":"g"}}'
admin "$R" POST /accounts '[{"attributes":{"n":26}},{"uid":"dup-a","identity_id":"same"},{"uid":"dup-b","identity_id":"same","enabled":false}]'
expect "REST load accounts" '[a["identity_id"] for a in d]' '[null, "same", "same"]'
admin "$R" GET /stats
expect "REST duplicate identities" '[d["accounts"], d["duplicate_identity_ids"]]' '[29, ["same"]]'
cursor='' seen=()
for pageno in 1 2 3 4; do
	rest "/list?object_class=user&limit=10${cursor:+&cursor=$cursor}"
	expect_status 200 "REST list page $pageno"
	read -ra page <<<"$(j '" ".join(str(i["attributes"].get("n", i["uid"])) for i in d["items"])')"
	seen+=("${page[@]}")
	cursor=$(j 'd["next_cursor"] or ""')
	[ -n "$cursor" ] || break
done
[ "$pageno" = 3 ] || fail "REST list: $pageno pages, expected 3"
[ "${seen[*]}" = "$(seq -s ' ' 1 26) dup-a dup-b" ] || fail "REST list: got ${seen[*]}"
pass
rest "/list?object_class=group"
expect "REST list by object class" '[[i["attributes"] for i in d["items"]], d["next_cursor"]]' '[[{"name": "g"}], null]'
rest "/list?cursor=abc"
expect_status 400 "REST list with a bad cursor"
rest "/list?limit=0"
expect_status 400 "REST list with limit 0"
admin "$R" GET /accounts
expect "REST admin accounts" '[len(d), "created" in d[0]]' '[29, true]'

########################################################################
echo "== REST: faults"

admin "$R" POST /reset
executions() { rest_stat executions; }
admin "$R" POST /fault '{"mode":"500","count":1,"method":"POST"}'
rest /health
expect_status 200 "REST fault filtered by method"
execute 33333333-3333-4333-8333-000000000001 create null null '{"n":1}'
expect_status 500 "REST fault 500"
expect "REST fault 500 body" 'd["retryable"]' true
[ "$(executions)" = 0 ] || fail "REST fault 500: executed"
pass
execute 33333333-3333-4333-8333-000000000001 create null null '{"n":1}'
expect_status 201 "REST retry after the fault"
admin "$R" POST /fault '{"mode":"503","retry_after":5}'
rest /health
expect_status 503 "REST fault 503"
expect_header "REST fault 503" Retry-After 5
admin "$R" POST /fault '{"mode":"429"}'
rest /health
expect_status 429 "REST fault 429"
expect_header "REST fault 429" Retry-After 1
admin "$R" POST /fault '{"mode":"401"}'
rest /health
expect_status 401 "REST fault 401"
expect "REST fault 401 body" 'd["retryable"]' false
admin "$R" POST /fault '{"mode":"garbage"}'
rest /health
expect_status 200 "REST fault garbage"
[ "$(cat "$TMP/body")" = "<html>this is not JSON" ] || fail "REST fault garbage: body $(cat "$TMP/body")"
pass
admin "$R" POST /fault '{"mode":"drop"}'
execute 33333333-3333-4333-8333-000000000002 create null null '{"n":2}'
expect_no_response "REST fault drop" 52
admin "$R" POST /fault '{"mode":"hang","delay_ms":1500}'
rest /health "" --max-time 0.5
expect_no_response "REST fault hang" 28
admin "$R" POST /fault '{"mode":"delay","delay_ms":300}'
t0=$(date +%s%N)
rest /health
elapsed=$((($(date +%s%N) - t0) / 1000000))
expect_status 200 "REST fault delay"
[ "$elapsed" -ge 300 ] || fail "REST fault delay: answered after $elapsed ms"
pass
[ "$(executions)" = 1 ] || fail "REST faulted requests were executed"
pass

OPA=33333333-3333-4333-8333-000000000003
admin "$R" POST /fault '{"mode":"500","after":true}'
execute "$OPA" create null '"cccccccc-0000-4000-8000-000000000001"' '{"n":3}'
expect_status 500 "REST fault 500 after executing"
execute "$OPA" create null '"cccccccc-0000-4000-8000-000000000001"' '{"n":3}'
expect_status 201 "REST retry gets the stored result"
admin "$R" POST /fault '{"mode":"drop","after":true}'
execute 33333333-3333-4333-8333-000000000004 create null '"cccccccc-0000-4000-8000-000000000002"' '{"n":4}'
expect_no_response "REST fault drop after executing" 52
execute 33333333-3333-4333-8333-000000000005 create null '"cccccccc-0000-4000-8000-000000000002"' '{"n":4}'
expect_status 200 "REST a new create for the identity correlates"
admin "$R" GET /stats
expect "REST stats after faults" '[d["accounts"], d["executions"], d["replays"], d["duplicate_identity_ids"]]' '[3, 4, 1, []]'
admin "$R" GET /requests?since=0
expect "REST request log" '[e["fault"] for e in d if e["fault"]]' '["500", "503", "429", "401", "garbage", "drop", "hang", "delay", "500", "drop"]'
admin "$R" POST /fault '{"mode":"500","count":-1}'
admin "$R" POST /fault '{"mode":"clear"}'
rest /health
expect_status 200 "REST fault clear"

########################################################################
echo "== keep-alive throughput"

admin "$S" POST /reset
python3 - "${PORTS[scim]}" "$SCIM_TOKEN" "$MIN_RPS" >"$TMP/rate" <<'EOF' || { cat "$TMP/rate" >&2; fail "throughput check"; }
# 2000 creates, one after another, on one kept-alive connection.
import http.client, json, sys, time
port, token, min_rps = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
conn = http.client.HTTPConnection("127.0.0.1", port)
headers = {"Content-Type": "application/scim+json", "Authorization": "Bearer " + token}
sock = None
t0 = time.perf_counter()
for i in range(2000):
    headers["X-Request-Id"] = "rate-%d" % i
    body = json.dumps({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                       "userName": "rate%d" % i, "name": {"givenName": "R", "familyName": str(i)},
                       "emails": [{"value": "rate%d@example.com" % i, "type": "work"}]})
    conn.request("POST", "/scim/v2/Users", body, headers)
    resp = conn.getresponse()
    resp.read()
    if resp.status != 201:
        sys.exit("create %d: HTTP %d" % (i, resp.status))
    if sock is None:
        sock = conn.sock
    elif conn.sock is not sock:
        sys.exit("the connection was not kept alive")
rate = 2000 / (time.perf_counter() - t0)
print("%.0f" % rate)
if rate < min_rps:
    sys.exit("%.0f creates/s, below %s" % (rate, min_rps))
EOF
pass
echo "SCIM: 2000 sequential keep-alive creates at $(cat "$TMP/rate") requests/s"
admin "$S" GET /stats
expect "throughput run stored every user" 'd["users"]' 2000

echo "== concurrent creates of the same userNames"
python3 - "${PORTS[scim]}" "$SCIM_TOKEN" <<'EOF' || fail "concurrent creates"
# 8 connections race to create the same 50 userNames: each must be created once.
import http.client, json, sys, threading
port, token = int(sys.argv[1]), sys.argv[2]
statuses = []
def worker():
    conn = http.client.HTTPConnection("127.0.0.1", port)
    for i in range(50):
        body = json.dumps({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                           "userName": "race%d" % i})
        conn.request("POST", "/scim/v2/Users", body, {
            "Content-Type": "application/scim+json", "Authorization": "Bearer " + token})
        resp = conn.getresponse()
        resp.read()
        statuses.append((i, resp.status))
threads = [threading.Thread(target=worker) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
created = sorted(i for i, status in statuses if status == 201)
others = {status for _, status in statuses if status != 201}
if created != list(range(50)) or others != {409}:
    sys.exit("created %s, other statuses %s" % (created, others))
EOF
pass
admin "$S" GET /stats
expect "concurrent creates" '[d["users"], d["duplicate_usernames"]]' '[2050, []]'

########################################################################
stop scim
stop nopatch
stop rest
echo "selftest: $N checks passed"
