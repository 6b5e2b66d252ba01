/*-------------------------------------------------------------------------
 *
 * enqueue.c
 *	  xprov.enqueue() and xprov.enqueue_batch().
 *
 * An enqueue appends to the operation log and makes sure the subject and
 * its lane exist, and that the lane is ready when it was idle, in the
 * caller's transaction.  Writing the lane always locks its row until commit:
 * a completion that is about to mark the lane idle waits for us and then
 * sees our operation, so no wake-up is ever lost.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "op_input.h"
#include "spi_util.h"

PG_FUNCTION_INFO_V1(xprov_enqueue);
PG_FUNCTION_INFO_V1(xprov_enqueue_batch);

/*
 * Both entry points make sure the subject exists, with a ready lane whose
 * head is the new operation when it was idle (an existing lane that is not
 * idle keeps its head), then append to the log.  The lane UPDATE locks an
 * existing lane until commit, even when it changes nothing.
 *
 * A subject created concurrently by another transaction, after this
 * statement's snapshot, is found by neither new_subject nor old_lane: the
 * statement then writes nothing and returns no lane, and enqueue() runs it
 * again in a new snapshot.
 */
#define LANE_IF_IDLE(col, value) \
	col " = CASE WHEN l.state = 'i' THEN " value " ELSE l." col " END"

/* What a lane write reports, in the order spi_note_ready_lanes(1) reads. */
#define LANE_RETURNING \
	"RETURNING l.state, l.claimant, -(l.priority::bigint) AS rank, l.run_at, l.lane_id "

/*
 * Parameters of both single-operation statements: $1 tenant, $2 connector,
 * $3 object class, $4 subject, $5 claimant, $6 priority, $7 not_before,
 * $8 id, $9 identity, $10 target uid, $11 operation type, $12 attributes,
 * $13 idempotency key.  The sequence value comes from CTE s.
 */
#define ONE_LANE_UPDATE \
	"  UPDATE xprov.lane l SET " \
	LANE_IF_IDLE("state", "'r'") ", " \
	LANE_IF_IDLE("next_seq", "s.seq") ", " \
	LANE_IF_IDLE("priority", "$6") ", " \
	LANE_IF_IDLE("run_at", "greatest(now(), $7)") " " \
	"    FROM xprov.subject sj, s " \
	"   WHERE sj.connector_id = $2 AND sj.object_class = $3 AND sj.subject = $4 " \
	"     AND l.lane_id = sj.lane_id " \
	LANE_RETURNING

#define ONE_OP_INSERT \
	"op AS (" \
	"  INSERT INTO xprov.op (id, seq, lane_id, tenant_id, connector_id, identity_id, target_uid, " \
	"                        operation_type, object_class, attributes, priority, not_before, " \
	"                        idempotency_key) " \
	"  SELECT $8, s.seq, lane.lane_id, $1, $2, $9, $10, $11, $3, $12, $6, $7, $13 FROM s, lane" \
	") " \
	"SELECT state, claimant, rank, run_at, lane_id FROM lane"

#define ONE_OP_ARGS \
	.nargs = 13, \
	.argtypes = {UUIDOID, UUIDOID, TEXTOID, TEXTOID, CHAROID, INT4OID, TIMESTAMPTZOID, \
		UUIDOID, UUIDOID, TEXTOID, TEXTOID, JSONBOID, TEXTOID}

/*
 * The common case, a subject that already exists, in a statement with only
 * the two writes it needs (executor start-up per call grows with each).
 */
static SavedPlan enqueue_existing = {
	.sql =
	"WITH s AS MATERIALIZED (SELECT nextval('xprov.op_seq') AS seq), "
	"lane AS ("
	ONE_LANE_UPDATE
	"), "
	ONE_OP_INSERT,
	ONE_OP_ARGS
};

/*
 * Operations of a subject must be numbered in the order their enqueues
 * commit: a number taken before waiting for another enqueue of the same
 * subject could be lower than that one's, and the lane, which walks its
 * operations in number order, would meet an operation it had already
 * passed.  So the lane is locked first (until commit), the number taken
 * after (xprov.op_seq has no cache: numbers are handed out in call order).
 */
