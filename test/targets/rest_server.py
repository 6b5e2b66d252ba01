#!/usr/bin/env python3
"""
rest_server.py -- the reference server of xprov's REST connector protocol
(test/targets/REST_PROTOCOL.md), in memory, with fault injection.

    python3 test/targets/rest_server.py --port N [--token T] [--verbose]

Prints "listening on 127.0.0.1:N" once it accepts connections (--port 0
picks a free port and prints it).  Python 3 standard library only.

Protocol endpoints under /rest (Bearer token required when --token is given):
    POST /rest/execute    GET /rest/list    GET /rest/health
Test API under /_admin (no auth, never faulted), JSON in and out:
    POST /_admin/reset              drop accounts, operations, faults, request log
    POST /_admin/fault              queue a fault ({"mode": "clear"} clears)
    GET  /_admin/stats              counts (accounts, requests, executions, ...)
    GET  /_admin/requests?since=N   the request log from index N
    GET  /_admin/accounts           every account
    POST /_admin/accounts           load a list of accounts
"""

import json
import sys
import threading
import traceback
import uuid
from urllib.parse import parse_qsl

from target_base import RequestLog, TargetHandler, dumps, fault_spec, now_iso, serve

BASE = "/rest"
PROTOCOL = 1
TYPES = {"create", "update", "delete", "enable", "disable"}
MAX_LIMIT = 1000


class RestError(Exception):
    """An error answered with {"error": ..., "retryable": ...}."""

    def __init__(self, status, message, retryable=False, headers=()):
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.headers = list(headers)

    def body(self):
        return {"error": str(self), "retryable": self.retryable}


def public(acc):
    """An account as the protocol shows it."""
    return {"uid": acc["uid"], "object_class": acc["object_class"],
            "identity_id": acc["identity_id"], "enabled": acc["enabled"],
            "attributes": acc["attributes"]}


def check_execute(req):
    """Validate an execute body; raises RestError 400."""
    def bad(message):
        return RestError(400, message)
    if not isinstance(req, dict):
        raise bad("the body must be a JSON object")
    if req.get("protocol") != PROTOCOL or isinstance(req.get("protocol"), bool):
        raise bad("protocol must be %d" % PROTOCOL)
    if not isinstance(req.get("operation_id"), str) or not req["operation_id"]:
        raise bad("operation_id must be a non-empty string")
    if req.get("type") not in TYPES:
        raise bad("type must be one of %s" % ", ".join(sorted(TYPES)))
    if not isinstance(req.get("object_class"), str) or not req["object_class"]:
        raise bad("object_class must be a non-empty string")
    for name in ("uid", "identity_id"):
        if not isinstance(req.get(name), (str, type(None))):
            raise bad("%s must be a string or null" % name)
    if not isinstance(req.get("attributes", {}), dict):
        raise bad("attributes must be an object")
    attempt = req.get("attempt", 1)
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
        raise bad("attempt must be a positive integer")
    if req["type"] != "create" and req.get("uid") is None and req.get("identity_id") is None:
        raise bad("%s needs uid or identity_id" % req["type"])


