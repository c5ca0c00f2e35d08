"""Groupwise (GroupRank) against AQ-MedAI/Diver's own `Reranker/rerank_groupwise.py` (commit
95b111b0adad85bf388e628b9073552055f6f408), on DL19's BM25 top-100 of five queries.

The reference needs vLLM and BRIGHT's parquet files, so it was run outside the project by
tests/parity/grouprank_reference.py: its __main__ as written (argv --group_size 20 --interval 20
--repeat_num 6 --input_k 100 --k 100, the paper's script), with vLLM's engine replaced by one
that renders nothing itself and answers each prompt with `answer()` below, DL19 written out as
a BRIGHT task, the staged BM25 scores as its retriever file. Pinned in
tests/parity/grouprank_golden.json: the token ids (sha256) of every group's prompt, and its
fused scores (`0.6 * rerank + 0.4 * retriever`). The answers are made from the qrels and
include every case the reference reads its own way: a key past the group (whole group 0),
`[0]` (Python indexing: the group's last document), a string score (whole group 0), keys left
out, a doubled bracket and a missing brace (repaired), no JSON at all (whole group 0).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

GOLDEN = Path(__file__).resolve().parent / "parity" / "grouprank_golden.json"
DATA = Path(os.environ.get("RANKIFY_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
QUERIES = ["1037798", "104861", "1063750", "1106007", "1110199"]  # sorted: the order a run takes them


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def answer(user: str, oracle) -> str:
    """A GroupRank answer to a group's user prompt: qrels grades as 0-10 scores, with a fault
    chosen by the prompt's hash (the same prompt always gets the same answer)."""
    from llm_server import prompt_passages

    passages = prompt_passages([{"role": "user", "content": user}])
    grades, _ = oracle.grades([t for _, t in passages])
    scores = {f"[{lab}]": min(10, {0: 0, 1: 3, 2: 7, 3: 10}.get(g, 0) + int(sha(t)[:2], 16) % 3)
              for (lab, t), g in zip(passages, grades)}
    kind = int(sha(user)[:8], 16) % 9
    keys = list(scores)
    if kind == 0:
        scores[f"[{len(keys) + 1}]"] = 5  # names no document of the group
    elif kind == 1:
        return "<reason>\nthese are fine\n</reason>\n<answer>\nall relevant\n</answer>"
    elif kind == 2:
        scores["[0]"] = scores.pop(keys[-1])
    elif kind == 3:
        del scores[keys[0]], scores[keys[1]]
    elif kind == 4:
        scores[keys[2]] = str(scores[keys[2]])
    body = json.dumps(scores)
    if kind == 5:
        body = body.replace('"[3]"', '"[3]]"')[:-1]  # doubled bracket, no closing brace
    return f"<reason>\nscored from the qrels\n</reason>\n<answer>\n```json\n{body}\n```\n</answer>"


def build_tokenizer(folder: Path) -> str:
    from tests.test_neural_rerankers import _byte_bpe_tokenizer
    from tests.test_parity_setwise import dl19

    items = dl19()
    texts = [q for q, _ in items.values()] + [d for qid in QUERIES[:2] for _, d in items[qid][1]]
    _byte_bpe_tokenizer(texts).save_pretrained(folder)
    return str(folder)


def test_grouprank_equals_diver_rerank_groupwise(cli, tmp_path):
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    from llm_server import LLMServer, Oracle, load_trec_dl

    golden = json.loads(GOLDEN.read_text())
    tok_dir = build_tokenizer(tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(tok_dir)
    oracle = Oracle(*load_trec_dl("dl19", str(DATA)))
    log = tmp_path / "calls.jsonl"
    with LLMServer(None) as srv:
        srv.state.chat_answer = lambda messages, key: answer(messages[-1]["content"], oracle)
        res = cli("run", "-d", "dl19", "-r", "run:bm25", "--query-ids", ",".join(QUERIES), "-o", str(tmp_path / "res"),
                  "--json", "-q", "--reranker", f"groupwise:tiny?backend=openai&base_url={srv.url}&log_calls={log}",
                  env={"RANKIFY_CACHE_DIR": str(tmp_path / "cache")})
    assert res.code == 0, res
    out = Path(res.json()["output_dir"])
    prompts: dict[str, list[str]] = {}
    for rec in map(json.loads, log.read_text().splitlines()):
        text = tok.apply_chat_template(rec["messages"], tokenize=False, add_generation_prompt=True)
        prompts.setdefault(rec["query_id"], []).append(sha(json.dumps(tok(text).input_ids))[:16])
    scores: dict[str, dict[str, float]] = {}
    for line in (out / "stage2.run").read_text().splitlines():
        q, _, d, _, s, _ = line.split()
        scores.setdefault(q, {})[d] = float(s)
    stats = json.loads((out / "run_info.json").read_text())["stages"][-1]["stats"]
    groups = worst = 0
    for qid in QUERIES:
        ref = golden["queries"][qid]
        assert sorted(prompts[qid]) == sorted(ref["prompts"]), qid  # the same 30 groups, same token ids
        groups += len(ref["prompts"])
        mine = {d: s for d, s in scores[qid].items() if d in ref["scores"]}
        assert set(mine) == set(ref["scores"]), qid  # the documents the reference ranks
        worst = max(worst, max(abs(mine[d] - s) for d, s in ref["scores"].items()))
        unranked = [s for d, s in scores[qid].items() if d not in ref["scores"]]
        assert all(u < min(mine.values()) for u in unranked)  # never scored: below, as if dropped
    assert worst < 1e-9
    assert stats["llm_calls"] == groups == 150
    assert stats["llm_fallbacks"] == golden["zero_groups"] > 0 and stats["llm_missing_scores"] > 0
    print(f"groupwise: {groups} groups, fused scores of {sum(len(golden['queries'][q]['scores']) for q in QUERIES)} "
          f"documents equal Diver's within {worst:.1e} ({golden['zero_groups']} groups scored 0 as a whole)")