static SavedPlan lock_subject_lane = {
	.sql =
	"SELECT l.lane_id FROM xprov.subject sj "
	" CROSS JOIN LATERAL (SELECT l.lane_id FROM xprov.lane l "
	"                      WHERE l.lane_id = sj.lane_id LIMIT 1 FOR NO KEY UPDATE) l "
	" WHERE sj.connector_id = $1 AND sj.object_class = $2 AND sj.subject = $3",
	.nargs = 3,
	.argtypes = {UUIDOID, TEXTOID, TEXTOID},
};

static SavedPlan enqueue_one = {
	.sql =
	"WITH s AS MATERIALIZED (SELECT nextval('xprov.op_seq') AS seq), "
	"new_subject AS ("
	"  INSERT INTO xprov.subject (tenant_id, connector_id, object_class, subject, claimant) "
	"  VALUES ($1, $2, $3, $4, $5) "
	"  ON CONFLICT (connector_id, object_class, subject) DO NOTHING "
	"  RETURNING lane_id"
	"), new_lane AS ("
	"  INSERT INTO xprov.lane AS l (lane_id, tenant_id, connector_id, claimant, state, next_seq, "
	"                               priority, run_at) "
	"  SELECT n.lane_id, $1, $2, $5, 'r', s.seq, $6, greatest(now(), $7) FROM new_subject n, s "
	LANE_RETURNING
	"), old_lane AS ("
	ONE_LANE_UPDATE
	"), lane AS (SELECT * FROM new_lane UNION ALL SELECT * FROM old_lane), "
	ONE_OP_INSERT,
	ONE_OP_ARGS
};

/*
 * A batch locates its subjects' lanes before it numbers its operations.
 * First it locks the lanes of the subjects that exist, in lane order (the
 * order completions lock them in too, so the two cannot deadlock), in a
 * statement of its own: the writes then run in snapshots taken after
 * every lock was granted.  Locking inside that statement would leave its
 * UPDATE with the snapshot from before a wait: a lane changed by the
 * transaction waited for (a completion, a claim) is invisible to that
 * snapshot at its new ctid, and the update would silently miss it, leaving
 * an idle lane with work behind it.  The locked version's ctid is the
 * latest, and stays so while the lock is held.
 *
 * $1-$3 are subjects; returns the ordinal of each one found.
 */
static SavedPlan lock_lanes = {
	.sql =
	"SELECT s.ord, l.lane_id, l.ctid "
	"  FROM (SELECT u.ord, sj.lane_id "
	"          FROM unnest($1::uuid[], $2::text[], $3::text[]) WITH ORDINALITY "
	"               AS u(connector_id, object_class, subject, ord) "
	"         CROSS JOIN LATERAL (SELECT sj.lane_id FROM xprov.subject sj "
	"                              WHERE sj.connector_id = u.connector_id "
	"                                AND sj.object_class = u.object_class "
	"                                AND sj.subject = u.subject LIMIT 1) sj "
	"         ORDER BY sj.lane_id) s "
	" CROSS JOIN LATERAL (SELECT l.lane_id, l.ctid FROM xprov.lane l "
	"                      WHERE l.lane_id = s.lane_id LIMIT 1 FOR NO KEY UPDATE) l",
	.nargs = 3,
	.argtypes = {UUIDARRAYOID, TEXTARRAYOID, TEXTARRAYOID},
};

/*
 * Then it registers the subjects not found.  A subject that a concurrent
 * transaction is creating makes this wait for that transaction; if it
 * commits, the subject is skipped here and its lane locked by lock_lanes
 * in the next statement, which sees it.  The subjects come in one order
 * (BatchSubjects), so that two batches registering the same new subjects
 * wait for each other in the same order.
 */
static SavedPlan register_subjects = {
	.sql =
	"INSERT INTO xprov.subject (tenant_id, connector_id, object_class, subject, claimant) "
	"SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::\"char\"[]) "
	"ON CONFLICT (connector_id, object_class, subject) DO NOTHING "
	"RETURNING lane_id, connector_id, object_class, subject",
	.nargs = 5,
	.argtypes = {UUIDARRAYOID, UUIDARRAYOID, TEXTARRAYOID, TEXTARRAYOID, CHARARRAYOID},
};

/*
 * Then the batch writes, in three statements that each skip what the batch
 * does not need.  The arrays are read by set-returning functions in the
 * select list, which stream (unnest() in FROM would copy every row, the
 * operations' attributes too, into a tuplestore first).
 *
 * New lanes: lane id, tenant, connector, claimant, and the subject's first
 * operation's number, priority and not_before.
 */
