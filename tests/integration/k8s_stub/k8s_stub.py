#!/usr/bin/env python3
"""k8s_stub.py: a tiny HTTPS stand-in for the Kubernetes API server's StatefulSet scale subresource.

Used by tests/unit/test_actuator.c. It serves exactly one StatefulSet, checks what a real API server
would (bearer token, path, method, merge-patch content type, JSON body), keeps the replica count, and
appends one JSON line per request to --log so the test can assert what it was sent.
"""
import argparse
import json
import os
import re
import ssl
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

PATH_RE = re.compile(r"^/apis/apps/v1/namespaces/([^/]+)/statefulsets/([^/]+)/scale$")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--name", required=True, help="the StatefulSet this server knows")
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--readonly-token", default=None, help="a token allowed to GET but not PATCH (403)")
    ap.add_argument("--conflict-at", type=int, default=-1, help="a PATCH to this count answers 409")
    ap.add_argument("--port-file", required=True, help="the chosen port is written here once listening")
    ap.add_argument("--log", required=True)
    args = ap.parse_args()
    state = {"replicas": args.replicas}
    log = open(args.log, "a", buffering=1)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *a):  # quiet: the JSON log is the record
            pass

        def reply(self, code, obj):
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def status(self, code, reason, message):
            self.reply(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                              "message": message, "reason": reason, "code": code})

        def scale(self, ns, name):
            spec = {"replicas": state["replicas"]} if state["replicas"] else {}  # omitempty, as the real one
            return {"kind": "Scale", "apiVersion": "autoscaling/v1",
                    "metadata": {"name": name, "namespace": ns}, "spec": spec,
                    "status": {"replicas": state["replicas"]}}

        def handle_any(self, method):
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n).decode("utf-8", "replace") if n else ""
            given = self.headers.get("Authorization")
            readonly = args.readonly_token is not None and given == "Bearer " + args.readonly_token
            auth_ok = given == "Bearer " + args.token or readonly
            ctype = self.headers.get("Content-Type") or ""
            log.write(json.dumps({"method": method, "path": self.path, "content_type": ctype,
                                  "auth_ok": auth_ok, "body": body}) + "\n")
            if not auth_ok:
                return self.status(401, "Unauthorized", "Unauthorized")
            m = PATH_RE.match(self.path)
            if not m or m.group(1) != args.namespace or m.group(2) != args.name:
                return self.status(404, "NotFound", 'statefulsets.apps "%s" not found' % (m.group(2) if m else "?"))
            if method == "GET":
                return self.reply(200, self.scale(*m.groups()))
            if method != "PATCH":
                return self.status(405, "MethodNotAllowed", "method not allowed")
            if readonly:
                return self.status(403, "Forbidden", 'cannot patch resource "statefulsets/scale"')
            if ctype.split(";")[0].strip() != "application/merge-patch+json":
                return self.status(415, "UnsupportedMediaType", "unsupported content type " + ctype)
            try:
                doc = json.loads(body)
                r = doc["spec"]["replicas"]
                ok = list(doc) == ["spec"] and list(doc["spec"]) == ["replicas"] and type(r) is int and r >= 0
            except (ValueError, KeyError, TypeError):
                ok = False
            if not ok:
                return self.status(422, "Invalid", "expected {\"spec\":{\"replicas\":N}}")
            if r == args.conflict_at:
                return self.status(409, "Conflict", "the object has been modified; please try again")
            state["replicas"] = r
            return self.reply(200, self.scale(*m.groups()))

        def do_GET(self):
            self.handle_any("GET")

        def do_PATCH(self):
            self.handle_any("PATCH")

        def do_PUT(self):
            self.handle_any("PUT")

    srv = HTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(srv.server_address[1]))
    os.rename(tmp, args.port_file)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
