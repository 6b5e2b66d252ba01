/*-------------------------------------------------------------------------
 *
 * queue_tables.c
 *	  The enqueue's direct access to xprov.subject, xprov.lane and xprov.op.
 *
 * Relations, indexes and columns are found by name and shape (an index by
 * its set of columns), so that the same library serves every version of
 * the schema that has these tables.  What was found is kept until a
 * relcache invalidation of one of the tables, so that a table made afresh
 * (DROP and CREATE EXTENSION) is never read through a stale reference.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/sysattr.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_index.h"
#include "commands/sequence.h"
#include "commands/trigger.h"
#include "storage/lmgr.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "optimizer/optimizer.h"
#include "parser/parse_relation.h"
#include "rewrite/rewriteHandler.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "queue_tables.h"
#include "subject_cache.h"

/* The columns an enqueue writes: their places in QueueColumns, and names. */
enum
{
	OP_ID, OP_SEQ, OP_LANE_ID, OP_TENANT_ID, OP_CONNECTOR_ID, OP_IDENTITY_ID, OP_TARGET_UID,
	OP_OPERATION_TYPE, OP_OBJECT_CLASS, OP_ATTRIBUTES, OP_PRIORITY, OP_NOT_BEFORE,
	OP_IDEMPOTENCY_KEY
};
static const char *const op_column_names[QUEUE_OP_COLUMNS] = {
	[OP_ID] = "id", [OP_SEQ] = "seq", [OP_LANE_ID] = "lane_id", [OP_TENANT_ID] = "tenant_id",
	[OP_CONNECTOR_ID] = "connector_id", [OP_IDENTITY_ID] = "identity_id",
	[OP_TARGET_UID] = "target_uid", [OP_OPERATION_TYPE] = "operation_type",
	[OP_OBJECT_CLASS] = "object_class", [OP_ATTRIBUTES] = "attributes",
	[OP_PRIORITY] = "priority", [OP_NOT_BEFORE] = "not_before",
	[OP_IDEMPOTENCY_KEY] = "idempotency_key"
};

enum
{
	SUBJECT_TENANT_ID, SUBJECT_CONNECTOR_ID, SUBJECT_OBJECT_CLASS, SUBJECT_SUBJECT,
	SUBJECT_CLAIMANT
};
static const char *const subject_column_names[QUEUE_SUBJECT_COLUMNS] = {
	[SUBJECT_TENANT_ID] = "tenant_id", [SUBJECT_CONNECTOR_ID] = "connector_id",
	[SUBJECT_OBJECT_CLASS] = "object_class", [SUBJECT_SUBJECT] = "subject",
	[SUBJECT_CLAIMANT] = "claimant"
};

/* a lock reads state, claimant, priority, run_at and connector_id too */
enum
{
	LANE_LANE_ID, LANE_TENANT_ID, LANE_CONNECTOR_ID, LANE_CLAIMANT, LANE_STATE, LANE_NEXT_SEQ,
	LANE_PRIORITY, LANE_RUN_AT
};
static const char *const lane_column_names[QUEUE_LANE_COLUMNS] = {
	[LANE_LANE_ID] = "lane_id", [LANE_TENANT_ID] = "tenant_id",
	[LANE_CONNECTOR_ID] = "connector_id", [LANE_CLAIMANT] = "claimant", [LANE_STATE] = "state",
	[LANE_NEXT_SEQ] = "next_seq", [LANE_PRIORITY] = "priority", [LANE_RUN_AT] = "run_at"
};

/* the subject's unique key, whatever the order of its index's columns */
enum
{
	SUBJECT_KEY_CONNECTOR_ID, SUBJECT_KEY_OBJECT_CLASS, SUBJECT_KEY_SUBJECT
};

/*
 * What queue_tables_open() finds by name and shape: kept per backend until
 * a relcache invalidation of one of the tables (DDL, TRUNCATE, ANALYZE, or
 * a new extension) says it may have changed.
 */
typedef struct QueueTablesShape
{
	bool		valid;
	Oid			subject;
	Oid			lane;
	Oid			op;
	Oid			op_seq;
	Oid			subject_key;
	int			subject_key_order[QUEUE_SUBJECT_KEY_COLUMNS];
	Oid			lane_key;
	QueueColumns columns;
	int			natts[QUEUE_TABLES];
	Expr	  **defaults[QUEUE_TABLES];	/* planned, in shape_context */
} QueueTablesShape;

static QueueTablesShape shape;
static MemoryContext shape_context = NULL;
static bool invalidation_registered = false;
static uint64 invalidations = 0;

