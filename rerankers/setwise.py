"""Setwise LLM reranking (Rank-R1 style) with heap selection of the top-k.

A set of up to `set_size` candidates (default 20) is shown as `[i] text`; the model names the
most relevant one (`<answer>[3]</answer>`, the parsing rule lives in the template). A heap with
set_size - 1 children per node (llm-rankers' heapsort) yields the top-k (default 10) in order;
the rest keep their first-stage order. Scores follow rank (score = -rank).

When an answer is unusable (no answer tag, a label that was not shown) the candidate of the
set with the best first-stage rank wins (counted as a parse failure and a fallback), so a run
where every answer is unusable returns the first-stage order unchanged. Upstream falls back
to the heap parent instead, which scrambles the order.
"""

from __future__ import annotations

import re
from typing import Sequence

from rankify_cli.types import Candidate, Query, Reranker, StageContext

from .llm import MAX_PARSED_CHARS, COMMON_DOC, LLMRerankerBase, Plan, drive


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
                 cache: bool = True):
        if int(set_size) < 2 or int(k) < 1:
            raise ValueError(f"need set_size >= 2 and k >= 1 (got {set_size}, {k})")
        self.set_size, self.k = int(set_size), int(k)
        self.num_child = self.set_size - 1
        self._init_backend(model, template, backend, base_url, api_key_env, concurrency, timeout, max_retries,
                           backoff, log_calls, max_new_tokens, temperature, top_p, seed, revision, device, dtype,
                           batch_size, gguf_file, tokenizer, cache)
        self.doc_max_tokens = int(doc_max_tokens or self.template.get("doc_max_tokens", 128))
        self.query_max_tokens = int(self.template.get("query_max_tokens", 128))

    def config(self) -> dict:
        return {"family": "setwise", **self.backend.identity(), **self._template_config(), "set_size": self.set_size,
                "k": self.k, "method": "heapsort", "doc_max_tokens": self.doc_max_tokens, **self._decoding_config()}

    def messages(self, query: str, texts: Sequence[str]) -> list[dict]:
        t = self.template
        line, sep = t.get("doc_line", "[{label}] {text}"), t.get("doc_separator", "\n")
        docs = sep.join(line.format(label=i, text=x) for i, x in enumerate(texts, 1))
        msgs = [{"role": "system", "content": t["system"]}] if t.get("system") else []
        msgs.append({"role": "user", "content": t["user"].format(query=query, docs=docs)})
        return msgs

    def _plan(self, caller, query: Query, cands: list[Candidate]) -> Plan:
        n = len(cands)
        qtext = self.backend.truncate(query.text, self.query_max_tokens)
        texts = [self.backend.truncate(c.text, self.doc_max_tokens) for c in cands]
        arr = list(range(n))  # heap of first-stage positions
        parser = self.template.get("parser") or {}
        pattern = parser.get("pattern", r"<answer>(.*?)</answer>")
        lowercase = parser.get("lowercase", True)
        after = parser.get("after", "</think>")
        nc = self.num_child

        def compare(inds: list[int]):
            docs = [arr[i] for i in inds]
            labels = [f"[{i}]" for i in range(1, len(docs) + 1)]
            (resp,) = yield [self._request(self.messages(qtext, [texts[d] for d in docs]))]
            best = parse_label(resp.text, labels, pattern, lowercase, after)
            if best is None:
                caller.count(query.id, parse_failures=1, fallbacks=1)
                best = min(range(len(docs)), key=lambda j: docs[j])  # best first-stage rank wins
            return inds[best]

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

    def rerank_all(self, items: Sequence[tuple[Query, list[Candidate]]], ctx: StageContext) -> list[list[Candidate]]:
        caller = self._caller(ctx)
        return drive(items, lambda q, c: self._plan(caller, q, c), caller, ctx, self.concurrency)
