"""Families `embedding` (any bi-encoder, cosine) and `e2rank` (listwise pseudo-query embedding).

`embedding`: a sentence-transformers folder (it has modules.json) runs through its own
modules (transformer, pooling, normalize); any other model runs through transformers
AutoModel with mean, CLS or last-token pooling. Scores are cosine similarities of
L2-normalised embeddings.

`e2rank` (Alibaba-NLP/E2Rank, src/eval.py): the query side is a pseudo-query built from the
top-K candidates in their input order,
    "{task}:\\nDocuments:\\n[1] d1\\n...\\n[K] dK\\nSearch Query: {q}"
wrapped in the model's chat template (generation prompt, thinking disabled, no end-of-text).
Documents are cut to 1,024 words and embedded alone with end-of-text appended; last-token
pooling; cosine ranks all candidates. A model without a chat template (a sentence-transformers
bi-encoder such as MiniLM) gets the raw pseudo-query, and config() says so; when the
pseudo-query is longer than the model's limit, its documents are shortened evenly so the task
line and the query itself are never cut (counted in stats["shortened_pseudo_queries"]).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from rankify_cli.errors import ConfigError
from rankify_cli.types import Candidate, Query, StageContext, fingerprint

from .base import NeuralReranker, load_once, local_folder, read_template

POOLINGS = ("auto", "mean", "cls", "last")


def _model_file(model: str, name: str, revision: str | None) -> str | None:
    folder = local_folder(model)
    if folder:
        path = os.path.join(folder, name)
        return path if os.path.isfile(path) else None
    try:
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(model, name, revision=revision)
        if isinstance(path, str):
            return path
        offline = any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
        if not offline:  # an online user's first run: ask the hub whether the file exists
            from huggingface_hub import hf_hub_download

            return hf_hub_download(model, name, revision=revision)
        return None
    except Exception:
        return None


DOC_MEMO_MAX = 500_000  # document vectors kept per reranker instance (about 0.8 GB at 384 dims)


class Embedding(NeuralReranker):
    family = "embedding"
    default_max_length = 512
    default_pooling = "mean"

    def __init__(self, model: str, pooling: str = "auto", query_prefix: str = "", document_prefix: str = "",
                 document_suffix: str = "", batch_size: int = 32, max_length: int | None = None,
                 device: str | None = None, dtype: str | None = None, revision: str | None = None,
                 trust_remote_code: bool = False,
                 backend: str | None = None, base_url: str | None = None, api_key_env: str | None = None,
                 concurrency: int = 16, timeout: float = 120.0, max_retries: int = 6, served_model: str | None = None,
                 max_per_replica: int | None = None):
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)} (got {pooling!r})")
        self._max_length_opt = max_length
        super().__init__(model, batch_size=batch_size, max_length=max_length, device=device, dtype=dtype,
                         revision=revision, trust_remote_code=trust_remote_code,
                         backend=backend, base_url=base_url, api_key_env=api_key_env, concurrency=concurrency,
                         timeout=timeout, max_retries=max_retries, served_model=served_model,
                         max_per_replica=max_per_replica)
        self.pooling_opt = pooling
        self.query_prefix, self.document_prefix = str(query_prefix), str(document_prefix)
        self.document_suffix_opt = str(document_suffix)
        self._format: str | None = None
        self._st_max: int | None = None

    # -- settings ------------------------------------------------------------------------
    @property
    def model_format(self) -> str:
        """'sentence-transformers' when the model is a sentence-transformers folder and
        pooling is left to it; else 'transformers'."""
        if self._format is None:
            is_st = _model_file(self.model, "modules.json", self.revision) is not None
            self._format = "sentence-transformers" if is_st and self.pooling_opt == "auto" else "transformers"
            if self._format == "sentence-transformers" and self._max_length_opt is None:
                cfg = _model_file(self.model, "sentence_bert_config.json", self.revision)
                if cfg:
                    try:
                        self._st_max = int(json.loads(Path(cfg).read_text()).get("max_seq_length") or 0) or None
                    except (OSError, ValueError):
                        self._st_max = None
                if self._st_max:
                    self.max_length = self._st_max
        return self._format

    @property
    def pooling(self) -> str:
        if self.model_format == "sentence-transformers":
            return "model"
        return self.default_pooling if self.pooling_opt == "auto" else self.pooling_opt

    def backend_options(self) -> dict:
        return {"model_format": self.model_format}

    def extra_config(self) -> dict:
        # "backend" names the local loading path, as before the backends layer (cache keys stay);
        # another backend adds its own name in config()
        return {"backend": self.model_format, "pooling": self.pooling, "max_length": self.max_length,
                "query_prefix": self.query_prefix, "document_prefix": self.document_prefix,
                "document_suffix": self.document_suffix, "similarity": "cosine"}

    @property
    def document_suffix(self) -> str:
        return self.document_suffix_opt

    # -- tokenizer -----------------------------------------------------------------------
    def tokenizer(self):
        """The tokenizer alone (building prompts must not load the weights: cached reruns skip them)."""
        def loader():
            from transformers import AutoTokenizer

            path = self.model
            folder = local_folder(self.model)
            modules = (_model_file(self.model, "modules.json", self.revision)
                       if self.model_format == "sentence-transformers" else None)
            if folder and modules:
                try:
                    sub = json.loads(Path(modules).read_text())[0].get("path", "")
                    path = os.path.join(folder, sub) if sub else folder
                except (OSError, ValueError, IndexError, AttributeError):
                    path = folder
            return AutoTokenizer.from_pretrained(path, **self.hf_kwargs())

        return load_once(self.load_key("tokenizer"), loader, self.model, self.family)

    # -- embedding -----------------------------------------------------------------------
    def render_ids(self, texts: list[str], ctx: StageContext | None = None, kind: str = "document") -> list[list[int]]:
        """Token ids of each text as the model's tokenizer writes them (special tokens added,
        cut at max_length as sentence-transformers cuts): what every backend embeds."""
        tok = self.tokenizer()
        ids = tok(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        long = [i for i, s in enumerate(ids) if len(s) > self.max_length]
        if long:
            cut = tok([texts[i] for i in long], add_special_tokens=True, truncation=True, max_length=self.max_length,
                      verbose=False)["input_ids"]
            for i, c in zip(long, cut):
                ids[i] = c
        self.count(ctx, f"truncated_{kind}s", len(long))
        return ids

    def embed(self, texts: list[str], ctx: StageContext | None = None, kind: str = "document",
              on_batch=None) -> list[list[float]]:
        """L2-normalised embeddings, one row (a list of floats) per text. `on_batch(indices, rows)`
        is called as each model batch finishes (the scores of its pairs are stored then)."""
        if not texts:
            return []
        ids = self.render_ids(texts, ctx, kind)
        tok = self.tokenizer()
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        return self.map_batches([len(s) for s in ids], lambda b: self.backend.embed(
            [ids[i] for i in b], pad_id=pad_id, pooling=self.pooling), on_batch=on_batch)

    # -- scoring -------------------------------------------------------------------------
    def query_text(self, query: Query, candidates: list[Candidate]) -> str:
        return self.query_prefix + query.text

    def document_text(self, text: str) -> str:
        return self.document_prefix + text + self.document_suffix

    def _pairs(self, query: Query, candidates: list[Candidate]) -> list[tuple[str, str]]:
        q = self.query_text(query, candidates)
        return [(q, self.document_text(c.text)) for c in candidates]

    def _compute(self, pairs: list[tuple[str, str]], ctx: StageContext) -> list[float]:
        import numpy as np

        qs = list(dict.fromkeys(q for q, _ in pairs))
        qe = np.asarray(self.embed(qs, ctx, "querie"), dtype=np.float32)
        qi = {q: i for i, q in enumerate(qs)}
        # A document shared by many queries' candidate lists (most of a BEIR corpus) is embedded
        # once per run, not once per chunk: the memo holds this model's document vectors.
        memo = self.__dict__.setdefault("_doc_vectors", {})
        pairs_of: dict[str, list[int]] = {}
        for i, (_, d) in enumerate(pairs):
            pairs_of.setdefault(d, []).append(i)
        new = [d for d in pairs_of if d not in memo]
        if len(memo) + len(new) > DOC_MEMO_MAX:
            memo.clear()
            new = list(pairs_of)
        scores: list[float] = [0.0] * len(pairs)

        def score(docs) -> None:
            # the pairs of these documents are final: score them and store them now, so a run
            # killed mid-way keeps every finished batch and the progress bar moves per batch
            done = [i for d in docs for i in pairs_of[d]]
            for i in done:
                scores[i] = float(qe[qi[pairs[i][0]]] @ memo[pairs[i][1]])
            self.emit(done, [scores[i] for i in done])

        score([d for d in pairs_of if d in memo])
        if new:
            def finished(batch, rows) -> None:
                memo.update((new[j], np.asarray(row, dtype=np.float32)) for j, row in zip(batch, rows))
                score([new[j] for j in batch])

            self.embed(new, ctx, "document", on_batch=finished)
        ctx.stats["documents_embedded"] += len(new)
        return scores


class E2Rank(Embedding):
    """prompts: "reference" (default) keeps the template's query for every dataset, as E2Rank's
    eval.py does in its listwise runs; "dataset" uses the template's per-dataset query
    (eval.py's EVAL_PROMPTS) for the dataset being run, the default one elsewhere.
    max_length defaults to the model's own length (eval.py runs vLLM at the model's length)."""

    family = "e2rank"
    default_max_length = 8192  # only until the model's own length is read
    default_pooling = "last"

    def __init__(self, model: str, task: str | None = None, top_k: int = 20, document_words: int = 1024,
                 pooling: str = "auto", batch_size: int = 8, max_length: int | None = None,
                 device: str | None = None, dtype: str | None = None, revision: str | None = None,
                 trust_remote_code: bool = False,
                 backend: str | None = None, base_url: str | None = None, api_key_env: str | None = None,
                 concurrency: int = 16, timeout: float = 120.0, max_retries: int = 6, served_model: str | None = None,
                 max_per_replica: int | None = None, template: str = "e2rank", prompts: str = "reference"):
        if prompts not in ("reference", "dataset"):
            raise ConfigError(f"prompts must be 'reference' or 'dataset' (got {prompts!r})")
        self.prompts = prompts
        self.dataset = ""
        self.template_name, self.t = read_template(str(template))
        if self.t.get("kind") != "embedding":
            raise ConfigError(f"template '{template}' is not an embedding (e2rank) template")
        if not isinstance(top_k, int) or top_k < 1:
            raise ConfigError(f"top_k must be a positive integer (got {top_k!r})")
        if not isinstance(document_words, int) or document_words < 1:
            raise ConfigError(f"document_words must be a positive integer (got {document_words!r})")
        super().__init__(model, pooling=pooling, batch_size=batch_size, max_length=max_length, device=device,
                         dtype=dtype, revision=revision, trust_remote_code=trust_remote_code,
                         backend=backend, base_url=base_url, api_key_env=api_key_env, concurrency=concurrency,
                         timeout=timeout, max_retries=max_retries, served_model=served_model,
                         max_per_replica=max_per_replica)
        self.task = str(task) if task is not None else self.t["task"]
        self.top_k = top_k
        self.document_words = document_words
        self._query_format: str | None = None
        self._suffix: str | None = None
        self._shortened = 0

    @property
    def query_format(self) -> str:
        """'chat' when the tokenizer has a chat template, else 'raw'."""
        if self._query_format is None:
            tok = self.tokenizer()
            self._query_format = "chat" if getattr(tok, "chat_template", None) else "raw"
        return self._query_format

    @property
    def document_suffix(self) -> str:
        """End-of-text appended to documents when the tokenizer knows it as one token."""
        if self._suffix is None:
            suffix = self.t.get("document_suffix", "")
            tok = self.tokenizer()
            ok = bool(suffix) and suffix in set(getattr(tok, "all_special_tokens", [])) | set(tok.get_added_vocab())
            self._suffix = suffix if ok else ""
        return self._suffix

    def extra_config(self) -> dict:
        cfg = super().extra_config()
        cfg.update({"template": self.template_name, "template_fingerprint": fingerprint(self.t)[:16],
                    "task": self.task, "top_k": self.top_k, "document_words": self.document_words,
                    "prompts": self.prompts, "query_template": self.query_template(),
                    "query_format": self.query_format if self.query_format == "chat"
                    else "raw pseudo-query (the model has no chat template)"})
        return cfg

    def _cut_words(self, text: str, n: int) -> str:
        return " ".join(text.split()[:n])

    def query_template(self) -> str:
        """The pseudo-query's template: the dataset's own with prompts=dataset, else the default."""
        if self.prompts == "dataset":
            own = (self.t.get("dataset_queries") or {}).get(self.dataset)
            if own:
                return own
        return self.t["query"]

    def config(self) -> dict:
        self._model_length()
        return super().config()

    def _model_length(self) -> None:
        """No cap below the model's own length unless max_length is given."""
        if self._max_length_opt is not None or getattr(self, "_length_read", False):
            return
        self._length_read = True
        if self.model_format == "sentence-transformers":  # its max_seq_length is the model's length
            return
        try:
            from transformers import AutoConfig

            n = getattr(AutoConfig.from_pretrained(self.model, **self.hf_kwargs()), "max_position_embeddings", None)
        except Exception:  # no readable config: keep the default; loading the model says what is wrong
            n = None
        if n:
            self.max_length = int(n)

    def pseudo_query(self, query: Query, candidates: list[Candidate], words: int | None = None) -> str:
        words = self.document_words if words is None else words
        docs = [self._cut_words(c.text, words) for c in candidates[: self.top_k]]
        lines = "\n".join(self.t["document_line"].replace("{index}", str(i)).replace("{document}", d)
                          for i, d in enumerate(docs, start=1))
        text = (self.query_template().replace("{task}", self.task).replace("{query}", "\x00Q\x00")
                .replace("{documents}", lines).replace("\x00Q\x00", query.text))
        if self.query_format == "chat":
            tok = self.tokenizer()
            messages = [{"role": "user", "content": text}]
            try:
                text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                               enable_thinking=False)
            except TypeError:
                text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text

    def query_text(self, query: Query, candidates: list[Candidate]) -> str:
        text = self.pseudo_query(query, candidates)
        tok = self.tokenizer()
        n = len(tok(text, add_special_tokens=True, verbose=False)["input_ids"])
        if n <= self.max_length:
            return text
        # shorten the listed documents evenly so the task line and the query are kept
        longest = max((len(c.text.split()) for c in candidates[: self.top_k]), default=0)
        words = min(self.document_words, longest)
        while n > self.max_length and words > 0:
            words = min(words - 1, int(words * self.max_length / n))
            text = self.pseudo_query(query, candidates, max(words, 0))
            n = len(tok(text, add_special_tokens=True, verbose=False)["input_ids"])
        self._shortened += 1
        return text

    def document_text(self, text: str) -> str:
        return self._cut_words(text, self.document_words) + self.document_suffix

    def rerank_all(self, items, ctx: StageContext):
        self.dataset = ctx.dataset
        self._model_length()
        self._shortened = 0
        out = super().rerank_all(items, ctx)
        if self._shortened:
            ctx.stats["shortened_pseudo_queries"] += self._shortened
        return out