static SavedPlan insert_new_lanes = {
	.sql =
	"INSERT INTO xprov.lane AS l (lane_id, tenant_id, connector_id, claimant, state, next_seq, "
	"                             priority, run_at) "
	"SELECT lane_id, tenant_id, connector_id, claimant, 'r', seq, priority, greatest(now(), not_before) "
	"  FROM (SELECT unnest($1::bigint[]) AS lane_id, unnest($2::uuid[]) AS tenant_id, "
	"               unnest($3::uuid[]) AS connector_id, unnest($4::\"char\"[]) AS claimant, "
	"               unnest($5::bigint[]) AS seq, unnest($6::int[]) AS priority, "
	"               unnest($7::timestamptz[]) AS not_before) h "
	LANE_RETURNING,
	.nargs = 7,
	.argtypes = {INT8ARRAYOID, UUIDARRAYOID, UUIDARRAYOID, CHARARRAYOID, INT8ARRAYOID, INT4ARRAYOID,
		TIMESTAMPTZARRAYOID},
};

/*
 * Existing lanes, by the ctid of the version lock_lanes locked: an idle
 * one gets the subject's first operation as its head.
 */
static SavedPlan update_old_lanes = {
	.sql =
	"UPDATE xprov.lane l SET "
	LANE_IF_IDLE("state", "'r'") ", "
	LANE_IF_IDLE("next_seq", "h.seq") ", "
	LANE_IF_IDLE("priority", "h.priority") ", "
	LANE_IF_IDLE("run_at", "greatest(now(), h.not_before)") " "
	"  FROM (SELECT unnest($1::tid[]) AS lane_ctid, unnest($2::bigint[]) AS seq, "
	"               unnest($3::int[]) AS priority, unnest($4::timestamptz[]) AS not_before) h "
	" WHERE l.ctid = h.lane_ctid "
	LANE_RETURNING,
	.nargs = 4,
	.argtypes = {TIDARRAYOID, INT8ARRAYOID, INT4ARRAYOID, TIMESTAMPTZARRAYOID},
};

static SavedPlan insert_ops = {
	.sql =
	"INSERT INTO xprov.op (id, seq, lane_id, tenant_id, connector_id, identity_id, target_uid, "
	"                      operation_type, object_class, attributes, priority, not_before, "
	"                      idempotency_key) "
	"SELECT unnest($1::uuid[]), unnest($2::bigint[]), unnest($3::bigint[]), unnest($4::uuid[]), "
	"       unnest($5::uuid[]), unnest($6::uuid[]), unnest($7::text[]), unnest($8::text[]), "
	"       unnest($9::text[]), unnest($10::jsonb[]), unnest($11::int[]), unnest($12::timestamptz[]), "
	"       unnest($13::text[])",
	.nargs = 13,
	.argtypes = {UUIDARRAYOID, INT8ARRAYOID, INT8ARRAYOID, UUIDARRAYOID, UUIDARRAYOID, UUIDARRAYOID,
		TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, JSONBARRAYOID, INT4ARRAYOID, TIMESTAMPTZARRAYOID,
		TEXTARRAYOID},
};

static SavedPlan next_seqs = {
	.sql = "SELECT nextval('xprov.op_seq') FROM generate_series(1, $1)",
	.nargs = 1,
	.argtypes = {INT4OID},
};

static SavedPlan claim_keys = {
	.sql =
	"INSERT INTO xprov.idempotency (tenant_id, key, op_id) "
	"SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[]) ON CONFLICT DO NOTHING",
	.nargs = 3,
	.argtypes = {UUIDARRAYOID, TEXTARRAYOID, UUIDARRAYOID},
};

/* Runs after claim_keys, in a new snapshot that sees concurrent winners. */
static SavedPlan key_owners = {
	.sql =
	"SELECT k.ord, i.op_id FROM unnest($1::uuid[], $2::text[]) WITH ORDINALITY AS k(tenant_id, key, ord) "
	" CROSS JOIN LATERAL (SELECT i.op_id FROM xprov.idempotency i "
	"                      WHERE i.tenant_id = k.tenant_id AND i.key = k.key LIMIT 1) i",
	.nargs = 2,
	.argtypes = {UUIDARRAYOID, TEXTARRAYOID},
};

