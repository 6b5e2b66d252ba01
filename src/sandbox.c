/*-------------------------------------------------------------------------
 *
 * sandbox.c
 *	  The duktape sandbox that runs tenants' hooks (see sandbox.h).
 *
 * The boundary rules (research: duktape-and-scim-targets.md §A2): duktape is
 * entered only through duk_safe_call(); while duktape frames are on the C
 * stack nothing here may ereport, palloc or CHECK_FOR_INTERRUPTS (the
 * allocator below uses malloc, the deadline check only reads flags); results
 * are copied out with allocations that cannot throw; and duktape's fatal
 * handler longjmps to sandbox_run(), which then frees the broken heap block
 * by block without calling into duktape again.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <setjmp.h>

#include "lib/ilist.h"
#include "mb/pg_wchar.h"
#include "utils/memutils.h"

#include "duktape_ext.h"
#include "js_deadline.h"
#include "mem_util.h"
#include "json_members.h"
#include "sandbox.h"
#include "sandbox_jsonb.h"

/* Compiled programs kept per heap before the cache is emptied. */
#define SANDBOX_CACHE_MAX 512

/* Time allowed to build a heap's realm, and to format an error value. */
#define SANDBOX_SETUP_MS 2000
#define SANDBOX_FORMAT_MS 50

/* Garbage beyond this much above the heap's base triggers a collection. */
#define SANDBOX_GC_SLACK (4 * 1024 * 1024)

#define BLOCK_MAGIC UINT64CONST(0x78707276626c6b31)

/*
 * Header of every block the heap allocates: the heap can free them all.
 * size is the block's capacity, which is what the limit counts.
 */
typedef struct Block
{
	dlist_node	node;
	size_t		size;
	uint64		magic;
} Block;

StaticAssertDecl(sizeof(Block) % 16 == 0, "duktape blocks must stay 16-byte aligned");

/*
 * Small blocks are recycled per size class instead of going back to
 * malloc: a hook call makes and drops dozens of them (strings, property
 * tables), and malloc/free were a good part of its cost.  Recycled blocks
 * stay on the heap's block list, so abandoning the heap frees them too.
 */
#define SMALL_STEP 16
#define SMALL_MAX 512
#define SMALL_CLASSES (SMALL_MAX / SMALL_STEP)
#define SMALL_KEEP 256			/* recycled blocks kept per class */

struct SandboxHeap
{
	JsDeadline	deadline;		/* first: it is the heap's udata, which
								 * duktape hands to the deadline check */
	duk_context *ctx;
	dlist_head	blocks;
	size_t		used;			/* bytes duktape holds */
	size_t		limit;			/* 0: no limit */
	uint64		refused;		/* allocations refused by the limit */
	size_t		base;			/* used right after the realm was built */
	int			cached;			/* compiled programs in the cache */
	Block	   *recycled[SMALL_CLASSES];	/* free small blocks, by class */
	int			nrecycled[SMALL_CLASSES];
	sigjmp_buf *fatal_boundary; /* where heap_fatal() jumps */
	/* the program run last, while the cache holds it: no lookup to run it again */
	void	   *last_program;
	char	   *last_key;		/* malloc'd */
	size_t		last_key_len;
	bool		setup_cancelled;	/* building the realm was cancelled */
	char		fatal_message[256];
};

/* The heap of this process's own thread (sandbox_run()). */
static SandboxHeap own_heap;

/* ---------------------------------------------------------------------
 * Allocator: malloc with a header per block, counted against a limit.
 * Called by duktape only; never throws.
 */

static bool
may_grow(SandboxHeap *heap, size_t delta)
{
	if (heap->limit == 0 || heap->used + delta <= heap->limit)
		return true;
	heap->refused++;
	return false;
}

static size_t
capacity_for(size_t size)
{
	if (size > SMALL_MAX)
		return size;
	return Max(size + SMALL_STEP - 1, SMALL_STEP) & ~((size_t) SMALL_STEP - 1);
}

/* The class of a small capacity, or -1. */
static int
small_class(size_t capacity)
{
	return capacity <= SMALL_MAX ? (int) (capacity / SMALL_STEP) - 1 : -1;
}

