#!/usr/bin/env python3
"""
scim_server.py -- an in-memory SCIM 2.0 service provider (RFC 7643/7644)
with fault injection, used as a provisioning target by xprov's tests.

    python3 test/targets/scim_server.py --port N [--token T] [--no-patch] [--verbose]

Prints "listening on 127.0.0.1:N" once it accepts connections (--port 0
picks a free port and prints it).  Python 3 standard library only.

SCIM API under /scim/v2 (Bearer token required when --token is given):
    /Users, /Users/{id}, /Groups, /Groups/{id}    GET POST PUT PATCH DELETE
    /ServiceProviderConfig, /ResourceTypes, /Schemas
Test API under /_admin (no auth, never faulted), JSON in and out:
    POST /_admin/reset              drop resources, faults and the request log
    POST /_admin/fault              queue a fault ({"mode": "clear"} clears)
    GET  /_admin/stats              {users, groups, requests: {method: n},
                                    requests_total, duplicate_usernames,
                                    request_ids_missing, faults_pending}
    GET  /_admin/requests?since=N   log entries from index N: {i, method, path,
                                    query, status, request_id, fault}; status
                                    is null in progress and for drop/hang
    GET  /_admin/users, /_admin/groups      every resource, as stored
    POST /_admin/users, /_admin/groups      load a list of resources (ids
                                    assigned unless given; uniqueness holds)

A fault: {"mode": M, "count": 1, "method": null, "path_prefix": null,
"after": false, "delay_ms": ..., "retry_after": ...} applies to the next
`count` /scim/v2 requests matching method and path prefix (-1: until
cleared); queued faults are taken in order.  Modes:
    500 503 429 401   that status with a SCIM error body; Retry-After:
                      retry_after (default 1 for 429, else only if given)
    delay             sleep delay_ms (default 1000), then handle normally
    drop              close the connection without a response
    garbage           200 with a body that is not JSON
    echo              400 whose body repeats the request's headers
    hang              sleep delay_ms (default 60000), then drop
A faulted request changes nothing, except with delay, or with "after": true:
then it is processed first and the fault replaces the response (the target
did it, the client never heard).

Deliberately strict, to catch client bugs: a resource body must list its
core schema in "schemas" (else 400 invalidValue); bodies need Content-Type
application/scim+json or application/json (else 415); group members must
exist (400 invalidValue); userName and group displayName are unique
case-insensitively (409 uniqueness).  Null and empty attributes are dropped
(unassigned); "password" is stored but never returned; a PUT or PATCH that
changes nothing keeps meta.version; a deleted user leaves its groups.

Not implemented: sortBy/sortOrder, attributes/excludedAttributes (whole
resources are returned), POST .search, /Bulk, /Me, the read-only "groups"
attribute of users.
"""

import json
import re
import sys
import threading
import traceback
import uuid
from urllib.parse import parse_qsl, unquote

from target_base import RequestLog, TargetHandler, dumps, fault_spec, now_iso, serve

BASE = "/scim/v2"
USER_URN = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_URN = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE_URN = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
ERROR_URN = "urn:ietf:params:scim:api:messages:2.0:Error"
LIST_URN = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
PATCH_URN = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
CORE_URNS = {USER_URN.lower(), GROUP_URN.lower()}

# Per resource endpoint: core schema, meta.resourceType, unique attribute.
RESOURCE_KINDS = {
    "Users": (USER_URN, "User", "userName"),
    "Groups": (GROUP_URN, "Group", "displayName"),
}

# Multi-valued attributes of the core schemas (lower case): an add appends.
MULTI_VALUED = {"emails", "phonenumbers", "ims", "photos", "addresses", "groups",
                "entitlements", "roles", "x509certificates", "members", "schemas"}

# Attribute paths compared case-sensitively in filters; every other string
# attribute is caseExact=false in RFC 7643 (notably userName).
CASE_EXACT = {("id",), ("externalid",), ("meta", "version")}

MAX_COUNT = 1000


class ScimError(Exception):
    """An error answered with a SCIM error body (RFC 7644 §3.12)."""

    def __init__(self, status, detail, scim_type=None, headers=()):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.scim_type = scim_type
        self.headers = list(headers)

    def body(self):
        body = {"schemas": [ERROR_URN], "status": str(self.status), "detail": self.detail}
        if self.scim_type:
            body["scimType"] = self.scim_type
        return body


def get_ci(obj, name):
    """obj[name] with SCIM's case-insensitive attribute names; None if absent."""
    value = obj.get(name)
    if value is not None:
        return value
    lname = name.lower()
    for key, value in obj.items():
        if key.lower() == lname:
            return value
    return None


