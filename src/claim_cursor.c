/*-------------------------------------------------------------------------
 *
 * claim_cursor.c
 *	  Shared claim cursors and the end-of-transaction rewind hints that keep
 *	  them exact.  See claim_cursor.h for the idea.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"

#include "claim_cursor.h"
#include "worker_shmem.h"
#include "xprov.h"

#define MAX_CURSORS 32

/*
 * Keys reported while not yet due (retries, not_before).  Claims skip them,
 * so the cursor may pass them; each is replayed as a rewind once due.  More
 * than this many at once are left to the periodic reset.
 */
#define MAX_FUTURE_KEYS 64

typedef struct CursorSlot
{
	Oid			dboid;			/* InvalidOid: slot unused */
	char		claimant;
	bool		valid;			/* false: next claim starts at the beginning */
	ClaimKey	key;			/* last key handed out */
	uint64		epoch;			/* changes whenever key moves back */
	bool		has_rewind;
	ClaimKey	rewind;			/* smallest key made ready since last claim */
	TimestampTz reset_at;		/* last time a claim started from the beginning */
	TimestampTz used_at;		/* last claim or report, to evict the stalest */
	int			nfuture;
	ClaimKey	future[MAX_FUTURE_KEYS];
	TimestampTz dropped_due;	/* earliest run_at of a key that did not fit */
	TimestampTz lease_due;		/* no lease of this claimant expires before */
} CursorSlot;

typedef struct CursorShared
{
	slock_t		mutex;
	uint64		next_epoch;		/* epochs are unique across slots */
	CursorSlot	slots[MAX_CURSORS];
} CursorShared;

/* Per-backend keys made ready by the current transaction, per claimant. */
typedef struct PendingRewind
{
	bool		has;
	ClaimKey	key;
} PendingRewind;

static CursorShared *cursor_shared = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static PendingRewind pending[2];

/*
 * Where this transaction's claims started, per claimant.  If it aborts, its
 * leases vanish and the lanes it claimed are ready again behind the cursor.
 */
static PendingRewind claimed_from[2];

/* The slot's epoch when this backend's current claim began, per claimant. */
static uint64 begun_epoch[2];
static bool claims_undone = false;	/* a savepoint rolled claims back */
static bool xact_callback_registered = false;

static void register_callbacks(void);

static int
claim_key_cmp(const ClaimKey *a, const ClaimKey *b)
{
	if (a->rank != b->rank)
		return a->rank < b->rank ? -1 : 1;
	if (a->run_at != b->run_at)
		return a->run_at < b->run_at ? -1 : 1;
	if (a->lane_id != b->lane_id)
		return a->lane_id < b->lane_id ? -1 : 1;
	return 0;
}

void
claim_key_set_min(ClaimKey *key)
{
	key->rank = PG_INT64_MIN;
	key->run_at = DT_NOBEGIN;
	key->lane_id = PG_INT64_MIN;
}

static void
cursor_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(CursorShared)));
}

static void
cursor_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	cursor_shared = ShmemInitStruct("xprov claim cursors", sizeof(CursorShared), &found);
	if (!found)
	{
		memset(cursor_shared, 0, sizeof(CursorShared));
		SpinLockInit(&cursor_shared->mutex);
	}
	LWLockRelease(AddinShmemInitLock);
}

void
claim_cursor_shmem_init(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = cursor_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = cursor_shmem_startup;
}

/*
 * Caller holds the mutex.  When every slot is taken (more databases than
 * slots, or dropped databases), the least recently used one is reused: its
 * database merely starts its next claim from the beginning.  Only a claim's
 * start creates a slot; advancing or rewinding a slot that was taken over in
 * the meantime does nothing, as the next claim starts from the beginning.
 */
