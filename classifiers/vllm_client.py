"""Client for a vLLM (OpenAI-compatible) server: bounded concurrency, retries, a request cache.

Beam's `VLLMCompletionsModelHandler` sends a whole batch with `asyncio.gather` and fails the batch
on the first error; LLM data generation needs the opposite: thousands of requests in flight at a
bounded concurrency (so the server's continuous batching stays full), each retried on its own
(timeouts, 5xx, connection loss while the server restarts) with exponential backoff and jitter,
and finished requests kept in a cache so a re-run after a crash pays only for what is missing.

The cache (any object with `get(key)` and `put(key, response)`; the stages pass
`transforms.llm.serving.RequestCache`) is keyed by `request_key`: endpoint path, model, prompt and
sampling params. Requests are deterministic when `seed` is set, which makes a cached answer the
answer a re-run would have got.

A dead server fails fast instead of being retried for minutes: `check_server` (GET /models, a
few tries over a bounded time) is what the stages run before sending anything, and the client
has a circuit breaker: once connection failures (refused, reset, timed out) have been the only
outcome of requests for `circuit_after_s` seconds, `circuit_failures` of them in a row at least,
the circuit opens for good and every queued, backing-off, in-flight and new request resolves at
once with the error `server_unavailable`. Any HTTP response (a 503 too: the server is alive)
resets the count.

HTTP goes through `aiohttp` (a vLLM dependency): its connector hands a pooled connection to a
request without probing the other pooled sockets, unlike httpx 0.28's pool (httpcore 1.x), whose
O(concurrency) system calls per request made this client use ~2x the CPU of the `openai` client
at 32 in flight (docs/rephrase.md, Benchmark).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Optional

import aiohttp
import orjson
import tenacity
import yarl

from classifiers import ModelError

CHAT, COMPLETIONS = "chat/completions", "completions"
RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
UNAVAILABLE = "server_unavailable"  # the error of requests failed by the open circuit
JSON_HEADERS = {"Content-Type": "application/json"}


class ServerUnavailable(ModelError):
    """The vLLM server cannot be reached (or does not serve the model); the message is one line
    starting with "vLLM server unavailable"."""


# like the aiohttp session (trust_env off): no proxies from the environment
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def check_server(base_url: str, model: Optional[str] = None, timeout_s: float = 30.0,
                 try_timeout_s: float = 5.0) -> list[str]:
    """The model ids the server at `base_url` serves (GET {base_url}/models), trying a few times
    with growing pauses for at most about `timeout_s` seconds; `ServerUnavailable` when no try
    got a 200, or when `model` is given and not among them."""
    url = f"{base_url.rstrip('/')}/models"
    start = time.monotonic()
    deadline = start + max(timeout_s, 0.0)
    tries, pause, last = 0, 0.5, ""
    while True:
        tries += 1
        try:
            with _DIRECT.open(url, timeout=max(0.5, min(
                    try_timeout_s, deadline - time.monotonic()))) as response:
                ids = [m.get("id") for m in orjson.loads(response.read()).get("data") or []]
            break
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except (OSError, ValueError, http.client.HTTPException) as exc:  # refused, reset, timeout
            last = f"{type(exc).__name__}: {getattr(exc, 'reason', None) or exc}"
        if time.monotonic() + pause > deadline:
            raise ServerUnavailable(
                f"vLLM server unavailable: GET {url} failed {tries} time(s) over "
                f"{time.monotonic() - start:.0f}s ({last})".replace("\n", " "))
        time.sleep(pause)
        pause = min(pause * 2, 8.0)
    if model is not None and model not in ids:
        raise ServerUnavailable(f"vLLM server unavailable: {base_url} does not serve model "
                                f"'{model}' (it serves {ids})")
    return ids


def request_key(path: str, body: dict) -> str:
    """Cache key of a request: sha256 of its endpoint path and canonical JSON body
    (model, prompt or messages, and every sampling parameter)."""
    canonical = json.dumps({"path": path, "body": body}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass
class Result:
    """The outcome of one request: a response dict, or the reason it failed after retries."""

    key: str
    response: Optional[dict] = None
    error: Optional[str] = None   # reason name, e.g. "timeout", "connection_error", "http_400"
    detail: str = ""
    cached: bool = False
    attempts: int = 0


class _Retryable(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


class _Permanent(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


class VLLMClient:
    """Sends OpenAI-style request bodies to `base_url` (e.g. http://host:8000/v1).

    Requests run on an event loop in a background thread, `concurrency` in flight at most:
    `submit(requests)` returns futures at once (a streaming DoFn keeps the server busy across
    batch boundaries with it), `run(requests)` waits and returns results in request order.
    The circuit breaker (module docstring) opens after `circuit_failures` connection failures in
    a row spanning at least `circuit_after_s` seconds; `circuit_failures=0` turns it off.
    """

    def __init__(self, base_url: str, concurrency: int = 32, timeout_s: float = 300.0,
                 max_attempts: int = 8, backoff_s: float = 1.0, max_backoff_s: float = 30.0,
                 cache=None, circuit_failures: int = 5, circuit_after_s: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.cache = cache  # get(key) -> response | None, put(key, response); None: no cache
        self.circuit_failures = circuit_failures
        self.circuit_after_s = circuit_after_s
        self.unavailable: Optional[str] = None  # why the circuit opened; None while closed
        self._streak = 0                 # connection failures since the last HTTP response
        self._streak_since = 0.0         # monotonic time of the streak's first failure
        self._urls: dict[str, yarl.URL] = {}
        self._posting: set[asyncio.Task] = set()  # tasks waiting on the server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="vllm-client")
        self._thread.start()
        self._http: Optional[aiohttp.ClientSession] = None
        self._semaphore: Optional[asyncio.Semaphore] = None
        self._opened: Optional[asyncio.Event] = None

    # --- public ---------------------------------------------------------------------------------

    def submit(self, requests: list[tuple[str, dict]]) -> list[concurrent.futures.Future]:
        """Start `(path, body)` requests without waiting: one future per request, resolving to
        its `Result`. Cached ones are read here and resolve at once; the others queue on the
        client's event loop and run `concurrency` at a time in submission order, so a caller
        can submit the next batch while this one is still in flight."""
        futures = []
        for path, body in requests:
            key = request_key(path, body)
            cached = self.cache.get(key) if self.cache else None
            if cached is None:
                futures.append(asyncio.run_coroutine_threadsafe(self._send(key, path, body),
                                                                self._loop))
            else:
                futures.append(concurrent.futures.Future())
                futures[-1].set_result(Result(key, cached, cached=True))
        return futures

    def run(self, requests: list[tuple[str, dict]]) -> list[Result]:
        """Results for `(path, body)` requests in request order (`submit` and wait)."""
        return [future.result() for future in self.submit(requests)]

    def close(self) -> None:
        if self._http is not None:
            asyncio.run_coroutine_threadsafe(self._http.close(), self._loop).result()
            self._http = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    # --- internals ------------------------------------------------------------------------------

    def _client(self) -> aiohttp.ClientSession:
        if self._http is None:  # created on the loop's thread, where it is used
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.concurrency),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s, sock_connect=10.0))
            self._semaphore = asyncio.Semaphore(self.concurrency)
            self._opened = asyncio.Event()
        return self._http

    def _url(self, path: str) -> yarl.URL:
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = yarl.URL(f"{self.base_url}/{path.lstrip('/')}")
        return url

    async def _post_once(self, path: str, body: dict) -> dict:
        task = asyncio.current_task()
        self._posting.add(task)
        try:
            async with self._client().post(self._url(path), data=orjson.dumps(body),
                                           headers=JSON_HEADERS) as response:
                status, content = response.status, await response.read()
        except asyncio.CancelledError:
            if self.unavailable is None:
                raise
            task.uncancel()  # cancelled by the circuit opening, not by the caller
            raise _Permanent(UNAVAILABLE, self.unavailable) from None
        except TimeoutError as exc:
            self._connection_failed(f"timeout: {type(exc).__name__}")
            raise _Retryable("timeout", f"{type(exc).__name__}: {exc}") from None
        except aiohttp.ClientError as exc:  # refused, reset, closed mid-response
            self._connection_failed(f"{type(exc).__name__}: {exc}")
            raise _Retryable("connection_error", f"{type(exc).__name__}: {exc}") from None
        finally:
            self._posting.discard(task)
        self._streak = 0  # the server answered
        if status in RETRYABLE_STATUS:
            raise _Retryable(f"http_{status}", content[:500].decode("utf-8", "replace"))
        if status != 200:
            raise _Permanent(f"http_{status}", content[:500].decode("utf-8", "replace"))
        try:
            return orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            raise _Retryable("bad_response", str(exc)) from None

    def _connection_failed(self, detail: str) -> None:
        """Count a connection failure; open the circuit when the streak is long enough."""
        now = time.monotonic()
        if self._streak == 0:
            self._streak_since = now
        self._streak += 1
        if (self.circuit_failures and self.unavailable is None
                and self._streak >= self.circuit_failures
                and now - self._streak_since >= self.circuit_after_s):
            self.unavailable = (
                f"vLLM server unavailable: no response from {self.base_url} for "
                f"{now - self._streak_since:.0f}s ({self._streak} connection failures in a row; "
                f"last: {detail})").replace("\n", " ")
            self._opened.set()  # wakes requests sleeping between attempts
            current = asyncio.current_task()
            for task in list(self._posting):
                if task is not current:
                    task.cancel()

    async def _sleep(self, seconds: float) -> None:
        """Backoff between attempts, cut short when the circuit opens."""
        try:
            await asyncio.wait_for(self._opened.wait(), seconds)
        except TimeoutError:
            pass

    async def _send(self, key: str, path: str, body: dict) -> Result:
        self._client()
        attempts = 0
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(_Retryable),
            wait=tenacity.wait_exponential_jitter(initial=self.backoff_s, max=self.max_backoff_s),
            stop=tenacity.stop_after_attempt(self.max_attempts),
            sleep=self._sleep, reraise=True)
        async with self._semaphore:
            try:
                async for attempt in retrying:
                    with attempt:
                        if self.unavailable is not None:
                            raise _Permanent(UNAVAILABLE, self.unavailable)
                        attempts += 1
                        response = await self._post_once(path, body)
            except (_Retryable, _Permanent) as exc:
                return Result(key, error=exc.reason, detail=str(exc), attempts=attempts)
        if self.cache:
            await asyncio.to_thread(self.cache.put, key, response)
        return Result(key, response, attempts=attempts)


def completion_text(response: dict) -> tuple[str, Optional[str]]:
    """(text, finish_reason) of the first choice of a chat or text completion."""
    choice = response["choices"][0]
    text = choice["message"]["content"] if "message" in choice else choice["text"]
    return text or "", choice.get("finish_reason")


def prompt_logprobs(response: dict) -> list[float]:
    """Per-token log-probs of the prompt from an `echo=True, logprobs=0` completion; the first
    token (no context) has none and is skipped."""
    values = response["choices"][0]["logprobs"]["token_logprobs"]
    return [v for v in values if v is not None]


def usage_tokens(response: dict) -> tuple[int, int]:
    usage: dict[str, Any] = response.get("usage") or {}
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
