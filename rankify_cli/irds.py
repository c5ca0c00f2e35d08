"""`--dataset irds:<id>`: any ir_datasets dataset (its downloads, cache and checksums), read
with the same strictness and evaluation rules as the built-in catalog.

Rules: BEIR ids (`beir/...`) drop a query's own id from its run, as the catalog's BEIR entries
do (Pyserini `--remove-query`); TREC DL ids get the catalog's DL measures (graded, rel>=2 for
recall and AP). A dataset's `scoreddocs` (e.g. the official top-100) is the run `run:scoreddocs`.
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path

from .datasets import EvalRules, MemoryCorpus
from .errors import ConfigError, DependencyError, InputError, RankifyError
from .types import Candidate, Document, Qrels, Query, Run

DL_MEASURES = ("nDCG@10", "R(rel=2)@100", "AP(rel=2)")


def _irds():
    try:
        import ir_datasets
    except ImportError:
        raise DependencyError("irds: datasets need the `ir_datasets` package: pip install 'rankify-cli[irds]'") from None
    return ir_datasets


def known_ids() -> list[str]:
    return sorted(_irds().registry._registered)


def resolve_irds(irds_id: str) -> "IrdsDataset":
    ir_datasets = _irds()
    try:
        handle = ir_datasets.load(irds_id)
    except KeyError:
        raise ConfigError(f"unknown ir_datasets id '{irds_id}' (list them with `rankify datasets --irds`)") from None
    ds = IrdsDataset(irds_id, handle)
    ds.check_files()
    return ds


class IrdsDataset:
    """The Dataset interface (queries, qrels, corpus, runs, rules) over an ir_datasets handle."""

    layout = "irds"
    entry = None
    variant: tuple[str, ...] = ()

    def __init__(self, irds_id: str, handle):
        self.id, self.handle = irds_id, handle
        self.name = f"irds:{irds_id}"
        self.origin = "ir_datasets"
        self.root = Path(self.name)  # names the source in messages; ir_datasets owns the files

    # -- what ir_datasets provides -----------------------------------------------------
    def _part(self, what: str) -> Path:
        return self.root / what

    @property
    def queries_path(self) -> Path:
        return self._part("queries")

    @property
    def qrels_path(self) -> Path:
        return self._part("qrels")

    @property
    def corpus_path(self) -> Path | None:
        return self._part("docs") if self.handle.has_docs() else None

    def has_corpus(self) -> bool:
        return self.handle.has_docs()

    def check_files(self) -> None:
        for what in ("queries", "qrels"):
            if not getattr(self.handle, f"has_{what}")():
                raise InputError(f"this ir_datasets dataset has no {what}; pick a subset that does "
                                 f"(e.g. {self.id}/test or .../judged)", self._part(what))

    def _iter(self, what: str):
        """ir_datasets' iterator, its failures (download, checksum, parse) as one line each."""
        try:
            yield from getattr(self.handle, f"{what}_iter")()
        except RankifyError:
            raise
        except Exception as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InputError(f"ir_datasets could not read {what}: {msg}", self._part(what)) from None

    # -- contents ----------------------------------------------------------------------
    @cached_property
    def _queries(self) -> list[Query]:
        out, seen = [], {}
        for i, q in enumerate(self._iter("queries"), 1):
            qid = str(q.query_id)
            text = q.default_text() if hasattr(q, "default_text") else getattr(q, "text", "")
            if qid in seen:
                raise InputError(f"duplicate query '{qid}' (first at query {seen[qid]})", self.queries_path, i)
            seen[qid] = i
            if not isinstance(text, str) or not text.strip():
                raise InputError(f"query '{qid}' has empty text", self.queries_path, i)
            out.append(Query(qid, text))
        if not out:
            raise InputError("no queries", self.queries_path)
        return out

    def queries(self) -> list[Query]:
        return self._queries

    @cached_property
    def _qrels(self) -> Qrels:
        qrels: Qrels = {}
        for i, r in enumerate(self._iter("qrels"), 1):
            qid, did = str(r.query_id), str(r.doc_id)
            if not isinstance(r.relevance, int):
                raise InputError(f"relevance '{r.relevance}' is not an integer", self.qrels_path, i)
            if did in qrels.get(qid, {}) and qrels[qid][did] != r.relevance:
                raise InputError(f"query '{qid}' judges '{did}' twice with different grades", self.qrels_path, i)
            qrels.setdefault(qid, {})[did] = int(r.relevance)
        if not qrels:
            raise InputError("no judgments", self.qrels_path)
        return qrels

    def qrels(self) -> Qrels:
        return self._qrels

    @cached_property
    def _corpus(self) -> MemoryCorpus:
        if not self.handle.has_docs():
            raise InputError("this ir_datasets dataset has no documents; use run:scoreddocs or `rankify eval`", self.root)
        docs, h = [], hashlib.sha256()
        for d in self._iter("docs"):
            title = getattr(d, "title", "") or ""
            text = getattr(d, "text", None)
            if text is None:
                text = d.default_text()
            doc = Document(str(d.doc_id), text, title)
            h.update(f"{doc.id}\t{title}\t{text}\n".encode())
            docs.append(doc)
        return MemoryCorpus(docs, h.hexdigest())

    def corpus(self) -> MemoryCorpus:
        return self._corpus

    def run_files(self) -> dict[str, Path]:
        return {"scoreddocs": self._part("scoreddocs")} if self.handle.has_scoreddocs() else {}

    def pre_retrieved(self, name: str) -> Run:
        if name != "scoreddocs" or not self.handle.has_scoreddocs():
            known = ", ".join(self.run_files()) or "none"
            raise ConfigError(f"no pre-retrieved run '{name}' for '{self.name}' (known: {known})")
        run: Run = {}
        for s in self._iter("scoreddocs"):
            run.setdefault(str(s.query_id), []).append(Candidate(str(s.doc_id), float(s.score)))
        if self.has_corpus():
            by_id = self.corpus().by_id
            for cands in run.values():
                for c in cands:
                    if c.doc_id in by_id:
                        c.text = by_id[c.doc_id].full_text
        return run

    def rules(self) -> EvalRules:
        return EvalRules(remove_self_hits=self.id.startswith("beir/"))

    def default_measures(self) -> list[str]:
        return list(DL_MEASURES) if "trec-dl" in self.id else ["nDCG@10", "R@100"]

    def fingerprint(self) -> str:
        return self._fingerprint

    @cached_property
    def _fingerprint(self) -> str:
        """What was read: queries, qrels and (when loaded or needed) the documents."""
        h = hashlib.sha256(self.name.encode())
        for q in self.queries():
            h.update(f"{q.id}\t{q.text}\n".encode())
        for qid in sorted(self.qrels()):
            h.update(repr(sorted(self.qrels()[qid].items())).encode())
        if self.has_corpus():
            h.update(self.corpus().fingerprint().encode())
        return h.hexdigest()

    def describe(self) -> dict:
        return {"name": self.name, "layout": self.layout, "path": self.name, "origin": self.origin,
                "corpus": self.name + "/docs" if self.has_corpus() else None, "runs": {k: str(v) for k, v in self.run_files().items()}}
