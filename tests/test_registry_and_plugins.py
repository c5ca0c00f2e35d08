"""Spec strings, the registry's errors, and third-party rerankers through entry points."""

from __future__ import annotations

import textwrap

import pytest

from rankify_cli import registry
from rankify_cli.errors import ConfigError

PLUGIN = '''
from rankify_cli.types import Candidate, Reranker


class Reverse(Reranker):
    """Reverses the candidate list: a deliberately bad reranker for tests."""

    def __init__(self, model: str = "none", strength: float = 1.0):
        self.model, self.strength = model, strength

    def config(self):
        return {"family": "reverse", "model": self.model, "strength": self.strength}

    def rerank_all(self, items, ctx):
        out = []
        for query, cands in items:
            n = len(cands)
            out.append([Candidate(c.doc_id, float(i), c.text) for i, c in enumerate(cands)])
            ctx.stats["reversed_lists"] += 1
            ctx.progress(1)
        return out
'''


def test_parse_spec():
    s = registry.parse_spec("reranker", "cross-encoder:/models/x?batch_size=64&fp16=true&temperature=0.3"
                                        "&instruction=Given a claim, find evidence")
    assert (s.name, s.argument) == ("cross-encoder", "/models/x")
    assert s.options == {"batch_size": 64, "fp16": True, "temperature": 0.3,
                         "instruction": "Given a claim, find evidence"}
    assert str(registry.parse_spec("retriever", "bm25?b=1.0")) == "bm25?b=1.0"


def test_build_bm25_variants():
    assert registry.build("retriever", "bm25").config()["backend"] == "bm25s"
    r = registry.build("retriever", "bm25:rank-bm25?k1=1.2&b=0.75")
    assert (r.backend, r.k1, r.b) == ("rank-bm25", 1.2, 0.75)
    assert r.spec == "bm25:rank-bm25?b=0.75&k1=1.2"


@pytest.mark.parametrize("spec,message", [
    ("nope", "unknown retriever 'nope'; known: bm25"),
    ("bm25?x", "bad option 'x'"),
    ("run", "run: needs a name or a file"),
    ("bm25?stopwords=klingon", "stopwords must be 'lucene' or 'none'"),
])
def test_retriever_spec_errors(spec, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("?", r"\?")):
        registry.build("retriever", spec)


def _install_plugin(tmp_path):
    (tmp_path / "fakeplugin.py").write_text(PLUGIN)
    dist = tmp_path / "fakeplugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent("""
        [rankify_cli.rerankers]
        reverse = fakeplugin:Reverse
    """))
    return {"PYTHONPATH": str(tmp_path)}


def test_entry_point_plugin_runs_as_a_cascade(cli, tmp_path, data_dir):
    env = _install_plugin(tmp_path)
    out = tmp_path / "res"
    one = cli("run", "-d", "dl19", "-r", "run:bm25", "--reranker", "reverse", "-o", str(out), "--json", env=env)
    assert one.code == 0, one
    assert one.json()["metrics"]["nDCG@10"] < 0.3
    assert one.json()["run_info"]["stages"][1]["stats"]["reversed_lists"] == 43
    # reversing twice restores BM25's order exactly: the cascade passes each stage's output on
    two = cli("run", "-d", "dl19", "-r", "run:bm25", "--reranker", "reverse", "--reranker", "reverse?strength=2",
              "-o", str(out), "--json", env=env)
    assert two.code == 0, two
    assert round(two.json()["metrics"]["nDCG@10"], 4) == 0.5058
    assert two.json()["pipeline"] == "run:bm25 >> reverse@100 >> reverse?strength=2@100"
    bad = cli("run", "-d", "dl19", "-r", "run:bm25", "--reranker", "reverse?colour=red", "-o", str(out), env=env)
    assert bad.code == 2 and "unknown option(s) colour for reranker 'reverse'; accepted: strength" in bad.err, bad
    listed = cli("run", "-d", "dl19", "--reranker", "missing", "-o", str(out), env=env)
    assert listed.code == 2 and "known: " in listed.err and "reverse" in listed.err, listed
