"""Short names for public checkpoints: preset -> (family, model id, options).

A plain dict (no torch, no transformers) so the registry can import it for free. Options are
the family's constructor options; a user's spec options override them
(`--reranker 'qwen3-reranker-4b?batch_size=4'`), and a spec argument replaces the model id
(`--reranker minilm-l6:/models/minilm` loads a local copy with the preset's options).
"""

from __future__ import annotations

PRESETS: dict[str, tuple[str, str, dict]] = {
    # cross-encoders (one relevance logit; pairs truncated longest_first to 512 as CrossEncoder does)
    "tinybert-l2": ("cross-encoder", "cross-encoder/ms-marco-TinyBERT-L-2-v2", {}),
    "minilm-l6": ("cross-encoder", "cross-encoder/ms-marco-MiniLM-L-6-v2", {}),
    "minilm-l12": ("cross-encoder", "cross-encoder/ms-marco-MiniLM-L-12-v2", {}),
    "bge-reranker-base": ("cross-encoder", "BAAI/bge-reranker-base", {}),
    "bge-reranker-large": ("cross-encoder", "BAAI/bge-reranker-large", {}),
    "bge-reranker-v2-m3": ("cross-encoder", "BAAI/bge-reranker-v2-m3", {}),
    # seq2seq true/false (the whole input cut to 512 from its end, as pygaggle did)
    "monot5-base": ("logit-pair", "castorini/monot5-base-msmarco", {"template": "monot5"}),
    "monot5-large": ("logit-pair", "castorini/monot5-large-msmarco", {"template": "monot5"}),
    "monot5-3b": ("logit-pair", "castorini/monot5-3b-msmarco-10k", {"template": "monot5"}),
    # seq2seq pairwise (run after monoT5: --reranker monot5-base --reranker duot5-base)
    "duot5-base": ("duot5", "castorini/duot5-base-msmarco", {}),
    # PRP on FLAN-T5 as llm-rankers runs it (its t5 path; the PRP paper's FLAN-T5 sizes)
    "prp-flan-t5-large": ("pairwise", "google/flan-t5-large", {"template": "pairwise-prp-t5", "method": "allpair"}),
    "prp-flan-t5-xl": ("pairwise", "google/flan-t5-xl", {"template": "pairwise-prp-t5", "method": "heapsort"}),
    # causal yes/no (Qwen3-Reranker README format; the -eval presets use Qwen's evaluation-code format)
    "qwen3-reranker-0.6b": ("logit-pair", "Qwen/Qwen3-Reranker-0.6B", {"template": "qwen3-yesno"}),
    "qwen3-reranker-4b": ("logit-pair", "Qwen/Qwen3-Reranker-4B", {"template": "qwen3-yesno", "batch_size": 8}),
    "qwen3-reranker-8b": ("logit-pair", "Qwen/Qwen3-Reranker-8B", {"template": "qwen3-yesno", "batch_size": 4}),
    "qwen3-reranker-0.6b-eval": ("logit-pair", "Qwen/Qwen3-Reranker-0.6B", {"template": "qwen3-yesno-eval"}),
    "qwen3-reranker-4b-eval": ("logit-pair", "Qwen/Qwen3-Reranker-4B", {"template": "qwen3-yesno-eval", "batch_size": 8}),
    "qwen3-reranker-8b-eval": ("logit-pair", "Qwen/Qwen3-Reranker-8B", {"template": "qwen3-yesno-eval", "batch_size": 4}),
    # MemReranker-4B's model card lists only the 4B on the hub (the 0.6B is served by its hosted API)
    "memreranker-0.6b": ("logit-pair", "IAAR-Shanghai/MemReranker-0.6B", {"template": "qwen3-yesno"}),
    "memreranker-4b": ("logit-pair", "IAAR-Shanghai/MemReranker-4B", {"template": "qwen3-yesno", "batch_size": 8}),
    # logit gap 1/0 (mixedbread's own budget rule)
    "mxbai-rerank-base-v2": ("logit-pair", "mixedbread-ai/mxbai-rerank-base-v2", {"template": "mxbai-v2"}),
    "mxbai-rerank-large-v2": ("logit-pair", "mixedbread-ai/mxbai-rerank-large-v2", {"template": "mxbai-v2", "batch_size": 8}),
    # generative 0-10 score
    "erank-4b": ("generative", "Alibaba-NLP/ERank-4B", {"template": "erank"}),
    "erank-14b": ("generative", "Alibaba-NLP/ERank-14B", {"template": "erank"}),
    "erank-32b": ("generative", "Alibaba-NLP/ERank-32B", {"template": "erank"}),
    # listwise pseudo-query embedding
    "e2rank-0.6b": ("e2rank", "Alibaba-NLP/E2Rank-0.6B", {}),
    "e2rank-4b": ("e2rank", "Alibaba-NLP/E2Rank-4B", {}),
    "e2rank-8b": ("e2rank", "Alibaba-NLP/E2Rank-8B", {}),
    # evidence (Prism-Reranker: sigmoid(l_yes - l_no); explain=true keeps <contribution>/<evidence>)
    "prism-qwen3.5-0.8b": ("prism", "infgrad/Prism-Qwen3.5-Reranker-0.8B", {}),
    "prism-qwen3.5-2b": ("prism", "infgrad/Prism-Qwen3.5-Reranker-2B", {}),
    "prism-qwen3.5-4b": ("prism", "infgrad/Prism-Qwen3.5-Reranker-4B", {"batch_size": 8}),
    "prism-qwen3.5-9b": ("prism", "infgrad/Prism-Qwen3.5-Reranker-9B", {"batch_size": 4}),
    "prism-qwen3-4b-exp": ("prism", "infgrad/Prism-Qwen3-Reranker-4B-exp", {"batch_size": 8}),
    # late interaction (ColBERT MaxSim; markers, lengths and skiplist come from the checkpoint)
    "colbertv2": ("late-interaction", "colbert-ir/colbertv2.0", {}),
    "answerai-colbert-small-v1": ("late-interaction", "answerdotai/answerai-colbert-small-v1", {}),
    "jina-colbert-v2": ("late-interaction", "jinaai/jina-colbert-v2", {"trust_remote_code": True}),
    # FIRST: listwise ranked by the first answer token's label logits (rank_llm's checkpoint)
    "first-mistral": ("first", "castorini/first_mistral", {}),
    # hosted rerank APIs (shapes, limits and key variables: rerankers/rerank_providers.py)
    "cohere-rerank-v3.5": ("rerank-api", "rerank-v3.5", {"provider": "cohere"}),
    "cohere-rerank-v4.0-pro": ("rerank-api", "rerank-v4.0-pro", {"provider": "cohere"}),
    "jina-reranker-v2": ("rerank-api", "jina-reranker-v2-base-multilingual", {"provider": "jina"}),
    "jina-reranker-m0": ("rerank-api", "jina-reranker-m0", {"provider": "jina"}),
    "voyage-rerank-2.5": ("rerank-api", "rerank-2.5", {"provider": "voyage"}),
    "voyage-rerank-2.5-lite": ("rerank-api", "rerank-2.5-lite", {"provider": "voyage"}),
    "mixedbread-rerank-large-v2": ("rerank-api", "mixedbread-ai/mxbai-rerank-large-v2", {"provider": "mixedbread"}),
    # setwise (Rank-R1: LoRA adapters on Qwen2.5-Instruct, merged into the base by backend=hf)
    "rank-r1-3b": ("setwise", "Qwen/Qwen2.5-3B-Instruct", {"adapter": "ielabgroup/Rank-R1-3B-v0.1"}),
    "rank-r1-7b": ("setwise", "Qwen/Qwen2.5-7B-Instruct", {"adapter": "ielabgroup/Rank-R1-7B-v0.1"}),
    "rank-r1-14b": ("setwise", "Qwen/Qwen2.5-14B-Instruct", {"adapter": "ielabgroup/Rank-R1-14B-v0.1"}),
    # ProRank (arXiv 2506.03487) is the training recipe of mixedbread's v2 rerankers: its released
    # checkpoints are mxbai-rerank-base-v2 (0.5B) and -large-v2 (1.5B), scored by mixedbread's rule
    "prorank-0.5b": ("logit-pair", "mixedbread-ai/mxbai-rerank-base-v2", {"template": "mxbai-v2"}),
    "prorank-1.5b": ("logit-pair", "mixedbread-ai/mxbai-rerank-large-v2", {"template": "mxbai-v2", "batch_size": 8}),
    # RankGPT: rank_llm's RankGPT prompt over OpenAI's API (any chat model: rankgpt-gpt-4:MODEL,
    # or base_url= for another server); key from OPENAI_API_KEY
    "rankgpt-gpt-4": ("listwise", "gpt-4", {"template": "listwise-rankgpt", "backend": "openai",
                                            "base_url": "https://api.openai.com/v1"}),
    "rankgpt-gpt-3.5-turbo": ("listwise", "gpt-3.5-turbo", {"template": "listwise-rankgpt", "backend": "openai",
                                                            "base_url": "https://api.openai.com/v1"}),
    # LLM listwise / groupwise (hf backend by default; --backend openai for a served model)
    "rankzephyr": ("listwise", "castorini/rank_zephyr_7b_v1_full", {"template": "listwise-rankzephyr"}),
    "diver-grouprank-7b": ("groupwise", "AQ-MedAI/Diver-GroupRank-7B", {"template": "groupwise-grouprank"}),
    "diver-grouprank-32b": ("groupwise", "AQ-MedAI/Diver-GroupRank-32B", {"template": "groupwise-grouprank"}),
}

