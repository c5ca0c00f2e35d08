"""A pipeline: one retriever, then a cascade of rerankers, each reranking the previous
stage's top-k. The pipeline sees only the Retriever/Reranker interfaces, never a family."""

from __future__ import annotations

import json
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager

from . import registry
from .datasets import Dataset
from .errors import InputError
from .evaluation import Evaluation, evaluate
from .faults import crashpoint
from .formats import atomic_write
from .types import Candidate, Query, Run, StageContext, fingerprint, sort_candidates

ProgressFactory = Callable[[str, int], ContextManager[Callable[[int], None]]]


@contextmanager
def no_progress(description: str, total: int):
    yield lambda n: None


@dataclass
class StageResult:
    kind: str
    spec: str
    config: dict
    run: Run
    seconds: float
    evaluation: Evaluation | None = None
    stats: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)


@dataclass
class PipelineResult:
    dataset: Dataset
    pipeline_id: str
    config: dict
    config_hash: str
    measures: list[str]
    queries: int
    stages: list[StageResult]
    warnings: list[str]

    @property
    def final(self) -> StageResult:
        return self.stages[-1]


class Pipeline:
    def __init__(self, retriever: str, rerankers: list[str] | None = None, depth: int = 1000, top_k: int = 100,
                 reranker_defaults: dict | None = None, aliases: dict[str, str] | None = None):
        if depth < 1 or top_k < 1:
            from .errors import ConfigError

            raise ConfigError(f"--depth and --top-k must be positive (got {depth}, {top_k})")
        self.retriever = registry.build("retriever", retriever)
        self.rerankers = [registry.build("reranker", r, reranker_defaults) for r in rerankers or []]
        self.depth, self.top_k = depth, top_k
        self.aliases = aliases or {}

    @property
    def id(self) -> str:
        """Names the pipeline (leaderboard key). Suite variables stay as ${VAR} in it, so the
        id does not depend on where a model lives on this machine; the config hash does
        depend on the model's content."""
        parts = [self.retriever.spec] + [f"{r.spec}@{self.top_k}" for r in self.rerankers]
        text = " >> ".join(parts)
        for value, token in sorted(self.aliases.items(), key=lambda kv: -len(kv[0])):
            text = text.replace(value, token)
        return text

    def config(self) -> dict:
        return {
            "retriever": {"spec": self.retriever.spec, **self.retriever.config()},
            "depth": self.depth,
            "rerankers": [{"spec": r.spec, **r.config()} for r in self.rerankers],
            "top_k": self.top_k if self.rerankers else None,
        }


def _queries_to_run(ds: Dataset, warnings: list[str]) -> list[Query]:
    queries, qrels = ds.queries(), ds.qrels()
    judged = [q for q in queries if q.id in qrels]
    skipped = len(queries) - len(judged)
    if skipped:
        warnings.append(f"{skipped} of {len(queries)} queries have no judgments and were not run")
    missing = len(set(qrels) - {q.id for q in queries})
    if missing:
        warnings.append(f"{missing} judged queries are missing from {ds.queries_path.name}")
    if not judged:
        raise InputError("no query has judgments in the qrels: check that the query ids match", ds.qrels_path)
    return judged


def _fill_text(ds: Dataset, run: Run, spec: str, titles: bool = False) -> None:
    """Give every candidate its text from the corpus (and its title, for rerankers that
    format titles themselves, such as rank_llm's 'Title: ... Content: ...')."""
    missing = [c for cands in run.values() for c in cands if not c.text]
    if missing and not ds.has_corpus():
        raise InputError(f"candidates have no text and dataset '{ds.name}' has no corpus, so '{spec}' cannot rerank them",
                         ds.root)
    if not missing and not (titles and ds.has_corpus()):
        return
    by_id = ds.corpus().by_id
    for c in missing:
        doc = by_id.get(c.doc_id)
        if doc is None:
            raise InputError(f"candidate '{c.doc_id}' is not in the corpus of '{ds.name}'", ds.corpus_path)
        c.text = doc.full_text
    if titles:
        for cands in run.values():
            for c in cands:
                doc = by_id.get(c.doc_id)
                if doc is not None and doc.title and c.text == doc.full_text:
                    c.title = doc.title


