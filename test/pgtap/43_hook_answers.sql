-- What the worker reads from a hook's answer (src/json_members.c): the
-- sandbox encodes the answer once with JSON.stringify, and the members of an
-- object are read back from that text in C.  xprov._hook_answer() shows them
-- as the worker gets them: name, kind (string, number, boolean, null or
-- json) and value (a JSON value's text as a string).  Every kind, every
-- escape, brackets and quotes inside nested strings, toJSON, members that
-- JSON leaves out, more members than are reported, answers that are not
-- objects, and lone surrogates; and the helper's refusals.
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS xprov;

BEGIN;
SELECT plan(28);
\ir common.psql

CREATE FUNCTION pg_temp.answer(p_body text) RETURNS jsonb LANGUAGE sql AS $$
    SELECT xprov._hook_answer('function hook(ctx) { ' || p_body || ' }', '{"attributes": {"a": 1}}')
$$;
-- the members as name -> [kind, value]
CREATE FUNCTION pg_temp.members(p_body text) RETURNS jsonb LANGUAGE sql AS $$
    SELECT coalesce(jsonb_object_agg(m->>'name', jsonb_build_array(m->>'kind', m->'value')), '{}')
      FROM jsonb_array_elements(pg_temp.answer(p_body)->'members') m
$$;

SELECT is(pg_temp.answer('return { attributes: { userName: (ctx.attributes.a + ".x") } };'),
          '{"members": [{"name": "attributes", "kind": "json", "value": "{\"userName\":\"1.x\"}"}], "more": false}',
          'an object answer: its member, a nested object as its JSON text');
SELECT is(pg_temp.members('return { s: "x", n: 2.5, i: -7, b: true, f: false, z: null, a: [1, {x: "y"}], o: {} };'),
          '{"s": ["string", "x"], "n": ["number", 2.5], "i": ["number", -7], "b": ["boolean", true],
            "f": ["boolean", false], "z": ["null", null], "a": ["json", "[1,{\"x\":\"y\"}]"], "o": ["json", "{}"]}',
          'every kind of member');
SELECT is(pg_temp.members('return { big: 1e21, small: 1e-7, tenth: 0.1, third: 1/3, neg0: -0, max: 1.7976931348623157e308 };'),
          '{"big": ["number", 1e21], "small": ["number", 1e-7], "tenth": ["number", 0.1],
            "third": ["number", 0.3333333333333333], "neg0": ["number", 0], "max": ["number", 1.7976931348623157e308]}',
          'numbers come back exactly, exponents included');
SELECT is(pg_temp.answer('return {};'), '{"members": [], "more": false}', 'an empty object: no members');

