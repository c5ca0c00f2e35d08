"""Core types shared by every stage: the only module retrievers and rerankers import.

A *run* maps a query id to its candidates in rank order. Every retriever produces one and
every reranker, whatever its paradigm, consumes and produces one, so the pipeline never
knows which family it is running.
"""

from __future__ import annotations

import abc
import hashlib
import json
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterable, Iterator, Mapping, Protocol, Sequence


@dataclass(frozen=True)
class Query:
    id: str
    text: str


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    title: str = ""

    @property
    def full_text(self) -> str:
        """Title and body as one string, the way BEIR baselines index them."""
        return f"{self.title} {self.text}".strip() if self.title else self.text


@dataclass(slots=True)
class Candidate:
    """One document in a ranked list. `text` is filled before reranking."""

    doc_id: str
    score: float
    text: str = ""
    title: str = ""  # filled only for rerankers that format titles themselves (`wants_titles`)

    @property
    def body(self) -> str:
        """The text without its leading title (`text` is Document.full_text: title, space, body)."""
        if self.title and self.text.startswith(self.title + " "):
            return self.text[len(self.title) + 1:]
        return "" if self.title and self.text == self.title else self.text


Run = dict[str, list[Candidate]]
Qrels = dict[str, dict[str, int]]


def sort_candidates(cands: Iterable[Candidate]) -> list[Candidate]:
    """The toolkit's one ordering rule: score descending, ties by doc id descending.

    That is trec_eval's rule (it ignores the rank column and sorts by score, then docno in
    reverse), which produced the published Pyserini/Anserini numbers; ranking by any other
    tie order makes exact ties (duplicate documents, as in ArguAna) score differently.
    """
    return sorted(sorted(cands, key=lambda c: c.doc_id, reverse=True), key=lambda c: -c.score)


def fingerprint(obj: Any) -> str:
    """A stable content hash of a JSON-able config (cache keys, config hashes)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ScoreStore(Protocol):
    """The cache layer as a stage sees it (implemented by rankify_cli.cache)."""

    def get_many(self, namespace: str, keys: Sequence[str]) -> dict[str, Any]: ...

    def put_many(self, namespace: str, items: Mapping[str, Any]) -> None: ...


@dataclass
class StageContext:
    """What the pipeline hands a stage: cache, progress and counters.

    `stats` counts events per kind (truncated documents, parse failures, LLM calls, ...);
    they end up in metrics.json so degradations are never silent. Work served from the cache
    reports what it cost when it was computed as `cached_compute_s` (seconds) next to its
    hit count, so the leaderboard's cost columns stay those of the compute, not the lookup.
    """

    cache_dir: str | None = None
    store: ScoreStore | None = None
    progress: Callable[[int], None] = lambda n: None
    stats: Counter = field(default_factory=Counter)
    log: Callable[[str], None] = lambda msg: None
    # `with ctx.track("index corpus", total) as advance:` shows a progress bar for side work
    track: Callable[[str, int], ContextManager[Callable[[int], None]]] = field(default=None)  # type: ignore[assignment]
    # the dataset's catalog name (dl19, scifact, bright-biology, ...): templates with per-dataset prompts read it
    dataset: str = ""

    def __post_init__(self):
        if self.track is None:
            self.track = _silent_track


class CostClock:
    """What each finished result cost to compute (seconds, model calls), for the cache to keep.

    The time since the previous finished result is split evenly over the results that just
    finished, so work running side by side (HTTP concurrency) is counted once: the stored costs
    of a stage add up to its compute time. A rerun served from the cache reports them through
    `charge_cached`, so cost columns stay those of the compute, not of the lookup."""

    def __init__(self, t0: float | None = None, calls0: float = 0):
        import threading
        import time

        self.costs: dict[str, tuple[float, float]] = {}
        self.mark = time.perf_counter() if t0 is None else t0
        self.calls_mark = calls0
        self.lock = threading.Lock()

    def charge(self, keys: Sequence[str], now: float | None = None, calls: float | None = None) -> dict[str, tuple[float, float]]:
        """`keys` just finished at `now`, the model's call counter reading `calls` (None: one call
        per key). Returns their (seconds, model calls)."""
        import time

        with self.lock:
            now = time.perf_counter() if now is None else now
            new = [k for k in dict.fromkeys(keys) if k not in self.costs]
            if new:  # keys charged already: the time so far goes to the next results that finish
                calls = self.calls_mark + len(new) if calls is None else calls
                share_s, share_calls = (now - self.mark) / len(new), (calls - self.calls_mark) / len(new)
                self.costs.update((k, (share_s, share_calls)) for k in new)
                self.mark, self.calls_mark = now, calls
            return {k: self.costs[k] for k in keys if k in self.costs}


def charge_cached(ctx: "StageContext", seconds: float, model_calls: float, calls: float = 0, tokens: float = 0) -> None:
    """A result read from the cache: add what it cost when it was computed (its seconds, model
    calls and, for API calls, requests and tokens) to the stage's `cached_*` counters."""
    ctx.stats["cached_compute_s"] += float(seconds or 0.0)
    ctx.stats["cached_forward_calls"] += float(model_calls or 0.0)
    if calls:
        ctx.stats["cached_calls"] += float(calls)
    if tokens:
        ctx.stats["cached_tokens"] += float(tokens)


