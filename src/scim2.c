/*-------------------------------------------------------------------------
 *
 * scim2.c
 *	  The scim2 connector protocol: a SCIM 2.0 client (RFC 7643/7644).
 *
 * Each operation is a small state machine over its WorkOp.  begin() picks
 * the first request, resume() reads each response and either sends the
 * next request or settles op->outcome.  Steps:
 *
 *	create	[the database's correlation linked an account -> converge it]
 *			LOOKUP (GET <endpoint>?filter=<attr> eq "<value>")
 *			  0 accounts -> POST; 1 -> the worker checks the account is
 *			  not linked to someone else (AWAIT_LINK_CHECK), then link and
 *			  converge (PATCH/PUT); more -> parked with a correlation case
 *			  (ambiguous: never pick one)
 *			  (no match value in the attributes: POST at once)
 *			POST: 2xx with an id -> completed; 409 uniqueness (or no
 *			  scimType) -> RELOOKUP and link if exactly one account matches
 *			  and passes the check, else dead with the provider's detail; 2xx without an id ->
 *			  retry (the next attempt looks up first)
 *	update	[FIND when target_uid is unknown] -> PATCH <endpoint>/<uid>;
 *			  405/501 or update_method "put" -> READ (GET) + merge + PUT with
 *			  If-Match; 412 -> READ again, at most MAX_PUT_REDO times;
 *			  404 -> dead (retry while linking a create: it looks up again)
 *	enable,	the same as update with {"active": true|false}
 *	disable
 *	delete	[FIND] -> DELETE <endpoint>/<uid>; 200/204/404 -> completed,
 *			  unlinked; FIND finding nothing -> completed, nothing to delete
 *
 * The correlation before a create is what makes a retried create safe: a
 * POST whose response was lost is found by the next attempt's LOOKUP and
 * linked instead of created twice.  For the same reason a 409 is never
 * retried blindly (peers loop on it forever): it is looked up and linked,
 * or dead-lettered with the provider's detail.  A create ignores any uid
 * the subject was linked to before; the lookup finds that account if it
 * still exists.  A lookup's single hit must carry the match value: a
 * provider that ignores filters must not make us link a stranger's account.
 *
 * Results: the resource the provider returned (POST, PATCH or PUT 200),
 * with "linked": true when a create linked an existing account.
 *
 * Responses this protocol gives no special meaning go to protocol_classify();
 * a SCIM error body (scimType, detail) then replaces its error text.
 *
 * Nothing here raises an error except palloc's out-of-memory: the worker
 * calls us with no transaction open.  cJSON allocates with malloc, so every
 * tree is freed before returning, and strings kept across steps are copied
 * into op->cxt.  Error texts never contain attribute values (passwords may
 * be among them) except the match value, which names the account.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <cjson/cJSON.h>

#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"

#include "connector.h"
#include "http.h"
#include "protocol.h"
#include "url_policy.h"
#include "work_op.h"

#define SCIM_CONTENT_TYPE	"application/scim+json"
#define SCIM_USER_SCHEMA	"urn:ietf:params:scim:schemas:core:2.0:User"
#define SCIM_GROUP_SCHEMA	"urn:ietf:params:scim:schemas:core:2.0:Group"
#define SCIM_PATCH_SCHEMA	"urn:ietf:params:scim:api:messages:2.0:PatchOp"

/* Results larger than this are left out: the queue is not a blob store. */
#define MAX_RESULT_BYTES	(64 * 1024)

/* How many times a PUT that met 412 Precondition Failed is redone. */
#define MAX_PUT_REDO		3

/* How many bytes of a provider's text an error message quotes. */
#define MAX_DETAIL_CHARS	400

typedef enum ScimStep
{
	STEP_NONE = 0,
	STEP_LOOKUP,				/* create: correlate before POST */
	STEP_POST,
	STEP_RELOOKUP,				/* create: correlate after 409 */
	STEP_FIND,					/* update/delete/...: find the unknown uid */
	STEP_PATCH,
	STEP_READ,					/* GET the resource for a PUT */
	STEP_PUT,
	STEP_DELETE
} ScimStep;

typedef struct ScimState
{
	const char *endpoint;		/* e.g. "/Users" */
	const char *match_attr;		/* e.g. "userName" */
	char	   *match_value;	/* NULL: the attributes have none */
	char	   *uid;			/* the account's id, once known */
	char	   *uid_path;		/* endpoint + "/" + escaped uid */
	bool		linked;			/* create found an existing account */
	char	   *lookup_resource;	/* create: the linked account as found */
	bool		patch_unsupported;	/* this provider answered 405/501 */
	char	   *etag;			/* version of the resource READ got */
	char	   *put_body;		/* merged resource for the PUT */
	char	   *conflict;		/* create: the provider's words on its 409 */
	char	   *what;			/* "METHOD path" of the request in flight */
} ScimState;

/* Outcome of a correlation lookup. */
typedef enum LookupResult
{
	LOOKUP_NONE,
	LOOKUP_ONE,
	LOOKUP_MANY,
	LOOKUP_FAILED				/* op->outcome is set */
} LookupResult;

static bool scim2_begin(WorkOp *op);
static bool scim2_resume(WorkOp *op, const HttpResponse *response);

const Protocol scim2_protocol = {
	.name = "scim2",
	.begin = scim2_begin,
	.resume = scim2_resume,
};

static bool start_modify(WorkOp *op);

/* ---------------------------------------------------------------- helpers */