static void
shape_invalidate(Datum arg, Oid relid)
{
	if (!OidIsValid(relid) || relid == shape.subject || relid == shape.lane || relid == shape.op ||
		relid == shape.op_seq)
	{
		shape.valid = false;
		invalidations++;
	}
}

static Oid
queue_relation(Oid namespace, const char *name)
{
	Oid			relid = get_relname_relid(name, namespace);

	if (!OidIsValid(relid))
		ereport(ERROR,
				errcode(ERRCODE_UNDEFINED_OBJECT),
				errmsg("relation \"xprov.%s\" does not exist", name),
				errhint("Reinstall the extension with DROP EXTENSION xprov and CREATE EXTENSION xprov."));
	return relid;
}

static AttrNumber
column_number(Relation rel, const char *name)
{
	int			attnum = attnameAttNum(rel, name, false);

	if (attnum == InvalidAttrNumber)
		elog(ERROR, "xprov: column \"%s\" of \"%s\" is missing", name, RelationGetRelationName(rel));
	return (AttrNumber) attnum;
}

/*
 * The index of rel whose keys are exactly the columns named, in any order,
 * without a predicate or expressions (unique if asked for).  order[k] is
 * the place in names of the index's key column k + 1, since scan keys go
 * in index column order.
 */
static Oid
index_on_columns(Relation rel, const char *const *names, int ncolumns, bool unique, int *order)
{
	List	   *indexes = RelationGetIndexList(rel);
	ListCell   *lc;

	foreach(lc, indexes)
	{
		Relation	index = index_open(lfirst_oid(lc), AccessShareLock);
		Form_pg_index form = index->rd_index;
		bool		match = form->indnkeyatts == ncolumns && (form->indisunique || !unique) &&
			form->indisvalid &&
			heap_attisnull(index->rd_indextuple, Anum_pg_index_indpred, NULL);
		bool		taken[INDEX_MAX_KEYS] = {false};

		for (int k = 0; match && k < ncolumns; k++)
		{
			match = false;
			for (int c = 0; !match && c < ncolumns; c++)
				if (!taken[c] && form->indkey.values[k] == column_number(rel, names[c]))
				{
					order[k] = c;
					taken[c] = match = true;
				}
		}
		index_close(index, AccessShareLock);
		if (match)
		{
			Oid			found = lfirst_oid(lc);

			list_free(indexes);
			return found;
		}
	}
	elog(ERROR, "xprov: the index on (%s...) of \"%s\" is missing", names[0],
		 RelationGetRelationName(rel));
	pg_unreachable();
}

/*
 * Any column but those written gets its default, as in an INSERT that
 * leaves it out (lane_id of xprov.subject is an identity column).
 */
static void
learn_defaults(Relation rel, QueueTable table, const AttrNumber *written, int nwritten)
{
	TupleDesc	desc = RelationGetDescr(rel);

	shape.natts[table] = desc->natts;
	shape.defaults[table] = MemoryContextAllocZero(shape_context, sizeof(Expr *) * desc->natts);
	for (int i = 0; i < desc->natts; i++)
	{
		bool		is_written = false;
		Node	   *def;

		for (int c = 0; c < nwritten; c++)
			is_written |= written[c] == i + 1;
		if (is_written || TupleDescAttr(desc, i)->attisdropped ||
			TupleDescAttr(desc, i)->attgenerated)
			continue;
		if ((def = build_column_default(rel, i + 1)) != NULL)
		{
			Expr	   *planned = expression_planner((Expr *) def);
			MemoryContext old = MemoryContextSwitchTo(shape_context);

			shape.defaults[table][i] = copyObject(planned);
			MemoryContextSwitchTo(old);
		}
	}
}

static void
forget_shape(void)
{
	shape.valid = false;
	memset(shape.defaults, 0, sizeof(shape.defaults));
	if (shape_context == NULL)
		shape_context = AllocSetContextCreate(CacheMemoryContext, "xprov queue tables",
											  ALLOCSET_SMALL_SIZES);
	else
		MemoryContextReset(shape_context);
}

