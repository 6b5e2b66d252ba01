/*-------------------------------------------------------------------------
 *
 * jsonb_render.c
 *	  JSON text of a jsonb value, written without palloc or ereport.
 *
 * Reads the on-disk jsonb layout that utils/jsonb.h documents (a header,
 * an array of JEntry, then the data they point to) and, for numbers, the
 * on-disk numeric layout.  numeric.c keeps the latter's macros to itself,
 * so the few needed are repeated here; being on disk, that layout cannot
 * change without breaking pg_upgrade.  Numbers are written as numeric_out
 * writes them (every digit of the display scale), so that a reader sees
 * exactly what JsonbToCString() would have shown it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "jsonb_render.h"

/* numeric's header word (numeric.c) */
#define NUM_SIGN_MASK			0xC000
#define NUM_NEG					0x4000
#define NUM_SHORT				0x8000
#define NUM_SPECIAL				0xC000
#define NUM_SHORT_SIGN_MASK		0x2000
#define NUM_SHORT_DSCALE_MASK	0x1F80
#define NUM_SHORT_DSCALE_SHIFT	7
#define NUM_SHORT_WEIGHT_SIGN	0x0040
#define NUM_SHORT_WEIGHT_MASK	0x003F
#define NUM_DSCALE_MASK			0x3FFF
#define NUM_DEC_DIGITS			4	/* decimal digits per base-10000 digit */

typedef struct Writer
{
	char	   *out;
	size_t		size;
	size_t		len;			/* of the whole text, written or not */
} Writer;

static void render_container(Writer *w, const JsonbContainer *container);

static void
put_bytes(Writer *w, const char *bytes, size_t n)
{
	if (w->len + 1 < w->size)
		memcpy(w->out + w->len, bytes, Min(n, w->size - 1 - w->len));
	w->len += n;
}

static inline void
put_char(Writer *w, char c)
{
	if (w->len + 1 < w->size)
		w->out[w->len] = c;
	w->len++;
}

/* The escapes escape_json() writes; runs of plain bytes are copied whole. */
static void
render_string(Writer *w, const char *s, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	size_t		plain = 0;

	put_char(w, '"');
	for (size_t i = 0; i < n; i++)
	{
		unsigned char c = (unsigned char) s[i];
		char		escape[6] = {'\\', 0, 0, 0, 0, 0};
		size_t		escape_len = 2;

		if (c >= 0x20 && c != '"' && c != '\\')
			continue;
		put_bytes(w, s + plain, i - plain);
		plain = i + 1;
		switch (c)
		{
			case '\b':
				escape[1] = 'b';
				break;
			case '\f':
				escape[1] = 'f';
				break;
			case '\n':
				escape[1] = 'n';
				break;
			case '\r':
				escape[1] = 'r';
				break;
			case '\t':
				escape[1] = 't';
				break;
			case '"':
			case '\\':
				escape[1] = (char) c;
				break;
			default:
				memcpy(escape + 1, "u00", 3);
				escape[4] = hex[c >> 4];
				escape[5] = hex[c & 0x0F];
				escape_len = 6;
				break;
		}
		put_bytes(w, escape, escape_len);
	}
	put_bytes(w, s + plain, n - plain);
	put_char(w, '"');
}

/* One base-10000 digit, four decimal digits, leading zeros kept or not. */
static void
render_digit_group(Writer *w, int group, bool leading_zeros)
{
	char		text[NUM_DEC_DIGITS];
	int			start = 0;

	for (int i = NUM_DEC_DIGITS - 1; i >= 0; i--)
	{
		text[i] = (char) ('0' + group % 10);
		group /= 10;
	}
	if (!leading_zeros)
		while (start < NUM_DEC_DIGITS - 1 && text[start] == '0')
			start++;
	put_bytes(w, text + start, NUM_DEC_DIGITS - start);
}

/* Base-10000 digit i; the digits before the first and after the last are 0. */
static inline int
digit_at(const char *digit_bytes, int ndigits, int i)
{
	int16		digit;

	if (i < 0 || i >= ndigits)
		return 0;
	memcpy(&digit, digit_bytes + i * sizeof(int16), sizeof(int16));
	return digit;
}

