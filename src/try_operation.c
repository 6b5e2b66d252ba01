/*-------------------------------------------------------------------------
 *
 * try_operation.c
 *	  xprov.try_operation(): run one operation against a connector now, in
 *	  this session, and report every HTTP exchange.
 *
 * Exports the SQL-callable C function xprov_try_operation.  Nothing is
 * queued or recorded: the operation runs through the same protocol code and
 * HTTP engine as the background worker's, so that an operator can check a
 * connector's URL, credentials and mapping before real work is sent.
 *
 * The operation lives in a memory context of its own, deleted at the end.
 * A cancel or any error while a request is in flight abandons the transfer
 * before the error propagates, so libcurl never keeps a handle on memory
 * the error unwinding frees.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/latch.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/uuid.h"

#include "connector.h"
#include "hook_cache.h"
#include "hook_history.h"
#include "hook_run.h"
#include "http.h"
#include "op_input.h"
#include "protocol.h"
#include "text_util.h"
#include "work_op.h"

PG_FUNCTION_INFO_V1(xprov_try_operation);

/* A protocol that asks for more than this is looping. */
#define MAX_EXCHANGES 20

/* One wait of the engine: short, so cancels are seen at once. */

/* ------------------------------------------------------------------------
 * Arguments and the connector
 */

static OpType
parse_op_type(const char *name)
{
	for (OpType t = OP_CREATE; t <= OP_DISABLE; t++)
		if (strcmp(op_type_name(t), name) == 0)
			return t;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unknown operation type \"%s\"", name),
			 errhint("Use one of create, update, delete, enable, disable.")));
	pg_unreachable();
}

static void
refuse_kind(const char *name, const char *kind)
{
	if (strcmp(kind, "noop") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("connector \"%s\" is of kind noop, which has no target to try", name),
				 errdetail("A noop connector completes operations without contacting any system."),
				 errhint("Try a scim2 or rest connector.")));
	if (strcmp(kind, "external") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("connector \"%s\" is of kind external, which xprov does not execute itself", name),
				 errdetail("Operations of external connectors are run by outside processes through xprov.dequeue()."),
				 errhint("Try a scim2 or rest connector.")));
}

/* Read and parse the connector; allocated under `cxt`. */
static Connector *
load_connector(pg_uuid_t *id, MemoryContext cxt, pg_uuid_t *tenant_id)
{
	Oid			argtypes[1] = {UUIDOID};
	Datum		args[1] = {UUIDPGetDatum(id)};
	Connector  *connector;
	char	   *name;
	char	   *kind;
	bool		enabled_null;
	bool		enabled;
	char	   *error;

	SPI_connect();
	if (SPI_execute_with_args("SELECT name, kind, base_url, xprov._connector_config(id, config)::text, "
							  "enabled, tenant_id FROM xprov.connector WHERE id = $1",
							  1, argtypes, args, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "xprov: could not read the connector");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("connector %s does not exist",
						uuid_text(id)),
				 errhint("List connectors with SELECT * FROM xprov.connectors.")));

	name = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	kind = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	refuse_kind(name, kind);
	enabled = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 5,
										 &enabled_null));
	memcpy(tenant_id, DatumGetUUIDP(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 6,
												  &enabled_null)), UUID_LEN);
	connector = connector_parse(cxt, id, name, kind,
								SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3),
								SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4),
								enabled, &error);
	if (connector == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("connector \"%s\" is misconfigured: %s", name, error),
				 errhint("Correct the connector's row in xprov.connector; the xprov.connectors view shows its config with secrets masked.")));
	SPI_finish();
	return connector;
}

static WorkOp *
make_op(MemoryContext cxt, Connector *connector, OpType type,
		const char *object_class, Jsonb *attributes,
		const char *target_uid, pg_uuid_t *identity_id)
{
	MemoryContext old = MemoryContextSwitchTo(cxt);
	WorkOp	   *op = palloc0(sizeof(WorkOp));

	op->cxt = cxt;
	op_generate_id(&op->id);
	strlcpy(op->id_text, uuid_text(&op->id),
			sizeof(op->id_text));
	op->connector_id = connector->id;
	op->connector = connector;
	op->type = type;
	op->object_class = pstrdup(object_class);
	op->attributes = JsonbToCString(NULL, &attributes->root, VARSIZE(attributes));
	op->target_uid = (target_uid && target_uid[0]) ? pstrdup(target_uid) : NULL;
	if (identity_id != NULL)
		op->identity_id = uuid_text(identity_id);
	op->attempt = 1;
	MemoryContextSwitchTo(old);
	return op;
}