static void *
heap_alloc(void *udata, duk_size_t size)
{
	SandboxHeap *heap = udata;
	size_t		capacity = capacity_for(size);
	int			class = small_class(capacity);
	Block	   *block;

	if (!may_grow(heap, capacity))
		return NULL;
	if (class >= 0 && heap->recycled[class] != NULL)
	{
		block = heap->recycled[class];
		heap->recycled[class] = *(Block **) (block + 1);
		heap->nrecycled[class]--;
	}
	else
	{
		block = malloc(sizeof(Block) + capacity);
		if (block == NULL)
			return NULL;
		block->size = capacity;
		block->magic = BLOCK_MAGIC;
		dlist_push_head(&heap->blocks, &block->node);
	}
	heap->used += capacity;
	return block + 1;
}

static void
heap_free(void *udata, void *ptr)
{
	SandboxHeap *heap = udata;
	Block	   *block;
	int			class;

	if (ptr == NULL)
		return;
	block = ((Block *) ptr) - 1;
	Assert(block->magic == BLOCK_MAGIC);
	heap->used -= block->size;
	class = small_class(block->size);
	if (class >= 0 && heap->nrecycled[class] < SMALL_KEEP)
	{
		*(Block **) ptr = heap->recycled[class];
		heap->recycled[class] = block;
		heap->nrecycled[class]++;
		return;
	}
	dlist_delete(&block->node);
	free(block);
}

static void *
heap_realloc(void *udata, void *ptr, duk_size_t size)
{
	SandboxHeap *heap = udata;
	Block	   *block;
	Block	   *moved;
	void	   *copy;

	if (ptr == NULL)
		return heap_alloc(udata, size);
	if (size == 0)
	{
		heap_free(udata, ptr);
		return NULL;
	}
	block = ((Block *) ptr) - 1;

	/* fits: keep it (a large block only while it stays half used) */
	if (size <= block->size && (block->size <= SMALL_MAX || size >= block->size / 2))
		return ptr;

	if (block->size <= SMALL_MAX || size <= SMALL_MAX)
	{
		/* to or from a small class: a new block; on failure the old stays */
		copy = heap_alloc(udata, size);
		if (copy == NULL)
			return NULL;
		memcpy(copy, ptr, Min(size, block->size));
		heap_free(udata, ptr);
		return copy;
	}

	if (size > block->size && !may_grow(heap, size - block->size))
		return NULL;
	/* unlink first: realloc may move the block; on failure it stays valid */
	dlist_delete(&block->node);
	moved = realloc(block, sizeof(Block) + size);
	if (moved == NULL)
	{
		dlist_push_head(&heap->blocks, &block->node);
		return NULL;
	}
	heap->used = heap->used - moved->size + size;
	moved->size = size;
	dlist_push_head(&heap->blocks, &moved->node);
	return moved + 1;
}

/*
 * duktape calls this when it cannot go on (an error outside any protected
 * call, a broken invariant).  It must not return.
 */
static void
heap_fatal(void *udata, const char *msg)
{
	SandboxHeap *heap = udata;

	strlcpy(heap->fatal_message, msg ? msg : "no message", sizeof(heap->fatal_message));
	if (heap->fatal_boundary != NULL)
		siglongjmp(*heap->fatal_boundary, 1);

	/*
	 * Unreachable: duktape is only ever entered under a boundary.  Ending
	 * this process (not the server) is the least bad answer if it happens.
	 */
	ereport(FATAL,
			errcode(ERRCODE_INTERNAL_ERROR),
			errmsg("duktape failed outside the sandbox boundary: %s", heap->fatal_message));
}

/*
 * Forget a heap in an unknown state: free its blocks without duktape.  Its
 * fatal message stays, for the caller to report.
 */
static void
abandon_heap(SandboxHeap *heap)
{
	dlist_mutable_iter iter;
	char		message[sizeof(heap->fatal_message)];

	dlist_foreach_modify(iter, &heap->blocks)
	{
		Block	   *block = dlist_container(Block, node, iter.cur);

		dlist_delete(&block->node);
		free(block);
	}
	free(heap->last_key);
	memcpy(message, heap->fatal_message, sizeof(message));
	memset(heap, 0, sizeof(SandboxHeap));
	memcpy(heap->fatal_message, message, sizeof(message));
}

