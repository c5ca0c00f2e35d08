"""Setwise LLM reranking (Rank-R1, ielab/llm-rankers) with heap selection of the top-k.

A set of up to `set_size` candidates (default 20) is shown as `[i] text`; the model names the
most relevant one (`<think>...</think> <answer>[3]</answer>`, the parsing rule lives in the
template). A heap with set_size - 1 children per node (llm-rankers' heapsort) yields the
top-k (default 10) in order; the rest keep their first-stage order. Scores follow rank
(score = -rank).

As the reference (Rank-R1/run_setwise.py, llmrankers/setwise.py RankR1SetwiseLlmRanker):
- each comparison shows its documents shuffled (`random.sample`) from one stream seeded 929
  for the whole run, the queries taken one after another in the order given (sorted ids);
  `shuffle=query` seeds a stream per query instead (queries then run side by side, the order
  differs from the reference's), `shuffle=none` shows them in heap order;
- queries and documents are cut to tokens of the model's tokenizer
  (`convert_tokens_to_string(tokenize(text)[:n])`), with the paper's lengths chosen by
  dataset (DL 32/512, BRIGHT 1024/1024; otherwise the script's defaults 128/128), or
  `query_max_tokens=` / `doc_max_tokens=`;
- an unusable answer (no think+answer tags, a label that was not shown) lets the heap parent
  win (`fallback=parent`); `fallback=first-stage` lets the set's best first-stage candidate
  win instead, so a run of unusable answers keeps the first-stage order. Both are counted
  (parse failure + fallback).
Rank-R1's checkpoints are LoRA adapters: `adapter=` (hf backend) merges one into the base.
"""

from __future__ import annotations

import random
import re
from typing import Sequence

from rankify_cli.types import Candidate, Query, Reranker, StageContext

from .llm import MAX_PARSED_CHARS, COMMON_DOC, LLMRerankerBase, Plan, drive
from .base import for_dataset


def parse_label(response: str, labels: Sequence[str], pattern: str, lowercase: bool = True,
                after: str | None = "</think>") -> int | None:
    """Index of the label the answer names, or None. With a closing think tag only the text
    after the last one counts (upstream's pattern needs the answer after the reasoning), so an
    answer tag quoted inside the reasoning cannot win."""
    response = response[-MAX_PARSED_CHARS:]  # answers sit at the end; bounds regex work on huge outputs
    text = response.lower() if lowercase else response
    if after:
        tag = after.lower() if lowercase else after
        if tag in text:
            text = text[text.rindex(tag):]  # keep the tag: templates may match on it
    m = re.search(pattern, text, re.DOTALL)
    if not m:
        return None
    got = m.group(1).strip()
    return labels.index(got) if got in labels else None


SHUFFLES = ("run", "query", "none")
FALLBACKS = ("parent", "first-stage")


