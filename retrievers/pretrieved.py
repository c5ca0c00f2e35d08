"""`run:NAME` / `run:FILE`: candidates someone already retrieved (a dataset's staged BM25
top-100, a TREC run file), so rerankers are compared on exactly the published inputs."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

from rankify_cli.types import Query, Retriever, Run, Source, StageContext


class PreRetrieved(Retriever):
    cache_runs = False  # already a file on disk, with passage text the cache would drop
    def __init__(self, name: str = ""):
        if not name:
            raise ValueError("run: needs a name or a file, e.g. run:bm25 or run:path/to/file.run")
        if ("/" in name or name.endswith((".run", ".trec", ".txt", ".json", ".gz"))) and not Path(name).expanduser().exists():
            from rankify_cli.errors import InputError

            raise InputError("run file not found (run:FILE takes a TREC run or rank_llm JSON file; "
                             "run:NAME a dataset's staged run, see `rankify datasets`)", name)
        self.name = name
        self.spec = f"run:{name}"

    def config(self) -> dict:
        cfg = {"retriever": "run", "name": self.name}
        path = Path(self.name)
        if path.is_file():  # a user's file: its content, not its name, decides the output
            cfg["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        return cfg

    def retrieve(self, source: Source, queries: Sequence[Query], k: int, ctx: StageContext) -> Run:
        run = source.pre_retrieved(self.name)
        wanted = {q.id for q in queries}
        missing = len(wanted - set(run))
        if missing:
            ctx.stats["queries_missing_from_run"] += missing
        ctx.progress(len(queries))
        return {qid: cands[:k] for qid, cands in run.items() if qid in wanted}
