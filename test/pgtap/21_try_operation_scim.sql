-- xprov.try_operation() through the scim2 protocol against the SCIM test server
-- (test/targets/scim_server.py), which test/run-tests.sh starts before pg_prove: correlation
-- before create (no duplicate accounts), linking on an existing account and on 409, ambiguous
-- matches, filter escaping, PATCH and its PUT fallback with If-Match and 412, enable/disable,
-- delete, and how SCIM errors and server faults are classified.
--
-- Servers: psql variable scim_url (default http://127.0.0.1:18301/scim/v2) and
-- scim_nopatch_url (default http://127.0.0.1:18303/scim/v2, started with --no-patch, which
-- answers PATCH with 501).  Faults and checks go through the servers' /_admin API with curl,
-- run by COPY FROM PROGRAM (the suite runs as a superuser).  Two cases need a change made on
-- the server while an operation is between two of its requests (409 after an empty lookup,
-- 412 between read and write); they delay the operation's second request by 1.5 s with a
-- fault and make the change from a background curl after 0.3 s.
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS xprov;

\if :{?scim_url}
\else
\set scim_url http://127.0.0.1:18301/scim/v2
\endif
\if :{?scim_nopatch_url}
\else
\set scim_nopatch_url http://127.0.0.1:18303/scim/v2
\endif

BEGIN;
SELECT plan(79);
\ir common.psql

SELECT set_config('xtest.scim_url', :'scim_url', true) \g /dev/null
SELECT set_config('xtest.nopatch_url', :'scim_nopatch_url', true) \g /dev/null

-- ---------------------------------------------------------------- helpers

CREATE TEMP TABLE _admin_out (line text);

CREATE FUNCTION pg_temp.shell_quote(p text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT '''' || replace(p, '''', '''\''''') || ''''
$$;

-- scheme://host:port of a base URL
CREATE FUNCTION pg_temp.origin(p_url text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT regexp_replace(p_url, '^(https?://[^/]+).*$', '\1')
$$;

-- the curl command line for a request with a JSON body (with a request id, as the
-- server counts SCIM requests without one)
CREATE FUNCTION pg_temp.curl(p_method text, p_url text, p_body jsonb) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT format('curl -sS --max-time 10 -X %s -H %s -H %s %s %s', p_method,
                  pg_temp.shell_quote('Content-Type: application/json'),
                  pg_temp.shell_quote('X-Request-Id: pgtap'),
                  CASE WHEN p_body IS NOT NULL THEN '--data-binary ' || pg_temp.shell_quote(p_body::text) ELSE '' END,
                  pg_temp.shell_quote(p_url))
$$;

-- call a server's test API (p_server: 'scim' or 'nopatch'); returns its JSON answer
CREATE FUNCTION pg_temp.admin(p_method text, p_path text, p_body jsonb DEFAULT NULL,
                              p_server text DEFAULT 'scim')
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    answer text;
BEGIN
    TRUNCATE _admin_out;
    EXECUTE format('COPY _admin_out FROM PROGRAM %L WITH (FORMAT csv, QUOTE %L, DELIMITER %L)',
        pg_temp.curl(p_method, pg_temp.origin(current_setting('xtest.' || p_server || '_url')) || p_path,
                     p_body),
        E'\x01', E'\x02');
    SELECT string_agg(line, E'\n') INTO answer FROM _admin_out;
    RETURN answer::jsonb;
END $$;

CREATE FUNCTION pg_temp.fault(p_spec jsonb, p_server text DEFAULT 'scim') RETURNS void LANGUAGE sql AS $$
    SELECT FROM pg_temp.admin('POST', '/_admin/fault', p_spec, p_server)
$$;

-- send a request to the scim server p_ms milliseconds from now, in the background
CREATE FUNCTION pg_temp.later(p_ms int, p_method text, p_path text, p_body jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE _admin_out;
    EXECUTE format('COPY _admin_out FROM PROGRAM %L',
        format('(sleep %s; %s) >/dev/null 2>&1 &', p_ms / 1000.0,
               pg_temp.curl(p_method, pg_temp.origin(current_setting('xtest.scim_url')) || p_path, p_body)));
END $$;

-- load resources straight into a server; returns the first one's id
CREATE FUNCTION pg_temp.load(p_resources jsonb, p_kind text DEFAULT 'users', p_server text DEFAULT 'scim')
RETURNS text LANGUAGE sql AS $$
    SELECT pg_temp.admin('POST', '/_admin/' || p_kind, p_resources, p_server)->0->>'id'
$$;

-- the user(s) of a server with this userName (case-insensitive, as the server's uniqueness)
CREATE FUNCTION pg_temp.users(p_user_name text, p_server text DEFAULT 'scim') RETURNS SETOF jsonb
LANGUAGE sql AS $$
    SELECT u FROM jsonb_array_elements(pg_temp.admin('GET', '/_admin/users', NULL, p_server)) u
     WHERE lower(u->>'userName') = lower(p_user_name)
$$;
CREATE FUNCTION pg_temp.usr(p_user_name text, p_server text DEFAULT 'scim') RETURNS jsonb
LANGUAGE sql AS $$ SELECT u FROM pg_temp.users(p_user_name, p_server) u LIMIT 1 $$;

-- a scim2 connector of tenant T registered as p_name
CREATE FUNCTION pg_temp.scim_conn(p_name text, p_config jsonb DEFAULT '{}', p_server text DEFAULT 'scim')
RETURNS uuid LANGUAGE sql AS $$
    SELECT pg_temp.put(p_name, xprov.add_connector(pg_temp.id('T'), p_name || '-' || left(md5(random()::text), 8),
                                                   'scim2', current_setting('xtest.' || p_server || '_url'),
                                                   p_config))
$$;

-- try an operation, remember its result as p_name
CREATE TEMP TABLE _r (name text PRIMARY KEY, res jsonb NOT NULL);
CREATE FUNCTION pg_temp.run(p_name text, p_conn text, p_type text, p_attrs jsonb DEFAULT '{}',
                            p_uid text DEFAULT NULL, p_class text DEFAULT 'user')
RETURNS jsonb LANGUAGE sql AS $$
    INSERT INTO _r VALUES (p_name, xprov.try_operation(pg_temp.id(p_conn), p_type, p_class, p_attrs, p_uid))
    RETURNING res
$$;
CREATE FUNCTION pg_temp.r(p_name text) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT res FROM _r WHERE name = p_name
$$;
-- the exchanges of a run as 'GET 200, POST 201'
CREATE FUNCTION pg_temp.calls(p_name text) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT string_agg((e->>'method') || ' ' || coalesce(e->>'status', '-'), ', ' ORDER BY n)
      FROM jsonb_array_elements(pg_temp.r(p_name)->'exchanges') WITH ORDINALITY AS x(e, n)
$$;

SELECT FROM pg_temp.tenant('T');
SELECT FROM pg_temp.admin('POST', '/_admin/reset');
SELECT FROM pg_temp.admin('POST', '/_admin/reset', NULL, 'nopatch');
SELECT FROM pg_temp.scim_conn('scim');
SELECT FROM pg_temp.scim_conn('nopatch', '{}', 'nopatch');
SELECT FROM pg_temp.scim_conn('put', '{"update_method": "put"}');
SELECT FROM pg_temp.scim_conn('by_title', '{"match_attribute": "title"}');
SELECT FROM pg_temp.scim_conn('by_ext', '{"match_attribute": "externalId"}');

-- ---------------------------------------------------------------- create
SELECT FROM pg_temp.run('c1', 'scim', 'create',
                   '{"userName": "alice", "displayName": "Alice", "title": "Eng",
                     "name": {"givenName": "Al", "familyName": "Smith"}}');
SELECT is(pg_temp.r('c1')->>'outcome', 'completed', 'create: completed');
SELECT is(pg_temp.calls('c1'), 'GET 200, POST 201', 'create: looks the account up, then POSTs it');
SELECT is(pg_temp.r('c1')->'exchanges'->0->>'path',
          '/scim/v2/Users?filter=userName%20eq%20%22alice%22&count=2',
          'create: the lookup filters on userName eq "alice", percent-encoded');
SELECT is(pg_temp.r('c1')->>'target_uid', pg_temp.usr('alice')->>'id',
          'create: target_uid is the id the server gave the account');
SELECT is(pg_temp.r('c1')->'result'->>'userName', 'alice', 'create: result is the created resource');
SELECT is(pg_temp.usr('alice')->'schemas', '["urn:ietf:params:scim:schemas:core:2.0:User"]',
          'create: schemas added to a POST body without one');

-- ---------------------------------------------------------------- create of an existing account: link
SELECT FROM pg_temp.run('c2', 'scim', 'create', '{"userName": "ALICE", "displayName": "Alice Liddell"}');
SELECT is(pg_temp.calls('c2'), 'GET 200, PATCH 200', 'create of an existing account: links it, no POST');
SELECT is(pg_temp.r('c2')->>'target_uid', pg_temp.r('c1')->>'target_uid', 'link: target_uid of the existing account');
SELECT is(pg_temp.r('c2')->'result'->'linked', 'true', 'link: result says "linked": true');
SELECT is(pg_temp.usr('alice')->>'displayName', 'Alice Liddell', 'link: the account converged to the attributes');
SELECT is((SELECT count(*) FROM pg_temp.users('alice')), 1::bigint, 'link: still one account');

-- ---------------------------------------------------------------- update (PATCH)
SELECT FROM pg_temp.run('u1', 'scim', 'update',
                   '{"displayName": "A. L.", "title": null, "name": {"familyName": "Liddell", "givenName": null}}',
                   pg_temp.r('c1')->>'target_uid');
SELECT is(pg_temp.r('u1')->>'outcome', 'completed', 'update: completed');
SELECT is(pg_temp.calls('u1'), 'PATCH 200', 'update with a target_uid: one PATCH');
SELECT is(pg_temp.usr('alice')->>'displayName', 'A. L.', 'update: attribute replaced');
SELECT ok(NOT pg_temp.usr('alice') ? 'title', 'update: a null attribute is removed');
SELECT is(pg_temp.usr('alice')->'name', '{"familyName": "Liddell"}',
          'update: complex attribute merged, its null sub-attribute removed');
SELECT is(pg_temp.r('u1')->'result'->>'displayName', 'A. L.', 'update: result is the patched resource');

SELECT FROM pg_temp.run('u2', 'scim', 'update', '{"userName": "alice", "nickName": "Ali"}');
SELECT is(pg_temp.calls('u2'), 'GET 200, PATCH 200', 'update without target_uid: finds the account by userName');
SELECT is(pg_temp.r('u2')->>'target_uid', pg_temp.r('c1')->>'target_uid', 'update without target_uid: reports the uid it found');
SELECT is(pg_temp.usr('alice')->>'nickName', 'Ali', 'update without target_uid: patched');

SELECT FROM pg_temp.run('u3', 'scim', 'update', '{"userName": "nobody"}');
SELECT is(pg_temp.r('u3')->>'outcome', 'dead', 'update of an account the target lacks: dead');
SELECT is(pg_temp.r('u3')->>'error', 'no account on the target for userName "nobody"', 'update: says which account is missing');

SELECT FROM pg_temp.run('u4', 'scim', 'update', '{"displayName": "x"}', 'no-such-id');
SELECT is(pg_temp.calls('u4') || ' ' || (pg_temp.r('u4')->>'outcome'), 'PATCH 404 dead', 'update of a deleted account: 404 -> dead');
SELECT matches(pg_temp.r('u4')->>'error', 'account no-such-id no longer exists on the target', 'update 404: says so');

-- ---------------------------------------------------------------- enable / disable
SELECT FROM pg_temp.run('d1', 'scim', 'disable', '{}', pg_temp.r('c1')->>'target_uid');
SELECT is(pg_temp.calls('d1') || ' ' || (pg_temp.usr('alice')->>'active'), 'PATCH 200 false', 'disable: PATCH active = false');
SELECT FROM pg_temp.run('e1', 'scim', 'enable', '{}', pg_temp.r('c1')->>'target_uid');
SELECT is(pg_temp.calls('e1') || ' ' || (pg_temp.usr('alice')->>'active'), 'PATCH 200 true', 'enable: PATCH active = true');

-- ---------------------------------------------------------------- filter escaping
CREATE TEMP TABLE _odd (n int, user_name text, id text);
INSERT INTO _odd VALUES (1, 'we"ird\name', NULL), (2, 'we"ird', NULL), (3, 'a b&c+d%e/ü?#=', NULL),
                        (4, E'tab\tname', NULL);
UPDATE _odd SET id = pg_temp.load(jsonb_build_array(jsonb_build_object('userName', user_name)));
SELECT FROM _odd, pg_temp.run('odd' || n, 'scim', 'create', jsonb_build_object('userName', user_name, 'title', 'odd'));
SELECT is(pg_temp.calls('odd1') || ' ' || (pg_temp.r('odd1')->>'target_uid'), 'GET 200, PATCH 200 ' || id,
          'filter escaping: quote and backslash find the right account')
  FROM _odd WHERE n = 1;
SELECT is(pg_temp.calls('odd2') || ' ' || (pg_temp.r('odd2')->>'target_uid'), 'GET 200, PATCH 200 ' || id,
          'filter escaping: a prefix of it is another account')
  FROM _odd WHERE n = 2;
SELECT is(pg_temp.calls('odd3') || ' ' || (pg_temp.r('odd3')->>'target_uid'), 'GET 200, PATCH 200 ' || id,
          'filter escaping: space, &, +, %, /, ?, #, = and non-ASCII')
  FROM _odd WHERE n = 3;
SELECT is(pg_temp.calls('odd4') || ' ' || (pg_temp.r('odd4')->>'target_uid'), 'GET 200, PATCH 200 ' || id,
          'filter escaping: control characters')
  FROM _odd WHERE n = 4;
SELECT is(pg_temp.r('odd1')->'exchanges'->0->>'path',
          '/scim/v2/Users?filter=userName%20eq%20%22we%5C%22ird%5C%5Cname%22&count=2',
          'filter escaping: the value is a JSON string literal');

-- ---------------------------------------------------------------- ambiguous match
SELECT FROM pg_temp.load('[{"userName": "amb1", "title": "twins"}, {"userName": "amb2", "title": "twins"}]');
SELECT FROM pg_temp.run('amb', 'by_title', 'create', '{"userName": "amb3", "title": "twins"}');
SELECT is(pg_temp.calls('amb') || ' ' || (pg_temp.r('amb')->>'outcome'), 'GET 200 parked',
          'ambiguous match: parked for a correlation case, nothing posted or linked');
SELECT is(pg_temp.r('amb')->'case'->>'situation' || ' ' || jsonb_array_length(pg_temp.r('amb')->'case'->'candidates'),
          'disputed 2', 'ambiguous match: the case is disputed between the two accounts found');
SELECT matches(pg_temp.r('amb')->>'error', 'more than one account on the target has title "twins"',
               'ambiguous match: the error says so');
SELECT is((SELECT count(*) FROM pg_temp.users('amb3')), 0::bigint, 'ambiguous match: no account created');

-- ---------------------------------------------------------------- 409
-- the lookup by externalId finds nothing, the userName is taken: dead, with the server's detail
SELECT FROM pg_temp.load('[{"userName": "dora"}]');
SELECT FROM pg_temp.run('dora', 'by_ext', 'create', '{"userName": "DORA", "externalId": "E-1"}');
SELECT is(pg_temp.calls('dora') || ' ' || (pg_temp.r('dora')->>'outcome'), 'GET 200, POST 409, GET 200 dead',
          '409 whose account the lookup cannot find: looked up again, then dead');
SELECT is(pg_temp.r('dora')->>'error',
          'POST /Users: HTTP 409 uniqueness: userName ''DORA'' is already taken; but no account on the target has externalId "E-1", so there is none to link',
               '409: the error says what conflicted and what was looked for');

-- someone else creates erin between our lookup and our POST: 409 -> look up again -> link
SELECT FROM pg_temp.fault('{"mode": "delay", "method": "POST", "path_prefix": "/scim/v2/Users", "delay_ms": 1500}');
SELECT FROM pg_temp.later(300, 'POST', '/_admin/users', '[{"userName": "erin", "title": "made elsewhere"}]');
SELECT FROM pg_temp.run('erin', 'scim', 'create', '{"userName": "erin", "displayName": "Erin"}');
SELECT is(pg_temp.calls('erin'), 'GET 200, POST 409, GET 200, PATCH 200',
          '409 uniqueness: looked up again and linked');
SELECT is(pg_temp.r('erin')->>'outcome', 'completed', '409 uniqueness: completed');
SELECT is(pg_temp.r('erin')->>'target_uid', pg_temp.usr('erin')->>'id', '409 uniqueness: linked to the existing account');
SELECT is(pg_temp.r('erin')->'result'->'linked', 'true', '409 uniqueness: result says linked');
SELECT is(pg_temp.usr('erin')->>'displayName', 'Erin', '409 uniqueness: the account converged');

-- ---------------------------------------------------------------- no PATCH: PUT fallback
SELECT FROM pg_temp.run('g1', 'nopatch', 'create', '{"userName": "gina", "title": "Ops", "nickName": "G"}');
SELECT is(pg_temp.calls('g1'), 'GET 200, POST 201', 'no-patch server: create as usual');
SELECT FROM pg_temp.run('g2', 'nopatch', 'update', '{"displayName": "Gina G", "title": null}', pg_temp.r('g1')->>'target_uid');
SELECT is(pg_temp.calls('g2'), 'PATCH 501, GET 200, PUT 200', 'PATCH answered 501: read, merge, PUT');
SELECT is(pg_temp.r('g2')->>'outcome', 'completed', 'PUT fallback: completed');
SELECT is(pg_temp.usr('gina', 'nopatch') - 'id' - 'meta',
          '{"userName": "gina", "nickName": "G", "displayName": "Gina G", "active": true,
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"]}',
          'PUT fallback: changed attribute set, null removed, the others kept');
SELECT FROM pg_temp.run('g3', 'nopatch', 'disable', '{}', pg_temp.r('g1')->>'target_uid');
SELECT is(pg_temp.calls('g3') || ' ' || (pg_temp.usr('gina', 'nopatch')->>'active'), 'PATCH 501, GET 200, PUT 200 false',
          'disable without PATCH: PUT active = false');

-- update_method put, and the account changes between our read and our write: 412 -> read again
SELECT FROM pg_temp.run('f1', 'put', 'create', '{"userName": "frank"}');
SELECT FROM pg_temp.fault('{"mode": "delay", "method": "PUT", "path_prefix": "/scim/v2/Users", "delay_ms": 1500}');
SELECT FROM pg_temp.later(300, 'PATCH', '/scim/v2/Users/' || (pg_temp.r('f1')->>'target_uid'),
                     '{"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                       "Operations": [{"op": "replace", "path": "title", "value": "changed elsewhere"}]}');
SELECT FROM pg_temp.run('f2', 'put', 'update', '{"displayName": "Frank F"}', pg_temp.r('f1')->>'target_uid');
SELECT is(pg_temp.calls('f2'), 'GET 200, PUT 412, GET 200, PUT 200',
          'update_method put: If-Match sent, 412 -> read again and PUT again');
SELECT is(pg_temp.usr('frank')->>'displayName' || ' / ' || (pg_temp.usr('frank')->>'title'), 'Frank F / changed elsewhere',
          '412: merged onto the new version, the other change kept');

-- ---------------------------------------------------------------- groups
SELECT FROM pg_temp.run('grp1', 'scim', 'create',
                   jsonb_build_object('displayName', 'Admins',
                                      'members', jsonb_build_array(jsonb_build_object('value', pg_temp.r('f1')->>'target_uid'))),
                   NULL, 'group');
SELECT is(pg_temp.calls('grp1') || ' ' || (pg_temp.r('grp1')->>'outcome'), 'GET 200, POST 201 completed', 'group: created');
SELECT matches(pg_temp.r('grp1')->'exchanges'->0->>'path', 'Groups\?filter=displayName%20eq%20%22Admins%22',
               'group: looked up by displayName');
SELECT is(pg_temp.admin('GET', '/_admin/groups')->0->'members'->0->>'value', pg_temp.r('f1')->>'target_uid',
          'group: members passed through');
SELECT FROM pg_temp.run('grp2', 'scim', 'create', '{"displayName": "admins"}', NULL, 'group');
SELECT is(pg_temp.calls('grp2') || ' ' || (pg_temp.r('grp2')->>'target_uid'), 'GET 200, PATCH 200 ' || (pg_temp.r('grp1')->>'target_uid'),
          'group: an existing group is linked');

-- ---------------------------------------------------------------- delete
SELECT FROM pg_temp.run('x1', 'scim', 'delete', '{}', pg_temp.r('c1')->>'target_uid');
SELECT is(pg_temp.calls('x1') || ' ' || (pg_temp.r('x1')->>'outcome'), 'DELETE 204 completed', 'delete: 204 -> completed');
SELECT is((SELECT count(*) FROM pg_temp.users('alice')), 0::bigint, 'delete: the account is gone');
SELECT FROM pg_temp.run('x2', 'scim', 'delete', '{}', pg_temp.r('c1')->>'target_uid');
SELECT is(pg_temp.calls('x2') || ' ' || (pg_temp.r('x2')->>'outcome'), 'DELETE 404 completed', 'delete again: 404 -> completed');
SELECT FROM pg_temp.run('x3', 'scim', 'delete', '{"userName": "erin"}');
SELECT is(pg_temp.calls('x3') || ' ' || (pg_temp.r('x3')->>'outcome'), 'GET 200, DELETE 204 completed',
          'delete without target_uid: found by userName, deleted');
SELECT FROM pg_temp.run('x4', 'scim', 'delete', '{"userName": "erin"}');
SELECT is(pg_temp.calls('x4') || ' ' || (pg_temp.r('x4')->>'outcome'), 'GET 200 completed',
          'delete without target_uid of an absent account: nothing to delete, completed');

-- ---------------------------------------------------------------- errors and faults
SELECT FROM pg_temp.run('e400', 'scim', 'create', '{"displayName": "no userName"}');
SELECT is(pg_temp.calls('e400') || ' ' || (pg_temp.r('e400')->>'outcome'), 'POST 400 dead',
          'create without a match value: POSTed directly; 400 -> dead');
SELECT is(pg_temp.r('e400')->>'error', 'POST /Users: HTTP 400 invalidValue: userName is required',
          '400: the error carries scimType and detail');

SELECT FROM pg_temp.fault('{"mode": "401"}');
SELECT FROM pg_temp.run('e401', 'scim', 'create', '{"userName": "henry"}');
SELECT is(pg_temp.r('e401')->>'outcome' || ' ' || (pg_temp.r('e401')->>'http_status'), 'connector 401',
          '401: the connector is failing, not the operation');

SELECT FROM pg_temp.fault('{"mode": "429", "retry_after": 7}');
SELECT FROM pg_temp.run('e429', 'scim', 'create', '{"userName": "henry"}');
SELECT is(pg_temp.r('e429')->>'outcome' || ' ' || (pg_temp.r('e429')->>'retry_after_ms'), 'retry 7000',
          '429: retry after the server''s Retry-After');

SELECT FROM pg_temp.fault('{"mode": "500", "method": "POST"}');
SELECT FROM pg_temp.run('e500', 'scim', 'create', '{"userName": "henry"}');
SELECT is(pg_temp.calls('e500') || ' ' || (pg_temp.r('e500')->>'outcome'), 'GET 200, POST 500 retry', '500: retry');

SELECT FROM pg_temp.fault('{"mode": "garbage", "method": "GET"}');
SELECT FROM pg_temp.run('egarb', 'scim', 'create', '{"userName": "henry"}');
SELECT is(pg_temp.calls('egarb') || ' ' || (pg_temp.r('egarb')->>'outcome'), 'GET 200 retry',
          'a lookup answered with garbage: retry, nothing posted');
SELECT matches(pg_temp.r('egarb')->>'error', 'not a SCIM ListResponse', 'garbage: the error says what was wrong');

-- the server creates ivy but the response is lost: the next try links, no duplicate
SELECT FROM pg_temp.fault('{"mode": "500", "method": "POST", "after": true}');
SELECT FROM pg_temp.run('ivy1', 'scim', 'create', '{"userName": "ivy", "displayName": "Ivy"}');
SELECT is(pg_temp.calls('ivy1') || ' ' || (pg_temp.r('ivy1')->>'outcome'), 'GET 200, POST 500 retry',
          'POST processed but answered 500: retry');
SELECT FROM pg_temp.run('ivy2', 'scim', 'create', '{"userName": "ivy", "displayName": "Ivy"}');
SELECT is(pg_temp.calls('ivy2') || ' ' || (pg_temp.r('ivy2')->>'outcome'), 'GET 200, PATCH 200 completed',
          'the retried create finds the account and links it');
SELECT is((SELECT count(*) FROM pg_temp.users('ivy')), 1::bigint, 'exactly one ivy on the server');

-- twice: libcurl sends a request again, once, when a kept-alive connection dies under it
SELECT FROM pg_temp.fault('{"mode": "drop", "method": "POST", "count": 2}');
SELECT FROM pg_temp.run('jay1', 'scim', 'create', '{"userName": "jay"}');
SELECT FROM pg_temp.fault('{"mode": "clear"}');
SELECT is(pg_temp.r('jay1')->>'outcome' || ' ' || coalesce(pg_temp.r('jay1')->>'http_status', 'none'), 'retry none',
          'connection dropped on POST: retry');

-- hooks run in try_operation as in the worker: before (transform, skip), after; run_hooks => false skips them
SELECT FROM pg_temp.scim_conn('hooked');
SELECT pg_temp.put('h_before', xprov.add_hook(pg_temp.id('T'), pg_temp.id('hooked'), 'user', 'before', $js$
function hook(ctx) {
  var a = ctx.attributes;
  if (a.contractor) return { skip: true, reason: 'contractors are not provisioned' };
  a.userName = (a.givenName + '.' + a.familyName).toLowerCase();
  return { attributes: a };
}$js$));
SELECT pg_temp.put('h_after', xprov.add_hook(pg_temp.id('T'), pg_temp.id('hooked'), 'user', 'after',
    'function hook(ctx) { return { shadow_attributes: { status: ctx.response.status } }; }'));
SELECT FROM pg_temp.run('kim', 'hooked', 'create', '{"givenName": "Kim", "familyName": "Park"}');
SELECT is(pg_temp.r('kim')->>'outcome', 'completed', 'try_operation with hooks: the create completes');
SELECT is(pg_temp.r('kim')#>>'{attributes_sent,userName}', 'kim.park', 'the before hook''s attributes are what was sent');
SELECT ok(pg_temp.usr('kim.park') IS NOT NULL, 'the target has kim.park');
SELECT is(pg_temp.r('kim')->'shadow_attributes', '{"status": 201}', 'the after hook saw the response status');
SELECT is((SELECT string_agg((h->>'phase') || ' ' || (h->>'outcome'), ', ') FROM jsonb_array_elements(pg_temp.r('kim')->'hooks') h),
          'before attributes, after shadow_attributes', 'the result lists the hooks that ran');
SELECT FROM pg_temp.run('con', 'hooked', 'create', '{"givenName": "Con", "familyName": "Tractor", "contractor": true}');
SELECT is(pg_temp.r('con')->>'outcome' || ' / ' || (pg_temp.r('con')->>'error') || ' / ' || jsonb_array_length(pg_temp.r('con')->'exchanges'),
          'skipped / contractors are not provisioned / 0', 'a skip from the before hook: no request at all');
INSERT INTO _r VALUES ('raw', xprov.try_operation(pg_temp.id('hooked'), 'create', 'user',
                                                  '{"userName": "raw.user"}', run_hooks => false));
SELECT is(pg_temp.r('raw')->>'outcome' || ' ' || jsonb_array_length(pg_temp.r('raw')->'hooks'), 'completed 0',
          'run_hooks => false: no hook runs');
SELECT throws_ok(format($$SELECT xprov.try_operation(%L, 'update', 'user', '{}', 'x', NULL, NULL)$$, pg_temp.id('hooked')),
                 '22004', NULL, 'run_hooks => NULL is refused');

SELECT is(pg_temp.admin('GET', '/_admin/stats')->'duplicate_usernames', '[]', 'no duplicate userName on the server');
SELECT is(pg_temp.admin('GET', '/_admin/stats')->'request_ids_missing', '0', 'every request carried a request id');

SELECT * FROM finish();
ROLLBACK;
