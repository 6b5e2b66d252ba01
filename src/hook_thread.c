/*-------------------------------------------------------------------------
 *
 * hook_thread.c
 *	  The worker's hook thread (see hook_thread.h).
 *
 * PostgreSQL's backend code is not thread-safe, so this thread calls none
 * of it but SetLatch(), which is async-signal-safe and made to be called
 * from outside the latch owner's flow of control.  Nothing here ereports
 * or pallocs once the thread runs; the main thread only starts it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <pthread.h>
#include <signal.h>
#include <time.h>

#include "miscadmin.h"
#include "storage/latch.h"

#include "hook_thread.h"
#include "js_deadline.h"

/* duktape recurses on the C stack (the parser, JSON, regexps): room for it */
#define HOOK_THREAD_STACK (8 * 1024 * 1024)

/*
 * While batches keep coming, the thread looks for the next one on its own
 * instead of sleeping until woken: waking a sleeping thread costs the
 * worker's main thread a system call and an interprocessor interrupt (tens
 * of microseconds on a virtual machine), once per batch.  Each look costs
 * the thread a timed sleep, which is about as dear, so the looks thin out:
 * the first comes POLL_FIRST_US after the last batch, each later one twice
 * as late as the one before, up to POLL_MAX_US apart.  A batch waits at
 * most that long, while the worker records and claims the next one.  The
 * thread goes to sleep POLL_WINDOW_US after the last batch.
 */
#define POLL_FIRST_US 50
#define POLL_MAX_US 800
#define POLL_WINDOW_US 20000

typedef enum ThreadState
{
	THREAD_NONE,				/* not started yet */
	THREAD_RUNNING,
	THREAD_FAILED				/* could not start: hooks run inline */
} ThreadState;

static ThreadState state = THREAD_NONE;
static SandboxHeap *thread_heap;
static Latch *owner_latch;

/* Under lock: the batch handed over, NULL when none or done. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t changed = PTHREAD_COND_INITIALIZER;
static SandboxCall **batch;
static int	nbatch;
static bool sleeping;			/* in pthread_cond_wait(): needs a signal */

/* Under lock: wait for a batch, polling for a while after the last one. */
static void
wait_for_batch(int64 last_batch_us)
{
	long		poll_us = POLL_FIRST_US;

	while (batch == NULL)
	{
		if (xprov_js_now_us() - last_batch_us < POLL_WINDOW_US)
		{
			struct timespec poll = {0, poll_us * 1000};

			pthread_mutex_unlock(&lock);
			nanosleep(&poll, NULL);
			pthread_mutex_lock(&lock);
			poll_us = Min(poll_us * 2, POLL_MAX_US);
			continue;
		}
		sleeping = true;
		pthread_cond_wait(&changed, &lock);
		sleeping = false;
	}
}

static void *
thread_main(void *arg)
{
	int64		last_batch_us = 0;

	for (;;)
	{
		SandboxCall **calls;
		int			ncalls;

		pthread_mutex_lock(&lock);
		wait_for_batch(last_batch_us);
		calls = batch;
		ncalls = nbatch;
		pthread_mutex_unlock(&lock);

		for (int i = 0; i < ncalls; i++)
			sandbox_run_on(thread_heap, calls[i]);

		pthread_mutex_lock(&lock);
		batch = NULL;
		pthread_cond_broadcast(&changed);
		pthread_mutex_unlock(&lock);
		last_batch_us = xprov_js_now_us();
		SetLatch(owner_latch);
	}
	return NULL;
}

/*
 * Start the thread with every signal blocked (it inherits the mask): a
 * signal for this process must reach the main thread's handlers.
 */
static void
start_thread(void)
{
	pthread_attr_t attr;
	pthread_t	thread;
	sigset_t	all;
	sigset_t	old;
	int			rc;

	thread_heap = sandbox_heap_create();
	if (thread_heap == NULL)
	{
		state = THREAD_FAILED;
		return;
	}
	owner_latch = MyLatch;
	sigfillset(&all);
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, HOOK_THREAD_STACK);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	rc = pthread_create(&thread, &attr, thread_main, NULL);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_attr_destroy(&attr);
	if (rc != 0)
	{
		ereport(LOG,
				errmsg("xprov worker could not start its hook thread: %s", strerror(rc)),
				errdetail("Hooks run on the worker's main thread."));
		state = THREAD_FAILED;
		return;
	}
	pthread_setname_np(thread, "xprov hooks");
	state = THREAD_RUNNING;
}

bool
hook_thread_available(void)
{
	if (state == THREAD_NONE)
		start_thread();
	return state == THREAD_RUNNING;
}

void
hook_thread_start_batch(SandboxCall **calls, int ncalls)
{
	Assert(state == THREAD_RUNNING && ncalls > 0);
	pthread_mutex_lock(&lock);
	Assert(batch == NULL);
	batch = calls;
	nbatch = ncalls;
	if (sleeping)
		pthread_cond_broadcast(&changed);
	pthread_mutex_unlock(&lock);
}

bool
hook_thread_done(bool wait)
{
	bool		done;

	if (state != THREAD_RUNNING)
		return true;
	pthread_mutex_lock(&lock);
	while (wait && batch != NULL)
		pthread_cond_wait(&changed, &lock);
	done = batch == NULL;
	pthread_mutex_unlock(&lock);
	return done;
}
