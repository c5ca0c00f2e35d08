"""Views of the leaderboard: the BEIR-style pivot and the quality-vs-cost plot."""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError


def _value(row: dict, metric: str) -> float | None:
    v = row.get(metric)
    return float(v) if v not in (None, "") else None


TEXT_COLUMNS = {"dataset", "pipeline", "models", "stage_s", "config_hash", "rankify_version", "git_commit", "date"}


def typed_row(row: dict) -> dict:
    """A CSV row as JSON wants it: numbers as numbers, params as an object, blanks as null."""
    import json

    out: dict = {}
    for k, v in row.items():
        if v in (None, ""):
            out[k] = None
        elif k == "params":
            try:
                out[k] = json.loads(v)
            except ValueError:
                out[k] = v
        elif k in TEXT_COLUMNS:
            out[k] = v
        else:
            try:
                out[k] = int(v) if v.lstrip("-").isdigit() else float(v)
            except ValueError:
                out[k] = v
    return out


def pivot_rows(rows: list[dict], metric: str) -> tuple[list[dict], list[str]]:
    """One row per pipeline, one column per dataset, and the average over that pipeline's datasets."""
    if rows and metric not in rows[0]:
        raise ConfigError(f"no column '{metric}' in the leaderboard")
    datasets = sorted({r["dataset"] for r in rows})
    table: dict[str, dict] = {}
    for r in rows:
        v = _value(r, metric)
        if v is not None:
            table.setdefault(r["pipeline"], {"pipeline": r["pipeline"]})[r["dataset"]] = f"{v:.4f}"
    out = []
    for pipe, row in sorted(table.items()):
        values = [float(row[d]) for d in datasets if d in row]
        row["avg"] = f"{sum(values) / len(values):.4f}"
        row["n"] = str(len(values))
        out.append({c: row.get(c, "") for c in ["pipeline", *datasets, "avg", "n"]})
    return out, ["pipeline", *datasets, "avg", "n"]


def plot_quality_cost(rows: list[dict], metric: str, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from .errors import DependencyError

        raise DependencyError("--plot needs matplotlib: pip install 'rankify-cli[plot]'") from None
    points: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        v, cost = _value(r, metric), _value(r, "s_per_query")
        if v is not None and cost is not None:
            points.setdefault(r["pipeline"], []).append((max(cost, 1e-5), v))
    if not points:
        raise ConfigError(f"no rows with both '{metric}' and s_per_query to plot")
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for pipe, pts in sorted(points.items()):
        x = sum(p[0] for p in pts) / len(pts)
        y = sum(p[1] for p in pts) / len(pts)
        label = pipe if len(pipe) <= 60 else pipe[:57] + "..."
        ax.scatter([x], [y], s=60, label=f"{label} ({len(pts)} dataset{'s' if len(pts) > 1 else ''})")
    ax.set_xscale("log")
    ax.set_xlabel("seconds per query (log scale, mean over datasets)")
    ax.set_ylabel(f"{metric} (mean over datasets)")
    ax.set_title(f"Quality vs cost: {metric}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
