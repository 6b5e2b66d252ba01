/*-------------------------------------------------------------------------
 *
 * outcome.c
 *	  Recording what happened to an operation: complete, fail, and the
 *	  operator's retry, skip and cancel.
 *
 * Every function first locks the lanes of its operations (in lane order, so
 * concurrent callers cannot deadlock) and only then, in a new statement and
 * so a new snapshot, decides what the lane does next.  The lock makes any
 * enqueue that touched the lane finish first, so its operation is seen and
 * the lane never goes idle with work behind it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/qunique.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"
#include "storage/itemptr.h"

#include "lease_cache.h"
#include "outcome.h"
#include "tenant_guard.h"
#include "spi_util.h"
#include "text_util.h"
#include "xprov.h"

PG_FUNCTION_INFO_V1(xprov_complete);
PG_FUNCTION_INFO_V1(xprov_complete_batch);
PG_FUNCTION_INFO_V1(xprov_fail);
PG_FUNCTION_INFO_V1(xprov_retry);
PG_FUNCTION_INFO_V1(xprov_skip);
PG_FUNCTION_INFO_V1(xprov_cancel);

/* An operation with its lane, as locked by lock_operations(). */
typedef struct LockedOp
{
	pg_uuid_t	id;
	int64		seq;
	int64		lane_id;
	char		lane_state;
	bool		is_head;
	int32		attempts;
	bool		finished;
	ItemPointerData lane_ctid;	/* the locked lane version: it cannot move */
	pg_uuid_t	tenant_id;
	pg_uuid_t	connector_id;
	char	   *idempotency_key;
	int64		leased_by;		/* 0: not leased by a worker */
	/* the rest of the locked lane version, for the finish statement */
	int64		next_seq;
	char	   *finished_ahead; /* bigint[] as text */
	int32		attempt_base;
	TimestampTz leased_at;
	bool		leased_at_null;
} LockedOp;

/*
 * An operation is finished once its lane has moved past it, or when it was
 * skipped or cancelled out of turn (lane.finished_ahead); the hot path never
 * has to probe the growing results table.
 */
static SavedPlan lock_ops = {
	.sql =
	"SELECT o.id, o.seq, o.lane_id, l.state, l.next_seq = o.seq AND l.state <> 'i', l.attempts, "
	"       o.seq < l.next_seq OR o.seq = ANY (l.finished_ahead), l.ctid, "
	"       o.tenant_id, o.connector_id, o.idempotency_key, l.leased_by, "
	"       l.next_seq, l.finished_ahead::text, l.attempt_base, l.leased_at "
	"  FROM xprov.op o JOIN xprov.lane l ON l.lane_id = o.lane_id "
	" WHERE o.id = ANY ($1) "
	" ORDER BY o.lane_id "
	"   FOR NO KEY UPDATE OF l",
	.nargs = 1,
	.argtypes = {UUIDARRAYOID},
};

/* Error paths only: how a finished operation ended. */
static SavedPlan finished_status = {
	.sql = "SELECT status FROM xprov.op_result WHERE op_id = $1",
	.nargs = 1,
	.argtypes = {UUIDOID},
};

/*
 * The statements below address lanes by the ctid of the version
 * lock_operations() locked: under a pinned snapshot a lane accumulates dead
 * versions that a lookup by lane_id would have to walk, every time.
 *
 * Record final outcomes.  A finished head moves its lane to the next
 * operation not already finished out of turn, or makes it idle; an operation
 * finished out of turn is remembered in finished_ahead until the head passes.
 *
 * What the statement needs of each lane comes with the input, as
 * lock_operations() read the locked version: matching the input to the
 * lanes in SQL was a nested loop of n * n comparisons in the worker's plan.
 *
 * Two forms of the statement differ only in how the UPDATE finds the lanes.
 * Up to FINISH_BATCH_MATCH_MAX rows, one TID scan fetches every lane and
 * rows are matched in memory ("(l.ctid = x) IS TRUE" is no TID condition),
 * which costs n * n comparisons; beyond that, a TID scan per row, which
 * costs a system call per row (a TID scan asks the kernel for the table's
 * size every time it starts).
 */
#define FINISH_BATCH_MATCH_MAX 128

#define FINISH_INPUT \
	"WITH r AS (" \
	"  SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::jsonb[], $6::text[], " \
	"                       $7::tid[], $8::uuid[], $9::uuid[], $10::uuid[], $11::text[], $12::text[], " \
	"                       $13::bigint[], $14::text[], $15::text[], $16::int[], $17::int[], " \
	"                       $18::timestamptz[]) " \
	"    AS r(seq, lane_id, status, target_uid, result, reason, lane_ctid, id, tenant_id, " \
	"         connector_id, idempotency_key, hooks, l_next_seq, l_state, l_finished_ahead, " \
	"         l_attempt_base, l_attempts, l_leased_at)" \
	"), fin AS (" \
	"  SELECT r.*, r.l_next_seq = r.seq AND r.l_state <> 'i' AS is_head, " \
	"         r.l_finished_ahead::bigint[] AS finished_ahead, " \
	"         r.l_attempt_base + r.l_attempts AS attempts, r.l_leased_at AS leased_at " \
	"    FROM r" \
	")"