/* ---------------------------------------------------------------------
 * The realm
 */

/*
 * Trusted set-up code, run once per heap: remove what reaches outside or
 * mints hidden state, make eval and Function refuse strings, then freeze
 * every object reachable from the global object, and the global object.
 */
static const char realm_setup[] =
"function (g, noCode) {\n"
"  'use strict';\n"
"  var gone = ['Duktape', 'Buffer', 'ArrayBuffer', 'DataView', 'Int8Array', 'Uint8Array',\n"
"    'Uint8ClampedArray', 'Int16Array', 'Uint16Array', 'Int32Array', 'Uint32Array',\n"
"    'Float32Array', 'Float64Array', 'CBOR', 'Proxy', 'Reflect', 'TextEncoder',\n"
"    'TextDecoder', 'performance'];\n"
"  var seen = [];\n"
"  var i;\n"
"  for (i = 0; i < gone.length; i++) delete g[gone[i]];\n"
"  Object.defineProperty(noCode, 'prototype', { value: Function.prototype });\n"
"  Object.defineProperty(Function.prototype, 'constructor', { value: noCode });\n"
"  Object.defineProperty(g, 'Function', { value: noCode });\n"
"  Object.defineProperty(g, 'eval', { value: noCode });\n"
"  function freeze(o) {\n"
"    var keys, k, d;\n"
"    if (o === null || (typeof o !== 'object' && typeof o !== 'function')) return;\n"
"    if (seen.indexOf(o) >= 0) return;\n"
"    seen.push(o);\n"
"    Object.freeze(o);\n"
"    keys = Object.getOwnPropertyNames(o);\n"
"    if (Object.getOwnPropertySymbols) keys = keys.concat(Object.getOwnPropertySymbols(o));\n"
"    for (k = 0; k < keys.length; k++) {\n"
"      d = Object.getOwnPropertyDescriptor(o, keys[k]);\n"
"      if (!d) continue;\n"
"      if ('value' in d) freeze(d.value);\n"
"      if (d.get) freeze(d.get);\n"
"      if (d.set) freeze(d.set);\n"
"    }\n"
"    freeze(Object.getPrototypeOf(o));\n"
"  }\n"
"  freeze(g);\n"
"}";

/*
 * Error values thrown by hooks are formatted by JS under a deadline: a
 * hostile error object can have getters that never return.  Errors thrown
 * by C code (ours or duktape's) carry the C file and line: the script's
 * line is then the innermost "hook:N" of the stack trace.
 */
static const char error_format[] =
"function (e) {\n"
"  'use strict';\n"
"  var s, m, line;\n"
"  if (e instanceof Error) {\n"
"    s = String(e.name) + ': ' + String(e.message);\n"
"    if (e.fileName === 'hook') line = e.lineNumber;\n"
"    else if ((m = /\\(hook:(\\d+)\\)/.exec(String(e.stack)))) line = m[1];\n"
"    if (line && s.indexOf('(line ') < 0) s += ' (line ' + line + ')';\n"
"    return s;\n"
"  }\n"
"  return 'uncaught ' + (e === null ? 'null' : typeof e) + ': ' + String(e);\n"
"}";

static duk_ret_t
refuse_code_generation(duk_context *ctx)
{
	return duk_error(ctx, DUK_ERR_EVAL_ERROR,
					 "code generation from strings is disabled in hooks");
}

static duk_ret_t
build_realm(duk_context *ctx, void *udata)
{
	/*
	 * The stash is a hidden property of the global object, made on first
	 * use: make it before the global object is frozen.
	 */
	duk_push_global_stash(ctx);
	duk_pop(ctx);

	duk_push_string(ctx, "realm");
	duk_compile_string_filename(ctx, DUK_COMPILE_FUNCTION | DUK_COMPILE_STRICT, realm_setup);
	duk_push_global_object(ctx);
	duk_push_c_function(ctx, refuse_code_generation, DUK_VARARGS);
	duk_call(ctx, 2);
	duk_pop(ctx);

	duk_push_global_stash(ctx);
	duk_push_string(ctx, "format");
	duk_compile_string_filename(ctx, DUK_COMPILE_FUNCTION | DUK_COMPILE_STRICT, error_format);
	duk_put_prop_string(ctx, -2, "format");
	duk_push_object(ctx);
	duk_put_prop_string(ctx, -2, "cache");
	duk_pop(ctx);
	return 0;
}