/* ------------------------------------------------------------------------
 * Running it
 */

/* The URL without scheme and host: what the exchange list shows. */
static const char *
url_path(const char *url)
{
	const char *p = strstr(url, "://");
	const char *slash = p ? strchr(p + 3, '/') : NULL;

	return slash ? slash : "/";
}

static void
append_exchange(StringInfo exchanges, const HttpRequest *request)
{
	const HttpResponse *response = &request->response;

	if (exchanges->len > 0)
		appendStringInfoString(exchanges, ", ");
	appendStringInfoString(exchanges, "{\"method\": ");
	escape_json(exchanges, request->method);
	appendStringInfoString(exchanges, ", \"path\": ");
	escape_json(exchanges, url_path(request->url));
	if (response->status > 0)
		appendStringInfo(exchanges, ", \"status\": %ld", response->status);
	else
		appendStringInfoString(exchanges, ", \"status\": null");
	appendStringInfo(exchanges, ", \"ms\": %.1f}", response->elapsed_ms);
}

static void
run_protocol(WorkOp *op, const Protocol *protocol, StringInfo exchanges)
{
	MemoryContext old = MemoryContextSwitchTo(op->cxt);
	int			count = 0;
	bool		more = protocol->begin(op);

	while (more)
	{
		HttpRequest *request = op->request;

		if (request == NULL && op->awaiting == AWAIT_LINK_CHECK)
		{
			/* nothing is recorded here: the account found is the one to try */
			op->awaiting = AWAIT_NONE;
			op->verdict = VERDICT_LINK;
			more = protocol->resume(op, NULL);
			continue;
		}
		if (request == NULL)
			elog(ERROR, "xprov: protocol %s asked for a request but placed none", protocol->name);
		if (count == MAX_EXCHANGES)
		{
			op->outcome.kind = OUTCOME_DEAD;
			op->outcome.error = psprintf("gave up after %d HTTP exchanges", MAX_EXCHANGES);
			break;
		}
		op->request = NULL;
		http_engine_exchange(request, op->connector, op->id_text);
		count++;
		append_exchange(exchanges, request);
		MemoryContextSwitchTo(op->cxt);
		more = protocol->resume(op, &request->response);
	}
	MemoryContextSwitchTo(old);
}

/* ------------------------------------------------------------------------
 * The result
 */

static const char *
outcome_name(OutcomeKind kind)
{
	switch (kind)
	{
		case OUTCOME_COMPLETED:
			return "completed";
		case OUTCOME_RETRY:
			return "retry";
		case OUTCOME_DEAD:
			return "dead";
		case OUTCOME_CONNECTOR:
			return "connector";
		case OUTCOME_RELEASE:
			return "release";
		case OUTCOME_SKIPPED:
			return "skipped";
		case OUTCOME_PARKED:
			return "parked";
		case OUTCOME_NONE:
			break;
	}
	return "none";
}

static void
append_string_field(StringInfo buf, const char *key, const char *value)
{
	appendStringInfo(buf, ", \"%s\": ", key);
	if (value != NULL)
		escape_json(buf, value);
	else
		appendStringInfoString(buf, "null");
}

