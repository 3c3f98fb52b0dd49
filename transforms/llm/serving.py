"""Where an LLM stage's requests go: a running vLLM server or one started per worker, the request
cache that makes a re-run resume, and the DoFn mixin that opens both once per worker."""
from __future__ import annotations

from dataclasses import field
from typing import Optional

import orjson
from apache_beam.io.filesystems import FileSystems

from classifiers.vllm_client import VLLMClient
from classifiers.vllm_server import acquire_server, release_server
from transforms.core.config import config_dataclass
from transforms.core.files import write_bytes_atomic
from transforms.llm.prompts import Chunker, load_tokenizer


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

    def __post_init__(self):
        if (self.endpoint is None) == (self.serve is None):
            raise ValueError("set exactly one of 'endpoint' (a running server) and 'serve' "
                             "(a model to start a server for)")
        if self.endpoint is not None and self.model is None:
            raise ValueError("'model' (the served model name) is required with 'endpoint'")

    @property
    def model_name(self) -> str:
        return self.model or self.serve

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer or self.serve or self.model


class Connection:
    """A worker's client (and shared local server, with `serve`) for a `ServingConfig`; open it
    in `DoFn.setup` and close it in `DoFn.teardown`."""

    def __init__(self, config: ServingConfig):
        self.config = config
        self.client = None
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
        self.client = VLLMClient(endpoint, config.concurrency, config.timeout_s,
                                 config.max_attempts, config.backoff_s, config.max_backoff_s,
                                 RequestCache(config.cache) if config.cache else None)
        return self.client

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
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
        self.chunker = Chunker(load_tokenizer(self.config.vllm.tokenizer_name))

    def teardown(self):
        self.connection.close()
