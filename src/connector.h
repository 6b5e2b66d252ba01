/*-------------------------------------------------------------------------
 *
 * connector.h
 *	  A connector's settings as the background worker uses them.
 *
 * connector.c parses xprov.connector.config (JSON text) into a Connector,
 * which the worker caches and refreshes.  The HTTP engine (http.c) reads
 * the transport settings, protocols (scim2.c, rest.c) the protocol ones,
 * and the dispatcher (dispatch.c) the admission ones.
 *
 * config keys (all optional):
 *	auth				{"type": "bearer", "token": "..."}
 *						{"type": "basic", "username": "...", "password": "..."}
 *						{"type": "header", "header_name": "X-Api-Key", "value": "..."}
 *	timeout_ms			total time of one HTTP exchange (default xprov.http_timeout)
 *	connect_timeout_ms	(default xprov.http_connect_timeout)
 *	max_in_flight		concurrent requests to this connector (default xprov.max_in_flight)
 *	rate_limit			requests per second, 0 = unlimited (default 0)
 *	tls_verify			verify the server certificate (default true)
 *	endpoints			{"user": "/Users", "group": "/Groups", ...}: path per
 *						object class, appended to base_url
 *	match_attribute		scim2: attribute a create correlates on (default
 *						"userName" for users, "displayName" for groups)
 *	update_method		scim2: "patch" (default) or "put"
 *
 *-------------------------------------------------------------------------
 */
#ifndef CONNECTOR_H
#define CONNECTOR_H

#include "datatype/timestamp.h"
#include "utils/uuid.h"

#include "work_op.h"

typedef enum ConnectorKind
{
	CONNECTOR_NOOP,
	CONNECTOR_SCIM2,
	CONNECTOR_REST,
	CONNECTOR_EXTERNAL
} ConnectorKind;

typedef struct ConnectorEndpoint
{
	char	   *object_class;
	char	   *path;			/* begins with '/' */
} ConnectorEndpoint;

typedef struct Connector
{
	pg_uuid_t	id;
	char		id_text[UUID_TEXT_LEN];
	char	   *name;
	ConnectorKind kind;
	char	   *base_url;		/* no trailing '/' */
	bool		enabled;

	/* transport */
	char	  **headers;		/* "Name: value", including auth */
	int			nheaders;
	char	  **secrets;		/* the credentials as they could be echoed */
	int			nsecrets;
	int			timeout_ms;
	int			connect_timeout_ms;
	bool		tls_verify;

	/* admission */
	int			max_in_flight;
	double		rate_limit;		/* requests per second; 0 = unlimited */

	/* protocol */
	ConnectorEndpoint *endpoints;
	int			nendpoints;
	char	   *match_attribute;	/* NULL: per object class default */
	bool		update_with_put;

	MemoryContext cxt;			/* owns everything above */
	TimestampTz loaded_at;
} Connector;

/*
 * Parse a connector row; returns NULL and sets *error (palloc'd) when the
 * config is unusable.  Allocates in a new child context of `parent`.
 */
extern Connector *connector_parse(MemoryContext parent, const pg_uuid_t *id,
								  const char *name, const char *kind,
								  const char *base_url, const char *config_json,
								  bool enabled, char **error);
extern void connector_free(Connector *connector);

/* Path for an object class: configured, or /Users, /Groups, /<class>. */
extern const char *connector_endpoint(const Connector *connector,
									  const char *object_class);

/*
 * text with the connector's credentials replaced by "[redacted]" (a copy in
 * the current memory context, or text itself when it holds none): for what a
 * target answered, before xprov records or logs it.
 */
extern char *connector_redact(const Connector *connector, char *text);

#endif							/* CONNECTOR_H */
