"""BM25 over a dataset's corpus: bm25s (default) or rank-bm25, with the same analysis.

The bm25s backend reproduces Lucene's BM25 exactly as Anserini runs it: idf
ln(1 + (N - df + 0.5) / (df + 0.5)), the (k1 + 1)-free term weight, float32 arithmetic,
document lengths quantised to Lucene's one-byte norms, and query terms weighted by their
count (Anserini's bag-of-words query). The index is built once per (corpus content,
analyzer, parameters) and cached on disk.
"""

from __future__ import annotations

import gc
import json
import math
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import numpy as np

from rankify_cli.formats import atomic_dir
from rankify_cli.types import Candidate, Query, Retriever, Run, Source, StageContext, fingerprint

from .analysis import Analyzer

BACKENDS = ("bm25s", "rank-bm25", "pyserini")
INDEX_FORMAT = 1


def lucene_norm_lengths(lengths: np.ndarray) -> np.ndarray:
    """Document lengths as Lucene stores them: SmallFloat.intToByte4, then byte4ToInt."""
    free = 24  # values below are stored exactly (255 - longToInt4(Integer.MAX_VALUE))
    out = lengths.astype(np.int64).copy()
    big = out >= free
    x = out[big] - free
    nbits = np.zeros_like(x)
    nz = x > 0
    nbits[nz] = np.floor(np.log2(x[nz])).astype(np.int64) + 1
    # float log2 can be off by one at exact powers of two; correct it with integer checks
    nbits[nz & (x >= (1 << nbits))] += 1
    nbits[nz & (x < (1 << np.maximum(nbits - 1, 0)))] -= 1
    shift = np.maximum(nbits - 4, 0)
    enc = np.where(nbits < 4, x, ((x >> shift) & 7) | ((shift + 1) << 3))
    bits, sh = enc & 7, (enc >> 3) - 1
    dec = np.where(sh == -1, bits, (bits | 8) << np.maximum(sh, 0))
    out[big] = free + dec
    return out


def top_k(scores: np.ndarray, doc_ids: list[str], k: int, positive_only: bool,
          id_order: np.ndarray | None = None) -> list[Candidate]:
    """The k best documents by the toolkit's rule (score desc, ties by doc id desc, as
    trec_eval), ties at the cut included fairly.

    `id_order[i]` is document i's position in tie order (precomputed once per index), which
    lets numpy do the tie-aware sort instead of Python.
    """
    idx = np.flatnonzero(scores > 0) if positive_only else np.arange(len(scores))
    if len(idx) > k:
        kth = np.partition(scores[idx], len(idx) - k)[len(idx) - k]
        idx = idx[scores[idx] >= kth]
    if id_order is None:
        id_order = doc_id_order(doc_ids)
    top = idx[np.lexsort((id_order[idx], -scores[idx]))][:k]
    return [Candidate(doc_ids[i], s) for i, s in zip(top.tolist(), scores[top].tolist())]


def doc_id_order(doc_ids: list[str]) -> np.ndarray:
    """Each document's position when ids are sorted descending (the tie order)."""
    order = np.empty(len(doc_ids), dtype=np.int64)
    order[sorted(range(len(doc_ids)), key=doc_ids.__getitem__, reverse=True)] = np.arange(len(doc_ids))
    return order


@contextmanager
def gc_paused():
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _lucene_bm25s_class():
    import bm25s

    class LuceneBM25(bm25s.BM25):
        """bm25s with Lucene's length norms, scores built vectorised (bm25s' documented hook)."""

        def build_index_from_ids(self, unique_token_ids, corpus_token_ids, show_progress=True, leave_progress=False):
            n_docs, n_vocab = len(corpus_token_ids), len(unique_token_ids)
            self.nonoccurrence_array = None  # only BM25L/BM25+ use one
            lengths = np.fromiter((len(t) for t in corpus_token_ids), dtype=np.int64, count=n_docs)
            flat = np.fromiter((t for doc in corpus_token_ids for t in doc), dtype=np.int64, count=int(lengths.sum()))
            docs = np.repeat(np.arange(n_docs, dtype=np.int64), lengths)
            keys, tf = np.unique(docs * n_vocab + flat, return_counts=True)
            d, t = keys // n_vocab, keys % n_vocab
            df = np.bincount(t, minlength=n_vocab)
            idf = np.log(1.0 + (n_docs - df + 0.5) / (df + 0.5)).astype(np.float32)
            avgdl = np.float32(lengths.sum() / max(n_docs, 1))
            norm = lucene_norm_lengths(lengths).astype(np.float32)
            k1, b = np.float32(self.k1), np.float32(self.b)
            inv = (np.float32(1) / (k1 * ((np.float32(1) - b) + b * norm / avgdl))).astype(np.float32)
            w = idf[t]
            score = (w - w / (np.float32(1) + tf.astype(np.float32) * inv[d])).astype(self.dtype)
            order = np.argsort(t, kind="stable")
            indptr = np.zeros(n_vocab + 1, dtype=np.int64)
            np.cumsum(np.bincount(t, minlength=n_vocab), out=indptr[1:])
            return {"data": score[order], "indices": d[order].astype(self.int_dtype),
                    "indptr": indptr, "num_docs": n_docs}

    return LuceneBM25


