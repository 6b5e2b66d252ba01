/*-------------------------------------------------------------------------
 *
 * http.h
 *	  The worker's HTTP engine: libcurl multi, driven from the worker's
 *	  single wait point.
 *
 * Requests run concurrently over kept-alive connections.  http_engine_wait()
 * is the only place the worker sleeps: it waits on the process latch, the
 * postmaster's death and every socket libcurl asks for, so signals and
 * enqueue wake-ups are seen at once while requests are in flight.  No
 * PostgreSQL error can be raised inside a libcurl callback: callbacks only
 * fill malloc'd buffers; results are copied into palloc'd memory after
 * libcurl has returned.
 *
 *-------------------------------------------------------------------------
 */
#ifndef HTTP_H
#define HTTP_H

struct Connector;

typedef struct HttpResponse
{
	long		status;			/* HTTP status; 0 when there was no response */
	bool		transport_failed;	/* no complete response (see flags) */
	bool		connect_failed; /* could not resolve or connect: the target
								 * is down or misconfigured */
	bool		timed_out;
	bool		refused;		/* never sent: the URL breaks the URL policy
								 * (url_policy.h); error says why */
	char		error[256];		/* transport error, "" if none */
	char	   *body;			/* NUL-terminated, or NULL if empty */
	size_t		body_len;
	bool		body_truncated; /* body exceeded xprov.max_response_size */
	int			retry_after_ms; /* Retry-After, -1 if absent or unparsable */
	char	   *etag;			/* ETag header, or NULL */
	char	   *location;		/* Location header, or NULL */
	double		elapsed_ms;
} HttpResponse;

typedef struct HttpRequest
{
	/* set by the caller, in the memory context the response is copied to */
	const char *method;			/* "GET", "POST", "PUT", "PATCH", "DELETE" */
	char	   *url;
	char	   *body;			/* NULL: none */
	const char *content_type;	/* of the body */
	const char *accept;			/* Accept header, or NULL */
	char	   *if_match;		/* If-Match header, or NULL */
	char	  **extra_headers;	/* more "Name: value" lines, or NULL */
	int			nextra_headers;
	void	   *owner;			/* caller's (the WorkOp) */

	/* set by the engine once the exchange is over */
	HttpResponse response;

	/* engine's */
	void	   *handle;
} HttpRequest;

/* Once per process, in the worker (not the postmaster). */
extern void http_engine_init(void);
extern void http_engine_shutdown(void);

/*
 * Start a request; never blocks.  Headers of the connector (auth) are sent,
 * plus "X-Request-Id: request_id" and "User-Agent: xprov/<version>".
 * The response is palloc'd in the memory context that holds `request`.
 * A URL the URL policy refuses (its host not in xprov.allowed_hosts, say)
 * is not sent: the request completes at the next wait with `refused` and
 * `transport_failed` set and the reason in `error`.
 */
extern void http_engine_start(HttpRequest *request, const struct Connector *connector,
							  const char *request_id);

/*
 * Sleep until a request completes, the latch is set, or timeout_ms passes;
 * then drive the transfers.  Completed requests are stored in done[] (at
 * most max_done; the rest are returned by the next call, which then does
 * not sleep).  Sets *latch_set when the process latch was set; the caller
 * resets it.  Does not sleep at all when timeout_ms is 0.
 */
extern int	http_engine_wait(long timeout_ms, HttpRequest **done, int max_done,
							 bool *latch_set);

/* Start a request and sleep until it is answered (signals still seen). */
extern void http_engine_exchange(HttpRequest *request, const struct Connector *connector,
								 const char *request_id);
/* Sleep until a request, the only one in flight, is answered. */
extern void http_engine_await(HttpRequest *request);

extern int	http_engine_in_flight(void);

/* Abort every transfer (shutdown); their requests are forgotten. */
extern void http_engine_abandon_all(void);

#endif							/* HTTP_H */
