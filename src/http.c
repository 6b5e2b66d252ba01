/*-------------------------------------------------------------------------
 *
 * http.c
 *	  The HTTP engine: one libcurl multi handle per process, driven through
 *	  a PostgreSQL WaitEventSet.
 *
 * libcurl tells us which sockets it wants watched (socket callback) and when
 * it next needs to run (timer callback).  Both callbacks only update plain C
 * state here; http_engine_wait() turns that state into a WaitEventSet that
 * also holds the process latch and the postmaster's death, sleeps at most
 * 250 ms, and hands the ready sockets back to libcurl.  A PG15 WaitEventSet
 * cannot drop a socket, so the set is rebuilt whenever a socket comes or
 * goes; a socket that only changes direction is modified in place.  curl
 * announces the removal of a socket before it closes it, so the rebuild
 * always happens before we wait again and a closed descriptor is never
 * waited on.
 *
 * No PostgreSQL function that can raise an error (palloc, elog) is called
 * from a libcurl callback: a longjmp out of libcurl's frames would corrupt
 * its state.  Callbacks fill malloc'd buffers of an EasySlot; the response
 * is copied into palloc'd memory only after libcurl has returned.
 *
 * Easy handles are kept on a free list and reused; kept-alive connections
 * live in the multi handle's connection cache.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>
#include <limits.h>
#include <time.h>

#include "miscadmin.h"
#include "storage/latch.h"
#include "utils/memutils.h"
#include "utils/wait_event.h"

#include "connector.h"
#include "http.h"
#include "mem_util.h"
#include "url_policy.h"
#include "xprov.h"

#define HTTP_MAX_WAIT_MS		250
#define HTTP_MAX_CONNECTS		256
#define EXCHANGE_SLICE_MS		250
#define HTTP_USER_AGENT			"User-Agent: xprov/0.1"
#define HTTP_HEADER_VALUE_MAX	1024

/*
 * One easy handle and what its callbacks collect.  malloc'd: it outlives
 * any request and is written by callbacks, which must not palloc.
 */
typedef struct EasySlot
{
	CURL	   *easy;
	HttpRequest *request;		/* NULL while on the free list */
	MemoryContext response_cxt; /* where the response is copied to */
	struct curl_slist *headers;
	char		errbuf[CURL_ERROR_SIZE];

	char	   *body;
	size_t		body_len;
	size_t		body_cap;
	size_t		body_max;
	bool		body_truncated;
	bool		out_of_memory;
	int			retry_after_ms;
	char	   *etag;
	char	   *location;

	struct EasySlot *prev;		/* active list, or free list (next only) */
	struct EasySlot *next;
} EasySlot;

/* A socket libcurl wants watched. */
typedef struct WatchedSocket
{
	curl_socket_t fd;
	int			what;			/* CURL_POLL_IN / OUT / INOUT */
	int			pos;			/* position in wait_set, -1 if none */
	bool		modified;		/* what changed since wait_set was built */
} WatchedSocket;

static bool engine_ready = false;
static CURLM *multi = NULL;

static EasySlot *active_slots = NULL;
static EasySlot *free_slots = NULL;
static int	n_active = 0;

static WatchedSocket *sockets = NULL;	/* malloc'd */
static int	n_sockets = 0;
static int	sockets_cap = 0;
static bool sockets_added_or_removed = false;
static bool sockets_modified = false;

static WaitEventSet *wait_set = NULL;
static WaitEvent *wait_events = NULL;
static int	wait_events_len = 0;

static int64 timer_deadline_ms = -1;	/* monotonic; -1: no timer */

/*
 * Requests refused before libcurl saw them, completed by the next wait in
 * the order they were started.  In TopMemoryContext: the pointers outlive
 * any caller's context.
 */
static HttpRequest **refused = NULL;
static int	n_refused = 0;
static int	refused_cap = 0;

static int64
monotonic_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------------------
 * libcurl callbacks: plain C only.
 */

static int
find_socket(curl_socket_t fd)
{
	for (int i = 0; i < n_sockets; i++)
		if (sockets[i].fd == fd)
			return i;
	return -1;
}

