"""Groupwise LLM reranking (GroupRank, AQ-MedAI/Diver).

Candidates are shuffled into non-overlapping groups (default 20); for each group the model
writes brief reasoning and then a JSON object `{"[i]": score}` with 0-10 scores. Scores are
divided by 10 and averaged over `repeats` seeded shuffles (default 6). Broken JSON is repaired
where the reference repairs it (a doubled closing bracket in a key, a missing closing brace);
a group that still cannot be parsed gives all its documents the lowest score (0) for that
shuffle and is counted (parse failure + fallback). A document a parsed group leaves out gets
no score from that group (counted as `missing_scores`), as in the reference.

The final score fuses the reranker with the first-stage score, both min-max normalised per
query: alpha x rerank + (1 - alpha) x retriever (default alpha 0.6; alpha=1 turns fusion off).
"""

from __future__ import annotations

import json
import random
import re
from typing import Sequence

from rankify_cli.types import Candidate, Query, Reranker, StageContext

from .llm import MAX_PARSED_CHARS, COMMON_DOC, LLMRerankerBase, Plan, drive


def parse_group_scores(text: str, answer_pattern: str = r"<answer>(.*?)</answer>") -> dict[str, object]:
    """The last JSON object of a completion, repaired like the reference; ValueError if none."""
    if not text:
        raise ValueError("empty output")
    text = text[-MAX_PARSED_CHARS:]  # answers sit at the end; bounds regex work on huge outputs
    m = re.search(answer_pattern, text, re.DOTALL)
    if m:
        text = m.group(1).strip()
    blocks = re.findall(r"```json\s*([\s\S]+?)\s*```", text)
    if blocks:
        raw = blocks[-1].strip()
    else:
        objs = re.findall(r"\{[\s\S]*?\}", text)
        if not objs:
            raise ValueError("no JSON object")
        raw = objs[-1]
    raw = re.sub(r"(\[\d+\])\]", r"\1", raw.strip())  # "[7]]" -> "[7]"
    if raw.count("{") > raw.count("}"):
        raw += "}"
    raw = re.sub(r"\s+", " ", raw).strip()
    try:
        obj = json.loads(raw)
    except ValueError as e:
        raise ValueError(f"invalid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ValueError("JSON is not an object")
    return obj


def minmax(values: Sequence[float]) -> list[float]:
    if not values:
        return []
    lo, hi = min(values), max(values)
    if hi - lo <= 0:
        return [0.0] * len(values)
    return [(v - lo) / (hi - lo) for v in values]


class Groupwise(LLMRerankerBase, Reranker):
    __doc__ = (__doc__ or "") + "\n" + COMMON_DOC
    paradigm = "groupwise"
    default_template = "groupwise-grouprank"

    def __init__(self, model: str = "", template: str | None = None, group_size: int = 20, repeats: int = 6,
                 shuffle_seed: int = 666, alpha: float = 0.6,
                 backend: str | None = None, base_url: str | None = None, api_key_env: str | None = None,
                 concurrency: int = 16, timeout: float = 300.0, max_retries: int = 6, backoff: float = 0.5,
                 log_calls: str | None = None, max_new_tokens: int | None = None, temperature: float | None = None,
                 top_p: float | None = None, seed: int | None = None, revision: str | None = None,
                 device: str | None = None, dtype: str | None = None, batch_size: int = 4,
                 gguf_file: str | None = None, tokenizer: str | None = None, doc_max_chars: int | None = None,
                 cache: bool = True):
        if int(group_size) < 1 or int(repeats) < 1:
            raise ValueError(f"need group_size >= 1 and repeats >= 1 (got {group_size}, {repeats})")
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"alpha (the reranker's weight in the fusion) must be in [0, 1], got {alpha}")
        self.group_size, self.repeats = int(group_size), int(repeats)
        self.shuffle_seed, self.alpha = int(shuffle_seed), float(alpha)
        self._init_backend(model, template, backend, base_url, api_key_env, concurrency, timeout, max_retries,
                           backoff, log_calls, max_new_tokens, temperature, top_p, seed, revision, device, dtype,
                           batch_size, gguf_file, tokenizer, cache)
        self.doc_max_chars = int(doc_max_chars or self.template.get("doc_max_chars", 3000))

    def config(self) -> dict:
        return {"family": "groupwise", **self.backend.identity(), **self._template_config(),
                "group_size": self.group_size, "repeats": self.repeats, "shuffle_seed": self.shuffle_seed,
                "alpha": self.alpha, "doc_max_chars": self.doc_max_chars, **self._decoding_config()}

    def _doc(self, text: str) -> str:
        if self.template.get("collapse_newlines", True):
            text = re.sub(r"\n+", " ", text)
        return text[: self.doc_max_chars]

    def messages(self, query: str, texts: Sequence[str]) -> list[dict]:
        t = self.template
        line, sep = t.get("doc_line", "[{label}]. {text}\n\n"), t.get("doc_separator", "")
        docs = sep.join(line.format(label=i, text=x) for i, x in enumerate(texts, 1))
        msgs = [{"role": "system", "content": t["system"]}] if t.get("system") else []
        msgs.append({"role": "user", "content": t["user"].format(query=query, docs=docs, num=len(texts))})
        return msgs

    def groups(self, qid: str, n: int) -> list[list[int]]:
        out = []
        for r in range(self.repeats):
            idx = list(range(n))
            random.Random(f"{self.shuffle_seed}:{qid}:{r}").shuffle(idx)  # per query: resumable, order-free
            out.extend(idx[s:s + self.group_size] for s in range(0, n, self.group_size))
        return out

    def _plan(self, caller, query: Query, cands: list[Candidate]) -> Plan:
        n = len(cands)
        texts = [self._doc(c.text) for c in cands]
        groups = self.groups(query.id, n)
        responses = yield [self._request(self.messages(query.text, [texts[i] for i in g])) for g in groups]
        parser = self.template.get("parser") or {}
        pattern = parser.get("answer_pattern", r"<answer>(.*?)</answer>")
        scale = float(parser.get("max_score", 10))
        got: list[list[float]] = [[] for _ in range(n)]
        for g, resp in zip(groups, responses):
            try:
                obj = parse_group_scores(resp.text, pattern)
            except ValueError:
                caller.count(query.id, parse_failures=1, fallbacks=1)
                for i in g:
                    got[i].append(0.0)  # the lowest score
                continue
            seen = set()
            for key, val in obj.items():
                try:
                    local = int(str(key).strip().strip("[]")) - 1
                    score = float(val) / scale
                except (TypeError, ValueError):
                    continue
                if 0 <= local < len(g) and local not in seen and score == score:
                    seen.add(local)
                    got[g[local]].append(score)
            if len(seen) < len(g):
                caller.count(query.id, missing_scores=len(g) - len(seen))
        rr = [sum(v) / len(v) if v else 0.0 for v in got]
        if self.alpha < 1.0:
            final = [self.alpha * a + (1 - self.alpha) * b for a, b in zip(minmax(rr), minmax([c.score for c in cands]))]
        else:
            final = rr
        return [Candidate(c.doc_id, float(s), c.text) for c, s in zip(cands, final)]

    def rerank_all(self, items: Sequence[tuple[Query, list[Candidate]]], ctx: StageContext) -> list[list[Candidate]]:
        caller = self._caller(ctx)
        return drive(items, lambda q, c: self._plan(caller, q, c), caller, ctx, self.concurrency)
