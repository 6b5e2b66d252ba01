/*-------------------------------------------------------------------------
 *
 * js_deadline.c
 *	  Deadline and cancel check that duktape polls while running a hook.
 *
 * Rules (see research on the duktape/PostgreSQL boundary): this code runs
 * with duktape frames on the C stack, so it must never ereport, palloc,
 * CHECK_FOR_INTERRUPTS or longjmp; it only reads a clock and a few volatile
 * flags.  Once tripped it stays tripped until the caller resets it, because
 * duktape requires the check to keep answering true while the error unwinds:
 * otherwise a catch or finally block in the hook could resume running.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <time.h>

#include "miscadmin.h"
#include "postmaster/interrupt.h"

#include "js_deadline.h"

int64
xprov_js_now_us(void)
{
	struct timespec ts;

	/*
	 * CLOCK_MONOTONIC, not wall time: a clock step (NTP, manual change) must
	 * neither kill a hook early nor let it run forever.
	 */
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64) ts.tv_sec * INT64CONST(1000000) + ts.tv_nsec / 1000;
}

void
xprov_js_set_deadline(JsDeadline *deadline, int64 deadline_us)
{
	deadline->deadline_us = deadline_us > 0 ? deadline_us : 0;
	deadline->trip = XPROV_JS_TRIP_NONE;
}

void
xprov_js_clear_deadline(JsDeadline *deadline)
{
	deadline->deadline_us = 0;
	deadline->trip = XPROV_JS_TRIP_NONE;
}

XprovJsTrip
xprov_js_trip_reason(const JsDeadline *deadline)
{
	return deadline->trip;
}

/*
 * udata is the heap's user data; it is unused because the deadline is per
 * process state (one JS call at a time), which also lets the regexp executor
 * patch call us without knowing the sandbox's structures.
 */
duk_bool_t
xprov_js_exec_timeout_check(void *udata)
{
	JsDeadline *deadline = udata;

	/* a heap made without one: no deadline, only cancel requests */
	if (deadline == NULL)
		return QueryCancelPending || ProcDiePending || ShutdownRequestPending;
	if (deadline->trip != XPROV_JS_TRIP_NONE)
		return 1;

	/*
	 * Read the pending-interrupt flags themselves rather than
	 * InterruptPending, which is also set for benign interrupts (e.g.
	 * catchup, barriers) and would abort hooks spuriously.  The caller runs
	 * CHECK_FOR_INTERRUPTS() once duktape has returned.  In a background
	 * worker using SignalHandlerForShutdownRequest, SIGTERM sets
	 * ShutdownRequestPending; with die() it sets ProcDiePending.
	 */
	if (QueryCancelPending || ProcDiePending || ShutdownRequestPending)
	{
		deadline->trip = XPROV_JS_TRIP_CANCEL;
		return 1;
	}

	if (deadline->deadline_us > 0 && xprov_js_now_us() >= deadline->deadline_us)
	{
		deadline->trip = XPROV_JS_TRIP_DEADLINE;
		return 1;
	}

	return 0;
}
