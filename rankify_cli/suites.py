"""Benchmark suite files (TOML): named conditions, each a dataset and a pipeline, with the
values it is expected to reach and a tolerance. Like Pyserini's 2CR, every condition is data.

    [suite]
    name = "ci"
    measures = ["nDCG@10"]          # default for conditions
    tolerance = 0.005               # default absolute tolerance
    include = ["other.toml"]        # optional: more conditions (cycles are an error)

    [[condition]]
    name = "scifact-bm25"
    dataset = "scifact"
    retriever = "bm25"
    rerankers = ["embedding:${MINILM_PATH}"]   # ${VAR} expands from the environment
    top_k = 100
    depth = 1000
    expected = { "nDCG@10" = 0.6789 }
    tolerance = { "nDCG@10" = 0.0005 }        # or one number
    source = "Pyserini 2CR beir.yaml"

A condition whose ${VAR} is unset, or whose model is not available locally, is skipped
with its reason, never failed or scored 0.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError

SUITE_KEYS = {"name", "description", "measures", "tolerance", "include", "alpha"}
CONDITION_KEYS = {"name", "dataset", "retriever", "rerankers", "top_k", "depth", "measures", "expected",
                  "tolerance", "source", "description", "backend", "base_url", "api_key_env", "optional"}
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass
class Condition:
    name: str
    dataset: str
    retriever: str
    rerankers: list[str]
    top_k: int
    depth: int
    measures: list[str]
    expected: dict[str, float]
    tolerance: dict[str, float]
    source: str = ""
    backend: dict = field(default_factory=dict)
    skip_reason: str | None = None
    origin: str = ""
    # `optional = true`: skipped when one of its ${VAR}s is unset (else that is an error)
    optional: bool = False
    missing_vars: list[str] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)  # expanded value -> ${VAR}, for ids


@dataclass
class Suite:
    name: str
    path: Path
    conditions: list[Condition]
    alpha: float = 0.05


def _expand(value: str, missing: list[str], aliases: dict[str, str] | None = None) -> str:
    def sub(m):
        v = os.environ.get(m.group(1))
        if v is None:
            missing.append(m.group(1))
            return m.group(0)
        if aliases is not None and v:
            aliases[v] = m.group(0)  # ids show ${VAR}, not this machine's path
        return v

    return _VAR.sub(sub, value)


def _check_keys(table: dict, allowed: set[str], where: str, path: Path) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise InputError(f"unknown key(s) {', '.join(unknown)} in {where}; allowed: {', '.join(sorted(allowed))}", path)


def _numbers(value, measures: list[str], what: str, where: str, path: Path) -> dict[str, float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {m: float(value) for m in measures}
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise InputError(f"{what} for '{k}' in {where} must be a number, got {v!r}", path)
            out[k] = float(v)
        return out
    raise InputError(f"{what} in {where} must be a number or a table of numbers", path)


def _text(table: dict, key: str, where: str, path: Path, default: str = "") -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        raise InputError(f'"{key}" in {where} must be a string, got {_kind(value)}', path)
    return value


def _texts(table: dict, key: str, where: str, path: Path, default: list) -> list[str]:
    """A list of strings; one string is a list of one."""
    value = table.get(key, default)
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(f'"{key}" in {where} must be a list of strings, got {_kind(value)}', path)
    return value


def _whole(table: dict, key: str, where: str, path: Path, default: int) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f'"{key}" in {where} must be a whole number >= 1, got {_kind(value)}', path)
    return value


def _kind(value) -> str:
    return f"{value!r} ({type(value).__name__})" if not isinstance(value, (dict, list)) else type(value).__name__


def load_suite(path: str | Path, _stack: tuple[Path, ...] = ()) -> Suite:
    from .evaluation import parse_measures

    p = Path(path).resolve()
    if p in _stack:
        chain = " -> ".join(x.name for x in (*_stack, p))
        raise InputError(f"suite includes itself (cycle: {chain})", p)
    if not p.is_file():
        raise InputError("suite file not found (expected a TOML suite, e.g. benchmarks/ci.toml)", p)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        line = getattr(e, "lineno", None)
        m = re.search(r"line (\d+)", str(e))
        raise InputError(f"invalid TOML: {e}", p, line or (int(m.group(1)) if m else None)) from None
    _check_keys(data, {"suite", "condition"}, "the file (top level)", p)
    head = data.get("suite", {})
    if not isinstance(head, dict):
        raise InputError(f"\"suite\" must be a table ([suite]), got {_kind(head)}", p)
    _check_keys(head, SUITE_KEYS, "[suite]", p)
    default_measures = _texts(head, "measures", "[suite]", p, ["nDCG@10"])
    default_tol = head.get("tolerance", 0.005)
    conditions: list[Condition] = []
    for inc in _texts(head, "include", "[suite]", p, []):
        target = (p.parent / inc).resolve()
        if not target.is_file():
            raise InputError(f"include '{inc}': suite file not found (looked for {target})", p)
        conditions += load_suite(target, (*_stack, p)).conditions
    seen = {c.name for c in conditions}
    raw_conditions = data.get("condition", [])
    if not isinstance(raw_conditions, list):
        raise InputError(f"\"condition\" must be an array of tables ([[condition]]), got {_kind(raw_conditions)}", p)
    for i, raw in enumerate(raw_conditions, 1):
        where = f"condition #{i}" + (f" '{raw.get('name')}'" if isinstance(raw, dict) and raw.get("name") else "")
        if not isinstance(raw, dict):
            raise InputError(f"{where} must be a table ([[condition]])", p)
        _check_keys(raw, CONDITION_KEYS, where, p)
        for key in ("name", "dataset", "retriever"):
            if not isinstance(raw.get(key), str) or not raw[key]:
                raise InputError(f'{where} needs "{key}" (a string)', p)
        if raw["name"] in seen:
            raise InputError(f"duplicate condition name '{raw['name']}'", p)
        seen.add(raw["name"])
        measures = _texts(raw, "measures", where, p, default_measures)
        parse_measures(measures)
        expected = _numbers(raw.get("expected", {}), measures, "expected", where, p)
        parse_measures(list(expected))
        tol = _numbers(raw.get("tolerance", default_tol), list(expected) or measures, "tolerance", where, p)
        missing: list[str] = []
        aliases: dict[str, str] = {}
        rerankers = _texts(raw, "rerankers", where, p, [])
        for key in ("source", "description", "backend", "base_url", "api_key_env"):
            _text(raw, key, where, p)
        cond = Condition(
            name=raw["name"], dataset=_expand(raw["dataset"], missing),
            retriever=_expand(raw["retriever"], missing, aliases),
            rerankers=[_expand(r, missing, aliases) for r in rerankers], top_k=_whole(raw, "top_k", where, p, 100),
            depth=_whole(raw, "depth", where, p, 1000), measures=list(dict.fromkeys([*measures, *expected])),
            expected=expected, tolerance=tol, source=raw.get("source", ""),
            backend={k: _expand(raw[k], missing) for k in ("backend", "base_url", "api_key_env") if k in raw},
            origin=str(p), aliases=aliases,
        )
        if not isinstance(raw.get("optional", False), bool):
            raise InputError(f"optional in {where} must be true or false", p)
        cond.optional = raw.get("optional", False)
        if missing:
            cond.missing_vars = sorted(set(missing))
            cond.skip_reason = f"environment variable(s) {', '.join(cond.missing_vars)} not set"
        conditions.append(cond)
    if not conditions:
        raise InputError("suite has no [[condition]]", p)
    alpha = head.get("alpha", 0.05)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise InputError(f"alpha in [suite] must be a number in (0, 1), got {_kind(alpha)}", p)
    if not isinstance(head.get("name", ""), str):
        raise InputError(f'"name" in [suite] must be a string, got {_kind(head["name"])}', p)
    return Suite(head.get("name", p.stem), p, conditions, alpha)
