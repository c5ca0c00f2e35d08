"""`rankify leaderboard --html FILE`: one self-contained page (no network, no scripts from
anywhere else) with the pivot table (datasets x pipelines and their mean, sortable), the cost
columns, significance marks against a chosen baseline, and the quality-vs-cost plot as SVG.

Significance is regress's: per-query paired t-test and sign-flip randomization test
(regress._tests), Holm-corrected over every tested (pipeline, dataset) cell (regress._holm); a
cell is marked when both corrected p-values are below alpha. Per-query values are read from
each row's metrics.json in the results folder; a cell without them is not tested.

Plot labels sit in a column right of the plot, spaced so none overlaps, each joined to its
point by a leader line; the SVG is sized from the longest label, so none is cut.
"""

from __future__ import annotations

import json
import math
from html import escape
from pathlib import Path

from .errors import ConfigError
from .leaderboard import _value

CHAR_W = 7.2   # px per character of the 12px monospace labels (DejaVu Sans Mono: 0.6 em)
LINE_H = 16    # px between label baselines


def _per_query(output: Path, row: dict, metric: str) -> dict[str, float] | None:
    from .results import result_dir_for

    if not row.get("config_hash"):
        return None
    path = result_dir_for(output, row["dataset"], row["pipeline"], row["config_hash"]) / "metrics.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    pq = doc.get("per_query") or {}
    values = {q: v[metric] for q, v in pq.items() if isinstance(v, dict) and metric in v}
    return values or None


def significance(rows: list[dict], output: Path, metric: str, baseline: str, alpha: float) -> dict:
    """(pipeline, dataset) -> '+' (significantly better than the baseline), '-' (worse) or ''
    ('' also where untested). Paired per query, Holm over all tested cells."""
    from .regress import _holm, _tests

    base = {r["dataset"]: _per_query(output, r, metric) for r in rows if r["pipeline"] == baseline}
    cells, p_t, p_r = [], [], []
    for r in rows:
        if r["pipeline"] == baseline or not base.get(r["dataset"]):
            continue
        mine = _per_query(output, r, metric)
        if not mine:
            continue
        b = base[r["dataset"]]
        qs = sorted(set(mine) & set(b))
        if len(qs) < 2:
            continue
        x, y = [mine[q] for q in qs], [b[q] for q in qs]
        lo_t, lo_r = _tests(x, y)   # x below the baseline
        hi_t, hi_r = _tests(y, x)   # the baseline below x
        better = sum(x) > sum(y)
        cells.append(((r["pipeline"], r["dataset"]), "+" if better else "-"))
        # two-sided: twice the smaller one-sided p-value
        p_t.append(min(1.0, 2 * min(lo_t, hi_t)))
        p_r.append(min(1.0, 2 * min(lo_r, hi_r)))
    marks = {}
    for (key, sign), a, b in zip(cells, _holm(p_t), _holm(p_r)):
        marks[key] = sign if a < alpha and b < alpha else ""
    return marks


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _num(v: float | None, digits: int = 4) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def _cost(v: float | None) -> str:
    if v is None:
        return ""
    return f"{v:.3g}" if v < 1000 else f"{v:,.0f}"


