#!/usr/bin/env bash
#
# test/demo.sh -- the main job: a private PostgreSQL cluster with xprov loaded,
# a realistic batch of user provisioning operations, and an external processor
# loop that drains them through xprov.dequeue / complete / fail, with progress.
#
# Usage: test/demo.sh            (as root on Debian 12; installs what it needs)
#
# The processor stands in for an application-side worker of an `external`
# connector: it "calls" a target whose answers are simulated in SQL (most
# succeed, some answer 503 and are retried with backoff, accounts without a
# userName are rejected for good and dead-lettered).  The background worker
# with real HTTP connectors replaces this loop in a later release.

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export XPROV_PORT="${XPROV_PORT:-55450}"
IDENTITIES="${XPROV_DEMO_IDENTITIES:-2000}"

step() { printf '\n== %s\n' "$*"; }

step "Installing build dependencies (idempotent) and building xprov"
test/install-deps.sh >/dev/null
make -s >/dev/null
make -s install >/dev/null

step "Starting a private PostgreSQL 15 cluster on port $XPROV_PORT"
. test/lib/cluster.sh
cluster_start
psql -qX -c "CREATE EXTENSION xprov"
psql -qAtX -c "SELECT 'xprov built with ' || xprov.build_info()::text"

step "Registering two connectors for tenant acme"
psql -qX <<'SQL'
SELECT xprov.add_connector('a0000000-0000-4000-8000-000000000001', 'hr-directory', 'external', NULL) AS directory \gset
SELECT xprov.add_connector('a0000000-0000-4000-8000-000000000001', 'crm', 'external', NULL,
                           '{"auth": {"type": "bearer", "token": "s3cr3t"}}') AS crm \gset
SELECT name, kind, config FROM xprov.connectors ORDER BY name;
SQL

step "Enqueueing the lifecycle of $IDENTITIES identities in one enqueue_batch call"
psql -qX -v n="$IDENTITIES" <<'SQL'
\timing on
-- Each identity: a create on both targets, then an update; every tenth leaves
-- (disable), every fiftieth has no userName (the target will reject it).
WITH people AS (
	SELECT i, gen_random_uuid() AS identity_id,
		   CASE WHEN i % 50 = 0 THEN NULL ELSE format('user%s@acme.example', i) END AS user_name
	  FROM generate_series(1, :n) AS i
), ops AS (
	SELECT c.id AS connector_id, p.identity_id, step.op, step.ord,
		   jsonb_strip_nulls(jsonb_build_object('userName', p.user_name,
			   'displayName', 'Person ' || p.i, 'department', (ARRAY['sales', 'it', 'hr'])[1 + p.i % 3],
			   'title', CASE step.op WHEN 'update' THEN 'Senior' ELSE 'Junior' END)) AS attributes,
		   CASE WHEN p.i % 100 = 0 THEN 10 ELSE 0 END AS priority
	  FROM people p
	 CROSS JOIN xprov.connector c
	 CROSS JOIN LATERAL (VALUES ('create', 1), ('update', 2), ('disable', 3)) AS step(op, ord)
	 WHERE step.op <> 'disable' OR p.i % 10 = 0
)
SELECT count(*) AS enqueued
  FROM xprov.enqueue_batch((
	SELECT jsonb_agg(jsonb_build_object(
			   'tenant_id', 'a0000000-0000-4000-8000-000000000001', 'connector_id', connector_id,
			   'identity_id', identity_id, 'operation_type', op, 'object_class', 'user',
			   'attributes', attributes, 'priority', priority)
			   ORDER BY identity_id, connector_id, ord)
	  FROM ops));
\timing off
SELECT * FROM xprov.stats();
SQL

step "Draining with an external processor loop (dequeue 200 at a time)"
# One statement per batch: claim, "call the target", record each outcome.
read -r -d '' PROCESS_BATCH <<'SQL' || true
SET xprov.retry_base = '200ms';
SET xprov.max_attempts = 4;
WITH claimed AS MATERIALIZED (
	SELECT * FROM xprov.dequeue(200, '30 seconds')
), outcome AS (
	SELECT CASE
		WHEN c.operation_type = 'create' AND NOT c.attributes ? 'userName' THEN
			'rejected' || xprov.fail(c.id, '400 Bad Request: userName is required', permanent => true)::text
		WHEN random() < 0.05 THEN
			'retrying' || xprov.fail(c.id, '503 Service Unavailable')::text
		ELSE
			'completed' || xprov.complete(c.id, coalesce(c.target_uid, 'acct-' || left(md5(c.identity_id::text), 10)),
										  jsonb_build_object('http_status', 201))::text
		END AS result
	  FROM claimed c
)
SELECT count(*), count(*) FILTER (WHERE result = 'completed'),
	   count(*) FILTER (WHERE result = 'retrying'), count(*) FILTER (WHERE result = 'rejected')
  FROM outcome;
SQL

batch=0
start=$EPOCHREALTIME
while :; do
	read -r claimed done retrying rejected < <(psql -qAtX -F ' ' -c "$PROCESS_BATCH" | tail -n 1)
	batch=$((batch + 1))
	read -r pending failed dead completed < <(psql -qAtX -F ' ' -c \
		"SELECT pending, failed, dead_letter, completed FROM xprov.stats()")
	printf 'batch %3d: claimed %3d -> completed %3d, retrying %2d, rejected %2d | pending %5d, waiting retry %3d, dead letters %3d, completed %5d\n' \
		"$batch" "$claimed" "$done" "$retrying" "$rejected" "$pending" "$failed" "$dead" "$completed"
	if [ "$claimed" -eq 0 ]; then
		# what is still pending waits behind a dead letter of its subject
		[ "$failed" -eq 0 ] && break
		sleep 0.2		# retries are backing off
	fi
done
printf 'drained in %s s\n' "$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')"

step "Dead letters (each blocks only its own subject)"
psql -qX <<'SQL'
SELECT d.attributes ->> 'displayName' AS person, c.name AS connector, d.operation_type,
	   d.attempts, d.last_error
  FROM xprov.dead_letters d JOIN xprov.connectors c ON c.id = d.connector_id
 ORDER BY 1, 2 LIMIT 6;
SELECT count(*) AS operations_waiting_behind_dead_letters
  FROM xprov.operations WHERE status = 'pending';
SQL

step "An operator resolves them: skip the rejected creates, which unblocks what follows"
psql -qX <<'SQL'
SELECT count(xprov.skip(id, 'no userName in HR record; fixed at the source')) AS skipped
  FROM xprov.dead_letters;
SQL
while :; do
	read -r claimed _ < <(psql -qAtX -F ' ' -c "$PROCESS_BATCH" | tail -n 1)
	[ "$claimed" -eq 0 ] && [ "$(psql -qAtX -c 'SELECT failed FROM xprov.stats()')" -eq 0 ] && break
	[ "$claimed" -eq 0 ] && sleep 0.2
done

step "Final state"
psql -qX <<'SQL'
SELECT c.name AS connector, s.*
  FROM xprov.connectors c, xprov.stats(c.tenant_id, c.id) s ORDER BY c.name;
SELECT outcome, count(*) AS attempts FROM xprov.operation_attempts GROUP BY 1 ORDER BY 1;
SQL
cluster_stop
