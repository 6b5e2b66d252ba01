/*-------------------------------------------------------------------------
 *
 * json_members.c
 *	  Split the JSON text of an object into its members (json_members.h).
 *
 * PostgreSQL's JSON parser is not used: it allocates with palloc, and this
 * runs on the worker's hook thread too, where palloc must not be called.
 *
 * The text is what duktape's JSON.stringify wrote for a hook's answer, so
 * it is well formed; it is checked anyway, as cheaply as it is read, and
 * anything unexpected is reported rather than trusted.  Everything happens
 * in the caller's copy of the text: unescaping only ever shortens a string,
 * and the byte after a value (a comma or the closing brace) is read before
 * it is overwritten by the value's terminating NUL.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "json_members.h"
#include "text_util.h"

typedef struct Reader
{
	char	   *p;
	char	   *end;
} Reader;

static void
skip_space(Reader *r)
{
	while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r'))
		r->p++;
}

/* The four hex digits at p as a code unit, or -1. */
static int
code_unit(const char *p, const char *end)
{
	int			unit = 0;

	if (end - p < 4)
		return -1;
	for (int i = 0; i < 4; i++)
	{
		int			digit = hex_digit_value(p[i]);

		if (digit < 0)
			return -1;
		unit = unit * 16 + digit;
	}
	return unit;
}

static char *
put_utf8(char *out, unsigned int cp)
{
	if (cp < 0x80)
		*out++ = (char) cp;
	else if (cp < 0x800)
	{
		*out++ = (char) (0xC0 | (cp >> 6));
		*out++ = (char) (0x80 | (cp & 0x3F));
	}
	else if (cp < 0x10000)
	{
		*out++ = (char) (0xE0 | (cp >> 12));
		*out++ = (char) (0x80 | ((cp >> 6) & 0x3F));
		*out++ = (char) (0x80 | (cp & 0x3F));
	}
	else
	{
		*out++ = (char) (0xF0 | (cp >> 18));
		*out++ = (char) (0x80 | ((cp >> 12) & 0x3F));
		*out++ = (char) (0x80 | ((cp >> 6) & 0x3F));
		*out++ = (char) (0x80 | (cp & 0x3F));
	}
	return out;
}

/* The escape after a backslash at r->p; appends its bytes at *out. */
static JsonMembersStatus
unescape_one(Reader *r, char **out)
{
	char		c = *r->p++;
	int			unit;
	int			low;

	switch (c)
	{
		case '"':
		case '\\':
		case '/':
			*(*out)++ = c;
			return JSON_MEMBERS_OK;
		case 'b':
			*(*out)++ = '\b';
			return JSON_MEMBERS_OK;
		case 'f':
			*(*out)++ = '\f';
			return JSON_MEMBERS_OK;
		case 'n':
			*(*out)++ = '\n';
			return JSON_MEMBERS_OK;
		case 'r':
			*(*out)++ = '\r';
			return JSON_MEMBERS_OK;
		case 't':
			*(*out)++ = '\t';
			return JSON_MEMBERS_OK;
		case 'u':
			break;
		default:
			return JSON_MEMBERS_MALFORMED;
	}
	if ((unit = code_unit(r->p, r->end)) < 0)
		return JSON_MEMBERS_MALFORMED;
	r->p += 4;
	if (unit >= 0xDC00 && unit <= 0xDFFF)
		return JSON_MEMBERS_LONE_SURROGATE;
	if (unit >= 0xD800 && unit <= 0xDBFF)
	{
		if (r->end - r->p < 6 || r->p[0] != '\\' || r->p[1] != 'u' ||
			(low = code_unit(r->p + 2, r->end)) < 0xDC00 || low > 0xDFFF)
			return JSON_MEMBERS_LONE_SURROGATE;
		r->p += 6;
		*out = put_utf8(*out, 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00));
		return JSON_MEMBERS_OK;
	}
	*out = put_utf8(*out, (unsigned int) unit);
	return JSON_MEMBERS_OK;
}

/*
 * The string starting at r->p (its opening quote), unescaped and
 * NUL-terminated where it started; leaves r->p after the closing quote.
 */
