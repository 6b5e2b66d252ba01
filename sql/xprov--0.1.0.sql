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

-- The subject's queue state: its cursor into the log, lease and retries.
-- Every claim and completion writes a new version of this row, so it stays
-- narrow and its indexes few.
CREATE TABLE xprov.lane (
	lane_id		bigint NOT NULL,		-- xprov.subject.lane_id
	tenant_id	uuid NOT NULL,
	connector_id uuid NOT NULL,
	claimant	"char" NOT NULL,
	state		"char" NOT NULL,		-- r ready, l leased, i idle, d dead (blocks the subject)
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

CREATE TABLE xprov.op_failure (
	op_id		uuid NOT NULL,
	attempt		integer NOT NULL,
	started_at	timestamptz,
	finished_at	timestamptz NOT NULL DEFAULT clock_timestamp(),
	outcome		"char" NOT NULL,		-- f failed (retried later), d dead-lettered, e lease expired,
										-- p connector unavailable (attempt not counted),
										-- r worker restarted mid-attempt
	http_status	integer,
	error		text,
	hooks		text					-- what the hooks of this attempt did: JSON, as above
);
CREATE INDEX op_failure_op ON xprov.op_failure (op_id, attempt);

-- The account each subject has on its target, as the background worker last
-- saw it: the target's id for the account and the attributes last provisioned.
-- Later operations of the subject address the account by this target_uid.
CREATE TABLE xprov.account (
	lane_id		bigint PRIMARY KEY,		-- xprov.subject.lane_id
	tenant_id	uuid NOT NULL,
	connector_id uuid NOT NULL,
	object_class text NOT NULL,
	identity_id	uuid,
	target_uid	text NOT NULL,
	attributes	jsonb NOT NULL DEFAULT '{}',
	created_at	timestamptz NOT NULL DEFAULT now(),
	updated_at	timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX account_target ON xprov.account (connector_id, object_class, target_uid);

-- Each start of a background worker takes a new epoch; its leases carry it,
-- so a restarted worker knows exactly which leases its dead predecessor held.
CREATE SEQUENCE xprov.worker_epoch AS bigint;

CREATE TABLE xprov.idempotency (
	tenant_id	uuid NOT NULL,
	key			text NOT NULL,
	op_id		uuid NOT NULL,
	PRIMARY KEY (tenant_id, key)
);

-- Connectors ---------------------------------------------------------------

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
	IF kind IN ('scim2', 'rest') AND (base_url IS NULL OR base_url !~* '^https?://[^/]+') THEN
		RAISE EXCEPTION 'connector kind % needs an http or https base_url', kind
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('base_url was %L.', base_url),
				  HINT = 'Pass the target''s base URL, for example https://scim.example.com/scim/v2.';
	END IF;
	IF config IS NULL OR jsonb_typeof(config) <> 'object' THEN
		RAISE EXCEPTION 'connector config must be a JSON object'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Pass ''{}'' for no settings.';
	END IF;
	INSERT INTO xprov.connector AS c (tenant_id, name, kind, base_url, config)
	VALUES (add_connector.tenant_id, add_connector.name, add_connector.kind,
			add_connector.base_url, add_connector.config)
	RETURNING c.id INTO new_id;
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
		   xprov.mask_secrets(c.config) AS config, c.enabled, c.created_at
	  FROM xprov.connector c;

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

-- Runs one operation against a connector right now, in this session, and
-- returns what happened; nothing is queued or recorded.  For checking a
-- connector's URL, credentials and mapping before real work is sent.
CREATE FUNCTION xprov.try_operation(connector_id uuid, operation_type text,
									object_class text DEFAULT 'user',
									attributes jsonb DEFAULT '{}',
									target_uid text DEFAULT NULL,
									identity_id uuid DEFAULT NULL)
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
						  WHEN 'r' THEN 'worker_restarted' END AS outcome,
		   f.http_status, f.error, f.finished_at - f.started_at AS duration, f.hooks::jsonb AS hooks
	  FROM xprov.op_failure f
	  JOIN xprov.op o ON o.id = f.op_id
	UNION ALL
	SELECT r.op_id, r.tenant_id, r.connector_id, r.attempts, r.started_at, r.finished_at,
		   CASE r.status WHEN 'c' THEN 'completed' ELSE 'skipped' END, NULL::integer,
		   CASE r.status WHEN 's' THEN r.reason END, r.finished_at - r.started_at, r.hooks::jsonb
	  FROM xprov.op_result r
	 WHERE (r.status = 'c' AND r.attempts > 0) OR r.hooks IS NOT NULL;

CREATE VIEW xprov.accounts AS
	SELECT a.tenant_id, a.connector_id, a.object_class, a.identity_id, a.target_uid,
		   s.subject, jsonb_strip_nulls(a.attributes) AS attributes, a.created_at, a.updated_at
	  FROM xprov.account a
	  JOIN xprov.subject s ON s.lane_id = a.lane_id;

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
			   completed bigint, skipped bigint, cancelled bigint)
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
			   count(*) FILTER (WHERE state = 'd') AS dead_letter
		  FROM lanes
	), finished AS (
		SELECT count(*) FILTER (WHERE r.status = 'c') AS completed,
			   count(*) FILTER (WHERE r.status = 's') AS skipped,
			   count(*) FILTER (WHERE r.status = 'x') AS cancelled
		  FROM xprov.op_result r
		 WHERE ($1 IS NULL OR r.tenant_id = $1)
		   AND ($2 IS NULL OR r.connector_id = $2)
	)
	SELECT u.n - h.in_progress - h.failed - h.dead_letter, h.in_progress, h.failed,
		   h.dead_letter, f.completed, f.skipped, f.cancelled
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

CREATE TABLE xprov.hook_version (
	hook_id		uuid NOT NULL REFERENCES xprov.hook (id),
	version		integer NOT NULL,
	script		text NOT NULL,
	created_at	timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (hook_id, version)
);

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
