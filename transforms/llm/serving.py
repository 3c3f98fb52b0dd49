"""Where an LLM stage's requests go: a running vLLM server or one started per worker, the request
cache that makes a re-run resume, and the DoFn mixin that opens both once per worker.

A dead server stops the job instead of dead-lettering every request after minutes of retries:
a running server (`endpoint`) is checked when the job graph is built on a local runner and in
every worker's `setup` (GET /models, `health_check_s`), and a server that dies mid-run opens the
client's circuit breaker (`circuit_failures` connection failures in a row over at least
`circuit_after_s` seconds), which fails the stage's DoFn with a one-line `ServerUnavailable`;
finished requests are in the cache, so a re-run resumes. Other failures (HTTP 4xx, timeouts of
a live server) are dead-lettered, and the `sluice` commands exit non-zero after the job when
they exceed `max_failed_fraction` of a stage's requests (`failed_fraction_errors`)."""
from __future__ import annotations

import os
from dataclasses import field
from typing import Optional

import orjson
from apache_beam.io.filesystems import FileSystems

from classifiers.vllm_client import UNAVAILABLE, ServerUnavailable, VLLMClient, check_server
from classifiers.vllm_server import acquire_server, release_server
from transforms.core.config import config_dataclass, is_local
from transforms.core.files import write_bytes_atomic
from transforms.llm.prompts import Chunker, ServerTokenizer, load_tokenizer


class RequestCache:
    """Finished responses as one JSON file per request key (atomic rename; any Beam filesystem)."""

    def __init__(self, directory: str):
        self.directory = directory.rstrip("/")

    def path(self, key: str) -> str:
        return f"{self.directory}/{key[:2]}/{key}.json"

    def get(self, key: str) -> Optional[dict]:
        try:
            with FileSystems.open(self.path(key), compression_type="uncompressed") as f:
                return orjson.loads(f.read())
        except (IOError, OSError, orjson.JSONDecodeError):
            return None  # missing (or unreadable: treated as not cached, re-requested)

    def put(self, key: str, response: dict) -> None:
        write_bytes_atomic(self.path(key), orjson.dumps(response))



@config_dataclass
class ServingConfig:
    """Where an LLM stage sends requests: a running server (`endpoint`) or one it starts on each
    worker machine (`serve`: a model folder or hub name; `serve_args` go to vLLM verbatim, e.g.
    `--tensor-parallel-size 4 --max-model-len 8192`)."""

    endpoint: Optional[str] = None
    serve: Optional[str] = None
    serve_args: list[str] = field(default_factory=list)
    serve_env: dict[str, str] = field(default_factory=dict)
    model: Optional[str] = None       # the served model name (default: `serve`)
    tokenizer: Optional[str] = None   # for chunking (default: `serve`, else `model`)
    concurrency: int = 32             # requests in flight per worker process
    timeout_s: float = 600.0
    max_attempts: int = 8
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    cache: Optional[str] = None       # request cache folder (local or gs://)
    startup_timeout_s: float = 1800.0
    health_check_s: float = 30.0      # GET /models of `endpoint` for up to this long; 0: skip
    circuit_failures: int = 5         # open the circuit after this many connection failures
    circuit_after_s: float = 30.0     # ... in a row spanning this long (0 failures: never)
    max_failed_fraction: float = 0.1  # the command fails above this fraction of failed requests

    def __post_init__(self):
        if (self.endpoint is None) == (self.serve is None):
            raise ValueError("set exactly one of 'endpoint' (a running server) and 'serve' "
                             "(a model to start a server for)")
        if self.endpoint is not None and self.model is None:
            raise ValueError("'model' (the served model name) is required with 'endpoint'")
        if not 0.0 <= self.max_failed_fraction <= 1.0:
            raise ValueError("'max_failed_fraction' must be between 0 and 1")

    @property
    def model_name(self) -> str:
        return self.model or self.serve

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer or self.serve or self.model

    @property
    def server_tokenizer(self) -> bool:
        """Chunk with the server's own tokenizer (`POST /tokenize`): no `tokenizer` is set and
        the model is no local path (a served name or hub id: loading it here would need the
        hub, and a served name that is not a hub id cannot be loaded at all)."""
        return self.tokenizer is None and not os.path.exists(self.serve or self.model)


