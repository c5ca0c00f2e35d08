"""Shared machinery of the neural reranker families.

Device and dtype choice, one model load per process, offline-friendly errors, a content
fingerprint of the model, length-sorted batching with dynamic padding, and the score cache.

Nothing heavy is imported at module import: torch and transformers are imported inside the
functions that need them, so `rankify --help` and the BM25 path never load them.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from rankify_cli.errors import ConfigError, DependencyError
from rankify_cli import model_ids
from rankify_cli.faults import crashpoint
from rankify_cli.types import Candidate, CostClock, Query, Reranker, StageContext, charge_cached, fingerprint

from .backends import HTTP_BACKENDS, Backend, check_kind, make_backend

# (class, model, revision, dtype, device, trust_remote_code, extra) -> loaded object(s)
_LOADED: dict[tuple, Any] = {}
_LOAD_LOCK = threading.Lock()

# How many (query, document) pairs a chunk of queries may hold before it is scored. Chunks
# span queries so batches stay full, and progress is reported as each chunk finishes.
CHUNK_PAIRS = 2048
# On CUDA, finished batches are written to the cache every this many batches (each write
# synchronises the device); on CPU after every batch.
FLUSH_BATCHES_CUDA = 8

DTYPES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
}


def require_torch():
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise DependencyError(
            f"neural rerankers need torch and transformers ({e.name} is not installed): "
            "pip install 'rankify-cli[neural]'") from None
    import torch

    return torch


def pick_device(device: str | None) -> str:
    if device and device != "auto":
        return str(device)
    torch = require_torch()
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def pick_dtype(dtype: str | None, device: str) -> str:
    """A dtype name: the user's, else bf16 (or fp16) on CUDA and fp32 elsewhere."""
    if dtype and dtype != "auto":
        name = DTYPES.get(str(dtype).lower())
        if name is None:
            raise ConfigError(f"unknown dtype '{dtype}'; use one of float32, bfloat16, float16, auto")
        return name
    if device.startswith("cuda"):
        torch = require_torch()
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"


def torch_dtype(name: str):
    torch = require_torch()
    return getattr(torch, name)


def looks_like_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or os.path.isdir(os.path.expanduser(model)) or (
        os.sep in model and model.count("/") > 1)


def local_folder(model: str) -> str | None:
    """The model's folder when it names one on disk; None for a hub id."""
    path = os.path.expanduser(model)
    if os.path.isdir(path):
        return os.path.abspath(path)
    if looks_like_path(model):
        raise DependencyError(f"no model folder at '{model}'")
    return None


def offline_error(model: str, family: str, reason: str = "") -> DependencyError:
    msg = (f"cannot load model '{model}' (not in the local Hugging Face cache and offline); "
           f"pass a local folder: --reranker {family}:/path/to/model")
    return DependencyError(msg + (f" [{reason}]" if reason else ""))


def model_fingerprint(model: str, revision: str | None) -> str:
    return model_ids.model_fingerprint(model, revision, local_folder(model))


def load_once(key: tuple, loader: Callable[[], Any], model: str, family: str) -> Any:
    """Load a model once per process; turn 'not found offline' into one clear line."""
    with _LOAD_LOCK:
        if key in _LOADED:
            return _LOADED[key]
        folder = local_folder(model)
        try:
            verbosity = None
            try:  # one-line CLI output: no per-model "Loading weights" bars or load reports
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()
                verbosity = hf_logging.get_verbosity()
                hf_logging.set_verbosity_error()  # missing weights are checked (require_head), not logged
            except ImportError:
                pass
            try:
                obj = loader()
            finally:
                if verbosity is not None:
                    hf_logging.set_verbosity(verbosity)
        except (DependencyError, ConfigError):
            raise
        except ImportError as e:
            raise DependencyError(f"cannot load model '{model}': missing dependency ({e})") from None
        except Exception as e:  # hub / network / format errors
            if folder is None:
                raise offline_error(model, family, str(e).splitlines()[0][:200] if str(e) else "") from None
            raise DependencyError(f"cannot load model from folder '{model}': {str(e).splitlines()[0][:300]}") from None
        _LOADED[key] = obj
        return obj


