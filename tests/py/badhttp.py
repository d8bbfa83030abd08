#!/usr/bin/env python3
"""badhttp.py PORT ROOT MODE_FILE REQUEST_LOG [CERT KEY]

A small HTTP/1.1 server (HTTPS with CERT and KEY) serving the files under ROOT, with the faults
that nginx cannot be made to show. The mode is read from MODE_FILE at every request (so a test
changes it while the server runs); it is a ','-separated list of:

  good              correct answers: 200, 206 with Content-Range, 404, HEAD
  ignore-range      200 with the whole file to every GET, Range or not
  truncate          announce the full length, send half the body, close the connection
  wrong-range       206 whose Content-Range starts one byte after what was asked (and that body)
  overlong          206 with the right Content-Range but one byte more in Content-Length and body
  no-content-range  206 without Content-Range
  redirect-http     302 to the same path on http://127.0.0.1:HTTP_PORT (given as redirect-http=PORT)
  redirect-loop     302 to the same URL, for ever
  503=N:S           the first N requests after the mode was set get 503 with Retry-After: S
  404               404 to everything
  only-head         correct HEAD answers, 500 to every GET
  delay=MS          every request waits MS milliseconds before it is answered (a far server);
                    combines with the others

Every request is logged to REQUEST_LOG as "METHOD PATH range=RANGE cache-control=VALUE" (one
line, appended), and every body cut short by the client as "CUT PATH SENT/LENGTH".
"""
import email.utils
import http.server
import os
import socketserver
import ssl
import sys
import threading
import time
import urllib.parse

PORT, ROOT, MODE_FILE, LOG = int(sys.argv[1]), os.path.realpath(sys.argv[2]), sys.argv[3], sys.argv[4]
CERT = sys.argv[5] if len(sys.argv) > 6 else None
KEY = sys.argv[6] if len(sys.argv) > 6 else None

lock = threading.Lock()
state = {"mode": None, "count": 0}


def current_mode():
    try:
        text = open(MODE_FILE).read().strip()
    except OSError:
        text = "good"
    with lock:
        if text != state["mode"]:
            state["mode"], state["count"] = text, 0
        state["count"] += 1
        n = state["count"]
    opts = {}
    for part in text.split(","):
        k, _, v = part.partition("=")
        opts[k.strip()] = v.strip()
    return opts, n


class Body:
    """Bytes [start, end] of the file at path, plus `extra` after them; read as they are sent,
    so that a request costs what it answers, not the whole file (a blob of the tests is 64 MiB
    and the daemon asks for 1 MiB ranges of it many at a time)."""

    def __init__(self, path, start, end, extra=b""):
        self.path, self.start, self.end, self.extra = path, start, end, extra

    def __len__(self):
        return max(0, self.end + 1 - self.start) + len(self.extra)


def pieces(body, size=65536):
    if isinstance(body, Body):
        with open(body.path, "rb") as f:
            pos = body.start
            while pos <= body.end:
                piece = os.pread(f.fileno(), min(size, body.end + 1 - pos), pos)
                if not piece:
                    raise OSError(f"{body.path} ended at {pos}")
                yield piece
                pos += len(piece)
        body = body.extra
    for i in range(0, len(body), size):
        yield body[i:i + size]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send(self, status, headers=(), body=b"", length=None, close=False):
        """body: bytes or a Body (a file's byte range, read piece by piece as it is sent)."""
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        if close:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            sent = 0
            try:
                for piece in pieces(body):
                    self.wfile.write(piece)
                    sent += len(piece)
            except (BrokenPipeError, ConnectionResetError):
                with lock, open(LOG, "a") as f:
                    f.write(f"CUT {self.path} {sent}/{len(body)}\n")
                self.close_connection = True
                return
        if close:
            self.close_connection = True

    def file(self):
        rel = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
        p = os.path.realpath(os.path.join(ROOT, rel))
        if not (p == ROOT or p.startswith(ROOT + "/")) or not os.path.isfile(p):
            return None
        return p

    def handle_any(self):
        opts, n = current_mode()
        rng = self.headers.get("Range", "")
        cc = self.headers.get("Cache-Control", "")
        with lock, open(LOG, "a") as f:
            f.write(f"{self.command} {self.path} range={rng} cache-control={cc}\n")
        if "delay" in opts:
            time.sleep(float(opts["delay"]) / 1000)
        if "503" in opts:
            count, _, secs = opts["503"].partition(":")
            if n <= int(count):
                return self.send(503, [("Retry-After", secs or "1")], b"busy\n")
        if "404" in opts:
            return self.send(404, body=b"not here\n")
        if "redirect-loop" in opts:
            return self.send(302, [("Location", self.path)])
        if "redirect-http" in opts:
            return self.send(302, [("Location", f"http://127.0.0.1:{opts['redirect-http']}{self.path}")])
        if "only-head" in opts and self.command == "GET":
            return self.send(500, body=b"no\n")
        p = self.file()
        if p is None:
            return self.send(404, body=b"not found\n")
        st = os.stat(p)
        size = st.st_size
        mtime = email.utils.formatdate(st.st_mtime, usegmt=True)
        common = [("Last-Modified", mtime), ("ETag", f'"{st.st_mtime_ns:x}-{size:x}"')]
        if self.command == "HEAD":
            return self.send(200, common, length=size)
        if "truncate" in opts:
            start, end = 0, size - 1
            if rng.startswith("bytes="):
                a, _, b = rng[6:].partition("-")
                start, end = int(a), min(int(b) if b else size - 1, size - 1)
            body = Body(p, start, end)
            status = 206 if rng else 200
            hdr = common + ([("Content-Range", f"bytes {start}-{end}/{size}")] if rng else [])
            self.send_response(status)
            for k, v in hdr:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            for piece in pieces(Body(p, start, start + len(body) // 2 - 1)):
                self.wfile.write(piece)
            self.wfile.flush()
            self.close_connection = True
            return
        if not rng or "ignore-range" in opts:
            return self.send(200, common, Body(p, 0, size - 1))
        a, _, b = rng[6:].partition("-")
        start = int(a)
        end = min(int(b) if b else size - 1, size - 1)
        if start >= size:
            return self.send(416, [("Content-Range", f"bytes */{size}")])
        if "wrong-range" in opts:
            start, end = start + 1, min(end + 1, size - 1)
        body = Body(p, start, end)
        hdr = common + [("Content-Range", f"bytes {start}-{end}/{size}")]
        if "no-content-range" in opts:
            hdr = common
        if "overlong" in opts:
            body.extra = b"X"
        return self.send(206, hdr, body)

    do_GET = handle_any
    do_HEAD = handle_any


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


srv = Server(("127.0.0.1", PORT), Handler)
if CERT:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(CERT, KEY)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(f"badhttp listening on {PORT}", flush=True)
srv.serve_forever()
