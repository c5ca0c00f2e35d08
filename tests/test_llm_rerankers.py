"""LLM rerankers (listwise, setwise, groupwise, /rerank) against a real HTTP server on
127.0.0.1 (tests/llm_server.py), through the real CLI in a subprocess.

oracle: answers from the qrels, so every paradigm must reach the ideal nDCG@10 of DL19's BM25
top-100 (computed here from the qrels: 0.8922, DESIGN.md). garbage: every answer unusable, so
the run must equal BM25 (0.5058) with every call counted as a fallback. faults: 20% of the
requests fail (500, 429, stalls past the timeout, dropped connections): the run file must
equal the oracle's. resume: kill -9 mid-run, run again: same run file, no finished call
repeated (counted at the server).
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llm_server import GARBAGE, LLMServer, Oracle, load_trec_dl  # noqa: E402

from rankify_cli import registry  # noqa: E402
from rankify_cli.errors import ConfigError  # noqa: E402
from rankify_cli.rerankers.groupwise import minmax, parse_group_scores  # noqa: E402
from rankify_cli.rerankers.backends import ChatResponse  # noqa: E402
from rankify_cli.rerankers.listwise import Listwise, parse_permutation, replace_bracket_numbers, sliding_windows  # noqa: E402
from rankify_cli.rerankers.setwise import parse_label  # noqa: E402
from rankify_cli.types import Candidate, Query, StageContext, sort_candidates  # noqa: E402

BM25_DL19 = 0.5058
IDEAL_DL19 = 0.8922

SPECS = {
    "listwise": "listwise:oracle-model?backend=openai&base_url={url}",
    "setwise": "setwise:oracle-model?backend=openai&base_url={url}",
    "groupwise": "groupwise:oracle-model?backend=openai&base_url={url}&alpha=1",
}
CALLS = {"listwise": 43 * 9, "groupwise": 43 * 5 * 6}  # setwise depends on the answers


# ------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def dl19():
    from conftest import DATA

    qrels, cands = load_trec_dl("dl19", str(DATA))
    return qrels, cands, Oracle(qrels, cands)


@pytest.fixture(scope="module")
def ideal_ndcg(dl19):
    """nDCG@10 of the ideal reordering of DL19's BM25 top-100, from the qrels."""
    import ir_measures
    from ir_measures import nDCG

    qrels, cands, _ = dl19
    qr = [ir_measures.Qrel(q, d, g) for q in qrels for d, g in qrels[q].items()]
    run = [ir_measures.ScoredDoc(q, d, qrels[q].get(d, 0) * 1000.0 - i) for q, docs in cands.items() if q in qrels
           for i, (d, _) in enumerate(docs)]
    value = ir_measures.calc_aggregate([nDCG @ 10], qr, run)[nDCG @ 10]
    assert round(value, 4) == IDEAL_DL19
    return value


def run_cli(cli, tmp_path: Path, spec: str, cache: Path, *extra: str, env: dict | None = None):
    res = cli("run", "-d", "dl19", "-r", "run:bm25", "-o", str(tmp_path / "res"), "--json", "-q",
              "--reranker", spec, *extra, env={"RANKIFY_CACHE_DIR": str(cache), **(env or {})})
    assert res.code == 0, res
    doc = res.json()
    out = Path(doc["output_dir"])
    info = json.loads((out / "run_info.json").read_text())
    return doc, out, info["stages"][-1].get("stats", {})


def rows(run_file: Path) -> list[tuple[str, str, str, str]]:
    """(query, doc, rank, score) of every line; the run tag (the spec) is left out."""
    return [tuple(line.split()[:5:]) for line in run_file.read_text().splitlines()]  # type: ignore[misc]


def same_run(a: Path, b: Path) -> bool:
    ra, rb = [r[:1] + r[2:] for r in rows(a)], [r[:1] + r[2:] for r in rows(b)]
    return len(ra) == 4300 and ra == rb


