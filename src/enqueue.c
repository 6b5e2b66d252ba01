/*-------------------------------------------------------------------------
 *
 * enqueue.c
 *	  xprov.enqueue() and xprov.enqueue_batch().
 *
 * An enqueue appends to the operation log and makes sure the subject and
 * its lane exist, and that the lane is ready when it was idle, in the
 * caller's transaction.  A database still at xprov 0.1.0 is served by
 * enqueue_legacy.c.
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

#include "enqueue_legacy.h"
#include "op_input.h"
#include "spi_util.h"

PG_FUNCTION_INFO_V1(xprov_enqueue);
PG_FUNCTION_INFO_V1(xprov_enqueue_batch);

/*
 * Each lane numbers its subject's operations: last_seq is the number of the
 * last one.  An enqueue takes the next numbers in the UPDATE that writes the
 * lane, and so from its latest version: an enqueue of the same subject that
 * it waited for has counted its own, and an enqueue that waits for this one
 * counts on from ours.  Numbers follow the order in which the enqueues
 * commit, which is the order the lane walks its operations in.  Writing the
 * lane also locks it until commit: a completion that is about to mark the
 * lane idle waits for us and then sees our operation, so no wake-up is lost.
 *
 * An idle lane gets the subject's first new operation as its head.
 */
#define LANE_IF_IDLE(col, value) \
	col " = CASE WHEN l.state = 'i' THEN " value " ELSE l." col " END"

/* What a lane write reports, in the order spi_note_ready_lanes() reads. */
#define LANE_COLUMNS \
	"l.state, l.claimant, -(l.priority::bigint) AS rank, l.run_at, l.lane_id"

#define ONE_OP_INSERT(seq) \
	"op AS (" \
	"  INSERT INTO xprov.op (id, seq, lane_id, tenant_id, connector_id, identity_id, target_uid, " \
	"                        operation_type, object_class, attributes, priority, not_before, " \
	"                        idempotency_key) " \
	"  SELECT $8, " seq ", lane.lane_id, $1, $2, $9, $10, $11, $3, $12, $6, $7, $13 FROM lane" \
	") " \
	"SELECT state, claimant, rank, run_at, lane_id FROM lane"

/* One operation for a subject that exists (parameters: enqueue_legacy.h). */
static SavedPlan enqueue_existing = {
	.sql =
	"WITH lane AS ("
	"  UPDATE xprov.lane l SET last_seq = l.last_seq + 1, "
	LANE_IF_IDLE("state", "'r'") ", "
	LANE_IF_IDLE("next_seq", "l.last_seq + 1") ", "
	LANE_IF_IDLE("priority", "$6") ", "
	LANE_IF_IDLE("run_at", "greatest(now(), $7)") " "
	"    FROM xprov.subject sj "
	"   WHERE sj.connector_id = $2 AND sj.object_class = $3 AND sj.subject = $4 "
	"     AND l.lane_id = sj.lane_id "
	"  RETURNING " LANE_COLUMNS ", l.last_seq"
	"), "
	ONE_OP_INSERT("lane.last_seq"),
	ONE_OP_ARGS
};

/*
 * One operation for a subject that does not exist.  A subject created by
 * another transaction after our snapshot makes the INSERT wait for it and
 * then do nothing; the statement writes nothing, and the operation is
 * enqueued to the existing subject in the next snapshot.
 */
static SavedPlan enqueue_new = {
	.sql =
	"WITH new_subject AS ("
	"  INSERT INTO xprov.subject (tenant_id, connector_id, object_class, subject, claimant) "
	"  VALUES ($1, $2, $3, $4, $5) "
	"  ON CONFLICT (connector_id, object_class, subject) DO NOTHING "
	"  RETURNING lane_id"
	"), lane AS ("
	"  INSERT INTO xprov.lane AS l (lane_id, tenant_id, connector_id, claimant, state, next_seq, "
	"                               last_seq, priority, run_at) "
	"  SELECT n.lane_id, $1, $2, $5, 'r', 1, 1, $6, greatest(now(), $7) FROM new_subject n "
	"  RETURNING " LANE_COLUMNS
	"), "
	ONE_OP_INSERT("1"),
	ONE_OP_ARGS
};

