"""The datasets rankify knows by name: where their files live and how they are evaluated.

Evaluation rules live here, with the data, because published numbers depend on them:
BEIR runs drop a query's own id (Pyserini `--remove-query`, decisive on ArguAna), BRIGHT
drops each query's `excluded_ids`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"

BRIGHT_TASKS = (
    "biology", "earth-science", "economics", "psychology", "robotics", "stackoverflow",
    "sustainable-living", "leetcode", "pony", "aops", "theoremqa-questions", "theoremqa-theorems",
)


@dataclass(frozen=True)
class Entry:
    name: str
    layout: str                      # beir | trec | bright | noveleval
    subdir: str                      # relative to RANKIFY_DATA_DIR / the cache
    description: str
    measures: tuple[str, ...] = ("nDCG@10", "R@100")
    remove_self_hits: bool = False
    runs: dict[str, tuple[str, ...]] = field(default_factory=dict)  # name -> files, first found wins
    beir_md5: str | None = None      # online users: BEIR zip checksum
    hf_bright_task: str | None = None  # online users: xlang-ai/BRIGHT split


def _beir(name: str, md5: str, description: str) -> Entry:
    return Entry(name, "beir", f"beir/{name}", description, remove_self_hits=True, beir_md5=md5)


def _dl(name: str, year: str) -> Entry:
    return Entry(
        name, "trec", f"trec-dl/{name}-passage",
        f"TREC Deep Learning {year} passage (MS MARCO v1), graded qrels",
        measures=("nDCG@10", "R(rel=2)@100", "AP(rel=2)"),
        runs={"bm25": ("bm25_top100.rank_llm.json.gz", "bm25_top100.rank_llm.json", "bm25_top100.run")},
    )


CATALOG: dict[str, Entry] = {
    e.name: e
    for e in [
        _beir("scifact", "5f7d1de60b170fc8027bb7898e2efca1", "BEIR SciFact: scientific claim verification"),
        _beir("arguana", "8ad3e3c2a5867cdced806d6503f29b99", "BEIR ArguAna: counter-argument retrieval"),
        _beir("nfcorpus", "a89dba18a62ef92f7d323ec890a0d38d", "BEIR NFCorpus: nutrition and medicine"),
        _beir("fiqa", "17918ed23cd04fb15047f73e6c3bd9d9", "BEIR FiQA-2018: financial QA"),
        _beir("scidocs", "38121350fc3a4d2f48850f6aff52e4a9", "BEIR SciDocs: citation prediction"),
        _beir("trec-covid", "ce62140cb23feb9becf6270d0d1fe6d1", "BEIR TREC-COVID: CORD-19 ad hoc"),
        _dl("dl19", "2019"),
        _dl("dl20", "2020"),
        Entry(
            "noveleval", "noveleval", "noveleval",
            "NovelEval-2306 (RankGPT): 21 queries x 20 post-cutoff passages",
            measures=("nDCG@1", "nDCG@5", "nDCG@10"),
            runs={"original": ("candidates.rankgpt.json.gz",)},
        ),
    ]
    + [
        Entry(
            f"bright-{t}", "bright", f"bright/{t}", f"BRIGHT {t}: reasoning-intensive retrieval",
            hf_bright_task=t.replace("-", "_"),
        )
        for t in BRIGHT_TASKS
    ]
}
