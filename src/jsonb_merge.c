/*-------------------------------------------------------------------------
 *
 * jsonb_merge.c
 *	  xprov._merge_expected(expected, changes): what a shadow expects of its
 *	  account once the attributes of an operation are provisioned.
 *
 * changes' members replace expected's; a member that is an object on both
 * sides is merged one level deep instead (a PATCH of name.givenName keeps
 * name.familyName).  A JSON null in changes stays (the caller strips nulls:
 * it removes the attribute).
 *
 * It runs for every completed operation that has an account, inside the
 * worker's recording statement.  As a SQL function (jsonb_each and
 * jsonb_object_agg, and a SET search_path that keeps it from being
 * inlined) it cost about a third of that statement.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/jsonb.h"

#include "jsonb_merge.h"

PG_FUNCTION_INFO_V1(xprov_merge_expected);

static void
require_object(Jsonb *value, const char *name)
{
	if (!JB_ROOT_IS_OBJECT(value))
		ereport(ERROR,
				errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				errmsg("%s must be a JSON object", name));
}

/*
 * Push the members of an object container.  Later pushes of the same key
 * win: pushJsonbValue keeps the last of equal keys when the object ends.
 */
static void
push_members(JsonbParseState **state, JsonbContainer *object)
{
	JsonbIterator *it = JsonbIteratorInit(object);
	JsonbValue	value;
	JsonbIteratorToken token;

	token = JsonbIteratorNext(&it, &value, true);
	Assert(token == WJB_BEGIN_OBJECT);
	while ((token = JsonbIteratorNext(&it, &value, true)) != WJB_END_OBJECT)
	{
		Assert(token == WJB_KEY || token == WJB_VALUE);
		pushJsonbValue(state, token, &value);
	}
}

static bool
is_object_value(const JsonbValue *value)
{
	return value != NULL && value->type == jbvBinary &&
		JsonContainerIsObject(value->val.binary.data);
}

/* A member of changes, merged with expected's member of the same key. */
static void
push_change(JsonbParseState **state, JsonbContainer *expected, JsonbValue *key, JsonbValue *change)
{
	JsonbValue *before = NULL;

	pushJsonbValue(state, WJB_KEY, key);
	if (is_object_value(change))
		before = getKeyJsonValueFromContainer(expected, key->val.string.val, key->val.string.len, NULL);
	if (!is_object_value(before))
	{
		pushJsonbValue(state, WJB_VALUE, change);
		return;
	}
	pushJsonbValue(state, WJB_BEGIN_OBJECT, NULL);
	push_members(state, before->val.binary.data);
	push_members(state, change->val.binary.data);
	pushJsonbValue(state, WJB_END_OBJECT, NULL);
}

Datum
xprov_merge_expected(PG_FUNCTION_ARGS)
{
	Jsonb	   *expected;
	Jsonb	   *changes;
	JsonbParseState *state = NULL;
	JsonbIterator *it;
	JsonbValue	key;
	JsonbValue	value;
	JsonbValue *result;
	JsonbIteratorToken token;

	/* as expected || ...: nothing expected is NULL, no changes change nothing */
	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	expected = PG_GETARG_JSONB_P(0);
	if (PG_ARGISNULL(1))
		PG_RETURN_JSONB_P(expected);
	changes = PG_GETARG_JSONB_P(1);
	require_object(expected, "expected");
	require_object(changes, "changes");

	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	push_members(&state, &expected->root);
	it = JsonbIteratorInit(&changes->root);
	token = JsonbIteratorNext(&it, &value, true);
	while ((token = JsonbIteratorNext(&it, &key, true)) == WJB_KEY)
	{
		token = JsonbIteratorNext(&it, &value, true);
		Assert(token == WJB_VALUE);
		push_change(&state, &expected->root, &key, &value);
	}
	result = pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	PG_RETURN_JSONB_P(JsonbValueToJsonb(result));
}
