"""Hosted rerank APIs (Cohere v2, Jina, Voyage, Mixedbread) through the installed CLI against
loopback servers that speak each provider's request and answer shape strictly
(tests/rerank_services.py): the oracle reaches the ideal nDCG@10 of DL19's BM25 top-100, garbage
keeps BM25's order with every query counted as a fallback, the key goes out only as the bearer
header and is found in no written file, and refusals are one line naming the key variable."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llm_server import Oracle, load_trec_dl  # noqa: E402
from rerank_services import RerankService  # noqa: E402

from rankify_cli import registry  # noqa: E402
from rankify_cli.errors import ConfigError  # noqa: E402

IDEAL_DL19 = 0.8922
PRESETS = {"cohere": ("cohere-rerank-v3.5", "CO_API_KEY"), "jina": ("jina-reranker-v2", "JINA_API_KEY"),
           "voyage": ("voyage-rerank-2.5", "VOYAGE_API_KEY"),
           "mixedbread": ("mixedbread-rerank-large-v2", "MXBAI_API_KEY")}
KEY = "sk-loopback-7f3a9c"


@pytest.fixture(scope="module")
def oracle():
    from conftest import DATA

    return Oracle(*load_trec_dl("dl19", str(DATA)))


def run(cli, tmp_path, spec, env, name="res"):
    res = cli("run", "-d", "dl19", "-r", "run:bm25", "-o", str(tmp_path / name), "--json", "-q", "--reranker", spec,
              env={"RANKIFY_CACHE_DIR": str(tmp_path / "cache"), **env})
    return res


@pytest.mark.parametrize("provider", sorted(PRESETS))
def test_provider_oracle_garbage_and_key(provider, cli, tmp_path, oracle):
    preset, key_env = PRESETS[provider]
    with RerankService(provider, oracle, key=KEY) as srv:
        res = run(cli, tmp_path, f"{preset}?base_url={srv.base_url}", {key_env: KEY})
        assert res.code == 0, res
        doc = res.json()
        assert srv.state.requests == 43 and not srv.state.refused
        assert dict(srv.state.auth) == {f"Bearer {KEY}": 43}
    assert round(doc["metrics"]["nDCG@10"], 4) == IDEAL_DL19
    out = Path(doc["output_dir"])
    stats = json.loads((out / "run_info.json").read_text())["stages"][-1]["stats"]
    assert stats["rerank_api_calls"] == 43 and not stats.get("rerank_api_fallbacks")
    for path in list(tmp_path.rglob("*")):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    with RerankService(provider, oracle, mode="garbage") as srv:
        res = run(cli, tmp_path, f"{preset}?base_url={srv.base_url}&cache=false", {key_env: KEY}, "garbage")
        assert res.code == 0, res
    doc = res.json()
    stats = json.loads((Path(doc["output_dir"]) / "run_info.json").read_text())["stages"][-1]["stats"]
    assert doc["metrics"]["nDCG@10"] == pytest.approx(doc["stages"][0]["metrics"]["nDCG@10"], abs=1e-12)
    assert stats["rerank_api_fallbacks"] == 43


def test_batches_follow_the_limit_and_the_option(cli, tmp_path, oracle, monkeypatch):
    with RerankService("voyage", oracle) as srv:
        res = run(cli, tmp_path, f"voyage-rerank-2.5?base_url={srv.base_url}&batch_size=30", {"VOYAGE_API_KEY": KEY})
        assert res.code == 0, res
        assert sorted(set(srv.state.documents)) == [10, 30] and len(srv.state.documents) == 43 * 4
    assert round(res.json()["metrics"]["nDCG@10"], 4) == IDEAL_DL19
    monkeypatch.setenv("VOYAGE_API_KEY", KEY)
    with pytest.raises(ConfigError, match="over voyage.s limit of 1000"):
        registry.build("reranker", "voyage-rerank-2.5?batch_size=1001", {})


def test_refused_key_and_missing_key_are_one_line(cli, tmp_path, oracle, monkeypatch):
    with RerankService("cohere", oracle, key="the-right-one") as srv:
        res = run(cli, tmp_path, f"cohere-rerank-v3.5?base_url={srv.base_url}", {"CO_API_KEY": KEY})
    lines = res.err.strip().splitlines()
    assert res.code == 2 and len(lines) == 1 and "Traceback" not in res.err, res
    assert "HTTP 401" in lines[0] and "check CO_API_KEY" in lines[0] and KEY not in res.err
    assert not list((tmp_path / "res").rglob("metrics.json"))
    monkeypatch.delenv("MXBAI_API_KEY", raising=False)
    res = cli("run", "-d", "dl19", "-r", "run:bm25", "-o", str(tmp_path / "r2"), "-q", "--reranker",
              "mixedbread-rerank-large-v2", env={"MXBAI_API_KEY": ""})
    assert res.code == 2 and res.err.strip().splitlines() == [res.err.strip()] and "$MXBAI_API_KEY" in res.err, res


def test_request_shapes_are_the_providers():
    from rankify_cli.rerankers.rerank_providers import PROVIDERS

    shapes = {name: p.payload("m", "q", ["a", "b"]) for name, p in PROVIDERS.items()}
    assert shapes["cohere"] == {"model": "m", "query": "q", "documents": ["a", "b"], "top_n": 2}
    assert shapes["jina"] == {"model": "m", "query": "q", "documents": ["a", "b"], "top_n": 2,
                              "return_documents": False}
    assert shapes["voyage"] == {"model": "m", "query": "q", "documents": ["a", "b"], "top_k": 2,
                                "return_documents": False, "truncation": True}
    assert shapes["mixedbread"] == {"model": "m", "query": "q", "input": ["a", "b"], "top_k": 2, "return_input": False}
    assert {p.key_env for p in PROVIDERS.values()} == {"CO_API_KEY", "JINA_API_KEY", "VOYAGE_API_KEY", "MXBAI_API_KEY"}


def test_cohere_499_is_retried_where_other_providers_stop(cli, tmp_path, oracle):
    """Cohere's errors reference says a 499 (request cancelled) is to be tried again: the run
    retries it and finishes with the oracle's numbers; Voyage documents no 499, so there it is a
    one-line refusal like any other 4xx."""
    with RerankService("cohere", oracle, key=KEY, first=(3, 499)) as srv:
        res = run(cli, tmp_path, f"cohere-rerank-v3.5?base_url={srv.base_url}&backoff=0.01&concurrency=1",
                  {"CO_API_KEY": KEY})
        assert res.code == 0, res
        assert srv.state.refused == {499: 3} and srv.state.requests == 43 + 3
    assert round(res.json()["metrics"]["nDCG@10"], 4) == IDEAL_DL19
    stats = json.loads((Path(res.json()["output_dir"]) / "run_info.json").read_text())["stages"][-1]["stats"]
    assert stats["rerank_api_calls"] == 43
    with RerankService("voyage", oracle, first=(1, 499)) as srv:
        res = run(cli, tmp_path, f"voyage-rerank-2.5?base_url={srv.base_url}&backoff=0.01&concurrency=1",
                  {"VOYAGE_API_KEY": KEY}, "voyage")
    assert res.code == 2 and len(res.err.strip().splitlines()) == 1 and "HTTP 499" in res.err, res