static void
learn_shape(Relation subject, Relation lane, Relation op, Oid op_seq)
{
	static const char *const subject_key[QUEUE_SUBJECT_KEY_COLUMNS] = {
		[SUBJECT_KEY_CONNECTOR_ID] = "connector_id", [SUBJECT_KEY_OBJECT_CLASS] = "object_class",
		[SUBJECT_KEY_SUBJECT] = "subject"
	};
	static const char *const lane_key[] = {"lane_id"};
	int			lane_key_order[1];
	uint64		invalidations_before = invalidations;

	forget_shape();
	shape.subject = RelationGetRelid(subject);
	shape.lane = RelationGetRelid(lane);
	shape.op = RelationGetRelid(op);
	shape.op_seq = op_seq;
	shape.subject_key = index_on_columns(subject, subject_key, QUEUE_SUBJECT_KEY_COLUMNS, true,
										 shape.subject_key_order);
	shape.columns.subject_lane_id = column_number(subject, "lane_id");
	shape.lane_key = index_on_columns(lane, lane_key, 1, false, lane_key_order);
	for (int c = 0; c < QUEUE_OP_COLUMNS; c++)
		shape.columns.op[c] = column_number(op, op_column_names[c]);
	for (int c = 0; c < QUEUE_SUBJECT_COLUMNS; c++)
		shape.columns.subject[c] = column_number(subject, subject_column_names[c]);
	for (int c = 0; c < QUEUE_LANE_COLUMNS; c++)
		shape.columns.lane[c] = column_number(lane, lane_column_names[c]);
	learn_defaults(op, QUEUE_OP, shape.columns.op, QUEUE_OP_COLUMNS);
	learn_defaults(subject, QUEUE_SUBJECT, shape.columns.subject, QUEUE_SUBJECT_COLUMNS);
	learn_defaults(lane, QUEUE_LANE, shape.columns.lane, QUEUE_LANE_COLUMNS);
	/* what was read before an invalidation that came meanwhile is used once */
	shape.valid = invalidations == invalidations_before;
}

/*
 * Inserts go through an EState set up as logical replication's apply does
 * (create_edata_for_relation), with the three tables in its range table.
 */
static EState *
insert_state(Relation *rels)
{
	EState	   *estate = CreateExecutorState();
	List	   *rtable = NIL;

	for (int t = 0; t < QUEUE_TABLES; t++)
	{
		RangeTblEntry *rte = makeNode(RangeTblEntry);

		rte->rtekind = RTE_RELATION;
		rte->relid = RelationGetRelid(rels[t]);
		rte->relkind = rels[t]->rd_rel->relkind;
		rte->rellockmode = RowExclusiveLock;
		rtable = lappend(rtable, rte);
	}
	ExecInitRangeTable(estate, rtable);
	AfterTriggerBeginQuery();
	return estate;
}

/*
 * The inserter of a table, opened on first use; speculative: its unique
 * indexes can arbitrate an INSERT ... ON CONFLICT.
 */
static TableInserter *
inserter(QueueTables *tables, QueueTable table, Relation rel, bool speculative)
{
	TableInserter *ins = &tables->inserters[table];
	TupleDesc	desc = RelationGetDescr(rel);

	if (ins->info != NULL)
		return ins;
	ins->info = makeNode(ResultRelInfo);
	InitResultRelInfo(ins->info, rel, table + 1, NULL, 0);
	tables->estate->es_opened_result_relations =
		lappend(tables->estate->es_opened_result_relations, ins->info);
	ExecOpenIndices(ins->info, speculative);
	ins->slot = ExecInitExtraTupleSlot(tables->estate, desc, &TTSOpsVirtual);
	ins->table = table;
	ins->defaults = NULL;
	return ins;
}

/* The defaults of the columns a new row does not set (an update needs none). */
static ExprState **
column_defaults(TableInserter *ins)
{
	int			natts = ins->slot->tts_tupleDescriptor->natts;

	if (ins->defaults != NULL)
		return ins->defaults;
	ins->defaults = palloc0(sizeof(ExprState *) * natts);
	for (int i = 0; i < natts; i++)
		if (shape.defaults[ins->table][i] != NULL)
			ins->defaults[i] = ExecInitExpr(shape.defaults[ins->table][i], NULL);
	return ins->defaults;
}

/* A new row in the inserter's slot: every column its default or NULL. */
static TupleTableSlot *
begin_row(QueueTables *tables, TableInserter *ins)
{
	TupleTableSlot *slot = ins->slot;
	ExprContext *econtext = GetPerTupleExprContext(tables->estate);
	ExprState **defaults = column_defaults(ins);

	ExecClearTuple(slot);
	for (int i = 0; i < slot->tts_tupleDescriptor->natts; i++)
	{
		slot->tts_values[i] = (Datum) 0;
		slot->tts_isnull[i] = true;
		if (defaults[i] != NULL)
			slot->tts_values[i] = ExecEvalExprSwitchContext(defaults[i], econtext,
															&slot->tts_isnull[i]);
	}
	return slot;
}

