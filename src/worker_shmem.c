/*-------------------------------------------------------------------------
 *
 * worker_shmem.c
 *	  Shared state of the background workers, the commit-time wake-up, and
 *	  the SQL functions that read it: xprov.worker_status() and
 *	  xprov.wait_idle().
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "worker_shmem.h"
#include "xprov.h"

PG_FUNCTION_INFO_V1(xprov_worker_status);
PG_FUNCTION_INFO_V1(xprov_wait_idle);
PG_FUNCTION_INFO_V1(xprov_hooks_changed);
PG_FUNCTION_INFO_V1(xprov_wake_reconciler);
PG_FUNCTION_INFO_V1(xprov_wake_webhooks);

typedef struct WorkerSlot
{
	int			pid;			/* 0: no worker */
	int			procno;
	Oid			dboid;
	int64		epoch;
	TimestampTz started_at;
	char		state[32];
	int64		ops_done;
	int64		ops_failed;
	int			in_flight;
	int			paused_connectors;
	char		last_error[WORKER_ERROR_LEN];
	TimestampTz last_error_at;
} WorkerSlot;

/* A process of which there is one beside the workers: the reconciler, the webhook sender. */
typedef struct SoleProcess
{
	int			pid;			/* 0: none */
	int			procno;
	Oid			dboid;
} SoleProcess;

typedef struct WorkerShared
{
	slock_t		mutex;
	int			launcher_pid;
	SoleProcess sole[NUM_SOLE_PROCESSES];
	pg_atomic_uint64 config_generation; /* bumped when hooks or connectors
										 * change */
	pg_atomic_uint64 bindings_generation;	/* bumped when tenant bindings
											 * change */
	WorkerSlot	slots[XPROV_MAX_WORKERS];
} WorkerShared;

static WorkerShared *worker_shared = NULL;
static WorkerSlot *my_slot = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void
worker_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(WorkerShared)));
}

static void
worker_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	worker_shared = ShmemInitStruct("xprov workers", sizeof(WorkerShared), &found);
	if (!found)
	{
		memset(worker_shared, 0, sizeof(WorkerShared));
		SpinLockInit(&worker_shared->mutex);
		pg_atomic_init_u64(&worker_shared->config_generation, 1);
		pg_atomic_init_u64(&worker_shared->bindings_generation, 1);
	}
	LWLockRelease(AddinShmemInitLock);
}

void
worker_shmem_init(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = worker_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = worker_shmem_startup;
}

/*
 * Runs in a commit callback: it must not fail.  A stale procno (a worker
 * that just exited) at worst sets some other process's latch, which only
 * costs that process a spurious wake-up.
 */
void
worker_wake_at_commit(void)
{
	if (worker_shared == NULL)
		return;
	for (int i = 0; i < XPROV_MAX_WORKERS; i++)
	{
		WorkerSlot *slot = &worker_shared->slots[i];
		int			procno = slot->procno;

		if (slot->pid != 0 && slot->dboid == MyDatabaseId &&
			procno >= 0 && procno < (int) ProcGlobal->allProcCount)
			SetLatch(&ProcGlobal->allProcs[procno].procLatch);
	}
}

static bool config_change_pending = false;
static bool bindings_change_pending = false;
static bool sole_wake_pending[NUM_SOLE_PROCESSES];
static bool commit_callback_registered = false;

static void
wake_sole_process(SoleProcessKind kind)
{
	SoleProcess *sole = &worker_shared->sole[kind];
	int			procno = sole->procno;

	if (sole->pid != 0 && sole->dboid == MyDatabaseId &&
		procno >= 0 && procno < (int) ProcGlobal->allProcCount)
		SetLatch(&ProcGlobal->allProcs[procno].procLatch);
}

/* What a committed transaction announces; it must not fail. */
static void
commit_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT && worker_shared != NULL)
	{
		if (config_change_pending)
		{
			pg_atomic_fetch_add_u64(&worker_shared->config_generation, 1);
			worker_wake_at_commit();
		}
		if (bindings_change_pending)
			pg_atomic_fetch_add_u64(&worker_shared->bindings_generation, 1);
		for (int kind = 0; kind < NUM_SOLE_PROCESSES; kind++)
			if (sole_wake_pending[kind])
				wake_sole_process(kind);
	}
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		event == XACT_EVENT_PARALLEL_COMMIT || event == XACT_EVENT_PARALLEL_ABORT)
	{
		config_change_pending = false;
		bindings_change_pending = false;
		memset(sole_wake_pending, 0, sizeof(sole_wake_pending));
	}
}

static void
register_commit_callback(void)
{
	if (!commit_callback_registered)
	{
		RegisterXactCallback(commit_callback, NULL);
		commit_callback_registered = true;
	}
}

/*
 * The current transaction changes what workers load once (hooks): when it
 * commits, they reload it before their next claim.
 */
