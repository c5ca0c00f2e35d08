"""Short names for public checkpoints: preset -> (family, model id, options).

A plain dict (no torch, no transformers) so the registry can import it for free. Options are
the family's constructor options; a user's spec options override them
(`--reranker 'qwen3-reranker-4b?batch_size=4'`), and a spec argument replaces the model id
(`--reranker minilm-l6:/models/minilm` loads a local copy with the preset's options).
"""

from __future__ import annotations

PRESETS: dict[str, tuple[str, str, dict]] = {
    # cross-encoders (one relevance logit)
    "minilm-l6": ("cross-encoder", "cross-encoder/ms-marco-MiniLM-L-6-v2", {}),
    "minilm-l12": ("cross-encoder", "cross-encoder/ms-marco-MiniLM-L-12-v2", {}),
    "bge-reranker-v2-m3": ("cross-encoder", "BAAI/bge-reranker-v2-m3", {}),
    # seq2seq true/false
    "monot5-base": ("logit-pair", "castorini/monot5-base-msmarco", {"template": "monot5"}),
    "monot5-3b": ("logit-pair", "castorini/monot5-3b-msmarco-10k", {"template": "monot5"}),
    # seq2seq pairwise (run after monoT5: --reranker monot5-base --reranker duot5-base)
    "duot5-base": ("duot5", "castorini/duot5-base-msmarco", {}),
    # causal yes/no and 1/0
    "qwen3-reranker-0.6b": ("logit-pair", "Qwen/Qwen3-Reranker-0.6B", {"template": "qwen3-yesno"}),
    "qwen3-reranker-4b": ("logit-pair", "Qwen/Qwen3-Reranker-4B", {"template": "qwen3-yesno", "batch_size": 8}),
    "qwen3-reranker-8b": ("logit-pair", "Qwen/Qwen3-Reranker-8B", {"template": "qwen3-yesno", "batch_size": 4}),
    "mxbai-rerank-base-v2": ("logit-pair", "mixedbread-ai/mxbai-rerank-base-v2", {"template": "mxbai-v2"}),
    "mxbai-rerank-large-v2": ("logit-pair", "mixedbread-ai/mxbai-rerank-large-v2", {"template": "mxbai-v2", "batch_size": 8}),
    # generative 0-10 score
    "erank-4b": ("generative", "Alibaba-NLP/ERank-4B", {"template": "erank"}),
    # listwise pseudo-query embedding
    "e2rank-0.6b": ("e2rank", "Alibaba-NLP/E2Rank-0.6B", {}),
    "e2rank-4b": ("e2rank", "Alibaba-NLP/E2Rank-4B", {}),
    "e2rank-8b": ("e2rank", "Alibaba-NLP/E2Rank-8B", {}),
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
}

FAMILIES: dict[str, str] = {
    "cross-encoder": "rankify_cli.rerankers.cross_encoder:CrossEncoder",
    "logit-pair": "rankify_cli.rerankers.logit_pair:LogitPair",
    "generative": "rankify_cli.rerankers.generative:Generative",
    "embedding": "rankify_cli.rerankers.embedding:Embedding",
    "e2rank": "rankify_cli.rerankers.embedding:E2Rank",
    "late-interaction": "rankify_cli.rerankers.late_interaction:LateInteraction",
    "duot5": "rankify_cli.rerankers.duot5:DuoT5",
}
