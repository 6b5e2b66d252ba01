/*-------------------------------------------------------------------------
 *
 * subject_cache.h
 *	  Subjects' lanes, kept per backend.
 *
 * An enqueue's first step is to find its subject's lane: an index probe
 * over a three-column key that costs as much as the lock of the lane.
 * xprov never deletes or changes a subject (connector, object class,
 * subject -> lane_id), so a backend keeps the answers it has found for
 * committed subjects.  It forgets them all when the subject table is
 * invalidated in the relation cache (TRUNCATE, DDL, VACUUM or ANALYZE,
 * DROP EXTENSION), and when it holds too many.
 *
 *-------------------------------------------------------------------------
 */
#ifndef SUBJECT_CACHE_H
#define SUBJECT_CACHE_H

#include "op_input.h"

/* The lane of op's subject in the table subject_relid if known. */
extern bool subject_cache_find(Oid subject_relid, const OpInput *op, int64 *lane_id);

/* Remember the lane of a subject that a committed transaction created. */
extern void subject_cache_add(Oid subject_relid, const OpInput *op, int64 lane_id);

#endif							/* SUBJECT_CACHE_H */