static CursorSlot *
find_slot(char claimant, TimestampTz now, bool create)
{
	CursorSlot *victim = NULL;

	for (int i = 0; i < MAX_CURSORS; i++)
	{
		CursorSlot *slot = &cursor_shared->slots[i];

		if (slot->dboid == MyDatabaseId && slot->claimant == claimant)
		{
			slot->used_at = now;
			return slot;
		}
		if (victim == NULL || victim->dboid != InvalidOid)
		{
			if (slot->dboid == InvalidOid || victim == NULL || slot->used_at < victim->used_at)
				victim = slot;
		}
	}
	if (!create)
		return NULL;
	memset(victim, 0, sizeof(CursorSlot));
	victim->dboid = MyDatabaseId;
	victim->claimant = claimant;
	victim->used_at = now;
	victim->dropped_due = DT_NOEND;
	victim->lease_due = DT_NOBEGIN;	/* leases may survive from before */
	return victim;
}

/*
 * Caller holds the mutex.  Keeps the earliest-due keys when full; the
 * earliest key dropped is remembered by its due time, when the next claim
 * starts over from the beginning.
 */
static void
remember_future_key(CursorSlot *slot, const ClaimKey *key)
{
	int			latest = 0;
	ClaimKey	dropped = *key;

	if (slot->nfuture < MAX_FUTURE_KEYS)
	{
		slot->future[slot->nfuture++] = *key;
		return;
	}
	for (int i = 1; i < slot->nfuture; i++)
		if (slot->future[i].run_at > slot->future[latest].run_at)
			latest = i;
	if (key->run_at < slot->future[latest].run_at)
	{
		dropped = slot->future[latest];
		slot->future[latest] = *key;
	}
	if (dropped.run_at < slot->dropped_due)
		slot->dropped_due = dropped.run_at;
}

/* Caller holds the mutex.  Rewind to every remembered key now due. */
static void
replay_due_keys(CursorSlot *slot, TimestampTz now, ClaimKey *start)
{
	for (int i = 0; i < slot->nfuture;)
	{
		if (slot->future[i].run_at > now)
		{
			i++;
			continue;
		}
		if (claim_key_cmp(&slot->future[i], start) < 0)
			*start = slot->future[i];
		slot->future[i] = slot->future[--slot->nfuture];
	}
}

void
claim_cursor_begin(char claimant, TimestampTz now, ClaimKey *start)
{
	CursorSlot *slot;
	PendingRewind *own = &pending[claimant == CLAIMANT_WORKER ? 1 : 0];

	claim_key_set_min(start);
	if (cursor_shared == NULL)
		return;

	SpinLockAcquire(&cursor_shared->mutex);
	slot = find_slot(claimant, now, true);
	if (!slot->valid ||
		now >= slot->dropped_due ||
		now - slot->reset_at >= (int64) xprov_cursor_reset_ms * 1000)
	{
		slot->valid = true;
		slot->key = *start;
		slot->epoch = ++cursor_shared->next_epoch;
		slot->has_rewind = false;
		slot->reset_at = now;
		slot->nfuture = 0;
		slot->dropped_due = DT_NOEND;
	}
	else
	{
		*start = slot->key;
		if (slot->has_rewind && claim_key_cmp(&slot->rewind, start) < 0)
			*start = slot->rewind;
		slot->has_rewind = false;
		replay_due_keys(slot, now, start);

		/*
		 * Moving back: this claim may fill its batch before it reaches the
		 * old key, so the cursor stays here until it advances, and claims
		 * that began before (from the old key) no longer move it.
		 */
		if (claim_key_cmp(start, &slot->key) < 0)
		{
			slot->key = *start;
			slot->epoch = ++cursor_shared->next_epoch;
		}
	}
	begun_epoch[claimant == CLAIMANT_WORKER ? 1 : 0] = slot->epoch;
	SpinLockRelease(&cursor_shared->mutex);

	/* our own transaction's ready lanes are visible to us before commit */
	if (own->has && claim_key_cmp(&own->key, start) < 0)
		*start = own->key;
}

