#!/usr/bin/env python3
"""
webhook_receiver.py -- a receiver of xprov's event webhooks for the tests:
it verifies each delivery's signature, parses its body and logs every request
in arrival order, with fault switches like the other targets.  Python 3
standard library only.

    python3 test/targets/webhook_receiver.py --port N [--secret NAME=SECRET ...]
                                             [--max-age 300] [--accept-bad] [--verbose]

Prints "listening on 127.0.0.1:N" once it accepts connections (--port 0
picks a free port and prints it).

Deliveries: POST /hooks/<name>.  <name> picks the secret (registered with
--secret NAME=SECRET or POST /_admin/secret) and the fault switches that
apply.  A delivery's signature is good when X-Xprov-Signature is
"t=<unix seconds>,v1=<hex>", v1 is the lowercase hex HMAC-SHA256 (key: the
secret's UTF-8 bytes) of "<t>." + the raw body bytes (compared in constant
time), and t is at most --max-age seconds old (and no more than that in the
future).  A request with a bad signature is answered 401 (200 with
--accept-bad); one whose signature is good is answered 204, unless a fault
says otherwise.  Every request to /hooks/ is logged, faulted ones included,
whatever its body.

Test API under /_admin (never faulted), JSON in and out:
    POST /_admin/secret   {"name": N, "secret": S}   register or replace N's secret
    POST /_admin/fault    {"mode": M, "count": n, "name": N, "delay_ms": ms}
          queue a fault for the next n requests (count -1: until cleared;
          default 1) to /hooks/N (any name when "name" is absent).  Modes:
            "500", "503"  answer that status (body {"error": ...})
            "200"         answer 200 with a body ({"received": <event id>}), as
                          many subscribers do (the default answer is a 204)
            "drop"        close the connection without an answer
            "hang"        wait delay_ms (default 60000), then drop
            "delay"       wait delay_ms (default 1000), then answer normally
          Faults are taken in the order queued, the first that applies.
          {"mode": "clear"} (with "name": only that name's) removes them.
    GET  /_admin/events?name=N&since=I   the log (of name N; from index I), a list of
          {"i", "name", "delivery", "request_id", "event_header", "content_type",
           "event_id", "type", "tenant_id", "time", "data", "body_keys",
           "body_error", "signature_ok", "signature_error", "received_at",
           "fault", "status"}
          (received_at: unix seconds when the request arrived; status: the
          status answered, null if none was (drop, hang) or not yet; fault: the
          fault's mode or null; delivery and request_id: the X-Xprov-Delivery
          and X-Request-Id headers; event_header: X-Xprov-Event; event_id,
          type, tenant_id, time, data: from the JSON body, null when absent)
    GET  /_admin/stats?name=N             {"requests", "answered_2xx", "distinct_events",
                                           "bad_signatures", "in_progress"}
    POST /_admin/reset                    clear the log and the faults (secrets stay)
"""

import hashlib
import hmac
import json
import sys
import threading
import time
from urllib.parse import parse_qs, urlsplit

from target_base import TargetHandler, dumps, serve

HOOKS = "/hooks/"
MODES = {"200", "500", "503", "drop", "hang", "delay"}


def fault_spec(data):
    """Validate a POST /_admin/fault body; raises ValueError."""
    if not isinstance(data, dict):
        raise ValueError("the body must be an object")
    mode = str(data.get("mode"))
    name = data.get("name")
    if name is not None and not isinstance(name, str):
        raise ValueError("name must be a string")
    if mode == "clear":
        return {"mode": mode, "name": name}
    if mode not in MODES:
        raise ValueError("mode must be one of %s or clear" % ", ".join(sorted(MODES)))
    count = data.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or count == 0 or count < -1:
        raise ValueError("count must be a positive integer or -1")
    delay_ms = data.get("delay_ms", 60000 if mode == "hang" else 1000)
    if not isinstance(delay_ms, int) or isinstance(delay_ms, bool) or delay_ms < 0:
        raise ValueError("delay_ms must be a non-negative integer")
    return {"mode": mode, "count": count, "name": name, "delay_ms": delay_ms}