def require_head(model: str, loading_info: dict) -> None:
    """A checkpoint without the scoring head (a bi-encoder loaded as a cross-encoder) would
    score with transformers' newly-initialised random weights: an error, never a silent run."""
    missing = sorted(loading_info.get("missing_keys") or [])
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise ConfigError(f"model '{model}' has no trained scoring head (missing weights: {shown}); it is not a "
                          "cross-encoder checkpoint (a bi-encoder? use --reranker embedding:MODEL)")


def clear_loaded() -> None:
    _LOADED.clear()


def length_batches(lengths: Sequence[int], batch_size: int, sort: bool = True) -> list[list[int]]:
    """Index batches; longest first when sorted, so padding is small and OOM shows up early."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)) if sort else list(range(len(lengths)))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad(seqs: Sequence[Sequence[int]], pad_id: int, side: str = "right"):
    """Dynamic padding to the longest sequence of the batch: (ids, attention_mask) tensors.
    The ids are laid out with numpy, flat under the mask (row-major order is sequence order on
    either side): torch.tensor on nested lists costs 5x more, as much as a small model's forward."""
    from itertools import chain

    import numpy as np

    torch = require_torch()
    lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
    width = int(lengths.max())
    cols = np.arange(width)[None, :]
    mask = cols >= (width - lengths)[:, None] if side == "left" else cols < lengths[:, None]
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    ids[mask] = np.fromiter(chain.from_iterable(seqs), dtype=np.int64, count=int(lengths.sum()))
    return torch.from_numpy(ids), torch.from_numpy(mask.astype(np.int64))


def for_dataset(table: dict | None, dataset: str):
    """A template's per-dataset entry: the dataset's own name, else the longest key it starts with
    (`dl` for dl19 and dl20, `bright-` for every BRIGHT subset); None when no key applies."""
    if not table or not dataset:
        return None
    if dataset in table:
        return table[dataset]
    prefixes = [k for k in table if dataset.startswith(k)]
    return table[max(prefixes, key=len)] if prefixes else None


def fit_document(tok, render: Callable[[str, str], str], query: str, doc_ids: list[int], prompt_len: int,
                 max_length: int, special: bool = False) -> tuple[str, list[int]]:
    """(text, ids) of the prompt whose document is the longest prefix of `doc_ids` that lets it fit
    max_length: cut the document's tokens, re-render, re-tokenize (a cut can change the tokens at
    the seam) until it fits or nothing of the document is left."""
    keep = len(doc_ids) - (prompt_len - max_length)
    while True:
        keep = max(0, keep)
        text = render(query, tok.decode(doc_ids[:keep], skip_special_tokens=True))
        ids = tok(text, add_special_tokens=special, verbose=False)["input_ids"]
        if len(ids) <= max_length or keep == 0:
            return text, ids
        keep -= len(ids) - max_length


PREFETCH = 4  # batches prepared ahead of the model: enough to hide tokenizing, bounded in memory


def prefetched(items: Sequence, prepare: Callable, name: str, depth: int = PREFETCH):
    """(item, prepare(item)) in order, prepared by one background thread at most `depth` ahead.
    A fast tokenizer releases the GIL, so tokenizing and padding the next batches runs while the
    model runs this one (on a GPU it would otherwise idle). The thread's error is raised here;
    leaving early stops it."""
    import queue

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def work():
        try:
            for it in items:
                if stop.is_set() or not put((it, prepare(it))):
                    return
        except BaseException as e:  # raised again in the consumer
            put((end, e))
            return
        put((end, None))

    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    try:
        while True:
            it, value = q.get()
            if it is end:
                if value is not None:
                    raise value
                return
            yield it, value
    finally:
        stop.set()
        thread.join()


def gather_scores(parts: list, n: int) -> list[float]:
    """Scores back in input order from (batch indices, device tensor) parts, with one
    device-to-host copy at the end (no per-batch synchronisation)."""
    torch = require_torch()
    out = [0.0] * n
    if not parts:
        return out
    values = torch.cat([t.float().reshape(-1) for _, t in parts]).cpu().tolist()
    order = [i for b, _ in parts for i in b]
    for i, v in zip(order, values):
        out[i] = v
    return out


