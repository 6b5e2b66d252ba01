/*-------------------------------------------------------------------------
 *
 * script_sql.c
 *	  SQL functions for hook authors: xprov.validate_script and
 *	  xprov.execute_script, and the sandbox benchmark helper.
 *
 * They run scripts in this backend's own sandbox heap (sandbox.c) and turn
 * its outcomes into errors with SQLSTATEs (see script_report()).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/float.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"

#include "js_deadline.h"
#include "sandbox.h"
#include "script_sql.h"
#include "xprov.h"

PG_FUNCTION_INFO_V1(xprov_validate_script);
PG_FUNCTION_INFO_V1(xprov_execute_script);
PG_FUNCTION_INFO_V1(xprov_sandbox_bench);
PG_FUNCTION_INFO_V1(xprov_sandbox_force_fatal);
PG_FUNCTION_INFO_V1(xprov_hook_answer);

void
script_check_limits(int timeout_ms, int memory_kb)
{
	if (timeout_ms < 1 || timeout_ms > xprov_hook_max_timeout_ms)
		ereport(ERROR,
				errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				errmsg("hook time limit %d ms is out of range", timeout_ms),
				errdetail("It must be between 1 and %d ms (xprov.hook_max_timeout).",
						  xprov_hook_max_timeout_ms));
	if (memory_kb < SANDBOX_MIN_MEMORY_KB || memory_kb > xprov_hook_max_memory_kb)
		ereport(ERROR,
				errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				errmsg("hook memory limit %d kB is out of range", memory_kb),
				errdetail("It must be between %d and %d kB (xprov.hook_max_memory).",
						  SANDBOX_MIN_MEMORY_KB, xprov_hook_max_memory_kb));
}

void
script_report(const SandboxCall *call)
{
	switch (call->status)
	{
		case SANDBOX_OK:
			return;
		case SANDBOX_COMPILE_ERROR:
			ereport(ERROR,
					errcode(ERRCODE_SYNTAX_ERROR),
					errmsg("hook script does not compile: %s", call->error),
					errhint("Hooks are ES5.1 JavaScript: use var and function, not let, arrow functions or template literals."));
			break;
		case SANDBOX_NO_HOOK:
			ereport(ERROR,
					errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
					errmsg("hook script does not define function hook(ctx)"),
					errhint("Declare function hook(ctx) { ... } at the top level of the script."));
			break;
		case SANDBOX_THREW:
			ereport(ERROR,
					errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
					errmsg("hook failed: %s", call->error));
			break;
		case SANDBOX_TIMEOUT:
			ereport(ERROR,
					errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
					errmsg("hook exceeded its time limit of %d ms", call->timeout_ms),
					errdetail("The hook was stopped after %lld ms.",
							  (long long) (call->duration_us / 1000)));
			break;
		case SANDBOX_MEMORY:
			ereport(ERROR,
					errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
					errmsg("hook exceeded its memory limit of %d kB", call->memory_kb));
			break;
		case SANDBOX_TOO_LARGE:
			ereport(ERROR,
					errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
					errmsg("hook result is too large"),
					errdetail("A hook may return at most %d bytes of JSON.", SANDBOX_MAX_RESULT));
			break;
		case SANDBOX_CANCELLED:
			CHECK_FOR_INTERRUPTS();
			ereport(ERROR,
					errcode(ERRCODE_QUERY_CANCELED),
					errmsg("hook was cancelled"));
			break;
		case SANDBOX_FATAL:
			ereport(ERROR,
					errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
					errmsg("hook failed: %s", call->error),
					errdetail("The JavaScript heap was discarded and will be rebuilt."));
			break;
	}
}

static char *
script_arg(FunctionCallInfo fcinfo, int argno)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				errmsg("script must not be null"));
	return text_to_cstring(PG_GETARG_TEXT_PP(argno));
}

Datum
xprov_validate_script(PG_FUNCTION_ARGS)
{
	SandboxCall call = {0};

	call.script = script_arg(fcinfo, 0);
	call.timeout_ms = xprov_hook_max_timeout_ms;
	call.memory_kb = xprov_hook_max_memory_kb;
	sandbox_run(&call);
	script_report(&call);
	PG_RETURN_VOID();
}

/*
 * The hook's JSON as jsonb.  duktape's JSON is valid JSON, but PostgreSQL
 * refuses some of it (a lone surrogate escape, \u0000): say so as the
 * hook's error, not as a bare input syntax error.
 */
static Datum
result_to_jsonb(const char *json)
{
	MemoryContext old = CurrentMemoryContext;
	volatile Datum result = (Datum) 0;
	char	   *problem = NULL;

	PG_TRY();
	{
		result = DirectFunctionCall1(jsonb_in, CStringGetDatum(json));
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(old);
		edata = CopyErrorData();
		FlushErrorState();
		problem = edata->message;
	}
	PG_END_TRY();
	if (problem != NULL)
		ereport(ERROR,
				errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				errmsg("hook returned JSON that PostgreSQL cannot store"),
				errdetail("%s", problem));
	return result;
}

