/*-------------------------------------------------------------------------
 *
 * worker.h
 *	  The launcher and the background processes it starts: the workers
 *	  (worker.c), the reconciler (reconciler.c), the webhook sender
 *	  (webhook_sender.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef WORKER_H
#define WORKER_H

#include "fmgr.h"

extern void worker_register_launcher(void);

extern PGDLLEXPORT void xprov_launcher_main(Datum arg);
extern PGDLLEXPORT void xprov_worker_main(Datum arg);
extern PGDLLEXPORT void xprov_reconciler_main(Datum arg);
extern PGDLLEXPORT void xprov_webhooks_main(Datum arg);	/* webhook_sender.c */

#endif							/* WORKER_H */
