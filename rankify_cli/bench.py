"""Run a suite: every condition validated first, then run or reused when a result with the
same config hash (pipeline config + dataset content) is already on disk."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .datasets import Dataset, known, resolve
from .errors import ConfigError, DependencyError, InputError
from .pipeline import Pipeline, PipelineResult, StageResult, execute, no_progress, pipeline_config
from .results import result_dir_for, write_results
from .suites import Condition, Suite
from .types import fingerprint


@dataclass
class Outcome:
    condition: Condition
    status: str                      # ran | cached | skipped
    reason: str = ""
    doc: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def metrics(self) -> dict[str, float]:
        return self.doc.get("metrics") or {}

    @property
    def per_query(self) -> dict[str, dict[str, float]]:
        return self.doc.get("per_query") or {}


@dataclass
class Prepared:
    condition: Condition
    dataset: Dataset | None = None
    pipeline: Pipeline | None = None
    skip: str | None = None


def _prepare(cond: Condition, data_dir: str | None, subset=None, allow_unset: bool = False) -> Prepared:
    if cond.missing_vars and not (cond.optional or allow_unset):
        # a CI job that forgot a variable must fail, not pass with the condition skipped
        raise ConfigError(f"{cond.origin}: condition '{cond.name}': environment variable(s) "
                          f"{', '.join(cond.missing_vars)} not set (set them, or mark the condition "
                          f"`optional = true`, or pass --allow-unset to skip it)")
    if cond.skip_reason:
        return Prepared(cond, skip=cond.skip_reason)
    if not known(cond.dataset) and not Path(cond.dataset).expanduser().is_dir():
        raise ConfigError(f"condition '{cond.name}': unknown dataset '{cond.dataset}'")
    try:
        pipe = Pipeline(cond.retriever, cond.rerankers, depth=cond.depth, top_k=cond.top_k,
                        reranker_defaults=cond.backend or None, aliases=cond.aliases, subset=subset)
    except DependencyError as e:
        return Prepared(cond, skip=e.render())
    except ConfigError as e:
        raise ConfigError(f"condition '{cond.name}': {e.render()}") from None
    try:
        ds = resolve(cond.dataset, data_dir)
    except (ConfigError, InputError) as e:
        return Prepared(cond, skip=f"dataset not available: {e.render()}")
    needs_corpus = not cond.retriever.startswith("run:")
    if needs_corpus and not ds.has_corpus() and not cond.retriever.startswith("hybrid:run:"):
        return Prepared(cond, skip=f"dataset '{ds.name}' has no corpus here")
    return Prepared(cond, ds, pipe)


def prepare_suite(suite: Suite, data_dir: str | None, only: list[str] | None = None, subset=None,
                  allow_unset: bool = False) -> list[Prepared]:
    """Validate every condition before running any (names, options, measures, datasets)."""
    conds = [c for c in suite.conditions if not only or c.name in only]
    if only:
        unknown = sorted(set(only) - {c.name for c in suite.conditions})
        if unknown:
            raise ConfigError(f"no condition named {', '.join(unknown)} in {suite.path}")
    return [_prepare(c, data_dir, subset, allow_unset) for c in conds]


def config_hash(ds: Dataset, pipe: Pipeline) -> str:
    return fingerprint(pipeline_config(ds, pipe))[:12]


def run_suite(prepared: list[Prepared], output: Path, force: bool = False, cache_dir: str | None = None,
              store=None, progress=no_progress, log: Callable[[str], None] = lambda m: None,
              on_done: Callable[[Outcome], None] = lambda o: None) -> list[Outcome]:
    outcomes = []
    with progress("conditions", len(prepared)) as advance:
        for prep in prepared:
            cond = prep.condition
            if prep.skip:
                outcome = Outcome(cond, "skipped", prep.skip)
            else:
                outcome = _run_one(prep, output, force, cache_dir, store, progress, log)
            outcomes.append(outcome)
            on_done(outcome)
            advance(1)
    return outcomes


def _run_one(prep: Prepared, output: Path, force: bool, cache_dir, store, progress, log) -> Outcome:
    cond, ds, pipe = prep.condition, prep.dataset, prep.pipeline
    t0 = time.perf_counter()
    target = result_dir_for(output, ds.name, pipe.id, config_hash(ds, pipe))
    metrics_file = target / "metrics.json"
    cached = False
    if not force and metrics_file.is_file():
        try:
            doc = json.loads(metrics_file.read_text(encoding="utf-8"))
            if doc.get("config_hash") == config_hash(ds, pipe) and set(cond.measures) <= set(doc.get("metrics") or {}):
                info = json.loads((target / "run_info.json").read_text(encoding="utf-8"))
                cached = True
        except (OSError, json.JSONDecodeError):
            pass  # unreadable old result: run again
    if cached:
        # a run killed after metrics.json and before the leaderboard update left no row
        ensure_leaderboard_row(output, target, doc, info, ds)
        return Outcome(cond, "cached", doc=doc, seconds=time.perf_counter() - t0)
    try:
        result = execute(pipe, ds, cond.measures, cache_dir=cache_dir, store=store, progress=progress, log=log)
    except DependencyError as e:
        return Outcome(cond, "skipped", e.render(), seconds=time.perf_counter() - t0)
    doc = write_results(result, output)
    return Outcome(cond, "ran", doc=doc, seconds=time.perf_counter() - t0)


def ensure_leaderboard_row(output: Path, target: Path, doc: dict, info: dict, ds: Dataset) -> None:
    """Upsert the leaderboard row of a result on disk unless the leaderboard has it already
    (same dataset, pipeline and config hash). The row is made by the same leaderboard_row as a
    fresh run's, from the result's files: metrics.json, run_info.json and the stage runs."""
    from .formats import read_trec_run
    from .results import leaderboard_row, read_leaderboard, upsert_leaderboard

    board = output / "leaderboard.csv"
    for row in read_leaderboard(board):
        if (row.get("dataset"), row.get("pipeline"), row.get("config_hash")) == (ds.name, doc["pipeline"],
                                                                                 doc["config_hash"]):
            return
    stages = [StageResult(kind=s["kind"], spec=s["spec"], config=s.get("config") or {},
                          run=read_trec_run(target / s["run_file"]), seconds=float(i.get("seconds") or 0.0),
                          stats=i.get("stats") or {}) for s, i in zip(doc["stages"], info["stages"], strict=True)]
    result = PipelineResult(dataset=ds, pipeline_id=doc["pipeline"], config=doc["config"],
                            config_hash=doc["config_hash"], measures=list(doc.get("measures") or []),
                            queries=int(doc["queries"]), stages=stages, warnings=list(doc.get("warnings") or []))
    upsert_leaderboard(board, leaderboard_row(result, doc, info))
