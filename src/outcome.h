/*-------------------------------------------------------------------------
 *
 * outcome.h
 *	  Recording outcomes of leased operations, for the background worker.
 *
 * The SQL functions xprov.complete/fail/retry/skip/cancel live in
 * outcome.c too.  These entry points take the worker's lease tag and skip
 * (with a log line) operations it no longer holds.  hooks arguments are
 * what the attempt's hooks did, as stored (hook_history_stored), or NULL.  The
 * caller is connected to SPI inside a transaction.
 *
 *-------------------------------------------------------------------------
 */
#ifndef OUTCOME_H
#define OUTCOME_H

#include "datatype/timestamp.h"
#include "utils/jsonb.h"
#include "utils/uuid.h"

#include "work_op.h"

extern int	outcome_complete(const LeaseRef *leases, int count, char **target_uids,
							 Jsonb **results, char **hooks, int64 leased_by);
extern bool outcome_fail(const LeaseRef *lease, const char *error, bool permanent,
						 int retry_after_ms, int http_status, const char *hooks,
						 int64 leased_by);
extern bool outcome_skip(const LeaseRef *lease, const char *reason, char *hooks,
						 int64 leased_by);
extern bool outcome_park(const LeaseRef *lease, const char *details, const char *hooks,
						 int64 leased_by);
extern bool outcome_release(const LeaseRef *lease, TimestampTz run_at, const char *error,
							int http_status, int64 leased_by);

#endif							/* OUTCOME_H */
