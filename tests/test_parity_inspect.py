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


# E2Rank golden inputs: Alibaba-NLP/E2Rank src/eval.py at commit 478f298e04cc03b643c715b258e66f3741dfd694,
# EvalModel.__call__ run outside the project (vLLM replaced by a recorder of what it is asked to
# embed; eval.sh's --rank-method listwise, window = topk = 100, so one call on the whole list) on
# the same candidates: DL19's staged BM25 top-100 of query 1037798, SciFact's BM25 top-100 of claim
# 1 (title + body), the tokenizer's chat template CHATML below. "dataset-prompt": the same after
# set_prompt_template("scifact") (eval.py does that for --rank-method embedding only).
E2RANK_GOLDEN = {
    ("dl19", "1037798", ""): ("72597c99925566b7f228cff9483221cfbb561ec7a61ca46dcc29308bcbcbd257", 6756,
                              "aef23d0062bc2fb428d794d83392356a65e7679db16621ecf5cecf4ee47db3d1"),
    # (without prompts=dataset, reference default: pseudo-query 2a8a25b79f119687cd1754c7d5c5d65d55e139841fbcfa1619af328b6f950b22,
    # 37,334 characters, same documents; not run here to save a CLI call, the web-search prompt is DL19's)
    ("scifact", "1", "?prompts=dataset"): ("da8a43698ffcf87168d42ee99f1146e29e5f1faea179c839db704386cff2d858", 37350,
                                           "ed9982787cb6574793010fcb81756f8698ce8bc6b3d86ff500d9d0c7c580a0e8"),
}


@pytest.fixture(scope="module")
def e2rank_folder(tmp_path_factory):
    """A Qwen-style folder as E2Rank's: CHATML chat template (thinking switched off by
    enable_thinking=False), 40,960 positions as Qwen3-0.6B, so no cap shortens the pseudo-query."""
    from transformers import Qwen2Config

    from tests.test_neural_rerankers import CHATML, _byte_bpe_tokenizer

    tok = _byte_bpe_tokenizer(["Given a web search query and some relevant documents", "Search Query"])
    assert tok.chat_template == CHATML
    path = tmp_path_factory.mktemp("e2rank")
    Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=40960).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_e2rank_inputs_equal_the_reference_eval_py_golden(cli, e2rank_folder):
    import hashlib

    compared = 0
    for (dataset, qid, opts), (pseudo_sha, pseudo_chars, docs_sha) in E2RANK_GOLDEN.items():
        retriever = "run:bm25" if dataset == "dl19" else "bm25"
        doc = _inspect(cli, "-d", dataset, "-r", retriever, "--reranker", f"e2rank:{e2rank_folder}{opts}",
                       "--top-k", "100", "--query", qid)
        pseudo, docs = doc["inputs"][0], doc["inputs"][1:]
        assert pseudo["role"] == "pseudo-query" and len(pseudo["doc_ids"]) == 20 and len(docs) == 100
        assert len(pseudo["text"]) == pseudo_chars
        assert hashlib.sha256(pseudo["text"].encode()).hexdigest() == pseudo_sha, (dataset, opts)
        assert hashlib.sha256(json.dumps([d["text"] for d in docs]).encode()).hexdigest() == docs_sha, (dataset, opts)
        assert not doc["stats"].get("shortened_pseudo_queries")
        compared += 1
    print(f"\nparity E2Rank inputs vs eval.py golden (DL19 1037798; SciFact 1, its own prompt): {compared} "
          "pseudo-queries and their 100 documents equal")


# ERank: the paper's Fig. 5 wording, Table 7 instructions and App. D truncation (arXiv 2509.00520v1), typed
# here from the paper, not from the template. The line breaks are the toolkit's (the paper's text does not
# show them); the model repositories' examples/utils.py, the code behind the numbers, was not reachable.
ERANK_FIG5 = ("Given a query and a document, please give a relevance score of 0 to 10.\n"
              "The goal or relevance definition is: {instruction}\n\nHere is the query:\n{query}\n\n"
              "Here is the document:\n{document}\n\n"
              "After thinking, directly choose a relevance score from [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10].\n"
              "- 0 represents completely not related.\n- 10 means perfectly related.\n\nDesired output format:\n"
              "<think>put your thinking here</think><answer>Only allows an integer here</answer>\n\nYour output:")
ERANK_TABLE7 = {
    "dl19": "Given a query, retrieval relevant passage.",
    "scifact": "Given a query, retrieval relevant passage.",
    "bright-pony": "I will use the programming language pony. But to solve the problem above, I need to know things "
                   "about pony. A passage is relevant if it contains docs that match any part (even basic parts) of "
                   "the code I will have to write for the above program.",
    "bright-theoremqa-theorems": "We want to find a document which uses the same mathematical process as the query. "
                                 "A document is relevant if it uses the same mathematical process as the query.",
    "bright-biology": "A document is relevant if it contains information that helps answer or address the query. A "
                      "document is not relevant if it doesn't contain information that helps answer the query, even "
                      "if it mentions similar topics.",
}


def test_inspect_erank_shows_the_papers_prompt_with_each_datasets_instruction(cli, tiny_qwen):
    from transformers import AutoTokenizer

    from rankify_cli import registry
    from rankify_cli.inspect_inputs import inspect_inputs
    from rankify_cli.types import Candidate, Query
    from tests.test_neural_rerankers import dl19_items

    tok = AutoTokenizer.from_pretrained(tiny_qwen)

    def expected(instruction, q, d):
        user = ERANK_FIG5.format(instruction=instruction, query=q, document=d)
        return tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)

    doc = _inspect(cli, "-d", "dl19", "-r", "run:bm25", "--reranker", f"erank-4b:{tiny_qwen}", "--top-k", "3",
                   "--query", "1037798")
    q, docs = dl19_items(3)["1037798"]
    assert [i["text"] for i in doc["inputs"]] == [expected(ERANK_TABLE7["dl19"], q, d) for _, d in docs]
    assert doc["inputs"][0]["token_ids"] == tok(doc["inputs"][0]["text"], add_special_tokens=False)["input_ids"]

    rr = registry.build("reranker", f"generative:{tiny_qwen}")
    query, cand = Query("q", "which pony type holds a value"), [Candidate("d", 0.0, "a passage")]
    for dataset, instruction in ERANK_TABLE7.items():
        got = inspect_inputs(rr, query, cand, dataset)["inputs"][0]["text"]
        assert got == expected(instruction, query.text, "a passage"), dataset
    # the config (and so a result's config hash) does not move with the dataset; the pairs' cache key does
    rr.dataset = "bright-pony"
    pony_key, pony_cfg = rr.cache_fingerprint(), rr.config()
    rr.dataset = "dl19"
    assert rr.config() == pony_cfg and rr.cache_fingerprint() != pony_key
    own = registry.build("reranker", f"generative:{tiny_qwen}?instruction=Find_proofs")  # the user's wins
    assert "definition is: Find_proofs\n" in inspect_inputs(own, query, cand, "bright-pony")["inputs"][0]["text"]

    # App. D: a query or document over 2,048 tokens is cut to its first 2,048 (and counted)
    long_doc = " ".join(t for _, t in docs) * 40
    ids = tok(long_doc, add_special_tokens=False)["input_ids"]
    assert len(ids) > 2048
    shown = inspect_inputs(rr, query, [Candidate("long", 0.0, long_doc)], "dl19")
    cut = tok.decode(ids[:2048], skip_special_tokens=True)
    assert shown["inputs"][0]["text"] == expected(ERANK_TABLE7["dl19"], query.text, cut)
    assert shown["stats"]["truncated_documents"] == 1
