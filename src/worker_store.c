/*-------------------------------------------------------------------------
 *
 * worker_store.c
 *	  The background worker's statements: its epoch, claims, and recording
 *	  outcomes (see worker_store.h).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "common/jsonapi.h"
#include "access/xact.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"

#include "claim_cursor.h"
#include "connector.h"
#include "dequeue.h"
#include "dispatch.h"
#include "hook_cache.h"
#include "hook_history.h"
#include "hook_run.h"
#include "outcome.h"
#include "sandbox.h"
#include "spi_util.h"
#include "worker_store.h"
#include "xprov.h"

/*
 * Leases held by an earlier incarnation of this slot (and, for slot 0, of
 * slots beyond xprov.workers) are returned at start-up.  The attempt stays
 * counted: whether it reached the target is unknown, and an operation that
 * kills its worker every time must still reach the dead-letter state.
 */
static SavedPlan release_dead_epochs = {
	.sql =
	"WITH x AS ("
	"  SELECT l.lane_id, l.ctid AS lane_ctid, l.next_seq, l.attempts, l.attempt_base, "
	"         l.leased_at, l.leased_by "
	"    FROM xprov.lane l "
	"   WHERE l.state = 'l' AND l.claimant = 'w' AND l.leased_by IS NOT NULL "
	"     AND l.leased_by <> $1 "
	"     AND (l.leased_by % $4 = $2 OR ($2 = 0 AND l.leased_by % $4 >= $5)) "
	"   ORDER BY l.lane_id "
	"     FOR NO KEY UPDATE"
	"), history AS ("
	"  INSERT INTO xprov.op_failure (op_id, attempt, started_at, outcome, error) "
	"  SELECT o.id, x.attempt_base + x.attempts, x.leased_at, "
	"         CASE WHEN x.attempts >= $3 THEN 'd' ELSE 'r' END, "
	"         'worker ' || (x.leased_by % $4) || ' restarted during the attempt' "
	"    FROM x JOIN xprov.op o ON o.lane_id = x.lane_id AND o.seq = x.next_seq"
	") "
	"UPDATE xprov.lane l "
	"   SET state = CASE WHEN x.attempts >= $3 THEN 'd' ELSE 'r' END, "
	"       run_at = now(), leased_at = NULL, lease_expires = NULL, leased_by = NULL, "
	"       last_error = 'worker ' || (x.leased_by % $4) || ' restarted during the attempt' "
	"  FROM x WHERE l.ctid = x.lane_ctid "
	"RETURNING l.state, l.claimant, -(l.priority::bigint), l.run_at, l.lane_id",
	.nargs = 5,
	.argtypes = {INT8OID, INT4OID, INT4OID, INT4OID, INT4OID},
};

static SavedPlan load_connectors = {
	.sql =
	"SELECT c.id, c.name, c.kind, c.base_url, xprov._connector_config(c.id, c.config)::text, c.enabled "
	"  FROM xprov.connector c WHERE c.id = ANY ($1)",
	.nargs = 1,
	.argtypes = {UUIDARRAYOID},
};

static SavedPlan linked_accounts = {
	.sql =
	"SELECT s.lane_id, s.target_uid FROM xprov.shadow s "
	" WHERE s.lane_id = ANY ($1) AND s.dead_at IS NULL AND s.target_uid IS NOT NULL",
	.nargs = 1,
	.argtypes = {INT8ARRAYOID},
};

/* The same, with the account as hooks see it (ctx.shadow). */
static SavedPlan hook_accounts = {
	.sql =
	"SELECT s.lane_id, s.target_uid, "
	"       jsonb_build_object('target_uid', s.target_uid, "
	"                          'attributes', jsonb_strip_nulls(s.expected))::text "
	"  FROM xprov.shadow s "
	" WHERE s.lane_id = ANY ($1) AND s.dead_at IS NULL AND s.target_uid IS NOT NULL",
	.nargs = 1,
	.argtypes = {INT8ARRAYOID},
};

/*
 * The shadow statements reach shadows only by key (= ANY, or per-row
 * subqueries on the unique keys): as joins, a plan made while the table was
 * small scans it whole for every batch, a million rows later too.
 *
 * A create about to be sent: its subject's shadow is conceived (a new one
 * unless one is alive; a proposed one, whose case was answered, moves on).
 * The insert yields to any live shadow of the subject or of its owner.
 */
