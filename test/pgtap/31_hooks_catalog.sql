-- The hook catalog: xprov.add_hook, xprov.update_hook, xprov.set_hook_enabled,
-- the views xprov.hooks and xprov.hook_versions, and operation_attempts.hooks
-- (README "Hooks (JavaScript)").  What hooks do when the worker runs them is
-- tested at process level; the sandbox itself in 30_sandbox.sql.
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS xprov;

BEGIN;
SELECT plan(93);
\ir common.psql

SELECT FROM pg_temp.tenant('t1');
SELECT FROM pg_temp.tenant('t2');
SELECT FROM pg_temp.conn('c1', 't1');
SELECT FROM pg_temp.conn('c2', 't2');

-- scripts: s1 (the README's transform), s2 and s3 (later versions), and two that are refused
CREATE TEMP TABLE _js (name text PRIMARY KEY, script text NOT NULL);
INSERT INTO _js VALUES
    ('s1', $js$
  function hook(ctx) {
    var a = ctx.attributes;
    a.userName = (a.givenName + '.' + a.familyName).toLowerCase();
    return { attributes: a };
  }
$js$),
    ('s2', 'function hook(ctx) { return { attributes: { userName: ctx.attributes.mail } }; }'),
    ('s3', 'function hook(ctx) { }'),
    ('syntax', E'function hook(ctx) {\n  var a = 1;\n  var b = ;\n  return a;\n}'),
    ('nohook', 'function transform(ctx) { return ctx; }');

CREATE FUNCTION pg_temp.js(p_name text) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT script FROM _js WHERE name = p_name
$$;

-- add_hook(t1, c1, 'user', 'before', s1, p_options) through pg_temp.outcome:
-- 'OK: <hook id>' or '<SQLSTATE>: <message>[ DETAIL: <detail>]'
CREATE FUNCTION pg_temp.add_opts(p_options jsonb) RETURNS text LANGUAGE sql AS $$
    SELECT pg_temp.outcome(format('SELECT xprov.add_hook(%L, %L, %L, %L, %L, %L::jsonb)',
                                  pg_temp.id('t1'), pg_temp.id('c1'), 'user', 'before', pg_temp.js('s1'), p_options))
$$;

-- the number of hooks of tenants t1 and t2
CREATE FUNCTION pg_temp.nhooks() RETURNS bigint LANGUAGE sql AS $$
    SELECT count(*) FROM xprov.hooks WHERE tenant_id IN (pg_temp.id('t1'), pg_temp.id('t2'))
$$;

-- ---------------------------------------------------------------- contract
SELECT has_function('xprov', 'add_hook', ARRAY['uuid', 'uuid', 'text', 'text', 'text', 'jsonb'],
                    'add_hook(uuid, uuid, text, text, text, jsonb)');
SELECT function_returns('xprov', 'add_hook', ARRAY['uuid', 'uuid', 'text', 'text', 'text', 'jsonb'], 'uuid',
                        'add_hook returns uuid');
SELECT has_function('xprov', 'update_hook', ARRAY['uuid', 'text'], 'update_hook(uuid, text)');
SELECT function_returns('xprov', 'update_hook', ARRAY['uuid', 'text'], 'integer', 'update_hook returns integer');
SELECT has_function('xprov', 'set_hook_enabled', ARRAY['uuid', 'boolean'], 'set_hook_enabled(uuid, boolean)');
SELECT function_returns('xprov', 'set_hook_enabled', ARRAY['uuid', 'boolean'], 'void', 'set_hook_enabled returns void');
SELECT has_view('xprov', 'hooks', 'xprov.hooks exists');
SELECT columns_are('xprov', 'hooks',
                   ARRAY['id', 'tenant_id', 'connector_id', 'object_class', 'phase', 'version', 'enabled', 'order',
                         'timeout_ms', 'memory_kb', 'failure', 'script', 'created_at', 'updated_at'],
                   'xprov.hooks has its documented columns');
SELECT col_type_is('xprov', 'hooks', 'id', 'uuid', 'hooks.id is uuid');
SELECT col_type_is('xprov', 'hooks', 'tenant_id', 'uuid', 'hooks.tenant_id is uuid');
SELECT col_type_is('xprov', 'hooks', 'connector_id', 'uuid', 'hooks.connector_id is uuid');
SELECT col_type_is('xprov', 'hooks', 'object_class', 'text', 'hooks.object_class is text');
SELECT col_type_is('xprov', 'hooks', 'phase', 'text', 'hooks.phase is text');
SELECT col_type_is('xprov', 'hooks', 'version', 'integer', 'hooks.version is integer');
SELECT col_type_is('xprov', 'hooks', 'enabled', 'boolean', 'hooks.enabled is boolean');
SELECT col_type_is('xprov', 'hooks', 'order', 'integer', 'hooks.order is integer');
SELECT col_type_is('xprov', 'hooks', 'timeout_ms', 'integer', 'hooks.timeout_ms is integer');
SELECT col_type_is('xprov', 'hooks', 'memory_kb', 'integer', 'hooks.memory_kb is integer');
SELECT col_type_is('xprov', 'hooks', 'failure', 'text', 'hooks.failure is text');
SELECT col_type_is('xprov', 'hooks', 'script', 'text', 'hooks.script is text');
SELECT col_type_is('xprov', 'hooks', 'created_at', 'timestamp with time zone', 'hooks.created_at is timestamptz');
SELECT col_type_is('xprov', 'hooks', 'updated_at', 'timestamp with time zone', 'hooks.updated_at is timestamptz');
SELECT has_view('xprov', 'hook_versions', 'xprov.hook_versions exists');
SELECT columns_are('xprov', 'hook_versions', ARRAY['hook_id', 'version', 'script', 'created_at'],
                   'xprov.hook_versions has its documented columns');
SELECT col_type_is('xprov', 'hook_versions', 'hook_id', 'uuid', 'hook_versions.hook_id is uuid');
SELECT col_type_is('xprov', 'hook_versions', 'version', 'integer', 'hook_versions.version is integer');
SELECT col_type_is('xprov', 'hook_versions', 'script', 'text', 'hook_versions.script is text');
SELECT col_type_is('xprov', 'hook_versions', 'created_at', 'timestamp with time zone',
                   'hook_versions.created_at is timestamptz');
SELECT has_column('xprov', 'operation_attempts', 'hooks', 'xprov.operation_attempts has a hooks column');
SELECT col_type_is('xprov', 'operation_attempts', 'hooks', 'jsonb', 'operation_attempts.hooks is jsonb');

-- ---------------------------------------------------------------- stored histories (hook_history.h)
SELECT is(xprov._hook_history('ba:3:12:3b5dx2ghTiuScBru5xugdQ'),
          '[{"hook_id": "ddbe5dc7-6821-4e2b-9270-1aeee71ba075", "version": 3, "phase": "before",
             "duration_us": 12, "outcome": "attributes"}]'::jsonb,
          'a stored run reads back as the history''s JSON');
