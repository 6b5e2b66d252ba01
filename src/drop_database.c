/*-------------------------------------------------------------------------
 *
 * drop_database.c
 *	  Let DROP DATABASE of the workers' database through.
 *
 * DROP DATABASE refuses while other sessions are connected, and the
 * workers are always connected to xprov.database_name.  Before the drop
 * runs, its workers are asked to stop (SIGTERM: they give back their leases
 * and exit).  The launcher starts them again a second later; their
 * connection then waits for the drop to finish and fails, and the launcher
 * backs off, retrying until the database exists again.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "tcop/utility.h"

#include "drop_database.h"
#include "worker_shmem.h"
#include "xprov.h"

static ProcessUtility_hook_type prev_process_utility = NULL;

static void
xprov_process_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
					  ProcessUtilityContext context, ParamListInfo params,
					  QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *stmt = pstmt->utilityStmt;

	if (IsA(stmt, DropdbStmt))
	{
		DropdbStmt *drop = (DropdbStmt *) stmt;
		Oid			dboid = get_database_oid(drop->dbname, true);

		if (OidIsValid(dboid) && xprov_database_name != NULL &&
			strcmp(drop->dbname, xprov_database_name) == 0)
			worker_stop_for_database(dboid);
	}

	if (prev_process_utility)
		prev_process_utility(pstmt, queryString, readOnlyTree, context, params,
							 queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
								queryEnv, dest, qc);
}

void
drop_database_install_hook(void)
{
	prev_process_utility = ProcessUtility_hook;
	ProcessUtility_hook = xprov_process_utility;
}
