"""BRIGHT documents through Hugging Face `datasets`' real loading path: a small copy of the
xlangai/BRIGHT repository layout (README configs + parquet per task) built in the test from
the staged BRIGHT examples, named by RANKIFY_BRIGHT_REPO."""

from __future__ import annotations

import gzip
import json

import pytest

from .conftest import DATA, rankify

pytest.importorskip("datasets")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

CARD = """---
configs:
- config_name: documents
  data_files:
  - split: leetcode
    path: documents/leetcode-00000-of-00001.parquet
  - split: biology
    path: documents/biology-00000-of-00001.parquet
- config_name: long_documents
  data_files:
  - split: biology
    path: long_documents/biology-00000-of-00001.parquet
- config_name: gpt4_reason
  data_files:
  - split: biology
    path: gpt4_reason/biology-00000-of-00001.parquet
---
"""


def _examples(task: str) -> list[dict]:
    with gzip.open(DATA / "bright" / task / "examples.jsonl.gz", "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def _docs(examples: list[dict], *fields: str) -> dict[str, str]:
    """Each gold (and excluded) document says what its query says: BM25 finds them first."""
    docs: dict[str, str] = {}
    for ex in examples:
        for field in fields:
            for d in ex.get(field) or []:
                if d != "N/A":
                    docs[d] = (docs.get(d, "") + " " + ex["query"]).strip()
    return docs


def _parquet(path, rows: dict[str, list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows), path)


@pytest.fixture(scope="module")
def bright_repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("BRIGHT")
    (repo / "README.md").write_text(CARD)
    for task in ("leetcode", "biology"):
        docs = _docs(_examples(task), "gold_ids", "excluded_ids")
        _parquet(repo / "documents" / f"{task}-00000-of-00001.parquet", {"id": list(docs), "content": list(docs.values())})
    bio = _examples("biology")
    long_docs = _docs(bio, "gold_ids_long")
    _parquet(repo / "long_documents" / "biology-00000-of-00001.parquet", {"id": list(long_docs), "content": list(long_docs.values())})
    _parquet(repo / "gpt4_reason" / "biology-00000-of-00001.parquet",
             {"id": [e["id"] for e in bio], "query": [f"GPT-4 reasoning: {e['query']}" for e in bio],
              "gold_ids": [e["gold_ids"] for e in bio], "excluded_ids": [e["excluded_ids"] for e in bio]})
    return repo


@pytest.fixture
def env(bright_repo, tmp_path):
    return {"RANKIFY_BRIGHT_REPO": str(bright_repo), "RANKIFY_CACHE_DIR": str(tmp_path / "cache"),
            "RANKIFY_OFFLINE": "0", "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0",
            "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "http://127.0.0.1:9"}  # the real hub is never reached


def test_bright_bm25_on_hub_documents_drops_excluded_ids(env, tmp_path):
    r = rankify("run", "-d", "bright-leetcode", "-r", "bm25", "-o", str(tmp_path / "out"), "--json", "-q", env=env)
    assert r.code == 0, r
    doc = r.json()
    corpus = tmp_path / "cache" / "data" / "bright" / "leetcode" / "corpus.jsonl.gz"
    assert doc["dataset"]["corpus"] == str(corpus) and corpus.is_file()
    removed = doc["stages"][0]["evaluation_notes"]["excluded_ids_removed"]
    assert removed > 100, doc["stages"][0]
    with_rules = doc["metrics"]["nDCG@10"]
    # The same run scored without BRIGHT's rule: the excluded documents crowd the top ranks.
    run_file = next((tmp_path / "out").rglob("stage1.run"))
    # (a copy of the qrels: the catalog's own file would bring the dataset's rules with it)
    qrels_copy = tmp_path / "qrels.txt"
    qrels_copy.write_bytes((DATA / "bright/leetcode/qrels.txt").read_bytes())
    plain = rankify("eval", str(run_file), "--qrels", str(qrels_copy), "--json")
    assert plain.code == 0, plain
    assert with_rules > plain.json()["metrics"]["nDCG@10"] + 0.05
    # Offline after the download: the cached documents serve the same run.
    again = rankify("run", "-d", "bright-leetcode", "-r", "bm25", "-o", str(tmp_path / "o2"), "--json", "-q",
                    env={**env, "RANKIFY_OFFLINE": "1"})
    assert again.code == 0 and again.json()["metrics"] == doc["metrics"], again


def test_bright_long_documents_use_gold_ids_long(env, tmp_path):
    r = rankify("run", "-d", "bright-biology:long", "-r", "bm25", "-o", str(tmp_path / "out"), "--json", "-q", env=env)
    assert r.code == 0, r
    doc = r.json()
    assert doc["dataset"]["name"] == "bright-biology:long"
    qrels = (tmp_path / "cache/data/bright/biology/qrels.long.txt").read_text().splitlines()
    long_ids = {d for e in _examples("biology") for d in e["gold_ids_long"] if d != "N/A"}
    assert {ln.split("\t")[2] for ln in qrels} == long_ids
    assert doc["metrics"]["nDCG@10"] > 0.5  # gold long documents repeat their query


def test_bright_gpt4_reasoning_queries_variant(env, tmp_path, monkeypatch):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    from rankify_cli.datasets import resolve

    ds = resolve("bright-biology:gpt4-reason")
    qs = ds.queries()
    assert len(qs) == 103 and all(q.text.startswith("GPT-4 reasoning: ") for q in qs)
    assert ds.qrels() == resolve("bright-biology").qrels()  # judged by the task's gold ids


def test_bright_variant_errors_are_one_line(env, tmp_path):
    r = rankify("run", "-d", "bright-leetcode:long", "-r", "bm25", "-o", str(tmp_path / "o"), env=env)
    assert r.code == 2 and "this task has no long-document setting" in r.err and r.err.count("\n") == 1, r
    r = rankify("run", "-d", "bright-biology:short", "-o", str(tmp_path / "o"), env=env)
    assert r.code == 2 and "has no variant 'short' (BRIGHT variants: long, gpt4-reason)" in r.err, r
    r = rankify("run", "-d", "bright-pony", "-r", "bm25", "-o", str(tmp_path / "o"), "-q", env=env)
    errors = [ln for ln in r.err.splitlines() if ln.startswith("error:")]
    assert r.code == 2 and len(errors) == 1 and "Traceback" not in r.err, r
    assert errors[0].startswith("error: download failed: ") and "'documents' split 'pony'" in errors[0], r
    assert errors[0].endswith("to work offline, put corpus.jsonl.gz in bright/pony/ under RANKIFY_DATA_DIR (or pass --dataset PATH)")
