"""The backend layer shared by the LLM reranker families (listwise, setwise, groupwise).

A paradigm is written once as a *plan*: a generator that yields lists of chat requests and
receives their responses, so it never knows where the model runs. A driver runs the plans of
all queries on one backend:

* `hf` — local `transformers`: chat template, left padding, batched greedy generation. The
  driver advances every query's plan in lockstep so requests of different queries share
  batches.
* `openai` — any OpenAI-compatible `/v1/chat/completions` server (vLLM, SGLang, Ollama,
  OpenAI): queries run in parallel up to `concurrency`, the calls of one query stay
  sequential (each listwise window depends on the previous one), with timeouts, retries with
  exponential backoff on 429/5xx/connection errors, and several base URLs served round robin.

Every finished call goes through the toolkit's cache (namespace `llm-chat`, key = backend,
model, template, decoding parameters and the exact messages) as soon as it finishes, so an
interrupted run resumes without repeating it, and may be logged to a JSONL file. The API
key is read from the environment at call time and sent only in the Authorization header: it
is never part of a config, cache key, log line or result.

`RerankHTTP` speaks the `/rerank` protocol (vLLM, Infinity, Jina/Cohere style and Hugging
Face TEI) for pointwise models served remotely.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generator, Sequence

from rankify_cli.errors import ConfigError, DependencyError
from rankify_cli.model_ids import folder_fingerprint
from rankify_cli.types import Candidate, Query, StageContext, fingerprint

from .backends.http import BackendError, HTTPClient, chat_completion_shape, split_urls  # noqa: F401  (re-exported)

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
CACHE_NAMESPACE = "llm-chat"
BACKENDS = ("hf", "openai")


# ----------------------------------------------------------------------------- templates
# Parsers read at most the last this many characters of a model's answer: the answer tags and
# permutations sit at the end, and regex work stays bounded on a runaway 1 MB completion.
MAX_PARSED_CHARS = 65_536


def load_template(name: str, paradigm: str) -> tuple[str, dict]:
    """A prompt template by name (a file in rerankers/templates/) or by path."""
    path = Path(os.path.expanduser(name))
    if not (path.suffix == ".json" and path.is_file()):
        path = TEMPLATE_DIR / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in TEMPLATE_DIR.glob("*.json")
                       if _template_paradigm(p) == paradigm)
        raise ConfigError(f"unknown {paradigm} template '{name}'; known: {', '.join(known)} (or a .json path)")
    try:
        tpl = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ConfigError(f"template {path} is not valid JSON: {e}") from None
    if tpl.get("paradigm") != paradigm:
        raise ConfigError(f"template '{name}' is for '{tpl.get('paradigm')}', not {paradigm}")
    check_placeholders(path, tpl, paradigm)
    return path.stem, tpl


# What each paradigm's code fills into its templates; the first ones must appear somewhere.
PLACEHOLDERS = {
    "listwise": (("query", "candidate"), {"query", "num", "rank", "candidate", "title", "text"}),
    "setwise": (("query", "text"), {"query", "docs", "label", "text", "num"}),
    "groupwise": (("query", "text"), {"query", "docs", "label", "text", "num"}),
}


def check_placeholders(path: Path, tpl: dict, paradigm: str) -> None:
    """A template that forgets {query} would silently rank without the query, and an unknown
    {name} would fail mid-run: both are refused when the template loads."""
    import string

    required, allowed = PLACEHOLDERS.get(paradigm, ((), None))
    seen: set[str] = set()
    for key, value in tpl.items():
        if not isinstance(value, str) or key in ("paradigm", "description", "parser", "pattern"):
            continue
        try:
            seen |= {f.split(".")[0].split("[")[0] for _, f, _, _ in string.Formatter().parse(value) if f}
        except ValueError as e:
            raise ConfigError(f"template {path}: field '{key}' is not a valid format string ({e})") from None
    unknown = sorted(seen - allowed) if allowed is not None else []
    if unknown:
        raise ConfigError(f"template {path}: unknown placeholder(s) {', '.join('{' + u + '}' for u in unknown)}; "
                          f"{paradigm} templates may use {', '.join('{' + a + '}' for a in sorted(allowed))}")
    missing = [r for r in required if r not in seen]
    if missing:
        raise ConfigError(f"template {path}: missing placeholder(s) {', '.join('{' + m + '}' for m in missing)}")


def _template_paradigm(path: Path) -> str | None:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("paradigm")
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------- requests
@dataclass
class ChatRequest:
    messages: list[dict]
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    min_new_tokens: int = 0  # > 0: end of text is refused before this many tokens (rank_llm's exact answer length)


@dataclass
class ChatResponse:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency: float = 0.0
    cached: bool = False
    attempts: int = 1


Plan = Generator[list[ChatRequest], list[ChatResponse], list[Candidate]]


# ----------------------------------------------------------------------------- backends
class ChatBackend:
    kind = "?"
    batched = False  # True: the driver gathers requests of many queries into one call

    def identity(self) -> dict:
        raise NotImplementedError

    def cache_identity(self) -> dict:
        """What keys the cached calls: the identity, plus what a server reports for its model."""
        return self.identity()

    def generate(self, requests: Sequence[ChatRequest]) -> list[ChatResponse]:
        raise NotImplementedError

    def truncate(self, text: str, max_tokens: int) -> str:
        """Cut a text to max_tokens tokens of the model's tokenizer (whitespace words without one)."""
        words = text.split()
        return " ".join(words[:max_tokens]) if len(words) > max_tokens else " ".join(words)

    def chat_tokenizer(self):
        """The model's tokenizer when one is known (hf, or openai with tokenizer=), else None."""
        return None

    def prompt_tokens(self, messages: list[dict]) -> int | None:
        """Tokens of the chat-templated prompt, counted as rank_llm counts them (encode with
        special tokens); None when no tokenizer with a chat template is known."""
        tok = self.chat_tokenizer()
        if tok is None or not getattr(tok, "chat_template", None):
            return None
        with _TOKENIZER_LOCK:  # a Rust tokenizer shared by query threads may refuse a second borrower
            prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                             **getattr(self, "chat_template_kwargs", {}))
            return len(tok.encode(prompt))

    def text_tokens(self, text: str) -> int | None:
        tok = self.chat_tokenizer()
        if tok is None:
            return None
        with _TOKENIZER_LOCK:
            return len(tok.encode(text))

    def close(self) -> None:
        pass


