/*-------------------------------------------------------------------------
 *
 * lease_cache.c
 *	  The leases xprov.dequeue() gave out in this backend (see the header).
 *
 * A hash table keyed by operation id, in a memory context of its own that
 * is dropped whole.  An invalidation only marks it stale: it is emptied at
 * its next use.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/memutils.h"

#include "lease_cache.h"

/* ~100 bytes each: a few MB at most per backend */
#define LEASE_CACHE_MAX 65536

typedef struct LeaseEntry
{
	pg_uuid_t	id;				/* the key */
	LeaseRef	lease;			/* idempotency_key owned by cache_context */
} LeaseEntry;

static MemoryContext cache_context = NULL;
static HTAB *leases = NULL;
static Oid	cached_lane_relid = InvalidOid;
static Oid	cached_op_relid = InvalidOid;
static bool stale = false;
static bool callback_registered = false;

static void
lease_cache_invalidate(Datum arg, Oid relid)
{
	if (!OidIsValid(relid) || relid == cached_lane_relid || relid == cached_op_relid)
		stale = true;
}

static void
start_over(Oid lane_relid, Oid op_relid)
{
	HASHCTL		ctl;

	if (!callback_registered)
	{
		CacheRegisterRelcacheCallback(lease_cache_invalidate, (Datum) 0);
		callback_registered = true;
	}
	if (cache_context != NULL)
		MemoryContextDelete(cache_context);
	cache_context = AllocSetContextCreate(CacheMemoryContext, "xprov lease cache",
										  ALLOCSET_DEFAULT_SIZES);
	ctl.keysize = sizeof(pg_uuid_t);
	ctl.entrysize = sizeof(LeaseEntry);
	ctl.hcxt = cache_context;
	leases = hash_create("xprov leases", 256, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	cached_lane_relid = lane_relid;
	cached_op_relid = op_relid;
	stale = false;
}

void
lease_cache_remember(Oid lane_relid, Oid op_relid, const LeaseRef *lease)
{
	LeaseEntry *entry;

	if (leases == NULL || stale || lane_relid != cached_lane_relid || op_relid != cached_op_relid ||
		hash_get_num_entries(leases) >= LEASE_CACHE_MAX)
		start_over(lane_relid, op_relid);
	entry = hash_search(leases, &lease->id, HASH_ENTER, NULL);
	entry->lease = *lease;
	if (lease->idempotency_key != NULL)
		entry->lease.idempotency_key = MemoryContextStrdup(cache_context, lease->idempotency_key);
}

bool
lease_cache_take(const pg_uuid_t *id, LeaseRef *lease)
{
	LeaseEntry *entry;

	if (leases == NULL || stale)
		return false;
	entry = hash_search(leases, id, HASH_FIND, NULL);
	if (entry == NULL)
		return false;
	*lease = entry->lease;
	if (entry->lease.idempotency_key != NULL)
	{
		lease->idempotency_key = pstrdup(entry->lease.idempotency_key);
		pfree(entry->lease.idempotency_key);
	}
	hash_search(leases, id, HASH_REMOVE, NULL);
	return true;
}