static SavedPlan conceive_shadows = {
	.sql =
	"WITH x AS ("
	"  SELECT o.* FROM unnest($1::uuid[]) AS i(id) "
	"    JOIN LATERAL (SELECT * FROM xprov.op o WHERE o.id = i.id) o ON true"
	"), woken AS ("
	"  UPDATE xprov.shadow s SET lifecycle = 'conceived', updated_at = now() "
	"   WHERE s.lane_id = ANY (ARRAY(SELECT x.lane_id FROM x)) "
	"     AND s.dead_at IS NULL AND s.lifecycle = 'proposed'"
	") "
	"INSERT INTO xprov.shadow (tenant_id, connector_id, object_class, lane_id, identity_id, "
	"                          lifecycle, situation, exclusive, expected) "
	"SELECT x.tenant_id, x.connector_id, x.object_class, x.lane_id, x.identity_id, 'conceived', "
	"       CASE WHEN x.identity_id IS NOT NULL THEN 'linked' END, "
	"       (c.config -> 'multiple_accounts') IS DISTINCT FROM 'true'::jsonb, x.attributes "
	"  FROM x JOIN xprov.connector c ON c.id = x.connector_id "
	" WHERE (SELECT s.id FROM xprov.shadow s WHERE s.lane_id = x.lane_id AND s.dead_at IS NULL) IS NULL "
	"ON CONFLICT DO NOTHING",
	.nargs = 1,
	.argtypes = {UUIDARRAYOID},
};

/* A delete about to be sent: its account is being reaped. */
static SavedPlan reap_shadows = {
	.sql =
	"UPDATE xprov.shadow s SET lifecycle = 'reaping', updated_at = now() "
	" WHERE s.lane_id = ANY ($1) AND s.dead_at IS NULL AND s.lifecycle = 'live'",
	.nargs = 1,
	.argtypes = {INT8ARRAYOID},
};

/* The account is gone from the target (deleted, or found missing). */
static SavedPlan bury_shadows = {
	.sql =
	"UPDATE xprov.shadow s "
	"   SET lifecycle = 'tombstone', situation = 'deleted', dead_at = now(), updated_at = now() "
	" WHERE s.lane_id = ANY (ARRAY(SELECT o.lane_id FROM xprov.op o WHERE o.id = ANY ($1))) "
	"   AND s.dead_at IS NULL",
	.nargs = 1,
	.argtypes = {UUIDARRAYOID},
};

/*
 * A create that will not run again (dead-lettered, skipped) made no
 * account that xprov knows of: its conceived shadow dies.  A retry of the
 * dead letter conceives a new one and correlates first as always.
 */
static SavedPlan abort_conceived = {
	.sql =
	"UPDATE xprov.shadow s SET lifecycle = 'tombstone', dead_at = now(), updated_at = now() "
	" WHERE s.lane_id = (SELECT o.lane_id FROM xprov.op o WHERE o.id = $1) "
	"   AND s.dead_at IS NULL AND s.lifecycle = 'conceived' AND s.target_uid IS NULL",
	.nargs = 1,
	.argtypes = {UUIDOID},
};

/*
 * Completed operations: the subject's shadow is live with the target's id,
 * the attributes provisioned merged into what it expected (a JSON null
 * removes one) and the account as the target answered.  An account alive on
 * another shadow, or an owner with another account here, is left out and
 * returned for _shadow_conflict().
 *
 * The UPDATE keeps a copy of each joined row of "free" (with the target's
 * answer in it) for a recheck after a concurrent update; filtering out the
 * rows without a shadow first spares that copy for every new account.
 */
static SavedPlan record_live_shadows = {
	.sql =
	"WITH x AS ("
	"  SELECT i.id, o.lane_id, o.tenant_id, o.connector_id, o.object_class, o.identity_id, i.uid, "
	"         coalesce(i.sent::jsonb, o.attributes) AS attrs, "
	"         CASE WHEN jsonb_typeof(i.observed) = 'object' THEN i.observed - 'linked' END AS observed, "
	"         (SELECT s.id FROM xprov.shadow s "
	"           WHERE s.lane_id = o.lane_id AND s.dead_at IS NULL) AS shadow_id, "
	"         (SELECT t.id FROM xprov.shadow t "
	"           WHERE t.connector_id = o.connector_id AND t.object_class = o.object_class "
	"             AND t.target_uid = i.uid AND t.dead_at IS NULL) AS holder_id "
	"    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[]) AS i(id, uid, sent, observed) "
	"    JOIN LATERAL (SELECT * FROM xprov.op o WHERE o.id = i.id) o ON true "
	"   WHERE i.uid IS NOT NULL"
	"), free AS ("
	"  SELECT x.* FROM x WHERE x.holder_id IS NULL OR x.holder_id = x.shadow_id"
	"), updated AS ("
	"  UPDATE xprov.shadow s "
	"     SET target_uid = f.uid, lifecycle = 'live', "
	"         identity_id = coalesce(f.identity_id, s.identity_id), "
	"         situation = CASE WHEN coalesce(f.identity_id, s.identity_id) IS NOT NULL THEN 'linked' "
	"                          ELSE s.situation END, "
	"         expected = jsonb_strip_nulls(xprov._merge_expected(s.expected, f.attrs)), "
	"         observed = coalesce(f.observed, s.observed), "
	"         observed_at = CASE WHEN f.observed IS NOT NULL THEN now() ELSE s.observed_at END, "
	"         version = coalesce(f.observed #>> '{meta,version}', s.version), updated_at = now() "
	"    FROM free f WHERE f.shadow_id IS NOT NULL AND s.id = f.shadow_id "
	"  RETURNING f.id"
	"), inserted AS ("
	"  INSERT INTO xprov.shadow (tenant_id, connector_id, object_class, lane_id, identity_id, "
	"                            target_uid, lifecycle, situation, exclusive, expected, observed, "
	"                            observed_at, version) "
	"  SELECT f.tenant_id, f.connector_id, f.object_class, f.lane_id, f.identity_id, f.uid, 'live', "
	"         CASE WHEN f.identity_id IS NOT NULL THEN 'linked' END, "
	"         (c.config -> 'multiple_accounts') IS DISTINCT FROM 'true'::jsonb, "
	"         jsonb_strip_nulls(f.attrs), f.observed, "
	"         CASE WHEN f.observed IS NOT NULL THEN now() END, f.observed #>> '{meta,version}' "
	"    FROM free f JOIN xprov.connector c ON c.id = f.connector_id "
	"   WHERE f.shadow_id IS NULL "
	"  ON CONFLICT DO NOTHING "
	"  RETURNING lane_id"
	") "
	"SELECT x.id, x.uid, x.attrs::text, x.observed::text FROM x "
	" WHERE x.id NOT IN (SELECT id FROM updated) "
	"   AND x.lane_id NOT IN (SELECT lane_id FROM inserted)",
	.nargs = 4,
	.argtypes = {UUIDARRAYOID, TEXTARRAYOID, TEXTARRAYOID, JSONBARRAYOID},
};

