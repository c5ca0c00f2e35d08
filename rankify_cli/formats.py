"""Readers and writers for the file formats of IR benchmarks, strict about their input.

Every problem is an InputError naming the file and, where there is one, the line, plus
what was expected. Nothing here guesses silently: a bad line stops the run.
"""

from __future__ import annotations

import errno
import gzip
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import InputError, RankifyError
from .faults import crashpoint
from .types import Candidate, Document, Qrels, Query, Run


def read_text(path: str | Path, what: str) -> str:
    """Whole file as text (gzip by suffix), refusing missing, binary or non-UTF-8 files."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"file not found (expected {what})", p)
    if not p.is_file():
        raise InputError(f"not a regular file (expected {what})", p)
    raw = p.read_bytes()
    if p.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise InputError(f"not a valid gzip file ({e}); expected {what}", p) from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise InputError(f"UTF-16 text; expected UTF-8 ({what}): re-encode it, e.g. iconv -f UTF-16 -t UTF-8", p, 1)
    if b"\x00" in raw:
        line = raw[: raw.index(b"\x00")].count(b"\n") + 1
        raise InputError(f"binary data (NUL byte) where {what} was expected", p, line)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise InputError(f"not UTF-8 text (byte {e.start}); expected {what}", p, line) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    return text


def iter_lines(path: str | Path, what: str) -> Iterator[tuple[int, str]]:
    """Non-blank lines with their 1-based numbers."""
    for no, line in enumerate(read_text(path, what).splitlines(), 1):
        if line.strip():
            yield no, line


def iter_jsonl(path: str | Path, what: str) -> Iterator[tuple[int, dict]]:
    for no, line in iter_lines(path, what):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"invalid JSON ({e.msg}, column {e.colno}); expected {what}", path, no) from None
        except (ValueError, RecursionError) as e:  # an integer of over 4300 digits, nesting past the stack
            raise InputError(f"unreadable JSON ({_why(e)}); expected {what}", path, no) from None
        if not isinstance(obj, dict):
            raise InputError(f"expected a JSON object per line ({what}), got {type(obj).__name__}", path, no)
        yield no, obj


def _why(e: Exception) -> str:
    if isinstance(e, RecursionError):
        return "nested too deeply"
    return "an integer with more digits than Python reads" if "digits" in str(e) else str(e).split(":")[0]


def _id(obj: dict, key: str, path, no: int, what: str) -> str:
    if key not in obj or obj[key] is None or str(obj[key]).strip() == "":
        raise InputError(f'{what} has no "{key}"', path, no)
    return id_value(obj[key], f'"{key}"', path, no)


def id_value(value, name: str, path, no: int | None, at: str = "") -> str:
    """A string or an integer (not a boolean: `true` is no id), held to check_id's rules."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        kind = "boolean" if isinstance(value, bool) else type(value).__name__
        raise InputError(f'{at}{name} must be a string or integer, got {kind}', path, no)
    return check_id(str(value), path, no, at)


def check_id(value: str, path, no: int | None, at: str = "") -> str:
    """Ids end up in whitespace-separated TREC files: whitespace inside one would corrupt them."""
    if any(ch.isspace() for ch in value):
        raise InputError(f"{at}id {value!r} contains whitespace, which TREC run and qrels files cannot hold", path, no)
    if not value:
        raise InputError(f"{at}empty id", path, no)
    return value


def _str_field(obj: dict, key: str, path, no: int, required: bool) -> str:
    if key not in obj or obj[key] is None:
        if required:
            raise InputError(f'document has no "{key}" field', path, no)
        return ""
    if not isinstance(obj[key], str):
        raise InputError(f'"{key}" must be a string, got {type(obj[key]).__name__}', path, no)
    return obj[key]


def _no_duplicates(seen: dict[str, int], key: str, path, no: int, what: str) -> None:
    if key in seen:
        raise InputError(f"duplicate {what} '{key}' (first at line {seen[key]})", path, no)
    seen[key] = no


def read_beir_corpus(path: str | Path) -> list[Document]:
    what = 'BEIR corpus lines {"_id", "title", "text"}'
    docs, seen = [], {}
    for no, obj in iter_jsonl(path, what):
        doc_id = _id(obj, "_id", path, no, "document")
        _no_duplicates(seen, doc_id, path, no, "document id")
        docs.append(Document(doc_id, _str_field(obj, "text", path, no, True), _str_field(obj, "title", path, no, False)))
    if not docs:
        raise InputError(f"empty file; expected {what}", path)
    return docs