/*
 * Build a heap if there is none.  Called under the fatal boundary.  Returns
 * an error message, or NULL.
 */
static const char *
ensure_heap(SandboxHeap *heap)
{
	duk_int_t	rc;

	if (heap->ctx != NULL)
		return NULL;
	dlist_init(&heap->blocks);
	heap->ctx = duk_create_heap(heap_alloc, heap_realloc, heap_free, heap, heap_fatal);
	if (heap->ctx == NULL)
	{
		abandon_heap(heap);
		return "could not create a JavaScript heap (out of memory)";
	}
	xprov_js_set_deadline(&heap->deadline, xprov_js_now_us() + SANDBOX_SETUP_MS * INT64CONST(1000));
	rc = duk_safe_call(heap->ctx, build_realm, NULL, 0, 1);
	heap->setup_cancelled = xprov_js_trip_reason(&heap->deadline) == XPROV_JS_TRIP_CANCEL;
	xprov_js_clear_deadline(&heap->deadline);
	if (rc != DUK_EXEC_SUCCESS)
	{
		/* a bug of ours, or cancel; either way this heap is not safe to use */
		bool		cancelled = heap->setup_cancelled;

		strlcpy(heap->fatal_message, duk_safe_to_string(heap->ctx, -1), sizeof(heap->fatal_message));
		duk_destroy_heap(heap->ctx);
		abandon_heap(heap);
		heap->setup_cancelled = cancelled;
		return heap->fatal_message;
	}
	duk_set_top(heap->ctx, 0);
	heap->base = heap->used;
	return NULL;
}

/* ---------------------------------------------------------------------
 * A call
 */

typedef enum CallStage
{
	STAGE_COMPILE,
	STAGE_TOP_LEVEL,
	STAGE_CONTEXT,
	STAGE_HOOK,
	STAGE_RESULT
} CallStage;

typedef struct CallState
{
	SandboxHeap *heap;
	SandboxCall *call;
	const char *key;
	size_t		key_len;
	CallStage	stage;			/* how far the call got */
	bool		no_hook;
} CallState;

/* A result block of a detached call: malloc'd, on the call's list. */
typedef struct OwnedBlock
{
	struct OwnedBlock *next;
	char		data[FLEXIBLE_ARRAY_MEMBER];
} OwnedBlock;

/*
 * A NUL-terminated copy of len bytes for the call's results, or NULL when
 * memory is short.  Never throws: duktape may still be entered.  A detached
 * call runs off the main thread, where palloc must not be used.
 */
static char *
call_copy(SandboxCall *call, const char *data, size_t len)
{
	OwnedBlock *block;

	if (!call->detached)
		return copy_bytes_no_oom(CurrentMemoryContext, data, len);
	if (call->buffer != NULL && call->buffer_size - call->buffer_used > len)
	{
		char	   *copy = call->buffer + call->buffer_used;

		memcpy(copy, data, len);
		copy[len] = '\0';
		call->buffer_used += len + 1;
		return copy;
	}
	block = malloc(offsetof(OwnedBlock, data) + len + 1);
	if (block == NULL)
		return NULL;
	memcpy(block->data, data, len);
	block->data[len] = '\0';
	block->next = call->owned;
	call->owned = block;
	return block->data;
}

/* An error message for the call; outside duktape, but maybe off the main thread. */
static char *
call_message(SandboxCall *call, const char *format,...) pg_attribute_printf(2, 3);

static char *
call_message(SandboxCall *call, const char *format,...)
{
	char		message[512];
	va_list		args;
	char	   *copy;

	va_start(args, format);
	vsnprintf(message, sizeof(message), format, args);
	va_end(args);
	if (!call->detached)
		return pstrdup(message);
	copy = call_copy(call, message, strlen(message));
	return copy ? copy : "failed (out of memory)";
}

void
sandbox_call_release(SandboxCall *call)
{
	OwnedBlock *block = call->owned;

	while (block)
	{
		OwnedBlock *next = block->next;

		free(block);
		block = next;
	}
	call->owned = NULL;
	call->buffer_used = 0;
	call->result = call->error = NULL;
	call->nmembers = 0;
}

