"""Datasets: resolve a name or folder to files, load them strictly, apply their rules.

Resolution of a catalog name: an explicit --data-dir, RANKIFY_DATA_DIR, the local cache,
then (online only) a download from the dataset's public home. A folder path is read as
BEIR (queries.jsonl), BRIGHT (examples.jsonl[.gz]) or TREC (queries.tsv + qrels.txt).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterator

from . import formats
from .catalog import CATALOG, Entry
from .errors import ConfigError, InputError
from .types import Document, Qrels, Query, Run


def cache_root() -> Path:
    return Path(os.environ.get("RANKIFY_CACHE_DIR") or Path.home() / ".cache" / "rankify-cli")


def is_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("RANKIFY_OFFLINE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _first(root: Path, *names: str) -> Path | None:
    for n in names:
        if (root / n).is_file():
            return root / n
    return None


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class MemoryCorpus:
    """A corpus held in memory, addressed by id; fingerprinted by its file's content."""

    def __init__(self, docs: list[Document], digest: str):
        self.docs = docs
        self.by_id = {d.id: d for d in docs}
        self._digest = digest

    def documents(self) -> Iterator[Document]:
        return iter(self.docs)

    def fingerprint(self) -> str:
        return self._digest

    def __len__(self) -> int:
        return len(self.docs)


@dataclass
class EvalRules:
    remove_self_hits: bool = False
    excluded: dict[str, set[str]] = field(default_factory=dict)


@dataclass
class Dataset:
    name: str
    root: Path
    layout: str
    origin: str
    entry: Entry | None = None

    # -- files -------------------------------------------------------------------------
    @property
    def queries_path(self) -> Path:
        if self.layout == "beir":
            return self.root / "queries.jsonl"
        if self.layout == "bright":
            return _first(self.root, "examples.jsonl.gz", "examples.jsonl") or self.root / "examples.jsonl.gz"
        return _first(self.root, "queries.tsv", "topics.tsv") or self.root / "queries.tsv"

    @property
    def qrels_path(self) -> Path:
        if self.layout == "beir":
            return self.root / "qrels" / "test.tsv"
        return self.root / "qrels.txt"

    @property
    def corpus_path(self) -> Path | None:
        # existence, not is_file: a folder or broken file in its place must be an error, not "no corpus"
        return next((self.root / n for n in ("corpus.jsonl.gz", "corpus.jsonl", "corpus.tsv") if (self.root / n).exists()), None)

    def run_files(self) -> dict[str, Path]:
        """Pre-retrieved candidate lists shipped with the dataset, by name."""
        found: dict[str, Path] = {}
        named: set[str] = set()
        if self.entry:
            for name, files in self.entry.runs.items():
                named.update(files)  # alternatives of a named run are not listed again
                p = _first(self.root, *files)
                if p:
                    found[name] = p
        for p in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            stem = p.name.split(".")[0]
            is_run = p.suffix == ".run" or p.name.endswith((".json.gz", ".json"))
            if is_run and p.name not in named and stem not in ("queries", "corpus"):
                found.setdefault(stem, p)
        return found

    # -- contents ----------------------------------------------------------------------
    @cached_property
    def _queries_and_excluded(self) -> tuple[list[Query], dict[str, set[str]]]:
        if self.layout == "beir":
            return formats.read_beir_queries(self.queries_path), {}
        if self.layout == "bright":
            return formats.read_bright_examples(self.queries_path)
        return formats.read_topics_tsv(self.queries_path), {}

    def queries(self) -> list[Query]:
        return self._queries_and_excluded[0]

    @cached_property
    def _qrels(self) -> Qrels:
        return formats.read_qrels(self.qrels_path)

    def qrels(self) -> Qrels:
        return self._qrels

    def has_corpus(self) -> bool:
        return self.corpus_path is not None

    @cached_property
    def _corpus(self) -> MemoryCorpus:
        path = self.corpus_path
        if path is None:
            raise InputError(
                f"dataset '{self.name}' has no corpus (expected corpus.jsonl[.gz] or corpus.tsv); "
                "without one use a pre-retrieved run (--retriever run:NAME or run:FILE) or `rankify eval`",
                self.root,
            )
        docs = formats.read_corpus_tsv(path) if path.suffix == ".tsv" else formats.read_beir_corpus(path)
        return MemoryCorpus(docs, _file_digest(path))

    def corpus(self) -> MemoryCorpus:
        return self._corpus

    def pre_retrieved(self, name: str) -> Run:
        """A named candidate list of this dataset, or a run file path; text filled from the corpus."""
        files = self.run_files()
        path = files.get(name)
        if path is None:
            p = Path(name)
            if not p.exists():
                known = ", ".join(sorted(files)) or "none"
                raise ConfigError(f"no pre-retrieved run '{name}' for dataset '{self.name}' (known: {known}; or give a run file path)")
            path = p
        if path.name.endswith((".json", ".json.gz")):
            _, run = formats.read_candidates_json(path)
        else:
            run = formats.read_trec_run(path)
        if self.has_corpus() and any(not c.text for cands in run.values() for c in cands):
            by_id = self.corpus().by_id
            for cands in run.values():
                for c in cands:
                    if not c.text and c.doc_id in by_id:
                        c.text = by_id[c.doc_id].full_text
        return run

    def rules(self) -> EvalRules:
        remove = self.entry.remove_self_hits if self.entry else self.layout == "beir"
        return EvalRules(remove_self_hits=remove, excluded=self._queries_and_excluded[1])

    def default_measures(self) -> list[str]:
        return list(self.entry.measures) if self.entry else ["nDCG@10", "R@100"]

    def fingerprint(self) -> str:
        return self._fingerprint

    @cached_property
    def _fingerprint(self) -> str:
        """Content hash of queries, qrels and corpus files: changes whenever the data does."""
        files = (self.queries_path, self.qrels_path, self.corpus_path, *self.run_files().values())
        parts = [p for p in files if p is not None and p.exists()]
        return hashlib.sha256("".join(_file_digest(p) for p in parts).encode()).hexdigest()

    def describe(self) -> dict:
        return {
            "name": self.name, "layout": self.layout, "path": str(self.root), "origin": self.origin,
            "corpus": str(self.corpus_path) if self.corpus_path else None,
            "runs": {k: str(v) for k, v in self.run_files().items()},
        }

    def check_files(self) -> None:
        """Fail early and clearly when the folder lacks required files."""
        for p, what in ((self.queries_path, "queries"), (self.qrels_path, "qrels")):
            if not p.is_file():
                raise InputError(f"file not found (expected the {what} of dataset '{self.name}')", p)


