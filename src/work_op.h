/*-------------------------------------------------------------------------
 *
 * work_op.h
 *	  An operation the background worker is executing, and its outcome.
 *
 * The worker copies each claimed operation into a WorkOp that lives in its
 * own memory context (op->cxt) until the outcome is recorded.  Protocols
 * (scim2.c, rest.c) drive a WorkOp through HTTP exchanges and finally fill
 * op->outcome; worker_store.c writes the outcome back to the queue.
 *
 *-------------------------------------------------------------------------
 */
#ifndef WORK_OP_H
#define WORK_OP_H

#include "storage/itemptr.h"
#include "utils/uuid.h"

struct Connector;
struct HttpRequest;

#define UUID_TEXT_LEN 37		/* 36 characters and the terminator */

/* uuid_out's text, without a function call and an allocation per uuid. */
static inline void
uuid_to_text(char *out, const pg_uuid_t *uuid)
{
	static const char hex[] = "0123456789abcdef";

	for (int i = 0; i < UUID_LEN; i++)
	{
		if (i == 4 || i == 6 || i == 8 || i == 10)
			*out++ = '-';
		*out++ = hex[uuid->data[i] >> 4];
		*out++ = hex[uuid->data[i] & 0x0F];
	}
	*out = '\0';
}

/*
 * What a claim tells about the lease it took: enough to record the outcome
 * by locking the lane version the claim left (lane_ctid) instead of looking
 * the operation and its lane up again.
 */
typedef struct LeaseRef
{
	pg_uuid_t	id;
	int64		seq;			/* the operation's place in its lane */
	int64		lane_id;
	ItemPointerData lane_ctid;	/* the lane version the claim wrote */
	pg_uuid_t	tenant_id;
	pg_uuid_t	connector_id;
	char	   *idempotency_key;	/* NULL: none */
} LeaseRef;

typedef enum OpType
{
	OP_CREATE,
	OP_UPDATE,
	OP_DELETE,
	OP_ENABLE,
	OP_DISABLE
} OpType;

typedef enum OutcomeKind
{
	OUTCOME_NONE = 0,			/* still running */
	OUTCOME_COMPLETED,			/* done at the target */
	OUTCOME_RETRY,				/* transient failure: retry with backoff or
								 * after retry_after_ms */
	OUTCOME_DEAD,				/* permanent failure: dead-letter now */
	OUTCOME_CONNECTOR,			/* the connector as a whole is failing
								 * (connection refused, 401/403): record the
								 * error, open the circuit breaker, do not
								 * count the attempt */
	OUTCOME_RELEASE,			/* never attempted (breaker open, shutdown):
								 * give the lease back, attempt not counted */
	OUTCOME_SKIPPED,			/* a before hook finished it without calling
								 * the target (error = the reason) */
	OUTCOME_PARKED				/* correlation could not decide: a case is
								 * opened (park_details) and the operation
								 * waits for it; attempt not counted */
} OutcomeKind;

/* What an operation waits for from the database before it can go on. */
typedef enum AwaitDb
{
	AWAIT_NONE = 0,
	AWAIT_CORRELATION,			/* a create: correlate before the target is
								 * called */
	AWAIT_LINK_CHECK			/* the target's lookup found check_uid: may
								 * it be linked to this identity? */
} AwaitDb;

/* The database's answer to an AwaitDb question. */
typedef enum CorrelationVerdict
{
	VERDICT_NONE = 0,
	VERDICT_CREATE,				/* nothing matches: create (after the
								 * target's lookup) */
	VERDICT_LINK,				/* link link_uid and update it */
	VERDICT_REJECTED,			/* a person said check_uid is not this
								 * identity's */
	VERDICT_PARK				/* uncertain: park_details holds the case */
} CorrelationVerdict;

typedef struct OpOutcome
{
	OutcomeKind kind;
	int			http_status;	/* status of the last response, 0 if none */
	char	   *error;			/* failures: what went wrong, for the
								 * attempt history; never contains secrets */
	char	   *target_uid;		/* completed: the account's id on the target
								 * (NULL: unchanged / none) */
	char	   *result;			/* completed: JSON text kept as the
								 * operation's result, or NULL */
	bool		unlinked;		/* completed delete: the account is gone */
	bool		gone;			/* failed because the account no longer
								 * exists on the target */
	char	   *park_details;	/* PARKED: JSON {situation, reason,
								 * candidates} */
	int			retry_after_ms; /* RETRY: -1 = exponential backoff, else
								 * wait exactly this long */
} OpOutcome;

typedef struct WorkOp
{
	pg_uuid_t	id;
	char		id_text[UUID_TEXT_LEN];
	pg_uuid_t	connector_id;
	pg_uuid_t	tenant_id;
	struct Connector *connector;	/* NULL for noop */
	bool		noop;			/* completes in-process (after its hooks) */
	OpType		type;
	char	   *object_class;
	char	   *identity_id;	/* text form, or NULL */
	char	   *target_uid;		/* the operation's, else the account last
								 * linked to the subject, else NULL */
	char	   *attributes;		/* JSON object, as text: read it with
								 * work_op_attributes() */
	struct JsonbContainer *attributes_jsonb;	/* or, until that is first
												 * called, the claimed jsonb
												 * (hooked operations in a
												 * UTF-8 database: the hook
												 * thread reads it as it is) */
	int			attributes_jsonb_size;
	int			attempt;		/* 1 for the first attempt */
	int64		lane_id;		/* the subject's lane */
	LeaseRef	lease;			/* how to find the lease again */
	MemoryContext cxt;			/* owns the WorkOp and all it points to */

	/* hooks (hook_run.c) */
	bool		has_hooks;		/* some hook applies: run the phases */
	char	   *shadow;			/* JSON: the account as last provisioned, or
								 * NULL */
	bool		attributes_replaced;	/* a before hook changed attributes */
	char	   *shadow_attributes;	/* JSON from an after hook, or NULL */
	bool		hook_verdict;	/* the outcome is a hook's doing: no on_error */
	struct HookRun *hook_runs;	/* what each hook run did (hook_history.h) */
	int			nhook_runs;
	struct HookAhead *hook_ahead;	/* the first before hook, run ahead on the
									 * hook thread, or NULL */

	/* correlation before a create (worker_store.c) */
	AwaitDb		awaiting;		/* waits for the database, not for HTTP */
	CorrelationVerdict verdict; /* the answer to the last question */
	char	   *link_uid;		/* LINK: the account to link */
	char	   *check_uid;		/* LINK_CHECK: the account the target found */
	char	   *check_resource; /* ... as the target showed it (JSON) */

	/* protocol state */
	int			step;			/* protocol-defined; 0 before begin() */
	int			redo;			/* protocol-defined retry counter (412 etc) */
	void	   *state;			/* protocol-defined */
	struct HttpRequest *request;	/* the next request to send, or NULL */

	OpOutcome	outcome;

	struct WorkOp *next;		/* worker's lists */
} WorkOp;

extern const char *op_type_name(OpType type);

/* op->attributes, its text made in op->cxt if still jsonb; NULL if none. */
extern char *work_op_attributes(WorkOp *op);

/*
 * In a PG_CATCH block: the error (out of memory, most likely) becomes a
 * transient failure of the operation, retried with backoff.  what, if not
 * NULL, prefixes the message.
 */
extern void op_retry_after_error(WorkOp *op, const char *what);

#endif							/* WORK_OP_H */
