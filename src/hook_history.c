/*-------------------------------------------------------------------------
 *
 * hook_history.c
 *	  What the hooks of an attempt did: noted by the worker, stored with the
 *	  attempt, read back as JSON (see hook_history.h).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "common/base64.h"
#include "lib/stringinfo.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/syscache.h"

#include "hook_history.h"

PG_FUNCTION_INFO_V1(xprov_hook_history);

/* base64 of a uuid without its "==" padding */
#define HOOK_ID_B64_LEN 22

/* Outcomes and their letters in the stored form. */
static const char *const outcome_names[] = {
	"unchanged", "attributes", "skip", "shadow_attributes", "no_retry", "ignored", "failed", NULL
};
static const char outcome_letters[] = "uashnif";

static const char phase_letters[] = "bae";	/* in HookPhase order */

void
hook_history_add(WorkOp *op, const Hook *hook, int64 duration_us, const char *outcome,
				 const char *error)
{
	HookRun    *run;

	if (op->hook_runs == NULL)
		op->hook_runs = MemoryContextAlloc(op->cxt, sizeof(HookRun) * 4);
	else if (op->nhook_runs >= 4 && (op->nhook_runs & (op->nhook_runs - 1)) == 0)
		op->hook_runs = repalloc(op->hook_runs, sizeof(HookRun) * op->nhook_runs * 2);
	run = &op->hook_runs[op->nhook_runs++];
	run->hook_id = hook->id;
	run->version = hook->version;
	run->phase = hook->phase;
	run->duration_us = duration_us;
	run->outcome = outcome;
	run->error = error ? MemoryContextStrdup(op->cxt, error) : NULL;
}

static char
outcome_letter(const char *outcome)
{
	for (int i = 0; outcome_names[i]; i++)
		if (strcmp(outcome_names[i], outcome) == 0)
			return outcome_letters[i];
	elog(ERROR, "hook outcome \"%s\" has no letter", outcome);
	return '?';
}

static void
append_uuid(StringInfo out, const pg_uuid_t *uuid)
{
	char		text[UUID_TEXT_LEN];

	uuid_to_text(text, uuid);
	appendBinaryStringInfo(out, text, UUID_TEXT_LEN - 1);
}

static void
append_run_json(StringInfo out, const pg_uuid_t *hook_id, int version, HookPhase phase,
				int64 duration_us, const char *outcome, const char *error)
{
	char		number[MAXINT8LEN + 1];

	appendStringInfoString(out, "{\"hook_id\":\"");
	append_uuid(out, hook_id);
	appendStringInfoString(out, "\",\"version\":");
	appendBinaryStringInfo(out, number, pg_ltoa(version, number));
	appendStringInfoString(out, ",\"phase\":\"");
	appendStringInfoString(out, hook_phase_name(phase));
	appendStringInfoString(out, "\",\"duration_us\":");
	appendBinaryStringInfo(out, number, pg_lltoa(duration_us, number));
	appendStringInfoString(out, ",\"outcome\":\"");
	appendStringInfoString(out, outcome);
	appendStringInfoChar(out, '"');
	if (error)
	{
		appendStringInfoString(out, ",\"error\":");
		escape_json(out, error);
	}
	appendStringInfoChar(out, '}');
}

char *
hook_history_json(const WorkOp *op)
{
	StringInfoData out;

	if (op->nhook_runs == 0)
		return NULL;
	initStringInfo(&out);
	appendStringInfoChar(&out, '[');
	for (int i = 0; i < op->nhook_runs; i++)
	{
		const HookRun *run = &op->hook_runs[i];

		if (i > 0)
			appendStringInfoChar(&out, ',');
		append_run_json(&out, &run->hook_id, run->version, run->phase, run->duration_us,
						run->outcome, run->error);
	}
	appendStringInfoChar(&out, ']');
	return out.data;
}

/*
 * Whether this database reads the compact form: with xprov 0.1.0 still
 * installed (a new library before ALTER EXTENSION xprov UPDATE), the
 * attempt history reads histories as JSON.  Looked up once per transaction.
 */
static bool
compact_readable(void)
{
	static LocalTransactionId looked_up_in = InvalidLocalTransactionId;
	static bool readable = false;

	if (MyProc->lxid != looked_up_in)
	{
		Oid			namespace = get_namespace_oid("xprov", true);
		Oid			argtype = TEXTOID;

		readable = OidIsValid(namespace) &&
			SearchSysCacheExists3(PROCNAMEARGSNSP, CStringGetDatum("_hook_history"),
								  PointerGetDatum(buildoidvector(&argtype, 1)),
								  ObjectIdGetDatum(namespace));
		looked_up_in = MyProc->lxid;
	}
	return readable;
}

