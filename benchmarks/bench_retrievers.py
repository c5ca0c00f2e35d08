"""First-stage speed through the toolkit: bm25s (default), rank-bm25 and pyserini (Lucene).

For each corpus and backend a fresh child process builds the index through the retriever
(`retrieve()` with an empty cache: analysis + indexing), then runs the queries at the
pipeline's default depth (1000) through `retrieve()` again on the built index, and reports
index time, queries/second and the child's peak resident memory (ru_maxrss: Python, the data,
the index and, for pyserini, the in-process JVM). Every backend runs in its own process so
peak memory is its own.

Corpora: SciFact (5,183 abstracts, its 300 test claims) and a 100k-document corpus made of
every passage in ../shared/data (SciFact + ArguAna + NovelEval + the DL19/DL20 BM25 top-100
passages, ~24k unique) topped up to 100,000 with synthetic documents, each built from random
sentences of those real ones (so lengths and term statistics stay natural); queries: the
SciFact claims. rank-bm25 scores every document in Python per query term, so on 100k it runs
the first `--rank-bm25-queries` queries only (its q/s is measured on those).

Target: the default backend (bm25s) >= 10x the queries/second of rank-bm25 and of pyserini.

    RANKIFY_DATA_DIR=../shared/data python benchmarks/bench_retrievers.py [--skip-100k] [--threads 2]
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BACKENDS = ("bm25s", "rank-bm25", "pyserini")


# -- corpora -----------------------------------------------------------------------------------
def _data_dir() -> Path:
    from rankify_cli.datasets import resolve

    return resolve("scifact").root.parent.parent


def load_corpus(name: str, size: int = 100_000, seed: int = 13):
    """(documents, queries) for 'scifact' or 'mixed100k'."""
    from rankify_cli.datasets import resolve
    from rankify_cli.types import Document

    sci = resolve("scifact")
    qrels = sci.qrels()
    queries = [q for q in sci.queries() if q.id in qrels]
    docs = list(sci.corpus().documents())
    if name == "scifact":
        return docs, queries
    root = _data_dir()
    seen = {d.id for d in docs}

    def add(doc_id: str, title: str, text: str):
        if doc_id not in seen and text.strip():
            seen.add(doc_id)
            docs.append(Document(doc_id, text, title))

    for d in resolve("arguana").corpus().documents():
        add(f"arguana-{d.id}", d.title, d.text)
    for line in open(root / "noveleval" / "corpus.tsv", encoding="utf-8"):
        did, _, text = line.rstrip("\n").partition("\t")
        add(f"novel-{did}", "", text)
    for ds in ("dl19-passage", "dl20-passage"):
        with gzip.open(root / "trec-dl" / ds / "bm25_top100.rank_llm.json.gz", "rt", encoding="utf-8") as f:
            for item in json.load(f):
                for h in item["hits"]:
                    add(f"msmarco-{h['docid']}", "", h["content"])
    real = len(docs)
    rng = random.Random(seed)
    sentences = [s for d in docs for s in re.split(r"(?<=[.!?])\s+", d.text) if len(s) > 20]
    lengths = [max(1, len(re.split(r"(?<=[.!?])\s+", d.text))) for d in docs]
    i = 0
    while len(docs) < size:
        n = rng.choice(lengths)
        docs.append(Document(f"synth-{i}", " ".join(rng.choice(sentences) for _ in range(n)), ""))
        i += 1
    print(f"[mixed100k] {real:,} real passages + {len(docs) - real:,} synthetic ones", file=sys.stderr)
    return docs, queries


class MemSource:
    def __init__(self, name, docs):
        from rankify_cli.datasets import MemoryCorpus
        from rankify_cli.types import fingerprint

        self.name = name
        self._corpus = MemoryCorpus(docs, fingerprint([name, len(docs)]))

    def corpus(self):
        return self._corpus

    def pre_retrieved(self, name):
        raise KeyError(name)


# -- one backend in one process ------------------------------------------------------------------
def child(corpus: str, backend: str, depth: int, max_queries: int | None, threads: int) -> dict:
    from rankify_cli import registry
    from rankify_cli.types import StageContext

    docs, queries = load_corpus(corpus)
    if max_queries:
        queries = queries[:max_queries]
    src = MemSource(corpus, docs)
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    spec = {"bm25s": "bm25", "rank-bm25": "bm25:rank-bm25", "pyserini": "bm25:pyserini"}[backend]
    with tempfile.TemporaryDirectory(prefix="bench-retr-") as cache:
        ctx = StageContext(cache_dir=cache if backend == "pyserini" else None)
        r = registry.build("retriever", spec)
        if backend == "pyserini":
            r.threads = threads  # PyseriniBM25's own option (the `bm25` spec does not expose it)
        t0 = time.perf_counter()
        if backend == "pyserini":
            r.searcher(src, ctx).close()  # JVM start + Anserini IndexCollection
            index_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            r.retrieve(src, queries, depth, ctx)  # index cached now: pure search
            search_s = time.perf_counter() - t1
        else:
            index, doc_ids = r._load_or_build(src, ctx)  # analysis + index, no cache
            index_s = time.perf_counter() - t0
            r._load_or_build = lambda source, c: (index, doc_ids)
            t1 = time.perf_counter()
            r.retrieve(src, queries, depth, ctx)  # query analysis + search + top-k Candidates
            search_s = time.perf_counter() - t1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"corpus": corpus, "backend": backend, "docs": len(docs), "queries": len(queries), "depth": depth,
            "index_s": index_s, "search_s": search_s, "qps": len(queries) / search_s,
            "peak_rss_mb": peak, "data_rss_mb": rss_data, "threads": threads if backend == "pyserini" else 1}


def run_child(corpus: str, backend: str, args) -> dict | None:
    maxq = args.rank_bm25_queries if (backend == "rank-bm25" and corpus != "scifact") else None
    cmd = [sys.executable, __file__, "--child", corpus, backend, "--depth", str(args.depth),
           "--threads", str(args.threads)] + (["--max-queries", str(maxq)] if maxq else [])
    p = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in p.stdout.splitlines() if line.startswith("{")]
    if p.returncode != 0 or not lines:
        err = (p.stderr.strip().splitlines() or ["?"])[-1]
        print(f"  {backend} on {corpus}: failed ({err})")
        return None
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--depth", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2, help="pyserini search/index threads (bm25s and rank-bm25: 1)")
    ap.add_argument("--rank-bm25-queries", type=int, default=30)
    ap.add_argument("--skip-100k", action="store_true")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--child", nargs=2, metavar=("CORPUS", "BACKEND"))
    ap.add_argument("--max-queries", type=int)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.depth, args.max_queries, args.threads)))
        return

    corpora = ["scifact"] + ([] if args.skip_100k else ["mixed100k"])
    backends = [b for b in args.backends.split(",") if b]
    print(f"first-stage speed through the toolkit, depth {args.depth}, one process per row")
    print(f"{'corpus':10s} {'backend':10s} {'docs':>8s} {'queries':>7s} {'index s':>9s} {'search s':>9s} "
          f"{'q/s':>9s} {'peak MB':>8s} {'data MB':>8s}")
    results: dict[tuple[str, str], dict] = {}
    for corpus in corpora:
        for backend in backends:
            r = run_child(corpus, backend, args)
            if r is None:
                continue
            results[corpus, backend] = r
            print(f"{corpus:10s} {backend:10s} {r['docs']:8,d} {r['queries']:7d} {r['index_s']:9.2f} "
                  f"{r['search_s']:9.2f} {r['qps']:9.1f} {r['peak_rss_mb']:8.0f} {r['data_rss_mb']:8.0f}"
                  + (f"  ({r['threads']} threads)" if r["threads"] > 1 else ""), flush=True)
    print()
    for corpus in corpora:
        base = results.get((corpus, "bm25s"))
        if not base:
            continue
        for other in ("rank-bm25", "pyserini"):
            o = results.get((corpus, other))
            if o:
                ratio = base["qps"] / o["qps"]
                print(f"{corpus}: bm25s q/s / {other} q/s = {ratio:.1f}x (target >= 10x): "
                      f"{'OK' if ratio >= 10 else 'MISSED'}")


if __name__ == "__main__":
    main()
