"""HTTP for every remote backend: POST JSON to one or several base URLs with keep-alive
connections, a total deadline per attempt, a bounded response size and a bounded retry budget.

The budget, as documented in the README:
* one attempt — connect, send, first byte and the whole body — takes at most `timeout` seconds
  (a watchdog shuts the socket at the deadline, so a server that drips one byte a second is cut
  off as surely as one that never answers);
* a response larger than `max_response_bytes` is cut off;
* one call makes at most `max_retries + 1` attempts (retrying HTTP 408/409/425/429/500/502/503/
  504 and any a provider's reference marks retryable (Cohere's 499), connection errors,
  timeouts, oversized bodies and 200 answers without the protocol's shape) and takes at most
  `timeout x (max_retries + 1)` seconds in all, backoff included;
* once a call gives up, the client is broken: calls in flight are cut off and later calls fail at
  once with the same message, so a run ends within one call's budget.
The message is one line naming the server and what it did; every server text in it is redacted
(the API key, any `Bearer` or `sk-` token)."""

from __future__ import annotations

import http.client
import itertools
import json
import math
import os
import random
import re
import socket
import threading
import time
from typing import Any, Callable
from urllib.parse import urlsplit

from rankify_cli.errors import ConfigError, RankifyError

DEFAULT_MAX_RESPONSE_BYTES = 8 * 2**20  # a chat completion or a /rerank answer is kilobytes
Validator = Callable[[Any], "str | None"]  # a 200 answer's JSON -> None when well-formed, else what is wrong


class BackendError(RankifyError):
    """An LLM server kept failing (after retries) or refused the request."""


def split_urls(base_url: str | None) -> list[str]:
    if not base_url:
        return []
    parts = [u.strip().rstrip("/") for u in str(base_url).replace(";", "|").split("|")]
    return [u for u in parts if u]


# ----------------------------------------------------------------------------- secrets
_TOKEN_PATTERNS = (re.compile(r"(?i)(bearer\s+)[^\s\"',;}\]]+"), re.compile(r"\bsk-[A-Za-z0-9_\-]{4,}"))


def strip_secrets(text: str, secrets=()) -> str:
    """`text` with every secret (exactly as given) replaced by ***: what a cache may keep of an
    answer that echoed the key (Bearer / sk- lookalikes in an answer are left alone there)."""
    for s in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(s, "***")
    return text


def redact(text: str, secrets=()) -> str:
    """`text` with every secret and every Bearer / sk- token replaced by ***."""
    text = strip_secrets(text, secrets)
    text = _TOKEN_PATTERNS[0].sub(lambda m: m.group(1) + "***", text)
    return _TOKEN_PATTERNS[1].sub("sk-***", text)


def _snippet(data: bytes | str, n: int = 200) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    text = " ".join(text.split())
    return text[:n] + ("..." if len(text) > n else "")


def _number(name: str, value, minimum: float, allow_equal: bool = True) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not math.isfinite(v) or v < minimum or (v == minimum and not allow_equal):
        rel = ">=" if allow_equal else ">"
        raise ValueError(f"{name} must be a finite number {rel} {minimum:g} (got {value!r})")
    return v


# ----------------------------------------------------------------------------- one attempt
class _Fault(Exception):
    """One attempt failed; `what` says what the server did, `retry` whether to try again."""

    def __init__(self, what: str, retry: bool = True, retry_after: str | None = None):
        super().__init__(what)
        self.what, self.retry, self.retry_after = what, retry, retry_after


def _describe(e: BaseException, phase: str, received: int) -> str:
    if isinstance(e, ConnectionRefusedError):
        return "refused the connection"
    if isinstance(e, ConnectionResetError):
        return "reset the connection"
    if isinstance(e, http.client.RemoteDisconnected) or (phase == "waiting" and isinstance(e, http.client.IncompleteRead)):
        return "closed the connection without answering"
    if isinstance(e, http.client.IncompleteRead):
        return f"closed the connection in the middle of its answer ({received} bytes received)"
    if isinstance(e, socket.gaierror):
        return f"cannot be resolved ({e.strerror or e})"
    if isinstance(e, (TimeoutError, socket.timeout)):
        return "did not accept the connection in time" if phase == "connect" else "stopped answering"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