static inline ScimState *
scim_state(WorkOp *op)
{
	return (ScimState *) op->state;
}

/* Copy a malloc'd cJSON print into op->cxt and free it. */
static char *
json_take(char *printed)
{
	char	   *copy;

	if (printed == NULL)
		ereport(ERROR,
				errcode(ERRCODE_OUT_OF_MEMORY),
				errmsg("out of memory"));
	copy = pstrdup(printed);
	cJSON_free(printed);
	return copy;
}

static cJSON *
json_check(cJSON *item)
{
	if (item == NULL)
		ereport(ERROR,
				errcode(ERRCODE_OUT_OF_MEMORY),
				errmsg("out of memory"));
	return item;
}

static void
json_add(cJSON *object, const char *key, cJSON *item)
{
	if (!cJSON_AddItemToObject(object, key, json_check(item)))
		ereport(ERROR,
				errcode(ERRCODE_OUT_OF_MEMORY),
				errmsg("out of memory"));
}

static void
json_append(cJSON *array, cJSON *item)
{
	if (!cJSON_AddItemToArray(array, json_check(item)))
		ereport(ERROR,
				errcode(ERRCODE_OUT_OF_MEMORY),
				errmsg("out of memory"));
}

/*
 * JSON text as a tree, or NULL when it is not JSON.  Trailing bytes after
 * the value are refused (cJSON would stop before them): such a body is not
 * JSON to PostgreSQL either.
 */
static cJSON *
parse_json(const char *text, size_t len)
{
	const char *end = NULL;
	cJSON	   *tree = cJSON_ParseWithLengthOpts(text, len, &end, false);

	while (tree != NULL && end < text + len)
	{
		if (!isspace((unsigned char) *end++))
		{
			cJSON_Delete(tree);
			return NULL;
		}
	}
	return tree;
}

/* A response body as a JSON tree, or NULL when there is none or it is not JSON. */
static cJSON *
parse_body(const HttpResponse *response)
{
	if (response->body == NULL || response->body_len == 0 || response->body_truncated)
		return NULL;
	return parse_json(response->body, response->body_len);
}

/*
 * Text from a provider that we keep (an id, a version) must be valid in the
 * database encoding, or storing it fails, and free of control characters,
 * which could split the header it is sent back in.
 */
static bool
is_clean_text(const char *text)
{
	for (const unsigned char *p = (const unsigned char *) text; *p; p++)
		if (*p < 0x20 || *p == 0x7F)
			return false;
	return pg_verifymbstr(text, strlen(text), true);
}

/* Follow a dotted attribute path ("name.familyName"), names case-insensitive as in SCIM. */
static const cJSON *
json_path(const cJSON *object, const char *path)
{
	const char *part = path;

	while (object != NULL && cJSON_IsObject(object))
	{
		const char *dot = strchr(part, '.');
		char	   *name;
		const cJSON *child;

		/* a member whose name has a dot in it wins over a sub-attribute */
		if (dot == NULL || cJSON_GetObjectItem(object, part) != NULL)
			return cJSON_GetObjectItem(object, part);
		name = pnstrdup(part, dot - part);
		child = cJSON_GetObjectItem(object, name);
		pfree(name);
		object = child;
		part = dot + 1;
	}
	return NULL;
}

static bool
is_reserved_attribute(const char *name)
{
	/* the provider owns these; a client never writes them */
	return pg_strcasecmp(name, "schemas") == 0 ||
		pg_strcasecmp(name, "id") == 0 ||
		pg_strcasecmp(name, "meta") == 0;
}

/* Extension attributes are grouped under their schema URN. */
static bool
is_schema_urn(const char *name)
{
	return pg_strncasecmp(name, "urn:", 4) == 0;
}

/*
 * A SCIM filter compares with a JSON string literal (RFC 7644 §3.4.2.2), so
 * the value is escaped as JSON: quoting it any other way is how other
 * products miss existing accounts and create duplicates.  Non-ASCII UTF-8
 * passes through; the query encoding takes care of it.
 */
static void
append_filter_literal(StringInfo buf, const char *value)
{
	static const char specials[] = "\"\\\b\f\n\r\t";
	static const char letters[] = "\"\\bfnrt";

	appendStringInfoChar(buf, '"');
	for (const unsigned char *p = (const unsigned char *) value; *p; p++)
	{
		const char *special = strchr(specials, *p);

		if (special != NULL)
		{
			appendStringInfoChar(buf, '\\');
			appendStringInfoChar(buf, letters[special - specials]);
		}
		else if (*p < 0x20 || *p == 0x7F)
			appendStringInfo(buf, "\\u%04x", *p);
		else
			appendStringInfoChar(buf, (char) *p);
	}
	appendStringInfoChar(buf, '"');
}

/*
 * A provider's text fit for an error message: at most MAX_DETAIL_CHARS
 * bytes of whole characters, control characters as spaces and bytes that
 * are invalid in the database encoding as '?', as it is stored as text.
 */
static char *
clip_detail(const char *text)
{
	int			encoding = GetDatabaseEncoding();
	int			len = strlen(text);
	StringInfoData buf;
	int			i = 0;

	initStringInfo(&buf);
	while (i < len && buf.len < MAX_DETAIL_CHARS)
	{
		unsigned char c = (unsigned char) text[i];
		int			n = 1;

		if (c < 0x20 || c == 0x7F)
			appendStringInfoChar(&buf, ' ');
		else if (c < 0x80)
			appendStringInfoChar(&buf, (char) c);
		else if ((n = pg_encoding_verifymbchar(encoding, text + i, len - i)) > 0)
			appendBinaryStringInfo(&buf, text + i, n);
		else
		{
			appendStringInfoChar(&buf, '?');
			n = 1;
		}
		i += n;
	}
	if (i < len)
		appendStringInfoString(&buf, "...");
	return buf.data;
}

