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

extern void dequeue_reclaim_expired(char claimant, TimestampTz now);
extern uint64 dequeue_claim(char claimant, int batch, Interval *lease, TimestampTz now);

#endif							/* DEQUEUE_H */
