/*-------------------------------------------------------------------------
 *
 * hook_run.c
 *	  Running the hooks of an operation in the background worker (see
 *	  hook_run.h).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"

#include "hook_cache.h"
#include "hook_history.h"
#include "hook_run.h"
#include "sandbox.h"

/* What one hook run did, as the attempt history names it. */
typedef struct HookVerdict
{
	const char *outcome;		/* unchanged, attributes, skip, ... */
	char	   *error;			/* failed / ignored: why */
} HookVerdict;

/* Room for ctx: its members, and those of response or error. */
#define CONTEXT_FIELDS 11
#define OUTCOME_FIELDS 3

/* ctx for one hook run, built member by member (see SandboxValue). */
typedef struct HookContext
{
	SandboxValue fields[CONTEXT_FIELDS];
	SandboxValue outcome[OUTCOME_FIELDS];
	char		tenant_id[UUID_TEXT_LEN];
	char		connector_id[UUID_TEXT_LEN];
	int			nfields;
} HookContext;

/*
 * Room for a typical answer of a before hook (new attributes) in the
 * operation's own memory: malloc and a free on another thread cost more
 * than the hook itself.
 */
#define AHEAD_BUFFER 768

/* The first before hook of an operation, run ahead on the hook thread. */
typedef struct HookAhead
{
	SandboxCall call;
	HookContext context;
	char		cache_key[sizeof(((Hook *) NULL)->cache_key)];
	char		buffer[AHEAD_BUFFER];
} HookAhead;

/* The sandbox's UTF-8 (no copy when the server's encoding is UTF-8). */
static const char *
to_utf8(const char *text)
{
	return text ? pg_server_to_any(text, strlen(text), PG_UTF8) : NULL;
}

static void
set_text(SandboxValue *field, const char *name, SandboxValueKind kind, const char *text)
{
	field->name = name;
	field->kind = text ? kind : SANDBOX_VALUE_NULL;
	field->text = to_utf8(text);
}

static void
set_number(SandboxValue *field, const char *name, int value, bool present)
{
	field->name = name;
	field->kind = present ? SANDBOX_VALUE_NUMBER : SANDBOX_VALUE_NULL;
	field->number = value;
}

/*
 * ctx for a hook of this phase: {operation_id, tenant_id, connector_id,
 * operation_type, object_class, attributes, identity_id, target_uid,
 * attempt, shadow}, plus response (after) or error (on_error).
 */
static void
build_context(HookContext *hc, const WorkOp *op, HookPhase phase)
{
	SandboxValue *f = hc->fields;
	const char *target_uid = op->outcome.target_uid ? op->outcome.target_uid : op->target_uid;
	int			n = 0;

	uuid_to_text(hc->tenant_id, &op->tenant_id);
	uuid_to_text(hc->connector_id, &op->connector_id);
	set_text(&f[n++], "operation_id", SANDBOX_VALUE_STRING, op->id_text);
	set_text(&f[n++], "tenant_id", SANDBOX_VALUE_STRING, hc->tenant_id);
	set_text(&f[n++], "connector_id", SANDBOX_VALUE_STRING, hc->connector_id);
	set_text(&f[n++], "operation_type", SANDBOX_VALUE_STRING, op_type_name(op->type));
	set_text(&f[n++], "object_class", SANDBOX_VALUE_STRING, op->object_class);
	if (op->attributes == NULL && op->attributes_jsonb != NULL)
	{
		/* a UTF-8 jsonb: whichever thread runs the hook builds it */
		f[n].name = "attributes";
		f[n].kind = SANDBOX_VALUE_JSONB;
		f[n++].binary = op->attributes_jsonb;
	}
	else
		set_text(&f[n++], "attributes", SANDBOX_VALUE_JSON, op->attributes ? op->attributes : "{}");
	set_text(&f[n++], "identity_id", SANDBOX_VALUE_STRING, op->identity_id);
	set_text(&f[n++], "target_uid", SANDBOX_VALUE_STRING, target_uid);
	set_number(&f[n++], "attempt", op->attempt, true);
	set_text(&f[n++], "shadow", SANDBOX_VALUE_JSON, op->shadow);
	if (phase == HOOK_AFTER)
	{
		set_number(&hc->outcome[0], "status", op->outcome.http_status, op->outcome.http_status > 0);
		set_text(&hc->outcome[1], "target_uid", SANDBOX_VALUE_STRING, target_uid);
		set_text(&hc->outcome[2], "body", SANDBOX_VALUE_JSON, op->outcome.result);
	}
	else if (phase == HOOK_ON_ERROR)
	{
		set_text(&hc->outcome[0], "message", SANDBOX_VALUE_STRING, op->outcome.error);
		set_number(&hc->outcome[1], "http_status", op->outcome.http_status, op->outcome.http_status > 0);
		hc->outcome[2].name = "permanent";
		hc->outcome[2].kind = SANDBOX_VALUE_BOOLEAN;
		hc->outcome[2].boolean = op->outcome.kind == OUTCOME_DEAD;
	}
	if (phase != HOOK_BEFORE)
	{
		f[n].name = phase == HOOK_AFTER ? "response" : "error";
		f[n].kind = SANDBOX_VALUE_FIELDS;
		f[n].fields = hc->outcome;
		f[n++].nfields = OUTCOME_FIELDS;
	}
	Assert(n <= CONTEXT_FIELDS);
	hc->nfields = n;
}

