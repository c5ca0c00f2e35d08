"""PRP pairwise reranking: parity with ielab/llm-rankers 0.0.2 (the same prompts in the same
order, the same comparison counts and the same final order for heapsort and sliding/bubblesort,
given the same answers), and end to end through the installed CLI against the loopback
server (oracle: the ideal nDCG@10 of the reranked candidates; garbage: the first-stage order,
every comparison a counted fallback)."""

from __future__ import annotations

import json
import sys
from itertools import combinations
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llm_server import LLMServer, Oracle, load_trec_dl  # noqa: E402

from rankify_cli import registry  # noqa: E402
from rankify_cli.rerankers.backends.base import Backend, ChatResponse  # noqa: E402
from rankify_cli.types import Candidate, Query, StageContext  # noqa: E402

TOP = 12  # candidates reranked in the CLI runs (allpair asks 2 x 66 prompts per query)


@pytest.fixture(scope="module")
def dl19():
    from conftest import DATA

    qrels, cands = load_trec_dl("dl19", str(DATA))
    lines = (DATA / "trec-dl" / "dl19-passage" / "queries.tsv").read_text().splitlines()
    return qrels, cands, {q: t.strip() for q, t in (line.split("\t", 1) for line in lines)}


def answer_for(grades: dict[str, int], prompt: str) -> str:
    a = prompt.split('Passage A: "', 1)[1].split('"\n\nPassage B: "', 1)[0]
    b = prompt.split('"\n\nPassage B: "', 1)[1].rsplit('"\n\nOutput', 1)[0]
    return "A" if grades[a] >= grades[b] else "B"


class FakeChat(Backend):
    kind = "fake"

    def __init__(self, grades):
        super().__init__()
        self.grades, self.seen = grades, []

    def identity(self):
        return {"backend": "fake"}

    def chat(self, requests):
        out = []
        for r in requests:
            user = r.messages[-1]["content"]
            self.seen.append((r.messages[0]["content"], user))
            out.append(ChatResponse("Passage " + answer_for(self.grades, user)))
        return out


@pytest.mark.parametrize("method", ["heapsort", "sliding"])
def test_prompts_counts_and_order_equal_llm_rankers(method, dl19, monkeypatch):
    import tiktoken
    from llmrankers import pairwise as ref
    from llmrankers.rankers import SearchResult

    monkeypatch.setattr(tiktoken, "encoding_for_model", lambda name: None)
    qrels, cands, queries = dl19
    for qid in sorted(cands)[:3]:
        docs = cands[qid][:20]
        grades = {t: qrels[qid].get(d, 0) for d, t in docs}
        upstream = ref.OpenAiPairwiseLlmRanker("gpt-x", api_key="unused",
                                               method="bubblesort" if method == "sliding" else method, k=10)
        prompts = []

        def respond(text, _grades=grades, _prompts=prompts):
            _prompts.append((upstream.system_prompt, text))
            return answer_for(_grades, text)

        upstream._get_response = respond
        want = upstream.rerank(queries[qid], [SearchResult(docid=d, score=0.0, text=t) for d, t in docs])
        rr = registry.build("reranker", f"pairwise:m?method={method}&backend=openai&base_url=http://127.0.0.1:9"
                                        "&doc_max_tokens=100000&cache=false")
        fake = FakeChat(grades)
        rr.backend = fake
        ctx = StageContext()
        got = rr.rerank_all([(Query(qid, queries[qid]), [Candidate(d, 0.0, t) for d, t in docs])], ctx)[0]
        assert fake.seen == prompts  # the same prompts, in the same order
        assert ctx.stats["pairwise_per_query"][qid]["comparisons"] == upstream.total_compare
        assert [c.doc_id for c in got] == [r.docid for r in want]
        assert [c.score for c in got] == [float(r.score) for r in want]


