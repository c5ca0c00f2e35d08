"""A loopback server speaking the OpenAI chat-completions and `/rerank` protocols, for tests
and benchmarks of the LLM rerankers. It binds 127.0.0.1 only.

Modes:
* oracle — answers from the qrels: it finds the passages of the prompt (by their first
  words), looks up their grades and answers in the paradigm's format (a permutation for
  listwise, `<answer>[i]</answer>` for setwise, a JSON score object for groupwise, grades for
  /rerank). A reranker fed by it must reach the ideal nDCG@10 of its candidates.
* garbage — every answer is unusable for the paradigm asking: malformed permutations,
  labels that were never shown, broken JSON, empty text.
In the TEI shape, more than 32 texts per request get TEI's HTTP 413, as a default TEI does.
Faults (any mode): `fault_rate` of the requests get HTTP 500, HTTP 429, a stall past the
client's timeout, or a dropped connection. `latency` delays every answer.

GET /stats gives the counters (requests, answered, faults, calls per prompt hash); POST
/reset clears them. Run standalone: `python tests/llm_server.py --dataset dl19 --mode oracle`.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import re
import socket
import sys
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

SIG_WORDS = 12
TEI_MAX_BATCH = 32  # text-embeddings-inference's default --max-client-batch-size
_LABEL = re.compile(r"(?m)^\[(\d+)\]\.? ")

GARBAGE = {
    "listwise": ["", "I am sorry, I cannot rank these passages.", "[0] > [0] > [99] > [21]",
                 "Ranking: [] > [] > []", "[3] > [1] > [2]</think>", "none of them > nothing"],
    "setwise": ["", "<think>hmm</think> <answer>[99]</answer>", "<answer>3</answer>", "<think>the first one</think>",
                "The most relevant is [2].", "<answer>[0]</answer>", "<answer>[1]"],
    "pairwise": ["", "Neither of them.", "Passage C", "Both passages are relevant.", "passage a"],
    "groupwise": ["", "<reason>all fine</reason><answer>none</answer>",
                  '<answer>\n```json\n{"[1]": 5, "[2]": 3,, }\n```\n</answer>', "{[1]: 5; [2]: 7}",
                  '<answer>{"[1]": 5 "[2]": 3}</answer>', "scores: [1]=5, [2]=3"],
}


def norm_words(text: str) -> list[str]:
    words = (re.sub(r"[^0-9a-z]", "", w.lower()) for w in text.split())
    return [w for w in words if w]


def _spellings(text: str) -> list[str]:
    """The text, plus its ftfy repair where that differs ("artiï¬\x81cial" -> "artificial"):
    rank_llm's listwise templates repair passages before prompting."""
    try:
        from ftfy import fix_text
    except ImportError:
        return [text]
    fixed = fix_text(text.strip())
    return [text] if norm_words(fixed) == norm_words(text) else [text, fixed]


def signature(text: str) -> tuple[str, ...]:
    return tuple(norm_words(text)[:SIG_WORDS])