static int
socket_callback(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
	int			i = find_socket(fd);

	if (what == CURL_POLL_REMOVE || what == CURL_POLL_NONE)
	{
		if (i >= 0)
		{
			sockets[i] = sockets[--n_sockets];
			sockets_added_or_removed = true;
		}
		return 0;
	}
	if (i < 0)
	{
		if (n_sockets == sockets_cap)
		{
			int			cap = sockets_cap == 0 ? 16 : sockets_cap * 2;
			WatchedSocket *grown = realloc(sockets, cap * sizeof(WatchedSocket));

			if (grown == NULL)
				return -1;		/* libcurl fails the transfer */
			sockets = grown;
			sockets_cap = cap;
		}
		i = n_sockets++;
		sockets[i].fd = fd;
		sockets[i].pos = -1;
		sockets_added_or_removed = true;
	}
	else if (sockets[i].what != what)
	{
		sockets[i].modified = true;
		sockets_modified = true;
	}
	sockets[i].what = what;
	return 0;
}

static int
timer_callback(CURLM *m, long timeout_ms, void *userp)
{
	timer_deadline_ms = timeout_ms < 0 ? -1 : monotonic_ms() + timeout_ms;
	return 0;
}

static size_t
write_callback(char *data, size_t size, size_t nmemb, void *userp)
{
	EasySlot   *slot = (EasySlot *) userp;
	size_t		len = size * nmemb;
	size_t		take = Min(len, slot->body_max - slot->body_len);

	/* Beyond the cap: drop the rest but let the exchange complete. */
	if (take < len)
		slot->body_truncated = true;
	if (take == 0)
		return len;

	if (slot->body_len + take + 1 > slot->body_cap)
	{
		size_t		cap = Max(slot->body_cap * 2, slot->body_len + take + 1);
		char	   *grown;

		cap = Min(cap, slot->body_max + 1);
		grown = realloc(slot->body, cap);
		if (grown == NULL)
		{
			slot->out_of_memory = true;
			return 0;			/* aborts the transfer: CURLE_WRITE_ERROR */
		}
		slot->body = grown;
		slot->body_cap = cap;
	}
	memcpy(slot->body + slot->body_len, data, take);
	slot->body_len += take;
	slot->body[slot->body_len] = '\0';
	return len;
}

/* Retry-After: delta-seconds or an HTTP-date; -1 if neither. */
static int
parse_retry_after(const char *value)
{
	const char *p = value;
	long long	seconds;

	if (*p >= '0' && *p <= '9')
	{
		seconds = 0;
		for (; *p >= '0' && *p <= '9'; p++)
		{
			seconds = seconds * 10 + (*p - '0');
			if (seconds > INT_MAX / 1000)
				seconds = INT_MAX / 1000;
		}
		return *p == '\0' ? (int) (seconds * 1000) : -1;
	}
	else
	{
		time_t		when = curl_getdate(value, NULL);

		if (when == (time_t) -1)
			return -1;
		seconds = (long long) (when - time(NULL));
		if (seconds <= 0)
			return 0;
		return (int) Min(seconds, INT_MAX / 1000) * 1000;
	}
}

static void
replace_string(char **field, const char *value)
{
	free(*field);
	*field = strdup(value);		/* NULL on out of memory: header ignored */
}

/* Reset what one response's headers told us (a new response begins). */
static void
forget_headers(EasySlot *slot)
{
	free(slot->etag);
	free(slot->location);
	slot->etag = NULL;
	slot->location = NULL;
	slot->retry_after_ms = -1;
}

