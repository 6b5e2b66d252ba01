/*-------------------------------------------------------------------------
 *
 * url_policy.c
 *	  The URL rules of connectors and xprov.allowed_hosts.
 *
 * xprov.allowed_hosts is a comma-separated list of host patterns: an exact
 * host name or IP literal ("scim.example.com", "127.0.0.1", "[::1]"), or
 * "*." and a domain name for any subdomain of it (not the domain itself),
 * each optionally with ":port".  Empty (the default) allows every host.
 * Host names compare case-insensitively, with a trailing dot ignored.
 *
 * Patterns are read with libcurl's URL parser too, as "http://PATTERN/",
 * so that both sides of a comparison are in the form libcurl normalises
 * hosts to (IPv4 shorthands such as 127.1 become 127.0.0.1, IPv6 literals
 * keep their brackets).  The list is parsed again for every check: it is
 * short, and a cache would have to follow SET, RESET and reloads.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>

#include "fmgr.h"
#include "nodes/pg_list.h"
#include "utils/builtins.h"

#include "url_policy.h"
#include "xprov.h"

PG_FUNCTION_INFO_V1(xprov_url_allowed);
PG_FUNCTION_INFO_V1(xprov_check_base_url);

#define PATTERN_MAX_LEN		300
#define ALLOWED_HOSTS_GUC	"xprov.allowed_hosts"

typedef struct HostPattern
{
	bool		wildcard;		/* any subdomain of host, not host itself */
	char	   *host;			/* lower case, no trailing dot */
	int			port;			/* -1: any port */
} HostPattern;

/* A part of a parsed URL, palloc'd, or NULL when the URL has none. */
static char *
url_part(CURLU *url, CURLUPart part, unsigned int flags)
{
	char	   *value = NULL;
	char	   *copy;

	if (curl_url_get(url, part, &value, flags) != CURLUE_OK || value == NULL)
		return NULL;
	copy = pstrdup(value);
	curl_free(value);
	return copy;
}

