-- The JavaScript sandbox through SQL: xprov.validate_script(script) and
-- xprov.execute_script(script, context, timeout_ms, memory_kb) (README "Hooks
-- (JavaScript)", "The sandbox").  Transforms, compile and runtime errors with
-- their line, hostile scripts (each stopped with SQLSTATE 38000 and a clear
-- message, and the session runs a normal transform right after), the frozen
-- realm, removed globals, no state between calls, argument checks, and
-- statement_timeout.  The hook catalog is in 31_hooks_catalog.sql.
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS xprov;

BEGIN;
SELECT plan(135);
\ir common.psql
-- backstop: a script that escapes its deadline fails this file instead of hanging the suite
SET LOCAL statement_timeout = '60s';

-- wall-clock time of the calls made with a name (pg_temp.timed)
CREATE TEMP TABLE _elapsed (name text PRIMARY KEY, ms float8 NOT NULL);

-- pg_temp.outcome(p_sql), keeping its duration under p_name when p_name is given
CREATE FUNCTION pg_temp.timed(p_name text, p_sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    t0 timestamptz := clock_timestamp(); r text;
BEGIN
    r := pg_temp.outcome(p_sql);
    IF p_name IS NOT NULL THEN
        INSERT INTO _elapsed VALUES (p_name, 1000 * extract(epoch FROM clock_timestamp() - t0));
    END IF;
    RETURN r;
END $$;

CREATE FUNCTION pg_temp.ms(p_name text) RETURNS float8 LANGUAGE sql AS $$
    SELECT ms FROM _elapsed WHERE name = p_name
$$;

-- execute_script: 'OK: <jsonb text>', 'OK: NULL' or '<SQLSTATE>: <message>[ DETAIL: <detail>]'
CREATE FUNCTION pg_temp.run(p_script text, p_ctx jsonb DEFAULT '{}', p_timeout int DEFAULT 100,
                            p_mem int DEFAULT 16384, p_name text DEFAULT NULL) RETURNS text
LANGUAGE sql AS $$
    SELECT pg_temp.timed(p_name, format('SELECT xprov.execute_script(%L, %L::jsonb, %L::int, %L::int)',
                                        p_script, p_ctx, p_timeout, p_mem))
$$;

-- validate_script: 'OK: ' or '<SQLSTATE>: <message>[ DETAIL: <detail>]'
CREATE FUNCTION pg_temp.val(p_script text, p_name text DEFAULT NULL) RETURNS text LANGUAGE sql AS $$
    SELECT pg_temp.timed(p_name, format('SELECT xprov.validate_script(%L)', p_script))
$$;

-- the README's transform: after every hostile script, this must still give
-- 'OK: {"userName": "ada.lovelace"}'
CREATE FUNCTION pg_temp.sane() RETURNS text LANGUAGE sql AS $$
    SELECT pg_temp.run($js$function hook(ctx) {
        var a = ctx.attributes;
        return { userName: (a.givenName + '.' + a.familyName).toLowerCase() };
    }$js$, '{"attributes": {"givenName": "Ada", "familyName": "Lovelace"}}')
$$;

-- ---------------------------------------------------------------- contract
SELECT has_function('xprov', 'validate_script', ARRAY['text'], 'validate_script(text)');
SELECT function_returns('xprov', 'validate_script', ARRAY['text'], 'void', 'validate_script returns void');
SELECT has_function('xprov', 'execute_script', ARRAY['text', 'jsonb', 'integer', 'integer'],
                    'execute_script(text, jsonb, integer, integer)');
SELECT function_returns('xprov', 'execute_script', ARRAY['text', 'jsonb', 'integer', 'integer'], 'jsonb',
                        'execute_script returns jsonb');

-- ---------------------------------------------------------------- transforms
SELECT is(pg_temp.run($js$
  function hook(ctx) {
    var a = ctx.attributes;
    a.userName = (a.givenName + '.' + a.familyName).toLowerCase();
    return { attributes: a };
  }
$js$, '{"attributes": {"givenName": "Ada", "familyName": "Lovelace"}}'),
          'OK: ' || '{"attributes": {"givenName": "Ada", "familyName": "Lovelace", "userName": "ada.lovelace"}}'::jsonb::text,
          'the README transform: userName from givenName and familyName');
SELECT is(pg_temp.outcome(format('SELECT xprov.execute_script(script => %L, context => %L)',
                                 'function hook(ctx) { return { n: ctx.attributes.givenName.length }; }',
                                 '{"attributes": {"givenName": "Ada"}}')),
          'OK: {"n": 3}', 'execute_script with named parameters, timeout_ms and memory_kb defaulted');
SELECT is(pg_temp.outcome(format('SELECT xprov.execute_script(%L, %L, timeout_ms => 50, memory_kb => 8192)',
                                 'function hook(ctx) { return ctx.x * 2; }', '{"x": 21}')),
          'OK: 42', 'execute_script with timeout_ms and memory_kb given by name');
SELECT is(pg_temp.run('function hook(ctx) { }'), 'OK: NULL',
          'a hook that returns nothing gives SQL NULL');
SELECT is(pg_temp.run('function hook(ctx) { return undefined; }'), 'OK: NULL',
          'a hook that returns undefined gives SQL NULL');
SELECT is(pg_temp.run('function hook(ctx) { return null; }'), 'OK: null',
          'a hook that returns null gives the JSON null (not SQL NULL)');
SELECT is(pg_temp.run('function hook(ctx) { return ctx; }',
                      '{"a": {"b": [1, 2.5, -3, true, false, null, "x"]}, "empty": {}, "list": [],
                        "s": "Zoë 日本語 😀 \"quoted\" \\ back\nslash", "deep": {"x": {"y": {"z": [[[]]]}}}}'),
          'OK: ' || '{"a": {"b": [1, 2.5, -3, true, false, null, "x"]}, "empty": {}, "list": [],
                       "s": "Zoë 日本語 😀 \"quoted\" \\ back\nslash", "deep": {"x": {"y": {"z": [[[]]]}}}}'::jsonb::text,
          'nested objects, arrays, numbers, booleans, null and unicode round-trip unchanged');
SELECT is(pg_temp.run('function hook(ctx) { return { up: ctx.name.toUpperCase(), len: ctx.name.length }; }',
                      '{"name": "zoë"}'),
          'OK: {"up": "ZOË", "len": 3}', 'JavaScript string functions see non-ASCII text as characters');
SELECT is(pg_temp.run($js$function hook(ctx) { return ['\uD83D\uDE00', '\u00e9'.length]; }$js$), 'OK: ["😀", 1]',
          'a character outside the BMP written as a surrogate pair in JavaScript comes back as UTF-8');
SELECT matches(pg_temp.run($js$function hook(ctx) { return ['\uD800']; }$js$), '^([0-9A-Z]{5}: |OK: \["\uFFFD"\]$)',
               'a lone surrogate in the result is refused or replaced, never stored as broken text');
SELECT is(pg_temp.run($js$function hook(ctx) { return [42, 'two', 1.5, ['nested']]; }$js$),
          'OK: [42, "two", 1.5, ["nested"]]', 'a hook may return an array of scalars');
SELECT is(pg_temp.run($js$
  function hook(ctx) {
    return { keys: Object.keys({a: 1, b: 2}), mapped: [1, 2, 3].map(function (x) { return x * 2; }),
             re: /^a(b+)$/.exec('abbb')[1], json: JSON.parse('{"x": [1]}').x[0], max: Math.max(1, 7, 3),
             enc: encodeURIComponent('a b'), rep: 'ab'.repeat(2), iso: new Date(0).toISOString(),
             starts: 'hello'.startsWith('he'), str: JSON.stringify({k: [1]}) };
  }
$js$),
          'OK: ' || '{"keys": ["a", "b"], "mapped": [2, 4, 6], "re": "bbb", "json": 1, "max": 7, "enc": "a%20b",
                      "rep": "abab", "iso": "1970-01-01T00:00:00.000Z", "starts": true, "str": "{\"k\":[1]}"}'::jsonb::text,
          'the ES5 built-ins (Object, Array, RegExp, JSON, Math, URI functions, String, Date) work');