static bool
is_last_program(const CallState *state)
{
	const SandboxHeap *heap = state->heap;

	return heap->last_program != NULL && heap->last_key_len == state->key_len &&
		memcmp(heap->last_key, state->key, state->key_len) == 0;
}

/* The program on top of the stack is the one run last (the cache holds it). */
static void
remember_program(duk_context *ctx, CallState *state)
{
	SandboxHeap *heap = state->heap;

	heap->last_program = NULL;
	if (heap->last_key == NULL || heap->last_key_len < state->key_len)
	{
		free(heap->last_key);
		heap->last_key = malloc(state->key_len);
		if (heap->last_key == NULL)
			return;
	}
	memcpy(heap->last_key, state->key, state->key_len);
	heap->last_key_len = state->key_len;
	heap->last_program = duk_get_heapptr(ctx, -1);
}

/* Leaves the compiled program on the stack. */
static void
push_program(duk_context *ctx, CallState *state)
{
	if (is_last_program(state))
	{
		duk_push_heapptr(ctx, state->heap->last_program);
		return;
	}
	duk_push_global_stash(ctx);
	duk_get_prop_string(ctx, -1, "cache");
	if (duk_get_prop_lstring(ctx, -1, state->key, state->key_len))
	{
		duk_replace(ctx, -3);
		duk_pop(ctx);
		remember_program(ctx, state);
		return;
	}
	duk_pop(ctx);
	if (state->heap->cached >= SANDBOX_CACHE_MAX)
	{
		/* hooks come and go with their versions: start the cache over */
		duk_pop(ctx);
		duk_push_object(ctx);
		duk_dup(ctx, -1);
		duk_put_prop_string(ctx, -3, "cache");
		state->heap->cached = 0;
		state->heap->last_program = NULL;
	}

	/*
	 * The script is compiled as strict eval code: its declarations live in
	 * a fresh environment each time the program runs (not on the frozen
	 * global object), so top-level variables do not survive from one call
	 * to the next.  The appended expression is the program's completion
	 * value: its hook.  It starts on a new line, so that a trailing //
	 * comment cannot swallow it.  The script is compiled alone first: a
	 * syntax error is then reported at the script's own line, not at the
	 * appended one where the parser may notice it.
	 */
	state->stage = STAGE_COMPILE;
	duk_push_string(ctx, state->call->script);
	duk_push_string(ctx, "hook");
	duk_compile(ctx, DUK_COMPILE_EVAL | DUK_COMPILE_STRICT);
	duk_pop(ctx);
	duk_push_string(ctx, state->call->script);
	duk_push_string(ctx, "\n;(typeof hook === 'function' ? hook : undefined);\n");
	duk_concat(ctx, 2);
	duk_push_string(ctx, "hook");
	duk_compile(ctx, DUK_COMPILE_EVAL | DUK_COMPILE_STRICT);
	duk_dup(ctx, -1);
	duk_put_prop_lstring(ctx, -3, state->key, state->key_len);
	state->heap->cached++;
	duk_replace(ctx, -3);
	duk_pop(ctx);
	remember_program(ctx, state);
}

/*
 * ctx from SandboxCall.fields: an object, JSON-valued members parsed.
 * static_names: the names are literals, found by their address in
 * duktape's literal cache instead of being hashed and looked up anew.
 */
static void
push_fields(duk_context *ctx, const SandboxValue *fields, int nfields, bool static_names)
{
	duk_push_object(ctx);
	for (int i = 0; i < nfields; i++)
	{
		const SandboxValue *field = &fields[i];

		if (static_names)
			duk_push_literal_raw(ctx, field->name, strlen(field->name));
		else
			duk_push_string(ctx, field->name);
		switch (field->kind)
		{
			case SANDBOX_VALUE_STRING:
				duk_push_string(ctx, field->text);
				break;
			case SANDBOX_VALUE_NUMBER:
				duk_push_number(ctx, field->number);
				break;
			case SANDBOX_VALUE_BOOLEAN:
				duk_push_boolean(ctx, field->boolean);
				break;
			case SANDBOX_VALUE_JSON:
				duk_push_string(ctx, field->text);
				duk_json_decode(ctx, -1);
				break;
			case SANDBOX_VALUE_JSONB:
				sandbox_push_jsonb(ctx, field->binary);
				break;
			case SANDBOX_VALUE_FIELDS:
				push_fields(ctx, field->fields, field->nfields, static_names);
				break;
			default:
				duk_push_null(ctx);
				break;
		}
		xprov_duk_define_member(ctx);
	}
}

