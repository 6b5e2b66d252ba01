/*-------------------------------------------------------------------------
 *
 * hook_cache.c
 *	  The background worker's copy of the enabled hooks (see hook_cache.h).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "hook_cache.h"
#include "spi_util.h"
#include "worker_shmem.h"
#include "xprov.h"

static SavedPlan load_hooks = {
	.sql =
	"SELECT h.id, h.version, h.tenant_id, h.connector_id, h.object_class, h.phase, h.script, "
	"       least(h.timeout_ms, $1), least(h.memory_kb, $2), h.failure = 'ignore' "
	"  FROM xprov.hook h "
	" WHERE h.enabled "
	" ORDER BY h.run_order, h.connector_id IS NOT NULL, h.object_class IS NOT NULL, h.created_seq",
	.nargs = 2,
	.argtypes = {INT4OID, INT4OID},
};

static MemoryContext hooks_cxt = NULL;
static Hook *hooks = NULL;
static int	nhooks = 0;
static const Hook **matches = NULL; /* lookup results, nhooks long */
static uint64 loaded_generation = 0;

const char *
hook_phase_name(HookPhase phase)
{
	switch (phase)
	{
		case HOOK_BEFORE:
			return "before";
		case HOOK_AFTER:
			return "after";
		case HOOK_ON_ERROR:
			return "on_error";
	}
	return "?";
}

static HookPhase
phase_from_text(const char *phase)
{
	if (strcmp(phase, "before") == 0)
		return HOOK_BEFORE;
	if (strcmp(phase, "after") == 0)
		return HOOK_AFTER;
	return HOOK_ON_ERROR;
}

static void
read_hook(uint64 row, Hook *hook)
{
	HeapTuple	tuple = SPI_tuptable->vals[row];
	TupleDesc	desc = SPI_tuptable->tupdesc;
	Datum		value;
	char	   *object_class;

	spi_get_datum(row, 1, &value);
	memcpy(&hook->id, DatumGetUUIDP(value), UUID_LEN);
	strlcpy(hook->id_text, SPI_getvalue(tuple, desc, 1), sizeof(hook->id_text));
	hook->version = spi_get_int32(row, 2);
	spi_get_datum(row, 3, &value);
	memcpy(&hook->tenant_id, DatumGetUUIDP(value), UUID_LEN);
	hook->any_connector = !spi_get_datum(row, 4, &value);
	if (!hook->any_connector)
		memcpy(&hook->connector_id, DatumGetUUIDP(value), UUID_LEN);
	object_class = SPI_getvalue(tuple, desc, 5);
	hook->object_class = object_class ? MemoryContextStrdup(hooks_cxt, object_class) : NULL;
	hook->object_class_len = object_class ? strlen(object_class) : 0;
	hook->phase = phase_from_text(SPI_getvalue(tuple, desc, 6));
	hook->script = MemoryContextStrdup(hooks_cxt, SPI_getvalue(tuple, desc, 7));
	hook->timeout_ms = spi_get_int32(row, 8);
	hook->memory_kb = spi_get_int32(row, 9);
	hook->ignore_failure = spi_get_datum(row, 10, &value) && DatumGetBool(value);
	snprintf(hook->cache_key, sizeof(hook->cache_key), "%s:%d", hook->id_text, hook->version);
}

void
hook_cache_refresh(void)
{
	uint64		generation = worker_config_generation();
	Datum		args[2];

	if (generation == loaded_generation && loaded_generation != 0)
		return;
	if (hooks_cxt == NULL)
		hooks_cxt = AllocSetContextCreate(TopMemoryContext, "xprov hooks", ALLOCSET_DEFAULT_SIZES);

	/* the limits are capped by the settings in force now, not at definition */
	args[0] = Int32GetDatum(xprov_hook_max_timeout_ms);
	args[1] = Int32GetDatum(xprov_hook_max_memory_kb);
	saved_plan_execute(&load_hooks, args, NULL, true, 0);

	MemoryContextReset(hooks_cxt);
	nhooks = (int) SPI_processed;
	hooks = MemoryContextAllocZero(hooks_cxt, sizeof(Hook) * Max(nhooks, 1));
	matches = MemoryContextAlloc(hooks_cxt, sizeof(Hook *) * Max(nhooks, 1));
	for (int i = 0; i < nhooks; i++)
		read_hook(i, &hooks[i]);
	loaded_generation = generation;
}

void
hook_cache_forget(void)
{
	if (hooks_cxt != NULL)
		MemoryContextReset(hooks_cxt);
	hooks = NULL;
	matches = NULL;
	nhooks = 0;
	loaded_generation = 0;
}

static bool
applies(const Hook *hook, const pg_uuid_t *tenant_id, const pg_uuid_t *connector_id,
		const char *object_class, int len)
{
	return memcmp(&hook->tenant_id, tenant_id, UUID_LEN) == 0 &&
		(hook->any_connector || memcmp(&hook->connector_id, connector_id, UUID_LEN) == 0) &&
		(hook->object_class == NULL ||
		 (object_class != NULL && hook->object_class_len == len &&
		  memcmp(hook->object_class, object_class, len) == 0));
}

bool
hook_cache_empty(void)
{
	return nhooks == 0;
}

bool
hook_cache_any(const pg_uuid_t *tenant_id, const pg_uuid_t *connector_id,
			   const char *object_class, int len)
{
	for (int i = 0; i < nhooks; i++)
		if (applies(&hooks[i], tenant_id, connector_id, object_class, len))
			return true;
	return false;
}

const Hook **
hook_cache_lookup(const pg_uuid_t *tenant_id, const pg_uuid_t *connector_id,
				  const char *object_class, HookPhase phase, int *count)
{
	*count = 0;
	for (int i = 0; i < nhooks; i++)
		if (hooks[i].phase == phase &&
			applies(&hooks[i], tenant_id, connector_id, object_class,
					object_class ? strlen(object_class) : 0))
			matches[(*count)++] = &hooks[i];
	return matches;
}