static void
prepare_call(FunctionCallInfo fcinfo, SandboxCall *call)
{
	call->script = script_arg(fcinfo, 0);
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				errmsg("context must not be null"),
				errhint("Pass '{}' for an empty context."));
	/* the sandbox speaks UTF-8: other encodings are converted as text */
	if (sandbox_takes_jsonb())
		call->context_jsonb = &PG_GETARG_JSONB_P(1)->root;
	else
	{
		call->context = JsonbToCString(NULL, &PG_GETARG_JSONB_P(1)->root, VARSIZE(PG_GETARG_JSONB_P(1)));
		call->context = pg_server_to_any(call->context, strlen(call->context), PG_UTF8);
	}
	call->timeout_ms = PG_ARGISNULL(2) ? 100 : PG_GETARG_INT32(2);
	call->memory_kb = PG_ARGISNULL(3) ? 16384 : PG_GETARG_INT32(3);
	script_check_limits(call->timeout_ms, call->memory_kb);
}

Datum
xprov_execute_script(PG_FUNCTION_ARGS)
{
	SandboxCall call = {0};

	prepare_call(fcinfo, &call);
	sandbox_run(&call);
	script_report(&call);
	if (call.result == NULL)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(result_to_jsonb(pg_any_to_server(call.result, strlen(call.result), PG_UTF8)));
}

/* A UTF-8 copy of a jsonb string. */
static const char *
utf8_text(const JsonbValue *value)
{
	char	   *text = pnstrdup(value->val.string.val, value->val.string.len);

	return pg_server_to_any(text, strlen(text), PG_UTF8);
}

/*
 * The names of ctx's members as the worker passes them: string literals
 * (SandboxCall.static_names).
 */
static const char *const worker_ctx_names[] = {
	"operation_id", "tenant_id", "connector_id", "operation_type", "object_class",
	"attributes", "identity_id", "target_uid", "attempt", "shadow", "response", "error"
};

/* The worker's literal for a member name, or the name itself. */
static const char *
as_worker_name(const char *name, bool *is_literal)
{
	for (int i = 0; i < lengthof(worker_ctx_names); i++)
		if (strcmp(name, worker_ctx_names[i]) == 0)
			return worker_ctx_names[i];
	*is_literal = false;
	return name;
}

/*
 * ctx as the worker passes it: a top-level object member by member, nested
 * objects and arrays as jsonb (as JSON text in a database that is not
 * UTF-8), names that the worker has as literals as those literals.
 */
static void
fields_from_jsonb(Jsonb *context, SandboxCall *call)
{
	JsonbIterator *it;
	JsonbValue	value;
	JsonbIteratorToken token;
	SandboxValue *fields;
	int			n = 0;
	bool		literal_names = true;

	if (!JB_ROOT_IS_OBJECT(context))
		ereport(ERROR,
				errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				errmsg("context must be a JSON object"));
	fields = palloc0(sizeof(SandboxValue) * Max(JB_ROOT_COUNT(context), 1));
	it = JsonbIteratorInit(&context->root);
	while ((token = JsonbIteratorNext(&it, &value, true)) != WJB_DONE)
	{
		SandboxValue *field = &fields[n];

		if (token == WJB_KEY)
		{
			field->name = as_worker_name(utf8_text(&value), &literal_names);
			continue;
		}
		if (token != WJB_VALUE)
			continue;
		switch (value.type)
		{
			case jbvString:
				field->kind = SANDBOX_VALUE_STRING;
				field->text = utf8_text(&value);
				break;
			case jbvNumeric:
				field->kind = SANDBOX_VALUE_NUMBER;
				field->number = DatumGetFloat8(DirectFunctionCall1(numeric_float8,
																   NumericGetDatum(value.val.numeric)));
				break;
			case jbvBool:
				field->kind = SANDBOX_VALUE_BOOLEAN;
				field->boolean = value.val.boolean;
				break;
			case jbvBinary:
				if (sandbox_takes_jsonb())
				{
					field->kind = SANDBOX_VALUE_JSONB;
					field->binary = value.val.binary.data;
					break;
				}
				field->kind = SANDBOX_VALUE_JSON;
				field->text = JsonbToCString(NULL, value.val.binary.data, value.val.binary.len);
				field->text = pg_server_to_any(field->text, strlen(field->text), PG_UTF8);
				break;
			default:
				field->kind = SANDBOX_VALUE_NULL;
				break;
		}
		n++;
	}
	call->fields = fields;
	call->nfields = n;
	call->static_names = literal_names;
	call->split_result = true;
}

