/*-------------------------------------------------------------------------
 *
 * script_sql.h
 *	  Turning sandbox outcomes into SQL errors; limits of a hook call.
 *
 * Shared by the SQL functions for hook authors (script_sql.c) and the hook
 * catalog functions.
 *
 *-------------------------------------------------------------------------
 */
#ifndef SCRIPT_SQL_H
#define SCRIPT_SQL_H

#include "sandbox.h"

/* ERROR (22023) unless the limits are within the xprov.hook_max_* GUCs. */
extern void script_check_limits(int timeout_ms, int memory_kb);

/* ERROR with the outcome's SQLSTATE and message, unless it is SANDBOX_OK. */
extern void script_report(const SandboxCall *call);

#endif							/* SCRIPT_SQL_H */
