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

CREATE TABLE xprov.correlation_threshold (
	connector_id uuid PRIMARY KEY,
	definite	double precision NOT NULL,
	candidate	double precision NOT NULL,
	CHECK (0 <= candidate AND candidate < definite AND definite <= 1)
);

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

-- One rule's query against the identity source: identity ids with their
-- per-item scores.  NULL when the account lacks an attribute the rule needs.
CREATE FUNCTION xprov._rule_query(src xprov.identity_source, items jsonb, account jsonb,
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
		v := xprov._account_value(account, item ->> 'target');
		IF v IS NULL THEN
			query := NULL;
			RETURN;
		END IF;
		vals := vals || v;
		expr := xprov._identity_expr(src, item ->> 'identity');
		IF expr IS NULL THEN
			RAISE EXCEPTION 'the identity source % no longer has attribute %', src.relation, item ->> 'identity'
				USING ERRCODE = 'undefined_column';
		END IF;
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
	query := format('SELECT i.%I AS id, ARRAY[%s]::float8[] AS scores FROM %s i WHERE %s%s LIMIT 100',
					src.id_column, array_to_string(scores, ', '), src.relation,
					CASE WHEN src.tenant_column IS NOT NULL THEN format('i.%I = $1 AND ', src.tenant_column) END,
					array_to_string(conds, ' AND '));
END
$$;

CREATE FUNCTION xprov.correlate_owner(tenant_id uuid, connector_id uuid, account jsonb,
									  object_class text DEFAULT 'user')
RETURNS TABLE (identity_id uuid, confidence double precision, match_type text, evidence jsonb)
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
	owner uuid;
	src xprov.identity_source;
	definite double precision := 1.0;
	candidate double precision := 0.0;
	linked uuid;
	r record;
	q record;
	hit record;
	conf double precision;
	found_by jsonb := '{}';			-- identity id -> {"score": s, "rules": [...]}
	tier integer;
	evaluated integer := 0;
	n_definite integer;
	s double precision;
	saved_threshold text;
BEGIN
	IF tenant_id IS NULL OR connector_id IS NULL OR object_class IS NULL THEN
		RAISE EXCEPTION 'tenant_id, connector_id and object_class must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF account IS NULL OR jsonb_typeof(account) <> 'object' THEN
		RAISE EXCEPTION 'account must be a JSON object' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	SELECT c.tenant_id INTO owner FROM xprov.connector c WHERE c.id = correlate_owner.connector_id;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'connector % does not exist', connector_id USING ERRCODE = 'undefined_object';
	END IF;
	IF owner <> tenant_id THEN
		RAISE EXCEPTION 'connector % belongs to another tenant', connector_id USING ERRCODE = 'invalid_parameter_value';
	END IF;
	SELECT * INTO src FROM xprov.identity_source i WHERE i.tenant_id = owner;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'tenant % has no identity source', owner
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  HINT = 'Register it first with xprov.set_identity_source().';
	END IF;
	SELECT t.definite, t.candidate INTO definite, candidate
	  FROM xprov.correlation_threshold t WHERE t.connector_id = correlate_owner.connector_id;
	definite := coalesce(definite, 1.0);
	candidate := coalesce(candidate, 0.0);

	-- an account linked before needs no correlation
	IF account ? 'id' THEN
		SELECT a.identity_id INTO linked FROM xprov.account a
		 WHERE a.connector_id = correlate_owner.connector_id AND a.object_class = correlate_owner.object_class
		   AND a.target_uid = account ->> 'id' AND a.identity_id IS NOT NULL
		 LIMIT 1;
		IF linked IS NOT NULL THEN
			RETURN QUERY SELECT linked, 1.0::float8, 'existing_link'::text,
								jsonb_build_object('target_uid', account ->> 'id');
			RETURN;
		END IF;
	END IF;

	FOR r IN SELECT * FROM xprov.correlation_rule cr
			  WHERE cr.connector_id = correlate_owner.connector_id
				AND cr.object_class = correlate_owner.object_class AND cr.enabled
			  ORDER BY cr.tier, cr.created_at, cr.id LOOP
		IF tier IS NOT NULL AND r.tier <> tier THEN
			-- a later tier only runs while no single definite match was found
			SELECT count(*) INTO n_definite FROM jsonb_each(found_by) e
			 WHERE (e.value ->> 'score')::float8 >= definite;
			EXIT WHEN n_definite = 1;
		END IF;
		tier := r.tier;
		SELECT * INTO q FROM xprov._rule_query(src, r.items, account);
		CONTINUE WHEN q.query IS NULL;
		evaluated := evaluated + 1;
		IF q.min_fuzzy IS NOT NULL THEN
			-- for this query only: the caller's transaction keeps its own threshold
			saved_threshold := current_setting('pg_trgm.similarity_threshold', true);
			PERFORM set_config('pg_trgm.similarity_threshold', q.min_fuzzy::text, true);
		END IF;
		FOR hit IN EXECUTE q.query USING owner, q.vals LOOP
			conf := 1.0;
			FOREACH s IN ARRAY hit.scores LOOP
				conf := conf * s;
			END LOOP;
			found_by := jsonb_set(found_by, ARRAY[hit.id::text], jsonb_build_object(
				'score', least(1.0, coalesce((found_by #>> ARRAY[hit.id::text, 'score'])::float8, 0) + r.weight * conf),
				'rules', coalesce(found_by #> ARRAY[hit.id::text, 'rules'], '[]'::jsonb)
						 || jsonb_build_object('rule', r.id, 'name', r.name, 'tier', r.tier, 'weight', r.weight,
											   'confidence', conf, 'items', r.items, 'item_scores', to_jsonb(hit.scores))));
		END LOOP;
		IF q.min_fuzzy IS NOT NULL THEN
			PERFORM set_config('pg_trgm.similarity_threshold', coalesce(saved_threshold, '0.3'), true);
		END IF;
	END LOOP;

	SELECT count(*) INTO n_definite FROM jsonb_each(found_by) e WHERE (e.value ->> 'score')::float8 >= definite;
	RETURN QUERY
		SELECT e.key::uuid, (e.value ->> 'score')::float8,
			   CASE WHEN (e.value ->> 'score')::float8 >= definite AND n_definite = 1
					THEN 'definite' ELSE 'candidate' END,
			   jsonb_build_object('rules', e.value -> 'rules', 'definite', definite, 'candidate', candidate,
								  'ambiguous', n_definite > 1)
		  FROM jsonb_each(found_by) e
		 WHERE (e.value ->> 'score')::float8 >= candidate AND (e.value ->> 'score')::float8 > 0
		 ORDER BY (e.value ->> 'score')::float8 DESC, e.key;
	IF NOT FOUND THEN
		RETURN QUERY SELECT NULL::uuid, 0.0::float8, 'none'::text,
							jsonb_build_object('rules_evaluated', evaluated);
	END IF;
END
$$;
