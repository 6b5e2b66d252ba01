/*-------------------------------------------------------------------------
 *
 * connector.c
 *	  Parsing a connector's row and config JSON into a Connector.
 *
 * The config is parsed with cJSON, which allocates with malloc: the tree is
 * freed on every path, errors included, and whatever the Connector keeps is
 * copied into the connector's own memory context.  Authentication becomes
 * ready-made header lines, so the HTTP engine never sees credentials as
 * anything but opaque headers.
 *
 * A config that could smuggle extra header lines into a request (CR or LF
 * in a header name or value) is rejected, and no error message ever quotes
 * a value of the auth object: they are secrets.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>

#include "common/base64.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "connector.h"
#include "text_util.h"
#include "url_policy.h"
#include "xprov.h"

#define MAX_TIMEOUT_MS (3600 * 1000)

/* ------------------------------------------------------------------------
 * Small validators.  Each returns NULL when fine, else an error message
 * (a literal or palloc'd) that names the key but never quotes its value.
 */

/* RFC 9110 token characters: what a header name may consist of. */
static bool
is_token_char(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		(c >= '0' && c <= '9') || strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static bool
valid_header_name(const char *name)
{
	if (*name == '\0')
		return false;
	for (const unsigned char *c = (const unsigned char *) name; *c; c++)
		if (!is_token_char(*c))
			return false;
	return true;
}

/* Printable, tab allowed; in particular no CR or LF. */
static bool
valid_header_value(const char *value)
{
	for (const unsigned char *c = (const unsigned char *) value; *c; c++)
		if ((*c < 0x20 && *c != '\t') || *c == 0x7f)
			return false;
	return true;
}

static const char *
get_string(const cJSON *object, const char *key, bool required, const char **out)
{
	const cJSON *item = cJSON_GetObjectItemCaseSensitive(object, key);

	*out = NULL;
	if (item == NULL || cJSON_IsNull(item))
		return required ? psprintf("%s is missing", key) : NULL;
	if (!cJSON_IsString(item) || item->valuestring == NULL)
		return psprintf("%s must be a string", key);
	*out = item->valuestring;
	return NULL;
}

/* A positive integer no larger than max; *out keeps its default if absent. */
static const char *
get_positive_int(const cJSON *config, const char *key, int max, int *out)
{
	const cJSON *item = cJSON_GetObjectItemCaseSensitive(config, key);
	double		d;

	if (item == NULL || cJSON_IsNull(item))
		return NULL;
	if (!cJSON_IsNumber(item))
		return psprintf("%s must be a number", key);
	d = item->valuedouble;
	if (d != floor(d) || d < 1 || d > max)
		return psprintf("%s must be an integer between 1 and %d", key, max);
	*out = (int) d;
	return NULL;
}

/* ------------------------------------------------------------------------
 * Authentication
 */

static char *
basic_credentials(const char *username, const char *password)
{
	char	   *plain = psprintf("%s:%s", username, password);
	int			plain_len = strlen(plain);
	int			enc_len = pg_b64_enc_len(plain_len);
	char	   *encoded = palloc(enc_len + 1);
	int			n = pg_b64_encode(plain, plain_len, encoded, enc_len);

	explicit_bzero(plain, plain_len);
	pfree(plain);
	if (n < 0)
		elog(ERROR, "xprov: could not encode basic credentials");
	encoded[n] = '\0';
	return encoded;
}

/*
 * A credential a target could echo into an error body, which xprov would
 * then record where tenant roles read it.  Values shorter than
 * MIN_REDACTED_LEN are not searched for: they would mangle every message
 * and guard nothing.
 */
#define MIN_REDACTED_LEN 4

static void
note_secret(Connector *connector, const char *value)
{
	if (strlen(value) < MIN_REDACTED_LEN)
		return;
	connector->secrets = connector->nsecrets == 0 ?
		palloc(sizeof(char *) * 2) :
		repalloc(connector->secrets, sizeof(char *) * (connector->nsecrets + 1));
	connector->secrets[connector->nsecrets++] = pstrdup(value);
}

/*
 * Headers a credential must not replace: they frame the message, route it,
 * or carry xprov's request id.  A Content-Length or Host of the caller's
 * choosing would desynchronise a kept-alive connection or send the request
 * to another virtual host than xprov.allowed_hosts allowed.
 */
static bool
is_reserved_header(const char *name)
{
	static const char *const reserved[] = {
		"Host", "Content-Length", "Transfer-Encoding", "Connection", "Keep-Alive",
		"Proxy-Connection", "TE", "Trailer", "Upgrade", "Expect", "Content-Type",
		"Accept", "If-Match", "X-Request-Id"
	};

	for (int i = 0; i < lengthof(reserved); i++)
		if (pg_strcasecmp(name, reserved[i]) == 0)
			return true;
	return false;
}

static const char *
auth_bearer(Connector *connector, const cJSON *auth, char **header)
{
	const char *token;
	const char *err = get_string(auth, "token", true, &token);

	if (err)
		return psprintf("auth.%s", err);
	if (*token == '\0' || !valid_header_value(token))
		return "auth.token must be a non-empty string without control characters";
	*header = psprintf("Authorization: Bearer %s", token);
	note_secret(connector, token);
	return NULL;
}

static const char *
auth_basic(Connector *connector, const cJSON *auth, char **header)
{
	const char *username;
	const char *password;
	const char *err;
	char	   *encoded;

	if ((err = get_string(auth, "username", true, &username)) != NULL ||
		(err = get_string(auth, "password", true, &password)) != NULL)
		return psprintf("auth.%s", err);
	/* RFC 7617: the user-id cannot contain a colon */
	if (*username == '\0' || strchr(username, ':') != NULL || !valid_header_value(username))
		return "auth.username must be a non-empty string without colons or control characters";
	if (!valid_header_value(password))
		return "auth.password must not contain control characters";
	encoded = basic_credentials(username, password);
	*header = psprintf("Authorization: Basic %s", encoded);
	note_secret(connector, encoded);
	note_secret(connector, password);
	pfree(encoded);
	return NULL;
}

static const char *
auth_header(Connector *connector, const cJSON *auth, char **header)
{
	const char *name;
	const char *value;
	const char *err;

	/* "header" is accepted too: xprov.mask_secrets() treats it as a name */
	if ((err = get_string(auth, "header_name", false, &name)) != NULL)
		return psprintf("auth.%s", err);
	if (name == NULL && (err = get_string(auth, "header", true, &name)) != NULL)
		return "auth.header_name is missing";
	if (!valid_header_name(name))
		return "auth.header_name must be an HTTP header name (letters, digits and !#$%&'*+-.^_`|~; no colon, space, CR or LF)";
	if (is_reserved_header(name))
		return "auth.header_name names a header that xprov or HTTP itself sets (framing, routing or the request id)";
	if ((err = get_string(auth, "value", true, &value)) != NULL)
		return psprintf("auth.%s", err);
	if (!valid_header_value(value))
		return "auth.value must not contain CR, LF or other control characters";
	*header = psprintf("%s: %s", name, value);
	note_secret(connector, value);
	return NULL;
}

static const char *
parse_auth(Connector *connector, const cJSON *config)
{
	const cJSON *auth = cJSON_GetObjectItemCaseSensitive(config, "auth");
	const char *type;
	const char *err;
	char	   *header = NULL;

	if (auth == NULL || cJSON_IsNull(auth))
		return NULL;
	if (!cJSON_IsObject(auth))
		return "auth must be a JSON object";
	if ((err = get_string(auth, "type", true, &type)) != NULL)
		return psprintf("auth.%s", err);

	if (strcmp(type, "bearer") == 0)
		err = auth_bearer(connector, auth, &header);
	else if (strcmp(type, "basic") == 0)
		err = auth_basic(connector, auth, &header);
	else if (strcmp(type, "header") == 0)
		err = auth_header(connector, auth, &header);
	else
		err = "auth.type must be one of bearer, basic, header";
	if (err)
		return err;

	connector->headers = palloc(sizeof(char *));
	connector->headers[0] = header;
	connector->nheaders = 1;
	return NULL;
}

/* ------------------------------------------------------------------------
 * Other settings
 */

static const char *
parse_endpoints(Connector *connector, const cJSON *config)
{
	const cJSON *endpoints = cJSON_GetObjectItemCaseSensitive(config, "endpoints");
	const cJSON *item;
	int			n = 0;

	if (endpoints == NULL || cJSON_IsNull(endpoints))
		return NULL;
	if (!cJSON_IsObject(endpoints))
		return "endpoints must be a JSON object mapping object classes to paths";

	connector->endpoints = palloc0(sizeof(ConnectorEndpoint) * Max(cJSON_GetArraySize(endpoints), 1));
	cJSON_ArrayForEach(item, endpoints)
	{
		if (!cJSON_IsString(item) || item->valuestring[0] != '/')
			return psprintf("endpoints.%s must be a path beginning with '/'", item->string);
		if (!valid_header_value(item->valuestring) || strpbrk(item->valuestring, " ?#") != NULL)
			return psprintf("endpoints.%s must not contain spaces, '?', '#' or control characters",
							item->string);
		connector->endpoints[n].object_class = pstrdup(item->string);
		connector->endpoints[n].path = pstrdup(item->valuestring);
		n++;
	}
	connector->nendpoints = n;
	return NULL;
}

static const char *
parse_protocol_settings(Connector *connector, const cJSON *config)
{
	const char *s;
	const char *err;

	if ((err = get_string(config, "match_attribute", false, &s)) != NULL)
		return err;
	if (s != NULL)
	{
		if (*s == '\0' || !valid_header_value(s))
			return "match_attribute must be a non-empty attribute name";
		connector->match_attribute = pstrdup(s);
	}
	if ((err = get_string(config, "update_method", false, &s)) != NULL)
		return err;
	if (s != NULL)
	{
		if (strcmp(s, "put") == 0)
			connector->update_with_put = true;
		else if (strcmp(s, "patch") != 0)
			return "update_method must be \"patch\" or \"put\"";
	}
	return parse_endpoints(connector, config);
}

static const char *
parse_transport_settings(Connector *connector, const cJSON *config)
{
	const cJSON *item;
	const char *err;

	connector->timeout_ms = xprov_http_timeout_ms;
	connector->connect_timeout_ms = xprov_http_connect_timeout_ms;
	connector->max_in_flight = xprov_max_in_flight;
	connector->tls_verify = true;

	if ((err = get_positive_int(config, "timeout_ms", MAX_TIMEOUT_MS, &connector->timeout_ms)) != NULL ||
		(err = get_positive_int(config, "connect_timeout_ms", MAX_TIMEOUT_MS,
								&connector->connect_timeout_ms)) != NULL ||
		(err = get_positive_int(config, "max_in_flight", 1024, &connector->max_in_flight)) != NULL)
		return err;

	item = cJSON_GetObjectItemCaseSensitive(config, "rate_limit");
	if (item != NULL && !cJSON_IsNull(item))
	{
		if (!cJSON_IsNumber(item) || !(item->valuedouble >= 0) || isinf(item->valuedouble))
			return "rate_limit must be a number of requests per second, 0 for unlimited";
		connector->rate_limit = item->valuedouble;
	}

	item = cJSON_GetObjectItemCaseSensitive(config, "tls_verify");
	if (item != NULL && !cJSON_IsNull(item))
	{
		if (!cJSON_IsBool(item))
			return "tls_verify must be true or false";
		connector->tls_verify = cJSON_IsTrue(item);
	}
	return NULL;
}

static const char *
parse_config(Connector *connector, const char *config_json)
{
	cJSON	   *config = cJSON_Parse(config_json ? config_json : "{}");
	const char *err = NULL;

	if (config == NULL)
		return "config is not valid JSON";

	/* cJSON's tree is malloc'd: free it even when palloc fails below */
	PG_TRY();
	{
		if (!cJSON_IsObject(config))
			err = "config must be a JSON object";
		if (err == NULL)
			err = parse_transport_settings(connector, config);
		if (err == NULL)
			err = parse_protocol_settings(connector, config);
		if (err == NULL)
			err = parse_auth(connector, config);
	}
	PG_FINALLY();
	{
		cJSON_Delete(config);
	}
	PG_END_TRY();
	return err;
}

/* ------------------------------------------------------------------------
 * Row fields
 */

static const char *
parse_kind(Connector *connector, const char *kind)
{
	if (kind == NULL)
		return "kind is missing";
	if (strcmp(kind, "scim2") == 0)
		connector->kind = CONNECTOR_SCIM2;
	else if (strcmp(kind, "rest") == 0)
		connector->kind = CONNECTOR_REST;
	else if (strcmp(kind, "noop") == 0)
		connector->kind = CONNECTOR_NOOP;
	else if (strcmp(kind, "external") == 0)
		connector->kind = CONNECTOR_EXTERNAL;
	else
		return "kind must be one of scim2, rest, noop, external";
	return NULL;
}

static const char *
parse_base_url(Connector *connector, const char *base_url)
{
	bool		needs_url = (connector->kind == CONNECTOR_SCIM2 ||
							 connector->kind == CONNECTOR_REST);
	size_t		len;

	if (base_url == NULL)
		return needs_url ? "base_url is missing" : NULL;
	if (pg_strncasecmp(base_url, "http://", 7) != 0 &&
		pg_strncasecmp(base_url, "https://", 8) != 0)
		return "base_url must begin with http:// or https://";
	if (!valid_header_value(base_url) || strchr(base_url, ' ') != NULL)
		return "base_url must not contain spaces or control characters";

	/* paths are appended with their own leading '/' */
	len = strlen(base_url);
	while (len > 0 && base_url[len - 1] == '/')
		len--;
	connector->base_url = pnstrdup(base_url, len);
	return NULL;
}

static void
set_id(Connector *connector, const pg_uuid_t *id)
{
	if (id == NULL)
		return;
	connector->id = *id;
	strlcpy(connector->id_text,
			uuid_text(id),
			sizeof(connector->id_text));
}

Connector *
connector_parse(MemoryContext parent, const pg_uuid_t *id,
				const char *name, const char *kind,
				const char *base_url, const char *config_json,
				bool enabled, char **error)
{
	MemoryContext cxt = AllocSetContextCreate(parent, "xprov connector",
											  ALLOCSET_SMALL_SIZES);
	MemoryContext caller = MemoryContextSwitchTo(cxt);
	Connector  *connector = palloc0(sizeof(Connector));
	const char *err;

	connector->cxt = cxt;
	connector->name = pstrdup(name ? name : "");
	connector->enabled = enabled;
	connector->loaded_at = GetCurrentTimestamp();
	set_id(connector, id);

	err = parse_kind(connector, kind);
	if (err == NULL)
		err = parse_base_url(connector, base_url);
	if (err == NULL)
		err = parse_config(connector, config_json);

	MemoryContextSwitchTo(caller);
	*error = NULL;
	if (err != NULL)
	{
		*error = pstrdup(err);
		MemoryContextDelete(cxt);
		return NULL;
	}
	return connector;
}

void
connector_free(Connector *connector)
{
	if (connector != NULL)
		MemoryContextDelete(connector->cxt);
}

/*
 * The configured path, else the conventional one.  A default for an
 * unconfigured class is built in the current memory context.
 */
const char *
connector_endpoint(const Connector *connector, const char *object_class)
{
	for (int i = 0; i < connector->nendpoints; i++)
		if (pg_strcasecmp(connector->endpoints[i].object_class, object_class) == 0)
			return connector->endpoints[i].path;
	if (pg_strcasecmp(object_class, "user") == 0)
		return "/Users";
	if (pg_strcasecmp(object_class, "group") == 0)
		return "/Groups";
	{
		StringInfoData path;

		/* one segment, whatever the class: "a/../b" or "Users?x" cannot reach elsewhere */
		initStringInfo(&path);
		appendStringInfoChar(&path, '/');
		url_append_encoded(&path, object_class);
		return path.data;
	}
}

/*
 * text with every credential of the connector in it replaced: a copy in the
 * current memory context, or text itself when it holds none.
 */
char *
connector_redact(const Connector *connector, char *text)
{
	StringInfoData buf;
	char	   *rest = text;
	bool		found = false;

	if (connector == NULL || text == NULL || connector->nsecrets == 0)
		return text;
	initStringInfo(&buf);
	while (*rest != '\0')
	{
		int			matched = 0;

		for (int i = 0; i < connector->nsecrets && matched == 0; i++)
		{
			size_t		len = strlen(connector->secrets[i]);

			if (strncmp(rest, connector->secrets[i], len) == 0)
				matched = (int) len;
		}
		if (matched > 0)
		{
			appendStringInfoString(&buf, "[redacted]");
			rest += matched;
			found = true;
		}
		else
			appendStringInfoChar(&buf, *rest++);
	}
	if (!found)
	{
		pfree(buf.data);
		return text;
	}
	return buf.data;
}
