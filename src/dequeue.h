/*-------------------------------------------------------------------------
 *
 * dequeue.h
 *	  Claiming ready operations (xprov.dequeue and, later, the worker).
 *
 *-------------------------------------------------------------------------
 */
#ifndef DEQUEUE_H
#define DEQUEUE_H

#include "datatype/timestamp.h"
#include "executor/spi.h"

#include "work_op.h"

extern void dequeue_reclaim_expired(char claimant, TimestampTz now);
extern uint64 dequeue_claim(char claimant, int batch, Interval *lease, TimestampTz now,
							 int64 leased_by, Datum excluded);

/* Columns of xprov.queued_operation, as dequeue_claim() returns them first. */
#define QUEUED_OPERATION_NATTS 15
#define QOP_ID				1
#define QOP_TENANT_ID		2
#define QOP_CONNECTOR_ID	3
#define QOP_IDENTITY_ID		4
#define QOP_TARGET_UID		5
#define QOP_OPERATION_TYPE	6
#define QOP_OBJECT_CLASS	7
#define QOP_ATTRIBUTES		8
#define QOP_RETRY_COUNT		10
#define QOP_IDEMPOTENCY_KEY	13
/* then the claim key, and where the lease is: the lane version and seq */
#define QOP_LANE_ID			(QUEUED_OPERATION_NATTS + 3)
#define QOP_LANE_CTID		(QUEUED_OPERATION_NATTS + 4)
#define QOP_SEQ				(QUEUED_OPERATION_NATTS + 5)

/* Where a claimed row's lease is; the key is copied into CurrentMemoryContext. */
extern void dequeue_read_lease(SPITupleTable *rows, uint64 row, LeaseRef *lease);

#endif							/* DEQUEUE_H */