SELECT is(ARRAY[pg_temp.run($js$function hook(ctx) { return 'a'; }$js$),
                pg_temp.run($js$function hook(ctx) { return 'b'; }$js$),
                pg_temp.run($js$function hook(ctx) { return 'a'; }$js$)],
          ARRAY['OK: "a"', 'OK: "b"', 'OK: "a"'], 'each call runs the script it is given (no stale compiled hook)');

-- ---------------------------------------------------------------- compile errors
SELECT lives_ok($$SELECT xprov.validate_script('function hook(ctx) { return { attributes: ctx.attributes }; }')$$,
                'validate_script accepts a script that defines function hook(ctx)');
SELECT lives_ok($$SELECT xprov.validate_script('function hook(ctx) { throw new Error("only when run"); }')$$,
                'validate_script compiles without calling the hook');
SELECT matches(pg_temp.val(E'function hook(ctx) {\n  var a = 1;\n  var b = ;\n  return a;\n}'),
               '^42601: .*\mline 3\M', 'validate_script: a syntax error on line 3 -> 42601 naming line 3');
SELECT matches(pg_temp.run(E'function hook(ctx) {\n  var a = 1;\n  var b = ;\n  return a;\n}'),
               '^(42601|38000): .*\mline 3\M', 'execute_script: the same syntax error is refused naming line 3');
