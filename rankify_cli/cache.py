"""The toolkit's one cache: finished work (reranker scores, LLM calls) keyed by content.

A key is a hash of everything that changes the value (model and revision, template,
decoding parameters, query and document text), computed by the stage; this module only
stores. SQLite in WAL mode gives atomic commits and safe concurrent writers.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Sequence


_SETUP_LOCK = threading.Lock()
# entries this process has stored (what an interrupted run kept, for its last message)
WRITTEN = {"entries": 0}


def _retry_locked(step, attempts: int = 50):
    for i in range(attempts):
        try:
            return step()
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or i == attempts - 1:
                raise
            time.sleep(0.05 * (i + 1))


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            from .formats import write_error

            raise write_error(e, self.root) from None
        self.path = self.root / "store.sqlite"
        self._local = threading.local()

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                # Switching to WAL needs a moment of exclusive access: threads of one process take
                # turns here, and other processes are waited for (busy timeout) rather than failed.
                with _SETUP_LOCK:
                    db = sqlite3.connect(self.path, timeout=60, check_same_thread=True)
                    db.execute("PRAGMA busy_timeout=60000")
                    _retry_locked(lambda: db.execute("PRAGMA journal_mode=WAL"))
                    db.execute("PRAGMA synchronous=NORMAL")
                    _retry_locked(lambda: db.execute(
                        "CREATE TABLE IF NOT EXISTS kv (ns TEXT, key TEXT, value TEXT, created REAL, PRIMARY KEY (ns, key))"))
            except sqlite3.DatabaseError as e:
                raise self._damaged(e) from None
            self._local.db = db
        return db

    def _damaged(self, e: Exception):
        """What went wrong, told apart: only a damaged file is worth deleting; a read-only or
        full disk keeps every finished entry, so the message must not send the user to delete it."""
        from .errors import InputError

        text = str(e).lower()
        keep = "the finished work in it is kept"
        if "readonly" in text or "read-only" in text or "unable to open" in text or "permission" in text:
            return InputError(f"cannot write the cache ({e}): make its folder writable, set RANKIFY_CACHE_DIR to "
                              f"another folder, or run with --no-cache; {keep}", self.path)
        if "full" in text or "too large" in text or "quota" in text or "i/o error" in text:
            return InputError(f"cannot write the cache ({e}): free disk space or set RANKIFY_CACHE_DIR to another "
                              f"disk; {keep}", self.path)
        return InputError(f"cache database unreadable ({e}); delete it or run with --no-cache", self.path)

    def get_many(self, namespace: str, keys: Sequence[str]) -> dict[str, Any]:
        try:
            return self._get_many(namespace, keys)
        except sqlite3.DatabaseError as e:
            raise self._damaged(e) from None

    def _get_many(self, namespace: str, keys: Sequence[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        db = self._db()
        keys = list(keys)
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            marks = ",".join("?" * len(chunk))
            rows = db.execute(f"SELECT key, value FROM kv WHERE ns=? AND key IN ({marks})", [namespace, *chunk])
            out.update((k, json.loads(v)) for k, v in rows)
        return out

    def put_many(self, namespace: str, items: Mapping[str, Any]) -> None:
        try:
            self._put_many(namespace, items)
        except sqlite3.DatabaseError as e:
            raise self._damaged(e) from None

    def _put_many(self, namespace: str, items: Mapping[str, Any]) -> None:
        if not items:
            return
        now = time.time()
        db = self._db()
        with db:
            db.executemany(
                "INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?)",
                [(namespace, k, json.dumps(v), now) for k, v in items.items()],
            )
        WRITTEN["entries"] += len(items)

    def info(self) -> dict[str, Any]:
        rows = self._db().execute("SELECT ns, COUNT(*), MIN(created), MAX(created) FROM kv GROUP BY ns").fetchall()
        return {ns: {"entries": n, "oldest": lo, "newest": hi} for ns, n, lo, hi in rows}

    def clear(self, older_than_s: float | None = None) -> int:
        db = self._db()
        with db:
            if older_than_s is None:
                cur = db.execute("DELETE FROM kv")
            else:
                cur = db.execute("DELETE FROM kv WHERE created < ?", [time.time() - older_than_s])
        return cur.rowcount