static CURLU *
new_url_handle(void)
{
	CURLU	   *url = curl_url();

	if (url == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory")));
	return url;
}

/* Lower case, one trailing dot dropped (an absolute name is the same host). */
static void
normalize_host(char *host)
{
	size_t		len;

	for (char *c = host; *c; c++)
		*c = pg_ascii_tolower((unsigned char) *c);
	len = strlen(host);
	if (len > 1 && host[len - 1] == '.')
		host[len - 1] = '\0';
}

static bool
is_numeric_host(const char *host)
{
	for (const char *c = host; *c; c++)
		if (!((*c >= '0' && *c <= '9') || *c == '.'))
			return false;
	return true;
}

/*
 * One trimmed entry of the list into *pattern; NULL, or the reason it is
 * not a pattern.
 */
static char *
parse_pattern(const char *entry, HostPattern *pattern)
{
	const char *rest = entry;
	CURLU	   *url;
	CURLUcode	rc;
	char	   *host = NULL;
	char	   *port = NULL;
	char	   *path = NULL;
	const char *form = "a host pattern is a host name or IP address (IPv6 in brackets), optionally after \"*.\" and before \":port\"";

	if (strlen(entry) > PATTERN_MAX_LEN)
		return psprintf("entry \"%.40s...\" is longer than %d characters", entry, PATTERN_MAX_LEN);
	pattern->wildcard = false;
	if (strncmp(rest, "*.", 2) == 0)
	{
		pattern->wildcard = true;
		rest += 2;
	}
	/* nothing that would make a URL of more than a host and a port */
	if (*rest == '\0' || strpbrk(rest, "*/?#@\\ \t\r\n") != NULL)
		return psprintf("entry \"%s\" is not a host pattern: %s", entry, form);
	if (pattern->wildcard && *rest == '[')
		return psprintf("entry \"%s\": a wildcard needs a domain name, not an IP address", entry);

	url = new_url_handle();
	PG_TRY();
	{
		rc = curl_url_set(url, CURLUPART_URL, psprintf("http://%s/", rest), 0);
		if (rc == CURLUE_OK)
		{
			host = url_part(url, CURLUPART_HOST, 0);
			port = url_part(url, CURLUPART_PORT, 0);
			path = url_part(url, CURLUPART_PATH, 0);
		}
	}
	PG_FINALLY();
	{
		curl_url_cleanup(url);
	}
	PG_END_TRY();

	if (rc != CURLUE_OK)
		return psprintf("entry \"%s\" is not a host pattern: %s", entry, curl_url_strerror(rc));
	if (host == NULL || path == NULL || strcmp(path, "/") != 0)
		return psprintf("entry \"%s\" is not a host pattern: %s", entry, form);
	normalize_host(host);
	if (pattern->wildcard && is_numeric_host(host))
		return psprintf("entry \"%s\": a wildcard needs a domain name, not an IP address", entry);
	pattern->host = host;
	pattern->port = -1;
	if (port != NULL)
	{
		char	   *end;
		long		value = strtol(port, &end, 10);

		if (*end != '\0' || value < 1 || value > 65535)
			return psprintf("entry \"%s\": the port must be between 1 and 65535", entry);
		pattern->port = (int) value;
	}
	return NULL;
}

/*
 * The patterns of list into *patterns (NIL for an empty list: every host
 * allowed); NULL, or what is wrong with the list.
 */
static char *
parse_allowed_hosts(const char *list, List **patterns)
{
	char	   *copy = pstrdup(list ? list : "");
	char	   *entry = copy;

	*patterns = NIL;
	/* blank: no restriction */
	if (strspn(copy, " \t\r\n") == strlen(copy))
		return NULL;
	for (;;)
	{
		char	   *comma = strchr(entry, ',');
		char	   *end;
		HostPattern *pattern;
		char	   *error;

		if (comma != NULL)
			*comma = '\0';
		while (*entry == ' ' || *entry == '\t' || *entry == '\r' || *entry == '\n')
			entry++;
		end = entry + strlen(entry);
		while (end > entry && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r' || end[-1] == '\n'))
			*--end = '\0';
		if (*entry == '\0')
			return pstrdup("the list has an empty entry");
		pattern = palloc(sizeof(HostPattern));
		if ((error = parse_pattern(entry, pattern)) != NULL)
			return error;
		*patterns = lappend(*patterns, pattern);
		if (comma == NULL)
			break;
		entry = comma + 1;
	}
	return NULL;
}

static bool
host_matches(const HostPattern *pattern, const char *host)
{
	size_t		host_len = strlen(host);
	size_t		len = strlen(pattern->host);

	if (!pattern->wildcard)
		return strcmp(host, pattern->host) == 0;
	/* "a.example.com" and "a.b.example.com" for "*.example.com" */
	return host_len > len + 1 &&
		host[host_len - len - 1] == '.' &&
		strcmp(host + host_len - len, pattern->host) == 0;
}

void
url_append_encoded(StringInfo buf, const char *s)
{
	static const char hex[] = "0123456789ABCDEF";

	for (const unsigned char *p = (const unsigned char *) s; *p; p++)
	{
		if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
			(*p >= '0' && *p <= '9') || *p == '-' || *p == '.' || *p == '_' || *p == '~')
			appendStringInfoChar(buf, (char) *p);
		else
		{
			appendStringInfoChar(buf, '%');
			appendStringInfoChar(buf, hex[*p >> 4]);
			appendStringInfoChar(buf, hex[*p & 0x0F]);
		}
	}
}

/* "." or "..", also with the dots percent-encoded (servers may decode them) */
static bool
is_dot_segment(const char *segment, size_t len)
{
	int			dots = 0;

	for (size_t i = 0; i < len; dots++)
	{
		if (segment[i] == '.')
			i++;
		else if (len - i >= 3 && segment[i] == '%' && segment[i + 1] == '2' &&
				 (segment[i + 2] == 'e' || segment[i + 2] == 'E'))
			i += 3;
		else
			return false;
	}
	return dots == 1 || dots == 2;
}

/*
 * Looked for in the URL as written: libcurl's parser resolves dot segments,
 * which is exactly how a value spliced into a path would climb out of it.
 */
static bool
has_dot_segment(const char *url)
{
	const char *p = strstr(url, "://");
	size_t		path_len;

	if (p == NULL || (p = strchr(p + 3, '/')) == NULL)
		return false;
	path_len = strcspn(p, "?#");
	while (path_len > 0)
	{
		size_t		len;

		p++;
		path_len--;
		len = Min(strcspn(p, "/"), path_len);
		if (is_dot_segment(p, len))
			return true;
		p += len;
		path_len -= len;
	}
	return false;
}

UrlVerdict
url_policy_check(const char *url, char **reason)
{
	CURLU	   *parsed;
	CURLUcode	rc;
	char	   *scheme = NULL;
	char	   *user = NULL;
	char	   *password = NULL;
	char	   *host = NULL;
	char	   *port_text = NULL;
	int			port;
	List	   *patterns;
	char	   *error;
	bool		host_seen = false;
	ListCell   *lc;

	*reason = NULL;
	parsed = new_url_handle();
	PG_TRY();
	{
		/*
		 * The flags libcurl uses for a transfer's URL, minus guessing a
		 * missing scheme: the host found here is the host it would connect
		 * to.
		 */
		rc = curl_url_set(parsed, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME);
		if (rc == CURLUE_OK)
		{
			scheme = url_part(parsed, CURLUPART_SCHEME, 0);
			user = url_part(parsed, CURLUPART_USER, 0);
			password = url_part(parsed, CURLUPART_PASSWORD, 0);
			/* decoded: "%65xample.com" is example.com, if anything */
			host = url_part(parsed, CURLUPART_HOST, CURLU_URLDECODE);
			port_text = url_part(parsed, CURLUPART_PORT, CURLU_DEFAULT_PORT);
		}
	}
	PG_FINALLY();
	{
		curl_url_cleanup(parsed);
	}
	PG_END_TRY();

	if (rc != CURLUE_OK)
	{
		*reason = psprintf("not a valid URL: %s", curl_url_strerror(rc));
		return URL_UNPARSABLE;
	}
	if (scheme == NULL ||
		(pg_strcasecmp(scheme, "http") != 0 && pg_strcasecmp(scheme, "https") != 0))
	{
		*reason = psprintf("scheme \"%s\" is not http or https", scheme ? scheme : "");
		return URL_BAD_SCHEME;
	}
	if (user != NULL || password != NULL)
	{
		*reason = pstrdup("the URL carries credentials (user:password@); they belong in the connector's auth");
		return URL_CREDENTIALS;
	}
	if (host == NULL || *host == '\0')
	{
		*reason = pstrdup("not a valid URL: it names no host");
		return URL_UNPARSABLE;
	}
	if (has_dot_segment(url))
	{
		*reason = pstrdup("the path has a \".\" or \"..\" segment");
		return URL_DOT_SEGMENT;
	}
	normalize_host(host);
	port = port_text ? atoi(port_text) : -1;

	if ((error = parse_allowed_hosts(xprov_allowed_hosts, &patterns)) != NULL)
	{
		/* the check hook let it through, so libcurl itself failed: refuse */
		*reason = psprintf(ALLOWED_HOSTS_GUC " could not be read: %s", error);
		return URL_HOST_NOT_ALLOWED;
	}
	if (patterns == NIL)
		return URL_ALLOWED;
	foreach(lc, patterns)
	{
		HostPattern *pattern = (HostPattern *) lfirst(lc);

		if (!host_matches(pattern, host))
			continue;
		if (pattern->port < 0 || pattern->port == port)
			return URL_ALLOWED;
		host_seen = true;
	}
	if (host_seen)
		*reason = psprintf("port %d of host \"%s\" is not in " ALLOWED_HOSTS_GUC, port, host);
	else
		*reason = psprintf("host \"%s\" is not in " ALLOWED_HOSTS_GUC, host);
	return URL_HOST_NOT_ALLOWED;
}

bool
url_policy_check_allowed_hosts(char **newval, void **extra, GucSource source)
{
	List	   *patterns;
	char	   *error = parse_allowed_hosts(*newval, &patterns);

	list_free_deep(patterns);
	if (error != NULL)
	{
		GUC_check_errdetail("%s", error);
		GUC_check_errhint("Use a comma-separated list of host names or IP addresses, e.g. 'scim.example.com, *.example.org, 127.0.0.1:8443', or '' to allow every host.");
		return false;
	}
	return true;
}

/*
 * xprov._url_allowed(url text) RETURNS text: NULL when a connector may send
 * requests to url, else why not.
 */
Datum
xprov_url_allowed(PG_FUNCTION_ARGS)
{
	char	   *url = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *reason;

	if (url_policy_check(url, &reason) == URL_ALLOWED)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(reason));
}