def ranking(run_file: Path) -> dict[str, list[str]]:
    """Doc ids per query in file order (the file is written sorted by score, then doc id)."""
    out: dict[str, list[str]] = {}
    for line in run_file.read_text().splitlines():
        q, _, d, *_ = line.split()
        out.setdefault(q, []).append(d)
    return out


# ------------------------------------------------------------------------------ units
def test_parse_permutation_rules():
    assert parse_permutation("[2] > [1] > [3]", 3) == ([1, 0, 2], "ok")
    assert parse_permutation("<think>[3] > [1]</think> [2] > [2] > [9] > [0]", 3) == ([1, 0, 2], "repaired")
    assert parse_permutation("[３] > [①]", 3)[0] == [2, 0, 1]  # unusual digits normalised
    assert parse_permutation("no idea", 4) == ([0, 1, 2, 3], "failed")
    assert parse_permutation("[1] > [2]</think>", 2) == ([0, 1], "failed")  # nothing after the think tag
    assert parse_permutation("", 2) == ([0, 1], "failed")


def test_sliding_windows_match_rank_llm():
    w = sliding_windows(100, 20, 10)
    assert len(w) == 9 and w[0] == (80, 100) and w[-1] == (0, 20)
    assert sliding_windows(10, 20, 10) == [(0, 10)]
    assert sliding_windows(0, 20, 10) == []


def test_setwise_and_groupwise_parsers():
    pat = r"(?:<think>.*?</think>\s*)?<answer>(.*?)</answer>"
    labels = ["[1]", "[2]", "[3]"]
    assert parse_label("<think>x</think> <answer>[3]</answer>", labels, pat) == 2
    assert parse_label("<ANSWER>[2]</ANSWER>", labels, pat) == 1
    # an answer tag quoted inside the reasoning does not win over the one after it
    assert parse_label("<think>maybe <answer>[1]</answer>?</think> <answer>[3]</answer>", labels, pat) == 2
    assert parse_label("maybe <answer>[1]</answer>, no.</think> <answer>[2]</answer>", labels, pat) == 1
    assert parse_label("<think>x <answer>[1]</answer></think>", labels, pat) is None
    for bad in GARBAGE["setwise"]:
        assert parse_label(bad, labels, pat) is None, bad
    assert parse_group_scores('<reason>r</reason><answer>```json\n{"[1]": 5, "[2]]": 3\n```</answer>') == {"[1]": 5, "[2]": 3}
    assert parse_group_scores('x {"[1]": 1} y {"[1]": 9, "[2]": 0}') == {"[1]": 9, "[2]": 0}
    for bad in GARBAGE["groupwise"]:
        with pytest.raises(ValueError):
            parse_group_scores(bad)
    for bad in GARBAGE["listwise"]:
        assert parse_permutation(bad, 20)[1] == "failed", bad
    assert minmax([3.0, 1.0, 2.0]) == [1.0, 0.0, 0.5] and minmax([2.0, 2.0]) == [0.0, 0.0]


def test_prompts_follow_the_templates():
    lw = Listwise("m", template="listwise-rankgpt", backend="openai", base_url="http://127.0.0.1:9/v1")
    msgs = lw.messages("what is [1] x", [lw._content(p) for p in ["alpha [2] beta", "gamma"]])
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user", "assistant", "user"]
    assert msgs[3]["content"] == "[1] alpha (2) beta" and msgs[4]["content"] == "Received passage [1]."
    assert "query: what is (1) x." in msgs[1]["content"]
    zp = Listwise("m", backend="openai", base_url="http://127.0.0.1:9/v1")
    (system, user) = zp.messages("q", ["a", "b"])
    assert system["content"].startswith("You are RankLLM")
    assert "search query: q.\n[1] a\n[2] b\nSearch Query: q." in user["content"]
    assert replace_bracket_numbers("[12] and [x]") == "(12) and [x]"
    from ftfy import fix_text

    from rankify_cli.rerankers.listwise import _fix_text
    for text in ["plain ascii, 100% ~ok~", "a &amp; b", "line\r\nbreak", "bell\x07", "caf\u00c3\u00a9", "\u201cq\u201d"]:
        assert _fix_text(text) == fix_text(text), text  # the ASCII shortcut changes nothing
    # rank_llm repairs passages with ftfy before cutting them: mojibake and ligatures
    assert zp._content("Legal Pro\u00ef\u00ac\u0081le, up to \u00c2\u00bc-inch [3]") == "Legal Profile, up to \u00bc-inch (3)"


