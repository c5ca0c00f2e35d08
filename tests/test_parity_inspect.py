"""`rankify inspect` through the CLI: what it prints is exactly what each family's model receives."""

from __future__ import annotations

import json
import os

import pytest

from tests.test_neural_rerankers import bert_cross_encoders, minilm_tokenizer_dir, tiny_qwen, items  # noqa: F401

pytest.importorskip("torch")


def _inspect(cli, *args):
    r = cli("inspect", *args, "--json")
    assert r.code == 0, r
    return r.json()


def test_inspect_cross_encoder_shows_the_token_ids_it_scores(cli, bert_cross_encoders):
    from rankify_cli import registry
    from tests.test_neural_rerankers import dl19_items

    path = bert_cross_encoders[1]
    doc = _inspect(cli, "-d", "dl19", "-r", "run:bm25", "--reranker", f"cross-encoder:{path}", "--top-k", "5",
                   "--query", "1037798")
    q, docs = dl19_items(5)["1037798"]
    assert doc["query"] == {"id": "1037798", "text": q}
    assert [i["doc_ids"] for i in doc["inputs"]] == [[d] for d, _ in docs]
    ids, _ = registry.build("reranker", f"cross-encoder:{path}").encode([(q, t) for _, t in docs])
    assert [i["token_ids"] for i in doc["inputs"]] == ids


def test_inspect_e2rank_on_scifact_shows_scifacts_prompt(cli, minilm_tokenizer_dir):
    doc = _inspect(cli, "-d", "scifact", "-r", "bm25", "--reranker", f"e2rank:{minilm_tokenizer_dir}?prompts=dataset",
                   "--top-k", "20")
    pseudo = doc["inputs"][0]
    assert pseudo["role"] == "pseudo-query" and len(pseudo["doc_ids"]) == 20
    assert pseudo["text"].startswith("Given a scientific claim and some relevant documents, rerank the documents "
                                     "that best support or refute the claim:\nDocuments:\n[1] ")
    assert len(doc["inputs"]) == 21 and all(len(i["token_ids"]) <= 256 for i in doc["inputs"])
    plain = _inspect(cli, "-d", "scifact", "-r", "bm25", "--reranker", f"e2rank:{minilm_tokenizer_dir}", "--top-k", "20")
    assert plain["inputs"][0]["text"].startswith("Given a web search query and some relevant documents")


def test_inspect_listwise_windows_render_as_the_model_receives_them(cli, tiny_qwen):
    from transformers import AutoTokenizer

    doc = _inspect(cli, "-d", "dl19", "-r", "run:bm25", "--reranker", f"listwise:{tiny_qwen}", "--top-k", "30")
    windows = doc["inputs"]
    assert [w["window"] for w in windows] == [[10, 30], [0, 20]]  # from the back, in call order
    tok = AutoTokenizer.from_pretrained(tiny_qwen)
    for w in windows:
        text = tok.apply_chat_template(w["messages"], tokenize=False, add_generation_prompt=True, enable_thinking=False)
        assert w["text"] == text and w["token_ids"] == tok(text)["input_ids"]
        user = w["messages"][-1]["content"]  # RankZephyr (the default): one user turn, 20 '[i] passage' lines
        assert len(w["messages"]) == 2 and all(f"\n[{i}] " in user for i in range(2, 21))
