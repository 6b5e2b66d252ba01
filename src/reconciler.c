/*-------------------------------------------------------------------------
 *
 * reconciler.c
 *	  The reconciler: the background process that executes reconciliation
 *	  runs (xprov.reconcile), beside the workers.
 *
 * A run moves through its phases in steps, each one short transaction on a
 * SQL function (xprov._recon_*, which hold the logic); the target's list
 * pages are fetched between transactions with the workers' HTTP engine, so
 * no transaction or snapshot is open across HTTP.  The run's row is its
 * checkpoint: a reconciler that starts again (after a kill -9, say) picks a
 * running run up at the page or phase the row records.  Runs of one
 * database are executed one at a time, oldest first; the workers keep
 * provisioning meanwhile, including the operations a run enqueues.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/uuid.h"

#include "connector.h"
#include "http.h"
#include "worker.h"
#include "worker_shmem.h"
#include "xact_step.h"
#include "xprov.h"

/* A page is tried this many times, backing off from PAGE_BACKOFF_MS. */
#define PAGE_ATTEMPTS		4
#define PAGE_BACKOFF_MS		500
/* How often the operation_completion phase looks at requests in flight. */
#define SETTLE_NAP_MS		100
/* How long an idle reconciler sleeps when nobody wakes it. */
#define IDLE_NAP_MS			5000

/* The run being worked on, as its row said at the start of this step. */
typedef struct Run
{
	char		id[UUID_LEN * 2 + 5];
	char	   *object_class;
	char	   *phase;
	char	   *cursor;			/* the next page; NULL: the first */
	bool		cancel_requested;
	bool		connector_enabled;
	Connector  *connector;
	char	   *connector_error;	/* connector config unusable */
} Run;

/* A statement of a step: text arguments, and the first value it returns. */
typedef struct Step
{
	const char *sql;
	int			nargs;
	const char *args[3];		/* NULL: SQL NULL */
	char	   *result;			/* first column of the first row, or NULL */
	char	   *error;			/* set when the step failed */
} Step;

static MemoryContext step_cxt = NULL;
static char current_run[UUID_LEN * 2 + 5] = "";

/* The next list page, asked for ahead (see prefetch_next). */
static MemoryContext prefetch_cxt = NULL;
static HttpRequest *prefetched = NULL;
static char prefetch_key[1024] = "";
static long page_step = 0;		/* accounts per page the target answers */

/* Failed attempts at the page the run is on. */
static char page_key[1024] = "";
static int	page_failures = 0;

/* ---------------------------------------------------------------------
 * Transactions
 */

static void
execute_step(void *arg)
{
	Step	   *step = (Step *) arg;
	Oid			types[3] = {TEXTOID, TEXTOID, TEXTOID};
	Datum		values[3];
	char		nulls[3] = {' ', ' ', ' '};
	int			nargs = 0;

	for (int i = 0; i < step->nargs; i++)
	{
		nulls[nargs] = step->args[i] ? ' ' : 'n';
		values[nargs++] = step->args[i] ? CStringGetTextDatum(step->args[i]) : (Datum) 0;
	}
	if (SPI_execute_with_args(step->sql, nargs, types, values, nulls, false, 0) < 0)
		elog(ERROR, "xprov reconciler: statement failed: %s", step->sql);
	if (SPI_processed > 0 && SPI_tuptable != NULL)
	{
		char	   *value = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

		step->result = value ? MemoryContextStrdup(step_cxt, value) : NULL;
	}
}

/* One statement in its own transaction; false (and step->error) if it failed. */
static bool
run_step(Step *step, const char *activity)
{
	step->result = NULL;
	step->error = xact_step_run(execute_step, step, activity);
	if (step->error)
		ereport(LOG, errmsg("xprov reconciler: %s failed: %s", activity, step->error));
	return step->error == NULL;
}

static void
finish_run(Run *run, const char *status, const char *error)
{
	Step		step = {
		.sql = "SELECT xprov._recon_finish($1::uuid, $2, $3)",
		.nargs = 3,
		.args = {run->id, status, error},
	};

	if (run_step(&step, "ending a run"))
		ereport(LOG, errmsg("xprov reconciler: run %s %s%s%s", run->id, status,
							error ? ": " : "", error ? error : ""));
}

/* ---------------------------------------------------------------------
 * Loading the run
 */

