/* xprov--0.1.0--0.2.0.sql: roles, row-level security and hardened functions */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION xprov UPDATE TO '0.2.0'" to load this file. \quit

-- The security model (README "Security model"):
--  * Nothing is granted to PUBLIC but normalize_text(), which applications'
--    own expression indexes may call.
--  * Four roles, each including the privileges of the one before it except
--    xprov_processor:
--      xprov_app        enqueues, and reads its tenant's operations, shadows
--                       and runs;
--      xprov_operator   also runs reconciliations, handles dead letters and
--                       correlation cases, reads its tenant's configuration;
--      xprov_admin      configures connectors, secrets, hooks, rules and
--                       reactions, for every tenant;
--      xprov_processor  an external processor: dequeue, complete, fail, for
--                       every tenant (like the background worker).
--  * Roles other than xprov_admin see, through tables and views, only the
--    rows of the tenant named by the session setting xprov.tenant_id (row-
--    level security), and the functions refuse them anything of another
--    tenant.
--  * Every function that writes is SECURITY DEFINER (the extension's owner,
--    a superuser) with a pinned search_path; the caller's rights are checked
--    inside (the outer role: see src/tenant_guard.h).  Views are
--    security_invoker, so that the reader's row-level security applies.
--  * Connector credentials are readable by no role but superusers: the
--    connectors view shows their type and age only.

-- Roles ----------------------------------------------------------------------

-- Roles belong to the cluster: a second database's CREATE EXTENSION finds
-- them made, and DROP EXTENSION leaves them (other databases may use them).
DO $$
DECLARE
	r text;
BEGIN
	FOREACH r IN ARRAY ARRAY['xprov_app', 'xprov_operator', 'xprov_admin', 'xprov_processor'] LOOP
		IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
			EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', r);
		END IF;
	END LOOP;
END
$$;
GRANT xprov_app TO xprov_operator;
GRANT xprov_operator TO xprov_admin;
GRANT xprov_processor TO xprov_admin;

COMMENT ON ROLE xprov_app IS 'xprov: enqueue, and read the operations, shadows and runs of the tenant in xprov.tenant_id';
COMMENT ON ROLE xprov_operator IS 'xprov: runs, dead letters and correlation cases of the tenant in xprov.tenant_id';
COMMENT ON ROLE xprov_admin IS 'xprov: connectors, secrets, hooks, rules and reactions of every tenant';
COMMENT ON ROLE xprov_processor IS 'xprov: external processors (dequeue, complete, fail) for every tenant';

-- Who is calling -------------------------------------------------------------

-- The session's role (not the owner of the SECURITY DEFINER function that
-- asks): for the audit columns.
CREATE FUNCTION xprov._caller()
RETURNS text
AS 'MODULE_PATHNAME', 'xprov_caller'
LANGUAGE C STABLE STRICT;

-- True if the caller (as above) acts for every tenant: a superuser, the
-- background workers, or a member of xprov_admin.
CREATE FUNCTION xprov._caller_is_admin()
RETURNS boolean
AS 'MODULE_PATHNAME', 'xprov_caller_is_admin'
LANGUAGE C STABLE STRICT;

-- Tenant bindings ------------------------------------------------------------------
--
-- xprov.tenant_id is a session setting, which any session may change.  A
-- role bound to tenants (directly or through a role it is a member of) may
-- act only for those: with any other tenant in context it sees nothing and
-- may do nothing.  A role bound to none keeps acting for whichever tenant
-- its session names (an application that sets it per request).

CREATE TABLE xprov.tenant_binding (
	role_name	name NOT NULL,
	tenant_id	uuid NOT NULL,
	created_at	timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (role_name, tenant_id)
);
-- Configuration: who may act for whom (roles are restored by pg_dumpall).
SELECT pg_catalog.pg_extension_config_dump('xprov.tenant_binding', '');
ALTER TABLE xprov.tenant_binding ENABLE ROW LEVEL SECURITY;
CREATE POLICY every_tenant ON xprov.tenant_binding TO xprov_admin USING (true) WITH CHECK (true);

CREATE VIEW xprov.tenant_bindings WITH (security_invoker = true) AS
	SELECT b.role_name, b.tenant_id, b.created_at FROM xprov.tenant_binding b;

-- The tenant in context, if the caller may act for it; else NULL.  Owner's
-- rights: the bindings are readable by xprov_admin only.  In C
-- (src/tenant_guard.c), which keeps its last answer until bindings, roles
-- or memberships change: every row-level security check and every enqueue
-- of a tenant role asks.
CREATE FUNCTION xprov._session_tenant()
RETURNS uuid
LANGUAGE c STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'xprov_session_tenant';

