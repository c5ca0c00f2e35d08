"""Shared test setup: real data from ../shared/data (RANKIFY_DATA_DIR), no network, and a
private cache per test session so tests never read a developer's cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("RANKIFY_DATA_DIR") or REPO.parent / "shared" / "data").resolve()


@pytest.fixture(scope="session", autouse=True)
def _environment(tmp_path_factory):
    os.environ["RANKIFY_DATA_DIR"] = str(DATA)
    os.environ["RANKIFY_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("RANKIFY_CACHE_DIR", str(tmp_path_factory.mktemp("rankify-cache")))
    yield


@pytest.fixture
def data_dir() -> Path:
    if not (DATA / "beir" / "scifact").is_dir():
        pytest.fail(f"real data not found at {DATA}: set RANKIFY_DATA_DIR to ../shared/data")
    return DATA


class Result:
    def __init__(self, proc: subprocess.CompletedProcess):
        self.code = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr

    def json(self):
        return json.loads(self.out)

    def __repr__(self):
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


def console_script() -> list[str]:
    """The installed `rankify` console script next to this interpreter (what a user runs);
    `python -m rankify_cli.cli` only where the package is not installed."""
    script = Path(sys.executable).parent / "rankify"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "rankify_cli.cli"]


def rankify(*args: str, env: dict | None = None, cwd: str | Path | None = None, timeout: float = 600) -> Result:
    """Run the real `rankify` console script in a fresh process, as a user would."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("RANKIFY_DEBUG", None)
    proc = subprocess.run([*console_script(), *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=timeout)
    return Result(proc)


@pytest.fixture
def cli():
    return rankify
