/*-------------------------------------------------------------------------
 *
 * queue_tables.h
 *	  The enqueue's direct access to xprov.subject, xprov.lane and xprov.op.
 *
 * An enqueue finds its subject's lane, locks it, numbers its operations,
 * appends them to the log and wakes the lane if it was idle.  Each of those
 * is a few microseconds of work; as SQL statements, each cost several times
 * that in executor start-up and shutdown.  Here they are an index probe, a
 * tuple lock, a sequence value, a heap insert with its index entries and a
 * heap update (made by the executor's helpers for logical replication,
 * which check constraints and fire row triggers as an INSERT or UPDATE
 * does).
 *
 * Open the tables inside SPI (after SPI_connect), close them before
 * SPI_finish.  Statements run through SPI in between are fine.
 *
 *-------------------------------------------------------------------------
 */
#ifndef QUEUE_TABLES_H
#define QUEUE_TABLES_H

#include "access/genam.h"
#include "nodes/execnodes.h"
#include "storage/itemptr.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#include "op_input.h"

#define QUEUE_OP_COLUMNS 13
#define QUEUE_SUBJECT_COLUMNS 5
#define QUEUE_LANE_COLUMNS 8
#define QUEUE_SUBJECT_KEY_COLUMNS 3

/* The tables an enqueue inserts into. */
typedef enum QueueTable
{
	QUEUE_OP,
	QUEUE_SUBJECT,
	QUEUE_LANE,
	QUEUE_TABLES
} QueueTable;

/*
 * Where the columns read and written are, by attribute number (the places
 * in the arrays are queue_tables.c's).
 */
typedef struct QueueColumns
{
	AttrNumber	subject_lane_id;
	AttrNumber	op[QUEUE_OP_COLUMNS];
	AttrNumber	subject[QUEUE_SUBJECT_COLUMNS];
	AttrNumber	lane[QUEUE_LANE_COLUMNS];
} QueueColumns;

/* Rows going into one table, or a lane's new version: opened on first use. */
typedef struct TableInserter
{
	ResultRelInfo *info;
	TupleTableSlot *slot;
	QueueTable	table;
	ExprState **defaults;		/* per column that the enqueue does not write;
								 * made for the first new row */
} TableInserter;

typedef struct QueueTables
{
	Relation	subject;
	Oid			subject_key_id; /* unique on connector_id, object_class, subject */
	Relation	subject_key;	/* opened on first use, as subject_slot */
	int			subject_key_order[QUEUE_SUBJECT_KEY_COLUMNS];	/* which is each key column */
	Relation	lane;
	Relation	lane_key;		/* (lane_id), without a predicate */
	Relation	op;
	TupleTableSlot *subject_slot;
	TupleTableSlot *lane_slot;
	IndexScanDesc subject_scan;	/* kept within one snapshot */
	IndexScanDesc lane_scan;
	EState	   *estate;			/* for the inserts */
	TableInserter inserters[QUEUE_TABLES];
	Oid			op_seq;
	QueueColumns columns;
} QueueTables;

/* A lane locked until commit, as its latest version has it. */
typedef struct LockedLane
{
	ItemPointerData tid;
	int64		lane_id;
	char		state;
	char		claimant;
	int32		priority;
	TimestampTz run_at;
} LockedLane;

extern void queue_tables_open(QueueTables *tables);

/*
 * Ends the inserts (their AFTER row triggers fire here) and advances the
 * command counter, as after an SQL statement: what was written is seen by
 * what follows, another enqueue in the same statement included.
 */
extern void queue_tables_close(QueueTables *tables);

/*
 * Takes a new snapshot (the transaction's, under REPEATABLE READ) for the
 * lookups that follow, until the matching pop.
 */
extern void queue_tables_push_snapshot(QueueTables *tables);
extern void queue_tables_pop_snapshot(QueueTables *tables);

/*
 * The lane of op's subject (subject_cache.h, else in the active snapshot);
 * false if none.
 */
extern bool queue_find_lane(QueueTables *tables, const OpInput *op, int64 *lane_id);

/*
 * Locks the lane of a subject of the connector against other enqueues,
 * claims and completions until commit (FOR NO KEY UPDATE; waits for a
 * holder) and reads it, following its updates under READ COMMITTED.
 * False if the active snapshot does not see the lane (a subject found in
 * the cache but created after a REPEATABLE READ snapshot).  Under
 * REPEATABLE READ, a lane changed since the snapshot is a serialization
 * failure.
 */
extern bool queue_lock_lane(QueueTables *tables, int64 lane_id, const pg_uuid_t *connector_id,
							LockedLane *lane);

/*
 * The number of the next operation.  Taken after the lane is locked, so
 * that one subject's operations are numbered in the order they commit.
 */
extern int64 queue_next_seq(QueueTables *tables);

extern void queue_insert_op(QueueTables *tables, const OpInput *op, int64 lane_id, int64 seq);

/*
 * Creates op's subject with a ready lane whose head is operation seq, as
 * INSERT ... ON CONFLICT DO NOTHING would (waiting for a concurrent
 * creator); false, writing nothing, if the subject exists.  The new lane
 * is returned as locked: no other transaction sees it before we commit.
 * For a caller that has just failed to find the subject with
 * queue_find_lane() in a new snapshot.
 */
extern bool queue_create_subject(QueueTables *tables, const OpInput *op, int64 seq,
								 LockedLane *lane);

/*
 * Makes an idle lane that queue_lock_lane() has locked ready, with
 * operation seq (op's) as its head, as an UPDATE would (row triggers fire;
 * lane is updated to the new version).  Only where queue_can_wake_lanes().
 */
extern void queue_wake_lane(QueueTables *tables, LockedLane *lane, const OpInput *op, int64 seq);

/*
 * The error for a wake that a BEFORE UPDATE trigger on xprov.lane skipped:
 * left idle, the lane would never reach the operation just enqueued.
 */
extern void queue_raise_wake_skipped(int64 lane_id) pg_attribute_noreturn();

/*
 * Whether queue_wake_lane() may be used: not when a DBA has given
 * xprov.lane stored generated columns (the caller then goes through SQL).
 */
extern bool queue_can_wake_lanes(QueueTables *tables);

/*
 * Whether queue_create_subject() may be used: not when a DBA has given
 * xprov.subject triggers or stored generated columns (the caller then goes
 * through SQL).
 */
extern bool queue_can_create_subjects(QueueTables *tables);

#endif							/* QUEUE_TABLES_H */
