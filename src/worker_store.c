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
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "claim_cursor.h"
#include "connector.h"
#include "dequeue.h"
#include "dispatch.h"
#include "hook_cache.h"
#include "hook_run.h"
#include "outcome.h"
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
	"SELECT c.id, c.name, c.kind, c.base_url, c.config::text, c.enabled "
	"  FROM xprov.connector c WHERE c.id = ANY ($1)",
	.nargs = 1,
	.argtypes = {UUIDARRAYOID},
};

static SavedPlan linked_accounts = {
	.sql = "SELECT a.lane_id, a.target_uid FROM xprov.account a WHERE a.lane_id = ANY ($1)",
	.nargs = 1,
	.argtypes = {INT8ARRAYOID},
};

/* The same, with the account as hooks see it (ctx.shadow). */
static SavedPlan hook_accounts = {
	.sql =
	"SELECT a.lane_id, a.target_uid, "
	"       jsonb_build_object('target_uid', a.target_uid, "
	"                          'attributes', jsonb_strip_nulls(a.attributes))::text "
	"  FROM xprov.account a WHERE a.lane_id = ANY ($1)",
	.nargs = 1,
	.argtypes = {INT8ARRAYOID},
};

/*
 * These two statements reach the accounts through their primary key only
 * (= ANY, ON CONFLICT), whatever the table's statistics say.
 */
static SavedPlan unlink_accounts = {
	.sql =
	"DELETE FROM xprov.account a "
	" WHERE a.lane_id = ANY (ARRAY(SELECT o.lane_id FROM xprov.op o WHERE o.id = ANY ($1)))",
	.nargs = 1,
	.argtypes = {UUIDARRAYOID},
};

/*
 * The account's target id and the attributes last provisioned: an update
 * merges into what was there (a JSON null removes an attribute; a new row
 * keeps the nulls until its first update, and the view strips them).
 */
static SavedPlan link_accounts = {
	.sql =
	"INSERT INTO xprov.account AS a (lane_id, tenant_id, connector_id, object_class, identity_id, "
	"                                target_uid, attributes) "
	"SELECT o.lane_id, o.tenant_id, o.connector_id, o.object_class, o.identity_id, "
	"       x.target_uid, coalesce(x.attributes::jsonb, o.attributes) "
	"  FROM unnest($1::uuid[], $2::text[], $3::text[]) AS x(id, target_uid, attributes) "
	"  JOIN LATERAL (SELECT * FROM xprov.op o WHERE o.id = x.id) o ON true "
	" WHERE x.target_uid IS NOT NULL "
	"ON CONFLICT (lane_id) DO UPDATE "
	"   SET target_uid = excluded.target_uid, "
	"       identity_id = coalesce(excluded.identity_id, a.identity_id), "
	"       attributes = jsonb_strip_nulls(a.attributes || excluded.attributes), "
	"       updated_at = now()",
	.nargs = 3,
	.argtypes = {UUIDARRAYOID, TEXTARRAYOID, TEXTARRAYOID},
};

/* An after hook's shadow_attributes replace what the account records. */
static SavedPlan replace_account_attributes = {
	.sql =
	"UPDATE xprov.account a SET attributes = x.attributes::jsonb, updated_at = now() "
	"  FROM unnest($1::uuid[], $2::text[]) AS x(id, attributes) "
	"  JOIN LATERAL (SELECT o.lane_id FROM xprov.op o WHERE o.id = x.id) o ON true "
	" WHERE a.lane_id = o.lane_id",
	.nargs = 2,
	.argtypes = {UUIDARRAYOID, TEXTARRAYOID},
};

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

static char *
copy_text_column(HeapTuple tuple, TupleDesc desc, int col)
{
	char	   *value = SPI_getvalue(tuple, desc, col);

	return value ? pstrdup(value) : NULL;
}