/* ---------------------------------------------------------------- outcomes */

static bool
finish(WorkOp *op, OutcomeKind kind, const HttpResponse *response, char *error)
{
	op->outcome.kind = kind;
	op->outcome.http_status = response ? (int) response->status : 0;
	op->outcome.error = error;
	op->outcome.retry_after_ms = -1;
	op->request = NULL;
	return false;
}

static bool
fail_dead(WorkOp *op, const HttpResponse *response, char *error)
{
	return finish(op, OUTCOME_DEAD, response, error);
}

static bool
fail_retry(WorkOp *op, const HttpResponse *response, char *error)
{
	return finish(op, OUTCOME_RETRY, response, error);
}

static bool
complete(WorkOp *op, const HttpResponse *response, char *target_uid, char *result,
		 bool unlinked)
{
	finish(op, OUTCOME_COMPLETED, response, NULL);
	op->outcome.target_uid = target_uid;
	op->outcome.result = result;
	op->outcome.unlinked = unlinked;
	return false;
}

/*
 * "HTTP 400 invalidValue: userName is required" from a SCIM error body
 * (RFC 7644 §3.12), or NULL when the body is not one.
 */
static char *
scim_error_text(const HttpResponse *response)
{
	cJSON	   *body = parse_body(response);
	const cJSON *scim_type;
	const cJSON *detail;
	StringInfoData buf;

	if (!cJSON_IsObject(body))
	{
		cJSON_Delete(body);
		return NULL;
	}
	scim_type = cJSON_GetObjectItem(body, "scimType");
	detail = cJSON_GetObjectItem(body, "detail");
	if (!cJSON_IsString(scim_type) && !cJSON_IsString(detail))
	{
		cJSON_Delete(body);
		return NULL;
	}
	initStringInfo(&buf);
	appendStringInfo(&buf, "HTTP %ld", response->status);
	if (cJSON_IsString(scim_type))
		appendStringInfo(&buf, " %s", clip_detail(scim_type->valuestring));
	if (cJSON_IsString(detail))
		appendStringInfo(&buf, ": %s", clip_detail(detail->valuestring));
	cJSON_Delete(body);
	return buf.data;
}

/* The scimType of an error body, palloc'd, or NULL. */
static char *
scim_error_type(const HttpResponse *response)
{
	cJSON	   *body = parse_body(response);
	const cJSON *scim_type = cJSON_GetObjectItem(body, "scimType");
	char	   *result = NULL;

	if (cJSON_IsString(scim_type))
		result = pstrdup(scim_type->valuestring);
	cJSON_Delete(body);
	return result;
}

/*
 * The shared classification, with the provider's SCIM error (scimType and
 * detail) in the error text when the body carries one.
 */
static bool
classify(WorkOp *op, const HttpResponse *response)
{
	ScimState  *st = scim_state(op);
	char	   *scim_error;

	op->request = NULL;
	protocol_classify(op, response, st->what);
	if (op->outcome.kind != OUTCOME_COMPLETED && !response->transport_failed &&
		(scim_error = scim_error_text(response)) != NULL)
		op->outcome.error = psprintf("%s: %s", st->what, scim_error);
	return false;
}

/* A 2xx body that does not parse as the resource we need: the provider misbehaved. */
static bool
fail_garbage(WorkOp *op, const HttpResponse *response, const char *expected)
{
	ScimState  *st = scim_state(op);

	return fail_retry(op, response,
					  psprintf("%s: HTTP %ld with a body that is not %s%s",
							   st->what, response->status, expected,
							   response->body_truncated ? " (truncated)" : ""));
}

/* ---------------------------------------------------------------- requests */

static bool
send_request(WorkOp *op, ScimStep step, const char *method, const char *path,
			 const char *query, char *body, char *if_match)
{
	ScimState  *st = scim_state(op);
	HttpRequest *request = protocol_request(op, method, path, query);

	request->accept = SCIM_CONTENT_TYPE;
	if (body != NULL)
	{
		request->body = body;
		request->content_type = SCIM_CONTENT_TYPE;
	}
	request->if_match = if_match;
	op->request = request;
	op->step = step;
	st->what = psprintf("%s %s", method, path);
	return true;
}

/* Called once the account's id is known: later requests address it. */
static void
set_uid(WorkOp *op, const char *uid)
{
	ScimState  *st = scim_state(op);
	StringInfoData path;

	st->uid = pstrdup(uid);
	initStringInfo(&path);
	appendStringInfo(&path, "%s/", st->endpoint);
	url_append_encoded(&path, uid);
	st->uid_path = path.data;
}

/*
 * GET <endpoint>?filter=<attr> eq "<value>".  count=2 is enough to tell
 * none, one and many apart; for groups the member list is left out, since
 * it can be huge and correlation never needs it.
 */
