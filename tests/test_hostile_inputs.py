"""Hostile input beyond the spine's malformed files. Each case ends in a clear one-line
error (exit 2) or a documented, counted degradation: never a traceback, never a silent 0.0,
never a half-written file."""

from __future__ import annotations

import json
import random
import sqlite3

import pytest

from tests.test_malformed_inputs import QRELS, assert_clean_error, jl, write_beir


def run(cli, ds, tmp_path, *args, **kw):
    return cli("run", "--dataset", str(ds), "-o", str(tmp_path / "out"), *args, **kw)


def no_results(tmp_path):
    out = tmp_path / "out"
    return not out.exists() or not any(p.is_file() and p.name != "leaderboard.csv" for p in out.rglob("*"))


@pytest.mark.parametrize("name,mutate,expected", [
    ("binary-garbage-queries", lambda ds: (ds / "queries.jsonl").write_bytes(bytes(random.Random(1).randrange(128, 256) for _ in range(4096))),
     "queries.jsonl:1: not UTF-8 text"),
    ("utf16-queries", lambda ds: (ds / "queries.jsonl").write_bytes('{"_id": "q1", "text": "fleas"}\n'.encode("utf-16")),
     "queries.jsonl:1: UTF-16 text; expected UTF-8"),
    ("latin1-corpus", lambda ds: (ds / "corpus.jsonl").write_bytes(b'{"_id": "d1", "text": "ok"}\n{"_id": "d2", "text": "na\xefve"}\n'),
     "corpus.jsonl:2: not UTF-8 text"),
    ("nul-byte-in-corpus", lambda ds: (ds / "corpus.jsonl").write_bytes(b'{"_id": "d1", "text": "ok"}\n{"_id": "d2", "text": "a\x00b"}\n'),
     "corpus.jsonl:2: binary data (NUL byte)"),
    ("query-id-with-space", lambda ds: (ds / "queries.jsonl").write_text(jl([{"_id": "q 1", "text": "fleas"}])),
     "queries.jsonl:1: id 'q 1' contains whitespace"),
    ("doc-id-with-tab", lambda ds: (ds / "corpus.jsonl").write_text(jl([{"_id": "d\t1", "text": "fleas"}])),
     "corpus.jsonl:1: id 'd\\t1' contains whitespace"),
    ("empty-corpus", lambda ds: (ds / "corpus.jsonl").write_text(""), "corpus.jsonl: empty file"),
    ("corpus-is-a-folder", lambda ds: ((ds / "corpus.jsonl").unlink(), (ds / "corpus.jsonl").mkdir()),
     "corpus.jsonl: not a regular file"),
    ("trailing-garbage-json", lambda ds: (ds / "corpus.jsonl").write_text('{"_id": "d1", "text": "x"} extra\n'),
     "corpus.jsonl:1: invalid JSON"),
    ("conflicting-judgments", lambda ds: (ds / "qrels" / "test.tsv").write_text(QRELS + "q1\td1\t0\n"),
     "test.tsv:4: document 'd1' judged twice for query 'q1' with different grades (1 and 0)"),
    ("qrels-binary", lambda ds: (ds / "qrels" / "test.tsv").write_bytes(b"\x00\x01\x02"), "test.tsv:1: binary data"),
])
def test_hostile_dataset_files(cli, tmp_path, name, mutate, expected):
    ds = write_beir(tmp_path / "ds")
    mutate(ds)
    r = run(cli, ds, tmp_path)
    assert_clean_error(r, expected)
    assert no_results(tmp_path)


def test_crlf_and_bom_files_work(cli, tmp_path):
    ds = write_beir(tmp_path / "ds")
    for f in (ds / "corpus.jsonl", ds / "queries.jsonl", ds / "qrels" / "test.tsv"):
        f.write_bytes(b"\xef\xbb\xbf" + f.read_bytes().replace(b"\n", b"\r\n"))
    r = run(cli, ds, tmp_path, "--json")
    assert r.code == 0, r
    assert r.json()["metrics"]["nDCG@10"] == 1.0


