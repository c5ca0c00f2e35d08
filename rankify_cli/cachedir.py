"""The cache folder as a whole: what `rankify cache info` and `rankify cache clear` see.

Layout: store.sqlite (reranker scores and LLM calls, see cache.py), bm25/ (indexes), runs/
(first-stage runs), any other folder a stage keeps there (e.g. embeddings), data/ (downloads).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from .cache import Store
from .datasets import cache_root


def _size(p: Path) -> int:
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def describe(cache_dir: Path | None) -> dict:
    root = Path(cache_dir or cache_root())
    parts = {}
    if root.is_dir():
        for child in sorted(root.iterdir()):
            if child.is_dir():
                parts[child.name] = {"entries": sum(1 for _ in child.iterdir()), "mb": _size(child) / 1e6}
    namespaces = Store(root).info() if (root / "store.sqlite").is_file() else {}
    total = _size(root) if root.is_dir() else 0
    return {"path": str(root), "total_mb": total / 1e6, "parts": parts, "score_namespaces": namespaces}


def clear(cache_dir: Path | None, older_than_s: float | None, include_data: bool) -> dict:
    root = Path(cache_dir or cache_root())
    removed = {"files": 0, "scores": 0}
    if not root.is_dir():
        return removed
    if (root / "store.sqlite").is_file():
        removed["scores"] = Store(root).clear(older_than_s)
    cutoff = time.time() - older_than_s if older_than_s is not None else None
    for part in root.iterdir():
        if not part.is_dir() or (part.name == "data" and not include_data):
            continue
        for entry in part.iterdir():
            if cutoff is None or entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
                removed["files"] += 1
    return removed
