/*-------------------------------------------------------------------------
 *
 * launcher.c
 *	  The launcher: keeps xprov.workers background workers running.
 *
 * The launcher is the one static background worker (registered at server
 * start); it starts the workers, and the reconciler and the webhook sender
 * beside them whenever there is at least one worker, as dynamic background workers and restarts
 * them itself, backing off when one keeps failing (a missing database, for
 * instance, would otherwise be a FATAL every few seconds), and it starts or
 * stops workers when xprov.workers changes on reload.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

#include "worker.h"
#include "worker_shmem.h"
#include "xprov.h"

/* A worker that ran this long before stopping is restarted at once. */
#define HEALTHY_RUN_MS		10000
#define FIRST_BACKOFF_MS	1000
#define MAX_BACKOFF_MS		30000

typedef struct LaunchedWorker
{
	BackgroundWorkerHandle *handle;
	TimestampTz started_at;
	TimestampTz restart_at;
	int			backoff_ms;
} LaunchedWorker;

/* after the workers' slots: the reconciler's, then the webhook sender's */
#define RECONCILER_SLOT XPROV_MAX_WORKERS
#define WEBHOOK_SLOT	(XPROV_MAX_WORKERS + 1)
#define LAST_SLOT		WEBHOOK_SLOT

static LaunchedWorker launched[LAST_SLOT + 1];

/* Whether a slot should have a process running now. */
static bool
slot_wanted(int slot)
{
	if (slot == RECONCILER_SLOT || slot == WEBHOOK_SLOT)
		return xprov_workers > 0;
	return slot < xprov_workers;
}

void
worker_register_launcher(void)
{
	BackgroundWorker worker = {0};

	if (IsBinaryUpgrade)
		return;
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 5;
	strlcpy(worker.bgw_library_name, "xprov", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "xprov_launcher_main", BGW_MAXLEN);
	strlcpy(worker.bgw_name, "xprov launcher", BGW_MAXLEN);
	strlcpy(worker.bgw_type, "xprov launcher", BGW_MAXLEN);
	RegisterBackgroundWorker(&worker);
}

static bool
start_worker(int slot, TimestampTz now)
{
	BackgroundWorker worker = {0};
	LaunchedWorker *w = &launched[slot];

	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	worker.bgw_main_arg = Int32GetDatum(slot);
	worker.bgw_notify_pid = MyProcPid;
	strlcpy(worker.bgw_library_name, "xprov", BGW_MAXLEN);
	if (slot == RECONCILER_SLOT)
	{
		strlcpy(worker.bgw_function_name, "xprov_reconciler_main", BGW_MAXLEN);
		strlcpy(worker.bgw_name, "xprov reconciler", BGW_MAXLEN);
		strlcpy(worker.bgw_type, "xprov reconciler", BGW_MAXLEN);
	}
	else if (slot == WEBHOOK_SLOT)
	{
		strlcpy(worker.bgw_function_name, "xprov_webhooks_main", BGW_MAXLEN);
		strlcpy(worker.bgw_name, "xprov webhooks", BGW_MAXLEN);
		strlcpy(worker.bgw_type, "xprov webhooks", BGW_MAXLEN);
	}
	else
	{
		strlcpy(worker.bgw_function_name, "xprov_worker_main", BGW_MAXLEN);
		snprintf(worker.bgw_name, BGW_MAXLEN, "xprov worker %d", slot);
		strlcpy(worker.bgw_type, "xprov worker", BGW_MAXLEN);
	}

	if (!RegisterDynamicBackgroundWorker(&worker, &w->handle))
	{
		w->handle = NULL;
		w->restart_at = TimestampTzPlusMilliseconds(now, MAX_BACKOFF_MS);
		ereport(LOG,
				errmsg("xprov launcher: could not start worker %d", slot),
				errdetail("No background worker slot is free."),
				errhint("Raise max_worker_processes (it must cover xprov.workers, the launcher and other extensions)."));
		return false;
	}
	w->started_at = now;
	return true;
}

/* Returns ms until this slot needs attention again, or -1. */
static long
tend_slot(int slot, TimestampTz now)
{
	LaunchedWorker *w = &launched[slot];
	pid_t		pid;

	if (w->handle != NULL)
	{
		BgwHandleStatus status = GetBackgroundWorkerPid(w->handle, &pid);

		if (status == BGWH_POSTMASTER_DIED)
			proc_exit(1);
		if (!slot_wanted(slot) && status != BGWH_STOPPED)
		{
			TerminateBackgroundWorker(w->handle);
			return -1;
		}
		if (status != BGWH_STOPPED)
			return -1;

		pfree(w->handle);
		w->handle = NULL;
		if (TimestampDifferenceExceeds(w->started_at, now, HEALTHY_RUN_MS))
			w->backoff_ms = FIRST_BACKOFF_MS;
		else
			w->backoff_ms = Min(Max(w->backoff_ms * 2, FIRST_BACKOFF_MS), MAX_BACKOFF_MS);
		w->restart_at = TimestampTzPlusMilliseconds(now, w->backoff_ms);
	}
	if (!slot_wanted(slot))
		return -1;
	if (now < w->restart_at)
		return (long) ((w->restart_at - now) / 1000) + 1;
	start_worker(slot, now);
	return -1;
}

/*
 * The postmaster tells the launcher that a worker started or stopped with
 * SIGUSR1; a launcher without a database connection has no procsignal
 * handler that would set the latch for it.
 */
static void
launcher_sigusr1(SIGNAL_ARGS)
{
	int			save_errno = errno;

	SetLatch(MyLatch);
	errno = save_errno;
}

void
xprov_launcher_main(Datum arg)
{
	pqsignal(SIGTERM, die);
	pqsignal(SIGUSR1, launcher_sigusr1);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	BackgroundWorkerUnblockSignals();
	worker_shmem_set_launcher(MyProcPid);
	pgstat_report_activity(STATE_IDLE, NULL);

	for (;;)
	{
		TimestampTz now = GetCurrentTimestamp();
		long		nap = 10000;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		for (int slot = 0; slot <= LAST_SLOT; slot++)
		{
			long		wait_ms = tend_slot(slot, now);

			if (wait_ms >= 0)
				nap = Min(nap, wait_ms);
		}
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 nap, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}
