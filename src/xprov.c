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
#include "url_policy.h"
#include "drop_database.h"
#include "worker.h"
#include "worker_shmem.h"
#include "tenant_guard.h"
#include "xprov.h"

PG_MODULE_MAGIC;

int			xprov_max_attempts = 10;
int			xprov_retry_base_ms = 2000;
int			xprov_retry_max_ms = 3600 * 1000;
int			xprov_max_attributes_kb = 1024;
int			xprov_cursor_reset_ms = 60 * 1000;
char	   *xprov_database_name = NULL;
int			xprov_workers = 1;
int			xprov_batch_size = 100;
int			xprov_max_in_flight = 64;
int			xprov_http_timeout_ms = 30 * 1000;
int			xprov_http_connect_timeout_ms = 5 * 1000;
int			xprov_worker_lease_ms = 30 * 60 * 1000;
int			xprov_worker_nap_ms = 5 * 1000;
int			xprov_max_response_kb = 1024;
char	   *xprov_allowed_hosts = NULL;
int			xprov_hook_max_timeout_ms = 5 * 1000;
int			xprov_hook_max_memory_kb = 64 * 1024;
char	   *xprov_tenant_id = NULL;
int			xprov_webhook_max_attempts = 10;
int			xprov_webhook_timeout_ms = 10 * 1000;
int			xprov_reconcile_page_size = 1000;

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
}

/*
 * Settings of the background worker and its HTTP engine.  The database is
 * fixed at server start; the rest are re-read on SIGHUP.
 */
static void
define_worker_settings(void)
{
	DefineCustomStringVariable("xprov.database_name",
							   "Database the xprov background workers connect to.",
							   NULL,
							   &xprov_database_name,
							   "postgres",
							   PGC_POSTMASTER, 0,
							   NULL, NULL, NULL);
	DefineCustomIntVariable("xprov.workers",
							"Number of xprov background workers.",
							"0 disables the worker; operations of worker connectors then wait.",
							&xprov_workers,
							1, 0, XPROV_MAX_WORKERS,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("xprov.batch_size",
							"Operations a worker claims per transaction.",
							NULL,
							&xprov_batch_size,
							100, 1, 10000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("xprov.max_in_flight",
							"HTTP requests a worker has in flight at once, over all connectors.",
							"A connector's config can lower it for that connector (max_in_flight).",
							&xprov_max_in_flight,
							64, 1, 1024,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("xprov.http_timeout",
							"Longest time one HTTP exchange may take.",
							NULL,
							&xprov_http_timeout_ms,
							30 * 1000, 10, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("xprov.http_connect_timeout",
							"Longest time to establish an HTTP connection.",
							NULL,
							&xprov_http_connect_timeout_ms,
							5 * 1000, 10, 600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("xprov.worker_lease",
							"How long a worker's claim on an operation lasts.",
							"A worker that dies has its claims returned at once when it restarts; the lease only matters when a worker slot goes away for good.",
							&xprov_worker_lease_ms,
							30 * 60 * 1000, 1000, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("xprov.worker_nap",
							"Longest time an idle worker sleeps before looking for work anyway.",
							"Enqueues wake the worker at commit; the nap only covers what nobody announced.",
							&xprov_worker_nap_ms,
							5 * 1000, 10, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("xprov.max_response_size",
							"Largest HTTP response body the worker reads; longer ones are truncated.",
							NULL,
							&xprov_max_response_kb,
							1024, 1, 1024 * 1024,
							PGC_SIGHUP, GUC_UNIT_KB,
							NULL, NULL, NULL);

	/*
	 * Superuser only: it is the boundary between what tenants may configure
	 * (their connectors' URLs) and what the server may reach.  Read at every
	 * request, so a reload narrows it for requests not yet sent.
	 */
	DefineCustomStringVariable("xprov.allowed_hosts",
							   "Hosts connectors may send requests to.",
							   "A comma-separated list of host names or IP addresses, \"*.domain\" for any subdomain, each optionally with \":port\"; empty allows every host.",
							   &xprov_allowed_hosts,
							   "",
							   PGC_SUSET, GUC_LIST_INPUT,
							   url_policy_check_allowed_hosts, NULL, NULL);
}

static void
define_hook_settings(void)
{
	DefineCustomIntVariable("xprov.hook_max_timeout",
							"Largest time limit a JavaScript hook may ask for.",
							"Hooks asking for more are refused; hooks defined before a lowering are held to it.",
							&xprov_hook_max_timeout_ms,
							5 * 1000, 1, 60 * 1000,
							PGC_SUSET, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("xprov.hook_max_memory",
							"Largest memory limit a JavaScript hook may ask for.",
							"Hooks asking for more are refused; hooks defined before a lowering are held to it.",
							&xprov_hook_max_memory_kb,
							64 * 1024, 64, 1024 * 1024,
							PGC_SUSET, GUC_UNIT_KB,
							NULL, NULL, NULL);
}

static void
define_webhook_settings(void)
{
	DefineCustomIntVariable("xprov.webhook_max_attempts",
							"Attempts at a webhook delivery before it is dead-lettered.",
							"Failed attempts are retried after xprov.retry_base, doubling up to xprov.retry_max.",
							&xprov_webhook_max_attempts,
							10, 1, 1000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("xprov.webhook_timeout",
							"How long a subscriber may take to answer a webhook delivery.",
							NULL,
							&xprov_webhook_timeout_ms,
							10 * 1000, 100, 300 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
}

static void
define_reconciliation_settings(void)
{
	DefineCustomStringVariable("xprov.tenant_id",
							   "The tenant this session acts for.",
							   "Row-level security shows roles other than xprov_admin only this tenant's rows, "
							   "and xprov's functions refuse them anything of another tenant.",
							   &xprov_tenant_id,
							   "",
							   PGC_USERSET, 0,
							   tenant_guard_check_tenant_setting, NULL, NULL);
	DefineCustomIntVariable("xprov.reconcile_page_size",
							"Accounts the reconciler asks the target for per list page.",
							NULL,
							&xprov_reconcile_page_size,
							1000, 1, 1000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
}

void
_PG_init(void)
{
	define_queue_settings();
	define_worker_settings();
	define_hook_settings();
	define_reconciliation_settings();
	define_webhook_settings();
	MarkGUCPrefixReserved("xprov");

	if (process_shared_preload_libraries_in_progress)
	{
		claim_cursor_shmem_init();
		worker_shmem_init();
		worker_register_launcher();
		drop_database_install_hook();
	}
}
