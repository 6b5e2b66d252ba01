-- Hostile input against the public SQL API, and search_path hijacking.
--
-- A. Injection.  Names, configs, object classes, subjects, attribute keys and values,
--    idempotency keys, hook object classes and options, identity-source column names (spliced
--    into the dynamic SQL of _identity_expr, _rule_query, _identity_attributes, _rule_join and
--    _recon_diff: here they are real columns of a real table, so the generated SQL must run
--    and find the right identities), correlation rule names and attribute paths, reaction types,
--    reconciliation object classes, and object classes and target uids that end up in a SCIM
--    target's URL.  Each is refused with its SQLSTATE or kept literally (read back through the
--    views); a canary table must stay untouched, and watchers (row triggers on the canary, event
--    triggers for DDL, an inventory of schemas, relations, functions, operators, roles and
--    databases) must see nothing happen.
-- B. search_path.  Catalog contract: SECURITY DEFINER functions, and every function that pins a
--    search_path, pin exactly "pg_catalog, pg_temp" (pg_temp named last: left out, it is searched
--    FIRST for relations); every public function pins it.  Behaviour: a schema "evil" with
--    functions and operators shadowing what xprov calls unqualified (nextval(text),
--    jsonb_build_object, format, lower, now, gen_random_uuid, unnest, =, ||, similarity, ...)
--    and temp views named like the catalogs xprov reads (pg_temp.pg_settings lying about
--    xprov.hook_max_timeout, pg_temp.pg_extension moving pg_trgm into evil, pg_class,
--    pg_attribute, pg_roles, ...), each logging when it runs.  A broad set of calls (some 55:
--    connectors, secrets, the queue from enqueue to complete_batch, stats, hooks, identity
--    source, rules, correlation, reconciliation, reactions, try_operation, the views) runs
--    under "evil, pg_temp, public", "pg_temp, evil, public" and "evil, pg_catalog, pg_temp,
--    public", then under a clean search_path: nothing of evil may run, and every call must
--    answer as it did with the clean path.  B runs before A and C, and plans are discarded
--    when the hostile objects appear: an attacker's session has them from its start, so no
--    plan cached with a clean name resolution may hide a hijack.
-- C. Oversized and malformed input not covered elsewhere (08_bad_input, 03_batch,
--    01_connectors, 31_hooks_catalog, 32_correlation, 35_url_hardening have the rest).
--
-- Runs as a superuser (the role-based tests live elsewhere); everything happens in one
-- transaction that is rolled back.  try_operation talks to the SCIM test target (psql variable
-- scim_url) with hostile object classes and uids; its requests are harmless there.
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS xprov;
CREATE EXTENSION IF NOT EXISTS pg_trgm;

\if :{?scim_url}
\else
\set scim_url http://127.0.0.1:18301/scim/v2
\endif

BEGIN;
SELECT plan(66);
\ir common.psql

SELECT set_config('xtest.scim_url', :'scim_url', true) \g /dev/null
SELECT set_config('xtest.scim_path', regexp_replace(:'scim_url', '^https?://[^/]+', ''), true) \g /dev/null
SET LOCAL xprov.allowed_hosts = '';

-- ================================================================ shared setup