SELECT is(jsonb_path_query_array(xprov._hook_history(
              'bu:1:0:AAAAAAAAAAAAAAAAAAAAAA as:2:7:3b5dx2ghTiuScBru5xugdQ eh:2147483647:9223372036854775807://///////////////////w'),
              '$[*].phase') || jsonb_path_query_array(xprov._hook_history(
              'bu:1:0:AAAAAAAAAAAAAAAAAAAAAA as:2:7:3b5dx2ghTiuScBru5xugdQ en:2147483647:9223372036854775807://///////////////////w'),
              '$[*].outcome'),
          '["before", "after", "on_error", "unchanged", "skip", "no_retry"]'::jsonb,
          'several runs keep their order, phases and outcomes');
SELECT is(xprov._hook_history('bu:1:0://///////////////////w') -> 0 ->> 'hook_id', 'ffffffff-ffff-ffff-ffff-ffffffffffff',
          'hook ids use the whole base64 alphabet');
SELECT is(xprov._hook_history('[{"hook_id": "x", "error": "boom"}]'), '[{"hook_id": "x", "error": "boom"}]'::jsonb,
          'a history stored as JSON (0.1.0, or with an error) reads as it is');
SELECT is(xprov._hook_history(NULL), NULL, 'no history: NULL');
SELECT throws_ok($$SELECT xprov._hook_history('bx:1:1:3b5dx2ghTiuScBru5xugdQ')$$,
                 'XX001', NULL, 'an unknown outcome letter: XX001');