-- Every backend's kept answers are out of date once a change of bindings
-- commits (and this backend's at once).
CREATE FUNCTION xprov._tenant_bindings_changed()
RETURNS trigger
LANGUAGE c
AS 'MODULE_PATHNAME', 'xprov_tenant_bindings_changed';

CREATE TRIGGER bindings_changed
	AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON xprov.tenant_binding
	FOR EACH STATEMENT EXECUTE FUNCTION xprov._tenant_bindings_changed();

-- A new table (CREATE EXTENSION again after DROP EXTENSION): answers kept
-- from the dropped one are void.  Emptying the empty table fires the
-- trigger.
TRUNCATE xprov.tenant_binding;

CREATE FUNCTION xprov._require_context()
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	setting text := nullif(current_setting('xprov.tenant_id', true), '');
BEGIN
	IF xprov._session_tenant() IS NULL AND NOT xprov._caller_is_admin() THEN
		IF setting IS NOT NULL THEN
			RAISE EXCEPTION 'role % may not act for tenant %', xprov._caller(), setting
				USING ERRCODE = 'insufficient_privilege',
					  DETAIL = 'The role is bound to other tenants (xprov.tenant_bindings).',
					  HINT = 'SET xprov.tenant_id to a tenant of the role, or ask an xprov_admin to bind it.';
		END IF;
		RAISE EXCEPTION 'no tenant context: xprov.tenant_id is not set'
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'Roles other than xprov_admin act only for the tenant in context.',
				  HINT = 'SET xprov.tenant_id to your tenant first.';
	END IF;
END
$$;

CREATE FUNCTION xprov.bind_tenant(role_name name, tenant_id uuid)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF role_name IS NULL OR tenant_id IS NULL THEN
		RAISE EXCEPTION 'role_name and tenant_id must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = bind_tenant.role_name) THEN
		RAISE EXCEPTION 'role "%" does not exist', role_name USING ERRCODE = 'undefined_object';
	END IF;
	INSERT INTO xprov.tenant_binding AS b (role_name, tenant_id)
	VALUES (bind_tenant.role_name, bind_tenant.tenant_id)
	ON CONFLICT ON CONSTRAINT tenant_binding_pkey DO NOTHING;
END
$$;

CREATE FUNCTION xprov.unbind_tenant(role_name name, tenant_id uuid)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF role_name IS NULL OR tenant_id IS NULL THEN
		RAISE EXCEPTION 'role_name and tenant_id must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	DELETE FROM xprov.tenant_binding b
	 WHERE b.role_name = unbind_tenant.role_name AND b.tenant_id = unbind_tenant.tenant_id;
	RETURN FOUND;
END
$$;

REVOKE ALL ON FUNCTION xprov.bind_tenant(name, uuid), xprov.unbind_tenant(name, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION xprov.bind_tenant(name, uuid), xprov.unbind_tenant(name, uuid) TO xprov_admin;
GRANT SELECT ON xprov.tenant_binding, xprov.tenant_bindings TO xprov_admin;

-- Raises unless the caller may act for tenant_id.
CREATE FUNCTION xprov._require_tenant(tenant_id uuid)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM xprov._require_context();
	IF NOT xprov._caller_is_admin() AND tenant_id IS DISTINCT FROM xprov._session_tenant() THEN
		RAISE EXCEPTION 'tenant % is not the tenant in context', tenant_id
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = format('xprov.tenant_id is %s.', xprov._session_tenant()),
				  HINT = 'Roles other than xprov_admin act only for the tenant in context.';
	END IF;
END
$$;

-- True if the caller may see the tenant's objects; an object the caller may
-- not see is reported as not existing.
CREATE FUNCTION xprov._tenant_visible(tenant_id uuid)
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT xprov._caller_is_admin() OR tenant_id = xprov._session_tenant()
$$;

-- Audit columns (requested_by, approved_by, decided_by) name the caller.
-- Set by trigger rather than by each function that writes them, which run
-- as the extension's owner, so that no writer can forget it.
CREATE FUNCTION xprov._stamp_caller()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	NEW := jsonb_populate_record(NEW, jsonb_build_object(TG_ARGV[0], xprov._caller()));
	RETURN NEW;
END
$$;

CREATE TRIGGER stamp_requested_by BEFORE INSERT ON xprov.reconciliation_run
	FOR EACH ROW EXECUTE FUNCTION xprov._stamp_caller('requested_by');
CREATE TRIGGER stamp_approved_by BEFORE UPDATE OF approved_by ON xprov.reconciliation_run
	FOR EACH ROW WHEN (NEW.approved_by IS NOT NULL) EXECUTE FUNCTION xprov._stamp_caller('approved_by');
CREATE TRIGGER stamp_decided_by BEFORE UPDATE OF decided_by ON xprov.correlation_case
	FOR EACH ROW WHEN (NEW.decided_by IS NOT NULL) EXECUTE FUNCTION xprov._stamp_caller('decided_by');
CREATE TRIGGER stamp_decided_by BEFORE INSERT OR UPDATE OF decided_by ON xprov.correlation_decision
	FOR EACH ROW EXECUTE FUNCTION xprov._stamp_caller('decided_by');

-- Tenant checks in the functions ---------------------------------------------

-- Run-level calls: a role other than xprov_admin is told that another
-- tenant's connector does not exist.
CREATE OR REPLACE FUNCTION xprov._tenant_connector(connector_id uuid)
RETURNS xprov.connector
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	c xprov.connector;
	context uuid := xprov._session_tenant();
BEGIN
	PERFORM xprov._require_context();
	IF connector_id IS NOT NULL AND NOT xprov._caller_is_admin()
	   AND NOT EXISTS (SELECT 1 FROM xprov.connector x
					    WHERE x.id = _tenant_connector.connector_id AND x.tenant_id = context) THEN
		RAISE EXCEPTION 'connector % does not exist', connector_id
			USING ERRCODE = 'undefined_object', HINT = 'List connectors with SELECT * FROM xprov.connectors.';
	END IF;
	c := xprov._connector(connector_id);
	IF context IS NULL THEN
		RAISE EXCEPTION 'no tenant context: xprov.tenant_id is not set'
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'Reconciliation acts for one tenant and needs to know which.',
				  HINT = format('SET xprov.tenant_id = %L (the connector''s tenant) first.', c.tenant_id);
	END IF;
	IF context <> c.tenant_id THEN
		RAISE EXCEPTION 'connector % does not belong to the tenant in context', connector_id
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = format('xprov.tenant_id is %s.', context),
				  HINT = 'Set xprov.tenant_id to the connector''s tenant.';
	END IF;
	RETURN c;
END
$$;

-- The run, locked; another tenant's does not exist for a tenant role.
CREATE OR REPLACE FUNCTION xprov._tenant_run(run_id uuid)
RETURNS xprov.reconciliation_run
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r xprov.reconciliation_run;
BEGIN
	IF run_id IS NULL THEN
		RAISE EXCEPTION 'run_id must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	PERFORM xprov._require_context();
	SELECT * INTO r FROM xprov.reconciliation_run x WHERE x.id = _tenant_run.run_id FOR UPDATE;
	IF NOT FOUND OR NOT xprov._tenant_visible(r.tenant_id) THEN
		RAISE EXCEPTION 'reconciliation run % does not exist', run_id USING ERRCODE = 'undefined_object';
	END IF;
	PERFORM xprov._tenant_connector(r.connector_id);
	RETURN r;
END
$$;

CREATE OR REPLACE FUNCTION xprov._correlation_tenant(tenant_id uuid, connector_id uuid, object_class text,
													 input jsonb, input_name text)
RETURNS uuid
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	owner uuid;
BEGIN
	IF tenant_id IS NULL OR connector_id IS NULL OR object_class IS NULL THEN
		RAISE EXCEPTION 'tenant_id, connector_id and object_class must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	PERFORM xprov._require_tenant(tenant_id);
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

CREATE OR REPLACE FUNCTION xprov.wait_run(run_id uuid, timeout interval DEFAULT '5 minutes')
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	deadline timestamptz := clock_timestamp() + coalesce(timeout, '5 minutes');
	st text;
	owner uuid;
	nap double precision := 0.01;
BEGIN
	IF run_id IS NULL THEN
		RAISE EXCEPTION 'run_id must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	PERFORM xprov._require_context();
	LOOP
		SELECT r.status, r.tenant_id INTO st, owner FROM xprov.reconciliation_run r WHERE r.id = wait_run.run_id;
		IF NOT FOUND OR NOT xprov._tenant_visible(owner) THEN
			RAISE EXCEPTION 'reconciliation run % does not exist', run_id USING ERRCODE = 'undefined_object';
		END IF;
		EXIT WHEN st IN ('completed', 'failed', 'cancelled', 'paused') OR clock_timestamp() >= deadline;
		PERFORM pg_sleep(least(nap, greatest(extract(epoch FROM deadline - clock_timestamp()), 0)::float8));
		nap := least(nap * 2, 0.2);
	END LOOP;
	RETURN st;
END
$$;

-- Another tenant's case does not exist for a tenant role.  (Whole bodies:
-- renaming 0.1.0's function to wrap it would break its name-qualified
-- variables.)
CREATE OR REPLACE FUNCTION xprov.resolve_case(case_id uuid, decision text, identity_id uuid DEFAULT NULL,
								   target_uid text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
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
	PERFORM xprov._require_context();
	SELECT * INTO c FROM xprov.correlation_case x WHERE x.id = case_id FOR UPDATE;
	IF NOT FOUND OR NOT xprov._tenant_visible(c.tenant_id) THEN
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

-- (0.1.0's stats refers to its arguments by number: it can be renamed and wrapped.)
ALTER FUNCTION xprov.stats(uuid, uuid) RENAME TO _stats;
-- A role other than xprov_admin counts its own tenant's operations: the
-- tenant in context when it names none.
CREATE FUNCTION xprov.stats(tenant_id uuid DEFAULT NULL, connector_id uuid DEFAULT NULL)
RETURNS TABLE (pending bigint, in_progress bigint, failed bigint, dead_letter bigint,
			   completed bigint, skipped bigint, cancelled bigint, parked bigint)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF NOT xprov._caller_is_admin() THEN
		tenant_id := coalesce(tenant_id, xprov._session_tenant());
		PERFORM xprov._require_tenant(tenant_id);
	END IF;
	RETURN QUERY SELECT * FROM xprov._stats(tenant_id, connector_id);
END
$$;

-- An identity source is read with the extension owner's rights, and reading
-- a relation can run its owner's code (a view's functions, a cast of a
-- column's type): registering one is a superuser's decision, not
-- xprov_admin's, and only tables qualify unless a superuser owns the view.
CREATE OR REPLACE FUNCTION xprov.set_identity_source(tenant_id uuid, relation regclass, options jsonb DEFAULT '{}')
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
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
	IF NOT (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = xprov._caller()) THEN
		RAISE EXCEPTION 'only a superuser can register an identity source'
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'xprov reads it with the extension owner''s rights.';
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_class c JOIN pg_roles o ON o.oid = c.relowner
					WHERE c.oid = relation AND (c.relkind IN ('r', 'p') OR o.rolsuper)) THEN
		RAISE EXCEPTION '% is not a table', relation
			USING ERRCODE = 'wrong_object_type',
				  DETAIL = 'A view, materialized view or foreign table owned by another role than a superuser would run that role''s code with the extension owner''s rights.',
				  HINT = 'Register the table itself.';
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

-- Lengths ---------------------------------------------------------------------

-- Names and scripts have limits: a 100,000-character object class is an
-- attack or a mistake, and either way should not reach indexes, URLs and
-- views.  Arguments: pairs of column name and limit in characters.  The
-- queue's C functions check the same names (src/xprov.h).
CREATE FUNCTION xprov._check_lengths()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	row_json jsonb := to_jsonb(NEW);
	n integer;
BEGIN
	FOR i IN 0 .. TG_NARGS - 1 BY 2 LOOP
		n := length(row_json ->> TG_ARGV[i]);
		IF n > TG_ARGV[i + 1]::integer THEN
			RAISE EXCEPTION '% is too long', TG_ARGV[i]
				USING ERRCODE = 'program_limit_exceeded',
					  DETAIL = format('It has %s characters; the limit is %s.', n, TG_ARGV[i + 1]);
		END IF;
	END LOOP;
	RETURN NEW;
END
$$;
CREATE TRIGGER check_lengths BEFORE INSERT OR UPDATE ON xprov.connector
	FOR EACH ROW EXECUTE FUNCTION xprov._check_lengths('name', '255');
CREATE TRIGGER check_lengths BEFORE INSERT OR UPDATE ON xprov.hook
	FOR EACH ROW EXECUTE FUNCTION xprov._check_lengths('object_class', '255', 'script', '1048576');
CREATE TRIGGER check_lengths BEFORE INSERT ON xprov.hook_version
	FOR EACH ROW EXECUTE FUNCTION xprov._check_lengths('script', '1048576');
CREATE TRIGGER check_lengths BEFORE INSERT OR UPDATE ON xprov.correlation_rule
	FOR EACH ROW EXECUTE FUNCTION xprov._check_lengths('object_class', '255', 'name', '255');
CREATE TRIGGER check_lengths BEFORE INSERT ON xprov.reconciliation_run
	FOR EACH ROW EXECUTE FUNCTION xprov._check_lengths('object_class', '255');

-- Secrets --------------------------------------------------------------------

-- The reason a credentials object is unusable, or NULL; never its values.
-- What the HTTP engine would refuse to send (src/connector.c) is refused
-- when it is stored: control characters, an empty token, a colon in a basic
-- user name, a header name that is no HTTP token or that would take over
-- the request's framing, routing or request id.
CREATE OR REPLACE FUNCTION xprov._secret_problem(secret jsonb)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE
		WHEN jsonb_typeof(secret) IS DISTINCT FROM 'object' THEN 'it is not a JSON object'
		WHEN secret ->> 'type' = 'bearer' THEN
			CASE WHEN jsonb_typeof(secret -> 'token') IS DISTINCT FROM 'string' OR secret ->> 'token' = ''
				 THEN 'a bearer secret needs a non-empty token'
				 WHEN secret ->> 'token' ~ '[\x01-\x08\x0a-\x1f\x7f]'
				 THEN 'the token contains control characters' END
		WHEN secret ->> 'type' = 'basic' THEN
			CASE WHEN jsonb_typeof(secret -> 'username') IS DISTINCT FROM 'string'
					  OR jsonb_typeof(secret -> 'password') IS DISTINCT FROM 'string'
				 THEN 'a basic secret needs a username and a password'
				 WHEN secret ->> 'username' = '' OR strpos(secret ->> 'username', ':') > 0
				 THEN 'the username must be non-empty and without colons'
				 WHEN (secret ->> 'username') || (secret ->> 'password') ~ '[\x01-\x08\x0a-\x1f\x7f]'
				 THEN 'the username or password contains control characters' END
		WHEN secret ->> 'type' = 'header' THEN
			CASE WHEN jsonb_typeof(coalesce(secret -> 'header_name', secret -> 'header')) IS DISTINCT FROM 'string'
					  OR jsonb_typeof(secret -> 'value') IS DISTINCT FROM 'string'
				 THEN 'a header secret needs a header_name and a value'
				 WHEN coalesce(secret ->> 'header_name', secret ->> 'header') !~ '^[-!#$%&''*+.^_`|~0-9A-Za-z]+$'
				 THEN 'the header_name is not an HTTP header name'
				 WHEN lower(coalesce(secret ->> 'header_name', secret ->> 'header')) IN
					  ('host', 'content-length', 'transfer-encoding', 'connection', 'keep-alive',
					   'proxy-connection', 'te', 'trailer', 'upgrade', 'expect', 'content-type', 'accept',
					   'if-match', 'x-request-id')
				 THEN 'the header_name names a header that xprov or HTTP itself sets'
				 WHEN secret ->> 'value' ~ '[\x01-\x08\x0a-\x1f\x7f]'
				 THEN 'the value contains control characters' END
		ELSE 'its type must be bearer, basic or header'
	END
$$;

-- Every way credentials are stored (add_connector's config.auth as well as
-- set_connector_secret) is checked here, before the table's own CHECK, whose
-- error would repeat the row.
CREATE FUNCTION xprov._connector_secret_valid()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	problem text := xprov._secret_problem(NEW.secret);
BEGIN
	IF problem IS NOT NULL THEN
		RAISE EXCEPTION 'unusable credentials for connector %', NEW.connector_id
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('The auth object is refused: %s.', problem),
				  HINT = 'Pass {"type": "bearer", "token": ...}, {"type": "basic", "username": ..., "password": ...} or {"type": "header", "header_name": ..., "value": ...}.';
	END IF;
	RETURN NEW;
END
$$;
CREATE TRIGGER connector_secret_valid BEFORE INSERT OR UPDATE OF secret ON xprov.connector_secret
	FOR EACH ROW EXECUTE FUNCTION xprov._connector_secret_valid();

-- What the connectors view may show of a credentials object: its type,
-- readable through a column grant while the secret column is not.
ALTER TABLE xprov.connector_secret
	ADD COLUMN auth_type text GENERATED ALWAYS AS (secret ->> 'type') STORED;

CREATE OR REPLACE VIEW xprov.connectors AS
	SELECT c.id, c.tenant_id, c.name, c.kind, c.base_url,
		   xprov.mask_secrets(c.config) AS config, c.enabled, c.created_at,
		   (SELECT s.auth_type FROM xprov.connector_secret s WHERE s.connector_id = c.id) AS auth_type,
		   (SELECT s.updated_at FROM xprov.connector_secret s WHERE s.connector_id = c.id) AS secret_updated_at
	  FROM xprov.connector c;

-- Hot-path helpers in C --------------------------------------------------------

-- The shadow's expected attributes after a provisioned change, for every
-- completed operation with an account (src/jsonb_merge.c).  As SQL it was a
-- third of the worker's recording statement.
CREATE OR REPLACE FUNCTION xprov._merge_expected(expected jsonb, changes jsonb)
RETURNS jsonb
LANGUAGE c IMMUTABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'xprov_merge_expected';

-- Ids in time order (UUID version 7, as operations get): a new shadow's
-- primary key entry lands on the index's rightmost page, not on a random one,
-- and no system call is made per id (gen_random_uuid() asks OpenSSL, which
-- checks for a fork with getpid()).  A shadow is inserted per new account.
CREATE FUNCTION xprov._new_id()
RETURNS uuid
LANGUAGE c VOLATILE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'xprov_new_id';

ALTER TABLE xprov.shadow ALTER COLUMN id SET DEFAULT xprov._new_id();

-- Functions: search_path, owner's rights, EXECUTE ----------------------------

-- pg_temp last, explicitly: otherwise it is searched first for relations.
DO $$
DECLARE
	f regprocedure;
BEGIN
	FOR f IN SELECT p.oid FROM pg_catalog.pg_proc p
			  WHERE p.pronamespace = 'xprov'::regnamespace AND p.prolang <> (SELECT l.oid FROM pg_catalog.pg_language l WHERE l.lanname = 'c') LOOP
		EXECUTE pg_catalog.format('ALTER FUNCTION %s SET search_path = pg_catalog, pg_temp', f);
	END LOOP;
END
$$;

-- The C functions any role may call run SQL too (wait_idle) or may one day.
ALTER FUNCTION xprov.wait_idle(interval) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION xprov.worker_status() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION xprov.build_info() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION xprov.validate_script(text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION xprov.execute_script(text, jsonb, integer, integer) SET search_path = pg_catalog, pg_temp;

-- The functions that read or write xprov's tables for a caller who may not.
ALTER FUNCTION xprov.add_connector(uuid, text, text, text, jsonb) SECURITY DEFINER;
ALTER FUNCTION xprov.set_connector_secret(uuid, jsonb) SECURITY DEFINER;
ALTER FUNCTION xprov.set_connector_enabled(uuid, boolean) SECURITY DEFINER;
ALTER FUNCTION xprov.enqueue(uuid, uuid, uuid, text, text, jsonb, text, integer, timestamptz, text)
	SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION xprov.enqueue_batch(jsonb) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION xprov.dequeue(integer, interval) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION xprov.complete(uuid, text, jsonb) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION xprov.complete_batch(uuid[]) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION xprov.fail(uuid, text, boolean, interval) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION xprov.retry(uuid) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION xprov.skip(uuid, text) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION xprov.cancel(uuid) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION xprov.try_operation(uuid, text, text, jsonb, text, uuid, boolean)
	SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION xprov.purge_tombstones(interval) SECURITY DEFINER;
ALTER FUNCTION xprov.stats(uuid, uuid) SECURITY DEFINER;
ALTER FUNCTION xprov.add_hook(uuid, uuid, text, text, text, jsonb) SECURITY DEFINER;
ALTER FUNCTION xprov.update_hook(uuid, text) SECURITY DEFINER;
ALTER FUNCTION xprov.set_hook_enabled(uuid, boolean) SECURITY DEFINER;
ALTER FUNCTION xprov.set_identity_source(uuid, regclass, jsonb) SECURITY DEFINER;
ALTER FUNCTION xprov.add_correlation_rule(uuid, text, jsonb) SECURITY DEFINER;
ALTER FUNCTION xprov.set_correlation_thresholds(uuid, double precision, double precision) SECURITY DEFINER;
ALTER FUNCTION xprov.correlate_owner(uuid, uuid, jsonb, text) SECURITY DEFINER;
ALTER FUNCTION xprov.correlate(uuid, uuid, jsonb, text) SECURITY DEFINER;
ALTER FUNCTION xprov.resolve_case(uuid, text, uuid, text) SECURITY DEFINER;
ALTER FUNCTION xprov.reconcile(uuid, text, text) SECURITY DEFINER;
ALTER FUNCTION xprov.reconcile_preview(uuid, text) SECURITY DEFINER;
ALTER FUNCTION xprov.wait_run(uuid, interval) SECURITY DEFINER;
ALTER FUNCTION xprov.cancel_run(uuid) SECURITY DEFINER;
ALTER FUNCTION xprov.approve_run(uuid) SECURITY DEFINER;
ALTER FUNCTION xprov.set_reaction(uuid, text, text) SECURITY DEFINER;
ALTER FUNCTION xprov.set_reconciliation_threshold(uuid, integer, double precision) SECURITY DEFINER;
ALTER FUNCTION xprov.purge_runs(interval) SECURITY DEFINER;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA xprov FROM PUBLIC;
-- applications' expression indexes (correlation) may call it
GRANT EXECUTE ON FUNCTION xprov.normalize_text(text) TO PUBLIC;

GRANT USAGE ON SCHEMA xprov TO xprov_app, xprov_processor;

GRANT EXECUTE ON FUNCTION
	xprov.enqueue(uuid, uuid, uuid, text, text, jsonb, text, integer, timestamptz, text),
	xprov.enqueue_batch(jsonb),
	xprov.stats(uuid, uuid),
	xprov.wait_run(uuid, interval),
	xprov.wait_idle(interval),
	xprov.build_info(),
	xprov.mask_secrets(jsonb),			-- the connectors view
	xprov._session_tenant()				-- row-level security
	TO xprov_app;

GRANT EXECUTE ON FUNCTION
	xprov.retry(uuid),
	xprov.skip(uuid, text),
	xprov.cancel(uuid),
	xprov.reconcile(uuid, text, text),
	xprov.reconcile_preview(uuid, text),
	xprov.cancel_run(uuid),
	xprov.approve_run(uuid),
	xprov.resolve_case(uuid, text, uuid, text),
	xprov.correlate_owner(uuid, uuid, jsonb, text),
	xprov.correlate(uuid, uuid, jsonb, text),
	xprov._reaction_actions(text)		-- the reactions view
	TO xprov_operator;

GRANT EXECUTE ON FUNCTION
	xprov.add_connector(uuid, text, text, text, jsonb),
	xprov.set_connector_secret(uuid, jsonb),
	xprov.set_connector_enabled(uuid, boolean),
	xprov.try_operation(uuid, text, text, jsonb, text, uuid, boolean),
	xprov.worker_status(),
	xprov.purge_tombstones(interval),
	xprov.validate_script(text),
	xprov.execute_script(text, jsonb, integer, integer),
	xprov.add_hook(uuid, uuid, text, text, text, jsonb),
	xprov.update_hook(uuid, text),
	xprov.set_hook_enabled(uuid, boolean),
	xprov.add_correlation_rule(uuid, text, jsonb),
	xprov.set_correlation_thresholds(uuid, double precision, double precision),
	xprov.set_reaction(uuid, text, text),
	xprov.set_reconciliation_threshold(uuid, integer, double precision),
	xprov.purge_runs(interval)
	TO xprov_admin;

GRANT EXECUTE ON FUNCTION
	xprov.dequeue(integer, interval),
	xprov.complete(uuid, text, jsonb),
	xprov.complete_batch(uuid[]),
	xprov.fail(uuid, text, boolean, interval),
	xprov.wait_idle(interval),
	xprov.build_info()
	TO xprov_processor;

-- Tables and views: row-level security ---------------------------------------

-- Views run with the reader's rights, so that the reader's row-level
-- security applies (a view runs with its owner's by default, and the owner
-- is a superuser).
ALTER VIEW xprov.connectors SET (security_invoker = true);
ALTER VIEW xprov.operations SET (security_invoker = true);
ALTER VIEW xprov.operation_attempts SET (security_invoker = true);
ALTER VIEW xprov.shadow_pending_operations SET (security_invoker = true);
ALTER VIEW xprov.shadows SET (security_invoker = true);
ALTER VIEW xprov.accounts SET (security_invoker = true);
ALTER VIEW xprov.dead_letters SET (security_invoker = true);
ALTER VIEW xprov.hooks SET (security_invoker = true);
ALTER VIEW xprov.hook_versions SET (security_invoker = true);
ALTER VIEW xprov.correlation_rules SET (security_invoker = true);
ALTER VIEW xprov.correlation_cases SET (security_invoker = true);
ALTER VIEW xprov.correlation_decisions SET (security_invoker = true);
ALTER VIEW xprov.reactions SET (security_invoker = true);
ALTER VIEW xprov.reconciliation_runs SET (security_invoker = true);
ALTER VIEW xprov.discrepancies SET (security_invoker = true);
ALTER VIEW xprov.reconciliation_thresholds SET (security_invoker = true);

-- Every table: xprov_admin sees every row; the tenant roles the rows of the
-- tenant in context.  Separate policies per role rather than one with an OR,
-- so that a tenant role's queries can use the tenant_id indexes.  Nobody
-- but the extension's functions writes: no role has INSERT, UPDATE or
-- DELETE, and the policies' WITH CHECK would hold them to their tenant.
DO $$
DECLARE
	t text;
BEGIN
	FOREACH t IN ARRAY ARRAY['connector', 'connector_secret', 'subject', 'lane', 'op', 'op_result',
							 'shadow', 'idempotency', 'hook', 'identity_source', 'correlation_rule',
							 'correlation_case', 'correlation_decision', 'reconciliation_run',
							 'discrepancy', 'reaction', 'reconciliation_threshold'] LOOP
		EXECUTE pg_catalog.format('ALTER TABLE xprov.%I ENABLE ROW LEVEL SECURITY', t);
		EXECUTE pg_catalog.format('CREATE POLICY every_tenant ON xprov.%I TO xprov_admin '
								  'USING (true) WITH CHECK (true)', t);
		EXECUTE pg_catalog.format('CREATE POLICY tenant_in_context ON xprov.%I TO xprov_app '
								  'USING (tenant_id = (SELECT xprov._session_tenant())) '
								  'WITH CHECK (tenant_id = (SELECT xprov._session_tenant()))', t);
	END LOOP;
END
$$;

-- Tables without a tenant_id follow the row they belong to (whose own
-- policy applies inside the subquery).
ALTER TABLE xprov.op_failure ENABLE ROW LEVEL SECURITY;
CREATE POLICY every_tenant ON xprov.op_failure TO xprov_admin USING (true) WITH CHECK (true);
CREATE POLICY tenant_in_context ON xprov.op_failure TO xprov_app
	USING (EXISTS (SELECT 1 FROM xprov.op o WHERE o.id = op_failure.op_id));
ALTER TABLE xprov.hook_version ENABLE ROW LEVEL SECURITY;
CREATE POLICY every_tenant ON xprov.hook_version TO xprov_admin USING (true) WITH CHECK (true);
CREATE POLICY tenant_in_context ON xprov.hook_version TO xprov_app
	USING (EXISTS (SELECT 1 FROM xprov.hook h WHERE h.id = hook_version.hook_id));
ALTER TABLE xprov.correlation_threshold ENABLE ROW LEVEL SECURITY;
CREATE POLICY every_tenant ON xprov.correlation_threshold TO xprov_admin USING (true) WITH CHECK (true);
CREATE POLICY tenant_in_context ON xprov.correlation_threshold TO xprov_app
	USING (EXISTS (SELECT 1 FROM xprov.connector c WHERE c.id = correlation_threshold.connector_id));
-- a run's staged listing: the reconciler's alone
ALTER TABLE xprov.reconciliation_item ENABLE ROW LEVEL SECURITY;
CREATE POLICY every_tenant ON xprov.reconciliation_item TO xprov_admin USING (true) WITH CHECK (true);

-- What each role reads.  A view needs its tables' privileges too (it runs
-- with the reader's rights); the secret column is granted to nobody.
GRANT SELECT ON xprov.connector, xprov.subject, xprov.lane, xprov.op, xprov.op_result, xprov.op_failure,
	xprov.shadow, xprov.reconciliation_run
	TO xprov_app;
GRANT SELECT (connector_id, tenant_id, auth_type, updated_at) ON xprov.connector_secret TO xprov_app;
GRANT SELECT ON xprov.connectors, xprov.operations, xprov.operation_attempts, xprov.dead_letters,
	xprov.shadow_pending_operations, xprov.shadows, xprov.accounts, xprov.reconciliation_runs
	TO xprov_app;

GRANT SELECT ON xprov.hook, xprov.hook_version, xprov.identity_source, xprov.correlation_rule,
	xprov.correlation_threshold, xprov.correlation_case, xprov.correlation_decision, xprov.discrepancy,
	xprov.reaction, xprov.reconciliation_threshold
	TO xprov_operator;
GRANT SELECT ON xprov.hooks, xprov.hook_versions, xprov.correlation_rules, xprov.correlation_cases,
	xprov.correlation_decisions, xprov.reactions, xprov.discrepancies, xprov.reconciliation_thresholds
	TO xprov_operator;

GRANT SELECT ON xprov.idempotency, xprov.reconciliation_item TO xprov_admin;

-- pg_init_privs ----------------------------------------------------------------

-- The GRANTs and REVOKEs above recorded each object's whole ACL as the
-- extension's own, including privileges a DBA granted by hand at 0.1.0 (the
-- only way a non-superuser could use it then).  pg_dump leaves the
-- extension's own privileges out, so a dump would lose those grants: they
-- are the DBA's again.  (A fresh install has none, so this changes nothing
-- there.)
UPDATE pg_catalog.pg_init_privs p
   SET initprivs = (SELECT pg_catalog.array_agg(a)
					  FROM pg_catalog.unnest(p.initprivs) a
					 WHERE pg_catalog.split_part(a::text, '=', 1) = ''
						OR pg_catalog.btrim(pg_catalog.split_part(a::text, '=', 1), '"') IN
						   (SELECT r.rolname FROM pg_catalog.pg_roles r
							 WHERE r.rolsuper OR r.rolname IN ('xprov_app', 'xprov_operator', 'xprov_admin',
															   'xprov_processor')))
 WHERE p.privtype = 'e'
   AND (EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
				 WHERE d.classid = p.classoid AND d.objid = p.objoid AND d.deptype = 'e'
				   AND d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass
				   AND d.refobjid = (SELECT e.oid FROM pg_catalog.pg_extension e WHERE e.extname = 'xprov'))
		OR (p.classoid = 'pg_catalog.pg_namespace'::pg_catalog.regclass
			AND p.objoid = 'xprov'::pg_catalog.regnamespace))
   AND EXISTS (SELECT 1 FROM pg_catalog.unnest(p.initprivs) a
				WHERE pg_catalog.split_part(a::text, '=', 1) <> ''
				  AND pg_catalog.btrim(pg_catalog.split_part(a::text, '=', 1), '"') NOT IN
					  (SELECT r.rolname FROM pg_catalog.pg_roles r
						WHERE r.rolsuper OR r.rolname IN ('xprov_app', 'xprov_operator', 'xprov_admin',
														  'xprov_processor')));