static void
raise_concurrent_subjects(void)
{
	ereport(ERROR,
			errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
			errmsg("could not enqueue: a concurrent transaction created the same subject"),
			errdetail("The subject's first operations were enqueued by two transactions at once."),
			errhint("Retry the transaction."));
}

/*
 * Deduplicate by idempotency key: register the key of every keyed operation,
 * then read back who owns each key.  An operation whose key is owned by
 * another (unfinished) operation is dropped and answered with the owner's
 * id.  Returns false for operations that must not be inserted.
 */
static void
dedupe_by_key(OpInput *ops, int count, bool *insert)
{
	Datum	   *tenants = palloc(sizeof(Datum) * count);
	Datum	   *ids = palloc(sizeof(Datum) * count);
	Datum	   *keys = palloc(sizeof(Datum) * count);
	int		   *position = palloc(sizeof(int) * count);
	int			nkeyed = 0;
	Datum		args[3];

	for (int i = 0; i < count; i++)
	{
		insert[i] = true;
		if (ops[i].idempotency_key == NULL)
			continue;
		tenants[nkeyed] = UUIDPGetDatum(&ops[i].tenant_id);
		keys[nkeyed] = CStringGetTextDatum(ops[i].idempotency_key);
		ids[nkeyed] = UUIDPGetDatum(&ops[i].id);
		position[nkeyed] = i;
		nkeyed++;
	}
	if (nkeyed == 0)
		return;

	args[0] = spi_array_arg(tenants, NULL, nkeyed, UUIDOID);
	args[1] = spi_array_arg(keys, NULL, nkeyed, TEXTOID);
	args[2] = spi_array_arg(ids, NULL, nkeyed, UUIDOID);
	saved_plan_execute(&claim_keys, args, NULL, false, 0);
	saved_plan_execute(&key_owners, args, NULL, false, 0);
	if (SPI_processed != (uint64) nkeyed)
		ereport(ERROR,
				errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				errmsg("could not deduplicate operations by idempotency key"),
				errdetail("A concurrent transaction changed the same keys."),
				errhint("Retry the transaction."));

	for (uint64 row = 0; row < SPI_processed; row++)
	{
		OpInput    *op = &ops[position[spi_get_int64(row, 1) - 1]];
		Datum		owner;

		spi_get_datum(row, 2, &owner);
		if (memcmp(DatumGetUUIDP(owner), &op->id, UUID_LEN) != 0)
		{
			memcpy(&op->id, DatumGetUUIDP(owner), UUID_LEN);
			insert[op - ops] = false;
		}
	}
}

static Datum
enqueue_single(OpInput *op)
{
	Datum		values[13];
	char		nulls[13];

	memset(nulls, ' ', sizeof(nulls));
	values[0] = UUIDPGetDatum(&op->tenant_id);
	values[1] = UUIDPGetDatum(&op->connector_id);
	values[2] = CStringGetTextDatum(op->object_class);
	values[3] = CStringGetTextDatum(op->subject);
	values[4] = CharGetDatum(op->claimant);
	values[5] = Int32GetDatum(op->priority);
	values[6] = TimestampTzGetDatum(op->not_before);
	nulls[6] = op->has_not_before ? ' ' : 'n';
	values[7] = UUIDPGetDatum(&op->id);
	values[8] = UUIDPGetDatum(&op->identity_id);
	nulls[8] = op->has_identity ? ' ' : 'n';
	values[9] = op->target_uid ? CStringGetTextDatum(op->target_uid) : (Datum) 0;
	nulls[9] = op->target_uid ? ' ' : 'n';
	values[10] = CStringGetTextDatum(op->operation_type);
	values[11] = JsonbPGetDatum(op->attributes);
	values[12] = op->idempotency_key ? CStringGetTextDatum(op->idempotency_key) : (Datum) 0;
	nulls[12] = op->idempotency_key ? ' ' : 'n';

	for (int attempt = 0;; attempt++)
	{
		/* lock the lane first: its sequence number is then taken after every earlier enqueue committed */
		saved_plan_execute(&lock_subject_lane, (Datum[]) {values[1], values[2], values[3]}, NULL, false, 0);
		if (SPI_processed > 0)
			saved_plan_execute(&enqueue_existing, values, nulls, false, 0);
		else
			saved_plan_execute(&enqueue_one, values, nulls, false, 0);
		if (SPI_processed > 0)
			break;
		/* the subject was created concurrently: the next snapshot sees it */
		if (attempt > 0)
			raise_concurrent_subjects();
	}
	spi_note_ready_lanes(1);
	return UUIDPGetDatum(&op->id);
}