def key_ci(obj, name):
    """The key of obj that matches name case-insensitively, else name."""
    if name in obj:
        return name
    lname = name.lower()
    for key in obj:
        if key.lower() == lname:
            return key
    return name


# ---------------------------------------------------------------------------
# Filters (RFC 7644 §3.4.2.2), compiled to predicates over resources.
# Precedence: not > and > or.  Parsed to tuples, then to closures.
# ---------------------------------------------------------------------------

class FilterError(Exception):
    pass


_TOKEN_RE = re.compile(r'\s+|([()\[\]])|("(?:[^"\\]|\\.)*")|([^\s()\[\]"]+)')
_NAME_RE = re.compile(r"^\$?[A-Za-z][A-Za-z0-9_-]*$")   # ATTRNAME, and "$ref"
_COMPARE_OPS = {"eq", "ne", "co", "sw", "ew", "gt", "lt", "ge", "le"}


def tokenize(text):
    tokens = []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            raise FilterError("unterminated string at offset %d" % pos)
        pos = m.end()
        punct, string, word = m.groups()
        if punct:
            tokens.append(("p", punct))
        elif string:
            try:
                tokens.append(("s", json.loads(string)))   # JSON string escapes
            except ValueError:
                raise FilterError("bad string literal %s" % string) from None
        elif word:
            tokens.append(("w", word))
    return tokens


def attr_path(text):
    """'name.familyName' -> ('name', 'familyName').  A core schema URN prefix
    is dropped; an extension URN prefix becomes the first component."""
    urn = None
    if text[:4].lower() == "urn:":
        urn, _, text = text.rpartition(":")
        if urn.lower() in CORE_URNS:
            urn = None
    names = text.split(".")
    if len(names) > 2 or not all(_NAME_RE.match(n) for n in names):
        raise FilterError("bad attribute path %r" % text)
    return ((urn,) if urn else ()) + tuple(names)


class FilterParser:
    def __init__(self, text):
        self.tokens = tokenize(text)
        self.i = 0

    def parse(self):
        node = self.parse_or()
        if self.i != len(self.tokens):
            raise FilterError("unexpected %r" % (self.tokens[self.i][1],))
        return node

    def peek(self):
        return self.tokens[self.i] if self.i < len(self.tokens) else (None, None)

    def take(self):
        if self.i >= len(self.tokens):
            raise FilterError("unexpected end of filter")
        self.i += 1
        return self.tokens[self.i - 1]

    def expect(self, punct):
        if self.take() != ("p", punct):
            raise FilterError("expected %r" % punct)

    def is_word(self, word):
        kind, value = self.peek()
        return kind == "w" and value.lower() == word

    def parse_or(self):
        node = self.parse_and()
        while self.is_word("or"):
            self.i += 1
            node = ("or", node, self.parse_and())
        return node

    def parse_and(self):
        node = self.parse_unary()
        while self.is_word("and"):
            self.i += 1
            node = ("and", node, self.parse_unary())
        return node

    def parse_unary(self):
        kind, value = self.take()
        if (kind, value) == ("p", "("):
            node = self.parse_or()
            self.expect(")")
            return node
        if kind == "w" and value.lower() == "not":
            self.expect("(")
            node = self.parse_or()
            self.expect(")")
            return ("not", node)
        if kind == "w":
            return self.parse_attr_expr(attr_path(value))
        raise FilterError("expected an attribute, got %r" % (value,))

    def parse_attr_expr(self, path):
        if self.peek() == ("p", "["):          # valuePath: emails[type eq "work"]
            self.i += 1
            inner = self.parse_or()
            self.expect("]")
            return ("vp", path, inner)
        kind, op = self.take()
        op = op.lower() if kind == "w" else None
        if op == "pr":
            return ("pr", path)
        if op not in _COMPARE_OPS:
            raise FilterError("unknown operator %r" % (op,))
        kind, raw = self.take()
        if kind == "s":
            value = raw
        elif kind == "w" and raw in ("true", "false", "null"):
            value = json.loads(raw)
        elif kind == "w":
            try:
                value = int(raw) if re.fullmatch(r"-?\d+", raw) else float(raw)
            except ValueError:
                raise FilterError("bad value %r" % raw) from None
        else:
            raise FilterError("expected a value after %s" % op)
        if op in ("co", "sw", "ew") and not isinstance(value, str):
            raise FilterError("%s needs a string" % op)
        if op in ("gt", "ge", "lt", "le") and (value is None or isinstance(value, bool)):
            raise FilterError("%s needs a string or a number" % op)
        return ("cmp", op, path, value)


