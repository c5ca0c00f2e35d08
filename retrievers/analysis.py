"""A Lucene-like English analyzer, the one Anserini/Pyserini use for BEIR and MS MARCO.

Lucene's DefaultEnglishAnalyzer: StandardTokenizer (Unicode word breaks) -> possessive
filter -> lowercase -> stop words -> Porter stemmer. The regex approximates UAX#29: letters
joined by . ' ’ :, digits joined by . , ' (so "U.S", "3.14", "1,000", "don't" stay whole).
"""

from __future__ import annotations

import re
from functools import lru_cache

# Lucene's EnglishAnalyzer.ENGLISH_STOP_WORDS_SET (33 words).
LUCENE_STOPWORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their "
    "then there these they this to was will with".split()
)

_TOKEN = re.compile(
    r"\w+(?:(?:[.'\u2019]|(?<=\d),(?=\d)|(?<=[^\W\d_]):(?=[^\W\d_]))\w+)*"
)


class Analyzer:
    """Text -> list of index terms. Callable, picklable, and described by `config()`."""

    def __init__(self, stopwords: str = "lucene", stemmer: str = "porter", lowercase: bool = True):
        if stopwords not in ("lucene", "none"):
            raise ValueError(f"stopwords must be 'lucene' or 'none', got '{stopwords}'")
        self.stopwords = stopwords
        self.stemmer = stemmer
        self.lowercase = lowercase
        self._stop = LUCENE_STOPWORDS if stopwords == "lucene" else frozenset()
        self._stem = _stemmer(stemmer) if stemmer != "none" else None

    def config(self) -> dict:
        return {"tokenizer": "uax29-regex-v1", "stopwords": self.stopwords, "stemmer": self.stemmer,
                "lowercase": self.lowercase}

    def __call__(self, text: str) -> list[str]:
        stop = self._stop
        out = []
        for tok in _TOKEN.findall(text):
            if tok.endswith(("'s", "\u2019s", "'S", "\u2019S")):
                tok = tok[:-2]
            if self.lowercase:
                tok = tok.lower()
            if tok and tok not in stop:
                out.append(tok)
        return self._stem.stemWords(out) if self._stem else out


@lru_cache(maxsize=None)
def _stemmer(name: str):
    import Stemmer  # PyStemmer: Snowball's C stemmers; "porter" is Lucene's PorterStemFilter algorithm

    return Stemmer.Stemmer(name)