static SavedPlan shadow_conflict = {
	.sql = "SELECT xprov._shadow_conflict($1, $2, $3::jsonb, $4::jsonb)",
	.nargs = 4,
	.argtypes = {UUIDOID, TEXTOID, TEXTOID, TEXTOID},
};

/* An after hook's shadow_attributes replace what the shadow expects. */
static SavedPlan replace_expected = {
	.sql =
	"UPDATE xprov.shadow s SET expected = x.attributes::jsonb, updated_at = now() "
	"  FROM (SELECT (SELECT t.id FROM xprov.shadow t "
	"                 WHERE t.lane_id = (SELECT o.lane_id FROM xprov.op o WHERE o.id = i.id) "
	"                   AND t.dead_at IS NULL) AS shadow_id, i.attributes "
	"          FROM unnest($1::uuid[], $2::text[]) AS i(id, attributes)) x "
	" WHERE s.id = x.shadow_id",
	.nargs = 2,
	.argtypes = {UUIDARRAYOID, TEXTARRAYOID},
};

/* The create path's question to the database; see xprov._correlate_create. */
static SavedPlan correlate_create = {
	.sql =
	"SELECT r ->> 'verdict', r ->> 'uid', r -> 'case' "
	"  FROM xprov._correlate_create($1, $2::jsonb, $3, $4::jsonb) AS r",
	.nargs = 4,
	.argtypes = {UUIDOID, TEXTOID, TEXTOID, TEXTOID},
};

/* Run a saved plan over an array of operation ids. */
static void
execute_for_ids(SavedPlan *plan, Datum *ids, int count)
{
	Datum		arg;

	if (count == 0)
		return;
	arg = spi_array_arg(ids, NULL, count, UUIDOID);
	saved_plan_execute(plan, &arg, NULL, false, 0);
}

/* Kind of each connector seen, so that noop operations need no parsing. */
typedef struct KindEntry
{
	pg_uuid_t	id;
	ConnectorKind kind;
} KindEntry;

static HTAB *kinds = NULL;

int64
store_begin_epoch(int slot)
{
	int64		epoch;
	int64		tag;
	Datum		args[5];

	SPI_execute("SELECT nextval('xprov.worker_epoch')", false, 1);
	epoch = spi_get_int64(0, 1);
	tag = epoch * WORKER_TAG_SLOTS + slot;

	args[0] = Int64GetDatum(tag);
	args[1] = Int32GetDatum(slot);
	args[2] = Int32GetDatum(xprov_max_attempts);
	args[3] = Int32GetDatum(WORKER_TAG_SLOTS);
	args[4] = Int32GetDatum(xprov_workers);
	saved_plan_execute(&release_dead_epochs, args, NULL, false, 0);
	if (SPI_processed > 0)
		ereport(LOG,
				errmsg("xprov worker %d: returned %llu operations leased by an earlier run",
					   slot, (unsigned long long) SPI_processed));
	spi_note_ready_lanes(1);
	return tag;
}

static ConnectorKind
kind_from_text(const char *kind)
{
	if (strcmp(kind, "noop") == 0)
		return CONNECTOR_NOOP;
	if (strcmp(kind, "scim2") == 0)
		return CONNECTOR_SCIM2;
	if (strcmp(kind, "rest") == 0)
		return CONNECTOR_REST;
	return CONNECTOR_EXTERNAL;
}