class _Pool:
    """Keep-alive connections per (thread, host); a broken one is dropped and reopened.
    Sockets in use are registered so that a broken client can cut them all off."""

    def __init__(self):
        self._local = threading.local()
        self._lock = threading.Lock()
        self._live: set = set()

    def abort_all(self) -> None:
        with self._lock:
            socks = list(self._live)
        for s in socks:
            _shut(s)

    def request(self, method: str, url: str, body: bytes | None, headers: dict, timeout: float,
                max_bytes: int) -> tuple[int, dict, bytes]:
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        conns = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        conn = conns.get(key)
        if conn is None:
            cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
            conn = conns[key] = cls(parts.netloc, timeout=timeout)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        deadline = time.monotonic() + timeout
        phase, received, dog, sock = "connect", 0, None, None
        try:
            if conn.sock is None:
                conn.timeout = timeout
                conn.connect()
            sock = conn.sock
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            with self._lock:
                self._live.add(sock)
            dog = _Watchdog(sock, deadline - time.monotonic())
            phase = "waiting"
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            phase = "body"
            rheaders = {k.lower(): v for k, v in resp.getheaders()}
            declared = rheaders.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise _Fault(f"announced a {int(declared):,}-byte answer, over the {max_bytes:,}-byte limit "
                             "(max_response_bytes)")
            chunks = []
            while True:
                chunk = resp.read1(65536)
                if not chunk:
                    break
                received += len(chunk)
                if received > max_bytes:
                    raise _Fault(f"sent more than {max_bytes:,} bytes (max_response_bytes)")
                chunks.append(chunk)
            resp.read()  # b"": marks the response done, so the connection can carry the next request
            if dog.stop():  # cut off at the deadline: what came may be a truncated body
                raise TimeoutError
            if rheaders.get("connection", "").lower() == "close":
                conn.close()
                conns.pop(key, None)
            return resp.status, rheaders, b"".join(chunks)
        except BaseException as e:
            fired = dog.stop() if dog is not None else False
            conn.close()
            conns.pop(key, None)
            if isinstance(e, _Fault):
                raise
            if fired:  # the watchdog cut it off, whatever the socket said
                if phase == "waiting" and not received:
                    raise _Fault("sent no answer within the timeout") from None
                raise _Fault(f"did not finish its answer within the timeout ({received:,} bytes received)") from None
            if isinstance(e, (OSError, http.client.HTTPException)):
                raise _Fault(_describe(e, phase, received)) from None
            raise
        finally:
            if sock is not None:
                with self._lock:
                    self._live.discard(sock)


