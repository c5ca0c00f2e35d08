"""Hostile servers on loopback (tests/hostile_server.py) against `rankify run` with listwise over
HTTP on DL19: does each run end within the client's documented budget, timeout x (max_retries+1)?

For each case it prints the seconds from the server's first POST to the process's exit, the
ratio to the budget (target: <= 1.0 plus process exit, shown as PASS at <= 1.25), the one error
line, the peak memory of the run, whether the key was printed, and then what a run against a
healthy server on the same cache computed (every call: nothing was poisoned).

    python benchmarks/bench_hostile_servers.py [--timeout 1] [--max-retries 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from hostile_server import Hostile  # noqa: E402
from llm_server import LLMServer, Oracle, load_trec_dl  # noqa: E402

SECRET = "sk-bench-canary-5e1f"
CASES = [("never-answers", dict(mode="silent")), ("endless-body", dict(mode="endless")), ("drip", dict(mode="drip")),
         ("choices-not-a-list", dict(mode="json", body=b'{"choices": "nope"}')),
         ("empty-array", dict(mode="json", body=b"[]")), ("null", dict(mode="json", body=b"null")),
         ("error-object-200", dict(mode="json", body=b'{"error": {"message": "overloaded"}}')),
         ("401-echoing-the-key", dict(mode="status", status=401, body=b'{"error": {"message": "bad key {auth}"}}')),
         ("redirect", dict(mode="redirect"))]


def _peak_rss_child() -> int:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss


def run(url: str, cache: Path, out: Path, knobs: str) -> tuple[subprocess.CompletedProcess, float]:
    rankify = Path(sys.executable).with_name("rankify")
    cmd = [str(rankify), "run", "-d", "dl19", "-r", "run:bm25", "-k", "20", "-o", str(out), "-q", "--json",
           "--reranker", f"listwise:m?backend=openai&base_url={url}" + (f"&{knobs}" if knobs else "")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "RANKIFY_CACHE_DIR": str(cache), "OPENAI_API_KEY": SECRET})
    return proc, time.time()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeout", type=float, default=1.0)
    ap.add_argument("--max-retries", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    budget = a.timeout * (a.max_retries + 1)
    knobs = f"timeout={a.timeout:g}&max_retries={a.max_retries}&backoff=0.05&concurrency=4"
    data = os.environ.get("RANKIFY_DATA_DIR") or str(ROOT.parent / "shared" / "data")
    oracle = Oracle(*load_trec_dl("dl19", data))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, kw in CASES:
            cache = Path(tmp) / f"cache-{name}"
            with LLMServer(oracle) as healthy:
                if kw["mode"] == "redirect":
                    kw = {**kw, "location": healthy.url + "/chat/completions"}
                with Hostile(**kw) as bad:
                    proc, end = run(bad.url, cache, Path(tmp) / "bad", knobs)
                    took = end - (bad.first_post_at or end)
                rss = _peak_rss_child()
                ok, _ = run(healthy.url, cache, Path(tmp) / "good", "")
            stats = json.loads((Path(json.loads(ok.stdout)["output_dir"]) / "run_info.json").read_text())
            stats = stats["stages"][-1]["stats"]
            lines = proc.stderr.strip().splitlines()
            rows.append({"case": name, "exit": proc.returncode, "lines": len(lines), "seconds": round(took, 2),
                         "budget_s": budget, "ratio": round(took / budget, 3), "posts": bad.posts,
                         "peak_rss_mb_so_far": rss // 1024, "key_printed": SECRET in proc.stdout + proc.stderr,
                         "healthy_calls": stats.get("llm_calls"), "healthy_cache_hits": stats.get("llm_cache_hits", 0),
                         "error": lines[-1] if lines else ""})
    if a.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"listwise over HTTP on dl19 (43 calls), budget timeout {a.timeout:g} s x {a.max_retries + 1} attempts = "
          f"{budget:g} s")
    for r in rows:
        verdict = "PASS" if r["exit"] == 2 and r["lines"] == 1 and r["ratio"] <= 1.25 and not r["key_printed"] \
            and r["healthy_calls"] == 43 and not r["healthy_cache_hits"] else "FAIL"
        print(f"{r['case']:20s} exit {r['exit']}  {r['seconds']:6.2f} s = {r['ratio']:.2f} x budget  posts {r['posts']:3d}  "
              f"key printed: {r['key_printed']}  healthy rerun: {r['healthy_calls']} calls, "
              f"{r['healthy_cache_hits']} hits  {verdict}")
        print(f"{'':20s} {r['error'][:200]}")
    print(f"peak memory of any run: {max(r['peak_rss_mb_so_far'] for r in rows)} MB")


if __name__ == "__main__":
    main()
