"""Family `first`: FIRST (Reddy et al.; rank_llm's `use_alpha` + `use_logits`), listwise with
single-token labels ranked by the first answer token's logits.

Windows slide as listwise's (20, stride 10, from the back). Each window's prompt is rank_llm's
RankZephyr prompt with alphabetical identifiers (templates/listwise-first.json); the chat-
templated prompt plus the answer's opening '[' goes to the backend once, and the window is
reordered by the log-probabilities of its label letters at the next token (rank_llm,
rank_listwise_os_llm.py: generate 2 tokens with 30 logprobs and read position 1). One forward
per window instead of a full permutation; any backend with `label_logprobs` (hf, vllm,
openai on a vLLM server via prompt_logprobs) serves it.
Departure (named): rank_llm sees the top-30 log-probabilities only and appends labels missing
from them in window order; here every label's log-probability is read. A window whose labels
all get the same log-probability carries no preference: it keeps its order (a counted fallback).
"""

from __future__ import annotations

import threading
from typing import Sequence

from rankify_cli.errors import ConfigError
from rankify_cli.types import Candidate, CostClock, Query, StageContext, costed, fingerprint, uncost

from .listwise import Listwise, replace_bracket_numbers, sliding_windows

NAMESPACE = "first"


class First(Listwise):
    paradigm = "listwise"
    default_template = "listwise-first"

    def __init__(self, model: str = "", template: str | None = None, **options):
        options.setdefault("exact_answer", False)
        super().__init__(model, template=template or self.default_template, **options)
        if self.window > 26:
            raise ConfigError(f"FIRST labels windows with the letters A-Z: window must be <= 26 (got {self.window})")
        self._labels: list[int] | None = None
        self._lock = threading.Lock()

    def config(self) -> dict:
        return {**super().config(), "family": "first", "scoring": "first-token label log-probabilities"}

    def messages(self, query: str, passages: Sequence[str]) -> list[dict]:
        """rank_llm's single-turn prompt with identifiers chr(ord('A') - 1 + rank)."""
        t = self.template
        if t.get("replace_bracket_numbers", True):
            query = replace_bracket_numbers(query)
        num = len(passages)
        msgs = [{"role": "system", "content": t["system"]}] if t.get("system") else []
        body = "".join(t["body_user"].format(rank=chr(64 + r), candidate=p) for r, p in enumerate(passages, 1))
        msgs.append({"role": "user", "content": t["prefix_user"].format(num=num, query=query) + body
                     + t["suffix_user"].format(num=num, query=query)})
        return msgs

    def _tokenizer(self):
        tok = self.backend.chat_tokenizer()
        if tok is None:
            raise ConfigError("FIRST renders token ids itself: it needs the model's tokenizer (backend=hf or vllm, "
                              "or tokenizer=HF_ID with backend=openai)")
        return tok

    def label_ids(self) -> list[int]:
        if self._labels is None:
            tok = self._tokenizer()
            ids = []
            for i in range(26):
                letter = chr(65 + i)
                tid = tok.convert_tokens_to_ids(letter)
                if tid is None or tid == tok.unk_token_id:
                    enc = tok.encode(letter, add_special_tokens=False)
                    if len(enc) != 1:
                        raise ConfigError(f"label {letter!r} is not one token of this model's vocabulary")
                    tid = enc[0]
                ids.append(int(tid))
            self._labels = ids
        return self._labels

    def prompt_ids(self, msgs: list[dict]) -> list[int]:
        tok = self._tokenizer()
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True,
                                       **(self.template.get("chat_template_kwargs") or {}))
        # rank_llm hands the rendered string to vLLM, which adds the tokenizer's start token
        return tok(text + self.template.get("answer_prefix", "["))["input_ids"]

    def _window_order(self, query: Query, msgs: list[dict], n: int, ctx: StageContext, per_query: dict) -> list[int]:
        ids = self.prompt_ids(msgs)
        labels = self.label_ids()[:n]
        key = fingerprint({"v": 1, **self.backend.cache_identity(), "ids": ids, "labels": labels})
        lps = None
        if ctx.store is not None and self.use_cache:
            with self._lock:
                lps = ctx.store.get_many(NAMESPACE, [key]).get(key)
        mine = per_query.setdefault(query.id, {"windows": 0, "fallbacks": 0, "cache_hits": 0})
        mine["windows"] += 1
        if lps is None:
            lps = self.backend.label_logprobs([ids], labels, kind="causal", pad_id=0)[0]
            ctx.stats["first_forward_calls"] += 1
            ctx.stats["forward_calls"] += 1
            self._model_calls += 1
            cost = self._clock.charge([key], calls=self._model_calls)[key]
            if ctx.store is not None and self.use_cache:
                with self._lock:  # with what it cost, for a rerun from the cache to report
                    ctx.store.put_many(NAMESPACE, {key: costed(list(lps), cost)})
        else:
            lps = uncost(lps, ctx)
            mine["cache_hits"] += 1
        lps = [float(v) for v in lps]
        if len(lps) != n or any(v != v for v in lps) or len(set(lps)) == 1:
            mine["fallbacks"] += 1
            ctx.stats["first_fallbacks"] += 1
            return list(range(n))
        return sorted(range(n), key=lambda i: (-lps[i], i))

    def rerank_all(self, items: Sequence[tuple[Query, list[Candidate]]], ctx: StageContext) -> list[list[Candidate]]:
        per_query: dict[str, dict] = {}
        out = []
        self._clock, self._model_calls = CostClock(), 0
        for query, cands in items:
            order = list(cands)
            qtext = self.prepare_query(query.text)
            for start, end in sliding_windows(len(order), self.window, self.stride):
                win = order[start:end]
                msgs, _ = self.window_messages(qtext, [self._words(c.body, c.title) for c in win])
                perm = self._window_order(query, msgs, len(win), ctx, per_query)
                order[start:end] = [win[i] for i in perm]
            if self.scores == "rank":
                out.append([Candidate(c.doc_id, -float(r), c.text) for r, c in enumerate(order, 1)])
            else:
                places = sorted((c.score for c in cands), reverse=True)
                out.append([Candidate(c.doc_id, s, c.text) for s, c in zip(places, order)])
            ctx.progress(1)
        ctx.stats["compute_s"] += sum(c[0] for c in self._clock.costs.values())
        ctx.stats["first_windows"] += sum(v["windows"] for v in per_query.values())
        ctx.stats["first_per_query"] = {q: dict(v) for q, v in sorted(per_query.items())}
        return out
