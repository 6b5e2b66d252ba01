/*-------------------------------------------------------------------------
 *
 * op_input.h
 *	  Validation of operations before they are enqueued.
 *
 * One OpInput per operation, filled from enqueue()'s arguments or from an
 * element of enqueue_batch()'s array, then checked as a whole so that a bad
 * batch is rejected before anything is written.  Errors name the batch
 * element (element >= 0) they come from.
 *
 *-------------------------------------------------------------------------
 */
#ifndef OP_INPUT_H
#define OP_INPUT_H

#include "datatype/timestamp.h"
#include "utils/jsonb.h"
#include "utils/uuid.h"

typedef struct OpInput
{
	int			element;		/* index in enqueue_batch's array, or -1 */
	bool		has_tenant;
	pg_uuid_t	tenant_id;
	bool		has_connector;
	pg_uuid_t	connector_id;
	bool		has_identity;
	pg_uuid_t	identity_id;
	char	   *target_uid;
	char	   *operation_type;
	char	   *object_class;
	Jsonb	   *attributes;
	int32		priority;
	bool		has_not_before;
	TimestampTz not_before;
	char	   *idempotency_key;

	/* derived by op_input_check() and op_inputs_resolve_connectors() */
	char	   *subject;
	char		claimant;
	pg_uuid_t	id;
} OpInput;

extern void op_input_from_jsonb(JsonbContainer *object, int element, OpInput *op);
extern void op_input_check(OpInput *op);
extern void op_inputs_resolve_connectors(OpInput *ops, int count);
extern void op_generate_id(pg_uuid_t *id);
extern void op_raise_error(int element, int sqlstate, const char *message,
						   const char *detail, const char *hint) pg_attribute_noreturn();

#endif							/* OP_INPUT_H */
