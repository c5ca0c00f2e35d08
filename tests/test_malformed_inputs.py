"""Bad input: one line naming the file (and line) and what was expected, exit code 2,
no traceback, and nothing written under the results folder."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

DOCS = [
    {"_id": "d1", "title": "Fleas", "text": "A flea can live up to a year."},
    {"_id": "d2", "title": "Cats", "text": "Cats groom themselves and carry fleas."},
    {"_id": "d3", "title": "", "text": "Dogs need flea treatment every month."},
]
QUERIES = [{"_id": "q1", "text": "how long do fleas live"}, {"_id": "q2", "text": "flea treatment for dogs"}]
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td3\t1\n"


def write_beir(root: Path, corpus=None, queries=None, qrels=None) -> Path:
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text(corpus if corpus is not None else "".join(json.dumps(d) + "\n" for d in DOCS))
    (root / "queries.jsonl").write_text(queries if queries is not None else "".join(json.dumps(q) + "\n" for q in QUERIES))
    (root / "qrels" / "test.tsv").write_text(qrels if qrels is not None else QRELS)
    return root


def jl(rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


# Each case: (id, how to break the dataset folder, extra CLI args, expected substring incl. file:line)
def _cases():
    return [
        ("broken-json-line", dict(corpus=jl([DOCS[0], '{"_id": "d2", "text": "unterminated', DOCS[2]])), [],
         "corpus.jsonl:2: invalid JSON"),
        ("document-without-id", dict(corpus=jl([DOCS[0], {"title": "x", "text": "no id"}])), [],
         'corpus.jsonl:2: document has no "_id"'),
        ("duplicate-doc-ids", dict(corpus=jl([DOCS[0], DOCS[1], DOCS[0]])), [],
         "corpus.jsonl:3: duplicate document id 'd1' (first at line 1)"),
        ("document-text-not-string", dict(corpus=jl([{"_id": "d1", "text": 5}])), [],
         'corpus.jsonl:1: "text" must be a string'),
        ("jsonl-line-not-object", dict(corpus=jl([DOCS[0], "[1, 2]"])), [],
         "corpus.jsonl:2: expected a JSON object per line"),
        ("qrels-wrong-columns", dict(qrels="query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td3\n"), [],
         "test.tsv:3: expected 3 columns like the first line, got 2"),
        ("qrels-non-integer-grade", dict(qrels="query-id\tcorpus-id\tscore\nq1\td1\tyes\n"), [],
         "test.tsv:2: relevance grade 'yes' is not an integer"),
        ("qrels-empty", dict(qrels="query-id\tcorpus-id\tscore\n"), [], "test.tsv: no judgments"),
        ("qrels-match-no-query", dict(qrels="query-id\tcorpus-id\tscore\nzz\td1\t1\n"), [],
         "no query has judgments"),
        ("empty-query-text", dict(queries=jl([QUERIES[0], {"_id": "q2", "text": "   "}])), [],
         "queries.jsonl:2: query 'q2' has empty text"),
        ("duplicate-query-id", dict(queries=jl([QUERIES[0], QUERIES[0]])), [],
         "queries.jsonl:2: duplicate query id 'q1' (first at line 1)"),
        ("unknown-reranker", {}, ["--reranker", "no-such-reranker:model"], "unknown reranker 'no-such-reranker'"),
        ("unknown-retriever", {}, ["--retriever", "tfidf"], "unknown retriever 'tfidf'; known: bm25"),
        ("unknown-bm25-backend", {}, ["--retriever", "bm25:lucene9"], "unknown BM25 backend 'lucene9'"),
        ("unknown-spec-option", {}, ["--retriever", "bm25?k3=1"], "unknown option(s) k3 for retriever 'bm25'"),
        ("unknown-measure", {}, ["--metrics", "nDCG@ten"], "unknown measure 'nDCG@ten'"),
        ("non-positive-top-k", {}, ["--top-k", "0"], "must be positive"),
        ("missing-run-name", {}, ["--retriever", "run:bm25"], "no pre-retrieved run 'bm25'"),
        # issue 15: each was exit 3, a crash, or a misleading line
        ("corpus-5000-digit-integer", dict(corpus=jl([DOCS[0], '{"_id": "d2", "text": "x", "n": ' + "7" * 5000 + "}"])),
         [], "corpus.jsonl:2: unreadable JSON (an integer with more digits than Python reads)"),
        ("beir-id-true", dict(corpus=jl([DOCS[0], {"_id": True, "text": "x"}])), [],
         'corpus.jsonl:2: "_id" must be a string or integer, got boolean'),
        ("query-id-false", dict(queries=jl([QUERIES[0], {"_id": False, "text": "x"}])), [],
         'queries.jsonl:2: "_id" must be a string or integer, got boolean'),
        ("corpus-nested-too-deeply", dict(corpus=jl([DOCS[0], '{"_id": "d2", "text": "x", "n": ' + "[" * 100_000
                                                    + "]" * 100_000 + "}"])), [], "corpus.jsonl:2: unreadable JSON"),
        ("bm25-k1-nan", {}, ["--retriever", "bm25?k1=nan"], "k1 must be a finite number >= 0"),
        ("bm25-k1-inf", {}, ["--retriever", "bm25?k1=inf"], "k1 must be a finite number >= 0"),
        ("bm25-k1-negative", {}, ["--retriever", "bm25?k1=-1"], "k1 must be a finite number >= 0"),
        ("bm25-b-over-one", {}, ["--retriever", "bm25?b=1.5"], "b a number in [0, 1]"),
        ("measure-cutoff-zero", {}, ["--metrics", "nDCG@0"],
         "measure 'nDCG@0': the cutoff must be a whole number from 1 to 2147483647 (got 0)"),
        ("measure-cutoff-fraction", {}, ["--metrics", "P@1.5"], "measure 'P@1.5': the cutoff must be a whole number"),
        ("measure-rel-zero", {}, ["--metrics", "AP(rel=0)"], "measure 'AP(rel=0)': rel must be a relevance grade"),
        ("llm-timeout-negative", {}, ["--reranker", "listwise:m?backend=openai&base_url=http://127.0.0.1:9/v1&timeout=-1"],
         "timeout must be a finite number > 0 (got -1)"),
        ("llm-max-retries-negative", {},
         ["--reranker", "listwise:m?backend=openai&base_url=http://127.0.0.1:9/v1&max_retries=-1"],
         "max_retries must be a finite number >= 0 (got -1)"),
        ("rerank-api-timeout-zero", {}, ["--reranker", "rerank-api:m?base_url=http://127.0.0.1:9&timeout=0"],
         "timeout must be a finite number > 0 (got 0)"),
    ]


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c[0])
def test_bad_dataset_input(cli, tmp_path, case):
    _, broken, args, expected = case
    ds = write_beir(tmp_path / "ds", **broken)
    out = tmp_path / "results"
    r = cli("run", "--dataset", str(ds), "-o", str(out), *args)
    assert_clean_error(r, expected)
    assert not out.exists(), "nothing may be written on error"


def assert_clean_error(r, expected: str) -> None:
    assert r.code == 2, r
    lines = r.err.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], r  # progress notes may precede it
    assert expected in errors[0], r
    assert "Traceback" not in r.err + r.out


def test_binary_file_where_text_expected(cli, tmp_path):
    ds = write_beir(tmp_path / "ds")
    (ds / "corpus.jsonl").write_bytes(b'{"_id": "d1", "text": "ok"}\n\x00\x01\x02\xff binary')
    r = cli("run", "--dataset", str(ds), "-o", str(tmp_path / "out"))
    assert_clean_error(r, "corpus.jsonl:2: binary data (NUL byte)")


def test_non_utf8_text(cli, tmp_path):
    ds = write_beir(tmp_path / "ds")
    (ds / "queries.jsonl").write_bytes(b'{"_id": "q1", "text": "fleas"}\n{"_id": "q2", "text": "caf\xe9"}\n')
    r = cli("run", "--dataset", str(ds), "-o", str(tmp_path / "out"))
    assert_clean_error(r, "queries.jsonl:2: not UTF-8 text")


def test_corrupt_gzip(cli, tmp_path):
    ds = write_beir(tmp_path / "ds")
    (ds / "corpus.jsonl").unlink()
    (ds / "corpus.jsonl.gz").write_bytes(gzip.compress(b'{"_id": "d1", "text": "x"}\n')[:15])
    r = cli("run", "--dataset", str(ds), "-o", str(tmp_path / "out"))
    assert_clean_error(r, "corpus.jsonl.gz: not a valid gzip file")


def test_qrels_path_that_is_a_folder(cli, tmp_path):
    ds = write_beir(tmp_path / "ds")
    (ds / "qrels" / "test.tsv").unlink()
    (ds / "qrels" / "test.tsv").mkdir()
    r = cli("run", "--dataset", str(ds), "-o", str(tmp_path / "out"))
    assert_clean_error(r, "test.tsv: a folder, not a file (expected the qrels of dataset 'ds')")
    (tmp_path / "my.run").write_text("q1 Q0 d1 1 3.5 tag\n")
    r = cli("eval", str(tmp_path / "my.run"), "--qrels", str(ds / "qrels" / "test.tsv"))
    assert_clean_error(r, "test.tsv: not a regular file (expected qrels lines")


# rank_llm candidate files are held to the rules of TREC runs (issue 15)
CANDIDATE_CASES = [
    ("docid-with-space", [{"qid": "q1", "docid": "d 1", "score": 2.0}],
     "entry 0 hit 0: id 'd 1' contains whitespace"),
    ("qid-with-tab", [{"qid": "q\t1", "docid": "d1", "score": 2.0}], "entry 0 hit 0: id 'q\\t1' contains whitespace"),
    ("nan-score", [{"qid": "q1", "docid": "d1", "score": float("nan")}], "entry 0 hit 0: score nan is not a finite number"),
    ("infinite-score", '[{"query": "fleas", "hits": [{"qid": "q1", "docid": "d1", "score": 1e999}]}]',
     "entry 0 hit 0: score inf is not a finite number"),
    ("score-not-a-number", [{"qid": "q1", "docid": "d1", "score": [1]}], "entry 0 hit 0: score [1] is not a number"),
    ("score-true", [{"qid": "q1", "docid": "d1", "score": True}], "entry 0 hit 0: score true is not a number"),
    ("mixed-qids", [{"qid": "q1", "docid": "d1", "score": 2.0}, {"qid": "q2", "docid": "d3", "score": 1.0}],
     "entry 0 hit 1: query 'q2' in an entry of query 'q1' (one query per entry)"),
    ("qid-true", [{"qid": True, "docid": "d1", "score": 2.0}], 'entry 0 hit 0: "qid" must be a string or integer, got boolean'),
    ("docid-object", [{"qid": "q1", "docid": {"id": 1}, "score": 2.0}],
     'entry 0 hit 0: "docid" must be a string or integer, got dict'),
    ("docid-empty", [{"qid": "q1", "docid": "", "score": 2.0}], "entry 0 hit 0: empty id"),
    ("5000-digit-score", '[{"query": "fleas", "hits": [{"qid": "q1", "docid": "d1", "score": ' + "9" * 5000 + "}]}]",
     "unreadable JSON (an integer with more digits than Python reads)"),
]


@pytest.mark.parametrize("name,hits,expected", CANDIDATE_CASES, ids=[c[0] for c in CANDIDATE_CASES])
def test_bad_candidate_json(cli, tmp_path, name, hits, expected):
    ds = write_beir(tmp_path / "ds")
    bad = tmp_path / "cands.json"
    bad.write_text(hits if isinstance(hits, str) else json.dumps([{"query": "how long do fleas live", "hits": hits}]))
    out = tmp_path / "out"
    r = cli("run", "--dataset", str(ds), "-r", f"run:{bad}", "-o", str(out))
    assert_clean_error(r, f"cands.json: {expected}" if not expected.startswith("unreadable") else expected)
    assert not out.exists()


def test_missing_qrels_file(cli, tmp_path):
    ds = write_beir(tmp_path / "ds")
    (ds / "qrels" / "test.tsv").unlink()
    r = cli("run", "--dataset", str(ds), "-o", str(tmp_path / "out"))
    assert_clean_error(r, "test.tsv: file not found (expected the qrels of dataset 'ds')")


def test_dataset_folder_not_found(cli, tmp_path):
    r = cli("run", "--dataset", str(tmp_path / "nowhere"), "-o", str(tmp_path / "out"))
    assert_clean_error(r, "nowhere: dataset folder not found")


def test_folder_that_is_not_a_dataset(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    r = cli("run", "--dataset", str(tmp_path / "empty"), "-o", str(tmp_path / "out"))
    assert_clean_error(r, "not a dataset folder")


def test_unknown_dataset_name(cli, tmp_path):
    r = cli("run", "--dataset", "msmarco-v9", "-o", str(tmp_path / "out"))
    assert_clean_error(r, "unknown dataset 'msmarco-v9'; known: scifact, arguana")


def test_data_dir_that_does_not_exist(cli, tmp_path):
    r = cli("run", "--dataset", "scifact", "-o", str(tmp_path / "out"), env={"RANKIFY_DATA_DIR": str(tmp_path / "nope")})
    assert_clean_error(r, f"RANKIFY_DATA_DIR={tmp_path / 'nope'} does not exist")


def test_offline_with_nothing_local_names_what_to_provide(cli, tmp_path):
    (tmp_path / "empty-data").mkdir()
    r = cli("run", "--dataset", "fiqa", "-o", str(tmp_path / "out"),
            env={"RANKIFY_DATA_DIR": str(tmp_path / "empty-data"), "RANKIFY_CACHE_DIR": str(tmp_path / "c")})
    assert_clean_error(r, "dataset 'fiqa' is not available locally")
    assert "beir/fiqa" in r.err and "offline" in r.err


def test_dataset_without_corpus_says_what_works(cli, tmp_path, data_dir):
    r = cli("run", "--dataset", "nfcorpus", "-o", str(tmp_path / "out"))
    assert_clean_error(r, "dataset 'nfcorpus' has no corpus")
    assert "run:" in r.err


@pytest.mark.parametrize("content,expected", [
    ("q1 Q0 d1 1 3.5 tag\nq1 Q0 d2 2 2.0\n", "my.run:2: expected 6 columns"),
    ("q1 Q0 d1 1 high tag\n", "my.run:1: score 'high' is not a number"),
    ("q1 Q0 d1 one 3.0 tag\n", "my.run:1: rank 'one' is not an integer"),
    ("q1 Q0 d1 1 3.0 tag\nq1 Q0 d1 2 2.0 tag\n", "my.run:2: document 'd1' listed twice for query 'q1' (first at line 1)"),
    ("", "my.run: empty run"),
])
def test_bad_run_file_for_eval(cli, tmp_path, content, expected):
    ds = write_beir(tmp_path / "ds")
    (tmp_path / "my.run").write_text(content)
    r = cli("eval", str(tmp_path / "my.run"), "--dataset", str(ds))
    assert_clean_error(r, expected)


def test_broken_candidate_json_for_run_retriever(cli, tmp_path):
    ds = write_beir(tmp_path / "ds")
    bad = tmp_path / "cands.json"
    bad.write_text('[{"query": "fleas", "hits": [{"qid": "q1", "docid": "d1", "score": 1.0,\n')
    r = cli("run", "--dataset", str(ds), "-r", f"run:{bad}", "-o", str(tmp_path / "out"))
    assert_clean_error(r, "cands.json:2: invalid JSON")


def test_eval_needs_dataset_or_qrels(cli, tmp_path):
    (tmp_path / "my.run").write_text("q1 Q0 d1 1 3.5 tag\n")
    r = cli("eval", str(tmp_path / "my.run"))
    assert_clean_error(r, "give exactly one of --dataset or --qrels")


def test_missing_run_file(cli, tmp_path):
    r = cli("eval", str(tmp_path / "absent.run"), "--qrels", str(tmp_path / "absent.qrels"))
    assert_clean_error(r, "absent.run: file not found")


# -- mismatches real benchmarks contain: reported with counts, not fatal ----------------------

def test_qrels_naming_documents_outside_corpus_is_reported(cli, tmp_path):
    ds = write_beir(tmp_path / "ds", qrels=QRELS + "q1\tghost\t1\n")
    r = cli("run", "--dataset", str(ds), "-o", str(tmp_path / "out"), "--json")
    assert r.code == 0, r
    assert "1 qrels entries name documents that are not in the corpus" in r.json()["warnings"]
    assert "1 qrels entries name documents that are not in the corpus" in r.err


def test_run_queries_without_judgments_are_counted(cli, tmp_path):
    ds = write_beir(tmp_path / "ds")
    (tmp_path / "my.run").write_text("q1 Q0 d1 1 3.5 t\nq9 Q0 d2 1 1.0 t\n")
    r = cli("eval", str(tmp_path / "my.run"), "--dataset", str(ds), "--json")
    assert r.code == 0, r
    notes = r.json()["notes"]
    assert notes["run_queries_without_judgments"] == 1
    assert notes["judged_queries_without_run"] == 1
