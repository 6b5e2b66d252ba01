/*-------------------------------------------------------------------------
 *
 * xprov.c
 *	  Module entry point: settings and shared-memory registration.
 *
 * The queue's SQL-callable functions live in enqueue.c, dequeue.c and
 * outcome.c; the shared claim cursor in claim_cursor.c.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/guc.h"

#include "claim_cursor.h"
#include "xprov.h"

PG_MODULE_MAGIC;

int			xprov_max_attempts = 10;
int			xprov_retry_base_ms = 2000;
int			xprov_retry_max_ms = 3600 * 1000;
int			xprov_max_attributes_kb = 1024;
int			xprov_cursor_reset_ms = 60 * 1000;

void		_PG_init(void);

static void
define_queue_settings(void)
{
	DefineCustomIntVariable("xprov.max_attempts",
							"Attempts of an operation before it is dead-lettered.",
							NULL,
							&xprov_max_attempts,
							10, 1, 1000,
							PGC_USERSET, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("xprov.retry_base",
							"First retry delay of a transiently failed operation.",
							"Later retries double it, up to xprov.retry_max, with jitter.",
							&xprov_retry_base_ms,
							2000, 0, INT_MAX,
							PGC_USERSET, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("xprov.retry_max",
							"Longest retry delay of a transiently failed operation.",
							NULL,
							&xprov_retry_max_ms,
							3600 * 1000, 0, INT_MAX,
							PGC_USERSET, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("xprov.max_attributes_size",
							"Largest attributes document an operation may carry.",
							NULL,
							&xprov_max_attributes_kb,
							1024, 1, 1024 * 1024,
							PGC_USERSET, GUC_UNIT_KB,
							NULL, NULL, NULL);
	DefineCustomIntVariable("xprov.cursor_reset_interval",
							"How often claims restart their scan from the head of the ready index.",
							"A backstop for rows made ready behind the claim cursor by transactions that did not report them, such as prepared transactions.",
							&xprov_cursor_reset_ms,
							60 * 1000, 10, 3600 * 1000,
							PGC_SUSET, GUC_UNIT_MS,
							NULL, NULL, NULL);
	MarkGUCPrefixReserved("xprov");
}

void
_PG_init(void)
{
	define_queue_settings();

	if (process_shared_preload_libraries_in_progress)
		claim_cursor_shmem_init();
}
