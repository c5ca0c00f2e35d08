"""Downloads for online users, served from a loopback server made from ../shared/data: the
files catalog.toml declares (Anserini topics/qrels, rank_llm_data's BM25 top-100 JSONL) must
download, verify against the published checksums and reproduce the published numbers."""

from __future__ import annotations

import gzip
import json
import os
import urllib.parse
from pathlib import Path

import pytest

from rankify_cli.catalog import CATALOG

from .conftest import DATA, rankify
from .file_server import FileServer


def rank_llm_jsonl(staged_json_gz: Path) -> bytes:
    """rank_llm_data's cached JSONL, written as rank_llm's DataWriter.write_in_jsonl_format does
    (src/rank_llm/data.py), from the staged rank_llm JSON of the same run. The catalog's md5
    (from rank_llm's repo_info.py) proves the bytes are the published file's."""
    lines = []
    for q in json.loads(gzip.decompress(staged_json_gz.read_bytes())):
        cands = [{"docid": h["docid"], "score": h["score"], "doc": {"contents": h["content"]}} for h in q["hits"]]
        lines.append(json.dumps({"query": {"text": q["query"], "qid": q["hits"][0]["qid"]}, "candidates": cands}) + "\n")
    return "".join(lines).encode()


def _place(root: Path, url: str, data: bytes) -> Path:
    u = urllib.parse.urlsplit(url)
    p = root / u.netloc / u.path.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def serve_dl(root: Path, *names: str) -> dict[str, Path]:
    """Lay out the public homes of DL19/DL20's queries, qrels and BM25 run under `root`."""
    placed = {}
    for name in names:
        e = CATALOG[name]
        staged = DATA / e.subdir
        placed[f"{name}/queries"] = _place(root, e.files["queries"].url, (staged / "queries.tsv").read_bytes())
        placed[f"{name}/qrels"] = _place(root, e.files["qrels"].url, (staged / "qrels.txt").read_bytes())
        run = e.runs["bm25"].download
        placed[f"{name}/run"] = _place(root, run.url, rank_llm_jsonl(staged / "bm25_top100.rank_llm.json.gz"))
    return placed


