"""Pointwise models served remotely through the `/rerank` protocol.

vLLM (`vllm serve --task score`), Infinity, Jina and Cohere take `{"model", "query",
"documents"}` and answer `{"results": [{"index", "relevance_score"}]}`; Hugging Face TEI takes
`{"query", "texts"}` and answers `[{"index", "score"}]`. `protocol=cohere` (default) or `tei`
picks the request shape; both answer shapes are read. One request per query (or per
`batch_size` documents: 100 by default, 32 for TEI, its default client batch limit), queries in parallel up to `concurrency`, with the same timeouts,
retries, round robin over base URLs, call log and cache as the chat backends.

Spec: `rerank-api:MODEL?base_url=http://HOST:PORT` (the path `/rerank` is appended; give
`.../v1` for servers that only serve `/v1/rerank`).

Hosted APIs: `provider=cohere|jina|voyage|mixedbread` takes the request and answer shape, URL,
per-request document limit and key variable (CO_API_KEY, JINA_API_KEY, VOYAGE_API_KEY,
MXBAI_API_KEY) from rerank_providers.py; base_url and api_key_env still override them. The key
is read from the environment at call time and sent only as the Authorization header.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from rankify_cli.errors import ConfigError
from rankify_cli.types import Candidate, CostClock, Query, Reranker, StageContext, costed, fingerprint, uncost

from .backends.http import BackendError, HTTPClient, split_urls, strip_secrets
from .llm import CallLog
from .rerank_providers import PROVIDERS

NAMESPACE = "rerank-api"


def read_scores(data, n: int) -> list[float] | None:
    """Scores by document index from either answer shape; None when unusable."""
    rows = data.get("results", data.get("data")) if isinstance(data, dict) else data
    if not isinstance(rows, list):
        return None
    scores: list[float | None] = [None] * n
    for row in rows:
        if not isinstance(row, dict):
            return None
        idx, val = row.get("index"), row.get("relevance_score", row.get("score"))
        try:
            idx, val = int(idx), float(val)
        except (TypeError, ValueError):
            return None
        if not 0 <= idx < n or val != val:
            return None
        scores[idx] = val
    if any(s is None for s in scores):
        return None
    return scores  # type: ignore[return-value]


class RerankAPI(Reranker):
    def __init__(self, model: str = "", base_url: str | None = None, protocol: str = "cohere",
                 api_key_env: str | None = None, concurrency: int = 16, timeout: float = 120.0, max_retries: int = 6,
                 backoff: float = 0.5, batch_size: int | None = None, max_chars: int | None = None, log_calls: str | None = None,
                 cache: bool = True, provider: str | None = None):
        if protocol not in ("cohere", "tei"):
            raise ValueError(f"protocol must be cohere (vLLM, Infinity, Jina) or tei, got '{protocol}'")
        self.provider = PROVIDERS.get(str(provider)) if provider else None
        if provider and self.provider is None:
            raise ValueError(f"provider must be one of {', '.join(sorted(PROVIDERS))}, got '{provider}'")
        if self.provider is not None:
            protocol = self.provider.name
            base_url = base_url or self.provider.base_url
            api_key_env = api_key_env or self.provider.key_env
            if not os.environ.get(api_key_env):
                raise ConfigError(f"rerank-api provider={self.provider.name} needs its key in ${api_key_env}")
        urls = split_urls(base_url or os.environ.get("RERANK_BASE_URL") or os.environ.get("OPENAI_BASE_URL"))
        if not urls:
            raise ConfigError("rerank-api needs a server: rerank-api:MODEL?base_url=http://HOST:PORT")
        self.model, self.protocol = model, protocol
        self.client = HTTPClient(urls, api_key_env, timeout, max_retries, backoff,
                                 retry_status=self.provider.retry if self.provider else frozenset())
        # TEI refuses more than 32 texts per request unless started with --max-client-batch-size
        self.concurrency = max(1, int(concurrency))
        limit = self.provider.max_documents if self.provider else None
        if batch_size and limit and int(batch_size) > limit:
            raise ValueError(f"batch_size {batch_size} is over {self.provider.name}'s limit of {limit} documents "
                             "per request")
        self.batch_size = max(1, int(batch_size)) if batch_size else (limit or (32 if protocol == "tei" else 100))
        self.max_chars = int(max_chars) if max_chars else None
        self.log = CallLog(log_calls, self.client.secrets)  # a key echoed in an answer is redacted
        self.use_cache = bool(cache)

    def config(self) -> dict:
        return {"family": "rerank-api", "model": self.model, "protocol": self.protocol, "batch_size": self.batch_size,
                "max_chars": self.max_chars}

    def _payload(self, query: str, docs: list[str]) -> dict:
        if self.provider is not None:
            return self.provider.payload(self.model, query, docs)
        if self.protocol == "tei":
            return {"query": query, "texts": docs, "truncate": True, "raw_scores": False}
        return {"model": self.model, "query": query, "documents": docs}

    def _post(self, payload: dict):
        if self.provider is None:
            return self.client.post("/rerank", payload)
        try:
            return self.client.post(self.provider.path, payload)
        except BackendError as e:  # name what the provider's reference says the status means
            m = re.search(r"HTTP (\d{3})", e.message)
            hint = self.provider.explain(int(m.group(1))) if m else ""
            if not hint:
                raise
            raise BackendError(f"{self.provider.name}: {hint} ({e.message})") from None

    def rerank_all(self, items: Sequence[tuple[Query, list[Candidate]]], ctx: StageContext) -> list[list[Candidate]]:
        store = ctx.store if self.use_cache else None
        per_query: dict[str, Counter] = {}
        lock = threading.Lock()  # one thread at a time in the cache (see llm.Caller)
        clock, calls = CostClock(), [0]  # each answer keeps what it cost, for a rerun from the cache
        if store is not None:
            store.get_many(NAMESPACE, [])

        def one(item: tuple[Query, list[Candidate]]) -> list[Candidate]:
            q, cands = item
            stats = per_query.setdefault(q.id, Counter())
            docs = [c.text[: self.max_chars] if self.max_chars else c.text for c in cands]
            scores: list[float] = []
            ok = True
            for s in range(0, len(docs), self.batch_size):
                chunk = docs[s:s + self.batch_size]
                payload = self._payload(q.text, chunk)
                key = fingerprint({"v": 1, "protocol": self.protocol, **payload})
                hit = None
                if store is not None:
                    with lock:
                        hit = store.get_many(NAMESPACE, [key]).get(key)
                if hit is not None:
                    stats["cache_hits"] += 1
                    with lock:  # the answer, and what it cost when it was computed
                        hit = uncost(hit, ctx)
                        ctx.stats["cached_calls"] += 1
                    got = read_scores(hit, len(chunk))
                else:
                    t0 = time.perf_counter()
                    data, attempts, retries = self._post(payload)
                    with lock:
                        calls[0] += 1
                        cost = clock.charge([key], calls=calls[0]).get(key, (0.0, 0.0))
                    stats["calls"] += 1
                    stats["retries"] += retries
                    got = read_scores(data, len(chunk))
                    self.log.write({"time": round(time.time(), 3), "query_id": q.id, "model": self.model,
                                    "protocol": self.protocol, "request": payload, "response": data,
                                    "latency_s": round(time.perf_counter() - t0, 4), "attempts": attempts})
                    if got is not None and store is not None:
                        with lock:
                            store.put_many(NAMESPACE, {key: costed(_without_secrets(data, self.client.secrets()), cost)})
                if got is None:
                    ok = False
                    stats["parse_failures"] += 1
                    break
                scores.extend(got)
            if not ok:  # unusable answer: this query keeps its first-stage order
                stats["fallbacks"] += 1
                return [Candidate(c.doc_id, -float(r), c.text) for r, c in enumerate(cands, 1)]
            return [Candidate(c.doc_id, float(v), c.text) for c, v in zip(cands, scores)]

        out: list[list[Candidate]] = []
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="rerank-api") as pool:
            for res in pool.map(one, items):
                out.append(res)
                ctx.progress(1)
        total = Counter()
        for c in per_query.values():
            total.update(c)
        for k, v in total.items():
            ctx.stats[f"rerank_api_{k}"] += v
        ctx.stats["rerank_api_per_query"] = {q: dict(c) for q, c in sorted(per_query.items())}
        ctx.stats["compute_s"] += sum(c[0] for c in clock.costs.values())
        ctx.stats["forward_calls"] += calls[0]
        return out


def _without_secrets(data, secrets: list[str]):
    """An answer as the cache may keep it: a key the server echoed inside it replaced by ***."""
    import json

    blob = json.dumps(data, ensure_ascii=False)
    clean = strip_secrets(blob, secrets + [json.dumps(k, ensure_ascii=False)[1:-1] for k in secrets])
    return data if clean == blob else json.loads(clean)
