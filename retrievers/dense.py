"""`dense:<model or path>`: bi-encoder first stage with exact inner-product search.

The corpus (title + " " + text, as BEIR/MTEB embed it) is encoded once with a
sentence-transformers model (a folder with modules.json: its own transformer, pooling and
normalisation) or any transformers encoder (mean / CLS pooling), in length-sorted batches,
and the embeddings are cached on disk under `<cache>/dense/<key>/`, keyed by the model's
content, the corpus fingerprint and every encoding setting; query embeddings are cached the
same way, keyed by the query texts. Search is an exact inner product in numpy (blocked
matrix products, then the toolkit's tie rule); with `search=faiss`, or `search=auto` on a
corpus of `faiss_min_docs` documents or more when faiss is installed, an exact faiss
IndexFlatIP does it. With `normalize=true` (the default) the inner product is cosine.

Options: batch_size, max_length, normalize, pooling (auto|mean|cls), query_prefix,
document_prefix, search (auto|numpy|faiss), device, revision.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from rankify_cli.errors import DependencyError
from rankify_cli.formats import atomic_dir
from rankify_cli.model_ids import model_fingerprint
from rankify_cli.types import Candidate, Query, Retriever, Run, Source, StageContext, charge_cached, fingerprint

CACHE_FORMAT = 1
POOLINGS = ("auto", "mean", "cls")
SEARCHES = ("auto", "numpy", "faiss")
_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".h5", ".msgpack", ".gguf")

_LOADED: dict[tuple, object] = {}  # one model per (model, backend, device) per process


def _require_torch():
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise DependencyError(f"dense retrieval needs torch and transformers ({e.name} is not installed): "
                              "pip install 'rankify-cli[neural]'") from None
    import torch

    return torch


class Dense(Retriever):
    """`dense:<model or folder>`; the inner product of query and document embeddings."""

    def __init__(self, model: str = "", batch_size: int = 32, max_length: int | None = None, normalize: bool = True,
                 pooling: str = "auto", query_prefix: str = "", document_prefix: str = "", search: str = "auto",
                 faiss_min_docs: int = 200_000, device: str = "auto", revision: str | None = None):
        if not model:
            raise ValueError("dense needs a model, e.g. dense:sentence-transformers/all-MiniLM-L6-v2 "
                             "or dense:/path/to/model")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)} (got {pooling!r})")
        if search not in SEARCHES:
            raise ValueError(f"search must be one of {', '.join(SEARCHES)} (got {search!r})")
        if int(batch_size) < 1:
            raise ValueError("batch_size must be positive")
        self.model, self.batch_size = str(model), int(batch_size)
        self.max_length_opt = int(max_length) if max_length else None
        self.normalize, self.pooling_opt = bool(normalize), pooling
        self.query_prefix, self.document_prefix = str(query_prefix), str(document_prefix)
        self.search_opt, self.faiss_min_docs = search, int(faiss_min_docs)
        self.device_opt, self.revision = str(device), (str(revision) if revision else None)
        self.spec = f"dense:{self.model}"
        self.timings: dict[str, float] = {}
        self.encoded = {"documents": 0, "queries": 0}  # texts actually run through the model
        self._resolved: dict | None = None

    # -- model identity and settings -------------------------------------------------------
    def _folder(self) -> Path | None:
        path = Path(os.path.expanduser(self.model))
        if path.is_dir():
            return path.resolve()
        if self.model.startswith(("/", "./", "../", "~")):
            raise DependencyError(f"no model folder at '{self.model}'")
        return None

    def _model_file(self, name: str) -> Path | None:
        folder = self._folder()
        if folder is not None:
            return folder / name if (folder / name).is_file() else None
        try:
            from huggingface_hub import try_to_load_from_cache

            p = try_to_load_from_cache(self.model, name, revision=self.revision)
            return Path(p) if isinstance(p, str) else None
        except Exception:
            return None

    def resolved(self) -> dict:
        """Backend, pooling, max length and model fingerprint (read from files, no weights loaded)."""
        if self._resolved is None:
            folder = self._folder()
            modules = self._model_file("modules.json")
            backend = "sentence-transformers" if modules is not None and self.pooling_opt == "auto" else "transformers"
            max_length = self.max_length_opt
            if max_length is None and backend == "sentence-transformers":
                cfg = self._model_file("sentence_bert_config.json")
                if cfg is not None:
                    try:
                        max_length = int(json.loads(cfg.read_text()).get("max_seq_length") or 0) or None
                    except (OSError, ValueError, TypeError):
                        max_length = None
            self._resolved = {
                "backend": backend,
                "pooling": "model" if backend == "sentence-transformers" else
                ("mean" if self.pooling_opt == "auto" else self.pooling_opt),
                "max_length": max_length or 512,
                "model_fingerprint": model_fingerprint(self.model, self.revision, folder),
            }
        return self._resolved

    def config(self) -> dict:
        r = self.resolved()
        return {"retriever": "dense", "model": self.model, "model_fingerprint": r["model_fingerprint"],
                "backend": r["backend"], "pooling": r["pooling"], "max_length": r["max_length"],
                "normalize": self.normalize, "query_prefix": self.query_prefix,
                "document_prefix": self.document_prefix, "fields": "title+text",
                "similarity": "cosine" if self.normalize else "dot"}

    def _encoding_key(self) -> dict:
        """Settings that change an embedding (search settings do not)."""
        cfg = self.config()
        return {k: cfg[k] for k in ("model_fingerprint", "backend", "pooling", "max_length", "normalize")}

    # -- model loading -----------------------------------------------------------------------
    def _device(self) -> str:
        if self.device_opt not in ("", "auto"):
            return self.device_opt
        torch = _require_torch()
        return "cuda" if torch.cuda.is_available() else "cpu"

    def _load(self):
        torch = _require_torch()
        r = self.resolved()
        device = self._device()
        key = (self.model, self.revision, r["backend"], device)
        if key in _LOADED:
            return _LOADED[key]
        kw = {"revision": self.revision} if self.revision else {}
        try:
            if r["backend"] == "sentence-transformers":
                from sentence_transformers import SentenceTransformer

                model = SentenceTransformer(self.model, device=device, **kw)
                model.max_seq_length = r["max_length"]
                loaded = ("st", model.tokenizer, model)
            else:
                from transformers import AutoModel, AutoTokenizer

                tok = AutoTokenizer.from_pretrained(self.model, **kw)
                model = AutoModel.from_pretrained(self.model, **kw).to(device)
                loaded = ("hf", tok, model)
        except ImportError as e:
            raise DependencyError(f"dense retrieval needs {e.name}: pip install 'rankify-cli[neural]'") from None
        except OSError as e:
            raise DependencyError(
                f"cannot load model '{self.model}' (not a folder and not in the local Hugging Face cache, or "
                f"offline): pass a local folder, e.g. --retriever dense:/path/to/all-MiniLM-L6-v2 [{e}]"[:600]) from None
        loaded[2].eval()
        _LOADED[key] = loaded
        return loaded

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        torch = _require_torch()
        kind, tok, model = self._load()
        r = self.resolved()
        with torch.inference_mode():
            if kind == "st":
                out = model.encode(texts, batch_size=len(texts), convert_to_numpy=True, show_progress_bar=False,
                                   normalize_embeddings=False)
                return np.asarray(out, dtype=np.float32)
            enc = tok(texts, padding=True, truncation=True, max_length=r["max_length"], return_tensors="pt")
            enc = {k: v.to(model.device) for k, v in enc.items()}
            hidden = model(**enc).last_hidden_state
            if r["pooling"] == "cls":
                pooled = hidden[:, 0]
            else:
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return pooled.float().cpu().numpy()

    def encode(self, texts: list[str], what: str = "documents", ctx: StageContext | None = None) -> np.ndarray:
        """Embeddings of `texts` (float32, one row each), in length-sorted batches, with progress."""
        ctx = ctx or StageContext()
        out: np.ndarray | None = None
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # longest first: OOM shows at once
        t0, last = time.perf_counter(), time.perf_counter()
        done = 0
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            emb = self._encode_batch([texts[i] for i in idx])
            if out is None:
                out = np.empty((len(texts), emb.shape[1]), dtype=np.float32)
            out[idx] = emb
            done += len(idx)
            now = time.perf_counter()
            if now - last >= 10 or done == len(texts):
                rate = done / max(now - t0, 1e-9)
                eta = (len(texts) - done) / max(rate, 1e-9)
                ctx.log(f"dense: embedded {done:,}/{len(texts):,} {what} ({100 * done / len(texts):.0f}%, "
                        f"{rate:.1f}/s, ETA {eta:.0f} s)")
                last = now
        if out is None:
            return np.zeros((0, 1), dtype=np.float32)
        if self.normalize:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out /= np.maximum(norms, 1e-12)
        self.encoded[what] = self.encoded.get(what, 0) + len(texts)
        ctx.stats[f"dense_{what}_encoded"] += len(texts)
        # what the embeddings cost, kept with them in the cache (meta.json) for a rerun to report
        self.last_cost = (time.perf_counter() - t0, float(-(-len(texts) // self.batch_size)))
        ctx.stats["dense_encode_s"] += self.last_cost[0]
        ctx.stats["forward_calls"] += self.last_cost[1]
        return out

    # -- cache ---------------------------------------------------------------------------------
    def _cache_path(self, ctx: StageContext, kind: str, content_fp: str, prefix: str) -> Path | None:
        if not ctx.cache_dir:
            return None
        key = fingerprint({"format": CACHE_FORMAT, "kind": kind, "content": content_fp, "prefix": prefix,
                           **self._encoding_key()})[:24]
        return Path(ctx.cache_dir) / "dense" / f"{kind}-{key}"

    def _cached(self, path: Path | None, ids: list[str], texts_fn, what: str, ctx: StageContext) -> np.ndarray:
        if path is not None and (path / "embeddings.npy").is_file():
            try:
                stored = json.loads((path / "ids.json").read_text())
                if stored == ids:
                    emb = np.load(path / "embeddings.npy")
                    meta = json.loads((path / "meta.json").read_text())
                    ctx.stats[f"dense_{what}_cache_hits"] += 1
                    ctx.stats["cached_embeddings"] += len(ids)
                    # what they cost when computed (folders written before costs were kept: unknown, 0)
                    charge_cached(ctx, meta.get("compute_s", 0.0), meta.get("model_calls", 0.0))
                    return emb
            except (OSError, ValueError):
                pass
        self.last_cost = (0.0, 0.0)
        emb = self.encode(texts_fn(), what, ctx)
        cost = self.last_cost
        if path is not None:
            def write(tmp: Path):
                np.save(tmp / "embeddings.npy", emb)
                (tmp / "ids.json").write_text(json.dumps(ids))
                (tmp / "meta.json").write_text(json.dumps({"model": self.model, "count": len(ids),
                                                           "dim": int(emb.shape[1]), **self._encoding_key(),
                                                           "compute_s": cost[0], "model_calls": cost[1]}))
            atomic_dir(path, write)
        return emb

    def document_embeddings(self, source: Source, ctx: StageContext) -> tuple[list[str], np.ndarray]:
        corpus = source.corpus()
        docs = list(corpus.documents())
        ids = [d.id for d in docs]
        t0 = time.perf_counter()
        path = self._cache_path(ctx, "corpus", corpus.fingerprint(), self.document_prefix)
        if path is None or not (path / "embeddings.npy").is_file():
            ctx.log(f"dense: embedding {len(docs):,} documents with {self.model}")
        emb = self._cached(path, ids, lambda: [self.document_prefix + d.full_text for d in docs], "documents", ctx)
        self.timings["corpus_embed_s"] = time.perf_counter() - t0
        return ids, emb

    def query_embeddings(self, queries: Sequence[Query], ctx: StageContext) -> np.ndarray:
        t0 = time.perf_counter()
        ids = [q.id for q in queries]
        content = fingerprint([[q.id, q.text] for q in queries])
        path = self._cache_path(ctx, "queries", content, self.query_prefix)
        emb = self._cached(path, ids, lambda: [self.query_prefix + q.text for q in queries], "queries", ctx)
        self.timings["query_embed_s"] = time.perf_counter() - t0
        return emb

    # -- search ---------------------------------------------------------------------------------
    def _use_faiss(self, n_docs: int) -> bool:
        if self.search_opt == "numpy":
            return False
        try:
            import faiss  # noqa: F401
        except ImportError:
            if self.search_opt == "faiss":
                raise DependencyError("search=faiss needs faiss: pip install faiss-cpu") from None
            return False
        return self.search_opt == "faiss" or n_docs >= self.faiss_min_docs

    def retrieve(self, source: Source, queries: Sequence[Query], k: int, ctx: StageContext) -> Run:
        doc_ids, D = self.document_embeddings(source, ctx)
        Q = self.query_embeddings(queries, ctx)
        t0 = time.perf_counter()
        lists = search(Q, D, doc_ids, k, use_faiss=self._use_faiss(len(doc_ids)), progress=ctx.progress)
        self.timings["search_s"] = time.perf_counter() - t0
        return {q.id: cands for q, cands in zip(queries, lists)}


def search(Q: np.ndarray, D: np.ndarray, doc_ids: list[str], k: int, use_faiss: bool = False,
           block: int = 256, progress=lambda n: None) -> list[list[Candidate]]:
    """Exact top-k by inner product, in the toolkit's order (score desc, ties by doc id desc)."""
    from .bm25 import doc_id_order, top_k

    if len(doc_ids) == 0 or len(Q) == 0:
        progress(len(Q))
        return [[] for _ in range(len(Q))]
    id_order = doc_id_order(doc_ids)
    out: list[list[Candidate]] = []
    if use_faiss:
        import faiss

        index = faiss.IndexFlatIP(D.shape[1])
        index.add(np.ascontiguousarray(D, dtype=np.float32))
        # one extra hit per query lets ties at the cut be re-decided by doc id below
        kk = min(len(doc_ids), k + 1)
        for start in range(0, len(Q), block):
            scores, idx = index.search(np.ascontiguousarray(Q[start:start + block], dtype=np.float32), kk)
            for s_row, i_row in zip(scores, idx):
                keep = i_row >= 0
                pairs = sorted(zip((-s_row[keep]).tolist(), id_order[i_row[keep]].tolist(), i_row[keep].tolist()))
                out.append([Candidate(doc_ids[i], -s) for s, _, i in pairs[:k]])
            progress(min(block, len(Q) - start))
        return out
    for start in range(0, len(Q), block):
        S = Q[start:start + block] @ D.T
        for row in S:
            out.append(top_k(row, doc_ids, k, positive_only=False, id_order=id_order))
        progress(len(S))
    return out
