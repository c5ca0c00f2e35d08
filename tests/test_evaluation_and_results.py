"""Evaluation rules, result files and the leaderboard."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from rankify_cli.datasets import EvalRules
from rankify_cli.errors import ConfigError, RankifyError
from rankify_cli.evaluation import evaluate, split_measures
from rankify_cli.types import Candidate


def test_ties_are_broken_by_doc_id_descending_as_trec_eval():
    qrels = {"q": {"a": 1}}
    run = {"q": [Candidate("a", 1.0), Candidate("b", 1.0), Candidate("c", 1.0), Candidate("z", 2.0)]}
    # order z, c, b, a -> the relevant doc sits at rank 4 whatever the input order
    assert evaluate(run, qrels, ["RR"]).aggregate["RR"] == pytest.approx(0.25)
    run_reversed = {"q": list(reversed(run["q"]))}
    assert evaluate(run_reversed, qrels, ["RR"]).aggregate["RR"] == pytest.approx(0.25)


def test_judged_queries_without_results_count_as_empty_rankings():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    ev = evaluate({"q1": [Candidate("a", 1.0)]}, qrels, ["nDCG@10", "AP"])
    assert ev.aggregate == {"nDCG@10": 0.5, "AP": 0.5}  # trec_eval -c
    assert ev.per_query["q2"] == {"nDCG@10": 0.0, "AP": 0.0}
    assert ev.notes["judged_queries_without_run"] == 1 and ev.queries_evaluated == 2


def test_self_hits_and_excluded_ids_are_dropped_and_counted():
    qrels = {"q1": {"d2": 1}}
    run = {"q1": [Candidate("q1", 9.0), Candidate("x", 8.0), Candidate("d2", 7.0)]}
    ev = evaluate(run, qrels, ["RR"], EvalRules(remove_self_hits=True, excluded={"q1": {"x"}}))
    assert ev.aggregate["RR"] == 1.0
    assert ev.notes["self_hits_removed"] == 1 and ev.notes["excluded_ids_removed"] == 1


def test_unknown_measure_is_an_error_not_a_zero():
    with pytest.raises(ConfigError, match="unknown measure 'nDCG@x'"):
        evaluate({"q": [Candidate("a", 1.0)]}, {"q": {"a": 1}}, ["nDCG@x"])


def test_run_with_no_judged_query_is_an_error_not_a_zero():
    with pytest.raises(RankifyError, match="no query of the run has judgments"):
        evaluate({"other": [Candidate("a", 1.0)]}, {"q": {"a": 1}}, ["nDCG@10"])


def test_measure_lists_split_outside_parentheses():
    assert split_measures(["nDCG@10,R@100", "AP(rel=2)", "P(rel=2)@10 nDCG@10"]) == [
        "nDCG@10", "R@100", "AP(rel=2)", "P(rel=2)@10"]


def test_bright_excluded_ids_are_removed(cli, tmp_path, data_dir):
    # a run that puts an excluded id first: BRIGHT's rule removes it before scoring
    task = data_dir / "bright" / "leetcode"
    qrels = [ln.split() for ln in (task / "qrels.txt").read_text().splitlines()]
    import gzip
    first = json.loads(gzip.open(task / "examples.jsonl.gz", "rt").readline())
    qid, gold, excluded = first["id"], first["gold_ids"][0], first["excluded_ids"][0]
    run = tmp_path / "r.run"
    run.write_text(f"{qid} Q0 {excluded} 1 2.0 t\n{qid} Q0 {gold} 2 1.0 t\n")
    r = cli("eval", str(run), "-d", "bright-leetcode", "-m", "RR", "--json", "--per-query")
    assert r.code == 0, r
    assert r.json()["per_query"][qid]["RR"] == 1.0
    assert r.json()["notes"]["excluded_ids_removed"] == 1
    assert len(qrels) > 0


def test_noveleval_candidates_and_graded_qrels(cli, tmp_path, data_dir):
    r = cli("run", "-d", "noveleval", "-r", "run:original", "-o", str(tmp_path), "--json")
    assert r.code == 0, r
    assert r.json()["queries"] == 21
    assert round(r.json()["metrics"]["nDCG@10"], 4) == 0.6503  # the data README's value for this order


def test_nfcorpus_without_corpus_still_evaluates(cli, tmp_path, data_dir):
    run = tmp_path / "r.run"
    qrels = (data_dir / "beir" / "nfcorpus" / "qrels" / "test.tsv").read_text().splitlines()[1:4]
    run.write_text("".join(f"{q} Q0 {d} {i} {10 - i} t\n" for i, (q, d, _) in enumerate(l.split("\t") for l in qrels)))
    r = cli("eval", str(run), "-d", "nfcorpus", "--json")
    assert r.code == 0, r
    assert r.json()["queries_evaluated"] >= 1


def test_results_files_and_leaderboard_upsert(cli, tmp_path, data_dir):
    out = tmp_path / "res"
    for _ in range(2):  # re-running replaces the row, never duplicates it
        r = cli("run", "-d", "dl19", "-r", "run:bm25", "-o", str(out), "--json")
        assert r.code == 0, r
    r2 = cli("run", "-d", "dl20", "-r", "run:bm25", "-o", str(out), "-m", "nDCG@10", "--json")
    assert r2.code == 0, r2
    rows = list(csv.DictReader(open(out / "leaderboard.csv")))
    assert [(x["dataset"], x["pipeline"]) for x in rows] == [("dl19", "run:bm25"), ("dl20", "run:bm25")]
    assert rows[0]["nDCG@10"] == "0.5058" and rows[1]["R(rel=2)@100"] == ""
    assert rows[0]["config_hash"] and rows[0]["queries"] == "43"
    doc = json.loads((out / "dl19" / r.json()["output_dir"].split("/")[-1] / "metrics.json").read_text())
    assert set(doc["per_query"]) == set(doc["per_query"]) and len(doc["per_query"]) == 43
    assert doc["config"]["retriever"]["spec"] == "run:bm25"
    assert doc["stages"][0]["run_file"] == "stage1.run" and "date" not in doc  # metrics.json is deterministic
    info = json.loads((out / "dl19" / r.json()["output_dir"].split("/")[-1] / "run_info.json").read_text())
    assert "ir-measures" in info["versions"] and info["stages"][0]["seconds"] >= 0 and info["date"]
    lines = (out / "dl19" / r.json()["output_dir"].split("/")[-1] / "stage1.run").read_text().splitlines()
    assert len(lines) == 4300 and lines[0].split()[3] == "1"
    assert not list(out.rglob("*.tmp")), "no temp files left behind"


def test_leaderboard_exports(cli, tmp_path, data_dir):
    out = tmp_path / "res"
    assert cli("run", "-d", "dl19", "-r", "run:bm25", "-o", str(out), "-q").code == 0
    md = cli("leaderboard", "-o", str(out), "--markdown")
    assert md.code == 0 and "| dl19 | run:bm25 | 0.5058 |" in md.out, md
    c = cli("leaderboard", "-o", str(out), "--csv", "-")
    assert c.code == 0 and c.out.splitlines()[0].startswith("dataset,pipeline,nDCG@10"), c
    j = cli("leaderboard", "-o", str(out), "--json", "--metric", "nDCG@10")
    assert j.code == 0 and j.json()[0]["dataset"] == "dl19"
    empty = cli("leaderboard", "-o", str(tmp_path / "none"))
    assert empty.code == 2 and "no leaderboard yet" in empty.err


def test_datasets_command_reports_availability(cli, data_dir):
    r = cli("datasets", "--json")
    assert r.code == 0, r
    rows = {x["name"]: x for x in r.json()}
    assert rows["scifact"]["available"] and rows["scifact"]["corpus"]
    assert rows["dl19"]["runs"] == ["bm25"] and not rows["dl19"]["corpus"]
    assert rows["nfcorpus"]["available"] and not rows["nfcorpus"]["corpus"]
    assert len([n for n in rows if n.startswith("bright-")]) == 12
    table = cli("datasets")
    assert table.code == 0 and "RANKIFY_DATA_DIR" in table.out


def test_help_does_not_import_heavy_modules():
    code = ("import sys; sys.argv=['rankify','--help']\n"
            "from rankify_cli import cli\n"
            "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
            "heavy=[m for m in ('torch','transformers','numpy','ir_measures','bm25s') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert "HEAVY []" in out, out
