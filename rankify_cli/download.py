"""The one download layer: every file rankify fetches is declared in catalog.toml (url, size,
checksum) and comes through `fetch`.

- resumable: bytes land in a `.NAME.part` file beside the target; a retry or a later run asks
  the server for the rest (HTTP Range) instead of starting again;
- verified: size and md5/sha256 are checked before the file is used; a mismatch deletes the
  partial file, so nothing unverified stays in the cache;
- atomic: the target appears by rename, complete, or not at all;
- offline-safe: with RANKIFY_OFFLINE=1 (or HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) nothing is tried;
- each failure is one line naming the URL and the file to provide instead.

RANKIFY_DOWNLOAD_BASE_URL fetches `https://HOST/PATH` from `BASE/HOST/PATH` instead: a mirror,
or a loopback server in tests. Hugging Face datasets (BRIGHT) go through `datasets`, which
honours HF_ENDPOINT and verifies what it serves; RANKIFY_BRIGHT_REPO names another copy.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from .catalog import Download, Entry
from .errors import ConfigError

TIMEOUT_S = 30
ATTEMPTS = 3
CHUNK = 1 << 16
BASE_URL_ENV = "RANKIFY_DOWNLOAD_BASE_URL"
_RETRYABLE_HTTP = {408, 425, 429, 500, 502, 503, 504}


class DownloadError(ConfigError):
    """A download that failed or did not verify; `partial_kept` says whether a rerun resumes."""

    def __init__(self, message: str, partial_kept: bool = False):
        self.partial_kept = partial_kept
        super().__init__(message)


class _Short(OSError):
    """The server closed the connection before the whole file arrived."""


def is_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes")
               for v in ("RANKIFY_OFFLINE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def source_url(url: str) -> str:
    base = os.environ.get(BASE_URL_ENV)
    if not base:
        return url
    u = urllib.parse.urlsplit(url)
    return f"{base.rstrip('/')}/{u.netloc}{u.path}"


def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _progress(label: str, total: int) -> tuple[Callable[[int], None], Callable[[], None]]:
    if not sys.stderr.isatty():
        print(f"downloading {label} ({total / 1e6:.1f} MB)", file=sys.stderr)
        return (lambda n: None), (lambda: None)
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   console=Console(stderr=True), transient=True)
    task = bar.add_task(label, total=total)
    bar.start()
    return (lambda n: bar.update(task, advance=n)), bar.stop


def _transfer(url: str, part: Path, size: int, label: str) -> None:
    have = part.stat().st_size if part.is_file() else 0
    if have > size:
        os.truncate(part, 0)  # truncate, not unlink: the lock is held on this file
        have = 0
    if have == size:
        return
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(req, timeout=TIMEOUT_S) as r:
        if have and r.status != 206:  # the server ignored the range: start over
            have = 0
        advance, stop = _progress(label, size)
        advance(have)
        try:
            with open(part, "ab" if have else "wb") as f:
                while True:
                    try:
                        block = r.read(CHUNK)
                    except http.client.IncompleteRead as e:
                        f.write(e.partial)
                        raise _Short("connection closed early") from None
                    if not block:
                        break
                    f.write(block)
                    advance(len(block))
        finally:
            stop()
    got = part.stat().st_size
    if got < size:
        raise _Short(f"connection closed after {got} of {size} bytes")


def fetch(d: Download, dest: Path, offline_hint: str) -> Path:
    """`dest`, downloaded and verified if it is not there yet. `offline_hint` says what a user
    without network provides instead (it ends every error line)."""
    if dest.is_file():
        return dest
    if is_offline():
        raise DownloadError(f"offline (RANKIFY_OFFLINE=1): not downloading {d.url}; {offline_hint}")
    url = source_url(d.url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.parent / f".{dest.name}.part"
    with _exclusive(part, dest) as mine:
        if mine:
            _download(d, url, part, dest, offline_hint)
    return dest


@contextmanager
def _locked(path: Path):
    """An exclusive lock on `path` as it is now: a file renamed or unlinked while we waited for
    its lock is locked again under its name (the one who held it has moved on)."""
    import fcntl

    while True:
        path.parent.mkdir(parents=True, exist_ok=True)  # again: a staging folder may have moved away
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                yield
                return
        finally:
            os.close(fd)


@contextmanager
def _exclusive(part: Path, dest: Path):
    """One process at a time appends to `part` (another rankify fetching the same file waits,
    then finds it done). Yields False when `dest` appeared meanwhile."""
    if dest.is_file():
        yield False
        return
    with _locked(part):
        if dest.is_file():  # finished while we created our (empty) part: drop it
            part.unlink(missing_ok=True)
            yield False
        else:
            yield True


def _download(d: Download, url: str, part: Path, dest: Path, offline_hint: str) -> None:
    for attempt in range(ATTEMPTS):
        try:
            _transfer(url, part, d.size, f"{dest.name} <- {d.url}")
            break
        except urllib.error.HTTPError as e:
            if e.code == 416:  # our partial file is not a prefix the server knows: start over
                os.truncate(part, 0)
            elif e.code not in _RETRYABLE_HTTP or attempt == ATTEMPTS - 1:
                raise DownloadError(f"download failed: {d.url}: HTTP {e.code} {e.reason}; {offline_hint}",
                                    _keep_or_drop(part)) from None
        except (OSError, http.client.HTTPException) as e:
            if attempt == ATTEMPTS - 1:
                reason = getattr(e, "reason", None) or e
                kept = _keep_or_drop(part)
                note = f" ({part.stat().st_size} bytes kept, a rerun resumes)" if kept else ""
                raise DownloadError(f"download failed: {d.url}: {reason}{note}; {offline_hint}", kept) from None
        time.sleep(0.2 * 2**attempt)
    _verify(d, part, offline_hint)
    os.replace(part, dest)


def _keep_or_drop(part: Path) -> bool:
    """Bytes received are kept for a resume; an empty partial file is not."""
    if part.is_file() and part.stat().st_size > 0:
        return True
    part.unlink(missing_ok=True)
    return False


def _verify(d: Download, part: Path, offline_hint: str) -> None:
    got = part.stat().st_size
    problem = None
    if got != d.size:
        problem = f"size {got} bytes, expected {d.size}"
    else:
        for algo in ("sha256", "md5"):
            want = getattr(d, algo)
            if want and (have := _digest(part, algo)) != want:
                problem = f"{algo} {have}, expected {want}"
                break
    if problem:
        part.unlink(missing_ok=True)
        raise DownloadError(f"checksum mismatch: {d.url}: {problem} (the download was deleted); {offline_hint}")


@contextmanager
def _one_set_at_a_time(target: Path):
    """One process at a time fills a set's folder; the others wait, then find it complete. (Without
    it, with three processes, one moving or removing the staging folder pulled files from another.)
    The lock file goes away with its last holder."""
    lock = target.parent / f".{target.name}.lock"
    with _locked(lock):
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)


def fetch_set(files: dict[str, Download], target: Path, offline_hint: str) -> Path:
    """Several files that only make sense together (a dataset's queries and qrels): they are
    fetched into a staging folder and appear in `target` together or not at all."""
    with _one_set_at_a_time(target):
        return _fetch_set(files, target, offline_hint)


def _fetch_set(files: dict[str, Download], target: Path, offline_hint: str) -> Path:
    staging = target.parent / f".incoming-{target.name}"
    try:
        for d in files.values():
            if not (target / d.name).is_file():  # another process may have finished the set meanwhile
                fetch(d, staging / d.name, offline_hint)
    except DownloadError as e:
        if not e.partial_kept:  # nothing unverified stays; a network failure keeps its bytes to resume
            shutil.rmtree(staging, ignore_errors=True)
        raise
    _move_into(staging, target)
    return target


def _move_into(staging: Path, target: Path) -> None:
    if not target.exists():
        try:
            os.replace(staging, target)
            return
        except OSError:
            pass  # another process created it first: add ours file by file
    target.mkdir(parents=True, exist_ok=True)
    for p in (staging.iterdir() if staging.is_dir() else ()):
        if p.is_file() and not p.name.startswith("."):
            os.replace(p, target / p.name)
    shutil.rmtree(staging, ignore_errors=True)


BEIR_FILES = ("corpus.jsonl.gz", "queries.jsonl", "qrels/test.tsv")


def fetch_beir(entry: Entry, target: Path, offline_hint: str) -> Path:
    """A BEIR zip, verified, unpacked to corpus.jsonl.gz, queries.jsonl and qrels/test.tsv."""
    with _one_set_at_a_time(target):
        if all((target / f).is_file() for f in BEIR_FILES):  # another process finished it meanwhile
            return target
        return _fetch_beir(entry, target, offline_hint)


def _fetch_beir(entry: Entry, target: Path, offline_hint: str) -> Path:
    staging = target.parent / f".incoming-{target.name}"
    try:
        zpath = fetch(entry.archive, staging / entry.archive.name, offline_hint)
    except DownloadError as e:
        if not e.partial_kept:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        with zipfile.ZipFile(zpath) as z:
            for member in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
                data = z.read(f"{entry.name}/{member}")
                out = staging / (member + ".gz" if member == "corpus.jsonl" else member)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(gzip.compress(data, mtime=0) if out.suffix == ".gz" else data)
    except (zipfile.BadZipFile, KeyError) as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise DownloadError(f"{entry.archive.url} is not the BEIR zip expected ({e}); {offline_hint}") from None
    zpath.unlink()
    _move_into(staging, target)
    return target


# -- BRIGHT through Hugging Face `datasets` -----------------------------------------------------
def bright_repo(entry: Entry) -> str:
    return os.environ.get("RANKIFY_BRIGHT_REPO") or entry.bright_repo or "xlangai/BRIGHT"


def _hub_rows(entry: Entry, config: str, offline_hint: str):
    repo = bright_repo(entry)
    if is_offline():
        raise DownloadError(f"offline (RANKIFY_OFFLINE=1): not loading {repo} '{config}' split "
                            f"'{entry.bright_task}' from the hub; {offline_hint}")
    try:
        from datasets import load_dataset
    except ImportError:
        from .errors import DependencyError

        raise DependencyError("BRIGHT from the hub needs the `datasets` package: pip install 'rankify-cli[hub]'") from None
    print(f"loading {repo} '{config}' split '{entry.bright_task}' through datasets", file=sys.stderr)
    try:
        return load_dataset(repo, config, split=entry.bright_task)
    except Exception as e:  # the hub's many error types: one line naming what failed
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DownloadError(f"download failed: {repo} '{config}' split '{entry.bright_task}': {msg}; {offline_hint}") from None


def _write_gz_jsonl(path: Path, rows) -> None:
    from .formats import atomic_write

    atomic_write(path, gzip.compress("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode(), mtime=0))


def fetch_bright_examples(entry: Entry, target: Path, offline_hint: str, config: str = "examples",
                          name: str = "examples.jsonl.gz") -> Path:
    """BRIGHT queries with gold ids (config `examples`, or `gpt4_reason` for GPT-4 reasoning
    queries); for the default config also qrels.txt from `gold_ids` as Anserini writes them."""
    rows = [dict(r) for r in _hub_rows(entry, config, offline_hint)]
    target.mkdir(parents=True, exist_ok=True)
    _write_gz_jsonl(target / name, rows)
    if config == "examples" and not (target / "qrels.txt").is_file():
        from .formats import atomic_write

        atomic_write(target / "qrels.txt", "".join(f"{r['id']}\t0\t{g}\t1\n" for r in rows for g in r["gold_ids"]))
    return target / name


def fetch_bright_documents(entry: Entry, dest: Path, offline_hint: str, long: bool = False) -> Path:
    """A BRIGHT task's documents (`documents`, or `long_documents`) as a BEIR corpus.jsonl.gz."""
    rows = _hub_rows(entry, "long_documents" if long else "documents", offline_hint)
    _write_gz_jsonl(dest, ({"_id": str(r["id"]), "title": "", "text": r["content"]} for r in rows))
    return dest
