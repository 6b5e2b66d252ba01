/*-------------------------------------------------------------------------
 *
 * build_info.c
 *	  xprov.build_info(): versions of the libraries linked into xprov.so.
 *
 * Exports the SQL-callable C function xprov_build_info (no arguments,
 * returns jsonb).  It asks each library for its version at run time, so the
 * answer proves that libcurl and cJSON are actually loaded and that the
 * embedded duktape runs (it evaluates Duktape.version in a throw-away heap).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>
#include <cjson/cJSON.h>

#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/fmgrprotos.h"
#include "utils/json.h"

#include "js_deadline.h"

PG_FUNCTION_INFO_V1(xprov_build_info);

static void append_json_field(StringInfo buf, const char *key,
							  const char *value, bool first);
static void build_info_duk_fatal(void *udata, const char *msg);

/*
 * Duktape calls this only for errors outside any protected call, which the
 * code below does not make.  Should it happen anyway, end this backend
 * cleanly: duktape's default handler would abort(), and an abort makes the
 * postmaster restart the whole cluster.  FATAL exits without longjmp, so it
 * does not unwind through duktape frames.
 */
static void
build_info_duk_fatal(void *udata, const char *msg)
{
	(void) udata;
	ereport(FATAL,
			(errcode(ERRCODE_INTERNAL_ERROR),
			 errmsg("duktape fatal error in xprov.build_info(): %s",
					msg ? msg : "(no message)")));
}

static void
append_json_field(StringInfo buf, const char *key, const char *value,
				  bool first)
{
	if (!first)
		appendStringInfoString(buf, ", ");
	escape_json(buf, key);
	appendStringInfoString(buf, ": ");
	if (value)
		escape_json(buf, value);
	else
		appendStringInfoString(buf, "null");
}

Datum
xprov_build_info(PG_FUNCTION_ARGS)
{
	curl_version_info_data *cv = curl_version_info(CURLVERSION_NOW);
	duk_context *ctx;
	double		duk_runtime_version = -1;
	char		duk_built[32];
	char		duk_runtime[32];
	JsDeadline	deadline = {0};	/* none: the heap's udata, for the check */
	StringInfoData buf;

	/*
	 * Only C locals are touched while duktape is active (no palloc, no
	 * ereport), per the error-boundary rules; the result is copied out and
	 * the heap destroyed before any PostgreSQL call.
	 */
	ctx = duk_create_heap(NULL, NULL, NULL, &deadline, build_info_duk_fatal);
	if (ctx != NULL)
	{
		if (duk_peval_string(ctx, "Duktape.version") == 0 &&
			duk_is_number(ctx, -1))
			duk_runtime_version = duk_get_number(ctx, -1);
		duk_destroy_heap(ctx);
	}

	snprintf(duk_built, sizeof(duk_built), "%ld.%ld.%ld",
			 (long) (DUK_VERSION / 10000),
			 (long) ((DUK_VERSION / 100) % 100),
			 (long) (DUK_VERSION % 100));
	if (duk_runtime_version >= 0)
	{
		long		v = (long) duk_runtime_version;

		snprintf(duk_runtime, sizeof(duk_runtime), "%ld.%ld.%ld",
				 v / 10000, (v / 100) % 100, v % 100);
	}

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	append_json_field(&buf, "libcurl", cv ? cv->version : NULL, true);
	append_json_field(&buf, "libcurl_ssl", cv ? cv->ssl_version : NULL, false);
	append_json_field(&buf, "cjson", cJSON_Version(), false);
	append_json_field(&buf, "duktape", duk_built, false);
	append_json_field(&buf, "duktape_runtime",
					  duk_runtime_version >= 0 ? duk_runtime : NULL, false);
	/* js_deadline.h refuses to compile unless both are on. */
	appendStringInfoString(&buf, ", \"duktape_exec_timeout\": true");
	append_json_field(&buf, "postgres_built", PG_VERSION, false);
	appendStringInfoChar(&buf, '}');

	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
}