/* A claimed row as a WorkOp in a context of its own. */
static WorkOp *
make_work_op(SPITupleTable *rows, uint64 row, MemoryContext ops_cxt)
{
	MemoryContext cxt = AllocSetContextCreate(ops_cxt, "xprov operation", ALLOCSET_SMALL_SIZES);
	MemoryContext old = MemoryContextSwitchTo(cxt);
	HeapTuple	tuple = rows->vals[row];
	TupleDesc	desc = rows->tupdesc;
	WorkOp	   *op = palloc0(sizeof(WorkOp));
	bool		isnull;
	Datum		value;

	op->cxt = cxt;
	memcpy(&op->id, DatumGetUUIDP(SPI_getbinval(tuple, desc, QOP_ID, &isnull)), UUID_LEN);
	strlcpy(op->id_text, SPI_getvalue(tuple, desc, QOP_ID), sizeof(op->id_text));
	memcpy(&op->connector_id, DatumGetUUIDP(SPI_getbinval(tuple, desc, QOP_CONNECTOR_ID, &isnull)),
		   UUID_LEN);
	memcpy(&op->tenant_id, DatumGetUUIDP(SPI_getbinval(tuple, desc, QOP_TENANT_ID, &isnull)),
		   UUID_LEN);
	op->identity_id = copy_text_column(tuple, desc, QOP_IDENTITY_ID);
	op->target_uid = copy_text_column(tuple, desc, QOP_TARGET_UID);
	op->type = op_type_from_text(SPI_getvalue(tuple, desc, QOP_OPERATION_TYPE));
	op->object_class = copy_text_column(tuple, desc, QOP_OBJECT_CLASS);
	op->attributes = copy_text_column(tuple, desc, QOP_ATTRIBUTES);
	value = SPI_getbinval(tuple, desc, QOP_RETRY_COUNT, &isnull);
	op->attempt = (isnull ? 0 : DatumGetInt32(value)) + 1;
	op->lane_id = DatumGetInt64(SPI_getbinval(tuple, desc, QOP_LANE_ID, &isnull));
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

/* Whether a claimed row has hooks to run (no text is made when none exist). */
static bool
row_has_hooks(SPITupleTable *rows, uint64 row, const pg_uuid_t *connector_id)
{
	bool		isnull;
	pg_uuid_t	tenant_id;
	char	   *object_class;

	if (hook_cache_empty())
		return false;
	memcpy(&tenant_id, DatumGetUUIDP(SPI_getbinval(rows->vals[row], rows->tupdesc, QOP_TENANT_ID, &isnull)),
		   UUID_LEN);
	object_class = SPI_getvalue(rows->vals[row], rows->tupdesc, QOP_OBJECT_CLASS);
	return hook_cache_any(&tenant_id, connector_id, object_class);
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
	result->noop_ids = MemoryContextAlloc(batch_cxt, sizeof(pg_uuid_t) * count);
	for (uint64 row = 0; row < count; row++)
	{
		KindEntry  *entry = kind_entry(&connector_ids[row], false);
		bool		noop = entry != NULL && entry->kind == CONNECTOR_NOOP;
		bool		has_hooks = row_has_hooks(rows, row, &connector_ids[row]);

		if (noop && !has_hooks)
		{
			bool		isnull;

			memcpy(&result->noop_ids[result->nnoop++],
				   DatumGetUUIDP(SPI_getbinval(rows->vals[row], rows->tupdesc, QOP_ID, &isnull)),
				   UUID_LEN);
		}
		else
		{
			WorkOp	   *op = make_work_op(rows, row, ops_cxt);

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

/* The accounts of completed operations: linked, re-linked or gone. */
static void
record_accounts(WorkOp *ops)
{
	int			capacity = 0;
	Datum	   *linked_ids;
	Datum	   *linked_uids;
	bool	   *uid_nulls;
	Datum	   *linked_attributes;
	bool	   *attribute_nulls;
	Datum	   *unlinked_ids;
	Datum	   *shadow_ids;
	Datum	   *shadow_attributes;
	int			nlinked = 0;
	int			nunlinked = 0;
	int			nshadow = 0;

	for (WorkOp *op = ops; op; op = op->next)
		capacity++;
	capacity = Max(capacity, 1);
	linked_ids = palloc(sizeof(Datum) * capacity);
	linked_uids = palloc0(sizeof(Datum) * capacity);
	uid_nulls = palloc0(sizeof(bool) * capacity);
	linked_attributes = palloc0(sizeof(Datum) * capacity);
	attribute_nulls = palloc0(sizeof(bool) * capacity);
	unlinked_ids = palloc(sizeof(Datum) * capacity);
	shadow_ids = palloc(sizeof(Datum) * capacity);
	shadow_attributes = palloc(sizeof(Datum) * capacity);

	for (WorkOp *op = ops; op; op = op->next)
	{
		const char *uid = op->outcome.target_uid ? op->outcome.target_uid : op->target_uid;

		/* noop targets have no accounts */
		if (op->outcome.kind != OUTCOME_COMPLETED || op->noop)
			continue;
		if (op->outcome.unlinked)
		{
			unlinked_ids[nunlinked++] = UUIDPGetDatum(&op->id);
			continue;
		}
		linked_ids[nlinked] = UUIDPGetDatum(&op->id);
		uid_nulls[nlinked] = uid == NULL;
		if (uid != NULL)
			linked_uids[nlinked] = CStringGetTextDatum(uid);
		attribute_nulls[nlinked] = !op->attributes_replaced;
		if (op->attributes_replaced)
			linked_attributes[nlinked] = CStringGetTextDatum(op->attributes);
		nlinked++;
		if (op->shadow_attributes != NULL && uid != NULL)
		{
			shadow_ids[nshadow] = UUIDPGetDatum(&op->id);
			shadow_attributes[nshadow++] = CStringGetTextDatum(op->shadow_attributes);
		}
	}
	if (nunlinked > 0)
	{
		Datum		arg = spi_array_arg(unlinked_ids, NULL, nunlinked, UUIDOID);

		saved_plan_execute(&unlink_accounts, &arg, NULL, false, 0);
	}
	if (nlinked > 0)
	{
		Datum		args[3];

		args[0] = spi_array_arg(linked_ids, NULL, nlinked, UUIDOID);
		args[1] = spi_array_arg(linked_uids, uid_nulls, nlinked, TEXTOID);
		args[2] = spi_array_arg(linked_attributes, attribute_nulls, nlinked, TEXTOID);
		saved_plan_execute(&link_accounts, args, NULL, false, 0);
	}
	if (nshadow > 0)
	{
		Datum		args[2];

		args[0] = spi_array_arg(shadow_ids, NULL, nshadow, UUIDOID);
		args[1] = spi_array_arg(shadow_attributes, NULL, nshadow, TEXTOID);
		saved_plan_execute(&replace_account_attributes, args, NULL, false, 0);
	}
}

static void
record_completions(FinishedWork *work, int64 tag, int64 *done)
{
	int			capacity = work->nnoop;
	pg_uuid_t  *ids;
	char	  **uids;
	Jsonb	  **results;
	char	  **hooks;
	int			count = 0;

	for (WorkOp *op = work->ops; op; op = op->next)
		capacity++;
	capacity = Max(capacity, 1);
	ids = palloc(sizeof(pg_uuid_t) * capacity);
	uids = palloc0(sizeof(char *) * capacity);
	results = palloc0(sizeof(Jsonb *) * capacity);
	hooks = palloc0(sizeof(char *) * capacity);

	for (int i = 0; i < work->nnoop; i++)
		ids[count++] = work->noop_ids[i];
	for (WorkOp *op = work->ops; op; op = op->next)
	{
		if (op->outcome.kind != OUTCOME_COMPLETED)
			continue;
		ids[count] = op->id;
		uids[count] = op->outcome.target_uid ? op->outcome.target_uid : op->target_uid;
		results[count] = result_jsonb(op->outcome.result);
		hooks[count] = hook_log_json(op);
		count++;
	}
	if (count == 0)
		return;
	/* noop operations alone carry nothing: no per-operation matching then */
	if (count == work->nnoop)
		*done += outcome_complete(ids, count, NULL, NULL, NULL, tag);
	else
		*done += outcome_complete(ids, count, uids, results, hooks, tag);
	record_accounts(work->ops);
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
			if (outcome_fail(&op->id, error, outcome->kind == OUTCOME_DEAD,
							 outcome->retry_after_ms, outcome->http_status, hook_log_json(op), tag))
				(*failed)++;
			break;
		case OUTCOME_SKIPPED:
			outcome_skip(&op->id, error, hook_log_json(op), tag);
			break;
		case OUTCOME_CONNECTOR:
			if (outcome_release(&op->id,
								TimestampTzPlusMilliseconds(now, Max(outcome->retry_after_ms, 0)),
								error, outcome->http_status, tag))
				(*failed)++;
			break;
		case OUTCOME_RELEASE:
			outcome_release(&op->id,
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
