"""HTTP for every remote backend: POST JSON to one or several base URLs with timeouts,
retries with exponential backoff (429, 5xx, connection errors) and keep-alive connections."""

from __future__ import annotations

import http.client
import itertools
import json
import os
import random
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from rankify_cli.errors import ConfigError, RankifyError


class BackendError(RankifyError):
    """An LLM server kept failing (after retries) or refused the request."""



def split_urls(base_url: str | None) -> list[str]:
    if not base_url:
        return []
    parts = [u.strip().rstrip("/") for u in str(base_url).replace(";", "|").split("|")]
    return [u for u in parts if u]


# ----------------------------------------------------------------------------- HTTP
class _HTTPPool:
    """Keep-alive connections per (thread, host); a broken one is dropped and reopened."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self._local = threading.local()

    def request(self, url: str, body: bytes, headers: dict) -> tuple[int, dict, bytes]:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ConfigError(f"base URL must start with http:// or https:// (got '{url}')")
        key = (parts.scheme, parts.netloc)
        conns = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        conn = conns.get(key)
        if conn is None:
            cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
            conn = conns[key] = cls(parts.netloc, timeout=self.timeout)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            status, rheaders = resp.status, {k.lower(): v for k, v in resp.getheaders()}
            if rheaders.get("connection", "").lower() == "close":
                conn.close()
                conns.pop(key, None)
            return status, rheaders, data
        except BaseException:
            conn.close()
            conns.pop(key, None)
            raise


class HTTPClient:
    """POST JSON with timeouts, retries (429, 5xx, connection errors, timeouts) and
    exponential backoff, over several base URLs in round robin."""

    RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}

    def __init__(self, base_urls: list[str], api_key_env: str | None, timeout: float, max_retries: int,
                 backoff: float, max_backoff: float = 30.0):
        if not base_urls:
            raise ConfigError("the openai backend needs a server: pass base_url=http://HOST:PORT/v1 "
                              "(or --base-url, or set OPENAI_BASE_URL)")
        for u in base_urls:
            if urlsplit(u).scheme not in ("http", "https") or not urlsplit(u).netloc:
                raise ConfigError(f"bad base URL '{u}' (expected http://HOST:PORT/v1)")
        self.base_urls = base_urls
        self.api_key_env = api_key_env
        self.timeout, self.max_retries = float(timeout), int(max_retries)
        self.backoff, self.max_backoff = float(backoff), float(max_backoff)
        self._pool = _HTTPPool(self.timeout)
        self._rr = itertools.count()
        self._rng = random.Random(0)
        self._lock = threading.Lock()

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env or "OPENAI_API_KEY")
        if key:  # read at call time, sent only here
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _sleep(self, attempt: int, retry_after: str | None) -> None:
        delay = min(self.max_backoff, self.backoff * (2 ** attempt))
        if retry_after:
            try:
                delay = max(delay, min(self.max_backoff, float(retry_after)))
            except ValueError:
                pass
        with self._lock:
            jitter = self._rng.uniform(0, 0.25 * delay)
        time.sleep(delay + jitter)

    def post(self, path: str, payload: dict) -> tuple[Any, int, int]:
        """(parsed JSON, attempts, retries). Raises BackendError when it gives up."""
        body = json.dumps(payload).encode("utf-8")
        last = ""
        for attempt in range(self.max_retries + 1):
            base = self.base_urls[next(self._rr) % len(self.base_urls)]
            retry_after = None
            try:
                status, headers, data = self._pool.request(base + path, body, self._headers())
            except (OSError, http.client.HTTPException) as e:  # refused, reset, timeout, dropped
                last = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            else:
                if status == 200:
                    try:
                        return json.loads(data), attempt + 1, attempt
                    except ValueError:
                        last = f"invalid JSON in a 200 response from {base}"
                elif status in self.RETRY_STATUS:
                    last, retry_after = f"HTTP {status} from {base}", headers.get("retry-after")
                else:
                    text = data.decode("utf-8", "replace")[:300].replace("\n", " ")
                    hint = " (the request is too large for this server: lower batch_size or the text length)" \
                        if status == 413 else ""
                    raise BackendError(f"{base}{path} answered HTTP {status}{hint}: {text}")
            if attempt < self.max_retries:
                self._sleep(attempt, retry_after)
        raise BackendError(f"{path} failed after {self.max_retries + 1} attempts (last: {last}); "
                           "finished calls are cached, so re-running resumes")
