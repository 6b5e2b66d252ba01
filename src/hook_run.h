/*-------------------------------------------------------------------------
 *
 * hook_run.h
 *	  Running the hooks of an operation in the background worker.
 *
 * Called with no transaction open.  Each hook gets a JSON ctx built from
 * the WorkOp, runs in the worker's sandbox under its own limits, and its
 * answer is applied to the WorkOp: replaced attributes, a skip, a veto,
 * shadow attributes, a dead letter instead of a retry.  Every run is
 * noted for the attempt history (hook_history.h).
 *
 *-------------------------------------------------------------------------
 */
#ifndef HOOK_RUN_H
#define HOOK_RUN_H

#include "utils/jsonb.h"

#include "work_op.h"

/*
 * The before hooks.  Returns false when the operation must not go to the
 * target: op->outcome is then set (skipped, failed by a hook, or released
 * because the worker is shutting down).
 */
extern bool hook_run_before(WorkOp *op);

/*
 * Once op->outcome is known: the after hooks of a completion, the on_error
 * hooks of a failed attempt.  They may change the outcome.
 */
extern void hook_run_outcome(WorkOp *op);

/*
 * The first before hook's call, to run on the hook thread before the
 * operation starts (hook_thread.h), or NULL when it has no before hook.
 * hook_run_before() takes its answer if the hook is still the same then.
 * The call lives in op->cxt.
 */
extern struct SandboxCall *hook_run_prepare_ahead(WorkOp *op);

/* That call, once prepared. */
extern struct SandboxCall *hook_run_ahead_call(WorkOp *op);

#endif							/* HOOK_RUN_H */