SELECT matches(pg_temp.val(E'function hook(ctx) {\n  var f = (x) => x;\n  return f(1);\n}'),
               '^42601: .*\mline 2\M', 'validate_script: an arrow function (not ES5) on line 2 -> 42601 naming line 2');
SELECT matches(pg_temp.val(E'function hook(ctx) { return 1; }\nreturn hook; }\nthis is @@@ not JavaScript((('),
               '^42601: ', 'validate_script: a stray } followed by text that is not JavaScript -> 42601');
SELECT matches(pg_temp.val(E'function hook(ctx) { return 1; }\n}'), '^42601: .*\mline 2\M',
               'validate_script: a stray } on line 2 -> 42601 naming line 2');
SELECT matches(pg_temp.val(E'return 1;\nfunction hook(ctx) { return 1; }'), '^42601: ',
               'validate_script: return outside a function -> 42601');
SELECT throws_ok($$SELECT xprov.validate_script('var x = 1;')$$, '42P13', NULL,
                 'validate_script: a script without function hook -> 42P13');
SELECT throws_ok($$SELECT xprov.validate_script('function Hook(ctx) { return 1; }')$$, '42P13', NULL,
                 'validate_script: the function must be called hook (case matters) -> 42P13');
SELECT throws_ok($$SELECT xprov.validate_script('var hook = 1;')$$, '42P13', NULL,
                 'validate_script: a hook that is not a function -> 42P13');
SELECT throws_ok($$SELECT xprov.validate_script('')$$, '42P13', NULL, 'validate_script: an empty script -> 42P13');
SELECT matches(pg_temp.run('var x = 1;'), '^(42P13|38000): ', 'execute_script: a script without function hook is refused');

-- ---------------------------------------------------------------- errors thrown by the hook
SELECT matches(pg_temp.run(E'function hook(ctx) {\n  var msg = "policy violated";\n  throw new Error(msg);\n}'),
               '^38000: hook failed: Error: policy violated.*\mline 3\M',
               'a thrown Error -> 38000 "hook failed:" with the JavaScript message and line 3');
SELECT matches(pg_temp.run(E'function hook(ctx) {\n  return ctx.nope.deeper;\n}'),
               '^38000: hook failed: TypeError: .*\mline 2\M',
               'a TypeError -> 38000 "hook failed: TypeError" with line 2');
SELECT matches(pg_temp.run($js$function hook(ctx) { throw 'plain string'; }$js$),
               '^38000: hook failed: .*plain string', 'a thrown non-Error value -> 38000 with the value');
SELECT is(pg_temp.sane(), 'OK: {"userName": "ada.lovelace"}', 'after thrown errors: a normal transform runs');

-- ---------------------------------------------------------------- hostile: time
SELECT matches(pg_temp.run('function hook(ctx) { while(true){} }', p_name => 'loop'),
               '^38000: hook exceeded its time limit of 100 ms', 'while(true){} -> 38000 time limit of 100 ms');
SELECT cmp_ok(pg_temp.ms('loop'), '<', 2000::float8, 'while(true){} with 100 ms stops well within 2 s');
SELECT is(pg_temp.sane(), 'OK: {"userName": "ada.lovelace"}', 'after while(true){}: a normal transform runs');
SELECT matches(pg_temp.run('function hook(ctx) { while(true){} }', '{}', 50),
               '^38000: hook exceeded its time limit of 50 ms', 'the time limit message names the timeout_ms given');
SELECT matches(pg_temp.run('function hook(ctx) { try{while(true){}}finally{while(true){}} }', p_name => 'finally'),
               '^38000: hook exceeded its time limit', 'try{while(true){}}finally{while(true){}} -> 38000 time limit');
SELECT cmp_ok(pg_temp.ms('finally'), '<', 2000::float8, 'finally cannot resume the script after the deadline');
SELECT is(pg_temp.sane(), 'OK: {"userName": "ada.lovelace"}', 'after the finally loop: a normal transform runs');
SELECT matches(pg_temp.run('function hook(ctx) { for(;;){try{for(;;){}}catch(e){}} }', p_name => 'catch'),
               '^38000: hook exceeded its time limit', 'for(;;){try{for(;;){}}catch(e){}} -> 38000 time limit');
SELECT cmp_ok(pg_temp.ms('catch'), '<', 2000::float8, 'catch cannot swallow the deadline');
SELECT is(pg_temp.sane(), 'OK: {"userName": "ada.lovelace"}', 'after the catch loop: a normal transform runs');
SELECT matches(pg_temp.run('while(true){} function hook(ctx) { return 1; }', p_name => 'toplevel'),
               '^38000: hook exceeded its time limit', 'a loop at the script''s top level -> 38000 time limit');
