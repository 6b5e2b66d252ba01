/*-------------------------------------------------------------------------
 *
 * hook_run.c
 *	  Running the hooks of an operation in the background worker (see
 *	  hook_run.h).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <cjson/cJSON.h>

#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"

#include "hook_cache.h"
#include "hook_run.h"
#include "sandbox.h"

/* What one hook run did, as the attempt history names it. */
typedef struct HookVerdict
{
	const char *outcome;		/* unchanged, attributes, skip, ... */
	char	   *error;			/* failed / ignored: why */
} HookVerdict;

static void
append_uuid(StringInfo buf, const pg_uuid_t *uuid)
{
	static const char hex[] = "0123456789abcdef";

	appendStringInfoChar(buf, '"');
	for (int i = 0; i < UUID_LEN; i++)
	{
		if (i == 4 || i == 6 || i == 8 || i == 10)
			appendStringInfoChar(buf, '-');
		appendStringInfoChar(buf, hex[uuid->data[i] >> 4]);
		appendStringInfoChar(buf, hex[uuid->data[i] & 0x0F]);
	}
	appendStringInfoChar(buf, '"');
}

static void
append_string_or_null(StringInfo buf, const char *value)
{
	if (value == NULL)
		appendStringInfoString(buf, "null");
	else
		escape_json(buf, value);
}

/* ctx for a hook of this phase, as JSON text in the sandbox's UTF-8. */
static char *
build_context(const WorkOp *op, HookPhase phase)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"operation_id\":\"");
	appendStringInfoString(&buf, op->id_text);
	appendStringInfoString(&buf, "\",\"tenant_id\":");
	append_uuid(&buf, &op->tenant_id);
	appendStringInfoString(&buf, ",\"connector_id\":");
	append_uuid(&buf, &op->connector_id);
	appendStringInfo(&buf, ",\"operation_type\":\"%s\",\"object_class\":", op_type_name(op->type));
	append_string_or_null(&buf, op->object_class);
	appendStringInfoString(&buf, ",\"attributes\":");
	appendStringInfoString(&buf, op->attributes ? op->attributes : "{}");
	appendStringInfoString(&buf, ",\"identity_id\":");
	append_string_or_null(&buf, op->identity_id);
	appendStringInfoString(&buf, ",\"target_uid\":");
	append_string_or_null(&buf, op->outcome.target_uid ? op->outcome.target_uid : op->target_uid);
	appendStringInfo(&buf, ",\"attempt\":%d,\"shadow\":%s", op->attempt,
					 op->shadow ? op->shadow : "null");
	if (phase == HOOK_AFTER)
	{
		if (op->outcome.http_status > 0)
			appendStringInfo(&buf, ",\"response\":{\"status\":%d", op->outcome.http_status);
		else
			appendStringInfoString(&buf, ",\"response\":{\"status\":null");
		appendStringInfoString(&buf, ",\"target_uid\":");
		append_string_or_null(&buf, op->outcome.target_uid ? op->outcome.target_uid : op->target_uid);
		appendStringInfo(&buf, ",\"body\":%s}", op->outcome.result ? op->outcome.result : "null");
	}
	else if (phase == HOOK_ON_ERROR)
	{
		appendStringInfoString(&buf, ",\"error\":{\"message\":");
		append_string_or_null(&buf, op->outcome.error);
		if (op->outcome.http_status > 0)
			appendStringInfo(&buf, ",\"http_status\":%d", op->outcome.http_status);
		else
			appendStringInfoString(&buf, ",\"http_status\":null");
		appendStringInfo(&buf, ",\"permanent\":%s}",
						 op->outcome.kind == OUTCOME_DEAD ? "true" : "false");
	}
	appendStringInfoChar(&buf, '}');
	return pg_server_to_any(buf.data, buf.len, PG_UTF8);
}

static void
log_run(WorkOp *op, const Hook *hook, const SandboxCall *call, const HookVerdict *verdict)
{
	MemoryContext old = MemoryContextSwitchTo(op->cxt);

	if (op->hook_log == NULL)
		op->hook_log = makeStringInfo();
	else
		appendStringInfoChar(op->hook_log, ',');
	appendStringInfo(op->hook_log,
					 "{\"hook_id\":\"%s\",\"version\":%d,\"phase\":\"%s\",\"duration_us\":" INT64_FORMAT
					 ",\"outcome\":\"%s\"",
					 hook->id_text, hook->version, hook_phase_name(hook->phase),
					 call->duration_us, verdict->outcome);
	if (verdict->error)
	{
		appendStringInfoString(op->hook_log, ",\"error\":");
		escape_json(op->hook_log, verdict->error);
	}
	appendStringInfoChar(op->hook_log, '}');
	MemoryContextSwitchTo(old);
}

