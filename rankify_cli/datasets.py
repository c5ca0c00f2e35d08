"""Datasets: resolve a name or folder to files, load them strictly, apply their rules.

Resolution of a catalog name: an explicit --data-dir, RANKIFY_DATA_DIR, the local cache,
then (online only) a download of what catalog.toml declares for it, into the cache. Files a
dataset needs only for some runs (candidate lists, BRIGHT documents) are fetched when first
used. A folder path is read as BEIR (queries.jsonl), BRIGHT (examples.jsonl[.gz]) or TREC
(queries.tsv + qrels.txt); `irds:<id>` goes through ir_datasets (irds.py). BRIGHT names take
variants: `bright-biology:long` (long documents, gold_ids_long), `bright-biology:gpt4-reason`
(GPT-4 reasoning as the query), or both joined with '+'.
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
from .download import is_offline
from .errors import ConfigError, InputError
from .types import Document, Qrels, Query, Run


def cache_root() -> Path:
    return Path(os.environ.get("RANKIFY_CACHE_DIR") or Path.home() / ".cache" / "rankify-cli")




BRIGHT_VARIANTS = ("long", "gpt4-reason")


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
    variant: tuple[str, ...] = ()

    # -- files -------------------------------------------------------------------------
    @property
    def downloads(self) -> Path | None:
        """Where files fetched for a catalog dataset go (the cache), beside a read-only data dir."""
        return cache_root() / "data" / self.entry.subdir if self.entry else None

    def _find(self, *names: str) -> Path | None:
        for base in (self.root, self.downloads):
            if base is not None and (p := _first(base, *names)):
                return p
        return None

    def offline_hint(self, name: str) -> str:
        sub = self.entry.subdir if self.entry else self.root
        return f"to work offline, put {name} in {sub}/ under RANKIFY_DATA_DIR (or pass --dataset PATH)"

    @property
    def queries_path(self) -> Path:
        if self.layout == "beir":
            return self.root / "queries.jsonl"
        if self.layout == "bright":
            if "gpt4-reason" in self.variant:
                return self._find("examples.gpt4_reason.jsonl.gz", "examples.gpt4_reason.jsonl") or \
                    self.downloads / "examples.gpt4_reason.jsonl.gz"
            return _first(self.root, "examples.jsonl.gz", "examples.jsonl") or self.root / "examples.jsonl.gz"
        return _first(self.root, "queries.tsv", "topics.tsv") or self.root / "queries.tsv"

    @property
    def examples_path(self) -> Path:
        return _first(self.root, "examples.jsonl.gz", "examples.jsonl") or self.root / "examples.jsonl.gz"

    @property
    def qrels_path(self) -> Path:
        if self.layout == "beir":
            return self.root / "qrels" / "test.tsv"
        if "long" in self.variant:
            return self._find("qrels.long.txt") or self.downloads / "qrels.long.txt"
        return self.root / "qrels.txt"

    @property
    def _corpus_names(self) -> tuple[str, ...]:
        if "long" in self.variant:
            return ("long_documents.jsonl.gz", "long_documents.jsonl")
        return ("corpus.jsonl.gz", "corpus.jsonl", "corpus.tsv")

    @property
    def corpus_path(self) -> Path | None:
        # existence, not is_file: a folder or broken file in its place must be an error, not "no corpus"
        for base in (self.root, self.downloads):
            if base is not None:
                for n in self._corpus_names:
                    if (base / n).exists():
                        return base / n
        return None

    def _corpus_downloadable(self) -> bool:
        return bool(self.entry and (self.entry.bright_task or self.entry.archive)) and not is_offline()

    def run_files(self) -> dict[str, Path]:
        """Pre-retrieved candidate lists of the dataset, by name: found locally, or (online) the
        path a declared download will land at when the run is first used."""
        found: dict[str, Path] = {}
        named: set[str] = set()
        if self.entry:
            for name, spec in self.entry.runs.items():
                named.update(spec.names)  # alternatives of a named run are not listed again
                p = self._find(*spec.names)
                if p is None and spec.download and not is_offline():
                    p = self.downloads / spec.download.name
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
            queries, excluded = formats.read_bright_examples(self.queries_path)
            if self.queries_path != self.examples_path:  # a query variant: exclusions stay the task's
                excluded = formats.read_bright_examples(self.examples_path)[1]
            return queries, excluded
        return formats.read_topics_tsv(self.queries_path), {}

    def queries(self) -> list[Query]:
        return self._queries_and_excluded[0]

    @cached_property
    def _qrels(self) -> Qrels:
        return formats.read_qrels(self.qrels_path)

    def qrels(self) -> Qrels:
        return self._qrels

    def has_corpus(self) -> bool:
        """A corpus is here, or (online) one is declared for download."""
        return self.corpus_path is not None or self._corpus_downloadable()

    @cached_property
    def _corpus(self) -> MemoryCorpus:
        path = self.corpus_path
        if path is None and self._corpus_downloadable():
            from . import download

            name = self._corpus_names[0]
            if self.entry.archive:  # the whole BEIR zip, beside the local queries and qrels
                download.fetch_beir(self.entry, self.downloads, self.offline_hint(name))
                path = self.downloads / name
            else:
                path = download.fetch_bright_documents(self.entry, self.downloads / name, self.offline_hint(name),
                                                       long="long" in self.variant)
            self.__dict__.pop("_fingerprint", None)  # the corpus is part of the content hash
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
        declared = self.entry.runs.get(name) if self.entry else None
        if path is None and declared and declared.download:  # offline: fetch() says what to provide
            path = self.downloads / declared.download.name
        if path is None:
            p = Path(name)
            if not p.exists():
                known = ", ".join(sorted(files)) or "none"
                raise ConfigError(f"no pre-retrieved run '{name}' for dataset '{self.name}' (known: {known}; or give a run file path)")
            path = p
        if not path.exists() and declared and declared.download:
            from .download import fetch

            path = fetch(declared.download, path, self.offline_hint(path.name))
        if path.name.endswith((".json", ".json.gz")):
            _, run = formats.read_candidates_json(path)
        elif path.name.endswith((".jsonl", ".jsonl.gz")):
            _, run = formats.read_candidates_jsonl(path)
        else:
            run = formats.read_trec_run(path)
        if self.has_corpus() and any(not c.text for cands in run.values() for c in cands):
            by_id = self.corpus().by_id
            for cands in run.values():
                for c in cands:
                    if not c.text and c.doc_id in by_id:
                        c.text = by_id[c.doc_id].full_text
        return run

    def ensure_variant_files(self) -> None:
        """Files a BRIGHT variant derives or fetches before anything is read."""
        if "gpt4-reason" in self.variant and not self.queries_path.is_file():
            from .download import fetch_bright_examples

            fetch_bright_examples(self.entry, self.downloads, self.offline_hint("examples.gpt4_reason.jsonl.gz"),
                                  config="gpt4_reason", name="examples.gpt4_reason.jsonl.gz")
        if "long" in self.variant and not self.qrels_path.is_file():
            rows = formats.iter_jsonl(self.examples_path, 'BRIGHT examples {"id", "gold_ids_long"}')
            lines = [f"{obj['id']}\t0\t{g}\t1\n" for _, obj in rows
                     for g in obj.get("gold_ids_long") or [] if g != "N/A"]
            if not lines:
                raise InputError(f"no gold_ids_long in the examples of '{self.name}': this task has no long-document setting",
                                 self.examples_path)
            formats.atomic_write(self.qrels_path, "".join(lines))

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
        files = (self.queries_path, self.qrels_path, self.corpus_path)
        digests = [_file_digest(p) for p in files if p is not None and p.exists()]
        for name, p in sorted(self.run_files().items()):
            spec = self.entry.runs.get(name) if self.entry else None
            if spec and spec.download and p.name == spec.download.name:
                digests.append(spec.download.md5 or spec.download.sha256)  # verified on download: the same bytes
            elif p.exists():
                digests.append(_file_digest(p))
        return hashlib.sha256("".join(digests).encode()).hexdigest()

    def describe(self) -> dict:
        return {
            "name": self.name, "layout": self.layout, "path": str(self.root), "origin": self.origin,
            "corpus": str(self.corpus_path) if self.corpus_path else ("download" if self.has_corpus() else None),
            "runs": {k: str(v) for k, v in self.run_files().items()},
        }

    def check_files(self) -> None:
        """Fail early and clearly when the folder lacks required files."""
        for p, what in ((self.queries_path, "queries"), (self.qrels_path, "qrels")):
            if not p.is_file():
                state = "a folder, not a file" if p.is_dir() else "not a regular file" if p.exists() else "file not found"
                raise InputError(f"{state} (expected the {what} of dataset '{self.name}')", p)


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


def known(spec: str) -> bool:
    """A name `resolve` can look up (catalog name with its variant, or irds:<id>)."""
    if spec.startswith("irds:"):
        return True
    return split_variant(spec)[0].lower() in CATALOG


def split_variant(spec: str) -> tuple[str, tuple[str, ...]]:
    name, _, variant = spec.partition(":")
    return name, tuple(v for v in variant.split("+") if v) if variant else ()


def resolve(spec: str, data_dir: str | None = None, download: bool = True):
    if spec.startswith("irds:"):
        from .irds import resolve_irds

        return resolve_irds(spec[len("irds:"):])
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
    name, variant = split_variant(spec)
    entry = CATALOG.get(name.lower())
    if entry is None:
        raise ConfigError(f"unknown dataset '{spec}'; known: {', '.join(CATALOG)} (or give a dataset folder path, or irds:<id>)")
    bad = [v for v in variant if entry.layout != "bright" or v not in BRIGHT_VARIANTS]
    if bad:
        allowed = f"BRIGHT variants: {', '.join(BRIGHT_VARIANTS)}" if entry.layout == "bright" else "it has no variants"
        raise ConfigError(f"dataset '{entry.name}' has no variant '{bad[0]}' ({allowed})")
    found = locate(entry, data_dir)
    if found is None and download and entry.downloadable and not is_offline():
        found = _download(entry)
    if found is None:
        where = ", ".join(str(b / entry.subdir) for b, _ in data_dirs(data_dir))
        raise ConfigError(
            f"dataset '{entry.name}' is not available locally (looked in {where}); set RANKIFY_DATA_DIR "
            f"to a folder holding {entry.subdir}/ or pass --dataset PATH"
            + ("" if not is_offline() else " (offline mode: no download attempted)")
        )
    root, origin = found
    full = entry.name + (":" + "+".join(variant) if variant else "")
    ds = Dataset(full, root, entry.layout, origin, entry, variant)
    ds.ensure_variant_files()
    ds.check_files()
    return ds


def _download(entry: Entry) -> tuple[Path, str]:
    from . import download as dl

    target = cache_root() / "data" / entry.subdir
    hint = f"to work offline, put {entry.subdir}/ under RANKIFY_DATA_DIR (or pass --dataset PATH)"
    if entry.archive:
        dl.fetch_beir(entry, target, hint)
    elif entry.bright_task:
        dl.fetch_bright_examples(entry, target, hint)
    else:
        dl.fetch_set({r: entry.files[r] for r in ("queries", "qrels")}, target, hint)
    return target, "download"
