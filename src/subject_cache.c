/*-------------------------------------------------------------------------
 *
 * subject_cache.c
 *	  Subjects' lanes, kept per backend (see the header).
 *
 * A hash table keyed by the subject's full key (connector, object class,
 * subject text), in a memory context of its own that is dropped whole.
 * An invalidation only marks the cache stale: it is emptied at its next
 * use, never while a caller may be reading an entry.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/hashfn.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/memutils.h"

#include "subject_cache.h"

/* ~120 bytes each, strings included: a few MB at most per backend */
#define SUBJECT_CACHE_MAX 32768

typedef struct SubjectKey
{
	pg_uuid_t	connector_id;
	const char *object_class;
	const char *subject;
} SubjectKey;

typedef struct SubjectEntry
{
	SubjectKey	key;			/* strings owned by cache_context */
	int64		lane_id;
} SubjectEntry;

static MemoryContext cache_context = NULL;
static HTAB *subjects = NULL;
static Oid	cached_relid = InvalidOid;
static bool stale = false;
static bool callback_registered = false;

static uint32
subject_key_hash(const void *key, Size keysize)
{
	const SubjectKey *k = key;
	uint32		h = hash_bytes((const unsigned char *) &k->connector_id, UUID_LEN);

	h = hash_combine(h, hash_bytes((const unsigned char *) k->object_class, strlen(k->object_class)));
	return hash_combine(h, hash_bytes((const unsigned char *) k->subject, strlen(k->subject)));
}

static int
subject_key_match(const void *a, const void *b, Size keysize)
{
	const SubjectKey *x = a;
	const SubjectKey *y = b;

	if (memcmp(&x->connector_id, &y->connector_id, UUID_LEN) != 0 ||
		strcmp(x->object_class, y->object_class) != 0)
		return 1;
	return strcmp(x->subject, y->subject) != 0;
}

static void *
subject_key_copy(void *dest, const void *src, Size keysize)
{
	SubjectKey *to = dest;
	const SubjectKey *from = src;

	to->connector_id = from->connector_id;
	to->object_class = MemoryContextStrdup(cache_context, from->object_class);
	to->subject = MemoryContextStrdup(cache_context, from->subject);
	return dest;
}

static void
subject_cache_invalidate(Datum arg, Oid relid)
{
	if (!OidIsValid(relid) || relid == cached_relid)
		stale = true;
}

/* An empty cache for the subjects of subject_relid. */
static void
start_over(Oid subject_relid)
{
	HASHCTL		ctl;

	if (!callback_registered)
	{
		CacheRegisterRelcacheCallback(subject_cache_invalidate, (Datum) 0);
		callback_registered = true;
	}
	if (cache_context != NULL)
		MemoryContextDelete(cache_context);
	cache_context = AllocSetContextCreate(CacheMemoryContext, "xprov subject cache",
										  ALLOCSET_DEFAULT_SIZES);
	ctl.keysize = sizeof(SubjectKey);
	ctl.entrysize = sizeof(SubjectEntry);
	ctl.hash = subject_key_hash;
	ctl.match = subject_key_match;
	ctl.keycopy = subject_key_copy;
	ctl.hcxt = cache_context;
	subjects = hash_create("xprov subjects", 1024, &ctl,
						   HASH_ELEM | HASH_FUNCTION | HASH_COMPARE | HASH_KEYCOPY | HASH_CONTEXT);
	cached_relid = subject_relid;
	stale = false;
}

static bool
usable_for(Oid subject_relid)
{
	return subjects != NULL && !stale && cached_relid == subject_relid;
}

static void
key_of(const OpInput *op, SubjectKey *key)
{
	key->connector_id = op->connector_id;
	key->object_class = op->object_class;
	key->subject = op->subject;
}

bool
subject_cache_find(Oid subject_relid, const OpInput *op, int64 *lane_id)
{
	SubjectKey	key;
	SubjectEntry *entry;

	if (!usable_for(subject_relid))
		return false;
	key_of(op, &key);
	entry = hash_search(subjects, &key, HASH_FIND, NULL);
	if (entry == NULL)
		return false;
	*lane_id = entry->lane_id;
	return true;
}

void
subject_cache_add(Oid subject_relid, const OpInput *op, int64 lane_id)
{
	SubjectKey	key;
	SubjectEntry *entry;

	if (!usable_for(subject_relid) || hash_get_num_entries(subjects) >= SUBJECT_CACHE_MAX)
		start_over(subject_relid);
	key_of(op, &key);
	entry = hash_search(subjects, &key, HASH_ENTER, NULL);
	entry->lane_id = lane_id;
}
