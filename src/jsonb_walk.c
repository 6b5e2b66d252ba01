/*-------------------------------------------------------------------------
 *
 * jsonb_walk.c
 *	  Reading a jsonb value without palloc or ereport (see jsonb_walk.h).
 *
 * Reads the on-disk jsonb layout that utils/jsonb.h documents (a header,
 * an array of JEntry, then the data they point to) and, for numbers, the
 * on-disk numeric layout.  numeric.c keeps the latter's macros to itself,
 * so the few needed are repeated here; being on disk, that layout cannot
 * change without breaking pg_upgrade.  Numbers are written as numeric_out
 * writes them (every digit of the display scale), so that a hook sees
 * exactly what JSON.parse would make of JsonbToCString()'s text.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "jsonb_walk.h"

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

/* A numeric datum's fields (numeric.c's NUMERIC_* macros). */
typedef struct NumericFields
{
	bool		special;		/* NaN or an infinity: jsonb never stores one */
	bool		negative;
	int			weight;			/* of the first base-10000 digit */
	int			dscale;			/* decimal digits after the point */
	const char *digit_bytes;	/* int16 digits, unaligned */
	int			ndigits;
} NumericFields;

static void
numeric_fields(const void *numeric, NumericFields *f)
{
	const char *body = VARDATA_ANY(numeric);
	size_t		body_len = VARSIZE_ANY_EXHDR(numeric);
	uint16		header;

	memcpy(&header, body, sizeof(header));
	memset(f, 0, sizeof(*f));
	if ((header & NUM_SIGN_MASK) == NUM_SPECIAL)
	{
		f->special = true;
		return;
	}
	if ((header & NUM_SIGN_MASK) == NUM_SHORT)
	{
		f->negative = (header & NUM_SHORT_SIGN_MASK) != 0;
		f->dscale = (header & NUM_SHORT_DSCALE_MASK) >> NUM_SHORT_DSCALE_SHIFT;
		f->weight = (int16) (((header & NUM_SHORT_WEIGHT_SIGN) ? ~NUM_SHORT_WEIGHT_MASK : 0) |
							 (header & NUM_SHORT_WEIGHT_MASK));
		f->digit_bytes = body + sizeof(uint16);
	}
	else
	{
		int16		weight;

		f->negative = (header & NUM_SIGN_MASK) == NUM_NEG;
		f->dscale = header & NUM_DSCALE_MASK;
		memcpy(&weight, body + sizeof(uint16), sizeof(int16));
		f->weight = weight;
		f->digit_bytes = body + sizeof(uint16) + sizeof(int16);
	}
	f->ndigits = (int) ((body_len - (f->digit_bytes - body)) / sizeof(int16));
}

size_t
jsonb_numeric_text(const void *numeric, char *out, size_t size)
{
	Writer		w = {out, size, 0};
	NumericFields f;
	int			d;

	numeric_fields(numeric, &f);
	if (f.special)
		put_bytes(&w, "null", 4);
	else
	{
		if (f.negative)
			put_char(&w, '-');
		if (f.weight < 0)
		{
			put_char(&w, '0');
			d = f.weight + 1;
		}
		else
			for (d = 0; d <= f.weight; d++)
				render_digit_group(&w, digit_at(f.digit_bytes, f.ndigits, d), d > 0);
		if (f.dscale > 0)
		{
			size_t		point;

			put_char(&w, '.');
			point = w.len;
			for (int written = 0; written < f.dscale; d++, written += NUM_DEC_DIGITS)
				render_digit_group(&w, digit_at(f.digit_bytes, f.ndigits, d), true);
			/* the last group may carry digits beyond the display scale */
			w.len = point + f.dscale;
		}
	}
	if (size > 0)
		out[Min(w.len, size - 1)] = '\0';
	return w.len;
}

bool
jsonb_numeric_small_integer(const void *numeric, double *value)
{
	NumericFields f;
	int64		integer = 0;

	numeric_fields(numeric, &f);
	if (f.special || f.dscale != 0 || f.weight > 2)
		return false;
	for (int d = 0; d <= f.weight; d++)
		integer = integer * 10000 + digit_at(f.digit_bytes, f.ndigits, d);
	*value = (double) (f.negative ? -integer : integer);
	return true;
}

static void walk_container(const JsonbContainer *container, const JsonbVisitor *v, void *arg);

/*
 * Entry index of container, whose data starts at offset start of the
 * container's data area and ends at end.
 */
static void
walk_entry(const JsonbContainer *container, const char *data, int index,
		   uint32 start, uint32 end, const JsonbVisitor *v, void *arg)
{
	JEntry		entry = container->children[index];

	if (JBE_ISSTRING(entry))
		v->string(arg, data + start, (int) (end - start));
	else if (JBE_ISNUMERIC(entry))
		v->number(arg, data + INTALIGN(start));
	else if (JBE_ISBOOL_TRUE(entry))
		v->literal(arg, 't');
	else if (JBE_ISBOOL_FALSE(entry))
		v->literal(arg, 'f');
	else if (JBE_ISNULL(entry))
		v->literal(arg, 'n');
	else
		walk_container((const JsonbContainer *) (data + INTALIGN(start)), v, arg);
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
walk_container(const JsonbContainer *container, const JsonbVisitor *v, void *arg)
{
	int			count = (int) JsonContainerSize(container);
	bool		object = JsonContainerIsObject(container);
	const char *data = (const char *) &container->children[object ? count * 2 : count];
	uint32		start = 0;

	if (JsonContainerIsScalar(container))
	{
		walk_entry(container, data, 0, 0, entry_end(container, 0, 0), v, arg);
		return;
	}
	v->open(arg, object, count);
	if (object)
	{
		/* keys are entries 0 .. count - 1, their values count .. 2 * count - 1 */
		uint32		value_start = entry_start(container, count);

		for (int i = 0; i < count; i++)
		{
			uint32		end = entry_end(container, i, start);
			uint32		value_end = entry_end(container, count + i, value_start);

			v->key(arg, data + start, (int) (end - start));
			walk_entry(container, data, count + i, value_start, value_end, v, arg);
			v->placed(arg, true, i);
			start = end;
			value_start = value_end;
		}
	}
	else
		for (int i = 0; i < count; i++)
		{
			uint32		end = entry_end(container, i, start);

			walk_entry(container, data, i, start, end, v, arg);
			v->placed(arg, false, i);
			start = end;
		}
	v->close(arg);
}

void
jsonb_walk(const JsonbContainer *container, const JsonbVisitor *visitor, void *arg)
{
	walk_container(container, visitor, arg);
}
