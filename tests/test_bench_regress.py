"""Suites, the regression gate and the leaderboard views (issue: benchmark suites)."""

from __future__ import annotations

import csv
import json
import time
import xml.etree.ElementTree as ET

import pytest

from tests.test_registry_and_plugins import _install_plugin

BASE = """
[suite]
name = "t"
tolerance = 0.0005

[[condition]]
name = "dl19-bm25"
dataset = "dl19"
retriever = "run:bm25"
expected = { "nDCG@10" = 0.5058 }
"""

REVERSED = BASE + """
[[condition]]
name = "dl19-reversed"
dataset = "dl19"
retriever = "run:bm25"
rerankers = ["reverse"]
expected = { "nDCG@10" = 0.5058 }
"""

NOT_SIGNIFICANT = BASE + """
[[condition]]
name = "dl20-slightly-off"
dataset = "dl20"
retriever = "run:bm25"
expected = { "nDCG@10" = 0.4850 }
tolerance = 0.001
"""


def suite(tmp_path, text, name="s.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_unchanged_suite_passes_and_writes_reports(cli, tmp_path, data_dir):
    out = tmp_path / "res"
    r = cli("regress", str(suite(tmp_path, BASE)), "-o", str(out))
    assert r.code == 0, r
    assert "| OK | dl19-bm25 |" in r.out
    junit = ET.parse(out / "regress.junit.xml").getroot()
    case = junit.find(".//testcase")
    assert case.get("name") == "dl19-bm25" and case.find("failure") is None
    assert "OK 1" in (out / "regress.md").read_text()


def test_reversing_reranker_is_a_significant_regression(cli, tmp_path, data_dir):
    env = _install_plugin(tmp_path)
    out = tmp_path / "res"
    r = cli("regress", str(suite(tmp_path, REVERSED)), "-o", str(out), env=env)
    assert r.code == 1, r
    assert "| FAIL | dl19-reversed |" in r.out and "| OK | dl19-bm25 |" in r.out
    cases = {c.get("name"): c for c in ET.parse(out / "regress.junit.xml").getroot().iter("testcase")}
    assert cases["dl19-reversed"].find("failure") is not None
    assert cases["dl19-bm25"].find("failure") is None


def test_tolerance_breach_that_is_not_significant_is_okish(cli, tmp_path, data_dir):
    r = cli("regress", str(suite(tmp_path, NOT_SIGNIFICANT)), "-o", str(tmp_path / "res"))
    assert r.code == 0, r
    assert "| OKISH | dl20-slightly-off |" in r.out
    assert "vs expected" in r.out  # one-sample tests on per-query values without a baseline


def test_paired_comparison_against_a_baseline_folder(cli, tmp_path, data_dir):
    env = _install_plugin(tmp_path)
    base = tmp_path / "base"
    # the baseline holds an earlier run of the same pipeline, here deliberately better (plain BM25)
    assert cli("run", "-d", "dl19", "-r", "run:bm25", "--reranker", "reverse", "-o", str(base), "-q", env=env).code == 0
    r = cli("regress", str(suite(tmp_path, REVERSED)), "-o", str(tmp_path / "res"), "--baseline", str(base), env=env)
    # identical per-query values to the baseline: the breach is not significant -> OKISH, exit 0
    assert r.code == 0, r
    assert "| OKISH | dl19-reversed |" in r.out and "vs baseline" in r.out


def test_bench_reuses_finished_conditions(cli, tmp_path, data_dir):
    text = BASE + """
[[condition]]
name = "scifact-bm25"
dataset = "scifact"
retriever = "bm25"
expected = { "nDCG@10" = 0.6789 }
"""
    s, out = suite(tmp_path, text), tmp_path / "res"
    t0 = time.perf_counter()
    first = cli("bench", str(s), "-o", str(out), "--json", "--no-cache")
    t_first = time.perf_counter() - t0
    assert first.code == 0, first
    assert {x["status"] for x in first.json()} == {"ran"}
    second = cli("bench", str(s), "-o", str(out), "--json")
    assert second.code == 0 and {x["status"] for x in second.json()} == {"cached"}, second
    forced = cli("bench", str(s), "-o", str(out), "--json", "--force", "--only", "dl19-bm25")
    assert [x["status"] for x in forced.json()] == ["ran"]
    rows = list(csv.DictReader(open(out / "leaderboard.csv")))
    assert len(rows) == 2 and t_first > 0


@pytest.mark.parametrize("text,expected", [
    (BASE + "\ncolour = 'red'\n", "unknown key(s) colour in condition #1"),
    ("[suite]\nname='x'\nspeed=1\n" + BASE.split("[suite]")[1].split("\n", 3)[3], "unknown key(s) speed in [suite]"),
    (BASE.replace('retriever = "run:bm25"', 'retriever = "tfidf"'), "condition 'dl19-bm25': unknown retriever 'tfidf'"),
    (BASE.replace('"nDCG@10" = 0.5058', '"nDCG@ten" = 0.5058'), "unknown measure 'nDCG@ten'"),
    (BASE.replace('dataset = "dl19"', 'dataset = "dl99"'), "unknown dataset 'dl99'"),
    (BASE + BASE.split("[suite]")[1].split("\n", 3)[3], "duplicate condition name 'dl19-bm25'"),
    ("[suite\nname='x'\n", "invalid TOML"),
    ("[suite]\nname='x'\n", "suite has no [[condition]]"),
])
def test_suite_validation_errors(cli, tmp_path, text, expected):
    r = cli("bench", str(suite(tmp_path, text)), "-o", str(tmp_path / "res"))
    assert r.code == 2, r
    assert expected in r.err and "Traceback" not in r.err, r
    assert not (tmp_path / "res").exists()


def test_suite_include_cycle_is_an_error(cli, tmp_path):
    suite(tmp_path, "[suite]\ninclude = ['b.toml']\n" + BASE.split("[suite]")[1].split("\n", 3)[3], "a.toml")
    suite(tmp_path, "[suite]\ninclude = ['a.toml']\n", "b.toml")
    r = cli("bench", str(tmp_path / "a.toml"), "-o", str(tmp_path / "res"))
    assert r.code == 2 and "cycle: a.toml -> b.toml -> a.toml" in r.err, r


def test_unavailable_conditions_are_skipped_with_reason(cli, tmp_path, data_dir):
    text = BASE + """
[[condition]]
name = "nf-bm25"
dataset = "nfcorpus"
retriever = "bm25"
expected = { "nDCG@10" = 0.3218 }

[[condition]]
name = "needs-a-model"
dataset = "dl19"
retriever = "run:bm25"
rerankers = ["embedding:${RANKIFY_TEST_UNSET_MODEL}"]
optional = true
expected = { "nDCG@10" = 0.7 }
"""
    r = cli("regress", str(suite(tmp_path, text)), "-o", str(tmp_path / "res"))
    assert r.code == 0, r
    assert "| SKIP | nf-bm25 |" in r.out and "has no corpus" in r.out
    assert "| SKIP | needs-a-model |" in r.out and "RANKIFY_TEST_UNSET_MODEL not set" in r.out


def test_leaderboard_pivot_and_plot(cli, tmp_path, data_dir):
    out = tmp_path / "res"
    for ds in ("dl19", "dl20"):
        assert cli("run", "-d", ds, "-r", "run:bm25", "-o", str(out), "-q").code == 0
    p = cli("leaderboard", "-o", str(out), "--pivot", "--csv", "-")
    assert p.code == 0, p
    assert p.out.splitlines() == ["pipeline,dl19,dl20,avg,n", "run:bm25,0.5058,0.4796,0.4927,2"]
    png = tmp_path / "qc.png"
    r = cli("leaderboard", "-o", str(out), "--plot", str(png))
    assert r.code == 0, r
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    rows = json.loads(cli("leaderboard", "-o", str(out), "--json").out)
    assert {"stage_s", "s_per_query", "params", "config_hash", "rankify_version"} <= set(rows[0])


@pytest.mark.parametrize("name", ["ci", "beir", "trec-dl", "bright", "minilm"])
def test_shipped_suites_validate(name, data_dir, monkeypatch):
    """Every shipped condition names real datasets, specs, options and measures (no model is loaded)."""
    from pathlib import Path

    from rankify_cli.bench import prepare_suite
    from rankify_cli.suites import load_suite

    monkeypatch.setenv("MINILM_PATH", "/nonexistent/minilm")
    suite = load_suite(Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.toml")
    prepared = prepare_suite(suite, None)
    assert len(prepared) == len(suite.conditions) >= 5
    if name == "bright":
        # BRIGHT documents (and the GPT-4 reasoning queries) are not staged: every condition skips
        assert all("no corpus" in (p.skip or "") or "gpt4_reason" in (p.skip or "") for p in prepared)