def _check_query(qid: str, text: str, path, no: int, seen: dict[str, int]) -> Query:
    _no_duplicates(seen, qid, path, no, "query id")
    if not text.strip():
        raise InputError(f"query '{qid}' has empty text", path, no)
    return Query(qid, text)


def read_beir_queries(path: str | Path) -> list[Query]:
    what = 'BEIR queries lines {"_id", "text"}'
    out, seen = [], {}
    for no, obj in iter_jsonl(path, what):
        qid = _id(obj, "_id", path, no, "query")
        text = obj.get("text")
        if not isinstance(text, str):
            raise InputError(f'query \'{qid}\' has no "text" string', path, no)
        out.append(_check_query(qid, text, path, no, seen))
    if not out:
        raise InputError(f"empty file; expected {what}", path)
    return out


def read_topics_tsv(path: str | Path) -> list[Query]:
    what = "topics lines 'query-id<TAB>text'"
    out, seen = [], {}
    for no, line in iter_lines(path, what):
        parts = line.split("\t")
        if len(parts) != 2:
            raise InputError(f"expected 2 tab-separated columns (query-id, text), got {len(parts)}", path, no)
        out.append(_check_query(check_id(parts[0].strip(), path, no), parts[1], path, no, seen))
    if not out:
        raise InputError(f"empty file; expected {what}", path)
    return out


def _grade(value: str, path, no: int) -> int:
    try:
        return int(value)
    except ValueError:
        raise InputError(f"relevance grade '{value}' is not an integer", path, no) from None


def read_qrels(path: str | Path) -> Qrels:
    """BEIR `qrels/*.tsv` (query-id, corpus-id, score; header optional) or TREC qrels
    (query-id, iteration, doc-id, grade). The format is fixed by the first data line."""
    what = "qrels lines 'query-id corpus-id grade' (BEIR tsv) or 'query-id 0 doc-id grade' (TREC)"
    qrels: Qrels = {}
    ncols = None
    for no, line in iter_lines(path, what):
        parts = line.split("\t") if "\t" in line else line.split()
        parts = [p.strip() for p in parts]
        if ncols is None:
            if parts[0].lower() in ("query-id", "query_id", "qid") and len(parts) == 3:
                ncols = 3
                continue  # BEIR header
            if len(parts) not in (3, 4):
                raise InputError(f"expected 3 (BEIR) or 4 (TREC) columns, got {len(parts)}", path, no)
            ncols = len(parts)
        if len(parts) != ncols:
            raise InputError(f"expected {ncols} columns like the first line, got {len(parts)}", path, no)
        qid, doc_id, grade = (parts[0], parts[1], parts[2]) if ncols == 3 else (parts[0], parts[2], parts[3])
        value = _grade(grade, path, no)
        judged = qrels.setdefault(qid, {})
        if doc_id in judged and judged[doc_id] != value:
            raise InputError(f"document '{doc_id}' judged twice for query '{qid}' with different grades "
                             f"({judged[doc_id]} and {value})", path, no)
        judged[doc_id] = value
    if not qrels:
        raise InputError(f"no judgments; expected {what}", path)
    return qrels


def read_trec_run(path: str | Path) -> Run:
    what = "TREC run lines 'query-id Q0 doc-id rank score tag'"
    run: Run = {}
    seen: dict[tuple[str, str], int] = {}
    for no, line in iter_lines(path, what):
        parts = line.split()
        if len(parts) != 6:
            raise InputError(f"expected 6 columns (query-id Q0 doc-id rank score tag), got {len(parts)}", path, no)
        qid, _, doc_id, rank, score, _ = parts
        try:
            int(rank)
        except ValueError:
            raise InputError(f"rank '{rank}' is not an integer", path, no) from None
        try:
            value = float(score)
        except ValueError:
            raise InputError(f"score '{score}' is not a number", path, no) from None
        if not math.isfinite(value):
            raise InputError(f"score '{score}' is not a finite number", path, no)
        key = (qid, doc_id)
        if key in seen:
            raise InputError(f"document '{doc_id}' listed twice for query '{qid}' (first at line {seen[key]})", path, no)
        seen[key] = no
        run.setdefault(qid, []).append(Candidate(doc_id, value))
    if not run:
        raise InputError(f"empty run; expected {what}", path)
    return {q: sorted(c, key=lambda x: (-x.score, x.doc_id)) for q, c in run.items()}


