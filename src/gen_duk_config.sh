#!/bin/sh
#
# gen_duk_config.sh SRC_DIR OUT_DIR
#
# Prepares the duktape build used by xprov.so from the amalgamated sources
# that Debian's duktape-dev installs (SRC_DIR, normally /usr/share/duktape).
# Nothing of duktape is committed to the repository; everything is generated
# into OUT_DIR (normally build/duktape, git-ignored):
#
#   duk_config.h  Debian's config with six kinds of edits:
#                 - DUK_USE_INTERRUPT_COUNTER on, so that the executor
#                   periodically calls the timeout check;
#                 - DUK_USE_EXEC_TIMEOUT_CHECK(udata) calls our
#                   xprov_js_exec_timeout_check() (src/js_deadline.c), so
#                   hooks stop at their deadline and on query cancel;
#                 - DUK_EXTERNAL / DUK_EXTERNAL_DECL get hidden visibility
#                   (three compiler branches).  -fvisibility=hidden alone is
#                   not enough because Debian spells them visibility("default")
#                   explicitly; exported duk_* symbols could bind to another
#                   copy of duktape loaded into the same backend (PostgreSQL
#                   dlopen()s modules RTLD_GLOBAL).
#                 - property tables start at 8 entries and then grow by
#                   about 9 (DUK_USE_HOBJECT_ENTRY_MINGROW_ADD 64), and
#                   objects of up to 32 entries have no hash part
#                   (DUK_USE_HOBJECT_HASH_PROP_LIMIT 32): with Debian's
#                   growth of 2 entries at a time, building a hook's ctx
#                   (a dozen members, and the attributes) reallocated its
#                   tables a dozen times, a tenth of a small hook's cost;
#                 - DUK_USE_JSON_STRINGIFY_FASTPATH on: encoding what a hook
#                   returns was a third of a small hook's cost, and the fast
#                   path is several times quicker.  It reads plain data
#                   only (it falls back to the ordinary encoder on getters,
#                   toJSON and the like, which run under the deadline); it
#                   does not poll the deadline itself, but what it encodes
#                   is bounded by the hook's memory cap, so it ends within
#                   milliseconds.
#   duktape.h     copied unchanged.  It must sit next to duk_config.h: it
#                 includes "duk_config.h" with quotes, so the header in the
#                 same directory always wins over -I ordering.
#   duktape.c     copied with src/duktape_ext.inc appended (helpers of ours
#                 that need duktape's internal API), and with two kinds of
#                 edits, for C code the interrupt counter never reaches: the regexp executor polls the same
#                 timeout check every 64k steps (without it a ReDoS pattern
#                 runs for seconds past the deadline; research: 7.8 s vs
#                 50 ms), and so do property reads and writes every 16k
#                 calls (built-ins that loop over an array's length in C).
#
# Every edit replaces a line that must match Debian's text EXACTLY, and the
# number of matches is checked.  If duktape-dev changes these lines, the build
# stops here with a message instead of silently producing a duktape without a
# timeout or with exported symbols.  Outputs are written to temporary files and
# moved into place only when every check has passed.

set -eu