/* A member a hook returned, or NULL. */
static const SandboxValue *
member(const SandboxCall *call, const char *name)
{
	for (int i = 0; i < call->nmembers; i++)
		if (strcmp(call->members[i].name, name) == 0)
			return &call->members[i];
	return NULL;
}

static bool
only_members(const SandboxCall *call, const char *const *allowed)
{
	if (call->more_members)
		return false;
	for (int i = 0; i < call->nmembers; i++)
	{
		bool		known = false;

		for (int k = 0; allowed[k] && !known; k++)
			known = strcmp(call->members[i].name, allowed[k]) == 0;
		if (!known)
			return false;
	}
	return true;
}

static bool
is_object(const SandboxValue *value)
{
	return value->kind == SANDBOX_VALUE_JSON && value->text[0] == '{';
}

/* A member's text in op->cxt, in the server's encoding. */
static char *
member_text(WorkOp *op, const SandboxCall *call, const SandboxValue *value)
{
	MemoryContext old = MemoryContextSwitchTo(op->cxt);
	char	   *text = pg_any_to_server(value->text, strlen(value->text), PG_UTF8);

	/* a detached call's answer lives in op->cxt already (HookAhead) */
	if (text == value->text && !call->detached)
		text = pstrdup(text);
	MemoryContextSwitchTo(old);
	return text;
}

/*
 * Apply what a before hook returned.  Sets verdict->error (and returns
 * false) when the answer is not one a before hook may give.
 */
static bool
apply_before(WorkOp *op, const SandboxCall *call, HookVerdict *verdict)
{
	static const char *const keys[] = {"attributes", "skip", "reason", NULL};
	const SandboxValue *skip = member(call, "skip");
	const SandboxValue *attributes = member(call, "attributes");

	if (!only_members(call, keys) || (skip && skip->kind != SANDBOX_VALUE_BOOLEAN) ||
		(attributes && !is_object(attributes)))
	{
		verdict->error = pstrdup("a before hook returns {attributes: {...}}, {skip: true, reason: \"...\"} or nothing");
		return false;
	}
	if (skip && skip->boolean)
	{
		const SandboxValue *reason = member(call, "reason");

		op->outcome.kind = OUTCOME_SKIPPED;
		op->outcome.error = reason && reason->kind == SANDBOX_VALUE_STRING && reason->text[0] != '\0' ?
			member_text(op, call, reason) :
			MemoryContextStrdup(op->cxt, "skipped by a before hook");
		op->hook_verdict = true;
		verdict->outcome = "skip";
		return true;
	}
	if (attributes)
	{
		op->attributes = member_text(op, call, attributes);
		op->attributes_replaced = true;
		verdict->outcome = "attributes";
	}
	return true;
}

static bool
apply_after(WorkOp *op, const SandboxCall *call, HookVerdict *verdict)
{
	static const char *const keys[] = {"shadow_attributes", NULL};
	const SandboxValue *attributes = member(call, "shadow_attributes");

	if (!only_members(call, keys) || (attributes && !is_object(attributes)))
	{
		verdict->error = pstrdup("an after hook returns {shadow_attributes: {...}} or nothing");
		return false;
	}
	if (attributes)
	{
		op->shadow_attributes = member_text(op, call, attributes);
		verdict->outcome = "shadow_attributes";
	}
	return true;
}

