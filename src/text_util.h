/*-------------------------------------------------------------------------
 *
 * text_util.h
 *	  Small text helpers shared by the parsers of our own formats.
 *
 * Exports hex_digit_value(): the value of one hexadecimal digit, and
 * uuid_text(): a uuid in its canonical text form, palloc'd (for messages).
 *
 *-------------------------------------------------------------------------
 */
#ifndef XPROV_TEXT_UTIL_H
#define XPROV_TEXT_UTIL_H

#include "fmgr.h"
#include "utils/fmgrprotos.h"
#include "utils/uuid.h"

/* The value of hexadecimal digit c, or -1 if it is none. */
static inline int
hex_digit_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* A uuid as text, palloc'd in the current memory context. */
static inline char *
uuid_text(const pg_uuid_t *id)
{
	return DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(id)));
}

#endif							/* XPROV_TEXT_UTIL_H */
