"""What identifies a model in config hashes and cache keys, for every family that loads one.

A local folder is identified by its content (file names and bytes, big weight files sampled),
so the same weights give the same key wherever they lie and a changed config gives a new one;
a hub id by the commit of its cached snapshot when the local cache has one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

# Files above this are hashed by size plus three 4 MiB slices (start, middle, end): reading
# several GB of shards on every run would cost more than the reranking of a small set.
SAMPLE_ABOVE = 512 << 20
_SLICE = 4 << 20
_SKIPPED_SUFFIXES = (".py", ".pyc", ".md")
_memo: dict[tuple, str] = {}


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (sampled above SAMPLE_ABOVE); memoised per (path, size, mtime)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key in _memo:
        return _memo[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if st.st_size <= SAMPLE_ABOVE:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        else:
            h.update(str(st.st_size).encode())
            for off in (0, st.st_size // 2, max(st.st_size - _SLICE, 0)):
                f.seek(off)
                h.update(f.read(_SLICE))
    _memo[key] = h.hexdigest()
    return _memo[key]


def folder_fingerprint(folder: str | Path) -> str:
    """Content hash of a model folder (config, tokenizer, weights), independent of where it
    lies and of mtimes; hidden files, caches, code and READMEs do not count."""
    root = Path(folder)
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()
                       and not any(part.startswith(".") or part == "__pycache__"
                                   for part in p.relative_to(root).parts)):
        if path.suffix in _SKIPPED_SUFFIXES:
            continue
        h.update(path.relative_to(root).as_posix().encode())
        h.update(file_digest(path).encode())
    return "dir:" + h.hexdigest()[:20]


def hub_fingerprint(model: str, revision: str | None) -> str:
    """The commit of the cached snapshot of a hub id when it can be found, else id@revision."""
    try:
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(model, "config.json", revision=revision)
        if isinstance(path, str):
            parts = Path(path).parts
            if "snapshots" in parts:
                return f"hub:{model}@{parts[parts.index('snapshots') + 1]}"
    except Exception:  # no huggingface_hub, odd cache layout: fall back to the id
        pass
    return f"hub:{model}@{revision or 'main'}"


def model_fingerprint(model: str, revision: str | None, folder: str | Path | None) -> str:
    return folder_fingerprint(folder) if folder else hub_fingerprint(model, revision)
