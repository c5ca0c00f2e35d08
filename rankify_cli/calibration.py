"""Calibration measures: this toolkit's own, computed with numpy beside ir-measures (which has
none). They read a run's scores as probabilities of relevance, which is what agents that keep
or drop memories by a score threshold rely on (MemReranker's concern), so they apply only to
scores in [0, 1] (P(yes) of logit-pair templates with `score: softmax`, hosted APIs' relevance
scores); a stage whose scores leave [0, 1] gets no value and a note saying how many did.

- `ECE[(rel=R,bins=B)]`: expected calibration error against binary relevance (grade >= R,
  default 1), B equal-width bins over [0, 1] (default 10; bins are (a, b], the first [0, b],
  as sklearn 1.9's calibration_curve with strategy='uniform' bins them):
  sum over bins of (n_b / N) |fraction relevant_b - mean score_b|. Per query over its
  documents; the aggregate pools every (query, document) pair of the judged queries (it is
  not the mean of per-query values). Unjudged documents count as not relevant (trec_eval's rule).
- `P[(rel=R)]@score>=T`, `R[(rel=R)]@score>=T`: precision and recall of the documents scored at
  least T. A query with none has precision 0 (trec_eval's set_P of an empty set); the
  aggregate is the mean over judged queries, a judged query without results counting 0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ConfigError
from .types import Qrels, Run

_ECE = re.compile(r"^ECE(?:\((?P<params>[^)]*)\))?$")
_THRESH = re.compile(r"^(?P<kind>[PR])(?:\((?P<params>[^)]*)\))?@score>=(?P<t>[0-9]*\.?[0-9]+)$")


@dataclass(frozen=True)
class CalibrationMeasure:
    name: str
    kind: str  # "ECE", "P" or "R"
    rel: int = 1
    bins: int = 10
    threshold: float = 0.5


def _params(text: str | None, allowed: tuple[str, ...], name: str) -> dict:
    out: dict = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        key, eq, value = part.partition("=")
        if not eq or key.strip() not in allowed:
            raise ConfigError(f"bad parameter '{part}' in measure '{name}' (allowed: {', '.join(allowed)})")
        try:
            out[key.strip()] = int(value)
        except ValueError:
            raise ConfigError(f"parameter '{key.strip()}' of measure '{name}' takes an integer") from None
    return out


def parse(name: str) -> CalibrationMeasure | None:
    """The measure a name denotes, None when it is not a calibration measure."""
    m = _ECE.match(name)
    if m:
        p = _params(m.group("params"), ("rel", "bins"), name)
        if p.get("bins", 10) < 1:
            raise ConfigError(f"measure '{name}': bins must be at least 1")
        return CalibrationMeasure(name, "ECE", p.get("rel", 1), p.get("bins", 10))
    m = _THRESH.match(name)
    if m:
        p = _params(m.group("params"), ("rel",), name)
        t = float(m.group("t"))
        if not 0.0 <= t <= 1.0:
            raise ConfigError(f"measure '{name}': the score threshold must be in [0, 1]")
        return CalibrationMeasure(name, m.group("kind"), p.get("rel", 1), threshold=t)
    return None


def ece(scores, labels, bins: int = 10) -> float:
    import numpy as np

    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if s.size == 0:
        raise ValueError("ECE of no scores")
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.searchsorted(edges[1:-1], s, side="left")
    count = np.bincount(idx, minlength=bins).astype(np.float64)
    conf = np.bincount(idx, weights=s, minlength=bins)
    acc = np.bincount(idx, weights=y, minlength=bins)
    used = count > 0
    return float(np.sum(np.abs(acc[used] - conf[used])) / s.size)


def evaluate(run: Run, qrels: Qrels, measures: list[CalibrationMeasure]) -> tuple[dict, dict, dict]:
    """(aggregate, per_query, notes) for the judged queries of `run`."""
    import numpy as np

    judged = [q for q in qrels]
    per_query: dict[str, dict[str, float]] = {}
    aggregate: dict[str, float] = {}
    notes: dict[str, int] = {}
    outside = sum(1 for q in judged for c in run.get(q, ()) if not 0.0 <= c.score <= 1.0)
    for m in measures:
        if outside:  # not probabilities: no value, never a made-up one
            notes[f"{m.name} not computed: scores outside [0, 1]"] = outside
            continue
        pooled_s, pooled_y, values = [], [], []
        for q in judged:
            cands = run.get(q) or []
            grades = qrels[q]
            s = np.array([c.score for c in cands], dtype=np.float64)
            y = np.array([grades.get(c.doc_id, 0) >= m.rel for c in cands], dtype=np.float64)
            if m.kind == "ECE":
                if cands:
                    per_query.setdefault(q, {})[m.name] = ece(s, y, m.bins)
                    pooled_s.append(s)
                    pooled_y.append(y)
                continue
            kept = s >= m.threshold
            hits = float(y[kept].sum()) if cands else 0.0
            if m.kind == "P":
                v = hits / float(kept.sum()) if cands and kept.any() else 0.0
            else:
                relevant = sum(1 for g in grades.values() if g >= m.rel)
                v = hits / relevant if relevant else 0.0
            values.append(v)
            if cands:
                per_query.setdefault(q, {})[m.name] = v
        if m.kind == "ECE":
            if pooled_s:
                aggregate[m.name] = ece(np.concatenate(pooled_s), np.concatenate(pooled_y), m.bins)
        else:
            aggregate[m.name] = float(np.mean(values)) if values else 0.0
    return aggregate, per_query, notes