SELECT is((SELECT count(*) FROM unnest(ARRAY['ba:1:1:3b5dx2ghTiuScBru5xugd', 'ba:-1:1:3b5dx2ghTiuScBru5xugdQ', 'b',
                                             'ba:1:1:3b5dx2ghTiuScBru5xugdQ ',
                                             'ba:1:1:3b5dx2ghTiuScBru5xugdQ  ba:1:1:3b5dx2ghTiuScBru5xugdQ',
                                             'ba:99999999999:1:3b5dx2ghTiuScBru5xugdQ', 'ba:1:1:3b5dx2ghTiuScBru5xug!Q',
                                             'ba:1:3b5dx2ghTiuScBru5xugdQ', 'ba1:1:3b5dx2ghTiuScBru5xugdQ']) h
            WHERE pg_temp.outcome(format('SELECT xprov._hook_history(%L)', h)) LIKE 'XX001: invalid hook history%'),
          9::bigint, 'every malformed stored history (short id, negative or oversized version, stray spaces, ...): XX001');

-- ---------------------------------------------------------------- add_hook
SELECT isnt(pg_temp.put('h1', xprov.add_hook(pg_temp.id('t1'), pg_temp.id('c1'), 'user', 'before', pg_temp.js('s1'))),
            NULL, 'add_hook with default options returns an id');
SELECT results_eq(
    $$SELECT tenant_id, connector_id, object_class, phase, version, enabled, "order", timeout_ms, memory_kb, failure, script
        FROM xprov.hooks WHERE id = pg_temp.id('h1')$$,
    $$VALUES (pg_temp.id('t1'), pg_temp.id('c1'), 'user'::text, 'before'::text, 1, true, 0, 100, 16384, 'fatal'::text,
              pg_temp.js('s1'))$$,
    'defaults: version 1, enabled, order 0, timeout_ms 100, memory_kb 16384, failure fatal; the script as given');
SELECT ok((SELECT created_at BETWEEN now() AND clock_timestamp() FROM xprov.hooks WHERE id = pg_temp.id('h1')),
          'created_at is the creation time');
SELECT results_eq($$SELECT hook_id, version, script FROM xprov.hook_versions WHERE hook_id = pg_temp.id('h1')$$,
                  $$VALUES (pg_temp.id('h1'), 1, pg_temp.js('s1'))$$, 'hook_versions holds version 1');

SELECT isnt(pg_temp.put('h2', xprov.add_hook(tenant_id => pg_temp.id('t1'), connector_id => pg_temp.id('c1'),
                                             object_class => 'group', phase => 'after', script => pg_temp.js('s2'),
                                             options => '{"timeout_ms": 50, "memory_kb": 8192, "failure": "ignore", "order": 5}')),
            NULL, 'add_hook with every option, by named parameters');
SELECT results_eq(
    $$SELECT object_class, phase, version, enabled, "order", timeout_ms, memory_kb, failure
        FROM xprov.hooks WHERE id = pg_temp.id('h2')$$,
    $$VALUES ('group'::text, 'after'::text, 1, true, 5, 50, 8192, 'ignore'::text)$$,
    'the options show in the view');
SELECT isnt(pg_temp.put('h3', xprov.add_hook(pg_temp.id('t1'), NULL, NULL, 'on_error', pg_temp.js('s3'), '{}')),
            NULL, 'add_hook with connector_id and object_class NULL (tenant-wide, every class), phase on_error');
SELECT results_eq($$SELECT connector_id, object_class, phase FROM xprov.hooks WHERE id = pg_temp.id('h3')$$,
                  $$VALUES (NULL::uuid, NULL::text, 'on_error'::text)$$, 'NULL connector_id and object_class show as NULL');
