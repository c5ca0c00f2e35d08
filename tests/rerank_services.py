"""Loopback servers speaking the hosted rerank APIs' shapes (Cohere v2, Jina, Voyage,
Mixedbread), strictly: a request with a field the provider's reference does not list, a
missing required field, more documents than the provider allows per request or no bearer
key gets the provider's error status. Answers come from the qrels (oracle) or are unusable
(garbage), sorted by score and cut to top_n / top_k as the real services do.
It binds 127.0.0.1 only.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler

from llm_server import Oracle, _Server

# provider -> (path, documents field, top field, allowed fields, per-request limit, answer shape)
SHAPES = {
    "cohere": ("/v2/rerank", "documents", "top_n", {"model", "query", "documents", "top_n", "max_tokens_per_doc"},
               10_000, "results"),
    "jina": ("/v1/rerank", "documents", "top_n", {"model", "query", "documents", "top_n", "return_documents"},
             None, "results"),
    "voyage": ("/v1/rerank", "documents", "top_k",
               {"model", "query", "documents", "top_k", "return_documents", "truncation"}, 1_000, "data"),
    "mixedbread": ("/v1/reranking", "input", "top_k",
                   {"model", "query", "input", "rank_fields", "top_k", "return_input", "rewrite_query"}, None, "data"),
}


class ServiceState:
    def __init__(self, provider: str, oracle: Oracle | None, mode: str = "oracle", key: str | None = None,
                 first: tuple[int, int] = (0, 0)):
        self.provider, self.oracle, self.mode, self.key = provider, oracle, mode, key
        self.first = list(first)  # (n, status): the first n requests get that status (e.g. Cohere's 499)
        self.lock = threading.Lock()
        self.requests = 0
        self.documents: list[int] = []
        self.auth: Counter = Counter()
        self.refused: Counter = Counter()

    def answer(self, body: dict) -> tuple[int, dict]:
        path, docs_field, top_field, allowed, limit, results_key = SHAPES[self.provider]
        unknown = set(body) - allowed
        missing = {"model", "query", docs_field} - set(body)
        if unknown or missing:
            status = 422 if self.provider in ("jina", "mixedbread") else 400
            return status, {"message": f"unknown fields {sorted(unknown)}, missing {sorted(missing)}"}
        docs = body[docs_field]
        if not isinstance(docs, list) or not docs or not all(isinstance(d, str) for d in docs):
            return 400, {"message": f"{docs_field} must be a non-empty list of strings"}
        if limit and len(docs) > limit:
            return 400, {"message": f"the number of documents cannot exceed {limit}"}
        with self.lock:
            self.documents.append(len(docs))
        if self.mode == "garbage":  # an index past the list and a missing score
            rows = [{"index": len(docs) + 3}, {"index": 0}]
        else:
            grades, _ = self.oracle.grades(docs)
            score_key = "score" if self.provider == "mixedbread" else "relevance_score"
            rows = [{"index": i, score_key: g / 3.0} for i, g in enumerate(grades)]
            rows.sort(key=lambda r: -r[score_key])
            top = body.get(top_field)
            rows = rows[: int(top)] if top else rows
        if self.provider == "cohere":
            return 200, {"id": "loopback", "results": rows, "meta": {"billed_units": {"search_units": 1}}}
        if self.provider == "jina":
            return 200, {"model": body["model"], "usage": {"total_tokens": 1}, "results": rows}
        if self.provider == "voyage":
            return 200, {"object": "list", "data": rows, "model": body["model"], "usage": {"total_tokens": 1}}
        for r in rows:
            r["object"] = "rank_result"
        return 200, {"object": "list", "data": rows, "model": body["model"], "top_k": body.get("top_k"),
                     "return_input": False, "usage": {"prompt_tokens": 1, "total_tokens": 1}}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    state: ServiceState

    def log_message(self, *args):
        pass

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        st = self.state
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        auth = self.headers.get("Authorization", "")
        with st.lock:
            st.requests += 1
            st.auth[auth] += 1
        if self.path.rstrip("/") != SHAPES[st.provider][0]:
            self._send(404, {"message": f"no route {self.path}"})
            return
        with st.lock:
            flaky = st.first[0] > 0
            st.first[0] -= flaky
        if flaky:
            with st.lock:
                st.refused[st.first[1]] += 1
            self._send(st.first[1], {"message": "request cancelled"})
            return
        if st.key is not None and auth != f"Bearer {st.key}":
            with st.lock:
                st.refused[401] += 1
            self._send(401, {"message": "invalid api token"})
            return
        try:
            body = json.loads(raw)
        except ValueError:
            self._send(400, {"message": "invalid JSON"})
            return
        status, payload = st.answer(body if isinstance(body, dict) else {})
        if status != 200:
            with st.lock:
                st.refused[status] += 1
        self._send(status, payload)


class RerankService:
    """`with RerankService("voyage", oracle) as srv: srv.root` -> http://127.0.0.1:PORT"""

    def __init__(self, provider: str, oracle: Oracle | None, mode: str = "oracle", key: str | None = None,
                 first: tuple[int, int] = (0, 0)):
        self.state = ServiceState(provider, oracle, mode, key, first)
        self.httpd = _Server(("127.0.0.1", 0), type("H", (_Handler,), {"state": self.state}))
        self.root = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.base_url = self.root + SHAPES[provider][0].rsplit("/", 1)[0]  # the versioned root

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