def check_signature(header, body, secret, max_age, now):
    """(ok, reason) for an X-Xprov-Signature header over the raw body."""
    if secret is None:
        return False, "no secret registered for this name"
    if not header:
        return False, "no X-Xprov-Signature header"
    parts = {}
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or key in parts:
            return False, "malformed X-Xprov-Signature: %r" % header
        parts[key] = value
    t, v1 = parts.get("t"), parts.get("v1")
    if t is None or v1 is None or not t.isdigit():
        return False, "malformed X-Xprov-Signature: %r" % header
    age = now - int(t)
    if age > max_age:
        return False, "timestamp too old (%d s)" % age
    if age < -max_age:
        return False, "timestamp in the future (%d s)" % -age
    want = hmac.new(secret.encode("utf-8"), t.encode() + b"." + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(want, v1):
        return False, "v1 does not match"
    return True, None


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.secrets = {}
        self.max_age = 300
        self.accept_bad = False
        self.reset()

    def reset(self):
        with self.lock:
            self.log = []
            self.faults = []

    def add_fault(self, spec):
        with self.lock:
            if spec["mode"] == "clear":
                self.faults = [f for f in self.faults
                               if spec["name"] is not None and f["name"] != spec["name"]]
            else:
                self.faults.append(spec)
            return [dict(f) for f in self.faults]

    def begin(self, name, entry):
        """Log a request; take the first queued fault that applies to it."""
        with self.lock:
            fault = None
            for f in self.faults:
                if f["name"] is None or f["name"] == name:
                    if f["count"] > 0:
                        f["count"] -= 1
                        if f["count"] == 0:
                            self.faults.remove(f)
                    fault = dict(f)
                    break
            entry["i"] = len(self.log)
            entry["fault"] = fault and fault["mode"]
            self.log.append(entry)
        return fault

    def finish(self, entry, status):
        with self.lock:
            entry["status"] = status
            entry["done"] = True

    def events(self, name, since):
        with self.lock:
            return [{k: v for k, v in e.items() if k != "done"} for e in self.log[since:]
                    if name is None or e["name"] == name]

    def stats(self, name):
        with self.lock:
            es = [e for e in self.log if name is None or e["name"] == name]
            return {"requests": len(es),
                    "answered_2xx": sum(1 for e in es if e["status"] and 200 <= e["status"] < 300),
                    "distinct_events": len({e["event_id"] for e in es if e["event_id"]}),
                    "bad_signatures": sum(1 for e in es if not e["signature_ok"]),
                    "in_progress": sum(1 for e in es if not e.get("done"))}


class Handler(TargetHandler):
    API_PREFIX = HOOKS.rstrip("/")

    def handle_request(self):
        url = urlsplit(self.path)
        path = url.path
        state = self.server.state
        received_at = time.time()
        try:
            body = self.read_body()
        except Exception as e:          # BadRequest, or a connection gone
            self.close_connection = True
            self.send_plain_error(400, "cannot read the body: %s" % e)
            return
        if path.startswith("/_admin/"):
            status, obj = self.admin(path, url.query, body)
            self.send(status, dumps(obj))
            return
        if not path.startswith(HOOKS) or self.command != "POST" or len(path) == len(HOOKS):
            self.send_plain_error(404, "not found (POST /hooks/<name>)")
            return

        name = path[len(HOOKS):]
        with state.lock:
            secret = state.secrets.get(name)
        ok, why = check_signature(self.headers.get("X-Xprov-Signature"), body, secret,
                                  state.max_age, int(received_at))
        entry = {"name": name, "delivery": self.headers.get("X-Xprov-Delivery"),
                 "request_id": self.headers.get("X-Request-Id"),
                 "event_header": self.headers.get("X-Xprov-Event"),
                 "content_type": self.headers.get("Content-Type"),
                 "event_id": None, "type": None, "tenant_id": None, "time": None,
                 "data": None, "body_keys": None, "body_error": None,
                 "signature_ok": ok, "signature_error": why,
                 "received_at": received_at, "status": None}
        try:
            doc = json.loads(body.decode("utf-8"))
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            entry["body_keys"] = sorted(doc)
            for key, field in (("id", "event_id"), ("type", "type"), ("tenant_id", "tenant_id"),
                               ("time", "time"), ("data", "data")):
                entry[field] = doc.get(key)
        except ValueError as e:         # UnicodeDecodeError and JSONDecodeError too
            entry["body_error"] = str(e)

        fault = state.begin(name, entry)
        status = None
        try:
            mode = fault and fault["mode"]
            if mode in ("delay", "hang"):
                time.sleep(fault["delay_ms"] / 1000)
            if mode in ("drop", "hang"):
                self.drop()
            elif mode in ("500", "503"):
                status = self.send(int(mode), dumps({"error": "fault %s" % mode}))
            elif mode == "200":
                status = self.send(200, dumps({"received": entry["event_id"]}))
            elif ok or state.accept_bad:
                status = self.send(204, b"")
            else:
                status = self.send(401, dumps({"error": "bad signature: %s" % why}))
        finally:
            state.finish(entry, status)

    def admin(self, path, query, body):
        state = self.server.state
        qs = parse_qs(query)
        try:
            data = json.loads(body) if body else None
        except ValueError:
            return 400, {"error": "the body is not JSON"}
        if path == "/_admin/secret" and self.command == "POST":
            if not isinstance(data, dict) or not isinstance(data.get("name"), str) \
                    or not isinstance(data.get("secret"), str):
                return 400, {"error": "want {\"name\": ..., \"secret\": ...}"}
            with state.lock:
                state.secrets[data["name"]] = data["secret"]
            return 200, {"name": data["name"]}
        if path == "/_admin/fault" and self.command == "POST":
            try:
                spec = fault_spec(data)
            except ValueError as e:
                return 400, {"error": str(e)}
            return 200, {"faults": state.add_fault(spec)}
        if path == "/_admin/events" and self.command == "GET":
            try:
                since = int(qs.get("since", ["0"])[0])
            except ValueError:
                return 400, {"error": "since must be an integer"}
            return 200, state.events(qs.get("name", [None])[0], since)
        if path == "/_admin/stats" and self.command == "GET":
            return 200, state.stats(qs.get("name", [None])[0])
        if path == "/_admin/reset" and self.command == "POST":
            state.reset()
            return 200, {"reset": True}
        return 404, {"error": "no such admin endpoint"}


def add_arguments(ap):
    ap.add_argument("--secret", action="append", default=[], metavar="NAME=SECRET",
                    help="the secret of /hooks/NAME (repeatable)")
    ap.add_argument("--max-age", type=int, default=300,
                    help="oldest signature timestamp accepted, in seconds (default 300)")
    ap.add_argument("--accept-bad", action="store_true",
                    help="answer 204 to a bad signature too (it is still logged as bad)")


def configure(server, args):
    state = server.state
    for item in args.secret:
        name, sep, secret = item.partition("=")
        if not sep or not name:
            sys.exit("--secret wants NAME=SECRET")
        state.secrets[name] = secret
    state.max_age = args.max_age
    state.accept_bad = args.accept_bad


if __name__ == "__main__":
    serve("A receiver of xprov's event webhooks, for the tests", Handler, State(),
          add_arguments, configure)