class State(RequestLog):
    """Accounts, stored operation results, faults and the request log, under
    one lock.  Accounts are never modified in place (updates store a new
    dict), so one taken from the store can be serialized after the lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        with self.lock:
            self.accounts = {}         # uid -> account, creation order
            self.seq = 0               # list cursors: account["seq"] only grows
            self.by_identity = {}      # (object_class, identity_id) -> uid
            self.operations = {}       # operation_id -> (request, status, body bytes)
            self.executions = 0
            self.replays = 0
            self.request_id_mismatches = 0
            self.clear_log()

    def stats(self):
        with self.lock:
            methods, missing = self.request_counts()
            per_identity = {}
            for a in self.accounts.values():
                if a["identity_id"] is not None:
                    key = (a["object_class"], a["identity_id"])
                    per_identity[key] = per_identity.get(key, 0) + 1
            return {"accounts": len(self.accounts), "requests": methods,
                    "requests_total": len(self.log), "request_ids_missing": missing,
                    "request_id_mismatches": self.request_id_mismatches,
                    "executions": self.executions, "replays": self.replays,
                    "faults_pending": len(self.faults),
                    "duplicate_identity_ids": sorted(i for (_, i), n in per_identity.items()
                                                     if n > 1)}

    # -- accounts ----------------------------------------------------------------

    def _insert(self, uid, object_class, identity_id, enabled, attributes):
        if uid in self.accounts:
            raise RestError(409, "an account with uid %s exists" % uid)
        self.seq += 1
        now = now_iso()
        acc = {"uid": uid, "object_class": object_class, "identity_id": identity_id,
               "enabled": enabled, "attributes": attributes, "seq": self.seq,
               "created": now, "updated": now}
        self.accounts[uid] = acc
        if identity_id is not None:
            self.by_identity.setdefault((object_class, identity_id), uid)
        return acc

    def _remove(self, acc):
        del self.accounts[acc["uid"]]
        key = (acc["object_class"], acc["identity_id"])
        if self.by_identity.get(key) == acc["uid"]:
            del self.by_identity[key]
            # Accounts loaded through /_admin may share an identity: index the next.
            for other in self.accounts.values():
                if (other["object_class"], other["identity_id"]) == key:
                    self.by_identity[key] = other["uid"]
                    break

    def _update(self, acc, attributes, enabled=None):
        """Store a new version of acc: attributes merged (null deletes)."""
        merged = dict(acc["attributes"])
        for k, v in attributes.items():
            if v is None:
                merged.pop(k, None)
            else:
                merged[k] = v
        new = dict(acc, attributes=merged, updated=now_iso())
        if enabled is not None:
            new["enabled"] = enabled
        self.accounts[acc["uid"]] = new
        return new

    def _find(self, object_class, uid, identity_id):
        if uid is None:
            uid = self.by_identity.get((object_class, identity_id))
        acc = self.accounts.get(uid)
        if acc is None or acc["object_class"] != object_class:
            raise RestError(404, "not found")
        return acc

    def _run(self, req):
        """Execute one operation; returns (status, body object)."""
        kind = req["type"]
        oc = req["object_class"]
        uid = req.get("uid")
        identity = req.get("identity_id")
        attributes = req.get("attributes") or {}
        if kind == "create":
            if uid is None and identity is not None:
                existing = self.by_identity.get((oc, identity))
                if existing is not None:
                    # Correlated: the identity already has an account here.
                    return 200, public(self._update(self.accounts[existing], attributes))
            attributes = {k: v for k, v in attributes.items() if v is not None}
            return 201, public(self._insert(uid or str(uuid.uuid4()), oc, identity, True,
                                            attributes))
        acc = self._find(oc, uid, identity)
        if kind == "delete":
            self._remove(acc)
            return 200, {"uid": acc["uid"]}
        enabled = {"enable": True, "disable": False}.get(kind)
        return 200, public(self._update(acc, attributes, enabled))

    def execute(self, req, request_id):
        """Run or replay an operation; returns (status, body bytes)."""
        check_execute(req)
        # The request as the idempotency key's content: a retry may differ
        # only in "attempt".
        fingerprint = {k: v for k, v in req.items() if k != "attempt"}
        with self.lock:
            if request_id is not None and request_id != req["operation_id"]:
                self.request_id_mismatches += 1
            stored = self.operations.get(req["operation_id"])
            if stored is not None:
                if stored[0] != fingerprint:
                    raise RestError(422, "operation_id %s was used for a different request"
                                    % req["operation_id"])
                self.replays += 1
                return stored[1], stored[2]
            self.executions += 1
            try:
                status, body = self._run(req)
            except RestError as e:
                status, body = e.status, e.body()
            body = dumps(body)
            self.operations[req["operation_id"]] = (fingerprint, status, body)
            return status, body

    def list(self, object_class, cursor, limit):
        """One page of accounts after cursor (an account seq), creation order."""
        with self.lock:
            items = []
            more = False
            for acc in self.accounts.values():
                if acc["seq"] <= cursor or acc["object_class"] != object_class:
                    continue
                if len(items) == limit:
                    more = True
                    break
                items.append(acc)
        page = [{"uid": a["uid"], "identity_id": a["identity_id"], "enabled": a["enabled"],
                 "attributes": a["attributes"]} for a in items]
        return {"items": page,
                "next_cursor": str(items[-1]["seq"]) if more and items else None}

    def all(self):
        with self.lock:
            return [dict(public(a), created=a["created"], updated=a["updated"])
                    for a in self.accounts.values()]

    def load(self, items):
        """Insert accounts directly (test setup); returns them."""
        loaded = []
        with self.lock:
            for i, item in enumerate(items):
                if not isinstance(item, dict) or not isinstance(item.get("attributes", {}), dict):
                    raise RestError(400, "item %d: not an account object" % i)
                uid = item.get("uid") or str(uuid.uuid4())
                acc = self._insert(str(uid), item.get("object_class", "user"),
                                   item.get("identity_id"), item.get("enabled", True) is not False,
                                   dict(item.get("attributes", {})))
                loaded.append(public(acc))
        return loaded


class Handler(TargetHandler):
    server_version = "xprov-rest-target/1"
    API_PREFIX = BASE
    PLAIN_ERROR = {"retryable": False}

    def api(self, url, body):
        return self.rest(url, body)

    def fault_body(self, status):
        return dumps(RestError(status, "injected fault", retryable=status != 401).body())

    # -- protocol ------------------------------------------------------------------

    def rest(self, url, body):
        """Handle a /rest request: (status, body bytes, headers)."""
        try:
            return self.route(url, body)
        except RestError as e:
            return e.status, dumps(e.body()), e.headers
        except Exception as e:                 # a bug here: say so loudly, keep serving
            traceback.print_exc()
            return 500, dumps({"error": "internal error: %r" % e, "retryable": True}), ()

    def route(self, url, body):
        server = self.server
        if server.token is not None:
            scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
            if scheme.lower() != "bearer" or token.strip() != server.token:
                raise RestError(401, "authentication required",
                                headers=[("WWW-Authenticate", 'Bearer realm="rest"')])
        endpoint = (self.command, url.path)
        if endpoint == ("GET", BASE + "/health"):
            return 200, dumps({"ok": True}), ()
        if endpoint == ("POST", BASE + "/execute"):
            ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if ctype != "application/json":
                raise RestError(415, "Content-Type must be application/json")
            try:
                req = json.loads(body)
            except ValueError as e:
                raise RestError(400, "malformed JSON: %s" % e) from None
            status, reply = server.state.execute(req, self.headers.get("X-Request-Id"))
            return status, reply, ()
        if endpoint == ("GET", BASE + "/list"):
            params = dict(parse_qsl(url.query, keep_blank_values=True))
            cursor = params.get("cursor") or "0"
            limit = params.get("limit", "100")
            if not cursor.isdigit():
                raise RestError(400, "bad cursor")
            if not limit.isdigit() or not 1 <= int(limit) <= MAX_LIMIT:
                raise RestError(400, "limit must be 1..%d" % MAX_LIMIT)
            page = server.state.list(params.get("object_class", "user"), int(cursor), int(limit))
            return 200, dumps(page), ()
        if url.path in (BASE + "/health", BASE + "/execute", BASE + "/list"):
            raise RestError(405, "%s not allowed on %s" % endpoint)
        raise RestError(404, "no endpoint %s" % url.path)

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
        if (method, path) == ("GET", "/_admin/accounts"):
            return 200, state.all()
        if (method, path) == ("POST", "/_admin/accounts"):
            if not isinstance(data, list):
                return 400, {"error": "the body must be a list of accounts"}
            try:
                return 201, state.load(data)
            except RestError as e:
                # Loaded in order; the ones before the failing item stay.
                return e.status, {"error": str(e)}
        return 404, {"error": "no admin endpoint %s %s" % (method, path)}


def main():
    serve("Reference server of xprov's REST protocol", Handler, State())


if __name__ == "__main__":
    sys.exit(main())