@pytest.fixture
def online(tmp_path):
    """An online user with nothing local: empty data dir, fresh cache, downloads via loopback."""
    empty = tmp_path / "data"
    empty.mkdir()
    cache = tmp_path / "cache"
    with FileServer(tmp_path / "www") as server:
        env = {"RANKIFY_DATA_DIR": str(empty), "RANKIFY_CACHE_DIR": str(cache), "RANKIFY_OFFLINE": "0",
               "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "RANKIFY_DOWNLOAD_BASE_URL": server.url,
               "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing may reach the real hub
        yield server, env, cache


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_dl19_dl20_download_verify_and_reproduce_published_bm25(online, tmp_path):
    server, env, cache = online
    serve_dl(server.root, "dl19", "dl20")
    for name, expected in (("dl19", 0.5058), ("dl20", 0.4796)):
        r = rankify("run", "-d", name, "-o", str(tmp_path / "out"), "--json", "-q", env=env)
        assert r.code == 0, r
        doc = r.json()
        assert round(doc["metrics"]["nDCG@10"], 4) == expected, doc["metrics"]
        assert doc["pipeline"] == "run:bm25"
        folder = cache / "data" / CATALOG[name].subdir
        assert sorted(p.name for p in folder.iterdir()) == ["bm25_top100.rank_llm.jsonl", "qrels.txt", "queries.tsv"]
    assert server.count("retrieve_results_dl19_top100.jsonl") == 1
    # A second run reads the cache: no request at all.
    before = len(server.requests)
    again = rankify("run", "-d", "dl19", "-o", str(tmp_path / "out2"), "--json", "-q", env=env)
    assert again.code == 0 and round(again.json()["metrics"]["nDCG@10"], 4) == 0.5058
    assert len(server.requests) == before


def test_corrupted_byte_fails_the_checksum_in_one_line_and_leaves_nothing(online, tmp_path):
    server, env, cache = online
    placed = serve_dl(server.root, "dl19")
    qrels = placed["dl19/qrels"]
    blob = bytearray(qrels.read_bytes())
    blob[1000] ^= 0x01
    qrels.write_bytes(bytes(blob))
    r = rankify("run", "-d", "dl19", "-o", str(tmp_path / "out"), "-q", env=env)
    assert r.code == 2, r
    lines = r.err.strip().splitlines()
    err = [ln for ln in lines if ln.startswith("error:")]
    assert len(err) == 1 and "Traceback" not in r.err, r
    assert "checksum mismatch: https://raw.githubusercontent.com/castorini/anserini-tools/" in err[0]
    assert "qrels.dl19-passage.txt: md5" in err[0] and "to work offline, put trec-dl/dl19-passage/" in err[0]
    assert _files(cache / "data") == []  # queries.tsv verified, but never half a dataset
    assert not (tmp_path / "out").exists()

    # A corrupted run: queries and qrels are fine and stay; the run leaves no file behind.
    qrels.write_bytes((DATA / "trec-dl/dl19-passage/qrels.txt").read_bytes())
    run = placed["dl19/run"]
    blob = bytearray(run.read_bytes())
    blob[-10] ^= 0x20
    run.write_bytes(bytes(blob))
    r = rankify("run", "-d", "dl19", "-o", str(tmp_path / "out"), "-q", env=env)
    assert r.code == 2 and "checksum mismatch: https://github.com/castorini/rank_llm_data/" in r.err, r
    assert [p.name for p in _files(cache / "data")] == ["qrels.txt", "queries.tsv"]


def test_interrupted_download_resumes(online, tmp_path):
    server, env, cache = online
    serve_dl(server.root, "dl19")
    # Every response of the run file stops after 300 kB: three attempts cannot finish 2 MB.
    server.cut_after["retrieve_results_dl19_top100.jsonl"] = 300_000
    r = rankify("run", "-d", "dl19", "-o", str(tmp_path / "out"), "-q", env=env)
    assert r.code == 2, r
    assert "download failed: https://github.com/castorini/rank_llm_data/" in r.err and "a rerun resumes" in r.err, r
    ranges = [rng for p, rng in server.requests if p.endswith("dl19_top100.jsonl")]
    assert ranges == [None, "bytes=300000-", "bytes=600000-"]  # each retry asks only for the rest
    part = cache / "data/trec-dl/dl19-passage/.bm25_top100.rank_llm.jsonl.part"
    assert part.stat().st_size == 900_000

    # The connection is fine again: the next run asks for the remaining bytes only and verifies.
    server.cut_after.clear()
    r = rankify("run", "-d", "dl19", "-o", str(tmp_path / "out"), "--json", "-q", env=env)
    assert r.code == 0, r
    assert round(r.json()["metrics"]["nDCG@10"], 4) == 0.5058
    assert [rng for p, rng in server.requests if p.endswith("dl19_top100.jsonl")][-1] == "bytes=900000-"
    assert not part.exists()


def test_offline_never_tries_and_says_what_to_provide(online, tmp_path):
    server, env, cache = online
    serve_dl(server.root, "dl19")
    off = {**env, "RANKIFY_OFFLINE": "1"}
    r = rankify("run", "-d", "dl19", "-o", str(tmp_path / "out"), "-q", env=off)
    assert r.code == 2 and "offline mode: no download attempted" in r.err and "trec-dl/dl19-passage/" in r.err, r
    # Local queries and qrels, but the declared candidate list is not here: one line, no request.
    local = {**off, "RANKIFY_DATA_DIR": str(DATA)}
    r = rankify("run", "-d", "trec-covid", "-r", "run:bm25", "-o", str(tmp_path / "out"), "-q", env=local)
    assert r.code == 2, r
    assert r.err.strip().splitlines()[-1] == (
        "error: offline (RANKIFY_OFFLINE=1): not downloading https://github.com/castorini/rank_llm_data/raw/main/"
        "retrieve_results/BM25/retrieve_results_covid_top100.jsonl; to work offline, put bm25_top100.rank_llm.jsonl "
        "in beir/trec-covid/ under RANKIFY_DATA_DIR (or pass --dataset PATH)"), r
    assert server.requests == []


def test_datasets_command_online_and_offline(online):
    server, env, cache = online
    on = rankify("datasets", "--json", env=env)
    rows = {x["name"]: x for x in on.json()}
    assert rows["dl21"]["download"] and rows["dl21"]["runs_download"] == ["bm25"] and not rows["dl21"]["available"]
    assert rows["scifact"]["download"] and rows["scifact"]["corpus_download"]
    assert rows["bright-biology"]["download"]
    off = rankify("datasets", "--json", env={**env, "RANKIFY_OFFLINE": "1"})
    rows = {x["name"]: x for x in off.json()}
    assert not any(x["download"] or x["corpus_download"] or x["runs_download"] for x in rows.values())
    table = rankify("datasets", env={**env, "RANKIFY_OFFLINE": "1", "COLUMNS": "200"})
    assert table.code == 0 and "offline (RANKIFY_OFFLINE=1): nothing is downloaded" in table.out
    assert server.requests == []


def test_three_processes_downloading_at_once_share_one_verified_copy(online, tmp_path):
    import subprocess
    import sys

    server, env, cache = online
    serve_dl(server.root, "dl19")
    server.cut_after["retrieve_results_dl19_top100.jsonl"] = 700_000  # slow enough to overlap: resumes
    procs = [subprocess.Popen([sys.executable, "-m", "rankify_cli.cli", "run", "-d", "dl19", "-o", str(tmp_path / f"o{i}"),
                               "--json", "-q"], env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert round(json.loads(out)["metrics"]["nDCG@10"], 4) == 0.5058
    folder = cache / "data" / "trec-dl" / "dl19-passage"
    assert sorted(p.name for p in folder.iterdir()) == ["bm25_top100.rank_llm.jsonl", "qrels.txt", "queries.tsv"]
    assert [p for p in _files(cache / "data") if p.name.startswith(".")] == []
