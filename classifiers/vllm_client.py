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

HTTP goes through `httpx2` (the maintained successor of httpx that the `openai` client itself
uses): httpx 0.28's connection pool (httpcore 1.x) probes every pooled connection's socket
(`getpeername`, `poll`) each time a request enters or leaves the pool, O(concurrency) system
calls per request, which made this client use ~2x the CPU of the `openai` client at 32 in flight;
on a machine whose cores also run the server, that CPU is taken from generation.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import threading
from dataclasses import dataclass
from typing import Any, Optional

import httpx2
import orjson
import tenacity

CHAT, COMPLETIONS = "chat/completions", "completions"
RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


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
    """

    def __init__(self, base_url: str, concurrency: int = 32, timeout_s: float = 300.0,
                 max_attempts: int = 8, backoff_s: float = 1.0, max_backoff_s: float = 30.0,
                 cache=None):
        self.base_url = base_url.rstrip("/")
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.cache = cache  # get(key) -> response | None, put(key, response); None: no cache
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="vllm-client")
        self._thread.start()
        self._http: Optional[httpx2.AsyncClient] = None
        self._semaphore: Optional[asyncio.Semaphore] = None

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
            asyncio.run_coroutine_threadsafe(self._http.aclose(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    # --- internals ------------------------------------------------------------------------------

    def _client(self) -> httpx2.AsyncClient:
        if self._http is None:  # created on the loop's thread, where it is used
            self._http = httpx2.AsyncClient(
                base_url=self.base_url, timeout=httpx2.Timeout(self.timeout_s, connect=10.0),
                limits=httpx2.Limits(max_connections=self.concurrency,
                                     max_keepalive_connections=self.concurrency))
            self._semaphore = asyncio.Semaphore(self.concurrency)
        return self._http

    async def _post_once(self, path: str, body: dict) -> dict:
        try:
            response = await self._client().post(path, content=orjson.dumps(body),
                                                 headers={"Content-Type": "application/json"})
        except httpx2.TimeoutException as exc:
            raise _Retryable("timeout", f"{type(exc).__name__}: {exc}") from None
        except httpx2.TransportError as exc:  # refused, reset, closed mid-response
            raise _Retryable("connection_error", f"{type(exc).__name__}: {exc}") from None
        if response.status_code in RETRYABLE_STATUS:
            raise _Retryable(f"http_{response.status_code}", response.text[:500])
        if response.status_code != 200:
            raise _Permanent(f"http_{response.status_code}", response.text[:500])
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise _Retryable("bad_response", str(exc)) from None

    async def _send(self, key: str, path: str, body: dict) -> Result:
        self._client()
        attempts = 0
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(_Retryable),
            wait=tenacity.wait_exponential_jitter(initial=self.backoff_s, max=self.max_backoff_s),
            stop=tenacity.stop_after_attempt(self.max_attempts),
            reraise=True)
        async with self._semaphore:
            try:
                async for attempt in retrying:
                    with attempt:
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
