"""Spec strings -> stage objects, from tables of names (never model-name substrings).

Grammar: `name[:argument][?key=value&key=value]` (values may contain commas), for example `bm25`, `bm25:rank-bm25`,
`bm25?b=1.0`, `run:bm25`, `cross-encoder:/models/minilm?batch_size=64`. A reranker preset
(`minilm-l6`) expands to a family, model and options. Third-party packages add names through
the entry-point groups `rankify_cli.retrievers` and `rankify_cli.rerankers`; each entry
point names a class taking (argument, **options).
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from importlib import metadata

from .errors import ConfigError

# name -> "module:Class"; imported only when used, so heavy backends stay unloaded.
RETRIEVERS: dict[str, str] = {
    "bm25": "rankify_cli.retrievers.bm25:BM25",
    "run": "rankify_cli.retrievers.pretrieved:PreRetrieved",
    "dense": "rankify_cli.retrievers.dense:Dense",
    "hybrid": "rankify_cli.retrievers.fusion:Hybrid",
}
RERANKERS: dict[str, str] = {
    "cross-encoder": "rankify_cli.rerankers.cross_encoder:CrossEncoder",
    "logit-pair": "rankify_cli.rerankers.logit_pair:LogitPair",
    "generative": "rankify_cli.rerankers.generative:Generative",
    "embedding": "rankify_cli.rerankers.embedding:Embedding",
    "e2rank": "rankify_cli.rerankers.embedding:E2Rank",
    "listwise": "rankify_cli.rerankers.listwise:Listwise",
    "setwise": "rankify_cli.rerankers.setwise:Setwise",
    "groupwise": "rankify_cli.rerankers.groupwise:Groupwise",
    "rerank-api": "rankify_cli.rerankers.rerank_api:RerankAPI",
    "late-interaction": "rankify_cli.rerankers.late_interaction:LateInteraction",
    "duot5": "rankify_cli.rerankers.duot5:DuoT5",
    "pairwise": "rankify_cli.rerankers.pairwise:Pairwise",
    "first": "rankify_cli.rerankers.first:First",
    "prism": "rankify_cli.rerankers.evidence:Prism",
}
# preset -> (family, model, options): short names for public checkpoints (a plain dict module).
from .rerankers.presets import PRESETS as _PRESETS  # noqa: E402

RERANKER_PRESETS: dict[str, tuple[str, str, dict]] = dict(_PRESETS)

# How the `argument` of a spec maps onto each constructor.
ARGUMENT_PARAM = {"bm25": "backend", "run": "name", "hybrid": "retrievers"}


@dataclass
class Spec:
    kind: str
    name: str
    argument: str | None = None
    options: dict = field(default_factory=dict)

    def __str__(self) -> str:
        s = self.name + (f":{self.argument}" if self.argument else "")
        if self.options:
            s += "?" + "&".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return s


def _coerce(value: str):
    low = value.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def parse_spec(kind: str, text: str) -> Spec:
    text = text.strip()
    if not text:
        raise ConfigError(f"empty {kind} spec")
    head, _, query = text.partition("?")
    name, _, argument = head.partition(":")
    options = {}
    # only '&' separates options: values (instructions, task strings) may hold commas
    for part in filter(None, query.split("&")):
        key, eq, value = part.partition("=")
        if not eq or not key:
            raise ConfigError(f"bad option '{part}' in {kind} spec '{text}' (expected key=value)")
        options[key.strip().replace("-", "_")] = _coerce(value.strip())
    return Spec(kind, name.strip().lower(), argument.strip() or None, options)


def _entry_points(group: str) -> dict[str, metadata.EntryPoint]:
    try:
        return {ep.name: ep for ep in metadata.entry_points(group=group)}
    except Exception:  # a broken third-party distribution must not break built-in names
        return {}


def known_names(kind: str) -> list[str]:
    table = RETRIEVERS if kind == "retriever" else RERANKERS
    names = set(table) | set(_entry_points(f"rankify_cli.{kind}s"))
    if kind == "reranker":
        names |= set(RERANKER_PRESETS)
    return sorted(names)


def _load_class(kind: str, name: str):
    table = RETRIEVERS if kind == "retriever" else RERANKERS
    if name in table:
        module, _, cls = table[name].partition(":")
        return getattr(importlib.import_module(module), cls)
    eps = _entry_points(f"rankify_cli.{kind}s")
    if name in eps:
        return eps[name].load()
    known = ", ".join(known_names(kind)) or "none installed yet"
    raise ConfigError(f"unknown {kind} '{name}'{did_you_mean(name, known_names(kind))}; known: {known} "
                      f"(`rankify {kind}s` lists them with their options)")


def did_you_mean(word: str, choices) -> str:
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def _expects(default) -> tuple[type, str] | None:
    """What an option with this default takes, for options whose default says it."""
    if isinstance(default, bool):
        return bool, "true or false"
    if isinstance(default, int):
        return int, "an integer"
    if isinstance(default, float):
        return float, "a number"
    return None


def _check_types(kind: str, name: str, options: dict, params) -> None:
    for key, value in options.items():
        p = params.get(key)
        if p is None or p.default is inspect.Parameter.empty or p.default is None:
            continue
        want = _expects(p.default)
        if want is None:
            continue
        cls, words = want
        ok = isinstance(value, bool) if cls is bool else (
            isinstance(value, (int, float)) and not isinstance(value, bool) and (cls is float or isinstance(value, int)))
        if not ok:
            raise ConfigError(f"option {key} of {kind} '{name}' expects {words} (default {p.default!r}), got {value!r}")


def options_of(kind: str, name: str) -> list[tuple[str, str]]:
    """(option, default) of a family's constructor, as a spec takes them."""
    params = inspect.signature(_load_class(kind, name).__init__).parameters
    skip = {"self", ARGUMENT_PARAM.get(name, "model")}
    out = []
    for p in params.values():
        if p.name in skip or p.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
            continue
        out.append((p.name, "(required)" if p.default is inspect.Parameter.empty else repr(p.default)))
    return out


