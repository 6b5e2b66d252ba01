/*-------------------------------------------------------------------------
 *
 * js_deadline.h
 *	  Execution deadline for JavaScript hooks run by duktape.
 *
 * duktape is built with DUK_USE_INTERRUPT_COUNTER and with
 * DUK_USE_EXEC_TIMEOUT_CHECK pointing at xprov_js_exec_timeout_check()
 * (see src/gen_duk_config.sh).  The executor calls it every few hundred
 * thousand bytecode instructions, and the patched regexp executor every 64k
 * steps; once it returns true, duktape throws "RangeError: execution timeout"
 * (or "regexp step limit") that try/catch in the hook cannot swallow.
 *
 * Usage, around one protected call into duktape:
 *
 *		xprov_js_set_deadline(d, xprov_js_now_us() + timeout_ms * 1000);
 *		rc = duk_safe_call(ctx, body, udata, nargs, nrets);
 *		reason = xprov_js_trip_reason(d);
 *		xprov_js_clear_deadline(d);
 *		... copy results out of duktape, pop, then:
 *		if (reason == XPROV_JS_TRIP_CANCEL)
 *			CHECK_FOR_INTERRUPTS();
 *
 * State is per heap (JsDeadline): a heap runs one call at a time, on one
 * thread.  The flags read are the process's; from a thread other than the
 * main one they are only read, never acted on.  Include "postgres.h" first,
 * as usual.
 *
 *-------------------------------------------------------------------------
 */
#ifndef XPROV_JS_DEADLINE_H
#define XPROV_JS_DEADLINE_H

#include "duktape.h"

/*
 * Refuse to compile against Debian's unpatched /usr/include/duktape.h: it
 * would compile fine and give hooks no time limit.  The Makefile puts the
 * generated build/duktape first on the include path.
 */
#if !defined(DUK_USE_EXEC_TIMEOUT_CHECK) || !defined(DUK_USE_INTERRUPT_COUNTER)
#error "duktape.h is not xprov's generated build (build/duktape/); check PG_CPPFLAGS in the Makefile"
#endif

/* Why the last JS call was stopped. */
typedef enum XprovJsTrip
{
	XPROV_JS_TRIP_NONE = 0,		/* not stopped (yet) */
	XPROV_JS_TRIP_DEADLINE,		/* the deadline passed */
	XPROV_JS_TRIP_CANCEL		/* query cancel, terminate or worker shutdown */
} XprovJsTrip;

/*
 * One heap's deadline.  duktape passes the heap's udata to the check, and
 * that udata is this (at its start), so heaps on different threads never
 * share one.
 */
typedef struct JsDeadline
{
	int64		deadline_us;	/* on the xprov_js_now_us() clock; 0: none */
	XprovJsTrip trip;			/* sticky until the next set/clear */
} JsDeadline;

/* Monotonic clock in microseconds; the time base of deadlines. */
extern int64 xprov_js_now_us(void);

/*
 * Arm the deadline (absolute, on the xprov_js_now_us() clock; 0 or less means
 * no deadline, cancel requests still stop the call) and reset the trip state.
 */
extern void xprov_js_set_deadline(JsDeadline *deadline, int64 deadline_us);

/* Disarm the deadline and reset the trip state. */
extern void xprov_js_clear_deadline(JsDeadline *deadline);

/* Why the current/last call was stopped; valid until the next set/clear. */
extern XprovJsTrip xprov_js_trip_reason(const JsDeadline *deadline);

/*
 * Called by duktape only (declared again in the generated duk_config.h);
 * udata: the heap's JsDeadline.
 */
extern duk_bool_t xprov_js_exec_timeout_check(void *udata);

#endif							/* XPROV_JS_DEADLINE_H */