SELECT is(pg_temp.sane(), 'OK: {"userName": "ada.lovelace"}', 'after the top-level loop: a normal transform runs');
SET LOCAL xprov.hook_max_timeout = '500ms';   -- in case validation allows the largest timeout
SELECT FROM pg_temp.val('while(true){} function hook(ctx) { }', 'validate-loop');
RESET xprov.hook_max_timeout;
SELECT cmp_ok(pg_temp.ms('validate-loop'), '<', 6000::float8,
              'validate_script of a script whose top level never ends returns (within 6 s)');
SELECT matches(pg_temp.run($js$function hook(ctx) { return /(a+)+b/.test('a'.repeat(40)); }$js$, p_name => 'regexp'),
               '^38000: hook exceeded its time limit of 100 ms',
               'catastrophic regexp /(a+)+b/ on 40 a''s -> 38000 time limit of 100 ms');
SELECT cmp_ok(pg_temp.ms('regexp'), '<', 2000::float8, 'the regexp engine honours the deadline (stops within 2 s)');
SELECT is(pg_temp.sane(), 'OK: {"userName": "ada.lovelace"}', 'after the regexp: a normal transform runs');

-- ---------------------------------------------------------------- hostile: memory, depth, size
SELECT matches(pg_temp.run('function hook(ctx) { var a = []; while(true) a.push(new Array(1e6)); }', '{}', 2000),
               '^38000: hook exceeded its memory limit of 16384 kB', 'array memory bomb -> 38000 memory limit of 16384 kB');
SELECT is(pg_temp.sane(), 'OK: {"userName": "ada.lovelace"}', 'after the array memory bomb: a normal transform runs');
SELECT matches(pg_temp.run($js$function hook(ctx) { var s = 'x'; while(true) s = s + s; }$js$, '{}', 2000, 8192),
               '^38000: hook exceeded its memory limit of 8192 kB', 'string doubling -> 38000 memory limit of 8192 kB');
SELECT is(pg_temp.sane(), 'OK: {"userName": "ada.lovelace"}', 'after string doubling: a normal transform runs');
SELECT matches(pg_temp.run('function f() { return f(); } function hook(ctx) { return f(); }', '{}', 1000),
               '^38000: hook ', 'deep recursion -> 38000');
SELECT is(pg_temp.sane(), 'OK: {"userName": "ada.lovelace"}', 'after deep recursion: a normal transform runs');
SELECT matches(pg_temp.run($js$function hook(ctx) { return JSON.parse(new Array(100001).join('[')); }$js$, '{}', 1000),
               '^38000: hook ', 'JSON.parse of 100,000 nested arrays -> 38000');
SELECT matches(pg_temp.run('function hook(ctx) { var a = []; for (var i = 0; i < 100000; i++) a = [a]; return a; }',
                           '{}', 1000),
               '^38000: hook ', 'a result nested 100,000 deep -> 38000');
SELECT matches(pg_temp.run('function hook(ctx) { var o = {}; o.self = o; return o; }'),
               '^38000: hook ', 'a cyclic result -> 38000');
SELECT is(pg_temp.sane(), 'OK: {"userName": "ada.lovelace"}', 'after deep and cyclic values: a normal transform runs');
SELECT matches(pg_temp.run($js$function hook(ctx) { return 'x'.repeat(2 * 1024 * 1024); }$js$, '{}', 1000, 32768),
               '^38000: hook result is too large', 'a 2 MB string result -> 38000 hook result is too large');
SELECT is(length(pg_temp.run($js$function hook(ctx) { return 'x'.repeat(900 * 1024); }$js$, '{}', 1000, 32768)),
          length('OK: ""') + 900 * 1024, 'a 900 kB result (under 1 MB) is returned whole');
SELECT matches(pg_temp.run($js$
  function hook(ctx) {
    var a = [];
    for (var i = 0; i < 300000; i++) a.push({ i: i, s: 'abcdefgh' });
    return a;
  }
$js$, '{}', 2000),
               '^38000: hook (result is too large|exceeded its memory limit of 16384 kB)',
               'a result of 300,000 objects -> 38000 too large or memory limit');
SELECT is(pg_temp.sane(), 'OK: {"userName": "ada.lovelace"}', 'after enormous results: a normal transform runs');

-- ---------------------------------------------------------------- hostile: long loops inside built-ins
-- Built-ins written in C that walk a huge sparse array allocate nothing, so
-- only the deadline can stop them (2e7 elements take seconds here).
SELECT matches(pg_temp.run('function hook(ctx) { var a = []; a.length = 2e7; return a.indexOf(1); }', p_name => 'indexOf'),
               '^38000: hook exceeded its time limit of 100 ms',
               'Array.prototype.indexOf over a sparse array of 2e7 -> 38000 time limit of 100 ms');
