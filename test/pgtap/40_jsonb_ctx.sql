-- How a jsonb ctx reaches a hook (src/sandbox_jsonb.c, src/jsonb_walk.c).  In
-- a UTF-8 database the sandbox builds JavaScript values from jsonb itself,
-- without PostgreSQL's allocator and without JSON text, so that the worker's
-- hook thread can: execute_script's context, and each JSON-valued member of
-- the worker's ctx, go that way.  A hook must see exactly what JSON.parse
-- makes of the value's text: every JSON type,
-- every escape, numbers in numeric's short and long on-disk forms, containers
-- with and without stored offsets (more than 32 members), nesting, long
-- strings, scalar roots.  A LATIN1 database still converts the text first.
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS xprov;
CREATE EXTENSION IF NOT EXISTS dblink;

BEGIN;
SELECT plan(33);
\ir common.psql
SET LOCAL statement_timeout = '120s';

-- what the hook returns for ctx = p_ctx
CREATE FUNCTION pg_temp.echo(p_ctx jsonb) RETURNS jsonb LANGUAGE sql AS $$
    SELECT xprov.execute_script('function hook(ctx) { return ctx; }', p_ctx, 1000, 65536)
$$;

-- JavaScript's String() of the number a hook sees: from the jsonb number, and
-- from the number's own text (Number(), no jsonb involved)
CREATE FUNCTION pg_temp.seen(p_n numeric) RETURNS text LANGUAGE sql AS $$
    SELECT xprov.execute_script('function hook(ctx) { return String(ctx.n); }',
                                jsonb_build_object('n', p_n)) #>> '{}'
$$;
CREATE FUNCTION pg_temp.parsed(p_n numeric) RETURNS text LANGUAGE sql AS $$
    SELECT xprov.execute_script('function hook(ctx) { return String(Number(ctx.s)); }',
                                jsonb_build_object('s', p_n::text)) #>> '{}'
$$;

-- a random document: objects (up to 45 members), arrays, strings with escapes
-- and non-ASCII, numbers of every scale, literals
CREATE FUNCTION pg_temp.doc(depth int) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE r float8 := random(); res jsonb;
BEGIN
    IF depth <= 0 OR r < 0.3 THEN
        r := random();
        RETURN CASE
            WHEN r < 0.3 THEN to_jsonb(md5(random()::text) || chr(1 + (random() * 40)::int) || repeat(E'é"\\', (random() * 3)::int))
            WHEN r < 0.6 THEN to_jsonb(round((random() * 1000)::numeric, (random() * 4)::int))
            WHEN r < 0.7 THEN 'null'
            WHEN r < 0.8 THEN 'true'
            WHEN r < 0.9 THEN 'false'
            ELSE to_jsonb(repeat('z', (random() * 300)::int)) END;
    END IF;
    IF r < 0.65 THEN
        SELECT coalesce(jsonb_object_agg('k' || i || md5(i::text), pg_temp.doc(depth - 1)), '{}') INTO res
          FROM generate_series(1, (random() * 45)::int) i;
    ELSE
        SELECT coalesce(jsonb_agg(pg_temp.doc(depth - 1)), '[]') INTO res
          FROM generate_series(1, (random() * 45)::int) i;
    END IF;
    RETURN res;
END $$;

-- ---------------------------------------------------------------- shapes
SELECT is(pg_temp.echo('{}'), '{}'::jsonb, 'an empty object');
SELECT is(pg_temp.echo('{"a": {}, "b": [], "c": [[]], "d": [{}]}'), '{"a": {}, "b": [], "c": [[]], "d": [{}]}'::jsonb,
          'empty containers inside');
SELECT is(pg_temp.echo('{"n": null, "t": true, "f": false, "z": 0, "s": ""}'),
          '{"n": null, "t": true, "f": false, "z": 0, "s": ""}'::jsonb, 'null, booleans, zero, the empty string');