static void
set_column(TupleTableSlot *slot, AttrNumber attnum, Datum value, bool isnull)
{
	slot->tts_values[attnum - 1] = value;
	slot->tts_isnull[attnum - 1] = isnull;
}

/*
 * The tables by the ids known from the last open, if nothing has changed
 * them since: that spares the name lookups.  Taking the locks takes in
 * the invalidations committed meanwhile; one of ours means the ids may be
 * stale, and the tables are found by name again.  (A table dropped
 * meanwhile fails to open, as it would after a lookup by name.)
 */
static bool
open_known_tables(QueueTables *tables)
{
	if (!shape.valid)
		return false;
	tables->subject = table_open(shape.subject, RowExclusiveLock);
	tables->lane = table_open(shape.lane, RowExclusiveLock);
	tables->op = table_open(shape.op, RowExclusiveLock);
	if (shape.valid)
	{
		tables->op_seq = shape.op_seq;
		return true;
	}
	table_close(tables->op, NoLock);
	table_close(tables->lane, NoLock);
	table_close(tables->subject, NoLock);
	return false;
}

static void
open_tables_by_name(QueueTables *tables)
{
	Oid			namespace = get_namespace_oid("xprov", false);

	tables->op_seq = queue_relation(namespace, "op_seq");
	tables->subject = table_open(queue_relation(namespace, "subject"), RowExclusiveLock);
	tables->lane = table_open(queue_relation(namespace, "lane"), RowExclusiveLock);
	tables->op = table_open(queue_relation(namespace, "op"), RowExclusiveLock);
	if (!shape.valid || shape.subject != RelationGetRelid(tables->subject) ||
		shape.lane != RelationGetRelid(tables->lane) || shape.op != RelationGetRelid(tables->op) ||
		shape.op_seq != tables->op_seq ||
		shape.natts[QUEUE_OP] != RelationGetDescr(tables->op)->natts ||
		shape.natts[QUEUE_SUBJECT] != RelationGetDescr(tables->subject)->natts ||
		shape.natts[QUEUE_LANE] != RelationGetDescr(tables->lane)->natts)
		learn_shape(tables->subject, tables->lane, tables->op, tables->op_seq);
}

void
queue_tables_open(QueueTables *tables)
{
	/* what an INSERT would refuse, refused before any lane is locked */
	PreventCommandIfReadOnly("xprov.enqueue()");
	PreventCommandIfParallelMode("xprov.enqueue()");
	if (!invalidation_registered)
	{
		CacheRegisterRelcacheCallback(shape_invalidate, (Datum) 0);
		invalidation_registered = true;
	}
	if (!open_known_tables(tables))
		open_tables_by_name(tables);

	/* the subject's key is opened when the subject cache misses */
	tables->subject_key_id = shape.subject_key;
	tables->subject_key = NULL;
	memcpy(tables->subject_key_order, shape.subject_key_order, sizeof(shape.subject_key_order));
	tables->columns = shape.columns;
	tables->subject_scan = NULL;
	tables->lane_scan = NULL;
	tables->subject_slot = NULL;
	tables->lane_key = index_open(shape.lane_key, AccessShareLock);
	tables->lane_slot = table_slot_create(tables->lane, NULL);
	tables->estate = insert_state((Relation[]) {tables->op, tables->subject, tables->lane});
	memset(tables->inserters, 0, sizeof(tables->inserters));
	inserter(tables, QUEUE_OP, tables->op, false);
}

/*
 * The first row of heap that index finds for keys in the active snapshot.
 * The scan is kept for the next search in the same snapshot: a batch
 * searches for each of its subjects and lanes in turn.
 */
static bool
fetch_by_index(IndexScanDesc *scan, Relation heap, Relation index, ScanKey keys, int nkeys,
			   TupleTableSlot *slot)
{
	Snapshot	snapshot = GetActiveSnapshot();

	if (*scan != NULL && (*scan)->xs_snapshot != snapshot)
	{
		index_endscan(*scan);
		*scan = NULL;
	}
	if (*scan == NULL)
		*scan = index_beginscan(heap, index, snapshot, nkeys, 0);
	index_rescan(*scan, keys, nkeys, NULL, 0);
	return index_getnext_slot(*scan, ForwardScanDirection, slot);
}

static void
end_scan(IndexScanDesc *scan)
{
	if (*scan != NULL)
		index_endscan(*scan);
	*scan = NULL;
}

/*
 * Locks are kept until the transaction ends, as a statement's are.  The
 * command counter moves on, as after an SQL statement: an enqueue later in
 * the same statement (a SELECT calling xprov.enqueue() per row) must see
 * the subject and lane this one made, or it would make them again.
 */
