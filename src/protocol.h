/*-------------------------------------------------------------------------
 *
 * protocol.h
 *	  Connector protocols: how one operation becomes HTTP exchanges.
 *
 * A protocol is a small state machine over a WorkOp.  begin() is called
 * once; resume() after each response to the request it asked for.  Each
 * returns true when it has placed the next request in op->request, false
 * when op->outcome is final.  They run in the worker with no transaction
 * open and op->cxt as the current memory context; they must not raise
 * errors (beyond out-of-memory) and must never put a secret in an error.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PROTOCOL_H
#define PROTOCOL_H

#include "http.h"
#include "work_op.h"

typedef struct Protocol
{
	const char *name;
	bool		(*begin) (WorkOp *op);
	bool		(*resume) (WorkOp *op, const HttpResponse *response);
} Protocol;

extern const Protocol scim2_protocol;	/* scim2.c */
extern const Protocol rest_protocol;	/* rest.c */

/*
 * Shared classification (protocol.c) for responses a protocol has no
 * special meaning for: 2xx -> COMPLETED; connect failures, 401, 403 ->
 * CONNECTOR; timeouts, resets, 408, 429, 5xx -> RETRY (Retry-After kept);
 * other 4xx, and requests the URL policy refused -> DEAD.  Fills op->outcome with an error text built from
 * `what` (e.g. "POST /Users") and the response.
 */
extern void protocol_classify(WorkOp *op, const HttpResponse *response, const char *what);

/* An HttpRequest in op->cxt for method and base_url + path (+ query). */
extern struct HttpRequest *protocol_request(WorkOp *op, const char *method, const char *path,
											const char *query);

#endif							/* PROTOCOL_H */