SELECT isnt(pg_temp.put('h4', xprov.add_hook(pg_temp.id('t1'), pg_temp.id('c1'), NULL, 'before', pg_temp.js('s3'),
                                             '{"failure": "fatal", "order": -3}')),
            NULL, 'add_hook for every object class of a connector, failure fatal given, a negative order');
SELECT is((SELECT "order" FROM xprov.hooks WHERE id = pg_temp.id('h4')), -3, 'order -3 is kept');
SELECT isnt(pg_temp.put('h5', xprov.add_hook(pg_temp.id('t2'), pg_temp.id('c2'), 'user', 'before', pg_temp.js('s1'))),
            NULL, 'add_hook for another tenant');
SELECT is((SELECT array_agg(pg_temp.nm(id) ORDER BY pg_temp.nm(id)) FROM xprov.hooks WHERE tenant_id = pg_temp.id('t1')),
          ARRAY['h1', 'h2', 'h3', 'h4'], 'xprov.hooks lists the tenant''s hooks');
SELECT is((SELECT count(DISTINCT id) FROM xprov.hooks WHERE tenant_id IN (pg_temp.id('t1'), pg_temp.id('t2'))),
          5::bigint, 'every hook has its own id');
SELECT matches(pg_temp.add_opts('{"timeout_ms": 5000, "memory_kb": 64}'), '^OK: ',
               'timeout_ms equal to xprov.hook_max_timeout (5s) and memory_kb 64 are accepted');
SELECT matches(pg_temp.add_opts('{"memory_kb": 65536}'), '^OK: ',
               'memory_kb equal to xprov.hook_max_memory (64MB) is accepted');

-- ---------------------------------------------------------------- update_hook
SELECT is(xprov.update_hook(pg_temp.id('h1'), pg_temp.js('s2')), 2, 'update_hook returns the new version, 2');
SELECT is(xprov.update_hook(hook_id => pg_temp.id('h1'), script => pg_temp.js('s3')), 3,
          'update_hook with named parameters returns version 3');
SELECT results_eq($$SELECT version, script FROM xprov.hooks WHERE id = pg_temp.id('h1')$$,
                  $$VALUES (3, pg_temp.js('s3'))$$, 'xprov.hooks shows the current version and its script');
SELECT results_eq($$SELECT version, script FROM xprov.hook_versions WHERE hook_id = pg_temp.id('h1') ORDER BY version$$,
                  $$VALUES (1, pg_temp.js('s1')), (2, pg_temp.js('s2')), (3, pg_temp.js('s3'))$$,
                  'xprov.hook_versions keeps every version with its script');
SELECT ok((SELECT updated_at >= created_at FROM xprov.hooks WHERE id = pg_temp.id('h1')), 'updated_at is not before created_at');
SELECT is(xprov.update_hook(pg_temp.id('h2'), pg_temp.js('s1')), 2, 'update_hook of another hook starts from its own version');
SELECT results_eq($$SELECT "order", timeout_ms, memory_kb, failure, enabled FROM xprov.hooks WHERE id = pg_temp.id('h2')$$,
                  $$VALUES (5, 50, 8192, 'ignore'::text, true)$$, 'update_hook keeps the options');
SELECT matches(pg_temp.outcome(format('SELECT xprov.update_hook(%L, %L)', pg_temp.id('h1'), pg_temp.js('syntax'))),
               '^42601: .*\mline 3\M', 'update_hook with a script that does not compile -> 42601 naming line 3');
SELECT throws_ok(format('SELECT xprov.update_hook(%L, %L)', pg_temp.id('h1'), pg_temp.js('nohook')), '42P13', NULL,
                 'update_hook with a script without function hook -> 42P13');
SELECT throws_ok(format('SELECT xprov.update_hook(%L, NULL)', pg_temp.id('h1')), '22004', NULL,
                 'update_hook with a NULL script -> 22004');
SELECT results_eq($$SELECT (SELECT version FROM xprov.hooks WHERE id = pg_temp.id('h1')),
                           (SELECT count(*) FROM xprov.hook_versions WHERE hook_id = pg_temp.id('h1'))$$,
                  $$VALUES (3, 3::bigint)$$, 'refused updates changed neither the version nor hook_versions');