static JsonMembersStatus
read_string(Reader *r, char **text)
{
	char	   *out = r->p;

	*text = out;
	r->p++;
	while (r->p < r->end && *r->p != '"')
	{
		if (*r->p == '\\')
		{
			JsonMembersStatus status;

			r->p++;
			if (r->p >= r->end)
				return JSON_MEMBERS_MALFORMED;
			if ((status = unescape_one(r, &out)) != JSON_MEMBERS_OK)
				return status;
		}
		else
			*out++ = *r->p++;
	}
	if (r->p >= r->end)
		return JSON_MEMBERS_MALFORMED;
	*out = '\0';
	r->p++;
	return JSON_MEMBERS_OK;
}

/* Past the object or array starting at r->p, strings and nesting included. */
static bool
skip_container(Reader *r)
{
	int			depth = 0;

	do
	{
		char		c;

		if (r->p >= r->end)
			return false;
		c = *r->p++;
		if (c == '{' || c == '[')
			depth++;
		else if (c == '}' || c == ']')
			depth--;
		else if (c == '"')
		{
			while (r->p < r->end && *r->p != '"')
				r->p += *r->p == '\\' ? 2 : 1;
			if (r->p >= r->end)
				return false;
			r->p++;
		}
	} while (depth > 0);
	return true;
}

static bool
is_scalar_char(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || c == '-' || c == '+' ||
		c == '.' || c == 'E';
}

/*
 * The value at r->p into *value (member's name already set).  Returns the
 * byte that followed it, now overwritten by the value's NUL, or '\0' on a
 * malformed value (with *status set).
 */
static char
read_value(Reader *r, SandboxValue *value, JsonMembersStatus *status)
{
	char	   *start = r->p;
	char		next;

	*status = JSON_MEMBERS_OK;
	if (*start == '"')
	{
		value->kind = SANDBOX_VALUE_STRING;
		if ((*status = read_string(r, (char **) &value->text)) != JSON_MEMBERS_OK)
			return '\0';
		skip_space(r);
		return r->p < r->end ? *r->p : '\0';
	}
	if (*start == '{' || *start == '[')
	{
		value->kind = SANDBOX_VALUE_JSON;
		if (!skip_container(r))
		{
			*status = JSON_MEMBERS_MALFORMED;
			return '\0';
		}
	}
	else
	{
		while (r->p < r->end && is_scalar_char(*r->p))
			r->p++;
	}
	next = r->p < r->end ? *r->p : '\0';
	*r->p = '\0';
	value->text = start;
	if (value->kind == SANDBOX_VALUE_JSON)
		return next;
	if (strcmp(start, "true") == 0 || strcmp(start, "false") == 0)
	{
		value->kind = SANDBOX_VALUE_BOOLEAN;
		value->boolean = start[0] == 't';
	}
	else if (strcmp(start, "null") == 0)
		value->kind = SANDBOX_VALUE_NULL;
	else
	{
		char	   *number_end;

		value->kind = SANDBOX_VALUE_NUMBER;
		value->number = strtod(start, &number_end);
		if (number_end == start || *number_end != '\0' || isinf(value->number))
			*status = JSON_MEMBERS_MALFORMED;
	}
	value->text = NULL;
	return next;
}

JsonMembersStatus
json_split_members(char *text, size_t len, SandboxValue *members, int max, int *count, bool *more)
{
	Reader		r = {text, text + len};
	char		next;

	*count = 0;
	*more = false;
	skip_space(&r);
	if (r.p >= r.end || *r.p != '{')
		return JSON_MEMBERS_NOT_OBJECT;
	r.p++;
	skip_space(&r);
	if (r.p < r.end && *r.p == '}')
		return JSON_MEMBERS_OK;
	do
	{
		SandboxValue *member = &members[*count];
		JsonMembersStatus status;
		char	   *name;

		if (*count == max)
		{
			*more = true;
			return JSON_MEMBERS_OK;
		}

		skip_space(&r);
		if (r.p >= r.end || *r.p != '"')
			return JSON_MEMBERS_MALFORMED;
		if ((status = read_string(&r, &name)) != JSON_MEMBERS_OK)
			return status;
		skip_space(&r);
		if (r.p >= r.end || *r.p != ':')
			return JSON_MEMBERS_MALFORMED;
		r.p++;
		skip_space(&r);
		if (r.p >= r.end)
			return JSON_MEMBERS_MALFORMED;
		memset(member, 0, sizeof(SandboxValue));
		member->name = name;
		next = read_value(&r, member, &status);
		if (status != JSON_MEMBERS_OK)
			return status;
		(*count)++;
		r.p++;
		if (next != ',' && next != '}')
			return JSON_MEMBERS_MALFORMED;
	} while (next == ',');
	return JSON_MEMBERS_OK;
}
