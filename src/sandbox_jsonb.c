/*-------------------------------------------------------------------------
 *
 * sandbox_jsonb.c
 *	  jsonb values pushed onto a duktape stack (see sandbox_jsonb.h).
 *
 * Building the values directly saves a hook call the JSON text and its
 * parse.  What the hook sees must stay exactly what JSON.parse makes:
 *
 * - members are defined, as JSON.parse defines them, not assigned: an
 *   assignment to "__proto__" would set the prototype, and one to a name
 *   that the frozen Object.prototype holds ("toString") would fail;
 * - numbers go through duktape's own string-to-number conversion of the
 *   text numeric_out() writes, the conversion JSON.parse uses, except for
 *   integers of up to 12 digits, which every conversion gives exactly;
 * - strings are the jsonb's UTF-8 bytes, which JSON.parse copies as they
 *   are too (the JSON text escapes only ASCII control characters, quotes
 *   and backslashes, which the jsonb holds unescaped);
 * - nesting deeper than JSON.parse's limit is refused, as it would be.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "duktape_ext.h"
#include "jsonb_walk.h"
#include "sandbox_jsonb.h"

/* A number's text fits here unless it has very many digits. */
#define NUMBER_TEXT_INLINE 64

typedef struct Pusher
{
	duk_context *ctx;
	int			depth;
} Pusher;

static void
push_open(void *arg, bool object, int count)
{
	Pusher	   *p = arg;

	if (++p->depth > DUK_USE_JSON_DEC_RECLIMIT)
		(void) duk_error(p->ctx, DUK_ERR_RANGE_ERROR, "value nested deeper than %d levels",
						 DUK_USE_JSON_DEC_RECLIMIT);
	/* the container and a member's key and value */
	duk_require_stack(p->ctx, 3);
	if (object)
		duk_push_object(p->ctx);
	else
		duk_push_array(p->ctx);
}

static void
push_close(void *arg)
{
	((Pusher *) arg)->depth--;
}

static void
push_string(void *arg, const char *text, int len)
{
	duk_push_lstring(((Pusher *) arg)->ctx, text, (duk_size_t) len);
}

static void
push_number(void *arg, const void *numeric)
{
	duk_context *ctx = ((Pusher *) arg)->ctx;
	char		inline_text[NUMBER_TEXT_INLINE];
	double		value;
	size_t		len;

	if (jsonb_numeric_small_integer(numeric, &value))
	{
		duk_push_number(ctx, value);
		return;
	}
	len = jsonb_numeric_text(numeric, inline_text, sizeof(inline_text));
	if (len < sizeof(inline_text))
		duk_push_lstring(ctx, inline_text, len);
	else
	{
		/* in duktape's memory, so that an error thrown here leaks nothing */
		char	   *text = duk_push_fixed_buffer(ctx, len + 1);

		(void) jsonb_numeric_text(numeric, text, len + 1);
		duk_push_lstring(ctx, text, len);
		duk_remove(ctx, -2);
	}
	duk_to_number(ctx, -1);
}

static void
push_literal(void *arg, char literal)
{
	duk_context *ctx = ((Pusher *) arg)->ctx;

	if (literal == 't' || literal == 'f')
		duk_push_boolean(ctx, literal == 't');
	else
		duk_push_null(ctx);
}

/* Stack: container, [key,] value. */
static void
push_placed(void *arg, bool in_object, int index)
{
	duk_context *ctx = ((Pusher *) arg)->ctx;

	if (in_object)
		xprov_duk_define_member(ctx);
	else
		duk_put_prop_index(ctx, -2, (duk_uarridx_t) index);
}

static const JsonbVisitor pusher = {
	.open = push_open,
	.close = push_close,
	.key = push_string,
	.string = push_string,
	.number = push_number,
	.literal = push_literal,
	.placed = push_placed,
};

void
sandbox_push_jsonb(duk_context *ctx, const JsonbContainer *container)
{
	Pusher		p = {ctx, 0};

	jsonb_walk(container, &pusher, &p);
}