def detect_layout(root: Path) -> str | None:
    if (root / "queries.jsonl").is_file():
        return "beir"
    if _first(root, "examples.jsonl.gz", "examples.jsonl"):
        return "bright"
    if _first(root, "queries.tsv", "topics.tsv") or (root / "qrels.txt").is_file():
        return "trec"
    return None


def data_dirs(data_dir: str | None = None) -> list[tuple[Path, str]]:
    """Where named datasets are looked for, in order, with a label for each."""
    out = []
    explicit = data_dir or os.environ.get("RANKIFY_DATA_DIR")
    if explicit:
        p = Path(explicit).expanduser()
        label = "--data-dir" if data_dir else "RANKIFY_DATA_DIR"
        if not p.is_dir():
            raise ConfigError(f"{label}={explicit} does not exist or is not a folder")
        out.append((p, label))
    out.append((cache_root() / "data", "cache"))
    return out


def locate(entry: Entry, data_dir: str | None = None) -> tuple[Path, str] | None:
    for base, label in data_dirs(data_dir):
        for rel in (entry.subdir, entry.name):
            if detect_layout(base / rel):
                return base / rel, label
    return None


def resolve(spec: str, data_dir: str | None = None, download: bool = True) -> Dataset:
    p = Path(spec).expanduser()
    if p.is_dir():
        layout = detect_layout(p)
        if layout is None:
            raise InputError("not a dataset folder: expected queries.jsonl (BEIR), examples.jsonl.gz (BRIGHT) "
                             "or queries.tsv + qrels.txt (TREC)", p)
        entry = CATALOG.get(p.name) or CATALOG.get(p.name.replace("-passage", ""))
        ds = Dataset(p.name, p, layout, "path", entry if entry and entry.layout == layout else None)
        ds.check_files()
        return ds
    if "/" in spec or spec.startswith("."):
        raise InputError("dataset folder not found", p)
    entry = CATALOG.get(spec.lower())
    if entry is None:
        raise ConfigError(f"unknown dataset '{spec}'; known: {', '.join(CATALOG)} (or give a dataset folder path)")
    found = locate(entry, data_dir)
    if found is None and download and not is_offline():
        from .download import fetch  # network code only when needed

        found = fetch(entry, cache_root() / "data" / entry.subdir)
    if found is None:
        where = ", ".join(str(b / entry.subdir) for b, _ in data_dirs(data_dir))
        raise ConfigError(
            f"dataset '{entry.name}' is not available locally (looked in {where}); set RANKIFY_DATA_DIR "
            f"to a folder holding {entry.subdir}/ or pass --dataset PATH"
            + ("" if not is_offline() else " (offline mode: no download attempted)")
        )
    root, origin = found
    ds = Dataset(entry.name, root, entry.layout, origin, entry)
    ds.check_files()
    return ds
