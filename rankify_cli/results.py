"""Results on disk: a TREC run per stage, metrics.json, and the leaderboard CSV.

Every file is written atomically (temp file + rename) and the leaderboard is updated under
a file lock, so concurrent runs lose no row and a crash never leaves half a file.
"""

from __future__ import annotations

import csv
import datetime as dt
import fcntl
import io
import json
import platform
import re
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from . import __version__
from .faults import crashpoint
from .formats import atomic_write, format_trec_run, remove_stale_temp_files, to_json
from .pipeline import PipelineResult

KEY = ("dataset", "pipeline")
LEAD = ["dataset", "pipeline"]
# Cost columns are the compute that produced the scores: work served from the cache counts
# what it cost when it was computed (StageContext.stats `cached_compute_s`); `wall_s` is what
# this execution took and `cache_hits` how much of it came from the cache.
# `evidence_ratio`: runs that kept evidence (prism?explain=true), evidence over document tokens.
TAIL = ["queries", "retrieve_s", "rerank_s", "stage_s", "total_s", "s_per_query", "docs_per_s", "model_calls",
        "llm_calls", "llm_tokens", "evidence_ratio", "wall_s", "cache_hits", "models", "params", "config_hash",
        "rankify_version", "git_commit", "date"]
# counters stages may report (see StageContext.stats) that the leaderboard sums up: API calls
# and tokens per query (`llm_per_query`, `rerank_api_per_query`; the flat `llm_calls` repeats
# them) plus what the calls served from the cache cost (`cached_calls`, `cached_tokens`)
CALL_KEYS = ("calls", "cached_calls")
TOKEN_KEYS = ("prompt_tokens", "completion_tokens", "tokens", "cached_tokens")
HIT_KEYS = ("cached_scores", "cache_hits", "cached_embeddings")
MODEL_CALL_KEYS = ("forward_calls", "cached_forward_calls")


def slug(text: str) -> str:
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", text.replace(" >> ", "__")).strip("-.")
    return text[:80] or "pipeline"


def result_dir_for(output: Path, dataset: str, pipeline_id: str, config_hash: str) -> Path:
    return output / slug(dataset) / f"{slug(pipeline_id)}-{config_hash[:8]}"


def result_dir(output: Path, result: PipelineResult) -> Path:
    return result_dir_for(output, result.dataset.name, result.pipeline_id, result.config_hash)