/*
 * The protected body: compile (or find) the program, run its top level,
 * call hook(ctx) and leave the JSON text of its result (or undefined).
 */
static duk_ret_t
call_body(duk_context *ctx, void *udata)
{
	CallState  *state = udata;
	SandboxCall *call = state->call;

	push_program(ctx, state);
	state->stage = STAGE_TOP_LEVEL;
	duk_call(ctx, 0);
	if (!duk_is_function(ctx, -1))
	{
		state->no_hook = true;
		return duk_error(ctx, DUK_ERR_TYPE_ERROR, "the script does not define function hook(ctx)");
	}
	if (call->context == NULL && call->context_jsonb == NULL && call->fields == NULL)
	{
		duk_push_undefined(ctx);
		return 1;
	}
	state->stage = STAGE_CONTEXT;
	if (call->fields != NULL)
		push_fields(ctx, call->fields, call->nfields, call->static_names);
	else if (call->context_jsonb != NULL)
		sandbox_push_jsonb(ctx, call->context_jsonb);
	else
	{
		duk_push_string(ctx, call->context);
		duk_json_decode(ctx, -1);
	}
	state->stage = STAGE_HOOK;
	duk_call(ctx, 1);
	state->stage = STAGE_RESULT;
	if (!duk_is_undefined(ctx, -1))
		duk_json_encode(ctx, -1);
	return 1;
}

static duk_ret_t
format_body(duk_context *ctx, void *udata)
{
	duk_push_global_stash(ctx);
	duk_get_prop_string(ctx, -1, "format");
	duk_dup(ctx, -3);
	duk_call(ctx, 1);
	return 1;
}

/*
 * duktape's strings are CESU-8: a character outside the BMP comes out as
 * two 3-byte surrogates instead of one 4-byte UTF-8 sequence, and a lone
 * surrogate ("\ud800") as bytes no UTF-8 decoder accepts.  Rewrite pairs in
 * place; a lone surrogate becomes '?' when lenient, else fails.  Returns the
 * new length, or -1.
 */
static int64
cesu_to_utf8(char *text, size_t len, bool lenient)
{
	unsigned char *in = (unsigned char *) text;
	unsigned char *out = in;
	unsigned char *end = in + len;

	while (in < end)
	{
		if (in[0] == 0xED && end - in >= 3 && (in[1] & 0xE0) == 0xA0)
		{
			/* a surrogate: high ones are ED A0..AF xx, low ones ED B0..BF xx */
			bool		high = (in[1] & 0xF0) == 0xA0;
			unsigned int cp;

			if (high && end - in >= 6 && in[3] == 0xED && (in[4] & 0xF0) == 0xB0)
			{
				unsigned int hi = ((in[1] & 0x0F) << 6) | (in[2] & 0x3F);
				unsigned int lo = ((in[4] & 0x0F) << 6) | (in[5] & 0x3F);

				cp = 0x10000 + (hi << 10) + lo;
				out[0] = 0xF0 | (cp >> 18);
				out[1] = 0x80 | ((cp >> 12) & 0x3F);
				out[2] = 0x80 | ((cp >> 6) & 0x3F);
				out[3] = 0x80 | (cp & 0x3F);
				out += 4;
				in += 6;
				continue;
			}
			if (!lenient)
				return -1;
			*out++ = '?';
			in += 3;
			continue;
		}
		*out++ = *in++;
	}
	*out = '\0';
	return out - (unsigned char *) text;
}

/* Lenient: error messages and the like must never carry broken UTF-8. */
static void
make_valid_utf8(char *text)
{
	int64		len = cesu_to_utf8(text, strlen(text), true);

	for (int64 i = 0; i < len;)
	{
		int			n = pg_utf_mblen((unsigned char *) text + i);

		if (i + n > len || !pg_utf8_islegal((unsigned char *) text + i, n))
		{
			text[i++] = '?';
			continue;
		}
		i += n;
	}
}

