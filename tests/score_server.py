"""A loopback `/v1/score` server (vLLM's request and answer shapes) for faults and timing.

Each (text_1, text_2) pair scores a fixed function of its texts, so any replica gives the same
answer. `latency` delays every answer (the throughput benchmark's 200 ms server); `kill()`
makes the replica die mid-run: requests in flight get their connection dropped without an
answer and new connections are refused. `answered` counts every finished request by payload,
so a test can prove no finished request was sent twice. It binds 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def pair_score(q: str, d: str) -> float:
    h = hashlib.sha256(f"{q}\x00{d}".encode("utf-8")).digest()
    return int.from_bytes(h[:4], "little") / 2**32 * 10 - 5


class ScoreServer:
    def __init__(self, latency: float = 0.0, model: str = "ce"):
        self.latency, self.model = latency, model
        self.answered: Counter = Counter()
        self.requests = 0  # POSTs
        self.gets = 0
        self.max_in_flight = 0
        self._in_flight = 0
        self.dead = threading.Event()
        self._lock = threading.Lock()
        state = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body go out in two writes: with Nagle on, the body waits for the client's
            # delayed ACK (40 ms on Linux, +20% on a 200 ms answer); uvicorn (vLLM) sets TCP_NODELAY
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def do_GET(self):  # the model list vLLM serves (the client keys its cache by it)
                with state._lock:
                    state.gets += 1
                out = json.dumps({"object": "list", "data": [{"id": state.model, "object": "model",
                                                              "root": "/models/tiny-cross-encoder"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                counted = True
                with state._lock:
                    state.requests += 1
                    state._in_flight += 1
                    state.max_in_flight = max(state.max_in_flight, state._in_flight)
                try:
                    if state.latency:
                        time.sleep(state.latency)
                    if state.dead.is_set() or not self.path.endswith("/score"):
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)  # died: no answer at all
                        return
                    req = json.loads(body)
                    data = [{"index": i, "object": "score", "score": pair_score(q, d)}
                            for i, (q, d) in enumerate(zip(req["text_1"], req["text_2"]))]
                    out = json.dumps({"object": "list", "model": req.get("model"), "data": data,
                                      "usage": {"prompt_tokens": 0}}).encode()
                    # out of flight before the answer leaves: once the client has read it, it may send the
                    # next request before this thread runs again (counted after, a bound of 2 read as 3)
                    with state._lock:
                        state._in_flight -= 1
                        counted = False
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                    with state._lock:
                        state.answered[hashlib.sha256(body).hexdigest()] += 1
                finally:
                    if counted:
                        with state._lock:
                            state._in_flight -= 1

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 128  # socketserver's 5 drops SYNs of 16 connections opened at once (1 s retry)

            def handle_error(self, request, client_address):
                pass

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> "ScoreServer":
        self._thread.start()
        return self

    def kill(self) -> None:
        """Die mid-run: in-flight requests lose their connection, new ones are refused."""
        self.dead.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def stop(self) -> None:
        if not self.dead.is_set():
            self.kill()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