class BM25(Retriever):
    """`bm25`, `bm25:bm25s`, `bm25:rank-bm25`; options k1, b, stopwords, stemmer, lucene_norms.

    `bm25:pyserini` (Lucene through Pyserini; options k1, b, fields=flat|multifield) builds a
    pyserini_bm25.PyseriniBM25 instead.
    """

    def __new__(cls, backend: str = "bm25s", **options):
        if backend == "pyserini" and cls is BM25:
            from .pyserini_bm25 import PyseriniBM25

            return PyseriniBM25(**options)
        return super().__new__(cls)

    def __init__(self, backend: str = "bm25s", k1: float = 0.9, b: float = 0.4, stopwords: str = "lucene",
                 stemmer: str = "porter", lucene_norms: bool = True, fields: str = "flat"):
        if fields != "flat":
            raise ValueError(f"fields={fields} needs the pyserini backend (bm25:pyserini?fields={fields})")
        if backend not in BACKENDS:
            raise ValueError(f"unknown BM25 backend '{backend}' (known: {', '.join(BACKENDS)})")
        self.backend, self.k1, self.b = backend, float(k1), float(b)
        if not (math.isfinite(self.k1) and self.k1 >= 0) or not (math.isfinite(self.b) and 0 <= self.b <= 1):
            raise ValueError(f"k1 must be a finite number >= 0 and b a number in [0, 1] (got k1={k1}, b={b})")
        self.lucene_norms = bool(lucene_norms)
        self.analyzer = Analyzer(stopwords=stopwords, stemmer=stemmer)
        self.spec = "bm25" if backend == "bm25s" else f"bm25:{backend}"
        self.timings: dict[str, float] = {}

    def config(self) -> dict:
        cfg = {"retriever": "bm25", "backend": self.backend, "k1": self.k1, "b": self.b,
               "fields": "title+text", "analyzer": self.analyzer.config()}
        if self.backend == "bm25s":
            cfg["lucene_norms"] = self.lucene_norms
        return cfg

    # -- index -----------------------------------------------------------------------------
    def _index_dir(self, ctx: StageContext, corpus_fp: str) -> Path | None:
        if not ctx.cache_dir:
            return None
        key = fingerprint({"format": INDEX_FORMAT, "corpus": corpus_fp, **self.config()})[:24]
        return Path(ctx.cache_dir) / "bm25" / key

    def build(self, doc_ids: list[str], corpus_tokens: list[list[str]]):
        """Index analysed documents with the selected backend (no caching)."""
        if self.backend == "rank-bm25":
            from rank_bm25 import BM25Okapi

            return BM25Okapi(corpus_tokens, k1=self.k1, b=self.b)
        import bm25s

        cls = _lucene_bm25s_class() if self.lucene_norms else bm25s.BM25
        index = cls(k1=self.k1, b=self.b, method="lucene", idf_method="lucene")
        index.index(corpus_tokens, show_progress=False)
        return index

    def _load_or_build(self, source: Source, ctx: StageContext):
        corpus = source.corpus()
        t0 = time.perf_counter()
        path = self._index_dir(ctx, corpus.fingerprint()) if self.backend == "bm25s" else None
        if path is not None and (path / "doc_ids.json").is_file():
            import bm25s

            try:
                index = bm25s.BM25.load(str(path), mmap=False)
                doc_ids = json.loads((path / "doc_ids.json").read_text())
                self.timings["index_load_s"] = time.perf_counter() - t0
                ctx.stats["bm25_index_cache_hits"] += 1
                return index, doc_ids
            except Exception:  # a damaged cached index is rebuilt, never trusted
                shutil.rmtree(path, ignore_errors=True)
                ctx.stats["bm25_index_cache_damaged"] += 1
        docs = list(corpus.documents())
        doc_ids = [d.id for d in docs]
        ctx.log(f"indexing {len(docs):,} documents with {self.backend}")
        tokens = []
        with ctx.track(f"analyse {len(docs):,} documents", len(docs)) as advance:
            for i in range(0, len(docs), 1000):
                tokens += [self.analyzer(d.full_text) for d in docs[i : i + 1000]]
                advance(len(docs[i : i + 1000]))
        self.timings["analyze_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        index = self.build(doc_ids, tokens)
        self.timings["index_s"] = time.perf_counter() - t1
        if path is not None:
            _save_atomically(index, doc_ids, path)
        return index, doc_ids

    # -- search ----------------------------------------------------------------------------
    def retrieve(self, source: Source, queries: Sequence[Query], k: int, ctx: StageContext) -> Run:
        index, doc_ids = self._load_or_build(source, ctx)
        t0 = time.perf_counter()
        tokens = [self.analyzer(q.text) for q in queries]
        lists = self.search(index, doc_ids, tokens, k, ctx)
        self.timings["search_s"] = time.perf_counter() - t0
        return {q.id: cands for q, cands in zip(queries, lists)}

    def search(self, index, doc_ids: list[str], query_tokens: list[list[str]], k: int,
               ctx: StageContext | None = None) -> list[list]:
        """Top-k candidates for analysed queries against a built index."""
        ctx = ctx or StageContext()
        id_order = doc_id_order(doc_ids)
        out = []
        # The candidate lists are many small long-lived objects: pausing the cyclic GC
        # avoids repeated full passes over the corpus' token lists while they are built.
        with gc_paused():
            for tokens in query_tokens:
                if self.backend == "rank-bm25":
                    scores = index.get_scores(tokens) if tokens else np.zeros(len(doc_ids))
                    out.append(top_k(np.asarray(scores), doc_ids, k, positive_only=False, id_order=id_order))
                else:
                    ids = index.get_tokens_ids(tokens)  # repeated terms count, as in Anserini
                    if not ids:
                        ctx.stats["queries_without_known_terms"] += 1
                        out.append([])
                    else:
                        out.append(top_k(index.get_scores_from_ids(ids), doc_ids, k, positive_only=True,
                                         id_order=id_order))
                ctx.progress(1)
        return out


def _save_atomically(index, doc_ids: list[str], path: Path) -> None:
    """Index and doc ids land together or not at all."""
    def write(tmp: Path) -> None:
        index.save(str(tmp))
        (tmp / "doc_ids.json").write_text(json.dumps(doc_ids))

    atomic_dir(path, write)
