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
    res = cli("run", "-d", "dl19", "-r", "run:bm25", "-o", str(tmp_path / "r"), "--json", "-q", "--top-k", "6",
              "--reranker", f"pairwise:{tiny_qwen}?scoring=logprobs&method=sliding&k=3&doc_max_tokens=40",
              env={"RANKIFY_CACHE_DIR": str(tmp_path / "c")})
    assert res.code == 0, res
    stats = json.loads((Path(res.json()["output_dir"]) / "run_info.json").read_text())["stages"][-1]["stats"]
    assert stats["pairwise_forward_calls"] <= 2 * stats["pairwise_comparisons"] and stats["pairwise_forward_calls"] > 0
    assert len(stats["pairwise_per_query"]) == 43
