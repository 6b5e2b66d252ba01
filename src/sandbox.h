/*-------------------------------------------------------------------------
 *
 * sandbox.h
 *	  Running tenants' JavaScript hooks in a duktape sandbox.
 *
 * One duktape heap per thread, built on first use: strict mode, frozen
 * built-ins and global object, no Duktape/Buffer/CBOR/Proxy/Reflect/
 * performance globals, eval and Function refusing strings.  Each call runs
 * under a deadline (checked by the interpreter and the regexp engine, sticky
 * once tripped) and a memory cap (a counting allocator).  A fatal duktape
 * error abandons the heap, frees every block it had, and the next call
 * builds a fresh one.
 *
 * A script is a program that defines function hook(ctx).  Its top level
 * runs on every call, in a fresh scope, so nothing it creates survives into
 * the next call; the compiled program is cached under the caller's key.
 *
 * sandbox_run() never lets a PostgreSQL error happen while duktape frames
 * are on the stack, and never lets a duktape error escape: it reports
 * everything in SandboxCall.  Its results are palloc'd in the caller's
 * memory context once duktape has returned (which may throw out of memory,
 * as any palloc).
 *
 * A thread other than the process's main one may run calls on a heap of
 * its own (sandbox_heap_create(), sandbox_run_on()).  Such a call is
 * detached: it touches no PostgreSQL state at all, and its results go to
 * the buffer the caller gives, or else to malloc'd blocks that
 * sandbox_call_release() frees.
 *
 *-------------------------------------------------------------------------
 */
#ifndef SANDBOX_H
#define SANDBOX_H

/* Largest JSON result a hook may return. */
#define SANDBOX_MAX_RESULT (1024 * 1024)

/* Smallest memory_kb a call may ask for. */
#define SANDBOX_MIN_MEMORY_KB 64

typedef enum SandboxStatus
{
	SANDBOX_OK = 0,
	SANDBOX_COMPILE_ERROR,		/* the script does not compile */
	SANDBOX_NO_HOOK,			/* it does not define function hook(ctx) */
	SANDBOX_THREW,				/* the script threw */
	SANDBOX_TIMEOUT,			/* it ran past its deadline */
	SANDBOX_MEMORY,				/* it needed more than its memory cap */
	SANDBOX_TOO_LARGE,			/* its result is over SANDBOX_MAX_RESULT */
	SANDBOX_CANCELLED,			/* query cancel or shutdown: the caller must
								 * CHECK_FOR_INTERRUPTS() */
	SANDBOX_FATAL				/* duktape itself failed; heap rebuilt */
} SandboxStatus;

/*
 * A value in a ctx built field by field (SandboxCall.fields), or a member
 * of an object a hook returned (SandboxCall.members).  Texts are UTF-8.
 * Building ctx this way skips most of the JSON parsing a text ctx costs:
 * only JSON-valued fields (attributes, the shadow) are parsed.
 */
typedef enum SandboxValueKind
{
	SANDBOX_VALUE_NULL,
	SANDBOX_VALUE_STRING,		/* text: the string */
	SANDBOX_VALUE_NUMBER,		/* number */
	SANDBOX_VALUE_BOOLEAN,		/* boolean */
	SANDBOX_VALUE_JSON,			/* text: JSON (an object, an array) */
	SANDBOX_VALUE_JSONB,		/* binary: a jsonb container in UTF-8 (in
								 * only), built into values by the thread
								 * that runs the call (sandbox_jsonb.h) */
	SANDBOX_VALUE_FIELDS,		/* fields/nfields: a nested object (in only) */
	SANDBOX_VALUE_OTHER			/* a member that is none of these (out only) */
} SandboxValueKind;

typedef struct SandboxValue
{
	const char *name;
	SandboxValueKind kind;
	const char *text;
	double		number;
	bool		boolean;
	const void *binary;			/* a JsonbContainer */
	const struct SandboxValue *fields;
	int			nfields;
} SandboxValue;

/* Members of a returned object reported in SandboxCall.members, at most. */
#define SANDBOX_MAX_MEMBERS 8

/* A heap and its realm, used by one thread at a time. */
typedef struct SandboxHeap SandboxHeap;

typedef struct SandboxCall
{
	/* in */
	const char *cache_key;		/* compiled program cached under this key;
								 * NULL: the script text is the key */
	const char *script;
	const char *context;		/* JSON text passed as ctx; NULL (and no
								 * fields): only check that the script
								 * defines hook() */
	const void *context_jsonb;	/* or ctx as a JsonbContainer, in UTF-8 */
	const SandboxValue *fields; /* instead of context: ctx's members */
	int			nfields;
	bool		static_names;	/* the names of fields (and of their nested
								 * fields) are string literals: duktape keeps
								 * their strings from call to call */
	bool		split_result;	/* report a returned object member by member
								 * (members) rather than as one JSON text */
	int			timeout_ms;
	int			memory_kb;
	bool		detached;		/* off the main thread: see sandbox_run_on() */
	char	   *buffer;			/* detached: room for small results (the
								 * caller's), or NULL */
	size_t		buffer_size;

	/* out */
	SandboxStatus status;
	char	   *result;			/* JSON text, NULL if hook returned nothing;
								 * split_result: "{}" for an object */
	char	   *error;			/* when status != SANDBOX_OK */
	int64		duration_us;
	SandboxValue members[SANDBOX_MAX_MEMBERS];	/* split_result: JSON values
												 * as text */
	int			nmembers;
	bool		more_members;	/* the object had more than these */
	size_t		buffer_used;	/* detached: bytes of buffer taken */
	void	   *owned;			/* detached: results that did not fit in
								 * buffer, malloc'd */
} SandboxCall;

/*
 * Whether calls may pass jsonb (SANDBOX_VALUE_JSONB, context_jsonb): only
 * when the database's text is UTF-8 already, the sandbox's encoding.
 */
extern bool sandbox_takes_jsonb(void);

/* A call on this process's own heap, from the main thread. */
extern void sandbox_run(SandboxCall *call);

/*
 * A heap for another thread: malloc'd, NULL when memory is short; the
 * realm is built on its first call.
 */
extern SandboxHeap *sandbox_heap_create(void);

/*
 * A call on that heap, from the one thread that uses it.  With
 * call->detached it neither allocates with palloc nor raises errors.
 */
extern void sandbox_run_on(SandboxHeap *heap, SandboxCall *call);

/* Free a detached call's results. */
extern void sandbox_call_release(SandboxCall *call);

/* Tests: bytes the heap holds; the fatal-error path taken on purpose. */
extern size_t sandbox_heap_bytes(void);
extern void sandbox_force_fatal(SandboxCall *call);

#endif							/* SANDBOX_H */