/*
 * A batch first finds the lanes of its subjects that exist (no lock taken:
 * subjects are never deleted, and a lane's lane_id never changes).
 * $1-$3 are subjects; returns the ordinal of each one found.
 */
static SavedPlan find_subjects = {
	.sql =
	"SELECT u.ord, sj.lane_id "
	"  FROM unnest($1::uuid[], $2::text[], $3::text[]) WITH ORDINALITY "
	"       AS u(connector_id, object_class, subject, ord) "
	" CROSS JOIN LATERAL (SELECT sj.lane_id FROM xprov.subject sj "
	"                      WHERE sj.connector_id = u.connector_id "
	"                        AND sj.object_class = u.object_class "
	"                        AND sj.subject = u.subject LIMIT 1) sj",
	.nargs = 3,
	.argtypes = {UUIDARRAYOID, TEXTARRAYOID, TEXTARRAYOID},
};

/*
 * Last, it numbers its operations by advancing the lanes of the subjects
 * that existed, each by its number of operations in the batch ($2; $3 and
 * $4 are the priority and not_before of the first), in lane order ($1 comes
 * sorted): the order completions lock lanes in too, so the two cannot
 * deadlock.  The planner keeps to nested loops for it, so rows come out in
 * the order they go in; a hash join would lock lanes in the order of the
 * table.  Returns each lane's position in $1 and its new last_seq.
 */
static SavedPlan advance_lanes = {
	.sql =
	"UPDATE xprov.lane l SET last_seq = l.last_seq + h.nops, "
	LANE_IF_IDLE("state", "'r'") ", "
	LANE_IF_IDLE("next_seq", "l.last_seq + 1") ", "
	LANE_IF_IDLE("priority", "h.priority") ", "
	LANE_IF_IDLE("run_at", "greatest(now(), h.not_before)") " "
	"  FROM (SELECT unnest($1::bigint[]) AS lane_id, unnest($2::int[]) AS nops, "
	"               unnest($3::int[]) AS priority, unnest($4::timestamptz[]) AS not_before, "
	"               generate_series(1, cardinality($1::bigint[])) AS ord) h "
	" WHERE l.lane_id = h.lane_id "
	"RETURNING h.ord, l.last_seq, " LANE_COLUMNS,
	.nargs = 4,
	.argtypes = {INT8ARRAYOID, INT4ARRAYOID, INT4ARRAYOID, TIMESTAMPTZARRAYOID},
	.nested_loops_only = true,
};

/*
 * Then, before it locks any lane, it registers the subjects not found.  A
 * subject that a concurrent transaction is creating makes this wait for
 * that transaction; if it commits, the subject is skipped here, and found
 * again in a new snapshot.  The subjects come in one order (BatchSubjects),
 * so that two batches registering the same new subjects wait for each
 * other in the same order.
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
 * Then it writes the new lanes and the operations, in statements whose
 * arrays are read by set-returning functions in the select list, which
 * stream (unnest() in FROM would copy every row, the operations'
 * attributes too, into a tuplestore first).
 *
 * New lanes: lane id, tenant, connector, claimant, the subject's number of
 * operations, and its first operation's priority and not_before.
 */