def values_at(obj, path):
    """Every value at path, flattening multi-valued attributes."""
    values = [obj]
    for name in path:
        found = []
        for v in values:
            if isinstance(v, dict):
                x = get_ci(v, name)
                if isinstance(x, list):
                    found.extend(x)
                elif x is not None:
                    found.append(x)
        values = found
    return values


def _leaf(v):
    # A complex value compared as a whole means its "value" sub-attribute.
    return get_ci(v, "value") if isinstance(v, dict) else v


_STRING_OPS = {
    "eq": lambda a, b: a == b, "co": lambda a, b: b in a,
    "sw": str.startswith, "ew": str.endswith,
    "gt": lambda a, b: a > b, "ge": lambda a, b: a >= b,
    "lt": lambda a, b: a < b, "le": lambda a, b: a <= b,
}


def compile_filter(node):
    kind = node[0]
    if kind in ("and", "or"):
        a, b = compile_filter(node[1]), compile_filter(node[2])
        return (lambda r: a(r) and b(r)) if kind == "and" else (lambda r: a(r) or b(r))
    if kind == "not":
        a = compile_filter(node[1])
        return lambda r: not a(r)
    if kind == "pr":
        path = node[1]
        return lambda r: any(v not in ("", [], {}) for v in values_at(r, path))
    if kind == "vp":
        path, inner = node[1], compile_filter(node[2])
        return lambda r: any(isinstance(v, dict) and inner(v) for v in values_at(r, path))

    _, op, path, expected = node
    if expected is None:                       # eq null: unassigned
        if op == "eq":
            return lambda r: not values_at(r, path)
        return lambda r: bool(values_at(r, path))
    if isinstance(expected, str):
        exact = tuple(n.lower() for n in path) in CASE_EXACT
        want = expected if exact else expected.lower()
        fn = _STRING_OPS["eq" if op == "ne" else op]

        def test(v):
            v = _leaf(v)
            return isinstance(v, str) and fn(v if exact else v.lower(), want)
    elif isinstance(expected, bool):
        def test(v):
            return _leaf(v) is expected
    else:
        fn = _STRING_OPS["eq" if op == "ne" else op]

        def test(v):
            v = _leaf(v)
            return isinstance(v, (int, float)) and not isinstance(v, bool) and fn(v, expected)
    if op == "ne":
        return lambda r: not any(test(v) for v in values_at(r, path))
    return lambda r: any(test(v) for v in values_at(r, path))


def parse_filter(text):
    """(predicate, ast); ScimError 400 invalidFilter when text is not a filter."""
    try:
        ast = FilterParser(text).parse()
        return compile_filter(ast), ast
    except FilterError as e:
        raise ScimError(400, "invalid filter: %s" % e, "invalidFilter") from None


# ---------------------------------------------------------------------------
# PATCH (RFC 7644 §3.5.2)
# ---------------------------------------------------------------------------

# attrPath, or attrPath "[" valFilter "]" ["." subAttr]
_PATCH_PATH_RE = re.compile(r"^([^\[\]]+)(?:\[(.+)\](?:\.([^\[\].]+))?)?$", re.S)


class PatchPath:
    """A parsed PATCH path: [ext URN :] attr [filter] [. sub]."""

    def __init__(self, ext, attr, filt, sub):
        self.ext, self.attr, self.filt, self.sub = ext, attr, filt, sub


def patch_path(text, resource):
    m = _PATCH_PATH_RE.match(text.strip()) if isinstance(text, str) else None
    if m is None:
        raise ScimError(400, "invalid path %r" % (text,), "invalidPath")
    head, ftext, sub = m.groups()
    ext = None
    if head[:4].lower() == "urn:":
        known = {ENTERPRISE_URN.lower()}
        known.update(k.lower() for k in resource if k.startswith("urn:"))
        known.update(s.lower() for s in resource.get("schemas", ()) if isinstance(s, str))
        if head.lower() in known:              # the whole extension object
            ext, head = head, ""
        else:
            ext, _, head = head.rpartition(":")
            if not head:
                raise ScimError(400, "invalid path %r" % text, "invalidPath")
        if ext.lower() in CORE_URNS:
            ext = None
    names = head.split(".") if head else []
    if (ext is None and not names) or len(names) > 2 or (ftext and len(names) != 1) \
            or not all(_NAME_RE.match(n) for n in names + ([sub] if sub else [])):
        raise ScimError(400, "invalid path %r" % text, "invalidPath")
    if len(names) == 2:
        sub = names[1]
    attr = names[0] if names else None
    if ext is None and attr.lower() in ("id", "meta"):
        raise ScimError(400, "%s is read-only" % attr, "mutability")
    filt = None
    if ftext:
        try:
            filt = compile_filter(FilterParser(ftext).parse())
        except FilterError as e:
            raise ScimError(400, "invalid path filter: %s" % e, "invalidPath") from None
    return PatchPath(ext, attr, filt, sub)