static bool
send_lookup(WorkOp *op, ScimStep step)
{
	ScimState  *st = scim_state(op);
	StringInfoData filter;
	StringInfoData query;

	initStringInfo(&filter);
	appendStringInfo(&filter, "%s eq ", st->match_attr);
	append_filter_literal(&filter, st->match_value);

	initStringInfo(&query);
	appendStringInfoString(&query, "filter=");
	url_append_encoded(&query, filter.data);
	appendStringInfoString(&query, "&count=2");
	if (pg_strcasecmp(op->object_class, "group") == 0)
		appendStringInfoString(&query, "&excludedAttributes=members");
	return send_request(op, step, "GET", st->endpoint, query.data, NULL, NULL);
}

/* ---------------------------------------------------------------- bodies */

/* The operation's attributes as a JSON object (malloc'd), or NULL if they are not one. */
static cJSON *
parse_attributes(const WorkOp *op)
{
	cJSON	   *attributes;

	if (op->attributes == NULL)
		return json_check(cJSON_CreateObject());
	attributes = cJSON_Parse(op->attributes);
	if (!cJSON_IsObject(attributes))
	{
		cJSON_Delete(attributes);
		return NULL;
	}
	return attributes;
}

/*
 * The attributes the operation wants the account to have, as JSON object
 * (malloc'd); a JSON null means "remove".  enable and disable only set
 * `active`: their attributes are not a change request.
 */
static cJSON *
desired_changes(const WorkOp *op)
{
	cJSON	   *changes;
	cJSON	   *item;
	cJSON	   *next;

	if (op->type == OP_ENABLE || op->type == OP_DISABLE)
	{
		changes = json_check(cJSON_CreateObject());
		json_add(changes, "active", cJSON_CreateBool(op->type == OP_ENABLE));
		return changes;
	}
	changes = parse_attributes(op);
	if (changes == NULL)
		return NULL;
	for (item = changes->child; item != NULL; item = next)
	{
		next = item->next;
		if (is_reserved_attribute(item->string))
			cJSON_Delete(cJSON_DetachItemViaPointer(changes, item));
	}
	return changes;
}

/* One operation: "remove" for a JSON null, else "replace" with the value. */
static void
add_patch_op(cJSON *operations, const char *path, const cJSON *value)
{
	cJSON	   *op = json_check(cJSON_CreateObject());

	json_append(operations, op);
	json_add(op, "op", cJSON_CreateString(cJSON_IsNull(value) ? "remove" : "replace"));
	json_add(op, "path", cJSON_CreateString(path));
	if (!cJSON_IsNull(value))
		json_add(op, "value", cJSON_Duplicate(value, true));
}

/*
 * The operations for one complex attribute: its null sub-attributes are
 * removed one by one; the others are replaced together, which leaves the
 * sub-attributes not mentioned alone (RFC 7644 §3.5.2.3).  Extension
 * attributes, grouped under their schema URN, are set one by one
 * ("urn:...:enterprise:2.0:User:department"): a path that is a bare URN is
 * not one that providers agree on.
 */
static void
add_complex_ops(cJSON *operations, const cJSON *item)
{
	bool		extension = is_schema_urn(item->string);
	cJSON	   *rest = json_check(cJSON_CreateObject());
	const cJSON *sub;

	cJSON_ArrayForEach(sub, item)
	{
		if (extension || cJSON_IsNull(sub))
		{
			char	   *path = psprintf("%s%c%s", item->string, extension ? ':' : '.', sub->string);

			add_patch_op(operations, path, sub);
			pfree(path);
		}
		else
			json_add(rest, sub->string, cJSON_Duplicate(sub, true));
	}
	if (rest->child != NULL)
		add_patch_op(operations, item->string, rest);
	cJSON_Delete(rest);
}

/*
 * A strict RFC 7644 §3.5.2 PatchOp: one lower-case "replace" per attribute,
 * with the attribute as its path, and one "remove" per JSON null.  Paths
 * rather than one path-less replace of an object, because removals need a
 * path anyway, path-less replace is where providers disagree most, and a
 * provider's invalidPath error then names the attribute.  Returns NULL when
 * there is nothing to change.
 */
static char *
build_patch(const cJSON *changes)
{
	cJSON	   *patch = json_check(cJSON_CreateObject());
	cJSON	   *schemas = json_check(cJSON_CreateArray());
	cJSON	   *operations = json_check(cJSON_CreateArray());
	const cJSON *item;
	char	   *text = NULL;

	json_add(patch, "schemas", schemas);
	json_append(schemas, cJSON_CreateString(SCIM_PATCH_SCHEMA));
	json_add(patch, "Operations", operations);
	cJSON_ArrayForEach(item, changes)
	{
		if (cJSON_IsObject(item))
			add_complex_ops(operations, item);
		else
			add_patch_op(operations, item->string, item);
	}
	if (cJSON_GetArraySize(operations) > 0)
		text = json_take(cJSON_PrintUnformatted(patch));
	cJSON_Delete(patch);
	return text;
}

/*
 * Apply changes to a resource the way the PATCH above would: a complex
 * value is merged sub-attribute by sub-attribute (RFC 7644 §3.5.2.3), any
 * other value replaces, null removes.  Names compare case-insensitively.
 */
static void
merge_changes(cJSON *resource, const cJSON *changes)
{
	const cJSON *item;

	cJSON_ArrayForEach(item, changes)
	{
		cJSON	   *current = cJSON_GetObjectItem(resource, item->string);

		if (cJSON_IsNull(item))
			cJSON_DeleteItemFromObject(resource, item->string);
		else if (cJSON_IsObject(item) && cJSON_IsObject(current))
			merge_changes(current, item);
		else if (current != NULL)
			cJSON_ReplaceItemViaPointer(resource, current, json_check(cJSON_Duplicate(item, true)));
		else
			json_add(resource, item->string, cJSON_Duplicate(item, true));
	}
}

