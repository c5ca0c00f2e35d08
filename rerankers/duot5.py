"""Family `duot5`: pairwise seq2seq reranking (Pradeep et al., duoT5) on the monoT5 machinery.

For the first `top_k` candidates (the monoT5 head in a `monot5 >> duot5` cascade; 50 in the
paper), every ordered pair (d_i, d_j), i != j, is one encoder input from the template
(rerankers/templates/duot5.json) and one decoder step; the label logits come from
LogitPair.label_logits, as monoT5's do. The reference is pyterrier-t5 0.3.0
(pyterrier_t5/__init__.py, DuoT5ReRanker):
- aggregate=pyterrier (default): with l = log P(true | q, d_i, d_j), d_i gains l and d_j
  gains 1 - l, summed over all ordered pairs (the reference adds 1 - log-probability);
- aggregate=probability: the paper's Sym-Sum, d_i gains p and d_j gains 1 - p.
Departure (named): the reference pads each batch before cutting, so with batch_size > 1 its
inputs depend on the other pairs of the batch; here each pair is cut alone, which equals the
reference at batch_size=1. Candidates past `top_k` keep their order below the head.
Comparisons are counted per query (n (n - 1) each): the cost that decides whether pairwise
reranking is worth it.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

from rankify_cli.errors import ConfigError
from rankify_cli.types import Candidate, CostClock, Query, StageContext, charge_cached, fingerprint

from .base import NeuralReranker, cache_entry, pair_key, read_template
from .logit_pair import LogitPair, render

AGGREGATES = ("pyterrier", "probability")


class DuoT5(LogitPair):
    family = "duot5"

    def __init__(self, model: str, top_k: int = 50, aggregate: str = "pyterrier", template: str = "duot5",
                 batch_size: int = 16, max_length: int | None = None, device: str | None = None,
                 dtype: str | None = None, revision: str | None = None, trust_remote_code: bool = False,
                 backend: str | None = None, base_url: str | None = None, api_key_env: str | None = None,
                 concurrency: int = 16, timeout: float = 120.0, max_retries: int = 6):
        self.template_name, self.t = read_template(str(template))
        if self.t.get("kind") != "seq2seq" or "document0" not in self.t:
            raise ConfigError(f"template '{template}' is not a pairwise seq2seq (duoT5) template")
        if aggregate not in AGGREGATES:
            raise ConfigError(f"aggregate must be one of {', '.join(AGGREGATES)} (got {aggregate!r})")
        if not isinstance(top_k, int) or top_k < 2:
            raise ConfigError(f"top_k must be an integer of at least 2 (got {top_k!r})")
        self.default_max_length = int(self.t.get("max_length", 512))
        NeuralReranker.__init__(self, model, batch_size=batch_size, max_length=max_length, device=device,
                                dtype=dtype, revision=revision, trust_remote_code=trust_remote_code,
                                backend=backend, base_url=base_url, api_key_env=api_key_env,
                                concurrency=concurrency, timeout=timeout, max_retries=max_retries)
        self.instruction = None
        self.top_k, self.aggregate = top_k, aggregate

    def extra_config(self) -> dict:
        return {"template": self.template_name, "template_fingerprint": fingerprint(self.t)[:16],
                "top_k": self.top_k, "aggregate": self.aggregate}

    # -- inputs ----------------------------------------------------------------------------
    def _part(self, tok, text: str) -> list[int]:
        ids = tok(text, verbose=False)["input_ids"]
        # the reference drops each part's end-of-sequence (the prompt's one ends the input)
        return ids[:-1] if ids and ids[-1] == tok.eos_token_id else ids

    def encode_pair(self, tok, query: str, d0: str, d1: str, stats: Counter | None = None) -> list[int]:
        q = self._part(tok, render(self.t["query"], query=query))
        a = self._part(tok, render(self.t["document0"], document=d0))
        b = self._part(tok, render(self.t["document1"], document=d1))
        prompt = tok(self.t["suffix"], verbose=False)["input_ids"]
        room = self.max_length - len(prompt)
        excess = len(q) + len(a) + len(b) - room
        if excess > 0:
            cut = math.ceil(excess / 2)
            a, b = a[:-cut], b[:-cut]
            if stats is not None:
                stats["truncated_pairs"] += 1
        return q + a + b + prompt

    # -- scoring ---------------------------------------------------------------------------
    def pair_log_probs(self, triples: list[tuple[str, str, str]], ctx: StageContext) -> list[float]:
        """log P(true) over (true, false) per (query, d0, d1): the backend's label log-probabilities
        after one decoder step, as monoT5's."""
        tok = self.tokenizer()
        pos, neg = self.labels()
        ids = [self.encode_pair(tok, q, a, b, ctx.stats) for q, a, b in triples]
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0

        def run(batch):
            lps = self.backend.label_logprobs([ids[i] for i in batch], [pos, neg], kind="seq2seq", pad_id=pad_id)
            return [self.score_rule(p, n) for p, n in lps]  # the template's rule: log_softmax

        return [float(v) for v in self.map_batches([len(s) for s in ids], run)]

    def rerank_all(self, items: Sequence[tuple[Query, list[Candidate]]], ctx: StageContext) -> list[list[Candidate]]:
        config_fp = self.cache_fingerprint()
        per_query: dict[str, dict] = {}
        out = []
        ctx.stats["compute_s"] += 0.0
        for q, cands in items:
            head, tail = cands[: self.top_k], cands[self.top_k:]
            order = [(i, j) for i in range(len(head)) for j in range(len(head)) if i != j]
            keys = [pair_key(config_fp, q.text, head[i].text + "\x00" + head[j].text) for i, j in order]
            cached = {k: cache_entry(v) for k, v in (ctx.store.get_many(self.family, keys) if ctx.store is not None else {}).items()}
            charge_cached(ctx, sum(v[1] for v in cached.values()), sum(v[2] for v in cached.values()))
            todo = [k for k in dict.fromkeys(keys) if k not in cached]
            where = {k: n for n, k in enumerate(keys)}
            fresh = {}
            if todo:
                triples = [(q.text, head[order[where[k]][0]].text, head[order[where[k]][1]].text) for k in todo]
                before = self.forward_calls
                clock = CostClock(calls0=before)
                fresh = dict(zip(todo, self.pair_log_probs(triples, ctx)))
                costs = clock.charge(todo, calls=self.forward_calls)  # the query's comparisons share its time
                ctx.stats["forward_calls"] += self.forward_calls - before
                ctx.stats["compute_s"] += sum(c[0] for c in costs.values())
                if ctx.store is not None:  # with what they cost, as the pointwise families store scores
                    ctx.store.put_many(self.family, {k: [v, *costs[k]] for k, v in fresh.items()})
            scores = [0.0] * len(head)
            for (i, j), k in zip(order, keys):
                logp = float(fresh[k] if k in fresh else cached[k][0])
                gain = logp if self.aggregate == "pyterrier" else math.exp(logp)
                scores[i] += gain
                scores[j] += 1.0 - gain
            ctx.stats["duo_comparisons"] += len(order)
            ctx.stats["cached_scores"] += len(keys) - len(todo)
            ctx.stats["scored_pairs"] += len(todo)
            per_query[q.id] = {"comparisons": len(order)}
            ranked = [Candidate(c.doc_id, s, c.text) for c, s in zip(head, scores)]
            floor = min(scores, default=0.0)
            ranked += [Candidate(c.doc_id, floor - 1.0 - n, c.text) for n, c in enumerate(tail)]
            out.append(ranked)
            ctx.progress(1)
        ctx.stats["duo_per_query"] = per_query
        return out