static char *
text_arg(FunctionCallInfo fcinfo, int argno)
{
	return PG_ARGISNULL(argno) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(argno));
}

Datum
xprov_enqueue(PG_FUNCTION_ARGS)
{
	OpInput		op;
	pg_uuid_t  *result = palloc(sizeof(pg_uuid_t));
	bool		insert;

	memset(&op, 0, sizeof(op));
	op.element = -1;
	if ((op.has_tenant = !PG_ARGISNULL(0)))
		op.tenant_id = *PG_GETARG_UUID_P(0);
	if ((op.has_connector = !PG_ARGISNULL(1)))
		op.connector_id = *PG_GETARG_UUID_P(1);
	if ((op.has_identity = !PG_ARGISNULL(2)))
		op.identity_id = *PG_GETARG_UUID_P(2);
	op.operation_type = text_arg(fcinfo, 3);
	op.object_class = text_arg(fcinfo, 4);
	op.attributes = PG_ARGISNULL(5) ? NULL : PG_GETARG_JSONB_P(5);
	op.target_uid = text_arg(fcinfo, 6);
	op.priority = PG_ARGISNULL(7) ? 0 : PG_GETARG_INT32(7);
	if ((op.has_not_before = !PG_ARGISNULL(8)))
		op.not_before = PG_GETARG_TIMESTAMPTZ(8);
	op.idempotency_key = text_arg(fcinfo, 9);

	op_input_check(&op);

	SPI_connect();
	op_inputs_resolve_connectors(&op, 1);
	dedupe_by_key(&op, 1, &insert);
	if (insert)
		enqueue_single(&op);
	SPI_finish();

	*result = op.id;
	PG_RETURN_UUID_P(result);
}

static OpInput *
parse_batch(Jsonb *ops, int *count)
{
	JsonbIterator *it;
	JsonbValue	value;
	JsonbIteratorToken token;
	OpInput    *inputs;
	int			n = 0;

	if (!JB_ROOT_IS_ARRAY(ops) || JB_ROOT_IS_SCALAR(ops))
		ereport(ERROR,
				errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				errmsg("enqueue_batch expects a JSON array of operations"),
				errhint("Pass [{\"tenant_id\": ..., \"connector_id\": ..., ...}, ...]."));

	inputs = palloc0(sizeof(OpInput) * Max(JB_ROOT_COUNT(ops), 1));
	it = JsonbIteratorInit(&ops->root);
	while ((token = JsonbIteratorNext(&it, &value, true)) != WJB_DONE)
	{
		if (token != WJB_ELEM)
			continue;
		if (value.type != jbvBinary || !JsonContainerIsObject(value.val.binary.data))
			op_raise_error(n, ERRCODE_INVALID_PARAMETER_VALUE,
						   "operation must be a JSON object", NULL, NULL);
		op_input_from_jsonb(value.val.binary.data, n, &inputs[n]);
		op_input_check(&inputs[n]);
		n++;
	}
	*count = n;
	return inputs;
}

/*
 * The batch's distinct subjects, in one order (connector, object class,
 * subject, bytewise), each with the first of its operations in the batch
 * (the head its lane gets when the lane is new or idle) and, once located,
 * its lane.
 */
typedef struct BatchSubjects
{
	int			count;
	OpInput   **first;			/* per subject: its first operation */
	int64	   *ordinal;		/* per operation to insert: its subject, from 1 */
	Datum	   *lane_id;		/* per subject, once located */
	ItemPointerData *lane_ctid; /* per subject: the locked lane version */
	bool	   *located;
	bool	   *new_lane;		/* registered here: the lane is to be created */
} BatchSubjects;

static int
compare_subjects(const OpInput *a, const OpInput *b)
{
	int			c = memcmp(&a->connector_id, &b->connector_id, UUID_LEN);

	if (c == 0)
		c = strcmp(a->object_class, b->object_class);
	if (c == 0)
		c = strcmp(a->subject, b->subject);
	return c;
}

/* Positions in ops; one subject's keep batch order, the first first. */
static int
compare_positions(const void *a, const void *b, void *arg)
{
	OpInput   **ops = arg;
	int			x = *(const int *) a;
	int			y = *(const int *) b;
	int			c = compare_subjects(ops[x], ops[y]);

	return c != 0 ? c : (x > y) - (x < y);
}

