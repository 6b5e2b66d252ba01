/*-------------------------------------------------------------------------
 *
 * tenant_guard.c
 *	  The caller's tenant rights, for xprov's SECURITY DEFINER functions.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/indexing.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/uuid.h"

#include "spi_util.h"
#include "tenant_guard.h"
#include "worker_shmem.h"
#include "xprov.h"

PG_FUNCTION_INFO_V1(xprov_caller);
PG_FUNCTION_INFO_V1(xprov_caller_is_admin);
PG_FUNCTION_INFO_V1(xprov_session_tenant);
PG_FUNCTION_INFO_V1(xprov_tenant_bindings_changed);

#define ADMIN_ROLE "xprov_admin"

/*
 * A database whose xprov is still 0.1.0 (the library is new, ALTER
 * EXTENSION UPDATE has not run yet) has no roles and no tenant model: its
 * callers keep the rights 0.1.0 gave them until the update.
 */
static bool
extension_predates_tenants(void)
{
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;
	bool		predates = false;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber, F_NAMEEQ,
				CStringGetDatum("xprov"));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
	{
		bool		isnull;
		Datum		version = heap_getattr(tuple, Anum_pg_extension_extversion,
										   RelationGetDescr(rel), &isnull);

		predates = !isnull && strcmp(TextDatumGetCString(version), "0.1.0") == 0;
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return predates;
}

/* *predates: whether the answer came from a 0.1.0 database's rule */
static bool
role_is_admin(Oid caller, bool *predates)
{
	Oid			admin;

	*predates = false;
	if (superuser_arg(caller))
		return true;
	admin = get_role_oid(ADMIN_ROLE, true);
	if (OidIsValid(admin) && has_privs_of_role(caller, admin))
		return true;
	*predates = extension_predates_tenants();
	return *predates;
}

bool
tenant_guard_caller_is_admin(void)
{
	bool		predates;

	return role_is_admin(GetOuterUserId(), &predates);
}

/*
 * Parses without raising, so that the check hook can use it too: 32 hex
 * digits, hyphens anywhere between them, optionally in braces (what uuid_in
 * accepts, give or take hyphen placement).
 */
static bool
parse_tenant(const char *text, pg_uuid_t *tenant)
{
	size_t		len;
	int			digits = 0;

	if (text == NULL || (len = strlen(text)) == 0)
		return false;
	if (text[0] == '{')
	{
		if (len < 2 || text[len - 1] != '}')
			return false;
		text++;
		len -= 2;
	}
	for (size_t i = 0; i < len; i++)
	{
		char		c = text[i];
		int			nibble;

		if (c == '-' && digits > 0 && digits < 32 && (digits % 4) == 0 && text[i - 1] != '-')
			continue;
		if (c >= '0' && c <= '9')
			nibble = c - '0';
		else if (c >= 'a' && c <= 'f')
			nibble = c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			nibble = c - 'A' + 10;
		else
			return false;
		if (digits >= 32)
			return false;
		if (digits % 2 == 0)
			tenant->data[digits / 2] = (unsigned char) (nibble << 4);
		else
			tenant->data[digits / 2] |= (unsigned char) nibble;
		digits++;
	}
	return digits == 32;
}

/*
 * Asks xprov._session_tenant(), which also honours tenant bindings (a role
 * bound to tenants may act for those only); the setting alone is read
 * first, since without one there is nothing to ask.
 */
/*
 * Whether a role may act for a tenant, by its bindings: it may if no
 * binding names it (or a role it uses), or one names it for this tenant.
 * With the owner's rights (the callers are SECURITY DEFINER), and with the
 * latest snapshot, as privileges are: a binding committed before the call
 * counts, whatever the calling statement's snapshot.
 */
static SavedPlan bindings_query = {
	.sql =
	"SELECT count(*), count(*) FILTER (WHERE b.tenant_id = $2) "
	"  FROM xprov.tenant_binding b "
	"  JOIN pg_catalog.pg_roles r ON r.rolname = b.role_name "
	" WHERE pg_catalog.pg_has_role($1, r.oid, 'USAGE')",
	.nargs = 2,
	.argtypes = {OIDOID, UUIDOID},
};

