/*-------------------------------------------------------------------------
 *
 * op_input.c
 *	  Parse and validate operations for enqueue() and enqueue_batch().
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#include "claim_cursor.h"
#include "connector_cache.h"
#include "op_input.h"
#include "tenant_guard.h"
#include "spi_util.h"
#include "text_util.h"
#include "xprov.h"

static const char *const operation_types[] = {
	"create", "update", "delete", "enable", "disable"
};

void
op_raise_error(int element, int sqlstate, const char *message,
			   const char *detail, const char *hint)
{
	ereport(ERROR,
			errcode(sqlstate),
			element >= 0 ?
			errmsg("enqueue_batch element %d: %s", element, message) :
			errmsg("%s", message),
			detail ? errdetail("%s", detail) : 0,
			hint ? errhint("%s", hint) : 0);
	pg_unreachable();
}

/*
 * Operation ids are UUIDv7 (RFC 9562): a millisecond timestamp, then random
 * bits.  Ids made close in time sort close together, so the log's and the
 * results' primary keys grow at their right edge instead of touching a
 * random leaf page per insert.  Within a backend they also increase
 * strictly (RFC 9562 method 1): the 12 bits after the timestamp count the
 * ids of the same millisecond, from a random start below 2048, and a
 * full count or a clock that went back borrows the next millisecond.  So a
 * session's operations sort by id in the order it enqueued them, and a
 * batch appends to one leaf page of the primary key.
 */
