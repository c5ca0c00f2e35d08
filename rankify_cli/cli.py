"""The `rankify` command. Exit codes: 0 ok, 1 regression, 2 usage or data error, 3 internal
error, 130 interrupted. Errors print as one line on stderr, never a traceback (set
RANKIFY_DEBUG=1 to see one). Heavy modules are imported inside commands, so --help is fast."""

from __future__ import annotations

import importlib
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import typer

CONTEXT = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None, context_settings=CONTEXT,
                  help="Reproducible reranking benchmarks: which reranker orders the same candidates best, "
                       "and at what cost?")

MULTI_VALUE_OPTIONS = ("--metrics", "-m")
REPEATED_OPTIONS = ("--reranker",)  # `--reranker A B` is `--reranker A --reranker B` (a cascade)
METRICS_HELP = ("ir-measures names, e.g. -m nDCG@10 R@100 'AP(rel=2)' [default: the dataset's: nDCG@10 R@100 "
                "for BEIR and BRIGHT, nDCG@10 'R(rel=2)@100' 'AP(rel=2)' for TREC DL; `rankify datasets`]")
QUERIES_HELP = "Only the first N judged queries (a quick look; recorded in the config hash)."
QUERY_IDS_HELP = "Only these queries: a file with one id per line, or ids like 19335,47923 (in the config hash)."


def _version(value: bool) -> None:
    if value:
        from . import __version__

        print(f"rankify {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")):
    """Reproducible reranking benchmarks: which reranker orders the same candidates best, and at what cost?

    Example: rankify run -d dl19 --reranker minilm-l6   (see `rankify rerankers` for what exists)
    """



def _console(stderr: bool = False):
    from rich.console import Console

    import shutil

    # Not a terminal (CI logs, pipes): rich would assume 80 columns and squash tables.
    width = None if (sys.stderr if stderr else sys.stdout).isatty() else max(160, shutil.get_terminal_size().columns)
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=width)


def _warn(msg: str) -> None:
    _console(stderr=True).print(f"[yellow]warning:[/yellow] {msg}")