static KindEntry *
kind_entry(const pg_uuid_t *id, bool create)
{
	if (kinds == NULL)
	{
		HASHCTL		ctl = {0};

		ctl.keysize = sizeof(pg_uuid_t);
		ctl.entrysize = sizeof(KindEntry);
		kinds = hash_create("xprov connector kinds", 64, &ctl, HASH_ELEM | HASH_BLOBS);
	}
	return hash_search(kinds, id, create ? HASH_ENTER : HASH_FIND, NULL);
}

/* Read the settings of the claimed connectors the worker has not got fresh. */
static void
refresh_connectors(const pg_uuid_t *ids, int count, TimestampTz now)
{
	Datum	   *stale = palloc(sizeof(Datum) * count);
	int			nstale = 0;
	Datum		arg;

	for (int i = 0; i < count; i++)
	{
		bool		seen = false;

		if (!dispatch_connector_stale(&ids[i], now) && kind_entry(&ids[i], false))
			continue;
		for (int j = 0; j < nstale && !seen; j++)
			seen = memcmp(DatumGetUUIDP(stale[j]), &ids[i], UUID_LEN) == 0;
		if (!seen)
			stale[nstale++] = UUIDPGetDatum(&ids[i]);
	}
	if (nstale == 0)
		return;

	arg = spi_array_arg(stale, NULL, nstale, UUIDOID);
	saved_plan_execute(&load_connectors, &arg, NULL, true, 0);
	for (uint64 row = 0; row < SPI_processed; row++)
	{
		HeapTuple	tuple = SPI_tuptable->vals[row];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		Datum		value;
		pg_uuid_t	id;
		char	   *kind = SPI_getvalue(tuple, desc, 3);
		KindEntry  *entry;

		spi_get_datum(row, 1, &value);
		memcpy(&id, DatumGetUUIDP(value), UUID_LEN);
		entry = kind_entry(&id, true);
		entry->kind = kind_from_text(kind);
		if (entry->kind == CONNECTOR_SCIM2 || entry->kind == CONNECTOR_REST)
		{
			char	   *error = NULL;
			Connector  *connector;

			connector = connector_parse(TopMemoryContext, &id,
										SPI_getvalue(tuple, desc, 2), kind,
										SPI_getvalue(tuple, desc, 4),
										SPI_getvalue(tuple, desc, 5),
										spi_get_datum(row, 6, &value) && DatumGetBool(value),
										&error);
			dispatch_connector_loaded(&id, connector, error, now);
		}
		else
			dispatch_connector_loaded(&id, NULL, "not an HTTP connector", now);
	}
}

static OpType
op_type_from_text(const char *type)
{
	if (strcmp(type, "create") == 0)
		return OP_CREATE;
	if (strcmp(type, "update") == 0)
		return OP_UPDATE;
	if (strcmp(type, "delete") == 0)
		return OP_DELETE;
	if (strcmp(type, "enable") == 0)
		return OP_ENABLE;
	return OP_DISABLE;
}

/*
 * A column's text, NULL for NULL.  The types a claim returns are converted
 * directly: SPI_getvalue() looks the type's output function up in the
 * catalog cache for every value.
 */
static char *
column_text(HeapTuple tuple, TupleDesc desc, int column)
{
	bool		isnull;
	Datum		value = SPI_getbinval(tuple, desc, column, &isnull);
	Jsonb	   *jsonb;
	char	   *uuid;

	if (isnull)
		return NULL;
	switch (TupleDescAttr(desc, column - 1)->atttypid)
	{
		case TEXTOID:
			return text_to_cstring(DatumGetTextPP(value));
		case UUIDOID:
			uuid = palloc(UUID_TEXT_LEN);
			uuid_to_text(uuid, DatumGetUUIDP(value));
			return uuid;
		case JSONBOID:
			jsonb = DatumGetJsonbP(value);
			return JsonbToCString(NULL, &jsonb->root, VARSIZE(jsonb));
		default:
			return SPI_getvalue(tuple, desc, column);
	}
}

/*
 * A claimed row as a WorkOp in a context of its own.  An operation with
 * hooks gets a larger one: its hook runs, their answers and their history
 * would otherwise take a malloc each (recycled contexts keep their first
 * block).
 */