SELECT is(pg_temp.echo('{"a": [1, "two", null, true, false, {"x": [3.5]}], "b": {"c": {"d": {"e": [[[["deep"]]]]}}}}'),
          '{"a": [1, "two", null, true, false, {"x": [3.5]}], "b": {"c": {"d": {"e": [[[["deep"]]]]}}}}'::jsonb,
          'nested arrays and objects of mixed members');
SELECT is(pg_temp.echo(j), j, 'an object of 100 members (jsonb stores offsets every 32)')
  FROM (SELECT jsonb_object_agg('member' || i, jsonb_build_array(i, 'v' || i)) AS j FROM generate_series(1, 100) i) t;
SELECT is(pg_temp.echo(j), j, 'an array of 1,000 elements of every type')
  FROM (SELECT jsonb_build_object('a', jsonb_agg(CASE i % 5 WHEN 0 THEN to_jsonb(i) WHEN 1 THEN to_jsonb('s' || i)
                                                 WHEN 2 THEN 'null' WHEN 3 THEN to_jsonb(i % 2 = 0)
                                                 ELSE jsonb_build_object('i', i) END)) AS j
          FROM generate_series(1, 1000) i) t;
SELECT is(xprov.execute_script('function hook(ctx) { return [ctx.s.length, ctx.s.charAt(199999)]; }',
                               jsonb_build_object('s', repeat('x', 199999) || 'y')),
          '[200000, "y"]'::jsonb, 'a string of 200,000 characters (beyond any kept buffer)');
SELECT is(xprov.execute_script('function hook(ctx) { return ctx.s.length; }', jsonb_build_object('s', repeat('é', 5000))),
          '5000'::jsonb, 'a non-ASCII string of 5,000 characters');

-- ---------------------------------------------------------------- strings
SELECT is(xprov.execute_script('function hook(ctx) { var c = []; for (var i = 0; i < ctx.s.length; i++) c.push(ctx.s.charCodeAt(i)); return c; }',
                               jsonb_build_object('s', string_agg(chr(i), '' ORDER BY i))),
          (SELECT jsonb_agg(i ORDER BY i) FROM generate_series(1, 127) i),
          'every ASCII character, controls included, arrives as itself')
  FROM generate_series(1, 127) i;
SELECT is(pg_temp.echo(jsonb_build_object('s', E'q"\\/\b\f\n\r\t é ß € 😀 \u2028\u2029')),
          jsonb_build_object('s', E'q"\\/\b\f\n\r\t é ß € 😀 \u2028\u2029'),
          'quotes, backslashes, escapes, non-ASCII and characters outside the BMP');
SELECT is(xprov.execute_script('function hook(ctx) { return Object.keys(ctx); }', '{"é": 1, "a\"b": 2, "\\": 3, "": 4}'),
          '["", "\\", "é", "a\"b"]'::jsonb, 'object keys with escapes and non-ASCII (in jsonb''s key order)');

-- ---------------------------------------------------------------- numbers
SELECT is(pg_temp.seen(n), v, 'the number ' || n || ' is ' || v)
  FROM (VALUES (0.0001::numeric, '0.0001'), (10000, '10000'), (1.500, '1.5'), (-12345.6789, '-12345.6789'),
               (1e-70, '1e-70'), (2e65, '2e+65')) v(n, v);
SELECT is((SELECT count(*) FROM (VALUES (0::numeric), (-1), (9999), (10000), (10001), (99999999), (100000000),
                                        (0.1), (0.01), (0.001), (0.0001), (0.00001), (1e-8), (1e-9), (1.000),
                                        (-0.5), (123456789.123456789), (12345678901234567890123456789),
                                        (1e100), (1e-100), (999999999999), (-999999999999), (1000000000000), (-1000000000000),
                                        (4294967296), (9007199254740993), (0.30000000000000004), (1e300), (-1e-300), (1.7976931348623157e308),
                                        (3.14159265358979323846264338327950288)) v(n)
            WHERE pg_temp.seen(n) IS DISTINCT FROM pg_temp.parsed(n)), 0::bigint,
          'numbers at the edges of numeric''s forms: as JavaScript reads their text');