-- Event webhooks -----------------------------------------------------------------
--
-- Lifecycle events go to subscribers' URLs (README "Webhooks").  The outbox
-- is xprov.webhook_delivery: one row per event and subscribed webhook,
-- written by triggers in the transaction that makes the change, so an event
-- exists exactly when its change committed.  The "xprov webhooks" process
-- sends them: per webhook one at a time, in id order, retried with backoff,
-- dead-lettered after xprov.webhook_max_attempts.

CREATE TABLE xprov.webhook (
	id			uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	tenant_id	uuid NOT NULL,
	url			text NOT NULL,
	events		text[] NOT NULL,
	secret		text NOT NULL,
	enabled		boolean NOT NULL DEFAULT true,
	created_at	timestamptz NOT NULL DEFAULT now(),
	updated_at	timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_tenant ON xprov.webhook (tenant_id);
-- Configuration: subscribers and their secrets (a dump holds them, as it
-- holds connectors' credentials).
SELECT pg_catalog.pg_extension_config_dump('xprov.webhook', '');

CREATE TABLE xprov.webhook_delivery (
	id			bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	webhook_id	uuid NOT NULL,
	tenant_id	uuid NOT NULL,
	event_id	uuid NOT NULL,
	event_type	text NOT NULL,
	payload		jsonb NOT NULL,
	created_at	timestamptz NOT NULL DEFAULT clock_timestamp(),
	-- the writing transaction: a delivery is sent only once every transaction
	-- that could still add an earlier one has ended, so none overtakes another
	xid			xid8 NOT NULL DEFAULT pg_current_xact_id(),
	status		"char" NOT NULL DEFAULT 'p',	-- p pending, d delivered, x dead-lettered
	attempts	integer NOT NULL DEFAULT 0,
	next_attempt_at timestamptz NOT NULL DEFAULT clock_timestamp(),
	last_http_status integer,
	last_error	text,
	delivered_at timestamptz
);
-- each webhook's head: its oldest pending delivery
CREATE INDEX webhook_delivery_pending ON xprov.webhook_delivery (webhook_id, id) WHERE status = 'p';
CREATE INDEX webhook_delivery_delivered ON xprov.webhook_delivery (delivered_at) WHERE status = 'd';
-- Runtime (not dumped): events of a database's past.

-- Where each webhook's head is looked for: above every delivery finished
-- in order (delivered or dead-lettered), so that finding the head never
-- steps over the finished ones' index entries, which would make each
-- lookup slower than the last until a vacuum.  A retried dead letter moves
-- it back.  No row: from the start.
CREATE TABLE xprov.webhook_cursor (
	webhook_id	uuid PRIMARY KEY,
	scan_from	bigint NOT NULL
);

CREATE VIEW xprov.webhooks WITH (security_invoker = true) AS
	SELECT w.id, w.tenant_id, w.url, w.events, w.enabled, w.created_at,
		   (SELECT count(*) FROM xprov.webhook_delivery d WHERE d.webhook_id = w.id AND d.status = 'p') AS pending,
		   (SELECT count(*) FROM xprov.webhook_delivery d WHERE d.webhook_id = w.id AND d.status = 'x') AS dead_letter
	  FROM xprov.webhook w;

CREATE VIEW xprov.webhook_deliveries WITH (security_invoker = true) AS
	SELECT d.id, d.webhook_id, d.tenant_id, d.event_id, d.event_type, d.payload,
		   CASE d.status WHEN 'p' THEN 'pending' WHEN 'd' THEN 'delivered' ELSE 'dead_letter' END AS status,
		   d.attempts, CASE WHEN d.status = 'p' THEN d.next_attempt_at END AS next_attempt_at,
		   d.last_http_status, d.last_error, d.created_at, d.delivered_at
	  FROM xprov.webhook_delivery d;

CREATE FUNCTION xprov._webhook_event_types()
RETURNS text[]
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT ARRAY['operation.completed', 'operation.failed', 'operation.dead_lettered', 'operation.skipped',
				 'reconciliation.completed', 'reconciliation.paused', 'correlation.case_opened']
$$;

CREATE FUNCTION xprov.add_webhook(tenant_id uuid, url text, events text[], secret text)
RETURNS uuid
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	unknown text;
	new_id uuid;
	d text;
BEGIN
	IF tenant_id IS NULL OR url IS NULL OR events IS NULL OR secret IS NULL THEN
		RAISE EXCEPTION 'tenant_id, url, events and secret must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF cardinality(events) = 0 THEN
		RAISE EXCEPTION 'a webhook needs at least one event type'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = format('Subscribe to some of %s.', array_to_string(xprov._webhook_event_types(), ', '));
	END IF;
	SELECT e INTO unknown FROM unnest(events) e WHERE e IS NULL OR e <> ALL (xprov._webhook_event_types()) LIMIT 1;
	IF FOUND THEN
		RAISE EXCEPTION 'unknown event type "%"', coalesce(unknown, 'NULL')
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = format('Use %s.', array_to_string(xprov._webhook_event_types(), ', '));
	END IF;
	IF length(secret) < 16 THEN
		RAISE EXCEPTION 'a webhook secret needs at least 16 characters'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Use a long random value, for example encode(gen_random_bytes(32), ''hex'') from pgcrypto.';
	END IF;
	IF length(url) > 2048 THEN
		RAISE EXCEPTION 'url is too long' USING ERRCODE = 'program_limit_exceeded';
	END IF;
	BEGIN
		PERFORM xprov._check_base_url('webhook', url);
	EXCEPTION
		WHEN invalid_parameter_value THEN
			GET STACKED DIAGNOSTICS d = PG_EXCEPTION_DETAIL;
			RAISE EXCEPTION 'a webhook url must be an http or https URL without credentials or dot segments'
				USING ERRCODE = 'invalid_parameter_value', DETAIL = d;
		WHEN insufficient_privilege THEN
			GET STACKED DIAGNOSTICS d = PG_EXCEPTION_DETAIL;
			RAISE EXCEPTION 'the webhook url targets a host that is not allowed'
				USING ERRCODE = 'insufficient_privilege', DETAIL = d,
					  HINT = 'A superuser can add the host to xprov.allowed_hosts.';
	END;
	INSERT INTO xprov.webhook AS w (tenant_id, url, events, secret)
	VALUES (add_webhook.tenant_id, add_webhook.url,
			ARRAY(SELECT DISTINCT e FROM unnest(add_webhook.events) e ORDER BY e), add_webhook.secret)
	RETURNING w.id INTO new_id;
	RETURN new_id;
END
$$;

CREATE FUNCTION xprov.set_webhook_enabled(webhook_id uuid, enabled boolean)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF webhook_id IS NULL OR enabled IS NULL THEN
		RAISE EXCEPTION 'webhook_id and enabled must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	UPDATE xprov.webhook w SET enabled = set_webhook_enabled.enabled, updated_at = now()
	 WHERE w.id = set_webhook_enabled.webhook_id;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'webhook % does not exist', webhook_id
			USING ERRCODE = 'undefined_object', HINT = 'List webhooks with SELECT * FROM xprov.webhooks.';
	END IF;
	IF enabled THEN
		PERFORM xprov._wake_webhooks();
	END IF;
END
$$;

CREATE FUNCTION xprov.retry_webhook_delivery(delivery_id bigint)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	d xprov.webhook_delivery;
BEGIN
	IF delivery_id IS NULL THEN
		RAISE EXCEPTION 'delivery_id must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	PERFORM xprov._require_context();
	SELECT * INTO d FROM xprov.webhook_delivery x WHERE x.id = delivery_id FOR UPDATE;
	IF NOT FOUND OR NOT xprov._tenant_visible(d.tenant_id) THEN
		RAISE EXCEPTION 'webhook delivery % does not exist', delivery_id
			USING ERRCODE = 'undefined_object', HINT = 'List deliveries with SELECT * FROM xprov.webhook_deliveries.';
	END IF;
	IF d.status <> 'x' THEN
		RAISE EXCEPTION 'webhook delivery % is not dead-lettered', delivery_id
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = format('It is %s.', CASE d.status WHEN 'p' THEN 'pending' ELSE 'delivered' END);
	END IF;
	-- sent again after the webhook's pending deliveries that are older
	UPDATE xprov.webhook_delivery x
	   SET status = 'p', attempts = 0, next_attempt_at = clock_timestamp(), last_error = NULL,
		   last_http_status = NULL
	 WHERE x.id = d.id;
	UPDATE xprov.webhook_cursor c SET scan_from = least(c.scan_from, d.id - 1) WHERE c.webhook_id = d.webhook_id;
	PERFORM xprov._wake_webhooks();
END
$$;

CREATE FUNCTION xprov.purge_webhook_deliveries(older_than interval DEFAULT '7 days')
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	removed bigint;
BEGIN
	DELETE FROM xprov.webhook_delivery d
	 WHERE d.status = 'd' AND d.delivered_at < xprov._retention_cutoff(older_than);
	GET DIAGNOSTICS removed = ROW_COUNT;
	RETURN removed;
END
$$;

-- Events -------------------------------------------------------------------------

CREATE FUNCTION xprov._wake_webhooks()
RETURNS void
AS 'MODULE_PATHNAME', 'xprov_wake_webhooks'
LANGUAGE C VOLATILE;

-- One delivery per event and webhook of the event's tenant subscribed to
-- its type (disabled ones included: they keep their events for when they
-- are enabled), in the order of the events.  events: a JSON array of
-- {tenant_id, event_type, payload}.
CREATE FUNCTION xprov._webhook_emit(events jsonb)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	WITH e AS MATERIALIZED (
		SELECT x.tenant_id, x.event_type, x.payload, x.ord, gen_random_uuid() AS event_id
		  FROM ROWS FROM (jsonb_to_recordset(events) AS (tenant_id uuid, event_type text, payload jsonb))
			   WITH ORDINALITY AS x(tenant_id, event_type, payload, ord)
	)
	INSERT INTO xprov.webhook_delivery (webhook_id, tenant_id, event_id, event_type, payload)
	SELECT w.id, e.tenant_id, e.event_id, e.event_type, e.payload
	  FROM e
	  JOIN xprov.webhook w ON w.tenant_id = e.tenant_id AND e.event_type = ANY (w.events)
	 ORDER BY e.ord, w.id;
	IF FOUND THEN
		PERFORM xprov._wake_webhooks();
	END IF;
END
$$;

-- Operation events, from the statement that recorded the outcomes: one
-- INSERT ... SELECT over the transition table, without going through
-- _webhook_emit's JSON (a quarter of a subscribed drain's time).  The cheap
-- check first: without webhooks that is all a recording statement pays.
-- Every documented key is always in the payload (null when empty).
CREATE FUNCTION xprov._webhook_results()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM xprov.webhook) THEN
		RETURN NULL;
	END IF;
	INSERT INTO xprov.webhook_delivery (webhook_id, tenant_id, event_id, event_type, payload)
	SELECT w.id, e.tenant_id, e.event_id, e.event_type, e.payload
	  FROM (SELECT r.tenant_id, r.op_id, gen_random_uuid() AS event_id,
				   CASE r.status WHEN 'c' THEN 'operation.completed' ELSE 'operation.skipped' END AS event_type,
				   jsonb_build_object('operation_id', r.op_id, 'connector_id', r.connector_id,
									  'object_class', o.object_class, 'operation_type', o.operation_type,
									  'identity_id', o.identity_id, 'target_uid', coalesce(r.target_uid, o.target_uid),
									  'attempts', r.attempts)
				   || CASE WHEN r.status = 's' THEN jsonb_build_object('reason', r.reason) ELSE '{}' END AS payload
			  FROM new_results r
			  JOIN xprov.op o ON o.id = r.op_id
			 WHERE r.status IN ('c', 's')) e
	  JOIN xprov.webhook w ON w.tenant_id = e.tenant_id AND e.event_type = ANY (w.events)
	 ORDER BY e.op_id, w.id;
	IF FOUND THEN
		PERFORM xprov._wake_webhooks();
	END IF;
	RETURN NULL;
