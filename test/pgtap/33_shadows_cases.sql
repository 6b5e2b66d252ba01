-- Shadows, the account direction of correlation, correlation cases and sticky
-- decisions (README "Shadows" and "Correlation cases"): the database
-- constraints that make duplicates impossible, the derived views, every
-- match kind of xprov.correlate against shadows, thresholds, ambiguity, the
-- worker's create-path question (xprov._correlate_create), parking, and
-- xprov.resolve_case with all its refusals.  The worker's own use of all this
-- against a real SCIM target is test/process/worker_shadows.sh.
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS xprov;
CREATE EXTENSION IF NOT EXISTS pg_trgm;

BEGIN;
SELECT plan(118);
\ir common.psql
SELECT pg_temp.isolate();

SELECT FROM pg_temp.tenant('t1');
SELECT FROM pg_temp.tenant('t2');
SELECT FROM pg_temp.conn('c1', 't1', 'scim2');
SELECT FROM pg_temp.conn('c2', 't1', 'scim2');
SELECT FROM pg_temp.conn('c3', 't2', 'scim2');
SELECT FROM pg_temp.conn('ce', 't1', 'external');
SELECT FROM pg_temp.put('ada', gen_random_uuid());
SELECT FROM pg_temp.put('grace', gen_random_uuid());
SELECT FROM pg_temp.put('alan', gen_random_uuid());
SELECT FROM pg_temp.put('zed', gen_random_uuid());

-- a foreign (found, not provisioned) shadow: lane NULL
CREATE FUNCTION pg_temp.shadow(p_conn text, p_uid text, p_observed jsonb, p_owner text DEFAULT NULL,
                               p_lifecycle text DEFAULT 'live', p_class text DEFAULT 'user')
RETURNS uuid LANGUAGE sql AS $$
    INSERT INTO xprov.shadow (tenant_id, connector_id, object_class, identity_id, target_uid, lifecycle,
                              situation, observed, dead_at)
    SELECT c.tenant_id, c.id, p_class, CASE WHEN p_owner IS NOT NULL THEN pg_temp.id(p_owner) END, p_uid,
           p_lifecycle, CASE WHEN p_owner IS NOT NULL THEN 'linked' END, p_observed,
           CASE WHEN p_lifecycle IN ('corpse', 'tombstone') THEN now() END
      FROM xprov.connectors c WHERE c.id = pg_temp.id(p_conn)
    RETURNING id
$$;

-- correlate as "uid match_type" lines, best first
CREATE FUNCTION pg_temp.acct(p_conn text, p_input jsonb, p_tenant text DEFAULT 't1') RETURNS text
LANGUAGE sql AS $$
    SELECT string_agg(coalesce(uid, '-') || ' ' || match_type, ', ' ORDER BY confidence DESC, uid)
      FROM xprov.correlate(pg_temp.id(p_tenant), pg_temp.id(p_conn), p_input)
$$;

-- ---------------------------------------------------------------- contract
SELECT has_table('xprov', 'shadow', 'table xprov.shadow exists');
SELECT has_view('xprov', 'shadows', 'view xprov.shadows exists');
SELECT has_view('xprov', 'shadow_pending_operations', 'view xprov.shadow_pending_operations exists');
SELECT has_view('xprov', 'correlation_cases', 'view xprov.correlation_cases exists');
SELECT has_view('xprov', 'correlation_decisions', 'view xprov.correlation_decisions exists');
SELECT has_function('xprov', 'correlate', ARRAY['uuid', 'uuid', 'jsonb', 'text'], 'correlate(tenant, connector, attributes, object_class) exists');
SELECT has_function('xprov', 'resolve_case', ARRAY['uuid', 'text', 'uuid', 'text'], 'resolve_case exists');
SELECT has_function('xprov', 'purge_tombstones', ARRAY['interval'], 'purge_tombstones exists');
SELECT columns_are('xprov', 'shadows', ARRAY['id', 'tenant_id', 'connector_id', 'object_class', 'identity_id',
       'target_uid', 'subject', 'lifecycle', 'state', 'situation', 'observed', 'observed_at', 'expected',
       'version', 'exclusive', 'pending_operations', 'created_at', 'updated_at', 'dead_at'],
       'xprov.shadows has its columns');
SELECT is((SELECT proretset FROM pg_proc WHERE oid = 'xprov.correlate(uuid,uuid,jsonb,text)'::regprocedure), true,
          'correlate returns a set of matches');

