/*-------------------------------------------------------------------------
 *
 * xact_step.h
 *	  One unit of a background process's database work, in its own
 *	  transaction.
 *
 * The workers and the reconciler work in short transactions between HTTP
 * exchanges.  xact_step_run() runs one body with SPI connected and a
 * snapshot pushed, and commits.  An error is caught there and the
 * transaction aborted; its message is returned (palloc'd in the caller's
 * memory context), and the caller decides what it means.  Only PostgreSQL
 * frames may lie between a body and the catch.
 *
 *-------------------------------------------------------------------------
 */
#ifndef XACT_STEP_H
#define XACT_STEP_H

typedef void (*XactStepBody) (void *arg);

/* NULL when the body ran and committed; else the error's message. */
extern char *xact_step_run(XactStepBody body, void *arg, const char *activity);

#endif							/* XACT_STEP_H */