END
$$;
CREATE TRIGGER webhook_events AFTER INSERT ON xprov.op_result
	REFERENCING NEW TABLE AS new_results
	FOR EACH STATEMENT EXECUTE FUNCTION xprov._webhook_results();

CREATE FUNCTION xprov._webhook_failures()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM xprov.webhook) THEN
		RETURN NULL;
	END IF;
	INSERT INTO xprov.webhook_delivery (webhook_id, tenant_id, event_id, event_type, payload)
	SELECT w.id, e.tenant_id, e.event_id, e.event_type, e.payload
	  FROM (SELECT o.tenant_id, f.op_id, f.attempt, gen_random_uuid() AS event_id,
				   CASE f.outcome WHEN 'd' THEN 'operation.dead_lettered' ELSE 'operation.failed' END AS event_type,
				   jsonb_build_object('operation_id', f.op_id, 'connector_id', o.connector_id,
									  'object_class', o.object_class, 'operation_type', o.operation_type,
									  'identity_id', o.identity_id, 'target_uid', o.target_uid,
									  'attempt', f.attempt, 'http_status', f.http_status, 'error', f.error) AS payload
			  FROM new_failures f
			  JOIN xprov.op o ON o.id = f.op_id
			 WHERE f.outcome IN ('f', 'e', 'd')) e
	  JOIN xprov.webhook w ON w.tenant_id = e.tenant_id AND e.event_type = ANY (w.events)
	 ORDER BY e.op_id, e.attempt, w.id;
	IF FOUND THEN
		PERFORM xprov._wake_webhooks();
	END IF;
	RETURN NULL;
