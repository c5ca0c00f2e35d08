"""Backend `hf`: local transformers (and sentence-transformers folders for embeddings).

Each operation loads the model class it needs once per process (causal LM, seq2seq LM,
sequence classifier, encoder), pads the token ids it is given (left for causal models, whose
score or continuation is read at the end; right otherwise) and runs it in inference mode.
Chat requests get the model's chat template here, left padding and batched greedy decoding.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from rankify_cli.errors import ConfigError, DependencyError
from rankify_cli.model_ids import folder_fingerprint

from .base import Backend, ChatRequest, ChatResponse, Pair

_CHAT_MODELS: dict[tuple, Any] = {}
_CHAT_LOCK = threading.Lock()


def load_tokenizer(name: str, revision: str | None = None, gguf_file: str | None = None,
                   trust_remote_code: bool = False):
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise DependencyError("the hf backend needs transformers and torch: pip install 'rankify-cli[neural]'") from None
    kw: dict = {"revision": revision} if revision else {}
    if gguf_file:
        kw["gguf_file"] = gguf_file
    if trust_remote_code:
        kw["trust_remote_code"] = True
    try:
        return AutoTokenizer.from_pretrained(name, **kw)
    except OSError as e:
        raise DependencyError(f"cannot load the tokenizer of '{name}' (not found locally and offline?): "
                              f"{str(e).splitlines()[0]}") from None


def merge_adapter(model, adapter: str):
    """Base + PEFT adapter, merged as ielab/llm-rankers' Rank-R1 README loads its checkpoints
    (PeftModel.from_pretrained(base, adapter).merge_and_unload())."""
    try:
        from peft import PeftModel
    except ImportError:
        raise DependencyError("adapter= needs peft: pip install 'rankify-cli[adapters]'") from None
    path = os.path.expanduser(adapter)
    try:
        return PeftModel.from_pretrained(model, path if os.path.isdir(path) else adapter).merge_and_unload()
    except (OSError, ValueError) as e:
        raise DependencyError(f"cannot load the adapter '{adapter}' (not found locally and offline?): "
                              f"{str(e).splitlines()[0]}") from None


class HF(Backend):
    kind = "hf"
    pair_ids = True
    batched = True
    local = True

    def __init__(self, model: str, revision: str | None = None, device: str | None = None, dtype: str | None = None,
                 batch_size: int = 4, gguf_file: str | None = None, trust_remote_code: bool = False,
                 chat_template_kwargs: dict | None = None, family: str = "reranker", model_format: str = "transformers",
                 adapter: str | None = None, **_ignored):
        super().__init__()
        self.model_name, self.revision, self.gguf_file = model, revision, gguf_file
        # a PEFT (LoRA) adapter merged into the base for chat (Rank-R1's checkpoints are adapters)
        self.adapter = adapter or None
        if self.adapter and gguf_file:
            raise ConfigError("adapter= needs the base model's transformers weights, not a GGUF file")
        self.device_opt, self.dtype_opt = device, dtype
        self.batch_size = max(1, int(batch_size))
        self.trust_remote_code = trust_remote_code
        self.chat_template_kwargs = chat_template_kwargs or {}
        self.family = family
        self.model_format = model_format  # embeddings: 'sentence-transformers' runs the folder's own modules
        folder = Path(os.path.expanduser(model))
        self.folder = folder if folder.is_dir() else None
        self._loaded = None
        self._resolved: tuple[str, str] | None = None

    # -- settings ------------------------------------------------------------------------
    def resolve(self) -> tuple[str, str]:
        """(device, dtype name): the user's, else CUDA when present, bf16/fp16 there and fp32 elsewhere."""
        if self._resolved is None:
            from ..base import pick_device, pick_dtype

            device = pick_device(self.device_opt)
            self._resolved = (device, pick_dtype(self.dtype_opt, device))
        return self._resolved

    @property
    def device(self) -> str:
        return self.resolve()[0]

    @property
    def runs_async(self) -> bool:
        return self.device.startswith("cuda")

    def identity(self) -> dict:
        ident = {"backend": self.kind, "model": self.model_name, "revision": self.revision or "main",
                 "decoding": "greedy"}
        if self.gguf_file:
            ident["gguf_file"] = self.gguf_file
        if self.folder is not None:
            ident["model"] = folder_fingerprint(self.folder)
        if self.adapter:
            folder = Path(os.path.expanduser(self.adapter))
            ident["adapter"] = folder_fingerprint(folder) if folder.is_dir() else self.adapter
        return ident

    def forward(self, model, **inputs):
        """Every model call goes through here, so tests and stats can count them."""
        self.counted()
        return model(**inputs)

    def _kw(self) -> dict:
        kw: dict = {"trust_remote_code": self.trust_remote_code}
        if self.revision:
            kw["revision"] = self.revision
        return kw

    def _model(self, what: str):
        """The model for one operation, loaded once per process (see rerankers.base.load_once)."""
        from ..base import load_once, torch_dtype

        device, dtype = self.resolve()

        def loader():
            if what == "sentence-transformers":
                from sentence_transformers import SentenceTransformer

                kw = {"revision": self.revision} if self.revision else {}
                st = SentenceTransformer(self.model_name, device=device, trust_remote_code=self.trust_remote_code, **kw)
                if dtype != "float32":
                    st.to(torch_dtype(dtype))
                return st.eval()
            import transformers

            cls = getattr(transformers, {"seq-cls": "AutoModelForSequenceClassification", "causal": "AutoModelForCausalLM",
                                         "seq2seq": "AutoModelForSeq2SeqLM", "encoder": "AutoModel"}[what])
            if what == "seq-cls":  # a checkpoint without its scoring head must not score with random weights
                from ..base import require_head

                model, info = cls.from_pretrained(self.model_name, dtype=torch_dtype(dtype), output_loading_info=True,
                                                  **self._kw())
                require_head(self.model_name, info)
            else:
                model = cls.from_pretrained(self.model_name, dtype=torch_dtype(dtype), **self._kw())
            model.to(device).eval()
            return model

        key = ("hf", what, self.model_name, self.revision, dtype, device, self.trust_remote_code)
        return load_once(key, loader, self.model_name, self.family)

    # -- pointwise operations --------------------------------------------------------------
    def pair_scores(self, pairs: Sequence[Pair], *, pad_id: int = 0) -> list[float]:
        return self.packed_scores(self.pack_pairs(pairs, pad_id=pad_id))

    def pack_pairs(self, pairs: Sequence[Pair], *, pad_id: int = 0) -> dict:
        """Padded input tensors, in pinned memory on CUDA so the copy to the device does not block."""
        from ..base import pad

        input_ids, mask = pad([p.ids for p in pairs], pad_id, "right")
        inputs = {"input_ids": input_ids, "attention_mask": mask}
        if pairs[0].types is not None:
            inputs["token_type_ids"] = pad([p.types for p in pairs], 0, "right")[0]
        if self.device.startswith("cuda"):
            inputs = {k: v.pin_memory() for k, v in inputs.items()}
        return inputs

    def packed_scores(self, inputs: dict) -> list[float]:
        from ..base import require_torch

        torch = require_torch()
        model = self._model("seq-cls")
        inputs = {k: v.to(self.device, non_blocking=True) for k, v in inputs.items()}
        with torch.inference_mode():
            logits = self.forward(model, **inputs).logits.float()
        if logits.shape[-1] == 1:
            s = logits[:, 0]
        elif logits.shape[-1] == 2:
            s = logits[:, 1] - logits[:, 0]
        else:
            raise ConfigError(f"model '{self.model_name}' has {logits.shape[-1]} output labels; "
                              "a cross-encoder needs 1 (relevance logit) or 2 (not relevant, relevant)")
        return s.cpu().tolist()

    def label_logprobs(self, prompts: Sequence[list[int]], labels: Sequence[int], *, kind: str = "causal",
                       pad_id: int = 0) -> list[list[float]]:
        from ..base import pad, require_torch

        torch = require_torch()
        model = self._model(kind)
        input_ids, mask = pad(prompts, pad_id, "left" if kind == "causal" else "right")
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        with torch.inference_mode():
            if kind == "seq2seq":
                start = model.config.decoder_start_token_id
                start = pad_id if start is None else start
                dec = torch.full((input_ids.shape[0], 1), int(start), dtype=torch.long, device=input_ids.device)
                logits = self.forward(model, input_ids=input_ids, attention_mask=mask, decoder_input_ids=dec).logits[:, 0, :]
            else:
                try:
                    logits = self.forward(model, input_ids=input_ids, attention_mask=mask, logits_to_keep=1).logits[:, -1, :]
                except TypeError:  # an older or remote-code model without logits_to_keep
                    logits = self.forward(model, input_ids=input_ids, attention_mask=mask).logits[:, -1, :]
            logp = torch.log_softmax(logits.float(), dim=-1)[:, list(labels)]
        return logp.cpu().tolist()

    def generate_ids(self, prompts: Sequence[list[int]], *, max_new_tokens: int, pad_id: int,
                     eos: Sequence[int] = (), kind: str = "causal",
                     decoder_prefix: Sequence[int] = ()) -> list[tuple[list[int], list[float]]]:
        from ..base import pad, require_torch

        torch = require_torch()
        model = self._model(kind)
        stop = set(eos)
        gen_eos = getattr(model.generation_config, "eos_token_id", None)
        stop |= set(gen_eos) if isinstance(gen_eos, (list, tuple)) else ({gen_eos} if gen_eos is not None else set())
        input_ids, mask = pad(prompts, pad_id, "left" if kind == "causal" else "right")
        extra: dict = {}
        if kind == "seq2seq" and decoder_prefix:  # the decoder starts from the given tokens (start token included)
            extra["decoder_input_ids"] = torch.tensor([list(decoder_prefix)] * len(prompts), device=self.device)
        with torch.inference_mode():
            out = self.forward(model.generate, input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                               do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, pad_token_id=pad_id,
                               return_dict_in_generate=True, output_logits=True, output_scores=True,
                               temperature=None, top_p=None, top_k=None, **extra)
            steps = out.logits if getattr(out, "logits", None) is not None else out.scores
            # what follows the prompt (causal) or the decoder's start and prefix (seq2seq)
            skip = input_ids.shape[1] if kind == "causal" else (len(decoder_prefix) or 1)
            chosen = out.sequences[:, skip:]
            # probability of each generated token, one step at a time (never B x T x V at once)
            probs = torch.stack([torch.softmax(s.float(), dim=-1).gather(1, chosen[:, k:k + 1]).squeeze(1)
                                 for k, s in enumerate(steps)], dim=1).cpu().tolist()
        result = []
        for g, p in zip(chosen.cpu().tolist(), probs):
            cut = next((k for k, t in enumerate(g) if t in stop), len(g))
            result.append((g[:cut], p[:cut]))
        return result

    def embed(self, prompts: Sequence[list[int]], *, pad_id: int = 0, pooling: str = "model") -> list[list[float]]:
        from ..base import pad, require_torch

        torch = require_torch()
        ids, mask = pad(prompts, pad_id, "right")
        ids, mask = ids.to(self.device), mask.to(self.device)
        with torch.inference_mode():
            if self.model_format == "sentence-transformers":
                st = self._model("sentence-transformers")
                feats = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
                emb = self.forward(st, input=feats)["sentence_embedding"]
            else:
                model = self._model("encoder")
                hidden = self.forward(model, input_ids=ids, attention_mask=mask).last_hidden_state
                if pooling == "cls":
                    emb = hidden[:, 0]
                elif pooling == "last":
                    last = mask.sum(dim=1) - 1
                    emb = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
                else:
                    m = mask.unsqueeze(-1).to(hidden.dtype)
                    emb = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
            emb = torch.nn.functional.normalize(emb.float(), p=2, dim=-1)
        return emb.cpu().tolist()

    # -- chat ------------------------------------------------------------------------------
    def load(self):
        if self._loaded is not None:
            return self._loaded
        try:
            import torch
            from transformers import AutoModelForCausalLM
        except ImportError:
            raise DependencyError("the hf backend needs torch and transformers: pip install 'rankify-cli[neural]' "
                                  "(or use backend=openai with a server)") from None
        device = self.device_opt if self.device_opt not in (None, "auto") else (
            "cuda" if torch.cuda.is_available() else "cpu")
        dtype = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                 "float16": torch.float16, "fp16": torch.float16}.get(str(self.dtype_opt or "").lower())
        if dtype is None:
            dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        key = (self.model_name, self.revision, self.gguf_file, device, str(dtype), self.adapter)
        with _CHAT_LOCK:
            if key not in _CHAT_MODELS:
                tok = load_tokenizer(str(self.folder or self.model_name), self.revision, self.gguf_file)
                kw: dict = {"dtype": dtype, "trust_remote_code": self.trust_remote_code}
                if self.revision:
                    kw["revision"] = self.revision
                if self.gguf_file:
                    kw["gguf_file"] = self.gguf_file
                try:
                    try:
                        from transformers.utils import logging as hf_logging

                        hf_logging.disable_progress_bar()
                    except ImportError:
                        pass
                    model = AutoModelForCausalLM.from_pretrained(str(self.folder or self.model_name), **kw)
                except OSError as e:
                    raise DependencyError(
                        f"cannot load model '{self.model_name}' (not in the local cache and offline?); pass a local "
                        f"folder or use backend=openai [{str(e).splitlines()[0]}]") from None
                if self.adapter:
                    model = merge_adapter(model, self.adapter)
                model.to(device).eval()
                tok.padding_side = "left"
                if tok.pad_token is None:
                    tok.pad_token = tok.eos_token
                if not getattr(tok, "chat_template", None):
                    raise ConfigError(f"model '{self.model_name}' has no chat template; the LLM rerankers need a chat model")
                _CHAT_MODELS[key] = (tok, model, device)
            self._loaded = _CHAT_MODELS[key]
        return self._loaded

    def tokenizer(self):
        """The tokenizer alone (truncation needs no model weights, so cached runs load none)."""
        if self._loaded is not None:
            return self._loaded[0]
        key = ("tok", self.model_name, self.revision, self.gguf_file)
        with _CHAT_LOCK:
            if key not in _CHAT_MODELS:
                _CHAT_MODELS[key] = load_tokenizer(str(self.folder or self.model_name), self.revision, self.gguf_file)
            return _CHAT_MODELS[key]

    def chat_tokenizer(self):
        return self.tokenizer()

    def render(self, messages: list[dict]) -> str:
        tok = self.load()[0]
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **self.chat_template_kwargs)

    def chat(self, requests: Sequence[ChatRequest]) -> list[ChatResponse]:
        import torch

        tok, model, device = self.load()
        prompts = [self.render(r.messages) for r in requests]
        special = bool(getattr(self, "add_special_tokens", False))  # set by the template (llm.py)
        encoded = [tok(p, add_special_tokens=special).input_ids for p in prompts]
        order = sorted(range(len(requests)), key=lambda i: (-len(encoded[i]), requests[i].max_new_tokens))
        out: list[ChatResponse | None] = [None] * len(requests)
        pad = tok.pad_token_id
        eos = {t for t in ([tok.eos_token_id] if not isinstance(tok.eos_token_id, list) else tok.eos_token_id)
               if t is not None}
        gen_eos = getattr(model.generation_config, "eos_token_id", None)
        eos |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            width = max(len(encoded[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):  # left padding
                n = len(encoded[i])
                ids[row, width - n:] = torch.tensor(encoded[i])
                mask[row, width - n:] = 1
            max_new = max(requests[i].max_new_tokens for i in idx)
            min_new = min(requests[i].min_new_tokens for i in idx)
            extra = {"min_new_tokens": min_new} if min_new else {}
            t0 = time.perf_counter()
            self.counted()
            with torch.inference_mode():
                gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new,
                                     do_sample=False, temperature=None, top_p=None, top_k=None,
                                     pad_token_id=pad, eos_token_id=sorted(eos) or None, **extra)
            latency = (time.perf_counter() - t0) / len(idx)
            for row, i in enumerate(idx):
                new = gen[row, width:].tolist()[: requests[i].max_new_tokens]
                n = len(new)
                for j, t in enumerate(new):
                    if t in eos:
                        n = j + 1
                        break
                text = tok.decode(new[:n], skip_special_tokens=True)
                out[i] = ChatResponse(text, len(encoded[i]), n, latency)
        return out  # type: ignore[return-value]