def _finish_plan(reranker, cands, answer):
    """Run a one-window plan with a given model answer; the reranked list."""
    class Counts:
        def count(self, *_a, **_k):
            pass

    gen = reranker._plan(Counts(), Query("q", "query"), cands)
    next(gen)
    with pytest.raises(StopIteration) as stop:
        gen.send([ChatResponse(answer)])
    return stop.value.value


def test_listwise_scores_are_the_places_first_stage_scores_like_rank_llm():
    cands = [Candidate("a", 9.0, "alpha"), Candidate("b", 5.0, "beta"), Candidate("c", 5.0, "gamma"),
             Candidate("d", 1.0, "delta")]
    url = "http://127.0.0.1:9/v1"
    answer = "[4] > [1] > [2] > [3]"
    out = _finish_plan(Listwise("m", backend="openai", base_url=url), cands, answer)
    assert [(c.doc_id, c.score) for c in out] == [("d", 9.0), ("a", 5.0), ("b", 5.0), ("c", 1.0)]
    # tied places are ordered by doc id, descending, as trec_eval orders rank_llm's runs
    assert [c.doc_id for c in sort_candidates(out)] == ["d", "b", "a", "c"]
    out = _finish_plan(Listwise("m", backend="openai", base_url=url, scores="rank"), cands, answer)
    assert [(c.doc_id, c.score) for c in out] == [("d", -1.0), ("a", -2.0), ("b", -3.0), ("c", -4.0)]
    with pytest.raises(ValueError, match="scores must be"):
        Listwise("m", backend="openai", base_url=url, scores="logits")


def test_specs_options_and_errors(monkeypatch):
    r = registry.build("reranker", "groupwise:m?backend=openai&base_url=http://a:1/v1|http://b:2/v1&repeats=2")
    assert r.backend.client.base_urls == ["http://a:1/v1", "http://b:2/v1"] and r.repeats == 2
    with pytest.raises(ConfigError, match="unknown option"):
        registry.build("reranker", "listwise:m?bogus=1")
    with pytest.raises(ConfigError, match="needs a server"):
        monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
        registry.build("reranker", "setwise:m?backend=openai")
    with pytest.raises(ConfigError, match="unknown listwise template"):
        registry.build("reranker", "listwise:m?template=nope")
    with pytest.raises(ConfigError, match="backend"):
        registry.build("reranker", "listwise:m?backend=grpc")
    # CLI-wide defaults (--backend/--base-url) fill what the spec leaves unset
    r = registry.build("reranker", "listwise:m", {"backend": "openai", "base_url": "http://c:3/v1", "api_key_env": None})
    assert r.backend.kind == "openai" and r.backend.client.base_urls == ["http://c:3/v1"]
    monkeypatch.setenv("OPENAI_BASE_URL", "http://d:4/v1")
    assert registry.build("reranker", "listwise:m?backend=openai").backend.client.base_urls == ["http://d:4/v1"]


