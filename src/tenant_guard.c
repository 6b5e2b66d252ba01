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
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/rel.h"
#include "utils/uuid.h"

#include "spi_util.h"
#include "tenant_guard.h"
#include "xprov.h"

PG_FUNCTION_INFO_V1(xprov_caller);
PG_FUNCTION_INFO_V1(xprov_caller_is_admin);

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

bool
tenant_guard_caller_is_admin(void)
{
	Oid			caller = GetOuterUserId();
	Oid			admin;

	if (superuser_arg(caller))
		return true;
	admin = get_role_oid(ADMIN_ROLE, true);
	if (OidIsValid(admin) && has_privs_of_role(caller, admin))
		return true;
	return extension_predates_tenants();
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
static SavedPlan session_tenant = {
	.sql = "SELECT xprov._session_tenant()",
};

bool
tenant_guard_session_tenant(pg_uuid_t *tenant)
{
	bool		found = false;

	if (!parse_tenant(xprov_tenant_id, tenant))
		return false;
	SPI_connect();
	if (saved_plan_execute(&session_tenant, NULL, NULL, true, 1) == SPI_OK_SELECT && SPI_processed == 1)
	{
		bool		isnull;
		Datum		value = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
		{
			memcpy(tenant, DatumGetUUIDP(value), UUID_LEN);
			found = true;
		}
	}
	SPI_finish();
	return found;
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
