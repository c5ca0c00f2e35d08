"""Backend `openai`: any OpenAI-compatible server (vLLM, SGLang, TEI, Infinity, OpenAI).

Operations and the routes they take:

* chat            POST /chat/completions (the server applies the model's chat template)
* label_logprobs  POST /completions, prompt = the token ids + one label token, `prompt_logprobs`:
                  the last prompt position's log-probability is log P(label | prompt), exactly, on
                  any causal model (vLLM/SGLang extension; two sequences per pair)
* generate_ids    POST /completions with token-id prompts, greedy, `logprobs: 1` and
                  `return_tokens_as_token_ids` (vLLM) to read back the chosen ids and probabilities
* pair_scores     POST /score (vLLM: text_1/text_2, raw logits with use_activation=false),
                  /rerank (Cohere/Jina/vLLM/Infinity) or TEI's /rerank, by `protocol`
* embed           POST /embeddings with token-id inputs (the family's own tokenization)

Token ids go to the server as the family rendered them, so nothing is templated twice.
"""

from __future__ import annotations

import math
import os
import threading
import time
from typing import Sequence

from rankify_cli.errors import ConfigError

from .base import Backend, ChatRequest, ChatResponse, Pair, causal_only
from .http import BackendError, HTTPClient, chat_completion_shape, split_urls

PAIR_PROTOCOLS = ("score", "rerank", "tei")