void
op_generate_id(pg_uuid_t *id)
{
	static uint64 last_ms = 0;
	static uint32 count = 0;
	uint64		unix_ms = (uint64) ((GetCurrentTimestamp() / 1000) +
									(int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * 1000);
	uint64		random_high = pg_prng_uint64(&pg_global_prng_state);
	uint64		random_low = pg_prng_uint64(&pg_global_prng_state);

	if (unix_ms > last_ms)
	{
		last_ms = unix_ms;
		count = (uint32) (random_low >> 53);	/* 11 random bits */
	}
	else if (++count > 0xfff)
	{
		last_ms++;
		count = 0;
	}

	/*
	 * The process's PRNG, which PostgreSQL seeds from a strong source when
	 * the process starts: ids need to be unique, not unguessable, and
	 * pg_strong_random() costs a getpid() system call per id (OpenSSL's fork
	 * check), a few percent of a batched enqueue.
	 */
	for (int i = 0; i < 6; i++)
		id->data[i] = (last_ms >> (8 * (5 - i))) & 0xff;
	id->data[6] = 0x70 | ((count >> 8) & 0x0f);
	id->data[7] = count & 0xff;
	memcpy(id->data + 8, &random_high, 8);
	id->data[8] = (id->data[8] & 0x3f) | 0x80;
}

/* xprov._new_id(): an id as operations get, for other tables' keys. */
PG_FUNCTION_INFO_V1(xprov_new_id);

Datum
xprov_new_id(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *id = palloc(sizeof(pg_uuid_t));

	op_generate_id(id);
	PG_RETURN_UUID_P(id);
}

/*
 * Run a type's input function on a batch field, turning its error into one
 * that names the element and field.  The caught error is re-thrown at once,
 * so no state needs cleaning up beyond FlushErrorState().
 */
static Datum
parse_field(Oid typid, const char *text, int element, const char *field)
{
	/* the input functions of uuid, timestamptz and int4, looked up once */
	static struct
	{
		Oid			typid;
		Oid			typioparam;
		FmgrInfo	flinfo;
	}			inputs[3];
	MemoryContext oldcxt = CurrentMemoryContext;
	Datum		result = (Datum) 0;
	int			slot;

	for (slot = 0; slot < lengthof(inputs) - 1; slot++)
		if (inputs[slot].typid == typid || inputs[slot].typid == InvalidOid)
			break;
	if (inputs[slot].typid != typid)
	{
		Oid			typinput;

		getTypeInputInfo(typid, &typinput, &inputs[slot].typioparam);
		fmgr_info_cxt(typinput, &inputs[slot].flinfo, TopMemoryContext);
		inputs[slot].typid = typid;
	}
	PG_TRY();
	{
		result = InputFunctionCall(&inputs[slot].flinfo, (char *) text,
								   inputs[slot].typioparam, -1);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		op_raise_error(element, ERRCODE_INVALID_PARAMETER_VALUE,
					   psprintf("field \"%s\" is not a valid %s", field,
								format_type_be(typid)),
					   edata->message, NULL);
	}
	PG_END_TRY();
	return result;
}

static char *
jsonb_string_field(JsonbValue *value, int element, const char *field)
{
	if (value->type == jbvNull)
		return NULL;
	if (value->type != jbvString)
		op_raise_error(element, ERRCODE_INVALID_PARAMETER_VALUE,
					   psprintf("field \"%s\" must be a string", field), NULL, NULL);
	return pnstrdup(value->val.string.val, value->val.string.len);
}

/*
 * The canonical form (8-4-4-4-12 hex digits), which nearly every caller
 * sends, read without uuid_in (which calls strtoul per byte: a tenth of a
 * batch's parsing).  False for anything else, which uuid_in then judges.
 */
static bool
parse_canonical_uuid(const char *text, pg_uuid_t *out)
{
	int			byte = 0;

	for (int i = 0; i < 36; i += 2)
	{
		int			high,
					low;

		if (i == 8 || i == 13 || i == 18 || i == 23)
		{
			if (text[i] != '-')
				return false;
			i--;
			continue;
		}
		high = hex_digit_value(text[i]);
		low = high < 0 ? -1 : hex_digit_value(text[i + 1]);
		if (low < 0)
			return false;
		out->data[byte++] = (unsigned char) (high << 4 | low);
	}
	return byte == UUID_LEN && text[36] == '\0';
}

static bool
jsonb_uuid_field(JsonbValue *value, int element, const char *field, pg_uuid_t *out)
{
	char	   *text = jsonb_string_field(value, element, field);

	if (text == NULL)
		return false;
	if (!parse_canonical_uuid(text, out))
		memcpy(out, DatumGetUUIDP(parse_field(UUIDOID, text, element, field)), UUID_LEN);
	return true;
}

static void
set_field(OpInput *op, const char *key, JsonbValue *value)
{
	int			element = op->element;

	if (strcmp(key, "tenant_id") == 0)
		op->has_tenant = jsonb_uuid_field(value, element, key, &op->tenant_id);
	else if (strcmp(key, "connector_id") == 0)
		op->has_connector = jsonb_uuid_field(value, element, key, &op->connector_id);
	else if (strcmp(key, "identity_id") == 0)
		op->has_identity = jsonb_uuid_field(value, element, key, &op->identity_id);
	else if (strcmp(key, "target_uid") == 0)
		op->target_uid = jsonb_string_field(value, element, key);
	else if (strcmp(key, "operation_type") == 0)
		op->operation_type = jsonb_string_field(value, element, key);
	else if (strcmp(key, "object_class") == 0)
		op->object_class = jsonb_string_field(value, element, key);
	else if (strcmp(key, "idempotency_key") == 0)
		op->idempotency_key = jsonb_string_field(value, element, key);
	else if (strcmp(key, "not_before") == 0)
	{
		char	   *text = jsonb_string_field(value, element, key);

		op->has_not_before = text != NULL;
		if (text)
			op->not_before = DatumGetTimestampTz(parse_field(TIMESTAMPTZOID, text, element, key));
	}
	else if (strcmp(key, "priority") == 0)
	{
		if (value->type == jbvNull)
			return;
		if (value->type != jbvNumeric)
			op_raise_error(element, ERRCODE_INVALID_PARAMETER_VALUE,
						   "field \"priority\" must be an integer", NULL, NULL);
		op->priority = DatumGetInt32(parse_field(INT4OID,
												 DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(value->val.numeric))),
												 element, key));
	}
	else if (strcmp(key, "attributes") == 0)
	{
		if (value->type == jbvNull)
			return;
		if (value->type != jbvBinary || !JsonContainerIsObject(value->val.binary.data))
			op_raise_error(element, ERRCODE_INVALID_PARAMETER_VALUE,
						   "attributes must be a JSON object", NULL,
						   "Pass the account's attributes as an object, for example {\"userName\": \"jdoe\"}.");
		op->attributes = JsonbValueToJsonb(value);
	}
	else
		op_raise_error(element, ERRCODE_INVALID_PARAMETER_VALUE,
					   psprintf("unknown field \"%s\"", key), NULL,
					   "Fields are tenant_id, connector_id, identity_id, operation_type, object_class, attributes, target_uid, priority, not_before and idempotency_key.");
}

