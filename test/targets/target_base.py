"""
target_base.py -- what the bundled test targets (scim_server.py,
rest_server.py) share: the request log with queued faults, the HTTP
handler's framing and fault answers, /_admin/fault validation, and the
server's main loop.  Python 3 standard library only.

A target's State inherits RequestLog (and calls clear_log() from its reset(),
under its lock); its Handler inherits TargetHandler and supplies API_PREFIX,
api(url, body) -> (status, body bytes, headers) and fault_body(status).
"""

import argparse
import json
import signal
import socket
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAULT_MODES = {"500", "503", "429", "401", "delay", "drop", "garbage", "hang", "echo"}


def now_iso():
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def dumps(obj):
    return json.dumps(obj, separators=(",", ":")).encode()


def fault_spec(data):
    """Validate a POST /_admin/fault body; raises ValueError."""
    if not isinstance(data, dict):
        raise ValueError("the body must be an object")
    mode = str(data.get("mode"))
    if mode == "clear":
        return {"mode": mode}
    if mode not in FAULT_MODES:
        raise ValueError("mode must be one of %s or clear" % ", ".join(sorted(FAULT_MODES)))
    count = data.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or count == 0 or count < -1:
        raise ValueError("count must be a positive integer or -1")
    method = data.get("method")
    prefix = data.get("path_prefix")
    if not isinstance(method, (str, type(None))) or not isinstance(prefix, (str, type(None))):
        raise ValueError("method and path_prefix must be strings")
    after = data.get("after", False)
    if not isinstance(after, bool) or (after and mode == "delay"):
        raise ValueError("after must be a boolean, and makes no sense with delay")
    delay_ms = data.get("delay_ms", 60000 if mode == "hang" else 1000)
    retry_after = data.get("retry_after", 1 if mode == "429" else None)
    for name, v in (("delay_ms", delay_ms), ("retry_after", retry_after)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise ValueError("%s must be a non-negative integer" % name)
    return {"mode": mode, "count": count, "method": method and method.upper(),
            "path_prefix": prefix, "after": after, "delay_ms": delay_ms,
            "retry_after": retry_after}


class RequestLog:
    """Requests seen and faults queued.  The inheriting State owns self.lock."""

    def clear_log(self):
        self.faults = []
        self.log = []

    def begin_request(self, method, path, query, request_id):
        """Log a request, and take the first queued fault that applies to it
        (None if none does)."""
        with self.lock:
            fault = None
            for f in self.faults:
                if (f["method"] is None or f["method"] == method) and \
                        (f["path_prefix"] is None or path.startswith(f["path_prefix"])):
                    if f["count"] > 0:
                        f["count"] -= 1
                        if f["count"] == 0:
                            self.faults.remove(f)
                    fault = dict(f)
                    break
            entry = {"i": len(self.log), "method": method, "path": path, "query": query,
                     "status": None, "request_id": request_id,
                     "fault": fault and fault["mode"]}
            self.log.append(entry)
        return entry, fault

    def finish_request(self, entry, status):
        with self.lock:
            entry["status"] = status

    def add_fault(self, spec):
        with self.lock:
            if spec["mode"] == "clear":
                self.faults = []
            else:
                self.faults.append(spec)
            return list(self.faults)

    def request_counts(self):
        """Requests by method, and how many came without X-Request-Id; call
        under the lock."""
        methods = {}
        missing = 0
        for e in self.log:
            methods[e["method"]] = methods.get(e["method"], 0) + 1
            missing += e["request_id"] is None
        return methods, missing

    def requests_since(self, since):
        with self.lock:
            return [dict(e) for e in self.log[since:]]


class BadRequest(Exception):
    """A request whose body cannot be read; the connection is closed."""

    def __init__(self, status, detail):
        super().__init__(detail)
        self.status = status


class TargetHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True     # small responses must not wait for delayed ACKs
    # Buffer writes so that a response's head and body leave in one send
    # (handle_one_request flushes after each request): each send is a packet
    # and a wake-up of the client, as costly as the rest of the request.
    wbufsize = -1

    API_PREFIX = None                  # the protocol's path prefix
    CONTENT_TYPE = "application/json"  # of the protocol's answers
    PLAIN_ERROR = {}                   # extra keys of /_admin and framing errors

    def log_message(self, format, *args):
        if self.server.verbose:
            super().log_message(format, *args)

    def do_GET(self):
        self.handle_request()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def handle_expect_100(self):
        super().handle_expect_100()
        self.wfile.flush()                 # the interim 100 Continue goes out now
        return True

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise BadRequest(411, "send request bodies with Content-Length, not chunked")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            raise BadRequest(400, "bad Content-Length")
        return self.rfile.read(length) if length else b""

    def send(self, status, body, content_type="application/json", headers=()):
        self.send_response(status)
        if body:
            self.send_header("Content-Type", content_type)
        if status != 204:                      # RFC 9110: no Content-Length on 204
            self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(body)
        return status

    def send_api(self, status, body, headers=()):
        return self.send(status, body, self.CONTENT_TYPE, headers)

    def send_plain_error(self, status, message):
        return self.send(status, dumps(dict({"error": message}, **self.PLAIN_ERROR)))

    def drop(self):
        """Close the connection without a response."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def handle_request(self):
        url = urlsplit(self.path)
        path = url.path
        try:
            body = self.read_body()
        except BadRequest as e:
            self.close_connection = True
            self.send_plain_error(e.status, str(e))
            return
        if path.startswith("/_admin/"):
            status, obj = self.admin(path, url.query, body)
            self.send(status, dumps(obj))
            return
        if path != self.API_PREFIX and not path.startswith(self.API_PREFIX + "/"):
            self.send_plain_error(404, "not found")
            return

        state = self.server.state
        entry, fault = state.begin_request(self.command, path, url.query,
                                           self.headers.get("X-Request-Id"))
        status = None
        try:
            if fault and fault["mode"] == "delay":
                time.sleep(fault["delay_ms"] / 1000)
            if fault is None or fault["mode"] == "delay":
                status = self.send_api(*self.api(url, body))
            else:
                if fault["after"]:
                    self.api(url, body)         # the target acts; the client never hears
                status = self.send_fault(fault)
        finally:
            state.finish_request(entry, status)

    def send_fault(self, fault):
        """Answer (or not) as the fault says; returns the status sent or None."""
        mode = fault["mode"]
        if mode in ("drop", "hang"):
            if mode == "hang":
                time.sleep(fault["delay_ms"] / 1000)
            self.drop()
            return None
        if mode == "garbage":
            return self.send_api(200, b"<html>this is not JSON")
        if mode == "echo":
            # a debugging proxy's 400: the request's headers, credentials included
            return self.send_api(400, dumps({"detail": "bad request",
                                             "headers": dict(self.headers.items())}))
        headers = []
        if fault["retry_after"] is not None:
            headers.append(("Retry-After", str(fault["retry_after"])))
        return self.send_api(int(mode), self.fault_body(int(mode)), headers)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128     # many client connections may open at once


def serve(description, handler, state, add_arguments=None, configure=None):
    """Parse --port/--token/--verbose (and what add_arguments(ap) adds), serve
    until SIGTERM or SIGINT.  configure(server, args) sets the rest."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--port", type=int, required=True, help="0 picks a free port")
    ap.add_argument("--token", help="require Authorization: Bearer TOKEN on the protocol")
    ap.add_argument("--verbose", action="store_true", help="log every request to stderr")
    if add_arguments:
        add_arguments(ap)
    args = ap.parse_args()

    server = Server(("127.0.0.1", args.port), handler)
    server.state = state
    server.token = args.token
    server.verbose = args.verbose
    if configure:
        configure(server, args)

    def stop(signum, frame):
        raise SystemExit(0)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("listening on 127.0.0.1:%d" % server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except SystemExit:
        pass
    finally:
        server.server_close()
