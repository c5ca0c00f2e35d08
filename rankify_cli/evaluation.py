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


MAX_CUTOFF = 2**31 - 1  # trec_eval's cutoffs are C ints


def parse_measures(names: list[str]) -> list:
    """ir-measures objects, and this toolkit's calibration measures (calibration.py) as they are.
    ir-measures names pytrec_eval could not take are refused here: a cutoff below 1 aborts the
    process (an assertion in pytrec_eval.cpp), rel below 1 fails after all the work."""
    import ir_measures

    from . import calibration

    out = []
    for name in names:
        if not isinstance(name, str):
            raise ConfigError(f"a measure must be a name like nDCG@10 (got {name!r})")
        own = calibration.parse(name)
        if own is not None:
            out.append(own)
            continue
        try:
            m = ir_measures.parse_measure(name)
        except Exception:
            raise ConfigError(
                f"unknown measure '{name}' (ir-measures syntax, e.g. nDCG@10, R@100, AP(rel=2), RR@10)"
            ) from None
        params = getattr(m, "params", {}) or {}
        cutoff, rel = params.get("cutoff"), params.get("rel")
        if cutoff is not None and (not isinstance(cutoff, int) or not 1 <= cutoff <= MAX_CUTOFF):
            raise ConfigError(f"measure '{name}': the cutoff must be a whole number from 1 to {MAX_CUTOFF} "
                              f"(got {cutoff})")
        if rel is not None and (not isinstance(rel, int) or rel < 1):
            raise ConfigError(f"measure '{name}': rel must be a relevance grade of at least 1 (got {rel})")
        out.append(m)
    return out


def evaluable_qrels(qrels: Qrels) -> tuple[Qrels, int]:
    """Negative grades as 0, and how many there were. trec_eval takes only non-negative grades
    (it uses -1 and -2 itself, for unpooled and unjudged documents): a query judged only below
    -1 crashes pytrec_eval (a segfault). Every trec_eval measure treats a grade below 1 as not
    relevant and gives it no gain, so the values are those of the grades as written."""
    negative = sum(1 for docs in qrels.values() for g in docs.values() if g < 0)
    if not negative:
        return qrels, 0
    return {q: {d: max(0, g) for d, g in docs.items()} for q, docs in qrels.items()}, negative


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
    qrels, negative = evaluable_qrels(qrels)
    if negative:
        notes["negative_grades_as_0"] = negative
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