void
queue_tables_close(QueueTables *tables)
{
	end_scan(&tables->subject_scan);
	end_scan(&tables->lane_scan);
	AfterTriggerEndQuery(tables->estate);
	for (int t = 0; t < QUEUE_TABLES; t++)
		if (tables->inserters[t].info != NULL)
			ExecCloseIndices(tables->inserters[t].info);
	ExecResetTupleTable(tables->estate->es_tupleTable, false);
	FreeExecutorState(tables->estate);
	table_close(tables->op, NoLock);

	ExecDropSingleTupleTableSlot(tables->lane_slot);
	index_close(tables->lane_key, NoLock);
	table_close(tables->lane, NoLock);
	if (tables->subject_key != NULL)
	{
		ExecDropSingleTupleTableSlot(tables->subject_slot);
		index_close(tables->subject_key, NoLock);
	}
	table_close(tables->subject, NoLock);
	CommandCounterIncrement();
}

void
queue_tables_push_snapshot(QueueTables *tables)
{
	end_scan(&tables->subject_scan);
	end_scan(&tables->lane_scan);
	PushActiveSnapshot(GetTransactionSnapshot());
}

void
queue_tables_pop_snapshot(QueueTables *tables)
{
	end_scan(&tables->subject_scan);
	end_scan(&tables->lane_scan);
	PopActiveSnapshot();
}

static void
equality_key(ScanKey key, Relation index, AttrNumber column, RegProcedure equals, Datum value)
{
	ScanKeyEntryInitialize(key, 0, column, BTEqualStrategyNumber, InvalidOid,
						   index->rd_indcollation[column - 1], equals, value);
}

bool
queue_find_lane(QueueTables *tables, const OpInput *op, int64 *lane_id)
{
	Oid			relid = RelationGetRelid(tables->subject);
	TupleTableSlot *slot;
	ScanKeyData keys[QUEUE_SUBJECT_KEY_COLUMNS];
	Datum		values[QUEUE_SUBJECT_KEY_COLUMNS];
	static const RegProcedure equals[QUEUE_SUBJECT_KEY_COLUMNS] = {
		[SUBJECT_KEY_CONNECTOR_ID] = F_UUID_EQ, [SUBJECT_KEY_OBJECT_CLASS] = F_TEXTEQ,
		[SUBJECT_KEY_SUBJECT] = F_TEXTEQ
	};
	bool		found;
	bool		isnull;

	if (subject_cache_find(relid, op, lane_id))
		return true;
	if (tables->subject_key == NULL)
	{
		tables->subject_key = index_open(tables->subject_key_id, AccessShareLock);
		tables->subject_slot = table_slot_create(tables->subject, NULL);
	}
	slot = tables->subject_slot;
	values[SUBJECT_KEY_CONNECTOR_ID] = UUIDPGetDatum(&op->connector_id);
	values[SUBJECT_KEY_OBJECT_CLASS] = CStringGetTextDatum(op->object_class);
	values[SUBJECT_KEY_SUBJECT] = CStringGetTextDatum(op->subject);
	for (int k = 0; k < QUEUE_SUBJECT_KEY_COLUMNS; k++)
	{
		int			field = tables->subject_key_order[k];

		equality_key(&keys[k], tables->subject_key, k + 1, equals[field], values[field]);
	}
	found = fetch_by_index(&tables->subject_scan, tables->subject, tables->subject_key, keys,
						   QUEUE_SUBJECT_KEY_COLUMNS, slot);
	if (found)
	{
		TransactionId xmin;

		*lane_id = DatumGetInt64(slot_getattr(slot, tables->columns.subject_lane_id, &isnull));
		/* visible and not ours: committed, and so there for good */
		xmin = DatumGetTransactionId(slot_getsysattr(slot, MinTransactionIdAttributeNumber, &isnull));
		if (!TransactionIdIsCurrentTransactionId(xmin))
			subject_cache_add(relid, op, *lane_id);
	}
	ExecClearTuple(slot);
	return found;
}

static void
raise_lane_changed(void)
{
	ereport(ERROR,
			errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
			errmsg("could not serialize access due to concurrent update"),
			errdetail("A subject's lane changed after the transaction's snapshot was taken."),
			errhint("Retry the transaction."));
}

