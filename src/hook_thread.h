/*-------------------------------------------------------------------------
 *
 * hook_thread.h
 *	  A thread of the worker's own that runs hooks while the worker's main
 *	  thread goes on with its database work.
 *
 * The thread runs duktape and nothing else: its calls are detached
 * (sandbox.h), so they touch no PostgreSQL state, and every signal is
 * blocked on it, so PostgreSQL's handlers keep running on the main thread.
 * It has a heap of its own.  It takes one batch of calls at a time; the
 * main thread must not touch the calls, or anything they point to, until
 * hook_thread_done() says the batch is done.  The thread sets the main
 * thread's latch when it finishes a batch.
 *
 *-------------------------------------------------------------------------
 */
#ifndef HOOK_THREAD_H
#define HOOK_THREAD_H

#include "sandbox.h"

/*
 * Whether the thread runs, or could be started now.  When it cannot (no
 * memory, no threads left), the caller runs its hooks itself.
 */
extern bool hook_thread_available(void);

/* Hand the idle thread a batch of detached calls (ncalls > 0). */
extern void hook_thread_start_batch(SandboxCall **calls, int ncalls);

/*
 * Whether the batch handed over is done (true when there is none); with
 * wait, waits until it is.
 */
extern bool hook_thread_done(bool wait);

#endif							/* HOOK_THREAD_H */