static size_t
header_callback(char *line, size_t size, size_t nitems, void *userp)
{
	EasySlot   *slot = (EasySlot *) userp;
	size_t		len = size * nitems;
	const char *colon = memchr(line, ':', len);
	size_t		name_len;
	const char *v;
	const char *end = line + len;
	char		value[HTTP_HEADER_VALUE_MAX];

	/* A status line starts a response (there may be 1xx ones before). */
	if (len >= 5 && memcmp(line, "HTTP/", 5) == 0)
	{
		forget_headers(slot);
		return len;
	}
	if (colon == NULL)
		return len;
	name_len = colon - line;

	for (v = colon + 1; v < end && (*v == ' ' || *v == '\t'); v++)
		;
	while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ' || end[-1] == '\t'))
		end--;
	if (end - v >= (ptrdiff_t) sizeof(value))
		return len;				/* none of ours is that long */
	for (const char *c = v; c < end; c++)
		if ((unsigned char) *c < 0x20 && *c != '\t')
			return len;			/* would not survive being sent back */
	memcpy(value, v, end - v);
	value[end - v] = '\0';

	if (name_len == 11 && pg_strncasecmp(line, "Retry-After", 11) == 0)
		slot->retry_after_ms = parse_retry_after(value);
	else if (name_len == 4 && pg_strncasecmp(line, "ETag", 4) == 0)
		replace_string(&slot->etag, value);
	else if (name_len == 8 && pg_strncasecmp(line, "Location", 8) == 0)
		replace_string(&slot->location, value);
	return len;
}

/* ------------------------------------------------------------------------
 * Engine life cycle
 */

void
http_engine_init(void)
{
	CURLcode	rc;

	if (engine_ready)
		return;
	/* Initialising in the postmaster would hand its state to every child. */
	if (!IsUnderPostmaster && MyProcPid == PostmasterPid)
		elog(ERROR, "xprov: the HTTP engine cannot run in the postmaster");

	rc = curl_global_init(CURL_GLOBAL_DEFAULT);
	if (rc != CURLE_OK)
		ereport(ERROR,
				(errcode(ERRCODE_SYSTEM_ERROR),
				 errmsg("could not initialize libcurl: %s", curl_easy_strerror(rc))));
	multi = curl_multi_init();
	if (multi == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not create a libcurl multi handle")));
	curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, socket_callback);
	curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, timer_callback);
	/* Admission (per connector) is the caller's; no per-host limit here. */
	curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, (long) HTTP_MAX_CONNECTS);
	engine_ready = true;
}

static void
free_wait_set(void)
{
	if (wait_set != NULL)
		FreeWaitEventSet(wait_set);
	wait_set = NULL;
	if (wait_events != NULL)
		pfree(wait_events);
	wait_events = NULL;
	wait_events_len = 0;
}

void
http_engine_shutdown(void)
{
	if (!engine_ready)
		return;
	http_engine_abandon_all();
	while (free_slots != NULL)
	{
		EasySlot   *slot = free_slots;

		free_slots = slot->next;
		curl_easy_cleanup(slot->easy);
		free(slot);
	}
	curl_multi_cleanup(multi);
	multi = NULL;
	free(sockets);
	sockets = NULL;
	n_sockets = sockets_cap = 0;
	free_wait_set();
	timer_deadline_ms = -1;
	curl_global_cleanup();
	engine_ready = false;
}

/* ------------------------------------------------------------------------
 * Slots
 */

static void
slot_clear_buffers(EasySlot *slot)
{
	free(slot->body);
	slot->body = NULL;
	slot->body_len = slot->body_cap = 0;
	slot->body_truncated = false;
	slot->out_of_memory = false;
	forget_headers(slot);
	curl_slist_free_all(slot->headers);
	slot->headers = NULL;
	slot->errbuf[0] = '\0';
}