#define FINISH_UPDATE \
	", res AS (" \
	"  INSERT INTO xprov.op_result (op_id, tenant_id, connector_id, status, attempts, started_at, " \
	"                               target_uid, result, reason, hooks) " \
	"  SELECT id, tenant_id, connector_id, status::\"char\", CASE WHEN is_head THEN attempts ELSE 0 END, " \
	"         CASE WHEN is_head THEN leased_at END, target_uid, result, reason, hooks FROM fin" \
	"), keys AS (" \
	"  DELETE FROM xprov.idempotency i USING fin " \
	"   WHERE fin.idempotency_key IS NOT NULL AND i.tenant_id = fin.tenant_id " \
	"     AND i.key = fin.idempotency_key AND i.op_id = fin.id" \
	"), nxt AS (" \
	"  SELECT fin.lane_id, fin.lane_ctid, fin.seq, fin.is_head, fin.finished_ahead, " \
	"         n.seq AS next_seq, n.priority, n.not_before " \
	"    FROM fin LEFT JOIN LATERAL (" \
	"      SELECT o.seq, o.priority, o.not_before FROM xprov.op o " \
	"       WHERE fin.is_head AND o.lane_id = fin.lane_id AND o.seq > fin.seq " \
	"         AND o.seq <> ALL (fin.finished_ahead) " \
	"       ORDER BY o.seq LIMIT 1) n ON true" \
	") " \
	"UPDATE xprov.lane l " \
	"   SET state = CASE WHEN NOT nxt.is_head THEN l.state " \
	"                    WHEN nxt.next_seq IS NULL THEN 'i' ELSE 'r' END, " \
	"       next_seq = CASE WHEN NOT nxt.is_head THEN l.next_seq " \
	"                       ELSE coalesce(nxt.next_seq, nxt.seq + 1) END, " \
	"       priority = CASE WHEN NOT nxt.is_head THEN l.priority " \
	"                       ELSE coalesce(nxt.priority, l.priority) END, " \
	"       run_at = CASE WHEN NOT nxt.is_head THEN l.run_at " \
	"                     ELSE greatest(now(), nxt.not_before) END, " \
	"       finished_ahead = CASE WHEN NOT nxt.is_head THEN l.finished_ahead || nxt.seq " \
	"                             WHEN cardinality(l.finished_ahead) = 0 THEN l.finished_ahead " \
	"                             ELSE ARRAY(SELECT s FROM unnest(l.finished_ahead) s " \
	"                                         WHERE s > coalesce(nxt.next_seq, nxt.seq)) END, " \
	"       attempts = CASE WHEN NOT nxt.is_head THEN l.attempts ELSE 0 END, " \
	"       attempt_base = CASE WHEN NOT nxt.is_head THEN l.attempt_base ELSE 0 END, " \
	"       leased_at = CASE WHEN NOT nxt.is_head THEN l.leased_at END, " \
	"       lease_expires = CASE WHEN NOT nxt.is_head THEN l.lease_expires END, " \
	"       leased_by = CASE WHEN NOT nxt.is_head THEN l.leased_by END, " \
	"       last_error = CASE WHEN NOT nxt.is_head THEN l.last_error END " \
	"  FROM nxt WHERE l.ctid = ANY ($7) AND "

#define FINISH_RETURNING \
	" RETURNING l.state, l.claimant, -(l.priority::bigint), l.run_at, l.lane_id"

#define FINISH_ARGTYPES \
	{INT8ARRAYOID, INT8ARRAYOID, TEXTARRAYOID, TEXTARRAYOID, JSONBARRAYOID, TEXTARRAYOID, \
	 TIDARRAYOID, UUIDARRAYOID, UUIDARRAYOID, UUIDARRAYOID, TEXTARRAYOID, TEXTARRAYOID, \
	 INT8ARRAYOID, TEXTARRAYOID, TEXTARRAYOID, INT4ARRAYOID, INT4ARRAYOID, TIMESTAMPTZARRAYOID}

static SavedPlan finish_ops_in_memory = {
	.sql = FINISH_INPUT FINISH_UPDATE "(l.ctid = nxt.lane_ctid) IS TRUE"
	FINISH_RETURNING,
	.nargs = 18,
	.argtypes = FINISH_ARGTYPES,
};

static SavedPlan finish_ops_per_row = {
	.sql = FINISH_INPUT FINISH_UPDATE "l.ctid = nxt.lane_ctid" FINISH_RETURNING,
	.nargs = 18,
	.argtypes = FINISH_ARGTYPES,
};

/*
 * The common case, every operation the head of its lane (completions): what
 * a lane does next depends only on the lane row itself, so the UPDATE needs
 * no join with the input, which matched rows to lanes in n * n comparisons
 * and copied every input row whole for the executor's recheck.  The input's
 * columns are those of FINISH_INPUT; only the ones used are read, by
 * unnest() calls in the select list, which stream in step (in FROM, each
 * would first copy its array into a tuplestore of its own).
 * "lane_id = l.lane_id": see the claim statement in dequeue.c.
 */
