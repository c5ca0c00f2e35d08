"""Setwise (Rank-R1) against ielab/llm-rankers' own Rank-R1 ranker, on DL19's BM25 top-100.

The reference (`llmrankers/setwise.py` RankR1SetwiseLlmRanker, commit
b36517bf17a3956dc56c4c967f972d02390b1cdd) is not in the PyPI release and needs vLLM, so it was
run outside the project by tests/parity/rankr1_reference.py on the tiny model built here (the
same builder), and what it did is pinned in tests/parity/rankr1_golden.json: the token ids of
every comparison's prompt (sha256) in order, and the final order of the 100 candidates. The
toolkit must make the same comparisons with the same ids (the seeded per-comparison shuffle,
32/512-token truncation chosen for DL19, the prompt) and reach the same order:

- part "model": the `rank-r1-7b` preset with its base replaced by a tiny random Qwen2 and
  `adapter=` a tiny random LoRA adapter saved with peft (merged as the Rank-R1 README does);
  a random model never answers in the tags, so every comparison falls back to the heap parent
  (passages cut to 48 tokens on both sides, to keep the CPU time of 15 generations small).
- part "oracle": answers from the qrels through the loopback server, so winners move through
  the shuffle's labels.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

GOLDEN = Path(__file__).resolve().parent / "parity" / "rankr1_golden.json"
DATA = Path(os.environ.get("RANKIFY_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
DL19 = DATA / "trec-dl" / "dl19-passage"
MAX_NEW_TOKENS = 4  # fewer tokens than an answer in tags needs: the random model's answers never parse
MODEL_DOC_TOKENS = 48  # part "model" cuts passages shorter than the paper's 512 (both sides): CPU time
MODEL_QUERIES = ["1037798"]  # the first DL19 id in the order a run takes them (sorted ids)
ORACLE_QUERIES = ["1037798", "104861", "1063750", "1106007", "1110199"]


def dl19() -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """qid -> (query of queries.tsv, [(doc id, passage)] of the staged BM25 top-100 in rank order)."""
    import gzip

    queries = dict(line.split("\t", 1) for line in (DL19 / "queries.tsv").read_text().splitlines() if line.strip())
    with gzip.open(DL19 / "bm25_top100.rank_llm.json.gz", "rt", encoding="utf-8") as f:
        data = json.load(f)
    out = {}
    for rec in data:
        hits = sorted(rec["hits"], key=lambda h: h["rank"])
        qid = str(hits[0]["qid"])
        out[qid] = (queries[qid], [(str(h["docid"]), h["content"]) for h in hits[:100]])
    return out


def build_tiny_rankr1(folder: Path) -> tuple[str, str]:
    """A tiny random Qwen2 chat model (byte-level BPE trained on DL19 text) and a random LoRA
    adapter for it saved with peft: (base folder, adapter folder)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tests.test_neural_rerankers import _byte_bpe_tokenizer

    items = dl19()
    texts = [q for q, _ in items.values()] + [d for qid in sorted(items)[:3] for _, d in items[qid][1]]
    texts.append((Path(__file__).resolve().parents[1] / "rerankers" / "templates" / "setwise-rankr1.json").read_text())
    tok = _byte_bpe_tokenizer(texts)
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768,
                      tie_word_embeddings=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      bos_token_id=None)
    base, adapter = folder / "base", folder / "adapter"
    model = Qwen2ForCausalLM(cfg).eval()
    model.save_pretrained(base)
    tok.save_pretrained(base)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(adapter)
    return str(base), str(adapter)


def sha(ids) -> str:
    return hashlib.sha256(json.dumps(list(ids)).encode()).hexdigest()[:16]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("peft")
    if not DL19.is_dir():
        pytest.skip(f"no DL19 data under {DATA}")
    return build_tiny_rankr1(tmp_path_factory.mktemp("rankr1"))


@pytest.fixture(scope="module")
def golden():
    return json.loads(GOLDEN.read_text())


def logged_prompts(tok, log: Path) -> dict[str, list[str]]:
    """Per query, the sha of each call's prompt ids as the hf backend renders them."""
    out: dict[str, list[str]] = {}
    for rec in map(json.loads, log.read_text().splitlines()):
        text = tok.apply_chat_template(rec["messages"], tokenize=False, add_generation_prompt=True)
        out.setdefault(rec["query_id"], []).append(sha(tok(text, add_special_tokens=False).input_ids))
    return out