static void
group_subjects(OpInput **ops, int n, BatchSubjects *subjects)
{
	int		   *order = palloc(sizeof(int) * n);

	for (int i = 0; i < n; i++)
		order[i] = i;
	qsort_arg(order, n, sizeof(int), compare_positions, ops);
	subjects->first = palloc(sizeof(OpInput *) * n);
	subjects->ordinal = palloc(sizeof(int64) * n);
	subjects->count = 0;
	for (int i = 0; i < n; i++)
	{
		OpInput    *op = ops[order[i]];

		if (i == 0 || compare_subjects(ops[order[i - 1]], op) != 0)
			subjects->first[subjects->count++] = op;
		subjects->ordinal[order[i]] = subjects->count;
	}
	subjects->lane_id = palloc0(sizeof(Datum) * subjects->count);
	subjects->lane_ctid = palloc0(sizeof(ItemPointerData) * subjects->count);
	subjects->located = palloc0(sizeof(bool) * subjects->count);
	subjects->new_lane = palloc0(sizeof(bool) * subjects->count);
	pfree(order);
}

/* Subject k of the batch whose key is that of op, or -1. */
static int
find_subject(const BatchSubjects *subjects, const OpInput *key)
{
	int			low = 0;
	int			high = subjects->count - 1;

	while (low <= high)
	{
		int			mid = low + (high - low) / 2;
		int			c = compare_subjects(subjects->first[mid], key);

		if (c == 0)
			return mid;
		if (c < 0)
			low = mid + 1;
		else
			high = mid - 1;
	}
	return -1;
}

/*
 * Columns of the subjects listed in which (indexes into subjects):
 * args[0..4] are tenant, connector, object class, subject, claimant.
 */
static void
subject_key_columns(const BatchSubjects *subjects, const int *which, int n, Datum *args)
{
	Datum	   *cols[5];
	static const Oid types[5] = {UUIDOID, UUIDOID, TEXTOID, TEXTOID, CHAROID};

	for (int c = 0; c < 5; c++)
		cols[c] = palloc(sizeof(Datum) * n);
	for (int i = 0; i < n; i++)
	{
		OpInput    *op = subjects->first[which[i]];

		cols[0][i] = UUIDPGetDatum(&op->tenant_id);
		cols[1][i] = UUIDPGetDatum(&op->connector_id);
		cols[2][i] = CStringGetTextDatum(op->object_class);
		cols[3][i] = CStringGetTextDatum(op->subject);
		cols[4][i] = CharGetDatum(op->claimant);
	}
	for (int c = 0; c < 5; c++)
		args[c] = spi_array_arg(cols[c], NULL, n, types[c]);
}

/* The subjects not located yet (indexes), and how many. */
static int
unlocated_subjects(const BatchSubjects *subjects, int *which)
{
	int			n = 0;

	for (int k = 0; k < subjects->count; k++)
		if (!subjects->located[k])
			which[n++] = k;
	return n;
}

/* lock_lanes for the subjects listed in which; marks those found. */
static void
lock_existing_lanes(BatchSubjects *subjects, const int *which, int n)
{
	Datum		args[5];

	subject_key_columns(subjects, which, n, args);
	saved_plan_execute(&lock_lanes, (Datum[]) {args[1], args[2], args[3]}, NULL, false, 0);
	for (uint64 row = 0; row < SPI_processed; row++)
	{
		int			k = which[spi_get_int64(row, 1) - 1];
		Datum		ctid;

		subjects->lane_id[k] = Int64GetDatum(spi_get_int64(row, 2));
		if (!spi_get_datum(row, 3, &ctid))
			elog(ERROR, "xprov: a locked lane has no ctid");
		subjects->lane_ctid[k] = *(ItemPointer) DatumGetPointer(ctid);
		subjects->located[k] = true;
	}
}

/* register_subjects for the subjects listed in which; marks those it made. */
static void
register_new_subjects(BatchSubjects *subjects, const int *which, int n)
{
	Datum		args[5];

	subject_key_columns(subjects, which, n, args);
	saved_plan_execute(&register_subjects, args, NULL, false, 0);
	for (uint64 row = 0; row < SPI_processed; row++)
	{
		OpInput		key;
		Datum		value;
		int			k;

		spi_get_datum(row, 2, &value);
		memcpy(&key.connector_id, DatumGetUUIDP(value), UUID_LEN);
		spi_get_datum(row, 3, &value);
		key.object_class = TextDatumGetCString(value);
		spi_get_datum(row, 4, &value);
		key.subject = TextDatumGetCString(value);
		k = find_subject(subjects, &key);
		if (k < 0)
			elog(ERROR, "xprov: a registered subject is not in the batch");
		subjects->lane_id[k] = Int64GetDatum(spi_get_int64(row, 1));
		subjects->located[k] = true;
		subjects->new_lane[k] = true;
	}
}