/* Make sure `schemas` lists the core schema and every extension used. */
static void
add_schemas(cJSON *resource, const char *object_class)
{
	cJSON	   *schemas = cJSON_GetObjectItem(resource, "schemas");
	const cJSON *item;

	if (schemas != NULL)
		return;					/* the caller's choice stands */
	schemas = json_check(cJSON_CreateArray());
	if (pg_strcasecmp(object_class, "user") == 0)
		json_append(schemas, cJSON_CreateString(SCIM_USER_SCHEMA));
	else if (pg_strcasecmp(object_class, "group") == 0)
		json_append(schemas, cJSON_CreateString(SCIM_GROUP_SCHEMA));
	cJSON_ArrayForEach(item, resource)
	{
		if (is_schema_urn(item->string))
			json_append(schemas, cJSON_CreateString(item->string));
	}
	json_add(resource, "schemas", schemas);
}

/*
 * The POST body: the attributes without nulls (nothing to remove from an
 * account that does not exist yet) and without provider-owned members,
 * plus `schemas` when the caller gave none.  NULL if the attributes are not
 * an object.
 */
static char *
build_create(const WorkOp *op)
{
	cJSON	   *resource = parse_attributes(op);
	cJSON	   *item;
	cJSON	   *next;
	char	   *text;

	if (resource == NULL)
		return NULL;
	for (item = resource->child; item != NULL; item = next)
	{
		next = item->next;
		if (cJSON_IsNull(item) ||
			(is_reserved_attribute(item->string) && pg_strcasecmp(item->string, "schemas") != 0))
			cJSON_Delete(cJSON_DetachItemViaPointer(resource, item));
	}
	add_schemas(resource, op->object_class);
	text = json_take(cJSON_PrintUnformatted(resource));
	cJSON_Delete(resource);
	return text;
}

/*
 * A resource from a response as the operation's result: a JSON object of
 * sane size, else NULL.  It is printed again rather than kept as sent,
 * because cJSON accepts what PostgreSQL's JSON parser refuses (raw control
 * characters in strings, \u0000).  A linked account is marked
 * "linked": true.
 */
static char *
result_text(bool linked, const char *body, size_t len)
{
	cJSON	   *resource = NULL;
	char	   *text = NULL;

	if (body != NULL && len > 0 && len <= MAX_RESULT_BYTES)
		resource = parse_json(body, len);
	if (cJSON_IsObject(resource))
	{
		if (linked)
		{
			cJSON_DeleteItemFromObjectCaseSensitive(resource, "linked");
			json_add(resource, "linked", cJSON_CreateTrue());
		}
		text = json_take(cJSON_PrintUnformatted(resource));
		if (!pg_verifymbstr(text, strlen(text), true))
			text = NULL;
	}
	cJSON_Delete(resource);
	if (text == NULL && linked)
		text = pstrdup("{\"linked\": true}");
	return text;
}

static char *
response_result(const WorkOp *op, const HttpResponse *response)
{
	bool		linked = ((const ScimState *) op->state)->linked;

	if (response->body_truncated)
		return result_text(linked, NULL, 0);
	return result_text(linked, response->body, response->body_len);
}

/* ---------------------------------------------------------------- lookup */

/* A resource's id, if it has one we can address and store. */
static const char *
resource_id(const cJSON *resource)
{
	const cJSON *id = cJSON_GetObjectItem(resource, "id");

	if (!cJSON_IsString(id) || id->valuestring[0] == '\0' || !is_clean_text(id->valuestring))
		return NULL;
	return id->valuestring;
}

/*
 * The case a create opens when several accounts hold its match value: the
 * accounts the lookup returned as candidates (JSON text).
 */
static char *
many_candidates(const WorkOp *op, const cJSON *list, double total)
{
	const ScimState *st = scim_state((WorkOp *) op);
	const cJSON *resource;
	cJSON	   *details = cJSON_CreateObject();
	cJSON	   *candidates = cJSON_CreateArray();
	char	   *reason;

	json_check(details);
	json_check(candidates);
	cJSON_ArrayForEach(resource, cJSON_GetObjectItem(list, "Resources"))
	{
		const char *id = resource_id(resource);
		cJSON	   *candidate;
		cJSON	   *evidence;

		if (id == NULL)
			continue;
		candidate = json_check(cJSON_CreateObject());
		evidence = json_check(cJSON_CreateObject());
		json_add(candidate, "target_uid", cJSON_CreateString(id));
		json_add(candidate, "confidence", cJSON_CreateNumber(1.0));
		json_add(candidate, "match_type", cJSON_CreateString("candidate"));
		json_add(evidence, "found_by", cJSON_CreateString("target"));
		json_add(evidence, "attribute", cJSON_CreateString(st->match_attr));
		json_add(evidence, "value", cJSON_CreateString(st->match_value));
		json_add(candidate, "evidence", evidence);
		json_append(candidates, candidate);
	}
	reason = psprintf("%.0f accounts on the target have %s \"%s\"; correlation cannot choose",
					  total, st->match_attr, st->match_value);
	json_add(details, "situation", cJSON_CreateString("disputed"));
	json_add(details, "reason", cJSON_CreateString(reason));
	json_add(details, "candidates", candidates);
	return json_take(cJSON_PrintUnformatted(details));
}

