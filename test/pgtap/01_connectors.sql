-- xprov.add_connector, xprov.connectors, xprov.set_connector_enabled
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS xprov;

BEGIN;
SELECT plan(46);
\ir common.psql

SELECT FROM pg_temp.tenant('t1');
SELECT FROM pg_temp.tenant('t2');

-- ---------------------------------------------------------------- creation
SELECT isnt(pg_temp.put('ext', xprov.add_connector(pg_temp.id('t1'), 'ext', 'external', NULL)), NULL,
            'add_connector(external, no base_url) returns an id');
SELECT isnt(pg_temp.put('noop', xprov.add_connector(pg_temp.id('t1'), 'noop', 'noop', NULL, '{}')), NULL,
            'add_connector(noop, no base_url) returns an id');
SELECT isnt(pg_temp.put('scim', xprov.add_connector(pg_temp.id('t1'), 'scim', 'scim2', 'https://scim.example.test/v2',
                                                    '{"timeout_ms": 5000}')), NULL,
            'add_connector(scim2, https base_url) returns an id');
SELECT isnt(pg_temp.put('rest', xprov.add_connector(tenant_id => pg_temp.id('t1'), name => 'rest', kind => 'rest',
                                                    base_url => 'http://127.0.0.1:8080/api', config => '{}')), NULL,
            'add_connector(rest, http base_url) with named parameters returns an id');

SELECT results_eq(
    $$SELECT tenant_id, name, kind, base_url, enabled FROM xprov.connectors
       WHERE tenant_id = pg_temp.id('t1') ORDER BY name$$,
    $$VALUES (pg_temp.id('t1'), 'ext'::text, 'external'::text, NULL::text, true),
             (pg_temp.id('t1'), 'noop', 'noop', NULL, true),
             (pg_temp.id('t1'), 'rest', 'rest', 'http://127.0.0.1:8080/api', true),
             (pg_temp.id('t1'), 'scim', 'scim2', 'https://scim.example.test/v2', true)$$,
    'connectors view lists the tenant''s connectors with kind, base_url and enabled = true');

SELECT is((SELECT id FROM xprov.connectors WHERE tenant_id = pg_temp.id('t1') AND name = 'scim'),
          pg_temp.id('scim'), 'connectors.id is the id add_connector returned');
SELECT is((SELECT config FROM xprov.connectors WHERE id = pg_temp.id('ext')), '{}'::jsonb,
          'config defaults to {}');
SELECT is((SELECT config->'timeout_ms' FROM xprov.connectors WHERE id = pg_temp.id('scim')), '5000'::jsonb,
          'non-secret config is visible in the view');
SELECT ok((SELECT created_at BETWEEN now() AND clock_timestamp() FROM xprov.connectors WHERE id = pg_temp.id('ext')),
          'created_at is set to the creation time');
SELECT is((SELECT count(DISTINCT id) FROM xprov.connectors WHERE tenant_id = pg_temp.id('t1')), 4::bigint,
          'every connector has its own id');

SELECT lives_ok($$SELECT xprov.add_connector(pg_temp.id('t2'), 'ext', 'external', NULL)$$,
                'the same name is allowed in another tenant');

-- ---------------------------------------------------------------- bad input
SELECT throws_ok($$SELECT xprov.add_connector(pg_temp.id('t1'), 'ext', 'external', NULL)$$,
                 '23505', NULL, 'duplicate name within a tenant -> 23505');
SELECT throws_ok($$SELECT xprov.add_connector(pg_temp.id('t1'), 'bad-kind', 'ldap', NULL)$$,
                 '22023', NULL, 'unknown kind -> 22023');
SELECT throws_ok($$SELECT xprov.add_connector(pg_temp.id('t1'), 'bad-kind2', '', NULL)$$,
                 '22023', NULL, 'empty kind -> 22023');
SELECT throws_ok($$SELECT xprov.add_connector(NULL, 'n', 'external', NULL)$$,
                 '22004', NULL, 'NULL tenant_id -> 22004');
SELECT throws_ok($$SELECT xprov.add_connector(pg_temp.id('t1'), NULL, 'external', NULL)$$,
                 '22004', NULL, 'NULL name -> 22004');
SELECT throws_ok($$SELECT xprov.add_connector(pg_temp.id('t1'), 'n', NULL, NULL)$$,
                 '22004', NULL, 'NULL kind -> 22004');
SELECT throws_ok($$SELECT xprov.add_connector(pg_temp.id('t1'), 'scim-nourl', 'scim2', NULL)$$,
                 '22023', NULL, 'scim2 without base_url -> 22023');
SELECT throws_ok($$SELECT xprov.add_connector(pg_temp.id('t1'), 'rest-ftp', 'rest', 'ftp://files.example.test/')$$,
                 '22023', NULL, 'rest with a non-http(s) base_url -> 22023');
SELECT throws_ok($$SELECT xprov.add_connector(pg_temp.id('t1'), 'scim-garbage', 'scim2', 'not a url')$$,
                 '22023', NULL, 'scim2 with a garbage base_url -> 22023');
SELECT throws_ok($$SELECT xprov.add_connector(pg_temp.id('t1'), 'cfg-array', 'external', NULL, '[]')$$,
                 '22023', NULL, 'config that is a JSON array -> 22023');