if [ $# -ne 2 ]; then
	echo "usage: $0 SRC_DIR OUT_DIR" >&2
	exit 2
fi
SRC=$1
OUT=$2

fail()
{
	echo "" >&2
	echo "*** gen_duk_config.sh: $*" >&2
	echo "*** The duktape build config could not be generated; see src/gen_duk_config.sh." >&2
	echo "" >&2
	exit 1
}

for f in duktape.c duktape.h duk_config.h; do
	[ -r "$SRC/$f" ] || fail "$SRC/$f not found (install Debian package duktape-dev)"
done

mkdir -p "$OUT"
tmpdir=$(mktemp -d "$OUT/.gen.XXXXXX")
trap 'rm -rf "$tmpdir"' EXIT

# replace_lines IN OUT EXPECTED_COUNT OLD NEW [EXPECTED_COUNT OLD NEW ...]
#
# Copies IN to OUT, replacing every line that is exactly OLD by NEW (NEW may
# contain \n for several lines).  Fails unless each OLD matched exactly
# EXPECTED_COUNT times.  awk with string equality, so no regex or sed
# escaping can make a pattern silently match nothing or too much; the strings
# travel through the environment because awk -v would interpret backslashes.
replace_lines()
{
	in=$1
	out=$2
	shift 2
	n=0
	while [ $# -gt 0 ]; do
		n=$((n + 1))
		export "XP_CNT_$n=$1" "XP_OLD_$n=$2" "XP_NEW_$n=$3"
		shift 3
	done
	XP_N=$n awk '
		BEGIN {
			n = ENVIRON["XP_N"] + 0
			for (i = 1; i <= n; i++)
			{
				want[i] = ENVIRON["XP_CNT_" i] + 0
				old[i] = ENVIRON["XP_OLD_" i]
				new[i] = ENVIRON["XP_NEW_" i]
				gsub(/\\n/, "\n", new[i])
				seen[i] = 0
			}
		}
		{
			for (i = 1; i <= n; i++)
				if ($0 == old[i])
				{
					print new[i]
					seen[i]++
					next
				}
			print
		}
		END {
			bad = 0
			for (i = 1; i <= n; i++)
				if (seen[i] != want[i])
				{
					printf("expected %d line(s) exactly equal to:\n    %s\nfound %d\n", want[i], old[i], seen[i]) > "/dev/stderr"
					bad = 1
				}
			exit bad
		}' "$in" > "$out" || fail "unexpected content in $in (has duktape-dev changed?)"
}

TAB=$(printf '\t')

# --- duk_config.h -----------------------------------------------------------
replace_lines "$SRC/duk_config.h" "$tmpdir/duk_config.h" \
	1 '#undef DUK_USE_INTERRUPT_COUNTER' \
	  '#define DUK_USE_INTERRUPT_COUNTER  /* xprov: needed by DUK_USE_EXEC_TIMEOUT_CHECK */' \
	1 '#undef DUK_USE_EXEC_TIMEOUT_CHECK' \
	  '/* xprov: stop hooks at their deadline / on cancel (src/js_deadline.c) */\n__attribute__ ((visibility("hidden"))) extern duk_bool_t xprov_js_exec_timeout_check(void *udata);\n#define DUK_USE_EXEC_TIMEOUT_CHECK(udata) xprov_js_exec_timeout_check((udata))' \
	3 '#define DUK_EXTERNAL_DECL  __attribute__ ((visibility("default"))) extern' \
	  '#define DUK_EXTERNAL_DECL  __attribute__ ((visibility("hidden"))) extern  /* xprov: keep duk_* private */' \
	3 '#define DUK_EXTERNAL       __attribute__ ((visibility("default")))' \
	  '#define DUK_EXTERNAL       __attribute__ ((visibility("hidden")))  /* xprov: keep duk_* private */' \
	1 '#undef DUK_USE_JSON_STRINGIFY_FASTPATH' \
	  '#define DUK_USE_JSON_STRINGIFY_FASTPATH  /* xprov: what hooks return is encoded much faster */' \
	1 '#define DUK_USE_HOBJECT_ENTRY_MINGROW_ADD 16' \
	  '#define DUK_USE_HOBJECT_ENTRY_MINGROW_ADD 64  /* xprov: ctx objects grow in 2 steps, not 8 */' \
	1 '#define DUK_USE_HOBJECT_HASH_PROP_LIMIT 8' \
	  '#define DUK_USE_HOBJECT_HASH_PROP_LIMIT 32  /* xprov: small objects are scanned, not hashed */'

# Belt and braces: the result must say what we think it says.
grep -q '^#define DUK_USE_INTERRUPT_COUNTER' "$tmpdir/duk_config.h" ||
	fail "DUK_USE_INTERRUPT_COUNTER not enabled"
grep -q '^#define DUK_USE_EXEC_TIMEOUT_CHECK(udata) xprov_js_exec_timeout_check((udata))$' "$tmpdir/duk_config.h" ||
	fail "DUK_USE_EXEC_TIMEOUT_CHECK not set"
if grep -n 'visibility("default")' "$tmpdir/duk_config.h" >&2; then
	fail "duk_config.h still asks for default visibility (lines above)"
fi

# --- duktape.c ----------------------------------------------------------------
# Property reads and writes poll the timeout check every 16k calls: built-ins
# such as indexOf, join, reverse or forEach loop over an array's length in C,
# where the interpreter's interrupt counter never runs, and a sparse array
# with length 1e8 would otherwise keep a hook busy for seconds past its
# deadline.  getprop/putprop may throw anyway (getters, setters), so every
# caller already copes with an error here.
PROP_CHECK='{ static duk_uint32_t xprov_prop_steps; if (DUK_UNLIKELY((++xprov_prop_steps & 0x3fffU) == 0U) && xprov_js_exec_timeout_check(thr->heap->heap_udata)) { DUK_ERROR_RANGE(thr, "execution timeout"); } }  /* xprov: C loops obey the deadline */'
replace_lines "$SRC/duktape.c" "$tmpdir/duktape.c" \
	1 "${TAB}${TAB}if (re_ctx->steps_count >= re_ctx->steps_limit) {" \
	  "${TAB}${TAB}if (re_ctx->steps_count >= re_ctx->steps_limit || ((re_ctx->steps_count & 0xffffU) == 0U && xprov_js_exec_timeout_check(re_ctx->thr->heap->heap_udata))) {  /* xprov: regexp obeys the deadline */" \
	1 "${TAB}DUK_STATS_INC(thr->heap, stats_getprop_all);" \
	  "${TAB}DUK_STATS_INC(thr->heap, stats_getprop_all);\n${TAB}${PROP_CHECK}" \
	1 "${TAB}DUK_STATS_INC(thr->heap, stats_putprop_all);" \
	  "${TAB}DUK_STATS_INC(thr->heap, stats_putprop_all);\n${TAB}${PROP_CHECK}"
grep -q 'xprov_js_exec_timeout_check(re_ctx->thr->heap->heap_udata)' "$tmpdir/duktape.c" ||
	fail "regexp timeout patch not applied"
[ "$(grep -c 'xprov: C loops obey the deadline' "$tmpdir/duktape.c")" = 2 ] ||
	fail "property access timeout patch not applied"

# Our helpers that need duktape's internals join its translation unit.
EXT="$(dirname "$0")/duktape_ext.inc"
[ -r "$EXT" ] || fail "$EXT not found"
{ echo ''; echo '/* xprov: src/duktape_ext.inc */'; cat "$EXT"; } >>"$tmpdir/duktape.c"

cp "$SRC/duktape.h" "$tmpdir/duktape.h"

# Move into place only now, so a failed run never leaves a half-patched tree
# that a later make would consider up to date.
for f in duktape.h duk_config.h duktape.c; do
	mv -f "$tmpdir/$f" "$OUT/$f"
done
echo "gen_duk_config.sh: generated $OUT/{duk_config.h,duktape.h,duktape.c} from $SRC"
