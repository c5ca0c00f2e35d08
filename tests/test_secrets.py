"""API keys come from the environment only and are written nowhere: not in results, not in
the cache, not in the call log, not in the leaderboard."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llm_server import LLMServer, Oracle, load_trec_dl  # noqa: E402

SECRET = "sk-rankify-canary-7f3a9c1e5b"


def _all_bytes(*folders: Path):
    for folder in folders:
        for f in folder.rglob("*"):
            if f.is_file():
                yield f, f.read_bytes()


def test_api_key_never_lands_on_disk(cli, tmp_path, data_dir):
    qrels, cands = load_trec_dl("dl19", str(data_dir))
    out, cache, log = tmp_path / "results", tmp_path / "cache", tmp_path / "calls.jsonl"
    with LLMServer(Oracle(qrels, cands), mode="oracle") as srv:
        r = cli("run", "-d", "dl19", "-r", "run:bm25", "-o", str(out), "--json", "-q", "--top-k", "20",
                "--reranker", f"listwise:oracle-model?log_calls={log}", "--backend", "openai", "--base-url", srv.url,
                "--api-key-env", "RANKIFY_TEST_KEY",
                env={"RANKIFY_CACHE_DIR": str(cache), "RANKIFY_TEST_KEY": SECRET, "OPENAI_API_KEY": SECRET + "-other"})
        auth = srv.stats()["auth"]
    assert r.code == 0, r
    assert auth == {f"Bearer {SECRET}": 43}  # the key named by --api-key-env was sent, as a header only
    assert SECRET not in r.out and SECRET not in r.err
    files = list(_all_bytes(out, cache)) + [(log, log.read_bytes())]
    assert len(files) >= 6 and any(f.name == "store.sqlite" for f, _ in files)
    for f, blob in files:
        assert SECRET.encode() not in blob, f
    # and the flags that say where the model is served stay out of the pipeline's identity
    assert r.json()["pipeline"].startswith("run:bm25 >> listwise:oracle-model")
    assert srv.url not in r.json()["pipeline"]


def test_a_key_echoed_in_answers_is_redacted_from_call_logs_and_cache(cli, tmp_path, data_dir):
    """A server that repeats the key inside its 200 answers: log_calls= files keep the answers
    with the key replaced by ***, and the cache keeps none of it (listwise and rerank-api)."""
    key = "rk-echo-canary-51c0ffee"  # no sk- or Bearer shape: only the key itself can catch it
    qrels, cands = load_trec_dl("dl19", str(data_dir))
    with LLMServer(Oracle(qrels, cands), mode="oracle") as srv:
        srv.state.echo_key = True
        for name, spec in (("listwise", f"listwise:oracle-model?backend=openai&base_url={srv.url}"),
                           ("api", f"rerank-api:scorer?protocol=cohere&base_url={srv.root}")):
            log, cache = tmp_path / f"{name}.jsonl", tmp_path / f"cache-{name}"
            r = cli("run", "-d", "dl19", "-r", "run:bm25", "-o", str(tmp_path / name), "-q", "--queries", "2",
                    "--reranker", f"{spec}&api_key_env=ECHO_KEY&log_calls={log}",
                    env={"RANKIFY_CACHE_DIR": str(cache), "ECHO_KEY": key})
            assert r.code == 0, r
            text = log.read_text(encoding="utf-8")
            assert len(text.splitlines()) == (18 if name == "listwise" else 2)
            assert key not in text and text.count("***") == len(text.splitlines()), text[:400]
            for f, blob in _all_bytes(cache, tmp_path / name):
                assert key.encode() not in blob, f
        assert srv.stats()["auth"] == {f"Bearer {key}": 20}  # the server did get the key
