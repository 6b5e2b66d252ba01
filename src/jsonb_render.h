/*-------------------------------------------------------------------------
 *
 * jsonb_render.h
 *	  JSON text of a jsonb value, written without palloc or ereport.
 *
 * The hook thread hands an operation's attributes to duktape as JSON text,
 * and it may not call into PostgreSQL's memory management or error
 * handling: JsonbToCString() does both.  jsonb_render() reads the on-disk
 * jsonb format directly and writes compact JSON (no spaces), with numbers
 * as numeric_out writes them, so any thread may call it.
 *
 *-------------------------------------------------------------------------
 */
#ifndef JSONB_RENDER_H
#define JSONB_RENDER_H

#include "utils/jsonb.h"

/*
 * Writes the JSON text of container (a jsonb's root, or a container inside
 * one) into out, at most size bytes including the terminating NUL, and
 * returns the length of the whole text (without the NUL), as snprintf
 * does: a result >= size means out was too small.
 */
extern size_t jsonb_render(const JsonbContainer *container, char *out, size_t size);

#endif							/* JSONB_RENDER_H */
