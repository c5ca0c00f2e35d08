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
