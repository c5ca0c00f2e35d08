"""What the LLM families (listwise, setwise, groupwise) share: prompt templates, the plan
driver and the call cache.

A paradigm is written once as a *plan*: a generator that yields lists of chat requests and
receives their responses, so it never knows where the model runs. `drive` runs the plans of
all queries on one backend (rerankers/backends): a batched backend (hf, vllm) advances every
query's plan in lockstep so requests of different queries share batches; an HTTP backend runs
queries in parallel up to `concurrency`, the calls of one query staying sequential (each
listwise window depends on the previous one).

Every finished call goes through the toolkit's cache (namespace `llm-chat`, key = backend,
model, template, decoding parameters and the exact messages) as soon as it finishes, so an
interrupted run resumes without repeating it, and may be logged to a JSONL file. The API
key is read from the environment at call time and sent only in the Authorization header: it
is never part of a config, cache key, log line or result.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Generator, Sequence

from rankify_cli.errors import ConfigError
from rankify_cli.types import Candidate, CostClock, Query, StageContext, charge_cached, fingerprint

from .backends import BACKENDS, make_backend
from .backends.base import Backend, ChatRequest, ChatResponse
from .backends.http import redact, strip_secrets

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
CACHE_NAMESPACE = "llm-chat"

Plan = Generator[list[ChatRequest], list[ChatResponse], list[Candidate]]


# ----------------------------------------------------------------------------- templates
# Parsers read at most the last this many characters of a model's answer: the answer tags and
# permutations sit at the end, and regex work stays bounded on a runaway 1 MB completion.
MAX_PARSED_CHARS = 65_536
THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


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
    "pairwise": (("query", "doc1", "doc2"), {"query", "doc1", "doc2"}),
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



# ----------------------------------------------------------------------------- calls
class CallLog:
    """Append-only JSONL of calls: prompt, response, latency, tokens (never credentials).

    A server may echo the key inside an answer it returns with 200: every line goes through the
    HTTP client's redact() with the key read at write time (`secrets`), as error messages do."""

    def __init__(self, path: str | None, secrets: Callable[[], Sequence[str]] = list):
        self.path = Path(os.path.expanduser(path)) if path else None
        self.secrets = secrets
        self._lock = threading.Lock()
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        if not self.path:
            return
        keys = [k for k in self.secrets() if k]
        # the key as it appears inside a JSON string too (escaped quotes, backslashes, non-ASCII)
        line = redact(json.dumps(record, ensure_ascii=False), keys + [json.dumps(k, ensure_ascii=False)[1:-1] for k in keys])
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


PER_QUERY_KEYS = ("calls", "cache_hits", "prompt_tokens", "completion_tokens", "parse_failures", "fallbacks", "repaired",
                  "missing_scores", "context_cuts")