SELECT cmp_ok(pg_temp.ms('indexOf'), '<', 2000::float8, 'indexOf inside a built-in stops within 2 s');
SELECT matches(pg_temp.run($js$function hook(ctx) { var a = []; a.length = 2e7; return a.join('').length; }$js$),
               '^38000: hook exceeded its time limit of 100 ms',
               'Array.prototype.join over a sparse array of 2e7 -> 38000 time limit of 100 ms');
SELECT is(pg_temp.sane(), 'OK: {"userName": "ada.lovelace"}', 'after the long built-in loops: a normal transform runs');

-- ---------------------------------------------------------------- hostile: error and result values
SELECT matches(pg_temp.run('function hook(ctx) { return { toJSON: function () { while(true){} } }; }'),
               '^38000: hook exceeded its time limit of 100 ms', 'a result whose toJSON never returns -> 38000 time limit');
SELECT matches(pg_temp.run('function hook(ctx) { throw { toString: function () { while(true){} } }; }', p_name => 'throw-loop'),
               '^38000: hook ', 'a thrown value whose toString never returns -> 38000');
SELECT cmp_ok(pg_temp.ms('throw-loop'), '<', 2000::float8, 'showing that thrown value stops within 2 s');
SELECT matches(pg_temp.run($js$function hook(ctx) { throw new Error('bad \uD800 text'); }$js$),
               '^38000: hook failed: Error: bad', 'an error message with a lone surrogate is reported (as valid text)');
SELECT cmp_ok(length(pg_temp.run($js$function hook(ctx) { throw new Error('x'.repeat(1e6)); }$js$)), '<', 100000,
              'a 1 MB error message is shortened');
SELECT is(pg_temp.sane(), 'OK: {"userName": "ada.lovelace"}', 'after hostile error and result values: a normal transform runs');

-- ---------------------------------------------------------------- no code from strings
SELECT matches(pg_temp.run($js$function hook(ctx) { return this.constructor.constructor('return this')(); }$js$),
               '^38000: hook failed: ', 'this.constructor.constructor(''return this'')() is refused');
SELECT matches(pg_temp.run($js$function hook(ctx) { return ctx.constructor.constructor('return this')(); }$js$),
               '^38000: hook failed: ', 'ctx.constructor.constructor(''return this'')() is refused');
SELECT matches(pg_temp.run($js$function hook(ctx) { return eval('1'); }$js$),
               '^38000: hook failed: ', 'eval(''1'') is refused');
SELECT matches(pg_temp.run($js$function hook(ctx) { return (0, eval)('1'); }$js$),
               '^38000: hook failed: ', 'indirect eval (0, eval)(''1'') is refused');
SELECT matches(pg_temp.run($js$function hook(ctx) { return Function('return 1'); }$js$),
               '^38000: hook failed: ', 'Function(''return 1'') is refused');
SELECT matches(pg_temp.run($js$function hook(ctx) { return (function () {}).constructor('return 1')(); }$js$),
               '^38000: hook failed: ', 'a function''s constructor refuses strings too');
SELECT is(pg_temp.sane(), 'OK: {"userName": "ada.lovelace"}', 'after the code-generation attempts: a normal transform runs');

-- ---------------------------------------------------------------- frozen realm, strict mode
CREATE FUNCTION pg_temp.frozen() RETURNS text LANGUAGE sql AS $$
    SELECT pg_temp.run($js$function hook(ctx) {
        return [Object.isFrozen(Object.prototype), Object.isFrozen(Array.prototype), Object.isFrozen(String.prototype),
                Object.isFrozen(Function.prototype), Object.isFrozen(JSON), Object.isFrozen(Math),
                Object.isFrozen(Object), Object.isFrozen(Error.prototype), typeof Duktape, typeof eval];
    }$js$)
$$;
SELECT is(pg_temp.frozen(), 'OK: [true, true, true, true, true, true, true, true, "undefined", "function"]',
          'the built-ins are frozen; Duktape is gone');
SELECT is(pg_temp.run('function hook(ctx) { return [Object.isExtensible(globalThis), Object.isFrozen(globalThis)]; }'),
          'OK: [false, true]', 'the global object is frozen (Object.isFrozen(globalThis))');
SELECT matches(pg_temp.run('function hook(ctx) { Object.prototype.polluted = 1; return 1; }'),
               '^38000: hook failed: TypeError', 'Object.prototype.polluted = 1 -> 38000 TypeError');
SELECT is(pg_temp.run('function hook(ctx) { return ({}).polluted === undefined; }'), 'OK: true',
          'the next call sees no Object.prototype.polluted');
SELECT matches(pg_temp.run('Object.prototype.polluted2 = 1; function hook(ctx) { return 1; }'),
               '^38000: hook failed: TypeError', 'the same at the script''s top level -> 38000 TypeError');