void
worker_config_changed_at_commit(void)
{
	register_commit_callback();
	config_change_pending = true;
}

/* This transaction has changed hooks or connectors (it may still roll back). */
bool
worker_config_change_pending(void)
{
	return config_change_pending;
}

/* xprov._hooks_changed(): called by the hook catalog functions */
Datum
xprov_hooks_changed(PG_FUNCTION_ARGS)
{
	worker_config_changed_at_commit();
	PG_RETURN_VOID();
}

uint64
worker_config_generation(void)
{
	return worker_shared ? pg_atomic_read_u64(&worker_shared->config_generation) : 0;
}

/*
 * The current transaction changes tenant bindings: when it commits, every
 * backend's cached answer (tenant_guard.c) is out of date.  Bumped after
 * the commit is visible, so a backend that reads the new generation and
 * then takes a snapshot sees the change.
 */
void
worker_bindings_changed_at_commit(void)
{
	register_commit_callback();
	bindings_change_pending = true;
}

/* This transaction has changed tenant bindings (it may still roll back). */
bool
worker_bindings_change_pending(void)
{
	return bindings_change_pending;
}

uint64
worker_bindings_generation(void)
{
	return worker_shared ? pg_atomic_read_u64(&worker_shared->bindings_generation) : 0;
}

/*
 * Ask the workers, the reconciler and the webhook sender connected to a database to exit (DROP
 * DATABASE).  Only pids published by our own processes are signalled.
 */
void
worker_stop_for_database(Oid dboid)
{
	int			pids[XPROV_MAX_WORKERS + NUM_SOLE_PROCESSES];
	int			count = 0;

	if (worker_shared == NULL)
		return;
	SpinLockAcquire(&worker_shared->mutex);
	for (int i = 0; i < XPROV_MAX_WORKERS; i++)
		if (worker_shared->slots[i].pid != 0 && worker_shared->slots[i].dboid == dboid)
			pids[count++] = worker_shared->slots[i].pid;
	for (int kind = 0; kind < NUM_SOLE_PROCESSES; kind++)
		if (worker_shared->sole[kind].pid != 0 && worker_shared->sole[kind].dboid == dboid)
			pids[count++] = worker_shared->sole[kind].pid;
	SpinLockRelease(&worker_shared->mutex);
	for (int i = 0; i < count; i++)
		kill(pids[i], SIGTERM);
}

void
worker_shmem_set_launcher(int pid)
{
	SpinLockAcquire(&worker_shared->mutex);
	worker_shared->launcher_pid = pid;
	SpinLockRelease(&worker_shared->mutex);
}

static void
worker_slot_detach(int code, Datum arg)
{
	SpinLockAcquire(&worker_shared->mutex);
	my_slot->pid = 0;
	my_slot->procno = -1;
	strlcpy(my_slot->state, "stopped", sizeof(my_slot->state));
	SpinLockRelease(&worker_shared->mutex);
	my_slot = NULL;
}

/* Counters and the last error survive a worker's restart. */
void
worker_slot_attach(int slot)
{
	my_slot = &worker_shared->slots[slot];
	SpinLockAcquire(&worker_shared->mutex);
	my_slot->pid = MyProcPid;
	my_slot->procno = MyProc->pgprocno;
	my_slot->dboid = MyDatabaseId;
	my_slot->epoch = 0;
	my_slot->started_at = GetCurrentTimestamp();
	my_slot->in_flight = 0;
	my_slot->paused_connectors = 0;
	strlcpy(my_slot->state, "starting", sizeof(my_slot->state));
	SpinLockRelease(&worker_shared->mutex);
	before_shmem_exit(worker_slot_detach, (Datum) 0);
}

void
worker_slot_set_epoch(int64 epoch)
{
	SpinLockAcquire(&worker_shared->mutex);
	my_slot->epoch = epoch;
	SpinLockRelease(&worker_shared->mutex);
}

void
worker_slot_set_state(const char *state)
{
	SpinLockAcquire(&worker_shared->mutex);
	strlcpy(my_slot->state, state, sizeof(my_slot->state));
	SpinLockRelease(&worker_shared->mutex);
}

void
worker_slot_count(int64 done, int64 failed)
{
	SpinLockAcquire(&worker_shared->mutex);
	my_slot->ops_done += done;
	my_slot->ops_failed += failed;
	SpinLockRelease(&worker_shared->mutex);
}

void
worker_slot_set_load(int in_flight, int paused_connectors)
{
	SpinLockAcquire(&worker_shared->mutex);
	my_slot->in_flight = in_flight;
	my_slot->paused_connectors = paused_connectors;
	SpinLockRelease(&worker_shared->mutex);
}

void
worker_slot_set_error(const char *error)
{
	SpinLockAcquire(&worker_shared->mutex);
	strlcpy(my_slot->last_error, error, sizeof(my_slot->last_error));
	my_slot->last_error_at = GetCurrentTimestamp();
	SpinLockRelease(&worker_shared->mutex);
}

