/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  The background worker: claims operations, executes them, records what
 *	  happened.
 *
 * One loop, one wait point.  Each turn of the loop may run one short
 * transaction that records the outcomes gathered since the last one and
 * claims the next batch; then, with no transaction or snapshot open, noop
 * operations complete on the spot and the others are driven through their
 * connector protocol over HTTP.  The only sleep is http_engine_wait(),
 * which also watches the latch: enqueueing transactions set it when they
 * commit, so new work is picked up at once; a timer covers retries coming
 * due and anything nobody announced.
 *
 * Before hooks run on the hook thread (hook_thread.h) while the loop goes
 * on: a claimed operation with one waits in a queue, goes to the thread
 * with the others queued when it is idle, and starts once the thread is
 * done with them.
 *
 * Leases carry the worker's epoch: whatever a dead predecessor of this slot
 * held is returned when the slot starts again.  On SIGTERM the worker gives
 * back what it holds and exits.  Errors in a transaction are logged and
 * the loop goes on; nothing here may crash the server.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <malloc.h>

#include "access/xact.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "claim_cursor.h"
#include "connector.h"
#include "dispatch.h"
#include "hook_cache.h"
#include "hook_run.h"
#include "hook_thread.h"
#include "http.h"
#include "protocol.h"
#include "worker.h"
#include "worker_shmem.h"
#include "worker_store.h"
#include "xact_step.h"
#include "xprov.h"

#define MAX_DONE_PER_WAIT 64

/*
 * HTTP outcomes are recorded in batches: while requests are in flight, a
 * transaction every few responses would stall the transfers (nothing moves
 * while the worker is in a transaction).  They wait at most this long.
 */
#define RECORD_DELAY_MS 20

/* Free memory glibc keeps at the top of the heap rather than trimming it. */
#define WORKER_MALLOC_TRIM_THRESHOLD (32 * 1024 * 1024)

typedef struct Worker
{
	int			slot;
	int64		tag;			/* lease tag: epoch * slots + slot; 0 before start */
	Oid			extension;		/* xprov's oid when last seen */
	MemoryContext batch_cxt;	/* claim results; reset after each transaction */
	MemoryContext ops_cxt;		/* parent of each WorkOp's own context */

	FinishedWork finished;		/* outcomes to record in the next transaction */
	WorkOp	   *finished_tail;
	int			nfinished;		/* HTTP operations in finished.ops */
	TimestampTz finished_since; /* when the first of them finished */
	WorkOp	   *claimed;		/* HTTP operations claimed, not yet started */
	WorkOp	   *queued;			/* claimed operations whose first before hook
								 * waits for the hook thread */
	WorkOp	   *queued_tail;
	int			nqueued;
	WorkOp	   *ahead;			/* those the hook thread has (not in held) */
	int			nahead;
	MemoryContext ahead_cxt;	/* the calls handed to the hook thread */
	WorkOp	   *awaiting;		/* operations waiting for the database's
								 * answer (op->awaiting), asked in the next
								 * transaction */
	int			held;			/* HTTP operations in memory */
	bool		want_claim;
	bool		resume_pending; /* a paused connector resumes: look then */
	bool		rewind_claims;	/* and claim from the start of the index */
	TimestampTz last_look;
	int64		done;
	int64		failed;
} Worker;

static Worker w;

static void
finish_op(WorkOp *op)
{
	TimestampTz now;

	/* a target that echoes the request must not put its credentials on record */
	if (op->outcome.error != NULL && op->connector != NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(op->cxt);

		op->outcome.error = connector_redact(op->connector, op->outcome.error);
		MemoryContextSwitchTo(old);
	}

	/* after / on_error hooks see the outcome and may change it */
	hook_run_outcome(op);
	now = GetCurrentTimestamp();

	if (op->outcome.kind == OUTCOME_CONNECTOR)
	{
		dispatch_connector_failed(op, now);
		op->outcome.retry_after_ms = dispatch_resume_delay_ms(&op->connector_id, now);
	}
	if (op->outcome.kind == OUTCOME_DEAD)
		ereport(LOG,
				errmsg("xprov worker: operation %s (%s) dead-lettered: %s",
					   op->id_text, op_type_name(op->type),
					   op->outcome.error ? op->outcome.error : "no detail"));
	op->next = NULL;
	if (w.finished_tail)
		w.finished_tail->next = op;
	else
	{
		w.finished.ops = op;
		w.finished_since = now;
	}
	w.finished_tail = op;
	w.nfinished++;
}