static bool
bindings_allow(Oid caller, const pg_uuid_t *tenant)
{
	Datum		args[2];

	args[0] = ObjectIdGetDatum(caller);
	args[1] = UUIDPGetDatum(tenant);
	if (saved_plan_execute_latest(&bindings_query, args, NULL, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "xprov: the tenant bindings query returned no row");
	/* bound to nothing, or bound to this tenant */
	return spi_get_int64(0, 1) == 0 || spi_get_int64(0, 2) > 0;
}

/*
 * The last answer, per backend.  Every enqueue of a tenant role and every
 * row-level security check asks; the answer changes only when bindings
 * change (a shared generation, bumped at commit), when roles or
 * memberships change (catalog invalidations), or with the caller and the
 * tenant.  Not kept while this transaction changes bindings itself (it may
 * roll back), nor in a 0.1.0 database (its rule ends with the update).
 */
typedef struct SessionTenantCache
{
	bool		valid;
	Oid			caller;
	pg_uuid_t	tenant;
	uint64		generation;
	bool		allowed;
} SessionTenantCache;

static SessionTenantCache cached;
static bool invalidation_registered = false;

static void
forget_cached(Datum arg, int cacheid, uint32 hashvalue)
{
	cached.valid = false;
}

static void
remember(Oid caller, const pg_uuid_t *tenant, uint64 generation, bool allowed)
{
	if (!invalidation_registered)
	{
		CacheRegisterSyscacheCallback(AUTHOID, forget_cached, (Datum) 0);
		CacheRegisterSyscacheCallback(AUTHMEMROLEMEM, forget_cached, (Datum) 0);
		invalidation_registered = true;
	}
	cached.caller = caller;
	cached.tenant = *tenant;
	cached.generation = generation;
	cached.allowed = allowed;
	cached.valid = true;
}

static bool
session_allows(Oid caller, const pg_uuid_t *tenant)
{
	uint64		generation = worker_bindings_generation();
	bool		predates;
	bool		allowed;

	if (cached.valid && generation != 0 && cached.generation == generation &&
		cached.caller == caller && memcmp(&cached.tenant, tenant, UUID_LEN) == 0)
		return cached.allowed;

	/* the generation is read before the snapshot is taken */
	pg_memory_barrier();
	if (role_is_admin(caller, &predates))
		allowed = true;
	else
	{
		SPI_connect();
		allowed = bindings_allow(caller, tenant);
		SPI_finish();
	}
	if (generation != 0 && !predates && !worker_bindings_change_pending())
		remember(caller, tenant, generation, allowed);
	return allowed;
}

bool
tenant_guard_session_tenant(pg_uuid_t *tenant)
{
	if (!parse_tenant(xprov_tenant_id, tenant))
		return false;
	return session_allows(GetOuterUserId(), tenant);
}

bool
tenant_guard_allows(bool is_admin, const pg_uuid_t *tenant)
{
	pg_uuid_t	session;

	if (is_admin)
		return true;
	return tenant_guard_session_tenant(&session) &&
		memcmp(&session, tenant, UUID_LEN) == 0;
}

bool
tenant_guard_check_tenant_setting(char **newval, void **extra, GucSource source)
{
	pg_uuid_t	tenant;

	if (*newval == NULL || (*newval)[0] == '\0' || parse_tenant(*newval, &tenant))
		return true;
	GUC_check_errcode(ERRCODE_INVALID_PARAMETER_VALUE);
	GUC_check_errmsg("xprov.tenant_id must be a UUID or empty");
	GUC_check_errdetail("\"%s\" is not a UUID.", *newval);
	return false;
}

/*
 * xprov._session_tenant(): the tenant in context, if the caller may act for
 * it; else NULL.  Row-level security and the SQL functions use it.
 */
Datum
xprov_session_tenant(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *tenant = palloc(sizeof(pg_uuid_t));

	if (!tenant_guard_session_tenant(tenant))
		PG_RETURN_NULL();
	PG_RETURN_UUID_P(tenant);
}

/* Trigger on xprov.tenant_binding: answers given so far may be wrong now. */
Datum
xprov_tenant_bindings_changed(PG_FUNCTION_ARGS)
{
	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				errmsg("xprov._tenant_bindings_changed() must be called as a trigger"));
	cached.valid = false;
	worker_bindings_changed_at_commit();
	return PointerGetDatum(NULL);
}

/* xprov._caller(): the role the session acts as, for audit columns. */
Datum
xprov_caller(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(cstring_to_text(GetUserNameFromId(GetOuterUserId(), false)));
}

/* xprov._caller_is_admin() */
Datum
xprov_caller_is_admin(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(tenant_guard_caller_is_admin());
}