def library_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version(), "rankify-cli": __version__}
    for name in ("numpy", "bm25s", "rank-bm25", "ir-measures", "pytrec-eval-terrier", "torch", "transformers",
                 "sentence-transformers"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_commit() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def metrics_document(result: PipelineResult) -> dict:
    """What the run computed, and nothing about how long it took: for the same inputs this file
    is byte-identical across runs, resumed or not (timings and versions go to run_info.json)."""
    stages = []
    for i, s in enumerate(result.stages, 1):
        stages.append({
            "stage": i, "kind": s.kind, "spec": s.spec, "config": s.config, "run_file": f"stage{i}.run",
            "metrics": s.evaluation.aggregate if s.evaluation else None,
            "queries_evaluated": s.evaluation.queries_evaluated if s.evaluation else 0,
            "evaluation_notes": s.evaluation.notes if s.evaluation else {},
        })
    final = result.final.evaluation
    return {
        "dataset": result.dataset.describe(),
        "pipeline": result.pipeline_id,
        "config": result.config,
        "config_hash": result.config_hash,
        "measures": result.measures,
        "queries": result.queries,
        "metrics": final.aggregate if final else None,
        "per_query": final.per_query if final else None,
        "stages": stages,
        "warnings": result.warnings,
    }


def run_info_document(result: PipelineResult) -> dict:
    """How this execution went: timings, counters (calls, cache hits, fallbacks), versions."""
    return {
        "stages": [{"stage": i, "spec": s.spec, "seconds": round(s.seconds, 4),
                    "timings": {k: round(v, 4) for k, v in s.timings.items()}, "stats": s.stats}
                   for i, s in enumerate(result.stages, 1)],
        "total_s": round(sum(s.seconds for s in result.stages), 4),
        "versions": library_versions(),
        "git_commit": git_commit(),
        "command": " ".join(sys.argv),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def stage_cost(stage) -> float:
    """Seconds of compute behind a stage's output: what this execution computed (`compute_s`,
    timed by the stage's CostClock; a stage without one: its wall time) plus what the results it
    read from the cache cost when they were computed (`cached_compute_s`)."""
    fresh = stage.stats["compute_s"] if "compute_s" in stage.stats else stage.seconds
    return float(fresh or 0.0) + float(stage.stats.get("cached_compute_s", 0.0) or 0.0)


def evidence_ratio(explanations: list[dict]) -> str:
    """Evidence tokens over document tokens, summed over the explanations that hold evidence
    (explanations.jsonl's counts): the share of the documents' context an agent reads instead."""
    kept = [e for e in explanations if isinstance(e.get("evidence_tokens"), int) and e.get("document_tokens")]
    docs = sum(int(e["document_tokens"]) for e in kept)
    return f"{sum(int(e['evidence_tokens']) for e in kept) / docs:.4f}" if docs else ""


def leaderboard_row(result: PipelineResult, doc: dict, info: dict, explanations: list[dict] | None = None) -> dict:
    retrieve = sum(stage_cost(s) for s in result.stages if s.kind == "retriever")
    rerank = sum(stage_cost(s) for s in result.stages if s.kind == "reranker")
    total = retrieve + rerank
    wall = sum(s.seconds for s in result.stages)
    row = {"dataset": result.dataset.name, "pipeline": result.pipeline_id}
    row.update({m: f"{v:.4f}" for m, v in (doc["metrics"] or {}).items()})
    top_k = result.config.get("top_k") or 0  # candidates below it follow unscored (the tail)
    reranked = sum(min(len(c), top_k) for s in result.stages if s.kind == "reranker" for c in s.run.values())
    calls = sum(_counter(s.stats, CALL_KEYS) for s in result.stages)
    tokens = sum(_counter(s.stats, TOKEN_KEYS) for s in result.stages)
    hits = sum(_counter(s.stats, HIT_KEYS) for s in result.stages)
    model_calls = sum(_counter(s.stats, MODEL_CALL_KEYS) for s in result.stages)
    # local folders show their short name (the full path and content hash are in metrics.json)
    models = [_short_model(str(s.config["model"])) for s in result.stages if s.config.get("model")]
    params = {"depth": result.config.get("depth"), "top_k": result.config.get("top_k")}
    params.update({k: v for k, v in result.config["retriever"].items() if k in ("k1", "b", "backend", "method")})
    row.update({
        "queries": result.queries, "retrieve_s": f"{retrieve:.3f}", "rerank_s": f"{rerank:.3f}",
        "stage_s": " | ".join(f"{stage_cost(s):.3f}" for s in result.stages),
        "total_s": f"{total:.3f}", "s_per_query": f"{total / max(result.queries, 1):.5f}",
        "docs_per_s": f"{reranked / rerank:.1f}" if reranked and rerank > 0 else "",
        "model_calls": str(model_calls) if model_calls else "",
        "llm_calls": str(calls) if calls else "", "llm_tokens": str(tokens) if tokens else "",
        "wall_s": f"{wall:.3f}", "cache_hits": str(hits),
        "models": ";".join(str(m) for m in models), "params": json.dumps(params, sort_keys=True),
        "config_hash": result.config_hash, "rankify_version": __version__, "git_commit": info["git_commit"],
        "date": info["date"],
    })
    ratio = evidence_ratio(explanations or [])
    if ratio:  # only runs that kept evidence get the column (columns() orders it by TAIL)
        row["evidence_ratio"] = ratio
    return row


def _short_model(model: str) -> str:
    from .pipeline import short_path

    return short_path(model) if model.startswith(("/", "~")) else model


def _counter(stats: dict, keys: tuple[str, ...]) -> int:
    """Sum counters kept flat (`calls`) or per query (`llm_per_query: {qid: {calls: n}}`)."""
    total = 0.0
    for name, value in stats.items():
        if name in keys and isinstance(value, (int, float)):
            total += value
        elif name.endswith("_per_query") and isinstance(value, dict):
            total += sum(float(v.get(k, 0)) for v in value.values() if isinstance(v, dict) for k in keys)
    return int(round(total))


@contextmanager
def locked(path: Path):
    from .formats import write_error

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_name(f".{path.name}.lock"), "w")
    except OSError as e:
        raise write_error(e, path) from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_leaderboard(path: Path) -> list[dict]:
    if not path.exists():
        return []
    from .errors import InputError
    from .formats import read_text

    text = read_text(path, "a rankify leaderboard CSV")
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = list(reader)
    except csv.Error as e:
        raise InputError(f"not a valid CSV ({e}); move it away to start a new leaderboard", path) from None
    if not {"dataset", "pipeline"} <= set(reader.fieldnames or []):
        raise InputError("not a rankify leaderboard (expected a header with dataset,pipeline); "
                         "move it away to start a new one", path, 1)
    return rows


def columns(rows: list[dict]) -> list[str]:
    seen: list[str] = []
    for r in rows:
        seen += [k for k in r if k not in seen]
    measures = [c for c in seen if c not in LEAD and c not in TAIL]
    return LEAD + measures + [c for c in TAIL if c in seen] + []


def write_leaderboard(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns(rows), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, buf.getvalue())


def upsert_leaderboard(path: Path, row: dict) -> None:
    """Replace the row with the same (dataset, pipeline) or the same config hash, or append:
    one condition is one row, whatever it was named."""
    with locked(path):
        remove_stale_temp_files(path.parent)
        rows = [r for r in read_leaderboard(path) if tuple(r.get(k) for k in KEY) != tuple(row[k] for k in KEY)
                and not (row.get("config_hash") and r.get("config_hash") == row["config_hash"])]
        rows.append(row)
        rows.sort(key=lambda r: (r["dataset"], r["pipeline"]))
        write_leaderboard(path, rows)


def accumulate_measures(path: Path, doc: dict) -> dict:
    """Measures of one condition accumulate: a rerun with other measures keeps the ones an
    earlier run of the same config hash computed (its outputs are the same, so are they)."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return doc
    if not isinstance(old, dict) or old.get("config_hash") != doc["config_hash"]:
        return doc
    measures = list(dict.fromkeys([*(old.get("measures") or []), *doc["measures"]]))

    def merged(a, b):
        a, b = a or {}, b or {}
        return {m: b[m] if m in b else a[m] for m in measures if m in a or m in b}

    out = {**doc, "measures": measures, "metrics": merged(old.get("metrics"), doc["metrics"])}
    old_pq, new_pq = old.get("per_query") or {}, doc["per_query"] or {}
    out["per_query"] = {q: merged(old_pq.get(q), new_pq.get(q)) for q in sorted(set(old_pq) | set(new_pq))}
    old_stages = {s.get("stage"): s for s in old.get("stages") or [] if isinstance(s, dict)}
    out["stages"] = [{**s, "metrics": merged((old_stages.get(s["stage"]) or {}).get("metrics"), s["metrics"])}
                     for s in doc["stages"]]
    return out


def write_results(result: PipelineResult, output: Path) -> dict:
    """Write run files, metrics.json and run_info.json for one pipeline, then upsert its
    leaderboard row. Returns metrics.json's content with run_info and output_dir added."""
    target = result_dir(output, result)
    remove_stale_temp_files(target)
    # what a reranker's model said (prism?explain=true) goes to its own file, not run_info.json
    explanations = [{"stage": i, **e} for i, s in enumerate(result.stages, 1) for e in s.stats.pop("explanations", [])]
    doc, info = accumulate_measures(target / "metrics.json", metrics_document(result)), run_info_document(result)
    for i, s in enumerate(result.stages, 1):
        # the tag names the method, not how it was served (options after '?' stay out of it)
        atomic_write(target / f"stage{i}.run", format_trec_run(s.run, tag=slug((s.name or s.spec).split("?")[0])[:40]))
        crashpoint("after-run-file")
    if explanations:
        atomic_write(target / "explanations.jsonl",
                     "".join(json.dumps(e, ensure_ascii=False, sort_keys=True) + "\n" for e in explanations))
    atomic_write(target / "run_info.json", to_json(info))
    atomic_write(target / "metrics.json", to_json(doc))
    crashpoint("before-leaderboard")
    upsert_leaderboard(output / "leaderboard.csv", leaderboard_row(result, doc, info, explanations))
    return {**doc, "run_info": info, "output_dir": str(target)}
