-- Connector URLs: what add_connector accepts (http or https only, no credentials in the URL,
-- libcurl's parser deciding), xprov.allowed_hosts (exact hosts and IP literals, "*.domain",
-- ":port", IPv6, case, whitespace, the empty list, bad lists), xprov._url_allowed's answers,
-- and the check at request time: a connector added while its host was allowed, with the
-- setting narrowed afterwards, gets a dead outcome that names the setting, and the target
-- sees no request.
--
-- Servers: psql variables scim_url and rest_url (defaults as in run-tests.sh); the request
-- counts come from the servers' /_admin/stats with curl, run by COPY FROM PROGRAM (the suite
-- runs as a superuser, which SET xprov.allowed_hosts needs too).
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS xprov;

\if :{?scim_url}
\else
\set scim_url http://127.0.0.1:18301/scim/v2
\endif
\if :{?rest_url}
\else
\set rest_url http://127.0.0.1:18302/rest
\endif

BEGIN;
SELECT plan(65);
\ir common.psql

SELECT set_config('xtest.scim_url', :'scim_url', true) \g /dev/null
SELECT set_config('xtest.rest_url', :'rest_url', true) \g /dev/null
SET xprov.allowed_hosts = '';

SELECT FROM pg_temp.tenant('T');

-- add a connector of tenant T; registered under p_name
CREATE FUNCTION pg_temp.add(p_name text, p_kind text, p_url text) RETURNS uuid
LANGUAGE sql AS $$
    SELECT pg_temp.put(p_name, xprov.add_connector(pg_temp.id('T'), p_name || '-' || left(md5(random()::text), 8),
                                                   p_kind, p_url))
$$;

-- the requests a target has logged so far (p_url: its base URL)
CREATE TEMP TABLE _admin_out (line text);
CREATE FUNCTION pg_temp.requests(p_url text) RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    answer text;
BEGIN
    TRUNCATE _admin_out;
    EXECUTE format('COPY _admin_out FROM PROGRAM %L WITH (FORMAT csv, QUOTE %L, DELIMITER %L)',
        format('curl -sS --max-time 10 %s',
               regexp_replace(p_url, '^(https?://[^/]+).*$', '\1') || '/_admin/stats'),
        E'\x01', E'\x02');
    SELECT string_agg(line, E'\n') INTO answer FROM _admin_out;
    RETURN (answer::jsonb ->> 'requests_total')::int;
END $$;

-- ---------------------------------------------------------------- add_connector: URL rules

SELECT throws_ok($$SELECT pg_temp.add('ftp', 'rest', 'ftp://files.example.test/')$$,
                 '22023', 'connector kind rest needs an http or https base_url', 'ftp -> 22023');
SELECT throws_ok($$SELECT pg_temp.add('file', 'scim2', 'file:///etc/passwd')$$,
                 '22023', NULL, 'file -> 22023');
SELECT throws_ok($$SELECT pg_temp.add('gopher', 'scim2', 'gopher://scim.example.com/')$$,
                 '22023', NULL, 'gopher -> 22023');
SELECT throws_ok($$SELECT pg_temp.add('js', 'scim2', 'javascript:alert(1)')$$,
                 '22023', NULL, 'javascript: -> 22023');
SELECT throws_ok($$SELECT pg_temp.add('garbage', 'scim2', 'not a url')$$,
                 '22023', NULL, 'garbage -> 22023');
SELECT throws_ok($$SELECT pg_temp.add('nohost', 'rest', 'http://')$$,
                 '22023', NULL, 'no host -> 22023');
SELECT throws_ok($$SELECT pg_temp.add('noscheme', 'rest', 'scim.example.com/scim/v2')$$,
                 '22023', NULL, 'no scheme (libcurl would guess http) -> 22023');
SELECT throws_ok($$SELECT pg_temp.add('creds', 'scim2', 'https://admin:s3cret@scim.example.com/scim/v2')$$,
                 '22023', 'connector base_url must not contain credentials', 'user:password@ -> 22023');
SELECT throws_ok($$SELECT pg_temp.add('user', 'rest', 'https://admin@scim.example.com/')$$,
                 '22023', 'connector base_url must not contain credentials', 'user@ alone -> 22023');
SELECT unalike(pg_temp.outcome($$SELECT pg_temp.add('creds2', 'scim2', 'https://admin:s3cret@scim.example.com/')$$),
               '%s3cret%', 'the credentials error does not repeat the password');
SELECT matches(pg_temp.outcome($$SELECT pg_temp.add('ftp2', 'rest', 'ftp://files.example.test/')$$),
               'DETAIL: base_url was ''ftp://files.example.test/'': scheme "ftp" is not http or https',
               'the scheme error says which scheme');
SELECT lives_ok($$SELECT pg_temp.add('upper', 'scim2', 'HTTP://SCIM.EXAMPLE.COM/scim/v2')$$,
                'HTTP:// in upper case is fine');
SELECT lives_ok($$SELECT pg_temp.add('https', 'rest', 'https://rest.example.com:8443/rest')$$,
                'https with a port is fine');
