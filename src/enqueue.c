/*-------------------------------------------------------------------------
 *
 * enqueue.c
 *	  xprov.enqueue() and xprov.enqueue_batch().
 *
 * An enqueue appends to the operation log and makes sure the subject and
 * its lane exist, and that the lane is ready when it was idle, in the
 * caller's transaction.  The common steps go straight to the tables
 * (queue_tables.h); SQL is left for what a DBA's changes to the tables
 * (triggers on xprov.subject, stored generated columns) would make differ
 * from an INSERT or UPDATE, and for the batch's new subjects and lanes.
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
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "claim_cursor.h"
#include "op_input.h"
#include "queue_tables.h"
#include "spi_util.h"

PG_FUNCTION_INFO_V1(xprov_enqueue);
PG_FUNCTION_INFO_V1(xprov_enqueue_batch);

/*
 * An enqueue locks its subject's lane until commit (FOR NO KEY UPDATE, see
 * queue_tables.h) and only then takes the numbers of its operations from
 * xprov.op_seq: an enqueue of the same subject that it waited for has
 * taken lower numbers, and one that waits for it takes higher ones, so a
 * lane walks its operations in the order they commit.  The lock also holds
 * off a completion that would mark the lane idle until our operation is
 * there to be seen; and claims, which skip locked lanes, until it is
 * committed.
 *
 * Only an idle lane is written: it gets the subject's first new operation
 * as its head.  A lane that is ready, leased, dead or parked already has
 * a head, and walks on to our operations in its time.
 */

/* What a lane write reports, in the order spi_note_ready_lanes() reads. */
#define LANE_COLUMNS \
	"l.state, l.claimant, -(l.priority::bigint) AS rank, l.run_at, l.lane_id"

/*
 * Idle lanes that this transaction has locked become ready: $1 their
 * current versions, $2 their new heads, with $3 priority and $4 not_before.
 */
static SavedPlan wake_idle_lanes = {
	.sql =
	"UPDATE xprov.lane l SET state = 'r', next_seq = h.seq, priority = h.priority, "
	"       run_at = greatest(now(), h.not_before) "
	"  FROM (SELECT unnest($1::tid[]) AS lane_ctid, unnest($2::bigint[]) AS seq, "
	"               unnest($3::int[]) AS priority, unnest($4::timestamptz[]) AS not_before) h "
	" WHERE l.ctid = h.lane_ctid "
	"RETURNING " LANE_COLUMNS,
	.nargs = 4,
	.argtypes = {TIDARRAYOID, INT8ARRAYOID, INT4ARRAYOID, TIMESTAMPTZARRAYOID},
	.nested_loops_only = true,
};

/*
 * One operation for a subject that does not exist: the subject, and its
 * lane with the operation ($6) as its head.  A subject created by another
 * transaction after our snapshot makes the INSERT wait for it and then do
 * nothing; the statement writes nothing, and the operation is enqueued to
 * the existing subject in the next snapshot.
 */
