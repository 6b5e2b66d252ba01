/*-------------------------------------------------------------------------
 *
 * xprov.h
 *	  Settings shared by every module of xprov.
 *
 * Exports the GUC variables defined in xprov.c.  Each module has its own
 * header for its functions.
 *
 *-------------------------------------------------------------------------
 */
#ifndef XPROV_H
#define XPROV_H

#define XPROV_MAX_WORKERS 16

/*
 * Longest names (object classes, connector and rule names) and keys (target
 * uids, idempotency keys), in characters; the SQL side has the same limits
 * (xprov._check_lengths).
 */
#define XPROV_MAX_NAME_CHARS 255
#define XPROV_MAX_KEY_CHARS 1024

/* GUCs (xprov.c) */
extern int	xprov_max_attempts;
extern int	xprov_retry_base_ms;
extern int	xprov_retry_max_ms;
extern int	xprov_max_attributes_kb;
extern int	xprov_cursor_reset_ms;

/* Worker and HTTP settings (xprov.c) */
extern char *xprov_database_name;
extern int	xprov_workers;
extern int	xprov_batch_size;
extern int	xprov_max_in_flight;
extern int	xprov_http_timeout_ms;
extern int	xprov_http_connect_timeout_ms;
extern int	xprov_worker_lease_ms;
extern int	xprov_worker_nap_ms;
extern int	xprov_max_response_kb;
extern char *xprov_allowed_hosts;

/* JavaScript hooks (xprov.c) */
extern int	xprov_hook_max_timeout_ms;
extern int	xprov_hook_max_memory_kb;

/* Reconciliation (xprov.c) */
extern char *xprov_tenant_id;
extern int	xprov_reconcile_page_size;

/* Webhooks (xprov.c) */
extern int	xprov_webhook_max_attempts;
extern int	xprov_webhook_timeout_ms;

#endif							/* XPROV_H */
