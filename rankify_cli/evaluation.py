"""Evaluation through ir-measures, with the dataset's rules applied first.

Ordering is decided here, not by the evaluator: candidates are sorted by the toolkit's rule
(score desc, ties by doc id desc: trec_eval's) and handed to ir-measures as strictly
decreasing rank scores, so every backend sees the same order. Averages run over every judged
query, as `trec_eval -c` (Pyserini's setting): a judged query the run has no result for
counts as an empty ranking and is reported. Evaluation failures raise; they never become 0.0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .datasets import EvalRules
from .errors import ConfigError, RankifyError
from .types import Qrels, Run, sort_candidates


def parse_measures(names: list[str]) -> list:
    """ir-measures objects, and this toolkit's calibration measures (calibration.py) as they are."""
    import ir_measures

    from . import calibration

    out = []
    for name in names:
        own = calibration.parse(name)
        if own is not None:
            out.append(own)
            continue
        try:
            out.append(ir_measures.parse_measure(name))
        except Exception:
            raise ConfigError(
                f"unknown measure '{name}' (ir-measures syntax, e.g. nDCG@10, R@100, AP(rel=2), RR@10)"
            ) from None
    return out


def split_measures(values: list[str] | None) -> list[str]:
    """`--metrics "nDCG@10,R@100"` and repeated flags both work; parentheses keep commas."""
    out: list[str] = []
    for v in values or []:
        depth, cur = 0, ""
        for ch in v:
            depth += ch == "("
            depth -= ch == ")"
            if ch in ", " and depth == 0:
                if cur:
                    out.append(cur)
                cur = ""
            else:
                cur += ch
        if cur:
            out.append(cur)
    return list(dict.fromkeys(out))


EMPTY_SENTINEL = "rankify:no-results"


@dataclass
class Evaluation:
    aggregate: dict[str, float]
    per_query: dict[str, dict[str, float]]
    queries_evaluated: int
    notes: dict[str, int] = field(default_factory=dict)


def apply_rules(run: Run, rules: EvalRules) -> tuple[Run, dict[str, int]]:
    """Drop self-hits and excluded ids; report what was dropped."""
    notes = {"self_hits_removed": 0, "excluded_ids_removed": 0}
    out: Run = {}
    for qid, cands in run.items():
        excluded = rules.excluded.get(qid, ())
        kept = []
        for c in cands:
            if rules.remove_self_hits and c.doc_id == qid:
                notes["self_hits_removed"] += 1
            elif c.doc_id in excluded:
                notes["excluded_ids_removed"] += 1
            else:
                kept.append(c)
        out[qid] = kept
    return out, notes


def evaluate(run: Run, qrels: Qrels, measure_names: list[str], rules: EvalRules | None = None) -> Evaluation:
    import ir_measures

    from . import calibration

    parsed = parse_measures(measure_names)
    own = [m for m in parsed if isinstance(m, calibration.CalibrationMeasure)]
    measures = [m for m in parsed if not isinstance(m, calibration.CalibrationMeasure)]
    notes: dict[str, int] = {}
    if rules is not None:
        run, notes = apply_rules(run, rules)
    judged = set(qrels)
    ranked = {
        qid: {c.doc_id: float(len(cands) - i) for i, c in enumerate(sort_candidates(cands))}
        for qid, cands in run.items()
        if qid in judged and cands
    }
    notes["run_queries_without_judgments"] = sum(1 for q in run if q not in judged)
    missing = [q for q in judged if q not in ranked]
    notes["judged_queries_without_run"] = len(missing)
    if not ranked:
        raise RankifyError("no query of the run has judgments in the qrels: check that query ids match")
    # trec_eval -c: a judged query without results is an empty ranking. One unjudged sentinel
    # document gives every rank-based measure exactly the value of an empty list.
    for qid in missing:
        ranked[qid] = {EMPTY_SENTINEL: 0.0}
    try:
        per_query: dict[str, dict[str, float]] = {}
        aggregate: dict[str, float] = {}
        if measures:
            for m in ir_measures.iter_calc(measures, qrels, ranked):
                per_query.setdefault(m.query_id, {})[str(m.measure)] = float(m.value)
            aggregate = {str(k): float(v) for k, v in ir_measures.calc_aggregate(measures, qrels, ranked).items()}
    except RankifyError:
        raise
    except Exception as e:
        raise RankifyError(f"evaluation failed in ir-measures: {e}") from None
    if own:  # calibration reads the scores themselves, not the rank order
        agg, pq, own_notes = calibration.evaluate(run, qrels, own)
        aggregate.update(agg)
        notes.update(own_notes)
        for q, values in pq.items():
            per_query.setdefault(q, {}).update(values)
    # fixed key order (queries sorted, measures as asked): metrics.json is byte-stable across
    # processes, whatever order the evaluator's backends yield values in
    names = [m.name if isinstance(m, calibration.CalibrationMeasure) else str(m) for m in parsed]
    ordered = {n: aggregate[n] for n in names if n in aggregate}  # calibration of non-probabilities: a note
    per_query = {q: {n: per_query[q][n] for n in names if n in per_query[q]} for q in sorted(per_query)}
    return Evaluation(ordered, per_query, len(per_query), notes)