void
op_input_from_jsonb(JsonbContainer *object, int element, OpInput *op)
{
	JsonbIterator *it;
	JsonbValue	value;
	JsonbIteratorToken token;
	char	   *key = NULL;

	memset(op, 0, sizeof(OpInput));
	op->element = element;

	it = JsonbIteratorInit(object);
	while ((token = JsonbIteratorNext(&it, &value, true)) != WJB_DONE)
	{
		if (token == WJB_KEY)
			key = pnstrdup(value.val.string.val, value.val.string.len);
		else if (token == WJB_VALUE)
			set_field(op, key, &value);
	}
}

static void
check_required(OpInput *op)
{
	if (!op->has_tenant)
		op_raise_error(op->element, ERRCODE_NULL_VALUE_NOT_ALLOWED,
					   "tenant_id must not be null", NULL,
					   "Pass the tenant that owns the connector.");
	if (!op->has_connector)
		op_raise_error(op->element, ERRCODE_NULL_VALUE_NOT_ALLOWED,
					   "connector_id must not be null", NULL,
					   "Pass a connector id returned by xprov.add_connector().");
	if (op->operation_type == NULL)
		op_raise_error(op->element, ERRCODE_INVALID_PARAMETER_VALUE,
					   "operation_type must not be null", NULL,
					   "Use one of create, update, delete, enable, disable.");
	if (op->object_class == NULL || op->object_class[0] == '\0')
		op_raise_error(op->element, ERRCODE_INVALID_PARAMETER_VALUE,
					   "object_class must not be empty", NULL,
					   "Name the kind of target object, for example user or group.");
}

static void
check_operation_type(OpInput *op)
{
	for (int i = 0; i < lengthof(operation_types); i++)
		if (strcmp(op->operation_type, operation_types[i]) == 0)
			return;
	op_raise_error(op->element, ERRCODE_INVALID_PARAMETER_VALUE,
				   psprintf("unknown operation type \"%s\"", op->operation_type), NULL,
				   "Use one of create, update, delete, enable, disable.");
}

static void
check_subject(OpInput *op)
{
	/* an empty uid names no account: treat it as absent */
	if (op->target_uid != NULL && op->target_uid[0] == '\0')
		op->target_uid = NULL;
	if (op->has_identity)
		op->subject = psprintf("i:%s",
							   uuid_text(&op->identity_id));
	else if (op->target_uid != NULL)
		op->subject = psprintf("t:%s", op->target_uid);
	else
		op_raise_error(op->element, ERRCODE_NULL_VALUE_NOT_ALLOWED,
					   "operation has no subject",
					   "Neither identity_id nor target_uid was given.",
					   "Name the account by identity_id, target_uid or both.");
}

