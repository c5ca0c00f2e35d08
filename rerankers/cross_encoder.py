"""Family `cross-encoder`: one forward pass per (query, document) pair, one relevance logit.

The tokenizer builds the pair input exactly as sentence-transformers' `CrossEncoder` does:
each pair truncated `longest_first` to max_length (512 by default) on its own, so a pair's
tokens never depend on its batch neighbours and a cached score equals a fresh one. A 1-logit head gives the score directly; a
2-logit head (monoBERT style) gives logit[1] - logit[0]. The backend scores the rendered
pairs (`pair_scores`): locally from the token ids, on a server (vLLM `/v1/score`, `/rerank`,
TEI) from the texts with the server's copy of the same tokenizer.
"""

from __future__ import annotations

from rankify_cli.types import StageContext

from .backends import Pair
from .base import NeuralReranker, load_once


class CrossEncoder(NeuralReranker):
    family = "cross-encoder"
    default_max_length = 512

    def tokenizer(self):
        def loader():
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(self.model, **self.hf_kwargs())

        return load_once(self.load_key("tokenizer"), loader, self.model, self.family)

    def encode(self, pairs: list[tuple[str, str]], ctx: StageContext | None = None):
        """Token ids (and token type ids) per pair, as sentence-transformers' CrossEncoder builds them:
        each pair cut `longest_first` to max_length on its own (the rule behind the SBERT numbers)."""
        tok = self.tokenizer()
        if not pairs:
            return [], None
        queries = [q for q, _ in pairs]
        docs = [d for _, d in pairs]
        enc = tok(queries, docs, truncation="longest_first", max_length=self.max_length, verbose=False)
        ids, types = enc["input_ids"], enc.get("token_type_ids")
        if ctx is not None:  # only a pair that fills max_length can have been cut
            full = [i for i, s in enumerate(ids) if len(s) >= self.max_length]
            if full:
                whole = tok([queries[i] for i in full], [docs[i] for i in full], verbose=False)["input_ids"]
                ctx.stats["truncated_pairs"] += sum(1 for s in whole if len(s) > self.max_length)
        return ids, types

    def token_pairs(self, pairs: list[tuple[str, str]], ctx: StageContext | None = None) -> list[Pair]:
        """What a backend that runs the model here receives: the token ids alone."""
        ids, types = self.encode(pairs, ctx)
        return [Pair(q, d, ids[i], types[i] if types is not None else None) for i, (q, d) in enumerate(pairs)]

    def render(self, pairs: list[tuple[str, str]], ctx: StageContext | None = None) -> list[Pair]:
        """What a server (which tokenizes the pair itself) receives: the token pairs with their
        texts, a cut document (or query) written as its kept tokens."""
        tok = self.tokenizer()
        out = self.token_pairs(pairs, ctx)
        for p in out:
            t = p.types
            if t is not None and len(p.ids) == self.max_length and 1 in t:  # maybe cut: the kept tokens
                kept = tok.decode([x for x, k in zip(p.ids, t) if k == 1], skip_special_tokens=True)
                if len(kept) < len(p.document.strip()):
                    p.document = kept
                kept_q = tok.decode([x for x, k in zip(p.ids, t) if k == 0], skip_special_tokens=True)
                if len(kept_q) < len(p.query.strip()):  # longest_first cut the query too
                    p.query = kept_q
        return out

    def _compute(self, pairs: list[tuple[str, str]], ctx: StageContext) -> list[float]:
        tok = self.tokenizer()
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        if not self.backend.local:  # a server tokenizes: batches are rendered while others are in flight
            specials = len(tok("", "", add_special_tokens=True)["input_ids"])

            def short(i: int) -> bool:
                # a token covers at least one byte, so a pair of few bytes cannot need cutting: it goes
                # as it is; the others are tokenized here to cut their document
                q, d = pairs[i]
                return len(q.encode("utf-8")) + len(d.encode("utf-8")) + specials <= self.max_length

            def prepare(batch):
                out = {i: Pair(*pairs[i]) for i in batch if short(i)}
                todo = [i for i in batch if i not in out]
                if todo:
                    with self.render_lock:  # one tokenizer, shared with any other thread
                        out.update(zip(todo, self.render([pairs[i] for i in todo], ctx)))
                return [out[i] for i in batch]

            return self.map_batches([len(q) + len(d) for q, d in pairs],
                                    lambda batch, rendered: self.backend.pair_scores(rendered, pad_id=pad_id),
                                    emit=True, prepare=prepare, ready=lambda b: all(short(i) for i in b))
        # tokenized up front, in one call (a fast tokenizer spreads it over the cores), so batches
        # are formed by exact token length; a pair's tokens never depend on its batch
        rendered = self.token_pairs(pairs, ctx) if self.backend.pair_ids else self.render(pairs, ctx)
        return self.map_batches([len(p.ids) for p in rendered], lambda b, packed: self.backend.packed_scores(packed),
                                emit=True, prepare=lambda b: self.backend.pack_pairs([rendered[i] for i in b], pad_id=pad_id))