-- hostile strings: quotes, comments, dollar quotes, backslashes, format specifiers,
-- unicode (bidi override, zero-width space, look-alike apostrophes), control characters,
-- and a long one (250 characters: names may have 255, see C. for longer ones)
CREATE TEMP TABLE _payload (n integer PRIMARY KEY, v text NOT NULL);
INSERT INTO _payload VALUES
    (1, $p$x'); DROP TABLE public.xprov_canary; --$p$),
    (2, $p$x"); DROP TABLE public.xprov_canary; --$p$),
    (3, $p$x\'); DELETE FROM public.xprov_canary; --$p$),
    (4, $p$$$; UPDATE public.xprov_canary SET v = 'pwned'; $$$p$),
    (5, $p$$q$ || (SELECT count(*) FROM public.xprov_canary) || $q$$p$),
    (6, $p$%I %L %s %1$s %% %n %x %$p$),
    (7, $p$'; INSERT INTO public.xprov_canary VALUES (666, 'pwned'); --$p$),
    (8, $p$user' OR '1'='1$p$),
    (9, $p$*/ TRUNCATE public.xprov_canary; /*$p$),
    (10, E'\u00dcn\u00efc\u00f8d\u00e9 \u540d\u524d \U0001F680 \u202ertl\u200bzw \uff07\u02bc'),
    (11, E'tab\there\nnewline\rcr\\back\\slash'),
    (12, $p$"; DROP TABLE public.xprov_canary; --$p$),
    (13, left(repeat($p$x'); DROP TABLE public.xprov_canary; -- $p$, 10), 250));

CREATE FUNCTION pg_temp.payloads() RETURNS text[] LANGUAGE sql STABLE AS $$
    SELECT array_agg(v ORDER BY n) FROM _payload
$$;

-- strict RFC 3986 percent-encoding (unreserved characters stay), of the UTF-8 bytes
CREATE FUNCTION pg_temp.pct(s text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(string_agg(CASE WHEN b BETWEEN 65 AND 90 OR b BETWEEN 97 AND 122 OR b BETWEEN 48 AND 57
                                         OR b IN (45, 46, 95, 126)
                                    THEN chr(b) ELSE '%' || upper(lpad(to_hex(b), 2, '0')) END, '' ORDER BY i), '')
      FROM (SELECT i, get_byte(convert_to(s, 'UTF8'), i) AS b
              FROM generate_series(0, octet_length(convert_to(s, 'UTF8')) - 1) i) x
$$;

-- the SQLSTATE of p_sql, or 'OK'
CREATE FUNCTION pg_temp.state(p_sql text) RETURNS text LANGUAGE sql AS $$
    SELECT CASE WHEN o LIKE 'OK%' THEN 'OK' ELSE left(o, 5) END FROM pg_temp.err(p_sql) o
$$;

SELECT FROM pg_temp.tenant('T');
SELECT FROM pg_temp.tenant('T2');
SELECT FROM pg_temp.conn('cx', 'T');                      -- external: the queue
SELECT FROM pg_temp.put('cs', xprov.add_connector(pg_temp.id('T'), 'scim-inject', 'scim2', :'scim_url'));
SELECT FROM pg_temp.put('cu', xprov.add_connector(pg_temp.id('T2'), 'scim-url', 'scim2', :'scim_url'));

-- The identity source of tenant T: every name spliced into xprov's dynamic SQL is hostile
-- here, and real (relation, id, tenant, attributes and mapped columns), so the SQL must not
-- only stay harmless but also work.  The last column's name is 63 bytes (the limit); the
-- options name it with 70 characters, which PostgreSQL truncates alike.
DO $do$ BEGIN
    EXECUTE format('CREATE TEMP TABLE %I (%I uuid PRIMARY KEY, %I uuid NOT NULL, %I jsonb, %I text, %I text, %I text)',
                   'ppl''); DROP TABLE public.xprov_canary; --', 'id"); DROP TABLE public.xprov_canary; --',
                   't'' OR ''1''=''1', 'a$$; DELETE FROM public.xprov_canary; $$', 'm%I%L%s\', E'\u540d\u524d \u202e',
                   'l' || repeat('x', 62));
END $do$;
INSERT INTO "ppl'); DROP TABLE public.xprov_canary; --" VALUES
    (pg_temp.put('ada', gen_random_uuid()), pg_temp.id('T'), '{"no'');--": "E1"}', 'ada@example.com', 'Ada', 'lovelace-ada-analytical'),
    (pg_temp.put('grace', gen_random_uuid()), pg_temp.id('T'), '{"no'');--": "E2"}', 'grace@example.com', 'Grâce', 'hopper-grace-cobol'),
    (pg_temp.put('ada_t2', gen_random_uuid()), pg_temp.id('T2'), '{"no'');--": "E1"}', 'ada@example.com', 'Ada', 'lovelace-ada-analytical');
CREATE TEMP TABLE plain_people (id uuid PRIMARY KEY, email text);
SELECT FROM pg_temp.tenant('T3');
SELECT FROM pg_temp.conn('c3', 'T3');

CREATE FUNCTION pg_temp.hostile_source_options() RETURNS jsonb LANGUAGE sql STABLE AS $fn$
    SELECT jsonb_build_object(
        'id_column', 'id"); DROP TABLE public.xprov_canary; --',
        'tenant_column', 't'' OR ''1''=''1',
        'attributes_column', 'a$$; DELETE FROM public.xprov_canary; $$',
        'columns', jsonb_build_object(
            'mail''); DROP TABLE public.xprov_canary; --', 'm%I%L%s\',
            'given', E'\u540d\u524d \u202e',
            'long', 'l' || repeat('x', 69)))
$fn$;

-- An account of tenant T as a SCIM target would show it: it matches ada through the mapped
-- mail column (rule 1) and through the attributes column under a hostile key, read from a
-- hostile URN path (rule 2)
CREATE FUNCTION pg_temp.ada_account() RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('emails', jsonb_build_array(jsonb_build_object('value', 'ADA@EXAMPLE.COM')),
                              'urn:x''); DROP TABLE public.xprov_canary; --:User', jsonb_build_object('no', 'E1'))
$$;

-- try_operation on connector cu (SCIM, no hooks): 'refused <SQLSTATE>' when refused, 'ok'
-- when every request that reached the target went to <base path>/<encoded class>[/<encoded
-- uid>], else the requests that went elsewhere.  A uid or class of only dots may appear
-- encoded (%2E) but never as a dot segment, which libcurl and servers resolve.
CREATE FUNCTION pg_temp.stray(p_op text, p_class text, p_uid text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    r jsonb;
    want text;
    bad text;
BEGIN
    BEGIN
        r := xprov.try_operation(pg_temp.id('cu'), p_op, p_class, '{"userName": "xprov-stray-probe"}', p_uid,
                                 gen_random_uuid(), false);
    EXCEPTION WHEN OTHERS THEN
        RETURN 'refused ' || SQLSTATE;
    END;
    want := current_setting('xtest.scim_path') || '/'
            || CASE lower(p_class) WHEN 'user' THEN 'Users' WHEN 'group' THEN 'Groups'
                   ELSE CASE WHEN p_class IN ('.', '..') THEN replace(p_class, '.', '%2E') ELSE pg_temp.pct(p_class) END END
            || CASE WHEN p_uid IS NULL THEN ''
                    WHEN p_uid IN ('.', '..') THEN '/' || replace(p_uid, '.', '%2E')
                    ELSE '/' || pg_temp.pct(p_uid) END;
    SELECT string_agg((e ->> 'method') || ' ' || (e ->> 'path'), ', ') INTO bad
      FROM jsonb_array_elements(r -> 'exchanges') e
     WHERE e -> 'status' <> 'null'::jsonb
       AND (split_part(e ->> 'path', '?', 1) <> want OR position('#' IN e ->> 'path') > 0);
    RETURN coalesce('sent ' || bad, 'ok');
END $$;

-- ---------------------------------------------------------------- B: the evil schema
-- Everything in it logs its call (evil.log, and the sequence evil.hits, which a failed call's
-- rollback cannot undo) and then does what the real thing does.
CREATE SCHEMA evil;
CREATE TABLE evil.log (seq bigserial PRIMARY KEY, what text NOT NULL, variant text, label text);
CREATE SEQUENCE evil.hits;
CREATE FUNCTION evil.note(p_what text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_catalog.nextval('evil.hits'::pg_catalog.regclass);
    INSERT INTO evil.log (what) VALUES (p_what);
    RETURN true;
END $$;

DO $do$
DECLARE
    trgm text := quote_ident((SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'pg_trgm'));
    f record;
BEGIN
    -- name, arguments, result, body expression over $1.. (pg_catalog-qualified)
    FOR f IN SELECT * FROM (VALUES
        ('nextval', 'text', 'bigint', 'pg_catalog.nextval($1::pg_catalog.regclass)'),
        ('now', '', 'timestamptz', 'pg_catalog.now()'),
        ('clock_timestamp', '', 'timestamptz', 'pg_catalog.clock_timestamp()'),
        ('gen_random_uuid', '', 'uuid', 'pg_catalog.gen_random_uuid()'),
        ('format', 'text', 'text', 'pg_catalog.format($1)'),
        ('format', 'text, VARIADIC text[]', 'text', 'pg_catalog.format($1, VARIADIC $2)'),
        ('jsonb_build_object', 'VARIADIC text[]', 'jsonb', 'pg_catalog.jsonb_build_object(VARIADIC $1)'),
        ('jsonb_build_array', 'VARIADIC text[]', 'jsonb', 'pg_catalog.jsonb_build_array(VARIADIC $1)'),
        ('lower', 'text', 'text', 'pg_catalog.lower($1)'),
        ('lower', 'character varying', 'text', 'pg_catalog.lower($1)'),
        ('upper', 'text', 'text', 'pg_catalog.upper($1)'),
        ('btrim', 'text', 'text', 'pg_catalog.btrim($1)'),
        ('length', 'text', 'integer', 'pg_catalog.length($1)'),
        ('jsonb_typeof', 'jsonb', 'text', 'pg_catalog.jsonb_typeof($1)'),
        ('jsonb_array_length', 'jsonb', 'integer', 'pg_catalog.jsonb_array_length($1)'),
        ('jsonb_strip_nulls', 'jsonb', 'jsonb', 'pg_catalog.jsonb_strip_nulls($1)'),
        ('to_jsonb', 'text', 'jsonb', 'pg_catalog.to_jsonb($1)'),
        ('set_config', 'text, text, boolean', 'text', 'pg_catalog.set_config($1, $2, $3)'),
        ('current_setting', 'text', 'text', 'pg_catalog.current_setting($1)'),
        ('current_setting', 'text, boolean', 'text', 'pg_catalog.current_setting($1, $2)'),
        ('string_to_array', 'text, text', 'text[]', 'pg_catalog.string_to_array($1, $2)'),
        ('regexp_replace', 'text, text, text', 'text', 'pg_catalog.regexp_replace($1, $2, $3)'),
        ('regexp_replace', 'text, text, text, text', 'text', 'pg_catalog.regexp_replace($1, $2, $3, $4)'),
        ('array_to_string', 'text[], text', 'text', 'pg_catalog.array_to_string($1, $2)'),
        ('uuid_eq', 'uuid, uuid', 'boolean', '$1 OPERATOR(pg_catalog.=) $2'),
        ('text_eq', 'text, text', 'boolean', '$1 OPERATOR(pg_catalog.=) $2'),
        ('int8_eq', 'bigint, bigint', 'boolean', '$1 OPERATOR(pg_catalog.=) $2'),
        ('char_eq', '"char", "char"', 'boolean', '$1 OPERATOR(pg_catalog.=) $2'),
        ('uuid_ne', 'uuid, uuid', 'boolean', '$1 OPERATOR(pg_catalog.<>) $2'),
        ('text_cat', 'text, text', 'text', '$1 OPERATOR(pg_catalog.||) $2'),
        ('similarity', 'text, text', 'real', trgm || '.similarity($1, $2)'),
        ('trgm_match', 'text, text', 'boolean', '$1 OPERATOR(' || trgm || '.%) $2')
    ) v(name, args, result, body) LOOP
        EXECUTE format('CREATE FUNCTION evil.%I(%s) RETURNS %s LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp '
                       'AS $f$ BEGIN PERFORM evil.note(%L); RETURN %s; END $f$',
                       f.name, f.args, f.result, 'evil.' || f.name || '(' || f.args || ')', f.body);
    END LOOP;
END $do$;
-- set-returning shadows, with the real column names
CREATE FUNCTION evil.unnest(uuid[]) RETURNS SETOF uuid LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$ BEGIN PERFORM evil.note('evil.unnest(uuid[])'); RETURN QUERY SELECT pg_catalog.unnest($1); END $$;
CREATE FUNCTION evil.unnest(text[]) RETURNS SETOF text LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$ BEGIN PERFORM evil.note('evil.unnest(text[])'); RETURN QUERY SELECT pg_catalog.unnest($1); END $$;
CREATE FUNCTION evil.unnest(bigint[]) RETURNS SETOF bigint LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$ BEGIN PERFORM evil.note('evil.unnest(bigint[])'); RETURN QUERY SELECT pg_catalog.unnest($1); END $$;
CREATE FUNCTION evil.generate_series(integer, integer) RETURNS SETOF integer LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$ BEGIN PERFORM evil.note('evil.generate_series(int, int)'); RETURN QUERY SELECT pg_catalog.generate_series($1, $2); END $$;
CREATE FUNCTION evil.jsonb_array_elements(jsonb, OUT value jsonb) RETURNS SETOF jsonb LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$ BEGIN PERFORM evil.note('evil.jsonb_array_elements(jsonb)'); RETURN QUERY SELECT pg_catalog.jsonb_array_elements($1); END $$;
CREATE FUNCTION evil.jsonb_object_keys(jsonb) RETURNS SETOF text LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$ BEGIN PERFORM evil.note('evil.jsonb_object_keys(jsonb)'); RETURN QUERY SELECT pg_catalog.jsonb_object_keys($1); END $$;
-- operators
CREATE OPERATOR evil.= (LEFTARG = uuid, RIGHTARG = uuid, FUNCTION = evil.uuid_eq);
CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.text_eq);
CREATE OPERATOR evil.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = evil.int8_eq);
CREATE OPERATOR evil.= (LEFTARG = "char", RIGHTARG = "char", FUNCTION = evil.char_eq);
CREATE OPERATOR evil.<> (LEFTARG = uuid, RIGHTARG = uuid, FUNCTION = evil.uuid_ne);
CREATE OPERATOR evil.|| (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.text_cat);
CREATE OPERATOR evil.% (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.trgm_match);

-- Temp views named like the catalogs (created for the hijack runs only, by pg_temp.hijack()).
-- Two lie: pg_settings raises xprov.hook_max_timeout and hook_max_memory, pg_extension puts
-- pg_trgm into schema evil (so a fuzzy rule would call evil.similarity and evil.%).
CREATE TEMP TABLE _evil_view (name text PRIMARY KEY, body text NOT NULL);
INSERT INTO _evil_view VALUES
    ('pg_settings', $v$SELECT s.name, CASE WHEN s.name IN ('xprov.hook_max_timeout', 'xprov.hook_max_memory')
                            THEN '999999999' ELSE s.setting END AS setting,
                       s.unit, s.category, s.short_desc, s.extra_desc, s.context, s.vartype, s.source, s.min_val,
                       s.max_val, s.enumvals, s.boot_val, s.reset_val, s.sourcefile, s.sourceline, s.pending_restart
                  FROM pg_catalog.pg_settings s, (SELECT evil.note('pg_temp.pg_settings')) n(x) WHERE n.x$v$),
    ('pg_extension', $v$SELECT e.oid, e.extname, e.extowner,
                        CASE WHEN e.extname = 'pg_trgm' THEN 'evil'::pg_catalog.regnamespace::oid ELSE e.extnamespace END AS extnamespace,
                        e.extrelocatable, e.extversion, e.extconfig, e.extcondition
                   FROM pg_catalog.pg_extension e, (SELECT evil.note('pg_temp.pg_extension')) n(x) WHERE n.x$v$),
    ('pg_attribute', $v$SELECT a.attrelid, a.attname, a.atttypid, a.attstattarget, a.attlen, a.attnum, a.attndims,
                        a.attcacheoff, a.atttypmod, a.attbyval, a.attalign, a.attstorage, a.attcompression,
                        a.attnotnull, a.atthasdef, a.atthasmissing, a.attidentity, a.attgenerated, a.attisdropped,
                        a.attislocal, a.attinhcount, a.attcollation, a.attacl, a.attoptions, a.attfdwoptions
                   FROM pg_catalog.pg_attribute a, (SELECT evil.note('pg_temp.pg_attribute')) n(x) WHERE n.x$v$);
INSERT INTO _evil_view
SELECT c, format('SELECT t.* FROM pg_catalog.%I t, (SELECT evil.note(%L)) n(x) WHERE n.x', c, 'pg_temp.' || c)
  FROM unnest(ARRAY['pg_class', 'pg_namespace', 'pg_type', 'pg_proc', 'pg_roles', 'pg_auth_members',
                    'pg_database', 'pg_index', 'pg_constraint', 'pg_trigger', 'pg_stat_activity', 'pg_locks',
                    'pg_operator', 'pg_cast', 'pg_user', 'pg_tables', 'pg_views']) c;

-- The calls of one run (variant v), with everything they need as literals: run under a hostile
-- search_path, nothing in them may resolve through it (only pg_catalog-qualified functions,
-- OPERATOR(pg_catalog.=), xprov's own names).  Each returns one text value.
CREATE TEMP TABLE _b (v text PRIMARY KEY, tenant uuid, bx uuid, bs uuid);
CREATE TEMP TABLE _b_call (v text, ord integer, label text, sql text, PRIMARY KEY (v, ord));
CREATE TEMP TABLE _b_result (v text, ord integer, label text, outcome text, PRIMARY KEY (v, ord));
CREATE TEMP TABLE people_b (id uuid PRIMARY KEY, tenant uuid NOT NULL, email text, first text, extra jsonb);

CREATE FUNCTION pg_temp.b_setup(p_v text) RETURNS void LANGUAGE plpgsql AS $fn$
DECLARE
    t uuid := pg_temp.tenant('TB' || p_v);
    bx uuid;
    bs uuid;
    ada uuid := pg_temp.put('ada_b' || p_v, gen_random_uuid());
    calls text[];
BEGIN
    bx := pg_temp.put('bx' || p_v, xprov.add_connector(t, 'b-queue', 'external', NULL));
    bs := pg_temp.put('bs' || p_v, xprov.add_connector(t, 'b-scim', 'scim2', current_setting('xtest.scim_url')));
    INSERT INTO _b VALUES (p_v, t, bx, bs);
    INSERT INTO people_b VALUES (ada, t, 'ada@example.com', 'Ada', '{"no": "E1"}');
    -- a live account of connector bs that correlate() can find for ada
    INSERT INTO xprov.shadow (tenant_id, connector_id, object_class, target_uid, lifecycle, situation, observed)
    VALUES (t, bs, 'user', 'acct-ada', 'live', 'unmatched', '{"userName": "ada@example.com"}');
    calls := ARRAY[
        'add_connector', format($$SELECT xprov.add_connector(%L::uuid, 'b-ext', 'external', NULL,
                                    '{"auth": {"type": "bearer", "token": "t0"}, "timeout_ms": 100}'::jsonb)::text$$, t),
        'add_connector scim2', format($$SELECT xprov.add_connector(%L::uuid, 'b-scim2', 'scim2', %L, '{}'::jsonb)::text$$,
                                      t, current_setting('xtest.scim_url')),
        'connectors view', format($$SELECT pg_catalog.concat_ws('/', c.name, c.kind, c.auth_type, c.config)
                                      FROM xprov.connectors c WHERE c.tenant_id OPERATOR(pg_catalog.=) %L::uuid
                                       AND c.name OPERATOR(pg_catalog.=) 'b-ext'$$, t),
        'set_connector_secret', format($$SELECT xprov.set_connector_secret(%L::uuid,
                                           '{"type": "basic", "username": "u", "password": "p"}'::jsonb)::text$$, bx),
        'set_connector_enabled', format($$SELECT xprov.set_connector_enabled(%L::uuid, true)::text$$, bx),
        'enqueue (idempotent)', format($$SELECT (xprov.enqueue(%1$L::uuid, %2$L::uuid, %3$L::uuid, 'create', 'user',
                                             '{"userName": "b1"}'::jsonb, NULL, 0, NULL, 'b-key')
                                         OPERATOR(pg_catalog.=)
                                         xprov.enqueue(%1$L::uuid, %2$L::uuid, %3$L::uuid, 'create', 'user',
                                             '{"userName": "b1"}'::jsonb, NULL, 0, NULL, 'b-key'))::text$$,
                                       t, bx, gen_random_uuid()),
        'enqueue_batch', format($$SELECT pg_catalog.count(*)::text FROM xprov.enqueue_batch(%L::jsonb)$$,
                                jsonb_build_array(
                                    jsonb_build_object('tenant_id', t, 'connector_id', bx, 'identity_id', gen_random_uuid(),
                                                       'operation_type', 'update', 'object_class', 'user',
                                                       'attributes', '{"title": "x"}'::jsonb, 'priority', 5),
                                    jsonb_build_object('tenant_id', t, 'connector_id', bx, 'target_uid', 'acct-b2',
                                                       'operation_type', 'disable', 'object_class', 'group',
                                                       'idempotency_key', 'b-key-2'))),
        'stats', format($$SELECT pg_catalog.concat_ws(',', s.pending, s.in_progress, s.failed, s.dead_letter, s.completed,
                                                       s.skipped, s.cancelled, s.parked)
                             FROM xprov.stats(%L::uuid, %L::uuid) s$$, t, bx),
        'dequeue + complete', $$SELECT pg_catalog.count(*)::text FROM xprov.dequeue(10) d, LATERAL xprov.complete(d.id) c$$,
        'enqueue + cancel', format($$SELECT xprov.cancel(xprov.enqueue(%L::uuid, %L::uuid, %L::uuid, 'delete', 'user',
                                                                        '{}'::jsonb))::text$$, t, bx, gen_random_uuid()),
        'enqueue', format($$SELECT pg_catalog.length(xprov.enqueue(%L::uuid, %L::uuid, NULL, 'update', 'user',
                                                                    '{"a": 1}'::jsonb, 'acct-b3')::text)::text$$, t, bx),
        'dequeue + fail permanent', $$SELECT pg_catalog.count(*)::text FROM xprov.dequeue(10) d, LATERAL xprov.fail(d.id, 'boom', true) f$$,
        'dead_letters + retry', format($$SELECT pg_catalog.count(*)::text FROM xprov.dead_letters d, LATERAL xprov.retry(d.id) r
                                          WHERE d.connector_id OPERATOR(pg_catalog.=) %L::uuid$$, bx),
        'dequeue + fail', $$SELECT pg_catalog.count(*)::text FROM xprov.dequeue(10) d, LATERAL xprov.fail(d.id, 'again', false, '1 hour') f$$,
        'operations + skip', format($$SELECT pg_catalog.count(*)::text FROM xprov.operations o, LATERAL xprov.skip(o.id, 'by hand') s
                                       WHERE o.connector_id OPERATOR(pg_catalog.=) %L::uuid
                                         AND o.status OPERATOR(pg_catalog.=) 'failed'$$, bx),
        'enqueue_batch 2', format($$SELECT pg_catalog.count(*)::text FROM xprov.enqueue_batch(%L::jsonb)$$,
                                  jsonb_build_array(
                                      jsonb_build_object('tenant_id', t, 'connector_id', bx, 'identity_id', gen_random_uuid(),
                                                         'operation_type', 'enable', 'object_class', 'user'),
                                      jsonb_build_object('tenant_id', t, 'connector_id', bx, 'identity_id', gen_random_uuid(),
                                                         'operation_type', 'enable', 'object_class', 'user'))),
        'complete_batch', $$SELECT xprov.complete_batch(ARRAY(SELECT d.id FROM xprov.dequeue(10) d))::text$$,
        'operations view', format($$SELECT pg_catalog.string_agg(o.status, ',' ORDER BY o.status COLLATE "C")
                                      FROM xprov.operations o WHERE o.connector_id OPERATOR(pg_catalog.=) %L::uuid$$, bx),
        'operation_attempts view', format($$SELECT pg_catalog.string_agg(a.outcome, ',' ORDER BY a.outcome COLLATE "C")
                                              FROM xprov.operation_attempts a
                                             WHERE a.connector_id OPERATOR(pg_catalog.=) %L::uuid$$, bx),
        'stats after', format($$SELECT pg_catalog.concat_ws(',', s.pending, s.in_progress, s.failed, s.dead_letter,
                                                             s.completed, s.skipped, s.cancelled, s.parked)
                                   FROM xprov.stats(%L::uuid) s$$, t),
        'add_hook', format($$SELECT pg_catalog.length(xprov.add_hook(%L::uuid, %L::uuid, 'user', 'before',
                                 'function hook(ctx) { return { attributes: ctx.attributes }; }',
                                 '{"timeout_ms": 50, "memory_kb": 1024, "failure": "ignore", "order": 2}'::jsonb)::text)::text$$, t, bx),
        'add_hook + update_hook', format($$SELECT xprov.update_hook(xprov.add_hook(%L::uuid, NULL, NULL, 'after',
                                               'function hook(ctx) { }'), 'function hook(ctx) { return; }')::text$$, t),
        'set_hook_enabled', format($$SELECT pg_catalog.count(xprov.set_hook_enabled(h.id, false)::text)::text
                                       FROM xprov.hooks h WHERE h.tenant_id OPERATOR(pg_catalog.=) %L::uuid
                                        AND h.phase OPERATOR(pg_catalog.=) 'after'$$, t),
        'hooks view', format($$SELECT pg_catalog.string_agg(pg_catalog.concat_ws(':', h.phase, h.version, h.enabled, h.timeout_ms,
                                                                                 h.memory_kb, h.failure, h."order"), ','
                                                            ORDER BY h.phase COLLATE "C")
                                 FROM xprov.hooks h WHERE h.tenant_id OPERATOR(pg_catalog.=) %L::uuid$$, t),
        'add_hook over hook_max_timeout', format($$SELECT xprov.add_hook(%L::uuid, NULL, NULL, 'before', 'function hook(ctx) { }',
                                                     '{"timeout_ms": 5000000}'::jsonb)::text$$, t),
        'add_hook over hook_max_memory', format($$SELECT xprov.add_hook(%L::uuid, NULL, NULL, 'before', 'function hook(ctx) { }',
                                                    '{"memory_kb": 9000000}'::jsonb)::text$$, t),
        'set_identity_source', format($$SELECT xprov.set_identity_source(%L::uuid, 'pg_temp.people_b'::regclass,
                                          '{"tenant_column": "tenant", "attributes_column": "extra",
                                            "columns": {"mail": "email", "given": "first"}}'::jsonb)::text$$, t),
        'add_correlation_rule', format($$SELECT pg_catalog.length(xprov.add_correlation_rule(%L::uuid, 'user',
                                           '{"name": "mail", "items": [{"target": "userName", "identity": "mail",
                                                                        "match": "case_insensitive"}]}'::jsonb)::text)::text$$, bs),
        'add_correlation_rule fuzzy', format($$SELECT pg_catalog.length(xprov.add_correlation_rule(%L::uuid, 'user',
                                                 '{"name": "fuzzy", "tier": 2, "items": [{"target": "displayName", "identity": "mail",
                                                                                         "match": "fuzzy", "min_score": 0.3}]}'::jsonb)::text)::text$$, bs),
        'add_correlation_rule normalized', format($$SELECT pg_catalog.length(xprov.add_correlation_rule(%L::uuid, 'user',
                                                      '{"name": "given", "tier": 3, "items": [{"target": "name.givenName", "identity": "given",
                                                                                              "match": "normalized"},
                                                                                             {"target": "urn:x:User:no", "identity": "no",
                                                                                              "match": "exact"}]}'::jsonb)::text)::text$$, bs),
        'set_correlation_thresholds', format($$SELECT xprov.set_correlation_thresholds(%L::uuid, 0.9, 0.2)::text$$, bs),
        'correlation_rules view', format($$SELECT pg_catalog.string_agg(pg_catalog.concat_ws(':', r.name, r.tier, r.definite, r.candidate),
                                                                        ',' ORDER BY r.tier)
                                             FROM xprov.correlation_rules r WHERE r.connector_id OPERATOR(pg_catalog.=) %L::uuid$$, bs),
        'correlate_owner exact', format($$SELECT pg_catalog.string_agg(pg_catalog.concat_ws(':', c.identity_id, c.match_type), ',')
                                            FROM xprov.correlate_owner(%L::uuid, %L::uuid, '{"userName": "ADA@example.com"}'::jsonb) c$$, t, bs),
        'correlate_owner fuzzy', format($$SELECT pg_catalog.string_agg(pg_catalog.concat_ws(':', c.identity_id, c.match_type), ',')
                                            FROM xprov.correlate_owner(%L::uuid, %L::uuid, '{"displayName": "ada@exampel.com"}'::jsonb) c$$, t, bs),
        'correlate_owner normalized', format($$SELECT pg_catalog.string_agg(pg_catalog.concat_ws(':', c.identity_id, c.match_type), ',')
                                                 FROM xprov.correlate_owner(%L::uuid, %L::uuid,
                                                      '{"name": {"givenName": " ÀDA "}, "urn:x:User": {"no": "E1"}}'::jsonb) c$$, t, bs),
        'correlate', format($$SELECT pg_catalog.string_agg(pg_catalog.concat_ws(':', c.uid, c.match_type), ',')
                                FROM xprov.correlate(%L::uuid, %L::uuid, %L::jsonb) c$$, t, bs, jsonb_build_object('identity_id', ada)),
        'shadows view', format($$SELECT pg_catalog.string_agg(pg_catalog.concat_ws(':', s.target_uid, s.state, s.situation), ',')
                                   FROM xprov.shadows s WHERE s.connector_id OPERATOR(pg_catalog.=) %L::uuid$$, bs),
        'set xprov.tenant_id', format($$SELECT pg_catalog.length(pg_catalog.set_config('xprov.tenant_id', %L, true))::text$$, t),
        'reconcile_preview', format($$SELECT pg_catalog.length(xprov.reconcile_preview(%L::uuid)::text)::text$$, bs),
        'reconciliation_runs view', format($$SELECT pg_catalog.concat_ws(':', r.connector, r.object_class, r.mode, r.status, r.phase)
                                               FROM xprov.reconciliation_runs r WHERE r.connector_id OPERATOR(pg_catalog.=) %L::uuid$$, bs),
        'wait_run', format($$SELECT xprov.wait_run(r.id, '0 seconds') FROM xprov.reconciliation_runs r
                             WHERE r.connector_id OPERATOR(pg_catalog.=) %L::uuid$$, bs),
        'cancel_run', format($$SELECT pg_catalog.count(xprov.cancel_run(r.id)::text)::text FROM xprov.reconciliation_runs r
                               WHERE r.connector_id OPERATOR(pg_catalog.=) %L::uuid$$, bs),
        'reconcile apply', format($$SELECT pg_catalog.length(xprov.reconcile(%L::uuid, 'group', 'apply')::text)::text$$, bs),
        'reconciliation_runs view 2', format($$SELECT pg_catalog.string_agg(pg_catalog.concat_ws(':', r.object_class, r.mode, r.status), ','
                                                                            ORDER BY r.object_class COLLATE "C")
                                                 FROM xprov.reconciliation_runs r WHERE r.connector_id OPERATOR(pg_catalog.=) %L::uuid$$, bs),
        'set_reaction', format($$SELECT xprov.set_reaction(%L::uuid, 'orphan', 'disable')::text$$, bs),
        'reactions view', format($$SELECT pg_catalog.string_agg(pg_catalog.concat_ws(':', r.discrepancy_type, r.action, r.is_default), ','
                                                                ORDER BY r.discrepancy_type COLLATE "C")
                                     FROM xprov.reactions r WHERE r.connector_id OPERATOR(pg_catalog.=) %L::uuid$$, bs),
        'set_reconciliation_threshold', format($$SELECT xprov.set_reconciliation_threshold(%L::uuid, 10, 5)::text$$, bs),
        'reconciliation_thresholds view', format($$SELECT pg_catalog.concat_ws(':', t.max_actions, t.max_percent)
                                                     FROM xprov.reconciliation_thresholds t
                                                    WHERE t.connector_id OPERATOR(pg_catalog.=) %L::uuid$$, bs),
        'try_operation', format($$SELECT pg_catalog.concat_ws(':', r ->> 'outcome', r -> 'exchanges' -> 0 ->> 'method', r -> 'exchanges' -> 0 ->> 'status')
                                    FROM (SELECT xprov.try_operation(%L::uuid, 'update', 'user', '{"displayName": "x"}'::jsonb,
                                                                     'xprov-b-no-such-account', NULL, false) AS r) x$$, bs),
        'execute_script', $$SELECT xprov.execute_script('function hook(ctx) { return { a: ctx.n + 1 }; }', '{"n": 1}'::jsonb)::text$$,
        'validate_script', $$SELECT xprov.validate_script('function hook(ctx) { return; }')::text$$,
        'normalize_text', $$SELECT xprov.normalize_text(E'  \u00c0DA   Lovelace ')$$,
        'mask_secrets', $$SELECT xprov.mask_secrets('{"auth": {"type": "bearer", "token": "t"}, "x": 1}'::jsonb)::text$$,
        'purge_tombstones', $$SELECT xprov.purge_tombstones('100 years')::text$$,
        'purge_runs', $$SELECT xprov.purge_runs('100 years')::text$$,
        'build_info', $$SELECT pg_catalog.jsonb_typeof(xprov.build_info())$$,
        'wait_idle', $$SELECT pg_catalog.count(xprov.wait_idle('0 seconds'))::text$$,
        'unset xprov.tenant_id', $$SELECT pg_catalog.length(pg_catalog.set_config('xprov.tenant_id', '', true))::text$$];
    INSERT INTO _b_call
    SELECT p_v, i, calls[2 * i - 1], calls[2 * i] FROM generate_series(1, array_length(calls, 1) / 2) i;
END $fn$;

-- Runs variant p_v's calls under search_path p_path (NULL: the session's own, no temp views),
-- recording each outcome (uuids replaced by <uuid>) and what of evil ran meanwhile.
CREATE FUNCTION pg_temp.hijack(p_v text, p_path text) RETURNS void LANGUAGE plpgsql AS $fn$
DECLARE
    c record;
    res text;
    outcome text;
    hits_before bigint;
    hits_after bigint;
    logged bigint;
    safe text := pg_catalog.current_setting('search_path');
BEGIN
    IF p_path IS NOT NULL THEN
        FOR c IN SELECT * FROM _evil_view LOOP
            EXECUTE pg_catalog.format('CREATE TEMP VIEW %I AS %s', c.name, c.body);
        END LOOP;
    END IF;
    -- plans cached so far resolved their names without the views; an attacker's session
    -- would have had them from the start
    EXECUTE 'DISCARD PLANS';
    FOR c IN SELECT * FROM _b_call WHERE v = p_v ORDER BY ord LOOP
        SELECT CASE WHEN is_called THEN last_value ELSE 0 END INTO hits_before FROM evil.hits;
        BEGIN
            IF p_path IS NOT NULL THEN
                PERFORM pg_catalog.set_config('search_path', p_path, true);
            END IF;
            EXECUTE c.sql INTO res;
            PERFORM pg_catalog.set_config('search_path', safe, true);
            outcome := 'OK: ' || coalesce(res, 'NULL');
        EXCEPTION WHEN OTHERS THEN
            -- the subtransaction's rollback has restored the search_path
            outcome := SQLSTATE || ': ' || SQLERRM;
        END;
        PERFORM pg_catalog.set_config('search_path', safe, true);
        INSERT INTO _b_result VALUES (p_v, c.ord, c.label,
            regexp_replace(outcome, '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', '<uuid>', 'g'));
        UPDATE evil.log SET variant = p_v, label = c.label WHERE label IS NULL;
        GET DIAGNOSTICS logged = ROW_COUNT;
        SELECT CASE WHEN is_called THEN last_value ELSE 0 END INTO hits_after FROM evil.hits;
        IF hits_after - hits_before > logged THEN
            INSERT INTO evil.log (what, variant, label)
            VALUES (format('%s evil call(s) in a call that failed', hits_after - hits_before - logged), p_v, c.label);
        END IF;
    END LOOP;
    IF p_path IS NOT NULL THEN
        FOR c IN SELECT * FROM _evil_view LOOP
            EXECUTE pg_catalog.format('DROP VIEW pg_temp.%I', c.name);
        END LOOP;
    END IF;
END $fn$;

-- what of evil ran during variant p_v: 'label: object (times)'
CREATE FUNCTION pg_temp.hijacked(p_v text) RETURNS text[] LANGUAGE sql AS $$
    SELECT coalesce(array_agg(x ORDER BY x), '{}')
      FROM (SELECT format('%s: %s (%s)', label, what, count(*)) AS x FROM evil.log WHERE variant = p_v
             GROUP BY label, what) y
$$;

-- variant p_v's outcomes next to the clean run's, where they differ
CREATE FUNCTION pg_temp.answers_differ(p_v text) RETURNS text[] LANGUAGE sql AS $$
    SELECT coalesce(array_agg(format('%s: %s (clean: %s)', h.label, h.outcome, c.outcome) ORDER BY h.ord), '{}')
      FROM _b_result h JOIN _b_result c ON c.v = '0' AND c.ord = h.ord
     WHERE h.v = p_v AND h.outcome IS DISTINCT FROM c.outcome
$$;

-- ---------------------------------------------------------------- the canary and its watchers
-- Created last: the event triggers log DDL from here on (objects in temporary schemas aside).
CREATE TABLE public.xprov_canary (id integer PRIMARY KEY, v text NOT NULL);
INSERT INTO public.xprov_canary VALUES (1, 'intact'), (2, 'intact'), (3, 'intact');
CREATE TABLE public.xprov_inject_tamper (seq bigserial PRIMARY KEY, what text NOT NULL);

CREATE FUNCTION public.xprov_inject_row_watch() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO public.xprov_inject_tamper (what) VALUES (TG_OP || ' on ' || TG_TABLE_NAME);
    RETURN NULL;
END $$;
CREATE TRIGGER xprov_inject_row_watch AFTER INSERT OR UPDATE OR DELETE ON public.xprov_canary
    FOR EACH ROW EXECUTE FUNCTION public.xprov_inject_row_watch();
CREATE TRIGGER xprov_inject_truncate_watch AFTER TRUNCATE ON public.xprov_canary
    FOR EACH STATEMENT EXECUTE FUNCTION public.xprov_inject_row_watch();

CREATE FUNCTION public.xprov_inject_ddl_watch() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO public.xprov_inject_tamper (what)
    SELECT 'DDL ' || c.command_tag || ' ' || coalesce(c.object_identity, '')
      FROM pg_event_trigger_ddl_commands() c
     WHERE coalesce(c.schema_name, '') !~ '^pg_(toast_)?temp';
END $$;
CREATE FUNCTION public.xprov_inject_drop_watch() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO public.xprov_inject_tamper (what)
    SELECT 'DROP ' || d.object_type || ' ' || coalesce(d.object_identity, '')
      FROM pg_event_trigger_dropped_objects() d
     WHERE NOT d.is_temporary AND coalesce(d.schema_name, '') !~ '^pg_(toast_)?temp'
       AND coalesce(d.object_identity, '') !~ '(^| on )pg_(toast_)?temp(_\d+)?\.';
END $$;
CREATE EVENT TRIGGER xprov_inject_ddl_watch ON ddl_command_end EXECUTE FUNCTION public.xprov_inject_ddl_watch();
CREATE EVENT TRIGGER xprov_inject_drop_watch ON sql_drop EXECUTE FUNCTION public.xprov_inject_drop_watch();

-- everything that is not temporary: schemas, relations, functions, operators, roles, databases,
-- triggers, event triggers
CREATE FUNCTION pg_temp.inventory() RETURNS text[] LANGUAGE sql STABLE AS $$
    SELECT array_agg(x ORDER BY x) FROM (
        SELECT 'schema ' || n.nspname FROM pg_catalog.pg_namespace n WHERE n.nspname !~ '^pg_(toast_)?temp_'
        UNION ALL
        SELECT 'relation ' || n.nspname || '.' || c.relname || ' ' || c.relkind::text
          FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname !~ '^pg_(toast_)?temp_'
        UNION ALL
        SELECT 'function ' || n.nspname || '.' || p.proname || '(' || pg_catalog.pg_get_function_identity_arguments(p.oid) || ')'
          FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname !~ '^pg_(toast_)?temp_'
        UNION ALL
        SELECT 'operator ' || o.oid::regoperator::text FROM pg_catalog.pg_operator o
        UNION ALL
        SELECT 'role ' || r.rolname FROM pg_catalog.pg_roles r
        UNION ALL
        SELECT 'database ' || d.datname FROM pg_catalog.pg_database d
        UNION ALL
        SELECT 'trigger ' || t.tgname FROM pg_catalog.pg_trigger t
        UNION ALL
        SELECT 'event trigger ' || e.evtname FROM pg_catalog.pg_event_trigger e) i(x)
$$;
CREATE TEMP TABLE _inventory AS SELECT pg_temp.inventory() AS objects;

CREATE FUNCTION pg_temp.canary() RETURNS text LANGUAGE sql STABLE AS $$
    SELECT string_agg(id || '=' || v, ',' ORDER BY id) FROM public.xprov_canary
$$;

-- ================================================================ B. search_path

-- catalog contract
SELECT is(ARRAY(SELECT p.proname || '(' || pg_get_function_identity_arguments(p.oid) || '): '
                       || coalesce(array_to_string(p.proconfig, '; '), 'no settings')
                  FROM pg_proc p
                 WHERE p.pronamespace = 'xprov'::regnamespace AND p.prosecdef
                   AND NOT coalesce('search_path=pg_catalog,pg_temp' = ANY (
                           SELECT regexp_replace(c, '[\s"]', '', 'g') FROM unnest(p.proconfig) c), false)
                 ORDER BY 1),
          '{}'::text[], 'every SECURITY DEFINER function in xprov pins search_path to exactly pg_catalog, pg_temp');
SELECT is(ARRAY(SELECT p.proname || '(' || pg_get_function_identity_arguments(p.oid) || '): ' || c
                  FROM pg_proc p, unnest(p.proconfig) c
                 WHERE p.pronamespace = 'xprov'::regnamespace AND c LIKE 'search_path=%'
                   AND regexp_replace(c, '[\s"]', '', 'g') <> 'search_path=pg_catalog,pg_temp'
                 ORDER BY 1),
          '{}'::text[],
          'every xprov function that pins a search_path names pg_temp last (unnamed, it is searched first for relations)');
SELECT is(ARRAY(SELECT p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ') ' || l.lanname
                  FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
                 WHERE p.pronamespace = 'xprov'::regnamespace AND p.proname !~ '^_' AND p.prokind = 'f'
                   -- these four run no SQL: shared memory, the sandbox, build constants
                   AND p.proname NOT IN ('build_info', 'validate_script', 'execute_script', 'worker_status')
                   AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%')
                 ORDER BY 1),
          '{}'::text[],
          'every public xprov function pins a search_path (C functions run their SQL under the caller''s otherwise)');

-- behaviour: the same calls under three hostile search_paths, then under a clean one
SELECT FROM unnest(ARRAY['0', '1', '2', '3']) v, pg_temp.b_setup(v);
SELECT FROM pg_temp.hijack('1', 'evil, pg_temp, public');
SELECT FROM pg_temp.hijack('2', 'pg_temp, evil, public');
SELECT FROM pg_temp.hijack('3', 'evil, pg_catalog, pg_temp, public');
SELECT FROM pg_temp.hijack('0', NULL);

SELECT is(ARRAY(SELECT label || ': ' || left(outcome, 5) FROM _b_result WHERE v = '0' AND outcome !~ '^OK: ' ORDER BY ord),
          ARRAY['add_hook over hook_max_timeout: 22023', 'add_hook over hook_max_memory: 22023'],
          'clean search_path: every call works (the two over the limits are refused)');
SELECT is(pg_temp.hijacked('0'), '{}'::text[], 'clean search_path: nothing of evil runs');
SELECT is(pg_temp.hijacked('1'), '{}'::text[], 'search_path "evil, pg_temp, public": nothing of evil runs');
SELECT is(pg_temp.answers_differ('1'), '{}'::text[], 'search_path "evil, pg_temp, public": every call answers as with a clean path');
SELECT is(pg_temp.hijacked('2'), '{}'::text[], 'search_path "pg_temp, evil, public": nothing of evil runs');
SELECT is(pg_temp.answers_differ('2'), '{}'::text[], 'search_path "pg_temp, evil, public": every call answers as with a clean path');
SELECT is(pg_temp.hijacked('3'), '{}'::text[], 'search_path "evil, pg_catalog, pg_temp, public": nothing of evil runs');
SELECT is(pg_temp.answers_differ('3'), '{}'::text[],
          'search_path "evil, pg_catalog, pg_temp, public": every call answers as with a clean path');
SELECT is(current_setting('search_path'), (SELECT reset_val FROM pg_settings WHERE name = 'search_path'),
          'the session''s search_path is its own again');

-- ================================================================ A. injection

-- ---------------------------------------------------------------- connectors
SELECT is(ARRAY(SELECT pg_temp.state(format('SELECT xprov.add_connector(%L, %L, %L, NULL, %L)', pg_temp.id('T'),
                                            'n-' || p.v, 'external',
                                            jsonb_build_object(p.v, p.v, 'endpoints', jsonb_build_object('user', p.v),
                                                               'auth', jsonb_build_object('type', 'bearer',
                                                                                          'token', translate(p.v, E'\r\n', '  ')))))
                  FROM _payload p ORDER BY p.n),
          array_fill('OK'::text, ARRAY[(SELECT count(*)::integer FROM _payload)]),
          'add_connector: hostile names, config keys and values, and tokens are accepted');
SELECT is(ARRAY(SELECT c.name FROM _payload p JOIN xprov.connectors c ON c.tenant_id = pg_temp.id('T') AND c.name = 'n-' || p.v
                 ORDER BY p.n),
          ARRAY(SELECT 'n-' || v FROM _payload ORDER BY n),
          'add_connector: every hostile name reads back literally from xprov.connectors');
SELECT is(ARRAY(SELECT c.config FROM _payload p JOIN xprov.connectors c ON c.tenant_id = pg_temp.id('T') AND c.name = 'n-' || p.v
                 ORDER BY p.n),
          ARRAY(SELECT jsonb_build_object(v, v, 'endpoints', jsonb_build_object('user', v)) FROM _payload ORDER BY n),
          'add_connector: hostile config keys and values read back literally (auth kept apart)');
SELECT is(ARRAY(SELECT s.secret ->> 'token' FROM _payload p
                  JOIN xprov.connectors c ON c.tenant_id = pg_temp.id('T') AND c.name = 'n-' || p.v
                  JOIN xprov.connector_secret s ON s.connector_id = c.id ORDER BY p.n),
          ARRAY(SELECT translate(v, E'\r\n', '  ') FROM _payload ORDER BY n),
          'add_connector: hostile tokens (no CR or LF: no header could carry them) are kept literally in xprov.connector_secret');
CREATE FUNCTION pg_temp.secret_roundtrip(p_value text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    st text := pg_temp.state(format('SELECT xprov.set_connector_secret(%L, %L)', pg_temp.id('cx'),
                                    jsonb_build_object('type', 'header', 'header_name', 'X-Api-Key', 'value', p_value)));
BEGIN
    RETURN st || ':' || coalesce((SELECT (s.secret ->> 'value' = p_value)::text FROM xprov.connector_secret s
                                   WHERE s.connector_id = pg_temp.id('cx')), 'none');
END $$;
SELECT is(ARRAY(SELECT pg_temp.secret_roundtrip(p.v) FROM _payload p WHERE p.v !~ '[\r\n\t]' ORDER BY p.n),
          ARRAY(SELECT 'OK:true' FROM _payload WHERE v !~ '[\r\n\t]'),
          'set_connector_secret: hostile header values (no control characters) are kept literally');

-- ---------------------------------------------------------------- enqueue
CREATE TEMP TABLE _ops (n integer PRIMARY KEY, id uuid, again uuid);
INSERT INTO _ops
SELECT p.n, xprov.enqueue(pg_temp.id('T'), pg_temp.id('cx'), NULL, 'create', p.v,
                          jsonb_build_object(p.v, p.v, 'k', jsonb_build_array(p.v)), p.v, 0, NULL, 'key:' || p.v)
  FROM _payload p;
SELECT is(ARRAY(SELECT o.object_class FROM _ops x JOIN xprov.operations o ON o.id = x.id ORDER BY x.n),
          pg_temp.payloads(), 'enqueue: hostile object classes read back literally from xprov.operations');
SELECT is(ARRAY(SELECT o.target_uid FROM _ops x JOIN xprov.operations o ON o.id = x.id ORDER BY x.n),
          pg_temp.payloads(), 'enqueue: hostile target_uids read back literally');
SELECT is(ARRAY(SELECT o.attributes FROM _ops x JOIN xprov.operations o ON o.id = x.id ORDER BY x.n),
          ARRAY(SELECT jsonb_build_object(v, v, 'k', jsonb_build_array(v)) FROM _payload ORDER BY n),
          'enqueue: hostile attribute keys and values read back literally');
SELECT is(ARRAY(SELECT o.idempotency_key FROM _ops x JOIN xprov.operations o ON o.id = x.id ORDER BY x.n),
          ARRAY(SELECT 'key:' || v FROM _payload ORDER BY n), 'enqueue: hostile idempotency keys read back literally');
UPDATE _ops x SET again = xprov.enqueue(pg_temp.id('T'), pg_temp.id('cx'), NULL, 'create', p.v, '{}', p.v, 0, NULL, 'key:' || p.v)
  FROM _payload p WHERE p.n = x.n;
SELECT is((SELECT count(*) FROM _ops WHERE again = id), (SELECT count(*) FROM _payload),
          'enqueue: each hostile idempotency key deduplicates to its own first operation');
SELECT is((SELECT count(DISTINCT id) FROM _ops), (SELECT count(*) FROM _payload),
          'enqueue: hostile object classes and uids make distinct subjects, no collisions');

-- ---------------------------------------------------------------- enqueue_batch
CREATE TEMP TABLE _batch AS
SELECT q.n, q.id FROM xprov.enqueue_batch((
    SELECT jsonb_agg(jsonb_build_object('tenant_id', pg_temp.id('T'), 'connector_id', pg_temp.id('cx'),
                                        'identity_id', NULL, 'target_uid', 'b:' || p.v, 'operation_type', 'update',
                                        'object_class', 'b:' || p.v, 'attributes', jsonb_build_object(p.v, p.v),
                                        'idempotency_key', 'batch:' || p.v) ORDER BY p.n)
      FROM _payload p)) WITH ORDINALITY q(id, n);
SELECT is(ARRAY(SELECT jsonb_build_array(o.object_class, o.target_uid, o.attributes, o.idempotency_key)
                  FROM _batch b JOIN xprov.operations o ON o.id = b.id ORDER BY b.n),
          ARRAY(SELECT jsonb_build_array('b:' || v, 'b:' || v, jsonb_build_object(v, v), 'batch:' || v) FROM _payload ORDER BY n),
          'enqueue_batch: hostile classes, uids, attributes and keys read back literally, in order');
SELECT is(pg_temp.err(format('SELECT xprov.enqueue_batch(%L)', jsonb_build_array(
              jsonb_build_object('tenant_id', pg_temp.id('T'), 'connector_id', pg_temp.id('cx'), 'target_uid', 'x',
                                 'operation_type', 'create', 'object_class', 'user'),
              jsonb_build_object('tenant_id', pg_temp.id('T'), 'connector_id', pg_temp.id('cx'), 'target_uid', 'y',
                                 'operation_type', 'create', 'object_class', 'user',
                                 $k$x'); DROP TABLE public.xprov_canary; -- %s%n%x$k$, 1)))),
          $e$22023: enqueue_batch element 1: unknown field "x'); DROP TABLE public.xprov_canary; -- %s%n%x"$e$,
          'enqueue_batch: a hostile unknown field is refused naming the element, the name quoted literally');

-- ---------------------------------------------------------------- hooks
CREATE TEMP TABLE _hooks (n integer PRIMARY KEY, id uuid);
INSERT INTO _hooks
SELECT p.n, xprov.add_hook(pg_temp.id('T'), pg_temp.id('cx'), p.v, 'before',
                           format('function hook(ctx) { return { attributes: { x: %s } }; }', to_jsonb(p.v)))
  FROM _payload p;
SELECT is(ARRAY(SELECT h.object_class FROM _hooks x JOIN xprov.hooks h ON h.id = x.id ORDER BY x.n),
          pg_temp.payloads(), 'add_hook: hostile object classes read back literally from xprov.hooks');
SELECT is(ARRAY(SELECT v.script FROM _hooks x JOIN xprov.hook_versions v ON v.hook_id = x.id ORDER BY x.n),
          ARRAY(SELECT format('function hook(ctx) { return { attributes: { x: %s } }; }', to_jsonb(v)) FROM _payload ORDER BY n),
          'add_hook: scripts with hostile strings are kept literally in xprov.hook_versions');
SELECT is((SELECT xprov.execute_script(h.script, '{}') FROM xprov.hooks h JOIN _hooks x ON x.id = h.id WHERE x.n = 1),
          jsonb_build_object('attributes', jsonb_build_object('x', (SELECT v FROM _payload WHERE n = 1))),
          'a hook script carrying a hostile string returns it as data');
SELECT is(ARRAY(SELECT pg_temp.state(format('SELECT xprov.add_hook(%L, NULL, NULL, %L, %L, %L)', pg_temp.id('T'), 'before',
                                            'function hook(ctx) { }', o))
                  FROM unnest(ARRAY[
                      '{"timeout_ms": "1; DROP TABLE public.xprov_canary"}',
                      '{"timeout_ms": "100); DROP TABLE public.xprov_canary; --"}',
                      '{"memory_kb": "1024 OR 1=1"}',
                      '{"failure": "fatal''; DROP TABLE public.xprov_canary; --"}',
                      '{"order": "0); DELETE FROM public.xprov_canary; --"}',
                      '{"x''); DROP TABLE public.xprov_canary; --": 1}',
                      '{"timeout_ms": 100, "%s%n%x": 1}']) o),
          array_fill('22023'::text, ARRAY[7]),
          'add_hook: options carrying SQL or format specifiers in keys or values -> 22023');
SELECT is(pg_temp.err(format('SELECT xprov.add_hook(%L, NULL, NULL, %L, %L, %L)', pg_temp.id('T'), 'before', 'function hook(ctx) { }',
                             '{"x''); DROP TABLE public.xprov_canary; -- %s": 1}')),
          $e$22023: unknown hook options: x'); DROP TABLE public.xprov_canary; -- %s$e$,
          'add_hook: the unknown option is named literally in the error');
SELECT is(pg_temp.err(format('SELECT xprov.add_hook(%L, NULL, NULL, %L, %L)', pg_temp.id('T'),
                             $p$before'; DROP TABLE public.xprov_canary; --$p$, 'function hook(ctx) { }')),
          $e$22023: unknown hook phase "before'; DROP TABLE public.xprov_canary; --"$e$,
          'add_hook: a hostile phase -> 22023, named literally');

-- ---------------------------------------------------------------- identity source: hostile names that do not exist
SELECT is(ARRAY(SELECT pg_temp.state(format('SELECT xprov.set_identity_source(%L, %L, %L)', pg_temp.id('T3'), 'plain_people', o))
                  FROM unnest(ARRAY[
                      jsonb_build_object('id_column', 'id); DROP TABLE public.xprov_canary; --'),
                      jsonb_build_object('id_column', 'id" = id OR true; --'),
                      jsonb_build_object('tenant_column', 'id); DROP TABLE public.xprov_canary; --'),
                      jsonb_build_object('attributes_column', 'x'')::jsonb; DROP TABLE public.xprov_canary; --'),
                      jsonb_build_object('columns', jsonb_build_object('mail', 'email); DROP TABLE public.xprov_canary; --')),
                      jsonb_build_object('columns', jsonb_build_object('mail', 'email"::text, (SELECT 1)::text --')),
                      jsonb_build_object('columns', jsonb_build_object('mail', 5)),
                      jsonb_build_object('columns', '"email); DROP TABLE public.xprov_canary; --"'::jsonb)]) o),
          ARRAY['22023', '22023', '22023', '22023', '42703', '42703', '42703', '22023'],
          'set_identity_source: hostile column names that are not columns are refused (22023 / 42703)');
SELECT matches(pg_temp.state(format('SELECT xprov.set_identity_source(%L, %L, %L)', pg_temp.id('T3'),
                                    'plain_people); DROP TABLE public.xprov_canary; --', '{}')),
               '^(42P01|42602)$', 'set_identity_source: a hostile relation name that is no relation -> 42P01 / 42602');
SELECT is((SELECT count(*) FROM xprov.identity_source WHERE tenant_id = pg_temp.id('T3')), 0::bigint,
          'the refused identity sources left nothing behind');

-- ---------------------------------------------------------------- identity source: hostile names that exist
SELECT lives_ok(format('SELECT xprov.set_identity_source(%L, %L, %L)', pg_temp.id('T'),
                       quote_ident('ppl''); DROP TABLE public.xprov_canary; --'), pg_temp.hostile_source_options()),
                'set_identity_source: a relation and columns with hostile (real) names are accepted');
SELECT is((SELECT ARRAY[s.relation::regclass::oid::text, s.id_column::text, s.tenant_column::text, s.attributes_column::text,
                        s.columns::text]
             FROM xprov.identity_source s WHERE s.tenant_id = pg_temp.id('T')),
          ARRAY[quote_ident('ppl''); DROP TABLE public.xprov_canary; --')::regclass::oid::text,
                'id"); DROP TABLE public.xprov_canary; --', 't'' OR ''1''=''1', 'a$$; DELETE FROM public.xprov_canary; $$',
                (pg_temp.hostile_source_options() -> 'columns')::text],
          'the identity source keeps the relation and every column name literally');
SELECT is(ARRAY(SELECT pg_temp.state(format('SELECT xprov.add_correlation_rule(%L, %L, %L)', pg_temp.id('cs'), 'user', r))
                  FROM unnest(ARRAY[
                      jsonb_build_object('name', (SELECT v FROM _payload WHERE n = 1), 'tier', 1,
                          'items', jsonb_build_array(jsonb_build_object('target', 'emails.0.value',
                              'identity', 'mail''); DROP TABLE public.xprov_canary; --', 'match', 'case_insensitive'))),
                      jsonb_build_object('name', (SELECT v FROM _payload WHERE n = 4), 'tier', 1,
                          'items', jsonb_build_array(jsonb_build_object('target', 'urn:x''); DROP TABLE public.xprov_canary; --:User:no',
                              'identity', 'no'');--', 'match', 'exact'))),
                      jsonb_build_object('name', (SELECT v FROM _payload WHERE n = 6), 'tier', 2,
                          'items', jsonb_build_array(
                              jsonb_build_object('target', 'name.givenName', 'identity', 'given', 'match', 'normalized'),
                              jsonb_build_object('target', 'x''.y"z', 'identity', 'l' || repeat('x', 69), 'match', 'fuzzy',
                                                 'min_score', 0.3)))]) r),
          ARRAY['OK', 'OK', 'OK'],
          'add_correlation_rule: rules over hostile attribute names, paths and rule names are accepted');
SELECT is(ARRAY(SELECT r.name FROM xprov.correlation_rules r WHERE r.connector_id = pg_temp.id('cs') ORDER BY r.name COLLATE "C"),
          ARRAY(SELECT v FROM _payload WHERE n IN (1, 4, 6) ORDER BY v COLLATE "C"),
          'the rule names read back literally from xprov.correlation_rules');
SELECT is(pg_temp.err(format('SELECT xprov.add_correlation_rule(%L, %L, %L)', pg_temp.id('cs'), 'user',
                             jsonb_build_object('items', jsonb_build_array(jsonb_build_object('target', 'userName',
                                 'identity', 'id"); DROP TABLE public.xprov_canary; --', 'match', $m$exact'; DROP TABLE public.xprov_canary; --$m$))))),
          $e$22023: correlation rule item 1: unknown match kind "exact'; DROP TABLE public.xprov_canary; --"$e$,
          'add_correlation_rule: a hostile match kind -> 22023, named literally');
SELECT FROM xprov.set_identity_source(pg_temp.id('T3'), 'plain_people', '{}');
SELECT is(pg_temp.state(format('SELECT xprov.add_correlation_rule(%L, %L, %L)', pg_temp.id('c3'), 'user',
                               '{"items": [{"target": "userName", "identity": "email); DROP TABLE public.xprov_canary; --", "match": "exact"}]}')),
          '42703', 'add_correlation_rule: a hostile identity attribute that is no column (no attributes column) -> 42703');

-- correlation through the hostile names finds the right people
SELECT is(ARRAY(SELECT pg_temp.nm(c.identity_id) || ':' || c.match_type
                  FROM xprov.correlate_owner(pg_temp.id('T'), pg_temp.id('cs'), pg_temp.ada_account()) c),
          ARRAY['ada:definite'],
          'correlate_owner: the mapped hostile column and the hostile attributes key both find ada (and not T2''s ada)');
SELECT is(ARRAY(SELECT pg_temp.nm(c.identity_id) || ':' || c.match_type
                  FROM xprov.correlate_owner(pg_temp.id('T'), pg_temp.id('cs'),
                                             '{"name": {"givenName": "  grace "}, "x''": {"y\"z": "hopper-grace-coboll"}}') c),
          ARRAY['grace:candidate'],
          'correlate_owner: tier 2 over the unicode and the 63-byte column (given as 70 characters) finds grace');
INSERT INTO xprov.shadow (tenant_id, connector_id, object_class, target_uid, lifecycle, situation, observed)
VALUES (pg_temp.id('T'), pg_temp.id('cs'), 'user', $u$acct'); DROP TABLE public.xprov_canary; --$u$, 'live', 'unmatched',
        pg_temp.ada_account());
SELECT is(ARRAY(SELECT c.uid || ':' || c.match_type
                  FROM xprov.correlate(pg_temp.id('T'), pg_temp.id('cs'), jsonb_build_object('identity_id', pg_temp.id('ada'))) c),
          ARRAY[$u$acct'); DROP TABLE public.xprov_canary; --:definite$u$],
          'correlate: ada''s attributes read through the hostile names find her account');

-- the reconciler's diff (run here, in this session, on a run staged by hand)
INSERT INTO xprov.reconciliation_run (tenant_id, connector_id, object_class, mode, status, phase)
VALUES (pg_temp.id('T'), pg_temp.id('cs'), 'user', 'preview', 'running', 'diff')
RETURNING pg_temp.put('run', id) \g /dev/null
INSERT INTO xprov.reconciliation_item (run_id, target_uid, attributes) VALUES
    (pg_temp.id('run'), $u$listed'); DROP TABLE public.xprov_canary; --$u$, pg_temp.ada_account()),
    (pg_temp.id('run'), 'listed-nobody', '{"emails": [{"value": "nobody@example.com"}]}');
SELECT lives_ok(format('SELECT xprov._recon_diff(%L)', pg_temp.id('run')),
                '_recon_diff: the set-based correlation (_rule_join) and the unqualified check run over the hostile names');
SELECT is(ARRAY(SELECT d.target_uid || ':' || d.type || ':' || coalesce(pg_temp.nm(d.identity_id), '-')
                  FROM xprov.discrepancies d WHERE d.run_id = pg_temp.id('run') ORDER BY d.target_uid),
          ARRAY[$u$listed'); DROP TABLE public.xprov_canary; --:unlinked:ada$u$, 'listed-nobody:orphan:-'],
          '_recon_diff: the listed account is found to be ada''s, the other nobody''s');
SELECT is(ARRAY(SELECT DISTINCT e ->> 'name'
                  FROM xprov.discrepancies d, jsonb_array_elements(d.candidates) c, jsonb_array_elements(c -> 'evidence') e
                 WHERE d.run_id = pg_temp.id('run') ORDER BY 1),
          ARRAY(SELECT v FROM _payload WHERE n IN (1, 4) ORDER BY v),
          '_recon_diff: the evidence names the hostile rule names literally');

-- ---------------------------------------------------------------- reactions, cases, reconciliation
SELECT is(ARRAY(SELECT pg_temp.state(format('SELECT xprov.set_reaction(%L, %L, %L)', pg_temp.id('cs'), t, a))
                  FROM (VALUES ($p$orphan'; DROP TABLE public.xprov_canary; --$p$, 'report'),
                               ('orphan', $p$disable'; DROP TABLE public.xprov_canary; --$p$),
                               ('%s%n', 'report'), ('orphan', '%I'), ((SELECT v FROM _payload WHERE n = 13), 'report')) x(t, a)),
          ARRAY['22023', '22023', '22023', '22023', '22023'],
          'set_reaction: hostile discrepancy types and actions -> 22023');
SELECT is(pg_temp.state(format('SELECT xprov.resolve_case(%L, %L)', gen_random_uuid(), $p$link'; DROP TABLE public.xprov_canary; --$p$)),
          '22023', 'resolve_case: a hostile decision -> 22023');
SELECT set_config('xprov.tenant_id', pg_temp.id('T')::text, true) \g /dev/null
CREATE TEMP TABLE _runs AS
SELECT p.n, xprov.reconcile_preview(pg_temp.id('cs'), 'r:' || p.v) AS id FROM _payload p;
SELECT set_config('xprov.tenant_id', '', true) \g /dev/null
SELECT is(ARRAY(SELECT r.object_class FROM _runs x JOIN xprov.reconciliation_runs r ON r.id = x.id ORDER BY x.n),
          ARRAY(SELECT 'r:' || v FROM _payload ORDER BY n),
          'reconcile_preview: hostile object classes read back literally from xprov.reconciliation_runs');

-- ---------------------------------------------------------------- into the target's URL
SELECT is(ARRAY(SELECT c || ' -> ' || pg_temp.stray('create', c, NULL)
                  FROM unnest(ARRAY['..', '.', '../../xprov-stray-probe', 'Users/../../xprov-stray-probe',
                                    'Users?attributes=password#', 'Users#fragment', 'Users/extra', 'Us%2Fers',
                                    E'Users\r\nX-Injected: 1', 'user name']) c),
          ARRAY(SELECT c || ' -> ' || 'ok'
                  FROM unnest(ARRAY['..', '.', '../../xprov-stray-probe', 'Users/../../xprov-stray-probe',
                                    'Users?attributes=password#', 'Users#fragment', 'Users/extra', 'Us%2Fers',
                                    E'Users\r\nX-Injected: 1', 'user name']) c),
          'scim2: a hostile object class is one path segment under the base URL, or refused; never ../, ? or #');
SELECT is(ARRAY(SELECT t || ' ' || u || ' -> ' || pg_temp.stray(t, 'user', u)
                  FROM unnest(ARRAY['update', 'delete']) t, unnest(ARRAY['..', '.', 'a/../../b', '%2e%2e', '?x=1#y']) u),
          ARRAY(SELECT t || ' ' || u || ' -> ' || 'ok'
                  FROM unnest(ARRAY['update', 'delete']) t, unnest(ARRAY['..', '.', 'a/../../b', '%2e%2e', '?x=1#y']) u),
          'scim2: a hostile target_uid is one path segment under the endpoint, or refused; never a dot segment');

-- ================================================================ C. oversized and malformed

-- absurd lengths: a class, name or type of 100,000 characters is no name; 255 is one
CREATE FUNCTION pg_temp.long_outcomes(p_len integer) RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
    s text := left(repeat('Long-Class_', p_len / 11 + 1), p_len);
    r text[];
BEGIN
    PERFORM set_config('xprov.tenant_id', pg_temp.id('T')::text, true);
    r := ARRAY[
        'enqueue object_class: ' || pg_temp.state(format('SELECT xprov.enqueue(%L, %L, gen_random_uuid(), %L, %L, %L)',
                                                          pg_temp.id('T'), pg_temp.id('cx'), 'create', s, '{}')),
        'enqueue_batch object_class: ' || pg_temp.state(format('SELECT xprov.enqueue_batch(%L)', jsonb_build_array(jsonb_build_object(
                                              'tenant_id', pg_temp.id('T'), 'connector_id', pg_temp.id('cx'), 'target_uid', 'u',
                                              'operation_type', 'create', 'object_class', s)))),
        'enqueue target_uid: ' || pg_temp.state(format('SELECT xprov.enqueue(%L, %L, NULL, %L, %L, %L, %L)',
                                                        pg_temp.id('T'), pg_temp.id('cx'), 'create', 'user', '{}', s)),
        'enqueue idempotency_key: ' || pg_temp.state(format('SELECT xprov.enqueue(%L, %L, gen_random_uuid(), %L, %L, %L, NULL, 0, NULL, %L)',
                                                             pg_temp.id('T'), pg_temp.id('cx'), 'create', 'user', '{}', s)),
        'add_connector name: ' || pg_temp.state(format('SELECT xprov.add_connector(%L, %L, %L, NULL)', pg_temp.id('T'), s, 'external')),
        'add_hook object_class: ' || pg_temp.state(format('SELECT xprov.add_hook(%L, NULL, %L, %L, %L)', pg_temp.id('T'), s,
                                                           'before', 'function hook(ctx) { }')),
        'add_correlation_rule object_class: ' || pg_temp.state(format('SELECT xprov.add_correlation_rule(%L, %L, %L)',
                                                   pg_temp.id('cs'), s, '{"items": [{"target": "userName", "identity": "given", "match": "exact"}]}')),
        'reconcile_preview object_class: ' || pg_temp.state(format('SELECT xprov.reconcile_preview(%L, %L)', pg_temp.id('cs'), s))];
    PERFORM set_config('xprov.tenant_id', '', true);
    RETURN r;
END $$;
SELECT is(pg_temp.long_outcomes(255),
          ARRAY['enqueue object_class: OK', 'enqueue_batch object_class: OK', 'enqueue target_uid: OK',
                'enqueue idempotency_key: OK', 'add_connector name: OK', 'add_hook object_class: OK',
                'add_correlation_rule object_class: OK', 'reconcile_preview object_class: OK'],
          'names of 255 characters are fine everywhere');
SELECT is(ARRAY(SELECT regexp_replace(o, ': (22023|54000)$', ': refused') FROM unnest(pg_temp.long_outcomes(100000)) o),
          ARRAY['enqueue object_class: refused', 'enqueue_batch object_class: refused', 'enqueue target_uid: refused',
                'enqueue idempotency_key: refused', 'add_connector name: refused', 'add_hook object_class: refused',
                'add_correlation_rule object_class: refused', 'reconcile_preview object_class: refused'],
          'names of 100,000 characters are refused everywhere (22023 or 54000), not stored');

-- hook scripts of several MB
SELECT is(pg_temp.state(format('SELECT xprov.add_hook(%L, NULL, NULL, %L, %L)', pg_temp.id('T'), 'before',
                               'function hook(ctx) { }' || repeat(E'\n// padding padding padding padding padding padding', 100000))),
          '54000', 'add_hook: a 5 MB script is refused with 54000');
SELECT is(pg_temp.state(format('SELECT xprov.update_hook(%L, %L)', (SELECT id FROM _hooks WHERE n = 1),
                               'function hook(ctx) { }' || repeat(E'\n// padding padding padding padding padding padding', 100000))),
          '54000', 'update_hook: a 5 MB script is refused with 54000');

-- secrets of the wrong shape
SELECT is(ARRAY(SELECT a || ' -> ' || pg_temp.state(format('SELECT xprov.add_connector(%L, %L, %L, NULL, %L)', pg_temp.id('T'),
                                                           'auth-' || md5(a), 'external', jsonb_build_object('auth', a::jsonb)))
                  FROM unnest(ARRAY['"TOPSECRET"', '[1]', '{"type": "magic"}', '{"type": "bearer"}', '{"type": "bearer", "token": 5}',
                                    '{"type": "basic", "username": "u"}']) a),
          ARRAY(SELECT a || ' -> 22023'
                  FROM unnest(ARRAY['"TOPSECRET"', '[1]', '{"type": "magic"}', '{"type": "bearer"}', '{"type": "bearer", "token": 5}',
                                    '{"type": "basic", "username": "u"}']) a),
          'add_connector: an auth object set_connector_secret would refuse is refused too (22023)');
SELECT unalike(pg_temp.outcome(format('SELECT xprov.add_connector(%L, %L, %L, NULL, %L)', pg_temp.id('T'), 'auth-leak',
                                     'external', '{"auth": ["TOPSECRET-in-an-array"]}')),
               '%TOPSECRET%', 'add_connector: a malformed auth is refused without repeating the secret (message or DETAIL)');
CREATE TEMP TABLE _unsendable (s jsonb);
INSERT INTO _unsendable VALUES
    (jsonb_build_object('type', 'bearer', 'token', E'tok\r\nX-Injected: 1')),
    (jsonb_build_object('type', 'bearer', 'token', '')),
    (jsonb_build_object('type', 'basic', 'username', 'u:x', 'password', 'p')),
    (jsonb_build_object('type', 'basic', 'username', 'u', 'password', E'p\n')),
    (jsonb_build_object('type', 'header', 'header_name', E'X-A\r\nX-Injected', 'value', 'v')),
    (jsonb_build_object('type', 'header', 'header_name', 'X-A: b', 'value', 'v')),
    (jsonb_build_object('type', 'header', 'header_name', 'X-A', 'value', E'v\r\nX-Injected: 1'));
SELECT is(ARRAY(SELECT s::text || ' -> ' || pg_temp.state(format('SELECT xprov.set_connector_secret(%L, %L)', pg_temp.id('cx'), s))
                  FROM _unsendable ORDER BY s::text),
          ARRAY(SELECT s::text || ' -> 22023' FROM _unsendable ORDER BY s::text),
          'set_connector_secret: secrets no request could carry (control characters, colons, empty) are refused up front');
-- a header secret must not take over the request's framing or routing: refused when set, or
-- refused by the HTTP engine before anything is sent
CREATE FUNCTION pg_temp.framing(p_header text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    r jsonb;
BEGIN
    BEGIN
        PERFORM xprov.set_connector_secret(pg_temp.id('cu'), jsonb_build_object('type', 'header', 'header_name', p_header,
                                                                                'value', '0'));
    EXCEPTION WHEN OTHERS THEN
        RETURN 'refused ' || SQLSTATE;
    END;
    BEGIN
        r := xprov.try_operation(pg_temp.id('cu'), 'update', 'user', '{"displayName": "x"}', 'xprov-framing-probe', NULL, false);
    EXCEPTION WHEN OTHERS THEN
        RETURN 'refused ' || SQLSTATE;
    END;
    RETURN CASE WHEN EXISTS (SELECT 1 FROM jsonb_array_elements(r -> 'exchanges') e WHERE e -> 'status' <> 'null'::jsonb)
                THEN 'sent' ELSE 'refused (not sent)' END;
END $$;
SELECT is(ARRAY(SELECT h || ': ' || regexp_replace(pg_temp.framing(h), '^refused.*$', 'refused')
                  FROM unnest(ARRAY['Content-Length', 'Transfer-Encoding', 'Host', 'Connection', 'content-length']) h),
          ARRAY['Content-Length: refused', 'Transfer-Encoding: refused', 'Host: refused', 'Connection: refused',
                'content-length: refused'],
          'a header secret naming Content-Length, Transfer-Encoding, Host or Connection never reaches the wire');
SELECT FROM xprov.set_connector_secret(pg_temp.id('cu'), NULL);

-- the tenant context: anything but the connector's tenant, as a UUID, acts for nobody
SELECT is(ARRAY(SELECT regexp_replace(pg_temp.state(format('SELECT set_config(%L, %L, true), xprov.reconcile_preview(%L, %L)',
                                                           'xprov.tenant_id', t, pg_temp.id('cs'), 'tenant-probe')),
                                      '^(42501|22023)$', 'refused')
                  FROM unnest(ARRAY['garbage', ' ', pg_temp.id('T')::text || E'\n', ' ' || pg_temp.id('T')::text,
                                    pg_temp.id('T')::text || ''' OR ''1''=''1', left(pg_temp.id('T')::text, 35),
                                    pg_temp.id('T')::text || '0', '%s', repeat('a', 100000)]) t),
          array_fill('refused'::text, ARRAY[9]),
          'xprov.tenant_id: malformed, padded or truncated UUIDs -> refused (42501, or 22023 when set), acting for nobody');
SELECT is((SELECT count(*) FROM xprov.reconciliation_runs WHERE object_class = 'tenant-probe'), 0::bigint,
          'none of them started a run');
SELECT set_config('xprov.tenant_id', '', true) \g /dev/null

-- ================================================================ the canary, the watchers, the inventory
SELECT has_table('public', 'xprov_canary', 'the canary table still exists');
SELECT is(pg_temp.canary(), '1=intact,2=intact,3=intact', 'the canary''s rows are untouched');
SELECT is(ARRAY(SELECT what FROM public.xprov_inject_tamper ORDER BY seq), '{}'::text[],
          'no DDL and no change to the canary happened behind the tests'' backs');
SELECT is(ARRAY(SELECT x FROM unnest(pg_temp.inventory()) x EXCEPT SELECT x FROM _inventory, unnest(objects) x ORDER BY 1),
          '{}'::text[], 'no object appeared (schemas, relations, functions, operators, roles, databases, triggers)');
SELECT is(ARRAY(SELECT x FROM _inventory, unnest(objects) x EXCEPT SELECT x FROM unnest(pg_temp.inventory()) x ORDER BY 1),
          '{}'::text[], 'no object disappeared');

SELECT * FROM finish();
ROLLBACK;