static const Protocol *
protocol_of(const Connector *connector)
{
	return connector->kind == CONNECTOR_SCIM2 ? &scim2_protocol : &rest_protocol;
}

/* The operation waits for the next transaction to answer its question. */
static void
await_database(WorkOp *op)
{
	op->verdict = VERDICT_NONE;
	op->next = w.awaiting;
	w.awaiting = op;
}

/*
 * Run one protocol step in the operation's own memory context: begin() when
 * response is NULL and the operation has not started, resume() with the
 * response, or resume() with NULL once the database answered a question the
 * protocol asked.  The connector is looked up each time: its settings may
 * have been refreshed since the last step.
 */
static void
step_op(WorkOp *op, const HttpResponse *response)
{
	const char *error = NULL;
	MemoryContext old;
	volatile bool more;

	op->connector = dispatch_connector(&op->connector_id, &error);
	if (op->connector == NULL)
	{
		op->outcome.kind = OUTCOME_CONNECTOR;
		op->outcome.error = MemoryContextStrdup(op->cxt, error);
		finish_op(op);
		return;
	}
	old = MemoryContextSwitchTo(op->cxt);
	op->request = NULL;
	PG_TRY();
	{
		if (response == NULL && op->step == 0)
			more = protocol_of(op->connector)->begin(op);
		else
			more = protocol_of(op->connector)->resume(op, response);
	}
	PG_CATCH();
	{
		op_retry_after_error(op, NULL);
		more = false;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(old);

	if (more && op->request != NULL)
		dispatch_submit(op);
	else if (more && op->awaiting != AWAIT_NONE)
		await_database(op);
	else
	{
		if (op->outcome.kind == OUTCOME_NONE)
		{
			op->outcome.kind = OUTCOME_RETRY;
			op->outcome.retry_after_ms = -1;
			op->outcome.error = MemoryContextStrdup(op->cxt, "protocol stopped without an outcome");
		}
		finish_op(op);
	}
}

static void resume_answered(void);

static bool
has_finished_work(void)
{
	return w.finished.nnoop > 0 || w.finished.ops != NULL;
}

static void
forget_finished(void)
{
	WorkOp	   *op = w.finished.ops;

	while (op)
	{
		WorkOp	   *next = op->next;

		w.held--;
		MemoryContextDelete(op->cxt);
		op = next;
	}
	w.finished.ops = w.finished_tail = NULL;
	w.finished.noop_leases = NULL;
	w.finished.nnoop = 0;
	w.nfinished = 0;
}

/* The questions of operations whose extension is gone. */
static void
forget_awaiting(void)
{
	WorkOp	   *op = w.awaiting;

	while (op)
	{
		WorkOp	   *next = op->next;

		w.held--;
		MemoryContextDelete(op->cxt);
		op = next;
	}
	w.awaiting = NULL;
}

/*
 * Whether to record now, and if not, in how many ms at most.  noop outcomes
 * go at once (there is no transfer to stall); HTTP outcomes once there are
 * half a batch of them, once the requests in flight run low and more work
 * waits to be claimed, or after RECORD_DELAY_MS.
 */
static long
record_delay_ms(TimestampTz now)
{
	long		waited;
	int			busy = w.held - w.nfinished;

	if (w.finished.nnoop > 0 || w.awaiting != NULL)
		return 0;
	if (w.finished.ops == NULL)
		return -1;
	if (w.nfinished >= Max(1, xprov_batch_size / 2))
		return 0;
	if (w.want_claim && busy < Max(1, xprov_max_in_flight / 2))
		return 0;
	if (busy == 0)
		return 0;
	waited = (long) ((now - w.finished_since) / 1000);
	return waited >= RECORD_DELAY_MS ? 0 : RECORD_DELAY_MS - waited;
}

/* ---------------------------------------------------------------------
 * Transactions
 */

/*
 * Run body in a transaction of its own.  An error is logged and recorded in
 * xprov.worker_status(); the worker carries on.
 */
static bool
run_transaction(XactStepBody body, void *arg, const char *activity)
{
	char	   *error = xact_step_run(body, arg, activity);

	if (error == NULL)
		return true;
	ereport(LOG, errmsg("xprov worker %d: %s failed: %s", w.slot, activity, error));
	worker_slot_set_error(error);
	pfree(error);
	return false;
}

/*
 * Whether xprov is installed in this database.  When it was dropped, or
 * dropped and created again, everything the worker knew is void.
 */
static bool
check_extension(void)
{
	Oid			extension = get_extension_oid("xprov", true);

	if (extension != w.extension)
	{
		w.extension = extension;
		w.tag = 0;
		claim_cursor_forget_database();
		hook_cache_forget();
	}
	if (!OidIsValid(extension))
		return false;
	if (w.tag == 0)
	{
		w.tag = store_begin_epoch(w.slot);
		worker_slot_set_epoch(w.tag / WORKER_TAG_SLOTS);
	}
	return true;
}

/* HTTP operations the worker keeps in memory: twice what can be in flight. */
static int
max_held(void)
{
	return Max(xprov_max_in_flight * 2, xprov_batch_size);
}

static int
claim_capacity(void)
{
	return Min(xprov_batch_size, max_held() - w.held);
}

/*
 * Claim when there is room for a good part of a batch: topping up a few
 * operations at a time would mean a transaction per handful of responses.
 */
static bool
claim_wanted(void)
{
	return w.want_claim &&
		claim_capacity() >= Max(1, Min(xprov_batch_size, max_held() / 2));
}

static void
record_and_claim(void *arg)
{
	bool		claim = *(bool *) arg;
	ClaimResult result;
	Datum		paused;
	int			capacity;

	if (!check_extension())
	{
		/* nothing to do here until xprov is installed: look again after a nap */
		forget_finished();
		forget_awaiting();
		w.want_claim = false;
		return;
	}
	if (has_finished_work())
	{
		store_record(&w.finished, w.tag, &w.done, &w.failed);
		forget_finished();
	}
	store_correlate(w.awaiting);

	capacity = claim_capacity();
	if (!claim || capacity <= 0)
		return;
	if (w.rewind_claims)
	{
		/* a paused connector resumed: its lanes may lie behind the cursor */
		claim_cursor_rewind_at_commit(true);
		w.rewind_claims = false;
	}
	/* the noop ids just recorded lived here */
	MemoryContextReset(w.batch_cxt);
	dispatch_paused(GetCurrentTimestamp(), &paused);
	store_claim(capacity, w.tag, paused, w.batch_cxt, w.ops_cxt, &result);
	w.want_claim = result.claimed >= capacity;

	/* noop operations are done; they are recorded in the next transaction */
	w.finished.noop_leases = result.noop_leases;
	w.finished.nnoop = result.nnoop;
	w.claimed = result.http_ops;
	for (WorkOp *op = result.http_ops; op; op = op->next)
		w.held++;
}

/*
 * Recording a batch failed: record each operation alone, so that one bad
 * outcome cannot hold back the others; what still fails is dropped here
 * (its lease comes back when this worker restarts, or when it runs out).
 */
static void
record_one_by_one(void)
{
	FinishedWork all = w.finished;
	bool		no_claim = false;

	w.finished.ops = w.finished_tail = NULL;
	w.finished.nnoop = 0;
	for (int i = 0; i < all.nnoop; i++)
	{
		w.finished.noop_leases = &all.noop_leases[i];
		w.finished.nnoop = 1;
		if (!run_transaction(record_and_claim, &no_claim, "recording an outcome"))
			w.finished.nnoop = 0;
	}
	for (WorkOp *op = all.ops, *next; op; op = next)
	{
		next = op->next;
		op->next = NULL;
		w.finished.ops = w.finished_tail = op;
		if (!run_transaction(record_and_claim, &no_claim, "recording an outcome"))
			forget_finished();
	}
}

static void
transaction_step(bool claim)
{
	if (!run_transaction(record_and_claim, &claim, "claiming operations") && has_finished_work())
		record_one_by_one();
	resume_answered();
	w.last_look = GetCurrentTimestamp();
	worker_slot_count(w.done, w.failed);
	w.done = w.failed = 0;
}

/* ---------------------------------------------------------------------
 * Signals
 */

static void take_back_from_hooks(void);

static void
give_back_everything(void)
{
	WorkOp	   *waiting;

	take_back_from_hooks();
	waiting = dispatch_take_all_waiting();

	http_engine_abandon_all();
	for (WorkOp *op = waiting, *next; op; op = next)
	{
		next = op->next;
		op->outcome.kind = OUTCOME_RELEASE;
		op->outcome.retry_after_ms = 0;
		finish_op(op);
	}
	for (WorkOp *op = w.claimed, *next; op; op = next)
	{
		next = op->next;
		op->outcome.kind = OUTCOME_RELEASE;
		op->outcome.retry_after_ms = 0;
		finish_op(op);
	}
	w.claimed = NULL;
	for (WorkOp *op = w.awaiting, *next; op; op = next)
	{
		next = op->next;
		op->outcome.kind = OUTCOME_RELEASE;
		op->outcome.retry_after_ms = 0;
		finish_op(op);
	}
	w.awaiting = NULL;
}

/*
 * SIGTERM: return the leases (in-flight requests are abandoned; their
 * operations run again, and the protocols' correlation keeps a repeated
 * create from making a duplicate), then exit.  The die-pending flag is
 * lowered for that one short transaction, so that lock_timeout can still
 * cancel it; a second SIGTERM raises it again and ends the process at once.
 */
static void
shut_down(void)
{
	bool		no_claim = false;

	worker_slot_set_state("stopping");
	give_back_everything();
	ProcDiePending = false;
	InterruptPending = false;
	SetConfigOption("lock_timeout", "1000", PGC_SUSET, PGC_S_OVERRIDE);
	if (w.tag != 0 && (has_finished_work()))
		run_transaction(record_and_claim, &no_claim, "returning leases");
	ProcDiePending = true;
	InterruptPending = true;
	CHECK_FOR_INTERRUPTS();
	proc_exit(1);
}

static void
handle_signals(void)
{
	if (ProcDiePending)
		shut_down();
	CHECK_FOR_INTERRUPTS();
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
}

/* ---------------------------------------------------------------------
 * The loop
 */

/*
 * Before hooks, then the target: in-process for noop, else over HTTP.  A
 * create is correlated in the database first (on the attributes the hooks
 * made), so it never starts before the next transaction.
 */
static void
start_op(WorkOp *op)
{
	if (!hook_run_before(op))
		finish_op(op);
	else if (op->noop)
	{
		op->outcome.kind = OUTCOME_COMPLETED;
		finish_op(op);
	}
	else
	{
		/* correlation and the protocols read the attributes as text */
		work_op_attributes(op);
		if (op->type == OP_CREATE)
		{
			op->awaiting = AWAIT_CORRELATION;
			await_database(op);
		}
		else
			step_op(op, NULL);
	}
}

/* Whether the operation's protocol converges a linked account itself (scim2). */
static bool
links_by_itself(const WorkOp *op)
{
	const char *error;
	Connector  *connector = dispatch_connector(&op->connector_id, &error);

	return connector != NULL && connector->kind == CONNECTOR_SCIM2;
}

/*
 * The database answered: an uncertain create parks, a failed question is
 * the operation's failure, anything else goes on where it waited.  A create
 * the database linked to an account becomes an update of it, except for
 * scim2, whose protocol converges a linked account itself.
 */
static void
resume_answered(void)
{
	WorkOp	   *op = w.awaiting;

	w.awaiting = NULL;
	while (op)
	{
		WorkOp	   *next = op->next;
		AwaitDb		question = op->awaiting;

		op->next = NULL;
		if (op->verdict == VERDICT_NONE && op->outcome.kind == OUTCOME_NONE)
		{
			/* the transaction failed: ask again in the next one */
			op->next = w.awaiting;
			w.awaiting = op;
		}
		else if (op->outcome.kind != OUTCOME_NONE)
			finish_op(op);
		else if (op->verdict == VERDICT_PARK)
		{
			op->outcome.kind = OUTCOME_PARKED;
			op->outcome.error = MemoryContextStrdup(op->cxt, "correlation is uncertain");
			finish_op(op);
		}
		else
		{
			op->awaiting = AWAIT_NONE;
			if (question == AWAIT_CORRELATION && op->verdict == VERDICT_LINK &&
				!links_by_itself(op))
			{
				op->type = OP_UPDATE;
				op->target_uid = op->link_uid;
			}
			step_op(op, NULL);
		}
		op = next;
	}
}

/*
 * Claimed operations with a before hook wait for the hook thread to run it
 * (the first one; the others run when the operation starts).  Meanwhile the
 * worker records and claims.
 */
static void
queue_for_hooks(void)
{
	WorkOp	  **link = &w.claimed;

	while (*link)
	{
		WorkOp	   *op = *link;

		if (!op->has_hooks || op->hook_ahead != NULL || hook_run_prepare_ahead(op) == NULL)
		{
			link = &op->next;
			continue;
		}
		*link = op->next;
		op->next = NULL;
		if (w.queued_tail)
			w.queued_tail->next = op;
		else
			w.queued = op;
		w.queued_tail = op;
		w.nqueued++;
	}
}

/*
 * Hand what is queued to the hook thread, if it is idle.  The operations it
 * holds are not counted as held, so that the next batch can be claimed
 * while they wait.
 */
static void
send_ahead(void)
{
	SandboxCall **calls;
	int			n = 0;

	if (w.ahead != NULL || w.queued == NULL)
		return;
	MemoryContextReset(w.ahead_cxt);
	calls = MemoryContextAlloc(w.ahead_cxt, sizeof(SandboxCall *) * w.nqueued);
	for (WorkOp *op = w.queued; op; op = op->next)
		calls[n++] = hook_run_ahead_call(op);
	w.ahead = w.queued;
	w.nahead = w.nqueued;
	w.queued = w.queued_tail = NULL;
	w.nqueued = 0;
	w.held -= w.nahead;
	hook_thread_start_batch(calls, w.nahead);
}

/*
 * Once the hook thread is done with its batch (or after waiting for it),
 * its operations can start.
 */
static void
collect_ahead(bool wait)
{
	WorkOp	   *last = w.ahead;

	if (w.ahead == NULL || !hook_thread_done(wait))
		return;
	while (last->next)
		last = last->next;
	last->next = w.claimed;
	w.claimed = w.ahead;
	w.held += w.nahead;
	w.ahead = NULL;
	w.nahead = 0;
}

/*
 * The hook thread's part of a turn.  The thread starts with the first
 * operation that has a hook: a worker that never runs one stays a
 * single-threaded process.
 */
static void
run_hooks_ahead(void)
{
	bool		hooked = w.ahead != NULL || w.queued != NULL;

	for (WorkOp *op = w.claimed; op && !hooked; op = op->next)
		hooked = op->has_hooks;
	if (!hooked || !hook_thread_available())
		return;
	collect_ahead(false);
	queue_for_hooks();
	send_ahead();
}

/* On the way out: whatever waits for the hook thread or is on it. */
static void
take_back_from_hooks(void)
{
	collect_ahead(true);
	if (w.queued != NULL)
	{
		w.queued_tail->next = w.claimed;
		w.claimed = w.queued;
		w.queued = w.queued_tail = NULL;
		w.nqueued = 0;
	}
}

static void
start_claimed(void)
{
	WorkOp	   *op = w.claimed;

	w.claimed = NULL;
	while (op)
	{
		WorkOp	   *next = op->next;

		op->next = NULL;
		start_op(op);
		op = next;
	}
}

static void
collect_released(void)
{
	WorkOp	   *op = dispatch_take_released();

	while (op)
	{
		WorkOp	   *next = op->next;

		finish_op(op);
		op = next;
	}
}

/* How long the wait may sleep, in ms. */
static long
wait_timeout(TimestampTz now, long pump_ms)
{
	long		timeout = xprov_worker_nap_ms;
	long		resume_ms;
	long		record_ms = record_delay_ms(now);
	TimestampTz due;

	if (record_ms == 0 || claim_wanted())
		return 0;
	if (record_ms > 0)
		timeout = Min(timeout, record_ms);
	due = claim_cursor_next_due(CLAIMANT_WORKER);
	if (due != DT_NOEND)
		timeout = Min(timeout, due <= now ? 0 : (long) ((due - now) / 1000) + 1);
	if (pump_ms >= 0)
		timeout = Min(timeout, pump_ms);
	resume_ms = dispatch_next_resume_ms(now);
	if (resume_ms >= 0)
	{
		timeout = Min(timeout, resume_ms);
		w.resume_pending = true;
	}
	return timeout;
}

static void
handle_responses(HttpRequest **done, int ndone)
{
	TimestampTz now = GetCurrentTimestamp();

	for (int i = 0; i < ndone; i++)
	{
		WorkOp	   *op = (WorkOp *) done[i]->owner;

		dispatch_response(op, &done[i]->response, now);
		step_op(op, &done[i]->response);
	}
}

static void
worker_loop(void)
{
	MemoryContext loop_cxt = AllocSetContextCreate(TopMemoryContext, "xprov worker loop",
												   ALLOCSET_DEFAULT_SIZES);

	for (;;)
	{
		HttpRequest *done[MAX_DONE_PER_WAIT];
		TimestampTz now;
		long		pump_ms;
		long		timeout;
		bool		latch_set = false;
		int			ndone;

		/* what one turn allocates outside transactions and operations */
		MemoryContextReset(loop_cxt);
		MemoryContextSwitchTo(loop_cxt);

		handle_signals();
		collect_released();

		now = GetCurrentTimestamp();
		if (!w.want_claim && TimestampDifferenceExceeds(w.last_look, now, xprov_worker_nap_ms))
			w.want_claim = true;
		if (record_delay_ms(now) == 0 || claim_wanted())
		{
			worker_slot_set_state("claiming");
			transaction_step(w.want_claim);
		}
		run_hooks_ahead();
		start_claimed();

		now = GetCurrentTimestamp();
		pump_ms = dispatch_pump(now);
		collect_released();
		timeout = wait_timeout(now, pump_ms);
		worker_slot_set_load(dispatch_in_flight(), dispatch_paused(now, NULL));
		worker_slot_set_state(dispatch_in_flight() > 0 ? "requests in flight" :
							  w.held > 0 ? "waiting" : "idle");

		ndone = http_engine_wait(timeout, done, MAX_DONE_PER_WAIT, &latch_set);
		if (latch_set)
		{
			ResetLatch(MyLatch);
			w.want_claim = true;
		}
		handle_responses(done, ndone);
		now = GetCurrentTimestamp();
		if (claim_cursor_next_due(CLAIMANT_WORKER) <= now)
			w.want_claim = true;
		if (w.resume_pending && dispatch_next_resume_ms(now) < 0)
		{
			/* the pause is over: claim the connector's operations for a probe */
			w.resume_pending = false;
			w.rewind_claims = true;
			w.want_claim = true;
		}
	}
}

void
xprov_worker_main(Datum arg)
{
	memset(&w, 0, sizeof(w));
	w.slot = DatumGetInt32(arg);

	/*
	 * Each batch's operations get memory contexts that are freed together
	 * when the batch is recorded; glibc would hand that memory back to the
	 * kernel every time and fault it in again for the next batch.
	 */
	mallopt(M_TRIM_THRESHOLD, WORKER_MALLOC_TRIM_THRESHOLD);

	pqsignal(SIGTERM, die);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(xprov_database_name, NULL, 0);
	pgstat_report_appname("xprov worker");

	/*
	 * When DDL (DROP EXTENSION, say) and a worker transaction deadlock, the
	 * worker's transaction is the one to give way: it is retried anyway.
	 */
	SetConfigOption("deadlock_timeout", "50", PGC_SUSET, PGC_S_OVERRIDE);

	/*
	 * Every statement of the worker touches a batch of rows by key, and its
	 * plan is made once, often while the tables are still empty: a plan that
	 * hashes or scans a whole table then stays until the next ANALYZE, and
	 * gets slower with every row (the accounts table, for one).  Key lookups
	 * are right at any size, so the worker plans nothing else where it has
	 * a choice.
	 */
	SetConfigOption("enable_seqscan", "off", PGC_USERSET, PGC_S_OVERRIDE);
	SetConfigOption("enable_bitmapscan", "off", PGC_USERSET, PGC_S_OVERRIDE);
	SetConfigOption("enable_hashjoin", "off", PGC_USERSET, PGC_S_OVERRIDE);
	SetConfigOption("enable_mergejoin", "off", PGC_USERSET, PGC_S_OVERRIDE);

	/*
	 * A statement whose estimate crosses jit_above_cost would be compiled
	 * with LLVM, taking longer than the statement itself: the worker's
	 * statements touch a batch of rows each.
	 */
	SetConfigOption("jit", "off", PGC_USERSET, PGC_S_OVERRIDE);

	worker_slot_attach(w.slot);
	w.batch_cxt = AllocSetContextCreate(TopMemoryContext, "xprov claim batch",
										ALLOCSET_DEFAULT_SIZES);
	w.ops_cxt = AllocSetContextCreate(TopMemoryContext, "xprov operations",
									  ALLOCSET_DEFAULT_SIZES);
	w.ahead_cxt = AllocSetContextCreate(TopMemoryContext, "xprov hooks ahead",
										ALLOCSET_SMALL_SIZES);
	http_engine_init();
	dispatch_init();
	w.want_claim = true;
	ereport(LOG, errmsg("xprov worker %d started on database \"%s\"", w.slot, xprov_database_name));
	worker_loop();
}