static EasySlot *
slot_get(void)
{
	EasySlot   *slot = free_slots;

	if (slot != NULL)
	{
		free_slots = slot->next;
		return slot;
	}
	slot = calloc(1, sizeof(EasySlot));
	if (slot == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory")));
	slot->easy = curl_easy_init();
	if (slot->easy == NULL)
	{
		free(slot);
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not create a libcurl easy handle")));
	}
	slot->retry_after_ms = -1;
	return slot;
}

/* Back to the free list; the handle must already be out of the multi. */
static void
slot_put(EasySlot *slot)
{
	slot_clear_buffers(slot);
	curl_easy_reset(slot->easy);
	slot->request = NULL;
	slot->response_cxt = NULL;
	slot->prev = NULL;
	slot->next = free_slots;
	free_slots = slot;
}

static void
slot_link_active(EasySlot *slot)
{
	slot->prev = NULL;
	slot->next = active_slots;
	if (active_slots != NULL)
		active_slots->prev = slot;
	active_slots = slot;
	n_active++;
}

static void
slot_unlink_active(EasySlot *slot)
{
	if (slot->prev != NULL)
		slot->prev->next = slot->next;
	else
		active_slots = slot->next;
	if (slot->next != NULL)
		slot->next->prev = slot->prev;
	n_active--;
}

/* ------------------------------------------------------------------------
 * Starting a request
 */

static void
check_header_value(const char *what, const char *value)
{
	for (const char *c = value; *c; c++)
		if (*c == '\r' || *c == '\n')
			elog(ERROR, "xprov: %s header value contains a line break", what);
}

/* Append "name: value" (or the line as is when value is NULL). */
static bool
add_header(EasySlot *slot, const char *name, const char *value)
{
	char		line[HTTP_HEADER_VALUE_MAX + 64];
	struct curl_slist *list;

	if (value != NULL)
	{
		check_header_value(name, value);
		if (strlen(value) > HTTP_HEADER_VALUE_MAX)
			elog(ERROR, "xprov: %s header value is too long", name);
		snprintf(line, sizeof(line), "%s: %s", name, value);
		list = curl_slist_append(slot->headers, line);
	}
	else
		list = curl_slist_append(slot->headers, name);
	if (list == NULL)
		return false;
	slot->headers = list;
	return true;
}

static bool
build_headers(EasySlot *slot, const HttpRequest *request,
			  const Connector *connector, const char *request_id)
{
	for (int i = 0; i < connector->nheaders; i++)
		if (!add_header(slot, connector->headers[i], NULL))
			return false;
	for (int i = 0; i < request->nextra_headers; i++)
		if (!add_header(slot, request->extra_headers[i], NULL))
			return false;
	return add_header(slot, "X-Request-Id", request_id) &&
		add_header(slot, HTTP_USER_AGENT, NULL) &&
		/* without a type of its own a body would go as a form */
		(request->content_type != NULL ?
		 add_header(slot, "Content-Type", request->content_type) :
		 add_header(slot, "Content-Type:", NULL)) &&
		(request->accept == NULL || add_header(slot, "Accept", request->accept)) &&
		(request->if_match == NULL || add_header(slot, "If-Match", request->if_match)) &&
		/* no 100-continue round trip before bodies */
		add_header(slot, "Expect:", NULL);
}

static void
set_method(CURL *easy, const HttpRequest *request)
{
	const char *method = request->method;
	const char *body = request->body;

	/* a POST always has a body, if only an empty one */
	if (body == NULL && strcmp(method, "POST") == 0)
		body = "";
	if (body != NULL)
	{
		/*
		 * libcurl copies the body, so a transfer never reads memory the
		 * caller may have freed (after an error, say).
		 */
		curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) strlen(body));
		curl_easy_setopt(easy, CURLOPT_COPYPOSTFIELDS, body);
	}

	if (strcmp(method, "HEAD") == 0)
		curl_easy_setopt(easy, CURLOPT_NOBODY, 1L);
	else if (strcmp(method, "GET") == 0 && body == NULL)
		curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L);
	else if (strcmp(method, "POST") != 0)
		curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, method);
}

static void
set_options(EasySlot *slot, const HttpRequest *request, const Connector *connector)
{
	CURL	   *easy = slot->easy;

	curl_easy_setopt(easy, CURLOPT_PRIVATE, slot);
	curl_easy_setopt(easy, CURLOPT_URL, request->url);
	/* No signals: libcurl's resolver must not use SIGALRM in a backend. */
	curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(easy, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);
	/* url_policy_check() refused these already; libcurl refuses them too */
	curl_easy_setopt(easy, CURLOPT_DISALLOW_USERNAME_IN_URL, 1L);
	curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, (long) connector->timeout_ms);
	curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, (long) connector->connect_timeout_ms);
	curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, connector->tls_verify ? 1L : 0L);
	curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, connector->tls_verify ? 2L : 0L);
	curl_easy_setopt(easy, CURLOPT_HTTPHEADER, slot->headers);
	curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, slot->errbuf);
	curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, write_callback);
	curl_easy_setopt(easy, CURLOPT_WRITEDATA, slot);
	curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, header_callback);
	curl_easy_setopt(easy, CURLOPT_HEADERDATA, slot);
	set_method(easy, request);
}

