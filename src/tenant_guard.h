/*-------------------------------------------------------------------------
 *
 * tenant_guard.h
 *	  Who is calling, and for which tenant: the checks that keep a tenant's
 *	  roles to their own tenant inside xprov's SECURITY DEFINER functions.
 *
 * Inside a SECURITY DEFINER function the current user is the function's
 * owner, so the caller is the "outer" user: the session's role as SET ROLE
 * left it.  A caller with the privileges of xprov_admin (or a superuser,
 * which includes the background workers) acts across tenants; any other
 * caller acts only for the tenant named by the setting xprov.tenant_id --
 * unless the database's xprov is still 0.1.0, which had no tenant model.
 *
 *-------------------------------------------------------------------------
 */
#ifndef TENANT_GUARD_H
#define TENANT_GUARD_H

#include "utils/guc.h"
#include "utils/uuid.h"

/* True if the caller may act for every tenant. */
extern bool tenant_guard_caller_is_admin(void);

/*
 * The tenant the caller acts for: xprov.tenant_id, if the caller's tenant
 * bindings allow it (also xprov._session_tenant()); false when there is
 * none.  The answer is kept until bindings, roles or memberships change;
 * finding it again runs a query.
 */
extern bool tenant_guard_session_tenant(pg_uuid_t *tenant);

/*
 * True if the caller may act for tenant: an admin, or the session's tenant.
 * Callers pass is_admin from tenant_guard_caller_is_admin() so that a batch
 * looks the caller's roles up once.
 */
extern bool tenant_guard_allows(bool is_admin, const pg_uuid_t *tenant);

/* GUC check hook of xprov.tenant_id: empty, or a UUID. */
extern bool tenant_guard_check_tenant_setting(char **newval, void **extra, GucSource source);

#endif							/* TENANT_GUARD_H */
