"""`--dataset irds:<id>` through ir_datasets, on real data placed where ir_datasets keeps it."""

from __future__ import annotations

import gzip
import zipfile
from pathlib import Path

import pytest

from .conftest import DATA, rankify

pytest.importorskip("ir_datasets")


@pytest.fixture
def irds_home(tmp_path):
    """ArguAna as ir_datasets' `beir/arguana` finds it after a download: the BEIR zip (corpus,
    queries, qrels) at its cache path, built from the staged BEIR files."""
    home = tmp_path / "irds"
    src = DATA / "beir" / "arguana"
    zpath = home / "beir" / "arguana" / "source.zip"
    zpath.parent.mkdir(parents=True)
    with zipfile.ZipFile(zpath, "w") as z:
        z.writestr("arguana/corpus.jsonl", gzip.decompress((src / "corpus.jsonl.gz").read_bytes()))
        z.writestr("arguana/queries.jsonl", (src / "queries.jsonl").read_bytes())
        z.writestr("arguana/qrels/test.tsv", (src / "qrels" / "test.tsv").read_bytes())
    return home


def test_irds_beir_arguana_equals_the_catalog_dataset_with_self_hits_removed(irds_home, tmp_path):
    env = {"IR_DATASETS_HOME": str(irds_home)}
    via_irds = rankify("run", "-d", "irds:beir/arguana", "-r", "bm25", "-o", str(tmp_path / "a"), "--json", "-q", env=env)
    assert via_irds.code == 0, via_irds
    catalog = rankify("run", "-d", "arguana", "-r", "bm25", "-o", str(tmp_path / "b"), "--json", "-q")
    assert catalog.code == 0, catalog
    a, b = via_irds.json(), catalog.json()
    assert a["dataset"]["name"] == "irds:beir/arguana"
    assert a["metrics"] == b["metrics"]
    notes = [d["stages"][0]["evaluation_notes"]["self_hits_removed"] for d in (a, b)]
    assert notes[0] == notes[1] > 1000, notes


def test_irds_errors_are_one_line(irds_home, tmp_path):
    env = {"IR_DATASETS_HOME": str(irds_home)}
    r = rankify("run", "-d", "irds:no/such-dataset", "-o", str(tmp_path / "o"), env=env)
    assert r.code == 2 and r.err.strip() == (
        "error: unknown ir_datasets id 'no/such-dataset' (list them with `rankify datasets --irds`)"), r
    r = rankify("run", "-d", "irds:beir/arguana", "-r", "run:scoreddocs", "-o", str(tmp_path / "o"), env=env)
    assert r.code == 2 and "no pre-retrieved run 'scoreddocs' for 'irds:beir/arguana'" in r.err, r


def test_datasets_lists_irds_ids():
    r = rankify("datasets", "--irds")
    assert r.code == 0, r
    lines = set(r.out.splitlines())
    assert {"irds:beir/arguana\tdocs", "irds:msmarco-passage/trec-dl-2019/judged\tdocs"} <= lines
    assert "have queries and qrels" in r.err and "deprecated" not in r.err


def test_irds_registered_from_local_files_scores_its_scoreddocs(tmp_path, monkeypatch):
    """A dataset registered from local files (the staged DL19 topics, qrels and BM25 run as
    ir_datasets formats) goes through irds: with the DL measures: the published 0.5058."""
    import ir_datasets
    from ir_datasets.datasets.base import Dataset as IrdsDataset
    from ir_datasets.formats import TrecQrels, TrecScoredDocs, TsvQueries
    from ir_datasets.util import LocalDownload

    from rankify_cli.datasets import resolve
    from rankify_cli.pipeline import Pipeline, execute

    monkeypatch.setenv("IR_DATASETS_HOME", str(tmp_path / "irds"))
    staged = DATA / "trec-dl" / "dl19-passage"
    name = "rankify-test/trec-dl-2019-local"
    if name not in ir_datasets.registry:
        ir_datasets.registry.register(name, IrdsDataset(
            TsvQueries(LocalDownload(staged / "queries.tsv")),
            TrecQrels(LocalDownload(staged / "qrels.txt"), {}),
            TrecScoredDocs(LocalDownload(staged / "bm25_top100.run")),
        ))
    ds = resolve(f"irds:{name}")
    assert len(ds.queries()) == 43 and ds.default_measures()[0] == "nDCG@10" and not ds.rules().remove_self_hits
    result = execute(Pipeline("run:scoreddocs"), ds, ds.default_measures())
    ev = result.final.evaluation
    assert round(ev.aggregate["nDCG@10"], 4) == 0.5058 and round(ev.aggregate["R(rel=2)@100"], 4) == 0.4910
    with pytest.raises(Exception, match="has no documents"):
        ds.corpus()
