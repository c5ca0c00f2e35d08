"""Listwise LLM reranking (RankGPT / RankZephyr prompting) with a sliding window.

A window of passages goes in, a permutation `[2] > [1] > ...` comes out. Windows slide from
the back of the list to the front (default window 20, stride 10: 9 windows for top-100), so
the best passages bubble to the top. Parsing follows rank_llm: keep the text after a closing
think tag, normalise unusual digits, read the numbers, map to 0-based ids, drop duplicates
(first wins) and out-of-range ids, append the missing ones in their previous order; when
nothing parses, the window keeps its order (counted as a parse failure and a fallback).

Scores follow rank_llm: the passage placed at position j takes the j-th first-stage score
(`scores=position`, monotone), so the evaluator orders tied first-stage scores by doc id as it
does with rank_llm's runs; `scores=rank` writes -rank and keeps the model's order under ties.

Prompts follow rank_llm too (template keys): BEIR documents as 'Title: t Content: body'
(`title_format`), text repaired with ftfy (`fix_text`), 300 words per passage (more in a window
shorter than 20, as rank_llm starts), then shorter until the window fits `context_size` (4096),
and exactly a full permutation's tokens decoded (`exact_answer`; on HTTP only when asked).
Two counts, as rank_llm's two paths: with the model's tokenizer (hf, vllm, openai with
tokenizer=) the chat-templated prompt's tokens (RankListwiseOSLLM); over HTTP without one,
tiktoken cl100k_base counts of the messages (RankGPT's SafeOpenai, rerankers/gpt_tokens.py),
and no max_tokens is sent, as SafeOpenai sends none (max_new_tokens=N sends N).
"""

from __future__ import annotations

import re
from typing import Sequence

from rankify_cli.errors import DependencyError
from rankify_cli.types import Candidate, Query, Reranker, StageContext

from .llm import MAX_PARSED_CHARS, COMMON_DOC, LLMRerankerBase, Plan, drive

_FANCY_DIGITS = str.maketrans(
    "⁰¹²³⁴⁵⁶⁷⁸⁹₀₁₂₃₄₅₆₇₈₉①②③④⑤⑥⑦⑧⑨❶❷❸❹❺❻❼❽❾０１２３４５６７８９🄀🄁🄂🄃🄄🄅🄆🄇🄈🄉",
    "0123456789012345678912345678912345678901234567890123456789",
)


# Printable ASCII without '&' (HTML entities), '\r' or control characters: nothing any ftfy
# fix touches, and three passages in four of MS MARCO; skipping ftfy there saves its cost.
_NOTHING_TO_FIX = re.compile(r"[\t\n\x20-\x25\x27-\x7e]*\Z")


def _ftfy():
    try:
        from ftfy import fix_text
    except ImportError:
        raise DependencyError("this listwise template repairs text with ftfy, as rank_llm does: pip install ftfy") from None
    return fix_text


def _fix_text(text: str) -> str:
    return text if _NOTHING_TO_FIX.match(text) else _ftfy()(text)


def replace_bracket_numbers(text: str) -> str:
    """`[3]` inside a passage or query would look like an identifier: write it `(3)`."""
    return re.sub(r"\[(\d+)\]", r"(\1)", text)


def parse_permutation(response: str, n: int, after: str | None = "</think>") -> tuple[list[int], str]:
    """(order of 0-based ids covering 0..n-1, status) with status ok | repaired | failed."""
    response = response[-MAX_PARSED_CHARS:]  # answers sit at the end; bounds work on huge outputs
    if after and after in response:
        response = response.split(after)[-1]
    digits = re.sub(r"\D+", " ", response.translate(_FANCY_DIGITS)).split()
    seen: list[int] = []
    clean = True
    for d in digits:
        # a run of digits longer than any window index is out of range (and int() of a
        # 40,000-digit string would raise)
        i = int(d) - 1 if len(d) <= 6 else -1
        if 0 <= i < n and i not in seen:
            seen.append(i)
        else:
            clean = False
    if not seen:
        return list(range(n)), "failed"
    missing = [i for i in range(n) if i not in seen]
    return seen + missing, "ok" if clean and not missing else "repaired"


def sliding_windows(n: int, window: int, stride: int) -> list[tuple[int, int]]:
    """rank_llm's schedule: from the back, end=n, start=n-window, step `stride`, clamp at 0.
    A list shorter than the window is one window (rank_llm's loop would skip it)."""
    window = min(window, n)
    out, end, start = [], n, n - window
    while end > 0 and start + stride != 0:
        start = max(start, 0)
        out.append((start, end))
        end -= stride
        start -= stride
    return out