/* A copy in op->cxt of a cJSON value printed as JSON. */
static char *
print_json(WorkOp *op, const cJSON *value)
{
	char	   *text = cJSON_PrintUnformatted(value);
	char	   *copy;
	MemoryContext old;

	if (text == NULL)
		return NULL;
	old = MemoryContextSwitchTo(op->cxt);
	copy = pstrdup(text);
	cJSON_free(text);
	copy = pg_any_to_server(copy, strlen(copy), PG_UTF8);
	MemoryContextSwitchTo(old);
	return copy;
}

static bool
only_keys(const cJSON *object, const char *const *allowed)
{
	for (const cJSON *item = object->child; item; item = item->next)
	{
		bool		known = false;

		for (int i = 0; allowed[i] && !known; i++)
			known = strcmp(item->string, allowed[i]) == 0;
		if (!known)
			return false;
	}
	return true;
}

/*
 * Apply what a before hook returned.  Sets verdict->error (and returns
 * false) when the answer is not one a before hook may give.
 */
static bool
apply_before(WorkOp *op, const cJSON *answer, HookVerdict *verdict)
{
	static const char *const keys[] = {"attributes", "skip", "reason", NULL};
	const cJSON *skip = cJSON_GetObjectItemCaseSensitive(answer, "skip");
	const cJSON *attributes = cJSON_GetObjectItemCaseSensitive(answer, "attributes");

	if (!only_keys(answer, keys) || (skip && !cJSON_IsBool(skip)) ||
		(attributes && !cJSON_IsObject(attributes)))
	{
		verdict->error = pstrdup("a before hook returns {attributes: {...}}, {skip: true, reason: \"...\"} or nothing");
		return false;
	}
	if (cJSON_IsTrue(skip))
	{
		const cJSON *reason = cJSON_GetObjectItemCaseSensitive(answer, "reason");

		op->outcome.kind = OUTCOME_SKIPPED;
		op->outcome.error = cJSON_IsString(reason) && reason->valuestring[0] != '\0' ?
			MemoryContextStrdup(op->cxt, reason->valuestring) :
			MemoryContextStrdup(op->cxt, "skipped by a before hook");
		op->hook_verdict = true;
		verdict->outcome = "skip";
		return true;
	}
	if (attributes)
	{
		char	   *printed = print_json(op, attributes);

		if (printed == NULL)
		{
			verdict->error = pstrdup("out of memory printing the hook's attributes");
			return false;
		}
		op->attributes = printed;
		op->attributes_replaced = true;
		verdict->outcome = "attributes";
	}
	return true;
}

static bool
apply_after(WorkOp *op, const cJSON *answer, HookVerdict *verdict)
{
	static const char *const keys[] = {"shadow_attributes", NULL};
	const cJSON *attributes = cJSON_GetObjectItemCaseSensitive(answer, "shadow_attributes");

	if (!only_keys(answer, keys) || (attributes && !cJSON_IsObject(attributes)))
	{
		verdict->error = pstrdup("an after hook returns {shadow_attributes: {...}} or nothing");
		return false;
	}
	if (attributes)
	{
		op->shadow_attributes = print_json(op, attributes);
		verdict->outcome = "shadow_attributes";
	}
	return true;
}

static bool
apply_on_error(WorkOp *op, const cJSON *answer, HookVerdict *verdict)
{
	static const char *const keys[] = {"retry", NULL};
	const cJSON *retry = cJSON_GetObjectItemCaseSensitive(answer, "retry");

	if (!only_keys(answer, keys) || (retry && !cJSON_IsBool(retry)))
	{
		verdict->error = pstrdup("an on_error hook returns {retry: false} or nothing");
		return false;
	}
	if (cJSON_IsFalse(retry) && op->outcome.kind != OUTCOME_DEAD)
	{
		op->outcome.kind = OUTCOME_DEAD;
		op->outcome.error =
			MemoryContextStrdup(op->cxt,
								psprintf("%s (not retried: an on_error hook returned {retry: false})",
										 op->outcome.error ? op->outcome.error : "failed"));
		verdict->outcome = "no_retry";
	}
	return true;
}

