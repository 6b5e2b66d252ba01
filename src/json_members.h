/*-------------------------------------------------------------------------
 *
 * json_members.h
 *	  Split the JSON text of an object into its members, in place.
 *
 * Exports json_split_members(): the sandbox encodes what a hook returns
 * once, with duktape's JSON.stringify, and the caller takes the top-level
 * members from that text (SandboxCall.members) instead of walking the object
 * member by member inside duktape.
 *
 *-------------------------------------------------------------------------
 */
#ifndef XPROV_JSON_MEMBERS_H
#define XPROV_JSON_MEMBERS_H

#include "sandbox.h"

typedef enum JsonMembersStatus
{
	JSON_MEMBERS_OK,
	JSON_MEMBERS_NOT_OBJECT,	/* the text is not an object: left as it is */
	JSON_MEMBERS_MALFORMED,		/* not JSON as JSON.stringify writes it */
	JSON_MEMBERS_LONE_SURROGATE /* a \ud800-style escape without its pair */
} JsonMembersStatus;

/*
 * text (NUL-terminated, len bytes, UTF-8) is rewritten in place: names and
 * string values unescaped, every member's text NUL-terminated.  Fills up to
 * `max` members (name, kind, and text, number or boolean); *more says
 * whether the object had more.
 */
extern JsonMembersStatus json_split_members(char *text, size_t len, SandboxValue *members,
											int max, int *count, bool *more);

#endif							/* XPROV_JSON_MEMBERS_H */
