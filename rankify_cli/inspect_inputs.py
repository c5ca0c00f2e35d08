"""`rankify inspect`: exactly what a reranker's model receives for one query, without running it.

Pointwise families: each pair's prompt text and token ids (truncation applied). E2Rank: the
pseudo-query and each document's embedded text. Listwise / setwise / groupwise: each window's
(set's, group's) chat messages, the rendered prompt and its token ids when the model's tokenizer
is known. Windows are shown over the first-stage order: later windows of a real run depend on
the model's answers (listwise slides over the reordered list; setwise compares the heap's
winners), so only the first window / comparison is exactly what the model receives first.
"""

from __future__ import annotations

from collections import Counter

from .types import Candidate, Query, StageContext


def _tokenizer(rr):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(rr.model, **rr.hf_kwargs())


def _pointwise(rr, query: Query, cands: list[Candidate], ctx: StageContext) -> list[dict]:
    pairs = rr._pairs(query, cands)
    if hasattr(rr, "render_pair"):  # generative: the prompt as cut, not as given
        rendered = [rr.render_pair(q, d, ctx) for q, d in pairs]
        return [{"doc_ids": [c.doc_id], "text": text, "token_ids": list(ids)} for c, (text, ids) in zip(cands, rendered)]
    ids = rr.encode(pairs, ctx)
    if isinstance(ids, tuple):  # cross-encoder: (input ids, token type ids)
        ids = ids[0]
    tok = None if hasattr(rr, "prompt_text") else _tokenizer(rr)
    out = []
    for c, (q, d), row in zip(cands, pairs, ids):
        text = rr.prompt_text(q, d) if tok is None else tok.decode(row)
        out.append({"doc_ids": [c.doc_id], "text": text, "token_ids": list(row)})
    return out


def _e2rank(rr, query: Query, cands: list[Candidate], ctx: StageContext) -> list[dict]:
    rr.dataset = ctx.dataset
    rr._model_length()
    tok = rr.tokenizer()
    pseudo = rr.query_text(query, cands)
    ids = tok(pseudo, add_special_tokens=True, truncation=True, max_length=rr.max_length)["input_ids"]
    out = [{"doc_ids": [c.doc_id for c in cands[: rr.top_k]], "role": "pseudo-query", "text": pseudo,
            "token_ids": ids}]
    for c in cands:
        text = rr.document_text(c.text)
        out.append({"doc_ids": [c.doc_id], "role": "document", "text": text,
                    "token_ids": tok(text, add_special_tokens=True, truncation=True, max_length=rr.max_length)["input_ids"]})
    return out


def _render(rr, messages: list[dict]) -> tuple[str | None, list[int] | None]:
    backend = rr.backend
    tok = backend.chat_tokenizer()
    if tok is None or not getattr(tok, "chat_template", None):
        return None, None
    kwargs = getattr(backend, "chat_template_kwargs", None) or rr.template.get("chat_template_kwargs") or {}
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
    special = bool(rr.template.get("prompt_add_special_tokens", False))
    return prompt, tok(prompt, add_special_tokens=special)["input_ids"]


def _llm(rr, query: Query, cands: list[Candidate], ctx: StageContext) -> list[dict]:
    windows: list[tuple[list[str], list[dict], dict]] = []
    family = rr.config().get("family")
    if family == "listwise":
        from .rerankers.listwise import sliding_windows

        qtext = rr.prepare_query(query.text)
        for start, end in sliding_windows(len(cands), rr.window, rr.stride):
            win = cands[start:end]
            msgs, cut = rr.window_messages(qtext, [rr._words(c.body, c.title) for c in win])
            windows.append(([c.doc_id for c in win], msgs, {"window": [start, end], "context_cut": cut}))
    elif family == "setwise":
        shown, msgs = rr.first_comparison(query, cands, ctx.dataset)  # the heap's last parent, shuffled
        windows.append(([cands[i].doc_id for i in shown], msgs, {"comparison": 1}))
    elif family == "groupwise":
        texts = [rr._doc(c.text) for c in cands]
        for n, g in enumerate(rr.groups(query.id, len(cands)), 1):
            windows.append(([cands[i].doc_id for i in g], rr.messages(query.text, [texts[i] for i in g]), {"group": n}))
    else:
        raise ValueError(f"rankify inspect does not know how to render family '{family}'")
    out = []
    for doc_ids, msgs, extra in windows:
        prompt, ids = _render(rr, msgs)
        out.append({"doc_ids": doc_ids, **extra, "messages": msgs, "text": prompt, "token_ids": ids})
    return out


def inspect_inputs(rr, query: Query, cands: list[Candidate], dataset: str = "") -> dict:
    """{"inputs": [{"doc_ids", "text", "token_ids", ...}], "stats": truncation counters}."""
    ctx = StageContext(stats=Counter(), dataset=dataset)
    family = getattr(rr, "family", None)
    if family == "e2rank":
        inputs = _e2rank(rr, query, cands, ctx)
    elif hasattr(rr, "encode") and hasattr(rr, "_pairs"):
        inputs = _pointwise(rr, query, cands, ctx)
    elif hasattr(rr, "backend") and hasattr(rr, "messages") or hasattr(rr, "window_messages"):
        inputs = _llm(rr, query, cands, ctx)
    else:
        raise ValueError(f"rankify inspect cannot render reranker '{getattr(rr, 'spec', rr)}'")
    return {"query": {"id": query.id, "text": query.text}, "inputs": inputs, "stats": dict(ctx.stats)}