static WorkOp *
make_work_op(SPITupleTable *rows, uint64 row, MemoryContext ops_cxt, bool has_hooks)
{
	MemoryContext cxt = has_hooks ?
		AllocSetContextCreate(ops_cxt, "xprov operation", ALLOCSET_DEFAULT_SIZES) :
		AllocSetContextCreate(ops_cxt, "xprov operation", ALLOCSET_SMALL_SIZES);
	MemoryContext old = MemoryContextSwitchTo(cxt);
	HeapTuple	tuple = rows->vals[row];
	TupleDesc	desc = rows->tupdesc;
	WorkOp	   *op = palloc0(sizeof(WorkOp));
	bool		isnull;
	Datum		value;

	/* the columns' texts are allocated here, in the op's context */
	op->cxt = cxt;
	dequeue_read_lease(rows, row, &op->lease);
	op->id = op->lease.id;
	uuid_to_text(op->id_text, &op->id);
	op->connector_id = op->lease.connector_id;
	op->tenant_id = op->lease.tenant_id;
	op->lane_id = op->lease.lane_id;
	op->identity_id = column_text(tuple, desc, QOP_IDENTITY_ID);
	op->target_uid = column_text(tuple, desc, QOP_TARGET_UID);
	op->type = op_type_from_text(column_text(tuple, desc, QOP_OPERATION_TYPE));
	op->object_class = column_text(tuple, desc, QOP_OBJECT_CLASS);
	if (has_hooks && sandbox_takes_jsonb())
	{
		Jsonb	   *attributes = DatumGetJsonbPCopy(SPI_getbinval(tuple, desc, QOP_ATTRIBUTES, &isnull));

		op->attributes_jsonb = &attributes->root;
		op->attributes_jsonb_size = VARSIZE(attributes);
	}
	else
		op->attributes = column_text(tuple, desc, QOP_ATTRIBUTES);
	value = SPI_getbinval(tuple, desc, QOP_RETRY_COUNT, &isnull);
	op->attempt = (isnull ? 0 : DatumGetInt32(value)) + 1;
	MemoryContextSwitchTo(old);
	return op;
}

/*
 * Operations that name no target_uid address the account linked before;
 * operations with hooks also show it to them (ctx.shadow).
 */
static void
fill_linked_accounts(WorkOp *ops)
{
	Datum	   *lanes;
	int			count = 0;
	bool		for_hooks = false;
	Datum		arg;

	for (WorkOp *op = ops; op; op = op->next)
		count++;
	lanes = palloc(sizeof(Datum) * Max(count, 1));
	count = 0;
	for (WorkOp *op = ops; op; op = op->next)
	{
		/* noop targets have no accounts: nothing to address or show */
		if (op->noop)
			continue;
		if (op->target_uid == NULL || op->has_hooks)
		{
			lanes[count++] = Int64GetDatum(op->lane_id);
			for_hooks |= op->has_hooks;
		}
	}
	if (count == 0)
		return;
	/* not read-only: the same transaction may just have linked the account */
	arg = spi_array_arg(lanes, NULL, count, INT8OID);
	saved_plan_execute(for_hooks ? &hook_accounts : &linked_accounts, &arg, NULL, false, 0);
	for (uint64 row = 0; row < SPI_processed; row++)
	{
		int64		lane_id = spi_get_int64(row, 1);
		HeapTuple	tuple = SPI_tuptable->vals[row];
		TupleDesc	desc = SPI_tuptable->tupdesc;

		for (WorkOp *op = ops; op; op = op->next)
		{
			if (op->lane_id != lane_id)
				continue;
			if (op->target_uid == NULL)
				op->target_uid = MemoryContextStrdup(op->cxt, SPI_getvalue(tuple, desc, 2));
			if (op->has_hooks)
				op->shadow = MemoryContextStrdup(op->cxt, SPI_getvalue(tuple, desc, 3));
		}
	}
}

/*
 * Creates about to be sent conceive their shadows, deletes reap theirs, in
 * the claim's transaction: what is in flight is visible while it is.
 */
static void
mark_claimed_shadows(WorkOp *ops)
{
	int			count = 0;
	Datum	   *creates;
	Datum	   *deletes;
	int			ncreates = 0;
	int			ndeletes = 0;

	for (WorkOp *op = ops; op; op = op->next)
		count++;
	creates = palloc(sizeof(Datum) * Max(count, 1));
	deletes = palloc(sizeof(Datum) * Max(count, 1));
	for (WorkOp *op = ops; op; op = op->next)
	{
		if (op->noop)
			continue;
		if (op->type == OP_CREATE)
			creates[ncreates++] = UUIDPGetDatum(&op->id);
		else if (op->type == OP_DELETE)
			deletes[ndeletes++] = Int64GetDatum(op->lane_id);
	}
	execute_for_ids(&conceive_shadows, creates, ncreates);
	if (ndeletes > 0)
	{
		Datum		arg = spi_array_arg(deletes, NULL, ndeletes, INT8OID);

		saved_plan_execute(&reap_shadows, &arg, NULL, false, 0);
	}
}

/* Whether a claimed row has hooks to run (no text is made when none exist). */
static bool
row_has_hooks(SPITupleTable *rows, uint64 row, const pg_uuid_t *connector_id)
{
	bool		isnull;
	pg_uuid_t	tenant_id;
	Datum		object_class;
	text	   *class_text;

	if (hook_cache_empty())
		return false;
	memcpy(&tenant_id, DatumGetUUIDP(SPI_getbinval(rows->vals[row], rows->tupdesc, QOP_TENANT_ID, &isnull)),
		   UUID_LEN);
	object_class = SPI_getbinval(rows->vals[row], rows->tupdesc, QOP_OBJECT_CLASS, &isnull);
	if (isnull)
		return hook_cache_any(&tenant_id, connector_id, NULL, 0);
	class_text = DatumGetTextPP(object_class);
	return hook_cache_any(&tenant_id, connector_id, VARDATA_ANY(class_text),
						  VARSIZE_ANY_EXHDR(class_text));
}

