/*-------------------------------------------------------------------------
 *
 * claim_cursor.h
 *	  The keyset cursor that keeps claims off consumed index entries.
 *
 * Claims scan xprov.lane's ready index in key order (ClaimKey).  Every claim
 * leaves a dead entry behind; while a long transaction pins the xmin horizon
 * those entries cannot be vacuumed, so a scan from the start of the index
 * would get slower with every claim.  Instead each (database, claimant) has
 * a cursor in shared memory: claims start after the last key handed out.
 *
 * Transactions that make a lane ready at a key that may lie behind the
 * cursor report it with claim_cursor_note_ready(), and so does a claim for
 * a lane it locked without leasing; when the transaction ends (commit, or
 * abort: claims skip lanes that a transaction holds locked), once its locks
 * are released, the smallest such key rewinds the cursor, and keys not yet
 * due are replayed when they come due.  A claim that starts from a rewind
 * moves the cursor back at once and opens a new epoch: a claim that began
 * before then, from further on, no longer moves the cursor when it ends (it
 * would pass the lanes between the rewound claim's last key and its own
 * start), and within an epoch the cursor only moves forward.
 * A periodic reset (xprov.cursor_reset_interval) is the backstop for what
 * nobody reports, such as prepared transactions; it is rare because under a
 * pinned snapshot it rescans every index entry consumed since the pin.
 * Without shared_preload_libraries every claim starts at the beginning.
 *
 *-------------------------------------------------------------------------
 */
#ifndef CLAIM_CURSOR_H
#define CLAIM_CURSOR_H

#include "datatype/timestamp.h"

/* Position in the ready index: (-priority, run_at, lane_id). */
typedef struct ClaimKey
{
	int64		rank;
	TimestampTz run_at;
	int64		lane_id;
} ClaimKey;

#define CLAIMANT_EXTERNAL	'e'
#define CLAIMANT_WORKER		'w'

extern void claim_cursor_shmem_init(void);
extern void claim_cursor_begin(char claimant, TimestampTz now, ClaimKey *start);
extern void claim_cursor_advance(char claimant, const ClaimKey *start,
								 const ClaimKey *last);
extern void claim_cursor_note_ready(char claimant, const ClaimKey *key);
extern void claim_key_set_min(ClaimKey *key);

/* The same slots remember when the earliest lease runs out. */
extern bool claim_cursor_lease_sweep_due(char claimant, TimestampTz now);
extern void claim_cursor_note_lease(char claimant, TimestampTz expires);

/* For the worker's fallback timer, and after the extension was recreated. */
extern TimestampTz claim_cursor_next_due(char claimant);
extern void claim_cursor_forget_database(void);
extern void claim_cursor_rewind_at_commit(bool worker_only);

#endif							/* CLAIM_CURSOR_H */