static SavedPlan finish_heads = {
	.sql =
	"WITH r AS ("
	"  SELECT unnest($3::text[]) AS status, unnest($4::text[]) AS target_uid, "
	"         unnest($5::jsonb[]) AS result, unnest($6::text[]) AS reason, "
	"         unnest($8::uuid[]) AS id, unnest($9::uuid[]) AS tenant_id, "
	"         unnest($10::uuid[]) AS connector_id, unnest($11::text[]) AS idempotency_key, "
	"         unnest($12::text[]) AS hooks, unnest($16::int[]) AS l_attempt_base, "
	"         unnest($17::int[]) AS l_attempts, unnest($18::timestamptz[]) AS l_leased_at"
	"), res AS ("
	"  INSERT INTO xprov.op_result (op_id, tenant_id, connector_id, status, attempts, started_at, "
	"                               target_uid, result, reason, hooks) "
	"  SELECT id, tenant_id, connector_id, status::\"char\", l_attempt_base + l_attempts, l_leased_at, "
	"         target_uid, result, reason, hooks FROM r"
	"), keys AS ("
	"  DELETE FROM xprov.idempotency i USING r "
	"   WHERE r.idempotency_key IS NOT NULL AND i.tenant_id = r.tenant_id "
	"     AND i.key = r.idempotency_key AND i.op_id = r.id"
	") "
	"UPDATE xprov.lane l "
	"   SET (state, next_seq, priority, run_at, finished_ahead) = ("
	"         SELECT CASE WHEN n.seq IS NULL THEN 'i' ELSE 'r' END, "
	"                coalesce(n.seq, l.next_seq + 1), coalesce(n.priority, l.priority), "
	"                greatest(now(), n.not_before), "
	"                CASE WHEN cardinality(l.finished_ahead) = 0 THEN l.finished_ahead "
	"                     ELSE ARRAY(SELECT s FROM unnest(l.finished_ahead) s "
	"                                 WHERE s > coalesce(n.seq, l.next_seq)) END "
	"           FROM (SELECT 1) one LEFT JOIN LATERAL ("
	"                SELECT o.seq, o.priority, o.not_before FROM xprov.op o "
	"                 WHERE o.lane_id = l.lane_id AND o.seq > l.next_seq "
	"                   AND o.seq <> ALL (l.finished_ahead) "
	"                 ORDER BY o.seq LIMIT 1) n ON true), "
	"       attempts = 0, attempt_base = 0, leased_at = NULL, lease_expires = NULL, "
	"       leased_by = NULL, last_error = NULL, lane_id = l.lane_id "
	" WHERE l.ctid = ANY ($7) "
	FINISH_RETURNING,
	.nargs = 18,
	.argtypes = FINISH_ARGTYPES,
};

static SavedPlan fail_op = {
	.sql =
	"WITH f AS ("
	"  SELECT l.lane_id, l.attempts, l.attempt_base, l.leased_at, "
	"         ($4 OR l.attempts >= $6) AS dead, "
	"         now() + coalesce($5, make_interval(secs => "
	"             least($8, $7 * power(2, least(l.attempts - 1, 62))) * (0.5 + random() / 2))) AS due "
	"    FROM xprov.lane l WHERE l.ctid = $10"
	"), history AS ("
	"  INSERT INTO xprov.op_failure (op_id, attempt, started_at, outcome, http_status, error, hooks) "
	"  SELECT $2, f.attempt_base + f.attempts, f.leased_at, "
	"         CASE WHEN f.dead THEN 'd' ELSE 'f' END, $9, $3, $11 FROM f"
	") "
	"UPDATE xprov.lane l "
	"   SET state = CASE WHEN f.dead THEN 'd' ELSE 'r' END, "
	"       run_at = CASE WHEN f.dead THEN l.run_at ELSE f.due END, "
	"       last_error = $3, leased_at = NULL, lease_expires = NULL, leased_by = NULL "
	"  FROM f WHERE l.ctid = $10 "
	"RETURNING l.state, l.claimant, -(l.priority::bigint), l.run_at, l.lane_id",
	.nargs = 11,
	.argtypes = {INT8OID, UUIDOID, TEXTOID, BOOLOID, INTERVALOID, INT4OID, FLOAT8OID, FLOAT8OID, INT4OID,
	TIDOID, TEXTOID},
};

/*
 * Give a lease back without spending the attempt: the operation was never
 * tried (shutdown, connector paused) or the connector as a whole failed.
 * attempt_base moves up so that attempt numbers in the history stay unique;
 * an error, when given, is kept in the history as a 'p' (paused) attempt.
 */
static SavedPlan release_op = {
	.sql =
	"WITH f AS ("
	"  SELECT l.attempts, l.attempt_base, l.leased_at FROM xprov.lane l WHERE l.ctid = $1"
	"), history AS ("
	"  INSERT INTO xprov.op_failure (op_id, attempt, started_at, outcome, http_status, error) "
	"  SELECT $2, f.attempt_base + f.attempts, f.leased_at, 'p', $5, $4 FROM f WHERE $4 IS NOT NULL"
	") "
	"UPDATE xprov.lane l "
	"   SET state = 'r', run_at = greatest($3, now()), "
	"       attempts = l.attempts - 1, "
	"       attempt_base = l.attempt_base + CASE WHEN $4 IS NULL THEN 0 ELSE 1 END, "
	"       last_error = coalesce($4, l.last_error), "
	"       leased_at = NULL, lease_expires = NULL, leased_by = NULL "
	" WHERE l.ctid = $1 "
	"RETURNING l.state, l.claimant, -(l.priority::bigint), l.run_at, l.lane_id",
	.nargs = 5,
	.argtypes = {TIDOID, UUIDOID, TIMESTAMPTZOID, TEXTOID, INT4OID},
};

static SavedPlan park_op = {
	.sql = "SELECT xprov._park($1, $2::jsonb, $3)",
	.nargs = 3,
	.argtypes = {UUIDOID, TEXTOID, TEXTOID},
};