SELECT is(pg_temp.run('function hook(ctx) { return ({}).polluted2 === undefined; }'), 'OK: true',
          'the next call sees no Object.prototype.polluted2');
SELECT matches(pg_temp.run($js$function hook(ctx) { Object.defineProperty(Object.prototype, 'p', { value: 1 }); }$js$),
               '^38000: hook failed: TypeError', 'Object.defineProperty on Object.prototype -> 38000 TypeError');
SELECT matches(pg_temp.run('function hook(ctx) { delete Object.prototype.toString; }'),
               '^38000: hook failed: TypeError', 'delete Object.prototype.toString -> 38000 TypeError');
SELECT matches(pg_temp.run('function hook(ctx) { Array.prototype.map = null; return 1; }'),
               '^38000: hook failed: TypeError', 'Array.prototype.map = null -> 38000 TypeError');
SELECT is(pg_temp.run($js$function hook(ctx) { return typeof [].map === 'function' && [1].map(function (x) { return x + 1; })[0] === 2; }$js$),
          'OK: true', 'the next call has the real Array.prototype.map');
SELECT matches(pg_temp.run($js$function hook(ctx) { String.prototype.toLowerCase = function () { return 'pwned'; }; }$js$),
               '^38000: hook failed: TypeError', 'replacing String.prototype.toLowerCase -> 38000 TypeError');
SELECT is(pg_temp.run($js$function hook(ctx) { return 'ABC'.toLowerCase(); }$js$), 'OK: "abc"',
          'the next call has the real toLowerCase');
SELECT matches(pg_temp.run('function hook(ctx) { JSON.parse = null; }'),
               '^38000: hook failed: TypeError', 'JSON.parse = null -> 38000 TypeError');
SELECT is(pg_temp.run($js$function hook(ctx) { return typeof JSON.parse === 'function'; }$js$), 'OK: true',
          'the next call has the real JSON.parse');
SELECT matches(pg_temp.run('function hook(ctx) { leak = 1; return leak; }'),
               '^38000: hook failed: ReferenceError', 'leak = 1 (an undeclared global) -> 38000 ReferenceError');
SELECT is(pg_temp.run($js$function hook(ctx) { return typeof leak; }$js$), 'OK: "undefined"',
          'the next call sees no global leak');
SELECT matches(pg_temp.run('function hook(ctx) { globalThis.x = 1; return 1; }'),
               '^38000: hook failed: TypeError', 'globalThis.x = 1 -> 38000 TypeError');
SELECT is(pg_temp.run($js$function hook(ctx) { return typeof x; }$js$), 'OK: "undefined"',
          'the next call sees no global x');

-- ---------------------------------------------------------------- removed globals, no I/O, no state
SELECT is(pg_temp.run($js$
  function hook(ctx) {
    return { Duktape: typeof Duktape, Buffer: typeof Buffer, ArrayBuffer: typeof ArrayBuffer,
             Uint8Array: typeof Uint8Array, Int32Array: typeof Int32Array, Float64Array: typeof Float64Array,
             CBOR: typeof CBOR, Proxy: typeof Proxy, Reflect: typeof Reflect, TextEncoder: typeof TextEncoder,
             TextDecoder: typeof TextDecoder, performance: typeof performance };
  }
$js$),
          'OK: ' || (SELECT jsonb_object_agg(g, 'undefined')
                       FROM unnest(ARRAY['Duktape', 'Buffer', 'ArrayBuffer', 'Uint8Array', 'Int32Array', 'Float64Array',
                                         'CBOR', 'Proxy', 'Reflect', 'TextEncoder', 'TextDecoder', 'performance']) g)::text,
          'Duktape, Buffer, ArrayBuffer, typed arrays, CBOR, Proxy, Reflect, TextEncoder/Decoder, performance are gone');
SELECT is(pg_temp.run($js$
  function hook(ctx) {
    return { print: typeof print, alert: typeof alert, require: typeof require, console: typeof console,
             setTimeout: typeof setTimeout, setInterval: typeof setInterval, module: typeof module,
             exports: typeof exports, process: typeof process, fetch: typeof fetch };
  }
$js$),
          'OK: ' || (SELECT jsonb_object_agg(g, 'undefined')
                       FROM unnest(ARRAY['print', 'alert', 'require', 'console', 'setTimeout', 'setInterval',
                                         'module', 'exports', 'process', 'fetch']) g)::text,
          'no I/O globals: print, alert, require, console, timers, module, exports, process, fetch');
SELECT is(ARRAY(SELECT pg_temp.run('var n = 0; function hook(ctx) { n++; return n; }') FROM generate_series(1, 3)),
          ARRAY['OK: 1', 'OK: 1', 'OK: 1'], 'top-level state does not survive between calls (1 every time)');