-- ---------------------------------------------------------------- constraints
SELECT lives_ok($$SELECT pg_temp.shadow('c1', 'u1', '{}')$$, 'a live shadow for account u1');
SELECT throws_ok($$SELECT pg_temp.shadow('c1', 'u1', '{}')$$, '23505', NULL,
                 'a second live shadow for the same account is refused');
SELECT throws_ok($$SELECT pg_temp.shadow('c1', 'u1', '{}', NULL, 'reaping')$$, '23505', NULL,
                 'a reaping shadow counts as alive too');
SELECT lives_ok($$SELECT pg_temp.shadow('c1', 'u1', '{}', NULL, 'tombstone')$$,
                'a tombstone of the same account does not conflict');
SELECT lives_ok($$SELECT pg_temp.shadow('c1', 'u1', '{}', NULL, 'tombstone')$$,
                'nor does a second tombstone (a re-created account gets a new shadow each time)');
SELECT lives_ok($$SELECT pg_temp.shadow('c2', 'u1', '{}')$$, 'the same uid on another connector is another account');
SELECT lives_ok($$SELECT pg_temp.shadow('c1', 'u1', '{}', NULL, 'live', 'group')$$,
                'the same uid in another object class is another account');
SELECT lives_ok($$SELECT pg_temp.shadow('c1', 'u2', '{}', 'ada')$$, 'ada owns account u2');
SELECT throws_ok($$SELECT pg_temp.shadow('c1', 'u3', '{}', 'ada')$$, '23505', NULL,
                 'a second live account of the same owner on the same connector is refused');
SELECT lives_ok($$UPDATE xprov.shadow SET exclusive = false WHERE target_uid = 'u2';
                  INSERT INTO xprov.shadow (tenant_id, connector_id, object_class, identity_id, target_uid,
                                            lifecycle, exclusive)
                  VALUES (pg_temp.id('t1'), pg_temp.id('c1'), 'user', pg_temp.id('ada'), 'u3', 'live', false)$$,
                'several accounts per owner where the connector allows them (exclusive false)');
SELECT throws_ok($$INSERT INTO xprov.shadow (tenant_id, connector_id, object_class, lane_id, lifecycle)
                   VALUES (pg_temp.id('t1'), pg_temp.id('c1'), 'user', -7, 'conceived'),
                          (pg_temp.id('t1'), pg_temp.id('c1'), 'user', -7, 'conceived')$$, '23505', NULL,
                 'two shadows alive for one subject are refused');
SELECT throws_ok($$SELECT pg_temp.shadow('c1', NULL, '{}')$$, '23514', NULL, 'a live shadow needs a target uid');
SELECT throws_ok($$INSERT INTO xprov.shadow (tenant_id, connector_id, object_class, target_uid, lifecycle)
                   VALUES (pg_temp.id('t1'), pg_temp.id('c1'), 'user', 'u9', 'tombstone')$$, '23514', NULL,
                 'a tombstone needs dead_at');
SELECT throws_ok($$SELECT pg_temp.shadow('c1', 'u9', '{}', NULL, 'zombie')$$, '23514', NULL, 'unknown lifecycle states are refused');
SELECT throws_ok($$UPDATE xprov.shadow SET situation = 'confused' WHERE target_uid = 'u2'$$, '23514', NULL,
                 'unknown situations are refused');

-- ---------------------------------------------------------------- the shadows view
SELECT FROM unnest(ARRAY['proposed', 'gestating', 'reaping', 'corpse']) l,
            LATERAL pg_temp.shadow('c2', 's-' || l, '{}', NULL, l);
INSERT INTO xprov.shadow (tenant_id, connector_id, object_class, lifecycle)
VALUES (pg_temp.id('t1'), pg_temp.id('c2'), 'user', 'conceived');
SELECT results_eq($$SELECT lifecycle, state FROM xprov.shadows WHERE connector_id = pg_temp.id('c2')
                    ORDER BY lifecycle$$,
                  $$VALUES ('conceived', 'pending'), ('corpse', 'dead'), ('gestating', 'active'), ('live', 'active'),
                           ('proposed', 'pending'), ('reaping', 'pending')$$,
                  'the coarse state follows the lifecycle');
SELECT is((SELECT expected FROM xprov.shadows WHERE target_uid = 'u2'), '{}'::jsonb, 'expected defaults to {}');

-- pending operations: a view over the queue
SELECT FROM pg_temp.enq('p1', 'ce', 'acct-p');
SELECT FROM pg_temp.enq('p2', 'ce', 'acct-p');
INSERT INTO xprov.shadow (tenant_id, connector_id, object_class, lane_id, target_uid, lifecycle)
SELECT s.tenant_id, s.connector_id, s.object_class, s.lane_id, 'acct-p', 'live'
  FROM xprov.subject s WHERE s.connector_id = pg_temp.id('ce') AND s.subject = 't:acct-p';