def test_allpair_counts_every_pair_once_and_scores_wins(dl19):
    qrels, cands, queries = dl19
    qid = sorted(cands)[0]
    docs = cands[qid][:8]
    grades = {t: qrels[qid].get(d, 0) for d, t in docs}
    rr = registry.build("reranker", "pairwise:m?method=allpair&k=8&backend=openai&base_url=http://127.0.0.1:9&cache=false")
    rr.backend = fake = FakeChat(grades)
    ctx = StageContext()
    got = rr.rerank_all([(Query(qid, queries[qid]), [Candidate(d, 0.0, t) for d, t in docs])], ctx)[0]
    # llm-rankers' allpair counts one comparison per two-prompt batch (batch_size=2): one per pair
    assert ctx.stats["pairwise_per_query"][qid]["comparisons"] == len(list(combinations(docs, 2))) == 28
    assert len(fake.seen) == 56
    g = [qrels[qid].get(c.doc_id, 0) for c in got]
    assert g == sorted(g, reverse=True)


def ideal_ndcg_of_head(qrels, cands, top: int) -> float:
    import ir_measures
    from ir_measures import nDCG

    qr = [ir_measures.Qrel(q, d, g) for q in qrels for d, g in qrels[q].items()]
    run = []
    for q, docs in cands.items():
        head = sorted(range(min(top, len(docs))), key=lambda i: (-qrels[q].get(docs[i][0], 0), i))
        order = head + list(range(top, len(docs)))
        run += [ir_measures.ScoredDoc(q, docs[i][0], float(len(order) - r)) for r, i in enumerate(order)]
    return ir_measures.calc_aggregate([nDCG @ 10], qr, run)[nDCG @ 10]


@pytest.mark.parametrize("method", ["allpair", "heapsort", "sliding"])
def test_cli_oracle_and_garbage(method, cli, tmp_path, dl19):
    qrels, cands, _ = dl19
    spec = f"pairwise:oracle-model?method={method}&backend=openai&base_url={{url}}"
    args = ("run", "-d", "dl19", "-r", "run:bm25", "--json", "-q", "--top-k", str(TOP))
    with LLMServer(Oracle(qrels, cands), mode="oracle") as srv:
        res = cli(*args, "-o", str(tmp_path / "o"), "--reranker", spec.format(url=srv.url),
                  env={"RANKIFY_CACHE_DIR": str(tmp_path / "c1")})
        assert res.code == 0, res
        assert srv.stats()["unmatched"] == 0
    doc = res.json()
    stats = json.loads((Path(doc["output_dir"]) / "run_info.json").read_text())["stages"][-1]["stats"]
    assert doc["metrics"]["nDCG@10"] == pytest.approx(ideal_ndcg_of_head(qrels, cands, TOP), abs=1e-9)
    per_query = stats["pairwise_per_query"]
    # two prompts per comparison; a prompt asked again (heapsort revisits pairs) comes from the cache
    assert len(per_query) == 43 and stats["llm_calls"] + stats.get("llm_cache_hits", 0) == 2 * stats["pairwise_comparisons"]
    assert sum(v["comparisons"] for v in per_query.values()) == stats["pairwise_comparisons"]
    if method == "allpair":
        assert set(v["comparisons"] for v in per_query.values()) == {TOP * (TOP - 1) // 2}
    assert not stats.get("llm_fallbacks")
    with LLMServer(Oracle(qrels, cands), mode="garbage") as srv:
        res = cli(*args, "-o", str(tmp_path / "g"), "--reranker", spec.format(url=srv.url),
                  env={"RANKIFY_CACHE_DIR": str(tmp_path / "c2")})
        assert res.code == 0, res
    doc = res.json()
    stats = json.loads((Path(doc["output_dir"]) / "run_info.json").read_text())["stages"][-1]["stats"]
    assert doc["metrics"]["nDCG@10"] == pytest.approx(doc["stages"][0]["metrics"]["nDCG@10"], abs=1e-12)
    assert round(doc["metrics"]["nDCG@10"], 4) == 0.5058
    assert stats["llm_fallbacks"] == stats["pairwise_comparisons"] > 0


from test_first import tiny_qwen  # noqa: E402,F401  (the tiny chat model fixture)


def test_logprob_scoring_renders_the_reference_local_prompt(tiny_qwen, cli, tmp_path):
    from transformers import AutoTokenizer

    rr = registry.build("reranker", f"pairwise:{tiny_qwen}?scoring=logprobs&method=heapsort")
    tok = AutoTokenizer.from_pretrained(tiny_qwen)
    msgs = rr.messages("what is a cat", "A cat is a mammal.", "Stocks rose.")
    assert msgs == [{"role": "user", "content": 'Given a query "what is a cat", which of the following two passages is '
                     'more relevant to the query?\n\nPassage A: "A cat is a mammal."\n\nPassage B: "Stocks rose."\n\n'
                     'Output Passage A or Passage B:'}]
    # llm-rankers' local path: the chat template with the generation prompt, then " Passage:"
    want = tok([tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) + " Passage:"]).input_ids[0]
    seen = []
    rr.backend.label_logprobs = lambda prompts, labels, **kw: seen.append((prompts, labels)) or [[-1.0, -2.0]]
    assert rr.letter_by_logprobs(StageContext(), msgs) == "Passage A" and seen[0][0] == [want]
    # three queries: the hf path end to end (the loopback test below covers all 43)
    res = cli("run", "-d", "dl19", "-r", "run:bm25", "-o", str(tmp_path / "r"), "--json", "-q", "--top-k", "6",
              "--query-ids", "19335,47923,87181",
              "--reranker", f"pairwise:{tiny_qwen}?scoring=logprobs&method=sliding&k=3&doc_max_tokens=40",
              env={"RANKIFY_CACHE_DIR": str(tmp_path / "c")})
    assert res.code == 0, res
    stats = json.loads((Path(res.json()["output_dir"]) / "run_info.json").read_text())["stages"][-1]["stats"]
    assert stats["pairwise_forward_calls"] <= 2 * stats["pairwise_comparisons"] and stats["pairwise_forward_calls"] > 0
    assert len(stats["pairwise_per_query"]) == 3