END
$$;
CREATE TRIGGER webhook_events AFTER INSERT ON xprov.op_failure
	REFERENCING NEW TABLE AS new_failures
	FOR EACH STATEMENT EXECUTE FUNCTION xprov._webhook_failures();

CREATE FUNCTION xprov._webhook_run_event()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM xprov._webhook_emit(jsonb_build_array(jsonb_build_object(
		'tenant_id', NEW.tenant_id, 'event_type', 'reconciliation.' || NEW.status,
		'payload', jsonb_build_object('run_id', NEW.id, 'connector_id', NEW.connector_id,
									  'object_class', NEW.object_class, 'mode', NEW.mode,
									  -- as xprov.reconciliation_runs shows them
									  'statistics', (SELECT r.statistics FROM xprov.reconciliation_runs r
													  WHERE r.id = NEW.id)))));
	RETURN NULL;
END
$$;
CREATE TRIGGER webhook_events AFTER UPDATE OF status ON xprov.reconciliation_run
	FOR EACH ROW WHEN (NEW.status IN ('completed', 'paused') AND OLD.status IS DISTINCT FROM NEW.status)
	EXECUTE FUNCTION xprov._webhook_run_event();

CREATE FUNCTION xprov._webhook_case_event()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM xprov._webhook_emit(jsonb_build_array(jsonb_build_object(
		'tenant_id', NEW.tenant_id, 'event_type', 'correlation.case_opened',
		'payload', jsonb_build_object(
			'case_id', NEW.id, 'connector_id', NEW.connector_id, 'object_class', NEW.object_class,
			'origin', NEW.origin, 'situation', NEW.situation, 'identity_id', NEW.identity_id,
			'target_uid', NEW.target_uid, 'operation_id', NEW.op_id))));
	RETURN NULL;
