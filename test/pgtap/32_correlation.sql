-- Correlation, owner direction: xprov.set_identity_source, xprov.add_correlation_rule,
-- xprov.set_correlation_thresholds, xprov.correlate_owner, xprov.normalize_text and the
-- xprov.correlation_rules view (README "Correlation").  Every match kind, weights, tiers,
-- thresholds, ambiguity, tenant isolation, existing links, and every rejected input.
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS xprov;
CREATE EXTENSION IF NOT EXISTS pg_trgm;

BEGIN;
SELECT plan(61);
\ir common.psql

SELECT FROM pg_temp.tenant('t1');
SELECT FROM pg_temp.tenant('t2');
SELECT FROM pg_temp.conn('c1', 't1', 'scim2');
SELECT FROM pg_temp.conn('c2', 't2', 'scim2');
SELECT FROM pg_temp.conn('c3', 't1', 'scim2');

-- the application's identities: both tenants in one table, a jsonb column of extras
CREATE TEMP TABLE people (id uuid PRIMARY KEY, tenant uuid NOT NULL, email text, first text,
                          last text, extra jsonb, age integer);
INSERT INTO people VALUES
    (pg_temp.put('ada', gen_random_uuid()), pg_temp.id('t1'), 'Ada.Lovelace@example.com', 'Ada', 'Lovelace', '{"employee_no": "E1"}', 36),
    (pg_temp.put('grace', gen_random_uuid()), pg_temp.id('t1'), 'grace@example.com', 'Grâce', 'Hopper', '{"employee_no": "E2"}', 85),
    (pg_temp.put('alan', gen_random_uuid()), pg_temp.id('t1'), 'alan@example.com', 'Alan', 'Turing', '{"employee_no": "E3"}', 41),
    (pg_temp.put('ada2', gen_random_uuid()), pg_temp.id('t2'), 'ada.lovelace@example.com', 'Ada', 'Lovelace', '{"employee_no": "E1"}', 36);
CREATE TEMP TABLE bare (id uuid PRIMARY KEY, email text);
CREATE TEMP TABLE wrong_id (id integer PRIMARY KEY, email text);
CREATE TEMP SEQUENCE not_a_table;

-- contract
SELECT has_function('xprov', 'set_identity_source', ARRAY['uuid', 'regclass', 'jsonb'], 'set_identity_source exists');
SELECT has_function('xprov', 'add_correlation_rule', ARRAY['uuid', 'text', 'jsonb'], 'add_correlation_rule exists');
SELECT function_returns('xprov', 'add_correlation_rule', ARRAY['uuid', 'text', 'jsonb'], 'uuid', 'add_correlation_rule returns uuid');
SELECT has_function('xprov', 'set_correlation_thresholds', ARRAY['uuid', 'double precision', 'double precision'], 'set_correlation_thresholds exists');
SELECT has_function('xprov', 'correlate_owner', ARRAY['uuid', 'uuid', 'jsonb', 'text'], 'correlate_owner exists');
SELECT has_view('xprov', 'correlation_rules', 'view correlation_rules exists');

-- normalize_text: lower case, trimmed, accents stripped, white space collapsed
SELECT is(xprov.normalize_text(E'  Grâce \t HOPPER  '), 'grace hopper', 'normalize_text strips case, accents and extra space');
SELECT is(xprov.normalize_text('Zoë Ångström-Ñúñez'), 'zoe angstrom-nunez', 'normalize_text strips combining marks');
SELECT ok((SELECT provolatile = 'i' FROM pg_proc WHERE oid = 'xprov.normalize_text(text)'::regprocedure),
          'normalize_text is immutable (usable in an expression index)');

-- set_identity_source: bad input
SELECT throws_ok(format($$SELECT xprov.set_identity_source(NULL, 'people', '{}')$$), '22004', NULL, 'identity source: NULL tenant refused');
SELECT throws_ok(format($$SELECT xprov.set_identity_source(%L, 'not_a_table', '{}')$$, pg_temp.id('t1')), '42809', NULL, 'identity source: a sequence is refused');
SELECT throws_ok(format($$SELECT xprov.set_identity_source(%L, 'wrong_id', '{}')$$, pg_temp.id('t1')), '22023', NULL, 'identity source: the id column must be uuid');
SELECT throws_ok(format($$SELECT xprov.set_identity_source(%L, 'people', '{"id_column": "nope"}')$$, pg_temp.id('t1')), '22023', NULL, 'identity source: a missing id column is refused');
SELECT throws_ok(format($$SELECT xprov.set_identity_source(%L, 'people', '{"tenant_column": "email"}')$$, pg_temp.id('t1')), '22023', NULL, 'identity source: the tenant column must be uuid');
SELECT throws_ok(format($$SELECT xprov.set_identity_source(%L, 'people', '{"attributes_column": "email"}')$$, pg_temp.id('t1')), '22023', NULL, 'identity source: the attributes column must be jsonb');
SELECT throws_ok(format($$SELECT xprov.set_identity_source(%L, 'people', '{"columns": {"mail": "no_such_column"}}')$$, pg_temp.id('t1')), '42703', NULL, 'identity source: a mapping to a missing column is refused');
SELECT throws_ok(format($$SELECT xprov.set_identity_source(%L, 'people', '{"colums": {}}')$$, pg_temp.id('t1')), '22023', NULL, 'identity source: unknown options are refused');
SELECT throws_ok(format($$SELECT xprov.set_identity_source(%L, 'people', '[]')$$, pg_temp.id('t1')), '22023', NULL, 'identity source: options must be an object');