static void
check_attributes(OpInput *op)
{
	Size		limit = (Size) xprov_max_attributes_kb * 1024;

	if (op->attributes == NULL)
	{
		op->attributes = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")));
		return;
	}
	if (!JB_ROOT_IS_OBJECT(op->attributes) || JB_ROOT_IS_SCALAR(op->attributes))
		op_raise_error(op->element, ERRCODE_INVALID_PARAMETER_VALUE,
					   "attributes must be a JSON object", NULL,
					   "Pass the account's attributes as an object, for example {\"userName\": \"jdoe\"}.");
	if (VARSIZE(op->attributes) > limit)
		op_raise_error(op->element, ERRCODE_PROGRAM_LIMIT_EXCEEDED,
					   "attributes are too large",
					   psprintf("The attributes take %zu bytes; the limit is %zu bytes.",
								(Size) VARSIZE(op->attributes), limit),
					   "Send less data or raise xprov.max_attributes_size.");
}

/*
 * Names end up in indexes, URLs and every view: a name of 100,000
 * characters is a mistake or an attack, never a name.
 */
static void
check_length(const OpInput *op, const char *field, const char *value, int limit)
{
	int			chars;

	if (value == NULL || strlen(value) <= (size_t) limit)
		return;				/* fewer bytes than the limit: fewer characters */
	chars = pg_mbstrlen(value);
	if (chars > limit)
		op_raise_error(op->element, ERRCODE_PROGRAM_LIMIT_EXCEEDED,
					   psprintf("%s is too long", field),
					   psprintf("It has %d characters; the limit is %d.", chars, limit),
					   NULL);
}

void
op_input_check(OpInput *op)
{
	check_required(op);
	check_operation_type(op);
	check_length(op, "object_class", op->object_class, XPROV_MAX_NAME_CHARS);
	check_length(op, "target_uid", op->target_uid, XPROV_MAX_KEY_CHARS);
	check_length(op, "idempotency_key", op->idempotency_key, XPROV_MAX_KEY_CHARS);
	check_subject(op);
	check_attributes(op);
	if (op->idempotency_key != NULL && op->idempotency_key[0] == '\0')
		op_raise_error(op->element, ERRCODE_INVALID_PARAMETER_VALUE,
					   "idempotency_key must not be empty", NULL,
					   "Pass NULL for no key.");
	op_generate_id(&op->id);
}

/*
 * Checked before the connector is looked up; to a caller who is not an
 * admin, another tenant's connector does not exist.
 */
static void
raise_foreign_tenant(const OpInput *op, bool has_session)
{
	const char *tenant = uuid_text(&op->tenant_id);

	if (!has_session && xprov_tenant_id != NULL && xprov_tenant_id[0] != '\0')
		op_raise_error(op->element, ERRCODE_INSUFFICIENT_PRIVILEGE,
					   psprintf("role %s may not act for tenant %s",
								GetUserNameFromId(GetOuterUserId(), false), xprov_tenant_id),
					   "The role is bound to other tenants (xprov.tenant_bindings).",
					   "SET xprov.tenant_id to a tenant of the role, or ask an xprov_admin to bind it.");
	if (!has_session)
		op_raise_error(op->element, ERRCODE_INSUFFICIENT_PRIVILEGE,
					   "no tenant context: xprov.tenant_id is not set",
					   "Roles other than xprov_admin enqueue only for the tenant in context.",
					   psprintf("SET xprov.tenant_id = '%s' first.", tenant));
	op_raise_error(op->element, ERRCODE_INSUFFICIENT_PRIVILEGE,
				   psprintf("tenant %s is not the tenant in context", tenant),
				   psprintf("xprov.tenant_id is %s.", xprov_tenant_id),
				   "Roles other than xprov_admin enqueue only for the tenant in context.");
}

/*
 * No row lock: connectors cannot be deleted (trigger connector_keep), so the
 * hot path needs neither a foreign-key check per row nor a shared lock that
 * every enqueuing transaction would write into the connector's tuple.
 */
static SavedPlan connector_lookup = {
	.sql = "SELECT id, tenant_id, kind FROM xprov.connector WHERE id = ANY ($1)",
	.nargs = 1,
	.argtypes = {UUIDARRAYOID},
};

