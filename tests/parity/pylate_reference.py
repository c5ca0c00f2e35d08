"""Reference side of tests/test_late_interaction.py, run with the Python of an environment that
has pylate 1.6.0 (its pins, sentence-transformers 5.3 / transformers <= 5.3, do not fit the
toolkit's own environment; .ci/run builds one). It builds a tiny pylate ColBERT from a tiny
BERT folder, saves it, and writes the token counts and MaxSim scores pylate computes.

usage: python pylate_reference.py BERT_DIR OUT_DIR PAIRS.json RESULT.json
"""

import json
import sys

import torch
from pylate import models, rank
from pylate.scores import colbert_scores

bert, out, pairs_file, result_file = sys.argv[1:5]
torch.manual_seed(0)
models.ColBERT(bert, embedding_size=16, device="cpu").save(out)
model = models.ColBERT(out, device="cpu")
data = json.load(open(pairs_file))
result = {"settings": {k: getattr(model, k) for k in ("query_prefix", "document_prefix", "query_length",
                                                      "document_length", "do_query_expansion",
                                                      "attend_to_expansion_tokens")}, "queries": []}
for item in data:
    q = model.encode([item["query"]], is_query=True, batch_size=1)[0]
    docs = model.encode(item["documents"], is_query=False, batch_size=8)
    masked = []
    for d in docs:  # one document per call: no padding, so no mask is needed
        masked.append(float(colbert_scores(torch.tensor(q)[None], torch.tensor(d)[None])[0, 0]))
    reranked = rank.rerank(documents_ids=[list(range(len(docs)))], queries_embeddings=[q], documents_embeddings=[docs])
    result["queries"].append({"query_tokens": int(q.shape[0]), "document_tokens": [int(d.shape[0]) for d in docs],
                              "scores": masked, "rank_rerank": {str(r["id"]): r["score"] for r in reranked[0]}})
json.dump(result, open(result_file, "w"))