SELECT lives_ok($$SELECT pg_temp.add('v6', 'rest', 'http://[::1]:18302/rest')$$,
                'an IPv6 literal is fine');
SELECT lives_ok($$SELECT pg_temp.add('ext', 'external', 'ftp://files.example.test/')$$,
                'external connectors are not checked: xprov never connects to them');
SELECT is((SELECT base_url FROM xprov.connectors WHERE id = pg_temp.id('upper')),
          'HTTP://SCIM.EXAMPLE.COM/scim/v2', 'the base_url is stored as given');

-- ---------------------------------------------------------------- _url_allowed

SELECT is(xprov._url_allowed('http://anything.example.net/'), NULL, 'empty list: every host is allowed');
SELECT is(xprov._url_allowed('ftp://a.example.com/'), 'scheme "ftp" is not http or https', '_url_allowed: scheme');
SELECT is(xprov._url_allowed('http://u:p@a.example.com/'),
          'the URL carries credentials (user:password@); they belong in the connector''s auth',
          '_url_allowed: credentials');
SELECT matches(xprov._url_allowed('not a url'), '^not a valid URL: ', '_url_allowed: garbage');
SELECT is(xprov._url_allowed(NULL), NULL, '_url_allowed is strict');

SET xprov.allowed_hosts = '   ';
SELECT is(xprov._url_allowed('http://anything.example.net/'), NULL, 'a blank list allows every host');

SET xprov.allowed_hosts = '*.example.com';
SELECT is(xprov._url_allowed('https://a.example.com/scim'), NULL, '*.example.com allows a.example.com');
SELECT is(xprov._url_allowed('https://a.b.example.com/scim'), NULL, '*.example.com allows a.b.example.com');
SELECT is(xprov._url_allowed('https://A.Example.COM/'), NULL, 'host names compare case-insensitively');
SELECT is(xprov._url_allowed('https://a.example.com./'), NULL, 'a trailing dot is the same host');
SELECT is(xprov._url_allowed('https://a.example.com:9443/'), NULL, 'no port in the pattern: any port');
SELECT is(xprov._url_allowed('https://example.com/'), 'host "example.com" is not in xprov.allowed_hosts',
          '*.example.com does not allow example.com itself');
SELECT is(xprov._url_allowed('https://badexample.com/'), 'host "badexample.com" is not in xprov.allowed_hosts',
          '*.example.com does not allow badexample.com');
SELECT is(xprov._url_allowed('https://a.example.com.evil.test/'),
          'host "a.example.com.evil.test" is not in xprov.allowed_hosts', 'nor a.example.com.evil.test');
SELECT is(xprov._url_allowed('https://%65vil.test/'), 'host "evil.test" is not in xprov.allowed_hosts',
          'a percent-encoded host is judged decoded');

SET xprov.allowed_hosts = '  127.0.0.1:8443 ,Scim.Example.com,	[::1]  ';
SELECT is(xprov._url_allowed('https://127.0.0.1:8443/'), NULL, 'ip:port allows that port (whitespace and case ignored)');
SELECT is(xprov._url_allowed('http://127.0.0.1:8080/'), 'port 8080 of host "127.0.0.1" is not in xprov.allowed_hosts',
          'ip:port refuses another port');
SELECT is(xprov._url_allowed('https://127.0.0.1/'), 'port 443 of host "127.0.0.1" is not in xprov.allowed_hosts',
          'a URL without a port has its scheme''s default port');
SELECT is(xprov._url_allowed('https://127.1:8443/'), NULL, 'IPv4 shorthand is normalised as libcurl connects');
SELECT is(xprov._url_allowed('https://scim.example.com/scim/v2'), NULL, 'an exact host, pattern in mixed case');
SELECT is(xprov._url_allowed('https://a.scim.example.com/'), 'host "a.scim.example.com" is not in xprov.allowed_hosts',
          'an exact host does not allow its subdomains');
SELECT is(xprov._url_allowed('http://[::1]:18301/'), NULL, '[::1] allows the IPv6 loopback, any port');
SELECT is(xprov._url_allowed('http://[0:0::1]/'), NULL, 'IPv6 in another spelling is the same address');
SELECT is(xprov._url_allowed('http://[::2]/'), 'host "[::2]" is not in xprov.allowed_hosts', 'another IPv6 address is refused');
SELECT is(xprov._url_allowed('ftp://127.0.0.1:8443/'), 'scheme "ftp" is not http or https',
          'the scheme is refused even on an allowed host');

SET xprov.allowed_hosts = 'scim.example.com:443';
SELECT is(xprov._url_allowed('https://scim.example.com/'), NULL, 'host:443 allows https without a port');
SELECT is(xprov._url_allowed('http://scim.example.com/'), 'port 80 of host "scim.example.com" is not in xprov.allowed_hosts',
          'host:443 refuses plain http');

