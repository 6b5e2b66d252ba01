/*-------------------------------------------------------------------------
 *
 * url_policy.h
 *	  Which URLs connectors may send requests to: http or https, no
 *	  credentials in the URL, and a host allowed by xprov.allowed_hosts.
 *
 * URLs and host patterns are parsed with libcurl's URL API, the parser
 * libcurl itself applies to the URL of a transfer, so that the host that is
 * checked is the host that would be connected to.  The checks never raise
 * (beyond out of memory): the HTTP engine refuses a request with the reason
 * as its error, and add_connector raises with a SQLSTATE per verdict
 * (xprov._check_base_url).
 *
 *-------------------------------------------------------------------------
 */
#ifndef URL_POLICY_H
#define URL_POLICY_H

#include "lib/stringinfo.h"
#include "utils/guc.h"

typedef enum UrlVerdict
{
	URL_ALLOWED = 0,
	URL_UNPARSABLE,				/* not a URL libcurl accepts, or no host */
	URL_BAD_SCHEME,				/* a scheme other than http or https */
	URL_CREDENTIALS,			/* user[:password]@ in the URL */
	URL_HOST_NOT_ALLOWED,		/* host (or port) not in xprov.allowed_hosts */
	URL_DOT_SEGMENT				/* a "." or ".." path segment: it would leave the
								 * endpoint (libcurl resolves them) */
} UrlVerdict;

/*
 * The verdict on url under the current xprov.allowed_hosts; unless it is
 * URL_ALLOWED, *reason is a palloc'd text that says why (it never repeats
 * credentials).  Not for libcurl callbacks: it pallocs.
 */
extern UrlVerdict url_policy_check(const char *url, char **reason);

/*
 * Append s percent-encoded but for RFC 3986's unreserved characters, so that
 * '/', '?', '#', '&', '+', '%' and spaces in a value can never change the
 * meaning of a path or query (a '+' left as is reads as a space on many
 * servers).
 */
extern void url_append_encoded(StringInfo buf, const char *s);

/* GUC check hook of xprov.allowed_hosts: every entry must be a pattern. */
extern bool url_policy_check_allowed_hosts(char **newval, void **extra, GucSource source);

#endif							/* URL_POLICY_H */