-- escapes
SELECT is(pg_temp.answer($js$return { 'na"me\\': 'a"b\\c\nd\te\u0001f/\u00e9\u20ac\ud83d\ude00' };$js$)->'members'->0,
          jsonb_build_object('name', 'na"me\', 'kind', 'string', 'value', E'a"b\\c\nd\te\u0001f/é€😀'),
          'quotes, backslashes, control characters and characters beyond the BMP in names and strings');
SELECT is(pg_temp.answer($js$return { t: '\u2028\u2029\u007f\u0000x' };$js$)->'members'->0->>'value',
          E'\u2028\u2029\u007f',
          'line and paragraph separators and DEL come back; text ends at a NUL, as before');
SELECT is(pg_temp.members($js$return { a: { x: '}]"{[\\', y: ['"', '\\"'] }, b: 1 };$js$),
          jsonb_build_object('a', jsonb_build_array('json', $j${"x":"}]\"{[\\","y":["\"","\\\""]}$j$),
                             'b', jsonb_build_array('number', 1)),
          'brackets, quotes and backslashes inside a nested value''s strings do not end it early');
SELECT is(pg_temp.members($js$var o = {}; Object.defineProperty(o, '__proto__', { value: 1, enumerable: true });
                           Object.defineProperty(o, 'toString', { value: 'x', enumerable: true }); return o;$js$),
          '{"__proto__": ["number", 1], "toString": ["string", "x"]}',
          'members named like Object.prototype''s are members like any other');

-- what JSON.stringify leaves out or changes
SELECT is(pg_temp.members('return { u: undefined, f: function () {}, n: NaN, i: Infinity, k: 1 };'),
          '{"n": ["null", null], "i": ["null", null], "k": ["number", 1]}',
          'undefined and functions are left out; NaN and Infinity are null, as JSON.stringify writes them');
SELECT is(pg_temp.members('return { d: new Date(0), s: new String("boxed"), o: { toJSON: function () { return [1]; } } };'),
          '{"d": ["string", "1970-01-01T00:00:00.000Z"], "s": ["string", "boxed"], "o": ["json", "[1]"]}',
          'members with toJSON and boxed values are what JSON.stringify makes of them');
SELECT is(pg_temp.members('return { toJSON: function () { return { attributes: { x: 1 } }; } };'),
          '{"attributes": ["json", "{\"x\":1}"]}',
          'an answer with toJSON: the members of what toJSON returns');
SELECT is(pg_temp.members('function P() { this.own = 1; } P.prototype.inherited = 2; return new P();'),
          '{"own": ["number", 1]}',
          'an instance: its own enumerable members only');
SELECT is(pg_temp.members($js$var o = { a: 1 }; Object.defineProperty(o, 'hidden', { value: 2 }); return o;$js$),
          '{"a": ["number", 1]}',
          'a member that is not enumerable is left out');

-- how many
SELECT is(pg_temp.answer('return { a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7, h: 8 };')->'more', 'false',
          'eight members: all reported');
SELECT is(pg_temp.answer('return { a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7, h: 8, i: 9 };'),
          '{"members": [{"name": "a", "kind": "number", "value": 1}, {"name": "b", "kind": "number", "value": 2},
                        {"name": "c", "kind": "number", "value": 3}, {"name": "d", "kind": "number", "value": 4},
                        {"name": "e", "kind": "number", "value": 5}, {"name": "f", "kind": "number", "value": 6},
                        {"name": "g", "kind": "number", "value": 7}, {"name": "h", "kind": "number", "value": 8}],
            "more": true}',
          'nine members: the first eight, in order, and that there were more');

-- answers that are not objects
SELECT is(pg_temp.answer('return [1, 2];'), '{"result": "[1,2]"}', 'an array stays JSON text');
SELECT is(pg_temp.answer('return "{}";'), '{"result": "\"{}\""}', 'a string that looks like an object stays a string');
SELECT is(pg_temp.answer('return new Date(0);'), '{"result": "\"1970-01-01T00:00:00.000Z\""}',
          'a Date is the string JSON makes of it');
SELECT is(pg_temp.answer('return null;'), '{"result": "null"}', 'null stays null');
SELECT is(pg_temp.answer('return;'), '{"result": null}', 'nothing: no result');

-- lone surrogates are no text
SELECT throws_ok($$SELECT pg_temp.answer($js$return { a: 'x\ud800y' };$js$)$$, '38000',
                 'hook failed: the result contains a lone UTF-16 surrogate (such as "\ud800"), which is not text',
                 'a lone surrogate in a value fails the hook');
SELECT throws_ok($$SELECT pg_temp.answer($js$var o = {}; o['k\udc00'] = 1; return o;$js$)$$, '38000',
                 'hook failed: the result contains a lone UTF-16 surrogate (such as "\ud800"), which is not text',
                 'a lone surrogate in a name fails the hook');

-- a test helper only
SELECT throws_ok($$SELECT xprov._hook_answer('function hook(ctx) { }', NULL)$$, '22004',
                 'context must not be null', 'a NULL context is refused');
SELECT throws_ok($$SELECT xprov._hook_answer(NULL, '{}')$$, '22004',
                 'script must not be null', 'a NULL script is refused');
SELECT throws_ok($$SELECT xprov._hook_answer('function hook(ctx) { }', '[1, 2]')$$, '22023',
                 'context must be a JSON object', 'a context that is not an object is refused');
SELECT throws_like($$SELECT xprov._hook_answer('function hook(ctx) { return {', '{}')$$,
                   'hook script does not compile: SyntaxError%', 'a script that does not compile is refused');
SELECT throws_ok($$SELECT xprov._hook_answer('var x = 1;', '{}')$$, '42P13',
                 'hook script does not define function hook(ctx)', 'a script without hook(ctx) is refused');
SET LOCAL ROLE xprov_app;
SELECT throws_ok($$SELECT xprov._hook_answer('function hook(ctx) { }', '{}')$$, '42501', NULL,
                 'xprov_app may not call the test helper');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
