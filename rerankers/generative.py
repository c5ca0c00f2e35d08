"""Family `generative` (ERank): the model writes a 0-10 score, parsed from its text.

One user message (template `erank` by default) asks for a relevance score inside
<answer>N</answer> after thinking. Decoding is greedy. The integer is parsed after the think
block; the score is N x P(N), P being the probability the model gave the token(s) spelling N
(product over the digits when N takes several tokens). Text that cannot be parsed (no
answer tag, a number out of range, thinking that never ended) scores -1, below every parsed
score, and is counted in stats["parse_failures"]. The backend continues the rendered token ids
greedily and returns each token's probability (`generate_ids`): locally from the logits, on a
vLLM server from `/v1/completions` log-probabilities.
"""

from __future__ import annotations

import re

from rankify_cli.errors import ConfigError
from rankify_cli.types import StageContext, fingerprint

from .base import NeuralReranker, fit_document, for_dataset, load_once, read_template

FAILED = -1.0
_FIELD = re.compile(r"\{(query|document|instruction)\}")


class Generative(NeuralReranker):
    family = "generative"

    def __init__(self, model: str, template: str = "erank", instruction: str | None = None,
                 max_new_tokens: int | None = None, batch_size: int = 8, max_length: int | None = None,
                 device: str | None = None, dtype: str | None = None, revision: str | None = None,
                 trust_remote_code: bool = False,
                 backend: str | None = None, base_url: str | None = None, api_key_env: str | None = None,
                 concurrency: int = 16, timeout: float = 120.0, max_retries: int = 6, served_model: str | None = None,
                 max_per_replica: int | None = None):
        self.template_name, self.t = read_template(str(template))
        if self.t.get("kind") != "generative":
            raise ConfigError(f"template '{template}' is not a generative template")
        self.default_max_length = int(self.t.get("max_length", 8192))
        super().__init__(model, batch_size=batch_size, max_length=max_length, device=device, dtype=dtype,
                         revision=revision, trust_remote_code=trust_remote_code,
                         backend=backend, base_url=base_url, api_key_env=api_key_env, concurrency=concurrency,
                         timeout=timeout, max_retries=max_retries, served_model=served_model,
                         max_per_replica=max_per_replica)
        self._instruction = str(instruction) if instruction is not None else None
        self.dataset = ""  # set per run: the template may give each dataset its own instruction
        self.max_query_tokens = int(self.t.get("max_query_tokens", 0))
        self.max_document_tokens = int(self.t.get("max_document_tokens", 0))
        self.max_new_tokens = int(max_new_tokens if max_new_tokens is not None else self.t.get("max_new_tokens", 1024))
        if self.max_new_tokens < 1:
            raise ConfigError("max_new_tokens must be positive")
        self.answer_re = re.compile(self.t.get("answer_regex", r"<answer>\s*(\d+)\s*</answer>"), re.S)
        self.lo, self.hi = int(self.t.get("min_score", 0)), int(self.t.get("max_score", 10))

    @property
    def instruction(self) -> str:
        """The user's instruction, else the template's for this dataset (ERank's Table 7 gives
        some BRIGHT subsets their own, the others one shared), else its default."""
        if self._instruction is not None:
            return self._instruction
        found = for_dataset(self.t.get("dataset_instructions"), self.dataset)
        return found if found is not None else self.t.get("instruction", "")

    def extra_config(self) -> dict:
        # the same before and after a run (a result's config hash must not move): a dataset's own
        # instruction is in the template (its fingerprint), and in the pairs' cache key below
        if self._instruction is not None:
            shown = self._instruction
        elif self.t.get("dataset_instructions"):
            shown = "by dataset (template dataset_instructions)"
        else:
            shown = self.t.get("instruction", "")
        return {"template": self.template_name, "template_fingerprint": fingerprint(self.t)[:16], "instruction": shown,
                "max_new_tokens": self.max_new_tokens, "decoding": "greedy"}

    def cache_fingerprint(self) -> str:
        return fingerprint({"config": super().cache_fingerprint(), "instruction": self.instruction})

    def rerank_all(self, items, ctx: StageContext):
        self.dataset = ctx.dataset or ""  # before the cache key is made: it holds the instruction
        return super().rerank_all(items, ctx)

    def tokenizer(self):
        def loader():
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(self.model, **self.hf_kwargs())
            tok.padding_side = "left"
            return tok

        return load_once(self.load_key("tokenizer"), loader, self.model, self.family)

    # -- prompts -------------------------------------------------------------------------
    def user_message(self, query: str, document: str) -> str:
        values = {"query": query, "document": document, "instruction": self.instruction}
        return _FIELD.sub(lambda m: values[m.group(1)], self.t["user"])

    def prompt_text(self, query: str, document: str) -> str:
        tok = self.tokenizer()
        messages = [{"role": "user", "content": self.user_message(query, document)}]
        if not getattr(tok, "chat_template", None):
            raise ConfigError(f"model '{self.model}' has no chat template; the generative family needs one")
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode(self, pairs: list[tuple[str, str]], ctx: StageContext | None = None) -> list[list[int]]:
        return [self.render_pair(q, d, ctx)[1] for q, d in pairs]

    def render_pair(self, q: str, d: str, ctx: StageContext | None = None) -> tuple[str, list[int]]:
        """The prompt the model receives and its token ids: query and document cut to the
        template's token limits, then the document shortened until the prompt fits max_length."""
        if ctx is not None and ctx.dataset:  # the dataset's instruction
            self.dataset = ctx.dataset
        tok = self.tokenizer()
        q = self._cut(tok, q, self.max_query_tokens, ctx, "truncated_queries")
        d = self._cut(tok, d, self.max_document_tokens, ctx, "truncated_documents")
        text = self.prompt_text(q, d)
        ids = tok(text, add_special_tokens=False, verbose=False)["input_ids"]
        if len(ids) > self.max_length:
            d_ids = tok(d, add_special_tokens=False, verbose=False)["input_ids"]
            text, ids = fit_document(tok, self.prompt_text, q, d_ids, len(ids), self.max_length)
            if ctx is not None:
                ctx.stats["truncated_documents"] += 1
        return text, ids

    @staticmethod
    def _cut(tok, text: str, limit: int, ctx: StageContext | None, counter: str) -> str:
        """A query or document over `limit` tokens cut to its first `limit` (ERank App. D: 2,048)."""
        if limit <= 0 or len(text.encode("utf-8")) <= limit:  # a token covers at least one byte
            return text
        ids = tok(text, add_special_tokens=False, verbose=False)["input_ids"]
        if len(ids) <= limit:
            return text
        if ctx is not None:
            ctx.stats[counter] += 1
        return tok.decode(ids[:limit], skip_special_tokens=True)

    # -- parsing -------------------------------------------------------------------------
    def parse(self, text: str) -> tuple[int, int, int] | None:
        """(N, start, end) of the answer's digits in `text`, or None when unparseable."""
        start = 0
        if "</think>" in text:
            start = text.rindex("</think>") + len("</think>")
        elif "<think>" in text:
            return None  # the model never finished thinking
        m = None
        for m in self.answer_re.finditer(text, start):
            pass
        if m is None:
            return None
        n = int(m.group(1))
        if not self.lo <= n <= self.hi:
            return None
        return n, m.start(1), m.end(1)

    def score_output(self, tok, gen_ids: list[int], token_probs: list[float]) -> float | None:
        """N x P(N) from generated ids and the probability of each generated token; None when
        unparseable."""
        text = tok.decode(gen_ids, skip_special_tokens=False)
        found = self.parse(text)
        if found is None:
            return None
        n, a, b = found

        def prefix_len(k: int) -> int:
            return len(tok.decode(gen_ids[:k], skip_special_tokens=False))

        lo, hi = 0, len(gen_ids)  # first token whose end passes position a
        while lo < hi:
            mid = (lo + hi) // 2
            if prefix_len(mid + 1) > a:
                hi = mid
            else:
                lo = mid + 1
        p, k = 1.0, lo
        while k < len(gen_ids) and prefix_len(k) < b:
            p *= float(token_probs[k])
            k += 1
        return n * p

    # -- scoring -------------------------------------------------------------------------
    def _compute(self, pairs: list[tuple[str, str]], ctx: StageContext) -> list[float]:
        tok = self.tokenizer()
        ids = self.encode(pairs, ctx)
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        eos = tok.eos_token_id
        eos = list(eos) if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else [])

        def run(batch):
            outs = self.backend.generate_ids([ids[i] for i in batch], max_new_tokens=self.max_new_tokens,
                                             pad_id=pad_id, eos=eos)
            scores = [self.score_output(tok, g, p) for g, p in outs]
            self.count(ctx, "parse_failures", sum(1 for s in scores if s is None))
            return [FAILED if s is None else s for s in scores]

        return self.map_batches([len(s) for s in ids], run, emit=True)