SELECT is(ARRAY(SELECT pg_temp.run('function hook(ctx) { hook.calls = (hook.calls || 0) + 1; return hook.calls; }')
                  FROM generate_series(1, 3)),
          ARRAY['OK: 1', 'OK: 1', 'OK: 1'], 'nor state kept on the hook function');

-- ---------------------------------------------------------------- fatal engine error
-- xprov._sandbox_force_fatal() (a test helper) takes duktape's fatal-error path: the
-- heap is thrown away and the next call builds a fresh one, sanitized like the first
SELECT FROM pg_temp.outcome('SELECT xprov._sandbox_force_fatal()');
SELECT is(pg_temp.sane(), 'OK: {"userName": "ada.lovelace"}', 'after a fatal engine error: a normal transform runs');
SELECT is(pg_temp.frozen(), 'OK: [true, true, true, true, true, true, true, true, "undefined", "function"]',
          'the rebuilt heap is frozen and sanitized too');

-- ---------------------------------------------------------------- bad arguments
SELECT throws_ok($$SELECT xprov.execute_script(NULL, '{}')$$, '22004', NULL, 'execute_script: NULL script -> 22004');
SELECT throws_ok($$SELECT xprov.validate_script(NULL)$$, '22004', NULL, 'validate_script: NULL script -> 22004');
SELECT throws_ok($$SELECT xprov.execute_script('function hook(ctx) { return 1; }', NULL)$$, '22004', NULL,
                 'execute_script: NULL context -> 22004');
SELECT throws_ok($$SELECT xprov.execute_script('function hook(ctx) { return 1; }', '{}', 0)$$, '22023', NULL,
                 'execute_script: timeout_ms 0 -> 22023');
SELECT throws_ok($$SELECT xprov.execute_script('function hook(ctx) { return 1; }', '{}', -1)$$, '22023', NULL,
                 'execute_script: negative timeout_ms -> 22023');
SELECT throws_ok($$SELECT xprov.execute_script('function hook(ctx) { return 1; }', '{}', 5001)$$, '22023', NULL,
                 'execute_script: timeout_ms above xprov.hook_max_timeout (default 5s) -> 22023');
SELECT is(pg_temp.run('function hook(ctx) { return 1; }', '{}', 5000), 'OK: 1',
          'execute_script: timeout_ms equal to xprov.hook_max_timeout is accepted');
SET LOCAL xprov.hook_max_timeout = '200ms';
SELECT throws_ok($$SELECT xprov.execute_script('function hook(ctx) { return 1; }', '{}', 201)$$, '22023', NULL,
                 'execute_script: timeout_ms above a lowered xprov.hook_max_timeout (200ms) -> 22023');
SELECT is(pg_temp.run('function hook(ctx) { return 1; }', '{}', 200), 'OK: 1',
          'execute_script: timeout_ms equal to the lowered xprov.hook_max_timeout is accepted');
RESET xprov.hook_max_timeout;
SELECT throws_ok($$SELECT xprov.execute_script('function hook(ctx) { return 1; }', '{}', 100, 63)$$, '22023', NULL,
                 'execute_script: memory_kb 63 (below 64) -> 22023');
SELECT throws_ok($$SELECT xprov.execute_script('function hook(ctx) { return 1; }', '{}', 100, 0)$$, '22023', NULL,
                 'execute_script: memory_kb 0 -> 22023');
SELECT throws_ok($$SELECT xprov.execute_script('function hook(ctx) { return 1; }', '{}', 100, -1)$$, '22023', NULL,
                 'execute_script: negative memory_kb -> 22023');
SELECT throws_ok($$SELECT xprov.execute_script('function hook(ctx) { return 1; }', '{}', 100, 65537)$$, '22023', NULL,
                 'execute_script: memory_kb above xprov.hook_max_memory (default 64MB) -> 22023');
SELECT matches(pg_temp.run('function hook(ctx) { return 1; }', '{}', 100, 64),
               '^(OK: 1$|38000: hook exceeded its memory limit of 64 kB)', 'execute_script: memory_kb 64 is accepted');
SELECT is(pg_temp.run('function hook(ctx) { return 1; }', '{}', 100, 65536), 'OK: 1',
          'execute_script: memory_kb equal to xprov.hook_max_memory is accepted');
SET LOCAL xprov.hook_max_memory = '1MB';
SELECT throws_ok($$SELECT xprov.execute_script('function hook(ctx) { return 1; }', '{}', 100, 1025)$$, '22023', NULL,
                 'execute_script: memory_kb above a lowered xprov.hook_max_memory (1MB) -> 22023');
SELECT is(pg_temp.run('function hook(ctx) { return 1; }', '{}', 100, 1024), 'OK: 1',
          'execute_script: memory_kb equal to the lowered xprov.hook_max_memory is accepted');