def test_fifty_megabyte_single_line_document(cli, tmp_path):
    """Indexed whole (BM25 does not truncate); the run completes and finds the right document."""
    ds = write_beir(tmp_path / "ds")
    rng = random.Random(0)
    words = [f"w{i}" for i in range(5000)]
    big = " ".join(rng.choice(words) for _ in range(9_000_000))[:50_000_000]
    with open(ds / "corpus.jsonl", "a") as f:
        f.write(json.dumps({"_id": "big", "text": big}) + "\n")
    assert (ds / "corpus.jsonl").stat().st_size > 50_000_000
    r = run(cli, ds, tmp_path, "--json", "--no-cache")
    assert r.code == 0, r
    assert r.json()["metrics"]["nDCG@10"] == 1.0


def test_hundred_thousand_candidates_for_one_query(cli, tmp_path):
    ds = write_beir(tmp_path / "ds")
    lines = ["q1 Q0 d1 1 100000.0 big"] + [f"q1 Q0 x{i} {i + 2} {100000 - i - 1}.0 big" for i in range(99_999)]
    (tmp_path / "big.run").write_text("\n".join(lines) + "\n")
    r = cli("eval", str(tmp_path / "big.run"), "--dataset", str(ds), "-m", "nDCG@10", "R@1000", "--json", "--per-query")
    assert r.code == 0, r
    assert r.json()["per_query"]["q1"]["nDCG@10"] == 1.0
    assert r.json()["metrics"]["nDCG@10"] == 0.5  # q2 has no results: an empty ranking (trec_eval -c), reported
    assert r.json()["notes"]["judged_queries_without_run"] == 1
    # as first stage: reranking depth caps what is reordered, the run file keeps the top depth
    r2 = run(cli, ds, tmp_path, "-r", f"run:{tmp_path / 'big.run'}", "--depth", "100000", "--json")
    assert r2.code == 0, r2
    assert r2.json()["stages"][0]["evaluation_notes"]["judged_queries_without_run"] == 1  # q2 is not in that run


def test_query_of_only_stopwords_is_counted_not_scored_zero(cli, tmp_path):
    ds = write_beir(tmp_path / "ds", queries=jl([{"_id": "q1", "text": "how long do fleas live"},
                                                  {"_id": "q2", "text": "the and of it"}]))
    r = run(cli, ds, tmp_path, "--json")
    assert r.code == 0, r
    doc = r.json()
    assert doc["run_info"]["stages"][0]["stats"]["queries_without_known_terms"] == 1
    assert doc["stages"][0]["evaluation_notes"]["judged_queries_without_run"] == 1
    assert doc["stages"][0]["queries_evaluated"] == 2  # an empty ranking scores 0 (trec_eval -c), and is reported
    assert doc["metrics"]["nDCG@10"] == 0.5


def test_very_long_query(cli, tmp_path):
    ds = write_beir(tmp_path / "ds", queries=jl([{"_id": "q1", "text": "fleas " * 100_000}, QUERIES_2]))
    r = run(cli, ds, tmp_path, "--json")
    assert r.code == 0, r


QUERIES_2 = {"_id": "q2", "text": "flea treatment for dogs"}


def test_run_file_with_infinite_score(cli, tmp_path):
    ds = write_beir(tmp_path / "ds")
    (tmp_path / "r.run").write_text("q1 Q0 d1 1 inf t\n")
    assert_clean_error(cli("eval", str(tmp_path / "r.run"), "--dataset", str(ds)), "r.run:1: score 'inf' is not a finite number")


def test_candidate_json_with_wrong_shape(cli, tmp_path):
    ds = write_beir(tmp_path / "ds")
    (tmp_path / "c.json").write_text(json.dumps([{"query": "fleas", "hits": {"not": "a list"}}]))
    r = run(cli, ds, tmp_path, "-r", f"run:{tmp_path / 'c.json'}")
    assert_clean_error(r, 'c.json: entry 0: expected {"query": str, "hits": list}')


def test_damaged_leaderboard_is_reported_before_any_work(cli, tmp_path):
    ds = write_beir(tmp_path / "ds")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "leaderboard.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    r = run(cli, ds, tmp_path)
    assert_clean_error(r, "leaderboard.csv:3: binary data")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["leaderboard.csv"]


def test_output_path_that_is_a_file(cli, tmp_path):
    ds = write_beir(tmp_path / "ds")
    (tmp_path / "out").write_text("not a folder")
    assert_clean_error(run(cli, ds, tmp_path), "exists and is not a folder")


