"""Pairwise ranking prompting (PRP, Qin et al.) with the three strategies of ielab/llm-rankers
0.0.2 (llmrankers/pairwise.py, PairwiseLlmRanker.rerank), on any chat backend.

A comparison of d1 and d2 asks both orders (Passage A = d1, B = d2, then swapped): d1 beats
d2 when the answers are A then B, d2 beats d1 when they are B then A; anything else is a
conflict.
- allpair: every unordered pair; a win scores 1, a conflict 0.5 to each; documents ranked by
  score (ties in the order the reference's score dict first met them).
- heapsort: llm-rankers' binary heap sort of the candidates, stopped after the top `k`.
- sliding: llm-rankers' `bubblesort` (PRP's sliding window): `k` passes of adjacent
  comparisons from the bottom, skipping the unchanged bottom as the reference does.
The top `k` (default 10) then the rest in first-stage order, scores -rank, as the reference.
Comparisons are counted per query (stats `pairwise_per_query`): the reference's
`total_compare` (allpair: the number of pairs, one two-prompt batch each).

T5 models (template pairwise-prp-t5, the reference's t5 path): the prompt as plain text, the
decoder started with '<pad> Passage', two greedy tokens, exactly 'Passage A' / 'Passage B'
(backend=hf; allpair's comparisons are the reference's two-prompt batches, one per pair).

Scoring: `scoring=generation` (default) parses the chat answer; `scoring=logprobs` renders the
prompt as the reference's local path does (template pairwise-prp-local: chat template with the
generation prompt, then " Passage:") and takes the letter whose token has the higher next-token
log-probability (`label_logprobs`: hf, vllm, or openai on a vLLM server with tokenizer=); equal
log-probabilities are no answer (the reference's generation would pick by token id).

Departure (named): an answer that names neither passage makes the reference assume "A"
(OpenAiPairwiseLlmRanker._get_response); here that comparison is decided by first-stage rank
and counted as a fallback, so a run of unusable answers keeps the first-stage order.
"""

from __future__ import annotations

import re
from itertools import combinations
from typing import Sequence

from rankify_cli.types import Candidate, Query, Reranker, StageContext, costed, fingerprint, uncost

from .backends.base import ChatResponse
from .llm import COMMON_DOC, LLMRerankerBase, Plan, drive, load_template

METHODS = ("allpair", "heapsort", "sliding")


def parse_letter(text: str, pattern: str, letters: Sequence[str], exact: dict | None = None) -> str | None:
    """The letter an answer names (the reference's rule: the first `Passage X`, else a bare
    letter; a template with `exact` answers: only those whole strings), or None when it names neither."""
    if exact:
        return exact.get(text)
    found = re.findall(pattern, text[-4096:], re.MULTILINE)
    if found:
        return found[0][-1]
    return text.strip() if text.strip() in letters else None