static void
read_run(Run *run)
{
	HeapTuple	row = SPI_tuptable->vals[0];
	TupleDesc	desc = SPI_tuptable->tupdesc;
	bool		isnull;
	pg_uuid_t	connector_id;
	char	   *error = NULL;

	strlcpy(run->id, SPI_getvalue(row, desc, 1), sizeof(run->id));
	memcpy(&connector_id, DatumGetUUIDP(SPI_getbinval(row, desc, 2, &isnull)), sizeof(connector_id));
	run->object_class = MemoryContextStrdup(step_cxt, SPI_getvalue(row, desc, 3));
	run->phase = MemoryContextStrdup(step_cxt, SPI_getvalue(row, desc, 4));
	run->cursor = SPI_getvalue(row, desc, 5);
	if (run->cursor)
		run->cursor = MemoryContextStrdup(step_cxt, run->cursor);
	run->cancel_requested = DatumGetBool(SPI_getbinval(row, desc, 6, &isnull));
	run->connector_enabled = DatumGetBool(SPI_getbinval(row, desc, 11, &isnull));
	run->connector = connector_parse(step_cxt, &connector_id,
									 SPI_getvalue(row, desc, 8), SPI_getvalue(row, desc, 7),
									 SPI_getvalue(row, desc, 9), SPI_getvalue(row, desc, 10),
									 run->connector_enabled, &error);
	run->connector_error = error ? MemoryContextStrdup(step_cxt, error) : NULL;
}

typedef struct RunLookup
{
	Run		   *run;
	bool		found;
} RunLookup;

static void
look_up_run(void *arg)
{
	RunLookup  *lookup = (RunLookup *) arg;
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(current_run)};
	char		nulls[1] = {current_run[0] ? ' ' : 'n'};

	SPI_execute("SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'xprov'", true, 1);
	if (SPI_processed != 1)
		return;
	SPI_execute_with_args("SELECT * FROM xprov._recon_next($1::uuid)", 1, types, values, nulls, false, 1);
	if (SPI_processed == 1)
	{
		MemoryContext old = MemoryContextSwitchTo(step_cxt);

		read_run(lookup->run);
		MemoryContextSwitchTo(old);
		lookup->found = true;
	}
}

/* The run to work on, if any.  False also when xprov is not installed. */
static bool
load_run(Run *run)
{
	RunLookup	lookup = {.run = run};
	char	   *error = xact_step_run(look_up_run, &lookup, "looking for runs");

	if (error)
		ereport(LOG, errmsg("xprov reconciler: looking for runs failed: %s", error));
	return error == NULL && lookup.found;
}

/* ---------------------------------------------------------------------
 * Listing
 */

static void
append_escaped(StringInfo buf, const char *text)
{
	for (const unsigned char *c = (const unsigned char *) text; *c; c++)
	{
		if (isalnum(*c) || *c == '-' || *c == '_' || *c == '.' || *c == '~')
			appendStringInfoChar(buf, (char) *c);
		else
			appendStringInfo(buf, "%%%02X", *c);
	}
}

static char *
page_url(const Run *run, const char *cursor)
{
	StringInfoData url;

	initStringInfo(&url);
	appendStringInfoString(&url, run->connector->base_url);
	if (run->connector->kind == CONNECTOR_SCIM2)
	{
		appendStringInfo(&url, "%s?startIndex=", connector_endpoint(run->connector, run->object_class));
		append_escaped(&url, cursor ? cursor : "1");
		appendStringInfo(&url, "&count=%d", xprov_reconcile_page_size);
	}
	else
	{
		appendStringInfoString(&url, "/list?object_class=");
		append_escaped(&url, run->object_class);
		appendStringInfo(&url, "&limit=%d", xprov_reconcile_page_size);
		if (cursor)
		{
			appendStringInfoString(&url, "&cursor=");
			append_escaped(&url, cursor);
		}
	}
	return url.data;
}

/* Sleep on the latch (and the postmaster), waking for signals. */
static void
nap(long ms)
{
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, ms, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
}

/* Ask for the page at cursor; the request lives in prefetch_cxt. */
static HttpRequest *
start_page(const Run *run, const char *cursor)
{
	MemoryContext old = MemoryContextSwitchTo(prefetch_cxt);
	HttpRequest *request = palloc0(sizeof(HttpRequest));
	char	   *request_id = psprintf("reconciliation-%s-%s", run->id, cursor ? cursor : "first");

	request->method = "GET";
	request->url = page_url(run, cursor);
	request->accept = run->connector->kind == CONNECTOR_SCIM2
		? "application/scim+json, application/json" : "application/json";
	http_engine_start(request, run->connector, request_id);
	MemoryContextSwitchTo(old);
	snprintf(prefetch_key, sizeof(prefetch_key), "%s/%s", run->id, cursor ? cursor : "");
	return request;
}

