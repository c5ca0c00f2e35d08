"""Published numbers the spine must reproduce on the real data in ../shared/data."""

from __future__ import annotations

import pytest

# Pyserini 2CR beir.yaml (BM25 flat) and Anserini's dl19/dl20-passage regressions.
PYSERINI_FLAT = {"scifact": (0.6789, 0.9253), "arguana": (0.3970, 0.9324)}


def test_bm25_scifact_matches_pyserini(cli, tmp_path, data_dir):
    r = cli("run", "--dataset", "scifact", "--retriever", "bm25", "-o", str(tmp_path), "--json")
    assert r.code == 0, r
    m = r.json()["metrics"]
    assert abs(m["nDCG@10"] - 0.6789) <= 0.0005, m   # issue bound is 0.005; we reproduce it exactly
    assert abs(m["R@100"] - 0.9253) <= 0.0005, m
    assert r.json()["queries"] == 300


def test_bm25_arguana_within_tolerance_with_self_hits_removed(cli, tmp_path, data_dir):
    r = cli("run", "-d", "arguana", "-o", str(tmp_path), "--json")
    assert r.code == 0, r
    doc = r.json()
    m = doc["metrics"]
    assert abs(m["nDCG@10"] - 0.3970) <= 0.01, m
    assert abs(m["nDCG@10"] - 0.3984) <= 0.0005, m  # measured; the rest is float32 summation order (README)
    assert abs(m["R@100"] - 0.9324) <= 0.0005, m
    assert doc["stages"][0]["evaluation_notes"]["self_hits_removed"] > 1000
    # ArguAna's known defect is reported, not fatal
    assert any("not in the corpus" in w for w in doc["warnings"])


def test_rank_bm25_backend_on_scifact(cli, tmp_path, data_dir):
    r = cli("run", "-d", "scifact", "-r", "bm25:rank-bm25", "-o", str(tmp_path), "--json")
    assert r.code == 0, r
    m = r.json()["metrics"]
    # rank-bm25's Okapi IDF differs from Lucene's; measured 0.6772 (see README).
    assert abs(m["nDCG@10"] - 0.6789) <= 0.01, m


@pytest.mark.parametrize("ds,ndcg,recall", [("dl19", 0.5058, 0.4910), ("dl20", 0.4796, 0.5599)])
def test_staged_dl_runs_exact(cli, tmp_path, data_dir, ds, ndcg, recall):
    r = cli("run", "-d", ds, "-r", "run:bm25", "-o", str(tmp_path), "--json")
    assert r.code == 0, r
    m = r.json()["metrics"]
    assert round(m["nDCG@10"], 4) == ndcg
    assert round(m["R(rel=2)@100"], 4) == recall
    run_file = data_dir / "trec-dl" / f"{ds}-passage" / "bm25_top100.run"
    e = cli("eval", str(run_file), "--dataset", ds, "--metrics", "nDCG@10", "R(rel=2)@100", "AP(rel=2)", "--json")
    assert e.code == 0, e
    em = e.json()["metrics"]
    assert round(em["nDCG@10"], 4) == ndcg
    assert round(em["R(rel=2)@100"], 4) == recall
    assert set(em) == {"nDCG@10", "R(rel=2)@100", "AP(rel=2)"}


def test_written_run_file_evaluates_to_the_same_number(cli, tmp_path, data_dir):
    r = cli("run", "-d", "dl19", "-r", "run:bm25", "-o", str(tmp_path), "--json")
    out = r.json()["output_dir"]
    e = cli("eval", f"{out}/stage1.run", "--dataset", "dl19", "-m", "nDCG@10", "--json")
    assert e.code == 0, e
    assert e.json()["metrics"]["nDCG@10"] == pytest.approx(r.json()["metrics"]["nDCG@10"], abs=1e-12)