static bool
apply_on_error(WorkOp *op, const SandboxCall *call, HookVerdict *verdict)
{
	static const char *const keys[] = {"retry", NULL};
	const SandboxValue *retry = member(call, "retry");

	if (!only_members(call, keys) || (retry && retry->kind != SANDBOX_VALUE_BOOLEAN))
	{
		verdict->error = pstrdup("an on_error hook returns {retry: false} or nothing");
		return false;
	}
	if (retry && !retry->boolean && op->outcome.kind != OUTCOME_DEAD)
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

/*
 * Returns false when the answer is not acceptable (verdict->error set).
 * The sandbox split an object into its members; anything else comes as
 * JSON text.
 */
static bool
apply_answer(WorkOp *op, HookPhase phase, const SandboxCall *call, HookVerdict *verdict)
{
	const char *result = call->result;

	if (result == NULL || strcmp(result, "null") == 0)
		return true;
	if (strcmp(result, "{}") != 0)
	{
		verdict->error = psprintf("the hook returned %s, not an object", result[0] == '"' ? "a string" :
								  result[0] == '[' ? "an array" : "a scalar");
		return false;
	}
	if (phase == HOOK_BEFORE)
		return apply_before(op, call, verdict);
	if (phase == HOOK_AFTER)
		return apply_after(op, call, verdict);
	return apply_on_error(op, call, verdict);
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

static void
prepare_call(SandboxCall *call, const Hook *hook, const HookContext *context)
{
	call->cache_key = hook->cache_key;
	call->script = hook->script;
	call->fields = context->fields;
	call->nfields = context->nfields;
	call->static_names = true;	/* build_context()'s names */
	call->split_result = true;
	call->timeout_ms = hook->timeout_ms;
	call->memory_kb = hook->memory_kb;
}

/*
 * Run one hook, or take the answer the hook thread found for it (ahead,
 * made for this very version of the hook).  Returns false when the
 * operation's fate is sealed (a skip, a failure, a shutdown) and later
 * hooks of the phase must not run.
 */
static bool
run_hook(WorkOp *op, const Hook *hook, const HookAhead *ahead)
{
	SandboxCall local = {0};
	const SandboxCall *call = &local;
	HookVerdict verdict = {"unchanged", NULL};
	OutcomeKind before = op->outcome.kind;

	if (ahead != NULL && strcmp(ahead->cache_key, hook->cache_key) == 0)
		call = &ahead->call;
	else
	{
		HookContext context;

		build_context(&context, op, hook->phase);
		prepare_call(&local, hook, &context);
		sandbox_run(&local);
	}

	if (call->status == SANDBOX_CANCELLED)
	{
		/* the worker is stopping: the operation goes back untouched */
		op->outcome.kind = OUTCOME_RELEASE;
		op->outcome.retry_after_ms = 0;
		op->hook_verdict = true;
		return false;
	}
	if (call->status != SANDBOX_OK || !apply_answer(op, hook->phase, call, &verdict))
		hook_failed(op, hook, call, &verdict);
	hook_history_add(op, hook, call->duration_us, verdict.outcome, verdict.error);
	return op->outcome.kind == before || op->outcome.kind == OUTCOME_NONE;
}

static void
run_phase(WorkOp *op, HookPhase phase)
{
	MemoryContext old = CurrentMemoryContext;
	const Hook **hooks;
	int			count;
	HookAhead  *ahead = phase == HOOK_BEFORE ? op->hook_ahead : NULL;

	op->hook_ahead = NULL;
	hooks = hook_cache_lookup(&op->tenant_id, &op->connector_id, op->object_class, phase, &count);
	PG_TRY();
	{
		for (int i = 0; i < count; i++)
			if (!run_hook(op, hooks[i], i == 0 ? ahead : NULL))
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

static void
release_ahead(void *arg)
{
	sandbox_call_release(&((HookAhead *) arg)->call);
}

SandboxCall *
hook_run_prepare_ahead(WorkOp *op)
{
	const Hook **hooks;
	int			count;
	HookAhead  *ahead;
	MemoryContextCallback *release;
	MemoryContext old;

	if (!op->has_hooks)
		return NULL;
	hooks = hook_cache_lookup(&op->tenant_id, &op->connector_id, op->object_class, HOOK_BEFORE, &count);
	if (count == 0)
		return NULL;

	/*
	 * Everything the call points to lives in op->cxt, untouched until the
	 * thread is done: the hook cache may be reloaded meanwhile.
	 */
	old = MemoryContextSwitchTo(op->cxt);
	ahead = palloc(sizeof(HookAhead));
	memset(ahead, 0, offsetof(HookAhead, buffer));
	build_context(&ahead->context, op, HOOK_BEFORE);
	prepare_call(&ahead->call, hooks[0], &ahead->context);
	strlcpy(ahead->cache_key, hooks[0]->cache_key, sizeof(ahead->cache_key));
	ahead->call.cache_key = ahead->cache_key;
	ahead->call.script = pstrdup(hooks[0]->script);
	ahead->call.detached = true;
	ahead->call.buffer = ahead->buffer;
	ahead->call.buffer_size = sizeof(ahead->buffer);
	release = palloc(sizeof(MemoryContextCallback));
	release->func = release_ahead;
	release->arg = ahead;
	MemoryContextRegisterResetCallback(op->cxt, release);
	MemoryContextSwitchTo(old);

	op->hook_ahead = ahead;
	return &ahead->call;
}

SandboxCall *
hook_run_ahead_call(WorkOp *op)
{
	Assert(op->hook_ahead != NULL);
	return &op->hook_ahead->call;
}