static void
forget_prefetch(void)
{
	if (prefetched != NULL)
		http_engine_abandon_all();
	prefetched = NULL;
	prefetch_key[0] = '\0';
	MemoryContextReset(prefetch_cxt);
}

/*
 * The page the run is on, fetched ahead during the last step or now: its
 * body copied into the step's memory, or NULL with *error set (and
 * *refused when the URL policy forbade sending it).
 */
static char *
fetch_page(const Run *run, const char *key, char **error, bool *refused)
{
	HttpRequest *request;
	HttpResponse *response;
	const char *url;
	char	   *body = NULL;

	if (prefetched == NULL || strcmp(prefetch_key, key) != 0)
	{
		forget_prefetch();
		prefetched = start_page(run, run->cursor);
	}
	request = prefetched;
	http_engine_await(request);
	response = &request->response;
	url = request->url;
	*refused = response->refused;
	if (response->transport_failed)
		*error = psprintf("GET %s: %s", url, response->error[0] ? response->error : "no response");
	else if (response->status != 200)
		*error = psprintf("GET %s: HTTP %ld%s%.200s", url, response->status,
						  response->body ? ": " : "", response->body ? response->body : "");
	else if (response->body_truncated)
		*error = psprintf("GET %s: the page is larger than xprov.max_response_size", url);
	else if (response->body == NULL)
		*error = psprintf("GET %s: empty response", url);
	else
		body = pstrdup(response->body);
	if (*error != NULL)
		*error = connector_redact(run->connector, *error);
	prefetched = NULL;
	forget_prefetch();
	return body;
}

/*
 * A SCIM listing's next page has a known startIndex: it is asked for before
 * this page is staged, so the target's time and the database's overlap.
 * Nothing in the staging transaction waits for it; a guess that turns out
 * wrong (a target answering shorter pages) is dropped at the next step.
 */
static void
prefetch_next(const Run *run)
{
	char		next[32];

	if (run->connector->kind != CONNECTOR_SCIM2)
		return;
	snprintf(next, sizeof(next), "%ld", (run->cursor ? atol(run->cursor) : 1) + page_step);
	prefetched = start_page(run, next);
}

/*
 * A failed page is tried again, backing off, PAGE_ATTEMPTS times in all;
 * then the run fails before any diff: a partial listing must never make
 * accounts look missing.
 */
static void
page_failed(Run *run, const char *error)
{
	forget_prefetch();
	page_failures++;
	if (page_failures < PAGE_ATTEMPTS)
	{
		ereport(LOG, errmsg("xprov reconciler: run %s, page at %s failed (attempt %d of %d): %s",
							run->id, run->cursor ? run->cursor : "the start", page_failures,
							PAGE_ATTEMPTS, error));
		nap(PAGE_BACKOFF_MS << (page_failures - 1));
		return;
	}
	finish_run(run, "failed",
			   psprintf("listing the target failed at page %s after %d attempts: %s",
						run->cursor ? run->cursor : "1", PAGE_ATTEMPTS, error));
	page_failures = 0;
}

static void
list_page(Run *run)
{
	char	   *key = psprintf("%s/%s", run->id, run->cursor ? run->cursor : "");
	char	   *error = NULL;
	bool		refused = false;
	char	   *body;
	Step		step = {.sql = "SELECT xprov._recon_page($1::uuid, $2)", .nargs = 2};

	if (strcmp(key, page_key) != 0)
	{
		strlcpy(page_key, key, sizeof(page_key));
		page_failures = 0;
	}
	body = fetch_page(run, key, &error, &refused);
	if (body == NULL && refused)
	{
		/* trying again cannot help until a superuser changes the policy */
		forget_prefetch();
		finish_run(run, "failed", psprintf("listing the target failed: %s", error));
		return;
	}
	if (body == NULL)
	{
		page_failed(run, error);
		return;
	}
	prefetch_next(run);
	step.args[0] = run->id;
	step.args[1] = body;
	if (!run_step(&step, "staging a list page"))
	{
		forget_prefetch();
		page_failed(run, psprintf("GET %s: %s", page_url(run, run->cursor), step.error));
		return;
	}
	/* how far the target's pages really go, for the next guess */
	if (step.result != NULL && strcmp(step.result, "1") != 0)
		page_step = Max(atol(step.result) - (run->cursor ? atol(run->cursor) : 1), 1);
}