SELECT throws_ok($$SELECT xprov.update_hook(gen_random_uuid(), 'function hook(ctx) { }')$$, '42704', NULL,
                 'update_hook of an unknown hook -> 42704');

-- ---------------------------------------------------------------- set_hook_enabled
SELECT lives_ok($$SELECT xprov.set_hook_enabled(pg_temp.id('h1'), false)$$, 'set_hook_enabled(false)');
SELECT is((SELECT enabled FROM xprov.hooks WHERE id = pg_temp.id('h1')), false, 'the hook shows disabled');
SELECT is((SELECT enabled FROM xprov.hooks WHERE id = pg_temp.id('h2')), true, 'other hooks stay enabled');
SELECT lives_ok($$SELECT xprov.set_hook_enabled(hook_id => pg_temp.id('h1'), enabled => true)$$,
                'set_hook_enabled(true) with named parameters');
SELECT is((SELECT enabled FROM xprov.hooks WHERE id = pg_temp.id('h1')), true, 'the hook shows enabled again');
SELECT is((SELECT version FROM xprov.hooks WHERE id = pg_temp.id('h1')), 3, 'enabling and disabling make no version');
SELECT throws_ok($$SELECT xprov.set_hook_enabled(gen_random_uuid(), false)$$, '42704', NULL,
                 'set_hook_enabled of an unknown hook -> 42704');

-- ---------------------------------------------------------------- add_hook: bad input
SELECT is(pg_temp.nhooks(), 7::bigint, 'seven hooks before the refused calls');
SELECT throws_ok($$SELECT xprov.add_hook(NULL, NULL, 'user', 'before', 'function hook(ctx) { }')$$, '22004', NULL,
                 'NULL tenant_id -> 22004');
SELECT throws_ok($$SELECT xprov.add_hook(pg_temp.id('t1'), pg_temp.id('c1'), 'user', NULL, 'function hook(ctx) { }')$$,
                 '22004', NULL, 'NULL phase -> 22004');
SELECT throws_ok($$SELECT xprov.add_hook(pg_temp.id('t1'), pg_temp.id('c1'), 'user', 'before', NULL)$$, '22004', NULL,
                 'NULL script -> 22004');
SELECT throws_ok($$SELECT xprov.add_hook(pg_temp.id('t1'), pg_temp.id('c1'), 'user', 'during', 'function hook(ctx) { }')$$,
                 '22023', NULL, 'phase during -> 22023');
SELECT throws_ok($$SELECT xprov.add_hook(pg_temp.id('t1'), gen_random_uuid(), 'user', 'before', 'function hook(ctx) { }')$$,
                 '42704', NULL, 'unknown connector -> 42704');
SELECT throws_ok($$SELECT xprov.add_hook(pg_temp.id('t1'), pg_temp.id('c2'), 'user', 'before', 'function hook(ctx) { }')$$,
                 '22023', NULL, 'connector of another tenant -> 22023');
SELECT throws_ok($$SELECT xprov.add_hook(pg_temp.id('t1'), pg_temp.id('c1'), '', 'before', 'function hook(ctx) { }')$$,
                 '22023', NULL, 'empty object_class -> 22023');
SELECT is(ARRAY[left(pg_temp.add_opts('[]'), 5), left(pg_temp.add_opts('"x"'), 5), left(pg_temp.add_opts('null'), 5),
                left(pg_temp.add_opts('42'), 5)],
          ARRAY['22023', '22023', '22023', '22023'], 'options that are not an object (array, string, null, number) -> 22023');
SELECT is(left(pg_temp.add_opts('{"timeout": 50}'), 5), '22023', 'unknown option key -> 22023');
SELECT is(ARRAY[left(pg_temp.add_opts('{"timeout_ms": "100"}'), 5), left(pg_temp.add_opts('{"timeout_ms": 1.5}'), 5),
                left(pg_temp.add_opts('{"timeout_ms": null}'), 5), left(pg_temp.add_opts('{"timeout_ms": true}'), 5)],
          ARRAY['22023', '22023', '22023', '22023'], 'timeout_ms that is not an integer (string, 1.5, null, boolean) -> 22023');