def read_candidates_json(path: str | Path) -> tuple[list[Query], Run]:
    """rank_llm / RankGPT candidate lists: [{"query", "hits": [{"qid","docid","score","content"}]}]."""
    what = 'rank_llm JSON: a list of {"query": str, "hits": [{"qid", "docid", "score", "content"}]}'
    try:
        data = json.loads(read_text(path, what))
    except json.JSONDecodeError as e:
        raise InputError(f"invalid JSON at line {e.lineno} ({e.msg}); expected {what}", path, e.lineno) from None
    except (ValueError, RecursionError) as e:
        raise InputError(f"unreadable JSON ({_why(e)}); expected {what}", path) from None
    if not isinstance(data, list) or not data:
        raise InputError(f"expected {what}", path)
    queries, run, seen = [], {}, {}
    for i, entry in enumerate(data):
        at = f"entry {i}"
        if not isinstance(entry, dict) or not isinstance(entry.get("query"), str) or not isinstance(entry.get("hits"), list):
            raise InputError(f"{at}: expected {{\"query\": str, \"hits\": list}}", path)
        if not entry["hits"]:
            continue
        # held to the rules of a TREC run: ids without whitespace, one query, finite scores
        qid = None
        cands, docs_seen = [], set()
        for j, hit in enumerate(entry["hits"]):
            where = f"{at} hit {j}: "
            if not isinstance(hit, dict) or "docid" not in hit or "qid" not in hit:
                raise InputError(f'{where}expected "qid" and "docid"', path)
            hit_qid = id_value(hit["qid"], '"qid"', path, None, where)
            if qid is not None and hit_qid != qid:
                raise InputError(f"{where}query '{hit_qid}' in an entry of query '{qid}' (one query per entry)", path)
            qid = hit_qid
            doc_id = id_value(hit["docid"], '"docid"', path, None, where)
            if doc_id in docs_seen:
                raise InputError(f"{where}document '{doc_id}' listed twice for query '{qid}'", path)
            docs_seen.add(doc_id)
            raw = hit.get("score", -j)
            try:
                if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
                    raise TypeError
                score = float(raw)
            except OverflowError:
                score = math.inf
            except (TypeError, ValueError):
                raise InputError(f"{where}score {json.dumps(raw)[:40]} is not a number", path) from None
            if not math.isfinite(score):
                raise InputError(f"{where}score {raw!r} is not a finite number", path)
            content = hit.get("content", "")
            if not isinstance(content, str):
                raise InputError(f"{at} hit {j}: content must be a string", path)
            cands.append(Candidate(doc_id, score, content))
        if qid in seen:
            raise InputError(f"{at}: query '{qid}' appears twice (first at entry {seen[qid]})", path)
        seen[qid] = i
        if not entry["query"].strip():
            raise InputError(f"{at}: query '{qid}' has empty text", path)
        queries.append(Query(qid, entry["query"]))
        run[qid] = sorted(cands, key=lambda x: (-x.score, x.doc_id))
    return queries, run


def read_candidates_jsonl(path: str | Path) -> tuple[list[Query], Run]:
    """rank_llm's cached JSONL (rank_llm_data): one {"query": {"text", "qid"}, "candidates":
    [{"docid", "score", "doc": {"contents" | "segment" | "title"+"text"}}]} per line."""
    what = 'rank_llm JSONL: {"query": {"text", "qid"}, "candidates": [{"docid", "score", "doc"}]} per line'
    queries, run, seen = [], {}, {}
    for no, obj in iter_jsonl(path, what):
        q, cands = obj.get("query"), obj.get("candidates")
        if not isinstance(q, dict) or not isinstance(cands, list):
            raise InputError(f"expected {what}", path, no)
        qid, text = str(q.get("qid", "")), q.get("text")
        if not qid or not isinstance(text, str) or not text.strip():
            raise InputError('query needs a "qid" and a non-empty "text"', path, no)
        _no_duplicates(seen, qid, path, no, "query")
        out, docs_seen = [], set()
        for j, c in enumerate(cands):
            if not isinstance(c, dict) or "docid" not in c or not isinstance(c.get("doc", {}), dict):
                raise InputError(f'candidate {j}: expected "docid", "score" and a "doc" object', path, no)
            doc_id, doc = str(c["docid"]), c.get("doc", {})
            if doc_id in docs_seen:
                raise InputError(f"candidate {j}: document '{doc_id}' listed twice for query '{qid}'", path, no)
            docs_seen.add(doc_id)
            try:
                score = float(c.get("score", -j))
            except (TypeError, ValueError):
                raise InputError(f"candidate {j}: score is not a number", path, no) from None
            body = doc.get("contents", doc.get("segment", doc.get("text", "")))
            title = doc.get("title") or ""
            if not isinstance(body, str) or not isinstance(title, str):
                raise InputError(f"candidate {j}: document text must be a string", path, no)
            out.append(Candidate(doc_id, score, f"{title} {body}".strip() if title else body))
        queries.append(Query(qid, text))
        run[qid] = sorted(out, key=lambda x: (-x.score, x.doc_id))
    if not queries:
        raise InputError(f"no queries; expected {what}", path)
    return queries, run


