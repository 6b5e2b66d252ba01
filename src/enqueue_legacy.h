/*-------------------------------------------------------------------------
 *
 * enqueue_legacy.h
 *	  Enqueue into a database whose xprov is still 0.1.0.
 *
 * From 0.2.0 each lane numbers its own operations (xprov.lane.last_seq),
 * and an enqueue takes its numbers in the write that locks the lane.  A
 * database still at 0.1.0 (a new library before ALTER EXTENSION xprov
 * UPDATE) has no such column: its operations are numbered from the
 * sequence xprov.op_seq, one at a time, as 0.1.0 did.
 *
 *-------------------------------------------------------------------------
 */
#ifndef ENQUEUE_LEGACY_H
#define ENQUEUE_LEGACY_H

#include "catalog/pg_type.h"

/*
 * Parameters of every statement that enqueues one operation: $1 tenant,
 * $2 connector, $3 object class, $4 subject, $5 claimant, $6 priority,
 * $7 not_before, $8 id, $9 identity, $10 target uid, $11 operation type,
 * $12 attributes, $13 idempotency key.
 */
#define ONE_OP_NARGS 13
#define ONE_OP_ARGS \
	.nargs = ONE_OP_NARGS, \
	.argtypes = {UUIDOID, UUIDOID, TEXTOID, TEXTOID, CHAROID, INT4OID, TIMESTAMPTZOID, \
		UUIDOID, UUIDOID, TEXTOID, TEXTOID, JSONBOID, TEXTOID}

/* Whether lanes number their operations here (xprov 0.2.0 or later). */
extern bool enqueue_lanes_number_operations(void);

/*
 * Enqueues one operation (parameters as above) the 0.1.0 way, and notes its
 * lane when ready; false if its subject was being created by a concurrent
 * transaction twice over (the caller raises a serialization failure).
 */
extern bool enqueue_legacy_one(Datum *values, const char *nulls);

#endif							/* ENQUEUE_LEGACY_H */