class Connection:
    """A worker's client (and shared local server, with `serve`) for a `ServingConfig`; open it
    in `DoFn.setup` and close it in `DoFn.teardown`."""

    def __init__(self, config: ServingConfig):
        self.config = config
        self.client = None
        self.endpoint: Optional[str] = None  # the server's base URL (.../v1) once open
        self._tokenizer_client = None
        self._server = None

    def open(self):
        config = self.config
        endpoint = config.endpoint
        if config.serve is not None:
            args = list(config.serve_args)
            if config.model and "--served-model-name" not in args:
                args += ["--served-model-name", config.model]
            self._server = acquire_server(config.serve, args, config.serve_env,
                                          config.startup_timeout_s)
            endpoint = self._server.base_url
        elif config.health_check_s > 0:
            check_server(endpoint, config.model_name, config.health_check_s)
        self.endpoint = endpoint
        self.client = self._client(endpoint, RequestCache(config.cache) if config.cache else None)
        return self.client

    def _client(self, base_url: str, cache=None) -> VLLMClient:
        config = self.config
        return VLLMClient(base_url, config.concurrency, config.timeout_s, config.max_attempts,
                          config.backoff_s, config.max_backoff_s, cache,
                          config.circuit_failures, config.circuit_after_s)

    def tokenizer(self):
        """The tokenizer for chunking: the server's own (`ServingConfig.server_tokenizer`),
        through a client of the server root without cache, else one loaded here."""
        if not self.config.server_tokenizer:
            return load_tokenizer(self.config.tokenizer_name)
        if self._tokenizer_client is None:
            root = self.endpoint.rstrip("/")
            root = root[: -len("/v1")] if root.endswith("/v1") else root
            self._tokenizer_client = self._client(root)
        return ServerTokenizer(self._tokenizer_client, self.config.model_name)

    def close(self) -> None:
        for client in (self.client, self._tokenizer_client):
            if client is not None:
                client.close()
        self.client = self._tokenizer_client = None
        if self._server is not None:
            release_server(self._server)
            self._server = None



class ServedModelFn:
    """DoFn mixin for stages that talk to a served model: one connection (and server, in serve
    mode) and one tokenizer-based chunker per worker, opened in `setup`, closed in `teardown`.
    Subclasses set `self.config.vllm` (a `ServingConfig`)."""

    def setup(self):
        self.connection = Connection(self.config.vllm)
        self.client = self.connection.open()
        self.chunker = Chunker(self.connection.tokenizer())

    def teardown(self):
        self.connection.close()

    def raise_if_unavailable(self, results=()) -> None:
        """Fail the DoFn (and so the job) once the client's circuit is open: the server is gone
        and every further request would fail at once. Finished requests stay cached."""
        if self.client.unavailable is not None or any(r.error == UNAVAILABLE for r in results):
            raise ServerUnavailable(self.client.unavailable or next(
                r.detail for r in results if r.error == UNAVAILABLE))


def preflight(config: ServingConfig, options) -> None:
    """When the job graph is built for a local runner: a running server (`endpoint`) must answer
    GET /models and serve the model, else `ServerUnavailable` (one line) before anything starts.
    Remote runners check from the workers (`setup`): the endpoint may be reachable from there
    only."""
    if config.endpoint is not None and config.health_check_s > 0 and is_local(options):
        check_server(config.endpoint, config.model_name, config.health_check_s)


LLM_STAGES = ("rephrase", "lm_perplexity")  # stages counting `<stage>.requests` and
                                              # `<stage>.failed_requests`


def failed_fraction_errors(job_data: dict, stats: dict) -> list[str]:
    """One line per LLM stage of a finished job whose failed requests exceed that stage's
    `vllm.max_failed_fraction`; empty when all are within their limits."""
    from transforms.core.config import parse
    from transforms.core.stage import stage_class

    counters = stats.get("counters", {})
    errors = []
    for index, entry in enumerate(job_data.get("stages") or []):
        (name, params), = entry.items()
        if name not in LLM_STAGES:
            continue
        limit = parse(stage_class(name).Config, params).vllm.max_failed_fraction
        requests = counters.get(f"{name}.requests", 0)
        failed = counters.get(f"{name}.failed_requests", 0)
        if requests and failed / requests > limit:
            reasons = {r: n for r, n in stats.get("failed_by_reason", {}).items()
                       if r.startswith(f"{name}_")}
            errors.append(
                f"stages.{index}.{name}: {failed:,} of {requests:,} LLM requests failed "
                f"({failed / requests:.1%} > vllm.max_failed_fraction {limit:g}; {reasons}); "
                f"finished requests are cached: a re-run with the same cache resumes")
    return errors