_TOKENIZER_LOCK = threading.Lock()


class OpenAIChat(ChatBackend):
    kind = "openai"

    def __init__(self, model: str, base_url: str | None, api_key_env: str | None = None, timeout: float = 120.0,
                 max_retries: int = 6, backoff: float = 0.5, tokenizer: str | None = None, extra_body: dict | None = None):
        self.model = model
        self.client = HTTPClient(split_urls(base_url or os.environ.get("OPENAI_BASE_URL")), api_key_env,
                                 timeout, max_retries, backoff)
        self.tokenizer_name = tokenizer
        self._tokenizer = None
        self.extra_body = extra_body or {}
        self.retries = 0
        self._lock = threading.Lock()

    def identity(self) -> dict:
        return {"backend": self.kind, "model": self.model}

    def cache_identity(self) -> dict:
        return {**self.identity(), **self.client.served_identity(self.model)}

    def chat_tokenizer(self):
        if not self.tokenizer_name:
            return None
        if self._tokenizer is None:
            with self._lock:
                if self._tokenizer is None:
                    self._tokenizer = _load_tokenizer(self.tokenizer_name)
        return self._tokenizer

    def truncate(self, text: str, max_tokens: int) -> str:
        tok = self.chat_tokenizer()
        if tok is None:
            return super().truncate(text, max_tokens)
        ids = tok(text, add_special_tokens=False).input_ids[:max_tokens]
        return tok.decode(ids)

    def generate(self, requests: Sequence[ChatRequest]) -> list[ChatResponse]:
        return [self._one(r) for r in requests]

    def _one(self, req: ChatRequest) -> ChatResponse:
        payload = {"model": self.model, "messages": req.messages, "max_tokens": req.max_new_tokens,
                   "temperature": req.temperature, "top_p": req.top_p, **self.extra_body}
        if req.seed is not None:
            payload["seed"] = req.seed
        if req.min_new_tokens:
            payload["min_tokens"] = req.min_new_tokens  # vLLM / SGLang sampling extension
        t0 = time.perf_counter()
        # a 200 without a chat completion's shape is retried, never cached as an empty answer
        data, attempts, retries = self.client.post("/chat/completions", payload, validate=chat_completion_shape)
        latency = time.perf_counter() - t0
        if retries:
            with self._lock:
                self.retries += retries
        text = data["choices"][0]["message"].get("content") or ""
        usage = data.get("usage") or {}
        return ChatResponse(text, _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens")),
                            latency, attempts=attempts)


