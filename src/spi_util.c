/*-------------------------------------------------------------------------
 *
 * spi_util.c
 *	  Saved SPI plans and row readers shared by the queue modules.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/relation.h"
#include "catalog/namespace.h"
#include "nodes/parsenodes.h"
#include "storage/bufmgr.h"
#include "utils/array.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/plancache.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "claim_cursor.h"
#include "spi_util.h"

/*
 * Pages of the tables that grow from nothing under load.  The planner takes
 * a vacuumed empty table at its word (0 pages), so a generic plan made then
 * scans it whole for every key it looks up; its size is read (an lseek per
 * table), not taken from statistics.
 */
static void
read_growing_tables_blocks(BlockNumber *blocks)
{
	static const char *const names[SAVED_PLAN_GROWING_TABLES] = {"op", "shadow", "lane"};
	Oid			namespace = get_namespace_oid("xprov", true);

	for (int i = 0; i < SAVED_PLAN_GROWING_TABLES; i++)
	{
		Oid			relid = OidIsValid(namespace) ? get_relname_relid(names[i], namespace) : InvalidOid;
		Relation	rel = OidIsValid(relid) ? try_relation_open(relid, AccessShareLock) : NULL;

		blocks[i] = 0;
		if (rel == NULL)
			continue;
		blocks[i] = RelationGetNumberOfBlocks(rel);
		relation_close(rel, AccessShareLock);
	}
}

/*
 * Sizes read at most STATEMENTS_PER_SIZE_READ statements ago, or now when
 * fresh: a plan only needs replacing once a table has doubled, and reading
 * them costs more than a short statement (two relation opens, two system
 * calls).  A plan is always made at the sizes read then.
 */
#define STATEMENTS_PER_SIZE_READ 64

static void
growing_tables_blocks(BlockNumber *blocks, bool fresh)
{
	static BlockNumber known[SAVED_PLAN_GROWING_TABLES];
	static int	statements_since_read = STATEMENTS_PER_SIZE_READ;

	if (fresh || ++statements_since_read >= STATEMENTS_PER_SIZE_READ)
	{
		read_growing_tables_blocks(known);
		statements_since_read = 0;
	}
	memcpy(blocks, known, sizeof(known));
}

/* One table grown to more than twice its size at planning, and by 64 kB. */
static bool
outgrown(SavedPlan *plan, const BlockNumber *blocks)
{
	for (int i = 0; i < SAVED_PLAN_GROWING_TABLES; i++)
		if (blocks[i] > 2 * plan->planned_blocks[i] + 8)
			return true;
	return false;
}

/*
 * The plan cache builds the plan again by itself after an invalidation (an
 * ANALYZE, DROP and CREATE EXTENSION under a running worker), at whatever
 * size the tables then have, which planned_blocks does not know: a plan made
 * again over an empty, recreated table would scan it whole until the table
 * outgrew the old one's size.  Such a plan is made again here, at a size
 * known.
 */
static bool
rebuilt_unseen(SavedPlan *plan)
{
	return plan->plan_generation != 0 && plan->source->generation != plan->plan_generation;
}

/* The statement's plan, prepared and saved on first use (see spi_util.h). */
static SPIPlanPtr
saved_plan_ready(SavedPlan *plan)
{
	BlockNumber blocks[SAVED_PLAN_GROWING_TABLES];

	growing_tables_blocks(blocks, false);
	if (plan->plan != NULL && (outgrown(plan, blocks) || rebuilt_unseen(plan)))
	{
		SPI_freeplan(plan->plan);
		plan->plan = NULL;
	}
	if (plan->plan == NULL)
	{
		/*
		 * Always the generic plan: these statements are chosen for index
		 * paths that do not depend on the values, and re-planning them per
		 * call costs more than running them.
		 */
		SPIPlanPtr	prepared;

		growing_tables_blocks(blocks, true);
		prepared = SPI_prepare_cursor(plan->sql, plan->nargs, plan->argtypes,
									  CURSOR_OPT_GENERIC_PLAN);

		if (prepared == NULL)
			elog(ERROR, "xprov: could not prepare statement: %s",
				 SPI_result_code_string(SPI_result));
		if (SPI_keepplan(prepared) != 0)
			elog(ERROR, "xprov: could not save prepared statement");
		plan->plan = prepared;
		/* one statement, one source; it lives as long as the kept plan */
		plan->source = linitial(SPI_plan_get_plan_sources(prepared));
		plan->plan_generation = 0;
		memcpy(plan->planned_blocks, blocks, sizeof(plan->planned_blocks));
	}
	return plan->plan;
}