/* ---------------------------------------------------------------------
 * Phases
 */

static void
settle(Run *run)
{
	Step		step = {.sql = "SELECT xprov._recon_settle($1::uuid)", .nargs = 1, .args = {run->id}};

	if (!run_step(&step, "waiting for operations in flight"))
		finish_run(run, "failed", step.error);
	else if (step.result && strcmp(step.result, "f") == 0)
		nap(SETTLE_NAP_MS);
}

static void
diff(Run *run)
{
	Step		step = {.sql = "SELECT xprov._recon_diff($1::uuid)", .nargs = 1, .args = {run->id}};

	if (!run_step(&step, "comparing the listing with the shadows"))
		finish_run(run, "failed", psprintf("the diff failed: %s", step.error));
}

static void
react(Run *run)
{
	Step		step = {.sql = "SELECT xprov._recon_react($1::uuid)", .nargs = 1, .args = {run->id}};

	if (!run_step(&step, "applying reactions"))
		finish_run(run, "failed", psprintf("the reactions failed: %s", step.error));
	else
		ereport(LOG, errmsg("xprov reconciler: run %s %s", run->id, step.result ? step.result : "?"));
}

/* One step of the oldest run; false when there was nothing to do. */
static bool
reconcile_step(void)
{
	Run			run = {0};

	if (!load_run(&run))
	{
		current_run[0] = '\0';
		forget_prefetch();
		return false;
	}
	strlcpy(current_run, run.id, sizeof(current_run));
	if (strcmp(run.phase, "listing") != 0 || run.cancel_requested)
		forget_prefetch();
	if (run.cancel_requested)
		finish_run(&run, "cancelled", NULL);
	else if (run.connector == NULL)
		finish_run(&run, "failed", psprintf("the connector is misconfigured: %s", run.connector_error));
	else if (!run.connector_enabled &&
			 (strcmp(run.phase, "operation_completion") == 0 || strcmp(run.phase, "listing") == 0))
		finish_run(&run, "failed", "the connector is disabled");
	else if (strcmp(run.phase, "operation_completion") == 0)
		settle(&run);
	else if (strcmp(run.phase, "listing") == 0)
		list_page(&run);
	else if (strcmp(run.phase, "diff") == 0)
		diff(&run);
	else if (strcmp(run.phase, "reactions") == 0)
		react(&run);
	else
		finish_run(&run, "completed", NULL);
	return true;
}

void
xprov_reconciler_main(Datum arg)
{
	pqsignal(SIGTERM, die);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(xprov_database_name, NULL, 0);
	pgstat_report_appname("xprov reconciler");
	SetConfigOption("jit", "off", PGC_USERSET, PGC_S_OVERRIDE);

	/*
	 * The diff builds temporary tables of the whole listing (100 MB for
	 * 100,000 accounts) and joins them: with the default 8 MB of temporary
	 * buffers and 4 MB of work memory they spill to files and are read back
	 * by every later statement.  One process, so the memory is bounded.
	 */
	SetConfigOption("temp_buffers", "256MB", PGC_USERSET, PGC_S_OVERRIDE);
	SetConfigOption("work_mem", "64MB", PGC_USERSET, PGC_S_OVERRIDE);

	worker_shmem_set_sole_process(SOLE_RECONCILER);
	step_cxt = AllocSetContextCreate(TopMemoryContext, "xprov reconciliation step",
									 ALLOCSET_DEFAULT_SIZES);
	prefetch_cxt = AllocSetContextCreate(TopMemoryContext, "xprov reconciler prefetch",
										 ALLOCSET_DEFAULT_SIZES);
	page_step = xprov_reconcile_page_size;
	http_engine_init();
	ereport(LOG, errmsg("xprov reconciler started on database \"%s\"", xprov_database_name));

	for (;;)
	{
		MemoryContext old;
		bool		worked;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		MemoryContextReset(step_cxt);
		old = MemoryContextSwitchTo(step_cxt);
		worked = reconcile_step();
		MemoryContextSwitchTo(old);
		if (!worked)
			nap(IDLE_NAP_MS);
	}
}