def orders(run_file: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in run_file.read_text().splitlines():
        q, _, d, *_ = line.split()
        out.setdefault(q, []).append(d)
    return out


def run(cli, tmp_path: Path, spec: str, qids: list[str]):
    res = cli("run", "-d", "dl19", "-r", "run:bm25", "--query-ids", ",".join(qids), "-o", str(tmp_path / "res"),
              "--json", "-q", "--reranker", spec, env={"RANKIFY_CACHE_DIR": str(tmp_path / "cache")})
    assert res.code == 0, res
    doc = res.json()
    out = Path(doc["output_dir"])
    return orders(out / "stage2.run"), json.loads((out / "run_info.json").read_text())["stages"][-1]["stats"]


def compare(golden_part: dict, prompts: dict, ranked: dict) -> int:
    n = 0
    for qid, ref in golden_part.items():
        assert prompts[qid] == ref["prompts"], qid  # same comparisons, same token ids, same order
        assert ranked[qid] == ref["order"], qid
        n += len(ref["prompts"])
    return n


def test_rankr1_preset_with_adapter_equals_llm_rankers(cli, tmp_path, tiny, golden):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, adapter = tiny
    log = tmp_path / "calls.jsonl"
    spec = (f"rank-r1-7b:{base}?adapter={adapter}&max_new_tokens={MAX_NEW_TOKENS}&doc_max_tokens={MODEL_DOC_TOKENS}"
            f"&log_calls={log}")
    ranked, stats = run(cli, tmp_path, spec, MODEL_QUERIES)
    tok = AutoTokenizer.from_pretrained(base)
    n = compare(golden["model"], logged_prompts(tok, log), ranked)
    assert stats["llm_calls"] == stats["llm_fallbacks"] == stats["llm_parse_failures"] == n
    # the adapter is merged as the Rank-R1 README loads it: same continuation as its recipe
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).merge_and_unload().eval()
    plain = AutoModelForCausalLM.from_pretrained(base).eval()
    first = json.loads(log.read_text().splitlines()[0])
    text = tok.apply_chat_template(first["messages"], tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tok(text, add_special_tokens=False).input_ids])
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        assert not torch.allclose(model(ids).logits[0, -1], plain(ids).logits[0, -1])  # the adapter matters
    assert first["response"] == tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    print(f"setwise hf (preset + LoRA adapter): {n} comparisons, prompt ids and final order of "
          f"{len(MODEL_QUERIES)} queries equal llm-rankers'")


def test_setwise_oracle_comparisons_equal_llm_rankers(cli, tmp_path, tiny, golden):
    import sys

    from transformers import AutoTokenizer

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from llm_server import LLMServer, Oracle, load_trec_dl

    base, _ = tiny
    log = tmp_path / "calls.jsonl"
    with LLMServer(Oracle(*load_trec_dl("dl19", str(DATA)))) as srv:
        spec = f"setwise:tiny?backend=openai&base_url={srv.url}&tokenizer={base}&log_calls={log}"
        ranked, stats = run(cli, tmp_path, spec, ORACLE_QUERIES)
    n = compare(golden["oracle"], logged_prompts(AutoTokenizer.from_pretrained(base), log), ranked)
    assert stats["llm_calls"] == n and not stats.get("llm_fallbacks")
    print(f"setwise oracle: {n} comparisons over {len(ORACLE_QUERIES)} queries (one seeded stream), "
          "prompt ids and final orders equal llm-rankers'")


def test_truncation_and_inspect_equal_the_reference(tiny, golden):
    """Cuts equal the installed llm-rankers' SetwiseLlmRanker.truncate; `rankify inspect` shows the
    run's first comparison (the heap's last parent and its children, shuffled by the seed)."""
    from types import SimpleNamespace

    pytest.importorskip("llmrankers")
    from llmrankers.setwise import SetwiseLlmRanker
    from transformers import AutoTokenizer

    from rankify_cli import registry
    from rankify_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="--enable-lora"):  # an adapter is merged by hf only
        registry.build("reranker", "rank-r1-7b?backend=openai&base_url=http://127.0.0.1:9/v1")
    base, _ = tiny
    tok = AutoTokenizer.from_pretrained(base)
    rr = registry.build("reranker", f"setwise:{base}")
    ref = SimpleNamespace(tokenizer=tok)
    texts = [t for q in MODEL_QUERIES for _, t in dl19()[q][1]]
    assert all(rr.truncate(t, n) == SetwiseLlmRanker.truncate(ref, t, n) for t in texts for n in (32, 512))
    from rankify_cli.inspect_inputs import inspect_inputs
    from rankify_cli.types import Candidate, Query

    query, docs = dl19()[MODEL_QUERIES[0]]
    shown = inspect_inputs(rr, Query(MODEL_QUERIES[0], query), [Candidate(d, -i, t) for i, (d, t) in enumerate(docs)],
                           "dl19")["inputs"][0]
    # 100 candidates, 19 children: the first comparison is node 5 with children 96..99, shuffled
    assert sorted(shown["doc_ids"]) == sorted([docs[5][0]] + [d for d, _ in docs[96:]])
    assert shown["doc_ids"] != [docs[5][0]] + [d for d, _ in docs[96:]]
    assert sha(shown["token_ids"]) == golden["oracle"][MODEL_QUERIES[0]]["prompts"][0]  # 32/512, as a run on DL19