/*
 * Read a ListResponse.  With exactly one account, *uid gets its id and
 * *resource its JSON text.  The account must carry the match value (names
 * and values compared case-insensitively, as userName is caseExact=false):
 * a provider that ignores the filter and lists everything must not make us
 * link a stranger's account.
 */
static LookupResult
read_lookup(WorkOp *op, const HttpResponse *response, char **uid, char **resource)
{
	ScimState  *st = scim_state(op);
	cJSON	   *list = parse_body(response);
	const cJSON *total = cJSON_GetObjectItem(list, "totalResults");
	const cJSON *first;
	const char *id;
	const cJSON *found;
	LookupResult result;

	if (!cJSON_IsObject(list) || !cJSON_IsNumber(total) || total->valuedouble < 0)
	{
		cJSON_Delete(list);
		fail_garbage(op, response, "a SCIM ListResponse (no totalResults)");
		return LOOKUP_FAILED;
	}
	if (total->valuedouble == 0)
		result = LOOKUP_NONE;
	else if (total->valuedouble > 1)
	{
		*resource = many_candidates(op, list, total->valuedouble);
		result = LOOKUP_MANY;
	}
	else
	{
		first = cJSON_GetArrayItem(cJSON_GetObjectItem(list, "Resources"), 0);
		id = resource_id(first);
		if (id == NULL)
		{
			cJSON_Delete(list);
			fail_garbage(op, response, "a SCIM ListResponse (its one resource has no id)");
			return LOOKUP_FAILED;
		}
		found = json_path(first, st->match_attr);
		if (found != NULL && (!cJSON_IsString(found) ||
							  pg_strcasecmp(found->valuestring, st->match_value) != 0))
		{
			fail_dead(op, response,
					  psprintf("%s: the filter %s eq \"%s\" returned account %s whose %s differs; the provider does not seem to apply filters, so the account cannot be matched safely",
							   st->what, st->match_attr, st->match_value,
							   clip_detail(id), st->match_attr));
			cJSON_Delete(list);
			return LOOKUP_FAILED;
		}
		*uid = pstrdup(id);
		*resource = json_take(cJSON_PrintUnformatted(first));
		result = LOOKUP_ONE;
	}
	cJSON_Delete(list);
	return result;
}

static bool
fail_ambiguous(WorkOp *op, const HttpResponse *response, char *details)
{
	ScimState  *st = scim_state(op);

	/* a create never picks one: a person decides in a correlation case */
	if (op->step == STEP_LOOKUP || op->step == STEP_RELOOKUP)
	{
		finish(op, OUTCOME_PARKED, response,
			   psprintf("more than one account on the target has %s \"%s\"",
						st->match_attr, st->match_value));
		op->outcome.park_details = details;
		return false;
	}
	return fail_dead(op, response,
					 psprintf("%s: more than one account on the target has %s \"%s\"; the account is ambiguous, resolve it on the target or link it by target_uid",
							  st->what, st->match_attr, st->match_value));
}

/* Run a lookup step's response through read_lookup(), classifying non-200s. */
static LookupResult
lookup_response(WorkOp *op, const HttpResponse *response, char **uid, char **resource)
{
	if (response->transport_failed || response->status != 200)
	{
		classify(op, response);
		/* a 2xx other than 200 has no ListResponse for us */
		if (op->outcome.kind == OUTCOME_COMPLETED)
			fail_garbage(op, response, "a SCIM ListResponse");
		return LOOKUP_FAILED;
	}
	return read_lookup(op, response, uid, resource);
}

/* ---------------------------------------------------------------- create */

static bool
send_post(WorkOp *op)
{
	ScimState  *st = scim_state(op);
	char	   *body = build_create(op);

	if (body == NULL)
		return fail_dead(op, NULL, pstrdup("attributes must be a JSON object"));
	return send_request(op, STEP_POST, "POST", st->endpoint, NULL, body, NULL);
}

static bool
on_post(WorkOp *op, const HttpResponse *response)
{
	ScimState  *st = scim_state(op);
	cJSON	   *resource;
	const char *id;
	char	   *scim_type;

	if (!response->transport_failed && response->status >= 200 && response->status < 300)
	{
		resource = parse_body(response);
		id = resource_id(resource);
		if (id == NULL)
		{
			cJSON_Delete(resource);

			/*
			 * The account probably exists now; retrying is safe because the
			 * next attempt looks it up before posting again.
			 */
			return fail_garbage(op, response, "a SCIM resource with an id");
		}
		set_uid(op, id);
		cJSON_Delete(resource);
		return complete(op, response, st->uid, response_result(op, response), false);
	}
	if (response->transport_failed || response->status != 409)
		return classify(op, response);

	/* 409: someone holds the account's unique value; who? */
	scim_type = scim_error_type(response);
	if (st->match_value != NULL && (scim_type == NULL || strcmp(scim_type, "uniqueness") == 0))
	{
		st->conflict = scim_error_text(response);
		if (st->conflict == NULL)
			st->conflict = pstrdup("HTTP 409");
		return send_lookup(op, STEP_RELOOKUP);
	}
	classify(op, response);
	op->outcome.kind = OUTCOME_DEAD;	/* a 409 never heals by itself */
	return false;
}

/* ---------------------------------------------------------------- lookups */

