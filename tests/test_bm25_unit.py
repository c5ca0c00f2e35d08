"""BM25 internals: Lucene's length norms, the score formula, the analyzer, tie handling."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rankify_cli.retrievers.analysis import Analyzer
from rankify_cli.retrievers.bm25 import BM25, lucene_norm_lengths, top_k
from rankify_cli.types import Document, StageContext, Query


def smallfloat_roundtrip(n: int) -> int:
    """Lucene's SmallFloat.intToByte4 then byte4ToInt, transcribed bit by bit."""
    def long_to_int4(i):
        nb = i.bit_length()
        if nb < 4:
            return i
        shift = nb - 4
        return ((i >> shift) & 7) | ((shift + 1) << 3)

    def int4_to_long(i):
        bits, shift = i & 7, (i >> 3) - 1
        return bits if shift == -1 else (bits | 8) << shift

    free = 255 - long_to_int4(2**31 - 1)
    if n < free:
        return n
    return free + int4_to_long(long_to_int4(n - free))


def test_norm_quantisation_matches_lucene_for_every_length_up_to_100k():
    lengths = np.arange(0, 100_000)
    expected = np.array([smallfloat_roundtrip(int(n)) for n in lengths])
    assert (lucene_norm_lengths(lengths) == expected).all()
    assert smallfloat_roundtrip(23) == 23 and smallfloat_roundtrip(100) == 96


class TinySource:
    name = "tiny"

    def __init__(self, docs):
        self.docs = docs

    def corpus(self):
        docs = self.docs

        class C:
            def documents(self):
                return iter(docs)

            def fingerprint(self):
                return "tiny-" + str(len(docs))

            def __len__(self):
                return len(docs)

        return C()

    def pre_retrieved(self, name):
        raise AssertionError


def test_scores_equal_lucene_formula_by_hand():
    docs = [Document("a", "flea flea cat"), Document("b", "dog cat bird fish"), Document("c", "flea")]
    r = BM25(stemmer="none")
    run = r.retrieve(TinySource(docs), [Query("q", "flea flea")], 10, StageContext())
    n, avgdl, k1, b = 3, 8 / 3, 0.9, 0.4
    df = 2
    idf = math.log(1 + (n - df + 0.5) / (df + 0.5))

    def term(tf, dl):
        return idf * tf / (tf + k1 * (1 - b + b * dl / avgdl))

    expected = {"a": 2 * term(2, 3), "c": 2 * term(1, 1)}  # query term counted twice, as Anserini does
    got = {c.doc_id: c.score for c in run["q"]}
    assert set(got) == {"a", "c"}  # b matches no query term: not retrieved, like Lucene
    for d, v in expected.items():
        assert got[d] == pytest.approx(v, rel=1e-6)


def test_unknown_query_terms_give_empty_list_and_a_count():
    ctx = StageContext()
    run = BM25().retrieve(TinySource([Document("a", "flea")]), [Query("q", "zebra")], 10, ctx)
    assert run["q"] == [] and ctx.stats["queries_without_known_terms"] == 1


def test_top_k_breaks_ties_by_doc_id_descending_even_at_the_cut():
    scores = np.array([1.0, 2.0, 2.0, 2.0, 0.5])
    ids = ["e", "d", "b", "c", "a"]
    got = top_k(scores, ids, 2, positive_only=True)
    assert [c.doc_id for c in got] == ["d", "c"]


@pytest.mark.parametrize("text,tokens", [
    ("The cat's toys", ["cat", "toi"]),                   # possessive, stopword, Porter
    ("U.S. economy in 3.14 seconds", ["u.", "economi", "3.14", "second"]),  # u.s -> Porter -> u.
    ("1,000 genomes", ["1,000", "genom"]),
    ("don't STOP-words", ["don't", "stop", "word"]),
    ("snake_case and CamelCase", ["snake_cas", "camelcas"]),
])
def test_analyzer_follows_lucene_english_analysis(text, tokens):
    assert Analyzer()(text) == tokens


def test_index_is_cached_on_disk(tmp_path):
    docs = [Document(str(i), f"flea number {i}") for i in range(50)]
    ctx = StageContext(cache_dir=str(tmp_path))
    first = BM25().retrieve(TinySource(docs), [Query("q", "flea 7")], 5, ctx)
    ctx2 = StageContext(cache_dir=str(tmp_path))
    r2 = BM25()
    second = r2.retrieve(TinySource(docs), [Query("q", "flea 7")], 5, ctx2)
    assert ctx2.stats["bm25_index_cache_hits"] == 1 and "index_s" not in r2.timings
    assert [(c.doc_id, c.score) for c in first["q"]] == [(c.doc_id, c.score) for c in second["q"]]
    # different parameters -> a different index
    ctx3 = StageContext(cache_dir=str(tmp_path))
    BM25(b=1.0).retrieve(TinySource(docs), [Query("q", "flea 7")], 5, ctx3)
    assert ctx3.stats["bm25_index_cache_hits"] == 0
