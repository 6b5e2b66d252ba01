/*-------------------------------------------------------------------------
 *
 * worker_store.h
 *	  The background worker's statements: its epoch, claims, and recording
 *	  outcomes.  Every function runs inside the caller's transaction and
 *	  SPI connection.
 *
 *-------------------------------------------------------------------------
 */
#ifndef WORKER_STORE_H
#define WORKER_STORE_H

#include "datatype/timestamp.h"
#include "utils/uuid.h"

#include "work_op.h"

/* Slots are folded into lease tags: epoch * WORKER_TAG_SLOTS + slot. */
#define WORKER_TAG_SLOTS 64

/* What one claim produced. */
typedef struct ClaimResult
{
	int			claimed;
	LeaseRef   *noop_leases;	/* noop operations: complete as they are */
	int			nnoop;
	WorkOp	   *http_ops;		/* list, each in its own context */
} ClaimResult;

/* Finished work waiting to be recorded. */
typedef struct FinishedWork
{
	LeaseRef   *noop_leases;
	int			nnoop;
	WorkOp	   *ops;			/* list with outcomes */
} FinishedWork;

extern int64 store_begin_epoch(int slot);
extern void store_claim(int max, int64 tag, Datum paused_connectors,
						MemoryContext batch_cxt, MemoryContext ops_cxt,
						ClaimResult *result);
extern void store_record(FinishedWork *work, int64 tag, int64 *done, int64 *failed);

/*
 * Answer the correlation questions of the operations waiting for the
 * database (op->awaiting): sets op->verdict, or a transient failure.
 */
extern void store_correlate(WorkOp *ops);

#endif							/* WORKER_STORE_H */
