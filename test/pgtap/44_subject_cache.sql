-- An enqueue keeps the lanes of committed subjects per backend (src/subject_cache.c), and locks
-- lanes, creates subjects and inserts operations without SQL (src/queue_tables.c).  A kept lane must never outlive
-- its subject: after TRUNCATE, lane ids are handed out again, and the same lane id may then
-- belong to another subject of the same connector.  Subjects made by another session (dblink
-- 'admin') are committed; this session's TRUNCATE is rolled back with the file.
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS xprov;
CREATE EXTENSION IF NOT EXISTS dblink;

BEGIN;
SELECT plan(23);
\set committed_isolation 1
\ir common.psql

SELECT FROM pg_temp.tenant('A');
SELECT FROM dblink_connect('admin', pg_temp.connstr());
SELECT FROM pg_temp.put('C', (SELECT id FROM dblink('admin',
    format($$SELECT xprov.add_connector(%L, 'subjcache-' || left(md5(random()::text), 8), 'external', NULL)$$,
           pg_temp.id('A'))) AS t(id uuid)));
CREATE FUNCTION pg_temp.lane_of(p_uid text) RETURNS bigint LANGUAGE sql AS $$
    SELECT lane_id FROM xprov.subject WHERE connector_id = pg_temp.id('C') AND subject = 't:' || p_uid
$$;
CREATE FUNCTION pg_temp.op_lane(p_name text) RETURNS bigint LANGUAGE sql AS $$
    SELECT lane_id FROM xprov.op WHERE id = pg_temp.id(p_name)
$$;
-- enqueue_batch to C, one operation per target uid; they are named p_prefix || p_first, ...
CREATE FUNCTION pg_temp.batch(p_prefix text, p_first int, VARIADIC p_uids text[]) RETURNS void
LANGUAGE sql AS $$
    SELECT count(pg_temp.put(p_prefix || (p_first + n - 1), id))
      FROM xprov.enqueue_batch((
               SELECT jsonb_agg(jsonb_build_object('tenant_id', pg_temp.id('A'), 'connector_id', pg_temp.id('C'),
                                                   'operation_type', 'update', 'object_class', 'user',
                                                   'target_uid', u) ORDER BY k)
                 FROM unnest(p_uids) WITH ORDINALITY AS t(u, k)))
           WITH ORDINALITY AS b(id, n)
$$;

-- two subjects committed by another session
SELECT FROM dblink('admin', format($$SELECT xprov.enqueue(%L, %L, NULL, 'update', 'user', '{}', 'sc-a')$$,
                                   pg_temp.id('A'), pg_temp.id('C'))) AS t(id uuid);
SELECT FROM dblink('admin', format($$SELECT xprov.enqueue(%L, %L, NULL, 'update', 'user', '{}', 'sc-b')$$,
                                   pg_temp.id('A'), pg_temp.id('C'))) AS t(id uuid);
CREATE TEMP TABLE lanes AS SELECT pg_temp.lane_of('sc-a') AS a, pg_temp.lane_of('sc-b') AS b;
-- cleanup (committed) now: later, it would wait for the locks this session takes
SELECT FROM dblink_exec('admin', format($q$DO $c$ BEGIN PERFORM xprov.cancel(o.id) FROM xprov.operations o
                                          WHERE o.connector_id = %L AND o.status = 'pending'; END $c$$q$,
                                        pg_temp.id('C')));