SELECT is((SELECT pending_operations FROM xprov.shadows WHERE target_uid = 'acct-p'), 2::bigint,
          'a shadow shows its subject''s two unfinished operations');
SELECT is((SELECT string_agg(pg_temp.nm(operation_id) || ' ' || p.status, ', ' ORDER BY p.created_at, p.operation_id)
             FROM xprov.shadow_pending_operations p JOIN xprov.shadows s ON s.id = p.shadow_id
            WHERE s.target_uid = 'acct-p'), 'p1 pending, p2 pending', 'shadow_pending_operations lists them');
SELECT is(pg_temp.drain(), 2, 'both are completed');
SELECT is((SELECT pending_operations FROM xprov.shadows WHERE target_uid = 'acct-p'), 0::bigint,
          'no pending operations once they finished (nothing to drift)');

-- ---------------------------------------------------------------- purge_tombstones
UPDATE xprov.shadow SET dead_at = now() - interval '8 days' WHERE target_uid = 's-corpse';
SELECT is(xprov.purge_tombstones(), 1::bigint, 'purge_tombstones removes the dead shadow older than 7 days');
UPDATE xprov.shadow SET dead_at = now() - interval '1 hour' WHERE target_uid = 'u1' AND dead_at IS NOT NULL;
SELECT is(xprov.purge_tombstones('1 minute'), 2::bigint, 'and with a shorter retention the two u1 tombstones');
SELECT is((SELECT count(*) FROM xprov.shadow WHERE dead_at IS NULL AND connector_id = pg_temp.id('c1')), 4::bigint,
          'live shadows are never purged');
SELECT throws_ok($$SELECT xprov.purge_tombstones('-1 day')$$, '22023', NULL, 'a negative retention is refused');
SELECT throws_ok($$SELECT xprov.purge_tombstones(NULL)$$, '22023', NULL, 'a NULL retention is refused');

-- ---------------------------------------------------------------- correlate: the account direction
CREATE TEMP TABLE people (id uuid PRIMARY KEY, tenant uuid NOT NULL, email text, last text, login text);
INSERT INTO people VALUES
    (pg_temp.id('ada'), pg_temp.id('t1'), 'Ada.Lovelace@example.com', 'Lovelace', 'alovelace'),
    (pg_temp.id('grace'), pg_temp.id('t1'), 'grace@example.com', 'Hôpper', 'ghopper'),
    (pg_temp.id('alan'), pg_temp.id('t1'), 'alan@example.com', 'Turing', 'aturing'),
    (pg_temp.id('zed'), pg_temp.id('t1'), 'twin@example.com', 'Zed', 'zed');
SELECT xprov.set_identity_source(pg_temp.id('t1'), 'people', '{"tenant_column": "tenant"}');
SELECT FROM pg_temp.put('cx', xprov.add_connector(pg_temp.id('t1'), 'cx', 'scim2', 'http://127.0.0.1:9/'));
SELECT FROM pg_temp.put('cy', xprov.add_connector(pg_temp.id('t1'), 'cy', 'scim2', 'http://127.0.0.1:9/'));
SELECT FROM pg_temp.shadow('cx', 'x-ada', '{"userName": "alovelace", "emails": [{"value": "ADA.LOVELACE@example.com"}], "name": {"familyName": "Lovelace"}}');
SELECT FROM pg_temp.shadow('cx', 'x-grace', '{"userName": "ghopper", "emails": [{"value": "grace@example.com"}], "name": {"familyName": "Hopper"}}');
SELECT FROM pg_temp.shadow('cx', 'x-alan', '{"userName": "aturing", "emails": [{"value": "alan@example.com"}], "name": {"familyName": "Turing"}}', 'alan');
SELECT FROM pg_temp.shadow('cy', 'y-1', '{"emails": [{"value": "twin@example.com"}]}');
SELECT FROM pg_temp.shadow('cy', 'y-2', '{"emails": [{"value": "Twin@Example.com"}]}');
SELECT FROM pg_temp.shadow('cx', 'x-dead', '{"userName": "ghopper"}', NULL, 'tombstone');

