/*-------------------------------------------------------------------------
 *
 * dequeue.c
 *	  xprov.dequeue(): claim ready operations of external connectors.
 *
 * A claim leases the head operation of up to `batch` ready lanes, walking
 * the ready index from the shared claim cursor with SKIP LOCKED, and counts
 * the attempt at claim time so that an operation whose processor dies still
 * reaches the dead-letter state.  Leases that ran out are returned first.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "claim_cursor.h"
#include "dequeue.h"
#include "lease_cache.h"
#include "spi_util.h"
#include "xprov.h"

PG_FUNCTION_INFO_V1(xprov_dequeue);
PG_FUNCTION_INFO_V1(xprov_rewind_claims);


/*
 * Return expired leases: the lane is ready again (or dead, out of attempts)
 * and the expiry is recorded as a failed attempt.  Also reports the earliest
 * lease left (including expired ones skipped because they were locked), in a
 * last row with only that column.  A scan of the
 * lanes rather than an index on lease expiry, which every claim would have
 * to write; it runs only when a lease may have expired.
 */
static SavedPlan reclaim_expired = {
	.sql =
	"WITH x AS ("
	"  SELECT l.lane_id, l.ctid AS lane_ctid, l.next_seq, l.attempts, l.attempt_base, "
	"         l.leased_at, l.lease_expires "
	"    FROM xprov.lane l "
	"   WHERE l.state = 'l' AND l.lease_expires < $1 AND l.claimant = $2 "
	"   ORDER BY l.lane_id "
	"     FOR NO KEY UPDATE SKIP LOCKED"
	"), history AS ("
	"  INSERT INTO xprov.op_failure (op_id, attempt, started_at, outcome, error) "
	"  SELECT o.id, x.attempt_base + x.attempts, x.leased_at, "
	"         CASE WHEN x.attempts >= $3 THEN 'd' ELSE 'e' END, "
	"         'lease expired at ' || x.lease_expires "
	"    FROM x JOIN xprov.op o ON o.lane_id = x.lane_id AND o.seq = x.next_seq"
	"), returned AS ("
	"  UPDATE xprov.lane l "
	"     SET state = CASE WHEN x.attempts >= $3 THEN 'd' ELSE 'r' END, "
	"         run_at = $1, leased_at = NULL, lease_expires = NULL, leased_by = NULL, "
	"         last_error = 'lease expired at ' || x.lease_expires "
	"    FROM x WHERE l.ctid = x.lane_ctid "
	"  RETURNING l.state, l.claimant, -(l.priority::bigint) AS rank, l.run_at, l.lane_id"
	") "
	"SELECT state, claimant, rank, run_at, lane_id, NULL::timestamptz FROM returned "
	"UNION ALL "
	"SELECT NULL, NULL, NULL, NULL, NULL, "
	"       (SELECT min(l.lease_expires) FROM xprov.lane l "
	"         WHERE l.state = 'l' AND l.claimant = $2 "
	"           AND NOT EXISTS (SELECT 1 FROM x WHERE x.lane_id = l.lane_id))",
	.nargs = 3,
	.argtypes = {TIMESTAMPTZOID, CHAROID, INT4OID},
};

/*
 * The lease is written to the lane version the claim locked, found by ctid:
 * the row lock keeps it in place (no other row can take its slot), and a
 * lookup by lane_id would walk the lane's dead versions under a pinned
 * snapshot.  The versions are fetched by one TID scan of the whole array
 * (sorted once, whatever the batch size): a TID scan per row (a join on
 * ctid) asks the kernel for the table's size at every row.
 *
 * A lane rewritten by a transaction that committed after the statement's
 * snapshot is locked in its new version, which the TID scan cannot see:
 * the claim keeps it locked but does not lease it, and claims running
 * meanwhile pass it by.  Such lanes come last, with only their claim key
 * (id NULL): the transaction reports them ready, so that the cursor comes
 * back for them once it ends.
 *
 * "lane_id = l.lane_id" names the column as written.  Otherwise the
 * executor tells the lane_id index that this version's key is unchanged,
 * and a full leaf page then first tries a bottom-up deletion of the lane's
 * older versions, which a pinned snapshot keeps alive: 11 % of a pinned
 * drain's backend (perf), for nothing.  The value is the same, so nothing
 * else changes; dead entries still go by simple deletion and vacuum.
 *
 * The rows are put in claim order by their rank among the leased lanes
 * (ord), computed over the narrow lane rows: sorting the wide result by
 * the claim key itself took a fifth of the statement, every comparison
 * reading columns that lie behind the operation's variable-width ones.
 */