void
store_claim(int max, int64 tag, Datum paused_connectors, MemoryContext batch_cxt,
			MemoryContext ops_cxt, ClaimResult *result)
{
	TimestampTz now = GetCurrentTimestamp();
	Interval	lease = {0};
	SPITupleTable *rows;
	uint64		count;
	pg_uuid_t  *connector_ids;
	WorkOp	   *tail = NULL;

	memset(result, 0, sizeof(ClaimResult));
	lease.time = (int64) xprov_worker_lease_ms * 1000;
	dequeue_reclaim_expired(CLAIMANT_WORKER, now);
	count = dequeue_claim(CLAIMANT_WORKER, max, &lease, now, tag, paused_connectors);
	if (count == 0)
		return;
	rows = SPI_tuptable;		/* stays valid until SPI_finish */

	connector_ids = palloc(sizeof(pg_uuid_t) * count);
	for (uint64 row = 0; row < count; row++)
	{
		bool		isnull;

		memcpy(&connector_ids[row],
			   DatumGetUUIDP(SPI_getbinval(rows->vals[row], rows->tupdesc, QOP_CONNECTOR_ID, &isnull)),
			   UUID_LEN);
	}
	refresh_connectors(connector_ids, (int) count, now);
	hook_cache_refresh();

	result->claimed = (int) count;
	result->noop_leases = MemoryContextAlloc(batch_cxt, sizeof(LeaseRef) * count);
	for (uint64 row = 0; row < count; row++)
	{
		KindEntry  *entry = kind_entry(&connector_ids[row], false);
		bool		noop = entry != NULL && entry->kind == CONNECTOR_NOOP;
		bool		has_hooks = row_has_hooks(rows, row, &connector_ids[row]);

		if (noop && !has_hooks)
		{
			MemoryContext old = MemoryContextSwitchTo(batch_cxt);

			dequeue_read_lease(rows, row, &result->noop_leases[result->nnoop++]);
			MemoryContextSwitchTo(old);
		}
		else
		{
			WorkOp	   *op = make_work_op(rows, row, ops_cxt, has_hooks);

			op->noop = noop;
			op->has_hooks = has_hooks;
			if (tail)
				tail->next = op;
			else
				result->http_ops = op;
			tail = op;
		}
	}
	fill_linked_accounts(result->http_ops);
	mark_claimed_shadows(result->http_ops);
}

/* Ask the database about one operation; the answer goes into the WorkOp. */
static void
ask_correlation(WorkOp *op)
{
	Datum		args[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};
	bool		checking = op->awaiting == AWAIT_LINK_CHECK;
	char	   *verdict;
	char	   *text;

	args[0] = UUIDPGetDatum(&op->id);
	args[1] = CStringGetTextDatum(work_op_attributes(op));
	nulls[2] = nulls[3] = 'n';
	if (checking)
	{
		args[2] = CStringGetTextDatum(op->check_uid);
		nulls[2] = ' ';
		if (op->check_resource)
		{
			args[3] = CStringGetTextDatum(op->check_resource);
			nulls[3] = ' ';
		}
	}
	saved_plan_execute(&correlate_create, args, nulls, false, 1);
	verdict = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	if (verdict == NULL)
		elog(ERROR, "xprov: _correlate_create gave no verdict");
	if (strcmp(verdict, "link") == 0)
	{
		op->verdict = VERDICT_LINK;
		text = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
		op->link_uid = text ? MemoryContextStrdup(op->cxt, text) : NULL;
	}
	else if (strcmp(verdict, "park") == 0)
	{
		op->verdict = VERDICT_PARK;
		text = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3);
		op->outcome.park_details = text ? MemoryContextStrdup(op->cxt, text) : NULL;
	}
	else if (strcmp(verdict, "rejected") == 0)
		op->verdict = VERDICT_REJECTED;
	else
		op->verdict = VERDICT_CREATE;
}

/*
 * Answer the operations waiting for the database (see AwaitDb).  Each
 * question runs in a subtransaction: one that fails (a rule gone bad, say)
 * becomes that operation's transient failure and holds back no other.
 */
void
store_correlate(WorkOp *ops)
{
	for (WorkOp *op = ops; op; op = op->next)
	{
		MemoryContext old = CurrentMemoryContext;
		ResourceOwner owner = CurrentResourceOwner;

		if (op->awaiting == AWAIT_NONE || op->verdict != VERDICT_NONE ||
			op->outcome.kind != OUTCOME_NONE)
			continue;
		BeginInternalSubTransaction(NULL);
		MemoryContextSwitchTo(old);
		PG_TRY();
		{
			ask_correlation(op);
			ReleaseCurrentSubTransaction();
			MemoryContextSwitchTo(old);
			CurrentResourceOwner = owner;
		}
		PG_CATCH();
		{
			ErrorData  *edata;

			MemoryContextSwitchTo(old);
			edata = CopyErrorData();
			FlushErrorState();
			RollbackAndReleaseCurrentSubTransaction();
			MemoryContextSwitchTo(old);
			CurrentResourceOwner = owner;
			op->verdict = VERDICT_NONE;
			op->outcome.kind = OUTCOME_RETRY;
			op->outcome.retry_after_ms = -1;
			op->outcome.error = MemoryContextStrdup(op->cxt,
													psprintf("correlation failed: %s", edata->message));
			FreeErrorData(edata);
		}
		PG_END_TRY();
	}
}