@pytest.fixture(scope="module")
def tiny_prp_t5(tmp_path_factory, dl19):
    """A tiny random T5 (the real loading path: T5ForConditionalGeneration, a Unigram tokenizer
    T5Tokenizer loads) whose generation config lets it answer only ' A' or ' B', then </s>: the
    letter is the random model's own choice, so answers disagree and conflicts occur."""
    import torch
    from test_duot5 import unigram_t5_tokenizer
    from transformers import GenerationConfig, T5Config, T5ForConditionalGeneration, T5Tokenizer

    qrels, cands, queries = dl19
    texts = [queries[sorted(cands)[0]]] + [t for _, t in cands[sorted(cands)[0]][:6]]
    path = tmp_path_factory.mktemp("prp-t5")
    unigram_t5_tokenizer(texts + ["Given a query which of the following two passages is more relevant to the "
                                  "Output Passage A or B"]).save_pretrained(path)
    # saved again as T5Tokenizer, as a T5 checkpoint's tokenizer is (it splits on any whitespace, newlines too)
    T5Tokenizer.from_pretrained(path).save_pretrained(path)
    tok = T5Tokenizer.from_pretrained(path)
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=len(tok), d_model=64, d_ff=64, d_kv=32, num_layers=2, num_decoder_layers=2, num_heads=2,
                   decoder_start_token_id=tok.pad_token_id, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    cfg.tie_word_embeddings = False  # (not taken as a keyword) the head's rows are set below, the inputs' kept
    model = T5ForConditionalGeneration(cfg).eval()
    letters = [tok.convert_tokens_to_ids("\u2581A"), tok.convert_tokens_to_ids("\u2581B")]
    # a random head prefers one letter whatever the input: B's row becomes A's plus a direction fitted
    # (least squares on the first query's 30 answer states, 64 wide) so that the letter follows the order of
    # two pairs in three (a win: the two orders agree) and stays put for the third (a conflict)
    user = json.loads((Path(registry.__file__).parent.parent / "rerankers" / "templates" / "pairwise-prp-t5.json")
                      .read_text())["user"]
    q0 = sorted(cands)[0]
    pairs = list(combinations([t for _, t in cands[q0][:6]], 2))
    prompts = [user.format(query=queries[q0], doc1=a, doc2=b) for a, b in pairs]
    prompts += [user.format(query=queries[q0], doc1=b, doc2=a) for a, b in pairs]
    enc = tok(prompts, padding=True, return_tensors="pt")
    dec = tok(["<pad> Passage"] * len(prompts), add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        h = model(**enc, decoder_input_ids=dec, output_hidden_states=True).decoder_hidden_states[-1][:, -1]
        sign = torch.tensor([1.0 if p % 3 else -1.0 for p in range(len(pairs))])
        want = torch.cat([-sign, torch.where(sign > 0, sign, -sign)])  # B - A logit: < 0 answers A
        x = torch.cat([h, 100 * h.mean(0, keepdim=True)])  # the last row keeps the mean state undecided
        v = torch.linalg.lstsq(x, torch.cat([want, torch.zeros(1)])[:, None]).solution[:, 0]
        head = model.lm_head.weight
        head[letters[1]] = head[letters[0]] + 10 * v
    model.generation_config = GenerationConfig(
        decoder_start_token_id=tok.pad_token_id, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        suppress_tokens=[t for t in range(len(tok)) if t not in letters + [tok.eos_token_id]],
        begin_suppress_tokens=[tok.eos_token_id], forced_eos_token_id=tok.eos_token_id)
    model.save_pretrained(path)
    return str(path)


def test_allpair_on_t5_equals_llm_rankers(tiny_prp_t5, dl19, monkeypatch):
    """llm-rankers runs allpair only on T5 (PairwiseLlmRanker, model_type t5): the same encoder
    inputs in the same order, one comparison per pair, the same final order and scores, on the
    top-6 of a DL19 query; the model's answers both win and conflict."""
    import torch
    from llmrankers import pairwise as ref
    from llmrankers.rankers import SearchResult

    qrels, cands, queries = dl19
    # the reference's DataLoader forks 4 workers per query; batches are the same in-process
    monkeypatch.setattr(ref, "DataLoader", lambda *a, num_workers=0, **kw: torch.utils.data.DataLoader(*a, **kw))
    upstream = ref.PairwiseLlmRanker(tiny_prp_t5, None, "cpu", method="allpair", batch_size=2, k=10)
    seen_ref, seen_ours, answers = [], [], []
    real = upstream.llm.generate
    upstream.llm.generate = lambda input_ids, **kw: seen_ref.append(input_ids.tolist()) or real(input_ids, **kw)
    rr = registry.build("reranker", f"pairwise:{tiny_prp_t5}?template=pairwise-prp-t5&method=allpair&k=10"
                                    "&batch_size=8&doc_max_tokens=100000&cache=false")
    gen, ask = rr.backend.generate_ids, rr.seq2seq_answers
    rr.backend.generate_ids = lambda prompts, **kw: seen_ours.append([list(p) for p in prompts]) or gen(prompts, **kw)
    rr.seq2seq_answers = lambda ctx, reqs: (lambda out: answers.extend(o.text for o in out) or out)(ask(ctx, reqs))
    qid = sorted(cands)[0]
    docs = cands[qid][:6]
    want = upstream.rerank(queries[qid], [SearchResult(docid=d, score=0.0, text=t) for d, t in docs])
    ctx = StageContext()
    got = rr.rerank_all([(Query(qid, queries[qid]), [Candidate(d, 0.0, t) for d, t in docs])], ctx)[0]
    # equal inputs: the reference pads each two-prompt batch (pad id 0), ours pads within its batch
    strip = [[t for t in row if t != 0] for batch in seen_ref for row in batch]
    assert strip == [[t for t in p if t != 0] for batch in seen_ours for p in batch] and len(strip) == 2 * 15
    assert ctx.stats["pairwise_per_query"][qid]["comparisons"] == upstream.total_compare == 15
    assert [c.doc_id for c in got] == [r.docid for r in want]
    assert [c.score for c in got] == [float(r.score) for r in want]
    assert not ctx.stats.get("llm_fallbacks")
    pairs = list(zip(answers[::2], answers[1::2]))
    wins = sum(p in (("Passage A", "Passage B"), ("Passage B", "Passage A")) for p in pairs)
    assert set(answers) == {"Passage A", "Passage B"} and 0 < wins < 15, pairs


def logprob_server(tok, oracle, mode):
    """A vLLM-style /v1/completions answering prompt_logprobs for each prompt + label token: the
    oracle gives the letter of the better-graded passage the higher log-probability (ties: A);
    garbage gives both letters the same one."""
    import re
    import threading

    from llm_server import _Server
    from test_first import _Completions

    pattern = re.compile(r'Passage A: "(.*)"\n\nPassage B: "(.*)"\n\nOutput Passage A or Passage B:', re.DOTALL)

    class Handler(_Completions):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            type(self).requests += 1
            choices = []
            for i, seq in enumerate(body["prompt"]):
                label = self.tok.decode([seq[-1]]).strip()
                lp = -1.0
                if self.mode == "oracle":
                    a, b = pattern.search(self.tok.decode(seq[:-1])).groups()
                    ga, gb = self.oracle.grades([a, b])[0]
                    lp = -0.5 if (label == "A") == (ga >= gb) else -3.0
                choices.append({"index": i, "text": "", "prompt_logprobs": [None] * (len(seq) - 1) +
                                [{str(seq[-1]): {"logprob": lp, "rank": 1, "decoded_token": label}}]})
            self._send({"id": "cmpl", "object": "text_completion", "model": "oracle", "choices": choices})

    handler = type("H", (Handler,), {"tok": tok, "oracle": oracle, "mode": mode, "requests": 0})
    httpd = _Server(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return httpd


def test_logprob_scoring_oracle_and_garbage_over_prompt_logprobs(tiny_qwen, cli, tmp_path, dl19):
    """scoring=logprobs through the installed CLI on a vLLM-style server: the oracle's letter
    log-probabilities reach the ideal nDCG@10 of the reranked head; equal ones are no answer,
    so every comparison is a counted fallback and the first-stage order stays (0.5058)."""
    from transformers import AutoTokenizer

    qrels, cands, _ = dl19
    top = 8
    out = {}
    for mode in ("oracle", "garbage"):
        httpd = logprob_server(AutoTokenizer.from_pretrained(tiny_qwen), Oracle(qrels, cands), mode)
        try:
            url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
            res = cli("run", "-d", "dl19", "-r", "run:bm25", "-o", str(tmp_path / mode), "--json", "-q", "--top-k",
                      str(top), "--reranker", "pairwise:oracle?scoring=logprobs&method=heapsort&doc_max_tokens=400"
                      f"&backend=openai&base_url={url}&tokenizer={tiny_qwen}", env={"RANKIFY_CACHE_DIR": str(tmp_path / f"c-{mode}")})
        finally:
            httpd.shutdown()
            httpd.server_close()
        assert res.code == 0, res
        doc = res.json()
        out[mode] = (doc, json.loads((Path(doc["output_dir"]) / "run_info.json").read_text())["stages"][-1]["stats"])
    doc, stats = out["oracle"]
    assert doc["metrics"]["nDCG@10"] == pytest.approx(ideal_ndcg_of_head(qrels, cands, top), abs=1e-9)
    assert stats["pairwise_forward_calls"] > 0 and not stats.get("llm_fallbacks")
    assert len(stats["pairwise_per_query"]) == 43
    doc, stats = out["garbage"]
    assert round(doc["metrics"]["nDCG@10"], 4) == 0.5058
    assert stats["llm_fallbacks"] == stats["pairwise_comparisons"] > 0