@contextmanager
def _progress_factory(enabled: bool):
    """Yields a factory of rich progress bars (or silent ones) for pipeline stages."""
    if not enabled:
        from .pipeline import no_progress

        yield no_progress
        return
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    # descriptions are short names (pipeline.short_name); the unit (queries, pairs) follows the count
    with Progress(TextColumn("{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(),
                  TextColumn("{task.fields[unit]}"), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                  TextColumn("eta"), TimeRemainingColumn(), console=_console(stderr=True), transient=True) as bars:
        @contextmanager
        def factory(description: str, total: int, unit: str = ""):
            if len(description) > 40:
                description = description[:39] + "…"
            task = bars.add_task(description, total=total, unit=unit, rate="")

            def advance(n: int) -> None:
                bars.advance(task, n)
                speed = bars.tasks[[t.id for t in bars.tasks].index(task)].speed
                if speed:
                    bars.update(task, rate=f"{speed:,.0f}/s" if speed >= 10 else f"{speed:.2f}/s")

            try:
                yield advance
            finally:
                bars.remove_task(task)

        yield factory


def _fmt(v: float) -> str:
    return f"{v:.4f}"


@app.command()
def run(
    dataset: str = typer.Option("scifact", "--dataset", "-d", help="Catalog name (see `rankify datasets`) or a dataset folder."),
    retriever: Optional[str] = typer.Option(None, "--retriever", "-r", help="bm25 | bm25:rank-bm25 | run:NAME | run:FILE (default: bm25, or run:bm25 for datasets without a corpus)."),
    reranker: List[str] = typer.Option([], "--reranker", help="Reranker spec or preset, e.g. minilm-l6 or 'embedding:/models/minilm?batch_size=64'; several (--reranker A B) make a cascade. `rankify rerankers` lists families, options and presets."),
    depth: int = typer.Option(1000, "--depth", help="Candidates the first stage returns per query."),
    top_k: int = typer.Option(100, "--top-k", "-k", help="Candidates each reranker reorders."),
    metrics: List[str] = typer.Option([], "--metrics", "-m", help=METRICS_HELP, show_default=False),
    queries: Optional[int] = typer.Option(None, "--queries", help=QUERIES_HELP),
    query_ids: Optional[str] = typer.Option(None, "--query-ids", help=QUERY_IDS_HELP),
    output: Path = typer.Option(Path("results"), "--output", "-o", help="Results folder (run files, metrics.json, leaderboard.csv)."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Folder holding datasets (default: $RANKIFY_DATA_DIR)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Cache folder (default: $RANKIFY_CACHE_DIR or ~/.cache/rankify-cli)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write cached indexes and scores."),
    backend: Optional[str] = typer.Option(None, "--backend", help="Where every neural reranker's model runs: hf (local transformers, default), vllm (in-process vLLM) or openai (any OpenAI-compatible server: vLLM, SGLang, TEI, OpenAI)."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="OpenAI-compatible server(s), '|'-separated (default: $OPENAI_BASE_URL)."),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", help="Environment variable holding the API key (default OPENAI_API_KEY); the key is never written anywhere."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
):
    """Retrieve, rerank and evaluate one dataset; write run files, metrics.json and a leaderboard row.

    \b
    Examples:
      rankify run -d scifact                                  # BM25 only
      rankify run -d dl19 -r run:bm25 --reranker minilm-l6    # rerank the staged BM25 top-100
      rankify run -d dl19 --reranker embedding:/models/all-MiniLM-L6-v2 --queries 5 -m nDCG@10
    """
    from .cache import Store
    from .datasets import cache_root, resolve
    from .evaluation import parse_measures, split_measures
    from .pipeline import Pipeline, QuerySubset, execute
    from .results import write_results

    check_output(output)
    ds = resolve(dataset, data_dir)
    measures = split_measures(metrics) or ds.default_measures()
    parse_measures(measures)
    if retriever is None:
        retriever = "bm25" if ds.has_corpus() or "bm25" not in ds.run_files() else "run:bm25"
    pipe = Pipeline(retriever, reranker, depth=depth, top_k=top_k,
                    reranker_defaults=backend_defaults(backend, base_url, api_key_env),
                    subset=QuerySubset.from_options(queries, query_ids))
    cache = None if no_cache else Path(cache_dir or cache_root())
    store = Store(cache) if cache and reranker else None
    show = not (quiet or as_json) and sys.stderr.isatty()
    log = (lambda m: None) if as_json or quiet else (lambda m: _console(stderr=True).print(f"[dim]{m}[/dim]"))
    log(f"dataset {ds.name}: {ds.root} (from {ds.origin})")
    with _progress_factory(show) as progress:
        result = execute(pipe, ds, measures, cache_dir=str(cache) if cache else None, store=store,
                         progress=progress, log=log)
    doc = write_results(result, output)
    for w in result.warnings:
        _warn(w)
    if as_json:
        print(json.dumps(doc, ensure_ascii=False))
        return
    _print_result(result, doc)


def check_output(output: Path) -> None:
    """Fail before any work if results could not be written (a file in the way, a bad leaderboard)."""
    from .errors import ConfigError
    from .results import read_leaderboard

    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output} exists and is not a folder")
    read_leaderboard(output / "leaderboard.csv")  # raises a clear error if it is damaged


def backend_defaults(backend: str | None, base_url: str | None, api_key_env: str | None) -> dict:
    """CLI-wide backend flags, applied to every reranker whose constructor takes them."""
    if backend is not None and backend not in ("hf", "vllm", "openai"):
        from .errors import ConfigError

        raise ConfigError(f"--backend must be 'hf', 'vllm' or 'openai', got '{backend}'")
    if backend == "openai" and base_url is None:
        base_url = os.environ.get("OPENAI_BASE_URL")
    return {"backend": backend, "base_url": base_url, "api_key_env": api_key_env}


def _print_result(result, doc) -> None:
    from rich.table import Table

    table = Table(title=f"{result.dataset.name}  ({result.queries} queries)", title_justify="left")
    # a calibration measure has no value for a stage whose scores are not probabilities
    cols = list(dict.fromkeys(m for s in result.stages for m in s.evaluation.aggregate))
    for col in ["stage", *cols, "queries evaluated", "seconds"]:
        table.add_column(col, justify="left" if col == "stage" else "right")
    for s in result.stages:
        ev = s.evaluation
        table.add_row(s.name or s.spec, *[_fmt(ev.aggregate[m]) if m in ev.aggregate else "-" for m in cols],
                      str(ev.queries_evaluated), f"{s.seconds:.2f}")
    con = _console()
    con.print(table)
    notes = {k: v for k, v in result.final.evaluation.notes.items() if v}
    if notes:
        con.print("evaluation: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in notes.items()))
    con.print(f"data: {result.dataset.root} (from {result.dataset.origin})")
    con.print(f"results: {doc['output_dir']}")


@app.command("eval")
def eval_(
    run_file: Path = typer.Argument(..., help="A TREC run file, or rank_llm JSON (.json/.json.gz) as run: takes."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Catalog name or folder: qrels and evaluation rules."),
    qrels: Optional[Path] = typer.Option(None, "--qrels", help="A qrels file (BEIR tsv or TREC), instead of --dataset; a known dataset's qrels file brings its measures and rules."),
    metrics: List[str] = typer.Option([], "--metrics", "-m", help=METRICS_HELP, show_default=False),
    queries: Optional[int] = typer.Option(None, "--queries", help="Only the first N judged queries of the run."),
    query_ids: Optional[str] = typer.Option(None, "--query-ids", help=QUERY_IDS_HELP),
    data_dir: Optional[str] = typer.Option(None, "--data-dir"),
    per_query: bool = typer.Option(False, "--per-query", help="Also print per-query values."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
):
    """Evaluate a run file against a dataset's qrels (with its rules) or a qrels file.

    \b
    Examples:
      rankify eval results/dl19/.../stage2.run -d dl19
      rankify eval my.run --qrels qrels.txt -m nDCG@10 P@5
    """
    from .datasets import EvalRules, resolve
    from .errors import ConfigError
    from .evaluation import evaluate, parse_measures, split_measures
    from .formats import read_candidates_json, read_qrels, read_trec_run
    from .pipeline import QuerySubset

    if (dataset is None) == (qrels is None):
        raise ConfigError("give exactly one of --dataset or --qrels")
    ds = resolve(dataset, data_dir) if dataset else _dataset_of_qrels(qrels, data_dir)
    measures = split_measures(metrics) or (ds.default_measures() if ds else ["nDCG@10", "R@100"])
    parse_measures(measures)
    if run_file.name.endswith((".json", ".json.gz")):
        run = read_candidates_json(run_file)[1]
    else:
        run = read_trec_run(run_file)
    judgments = read_qrels(qrels) if qrels else ds.qrels()
    subset = QuerySubset.from_options(queries, query_ids)
    if subset is not None:
        from .types import Query

        order = [Query(q, "") for q in run if q in judgments]
        keep = {q.id for q in subset.apply(order, set(judgments), run_file)}
        run = {q: c for q, c in run.items() if q in keep}
        judgments = {q: j for q, j in judgments.items() if q in keep}
    result = evaluate(run, judgments, measures, ds.rules() if ds else EvalRules())
    doc = {"run": str(run_file), "dataset": ds.name if ds else None, "qrels": str(qrels or ds.qrels_path),
           "metrics": result.aggregate, "queries_evaluated": result.queries_evaluated, "notes": result.notes}
    if per_query or as_json:
        doc["per_query"] = result.per_query
    if as_json:
        print(json.dumps(doc, ensure_ascii=False))
        return
    from rich.table import Table

    table = Table(title=f"{run_file.name} on {ds.name if ds else qrels}", title_justify="left")  # noqa
    table.add_column("measure")
    table.add_column("value", justify="right")
    for m, v in result.aggregate.items():
        table.add_row(m, _fmt(v))
    table.add_row("queries evaluated", str(result.queries_evaluated))
    con = _console()
    con.print(table)
    for k, v in result.notes.items():
        if v:
            con.print(f"note: {k.replace('_', ' ')}: {v}")
    if per_query:
        for qid in sorted(result.per_query):
            con.print(qid + "\t" + "\t".join(f"{m}={_fmt(v)}" for m, v in result.per_query[qid].items()))


def _dataset_of_qrels(qrels: Path, data_dir: str | None):
    """The catalog dataset whose qrels file this is (its measures and rules apply), or None."""
    from .catalog import CATALOG
    from .datasets import Dataset, locate

    try:
        target = qrels.resolve()
        for entry in CATALOG.values():
            found = locate(entry, data_dir)
            if found:
                ds = Dataset(entry.name, found[0], entry.layout, found[1], entry)
                if ds.qrels_path is not None and ds.qrels_path.resolve() == target:
                    return ds
    except Exception:  # an unreadable data folder: the plain qrels file still evaluates
        return None
    return None


@app.command()
def datasets(
    data_dir: Optional[str] = typer.Option(None, "--data-dir"),
    irds: bool = typer.Option(False, "--irds", help="List the ir_datasets ids usable as --dataset irds:<id> instead."),
    as_json: bool = typer.Option(False, "--json"),
):
    """What datasets are known, which are available locally or by download, and where they resolve to.

    \b
    Example: rankify datasets --json
    """
    if irds:
        return _irds_datasets(as_json)
    from .catalog import CATALOG
    from .datasets import Dataset, data_dirs, is_offline, locate

    rows = []
    data_dirs(data_dir)  # validates RANKIFY_DATA_DIR / --data-dir
    online = not is_offline()
    for entry in CATALOG.values():
        found = locate(entry, data_dir)
        row = {"name": entry.name, "description": entry.description, "available": bool(found),
               "download": online and not found and entry.downloadable,
               "path": str(found[0]) if found else None, "origin": found[1] if found else None,
               "corpus": False, "corpus_download": False, "runs": [], "runs_download": []}
        if found or row["download"]:
            ds = Dataset(entry.name, found[0] if found else Path(entry.subdir), entry.layout, "", entry)
            row["corpus"] = bool(found) and ds.corpus_path is not None
            row["corpus_download"] = not row["corpus"] and online and (bool(entry.archive) or ds.has_corpus())
            runs = ds.run_files()
            row["runs"] = sorted(n for n, p in runs.items() if p.exists())
            row["runs_download"] = sorted(n for n, p in runs.items() if not p.exists())
        rows.append(row)
    if as_json:
        print(json.dumps(rows))
        return
    from rich.table import Table

    table = Table(title=None if online else "offline (RANKIFY_OFFLINE=1): nothing is downloaded", title_justify="left")
    for col in ("name", "available", "corpus", "runs", "path", "description"):
        table.add_column(col)
    for r in rows:
        runs = r["runs"] + [f"{n} (download)" for n in r["runs_download"]]
        table.add_row(r["name"], "yes" if r["available"] else ("download" if r["download"] else "no"),
                      "yes" if r["corpus"] else ("download" if r["corpus_download"] else "-"), ", ".join(runs) or "-",
                      f"{r['path']} ({r['origin']})" if r["path"] else "-", r["description"])
    _console().print(table)


def _irds_datasets(as_json: bool) -> None:
    from .irds import known_ids

    ids = known_ids()  # a missing ir_datasets package is one clear line
    import ir_datasets

    rows = []
    for i in ids:
        h = ir_datasets.registry._registered[i]  # not registry[i]: that logs each deprecated alias
        rows.append({"id": f"irds:{i}", **{k: getattr(h, f"has_{k}")() for k in ("docs", "queries", "qrels", "scoreddocs")}})
    if as_json:
        print(json.dumps(rows))
        return
    usable = [r for r in rows if r["queries"] and r["qrels"]]
    for r in usable:
        what = "docs" if r["docs"] else ("scoreddocs" if r["scoreddocs"] else "qrels only")
        print(f"{r['id']}\t{what}")
    print(f"{len(usable)} of {len(rows)} ir_datasets ids have queries and qrels (--json lists all)", file=sys.stderr)


def _list_stages(kind: str, as_json: bool) -> None:
    from .registry import catalogue

    cat = catalogue(kind)
    if as_json:
        print(json.dumps(cat))
        return
    con = _console()
    con.print(f"{kind} families (spec: NAME[:{'MODEL' if kind == 'reranker' else 'ARGUMENT'}][?option=value&...]):")
    for name, fam in cat["families"].items():
        arg = f":{fam['argument'].upper()}" if fam["argument"] else ""
        con.print(f"\n  [bold]{name}{arg}[/bold]  {fam['summary']}", highlight=False)
        opts = "  ".join(f"{k}={v}" for k, v in fam["options"].items())
        if opts:
            con.print(f"    options: {opts}", highlight=False)
    if cat["presets"]:
        con.print("\npresets (NAME, or NAME:/local/folder to keep the preset's options with local weights):")
        width = max(len(n) for n in cat["presets"])
        for name, p in cat["presets"].items():
            opts = "".join(f"?{k}={v}" if i == 0 else f"&{k}={v}" for i, (k, v) in enumerate(p["options"].items()))
            con.print(f"  {name:<{width}}  {p['family']}:{p['model']}{opts}", highlight=False)


@app.command()
def rerankers(as_json: bool = typer.Option(False, "--json", help="Print the catalogue as JSON.")):
    """Reranker families with their options and defaults, and presets with their hub ids.

    \b
    Example: rankify run -d dl19 -r run:bm25 --reranker 'cross-encoder:/models/minilm?batch_size=64'
    """
    _list_stages("reranker", as_json)


@app.command()
def retrievers(as_json: bool = typer.Option(False, "--json", help="Print the catalogue as JSON.")):
    """First-stage retrievers with their options and defaults.

    \b
    Example: rankify run -d scifact -r 'bm25?k1=1.2&b=0.75'
    """
    _list_stages("retriever", as_json)


@app.command()
def leaderboard(
    output: Path = typer.Option(Path("results"), "--output", "-o", help="Results folder holding leaderboard.csv."),
    csv_path: Optional[str] = typer.Option(None, "--csv", help="Export as CSV to a file ('-' for stdout)."),
    markdown: bool = typer.Option(False, "--markdown", help="Print a markdown table."),
    as_json: bool = typer.Option(False, "--json", help="Print rows as JSON."),
    dataset: List[str] = typer.Option([], "--dataset", "-d", help="Only these datasets."),
    metric: Optional[str] = typer.Option(None, "--metric", help="Sort by this measure (descending); the measure of --pivot and --plot (default nDCG@10)."),
    pivot: bool = typer.Option(False, "--pivot", help="Pipelines x datasets with an average column, as BEIR tables are printed."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG: the measure vs seconds per query, one point per pipeline."),
    html: Optional[Path] = typer.Option(None, "--html", help="Write one self-contained HTML page: sortable pivot, cost columns, significance marks, quality-vs-cost plot."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="--html: mark pipelines significantly better/worse than this one (paired per-query tests, Holm-corrected)."),
    alpha: float = typer.Option(0.05, "--alpha", help="--html: significance level."),
):
    """Show results/leaderboard.csv as a table, or export it.

    \b
    Examples:
      rankify leaderboard --pivot
      rankify leaderboard --html leaderboard.html --baseline run:bm25
    """
    from .errors import InputError
    from .formats import atomic_write
    from .results import columns, read_leaderboard

    path = output / "leaderboard.csv"
    if not path.exists():
        raise InputError("no leaderboard yet; run `rankify run` first", path)
    rows = read_leaderboard(path)
    if dataset:
        rows = [r for r in rows if r["dataset"] in dataset]
    if metric:
        from .errors import ConfigError

        if rows and metric not in rows[0]:
            raise ConfigError(f"no column '{metric}' in {path}")
        rows.sort(key=lambda r: -float(r.get(metric) or "nan") if r.get(metric) else float("inf"))
    cols = columns(rows) if rows else []
    if html is not None:
        from .errors import ConfigError
        from .leaderboard_html import render

        if not 0 < alpha < 1:
            raise ConfigError(f"--alpha must be in (0, 1), got {alpha}")
        atomic_write(html, render(rows, output, metric or "nDCG@10", baseline, alpha))
        _console(stderr=True).print(f"wrote {html}")
        return
    if plot is not None:
        from .leaderboard import plot_quality_cost

        plot_quality_cost(rows, metric or "nDCG@10", plot)
        _console(stderr=True).print(f"wrote {plot}")
        return
    if pivot:
        from .leaderboard import pivot_rows

        rows, cols = pivot_rows(rows, metric or "nDCG@10")
    if csv_path:
        import csv
        import io

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        if csv_path == "-":
            sys.stdout.write(buf.getvalue())
        else:
            atomic_write(csv_path, buf.getvalue())
        return
    if as_json:
        from .leaderboard import typed_row

        print(json.dumps([typed_row(r) for r in rows]))
        return
    short = [c for c in cols if c not in ("config_hash", "rankify_version", "git_commit", "date", "params", "stage_s")]
    if markdown:
        print("| " + " | ".join(short) + " |")
        print("|" + "|".join("---" for _ in short) + "|")
        for r in rows:
            print("| " + " | ".join(str(r.get(c, "")) for c in short) + " |")
        return
    from rich.table import Table

    table = Table(title=str(path) + (f"  ({metric or 'nDCG@10'})" if pivot else ""), title_justify="left")
    for c in short:
        table.add_column(c)
    for r in rows:
        table.add_row(*[str(r.get(c, "")) for c in short])
    _console().print(table)


def _suite_context(data_dir, cache_dir, no_cache):
    from .cache import Store
    from .datasets import cache_root

    cache = None if no_cache else Path(cache_dir or cache_root())
    return (str(cache) if cache else None), (Store(cache) if cache else None)


def _run_suite(suite_file, output, force, only, data_dir, cache_dir, no_cache, quiet, queries=None, query_ids=None,
               allow_unset=False):
    from .bench import prepare_suite, run_suite
    from .pipeline import QuerySubset
    from .suites import load_suite

    suite = load_suite(suite_file)
    check_output(output)
    prepared = prepare_suite(suite, data_dir, only, QuerySubset.from_options(queries, query_ids), allow_unset)
    cache, store = _suite_context(data_dir, cache_dir, no_cache)
    show = not quiet and sys.stderr.isatty()
    err = _console(stderr=True)

    def done(o):
        if not quiet:
            what = {"ran": f"ran in {o.seconds:.1f}s", "cached": "reused (same config hash)", "skipped": f"skipped: {o.reason}"}
            err.print(f"[dim]{o.condition.name}: {what[o.status]}[/dim]")

    with _progress_factory(show) as progress:
        outcomes = run_suite(prepared, output, force=force, cache_dir=cache, store=store, progress=progress,
                             on_done=done)
    return suite, outcomes


SUITE_OPTIONS = dict(
    output=typer.Option(Path("results"), "--output", "-o", help="Results folder."),
    force=typer.Option(False, "--force", help="Recompute conditions even when a result with the same config hash exists."),
    only=typer.Option([], "--only", help="Run only these condition names."),
    data_dir=typer.Option(None, "--data-dir"),
    cache_dir=typer.Option(None, "--cache-dir"),
    no_cache=typer.Option(False, "--no-cache"),
    quiet=typer.Option(False, "--quiet", "-q"),
    queries=typer.Option(None, "--queries", help=QUERIES_HELP),
    query_ids=typer.Option(None, "--query-ids", help=QUERY_IDS_HELP),
    allow_unset=typer.Option(False, "--allow-unset", help="Skip conditions whose ${VAR} is unset (default: an error, unless the condition says optional = true)."),
)


@app.command()
def bench(
    suite_file: Path = typer.Argument(..., help="A suite TOML file, e.g. benchmarks/beir.toml."),
    output: Path = SUITE_OPTIONS["output"], force: bool = SUITE_OPTIONS["force"],
    only: List[str] = SUITE_OPTIONS["only"], data_dir: Optional[str] = SUITE_OPTIONS["data_dir"],
    cache_dir: Optional[Path] = SUITE_OPTIONS["cache_dir"], no_cache: bool = SUITE_OPTIONS["no_cache"],
    quiet: bool = SUITE_OPTIONS["quiet"],
    queries: Optional[int] = SUITE_OPTIONS["queries"], query_ids: Optional[str] = SUITE_OPTIONS["query_ids"],
    allow_unset: bool = SUITE_OPTIONS["allow_unset"],
    as_json: bool = typer.Option(False, "--json"),
):
    """Run a grid of datasets x pipelines; finished conditions are reused unless --force.

    \b
    Example: rankify bench benchmarks/trec-dl.toml --only dl19-bm25 --queries 10
    """
    suite, outcomes = _run_suite(suite_file, output, force, only, data_dir, cache_dir, no_cache, quiet or as_json,
                                 queries, query_ids, allow_unset)
    rows = [{"condition": o.condition.name, "dataset": o.condition.dataset, "status": o.status, "reason": o.reason,
             "pipeline": o.doc.get("pipeline"), "metrics": o.metrics, "seconds": round(o.seconds, 3)} for o in outcomes]
    if as_json:
        print(json.dumps(rows))
        return
    from rich.table import Table

    measures = list(dict.fromkeys(m for o in outcomes for m in o.condition.measures))
    table = Table(title=f"{suite.name} ({suite.path.name})", title_justify="left")
    for col in ["condition", "dataset", "status", *measures, "seconds"]:
        table.add_column(col)
    for o in outcomes:
        table.add_row(o.condition.name, o.condition.dataset, o.status if o.status != "skipped" else f"skipped: {o.reason}",
                      *[_fmt(o.metrics[m]) if m in o.metrics else "-" for m in measures], f"{o.seconds:.1f}")
    _console().print(table)


@app.command()
def regress(
    suite_file: Path = typer.Argument(..., help="A suite TOML file with expected values, e.g. benchmarks/ci.toml."),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="A results folder of a previous run: compare per query (paired tests)."),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="Significance level (default: the suite's, else 0.05)."),
    junit_path: Optional[Path] = typer.Option(None, "--junit", help="Write a JUnit XML report (default: OUTPUT/regress.junit.xml)."),
    markdown_path: Optional[Path] = typer.Option(None, "--markdown", help="Write a markdown summary (default: OUTPUT/regress.md; also appended to $GITHUB_STEP_SUMMARY)."),
    output: Path = SUITE_OPTIONS["output"], force: bool = SUITE_OPTIONS["force"],
    only: List[str] = SUITE_OPTIONS["only"], data_dir: Optional[str] = SUITE_OPTIONS["data_dir"],
    cache_dir: Optional[Path] = SUITE_OPTIONS["cache_dir"], no_cache: bool = SUITE_OPTIONS["no_cache"],
    quiet: bool = SUITE_OPTIONS["quiet"],
    queries: Optional[int] = SUITE_OPTIONS["queries"], query_ids: Optional[str] = SUITE_OPTIONS["query_ids"],
    allow_unset: bool = SUITE_OPTIONS["allow_unset"],
):
    """The CI gate: exit 0 when nothing regressed, 1 on a significant regression, 2 on usage/data errors.

    \b
    Example: MINILM_PATH=/models/all-MiniLM-L6-v2 rankify regress benchmarks/ci.toml --baseline last-results/
    """
    from .errors import ConfigError
    from .formats import atomic_write
    from .regress import grade_all, junit, markdown

    if baseline is not None and not baseline.is_dir():
        raise ConfigError(f"--baseline {baseline} is not a folder")
    suite, outcomes = _run_suite(suite_file, output, force, only, data_dir, cache_dir, no_cache, quiet, queries,
                                 query_ids, allow_unset)
    a = alpha if alpha is not None else suite.alpha
    if not 0 < a < 1:
        raise ConfigError(f"--alpha must be in (0, 1), got {a}")
    grades = grade_all(outcomes, a, baseline)
    md = markdown(grades, suite.name, a)
    atomic_write(markdown_path or output / "regress.md", md)
    atomic_write(junit_path or output / "regress.junit.xml", junit(grades, suite.name))
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(os.environ["GITHUB_STEP_SUMMARY"], "a", encoding="utf-8") as f:
            f.write(md)
    print(md)
    if any(g.grade == "FAIL" for g in grades):
        raise typer.Exit(1)


@app.command("inspect")
def inspect_(
    dataset: str = typer.Option("scifact", "--dataset", "-d", help="Catalog name or a dataset folder."),
    retriever: Optional[str] = typer.Option(None, "--retriever", "-r", help="First stage, as for `rankify run`."),
    reranker: str = typer.Option(..., "--reranker", help="The reranker spec whose model inputs to show."),
    query: Optional[str] = typer.Option(None, "--query", help="Query id (default: the first judged query)."),
    depth: int = typer.Option(1000, "--depth", help="Candidates the first stage returns."),
    top_k: int = typer.Option(100, "--top-k", "-k", help="Candidates the reranker reorders."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir"),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir"),
    backend: Optional[str] = typer.Option(None, "--backend"),
    base_url: Optional[str] = typer.Option(None, "--base-url"),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env"),
    as_json: bool = typer.Option(False, "--json", help='{"inputs": [{"doc_ids", "text", "token_ids"}]}'),
):
    """Print exactly what the reranker's model receives for one query (texts, token ids, truncation), without running it."""
    from . import inspect_inputs
    from .datasets import cache_root, resolve
    from .errors import ConfigError
    from .pipeline import Pipeline, _fill_text, sort_candidates
    from .types import Candidate, StageContext

    ds = resolve(dataset, data_dir)
    if retriever is None:
        retriever = "bm25" if ds.has_corpus() or "bm25" not in ds.run_files() else "run:bm25"
    pipe = Pipeline(retriever, [reranker], depth=depth, top_k=top_k,
                    reranker_defaults=backend_defaults(backend, base_url, api_key_env))
    judged = ds.qrels()
    queries = [q for q in ds.queries() if q.id in judged] or ds.queries()
    chosen = [q for q in queries if q.id == query] if query else queries[:1]
    if not chosen:
        raise ConfigError(f"no query '{query}' in dataset '{ds.name}'")
    ctx = StageContext(cache_dir=str(cache_dir or cache_root()), dataset=ds.name)
    run = pipe.retriever.retrieve(ds, chosen, depth, ctx)
    rr = pipe.rerankers[0]
    heads = {q: [Candidate(c.doc_id, c.score, c.text) for c in sort_candidates(c)[:top_k]] for q, c in run.items()}
    _fill_text(ds, heads, rr.spec, titles=bool(getattr(rr, "wants_titles", False)))
    doc = inspect_inputs.inspect_inputs(rr, chosen[0], heads.get(chosen[0].id, []), ds.name)
    if as_json:
        print(json.dumps(doc, ensure_ascii=False))
        return
    print(f"query {doc['query']['id']}: {doc['query']['text']}")
    for n, item in enumerate(doc["inputs"], 1):
        head = ", ".join(f"{k}={item[k]}" for k in item if k not in ("doc_ids", "text", "token_ids", "messages"))
        ids = item.get("token_ids")
        print(f"--- input {n}: {len(item['doc_ids'])} document(s) {' '.join(item['doc_ids'][:20])}"
              f"{' ...' if len(item['doc_ids']) > 20 else ''}{'; ' + head if head else ''}; "
              f"{len(ids) if ids is not None else 'unknown'} tokens")
        if item.get("messages") and item.get("text") is None:
            for m in item["messages"]:
                print(f"[{m['role']}] {m['content']}")
        else:
            print(item["text"])
        if ids is not None:
            print(f"token ids: {ids}")
    if doc["stats"]:
        print("truncation: " + ", ".join(f"{k}={v}" for k, v in sorted(doc["stats"].items())))


cache_app = typer.Typer(help="Inspect or clear the cache (indexes, embeddings, runs, scores, LLM calls).",
                        no_args_is_help=True, rich_markup_mode=None, context_settings=CONTEXT)
app.add_typer(cache_app, name="cache")


def _parse_age(text: str) -> float:
    import re

    from .errors import ConfigError

    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw])", text.strip())
    if not m:
        raise ConfigError(f"--older-than takes a number and a unit s/m/h/d/w, e.g. 7d or 12h; got '{text}'")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]


