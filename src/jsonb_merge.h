/*-------------------------------------------------------------------------
 *
 * jsonb_merge.h
 *	  xprov._merge_expected(), the shadow's expected attributes after a
 *	  provisioned change (see jsonb_merge.c).  SQL-callable only.
 *
 *-------------------------------------------------------------------------
 */
#ifndef JSONB_MERGE_H
#define JSONB_MERGE_H

#include "fmgr.h"

extern Datum xprov_merge_expected(PG_FUNCTION_ARGS);

#endif							/* JSONB_MERGE_H */
