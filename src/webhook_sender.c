/*-------------------------------------------------------------------------
 *
 * webhook_sender.c
 *	  The webhook sender: the background process that delivers the events
 *	  the outbox (xprov.webhook_delivery) holds to their subscribers.
 *
 * It is a process of its own, beside the workers, so that a slow or dead
 * subscriber can never hold up provisioning.  Each webhook has at most one
 * delivery in flight, its oldest pending one (xprov._webhook_due), so a
 * subscriber sees its events in order; many webhooks are served at once
 * through the workers' HTTP engine.  Deliveries are claimed and recorded in
 * short transactions, with no transaction open while requests are out; the
 * in-flight set lives in this process only, so a delivery whose answer was
 * lost to a crash is simply sent again (at least once).
 *
 * Each body is signed when it is claimed, inside the claiming transaction:
 * PostgreSQL's HMAC needs a resource owner, which only a transaction has
 * here.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <time.h>

#include "catalog/pg_type.h"
#include "common/hmac.h"
#include "common/sha2.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "connector.h"
#include "http.h"
#include "spi_util.h"
#include "worker.h"
#include "worker_shmem.h"
#include "xact_step.h"
#include "xprov.h"

/* Deliveries in flight at once, over all webhooks. */
#define MAX_IN_FLIGHT		64
/* How long an idle sender sleeps when nobody wakes it. */
#define IDLE_NAP_MS			5000
/* How much of a failed answer's body the delivery keeps as its error. */
#define ERROR_BODY_CHARS	200

typedef struct Delivery
{
	MemoryContext cxt;			/* owns everything below */
	int64		id;
	pg_uuid_t	webhook_id;
	char	   *url;
	Connector  *connector;		/* transport settings: no auth, our timeout */
	HttpRequest *request;		/* a chunk of its own, as the HTTP engine needs */
} Delivery;

static MemoryContext sender_cxt = NULL;

/* Sent, not answered yet. */
static Delivery *in_flight[MAX_IN_FLIGHT];
static int	nin_flight = 0;

/* Answered (or never sent: an unusable URL), to be recorded by the next step. */
static Delivery *answered[MAX_IN_FLIGHT];
static int	nanswered = 0;

/* What a step hands back. */
typedef struct Claim
{
	int			max;
	TimestampTz next_due;		/* 0: no pending head waits */
} Claim;

/* "t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">" */
static char *
signature_header(const char *secret, const char *body)
{
	pg_hmac_ctx *ctx = pg_hmac_create(PG_SHA256);
	uint8		digest[PG_SHA256_DIGEST_LENGTH];
	char		hex[PG_SHA256_DIGEST_LENGTH * 2 + 1];
	char	   *stamp = psprintf("%ld", (long) time(NULL));

	if (ctx == NULL ||
		pg_hmac_init(ctx, (const uint8 *) secret, strlen(secret)) < 0 ||
		pg_hmac_update(ctx, (const uint8 *) stamp, strlen(stamp)) < 0 ||
		pg_hmac_update(ctx, (const uint8 *) ".", 1) < 0 ||
		pg_hmac_update(ctx, (const uint8 *) body, strlen(body)) < 0 ||
		pg_hmac_final(ctx, digest, sizeof(digest)) < 0)
	{
		pg_hmac_free(ctx);
		elog(ERROR, "xprov webhooks: could not compute a signature");
	}
	pg_hmac_free(ctx);
	hex_encode((const char *) digest, sizeof(digest), hex);
	hex[sizeof(hex) - 1] = '\0';
	return psprintf("X-Xprov-Signature: t=%s,v1=%s", stamp, hex);
}

/* The webhooks with a delivery out, into ids; returns how many. */
static int
in_flight_webhooks(Datum *ids)
{
	for (int i = 0; i < nin_flight; i++)
		ids[i] = UUIDPGetDatum(&in_flight[i]->webhook_id);
	return nin_flight;
}