class Setwise(LLMRerankerBase, Reranker):
    __doc__ = (__doc__ or "") + "\n" + COMMON_DOC
    paradigm = "setwise"
    default_template = "setwise-rankr1"

    def __init__(self, model: str = "", template: str | None = None, set_size: int = 20, k: int = 10,
                 backend: str | None = None, base_url: str | None = None, api_key_env: str | None = None,
                 concurrency: int = 16, timeout: float = 120.0, max_retries: int = 6, backoff: float = 0.5,
                 log_calls: str | None = None, max_new_tokens: int | None = None, temperature: float | None = None,
                 top_p: float | None = None, seed: int | None = None, revision: str | None = None,
                 device: str | None = None, dtype: str | None = None, batch_size: int = 4,
                 gguf_file: str | None = None, tokenizer: str | None = None, doc_max_tokens: int | None = None,
                 query_max_tokens: int | None = None, shuffle: str = "run", shuffle_seed: int = 929,
                 fallback: str = "parent", adapter: str | None = None, cache: bool = True, explain: bool = False):
        if int(set_size) < 2 or int(k) < 1:
            raise ValueError(f"need set_size >= 2 and k >= 1 (got {set_size}, {k})")
        if shuffle not in SHUFFLES:
            raise ValueError(f"shuffle must be one of {', '.join(SHUFFLES)} (got {shuffle!r})")
        if fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {', '.join(FALLBACKS)} (got {fallback!r})")
        self.set_size, self.k = int(set_size), int(k)
        self.explain = bool(explain)
        self.num_child = self.set_size - 1
        self.shuffle, self.shuffle_seed, self.fallback = shuffle, int(shuffle_seed), fallback
        self._init_backend(model, template, backend, base_url, api_key_env, concurrency, timeout, max_retries,
                           backoff, log_calls, max_new_tokens, temperature, top_p, seed, revision, device, dtype,
                           batch_size, gguf_file, tokenizer, cache, adapter=adapter)
        self.adapter = adapter
        self.doc_max_tokens = int(doc_max_tokens) if doc_max_tokens else None
        self.query_max_tokens = int(query_max_tokens) if query_max_tokens else None
        self.dataset = ""

    def lengths(self, dataset: str) -> tuple[int, int]:
        """(query, document) token budgets: the user's, else the template's for the dataset."""
        t = self.template
        q, d = int(t.get("query_max_tokens", 128)), int(t.get("doc_max_tokens", 128))
        own = for_dataset(t.get("dataset_lengths"), dataset)
        if own is not None:
            q, d = int(own[0]), int(own[1])
        return self.query_max_tokens or q, self.doc_max_tokens or d

    def config(self) -> dict:
        rule = {k: v for k, v in (self.template.get("dataset_lengths") or {}).items()}
        return {"family": "setwise", **self.backend.identity(), **self._template_config(), "set_size": self.set_size,
                "k": self.k, "method": "heapsort", "query_max_tokens": self.query_max_tokens or "by dataset",
                "doc_max_tokens": self.doc_max_tokens or "by dataset", "lengths_by_dataset": rule,
                "shuffle": self.shuffle, "shuffle_seed": self.shuffle_seed, "fallback": self.fallback,
                **self._decoding_config(), **({"explain": True} if self.explain else {})}

    def truncate(self, text: str, n: int) -> str:
        """llm-rankers' truncate: the first n tokens, joined back (convert_tokens_to_string)."""
        tok = self.backend.chat_tokenizer()
        if tok is None:
            return self.backend.truncate(text, n)
        from .backends.base import TOKENIZER_LOCK

        with TOKENIZER_LOCK:
            return tok.convert_tokens_to_string(tok.tokenize(text)[:n])

    def messages(self, query: str, texts: Sequence[str]) -> list[dict]:
        t = self.template
        line, sep = t.get("doc_line", "[{label}] {text}"), t.get("doc_separator", "\n")
        docs = sep.join(line.format(label=i, text=x) for i, x in enumerate(texts, 1))
        msgs = [{"role": "system", "content": t["system"]}] if t.get("system") else []
        msgs.append({"role": "user", "content": t["user"].format(query=query, docs=docs)})
        return msgs

    def _plan(self, caller, query: Query, cands: list[Candidate], rng: random.Random | None) -> Plan:
        n = len(cands)
        qlen, dlen = self.lengths(self.dataset)
        qtext = self.truncate(query.text, qlen)
        texts = [self.truncate(c.text, dlen) for c in cands]
        arr = list(range(n))  # heap of first-stage positions
        parser = self.template.get("parser") or {}
        pattern = parser.get("pattern", r"<think>.*?</think>\s*<answer>(.*?)</answer>")
        lowercase = parser.get("lowercase", True)
        after = parser.get("after")
        nc = self.num_child
        if self.shuffle == "query":
            rng = self._rng(query.id)

        def compare(inds: list[int]):
            docs = [arr[i] for i in inds]
            # shown[j] = docs[perm[j]] under label [j+1], as llm-rankers' random.sample(id_passage, n)
            perm = rng.sample(range(len(docs)), len(docs)) if rng is not None else list(range(len(docs)))
            labels = [f"[{i}]" for i in range(1, len(docs) + 1)]
            (resp,) = yield [self._request(self.messages(qtext, [texts[docs[p]] for p in perm]))]
            shown = parse_label(resp.text, labels, pattern, lowercase, after)
            if shown is None:
                caller.count(query.id, parse_failures=1, fallbacks=1)
                if self.fallback == "parent":
                    return inds[0]  # llm-rankers: best_ind = 0
                return inds[min(range(len(docs)), key=lambda j: docs[j])]  # best first-stage rank wins
            return inds[perm[shown]]

        def heapify(size: int, i: int):
            while nc * i + 1 < size:
                inds = [i] + list(range(nc * i + 1, min(nc * (i + 1) + 1, size)))
                largest = yield from compare(inds)
                if largest == i:
                    return
                arr[i], arr[largest] = arr[largest], arr[i]
                i = largest

        for i in range(n // nc, -1, -1):
            yield from heapify(n, i)
        top: list[int] = []
        for end in range(n - 1, -1, -1):
            top.append(arr[0])
            if len(top) >= self.k or end == 0:
                break
            arr[0], arr[end] = arr[end], arr[0]
            yield from heapify(end, 0)
        chosen = set(top)
        order = top + [i for i in range(n) if i not in chosen]
        return [Candidate(cands[i].doc_id, -float(r), cands[i].text) for r, i in enumerate(order, 1)]

    def _rng(self, query_id: str | None) -> random.Random | None:
        """The stream that shuffles each comparison: the run's (query_id None) or the query's."""
        if self.shuffle == "none":
            return None
        if self.shuffle == "run":
            return random.Random(self.shuffle_seed)
        return random.Random(f"{self.shuffle_seed}:{query_id}")

    def first_comparison(self, query: Query, cands: list[Candidate], dataset: str = "") -> tuple[list[int], list[dict]]:
        """(first-stage positions shown, messages) of the first comparison a run makes for this
        query (exact for the first query of a shuffle=run run, and for every query otherwise)."""
        self.dataset = dataset
        n, nc = len(cands), self.num_child
        i = n // nc
        while i > 0 and nc * i + 1 >= n:
            i -= 1
        inds = [i] + list(range(nc * i + 1, min(nc * (i + 1) + 1, n)))
        rng = self._rng(query.id)
        perm = rng.sample(range(len(inds)), len(inds)) if rng is not None else list(range(len(inds)))
        qlen, dlen = self.lengths(dataset)
        shown = [inds[p] for p in perm]
        return shown, self.messages(self.truncate(query.text, qlen), [self.truncate(cands[j].text, dlen) for j in shown])

    def rerank_all(self, items: Sequence[tuple[Query, list[Candidate]]], ctx: StageContext) -> list[list[Candidate]]:
        self.dataset = ctx.dataset or ""
        caller = self._caller(ctx)
        if self.shuffle == "run":  # one stream over the run: queries one after another, as the reference
            rng = self._rng(None)
            return drive(items, lambda q, c: self._plan(caller, q, c, rng), caller, ctx, 1, chunk_queries=1)
        return drive(items, lambda q, c: self._plan(caller, q, c, None), caller, ctx, self.concurrency)
