"""Reference side of tests/test_parity_setwise.py: runs ielab/llm-rankers' own Rank-R1 ranker
(`llmrankers/setwise.py` RankR1SetwiseLlmRanker, commit b36517bf17a3956dc56c4c967f972d02390b1cdd;
not in the PyPI release) on the test's tiny model and DL19 candidates, and writes what the
test pins (tests/parity/rankr1_golden.json). Run outside the project's code, with a checkout
of that commit:

    python tests/parity/rankr1_reference.py LLM_RANKERS_CHECKOUT tests/parity/rankr1_golden.json

The ranker is built without its vLLM engine (none on CPU): `llm.chat` is answered here the way
vLLM's LLM.chat answers it (chat template with the generation prompt, the string tokenized
without special tokens), by the merged base + adapter (the README's PeftModel recipe, greedy)
in part "model", by the loopback server's qrels oracle (tests/llm_server.py) in part "oracle".
Queries are cut to 32 tokens and passages to 512 with the ranker's own truncate, as the
paper's DL commands (`--query_length 32 --passage_length 512`) do in run_setwise.py (part
"model" cuts passages to MODEL_DOC_TOKENS, as the test asks the toolkit to), and
`random.seed(929)` is set once before the queries, which run one after another in id order.
"""

import hashlib
import json
import sys
import tempfile
import tomllib
from pathlib import Path

checkout, out_file = Path(sys.argv[1]), Path(sys.argv[2])
sys.path.insert(0, str(checkout))
root = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(root))
sys.path.insert(0, str(root / "tests"))

import random  # noqa: E402

import torch  # noqa: E402
from llmrankers.rankers import SearchResult  # noqa: E402
from llmrankers.setwise import RankR1SetwiseLlmRanker  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from llm_server import Oracle, State, load_trec_dl  # noqa: E402
from tests.test_parity_setwise import MAX_NEW_TOKENS, MODEL_DOC_TOKENS, MODEL_QUERIES, ORACLE_QUERIES, build_tiny_rankr1, dl19  # noqa: E402


def sha(ids) -> str:
    return hashlib.sha256(json.dumps(list(ids)).encode()).hexdigest()[:16]


class Chat:
    """vLLM's LLM.chat, answered by a model or by the oracle; records each prompt's token ids."""

    def __init__(self, tok, answer):
        self.tok, self.answer, self.prompts = tok, answer, []

    def chat(self, conversations, sampling_params=None, use_tqdm=False, lora_request=None):
        outs = []
        for messages in conversations:
            text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = self.tok(text, add_special_tokens=False).input_ids
            self.prompts.append(sha(ids))
            completion = self.answer(messages, ids)
            outs.append(type("Out", (), {"prompt_token_ids": ids, "outputs": [
                type("C", (), {"text": completion, "token_ids": self.tok(completion).input_ids})()]})())
        return outs


def ranker(tok, chat):
    r = RankR1SetwiseLlmRanker.__new__(RankR1SetwiseLlmRanker)  # its __init__ starts a vLLM engine
    r.prompt = tomllib.loads((checkout / "Rank-R1" / "prompts" / "prompt_setwise-R1.toml").read_text())
    r.lora_path, r.num_child, r.num_permutation, r.k = None, 19, 1, 10
    r.sampling_params, r.tokenizer, r.llm, r.verbose = None, tok, chat, False
    r.scoring, r.method, r.total_compare, r.total_completion_tokens, r.total_prompt_tokens = "generation", "heapsort", 0, 0, 0
    return r


def run(r, chat, qids, items, passage_length=512):
    random.seed(929)  # run_setwise.py, after its imports
    result = {}
    for qid in qids:
        query, docs = items[qid]
        query = r.truncate(query, 32)
        ranking = [SearchResult(docid=d, score=-i, text=r.truncate(t, passage_length)) for i, (d, t) in enumerate(docs)]
        before = len(chat.prompts)
        order = [x.docid for x in r.rerank(query, ranking)]
        result[qid] = {"prompts": chat.prompts[before:], "order": order}
    return result


with tempfile.TemporaryDirectory() as tmp:
    base, adapter = build_tiny_rankr1(Path(tmp))
    tok = AutoTokenizer.from_pretrained(base)
    items = dl19()
    from peft import PeftModel

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).merge_and_unload().eval()

    def generate(messages, ids):
        with torch.inference_mode():
            out = model.generate(torch.tensor([ids]), max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        return tok.decode(out[0, len(ids):], skip_special_tokens=True)

    chat = Chat(tok, generate)
    golden = {"model": run(ranker(tok, chat), chat, MODEL_QUERIES, items, MODEL_DOC_TOKENS)}
    state = State(Oracle(*load_trec_dl("dl19")))
    chat = Chat(tok, lambda messages, ids: state.chat_answer(messages, "0" * 64))
    golden["oracle"] = run(ranker(tok, chat), chat, ORACLE_QUERIES, items)
golden["source"] = ("ielab/llm-rankers llmrankers/setwise.py RankR1SetwiseLlmRanker at "
                    "b36517bf17a3956dc56c4c967f972d02390b1cdd, run by tests/parity/rankr1_reference.py")
out_file.write_text(json.dumps(golden, indent=0) + "\n")
print({k: sum(len(v["prompts"]) for v in golden[k].values()) for k in ("model", "oracle")})