class Pairwise(LLMRerankerBase, Reranker):
    __doc__ = (__doc__ or "") + "\n" + COMMON_DOC
    paradigm = "pairwise"
    default_template = "pairwise-prp"

    def __init__(self, model: str = "", method: str = "heapsort", k: int = 10, template: str | None = None,
                 scoring: str = "generation",
                 backend: str | None = None, base_url: str | None = None, api_key_env: str | None = None,
                 concurrency: int = 16, timeout: float = 120.0, max_retries: int = 6, backoff: float = 0.5,
                 log_calls: str | None = None, max_new_tokens: int | None = None, temperature: float | None = None,
                 top_p: float | None = None, seed: int | None = None, revision: str | None = None,
                 device: str | None = None, dtype: str | None = None, batch_size: int = 8,
                 gguf_file: str | None = None, tokenizer: str | None = None, doc_max_tokens: int | None = None,
                 cache: bool = True):
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)} (got '{method}')")
        if int(k) < 1:
            raise ValueError(f"k must be >= 1 (got {k})")
        if scoring not in ("generation", "logprobs"):
            raise ValueError(f"scoring must be generation or logprobs (got '{scoring}')")
        self.method, self.k, self.scoring = method, int(k), scoring
        if scoring == "logprobs" and template is not None and load_template(template, "pairwise")[1].get("model_kind") == "seq2seq":
            raise ValueError("scoring=logprobs reads a causal model's next token; the seq2seq template "
                             f"'{template}' generates (scoring=generation)")
        if scoring == "logprobs" and template is None:
            template = "pairwise-prp-local"
        self._init_backend(model, template, backend, base_url, api_key_env, concurrency, timeout, max_retries,
                           backoff, log_calls, max_new_tokens, temperature, top_p, seed, revision, device, dtype,
                           batch_size, gguf_file, tokenizer, cache)
        self.doc_max_tokens = int(doc_max_tokens or self.template.get("doc_max_tokens", 128))

    def config(self) -> dict:
        return {"family": "pairwise", **self.backend.identity(), **self._template_config(), "method": self.method,
                "k": self.k, "scoring": self.scoring, "doc_max_tokens": self.doc_max_tokens, **self._decoding_config()}

    def messages(self, query: str, doc1: str, doc2: str) -> list[dict]:
        t = self.template
        msgs = [{"role": "system", "content": t["system"]}] if t.get("system") else []
        msgs.append({"role": "user", "content": t["user"].format(query=query, doc1=doc1, doc2=doc2)})
        return msgs

    def letter_by_logprobs(self, ctx: StageContext, msgs: list[dict], caller=None) -> str:
        """The reference's local path: chat template + generation prompt + ' Passage:', then the
        letter whose token is likelier next."""
        tok = self.backend.chat_tokenizer()
        if tok is None:
            raise ValueError("scoring=logprobs renders token ids: it needs the model's tokenizer (backend=hf or vllm, "
                             "or tokenizer=HF_ID with backend=openai)")
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        ids = tok(text + self.template.get("answer_prefix", " Passage:"))["input_ids"]  # as the reference tokenizes it
        labels = [tok(x, add_special_tokens=False)["input_ids"][-1] for x in self.template.get("labels", [" A", " B"])]
        key = fingerprint({"v": 1, **self.backend.cache_identity(), "ids": ids, "labels": labels})
        hit = ctx.store.get_many("pairwise-logprobs", [key]).get(key) if ctx.store is not None and self.use_cache else None
        if hit is not None:
            hit = uncost(hit, ctx)
            ctx.stats["cache_hits"] += 1
        else:
            hit = self.backend.label_logprobs([ids], labels, kind="causal", pad_id=tok.pad_token_id or 0)[0]
            ctx.stats["pairwise_forward_calls"] += 1
            # timed on the stage's clock (the caller's), kept with the entry for a rerun from the cache
            cost = caller.charge([key], 1)[key] if caller is not None else (0.0, 1.0)
            if ctx.store is not None and self.use_cache:
                ctx.store.put_many("pairwise-logprobs", {key: costed(list(hit), cost)})
        if hit[0] == hit[1] or any(v != v for v in hit):  # no preference: decided like an unusable answer
            return ""
        return "Passage A" if hit[0] > hit[1] else "Passage B"

    _caller_now = None  # set by rerank_all

    def seq2seq_answers(self, ctx: StageContext, reqs) -> list[ChatResponse]:
        """The reference's T5 path: each prompt tokenized as it is (the tokenizer's </s> added),
        the decoder started with the template's prefix, greedy tokens, and the decoder's whole
        output (prefix included) decoded without special tokens; cached per prompt."""
        tok = self.backend.chat_tokenizer()
        prefix = tok.encode(self.template["decoder_prefix"], add_special_tokens=False)
        prompts = [tok(r.messages[-1]["content"])["input_ids"] for r in reqs]
        keys = [fingerprint({"v": 1, **self.backend.cache_identity(), "ids": p, "prefix": prefix,
                             "max_new_tokens": self.max_new_tokens}) for p in prompts]
        store = ctx.store if self.use_cache else None
        got = {k: uncost(v, ctx) for k, v in store.get_many("pairwise-seq2seq", sorted(set(keys))).items()} \
            if store is not None else {}
        ctx.stats["cache_hits"] += len(got)
        todo = sorted({k: i for i, k in reversed(list(enumerate(keys))) if k not in got}.values())
        size = max(1, int(getattr(self.backend, "batch_size", 2)))
        for s in range(0, len(todo), size):
            batch = todo[s:s + size]
            outs = self.backend.generate_ids([prompts[i] for i in batch], max_new_tokens=self.max_new_tokens,
                                             pad_id=tok.pad_token_id or 0, kind="seq2seq", decoder_prefix=prefix)
            ctx.stats["pairwise_forward_calls"] += 1
            done = {keys[i]: tok.decode(prefix + ids, skip_special_tokens=True) for i, (ids, _) in zip(batch, outs)}
            got.update(done)
            # timed on the stage's clock (the caller's), kept with the entries for a rerun from the cache
            caller = self._caller_now
            costs = caller.charge(list(done), 1) if caller is not None else {}
            if store is not None:
                store.put_many("pairwise-seq2seq", {k: costed(v, costs.get(k, (0.0, 0.0))) for k, v in done.items()})
        return [ChatResponse(got[k]) for k in keys]

    # -- one query -------------------------------------------------------------------------
    def _plan(self, caller, stats: dict, query: Query, cands: list[Candidate], ctx: StageContext) -> Plan:
        n = len(cands)
        texts = [self.backend.truncate(c.text, self.doc_max_tokens) for c in cands]
        parser = self.template.get("parser") or {}
        pattern, letters = parser.get("pattern", "(Passage [A-B])"), parser.get("letters", ["A", "B"])
        exact = parser.get("exact")
        mine = stats.setdefault(query.id, {"comparisons": 0, "fallbacks": 0})

        def outcome(i: int, j: int, r0: str, r1: str) -> str:
            """'first' (i wins), 'second' (j wins) or 'conflict', from the answers to (i, j), (j, i)."""
            a, b = parse_letter(r0, pattern, letters, exact), parse_letter(r1, pattern, letters, exact)
            if a is None or b is None:
                caller.count(query.id, parse_failures=1, fallbacks=1)
                mine["fallbacks"] += 1
                return "first" if i < j else "second"  # first-stage rank decides
            if (a, b) == ("A", "B"):
                return "first"
            if (a, b) == ("B", "A"):
                return "second"
            return "conflict"

        def requests(i: int, j: int):
            return [self._request(self.messages(query.text, texts[i], texts[j])),
                    self._request(self.messages(query.text, texts[j], texts[i]))]

        def ask(reqs):
            """Answers to chat requests: from the backend's chat, or read from label log-probabilities."""
            if self.scoring == "logprobs":
                return [ChatResponse(self.letter_by_logprobs(ctx, r.messages, caller)) for r in reqs]
            if self.template.get("model_kind") == "seq2seq":
                return self.seq2seq_answers(ctx, reqs)
            return (yield reqs)

        def gt(i: int, j: int):
            """i > j as the reference's ComparableDoc.__gt__: i wins both orders."""
            mine["comparisons"] += 1
            r0, r1 = yield from ask(requests(i, j))
            return outcome(i, j, r0.text, r1.text) == "first"

        if self.method == "allpair":
            pairs = list(combinations(range(n), 2))
            answers = yield from ask([r for i, j in pairs for r in requests(i, j)])
            mine["comparisons"] += len(pairs)
            scores: dict[int, float] = {}
            for p, (i, j) in enumerate(pairs):
                o = outcome(i, j, answers[2 * p].text, answers[2 * p + 1].text)
                if o == "first":
                    scores[i] = scores.get(i, 0.0) + 1
                elif o == "second":
                    scores[j] = scores.get(j, 0.0) + 1
                else:
                    scores[i] = scores.get(i, 0.0) + 0.5
                    scores[j] = scores.get(j, 0.0) + 0.5
            ranking = sorted(scores, key=lambda d: scores[d], reverse=True)  # stable: first met first
        elif self.method == "heapsort":
            arr = list(range(n))

            def heapify(size: int, i: int):
                while True:
                    largest, left, right = i, 2 * i + 1, 2 * i + 2
                    if left < size and (yield from gt(arr[left], arr[i])):
                        largest = left
                    if right < size and (yield from gt(arr[right], arr[largest])):
                        largest = right
                    if largest == i:
                        return
                    arr[i], arr[largest] = arr[largest], arr[i]
                    i = largest

            for i in range(n // 2, -1, -1):
                yield from heapify(n, i)
            ranked = 0
            for i in range(n - 1, 0, -1):
                arr[i], arr[0] = arr[0], arr[i]
                ranked += 1
                if ranked == self.k:
                    break
                yield from heapify(i, 0)
            ranking = list(reversed(arr))
        else:  # sliding: the reference's bubblesort
            ranking = list(range(n))
            last_end = n - 1
            for i in range(min(self.k, n)):
                current, changed = last_end, False
                while current > i:
                    if (yield from gt(ranking[current], ranking[current - 1])):
                        ranking[current - 1], ranking[current] = ranking[current], ranking[current - 1]
                        if not changed:
                            changed = True
                            if last_end != n - 1:  # skip unchanged pairs at the bottom
                                last_end += 1
                    if not changed:
                        last_end -= 1
                    current -= 1
        top = ranking[: self.k]
        chosen = set(top)
        order = top + [i for i in range(n) if i not in chosen]
        return [Candidate(cands[i].doc_id, -float(r), cands[i].text) for r, i in enumerate(order, 1)]

    def rerank_all(self, items: Sequence[tuple[Query, list[Candidate]]], ctx: StageContext) -> list[list[Candidate]]:
        caller = self._caller(ctx)
        self._caller_now = caller  # the stage's clock, for the seq2seq path's cached answers
        stats: dict[str, dict] = {}
        out = drive(items, lambda q, c: self._plan(caller, stats, q, c, ctx), caller, ctx, self.concurrency)
        ctx.stats["pairwise_comparisons"] += sum(v["comparisons"] for v in stats.values())
        ctx.stats["pairwise_per_query"] = {q: dict(v) for q, v in sorted(stats.items())}
        return out
