"""BM25 speed on SciFact, measured side by side in one process run.

Compares, on identical analysed tokens: the toolkit's BM25 (bm25s with Lucene norms, top-k
with the toolkit's tie rule, Candidate lists) vs bare bm25s (method="lucene") vs rank-bm25.
Also times `rankify --help` cold start. Targets: toolkit <= 1.15x bare bm25s; --help <= 0.6 s.

    RANKIFY_DATA_DIR=../shared/data python benchmarks/bench_bm25.py [--repeat 3] [--depth 1000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import numpy as np


def best_of(repeat, fn):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="scifact")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--depth", type=int, default=1000)
    ap.add_argument("--skip-rank-bm25", action="store_true")
    args = ap.parse_args()

    import bm25s
    from rankify_cli.datasets import resolve
    from rankify_cli.retrievers.analysis import Analyzer
    from rankify_cli.retrievers.bm25 import BM25
    from rankify_cli.types import StageContext

    ds = resolve(args.dataset)
    docs = list(ds.corpus().documents())
    qrels = ds.qrels()
    queries = [q for q in ds.queries() if q.id in qrels]
    doc_ids = [d.id for d in docs]
    analyzer = Analyzer()
    t_an, corpus_tokens = best_of(1, lambda: [analyzer(d.full_text) for d in docs])
    query_tokens = [analyzer(q.text) for q in queries]
    t_bm25s_tok, _ = best_of(1, lambda: bm25s.tokenize([d.full_text for d in docs], stopwords="en", show_progress=False))
    print(f"dataset {ds.name}: {len(docs):,} documents, {len(queries)} queries, depth {args.depth}, best of {args.repeat}")
    print(f"analysis (toolkit Lucene-like analyzer): {t_an:.3f} s   [bm25s.tokenize, no stemming, for reference: {t_bm25s_tok:.3f} s]")

    # toolkit: index + search through the retriever's own code path, no disk cache
    tk = BM25()

    def toolkit_index():
        return tk.build(doc_ids, corpus_tokens)

    t_tk_index, index = best_of(args.repeat, toolkit_index)

    def toolkit_search():
        return tk.search(index, doc_ids, query_tokens, args.depth)

    t_tk_search, _ = best_of(args.repeat, toolkit_search)

    # also the full retriever path (analysis of queries included), to show nothing hides there
    class Src:
        name = ds.name

        def corpus(self):
            return ds.corpus()

    def full_path():
        r = BM25()
        r.build = lambda ids, toks: index  # reuse the index: this times retrieve() itself
        r._load_or_build = lambda source, ctx: (index, doc_ids)
        return r.retrieve(Src(), queries, args.depth, StageContext())

    t_tk_retrieve, _ = best_of(args.repeat, full_path)

    # bare bm25s on the same tokens
    def bare_index():
        b = bm25s.BM25(k1=0.9, b=0.4, method="lucene", idf_method="lucene")
        b.index(corpus_tokens, show_progress=False)
        return b

    t_bare_index, bare = best_of(args.repeat, bare_index)
    t_bare_search, _ = best_of(args.repeat, lambda: bare.retrieve(query_tokens, k=args.depth, show_progress=False,
                                                                    n_threads=1))

    rows = [("toolkit (bm25s + Lucene norms)", t_tk_index, t_tk_search), ("bare bm25s, same tokens", t_bare_index, t_bare_search)]
    if not args.skip_rank_bm25:
        from rank_bm25 import BM25Okapi

        t_rb_index, rb = best_of(1, lambda: BM25Okapi(corpus_tokens, k1=0.9, b=0.4))

        def rb_search():
            for toks in query_tokens:
                s = rb.get_scores(toks)
                np.argsort(-s)[: args.depth]

        t_rb_search, _ = best_of(1, rb_search)
        rows.append(("rank-bm25, same tokens (1 run)", t_rb_index, t_rb_search))

    print(f"\n{'backend':34s} {'index s':>9s} {'search s':>9s} {'total s':>9s} {'q/s':>8s} {'vs bare':>8s}")
    bare_total = t_bare_index + t_bare_search
    for name, ti, ts in rows:
        print(f"{name:34s} {ti:9.3f} {ts:9.3f} {ti + ts:9.3f} {len(queries) / ts:8.0f} {(ti + ts) / bare_total:7.2f}x")
    print(f"toolkit retrieve() incl. query analysis: {t_tk_retrieve:.3f} s")
    ratio = (t_tk_index + t_tk_search) / bare_total
    print(f"\nindex+search toolkit / bare bm25s = {ratio:.2f}x (target <= 1.15x): {'OK' if ratio <= 1.15 else 'MISSED'}")

    # cold start of the CLI
    cold = []
    for _ in range(5):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "rankify_cli.cli", "--help"], capture_output=True, check=True)
        cold.append(time.perf_counter() - t0)
    probe = subprocess.run([sys.executable, "-X", "importtime", "-m", "rankify_cli.cli", "--help"],
                           capture_output=True, text=True).stderr
    heavy = sorted({m for m in ("torch", "transformers", "numpy", "ir_measures") if f" {m}\n" in probe or f"| {m}\n" in probe})
    print(f"`rankify --help` cold start: best {min(cold):.3f} s, median {sorted(cold)[2]:.3f} s "
          f"(target <= 0.6 s): {'OK' if min(cold) <= 0.6 else 'MISSED'}; heavy modules imported: {heavy or 'none'}")


if __name__ == "__main__":
    main()
