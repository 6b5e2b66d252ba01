/*-------------------------------------------------------------------------
 *
 * rest.c
 *	  The "rest" connector protocol: xprov's own JSON-over-HTTP protocol for
 *	  connectors written in any language (test/targets/REST_PROTOCOL.md).
 *
 * Exports rest_protocol.  Every operation is one exchange:
 *
 *	POST {base_url}/execute
 *	{"protocol": 1, "operation_id": ..., "type": ..., "object_class": ...,
 *	 "uid": ..., "identity_id": ..., "attributes": {...}, "attempt": n}
 *
 * answered by 200/201 {"uid": ..., "attributes": {...}} (204 for a delete)
 * or by an error status with {"error": "...", "retryable": ...}.  The status
 * decides; a delete answered 404 is done.  The server is idempotent by
 * operation id, so an answer that cannot be read is retried.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <cjson/cJSON.h>

#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "utils/json.h"

#include "connector.h"
#include "protocol.h"

#define REST_PROTOCOL_VERSION 1
#define REST_PATH "/execute"

/* ------------------------------------------------------------------------
 * Request
 */

static void
append_nullable(StringInfo buf, const char *key, const char *value)
{
	appendStringInfo(buf, ", \"%s\": ", key);
	if (value != NULL)
		escape_json(buf, value);
	else
		appendStringInfoString(buf, "null");
}

/*
 * The attributes are embedded as the JSON text they arrived as (jsonb's
 * output), not re-serialised through cJSON, whose doubles would round large
 * integers such as employee numbers.  They are checked to be an object
 * first, since a hook may have produced them.
 */
static bool
attributes_are_object(const char *attributes)
{
	cJSON	   *parsed = cJSON_Parse(attributes);
	bool		ok = cJSON_IsObject(parsed);

	cJSON_Delete(parsed);
	return ok;
}

static char *
request_body(const WorkOp *op)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfo(&buf, "{\"protocol\": %d", REST_PROTOCOL_VERSION);
	append_nullable(&buf, "operation_id", op->id_text);
	append_nullable(&buf, "type", op_type_name(op->type));
	append_nullable(&buf, "object_class", op->object_class);
	append_nullable(&buf, "uid", op->target_uid);
	append_nullable(&buf, "identity_id", op->identity_id);
	appendStringInfo(&buf, ", \"attributes\": %s", op->attributes ? op->attributes : "{}");
	appendStringInfo(&buf, ", \"attempt\": %d}", op->attempt);
	return buf.data;
}

static bool
rest_begin(WorkOp *op)
{
	HttpRequest *request;

	if (op->attributes != NULL && !attributes_are_object(op->attributes))
	{
		op->outcome.kind = OUTCOME_DEAD;
		op->outcome.error = pstrdup("attributes are not a JSON object");
		return false;
	}
	request = protocol_request(op, "POST", REST_PATH, NULL);
	request->body = request_body(op);
	request->content_type = "application/json";
	request->accept = "application/json";
	op->step = 1;
	return true;
}

/* ------------------------------------------------------------------------
 * Response
 */

/* The response as a JSON object, or NULL (caller cJSON_Deletes it). */
static cJSON *
parse_object(const HttpResponse *response)
{
	cJSON	   *parsed;

	if (response->body == NULL || response->body_truncated)
		return NULL;
	parsed = cJSON_ParseWithLength(response->body, response->body_len);
	if (parsed != NULL && !cJSON_IsObject(parsed))
	{
		cJSON_Delete(parsed);
		parsed = NULL;
	}
	return parsed;
}

/* "METHOD /path" of the request, for error texts. */
static char *
exchange_name(const WorkOp *op)
{
	const char *path = op->connector->base_url;
	const char *scheme_end = strstr(path, "://");
	const char *slash = scheme_end ? strchr(scheme_end + 3, '/') : NULL;

	return psprintf("POST %s%s", slash ? slash : "", REST_PATH);
}

/* A non-empty string member of the reply, or NULL. */
static const char *
reply_string(const cJSON *reply, const char *key)
{
	const cJSON *item = reply ? cJSON_GetObjectItemCaseSensitive(reply, key) : NULL;

	return (cJSON_IsString(item) && item->valuestring[0] != '\0') ? item->valuestring : NULL;
}

static void
complete(WorkOp *op, const HttpResponse *response, const cJSON *reply)
{
	const char *uid = reply_string(reply, "uid");
	OpOutcome  *outcome = &op->outcome;

	outcome->kind = OUTCOME_COMPLETED;
	outcome->http_status = (int) response->status;
	outcome->error = NULL;
	outcome->retry_after_ms = -1;
	outcome->unlinked = (op->type == OP_DELETE);
	/* without a uid in the answer the account keeps the one it has */
	if (uid != NULL)
		outcome->target_uid = pstrdup(uid);
	else if (op->target_uid != NULL)
		outcome->target_uid = pstrdup(op->target_uid);

	/* kept as the operation's result: must be storable as jsonb */
	if (reply != NULL && pg_verifymbstr(response->body, response->body_len, true))
		outcome->result = pnstrdup(response->body, response->body_len);
}

/*
 * A 2xx that says nothing usable is a protocol error, which the protocol
 * makes transient (REST_PROTOCOL.md §2): the retry carries the same
 * operation id, so the server answers it from its idempotency store.
 */
static void
retry_unreadable(WorkOp *op, const HttpResponse *response, const char *why)
{
	OpOutcome  *outcome = &op->outcome;

	outcome->kind = OUTCOME_RETRY;
	outcome->http_status = (int) response->status;
	outcome->retry_after_ms = -1;
	outcome->error = psprintf("%s: HTTP %ld with %s", exchange_name(op), response->status, why);
}

/* 200/201, or 204 with no body for a delete. */
static void
success(WorkOp *op, const HttpResponse *response, const cJSON *reply)
{
	if (reply == NULL && op->type == OP_DELETE && response->body_len == 0 &&
		!response->body_truncated)
		complete(op, response, NULL);
	else if (reply == NULL)
		retry_unreadable(op, response, response->body_truncated ?
						 "a response larger than xprov.max_response_size" :
						 "no JSON object in the response");
	else if (op->type == OP_CREATE && reply_string(reply, "uid") == NULL)
		retry_unreadable(op, response, "no uid in the response to a create");
	else
		complete(op, response, reply);
}

/*
 * An error answer.  The status decides what happens (REST_PROTOCOL.md §6:
 * "retryable" must agree with it, and is not consulted); the error text
 * quotes the body's "error" message rather than the whole body.
 */
static void
failure(WorkOp *op, const HttpResponse *response, const cJSON *reply)
{
	const char *message = reply_string(reply, "error");
	HttpResponse shown = *response;

	if (message != NULL)
	{
		shown.body = (char *) message;
		shown.body_len = strlen(message);
	}
	protocol_classify(op, &shown, exchange_name(op));
}

static bool
rest_resume(WorkOp *op, const HttpResponse *response)
{
	cJSON	   *reply;

	if (response->transport_failed)
	{
		protocol_classify(op, response, exchange_name(op));
		return false;
	}

	reply = parse_object(response);
	PG_TRY();
	{
		if (response->status >= 200 && response->status < 300)
			success(op, response, reply);
		else if (response->status == 404 && op->type == OP_DELETE)
			complete(op, response, NULL);	/* already gone */
		else
			failure(op, response, reply);
	}
	PG_FINALLY();
	{
		cJSON_Delete(reply);
	}
	PG_END_TRY();
	return false;
}

const Protocol rest_protocol = {
	.name = "rest",
	.begin = rest_begin,
	.resume = rest_resume,
};