/* No account has the match value. */
static bool
on_no_account(WorkOp *op, const HttpResponse *response)
{
	ScimState  *st = scim_state(op);

	if (op->step == STEP_LOOKUP)
		return send_post(op);
	if (op->step == STEP_RELOOKUP)
		return fail_dead(op, response,
						 psprintf("POST %s: %s; but no account on the target has %s \"%s\", so there is none to link",
								  st->endpoint, st->conflict, st->match_attr, st->match_value));
	if (op->type == OP_DELETE)
		return complete(op, response, NULL, pstrdup("{\"already_deleted\": true}"), true);
	return fail_dead(op, response,
					 psprintf("no account on the target for %s \"%s\"",
							  st->match_attr, st->match_value));
}

/* Exactly one account has the match value: a create links it, others act on it. */
static bool
on_one_account(WorkOp *op, char *uid, char *resource)
{
	ScimState  *st = scim_state(op);

	if (op->step != STEP_FIND)
	{
		/* may it be linked?  The worker asks the database and resumes us */
		op->awaiting = AWAIT_LINK_CHECK;
		op->check_uid = uid;
		op->check_resource = resource;
		op->request = NULL;
		return true;
	}
	set_uid(op, uid);
	if (op->type == OP_DELETE)
		return send_request(op, STEP_DELETE, "DELETE", st->uid_path, NULL, NULL, NULL);
	return start_modify(op);
}

/* The database's answer about the account a create's lookup found. */
static bool
on_link_checked(WorkOp *op)
{
	ScimState  *st = scim_state(op);

	switch (op->verdict)
	{
		case VERDICT_LINK:
			set_uid(op, op->check_uid);
			st->linked = true;
			st->lookup_resource = op->check_resource;
			return start_modify(op);
		case VERDICT_REJECTED:
			if (op->step == STEP_LOOKUP)
				return send_post(op);
			return fail_dead(op, NULL,
							 psprintf("POST %s: %s; the account holding %s \"%s\" is %s, which a correlation decision says is not this identity's; free the %s on the target or provision another",
									  st->endpoint, st->conflict, st->match_attr, st->match_value,
									  op->check_uid, st->match_attr));
		default:
			break;
	}
	return fail_retry(op, NULL, pstrdup("the account found on the target was not checked"));
}

/* The response to any of the three lookups (LOOKUP, RELOOKUP, FIND). */
static bool
on_lookup(WorkOp *op, const HttpResponse *response)
{
	char	   *uid = NULL;
	char	   *resource = NULL;

	switch (lookup_response(op, response, &uid, &resource))
	{
		case LOOKUP_NONE:
			return on_no_account(op, response);
		case LOOKUP_ONE:
			return on_one_account(op, uid, resource);
		case LOOKUP_MANY:
			return fail_ambiguous(op, response, resource);
		case LOOKUP_FAILED:
			break;
	}
	return false;
}

/* ---------------------------------------------------------------- modify */

/* A modification is done: the account stays linked; a linked create says so. */
static bool
modified(WorkOp *op, const HttpResponse *response)
{
	ScimState  *st = scim_state(op);
	char	   *result = response_result(op, response);

	/* a 204 has no body: a linked create keeps the account as looked up */
	if (st->linked && response->status == 204 && st->lookup_resource != NULL)
		result = result_text(true, st->lookup_resource, strlen(st->lookup_resource));
	return complete(op, response, st->uid, result, false);
}

static bool
gone(WorkOp *op, const HttpResponse *response)
{
	ScimState  *st = scim_state(op);

	/* a create's link target vanished: the next attempt looks up again */
	if (st->linked)
		return fail_retry(op, response,
						  psprintf("%s: HTTP 404: the account %s found by %s \"%s\" disappeared while being linked",
								   st->what, st->uid, st->match_attr, st->match_value));
	op->outcome.gone = true;
	return fail_dead(op, response,
					 psprintf("%s: HTTP 404: account %s no longer exists on the target",
							  st->what, st->uid));
}

/* PATCH the changes, or read the resource for a PUT. */
static bool
start_modify(WorkOp *op)
{
	ScimState  *st = scim_state(op);
	cJSON	   *changes;
	char	   *patch;

	if (op->connector->update_with_put || st->patch_unsupported)
		return send_request(op, STEP_READ, "GET", st->uid_path, NULL, NULL, NULL);

	changes = desired_changes(op);
	if (changes == NULL)
		return fail_dead(op, NULL, pstrdup("attributes must be a JSON object"));
	patch = build_patch(changes);
	cJSON_Delete(changes);
	if (patch == NULL)
	{
		/* nothing to change: the account is as wanted */
		char	   *result = NULL;

		if (st->linked)
			result = result_text(true, st->lookup_resource,
								 st->lookup_resource ? strlen(st->lookup_resource) : 0);
		return complete(op, NULL, st->uid, result, false);
	}
	return send_request(op, STEP_PATCH, "PATCH", st->uid_path, NULL, patch, NULL);
}

/* The ETag header, else meta.version: both are the resource's version. */
static char *
resource_version(const HttpResponse *response, const cJSON *resource)
{
	const cJSON *version = json_path(resource, "meta.version");

	if (response->etag != NULL && response->etag[0] != '\0')
		return pstrdup(response->etag);
	if (cJSON_IsString(version) && version->valuestring[0] != '\0' &&
		is_clean_text(version->valuestring))
		return pstrdup(version->valuestring);
	return NULL;
}

/*
 * The resource as read, with the changes merged in: a PUT replaces the
 * whole resource, so everything we do not change must be sent back as it
 * was, or the provider may clear it.  meta is the provider's and is left
 * out.
 */