/* A result is kept only if it is JSON that jsonb accepts; never an error. */
static Jsonb *
result_jsonb(const char *text)
{
	JsonLexContext *lex;

	if (text == NULL)
		return NULL;
	lex = makeJsonLexContextCstringLen((char *) text, strlen(text), GetDatabaseEncoding(), true);
	if (pg_parse_json(lex, &nullSemAction) != JSON_SUCCESS)
		return NULL;
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(text)));
}

/* What the set-based recording left out: one conflict at a time. */
static void
record_shadow_conflicts(void)
{
	SPITupleTable *rows = SPI_tuptable;
	uint64		count = SPI_processed;

	for (uint64 row = 0; row < count; row++)
	{
		Datum		args[4];
		char		nulls[4] = {' ', ' ', ' ', ' '};
		bool		isnull;
		char	   *what;

		for (int col = 0; col < 4; col++)
		{
			args[col] = SPI_getbinval(rows->vals[row], rows->tupdesc, col + 1, &isnull);
			nulls[col] = isnull ? 'n' : ' ';
		}
		saved_plan_execute(&shadow_conflict, args, nulls, false, 1);
		what = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
		if (strcmp(what, "collision") == 0)
			ereport(LOG,
					errmsg("xprov worker: operation %s completed on account %s, which another shadow holds; both are marked collision",
						   SPI_getvalue(rows->vals[row], rows->tupdesc, 1),
						   SPI_getvalue(rows->vals[row], rows->tupdesc, 2)));
	}
}

/*
 * The shadows of completed operations: live, re-linked, or buried.  results
 * are parallel to ops (only the completed ones, in order), as recorded.
 */
/* A scim2 enable or disable: it sets the account's "active" and nothing else. */
static bool
sets_scim_active(const WorkOp *op)
{
	return (op->type == OP_ENABLE || op->type == OP_DISABLE) &&
		op->connector != NULL && op->connector->kind == CONNECTOR_SCIM2;
}

static void
record_shadows(WorkOp *ops, Jsonb **op_results)
{
	int			capacity = 0;
	Datum	   *live_ids;
	Datum	   *live_uids;
	Datum	   *sent;
	bool	   *sent_nulls;
	Datum	   *observed;
	bool	   *observed_nulls;
	Datum	   *buried_ids;
	Datum	   *replaced_ids;
	Datum	   *replaced_attributes;
	int			nlive = 0;
	int			nburied = 0;
	int			nreplaced = 0;
	int			completed = 0;

	for (WorkOp *op = ops; op; op = op->next)
		capacity++;
	capacity = Max(capacity, 1);
	live_ids = palloc(sizeof(Datum) * capacity);
	live_uids = palloc(sizeof(Datum) * capacity);
	sent = palloc0(sizeof(Datum) * capacity);
	sent_nulls = palloc0(sizeof(bool) * capacity);
	observed = palloc0(sizeof(Datum) * capacity);
	observed_nulls = palloc0(sizeof(bool) * capacity);
	buried_ids = palloc(sizeof(Datum) * capacity);
	replaced_ids = palloc(sizeof(Datum) * capacity);
	replaced_attributes = palloc(sizeof(Datum) * capacity);

	for (WorkOp *op = ops; op; op = op->next)
	{
		const char *uid = op->outcome.target_uid ? op->outcome.target_uid : op->target_uid;
		Jsonb	   *result;

		if (op->outcome.kind != OUTCOME_COMPLETED)
			continue;
		result = op_results[completed++];
		/* noop targets have no accounts */
		if (op->noop)
			continue;
		if (op->outcome.unlinked)
		{
			buried_ids[nburied++] = UUIDPGetDatum(&op->id);
			continue;
		}
		if (uid == NULL)
			continue;
		live_ids[nlive] = UUIDPGetDatum(&op->id);
		live_uids[nlive] = CStringGetTextDatum(uid);
		sent_nulls[nlive] = !op->attributes_replaced;
		if (op->attributes_replaced)
			sent[nlive] = CStringGetTextDatum(op->attributes);
		if (sets_scim_active(op))
		{
			/* what the account now is, for reconciliation to compare */
			sent_nulls[nlive] = false;
			sent[nlive] = CStringGetTextDatum(op->type == OP_ENABLE ? "{\"active\": true}"
											  : "{\"active\": false}");
		}
		observed_nulls[nlive] = result == NULL;
		if (result != NULL)
			observed[nlive] = JsonbPGetDatum(result);
		nlive++;
		if (op->shadow_attributes != NULL)
		{
			replaced_ids[nreplaced] = UUIDPGetDatum(&op->id);
			replaced_attributes[nreplaced++] = CStringGetTextDatum(op->shadow_attributes);
		}
	}
	execute_for_ids(&bury_shadows, buried_ids, nburied);
	if (nlive > 0)
	{
		Datum		args[4];

		args[0] = spi_array_arg(live_ids, NULL, nlive, UUIDOID);
		args[1] = spi_array_arg(live_uids, NULL, nlive, TEXTOID);
		args[2] = spi_array_arg(sent, sent_nulls, nlive, TEXTOID);
		args[3] = spi_array_arg(observed, observed_nulls, nlive, JSONBOID);
		saved_plan_execute(&record_live_shadows, args, NULL, false, 0);
		if (SPI_processed > 0)
			record_shadow_conflicts();
	}
	if (nreplaced > 0)
	{
		Datum		args[2];

		args[0] = spi_array_arg(replaced_ids, NULL, nreplaced, UUIDOID);
		args[1] = spi_array_arg(replaced_attributes, NULL, nreplaced, TEXTOID);
		saved_plan_execute(&replace_expected, args, NULL, false, 0);
	}
}

