"""Listwise reranking of DL19 against the loopback chat server (tests/llm_server.py) with a
fixed latency per call: does bounded concurrency across queries reach the ideal wall time?

Bound: the windows of one query are sequential (9 for top-100), queries run `concurrency` at
a time, so wall >= ceil(queries / concurrency) x windows x latency
(43 queries, concurrency 16: 3 waves x 9 x 0.2 s = 5.4 s). Target: <= 1.25 x the bound.

    python benchmarks/bench_llm_concurrency.py [--latency 0.2] [--concurrency 16] [--json]

The reranker stage's own seconds (from run_info.json) are compared with the bound, so
process start and data loading are not counted; the whole command's wall time is shown too.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from llm_server import LLMServer, Oracle, load_trec_dl  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=0.2, help="seconds the server waits before each answer")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--dataset", default="dl19")
    ap.add_argument("--target", type=float, default=1.25, help="pass when stage seconds <= target x bound")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)

    data = os.environ.get("RANKIFY_DATA_DIR") or str(ROOT.parent / "shared" / "data")
    qrels, cands = load_trec_dl(a.dataset, data)
    queries = sum(1 for q in cands if q in qrels)
    windows = 9  # top-100, window 20, stride 10
    bound = math.ceil(queries / a.concurrency) * windows * a.latency
    with tempfile.TemporaryDirectory() as tmp, LLMServer(Oracle(qrels, cands), latency=a.latency) as srv:
        log = Path(tmp) / "calls.jsonl"
        spec = f"listwise:bench?backend=openai&base_url={srv.url}&concurrency={a.concurrency}&log_calls={log}"
        env = {**os.environ, "RANKIFY_DATA_DIR": data, "RANKIFY_CACHE_DIR": str(Path(tmp) / "cache")}
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "rankify_cli.cli", "run", "-d", a.dataset, "-r", "run:bm25",
                               "-o", str(Path(tmp) / "res"), "--json", "-q", "--reranker", spec],
                              capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        doc = json.loads(proc.stdout)
        info = json.loads((Path(doc["output_dir"]) / "run_info.json").read_text())
        stage = info["stages"][-1]
        calls = srv.stats()["answered"]
        # round trip of each call as the client saw it: what of the overhead is the wire's
        trips = [json.loads(line)["latency_s"] for line in log.read_text().splitlines() if line.strip()]
    round_trip = sum(trips) / max(1, len(trips))
    steps = math.ceil(queries / a.concurrency) * windows
    result = {"dataset": a.dataset, "queries": queries, "calls": calls, "latency_s": a.latency,
              "concurrency": a.concurrency, "bound_s": round(bound, 3), "rerank_stage_s": round(stage["seconds"], 3),
              "ratio": round(stage["seconds"] / bound, 3), "command_wall_s": round(wall, 3),
              "mean_round_trip_s": round(round_trip, 4),
              "overhead_per_step_s": round((stage["seconds"] - bound) / steps, 4),
              "ndcg@10": round(doc["metrics"]["nDCG@10"], 4), "target_ratio": a.target,
              "pass": stage["seconds"] <= a.target * bound}
    if a.json:
        print(json.dumps(result))
    else:
        print(f"listwise {a.dataset}: {queries} queries, {calls} calls at {a.latency * 1000:.0f} ms, "
              f"concurrency {a.concurrency}")
        print(f"bound {bound:.2f} s (ceil({queries}/{a.concurrency}) waves x {windows} windows x {a.latency} s); "
              f"rerank stage {stage['seconds']:.2f} s = {result['ratio']:.3f} x bound "
              f"({'PASS' if result['pass'] else 'FAIL'} at <= {a.target}x); whole command {wall:.2f} s; "
              f"nDCG@10 {result['ndcg@10']}")
        print(f"mean call round trip {round_trip * 1000:.1f} ms; overhead per sequential step "
              f"{result['overhead_per_step_s'] * 1000:.1f} ms")
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
