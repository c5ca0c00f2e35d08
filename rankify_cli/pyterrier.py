"""rankify stages as PyTerrier transformers: any retriever or reranker spec the CLI accepts.

    import pyterrier as pt
    from rankify_cli import pyterrier as rk

    bm25 = rk.retriever("run:bm25", dataset="dl19")        # or "bm25" on a dataset with a corpus
    pipe = bm25 % 100 >> rk.reranker("minilm-l6")
    pt.Experiment([bm25, pipe], rk.topics("dl19"), rk.qrels("dl19"), ["nDCG@10"])

Only PyTerrier's pure-Python core is used (the `pyterrier` package, 1.x; no Java). Stages run
as they do under `rankify run`: the same registry, the toolkit's score cache (RANKIFY_CACHE_DIR,
shared with the CLI) and counters (`transformer.stats`). Ties are broken as the toolkit breaks
them (score desc, then doc id), so a pipeline's ranks equal `rankify run`'s.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyterrier as pt

from . import registry
from .cache import Store
from .datasets import cache_root, resolve
from .errors import InputError
from .types import Candidate, Query, Run, StageContext, sort_candidates


def _store(cache_dir: str | Path | None, no_cache: bool):
    if no_cache:
        return None, None
    root = Path(cache_dir or cache_root())
    return str(root), Store(root)


def _frame(run: Run, queries: dict[str, str]):
    import pandas as pd

    rows = [(qid, queries[qid], c.doc_id, c.text, c.score, rank)
            for qid, cands in run.items() for rank, c in enumerate(sort_candidates(cands))]
    return pd.DataFrame(rows, columns=["qid", "query", "docno", "text", "score", "rank"])


def _require(df, columns: tuple[str, ...], who: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"{who} needs columns {', '.join(columns)}; missing {', '.join(missing)} "
                         f"(got {', '.join(map(str, df.columns))})")


class RankifyRetriever(pt.Transformer):
    """Queries (qid, query) -> ranked documents (qid, query, docno, text, score, rank)."""

    def __init__(self, spec: str, dataset: str, depth: int = 1000, data_dir: str | None = None,
                 cache_dir: str | Path | None = None, no_cache: bool = False):
        self.spec, self.depth = spec, depth
        self.dataset = resolve(dataset, data_dir)
        self.stage = registry.build("retriever", spec)
        self.cache_dir, _ = _store(cache_dir, no_cache)
        self.stats: Counter = Counter()

    def transform(self, inp):
        _require(inp, ("qid", "query"), f"rankify retriever '{self.spec}'")
        queries = {str(q): t for q, t in zip(inp["qid"], inp["query"])}
        ctx = StageContext(cache_dir=self.cache_dir, stats=self.stats)
        run = self.stage.retrieve(self.dataset, [Query(q, t) for q, t in queries.items()], self.depth, ctx)
        run = {q: c for q, c in run.items() if q in queries}
        if self.dataset.has_corpus() and any(not c.text for cands in run.values() for c in cands):
            by_id = self.dataset.corpus().by_id
            for cands in run.values():
                for c in cands:
                    if not c.text and c.doc_id in by_id:
                        c.text = by_id[c.doc_id].full_text
        return _frame(run, queries)

    def __repr__(self) -> str:
        return f"rankify.retriever({self.spec!r}, dataset={self.dataset.name!r})"


class RankifyReranker(pt.Transformer):
    """Ranked documents (qid, query, docno, text[, score]) -> the same documents rescored and ranked."""

    def __init__(self, spec: str, cache_dir: str | Path | None = None, no_cache: bool = False, **defaults):
        self.spec = spec
        self.stage = registry.build("reranker", spec, defaults or None)
        self.cache_dir, self.store = _store(cache_dir, no_cache)
        self.stats: Counter = Counter()

    def transform(self, inp):
        _require(inp, ("qid", "query", "docno", "text"), f"rankify reranker '{self.spec}'")
        queries: dict[str, str] = {}
        heads: dict[str, list[Candidate]] = {}
        has_score = "score" in inp.columns
        for i, row in enumerate(inp.itertuples(index=False)):
            qid = str(row.qid)
            queries.setdefault(qid, row.query)
            score = float(row.score) if has_score else -float(i)
            heads.setdefault(qid, []).append(Candidate(str(row.docno), score, row.text))
        items = [(Query(qid, queries[qid]), sort_candidates(heads[qid])) for qid in sorted(heads)]
        ctx = StageContext(cache_dir=self.cache_dir, store=self.store, stats=self.stats)
        out = self.stage.rerank_all(items, ctx)
        return _frame({q.id: cands for (q, _), cands in zip(items, out)}, queries)

    def __repr__(self) -> str:
        return f"rankify.reranker({self.spec!r})"


def retriever(spec: str, dataset: str, **options) -> RankifyRetriever:
    return RankifyRetriever(spec, dataset, **options)


def reranker(spec: str, **options) -> RankifyReranker:
    return RankifyReranker(spec, **options)


def topics(dataset: str, data_dir: str | None = None):
    """The dataset's judged queries as PyTerrier topics (qid, query)."""
    import pandas as pd

    ds = resolve(dataset, data_dir)
    judged = ds.qrels()
    return pd.DataFrame([(q.id, q.text) for q in ds.queries() if q.id in judged], columns=["qid", "query"])


def qrels(dataset: str, data_dir: str | None = None):
    """The dataset's judgments as PyTerrier qrels (qid, docno, label)."""
    import pandas as pd

    ds = resolve(dataset, data_dir)
    return pd.DataFrame([(q, d, rel) for q, docs in ds.qrels().items() for d, rel in docs.items()],
                        columns=["qid", "docno", "label"])
