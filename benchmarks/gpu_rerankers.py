"""GPU throughput of the toolkit's neural families, with randomly initialised real shapes.

Speed does not depend on the weights, so nothing is downloaded: the script builds
  - a MiniLM-L6-shaped BERT cross-encoder (6 layers, hidden 384, 12 heads, 1 logit) and
  - a Qwen2.5-0.5B-shaped causal LM (hidden 896, 24 layers, 14 heads, 2 KV heads,
    intermediate 4864, vocab 151936) scored with the `qwen3-yesno` logit-pair template,
with byte-level BPE / WordPiece tokenizers trained here on synthetic text, saves them to a
temp folder and runs them through the toolkit's own classes (`cross-encoder`,
`logit-pair?template=qwen3-yesno`) on synthetic (query, passage) pairs, in bf16 on CUDA.
It prints pairs/s per model and batch size.

  python benchmarks/gpu_rerankers.py                 # on a GPU machine
  python benchmarks/gpu_rerankers.py --smoke         # tiny shapes, a few pairs, CPU ok
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = ("the of and to in is was for on that with as by at from his an were are which this be or has had "
         "not but also its their new one after first two who they been have more other years into time "
         "city river school team season film music world war state system water energy health cell protein "
         "study results patients data model method analysis effect level high low increase cancer disease "
         "gene risk treatment clinical group show found associated significant").split()


def synthetic(n: int, words: int, rng: random.Random) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(max(1, int(rng.gauss(words, words / 4))))) for _ in range(n)]


def build_tokenizers(folder: str, rng: random.Random, vocab: int):
    """A WordPiece (BERT) and a byte-level BPE (Qwen-style, with ChatML specials) tokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    text = synthetic(2000, 60, rng) + ["yes no 1 0 Query Document Instruct"] * 50

    wp = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wp.normalizer = normalizers.BertNormalizer(lowercase=True)
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wp.train_from_iterator(text, trainers.WordPieceTrainer(vocab_size=2000,
                           special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    cls, sep = wp.token_to_id("[CLS]"), wp.token_to_id("[SEP]")
    wp.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    bert_tok = PreTrainedTokenizerFast(tokenizer_object=wp, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                       sep_token="[SEP]", mask_token="[MASK]")

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(text, trainers.BpeTrainer(vocab_size=min(vocab, 4000), special_tokens=[
        "<|endoftext|>", "<|im_start|>", "<|im_end|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    qwen_tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    qwen_tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    qwen_tok.add_tokens(["<think>", "</think>", "yes", "no"])
    return bert_tok, qwen_tok


def bare_forward(rr, items, torch, device) -> float:
    """Seconds for the model's forward alone over the toolkit's own padded batches."""
    from rankify_cli.rerankers.base import length_batches, pad

    pairs = [(q.text, c.text) for q, cands in items for c in cands]
    family = type(rr).__name__
    tok = rr.tokenizer()
    if family == "CrossEncoder":
        model = rr.backend._model("seq-cls")
        ids, types = rr.encode(pairs)
    else:
        model = rr.backend._model("causal")
        ids, types = rr.encode(pairs), None
    side = "left" if family != "CrossEncoder" else "right"
    batches = []
    for b in length_batches([len(s) for s in ids], rr.batch_size):
        x, m = pad([ids[i] for i in b], tok.pad_token_id or 0, side)
        kw = {"input_ids": x.to(device), "attention_mask": m.to(device)}
        if types is not None:
            kw["token_type_ids"] = pad([types[i] for i in b], 0, side)[0].to(device)
        batches.append(kw)
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    outs = []
    with torch.inference_mode():
        for kw in batches:
            if family == "CrossEncoder":
                outs.append(model(**kw).logits[:, 0])
            else:
                outs.append(model(**kw, logits_to_keep=1).logits[:, -1, :2])
        torch.cat(outs).float().cpu()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description="pairs/s of the neural families on synthetic text")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes and a few pairs (a CPU check of the script)")
    ap.add_argument("--pairs", type=int, default=4096)
    ap.add_argument("--batch-sizes", default="64,128,256", help="cross-encoder batch sizes")
    ap.add_argument("--llm-batch-sizes", default="16,32,64", help="yes/no reranker batch sizes")
    ap.add_argument("--passage-words", type=int, default=60, help="mean passage length (MS MARCO ~ 56 words)")
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()

    import torch
    from transformers import BertConfig, BertForSequenceClassification, Qwen2Config, Qwen2ForCausalLM

    from rankify_cli import registry
    from rankify_cli.types import Candidate, Query, StageContext

    rng = random.Random(0)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print("command:", " ".join([sys.executable, *sys.argv]))
    print("device:", torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "| torch", torch.__version__)
    if args.smoke:
        args.pairs, args.batch_sizes, args.llm_batch_sizes = 16, "8", "4"

    n_queries = max(1, args.pairs // 100)
    per_query = max(1, args.pairs // n_queries)
    queries = synthetic(n_queries, 8, rng)
    items = [(Query(str(i), q), [Candidate(f"{i}-{j}", 0.0, p)
                                 for j, p in enumerate(synthetic(per_query, args.passage_words, rng))])
             for i, q in enumerate(queries)]
    pairs = sum(len(c) for _, c in items)

    with tempfile.TemporaryDirectory() as tmp:
        bert_tok, qwen_tok = build_tokenizers(tmp, rng, 151936)
        if args.smoke:
            bcfg = BertConfig(vocab_size=bert_tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=64, num_labels=1)
            qcfg = Qwen2Config(vocab_size=len(qwen_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
        else:
            bcfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                              intermediate_size=1536, max_position_embeddings=512, num_labels=1)
            qcfg = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                               num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                               tie_word_embeddings=True, rope_theta=1000000.0)
        qcfg.pad_token_id = qwen_tok.pad_token_id
        ce_dir, lm_dir = os.path.join(tmp, "ce"), os.path.join(tmp, "lm")
        BertForSequenceClassification(bcfg).save_pretrained(ce_dir)
        bert_tok.save_pretrained(ce_dir)
        Qwen2ForCausalLM(qcfg).save_pretrained(lm_dir)
        qwen_tok.save_pretrained(lm_dir)
        print(f"{pairs} synthetic pairs ({n_queries} queries x {per_query}), passages ~{args.passage_words} words")
        runs = [("cross-encoder MiniLM-L6 shape", f"cross-encoder:{ce_dir}", args.batch_sizes),
                ("qwen3-yesno Qwen2.5-0.5B shape", f"logit-pair:{lm_dir}?template=qwen3-yesno", args.llm_batch_sizes)]
        report = []
        for name, spec, sizes in runs:
            for bs in [int(x) for x in sizes.split(",")]:
                sep = "&" if "?" in spec else "?"
                rr = registry.build("reranker", f"{spec}{sep}batch_size={bs}&dtype={args.dtype}")
                rr.rerank_all([(items[0][0], items[0][1][: min(bs, 8)])], StageContext())  # load + warm up
                if device == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                # two passes: the first meets every padded shape for the first time (kernel
                # selection per shape), the second is the steady state the bare forward sees
                times = []
                for _ in range(2):
                    ctx = StageContext(stats=Counter())
                    t = time.perf_counter()
                    rr.rerank_all(items, ctx)
                    if device == "cuda":
                        torch.cuda.synchronize()
                    times.append(time.perf_counter() - t)
                first_dt, dt = times
                mem = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0
                row = {"model": name, "batch_size": bs, "dtype": rr.dtype, "pairs": pairs, "seconds": round(dt, 3),
                       "first_pass_pairs_per_s": round(pairs / first_dt, 1),
                       "pairs_per_s": round(pairs / dt, 1), "peak_gpu_gib": round(mem, 2),
                       # cross-encoders count cut pairs, logit-pair templates cut documents
                       "truncated": ctx.stats.get("truncated_pairs", 0) + ctx.stats.get("truncated_documents", 0)}
                # the floor: the same model's bare forward on the same token ids, pre-padded
                # batches in the same (length-sorted) order, tokenization excluded
                bare_dt = bare_forward(rr, items, torch, device)
                row["bare_forward_pairs_per_s"] = round(pairs / bare_dt, 1)
                report.append(row)
                print(f"{name:32s} batch {bs:4d} {rr.dtype:9s} {pairs / dt:9.1f} pairs/s  ({dt:.2f} s; first pass "
                      f"{pairs / first_dt:.1f} pairs/s, "
                      f"peak GPU {mem:.2f} GiB)  bare forward {pairs / bare_dt:9.1f} pairs/s "
                      f"(toolkit/bare time {dt / bare_dt:.2f}x)")
        print(json.dumps(report))


if __name__ == "__main__":
    main()
