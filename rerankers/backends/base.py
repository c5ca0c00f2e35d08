"""What a backend is: a place where a model runs, offering a few operations.

A family renders its inputs (chat messages, token ids, text pairs) and asks for one of:

* `chat(requests)`                 chat generation (listwise, setwise, groupwise)
* `label_logprobs(prompts, labels)` log P(label | prompt) at the next token, per label (logit-pair)
* `generate_ids(prompts, ...)`     greedy continuation of token ids, up to (not with) the first end token,
                                   and each token's probability (generative; kind=seq2seq: an encoder-
                                   decoder's answer after a decoder_prefix, hf only)
* `pair_scores(pairs)`             sequence-classification score of (query, document) pairs (cross-encoder)
* `embed(prompts)`                 one L2-normalised vector per token-id prompt (embedding, e2rank)

A backend implements what it can; asking for an operation it lacks is one line
(`unsupported`). Backends never re-template what they receive: the family's rendering is the
only rendering, so the same weights give the same scores everywhere.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Sequence

from rankify_cli.errors import ConfigError

OPERATIONS = ("chat", "label_logprobs", "generate_ids", "pair_scores", "embed")


def causal_only(backend: str, kind: str) -> ConfigError:
    """Label log-probabilities of an encoder-decoder (monoT5) off the hf backend: vLLM 0.32 has no
    T5 (it is not in its model registry; its Transformers fallback loads T5 as a causal LM and fails:
    'Argument position_ids not found in the forward method of T5Stack'), and an OpenAI-compatible
    /v1/completions serves decoder-only models."""
    return ConfigError(f"the {backend} backend reads label log-probabilities of causal models only (this template "
                       f"is {kind}): vLLM (0.32) cannot serve encoder-decoder models such as T5/monoT5; use backend=hf")


@dataclass
class ChatRequest:
    messages: list[dict]
    max_new_tokens: int | None  # None: no limit sent (HTTP; the server's own applies)
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    min_new_tokens: int = 0  # > 0: end of text is refused before this many tokens (rank_llm's exact answer length)


@dataclass
class ChatResponse:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency: float = 0.0
    cached: bool = False
    attempts: int = 1


@dataclass
class Pair:
    """One rendered (query, document) pair: the text for servers that tokenize themselves, the
    token ids (and token type ids) for backends that run the model here."""

    query: str
    document: str
    ids: list[int] | None = None
    types: list[int] | None = None


class Backend:
    kind = "?"
    pair_ids = False  # pair_scores reads Pair.ids (the model runs here from token ids), not the texts
    runs_async = False  # the model runs on a device while this thread goes on (CUDA): prepare batches ahead
    batched = False  # chat: True when the driver should gather requests of many queries into one call
    concurrency = 1  # pointwise batches in flight at once (HTTP backends overlap them)
    local = False  # the model runs in this process: its tokenizer is known and decoding is greedy

    def __init__(self) -> None:
        self.forward_calls = 0
        self._count_lock = threading.Lock()

    def counted(self, n: int = 1) -> None:
        with self._count_lock:
            self.forward_calls += n

    def identity(self) -> dict:
        raise NotImplementedError

    def cache_identity(self) -> dict:
        """What keys the cached calls: the identity, plus what a server reports for its model."""
        return self.identity()

    def unsupported(self, op: str):
        return ConfigError(f"the {self.kind} backend cannot do '{op}' (needed by this family); "
                           f"use a backend that can: {', '.join(sorted(can_do(op)))}")

    # -- operations (override what the backend can do) -------------------------------------
    def chat(self, requests: Sequence[ChatRequest]) -> list[ChatResponse]:
        raise self.unsupported("chat")

    def label_logprobs(self, prompts: Sequence[list[int]], labels: Sequence[int], *, kind: str = "causal",
                       pad_id: int = 0) -> list[list[float]]:
        raise self.unsupported("label_logprobs")

    def generate_ids(self, prompts: Sequence[list[int]], *, max_new_tokens: int, pad_id: int,
                     eos: Sequence[int] = (), kind: str = "causal",
                     decoder_prefix: Sequence[int] = ()) -> list[tuple[list[int], list[float]]]:
        raise self.unsupported("generate_ids")

    def pair_scores(self, pairs: Sequence[Pair], *, pad_id: int = 0) -> list[float]:
        raise self.unsupported("pair_scores")

    def pack_pairs(self, pairs: Sequence[Pair], *, pad_id: int = 0):
        """What `packed_scores` takes: built on a background thread while the model runs the
        previous batch (the hf backend pads the token ids into tensors here)."""
        return (list(pairs), pad_id)

    def packed_scores(self, packed) -> list[float]:
        pairs, pad_id = packed
        return self.pair_scores(pairs, pad_id=pad_id)

    def embed(self, prompts: Sequence[list[int]], *, pad_id: int = 0, pooling: str = "model") -> list[list[float]]:
        raise self.unsupported("embed")

    # chat helpers the LLM families use -----------------------------------------------------
    def truncate(self, text: str, max_tokens: int) -> str:
        """Cut a text to max_tokens tokens of the model's tokenizer (whitespace words without one)."""
        tok = self.chat_tokenizer()
        if tok is None:
            words = text.split()
            return " ".join(words[:max_tokens]) if len(words) > max_tokens else " ".join(words)
        with TOKENIZER_LOCK:
            ids = tok(text, add_special_tokens=False).input_ids
            return tok.decode(ids[:max_tokens]) if len(ids) > max_tokens else text

    def chat_tokenizer(self):
        """The model's tokenizer when one is known (hf, vllm, or openai with tokenizer=), else None."""
        return None

    def prompt_tokens(self, messages: list[dict]) -> int | None:
        """Tokens of the chat-templated prompt, counted as rank_llm counts them (encode with
        special tokens); None when no tokenizer with a chat template is known."""
        tok = self.chat_tokenizer()
        if tok is None or not getattr(tok, "chat_template", None):
            return None
        with TOKENIZER_LOCK:  # a Rust tokenizer shared by query threads may refuse a second borrower
            prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                             **getattr(self, "chat_template_kwargs", {}))
            return len(tok.encode(prompt))

    def text_tokens(self, text: str) -> int | None:
        tok = self.chat_tokenizer()
        if tok is None:
            return None
        with TOKENIZER_LOCK:
            return len(tok.encode(text))

    def stats(self) -> dict:
        """Counters for run_info.json (per-replica calls and seconds on HTTP)."""
        return {}

    def close(self) -> None:
        pass


TOKENIZER_LOCK = threading.Lock()


def can_do(op: str) -> set[str]:
    return {name for name, ops in CAPABILITIES.items() if op in ops}


# What each built-in backend implements (checked by a test against the classes).
CAPABILITIES = {
    "hf": set(OPERATIONS),
    "vllm": {"chat", "label_logprobs", "generate_ids", "pair_scores", "embed"},
    "openai": {"chat", "label_logprobs", "generate_ids", "pair_scores", "embed"},
}