class OpenAI(Backend):
    kind = "openai"

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str | None = None, timeout: float = 120.0,
                 max_retries: int = 6, backoff: float = 0.5, tokenizer: str | None = None,
                 extra_body: dict | None = None, concurrency: int = 16, protocol: str = "score",
                 served_model: str | None = None, max_per_replica: int | None = None, **_ignored):
        super().__init__()
        self.model = served_model or model
        self.client = HTTPClient(split_urls(base_url or os.environ.get("OPENAI_BASE_URL")), api_key_env,
                                 timeout, max_retries, backoff)
        if max_per_replica:
            self.client.limit_per_replica(int(max_per_replica))
        self.tokenizer_name = tokenizer
        self._tokenizer = None
        self.extra_body = extra_body or {}
        self.concurrency = max(1, int(concurrency))
        if protocol not in PAIR_PROTOCOLS:
            raise ConfigError(f"protocol must be one of {', '.join(PAIR_PROTOCOLS)} (got '{protocol}')")
        self.protocol = protocol
        self.retries = 0
        self._lock = threading.Lock()

    def identity(self) -> dict:
        return {"backend": self.kind, "model": self.model}

    def cache_identity(self) -> dict:
        return {**self.identity(), **self.client.served_identity(self.model)}

    def stats(self) -> dict:
        return {"replicas": self.client.replica_stats()}

    def _post(self, path: str, payload: dict, validate=None):
        data, attempts, retries = self.client.post(path, payload, validate=validate)
        self.counted()
        if retries:
            with self._lock:
                self.retries += retries
        return data, attempts

    # -- chat ------------------------------------------------------------------------------
    def chat_tokenizer(self):
        if not self.tokenizer_name:
            return None
        if self._tokenizer is None:
            with self._lock:
                if self._tokenizer is None:
                    from .hf import load_tokenizer

                    self._tokenizer = load_tokenizer(self.tokenizer_name)
        return self._tokenizer

    def chat(self, requests: Sequence[ChatRequest]) -> list[ChatResponse]:
        return [self._one(r) for r in requests]

    def _one(self, req: ChatRequest) -> ChatResponse:
        payload = {"model": self.model, "messages": req.messages, "temperature": req.temperature, "top_p": req.top_p,
                   **self.extra_body}
        if req.max_new_tokens is not None:  # None: the server's own limit (rank_llm's RankGPT sends none)
            payload["max_tokens"] = req.max_new_tokens
        if req.seed is not None:
            payload["seed"] = req.seed
        if req.min_new_tokens:
            payload["min_tokens"] = req.min_new_tokens  # vLLM / SGLang sampling extension
        t0 = time.perf_counter()
        # a 200 without a chat completion's shape is retried, never cached as an empty answer
        data, attempts = self._post("/chat/completions", payload, validate=chat_completion_shape)
        latency = time.perf_counter() - t0
        text = data["choices"][0]["message"].get("content") or ""
        usage = data.get("usage") or {}
        return ChatResponse(text, _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens")),
                            latency, attempts=attempts)

    # -- pointwise operations --------------------------------------------------------------
    def _ask(self, path: str, payload: dict, parse):
        """POST and parse; an answer `parse` rejects is retried like a 5xx (never cached)."""
        def check(data):
            try:
                parse(data)
            except BackendError as e:
                return str(e)
            return None

        data, _ = self._post(path, payload, validate=check)
        return parse(data)

    def label_logprobs(self, prompts: Sequence[list[int]], labels: Sequence[int], *, kind: str = "causal",
                       pad_id: int = 0) -> list[list[float]]:
        if kind != "causal":
            raise causal_only("openai", kind)
        seqs = [list(p) + [int(lab)] for p in prompts for lab in labels]
        payload = {"model": self.model, "prompt": seqs, "max_tokens": 1, "temperature": 0.0,
                   "prompt_logprobs": 0, **self.extra_body}

        def parse(data):
            try:
                choices = sorted(data["choices"], key=lambda c: int(c.get("index", 0)))
                values = [float(c["prompt_logprobs"][-1][str(seq[-1])]["logprob"]) for seq, c in zip(seqs, choices)]
            except (KeyError, IndexError, TypeError, ValueError, AttributeError):
                raise _shape("/completions", "prompt_logprobs for the label tokens (vLLM's prompt_logprobs)") from None
            if len(values) != len(seqs) or any(v != v for v in values):
                raise _shape("/completions", f"{len(seqs)} choices with label log-probabilities")
            return values

        values = self._ask("/completions", payload, parse)
        n = len(labels)
        return [values[i * n:(i + 1) * n] for i in range(len(prompts))]

    def generate_ids(self, prompts: Sequence[list[int]], *, max_new_tokens: int, pad_id: int,
                     eos: Sequence[int] = (), kind: str = "causal",
                     decoder_prefix: Sequence[int] = ()) -> list[tuple[list[int], list[float]]]:
        if kind != "causal":
            raise ConfigError(f"the openai backend generates with causal models only (this template is {kind}); "
                              "use backend=hf")
        payload = {"model": self.model, "prompt": [list(p) for p in prompts], "max_tokens": int(max_new_tokens),
                   "temperature": 0.0, "logprobs": 1, "return_tokens_as_token_ids": True,
                   "skip_special_tokens": False, **self.extra_body}
        stop = set(eos)

        def parse(data):
            out = []
            try:
                for choice in sorted(data["choices"], key=lambda c: int(c.get("index", 0))):
                    lp = choice["logprobs"]
                    ids = [int(str(t).split(":", 1)[1]) for t in lp["tokens"]]
                    probs = [math.exp(float(v)) for v in lp["token_logprobs"]]
                    if len(ids) != len(probs):
                        raise ValueError
                    cut = next((k for k, t in enumerate(ids) if t in stop), len(ids))
                    out.append((ids[:cut], probs[:cut]))
            except (KeyError, IndexError, TypeError, ValueError, AttributeError):
                raise _shape("/completions", "token ids with log-probabilities (return_tokens_as_token_ids)") from None
            if len(out) != len(prompts):
                raise _shape("/completions", f"{len(prompts)} choices")
            return out

        return self._ask("/completions", payload, parse)

    def pair_scores(self, pairs: Sequence[Pair], *, pad_id: int = 0) -> list[float]:
        if self.protocol == "score":
            payload = {"model": self.model, "text_1": [p.query for p in pairs], "text_2": [p.document for p in pairs],
                       "use_activation": False, **self.extra_body}
            return self._ask("/score", payload, lambda d: _indexed(d, len(pairs), "/score"))
        scores = [0.0] * len(pairs)
        by_query: dict[str, list[int]] = {}
        for i, p in enumerate(pairs):
            by_query.setdefault(p.query, []).append(i)
        for query, idx in by_query.items():  # the /rerank protocols take one query per request
            docs = [pairs[i].document for i in idx]
            if self.protocol == "tei":
                payload = {"query": query, "texts": docs, "truncate": True, "raw_scores": True}
            else:
                payload = {"model": self.model, "query": query, "documents": docs, **self.extra_body}
            got = self._ask("/rerank", payload, lambda d, n=len(idx): _indexed(d, n, "/rerank"))
            for i, s in zip(idx, got):
                scores[i] = s
        return scores

    def embed(self, prompts: Sequence[list[int]], *, pad_id: int = 0, pooling: str = "model") -> list[list[float]]:
        payload = {"model": self.model, "input": [list(p) for p in prompts], "encoding_format": "float",
                   **self.extra_body}

        def parse(data):
            try:
                rows = sorted(data["data"], key=lambda r: int(r["index"]))
                vecs = [[float(x) for x in r["embedding"]] for r in rows]
            except (KeyError, TypeError, ValueError):
                raise _shape("/embeddings", "data[].embedding") from None
            if len(vecs) != len(prompts) or any(not v or any(x != x for x in v) for v in vecs):
                raise _shape("/embeddings", f"{len(prompts)} embeddings")
            return vecs

        out = []
        for v in self._ask("/embeddings", payload, parse):  # cosine needs unit vectors; a server may not normalise
            norm = math.sqrt(sum(x * x for x in v)) or 1.0
            out.append([x / norm for x in v])
        return out


def _shape(path: str, what: str) -> BackendError:
    return BackendError(f"{path}: the server's answer has no {what}")


def _count(v) -> int:
    return int(v) if isinstance(v, (int, float)) and v == v and abs(v) < 2**53 else 0


def _indexed(data, n: int, path: str) -> list[float]:
    """Scores by index from {data|results: [{index, score|relevance_score}]} or TEI's bare list."""
    rows = data.get("data", data.get("results")) if isinstance(data, dict) else data
    scores: list[float | None] = [None] * n
    try:
        for row in rows:
            idx, val = int(row["index"]), float(row.get("score", row.get("relevance_score")))
            if 0 <= idx < n and val == val:
                scores[idx] = val
    except (KeyError, TypeError, ValueError, AttributeError):
        raise BackendError(f"{path}: the server's answer is not a list of indexed scores") from None
    if any(s is None for s in scores):
        raise BackendError(f"{path}: the server's answer lacks scores for some documents")
    return scores  # type: ignore[return-value]
