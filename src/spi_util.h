/*-------------------------------------------------------------------------
 *
 * spi_util.h
 *	  Saved SPI plans and small readers for SPI result rows.
 *
 * Every hot-path statement is a SavedPlan: prepared on first use in a
 * backend, kept for its lifetime (the plan cache re-plans it when the
 * tables change), and prepared afresh once the queue and shadow tables have
 * grown well past their size when it was made.
 *
 *-------------------------------------------------------------------------
 */
#ifndef SPI_UTIL_H
#define SPI_UTIL_H

#include "executor/spi.h"

#define SAVED_PLAN_MAX_ARGS 20

/* Tables that grow from nothing under load: xprov.op, shadow and lane. */
#define SAVED_PLAN_GROWING_TABLES 3

typedef struct SavedPlan
{
	const char *sql;
	int			nargs;
	Oid			argtypes[SAVED_PLAN_MAX_ARGS];
	SPIPlanPtr	plan;
	BlockNumber planned_blocks[SAVED_PLAN_GROWING_TABLES];	/* their pages when prepared */
	struct CachedPlanSource *source;	/* the plan cache's entry for it */
	int			plan_generation;	/* the plan cache's plan those sizes
									 * belong to; 0: not built yet */
	bool		nested_loops_only;	/* planned with nested loops over index
									 * scans only: its rows come out in the
									 * order of its outermost input */
} SavedPlan;

extern int	saved_plan_execute(SavedPlan *plan, Datum *values, const char *nulls,
							   bool read_only, long count);

/*
 * Read-only, with the latest snapshot rather than the statement's: for
 * rows that act as privileges do (tenant bindings), where a change
 * committed before the call must count.
 */
extern int	saved_plan_execute_latest(SavedPlan *plan, Datum *values, const char *nulls,
									  long count);

extern bool spi_get_datum(uint64 row, int col, Datum *value);
extern int64 spi_get_int64(uint64 row, int col);
extern int32 spi_get_int32(uint64 row, int col);
extern char spi_get_char(uint64 row, int col);
extern TimestampTz spi_get_timestamptz(uint64 row, int col);

extern Datum spi_array_arg(Datum *values, bool *nulls, int count, Oid elemtype);

extern void spi_note_ready_lanes(int first_col);

#endif							/* SPI_UTIL_H */