/* A delivery as the claim returned it (row of SPI_tuptable), ready to send. */
static Delivery *
make_delivery(uint64 row)
{
	MemoryContext cxt = AllocSetContextCreate(sender_cxt, "xprov webhook delivery",
											  ALLOCSET_SMALL_SIZES);
	MemoryContext old = MemoryContextSwitchTo(cxt);
	Delivery   *d = palloc0(sizeof(Delivery));
	Datum		value;
	char	   *secret;
	char	   *event_type;
	char	   *body;
	char	   *error;
	char	   *config = psprintf("{\"timeout_ms\": %d}", xprov_webhook_timeout_ms);

	d->cxt = cxt;
	d->id = spi_get_int64(row, 1);
	spi_get_datum(row, 2, &value);
	memcpy(&d->webhook_id, DatumGetUUIDP(value), UUID_LEN);
	d->url = SPI_getvalue(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, 3);
	secret = SPI_getvalue(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, 4);
	event_type = SPI_getvalue(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, 5);
	body = SPI_getvalue(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, 6);

	d->connector = connector_parse(cxt, NULL, "webhook", "rest", d->url, config, true, &error);
	d->request = palloc0(sizeof(HttpRequest));
	d->request->method = "POST";
	d->request->url = d->url;
	d->request->body = body;
	d->request->content_type = "application/json";
	d->request->owner = d;
	d->request->extra_headers = palloc(sizeof(char *) * 3);
	d->request->extra_headers[0] = signature_header(secret, body);
	d->request->extra_headers[1] = psprintf("X-Xprov-Event: %s", event_type);
	d->request->extra_headers[2] = psprintf("X-Xprov-Delivery: " INT64_FORMAT, d->id);
	d->request->nextra_headers = 3;
	if (d->connector == NULL)
	{
		/* a URL the loader refuses: answered at once, as a failed attempt */
		d->request->response.transport_failed = true;
		strlcpy(d->request->response.error, error ? error : "unusable url",
				sizeof(d->request->response.error));
	}
	explicit_bzero(secret, strlen(secret));
	MemoryContextSwitchTo(old);
	return d;
}

static void
claim_body(void *arg)
{
	Claim	   *claim = (Claim *) arg;
	Datum		busy[MAX_IN_FLIGHT];
	Datum		args[2];
	static SavedPlan due = {
		.sql = "SELECT * FROM xprov._webhook_due($1, $2)",
		.nargs = 2,
		.argtypes = {INT4OID, UUIDARRAYOID},
	};
	static SavedPlan installed = {
		.sql = "SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'xprov' AND extversion <> '0.1.0'",
	};

	claim->next_due = 0;
	/* webhooks came with 0.2.0: nothing to send before the update, or without xprov */
	saved_plan_execute(&installed, NULL, NULL, true, 1);
	if (SPI_processed != 1)
		return;
	args[0] = Int32GetDatum(claim->max);
	args[1] = spi_array_arg(busy, NULL, in_flight_webhooks(busy), UUIDOID);
	saved_plan_execute(&due, args, NULL, false, 0);
	for (uint64 row = 0; row < SPI_processed; row++)
	{
		Datum		value;

		if (!spi_get_datum(row, 1, &value))
		{
			/* the last row: when the next waiting head falls due */
			if (spi_get_datum(row, 7, &value))
				claim->next_due = DatumGetTimestampTz(value);
			continue;
		}
		in_flight[nin_flight++] = make_delivery(row);
	}
}

static char *
error_of(const HttpResponse *response)
{
	if (response->transport_failed)
		return pstrdup(response->error[0] ? response->error : "no response");
	if (response->status >= 200 && response->status < 300)
		return NULL;
	if (response->body != NULL && response->body_len > 0)
		return psprintf("HTTP %ld: %.*s", response->status, ERROR_BODY_CHARS, response->body);
	return psprintf("HTTP %ld", response->status);
}