def same_value(a, b):
    """Two elements of a multi-valued attribute are the same value: equal
    "value" sub-attributes for complex values (members), else equality."""
    if isinstance(a, dict) and isinstance(b, dict) and get_ci(a, "value") is not None:
        return get_ci(a, "value") == get_ci(b, "value")
    return a == b


def apply_op(res, op, p, value):
    """Apply one PATCH operation to res (a private copy) in place."""
    if p.ext is not None and p.attr is not None:
        ek = key_ci(res, p.ext)
        if not isinstance(res.get(ek), dict):
            if op == "remove":
                return
            res[ek] = {}
        parent, name = res[ek], p.attr
    else:
        parent, name = res, p.attr if p.attr is not None else p.ext
    k = key_ci(parent, name)
    cur = parent.get(k)
    multi = isinstance(cur, list) or name.lower() in MULTI_VALUED

    if p.filt is not None or (multi and p.sub):
        # Selected elements of a multi-valued attribute (all of them for
        # "emails.value"-style paths).
        elems = cur if isinstance(cur, list) else []
        hits = [i for i, e in enumerate(elems)
                if isinstance(e, dict) and (p.filt is None or p.filt(e))]
        if op == "remove":
            if p.sub:
                for i in hits:
                    elems[i].pop(key_ci(elems[i], p.sub), None)
            else:
                parent[k] = [e for i, e in enumerate(elems) if i not in hits]
            return
        if not hits:
            raise ScimError(400, "no value matches the path filter", "noTarget")
        for i in hits:
            if p.sub:
                elems[i][key_ci(elems[i], p.sub)] = value
            elif op == "add" and isinstance(value, dict):
                elems[i].update(value)
            else:
                elems[i] = value
        return

    if p.sub:                                   # name.givenName
        if op == "remove":
            if isinstance(cur, dict):
                cur.pop(key_ci(cur, p.sub), None)
            return
        if cur is None:
            cur = parent[k] = {}
        elif not isinstance(cur, dict):
            raise ScimError(400, "%s is not a complex attribute" % name, "invalidPath")
        cur[key_ci(cur, p.sub)] = value
        return

    if op == "remove":
        if isinstance(cur, list) and value is not None:
            # {"op": "remove", "path": "members", "value": [{"value": id}]}
            drop = value if isinstance(value, list) else [value]
            parent[k] = [e for e in cur if not any(same_value(e, d) for d in drop)]
        else:
            parent.pop(k, None)
    elif multi:
        new = value if isinstance(value, list) else [value]
        if op == "add" and isinstance(cur, list):
            new = cur + [v for v in new if not any(same_value(v, e) for e in cur)]
        parent[k] = new
    elif isinstance(cur, dict) and isinstance(value, dict):
        # Complex attribute: the given sub-attributes replace, others stay.
        for sk, sv in value.items():
            cur[key_ci(cur, sk)] = sv
    else:
        parent[k] = value


def parse_patch_request(body):
    """Validate a PatchOp body; returns [(op, path or None, value)]."""
    schemas = body.get("schemas")
    if not isinstance(schemas, list) or PATCH_URN not in schemas:
        raise ScimError(400, "schemas must be [\"%s\"]" % PATCH_URN, "invalidSyntax")
    ops = get_ci(body, "Operations")
    if not isinstance(ops, list) or not ops:
        raise ScimError(400, "Operations must be a non-empty array", "invalidSyntax")
    parsed = []
    for o in ops:
        if not isinstance(o, dict):
            raise ScimError(400, "an operation must be an object", "invalidSyntax")
        op = get_ci(o, "op")
        op = op.lower() if isinstance(op, str) else None
        if op not in ("add", "replace", "remove"):
            raise ScimError(400, "unknown op %r" % (get_ci(o, "op"),), "invalidSyntax")
        path = get_ci(o, "path")
        if path is not None and (not isinstance(path, str) or not path.strip()):
            raise ScimError(400, "path must be a non-empty string", "invalidPath")
        value = get_ci(o, "value")
        if path is None:
            if op == "remove":
                raise ScimError(400, "remove needs a path", "noTarget")
            if not isinstance(value, dict):
                raise ScimError(400, "%s without a path needs an object value" % op,
                                "invalidValue")
        elif op != "remove" and key_ci(o, "value") not in o:
            raise ScimError(400, "%s needs a value" % op, "invalidSyntax")
        parsed.append((op, path, value))
    return parsed


