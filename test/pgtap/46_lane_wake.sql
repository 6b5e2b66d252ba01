-- An enqueue for a subject whose lane is idle makes the lane ready, with the new operation as its
-- head (src/queue_tables.c, queue_wake_lane): as the UPDATE it replaces would, row triggers
-- included.  With stored generated columns on xprov.lane it goes through SQL instead; both ways
-- must leave the same lane.
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS xprov;

BEGIN;
SELECT plan(31);
\ir common.psql

SELECT FROM pg_temp.tenant('T');
SELECT FROM pg_temp.conn('c1', 'T');

CREATE FUNCTION pg_temp.lane(p_subject text) RETURNS xprov.lane LANGUAGE sql AS $$
    SELECT l.* FROM xprov.lane l JOIN xprov.subject s USING (lane_id)
     WHERE s.connector_id = pg_temp.id('c1') AND s.subject = 't:' || p_subject
$$;
-- what a wake must not touch: the lane without the columns it sets
CREATE FUNCTION pg_temp.kept(p_subject text) RETURNS jsonb LANGUAGE sql AS $$
    SELECT to_jsonb(pg_temp.lane(p_subject)) - '{state,next_seq,priority,run_at}'::text[]
$$;
CREATE FUNCTION pg_temp.seq(p_name text) RETURNS bigint LANGUAGE sql AS $$
    SELECT seq FROM xprov.op WHERE id = pg_temp.id(p_name)
$$;
-- the lane as "state head priority run_at", run_at as 'now' or 'later' (1 hour on)
CREATE FUNCTION pg_temp.shape(p_subject text) RETURNS text LANGUAGE sql AS $$
    SELECT l.state::text || ' ' || coalesce((SELECT pg_temp.nm(o.id) FROM xprov.op o
                                        WHERE o.lane_id = l.lane_id AND o.seq = l.next_seq), '?')
           || ' ' || l.priority || ' '
           || CASE l.run_at WHEN now() THEN 'now' WHEN now() + interval '1 hour' THEN 'later'
                            ELSE l.run_at::text END
      FROM pg_temp.lane(p_subject) l
$$;
-- enqueue_batch to c1: (name, subject, priority) each
CREATE FUNCTION pg_temp.batch(VARIADIC p_ops text[]) RETURNS void LANGUAGE sql AS $$
    SELECT count(pg_temp.put(p_ops[3 * n - 2], id))
      FROM xprov.enqueue_batch((
               SELECT jsonb_agg(jsonb_build_object('tenant_id', pg_temp.id('T'), 'connector_id', pg_temp.id('c1'),
                                                   'operation_type', 'update', 'object_class', 'user',
                                                   'target_uid', p_ops[3 * k - 1],
                                                   'priority', p_ops[3 * k]::int) ORDER BY k)
                 FROM generate_series(1, array_length(p_ops, 1) / 3) k))
           WITH ORDINALITY AS b(id, n)
$$;

-- ---------------------------------------------------------------- idle lanes, made and drained
SELECT FROM pg_temp.enq('a0', 'c1', 'wake-a');
SELECT FROM pg_temp.enq('b0', 'c1', 'wake-b');
SELECT FROM pg_temp.enq('k0', 'c1', 'wake-c');
SELECT FROM pg_temp.enq('d0', 'c1', 'wake-d');
SELECT FROM pg_temp.enq('e0', 'c1', 'wake-e');
SELECT is(pg_temp.drain(), 5, 'five subjects drained');
SELECT is(ARRAY(SELECT (pg_temp.lane(s)).state::text FROM unnest('{wake-a,wake-b,wake-c,wake-d,wake-e}'::text[]) s),
          '{i,i,i,i,i}', 'their lanes are idle');
CREATE TEMP TABLE before AS SELECT s, pg_temp.kept(s) AS kept
  FROM unnest('{wake-a,wake-b,wake-c,wake-d,wake-e}'::text[]) s;

-- ---------------------------------------------------------------- one enqueue wakes the lane
SELECT FROM pg_temp.enq('a1', 'c1', 'wake-a', p_priority => 7, p_not_before => now() + interval '1 hour');
SELECT is(pg_temp.shape('wake-a'), 'r a1 7 later',
          'an enqueue to an idle lane makes it ready: head, priority, run_at = not_before');