static SavedPlan claim = {
	.sql =
	"WITH picked AS MATERIALIZED ("
	"  SELECT l.lane_id, l.ctid, -(l.priority::bigint) AS rank, l.run_at FROM xprov.lane l "
	"   WHERE l.claimant = $1 AND l.state = 'r' AND l.run_at <= $2 "
	"     AND (-(l.priority::bigint), l.run_at, l.lane_id) > ($3, $4, $5) "
	"     AND l.connector_id IN (SELECT c.id FROM xprov.connector c "
	"                             WHERE c.enabled AND c.id <> ALL ($9)) "
	"   ORDER BY -(l.priority::bigint), l.run_at, l.lane_id "
	"   LIMIT $6 "
	"     FOR NO KEY UPDATE OF l SKIP LOCKED"
	"), leased AS ("
	"  UPDATE xprov.lane l "
	"     SET state = 'l', attempts = l.attempts + 1, leased_at = $2, lease_expires = $2 + $7, "
	"         leased_by = $8, lane_id = l.lane_id "
	"   WHERE l.ctid = ANY (ARRAY(SELECT p.ctid FROM picked p)) "
	"  RETURNING l.lane_id, l.next_seq, l.attempt_base + l.attempts - 1 AS retry_count, "
	"            l.lease_expires, -(l.priority::bigint) AS rank, l.run_at, l.ctid AS lane_ctid"
	"), ranked AS ("
	"  SELECT le.*, row_number() OVER (ORDER BY le.rank, le.run_at, le.lane_id) AS ord "
	"    FROM leased le"
	") "
	"SELECT * FROM ("
	"  SELECT o.id, o.tenant_id, o.connector_id, o.identity_id, o.target_uid, o.operation_type, "
	"         o.object_class, o.attributes, o.priority, r.retry_count, r.lease_expires, "
	"         o.not_before, o.idempotency_key, o.created_at, r.lease_expires, "
	"         r.rank, r.run_at, r.lane_id, r.lane_ctid, r.next_seq, r.ord "
	"    FROM ranked r JOIN xprov.op o ON o.lane_id = r.lane_id AND o.seq = r.next_seq "
	"  UNION ALL "
	"  SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, "
	"         NULL, p.rank, p.run_at, p.lane_id, NULL, NULL, NULL "
	"    FROM picked p WHERE NOT EXISTS (SELECT 1 FROM leased le WHERE le.lane_id = p.lane_id)"
	") c "
	" ORDER BY c.ord NULLS LAST",
	.nargs = 9,
	.argtypes = {CHAROID, TIMESTAMPTZOID, INT8OID, TIMESTAMPTZOID, INT8OID, INT4OID, INTERVALOID,
	INT8OID, UUIDARRAYOID},
};

/* Return expired leases of this claimant, when one may have expired. */
void
dequeue_reclaim_expired(char claimant, TimestampTz now)
{
	Datum		args[3];
	Datum		earliest;

	if (!claim_cursor_lease_sweep_due(claimant, now))
		return;

	args[0] = TimestampTzGetDatum(now);
	args[1] = CharGetDatum(claimant);
	args[2] = Int32GetDatum(xprov_max_attempts);
	saved_plan_execute(&reclaim_expired, args, NULL, false, 0);
	spi_note_ready_lanes(1);
	if (spi_get_datum(SPI_processed - 1, 6, &earliest))
		claim_cursor_note_lease(claimant, DatumGetTimestampTz(earliest));
}

/*
 * Lease up to `batch` operations; the caller has connected to SPI and reads
 * the rows from SPI_tuptable (the queued_operation columns, then the key),
 * as many as this returns.
 * leased_by (0: none) tags the leases with the worker's epoch; lanes of the
 * connectors in `excluded` (a uuid[] Datum, or 0) are left alone.
 */
uint64
dequeue_claim(char claimant, int batch, Interval *lease, TimestampTz now,
			  int64 leased_by, Datum excluded)
{
	ClaimKey	start;
	Datum		args[9];
	char		nulls[9];
	uint64		leased;
	Datum		id;

	claim_cursor_begin(claimant, now, &start);
	args[0] = CharGetDatum(claimant);
	args[1] = TimestampTzGetDatum(now);
	args[2] = Int64GetDatum(start.rank);
	args[3] = TimestampTzGetDatum(start.run_at);
	args[4] = Int64GetDatum(start.lane_id);
	args[5] = Int32GetDatum(batch);
	args[6] = IntervalPGetDatum(lease);
	args[7] = Int64GetDatum(leased_by);
	args[8] = excluded != (Datum) 0 ? excluded : spi_array_arg(NULL, NULL, 0, UUIDOID);
	memset(nulls, ' ', sizeof(nulls));
	if (leased_by == 0)
		nulls[7] = 'n';
	saved_plan_execute(&claim, args, nulls, false, 0);

	leased = SPI_processed;
	while (leased > 0 && !spi_get_datum(leased - 1, 1, &id))
	{
		ClaimKey	passed;

		leased--;
		passed.rank = spi_get_int64(leased, QUEUED_OPERATION_NATTS + 1);
		passed.run_at = spi_get_timestamptz(leased, QUEUED_OPERATION_NATTS + 2);
		passed.lane_id = spi_get_int64(leased, QUEUED_OPERATION_NATTS + 3);
		claim_cursor_note_ready(claimant, &passed);
	}
	if (leased > 0)
	{
		uint64		last = leased - 1;
		ClaimKey	key;

		key.rank = spi_get_int64(last, QUEUED_OPERATION_NATTS + 1);
		key.run_at = spi_get_timestamptz(last, QUEUED_OPERATION_NATTS + 2);
		key.lane_id = spi_get_int64(last, QUEUED_OPERATION_NATTS + 3);
		claim_cursor_advance(claimant, &start, &key);
		claim_cursor_note_lease(claimant, spi_get_timestamptz(0, QUEUED_OPERATION_NATTS));
	}
	return leased;
}

