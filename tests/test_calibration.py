"""Calibration measures (rankify_cli/calibration.py, the toolkit's own beside ir-measures): a
synthetic case worked by hand, agreement with sklearn's calibration curve, and the CLI paths
(`rankify eval`, `rankify run` where the first stage's BM25 scores are not probabilities)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rankify_cli import calibration  # noqa: E402
from rankify_cli.errors import ConfigError  # noqa: E402
from rankify_cli.evaluation import evaluate, split_measures  # noqa: E402
from rankify_cli.types import Candidate  # noqa: E402


def synthetic():
    # q1: ten documents at 0.9, six relevant; q2: ten at 0.1, three relevant (grade 2), one judged 0
    run = {"q1": [Candidate(f"a{i}", 0.9) for i in range(10)], "q2": [Candidate(f"b{i}", 0.1) for i in range(10)]}
    qrels = {"q1": {f"a{i}": 1 for i in range(6)}, "q2": {**{f"b{i}": 2 for i in range(3)}, "b9": 0}}
    return run, qrels


def test_ece_and_threshold_measures_on_a_case_worked_by_hand():
    run, qrels = synthetic()
    ev = evaluate(run, qrels, ["ECE", "P@score>=0.5", "R@score>=0.5", "ECE(rel=2)", "P(rel=2)@score>=0.05", "nDCG@10"])
    # pooled: half the pairs at 0.9 with 6/10 relevant, half at 0.1 with 3/10: 0.5*0.3 + 0.5*0.2
    assert ev.aggregate["ECE"] == pytest.approx(0.25, abs=1e-12)
    assert ev.per_query["q1"]["ECE"] == pytest.approx(0.3, abs=1e-12)
    assert ev.per_query["q2"]["ECE"] == pytest.approx(0.2, abs=1e-12)
    assert ev.aggregate["P@score>=0.5"] == pytest.approx(0.3)  # q1 0.6, q2 keeps nothing: 0
    assert ev.aggregate["R@score>=0.5"] == pytest.approx(0.5)  # q1 6/6, q2 0/3
    # rel=2: q1 has no relevant document (0.5*0.9), q2 3/10 at 0.1 (0.5*0.2)
    assert ev.aggregate["ECE(rel=2)"] == pytest.approx(0.55, abs=1e-12)
    assert ev.aggregate["P(rel=2)@score>=0.05"] == pytest.approx((0.0 + 0.3) / 2)
    assert list(ev.aggregate) == ["ECE", "P@score>=0.5", "R@score>=0.5", "ECE(rel=2)", "P(rel=2)@score>=0.05",
                                  "nDCG@10"]


def test_ece_agrees_with_sklearns_calibration_curve():
    from sklearn.calibration import calibration_curve

    rng = np.random.default_rng(0)
    s = rng.random(5000)
    s[:7] = [0.0, 1.0, 0.1, 0.5, 0.7, 0.3, 0.9]  # on inner edges: the lower bin in both
    y = (rng.random(5000) < s ** 2).astype(float)
    for bins in (5, 10, 15):
        prob_true, prob_pred = calibration_curve(y, s, n_bins=bins, strategy="uniform")
        idx = np.searchsorted(np.linspace(0, 1, bins + 1)[1:-1], s, side="left")
        counts = np.bincount(idx, minlength=bins)
        counts = counts[counts > 0]
        expected = float(np.sum(counts * np.abs(prob_true - prob_pred)) / len(s))
        assert calibration.ece(s, y, bins) == pytest.approx(expected, abs=1e-12)


def test_scores_that_are_not_probabilities_get_a_note_not_a_value():
    run, qrels = synthetic()
    run["q1"][0] = Candidate("a0", 3.5)
    ev = evaluate(run, qrels, ["nDCG@10", "ECE"])
    assert "ECE" not in ev.aggregate and ev.notes["ECE not computed: scores outside [0, 1]"] == 1
    assert "nDCG@10" in ev.aggregate


@pytest.mark.parametrize("bad", ["ECE(bins=0)", "ECE(bin=3)", "P@score>=1.5", "ECE(rel=x)"])
def test_bad_calibration_measures_are_config_errors(bad):
    with pytest.raises(ConfigError):
        calibration.parse(bad)


def test_cli_eval_and_run_with_calibration(cli, tmp_path):
    run, qrels = synthetic()
    run_file, qrels_file = tmp_path / "p.run", tmp_path / "qrels.txt"
    run_file.write_text("".join(f"{q} Q0 {c.doc_id} {i + 1} {c.score} x\n" for q, cs in run.items()
                                for i, c in enumerate(cs)))
    qrels_file.write_text("".join(f"{q} 0 {d} {g}\n" for q, ds in qrels.items() for d, g in ds.items()))
    res = cli("eval", str(run_file), "--qrels", str(qrels_file), "-m", "ECE,P@score>=0.5", "--json")
    assert res.code == 0, res
    assert res.json()["metrics"] == {"ECE": pytest.approx(0.25), "P@score>=0.5": pytest.approx(0.3)}
    res = cli("eval", str(run_file), "--qrels", str(qrels_file), "-m", "ECE(bins=0)")
    assert res.code == 2 and len(res.err.strip().splitlines()) == 1 and "bins must be at least 1" in res.err, res
    assert split_measures(["ECE(rel=2,bins=15) P@score>=0.5"]) == ["ECE(rel=2,bins=15)", "P@score>=0.5"]


def test_run_table_with_a_first_stage_that_is_not_calibrated(cli, tmp_path):
    """BM25 scores are not probabilities (no ECE for stage 1); the hosted-API oracle's are."""
    from llm_server import Oracle, load_trec_dl
    from rerank_services import RerankService
    from conftest import DATA

    qrels, cands = load_trec_dl("dl19", str(DATA))
    with RerankService("jina", Oracle(qrels, cands)) as srv:
        res = cli("run", "-d", "dl19", "-r", "run:bm25", "-o", str(tmp_path / "res"), "-m", "nDCG@10,ECE",
                  "-m", "P(rel=2)@score>=0.5", "--reranker", f"jina-reranker-v2?base_url={srv.base_url}",
                  env={"RANKIFY_CACHE_DIR": str(tmp_path / "c"), "JINA_API_KEY": "k"})
    assert res.code == 0, res
    metrics = json.loads(next((tmp_path / "res").rglob("metrics.json")).read_text())
    final, first = metrics["metrics"], metrics["stages"][0]
    assert "ECE" not in first["metrics"] and "nDCG@10" in first["metrics"]
    assert first["evaluation_notes"]["ECE not computed: scores outside [0, 1]"] == 4300
    # the oracle scores grade/3: P(rel=2)@0.5 keeps exactly the grade 2-3 documents, so it is 1
    # for every query with one among its candidates and 0 for the others
    with_rel = sum(1 for q, docs in cands.items() if any(qrels[q].get(d, 0) >= 2 for d, _ in docs))
    assert final["P(rel=2)@score>=0.5"] == pytest.approx(with_rel / 43) and 0.0 < final["ECE"] < 1.0
