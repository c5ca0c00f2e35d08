"""`hybrid:<spec1>+<spec2>`: fuse the runs of any two first stages.

    --retriever 'hybrid:bm25+dense:/models/all-MiniLM-L6-v2'                 (RRF, k=60)
    --retriever 'hybrid:bm25:pyserini+dense:/models/minilm?method=minmax&weight=0.3'

`method=rrf` (Cormack et al. 2009): score(d) = w1 / (k + rank1(d)) + w2 / (k + rank2(d)),
ranks 1-based, a document missing from a list contributing nothing; w1 = 2 * weight,
w2 = 2 * (1 - weight), so the default weight=0.5 is plain RRF.
`method=minmax`: each list's scores are scaled to [0, 1] per query ((s - min) / (max - min);
a list whose scores are all equal scales to 1), a missing document gets 0 from that list,
and score(d) = weight * s1(d) + (1 - weight) * s2(d).
Each sub-retriever returns `depth` candidates (default: the depth asked of the hybrid); the
fused list is cut to that depth and ordered by the toolkit's rule (score desc, ties by doc id desc).
Options after `?` belong to the hybrid; the sub-specs use their defaults.
"""

from __future__ import annotations

from typing import Sequence

from rankify_cli.types import Candidate, Query, Retriever, Run, Source, StageContext, sort_candidates

METHODS = ("rrf", "minmax")


def split_specs(text: str, known: Sequence[str]) -> tuple[str, str]:
    """Split 'a+b' where b starts with a known retriever name (a model path may hold a '+')."""
    positions = [i for i, ch in enumerate(text) if ch == "+"]
    for i in positions:
        left, right = text[:i].strip(), text[i + 1:].strip()
        name = right.split(":", 1)[0].strip().lower()
        if left and right and name in known:
            return left, right
    raise ValueError(f"hybrid needs two retriever specs joined by '+', e.g. hybrid:bm25+dense:MODEL (got {text!r})")


def rrf(runs: Sequence[Run], k: float = 60.0, weights: Sequence[float] | None = None, depth: int | None = None) -> Run:
    """Reciprocal rank fusion of runs (each list ordered by the tie rule before ranking)."""
    weights = list(weights) if weights is not None else [1.0] * len(runs)
    out: Run = {}
    for qid in sorted(set().union(*runs)):
        scores: dict[str, float] = {}
        for run, w in zip(runs, weights):
            for rank, c in enumerate(sort_candidates(run.get(qid, [])), start=1):
                scores[c.doc_id] = scores.get(c.doc_id, 0.0) + w / (k + rank)
        out[qid] = sort_candidates(Candidate(d, s) for d, s in scores.items())[:depth]
    return out


def minmax(runs: Sequence[Run], weights: Sequence[float], depth: int | None = None) -> Run:
    """Weighted sum of per-query min-max scaled scores; a missing document scores 0 in that list."""
    out: Run = {}
    for qid in sorted(set().union(*runs)):
        scores: dict[str, float] = {}
        for run, w in zip(runs, weights):
            cands = run.get(qid, [])
            if not cands:
                continue
            lo = min(c.score for c in cands)
            hi = max(c.score for c in cands)
            span = hi - lo
            for c in cands:
                norm = (c.score - lo) / span if span > 0 else 1.0
                scores[c.doc_id] = scores.get(c.doc_id, 0.0) + w * norm
        out[qid] = sort_candidates(Candidate(d, s) for d, s in scores.items())[:depth]
    return out


class _HalfProgress:
    """Each sub-retriever advances the shared per-query bar by half a query per query."""

    def __init__(self, progress, parts: int = 2):
        self.progress, self.parts, self.acc, self.sent = progress, parts, 0, 0

    def __call__(self, n: int) -> None:
        self.acc += n
        whole = self.acc // self.parts
        if whole > self.sent:
            self.progress(whole - self.sent)
            self.sent = whole


class Hybrid(Retriever):
    """Fusion of two first stages: `hybrid:<spec1>+<spec2>?method=rrf|minmax&k=60&weight=0.5`."""

    def __init__(self, retrievers: str = "", method: str = "rrf", k: float = 60, weight: float = 0.5,
                 depth: int | None = None):
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)} (got {method!r})")
        if not 0.0 <= float(weight) <= 1.0:
            raise ValueError(f"weight must be in [0, 1] (got {weight})")
        if float(k) < 0:
            raise ValueError(f"k must be >= 0 (got {k})")
        from rankify_cli import registry  # here, not at import time: registry imports this module lazily

        left, right = split_specs(retrievers or "", registry.known_names("retriever"))
        self.first = registry.build("retriever", left)
        self.second = registry.build("retriever", right)
        self.method, self.k, self.weight = method, float(k), float(weight)
        self.depth = int(depth) if depth else None
        self.spec = f"hybrid:{self.first.spec}+{self.second.spec}"
        self.timings: dict[str, float] = {}

    def config(self) -> dict:
        cfg = {"retriever": "hybrid", "method": self.method, "weight": self.weight, "depth": self.depth,
               "retrievers": [{"spec": r.spec, **r.config()} for r in (self.first, self.second)]}
        if self.method == "rrf":
            cfg["k"] = self.k
        return cfg

    def fuse(self, run1: Run, run2: Run, depth: int) -> Run:
        if self.method == "rrf":
            return rrf([run1, run2], self.k, [2 * self.weight, 2 * (1 - self.weight)], depth)
        return minmax([run1, run2], [self.weight, 1 - self.weight], depth)

    def retrieve(self, source: Source, queries: Sequence[Query], k: int, ctx: StageContext) -> Run:
        depth = self.depth or k
        half = _HalfProgress(ctx.progress)
        runs = []
        for i, r in enumerate((self.first, self.second), start=1):
            sub = StageContext(cache_dir=ctx.cache_dir, store=ctx.store, progress=half, stats=ctx.stats, log=ctx.log)
            runs.append(r.retrieve(source, queries, depth, sub))
            for name, v in getattr(r, "timings", {}).items():
                self.timings[f"{i}.{name}"] = v
        fused = self.fuse(runs[0], runs[1], k)
        return {q.id: fused.get(q.id, []) for q in queries}