def read_corpus_tsv(path: str | Path) -> list[Document]:
    what = "corpus lines 'doc-id<TAB>text'"
    docs, seen = [], {}
    for no, line in iter_lines(path, what):
        parts = line.split("\t", 1)
        if len(parts) != 2 or not parts[0].strip():
            raise InputError("expected 'doc-id<TAB>text'", path, no)
        _no_duplicates(seen, check_id(parts[0], path, no), path, no, "document id")
        docs.append(Document(parts[0], parts[1]))
    return docs


def read_bright_examples(path: str | Path) -> tuple[list[Query], dict[str, set[str]]]:
    """BRIGHT examples: queries and the per-query `excluded_ids` to drop before scoring."""
    what = 'BRIGHT examples {"id", "query", "gold_ids", "excluded_ids"}'
    queries, excluded, seen = [], {}, {}
    for no, obj in iter_jsonl(path, what):
        qid = _id(obj, "id", path, no, "example")
        text = obj.get("query")
        if not isinstance(text, str):
            raise InputError(f'example \'{qid}\' has no "query" string', path, no)
        queries.append(_check_query(qid, text, path, no, seen))
        ids = obj.get("excluded_ids") or []
        if not isinstance(ids, list):
            raise InputError('"excluded_ids" must be a list', path, no)
        excluded[qid] = {str(x) for x in ids if str(x) != "N/A"}
    return queries, excluded


def write_error(e: OSError, path: str | Path) -> RankifyError:
    """A failed write as one line naming the file: a full disk, a read-only or immutable folder."""
    where = e.filename or path
    why = e.strerror or str(e) or type(e).__name__
    hint = {errno.ENOSPC: "the disk is full", errno.EFBIG: "the file is larger than this system allows "
            "(disk quota or ulimit -f)", errno.EDQUOT: "the disk quota is exhausted",
            errno.EROFS: "the file system is read-only", errno.EACCES: "no permission to write here",
            errno.EPERM: "the folder does not allow writing (read-only or immutable)"}.get(e.errno, "")
    return RankifyError(f"cannot write ({why}{'; ' + hint if hint else ''}); nothing half-written was left", where)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write via a temp file in the same folder and rename: readers never see half a file."""
    p = Path(path)
    try:
        _atomic_write(p, data)
    except OSError as e:
        raise write_error(e, p) from None


def _atomic_write(p: Path, data: str | bytes) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.{os.getpid()}.", suffix=".tmp", dir=p.parent)
    try:
        blob = data.encode("utf-8") if isinstance(data, str) else data
        with os.fdopen(fd, "wb") as f:
            f.write(blob[: len(blob) // 2])
            crashpoint("mid-write")  # tests kill the process here: half a temp file, never half a result
            f.write(blob[len(blob) // 2 :])
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are ordinary files
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_dir(path: str | Path, write) -> None:
    """Fill a temp folder beside `path` with `write(tmp)`, then rename it into place: a crash
    never leaves half a folder, and a concurrent writer that finished first wins."""
    import shutil

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=path.parent))
    except OSError as e:
        raise write_error(e, path) from None
    try:
        try:
            write(tmp)
        except OSError as e:
            raise write_error(e, path) from None
        try:
            os.replace(tmp, path)
        except OSError:  # another process finished the same entry first
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_temp_files(folder: str | Path) -> int:
    """Delete temp files left by writers that were killed (their pid is gone); never a live one's."""
    removed = 0
    folder = Path(folder)
    for tmp in folder.glob(".*.tmp") if folder.is_dir() else []:
        parts = tmp.name.rsplit(".", 3)
        try:
            os.kill(int(parts[-3]), 0)
            continue  # its writer is alive
        except (ValueError, IndexError, ProcessLookupError):
            pass
        except PermissionError:
            continue
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def format_trec_run(run: Run, tag: str) -> str:
    """A TREC run with ranks from the toolkit's order; scores keep full float precision."""
    lines = []
    for qid in sorted(run):
        for rank, c in enumerate(run[qid], 1):
            lines.append(f"{qid} Q0 {c.doc_id} {rank} {c.score!r} {tag}")
    return "\n".join(lines) + ("\n" if lines else "")


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n"
