/*-------------------------------------------------------------------------
 *
 * protocol.c
 *	  What the connector protocols share: building a request and the
 *	  default classification of a response.
 *
 * The classification decides how the queue treats a failure, so it errs on
 * the side of retrying: only answers that say the request itself is wrong
 * (4xx other than 401, 403, 408 and 429) dead-letter an operation, and only
 * answers that say the whole connector is unusable (cannot connect, bad
 * credentials) open its circuit breaker.
 *
 * Error texts end up in the attempt history, which application roles can
 * read: they quote the response body (the target's own words) but never a
 * request header, where credentials live.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"

#include "connector.h"
#include "protocol.h"

/* How much of a response body an error text quotes. */
#define ERROR_BODY_BYTES 300

const char *
op_type_name(OpType type)
{
	switch (type)
	{
		case OP_CREATE:
			return "create";
		case OP_UPDATE:
			return "update";
		case OP_DELETE:
			return "delete";
		case OP_ENABLE:
			return "enable";
		case OP_DISABLE:
			return "disable";
	}
	return "unknown";
}

/*
 * The request is op->request as well, so that a protocol can build it and
 * return true in one step.
 */
HttpRequest *
protocol_request(WorkOp *op, const char *method, const char *path,
				 const char *query)
{
	MemoryContext old = MemoryContextSwitchTo(op->cxt);
	HttpRequest *request = palloc0(sizeof(HttpRequest));

	request->method = method;
	request->url = psprintf("%s%s%s%s", op->connector->base_url, path,
							query ? "?" : "", query ? query : "");
	request->owner = op;
	op->request = request;
	MemoryContextSwitchTo(old);
	return request;
}

/*
 * Up to ERROR_BODY_BYTES of a body fit to be stored as text: whole
 * characters of the database encoding only, control characters and invalid
 * bytes replaced, whitespace runs collapsed.
 */
static char *
body_excerpt(const char *body, size_t len)
{
	int			encoding = GetDatabaseEncoding();
	StringInfoData buf;
	size_t		i = 0;

	initStringInfo(&buf);
	while (i < len && buf.len < ERROR_BODY_BYTES)
	{
		unsigned char c = (unsigned char) body[i];
		int			n;

		if (c < 0x20 || c == 0x7f)
		{
			if (buf.len > 0 && buf.data[buf.len - 1] != ' ')
				appendStringInfoChar(&buf, ' ');
			i++;
			continue;
		}
		if (c < 0x80)
		{
			appendStringInfoChar(&buf, (char) c);
			i++;
			continue;
		}
		n = pg_encoding_verifymbchar(encoding, body + i, (int) Min(len - i, 8));
		if (n <= 0 || buf.len + n > ERROR_BODY_BYTES)
		{
			appendStringInfoChar(&buf, '?');
			i++;
			continue;
		}
		appendBinaryStringInfo(&buf, body + i, n);
		i += n;
	}
	while (buf.len > 0 && buf.data[buf.len - 1] == ' ')
		buf.data[--buf.len] = '\0';
	if (i < len)
		appendStringInfoString(&buf, "...");
	return buf.data;
}

static char *
describe_response(const HttpResponse *response, const char *what)
{
	if (response->transport_failed)
		return psprintf("%s: %s", what, response->error);
	if (response->body != NULL && response->body_len > 0)
		return psprintf("%s: HTTP %ld: %s", what, response->status,
						body_excerpt(response->body, response->body_len));
	return psprintf("%s: HTTP %ld", what, response->status);
}

static OutcomeKind
classify(const HttpResponse *response)
{
	long		status = response->status;

	/*
	 * Refused by the URL policy: no retry can succeed until a superuser
	 * widens xprov.allowed_hosts or the connector's URL changes, and
	 * retrying would hold the subject's later operations meanwhile.  Not
	 * the connector's failure either: pausing it would probe forever.
	 */
	if (response->refused)
		return OUTCOME_DEAD;
	if (response->transport_failed)
		return response->connect_failed ? OUTCOME_CONNECTOR : OUTCOME_RETRY;
	if (status >= 200 && status < 300)
		return OUTCOME_COMPLETED;
	if (status == 401 || status == 403)
		return OUTCOME_CONNECTOR;
	if (status == 408 || status == 429 || status >= 500)
		return OUTCOME_RETRY;
	/* a redirect is not followed: the base URL is wrong for every operation */
	if (status >= 300 && status < 400)
		return OUTCOME_CONNECTOR;
	if (status >= 400 && status < 500)
		return OUTCOME_DEAD;
	return OUTCOME_RETRY;		/* 1xx as a final answer: a broken exchange */
}

void
protocol_classify(WorkOp *op, const HttpResponse *response, const char *what)
{
	MemoryContext old = MemoryContextSwitchTo(op->cxt);
	OpOutcome  *outcome = &op->outcome;

	outcome->kind = classify(response);
	outcome->http_status = (int) response->status;
	outcome->retry_after_ms = -1;
	outcome->error = NULL;
	if (outcome->kind == OUTCOME_RETRY && !response->transport_failed)
		outcome->retry_after_ms = response->retry_after_ms;
	if (outcome->kind != OUTCOME_COMPLETED)
		outcome->error = describe_response(response, what);
	MemoryContextSwitchTo(old);
}

char *
work_op_attributes(WorkOp *op)
{
	if (op->attributes == NULL && op->attributes_jsonb != NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(op->cxt);

		op->attributes = JsonbToCString(NULL, op->attributes_jsonb, op->attributes_jsonb_size);
		MemoryContextSwitchTo(old);
	}
	return op->attributes;
}

void
op_retry_after_error(WorkOp *op, const char *what)
{
	ErrorData  *edata;

	MemoryContextSwitchTo(op->cxt);
	edata = CopyErrorData();
	FlushErrorState();
	op->outcome.kind = OUTCOME_RETRY;
	op->outcome.retry_after_ms = -1;
	op->outcome.error = what ? psprintf("%s: %s", what, edata->message) : edata->message;
}