SELECT is(pg_temp.acct('cx', '{"login": "alovelace"}'), '- none', 'no rules: nothing matches');
SELECT xprov.add_correlation_rule(pg_temp.id('cx'), 'user', '{"name": "login", "items": [{"target": "userName", "identity": "login", "match": "exact"}]}');
SELECT is(pg_temp.acct('cx', '{"login": "alovelace"}'), 'x-ada definite', 'exact: the account whose userName is the login');
SELECT is(pg_temp.acct('cx', '{"login": "ALovelace"}'), '- none', 'exact: another case is no match');
SELECT is(pg_temp.acct('cx', '{"userName": "ghopper"}'), 'x-grace definite',
          'values may come by their target path (the account as it would be created); tombstones are never matched');
SELECT is(pg_temp.acct('cx', '{"login": "aturing"}'), 'x-alan definite', 'an account linked to someone is still found ...');
SELECT is((SELECT evidence->>'linked_identity' FROM xprov.correlate(pg_temp.id('t1'), pg_temp.id('cx'), '{"login": "aturing"}')),
          pg_temp.id('alan')::text, '... and its evidence names its owner');
SELECT is((SELECT evidence->'rules'->0->>'name' FROM xprov.correlate(pg_temp.id('t1'), pg_temp.id('cx'), '{"login": "alovelace"}')),
          'login', 'the evidence names the rule that matched');
UPDATE xprov.correlation_rule SET enabled = false WHERE connector_id = pg_temp.id('cx');
SELECT xprov.add_correlation_rule(pg_temp.id('cx'), 'user', '{"items": [{"target": "emails.0.value", "identity": "email", "match": "case_insensitive"}]}');
SELECT is(pg_temp.acct('cx', '{"email": "ada.lovelace@EXAMPLE.com"}'), 'x-ada definite', 'case_insensitive: e-mail in any case');
UPDATE xprov.correlation_rule SET enabled = false WHERE connector_id = pg_temp.id('cx');
SELECT xprov.add_correlation_rule(pg_temp.id('cx'), 'user', '{"items": [{"target": "name.familyName", "identity": "last", "match": "normalized"}]}');
SELECT is(pg_temp.acct('cx', '{"last": "  HÔPPER "}'), 'x-grace definite', 'normalized: case, accents and spaces ignored');
UPDATE xprov.correlation_rule SET enabled = false WHERE connector_id = pg_temp.id('cx');
SELECT xprov.add_correlation_rule(pg_temp.id('cx'), 'user', '{"items": [{"target": "name.familyName", "identity": "last", "match": "fuzzy", "min_score": 0.3}]}');
SELECT is(pg_temp.acct('cx', '{"last": "Lovelase"}'), 'x-ada candidate', 'fuzzy: a near miss is a candidate below the definite threshold (1.0)');
SELECT ok((SELECT confidence > 0.3 AND confidence < 1 FROM xprov.correlate(pg_temp.id('t1'), pg_temp.id('cx'), '{"last": "Lovelase"}')),
          'fuzzy: its confidence is the trigram similarity');
SELECT is(pg_temp.acct('cx', '{"last": "Qwertyuiop"}'), '- none', 'fuzzy: nothing similar, nothing matched');
SELECT xprov.set_correlation_thresholds(pg_temp.id('cx'), 0.4, 0.1);
SELECT is(pg_temp.acct('cx', '{"last": "Lovelase"}'), 'x-ada definite', 'fuzzy: definite once the threshold is lowered');
SELECT xprov.set_correlation_thresholds(pg_temp.id('cx'), 1.0, 0.95);
SELECT is(pg_temp.acct('cx', '{"last": "Lovelase"}'), '- none', 'below the candidate threshold: none');
SELECT xprov.add_correlation_rule(pg_temp.id('cy'), 'user', '{"items": [{"target": "emails.0.value", "identity": "email", "match": "case_insensitive"}]}');
SELECT is(pg_temp.acct('cy', '{"email": "twin@example.com"}'), 'y-1 candidate, y-2 candidate',
          'two accounts match definitely: both are candidates (ambiguous), none is definite');
SELECT ok((SELECT bool_and((evidence->>'ambiguous')::boolean) FROM xprov.correlate(pg_temp.id('t1'), pg_temp.id('cy'), '{"email": "twin@example.com"}')),
          'the evidence says ambiguous');

-- the identity's own data and decisions
SELECT xprov.set_correlation_thresholds(pg_temp.id('cx'), 1.0, 0.0);
UPDATE xprov.correlation_rule SET enabled = false WHERE connector_id = pg_temp.id('cx');
SELECT xprov.add_correlation_rule(pg_temp.id('cx'), 'user', '{"items": [{"target": "emails.0.value", "identity": "email", "match": "case_insensitive"}]}');
SELECT is(pg_temp.acct('cx', jsonb_build_object('identity_id', pg_temp.id('ada'))), 'x-ada definite',
          'an identity id alone: its attributes come from the identity source');