# ---------------------------------------------------------------------------
# The store, faults and request log, all under one lock.
#
# Stored resources are never modified in place (updates store a new dict), so
# a resource taken from the store can be serialized after the lock is released.
# ---------------------------------------------------------------------------

def if_match_ok(header, version):
    if header is None:
        return True
    tags = [t.strip() for t in header.split(",")]

    def strong(tag):
        return tag[2:] if tag.startswith("W/") else tag
    return "*" in tags or strong(version) in (strong(t) for t in tags)


def bump(version):
    return 'W/"%d"' % (int(version[3:-1]) + 1)   # W/"n"


class State(RequestLog):
    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        with self.lock:
            self.resources = {"Users": {}, "Groups": {}}    # id -> resource, creation order
            self.unique = {"Users": {}, "Groups": {}}       # lower(unique attr) -> id
            self.clear_log()

    def stats(self):
        with self.lock:
            methods, missing = self.request_counts()
            names = {}
            for u in self.resources["Users"].values():
                n = get_ci(u, "userName").lower()
                names[n] = names.get(n, 0) + 1
            return {"users": len(self.resources["Users"]),
                    "groups": len(self.resources["Groups"]),
                    "requests": methods, "requests_total": len(self.log),
                    "duplicate_usernames": sorted(n for n, c in names.items() if c > 1),
                    "request_ids_missing": missing,
                    "faults_pending": len(self.faults)}

    def all(self, kind):
        with self.lock:
            return list(self.resources[kind].values())

    # -- resources -------------------------------------------------------------

    def normalize(self, kind, body):
        """Validate a resource body (POST/PUT or the result of a PATCH) and
        return its client-writable part: null/empty attributes dropped (RFC
        7643 §2.5: unassigned), id and meta left to the server."""
        res = {k: v for k, v in body.items()
               if v is not None and v != [] and v != {} and k.lower() not in ("id", "meta")}
        core, _, unique_attr = RESOURCE_KINDS[kind]
        schemas = res.get("schemas")
        if not isinstance(schemas, list) or core not in schemas:
            raise ScimError(400, "schemas must include %s" % core, "invalidValue")
        for k in res:
            if k.startswith("urn:") and k not in schemas:
                schemas.append(k)              # an extension in use is declared
        value = get_ci(res, unique_attr)
        if not isinstance(value, str) or not value.strip():
            raise ScimError(400, "%s is required" % unique_attr, "invalidValue")
        if kind == "Users":
            active = key_ci(res, "active")
            if active not in res:
                res["active"] = True
            elif not isinstance(res[active], bool):
                raise ScimError(400, "active must be a boolean", "invalidValue")
        else:
            members = get_ci(res, "members") or []
            if not isinstance(members, list) or not all(
                    isinstance(m, dict) and isinstance(get_ci(m, "value"), str) for m in members):
                raise ScimError(400, "members must be [{\"value\": id}, ...]", "invalidValue")
        return res

    def _check_members(self, res):
        for m in get_ci(res, "members") or ():
            v = get_ci(m, "value")
            if v not in self.resources["Users"] and v not in self.resources["Groups"]:
                raise ScimError(400, "member %s does not exist" % v, "invalidValue")

    def _unique_key(self, kind, res, rid):
        attr = RESOURCE_KINDS[kind][2]
        key = get_ci(res, attr).lower()
        other = self.unique[kind].get(key)
        if other is not None and other != rid:
            raise ScimError(409, "%s %r is already taken" % (attr, get_ci(res, attr)),
                            "uniqueness")
        return key

    def _get(self, kind, rid):
        res = self.resources[kind].get(rid)
        if res is None:
            raise ScimError(404, "%s %s not found" % (RESOURCE_KINDS[kind][1], rid))
        return res

    def create(self, kind, body, base_url, rid=None):
        res = self.normalize(kind, body)
        with self.lock:
            rid = rid or str(uuid.uuid4())
            if rid in self.resources[kind]:
                raise ScimError(409, "id %s is already taken" % rid, "uniqueness")
            key = self._unique_key(kind, res, rid)
            if kind == "Groups":
                self._check_members(res)
            now = now_iso()
            res["id"] = rid
            res["meta"] = {"resourceType": RESOURCE_KINDS[kind][1], "created": now,
                           "lastModified": now, "location": "%s/%s/%s" % (base_url, kind, rid),
                           "version": 'W/"1"'}
            self.resources[kind][rid] = res
            self.unique[kind][key] = rid
            return res

    def get(self, kind, rid):
        with self.lock:
            return self._get(kind, rid)

    def search(self, kind, text, start, count):
        """(total, page) of the resources matching filter text (None: all),
        in creation order."""
        pred, ast = parse_filter(text) if text is not None else (None, None)
        with self.lock:
            store = self.resources[kind]
            unique_attr = RESOURCE_KINDS[kind][2].lower()
            if ast and ast[0] == "cmp" and ast[1] == "eq" and isinstance(ast[3], str) \
                    and tuple(n.lower() for n in ast[2]) == (unique_attr,):
                # userName eq "x" (the usual correlation lookup): use the index.
                rid = self.unique[kind].get(ast[3].lower())
                hits = [store[rid]] if rid else []
            elif pred:
                hits = [r for r in store.values() if pred(r)]
            else:
                hits = list(store.values())
        return len(hits), hits[start - 1:start - 1 + count]

    def _commit(self, kind, old, new):
        """Store new (normalized) as the next version of old."""
        rid = old["id"]
        if new == {k: v for k, v in old.items() if k not in ("id", "meta")}:
            return old                          # no change: same version
        key = self._unique_key(kind, new, rid)
        if kind == "Groups":
            self._check_members(new)
        new["id"] = rid
        new["meta"] = dict(old["meta"], lastModified=now_iso(),
                           version=bump(old["meta"]["version"]))
        old_key = get_ci(old, RESOURCE_KINDS[kind][2]).lower()
        if old_key != key:
            del self.unique[kind][old_key]
            self.unique[kind][key] = rid
        self.resources[kind][rid] = new
        return new

    def replace(self, kind, rid, body, if_match):
        new = self.normalize(kind, body)
        with self.lock:
            old = self._get(kind, rid)
            if not if_match_ok(if_match, old["meta"]["version"]):
                raise ScimError(412, "If-Match does not match version %s" % old["meta"]["version"])
            return self._commit(kind, old, new)

    def patch(self, kind, rid, body, if_match):
        ops = parse_patch_request(body)
        with self.lock:
            old = self._get(kind, rid)
            if not if_match_ok(if_match, old["meta"]["version"]):
                raise ScimError(412, "If-Match does not match version %s" % old["meta"]["version"])
            # A deep copy: the operations edit it in place; all or nothing.
            work = json.loads(json.dumps({k: v for k, v in old.items() if k not in ("id", "meta")}))
            for op, path, value in ops:
                if path is None:
                    for k, v in value.items():
                        apply_op(work, op, patch_path(k, work), v)
                else:
                    apply_op(work, op, patch_path(path, work), value)
            return self._commit(kind, old, self.normalize(kind, work))

    def delete(self, kind, rid, if_match):
        with self.lock:
            old = self._get(kind, rid)
            if not if_match_ok(if_match, old["meta"]["version"]):
                raise ScimError(412, "If-Match does not match version %s" % old["meta"]["version"])
            del self.resources[kind][rid]
            del self.unique[kind][get_ci(old, RESOURCE_KINDS[kind][2]).lower()]
            # A deleted user or group leaves every group it was a member of.
            groups = self.resources["Groups"]
            for gid, g in list(groups.items()):
                members = get_ci(g, "members")
                if members and any(get_ci(m, "value") == rid for m in members):
                    g = dict(g)
                    g[key_ci(g, "members")] = [m for m in members if get_ci(m, "value") != rid]
                    g["meta"] = dict(g["meta"], lastModified=now_iso(),
                                     version=bump(g["meta"]["version"]))
                    groups[gid] = g


