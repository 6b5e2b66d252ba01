-- xprov.try_operation() against the reference REST server (test/targets/rest_server.py,
-- protocol in test/targets/REST_PROTOCOL.md), which test/run-tests.sh starts before pg_prove:
-- the life cycle of an account, every fault mode of the server and how it is classified,
-- transport failures, connector configs rejected at try time, refused connector kinds,
-- request ids, and that no secret reaches an error text.
--
-- The server's base URL is the psql variable rest_url (pg_prove -S rest_url=...), by
-- default http://127.0.0.1:18302/rest.  Faults are set through the server's /_admin API
-- with curl, run by COPY FROM PROGRAM (the suite runs as a superuser).
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS xprov;

\if :{?rest_url}
\else
\set rest_url http://127.0.0.1:18302/rest
\endif

BEGIN;
SELECT plan(66);
\ir common.psql

SELECT set_config('xtest.rest_url', :'rest_url', true) \g /dev/null
SELECT set_config('xtest.rest_admin', regexp_replace(:'rest_url', '^(https?://[^/]+).*$', '\1'), true) \g /dev/null

-- ---------------------------------------------------------------- helpers

CREATE TEMP TABLE _admin_out (line text);

CREATE FUNCTION pg_temp.shell_quote(p text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT '''' || replace(p, '''', '''\''''') || ''''
$$;

-- call the server's test API; returns its JSON answer
CREATE FUNCTION pg_temp.admin(p_method text, p_path text, p_body jsonb DEFAULT NULL)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    answer text;
BEGIN
    TRUNCATE _admin_out;
    EXECUTE format('COPY _admin_out FROM PROGRAM %L WITH (FORMAT csv, QUOTE %L, DELIMITER %L)',
        format('curl -sS --max-time 10 -X %s -H %s %s %s', p_method,
               pg_temp.shell_quote('Content-Type: application/json'),
               CASE WHEN p_body IS NOT NULL THEN '--data-binary ' || pg_temp.shell_quote(p_body::text) ELSE '' END,
               pg_temp.shell_quote(current_setting('xtest.rest_admin') || p_path)),
        E'\x01', E'\x02');
    SELECT string_agg(line, E'\n') INTO answer FROM _admin_out;
    RETURN answer::jsonb;
END $$;

CREATE FUNCTION pg_temp.fault(p_spec jsonb) RETURNS void LANGUAGE sql AS $$
    SELECT FROM pg_temp.admin('POST', '/_admin/fault', p_spec)
$$;

-- a rest connector of tenant T registered as p_name
CREATE FUNCTION pg_temp.rest_conn(p_name text, p_config jsonb DEFAULT '{}', p_url text DEFAULT NULL)
RETURNS uuid LANGUAGE sql AS $$
    SELECT pg_temp.put(p_name, xprov.add_connector(pg_temp.id('T'), p_name || '-' || left(md5(random()::text), 8),
                                                   'rest', coalesce(p_url, current_setting('xtest.rest_url')), p_config))
$$;

-- try an operation, remember its result as p_name
CREATE TEMP TABLE _r (name text PRIMARY KEY, res jsonb NOT NULL);
CREATE FUNCTION pg_temp.run(p_name text, p_conn text, p_type text, p_attrs jsonb DEFAULT '{}',
                            p_uid text DEFAULT NULL, p_identity uuid DEFAULT NULL)
RETURNS jsonb LANGUAGE sql AS $$
    INSERT INTO _r VALUES (p_name, xprov.try_operation(pg_temp.id(p_conn), p_type, 'user', p_attrs, p_uid, p_identity))
    RETURNING res
$$;
-- a create that meets the server fault p_fault
CREATE FUNCTION pg_temp.run_faulted(p_name text, p_fault jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_temp.fault(p_fault);
    RETURN pg_temp.run(p_name, 'rest', 'create', jsonb_build_object('userName', 'fault-' || p_name));
END $$;
CREATE FUNCTION pg_temp.r(p_name text) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT res FROM _r WHERE name = p_name
$$;

-- error messages of statements expected to fail, for the secrets check at the end
CREATE TEMP TABLE _errors (name text PRIMARY KEY, message text);
CREATE FUNCTION pg_temp.fails(p_name text, p_sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    msg text;
BEGIN
    msg := pg_temp.err(p_sql);
    INSERT INTO _errors VALUES (p_name, msg);
    RETURN msg;
END $$;

-- try a create on connector p_conn, expecting an error
CREATE FUNCTION pg_temp.try_fails(p_conn text) RETURNS text LANGUAGE sql AS $$
    SELECT pg_temp.fails(p_conn, format('SELECT xprov.try_operation(%L, ''create'')', pg_temp.id(p_conn)))
$$;

-- the error of trying a connector with config p_config.  Its auth is stored as a row written
-- before 0.2.0 could be (with triggers off: since then they refuse such credentials up front,
-- see 37_injection_search_path), so that the loader's own checks are what answers.
CREATE FUNCTION pg_temp.config_error(p_name text, p_config jsonb) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    conn uuid := pg_temp.rest_conn(p_name, p_config - 'auth');
BEGIN
    IF p_config ? 'auth' THEN
        SET LOCAL session_replication_role = replica;
        INSERT INTO xprov.connector_secret (connector_id, tenant_id, secret)
        SELECT c.id, c.tenant_id, p_config -> 'auth' FROM xprov.connector c WHERE c.id = conn;
        SET LOCAL session_replication_role = origin;
    END IF;
    RETURN pg_temp.try_fails(p_name);
END $$;

SELECT FROM pg_temp.tenant('T');
SELECT FROM pg_temp.put('identity', gen_random_uuid());
SELECT FROM pg_temp.rest_conn('rest', '{"auth": {"type": "bearer", "token": "TOPSECRET-bearer-1"}}');

SELECT is(pg_temp.admin('POST', '/_admin/reset') ->> 'ok', 'true', 'the REST server is up and reset');

-- ---------------------------------------------------------------- an account's life

SELECT FROM pg_temp.run('create', 'rest', 'create',
    '{"userName": "ada", "employeeNumber": 12345678901234567890, "displayName": "Ada Lovelace ü"}',
    NULL, pg_temp.id('identity'));
SELECT is(pg_temp.r('create') ->> 'outcome', 'completed', 'create -> completed');
SELECT is((pg_temp.r('create') ->> 'http_status')::int, 201, 'create -> HTTP 201');
SELECT ok(pg_temp.r('create') ->> 'target_uid' ~ '^[0-9a-f-]{36}$', 'create returns the new account''s uid');
SELECT is(pg_temp.r('create') #>> '{result,uid}', pg_temp.r('create') ->> 'target_uid',
          'result is the server''s answer, carrying the same uid');
SELECT is(pg_temp.r('create') #> '{result,attributes,employeeNumber}', '12345678901234567890'::jsonb,
          'a large integer attribute reaches the target unrounded');
SELECT is(pg_temp.r('create') #>> '{result,attributes,displayName}', 'Ada Lovelace ü',
          'non-ASCII attributes round-trip');
SELECT is(pg_temp.r('create') -> 'error', 'null'::jsonb, 'a completed operation has no error');
SELECT is(jsonb_array_length(pg_temp.r('create') -> 'exchanges'), 1, 'a create is one exchange');
SELECT is((pg_temp.r('create') -> 'exchanges' -> 0) - 'ms', '{"method": "POST", "path": "/rest/execute", "status": 201}'::jsonb,
          '... POST /rest/execute -> 201');
SELECT ok((pg_temp.r('create') #>> '{exchanges,0,ms}')::float8 >= 0, 'the exchange reports its duration');

SELECT FROM pg_temp.run('create again', 'rest', 'create', '{"userName": "ada"}', NULL, pg_temp.id('identity'));
SELECT is(pg_temp.r('create again') ->> 'outcome', 'completed', 'a repeated create for the same identity completes');
SELECT is((pg_temp.r('create again') ->> 'http_status')::int, 200, '... with 200: the server correlated it');
SELECT is(pg_temp.r('create again') ->> 'target_uid', pg_temp.r('create') ->> 'target_uid',
          '... to the same account');
SELECT is((pg_temp.admin('GET', '/_admin/stats') ->> 'accounts')::int, 1, 'the target holds one account');

SELECT FROM pg_temp.run('update', 'rest', 'update', '{"title": "Countess"}', pg_temp.r('create') ->> 'target_uid');
SELECT is(pg_temp.r('update') ->> 'outcome', 'completed', 'update by uid -> completed');
SELECT is(pg_temp.r('update') #>> '{result,attributes,title}', 'Countess', 'update sets the attribute');
SELECT is(pg_temp.r('update') #>> '{result,attributes,userName}', 'ada', 'update keeps the others');

SELECT FROM pg_temp.run('disable', 'rest', 'disable', '{}', pg_temp.r('create') ->> 'target_uid');
SELECT is(pg_temp.r('disable') ->> 'outcome', 'completed', 'disable -> completed');
SELECT is(pg_temp.r('disable') #> '{result,enabled}', 'false'::jsonb, 'disable disables the account');

SELECT FROM pg_temp.run('enable', 'rest', 'enable', '{}', NULL, pg_temp.id('identity'));
SELECT is(pg_temp.r('enable') ->> 'outcome', 'completed', 'enable by identity_id alone -> completed');
SELECT is(pg_temp.r('enable') #> '{result,enabled}', 'true'::jsonb, 'enable enables the account');
SELECT is(pg_temp.r('enable') ->> 'target_uid', pg_temp.r('create') ->> 'target_uid',
          'the server found the account by identity and named its uid');

SELECT FROM pg_temp.run('delete', 'rest', 'delete', '{}', pg_temp.r('create') ->> 'target_uid');
SELECT is(pg_temp.r('delete') ->> 'outcome', 'completed', 'delete -> completed');
SELECT is(pg_temp.r('delete') ->> 'target_uid', pg_temp.r('create') ->> 'target_uid', 'delete names the uid');

SELECT FROM pg_temp.run('delete again', 'rest', 'delete', '{}', pg_temp.r('create') ->> 'target_uid');
SELECT is(pg_temp.r('delete again') ->> 'outcome', 'completed', 'delete of an account that is gone -> completed');
SELECT is((pg_temp.r('delete again') ->> 'http_status')::int, 404, '... although the server answered 404');

-- ---------------------------------------------------------------- answers that fail

SELECT FROM pg_temp.run('update gone', 'rest', 'update', '{"title": "x"}', pg_temp.r('create') ->> 'target_uid');
SELECT is(pg_temp.r('update gone') ->> 'outcome', 'dead', 'update of an account that is gone -> dead (404)');

SELECT FROM pg_temp.run('no subject', 'rest', 'update', '{"title": "x"}');
SELECT is(pg_temp.r('no subject') ->> 'outcome', 'dead', '400 -> dead');
SELECT is(pg_temp.r('no subject') ->> 'error', 'POST /rest/execute: HTTP 400: update needs uid or identity_id',
          '... with the server''s message');
SELECT is(pg_temp.r('no subject') -> 'retry_after_ms', 'null'::jsonb, '... and no retry delay');

SELECT FROM pg_temp.run_faulted('401', '{"mode": "401"}');
SELECT is(pg_temp.r('401') ->> 'outcome', 'connector', '401 -> connector');
SELECT is((pg_temp.r('401') ->> 'http_status')::int, 401, '... with its status');

SELECT FROM pg_temp.run_faulted('429', '{"mode": "429", "retry_after": 3}');
SELECT is(pg_temp.r('429') ->> 'outcome', 'retry', '429 -> retry');
SELECT is((pg_temp.r('429') ->> 'retry_after_ms')::int, 3000, '... after Retry-After: 3 s');

SELECT FROM pg_temp.run_faulted('503', '{"mode": "503", "retry_after": 2}');
SELECT is(pg_temp.r('503') ->> 'outcome', 'retry', '503 -> retry');
SELECT is((pg_temp.r('503') ->> 'retry_after_ms')::int, 2000, '... after Retry-After: 2 s');

SELECT FROM pg_temp.run_faulted('500', '{"mode": "500"}');
SELECT is(pg_temp.r('500') ->> 'outcome', 'retry', '500 -> retry');
SELECT is(pg_temp.r('500') -> 'retry_after_ms', 'null'::jsonb, '... with backoff (no Retry-After)');
SELECT is(pg_temp.r('500') ->> 'error', 'POST /rest/execute: HTTP 500: injected fault', '... and the server''s message');

-- twice: libcurl resends once on a fresh connection when a kept-alive one
-- closes without an answer
SELECT FROM pg_temp.run_faulted('drop', '{"mode": "drop", "count": 2}');
SELECT FROM pg_temp.fault('{"mode": "clear"}');
SELECT is(pg_temp.r('drop') ->> 'outcome', 'retry', 'connection closed without an answer -> retry');
SELECT is(pg_temp.r('drop') -> 'http_status', 'null'::jsonb, '... with no HTTP status');
SELECT alike(pg_temp.r('drop') ->> 'error', 'POST /rest/execute: %', '... and a transport error');

SELECT FROM pg_temp.run_faulted('garbage', '{"mode": "garbage"}');
SELECT is(pg_temp.r('garbage') ->> 'outcome', 'retry', '200 with a body that is not JSON -> retry');
SELECT is(pg_temp.r('garbage') ->> 'error', 'POST /rest/execute: HTTP 200 with no JSON object in the response',
          '... saying why');

SELECT FROM pg_temp.rest_conn('refused', '{}', 'http://127.0.0.1:1/rest');
SELECT FROM pg_temp.run('refused', 'refused', 'create', '{"userName": "nobody"}');
SELECT is(pg_temp.r('refused') ->> 'outcome', 'connector', 'connection refused -> connector');
SELECT alike(pg_temp.r('refused') ->> 'error', 'POST /rest/execute: %Connection refused%', '... saying so');

SELECT FROM pg_temp.rest_conn('slow', '{"timeout_ms": 300}');
SELECT FROM pg_temp.fault('{"mode": "delay", "delay_ms": 2000}');
SELECT FROM pg_temp.run('timeout', 'slow', 'create', '{"userName": "fslow"}');
SELECT is(pg_temp.r('timeout') ->> 'outcome', 'retry', 'no answer within the connector''s timeout_ms -> retry');
SELECT alike(pg_temp.r('timeout') ->> 'error', 'POST /rest/execute: Timeout was reached%', '... as a timeout');
SELECT cmp_ok((pg_temp.r('timeout') #>> '{exchanges,0,ms}')::float8, '<', 1500::float8,
              '... given up after about timeout_ms');

-- ---------------------------------------------------------------- refused before any request

SELECT alike(pg_temp.config_error('inject', '{"auth": {"type": "header", "header_name": "X-Key",
                                                         "value": "TOPSECRET-v\r\nX-Evil: 1"}}'),
             '22023: connector "inject-%" is misconfigured: auth.value must not contain CR, LF%',
             'a header value with CR/LF (header injection) -> 22023');
SELECT alike(pg_temp.config_error('inject-name', '{"auth": {"type": "header", "header_name": "X-Key: TOPSECRET-n",
                                                              "value": "v"}}'),
             '22023: connector "inject-name-%" is misconfigured: auth.header_name must be an HTTP header name%',
             'a header name with a colon -> 22023');
SELECT alike(pg_temp.config_error('bad-type', '{"auth": {"type": "oauth", "token": "TOPSECRET-o"}}'),
             '22023: connector "bad-type-%" is misconfigured: auth.type must be one of bearer, basic, header',
             'an unknown auth type -> 22023');
SELECT alike(pg_temp.config_error('bad-token', '{"auth": {"type": "bearer", "token": ["TOPSECRET-t"]}}'),
             '22023: connector "bad-token-%" is misconfigured: auth.token must be a string',
             'a token that is not a string -> 22023');
SELECT alike(pg_temp.config_error('bad-timeout', '{"timeout_ms": 0}'),
             '22023: connector "bad-timeout-%" is misconfigured: timeout_ms must be an integer between 1 and %',
             'a non-positive timeout -> 22023');
SELECT FROM pg_temp.rest_conn('bad-url');
UPDATE xprov.connector SET base_url = 'ftp://files.example.test/' WHERE id = pg_temp.id('bad-url');
SELECT alike(pg_temp.try_fails('bad-url'),
             '22023: connector "bad-url-%" is misconfigured: base_url must begin with http:// or https://',
             'a base_url that is not http(s) -> 22023');

SELECT alike(pg_temp.fails('unknown', 'SELECT xprov.try_operation(gen_random_uuid(), ''create'')'),
            '42704: connector % does not exist', 'an unknown connector -> 42704');
SELECT FROM pg_temp.conn('noop', 'T', 'noop');
SELECT FROM pg_temp.conn('external', 'T', 'external');
SELECT alike(pg_temp.try_fails('noop'),
            '0A000: connector "noop-%" is of kind noop%', 'a noop connector is refused -> 0A000');
SELECT alike(pg_temp.try_fails('external'),
            '0A000: connector "external-%" is of kind external%', 'an external connector is refused -> 0A000');
SELECT is(pg_temp.fails('bad op', format('SELECT xprov.try_operation(%L, ''upsert'')', pg_temp.id('rest'))),
          '22023: unknown operation type "upsert"', 'an unknown operation type -> 22023');
SELECT is(pg_temp.fails('attrs array', format('SELECT xprov.try_operation(%L, ''create'', ''user'', ''[]'')', pg_temp.id('rest'))),
          '22023: attributes must be a JSON object', 'attributes that are not an object -> 22023');
SELECT is(pg_temp.fails('null conn', 'SELECT xprov.try_operation(NULL, ''create'')'),
          '22004: connector_id must not be null', 'a NULL connector -> 22004');

-- ---------------------------------------------------------------- request ids and secrets

SELECT is(pg_temp.admin('GET', '/_admin/stats') ->> 'request_ids_missing', '0', 'every request carried X-Request-Id');
SELECT is(pg_temp.admin('GET', '/_admin/stats') ->> 'request_id_mismatches', '0',
          '... equal to the operation id in its body');
SELECT is((SELECT count(*) FROM jsonb_array_elements(pg_temp.admin('GET', '/_admin/requests'))
                            AS e WHERE e ->> 'request_id' !~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'),
          0::bigint, '... and it is a uuid');
SELECT is((SELECT count(*) FROM (SELECT res::text AS t FROM _r UNION ALL SELECT message FROM _errors) s
            WHERE t LIKE '%TOPSECRET%'),
          0::bigint, 'no result or error text contains a secret');

SELECT * FROM finish();
ROLLBACK;