/* The error value is on top of the stack; the deadline has not tripped. */
static void
describe_error(duk_context *ctx, CallState *state)
{
	SandboxCall *call = state->call;
	const char *text;
	duk_size_t	len;

	xprov_js_set_deadline(&state->heap->deadline, xprov_js_now_us() + SANDBOX_FORMAT_MS * INT64CONST(1000));
	if (duk_safe_call(ctx, format_body, NULL, 1, 1) != DUK_EXEC_SUCCESS)
	{
		duk_pop(ctx);
		duk_push_string(ctx, "an error value that cannot be shown");
	}
	xprov_js_clear_deadline(&state->heap->deadline);
	text = duk_get_lstring(ctx, -1, &len);
	if (text == NULL)
		text = "an error value that cannot be shown";
	call->error = call_copy(call, text, Min(len, 2000));
	if (call->error != NULL)
		make_valid_utf8(call->error);

	if (state->stage == STAGE_COMPILE)
		call->status = SANDBOX_COMPILE_ERROR;
	else if (state->no_hook)
		call->status = SANDBOX_NO_HOOK;
	else
		call->status = SANDBOX_THREW;
}

static const char unpaired_surrogate[] =
"the result contains a lone UTF-16 surrogate (such as \"\\ud800\"), which is not text";

static const char malformed_result[] = "the result could not be read back from its JSON text";

/*
 * split_result: an object's JSON text (call->result) into call->members,
 * and "{}" as the result; any other JSON text stays the result.  Encoding
 * the whole answer once and reading its members here costs a fraction of
 * walking the object member by member inside duktape.
 */
static void
split_result(SandboxCall *call)
{
	int			count;
	bool		more;

	switch (json_split_members(call->result, strlen(call->result), call->members,
							   SANDBOX_MAX_MEMBERS, &count, &more))
	{
		case JSON_MEMBERS_OK:
			call->nmembers = count;
			call->more_members = more;
			call->result = "{}";
			break;
		case JSON_MEMBERS_NOT_OBJECT:
			break;
		case JSON_MEMBERS_LONE_SURROGATE:
			call->result = NULL;
			call->status = SANDBOX_THREW;
			call->error = call_copy(call, unpaired_surrogate, strlen(unpaired_surrogate));
			break;
		case JSON_MEMBERS_MALFORMED:
			call->result = NULL;
			call->status = SANDBOX_THREW;
			call->error = call_copy(call, malformed_result, strlen(malformed_result));
			break;
	}
}

/* Inside the fatal boundary: everything that touches duktape. */
static void
run_in_heap(CallState *state, uint64 refused_before)
{
	SandboxHeap *heap = state->heap;
	SandboxCall *call = state->call;
	duk_context *ctx = heap->ctx;
	duk_int_t	rc;
	int64		start;
	XprovJsTrip trip;

	duk_set_top(ctx, 0);
	heap->limit = heap->used + (size_t) call->memory_kb * 1024;
	start = xprov_js_now_us();
	xprov_js_set_deadline(&heap->deadline, start + (int64) call->timeout_ms * 1000);
	rc = duk_safe_call(ctx, call_body, state, 0, 1);
	trip = xprov_js_trip_reason(&heap->deadline);
	xprov_js_clear_deadline(&heap->deadline);
	call->duration_us = xprov_js_now_us() - start;

	if (rc == DUK_EXEC_SUCCESS)
	{
		const char *text;
		duk_size_t	len;

		text = duk_get_lstring(ctx, -1, &len);
		if (text == NULL)
			call->status = SANDBOX_OK;	/* undefined: no result */
		else if (len > SANDBOX_MAX_RESULT)
			call->status = SANDBOX_TOO_LARGE;
		else if ((call->result = call_copy(call, text, len)) == NULL)
			call->status = SANDBOX_MEMORY;
		else if (cesu_to_utf8(call->result, len, false) < 0)
		{
			call->result = NULL;
			call->status = SANDBOX_THREW;
			call->error = call_copy(call, unpaired_surrogate, strlen(unpaired_surrogate));
		}
		else if (call->split_result)
			split_result(call);
	}
	else if (trip == XPROV_JS_TRIP_CANCEL)
		call->status = SANDBOX_CANCELLED;
	else if (trip == XPROV_JS_TRIP_DEADLINE)
		call->status = SANDBOX_TIMEOUT;
	else if (heap->refused > refused_before)
		call->status = SANDBOX_MEMORY;
	else
		describe_error(ctx, state);

	heap->limit = 0;
	duk_set_top(ctx, 0);
	if (heap->used > heap->base + SANDBOX_GC_SLACK)
		duk_gc(ctx, 0);
}