/* After an execution: the plan it used is the one planned_blocks describes. */
static void
note_plan_built(SavedPlan *plan)
{
	if (plan->plan_generation == 0)
		plan->plan_generation = plan->source->generation;
}

/*
 * For a nested_loops_only plan, the planner settings that price every
 * other join and scan out, from here to restore_planner(); set around the
 * execution too, because the plan cache may plan again inside it.  (Bitmap
 * scans would keep the order, but a plan made over small tables picks them,
 * and each rescan of one costs an lseek and a bitmap.)
 */
static int
restrict_planner(const SavedPlan *plan)
{
	static const char *const methods[] = {"enable_hashjoin", "enable_mergejoin", "enable_seqscan",
	"enable_bitmapscan"};
	int			nest_level;

	if (!plan->nested_loops_only)
		return -1;
	nest_level = NewGUCNestLevel();
	for (int i = 0; i < lengthof(methods); i++)
		(void) set_config_option(methods[i], "off", PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE,
								 true, 0, false);
	return nest_level;
}

static void
restore_planner(int nest_level)
{
	if (nest_level >= 0)
		AtEOXact_GUC(true, nest_level);
}

int
saved_plan_execute(SavedPlan *plan, Datum *values, const char *nulls,
				   bool read_only, long count)
{
	int			nest_level = restrict_planner(plan);
	int			rc = SPI_execute_plan(saved_plan_ready(plan), values, nulls, read_only, count);

	if (rc < 0)
		elog(ERROR, "xprov: statement failed: %s", SPI_result_code_string(rc));
	restore_planner(nest_level);
	note_plan_built(plan);
	return rc;
}

int
saved_plan_execute_latest(SavedPlan *plan, Datum *values, const char *nulls, long count)
{
	int			rc = SPI_execute_snapshot(saved_plan_ready(plan), values, nulls,
										  GetLatestSnapshot(), InvalidSnapshot, true, false, count);

	if (rc < 0)
		elog(ERROR, "xprov: statement failed: %s", SPI_result_code_string(rc));
	note_plan_built(plan);
	return rc;
}

bool
spi_get_datum(uint64 row, int col, Datum *value)
{
	bool		isnull;

	*value = SPI_getbinval(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, col, &isnull);
	return !isnull;
}

int64
spi_get_int64(uint64 row, int col)
{
	Datum		value;

	if (!spi_get_datum(row, col, &value))
		elog(ERROR, "xprov: unexpected null in column %d", col);
	return DatumGetInt64(value);
}

int32
spi_get_int32(uint64 row, int col)
{
	Datum		value;

	if (!spi_get_datum(row, col, &value))
		elog(ERROR, "xprov: unexpected null in column %d", col);
	return DatumGetInt32(value);
}

char
spi_get_char(uint64 row, int col)
{
	Datum		value;

	if (!spi_get_datum(row, col, &value))
		return '\0';
	return DatumGetChar(value);
}

TimestampTz
spi_get_timestamptz(uint64 row, int col)
{
	Datum		value;

	if (!spi_get_datum(row, col, &value))
		elog(ERROR, "xprov: unexpected null in column %d", col);
	return DatumGetTimestampTz(value);
}

/*
 * A one-dimensional array parameter of `count` elements; nulls may be NULL
 * for an array without nulls.
 */
Datum
spi_array_arg(Datum *values, bool *nulls, int count, Oid elemtype)
{
	int			dims[1] = {count};
	int			lbs[1] = {1};
	int16		typlen;
	bool		typbyval;
	char		typalign;

	get_typlenbyvalalign(elemtype, &typlen, &typbyval, &typalign);
	return PointerGetDatum(construct_md_array(values, nulls, 1, dims, lbs,
											  elemtype, typlen, typbyval, typalign));
}

/*
 * Report every lane that the last statement left ready, so that the claim
 * cursor rewinds to it at commit.  The statement returns, from first_col on:
 * state, claimant, rank, run_at, lane_id.
 */
void
spi_note_ready_lanes(int first_col)
{
	for (uint64 row = 0; row < SPI_processed; row++)
	{
		ClaimKey	key;

		if (spi_get_char(row, first_col) != 'r')
			continue;
		key.rank = spi_get_int64(row, first_col + 2);
		key.run_at = spi_get_timestamptz(row, first_col + 3);
		key.lane_id = spi_get_int64(row, first_col + 4);
		claim_cursor_note_ready(spi_get_char(row, first_col + 1), &key);
	}
}
