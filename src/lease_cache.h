/*-------------------------------------------------------------------------
 *
 * lease_cache.h
 *	  The leases xprov.dequeue() gave out in this backend.
 *
 * An external processor dequeues and completes in one session, and a
 * completion then finds each operation's lane where the claim wrote it
 * (one TID scan for the batch) instead of looking the operation up by id
 * and then its lane (two index probes per operation).  What is kept is a
 * hint: the completion locks the version by ctid and uses it only if it is
 * still that lane's lease of that operation; anything else goes the long
 * way.  Forgotten when xprov.lane or xprov.op is invalidated in the
 * relation cache (TRUNCATE, DDL, VACUUM, DROP EXTENSION), and when too many
 * are held (leases never completed here).
 *
 *-------------------------------------------------------------------------
 */
#ifndef LEASE_CACHE_H
#define LEASE_CACHE_H

#include "work_op.h"

/* Keep a lease written to the lane and operation tables named. */
extern void lease_cache_remember(Oid lane_relid, Oid op_relid, const LeaseRef *lease);

/* The lease of operation id if kept (its key copied into the caller's context); forgets it. */
extern bool lease_cache_take(const pg_uuid_t *id, LeaseRef *lease);

#endif							/* LEASE_CACHE_H */
