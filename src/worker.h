/*-------------------------------------------------------------------------
 *
 * worker.h
 *	  The launcher and the background workers (worker.c).
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

#endif							/* WORKER_H */
