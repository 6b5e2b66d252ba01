-- xprov 0.1.0: extension foundation and the durable, ordered operation queue
\echo Use "CREATE EXTENSION xprov" to load this file. \quit

/*
 * Layout (see README "How the queue works"):
 *
 *   op          insert-only operation log; never updated or deleted on the hot path
 *   subject     one immutable row per subject (connector, object class, subject)
 *   lane        one small row per subject; it holds
 *               the subject's cursor into the log (next_seq), its lease and retry state.
 *               Only this table churns, and it stays as small as the set of subjects.
 *   op_result   append-only final outcome of each finished operation
 *   op_failure  append-only history of failed attempts
 *   idempotency keys of unfinished operations
 *
 * An operation's status is derived (view xprov.operations), never stored on the log.
 */

/*
 * pg_dump: the tables of an extension are not dumped unless registered with
 * pg_extension_config_dump().  Registered, each right after its CREATE, are
 * the tables that hold configuration -- what an administrator set up or a
 * person decided, which cannot be rebuilt from anywhere else: connector and
 * connector_secret, hook and hook_version (and hook's identity sequence), identity_source,
 * correlation_rule, correlation_threshold, correlation_decision, reaction and
 * reconciliation_threshold.  Runtime state is not dumped: the queue (op,
 * subject, lane, op_result, op_failure, idempotency, op_seq, worker_epoch),
 * shadows, correlation cases and reconciliation runs, items and
 * discrepancies.  It describes work in flight and the targets as last seen,
 * it is large, and half of it makes no sense without the rest (a lease
 * without its worker, a parked operation without its lane); a restored
 * database starts with an empty queue and rebuilds shadows and links with a
 * reconciliation (whose 'unlinked' -> 'link' reaction and the dumped
 * decisions re-link what was linked).  Nothing refers to runtime rows by
 * foreign key, and connectors are referred to by id only, so the dumped
 * tables load in any order except hook_version after hook, which pg_dump
 * orders by the foreign key.  Secrets inside connector.config are dumped as
 * they are stored.
 */

CREATE TABLE xprov.connector (
	id			uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	tenant_id	uuid NOT NULL,
	name		text NOT NULL CHECK (name <> ''),
	kind		text NOT NULL CHECK (kind IN ('scim2', 'rest', 'noop', 'external')),
	base_url	text,
	config		jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(config) = 'object'),
	enabled		boolean NOT NULL DEFAULT true,
	created_at	timestamptz NOT NULL DEFAULT now(),
	UNIQUE (tenant_id, name)
);
-- Configuration: an administrator's connectors (with their credentials, as
-- stored); everything else refers to them by id.
SELECT pg_catalog.pg_extension_config_dump('xprov.connector', '');

-- Queued work refers to connectors without foreign keys (a check per row on the
-- hot path); instead connectors are never deleted, only disabled.
CREATE FUNCTION xprov.connector_keep()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
BEGIN
	RAISE EXCEPTION 'connectors cannot be deleted'
		USING ERRCODE = 'object_in_use',
			  DETAIL = 'Operations and their history refer to the connector.',
			  HINT = 'Disable it with xprov.set_connector_enabled(id, false).';
END
$$;

CREATE TRIGGER connector_keep BEFORE DELETE OR TRUNCATE ON xprov.connector
	FOR EACH STATEMENT EXECUTE FUNCTION xprov.connector_keep();

-- No cache: numbers must be handed out in call order across sessions (see
-- lock_subject_lane in src/enqueue.c).
CREATE SEQUENCE xprov.op_seq AS bigint;
-- (Not dumped, like the queue it numbers: a restored queue is empty.)

-- One row per subject ever queued to; never updated.  Holds the subject's
-- identity so that the lane below, which churns, carries no unique index.
CREATE TABLE xprov.subject (
	lane_id		bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	tenant_id	uuid NOT NULL,
	connector_id uuid NOT NULL,			-- checked by enqueue; connectors are never deleted
	object_class text NOT NULL,
	subject		text NOT NULL,			-- 'i:' || identity_id, or 't:' || target_uid
	claimant	"char" NOT NULL,		-- 'e': xprov.dequeue, 'w': background worker
	UNIQUE (connector_id, object_class, subject)
) WITH (autovacuum_analyze_scale_factor = 0.02);
-- Runtime (not dumped): a subject exists because something was queued to it.

-- The subject's queue state: its cursor into the log, lease and retries.
-- Every claim and completion writes a new version of this row, so it stays
-- narrow and its indexes few.
CREATE TABLE xprov.lane (
	lane_id		bigint NOT NULL,		-- xprov.subject.lane_id
	tenant_id	uuid NOT NULL,
	connector_id uuid NOT NULL,
	claimant	"char" NOT NULL,
	state		"char" NOT NULL,		-- r ready, l leased, i idle, d dead (blocks the subject),
										-- p parked: waits for a correlation case (blocks the subject)
	next_seq	bigint NOT NULL,		-- head of the subject's FIFO in xprov.op
	priority	integer NOT NULL,		-- priority of the head operation
	run_at		timestamptz NOT NULL,	-- earliest start of the head operation
	attempts	integer NOT NULL DEFAULT 0, -- attempts of the head since it became head or was retried
	attempt_base integer NOT NULL DEFAULT 0, -- attempts made before the last xprov.retry()
	leased_at	timestamptz,
	lease_expires timestamptz,
	leased_by	bigint,					-- background worker: epoch * 64 + worker slot; NULL for dequeue
	last_error	text,
	finished_ahead bigint[] NOT NULL DEFAULT '{}' -- seqs behind the head skipped or cancelled out of turn
) WITH (fillfactor = 70,
		autovacuum_vacuum_scale_factor = 0,
		autovacuum_vacuum_threshold = 2000,
		autovacuum_vacuum_cost_delay = 0,
		autovacuum_analyze_scale_factor = 0.05);

CREATE INDEX lane_ready ON xprov.lane
	(claimant, (-(priority::bigint)), run_at, lane_id) WHERE state = 'r';
-- Not a unique index (xprov.subject guarantees that): a unique index would
-- re-check every new lane version against the lane's older versions.
CREATE INDEX lane_id ON xprov.lane (lane_id);
CREATE INDEX lane_dead ON xprov.lane (lane_id) WHERE state = 'd';
-- Runtime (not dumped): leases, retries and cursors of work in flight.

-- The queue's statements are planned once per backend (generic plans); they
-- are re-planned when ANALYZE sees a table change, so the growing tables are
-- analyzed often enough for their plans to follow their size.
CREATE TABLE xprov.op (
	id			uuid PRIMARY KEY,
	seq			bigint NOT NULL,
	lane_id		bigint NOT NULL,
	tenant_id	uuid NOT NULL,
	connector_id uuid NOT NULL,
	identity_id	uuid,
	target_uid	text,
	operation_type text NOT NULL,
	object_class text NOT NULL,
	attributes	jsonb NOT NULL,
	priority	integer NOT NULL,
	not_before	timestamptz,
	idempotency_key text,
	created_at	timestamptz NOT NULL DEFAULT now(),
	UNIQUE (lane_id, seq)
) WITH (autovacuum_analyze_scale_factor = 0.02);
-- Runtime (not dumped): the operation log is work and its history, not
-- configuration; its lanes and subjects are not dumped either.

CREATE TABLE xprov.op_result (
	op_id		uuid PRIMARY KEY,
	tenant_id	uuid NOT NULL,
	connector_id uuid NOT NULL,
	status		"char" NOT NULL,		-- c completed, s skipped, x cancelled
	attempts	integer NOT NULL,
	started_at	timestamptz,
	finished_at	timestamptz NOT NULL DEFAULT clock_timestamp(),
	target_uid	text,
	result		jsonb,
	reason		text,
	hooks		text					-- what the hooks of the last attempt did: JSON
										-- (text: parsed when read, not on the hot path)
) WITH (autovacuum_analyze_scale_factor = 0.02);
-- Runtime (not dumped): outcomes of operations that are not dumped.

CREATE TABLE xprov.op_failure (
	op_id		uuid NOT NULL,
	attempt		integer NOT NULL,
	started_at	timestamptz,
	finished_at	timestamptz NOT NULL DEFAULT clock_timestamp(),
	outcome		"char" NOT NULL,		-- f failed (retried later), d dead-lettered, e lease expired,
										-- p connector unavailable (attempt not counted),
										-- r worker restarted mid-attempt,
										-- c parked for a correlation case (attempt not counted)
	http_status	integer,
	error		text,
	hooks		text					-- what the hooks of this attempt did: JSON, as above
);
CREATE INDEX op_failure_op ON xprov.op_failure (op_id, attempt);
-- Runtime (not dumped): attempts of operations that are not dumped.

-- Shadows: what xprov knows of each account on each target (see README
-- "Shadows").  A shadow is never re-used: a deleted account's shadow becomes
-- a tombstone (dead_at set) and a re-created account gets a new one.  The
-- partial unique indexes below are what makes duplicates impossible: at most
-- one shadow that is not dead per target account, per owner (unless the
-- connector allows several accounts per identity) and per subject.
CREATE TABLE xprov.shadow (
	id			uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	tenant_id	uuid NOT NULL,
	connector_id uuid NOT NULL,
	object_class text NOT NULL,
	lane_id		bigint,					-- the subject that provisions it (xprov.subject);
										-- NULL: found on the target, not provisioned by xprov
	identity_id	uuid,					-- the owner, if known
	target_uid	text,					-- NULL until the target has named the account
	lifecycle	text NOT NULL CHECK (lifecycle IN ('proposed', 'conceived', 'gestating', 'live',
												   'reaping', 'corpse', 'tombstone')),
	situation	text CHECK (situation IN ('linked', 'unlinked', 'unmatched', 'disputed',
										  'collision', 'deleted')),
	exclusive	boolean NOT NULL DEFAULT true,	-- the owner may have no other account here
	observed	jsonb,					-- the account as the target last showed it
	observed_at	timestamptz,
	expected	jsonb NOT NULL DEFAULT '{}',	-- the attributes as last provisioned
	version		text,					-- the target's version of the account (ETag)
	created_at	timestamptz NOT NULL DEFAULT now(),
	updated_at	timestamptz NOT NULL DEFAULT now(),
	dead_at		timestamptz,			-- set exactly when the shadow is dead
	CHECK ((lifecycle IN ('corpse', 'tombstone')) = (dead_at IS NOT NULL)),
	CHECK (lifecycle NOT IN ('gestating', 'live', 'reaping') OR target_uid IS NOT NULL)
) WITH (autovacuum_analyze_scale_factor = 0.02);
CREATE UNIQUE INDEX shadow_live_uid ON xprov.shadow (connector_id, object_class, target_uid)
	WHERE dead_at IS NULL;
-- (shadows without an owner are left out: they never conflict, and would
-- all share one key, where every insert of an unowned shadow would meet)
CREATE UNIQUE INDEX shadow_live_identity ON xprov.shadow (connector_id, object_class, identity_id)
	WHERE dead_at IS NULL AND exclusive AND identity_id IS NOT NULL;
CREATE UNIQUE INDEX shadow_live_lane ON xprov.shadow (lane_id) WHERE dead_at IS NULL;
CREATE INDEX shadow_owner ON xprov.shadow (identity_id) WHERE identity_id IS NOT NULL;
CREATE INDEX shadow_dead ON xprov.shadow (dead_at) WHERE dead_at IS NOT NULL;
-- Runtime (not dumped): the targets as last seen and the links to them,
-- which a reconciliation of the restored database finds again; their lane_id
-- would point at subjects that are not dumped.

-- Each start of a background worker takes a new epoch; its leases carry it,
-- so a restarted worker knows exactly which leases its dead predecessor held.
CREATE SEQUENCE xprov.worker_epoch AS bigint;

CREATE TABLE xprov.idempotency (
	tenant_id	uuid NOT NULL,
	key			text NOT NULL,
	op_id		uuid NOT NULL,
	PRIMARY KEY (tenant_id, key)
);
-- Runtime (not dumped): keys of unfinished operations, which are not dumped.

-- Connectors ---------------------------------------------------------------

