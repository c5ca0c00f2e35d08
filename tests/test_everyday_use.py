"""Everyday use through the installed `rankify` console script (issue 11): exit codes and
help, discoverable rerankers, subsets, accumulating measures, honest cost columns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import console_script, rankify


def test_console_script_is_the_installed_one():
    assert console_script()[0].endswith("/rankify"), console_script()


@pytest.mark.parametrize("args, needle", [
    (["run", "--bogus"], "No such option: --bogus"),
    (["run", "--depth", "abc"], "'--depth'"),
    (["bench"], "Missing argument"),
    (["nosuchcommand"], "No such command"),
])
def test_usage_errors_print_the_usage_line_and_exit_2(args, needle):
    r = rankify(*args)
    assert r.code == 2, r
    assert r.err.startswith("Usage: rankify"), r
    assert needle in r.err, r
    assert "internal error" not in r.err and "Traceback" not in r.err, r


@pytest.mark.parametrize("args", [[], ["cache"], ["--help"], ["-h"], ["run", "-h"], ["cache", "-h"]])
def test_help_screens_exit_0(args):
    r = rankify(*args)
    assert r.code == 0, r
    assert "Usage: rankify" in r.out, r
    assert "internal error" not in r.out + r.err, r


def test_version():
    from rankify_cli import __version__

    r = rankify("--version")
    assert r.code == 0, r
    assert r.out.strip() == f"rankify {__version__}"