def costed(value: Any, cost: tuple[float, float]) -> dict:
    """A cache entry that keeps what its value cost to compute (seconds, model calls)."""
    return {"value": value, "compute_s": cost[0], "model_calls": cost[1]}


def uncost(entry: Any, ctx: "StageContext") -> Any:
    """The value of a cache entry written by `costed`, its cost charged to `ctx` as cached compute;
    an entry stored before costs were kept is the bare value and cost nothing known."""
    if isinstance(entry, dict) and "value" in entry and "compute_s" in entry:
        charge_cached(ctx, entry["compute_s"], entry.get("model_calls", 0.0))
        return entry["value"]
    return entry


@contextmanager
def _silent_track(description: str, total: int):
    yield lambda n: None


class Corpus(Protocol):
    """Documents of a dataset, as a retriever sees them."""

    def documents(self) -> Iterator[Document]: ...

    def fingerprint(self) -> str: ...

    def __len__(self) -> int: ...


class Source(Protocol):
    """Everything a retriever may read from a dataset."""

    name: str

    def corpus(self) -> Corpus: ...

    def pre_retrieved(self, name: str) -> Run: ...


class Retriever(abc.ABC):
    """First stage: queries in, a run out."""

    spec: str = ""

    @abc.abstractmethod
    def config(self) -> dict:
        """Every setting that changes the output (part of cache keys and config hashes)."""

    @abc.abstractmethod
    def retrieve(self, source: Source, queries: Sequence[Query], k: int, ctx: StageContext) -> Run:
        """Return up to k candidates per query, in `sort_candidates` order."""


class Reranker(abc.ABC):
    """Second stage: a query and its ordered candidates in, the same documents reordered.

    Families implement `rerank_all`; scores are higher-is-better, and methods that only
    produce an order return scores derived from rank.
    """

    spec: str = ""
    # what ctx.progress(n) counts: finished queries, or scored (query, document) pairs
    progress_unit: str = "queries"

    @abc.abstractmethod
    def config(self) -> dict:
        """Every setting that changes the scores (model id and revision, template, ...)."""

    @abc.abstractmethod
    def rerank_all(
        self, items: Sequence[tuple[Query, list[Candidate]]], ctx: StageContext
    ) -> list[list[Candidate]]:
        """Rerank each (query, candidates) pair; call ctx.progress(n) as queries finish."""

    def rerank(self, query: "Query | str", candidates: "Sequence[Candidate | str]",
               ctx: StageContext | None = None) -> list[Candidate]:
        """The one-call form for library users, as rerankers' `rank()`: a query and documents
        (strings, whose doc_id becomes their position "0", "1", ..., or Candidates) in; the
        same documents with their scores out, best first (sort_candidates order)."""
        q = query if isinstance(query, Query) else Query("q", str(query))
        cands = [c if isinstance(c, Candidate) else Candidate(str(i), 0.0, str(c)) for i, c in enumerate(candidates)]
        if not cands:
            return []
        return sort_candidates(self.rerank_all([(q, cands)], ctx or StageContext())[0])