-- rules need an identity source first
SELECT throws_ok(format($$SELECT xprov.add_correlation_rule(%L, 'user', '{"items": [{"target": "userName", "identity": "email", "match": "exact"}]}')$$, pg_temp.id('c1')),
                 '55000', NULL, 'a rule before the tenant has an identity source is refused');

SELECT lives_ok(format($$SELECT xprov.set_identity_source(%L, 'people', '{"tenant_column": "tenant", "attributes_column": "extra", "columns": {"given": "first", "family": "last"}}')$$, pg_temp.id('t1')),
                'tenant t1 registers people (tenant column, jsonb extras, two mapped names)');
SELECT lives_ok(format($$SELECT xprov.set_identity_source(%L, 'people', '{"tenant_column": "tenant", "attributes_column": "extra"}')$$, pg_temp.id('t2')),
                'tenant t2 registers the same relation');
SELECT is((SELECT columns FROM xprov.identity_source WHERE tenant_id = pg_temp.id('t1')), '{"given": "first", "family": "last"}'::jsonb,
          'the mapping is kept');

-- add_correlation_rule: bad input
SELECT throws_ok(format($$SELECT xprov.add_correlation_rule(%L, 'user', '{"items": []}')$$, pg_temp.id('c1')), '22023', NULL, 'a rule without items is refused');
SELECT throws_ok(format($$SELECT xprov.add_correlation_rule(%L, 'user', '{"items": [{"target": "userName", "identity": "email", "match": "exact"}], "prio": 1}')$$, pg_temp.id('c1')), '22023', NULL, 'unknown rule keys are refused');
SELECT throws_ok(format($$SELECT xprov.add_correlation_rule(%L, 'user', '{"items": [{"target": "userName", "identity": "email", "match": "soundex"}]}')$$, pg_temp.id('c1')), '22023', NULL, 'an unknown match kind is refused');
SELECT throws_ok(format($$SELECT xprov.add_correlation_rule(%L, 'user', '{"items": [{"target": "userName", "identity": "email"}]}')$$, pg_temp.id('c1')), '22023', NULL, 'an item without a match kind is refused');
SELECT throws_ok(format($$SELECT xprov.add_correlation_rule(%L, 'user', '{"items": [{"identity": "email", "match": "exact"}]}')$$, pg_temp.id('c1')), '22023', NULL, 'an item without a target is refused');
SELECT throws_ok(format($$SELECT xprov.add_correlation_rule(%L, 'user', '{"items": [{"target": "userName", "identity": "email", "match": "exact", "min_score": 0.5}]}')$$, pg_temp.id('c1')), '22023', NULL, 'min_score on a non-fuzzy item is refused');
SELECT throws_ok(format($$SELECT xprov.add_correlation_rule(%L, 'user', '{"items": [{"target": "userName", "identity": "email", "match": "fuzzy", "min_score": 1.5}]}')$$, pg_temp.id('c1')), '22023', NULL, 'min_score above 1 is refused');
SELECT throws_ok(format($$SELECT xprov.add_correlation_rule(%L, 'user', '{"weight": 0, "items": [{"target": "userName", "identity": "email", "match": "exact"}]}')$$, pg_temp.id('c1')), '22023', NULL, 'weight 0 is refused');
SELECT throws_ok(format($$SELECT xprov.add_correlation_rule(%L, 'user', '{"tier": 0, "items": [{"target": "userName", "identity": "email", "match": "exact"}]}')$$, pg_temp.id('c1')), '22023', NULL, 'tier 0 is refused');
SELECT throws_ok(format($$SELECT xprov.add_correlation_rule(%L, '', '{"items": [{"target": "userName", "identity": "email", "match": "exact"}]}')$$, pg_temp.id('c1')), '22023', NULL, 'an empty object class is refused');
SELECT throws_ok($$SELECT xprov.add_correlation_rule(gen_random_uuid(), 'user', '{"items": [{"target": "userName", "identity": "email", "match": "exact"}]}')$$, '42704', NULL, 'an unknown connector is refused');
SELECT throws_ok(format($$SELECT xprov.add_correlation_rule(%L, 'user', NULL)$$, pg_temp.id('c1')), '22004', NULL, 'a NULL rule is refused');

