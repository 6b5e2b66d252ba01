-- Two transactions enqueue the first operations of the same new subject at once
-- (dblink): the second waits for the first, then joins the subject's lane
-- behind it, for enqueue and for enqueue_batch, with no error and no second lane.
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS xprov;
CREATE EXTENSION IF NOT EXISTS dblink;

BEGIN;
SELECT plan(9);
\ir common.psql

SELECT FROM pg_temp.tenant('T');
SELECT FROM dblink_connect('a', pg_temp.connstr());
SELECT FROM dblink_connect('b', pg_temp.connstr());
SELECT FROM pg_temp.put('C', (SELECT x::uuid FROM dblink('a',
    format($$SELECT xprov.add_connector(%L, 'race-' || left(md5(random()::text), 8), 'external', NULL)::text$$,
           pg_temp.id('T'))) AS t(x text)));

CREATE FUNCTION pg_temp.enq_sql(p_uid text, p_type text) RETURNS text LANGUAGE sql AS $$
    SELECT format($f$SELECT xprov.enqueue(%L, %L, NULL, %L, 'user', '{}', %L)::text$f$,
                  pg_temp.id('T'), pg_temp.id('C'), p_type, p_uid)
$$;
CREATE FUNCTION pg_temp.batch_sql(p_uid text, p_type text) RETURNS text LANGUAGE sql AS $$
    SELECT format($f$SELECT string_agg(x::text, ',') FROM xprov.enqueue_batch(%L) AS x$f$,
                  jsonb_build_array(jsonb_build_object('tenant_id', pg_temp.id('T'), 'connector_id', pg_temp.id('C'),
                      'target_uid', p_uid, 'operation_type', p_type, 'object_class', 'user'),
                  jsonb_build_object('tenant_id', pg_temp.id('T'), 'connector_id', pg_temp.id('C'),
                      'target_uid', p_uid || '-other', 'operation_type', p_type, 'object_class', 'user')))
$$;

-- a creates the subject p_uid and holds its transaction open; b runs p_second, which waits on
-- it; a ends with p_end (COMMIT or ROLLBACK).  Returns b's answer (NULL if it failed).
CREATE FUNCTION pg_temp.race(p_uid text, p_second text, p_end text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    answer text;
BEGIN
    PERFORM dblink_exec('a', 'BEGIN');
    PERFORM * FROM dblink('a', pg_temp.enq_sql(p_uid, 'create')) AS t(x text);
    PERFORM dblink_send_query('b', p_second);
    PERFORM pg_sleep(0.3);
    PERFORM dblink_exec('a', p_end);
    SELECT x INTO answer FROM dblink_get_result('b') AS t(x text);
    PERFORM * FROM dblink_get_result('b') AS t(x text);
    RETURN answer;
END $$;

SELECT ok(pg_temp.race('race-1', pg_temp.enq_sql('race-1', 'update'), 'COMMIT') IS NOT NULL,
          'the second enqueue of a brand-new subject succeeds once the first commits');
SELECT ok(pg_temp.race('race-2', pg_temp.batch_sql('race-2', 'update'), 'COMMIT') IS NOT NULL,
          'an enqueue_batch racing on a brand-new subject succeeds too');
-- a rolls back instead: b, which waited on a's subject, makes the subject itself
SELECT ok(pg_temp.race('race-3', pg_temp.enq_sql('race-3', 'update'), 'ROLLBACK') IS NOT NULL,
          'an enqueue that waited on a new subject whose creator rolls back makes the subject');

SELECT is((SELECT count(*) FROM xprov.subject WHERE connector_id = pg_temp.id('C')), 4::bigint,
          'one subject per target_uid, never two');
SELECT is((SELECT count(*) FROM xprov.lane WHERE connector_id = pg_temp.id('C')), 4::bigint,
          'one lane per subject');
SELECT results_eq(
    $$SELECT target_uid, operation_type, status FROM xprov.operations
       WHERE connector_id = pg_temp.id('C') ORDER BY target_uid, created_at, operation_type$$,
    $$VALUES ('race-1'::text, 'create'::text, 'pending'::text), ('race-1', 'update', 'pending'),
             ('race-2', 'create', 'pending'), ('race-2', 'update', 'pending'), ('race-2-other', 'update', 'pending'),
             ('race-3', 'update', 'pending')$$,
    'all six committed operations are queued');

-- FIFO: the first transaction's create comes first in each racing subject
SELECT FROM dblink('b', format($$SELECT xprov.set_connector_enabled(%L, true)::text$$, pg_temp.id('C'))) AS t(x text);
CREATE TEMP TABLE got AS
SELECT * FROM dblink('b', format($$SELECT target_uid || ':' || operation_type FROM xprov.dequeue(10)
                                   WHERE connector_id = %L ORDER BY 1$$, pg_temp.id('C'))) AS t(x text);
SELECT results_eq($$SELECT x FROM got ORDER BY 1$$,
                  $$VALUES ('race-1:create'::text), ('race-2-other:update'), ('race-2:create'), ('race-3:update')$$,
                  'each subject hands out its first-committed operation first');

-- resolve everything so later files see nothing of ours
SELECT FROM dblink('b', format($$SELECT count(xprov.complete(id))::text FROM xprov.operations
                                  WHERE connector_id = %L AND status = 'in_progress'$$, pg_temp.id('C'))) AS t(x text);
SELECT FROM dblink('b', format($$SELECT count(xprov.cancel(id))::text FROM xprov.operations
                                  WHERE connector_id = %L AND status = 'pending'$$, pg_temp.id('C'))) AS t(x text);
SELECT is((SELECT count(*) FROM xprov.operations WHERE connector_id = pg_temp.id('C')
            AND status NOT IN ('completed', 'cancelled')), 0::bigint, 'all resolved');
SELECT FROM dblink('b', format($$SELECT xprov.set_connector_enabled(%L, false)::text$$, pg_temp.id('C'))) AS t(x text);
SELECT is((SELECT enabled FROM xprov.connectors WHERE id = pg_temp.id('C')), false, 'connector disabled again');

SELECT FROM dblink_disconnect('a');
SELECT FROM dblink_disconnect('b');
SELECT * FROM finish();
ROLLBACK;