class _Watchdog:
    """Shuts a socket down at a deadline, so a blocked read returns whatever the server does."""

    def __init__(self, sock, seconds: float):
        self._lock, self._done, self.fired = threading.Lock(), False, False
        self._sock = sock
        self._timer = threading.Timer(max(0.0, seconds), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            if not self._done:
                self.fired = True
                _shut(self._sock)

    def stop(self) -> bool:
        """Disarm; True when it had fired."""
        with self._lock:
            self._done = True
        self._timer.cancel()
        return self.fired


def _shut(sock) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


# ----------------------------------------------------------------------------- replicas
class _Replica:
    """One base URL: calls, seconds and failures for run_info.json; a failed connection marks
    it down for a while so the next attempts go to the others; an optional bound on its
    requests in flight."""

    DOWN_SECONDS = 10.0

    def __init__(self, url: str):
        self.url = url
        self.calls = self.failures = 0
        self.seconds = 0.0
        self.down_until = 0.0
        self.slots: threading.BoundedSemaphore | None = None

    def stats(self) -> dict:
        return {"calls": self.calls, "failures": self.failures, "seconds": round(self.seconds, 3)}


# ----------------------------------------------------------------------------- the client
class HTTPClient:
    """JSON over HTTP with the budget described in the module docstring, over several base
    URLs in round robin. A replica whose connection fails is skipped while another is up, so
    its requests are retried there at once (scale-out: a replica that dies mid-run costs only
    its requests in flight)."""

    RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}

    def __init__(self, base_urls: list[str], api_key_env: str | None, timeout: float, max_retries: int,
                 backoff: float, max_backoff: float = 30.0, max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
                 retry_status: frozenset[int] = frozenset()):
        if not base_urls:
            raise ConfigError("the openai backend needs a server: pass base_url=http://HOST:PORT/v1 "
                              "(or --base-url, or set OPENAI_BASE_URL)")
        for u in base_urls:
            if urlsplit(u).scheme not in ("http", "https") or not urlsplit(u).netloc:
                raise ConfigError(f"bad base URL '{u}' (expected http://HOST:PORT/v1)")
        self.base_urls = base_urls
        self.api_key_env = api_key_env
        self.timeout = _number("timeout", timeout, 0, allow_equal=False)
        retries = _number("max_retries", max_retries, 0)
        if retries != int(retries):
            raise ValueError(f"max_retries must be a whole number (got {max_retries!r})")
        self.max_retries = int(retries)
        # a provider whose reference says a status of its own is worth retrying adds it (Cohere's 499)
        self.retry_status = self.RETRY_STATUS | set(retry_status)
        self.backoff = _number("backoff", backoff, 0)
        self.max_backoff = _number("max_backoff", max_backoff, 0)
        self.max_response_bytes = int(_number("max_response_bytes", max_response_bytes, 1))
        self.budget = self.timeout * (self.max_retries + 1)
        self._pool = _Pool()
        self._rr = itertools.count()
        self._rng = random.Random(0)
        self._lock = threading.Lock()
        self._broken: BackendError | None = None
        self._served: dict[str, dict] = {}
        self.replicas = {u: _Replica(u) for u in base_urls}

    # -- replicas
    def limit_per_replica(self, n: int) -> None:
        """At most n requests in flight on each base URL (a replica's own batch limit)."""
        for r in self.replicas.values():
            r.slots = threading.BoundedSemaphore(max(1, int(n)))

    def replica_stats(self) -> dict:
        with self._lock:
            return {u: r.stats() for u, r in self.replicas.items()}

    def _pick(self) -> _Replica:
        """Round robin over the replicas that are up (over all of them when none is)."""
        now, start, n = time.monotonic(), next(self._rr), len(self.base_urls)
        for k in range(n):
            r = self.replicas[self.base_urls[(start + k) % n]]
            if r.down_until <= now:
                return r
        return self.replicas[self.base_urls[start % n]]

    def _send(self, replica: _Replica, method: str, path: str, body, headers: dict, timeout: float):
        if replica.slots is not None:
            replica.slots.acquire()
        t0, failed = time.perf_counter(), True
        try:
            out = self._pool.request(method, replica.url + path, body, headers, timeout, self.max_response_bytes)
            failed = False
            return out
        finally:
            if replica.slots is not None:
                replica.slots.release()
            with self._lock:
                replica.calls += 1
                replica.seconds += time.perf_counter() - t0
                if failed:
                    replica.failures += 1
                    replica.down_until = time.monotonic() + replica.DOWN_SECONDS

    # -- pieces
    def _key(self) -> str | None:
        return os.environ.get(self.api_key_env or "OPENAI_API_KEY")

    def secrets(self) -> list[str]:
        """What must never be written anywhere (call logs, caches): the key, read now."""
        key = self._key()
        return [key] if key else []

    def _headers(self, json_body: bool) -> dict:
        headers = {"Accept": "application/json"}
        if json_body:
            headers["Content-Type"] = "application/json"
        key = self._key()
        if key:  # read at call time, sent only here
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        delay = min(self.max_backoff, self.backoff * (2 ** attempt))
        if retry_after:
            try:
                delay = max(delay, min(self.max_backoff, float(retry_after)))
            except ValueError:
                pass
        with self._lock:
            return delay + self._rng.uniform(0, 0.25 * delay)

    def _error(self, message: str) -> BackendError:
        return BackendError(redact(message, [self._key() or ""]))

    def _give_up(self, err: BackendError) -> BackendError:
        with self._lock:
            if self._broken is None:
                self._broken = err
        self._pool.abort_all()  # calls in flight end now: the run ends with this message
        return self._broken

    # -- calls
    def post(self, path: str, payload: dict, validate: Validator | None = None) -> tuple[Any, int, int]:
        """(parsed JSON, attempts, retries). A 200 whose JSON `validate` rejects is retried like
        a 5xx. Raises BackendError when it gives up."""
        return self._call("POST", path, json.dumps(payload).encode("utf-8"), validate)

    def get(self, path: str) -> tuple[int, Any]:
        """(status, parsed JSON or None) of a GET; 4xx answers are returned, not raised."""
        return self._call("GET", path, None, None, accept_4xx=True)

    def _call(self, method: str, path: str, body: bytes | None, validate: Validator | None,
              accept_4xx: bool = False, base: str | None = None):
        if self._broken is not None:
            raise self._broken
        start = time.monotonic()
        end = start + self.budget
        last, attempt = "", 0
        for attempt in range(self.max_retries + 1):
            replica = self.replicas[base] if base else self._pick()
            url = replica.url + path
            retry_after = None
            failover = False
            try:
                try:
                    status, headers, data = self._send(replica, method, path, body, self._headers(body is not None),
                                                       min(self.timeout, max(0.001, end - time.monotonic())))
                except _Fault:
                    failover = base is None and any(r.down_until <= time.monotonic() for r in self.replicas.values())
                    raise
                if status == 200:
                    try:
                        parsed = json.loads(data)
                    except (ValueError, RecursionError):
                        raise _Fault(f"answered 200 with invalid JSON: {_snippet(data)}") from None
                    problem = validate(parsed) if validate else None
                    if problem:
                        if isinstance(parsed, dict) and "error" in parsed:
                            raise _Fault(f"answered 200 with an error object: {_snippet(json.dumps(parsed['error']))}")
                        raise _Fault(f"answered 200 without {problem}")
                    return (status, parsed) if accept_4xx else (parsed, attempt + 1, attempt)
                if status in self.retry_status:
                    raise _Fault(f"answered HTTP {status}: {_snippet(data)}", retry_after=headers.get("retry-after"))
                if 300 <= status < 400:
                    raise _Fault(f"redirected (HTTP {status}) to {headers.get('location', '?')}; redirects are not "
                                 "followed, so the key is not sent elsewhere: give the final URL as base_url",
                                 retry=False)
                if accept_4xx and 400 <= status < 500:
                    try:
                        return status, json.loads(data)
                    except (ValueError, RecursionError):
                        return status, None
                hint = " (the request is too large for this server: lower batch_size or the text length)" \
                    if status == 413 else ""
                raise _Fault(f"answered HTTP {status}{hint}: {_snippet(data, 300)}", retry=False)
            except _Fault as f:
                if self._broken is not None:
                    raise self._broken from None
                last = f"{url} {f.what}"
                if not f.retry:
                    raise self._give_up(self._error(last)) from None
                retry_after = f.retry_after
            if failover and attempt < self.max_retries:
                continue  # another replica is up: try it at once
            if attempt < self.max_retries:
                pause = self._delay(attempt, retry_after)
                if time.monotonic() + pause >= end - 0.01:  # no time left for another attempt
                    break
                time.sleep(pause)
                if self._broken is not None:
                    raise self._broken
        spent = time.monotonic() - start
        raise self._give_up(self._error(
            f"{last}; gave up after {attempt + 1} attempt(s) in {spent:.1f} s (budget: timeout {self.timeout:g} s x "
            f"{self.max_retries + 1} attempts = {self.budget:g} s); finished calls are cached, so re-running resumes"))

    # -- identity
    def served_identity(self, model: str) -> dict:
        """What the servers report for `model` at GET /models (id and root, as vLLM, SGLang and
        Ollama list them), fetched once per client: {"served": {...}}, or {} when no server
        lists it. Replicas must agree, or the run stops."""
        with self._lock:
            if model in self._served:
                return self._served[model]
        seen: dict[str, dict | None] = {}
        for base in self.base_urls:
            status, data = self._call("GET", "/models", None, None, accept_4xx=True, base=base)
            seen[base] = _listed(data, model) if status == 200 else None
        found = {b: s for b, s in seen.items() if s is not None}
        if found and len({json.dumps(s, sort_keys=True) for s in seen.values()}) > 1:
            raise ConfigError(f"the base URLs serve different models under the name '{model}': " + "; ".join(
                f"{b} reports {json.dumps(s, sort_keys=True) if s else 'nothing'}" for b, s in seen.items()))
        ident = {"served": next(iter(found.values()))} if found else {}
        with self._lock:
            self._served[model] = ident
        return ident


def _listed(data, model: str) -> dict | None:
    rows = data.get("data") if isinstance(data, dict) else None
    for row in rows if isinstance(rows, list) else []:
        if isinstance(row, dict) and row.get("id") == model:
            return {"id": str(row.get("id")), "root": str(row.get("root") or row.get("id"))}
    return None


def chat_completion_shape(data) -> str | None:
    """None for an OpenAI chat completion with a message (content text or null), else what is wrong."""
    if not isinstance(data, dict):
        kind = {list: "an array", type(None): "null", str: "a string", bool: "a boolean"}.get(type(data), "a number")
        return f"a chat completion (got {kind})"
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        return "a chat completion ('choices' is not a non-empty list)"
    first = choices[0]
    msg = first.get("message") if isinstance(first, dict) else None
    if not isinstance(msg, dict):
        return "a chat completion ('choices[0].message' is not an object)"
    if not isinstance(msg.get("content"), (str, type(None))):
        return "a chat completion ('message.content' is not text)"
    usage = data.get("usage")
    if usage is not None and not isinstance(usage, dict):
        return "a chat completion ('usage' is not an object)"
    return None
