"""Family `logit-pair`: a prompt per (query, document) and two label tokens at the next step.

The prompt and the scoring rule are data (rerankers/templates/NAME.json), not code branches:

- kind: "seq2seq" (one decoder step from the decoder start token) or "causal" (last position)
- layout: how the prompt is assembled and what may be truncated (only ever the document side)
    "whole": prefix + query + document + suffix rendered as one string and tokenized at once
             (monoT5). truncation "tail" (default, pygaggle / AnswerDotAI rerankers, the
             published monoT5 runs): the whole string is cut to max_length from its end, so a
             long document loses the suffix; "document" (pyterrier-t5): only the document is
             cut and the suffix kept
    "body":  prefix, body (= query + document segments) and suffix tokenized separately; only
             the body is cut from its end (Qwen3-Reranker README)
    "cut":   prefix + body + body_end tokenized as one string, cut to max_length from its end,
             then the suffix (Qwen3-Reranker evaluation code)
    "split": prefix, query (capped at 3/4 of max_length), separator, document, suffix, each
             tokenized alone (mxbai-rerank-v2). budget "mxbai" (mixedbread's package): the
             document gets min(model length - query - static, max_length) tokens and query +
             separator + document are cut to max_length; budget "fractions" (AnswerDotAI port):
             query_fraction / document_fraction of max_length
- prefix / suffix: a string, or a list of strings tokenized one by one
- positive / negative + label_lookup ("token": a vocabulary entry; "text": the first token of
  the text) and score: "softmax" (P(positive)), "log_softmax", "difference" (logit gap)
- instruction: the default instruction ({instruction} in the segments), overridable by option

The backend returns the labels' next-token log-probabilities after the rendered token ids
(`label_logprobs`): locally from the logits, on a vLLM server from `prompt_logprobs`.
"""

from __future__ import annotations

import math
import re

from rankify_cli.errors import ConfigError
from rankify_cli.types import StageContext, fingerprint

from .base import NeuralReranker, fit_document, load_once, read_template

_FIELD = re.compile(r"\{(query|document|instruction)\}")


def render(text: str, **values: str) -> str:
    """Fill {query}, {document}, {instruction} in one pass (texts may contain braces)."""
    return _FIELD.sub(lambda m: values.get(m.group(1), m.group(0)), text)