-- this session finds them (and keeps their lanes), one at a time and in a batch
SELECT FROM pg_temp.enq('a1', 'C', 'sc-a');
SELECT FROM pg_temp.enq('b1', 'C', 'sc-b');
SELECT is(pg_temp.op_lane('a1'), (SELECT a FROM lanes), 'an enqueue finds the subject another session committed');
SELECT is(pg_temp.op_lane('b1'), (SELECT b FROM lanes), '... and so for every subject');
SELECT FROM pg_temp.enq('a2', 'C', 'sc-a');
SELECT is(pg_temp.op_lane('a2'), (SELECT a FROM lanes), 'the next enqueue to it goes to the same lane');
SELECT FROM pg_temp.batch('b', 2, 'sc-b', 'sc-a');
SELECT is(pg_temp.op_lane('b2'), (SELECT b FROM lanes), 'so does a batch''s');
SELECT is(pg_temp.op_lane('b3'), (SELECT a FROM lanes), '... for each of its subjects');
SELECT is((SELECT count(*) FROM xprov.subject WHERE connector_id = pg_temp.id('C')), 2::bigint,
          'no subject was made twice');

-- the queue emptied, and lane ids handed out again: the next subject made gets sc-a's old lane id
TRUNCATE xprov.subject, xprov.lane, xprov.op;
SELECT setval(pg_get_serial_sequence('xprov.subject', 'lane_id'), (SELECT a FROM lanes), false) \g /dev/null
SELECT FROM pg_temp.enq('o1', 'C', 'sc-other');
SELECT is(pg_temp.op_lane('o1'), (SELECT a FROM lanes), 'after TRUNCATE, another subject has sc-a''s old lane id');
SELECT FROM pg_temp.enq('a3', 'C', 'sc-a');
SELECT isnt(pg_temp.op_lane('a3'), (SELECT a FROM lanes), 'sc-a does not go to its old lane, now another''s');
SELECT is(pg_temp.op_lane('a3'), pg_temp.lane_of('sc-a'), '... but to the lane of its new subject');
SELECT is((SELECT array_agg(state::text || ':' || (next_seq = o.seq)::text ORDER BY l.lane_id)
             FROM xprov.lane l JOIN xprov.op o ON o.lane_id = l.lane_id),
          ARRAY['r:true', 'r:true'], 'both new lanes are ready, each with its operation as head');
SELECT is(pg_temp.deqs(10), ARRAY['a3', 'o1'], 'and both operations are claimed');

-- a batch after TRUNCATE: the same
TRUNCATE xprov.subject, xprov.lane, xprov.op;
SELECT setval(pg_get_serial_sequence('xprov.subject', 'lane_id'), (SELECT b FROM lanes) - 1) \g /dev/null
SELECT FROM pg_temp.enq('o2', 'C', 'sc-other');
SELECT FROM pg_temp.batch('b', 4, 'sc-b');
SELECT is(pg_temp.op_lane('b4'), pg_temp.lane_of('sc-b'), 'a batch after TRUNCATE goes to the new subject''s lane');

-- (leave the connector disabled, as the other files using dblink do)
SELECT FROM dblink_exec('admin', format('DO $c$ BEGIN PERFORM xprov.set_connector_enabled(%L, false); END $c$',
                                        pg_temp.id('C')));
SELECT FROM dblink_disconnect('admin');

-- Triggers on the tables (not xprov's own, but a DBA's): the log's fire as for an INSERT; with a
-- trigger on xprov.subject, a new subject is made through SQL (INSERT ... ON CONFLICT DO NOTHING)
CREATE TEMP TABLE fired (tbl text, subject text);
CREATE FUNCTION pg_temp.note_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO fired VALUES (TG_TABLE_NAME, to_jsonb(NEW) ->> CASE TG_TABLE_NAME WHEN 'subject' THEN 'subject'
                                                                                 ELSE 'target_uid' END);
    RETURN NEW;
END $$;
CREATE TRIGGER note_insert AFTER INSERT ON xprov.op FOR EACH ROW EXECUTE FUNCTION pg_temp.note_insert();
SELECT FROM pg_temp.enq('t1', 'C', 'sc-trig-1');
SELECT is((SELECT array_agg(tbl || ':' || subject) FROM fired), ARRAY['op:sc-trig-1'],
          'a trigger on xprov.op fires for the enqueued operation');
