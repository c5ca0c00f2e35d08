"""Family `cross-encoder`: one forward pass per (query, document) pair, one relevance logit.

The tokenizer builds the pair input; only the document is truncated (to max_length, 512 by
default), so the query is always kept whole. A 1-logit head gives the score directly; a
2-logit head (monoBERT style) gives logit[1] - logit[0].
"""

from __future__ import annotations

from rankify_cli.errors import ConfigError
from rankify_cli.types import StageContext

from .base import NeuralReranker, gather_scores, length_batches, load_once, pad, require_torch, torch_dtype


class CrossEncoder(NeuralReranker):
    family = "cross-encoder"
    default_max_length = 512

    def _load(self):
        def loader():
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            tok = AutoTokenizer.from_pretrained(self.model, **self.hf_kwargs())
            model = AutoModelForSequenceClassification.from_pretrained(
                self.model, dtype=torch_dtype(self.dtype), **self.hf_kwargs())
            model.to(self.device).eval()
            return tok, model

        return load_once(self.load_key(), loader, self.model, self.family)

    def encode(self, pairs: list[tuple[str, str]], ctx: StageContext | None = None):
        """Token ids (and token type ids) per pair, document side truncated."""
        tok, _ = self._load()
        queries = [q for q, _ in pairs]
        docs = [d for _, d in pairs]
        enc = tok(queries, docs, truncation=False, add_special_tokens=True, verbose=False)
        ids, types = enc["input_ids"], enc.get("token_type_ids")
        long = [i for i, s in enumerate(ids) if len(s) > self.max_length]
        if long:
            sub_q = [queries[i] for i in long]
            sub_d = [docs[i] for i in long]
            try:
                cut = tok(sub_q, sub_d, truncation="only_second", max_length=self.max_length)
            except Exception:  # the query alone is longer than max_length: cut both sides
                cut = tok(sub_q, sub_d, truncation="longest_first", max_length=self.max_length)
                if ctx is not None:
                    ctx.stats["truncated_queries"] += len(long)
            for j, i in enumerate(long):
                ids[i] = cut["input_ids"][j]
                if types is not None:
                    types[i] = cut["token_type_ids"][j]
            if ctx is not None:
                ctx.stats["truncated_documents"] += len(long)
        return ids, types

    def _compute(self, pairs: list[tuple[str, str]], ctx: StageContext) -> list[float]:
        torch = require_torch()
        tok, model = self._load()
        ids, types = self.encode(pairs, ctx)
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        parts = []
        with torch.inference_mode():
            for batch in length_batches([len(s) for s in ids], self.batch_size, self.sort_batches):
                input_ids, mask = pad([ids[i] for i in batch], pad_id, "right")
                inputs = {"input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device)}
                if types is not None:
                    tt, _ = pad([types[i] for i in batch], 0, "right")
                    inputs["token_type_ids"] = tt.to(self.device)
                logits = self.forward(model, **inputs).logits.float()
                if logits.shape[-1] == 1:
                    s = logits[:, 0]
                elif logits.shape[-1] == 2:
                    s = logits[:, 1] - logits[:, 0]
                else:
                    raise ConfigError(f"model '{self.model}' has {logits.shape[-1]} output labels; "
                                      "a cross-encoder needs 1 (relevance logit) or 2 (not relevant, relevant)")
                parts.append((batch, s))
                self.emit(batch, s)
        return gather_scores(parts, len(pairs))