static void
record_completions(FinishedWork *work, int64 tag, int64 *done)
{
	int			capacity = work->nnoop;
	LeaseRef   *leases;
	char	  **uids;
	Jsonb	  **results;
	char	  **hooks;
	int			count = 0;

	for (WorkOp *op = work->ops; op; op = op->next)
		capacity++;
	capacity = Max(capacity, 1);
	leases = palloc(sizeof(LeaseRef) * capacity);
	uids = palloc0(sizeof(char *) * capacity);
	results = palloc0(sizeof(Jsonb *) * capacity);
	hooks = palloc0(sizeof(char *) * capacity);

	for (int i = 0; i < work->nnoop; i++)
		leases[count++] = work->noop_leases[i];
	for (WorkOp *op = work->ops; op; op = op->next)
	{
		if (op->outcome.kind != OUTCOME_COMPLETED)
			continue;
		leases[count] = op->lease;
		uids[count] = op->outcome.target_uid ? op->outcome.target_uid : op->target_uid;
		results[count] = result_jsonb(op->outcome.result);
		hooks[count] = hook_history_stored(op);
		count++;
	}
	if (count == 0)
		return;
	/* noop operations alone carry nothing: no per-operation matching then */
	if (count == work->nnoop)
		*done += outcome_complete(leases, count, NULL, NULL, NULL, tag);
	else
		*done += outcome_complete(leases, count, uids, results, hooks, tag);
	record_shadows(work->ops, results + work->nnoop);
}

/* What an operation that will not run again leaves of its shadow. */
static void
record_dead_shadow(WorkOp *op)
{
	Datum		id = UUIDPGetDatum(&op->id);

	if (op->outcome.gone)
		execute_for_ids(&bury_shadows, &id, 1);
	else if (op->type == OP_CREATE)
		saved_plan_execute(&abort_conceived, &id, NULL, false, 0);
}

static void
record_failure(WorkOp *op, int64 tag, int64 *failed)
{
	OpOutcome  *outcome = &op->outcome;
	const char *error = outcome->error ? outcome->error : "failed without an error message";
	TimestampTz now = GetCurrentTimestamp();

	switch (outcome->kind)
	{
		case OUTCOME_RETRY:
		case OUTCOME_DEAD:
			if (outcome_fail(&op->lease, error, outcome->kind == OUTCOME_DEAD,
							 outcome->retry_after_ms, outcome->http_status, hook_history_stored(op), tag))
			{
				(*failed)++;
				if (outcome->kind == OUTCOME_DEAD && !op->noop)
					record_dead_shadow(op);
			}
			break;
		case OUTCOME_PARKED:
			outcome_park(&op->lease, outcome->park_details ? outcome->park_details :
						 "{\"situation\": \"disputed\", \"reason\": \"correlation is uncertain\", \"candidates\": []}",
						 hook_history_stored(op), tag);
			break;
		case OUTCOME_SKIPPED:
			if (outcome_skip(&op->lease, error, hook_history_stored(op), tag) && !op->noop)
				record_dead_shadow(op);
			break;
		case OUTCOME_CONNECTOR:
			if (outcome_release(&op->lease,
								TimestampTzPlusMilliseconds(now, Max(outcome->retry_after_ms, 0)),
								error, outcome->http_status, tag))
				(*failed)++;
			break;
		case OUTCOME_RELEASE:
			outcome_release(&op->lease,
							TimestampTzPlusMilliseconds(now, Max(outcome->retry_after_ms, 0)),
							NULL, 0, tag);
			break;
		case OUTCOME_NONE:
		case OUTCOME_COMPLETED:
			break;
	}
}

void
store_record(FinishedWork *work, int64 tag, int64 *done, int64 *failed)
{
	record_completions(work, tag, done);
	for (WorkOp *op = work->ops; op; op = op->next)
		if (op->outcome.kind != OUTCOME_COMPLETED)
			record_failure(op, tag, failed);
}
