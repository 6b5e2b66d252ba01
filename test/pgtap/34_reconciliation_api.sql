-- Reconciliation, the SQL API and the set-based diff (sql/xprov--0.1.0.sql,
-- "Reconciliation (issue 6)"): xprov.reconcile / reconcile_preview, wait_run,
-- cancel_run, approve_run, set_reaction, set_reconciliation_threshold, the
-- views reactions, reconciliation_thresholds, reconciliation_runs and
-- discrepancies, with every refusal (tenant context included); then the
-- reconciler's steps called by hand inside this one transaction: listing
-- pages (_recon_page: bad pages, duplicates, SCIM paging, the second pass),
-- the diff (_recon_diff: every discrepancy type) and the reactions
-- (_recon_react: preview, the mass-change pause, approval, and what each
-- action does to shadows, the queue and correlation cases).  The background
-- reconciler never sees these uncommitted runs; its own execution of runs
-- against real targets is a process test.
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS xprov;
CREATE EXTENSION IF NOT EXISTS pg_trgm;

BEGIN;
SELECT plan(271);
\ir common.psql

-- ---------------------------------------------------------------- helpers
-- the session's tenant context: a tenant's name, or '' / any other text as is
CREATE FUNCTION pg_temp.ctx(p_tenant text) RETURNS void LANGUAGE sql AS $$
    SELECT set_config('xprov.tenant_id',
                      coalesce((SELECT id::text FROM _ids WHERE name = p_tenant), p_tenant), true)
$$;

