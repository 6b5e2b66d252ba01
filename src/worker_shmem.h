/*-------------------------------------------------------------------------
 *
 * worker_shmem.h
 *	  What the background workers share with every backend: who they are,
 *	  how to wake them, and what they are doing.
 *
 * One slot per worker (xprov.workers).  Only plain data lives here: pids,
 * procnos, counters and fixed-size text; never a pointer into a process.
 * Enqueueing backends wake the workers of their database at commit
 * (worker_wake_at_commit, called from the claim cursor's commit callback
 * when the transaction made worker lanes ready).
 *
 *-------------------------------------------------------------------------
 */
#ifndef WORKER_SHMEM_H
#define WORKER_SHMEM_H

#include "datatype/timestamp.h"

#define WORKER_ERROR_LEN 256

extern void worker_shmem_init(void);

/* backends */
extern void worker_wake_at_commit(void);
extern void worker_stop_for_database(Oid dboid);
extern void worker_config_changed_at_commit(void);

/*
 * bumped by every committed change of hooks or connectors; 0 without shared
 * memory
 */
extern uint64 worker_config_generation(void);
extern bool worker_config_change_pending(void);

/* the same for tenant bindings (tenant_guard.c caches its answers) */
extern void worker_bindings_changed_at_commit(void);
extern bool worker_bindings_change_pending(void);
extern uint64 worker_bindings_generation(void);

/* the processes of which there is one per cluster, beside the workers */
typedef enum SoleProcessKind
{
	SOLE_RECONCILER,
	SOLE_WEBHOOKS,
	NUM_SOLE_PROCESSES
} SoleProcessKind;

/* the reconciler or the webhook sender, about itself */
extern void worker_shmem_set_sole_process(SoleProcessKind kind);

/* the launcher */
extern void worker_shmem_set_launcher(int pid);

/* a worker, about itself */
extern void worker_slot_attach(int slot);
extern void worker_slot_set_epoch(int64 epoch);
extern void worker_slot_set_state(const char *state);
extern void worker_slot_count(int64 done, int64 failed);
extern void worker_slot_set_load(int in_flight, int paused_connectors);
extern void worker_slot_set_error(const char *error);

#endif							/* WORKER_SHMEM_H */
