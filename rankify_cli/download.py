"""Downloads for online users: BEIR zips (checksum verified) and BRIGHT via Hugging Face.

Only reached when a dataset is not found locally and the process is not offline. A failed
download returns None so the caller prints the one 'provide a path' message.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from .catalog import BEIR_URL, Entry

TIMEOUT_S = 30


def fetch(entry: Entry, target: Path) -> tuple[Path, str] | None:
    try:
        if entry.beir_md5:
            _fetch_beir(entry, target)
        elif entry.hf_bright_task:
            _fetch_bright(entry, target)
        else:
            return None
    except Exception as e:  # network, checksum or missing `datasets`: fall back to the message
        print(f"warning: download of '{entry.name}' failed: {e}", file=sys.stderr)
        return None
    return target, "download"


def _fetch_beir(entry: Entry, target: Path) -> None:
    url = BEIR_URL.format(name=entry.name)
    print(f"downloading {url}", file=sys.stderr)
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as r:
        blob = r.read()
    digest = hashlib.md5(blob).hexdigest()
    if digest != entry.beir_md5:
        raise ValueError(f"checksum mismatch for {url}: md5 {digest}, expected {entry.beir_md5}")
    tmp = Path(tempfile.mkdtemp(dir=target.parent if target.parent.exists() else None))
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as z:
            for member in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
                data = z.read(f"{entry.name}/{member}")
                out = tmp / (member + ".gz" if member == "corpus.jsonl" else member)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(gzip.compress(data, mtime=0) if out.suffix == ".gz" else data)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(tmp), str(target))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fetch_bright(entry: Entry, target: Path) -> None:
    from datasets import load_dataset  # optional extra: rankify-cli[hub]

    rows = load_dataset("xlang-ai/BRIGHT", "examples", split=entry.hf_bright_task)
    target.mkdir(parents=True, exist_ok=True)
    lines, qrels = [], []
    for row in rows:
        lines.append(json.dumps(dict(row), ensure_ascii=False))
        qrels += [f"{row['id']}\t0\t{gid}\t1" for gid in row["gold_ids"]]
    (target / "examples.jsonl.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0))
    (target / "qrels.txt").write_text("\n".join(qrels) + "\n")