-- A connector's credentials (its "auth" object), apart from its visible
-- configuration: the connectors view and everything that shows a config
-- never read this table; the loaders of the worker, the reconciler and
-- try_operation put it back as config.auth.
CREATE TABLE xprov.connector_secret (
	connector_id uuid PRIMARY KEY,
	tenant_id	uuid NOT NULL,
	secret		jsonb NOT NULL CHECK (jsonb_typeof(secret) = 'object'),
	updated_at	timestamptz NOT NULL DEFAULT now()
);
-- configuration: a restored connector must still authenticate (a dump of the
-- database holds its credentials, as it holds every other table's data)
SELECT pg_catalog.pg_extension_config_dump('xprov.connector_secret', '');

-- The reason a credentials object is unusable, or NULL.  The values are
-- never part of the reason.
CREATE FUNCTION xprov._secret_problem(secret jsonb)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog
AS $$
	SELECT CASE
		WHEN jsonb_typeof(secret) IS DISTINCT FROM 'object' THEN 'it is not a JSON object'
		WHEN secret ->> 'type' = 'bearer' THEN
			CASE WHEN jsonb_typeof(secret -> 'token') IS DISTINCT FROM 'string' THEN 'a bearer secret needs a token' END
		WHEN secret ->> 'type' = 'basic' THEN
			CASE WHEN jsonb_typeof(secret -> 'username') IS DISTINCT FROM 'string'
					  OR jsonb_typeof(secret -> 'password') IS DISTINCT FROM 'string'
				 THEN 'a basic secret needs a username and a password' END
		WHEN secret ->> 'type' = 'header' THEN
			CASE WHEN jsonb_typeof(coalesce(secret -> 'header_name', secret -> 'header')) IS DISTINCT FROM 'string'
					  OR jsonb_typeof(secret -> 'value') IS DISTINCT FROM 'string'
				 THEN 'a header secret needs a header_name and a value' END
		ELSE 'its type must be bearer, basic or header'
	END
$$;

-- The config a loader hands to the C code: the visible config with the
-- credentials put back.
CREATE FUNCTION xprov._connector_config(connector_id uuid, config jsonb)
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog
AS $$
	SELECT config || coalesce((SELECT jsonb_build_object('auth', s.secret) FROM xprov.connector_secret s
								WHERE s.connector_id = _connector_config.connector_id), '{}')
$$;

CREATE FUNCTION xprov.mask_secrets(config jsonb)
RETURNS jsonb
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog
AS $$
	SELECT CASE WHEN jsonb_typeof(config -> 'auth') = 'object' THEN
		jsonb_set(config, '{auth}',
			(SELECT jsonb_object_agg(k, CASE WHEN k IN ('type', 'header', 'username', 'header_name')
											 THEN v ELSE '"********"'::jsonb END)
			   FROM jsonb_each(config -> 'auth') AS e(k, v)))
	ELSE config END
$$;

-- The URL rules (src/url_policy.c): NULL when a connector may send requests
-- to url (http or https, no credentials, host allowed by xprov.allowed_hosts),
-- else why not.  The HTTP engine applies the same check to every request.
CREATE FUNCTION xprov._url_allowed(url text)
RETURNS text
AS 'MODULE_PATHNAME', 'xprov_url_allowed'
LANGUAGE C STABLE STRICT;

-- Raises unless url may be the base_url of a connector of this kind:
-- 22023 for a URL that does not parse, is not http(s) or carries
-- credentials, 42501 for a host xprov.allowed_hosts does not allow.
CREATE FUNCTION xprov._check_base_url(kind text, url text)
RETURNS void
AS 'MODULE_PATHNAME', 'xprov_check_base_url'
LANGUAGE C STABLE STRICT;

CREATE FUNCTION xprov.add_connector(tenant_id uuid, name text, kind text, base_url text,
									config jsonb DEFAULT '{}')
RETURNS uuid
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
	new_id uuid;
BEGIN
	IF tenant_id IS NULL OR name IS NULL OR kind IS NULL THEN
		RAISE EXCEPTION 'tenant_id, name and kind must not be null'
			USING ERRCODE = 'null_value_not_allowed',
				  HINT = 'Pass the owning tenant, a connector name and one of scim2, rest, noop, external.';
	END IF;
	IF kind NOT IN ('scim2', 'rest', 'noop', 'external') THEN
		RAISE EXCEPTION 'unknown connector kind "%"', kind
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Use one of scim2, rest, noop, external.';
	END IF;
	IF btrim(name) = '' THEN
		RAISE EXCEPTION 'connector name must not be empty'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF kind IN ('scim2', 'rest') AND base_url IS NULL THEN
		RAISE EXCEPTION 'connector kind % needs an http or https base_url', kind
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'base_url was NULL.',
				  HINT = 'Pass the target''s base URL, for example https://scim.example.com/scim/v2.';
	END IF;
	-- libcurl's parser decides (scheme, credentials, host), as it will for the requests
	IF kind IN ('scim2', 'rest') THEN
		PERFORM xprov._check_base_url(kind, base_url);
	END IF;
	IF config IS NULL OR jsonb_typeof(config) <> 'object' THEN
		RAISE EXCEPTION 'connector config must be a JSON object'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Pass ''{}'' for no settings.';
	END IF;
	-- the credentials are kept apart from the visible configuration (like the
	-- rest of the config, they are checked where they are used)
	INSERT INTO xprov.connector AS c (tenant_id, name, kind, base_url, config)
	VALUES (add_connector.tenant_id, add_connector.name, add_connector.kind,
			add_connector.base_url, add_connector.config - 'auth')
	RETURNING c.id INTO new_id;
	IF config ? 'auth' THEN
		INSERT INTO xprov.connector_secret (connector_id, tenant_id, secret)
		VALUES (new_id, add_connector.tenant_id, config -> 'auth');
	END IF;
	RETURN new_id;
EXCEPTION
	WHEN unique_violation THEN
		RAISE EXCEPTION 'connector "%" already exists for this tenant', add_connector.name
			USING ERRCODE = 'unique_violation',
				  HINT = 'Choose another name or use the existing connector.';
END
$$;

CREATE VIEW xprov.connectors AS
	SELECT c.id, c.tenant_id, c.name, c.kind, c.base_url,
		   xprov.mask_secrets(c.config) AS config, c.enabled, c.created_at,
		   (SELECT s.secret ->> 'type' FROM xprov.connector_secret s WHERE s.connector_id = c.id) AS auth_type,
		   (SELECT s.updated_at FROM xprov.connector_secret s WHERE s.connector_id = c.id) AS secret_updated_at
	  FROM xprov.connector c;

-- The connector a configuration call names, or the error that it names none.
CREATE FUNCTION xprov._connector(connector_id uuid)
RETURNS xprov.connector
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog
AS $$
DECLARE
	c xprov.connector;
BEGIN
	IF connector_id IS NULL THEN
		RAISE EXCEPTION 'connector_id must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	SELECT * INTO c FROM xprov.connector x WHERE x.id = _connector.connector_id;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'connector % does not exist', connector_id
			USING ERRCODE = 'undefined_object', HINT = 'List connectors with SELECT * FROM xprov.connectors.';
	END IF;
	RETURN c;
END
$$;

-- Replaces a connector's credentials (NULL removes them).  Workers use the
-- new ones within a minute (they reload connector settings that often).
CREATE FUNCTION xprov.set_connector_secret(connector_id uuid, secret jsonb)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
	c xprov.connector := xprov._connector(connector_id);
BEGIN
	IF secret IS NULL THEN
		DELETE FROM xprov.connector_secret s WHERE s.connector_id = c.id;
		RETURN;
	END IF;
	IF xprov._secret_problem(secret) IS NOT NULL THEN
		RAISE EXCEPTION 'connector secret is unusable: %', xprov._secret_problem(secret)
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'A secret is {"type": "bearer", "token": ...}, {"type": "basic", "username": ..., "password": ...} or {"type": "header", "header_name": ..., "value": ...}.';
	END IF;
	INSERT INTO xprov.connector_secret AS s (connector_id, tenant_id, secret)
	VALUES (c.id, c.tenant_id, set_connector_secret.secret)
	ON CONFLICT ON CONSTRAINT connector_secret_pkey
	DO UPDATE SET secret = excluded.secret, updated_at = now();
END
$$;

CREATE FUNCTION xprov._rewind_claims()
RETURNS void
AS 'MODULE_PATHNAME', 'xprov_rewind_claims'
LANGUAGE C VOLATILE;

CREATE FUNCTION xprov.set_connector_enabled(connector_id uuid, enabled boolean)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
BEGIN
	IF enabled IS NULL THEN
		RAISE EXCEPTION 'enabled must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	UPDATE xprov.connector c SET enabled = set_connector_enabled.enabled
	 WHERE c.id = set_connector_enabled.connector_id;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'connector % does not exist', connector_id
			USING ERRCODE = 'undefined_object',
				  HINT = 'List connectors with SELECT * FROM xprov.connectors.';
	END IF;
	IF enabled THEN
		-- its waiting operations: claimable again, and the workers told at commit
		PERFORM xprov._rewind_claims();
	END IF;
END
$$;

-- Queue ----------------------------------------------------------------------

CREATE TYPE xprov.queued_operation AS (
	id				uuid,
	tenant_id		uuid,
	connector_id	uuid,
	identity_id		uuid,
	target_uid		text,
	operation_type	text,
	object_class	text,
	attributes		jsonb,
	priority		integer,
	retry_count		integer,
	next_retry_at	timestamptz,
	not_before		timestamptz,
	idempotency_key	text,
	created_at		timestamptz,
	lease_expires_at timestamptz
);

CREATE FUNCTION xprov.enqueue(tenant_id uuid, connector_id uuid, identity_id uuid,
							  operation_type text, object_class text, attributes jsonb,
							  target_uid text DEFAULT NULL, priority integer DEFAULT 0,
							  not_before timestamptz DEFAULT NULL,
							  idempotency_key text DEFAULT NULL)
RETURNS uuid
AS 'MODULE_PATHNAME', 'xprov_enqueue'
LANGUAGE C VOLATILE;

CREATE FUNCTION xprov.enqueue_batch(ops jsonb)
RETURNS SETOF uuid
AS 'MODULE_PATHNAME', 'xprov_enqueue_batch'
LANGUAGE C VOLATILE STRICT;

CREATE FUNCTION xprov.dequeue(batch integer DEFAULT 10, lease interval DEFAULT '5 minutes')
RETURNS SETOF xprov.queued_operation
AS 'MODULE_PATHNAME', 'xprov_dequeue'
LANGUAGE C VOLATILE;

CREATE FUNCTION xprov.complete(operation_id uuid, target_uid text DEFAULT NULL,
							   result jsonb DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'xprov_complete'
LANGUAGE C VOLATILE;

CREATE FUNCTION xprov.complete_batch(operation_ids uuid[])
RETURNS bigint
AS 'MODULE_PATHNAME', 'xprov_complete_batch'
LANGUAGE C VOLATILE;

CREATE FUNCTION xprov.fail(operation_id uuid, error text, permanent boolean DEFAULT false,
						   retry_after interval DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'xprov_fail'
LANGUAGE C VOLATILE;

CREATE FUNCTION xprov.retry(operation_id uuid)
RETURNS void
AS 'MODULE_PATHNAME', 'xprov_retry'
LANGUAGE C VOLATILE;

CREATE FUNCTION xprov.skip(operation_id uuid, reason text)
RETURNS void
AS 'MODULE_PATHNAME', 'xprov_skip'
LANGUAGE C VOLATILE;

CREATE FUNCTION xprov.cancel(operation_id uuid)
RETURNS void
AS 'MODULE_PATHNAME', 'xprov_cancel'
LANGUAGE C VOLATILE;

-- Runs one operation against a connector right now, in this session, with
-- the connector's hooks (unless run_hooks is false), and returns what
-- happened; nothing is queued or recorded.  For checking a
-- connector's URL, credentials and mapping before real work is sent.
CREATE FUNCTION xprov.try_operation(connector_id uuid, operation_type text,
									object_class text DEFAULT 'user',
									attributes jsonb DEFAULT '{}',
									target_uid text DEFAULT NULL,
									identity_id uuid DEFAULT NULL,
									run_hooks boolean DEFAULT true)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'xprov_try_operation'
LANGUAGE C VOLATILE;

CREATE FUNCTION xprov.worker_status()
RETURNS TABLE (worker integer, pid integer, database text, state text, started_at timestamptz,
			   epoch bigint, operations_done bigint, operations_failed bigint,
			   in_flight integer, paused_connectors integer, last_error text,
			   last_error_at timestamptz)
AS 'MODULE_PATHNAME', 'xprov_worker_status'
LANGUAGE C VOLATILE;

CREATE FUNCTION xprov.wait_idle(timeout interval DEFAULT '30 seconds')
RETURNS boolean
AS 'MODULE_PATHNAME', 'xprov_wait_idle'
LANGUAGE C VOLATILE;

CREATE FUNCTION xprov.build_info()
RETURNS jsonb
AS 'MODULE_PATHNAME', 'xprov_build_info'
LANGUAGE C STABLE;

-- Views ----------------------------------------------------------------------

CREATE VIEW xprov.operations AS
	SELECT o.id, o.tenant_id, o.connector_id, o.identity_id, o.target_uid,
		   o.operation_type, o.object_class, o.attributes, o.priority,
		   CASE WHEN r.op_id IS NOT NULL THEN greatest(r.attempts - 1, 0)
				WHEN head THEN l.attempt_base + l.attempts - (l.state = 'l')::int
				ELSE 0 END AS retry_count,
		   CASE WHEN r.op_id IS NULL AND head AND l.state = 'r' THEN l.run_at
				WHEN r.op_id IS NULL AND head AND l.state = 'l' THEN l.lease_expires
		   END AS next_retry_at,
		   o.not_before, o.idempotency_key,
		   CASE r.status
				WHEN 'c' THEN 'completed'
				WHEN 's' THEN 'skipped'
				WHEN 'x' THEN 'cancelled'
				ELSE CASE WHEN NOT head THEN 'pending'
						  WHEN l.state = 'l' THEN 'in_progress'
						  WHEN l.state = 'd' THEN 'dead_letter'
						  WHEN l.state = 'p' THEN 'parked'
						  WHEN l.state = 'r' AND l.attempts > 0 THEN 'failed'
						  ELSE 'pending' END
		   END AS status,
		   CASE WHEN r.op_id IS NOT NULL THEN r.attempts
				WHEN head THEN l.attempt_base + l.attempts
				ELSE 0 END AS attempts,
		   CASE WHEN r.op_id IS NULL AND head AND l.state = 'r' THEN l.run_at
				WHEN r.op_id IS NULL AND head AND l.state = 'l' THEN l.lease_expires
				WHEN r.op_id IS NULL AND NOT head THEN o.not_before
		   END AS next_attempt_at,
		   CASE WHEN r.op_id IS NOT NULL THEN r.reason
				WHEN head THEN l.last_error END AS last_error,
		   o.created_at, r.finished_at, r.result, r.target_uid AS result_target_uid
	  FROM xprov.op o
	  JOIN xprov.lane l ON l.lane_id = o.lane_id
	  LEFT JOIN xprov.op_result r ON r.op_id = o.id
	 CROSS JOIN LATERAL (SELECT l.next_seq = o.seq AND l.state <> 'i' AS head) h;

CREATE VIEW xprov.operation_attempts AS
	SELECT f.op_id AS operation_id, o.tenant_id, o.connector_id, f.attempt, f.started_at,
		   f.finished_at,
		   CASE f.outcome WHEN 'f' THEN 'failed' WHEN 'd' THEN 'dead_letter'
						  WHEN 'e' THEN 'lease_expired' WHEN 'p' THEN 'connector_unavailable'
						  WHEN 'r' THEN 'worker_restarted' WHEN 'c' THEN 'parked' END AS outcome,
		   f.http_status, f.error, f.finished_at - f.started_at AS duration, f.hooks::jsonb AS hooks
	  FROM xprov.op_failure f
	  JOIN xprov.op o ON o.id = f.op_id
	UNION ALL
	SELECT r.op_id, r.tenant_id, r.connector_id, r.attempts, r.started_at, r.finished_at,
		   CASE r.status WHEN 'c' THEN 'completed' ELSE 'skipped' END, NULL::integer,
		   CASE r.status WHEN 's' THEN r.reason END, r.finished_at - r.started_at, r.hooks::jsonb
	  FROM xprov.op_result r
	 WHERE (r.status = 'c' AND r.attempts > 0) OR r.hooks IS NOT NULL;

-- The operations of each shadow that have not finished: a view over the
-- queue (the subject's unfinished operations), never a counter that drifts.
CREATE VIEW xprov.shadow_pending_operations AS
	SELECT s.id AS shadow_id, o.id AS operation_id, o.operation_type, o.created_at,
		   CASE WHEN l.next_seq <> o.seq THEN 'pending'
				WHEN l.state = 'l' THEN 'in_progress'
				WHEN l.state = 'd' THEN 'dead_letter'
				WHEN l.state = 'p' THEN 'parked'
				WHEN l.attempts > 0 THEN 'failed'
				ELSE 'pending' END AS status
	  FROM xprov.shadow s
	  JOIN xprov.lane l ON l.lane_id = s.lane_id AND l.state <> 'i'
	  JOIN xprov.op o ON o.lane_id = l.lane_id AND o.seq >= l.next_seq
	 WHERE s.dead_at IS NULL
	   AND NOT EXISTS (SELECT 1 FROM xprov.op_result r WHERE r.op_id = o.id);

CREATE VIEW xprov.shadows AS
	SELECT s.id, s.tenant_id, s.connector_id, s.object_class, s.identity_id, s.target_uid,
		   sub.subject, s.lifecycle,
		   CASE WHEN s.lifecycle IN ('live', 'gestating') THEN 'active'
				WHEN s.lifecycle IN ('proposed', 'conceived', 'reaping') THEN 'pending'
				WHEN s.lifecycle IN ('corpse', 'tombstone') THEN 'dead'
				ELSE 'unknown' END AS state,
		   s.situation, s.observed, s.observed_at, jsonb_strip_nulls(s.expected) AS expected,
		   s.version, s.exclusive,
		   (SELECT count(*) FROM xprov.shadow_pending_operations p
			 WHERE p.shadow_id = s.id) AS pending_operations,
		   s.created_at, s.updated_at, s.dead_at
	  FROM xprov.shadow s
	  LEFT JOIN xprov.subject sub ON sub.lane_id = s.lane_id;

-- Each subject's account as last provisioned: its live shadow, briefly.
CREATE VIEW xprov.accounts AS
	SELECT s.tenant_id, s.connector_id, s.object_class, s.identity_id, s.target_uid,
		   sub.subject, jsonb_strip_nulls(s.expected) AS attributes, s.created_at, s.updated_at
	  FROM xprov.shadow s
	  JOIN xprov.subject sub ON sub.lane_id = s.lane_id
	 WHERE s.dead_at IS NULL AND s.target_uid IS NOT NULL;

-- Removes tombstones older than the retention period; schedule it with
-- pg_cron.  Returns how many were removed.
-- The end of a retention period that ends now, after checking it.
-- What a shadow expects after an operation sent `changes`: SCIM replaces a
-- complex attribute's sub-attributes one by one (an extension's department
-- leaves its employeeNumber alone), so objects merge one level deep; a JSON
-- null removes (jsonb_strip_nulls by the caller).
CREATE FUNCTION xprov._merge_expected(expected jsonb, changes jsonb)
RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog
AS $$
	SELECT expected || coalesce((SELECT jsonb_object_agg(c.key,
										CASE WHEN jsonb_typeof(c.value) = 'object'
												  AND jsonb_typeof(expected -> c.key) = 'object'
											 THEN (expected -> c.key) || c.value
											 ELSE c.value END)
								   FROM jsonb_each(changes) c), '{}')
$$;

CREATE FUNCTION xprov._retention_cutoff(older_than interval)
RETURNS timestamptz
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog
AS $$
BEGIN
	IF older_than IS NULL OR older_than < interval '0' THEN
		RAISE EXCEPTION 'older_than must be a non-negative interval' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	RETURN now() - older_than;
END
$$;

CREATE FUNCTION xprov.purge_tombstones(older_than interval DEFAULT '7 days')
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
	removed bigint;
	cutoff timestamptz := xprov._retention_cutoff(older_than);
BEGIN
	DELETE FROM xprov.shadow s WHERE s.dead_at IS NOT NULL AND s.dead_at < cutoff;
	GET DIAGNOSTICS removed = ROW_COUNT;
	RETURN removed;
END
$$;

CREATE VIEW xprov.dead_letters AS
	SELECT o.id, o.tenant_id, o.connector_id, o.identity_id, o.target_uid,
		   o.operation_type, o.object_class, o.attributes,
		   l.attempt_base + l.attempts AS attempts, l.last_error, o.created_at,
		   (SELECT max(f.finished_at) FROM xprov.op_failure f WHERE f.op_id = o.id) AS failed_at
	  FROM xprov.lane l
	  JOIN xprov.op o ON o.lane_id = l.lane_id AND o.seq = l.next_seq
	 WHERE l.state = 'd';

CREATE FUNCTION xprov.stats(tenant_id uuid DEFAULT NULL, connector_id uuid DEFAULT NULL)
RETURNS TABLE (pending bigint, in_progress bigint, failed bigint, dead_letter bigint,
			   completed bigint, skipped bigint, cancelled bigint, parked bigint)
LANGUAGE sql STABLE
SET search_path = pg_catalog
AS $$
	WITH lanes AS (
		SELECT l.lane_id, l.next_seq, l.state, l.attempts
		  FROM xprov.lane l
		 WHERE l.state <> 'i'
		   AND ($1 IS NULL OR l.tenant_id = $1)
		   AND ($2 IS NULL OR l.connector_id = $2)
	), unfinished AS (
		SELECT count(*) AS n
		  FROM lanes l
		  JOIN xprov.op o ON o.lane_id = l.lane_id AND o.seq >= l.next_seq
		 WHERE NOT EXISTS (SELECT 1 FROM xprov.op_result r WHERE r.op_id = o.id)
	), heads AS (
		SELECT count(*) FILTER (WHERE state = 'l') AS in_progress,
			   count(*) FILTER (WHERE state = 'r' AND attempts > 0) AS failed,
			   count(*) FILTER (WHERE state = 'd') AS dead_letter,
			   count(*) FILTER (WHERE state = 'p') AS parked
		  FROM lanes
	), finished AS (
		SELECT count(*) FILTER (WHERE r.status = 'c') AS completed,
			   count(*) FILTER (WHERE r.status = 's') AS skipped,
			   count(*) FILTER (WHERE r.status = 'x') AS cancelled
		  FROM xprov.op_result r
		 WHERE ($1 IS NULL OR r.tenant_id = $1)
		   AND ($2 IS NULL OR r.connector_id = $2)
	)
	SELECT u.n - h.in_progress - h.failed - h.dead_letter - h.parked, h.in_progress, h.failed,
		   h.dead_letter, f.completed, f.skipped, f.cancelled, h.parked
	  FROM unfinished u, heads h, finished f
$$;

-- Hooks ----------------------------------------------------------------------

-- Tenants' JavaScript hooks; see README "Hooks".  A hook is never deleted
-- (attempt histories name its versions), only disabled.
CREATE TABLE xprov.hook (
	id			uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	tenant_id	uuid NOT NULL,
	connector_id uuid,						-- NULL: every connector of the tenant
	object_class text CHECK (object_class <> ''),	-- NULL: every object class
	phase		text NOT NULL CHECK (phase IN ('before', 'after', 'on_error')),
	version		integer NOT NULL DEFAULT 1,
	script		text NOT NULL,
	timeout_ms	integer NOT NULL,
	memory_kb	integer NOT NULL,
	failure		text NOT NULL CHECK (failure IN ('fatal', 'ignore')),
	run_order	integer NOT NULL DEFAULT 0,
	enabled		boolean NOT NULL DEFAULT true,
	created_seq	bigint GENERATED ALWAYS AS IDENTITY,	-- creation order, for ties
	created_at	timestamptz NOT NULL DEFAULT now(),
	updated_at	timestamptz NOT NULL DEFAULT now()
);
-- Configuration: tenants' hooks.  Their identity sequence too, so that hooks
-- added after a restore still come after the restored ones (created_seq
-- breaks ties in the run order).
SELECT pg_catalog.pg_extension_config_dump('xprov.hook', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('xprov.hook', 'created_seq'), '');

CREATE TABLE xprov.hook_version (
	hook_id		uuid NOT NULL REFERENCES xprov.hook (id),
	version		integer NOT NULL,
	script		text NOT NULL,
	created_at	timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (hook_id, version)
);
-- Configuration: every version of every hook (attempt histories name them);
-- pg_dump loads it after xprov.hook, which its foreign key needs.
SELECT pg_catalog.pg_extension_config_dump('xprov.hook_version', '');

CREATE FUNCTION xprov.validate_script(script text)
RETURNS void
AS 'MODULE_PATHNAME', 'xprov_validate_script'
LANGUAGE C VOLATILE;

CREATE FUNCTION xprov.execute_script(script text, context jsonb, timeout_ms integer DEFAULT 100,
									 memory_kb integer DEFAULT 16384)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'xprov_execute_script'
LANGUAGE C VOLATILE;

-- Benchmark helper: microseconds per call of the sandbox alone.
CREATE FUNCTION xprov._sandbox_bench(script text, context jsonb, timeout_ms integer,
									 memory_kb integer, calls integer)
RETURNS double precision
AS 'MODULE_PATHNAME', 'xprov_sandbox_bench'
LANGUAGE C VOLATILE;

-- Test helper: duktape's fatal-error path on purpose; the next call rebuilds the heap.
CREATE FUNCTION xprov._sandbox_force_fatal()
RETURNS text
AS 'MODULE_PATHNAME', 'xprov_sandbox_force_fatal'
LANGUAGE C VOLATILE;

-- Tells the workers, at commit, to reload the hooks.
CREATE FUNCTION xprov._hooks_changed()
RETURNS void
AS 'MODULE_PATHNAME', 'xprov_hooks_changed'
LANGUAGE C VOLATILE;

-- Options with their defaults filled in; refuses what is not allowed.
CREATE FUNCTION xprov._hook_options(options jsonb)
RETURNS TABLE (timeout_ms integer, memory_kb integer, failure text, run_order integer)
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
	unknown text;
	max_timeout integer := (SELECT s.setting::integer FROM pg_settings s
							 WHERE s.name = 'xprov.hook_max_timeout');
	max_memory integer := (SELECT s.setting::integer FROM pg_settings s
							WHERE s.name = 'xprov.hook_max_memory');
BEGIN
	IF options IS NULL OR jsonb_typeof(options) <> 'object' THEN
		RAISE EXCEPTION 'hook options must be a JSON object'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Pass ''{}'' for the defaults.';
	END IF;
	SELECT string_agg(k, ', ') INTO unknown
	  FROM jsonb_object_keys(options) k
	 WHERE k NOT IN ('timeout_ms', 'memory_kb', 'failure', 'order');
	IF unknown IS NOT NULL THEN
		RAISE EXCEPTION 'unknown hook options: %', unknown
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Hook options are timeout_ms, memory_kb, failure and order.';
	END IF;
	timeout_ms := xprov._hook_int_option(options, 'timeout_ms', 100, 1, max_timeout,
										 'xprov.hook_max_timeout');
	memory_kb := xprov._hook_int_option(options, 'memory_kb', 16384, 64, max_memory,
										'xprov.hook_max_memory');
	run_order := xprov._hook_int_option(options, 'order', 0, -1000000, 1000000, NULL);
	failure := coalesce(options ->> 'failure', 'fatal');
	IF options ? 'failure' AND (jsonb_typeof(options -> 'failure') <> 'string'
								OR failure NOT IN ('fatal', 'ignore')) THEN
		RAISE EXCEPTION 'hook option failure must be "fatal" or "ignore"'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('failure was %s.', options -> 'failure');
	END IF;
	RETURN NEXT;
END
$$;

CREATE FUNCTION xprov._hook_int_option(options jsonb, name text, default_value integer,
									   low integer, high integer, setting text)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
	value jsonb := options -> name;
BEGIN
	IF value IS NULL THEN
		RETURN default_value;
	END IF;
	IF jsonb_typeof(value) <> 'number' OR value::text !~ '^-?[0-9]+$'
	   OR value::numeric NOT BETWEEN low AND high THEN
		RAISE EXCEPTION 'hook option % must be an integer from % to %', name, low, high
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('%s was %s.', name, value),
				  HINT = CASE WHEN setting IS NOT NULL
							  THEN format('The upper bound is the setting %s.', setting)
							  ELSE 'Pass a whole number.' END;
	END IF;
	RETURN value::integer;
END
$$;

CREATE FUNCTION xprov._raise_unknown_hook(hook_id uuid)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
BEGIN
	RAISE EXCEPTION 'hook % does not exist', hook_id
		USING ERRCODE = 'undefined_object',
			  HINT = 'List hooks with SELECT * FROM xprov.hooks.';
END
$$;

CREATE FUNCTION xprov.add_hook(tenant_id uuid, connector_id uuid, object_class text, phase text,
							   script text, options jsonb DEFAULT '{}')
RETURNS uuid
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
	o record;
	owner uuid;
	new_id uuid;
BEGIN
	IF tenant_id IS NULL OR phase IS NULL OR script IS NULL THEN
		RAISE EXCEPTION 'tenant_id, phase and script must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF phase NOT IN ('before', 'after', 'on_error') THEN
		RAISE EXCEPTION 'unknown hook phase "%"', phase
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Use before, after or on_error.';
	END IF;
	IF object_class IS NOT NULL AND btrim(object_class) = '' THEN
		RAISE EXCEPTION 'object_class must not be empty'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Pass NULL for a hook that applies to every object class.';
	END IF;
	IF connector_id IS NOT NULL THEN
		SELECT c.tenant_id INTO owner FROM xprov.connector c WHERE c.id = add_hook.connector_id;
		IF NOT FOUND THEN
			RAISE EXCEPTION 'connector % does not exist', connector_id
				USING ERRCODE = 'undefined_object',
					  HINT = 'List connectors with SELECT * FROM xprov.connectors.';
		END IF;
		IF owner <> tenant_id THEN
			RAISE EXCEPTION 'connector % belongs to another tenant', connector_id
				USING ERRCODE = 'invalid_parameter_value';
		END IF;
	END IF;
	SELECT * INTO o FROM xprov._hook_options(options);
	PERFORM xprov.validate_script(script);
	INSERT INTO xprov.hook AS h (tenant_id, connector_id, object_class, phase, script, timeout_ms,
								 memory_kb, failure, run_order)
	VALUES (add_hook.tenant_id, add_hook.connector_id, add_hook.object_class, add_hook.phase,
			add_hook.script, o.timeout_ms, o.memory_kb, o.failure, o.run_order)
	RETURNING h.id INTO new_id;
	INSERT INTO xprov.hook_version (hook_id, version, script) VALUES (new_id, 1, add_hook.script);
	PERFORM xprov._hooks_changed();
	RETURN new_id;
END
$$;

CREATE FUNCTION xprov.update_hook(hook_id uuid, script text)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
	new_version integer;
BEGIN
	IF script IS NULL THEN
		RAISE EXCEPTION 'script must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	PERFORM xprov.validate_script(script);
	UPDATE xprov.hook h SET version = h.version + 1, script = update_hook.script, updated_at = now()
	 WHERE h.id = update_hook.hook_id
	RETURNING h.version INTO new_version;
	IF NOT FOUND THEN
		PERFORM xprov._raise_unknown_hook(hook_id);
	END IF;
	INSERT INTO xprov.hook_version (hook_id, version, script)
	VALUES (update_hook.hook_id, new_version, update_hook.script);
	PERFORM xprov._hooks_changed();
	RETURN new_version;
END
$$;

CREATE FUNCTION xprov.set_hook_enabled(hook_id uuid, enabled boolean)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
BEGIN
	IF enabled IS NULL THEN
		RAISE EXCEPTION 'enabled must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	UPDATE xprov.hook h SET enabled = set_hook_enabled.enabled, updated_at = now()
	 WHERE h.id = set_hook_enabled.hook_id;
	IF NOT FOUND THEN
		PERFORM xprov._raise_unknown_hook(hook_id);
	END IF;
	PERFORM xprov._hooks_changed();
END
$$;

CREATE VIEW xprov.hooks AS
	SELECT h.id, h.tenant_id, h.connector_id, h.object_class, h.phase, h.version, h.enabled,
		   h.run_order AS "order", h.timeout_ms, h.memory_kb, h.failure, h.script,
		   h.created_at, h.updated_at
	  FROM xprov.hook h;

CREATE VIEW xprov.hook_versions AS
	SELECT v.hook_id, v.version, v.script, v.created_at
	  FROM xprov.hook_version v;

-- Correlation (issue 5, first part) ------------------------------------------
--
-- Which identity owns a target account: each tenant registers the
-- application's own identity relation, each connector and object class gets
-- rules (items of target attribute <-> identity attribute with a match
-- kind), and xprov.correlate_owner() queries the relation directly, through
-- the application's own indexes.  Scores follow midPoint's model: an item
-- scores 1 (exact kinds) or its similarity (fuzzy), a rule's confidence is
-- the product of its items', an identity's score is min(1, sum of weight *
-- confidence) over the rules that found it; tiers are tried in order and
-- stop at a single definite match.

CREATE TABLE xprov.identity_source (
	tenant_id	uuid PRIMARY KEY,
	relation	regclass NOT NULL,
	id_column	name NOT NULL,
	tenant_column name,						-- NULL: the relation holds this tenant only
	attributes_column name,					-- a jsonb column of further attributes, or NULL
	columns		jsonb NOT NULL DEFAULT '{}', -- identity attribute name -> column
	updated_at	timestamptz NOT NULL DEFAULT now()
);
-- Configuration: where a tenant's identities live.  relation is dumped as its
-- schema-qualified name and restored by name: the application's table is
-- created (pre-data) before any table's data is loaded.
SELECT pg_catalog.pg_extension_config_dump('xprov.identity_source', '');

CREATE TABLE xprov.correlation_rule (
	id			uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	tenant_id	uuid NOT NULL,
	connector_id uuid NOT NULL,
	object_class text NOT NULL CHECK (object_class <> ''),
	name		text,
	tier		integer NOT NULL CHECK (tier >= 1),
	weight		double precision NOT NULL CHECK (weight > 0),
	items		jsonb NOT NULL,
	enabled		boolean NOT NULL DEFAULT true,
	created_at	timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX correlation_rule_connector ON xprov.correlation_rule (connector_id, object_class);
-- Configuration: an administrator's correlation rules.
SELECT pg_catalog.pg_extension_config_dump('xprov.correlation_rule', '');

CREATE TABLE xprov.correlation_threshold (
	connector_id uuid PRIMARY KEY,
	definite	double precision NOT NULL,
	candidate	double precision NOT NULL,
	CHECK (0 <= candidate AND candidate < definite AND definite <= 1)
);
-- Configuration: an administrator's thresholds.
SELECT pg_catalog.pg_extension_config_dump('xprov.correlation_threshold', '');

-- Lower-case, trimmed, inner white space collapsed, accents stripped; for
-- 'normalized' matches and the expression indexes that serve them.  Lower
-- case through ICU's root collation: the database's own may be C, which
-- leaves every non-ASCII letter as it is.
CREATE FUNCTION xprov.normalize_text(value text)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog
AS $$
	SELECT regexp_replace(regexp_replace(normalize(lower(btrim(value) COLLATE "und-x-icu"), NFD),
										 '[\u0300-\u036f]', '', 'g'),
						  '\s+', ' ', 'g')
$$;

CREATE FUNCTION xprov._column_type(relation regclass, col name)
RETURNS regtype
LANGUAGE sql STABLE
SET search_path = pg_catalog
AS $$
	SELECT a.atttypid::regtype FROM pg_attribute a
	 WHERE a.attrelid = relation AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped
$$;

CREATE FUNCTION xprov.set_identity_source(tenant_id uuid, relation regclass, options jsonb DEFAULT '{}')
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
	unknown text;
	id_col name := coalesce(options ->> 'id_column', 'id');
	tenant_col name := options ->> 'tenant_column';
	attrs_col name := options ->> 'attributes_column';
	cols jsonb := coalesce(options -> 'columns', '{}');
	bad text;
BEGIN
	IF tenant_id IS NULL OR relation IS NULL THEN
		RAISE EXCEPTION 'tenant_id and relation must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF options IS NULL OR jsonb_typeof(options) <> 'object' THEN
		RAISE EXCEPTION 'identity source options must be a JSON object' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	SELECT string_agg(k, ', ') INTO unknown FROM jsonb_object_keys(options) k
	 WHERE k NOT IN ('id_column', 'tenant_column', 'attributes_column', 'columns');
	IF unknown IS NOT NULL THEN
		RAISE EXCEPTION 'unknown identity source options: %', unknown
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Options are id_column, tenant_column, attributes_column and columns.';
	END IF;
	IF (SELECT c.relkind FROM pg_class c WHERE c.oid = relation) NOT IN ('r', 'v', 'm', 'p', 'f') THEN
		RAISE EXCEPTION '% is not a table or view', relation USING ERRCODE = 'wrong_object_type';
	END IF;
	IF xprov._column_type(relation, id_col) IS DISTINCT FROM 'uuid'::regtype THEN
		RAISE EXCEPTION 'identity source % needs a uuid id column "%"', relation, id_col
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Name it with the id_column option.';
	END IF;
	IF tenant_col IS NOT NULL AND xprov._column_type(relation, tenant_col) IS DISTINCT FROM 'uuid'::regtype THEN
		RAISE EXCEPTION 'identity source % has no uuid tenant column "%"', relation, tenant_col
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF attrs_col IS NOT NULL AND xprov._column_type(relation, attrs_col) IS DISTINCT FROM 'jsonb'::regtype THEN
		RAISE EXCEPTION 'identity source % has no jsonb attributes column "%"', relation, attrs_col
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF jsonb_typeof(cols) <> 'object' THEN
		RAISE EXCEPTION 'identity source option columns must map attribute names to columns'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	SELECT string_agg(format('%s -> %s', e.key, e.value), ', ') INTO bad FROM jsonb_each(cols) e
	 WHERE jsonb_typeof(e.value) <> 'string' OR xprov._column_type(relation, e.value #>> '{}') IS NULL;
	IF bad IS NOT NULL THEN
		RAISE EXCEPTION 'identity source % has no columns for: %', relation, bad
			USING ERRCODE = 'undefined_column';
	END IF;
	INSERT INTO xprov.identity_source AS s (tenant_id, relation, id_column, tenant_column,
											attributes_column, columns)
	VALUES (set_identity_source.tenant_id, relation, id_col, tenant_col, attrs_col, cols)
	ON CONFLICT ON CONSTRAINT identity_source_pkey DO UPDATE
	   SET relation = excluded.relation, id_column = excluded.id_column,
		   tenant_column = excluded.tenant_column, attributes_column = excluded.attributes_column,
		   columns = excluded.columns, updated_at = now();
END
$$;

-- The SQL expression (over alias i) for an identity attribute, or NULL.
CREATE FUNCTION xprov._identity_expr(src xprov.identity_source, attribute text)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog
AS $$
	SELECT CASE
		WHEN src.columns ? attribute THEN format('i.%I::text', src.columns ->> attribute)
		WHEN xprov._column_type(src.relation, attribute::name) IS NOT NULL
			THEN format('i.%I::text', attribute)
		WHEN src.attributes_column IS NOT NULL THEN format('(i.%I ->> %L)', src.attributes_column, attribute)
	END
$$;

-- The text at a SCIM-style attribute path: name.givenName, emails.0.value,
-- urn:...:enterprise:2.0:User:employeeNumber.
CREATE FUNCTION xprov._account_value(account jsonb, path text)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog
AS $$
	SELECT CASE
		WHEN path LIKE 'urn:%' THEN
			account #>> (ARRAY[regexp_replace(path, ':[^:]*$', '')]
						 || string_to_array(substring(path FROM ':([^:]*)$'), '.'))
		ELSE account #>> string_to_array(path, '.')
	END
$$;

CREATE FUNCTION xprov._trgm_schema()
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog
AS $$
	SELECT e.extnamespace::regnamespace::text FROM pg_extension e WHERE e.extname = 'pg_trgm'
$$;

CREATE FUNCTION xprov.add_correlation_rule(connector_id uuid, object_class text, rule jsonb)
RETURNS uuid
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
	owner uuid;
	src xprov.identity_source;
	item jsonb;
	unknown text;
	n integer;
	new_id uuid;
BEGIN
	IF connector_id IS NULL OR object_class IS NULL OR rule IS NULL THEN
		RAISE EXCEPTION 'connector_id, object_class and rule must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	SELECT c.tenant_id INTO owner FROM xprov.connector c WHERE c.id = add_correlation_rule.connector_id;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'connector % does not exist', connector_id USING ERRCODE = 'undefined_object';
	END IF;
	IF btrim(object_class) = '' THEN
		RAISE EXCEPTION 'object_class must not be empty' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	SELECT * INTO src FROM xprov.identity_source s WHERE s.tenant_id = owner;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'tenant % has no identity source', owner
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  HINT = 'Register it first with xprov.set_identity_source().';
	END IF;
	IF jsonb_typeof(rule) <> 'object' THEN
		RAISE EXCEPTION 'a correlation rule must be a JSON object' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	SELECT string_agg(k, ', ') INTO unknown FROM jsonb_object_keys(rule) k
	 WHERE k NOT IN ('name', 'items', 'weight', 'tier');
	IF unknown IS NOT NULL THEN
		RAISE EXCEPTION 'unknown correlation rule keys: %', unknown
			USING ERRCODE = 'invalid_parameter_value', HINT = 'Rules have name, items, weight and tier.';
	END IF;
	IF jsonb_typeof(rule -> 'items') IS DISTINCT FROM 'array'
	   OR jsonb_array_length(rule -> 'items') NOT BETWEEN 1 AND 10 THEN
		RAISE EXCEPTION 'a correlation rule needs 1 to 10 items'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'For example {"items": [{"target": "userName", "identity": "email", "match": "case_insensitive"}]}.';
	END IF;
	IF rule ? 'weight' AND (jsonb_typeof(rule -> 'weight') <> 'number' OR (rule ->> 'weight')::float8 <= 0) THEN
		RAISE EXCEPTION 'correlation rule weight must be a positive number' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF rule ? 'tier' AND (jsonb_typeof(rule -> 'tier') <> 'number' OR (rule ->> 'tier') !~ '^[0-9]+$'
						  OR (rule ->> 'tier')::numeric NOT BETWEEN 1 AND 100) THEN
		RAISE EXCEPTION 'correlation rule tier must be an integer from 1 to 100' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	FOR item, n IN SELECT e.value, e.ordinality FROM jsonb_array_elements(rule -> 'items') WITH ORDINALITY e LOOP
		IF jsonb_typeof(item) <> 'object' THEN
			RAISE EXCEPTION 'correlation rule item % is not an object', n USING ERRCODE = 'invalid_parameter_value';
		END IF;
		SELECT string_agg(k, ', ') INTO unknown FROM jsonb_object_keys(item) k
		 WHERE k NOT IN ('target', 'identity', 'match', 'min_score');
		IF unknown IS NOT NULL THEN
			RAISE EXCEPTION 'correlation rule item %: unknown keys %', n, unknown
				USING ERRCODE = 'invalid_parameter_value', HINT = 'Items have target, identity, match and min_score.';
		END IF;
		IF jsonb_typeof(item -> 'target') IS DISTINCT FROM 'string' OR btrim(item ->> 'target') = '' THEN
			RAISE EXCEPTION 'correlation rule item % needs a target attribute', n USING ERRCODE = 'invalid_parameter_value';
		END IF;
		IF jsonb_typeof(item -> 'identity') IS DISTINCT FROM 'string'
		   OR xprov._identity_expr(src, item ->> 'identity') IS NULL THEN
			RAISE EXCEPTION 'correlation rule item %: unknown identity attribute %', n, coalesce(item -> 'identity', 'null')
				USING ERRCODE = 'undefined_column',
					  DETAIL = format('The identity source %s has no such column and no attributes column.', src.relation);
		END IF;
		IF coalesce(item ->> 'match', '') NOT IN ('exact', 'case_insensitive', 'normalized', 'fuzzy') THEN
			RAISE EXCEPTION 'correlation rule item %: unknown match kind %', n, coalesce(item -> 'match', 'null')
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'Use exact, case_insensitive, normalized or fuzzy.';
		END IF;
		IF item ->> 'match' = 'fuzzy' AND xprov._trgm_schema() IS NULL THEN
			RAISE EXCEPTION 'fuzzy matching needs the pg_trgm extension'
				USING ERRCODE = 'feature_not_supported', HINT = 'CREATE EXTENSION pg_trgm;';
		END IF;
		IF item ? 'min_score' AND (item ->> 'match' <> 'fuzzy' OR jsonb_typeof(item -> 'min_score') <> 'number'
								   OR (item ->> 'min_score')::float8 <= 0 OR (item ->> 'min_score')::float8 > 1) THEN
			RAISE EXCEPTION 'correlation rule item %: min_score is a number in (0, 1] for fuzzy items', n
				USING ERRCODE = 'invalid_parameter_value';
		END IF;
	END LOOP;
	INSERT INTO xprov.correlation_rule AS r (tenant_id, connector_id, object_class, name, tier, weight, items)
	VALUES (owner, add_correlation_rule.connector_id, add_correlation_rule.object_class, rule ->> 'name',
			coalesce((rule ->> 'tier')::integer, 1), coalesce((rule ->> 'weight')::float8, 1), rule -> 'items')
	RETURNING r.id INTO new_id;
	RETURN new_id;
END
$$;

CREATE FUNCTION xprov.set_correlation_thresholds(connector_id uuid, definite double precision,
												 candidate double precision)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
BEGIN
	IF definite IS NULL OR candidate IS NULL THEN
		RAISE EXCEPTION 'thresholds must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF NOT (0 <= candidate AND candidate < definite AND definite <= 1) THEN
		RAISE EXCEPTION 'correlation thresholds out of order: candidate % and definite %', candidate, definite
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'They must satisfy 0 <= candidate < definite <= 1.';
	END IF;
	IF NOT EXISTS (SELECT 1 FROM xprov.connector c WHERE c.id = set_correlation_thresholds.connector_id) THEN
		RAISE EXCEPTION 'connector % does not exist', connector_id USING ERRCODE = 'undefined_object';
	END IF;
	INSERT INTO xprov.correlation_threshold AS t (connector_id, definite, candidate)
	VALUES (set_correlation_thresholds.connector_id, definite, candidate)
	ON CONFLICT ON CONSTRAINT correlation_threshold_pkey
	DO UPDATE SET definite = excluded.definite, candidate = excluded.candidate;
END
$$;

CREATE VIEW xprov.correlation_rules AS
	SELECT r.id, r.tenant_id, r.connector_id, r.object_class, r.name, r.tier, r.weight, r.items,
		   r.enabled, coalesce(t.definite, 1.0) AS definite, coalesce(t.candidate, 0.0) AS candidate,
		   r.created_at
	  FROM xprov.correlation_rule r
	  LEFT JOIN xprov.correlation_threshold t ON t.connector_id = r.connector_id;

-- One rule as a query with per-item scores.  Direction 'owner' searches the
-- identity source for an account's values (keys: identity ids); direction
-- 'account' searches the live shadows for an identity's values (keys:
-- target uids), reading each value from the input by its identity name,
-- else by its target path.  NULL when the input lacks a value the rule needs.
-- Parameters of the query: $1 tenant, $2 the values, $3 connector, $4 object class.
CREATE FUNCTION xprov._rule_query(src xprov.identity_source, items jsonb, input jsonb, direction text,
								  OUT query text, OUT vals text[], OUT min_fuzzy double precision)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog
AS $$
DECLARE
	item jsonb;
	k integer := 0;
	v text;
	expr text;
	conds text[] := '{}';
	scores text[] := '{}';
	trgm text := xprov._trgm_schema();
	min_score double precision;
BEGIN
	vals := '{}';
	FOR item IN SELECT e.value FROM jsonb_array_elements(items) e LOOP
		k := k + 1;
		IF direction = 'owner' THEN
			v := xprov._account_value(input, item ->> 'target');
			expr := xprov._identity_expr(src, item ->> 'identity');
			IF expr IS NULL THEN
				RAISE EXCEPTION 'the identity source % no longer has attribute %', src.relation, item ->> 'identity'
					USING ERRCODE = 'undefined_column';
			END IF;
		ELSE
			v := coalesce(input ->> (item ->> 'identity'), xprov._account_value(input, item ->> 'target'));
			expr := format('xprov._account_value(coalesce(s.observed, s.expected), %L)', item ->> 'target');
		END IF;
		IF v IS NULL THEN
			query := NULL;
			RETURN;
		END IF;
		vals := vals || v;
		CASE item ->> 'match'
			WHEN 'exact' THEN
				conds := conds || format('%s = ($2)[%s]', expr, k);
				scores := scores || '1'::text;
			WHEN 'case_insensitive' THEN
				conds := conds || format('lower(%s) = lower(($2)[%s])', expr, k);
				scores := scores || '1'::text;
			WHEN 'normalized' THEN
				conds := conds || format('xprov.normalize_text(%s) = xprov.normalize_text(($2)[%s])', expr, k);
				scores := scores || '1'::text;
			ELSE
				IF trgm IS NULL THEN
					RAISE EXCEPTION 'fuzzy matching needs the pg_trgm extension'
						USING ERRCODE = 'feature_not_supported', HINT = 'CREATE EXTENSION pg_trgm;';
				END IF;
				min_score := coalesce((item ->> 'min_score')::float8, 0.5);
				min_fuzzy := least(coalesce(min_fuzzy, 1), min_score);
				-- % can use a trigram index; its threshold is set to the lowest min_score
				conds := conds || format('%1$s OPERATOR(%2$I.%%) ($2)[%3$s] AND %2$I.similarity(%1$s, ($2)[%3$s]) >= %4$s',
										 expr, trgm, k, min_score);
				scores := scores || format('%I.similarity(%s, ($2)[%s])', trgm, expr, k);
		END CASE;
	END LOOP;
	IF direction = 'owner' THEN
		query := format('SELECT i.%I::text AS id, ARRAY[%s]::float8[] AS scores FROM %s i WHERE %s%s LIMIT 100',
						src.id_column, array_to_string(scores, ', '), src.relation,
						CASE WHEN src.tenant_column IS NOT NULL THEN format('i.%I = $1 AND ', src.tenant_column) END,
						array_to_string(conds, ' AND '));
	ELSE
		query := format('SELECT s.target_uid AS id, ARRAY[%s]::float8[] AS scores FROM xprov.shadow s '
						'WHERE s.tenant_id = $1 AND s.connector_id = $3 AND s.object_class = $4 '
						'AND s.dead_at IS NULL AND s.target_uid IS NOT NULL AND %s LIMIT 100',
						array_to_string(scores, ', '), array_to_string(conds, ' AND '));
	END IF;
END
$$;

-- Runs a connector's rules tier by tier (a later tier only while no single
-- definite match was found) and scores what they find: a rule's confidence
-- is the product of its items' scores, a key's score min(1, sum of weight *
-- confidence).  Keys in excluded (rejected pairings) are never proposed.
-- Returns every key at or above the candidate threshold, best first.
CREATE FUNCTION xprov._correlation_matches(owner uuid, src xprov.identity_source, connector_id uuid,
										   object_class text, input jsonb, direction text,
										   excluded text[] DEFAULT '{}')
RETURNS TABLE (key text, confidence double precision, match_type text, evidence jsonb)
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
	definite double precision := 1.0;
	candidate double precision := 0.0;
	r record;
	q record;
	hit record;
	conf double precision;
	found_by jsonb := '{}';			-- key -> {"score": s, "rules": [...]}
	tier integer;
	evaluated integer := 0;
	n_definite integer;
	s double precision;
	saved_threshold text;
BEGIN
	SELECT t.definite, t.candidate INTO definite, candidate
	  FROM xprov.correlation_threshold t WHERE t.connector_id = _correlation_matches.connector_id;
	definite := coalesce(definite, 1.0);
	candidate := coalesce(candidate, 0.0);

	FOR r IN SELECT * FROM xprov.correlation_rule cr
			  WHERE cr.connector_id = _correlation_matches.connector_id
				AND cr.object_class = _correlation_matches.object_class AND cr.enabled
			  ORDER BY cr.tier, cr.created_at, cr.id LOOP
		IF tier IS NOT NULL AND r.tier <> tier THEN
			SELECT count(*) INTO n_definite FROM jsonb_each(found_by) e
			 WHERE (e.value ->> 'score')::float8 >= definite;
			EXIT WHEN n_definite = 1;
		END IF;
		tier := r.tier;
		SELECT * INTO q FROM xprov._rule_query(src, r.items, input, direction);
		CONTINUE WHEN q.query IS NULL;
		evaluated := evaluated + 1;
		IF q.min_fuzzy IS NOT NULL THEN
			-- for this query only: the caller's transaction keeps its own threshold
			saved_threshold := current_setting('pg_trgm.similarity_threshold', true);
			PERFORM set_config('pg_trgm.similarity_threshold', q.min_fuzzy::text, true);
		END IF;
		FOR hit IN EXECUTE q.query USING owner, q.vals, connector_id, object_class LOOP
			CONTINUE WHEN hit.id = ANY (excluded);
			conf := 1.0;
			FOREACH s IN ARRAY hit.scores LOOP
				conf := conf * s;
			END LOOP;
			found_by := jsonb_set(found_by, ARRAY[hit.id], jsonb_build_object(
				'score', least(1.0, coalesce((found_by #>> ARRAY[hit.id, 'score'])::float8, 0) + r.weight * conf),
				'rules', coalesce(found_by #> ARRAY[hit.id, 'rules'], '[]'::jsonb)
						 || jsonb_build_object('rule', r.id, 'name', r.name, 'tier', r.tier, 'weight', r.weight,
											   'confidence', conf, 'items', r.items, 'item_scores', to_jsonb(hit.scores))));
		END LOOP;
		IF q.min_fuzzy IS NOT NULL THEN
			PERFORM set_config('pg_trgm.similarity_threshold', coalesce(saved_threshold, '0.3'), true);
		END IF;
	END LOOP;

	SELECT count(*) INTO n_definite FROM jsonb_each(found_by) e WHERE (e.value ->> 'score')::float8 >= definite;
	RETURN QUERY
		SELECT e.key, (e.value ->> 'score')::float8,
			   CASE WHEN (e.value ->> 'score')::float8 >= definite AND n_definite = 1
					THEN 'definite' ELSE 'candidate' END,
			   jsonb_build_object('rules', e.value -> 'rules', 'definite', definite, 'candidate', candidate,
								  'ambiguous', n_definite > 1)
		  FROM jsonb_each(found_by) e
		 WHERE (e.value ->> 'score')::float8 >= candidate AND (e.value ->> 'score')::float8 > 0
		 ORDER BY (e.value ->> 'score')::float8 DESC, e.key;
	IF NOT FOUND THEN
		RETURN QUERY SELECT NULL::text, 0.0::float8, 'none'::text,
							jsonb_build_object('rules_evaluated', evaluated);
	END IF;
END
$$;

-- The connector's tenant, after checking the arguments every correlation
-- function takes.
CREATE FUNCTION xprov._correlation_tenant(tenant_id uuid, connector_id uuid, object_class text,
										  input jsonb, input_name text)
RETURNS uuid
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog
AS $$
DECLARE
	owner uuid;
BEGIN
	IF tenant_id IS NULL OR connector_id IS NULL OR object_class IS NULL THEN
		RAISE EXCEPTION 'tenant_id, connector_id and object_class must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF input IS NULL OR jsonb_typeof(input) <> 'object' THEN
		RAISE EXCEPTION '% must be a JSON object', input_name USING ERRCODE = 'invalid_parameter_value';
	END IF;
	SELECT c.tenant_id INTO owner FROM xprov.connector c WHERE c.id = _correlation_tenant.connector_id;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'connector % does not exist', connector_id USING ERRCODE = 'undefined_object';
	END IF;
	IF owner <> tenant_id THEN
		RAISE EXCEPTION 'connector % belongs to another tenant', connector_id USING ERRCODE = 'invalid_parameter_value';
	END IF;
	RETURN owner;
END
$$;

CREATE FUNCTION xprov.correlate_owner(tenant_id uuid, connector_id uuid, account jsonb,
									  object_class text DEFAULT 'user')
RETURNS TABLE (identity_id uuid, confidence double precision, match_type text, evidence jsonb)
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
	owner uuid := xprov._correlation_tenant(tenant_id, connector_id, object_class, account, 'account');
	src xprov.identity_source;
	linked uuid;
	rejected text[] := '{}';
BEGIN
	SELECT * INTO src FROM xprov.identity_source i WHERE i.tenant_id = owner;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'tenant % has no identity source', owner
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  HINT = 'Register it first with xprov.set_identity_source().';
	END IF;

	IF account ? 'id' THEN
		-- an account linked before, or paired by a person, needs no correlation
		linked := xprov._account_owner(connector_id, object_class, account ->> 'id');
		IF linked IS NOT NULL THEN
			RETURN QUERY SELECT linked, 1.0::float8, 'existing_link'::text,
								jsonb_build_object('target_uid', account ->> 'id');
			RETURN;
		END IF;
		SELECT coalesce(array_agg(d.identity_id::text), '{}') INTO rejected FROM xprov.correlation_decision d
		 WHERE d.connector_id = correlate_owner.connector_id AND d.object_class = correlate_owner.object_class
		   AND d.target_uid = account ->> 'id' AND NOT d.linked;
	END IF;

	RETURN QUERY
		SELECT m.key::uuid, m.confidence, m.match_type, m.evidence
		  FROM xprov._correlation_matches(owner, src, connector_id, object_class, account, 'owner', rejected) m;
END
$$;

-- The identity attributes the connector's rules name, read from the
-- identity source (an empty object when there is none, or no such identity).
CREATE FUNCTION xprov._identity_attributes(src xprov.identity_source, connector_id uuid,
										   object_class text, identity_id uuid)
RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog
AS $$
DECLARE
	pairs text;
	result jsonb;
BEGIN
	IF src.relation IS NULL OR identity_id IS NULL THEN
		RETURN '{}';
	END IF;
	SELECT string_agg(DISTINCT format('%L, %s', n, xprov._identity_expr(src, n)), ', ') INTO pairs
	  FROM xprov.correlation_rule r, jsonb_array_elements(r.items) i, LATERAL (SELECT i ->> 'identity') x(n)
	 WHERE r.connector_id = _identity_attributes.connector_id AND r.object_class = _identity_attributes.object_class
	   AND r.enabled AND xprov._identity_expr(src, n) IS NOT NULL;
	IF pairs IS NULL THEN
		RETURN '{}';
	END IF;
	EXECUTE format('SELECT jsonb_strip_nulls(jsonb_build_object(%s)) FROM %s i WHERE i.%I = $1%s',
				   pairs, src.relation, src.id_column,
				   CASE WHEN src.tenant_column IS NOT NULL THEN format(' AND i.%I = $2', src.tenant_column) END)
	   INTO result USING identity_id, src.tenant_id;
	RETURN coalesce(result, '{}');
END
$$;

-- Which existing target account matches these identity attributes: the
-- create path's question.  attributes may name values by the rules' identity
-- attribute names or by their target paths (the account as it would be
-- created); an identity id in them ("identity_id", or the identity source's
-- id column) finds an existing link and the person's decisions first.
CREATE FUNCTION xprov.correlate(tenant_id uuid, connector_id uuid, attributes jsonb,
								object_class text DEFAULT 'user')
RETURNS TABLE (uid text, confidence double precision, match_type text, evidence jsonb)
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
	owner uuid := xprov._correlation_tenant(tenant_id, connector_id, object_class, attributes, 'attributes');
	src xprov.identity_source;
	who_text text;
	who uuid;
	linked text;
	rejected text[] := '{}';
BEGIN
	SELECT * INTO src FROM xprov.identity_source i WHERE i.tenant_id = owner;
	who_text := coalesce(attributes ->> 'identity_id', attributes ->> coalesce(src.id_column, 'id'));
	IF who_text ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$' THEN
		who := who_text::uuid;
	END IF;
	IF who IS NOT NULL THEN
		SELECT s.target_uid INTO linked FROM xprov.shadow s
		 WHERE s.connector_id = correlate.connector_id AND s.object_class = correlate.object_class
		   AND s.identity_id = who AND s.dead_at IS NULL AND s.target_uid IS NOT NULL
		 ORDER BY s.created_at LIMIT 1;
		IF linked IS NULL THEN
			SELECT d.target_uid INTO linked FROM xprov.correlation_decision d
			 WHERE d.connector_id = correlate.connector_id AND d.object_class = correlate.object_class
			   AND d.identity_id = who AND d.linked
			 ORDER BY d.decided_at DESC LIMIT 1;
		END IF;
		IF linked IS NOT NULL THEN
			RETURN QUERY SELECT linked, 1.0::float8, 'existing_link'::text,
								jsonb_build_object('identity_id', who);
			RETURN;
		END IF;
		SELECT coalesce(array_agg(d.target_uid), '{}') INTO rejected FROM xprov.correlation_decision d
		 WHERE d.connector_id = correlate.connector_id AND d.object_class = correlate.object_class
		   AND d.identity_id = who AND NOT d.linked;
		attributes := attributes || xprov._identity_attributes(src, connector_id, object_class, who);
	END IF;

	RETURN QUERY
		SELECT m.key, m.confidence, m.match_type,
			   m.evidence || jsonb_build_object('linked_identity', s.identity_id)
		  FROM xprov._correlation_matches(owner, src, connector_id, object_class, attributes, 'account',
										  rejected) m
		  LEFT JOIN xprov.shadow s ON s.connector_id = correlate.connector_id
								  AND s.object_class = correlate.object_class
								  AND s.target_uid = m.key AND s.dead_at IS NULL;
END
$$;

-- Correlation cases and decisions (issue 5) ---------------------------------
--
-- When correlation cannot decide (several candidates, a candidate below the
-- definite threshold, an account already linked to someone else), nothing is
-- created or linked: a case records the question with its candidates and
-- evidence, and the operation that asked waits (parked) until a person
-- answers with xprov.resolve_case().  Answers are kept as decisions, which
-- every later correlation consults first: a confirmed pairing is used as an
-- existing link, a rejected one is never proposed again.

CREATE TABLE xprov.correlation_case (
	id			uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	tenant_id	uuid NOT NULL,
	connector_id uuid NOT NULL,
	object_class text NOT NULL,
	origin		text NOT NULL CHECK (origin IN ('create', 'reconciliation')),
	op_id		uuid,					-- the parked operation, if one waits
	identity_id	uuid,					-- create: the identity the operation provisions
	target_uid	text,					-- reconciliation: the account whose owner is uncertain
	situation	text NOT NULL CHECK (situation IN ('disputed', 'collision')),
	reason		text NOT NULL,
	candidates	jsonb NOT NULL CHECK (jsonb_typeof(candidates) = 'array'),
	status		text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'resolved')),
	decision	text CHECK (decision IN ('link', 'create_new', 'reject')),
	decided_identity uuid,
	decided_uid	text,
	decided_by	text,
	decided_at	timestamptz,
	created_at	timestamptz NOT NULL DEFAULT now(),
	CHECK ((status = 'resolved') = (decision IS NOT NULL))
);
CREATE UNIQUE INDEX correlation_case_open_op ON xprov.correlation_case (op_id)
	WHERE status = 'open' AND op_id IS NOT NULL;
CREATE INDEX correlation_case_open ON xprov.correlation_case (tenant_id, created_at)
	WHERE status = 'open';
-- reconciliation asks, per account, whether a case about it is still open
CREATE INDEX correlation_case_open_account ON xprov.correlation_case (connector_id, object_class, target_uid)
	WHERE status = 'open' AND target_uid IS NOT NULL;
-- Runtime (not dumped): an open case waits for a parked operation, which is
-- not dumped; a resolved one is history, and what the person decided is kept
-- in xprov.correlation_decision, which is.

CREATE TABLE xprov.correlation_decision (
	connector_id uuid NOT NULL,
	object_class text NOT NULL,
	target_uid	text NOT NULL,
	identity_id	uuid NOT NULL,
	tenant_id	uuid NOT NULL,
	linked		boolean NOT NULL,		-- true: confirmed; false: rejected, never proposed again
	case_id		uuid,
	decided_by	text NOT NULL DEFAULT current_user,
	decided_at	timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (connector_id, object_class, target_uid, identity_id)
);
CREATE INDEX correlation_decision_identity ON xprov.correlation_decision
	(connector_id, object_class, identity_id);
-- Configuration: what a person decided, sticky and never asked again.  Its
-- case_id keeps naming the case, which is not dumped (no foreign key).
SELECT pg_catalog.pg_extension_config_dump('xprov.correlation_decision', '');

CREATE VIEW xprov.correlation_cases AS
	SELECT c.id, c.tenant_id, c.connector_id, c.object_class, c.origin, c.op_id AS operation_id,
		   c.identity_id, c.target_uid, c.situation, c.reason, c.candidates, c.status, c.decision,
		   c.decided_identity, c.decided_uid, c.decided_by, c.decided_at, c.created_at,
		   (SELECT o.status FROM xprov.operations o WHERE o.id = c.op_id) AS operation_status
	  FROM xprov.correlation_case c;

CREATE VIEW xprov.correlation_decisions AS
	SELECT d.tenant_id, d.connector_id, d.object_class, d.target_uid, d.identity_id,
		   CASE WHEN d.linked THEN 'confirmed' ELSE 'rejected' END AS decision,
		   d.case_id, d.decided_by, d.decided_at
	  FROM xprov.correlation_decision d;

-- Who an account belongs to: the owner of its live shadow, else the identity
-- a person confirmed it for.  NULL: nobody.
CREATE FUNCTION xprov._account_owner(connector_id uuid, object_class text, target_uid text)
RETURNS uuid
LANGUAGE sql STABLE
SET search_path = pg_catalog
AS $$
	SELECT coalesce(
		(SELECT s.identity_id FROM xprov.shadow s
		  WHERE s.connector_id = $1 AND s.object_class = $2 AND s.target_uid = $3 AND s.dead_at IS NULL),
		(SELECT d.identity_id FROM xprov.correlation_decision d
		  WHERE d.connector_id = $1 AND d.object_class = $2 AND d.target_uid = $3 AND d.linked
		  ORDER BY d.decided_at DESC LIMIT 1))
$$;

-- The worker's create path (see README "Correlation before a create").
-- Without found_uid: correlation in the database before the target is
-- called.  With found_uid: may the account the target's lookup found be
-- linked to the operation's identity?  Returns {"verdict": "create" | "link"
-- | "park" | "rejected", "uid", "match_type", "case": {situation, reason,
-- candidates}}.
CREATE FUNCTION xprov._correlate_create(op_id uuid, attributes jsonb, found_uid text DEFAULT NULL,
										found_account jsonb DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
	o xprov.op;
	src xprov.identity_source;
	rejected text[];
	linked text;
	other uuid;
	m record;
	matches jsonb := '[]';
	n_definite integer := 0;
	best_uid text;
	best_owner uuid;
	decided record;
BEGIN
	SELECT * INTO o FROM xprov.op x WHERE x.id = op_id;
	IF NOT FOUND OR o.identity_id IS NULL THEN
		-- an account named only by its uid has nobody to correlate for
		RETURN jsonb_build_object('verdict', CASE WHEN found_uid IS NULL THEN 'create' ELSE 'link' END,
								  'uid', found_uid);
	END IF;
	SELECT coalesce(array_agg(d.target_uid), '{}') INTO rejected FROM xprov.correlation_decision d
	 WHERE d.connector_id = o.connector_id AND d.object_class = o.object_class
	   AND d.identity_id = o.identity_id AND NOT d.linked;

	IF found_uid IS NOT NULL THEN
		IF found_uid = ANY (rejected) THEN
			RETURN jsonb_build_object('verdict', 'rejected', 'uid', found_uid);
		END IF;
		other := xprov._account_owner(o.connector_id, o.object_class, found_uid);
		IF other = o.identity_id THEN
			other := NULL;
		END IF;
		IF other IS NOT NULL THEN
			RETURN jsonb_build_object('verdict', 'park', 'case', jsonb_build_object(
				'situation', 'collision',
				'reason', format('the target''s account %s matches, but it is linked to identity %s', found_uid, other),
				'candidates', jsonb_build_array(jsonb_build_object(
					'target_uid', found_uid, 'confidence', 1.0, 'match_type', 'definite',
					'linked_identity', other,
					'evidence', jsonb_build_object('found_by', 'target', 'account', found_account)))));
		END IF;
		RETURN jsonb_build_object('verdict', 'link', 'uid', found_uid, 'match_type', 'definite');
	END IF;

	-- the subject's own account, or the identity's, needs no correlation
	SELECT s.target_uid INTO linked FROM xprov.shadow s
	 WHERE s.connector_id = o.connector_id AND s.object_class = o.object_class AND s.dead_at IS NULL
	   AND s.target_uid IS NOT NULL AND (s.lane_id = o.lane_id OR s.identity_id = o.identity_id)
	 ORDER BY s.lane_id = o.lane_id DESC LIMIT 1;
	IF linked IS NOT NULL THEN
		RETURN jsonb_build_object('verdict', 'link', 'uid', linked, 'match_type', 'existing_link');
	END IF;

	-- a person's confirmed pairing
	SELECT d.target_uid, s.identity_id AS owner INTO decided FROM xprov.correlation_decision d
	  LEFT JOIN xprov.shadow s ON s.connector_id = d.connector_id AND s.object_class = d.object_class
							  AND s.target_uid = d.target_uid AND s.dead_at IS NULL
	 WHERE d.connector_id = o.connector_id AND d.object_class = o.object_class
	   AND d.identity_id = o.identity_id AND d.linked
	 ORDER BY d.decided_at DESC LIMIT 1;
	IF FOUND THEN
		IF decided.owner IS NOT NULL AND decided.owner <> o.identity_id THEN
			RETURN jsonb_build_object('verdict', 'park', 'case', jsonb_build_object(
				'situation', 'collision',
				'reason', format('account %s was confirmed for this identity, but it is now linked to identity %s',
								 decided.target_uid, decided.owner),
				'candidates', jsonb_build_array(jsonb_build_object(
					'target_uid', decided.target_uid, 'confidence', 1.0, 'match_type', 'manual',
					'linked_identity', decided.owner))));
		END IF;
		RETURN jsonb_build_object('verdict', 'link', 'uid', decided.target_uid, 'match_type', 'manual');
	END IF;

	-- the connector's rules against the shadows of other accounts
	IF EXISTS (SELECT 1 FROM xprov.correlation_rule r WHERE r.connector_id = o.connector_id
				  AND r.object_class = o.object_class AND r.enabled) THEN
		SELECT * INTO src FROM xprov.identity_source i WHERE i.tenant_id = o.tenant_id;
		FOR m IN SELECT c.*, xprov._account_owner(o.connector_id, o.object_class, c.key) AS owner
				   FROM xprov._correlation_matches(o.tenant_id, src, o.connector_id, o.object_class,
												   coalesce(attributes, o.attributes)
												   || xprov._identity_attributes(src, o.connector_id, o.object_class,
																				 o.identity_id),
												   'account', rejected) c
				  WHERE c.key IS NOT NULL LOOP
			matches := matches || jsonb_build_object('target_uid', m.key, 'confidence', m.confidence,
													 'match_type', m.match_type, 'linked_identity', m.owner,
													 'evidence', m.evidence);
			IF m.match_type = 'definite' THEN
				n_definite := n_definite + 1;
				best_uid := m.key;
				best_owner := m.owner;
			END IF;
		END LOOP;
		IF jsonb_array_length(matches) = 1 AND n_definite = 1 AND best_owner IS NULL THEN
			RETURN jsonb_build_object('verdict', 'link', 'uid', best_uid, 'match_type', 'definite');
		END IF;
		IF jsonb_array_length(matches) > 0 THEN
			RETURN jsonb_build_object('verdict', 'park', 'case', jsonb_build_object(
				'situation', CASE WHEN n_definite = 1 AND best_owner IS NOT NULL THEN 'collision' ELSE 'disputed' END,
				'reason', CASE
					WHEN n_definite = 1 AND best_owner IS NOT NULL
						THEN format('account %s matches definitely, but it belongs to identity %s', best_uid, best_owner)
					WHEN jsonb_array_length(matches) > 1
						THEN format('%s accounts match; correlation cannot choose', jsonb_array_length(matches))
					ELSE 'one account matches, below the definite threshold' END,
				'candidates', matches));
		END IF;
	END IF;
	RETURN jsonb_build_object('verdict', 'create');
END
$$;

-- The worker parks an operation it leases (its lane row is locked): the
-- lane waits for the case, the attempt is not counted, the subject's
-- shadow becomes proposed.  Returns the case id.
CREATE FUNCTION xprov._park(op_id uuid, details jsonb, hooks text)
RETURNS uuid
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
	o xprov.op;
	case_id uuid;
	reason text;
BEGIN
	SELECT * INTO o FROM xprov.op x WHERE x.id = op_id;
	INSERT INTO xprov.correlation_case AS c (tenant_id, connector_id, object_class, origin, op_id,
											 identity_id, situation, reason, candidates)
	VALUES (o.tenant_id, o.connector_id, o.object_class, 'create', o.id, o.identity_id,
			details ->> 'situation', details ->> 'reason', coalesce(details -> 'candidates', '[]'))
	RETURNING c.id INTO case_id;
	reason := format('parked: correlation case %s: %s', case_id, details ->> 'reason');
	WITH f AS (
		SELECT l.lane_id, l.attempts, l.attempt_base, l.leased_at FROM xprov.lane l
		 WHERE l.lane_id = o.lane_id AND l.state = 'l' AND l.next_seq = o.seq
	), history AS (
		INSERT INTO xprov.op_failure (op_id, attempt, started_at, outcome, error, hooks)
		SELECT o.id, f.attempt_base + f.attempts, f.leased_at, 'c', reason, _park.hooks FROM f
	)
	UPDATE xprov.lane l
	   SET state = 'p', attempts = l.attempts - 1, attempt_base = l.attempt_base + 1,
		   last_error = reason, leased_at = NULL, lease_expires = NULL, leased_by = NULL
	  FROM f WHERE l.lane_id = f.lane_id AND l.state = 'l';
	UPDATE xprov.shadow s
	   SET lifecycle = 'proposed', situation = details ->> 'situation', updated_at = now()
	 WHERE s.lane_id = o.lane_id AND s.dead_at IS NULL AND s.target_uid IS NULL;
	RETURN case_id;
END
$$;

CREATE FUNCTION xprov.resolve_case(case_id uuid, decision text, identity_id uuid DEFAULT NULL,
								   target_uid text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
	c xprov.correlation_case;
	o xprov.op;
	uid text;
	who uuid;
	holder uuid;
	parked boolean := false;
BEGIN
	IF case_id IS NULL OR decision IS NULL THEN
		RAISE EXCEPTION 'case_id and decision must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF decision NOT IN ('link', 'create_new', 'reject') THEN
		RAISE EXCEPTION 'unknown decision "%"', decision
			USING ERRCODE = 'invalid_parameter_value', HINT = 'Decide link, create_new or reject.';
	END IF;
	SELECT * INTO c FROM xprov.correlation_case x WHERE x.id = case_id FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'correlation case % does not exist', case_id
			USING ERRCODE = 'undefined_object', HINT = 'List cases with SELECT * FROM xprov.correlation_cases.';
	END IF;
	IF c.status <> 'open' THEN
		RAISE EXCEPTION 'correlation case % is already resolved', case_id
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = format('It was decided %s by %s at %s.', c.decision, c.decided_by, c.decided_at);
	END IF;

	IF c.origin = 'create' THEN
		-- the question: is one of the candidate accounts the identity's?
		who := coalesce(resolve_case.identity_id, c.identity_id);
		IF decision = 'link' THEN
			uid := resolve_case.target_uid;
			IF uid IS NULL AND jsonb_array_length(c.candidates) = 1 THEN
				uid := c.candidates -> 0 ->> 'target_uid';
			END IF;
			IF uid IS NULL THEN
				RAISE EXCEPTION 'correlation case % has % candidate accounts: name the one to link', case_id,
								jsonb_array_length(c.candidates)
					USING ERRCODE = 'invalid_parameter_value', HINT = 'Pass target_uid => one of the candidates.';
			END IF;
			IF NOT EXISTS (SELECT 1 FROM jsonb_array_elements(c.candidates) e WHERE e ->> 'target_uid' = uid) THEN
				RAISE EXCEPTION 'account % is not a candidate of correlation case %', uid, case_id
					USING ERRCODE = 'invalid_parameter_value';
			END IF;
			SELECT s.identity_id INTO holder FROM xprov.shadow s
			 WHERE s.connector_id = c.connector_id AND s.object_class = c.object_class
			   AND s.target_uid = uid AND s.dead_at IS NULL;
			IF holder IS NOT NULL AND holder <> who THEN
				RAISE EXCEPTION 'account % is linked to identity %', uid, holder
					USING ERRCODE = 'object_not_in_prerequisite_state',
						  DETAIL = 'Linking it to another identity would take it over.',
						  HINT = 'Decide create_new or reject, or delete that link first.';
			END IF;
			PERFORM xprov._decide(c, uid, who, true);
			IF who <> c.identity_id THEN
				-- the account is someone else's: never propose it for this identity again
				PERFORM xprov._decide(c, uid, c.identity_id, false);
			END IF;
		ELSE
			PERFORM xprov._decide(c, e ->> 'target_uid', c.identity_id, false)
			   FROM jsonb_array_elements(c.candidates) e WHERE e ->> 'target_uid' IS NOT NULL;
		END IF;
	ELSE
		-- the question: which identity owns this account?
		IF decision = 'link' THEN
			IF resolve_case.identity_id IS NULL THEN
				RAISE EXCEPTION 'linking needs the owner''s identity_id' USING ERRCODE = 'null_value_not_allowed';
			END IF;
			PERFORM xprov._decide(c, c.target_uid, resolve_case.identity_id, true);
			UPDATE xprov.shadow s SET identity_id = resolve_case.identity_id, situation = 'linked', updated_at = now()
			 WHERE s.connector_id = c.connector_id AND s.object_class = c.object_class
			   AND s.target_uid = c.target_uid AND s.dead_at IS NULL AND s.identity_id IS NULL;
		ELSE
			PERFORM xprov._decide(c, c.target_uid, (e ->> 'identity_id')::uuid, false)
			   FROM jsonb_array_elements(c.candidates) e WHERE e ->> 'identity_id' IS NOT NULL;
		END IF;
		who := resolve_case.identity_id;
		uid := c.target_uid;
	END IF;

	UPDATE xprov.correlation_case x
	   SET status = 'resolved', decision = resolve_case.decision, decided_identity = who, decided_uid = uid,
		   decided_by = current_user, decided_at = now()
	 WHERE x.id = c.id;

	-- release the operation that waited for this answer
	SELECT * INTO o FROM xprov.op x WHERE x.id = c.op_id;
	IF FOUND THEN
		SELECT true INTO parked FROM xprov.lane l
		 WHERE l.lane_id = o.lane_id AND l.state = 'p' AND l.next_seq = o.seq FOR UPDATE;
	END IF;
	IF coalesce(parked, false) THEN
		IF decision = 'reject' THEN
			PERFORM xprov.skip(o.id, format('correlation case %s rejected', c.id));
		ELSE
			UPDATE xprov.lane l
			   SET state = 'r', run_at = now(),
				   last_error = format('correlation case %s resolved: %s', c.id, decision)
			 WHERE l.lane_id = o.lane_id;
			PERFORM xprov._rewind_claims();
		END IF;
	END IF;
END
$$;

CREATE FUNCTION xprov._decide(c xprov.correlation_case, target_uid text, identity_id uuid, linked boolean)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog
AS $$
	INSERT INTO xprov.correlation_decision AS d (connector_id, object_class, target_uid, identity_id,
												 tenant_id, linked, case_id)
	VALUES (c.connector_id, c.object_class, target_uid, identity_id, c.tenant_id, linked, c.id)
	ON CONFLICT ON CONSTRAINT correlation_decision_pkey
	DO UPDATE SET linked = excluded.linked, case_id = excluded.case_id,
				  decided_by = current_user, decided_at = now()
$$;

-- The worker completed an operation on an account that is already alive on
-- another shadow (or whose owner already has another account here): the
-- set-based recording left it out.  An account found on the target earlier,
-- not provisioned by xprov and not owned by anyone else, becomes the
-- subject's; anything else is a collision, marked on both shadows.
CREATE FUNCTION xprov._shadow_conflict(op_id uuid, uid text, sent jsonb, observed jsonb)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
	o xprov.op;
	t xprov.shadow;
BEGIN
	SELECT * INTO o FROM xprov.op x WHERE x.id = op_id;
	SELECT * INTO t FROM xprov.shadow s
	 WHERE s.connector_id = o.connector_id AND s.object_class = o.object_class AND s.target_uid = uid
	   AND s.dead_at IS NULL AND s.lane_id IS DISTINCT FROM o.lane_id;
	IF FOUND AND t.lane_id IS NULL AND (t.identity_id IS NULL OR t.identity_id = o.identity_id) THEN
		-- the subject's placeholder gives way to the account that exists
		UPDATE xprov.shadow s SET lifecycle = 'tombstone', dead_at = now(), updated_at = now()
		 WHERE s.lane_id = o.lane_id AND s.dead_at IS NULL;
		UPDATE xprov.shadow s
		   SET lane_id = o.lane_id, identity_id = coalesce(o.identity_id, s.identity_id), lifecycle = 'live',
			   situation = CASE WHEN coalesce(o.identity_id, s.identity_id) IS NOT NULL THEN 'linked'
								ELSE s.situation END,
			   expected = jsonb_strip_nulls(xprov._merge_expected(s.expected, coalesce(sent, o.attributes))),
			   observed = coalesce(_shadow_conflict.observed, s.observed),
			   observed_at = CASE WHEN _shadow_conflict.observed IS NOT NULL THEN now() ELSE s.observed_at END,
			   version = coalesce(_shadow_conflict.observed #>> '{meta,version}', s.version),
			   updated_at = now()
		 WHERE s.id = t.id;
		RETURN 'adopted';
	END IF;
	UPDATE xprov.shadow s SET situation = 'collision', updated_at = now()
	 WHERE s.dead_at IS NULL
	   AND (s.lane_id = o.lane_id OR s.id = t.id
			OR (s.identity_id = o.identity_id AND s.exclusive AND s.connector_id = o.connector_id
				AND s.object_class = o.object_class));
	RETURN 'collision';
END
$$;

-- Reconciliation (issue 6) --------------------------------------------------
--
-- xprov.reconcile() records a run; the reconciler (a background process the
-- launcher keeps beside the workers) executes it phase by phase, each phase
-- step in its own transaction and none open across HTTP:
--   operation_completion  wait (30 s at most) for the connector's requests in
--                         flight; shadows whose subject still has unfinished
--                         operations are left to them, not diffed
--   listing               page through the target into reconciliation_item,
--                         each page committed with the run's checkpoint (the
--                         next page), so a restarted reconciler goes on there
--   diff                  one set-based comparison of the listing with the
--                         live shadows and the identity source
--   reactions             the planned actions; preview stops here, apply
--                         checks the mass-change threshold (paused) and
--                         turns actions into queue operations or shadow changes
-- A listing that fails (after retries) fails the run before any diff: a
-- partial listing never yields "missing" accounts.

CREATE TABLE xprov.reconciliation_run (
	id			uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	tenant_id	uuid NOT NULL,
	connector_id uuid NOT NULL,
	object_class text NOT NULL,
	mode		text NOT NULL CHECK (mode IN ('apply', 'preview')),
	status		text NOT NULL DEFAULT 'pending'
				CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled', 'paused')),
	phase		text NOT NULL DEFAULT 'operation_completion'
				CHECK (phase IN ('operation_completion', 'listing', 'diff', 'reactions', 'finalization')),
	page_cursor	text,					-- the next page: SCIM startIndex, REST cursor; NULL: the first
	pages		integer NOT NULL DEFAULT 0,
	listed		bigint NOT NULL DEFAULT 0,	-- accounts staged
	announced	bigint,					-- SCIM totalResults on the first page
	passes		integer NOT NULL DEFAULT 1,	-- listings made (a second when paging slipped)
	processed	bigint NOT NULL DEFAULT 0,
	total		bigint,
	statistics	jsonb NOT NULL DEFAULT '{}',
	error		text,
	cancel_requested boolean NOT NULL DEFAULT false,
	restarts	integer NOT NULL DEFAULT 0,	-- times a reconciler took the run up again
	approved_by	text,
	approved_at	timestamptz,
	requested_by text NOT NULL DEFAULT current_user,
	created_at	timestamptz NOT NULL DEFAULT now(),
	started_at	timestamptz,
	listing_started_at timestamptz,
	listing_ms	double precision,
	diffed_at	timestamptz,			-- start of the diff's transaction: the plan's as-of time
	diff_ms		double precision,
	finished_at	timestamptz
);
-- one run at a time per connector and object class
CREATE UNIQUE INDEX reconciliation_run_active ON xprov.reconciliation_run (connector_id, object_class)
	WHERE status IN ('pending', 'running', 'paused');
CREATE INDEX reconciliation_run_todo ON xprov.reconciliation_run (created_at)
	WHERE status IN ('pending', 'running');
-- Runtime (not dumped): runs are work and its report; a run restored
-- 'running' or 'paused' would wait for a reconciler or a plan that is gone.

-- The listing of a run; removed when the run ends.
CREATE TABLE xprov.reconciliation_item (
	run_id		uuid NOT NULL,
	target_uid	text NOT NULL,
	identity_id	uuid,					-- REST: the owner the target reports
	attributes	jsonb NOT NULL,
	PRIMARY KEY (run_id, target_uid)
);
-- Runtime (not dumped): the staged listing of a run in progress.

CREATE TABLE xprov.discrepancy (
	id			bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	run_id		uuid NOT NULL,
	tenant_id	uuid NOT NULL,
	type		text NOT NULL CHECK (type IN ('missing', 'orphan', 'unlinked', 'disputed', 'collision',
											   'mismatch', 'unqualified')),
	shadow_id	uuid,
	target_uid	text,
	identity_id	uuid,					-- the owner: linked, or found by correlation
	differences	jsonb,					-- mismatch: {attribute: {"expected": .., "actual": ..}}
	candidates	jsonb,					-- disputed, collision: owners correlation proposed
	attributes	jsonb,					-- the account as listed
	action		text NOT NULL,
	status		text NOT NULL DEFAULT 'planned'
				CHECK (status IN ('planned', 'applied', 'reported', 'cancelled')),
	operation_id uuid,					-- the queue operation that carries the action
	case_id		uuid,					-- the correlation case opened for it
	created_at	timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX discrepancy_run ON xprov.discrepancy (run_id, type);
-- Runtime (not dumped): the findings of runs, which are not dumped.

CREATE TABLE xprov.reaction (
	connector_id uuid NOT NULL,
	discrepancy_type text NOT NULL,
	action		text NOT NULL,
	tenant_id	uuid NOT NULL,
	updated_at	timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (connector_id, discrepancy_type)
);
-- Configuration: an administrator's reactions.
SELECT pg_catalog.pg_extension_config_dump('xprov.reaction', '');

CREATE TABLE xprov.reconciliation_threshold (
	connector_id uuid PRIMARY KEY,
	tenant_id	uuid NOT NULL,
	max_actions	integer CHECK (max_actions >= 0),
	max_percent	double precision CHECK (max_percent >= 0 AND max_percent <= 100)
);
-- Configuration: an administrator's mass-change limits.
SELECT pg_catalog.pg_extension_config_dump('xprov.reconciliation_threshold', '');

-- Which actions make sense for which discrepancy: 'report' for all.
CREATE FUNCTION xprov._reaction_actions(discrepancy_type text)
RETURNS text[]
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog
AS $$
	SELECT CASE discrepancy_type
		WHEN 'missing' THEN ARRAY['report', 'create', 'accept']
		WHEN 'orphan' THEN ARRAY['report', 'disable', 'delete']
		WHEN 'unlinked' THEN ARRAY['report', 'link']
		WHEN 'disputed' THEN ARRAY['report']
		WHEN 'collision' THEN ARRAY['report', 'disable', 'delete']
		WHEN 'mismatch' THEN ARRAY['report', 'update', 'accept']
		WHEN 'unqualified' THEN ARRAY['report', 'disable', 'delete']
	END
$$;

CREATE VIEW xprov.reactions AS
	SELECT c.tenant_id, c.id AS connector_id, t.type AS discrepancy_type,
		   coalesce(r.action, 'report') AS action, r.action IS NULL AS is_default,
		   xprov._reaction_actions(t.type) AS allowed_actions
	  FROM xprov.connector c
	 CROSS JOIN unnest(ARRAY['missing', 'orphan', 'unlinked', 'disputed', 'collision', 'mismatch',
							 'unqualified']) t(type)
	  LEFT JOIN xprov.reaction r ON r.connector_id = c.id AND r.discrepancy_type = t.type;

CREATE VIEW xprov.reconciliation_runs AS
	SELECT r.id, r.tenant_id, r.connector_id, c.name AS connector, r.object_class, r.mode, r.status,
		   r.phase, r.processed, r.total,
		   r.statistics || jsonb_build_object(
				'accounts_total', CASE WHEN r.phase IN ('reactions', 'finalization') OR r.status = 'completed'
									   THEN r.listed ELSE r.announced END,
				'accounts_processed', r.listed, 'pages', r.pages, 'listing_passes', r.passes,
				'restarts', r.restarts) AS statistics,
		   r.error, r.cancel_requested, r.approved_by, r.approved_at, r.requested_by,
		   r.created_at, r.started_at, r.finished_at,
		   coalesce(r.finished_at, now()) - r.started_at AS duration
	  FROM xprov.reconciliation_run r
	  JOIN xprov.connector c ON c.id = r.connector_id;

CREATE VIEW xprov.discrepancies AS
	SELECT d.id, d.run_id, d.tenant_id, r.connector_id, r.object_class, d.type, d.shadow_id, d.target_uid,
		   d.identity_id, d.differences, d.candidates, d.action, d.status, d.operation_id,
		   (SELECT o.status FROM xprov.operations o WHERE o.id = d.operation_id) AS operation_status,
		   d.case_id, d.attributes, d.created_at
	  FROM xprov.discrepancy d
	  JOIN xprov.reconciliation_run r ON r.id = d.run_id;

-- The connector of a run-level call, after the tenant-context check: the
-- session setting xprov.tenant_id must name the connector's tenant.
CREATE FUNCTION xprov._tenant_connector(connector_id uuid)
RETURNS xprov.connector
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog
AS $$
DECLARE
	c xprov.connector;
	context text := nullif(current_setting('xprov.tenant_id', true), '');
BEGIN
	c := xprov._connector(connector_id);
	IF context IS NULL THEN
		RAISE EXCEPTION 'no tenant context: xprov.tenant_id is not set'
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'Reconciliation acts for one tenant and needs to know which.',
				  HINT = format('SET xprov.tenant_id = %L (the connector''s tenant) first.', c.tenant_id);
	END IF;
	IF context !~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
	   OR context::uuid <> c.tenant_id THEN
		RAISE EXCEPTION 'connector % does not belong to the tenant in context', connector_id
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = format('xprov.tenant_id is %s.', context),
				  HINT = 'Set xprov.tenant_id to the connector''s tenant.';
	END IF;
	RETURN c;
END
$$;

CREATE FUNCTION xprov._wake_reconciler()
RETURNS void
AS 'MODULE_PATHNAME', 'xprov_wake_reconciler'
LANGUAGE C VOLATILE;

CREATE FUNCTION xprov.reconcile(connector_id uuid, object_class text DEFAULT 'user', mode text DEFAULT 'apply')
RETURNS uuid
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
	c xprov.connector := xprov._tenant_connector(connector_id);
	active xprov.reconciliation_run;
	new_id uuid;
BEGIN
	IF object_class IS NULL OR btrim(object_class) = '' THEN
		RAISE EXCEPTION 'object_class must not be empty' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF mode IS NULL OR mode NOT IN ('apply', 'preview') THEN
		RAISE EXCEPTION 'unknown reconciliation mode "%"', mode
			USING ERRCODE = 'invalid_parameter_value', HINT = 'Use apply or preview.';
	END IF;
	IF c.kind NOT IN ('scim2', 'rest') THEN
		RAISE EXCEPTION 'connector % (%) cannot list its accounts', c.name, c.kind
			USING ERRCODE = 'feature_not_supported',
				  DETAIL = 'Only scim2 and rest connectors can be reconciled.';
	END IF;
	SELECT * INTO active FROM xprov.reconciliation_run r
	 WHERE r.connector_id = c.id AND r.object_class = reconcile.object_class
	   AND r.status IN ('pending', 'running', 'paused');
	IF FOUND THEN
		RAISE EXCEPTION 'a reconciliation of connector % (%) is already %', c.name, reconcile.object_class,
						active.status
			USING ERRCODE = 'object_in_use',
				  DETAIL = format('Run %s was requested at %s.', active.id, active.created_at),
				  HINT = 'Wait for it with xprov.wait_run(), or cancel it with xprov.cancel_run().';
	END IF;
	BEGIN
		INSERT INTO xprov.reconciliation_run AS r (tenant_id, connector_id, object_class, mode)
		VALUES (c.tenant_id, c.id, reconcile.object_class, reconcile.mode)
		RETURNING r.id INTO new_id;
	EXCEPTION WHEN unique_violation THEN
		-- another session started one between the check above and this insert
		RAISE EXCEPTION 'a reconciliation of connector % (%) is already pending', c.name, reconcile.object_class
			USING ERRCODE = 'object_in_use',
				  HINT = 'Wait for it with xprov.wait_run(), or cancel it with xprov.cancel_run().';
	END;
	PERFORM xprov._wake_reconciler();
	RETURN new_id;
END
$$;

CREATE FUNCTION xprov.reconcile_preview(connector_id uuid, object_class text DEFAULT 'user')
RETURNS uuid
LANGUAGE sql
SET search_path = pg_catalog
AS $$
	SELECT xprov.reconcile(connector_id, object_class, 'preview')
$$;

-- Waits for a run to finish, or to pause for approval; returns its status
-- (the current one when the timeout passes first).  Each look takes a new
-- snapshot, so call it in READ COMMITTED.
CREATE FUNCTION xprov.wait_run(run_id uuid, timeout interval DEFAULT '5 minutes')
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
	deadline timestamptz := clock_timestamp() + coalesce(timeout, '5 minutes');
	st text;
	nap double precision := 0.01;
BEGIN
	IF run_id IS NULL THEN
		RAISE EXCEPTION 'run_id must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	LOOP
		SELECT r.status INTO st FROM xprov.reconciliation_run r WHERE r.id = wait_run.run_id;
		IF NOT FOUND THEN
			RAISE EXCEPTION 'reconciliation run % does not exist', run_id USING ERRCODE = 'undefined_object';
		END IF;
		EXIT WHEN st IN ('completed', 'failed', 'cancelled', 'paused') OR clock_timestamp() >= deadline;
		PERFORM pg_sleep(least(nap, greatest(extract(epoch FROM deadline - clock_timestamp()), 0)::float8));
		nap := least(nap * 2, 0.2);
	END LOOP;
	RETURN st;
END
$$;

-- The run, locked, after the tenant-context check.
CREATE FUNCTION xprov._tenant_run(run_id uuid)
RETURNS xprov.reconciliation_run
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
	r xprov.reconciliation_run;
BEGIN
	IF run_id IS NULL THEN
		RAISE EXCEPTION 'run_id must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	SELECT * INTO r FROM xprov.reconciliation_run x WHERE x.id = _tenant_run.run_id FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'reconciliation run % does not exist', run_id USING ERRCODE = 'undefined_object';
	END IF;
	PERFORM xprov._tenant_connector(r.connector_id);
	RETURN r;
END
$$;

CREATE FUNCTION xprov.cancel_run(run_id uuid)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
	r xprov.reconciliation_run := xprov._tenant_run(run_id);
BEGIN
	IF r.status IN ('completed', 'failed', 'cancelled') THEN
		RAISE EXCEPTION 'reconciliation run % is already %', run_id, r.status
			USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
	IF r.status = 'running' THEN
		-- the reconciler stops at its next checkpoint
		UPDATE xprov.reconciliation_run x SET cancel_requested = true WHERE x.id = r.id;
		PERFORM xprov._wake_reconciler();
	ELSE
		PERFORM xprov._recon_finish(r.id, 'cancelled', NULL);
	END IF;
END
$$;

CREATE FUNCTION xprov.approve_run(run_id uuid)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
	r xprov.reconciliation_run := xprov._tenant_run(run_id);
BEGIN
	IF r.status <> 'paused' THEN
		RAISE EXCEPTION 'reconciliation run % is not paused: it is %', run_id, r.status
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  HINT = 'Only a run paused by its mass-change threshold waits for approval.';
	END IF;
	UPDATE xprov.reconciliation_run x
	   SET status = 'pending', approved_by = current_user, approved_at = now()
	 WHERE x.id = r.id;
	PERFORM xprov._wake_reconciler();
END
$$;

CREATE FUNCTION xprov.set_reaction(connector_id uuid, discrepancy_type text, action text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
	c xprov.connector;
	allowed text[] := xprov._reaction_actions(discrepancy_type);
BEGIN
	IF connector_id IS NULL OR discrepancy_type IS NULL OR action IS NULL THEN
		RAISE EXCEPTION 'connector_id, discrepancy_type and action must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	c := xprov._connector(connector_id);
	IF allowed IS NULL THEN
		RAISE EXCEPTION 'unknown discrepancy type "%"', discrepancy_type
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Types are missing, orphan, unlinked, disputed, collision, mismatch and unqualified.';
	END IF;
	IF NOT action = ANY (allowed) THEN
		RAISE EXCEPTION 'action "%" does not apply to % accounts', action, discrepancy_type
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = format('For %s: %s.', discrepancy_type, array_to_string(allowed, ', '));
	END IF;
	INSERT INTO xprov.reaction AS r (connector_id, discrepancy_type, action, tenant_id)
	VALUES (c.id, discrepancy_type, action, c.tenant_id)
	ON CONFLICT ON CONSTRAINT reaction_pkey DO UPDATE SET action = excluded.action, updated_at = now();
END
$$;

-- A run pauses for approval when it would act (anything but report) on more
-- than max_actions accounts, or on more than max_percent of the accounts
-- listed; NULL turns a limit off.  Without a row: 1,000 and 50 %.
CREATE FUNCTION xprov.set_reconciliation_threshold(connector_id uuid, max_actions integer,
												   max_percent double precision DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
	c xprov.connector;
BEGIN
	c := xprov._connector(connector_id);
	IF max_actions < 0 OR max_percent < 0 OR max_percent > 100 THEN
		RAISE EXCEPTION 'thresholds out of range: max_actions % and max_percent %', max_actions, max_percent
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'max_actions is a count >= 0, max_percent a percentage from 0 to 100; NULL turns one off.';
	END IF;
	INSERT INTO xprov.reconciliation_threshold AS t (connector_id, tenant_id, max_actions, max_percent)
	VALUES (c.id, c.tenant_id, max_actions, max_percent)
	ON CONFLICT ON CONSTRAINT reconciliation_threshold_pkey
	DO UPDATE SET max_actions = excluded.max_actions, max_percent = excluded.max_percent;
END
$$;

-- Removes finished runs (completed, failed, cancelled) older than the
-- retention period, with their discrepancies; schedule it with pg_cron.
-- Returns how many runs were removed.
CREATE FUNCTION xprov.purge_runs(older_than interval DEFAULT '30 days')
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
	removed bigint;
	cutoff timestamptz := xprov._retention_cutoff(older_than);
BEGIN
	WITH gone AS (
		DELETE FROM xprov.reconciliation_run r
		 WHERE r.status IN ('completed', 'failed', 'cancelled') AND r.finished_at < cutoff
		RETURNING r.id
	), discrepancies AS (
		DELETE FROM xprov.discrepancy d USING gone g WHERE d.run_id = g.id
	)
	SELECT count(*) INTO removed FROM gone;
	RETURN removed;
END
$$;

CREATE VIEW xprov.reconciliation_thresholds AS
	SELECT c.tenant_id, c.id AS connector_id,
		   CASE WHEN t.connector_id IS NULL THEN 1000 ELSE t.max_actions END AS max_actions,
		   CASE WHEN t.connector_id IS NULL THEN 50 ELSE t.max_percent END AS max_percent
	  FROM xprov.connector c
	  LEFT JOIN xprov.reconciliation_threshold t ON t.connector_id = c.id;

-- The reconciler's steps -------------------------------------------------------

-- The next run to work on (the oldest pending or running one), marked
-- running.  A run found running that the caller was not working on was left
-- by a reconciler that stopped: it goes on from its checkpoint.
CREATE FUNCTION xprov._recon_next(current_run uuid)
RETURNS TABLE (run_id uuid, connector_id uuid, object_class text, phase text, page_cursor text,
			   cancel_requested boolean, kind text, name text, base_url text, config text, enabled boolean)
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
	r xprov.reconciliation_run;
BEGIN
	SELECT * INTO r FROM xprov.reconciliation_run x
	 WHERE x.status IN ('pending', 'running')
	 ORDER BY x.id IS DISTINCT FROM current_run, x.created_at
	 LIMIT 1 FOR UPDATE SKIP LOCKED;
	IF NOT FOUND THEN
		RETURN;
	END IF;
	UPDATE xprov.reconciliation_run x
	   SET status = 'running', started_at = coalesce(x.started_at, now()),
		   restarts = x.restarts + CASE WHEN r.status = 'running' AND r.id IS DISTINCT FROM current_run
										THEN 1 ELSE 0 END
	 WHERE x.id = r.id;
	RETURN QUERY
		SELECT r.id, r.connector_id, r.object_class, r.phase, r.page_cursor, r.cancel_requested,
			   c.kind, c.name, c.base_url, xprov._connector_config(c.id, c.config)::text, c.enabled
		  FROM xprov.connector c WHERE c.id = r.connector_id;
END
$$;

-- Ends a run: its status, its error, the final statistics; the listing goes.
CREATE FUNCTION xprov._recon_finish(run_id uuid, status text, error text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
	r xprov.reconciliation_run;
	secs double precision;
BEGIN
	SELECT * INTO r FROM xprov.reconciliation_run x WHERE x.id = _recon_finish.run_id FOR UPDATE;
	secs := extract(epoch FROM clock_timestamp() - coalesce(r.started_at, r.created_at));
	UPDATE xprov.reconciliation_run x
	   SET status = _recon_finish.status, error = _recon_finish.error, finished_at = clock_timestamp(),
		   phase = CASE WHEN _recon_finish.status = 'completed' THEN 'finalization' ELSE x.phase END,
		   statistics = x.statistics || jsonb_build_object(
				'duration_ms', round((secs * 1000)::numeric, 1),
				'listing_ms', round(x.listing_ms::numeric, 1), 'diff_ms', round(x.diff_ms::numeric, 1),
				'accounts_per_second', CASE WHEN secs > 0 THEN round((x.listed / secs)::numeric, 1) END)
	 WHERE x.id = r.id;
	IF _recon_finish.status IN ('cancelled', 'failed') THEN
		UPDATE xprov.discrepancy d SET status = 'cancelled' WHERE d.run_id = r.id AND d.status = 'planned';
	END IF;
	DELETE FROM xprov.reconciliation_item i WHERE i.run_id = r.id;
END
$$;

-- operation_completion: true once the connector has no request in flight
-- (or 30 s have passed: shadows still busy are then left out of the diff).
CREATE FUNCTION xprov._recon_settle(run_id uuid)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
	r xprov.reconciliation_run;
	busy bigint;
BEGIN
	SELECT * INTO r FROM xprov.reconciliation_run x WHERE x.id = _recon_settle.run_id FOR UPDATE;
	SELECT count(*) INTO busy FROM xprov.lane l WHERE l.connector_id = r.connector_id AND l.state = 'l';
	IF busy > 0 AND clock_timestamp() < r.started_at + interval '30 seconds' THEN
		RETURN false;
	END IF;
	UPDATE xprov.reconciliation_run x
	   SET phase = 'listing', listing_started_at = clock_timestamp(),
		   statistics = x.statistics || jsonb_build_object('in_flight_at_listing', busy)
	 WHERE x.id = r.id;
	RETURN true;
END
$$;

-- listing: one page of the target's answer, staged with the run's
-- checkpoint.  Returns the next page's cursor, NULL when the listing is
-- complete.  A SCIM listing whose paging slipped (totalResults changed, or
-- fewer accounts staged than announced) is made a second time: staging
-- keeps what the first pass saw, so an account skipped by shifting offsets
-- is not taken for missing.
CREATE FUNCTION xprov._recon_page(run_id uuid, body text)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
	r xprov.reconciliation_run;
	kind text;
	doc jsonb := body::jsonb;
	list jsonb;
	announced_now bigint;
	start bigint;
	n integer;
	added bigint;
	next_cursor text;
	slipped boolean;
BEGIN
	SELECT * INTO r FROM xprov.reconciliation_run x WHERE x.id = _recon_page.run_id FOR UPDATE;
	SELECT c.kind INTO kind FROM xprov.connector c WHERE c.id = r.connector_id;
	IF jsonb_typeof(doc) IS DISTINCT FROM 'object' THEN
		RAISE EXCEPTION 'the list page is not a JSON object' USING ERRCODE = 'invalid_text_representation';
	END IF;
	list := doc -> CASE WHEN kind = 'scim2' THEN 'Resources' ELSE 'items' END;
	IF list IS NULL AND kind = 'scim2' AND doc ->> 'totalResults' IS NOT NULL THEN
		list := '[]';		-- SCIM leaves Resources out of an empty answer; nothing else may
	END IF;
	IF jsonb_typeof(list) IS DISTINCT FROM 'array' THEN
		RAISE EXCEPTION 'the list page has no array of accounts' USING ERRCODE = 'invalid_text_representation';
	END IF;
	n := jsonb_array_length(list);
	IF EXISTS (SELECT 1 FROM jsonb_array_elements(list) e
				WHERE jsonb_typeof(e -> CASE WHEN kind = 'scim2' THEN 'id' ELSE 'uid' END)
					  IS DISTINCT FROM 'string') THEN
		RAISE EXCEPTION 'the list page has an account without an id' USING ERRCODE = 'invalid_text_representation';
	END IF;

	IF kind = 'scim2' THEN
		INSERT INTO xprov.reconciliation_item (run_id, target_uid, attributes)
		SELECT r.id, e ->> 'id', e FROM jsonb_array_elements(list) e
		ON CONFLICT DO NOTHING;
		GET DIAGNOSTICS added = ROW_COUNT;
		announced_now := (doc ->> 'totalResults')::bigint;
		start := coalesce(r.page_cursor::bigint, 1);
		slipped := coalesce((r.statistics ->> 'paging_slipped')::boolean, false)
				   OR (r.announced IS NOT NULL AND announced_now IS DISTINCT FROM r.announced);
		IF n > 0 AND announced_now IS NOT NULL AND start + n <= announced_now THEN
			next_cursor := (start + n)::text;
		ELSIF n > 0 AND announced_now IS NULL THEN
			next_cursor := (start + n)::text;		-- no total announced: until an empty page
		ELSIF r.passes < 2 AND (slipped OR r.listed + added < coalesce(announced_now, 0)) THEN
			next_cursor := '1';
			UPDATE xprov.reconciliation_run x SET passes = x.passes + 1 WHERE x.id = r.id;
		END IF;
	ELSE
		INSERT INTO xprov.reconciliation_item (run_id, target_uid, identity_id, attributes)
		SELECT r.id, e ->> 'uid',
			   CASE WHEN e ->> 'identity_id' ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
					THEN (e ->> 'identity_id')::uuid END,
			   coalesce(e -> 'attributes', '{}')
		  FROM jsonb_array_elements(list) e
		ON CONFLICT DO NOTHING;
		GET DIAGNOSTICS added = ROW_COUNT;
		next_cursor := doc ->> 'next_cursor';
		IF next_cursor = '' OR next_cursor = r.page_cursor THEN
			RAISE EXCEPTION 'the target''s next_cursor % does not move the listing on', to_jsonb(next_cursor)
				USING ERRCODE = 'invalid_text_representation';
		END IF;
	END IF;

	UPDATE xprov.reconciliation_run x
	   SET pages = x.pages + 1, listed = x.listed + added, processed = x.listed + added,
		   announced = coalesce(x.announced, announced_now), total = coalesce(x.announced, announced_now),
		   page_cursor = next_cursor,
		   statistics = x.statistics || jsonb_build_object('paging_slipped', coalesce(slipped, false)),
		   phase = CASE WHEN next_cursor IS NULL THEN 'diff' ELSE x.phase END,
		   listing_ms = CASE WHEN next_cursor IS NULL
							 THEN extract(epoch FROM clock_timestamp() - x.listing_started_at) * 1000 END
	 WHERE x.id = r.id;
	RETURN next_cursor;
END
$$;

-- One correlation rule as a join of the unowned listed accounts
-- (pg_temp.recon_unowned, alias u) with the identity source (alias i):
-- target_uid, identity_id and the rule's confidence (product of its items'
-- scores).  The set-based twin of _rule_query's owner direction.
CREATE FUNCTION xprov._rule_join(src xprov.identity_source, items jsonb, tenant uuid)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog
AS $$
DECLARE
	item jsonb;
	v text;
	expr text;
	conds text[] := '{}';
	scores text[] := '{}';
	trgm text := xprov._trgm_schema();
BEGIN
	FOR item IN SELECT e.value FROM jsonb_array_elements(items) e LOOP
		v := format('xprov._account_value(u.attributes, %L)', item ->> 'target');
		expr := xprov._identity_expr(src, item ->> 'identity');
		IF expr IS NULL THEN
			RAISE EXCEPTION 'the identity source % no longer has attribute %', src.relation, item ->> 'identity'
				USING ERRCODE = 'undefined_column';
		END IF;
		CASE item ->> 'match'
			WHEN 'exact' THEN
				conds := conds || format('%s = %s', expr, v);
				scores := scores || '1'::text;
			WHEN 'case_insensitive' THEN
				conds := conds || format('lower(%s) = lower(%s)', expr, v);
				scores := scores || '1'::text;
			WHEN 'normalized' THEN
				conds := conds || format('xprov.normalize_text(%s) = xprov.normalize_text(%s)', expr, v);
				scores := scores || '1'::text;
			ELSE
				IF trgm IS NULL THEN
					RAISE EXCEPTION 'fuzzy matching needs the pg_trgm extension'
						USING ERRCODE = 'feature_not_supported', HINT = 'CREATE EXTENSION pg_trgm;';
				END IF;
				conds := conds || format('%1$s OPERATOR(%2$I.%%) %3$s AND %2$I.similarity(%1$s, %3$s) >= %4$s',
										 expr, trgm, v, coalesce((item ->> 'min_score')::float8, 0.5));
				scores := scores || format('%I.similarity(%s, %s)', trgm, expr, v);
		END CASE;
	END LOOP;
	RETURN format('SELECT u.target_uid, i.%I::uuid AS identity_id, (%s)::float8 AS conf '
				  'FROM pg_temp.recon_unowned u JOIN %s i ON %s%s',
				  src.id_column, array_to_string(scores, ' * '), src.relation,
				  CASE WHEN src.tenant_column IS NOT NULL THEN format('i.%I = %L AND ', src.tenant_column, tenant) END,
				  array_to_string(conds, ' AND '));
END
$$;

-- Owners of the unowned listed accounts, into pg_temp.recon_score: confirmed
-- decisions and owners the target reports count as certain; then the rules,
-- tier by tier, each later tier only for accounts without a single definite
-- owner yet.  Rejected pairings are never proposed.
CREATE FUNCTION xprov._recon_correlate(r xprov.reconciliation_run, src xprov.identity_source,
									   definite double precision)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
	t integer;
	rule xprov.correlation_rule;
	q text;
	min_fuzzy double precision;
	saved_threshold text;
BEGIN
	INSERT INTO pg_temp.recon_score
	SELECT u.target_uid, d.identity_id, 1.0, jsonb_build_object('decision', 'confirmed', 'case', d.case_id)
	  FROM pg_temp.recon_unowned u
	  JOIN xprov.correlation_decision d ON d.connector_id = r.connector_id AND d.object_class = r.object_class
									   AND d.target_uid = u.target_uid AND d.linked;
	INSERT INTO pg_temp.recon_score
	SELECT u.target_uid, u.reported_owner, 1.0, jsonb_build_object('reported_by_target', true)
	  FROM pg_temp.recon_unowned u WHERE u.reported_owner IS NOT NULL
	   AND NOT EXISTS (SELECT 1 FROM xprov.correlation_decision d
						WHERE d.connector_id = r.connector_id AND d.object_class = r.object_class
						  AND d.target_uid = u.target_uid AND d.identity_id = u.reported_owner AND NOT d.linked);
	IF src.relation IS NULL THEN
		RETURN;
	END IF;

	FOR t IN SELECT DISTINCT cr.tier FROM xprov.correlation_rule cr
			  WHERE cr.connector_id = r.connector_id AND cr.object_class = r.object_class AND cr.enabled
			  ORDER BY cr.tier LOOP
		-- accounts settled by the tiers before this one leave the search
		DELETE FROM pg_temp.recon_unowned u
		 WHERE (SELECT count(*) FROM (SELECT s.identity_id FROM pg_temp.recon_score s
									   WHERE s.target_uid = u.target_uid
									   GROUP BY s.identity_id HAVING sum(s.score) >= definite) x) = 1;
		FOR rule IN SELECT * FROM xprov.correlation_rule cr
					 WHERE cr.connector_id = r.connector_id AND cr.object_class = r.object_class
					   AND cr.enabled AND cr.tier = t
					 ORDER BY cr.created_at, cr.id LOOP
			q := xprov._rule_join(src, rule.items, r.tenant_id);
			SELECT min(coalesce((e ->> 'min_score')::float8, 0.5)) INTO min_fuzzy
			  FROM jsonb_array_elements(rule.items) e WHERE e ->> 'match' = 'fuzzy';
			IF min_fuzzy IS NOT NULL THEN
				saved_threshold := current_setting('pg_trgm.similarity_threshold', true);
				PERFORM set_config('pg_trgm.similarity_threshold', min_fuzzy::text, true);
			END IF;
			EXECUTE format(
				'INSERT INTO pg_temp.recon_score '
				'SELECT m.target_uid, m.identity_id, %s * m.conf, '
				'       jsonb_build_object(''rule'', %L::uuid, ''name'', %L::text, ''tier'', %s, ''confidence'', m.conf) '
				'  FROM (%s) m '
				' WHERE NOT EXISTS (SELECT 1 FROM xprov.correlation_decision d '
				'                    WHERE d.connector_id = %L AND d.object_class = %L '
				'                      AND d.target_uid = m.target_uid AND d.identity_id = m.identity_id '
				'                      AND NOT d.linked)',
				rule.weight, rule.id, rule.name, rule.tier, q, r.connector_id, r.object_class);
			IF min_fuzzy IS NOT NULL THEN
				PERFORM set_config('pg_trgm.similarity_threshold', coalesce(saved_threshold, '0.3'), true);
			END IF;
		END LOOP;
	END LOOP;
END
$$;

-- The action a discrepancy gets: the connector's reaction, unless it cannot
-- or need not happen (a create with nobody to create for, a disable of an
-- account that is disabled already: reported instead).
CREATE FUNCTION xprov._planned_action(reactions jsonb, discrepancy_type text, account jsonb, owner uuid)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog
AS $$
	SELECT CASE
		WHEN a.action = 'create' AND owner IS NULL THEN 'report'
		WHEN a.action = 'disable' AND account -> 'active' = 'false'::jsonb THEN 'report'
		ELSE a.action END
	  FROM (SELECT coalesce(reactions ->> discrepancy_type, 'report') AS action) a
$$;

-- diff: the listing against the live shadows and the identity source, all
-- set-based, into xprov.discrepancy with each one's planned action.
CREATE FUNCTION xprov._recon_diff(run_id uuid)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
	r xprov.reconciliation_run;
	src xprov.identity_source;
	acts jsonb;
	definite double precision;
	candidate double precision;
	t0 timestamptz := clock_timestamp();
	busy bigint;
	counts jsonb;
	exclusive_here boolean;
BEGIN
	SELECT * INTO r FROM xprov.reconciliation_run x WHERE x.id = _recon_diff.run_id FOR UPDATE;
	SELECT (c.config -> 'multiple_accounts') IS DISTINCT FROM 'true'::jsonb INTO exclusive_here
	  FROM xprov.connector c WHERE c.id = r.connector_id;
	SELECT * INTO src FROM xprov.identity_source s WHERE s.tenant_id = r.tenant_id;
	SELECT coalesce(jsonb_object_agg(x.discrepancy_type, x.action), '{}') INTO acts
	  FROM xprov.reaction x WHERE x.connector_id = r.connector_id;
	SELECT t.definite, t.candidate INTO definite, candidate
	  FROM xprov.correlation_threshold t WHERE t.connector_id = r.connector_id;
	definite := coalesce(definite, 1.0);
	candidate := coalesce(candidate, 0.0);
	DELETE FROM xprov.discrepancy d WHERE d.run_id = r.id;

	-- Live shadows, each marked judged unless operations of its subject are
	-- unfinished (those operations will change it; the diff leaves it be).
	CREATE TEMP TABLE recon_shadow ON COMMIT DROP AS
	SELECT s.id, s.target_uid, s.identity_id, s.lane_id, s.expected, s.created_at,
		   s.lifecycle = 'live' AND NOT EXISTS (SELECT 1 FROM xprov.lane l
												 WHERE l.lane_id = s.lane_id AND l.state <> 'i') AS judged
	  FROM xprov.shadow s
	 WHERE s.connector_id = r.connector_id AND s.object_class = r.object_class
	   AND s.dead_at IS NULL AND s.target_uid IS NOT NULL;
	SELECT count(*) INTO busy FROM pg_temp.recon_shadow WHERE NOT judged;

	CREATE TEMP TABLE recon_pair ON COMMIT DROP AS
	SELECT i.target_uid, i.attributes, i.identity_id AS reported_owner,
		   s.id AS shadow_id, s.identity_id, s.expected, coalesce(s.judged, true) AS judged,
		   false AS gone
	  FROM xprov.reconciliation_item i
	  LEFT JOIN pg_temp.recon_shadow s ON s.target_uid = i.target_uid
	 WHERE i.run_id = r.id;

	-- missing: a live shadow older than the listing whose account was not listed
	INSERT INTO xprov.discrepancy (run_id, tenant_id, type, shadow_id, target_uid, identity_id, action)
	SELECT r.id, r.tenant_id, 'missing', s.id, s.target_uid, s.identity_id,
		   xprov._planned_action(acts, 'missing', NULL, s.identity_id)
	  FROM pg_temp.recon_shadow s
	 WHERE s.judged AND s.created_at < r.listing_started_at
	   AND NOT EXISTS (SELECT 1 FROM xprov.reconciliation_item i
						WHERE i.run_id = r.id AND i.target_uid = s.target_uid);

	-- unqualified: a linked account whose identity is gone from the identity source
	IF src.relation IS NOT NULL THEN
		EXECUTE format('UPDATE pg_temp.recon_pair p SET gone = true '
					   ' WHERE p.judged AND p.identity_id IS NOT NULL '
					   '   AND NOT EXISTS (SELECT 1 FROM %s i WHERE i.%I = p.identity_id%s)',
					   src.relation, src.id_column,
					   CASE WHEN src.tenant_column IS NOT NULL
							THEN format(' AND i.%I = %L', src.tenant_column, r.tenant_id) END);
		INSERT INTO xprov.discrepancy (run_id, tenant_id, type, shadow_id, target_uid, identity_id, attributes, action)
		SELECT r.id, r.tenant_id, 'unqualified', p.shadow_id, p.target_uid, p.identity_id, p.attributes,
			   xprov._planned_action(acts, 'unqualified', p.attributes, p.identity_id)
		  FROM pg_temp.recon_pair p WHERE p.gone;
	END IF;

	-- mismatch: a linked account whose attributes differ from those provisioned;
	-- what xprov never set is not compared (containment: an extension's other
	-- sub-attributes, an email's "type", server defaults)
	INSERT INTO xprov.discrepancy (run_id, tenant_id, type, shadow_id, target_uid, identity_id, differences,
								   attributes, action)
	SELECT r.id, r.tenant_id, 'mismatch', p.shadow_id, p.target_uid, p.identity_id, d.diff, p.attributes,
		   xprov._planned_action(acts, 'mismatch', p.attributes, p.identity_id)
	  FROM pg_temp.recon_pair p
	 CROSS JOIN LATERAL (
		SELECT jsonb_object_agg(e.key, jsonb_build_object('expected', e.value,
														  'actual', coalesce(p.attributes -> e.key, 'null'))) AS diff
		  FROM jsonb_each(p.expected) e
		 WHERE e.key NOT IN ('schemas', 'password', 'id', 'meta') AND e.value <> 'null'::jsonb
		   AND NOT coalesce((p.attributes -> e.key) @> e.value, false)) d
	 WHERE p.judged AND p.identity_id IS NOT NULL AND NOT p.gone AND d.diff IS NOT NULL;

	-- accounts nobody owns (no shadow, or a shadow without an owner): correlation
	CREATE TEMP TABLE recon_unowned ON COMMIT DROP AS
	SELECT p.target_uid, p.attributes, p.shadow_id, p.reported_owner
	  FROM pg_temp.recon_pair p WHERE p.judged AND p.identity_id IS NULL;
	CREATE TEMP TABLE recon_score (target_uid text, identity_id uuid, score float8, evidence jsonb) ON COMMIT DROP;
	CREATE TEMP TABLE recon_all_unowned ON COMMIT DROP AS SELECT * FROM pg_temp.recon_unowned;
	ANALYZE pg_temp.recon_unowned;
	PERFORM xprov._recon_correlate(r, src, definite);

	WITH owner_score AS (
		SELECT s.target_uid, s.identity_id, least(1.0, sum(s.score)) AS score, jsonb_agg(s.evidence) AS evidence
		  FROM pg_temp.recon_score s GROUP BY s.target_uid, s.identity_id
	), verdict AS (
		SELECT u.target_uid, u.attributes, u.shadow_id,
			   count(o.identity_id) FILTER (WHERE o.score >= definite) AS n_definite,
			   count(o.identity_id) FILTER (WHERE o.score >= candidate AND o.score > 0) AS n_candidates,
			   (array_agg(o.identity_id ORDER BY o.score DESC) FILTER (WHERE o.score >= definite))[1] AS owner,
			   jsonb_agg(jsonb_build_object('identity_id', o.identity_id, 'confidence', o.score,
											'evidence', o.evidence) ORDER BY o.score DESC, o.identity_id)
				   FILTER (WHERE o.score >= candidate AND o.score > 0) AS candidates
		  FROM pg_temp.recon_all_unowned u
		  LEFT JOIN owner_score o ON o.target_uid = u.target_uid
		 GROUP BY u.target_uid, u.attributes, u.shadow_id
	), typed AS (
		SELECT v.*,
			   CASE WHEN v.n_definite = 1 AND EXISTS (
						SELECT 1 FROM xprov.shadow s
						 WHERE s.connector_id = r.connector_id AND s.object_class = r.object_class
						   AND s.identity_id = v.owner AND s.dead_at IS NULL AND s.exclusive
						   AND s.target_uid IS DISTINCT FROM v.target_uid) THEN 'collision'
					-- another account listed without owner has the same one: neither is linked
					WHEN v.n_definite = 1 AND exclusive_here AND v.owner_claims > 1 THEN 'collision'
					WHEN v.n_definite = 1 THEN 'unlinked'
					WHEN v.n_candidates > 0 THEN 'disputed'
					ELSE 'orphan' END AS type
		  FROM (SELECT w.*, sum(CASE WHEN w.n_definite = 1 THEN 1 ELSE 0 END)
								OVER (PARTITION BY w.owner) AS owner_claims
				  FROM verdict w) v
	)
	INSERT INTO xprov.discrepancy (run_id, tenant_id, type, shadow_id, target_uid, identity_id, candidates,
								   attributes, action)
	SELECT r.id, r.tenant_id, t.type, t.shadow_id, t.target_uid,
		   CASE WHEN t.type IN ('unlinked', 'collision') THEN t.owner END, t.candidates, t.attributes,
		   xprov._planned_action(acts, t.type, t.attributes, t.owner)
	  FROM typed t;

	SELECT coalesce(jsonb_object_agg(x.type, x.n), '{}') INTO counts
	  FROM (SELECT d.type, count(*) AS n FROM xprov.discrepancy d WHERE d.run_id = r.id GROUP BY d.type) x;
	-- the reactions join this run's discrepancies with shadows and operations:
	-- planned on statistics that have not seen them, those joins go quadratic
	ANALYZE xprov.discrepancy;
	UPDATE xprov.reconciliation_run x
	   SET phase = 'reactions', processed = x.listed, total = x.listed, diffed_at = now(),
		   diff_ms = extract(epoch FROM clock_timestamp() - t0) * 1000,
		   statistics = x.statistics || jsonb_build_object(
				'discrepancies', counts, 'shadows_compared', (SELECT count(*) FROM pg_temp.recon_shadow WHERE judged),
				'shadows_busy', busy)
	 WHERE x.id = r.id;
END
$$;

-- reactions: preview stops with the plan; apply pauses when the plan
-- crosses the connector's mass-change threshold (until approve_run), else
-- carries it out.  Target changes become queue operations (ordering,
-- retries and dead letters as for any other); links and accepted values
-- change shadows here, in this transaction.  Accounts found without a
-- shadow get one, owned by nobody until linked.  Returns the run's status.
CREATE FUNCTION xprov._recon_react(run_id uuid)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
	r xprov.reconciliation_run;
	lim xprov.reconciliation_thresholds;
	planned bigint;
	accounts bigint;
	exclusive_here boolean;
	taken jsonb;
	ops jsonb;
	acting bigint[];
	stale bigint;
BEGIN
	SELECT * INTO r FROM xprov.reconciliation_run x WHERE x.id = _recon_react.run_id FOR UPDATE;
	SELECT count(*) INTO planned FROM xprov.discrepancy d WHERE d.run_id = r.id AND d.action <> 'report';
	accounts := greatest(r.listed + (SELECT count(*) FROM xprov.discrepancy d
									  WHERE d.run_id = r.id AND d.type = 'missing'), 1);
	IF r.mode = 'preview' THEN
		UPDATE xprov.reconciliation_run x
		   SET statistics = x.statistics || jsonb_build_object('actions_planned', (
				SELECT coalesce(jsonb_object_agg(a.action, a.n), '{}')
				  FROM (SELECT d.action, count(*) AS n FROM xprov.discrepancy d
						 WHERE d.run_id = r.id GROUP BY d.action) a))
		 WHERE x.id = r.id;
		PERFORM xprov._recon_finish(r.id, 'completed', NULL);
		RETURN 'completed';
	END IF;

	SELECT * INTO lim FROM xprov.reconciliation_thresholds t WHERE t.connector_id = r.connector_id;
	IF r.approved_at IS NULL AND planned > 0
	   AND (planned > lim.max_actions OR planned * 100.0 > lim.max_percent * accounts) THEN
		UPDATE xprov.reconciliation_run x
		   SET status = 'paused',
			   statistics = x.statistics || jsonb_build_object('paused_for', jsonb_build_object(
					'actions_planned', planned, 'accounts', accounts,
					'max_actions', lim.max_actions, 'max_percent', lim.max_percent))
		 WHERE x.id = r.id;
		RETURN 'paused';
	END IF;

	SELECT (c.config -> 'multiple_accounts') IS DISTINCT FROM 'true'::jsonb INTO exclusive_here
	  FROM xprov.connector c WHERE c.id = r.connector_id;

	-- The plan is as of the diff (hours old, if it waited for approval): an
	-- account whose shadow changed since, or that got a shadow since, is left
	-- alone rather than acted on from stale knowledge.
	UPDATE xprov.discrepancy d SET action = 'report', status = 'cancelled'
	 WHERE d.run_id = r.id AND d.action <> 'report'
	   AND (EXISTS (SELECT 1 FROM xprov.shadow s WHERE s.id = d.shadow_id AND s.updated_at > r.diffed_at)
			OR (d.shadow_id IS NULL
				AND EXISTS (SELECT 1 FROM xprov.shadow s
							 WHERE s.connector_id = r.connector_id AND s.object_class = r.object_class
							   AND s.target_uid = d.target_uid AND s.dead_at IS NULL
							   AND s.updated_at > r.diffed_at)));
	GET DIAGNOSTICS stale = ROW_COUNT;

	-- every account listed without a shadow gets one (nobody's, until linked)
	INSERT INTO xprov.shadow (tenant_id, connector_id, object_class, target_uid, lifecycle, situation,
							  exclusive, observed, observed_at, version)
	SELECT r.tenant_id, r.connector_id, r.object_class, d.target_uid, 'live',
		   CASE d.type WHEN 'orphan' THEN 'unmatched' ELSE d.type END,
		   exclusive_here, d.attributes, now(), d.attributes #>> '{meta,version}'
	  FROM xprov.discrepancy d
	 WHERE d.run_id = r.id AND d.shadow_id IS NULL
	   AND d.type IN ('orphan', 'unlinked', 'disputed', 'collision')
	ON CONFLICT DO NOTHING;
	-- thousands of shadows without owner or lane may have just appeared: the
	-- joins below, planned on statistics that have not seen them, go quadratic
	ANALYZE xprov.shadow;
	UPDATE xprov.discrepancy d SET shadow_id = s.id
	  FROM xprov.shadow s
	 WHERE d.run_id = r.id AND d.shadow_id IS NULL AND s.connector_id = r.connector_id
	   AND s.object_class = r.object_class AND s.target_uid = d.target_uid AND s.dead_at IS NULL;
	UPDATE xprov.shadow s
	   SET situation = CASE d.type WHEN 'orphan' THEN 'unmatched' ELSE d.type END,
		   observed = d.attributes, observed_at = now(), updated_at = now()
	  FROM xprov.discrepancy d
	 WHERE d.run_id = r.id AND s.id = d.shadow_id AND s.identity_id IS NULL
	   AND d.type IN ('orphan', 'unlinked', 'disputed', 'collision');

	-- link: the owner correlation found definitely takes the account as it is
	UPDATE xprov.shadow s
	   SET identity_id = d.identity_id, situation = 'linked',
		   expected = d.attributes - 'schemas' - 'meta' - 'id', updated_at = now()
	  FROM xprov.discrepancy d
	 WHERE d.run_id = r.id AND d.type = 'unlinked' AND d.action = 'link'
	   AND s.id = d.shadow_id AND s.identity_id IS NULL;

	-- accept: the target is right
	UPDATE xprov.shadow s
	   SET expected = jsonb_strip_nulls(s.expected || (SELECT jsonb_object_agg(e.key, e.value -> 'actual')
														  FROM jsonb_each(d.differences) e)),
		   observed = d.attributes, observed_at = now(), updated_at = now()
	  FROM xprov.discrepancy d
	 WHERE d.run_id = r.id AND d.type = 'mismatch' AND d.action = 'accept' AND s.id = d.shadow_id;
	-- a missing account is dead, whether accepted or about to be created anew
	UPDATE xprov.shadow s
	   SET lifecycle = 'tombstone', situation = 'deleted', dead_at = now(), updated_at = now()
	  FROM xprov.discrepancy d
	 WHERE d.run_id = r.id AND d.type = 'missing' AND d.action IN ('accept', 'create')
	   AND s.id = d.shadow_id AND s.dead_at IS NULL;

	-- target changes: queue operations, on the subject that provisioned the
	-- account where there is one (so they queue behind its other operations);
	-- enqueue_batch answers in the order of its input
	SELECT array_agg(d.id ORDER BY d.id) INTO acting
	  FROM xprov.discrepancy d
	 WHERE d.run_id = r.id AND d.action IN ('create', 'update', 'disable', 'delete');
	IF acting IS NOT NULL THEN
		SELECT jsonb_agg(jsonb_build_object(
					'tenant_id', r.tenant_id, 'connector_id', r.connector_id, 'object_class', r.object_class,
					'operation_type', d.action,
					'identity_id', CASE WHEN d.action = 'create' OR sub.subject LIKE 'i:%' THEN d.identity_id END,
					'target_uid', CASE WHEN d.action <> 'create' THEN d.target_uid END,
					'attributes', CASE d.action
									  WHEN 'create' THEN jsonb_strip_nulls(s.expected)
									  WHEN 'update' THEN (SELECT jsonb_object_agg(e.key, e.value -> 'expected')
															FROM jsonb_each(d.differences) e)
									  ELSE '{}'::jsonb END,
					'idempotency_key', 'reconciliation:' || r.id || ':' || d.id) ORDER BY a.n)
		  INTO ops
		  FROM unnest(acting) WITH ORDINALITY a(id, n)
		  JOIN xprov.discrepancy d ON d.id = a.id
		  LEFT JOIN xprov.shadow s ON s.id = d.shadow_id
		  LEFT JOIN xprov.subject sub ON sub.lane_id = s.lane_id;
		WITH queued AS MATERIALIZED (		-- enqueued once, whatever the plan
			SELECT q.id, q.n FROM xprov.enqueue_batch(ops) WITH ORDINALITY q(id, n)
		)
		UPDATE xprov.discrepancy d SET operation_id = q.id, status = 'applied'
		  FROM unnest(acting) WITH ORDINALITY a(id, n)
		  JOIN queued q ON q.n = a.n
		 WHERE d.id = a.id;
		-- An account nobody provisioned now belongs to the subject acting on it.
		-- Driven from this run's operations: the shadows without a lane were
		-- just inserted, and statistics that have not seen them made the join
		-- rescan the discrepancies for each one.
		WITH acted AS MATERIALIZED (
			SELECT d.shadow_id, o.lane_id
			  FROM xprov.discrepancy d JOIN xprov.op o ON o.id = d.operation_id
			 WHERE d.run_id = r.id AND d.action IN ('disable', 'delete')
		)
		UPDATE xprov.shadow s SET lane_id = a.lane_id, updated_at = now()
		  FROM acted a
		 WHERE s.id = a.shadow_id AND s.lane_id IS NULL AND s.dead_at IS NULL
		   AND NOT EXISTS (SELECT 1 FROM xprov.shadow t WHERE t.lane_id = a.lane_id AND t.dead_at IS NULL);
	END IF;

	-- a person decides who owns an account correlation is unsure of
	WITH opened AS (
		INSERT INTO xprov.correlation_case (tenant_id, connector_id, object_class, origin, target_uid,
											situation, reason, candidates)
		SELECT r.tenant_id, r.connector_id, r.object_class, 'reconciliation', d.target_uid, d.type,
			   CASE d.type WHEN 'disputed' THEN 'reconciliation found several or uncertain owners'
						   ELSE 'the owner reconciliation found has another account here' END,
			   coalesce(d.candidates, '[]')
		  FROM xprov.discrepancy d
		 WHERE d.run_id = r.id AND d.type IN ('disputed', 'collision')
		   AND NOT EXISTS (SELECT 1 FROM xprov.correlation_case c
							WHERE c.connector_id = r.connector_id AND c.object_class = r.object_class
							  AND c.target_uid = d.target_uid AND c.origin = 'reconciliation'
							  AND c.status = 'open')
		RETURNING id, target_uid
	)
	UPDATE xprov.discrepancy d SET case_id = o.id
	  FROM opened o WHERE d.run_id = r.id AND d.target_uid = o.target_uid AND d.type IN ('disputed', 'collision');
	-- an account whose case is still open from an earlier run points at it
	-- (statistics first: thousands of cases may have just been opened)
	ANALYZE xprov.correlation_case;
	UPDATE xprov.discrepancy d SET case_id = c.id
	  FROM xprov.correlation_case c
	 WHERE d.run_id = r.id AND d.case_id IS NULL AND d.type IN ('disputed', 'collision')
	   AND c.connector_id = r.connector_id AND c.object_class = r.object_class
	   AND c.target_uid = d.target_uid AND c.origin = 'reconciliation' AND c.status = 'open';

	UPDATE xprov.discrepancy d
	   SET status = CASE WHEN d.action = 'report' THEN 'reported' ELSE 'applied' END
	 WHERE d.run_id = r.id AND d.status = 'planned';
	SELECT coalesce(jsonb_object_agg(a.action, a.n), '{}') INTO taken
	  FROM (SELECT d.action, count(*) AS n FROM xprov.discrepancy d
			 WHERE d.run_id = r.id AND d.action <> 'report' GROUP BY d.action) a;
	UPDATE xprov.reconciliation_run x
	   SET statistics = x.statistics || jsonb_build_object('actions_taken', taken, 'actions_left_stale', stale)
	 WHERE x.id = r.id;
	PERFORM xprov._recon_finish(r.id, 'completed', NULL);
	RETURN 'completed';
END
$$;