static SavedPlan create_subject = {
	.sql =
	"WITH new_subject AS ("
	"  INSERT INTO xprov.subject (tenant_id, connector_id, object_class, subject, claimant) "
	"  VALUES ($1, $2, $3, $4, $5) "
	"  ON CONFLICT (connector_id, object_class, subject) DO NOTHING "
	"  RETURNING lane_id"
	") "
	"INSERT INTO xprov.lane AS l (lane_id, tenant_id, connector_id, claimant, state, next_seq, "
	"                             priority, run_at) "
	"SELECT n.lane_id, $1, $2, $5, 'r', $6, $7, greatest(now(), $8) FROM new_subject n "
	"RETURNING " LANE_COLUMNS,
	.nargs = 8,
	.argtypes = {UUIDOID, UUIDOID, TEXTOID, TEXTOID, CHAROID, INT8OID, INT4OID, TIMESTAMPTZOID},
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
 * Then it writes the new lanes, in a statement whose arrays are read by
 * set-returning functions in the select list, which stream (unnest() in
 * FROM would copy every row into a tuplestore first): lane id, tenant,
 * connector, claimant, and the subject's first operation's number,
 * priority and not_before.
 */
static SavedPlan insert_new_lanes = {
	.sql =
	"INSERT INTO xprov.lane AS l (lane_id, tenant_id, connector_id, claimant, state, next_seq, "
	"                             priority, run_at) "
	"SELECT lane_id, tenant_id, connector_id, claimant, 'r', seq, priority, "
	"       greatest(now(), not_before) "
	"  FROM (SELECT unnest($1::bigint[]) AS lane_id, unnest($2::uuid[]) AS tenant_id, "
	"               unnest($3::uuid[]) AS connector_id, unnest($4::\"char\"[]) AS claimant, "
	"               unnest($5::bigint[]) AS seq, unnest($6::int[]) AS priority, "
	"               unnest($7::timestamptz[]) AS not_before) h "
	"RETURNING " LANE_COLUMNS,
	.nargs = 7,
	.argtypes = {INT8ARRAYOID, UUIDARRAYOID, UUIDARRAYOID, CHARARRAYOID, INT8ARRAYOID, INT4ARRAYOID,
		TIMESTAMPTZARRAYOID},
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

/* A lane that we hold and is ready: claims skip it until we commit. */
static void
note_if_ready(const LockedLane *lane)
{
	ClaimKey	key;

	if (lane->state != 'r')
		return;
	key.rank = -(int64) lane->priority;
	key.run_at = lane->run_at;
	key.lane_id = lane->lane_id;
	claim_cursor_note_ready(lane->claimant, &key);
}

/* The first of n lanes that wake_idle_lanes did not return (column 5: lane_id). */
static int64
first_not_woken(const LockedLane *lanes, int n)
{
	for (int i = 0; i < n; i++)
	{
		bool		woken = false;

		for (uint64 row = 0; row < SPI_processed && !woken; row++)
			woken = spi_get_int64(row, 5) == lanes[i].lane_id;
		if (!woken)
			return lanes[i].lane_id;
	}
	elog(ERROR, "xprov: every idle lane was woken, yet fewer rows came back");
}

/*
 * wake_idle_lanes for n lanes locked here: each gets its subject's first
 * new operation, numbered seqs[i], as its head.  Only when
 * queue_can_wake_lanes() says no: queue_wake_lane() does the same without
 * SQL otherwise.
 */
static void
wake_lanes(const LockedLane *lanes, const int64 *seqs, OpInput *const *firsts, int n)
{
	Datum	   *tids = palloc(sizeof(Datum) * n);
	Datum	   *heads = palloc(sizeof(Datum) * n);
	Datum	   *priorities = palloc(sizeof(Datum) * n);
	Datum	   *not_befores = palloc(sizeof(Datum) * n);
	bool	   *not_before_nulls = palloc(sizeof(bool) * n);
	Datum		args[4];

	for (int i = 0; i < n; i++)
	{
		tids[i] = PointerGetDatum(&lanes[i].tid);
		heads[i] = Int64GetDatum(seqs[i]);
		priorities[i] = Int32GetDatum(firsts[i]->priority);
		not_befores[i] = TimestampTzGetDatum(firsts[i]->not_before);
		not_before_nulls[i] = !firsts[i]->has_not_before;
	}
	args[0] = spi_array_arg(tids, NULL, n, TIDOID);
	args[1] = spi_array_arg(heads, NULL, n, INT8OID);
	args[2] = spi_array_arg(priorities, NULL, n, INT4OID);
	args[3] = spi_array_arg(not_befores, not_before_nulls, n, TIMESTAMPTZOID);
	saved_plan_execute(&wake_idle_lanes, args, NULL, false, 0);
	if (SPI_processed != (uint64) n)
		queue_raise_wake_skipped(first_not_woken(lanes, n));
	spi_note_ready_lanes(1);
}

/*
 * create_subject for op, whose operation is numbered seq; false if a
 * concurrent transaction created the subject.  Only when
 * queue_can_create_subjects() says no: queue_create_subject() does the same
 * without SQL otherwise.
 */
static bool
create_subject_lane(const OpInput *op, int64 seq, int64 *lane_id)
{
	Datum		values[8];
	char		nulls[8];

	memset(nulls, ' ', sizeof(nulls));
	values[0] = UUIDPGetDatum(&op->tenant_id);
	values[1] = UUIDPGetDatum(&op->connector_id);
	values[2] = CStringGetTextDatum(op->object_class);
	values[3] = CStringGetTextDatum(op->subject);
	values[4] = CharGetDatum(op->claimant);
	values[5] = Int64GetDatum(seq);
	values[6] = Int32GetDatum(op->priority);
	values[7] = TimestampTzGetDatum(op->not_before);
	nulls[7] = op->has_not_before ? ' ' : 'n';
	saved_plan_execute(&create_subject, values, nulls, false, 0);
	if (SPI_processed == 0)
		return false;
	*lane_id = spi_get_int64(0, 5);
	spi_note_ready_lanes(1);
	return true;
}

/* The lane of op's subject, locked, in a new snapshot; false if none. */
static bool
lock_subject_lane(QueueTables *tables, const OpInput *op, LockedLane *lane)
{
	int64		lane_id;
	bool		found;

	queue_tables_push_snapshot(tables);
	found = queue_find_lane(tables, op, &lane_id) &&
		queue_lock_lane(tables, lane_id, &op->connector_id, lane);
	queue_tables_pop_snapshot(tables);
	return found;
}

static void
enqueue_single(OpInput *op)
{
	QueueTables tables;
	LockedLane	lane;
	int64		seq;

	queue_tables_open(&tables);
	for (int attempt = 0;; attempt++)
	{
		if (lock_subject_lane(&tables, op, &lane))
		{
			seq = queue_next_seq(&tables);
			if (lane.state != 'i')
				note_if_ready(&lane);
			else if (queue_can_wake_lanes(&tables))
			{
				queue_wake_lane(&tables, &lane, op, seq);
				note_if_ready(&lane);
			}
			else
				wake_lanes(&lane, &seq, &op, 1);
			break;
		}
		seq = queue_next_seq(&tables);
		if (!queue_can_create_subjects(&tables))
		{
			if (create_subject_lane(op, seq, &lane.lane_id))
				break;
		}
		else if (queue_create_subject(&tables, op, seq, &lane))
		{
			note_if_ready(&lane);
			break;
		}
		/* the subject was created concurrently: the next snapshot sees it */
		if (attempt > 0)
			raise_concurrent_subjects();
	}
	queue_insert_op(&tables, op, lane.lane_id, seq);
	queue_tables_close(&tables);
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
 * The batch's distinct subjects, in the order of the subject's key
 * (subject, connector, object class, bytewise), each with the first of its operations in the batch
 * (the head its lane gets when the lane is new or idle), how many it has,
 * and once located, its lane.
 */
typedef struct BatchSubjects
{
	int			count;
	OpInput   **first;			/* per subject: its first operation */
	int		   *nops;			/* per subject: its operations in the batch */
	int64	   *ordinal;		/* per operation to insert: its subject, from 1 */
	int		   *rank;			/* per operation: its place among its subject's */
	int64	   *lane_id;		/* per subject, once located */
	int64	   *head_seq;		/* per subject: its first operation's number */
	bool	   *located;
	bool	   *new_lane;		/* registered here: the lane is to be created */
} BatchSubjects;

/* The order of the subject's key in 0.2.0: subject, connector, class. */
static int
compare_subjects(const OpInput *a, const OpInput *b)
{
	int			c = strcmp(a->subject, b->subject);

	if (c == 0)
		c = memcmp(&a->connector_id, &b->connector_id, UUID_LEN);
	if (c == 0)
		c = strcmp(a->object_class, b->object_class);
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
	subjects->lane_id = palloc0(sizeof(int64) * subjects->count);
	subjects->head_seq = palloc0(sizeof(int64) * subjects->count);
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

/*
 * Finds, in a new snapshot, the lanes of the subjects listed in which (in
 * subject order, which is the index's) and marks those found.  No lock is
 * taken: subjects are never deleted, and a lane's lane_id never changes.
 */
static void
find_existing_subjects(QueueTables *tables, BatchSubjects *subjects, const int *which, int n)
{
	queue_tables_push_snapshot(tables);
	for (int i = 0; i < n; i++)
	{
		int			k = which[i];

		subjects->located[k] = queue_find_lane(tables, subjects->first[k], &subjects->lane_id[k]);
	}
	queue_tables_pop_snapshot(tables);
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
		subjects->lane_id[k] = spi_get_int64(row, 1);
		subjects->located[k] = true;
		subjects->new_lane[k] = true;
	}
}

/*
 * Every subject's lane.  Subjects are found, and the missing ones
 * registered (waiting for any that a concurrent transaction is creating,
 * which are then found again in a new snapshot), before any lane is
 * locked: no wait for another transaction happens while this one holds a
 * lane, but in lane order, as a completion's.
 */
static void
locate_subjects(QueueTables *tables, BatchSubjects *subjects)
{
	int		   *which = palloc(sizeof(int) * subjects->count);
	int			n;

	for (int k = 0; k < subjects->count; k++)
		which[k] = k;
	find_existing_subjects(tables, subjects, which, subjects->count);
	if ((n = unlocated_subjects(subjects, which)) > 0)
	{
		register_new_subjects(subjects, which, n);
		if ((n = unlocated_subjects(subjects, which)) > 0)
		{
			find_existing_subjects(tables, subjects, which, n);
			if (unlocated_subjects(subjects, which) > 0)
				raise_concurrent_subjects();
		}
	}
}

/* Subjects by lane (arg: BatchSubjects). */
static int
compare_lanes(const void *a, const void *b, void *arg)
{
	const BatchSubjects *subjects = arg;
	int64		x = subjects->lane_id[*(const int *) a];
	int64		y = subjects->lane_id[*(const int *) b];

	return (x > y) - (x < y);
}

/*
 * Locks the lanes that existed, in lane order: the order completions lock
 * lanes in too, so the two cannot deadlock.  Returns how many, with their
 * subjects in which and the lanes in locked.
 */
static int
lock_existing_lanes(QueueTables *tables, const BatchSubjects *subjects, int *which,
					LockedLane *locked)
{
	int			n = 0;

	for (int k = 0; k < subjects->count; k++)
		if (!subjects->new_lane[k])
			which[n++] = k;
	qsort_arg(which, n, sizeof(int), compare_lanes, (void *) subjects);
	queue_tables_push_snapshot(tables);
	for (int i = 0; i < n; i++)
		if (!queue_lock_lane(tables, subjects->lane_id[which[i]],
							 &subjects->first[which[i]]->connector_id, &locked[i]))
			raise_concurrent_subjects();
	queue_tables_pop_snapshot(tables);
	return n;
}

/* insert_new_lanes for the subjects registered here. */
static void
create_new_lanes(const BatchSubjects *subjects)
{
	int		   *which = palloc(sizeof(int) * subjects->count);
	Datum		keys[KEY_COLUMNS];
	Datum	   *lane_ids = palloc(sizeof(Datum) * subjects->count);
	Datum	   *heads = palloc(sizeof(Datum) * subjects->count);
	Datum	   *priorities = palloc(sizeof(Datum) * subjects->count);
	Datum	   *not_befores = palloc(sizeof(Datum) * subjects->count);
	bool	   *not_before_nulls = palloc(sizeof(bool) * subjects->count);
	int			n = 0;

	for (int k = 0; k < subjects->count; k++)
	{
		OpInput    *first = subjects->first[k];

		if (!subjects->new_lane[k])
			continue;
		lane_ids[n] = Int64GetDatum(subjects->lane_id[k]);
		heads[n] = Int64GetDatum(subjects->head_seq[k]);
		priorities[n] = Int32GetDatum(first->priority);
		not_befores[n] = TimestampTzGetDatum(first->not_before);
		not_before_nulls[n] = !first->has_not_before;
		which[n++] = k;
	}
	if (n == 0)
		return;
	subject_key_columns(subjects, which, n, keys);
	saved_plan_execute(&insert_new_lanes,
					   (Datum[]) {spi_array_arg(lane_ids, NULL, n, INT8OID), keys[0], keys[1],
						   keys[4], spi_array_arg(heads, NULL, n, INT8OID),
						   spi_array_arg(priorities, NULL, n, INT4OID),
					   spi_array_arg(not_befores, not_before_nulls, n, TIMESTAMPTZOID)},
					   NULL, false, 0);
	spi_note_ready_lanes(1);
}

/* Idle lanes among the n locked ones get their subject's first operation. */
static void
wake_locked_lanes(QueueTables *tables, const BatchSubjects *subjects, const int *which,
				  LockedLane *locked, int n)
{
	LockedLane *idle = palloc(sizeof(LockedLane) * Max(n, 1));
	int64	   *heads = palloc(sizeof(int64) * Max(n, 1));
	OpInput   **firsts = palloc(sizeof(OpInput *) * Max(n, 1));
	int			nidle = 0;
	bool		direct = queue_can_wake_lanes(tables);

	for (int i = 0; i < n; i++)
	{
		if (locked[i].state != 'i' || direct)
		{
			if (locked[i].state == 'i')
				queue_wake_lane(tables, &locked[i], subjects->first[which[i]],
								subjects->head_seq[which[i]]);
			note_if_ready(&locked[i]);
			continue;
		}
		idle[nidle] = locked[i];
		heads[nidle] = subjects->head_seq[which[i]];
		firsts[nidle] = subjects->first[which[i]];
		nidle++;
	}
	if (nidle > 0)
		wake_lanes(idle, heads, firsts, nidle);
}

/* Operations by lane, then batch order (arg: BatchSubjects). */
static int
compare_lane_positions(const void *a, const void *b, void *arg)
{
	const BatchSubjects *subjects = arg;
	int			x = *(const int *) a;
	int			y = *(const int *) b;
	int64		lx = subjects->lane_id[subjects->ordinal[x] - 1];
	int64		ly = subjects->lane_id[subjects->ordinal[y] - 1];

	if (lx != ly)
		return (lx > ly) - (lx < ly);
	return (x > y) - (x < y);
}

/*
 * Appends the operations in the order of the log's (lane_id, seq) index,
 * whose leaf pages they then visit in turn rather than at random.
 */
static void
insert_operations(QueueTables *tables, OpInput **ops, int n, const BatchSubjects *subjects,
				  const int64 *seqs)
{
	int		   *order = palloc(sizeof(int) * n);

	for (int i = 0; i < n; i++)
		order[i] = i;
	qsort_arg(order, n, sizeof(int), compare_lane_positions, (void *) subjects);
	for (int i = 0; i < n; i++)
	{
		int			k = order[i];

		queue_insert_op(tables, ops[k], subjects->lane_id[subjects->ordinal[k] - 1], seqs[k]);
	}
}

/*
 * The batch's operations, after its lanes are located and locked, are
 * numbered in batch order (so one subject's in the order they came) and
 * appended to the log.
 */
static void
insert_batch(OpInput *inputs, int count, const bool *insert)
{
	OpInput   **ops = palloc(sizeof(OpInput *) * count);
	int64	   *seqs;
	int		   *which;
	LockedLane *locked;
	int			n = 0;
	int			nlocked;
	BatchSubjects subjects;
	QueueTables tables;

	for (int i = 0; i < count; i++)
		if (insert[i])
			ops[n++] = &inputs[i];
	if (n == 0)
		return;

	group_subjects(ops, n, &subjects);
	queue_tables_open(&tables);
	locate_subjects(&tables, &subjects);
	which = palloc(sizeof(int) * subjects.count);
	locked = palloc(sizeof(LockedLane) * subjects.count);
	nlocked = lock_existing_lanes(&tables, &subjects, which, locked);

	seqs = palloc(sizeof(int64) * n);
	for (int i = 0; i < n; i++)
	{
		seqs[i] = queue_next_seq(&tables);
		if (subjects.rank[i] == 0)
			subjects.head_seq[subjects.ordinal[i] - 1] = seqs[i];
	}
	create_new_lanes(&subjects);
	wake_locked_lanes(&tables, &subjects, which, locked, nlocked);
	insert_operations(&tables, ops, n, &subjects, seqs);
	queue_tables_close(&tables);
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
