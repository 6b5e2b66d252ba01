/*-------------------------------------------------------------------------
 *
 * sandbox_jsonb.h
 *	  jsonb values pushed onto a duktape stack as JavaScript values.
 *
 * Builds what JSON.parse would make of the value's JSON text, without the
 * text: no palloc, no ereport, so the hook thread may call it.  Only for a
 * database whose text is UTF-8 (duktape's strings take its bytes as they
 * are); see sandbox_takes_jsonb().
 *
 *-------------------------------------------------------------------------
 */
#ifndef SANDBOX_JSONB_H
#define SANDBOX_JSONB_H

#include "utils/jsonb.h"

#include "js_deadline.h"

/*
 * Pushes container's value.  Throws a duktape error (out of memory, nesting
 * deeper than JSON.parse accepts), so call it inside duk_safe_call().
 */
extern void sandbox_push_jsonb(duk_context *ctx, const JsonbContainer *container);

#endif							/* SANDBOX_JSONB_H */