-- run p_sql; 'OK' or '<SQLSTATE> <HINT>'
CREATE FUNCTION pg_temp.hint(p_sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE h text;
BEGIN
    EXECUTE p_sql;
    RETURN 'OK';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS h = PG_EXCEPTION_HINT;
    RETURN SQLSTATE || ' ' || coalesce(h, '');
END $$;

-- a run of connector p_conn, registered as p_name
CREATE FUNCTION pg_temp.run(p_name text, p_conn text, p_mode text DEFAULT 'apply', p_class text DEFAULT 'user')
RETURNS uuid LANGUAGE sql AS $$
    SELECT pg_temp.put(p_name, xprov.reconcile(pg_temp.id(p_conn), p_class, p_mode))
$$;

CREATE FUNCTION pg_temp.page(p_run text, p_body jsonb) RETURNS text LANGUAGE sql AS $$
    SELECT xprov._recon_page(pg_temp.id(p_run), p_body::text)
$$;

-- a SCIM ListResponse page
CREATE FUNCTION pg_temp.scim(p_total int, p_start int, p_resources jsonb) RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_build_object('schemas', jsonb_build_array('urn:ietf:params:scim:api:messages:2.0:ListResponse'),
                              'totalResults', p_total, 'startIndex', p_start,
                              'itemsPerPage', jsonb_array_length(p_resources), 'Resources', p_resources)
$$;

-- SCIM accounts, one per uid: its id and userName
CREATE FUNCTION pg_temp.ids(VARIADIC p_uids text[]) RETURNS jsonb LANGUAGE sql AS $$
    SELECT coalesce(jsonb_agg(jsonb_build_object('id', u, 'userName', u)), '[]') FROM unnest(p_uids) u
$$;

-- the diff step; its temp tables go ON COMMIT, so they are dropped here to
-- let a later diff run in this same transaction
CREATE FUNCTION pg_temp.diff(p_run text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM xprov._recon_diff(pg_temp.id(p_run));
    DROP TABLE IF EXISTS pg_temp.recon_shadow, pg_temp.recon_pair, pg_temp.recon_unowned,
                         pg_temp.recon_score, pg_temp.recon_all_unowned;
END $$;

CREATE FUNCTION pg_temp.react(p_run text) RETURNS text LANGUAGE sql AS $$
    SELECT xprov._recon_react(pg_temp.id(p_run))
$$;

CREATE FUNCTION pg_temp.runv(p_run text) RETURNS xprov.reconciliation_runs LANGUAGE sql AS $$
    SELECT * FROM xprov.reconciliation_runs WHERE id = pg_temp.id(p_run)
$$;

-- a shadow registered as p_name: live, created a day ago, owned by p_owner (a name) or nobody
CREATE FUNCTION pg_temp.shadow(p_name text, p_conn text, p_uid text, p_owner text, p_expected jsonb,
                               p_lane bigint DEFAULT NULL, p_lifecycle text DEFAULT 'live',
                               p_class text DEFAULT 'user')
RETURNS uuid LANGUAGE sql AS $$
    INSERT INTO xprov.shadow (id, tenant_id, connector_id, object_class, lane_id, identity_id, target_uid,
                              lifecycle, situation, expected, created_at, dead_at)
    SELECT pg_temp.put(p_name, gen_random_uuid()), c.tenant_id, c.id, p_class, p_lane,
           CASE WHEN p_owner IS NOT NULL THEN pg_temp.id(p_owner) END, p_uid, p_lifecycle,
           CASE WHEN p_owner IS NOT NULL THEN 'linked' END, p_expected, now() - interval '1 day',
           CASE WHEN p_lifecycle IN ('corpse', 'tombstone') THEN now() END
      FROM xprov.connector c WHERE c.id = pg_temp.id(p_conn)
    RETURNING id
$$;

-- a lane with an unfinished operation (subject t:<uid>)
CREATE FUNCTION pg_temp.busy_lane(p_conn text, p_uid text) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    PERFORM xprov.enqueue(c.tenant_id, c.id, NULL, 'update', 'user', '{}', p_uid)
       FROM xprov.connector c WHERE c.id = pg_temp.id(p_conn);
    RETURN (SELECT lane_id FROM xprov.subject WHERE connector_id = pg_temp.id(p_conn) AND subject = 't:' || p_uid);
END $$;

-- the idle lane of identity p_who's subject (its one operation cancelled)
CREATE FUNCTION pg_temp.idle_lane(p_conn text, p_who text) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    PERFORM xprov.cancel(xprov.enqueue(c.tenant_id, c.id, pg_temp.id(p_who), 'create', 'user', '{}'))
       FROM xprov.connector c WHERE c.id = pg_temp.id(p_conn);
    RETURN (SELECT lane_id FROM xprov.subject
             WHERE connector_id = pg_temp.id(p_conn) AND subject = 'i:' || pg_temp.id(p_who));
END $$;

-- a run's discrepancies, one line each: "type uid owner action status"
CREATE FUNCTION pg_temp.disc(p_run text) RETURNS text LANGUAGE sql AS $$
    SELECT string_agg(concat_ws(' ', type, target_uid, coalesce(pg_temp.nm(identity_id), '-'), action, status),
                      E'\n' ORDER BY type, target_uid)
      FROM xprov.discrepancies WHERE run_id = pg_temp.id(p_run)
$$;

SELECT FROM pg_temp.tenant('t1');
SELECT FROM pg_temp.tenant('t2');
SELECT FROM pg_temp.conn('cs', 't1', 'scim2');
SELECT FROM pg_temp.conn('cr', 't1', 'rest');
SELECT FROM pg_temp.conn('cn', 't1', 'noop');
SELECT FROM pg_temp.conn('ce', 't1', 'external');
SELECT FROM pg_temp.conn('c2', 't2', 'scim2');

-- ---------------------------------------------------------------- contract
SELECT has_function('xprov', 'reconcile', ARRAY['uuid', 'text', 'text'], 'reconcile(connector, object_class, mode) exists');
SELECT function_returns('xprov', 'reconcile', ARRAY['uuid', 'text', 'text'], 'uuid', 'reconcile returns the run id');
SELECT has_function('xprov', 'reconcile_preview', ARRAY['uuid', 'text'], 'reconcile_preview exists');
SELECT function_returns('xprov', 'wait_run', ARRAY['uuid', 'interval'], 'text', 'wait_run(run, timeout) returns the status');
SELECT has_function('xprov', 'cancel_run', ARRAY['uuid'], 'cancel_run exists');
SELECT has_function('xprov', 'approve_run', ARRAY['uuid'], 'approve_run exists');
SELECT has_function('xprov', 'set_reaction', ARRAY['uuid', 'text', 'text'], 'set_reaction exists');
SELECT has_function('xprov', 'set_reconciliation_threshold', ARRAY['uuid', 'integer', 'double precision'],
                    'set_reconciliation_threshold exists');
SELECT columns_are('xprov', 'reconciliation_runs', ARRAY['id', 'tenant_id', 'connector_id', 'connector', 'object_class',
       'mode', 'status', 'phase', 'processed', 'total', 'statistics', 'error', 'cancel_requested', 'approved_by',
       'approved_at', 'requested_by', 'created_at', 'started_at', 'finished_at', 'duration'],
       'xprov.reconciliation_runs has its columns');
SELECT columns_are('xprov', 'discrepancies', ARRAY['id', 'run_id', 'tenant_id', 'connector_id', 'object_class', 'type',
       'shadow_id', 'target_uid', 'identity_id', 'differences', 'candidates', 'action', 'status', 'operation_id',
       'operation_status', 'case_id', 'attributes', 'created_at'], 'xprov.discrepancies has its columns');
SELECT columns_are('xprov', 'reactions', ARRAY['tenant_id', 'connector_id', 'discrepancy_type', 'action', 'is_default',
       'allowed_actions'], 'xprov.reactions has its columns');
SELECT columns_are('xprov', 'reconciliation_thresholds', ARRAY['tenant_id', 'connector_id', 'max_actions', 'max_percent'],
       'xprov.reconciliation_thresholds has its columns');

-- ---------------------------------------------------------------- reconcile: refusals
SELECT is(current_setting('xprov.tenant_id'), '', 'a new session has no tenant context');
SELECT throws_ok($$SELECT xprov.reconcile(pg_temp.id('cs'))$$, '42501', 'no tenant context: xprov.tenant_id is not set',
                 'reconcile without a tenant context is refused');
SELECT is(pg_temp.hint($$SELECT xprov.reconcile(pg_temp.id('cs'))$$),
          format('42501 SET xprov.tenant_id = %L (the connector''s tenant) first.', pg_temp.id('t1')),
          'the hint names the connector''s tenant');
SELECT throws_ok($$SELECT xprov.reconcile_preview(pg_temp.id('cs'))$$, '42501', NULL,
                 'reconcile_preview without a tenant context is refused');
SELECT FROM pg_temp.ctx('t2');
SELECT throws_ok($$SELECT xprov.reconcile(pg_temp.id('cs'))$$, '42501', NULL, 'another tenant''s context is refused');
SELECT is(pg_temp.hint($$SELECT xprov.reconcile(pg_temp.id('cs'))$$),
          '42501 Set xprov.tenant_id to the connector''s tenant.', 'with a hint');
-- xprov.tenant_id itself refuses anything that is not a UUID (22023), so a malformed
-- context never reaches a function
SELECT throws_ok($$SELECT pg_temp.ctx('not-a-uuid')$$, '22023', NULL, 'a malformed tenant id is refused (22023)');
SELECT throws_ok($$SELECT pg_temp.ctx(left(pg_temp.id('t1')::text, 35))$$, '22023', NULL, 'a truncated tenant id is refused');
SELECT throws_ok($$SELECT pg_temp.ctx(pg_temp.id('t1') || ''' OR true --')$$, '22023', NULL,
                 'a tenant id with trailing SQL is refused');
SELECT FROM pg_temp.ctx('');
SELECT throws_ok($$SELECT xprov.reconcile(pg_temp.id('cs'))$$, '42501', NULL, 'an empty tenant context is refused');
SELECT FROM pg_temp.ctx(upper(pg_temp.id('t1')::text));
SELECT lives_ok($$SELECT xprov._tenant_connector(pg_temp.id('cs'))$$, 'the tenant id may be written in upper case ...');
SELECT throws_ok($$SELECT xprov._tenant_connector(pg_temp.id('c2'))$$, '42501', NULL, '... and still names one tenant only');
SELECT FROM pg_temp.ctx('t1');

SELECT throws_ok($$SELECT xprov.reconcile(NULL)$$, '22004', NULL, 'a NULL connector is refused');
SELECT throws_ok($$SELECT xprov.reconcile(gen_random_uuid())$$, '42704', NULL, 'an unknown connector is refused (undefined_object)');
SELECT throws_ok($$SELECT xprov.reconcile(pg_temp.id('cs'), NULL)$$, '22023', NULL, 'a NULL object class is refused');
SELECT throws_ok($$SELECT xprov.reconcile(pg_temp.id('cs'), '')$$, '22023', NULL, 'an empty object class is refused');
SELECT throws_ok($$SELECT xprov.reconcile(pg_temp.id('cs'), '   ')$$, '22023', NULL, 'a blank object class is refused');
SELECT throws_ok($$SELECT xprov.reconcile(pg_temp.id('cs'), 'user', NULL)$$, '22023', NULL, 'a NULL mode is refused');
SELECT throws_ok($$SELECT xprov.reconcile(pg_temp.id('cs'), 'user', 'dry-run')$$, '22023',
                 'unknown reconciliation mode "dry-run"', 'an unknown mode is refused');
SELECT is(pg_temp.hint($$SELECT xprov.reconcile(pg_temp.id('cs'), 'user', 'APPLY')$$), '22023 Use apply or preview.',
          'modes are case-sensitive; the hint lists them');
SELECT throws_ok($$SELECT xprov.reconcile(pg_temp.id('cn'))$$, '0A000', NULL, 'a noop connector cannot be reconciled');
SELECT throws_ok($$SELECT xprov.reconcile_preview(pg_temp.id('ce'))$$, '0A000', NULL, 'nor an external one');
SELECT is((SELECT count(*) FROM xprov.reconciliation_run WHERE tenant_id = pg_temp.id('t1')), 0::bigint,
          'no refused call left a run behind');

-- ---------------------------------------------------------------- reconcile: the run
SELECT lives_ok($$SELECT pg_temp.run('r1', 'cs')$$, 'reconcile(scim2 connector) with the defaults');
SELECT is((SELECT concat_ws(' ', pg_temp.nm(tenant_id), pg_temp.nm(connector_id), object_class, mode, status, phase,
                            processed, coalesce(total::text, '-'), coalesce(error, '-'), cancel_requested,
                            requested_by = current_user, started_at IS NULL, finished_at IS NULL, approved_at IS NULL)
             FROM pg_temp.runv('r1')),
          't1 cs user apply pending operation_completion 0 - - f t t t t',
          'the run: pending, apply, in operation_completion, nothing processed, requested by the caller');
SELECT is((SELECT statistics FROM pg_temp.runv('r1')),
          '{"accounts_total": null, "accounts_processed": 0, "pages": 0, "listing_passes": 1, "restarts": 0}'::jsonb,
          'its statistics start at zero');
SELECT is((SELECT connector FROM pg_temp.runv('r1')), (SELECT name FROM xprov.connectors WHERE id = pg_temp.id('cs')),
          'the view names the connector');
SELECT throws_ok($$SELECT xprov.reconcile(pg_temp.id('cs'))$$, '55006', NULL,
                 'a second run of the same connector and class is refused (object_in_use)');
SELECT throws_ok($$SELECT xprov.reconcile_preview(pg_temp.id('cs'), 'user')$$, '55006', NULL, 'a preview as well');
SELECT lives_ok($$SELECT pg_temp.run('r1g', 'cs', 'preview', 'group')$$, 'another object class of the same connector is allowed');
SELECT lives_ok($$SELECT pg_temp.put('rr', xprov.reconcile_preview(pg_temp.id('cr')))$$, 'reconcile_preview of a rest connector');
SELECT is((SELECT mode || ' ' || object_class || ' ' || status FROM pg_temp.runv('rr')), 'preview user pending',
          'reconcile_preview records a preview of users');

-- ---------------------------------------------------------------- wait_run, cancel_run, approve_run
SELECT throws_ok($$SELECT xprov.wait_run(NULL)$$, '22004', NULL, 'wait_run(NULL) is refused');
SELECT throws_ok($$SELECT xprov.wait_run(gen_random_uuid(), '10 ms')$$, '42704', NULL, 'wait_run of an unknown run (undefined_object)');
SELECT is(xprov.wait_run(pg_temp.id('r1'), '20 ms'), 'pending', 'wait_run returns the current status when the timeout passes');
SELECT is(xprov.wait_run(pg_temp.id('r1'), '-1 second'), 'pending', 'a negative timeout looks once');

SELECT throws_ok($$SELECT xprov.cancel_run(NULL)$$, '22004', NULL, 'cancel_run(NULL) is refused');
SELECT throws_ok($$SELECT xprov.cancel_run(gen_random_uuid())$$, '42704', NULL, 'cancel_run of an unknown run');
SELECT throws_ok($$SELECT xprov.approve_run(NULL)$$, '22004', NULL, 'approve_run(NULL) is refused');
SELECT throws_ok($$SELECT xprov.approve_run(gen_random_uuid())$$, '42704', NULL, 'approve_run of an unknown run');
SELECT FROM pg_temp.ctx('');
SELECT throws_ok($$SELECT xprov.cancel_run(pg_temp.id('r1'))$$, '42501', NULL, 'cancel_run needs the tenant context');
SELECT throws_ok($$SELECT xprov.approve_run(pg_temp.id('r1'))$$, '42501', NULL, 'approve_run needs the tenant context');
SELECT FROM pg_temp.ctx('t2');
SELECT throws_ok($$SELECT xprov.cancel_run(pg_temp.id('r1'))$$, '42501', NULL, 'cancel_run in another tenant''s context is refused');
SELECT throws_ok($$SELECT xprov.approve_run(pg_temp.id('r1'))$$, '42501', NULL, 'approve_run in another tenant''s context is refused');
SELECT FROM pg_temp.ctx('t1');
SELECT is((SELECT status FROM pg_temp.runv('r1')), 'pending', 'the refused calls left the run as it was');

SELECT throws_ok($$SELECT xprov.approve_run(pg_temp.id('r1'))$$, '55000', NULL, 'approve_run of a pending run is refused');
SELECT is(pg_temp.hint($$SELECT xprov.approve_run(pg_temp.id('r1'))$$),
          '55000 Only a run paused by its mass-change threshold waits for approval.', 'the hint says which runs wait');
SELECT lives_ok($$SELECT xprov.cancel_run(pg_temp.id('r1'))$$, 'cancel_run of a pending run');
SELECT is((SELECT status || ' ' || (finished_at IS NOT NULL) || ' ' || phase FROM pg_temp.runv('r1')),
          'cancelled true operation_completion', 'it is cancelled at once, finished, in the phase it had reached');
SELECT ok((SELECT statistics ? 'duration_ms' FROM pg_temp.runv('r1')), 'the final statistics are recorded');
CREATE TEMP TABLE t0 AS SELECT clock_timestamp() AS t;
SELECT is(xprov.wait_run(pg_temp.id('r1'), '1 minute'), 'cancelled', 'wait_run returns cancelled ...');
SELECT ok(clock_timestamp() - (SELECT t FROM t0) < interval '1 second', '... at once');
SELECT throws_ok($$SELECT xprov.cancel_run(pg_temp.id('r1'))$$, '55000', NULL, 'a cancelled run cannot be cancelled again');
SELECT throws_ok($$SELECT xprov.approve_run(pg_temp.id('r1'))$$, '55000', NULL, 'nor approved');
SELECT lives_ok($$SELECT pg_temp.run('r2', 'cs')$$, 'once cancelled, the connector and class can be reconciled again');
UPDATE xprov.reconciliation_run SET status = 'running', started_at = now() WHERE id = pg_temp.id('r2');
SELECT lives_ok($$SELECT xprov.cancel_run(pg_temp.id('r2'))$$, 'cancel_run of a running run');
SELECT is((SELECT status || ' ' || cancel_requested FROM pg_temp.runv('r2')), 'running true',
          'a running run is asked to stop at its next checkpoint');
SELECT is(xprov.wait_run(pg_temp.id('r2'), '10 ms'), 'running', 'and runs on meanwhile');
SELECT lives_ok($$SELECT xprov.cancel_run(pg_temp.id('r2'))$$, 'asking twice is no error');
SELECT FROM xprov._recon_finish(pg_temp.id('r2'), 'cancelled', NULL);   -- (as the reconciler would)

-- ---------------------------------------------------------------- set_reaction and xprov.reactions
SELECT FROM pg_temp.conn('cx', 't1', 'scim2');
SELECT results_eq($$SELECT discrepancy_type, action, is_default, allowed_actions FROM xprov.reactions
                     WHERE connector_id = pg_temp.id('cx') ORDER BY discrepancy_type$$,
                  $$VALUES ('collision', 'report', true, ARRAY['report', 'disable', 'delete']),
                           ('disputed', 'report', true, ARRAY['report']),
                           ('mismatch', 'report', true, ARRAY['report', 'update', 'accept']),
                           ('missing', 'report', true, ARRAY['report', 'create', 'accept']),
                           ('orphan', 'report', true, ARRAY['report', 'disable', 'delete']),
                           ('unlinked', 'report', true, ARRAY['report', 'link']),
                           ('unqualified', 'report', true, ARRAY['report', 'disable', 'delete'])$$,
                  'every connector has the seven types, all report by default, with their allowed actions');
SELECT is((SELECT count(*) FROM xprov.reactions WHERE connector_id = pg_temp.id('cn') AND is_default), 7::bigint,
          'any kind of connector is listed');
SELECT is((SELECT count(DISTINCT tenant_id) || ' ' || min(tenant_id::text) FROM xprov.reactions WHERE connector_id = pg_temp.id('cx')),
          '1 ' || pg_temp.id('t1'), 'with the connector''s tenant');

-- the allowed pairs (the contract), and every other pair of a type and an action
CREATE TEMP TABLE allowed_pairs (type text, action text);
INSERT INTO allowed_pairs VALUES
    ('missing', 'report'), ('missing', 'create'), ('missing', 'accept'),
    ('orphan', 'report'), ('orphan', 'disable'), ('orphan', 'delete'),
    ('unlinked', 'report'), ('unlinked', 'link'),
    ('disputed', 'report'),
    ('collision', 'report'), ('collision', 'disable'), ('collision', 'delete'),
    ('mismatch', 'report'), ('mismatch', 'update'), ('mismatch', 'accept'),
    ('unqualified', 'report'), ('unqualified', 'disable'), ('unqualified', 'delete');
CREATE TEMP TABLE other_pairs AS
SELECT t.type, a.action
  FROM (SELECT DISTINCT type FROM allowed_pairs) t CROSS JOIN (SELECT DISTINCT action FROM allowed_pairs) a
EXCEPT SELECT * FROM allowed_pairs;
SELECT is((SELECT array_agg(type || '/' || action ORDER BY type, action) FROM allowed_pairs
            WHERE pg_temp.outcome(format('SELECT xprov.set_reaction(%L, %L, %L)', pg_temp.id('cx'), type, action)) <> 'OK: '),
          NULL, 'all 18 allowed pairs are accepted');
SELECT is((SELECT count(*) FROM other_pairs), 31::bigint, '(31 other pairs)');
SELECT is((SELECT array_agg(type || '/' || action ORDER BY type, action) FROM other_pairs
            WHERE pg_temp.outcome(format('SELECT xprov.set_reaction(%L, %L, %L)', pg_temp.id('cs'), type, action)) !~ '^22023: '),
          NULL, 'every other pair is refused with 22023');
SELECT is((SELECT count(*) FROM xprov.reaction WHERE connector_id = pg_temp.id('cs')), 0::bigint, 'and none was stored');
SELECT throws_ok($$SELECT xprov.set_reaction(pg_temp.id('cs'), 'disputed', 'delete')$$, '22023',
                 'action "delete" does not apply to disputed accounts', 'disputed/delete is refused');
SELECT is(pg_temp.hint($$SELECT xprov.set_reaction(pg_temp.id('cs'), 'disputed', 'delete')$$), '22023 For disputed: report.',
          'the hint lists the actions allowed for disputed');
SELECT is(pg_temp.hint($$SELECT xprov.set_reaction(pg_temp.id('cs'), 'missing', 'disable')$$),
          '22023 For missing: report, create, accept.', 'missing/disable: the hint lists report, create, accept');
SELECT is(pg_temp.hint($$SELECT xprov.set_reaction(pg_temp.id('cs'), 'unlinked', 'update')$$),
          '22023 For unlinked: report, link.', 'unlinked/update: report, link');
SELECT throws_ok($$SELECT xprov.set_reaction(pg_temp.id('cs'), 'orphan', 'explode')$$, '22023', NULL, 'an unknown action is refused');
SELECT throws_ok($$SELECT xprov.set_reaction(pg_temp.id('cs'), 'orphan', 'Delete')$$, '22023', NULL, 'actions are case-sensitive');
SELECT throws_ok($$SELECT xprov.set_reaction(pg_temp.id('cs'), 'ghost', 'report')$$, '22023', 'unknown discrepancy type "ghost"',
                 'an unknown discrepancy type is refused');
SELECT is(pg_temp.hint($$SELECT xprov.set_reaction(pg_temp.id('cs'), 'Orphan', 'report')$$),
          '22023 Types are missing, orphan, unlinked, disputed, collision, mismatch and unqualified.',
          'types are case-sensitive; the hint lists them');
SELECT throws_ok($$SELECT xprov.set_reaction(NULL, 'orphan', 'report')$$, '22004', NULL, 'a NULL connector is refused');
SELECT throws_ok($$SELECT xprov.set_reaction(pg_temp.id('cs'), NULL, 'report')$$, '22004', NULL, 'a NULL type is refused');
SELECT throws_ok($$SELECT xprov.set_reaction(pg_temp.id('cs'), 'orphan', NULL)$$, '22004', NULL, 'a NULL action is refused');
SELECT throws_ok($$SELECT xprov.set_reaction(gen_random_uuid(), 'orphan', 'report')$$, '42704', NULL, 'an unknown connector is refused');
SELECT throws_ok($$SELECT xprov.set_reaction(gen_random_uuid(), 'ghost', 'explode')$$, '42704', NULL,
                 'an unknown connector is named before the type');
SELECT results_eq($$SELECT discrepancy_type, action, is_default FROM xprov.reactions
                     WHERE connector_id = pg_temp.id('cx') ORDER BY discrepancy_type$$,
                  $$VALUES ('collision', 'delete', false), ('disputed', 'report', false), ('mismatch', 'accept', false),
                           ('missing', 'accept', false), ('orphan', 'delete', false), ('unlinked', 'link', false),
                           ('unqualified', 'delete', false)$$,
                  'the view shows the last action set for each type, none a default any more');
SELECT lives_ok($$SELECT xprov.set_reaction(pg_temp.id('cx'), 'orphan', 'disable')$$, 'set_reaction again: an update');
SELECT is((SELECT string_agg(action, ',') FROM xprov.reaction WHERE connector_id = pg_temp.id('cx') AND discrepancy_type = 'orphan'),
          'disable', 'one row per connector and type, with the new action');
SELECT lives_ok($$SELECT xprov.set_reaction(pg_temp.id('cx'), 'orphan', 'report')$$, 'back to report');
SELECT is((SELECT action || ' ' || is_default FROM xprov.reactions WHERE connector_id = pg_temp.id('cx') AND discrepancy_type = 'orphan'),
          'report false', 'report set explicitly is not the default');
SELECT is((SELECT count(*) FROM xprov.reactions WHERE connector_id = pg_temp.id('cs') AND NOT is_default), 0::bigint,
          'another connector''s reactions are its own');

-- ---------------------------------------------------------------- set_reconciliation_threshold
SELECT is((SELECT max_actions || ' ' || max_percent || ' ' || pg_temp.nm(tenant_id) FROM xprov.reconciliation_thresholds
            WHERE connector_id = pg_temp.id('cx')), '1000 50 t1', 'without a row: 1000 actions and 50 %');
SELECT lives_ok($$SELECT xprov.set_reconciliation_threshold(pg_temp.id('cx'), 10, 20)$$, 'set 10 actions, 20 %');
SELECT is((SELECT max_actions || ' ' || max_percent FROM xprov.reconciliation_thresholds WHERE connector_id = pg_temp.id('cx')),
          '10 20', 'the view shows them');
SELECT lives_ok($$SELECT xprov.set_reconciliation_threshold(pg_temp.id('cx'), 5)$$, 'set 5 actions, max_percent left out');
SELECT is((SELECT max_actions || ' ' || coalesce(max_percent::text, 'off') FROM xprov.reconciliation_thresholds
            WHERE connector_id = pg_temp.id('cx')), '5 off', 'max_percent defaults to NULL: that limit is off');
SELECT lives_ok($$SELECT xprov.set_reconciliation_threshold(pg_temp.id('cx'), NULL, NULL)$$, 'both NULL');
SELECT is((SELECT coalesce(max_actions::text, 'off') || ' ' || coalesce(max_percent::text, 'off')
             FROM xprov.reconciliation_thresholds WHERE connector_id = pg_temp.id('cx')), 'off off',
          'both limits off (not the defaults)');
SELECT lives_ok($$SELECT xprov.set_reconciliation_threshold(pg_temp.id('cx'), 0, 0)$$, '0 and 0 are allowed');
SELECT lives_ok($$SELECT xprov.set_reconciliation_threshold(pg_temp.id('cx'), 2147483647, 100)$$, 'and the largest values');
SELECT is((SELECT count(*) FROM xprov.reconciliation_threshold WHERE connector_id = pg_temp.id('cx')), 1::bigint,
          'one row per connector (upsert)');
SELECT throws_ok($$SELECT xprov.set_reconciliation_threshold(pg_temp.id('cx'), -1, 50)$$, '22023', NULL, 'max_actions -1 is refused');
SELECT throws_ok($$SELECT xprov.set_reconciliation_threshold(pg_temp.id('cx'), 10, -0.5)$$, '22023', NULL, 'max_percent below 0 is refused');
SELECT throws_ok($$SELECT xprov.set_reconciliation_threshold(pg_temp.id('cx'), 10, 100.01)$$, '22023', NULL, 'max_percent above 100 is refused');
SELECT throws_ok($$SELECT xprov.set_reconciliation_threshold(pg_temp.id('cx'), 10, 'NaN')$$, '22023', NULL, 'max_percent NaN is refused');
SELECT throws_ok($$SELECT xprov.set_reconciliation_threshold(pg_temp.id('cx'), NULL, '-Infinity')$$, '22023', NULL,
                 'max_percent -Infinity is refused');
SELECT is(pg_temp.hint($$SELECT xprov.set_reconciliation_threshold(pg_temp.id('cx'), -1, NULL)$$),
          '22023 max_actions is a count >= 0, max_percent a percentage from 0 to 100; NULL turns one off.',
          'the hint gives the ranges');
SELECT throws_ok($$SELECT xprov.set_reconciliation_threshold(NULL, 10, 10)$$, '22004', NULL, 'a NULL connector is refused');
SELECT throws_ok($$SELECT xprov.set_reconciliation_threshold(gen_random_uuid(), 10, 10)$$, '42704', NULL, 'an unknown connector is refused');
SELECT is((SELECT max_actions || ' ' || max_percent FROM xprov.reconciliation_thresholds WHERE connector_id = pg_temp.id('cx')),
          '2147483647 100', 'the refused calls changed nothing');
SELECT is((SELECT max_actions || ' ' || max_percent FROM xprov.reconciliation_thresholds WHERE connector_id = pg_temp.id('cs')),
          '1000 50', 'another connector keeps the defaults');

-- ---------------------------------------------------------------- operation_completion: _recon_settle
SELECT FROM pg_temp.conn('cp', 't1', 'scim2');
SELECT FROM pg_temp.conn('cq', 't1', 'rest');
SELECT FROM pg_temp.run('rp', 'cp');
CREATE TEMP TABLE flight AS SELECT pg_temp.busy_lane('cp', 'in-flight') AS lane_id;
UPDATE xprov.lane SET state = 'l' WHERE lane_id = (SELECT lane_id FROM flight);   -- as a worker's lease would
UPDATE xprov.reconciliation_run SET status = 'running', started_at = clock_timestamp() WHERE id = pg_temp.id('rp');
SELECT is(xprov._recon_settle(pg_temp.id('rp')), false, 'settle: a request of the connector in flight, the run waits');
SELECT is((SELECT phase FROM pg_temp.runv('rp')), 'operation_completion', '(still operation_completion)');
UPDATE xprov.reconciliation_run SET started_at = clock_timestamp() - interval '31 seconds' WHERE id = pg_temp.id('rp');
SELECT is(xprov._recon_settle(pg_temp.id('rp')), true, 'settle: after 30 s it waits no longer');
SELECT is((SELECT phase || ' ' || (listing_started_at > started_at) || ' ' || (statistics -> 'in_flight_at_listing')
             FROM xprov.reconciliation_run WHERE id = pg_temp.id('rp')),
          'listing true 1', 'the listing starts (its start time recorded), noting the request still in flight');
UPDATE xprov.lane SET state = 'r' WHERE lane_id = (SELECT lane_id FROM flight);

-- ---------------------------------------------------------------- listing: _recon_page, bad pages
SELECT throws_ok($$SELECT xprov._recon_page(pg_temp.id('rp'), 'not json')$$, '22P02', NULL, 'a page that is not JSON is refused');
SELECT throws_ok($$SELECT xprov._recon_page(pg_temp.id('rp'), NULL)$$, '22P02', NULL, 'a NULL page is refused (not an empty listing)');
SELECT throws_ok($$SELECT xprov._recon_page(pg_temp.id('rp'), 'null')$$, '22P02', 'the list page is not a JSON object',
                 'JSON null is not a page');
SELECT throws_ok($$SELECT xprov._recon_page(pg_temp.id('rp'), '[{"id": "a"}]')$$, '22P02', 'the list page is not a JSON object',
                 'an array is not a page');
SELECT throws_ok($$SELECT xprov._recon_page(pg_temp.id('rp'), '"Resources"')$$, '22P02', NULL, 'a string is not a page');
SELECT throws_ok($$SELECT xprov._recon_page(pg_temp.id('rp'), '{"totalResults": 1, "Resources": {"id": "a"}}')$$, '22P02',
                 'the list page has no array of accounts', 'Resources must be an array');
SELECT throws_ok($$SELECT xprov._recon_page(pg_temp.id('rp'), '{"totalResults": 1, "Resources": null}')$$, '22P02', NULL,
                 'Resources null is refused');
SELECT throws_ok($$SELECT xprov._recon_page(pg_temp.id('rp'), '{"schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"], "detail": "busy"}')$$,
                 '22P02', NULL, 'an object with neither Resources nor totalResults is not an empty page');
SELECT throws_ok($$SELECT xprov._recon_page(pg_temp.id('rp'), '{"totalResults": 2, "Resources": [{"id": "a"}, {"userName": "b"}]}')$$,
                 '22P02', 'the list page has an account without an id', 'an account without an id is refused');
SELECT throws_ok($$SELECT xprov._recon_page(pg_temp.id('rp'), '{"totalResults": 1, "Resources": [{"id": 7}]}')$$, '22P02', NULL,
                 'a numeric id is refused');
SELECT throws_ok($$SELECT xprov._recon_page(pg_temp.id('rp'), '{"totalResults": 1, "Resources": [{"id": null}]}')$$, '22P02', NULL,
                 'a null id is refused');
SELECT throws_ok($$SELECT xprov._recon_page(pg_temp.id('rp'), '{"totalResults": 1, "Resources": ["a"]}')$$, '22P02', NULL,
                 'an account that is not an object is refused');
SELECT throws_ok($$SELECT xprov._recon_page(pg_temp.id('rp'), '{"totalResults": "many", "Resources": []}')$$, '22P02', NULL,
                 'a totalResults that is not a number is refused');
SELECT is((SELECT concat_ws(' ', phase, pages, listed, coalesce(page_cursor, '-'),
                            (SELECT count(*) FROM xprov.reconciliation_item WHERE run_id = pg_temp.id('rp')))
             FROM xprov.reconciliation_run WHERE id = pg_temp.id('rp')),
          'listing 0 0 - 0', 'a refused page stages nothing, not even the good accounts on it');

-- ---------------------------------------------------------------- listing: SCIM paging, duplicates, the second pass
SELECT is(pg_temp.page('rp', pg_temp.scim(5, 1, pg_temp.ids('a1', 'a2'))), '3',
          'SCIM: the next page starts at startIndex + items (1 + 2) while below totalResults');
SELECT is((SELECT concat_ws(' ', phase, pages, listed, announced, total, page_cursor)
             FROM xprov.reconciliation_run WHERE id = pg_temp.id('rp')),
          'listing 1 2 5 5 3', 'the page is staged with its checkpoint: the next startIndex');
SELECT is((SELECT statistics ->> 'accounts_total' || ' ' || (statistics ->> 'accounts_processed') FROM pg_temp.runv('rp')),
          '5 2', 'while listing, the view counts 2 accounts of the 5 announced');
SELECT is(pg_temp.page('rp', pg_temp.scim(5, 3, pg_temp.ids('a2', 'a3'))), '5',
          'a page that repeats an account: the cursor still moves by the page''s items');
SELECT is((SELECT count(*) || ' ' || count(DISTINCT target_uid) FROM xprov.reconciliation_item WHERE run_id = pg_temp.id('rp')),
          '3 3', 'the repeated account is staged once');
SELECT is((SELECT listed FROM xprov.reconciliation_run WHERE id = pg_temp.id('rp')), 3::bigint, 'and counted once');
SELECT is(pg_temp.page('rp', pg_temp.scim(5, 5, pg_temp.ids('a4'))), '1',
          'the last page leaves 4 staged of 5 announced: a second pass from startIndex 1');
SELECT is((SELECT statistics ->> 'listing_passes' || ' ' || (statistics ->> 'paging_slipped') FROM pg_temp.runv('rp')),
          '2 false', 'listing_passes is 2 (totalResults did not change: not slipped)');
SELECT is(pg_temp.page('rp', pg_temp.scim(5, 1, pg_temp.ids('a1', 'a2', 'a3', 'a4'))), '5', 'the second pass pages again');
SELECT is(pg_temp.page('rp', pg_temp.scim(5, 5, '[]')), NULL,
          'still 4 of 5 at its end: no third pass, the listing is complete');
SELECT is((SELECT concat_ws(' ', phase, pages, listed, passes, coalesce(page_cursor, '-'), listing_ms IS NOT NULL)
             FROM xprov.reconciliation_run WHERE id = pg_temp.id('rp')),
          'diff 5 4 2 - t', 'the run moves on to the diff with 4 accounts after 5 pages, its listing time recorded');
SELECT is((SELECT statistics ->> 'accounts_total' || ' ' || (statistics ->> 'pages') || ' ' || (statistics ->> 'listing_passes')
             FROM pg_temp.runv('rp')), '5 5 2', 'the view: 5 announced, 5 pages, 2 passes');

SELECT FROM pg_temp.run('rp2', 'cp', 'apply', 'group');
SELECT FROM xprov._recon_settle(pg_temp.id('rp2'));
SELECT is(pg_temp.page('rp2', pg_temp.scim(4, 1, pg_temp.ids('g1', 'g2'))), '3', 'another listing: 4 announced');
SELECT is(pg_temp.page('rp2', pg_temp.scim(3, 3, pg_temp.ids('g3'))), '1',
          'totalResults changes to 3 and the 3 are staged: paging slipped, a second pass all the same');
SELECT is((SELECT statistics ->> 'paging_slipped' FROM xprov.reconciliation_run WHERE id = pg_temp.id('rp2')), 'true',
          'paging_slipped is recorded');
SELECT is(pg_temp.page('rp2', pg_temp.scim(3, 1, pg_temp.ids('g1', 'g3', 'g4'))), NULL, 'the second pass ends the listing');
SELECT is((SELECT listed || ' ' || passes FROM xprov.reconciliation_run WHERE id = pg_temp.id('rp2')), '4 2',
          'with the account the first pass missed (g4)');

SELECT FROM pg_temp.run('rp3', 'cp', 'apply', 'device');
SELECT FROM xprov._recon_settle(pg_temp.id('rp3'));
SELECT is(pg_temp.page('rp3', '{"Resources": [{"id": "d1"}, {"id": "d2"}]}'), '3', 'no totalResults: the next page all the same');
SELECT is(pg_temp.page('rp3', '{"Resources": []}'), NULL, 'until an empty page');
SELECT is((SELECT listed || ' ' || passes || ' ' || phase FROM xprov.reconciliation_run WHERE id = pg_temp.id('rp3')), '2 1 diff',
          'one pass, nothing announced to miss');
SELECT FROM pg_temp.run('rp4', 'cp', 'apply', 'role');
SELECT FROM xprov._recon_settle(pg_temp.id('rp4'));
SELECT is(pg_temp.page('rp4', '{"totalResults": 0, "startIndex": 1, "itemsPerPage": 0}'), NULL,
          'an empty SCIM answer may leave Resources out: the listing is complete');
SELECT is((SELECT listed || ' ' || passes || ' ' || phase FROM xprov.reconciliation_run WHERE id = pg_temp.id('rp4')), '0 1 diff',
          'with no accounts and no second pass');

-- REST: the target's cursor, and the owner it reports
SELECT FROM pg_temp.run('rq', 'cq');
SELECT FROM xprov._recon_settle(pg_temp.id('rq'));
SELECT FROM pg_temp.put('kim', gen_random_uuid());
SELECT FROM pg_temp.put('lee', gen_random_uuid());
SELECT throws_ok($$SELECT xprov._recon_page(pg_temp.id('rq'), '{"items": [{"id": "x"}], "next_cursor": null}')$$, '22P02',
                 'the list page has an account without an id', 'REST: an item without uid is refused');
SELECT throws_ok($$SELECT xprov._recon_page(pg_temp.id('rq'), '{"items": {"uid": "x"}, "next_cursor": null}')$$, '22P02', NULL,
                 'REST: items must be an array');
SELECT throws_ok($$SELECT xprov._recon_page(pg_temp.id('rq'), '{"Resources": [{"id": "x"}], "next_cursor": null}')$$, '22P02', NULL,
                 'REST: a page without items is refused (not an empty listing)');
SELECT is(pg_temp.page('rq', jsonb_build_object('items', jsonb_build_array(
              jsonb_build_object('uid', 'k1', 'identity_id', pg_temp.id('kim'), 'attributes', '{"login": "kim"}'::jsonb),
              jsonb_build_object('uid', 'k2', 'identity_id', 'not-a-uuid', 'attributes', '{"login": "k2"}'::jsonb),
              jsonb_build_object('uid', 'k3'),
              jsonb_build_object('uid', 'k5', 'identity_id', pg_temp.id('lee'), 'attributes', '{"login": "lee"}'::jsonb)),
              'next_cursor', 'opaque-42')), 'opaque-42',
          'REST: the next page is the target''s next_cursor, as is');
SELECT is((SELECT string_agg(target_uid || ' ' || coalesce(pg_temp.nm(identity_id), '-') || ' ' || attributes, ', ' ORDER BY target_uid)
             FROM xprov.reconciliation_item WHERE run_id = pg_temp.id('rq')),
          'k1 kim {"login": "kim"}, k2 - {"login": "k2"}, k3 - {}, k5 lee {"login": "lee"}',
          'REST items are staged with the owner the target reports (a uuid only) and their attributes ({} when none)');
SELECT throws_ok($$SELECT xprov._recon_page(pg_temp.id('rq'), '{"items": [], "next_cursor": "opaque-42"}')$$, '22P02', NULL,
                 'REST: a next_cursor that does not move the listing on is refused (no endless listing)');
SELECT throws_ok($$SELECT xprov._recon_page(pg_temp.id('rq'), '{"items": [], "next_cursor": ""}')$$, '22P02', NULL,
                 'REST: an empty next_cursor is refused');
SELECT is(pg_temp.page('rq', '{"items": [{"uid": "k1"}, {"uid": "k4"}], "next_cursor": null}'), NULL,
          'next_cursor null ends the listing');
SELECT is((SELECT concat_ws(' ', phase, pages, listed, passes) FROM xprov.reconciliation_run WHERE id = pg_temp.id('rq')),
          'diff 2 5 1', 'five accounts in two pages (k1 staged once), one pass');

-- ---------------------------------------------------------------- the diff: every discrepancy type
-- identities (an application table) and one correlation rule: the e-mail, any case
CREATE TEMP TABLE people (id uuid PRIMARY KEY, tenant uuid NOT NULL, email text);
INSERT INTO people
SELECT pg_temp.put(n, gen_random_uuid()), pg_temp.id('t1'), e
  FROM (VALUES ('ada', 'ada@example.com'), ('grace', 'grace@example.com'), ('alan', 'alan@example.com'),
               ('bob', 'bob@example.com'), ('twinA', 'twin@example.com'), ('twinB', 'twin@example.com'),
               ('carol', 'carol@example.com'), ('dave', 'dave@example.com'), ('eve', 'eve@example.com'),
               ('frank', 'frank@example.com'), ('henry', 'henry@example.com'), ('ivan', 'ivan@example.com')) v(n, e);
SELECT FROM pg_temp.put('ghost', gen_random_uuid());   -- an owner the identity source no longer has
SELECT FROM xprov.set_identity_source(pg_temp.id('t1'), 'people', '{"tenant_column": "tenant"}');
SELECT FROM pg_temp.conn('cd', 't1', 'scim2');
SELECT FROM xprov.add_correlation_rule(pg_temp.id('cd'), 'user',
    '{"name": "mail", "items": [{"target": "emails.0.value", "identity": "email", "match": "case_insensitive"}]}');

-- the shadows of connector cd
SELECT FROM pg_temp.shadow('s-ok', 'cd', 's-ok', 'ada',
    '{"userName": "ada", "active": true, "emails": [{"value": "ada@example.com"}], "schemas": ["x"]}');
SELECT FROM pg_temp.shadow('s-mis', 'cd', 's-mis', 'grace',
    '{"userName": "grace", "displayName": "Grace Hopper", "title": "RAdm", "nick": null, "password": "secret",
      "emails": [{"value": "grace@example.com"}]}');
SELECT FROM pg_temp.shadow('s-busy2', 'cd', 's-busy2', 'frank', '{"userName": "frank"}', pg_temp.busy_lane('cd', 's-busy2'));
SELECT FROM pg_temp.shadow('s-gone', 'cd', 's-gone', 'ghost', '{"userName": "other"}', pg_temp.idle_lane('cd', 'ghost'));
SELECT FROM pg_temp.shadow('f-1', 'cd', 'f-1', NULL, '{}');
SELECT FROM pg_temp.shadow('s-miss', 'cd', 's-miss', 'alan', '{"userName": "alan"}');
SELECT FROM pg_temp.shadow('s-new', 'cd', 's-new', 'henry', '{"userName": "henry"}');
UPDATE xprov.shadow SET created_at = clock_timestamp() + interval '1 hour' WHERE id = pg_temp.id('s-new');
SELECT FROM pg_temp.shadow('s-busy1', 'cd', 's-busy1', 'ivan', '{"userName": "ivan"}', pg_temp.busy_lane('cd', 's-busy1'));
SELECT FROM pg_temp.shadow('s-gest', 'cd', 's-gest', NULL, '{}', NULL, 'gestating');
SELECT FROM pg_temp.shadow('s-dead', 'cd', 'x-dead', 'carol', '{}', NULL, 'tombstone');
SELECT FROM pg_temp.shadow('s-group', 'cd', 'g-ada', 'ada', '{}', NULL, 'live', 'group');
INSERT INTO xprov.correlation_decision (connector_id, object_class, target_uid, identity_id, tenant_id, linked)
VALUES (pg_temp.id('cd'), 'user', 'u-rejected', pg_temp.id('carol'), pg_temp.id('t1'), false),
       (pg_temp.id('cd'), 'user', 'u-confirmed', pg_temp.id('dave'), pg_temp.id('t1'), true);

-- what the target lists: 11 accounts in two pages
CREATE TEMP TABLE cd_accounts (n int PRIMARY KEY, account jsonb NOT NULL);
INSERT INTO cd_accounts VALUES
    (1, '{"id": "s-ok", "userName": "ada", "active": true, "emails": [{"value": "ada@example.com"}],
          "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "meta": {"version": "W/\"1\""}}'),
    (2, '{"id": "s-mis", "userName": "grace", "displayName": "G. Hopper", "emails": [{"value": "grace@example.com"}]}'),
    (3, '{"id": "s-busy2", "userName": "changed"}'),
    (4, '{"id": "s-gone", "userName": "ghost", "displayName": "whatever"}'),
    (5, '{"id": "u-orphan", "userName": "nobody", "emails": [{"value": "nobody@example.com"}]}'),
    (6, '{"id": "u-unlinked", "userName": "bob", "emails": [{"value": "BOB@example.com"}], "schemas": ["urn:x"],
          "meta": {"version": "W/7"}}'),
    (7, '{"id": "u-disputed", "emails": [{"value": "twin@example.com"}]}'),
    (8, '{"id": "u-collision", "emails": [{"value": "ada@example.com"}]}'),
    (9, '{"id": "u-rejected", "emails": [{"value": "carol@example.com"}]}'),
    (10, '{"id": "u-confirmed", "emails": [{"value": "unknown@example.com"}]}'),
    (11, '{"id": "f-1", "emails": [{"value": "eve@example.com"}]}');
CREATE FUNCTION pg_temp.account(p_uid text) RETURNS jsonb LANGUAGE sql AS $$
    SELECT account FROM cd_accounts WHERE account ->> 'id' = p_uid
$$;
-- settle and list: the two pages' cursors
CREATE FUNCTION pg_temp.list_cd(p_run text) RETURNS text LANGUAGE sql AS $$
    SELECT xprov._recon_settle(pg_temp.id(p_run))::text || ' '
           || coalesce(pg_temp.page(p_run, pg_temp.scim(11, 1, (SELECT jsonb_agg(account ORDER BY n) FROM cd_accounts WHERE n <= 6))), '-') || ' '
           || coalesce(pg_temp.page(p_run, pg_temp.scim(11, 7, (SELECT jsonb_agg(account ORDER BY n) FROM cd_accounts WHERE n > 6))), '-')
$$;
SELECT FROM (VALUES ('missing', 'accept'), ('mismatch', 'accept'), ('unlinked', 'link'), ('orphan', 'disable'),
               ('unqualified', 'delete'), ('collision', 'report')) v(t, a),
            LATERAL xprov.set_reaction(pg_temp.id('cd'), t, a);

SELECT FROM pg_temp.run('d1', 'cd', 'preview');
SELECT is(pg_temp.list_cd('d1'), 'true 7 -', 'preview d1: settled, listed in two pages');
SELECT lives_ok($$SELECT pg_temp.diff('d1')$$, 'the diff');
SELECT is((SELECT phase || ' ' || processed || ' ' || total || ' ' || (diff_ms IS NOT NULL)
             FROM xprov.reconciliation_run WHERE id = pg_temp.id('d1')), 'reactions 11 11 true',
          'the run goes on to the reactions, 11 accounts processed');
SELECT is(pg_temp.disc('d1'), concat_ws(E'\n',
    'collision u-collision ada report planned',
    'disputed u-disputed - report planned',
    'mismatch s-mis grace accept planned',
    'missing s-miss alan accept planned',
    'orphan u-orphan - disable planned',
    'orphan u-rejected - disable planned',
    'unlinked f-1 eve link planned',
    'unlinked u-confirmed dave link planned',
    'unlinked u-unlinked bob link planned',
    'unqualified s-gone ghost delete planned'),
    'one discrepancy of each kind, with the owner and the action planned: missing (not listed), mismatch, '
    'unqualified (owner gone), orphan (nobody matches; a rejected pairing is not proposed), unlinked (by rule, '
    'by a confirmed decision, a foreign shadow), disputed (two definite), collision (owner has another account)');
SELECT is((SELECT string_agg(target_uid || ' ' || coalesce(pg_temp.nm(shadow_id), '-'), ', ' ORDER BY target_uid)
             FROM xprov.discrepancies WHERE run_id = pg_temp.id('d1')),
          'f-1 f-1, s-gone s-gone, s-mis s-mis, s-miss s-miss, u-collision -, u-confirmed -, u-disputed -, u-orphan -, u-rejected -, u-unlinked -',
          'discrepancies name their shadow where there is one');
SELECT is((SELECT differences FROM xprov.discrepancies WHERE run_id = pg_temp.id('d1') AND type = 'mismatch'),
          '{"displayName": {"expected": "Grace Hopper", "actual": "G. Hopper"}, "title": {"expected": "RAdm", "actual": null}}'::jsonb,
          'mismatch: exactly the differing attributes (schemas, password, null expectations ignored)');
SELECT is((SELECT count(*) FROM xprov.discrepancies WHERE run_id = pg_temp.id('d1')
            AND attributes IS NOT DISTINCT FROM pg_temp.account(target_uid)), 10::bigint,
          'each discrepancy carries the account as listed (missing: none)');
SELECT is((SELECT string_agg(pg_temp.nm((c ->> 'identity_id')::uuid) || ' ' || (c ->> 'confidence') || ' ' || (c #>> '{evidence,0,name}'),
                             ', ' ORDER BY pg_temp.nm((c ->> 'identity_id')::uuid))
             FROM xprov.discrepancies d, jsonb_array_elements(d.candidates) c
            WHERE d.run_id = pg_temp.id('d1') AND d.type = 'disputed'),
          'twinA 1 mail, twinB 1 mail', 'disputed: both candidates, with confidence and the rule that found them');
SELECT is((SELECT candidates #> '{0,evidence,0}' FROM xprov.discrepancies WHERE run_id = pg_temp.id('d1') AND target_uid = 'u-confirmed'),
          '{"decision": "confirmed", "case": null}'::jsonb, 'unlinked by a confirmed decision: the evidence says so');
SELECT is((SELECT candidates FROM xprov.discrepancies WHERE run_id = pg_temp.id('d1') AND target_uid = 'u-rejected'), NULL,
          'the rejected pairing is no candidate at all');
SELECT is((SELECT count(*) FROM xprov.discrepancies WHERE run_id = pg_temp.id('d1')
            AND target_uid IN ('s-ok', 's-new', 's-busy1', 's-busy2', 's-gest', 'x-dead', 'g-ada')), 0::bigint,
          'nothing about the matching account, the shadow newer than the listing, those with unfinished operations, '
          'the gestating, the dead, another object class''s');
SELECT is((SELECT count(*) FROM xprov.discrepancies WHERE run_id = pg_temp.id('d1') AND connector_id = pg_temp.id('cd')
            AND object_class = 'user' AND tenant_id = pg_temp.id('t1')), 10::bigint,
          'the view gives each its tenant, connector and object class');
SELECT is((SELECT statistics -> 'discrepancies' FROM pg_temp.runv('d1')),
          '{"missing": 1, "mismatch": 1, "unqualified": 1, "orphan": 2, "unlinked": 3, "disputed": 1, "collision": 1}'::jsonb,
          'statistics count the discrepancies by type');
SELECT is((SELECT (statistics ->> 'shadows_compared') || ' ' || (statistics ->> 'shadows_busy') FROM pg_temp.runv('d1')), '6 3',
          '6 shadows compared; 3 busy (two with unfinished operations, one gestating) left to their operations');
SELECT is((SELECT statistics ->> 'accounts_total' FROM pg_temp.runv('d1')), '11', 'after the diff the view counts the accounts listed');
SELECT lives_ok($$SELECT pg_temp.diff('d1')$$, 'the diff again (a reconciler that restarted)');
SELECT is((SELECT count(*) FROM xprov.discrepancy WHERE run_id = pg_temp.id('d1')), 10::bigint, 'replaces the discrepancies, no duplicates');

-- preview: the plan, and nothing else
-- tenant t1's shadows (count and content), operations and correlation cases
CREATE FUNCTION pg_temp.state() RETURNS text LANGUAGE sql AS $$
    SELECT concat_ws(' ',
        (SELECT count(*) FROM xprov.shadow WHERE tenant_id = pg_temp.id('t1')),
        (SELECT md5(string_agg(s::text, '' ORDER BY s.id)) FROM xprov.shadow s WHERE s.tenant_id = pg_temp.id('t1')),
        (SELECT count(*) FROM xprov.op WHERE tenant_id = pg_temp.id('t1')),
        (SELECT count(*) FROM xprov.correlation_case WHERE tenant_id = pg_temp.id('t1')))
$$;
CREATE TEMP TABLE before AS SELECT pg_temp.state() AS state,
                                   (SELECT count(*) FROM xprov.op WHERE tenant_id = pg_temp.id('t1')) AS ops;
SELECT is(pg_temp.react('d1'), 'completed', 'preview: the reactions step completes the run');
SELECT is(pg_temp.state(), (SELECT state FROM before), 'preview changes no shadow, enqueues nothing, opens no case');
SELECT is((SELECT string_agg(DISTINCT status, ',') FROM xprov.discrepancies WHERE run_id = pg_temp.id('d1')), 'planned',
          'its discrepancies stay planned');
SELECT is((SELECT statistics -> 'actions_planned' FROM pg_temp.runv('d1')),
          '{"accept": 2, "link": 3, "disable": 2, "delete": 1, "report": 2}'::jsonb, 'statistics: the actions planned');
SELECT is((SELECT status || ' ' || phase || ' ' || (finished_at IS NOT NULL) || ' ' || (statistics ->> 'accounts_total')
             FROM pg_temp.runv('d1')), 'completed finalization true 11', 'the run is completed');
SELECT is((SELECT count(*) FROM xprov.reconciliation_item WHERE run_id = pg_temp.id('d1')), 0::bigint, 'its listing is removed');
SELECT is(xprov.wait_run(pg_temp.id('d1'), '1 minute'), 'completed', 'wait_run returns completed');
SELECT throws_ok($$SELECT xprov.cancel_run(pg_temp.id('d1'))$$, '55000', NULL, 'a completed run cannot be cancelled');

-- ---------------------------------------------------------------- apply: the mass-change pause, approval, the actions
SELECT lives_ok($$SELECT pg_temp.run('d2', 'cd')$$, 'after the preview an apply run of the same connector');
SELECT is(pg_temp.list_cd('d2'), 'true 7 -', 'd2 listed');
SELECT FROM pg_temp.diff('d2');
UPDATE before SET state = pg_temp.state(), ops = (SELECT count(*) FROM xprov.op WHERE tenant_id = pg_temp.id('t1'));
SELECT is(pg_temp.react('d2'), 'paused', '8 actions on 12 accounts (11 listed, 1 missing) is more than 50 %: paused');
SELECT is((SELECT status || ' ' || phase || ' ' || (statistics -> 'paused_for') FROM pg_temp.runv('d2')),
          'paused reactions {"accounts": 12, "max_actions": 1000, "max_percent": 50, "actions_planned": 8}',
          'the run is paused in the reactions phase, saying why');
SELECT is(pg_temp.state(), (SELECT state FROM before), 'a paused run has changed nothing yet');
SELECT is((SELECT string_agg(DISTINCT status, ',') FROM xprov.discrepancies WHERE run_id = pg_temp.id('d2')), 'planned',
          'its discrepancies are planned');
SELECT is(xprov.wait_run(pg_temp.id('d2'), '1 minute'), 'paused', 'wait_run returns paused (at once)');
SELECT throws_ok($$SELECT xprov.reconcile(pg_temp.id('cd'))$$, '55006', NULL, 'a paused run still holds the connector and class');
SELECT FROM pg_temp.ctx('t2');
SELECT throws_ok($$SELECT xprov.approve_run(pg_temp.id('d2'))$$, '42501', NULL, 'another tenant cannot approve it');
SELECT FROM pg_temp.ctx('t1');
SELECT lives_ok($$SELECT xprov.approve_run(pg_temp.id('d2'))$$, 'approve_run');
SELECT is((SELECT status || ' ' || approved_by || ' ' || (approved_at IS NOT NULL) FROM pg_temp.runv('d2')),
          'pending ' || current_user || ' true', 'the run is pending again, approved by the caller');
SELECT throws_ok($$SELECT xprov.approve_run(pg_temp.id('d2'))$$, '55000', NULL, 'it cannot be approved twice');
SELECT is(pg_temp.react('d2'), 'completed', 'approved, the reactions are carried out');

SELECT is(pg_temp.disc('d2'), concat_ws(E'\n',
    'collision u-collision ada report reported',
    'disputed u-disputed - report reported',
    'mismatch s-mis grace accept applied',
    'missing s-miss alan accept applied',
    'orphan u-orphan - disable applied',
    'orphan u-rejected - disable applied',
    'unlinked f-1 eve link applied',
    'unlinked u-confirmed dave link applied',
    'unlinked u-unlinked bob link applied',
    'unqualified s-gone ghost delete applied'),
    'report: reported; every other action: applied');
SELECT results_eq($$SELECT d.target_uid, o.operation_type, pg_temp.nm(o.identity_id), o.target_uid, o.attributes, o.status,
                           d.operation_status, o.idempotency_key = 'reconciliation:' || d.run_id || ':' || d.id
                      FROM xprov.discrepancies d JOIN xprov.operations o ON o.id = d.operation_id
                     WHERE d.run_id = pg_temp.id('d2') ORDER BY d.target_uid$$,
                  $$VALUES ('s-gone', 'delete', 'ghost', 's-gone', '{}'::jsonb, 'pending', 'pending', true),
                           ('u-orphan', 'disable', NULL, 'u-orphan', '{}'::jsonb, 'pending', 'pending', true),
                           ('u-rejected', 'disable', NULL, 'u-rejected', '{}'::jsonb, 'pending', 'pending', true)$$,
                  'target changes are queue operations: the type, the account, the identity of the subject that '
                  'provisioned it, an idempotency key per discrepancy; the view shows their status');
SELECT is((SELECT count(*) FROM xprov.op WHERE tenant_id = pg_temp.id('t1')) - (SELECT ops FROM before), 3::bigint,
          'and only those three were enqueued');
SELECT is((SELECT o.lane_id FROM xprov.op o JOIN xprov.discrepancy d ON d.operation_id = o.id
            WHERE d.run_id = pg_temp.id('d2') AND d.target_uid = 's-gone'),
          (SELECT lane_id FROM xprov.shadow WHERE id = pg_temp.id('s-gone')),
          'the delete queues behind the operations of the subject that provisioned the account');
SELECT results_eq($$SELECT target_uid, coalesce(pg_temp.nm(identity_id), '-'), lifecycle, situation, coalesce(subject, '-')
                      FROM xprov.shadows WHERE connector_id = pg_temp.id('cd') AND object_class = 'user'
                       AND target_uid IN ('u-orphan', 'u-rejected', 'u-unlinked', 'u-confirmed', 'f-1', 'u-disputed',
                                          'u-collision', 's-miss', 's-gone')
                     ORDER BY target_uid$$,
                  $$VALUES ('f-1', 'eve', 'live', 'linked', '-'),
                           ('s-gone', 'ghost', 'live', 'linked', 'i:' || pg_temp.id('ghost')),
                           ('s-miss', 'alan', 'tombstone', 'deleted', '-'),
                           ('u-collision', '-', 'live', 'collision', '-'),
                           ('u-confirmed', 'dave', 'live', 'linked', '-'),
                           ('u-disputed', '-', 'live', 'disputed', '-'),
                           ('u-orphan', '-', 'live', 'unmatched', 't:u-orphan'),
                           ('u-rejected', '-', 'live', 'unmatched', 't:u-rejected'),
                           ('u-unlinked', 'bob', 'live', 'linked', '-')$$,
                  'shadows: links made, new accounts recorded (owned by nobody unless linked; an orphan acted on '
                  'belongs to the subject acting on it), the missing account a tombstone');
SELECT is((SELECT count(*) FROM xprov.shadow WHERE connector_id = pg_temp.id('cd') AND target_uid = 'f-1'), 1::bigint,
          'the foreign shadow was linked, not duplicated');
SELECT is((SELECT dead_at IS NOT NULL FROM xprov.shadow WHERE id = pg_temp.id('s-miss')), true, 'accept missing: the shadow is dead');
SELECT is((SELECT concat_ws(' ', expected, observed = pg_temp.account('u-unlinked'), version, exclusive) FROM xprov.shadow
            WHERE connector_id = pg_temp.id('cd') AND target_uid = 'u-unlinked'),
          '{"emails": [{"value": "BOB@example.com"}], "userName": "bob"} t W/7 t',
          'link: the account as listed becomes what is expected (without schemas, meta, id); observed, version, exclusive');
SELECT is((SELECT expected FROM xprov.shadow WHERE id = pg_temp.id('s-mis')),
          '{"userName": "grace", "displayName": "G. Hopper", "password": "secret", "emails": [{"value": "grace@example.com"}]}'::jsonb,
          'accept mismatch: the target''s values are merged into what is expected (title, absent there, is gone)');
SELECT is((SELECT observed FROM xprov.shadow WHERE id = pg_temp.id('s-mis')), pg_temp.account('s-mis'),
          'and the account is recorded as observed');
SELECT is((SELECT expected FROM xprov.shadow WHERE id = pg_temp.id('s-ok')),
          '{"userName": "ada", "active": true, "emails": [{"value": "ada@example.com"}], "schemas": ["x"]}'::jsonb,
          'a shadow without discrepancy is untouched');
SELECT results_eq($$SELECT c.situation, c.target_uid, c.origin, c.status, pg_temp.nm(c.identity_id),
                           (SELECT string_agg(pg_temp.nm((e ->> 'identity_id')::uuid), ',' ORDER BY pg_temp.nm((e ->> 'identity_id')::uuid))
                              FROM jsonb_array_elements(c.candidates) e),
                           c.id = d.case_id
                      FROM xprov.correlation_cases c JOIN xprov.discrepancies d ON d.target_uid = c.target_uid
                     WHERE c.connector_id = pg_temp.id('cd') AND d.run_id = pg_temp.id('d2')
                     ORDER BY c.situation$$,
                  $$VALUES ('collision', 'u-collision', 'reconciliation', 'open', NULL, 'ada', true),
                           ('disputed', 'u-disputed', 'reconciliation', 'open', NULL, 'twinA,twinB', true)$$,
                  'disputed and collision open a correlation case (origin reconciliation) with the candidates; '
                  'the discrepancy names it');
SELECT is((SELECT statistics -> 'actions_taken' FROM pg_temp.runv('d2')),
          '{"accept": 2, "link": 3, "disable": 2, "delete": 1}'::jsonb, 'statistics: the actions taken');
SELECT is((SELECT status || ' ' || phase || ' ' || (finished_at IS NOT NULL) FROM pg_temp.runv('d2')), 'completed finalization true',
          'the run is completed');
SELECT is((SELECT count(*) FROM xprov.reconciliation_item WHERE run_id = pg_temp.id('d2')), 0::bigint, 'its listing is removed');

-- the same target again: what was settled stays settled
SELECT FROM xprov.set_reconciliation_threshold(pg_temp.id('cd'), NULL, NULL);
SELECT FROM pg_temp.run('d3', 'cd');
SELECT is(pg_temp.list_cd('d3'), 'true 7 -', 'd3 listed (the same accounts)');
SELECT FROM pg_temp.diff('d3');
SELECT is(pg_temp.disc('d3'), concat_ws(E'\n',
    'collision u-collision ada report planned',
    'disputed u-disputed - report planned'),
    'a second run finds only what waits for a person: the links hold, accepted values match, the accounts with '
    'operations queued are left to them');
SELECT is((SELECT statistics ->> 'shadows_busy' FROM pg_temp.runv('d3')), '6', 'those three are counted busy now');
SELECT is(pg_temp.react('d3'), 'completed', 'd3 completes (limits off)');
SELECT is((SELECT count(*) FROM xprov.correlation_case WHERE connector_id = pg_temp.id('cd')), 2::bigint,
          'no second case for an account whose case is still open');

-- ---------------------------------------------------------------- apply: create, update, delete, disable; max_actions
SELECT FROM pg_temp.conn('cu', 't1', 'scim2');
SELECT FROM xprov.add_correlation_rule(pg_temp.id('cu'), 'user',
    '{"items": [{"target": "emails.0.value", "identity": "email", "match": "case_insensitive"}]}');
SELECT FROM pg_temp.shadow('m-1', 'cu', 'm-1', 'ada', '{"userName": "ada", "title": null, "displayName": "Ada"}');
SELECT FROM pg_temp.shadow('m-2', 'cu', 'm-2', NULL, '{"userName": "foreign"}');
SELECT FROM pg_temp.shadow('p-1', 'cu', 'p-1', 'grace', '{"userName": "grace", "title": "RAdm", "emails": [{"value": "grace@example.com"}]}',
                           pg_temp.idle_lane('cu', 'grace'));
SELECT FROM pg_temp.shadow('k-1', 'cu', 'k-1', 'bob', '{"userName": "bob"}');
CREATE FUNCTION pg_temp.list_cu(p_run text) RETURNS text LANGUAGE sql AS $$
    SELECT xprov._recon_settle(pg_temp.id(p_run))::text || ' ' || coalesce(pg_temp.page(p_run, pg_temp.scim(4, 1,
        '[{"id": "p-1", "userName": "grace", "title": "Cdr", "emails": [{"value": "grace@example.com"}]},
          {"id": "o-1", "userName": "zz"},
          {"id": "k-1", "userName": "bob"},
          {"id": "k-2", "userName": "bob2", "emails": [{"value": "bob@example.com"}]}]')), '-')
$$;
SELECT FROM (VALUES ('missing', 'create'), ('mismatch', 'update'), ('orphan', 'delete'), ('collision', 'disable')) v(t, a),
            LATERAL xprov.set_reaction(pg_temp.id('cu'), t, a);
SELECT FROM xprov.set_reconciliation_threshold(pg_temp.id('cu'), 3, NULL);
SELECT FROM pg_temp.run('u1', 'cu');
SELECT is(pg_temp.list_cu('u1'), 'true -', 'u1 listed');
SELECT FROM pg_temp.diff('u1');
SELECT is(pg_temp.disc('u1'), concat_ws(E'\n',
    'collision k-2 bob disable planned',
    'mismatch p-1 grace update planned',
    'missing m-1 ada create planned',
    'missing m-2 - report planned',
    'orphan o-1 - delete planned'), 'u1: four actions planned (nobody to create the ownerless m-2 for: reported)');
SELECT is(pg_temp.react('u1'), 'paused', 'more than max_actions (3): paused, whatever the percentage (max_percent off)');
SELECT is((SELECT statistics -> 'paused_for' FROM pg_temp.runv('u1')),
          '{"accounts": 6, "max_actions": 3, "max_percent": null, "actions_planned": 4}'::jsonb, 'paused_for says so');
SELECT lives_ok($$SELECT xprov.cancel_run(pg_temp.id('u1'))$$, 'a paused run can be cancelled');
SELECT is((SELECT status || ' ' || (finished_at IS NOT NULL) FROM pg_temp.runv('u1')), 'cancelled true', 'it is cancelled');
SELECT is((SELECT string_agg(DISTINCT status, ',') FROM xprov.discrepancies WHERE run_id = pg_temp.id('u1')), 'cancelled',
          'its planned discrepancies are cancelled');
SELECT is((SELECT count(*) FROM xprov.reconciliation_item WHERE run_id = pg_temp.id('u1')), 0::bigint, 'its listing is removed');
SELECT is((SELECT count(*) FROM xprov.shadow WHERE connector_id = pg_temp.id('cu')) || ' '
          || (SELECT count(*) FROM xprov.op WHERE connector_id = pg_temp.id('cu')), '4 1',
          'nothing was done: 4 shadows, only the one operation of the test''s own');

SELECT FROM xprov.set_reconciliation_threshold(pg_temp.id('cu'), 4, NULL);
SELECT FROM pg_temp.run('u2', 'cu');
SELECT is(pg_temp.list_cu('u2'), 'true -', 'u2 listed');
SELECT FROM pg_temp.diff('u2');
SELECT is(pg_temp.react('u2'), 'completed', 'exactly max_actions (4) planned: no pause, no approval needed');
SELECT is((SELECT approved_at FROM pg_temp.runv('u2')), NULL, 'nobody approved it');
SELECT results_eq($$SELECT d.type, d.target_uid, o.operation_type, pg_temp.nm(o.identity_id), o.target_uid, o.attributes
                      FROM xprov.discrepancies d JOIN xprov.operations o ON o.id = d.operation_id
                     WHERE d.run_id = pg_temp.id('u2') ORDER BY d.type, d.target_uid$$,
                  $$VALUES ('collision', 'k-2', 'disable', NULL, 'k-2', '{}'::jsonb),
                           ('mismatch', 'p-1', 'update', 'grace', 'p-1', '{"title": "RAdm"}'::jsonb),
                           ('missing', 'm-1', 'create', 'ada', NULL, '{"userName": "ada", "displayName": "Ada"}'::jsonb),
                           ('orphan', 'o-1', 'delete', NULL, 'o-1', '{}'::jsonb)$$,
                  'create: for the owner, what was expected (nulls stripped); update: the expected values of the '
                  'differing attributes, on the provisioning subject; delete and disable: the account');
SELECT is((SELECT o.lane_id FROM xprov.op o JOIN xprov.discrepancy d ON d.operation_id = o.id
            WHERE d.run_id = pg_temp.id('u2') AND d.target_uid = 'p-1'),
          (SELECT lane_id FROM xprov.shadow WHERE id = pg_temp.id('p-1')), 'the update queues on the shadow''s own subject');
SELECT is((SELECT string_agg(target_uid || ' ' || lifecycle, ', ' ORDER BY target_uid) FROM xprov.shadow
            WHERE connector_id = pg_temp.id('cu') AND target_uid LIKE 'm-%'), 'm-1 tombstone, m-2 live',
          'create missing: the old shadow dies (a new one comes with the create); the ownerless one is only reported');
SELECT is((SELECT operation_id FROM xprov.discrepancies WHERE run_id = pg_temp.id('u2') AND target_uid = 'm-2'), NULL,
          'an account nobody owned is not created again (no identity to create it for)');
SELECT is((SELECT count(*) FROM xprov.op WHERE connector_id = pg_temp.id('cu')), 5::bigint, 'four operations enqueued');
SELECT is((SELECT string_agg(situation || ' ' || coalesce(pg_temp.nm(identity_id), '-'), ',') FROM xprov.correlation_cases
            WHERE connector_id = pg_temp.id('cu')), 'collision -', 'the collision (acted on) still opens a case');

-- ---------------------------------------------------------------- REST: owners the target reports
INSERT INTO xprov.correlation_decision (connector_id, object_class, target_uid, identity_id, tenant_id, linked)
VALUES (pg_temp.id('cq'), 'user', 'k5', pg_temp.id('lee'), pg_temp.id('t1'), false);
SELECT FROM pg_temp.diff('rq');
SELECT is(pg_temp.disc('rq'), concat_ws(E'\n',
    'orphan k2 - report planned',
    'orphan k3 - report planned',
    'orphan k4 - report planned',
    'orphan k5 - report planned',
    'unlinked k1 kim report planned'),
    'REST: the owner the target reports is definite (k1); a pairing a person rejected is not proposed (k5)');
SELECT is((SELECT candidates #> '{0,evidence,0}' FROM xprov.discrepancies WHERE run_id = pg_temp.id('rq') AND target_uid = 'k1'),
          '{"reported_by_target": true}'::jsonb, 'the evidence: reported by the target');
SELECT is(pg_temp.react('rq'), 'completed', 'apply with every reaction report: no pause (nothing to act on)');
SELECT is(pg_temp.disc('rq'), concat_ws(E'\n',
    'orphan k2 - report reported',
    'orphan k3 - report reported',
    'orphan k4 - report reported',
    'orphan k5 - report reported',
    'unlinked k1 kim report reported'), 'report: reported');
SELECT is((SELECT string_agg(target_uid || ' ' || coalesce(pg_temp.nm(identity_id), '-') || ' ' || situation || ' ' || observed,
                             ', ' ORDER BY target_uid)
             FROM xprov.shadow WHERE connector_id = pg_temp.id('cq')),
          'k1 - unlinked {"login": "kim"}, k2 - unmatched {"login": "k2"}, k3 - unmatched {}, k4 - unmatched {}, k5 - unmatched {"login": "lee"}',
          'the accounts found get shadows, owned by nobody until linked');
SELECT is((SELECT count(*) FROM xprov.op WHERE connector_id = pg_temp.id('cq')), 0::bigint, 'and nothing is enqueued');
SELECT is((SELECT statistics -> 'actions_taken' FROM pg_temp.runv('rq')), '{}'::jsonb, 'no actions taken');

-- ---------------------------------------------------------------- a tenant without an identity source
SELECT FROM pg_temp.ctx('t2');
SELECT FROM pg_temp.shadow('z-1', 'c2', 'z-1', 'ghost', '{"userName": "z1"}');
SELECT FROM pg_temp.run('z', 'c2');
SELECT FROM xprov._recon_settle(pg_temp.id('z'));
SELECT FROM pg_temp.page('z', pg_temp.scim(2, 1, '[{"id": "z-1", "userName": "z1"}, {"id": "z-2", "emails": [{"value": "ada@example.com"}]}]'));
SELECT FROM pg_temp.diff('z');
SELECT is(pg_temp.disc('z'), 'orphan z-2 - report planned',
          'tenant t2 (no identity source, no rules): no owner is unqualified, another tenant''s identities match nothing');
SELECT FROM pg_temp.ctx('t1');

-- ---------------------------------------------------------------- two accounts for one owner
-- cw: one account per owner (the default); cm: several allowed (config multiple_accounts)
SELECT FROM pg_temp.conn('cw', 't1', 'scim2');
SELECT FROM pg_temp.put('cm', xprov.add_connector(pg_temp.id('t1'), 'cm', 'scim2', 'http://127.0.0.1:9/', '{"multiple_accounts": true}'));
DO $$
DECLARE c text;
BEGIN
    FOREACH c IN ARRAY ARRAY['cw', 'cm'] LOOP
        PERFORM xprov.add_correlation_rule(pg_temp.id(c), 'user',
                    '{"items": [{"target": "emails.0.value", "identity": "email", "match": "case_insensitive"}]}');
        PERFORM xprov.set_reaction(pg_temp.id(c), 'unlinked', 'link');
        PERFORM xprov.set_reconciliation_threshold(pg_temp.id(c), NULL, NULL);
        PERFORM pg_temp.run(c || '-run', c);
        PERFORM xprov._recon_settle(pg_temp.id(c || '-run'));
        PERFORM pg_temp.page(c || '-run', pg_temp.scim(2, 1, '[{"id": "w-1", "emails": [{"value": "bob@example.com"}]},
                                                               {"id": "w-2", "emails": [{"value": "Bob@Example.com"}]}]'));
        PERFORM pg_temp.diff(c || '-run');
    END LOOP;
END $$;
SELECT is(pg_temp.disc('cw-run'), concat_ws(E'\n',
    'collision w-1 bob report planned',
    'collision w-2 bob report planned'),
    'two accounts listed without owner, both definitely bob''s, where bob may have one: a collision each, neither linked');
SELECT is(pg_temp.outcome($$SELECT pg_temp.react('cw-run')$$), 'OK: completed', 'the reactions complete');
SELECT is((SELECT count(*) FROM xprov.shadow WHERE connector_id = pg_temp.id('cw') AND identity_id IS NOT NULL) || ' '
          || (SELECT count(*) FROM xprov.correlation_cases WHERE connector_id = pg_temp.id('cw') AND situation = 'collision'),
          '0 2', 'no shadow is linked; a person decides in two cases');
SELECT is(pg_temp.disc('cm-run'), concat_ws(E'\n',
    'unlinked w-1 bob link planned',
    'unlinked w-2 bob link planned'),
    'where several accounts are allowed, both are bob''s to link');
SELECT is(pg_temp.outcome($$SELECT pg_temp.react('cm-run')$$), 'OK: completed', 'the reactions complete');
SELECT is((SELECT string_agg(target_uid || ' ' || pg_temp.nm(identity_id) || ' ' || exclusive, ', ' ORDER BY target_uid)
             FROM xprov.shadow WHERE connector_id = pg_temp.id('cm')), 'w-1 bob false, w-2 bob false',
          'both linked, neither exclusive');

-- ---------------------------------------------------------------- planned actions that cannot or need not happen
SELECT is(xprov._planned_action('{"orphan": "disable"}', 'orphan', '{"active": false}', NULL), 'report',
          'disabling an account that is disabled already is only reported');
SELECT is(xprov._planned_action('{"orphan": "disable"}', 'orphan', '{"active": true}', NULL), 'disable',
          'an active account is disabled');
SELECT is(xprov._planned_action('{"missing": "create"}', 'missing', NULL, NULL), 'report',
          'a missing account nobody owned is not created again');
SELECT is(xprov._planned_action('{}', 'mismatch', '{}', gen_random_uuid()), 'report', 'report by default');

-- ---------------------------------------------------------------- a plan acted on only where it is still true
SELECT FROM pg_temp.conn('cz', 't1', 'scim2');
SELECT FROM pg_temp.shadow('zs-1', 'cz', 'z-1', 'ada', '{"userName": "ada", "title": "A"}');
SELECT FROM pg_temp.shadow('zs-2', 'cz', 'z-2', 'bob', '{"userName": "bob", "title": "B"}');
UPDATE xprov.shadow SET updated_at = now() - interval '1 day' WHERE connector_id = pg_temp.id('cz');
SELECT FROM xprov.set_reaction(pg_temp.id('cz'), 'mismatch', 'update');
SELECT FROM xprov.set_reaction(pg_temp.id('cz'), 'orphan', 'delete');
SELECT FROM xprov.set_reconciliation_threshold(pg_temp.id('cz'), NULL, NULL);
SELECT FROM pg_temp.run('z1', 'cz');
SELECT is(xprov._recon_settle(pg_temp.id('z1')) || ' ' || coalesce(pg_temp.page('z1', pg_temp.scim(3, 1,
        '[{"id": "z-1", "userName": "ada", "title": "changed"}, {"id": "z-2", "userName": "bob", "title": "changed"},
          {"id": "z-3", "userName": "nobody"}]')), '-'), 'true -', 'z1 listed');
SELECT FROM pg_temp.diff('z1');
-- after the diff: z-2's shadow changes, and z-3 (an orphan then) gets an owner's shadow
UPDATE xprov.reconciliation_run SET diffed_at = now() - interval '1 minute' WHERE id = pg_temp.id('z1');
UPDATE xprov.shadow SET expected = expected || '{"title": "changed"}', updated_at = now() WHERE id = pg_temp.id('zs-2');
SELECT FROM pg_temp.shadow('zs-3', 'cz', 'z-3', 'grace', '{"userName": "nobody"}');
UPDATE xprov.shadow SET updated_at = now() WHERE id = pg_temp.id('zs-3');
SELECT is(pg_temp.react('z1'), 'completed', 'z1 applies');
SELECT is(pg_temp.disc('z1'), concat_ws(E'\n',
    'mismatch z-1 ada update applied',
    'mismatch z-2 bob report cancelled',
    'orphan z-3 - report cancelled'),
    'what changed since the diff is left alone: no update from a stale comparison, no delete of an account someone now owns');
SELECT is((SELECT statistics -> 'actions_left_stale' FROM pg_temp.runv('z1')), '2'::jsonb, 'statistics count them');
SELECT is((SELECT count(*) FROM xprov.op WHERE connector_id = pg_temp.id('cz')), 1::bigint, 'one operation only (z-1''s update)');

-- ---------------------------------------------------------------- purge_runs
SELECT throws_ok($$SELECT xprov.purge_runs(NULL)$$, '22023', NULL, 'purge_runs: NULL is refused');
SELECT throws_ok($$SELECT xprov.purge_runs('-1 day')$$, '22023', NULL, 'purge_runs: a negative interval is refused');
UPDATE xprov.reconciliation_run SET finished_at = now() - interval '40 days' WHERE id = pg_temp.id('u1');
SELECT is(xprov.purge_runs(), 1::bigint, 'purge_runs removes the finished run older than 30 days');
SELECT is((SELECT count(*) FROM xprov.reconciliation_run WHERE id = pg_temp.id('u1'))
          + (SELECT count(*) FROM xprov.discrepancy WHERE run_id = pg_temp.id('u1')), 0::bigint,
          'with its discrepancies');
UPDATE xprov.reconciliation_run SET finished_at = now() - interval '2 days' WHERE finished_at IS NOT NULL;
SELECT is(xprov.purge_runs('1 day') >= 1, true, 'purge_runs(''1 day'') removes every run finished before');
SELECT is((SELECT count(*) FROM xprov.reconciliation_run WHERE status IN ('completed', 'failed', 'cancelled')), 0::bigint,
          'none is left');

SELECT * FROM finish();
ROLLBACK;