static SavedPlan insert_new_lanes = {
	.sql =
	"INSERT INTO xprov.lane AS l (lane_id, tenant_id, connector_id, claimant, state, next_seq, "
	"                             last_seq, priority, run_at) "
	"SELECT lane_id, tenant_id, connector_id, claimant, 'r', 1, nops, priority, "
	"       greatest(now(), not_before) "
	"  FROM (SELECT unnest($1::bigint[]) AS lane_id, unnest($2::uuid[]) AS tenant_id, "
	"               unnest($3::uuid[]) AS connector_id, unnest($4::\"char\"[]) AS claimant, "
	"               unnest($5::int[]) AS nops, unnest($6::int[]) AS priority, "
	"               unnest($7::timestamptz[]) AS not_before) h "
	"RETURNING " LANE_COLUMNS,
	.nargs = 7,
	.argtypes = {INT8ARRAYOID, UUIDARRAYOID, UUIDARRAYOID, CHARARRAYOID, INT4ARRAYOID, INT4ARRAYOID,
		TIMESTAMPTZARRAYOID},
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

/* op as the parameters of the one-operation statements (enqueue_legacy.h) */
static void
one_op_args(OpInput *op, Datum *values, char *nulls)
{
	memset(nulls, ' ', ONE_OP_NARGS);
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
}

static void
enqueue_single(OpInput *op)
{
	Datum		values[ONE_OP_NARGS];
	char		nulls[ONE_OP_NARGS];

	one_op_args(op, values, nulls);
	if (!enqueue_lanes_number_operations())
	{
		if (!enqueue_legacy_one(values, nulls))
			raise_concurrent_subjects();
		return;
	}
	for (int attempt = 0;; attempt++)
	{
		saved_plan_execute(&enqueue_existing, values, nulls, false, 0);
		if (SPI_processed > 0)
			break;
		saved_plan_execute(&enqueue_new, values, nulls, false, 0);
		if (SPI_processed > 0)
			break;
		/* the subject was created concurrently: the next snapshot sees it */
		if (attempt > 0)
			raise_concurrent_subjects();
	}
	spi_note_ready_lanes(1);
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
 * (the head its lane gets when the lane is new or idle), how many it has,
 * and once located, its lane and the number of the last of them.
 */
typedef struct BatchSubjects
{
	int			count;
	OpInput   **first;			/* per subject: its first operation */
	int		   *nops;			/* per subject: its operations in the batch */
	int64	   *ordinal;		/* per operation to insert: its subject, from 1 */
	int		   *rank;			/* per operation: its place among its subject's */
	Datum	   *lane_id;		/* per subject, once located */
	int64	   *last_seq;		/* per subject, once located */
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
	subjects->nops = palloc0(sizeof(int) * n);
	subjects->ordinal = palloc(sizeof(int64) * n);
	subjects->rank = palloc(sizeof(int) * n);
	subjects->count = 0;
	for (int i = 0; i < n; i++)
	{
		OpInput    *op = ops[order[i]];

		if (i == 0 || compare_subjects(ops[order[i - 1]], op) != 0)
			subjects->first[subjects->count++] = op;
		subjects->ordinal[order[i]] = subjects->count;
		subjects->rank[order[i]] = subjects->nops[subjects->count - 1]++;
	}
	subjects->lane_id = palloc0(sizeof(Datum) * subjects->count);
	subjects->last_seq = palloc0(sizeof(int64) * subjects->count);
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
#define KEY_COLUMNS 5

static void
subject_key_columns(const BatchSubjects *subjects, const int *which, int n, Datum *args)
{
	Datum	   *cols[KEY_COLUMNS];
	static const Oid types[KEY_COLUMNS] = {UUIDOID, UUIDOID, TEXTOID, TEXTOID, CHAROID};

	for (int c = 0; c < KEY_COLUMNS; c++)
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
	for (int c = 0; c < KEY_COLUMNS; c++)
		args[c] = spi_array_arg(cols[c], NULL, n, types[c]);
}

/*
 * What a lane writes of the subjects listed in which: args[0] their lane
 * ids, args[1..3] their number of operations in the batch, and the first's
 * priority and not_before.
 */
#define LANE_WRITE_ARGS 4

static void
lane_write_args(const BatchSubjects *subjects, const int *which, int n, Datum *args)
{
	Datum	   *cols[LANE_WRITE_ARGS];
	bool	   *not_before_nulls = palloc(sizeof(bool) * n);
	static const Oid types[LANE_WRITE_ARGS] = {INT8OID, INT4OID, INT4OID, TIMESTAMPTZOID};

	for (int c = 0; c < LANE_WRITE_ARGS; c++)
		cols[c] = palloc(sizeof(Datum) * n);
	for (int i = 0; i < n; i++)
	{
		OpInput    *first = subjects->first[which[i]];

		cols[0][i] = subjects->lane_id[which[i]];
		cols[1][i] = Int32GetDatum(subjects->nops[which[i]]);
		cols[2][i] = Int32GetDatum(first->priority);
		cols[3][i] = TimestampTzGetDatum(first->not_before);
		not_before_nulls[i] = !first->has_not_before;
	}
	for (int c = 0; c < LANE_WRITE_ARGS; c++)
		args[c] = spi_array_arg(cols[c], c == 3 ? not_before_nulls : NULL, n, types[c]);
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

/* find_subjects for the subjects listed in which; marks those found. */
static void
find_existing_subjects(BatchSubjects *subjects, const int *which, int n)
{
	Datum		args[KEY_COLUMNS];

	subject_key_columns(subjects, which, n, args);
	/* not read-only: a second search must see subjects committed meanwhile */
	saved_plan_execute(&find_subjects, (Datum[]) {args[1], args[2], args[3]}, NULL, false, 0);
	for (uint64 row = 0; row < SPI_processed; row++)
	{
		int			k = which[spi_get_int64(row, 1) - 1];

		subjects->lane_id[k] = Int64GetDatum(spi_get_int64(row, 2));
		subjects->located[k] = true;
	}
}

/* register_subjects for the subjects listed in which; marks those it made. */
static void
register_new_subjects(BatchSubjects *subjects, const int *which, int n)
{
	Datum		args[KEY_COLUMNS];

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
		subjects->last_seq[k] = subjects->nops[k];
		subjects->located[k] = true;
		subjects->new_lane[k] = true;
	}
}

/* insert_new_lanes for the subjects registered here. */
static void
create_new_lanes(const BatchSubjects *subjects)
{
	int		   *which = palloc(sizeof(int) * subjects->count);
	Datum		keys[KEY_COLUMNS];
	Datum		lane[LANE_WRITE_ARGS];
	int			n = 0;

	for (int k = 0; k < subjects->count; k++)
		if (subjects->new_lane[k])
			which[n++] = k;
	if (n == 0)
		return;
	subject_key_columns(subjects, which, n, keys);
	lane_write_args(subjects, which, n, lane);
	saved_plan_execute(&insert_new_lanes,
					   (Datum[]) {lane[0], keys[0], keys[1], keys[4], lane[1], lane[2], lane[3]},
					   NULL, false, 0);
	spi_note_ready_lanes(1);
}

/* Subjects by the lane they had before this batch (arg: BatchSubjects). */
static int
compare_lanes(const void *a, const void *b, void *arg)
{
	const BatchSubjects *subjects = arg;
	int64		x = DatumGetInt64(subjects->lane_id[*(const int *) a]);
	int64		y = DatumGetInt64(subjects->lane_id[*(const int *) b]);

	return (x > y) - (x < y);
}

/*
 * advance_lanes for the subjects whose lanes existed, in lane order; each
 * gets the number of the last of its operations.
 */
static void
advance_existing_lanes(BatchSubjects *subjects)
{
	int		   *which = palloc(sizeof(int) * subjects->count);
	Datum		args[LANE_WRITE_ARGS];
	int			n = 0;

	for (int k = 0; k < subjects->count; k++)
		if (!subjects->new_lane[k])
			which[n++] = k;
	if (n == 0)
		return;
	qsort_arg(which, n, sizeof(int), compare_lanes, subjects);
	lane_write_args(subjects, which, n, args);
	saved_plan_execute(&advance_lanes, args, NULL, false, 0);
	if (SPI_processed != (uint64) n)
		elog(ERROR, "xprov: %d lanes to advance, " UINT64_FORMAT " found", n, SPI_processed);
	for (uint64 row = 0; row < SPI_processed; row++)
		subjects->last_seq[which[spi_get_int64(row, 1) - 1]] = spi_get_int64(row, 2);
	spi_note_ready_lanes(3);
}

/*
 * Every subject's lane, and the number of its last operation.  Subjects are
 * found, the missing ones registered and given lanes (waiting for any that
 * a concurrent transaction is creating, which are then found again in a new
 * snapshot), and only then are the lanes that existed advanced, all in one
 * statement, in lane order.  So no wait for another transaction happens
 * while this one holds a lane, but in that statement's lane order, as a
 * completion's: two batches, or a batch and a completion, cannot deadlock.
 */
static void
number_operations(BatchSubjects *subjects)
{
	int		   *which = palloc(sizeof(int) * subjects->count);
	int			n;

	for (int k = 0; k < subjects->count; k++)
		which[k] = k;
	find_existing_subjects(subjects, which, subjects->count);
	if ((n = unlocated_subjects(subjects, which)) > 0)
	{
		register_new_subjects(subjects, which, n);
		if ((n = unlocated_subjects(subjects, which)) > 0)
		{
			find_existing_subjects(subjects, which, n);
			if (unlocated_subjects(subjects, which) > 0)
				raise_concurrent_subjects();
		}
		create_new_lanes(subjects);
	}
	advance_existing_lanes(subjects);
}

/* Operation k's number: its subject's operations end at last_seq. */
static int64
operation_seq(const BatchSubjects *subjects, int k)
{
	int			subject = subjects->ordinal[k] - 1;

	return subjects->last_seq[subject] - subjects->nops[subject] + 1 + subjects->rank[k];
}

/* insert_ops for the operations to insert, in batch order. */
static void
insert_operations(OpInput **ops, int n, const BatchSubjects *subjects)
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
	for (int i = 0; i < n; i++)
	{
		OpInput    *op = ops[i];

		cols[0][i] = UUIDPGetDatum(&op->id);
		cols[1][i] = Int64GetDatum(operation_seq(subjects, i));
		cols[2][i] = subjects->lane_id[subjects->ordinal[i] - 1];
		cols[3][i] = UUIDPGetDatum(&op->tenant_id);
		cols[4][i] = UUIDPGetDatum(&op->connector_id);
		cols[5][i] = UUIDPGetDatum(&op->identity_id);
		nulls[5][i] = !op->has_identity;
		cols[6][i] = op->target_uid ? CStringGetTextDatum(op->target_uid) : (Datum) 0;
		nulls[6][i] = op->target_uid == NULL;
		cols[7][i] = CStringGetTextDatum(op->operation_type);
		cols[8][i] = CStringGetTextDatum(op->object_class);
		cols[9][i] = JsonbPGetDatum(op->attributes);
		cols[10][i] = Int32GetDatum(op->priority);
		cols[11][i] = TimestampTzGetDatum(op->not_before);
		nulls[11][i] = !op->has_not_before;
		cols[12][i] = op->idempotency_key ? CStringGetTextDatum(op->idempotency_key) : (Datum) 0;
		nulls[12][i] = op->idempotency_key == NULL;
	}
	for (int c = 0; c < 13; c++)
		args[c] = spi_array_arg(cols[c], nulls[c], n, types[c]);
	saved_plan_execute(&insert_ops, args, NULL, false, 0);
}

/*
 * A database still at 0.1.0 gets the batch one operation at a time, in
 * subject order: two such batches lock their common lanes in one order.
 */
static void
insert_batch_legacy(OpInput **ops, int n)
{
	int		   *order = palloc(sizeof(int) * n);

	for (int i = 0; i < n; i++)
		order[i] = i;
	qsort_arg(order, n, sizeof(int), compare_positions, ops);
	for (int i = 0; i < n; i++)
	{
		Datum		values[ONE_OP_NARGS];
		char		nulls[ONE_OP_NARGS];

		one_op_args(ops[order[i]], values, nulls);
		if (!enqueue_legacy_one(values, nulls))
			raise_concurrent_subjects();
	}
}

static void
insert_batch(OpInput *inputs, int count, const bool *insert)
{
	OpInput   **ops = palloc(sizeof(OpInput *) * count);
	int			n = 0;
	BatchSubjects subjects;

	for (int i = 0; i < count; i++)
		if (insert[i])
			ops[n++] = &inputs[i];
	if (n == 0)
		return;
	if (!enqueue_lanes_number_operations())
	{
		insert_batch_legacy(ops, n);
		return;
	}

	group_subjects(ops, n, &subjects);
	number_operations(&subjects);
	insert_operations(ops, n, &subjects);
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
