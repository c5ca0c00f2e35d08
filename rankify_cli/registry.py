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
    raise ConfigError(f"unknown {kind} '{name}'; known: {known}")


def build(kind: str, text: str, defaults: dict | None = None):
    """Build a retriever or reranker from its spec string, with a one-line error on misuse.

    `defaults` (e.g. the CLI's --backend/--base-url) fill options the spec leaves unset, for
    classes whose constructor takes them; others ignore them.
    """
    spec = parse_spec(kind, text)
    if kind == "reranker" and spec.name in RERANKER_PRESETS and spec.name not in RERANKERS:
        family, model, preset_opts = RERANKER_PRESETS[spec.name]
        spec = Spec(kind, family, spec.argument or model, {**preset_opts, **spec.options})
    cls = _load_class(kind, spec.name)
    params = inspect.signature(cls.__init__).parameters
    # where a model is served is not what it is: defaults stay out of the spec string (pipeline id)
    implicit = {k: v for k, v in (defaults or {}).items() if v is not None and k in params and k not in spec.options}
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [k for k in spec.options if k not in params and not accepts_any]
    if unknown:
        allowed = [p for p in params if p not in ("self", ARGUMENT_PARAM.get(spec.name, "model"))
                   and params[p].kind is not inspect.Parameter.VAR_KEYWORD]
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} for {kind} '{spec.name}'; accepted: {', '.join(allowed)}")
    kwargs = {**implicit, **spec.options}
    if spec.argument is not None:
        kwargs[ARGUMENT_PARAM.get(spec.name, "model")] = spec.argument
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad {kind} spec '{text}': {e}") from None
    obj.spec = str(spec)
    return obj