_QWEN3_TARGET = ("MTEB-R {} (nDCG@10 on the retrieval subsets of MTEB(eng, v2), MTEB(cmn, v1), MMTEB, "
                 "MTEB(Code); FollowIR p-MRR), reranking Qwen3-Embedding-0.6B's top-100 with Qwen's evaluation code "
                 "(QwenLM/Qwen3-Embedding README)")

# The published number each preset should reach, with the reference settings behind it
# (BM25 top-100 unless said otherwise). Shown by the README's preset table and benchmarks/*.toml.
PUBLISHED: dict[str, str] = {
    "tinybert-l2": "DL19 nDCG@10 69.84 (SBERT docs)",
    "minilm-l6": "DL19 nDCG@10 74.30 (SBERT docs)",
    "minilm-l12": "DL19 nDCG@10 74.31 (SBERT docs)",
    "bge-reranker-base": "C-MTEB reranking avg 65.42 (MAP over T2Reranking, T2RerankingZh2En/En2Zh, MMarcoReranking, "
                         "CMedQAv1/v2; FlagEmbedding research/C_MTEB/README.md); no English BEIR number found",
    "bge-reranker-large": "C-MTEB reranking avg 66.09 (MAP, same 6 tasks; FlagEmbedding research/C_MTEB/README.md); "
                          "no English BEIR number found",
    "bge-reranker-v2-m3": "BEIR avg nDCG@10 55.36 reranking bge-large-en-v1.5's top-100 at 1024 tokens (SciFact 73.08, "
                          "ArguAna 37.7, TREC-COVID 83.39, NFCorpus 34.85, FiQA 44.51, SciDocs 18.25; FlagEmbedding "
                          "research/llm_reranker/evaluation/BEIR-bge-en-v1.5.png)",
    "monot5-base": "MS MARCO passage dev MRR@10 0.3799 reranking BM25's top-1000 (pygaggle "
                   "docs/experiments-msmarco-passage-entire.md, this checkpoint); no DL19/DL20 number re-read",
    "monot5-large": "MS MARCO passage dev MRR@10 0.3937 reranking BM25's top-1000, 512 tokens "
                    "(pygaggle docs/experiments-monot5-gpu.md, its mesh-TF checkpoint); no DL19/DL20 number re-read",
    "monot5-3b": "DL19 0.7173, DL20 0.6887 (BM25 top-100, 512 tokens)",
    "qwen3-reranker-0.6b": _QWEN3_TARGET.format("65.80, CMTEB-R 71.31, MMTEB-R 66.36, MLDR 67.28, MTEB-Code 73.42, "
                                                "FollowIR 5.41"),
    "qwen3-reranker-4b": _QWEN3_TARGET.format("69.76, CMTEB-R 75.94, MMTEB-R 72.74, MLDR 69.97, MTEB-Code 81.20, "
                                              "FollowIR 14.84"),
    "qwen3-reranker-8b": _QWEN3_TARGET.format("69.02, CMTEB-R 77.45, MMTEB-R 72.94, MLDR 70.19, MTEB-Code 81.22, "
                                              "FollowIR 8.05"),
    "memreranker-4b": "MAP 0.737 on the authors' agent-memory retrieval benchmark (arXiv 2605.06132 abstract)",
    "mxbai-rerank-base-v2": "BEIR avg 55.57 (model card)",
    "mxbai-rerank-large-v2": "BEIR avg 57.49 (model card)",
    "erank-4b": "BRIGHT 22.7, BEIR 44.8, TREC DL 68.9 (DL19 71.1, DL20 66.7), FollowIR p-MRR 11.0 (BM25 top-100 "
                "with Pyserini, original queries, no hybrid; arXiv 2509.00520 Tables 3, 11)",
    "erank-14b": "BRIGHT 23.1, BEIR 47.1, TREC DL 67.1 (DL19 68.9, DL20 65.4), FollowIR p-MRR 10.3 (BM25 top-100 "
                 "with Pyserini, original queries, no hybrid; arXiv 2509.00520 Tables 3, 11)",
    "erank-32b": "BRIGHT 24.4, BEIR 47.7, TREC DL 68.1 (DL19 70.8, DL20 65.5), FollowIR p-MRR 12.1 (BM25 top-100 "
                 "with Pyserini, original queries, no hybrid; arXiv 2509.00520 Tables 3, 11)",
    "e2rank-0.6b": "DL19 70.84, DL20 70.15, BEIR-8 52.09 (BM25 top-100, K=20)",
    "e2rank-4b": "DL19 70.44, DL20 70.64, BEIR-8 54.14 (BM25 top-100, K=20)",
    "e2rank-8b": "DL19 72.95, DL20 71.16, BEIR-8 54.35 (BM25 top-100, K=20)",
    "rankzephyr": "DL19 0.7365, DL20 0.7080 (BM25 top-100, window 20 stride 10, 300 words)",
    "rank-r1-7b": "BRIGHT avg nDCG@10 21.39 reranking Diver-Retriever-4B's top-100 (Diver-GroupRank-7B model card)",
    "rank-r1-14b": "BRIGHT avg nDCG@10 30.83 reranking Diver-Retriever-4B's top-100 (Diver-GroupRank-7B model card)",
    "diver-grouprank-7b": "BRIGHT avg nDCG@10 36.65 (mean of the model card's 12 tasks) reranking Diver-Retriever-4B's "
                          "top-100 (32.93), groups of 20, 6 repeats",
    "diver-grouprank-32b": "52.3 nDCG@10 (model card: '7B / 32B 46.8 / 52.3' on BRIGHT and R2MED, setting not named)",
    "prorank-0.5b": "BEIR avg 55.57 (mxbai-rerank-base-v2 model card)",
    "prorank-1.5b": "BEIR avg 57.49 (mxbai-rerank-large-v2 model card)",
    "rankgpt-gpt-4": "DL19 75.59, DL20 70.56 (RankGPT paper Table 1, BM25 top-100, window 20 step 10; per-dataset "
                     "values quoted, not re-read: the RankGPT README's chart gives their TREC mean, 73.1)",
    "rankgpt-gpt-3.5-turbo": "DL19 65.80, DL20 62.91 (RankGPT paper Table 1, BM25 top-100; per-dataset values quoted, "
                             "not re-read: the RankGPT README's chart gives their TREC mean, 64.4)",
}
# Qwen's numbers come from its evaluation code, whose format the -eval presets use; the README-format
# presets share them as the nearest published reference.
for _size in ("0.6b", "4b", "8b"):
    PUBLISHED[f"qwen3-reranker-{_size}-eval"] = PUBLISHED[f"qwen3-reranker-{_size}"]
    PUBLISHED[f"qwen3-reranker-{_size}"] += "; measured in the evaluation-code format (the -eval preset)"

FAMILIES: dict[str, str] = {
    "cross-encoder": "rankify_cli.rerankers.cross_encoder:CrossEncoder",
    "logit-pair": "rankify_cli.rerankers.logit_pair:LogitPair",
    "generative": "rankify_cli.rerankers.generative:Generative",
    "embedding": "rankify_cli.rerankers.embedding:Embedding",
    "e2rank": "rankify_cli.rerankers.embedding:E2Rank",
    "late-interaction": "rankify_cli.rerankers.late_interaction:LateInteraction",
    "duot5": "rankify_cli.rerankers.duot5:DuoT5",
}
