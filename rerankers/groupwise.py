"""Groupwise LLM reranking (GroupRank, AQ-MedAI/Diver `Reranker/rerank_groupwise.py`).

Candidates are shuffled into non-overlapping groups (default 20); for each group the model
writes brief reasoning and then a JSON object `{"[i]": score}` with 0-10 scores. Scores are
divided by 10 and averaged over `repeats` shuffles (default 6). As the reference:
- the shuffles come from one stream seeded 666 for the run: for each repeat, each query (in
  the order given) shuffles its current order in place (`shuffle=query`: a seeded stream per
  query and repeat, independent of the other queries);
- broken JSON is repaired where the reference repairs it (a doubled closing bracket in a
  key, a missing closing brace); a group whose answer still cannot be read, or with any key
  that names no document of the group (Python indexing, so `[0]` is its last) or a score that
  is not a number, gives every document of the group 0 for that shuffle (counted: parse
  failure + fallback); a document a parsed group leaves out gets no score from it (counted
  as `missing_scores`), one never scored ranks below all scored ones (the reference drops it);
- the final score is alpha x rerank + (1 - alpha) x the raw first-stage score (alpha 0.6;
  `fusion=minmax` normalises both per query first; alpha=1 turns fusion off);
- the reference samples (temperature 0.3, top-p 0.8, the template's decoding, sent by
  backend=openai); hf and vllm decode greedily.
"""

from __future__ import annotations

import json
import math
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


def group_scores(obj: dict, group: Sequence[int], scale: float = 10.0) -> list[tuple[int, float]]:
    """(candidate, score / scale) for every key of a parsed answer, as the reference reads them
    (`dids[int(key.strip().strip('[]')) - 1]`, `score / 10`); ValueError if any key names no
    document of the group or any score is not a finite number (the whole group then scores 0)."""
    out = []
    for key, val in obj.items():
        try:
            pos = int(str(key).strip().strip("[]")) - 1
        except ValueError:
            raise ValueError(f"key {key!r} is not a document number") from None
        if not -len(group) <= pos < len(group):
            raise ValueError(f"key {key!r} names no document of a group of {len(group)}")
        if not isinstance(val, (int, float)) or not math.isfinite(val):  # NaN would leave the order undefined
            raise ValueError(f"score {val!r} is not a number")
        out.append((group[pos], float(val) / scale))
    return out


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
                 shuffle_seed: int = 666, alpha: float = 0.6, fusion: str = "raw", shuffle: str = "run",
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
        if fusion not in ("raw", "minmax"):
            raise ValueError(f"fusion must be raw or minmax (got {fusion!r})")
        if shuffle not in ("run", "query"):
            raise ValueError(f"shuffle must be run or query (got {shuffle!r})")
        self.fusion, self.shuffle = fusion, shuffle
        self.group_size, self.repeats = int(group_size), int(repeats)
        self.shuffle_seed, self.alpha = int(shuffle_seed), float(alpha)
        self._init_backend(model, template, backend, base_url, api_key_env, concurrency, timeout, max_retries,
                           backoff, log_calls, max_new_tokens, temperature, top_p, seed, revision, device, dtype,
                           batch_size, gguf_file, tokenizer, cache)
        self.doc_max_chars = int(doc_max_chars or self.template.get("doc_max_chars", 3000))

    def config(self) -> dict:
        return {"family": "groupwise", **self.backend.identity(), **self._template_config(),
                "group_size": self.group_size, "repeats": self.repeats, "shuffle_seed": self.shuffle_seed,
                "alpha": self.alpha, "fusion": self.fusion, "shuffle": self.shuffle, "doc_max_chars": self.doc_max_chars, **self._decoding_config()}

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
        """shuffle=query: this query's groups, from a stream of its own."""
        out = []
        for r in range(self.repeats):
            idx = list(range(n))
            random.Random(f"{self.shuffle_seed}:{qid}:{r}").shuffle(idx)  # per query: resumable, order-free
            out.extend(idx[s:s + self.group_size] for s in range(0, n, self.group_size))
        return out

    def run_groups(self, items: Sequence[tuple[Query, list[Candidate]]]) -> dict[str, list[list[int]]]:
        """shuffle=run: every query's groups from one stream, as the reference draws them
        (repeat by repeat, query by query, each shuffling its previous order in place)."""
        rng = random.Random(self.shuffle_seed)
        order = {q.id: list(range(len(c))) for q, c in items}
        out: dict[str, list[list[int]]] = {q.id: [] for q, _ in items}
        for _ in range(self.repeats):
            for q, _c in items:
                idx = order[q.id]
                rng.shuffle(idx)
                out[q.id].extend(idx[s:s + self.group_size] for s in range(0, len(idx), self.group_size))
        return out

    def _plan(self, caller, query: Query, cands: list[Candidate], groups: list[list[int]] | None = None) -> Plan:
        n = len(cands)
        texts = [self._doc(c.text) for c in cands]
        groups = groups if groups is not None else self.groups(query.id, n)
        responses = yield [self._request(self.messages(query.text, [texts[i] for i in g])) for g in groups]
        parser = self.template.get("parser") or {}
        pattern = parser.get("answer_pattern", r"<answer>(.*?)</answer>")
        scale = float(parser.get("max_score", 10))
        got: list[list[float]] = [[] for _ in range(n)]
        for g, resp in zip(groups, responses):
            try:
                scored = group_scores(parse_group_scores(resp.text, pattern), g, scale)
            except ValueError:
                caller.count(query.id, parse_failures=1, fallbacks=1)
                scored = [(i, 0.0) for i in g]  # the reference: the whole group scores 0
            for i, score in scored:
                got[i].append(score)
            missing = len(set(g) - {i for i, _ in scored})
            if missing:
                caller.count(query.id, missing_scores=missing)
        rr = [sum(v) / len(v) if v else None for v in got]
        seen = [i for i in range(n) if rr[i] is not None]
        first = [cands[i].score for i in seen]
        if self.alpha >= 1.0:
            fused = [rr[i] for i in seen]
        elif self.fusion == "minmax":
            fused = [self.alpha * a + (1 - self.alpha) * b for a, b in zip(minmax([rr[i] for i in seen]), minmax(first))]
        else:  # the reference: 0.6 * rerank + 0.4 * the retriever's own score
            fused = [self.alpha * rr[i] + (1 - self.alpha) * b for i, b in zip(seen, first)]
        final = [0.0] * n
        for i, f in zip(seen, fused):
            final[i] = f
        floor = min(fused, default=0.0)
        for rank, i in enumerate(i for i in range(n) if rr[i] is None):  # never scored: below, first-stage order
            final[i] = floor - 1.0 - rank
        return [Candidate(c.doc_id, float(s), c.text) for c, s in zip(cands, final)]

    def rerank_all(self, items: Sequence[tuple[Query, list[Candidate]]], ctx: StageContext) -> list[list[Candidate]]:
        caller = self._caller(ctx)
        groups = self.run_groups(items) if self.shuffle == "run" else {}
        return drive(items, lambda q, c: self._plan(caller, q, c, groups.get(q.id)), caller, ctx, self.concurrency)