/*
 * xprov._sandbox_bench(script, context, timeout_ms, memory_kb, calls):
 * microseconds per call of the sandbox alone, on the worker's path: a
 * cached program, ctx built member by member (JSON-valued members built
 * from jsonb),
 * a returned object split into members (see SandboxCall).
 */
Datum
xprov_sandbox_bench(PG_FUNCTION_ARGS)
{
	SandboxCall call = {0};
	int			calls = PG_ARGISNULL(4) ? 10000 : PG_GETARG_INT32(4);
	MemoryContext cxt;
	MemoryContext old;
	int64		start;
	int64		elapsed;

	prepare_call(fcinfo, &call);
	fields_from_jsonb(PG_GETARG_JSONB_P(1), &call);
	call.context = NULL;
	call.context_jsonb = NULL;
	cxt = AllocSetContextCreate(CurrentMemoryContext, "xprov sandbox bench",
								ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(cxt);
	sandbox_run(&call);			/* compile outside the measurement */
	script_report(&call);
	start = xprov_js_now_us();
	for (int i = 0; i < calls; i++)
	{
		MemoryContextReset(cxt);
		sandbox_run(&call);
		script_report(&call);
	}
	elapsed = xprov_js_now_us() - start;
	MemoryContextSwitchTo(old);
	MemoryContextDelete(cxt);
	PG_RETURN_FLOAT8(calls > 0 ? (double) elapsed / calls : 0.0);
}

/*
 * xprov._sandbox_force_fatal(): duktape's fatal-error path, on purpose.
 * Returns the message the sandbox recovered with; the next call gets a
 * fresh heap.
 */
Datum
xprov_sandbox_force_fatal(PG_FUNCTION_ARGS)
{
	SandboxCall call = {0};

	sandbox_force_fatal(&call);
	if (call.status != SANDBOX_FATAL)
		ereport(ERROR,
				errcode(ERRCODE_INTERNAL_ERROR),
				errmsg("the sandbox did not take its fatal-error path"));
	PG_RETURN_TEXT_P(cstring_to_text(call.error));
}

static const char *
value_kind_name(SandboxValueKind kind)
{
	switch (kind)
	{
		case SANDBOX_VALUE_NULL:
			return "null";
		case SANDBOX_VALUE_STRING:
			return "string";
		case SANDBOX_VALUE_NUMBER:
			return "number";
		case SANDBOX_VALUE_BOOLEAN:
			return "boolean";
		case SANDBOX_VALUE_JSON:
			return "json";
		default:
			return "other";
	}
}

static void
append_json_text(StringInfo out, const char *utf8)
{
	escape_json(out, pg_any_to_server(utf8, strlen(utf8), PG_UTF8));
}

/*
 * xprov._hook_answer(script, context): what the worker reads from a hook's
 * answer, for tests: {"members": [{"name", "kind", "value"}, ...], "more"}
 * for an object (a JSON value's text as a string), else {"result": text}.
 */
Datum
xprov_hook_answer(PG_FUNCTION_ARGS)
{
	SandboxCall call = {0};
	StringInfoData out;

	call.script = script_arg(fcinfo, 0);
	call.timeout_ms = 1000;
	call.memory_kb = 16384;
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				errmsg("context must not be null"));
	fields_from_jsonb(PG_GETARG_JSONB_P(1), &call);
	sandbox_run(&call);
	script_report(&call);

	initStringInfo(&out);
	if (call.result == NULL || strcmp(call.result, "{}") != 0)
	{
		appendStringInfoString(&out, "{\"result\": ");
		if (call.result == NULL)
			appendStringInfoString(&out, "null");
		else
			append_json_text(&out, call.result);
		appendStringInfoChar(&out, '}');
		PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(out.data)));
	}
	appendStringInfoString(&out, "{\"members\": [");
	for (int i = 0; i < call.nmembers; i++)
	{
		const SandboxValue *member = &call.members[i];

		appendStringInfoString(&out, i > 0 ? ", {\"name\": " : "{\"name\": ");
		append_json_text(&out, member->name);
		appendStringInfo(&out, ", \"kind\": \"%s\", \"value\": ", value_kind_name(member->kind));
		if (member->kind == SANDBOX_VALUE_STRING || member->kind == SANDBOX_VALUE_JSON)
			append_json_text(&out, member->text);
		else if (member->kind == SANDBOX_VALUE_NUMBER)
			appendStringInfoString(&out, float8out_internal(member->number));
		else if (member->kind == SANDBOX_VALUE_BOOLEAN)
			appendStringInfoString(&out, member->boolean ? "true" : "false");
		else
			appendStringInfoString(&out, "null");
		appendStringInfoChar(&out, '}');
	}
	appendStringInfo(&out, "], \"more\": %s}", call.more_members ? "true" : "false");
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(out.data)));
}
