"""The datasets rankify knows by name: where their files live, how they are evaluated, and
what may be downloaded for them. The entries are data, in catalog.toml; this module reads them.

Evaluation rules live with the data, because published numbers depend on them: BEIR runs drop
a query's own id (Pyserini `--remove-query`, decisive on ArguAna), BRIGHT drops each query's
`excluded_ids`.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources


@dataclass(frozen=True)
class Download:
    """One file's public home and what it must be: size in bytes and a checksum."""

    url: str
    size: int
    md5: str | None = None
    sha256: str | None = None
    name: str | None = None          # the file's name in the dataset folder


@dataclass(frozen=True)
class RunFiles:
    files: tuple[str, ...]           # local names, first found wins; then the download's name
    download: Download | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return self.files + ((self.download.name,) if self.download else ())


@dataclass(frozen=True)
class Entry:
    name: str
    layout: str                      # beir | trec | bright | noveleval
    subdir: str                      # relative to RANKIFY_DATA_DIR / the cache
    description: str
    measures: tuple[str, ...] = ("nDCG@10", "R@100")
    remove_self_hits: bool = False
    runs: dict[str, RunFiles] = field(default_factory=dict)
    files: dict[str, Download] = field(default_factory=dict)  # role (queries, qrels) -> download
    archive: Download | None = None  # BEIR: one zip holding corpus, queries and qrels
    bright_task: str | None = None   # BRIGHT: the split name on the hub (biology, earth_science, ...)
    bright_repo: str | None = None

    @property
    def downloadable(self) -> bool:
        return bool(self.archive or self.bright_task or ("queries" in self.files and "qrels" in self.files))


def _download(d: dict, name: str | None = None) -> Download:
    return Download(d["url"], int(d["size"]), d.get("md5"), d.get("sha256"), d.get("name", name))


def _load() -> tuple[dict[str, Entry], tuple[str, ...], dict[str, Download]]:
    data = tomllib.loads(resources.files(__package__).joinpath("catalog.toml").read_text(encoding="utf-8"))
    beir_url = data["beir"]["url"]
    out: dict[str, Entry] = {}
    for name, d in data["datasets"].items():
        layout = d["layout"]
        runs = {r: RunFiles(tuple(spec.get("files", ())), _download(spec["download"]) if "download" in spec else None)
                for r, spec in d.get("runs", {}).items()}
        archive = None
        if "archive" in d:
            archive = Download(beir_url.format(name=name), int(d["archive"]["size"]), d["archive"].get("md5"),
                               d["archive"].get("sha256"), f"{name}.zip")
        out[name] = Entry(
            name, layout, d.get("subdir", f"beir/{name}" if layout == "beir" else name), d["description"],
            measures=tuple(d.get("measures", ("nDCG@10", "R@100"))), remove_self_hits=layout == "beir",
            runs=runs, files={role: _download(f) for role, f in d.get("files", {}).items()}, archive=archive,
        )
    b = data["bright"]
    for t in b["tasks"]:
        out[f"bright-{t}"] = Entry(f"bright-{t}", "bright", f"bright/{t}", b["description"].format(task=t),
                                   bright_task=t.replace("-", "_"), bright_repo=b["repo"])
    files = {name: _download(f, name) for name, f in data.get("files", {}).items()}
    return out, tuple(b["tasks"]), files


# FILES: downloads that belong to no dataset (tokenizer data), by name
CATALOG, BRIGHT_TASKS, FILES = _load()
