"""The CI gate: grade each condition against its expected values.

OK     every expected measure within tolerance
OKISH  outside tolerance, but not significantly worse (or better than expected)
FAIL   significantly worse: both a t-test and a randomization test reject at alpha after
       Holm correction across all tested (condition, measure) pairs
SKIP   the condition could not run here (model or data not available), with the reason

"Worse than what" is the baseline run's per-query values when --baseline holds one for the
same dataset and pipeline (paired tests), else the expected value itself (one-sample tests
on the per-query values).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from .bench import Outcome

N_RESAMPLES = 10_000


@dataclass
class Check:
    measure: str
    expected: float
    got: float | None
    tolerance: float
    p_t: float | None = None
    p_rand: float | None = None
    p_holm_t: float | None = None
    p_holm_rand: float | None = None
    against: str = ""
    grade: str = "OK"


@dataclass
class Grade:
    outcome: Outcome
    checks: list[Check] = field(default_factory=list)
    grade: str = "OK"
    note: str = ""


def _tests(values: list[float], reference: list[float] | float) -> tuple[float, float]:
    """One-sided p-values that `values` are lower than `reference` (paired list or a constant)."""
    import numpy as np
    from scipy import stats

    x = np.asarray(values, dtype=float)
    d = x - (np.asarray(reference, dtype=float) if isinstance(reference, list) else float(reference))
    if len(d) == 0:
        return 1.0, 1.0
    if len(d) == 1 or np.allclose(d, d[0]):  # no variance: the direction alone decides
        p = 0.0 if d.mean() < -1e-12 else 1.0
        return p, p
    p_t = float(stats.ttest_1samp(d, 0.0, alternative="less").pvalue)
    # sign-flip randomization test of the mean difference (paired permutation test)
    rng = np.random.default_rng(0)
    signs = rng.choice([-1.0, 1.0], size=(N_RESAMPLES, len(d)))
    null = (signs * np.abs(d)).mean(axis=1)
    p_rand = float((np.sum(null <= d.mean()) + 1) / (N_RESAMPLES + 1))
    return p_t, p_rand


def _holm(pvalues: list[float]) -> list[float]:
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted = [0.0] * len(pvalues)
    running = 0.0
    m = len(pvalues)
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def load_baseline(baseline: Path | None, dataset: str, pipeline: str) -> dict | None:
    if baseline is None:
        return None
    for path in sorted((baseline / dataset).glob("*/metrics.json")) if (baseline / dataset).is_dir() else []:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if doc.get("pipeline") == pipeline and doc.get("per_query"):
            return doc
    return None


def grade_all(outcomes: list[Outcome], alpha: float, baseline: Path | None = None) -> list[Grade]:
    grades: list[Grade] = []
    pending: list[Check] = []
    for o in outcomes:
        g = Grade(o)
        grades.append(g)
        if o.status == "skipped":
            g.grade, g.note = "SKIP", o.reason
            continue
        cond = o.condition
        if not cond.expected:
            g.grade, g.note = "INFO", "no expected values"
            continue
        base = load_baseline(baseline, o.doc["dataset"]["name"], o.doc["pipeline"])
        for m, exp in cond.expected.items():
            got = o.metrics.get(m)
            c = Check(m, exp, got, cond.tolerance.get(m, 0.005))
            g.checks.append(c)
            if got is None:
                c.grade = "FAIL"
                g.note = f"measure {m} missing from the result"
                continue
            if abs(got - exp) <= c.tolerance + 1e-12:
                continue
            if got > exp:
                c.grade = "OKISH"
                continue
            values = {q: v[m] for q, v in o.per_query.items() if m in v}
            if base is not None:
                shared = sorted(set(values) & set(base["per_query"]))
                c.against = "baseline"
                c.p_t, c.p_rand = _tests([values[q] for q in shared], [base["per_query"][q][m] for q in shared])
            else:
                c.against = "expected"
                c.p_t, c.p_rand = _tests(list(values.values()), exp)
            pending.append(c)
    if pending:
        holm_t = _holm([c.p_t for c in pending])
        holm_r = _holm([c.p_rand for c in pending])
        for c, pt, pr in zip(pending, holm_t, holm_r):
            c.p_holm_t, c.p_holm_rand = pt, pr
            c.grade = "FAIL" if pt < alpha and pr < alpha else "OKISH"
    rank = {"OK": 0, "INFO": 0, "OKISH": 1, "FAIL": 2}
    for g in grades:
        if g.checks:
            g.grade = max((c.grade for c in g.checks), key=rank.__getitem__)
    return grades


def _fmt(v: float | None, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}"


def markdown(grades: list[Grade], suite_name: str, alpha: float) -> str:
    counts = {k: sum(g.grade == k for g in grades) for k in ("OK", "OKISH", "FAIL", "SKIP", "INFO")}
    lines = [f"## rankify regress: {suite_name}", "",
             " · ".join(f"{k} {v}" for k, v in counts.items() if v) + f" (alpha {alpha}, Holm-corrected)", "",
             "| grade | condition | dataset | pipeline | measure | expected | got | delta | tol | p (t / rand) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for g in grades:
        c0 = g.outcome.condition
        if not g.checks:
            lines.append(f"| {g.grade} | {c0.name} | {c0.dataset} | `{_pipe(g)}` | | | | | | {g.note} |")
        for c in g.checks:
            delta = None if c.got is None else c.got - c.expected
            p = "" if c.p_holm_t is None else f"{_fmt(c.p_holm_t, 3)} / {_fmt(c.p_holm_rand, 3)} vs {c.against}"
            lines.append(f"| {c.grade} | {c0.name} | {c0.dataset} | `{_pipe(g)}` | {c.measure} | {_fmt(c.expected)} | "
                         f"{_fmt(c.got)} | {_fmt(delta)} | {c.tolerance:g} | {p} |")
    return "\n".join(lines) + "\n"


def _pipe(g: Grade) -> str:
    return g.outcome.doc.get("pipeline") or " >> ".join([g.outcome.condition.retriever, *g.outcome.condition.rerankers])


def junit(grades: list[Grade], suite_name: str) -> str:
    fails = sum(g.grade == "FAIL" for g in grades)
    skips = sum(g.grade == "SKIP" for g in grades)
    total = sum(g.outcome.seconds for g in grades)
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           f'<testsuites><testsuite name={quoteattr("rankify." + suite_name)} tests="{len(grades)}" '
           f'failures="{fails}" skipped="{skips}" errors="0" time="{total:.3f}">']
    for g in grades:
        cond = g.outcome.condition
        detail = "; ".join(f"{c.measure}: expected {_fmt(c.expected)} got {_fmt(c.got)} (tol {c.tolerance:g}, "
                           f"holm p {_fmt(c.p_holm_t, 3)}/{_fmt(c.p_holm_rand, 3)}) {c.grade}" for c in g.checks)
        out.append(f'  <testcase classname={quoteattr(cond.dataset)} name={quoteattr(cond.name)} time="{g.outcome.seconds:.3f}">')
        if g.grade == "FAIL":
            out.append(f"    <failure message={quoteattr('significantly worse than expected')}>{escape(detail)}</failure>")
        elif g.grade == "SKIP":
            out.append(f"    <skipped message={quoteattr(g.note)}/>")
        out.append(f"    <system-out>{escape(g.grade + ': ' + (detail or g.note))}</system-out>")
        out.append("  </testcase>")
    out.append("</testsuite></testsuites>")
    return "\n".join(out) + "\n"
