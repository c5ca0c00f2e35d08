"""Evidence (Prism-Reranker shape): a tiny Qwen2 with the Prism template through the real
loading path; the score equals sigmoid(l_yes - l_no) computed here from the model's own
logits, and `explain=true` writes explanations.jsonl beside the run with token counts."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llm_server import load_trec_dl  # noqa: E402
from test_neural_rerankers import _byte_bpe_tokenizer  # noqa: E402

from rankify_cli import registry  # noqa: E402
from rankify_cli.types import Candidate, Query  # noqa: E402


@pytest.fixture(scope="module")
def tiny_prism(tmp_path_factory):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from conftest import DATA

    _, cands = load_trec_dl("dl19", str(DATA))
    texts = [t for cs in list(cands.values())[:3] for _, t in cs[:20]]
    tpl = json.loads((Path(__file__).resolve().parents[1] / "rerankers" / "templates" / "prism.json").read_text())
    tok = _byte_bpe_tokenizer(texts + [tpl["prefix"], tpl["suffix"], "<contribution> </contribution> <evidence> </evidence>"])
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                      tie_word_embeddings=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    path = tmp_path_factory.mktemp("prism")
    Qwen2ForCausalLM(cfg).eval().save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_score_is_sigmoid_of_the_label_logit_gap(tiny_prism):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rr = registry.build("reranker", f"prism:{tiny_prism}")
    pairs = [("what is a cat", "A cat is a small domesticated mammal."), ("rain", "The stock market closed higher.")]
    got = rr.rerank(Query("q", pairs[0][0]), [Candidate("a", 0.0, pairs[0][1])])[0].score
    tok = AutoTokenizer.from_pretrained(tiny_prism)
    model = AutoModelForCausalLM.from_pretrained(tiny_prism).eval()
    ids = rr.encode([pairs[0]])[0]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1]
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    want = 1.0 / (1.0 + math.exp(-(float(logits[yes]) - float(logits[no]))))
    assert got == pytest.approx(want, abs=1e-5)


def test_explanations_jsonl_beside_the_run(tiny_prism, cli, tmp_path):
    res = cli("run", "-d", "dl19", "-r", "run:bm25", "-o", str(tmp_path / "r"), "--json", "-q", "--top-k", "5",
              "--reranker", f"prism:{tiny_prism}?explain=true&max_new_tokens=12",
              env={"RANKIFY_CACHE_DIR": str(tmp_path / "c")})
    assert res.code == 0, res
    out = Path(res.json()["output_dir"])
    info = json.loads((out / "run_info.json").read_text())
    stats = info["stages"][-1]["stats"]
    assert "explanations" not in stats
    rows = [json.loads(line) for line in (out / "explanations.jsonl").read_text().splitlines()]
    head = [line.split() for line in (out / "stage2.run").read_text().splitlines()]
    yes = [(q, d) for q, _, d, rank, score, _ in head if int(rank) <= 5 and float(score) >= 0.5]
    assert rows and sorted((r["query_id"], r["doc_id"]) for r in rows) == sorted(yes)
    assert stats["explanations_written"] == len(rows)
    for r in rows:
        assert r["stage"] == 2 and r["score"] >= 0.5 and 1 <= r["generated_tokens"] <= 12 and r["document_tokens"] > 0
        assert set(r) >= {"contribution", "evidence", "text", "evidence_tokens"}


def test_fields_are_read_from_the_generation(tiny_prism):
    rr = registry.build("reranker", f"prism:{tiny_prism}?explain=true")
    text = "\n<contribution>defines the term</contribution>\n<evidence>A cat is a small mammal.</evidence>"
    assert rr.parse(text) == {"contribution": "defines the term", "evidence": "A cat is a small mammal."}
    assert rr.parse("no tags here") == {"contribution": None, "evidence": None}


def evidence_server(tok):
    """A vLLM-style /v1/completions speaking token ids: label requests (prompt_logprobs) judge
    every document relevant ('yes' likelier); generation requests answer the Prism way, with the
    document's first eight words as its evidence."""
    import re
    import threading

    from llm_server import _Server
    from test_first import _Completions

    doc_re = re.compile(r"<Document>: (.*?)<\|im_end\|>", re.DOTALL)

    class Handler(_Completions):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            choices = []
            for i, seq in enumerate(body["prompt"]):
                if "prompt_logprobs" in body:
                    lp = -0.1 if self.tok.decode([seq[-1]]) == "yes" else -3.0
                    choices.append({"index": i, "text": "", "prompt_logprobs": [None] * (len(seq) - 1) +
                                    [{str(seq[-1]): {"logprob": lp, "rank": 1}}]})
                    continue
                doc = doc_re.search(self.tok.decode(seq)).group(1)
                text = (f"\n<contribution>states what the query asks</contribution>\n"
                        f"<evidence>{' '.join(doc.split()[:8])}</evidence>")
                ids = self.tok(text, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
                choices.append({"index": i, "text": text, "logprobs": {"tokens": [f"token_id:{t}" for t in ids],
                                                                        "token_logprobs": [-0.1] * len(ids)}})
            self._send({"id": "cmpl", "object": "text_completion", "model": "prism", "choices": choices})

    handler = type("H", (Handler,), {"tok": tok})
    httpd = _Server(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return httpd


def test_leaderboard_evidence_ratio_from_explanations(tiny_prism, cli, tmp_path):
    """`rankify run` with prism?explain=true writes explanations.jsonl; the leaderboard's
    evidence_ratio is its evidence tokens over its document tokens (the context an agent
    saves), and a run without evidence has no such column."""
    from transformers import AutoTokenizer

    httpd = evidence_server(AutoTokenizer.from_pretrained(tiny_prism))
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
        res = cli("run", "-d", "dl19", "-r", "run:bm25", "-o", str(tmp_path / "r"), "--json", "-q", "--top-k", "3",
                  "--query-ids", "19335,47923", "--reranker",
                  f"prism:{tiny_prism}?explain=true&backend=openai&base_url={url}&served_model=prism",
                  env={"RANKIFY_CACHE_DIR": str(tmp_path / "c")})
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert res.code == 0, res
    rows = [json.loads(line) for line in (Path(res.json()["output_dir"]) / "explanations.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["evidence"] and r["evidence_tokens"] < r["document_tokens"] for r in rows)
    want = sum(r["evidence_tokens"] for r in rows) / sum(r["document_tokens"] for r in rows)
    board = cli("leaderboard", "-o", str(tmp_path / "r"), "--json")
    assert board.code == 0, board
    (row,) = board.json()
    assert 0 < row["evidence_ratio"] == pytest.approx(want, abs=5e-5)
    plain = cli("run", "-d", "dl19", "-r", "run:bm25", "-o", str(tmp_path / "r"), "--json", "-q",
                "--query-ids", "19335,47923", env={"RANKIFY_CACHE_DIR": str(tmp_path / "c")})
    assert plain.code == 0, plain
    rows = cli("leaderboard", "-o", str(tmp_path / "r"), "--json").json()
    ratios = {r["pipeline"].startswith("run:bm25 >> prism"): r["evidence_ratio"] for r in rows}
    assert len(rows) == 2 and ratios == {True: row["evidence_ratio"], False: None}


def test_prompt_is_the_prism_authors_and_presets_name_their_checkpoints(tiny_prism):
    """The prism template renders the prompt of the Prism authors' transformers usage (system
    line, the training instruction asking for contribution and evidence, <Instruct>/<Query>/
    <Document>, an empty think block), tokenized without added special tokens as theirs."""
    from transformers import AutoTokenizer

    instruction = ('Judge if the document is relevant to the query. Reply "yes" or "no".\nOn "yes", also emit:\n'
                   "<contribution>One sentence covering every core point the document contributes to the query, "
                   "without elaboration.</contribution>\n<evidence>Self-contained rewrite of the query-relevant "
                   "content. Rules:\n- Faithful: rephrase only; add or infer nothing.\n- Self-contained: evidence "
                   "alone must fully answer the query.\n- Concise: drop query-irrelevant background.\n- Verbatim (no "
                   "translation): proper nouns, terms, abbreviations, numbers, dates, code, URLs.\n- Output language: "
                   "multilingual doc \u2192 query's language; else doc's language.</evidence>")
    query, doc = "boiling point of water", "Water boils at 100 C at sea level."
    want = ("<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
            f"provided. <|im_end|>\n<|im_start|>user\n<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"
            "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")
    rr = registry.build("reranker", f"prism:{tiny_prism}")
    assert rr.encode([(query, doc)])[0] == AutoTokenizer.from_pretrained(tiny_prism)(want)["input_ids"]
    for preset, hub_id in (("prism-qwen3.5-0.8b", "infgrad/Prism-Qwen3.5-Reranker-0.8B"),
                           ("prism-qwen3.5-9b", "infgrad/Prism-Qwen3.5-Reranker-9B"),
                           ("prism-qwen3-4b-exp", "infgrad/Prism-Qwen3-Reranker-4B-exp")):
        assert registry.RERANKER_PRESETS[preset][:2] == ("prism", hub_id)


def test_setwise_and_listwise_reasoning_go_to_explanations(cli, tmp_path):
    """explain=true keeps each LLM answer's <think> reasoning the way prism keeps evidence:
    setwise through the installed CLI against the loopback server (its oracle reasons
    'grades [...]' before its answer), one record per call with its number and token count;
    listwise in-process with answers whose reasoning precedes the permutation."""
    from conftest import DATA
    from llm_server import LLMServer, Oracle

    from rankify_cli.rerankers.backends.base import Backend, ChatResponse
    from rankify_cli.types import StageContext

    qrels, cands = load_trec_dl("dl19", str(DATA))
    with LLMServer(Oracle(qrels, cands), mode="oracle") as srv:
        res = cli("run", "-d", "dl19", "-r", "run:bm25", "-o", str(tmp_path / "r"), "--json", "-q", "--top-k", "8",
                  "--query-ids", "19335,47923", "--reranker",
                  f"setwise:oracle-model?backend=openai&base_url={srv.url}&set_size=4&k=2&explain=true",
                  env={"RANKIFY_CACHE_DIR": str(tmp_path / "c")})
    assert res.code == 0, res
    out = Path(res.json()["output_dir"])
    stats = json.loads((out / "run_info.json").read_text())["stages"][-1]["stats"]
    rows = [json.loads(line) for line in (out / "explanations.jsonl").read_text().splitlines()]
    assert len(rows) == stats["llm_calls"] + stats.get("llm_cache_hits", 0) == stats["explanations_written"] > 2
    for qid in ("19335", "47923"):
        mine = [r for r in rows if r["query_id"] == qid]
        assert [r["call"] for r in mine] == list(range(1, len(mine) + 1))
    assert all(r["stage"] == 2 and r["reasoning"].startswith("grades [") and r["answer"].startswith("<answer>[")
               for r in rows)
    assert "explanations" not in stats

    class Reasoner(Backend):
        kind, tokenizer_name = "fake", None

        def identity(self):
            return {"backend": "fake"}

        def chat(self, requests):
            return [ChatResponse("<think>the second passage names the query's terms</think>\n[2] > [1]")
                    for _ in requests]

    for explain in (True, False):
        rr = registry.build("reranker", f"listwise:m?backend=openai&base_url=http://127.0.0.1:9&window=2&stride=1"
                                        f"&context_size=0&cache=false&explain={str(explain).lower()}")
        rr.backend = Reasoner()
        ctx = StageContext()
        got = rr.rerank_all([(Query("q", "what is a cat"), [Candidate("a", 2.0, "Stocks rose."),
                                                             Candidate("b", 1.0, "A cat is a mammal.")])], ctx)[0]
        assert [c.doc_id for c in got] == ["b", "a"]
        if explain:
            assert ctx.stats["explanations"] == [{"query_id": "q", "call": 1, "answer": "[2] > [1]", "reasoning_tokens":
                                                  None, "reasoning": "the second passage names the query's terms"}]
        else:
            assert "explanations" not in ctx.stats
