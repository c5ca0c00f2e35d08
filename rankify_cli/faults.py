"""Crash injection for the reliability tests: `RANKIFY_CRASH_AT=name[:n]` makes the process
kill itself with SIGKILL the n-th time (default 1st) it passes the named point, exactly as a
`kill -9` from outside would. Unset (always, outside tests) it costs one dict lookup."""

from __future__ import annotations

import os
import signal

_seen: dict[str, int] = {}


def crashpoint(name: str) -> None:
    target = os.environ.get("RANKIFY_CRASH_AT")
    if not target:
        return
    point, _, nth = target.partition(":")
    if point != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