static SavedPlan retry_lane = {
	.sql =
	"UPDATE xprov.lane "
	"   SET state = 'r', attempt_base = attempt_base + attempts, attempts = 0, "
	"       run_at = now(), last_error = NULL "
	" WHERE ctid = $1 "
	"RETURNING state, claimant, -(priority::bigint), run_at, lane_id",
	.nargs = 1,
	.argtypes = {TIDOID},
};

static const char *
status_name(const LockedOp *op)
{
	if (op->finished)
	{
		Datum		arg = UUIDPGetDatum(&op->id);

		saved_plan_execute(&finished_status, &arg, NULL, true, 1);
		switch (SPI_processed == 1 ? spi_get_char(0, 1) : '\0')
		{
			case 'c':
				return "completed";
			case 's':
				return "skipped";
			case 'x':
				return "cancelled";
		}
		return "finished";
	}
	if (!op->is_head)
		return "pending";
	switch (op->lane_state)
	{
		case 'l':
			return "in_progress";
		case 'd':
			return "dead_letter";
		case 'p':
			return "parked";
		case 'r':
			return op->attempts > 0 ? "failed" : "pending";
	}
	return "pending";
}

static void
raise_wrong_status(const LockedOp *op, const char *action, const char *allowed)
{
	ereport(ERROR,
			errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			errmsg("cannot %s operation %s", action, uuid_text(&op->id)),
			errdetail("The operation is %s; only %s operations can be %s.",
					  status_name(op), allowed,
					  strcmp(action, "complete") == 0 ? "completed" :
					  strcmp(action, "fail") == 0 ? "failed" :
					  strcmp(action, "retry") == 0 ? "retried" :
					  strcmp(action, "skip") == 0 ? "skipped" : "cancelled"),
			errhint("Check its status in xprov.operations."));
}

/*
 * Lock the lanes of the given operations and read their state.  Raises
 * undefined_object for an id that does not exist.  Returns one LockedOp per
 * distinct id, in lane order.
 */
static LockedOp *
lock_operations(Datum *ids, int count, int *found)
{
	Datum		arg = spi_array_arg(ids, NULL, count, UUIDOID);
	LockedOp   *ops;

	saved_plan_execute(&lock_ops, &arg, NULL, false, 0);
	ops = palloc0(sizeof(LockedOp) * Max(SPI_processed, 1));
	for (uint64 row = 0; row < SPI_processed; row++)
	{
		Datum		value;

		spi_get_datum(row, 1, &value);
		memcpy(&ops[row].id, DatumGetUUIDP(value), UUID_LEN);
		ops[row].seq = spi_get_int64(row, 2);
		ops[row].lane_id = spi_get_int64(row, 3);
		ops[row].lane_state = spi_get_char(row, 4);
		spi_get_datum(row, 5, &value);
		ops[row].is_head = DatumGetBool(value);
		ops[row].attempts = spi_get_int32(row, 6);
		spi_get_datum(row, 7, &value);
		ops[row].finished = DatumGetBool(value);
		spi_get_datum(row, 8, &value);
		ItemPointerCopy((ItemPointer) DatumGetPointer(value), &ops[row].lane_ctid);
		spi_get_datum(row, 9, &value);
		memcpy(&ops[row].tenant_id, DatumGetUUIDP(value), UUID_LEN);
		spi_get_datum(row, 10, &value);
		memcpy(&ops[row].connector_id, DatumGetUUIDP(value), UUID_LEN);
		ops[row].idempotency_key = SPI_getvalue(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, 11);
		ops[row].leased_by = spi_get_datum(row, 12, &value) ? DatumGetInt64(value) : 0;
		ops[row].next_seq = spi_get_int64(row, 13);
		ops[row].finished_ahead = SPI_getvalue(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, 14);
		ops[row].attempt_base = spi_get_int32(row, 15);
		ops[row].leased_at_null = !spi_get_datum(row, 16, &value);
		ops[row].leased_at = ops[row].leased_at_null ? 0 : DatumGetTimestampTz(value);
	}
	*found = (int) SPI_processed;

	/* name the first id that was not found */
	for (int i = 0; i < count && *found < count; i++)
	{
		bool		present = false;

		for (int j = 0; j < *found && !present; j++)
			present = memcmp(&ops[j].id, DatumGetUUIDP(ids[i]), UUID_LEN) == 0;
		if (!present)
			ereport(ERROR,
					errcode(ERRCODE_UNDEFINED_OBJECT),
					errmsg("operation %s does not exist", uuid_text(DatumGetUUIDP(ids[i]))),
					errhint("List operations in xprov.operations."));
	}
	return ops;
}

static LockedOp *lock_dequeued(Datum *ids, int count, int *found);

/*
 * tenant_scoped: the operator's functions (retry, skip, cancel), which a
 * role other than xprov_admin may use only on the tenant in context; an
 * operation of another tenant does not exist for it.  complete and fail
 * belong to external processors, which serve every tenant, as the worker
 * does.
 */
static LockedOp
lock_one(FunctionCallInfo fcinfo, bool tenant_scoped)
{
	Datum		id;
	int			found;
	LockedOp	op;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				errmsg("operation_id must not be null"));
	id = PG_GETARG_DATUM(0);
	op = tenant_scoped ? *lock_operations(&id, 1, &found) : *lock_dequeued(&id, 1, &found);
	if (tenant_scoped && !tenant_guard_allows(tenant_guard_caller_is_admin(), &op.tenant_id))
		ereport(ERROR,
				errcode(ERRCODE_UNDEFINED_OBJECT),
				errmsg("operation %s does not exist", uuid_text(&op.id)),
				errhint("List operations in xprov.operations."));
	return op;
}