SELECT is(pg_temp.kept('wake-a'), (SELECT kept FROM before WHERE s = 'wake-a'),
          '... and leaves its other columns as they were');
SELECT FROM pg_temp.enq('a2', 'c1', 'wake-a', p_priority => 50);
SELECT is(pg_temp.shape('wake-a'), 'r a1 7 later', 'the next enqueue appends: the head stays');

SELECT FROM pg_temp.enq('b1', 'c1', 'wake-b', p_priority => -3, p_not_before => now() - interval '1 day');
SELECT is(pg_temp.shape('wake-b'), 'r b1 -3 now', 'a not_before in the past: run_at is now');

-- two enqueues to one idle subject in one statement: the first is the head
SELECT count(pg_temp.enq('k' || g, 'c1', 'wake-c', p_priority => g)) FROM generate_series(1, 2) g;
SELECT is(pg_temp.shape('wake-c'), 'r k1 1 now', 'two enqueues in one statement: the first wakes, the second appends');

-- claims see the woken lanes; the one not yet due waits
DELETE FROM _log;
SELECT is(pg_temp.drain(), 3, 'the woken lanes are claimed, except the one not yet due');
SELECT is(ARRAY(SELECT name FROM _log ORDER BY seq), '{k1,b1,k2}', '... higher priority first, each lane in its order');

-- ---------------------------------------------------------------- a batch wakes idle lanes
SELECT FROM pg_temp.batch('d1', 'wake-d', '4', 'e1', 'wake-e', '2', 'd2', 'wake-d', '9', 'n1', 'wake-new', '1');
SELECT is(pg_temp.shape('wake-d'), 'r d1 4 now', 'a batch wakes an idle lane with its first operation for it');
SELECT is(pg_temp.shape('wake-e'), 'r e1 2 now', '... each idle lane');
SELECT is(pg_temp.shape('wake-new'), 'r n1 1 now', '... and makes the new one');
SELECT is(ARRAY(SELECT pg_temp.kept(s) = b.kept FROM before b WHERE s IN ('wake-d', 'wake-e') ORDER BY s),
          '{t,t}', '... leaving the other columns as they were');
DELETE FROM _log;
SELECT is(pg_temp.drain(), 4, 'the batch''s operations are claimed');
SELECT is(ARRAY(SELECT name FROM _log ORDER BY seq), '{d1,e1,n1,d2}', '... each lane in its order');

-- ---------------------------------------------------------------- row triggers on xprov.lane
CREATE TEMP TABLE fired (seq serial, what text);
CREATE FUNCTION pg_temp.note_lane() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO fired (what) VALUES (TG_ARGV[0] || ':' || OLD.state::text || '>' || NEW.state::text);
    IF TG_WHEN = 'BEFORE' AND TG_ARGV[0] = 'before' THEN
        NEW.priority := NEW.priority + 100;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER lane_before BEFORE UPDATE ON xprov.lane
    FOR EACH ROW EXECUTE FUNCTION pg_temp.note_lane('before');
CREATE TRIGGER lane_after AFTER UPDATE ON xprov.lane
    FOR EACH ROW EXECUTE FUNCTION pg_temp.note_lane('after');
CREATE TRIGGER lane_of_next_seq AFTER UPDATE OF next_seq ON xprov.lane
    FOR EACH ROW EXECUTE FUNCTION pg_temp.note_lane('of-next_seq');
CREATE TRIGGER lane_of_leased_at AFTER UPDATE OF leased_at ON xprov.lane
    FOR EACH ROW EXECUTE FUNCTION pg_temp.note_lane('of-leased_at');

SELECT FROM pg_temp.enq('e2', 'c1', 'wake-e', p_priority => 5);
SELECT is(ARRAY(SELECT what FROM fired ORDER BY seq), '{before:i>r,after:i>r,of-next_seq:i>r}',
          'a wake fires the row triggers of an UPDATE, and those on the columns it sets');
SELECT is(pg_temp.shape('wake-e'), 'r e2 105 now', '... and keeps what a BEFORE trigger changed');
DELETE FROM fired;
SELECT FROM pg_temp.batch('d3', 'wake-d', '6');
SELECT is(ARRAY(SELECT what FROM fired ORDER BY seq), '{before:i>r,after:i>r,of-next_seq:i>r}',
          'so does a batch''s wake');