-- an identity attribute must exist when the source has no jsonb extras
CREATE TEMP TABLE t3 AS SELECT pg_temp.tenant('t3') AS id;
SELECT FROM pg_temp.conn('c4', 't3', 'scim2');
SELECT xprov.set_identity_source(pg_temp.id('t3'), 'bare', '{}');
SELECT throws_ok(format($$SELECT xprov.add_correlation_rule(%L, 'user', '{"items": [{"target": "userName", "identity": "phone", "match": "exact"}]}')$$, pg_temp.id('c4')), '42703', NULL, 'an unknown identity attribute is refused');

-- thresholds
SELECT throws_ok(format($$SELECT xprov.set_correlation_thresholds(%L, 0.5, 0.8)$$, pg_temp.id('c1')), '22023', NULL, 'thresholds out of order are refused');
SELECT throws_ok(format($$SELECT xprov.set_correlation_thresholds(%L, 0.7, 0.7)$$, pg_temp.id('c1')), '22023', NULL, 'equal thresholds are refused');
SELECT throws_ok(format($$SELECT xprov.set_correlation_thresholds(%L, 1.2, 0.5)$$, pg_temp.id('c1')), '22023', NULL, 'definite above 1 is refused');
SELECT throws_ok($$SELECT xprov.set_correlation_thresholds(gen_random_uuid(), 0.9, 0.5)$$, '42704', NULL, 'thresholds for an unknown connector are refused');

-- the rules of c1: tier 1 e-mail (case-insensitive) and employee number (exact, jsonb
-- extra, SCIM enterprise URN path); tier 2 given name normalized x family name fuzzy
SELECT pg_temp.put('r_mail', xprov.add_correlation_rule(pg_temp.id('c1'), 'user',
    '{"name": "mail", "items": [{"target": "emails.0.value", "identity": "email", "match": "case_insensitive"}]}'));
SELECT pg_temp.put('r_empno', xprov.add_correlation_rule(pg_temp.id('c1'), 'user',
    '{"name": "empno", "items": [{"target": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber", "identity": "employee_no", "match": "exact"}]}'));
SELECT pg_temp.put('r_name', xprov.add_correlation_rule(pg_temp.id('c1'), 'user',
    '{"name": "name", "tier": 2, "weight": 0.5, "items": [{"target": "name.givenName", "identity": "given", "match": "normalized"}, {"target": "name.familyName", "identity": "family", "match": "fuzzy", "min_score": 0.4}]}'));
SELECT is((SELECT count(*)::int FROM xprov.correlation_rules WHERE connector_id = pg_temp.id('c1')), 3, 'the view lists the three rules');
SELECT is((SELECT definite || '/' || candidate FROM xprov.correlation_rules WHERE id = pg_temp.id('r_mail')), '1/0', 'default thresholds: definite 1, candidate 0');

CREATE FUNCTION pg_temp.owner(p_conn text, p_account jsonb, p_tenant text DEFAULT 't1')
RETURNS TABLE (who text, confidence numeric, match_type text, evidence jsonb) LANGUAGE sql AS $$
    SELECT coalesce(pg_temp.nm(c.identity_id), '-'), round(c.confidence::numeric, 4), c.match_type, c.evidence
      FROM xprov.correlate_owner(pg_temp.id(p_tenant), pg_temp.id(p_conn), p_account) c
$$;

SELECT results_eq($$SELECT who, confidence, match_type FROM pg_temp.owner('c1', '{"emails": [{"value": "ADA.LOVELACE@example.com"}]}')$$,
                  $$VALUES ('ada', 1.0000, 'definite')$$, 'case_insensitive: another case of the e-mail is a definite match');
SELECT results_eq($$SELECT who, match_type FROM pg_temp.owner('c1', '{"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"employeeNumber": "E3"}}')$$,
                  $$VALUES ('alan', 'definite')$$, 'exact on a jsonb extra through the enterprise URN path');
SELECT results_eq($$SELECT who, match_type FROM pg_temp.owner('c1', '{"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"employeeNumber": "e3"}}')$$,
                  $$VALUES ('-', 'none')$$, 'exact is case-sensitive');
SELECT results_eq($$SELECT who, confidence, match_type FROM pg_temp.owner('c1', '{"name": {"givenName": " GRACE ", "familyName": "Hoper"}}')$$,
                  $$VALUES ('grace', round((0.5 * similarity('Hopper', 'Hoper'))::numeric, 4), 'candidate')$$,
                  'normalized x fuzzy: score = weight x product of item scores (similarity); a candidate');
