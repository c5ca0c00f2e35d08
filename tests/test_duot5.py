"""duoT5 against pyterrier-t5 0.3.0's DuoT5ReRanker on a tiny T5 built here (a Unigram
tokenizer both T5Tokenizer and AutoTokenizer load), and end to end through the installed CLI
as a monoT5 >> duoT5 cascade on DL19's BM25 top-100, with comparisons counted per query."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llm_server import load_trec_dl  # noqa: E402

from rankify_cli import registry  # noqa: E402
from rankify_cli.types import Candidate, Query, StageContext  # noqa: E402


def unigram_t5_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in texts for w in t.split()})
    chars = sorted({c for t in texts for c in t if not c.isspace()})
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -1.0) for w in words] + [(c, -5.0) for c in chars]
    tk = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tk.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="module")
def dl19():
    from conftest import DATA

    qrels, cands = load_trec_dl("dl19", str(DATA))
    lines = (DATA / "trec-dl" / "dl19-passage" / "queries.tsv").read_text().splitlines()
    queries = {q: t.strip() for q, t in (line.split("\t", 1) for line in lines)}
    return queries, cands


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory, dl19):
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    queries, cands = dl19
    texts = list(queries.values()) + [t for cs in cands.values() for _, t in cs[:12]]
    tok = unigram_t5_tokenizer(texts + ["Query: Document0: Document1: Relevant: true false"])
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=len(tok), d_model=32, d_ff=64, d_kv=16, num_layers=2, num_decoder_layers=2,
                   num_heads=2, decoder_start_token_id=tok.pad_token_id, pad_token_id=tok.pad_token_id,
                   eos_token_id=tok.eos_token_id, n_positions=512)
    path = tmp_path_factory.mktemp("t5")
    T5ForConditionalGeneration(cfg).eval().save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_pair_scores_equal_pyterrier_t5(tiny_t5, dl19):
    import pandas as pd
    from pyterrier_t5 import DuoT5ReRanker

    queries, cands = dl19
    rows = []
    for qid in sorted(cands)[:2]:
        docs = cands[qid][:5]
        for n, (docno, text) in enumerate(docs):
            if n == 4:  # long enough that both documents of its pairs are cut
                text = " ".join([text] * 12)
            rows.append({"qid": qid, "query": queries[qid], "docno": docno, "text": text, "score": 5.0 - n, "rank": n})
    frame = pd.DataFrame(rows)
    ref = DuoT5ReRanker(tok_model=tiny_t5, model=tiny_t5, batch_size=1, device="cpu", verbose=False).transform(frame)
    want = {(r.qid, r.docno): r.score for r in ref.itertuples()}
    rr = registry.build("reranker", f"duot5:{tiny_t5}?top_k=5&batch_size=3")
    ctx = StageContext()
    items = [(Query(qid, queries[qid]), [Candidate(r["docno"], r["score"], r["text"]) for r in rows if r["qid"] == qid])
             for qid in sorted({r["qid"] for r in rows})]
    for (q, _), ranked in zip(items, rr.rerank_all(items, ctx)):
        for c in ranked:
            assert c.score == pytest.approx(want[(q.id, c.doc_id)], abs=1e-4)
    assert ctx.stats["duo_comparisons"] == 2 * 5 * 4 and ctx.stats["truncated_pairs"] == 2 * 8
    assert ctx.stats["duo_per_query"] == {q.id: {"comparisons": 20} for q, _ in items}


def test_mono_duo_cascade_end_to_end(tiny_t5, cli, tmp_path):
    env = {"RANKIFY_CACHE_DIR": str(tmp_path / "cache")}
    args = ("run", "-d", "dl19", "-r", "run:bm25", "-o", str(tmp_path / "res"), "--json", "-q", "--top-k", "10",
            "--reranker", f"logit-pair:{tiny_t5}?template=monot5", "--reranker", f"duot5:{tiny_t5}?top_k=5")
    res = cli(*args, env=env)
    assert res.code == 0, res
    doc = res.json()
    info = json.loads((Path(doc["output_dir"]) / "run_info.json").read_text())
    stats = info["stages"][-1]["stats"]
    assert stats["duo_comparisons"] == 43 * 5 * 4 == stats["scored_pairs"]
    assert len(stats["duo_per_query"]) == 43 and all(v == {"comparisons": 20} for v in stats["duo_per_query"].values())
    assert 0.0 < doc["metrics"]["nDCG@10"] < 1.0
    again = cli(*args, env=env)
    assert again.code == 0 and again.json()["metrics"] == doc["metrics"], again
    stats = json.loads((Path(again.json()["output_dir"]) / "run_info.json").read_text())["stages"][-1]["stats"]
    assert stats["cached_scores"] == 43 * 20 and not stats.get("scored_pairs")
