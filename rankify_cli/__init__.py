"""rankify-cli: reproducible reranking benchmarks from the shell.

Kept import-light on purpose: `rankify --help` must not pull numpy, torch or transformers.
"""

__version__ = "0.1.0"


def load_reranker(spec: str, **options):
    """A reranker from a spec or preset, for library use:
    `load_reranker("minilm-l6").rerank("query", ["doc a", "doc b"])` -> Candidates, best first.
    Keyword options are spec options (`load_reranker("embedding:/models/minilm", batch_size=64)`)."""
    from .registry import build

    if options:
        spec += ("&" if "?" in spec else "?") + "&".join(f"{k}={v}" for k, v in options.items())
    return build("reranker", spec)


def load_retriever(spec: str):
    """A first-stage retriever from its spec (`bm25`, `dense:/models/e5`, ...)."""
    from .registry import build

    return build("retriever", spec)