def pair_key(config_fp: str, query_text: str, doc_text: str) -> str:
    h = hashlib.sha256()
    for part in (config_fp, query_text, doc_text):
        b = part.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


class NeuralReranker(Reranker):
    """A reranker that scores (query text, document text) pairs with a local model.

    Subclasses render their inputs (token ids, texts) and implement `_compute(pairs, ctx)`
    (fresh scores for uncached pairs) by asking `self.backend` for an operation over
    `map_batches`; they may override `_pairs(query, candidates)` when the query side is built
    from the list (E2Rank). `backend=hf|vllm|openai` picks where the model runs.
    """

    family = "neural"
    default_max_length = 512

    def __init__(self, model: str, batch_size: int = 32, max_length: int | None = None, device: str | None = None,
                 dtype: str | None = None, revision: str | None = None, trust_remote_code: bool = False,
                 backend: str | None = None, base_url: str | None = None, api_key_env: str | None = None,
                 concurrency: int = 16, timeout: float = 120.0, max_retries: int = 6, served_model: str | None = None,
                 max_per_replica: int | None = None, protocol: str = "score"):
        if not model:
            raise ConfigError(f"reranker '{self.family}' needs a model: --reranker {self.family}:MODEL")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer (got {batch_size!r})")
        self.model = str(model)
        self.batch_size = batch_size
        self.max_length = int(max_length) if max_length is not None else self.default_max_length
        if self.max_length < 8:
            raise ConfigError(f"max_length must be at least 8 (got {max_length})")
        self._device_opt, self._dtype_opt = device, dtype
        self.revision = str(revision) if revision is not None else None
        if not isinstance(trust_remote_code, bool):
            raise ConfigError("trust_remote_code must be true or false")
        self.trust_remote_code = trust_remote_code
        # where the model runs (backends/): the family renders, the backend computes
        self.backend_kind = check_kind(backend)
        if int(concurrency) < 1:
            raise ConfigError(f"concurrency must be >= 1 (got {concurrency})")
        self.served_model = str(served_model) if served_model else None
        self._remote = {"base_url": base_url, "api_key_env": api_key_env, "concurrency": int(concurrency),
                        "timeout": float(timeout), "max_retries": int(max_retries), "served_model": self.served_model,
                        "protocol": protocol, "max_per_replica": max_per_replica}
        self._backend = None
        self.sort_batches = True  # benchmarks switch it off to measure the gain
        self._fp: str | None = None
        self._resolved: tuple[str, str | None] | None = None
        self.timings: dict[str, float] = {}
        self._stats_lock = threading.Lock()
        self.render_lock = threading.Lock()
        if self.backend_kind in HTTP_BACKENDS:  # a missing or bad base URL is a spec error, not a mid-run one
            from .backends.http import HTTPClient, split_urls

            HTTPClient(split_urls(base_url or os.environ.get("OPENAI_BASE_URL")), None, 1.0, 0, 0.0)

    # -- settings ------------------------------------------------------------------------
    @property
    def device(self) -> str:
        return self._resolve()[0]

    @property
    def dtype(self) -> str:
        return self._resolve()[1]

    def _resolve(self) -> tuple[str, str | None]:
        if self._resolved is None:
            if self.backend_kind != "hf":  # the server or vLLM engine picks its device and dtype
                self._resolved = (self.backend_kind, self._dtype_opt)
            else:
                device = pick_device(self._device_opt)
                self._resolved = (device, pick_dtype(self._dtype_opt, device))
        return self._resolved

    @property
    def backend(self) -> Backend:
        """The backend that runs the model (made on first use: a cached rerun loads nothing)."""
        if self._backend is None:
            family_opts = self.backend_options()  # first: it may settle max_length (a sentence-transformers folder)
            opts = dict(self._remote) if self.backend_kind != "hf" else {}
            if self.backend_kind != "openai":
                opts.update(device=self.device if self.backend_kind == "hf" else self._device_opt, dtype=self.dtype,
                            revision=self.revision, trust_remote_code=self.trust_remote_code,
                            max_length=self.max_length)
            self._backend = make_backend(self.backend_kind, self.model, family=self.family, **opts, **family_opts)
        return self._backend

    def backend_options(self) -> dict:
        """What this family tells its backend about the model (e.g. an embedding folder's format)."""
        return {}

    @property
    def forward_calls(self) -> int:
        return self._own_calls + (self._backend.forward_calls if self._backend is not None else 0)

    _own_calls = 0

    def forward(self, model, **inputs):
        """A model call of a family that runs its model itself (not behind a backend operation
        yet), counted with the backend's."""
        self._own_calls += 1
        return model(**inputs)

    @property
    def model_fingerprint(self) -> str:
        if self._fp is None:
            self._fp = model_fingerprint(self.model, self.revision)
        return self._fp

    def extra_config(self) -> dict:
        """Family settings that change scores (template, pooling, ...)."""
        return {}

    def config(self) -> dict:
        cfg = {"family": self.family, "model": self.model, "revision": self.revision,
               "model_fingerprint": self.model_fingerprint, "dtype": self.dtype, "max_length": self.max_length,
               "trust_remote_code": self.trust_remote_code, **self.extra_config()}
        if self.backend_kind != "hf":  # hf runs keep their cache keys; others differ in the last digits
            cfg.update(backend=self.backend_kind, served_model=self.served_model or self.model)
            cfg.update({k: v for k, v in self.backend.cache_identity().items() if k not in ("backend", "model")})
            if self.backend_kind in HTTP_BACKENDS and self.family == "cross-encoder":
                cfg["protocol"] = self._remote["protocol"]
        return cfg

    def cache_fingerprint(self) -> str:
        cfg = self.config()
        if local_folder(self.model):  # a folder is what its content fingerprint says, wherever it lies
            cfg = {k: v for k, v in cfg.items() if k != "model"}
        return fingerprint(cfg)

    def load_key(self, *extra) -> tuple:
        return (type(self).__name__, self.model, self.revision, self.dtype, self.device, self.trust_remote_code, *extra)

    def hf_kwargs(self) -> dict:
        kw: dict = {"trust_remote_code": self.trust_remote_code}
        if self.revision:
            kw["revision"] = self.revision
        return kw

    # -- scoring -------------------------------------------------------------------------
    def _pairs(self, query: Query, candidates: list[Candidate]) -> list[tuple[str, str]]:
        return [(query.text, c.text) for c in candidates]

    def _compute(self, pairs: list[tuple[str, str]], ctx: StageContext) -> list[float]:
        raise NotImplementedError

    def count(self, ctx: StageContext | None, key: str, n: int = 1) -> None:
        """A stats counter that batches running side by side (HTTP) may bump at once."""
        if ctx is not None and n:
            with self._stats_lock:
                ctx.stats[key] += n

    def map_batches(self, lengths: Sequence[int], run: Callable, emit: bool = False,
                    on_batch: Callable[[list[int], list], None] | None = None,
                    prepare: Callable[[list[int]], Any] | None = None,
                    ready: Callable[[list[int]], bool] | None = None) -> list:
        """Run `run(batch of indices)` over length-sorted batches and put its results back in
        input order. Local backends run one batch at a time; HTTP backends keep up to
        `concurrency` batches in flight. With emit, each finished batch's scores are stored at once;
        `on_batch(batch, values)` is told of each finished batch (from this thread).

        With `prepare`, `run(batch, prepare(batch))`: one thread prepares (tokenizes, pads) batches
        ahead, so that work overlaps the model running locally or the requests in flight instead of
        delaying its own batch; on HTTP, batches that `ready` says need no preparing go first, so
        the first round leaves at once."""
        out: list = [None] * len(lengths)
        batches = length_batches(lengths, self.batch_size, self.sort_batches)

        def done(batch, values):
            if len(values) != len(batch):
                raise RuntimeError(f"the {self.backend_kind} backend returned {len(values)} results for {len(batch)} inputs")
            for i, v in zip(batch, values):
                out[i] = v
            if emit:
                self.emit(batch, values)
            if on_batch is not None:
                on_batch(batch, values)

        workers = min(self.backend.concurrency, len(batches))
        if workers <= 1:
            if prepare is None:
                for b in batches:
                    done(b, run(b))
            elif self.backend.runs_async:  # a GPU: the next batches are prepared while it runs this one
                for b, prepared in prefetched(batches, prepare, f"{self.family}-prepare"):
                    done(b, run(b, prepared))
            else:  # a CPU model uses every core itself: a second thread only contends (benchmarks/)
                for b in batches:
                    done(b, run(b, prepare(b)))
            return out
        from concurrent.futures import ThreadPoolExecutor, as_completed

        if ready is not None:
            batches.sort(key=lambda b: not ready(b))  # stable: the length order holds within each group
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.family}-render") as renderer, \
                ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{self.family}-batch") as pool:
            if prepare is None:
                futures = {pool.submit(run, b): b for b in batches}
                pending = list(futures)
            else:  # prepared in the order the senders take them
                prepared = [renderer.submit(prepare, b) for b in batches]
                futures = {pool.submit(lambda b, p: run(b, p.result()), b, p): b for b, p in zip(batches, prepared)}
                pending = [*futures, *prepared]
            try:
                for f in as_completed(futures):
                    done(futures[f], f.result())  # stored from this thread only
            except BaseException:
                for f in pending:
                    f.cancel()
                raise
        return out

    progress_unit = "pairs"  # the progress bar advances per scored batch of pairs

    def rerank_all(self, items: Sequence[tuple[Query, list[Candidate]]], ctx: StageContext) -> list[list[Candidate]]:
        try:
            return self._rerank_chunks(items, ctx)
        except DependencyError as e:
            preset = getattr(self, "preset", None)
            hint = f"--reranker {self.family}:/path/to/model"
            if preset and hint in e.message:  # keep the preset's template and options with local weights
                raise DependencyError(e.message.replace(hint, f"--reranker {preset}:/path/to/model")) from None
            raise

    def _rerank_chunks(self, items, ctx: StageContext) -> list[list[Candidate]]:
        out: list[list[Candidate]] = [[] for _ in items]
        chunk: list[int] = []
        size = 0
        # an HTTP backend keeps `concurrency` batches in flight: chunks big enough to fill them
        limit = max(CHUNK_PAIRS, self.backend.concurrency * self.batch_size * 16)
        for i, (_, cands) in enumerate(items):
            chunk.append(i)
            size += len(cands)
            if size >= limit:
                self._score_chunk(items, chunk, out, ctx)
                chunk, size = [], 0
        if chunk:
            self._score_chunk(items, chunk, out, ctx)
        return out

    def _score_chunk(self, items, chunk: list[int], out: list, ctx: StageContext) -> None:
        config_fp = self.cache_fingerprint()
        pairs_per_item = {i: self._pairs(*items[i]) for i in chunk}
        keys_per_item = {i: [pair_key(config_fp, q, d) for q, d in pairs_per_item[i]] for i in chunk}
        all_keys = [k for i in chunk for k in keys_per_item[i]]
        cached = {k: cache_entry(v) for k, v in
                  (ctx.store.get_many(self.family, all_keys) if ctx.store is not None else {}).items()}
        todo: dict[str, tuple[str, str]] = {}
        for i in chunk:
            for k, p in zip(keys_per_item[i], pairs_per_item[i]):
                if k not in cached and k not in todo:
                    todo[k] = p
        hits = sum(1 for k in all_keys if k in cached)
        ctx.stats["cached_scores"] += hits
        # what the cached entries cost when they were computed: a rerun reports that cost, not the lookup's
        charge_cached(ctx, sum(v[1] for v in cached.values()), sum(v[2] for v in cached.values()))
        ctx.stats["compute_s"] += 0.0  # timed by the chunk's clock below (none when all of it was cached)
        advanced = len(all_keys) - len(todo)  # cached pairs (and repeats of a pair) are done already
        if advanced:
            ctx.progress(advanced)
        fresh: dict[str, float] = {}
        if todo:
            import time

            before = self.forward_calls
            sink = _Sink(list(todo), ctx, time.perf_counter(), before)
            self._sink = sink
            try:
                scores = self._compute(list(todo.values()), ctx)
                self._flush()
            finally:
                self._sink = None
            fresh = {k: float(s) for k, s in zip(todo, scores)}
            # pairs no batch reported (families that do not emit) share the time since the last batch
            rest = [k for k in todo if k not in sink.costs]
            if rest:
                sink.charge(rest, time.perf_counter(), self.forward_calls)
            ctx.stats["scored_pairs"] += len(fresh)
            ctx.stats["forward_calls"] += self.forward_calls - before
            for k, v in self.backend.stats().items():
                ctx.stats[k] = v
            ctx.stats["compute_s"] += sum(c[0] for c in sink.costs.values())
            if ctx.store is not None:
                ctx.store.put_many(self.family, {k: [v, *sink.costs[k]] for k, v in fresh.items()})
            advanced += sink.advanced
        if len(all_keys) > advanced:
            ctx.progress(len(all_keys) - advanced)
        for i in chunk:
            _, cands = items[i]
            scores = [fresh[k] if k in fresh else cached[k][0] for k in keys_per_item[i]]
            out[i] = [Candidate(c.doc_id, s, c.text) for c, s in zip(cands, scores)]

    # -- per-batch persistence -------------------------------------------------------------
    _sink = None  # the _Sink of the chunk being computed

    def emit(self, batch: list[int], scores) -> None:
        """A finished model batch (indices into the pairs given to `_compute`): store its
        scores now, with the seconds and model calls that produced them, so a killed run never
        redoes it and a rerun from the cache still reports what it cost; advance the progress bar.

        On CUDA, parts are flushed every FLUSH_BATCHES_CUDA batches instead: each flush is a
        device-to-host synchronisation.
        """
        sink = self._sink
        if sink is None:
            return
        import time

        sink.charge([sink.keys[i] for i in batch], time.perf_counter(), self.forward_calls)
        if sink.ctx.store is not None:
            sink.parts.append((batch, scores))
            if not str(self.device).startswith("cuda") or len(sink.parts) >= FLUSH_BATCHES_CUDA:
                self._flush()
        crashpoint("rerank-batch")
        if batch:
            sink.ctx.progress(len(batch))
            sink.advanced += len(batch)

    def _flush(self) -> None:
        sink = self._sink
        if sink is None or not sink.parts or sink.ctx.store is None:
            return
        done: dict[str, list] = {}
        for batch, scores in sink.parts:
            values = scores.float().reshape(-1).cpu().tolist() if hasattr(scores, "cpu") else list(scores)
            for i, v in zip(batch, values):
                done[sink.keys[i]] = [float(v), *sink.costs[sink.keys[i]]]
        sink.ctx.store.put_many(self.family, done)
        sink.parts.clear()