def _count(v) -> int:
    return int(v) if isinstance(v, (int, float)) and v == v and abs(v) < 2**53 else 0


def _load_tokenizer(name: str, revision: str | None = None, gguf_file: str | None = None):
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise DependencyError("the hf backend needs transformers and torch: pip install 'rankify-cli[neural]'") from None
    kw = {"revision": revision} if revision else {}
    if gguf_file:
        kw["gguf_file"] = gguf_file
    try:
        return AutoTokenizer.from_pretrained(name, **kw)
    except OSError as e:
        raise DependencyError(f"cannot load the tokenizer of '{name}' (not found locally and offline?): "
                              f"{str(e).splitlines()[0]}") from None


_HF_MODELS: dict[tuple, Any] = {}
_HF_LOCK = threading.Lock()


class HFChat(ChatBackend):
    """Local transformers causal LM: chat template, left padding, batched greedy decoding."""

    kind = "hf"
    batched = True

    def __init__(self, model: str, revision: str | None = None, device: str | None = None, dtype: str | None = None,
                 batch_size: int = 4, gguf_file: str | None = None, trust_remote_code: bool = False,
                 chat_template_kwargs: dict | None = None):
        self.model_name, self.revision, self.gguf_file = model, revision, gguf_file
        self.device_opt, self.dtype_opt = device, dtype
        self.batch_size = max(1, int(batch_size))
        self.trust_remote_code = trust_remote_code
        self.chat_template_kwargs = chat_template_kwargs or {}
        folder = Path(os.path.expanduser(model))
        self.folder = folder if folder.is_dir() else None
        self._loaded = None

    def identity(self) -> dict:
        ident = {"backend": self.kind, "model": self.model_name, "revision": self.revision or "main",
                 "decoding": "greedy"}
        if self.gguf_file:
            ident["gguf_file"] = self.gguf_file
        if self.folder is not None:
            ident["model"] = folder_fingerprint(self.folder)
        return ident

    def load(self):
        if self._loaded is not None:
            return self._loaded
        try:
            import torch
            from transformers import AutoModelForCausalLM
        except ImportError:
            raise DependencyError("the hf backend needs torch and transformers: pip install 'rankify-cli[neural]' "
                                  "(or use backend=openai with a server)") from None
        device = self.device_opt if self.device_opt not in (None, "auto") else (
            "cuda" if torch.cuda.is_available() else "cpu")
        dtype = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                 "float16": torch.float16, "fp16": torch.float16}.get(str(self.dtype_opt or "").lower())
        if dtype is None:
            dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        key = (self.model_name, self.revision, self.gguf_file, device, str(dtype))
        with _HF_LOCK:
            if key not in _HF_MODELS:
                tok = _load_tokenizer(str(self.folder or self.model_name), self.revision, self.gguf_file)
                kw: dict = {"dtype": dtype, "trust_remote_code": self.trust_remote_code}
                if self.revision:
                    kw["revision"] = self.revision
                if self.gguf_file:
                    kw["gguf_file"] = self.gguf_file
                try:
                    try:
                        from transformers.utils import logging as hf_logging

                        hf_logging.disable_progress_bar()
                    except ImportError:
                        pass
                    model = AutoModelForCausalLM.from_pretrained(str(self.folder or self.model_name), **kw)
                except OSError as e:
                    raise DependencyError(
                        f"cannot load model '{self.model_name}' (not in the local cache and offline?); pass a local "
                        f"folder or use backend=openai [{str(e).splitlines()[0]}]") from None
                model.to(device).eval()
                tok.padding_side = "left"
                if tok.pad_token is None:
                    tok.pad_token = tok.eos_token
                if not getattr(tok, "chat_template", None):
                    raise ConfigError(f"model '{self.model_name}' has no chat template; the LLM rerankers need a chat model")
                _HF_MODELS[key] = (tok, model, device)
            self._loaded = _HF_MODELS[key]
        return self._loaded

    def tokenizer(self):
        """The tokenizer alone (truncation needs no model weights, so cached runs load none)."""
        if self._loaded is not None:
            return self._loaded[0]
        key = ("tok", self.model_name, self.revision, self.gguf_file)
        with _HF_LOCK:
            if key not in _HF_MODELS:
                _HF_MODELS[key] = _load_tokenizer(str(self.folder or self.model_name), self.revision, self.gguf_file)
            return _HF_MODELS[key]

    def chat_tokenizer(self):
        return self.tokenizer()

    def truncate(self, text: str, max_tokens: int) -> str:
        tok = self.tokenizer()
        ids = tok(text, add_special_tokens=False).input_ids
        return tok.decode(ids[:max_tokens]) if len(ids) > max_tokens else text

    def render(self, messages: list[dict]) -> str:
        tok = self.load()[0]
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **self.chat_template_kwargs)

    def generate(self, requests: Sequence[ChatRequest]) -> list[ChatResponse]:
        import torch

        tok, model, device = self.load()
        prompts = [self.render(r.messages) for r in requests]
        encoded = [tok(p, add_special_tokens=False).input_ids for p in prompts]
        order = sorted(range(len(requests)), key=lambda i: (-len(encoded[i]), requests[i].max_new_tokens))
        out: list[ChatResponse | None] = [None] * len(requests)
        pad = tok.pad_token_id
        eos = {t for t in ([tok.eos_token_id] if not isinstance(tok.eos_token_id, list) else tok.eos_token_id)
               if t is not None}
        gen_eos = getattr(model.generation_config, "eos_token_id", None)
        eos |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            width = max(len(encoded[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):  # left padding
                n = len(encoded[i])
                ids[row, width - n:] = torch.tensor(encoded[i])
                mask[row, width - n:] = 1
            max_new = max(requests[i].max_new_tokens for i in idx)
            min_new = min(requests[i].min_new_tokens for i in idx)
            extra = {"min_new_tokens": min_new} if min_new else {}
            t0 = time.perf_counter()
            with torch.inference_mode():
                gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new,
                                     do_sample=False, temperature=None, top_p=None, top_k=None,
                                     pad_token_id=pad, eos_token_id=sorted(eos) or None, **extra)
            latency = (time.perf_counter() - t0) / len(idx)
            for row, i in enumerate(idx):
                new = gen[row, width:].tolist()[: requests[i].max_new_tokens]
                n = len(new)
                for j, t in enumerate(new):
                    if t in eos:
                        n = j + 1
                        break
                text = tok.decode(new[:n], skip_special_tokens=True)
                out[i] = ChatResponse(text, len(encoded[i]), n, latency)
        return out  # type: ignore[return-value]


def make_chat_backend(backend: str | None, model: str, *, base_url=None, api_key_env=None, timeout=120.0,
                      max_retries=6, backoff=0.5, tokenizer=None, revision=None, device=None, dtype=None,
                      batch_size=4, gguf_file=None, trust_remote_code=False, chat_template_kwargs=None) -> ChatBackend:
    backend = (backend or "hf").lower()
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)} (got '{backend}')")
    if not model:
        raise ConfigError("an LLM reranker needs a model: listwise:MODEL (a hub id, a folder, or the served model name)")
    if backend == "openai":
        return OpenAIChat(model, base_url, api_key_env, timeout, max_retries, backoff, tokenizer)
    return HFChat(model, revision, device, dtype, batch_size, gguf_file, trust_remote_code, chat_template_kwargs)