char *
hook_history_stored(const WorkOp *op)
{
	StringInfoData out;

	if (op->nhook_runs == 0)
		return NULL;
	for (int i = 0; i < op->nhook_runs; i++)
		if (op->hook_runs[i].error != NULL)
			return hook_history_json(op);
	if (!compact_readable())
		return hook_history_json(op);
	initStringInfo(&out);
	for (int i = 0; i < op->nhook_runs; i++)
	{
		const HookRun *run = &op->hook_runs[i];
		char		number[MAXINT8LEN + 1];
		char		id[32];

		if (i > 0)
			appendStringInfoChar(&out, ' ');
		appendStringInfoChar(&out, phase_letters[run->phase]);
		appendStringInfoChar(&out, outcome_letter(run->outcome));
		appendStringInfoChar(&out, ':');
		appendBinaryStringInfo(&out, number, pg_ltoa(run->version, number));
		appendStringInfoChar(&out, ':');
		appendBinaryStringInfo(&out, number, pg_lltoa(run->duration_us, number));
		appendStringInfoChar(&out, ':');
		if (pg_b64_encode((const char *) run->hook_id.data, UUID_LEN, id, sizeof(id)) != HOOK_ID_B64_LEN + 2)
			elog(ERROR, "could not encode a hook id in base64");
		appendBinaryStringInfo(&out, id, HOOK_ID_B64_LEN);
	}
	return out.data;
}

/* ---------------------------------------------------------------------
 * Reading it back
 */

static void
raise_invalid(const char *history)
{
	ereport(ERROR,
			errcode(ERRCODE_DATA_CORRUPTED),
			errmsg("invalid hook history \"%s\"", history),
			errdetail("A stored hook history is JSON or runs of the form <phase><outcome>:<version>:<duration_us>:<hook id>."));
}

/* A decimal number ending at a ':' (consumed); false if there is none. */
static bool
read_number(const char **p, int64 *value)
{
	char	   *end;

	if (!isdigit((unsigned char) **p))
		return false;
	errno = 0;
	*value = strtoi64(*p, &end, 10);
	if (errno != 0 || *end != ':')
		return false;
	*p = end + 1;
	return true;
}

/* One stored run at *p, appended to out as JSON; false if malformed. */
static bool
read_run(const char **p, StringInfo out)
{
	const char *phase = strchr(phase_letters, (*p)[0]);
	const char *outcome = (*p)[0] ? strchr(outcome_letters, (*p)[1]) : NULL;
	int64		version;
	int64		duration_us;
	char		b64[HOOK_ID_B64_LEN + 2];
	pg_uuid_t	hook_id;

	if (phase == NULL || *phase == '\0' || outcome == NULL || *outcome == '\0' || (*p)[2] != ':')
		return false;
	*p += 3;
	if (!read_number(p, &version) || version > PG_INT32_MAX || !read_number(p, &duration_us))
		return false;
	if (strspn(*p, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/") != HOOK_ID_B64_LEN ||
		((*p)[HOOK_ID_B64_LEN] != '\0' && (*p)[HOOK_ID_B64_LEN] != ' '))
		return false;
	memcpy(b64, *p, HOOK_ID_B64_LEN);
	memcpy(b64 + HOOK_ID_B64_LEN, "==", 2);
	if (pg_b64_decode(b64, sizeof(b64), (char *) hook_id.data, UUID_LEN) != UUID_LEN)
		return false;
	*p += HOOK_ID_B64_LEN;
	append_run_json(out, &hook_id, (int) version, (HookPhase) (phase - phase_letters), duration_us,
					outcome_names[outcome - outcome_letters], NULL);
	return true;
}

Datum
xprov_hook_history(PG_FUNCTION_ARGS)
{
	char	   *history = text_to_cstring(PG_GETARG_TEXT_PP(0));
	const char *p = history;
	StringInfoData json;

	if (history[0] == '[')
		return DirectFunctionCall1(jsonb_in, CStringGetDatum(history));
	initStringInfo(&json);
	appendStringInfoChar(&json, '[');
	while (*p)
	{
		if (p != history)
		{
			if (*p++ != ' ')
				raise_invalid(history);
			appendStringInfoChar(&json, ',');
		}
		if (!read_run(&p, &json))
			raise_invalid(history);
	}
	appendStringInfoChar(&json, ']');
	return DirectFunctionCall1(jsonb_in, CStringGetDatum(json.data));
}