/* A claimed row's lease, from its columns (values[0] is column 1). */
static void
lease_from_columns(const Datum *values, const bool *nulls, LeaseRef *lease)
{
	memcpy(&lease->id, DatumGetUUIDP(values[QOP_ID - 1]), UUID_LEN);
	memcpy(&lease->tenant_id, DatumGetUUIDP(values[QOP_TENANT_ID - 1]), UUID_LEN);
	memcpy(&lease->connector_id, DatumGetUUIDP(values[QOP_CONNECTOR_ID - 1]), UUID_LEN);
	lease->lane_id = DatumGetInt64(values[QOP_LANE_ID - 1]);
	ItemPointerCopy((ItemPointer) DatumGetPointer(values[QOP_LANE_CTID - 1]), &lease->lane_ctid);
	lease->seq = DatumGetInt64(values[QOP_SEQ - 1]);
	lease->idempotency_key = nulls[QOP_IDEMPOTENCY_KEY - 1] ? NULL :
		TextDatumGetCString(values[QOP_IDEMPOTENCY_KEY - 1]);
}

/*
 * A claimed row's columns, read in one pass: fetched one by one, each
 * column after the attributes walks the row from its start again.
 */
static void
claimed_columns(SPITupleTable *rows, uint64 row, Datum **values, bool **nulls)
{
	int			natts = rows->tupdesc->natts;

	if (*values == NULL)
	{
		*values = palloc(sizeof(Datum) * natts);
		*nulls = palloc(sizeof(bool) * natts);
	}
	heap_deform_tuple(rows->vals[row], rows->tupdesc, *values, *nulls);
}

void
dequeue_read_lease(SPITupleTable *rows, uint64 row, LeaseRef *lease)
{
	Datum	   *values = NULL;
	bool	   *nulls = NULL;

	claimed_columns(rows, row, &values, &nulls);
	lease_from_columns(values, nulls, lease);
	pfree(values);
	pfree(nulls);
}

static void
check_dequeue_args(FunctionCallInfo fcinfo)
{
	Interval	zero = {0};

	if (PG_ARGISNULL(0) || PG_GETARG_INT32(0) <= 0)
		ereport(ERROR,
				errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				errmsg("batch must be a positive number of operations"),
				errhint("Pass a batch size such as 10 or 100."));
	if (PG_ARGISNULL(1) ||
		DatumGetInt32(DirectFunctionCall2(interval_cmp, PG_GETARG_DATUM(1),
										  IntervalPGetDatum(&zero))) <= 0)
		ereport(ERROR,
				errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				errmsg("lease must be a positive interval"),
				errhint("Pass how long the processor may take, for example '5 minutes'."));
}

Datum
xprov_dequeue(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	TimestampTz now = GetCurrentTimestamp();
	uint64		count;
	Datum	   *values = NULL;
	bool	   *nulls = NULL;
	Oid			lane_relid = InvalidOid;
	Oid			op_relid = InvalidOid;

	check_dequeue_args(fcinfo);
	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);

	SPI_connect();
	dequeue_reclaim_expired(CLAIMANT_EXTERNAL, now);
	count = dequeue_claim(CLAIMANT_EXTERNAL, PG_GETARG_INT32(0), PG_GETARG_INTERVAL_P(1), now,
						  0, (Datum) 0);
	if (count > 0)
	{
		Oid			namespace = get_namespace_oid("xprov", false);

		lane_relid = get_relname_relid("lane", namespace);
		op_relid = get_relname_relid("op", namespace);
	}
	for (uint64 row = 0; row < count; row++)
	{
		LeaseRef	lease;

		/* the queued_operation columns come first */
		claimed_columns(SPI_tuptable, row, &values, &nulls);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		/* kept for completions in this backend (lease_cache.h) */
		lease_from_columns(values, nulls, &lease);
		lease_cache_remember(lane_relid, op_relid, &lease);
	}
	SPI_finish();
	return (Datum) 0;
}

/*
 * Called when a connector is enabled: its lanes may lie behind the claim
 * cursors, which passed them over while it was disabled.
 */
Datum
xprov_rewind_claims(PG_FUNCTION_ARGS)
{
	claim_cursor_rewind_at_commit(false);
	PG_RETURN_VOID();
}
