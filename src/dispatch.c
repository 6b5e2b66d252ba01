/*-------------------------------------------------------------------------
 *
 * dispatch.c
 *	  Per-connector admission of the worker's HTTP requests and the circuit
 *	  breaker.  See dispatch.h.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "utils/array.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "dispatch.h"
#include "spi_util.h"
#include "xprov.h"

/* How long a connector's settings are trusted before they are re-read. */
#define CONNECTOR_REFRESH_MS	5000
/* Consecutive failed exchanges (5xx, timeouts, resets) that open the breaker. */
#define BREAKER_FAILURES		5
/* First pause of an opened breaker; doubles per failed probe up to the cap. */
#define BREAKER_FIRST_PAUSE_MS	1000
#define BREAKER_MAX_PAUSE_MS	(5 * 60 * 1000)

typedef enum BreakerState
{
	BREAKER_CLOSED,
	BREAKER_OPEN,
	BREAKER_HALF_OPEN
} BreakerState;

typedef struct ConnectorRuntime
{
	pg_uuid_t	id;				/* hash key */
	Connector  *connector;		/* NULL while its config is unusable */
	char		error[256];		/* why the config is unusable */
	TimestampTz loaded_at;

	int			in_flight;
	WorkOp	   *waiting_head;
	WorkOp	   *waiting_tail;
	int			nwaiting;

	double		tokens;			/* rate limit bucket */
	TimestampTz tokens_at;
	TimestampTz hold_until;		/* the target asked us to wait (429) */

	BreakerState breaker;
	TimestampTz open_until;
	int			trips;
	int			failures;
	bool		probing;
} ConnectorRuntime;

static HTAB *runtimes = NULL;
static MemoryContext dispatch_cxt = NULL;
static WorkOp *released = NULL;
static int	total_in_flight = 0;
static int	total_waiting = 0;