def test_damaged_cache_database(cli, tmp_path):
    from rankify_cli.cache import Store

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "store.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(Exception) as e:
        Store(cache).get_many("x", ["k"])
    assert "cache database unreadable" in str(e.value) and "--no-cache" in str(e.value)
    assert not isinstance(e.value, sqlite3.DatabaseError)


def test_damaged_bm25_index_is_rebuilt(cli, tmp_path):
    ds = write_beir(tmp_path / "ds")
    env = {"RANKIFY_CACHE_DIR": str(tmp_path / "cache")}
    assert run(cli, ds, tmp_path, "-q", env=env).code == 0
    for f in (tmp_path / "cache" / "bm25").rglob("*.npy"):
        f.write_bytes(b"garbage")
    r = run(cli, ds, tmp_path, "--json", env=env)
    assert r.code == 0, r
    assert r.json()["run_info"]["stages"][0]["stats"]["bm25_index_cache_damaged"] == 1
    assert r.json()["metrics"]["nDCG@10"] == 1.0


def test_damaged_metrics_json_is_recomputed_by_bench(cli, tmp_path, data_dir):
    suite = tmp_path / "s.toml"
    suite.write_text('[[condition]]\nname = "dl19"\ndataset = "dl19"\nretriever = "run:bm25"\n'
                     'expected = { "nDCG@10" = 0.5058 }\n')
    out = tmp_path / "res"
    assert cli("bench", str(suite), "-o", str(out), "-q").code == 0
    for m in out.rglob("metrics.json"):
        m.write_text("{ half a file")
    r = cli("bench", str(suite), "-o", str(out), "--json")
    assert r.code == 0 and r.json()[0]["status"] == "ran", r


@pytest.mark.parametrize("paradigm", ["listwise", "setwise", "groupwise"])
def test_one_megabyte_llm_response_is_parsed_in_bounded_time(paradigm):
    """A runaway completion (1 MB of repeated opening tags and digits) falls back or parses;
    the parsers read only the answer's tail, so regex work cannot explode."""
    from rankify_cli.rerankers.groupwise import parse_group_scores
    from rankify_cli.rerankers.listwise import parse_permutation
    from rankify_cli.rerankers.setwise import parse_label

    huge = "<answer>[" * 120_000 + "7" * 40_000
    assert len(huge) > 1_000_000
    if paradigm == "listwise":
        order, status = parse_permutation(huge + " [2] > [1]", 3)
        assert sorted(order) == [0, 1, 2]
    elif paradigm == "setwise":
        assert parse_label(huge, ["1", "2"], r"<answer>\s*\[(\d+)\]\s*</answer>") is None
        assert parse_label(huge + "<answer>[2]</answer>", ["1", "2"], r"<answer>\s*\[(\d+)\]\s*</answer>") == 1
    else:
        with pytest.raises(ValueError):
            parse_group_scores(huge)
        assert parse_group_scores(huge + '<answer>{"[1]": 7}</answer>') == {"[1]": 7}


@pytest.mark.parametrize("body,expected", [
    ({"prefix_user": "Rank {num} passages.", "suffix_user": "Rank them.", "body_user": "[{rank}] {candidate}"},
     "missing placeholder(s) {query}"),
    ({"prefix_user": "Query: {query} {colour}", "body_user": "[{rank}] {candidate}"}, "unknown placeholder(s) {colour}"),
    ({"prefix_user": "Query: {query", "body_user": "[{rank}] {candidate}"}, "is not a valid format string"),
])
def test_llm_template_with_bad_placeholders_is_refused(cli, tmp_path, data_dir, body, expected):
    base = json.loads((__import__("pathlib").Path(__file__).parent.parent / "rerankers" / "templates" /
                       "listwise-rankgpt.json").read_text())
    base.update(body)
    tpl = tmp_path / "bad.json"
    tpl.write_text(json.dumps(base))
    r = cli("run", "-d", "dl19", "-r", "run:bm25", "-o", str(tmp_path / "out"),
            "--reranker", f"listwise:m?template={tpl}&backend=openai&base_url=http://127.0.0.1:9/v1")
    assert_clean_error(r, expected)
    assert not (tmp_path / "out").exists()