void
claim_cursor_advance(char claimant, const ClaimKey *start, const ClaimKey *last)
{
	PendingRewind *from = &claimed_from[claimant == CLAIMANT_WORKER ? 1 : 0];
	CursorSlot *slot;
	TimestampTz now;

	if (cursor_shared == NULL)
		return;

	register_callbacks();
	if (!from->has || claim_key_cmp(start, &from->key) < 0)
		from->key = *start;
	from->has = true;

	now = GetCurrentTimestamp();
	SpinLockAcquire(&cursor_shared->mutex);
	slot = find_slot(claimant, now, false);

	/*
	 * Within an epoch every claim started at or before the key of its time,
	 * so the lanes up to the furthest last key are all accounted for.  A
	 * claim that began before the cursor moved back covered only lanes after
	 * its start, which may lie beyond lanes now left to the new epoch.
	 */
	if (slot != NULL && slot->valid &&
		slot->epoch == begun_epoch[claimant == CLAIMANT_WORKER ? 1 : 0] &&
		claim_key_cmp(last, &slot->key) > 0)
		slot->key = *last;
	SpinLockRelease(&cursor_shared->mutex);
}

static void
publish_rewind(char claimant, const ClaimKey *key, TimestampTz now)
{
	CursorSlot *slot;

	SpinLockAcquire(&cursor_shared->mutex);
	slot = find_slot(claimant, now, false);
	if (slot != NULL)
	{
		if (!slot->has_rewind || claim_key_cmp(key, &slot->rewind) < 0)
			slot->rewind = *key;
		slot->has_rewind = true;
		if (key->run_at > now)
			remember_future_key(slot, key);
	}
	SpinLockRelease(&cursor_shared->mutex);
}

static void
publish_pending(PendingRewind *rewinds)
{
	TimestampTz now;

	if (cursor_shared == NULL || !(rewinds[0].has || rewinds[1].has))
		return;
	now = GetCurrentTimestamp();
	if (rewinds[0].has)
		publish_rewind(CLAIMANT_EXTERNAL, &rewinds[0].key, now);
	if (rewinds[1].has)
		publish_rewind(CLAIMANT_WORKER, &rewinds[1].key, now);
}

static void
forget_pending(void)
{
	pending[0].has = pending[1].has = false;
	claimed_from[0].has = claimed_from[1].has = false;
	claims_undone = false;
}

/*
 * Rewinds are published once the transaction has released its locks, not
 * at commit: a claim that starts from a rewind must be able to lock the
 * lanes it points to.  Published while this transaction still held them
 * (commit callbacks run before locks go), a claim could take the rewind,
 * skip the still-locked lanes and move the cursor past them for good.
 */
static void
cursor_resource_release(ResourceReleasePhase phase, bool isCommit, bool isTopLevel, void *arg)
{
	if (phase != RESOURCE_RELEASE_AFTER_LOCKS || !isTopLevel)
		return;
	if (isCommit)
	{
		publish_pending(pending);
		if (claims_undone)
			publish_pending(claimed_from);
		if (pending[1].has)
			worker_wake_at_commit();
	}
	else
	{
		/* undone claims, and lanes we kept locked while claims passed them */
		publish_pending(claimed_from);
		publish_pending(pending);
	}
	forget_pending();
}

static void
cursor_xact_callback(XactEvent event, void *arg)
{
	/* a prepared transaction's rows are found by the periodic reset */
	if (event == XACT_EVENT_PREPARE)
		forget_pending();
}

/*
 * A rolled-back savepoint may undo claims too: publish at once, and again
 * when the transaction ends (a claim taking the first rewind may still
 * have found the lanes locked).
 */
static void
cursor_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		publish_pending(claimed_from);
		claims_undone = true;
	}
}

static void
register_callbacks(void)
{
	if (xact_callback_registered)
		return;
	RegisterXactCallback(cursor_xact_callback, NULL);
	RegisterSubXactCallback(cursor_subxact_callback, NULL);
	RegisterResourceReleaseCallback(cursor_resource_release, NULL);
	xact_callback_registered = true;
}