bool
queue_lock_lane(QueueTables *tables, int64 lane_id, const pg_uuid_t *connector_id,
				LockedLane *lane)
{
	TupleTableSlot *slot = tables->lane_slot;
	ScanKeyData key;
	ItemPointerData tid;
	TM_FailureData failure;
	TM_Result	result;
	bool		isnull;

	equality_key(&key, tables->lane_key, 1, F_INT8EQ, Int64GetDatum(lane_id));
	/* a subject known from the cache may be newer than the snapshot */
	if (!fetch_by_index(&tables->lane_scan, tables->lane, tables->lane_key, &key, 1, slot))
		return false;
	tid = slot->tts_tid;
	result = table_tuple_lock(tables->lane, &tid, GetActiveSnapshot(), slot,
							  GetCurrentCommandId(true), LockTupleNoKeyExclusive, LockWaitBlock,
							  IsolationUsesXactSnapshot() ? 0 : TUPLE_LOCK_FLAG_FIND_LAST_VERSION,
							  &failure);
	switch (result)
	{
		case TM_Ok:
			break;
		case TM_Updated:
		case TM_Deleted:
			raise_lane_changed();
			break;
		default:
			elog(ERROR, "xprov: unexpected result %d locking lane " INT64_FORMAT, (int) result,
				 lane_id);
	}
	lane->tid = slot->tts_tid;
	lane->lane_id = lane_id;
	lane->state = DatumGetChar(slot_getattr(slot, tables->columns.lane[LANE_STATE], &isnull));
	lane->claimant = DatumGetChar(slot_getattr(slot, tables->columns.lane[LANE_CLAIMANT], &isnull));
	lane->priority = DatumGetInt32(slot_getattr(slot, tables->columns.lane[LANE_PRIORITY], &isnull));
	lane->run_at = DatumGetTimestampTz(slot_getattr(slot, tables->columns.lane[LANE_RUN_AT], &isnull));
	if (memcmp(DatumGetUUIDP(slot_getattr(slot, tables->columns.lane[LANE_CONNECTOR_ID], &isnull)),
			   connector_id, UUID_LEN) != 0)
		elog(ERROR, "xprov: lane " INT64_FORMAT " belongs to another connector", lane_id);
	ExecClearTuple(slot);
	return true;
}

int64
queue_next_seq(QueueTables *tables)
{
	return nextval_internal(tables->op_seq, false);
}

void
queue_insert_op(QueueTables *tables, const OpInput *op, int64 lane_id, int64 seq)
{
	EState	   *estate = tables->estate;
	TableInserter *ins = &tables->inserters[QUEUE_OP];
	TupleTableSlot *slot = begin_row(tables, ins);
	const AttrNumber *col = tables->columns.op;

	set_column(slot, col[OP_ID], UUIDPGetDatum(&op->id), false);
	set_column(slot, col[OP_SEQ], Int64GetDatum(seq), false);
	set_column(slot, col[OP_LANE_ID], Int64GetDatum(lane_id), false);
	set_column(slot, col[OP_TENANT_ID], UUIDPGetDatum(&op->tenant_id), false);
	set_column(slot, col[OP_CONNECTOR_ID], UUIDPGetDatum(&op->connector_id), false);
	set_column(slot, col[OP_IDENTITY_ID], UUIDPGetDatum(&op->identity_id), !op->has_identity);
	set_column(slot, col[OP_TARGET_UID], op->target_uid ? CStringGetTextDatum(op->target_uid) : (Datum) 0,
			   op->target_uid == NULL);
	set_column(slot, col[OP_OPERATION_TYPE], CStringGetTextDatum(op->operation_type), false);
	set_column(slot, col[OP_OBJECT_CLASS], CStringGetTextDatum(op->object_class), false);
	set_column(slot, col[OP_ATTRIBUTES], JsonbPGetDatum(op->attributes), false);
	set_column(slot, col[OP_PRIORITY], Int32GetDatum(op->priority), false);
	set_column(slot, col[OP_NOT_BEFORE], TimestampTzGetDatum(op->not_before), !op->has_not_before);
	set_column(slot, col[OP_IDEMPOTENCY_KEY], op->idempotency_key ? CStringGetTextDatum(op->idempotency_key) : (Datum) 0,
			   op->idempotency_key == NULL);
	ExecStoreVirtualTuple(slot);

	estate->es_output_cid = GetCurrentCommandId(true);
	ExecSimpleRelationInsert(ins->info, estate, slot);
	ResetPerTupleExprContext(estate);
}