# ----------------------------------------------------------------------------- calls
class CallLog:
    """Append-only JSONL of calls: prompt, response, latency, tokens (never credentials)."""

    def __init__(self, path: str | None):
        self.path = Path(os.path.expanduser(path)) if path else None
        self._lock = threading.Lock()
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        if not self.path:
            return
        line = json.dumps(record, ensure_ascii=False)
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


PER_QUERY_KEYS = ("calls", "cache_hits", "prompt_tokens", "completion_tokens", "parse_failures", "fallbacks", "repaired",
                  "missing_scores", "context_cuts")


class Caller:
    """Runs chat requests for one stage: cache first, then the backend; stores each finished
    call at once, logs it, and counts calls, tokens and outcomes per query."""

    def __init__(self, backend: ChatBackend, ctx: StageContext, paradigm: str, template: str, log_path: str | None,
                 use_cache: bool = True):
        self.backend, self.ctx, self.paradigm, self.template = backend, ctx, paradigm, template
        self.store = ctx.store if use_cache else None
        # One thread at a time talks to the cache: Store opens a connection per thread and
        # switches it to WAL, which sqlite may refuse ("database is locked") when many
        # threads do it at once on a fresh file. Calls take far longer than cache reads.
        self._store_lock = threading.Lock()
        if self.store is not None:
            self.store.get_many(CACHE_NAMESPACE, [])  # create the file from this thread first
        self.log = CallLog(log_path)
        self.ident = backend.cache_identity()
        self._lock = threading.Lock()
        self.per_query: dict[str, Counter] = {}
        self.pool: ThreadPoolExecutor | None = None  # set by drive() for HTTP backends

    def key(self, req: ChatRequest) -> str:
        return fingerprint({"v": 1, **self.ident, "template": self.template, "messages": req.messages,
                            "decoding": {"max_new_tokens": req.max_new_tokens, "temperature": req.temperature,
                                         "top_p": req.top_p, "seed": req.seed,
                                         **({"min_new_tokens": req.min_new_tokens} if req.min_new_tokens else {})}})

    def count(self, qid: str, **kv: int) -> None:
        with self._lock:
            c = self.per_query.setdefault(qid, Counter())
            for k, v in kv.items():
                c[k] += v
                self.ctx.stats[f"llm_{k}"] += v

    def run(self, tagged: list[tuple[str, ChatRequest]]) -> list[ChatResponse]:
        keys = [self.key(r) for _, r in tagged]
        hits = {}
        if self.store is not None:
            with self._store_lock:
                hits = self.store.get_many(CACHE_NAMESPACE, sorted(set(keys)))
        out: list[ChatResponse | None] = [None] * len(tagged)
        todo = []
        for i, ((qid, _), k) in enumerate(zip(tagged, keys)):
            v = hits.get(k)
            if isinstance(v, dict) and isinstance(v.get("text"), str):
                out[i] = ChatResponse(v["text"], int(v.get("prompt_tokens", 0)), int(v.get("completion_tokens", 0)),
                                      cached=True)
                self.count(qid, cache_hits=1)
            else:
                todo.append(i)
        if self.backend.batched:  # cached chunk by chunk, so an interrupted run loses little
            size = max(1, getattr(self.backend, "batch_size", 8)) * 4
            chunks = [todo[s:s + size] for s in range(0, len(todo), size)]
        else:  # one call per request; several of one query run side by side on the shared pool
            chunks = [[i] for i in todo]
        if not self.backend.batched and self.pool is not None and len(chunks) > 1:
            futures = [self.pool.submit(self._finish, tagged, keys, out, c) for c in chunks]
            for f in futures:
                f.result()
        else:
            for c in chunks:
                self._finish(tagged, keys, out, c)
        return out  # type: ignore[return-value]

    def _finish(self, tagged, keys, out, chunk) -> None:
        """Run the requests at positions `chunk` on the backend, then cache, count and log them."""
        results = self.backend.generate([tagged[i][1] for i in chunk])
        done = {}
        for i, res in zip(chunk, results):
            out[i] = res
            qid, req = tagged[i]
            done[keys[i]] = {"text": res.text, "prompt_tokens": res.prompt_tokens,
                             "completion_tokens": res.completion_tokens}
            self.count(qid, calls=1, prompt_tokens=res.prompt_tokens, completion_tokens=res.completion_tokens)
            self.log.write({"time": round(time.time(), 3), "query_id": qid, "paradigm": self.paradigm,
                            "template": self.template, **self.ident, "messages": req.messages,
                            "response": res.text, "latency_s": round(res.latency, 4), "attempts": res.attempts,
                            "prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens})
        if self.store is not None:  # at once: an interrupted run resumes without repeating it
            with self._store_lock:
                self.store.put_many(CACHE_NAMESPACE, done)

    def finish(self) -> None:
        retries = getattr(self.backend, "retries", 0)
        if retries:
            self.ctx.stats["llm_retries"] += retries
        self.ctx.stats["llm_per_query"] = {q: {k: c.get(k, 0) for k in PER_QUERY_KEYS} for q, c in
                                           sorted(self.per_query.items())}


def drive(items: Sequence[tuple[Query, list[Candidate]]], plan: Callable[[Query, list[Candidate]], Plan],
          caller: Caller, ctx: StageContext, concurrency: int, chunk_queries: int = 64) -> list[list[Candidate]]:
    """Run every query's plan on the caller's backend; report progress per finished query."""
    results: list[list[Candidate] | None] = [None] * len(items)
    progress_lock = threading.Lock()

    def advance():
        with progress_lock:
            ctx.progress(1)

    if not caller.backend.batched:
        def one(i: int):
            q, cands = items[i]
            gen = plan(q, cands)
            try:
                reqs = next(gen)
                while True:
                    reqs = gen.send(caller.run([(q.id, r) for r in reqs]))
            except StopIteration as stop:
                results[i] = stop.value
            advance()

        # queries in flight <= concurrency, and calls in flight <= concurrency: a query's
        # independent calls (groupwise groups) go to the shared call pool
        with ThreadPoolExecutor(max_workers=max(1, int(concurrency)), thread_name_prefix="llm-call") as calls, \
                ThreadPoolExecutor(max_workers=max(1, int(concurrency)), thread_name_prefix="llm-query") as pool:
            caller.pool = calls
            futures: list = []
            try:
                futures = [pool.submit(one, i) for i in range(len(items))]
                for f in futures:
                    f.result()
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
            finally:
                caller.pool = None
    else:  # lockstep: the pending requests of many queries share batches
        for s in range(0, len(items), chunk_queries):
            active: dict[int, tuple[Plan, list[ChatRequest]]] = {}
            for i in range(s, min(len(items), s + chunk_queries)):
                gen = plan(*items[i])
                try:
                    active[i] = (gen, next(gen))
                except StopIteration as stop:
                    results[i] = stop.value
                    advance()
            while active:
                order = list(active)
                tagged = [(items[i][0].id, r) for i in order for r in active[i][1]]
                responses = caller.run(tagged)
                pos = 0
                for i in order:
                    gen, reqs = active[i]
                    mine, pos = responses[pos:pos + len(reqs)], pos + len(reqs)
                    try:
                        active[i] = (gen, gen.send(mine))
                    except StopIteration as stop:
                        results[i] = stop.value
                        del active[i]
                        advance()
    caller.finish()
    return results  # type: ignore[return-value]


# ----------------------------------------------------------------------------- base class
class LLMRerankerBase:
    """Options every LLM family shares (backend selection, HTTP knobs, logging, decoding)."""

    paradigm = "?"
    default_template = "?"

    def _init_backend(self, model, template, backend, base_url, api_key_env, concurrency, timeout, max_retries,
                      backoff, log_calls, max_new_tokens, temperature, top_p, seed, revision, device, dtype,
                      batch_size, gguf_file, tokenizer, cache) -> None:
        self.template_name, self.template = load_template(template or self.default_template, self.paradigm)
        self.backend_kind = (backend or "hf").lower()
        self.backend = make_chat_backend(self.backend_kind, model, base_url=base_url, api_key_env=api_key_env,
                                         timeout=timeout, max_retries=max_retries, backoff=backoff, tokenizer=tokenizer,
                                         revision=revision, device=device, dtype=dtype, batch_size=batch_size,
                                         gguf_file=gguf_file,
                                         chat_template_kwargs=self.template.get("chat_template_kwargs"))
        self.model = model
        self.concurrency = int(concurrency)
        if self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.log_calls = log_calls
        self.use_cache = bool(cache)
        dec = dict(self.template.get("decoding") or {})
        self.max_new_tokens = int(max_new_tokens if max_new_tokens is not None else dec.get("max_new_tokens", 256))
        self.temperature = float(temperature if temperature is not None else dec.get("temperature", 0.0))
        self.top_p = float(top_p if top_p is not None else dec.get("top_p", 1.0))
        self.seed = seed

    def _decoding_config(self) -> dict:
        if self.backend_kind == "hf":
            return {"max_new_tokens": self.max_new_tokens, "decoding": "greedy"}
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "seed": self.seed}

    def _template_config(self) -> dict:
        blob = json.dumps(self.template, sort_keys=True).encode("utf-8")
        return {"template": self.template_name, "template_sha": hashlib.sha256(blob).hexdigest()[:12]}

    def _request(self, messages: list[dict], max_new_tokens: int | None = None, min_new_tokens: int = 0) -> ChatRequest:
        return ChatRequest(messages, int(max_new_tokens or self.max_new_tokens), self.temperature, self.top_p, self.seed,
                           int(min_new_tokens))

    def _caller(self, ctx: StageContext) -> Caller:
        return Caller(self.backend, ctx, self.paradigm, self.template_name, self.log_calls, self.use_cache)


COMMON_DOC = """Common options: backend=hf|openai, base_url (several with '|'), api_key_env (default
OPENAI_API_KEY), concurrency (queries in flight, openai backend), timeout, max_retries, backoff,
log_calls=path.jsonl, template, max_new_tokens, temperature/top_p/seed (HTTP; hf is greedy),
revision/device/dtype/batch_size/gguf_file (hf), tokenizer (openai: for token truncation)."""