def execute(pipeline: Pipeline, ds: Dataset, measures: list[str], cache_dir: str | None = None, store=None,
            progress: ProgressFactory = no_progress, log: Callable[[str], None] = lambda m: None) -> PipelineResult:
    warnings: list[str] = []
    queries = _queries_to_run(ds, warnings)
    qrels, rules = ds.qrels(), ds.rules()
    if ds.has_corpus() and ds.layout == "beir":
        ids = ds.corpus().by_id
        outside = sum(1 for docs in qrels.values() for d in docs if d not in ids)
        if outside:
            warnings.append(f"{outside} qrels entries name documents that are not in the corpus")
    stages: list[StageResult] = []

    ctx = StageContext(cache_dir=cache_dir, store=store, stats=Counter(), log=log, track=progress)
    r = pipeline.retriever
    cached = RunCache(cache_dir, ds, r, queries, pipeline.depth)
    with progress(f"retrieve {r.spec}", len(queries)) as advance:
        ctx.progress = advance
        t0 = time.perf_counter()
        run = cached.load()
        if run is None:
            run = r.retrieve(ds, queries, pipeline.depth, ctx)
            cached.save(run)
        else:
            ctx.stats["first_stage_cache_hits"] += 1
            advance(len(queries))
        seconds = time.perf_counter() - t0
    run = {q: sort_candidates(c) for q, c in run.items()}
    crashpoint("after-retrieval")
    stages.append(StageResult("retriever", r.spec, r.config(), run, seconds,
                              evaluate(run, qrels, measures, rules), dict(ctx.stats), dict(getattr(r, "timings", {}))))

    by_id = {q.id: q for q in queries}
    for rr in pipeline.rerankers:
        heads = {qid: [Candidate(c.doc_id, c.score, c.text) for c in cands[: pipeline.top_k]]
                 for qid, cands in run.items() if cands}
        _fill_text(ds, heads, rr.spec, titles=bool(getattr(rr, "wants_titles", False)))
        items = [(by_id[qid], heads[qid]) for qid in sorted(heads)]
        ctx = StageContext(cache_dir=cache_dir, store=store, stats=Counter(), log=log, track=progress)
        with progress(f"rerank {rr.spec}", len(items)) as advance:
            ctx.progress = _with_crashpoint(advance, "rerank-progress")
            t0 = time.perf_counter()
            out = rr.rerank_all(items, ctx)
            seconds = time.perf_counter() - t0
        run = {q.id: _with_tail(sort_candidates(cands), run[q.id][pipeline.top_k:]) for (q, _), cands in zip(items, out)}
        stages.append(StageResult("reranker", rr.spec, rr.config(), run, seconds,
                                  evaluate(run, qrels, measures, rules), dict(ctx.stats), dict(getattr(rr, "timings", {}))))

    config = pipeline_config(ds, pipeline)
    return PipelineResult(ds, pipeline.id, config, fingerprint(config)[:12], measures, len(queries), stages, warnings)


def _with_tail(head: list[Candidate], tail: list[Candidate]) -> list[Candidate]:
    """Candidates below the reranking depth keep their previous order, scored under the head,
    so recall at depths past --top-k is not lost."""
    if not tail:
        return head
    floor = min((c.score for c in head), default=0.0)
    return head + [Candidate(c.doc_id, floor - 1.0 - i, c.text) for i, c in enumerate(tail)]


def _with_crashpoint(advance, name):
    def step(n: int) -> None:
        advance(n)
        crashpoint(name)

    return step


class RunCache:
    """First-stage runs, content-addressed: retriever config, dataset content, queries, depth.

    Retrievers opt in with `cache_runs = True` where a run costs more to compute than to reload
    (dense encoders, fusions of them). BM25 does not: its index is cached and searching it is
    faster than reading back a million candidates.
    """

    def __init__(self, cache_dir: str | None, ds: Dataset, retriever, queries: list[Query], depth: int):
        self.path = None
        if cache_dir and getattr(retriever, "cache_runs", False):
            key = fingerprint({"format": 1, "retriever": retriever.config(), "dataset": ds.fingerprint(),
                               "queries": [(q.id, q.text) for q in queries], "depth": depth})
            self.path = Path(cache_dir) / "runs" / f"{key[:32]}.npz"

    def load(self) -> Run | None:
        if self.path is None or not self.path.is_file():
            return None
        import numpy as np

        try:
            with np.load(self.path, allow_pickle=False) as z:
                names = json.loads(bytes(z["names"]).decode())
                qids, docs, offsets, idx, scores = names["qids"], names["docs"], z["offsets"], z["idx"], z["scores"]
            run: Run = {}
            for i, qid in enumerate(qids):
                lo, hi = int(offsets[i]), int(offsets[i + 1])
                run[qid] = [Candidate(docs[j], s) for j, s in zip(idx[lo:hi].tolist(), scores[lo:hi].tolist())]
            return run
        except (OSError, ValueError, KeyError):
            return None  # a damaged cache entry is recomputed, never trusted

    def save(self, run: Run) -> None:
        if self.path is None:
            return
        import io

        import numpy as np

        docs: dict[str, int] = {}
        qids = list(run)
        idx = [docs.setdefault(c.doc_id, len(docs)) for q in qids for c in run[q]]
        scores = [c.score for q in qids for c in run[q]]
        offsets = np.cumsum([0] + [len(run[q]) for q in qids])
        names = json.dumps({"qids": qids, "docs": list(docs)}).encode()
        buf = io.BytesIO()
        np.savez(buf, names=np.frombuffer(names, dtype=np.uint8), offsets=offsets,
                 idx=np.asarray(idx, dtype=np.int32), scores=np.asarray(scores, dtype=np.float64))
        atomic_write(self.path, buf.getvalue())


def pipeline_config(ds: Dataset, pipeline: Pipeline) -> dict:
    """Everything that decides a pipeline's output on a dataset: its config hash."""
    return {"dataset": ds.name, "dataset_fingerprint": ds.fingerprint(), **pipeline.config()}
