/*-------------------------------------------------------------------------
 *
 * jsonb_walk.h
 *	  Reading a jsonb value without palloc or ereport.
 *
 * The hook thread builds a hook's ctx straight from an operation's jsonb,
 * and it may not call into PostgreSQL's memory management or error
 * handling, as the jsonb iterators and numeric_out() do.  These functions
 * read the on-disk jsonb and numeric formats directly, so any thread may
 * call them.
 *
 *-------------------------------------------------------------------------
 */
#ifndef JSONB_WALK_H
#define JSONB_WALK_H

#include "utils/jsonb.h"

/*
 * What jsonb_walk() reports, in document order.  A container's members (or
 * elements) each come as key (objects only), then the value, then placed();
 * a nested container's value is open() ... close().  A scalar root is
 * reported as its value alone.  Strings are not NUL-terminated.
 */
typedef struct JsonbVisitor
{
	void		(*open) (void *arg, bool object, int count);
	void		(*close) (void *arg);
	void		(*key) (void *arg, const char *key, int len);
	void		(*string) (void *arg, const char *text, int len);
	void		(*number) (void *arg, const void *numeric);	/* a numeric datum */
	void		(*literal) (void *arg, char literal);	/* 't', 'f' or 'n' */
	void		(*placed) (void *arg, bool in_object, int index);
} JsonbVisitor;

extern void jsonb_walk(const JsonbContainer *container, const JsonbVisitor *visitor, void *arg);

/*
 * Writes the text numeric_out() makes of numeric (a jsonb number) into out,
 * at most size bytes including the terminating NUL, and returns the length
 * of the whole text, as snprintf does: a result >= size means out was too
 * small.
 */
extern size_t jsonb_numeric_text(const void *numeric, char *out, size_t size);

/*
 * If numeric is an integer of at most 12 digits, sets *value to it (exactly:
 * a double holds every such integer) and returns true.
 */
extern bool jsonb_numeric_small_integer(const void *numeric, double *value);

#endif							/* JSONB_WALK_H */