static void
describe_status(SandboxCall *call)
{
	switch (call->status)
	{
		case SANDBOX_TIMEOUT:
			call->error = call_message(call, "exceeded its time limit of %d ms", call->timeout_ms);
			break;
		case SANDBOX_MEMORY:
			call->error = call_message(call, "exceeded its memory limit of %d kB", call->memory_kb);
			break;
		case SANDBOX_TOO_LARGE:
			call->error = call_message(call, "returned a result larger than %d bytes", SANDBOX_MAX_RESULT);
			break;
		case SANDBOX_CANCELLED:
			call->error = call_message(call, "was cancelled");
			break;
		default:
			if (call->error == NULL)
				call->error = call_message(call, "%s", call->status == SANDBOX_OK ? "" : "failed");
			break;
	}
}

bool
sandbox_takes_jsonb(void)
{
	return GetDatabaseEncoding() == PG_UTF8;
}

void
sandbox_run_on(SandboxHeap *heap, SandboxCall *call)
{
	sigjmp_buf	boundary;
	CallState	state = {0};
	const char *heap_error;

	call->status = SANDBOX_OK;
	call->result = NULL;
	call->error = NULL;
	call->owned = NULL;
	call->buffer_used = 0;
	call->duration_us = 0;
	call->nmembers = 0;
	call->more_members = false;
	state.heap = heap;
	state.call = call;
	state.key = call->cache_key ? call->cache_key : call->script;
	state.key_len = strlen(state.key);

	if (sigsetjmp(boundary, 0) != 0)
	{
		/* duktape failed fatally: the heap is in an unknown state */
		heap->fatal_boundary = NULL;
		abandon_heap(heap);
		call->status = SANDBOX_FATAL;
		call->error = call_message(call, "JavaScript engine failed: %s", heap->fatal_message);
		return;
	}
	heap->fatal_boundary = &boundary;
	heap_error = ensure_heap(heap);
	if (heap_error == NULL)
		run_in_heap(&state, heap->refused);
	heap->fatal_boundary = NULL;

	if (heap_error != NULL)
	{
		call->status = heap->setup_cancelled ? SANDBOX_CANCELLED : SANDBOX_FATAL;
		call->error = call_message(call, "JavaScript engine could not start: %s", heap_error);
	}
	describe_status(call);
}

void
sandbox_run(SandboxCall *call)
{
	Assert(!call->detached);
	sandbox_run_on(&own_heap, call);
}

SandboxHeap *
sandbox_heap_create(void)
{
	return calloc(1, sizeof(SandboxHeap));
}

static duk_ret_t
fatal_body(duk_context *ctx, void *udata)
{
	return duk_fatal(ctx, "forced by xprov._sandbox_force_fatal()");
}

/*
 * Take the fatal path on purpose, as duktape would on an internal error:
 * for tests of the recovery.
 */
void
sandbox_force_fatal(SandboxCall *call)
{
	sigjmp_buf	boundary;

	call->status = SANDBOX_OK;
	call->error = NULL;
	if (sigsetjmp(boundary, 0) != 0)
	{
		own_heap.fatal_boundary = NULL;
		abandon_heap(&own_heap);
		call->status = SANDBOX_FATAL;
		call->error = psprintf("JavaScript engine failed: %s", own_heap.fatal_message);
		return;
	}
	own_heap.fatal_boundary = &boundary;
	if (ensure_heap(&own_heap) == NULL)
		duk_safe_call(own_heap.ctx, fatal_body, NULL, 0, 1);
	own_heap.fatal_boundary = NULL;
}

size_t
sandbox_heap_bytes(void)
{
	return own_heap.used;
}