-- the setting itself
SELECT throws_ok($$SET xprov.allowed_hosts = 'a.example.com,,b.example.com'$$, '22023', NULL, 'an empty entry is refused');
SELECT throws_ok($$SET xprov.allowed_hosts = '*'$$, '22023', NULL, 'a bare * is refused');
SELECT throws_ok($$SET xprov.allowed_hosts = '*.10.0.0'$$, '22023', NULL, 'a wildcard over an IP address is refused');
SELECT throws_ok($$SET xprov.allowed_hosts = 'scim.example.com/scim'$$, '22023', NULL, 'a path is refused');
SELECT throws_ok($$SET xprov.allowed_hosts = 'user@scim.example.com'$$, '22023', NULL, 'credentials are refused');
SELECT throws_ok($$SET xprov.allowed_hosts = 'scim.example.com:0'$$, '22023', NULL, 'port 0 is refused');
SELECT is(current_setting('xprov.allowed_hosts'), 'scim.example.com:443', 'a refused value leaves the setting as it was');

-- ---------------------------------------------------------------- add_connector: allowed_hosts

SET xprov.allowed_hosts = '*.example.com';
SELECT throws_ok($$SELECT pg_temp.add('evil', 'scim2', 'https://evil.test/scim/v2')$$,
                 '42501', 'connector base_url targets a host that is not allowed', 'a host not allowed -> 42501');
SELECT matches(pg_temp.outcome($$SELECT pg_temp.add('evil2', 'scim2', 'https://evil.test/scim/v2')$$),
               'DETAIL: host "evil.test" is not in xprov.allowed_hosts\.$', 'the detail names the host and the setting');
SELECT throws_ok($$SELECT pg_temp.add('bare', 'rest', 'https://example.com/rest')$$,
                 '42501', NULL, 'the bare domain of a wildcard -> 42501');
SELECT throws_ok($$SELECT pg_temp.add('ftp3', 'rest', 'ftp://a.example.com/')$$,
                 '22023', NULL, 'a bad scheme is 22023 whatever the host');
SELECT lives_ok($$SELECT pg_temp.add('sub', 'scim2', 'https://scim.eu.example.com/scim/v2')$$,
                'a subdomain of the wildcard is accepted');

-- ---------------------------------------------------------------- at request time

-- added while its host is allowed ...
SET xprov.allowed_hosts = '127.0.0.1';
SELECT lives_ok(format('SELECT pg_temp.add(%L, %L, %L)', 'scim', 'scim2', :'scim_url'),
                'a SCIM connector on an allowed host');
SELECT lives_ok(format('SELECT pg_temp.add(%L, %L, %L)', 'rest', 'rest', :'rest_url'),
                'a REST connector on an allowed host');

-- ... then the setting narrowed: nothing is sent, the outcome is dead and says why
SET xprov.allowed_hosts = '*.example.com';
CREATE TEMP TABLE _n AS SELECT pg_temp.requests(:'scim_url') AS scim, pg_temp.requests(:'rest_url') AS rest;
CREATE TEMP TABLE _r AS
    SELECT 'scim'::text AS name, xprov.try_operation(pg_temp.id('scim'), 'create', 'user',
                                                     jsonb_build_object('userName', 'hosts-' || gen_random_uuid())) AS res
    UNION ALL
    SELECT 'rest', xprov.try_operation(pg_temp.id('rest'), 'create', 'user', '{"userName": "hosts-rest"}');

SELECT is((SELECT res->>'outcome' FROM _r WHERE name = 'scim'), 'dead', 'scim2: a host narrowed away -> dead');
SELECT is((SELECT res->>'error' FROM _r WHERE name = 'scim'),
          'GET /Users: host "127.0.0.1" is not in xprov.allowed_hosts',
          'scim2: the error names the request (the lookup before a create), the host and the setting');
SELECT is((SELECT res->>'outcome' FROM _r WHERE name = 'rest'), 'dead', 'rest: a host narrowed away -> dead');
SELECT is((SELECT res->>'error' FROM _r WHERE name = 'rest'),
          'POST /rest/execute: host "127.0.0.1" is not in xprov.allowed_hosts', 'rest: the error names the host and the setting');
SELECT is((SELECT (res->'http_status') FROM _r WHERE name = 'rest'), 'null'::jsonb, 'no HTTP status: nothing was answered');
SELECT is((SELECT ROW(pg_temp.requests(:'scim_url') - scim, pg_temp.requests(:'rest_url') - rest)::text FROM _n),
          '(0,0)', 'the targets saw no request');

-- a port restriction at request time, then the host allowed again
SET xprov.allowed_hosts = '127.0.0.1:1';
SELECT matches(xprov.try_operation(pg_temp.id('rest'), 'create', 'user', '{"userName": "hosts-rest"}')->>'error',
               'port \d+ of host "127\.0\.0\.1" is not in xprov\.allowed_hosts$', 'the port is checked at request time too');
SET xprov.allowed_hosts = '127.0.0.1';
SELECT is(xprov.try_operation(pg_temp.id('scim'), 'create', 'user',
                              jsonb_build_object('userName', 'hosts-' || gen_random_uuid()))->>'outcome',
          'completed', 'allowed again: the same connector works (the setting is read per request)');

SELECT * FROM finish();
ROLLBACK;