/* Returns false when the answer is not acceptable (verdict->error set). */
static bool
apply_answer(WorkOp *op, HookPhase phase, const char *result, HookVerdict *verdict)
{
	cJSON	   *answer;
	bool		ok;

	if (result == NULL)
		return true;
	answer = cJSON_Parse(result);
	if (answer == NULL || cJSON_IsNull(answer))
		ok = answer != NULL;
	else if (!cJSON_IsObject(answer))
	{
		verdict->error = psprintf("the hook returned %s, not an object", result[0] == '"' ? "a string" :
								  result[0] == '[' ? "an array" : "a scalar");
		ok = false;
	}
	else if (phase == HOOK_BEFORE)
		ok = apply_before(op, answer, verdict);
	else if (phase == HOOK_AFTER)
		ok = apply_after(op, answer, verdict);
	else
		ok = apply_on_error(op, answer, verdict);
	cJSON_Delete(answer);
	if (!ok && verdict->error == NULL)
		verdict->error = pstrdup("the hook's result could not be read");
	return ok;
}

/*
 * A hook failed: unless it may fail (failure: ignore), the operation fails
 * permanently with the hook's error.
 */
static void
hook_failed(WorkOp *op, const Hook *hook, const SandboxCall *call, HookVerdict *verdict)
{
	const char *what = call->status == SANDBOX_OK || call->status == SANDBOX_THREW ||
		call->status == SANDBOX_FATAL || call->status == SANDBOX_NO_HOOK ||
		call->status == SANDBOX_COMPILE_ERROR ? "failed: " : "";
	const char *error = call->status == SANDBOX_OK ? verdict->error : call->error;

	verdict->error = psprintf("%s hook %s (version %d) %s%s", hook_phase_name(hook->phase),
							  hook->id_text, hook->version, what, error);
	if (hook->ignore_failure)
	{
		verdict->outcome = "ignored";
		return;
	}
	verdict->outcome = "failed";
	op->outcome.kind = OUTCOME_DEAD;
	op->outcome.error = MemoryContextStrdup(op->cxt, verdict->error);
	op->outcome.target_uid = NULL;
	op->hook_verdict = true;
}

/*
 * Run one hook.  Returns false when the operation's fate is sealed (a skip,
 * a failure, a shutdown) and later hooks of the phase must not run.
 */
static bool
run_hook(WorkOp *op, const Hook *hook)
{
	SandboxCall call = {0};
	HookVerdict verdict = {"unchanged", NULL};
	OutcomeKind before = op->outcome.kind;

	call.cache_key = hook->cache_key;
	call.script = hook->script;
	call.context = build_context(op, hook->phase);
	call.timeout_ms = hook->timeout_ms;
	call.memory_kb = hook->memory_kb;
	sandbox_run(&call);

	if (call.status == SANDBOX_CANCELLED)
	{
		/* the worker is stopping: the operation goes back untouched */
		op->outcome.kind = OUTCOME_RELEASE;
		op->outcome.retry_after_ms = 0;
		op->hook_verdict = true;
		return false;
	}
	if (call.status != SANDBOX_OK || !apply_answer(op, hook->phase, call.result, &verdict))
		hook_failed(op, hook, &call, &verdict);
	log_run(op, hook, &call, &verdict);
	return op->outcome.kind == before || op->outcome.kind == OUTCOME_NONE;
}

static void
run_phase(WorkOp *op, HookPhase phase)
{
	MemoryContext old = CurrentMemoryContext;
	const Hook **hooks;
	int			count;

	hooks = hook_cache_lookup(&op->tenant_id, &op->connector_id, op->object_class, phase, &count);
	PG_TRY();
	{
		for (int i = 0; i < count; i++)
			if (!run_hook(op, hooks[i]))
				break;
	}
	PG_CATCH();
	{
		/* out of memory around the sandbox: try the operation again later */
		op_retry_after_error(op, "running the hooks failed");
		op->hook_verdict = true;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(old);
}

bool
hook_run_before(WorkOp *op)
{
	if (!op->has_hooks)
		return true;
	run_phase(op, HOOK_BEFORE);
	return op->outcome.kind == OUTCOME_NONE;
}

void
hook_run_outcome(WorkOp *op)
{
	if (!op->has_hooks || op->hook_verdict)
		return;
	if (op->outcome.kind == OUTCOME_COMPLETED)
		run_phase(op, HOOK_AFTER);
	else if (op->outcome.kind == OUTCOME_RETRY || op->outcome.kind == OUTCOME_DEAD)
		run_phase(op, HOOK_ON_ERROR);
}

char *
hook_log_json(const WorkOp *op)
{
	if (op->hook_log == NULL)
		return NULL;
	return psprintf("[%s]", op->hook_log->data);
}
