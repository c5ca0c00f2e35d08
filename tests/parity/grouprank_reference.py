"""Reference side of tests/test_parity_groupwise.py: runs AQ-MedAI/Diver's
`Reranker/rerank_groupwise.py` (commit 95b111b0adad85bf388e628b9073552055f6f408) as its
__main__, with the paper script's settings, and writes what the test pins
(tests/parity/grouprank_golden.json). Run outside the project's code, with a checkout of that
commit:

    python tests/parity/grouprank_reference.py DIVER_CHECKOUT tests/parity/grouprank_golden.json

vLLM is replaced by an engine whose generate() answers each rendered prompt with the test's
answer() (on the prompt's user turn) and records its token ids; the five DL19 queries are
written as a BRIGHT task's parquet files (examples: id, query, gold_ids, excluded_ids;
documents: id, content; gold ids from the qrels, for its metrics step) and the staged BM25 scores as the retriever score file, each query's
documents in the toolkit's order (score descending, ties by doc id descending), which the
reference's stable sort keeps. The reference reads its data from ../data/BRIGHT relative to
the working directory, so it runs from a copy of the checkout.
"""

import hashlib
import json
import os
import runpy
import shutil
import sys
import tempfile
import types
from pathlib import Path

checkout, out_file = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
root = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(root))
sys.path.insert(0, str(root / "tests"))

import pandas as pd  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from llm_server import Oracle, load_trec_dl  # noqa: E402
from tests.test_parity_groupwise import QUERIES, answer, build_tokenizer  # noqa: E402
from tests.test_parity_setwise import DL19, dl19  # noqa: E402

tmp = Path(tempfile.mkdtemp())
tok = AutoTokenizer.from_pretrained(build_tokenizer(tmp / "tok"))
oracle = Oracle(*load_trec_dl("dl19"))
prompts: dict[str, list[str]] = {}
zero_groups = 0


class Out:
    def __init__(self, text):
        self.outputs = [types.SimpleNamespace(text=text)]


class LLM:  # vllm.LLM as rerank_groupwise.py uses it
    def __init__(self, model=None, **kw):
        pass

    def get_tokenizer(self):
        return tok

    def generate(self, messages, params=None, use_tqdm=False):
        global zero_groups
        outs = []
        for prompt in messages:
            ids = tok(prompt).input_ids  # vLLM tokenizes a text prompt with special tokens
            user = prompt.split("<|im_start|>user\n", 1)[1].rsplit("<|im_end|>", 1)[0]
            qid = next(q for q in QUERIES if dl19()[q][0] in user)
            prompts.setdefault(qid, []).append(hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16])
            text = answer(user, oracle)
            kind = int(hashlib.sha256(user.encode()).hexdigest()[:8], 16) % 9
            zero_groups += kind in (0, 1, 4)
            outs.append(Out(text))
        return outs


sys.modules["vllm"] = types.SimpleNamespace(LLM=LLM, SamplingParams=lambda **kw: kw)

work = tmp / "diver"
shutil.copytree(checkout / "Reranker", work / "Reranker")
shutil.copytree(checkout / "utils", work / "utils")
bright = work / "data" / "BRIGHT"
(bright / "examples").mkdir(parents=True)
(bright / "documents").mkdir(parents=True)
items = dl19()
runs: dict[str, list[tuple[str, float]]] = {}
for line in (DL19 / "bm25_top100.run").read_text().splitlines():
    q, _, d, _, s, _ = line.split()
    runs.setdefault(q, []).append((d, float(s)))
scores = {q: dict(sorted(runs[q], key=lambda x: (x[1], x[0]), reverse=True)) for q in QUERIES}
texts = {d: t for q in QUERIES for d, t in items[q][1]}
qrels = {}
for line in (DL19 / "qrels.txt").read_text().splitlines():
    q, _, d, g = line.split()
    if int(g) > 0 and d in {x for x, _ in items.get(q, ("", []))[1]}:
        qrels.setdefault(q, []).append(d)
pd.DataFrame([{"id": q, "query": items[q][0], "gold_ids": qrels.get(q, []), "excluded_ids": []}
              for q in QUERIES]).to_parquet(
    bright / "examples" / "biology-00000-of-00001.parquet")
pd.DataFrame([{"id": d, "content": t} for d, t in texts.items()]).to_parquet(
    bright / "documents" / "biology-00000-of-00001.parquet")
(tmp / "scores.json").write_text(json.dumps(scores))
os.chdir(work / "Reranker")
sys.argv = ["rerank_groupwise.py", "--task", "biology", "--retriever_score_file", str(tmp / "scores.json"),
            "--output_dir", str(tmp / "out"), "--group_size", "20", "--interval", "20", "--repeat_num", "6",
            "--input_k", "100", "--k", "100"]
runpy.run_path(str(work / "Reranker" / "rerank_groupwise.py"), run_name="__main__")
fused = json.loads((tmp / "out" / "None_reranked_score.json").read_text())
golden = {"source": "AQ-MedAI/Diver Reranker/rerank_groupwise.py at 95b111b0adad85bf388e628b9073552055f6f408, "
                    "run by tests/parity/grouprank_reference.py", "zero_groups": zero_groups,
          "queries": {q: {"prompts": prompts[q], "scores": fused[q]} for q in QUERIES}}
out_file.write_text(json.dumps(golden, indent=0) + "\n")
print({q: (len(prompts[q]), len(fused[q])) for q in QUERIES}, "zero groups", zero_groups)