SELECT is(pg_temp.shape('wake-d'), 'r d3 106 now', '... the BEFORE trigger''s change kept');
DELETE FROM _log;
SELECT is(pg_temp.drain(), 2, 'the operations behind triggered wakes run');

-- a BEFORE trigger that skips the update would leave the operation behind an idle lane
CREATE FUNCTION pg_temp.skip_lane() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
CREATE TRIGGER lane_skip BEFORE UPDATE ON xprov.lane FOR EACH ROW EXECUTE FUNCTION pg_temp.skip_lane();
SELECT matches(pg_temp.err($$SELECT pg_temp.enq('x1', 'c1', 'wake-e')$$),
               '^09000: a trigger on xprov.lane skipped the update that readies lane [0-9]+$',
               'an enqueue refuses a wake skipped by a trigger');
SELECT matches(pg_temp.err($$SELECT pg_temp.batch('x2', 'wake-d', '0')$$),
               '^09000: a trigger on xprov.lane skipped the update that readies lane [0-9]+$',
               '... as does a batch');
SELECT is((SELECT count(*) FROM xprov.op o JOIN xprov.subject s USING (lane_id)
            WHERE s.connector_id = pg_temp.id('c1') AND s.subject IN ('t:wake-d', 't:wake-e')), 7::bigint,
          '... and enqueues nothing');
DROP TRIGGER lane_skip ON xprov.lane;
DROP TRIGGER lane_before ON xprov.lane;
DROP TRIGGER lane_after ON xprov.lane;
DROP TRIGGER lane_of_next_seq ON xprov.lane;
DROP TRIGGER lane_of_leased_at ON xprov.lane;

-- ---------------------------------------------------------------- stored generated columns: through SQL
ALTER TABLE xprov.lane ADD COLUMN twice_priority bigint GENERATED ALWAYS AS (priority * 2) STORED;
SELECT FROM pg_temp.enq('b2', 'c1', 'wake-b', p_priority => 21);
SELECT is(pg_temp.shape('wake-b') || ' ' || (pg_temp.lane('wake-b')).twice_priority, 'r b2 21 now 42',
          'with a generated column on xprov.lane, an enqueue wakes the lane through SQL');
SELECT FROM pg_temp.batch('k3', 'wake-c', '8');
SELECT is(pg_temp.shape('wake-c') || ' ' || (pg_temp.lane('wake-c')).twice_priority, 'r k3 8 now 16',
          '... and so does a batch');
SELECT FROM pg_temp.enq('n2', 'c1', 'wake-new2', p_priority => 3);
SELECT is(pg_temp.shape('wake-new2') || ' ' || (pg_temp.lane('wake-new2')).twice_priority, 'r n2 3 now 6',
          '... and a new subject''s lane gets the column too');
CREATE TRIGGER lane_skip BEFORE UPDATE ON xprov.lane FOR EACH ROW EXECUTE FUNCTION pg_temp.skip_lane();
SELECT is(pg_temp.err($$SELECT pg_temp.enq('x3', 'c1', 'wake-e')$$),
          '09000: a trigger on xprov.lane skipped the update that readies lane ' || (pg_temp.lane('wake-e')).lane_id,
          'through SQL too, a wake skipped by a trigger is refused, naming the lane');
SELECT matches(pg_temp.err($$SELECT pg_temp.batch('x4', 'wake-d', '0')$$),
               '^09000: a trigger on xprov.lane skipped the update that readies lane [0-9]+$',
               '... and in a batch');
DROP TRIGGER lane_skip ON xprov.lane;
DELETE FROM _log;
SELECT is(pg_temp.drain(), 3, 'the operations woken through SQL run');
ALTER TABLE xprov.lane DROP COLUMN twice_priority;
SELECT FROM pg_temp.enq('b3', 'c1', 'wake-b');
SELECT is(pg_temp.shape('wake-b'), 'r b3 0 now', 'with the column gone, the direct wake is back');
SELECT is(pg_temp.drain(), 1, '... and its operation runs');

SELECT * FROM finish();
ROLLBACK;