RESET xprov.hook_max_memory;
SELECT matches(pg_temp.run('function hook(ctx) { return 1; }', '{}', NULL), '^((22004|22023): |OK: 1$)',
               'execute_script: NULL timeout_ms is refused (22004 or 22023) or means the default');
SELECT matches(pg_temp.run('function hook(ctx) { return 1; }', '{}', 100, NULL), '^((22004|22023): |OK: 1$)',
               'execute_script: NULL memory_kb is refused (22004 or 22023) or means the default');
SELECT is(pg_temp.sane(), 'OK: {"userName": "ada.lovelace"}', 'after the rejected arguments: a normal transform runs');

-- ---------------------------------------------------------------- oversized and deep contexts
CREATE TEMP TABLE _big AS
    SELECT jsonb_build_object('attributes', jsonb_build_object('blob', repeat('x', 4 * 1024 * 1024))) AS ctx;
SELECT matches(pg_temp.run('function hook(ctx) { return { n: ctx.attributes.blob.length }; }', (SELECT ctx FROM _big), 1000),
               '^(OK: \{"n": 4194304\}$|38000: hook exceeded its memory limit of 16384 kB)',
               'a 4 MB context runs within 16384 kB or fails with the memory limit');
SELECT matches(pg_temp.run('function hook(ctx) { return { n: ctx.attributes.blob.length }; }', (SELECT ctx FROM _big),
                           1000, 1024),
               '^(OK: \{"n": 4194304\}$|38000: hook exceeded its memory limit of 1024 kB)',
               'a 4 MB context with memory_kb 1024 runs or fails with the memory limit');
SELECT matches(pg_temp.run('function hook(ctx) { return ctx; }', (SELECT ctx FROM _big), 1000, 65536),
               '^38000: hook (result is too large|exceeded its memory limit of 65536 kB)',
               'echoing a 4 MB context -> 38000 too large (or memory limit)');
SELECT matches(pg_temp.run('function hook(ctx) { return 1; }',
                           ('{"attributes": ' || repeat('[', 2000) || repeat(']', 2000) || '}')::jsonb, 1000),
               '^(OK: 1$|38000: hook )', 'a context nested 2,000 deep runs or fails with 38000');
SELECT is(pg_temp.sane(), 'OK: {"userName": "ada.lovelace"}', 'after the oversized contexts: a normal transform runs');

-- ---------------------------------------------------------------- statement_timeout
-- The hook may run 5 s but the statement only 200 ms: the usual 57014
-- statement-timeout error, soon.  The outer block catches 57014 wherever it
-- is raised (inside execute_script or at the next interrupt check), so that
-- a wrong behaviour fails this test and not the whole file.
CREATE FUNCTION pg_temp.stmt_timeout_probe() RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    t0 timestamptz := clock_timestamp(); r text;
BEGIN
    BEGIN
        PERFORM xprov.execute_script('function hook(ctx) { while(true){} }', '{}', 5000);
        r := 'OK';
    EXCEPTION WHEN OTHERS THEN
        r := SQLSTATE || ': ' || SQLERRM;
    END;
    PERFORM pg_sleep(0);
    RETURN r;
EXCEPTION WHEN query_canceled THEN
    RETURN SQLSTATE || ': ' || SQLERRM
        || CASE WHEN clock_timestamp() - t0 < interval '2 s' THEN ' (within 2 s)'
                ELSE ' (after ' || (clock_timestamp() - t0)::text || ')' END;
END $$;
SET LOCAL statement_timeout = '200ms';
SELECT is(pg_temp.stmt_timeout_probe(), '57014: canceling statement due to statement timeout (within 2 s)',
          'statement_timeout 200ms stops a hook allowed 5000 ms with the usual 57014 error');
SET LOCAL statement_timeout = '60s';
SELECT is(pg_temp.sane(), 'OK: {"userName": "ada.lovelace"}', 'after the statement timeout: a normal transform runs');

-- xprov._sandbox_bench() (the benchmark's helper) runs the worker's path: ctx member by member
SELECT ok(xprov._sandbox_bench('function hook(ctx) { return { attributes: { n: ctx.n + 1, s: ctx.o.s } }; }',
                               '{"n": 1, "o": {"s": "x"}, "b": true, "z": null}', 100, 16384, 50) > 0,
          '_sandbox_bench times a hook on a ctx of every member kind');
SELECT throws_ok($$SELECT xprov._sandbox_bench('function hook(ctx) { }', '[1, 2]', 100, 16384, 1)$$,
                 '22023', 'context must be a JSON object', '_sandbox_bench refuses a ctx that is not an object');
SELECT throws_ok($$SELECT xprov._sandbox_bench('function hook(ctx) { throw new Error("no"); }', '{}', 100, 16384, 1)$$,
                 '38000', NULL, '_sandbox_bench reports a hook''s error as execute_script does');

SELECT * FROM finish();
ROLLBACK;
