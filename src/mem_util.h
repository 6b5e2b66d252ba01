/*-------------------------------------------------------------------------
 *
 * mem_util.h
 *	  Allocation that never raises, for code running where a PostgreSQL
 *	  error must not be thrown (libcurl callbacks, next to duktape's stack).
 *
 *-------------------------------------------------------------------------
 */
#ifndef MEM_UTIL_H
#define MEM_UTIL_H

#include "utils/memutils.h"

/* A NUL-terminated copy of len bytes in cxt, or NULL when memory is short. */
static inline char *
copy_bytes_no_oom(MemoryContext cxt, const char *data, size_t len)
{
	char	   *copy = MemoryContextAllocExtended(cxt, len + 1, MCXT_ALLOC_NO_OOM);

	if (copy != NULL)
	{
		memcpy(copy, data, len);
		copy[len] = '\0';
	}
	return copy;
}

#endif							/* MEM_UTIL_H */
