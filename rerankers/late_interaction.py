"""Family `late-interaction`: ColBERT MaxSim over token embeddings.

score(q, d) = sum over query tokens of the max over document tokens of their dot product,
token vectors L2-normalised after the checkpoint's projection. Everything that shapes the
tokens is read from the checkpoint, as pylate (lightonai/pylate 1.6.0, pylate/models/colbert.py)
reads it:
- a pylate / sentence-transformers folder: `config_sentence_transformers.json` gives
  query_prefix / document_prefix (marker tokens inserted after the first token),
  query_length / document_length (the marker counts; the tail is cut), do_query_expansion
  (queries padded to query_length with the mask token, and every position scored),
  attend_to_expansion_tokens and skiplist_words (document tokens dropped from MaxSim,
  punctuation by default); modules.json names the Dense projection(s) after the encoder.
- a Stanford ColBERT folder (config architectures HF_ColBERT, e.g. colbert-ir/colbertv2.0):
  the projection is the checkpoint's `linear` weight and `artifact.metadata` gives the markers
  and lengths (defaults [unused0] / [unused1], 32 / 180).
Options override the checkpoint's values. Defaults where neither says: "[Q] " / "[D] ", 32 /
180, expansion on, no attention to expansion tokens, string.punctuation.

A checkpoint with neither (a bi-encoder such as all-MiniLM-L6-v2) is scored with its raw
token embeddings and Stanford's [unused0] / [unused1] markers: an ablation, not a ColBERT
model, and config() says so.

Departure from pylate's `rank.rerank` (pylate/rank/rank.py): it zero-pads the candidates of a
query to the longest one and scores without a document mask, so a query token whose best
similarity is negative scores 0 against a shorter document and a document's score depends on
the other candidates. Here every document is scored against its own tokens only (pylate's
`colbert_scores` with a documents mask).

Document token embeddings are kept per document text for the run (as the embedding family
keeps its vectors), and scores go through the shared pair cache.
"""

from __future__ import annotations

import json
import os
import string
from pathlib import Path

from rankify_cli.errors import ConfigError
from rankify_cli.types import StageContext

from .base import NeuralReranker, length_batches, load_once, local_folder, pad, require_torch, torch_dtype
from .embedding import _model_file

DOC_MEMO_MAX = 200_000  # documents whose token vectors are kept per reranker instance
DEFAULTS = {"query_prefix": "[Q] ", "document_prefix": "[D] ", "query_length": 32, "document_length": 180,
            "do_query_expansion": True, "attend_to_expansion_tokens": False, "skiplist_words": None}
STANFORD = {"query_prefix": "[unused0]", "document_prefix": "[unused1]"}


def _read_json(path: str | None) -> dict:
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from None
    return data if isinstance(data, dict) else {}