# ---------------------------------------------------------------------------
# Discovery documents (RFC 7643 §5-7), minimal.
# ---------------------------------------------------------------------------

def _attr(name, type_="string", multi=False, required=False, mutability="readWrite",
          returned="default", uniqueness="none", sub=None):
    a = {"name": name, "type": type_, "multiValued": multi, "description": name,
         "required": required, "caseExact": False, "mutability": mutability,
         "returned": returned, "uniqueness": uniqueness}
    if type_ == "reference":
        a["referenceTypes"] = ["User", "Group"]
    if sub:
        a["subAttributes"] = sub
    return a


def _multi(name):
    return _attr(name, "complex", multi=True, sub=[
        _attr("value"), _attr("display"), _attr("type"), _attr("primary", "boolean")])


SCHEMAS = [
    (USER_URN, "User", [
        _attr("userName", required=True, uniqueness="server"),
        _attr("name", "complex", sub=[_attr(n) for n in (
            "formatted", "familyName", "givenName", "middleName",
            "honorificPrefix", "honorificSuffix")]),
        *[_attr(n) for n in ("displayName", "nickName", "profileUrl", "title", "userType",
                             "preferredLanguage", "locale", "timezone")],
        _attr("active", "boolean"),
        _attr("password", mutability="writeOnly", returned="never"),
        _multi("emails"), _multi("phoneNumbers"), _multi("roles"), _multi("entitlements"),
    ]),
    (GROUP_URN, "Group", [
        _attr("displayName", required=True, uniqueness="server"),
        _attr("members", "complex", multi=True, sub=[
            _attr("value", mutability="immutable"), _attr("$ref", "reference", mutability="immutable"),
            _attr("display", mutability="immutable"), _attr("type", mutability="immutable")]),
    ]),
    (ENTERPRISE_URN, "EnterpriseUser", [
        *[_attr(n) for n in ("employeeNumber", "costCenter", "organization", "division",
                             "department")],
        _attr("manager", "complex", sub=[_attr("value"), _attr("$ref", "reference"),
                                         _attr("displayName", mutability="readOnly")]),
    ]),
]