CREATE TRIGGER note_insert AFTER INSERT ON xprov.subject FOR EACH ROW EXECUTE FUNCTION pg_temp.note_insert();
SELECT FROM pg_temp.enq('t2', 'C', 'sc-trig-2');
SELECT is((SELECT array_agg(tbl || ':' || subject ORDER BY tbl DESC) FROM fired WHERE subject LIKE '%sc-trig-2'),
          ARRAY['subject:t:sc-trig-2', 'op:sc-trig-2'], 'with a trigger on xprov.subject, both fire');
SELECT is(pg_temp.op_lane('t2'), pg_temp.lane_of('sc-trig-2'), '... and the operation is in its subject''s lane');
SELECT is((SELECT state::text || ':' || (next_seq = (SELECT seq FROM xprov.op WHERE id = pg_temp.id('t2')))::text
             FROM xprov.lane WHERE lane_id = pg_temp.lane_of('sc-trig-2')),
          'r:true', '... which is ready, with the operation as its head');

-- The subject's key leads with the subject (0.2.0); the library finds the key by its columns, so
-- a key in 0.1.0's order (connector, class, subject) serves it as well
SELECT is((SELECT array_agg(a.attname ORDER BY k.n)
             FROM pg_index i, unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
             JOIN pg_attribute a ON a.attrelid = 'xprov.subject'::regclass AND a.attnum = k.attnum
            WHERE i.indrelid = 'xprov.subject'::regclass AND i.indisunique AND NOT i.indisprimary),
          ARRAY['subject', 'connector_id', 'object_class']::name[], 'the subject''s key leads with the subject');
DROP TRIGGER note_insert ON xprov.subject;
DO $$
DECLARE
    c name := (SELECT conname FROM pg_constraint WHERE conrelid = 'xprov.subject'::regclass AND contype = 'u');
BEGIN
    EXECUTE format('ALTER TABLE xprov.subject DROP CONSTRAINT %I, ADD UNIQUE (connector_id, object_class, subject)', c);
END $$;
SELECT FROM pg_temp.enq('k1', 'C', 'sc-trig-1');
SELECT is(pg_temp.op_lane('k1'), pg_temp.lane_of('sc-trig-1'),
          'with the key in 0.1.0''s order, an enqueue finds its subject');
SELECT FROM pg_temp.enq('k2', 'C', 'sc-key-new');
SELECT FROM pg_temp.enq('k3', 'C', 'sc-key-new');
SELECT is((SELECT count(*) FROM xprov.subject WHERE connector_id = pg_temp.id('C') AND subject = 't:sc-key-new'),
          1::bigint, '... makes a new subject once');
SELECT is(pg_temp.op_lane('k3'), pg_temp.lane_of('sc-key-new'), '... and finds it again');
SELECT FROM pg_temp.batch('k', 4, 'sc-key-new', 'sc-trig-1');
SELECT is(ARRAY[pg_temp.op_lane('k4'), pg_temp.op_lane('k5')],
          ARRAY[pg_temp.lane_of('sc-key-new'), pg_temp.lane_of('sc-trig-1')], '... and so does a batch');

-- a read-only transaction is refused before anything is locked (the rest of the file is read-only)
SET LOCAL transaction_read_only = on;
SELECT matches(pg_temp.err(format($$SELECT xprov.enqueue(%L, %L, NULL, 'update', 'user', '{}', 'sc-a')$$,
                                  pg_temp.id('A'), pg_temp.id('C'))),
               '^25006: cannot execute xprov.enqueue\(\) in a read-only transaction',
               'an enqueue in a read-only transaction -> 25006');
SELECT matches(pg_temp.err(format($$SELECT xprov.enqueue_batch(%L)$$, jsonb_build_array(jsonb_build_object(
                   'tenant_id', pg_temp.id('A'), 'connector_id', pg_temp.id('C'), 'operation_type', 'update',
                   'object_class', 'user', 'target_uid', 'sc-new-ro')))),
               '^25006: cannot execute xprov.enqueue\(\) in a read-only transaction', '... and a batch');

SELECT * FROM finish();
ROLLBACK;