def test_in_process_api_key_only_in_header(dl19, tmp_path, monkeypatch):
    """The key travels in the Authorization header only: never in config, spec, cache or log."""
    qrels, cands, oracle = dl19
    secret = "sk-test-secret-42"
    monkeypatch.setenv("MY_LLM_KEY", secret)
    qid = sorted(cands)[0]
    items = [(Query(qid, "q"), [Candidate(d, 1.0 / (i + 1), t) for i, (d, t) in enumerate(cands[qid][:20])])]
    from rankify_cli.cache import Store

    store = Store(tmp_path / "cache")
    with LLMServer(oracle) as srv:
        rr = registry.build("reranker", f"listwise:m?backend=openai&base_url={srv.url}&api_key_env=MY_LLM_KEY"
                                        f"&log_calls={tmp_path / 'calls.jsonl'}")
        ctx = StageContext(store=store)
        out = rr.rerank_all(items, ctx)[0]
        assert srv.stats()["auth"] == {f"Bearer {secret}": 1}
    assert sorted(c.doc_id for c in out) == sorted(d for d, _ in cands[qid][:20])
    assert ctx.stats["llm_calls"] == 1 and ctx.stats["llm_per_query"][qid]["calls"] == 1
    for blob in (json.dumps(rr.config()), rr.spec, (tmp_path / "calls.jsonl").read_text(),
                 (tmp_path / "cache" / "store.sqlite").read_bytes().decode("latin-1")):
        assert secret not in blob
    log = [json.loads(x) for x in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert len(log) == 1 and {"messages", "response", "latency_s", "prompt_tokens", "completion_tokens"} <= set(log[0])


# ------------------------------------------------------------------------------ DL19 end to end
@pytest.mark.parametrize("paradigm", ["listwise", "setwise", "groupwise"])
def test_oracle_reaches_the_ideal_ndcg(paradigm, cli, tmp_path, dl19, ideal_ndcg):
    with LLMServer(dl19[2], mode="oracle") as srv:
        doc, out, stats = run_cli(cli, tmp_path, SPECS[paradigm].format(url=srv.url), tmp_path / "cache")
        st = srv.stats()
    assert doc["stages"][0]["metrics"]["nDCG@10"] == pytest.approx(BM25_DL19, abs=5e-5)
    assert doc["metrics"]["nDCG@10"] == pytest.approx(ideal_ndcg, abs=1e-9)
    assert st["unmatched"] == 0 and st["answered"] == st["requests"] == stats["llm_calls"]
    assert max(st["by_prompt"].values()) == 1
    if paradigm in CALLS:
        assert stats["llm_calls"] == CALLS[paradigm]
    if paradigm == "listwise":  # rank_llm's RankGPT (SafeOpenai) sends no max_tokens
        assert st["max_tokens"] == {"None": stats["llm_calls"]}
    per_query = stats["llm_per_query"]
    assert len(per_query) == 43 and sum(v["calls"] for v in per_query.values()) == stats["llm_calls"]
    assert stats["llm_prompt_tokens"] > 0 and stats["llm_completion_tokens"] > 0
    assert not stats.get("llm_fallbacks") and not stats.get("llm_parse_failures")


@pytest.mark.parametrize("protocol", ["cohere", "tei"])
def test_rerank_api_oracle_and_garbage(protocol, cli, tmp_path, dl19, ideal_ndcg):
    spec = "rerank-api:scorer?base_url={root}&protocol=" + protocol
    with LLMServer(dl19[2], mode="oracle") as srv:
        doc, _, stats = run_cli(cli, tmp_path, spec.format(root=srv.root), tmp_path / "c1")
        calls = 43 if protocol == "cohere" else 43 * 4  # TEI: 100 documents in requests of 32
        assert srv.stats()["answered"] == calls
    assert doc["metrics"]["nDCG@10"] == pytest.approx(ideal_ndcg, abs=1e-9)
    assert stats["rerank_api_calls"] == calls
    with LLMServer(dl19[2], mode="garbage") as srv:
        doc, out, stats = run_cli(cli, tmp_path, spec.format(root=srv.root), tmp_path / "c2")
    assert doc["metrics"]["nDCG@10"] == pytest.approx(doc["stages"][0]["metrics"]["nDCG@10"], abs=1e-12)
    assert stats["rerank_api_fallbacks"] == 43
    assert ranking(out / "stage2.run") == ranking(out / "stage1.run")


def test_rerank_api_batch_over_the_servers_limit_is_one_clear_line(cli, tmp_path, dl19):
    with LLMServer(dl19[2], mode="oracle") as srv:
        res = cli("run", "-d", "dl19", "-r", "run:bm25", "-o", str(tmp_path / "res"), "-q", "--reranker",
                  f"rerank-api:scorer?base_url={srv.root}&protocol=tei&batch_size=100",
                  env={"RANKIFY_CACHE_DIR": str(tmp_path / "c")})
    lines = res.err.strip().splitlines()
    assert res.code == 2 and len(lines) == 1, res
    assert "HTTP 413" in lines[0] and "lower batch_size" in lines[0] and "Traceback" not in res.err
    assert not (tmp_path / "res").exists() or not list((tmp_path / "res").rglob("metrics.json"))


@pytest.mark.parametrize("paradigm", ["listwise", "setwise", "groupwise"])
def test_garbage_answers_keep_the_first_stage_order(paradigm, cli, tmp_path, dl19):
    spec = SPECS[paradigm].replace("&alpha=1", "")  # groupwise: default fusion with BM25
    if paradigm == "setwise":  # llm-rankers lets the heap parent win (the default; tests/test_parity_setwise.py)
        spec += "&fallback=first-stage"
    with LLMServer(dl19[2], mode="garbage") as srv:
        doc, out, stats = run_cli(cli, tmp_path, spec.format(url=srv.url), tmp_path / "cache")
        st = srv.stats()
    bm25 = doc["stages"][0]["metrics"]["nDCG@10"]
    assert bm25 == pytest.approx(BM25_DL19, abs=5e-5)
    assert doc["metrics"]["nDCG@10"] == pytest.approx(bm25, abs=1e-12)
    assert ranking(out / "stage2.run") == ranking(out / "stage1.run")
    assert stats["llm_calls"] == st["answered"] == stats["llm_fallbacks"] == stats["llm_parse_failures"]
    if paradigm in CALLS:
        assert stats["llm_calls"] == CALLS[paradigm]
    if paradigm == "listwise":  # rank_llm's RankGPT (SafeOpenai) sends no max_tokens
        assert st["max_tokens"] == {"None": stats["llm_calls"]}
    assert sum(v["fallbacks"] for v in stats["llm_per_query"].values()) == stats["llm_fallbacks"]


@pytest.mark.parametrize("paradigm", ["listwise", "setwise", "groupwise"])
def test_faults_do_not_change_the_result(paradigm, cli, tmp_path, dl19):
    # setwise: a shuffle stream per query, so queries run side by side and stalls overlap
    knobs = "&timeout=1&backoff=0.05&max_retries=12" + ("&shuffle=query" if paradigm == "setwise" else "")
    with LLMServer(dl19[2], mode="oracle") as srv:
        _, clean, _ = run_cli(cli, tmp_path / "a", SPECS[paradigm].format(url=srv.url) + knobs, tmp_path / "c1")
    with LLMServer(dl19[2], mode="oracle", fault_rate=0.2, stall=2.0, seed=7) as srv:
        doc, faulty, stats = run_cli(cli, tmp_path / "b", SPECS[paradigm].format(url=srv.url) + knobs, tmp_path / "c2")
        st = srv.stats()
    assert set(st["faults"]) == {"500", "429", "stall", "drop"}
    assert sum(st["faults"].values()) >= 0.1 * st["requests"]
    assert stats["llm_retries"] >= sum(st["faults"].values()) - st["in_flight"]
    assert same_run(faulty / "stage2.run", clean / "stage2.run")


def test_killed_run_resumes_without_repeating_calls(cli, tmp_path, dl19):
    cache = tmp_path / "cache"
    concurrency = 4
    with LLMServer(dl19[2], mode="oracle") as srv:
        _, clean, _ = run_cli(cli, tmp_path / "ref", SPECS["listwise"].format(url=srv.url), tmp_path / "ref-cache")
    with LLMServer(dl19[2], mode="oracle", latency=0.03) as srv:
        spec = SPECS["listwise"].format(url=srv.url) + f"&concurrency={concurrency}"
        args = [sys.executable, "-m", "rankify_cli.cli", "run", "-d", "dl19", "-r", "run:bm25", "-o",
                str(tmp_path / "res"), "--json", "-q", "--reranker", spec]
        env = {**os.environ, "RANKIFY_CACHE_DIR": str(cache)}
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while srv.stats()["answered"] < 150 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be interrupted"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        time.sleep(0.3)
        first = srv.stats()
        assert 150 <= first["answered"] < 387
        srv.state.reset()
        _, out, stats = run_cli(cli, tmp_path, spec, cache)
        second = srv.stats()
    repeated = set(first["by_prompt"]) & set(second["by_prompt"])
    # only calls in flight at the kill (at most `concurrency`) may be asked again
    assert len(repeated) <= concurrency
    assert len(set(first["by_prompt"]) | set(second["by_prompt"])) == 387
    assert stats["llm_calls"] == second["answered"] and stats["llm_cache_hits"] >= first["answered"] - concurrency
    assert same_run(out / "stage2.run", clean / "stage2.run")



def test_candidate_body_is_the_text_without_its_title():
    assert Candidate("d", 1.0, "A title the body", "A title").body == "the body"
    assert Candidate("d", 1.0, "A title", "A title").body == ""
    assert Candidate("d", 1.0, "other text", "A title").body == "other text"
    assert Candidate("d", 1.0, "plain").body == "plain"


def test_listwise_gives_beir_titles_as_rank_llm_does(cli, tmp_path):
    """rank_llm writes a BEIR document as 'Title: t Content: body'; a passage without a title
    (MS MARCO) stays as it is, and other families keep reading title + body as one text."""
    from conftest import DATA

    src = DATA / "beir" / "scifact"
    queries = [json.loads(x) for x in (src / "queries.jsonl").read_text().splitlines() if x.strip()][:3]
    docs = []
    with gzip.open(src / "corpus.jsonl.gz", "rt") as f:
        for i, line in enumerate(f):
            if i >= 60:
                break
            docs.append(json.loads(line))
    docs[1]["title"] = ""  # one untitled document, which the first query finds
    docs[1]["text"] = queries[0]["text"] + " " + docs[1]["text"]
    root = tmp_path / "scifact-mini"
    (root / "qrels").mkdir(parents=True)
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q['_id']}\t{docs[0]['_id']}\t1\n" for q in queries))
    log = tmp_path / "calls.jsonl"
    with LLMServer(None, mode="garbage") as srv:
        res = cli("run", "-d", str(root), "-r", "bm25", "--depth", "60", "-k", "60", "-o", str(tmp_path / "res"),
                  "-q", "--json", "--reranker", f"listwise:m?backend=openai&base_url={srv.url}&log_calls={log}",
                  env={"RANKIFY_CACHE_DIR": str(tmp_path / "cache")})
    assert res.code == 0, res
    by_title = {d["title"]: d for d in docs if d["title"]}
    seen_untitled = seen_titled = 0
    for rec in map(json.loads, log.read_text().splitlines()):
        for line in rec["messages"][-1]["content"].splitlines():
            if not line.startswith("[") or "]" not in line[:5]:
                continue
            passage = line.split("] ", 1)[1]
            if passage.startswith("Title: "):
                title = passage[len("Title: "):].split(" Content: ")[0]
                assert title in by_title and " Content: " in passage
                body = by_title[title]["text"].split()
                assert passage.split(" Content: ", 1)[1].split()[:5] == body[:5]
                seen_titled += 1
            else:
                assert passage.split()[:5] == docs[1]["text"].split()[:5], passage[:80]
                seen_untitled += 1
    assert seen_titled >= 20 and seen_untitled >= 1