/*
 * The speculative insertion of INSERT ... ON CONFLICT DO NOTHING
 * (ExecInsert in nodeModifyTable.c): check the arbiter index, insert the
 * row and its index entries under a speculative token, and if a
 * concurrent insert of the same key won meanwhile, kill ours and check
 * again (which waits for that one to end).  False if the key exists.
 *
 * For a caller that has just looked the key up and not found it: the
 * check that ON CONFLICT makes before its first insertion is only a
 * shortcut for the case of a conflict (the insertion finds any
 * conflicting entry, committed or not, by itself), and is left out.
 */
static bool
insert_unless_exists(QueueTables *tables, TableInserter *ins, Oid arbiter)
{
	EState	   *estate = tables->estate;
	Relation	rel = ins->info->ri_RelationDesc;
	List	   *arbiters = list_make1_oid(arbiter);
	ItemPointerData conflict;

	if (rel->rd_att->constr)
		ExecConstraints(ins->info, ins->slot, estate);
	for (bool check = false;; check = true)
	{
		uint32		token;
		bool		lost = false;

		if (check && !ExecCheckIndexConstraints(ins->info, ins->slot, estate, &conflict, arbiters))
			return false;
		token = SpeculativeInsertionLockAcquire(GetCurrentTransactionId());
		table_tuple_insert_speculative(rel, ins->slot, estate->es_output_cid, 0, NULL, token);
		list_free(ExecInsertIndexTuples(ins->info, ins->slot, estate, false, true, &lost, arbiters));
		table_tuple_complete_speculative(rel, ins->slot, token, !lost);
		SpeculativeInsertionLockRelease(GetCurrentTransactionId());
		if (!lost)
			return true;
	}
}

/* The start of a head operation: not before now (the transaction's start) */
static TimestampTz
head_run_at(const OpInput *op)
{
	TimestampTz now = GetCurrentTransactionStartTimestamp();

	return op->has_not_before && op->not_before > now ? op->not_before : now;
}

bool
queue_create_subject(QueueTables *tables, const OpInput *op, int64 seq, LockedLane *lane)
{
	EState	   *estate = tables->estate;
	TableInserter *subject = inserter(tables, QUEUE_SUBJECT, tables->subject, true);
	TableInserter *new_lane;
	TupleTableSlot *slot;
	const AttrNumber *col = tables->columns.subject;
	bool		isnull;

	/* triggers on xprov.subject (not xprov's own): the caller goes through SQL */
	Assert(subject->info->ri_TrigDesc == NULL);

	slot = begin_row(tables, subject);
	set_column(slot, col[SUBJECT_TENANT_ID], UUIDPGetDatum(&op->tenant_id), false);
	set_column(slot, col[SUBJECT_CONNECTOR_ID], UUIDPGetDatum(&op->connector_id), false);
	set_column(slot, col[SUBJECT_OBJECT_CLASS], CStringGetTextDatum(op->object_class), false);
	set_column(slot, col[SUBJECT_SUBJECT], CStringGetTextDatum(op->subject), false);
	set_column(slot, col[SUBJECT_CLAIMANT], CharGetDatum(op->claimant), false);
	ExecStoreVirtualTuple(slot);
	estate->es_output_cid = GetCurrentCommandId(true);
	/* the caller has just looked for the subject in a new snapshot */
	if (!insert_unless_exists(tables, subject, tables->subject_key_id))
	{
		ResetPerTupleExprContext(estate);
		return false;
	}

	lane->lane_id = DatumGetInt64(slot_getattr(slot, tables->columns.subject_lane_id, &isnull));
	lane->state = 'r';
	lane->claimant = op->claimant;
	lane->priority = op->priority;
	lane->run_at = head_run_at(op);

	new_lane = inserter(tables, QUEUE_LANE, tables->lane, false);
	col = tables->columns.lane;
	slot = begin_row(tables, new_lane);
	set_column(slot, col[LANE_LANE_ID], Int64GetDatum(lane->lane_id), false);
	set_column(slot, col[LANE_TENANT_ID], UUIDPGetDatum(&op->tenant_id), false);
	set_column(slot, col[LANE_CONNECTOR_ID], UUIDPGetDatum(&op->connector_id), false);
	set_column(slot, col[LANE_CLAIMANT], CharGetDatum(op->claimant), false);
	set_column(slot, col[LANE_STATE], CharGetDatum('r'), false);
	set_column(slot, col[LANE_NEXT_SEQ], Int64GetDatum(seq), false);
	set_column(slot, col[LANE_PRIORITY], Int32GetDatum(op->priority), false);
	set_column(slot, col[LANE_RUN_AT], TimestampTzGetDatum(lane->run_at), false);
	ExecStoreVirtualTuple(slot);
	ExecSimpleRelationInsert(new_lane->info, estate, slot);
	lane->tid = slot->tts_tid;
	ResetPerTupleExprContext(estate);
	return true;
}

