"""Backends: where a reranker family's model runs.

`hf` (local transformers), `vllm` (in-process vllm.LLM) and `openai` (any OpenAI-compatible
server over HTTP). Families ask `make_backend` for one by name and call its operations
(backends/base.py); they never name a backend class. Heavy modules load only when a backend
of that kind is made.
"""

from __future__ import annotations

import importlib

from rankify_cli.errors import ConfigError

from .base import Backend, ChatRequest, ChatResponse, Pair  # noqa: F401

BACKENDS = {"hf": "hf:HF", "vllm": "vllm:VLLM", "openai": "openai:OpenAI"}
HTTP_BACKENDS = ("openai",)


def check_kind(kind: str | None) -> str:
    kind = (kind or "hf").lower()
    if kind not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)} (got '{kind}')")
    return kind


def make_backend(kind: str | None, model: str, **options) -> Backend:
    """A backend of that kind for `model`; options it does not take are ignored."""
    kind = check_kind(kind)
    if not model:
        raise ConfigError("an LLM reranker needs a model: listwise:MODEL (a hub id, a folder, or the served model name)"
                          if options.get("family") in ("listwise", "setwise", "groupwise")
                          else f"reranker '{options.get('family')}' needs a model: --reranker {options.get('family')}:MODEL")
    module, _, cls = BACKENDS[kind].partition(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)(model, **options)