class Caller:
    """Runs chat requests for one stage: cache first, then the backend; stores each finished
    call at once, logs it, and counts calls, tokens and outcomes per query."""

    def __init__(self, backend: Backend, ctx: StageContext, paradigm: str, template: str, log_path: str | None,
                 use_cache: bool = True, explain: bool = False):
        self.backend, self.ctx, self.paradigm, self.template = backend, ctx, paradigm, template
        self.explain = explain  # keep each answer's <think> reasoning for explanations.jsonl
        self.explanations: list[dict] = []
        self._explained: Counter = Counter()  # explanations kept per query: each record's call number
        self.store = ctx.store if use_cache else None
        # One thread at a time talks to the cache: Store opens a connection per thread and
        # switches it to WAL, which sqlite may refuse ("database is locked") when many
        # threads do it at once on a fresh file. Calls take far longer than cache reads.
        self._store_lock = threading.Lock()
        if self.store is not None:
            self.store.get_many(CACHE_NAMESPACE, [])  # create the file from this thread first
        client = getattr(backend, "client", None)  # HTTP backends: the key must not reach the log or cache
        self.secrets = getattr(client, "secrets", list)
        self.log = CallLog(log_path, self.secrets)
        self.ident = backend.cache_identity()
        self._lock = threading.Lock()
        self.per_query: dict[str, Counter] = {}
        self.pool: ThreadPoolExecutor | None = None  # set by drive() for HTTP backends
        # each stored call keeps what it cost (seconds, model calls): a rerun from the cache reports it
        self.clock, self.model_calls = CostClock(), 0

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

    def charge(self, keys: list[str], model_calls: int) -> dict[str, tuple[float, float]]:
        """`keys` just finished, computed with `model_calls` calls: what each cost (seconds, calls)."""
        with self._lock:
            self.model_calls += model_calls
            return self.clock.charge(keys, calls=self.model_calls)

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
                with self._lock:  # entries stored before costs were kept cost nothing known
                    charge_cached(self.ctx, v.get("compute_s", 0.0), v.get("model_calls", 0.0), calls=1,
                                  tokens=out[i].prompt_tokens + out[i].completion_tokens)
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
        if self.explain:
            self._keep_reasoning(tagged, out)
        return out  # type: ignore[return-value]

    def _keep_reasoning(self, tagged, out) -> None:
        """Each answer's reasoning (`<think>...</think>`, or all before a lone `</think>` when the
        chat template opened the tag), with its token count where the tokenizer is known."""
        tok = self.backend.chat_tokenizer()
        for (qid, _), res in zip(tagged, out):
            text = res.text
            m = THINK.search(text)
            if m is None and "</think>" not in text:
                self.count(qid, without_reasoning=1)
                continue
            reasoning = (m.group(1) if m else text[: text.index("</think>")]).strip()
            answer = text[text.rindex("</think>") + len("</think>"):].strip()
            n = None
            if tok is not None:
                from .backends.base import TOKENIZER_LOCK

                with TOKENIZER_LOCK:
                    n = len(tok(reasoning, add_special_tokens=False)["input_ids"])
            with self._lock:
                self._explained[qid] += 1
                self.explanations.append({"query_id": qid, "call": self._explained[qid], "reasoning": reasoning,
                                          "answer": answer, "reasoning_tokens": n})

    def _finish(self, tagged, keys, out, chunk) -> None:
        """Run the requests at positions `chunk` on the backend, then cache, count and log them."""
        before = self.backend.forward_calls
        results = self.backend.chat([tagged[i][1] for i in chunk])
        # HTTP: one request each (other threads' requests also move the backend's counter); a
        # batched backend runs one chunk at a time, so its counter says how many batches ran
        n_calls = self.backend.forward_calls - before if self.backend.batched else len(chunk)
        costs = self.charge([keys[i] for i in chunk], n_calls)
        secrets = self.secrets()
        done = {}
        for i, res in zip(chunk, results):
            out[i] = res
            qid, req = tagged[i]
            seconds, calls = costs[keys[i]] if keys[i] in costs else (0.0, 0.0)  # a repeat charged once
            done[keys[i]] = {"text": strip_secrets(res.text, secrets), "prompt_tokens": res.prompt_tokens,
                             "completion_tokens": res.completion_tokens, "compute_s": seconds, "model_calls": calls}
            self.count(qid, calls=1, prompt_tokens=res.prompt_tokens, completion_tokens=res.completion_tokens)
            self.log.write({"time": round(time.time(), 3), "query_id": qid, "paradigm": self.paradigm,
                            "template": self.template, **self.ident, "messages": req.messages,
                            "response": res.text, "latency_s": round(res.latency, 4), "attempts": res.attempts,
                            "prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens})
        if self.store is not None:  # at once: an interrupted run resumes without repeating it
            with self._store_lock:
                self.store.put_many(CACHE_NAMESPACE, done)

    def finish(self) -> None:
        self.ctx.stats["compute_s"] += sum(c[0] for c in self.clock.costs.values())
        self.ctx.stats["forward_calls"] += sum(c[1] for c in self.clock.costs.values())
        retries = getattr(self.backend, "retries", 0)
        if retries:
            self.ctx.stats["llm_retries"] += retries
        for k, v in self.backend.stats().items():
            self.ctx.stats[k] = v
        self.ctx.stats["llm_per_query"] = {q: {k: c.get(k, 0) for k in PER_QUERY_KEYS} for q, c in
                                           sorted(self.per_query.items())}
        if self.explain:  # written as explanations.jsonl beside the run, not in run_info
            self.ctx.stats["explanations_written"] = len(self.explanations)
            self.ctx.stats["explanations"] = sorted(self.explanations, key=lambda e: (e["query_id"], e["call"]))


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
                      batch_size, gguf_file, tokenizer, cache, adapter: str | None = None) -> None:
        self.template_name, self.template = load_template(template or self.default_template, self.paradigm)
        self.backend_kind = (backend or "hf").lower()
        if adapter and self.backend_kind != "hf":
            raise ConfigError(f"adapter= is merged into the base model by backend=hf; with backend={self.backend_kind} "
                              "serve the adapter (vllm serve BASE --enable-lora --lora-modules NAME=ADAPTER) and "
                              "give its NAME as the model")
        self.backend = make_backend(self.backend_kind, model, family=self.paradigm, base_url=base_url,
                                    api_key_env=api_key_env, timeout=timeout, max_retries=max_retries, backoff=backoff,
                                    tokenizer=tokenizer, revision=revision, device=device, dtype=dtype,
                                    batch_size=batch_size, gguf_file=gguf_file, concurrency=concurrency,
                                    chat_template_kwargs=self.template.get("chat_template_kwargs"),
                                    **({"adapter": adapter} if adapter else {}))
        # rank_llm hands the rendered string to vLLM, which tokenizes it with special tokens (a
        # Mistral/Zephyr <s>); templates that follow it say prompt_add_special_tokens
        self.backend.add_special_tokens = bool(self.template.get("prompt_add_special_tokens", False))
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
        if self.backend_kind in ("hf", "vllm"):
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
        return Caller(self.backend, ctx, self.paradigm, self.template_name, self.log_calls, self.use_cache,
                      explain=bool(getattr(self, "explain", False)))


COMMON_DOC = """Common options: backend=hf|vllm|openai, base_url (several with '|'), api_key_env (default
OPENAI_API_KEY), concurrency (queries in flight, openai backend), timeout, max_retries, backoff,
log_calls=path.jsonl, template, max_new_tokens, temperature/top_p/seed (HTTP; hf is greedy),
revision/device/dtype/batch_size/gguf_file (hf), tokenizer (openai: for token truncation);
listwise and setwise: explain=true keeps each answer's <think> reasoning in explanations.jsonl
beside the run, with its token count."""