SELECT is(pg_temp.acct('cx', jsonb_build_object('id', pg_temp.id('alan'))), 'x-alan existing_link',
          'the identity''s linked account is its existing link (id column name works too)');
INSERT INTO xprov.correlation_decision (connector_id, object_class, target_uid, identity_id, tenant_id, linked)
VALUES (pg_temp.id('cx'), 'user', 'x-ada', pg_temp.id('ada'), pg_temp.id('t1'), false);
SELECT is(pg_temp.acct('cx', jsonb_build_object('identity_id', pg_temp.id('ada'))), '- none',
          'a rejected pairing is never proposed again');
SELECT is((SELECT count(*)::int FROM xprov.correlate_owner(pg_temp.id('t1'), pg_temp.id('cx'),
               '{"id": "x-ada", "emails": [{"value": "ada.lovelace@example.com"}]}') WHERE identity_id = pg_temp.id('ada')), 0,
          'nor in the owner direction');
INSERT INTO xprov.correlation_decision (connector_id, object_class, target_uid, identity_id, tenant_id, linked)
VALUES (pg_temp.id('cx'), 'user', 'x-grace', pg_temp.id('zed'), pg_temp.id('t1'), true);
SELECT is(pg_temp.acct('cx', jsonb_build_object('identity_id', pg_temp.id('zed'))), 'x-grace existing_link',
          'a confirmed pairing is used as an existing link');
SELECT is((SELECT pg_temp.nm(identity_id) || ' ' || match_type FROM xprov.correlate_owner(pg_temp.id('t1'), pg_temp.id('cx'),
               '{"id": "x-grace"}')), 'zed existing_link', 'in both directions');

-- bad input
SELECT throws_ok($$SELECT * FROM xprov.correlate(NULL, pg_temp.id('cx'), '{}')$$, '22004', NULL, 'correlate: NULL tenant refused');
SELECT throws_ok($$SELECT * FROM xprov.correlate(pg_temp.id('t1'), pg_temp.id('cx'), '[]')$$, '22023', NULL, 'correlate: attributes must be an object');
SELECT throws_ok($$SELECT * FROM xprov.correlate(pg_temp.id('t1'), pg_temp.id('cx'), NULL)$$, '22023', NULL, 'correlate: NULL attributes refused');
SELECT throws_ok($$SELECT * FROM xprov.correlate(pg_temp.id('t1'), gen_random_uuid(), '{}')$$, '42704', NULL, 'correlate: unknown connector');
SELECT throws_ok($$SELECT * FROM xprov.correlate(pg_temp.id('t2'), pg_temp.id('cx'), '{}')$$, '22023', NULL,
                 'correlate: another tenant''s connector is refused');
SELECT is(pg_temp.acct('cx', '{"identity_id": "not-a-uuid''; DROP TABLE people; --"}'), '- none',
          'correlate: an identity id that is not a uuid is just not an identity');

-- ---------------------------------------------------------------- the worker's create-path question
-- operations of an external connector stand in for the worker's (the function reads the queue only)
CREATE FUNCTION pg_temp.create_op(p_name text, p_who text, p_conn text DEFAULT 'cx') RETURNS uuid
LANGUAGE sql AS $$
    SELECT pg_temp.put(p_name, xprov.enqueue(pg_temp.id('t1'), pg_temp.id(p_conn), pg_temp.id(p_who), 'create', 'user',
                                             '{"userName": "whoever"}'))
$$;
CREATE FUNCTION pg_temp.ask(p_op text, p_found text DEFAULT NULL) RETURNS jsonb
LANGUAGE sql AS $$ SELECT xprov._correlate_create(pg_temp.id(p_op), NULL, p_found, NULL) $$;
SELECT FROM pg_temp.create_op('q-alan', 'alan');
SELECT is(pg_temp.ask('q-alan')->>'verdict' || ' ' || (pg_temp.ask('q-alan')->>'uid') || ' ' || (pg_temp.ask('q-alan')->>'match_type'),
          'link x-alan existing_link', 'create path: the identity''s live account is linked (an update, not a create)');
SELECT FROM pg_temp.create_op('q-zed', 'zed');
SELECT is(pg_temp.ask('q-zed')->>'verdict' || ' ' || (pg_temp.ask('q-zed')->>'match_type'), 'link manual',
          'create path: a confirmed decision links');