static bool
is_leased(const LockedOp *op)
{
	return !op->finished && op->is_head && op->lane_state == 'l';
}

/*
 * Record outcome `status` for each op.  target_uids and results may be NULL
 * (all NULL), as may their entries.
 */
static void
finish_operations(const LockedOp *ops, int count, char status,
				  char **target_uids, Jsonb **results, const char *reason, char **hooks)
{
	enum
	{
		SEQ, LANE, STATUS, TARGET_UID, RESULT, REASON, CTID, ID, TENANT, CONNECTOR, IDEM_KEY, HOOKS,
		NEXT_SEQ, LANE_STATE, FINISHED_AHEAD, ATTEMPT_BASE, ATTEMPTS, LEASED_AT,
		NCOLS
	};
	static const Oid types[NCOLS] = {INT8OID, INT8OID, TEXTOID, TEXTOID, JSONBOID, TEXTOID,
		TIDOID, UUIDOID, UUIDOID, UUIDOID, TEXTOID, TEXTOID,
	INT8OID, TEXTOID, TEXTOID, INT4OID, INT4OID, TIMESTAMPTZOID};
	Datum		args[NCOLS];
	char		status_text[2] = {status, '\0'};
	bool		all_heads = true;

	for (int i = 0; i < count; i++)
		all_heads = all_heads && ops[i].is_head;

	for (int c = 0; c < NCOLS; c++)
	{
		Datum	   *values = palloc0(sizeof(Datum) * count);
		bool	   *nulls = palloc0(sizeof(bool) * count);

		for (int i = 0; i < count; i++)
		{
			const LockedOp *op = &ops[i];

			switch (c)
			{
				case SEQ:
					values[i] = Int64GetDatum(op->seq);
					break;
				case LANE:
					values[i] = Int64GetDatum(op->lane_id);
					break;
				case STATUS:
					values[i] = CStringGetTextDatum(status_text);
					break;
				case TARGET_UID:
					nulls[i] = target_uids == NULL || target_uids[i] == NULL;
					if (!nulls[i])
						values[i] = CStringGetTextDatum(target_uids[i]);
					break;
				case RESULT:
					nulls[i] = results == NULL || results[i] == NULL;
					if (!nulls[i])
						values[i] = JsonbPGetDatum(results[i]);
					break;
				case REASON:
					nulls[i] = reason == NULL;
					if (!nulls[i])
						values[i] = CStringGetTextDatum(reason);
					break;
				case CTID:
					values[i] = PointerGetDatum(&op->lane_ctid);
					break;
				case ID:
					values[i] = UUIDPGetDatum(&op->id);
					break;
				case TENANT:
					values[i] = UUIDPGetDatum(&op->tenant_id);
					break;
				case CONNECTOR:
					values[i] = UUIDPGetDatum(&op->connector_id);
					break;
				case IDEM_KEY:
					nulls[i] = op->idempotency_key == NULL;
					if (!nulls[i])
						values[i] = CStringGetTextDatum(op->idempotency_key);
					break;
				case HOOKS:
					nulls[i] = hooks == NULL || hooks[i] == NULL;
					if (!nulls[i])
						values[i] = CStringGetTextDatum(hooks[i]);
					break;
				case NEXT_SEQ:
					values[i] = Int64GetDatum(op->next_seq);
					break;
				case LANE_STATE:
					{
						char		state[2] = {op->lane_state, '\0'};

						values[i] = CStringGetTextDatum(state);
					}
					break;
				case FINISHED_AHEAD:
					values[i] = CStringGetTextDatum(op->finished_ahead ? op->finished_ahead : "{}");
					break;
				case ATTEMPT_BASE:
					values[i] = Int32GetDatum(op->attempt_base);
					break;
				case ATTEMPTS:
					values[i] = Int32GetDatum(op->attempts);
					break;
				case LEASED_AT:
					nulls[i] = op->leased_at_null;
					if (!nulls[i])
						values[i] = TimestampTzGetDatum(op->leased_at);
					break;
			}
		}
		args[c] = spi_array_arg(values, nulls, count, types[c]);
	}
	saved_plan_execute(all_heads ? &finish_heads :
					   count <= FINISH_BATCH_MATCH_MAX ? &finish_ops_in_memory : &finish_ops_per_row,
					   args, NULL, false, 0);
	spi_note_ready_lanes(1);
}

Datum
xprov_complete(PG_FUNCTION_ARGS)
{
	LockedOp	op;
	char	   *target_uid = PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1));
	Jsonb	   *result = PG_ARGISNULL(2) ? NULL : PG_GETARG_JSONB_P(2);

	SPI_connect();
	op = lock_one(fcinfo, false);
	if (!is_leased(&op))
		raise_wrong_status(&op, "complete", "in_progress");
	finish_operations(&op, 1, 'c', &target_uid, &result, NULL, NULL);
	SPI_finish();
	PG_RETURN_VOID();
}

static int
compare_ids(const void *a, const void *b)
{
	return memcmp(DatumGetUUIDP(*(const Datum *) a), DatumGetUUIDP(*(const Datum *) b), UUID_LEN);
}

/* Sorts ids and leaves each once; returns how many are left. */
static int
distinct_ids(Datum *ids, int count)
{
	qsort(ids, count, sizeof(Datum), compare_ids);
	return (int) qunique(ids, count, sizeof(Datum), compare_ids);
}

