"""A loopback HTTP server that misbehaves on purpose, for the HTTP client's budget tests.

It answers GET /v1/models as tests/llm_server.py does (the model under test is not listed, so
the cache identity is the same as against a healthy LLMServer) and every POST by `mode`:

* silent — reads the request and never answers;
* endless — 200 with no length and a body that never ends, sent as fast as it goes;
* drip — 200 announcing 10,000 bytes and sending one byte every 0.1 s;
* json — 200 with `body` (bytes) as the answer;
* status — `status` with `body`; `{auth}` in the body is replaced by the Authorization header
  (a server echoing the key in its error message);
* redirect — 302 to `location`.
With `upstream` set, the first `healthy_first` POSTs are forwarded there (a server that turns
hostile in the middle of a run). It binds 127.0.0.1 only.
"""

from __future__ import annotations

import http.client
import json
import socket
import socketserver
import threading
import time
from urllib.parse import urlsplit

MODELS = json.dumps({"object": "list", "data": [{"id": "oracle", "object": "model"}]}).encode()


class Hostile:
    def __init__(self, mode: str, body: bytes = b"", status: int = 200, location: str = "",
                 upstream: str | None = None, healthy_first: int = 0):
        self.mode, self.body, self.status, self.location = mode, body, status, location
        self.upstream, self.healthy_first = upstream, healthy_first
        self.lock = threading.Lock()
        self.posts = 0
        self.forwarded = 0
        self.first_post_at: float | None = None
        self.stop = threading.Event()
        owner = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                owner._handle(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

            def handle_error(self, request, client_address):
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.root = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.url = self.root + "/v1"

    # -- one connection, possibly several requests (keep-alive)
    def _handle(self, conn: socket.socket) -> None:
        f = conn.makefile("rb")
        try:
            while not self.stop.is_set():
                line = f.readline()
                if not line:
                    return
                method, path = line.decode("latin-1").split()[:2]
                headers = {}
                while True:
                    h = f.readline().decode("latin-1").strip()
                    if not h:
                        break
                    k, _, v = h.partition(":")
                    headers[k.strip().lower()] = v.strip()
                body = f.read(int(headers.get("content-length") or 0))
                if method == "GET":
                    self._reply(conn, 200 if path.rstrip("/").endswith("/models") else 404, MODELS)
                    continue
                with self.lock:
                    self.posts += 1
                    if self.first_post_at is None:
                        self.first_post_at = time.time()
                    forward = self.upstream is not None and self.forwarded < self.healthy_first
                    if forward:
                        self.forwarded += 1
                if forward:
                    status, data = _forward(self.upstream, path, body, headers)
                    self._reply(conn, status, data)
                    continue
                if not self._misbehave(conn, headers):
                    return
        except (OSError, ValueError):
            return

    def _misbehave(self, conn: socket.socket, headers: dict) -> bool:
        """Answer one POST by the mode; False when the connection is done."""
        mode = self.mode
        if mode == "silent":
            self.stop.wait(60)
            return False
        if mode == "endless":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n")
            chunk = b'{"choices": [' + b" " * 65536
            while not self.stop.is_set():
                conn.sendall(chunk)
            return False
        if mode == "drip":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 10000\r\n\r\n")
            for _ in range(10000):
                if self.stop.wait(0.1):
                    break
                conn.sendall(b" ")
            return False
        if mode == "redirect":
            self._reply(conn, 302, b"", {"Location": self.location})
            return True
        body = self.body.replace(b"{auth}", headers.get("authorization", "").encode())
        self._reply(conn, self.status, body)
        return True

    @staticmethod
    def _reply(conn: socket.socket, status: int, data: bytes, extra: dict | None = None) -> None:
        head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in (extra or {}).items())
        conn.sendall(head.encode() + b"\r\n" + data)

    def __enter__(self) -> "Hostile":
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


def _forward(upstream: str, path: str, body: bytes, headers: dict) -> tuple[int, bytes]:
    parts = urlsplit(upstream)
    conn = http.client.HTTPConnection(parts.netloc, timeout=30)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json",
                                                       "Authorization": headers.get("authorization", "")})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()