/*
 * Every subject's lane: those that exist locked, the others registered.  A
 * subject that a concurrent transaction created meanwhile is locked in a
 * second round.  That round takes its locks after the first round's, so
 * across the two the lane order is not kept: a completion locking lanes of
 * both rounds at the same moment can deadlock with it (one of the two gets
 * 40P01).  It takes a race for the same new subject to get there.
 */
static void
locate_subjects(BatchSubjects *subjects)
{
	int		   *which = palloc(sizeof(int) * subjects->count);
	int			n;

	for (int k = 0; k < subjects->count; k++)
		which[k] = k;
	lock_existing_lanes(subjects, which, subjects->count);
	if ((n = unlocated_subjects(subjects, which)) == 0)
		return;
	register_new_subjects(subjects, which, n);
	if ((n = unlocated_subjects(subjects, which)) == 0)
		return;
	lock_existing_lanes(subjects, which, n);
	if (unlocated_subjects(subjects, which) > 0)
		raise_concurrent_subjects();
}

/*
 * The lanes' writes: insert_new_lanes for the subjects registered here,
 * update_old_lanes for the others.  Each subject's head is its first
 * operation, numbered seqs[] in batch order.
 */
static void
write_lanes(const BatchSubjects *subjects, const int64 *seqs, int nops)
{
	int			n = subjects->count;
	Datum	   *first_seq = palloc(sizeof(Datum) * n);
	Datum	   *cols[7];
	bool	   *not_before_nulls = palloc(sizeof(bool) * n);
	Datum	   *ctids = palloc(sizeof(Datum) * n);
	int			nnew = 0;
	int			nold = 0;

	/* from the last operation back: the first one's number is written last */
	for (int k = nops - 1; k >= 0; k--)
		first_seq[subjects->ordinal[k] - 1] = Int64GetDatum(seqs[k]);
	for (int c = 0; c < 7; c++)
		cols[c] = palloc(sizeof(Datum) * n);

	/* new lanes first in the arrays, from the front; old ones from the back */
	for (int k = 0; k < n; k++)
	{
		OpInput    *op = subjects->first[k];
		int			i = subjects->new_lane[k] ? nnew++ : n - 1 - nold++;

		cols[0][i] = subjects->lane_id[k];
		cols[1][i] = UUIDPGetDatum(&op->tenant_id);
		cols[2][i] = UUIDPGetDatum(&op->connector_id);
		cols[3][i] = CharGetDatum(op->claimant);
		cols[4][i] = first_seq[k];
		cols[5][i] = Int32GetDatum(op->priority);
		cols[6][i] = TimestampTzGetDatum(op->not_before);
		not_before_nulls[i] = !op->has_not_before;
		ctids[i] = PointerGetDatum(&subjects->lane_ctid[k]);
	}
	if (nnew > 0)
	{
		Datum		args[7];
		static const Oid types[7] = {INT8OID, UUIDOID, UUIDOID, CHAROID, INT8OID, INT4OID,
		TIMESTAMPTZOID};

		for (int c = 0; c < 7; c++)
			args[c] = spi_array_arg(cols[c], c == 6 ? not_before_nulls : NULL, nnew, types[c]);
		saved_plan_execute(&insert_new_lanes, args, NULL, false, 0);
		spi_note_ready_lanes(1);
	}
	if (nold > 0)
	{
		int			from = n - nold;
		Datum		args[4];

		args[0] = spi_array_arg(ctids + from, NULL, nold, TIDOID);
		args[1] = spi_array_arg(cols[4] + from, NULL, nold, INT8OID);
		args[2] = spi_array_arg(cols[5] + from, NULL, nold, INT4OID);
		args[3] = spi_array_arg(cols[6] + from, not_before_nulls + from, nold, TIMESTAMPTZOID);
		saved_plan_execute(&update_old_lanes, args, NULL, false, 0);
		spi_note_ready_lanes(1);
	}
}