def schema_docs(base):
    return [{"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"], "id": urn,
             "name": name, "description": name, "attributes": attrs,
             "meta": {"resourceType": "Schema", "location": "%s/Schemas/%s" % (base, urn)}}
            for urn, name, attrs in SCHEMAS]


def resource_type_docs(base):
    user = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
            "id": "User", "name": "User", "endpoint": "/Users", "description": "User Account",
            "schema": USER_URN,
            "schemaExtensions": [{"schema": ENTERPRISE_URN, "required": False}],
            "meta": {"resourceType": "ResourceType", "location": base + "/ResourceTypes/User"}}
    group = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
             "id": "Group", "name": "Group", "endpoint": "/Groups", "description": "Group",
             "schema": GROUP_URN,
             "meta": {"resourceType": "ResourceType", "location": base + "/ResourceTypes/Group"}}
    return [user, group]


def service_provider_config(base, patch):
    return {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
            "documentationUri": "https://www.rfc-editor.org/rfc/rfc7644",
            "patch": {"supported": patch},
            "bulk": {"supported": False, "maxOperations": 0, "maxPayloadSize": 0},
            "filter": {"supported": True, "maxResults": MAX_COUNT},
            "changePassword": {"supported": False},
            "sort": {"supported": False},
            "etag": {"supported": True},
            "authenticationSchemes": [{"type": "oauthbearertoken", "name": "Bearer token",
                                       "description": "Authorization: Bearer <token>",
                                       "primary": True}],
            "meta": {"resourceType": "ServiceProviderConfig",
                     "location": base + "/ServiceProviderConfig"}}


def list_response(total, start, page):
    return {"schemas": [LIST_URN], "totalResults": total, "startIndex": start,
            "itemsPerPage": len(page), "Resources": page}


def public(res):
    """A resource as returned to SCIM clients: password is returned "never"."""
    return {k: v for k, v in res.items() if k.lower() != "password"}


# ---------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------