@cache_app.command("info")
def cache_info(cache_dir: Optional[Path] = typer.Option(None, "--cache-dir"), as_json: bool = typer.Option(False, "--json")):
    """Where the cache is, what it holds and how big it is.

    \b
    Example: rankify cache info --cache-dir ~/.cache/rankify-cli
    """
    from .cachedir import describe

    info = describe(cache_dir)
    if as_json:
        print(json.dumps(info))
        return
    con = _console()
    con.print(f"cache: {info['path']}  ({info['total_mb']:.1f} MB)")
    for name, part in info["parts"].items():
        con.print(f"  {name:10s} {part['entries']:>8} entries {part['mb']:>10.1f} MB")
    for ns, n in info["score_namespaces"].items():
        con.print(f"  store/{ns}: {n['entries']} entries")


@cache_app.command("clear")
def cache_clear(
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir"),
    older_than: Optional[str] = typer.Option(None, "--older-than", help="Only entries older than this, e.g. 7d, 12h."),
    include_data: bool = typer.Option(False, "--include-data", help="Also remove downloaded datasets."),
):
    """Remove cached work (everything, or what is older than --older-than).

    \b
    Example: rankify cache clear --older-than 30d
    """
    from .cachedir import clear

    removed = clear(cache_dir, _parse_age(older_than) if older_than else None, include_data)
    _console().print(f"removed {removed['files']} files/folders and {removed['scores']} stored scores/calls")