/*
 * Complete a request without sending it.  It still goes through the wait,
 * like any other answer, so that callers have one path for every outcome.
 */
static void
refuse(HttpRequest *request, const char *reason)
{
	HttpResponse *response = &request->response;

	if (n_refused == refused_cap)
	{
		int			cap = refused_cap == 0 ? 16 : refused_cap * 2;

		refused = refused == NULL ?
			MemoryContextAlloc(TopMemoryContext, cap * sizeof(HttpRequest *)) :
			repalloc(refused, cap * sizeof(HttpRequest *));
		refused_cap = cap;
	}
	response->transport_failed = true;
	response->refused = true;
	strlcpy(response->error, reason, sizeof(response->error));
	refused[n_refused++] = request;
}

void
http_engine_start(HttpRequest *request, const Connector *connector,
				  const char *request_id)
{
	EasySlot   *slot;
	CURLMcode	rc;
	char	   *reason;

	http_engine_init();

	memset(&request->response, 0, sizeof(HttpResponse));
	request->response.retry_after_ms = -1;
	request->handle = NULL;

	/*
	 * Checked here, for every request, rather than once per connector: the
	 * setting may have been narrowed (SET, reload) since the connector was
	 * added, and protocols build URLs from the base URL and paths.  Parsed
	 * now, not in a libcurl callback, where nothing may raise.
	 */
	if (url_policy_check(request->url, &reason) != URL_ALLOWED)
	{
		refuse(request, reason);
		pfree(reason);
		return;
	}

	slot = slot_get();
	slot->body_max = (size_t) xprov_max_response_kb * 1024;
	slot->retry_after_ms = -1;
	PG_TRY();
	{
		/* the request must be a palloc'd chunk of its own */
		slot->response_cxt = GetMemoryChunkContext(request);
		if (!build_headers(slot, request, connector, request_id))
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("out of memory")));
	}
	PG_CATCH();
	{
		slot_put(slot);
		PG_RE_THROW();
	}
	PG_END_TRY();

	set_options(slot, request, connector);
	rc = curl_multi_add_handle(multi, slot->easy);
	if (rc != CURLM_OK)
	{
		slot_put(slot);
		ereport(ERROR,
				(errcode(ERRCODE_SYSTEM_ERROR),
				 errmsg("could not start an HTTP request: %s", curl_multi_strerror(rc))));
	}
	slot->request = request;
	request->handle = slot;
	slot_link_active(slot);
}

/* ------------------------------------------------------------------------
 * Completion
 */

/*
 * "What libcurl says[: what the system said] (libcurl's details)", e.g.
 * "Couldn't connect to server: Connection refused (Failed to connect to
 * 127.0.0.1 port 1 after 0 ms: ...)".  libcurl's messages name hosts and
 * ports, never header values.
 */
static void
describe_transport_error(HttpResponse *response, CURL *easy, CURLcode code,
						 const char *errbuf)
{
	long		os_errno = 0;
	char		os_error[128] = "";
	size_t		len = strlen(errbuf);

	response->transport_failed = true;
	response->connect_failed = (code == CURLE_COULDNT_CONNECT ||
								code == CURLE_COULDNT_RESOLVE_HOST ||
								code == CURLE_COULDNT_RESOLVE_PROXY);
	response->timed_out = (code == CURLE_OPERATION_TIMEDOUT);

	curl_easy_getinfo(easy, CURLINFO_OS_ERRNO, &os_errno);
	if (os_errno != 0 && code != CURLE_OPERATION_TIMEDOUT)
		snprintf(os_error, sizeof(os_error), ": %s", strerror((int) os_errno));
	while (len > 0 && errbuf[len - 1] == '\n')
		len--;
	if (len > 0)
		snprintf(response->error, sizeof(response->error), "%s%s (%.*s)",
				 curl_easy_strerror(code), os_error, (int) len, errbuf);
	else
		snprintf(response->error, sizeof(response->error), "%s%s",
				 curl_easy_strerror(code), os_error);
}

