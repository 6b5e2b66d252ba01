/*-------------------------------------------------------------------------
 *
 * enqueue_legacy.c
 *	  Enqueue into a database whose xprov is still 0.1.0 (see the header).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "executor/spi.h"
#include "storage/proc.h"
#include "utils/lsyscache.h"

#include "enqueue_legacy.h"
#include "spi_util.h"

/*
 * Looked up once per transaction: ALTER EXTENSION xprov UPDATE may run
 * between two transactions of a backend, never inside one of ours.
 */
bool
enqueue_lanes_number_operations(void)
{
	static LocalTransactionId looked_up_in = InvalidLocalTransactionId;
	static bool numbered = false;

	if (MyProc->lxid != looked_up_in)
	{
		Oid			namespace = get_namespace_oid("xprov", true);
		Oid			lane = OidIsValid(namespace) ? get_relname_relid("lane", namespace) : InvalidOid;

		numbered = OidIsValid(lane) && get_attnum(lane, "last_seq") != InvalidAttrNumber;
		looked_up_in = MyProc->lxid;
	}
	return numbered;
}

#define LANE_IF_IDLE(col, value) \
	col " = CASE WHEN l.state = 'i' THEN " value " ELSE l." col " END"

#define LANE_RETURNING \
	"RETURNING l.state, l.claimant, -(l.priority::bigint) AS rank, l.run_at, l.lane_id "

#define ONE_LANE_UPDATE \
	"  UPDATE xprov.lane l SET " \
	LANE_IF_IDLE("state", "'r'") ", " \
	LANE_IF_IDLE("next_seq", "s.seq") ", " \
	LANE_IF_IDLE("priority", "$6") ", " \
	LANE_IF_IDLE("run_at", "greatest(now(), $7)") " " \
	"    FROM xprov.subject sj, s " \
	"   WHERE sj.connector_id = $2 AND sj.object_class = $3 AND sj.subject = $4 " \
	"     AND l.lane_id = sj.lane_id " \
	LANE_RETURNING

#define ONE_OP_INSERT \
	"op AS (" \
	"  INSERT INTO xprov.op (id, seq, lane_id, tenant_id, connector_id, identity_id, target_uid, " \
	"                        operation_type, object_class, attributes, priority, not_before, " \
	"                        idempotency_key) " \
	"  SELECT $8, s.seq, lane.lane_id, $1, $2, $9, $10, $11, $3, $12, $6, $7, $13 FROM s, lane" \
	") " \
	"SELECT state, claimant, rank, run_at, lane_id FROM lane"

/*
 * A sequence value taken before waiting for another enqueue of the same
 * subject could be lower than that one's, and the lane would meet an
 * operation it had already passed: so the lane is locked first (until
 * commit), and the number taken after.
 */
static SavedPlan lock_subject_lane = {
	.sql =
	"SELECT l.lane_id FROM xprov.subject sj "
	" CROSS JOIN LATERAL (SELECT l.lane_id FROM xprov.lane l "
	"                      WHERE l.lane_id = sj.lane_id LIMIT 1 FOR NO KEY UPDATE) l "
	" WHERE sj.connector_id = $1 AND sj.object_class = $2 AND sj.subject = $3",
	.nargs = 3,
	.argtypes = {UUIDOID, TEXTOID, TEXTOID},
};

static SavedPlan enqueue_existing = {
	.sql =
	"WITH s AS MATERIALIZED (SELECT nextval('xprov.op_seq') AS seq), "
	"lane AS ("
	ONE_LANE_UPDATE
	"), "
	ONE_OP_INSERT,
	ONE_OP_ARGS
};

/*
 * A subject created by another transaction after this statement's
 * snapshot is found by neither new_subject nor old_lane: the statement
 * then writes nothing, and runs again in a new snapshot.
 */
static SavedPlan enqueue_one = {
	.sql =
	"WITH s AS MATERIALIZED (SELECT nextval('xprov.op_seq') AS seq), "
	"new_subject AS ("
	"  INSERT INTO xprov.subject (tenant_id, connector_id, object_class, subject, claimant) "
	"  VALUES ($1, $2, $3, $4, $5) "
	"  ON CONFLICT (connector_id, object_class, subject) DO NOTHING "
	"  RETURNING lane_id"
	"), new_lane AS ("
	"  INSERT INTO xprov.lane AS l (lane_id, tenant_id, connector_id, claimant, state, next_seq, "
	"                               priority, run_at) "
	"  SELECT n.lane_id, $1, $2, $5, 'r', s.seq, $6, greatest(now(), $7) FROM new_subject n, s "
	LANE_RETURNING
	"), old_lane AS ("
	ONE_LANE_UPDATE
	"), lane AS (SELECT * FROM new_lane UNION ALL SELECT * FROM old_lane), "
	ONE_OP_INSERT,
	ONE_OP_ARGS
};

bool
enqueue_legacy_one(Datum *values, const char *nulls)
{
	for (int attempt = 0; attempt < 2; attempt++)
	{
		saved_plan_execute(&lock_subject_lane, (Datum[]) {values[1], values[2], values[3]}, NULL, false, 0);
		if (SPI_processed > 0)
			saved_plan_execute(&enqueue_existing, values, nulls, false, 0);
		else
			saved_plan_execute(&enqueue_one, values, nulls, false, 0);
		if (SPI_processed > 0)
		{
			spi_note_ready_lanes(1);
			return true;
		}
	}
	return false;
}