def catalogue(kind: str) -> dict:
    """What `rankify rerankers` / `rankify retrievers` list: families with their options and
    defaults, and (rerankers) presets with the checkpoint and options they expand to."""
    table = RETRIEVERS if kind == "retriever" else RERANKERS
    families = {}
    for name in sorted(set(table) | set(_entry_points(f"rankify_cli.{kind}s"))):
        try:
            cls = _load_class(kind, name)
            # the class's own docstring, else its module's (an inherited one describes the base)
            doc = inspect.cleandoc(cls.__dict__.get("__doc__") or importlib.import_module(cls.__module__).__doc__ or "")
            families[name] = {"argument": ARGUMENT_PARAM.get(name, "model"), "options": dict(options_of(kind, name)),
                              "summary": doc.splitlines()[0] if doc else "", "source": "built-in" if name in table else "plugin"}
        except Exception as e:  # a broken plugin is listed with its error, never hides the others
            families[name] = {"argument": "", "options": {}, "summary": f"cannot load: {e}", "source": "plugin"}
    presets = {}
    if kind == "reranker":
        presets = {name: {"family": fam, "model": model, "options": opts}
                   for name, (fam, model, opts) in sorted(RERANKER_PRESETS.items())}
    return {"families": families, "presets": presets}


def build(kind: str, text: str, defaults: dict | None = None):
    """Build a retriever or reranker from its spec string, with a one-line error on misuse.

    `defaults` (e.g. the CLI's --backend/--base-url) fill options the spec leaves unset, for
    classes whose constructor takes them; others ignore them.
    """
    spec = parse_spec(kind, text)
    preset = None
    if kind == "reranker" and spec.name in RERANKER_PRESETS and spec.name not in RERANKERS:
        preset = spec.name
        family, model, preset_opts = RERANKER_PRESETS[spec.name]
        spec = Spec(kind, family, spec.argument or model, {**preset_opts, **spec.options})
    cls = _load_class(kind, spec.name)
    params = inspect.signature(cls.__init__).parameters
    # `name=` labels the stage where a person reads it; it changes no score, so it stays out
    # of the spec (and so of the config hash)
    label = spec.options.pop("name", None) if "name" not in params else None
    # where a model is served is not what it is: defaults stay out of the spec string (pipeline id)
    implicit = {k: v for k, v in (defaults or {}).items() if v is not None and k in params and k not in spec.options}
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [k for k in spec.options if k not in params and not accepts_any]
    if unknown:
        allowed = [p for p in params if p not in ("self", ARGUMENT_PARAM.get(spec.name, "model"))
                   and params[p].kind is not inspect.Parameter.VAR_KEYWORD]
        hint = did_you_mean(unknown[0], allowed)
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} for {kind} '{spec.name}'{hint}; "
                          f"accepted: {', '.join(allowed)}")
    _check_types(kind, spec.name, spec.options, params)
    kwargs = {**implicit, **spec.options}
    if spec.argument is not None:
        kwargs[ARGUMENT_PARAM.get(spec.name, "model")] = spec.argument
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad {kind} spec '{text}': {e}") from None
    obj.spec = str(spec)
    obj.display_name = str(label) if label is not None else None
    obj.preset = preset  # error messages suggest PRESET:/path, which keeps the preset's options
    return obj