SELECT is(ARRAY[left(pg_temp.add_opts('{"timeout_ms": 0}'), 5), left(pg_temp.add_opts('{"timeout_ms": -1}'), 5),
                left(pg_temp.add_opts('{"timeout_ms": 5001}'), 5)],
          ARRAY['22023', '22023', '22023'], 'timeout_ms 0, negative or above xprov.hook_max_timeout (5s) -> 22023');
SET LOCAL xprov.hook_max_timeout = '1s';
SELECT is(ARRAY[left(pg_temp.add_opts('{"timeout_ms": 1001}'), 5), left(pg_temp.add_opts('{"timeout_ms": 1000}'), 3)],
          ARRAY['22023', 'OK:'], 'with xprov.hook_max_timeout lowered to 1s: 1001 -> 22023, 1000 accepted');
RESET xprov.hook_max_timeout;
SELECT is(ARRAY[left(pg_temp.add_opts('{"memory_kb": 63}'), 5), left(pg_temp.add_opts('{"memory_kb": 0}'), 5),
                left(pg_temp.add_opts('{"memory_kb": 65537}'), 5), left(pg_temp.add_opts('{"memory_kb": "1024"}'), 5),
                left(pg_temp.add_opts('{"memory_kb": 1024.5}'), 5)],
          ARRAY['22023', '22023', '22023', '22023', '22023'],
          'memory_kb below 64, above xprov.hook_max_memory (64MB) or not an integer -> 22023');
SET LOCAL xprov.hook_max_memory = '1MB';
SELECT is(ARRAY[left(pg_temp.add_opts('{"memory_kb": 1025}'), 5), left(pg_temp.add_opts('{"memory_kb": 1024}'), 3)],
          ARRAY['22023', 'OK:'], 'with xprov.hook_max_memory lowered to 1MB: 1025 -> 22023, 1024 accepted');
RESET xprov.hook_max_memory;
SELECT is(ARRAY[left(pg_temp.add_opts('{"failure": "maybe"}'), 5), left(pg_temp.add_opts('{"failure": null}'), 5),
                left(pg_temp.add_opts('{"failure": "FATAL"}'), 5)],
          ARRAY['22023', '22023', '22023'], 'failure other than fatal or ignore -> 22023');
SELECT is(ARRAY[left(pg_temp.add_opts('{"order": "1"}'), 5), left(pg_temp.add_opts('{"order": 1.5}'), 5)],
          ARRAY['22023', '22023'], 'order that is not an integer -> 22023');
SELECT matches(pg_temp.outcome(format('SELECT xprov.add_hook(%L, NULL, NULL, %L, %L)',
                                      pg_temp.id('t1'), 'before', pg_temp.js('syntax'))),
               '^42601: .*\mline 3\M', 'a script that does not compile -> 42601 naming line 3');
SELECT throws_ok($$SELECT xprov.add_hook(gen_random_uuid(), NULL, NULL, 'before',
                                       E'function hook(ctx) { return 1; }\nreturn hook; }\nthis is @@@ not JavaScript(((')$$,
                 '42601', NULL, 'a script with a stray } followed by text that is not JavaScript -> 42601');
SELECT throws_ok($$SELECT xprov.add_hook(pg_temp.id('t1'), NULL, NULL, 'before', pg_temp.js('nohook'))$$, '42P13', NULL,
                 'a script without function hook -> 42P13');
SELECT is(pg_temp.nhooks(), 9::bigint, 'the refused calls created nothing (nine: the two accepted ones above)');
SELECT is((SELECT count(*) FROM xprov.hook_versions v JOIN xprov.hooks h ON h.id = v.hook_id
            WHERE h.tenant_id IN (pg_temp.id('t1'), pg_temp.id('t2'))),
          (SELECT sum(version) FROM xprov.hooks WHERE tenant_id IN (pg_temp.id('t1'), pg_temp.id('t2')))::bigint,
          'hook_versions has one row per version of every hook');

SELECT * FROM finish();
ROLLBACK;