class Listwise(LLMRerankerBase, Reranker):
    __doc__ = (__doc__ or "") + "\n" + COMMON_DOC
    paradigm = "listwise"
    default_template = "listwise-rankzephyr"

    def __init__(self, model: str = "", template: str | None = None, window: int = 20, stride: int = 10,
                 backend: str | None = None, base_url: str | None = None, api_key_env: str | None = None,
                 concurrency: int = 16, timeout: float = 120.0, max_retries: int = 6, backoff: float = 0.5,
                 log_calls: str | None = None, max_new_tokens: int | None = None, temperature: float | None = None,
                 top_p: float | None = None, seed: int | None = None, revision: str | None = None,
                 device: str | None = None, dtype: str | None = None, batch_size: int = 4,
                 gguf_file: str | None = None, tokenizer: str | None = None, doc_max_words: int | None = None,
                 scores: str = "position", context_size: int | None = None, exact_answer: bool | None = None,
                 cache: bool = True, explain: bool = False):
        if scores not in ("position", "rank"):
            raise ValueError(f"scores must be position (rank_llm: the first-stage score of the place) or rank, "
                             f"got '{scores}'")
        self.scores = scores
        self.explain = bool(explain)
        if int(window) < 2 or int(stride) < 1 or int(stride) > int(window):
            raise ValueError(f"need window >= 2 and 1 <= stride <= window (got {window}, {stride})")
        self.window, self.stride = int(window), int(stride)
        self._init_backend(model, template, backend, base_url, api_key_env, concurrency, timeout, max_retries,
                           backoff, log_calls, max_new_tokens, temperature, top_p, seed, revision, device, dtype,
                           batch_size, gguf_file, tokenizer, cache)
        self.doc_max_words = int(doc_max_words or self.template.get("doc_max_words", 300))
        # rank_llm cuts passages further until the prompt fits the model's context (4096) minus
        # the answer, counted with the model's tokenizer where it is known (hf, vllm, openai with
        # tokenizer=), else with tiktoken as RankGPT does. 0 turns it off.
        ctx = context_size if context_size is not None else self.template.get("context_size", 0)
        self.context_size = int(ctx or 0)
        if self.context_size < 0:
            raise ValueError(f"context_size must be >= 0 (0: no fitting), got {context_size}")
        self.fix_text = bool(self.template.get("fix_text", False))
        # rank_llm decodes exactly as many tokens as a full permutation takes (min = max). Over
        # HTTP that needs the vLLM/SGLang `min_tokens` extension and a tokenizer to count, so
        # it is on there only when asked.
        if exact_answer is None:
            exact_answer = bool(self.template.get("exact_answer", False)) and self.backend.local
        self.exact_answer = bool(exact_answer)
        if self.exact_answer and not self.backend.local and not self.backend.tokenizer_name:
            raise ValueError("exact_answer with backend=openai needs tokenizer=HF_ID to count the answer's tokens")
        self._answer_len: dict[int, int] = {}
        # SafeOpenai sends no max_tokens: over HTTP the server's own limit applies unless asked
        self.send_max_tokens = self.backend.local or max_new_tokens is not None

    def config(self) -> dict:
        return {"family": "listwise", **self.backend.identity(), **self._template_config(), "window": self.window,
                "stride": self.stride, "doc_max_words": self.doc_max_words, "scores": self.scores,
                "context_size": self.context_size or None,
                **({"token_counts": "tiktoken-cl100k"} if self._counts_with_tiktoken() else {}),
                "exact_answer": self.exact_answer, **self._decoding_config(),
                **({} if self.send_max_tokens or self.exact_answer else {"max_new_tokens": None}),
                **({"explain": True} if self.explain else {})}

    def _counts_with_tiktoken(self) -> bool:
        """RankGPT's path: HTTP, no tokenizer of the model named."""
        return bool(self.context_size) and not self.backend.local and not self.backend.tokenizer_name

    def prepare_query(self, text: str) -> str:
        """The query as it enters the prompt: ftfy-repaired on the tokenizer path (rank_llm's
        RankListwiseOSLLM repairs the whole rendered prompt), as given on RankGPT's (SafeOpenai
        repairs passages only)."""
        return _fix_text(text) if self.fix_text and not self._counts_with_tiktoken() else text

    # -- prompt --------------------------------------------------------------------------
    @property
    def wants_titles(self) -> bool:
        """The pipeline hands over titles apart (Candidate.title) when the template formats them."""
        return bool(self.template.get("title_format"))

    def _words(self, text: str, title: str = "") -> list[str]:
        """A passage as rank_llm prepares it before cutting: 'Title: t Content: body' when the
        document has a title, stripped, mojibake and odd characters repaired with ftfy when the
        template asks (rank_llm's templates do)."""
        if title and self.wants_titles:
            text = self.template["title_format"].format(title=title, text=text)
        text = text.strip()
        return (_fix_text(text) if self.fix_text else text).split()

    def _content(self, text: str | list[str], max_words: float | None = None) -> str:
        words = self._words(text) if isinstance(text, str) else text
        content = " ".join(words[: int(max_words if max_words is not None else self.doc_max_words)])
        return replace_bracket_numbers(content) if self.template.get("replace_bracket_numbers", True) else content

    def answer_tokens(self, n: int) -> int:
        """Tokens of a full answer '[1] > [2] > ... > [n]', counted as rank_llm counts them
        (encode, minus one for the start token)."""
        if n not in self._answer_len:
            answer = " > ".join(f"[{i}]" for i in range(1, n + 1))
            self._answer_len[n] = max(1, self.backend.text_tokens(answer) - 1)
        return self._answer_len[n]

    def window_messages(self, query: str, passages: list[list[str]]) -> tuple[list[dict], bool]:
        """The window's prompt, passages shrunk as in rank_llm's create_prompt until prompt +
        answer fit the context. (messages, whether passages were cut to fit)."""
        n = len(passages)
        if not n:
            return self.messages(query, []), False
        tiktoken_counts = self._counts_with_tiktoken()
        # rank_llm's first length: 300 * (window // n) words on RankGPT's path (SafeOpenai),
        # 300 * (20 / n) on the tokenizer path (RankListwiseOSLLM hard-codes 20)
        if tiktoken_counts:
            max_words = float(self.doc_max_words * (self.window // n))
        else:
            max_words = self.doc_max_words * (20 / n)
        msgs = self.messages(query, [self._content(p, max_words) for p in passages])
        if not self.context_size:
            return msgs, False
        if tiktoken_counts:
            from . import gpt_tokens

            # SafeOpenai budgets the answer of a full window (self._window_size), whatever this one's size
            budget = self.context_size - gpt_tokens.answer_tokens(self.window)
            memo: dict[str, int] = {}

            def used(m):
                return gpt_tokens.message_tokens(self.backend.model, m, memo)
        else:
            budget = self.context_size - self.answer_tokens(n)
            used = self.backend.prompt_tokens
        cut = False
        # rank_llm loops until it fits; a floor of one word per passage ends a window that cannot
        while max_words > 1:
            count = used(msgs)
            if count is None or count <= budget:
                break
            max_words -= max(1, (count - budget) // (n * 4))
            msgs = self.messages(query, [self._content(p, max(max_words, 1)) for p in passages])
            cut = True
        return msgs, cut

    def messages(self, query: str, passages: Sequence[str]) -> list[dict]:
        t = self.template
        if t.get("replace_bracket_numbers", True):
            query = replace_bracket_numbers(query)
        num = len(passages)
        msgs = [{"role": "system", "content": t["system"]}] if t.get("system") else []
        prefix = t.get("prefix_user", "").format(num=num, query=query)
        suffix = t.get("suffix_user", "").format(num=num, query=query)
        if t.get("style") == "multiturn":
            if prefix:
                msgs.append({"role": "user", "content": prefix})
                msgs.append({"role": "assistant", "content": t.get("prefix_assistant", "").format(num=num, query=query)})
            for r, p in enumerate(passages, 1):
                msgs.append({"role": "user", "content": t["body_user"].format(rank=r, candidate=p)})
                msgs.append({"role": "assistant", "content": t["body_assistant"].format(rank=r)})
            msgs.append({"role": "user", "content": suffix})
        else:
            body = "".join(t["body_user"].format(rank=r, candidate=p) for r, p in enumerate(passages, 1))
            msgs.append({"role": "user", "content": prefix + body + suffix})
        return msgs

    # -- plan ------------------------------------------------------------------------------
    def _plan(self, caller, query: Query, cands: list[Candidate]) -> Plan:
        order = list(cands)
        words: dict[int, list[str]] = {}  # prepared when a window first needs them: overlaps other queries' calls
        qtext = self.prepare_query(query.text)
        after = (self.template.get("parser") or {}).get("after", "</think>")
        for start, end in sliding_windows(len(order), self.window, self.stride):
            win = order[start:end]
            for c in win:
                if id(c) not in words:
                    words[id(c)] = self._words(c.body, c.title)
            msgs, cut = self.window_messages(qtext, [words[id(c)] for c in win])
            if cut:
                caller.count(query.id, context_cuts=1)
            exact = self.answer_tokens(len(win)) if self.exact_answer else 0
            req = self._request(msgs, exact or None, exact)
            if not (exact or self.send_max_tokens):
                req.max_new_tokens = None  # sent without max_tokens
            (resp,) = yield [req]
            perm, status = parse_permutation(resp.text, len(win), after)
            if status == "failed":
                caller.count(query.id, parse_failures=1, fallbacks=1)
            elif status == "repaired":
                caller.count(query.id, repaired=1)
            order[start:end] = [win[i] for i in perm]
        if self.scores == "rank":
            return [Candidate(c.doc_id, -float(r), c.text) for r, c in enumerate(order, 1)]
        places = sorted((c.score for c in cands), reverse=True)
        return [Candidate(c.doc_id, s, c.text) for s, c in zip(places, order)]

    def rerank_all(self, items: Sequence[tuple[Query, list[Candidate]]], ctx: StageContext) -> list[list[Candidate]]:
        caller = self._caller(ctx)
        if self.fix_text:
            _ftfy()  # import it here, not in 16 query threads queued on the import lock
        return drive(items, lambda q, c: self._plan(caller, q, c), caller, ctx, self.concurrency)