void
queue_raise_wake_skipped(int64 lane_id)
{
	ereport(ERROR,
			errcode(ERRCODE_TRIGGERED_ACTION_EXCEPTION),
			errmsg("a trigger on xprov.lane skipped the update that readies lane " INT64_FORMAT,
				   lane_id),
			errdetail("An idle lane becomes ready when an operation is enqueued for its subject; left idle, it would never run the operation."),
			errhint("Make the BEFORE UPDATE row triggers on xprov.lane return NEW."));
}

/* For triggers on UPDATE OF a column: what a wake sets */
static void
note_updated_columns(RangeTblEntry *rte, const AttrNumber *col)
{
	static const int set[] = {LANE_STATE, LANE_NEXT_SEQ, LANE_PRIORITY, LANE_RUN_AT};

	if (rte->updatedCols != NULL)
		return;
	for (int i = 0; i < lengthof(set); i++)
		rte->updatedCols = bms_add_member(rte->updatedCols,
										  col[set[i]] - FirstLowInvalidHeapAttributeNumber);
}

void
queue_wake_lane(QueueTables *tables, LockedLane *lane, const OpInput *op, int64 seq)
{
	EState	   *estate = tables->estate;
	TableInserter *updater = inserter(tables, QUEUE_LANE, tables->lane, false);
	TupleTableSlot *current = tables->lane_slot;
	TupleTableSlot *slot = updater->slot;
	const AttrNumber *col = tables->columns.lane;
	int			natts = slot->tts_tupleDescriptor->natts;
	EPQState	epq;
	bool		isnull;

	Assert(lane->state == 'i');
	/* the version we have locked is the latest: nobody else can update it */
	if (!table_tuple_fetch_row_version(tables->lane, &lane->tid, SnapshotAny, current))
		elog(ERROR, "xprov: locked lane " INT64_FORMAT " not found", lane->lane_id);
	slot_getallattrs(current);
	ExecClearTuple(slot);
	memcpy(slot->tts_values, current->tts_values, sizeof(Datum) * natts);
	memcpy(slot->tts_isnull, current->tts_isnull, sizeof(bool) * natts);
	set_column(slot, col[LANE_STATE], CharGetDatum('r'), false);
	set_column(slot, col[LANE_NEXT_SEQ], Int64GetDatum(seq), false);
	set_column(slot, col[LANE_PRIORITY], Int32GetDatum(op->priority), false);
	set_column(slot, col[LANE_RUN_AT], TimestampTzGetDatum(head_run_at(op)), false);
	ExecStoreVirtualTuple(slot);
	/* copied out of the buffer, whose page the update writes */
	ExecMaterializeSlot(slot);
	ItemPointerSetInvalid(&slot->tts_tid);

	note_updated_columns(exec_rt_fetch(updater->info->ri_RangeTableIndex, estate), col);
	EvalPlanQualInit(&epq, estate, NULL, NIL, -1);
	estate->es_output_cid = GetCurrentCommandId(true);
	ExecSimpleRelationUpdate(updater->info, estate, &epq, current, slot);
	EvalPlanQualEnd(&epq);
	if (!ItemPointerIsValid(&slot->tts_tid))
		queue_raise_wake_skipped(lane->lane_id);

	/* as written: a BEFORE UPDATE trigger may have had its say */
	lane->tid = slot->tts_tid;
	lane->state = DatumGetChar(slot_getattr(slot, col[LANE_STATE], &isnull));
	lane->priority = DatumGetInt32(slot_getattr(slot, col[LANE_PRIORITY], &isnull));
	lane->run_at = DatumGetTimestampTz(slot_getattr(slot, col[LANE_RUN_AT], &isnull));
	ExecClearTuple(current);
	ResetPerTupleExprContext(estate);
}

/*
 * Whether queue_wake_lane() may be used: no stored generated columns on
 * xprov.lane (whose recomputation on UPDATE follows the columns set).
 */
bool
queue_can_wake_lanes(QueueTables *tables)
{
	TupleConstr *constr = RelationGetDescr(tables->lane)->constr;

	return !(constr && constr->has_generated_stored);
}

/*
 * Whether queue_create_subject() may be used: nothing on xprov.subject that
 * its insert does not do (triggers, stored generated columns).
 */
bool
queue_can_create_subjects(QueueTables *tables)
{
	TupleConstr *constr = RelationGetDescr(tables->subject)->constr;

	return tables->subject->trigdesc == NULL && !(constr && constr->has_generated_stored);
}