static bool
on_read(WorkOp *op, const HttpResponse *response)
{
	ScimState  *st = scim_state(op);
	cJSON	   *resource;
	cJSON	   *changes;

	if (response->transport_failed || response->status != 200)
	{
		if (!response->transport_failed && response->status == 404)
			return gone(op, response);
		classify(op, response);
		if (op->outcome.kind == OUTCOME_COMPLETED)
			return fail_garbage(op, response, "a SCIM resource");
		return false;
	}
	resource = parse_body(response);
	if (!cJSON_IsObject(resource))
	{
		cJSON_Delete(resource);
		return fail_garbage(op, response, "a SCIM resource");
	}
	changes = desired_changes(op);
	if (changes == NULL)
	{
		cJSON_Delete(resource);
		return fail_dead(op, NULL, pstrdup("attributes must be a JSON object"));
	}
	st->etag = resource_version(response, resource);
	cJSON_DeleteItemFromObject(resource, "meta");
	merge_changes(resource, changes);
	cJSON_Delete(changes);
	st->put_body = json_take(cJSON_PrintUnformatted(resource));
	cJSON_Delete(resource);
	return send_request(op, STEP_PUT, "PUT", st->uid_path, NULL, st->put_body, st->etag);
}

/* The response to a PATCH or a PUT. */
static bool
on_write(WorkOp *op, const HttpResponse *response)
{
	ScimState  *st = scim_state(op);

	if (response->transport_failed)
		return classify(op, response);
	if (response->status >= 200 && response->status < 300)
		return modified(op, response);
	if (response->status == 404)
		return gone(op, response);
	if (op->step == STEP_PATCH && (response->status == 405 || response->status == 501))
	{
		/* no PATCH here: read-modify-write with PUT instead, for this op */
		st->patch_unsupported = true;
		return start_modify(op);
	}
	if (op->step == STEP_PUT && response->status == 412)
	{
		/* changed under us: read it again and merge on the new version */
		if (++op->redo <= MAX_PUT_REDO)
			return send_request(op, STEP_READ, "GET", st->uid_path, NULL, NULL, NULL);
		return fail_retry(op, response,
						  psprintf("%s: HTTP 412: the account kept changing between read and write (%d tries)",
								   st->what, op->redo));
	}
	return classify(op, response);
}

/* ---------------------------------------------------------------- delete */

static bool
on_delete(WorkOp *op, const HttpResponse *response)
{
	if (!response->transport_failed &&
		(response->status == 200 || response->status == 204 || response->status == 404))
		return complete(op, response, NULL,
						response->status == 404 ? pstrdup("{\"already_deleted\": true}") : NULL,
						true);
	return classify(op, response);
}

/* ---------------------------------------------------------------- entry points */

/* The match attribute's value in the attributes, if it is a string. */
static char *
match_value(const WorkOp *op, const char *attr)
{
	cJSON	   *attributes = parse_attributes(op);
	const cJSON *value = json_path(attributes, attr);
	char	   *result = NULL;

	if (cJSON_IsString(value) && value->valuestring[0] != '\0')
		result = pstrdup(value->valuestring);
	cJSON_Delete(attributes);
	return result;
}

static bool
scim2_begin(WorkOp *op)
{
	ScimState  *st = palloc0(sizeof(ScimState));

	op->state = st;
	op->redo = 0;
	st->endpoint = connector_endpoint(op->connector, op->object_class);
	st->match_attr = op->connector->match_attribute ? op->connector->match_attribute :
		pg_strcasecmp(op->object_class, "group") == 0 ? "displayName" : "userName";
	st->match_value = match_value(op, st->match_attr);
	st->what = pstrdup(op_type_name(op->type));

	/*
	 * A create ignores any uid the subject was linked to before: that account
	 * may be gone, and looking up by the match value finds it if it is not.
	 */
	if (op->type == OP_CREATE)
	{
		if (op->verdict == VERDICT_LINK && op->link_uid != NULL)
		{
			/* the database's correlation found the account: converge it */
			set_uid(op, op->link_uid);
			st->linked = true;
			return start_modify(op);
		}
		if (st->match_value != NULL)
			return send_lookup(op, STEP_LOOKUP);
		return send_post(op);
	}
	if (op->target_uid != NULL && op->target_uid[0] != '\0')
	{
		set_uid(op, op->target_uid);
		if (op->type == OP_DELETE)
			return send_request(op, STEP_DELETE, "DELETE", st->uid_path, NULL, NULL, NULL);
		return start_modify(op);
	}
	if (st->match_value != NULL)
		return send_lookup(op, STEP_FIND);
	return fail_dead(op, NULL,
					 psprintf("%s needs the account's target_uid or a %s attribute to find it by",
							  op_type_name(op->type), st->match_attr));
}

static bool
scim2_resume(WorkOp *op, const HttpResponse *response)
{
	if (response == NULL)
		return on_link_checked(op);
	switch ((ScimStep) op->step)
	{
		case STEP_LOOKUP:
		case STEP_RELOOKUP:
		case STEP_FIND:
			return on_lookup(op, response);
		case STEP_POST:
			return on_post(op, response);
		case STEP_PATCH:
		case STEP_PUT:
			return on_write(op, response);
		case STEP_READ:
			return on_read(op, response);
		case STEP_DELETE:
			return on_delete(op, response);
		case STEP_NONE:
			break;
	}
	return fail_dead(op, response, psprintf("scim2: response in unexpected step %d", op->step));
}