SELECT setseed(0.4);
SELECT is((SELECT count(*) FROM (SELECT (random() * 10 ^ (floor(random() * 160) - 80))::numeric
                                        * (CASE WHEN random() < 0.5 THEN -1 ELSE 1 END) AS n
                                   FROM generate_series(1, 2000)) v
            WHERE pg_temp.seen(n) IS DISTINCT FROM pg_temp.parsed(n)), 0::bigint,
          '2,000 random numbers from 1e-80 to 1e80: as JavaScript reads their text');
SELECT is((SELECT count(*) FROM (SELECT round((random() * 1e6)::numeric, (random() * 30)::int) AS n
                                   FROM generate_series(1, 1000)) v
            WHERE pg_temp.seen(n) IS DISTINCT FROM pg_temp.parsed(n)), 0::bigint,
          '1,000 random numbers with 0 to 30 decimals: as JavaScript reads their text');

-- ---------------------------------------------------------------- roots and random documents
SELECT is(pg_temp.echo('5'), '5'::jsonb, 'a scalar root: a number');
SELECT is(pg_temp.echo('"text"'), '"text"'::jsonb, 'a scalar root: a string');
SELECT is(xprov.execute_script('function hook(ctx) { return [ctx]; }', 'null'), '[null]'::jsonb, 'a scalar root: null');
SELECT is((SELECT count(*) FROM (SELECT pg_temp.doc(3) AS j FROM generate_series(1, 150)) d
            WHERE pg_temp.echo(j) IS DISTINCT FROM j), 0::bigint,
          '150 random documents, up to 3 levels of 45 members: each hook sees its document exactly');

SELECT is((SELECT count(*) FROM (SELECT pg_temp.doc(3) AS j FROM generate_series(1, 100)) d
            WHERE xprov.execute_script(
                    'function hook(ctx) { return JSON.stringify(ctx.v) === JSON.stringify(JSON.parse(ctx.t)); }',
                    jsonb_build_object('v', j, 't', j::text)) <> 'true'), 0::bigint,
          '100 random documents: each as JSON.parse makes it of the document''s text');

SELECT is(xprov.execute_script($js$function hook(ctx) {
    var p = JSON.parse(ctx.t), k = Object.keys(ctx.v), out = [];
    for (var i = 0; i < k.length; i++)
      out.push(k[i] === Object.keys(p)[i] && ctx.v[k[i]] === p[k[i]] && ctx.v[k[i]].length === p[k[i]].length);
    return out;
  }$js$, jsonb_build_object('v', j, 't', j::text)),
          '[true, true, true, true]'::jsonb,
          'strings and keys outside the BMP, non-ASCII and control characters: as JSON.parse makes them')
  FROM (SELECT jsonb_build_object('a😀b', E'x😀y\u00e9', 'é', E'\t\n\u0001"\\', '€', repeat('😀', 300), 'z', '') AS j) t;

-- ---------------------------------------------------------------- members are defined, as JSON.parse defines them
SELECT is(xprov.execute_script($js$function hook(ctx) {
    var a = ctx.a, p = JSON.parse(ctx.t);
    return [Object.getPrototypeOf(a) === Object.prototype, Object.getPrototypeOf(p) === Object.prototype,
            Object.getOwnPropertyNames(a), Object.getOwnPropertyNames(p),
            Object.getOwnPropertyDescriptor(a, '__proto__').value, a.toString, typeof {}.toString,
            Object.getOwnPropertyDescriptor(a, 'valueOf').writable];
  }$js$, jsonb_build_object('a', j, 't', j::text)),
          '[true, true, ["valueOf", "toString", "__proto__", "constructor"], ["valueOf", "toString", "__proto__", "constructor"],
            {"x": 1}, 5, "function", true]'::jsonb,
          'keys named like Object.prototype''s members, and "__proto__", become own data members; no prototype changes')
  FROM (SELECT '{"__proto__": {"x": 1}, "toString": 5, "valueOf": [], "constructor": null}'::jsonb AS j) t;

