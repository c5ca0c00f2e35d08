"""The local batching path: padding, the prefetch thread a GPU run prepares batches on, and the
cross-encoder's scores through either path (equal, whatever the batch order)."""

from __future__ import annotations

import os
import random
import threading

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

from tests.test_neural_rerankers import bert_cross_encoders, dl19_items, minilm_tokenizer_dir  # noqa: F401 (fixtures)

torch = pytest.importorskip("torch")


def padded_by_hand(seqs, pad_id, side):
    width = max(len(s) for s in seqs)
    fill = [[pad_id] * (width - len(s)) for s in seqs]
    rows = [f + list(s) if side == "left" else list(s) + f for f, s in zip(fill, seqs)]
    masks = [[0] * len(f) + [1] * len(s) if side == "left" else [1] * len(s) + [0] * len(f) for f, s in zip(fill, seqs)]
    return rows, masks


def test_pad_equals_padding_by_hand_on_both_sides():
    from rankify_cli.rerankers.base import pad

    rng = random.Random(3)
    for _ in range(300):
        seqs = [[rng.randrange(50_000) for _ in range(rng.randint(1, 40))] for _ in range(rng.randint(1, 9))]
        if rng.random() < 0.3:
            seqs = [tuple(s) for s in seqs]
        for side in ("left", "right"):
            ids, mask = pad(seqs, 7, side)
            rows, masks = padded_by_hand(seqs, 7, side)
            assert ids.dtype == torch.long and mask.dtype == torch.long
            assert ids.tolist() == rows and mask.tolist() == masks


def test_prefetched_keeps_order_raises_the_threads_error_and_stops_when_left():
    from rankify_cli.rerankers.base import prefetched

    assert [(i, v) for i, v in prefetched(range(50), lambda i: i * i, "t")] == [(i, i * i) for i in range(50)]

    def bad(i):
        if i == 5:
            raise ValueError("batch 5 cannot be prepared")
        return i

    got = []
    with pytest.raises(ValueError, match="batch 5"):
        for i, _ in prefetched(range(10), bad, "t"):
            got.append(i)
    assert got == [0, 1, 2, 3, 4]  # everything before the failing batch was delivered, in order

    prepared = []
    gen = prefetched(range(1000), lambda i: prepared.append(i) or i, "t-left", depth=2)
    assert next(gen) == (0, 0)
    gen.close()  # leaving early: the thread stops instead of preparing the rest
    assert not any(t.name == "t-left" for t in threading.enumerate())
    assert len(prepared) <= 5


def test_cross_encoder_scores_equal_on_the_prefetch_path(bert_cross_encoders, monkeypatch):
    """A CUDA run prepares batches on a thread (HF.runs_async); forced here on the CPU, the scores
    equal the inline path's exactly, and pairs come back in input order."""
    from rankify_cli import registry
    from rankify_cli.rerankers import base
    from rankify_cli.rerankers.backends.hf import HF
    from rankify_cli.types import Candidate, Query, StageContext

    items = [(Query(qid, q), [Candidate(d, 0.0, t) for d, t in docs]) for qid, (q, docs) in list(dl19_items(30).items())[:4]]

    def scores():
        base.clear_loaded()
        rr = registry.build("reranker", f"cross-encoder:{bert_cross_encoders[1]}?batch_size=8")
        out = rr.rerank_all(items, StageContext())
        return {(q.id, c.doc_id): c.score for (q, _), cands in zip(items, out) for c in cands}, rr

    inline, rr = scores()
    assert rr.backend.runs_async is False
    threads = []
    real = base.prefetched

    def watched(*a, **k):
        threads.append(a[2])
        yield from real(*a, **k)

    monkeypatch.setattr(HF, "runs_async", property(lambda self: True))
    monkeypatch.setattr(base, "prefetched", watched)
    ahead, rr = scores()
    assert threads == ["cross-encoder-prepare"]  # the prefetch path ran
    assert ahead == inline and len(ahead) == 120