SELECT FROM pg_temp.create_op('q-grace', 'grace');
SELECT is(pg_temp.ask('q-grace')->>'verdict' || ' ' || (pg_temp.ask('q-grace')->'case'->>'situation'), 'park collision',
          'create path: the only match (x-grace, by e-mail) was confirmed for someone else by a person: collision, park');
SELECT FROM pg_temp.create_op('q-ada', 'ada');
SELECT is(pg_temp.ask('q-ada')->>'verdict', 'create', 'create path: nothing matches (x-ada was rejected): create');
SELECT is(pg_temp.ask('q-ada', 'x-ada')->>'verdict', 'rejected', 'create path: the target''s account was rejected for this identity');
SELECT is(pg_temp.ask('q-ada', 'x-alan')->>'verdict' || ' ' || (pg_temp.ask('q-ada', 'x-alan')->'case'->>'situation'),
          'park collision', 'create path: the target''s account is linked to someone else: collision, park');
SELECT is(pg_temp.ask('q-ada', 'brand-new')->>'verdict', 'link', 'create path: an account nobody holds may be linked');
SELECT FROM pg_temp.put('twin', gen_random_uuid());
INSERT INTO people VALUES (pg_temp.id('twin'), pg_temp.id('t1'), 'twin@example.com', 'Twin', 'twin');
SELECT FROM pg_temp.create_op('q-twin', 'twin', 'cy');
SELECT is(pg_temp.ask('q-twin')->>'verdict' || ' ' || (pg_temp.ask('q-twin')->'case'->>'situation') || ' '
          || jsonb_array_length(pg_temp.ask('q-twin')->'case'->'candidates'),
          'park disputed 2', 'create path: two candidate accounts: disputed, park with both');

-- ---------------------------------------------------------------- parking and resolve_case
-- an external connector's operation leased through dequeue stands in for the worker's lease
CREATE FUNCTION pg_temp.park(p_op text, p_candidates jsonb, p_situation text DEFAULT 'disputed') RETURNS uuid
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM xprov.dequeue(100);
    RETURN pg_temp.put('case-' || p_op, xprov._park(pg_temp.id(p_op), jsonb_build_object('situation', p_situation,
        'reason', 'test', 'candidates', p_candidates), NULL));
END $$;
SELECT FROM pg_temp.put('pa', xprov.enqueue(pg_temp.id('t1'), pg_temp.id('ce'), pg_temp.id('ada'), 'create', 'user', '{}'));
SELECT FROM pg_temp.park('pa', '[{"target_uid": "a1"}, {"target_uid": "a2"}]');
SELECT is(pg_temp.status('pa'), 'parked', 'a parked operation has status parked');
SELECT is((SELECT parked FROM xprov.stats(pg_temp.id('t1'))), 1::bigint, 'stats counts it as parked');
SELECT is((SELECT count(*) FROM xprov.dead_letters WHERE id = pg_temp.id('pa')), 0::bigint, 'it is not a dead letter');
SELECT is((SELECT count(*) FROM xprov.dequeue(100)), 0::bigint, 'it is not handed out while parked');
SELECT matches((SELECT last_error FROM xprov.operations WHERE id = pg_temp.id('pa')),
               '^parked: correlation case [0-9a-f-]{36}: test$', 'last_error names the case');
SELECT is((SELECT outcome FROM xprov.operation_attempts WHERE operation_id = pg_temp.id('pa')), 'parked',
          'the attempt history says parked');
SELECT is((SELECT status || ' ' || origin || ' ' || pg_temp.nm(identity_id) || ' ' || operation_status
             FROM xprov.correlation_cases WHERE id = pg_temp.id('case-pa')),
          'open create ada parked', 'the case is open, names the identity and the parked operation');
SELECT throws_ok($$SELECT xprov.retry(pg_temp.id('pa'))$$, '55000', NULL, 'retry is for dead letters, not parked operations');

SELECT throws_ok($$SELECT xprov.resolve_case(NULL, 'link')$$, '22004', NULL, 'resolve_case: NULL case refused');
SELECT throws_ok($$SELECT xprov.resolve_case(pg_temp.id('case-pa'), NULL)$$, '22004', NULL, 'resolve_case: NULL decision refused');
SELECT throws_ok($$SELECT xprov.resolve_case(pg_temp.id('case-pa'), 'maybe')$$, '22023', NULL, 'resolve_case: unknown decision refused');
SELECT throws_ok($$SELECT xprov.resolve_case(gen_random_uuid(), 'link')$$, '42704', NULL, 'resolve_case: unknown case');
SELECT throws_ok($$SELECT xprov.resolve_case(pg_temp.id('case-pa'), 'link')$$, '22023', NULL,
                 'link with two candidates must name the account');