/*
 * xprov._check_base_url(kind text, url text) RETURNS void: raises unless a
 * connector of that kind may have url as its base_url.  A URL with
 * credentials is never repeated in the error.
 */
Datum
xprov_check_base_url(PG_FUNCTION_ARGS)
{
	char	   *kind = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *url = text_to_cstring(PG_GETARG_TEXT_PP(1));
	char	   *reason;

	switch (url_policy_check(url, &reason))
	{
		case URL_ALLOWED:
			break;
		case URL_UNPARSABLE:
		case URL_BAD_SCHEME:
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("connector kind %s needs an http or https base_url", kind),
					 errdetail("base_url was %s: %s.", quote_literal_cstr(url), reason),
					 errhint("Pass the target's base URL, for example https://scim.example.com/scim/v2.")));
			break;
		case URL_DOT_SEGMENT:
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("connector base_url must not contain \".\" or \"..\" path segments"),
					 errdetail("base_url was %s.", quote_literal_cstr(url)),
					 errhint("Pass the resolved URL, for example https://scim.example.com/scim/v2.")));
			break;
		case URL_CREDENTIALS:
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("connector base_url must not contain credentials"),
					 errdetail("The base_url has a user name or password before its host."),
					 errhint("Remove them from the URL and put them in the config's auth, e.g. {\"auth\": {\"type\": \"basic\", \"username\": \"...\", \"password\": \"...\"}}.")));
			break;
		case URL_HOST_NOT_ALLOWED:
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("connector base_url targets a host that is not allowed"),
					 errdetail("%s.", reason),
					 errhint("A superuser can add the host to " ALLOWED_HOSTS_GUC ".")));
			break;
	}
	PG_RETURN_VOID();
}