class Handler(TargetHandler):
    server_version = "xprov-scim-target/1"
    API_PREFIX = BASE
    CONTENT_TYPE = "application/scim+json"

    def base_url(self):
        host = self.headers.get("Host") or "127.0.0.1:%d" % self.server.server_address[1]
        return "http://%s%s" % (host, BASE)

    def api(self, url, body):
        status, obj, headers = self.scim(url, body)
        return status, dumps(obj) if obj is not None else b"", headers

    def fault_body(self, status):
        return dumps(ScimError(status, "injected fault").body())

    # -- SCIM ------------------------------------------------------------------

    def json_body(self, body):
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype not in ("application/scim+json", "application/json"):
            raise ScimError(415, "Content-Type must be application/scim+json")
        try:
            obj = json.loads(body)
        except ValueError as e:
            raise ScimError(400, "malformed JSON: %s" % e, "invalidSyntax") from None
        if not isinstance(obj, dict):
            raise ScimError(400, "the body must be a JSON object", "invalidSyntax")
        return obj

    def resource_reply(self, status, res, location=False):
        headers = [("ETag", res["meta"]["version"])]
        if location:
            headers.append(("Location", res["meta"]["location"]))
        return status, public(res), headers

    def scim(self, url, body):
        """Handle a /scim/v2 request: (status, body object or None, headers)."""
        try:
            return self.route(url, body)
        except ScimError as e:
            return e.status, e.body(), e.headers
        except Exception as e:                 # a bug here: say so loudly, keep serving
            traceback.print_exc()
            return 500, ScimError(500, "internal error: %r" % e).body(), ()

    def route(self, url, body):
        server = self.server
        if server.token is not None:
            scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
            if scheme.lower() != "bearer" or token.strip() != server.token:
                raise ScimError(401, "authentication required",
                                headers=[("WWW-Authenticate", 'Bearer realm="scim"')])
        parts = [unquote(p) for p in url.path[len(BASE):].split("/") if p]
        method = self.command
        state = server.state
        kind = parts[0] if parts else None

        if kind in RESOURCE_KINDS and len(parts) <= 2:
            if len(parts) == 1 and method == "GET":
                return 200, self.list_resources(kind, url.query), ()
            if len(parts) == 1 and method == "POST":
                res = state.create(kind, self.json_body(body), self.base_url())
                return self.resource_reply(201, res, location=True)
            if len(parts) == 1:
                raise ScimError(405, "%s not allowed on %s" % (method, url.path))
            rid = parts[1]
            if_match = self.headers.get("If-Match")
            if method == "GET":
                return self.resource_reply(200, state.get(kind, rid))
            if method == "PUT":
                return self.resource_reply(200, state.replace(kind, rid, self.json_body(body),
                                                              if_match))
            if method == "PATCH":
                if server.no_patch:
                    raise ScimError(501, "PATCH is not supported by this service provider")
                return self.resource_reply(200, state.patch(kind, rid, self.json_body(body),
                                                            if_match))
            if method == "DELETE":
                state.delete(kind, rid, if_match)
                return 204, None, ()
            raise ScimError(405, "%s not allowed on %s" % (method, url.path))

        base = self.base_url()
        if kind == "ServiceProviderConfig" and len(parts) == 1:
            doc = service_provider_config(base, not server.no_patch)
        elif kind == "ResourceTypes":
            doc = self.discovery(resource_type_docs(base), parts)
        elif kind == "Schemas":
            doc = self.discovery(schema_docs(base), parts)
        else:
            raise ScimError(404, "no such endpoint %s" % url.path)
        if method != "GET":
            raise ScimError(405, "%s not allowed on %s" % (method, url.path))
        return 200, doc, ()

    @staticmethod
    def discovery(docs, parts):
        if len(parts) == 1:
            return list_response(len(docs), 1, docs)
        for d in docs:
            if len(parts) == 2 and d["id"] == parts[1]:
                return d
        raise ScimError(404, "not found")

    def list_resources(self, kind, query):
        params = {k.lower(): v for k, v in parse_qsl(query, keep_blank_values=True)}

        def number(name, default):
            try:
                return int(params.get(name.lower(), default))
            except ValueError:
                raise ScimError(400, "%s must be an integer" % name, "invalidValue") from None
        start = max(1, number("startIndex", 1))
        count = min(MAX_COUNT, max(0, number("count", 100)))
        total, page = self.server.state.search(kind, params.get("filter"), start, count)
        return list_response(total, start, [public(r) for r in page])

    # -- test API --------------------------------------------------------------

    def admin(self, path, query, body):
        """Handle /_admin/...; returns (status, object)."""
        state = self.server.state
        method = self.command
        try:
            data = json.loads(body) if body else None
        except ValueError as e:
            return 400, {"error": "malformed JSON: %s" % e}
        if (method, path) == ("POST", "/_admin/reset"):
            state.reset()
            return 200, {"ok": True}
        if (method, path) == ("POST", "/_admin/fault"):
            try:
                spec = fault_spec(data)
            except ValueError as e:
                return 400, {"error": str(e)}
            return 200, {"ok": True, "faults": state.add_fault(spec)}
        if (method, path) == ("GET", "/_admin/stats"):
            return 200, state.stats()
        if (method, path) == ("GET", "/_admin/requests"):
            since = dict(parse_qsl(query)).get("since", "0")
            if not since.isdigit():
                return 400, {"error": "since must be a non-negative integer"}
            return 200, state.requests_since(int(since))
        kind = {"/_admin/users": "Users", "/_admin/groups": "Groups"}.get(path)
        if kind and method == "GET":
            return 200, state.all(kind)
        if kind and method == "POST":
            if not isinstance(data, list):
                return 400, {"error": "the body must be a list of resources"}
            core = RESOURCE_KINDS[kind][0]
            created = []
            try:
                for i, res in enumerate(data):
                    if not isinstance(res, dict):
                        raise ScimError(400, "item %d is not an object" % i)
                    res = dict(res)
                    res.setdefault("schemas", [core])
                    rid = res.get("id")
                    created.append(state.create(kind, res, self.base_url(),
                                                str(rid) if rid is not None else None))
            except ScimError as e:
                # Loaded in order; the ones before the failing item stay.
                return e.status, {"error": e.detail, "created": created}
            return 201, created
        return 404, {"error": "no admin endpoint %s %s" % (method, path)}


def main():
    def add_arguments(ap):
        ap.add_argument("--no-patch", action="store_true", help="answer PATCH with 501")

    def configure(server, args):
        server.no_patch = args.no_patch

    serve("In-memory SCIM 2.0 target for xprov tests", Handler, State(), add_arguments, configure)


if __name__ == "__main__":
    sys.exit(main())