void
claim_cursor_note_ready(char claimant, const ClaimKey *key)
{
	PendingRewind *p = &pending[claimant == CLAIMANT_WORKER ? 1 : 0];
	ClaimKey	before = *key;

	if (cursor_shared == NULL)
		return;

	/*
	 * Claims start strictly after their start key, so rewind to the position
	 * just before this one; lane ids are unique, so nothing else lies between.
	 */
	before.lane_id--;
	key = &before;
	register_callbacks();
	if (!p->has || claim_key_cmp(key, &p->key) < 0)
		p->key = *key;
	p->has = true;
}

/*
 * Whether expired leases may exist, so that a sweep (a scan of the lanes) is
 * worth running now.  Claims report their lease expiry; a sweep reports the
 * earliest lease left.  Without shared memory, once a second per backend.
 */
bool
claim_cursor_lease_sweep_due(char claimant, TimestampTz now)
{
	static TimestampTz last_local_sweep = 0;
	CursorSlot *slot;
	bool		due;

	if (cursor_shared == NULL)
	{
		due = now - last_local_sweep >= USECS_PER_SEC;
		if (due)
			last_local_sweep = now;
		return due;
	}

	SpinLockAcquire(&cursor_shared->mutex);
	slot = find_slot(claimant, now, true);
	due = now >= slot->lease_due;
	if (due)
		slot->lease_due = DT_NOEND;
	SpinLockRelease(&cursor_shared->mutex);
	return due;
}

void
claim_cursor_note_lease(char claimant, TimestampTz expires)
{
	CursorSlot *slot;

	if (cursor_shared == NULL)
		return;

	SpinLockAcquire(&cursor_shared->mutex);
	slot = find_slot(claimant, GetCurrentTimestamp(), true);
	if (expires < slot->lease_due)
		slot->lease_due = expires;
	SpinLockRelease(&cursor_shared->mutex);
}

/*
 * When the worker should look again without being woken: the earliest key
 * not yet due, the earliest key dropped for lack of room, the earliest lease
 * expiry.  DT_NOEND when nothing is known.
 */
TimestampTz
claim_cursor_next_due(char claimant)
{
	TimestampTz due = DT_NOEND;
	CursorSlot *slot;

	if (cursor_shared == NULL)
		return due;
	SpinLockAcquire(&cursor_shared->mutex);
	slot = find_slot(claimant, GetCurrentTimestamp(), false);
	if (slot != NULL)
	{
		for (int i = 0; i < slot->nfuture; i++)
			due = Min(due, slot->future[i].run_at);
		due = Min(due, slot->dropped_due);
		if (slot->lease_due != DT_NOBEGIN)
			due = Min(due, slot->lease_due);
	}
	SpinLockRelease(&cursor_shared->mutex);
	return due;
}

/* Forget the database's cursors: its lanes were dropped and recreated. */
void
claim_cursor_forget_database(void)
{
	if (cursor_shared == NULL)
		return;
	SpinLockAcquire(&cursor_shared->mutex);
	for (int i = 0; i < MAX_CURSORS; i++)
		if (cursor_shared->slots[i].dboid == MyDatabaseId)
		{
			cursor_shared->slots[i].valid = false;
			cursor_shared->slots[i].lease_due = DT_NOBEGIN;
		}
	SpinLockRelease(&cursor_shared->mutex);
}

/*
 * Rewind the cursors (the worker's only, or both) to the start of the
 * ready index from this transaction's own claims on, and for everyone when
 * it commits (which also wakes the workers): lanes that claims passed over,
 * such as those of a disabled or paused connector, become claimable.
 */
void
claim_cursor_rewind_at_commit(bool worker_only)
{
	if (cursor_shared == NULL)
		return;
	register_callbacks();
	for (int i = worker_only ? 1 : 0; i < 2; i++)
	{
		claim_key_set_min(&pending[i].key);
		pending[i].has = true;
	}
}