SELECT is((SELECT evidence #>> '{rules,0,name}' FROM pg_temp.owner('c1', '{"name": {"givenName": "Grace", "familyName": "Hopper"}}')), 'name',
          'the evidence names the rule that matched');
SELECT results_eq($$SELECT who, match_type FROM pg_temp.owner('c1', '{"name": {"givenName": "Grace", "familyName": "Smith"}}')$$,
                  $$VALUES ('-', 'none')$$, 'fuzzy below min_score does not match');
SELECT is(current_setting('pg_trgm.similarity_threshold'), '0.3',
          'a fuzzy rule leaves the caller''s pg_trgm.similarity_threshold as it was');
SELECT is((SELECT evidence ->> 'rules_evaluated' FROM pg_temp.owner('c1', '{"displayName": "nobody"}')), '0',
          'an account without any rule''s attributes evaluates no rule');

-- tiers: a single definite match in tier 1 stops before tier 2
SELECT is((SELECT jsonb_array_length(evidence -> 'rules') FROM pg_temp.owner('c1',
           '{"emails": [{"value": "grace@example.com"}], "name": {"givenName": "Grace", "familyName": "Hopper"}}')), 1,
          'tier 2 is not evaluated after a single definite match in tier 1');
-- weights add up across rules: e-mail (1) + employee number (1) capped at 1
SELECT results_eq($$SELECT who, confidence FROM pg_temp.owner('c1', '{"emails": [{"value": "ada.lovelace@example.com"}], "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"employeeNumber": "E1"}}')$$,
                  $$VALUES ('ada', 1.0000)$$, 'two rules on the same identity: the score is capped at 1');
-- ambiguity: the e-mail says Alan, the employee number says Ada: nobody is definite
SELECT results_eq($$SELECT who, match_type, (evidence ->> 'ambiguous')::boolean FROM pg_temp.owner('c1', '{"emails": [{"value": "alan@example.com"}], "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"employeeNumber": "E1"}}') ORDER BY who$$,
                  $$VALUES ('ada', 'candidate', true), ('alan', 'candidate', true)$$, 'two definite identities: both only candidates, marked ambiguous');

-- thresholds move the line
SELECT lives_ok(format($$SELECT xprov.set_correlation_thresholds(%L, 0.3, 0.1)$$, pg_temp.id('c1')), 'thresholds 0.3 / 0.1');
SELECT results_eq($$SELECT who, match_type FROM pg_temp.owner('c1', '{"name": {"givenName": "Grace", "familyName": "Hoper"}}')$$,
                  $$VALUES ('grace', 'definite')$$, 'with definite 0.3 the fuzzy name match is definite');
SELECT lives_ok(format($$SELECT xprov.set_correlation_thresholds(%L, 0.9, 0.5)$$, pg_temp.id('c1')), 'thresholds 0.9 / 0.5');
SELECT results_eq($$SELECT who, match_type FROM pg_temp.owner('c1', '{"name": {"givenName": "Grace", "familyName": "Hoper"}}')$$,
                  $$VALUES ('-', 'none')$$, 'with candidate 0.5 the same match is dropped');

-- tenant isolation: t2's Ada is in the same table, and never t1's answer
SELECT results_eq($$SELECT who FROM pg_temp.owner('c1', '{"emails": [{"value": "ada.lovelace@example.com"}]}')$$,
                  $$VALUES ('ada')$$, 'only the tenant''s own identities are considered');
SELECT throws_ok(format($$SELECT * FROM xprov.correlate_owner(%L, %L, '{}')$$, pg_temp.id('t1'), pg_temp.id('c2')), '22023', NULL,
                 'another tenant''s connector is refused');
SELECT throws_ok(format($$SELECT * FROM xprov.correlate_owner(%L, %L, '[1]')$$, pg_temp.id('t1'), pg_temp.id('c1')), '22023', NULL,
                 'an account that is not an object is refused');
SELECT results_eq($$SELECT who, match_type FROM pg_temp.owner('c3', '{"emails": [{"value": "ada.lovelace@example.com"}]}')$$,
                  $$VALUES ('-', 'none')$$, 'a connector without rules matches nobody');

-- an account already linked to an identity needs no correlation
INSERT INTO xprov.shadow (tenant_id, connector_id, object_class, identity_id, target_uid, lifecycle, situation)
VALUES (pg_temp.id('t1'), pg_temp.id('c1'), 'user', pg_temp.id('alan'), 'acct-77', 'live', 'linked');
SELECT results_eq($$SELECT who, confidence, match_type FROM pg_temp.owner('c1', '{"id": "acct-77", "emails": [{"value": "ada.lovelace@example.com"}]}')$$,
                  $$VALUES ('alan', 1.0000, 'existing_link')$$, 'an account linked before is its linked identity (existing_link)');

SELECT * FROM finish();
ROLLBACK;