def _join_multi_values(argv: list[str]) -> list[str]:
    """Let `--metrics nDCG@10 R@100 "AP(rel=2)"` and `--reranker A B` take several values, as
    users type them (the commands taking --reranker have no positional argument to confuse)."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        out.append(arg)
        i += 1
        if arg in REPEATED_OPTIONS:
            if i < len(argv):
                out.append(argv[i])
                i += 1
            while i < len(argv) and not argv[i].startswith("-"):
                out += [arg, argv[i]]
                i += 1
            continue
        if arg in MULTI_VALUE_OPTIONS:
            values = []
            while i < len(argv) and not argv[i].startswith("-") and (not values or _looks_like_measure(argv[i])):
                values.append(argv[i])
                i += 1
            if values:
                out.append(",".join(values))
    return out


_MEASURE = None


def _looks_like_measure(token: str) -> bool:
    global _MEASURE
    if _MEASURE is None:
        import re

        _MEASURE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\([^)]*\))?(@[0-9.]+)?$")
    return bool(_MEASURE.match(token)) and not os.path.exists(token)


def _click_classes(name: str) -> tuple[type, ...]:
    """An exception class of typer's own click (typer >= 0.20 vendors one) and of the click
    package (older typer uses it): `isinstance` must match whichever raised."""
    found = []
    for module in ("typer._click.exceptions", "click.exceptions", "typer.exceptions"):
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if isinstance(cls, type) and cls not in found:
            found.append(cls)
    return tuple(found)


def offline_environment() -> None:
    """RANKIFY_OFFLINE=1 puts the hub libraries offline too: a missing model is one instant
    line, not a minute of retries."""
    if os.environ.get("RANKIFY_OFFLINE", "").lower() in ("1", "true", "yes"):
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
            os.environ.setdefault(name, "1")


def _interrupted() -> None:
    kept = sys.modules["rankify_cli.cache"].WRITTEN["entries"] if "rankify_cli.cache" in sys.modules else 0
    print(f"interrupted: {kept} finished scores/calls are kept in the cache; the same command resumes"
          if kept else "interrupted: nothing was finished yet", file=sys.stderr)
    sys.exit(130)


def main() -> None:
    from .errors import RankifyError

    offline_environment()
    argv = _join_multi_values(sys.argv[1:])
    try:
        code = app(args=argv, prog_name="rankify", standalone_mode=False)
        if code == 130:  # typer turns Ctrl-C into Exit(130), which comes back as a return value
            _interrupted()
        if isinstance(code, int) and code:  # typer.Exit(n) comes back as a return value here
            sys.exit(code)
    except RankifyError as e:
        print(f"error: {e.render()}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        _interrupted()
    except SystemExit:
        raise
    except Exception as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # `rankify`, `rankify cache`: help, not an error
            print(e.format_message())
            sys.exit(0)
        if isinstance(e, _click_classes("Exit")):
            if isinstance(e.__cause__, KeyboardInterrupt):  # typer turns Ctrl-C into Exit(130)
                _interrupted()
            sys.exit(e.exit_code)
        if isinstance(e, _click_classes("ClickException")):
            e.show()  # the usage line, a hint and the message, as click prints them
            sys.exit(getattr(e, "exit_code", 2) or 2)
        if isinstance(e, _click_classes("Abort")):
            print("aborted", file=sys.stderr)
            sys.exit(130)
        if os.environ.get("RANKIFY_DEBUG"):
            raise
        print(f"internal error: {type(e).__name__}: {e} (set RANKIFY_DEBUG=1 for a traceback)", file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    main()