void
dispatch_init(void)
{
	HASHCTL		ctl = {0};

	dispatch_cxt = AllocSetContextCreate(TopMemoryContext, "xprov dispatch",
										 ALLOCSET_DEFAULT_SIZES);
	ctl.keysize = sizeof(pg_uuid_t);
	ctl.entrysize = sizeof(ConnectorRuntime);
	ctl.hcxt = dispatch_cxt;
	runtimes = hash_create("xprov connectors", 64, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
}

static ConnectorRuntime *
runtime_for(const pg_uuid_t *id)
{
	bool		found;
	ConnectorRuntime *rt = hash_search(runtimes, id, HASH_ENTER, &found);

	if (!found)
	{
		pg_uuid_t	key = rt->id;

		memset(rt, 0, sizeof(ConnectorRuntime));
		rt->id = key;
	}
	return rt;
}

bool
dispatch_connector_stale(const pg_uuid_t *id, TimestampTz now)
{
	ConnectorRuntime *rt = hash_search(runtimes, id, HASH_FIND, NULL);

	return rt == NULL || rt->loaded_at == 0 ||
		TimestampDifferenceExceeds(rt->loaded_at, now, CONNECTOR_REFRESH_MS);
}

/*
 * Operations never keep a pointer to a connector across a wait (the worker
 * looks it up again before each protocol step), so the old settings can be
 * freed at once.
 */
void
dispatch_connector_loaded(const pg_uuid_t *id, Connector *connector, const char *error,
						  TimestampTz now)
{
	ConnectorRuntime *rt = runtime_for(id);

	if (rt->connector != NULL)
		connector_free(rt->connector);
	rt->connector = connector;
	rt->error[0] = '\0';
	if (connector == NULL)
		strlcpy(rt->error, error ? error : "connector does not exist", sizeof(rt->error));
	rt->loaded_at = now;
}

Connector *
dispatch_connector(const pg_uuid_t *id, const char **error)
{
	ConnectorRuntime *rt = hash_search(runtimes, id, HASH_FIND, NULL);

	if (rt == NULL || rt->connector == NULL)
	{
		*error = rt ? rt->error : "connector settings not loaded";
		return NULL;
	}
	return rt->connector;
}

void
dispatch_submit(WorkOp *op)
{
	ConnectorRuntime *rt = runtime_for(&op->connector_id);

	op->next = NULL;
	if (rt->waiting_tail)
		rt->waiting_tail->next = op;
	else
		rt->waiting_head = op;
	rt->waiting_tail = op;
	rt->nwaiting++;
	total_waiting++;
}

static WorkOp *
pop_waiting(ConnectorRuntime *rt)
{
	WorkOp	   *op = rt->waiting_head;

	rt->waiting_head = op->next;
	if (rt->waiting_head == NULL)
		rt->waiting_tail = NULL;
	op->next = NULL;
	rt->nwaiting--;
	total_waiting--;
	return op;
}

static long
ms_until(TimestampTz now, TimestampTz then)
{
	return then <= now ? 0 : (long) ((then - now + 999) / 1000);
}

/* Refill the rate-limit bucket; returns ms until one token is there. */
static long
refill_tokens(ConnectorRuntime *rt, const Connector *conn, TimestampTz now)
{
	double		burst;

	if (conn->rate_limit <= 0)
		return 0;
	burst = Max(1.0, conn->rate_limit);
	if (rt->tokens_at == 0)
		rt->tokens = burst;
	else
		rt->tokens = Min(burst, rt->tokens + (now - rt->tokens_at) / 1e6 * conn->rate_limit);
	rt->tokens_at = now;
	if (rt->tokens >= 1.0)
		return 0;
	return (long) ceil((1.0 - rt->tokens) / conn->rate_limit * 1000.0);
}

/*
 * Start an operation's request.  A request the engine refuses (a header
 * value with a line break that came from the target, say) fails that one
 * operation instead of the worker, which would only meet it again after a
 * restart.
 */
static bool
start_request(WorkOp *op, const Connector *conn)
{
	MemoryContext old = CurrentMemoryContext;
	volatile bool started = true;

	PG_TRY();
	{
		http_engine_start(op->request, conn, op->id_text);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(op->cxt);
		edata = CopyErrorData();
		FlushErrorState();
		op->outcome.kind = OUTCOME_DEAD;
		op->outcome.error = psprintf("request not sent: %s", edata->message);
		started = false;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(old);
	return started;
}

/*
 * Start what one connector may start now; returns ms until it may start
 * more, or -1 when it waits for nothing time-bound.
 */
static long
pump_connector(ConnectorRuntime *rt, TimestampTz now)
{
	const Connector *conn = rt->connector;

	while (rt->nwaiting > 0 && total_in_flight < xprov_max_in_flight)
	{
		WorkOp	   *op;
		long		wait_ms;

		if (conn == NULL)
			return -1;			/* the worker releases these */
		if (rt->hold_until > now)
			return ms_until(now, rt->hold_until);
		if (rt->breaker == BREAKER_OPEN)
		{
			if (now < rt->open_until)
				return ms_until(now, rt->open_until);
			rt->breaker = BREAKER_HALF_OPEN;
			rt->probing = false;
		}
		if (rt->breaker == BREAKER_HALF_OPEN && (rt->probing || rt->in_flight > 0))
			return -1;
		if (rt->in_flight >= conn->max_in_flight)
			return -1;
		wait_ms = refill_tokens(rt, conn, now);
		if (wait_ms > 0)
			return wait_ms;

		op = pop_waiting(rt);
		if (conn->rate_limit > 0)
			rt->tokens -= 1.0;
		if (rt->breaker == BREAKER_HALF_OPEN)
			rt->probing = true;
		rt->in_flight++;
		total_in_flight++;
		op->connector = rt->connector;
		if (!start_request(op, conn))
		{
			rt->in_flight--;
			total_in_flight--;
			op->next = released;
			released = op;
		}
	}
	return -1;
}

long
dispatch_pump(TimestampTz now)
{
	HASH_SEQ_STATUS seq;
	ConnectorRuntime *rt;
	long		next = -1;

	if (total_waiting == 0)
		return -1;
	hash_seq_init(&seq, runtimes);
	while ((rt = hash_seq_search(&seq)) != NULL)
	{
		long		wait_ms;

		if (rt->nwaiting == 0)
			continue;
		wait_ms = pump_connector(rt, now);
		if (wait_ms >= 0 && (next < 0 || wait_ms < next))
			next = wait_ms;
	}
	return next;
}

/* Give back every waiting operation of a paused connector, unattempted. */
static void
release_waiting(ConnectorRuntime *rt, TimestampTz now)
{
	while (rt->nwaiting > 0)
	{
		WorkOp	   *op = pop_waiting(rt);

		op->outcome.kind = OUTCOME_RELEASE;
		op->outcome.retry_after_ms = (int) ms_until(now, rt->open_until);
		op->next = released;
		released = op;
	}
}

static void
trip(ConnectorRuntime *rt, TimestampTz now)
{
	int			pause_ms = BREAKER_FIRST_PAUSE_MS;

	for (int i = 0; i < rt->trips && pause_ms < BREAKER_MAX_PAUSE_MS; i++)
		pause_ms *= 2;
	pause_ms = Min(pause_ms, BREAKER_MAX_PAUSE_MS);
	rt->breaker = BREAKER_OPEN;
	rt->open_until = TimestampTzPlusMilliseconds(now, pause_ms);
	rt->trips++;
	rt->failures = 0;
	rt->probing = false;
	if (rt->connector)
		ereport(LOG,
				errmsg("xprov worker: pausing connector \"%s\" for %d ms",
					   rt->connector->name, pause_ms),
				errdetail("It refused connections, rejected the credentials or failed repeatedly."));
	release_waiting(rt, now);
}

static bool
is_connector_failure(const HttpResponse *response)
{
	return response->connect_failed || response->status == 401 || response->status == 403;
}

static bool
is_transient_failure(const HttpResponse *response)
{
	return response->transport_failed || response->status >= 500 || response->status == 408;
}

/* Bookkeeping for a finished exchange; may open or close the breaker. */
void
dispatch_response(WorkOp *op, const HttpResponse *response, TimestampTz now)
{
	ConnectorRuntime *rt = runtime_for(&op->connector_id);
	bool		was_probe = rt->breaker == BREAKER_HALF_OPEN && rt->probing;

	rt->in_flight--;
	total_in_flight--;
	if (was_probe)
		rt->probing = false;

	/*
	 * Refused before it was sent (url_policy.h): the target said nothing,
	 * so the breaker neither counts it nor closes on it.
	 */
	if (response->refused)
		return;

	if (response->status == 429 && response->retry_after_ms > 0)
		rt->hold_until = Max(rt->hold_until,
							 TimestampTzPlusMilliseconds(now, response->retry_after_ms));

	/*
	 * Requests already in flight when the breaker opened say nothing new,
	 * whatever they answer: only the probe decides when it closes, and only
	 * a closed breaker or a failed probe trips it.
	 */
	if (rt->breaker == BREAKER_OPEN)
		return;
	if (is_connector_failure(response) || is_transient_failure(response))
	{
		if (was_probe || is_connector_failure(response) || ++rt->failures >= BREAKER_FAILURES)
			trip(rt, now);
		return;
	}
	rt->failures = 0;
	if (rt->breaker != BREAKER_CLOSED)
	{
		rt->breaker = BREAKER_CLOSED;
		rt->trips = 0;
		if (rt->connector)
			ereport(LOG,
					errmsg("xprov worker: connector \"%s\" is answering again",
						   rt->connector->name));
	}
}

/* A protocol judged the connector as a whole failing (OUTCOME_CONNECTOR). */
void
dispatch_connector_failed(WorkOp *op, TimestampTz now)
{
	ConnectorRuntime *rt = runtime_for(&op->connector_id);

	if (rt->breaker == BREAKER_CLOSED)
		trip(rt, now);
}

int
dispatch_resume_delay_ms(const pg_uuid_t *connector_id, TimestampTz now)
{
	ConnectorRuntime *rt = hash_search(runtimes, connector_id, HASH_FIND, NULL);

	if (rt == NULL)
		return 0;
	return (int) Max(ms_until(now, rt->open_until), ms_until(now, rt->hold_until));
}

WorkOp *
dispatch_take_released(void)
{
	WorkOp	   *list = released;

	released = NULL;
	return list;
}

/* Shutdown: every operation still waiting for admission. */
WorkOp *
dispatch_take_all_waiting(void)
{
	HASH_SEQ_STATUS seq;
	ConnectorRuntime *rt;
	WorkOp	   *list = NULL;

	hash_seq_init(&seq, runtimes);
	while ((rt = hash_seq_search(&seq)) != NULL)
	{
		while (rt->nwaiting > 0)
		{
			WorkOp	   *op = pop_waiting(rt);

			op->next = list;
			list = op;
		}
	}
	return list;
}

/*
 * Milliseconds until a paused connector may take requests again (its
 * operations are not claimed until then, so nobody else will wake the
 * worker), or -1 when none is paused.
 */
long
dispatch_next_resume_ms(TimestampTz now)
{
	HASH_SEQ_STATUS seq;
	ConnectorRuntime *rt;
	long		next = -1;

	hash_seq_init(&seq, runtimes);
	while ((rt = hash_seq_search(&seq)) != NULL)
	{
		TimestampTz resume = 0;

		if (rt->breaker == BREAKER_OPEN && rt->open_until > now)
			resume = rt->open_until;
		if (rt->hold_until > now)
			resume = Max(resume, rt->hold_until);
		if (resume != 0 && (next < 0 || ms_until(now, resume) < next))
			next = ms_until(now, resume);
	}
	return next;
}

int
dispatch_in_flight(void)
{
	return total_in_flight;
}

int
dispatch_waiting(void)
{
	return total_waiting;
}

/*
 * Connectors whose operations the worker should not claim now (breaker
 * open, or unusable settings); *ids_array gets them as a uuid[] Datum
 * palloc'd in the current context.
 */
int
dispatch_paused(TimestampTz now, Datum *ids_array)
{
	HASH_SEQ_STATUS seq;
	ConnectorRuntime *rt;
	Datum	   *ids = NULL;
	int			count = 0;

	if (ids_array)
		ids = palloc(sizeof(Datum) * Max(hash_get_num_entries(runtimes), 1));

	hash_seq_init(&seq, runtimes);
	while ((rt = hash_seq_search(&seq)) != NULL)
	{
		bool		paused = rt->breaker == BREAKER_OPEN && now < rt->open_until;

		paused = paused || (rt->breaker == BREAKER_HALF_OPEN && rt->probing);
		paused = paused || rt->hold_until > now;
		if (paused && ids)
			ids[count] = UUIDPGetDatum(&rt->id);
		count += paused ? 1 : 0;
	}
	if (ids_array)
		*ids_array = spi_array_arg(ids, NULL, count, UUIDOID);
	return count;
}