class LogitPair(NeuralReranker):
    family = "logit-pair"

    def __init__(self, model: str, template: str = "", instruction: str | None = None, batch_size: int = 16,
                 max_length: int | None = None, device: str | None = None, dtype: str | None = None,
                 revision: str | None = None, trust_remote_code: bool = False,
                 backend: str | None = None, base_url: str | None = None, api_key_env: str | None = None,
                 concurrency: int = 16, timeout: float = 120.0, max_retries: int = 6, served_model: str | None = None,
                 max_per_replica: int | None = None, truncation: str | None = None):
        if not template:
            raise ConfigError("logit-pair needs a template, e.g. --reranker 'logit-pair:MODEL?template=monot5' "
                              "(templates: monot5, qwen3-yesno, mxbai-v2, or a path to a .json file)")
        self.template_name, self.t = read_template(str(template))
        kind = self.t.get("kind")
        if kind not in ("seq2seq", "causal"):
            raise ConfigError(f"template '{template}' has kind {kind!r}; logit-pair needs 'seq2seq' or 'causal'")
        if self.t.get("layout", "whole") not in ("whole", "body", "cut", "split"):
            raise ConfigError(f"template '{template}': layout must be whole, body, cut or split")
        if self.t.get("score") not in ("softmax", "log_softmax", "difference"):
            raise ConfigError(f"template '{template}': score must be softmax, log_softmax or difference")
        self.default_max_length = int(self.t.get("max_length", 512))
        super().__init__(model, batch_size=batch_size, max_length=max_length, device=device, dtype=dtype,
                         revision=revision, trust_remote_code=trust_remote_code,
                         backend=backend, base_url=base_url, api_key_env=api_key_env, concurrency=concurrency,
                         timeout=timeout, max_retries=max_retries, served_model=served_model,
                         max_per_replica=max_per_replica)
        self.instruction = str(instruction) if instruction is not None else self.t.get("instruction")
        self.truncation = str(truncation or self.t.get("truncation", "tail"))
        if self.truncation not in ("tail", "document"):
            raise ConfigError(f"truncation must be 'tail' (cut the whole prompt's end, the reference) or 'document' "
                              f"(cut only the document, keep the suffix); got {truncation!r}")

    def extra_config(self) -> dict:
        cfg = {"template": self.template_name, "template_fingerprint": fingerprint(self.t)[:16],
               "instruction": self.instruction}
        if self.t.get("layout", "whole") == "whole":
            cfg["truncation"] = self.truncation
        return cfg

    # -- tokenizer and labels ------------------------------------------------------------
    def tokenizer(self):
        def loader():
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(self.model, **self.hf_kwargs())
            tok.padding_side = self.t.get("padding_side", "left" if self.t["kind"] == "causal" else "right")
            return tok

        return load_once(self.load_key("tokenizer", fingerprint(self.t)), loader, self.model, self.family)

    def labels(self) -> tuple[int, int]:
        """(positive, negative) token ids of the template's labels in this model's vocabulary."""
        if getattr(self, "_labels", None) is None:
            self._labels = self._label_ids(self.tokenizer())
        return self._labels

    def _label_ids(self, tok) -> tuple[int, int]:
        out = []
        for field in ("positive", "negative"):
            label = self.t[field]
            if self.t.get("label_lookup", "token") == "token":
                tid = tok.convert_tokens_to_ids(label)
                if tid is None or (tok.unk_token_id is not None and tid == tok.unk_token_id and label != tok.unk_token):
                    raise ConfigError(f"label token {label!r} of template '{self.template_name}' is not in the "
                                      f"vocabulary of '{self.model}'")
            else:
                ids = tok(label, add_special_tokens=False)["input_ids"]
                if not ids:
                    raise ConfigError(f"label {label!r} of template '{self.template_name}' tokenizes to nothing")
                tid = ids[0]
            out.append(int(tid))
        return out[0], out[1]

    # -- prompts -------------------------------------------------------------------------
    def _query_segment(self, query: str) -> str:
        seg = self.t["query"]
        if self.instruction and self.t.get("instruction_query"):
            seg = self.t["instruction_query"]
        return render(seg, query=query, instruction=self.instruction or "")

    def _doc_segment(self, doc: str) -> str:
        return render(self.t["document"], document=doc, instruction=self.instruction or "")

    def _parts(self, key: str) -> list[str]:
        v = self.t.get(key, "")
        parts = v if isinstance(v, list) else [v]
        return [render(p, instruction=self.instruction or "") for p in parts if p]

    def prompt_text(self, query: str, document: str) -> str:
        """The full prompt before any truncation (what the tokenizer sees when nothing is cut)."""
        sep = self.t.get("separator", "") if self.t.get("layout") == "split" else ""
        end = "".join(self._parts("body_end")) if self.t.get("layout") == "cut" else ""
        return ("".join(self._parts("prefix")) + self._query_segment(query) + sep + self._doc_segment(document)
                + end + "".join(self._parts("suffix")))

    def _ids(self, tok, text: str) -> list[int]:
        return tok(text, add_special_tokens=False, verbose=False)["input_ids"] if text else []

    def encode(self, pairs: list[tuple[str, str]], ctx: StageContext | None = None) -> list[list[int]]:
        tok = self.tokenizer()
        layout = self.t.get("layout", "whole")
        stats = ctx.stats if ctx is not None else None
        if layout == "whole":
            return self._encode_whole(tok, pairs, stats)
        prefix = [i for p in self._parts("prefix") for i in self._ids(tok, p)]
        suffix = [i for p in self._parts("suffix") for i in self._ids(tok, p)]
        out: list[list[int]] = []
        if layout == "body":
            budget = self.max_length - len(prefix) - len(suffix)
            if budget < 1:
                raise ConfigError(f"max_length {self.max_length} leaves no room for the prompt body")
            bodies = tok([self._query_segment(q) + self._doc_segment(d) for q, d in pairs],
                         add_special_tokens=False, verbose=False)["input_ids"]
            for body in bodies:
                if len(body) > budget:
                    body = body[:budget]
                    if stats is not None:
                        stats["truncated_documents"] += 1
                out.append(prefix + body + suffix)
            return out
        if layout == "cut":  # the chat-templated prefix and body as one string, cut, then the suffix
            end = "".join(self._parts("body_end"))
            head = "".join(self._parts("prefix"))
            rows = tok([head + self._query_segment(q) + self._doc_segment(d) + end for q, d in pairs],
                       add_special_tokens=False, verbose=False)["input_ids"]
            for row in rows:
                if len(row) > self.max_length:
                    row = row[: self.max_length]
                    if stats is not None:
                        stats["truncated_documents"] += 1
                out.append(row + suffix)
            return out
        # split
        sep = self._ids(tok, self.t.get("separator", ""))
        static = len(prefix) + len(suffix) + len(sep)
        qs = tok([self._query_segment(q) for q, _ in pairs], add_special_tokens=False, verbose=False)["input_ids"]
        ds = tok([self._doc_segment(d) for _, d in pairs], add_special_tokens=False, verbose=False)["input_ids"]
        if self.t.get("budget", "fractions") == "mxbai":
            return self._split_mxbai(prefix, sep, suffix, qs, ds, stats)
        q_cap = int(self.max_length * float(self.t.get("query_fraction", 0.75)))
        d_frac = float(self.t.get("document_fraction", 0.25))
        for q_ids, d_ids in zip(qs, ds):
            if len(q_ids) > q_cap:
                q_ids = q_ids[:q_cap]
                if stats is not None:
                    stats["truncated_queries"] += 1
            d_cap = max(0, min(int(self.max_length * d_frac), self.max_length - static - len(q_ids)))
            if len(d_ids) > d_cap:
                d_ids = d_ids[:d_cap]
                if stats is not None:
                    stats["truncated_documents"] += 1
            out.append(prefix + q_ids + sep + d_ids + suffix)
        return out

    def model_length(self) -> int:
        """The model's own context length (max_position_embeddings of its config)."""
        if getattr(self, "_model_len", None) is None:
            try:
                from transformers import AutoConfig

                n = getattr(AutoConfig.from_pretrained(self.model, **self.hf_kwargs()), "max_position_embeddings", None)
            except Exception:  # a served model without a local config: max_length bounds it alone
                n = None
            self._model_len = int(n) if n else 10**9
        return min(self._model_len, 10**9)

    def _split_mxbai(self, prefix, sep, suffix, qs, ds, stats) -> list[list[int]]:
        """mixedbread's budget (mxbai_rerank_v2.py prepare_inputs): max_length bounds query +
        separator + document; the static prompt comes on top, within the model's length."""
        static = len(prefix) + len(suffix)  # the suffix starts with the separator after the document
        model_max = self.model_length()
        max_len = min(self.max_length, model_max - static)
        out = []
        for q_ids, d_ids in zip(qs, ds):
            if len(q_ids) > max_len * 3 // 4:
                q_ids = q_ids[: max_len * 3 // 4]
                if stats is not None:
                    stats["truncated_queries"] += 1
            d_cap = min(model_max - len(q_ids) - static, max_len)
            body = sep + d_ids[: max(0, d_cap)]
            body = body[: max(0, max_len - len(q_ids))]  # prepare_for_model(only_second, max_length)
            if len(body) < len(sep) + len(d_ids) and stats is not None:
                stats["truncated_documents"] += 1
            out.append(prefix + q_ids + body + suffix)
        return out

    def _encode_whole(self, tok, pairs, stats) -> list[list[int]]:
        special = bool(self.t.get("add_special_tokens", True))
        texts = [self.prompt_text(q, d) for q, d in pairs]
        if self.truncation == "tail":  # the whole string cut from its end (special tokens kept)
            out = tok(texts, add_special_tokens=special, truncation=True, max_length=self.max_length,
                      verbose=False)["input_ids"]
            if stats is not None:
                full = [i for i, ids in enumerate(out) if len(ids) >= self.max_length]
                if full:
                    whole = tok([texts[i] for i in full], add_special_tokens=special, verbose=False)["input_ids"]
                    stats["truncated_documents"] += sum(1 for ids in whole if len(ids) > self.max_length)
            return out
        out = tok(texts, add_special_tokens=special, verbose=False)["input_ids"]
        for i, ids in enumerate(out):
            if len(ids) <= self.max_length:
                continue
            q, d = pairs[i]
            _, ids = fit_document(tok, self.prompt_text, q, self._ids(tok, d), len(ids), self.max_length, special)
            if len(ids) > self.max_length:
                raise ConfigError(f"the prompt without its document is longer than max_length {self.max_length}")
            out[i] = ids
            if stats is not None:
                stats["truncated_documents"] += 1
        return out

    # -- scoring -------------------------------------------------------------------------
    def score_rule(self, pos_logp: float, neg_logp: float) -> float:
        """The template's score from the two labels' log-probabilities (equal to the same rule
        on their logits: the vocabulary's normaliser cancels)."""
        rule = self.t["score"]
        if rule == "difference":
            return pos_logp - neg_logp
        gap = neg_logp - pos_logp  # softmax over the two labels, computed stably
        if rule == "softmax":
            return 1.0 / (1.0 + math.exp(gap)) if gap < 700 else 0.0
        return -(max(gap, 0.0) + math.log1p(math.exp(-abs(gap))))

    def _compute(self, pairs: list[tuple[str, str]], ctx: StageContext) -> list[float]:
        tok = self.tokenizer()
        pos, neg = self.labels()
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        side = self.t.get("padding_side", "left" if self.t["kind"] == "causal" else "right")
        if self.t["kind"] == "causal" and side != "left":
            raise ConfigError("a causal logit-pair template needs padding_side 'left' (the score is read at the end)")

        def score(ids: list[list[int]]) -> list[float]:
            lps = self.backend.label_logprobs(ids, [pos, neg], kind=self.t["kind"], pad_id=pad_id)
            return [self.score_rule(p, n) for p, n in lps]

        if not self.backend.local:  # a server: batches are rendered (one thread) while others are in flight
            def prepare(batch):
                with self.render_lock:
                    return self.encode([pairs[i] for i in batch], ctx)

            return self.map_batches([len(q) + len(d) for q, d in pairs], lambda _, ids: score(ids), emit=True,
                                    prepare=prepare)
        ids = self.encode(pairs, ctx)
        return self.map_batches([len(s) for s in ids], lambda b: score([ids[i] for i in b]), emit=True)
