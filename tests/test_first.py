"""FIRST: rank_llm's alphabetical RankZephyr prompt (equal to rank_llm's own prompt builder),
one label-log-probability forward per window on a tiny Qwen2 through the real hf loading path,
and end to end through the installed CLI against a loopback vLLM-style /v1/completions server
that answers prompt_logprobs (oracle: from the qrels; garbage: no preference between labels)."""

from __future__ import annotations

import json
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llm_server import Oracle, _Server, load_trec_dl  # noqa: E402
from test_neural_rerankers import _byte_bpe_tokenizer  # noqa: E402

from rankify_cli import registry  # noqa: E402

_LINE = re.compile(r"\[([A-Z])\] (.*?)\n(?=\[[A-Z]\] |Search Query:)", re.DOTALL)


@pytest.fixture(scope="module")
def dl19():
    from conftest import DATA

    qrels, cands = load_trec_dl("dl19", str(DATA))
    lines = (DATA / "trec-dl" / "dl19-passage" / "queries.tsv").read_text().splitlines()
    return qrels, cands, {q: t.strip() for q, t in (line.split("\t", 1) for line in lines)}


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory, dl19):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    _, cands, queries = dl19
    tok = _byte_bpe_tokenizer(list(queries.values())[:20] + [t for cs in list(cands.values())[:3] for _, t in cs[:20]])
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                      tie_word_embeddings=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    path = tmp_path_factory.mktemp("qwen")
    Qwen2ForCausalLM(cfg).eval().save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_prompt_equals_rank_llms_first_prompt(tiny_qwen, dl19, monkeypatch):
    import types

    import yaml
    import rank_llm
    from rank_llm.data import Candidate as RCand, Query as RQuery, Result

    # rank_llm.rerank's package __init__ files import vllm; its prompt builders need none of it
    for name, sub in (("rank_llm.rerank", "rerank"), ("rank_llm.rerank.listwise", "rerank/listwise")):
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(Path(rank_llm.__file__).parent / sub)]
        monkeypatch.setitem(sys.modules, name, pkg)
    from rank_llm.rerank.listwise.singleturn_listwise_inference_handler import SingleTurnListwiseInferenceHandler

    _, cands, queries = dl19
    qid = sorted(cands)[0]
    folder = Path(rank_llm.__file__).parent / "rerank" / "prompt_templates"
    handler = SingleTurnListwiseInferenceHandler(yaml.safe_load((folder / "rank_zephyr_alpha_template.yaml").read_text()))
    result = Result(RQuery(queries[qid], qid), [RCand(d, 0.0, {"text": t}) for d, t in cands[qid][:20]])
    want = handler.generate_prompt(result, rank_start=0, rank_end=20, max_length=300, use_alpha=True)
    rr = registry.build("reranker", f"first:{tiny_qwen}?context_size=0")
    got = rr.messages(queries[qid], [rr._content(t) for _, t in cands[qid][:20]])
    assert got == want
    assert len(rr.label_ids()) == 26 and len(set(rr.label_ids())) == 26


class _Completions(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    tok = oracle = None
    mode = "oracle"
    requests = 0

    def log_message(self, *args):
        pass

    def _send(self, payload):
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send({"object": "list", "data": [{"id": "oracle", "object": "model"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests += 1
        choices, by, prefix = [], {}, None
        for i, seq in enumerate(body["prompt"]):
            label = self.tok.decode([seq[-1]])
            if self.mode == "garbage":
                lp = -1.0
            else:
                if seq[:-1] != prefix:  # the window's labels share one prompt: read it once
                    prefix = seq[:-1]
                    found = {m.group(1): m.group(2) for m in _LINE.finditer(self.tok.decode(prefix))}
                    by = dict(zip(sorted(found), self.oracle.grades([found[k] for k in sorted(found)])[0]))
                lp = -10.0 + by.get(label, -5) - 0.01 * (ord(label) - 65)  # better grade, earlier label first
            choices.append({"index": i, "text": "", "prompt_logprobs": [None] * (len(seq) - 1) +
                            [{str(seq[-1]): {"logprob": lp, "rank": 1, "decoded_token": label}}]})
        self._send({"id": "cmpl", "object": "text_completion", "model": "oracle", "choices": choices})


def completions_server(tok, oracle, mode):
    handler = type("H", (_Completions,), {"tok": tok, "oracle": oracle, "mode": mode, "requests": 0})
    httpd = _Server(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return httpd, handler


@pytest.mark.parametrize("mode", ["oracle", "garbage"])
def test_cli_oracle_and_garbage_over_prompt_logprobs(mode, tiny_qwen, cli, tmp_path, dl19):
    from transformers import AutoTokenizer

    qrels, cands, _ = dl19
    httpd, handler = completions_server(AutoTokenizer.from_pretrained(tiny_qwen), Oracle(qrels, cands), mode)
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
        res = cli("run", "-d", "dl19", "-r", "run:bm25", "-o", str(tmp_path / "r"), "--json", "-q", "--reranker",
                  f"first:oracle?backend=openai&base_url={url}&tokenizer={tiny_qwen}&context_size=0",
                  env={"RANKIFY_CACHE_DIR": str(tmp_path / "c")})
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert res.code == 0, res
    doc = res.json()
    stats = json.loads((Path(doc["output_dir"]) / "run_info.json").read_text())["stages"][-1]["stats"]
    assert stats["first_windows"] == 43 * 9 == stats["first_forward_calls"] == handler.requests
    if mode == "oracle":
        assert round(doc["metrics"]["nDCG@10"], 4) == 0.8922 and not stats.get("first_fallbacks")
    else:
        assert doc["metrics"]["nDCG@10"] == pytest.approx(doc["stages"][0]["metrics"]["nDCG@10"], abs=1e-12)
        assert round(doc["metrics"]["nDCG@10"], 4) == 0.5058 and stats["first_fallbacks"] == 43 * 9


def test_hf_backend_one_forward_per_window(tiny_qwen, cli, tmp_path):
    args = ("run", "-d", "dl19", "-r", "run:bm25", "-o", str(tmp_path / "r"), "--json", "-q", "--top-k", "20",
            "--reranker", f"first:{tiny_qwen}?context_size=0&doc_max_words=30")
    env = {"RANKIFY_CACHE_DIR": str(tmp_path / "c")}
    res = cli(*args, env=env)
    assert res.code == 0, res
    doc = res.json()
    stats = json.loads((Path(doc["output_dir"]) / "run_info.json").read_text())["stages"][-1]["stats"]
    assert stats["first_windows"] == 43 == stats["first_forward_calls"]  # 20 candidates: one window
    again = cli(*args, env=env)
    stats = json.loads((Path(again.json()["output_dir"]) / "run_info.json").read_text())["stages"][-1]["stats"]
    assert not stats.get("first_forward_calls") and again.json()["metrics"] == doc["metrics"]
