"""Errors the user can fix. Each renders as one line; the CLI maps them to exit code 2."""

from __future__ import annotations

from pathlib import Path


class RankifyError(Exception):
    """An error caused by input or configuration, reported without a traceback."""

    exit_code = 2

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        self.message = message
        self.path = str(path) if path is not None else None
        self.line = line
        super().__init__(self.render())

    def render(self) -> str:
        where = ""
        if self.path is not None:
            where = f"{self.path}:{self.line}: " if self.line is not None else f"{self.path}: "
        return f"{where}{self.message}"


class InputError(RankifyError):
    """A malformed or missing input file."""


class ConfigError(RankifyError):
    """An unknown name, option or combination of options."""


class DependencyError(RankifyError):
    """An optional dependency or model that is not installed / not available offline."""
