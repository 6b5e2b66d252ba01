/*-------------------------------------------------------------------------
 *
 * dispatch.h
 *	  Admission of the worker's HTTP requests, per connector: connector
 *	  settings cache, in-flight limits, rate limit, Retry-After holds and the
 *	  circuit breaker.
 *
 * Requests wait in a per-connector queue until the connector may take one
 * more.  A connector that refuses connections, answers 401/403 or fails
 * several requests in a row is paused (the breaker opens): its waiting
 * operations are given back without spending an attempt, the worker stops
 * claiming its operations, and after the pause a single probe decides
 * whether it closes again or pauses for twice as long.
 *
 *-------------------------------------------------------------------------
 */
#ifndef DISPATCH_H
#define DISPATCH_H

#include "datatype/timestamp.h"

#include "connector.h"
#include "http.h"
#include "work_op.h"

extern void dispatch_init(void);

/* Connector settings cache (refreshed by the worker's claim transaction). */
extern bool dispatch_connector_stale(const pg_uuid_t *id, TimestampTz now);
extern void dispatch_connector_loaded(const pg_uuid_t *id, Connector *connector,
									  const char *error, TimestampTz now);
extern Connector *dispatch_connector(const pg_uuid_t *id, const char **error);

/* Requests */
extern void dispatch_submit(WorkOp *op);
extern long dispatch_pump(TimestampTz now);
extern void dispatch_response(WorkOp *op, const HttpResponse *response, TimestampTz now);
extern void dispatch_connector_failed(WorkOp *op, TimestampTz now);
extern WorkOp *dispatch_take_released(void);
extern int	dispatch_resume_delay_ms(const pg_uuid_t *connector_id, TimestampTz now);
extern WorkOp *dispatch_take_all_waiting(void);

/* Load */
extern int	dispatch_in_flight(void);
extern int	dispatch_waiting(void);
extern int	dispatch_paused(TimestampTz now, Datum *ids_array);
extern long dispatch_next_resume_ms(TimestampTz now);

#endif							/* DISPATCH_H */