Datum
xprov_complete_batch(PG_FUNCTION_ARGS)
{
	ArrayType  *array;
	Datum	   *ids;
	bool	   *nulls;
	int			count;
	int			found;
	LockedOp   *ops;

	/* array_agg() over an empty dequeue is NULL: nothing to complete */
	if (PG_ARGISNULL(0))
		PG_RETURN_INT64(0);
	array = PG_GETARG_ARRAYTYPE_P(0);
	deconstruct_array(array, UUIDOID, UUID_LEN, false, TYPALIGN_CHAR, &ids, &nulls, &count);
	for (int i = 0; i < count; i++)
		if (nulls[i])
			ereport(ERROR,
					errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					errmsg("operation_ids must not contain nulls"));
	if (count == 0)
		PG_RETURN_INT64(0);
	count = distinct_ids(ids, count);

	SPI_connect();
	ops = lock_dequeued(ids, count, &found);
	for (int i = 0; i < found; i++)
		if (!is_leased(&ops[i]))
			raise_wrong_status(&ops[i], "complete", "in_progress");
	finish_operations(ops, found, 'c', NULL, NULL, NULL, NULL);
	SPI_finish();
	PG_RETURN_INT64(found);
}

/*
 * A failed attempt of a leased operation: retried after the backoff (or
 * exactly retry_after, a nullable interval Datum), or dead-lettered.
 */
static void
record_failure(const LockedOp *op, const char *error, bool permanent,
			   const Interval *retry_after, int http_status, const char *hooks)
{
	Datum		args[11];
	char		nulls[11];

	memset(nulls, ' ', sizeof(nulls));
	args[0] = Int64GetDatum(op->lane_id);
	args[1] = UUIDPGetDatum(&op->id);
	args[2] = CStringGetTextDatum(error);
	args[3] = BoolGetDatum(permanent);
	args[4] = IntervalPGetDatum(retry_after);
	nulls[4] = retry_after == NULL ? 'n' : ' ';
	args[5] = Int32GetDatum(xprov_max_attempts);
	args[6] = Float8GetDatum(xprov_retry_base_ms / 1000.0);
	args[7] = Float8GetDatum(xprov_retry_max_ms / 1000.0);
	args[8] = Int32GetDatum(http_status);
	nulls[8] = http_status == 0 ? 'n' : ' ';
	args[9] = PointerGetDatum(&op->lane_ctid);
	args[10] = hooks ? CStringGetTextDatum(hooks) : (Datum) 0;
	nulls[10] = hooks == NULL ? 'n' : ' ';
	saved_plan_execute(&fail_op, args, nulls, false, 0);
	spi_note_ready_lanes(1);
}

Datum
xprov_fail(PG_FUNCTION_ARGS)
{
	LockedOp	op;

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				errmsg("error must not be null"),
				errhint("Say why the attempt failed; it is kept in xprov.operation_attempts."));

	SPI_connect();
	op = lock_one(fcinfo, false);
	if (!is_leased(&op))
		raise_wrong_status(&op, "fail", "in_progress");
	record_failure(&op, text_to_cstring(PG_GETARG_TEXT_PP(1)),
				   !PG_ARGISNULL(2) && PG_GETARG_BOOL(2),
				   PG_ARGISNULL(3) ? NULL : PG_GETARG_INTERVAL_P(3), 0, NULL);
	SPI_finish();
	PG_RETURN_VOID();
}

Datum
xprov_retry(PG_FUNCTION_ARGS)
{
	LockedOp	op;
	Datum		arg;

	SPI_connect();
	op = lock_one(fcinfo, true);
	if (op.finished || !op.is_head || op.lane_state != 'd')
		raise_wrong_status(&op, "retry", "dead_letter");
	arg = PointerGetDatum(&op.lane_ctid);
	saved_plan_execute(&retry_lane, &arg, NULL, false, 0);
	spi_note_ready_lanes(1);
	SPI_finish();
	PG_RETURN_VOID();
}

Datum
xprov_skip(PG_FUNCTION_ARGS)
{
	LockedOp	op;
	char	   *reason = PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1));

	if (reason == NULL || reason[0] == '\0')
		ereport(ERROR,
				errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				errmsg("a reason is required to skip an operation"),
				errhint("Say why the operation is resolved without running; it is kept in xprov.operations.last_error."));

	SPI_connect();
	op = lock_one(fcinfo, true);
	if (op.finished || (op.is_head && op.lane_state == 'l'))
		raise_wrong_status(&op, "skip", "pending, failed, parked or dead_letter");
	finish_operations(&op, 1, 's', NULL, NULL, reason, NULL);
	SPI_finish();
	PG_RETURN_VOID();
}

Datum
xprov_cancel(PG_FUNCTION_ARGS)
{
	LockedOp	op;

	SPI_connect();
	op = lock_one(fcinfo, true);
	if (strcmp(status_name(&op), "pending") != 0)
		raise_wrong_status(&op, "cancel", "pending");
	finish_operations(&op, 1, 'x', NULL, NULL, "cancelled", NULL);
	SPI_finish();
	PG_RETURN_VOID();
}