static Datum
outcome_jsonb(const WorkOp *op, const StringInfo exchanges)
{
	const OpOutcome *outcome = &op->outcome;
	char	   *hooks = hook_history_json(op);
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"outcome\": ");
	escape_json(&buf, outcome_name(outcome->kind));
	if (outcome->http_status > 0)
		appendStringInfo(&buf, ", \"http_status\": %d", outcome->http_status);
	else
		appendStringInfoString(&buf, ", \"http_status\": null");
	append_string_field(&buf, "error", connector_redact(op->connector, outcome->error));
	append_string_field(&buf, "target_uid", outcome->target_uid);
	appendStringInfo(&buf, ", \"result\": %s", outcome->result ? outcome->result : "null");
	appendStringInfo(&buf, ", \"case\": %s", outcome->park_details ? outcome->park_details : "null");
	if (outcome->kind == OUTCOME_RETRY && outcome->retry_after_ms >= 0)
		appendStringInfo(&buf, ", \"retry_after_ms\": %d", outcome->retry_after_ms);
	else
		appendStringInfoString(&buf, ", \"retry_after_ms\": null");
	appendStringInfo(&buf, ", \"attributes_sent\": %s", op->attributes ? op->attributes : "null");
	appendStringInfo(&buf, ", \"shadow_attributes\": %s",
					 op->shadow_attributes ? op->shadow_attributes : "null");
	appendStringInfo(&buf, ", \"hooks\": %s", hooks ? hooks : "[]");
	appendStringInfo(&buf, ", \"exchanges\": [%s]}", exchanges->data);
	return DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data));
}

static const Protocol *
protocol_for(const Connector *connector)
{
	if (connector->kind == CONNECTOR_SCIM2)
		return &scim2_protocol;
	Assert(connector->kind == CONNECTOR_REST);
	return &rest_protocol;
}

/*
 * Whether hooks apply to the operation, read afresh: a hook defined earlier
 * in this very transaction counts too.
 */
static bool
load_hooks(WorkOp *op)
{
	SPI_connect();
	hook_cache_forget();
	hook_cache_refresh();
	SPI_finish();
	return hook_cache_any(&op->tenant_id, &op->connector_id, op->object_class,
						  op->object_class ? strlen(op->object_class) : 0);
}

static void
check_not_null(FunctionCallInfo fcinfo, int arg, const char *name)
{
	if (PG_ARGISNULL(arg))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", name)));
}

Datum
xprov_try_operation(PG_FUNCTION_ARGS)
{
	MemoryContext cxt;
	Connector  *connector;
	OpType		type;
	char	   *object_class;
	Jsonb	   *attributes;
	WorkOp	   *op;
	pg_uuid_t	tenant_id;
	StringInfoData exchanges;
	Datum		result;

	check_not_null(fcinfo, 0, "connector_id");
	check_not_null(fcinfo, 1, "operation_type");
	check_not_null(fcinfo, 2, "object_class");
	type = parse_op_type(text_to_cstring(PG_GETARG_TEXT_PP(1)));
	object_class = text_to_cstring(PG_GETARG_TEXT_PP(2));
	if (object_class[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("object_class must not be empty"),
				 errhint("Name the kind of target object, for example user or group.")));
	attributes = PG_ARGISNULL(3) ? NULL : PG_GETARG_JSONB_P(3);
	if (attributes != NULL && !JB_ROOT_IS_OBJECT(attributes))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("attributes must be a JSON object")));
	if (attributes == NULL)
		attributes = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")));

	cxt = AllocSetContextCreate(CurrentMemoryContext, "xprov try_operation",
								ALLOCSET_DEFAULT_SIZES);
	connector = load_connector(PG_GETARG_UUID_P(0), cxt, &tenant_id);
	op = make_op(cxt, connector, type, object_class, attributes,
				 PG_ARGISNULL(4) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(4)),
				 PG_ARGISNULL(5) ? NULL : PG_GETARG_UUID_P(5));
	op->tenant_id = tenant_id;
	if (PG_NARGS() > 6)
		check_not_null(fcinfo, 6, "run_hooks");
	if (PG_NARGS() > 6 && PG_GETARG_BOOL(6))
		op->has_hooks = load_hooks(op);

	initStringInfo(&exchanges);
	PG_TRY();
	{
		/* the worker's order: before hooks, the target, after or on_error hooks */
		if (hook_run_before(op))
			run_protocol(op, protocol_for(connector), &exchanges);
		hook_run_outcome(op);
	}
	PG_CATCH();
	{
		/* libcurl must let go of the requests before their memory goes */
		http_engine_abandon_all();
		PG_RE_THROW();
	}
	PG_END_TRY();

	result = outcome_jsonb(op, &exchanges);
	MemoryContextDelete(cxt);
	PG_RETURN_DATUM(result);
}