SELECT throws_ok($$SELECT xprov.resolve_case(pg_temp.id('case-pa'), 'link', target_uid => 'a3')$$, '22023', NULL,
                 'link to an account that is not a candidate is refused');
SELECT lives_ok($$SELECT xprov.resolve_case(pg_temp.id('case-pa'), 'link', target_uid => 'a2')$$, 'link to candidate a2');
SELECT is((SELECT status || ' ' || decision || ' ' || decided_uid || ' ' || pg_temp.nm(decided_identity) || ' ' || decided_by
             FROM xprov.correlation_cases WHERE id = pg_temp.id('case-pa')),
          'resolved link a2 ada ' || current_user, 'the case records the decision and who made it');
SELECT is((SELECT string_agg(target_uid || ' ' || decision, ', ') FROM xprov.correlation_decisions
            WHERE identity_id = pg_temp.id('ada') AND connector_id = pg_temp.id('ce')),
          'a2 confirmed', 'the pairing is kept as a confirmed decision');
SELECT is(pg_temp.status('pa'), 'pending', 'the operation is released');
SELECT is(pg_temp.deqs(), ARRAY['pa'], 'and handed out again');
SELECT is(xprov._correlate_create(pg_temp.id('pa'), NULL)->>'uid', 'a2', 'its next correlation links a2');
SELECT throws_ok($$SELECT xprov.resolve_case(pg_temp.id('case-pa'), 'reject')$$, '55000', NULL, 'a resolved case cannot be resolved again');

SELECT FROM pg_temp.put('pb', xprov.enqueue(pg_temp.id('t1'), pg_temp.id('ce'), pg_temp.id('grace'), 'create', 'user', '{}'));
SELECT FROM pg_temp.park('pb', '[{"target_uid": "b1"}, {"target_uid": "b2"}]');
SELECT lives_ok($$SELECT xprov.resolve_case(pg_temp.id('case-pb'), 'reject')$$, 'reject');
SELECT is(pg_temp.status('pb'), 'skipped', 'reject skips the parked operation');
SELECT matches((SELECT last_error FROM xprov.operations WHERE id = pg_temp.id('pb')), 'correlation case .* rejected',
               'and says why');
SELECT is((SELECT string_agg(target_uid || ' ' || decision, ', ' ORDER BY target_uid) FROM xprov.correlation_decisions
            WHERE identity_id = pg_temp.id('grace') AND connector_id = pg_temp.id('ce')),
          'b1 rejected, b2 rejected', 'every candidate pairing is rejected for good');

SELECT FROM pg_temp.put('pc', xprov.enqueue(pg_temp.id('t1'), pg_temp.id('ce'), pg_temp.id('zed'), 'create', 'user', '{}'));
SELECT FROM pg_temp.park('pc', '[{"target_uid": "c1"}]');
SELECT lives_ok($$SELECT xprov.resolve_case(pg_temp.id('case-pc'), 'create_new')$$, 'create_new');
SELECT is(pg_temp.status('pc') || ' ' || (SELECT decision FROM xprov.correlation_decisions
                                            WHERE identity_id = pg_temp.id('zed') AND target_uid = 'c1'),
          'pending rejected', 'create_new rejects the candidate and releases the operation to create');

-- an account held by someone else cannot be linked by a decision either
INSERT INTO xprov.shadow (tenant_id, connector_id, object_class, identity_id, target_uid, lifecycle)
VALUES (pg_temp.id('t1'), pg_temp.id('ce'), 'user', pg_temp.id('grace'), 'held', 'live');
SELECT FROM pg_temp.put('pd', xprov.enqueue(pg_temp.id('t1'), pg_temp.id('ce'), pg_temp.id('alan'), 'create', 'user', '{}'));
SELECT FROM pg_temp.park('pd', '[{"target_uid": "held"}]', 'collision');
SELECT throws_ok($$SELECT xprov.resolve_case(pg_temp.id('case-pd'), 'link')$$, '55000', NULL,
                 'linking an account owned by another identity is refused (no takeover)');
SELECT lives_ok($$SELECT xprov.resolve_case(pg_temp.id('case-pd'), 'link', pg_temp.id('grace'))$$,
                'link naming the account''s real owner');
