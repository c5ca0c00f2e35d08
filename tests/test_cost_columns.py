"""Cost columns of API families after cache hits (issue 11, item 2): a rerun served from the
cache reports the compute that produced its scores (rerank_s, docs_per_s, model_calls,
llm_calls, llm_tokens as the first run computed them) and its cache hits apart; a partly cached
run reports what it recomputed plus what the cached share cost. Loopback servers
(tests/llm_server.py) on DL19's first judged queries, through the installed console script."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llm_server import LLMServer, Oracle, load_trec_dl  # noqa: E402

COST = ("rerank_s", "docs_per_s", "model_calls", "llm_calls", "llm_tokens")


@pytest.fixture(scope="module")
def oracle():
    from conftest import DATA

    qrels, cands = load_trec_dl("dl19", str(DATA))
    return Oracle(qrels, cands)


def _run(cli, out: Path, cache: Path, spec: str, queries: int) -> tuple[dict, dict]:
    res = cli("run", "-d", "dl19", "-r", "run:bm25", "--queries", str(queries), "-q", "--json", "-o", str(out),
              "--reranker", spec, env={"RANKIFY_CACHE_DIR": str(cache)})
    assert res.code == 0, res
    (row,) = list(csv.DictReader(open(out / "leaderboard.csv", encoding="utf-8")))
    stats = json.loads((Path(res.json()["output_dir"]) / "run_info.json").read_text())["stages"][-1]["stats"]
    return row, stats


# listwise: 9 windows of 20 per query; rerank-api (Cohere shape): one request of 100 documents per query
@pytest.mark.parametrize("spec,calls", [("listwise:oracle-model?backend=openai&base_url={url}", 9),
                                        ("rerank-api:scorer?protocol=cohere&base_url={root}", 1)])
def test_rerun_from_the_cache_reports_the_compute_cost(spec, calls, cli, tmp_path, oracle):
    with LLMServer(oracle, mode="oracle", latency=0.02) as srv:
        spec = spec.format(url=srv.url, root=srv.root)
        first, _ = _run(cli, tmp_path / "first", tmp_path / "cache", spec, 3)
        answered = srv.stats()["answered"]
        second, stats = _run(cli, tmp_path / "second", tmp_path / "cache", spec, 3)
        assert srv.stats()["answered"] == answered == 3 * calls  # the rerun asked the server nothing
    assert first["cache_hits"] == "0" and second["cache_hits"] == str(3 * calls)
    assert int(first["model_calls"]) == int(first["llm_calls"]) == 3 * calls
    for col in COST:  # the stored cost of each answer, summed again: the same numbers
        if col.endswith("_s"):
            assert float(second[col]) == pytest.approx(float(first[col]), abs=0.002), (col, first, second)
        else:
            assert second[col] == first[col], (col, first, second)
    # a query's calls follow one another (20 ms each at least; queries run side by side): the cost
    # is the calls', not the cache lookup's
    assert float(first["rerank_s"]) >= calls * 0.02
    assert stats["compute_s"] == 0 and stats["cached_compute_s"] == pytest.approx(float(first["rerank_s"]), abs=0.002)
    assert float(second["docs_per_s"]) == pytest.approx(300 / float(second["rerank_s"]), rel=0.01)


def test_partly_cached_run_adds_the_recomputed_share(cli, tmp_path, oracle):
    spec_t = "listwise:oracle-model?backend=openai&base_url={url}"
    with LLMServer(oracle, mode="oracle", latency=0.02) as srv:
        spec = spec_t.format(url=srv.url)
        two, _ = _run(cli, tmp_path / "two", tmp_path / "cache", spec, 2)
        three, stats = _run(cli, tmp_path / "three", tmp_path / "cache", spec, 3)
        assert srv.stats()["answered"] == 27  # the third query's 9 windows, once
    assert three["cache_hits"] == "18" and stats["llm_calls"] == 9 and stats["llm_cache_hits"] == 18
    assert three["llm_calls"] == three["model_calls"] == "27"  # 9 computed now + 18 computed before
    # the two queries' stored cost plus the compute of the third
    assert stats["cached_compute_s"] == pytest.approx(float(two["rerank_s"]), abs=0.002)
    assert stats["compute_s"] >= 9 * 0.02
    assert float(three["rerank_s"]) == pytest.approx(stats["compute_s"] + stats["cached_compute_s"], abs=0.002)