/* insert_ops for the operations to insert, numbered seqs[] in batch order. */
static void
insert_operations(OpInput **ops, int n, const int64 *seqs, const BatchSubjects *subjects)
{
	Datum	   *cols[13];
	bool	   *nulls[13];
	Datum		args[13];
	static const Oid types[13] = {UUIDOID, INT8OID, INT8OID, UUIDOID, UUIDOID, UUIDOID, TEXTOID,
	TEXTOID, TEXTOID, JSONBOID, INT4OID, TIMESTAMPTZOID, TEXTOID};

	for (int c = 0; c < 13; c++)
	{
		cols[c] = palloc0(sizeof(Datum) * n);
		nulls[c] = palloc0(sizeof(bool) * n);
	}
	for (int k = 0; k < n; k++)
	{
		OpInput    *op = ops[k];

		cols[0][k] = UUIDPGetDatum(&op->id);
		cols[1][k] = Int64GetDatum(seqs[k]);
		cols[2][k] = subjects->lane_id[subjects->ordinal[k] - 1];
		cols[3][k] = UUIDPGetDatum(&op->tenant_id);
		cols[4][k] = UUIDPGetDatum(&op->connector_id);
		cols[5][k] = UUIDPGetDatum(&op->identity_id);
		nulls[5][k] = !op->has_identity;
		cols[6][k] = op->target_uid ? CStringGetTextDatum(op->target_uid) : (Datum) 0;
		nulls[6][k] = op->target_uid == NULL;
		cols[7][k] = CStringGetTextDatum(op->operation_type);
		cols[8][k] = CStringGetTextDatum(op->object_class);
		cols[9][k] = JsonbPGetDatum(op->attributes);
		cols[10][k] = Int32GetDatum(op->priority);
		cols[11][k] = TimestampTzGetDatum(op->not_before);
		nulls[11][k] = !op->has_not_before;
		cols[12][k] = op->idempotency_key ? CStringGetTextDatum(op->idempotency_key) : (Datum) 0;
		nulls[12][k] = op->idempotency_key == NULL;
	}
	for (int c = 0; c < 13; c++)
		args[c] = spi_array_arg(cols[c], nulls[c], n, types[c]);
	saved_plan_execute(&insert_ops, args, NULL, false, 0);
}

/*
 * One sequence value per operation, in batch order (FIFO per subject),
 * taken once the lanes are locked (see lock_subject_lane).
 */
static int64 *
take_seqs(int n)
{
	int64	   *seqs = palloc(sizeof(int64) * n);

	saved_plan_execute(&next_seqs, (Datum[]) {Int32GetDatum(n)}, NULL, false, 0);
	for (int i = 0; i < n; i++)
		seqs[i] = spi_get_int64(i, 1);
	for (int i = 1; i < n; i++)
		for (int j = i; j > 0 && seqs[j - 1] > seqs[j]; j--)
		{
			int64		tmp = seqs[j];

			seqs[j] = seqs[j - 1];
			seqs[j - 1] = tmp;
		}
	return seqs;
}

static void
insert_batch(OpInput *inputs, int count, const bool *insert)
{
	OpInput   **ops = palloc(sizeof(OpInput *) * count);
	int			n = 0;
	BatchSubjects subjects;
	int64	   *seqs;

	for (int i = 0; i < count; i++)
		if (insert[i])
			ops[n++] = &inputs[i];
	if (n == 0)
		return;

	group_subjects(ops, n, &subjects);
	locate_subjects(&subjects);
	seqs = take_seqs(n);
	write_lanes(&subjects, seqs, n);
	insert_operations(ops, n, seqs, &subjects);
}

Datum
xprov_enqueue_batch(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	OpInput    *ops;
	bool	   *insert;
	int			count;

	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	ops = parse_batch(PG_GETARG_JSONB_P(0), &count);
	if (count == 0)
		return (Datum) 0;

	insert = palloc(sizeof(bool) * count);
	SPI_connect();
	op_inputs_resolve_connectors(ops, count);
	dedupe_by_key(ops, count, insert);
	insert_batch(ops, count, insert);
	SPI_finish();

	for (int i = 0; i < count; i++)
	{
		Datum		id = UUIDPGetDatum(&ops[i].id);
		bool		isnull = false;

		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, &id, &isnull);
	}
	return (Datum) 0;
}