SELECT throws_ok($$SELECT xprov.add_connector(pg_temp.id('t1'), 'cfg-string', 'external', NULL, '"x"')$$,
                 '22023', NULL, 'config that is a JSON string -> 22023');
SELECT is((SELECT count(*) FROM xprov.connectors WHERE tenant_id = pg_temp.id('t1')), 4::bigint,
          'rejected add_connector calls created nothing');

-- ---------------------------------------------------------------- secrets
SELECT FROM pg_temp.put('sec1', xprov.add_connector(pg_temp.id('t1'), 'sec-bearer', 'scim2', 'https://a.example.test/',
    '{"auth": {"type": "bearer", "token": "TOPSECRET-bearer-1"}}'));
SELECT FROM pg_temp.put('sec2', xprov.add_connector(pg_temp.id('t1'), 'sec-basic', 'rest', 'https://b.example.test/',
    '{"auth": {"type": "basic", "username": "svc", "password": "TOPSECRET-basic-2"}}'));
SELECT unalike((SELECT config::text FROM xprov.connectors WHERE id = pg_temp.id('sec1')), '%TOPSECRET%',
               'connectors view masks a bearer token');
SELECT unalike((SELECT config::text FROM xprov.connectors WHERE id = pg_temp.id('sec2')), '%TOPSECRET%',
               'connectors view masks a basic-auth password');
SELECT is((SELECT auth_type FROM xprov.connectors WHERE id = pg_temp.id('sec2')), 'basic',
          'connectors view shows the kind of credentials only');
SELECT is((SELECT config FROM xprov.connector WHERE id = pg_temp.id('sec1')), '{}'::jsonb,
          'the credentials are not kept in the connector''s config');
SELECT is((SELECT secret ->> 'token' FROM xprov.connector_secret WHERE connector_id = pg_temp.id('sec1')), 'TOPSECRET-bearer-1',
          'they are kept in xprov.connector_secret');
SELECT lives_ok($$SELECT xprov.set_connector_secret(pg_temp.id('sec1'), '{"type": "bearer", "token": "TOPSECRET-new"}')$$,
                'set_connector_secret replaces them');
SELECT is((SELECT secret ->> 'token' FROM xprov.connector_secret WHERE connector_id = pg_temp.id('sec1')), 'TOPSECRET-new',
          '... with the new token');
SELECT is((xprov._connector_config(pg_temp.id('sec1'), '{"timeout_ms": 5}') #>> '{auth,token}'), 'TOPSECRET-new',
          'loaders get the credentials back as config.auth');
SELECT throws_ok($$SELECT xprov.set_connector_secret(pg_temp.id('sec1'), '{"type": "oauth"}')$$, '22023', NULL,
                 'a secret of an unknown type is refused');
SELECT throws_ok($$SELECT xprov.set_connector_secret(pg_temp.id('sec1'), '{"type": "basic", "username": "u"}')$$, '22023', NULL,
                 'a basic secret without a password is refused');
SELECT throws_ok($$SELECT xprov.set_connector_secret(pg_temp.id('sec1'), '"TOPSECRET"')$$, '22023', NULL,
                 'a secret that is not an object is refused');
SELECT throws_ok($$SELECT xprov.set_connector_secret(gen_random_uuid(), '{"type": "bearer", "token": "x"}')$$, '42704', NULL,
                 'set_connector_secret of an unknown connector -> 42704');
SELECT throws_ok($$SELECT xprov.set_connector_secret(NULL, '{"type": "bearer", "token": "x"}')$$, '22004', NULL,
                 'a NULL connector -> 22004');
SELECT unalike(pg_temp.err($$SELECT xprov.set_connector_secret(pg_temp.id('sec1'), '{"type": "basic", "username": "TOPSECRET-u"}')$$),
               '%TOPSECRET%', 'an error about a secret never shows its values');
SELECT lives_ok($$SELECT xprov.set_connector_secret(pg_temp.id('sec1'), NULL)$$, 'set_connector_secret(NULL) removes them');
SELECT is((SELECT auth_type FROM xprov.connectors WHERE id = pg_temp.id('sec1')), NULL, '... and the view shows none');

-- ---------------------------------------------------------------- enable / disable
SELECT lives_ok($$SELECT xprov.set_connector_enabled(pg_temp.id('ext'), false)$$, 'set_connector_enabled(false)');
SELECT is((SELECT enabled FROM xprov.connectors WHERE id = pg_temp.id('ext')), false, 'connector shows disabled');
SELECT lives_ok($$SELECT xprov.set_connector_enabled(connector_id => pg_temp.id('ext'), enabled => true)$$,
                'set_connector_enabled(true) with named parameters');
SELECT is((SELECT enabled FROM xprov.connectors WHERE id = pg_temp.id('ext')), true, 'connector shows enabled again');
SELECT throws_ok($$SELECT xprov.set_connector_enabled(gen_random_uuid(), false)$$,
                 '42704', NULL, 'set_connector_enabled on an unknown id -> 42704');

SELECT throws_ok($$DELETE FROM xprov.connector WHERE id = pg_temp.id('ext')$$, '55006', 'connectors cannot be deleted',
                 'connectors are never deleted (queued work refers to them): 55006');
SELECT throws_ok($$TRUNCATE xprov.connector CASCADE$$, '55006', 'connectors cannot be deleted',
                 'nor truncated');
SELECT * FROM finish();
ROLLBACK;