/* As numeric_out() writes it: all digits of the display scale. */
static void
render_numeric(Writer *w, const void *numeric)
{
	const char *body = VARDATA_ANY(numeric);
	size_t		body_len = VARSIZE_ANY_EXHDR(numeric);
	uint16		header;
	int16		weight;
	int			dscale;
	bool		negative;
	const char *digit_bytes;
	int			ndigits;
	int			d;

	memcpy(&header, body, sizeof(header));
	if ((header & NUM_SIGN_MASK) == NUM_SPECIAL)
	{
		/* NaN and infinities are not JSON, and jsonb never stores them */
		put_bytes(w, "null", 4);
		return;
	}
	if ((header & NUM_SIGN_MASK) == NUM_SHORT)
	{
		negative = (header & NUM_SHORT_SIGN_MASK) != 0;
		dscale = (header & NUM_SHORT_DSCALE_MASK) >> NUM_SHORT_DSCALE_SHIFT;
		weight = (int16) (((header & NUM_SHORT_WEIGHT_SIGN) ? ~NUM_SHORT_WEIGHT_MASK : 0) |
						  (header & NUM_SHORT_WEIGHT_MASK));
		digit_bytes = body + sizeof(uint16);
	}
	else
	{
		negative = (header & NUM_SIGN_MASK) == NUM_NEG;
		dscale = header & NUM_DSCALE_MASK;
		memcpy(&weight, body + sizeof(uint16), sizeof(int16));
		digit_bytes = body + sizeof(uint16) + sizeof(int16);
	}
	ndigits = (int) ((body_len - (digit_bytes - body)) / sizeof(int16));

	if (negative)
		put_char(w, '-');
	if (weight < 0)
	{
		put_char(w, '0');
		d = weight + 1;
	}
	else
		for (d = 0; d <= weight; d++)
			render_digit_group(w, digit_at(digit_bytes, ndigits, d), d > 0);
	if (dscale > 0)
	{
		size_t		point;

		put_char(w, '.');
		point = w->len;
		for (int written = 0; written < dscale; d++, written += NUM_DEC_DIGITS)
			render_digit_group(w, digit_at(digit_bytes, ndigits, d), true);
		/* the last group may carry digits beyond the display scale */
		w->len = point + dscale;
	}
}

/*
 * Entry index of container, whose data starts at offset start of the
 * container's data area and ends at end.
 */
static void
render_entry(Writer *w, const JsonbContainer *container, const char *data, int index,
			 uint32 start, uint32 end)
{
	JEntry		entry = container->children[index];

	if (JBE_ISSTRING(entry))
		render_string(w, data + start, end - start);
	else if (JBE_ISNUMERIC(entry))
		render_numeric(w, data + INTALIGN(start));
	else if (JBE_ISBOOL_TRUE(entry))
		put_bytes(w, "true", 4);
	else if (JBE_ISBOOL_FALSE(entry))
		put_bytes(w, "false", 5);
	else if (JBE_ISNULL(entry))
		put_bytes(w, "null", 4);
	else
		render_container(w, (const JsonbContainer *) (data + INTALIGN(start)));
}

/* Where entry index's data ends, given where it starts. */
static inline uint32
entry_end(const JsonbContainer *container, int index, uint32 start)
{
	JEntry		entry = container->children[index];

	return JBE_HAS_OFF(entry) ? JBE_OFFLENFLD(entry) : start + JBE_OFFLENFLD(entry);
}

/* Where entry index's data starts (getJsonbOffset()). */
static uint32
entry_start(const JsonbContainer *container, int index)
{
	uint32		offset = 0;

	for (int i = index - 1; i >= 0; i--)
	{
		offset += JBE_OFFLENFLD(container->children[i]);
		if (JBE_HAS_OFF(container->children[i]))
			break;
	}
	return offset;
}

static void
render_container(Writer *w, const JsonbContainer *container)
{
	int			count = (int) JsonContainerSize(container);
	bool		object = JsonContainerIsObject(container);
	const char *data = (const char *) &container->children[object ? count * 2 : count];
	uint32		start = 0;

	if (JsonContainerIsScalar(container))
	{
		render_entry(w, container, data, 0, 0, entry_end(container, 0, 0));
		return;
	}
	put_char(w, object ? '{' : '[');
	if (object)
	{
		/* keys are entries 0 .. count - 1, their values count .. 2 * count - 1 */
		uint32		value_start = entry_start(container, count);

		for (int i = 0; i < count; i++)
		{
			uint32		end = entry_end(container, i, start);
			uint32		value_end = entry_end(container, count + i, value_start);

			if (i > 0)
				put_char(w, ',');
			render_entry(w, container, data, i, start, end);
			put_char(w, ':');
			render_entry(w, container, data, count + i, value_start, value_end);
			start = end;
			value_start = value_end;
		}
	}
	else
		for (int i = 0; i < count; i++)
		{
			uint32		end = entry_end(container, i, start);

			if (i > 0)
				put_char(w, ',');
			render_entry(w, container, data, i, start, end);
			start = end;
		}
	put_char(w, object ? '}' : ']');
}

size_t
jsonb_render(const JsonbContainer *container, char *out, size_t size)
{
	Writer		w = {out, size, 0};

	render_container(&w, container);
	if (size > 0)
		out[Min(w.len, size - 1)] = '\0';
	return w.len;
}
