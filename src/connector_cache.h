/*-------------------------------------------------------------------------
 *
 * connector_cache.h
 *	  What every enqueue checks about a connector, kept per backend.
 *
 * An enqueue needs its connector's tenant (to check it against the
 * operation's) and kind (who claims its operations).  Neither changes
 * through the API, and connectors are never deleted, so a backend keeps
 * them once seen.  A superuser may still edit xprov.connector, and DROP and
 * CREATE EXTENSION make a new table: every committed change of the table
 * (trigger connector_changed) and every CREATE or UPDATE of the extension
 * bumps the shared configuration generation, and the cache is emptied when
 * it moves.
 *
 *-------------------------------------------------------------------------
 */
#ifndef CONNECTOR_CACHE_H
#define CONNECTOR_CACHE_H

#include "utils/uuid.h"

typedef struct ConnectorFacts
{
	pg_uuid_t	id;
	pg_uuid_t	tenant_id;
	char		claimant;		/* CLAIMANT_EXTERNAL or CLAIMANT_WORKER */
} ConnectorFacts;

/*
 * Whether the cache may be used by this statement, to be asked before the
 * connectors are read: not while this transaction has changed them itself
 * (it may roll back), nor in a database whose xprov is still 0.1.0 (no
 * trigger tells of changes there).
 */
extern bool connector_cache_usable(void);

/* The connector's facts if known, else NULL. */
extern const ConnectorFacts *connector_cache_find(const pg_uuid_t *id);

/* Remember facts read in a statement begun after connector_cache_usable(). */
extern void connector_cache_add(const ConnectorFacts *facts);

#endif							/* CONNECTOR_CACHE_H */
