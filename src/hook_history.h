/*-------------------------------------------------------------------------
 *
 * hook_history.h
 *	  What the hooks of an attempt did, recorded with the attempt.
 *
 * The worker notes one HookRun per hook it runs.  They are stored with the
 * attempt's outcome (op_result.hooks, op_failure.hooks) as compact text,
 * about a quarter of their JSON, because a hooked operation writes them in
 * the same statement as its outcome: runs separated by spaces, each
 *
 *     <phase letter><outcome letter>:<version>:<duration_us>:<hook id>
 *
 * with the hook id in base64 without padding (22 characters), e.g.
 * "ba:3:12:MUHCwh8GTqmxoCd9adtXKw".  A history with an error message in it
 * (a hook that failed) is stored as JSON instead, as is every history in a
 * database whose xprov is still 0.1.0 (its view parses them as JSON).
 * xprov._hook_history() reads either back as the JSON array that
 * operation_attempts.hooks shows.
 *
 *-------------------------------------------------------------------------
 */
#ifndef HOOK_HISTORY_H
#define HOOK_HISTORY_H

#include "fmgr.h"

#include "hook_cache.h"
#include "work_op.h"

typedef struct HookRun
{
	pg_uuid_t	hook_id;
	int			version;
	HookPhase	phase;
	int64		duration_us;
	const char *outcome;		/* unchanged, attributes, skip, ... (static) */
	char	   *error;			/* failed / ignored: why; else NULL */
} HookRun;

/* Note a run in op->cxt. */
extern void hook_history_add(WorkOp *op, const Hook *hook, int64 duration_us,
							 const char *outcome, const char *error);

/*
 * The attempt's runs as stored (see above), or NULL if no hook ran.  In a
 * transaction.
 */
extern char *hook_history_stored(const WorkOp *op);

/* The attempt's runs as a JSON array, or NULL if no hook ran. */
extern char *hook_history_json(const WorkOp *op);

/* xprov._hook_history(text): a stored history as jsonb. */
extern Datum xprov_hook_history(PG_FUNCTION_ARGS);

#endif							/* HOOK_HISTORY_H */