/* Fill the request's response from a finished slot; never raises. */
static void
fill_response(EasySlot *slot, CURLcode code)
{
	HttpResponse *response = &slot->request->response;
	MemoryContext cxt = slot->response_cxt;
	double		total = 0;

	curl_easy_getinfo(slot->easy, CURLINFO_RESPONSE_CODE, &response->status);
	curl_easy_getinfo(slot->easy, CURLINFO_TOTAL_TIME, &total);
	response->elapsed_ms = total * 1000.0;
	response->retry_after_ms = slot->retry_after_ms;
	response->body_truncated = slot->body_truncated;

	if (slot->out_of_memory)
	{
		response->transport_failed = true;
		strlcpy(response->error, "out of memory reading the response", sizeof(response->error));
	}
	else if (code != CURLE_OK)
		describe_transport_error(response, slot->easy, code, slot->errbuf);

	if (slot->body_len > 0)
	{
		response->body = copy_bytes_no_oom(cxt, slot->body, slot->body_len);
		response->body_len = response->body ? slot->body_len : 0;
		if (response->body == NULL)
			response->body_truncated = true;
	}
	if (slot->etag != NULL)
		response->etag = copy_bytes_no_oom(cxt, slot->etag, strlen(slot->etag));
	if (slot->location != NULL)
		response->location = copy_bytes_no_oom(cxt, slot->location, strlen(slot->location));
}

static HttpRequest *
finish_transfer(CURL *easy, CURLcode code)
{
	EasySlot   *slot = NULL;
	HttpRequest *request;

	curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **) &slot);
	curl_multi_remove_handle(multi, easy);
	slot_unlink_active(slot);
	request = slot->request;
	fill_response(slot, code);
	request->handle = NULL;
	slot_put(slot);
	return request;
}

/* Collect up to max_done finished transfers, refused requests first. */
static int
collect_done(HttpRequest **done, int max_done)
{
	int			n = 0;
	int			taken = Min(n_refused, max_done);

	if (taken > 0)
	{
		memcpy(done, refused, taken * sizeof(HttpRequest *));
		memmove(refused, refused + taken, (n_refused - taken) * sizeof(HttpRequest *));
		n_refused -= taken;
		n = taken;
	}
	while (n < max_done)
	{
		int			left = 0;
		CURLMsg    *msg = curl_multi_info_read(multi, &left);

		if (msg == NULL)
			break;
		if (msg->msg == CURLMSG_DONE)
		{
			/* read everything from msg before the handle is removed */
			CURL	   *easy = msg->easy_handle;
			CURLcode	code = msg->data.result;

			done[n++] = finish_transfer(easy, code);
		}
	}
	return n;
}

/* ------------------------------------------------------------------------
 * Waiting
 */

static uint32
socket_events(int what)
{
	uint32		events = 0;

	if (what & CURL_POLL_IN)
		events |= WL_SOCKET_READABLE;
	if (what & CURL_POLL_OUT)
		events |= WL_SOCKET_WRITEABLE;
	return events;
}