def plot_svg(points: list[tuple[str, float, float]], metric: str) -> str:
    """Quality (y) vs seconds per query (x, log), one point per pipeline; labels in a column."""
    if not points:
        return "<p>No pipeline has both the measure and a cost to plot.</p>"
    left, top, plot_w, plot_h = 64, 20, 460, 300
    label_x = left + plot_w + 36
    longest = max(len(p[0]) for p in points) + 4  # "12. " numbering
    height = max(top + plot_h + 52, top + 8 + LINE_H * len(points) + 20)
    width = label_x + int(longest * CHAR_W) + 16
    xs = [math.log10(max(p[1], 1e-6)) for p in points]
    ys = [p[2] for p in points]
    x0, x1 = math.floor(min(xs)), math.ceil(max(xs))
    if x1 - x0 < 1:
        x1 = x0 + 1
    y_lo, y_hi = min(ys), max(ys)
    pad = max((y_hi - y_lo) * 0.1, 0.01)
    y0, y1 = max(0.0, y_lo - pad), y_hi + pad

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * plot_h

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" id="plot" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans Mono, monospace" font-size="12">',
           f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fafafa" stroke="#999"/>']
    for e in range(x0, x1 + 1):  # decades
        x = px(e)
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}" stroke="#e3e3e3"/>')
        out.append(f'<text x="{x:.1f}" y="{top + plot_h + 16}" text-anchor="middle">{10.0 ** e:g}</text>')
    for i in range(5):
        y = y0 + (y1 - y0) * i / 4
        out.append(f'<line x1="{left}" y1="{py(y):.1f}" x2="{left + plot_w}" y2="{py(y):.1f}" stroke="#e3e3e3"/>')
        out.append(f'<text x="{left - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{y:.3f}</text>')
    out.append(f'<text x="{left + plot_w / 2}" y="{top + plot_h + 36}" text-anchor="middle">'
               f'seconds per query (log scale, mean over datasets)</text>')
    out.append(f'<text transform="translate(14 {top + plot_h / 2}) rotate(-90)" text-anchor="middle">'
               f'{escape(metric)} (mean over datasets)</text>')
    # labels: ordered as the points are from top to bottom, then pushed apart to LINE_H
    order = sorted(range(len(points)), key=lambda i: (py(ys[i]), points[i][0]))
    slots, last = [], top + 4 - LINE_H
    for i in order:
        y = max(py(ys[i]) + 4, last + LINE_H)
        slots.append(y)
        last = y
    overflow = slots[-1] - (height - 8) if slots else 0
    if overflow > 0:  # shift the column up, never above the top
        slots = [max(top + 4 + k * LINE_H, s - overflow) for k, s in enumerate(slots)]
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
    for n, (i, ly) in enumerate(zip(order, slots), 1):
        name, cost, value = points[i]
        cx, cy, color = px(xs[i]), py(ys[i]), palette[(n - 1) % len(palette)]
        out.append(f'<line x1="{cx:.1f}" y1="{cy:.1f}" x2="{label_x - 4}" y2="{ly - 4:.1f}" stroke="{color}" '
                   f'stroke-width="0.8" stroke-dasharray="2 2"/>')
        out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="{color}"><title>{escape(name)}: '
                   f'{value:.4f}, {cost:.3g} s/query</title></circle>')
        out.append(f'<text class="label" x="{label_x}" y="{ly:.1f}" fill="{color}">{n}. {escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out)


SCRIPT = """
function sortBy(th) {
  const table = th.closest('table'), body = table.tBodies[0], col = th.cellIndex;
  const asc = th.dataset.dir !== 'asc';
  table.querySelectorAll('th').forEach(h => { delete h.dataset.dir; });
  th.dataset.dir = asc ? 'asc' : 'desc';
  const key = r => { const c = r.cells[col]; const v = c.dataset.value;
    return v === undefined ? c.textContent : (v === '' ? NaN : parseFloat(v)); };
  const rows = Array.from(body.rows);
  rows.sort((a, b) => { const x = key(a), y = key(b);
    if (typeof x === 'string') return asc ? x.localeCompare(y) : y.localeCompare(x);
    if (isNaN(x)) return 1; if (isNaN(y)) return -1; return asc ? x - y : y - x; });
  rows.forEach(r => body.appendChild(r));
}
document.querySelectorAll('th.sort').forEach(th => th.addEventListener('click', () => sortBy(th)));
"""

STYLE = """
body { font-family: DejaVu Sans, Arial, sans-serif; margin: 24px; color: #222; }
table { border-collapse: collapse; margin: 12px 0 24px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; white-space: nowrap; }
td.name { white-space: normal; overflow-wrap: anywhere; max-width: 26em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th.sort { cursor: pointer; background: #f0f0f0; }
th[data-dir=asc]::after { content: ' \\25B2'; } th[data-dir=desc]::after { content: ' \\25BC'; }
tr.baseline td { background: #fff8dc; }
.up { color: #1a7f37; font-weight: bold; } .down { color: #c62828; font-weight: bold; }
.note { color: #555; font-size: 90%; max-width: 60em; }
"""


def render(rows: list[dict], output: Path, metric: str = "nDCG@10", baseline: str | None = None,
           alpha: float = 0.05, title: str = "rankify leaderboard") -> str:
    if rows and metric not in rows[0]:
        raise ConfigError(f"no column '{metric}' in the leaderboard")
    datasets = sorted({r["dataset"] for r in rows})
    pipelines = sorted({r["pipeline"] for r in rows})
    if baseline is not None and baseline not in pipelines:
        from .registry import did_you_mean

        raise ConfigError(f"--baseline '{baseline}' is not a pipeline of the leaderboard"
                          f"{did_you_mean(baseline, pipelines)}")
    marks = significance(rows, output, metric, baseline, alpha) if baseline else {}
    by = {(r["pipeline"], r["dataset"]): r for r in rows}
    head = (["pipeline"] + datasets + ["mean", "datasets", "s/query", "docs/s", "rerank s", "model calls",
                                       "LLM calls", "cache hits"])
    body, points = [], []
    for p in pipelines:
        cells = [f'<td class="name">{escape(p)}</td>']
        values, costs, speeds = [], [], []
        rerank = calls = llm = hits = 0.0
        for d in datasets:
            r = by.get((p, d))
            v = _value(r, metric) if r else None
            if v is None:
                cells.append('<td class="num" data-value="">–</td>')
                continue
            values.append(v)
            mark = marks.get((p, d), "")
            sym = {"+": ' <span class="up" title="significantly better than the baseline">▲</span>',
                   "-": ' <span class="down" title="significantly worse than the baseline">▼</span>'}.get(mark, "")
            cells.append(f'<td class="num" data-value="{v}" data-mark="{mark}">{v:.4f}{sym}</td>')
            for name, into in (("s_per_query", costs), ("docs_per_s", speeds)):
                c = _value(r, name)
                if c is not None:
                    into.append(c)
            rerank += _value(r, "rerank_s") or 0.0
            calls += _value(r, "model_calls") or 0.0
            llm += _value(r, "llm_calls") or 0.0
            hits += _value(r, "cache_hits") or 0.0
        mean, cost, speed = _mean(values), _mean(costs), _mean(speeds)
        cells.append(f'<td class="num" data-value="{"" if mean is None else mean}"><b>{_num(mean)}</b></td>')
        cells.append(f'<td class="num" data-value="{len(values)}">{len(values)}</td>')
        for v, text in ((cost, _cost(cost)), (speed, _cost(speed)), (rerank, _cost(rerank)),
                        (calls, f"{calls:,.0f}" if calls else ""), (llm, f"{llm:,.0f}" if llm else ""),
                        (hits, f"{hits:,.0f}")):
            cells.append(f'<td class="num" data-value="{"" if v is None else v}">{text}</td>')
        cls = ' class="baseline"' if p == baseline else ""
        body.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
        if mean is not None and cost is not None:
            points.append((p, cost, mean))
    header = "".join(f'<th class="sort">{escape(h)}</th>' for h in head)
    sig = (f"▲/▼: significantly better/worse than <b>{escape(baseline)}</b> on that dataset (paired per-query "
           f"t-test and randomization test, both below α={alpha} after Holm correction over "
           f"{sum(1 for _ in marks)} tested cells)." if baseline else
           "Pass --baseline NAME to mark significant differences against it.")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>{STYLE}</style></head>
<body>
<h1>{escape(title)}</h1>
<h2>{escape(metric)} per dataset</h2>
<table id="pivot"><thead><tr>{header}</tr></thead>
<tbody>
{chr(10).join(body)}
</tbody></table>
<p class="note">Click a column to sort. {sig} Costs are the compute that produced the scores: a rerun
served from the cache reports what the cached work cost when it was computed; <i>cache hits</i> counts
what came from the cache. s/query and docs/s are means over the pipeline's datasets; rerank s, model
calls, LLM calls and cache hits are sums.</p>
<h2>Quality vs cost</h2>
{plot_svg(points, metric)}
<script>{SCRIPT}</script>
</body></html>
"""