/*
 * The background worker's side: its operations are recorded in batches, and
 * an operation that is no longer leased by the calling worker (its lease ran
 * out and was reclaimed) is passed over with a log line instead of failing
 * the whole batch.
 *
 * The worker knows its operations from the claim, and which lane version
 * the claim wrote: it locks that version by ctid, one TID scan for the
 * batch, where lock_ops looks up every operation by id and then its lane
 * (two random index probes per operation, a third of the time a noop batch
 * spends recording).  An enqueue behind the leased head only locks that
 * version, which the lock here waits for.  A lane written since is not
 * found as claimed and goes the long way: an operator's skip behind the
 * head rewrites the lane row, and a reclaimed lease is no longer this
 * worker's.
 * Rows come back in lane order, so locks are taken in lane order, except
 * that the long way locks its lanes after the others: that can only
 * deadlock with a concurrent multi-lane lock in the rare case it is taken,
 * and the deadlock detector then fails the batch, which is recorded again
 * operation by operation.
 */
static SavedPlan lock_leased_lanes = {
	.sql =
	"SELECT l.lane_id, l.ctid, l.state, l.next_seq, l.attempts, l.leased_by, "
	"       l.finished_ahead::text, l.attempt_base, l.leased_at "
	"  FROM xprov.lane l "
	" WHERE l.ctid = ANY ($1) "
	" ORDER BY l.lane_id "
	"   FOR NO KEY UPDATE",
	.nargs = 1,
	.argtypes = {TIDARRAYOID},
};

static bool
is_leased_by(const LockedOp *op, int64 leased_by)
{
	if (is_leased(op) && op->leased_by == leased_by)
		return true;
	ereport(LOG,
			errmsg("xprov worker: operation %s is no longer leased by this worker; its outcome is not recorded",
				   uuid_text(&op->id)));
	return false;
}

/* A lane row of lock_leased_lanes as the LockedOp of the lease it holds. */
static void
locked_lease(const LeaseRef *lease, uint64 row, LockedOp *op)
{
	Datum		value;

	memset(op, 0, sizeof(LockedOp));
	op->id = lease->id;
	op->seq = lease->seq;
	op->lane_id = lease->lane_id;
	op->lane_state = 'l';
	op->is_head = true;
	op->attempts = spi_get_int32(row, 5);
	spi_get_datum(row, 2, &value);
	ItemPointerCopy((ItemPointer) DatumGetPointer(value), &op->lane_ctid);
	op->tenant_id = lease->tenant_id;
	op->connector_id = lease->connector_id;
	op->idempotency_key = lease->idempotency_key;
	op->leased_by = spi_get_datum(row, 6, &value) ? DatumGetInt64(value) : 0;
	op->next_seq = lease->seq;
	op->finished_ahead = SPI_getvalue(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, 7);
	op->attempt_base = spi_get_int32(row, 8);
	op->leased_at_null = !spi_get_datum(row, 9, &value);
	op->leased_at = op->leased_at_null ? 0 : DatumGetTimestampTz(value);
}

/*
 * Lock the lanes of leases the worker `leased_by` holds.  Returns a LockedOp
 * per lease still held, in no particular order; *kept_index maps each to its
 * position in leases.  The others are logged and left out.  leased_by 0:
 * leases of xprov.dequeue(), whose callers check every operation returned
 * (an operation no longer leased is locked and returned as it is).
 */
static LockedOp *
lock_leases(const LeaseRef *leases, int count, int64 leased_by, int *kept, int **kept_index)
{
	Datum	   *ctids = palloc(sizeof(Datum) * count);
	Datum		arg;
	bool	   *found = palloc0(sizeof(bool) * count);
	LockedOp   *ops = palloc(sizeof(LockedOp) * count);
	int		   *index = palloc(sizeof(int) * count);
	Datum	   *missing = palloc(sizeof(Datum) * count);
	int			nmissing = 0;
	int			n = 0;

	for (int i = 0; i < count; i++)
		ctids[i] = PointerGetDatum(&leases[i].lane_ctid);
	arg = spi_array_arg(ctids, NULL, count, TIDOID);
	saved_plan_execute(&lock_leased_lanes, &arg, NULL, false, 0);

	for (uint64 row = 0; row < SPI_processed; row++)
	{
		int64		lane_id = spi_get_int64(row, 1);
		char		state = spi_get_char(row, 3);
		int64		next_seq = spi_get_int64(row, 4);
		Datum		by;
		bool		ours = spi_get_datum(row, 6, &by) ? DatumGetInt64(by) == leased_by : leased_by == 0;

		for (int i = 0; i < count; i++)
		{
			if (found[i] || leases[i].lane_id != lane_id)
				continue;
			if (ours && state == 'l' && next_seq == leases[i].seq)
			{
				locked_lease(&leases[i], row, &ops[n]);
				index[n++] = i;
				found[i] = true;
			}
			break;
		}
	}
	for (int i = 0; i < count; i++)
		if (!found[i])
			missing[nmissing++] = UUIDPGetDatum(&leases[i].id);

	if (nmissing > 0)
	{
		int			nlocked;
		LockedOp   *locked = lock_operations(missing, nmissing, &nlocked);

		for (int j = 0; j < nlocked; j++)
		{
			if (leased_by != 0 && !is_leased_by(&locked[j], leased_by))
				continue;
			for (int i = 0; i < count; i++)
				if (!found[i] && memcmp(&leases[i].id, &locked[j].id, UUID_LEN) == 0)
				{
					ops[n] = locked[j];
					index[n++] = i;
					found[i] = true;
					break;
				}
		}
	}
	*kept = n;
	*kept_index = index;
	return ops;
}

