/*-------------------------------------------------------------------------
 *
 * hook_cache.h
 *	  The background worker's copy of the enabled hooks.
 *
 * Loaded in the worker's transaction whenever a committed change of hooks
 * bumped the shared generation (worker_config_generation), and looked up
 * outside transactions while operations run.  Hooks are kept in run order
 * (order option, tenant-wide before connector-wide before object-class
 * hooks, then creation), so a lookup only filters.
 *
 *-------------------------------------------------------------------------
 */
#ifndef HOOK_CACHE_H
#define HOOK_CACHE_H

#include "utils/uuid.h"

typedef enum HookPhase
{
	HOOK_BEFORE,
	HOOK_AFTER,
	HOOK_ON_ERROR
} HookPhase;

typedef struct Hook
{
	pg_uuid_t	id;
	char		id_text[37];
	int			version;
	pg_uuid_t	tenant_id;
	bool		any_connector;
	pg_uuid_t	connector_id;
	char	   *object_class;	/* NULL: any */
	int			object_class_len;
	HookPhase	phase;
	char	   *script;
	int			timeout_ms;
	int			memory_kb;
	bool		ignore_failure;
	char		cache_key[48];	/* id:version, the sandbox's cache key */
} Hook;

/* In a transaction, connected to SPI: reload if hooks changed. */
extern void hook_cache_refresh(void);

/* Drop what was loaded (the extension was dropped or re-created). */
extern void hook_cache_forget(void);

/* Whether there are no hooks at all (the common case: nothing to match). */
extern bool hook_cache_empty(void);

/*
 * Whether any hook (of any phase) applies to operations of this kind.  The
 * object class is len bytes, not necessarily NUL-terminated (a text
 * datum's): the worker asks this for every operation it claims.
 */
extern bool hook_cache_any(const pg_uuid_t *tenant_id, const pg_uuid_t *connector_id,
						   const char *object_class, int len);

/*
 * The hooks of a phase for operations of this kind, in run order; *count
 * gets their number.  The array stays valid until the next refresh.
 */
extern const Hook **hook_cache_lookup(const pg_uuid_t *tenant_id, const pg_uuid_t *connector_id,
									  const char *object_class, HookPhase phase, int *count);

extern const char *hook_phase_name(HookPhase phase);

#endif							/* HOOK_CACHE_H */