def _common_prefix(a: list[str], b: list[str]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def load_trec_dl(name: str = "dl19", data_dir: str | None = None) -> tuple[dict, dict]:
    """(qrels {qid: {docid: grade}}, candidates {qid: [(docid, text)]}) of a DL passage set."""
    root = Path(data_dir or os.environ.get("RANKIFY_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
    folder = root / "trec-dl" / f"{name}-passage"
    qrels: dict = defaultdict(dict)
    for line in (folder / "qrels.txt").read_text().splitlines():
        if line.strip():
            q, _, d, g = line.split()
            qrels[q][d] = int(g)
    cands: dict = {}
    with gzip.open(folder / "bm25_top100.rank_llm.json.gz", "rt", encoding="utf-8") as f:
        for entry in json.load(f):
            for h in entry["hits"]:
                cands.setdefault(str(h["qid"]), []).append((str(h["docid"]), h["content"]))
    return dict(qrels), cands


class Oracle:
    """Finds a prompt's passages among the candidates (first words, then the longest common
    prefix, since near-duplicate passages share their opening) and returns their grades."""

    def __init__(self, qrels: dict, candidates: dict):
        self.qrels = qrels
        self.by_sig: dict[tuple, list] = defaultdict(list)
        for qid, docs in candidates.items():
            for docid, text in docs:
                for variant in _spellings(text):  # as stored, and as a client that repairs text sends it
                    words = norm_words(variant)
                    self.by_sig[tuple(words[:SIG_WORDS])].append((qid, docid, words))

    def _lookup(self, text: str) -> list[tuple[str, str, tuple]]:
        words = norm_words(" ".join(text.split(None, 4 * SIG_WORDS)[: 4 * SIG_WORDS]))
        sig = tuple(words[:SIG_WORDS])
        pool = self.by_sig.get(sig)
        if pool is not None and len({(q, d) for q, d, _ in pool}) == 1:  # the common case: cheap
            return [(q, d, (1, True)) for q, d, _ in pool[:1]]
        words = norm_words(text)
        if pool is None:  # a passage cut shorter than the signature: match on its prefix
            pool = [e for k, v in self.by_sig.items() if sig and k[: len(sig)] == sig for e in v]
        out = []
        for q, d, w in pool:  # rank: longest common prefix, then a document read to its end
            n = _common_prefix(words, w)
            out.append((q, d, (n, n == len(w))))
        return out

    def grades(self, passages: list[str]) -> tuple[list[int], int]:
        """Grades of passages that belong to one query's candidates; (grades, unmatched)."""
        found = [self._lookup(p) for p in passages]
        qids = Counter(q for hits in found for q in {q for q, _, _ in hits})
        if not qids:
            return [0] * len(passages), len(passages)
        qid = qids.most_common(1)[0][0]
        out, unmatched = [], 0
        for hits in found:
            mine = [(n, d) for q, d, n in hits if q == qid]
            if not mine:
                unmatched += 1
                out.append(0)
                continue
            best = max(n for n, _ in mine)
            docs = {d for n, d in mine if n == best}
            out.append(max(self.qrels.get(qid, {}).get(d, 0) for d in docs))
        return out, unmatched


def prompt_passages(messages: list[dict]) -> list[tuple[int, str]]:
    """(label, text) of every `[i] text` / `[i]. text` line of the user turns."""
    text = "\n".join(str(m.get("content", "")) for m in messages if m.get("role") == "user")
    found = list(_LABEL.finditer(text))
    out = []
    for j, m in enumerate(found):
        end = found[j + 1].start() if j + 1 < len(found) else len(text)
        out.append((int(m.group(1)), text[m.end():end]))
    return out


_PAIR = re.compile(r'Passage A: "(.*)"\n\nPassage B: "(.*)"\n\nOutput Passage A or Passage B', re.DOTALL)


def paradigm_of(messages: list[dict]) -> str:
    text = "\n".join(str(m.get("content", "")) for m in messages)
    if "Output Passage A or Passage B" in text:
        return "pairwise"
    if "<answer>[3]</answer>" in text:
        return "setwise"
    if "JSON" in text and "<answer>" in text:
        return "groupwise"
    return "listwise"


class State:
    def __init__(self, oracle: Oracle | None, mode: str = "oracle", latency: float = 0.0, fault_rate: float = 0.0,
                 stall: float = 3.0, seed: int = 0, models: list | None = None):
        self.models = models or [{"id": "oracle", "object": "model"}]  # what GET /v1/models lists
        self.model_lists = 0
        if mode not in ("oracle", "garbage"):
            raise ValueError(f"mode must be oracle or garbage, got {mode}")
        self.oracle, self.mode, self.latency = oracle, mode, float(latency)
        self.echo_key = False
        self.fault_rate, self.stall = float(fault_rate), float(stall)
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.requests = 0
            self.answered = 0
            self.in_flight = 0
            self.faults: Counter = Counter()
            self.by_prompt: Counter = Counter()
            self.paradigms: Counter = Counter()
            self.unmatched = 0
            self.finished_at: dict[str, float] = {}
            self.auth: Counter = Counter()  # Authorization headers seen (tests check the key is sent)
            self.max_tokens: Counter = Counter()  # chat requests by the max_tokens they sent ("None": none)

    def snapshot(self) -> dict:
        with self.lock:
            return {"requests": self.requests, "answered": self.answered, "in_flight": self.in_flight,
                    "faults": dict(self.faults), "paradigms": dict(self.paradigms), "unmatched": self.unmatched,
                    "by_prompt": dict(self.by_prompt), "finished_at": dict(self.finished_at),
                    "mode": self.mode, "fault_rate": self.fault_rate, "auth": dict(self.auth),
                    "max_tokens": dict(self.max_tokens)}

    def fault(self) -> str | None:
        with self.lock:
            if self.fault_rate and self.rng.random() < self.fault_rate:
                return self.rng.choice(["500", "429", "stall", "drop"])
        return None

    # -- answers ---------------------------------------------------------------------------
    def chat_answer(self, messages: list[dict], key: str) -> str:
        kind = paradigm_of(messages)
        with self.lock:
            self.paradigms[kind] += 1
        if self.mode == "garbage":
            options = GARBAGE[kind]
            return options[int(key[:8], 16) % len(options)]
        if kind == "pairwise":  # PRP: the better passage; a tie names A (a consistent position bias)
            m = _PAIR.search("\n".join(str(x.get("content", "")) for x in messages if x.get("role") == "user"))
            (ga, gb), unmatched = self.oracle.grades([m.group(1), m.group(2)]) if m and self.oracle else ((0, 0), 2)
            with self.lock:
                self.unmatched += unmatched
            return "Passage A" if ga >= gb else "Passage B"
        labelled = prompt_passages(messages)
        grades, unmatched = self.oracle.grades([t for _, t in labelled]) if self.oracle else ([0] * len(labelled), 0)
        with self.lock:
            self.unmatched += unmatched
        labels = [lab for lab, _ in labelled]
        if kind == "listwise":
            order = sorted(range(len(labels)), key=lambda i: (-grades[i], labels[i]))
            return " > ".join(f"[{labels[i]}]" for i in order)
        if kind == "setwise":
            best = max(range(len(labels)), key=lambda i: (grades[i], -labels[i])) if labels else 0
            return f"<think>grades {grades}</think> <answer>[{labels[best] if labels else 1}]</answer>"
        scale = {0: 0, 1: 3, 2: 7, 3: 10}
        obj = {f"[{lab}]": scale.get(g, 0) for lab, g in zip(labels, grades)}
        return f"<reason>\nscored from the qrels\n</reason>\n<answer>\n```json\n{json.dumps(obj)}\n```\n</answer>"

    def rerank_answer(self, body: dict) -> object:
        docs = body.get("documents", body.get("texts")) or []
        docs = [d.get("text", "") if isinstance(d, dict) else str(d) for d in docs]
        if self.mode == "garbage":
            return {"results": "not a list"}
        grades, unmatched = self.oracle.grades(docs) if self.oracle else ([0] * len(docs), 0)
        with self.lock:
            self.unmatched += unmatched
        if "texts" in body:  # TEI shape
            return [{"index": i, "score": float(g)} for i, g in enumerate(grades)]
        return {"id": "rerank", "model": body.get("model"),
                "results": [{"index": i, "relevance_score": float(g)} for i, g in enumerate(grades)]}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, the body waits for the client's
    # delayed ACK of the headers (40 ms on Linux) - real servers (uvicorn, vLLM) set TCP_NODELAY.
    disable_nagle_algorithm = True
    state: State  # set on the subclass made per server

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, payload: object, headers: dict | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        try:
            self.wfile.write(data)
        except OSError:
            pass

    def do_GET(self):
        if self.path.rstrip("/") == "/stats":
            self._send(200, self.state.snapshot())
        elif self.path.rstrip("/") in ("/v1/models", "/models"):
            with self.state.lock:
                self.state.model_lists += 1
            self._send(200, {"object": "list", "data": self.state.models})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self):
        st = self.state
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        path = self.path.rstrip("/")
        if path == "/reset":
            st.reset()
            self._send(200, {"ok": True})
            return
        if path not in ("/v1/chat/completions", "/chat/completions", "/rerank", "/v1/rerank", "/v2/rerank"):
            self._send(404, {"error": f"no route {self.path}"})
            return
        try:
            body = json.loads(raw)
        except ValueError:
            self._send(400, {"error": "invalid JSON"})
            return
        if "rerank" in path and isinstance(body, dict) and len(body.get("texts") or []) > TEI_MAX_BATCH:
            # TEI's answer to a batch over its --max-client-batch-size (a Validation error, 413)
            self._send(413, {"error": f"batch size {len(body['texts'])} > maximum allowed batch size {TEI_MAX_BATCH}",
                             "error_type": "Validation"})
            return
        with st.lock:
            st.requests += 1
            st.in_flight += 1
            st.auth[self.headers.get("Authorization", "")] += 1
        try:
            fault = st.fault()
            if fault:
                with st.lock:
                    st.faults[fault] += 1
            if fault == "500":
                self._send(500, {"error": "injected server error"})
                return
            if fault == "429":
                self._send(429, {"error": "injected rate limit"}, {"Retry-After": "0"})
                return
            if fault == "drop":
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            if fault == "stall":
                time.sleep(st.stall)
            if st.latency:
                time.sleep(st.latency)
            key = hashlib.sha256(json.dumps(body.get("messages", body), sort_keys=True).encode()).hexdigest()
            # echo_key: a careless server that repeats the caller's key inside a 200 answer
            echo = self.headers.get("Authorization", "").split()[-1:] if st.echo_key else []
            if "rerank" in path:
                answer = st.rerank_answer(body)
                payload = {**answer, "meta": {"key": echo[0]}} if echo and isinstance(answer, dict) else answer
            else:
                with st.lock:
                    st.max_tokens[str(body.get("max_tokens"))] += 1
                text = st.chat_answer(body.get("messages") or [], key) + "".join(f" (key {e})" for e in echo)
                prompt_chars = sum(len(str(m.get("content", ""))) for m in body.get("messages") or [])
                payload = {"id": "chatcmpl-" + key[:12], "object": "chat.completion", "model": body.get("model"),
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                        "finish_reason": "stop"}],
                           "usage": {"prompt_tokens": prompt_chars // 4, "completion_tokens": len(text) // 4 + 1,
                                     "total_tokens": prompt_chars // 4 + len(text) // 4 + 1}}
            self._send(200, payload)
            with st.lock:
                st.answered += 1
                st.by_prompt[key] += 1
                st.finished_at[key] = time.time()
        finally:
            with st.lock:
                st.in_flight -= 1


class _Server(ThreadingHTTPServer):
    request_queue_size = 128
    daemon_threads = True

    def handle_error(self, request, client_address):  # a client that went away is not news
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class LLMServer:
    """`with LLMServer(oracle, mode=...) as srv: srv.url` -> http://127.0.0.1:PORT/v1"""

    def __init__(self, oracle: Oracle | None, mode: str = "oracle", latency: float = 0.0, fault_rate: float = 0.0,
                 stall: float = 3.0, seed: int = 0, port: int = 0, models: list | None = None):
        self.state = State(oracle, mode, latency, fault_rate, stall, seed, models)
        handler = type("BoundHandler", (Handler,), {"state": self.state})
        self.httpd = _Server(("127.0.0.1", port), handler)
        self.port = self.httpd.server_address[1]
        self.root = f"http://127.0.0.1:{self.port}"
        self.url = self.root + "/v1"
        self._thread: threading.Thread | None = None

    def start(self) -> "LLMServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def stats(self) -> dict:
        return self.state.snapshot()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="dl19")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--mode", default="oracle", choices=["oracle", "garbage"])
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--fault-rate", type=float, default=0.0)
    ap.add_argument("--stall", type=float, default=3.0)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file", default=None, help="write the chosen port here once listening")
    a = ap.parse_args(argv)
    srv = LLMServer(Oracle(*load_trec_dl(a.dataset, a.data_dir)), a.mode, a.latency, a.fault_rate, a.stall, port=a.port)
    if a.port_file:
        Path(a.port_file).write_text(str(srv.port))
    print(f"serving {a.mode} on {srv.url}", file=sys.stderr, flush=True)
    try:
        srv.httpd.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