/* The reconciler or the webhook sender, about itself: it is woken at commit. */
static void
sole_process_detach(int code, Datum arg)
{
	SoleProcess *sole = &worker_shared->sole[DatumGetInt32(arg)];

	SpinLockAcquire(&worker_shared->mutex);
	sole->pid = 0;
	sole->procno = -1;
	SpinLockRelease(&worker_shared->mutex);
}

void
worker_shmem_set_sole_process(SoleProcessKind kind)
{
	SoleProcess *sole = &worker_shared->sole[kind];

	SpinLockAcquire(&worker_shared->mutex);
	sole->pid = MyProcPid;
	sole->procno = MyProc->pgprocno;
	sole->dboid = MyDatabaseId;
	SpinLockRelease(&worker_shared->mutex);
	before_shmem_exit(sole_process_detach, Int32GetDatum(kind));
}

/* xprov._wake_reconciler(): a run was requested, approved or cancelled */
Datum
xprov_wake_reconciler(PG_FUNCTION_ARGS)
{
	register_commit_callback();
	sole_wake_pending[SOLE_RECONCILER] = true;
	PG_RETURN_VOID();
}

/* xprov._wake_webhooks(): deliveries were written or made due */
Datum
xprov_wake_webhooks(PG_FUNCTION_ARGS)
{
	register_commit_callback();
	sole_wake_pending[SOLE_WEBHOOKS] = true;
	PG_RETURN_VOID();
}

static void
require_shared_memory(void)
{
	if (worker_shared == NULL)
		ereport(ERROR,
				errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				errmsg("xprov is not loaded through shared_preload_libraries"),
				errdetail("The background workers only run when the server loads xprov at start-up."),
				errhint("Add xprov to shared_preload_libraries in postgresql.conf and restart the server."));
}

Datum
xprov_worker_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	WorkerSlot	copy[XPROV_MAX_WORKERS];

	require_shared_memory();
	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);

	SpinLockAcquire(&worker_shared->mutex);
	memcpy(copy, worker_shared->slots, sizeof(copy));
	SpinLockRelease(&worker_shared->mutex);

	for (int i = 0; i < XPROV_MAX_WORKERS; i++)
	{
		WorkerSlot *slot = &copy[i];
		Datum		values[12];
		bool		nulls[12] = {0};
		char	   *dbname;

		if (slot->pid == 0)
			continue;
		dbname = get_database_name(slot->dboid);
		values[0] = Int32GetDatum(i);
		values[1] = Int32GetDatum(slot->pid);
		values[2] = dbname ? CStringGetTextDatum(dbname) : (Datum) 0;
		nulls[2] = dbname == NULL;
		values[3] = CStringGetTextDatum(slot->state);
		values[4] = TimestampTzGetDatum(slot->started_at);
		values[5] = Int64GetDatum(slot->epoch);
		nulls[5] = slot->epoch == 0;
		values[6] = Int64GetDatum(slot->ops_done);
		values[7] = Int64GetDatum(slot->ops_failed);
		values[8] = Int32GetDatum(slot->in_flight);
		values[9] = Int32GetDatum(slot->paused_connectors);
		values[10] = CStringGetTextDatum(slot->last_error);
		nulls[10] = slot->last_error[0] == '\0';
		values[11] = TimestampTzGetDatum(slot->last_error_at);
		nulls[11] = slot->last_error_at == 0;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * Busy: an operation of an enabled worker connector is leased, or ready and
 * due.  Each check runs in its own snapshot, so commits by the workers are
 * seen as they happen.
 */
static bool
worker_work_left(void)
{
	bool		busy;
	bool		isnull;

	/* read_only = false: a fresh snapshot per check */
	SPI_connect();
	SPI_execute("SELECT EXISTS (SELECT 1 FROM xprov.lane l "
				"  JOIN xprov.connector c ON c.id = l.connector_id AND c.enabled "
				" WHERE l.claimant = 'w' "
				"   AND (l.state = 'l' OR (l.state = 'r' AND l.run_at <= clock_timestamp())))",
				false, 1);
	busy = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	return busy;
}

Datum
xprov_wait_idle(PG_FUNCTION_ARGS)
{
	TimestampTz deadline;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				errmsg("timeout must not be null"),
				errhint("Pass how long to wait, for example '30 seconds'."));
	deadline = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
													   TimestampTzGetDatum(GetCurrentTimestamp()),
													   PG_GETARG_DATUM(0)));
	for (;;)
	{
		TimestampTz now;

		if (!worker_work_left())
			PG_RETURN_BOOL(true);
		now = GetCurrentTimestamp();
		if (now >= deadline)
			PG_RETURN_BOOL(false);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Min(20, (deadline - now) / 1000 + 1), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}