END
$$;
CREATE TRIGGER webhook_events AFTER INSERT ON xprov.correlation_case
	FOR EACH ROW EXECUTE FUNCTION xprov._webhook_case_event();

-- The sender's steps ---------------------------------------------------------------

-- The deliveries to send now: each webhook's oldest pending one, if it is
-- due, its webhook enabled and not busy (in_flight: webhooks with a request
-- out), and every transaction that could still add an earlier one has
-- ended (so a long-running writing transaction holds deliveries back until
-- it ends).  Also returns, in a last row with only next_at, when to look
-- again (NULL: when woken).
CREATE FUNCTION xprov._webhook_due(max_deliveries integer, in_flight uuid[])
RETURNS TABLE (delivery_id bigint, webhook_id uuid, url text, secret text, event_type text, body text,
			   next_at timestamptz)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	-- PL/pgSQL, not SQL: its statement's plan is kept between calls, and the
	-- sender calls it for every delivery
	RETURN QUERY
	WITH heads AS (
		SELECT w.id AS webhook_id, w.url, w.secret, h.*
		  FROM xprov.webhook w
		 CROSS JOIN LATERAL (SELECT d.id, d.event_id, d.event_type, d.tenant_id, d.payload, d.created_at,
									d.next_attempt_at, d.xid
							   FROM xprov.webhook_delivery d
							  WHERE d.webhook_id = w.id AND d.status = 'p'
								AND d.id > coalesce((SELECT c.scan_from FROM xprov.webhook_cursor c
													  WHERE c.webhook_id = w.id), 0)
							  ORDER BY d.id LIMIT 1) h
		 WHERE w.enabled AND w.id <> ALL (in_flight)
	), due AS (
		SELECT * FROM heads
		 WHERE next_attempt_at <= clock_timestamp()
		   AND xid < pg_snapshot_xmin(pg_current_snapshot())
		 ORDER BY id
		 LIMIT max_deliveries
	)
	SELECT d.id, d.webhook_id, d.url, d.secret, d.event_type,
		   jsonb_build_object('id', d.event_id, 'type', d.event_type,
							  'time', to_char(d.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
							  'tenant_id', d.tenant_id, 'data', d.payload)::text,
		   NULL::timestamptz
	  FROM due d
	UNION ALL
	SELECT NULL, NULL, NULL, NULL, NULL, NULL,
		   least((SELECT min(h.next_attempt_at) FROM heads h WHERE h.next_attempt_at > clock_timestamp()),
				 -- due, but an older transaction may still add an earlier delivery: look again soon
				 (SELECT clock_timestamp() + interval '100 milliseconds' FROM heads h
				   WHERE h.next_attempt_at <= clock_timestamp()
					 AND h.xid >= pg_snapshot_xmin(pg_current_snapshot()) LIMIT 1));
END
$$;

-- What happened to sent deliveries: http_status 2xx delivered, anything
-- else (0: no response) a failed attempt, retried after
-- retry_base * 2^(attempts - 1) (capped, jittered), or dead-lettered after
-- max_attempts.
CREATE FUNCTION xprov._webhook_record(delivery_ids bigint[], http_statuses integer[], errors text[],
									  max_attempts integer, retry_base_ms integer, retry_max_ms integer)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	ok boolean;
	hook uuid;
	final "char";
BEGIN
	-- one row by its key at a time: a join with the array gets planned as a
	-- scan of the whole outbox, and the sender records after every answer
	FOR i IN 1 .. coalesce(cardinality(delivery_ids), 0) LOOP
		ok := http_statuses[i] BETWEEN 200 AND 299;
		UPDATE xprov.webhook_delivery d
		   SET attempts = d.attempts + 1,
			   last_http_status = nullif(http_statuses[i], 0),
			   last_error = CASE WHEN ok THEN NULL ELSE errors[i] END,
			   status = CASE WHEN ok THEN 'd' WHEN d.attempts + 1 >= max_attempts THEN 'x' ELSE 'p' END,
			   delivered_at = CASE WHEN ok THEN clock_timestamp() END,
			   next_attempt_at = clock_timestamp()
				   + least(retry_max_ms, retry_base_ms * power(2, least(d.attempts, 30)))
					 * (0.75 + random() * 0.5) * interval '1 millisecond'
		 WHERE d.id = delivery_ids[i] AND d.status = 'p'
		 RETURNING d.webhook_id, d.status INTO hook, final;
		-- a finished head moves the cursor past it, unless a retried dead
		-- letter waits below (retry_webhook_delivery moved the cursor back)
		IF final IN ('d', 'x') THEN
			INSERT INTO xprov.webhook_cursor AS c (webhook_id, scan_from) VALUES (hook, delivery_ids[i])
			ON CONFLICT (webhook_id) DO UPDATE SET scan_from = greatest(c.scan_from, excluded.scan_from)
			 WHERE NOT EXISTS (SELECT 1 FROM xprov.webhook_delivery p
								WHERE p.webhook_id = c.webhook_id AND p.status = 'p'
								  AND p.id > c.scan_from AND p.id < excluded.scan_from);
		END IF;
	END LOOP;
END
$$;

-- Webhooks: roles, row-level security
ALTER TABLE xprov.webhook ENABLE ROW LEVEL SECURITY;
CREATE POLICY every_tenant ON xprov.webhook TO xprov_admin USING (true) WITH CHECK (true);
CREATE POLICY tenant_in_context ON xprov.webhook TO xprov_app
	USING (tenant_id = (SELECT xprov._session_tenant())) WITH CHECK (tenant_id = (SELECT xprov._session_tenant()));
ALTER TABLE xprov.webhook_cursor ENABLE ROW LEVEL SECURITY;
CREATE POLICY every_tenant ON xprov.webhook_cursor TO xprov_admin USING (true) WITH CHECK (true);
ALTER TABLE xprov.webhook_delivery ENABLE ROW LEVEL SECURITY;
CREATE POLICY every_tenant ON xprov.webhook_delivery TO xprov_admin USING (true) WITH CHECK (true);
CREATE POLICY tenant_in_context ON xprov.webhook_delivery TO xprov_app
	USING (tenant_id = (SELECT xprov._session_tenant())) WITH CHECK (tenant_id = (SELECT xprov._session_tenant()));

REVOKE ALL ON FUNCTION xprov.add_webhook(uuid, text, text[], text), xprov.set_webhook_enabled(uuid, boolean),
	xprov.retry_webhook_delivery(bigint), xprov.purge_webhook_deliveries(interval),
	xprov._webhook_event_types(), xprov._webhook_emit(jsonb), xprov._wake_webhooks(),
	xprov._webhook_results(), xprov._webhook_failures(), xprov._webhook_run_event(),
	xprov._webhook_case_event(), xprov._webhook_due(integer, uuid[]),
	xprov._webhook_record(bigint[], integer[], text[], integer, integer, integer)
	FROM PUBLIC;
GRANT EXECUTE ON FUNCTION xprov.retry_webhook_delivery(bigint) TO xprov_operator;
GRANT EXECUTE ON FUNCTION xprov.add_webhook(uuid, text, text[], text), xprov.set_webhook_enabled(uuid, boolean),
	xprov.purge_webhook_deliveries(interval)
	TO xprov_admin;
-- the secret column is granted to nobody
GRANT SELECT (id, tenant_id, url, events, enabled, created_at, updated_at) ON xprov.webhook TO xprov_operator;
GRANT SELECT ON xprov.webhook_delivery, xprov.webhooks, xprov.webhook_deliveries TO xprov_operator;


-- Hook histories ---------------------------------------------------------------

-- A hooked operation stores what its hooks did in the statement that records
-- its outcome, so the history is kept compact (src/hook_history.h: about a
-- quarter of its JSON); the attempt history shows it as JSON, as before.
-- Histories written as JSON (by 0.1.0, or with an error message) read as
-- they are.
CREATE FUNCTION xprov._hook_history(history text)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'xprov_hook_history'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
REVOKE ALL ON FUNCTION xprov._hook_history(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION xprov._hook_history(text) TO xprov_app;

CREATE OR REPLACE VIEW xprov.operation_attempts WITH (security_invoker = true) AS
	SELECT f.op_id AS operation_id, o.tenant_id, o.connector_id, f.attempt, f.started_at,
		   f.finished_at,
		   CASE f.outcome WHEN 'f' THEN 'failed' WHEN 'd' THEN 'dead_letter'
						  WHEN 'e' THEN 'lease_expired' WHEN 'p' THEN 'connector_unavailable'
						  WHEN 'r' THEN 'worker_restarted' WHEN 'c' THEN 'parked' END AS outcome,
		   f.http_status, f.error, f.finished_at - f.started_at AS duration,
		   xprov._hook_history(f.hooks) AS hooks
	  FROM xprov.op_failure f
	  JOIN xprov.op o ON o.id = f.op_id
	UNION ALL
	SELECT r.op_id, r.tenant_id, r.connector_id, r.attempts, r.started_at, r.finished_at,
		   CASE r.status WHEN 'c' THEN 'completed' ELSE 'skipped' END, NULL::integer,
		   CASE r.status WHEN 's' THEN r.reason END, r.finished_at - r.started_at,
		   xprov._hook_history(r.hooks)
	  FROM xprov.op_result r
	 WHERE (r.status = 'c' AND r.attempts > 0) OR r.hooks IS NOT NULL;

-- An enqueue looks its subject up by this key whenever its backend has not
-- met the subject yet.  With the subject first, the probe decides on one
-- column at almost every entry it passes instead of comparing all three
-- (the connector and class are mostly equal).  The library finds the key
-- by its columns in either order.
ALTER TABLE xprov.subject
	DROP CONSTRAINT subject_connector_id_object_class_subject_key,
	ADD UNIQUE (subject, connector_id, object_class);

-- The log and its outcomes are analyzed at every 2 % of growth, so that the
-- queue's generic plans follow their size.  Nothing filters on their
-- payloads, whose statistics were the dearer half of that work (ANALYZE
-- sorts a sample of each column; jsonb compares slowly).
ALTER TABLE xprov.op ALTER COLUMN attributes SET STATISTICS 0;
ALTER TABLE xprov.op_result
	ALTER COLUMN result SET STATISTICS 0,
	ALTER COLUMN hooks SET STATISTICS 0;

-- An enqueue keeps the tenant and kind of each connector it has seen
-- (src/connector_cache.h).  A committed change of connectors voids what
-- every backend kept, and so does a new or updated extension (a connector
-- table made afresh by DROP and CREATE EXTENSION has other rows).
CREATE FUNCTION xprov._connectors_changed()
RETURNS trigger
LANGUAGE c
AS 'MODULE_PATHNAME', 'xprov_connectors_changed';
REVOKE ALL ON FUNCTION xprov._connectors_changed() FROM PUBLIC;

CREATE TRIGGER connectors_changed
	AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON xprov.connector
	FOR EACH STATEMENT EXECUTE FUNCTION xprov._connectors_changed();

-- Test helper: what the worker reads from a hook's answer (src/json_members.c).
CREATE FUNCTION xprov._hook_answer(script text, context jsonb)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'xprov_hook_answer'
LANGUAGE C VOLATILE;
REVOKE ALL ON FUNCTION xprov._hook_answer(text, jsonb) FROM PUBLIC;

SELECT xprov._hooks_changed();