static void
build_wait_set(void)
{
	free_wait_set();
	wait_set = CreateWaitEventSet(TopMemoryContext, n_sockets + 2);
	wait_events_len = n_sockets + 2;
	wait_events = MemoryContextAlloc(TopMemoryContext, sizeof(WaitEvent) * wait_events_len);
	AddWaitEventToSet(wait_set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	if (IsUnderPostmaster)
		AddWaitEventToSet(wait_set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	for (int i = 0; i < n_sockets; i++)
	{
		sockets[i].pos = AddWaitEventToSet(wait_set, socket_events(sockets[i].what),
										   sockets[i].fd, NULL, NULL);
		sockets[i].modified = false;
	}
	sockets_added_or_removed = false;
	sockets_modified = false;
}

static void
modify_wait_set(void)
{
	for (int i = 0; i < n_sockets; i++)
	{
		if (!sockets[i].modified)
			continue;
		sockets[i].modified = false;
		ModifyWaitEvent(wait_set, sockets[i].pos, socket_events(sockets[i].what), NULL);
	}
	sockets_modified = false;
}

/*
 * Bring the wait set in line with the sockets libcurl wants watched.  If
 * that fails halfway, the set is dropped, so the next call starts afresh
 * instead of waiting on a set that no longer matches.
 */
static void
sync_wait_set(void)
{
	PG_TRY();
	{
		if (wait_set == NULL || sockets_added_or_removed)
			build_wait_set();
		else if (sockets_modified)
			modify_wait_set();
	}
	PG_CATCH();
	{
		free_wait_set();
		PG_RE_THROW();
	}
	PG_END_TRY();
}

static void
run_timer_if_due(void)
{
	int			running;

	if (timer_deadline_ms < 0 || monotonic_ms() < timer_deadline_ms)
		return;
	timer_deadline_ms = -1;		/* the action may set a new one */
	curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
}

static long
sleep_ms(long timeout_ms)
{
	long		ms = (timeout_ms < 0 || timeout_ms > HTTP_MAX_WAIT_MS) ? HTTP_MAX_WAIT_MS : timeout_ms;

	if (timer_deadline_ms >= 0)
	{
		int64		until_timer = timer_deadline_ms - monotonic_ms();

		ms = Min(ms, Max(until_timer, 0));
	}
	return ms;
}

static void
dispatch_socket_events(int nevents, bool *latch_set)
{
	for (int i = 0; i < nevents; i++)
	{
		WaitEvent  *ev = &wait_events[i];
		int			mask = 0;
		int			running;

		if (ev->events & WL_LATCH_SET)
		{
			*latch_set = true;
			continue;
		}
		if (ev->events & WL_SOCKET_READABLE)
			mask |= CURL_CSELECT_IN;
		if (ev->events & WL_SOCKET_WRITEABLE)
			mask |= CURL_CSELECT_OUT;
		if (mask != 0)
			curl_multi_socket_action(multi, ev->fd, mask, &running);
	}
}

int
http_engine_wait(long timeout_ms, HttpRequest **done, int max_done,
				 bool *latch_set)
{
	int			n;
	int			nevents;

	*latch_set = false;
	http_engine_init();

	/* Leftovers of the last call, and transfers libcurl finished already. */
	run_timer_if_due();
	n = collect_done(done, max_done);
	if (n > 0)
		return n;

	sync_wait_set();
	nevents = WaitEventSetWait(wait_set, sleep_ms(timeout_ms), wait_events,
							   wait_events_len, PG_WAIT_EXTENSION);
	dispatch_socket_events(nevents, latch_set);
	run_timer_if_due();
	return collect_done(done, max_done);
}

/*
 * Send one request and wait for its answer alone; for callers with nothing
 * else in flight (SQL functions, the reconciler).
 */
void
http_engine_exchange(HttpRequest *request, const struct Connector *connector,
					 const char *request_id)
{
	http_engine_start(request, connector, request_id);
	http_engine_await(request);
}

/*
 * Wait for one request started earlier, the only one in flight, in short
 * slices that notice signals.
 */
void
http_engine_await(HttpRequest *request)
{
	for (;;)
	{
		HttpRequest *done = NULL;
		bool		latch_set;
		int			n = http_engine_wait(EXCHANGE_SLICE_MS, &done, 1, &latch_set);

		if (latch_set)
			ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (n > 0)
		{
			Assert(done == request);
			return;
		}
	}
}

int
http_engine_in_flight(void)
{
	return n_active + n_refused;
}

void
http_engine_abandon_all(void)
{
	n_refused = 0;
	if (!engine_ready)
		return;

	/* The requests may be freed already: touch only our own slots. */
	while (active_slots != NULL)
	{
		EasySlot   *slot = active_slots;

		curl_multi_remove_handle(multi, slot->easy);
		slot_unlink_active(slot);
		slot_put(slot);
	}
}