/* What the subscribers answered, in the step's transaction. */
static void
record_answers(void)
{
	Datum	   *ids = palloc(sizeof(Datum) * nanswered);
	Datum	   *statuses = palloc(sizeof(Datum) * nanswered);
	Datum	   *errors = palloc(sizeof(Datum) * nanswered);
	bool	   *error_nulls = palloc(sizeof(bool) * nanswered);
	Datum		args[6];
	static SavedPlan record = {
		.sql = "SELECT xprov._webhook_record($1, $2, $3, $4, $5, $6)",
		.nargs = 6,
		.argtypes = {INT8ARRAYOID, INT4ARRAYOID, TEXTARRAYOID, INT4OID, INT4OID, INT4OID},
	};

	for (int i = 0; i < nanswered; i++)
	{
		const HttpResponse *response = &answered[i]->request->response;
		char	   *error = error_of(response);

		ids[i] = Int64GetDatum(answered[i]->id);
		statuses[i] = Int32GetDatum(response->transport_failed ? 0 : (int32) response->status);
		error_nulls[i] = error == NULL;
		errors[i] = error ? CStringGetTextDatum(error) : (Datum) 0;
	}
	args[0] = spi_array_arg(ids, NULL, nanswered, INT8OID);
	args[1] = spi_array_arg(statuses, NULL, nanswered, INT4OID);
	args[2] = spi_array_arg(errors, error_nulls, nanswered, TEXTOID);
	args[3] = Int32GetDatum(xprov_webhook_max_attempts);
	args[4] = Int32GetDatum(xprov_retry_base_ms);
	args[5] = Int32GetDatum(xprov_retry_max_ms);
	saved_plan_execute(&record, args, NULL, false, 0);
}

/*
 * One transaction: record what was answered, then claim what is due.  One
 * commit per round rather than two keeps a subscriber's rate near its round
 * trip.
 */
static void
step_body(void *arg)
{
	if (nanswered > 0)
		record_answers();
	claim_body(arg);
}

static void
answer(Delivery *d)
{
	for (int i = 0; i < nin_flight; i++)
		if (in_flight[i] == d)
		{
			in_flight[i] = in_flight[--nin_flight];
			break;
		}
	answered[nanswered++] = d;
}

/*
 * Record, claim and send; returns how long to wait for answers.  When the
 * step fails, what was answered is forgotten all the same (still pending in
 * the table, it will be sent again) and nothing is claimed.
 */
static long
step(void)
{
	Claim		claim = {.max = MAX_IN_FLIGHT - nin_flight};
	int			first = nin_flight;
	char	   *error;
	long		wait_ms = IDLE_NAP_MS;

	error = xact_step_run(step_body, &claim, "recording and claiming webhook deliveries");
	for (int i = 0; i < nanswered; i++)
		MemoryContextDelete(answered[i]->cxt);
	nanswered = 0;
	if (error != NULL)
	{
		ereport(LOG, errmsg("xprov webhooks: recording or claiming deliveries failed: %s", error));
		for (int i = first; i < nin_flight; i++)
			MemoryContextDelete(in_flight[i]->cxt);
		nin_flight = first;
		return IDLE_NAP_MS;
	}
	for (int i = nin_flight - 1; i >= first; i--)
	{
		Delivery   *d = in_flight[i];
		char		request_id[32];

		if (d->connector == NULL)
		{
			answer(d);			/* never sent: recorded as failed next round */
			wait_ms = 0;
			continue;
		}
		snprintf(request_id, sizeof(request_id), INT64_FORMAT, d->id);
		http_engine_start(d->request, d->connector, request_id);
	}
	if (claim.next_due != 0 && wait_ms > 0)
	{
		long		secs;
		int			usecs;

		TimestampDifference(GetCurrentTimestamp(), claim.next_due, &secs, &usecs);
		wait_ms = Min(IDLE_NAP_MS, secs * 1000 + usecs / 1000 + 1);
	}
	return wait_ms;
}

static void
serve(void)
{
	HttpRequest *done[MAX_IN_FLIGHT];
	long		wait_ms = step();
	bool		latch_set = false;
	int			ndone;

	pgstat_report_activity(STATE_IDLE, NULL);
	ndone = http_engine_wait(wait_ms, done, MAX_IN_FLIGHT, &latch_set);
	if (latch_set)
		ResetLatch(MyLatch);
	for (int i = 0; i < ndone; i++)
		answer((Delivery *) done[i]->owner);
}

void
xprov_webhooks_main(Datum arg)
{
	pqsignal(SIGTERM, die);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(xprov_database_name, NULL, 0);
	pgstat_report_appname("xprov webhooks");

	worker_shmem_set_sole_process(SOLE_WEBHOOKS);
	sender_cxt = AllocSetContextCreate(TopMemoryContext, "xprov webhook sender",
									   ALLOCSET_DEFAULT_SIZES);
	http_engine_init();
	ereport(LOG, errmsg("xprov webhooks started on database \"%s\"", xprov_database_name));

	for (;;)
	{
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		serve();
	}
}