/*
 * Operations an external processor reports on (distinct ids), as
 * lock_operations() returns them: those dequeued in this backend by the
 * lane versions their claim wrote (lease_cache.h), the others by id.
 * When some are kept and some not, their lanes are locked in two rounds,
 * each in lane order (as the worker's are): only a second session
 * reporting on the same operations could then deadlock with this one, and
 * the deadlock detector fails one of the two, which its processor retries.
 */
static LockedOp *
lock_dequeued(Datum *ids, int count, int *found)
{
	LeaseRef   *leases = palloc(sizeof(LeaseRef) * count);
	Datum	   *others = palloc(sizeof(Datum) * count);
	int			nleases = 0;
	int			nothers = 0;
	int			nkept;
	int		   *index;
	LockedOp   *ops;

	for (int i = 0; i < count; i++)
	{
		if (lease_cache_take(DatumGetUUIDP(ids[i]), &leases[nleases]))
			nleases++;
		else
			others[nothers++] = ids[i];
	}
	if (nleases == 0)
		return lock_operations(ids, count, found);

	ops = lock_leases(leases, nleases, 0, &nkept, &index);
	if (nothers > 0)
	{
		int			nlocked;
		LockedOp   *locked = lock_operations(others, nothers, &nlocked);

		ops = repalloc(ops, sizeof(LockedOp) * (nkept + nlocked));
		memcpy(ops + nkept, locked, sizeof(LockedOp) * nlocked);
		nkept += nlocked;
	}
	*found = nkept;
	return ops;
}

/*
 * Complete operations; target_uids, results and hooks are parallel to
 * leases and may be NULL, as may their entries.  Returns how many were
 * recorded.
 */
int
outcome_complete(const LeaseRef *leases, int count, char **target_uids, Jsonb **results,
				 char **hooks, int64 leased_by)
{
	LockedOp   *ops;
	int		   *index;
	char	  **kept_uids;
	Jsonb	  **kept_results;
	char	  **kept_hooks;
	int			kept;

	if (count == 0)
		return 0;
	ops = lock_leases(leases, count, leased_by, &kept, &index);
	if (kept == 0)
		return 0;
	kept_uids = palloc0(sizeof(char *) * kept);
	kept_results = palloc0(sizeof(Jsonb *) * kept);
	kept_hooks = palloc0(sizeof(char *) * kept);
	for (int k = 0; k < kept; k++)
	{
		kept_uids[k] = target_uids ? target_uids[index[k]] : NULL;
		kept_results[k] = results ? results[index[k]] : NULL;
		kept_hooks[k] = hooks ? hooks[index[k]] : NULL;
	}
	finish_operations(ops, kept, 'c', kept_uids, kept_results, NULL, kept_hooks);
	return kept;
}

static bool
lock_leased(const LeaseRef *lease, int64 leased_by, LockedOp *op)
{
	int			kept;
	int		   *index;
	LockedOp   *ops = lock_leases(lease, 1, leased_by, &kept, &index);

	if (kept == 0)
		return false;
	*op = ops[0];
	return true;
}

/* A before hook finished the operation without calling the target. */
bool
outcome_skip(const LeaseRef *lease, const char *reason, char *hooks, int64 leased_by)
{
	LockedOp	op;

	if (!lock_leased(lease, leased_by, &op))
		return false;
	finish_operations(&op, 1, 's', NULL, NULL, reason, &hooks);
	return true;
}

bool
outcome_fail(const LeaseRef *lease, const char *error, bool permanent, int retry_after_ms,
			 int http_status, const char *hooks, int64 leased_by)
{
	LockedOp	op;
	Interval	retry_after = {0};

	if (!lock_leased(lease, leased_by, &op))
		return false;
	retry_after.time = (int64) retry_after_ms * 1000;
	record_failure(&op, error, permanent, retry_after_ms >= 0 ? &retry_after : NULL, http_status,
				   hooks);
	return true;
}

/*
 * Correlation could not decide: open a case (details: JSON situation,
 * reason, candidates) and park the operation until it is resolved.
 */
bool
outcome_park(const LeaseRef *lease, const char *details, const char *hooks, int64 leased_by)
{
	LockedOp	op;
	Datum		args[3];
	char		nulls[3] = {' ', ' ', ' '};

	if (!lock_leased(lease, leased_by, &op))
		return false;
	args[0] = UUIDPGetDatum(&op.id);
	args[1] = CStringGetTextDatum(details);
	args[2] = hooks ? CStringGetTextDatum(hooks) : (Datum) 0;
	nulls[2] = hooks ? ' ' : 'n';
	saved_plan_execute(&park_op, args, nulls, false, 1);
	return true;
}

bool
outcome_release(const LeaseRef *lease, TimestampTz run_at, const char *error, int http_status,
				int64 leased_by)
{
	LockedOp	op;
	Datum		args[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};

	if (!lock_leased(lease, leased_by, &op))
		return false;
	args[0] = PointerGetDatum(&op.lane_ctid);
	args[1] = UUIDPGetDatum(&op.id);
	args[2] = TimestampTzGetDatum(run_at);
	args[3] = error ? CStringGetTextDatum(error) : (Datum) 0;
	nulls[3] = error ? ' ' : 'n';
	args[4] = Int32GetDatum(http_status);
	nulls[4] = http_status == 0 ? 'n' : ' ';
	saved_plan_execute(&release_op, args, nulls, false, 0);
	spi_note_ready_lanes(1);
	return true;
}