class LateInteraction(NeuralReranker):
    family = "late-interaction"

    def __init__(self, model: str, query_prefix: str | None = None, document_prefix: str | None = None,
                 query_length: int | None = None, document_length: int | None = None,
                 do_query_expansion: bool | None = None, attend_to_expansion_tokens: bool | None = None,
                 batch_size: int = 32, device: str | None = None, dtype: str | None = None,
                 revision: str | None = None, trust_remote_code: bool = False):
        super().__init__(model, batch_size=batch_size, device=device, dtype=dtype, revision=revision,
                         trust_remote_code=trust_remote_code)
        self._opts = {"query_prefix": query_prefix, "document_prefix": document_prefix, "query_length": query_length,
                      "document_length": document_length, "do_query_expansion": do_query_expansion,
                      "attend_to_expansion_tokens": attend_to_expansion_tokens}
        for k in ("query_length", "document_length"):
            if self._opts[k] is not None and (not isinstance(self._opts[k], int) or self._opts[k] < 2):
                raise ConfigError(f"{k} must be an integer of at least 2 (got {self._opts[k]!r})")
        self._settings: dict | None = None

    # -- what the checkpoint says ----------------------------------------------------------
    def file(self, name: str) -> str | None:
        return _model_file(self.model, name, self.revision)

    @property
    def settings(self) -> dict:
        if self._settings is None:
            st = _read_json(self.file("config_sentence_transformers.json"))
            cfg = _read_json(self.file("config.json"))
            modules = self.file("modules.json")
            mods = json.loads(Path(modules).read_text()) if modules else []
            dense = [m.get("path", "") for m in mods if "Dense" in str(m.get("type", ""))]
            stanford = "HF_ColBERT" in (cfg.get("architectures") or [])
            found = {k: st[k] for k in DEFAULTS if k in st}
            kind = "pylate" if (dense or "query_prefix" in st) else "stanford" if stanford else "ablation"
            if stanford and not dense:
                meta = _read_json(self.file("artifact.metadata"))
                found = {"query_prefix": meta.get("query_token_id", STANFORD["query_prefix"]),
                         "document_prefix": meta.get("doc_token_id", STANFORD["document_prefix"])}
                for src, dst in (("query_maxlen", "query_length"), ("doc_maxlen", "document_length"),
                                 ("attend_to_mask_tokens", "attend_to_expansion_tokens")):
                    if src in meta:
                        found[dst] = meta[src]
            elif kind == "ablation":
                found = dict(STANFORD)
            values = {**DEFAULTS, **found, **{k: v for k, v in self._opts.items() if v is not None}}
            if values["skiplist_words"] is None:
                values["skiplist_words"] = list(string.punctuation)
            if not values["do_query_expansion"]:
                values["attend_to_expansion_tokens"] = False
            self._settings = {"kind": kind, "dense": dense, **values}
        return self._settings

    def extra_config(self) -> dict:
        s = dict(self.settings)
        if s["kind"] == "ablation":
            s["note"] = "ablation: MaxSim over a bi-encoder's raw token embeddings, not a ColBERT checkpoint"
        return {"late_interaction": s, "similarity": "maxsim"}

    # -- model -----------------------------------------------------------------------------
    def _load(self):
        s = self.settings

        def loader():
            torch = require_torch()
            from transformers import AutoModel, AutoTokenizer

            tok = AutoTokenizer.from_pretrained(self.model, **self.hf_kwargs())
            enc = AutoModel.from_pretrained(self.model, dtype=torch_dtype(self.dtype), **self.hf_kwargs())
            enc.to(self.device).eval()
            layers = [self._dense(p) for p in s["dense"]] if s["kind"] == "pylate" else \
                [self._stanford_linear()] if s["kind"] == "stanford" else []
            ids = {}
            for key in ("query_prefix", "document_prefix"):
                p = s[key]
                if p == "":
                    ids[key] = None
                    continue
                tid = tok.convert_tokens_to_ids(p)
                if tid is None or (tid == tok.unk_token_id and p != tok.unk_token):
                    raise ConfigError(f"marker {p!r} is not a token of '{self.model}' (set {key}= to one it has)")
                ids[key] = int(tid)
            # pylate pads queries with the mask token (an MLM's) or else end-of-sequence
            pad_id = tok.mask_token_id if tok.mask_token_id is not None else (
                tok.eos_token_id if tok.eos_token_id is not None else tok.pad_token_id)
            skip = {int(tok.convert_tokens_to_ids(w)) for w in s["skiplist_words"]}
            return tok, enc, [(w.to(self.device), b if b is None else b.to(self.device)) for w, b in layers], \
                ids, int(pad_id), torch.tensor(sorted(skip), dtype=torch.long, device=self.device)

        return load_once(self.load_key("late-interaction", json.dumps(s, sort_keys=True)), loader, self.model,
                         self.family)

    def _weights(self, folder: str) -> dict:
        torch = require_torch()
        st, pt = os.path.join(folder, "model.safetensors"), os.path.join(folder, "pytorch_model.bin")
        if os.path.isfile(st):
            from safetensors.torch import load_file

            return load_file(st)
        if os.path.isfile(pt):
            return torch.load(pt, map_location="cpu", weights_only=True)
        raise ConfigError(f"no weights (model.safetensors or pytorch_model.bin) in {folder}")

    def _folder(self, sub: str) -> str:
        path = self.file(os.path.join(sub, "config.json") if sub else "config.json")
        if path is None:
            raise ConfigError(f"'{self.model}' has no {sub}/config.json")
        return os.path.dirname(path)

    def _dense(self, sub: str):
        folder = self._folder(sub)
        cfg = _read_json(os.path.join(folder, "config.json"))
        act = str(cfg.get("activation_function", "torch.nn.modules.linear.Identity"))
        if not act.endswith("Identity") or cfg.get("use_residual"):
            raise ConfigError(f"{folder}: only a linear projection is supported (activation {act}, "
                              f"use_residual {cfg.get('use_residual')})")
        w = self._weights(folder)
        weight = next((v for k, v in w.items() if k.endswith("linear.weight")), None)
        if weight is None:
            raise ConfigError(f"{folder}: no linear.weight in the projection's weights")
        bias = next((v for k, v in w.items() if k.endswith("linear.bias")), None)
        return weight.to(torch_dtype(self.dtype)), bias if bias is None else bias.to(torch_dtype(self.dtype))

    def _stanford_linear(self):
        folder = local_folder(self.model) or os.path.dirname(self.file("config.json") or "")
        w = self._weights(folder)
        if "linear.weight" not in w:
            raise ConfigError(f"'{self.model}' is an HF_ColBERT checkpoint without linear.weight")
        return w["linear.weight"].to(torch_dtype(self.dtype)), None

    # -- encoding --------------------------------------------------------------------------
    def _ids(self, tok, texts: list[str], is_query: bool) -> list[list[int]]:
        s, (_, _, _, ids, _, _) = self.settings, self._load()
        prefix = ids["query_prefix" if is_query else "document_prefix"]
        length = s["query_length" if is_query else "document_length"]
        # sentence-transformers strips the text; the marker takes one of the `length` places
        enc = tok([t.strip() for t in texts], truncation=True, max_length=length - 1 if prefix is not None else length,
                  verbose=False)["input_ids"]
        return [e[:1] + [prefix] + e[1:] if prefix is not None else list(e) for e in enc]

    def encode(self, texts: list[str], is_query: bool, ctx: StageContext | None = None) -> list:
        """Per text, its normalised token vectors (queries: every position; documents: the
        attended tokens outside the skiplist)."""
        torch = require_torch()
        s = self.settings
        tok, enc, layers, _, pad_id, skip = self._load()
        rows = self._ids(tok, texts, is_query)
        out: list = [None] * len(rows)
        with torch.inference_mode():
            for batch in length_batches([len(r) for r in rows], self.batch_size, self.sort_batches):
                seqs = [rows[i] for i in batch]
                if is_query and s["do_query_expansion"]:
                    width = s["query_length"]
                    ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in seqs], dtype=torch.long)
                    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in seqs], dtype=torch.long)
                    if s["attend_to_expansion_tokens"]:
                        mask.fill_(1)
                else:
                    ids, mask = pad(seqs, pad_id, "right")
                ids, mask = ids.to(self.device), mask.to(self.device)
                hidden = self.forward(enc, input_ids=ids, attention_mask=mask).last_hidden_state
                for w, b in layers:
                    hidden = torch.nn.functional.linear(hidden, w, b)
                hidden = torch.nn.functional.normalize(hidden.float(), p=2, dim=-1)
                if is_query:
                    keep = torch.ones_like(ids, dtype=torch.bool) if s["do_query_expansion"] else mask.bool()
                else:
                    keep = mask.bool() & ~torch.isin(ids, skip)
                for j, i in enumerate(batch):
                    out[i] = hidden[j][keep[j]].cpu()
        return out

    # -- scoring ---------------------------------------------------------------------------
    def _compute(self, pairs: list[tuple[str, str]], ctx: StageContext) -> list[float]:
        torch = require_torch()
        qs = list(dict.fromkeys(q for q, _ in pairs))
        qv = dict(zip(qs, self.encode(qs, True, ctx)))
        memo = self.__dict__.setdefault("_doc_tokens", {})
        new = [d for d in dict.fromkeys(d for _, d in pairs) if d not in memo]
        if len(memo) + len(new) > DOC_MEMO_MAX:
            memo.clear()
        if new:
            memo.update(zip(new, self.encode(new, False, ctx)))
        ctx.stats["documents_embedded"] += len(new)
        out = []
        for q, d in pairs:
            dv = memo[d]
            if not dv.shape[0]:  # nothing but skiplist tokens: no token to match (counted)
                ctx.stats["documents_without_tokens"] += 1
                out.append(0.0)
                continue
            out.append(float((qv[q] @ dv.T).max(dim=1).values.sum()))
        return out