SELECT is((SELECT string_agg(pg_temp.nm(identity_id) || ' ' || decision, ', ' ORDER BY decision) FROM xprov.correlation_decisions
            WHERE target_uid = 'held'), 'grace confirmed, alan rejected',
          'the owner is confirmed and the asking identity rejected');

-- a case about an account's owner (reconciliation's question)
INSERT INTO xprov.shadow (tenant_id, connector_id, object_class, target_uid, lifecycle)
VALUES (pg_temp.id('t1'), pg_temp.id('ce'), 'user', 'orphan-1', 'live');
INSERT INTO xprov.correlation_case (id, tenant_id, connector_id, object_class, origin, target_uid, situation, reason, candidates)
VALUES (pg_temp.put('case-r', gen_random_uuid()), pg_temp.id('t1'), pg_temp.id('ce'), 'user', 'reconciliation',
        'orphan-1', 'disputed', 'test', jsonb_build_array(jsonb_build_object('identity_id', pg_temp.id('twin'))));
SELECT throws_ok($$SELECT xprov.resolve_case(pg_temp.id('case-r'), 'link')$$, '22004', NULL,
                 'an owner case needs the identity to link');
SELECT lives_ok($$SELECT xprov.resolve_case(pg_temp.id('case-r'), 'link', pg_temp.id('twin'))$$, 'link the owner');
SELECT is((SELECT pg_temp.nm(identity_id) || ' ' || situation FROM xprov.shadows WHERE target_uid = 'orphan-1'),
          'twin linked', 'the shadow gets its owner');

-- ---------------------------------------------------------------- expected attributes after an operation
SELECT is(xprov._merge_expected('{"a": 1, "ext": {"dept": "x", "no": "7"}}', '{"ext": {"dept": "y"}}'),
          '{"a": 1, "ext": {"dept": "y", "no": "7"}}'::jsonb,
          'an extension''s sub-attribute changes alone: its others stay expected');
SELECT is(jsonb_strip_nulls(xprov._merge_expected('{"a": 1, "b": 2, "name": {"g": "A", "f": "B"}}',
                                                  '{"b": null, "name": {"g": null}}')),
          '{"a": 1, "name": {"f": "B"}}'::jsonb, 'a JSON null removes, at either level');
SELECT is(xprov._merge_expected('{"emails": [{"value": "a"}], "x": "s"}', '{"emails": [{"value": "b"}], "x": {"o": 1}}'),
          '{"emails": [{"value": "b"}], "x": {"o": 1}}'::jsonb, 'arrays and values of another type are replaced');
SELECT is(xprov._merge_expected('{"a": 1}', '{}'), '{"a": 1}'::jsonb, 'no change, nothing changes');
SELECT is(xprov._merge_expected('{"a": {"x": 1}}', NULL), '{"a": {"x": 1}}'::jsonb, 'NULL changes change nothing');
SELECT is(xprov._merge_expected(NULL, '{"a": 1}'), NULL, 'nothing expected stays NULL (as expected || changes)');
SELECT is(xprov._merge_expected('{}', '{"n": {"g": 1}, "a": [1]}'), '{"a": [1], "n": {"g": 1}}'::jsonb,
          'into nothing expected: the changes');
SELECT is(xprov._merge_expected('{"a": 1, "a2": {"k": 1}}', '{"a2": {"k": 2, "j": {"deep": true}}, "a": 3}'),
          '{"a": 3, "a2": {"j": {"deep": true}, "k": 2}}'::jsonb, 'one level merged, deeper replaced, the later value wins');
SELECT throws_ok($$SELECT xprov._merge_expected('[1]', '{}')$$, '22023', 'expected must be a JSON object',
                 'expected that is not an object is refused');
SELECT throws_ok($$SELECT xprov._merge_expected('{}', '"x"')$$, '22023', 'changes must be a JSON object',
                 'changes that are not an object are refused');

-- a shadow's id: a UUID version 7, in time order (its index entry lands on the rightmost page)
SELECT col_default_is('xprov', 'shadow', 'id', 'xprov._new_id()', 'shadows take time-ordered ids');
SELECT is((SELECT count(*) FROM (SELECT xprov._new_id()::text AS id FROM generate_series(1, 1000)) g
            WHERE id ~ '^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$'),
          1000::bigint, 'version 7, RFC 4122 variant');
SELECT ok((SELECT a < b FROM (SELECT xprov._new_id() AS a) x,
                             LATERAL (SELECT pg_sleep(0.002), xprov._new_id() AS b) y),
          'an id made later sorts after');

SELECT * FROM finish();
ROLLBACK;