class _Sink(CostClock):
    """The chunk being computed: its keys, finished parts not yet stored, and what each
    finished pair cost (seconds, model calls), split evenly over the pairs of its batch."""

    def __init__(self, keys: list[str], ctx: StageContext, t0: float, calls0: int):
        super().__init__(t0, calls0)
        self.keys, self.ctx = keys, ctx
        self.parts: list = []
        self.advanced = 0


def cache_entry(value) -> tuple[float, float, float]:
    """(score, compute seconds, model calls) of a stored score; entries written before costs
    were stored hold the score alone and cost nothing known."""
    if isinstance(value, list):
        return float(value[0]), float(value[1]) if len(value) > 1 else 0.0, float(value[2]) if len(value) > 2 else 0.0
    return float(value), 0.0, 0.0


def read_template(name: str, folder: Path | None = None) -> tuple[str, dict]:
    """A prompt template by name (rerankers/templates/NAME.json) or by path to a JSON file."""
    folder = folder or Path(__file__).parent / "templates"
    path = Path(os.path.expanduser(name))
    if not (name.endswith(".json") and path.is_file()):
        path = folder / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.json"))
        raise ConfigError(f"unknown template '{name}'; known: {', '.join(known)} (or a path to a .json file)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"template {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"template {path} must be a JSON object")
    return path.stem, data


def iter_chunks(seq: Sequence, n: int) -> Iterable[Sequence]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]