/* The connectors ids[0..n) as connector_lookup finds them, into facts. */
static int
look_up_connectors(Datum *ids, int n, bool remember, ConnectorFacts *facts)
{
	Datum		arg = spi_array_arg(ids, NULL, n, UUIDOID);

	saved_plan_execute(&connector_lookup, &arg, NULL, true, 0);
	for (uint64 row = 0; row < SPI_processed; row++)
	{
		ConnectorFacts *f = &facts[row];
		Datum		value;

		spi_get_datum(row, 1, &value);
		f->id = *DatumGetUUIDP(value);
		spi_get_datum(row, 2, &value);
		f->tenant_id = *DatumGetUUIDP(value);
		spi_get_datum(row, 3, &value);
		f->claimant = strcmp(TextDatumGetCString(value), "external") == 0 ? CLAIMANT_EXTERNAL : CLAIMANT_WORKER;
		if (remember)
			connector_cache_add(f);
	}
	return (int) SPI_processed;
}

static const ConnectorFacts *
find_facts(const ConnectorFacts *facts, int n, const pg_uuid_t *id)
{
	for (int i = 0; i < n; i++)
		if (memcmp(&facts[i].id, id, UUID_LEN) == 0)
			return &facts[i];
	return NULL;
}


/*
 * Check that every operation's connector exists and belongs to the
 * operation's tenant, and derive who claims its operations.  The caller has
 * connected to SPI.
 */
void
op_inputs_resolve_connectors(OpInput *ops, int count)
{
	ConnectorFacts *facts = palloc(sizeof(ConnectorFacts) * count);
	Datum	   *missing = palloc(sizeof(Datum) * count);
	int			nfacts = 0;
	int			nmissing = 0;
	bool		is_admin = tenant_guard_caller_is_admin();
	pg_uuid_t	session;
	bool		has_session = !is_admin && tenant_guard_session_tenant(&session);
	bool		cache = connector_cache_usable();

	/* batches name few connectors: each is found or looked up once */
	for (int i = 0; i < count; i++)
	{
		const pg_uuid_t *id = &ops[i].connector_id;
		const ConnectorFacts *known;

		if (!is_admin && (!has_session || memcmp(&session, &ops[i].tenant_id, UUID_LEN) != 0))
			raise_foreign_tenant(&ops[i], has_session);
		if (find_facts(facts, nfacts, id) != NULL)
			continue;
		if (cache && (known = connector_cache_find(id)) != NULL)
			facts[nfacts++] = *known;
		else
		{
			bool		seen = false;

			for (int j = nmissing - 1; j >= 0 && !seen; j--)
				seen = memcmp(DatumGetUUIDP(missing[j]), id, UUID_LEN) == 0;
			if (!seen)
				missing[nmissing++] = UUIDPGetDatum(id);
		}
	}
	if (nmissing > 0)
		nfacts += look_up_connectors(missing, nmissing, cache, facts + nfacts);

	for (int i = 0; i < count; i++)
	{
		OpInput    *op = &ops[i];
		const ConnectorFacts *f = find_facts(facts, nfacts, &op->connector_id);
		bool		own = f != NULL && memcmp(&f->tenant_id, &op->tenant_id, UUID_LEN) == 0;

		/* to a tenant role, another tenant's connector does not exist */
		if (f == NULL || (!is_admin && !own))
			op_raise_error(op->element, ERRCODE_UNDEFINED_OBJECT,
						   psprintf("connector %s does not exist", uuid_text(&op->connector_id)),
						   NULL, "Create it with xprov.add_connector() or list connectors in xprov.connectors.");
		if (!own)
			op_raise_error(op->element, ERRCODE_INSUFFICIENT_PRIVILEGE,
						   "connector belongs to another tenant",
						   psprintf("Connector %s is not a connector of tenant %s.",
									uuid_text(&op->connector_id), uuid_text(&op->tenant_id)),
						   "Use a connector of the operation's own tenant.");
		op->claimant = f->claimant;
	}
}
