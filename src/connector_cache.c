/*-------------------------------------------------------------------------
 *
 * connector_cache.c
 *	  Connectors' tenants and kinds, kept per backend (see the header).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "commands/trigger.h"
#include "fmgr.h"
#include "nodes/makefuncs.h"
#include "parser/parse_func.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/syscache.h"

#include "connector_cache.h"
#include "worker_shmem.h"

PG_FUNCTION_INFO_V1(xprov_connectors_changed);

/* A backend that enqueues to more connectors than this starts over. */
#define CONNECTOR_CACHE_MAX 4096

static HTAB *connectors = NULL;
static uint64 connectors_generation = 0;

static void
forget_connectors(void)
{
	HASHCTL		ctl;

	if (connectors != NULL)
		hash_destroy(connectors);
	ctl.keysize = sizeof(pg_uuid_t);
	ctl.entrysize = sizeof(ConnectorFacts);
	ctl.hcxt = TopMemoryContext;
	connectors = hash_create("xprov connectors", 64, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
}

/*
 * Whether the trigger function that tells of changes exists (it came with
 * 0.2.0).  Looked up again after any change to pg_proc, which ALTER
 * EXTENSION xprov UPDATE makes.
 */
static bool told_known = false;

static void
forget_told(Datum arg, int cacheid, uint32 hashvalue)
{
	told_known = false;
}

static bool
changes_are_told(void)
{
	static bool callback_registered = false;
	static bool told = false;

	if (!callback_registered)
	{
		CacheRegisterSyscacheCallback(PROCOID, forget_told, (Datum) 0);
		callback_registered = true;
	}
	if (!told_known)
	{
		List	   *name = list_make2(makeString("xprov"), makeString("_connectors_changed"));

		/* before the lookup: an invalidation taken in during it voids it */
		told_known = true;
		told = OidIsValid(LookupFuncName(name, 0, NULL, true));
	}
	return told;
}

bool
connector_cache_usable(void)
{
	uint64		generation = worker_config_generation();

	if (generation == 0 || worker_config_change_pending() || !changes_are_told())
		return false;
	if (connectors == NULL || generation != connectors_generation)
	{
		forget_connectors();
		connectors_generation = generation;
	}
	/* the generation is read before the statement's snapshot is taken */
	pg_memory_barrier();
	return true;
}

const ConnectorFacts *
connector_cache_find(const pg_uuid_t *id)
{
	return hash_search(connectors, id, HASH_FIND, NULL);
}

void
connector_cache_add(const ConnectorFacts *facts)
{
	ConnectorFacts *entry;

	if (hash_get_num_entries(connectors) >= CONNECTOR_CACHE_MAX)
		forget_connectors();
	entry = hash_search(connectors, &facts->id, HASH_ENTER, NULL);
	*entry = *facts;
}

/* Trigger on xprov.connector: facts kept so far may be wrong once we commit. */
Datum
xprov_connectors_changed(PG_FUNCTION_ARGS)
{
	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				errmsg("xprov._connectors_changed() must be called as a trigger"));
	worker_config_changed_at_commit();
	return PointerGetDatum(NULL);
}
