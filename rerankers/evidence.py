"""Family `prism`: pointwise yes/no scoring that also keeps what the model says (Prism-Reranker).

Scores are the logit-pair family's (template prism: score = sigmoid(l_yes - l_no), i.e. the
softmax of the two labels). With `explain=true`, every document whose verdict is yes (score >=
the template's threshold, 0.5) is continued after the `yes` token, greedily, up to
max_new_tokens or the end token, and the text inside the template's fields
(`<contribution>`, `<evidence>`) is kept. The records go to the stage's `explanations`
(written as explanations.jsonl beside the run files) with token counts: generated tokens,
document tokens and evidence tokens, and the stage counts the evidence-to-document token ratio
(how much context an agent saves by reading the evidence instead of the document).
Generations are cached per (model, template, pair) like the scores.
"""

from __future__ import annotations

import re
from typing import Sequence

from rankify_cli.types import Candidate, CostClock, Query, StageContext, costed, uncost

from .base import pair_key
from .logit_pair import LogitPair

NAMESPACE = "prism-explain"


class Prism(LogitPair):
    family = "prism"

    def __init__(self, model: str, template: str = "prism", explain: bool = False, max_new_tokens: int | None = None,
                 **options):
        super().__init__(model, template=template, **options)
        spec = self.t.get("explain") or {}
        self.explain = bool(explain)
        self.max_new_tokens = int(max_new_tokens or spec.get("max_new_tokens", 256))
        self.fields = list(spec.get("fields", ["contribution", "evidence"]))
        self.threshold = float(spec.get("threshold", 0.5))

    def extra_config(self) -> dict:
        cfg = super().extra_config()
        if self.explain:  # explanations do not change scores, but they are part of what the run wrote
            cfg["explain"] = {"max_new_tokens": self.max_new_tokens, "fields": self.fields, "threshold": self.threshold}
        return cfg

    def parse(self, text: str) -> dict:
        out = {}
        for f in self.fields:
            m = re.search(rf"<{f}>(.*?)</{f}>", text, re.DOTALL)
            out[f] = m.group(1).strip() if m else None
        return out

    def rerank_all(self, items: Sequence[tuple[Query, list[Candidate]]], ctx: StageContext) -> list[list[Candidate]]:
        out = super().rerank_all(items, ctx)
        if not self.explain:
            return out
        tok = self.tokenizer()
        pos, _ = self.labels()
        fp = self.cache_fingerprint()
        todo = [(q, c) for (q, _), ranked in zip(items, out) for c in ranked if c.score >= self.threshold]
        keys = [pair_key(fp + ":explain", q.text, c.text) for q, c in todo]
        cached = {k: uncost(v, ctx) for k, v in (ctx.store.get_many(NAMESPACE, keys) if ctx.store is not None and keys else {}).items()}
        fresh_idx = [i for i, k in enumerate(keys) if k not in cached]
        ctx.stats["cache_hits"] += len(keys) - len(fresh_idx)
        generated: dict[str, list[int]] = {}
        if fresh_idx:
            clock = CostClock()
            prompts = self.encode([(todo[i][0].text, todo[i][1].text) for i in fresh_idx], ctx)
            eos = [t for t in {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")} if isinstance(t, int)]
            pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
            # the verdict is the positive label: the explanation is what the model writes after it
            results = self.backend.generate_ids([p + [pos] for p in prompts], max_new_tokens=self.max_new_tokens,
                                                pad_id=pad_id, eos=eos)
            generated = {keys[i]: list(ids) for i, (ids, _) in zip(fresh_idx, results)}
            costs = clock.charge(list(generated), calls=1)  # one generate call for all of them
            ctx.stats["compute_s"] += sum(c[0] for c in costs.values())
            ctx.stats["forward_calls"] += 1
            if ctx.store is not None:  # with what they cost, for a rerun from the cache to report
                ctx.store.put_many(NAMESPACE, {k: costed(v, costs[k]) for k, v in generated.items()})
        records, evidence_tokens, document_tokens = [], 0, 0
        for (q, c), k in zip(todo, keys):
            ids = generated[k] if k in generated else list(cached[k])
            text = tok.decode(ids, skip_special_tokens=True)
            fields = self.parse(text)
            doc_n = len(tok(c.text, add_special_tokens=False)["input_ids"])
            ev = fields.get("evidence")
            ev_n = len(tok(ev, add_special_tokens=False)["input_ids"]) if ev is not None else None
            records.append({"query_id": q.id, "doc_id": c.doc_id, "score": c.score, **fields, "text": text,
                            "generated_tokens": len(ids), "document_tokens": doc_n, "evidence_tokens": ev_n})
            if ev_n is not None:
                evidence_tokens += ev_n
                document_tokens += doc_n
            else:
                ctx.stats["explanations_without_evidence"] += 1
        ctx.stats["explanations_written"] += len(records)
        if document_tokens:
            ctx.stats["evidence_to_document_token_ratio"] = round(evidence_tokens / document_tokens, 6)
        ctx.stats["explanations"] = records  # written as explanations.jsonl beside the run, not in run_info
        return out