-- ---------------------------------------------------------------- nesting: JSON.parse's limit
SELECT is(xprov.execute_script('function hook(ctx) { var d = 0; for (var v = ctx; Array.isArray(v); v = v[0]) d++; return d; }',
                               (repeat('[', 1000) || repeat(']', 1000))::jsonb),
          '1000'::jsonb, 'arrays nested 1,000 deep (JSON.parse''s limit) arrive whole');
SELECT throws_ok($$SELECT xprov.execute_script('function hook(ctx) { return 1; }',
                                               ('{"a": ' || repeat('[', 1000) || repeat(']', 1000) || '}')::jsonb)$$,
                 '38000', 'hook failed: RangeError: value nested deeper than 1000 levels',
                 'a value nested 1,001 deep is refused with a RangeError, as JSON.parse refuses its text');

-- ---------------------------------------------------------------- limits while ctx is built
SELECT is(xprov.execute_script('function hook(ctx) { return [ctx.n === JSON.parse(ctx.t), ctx.n > 1e308, ctx.m === JSON.parse(ctx.u)]; }',
                               jsonb_build_object('n', ('1' || repeat('7', 400))::numeric, 't', '1' || repeat('7', 400),
                                                  'm', ('0.' || repeat('0', 400) || '123')::numeric,
                                                  'u', '0.' || repeat('0', 400) || '123')),
          '[true, true, true]'::jsonb,
          'numbers of 400 digits, beyond a double''s range and below it: as JSON.parse reads them');
SELECT throws_ok($$SELECT xprov.execute_script('function hook(ctx) { return 1; }',
                                               jsonb_build_object('a', (SELECT jsonb_agg(repeat('x', 100) || g)
                                                                          FROM generate_series(1, 20000) g)), 1000, 1024)$$,
                 '38000', 'hook exceeded its memory limit of 1024 kB',
                 'a ctx larger than the memory limit stops with the limit''s error while it is built');

-- ---------------------------------------------------------------- the worker's ctx, member by member
SELECT is(xprov._sandbox_bench('function hook(ctx) { if (ctx.attributes.s !== "é\n" || ctx.attributes.n[1] !== 0.25) throw new Error("wrong"); }',
                               '{"attributes": {"s": "é\n", "n": [1, 0.25]}}', 100, 16384, 10) >= 0, true,
          'a JSON-valued member of ctx (the worker''s path) arrives exactly');

-- ---------------------------------------------------------------- a LATIN1 database converts the text first
SELECT dblink_exec(pg_temp.connstr(), 'DROP DATABASE IF EXISTS xprov_pgtap_latin1');
SELECT dblink_exec(pg_temp.connstr(), 'CREATE DATABASE xprov_pgtap_latin1 TEMPLATE template0 ENCODING ''LATIN1'' LC_COLLATE ''C'' LC_CTYPE ''C''');
SELECT dblink_exec(replace(pg_temp.connstr(), 'dbname=' || current_database(), 'dbname=xprov_pgtap_latin1'),
                   'CREATE EXTENSION xprov');
SELECT is((SELECT r FROM dblink(replace(pg_temp.connstr(), 'dbname=' || current_database(), 'dbname=xprov_pgtap_latin1'),
                               $q$SELECT xprov.execute_script('function hook(ctx) { return [ctx.s, ctx.s.length, ctx.o.n]; }',
                                                              '{"s": "café", "o": {"n": 2.5}}')::text$q$) AS t(r text)),
          '["café", 4, 2.5]', 'a LATIN1 database: the hook sees the same characters and numbers');
SELECT dblink_exec(pg_temp.connstr(), 'DROP DATABASE xprov_pgtap_latin1');

SELECT * FROM finish();
ROLLBACK;
