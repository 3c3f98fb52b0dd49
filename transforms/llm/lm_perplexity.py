"""Stage `lm_perplexity`: per-document perplexity under an LLM, from a vLLM server's prompt
log-probs.

CCNet (Wenzek et al. 2020) scores documents with a KenLM 5-gram (stage `perplexity`); scoring with
a neural LM is the modern alternative and gives the per-token losses that EL2N-style scores use
(Marion et al. 2023, "When Less is More"; stage `el2n`). Each document is cut into windows of
at most `window_tokens` tokens (newline chunking, `transforms.llm.prompts.Chunker`), each window
is one `/v1/completions` request with `echo=true, logprobs=0, max_tokens=0` (the server returns
the log-prob of every prompt token and generates nothing), and the document gets

    lm_logprob   = sum of token log-probs (natural log) over all windows
    lm_tokens    = number of scored tokens (each window's first token has no context: unscored)
    lm_perplexity = exp(-lm_logprob / lm_tokens)

Requests share the rephrase stage's client: bounded concurrency, retries, request cache. A
document whose request still fails is failed (`lm_perplexity_<error>`) into the dead-letter; a
server unreachable at the start or dead mid-run fails the job (transforms/llm/serving.py).
Empty documents get nulls. Filtering on the score is a separate step.
"""
from __future__ import annotations

import math

import apache_beam as beam
import pyarrow as pa

from classifiers.vllm_client import COMPLETIONS, prompt_logprobs
from transforms.core.accounting import Rejects, count
from transforms.core.config import config_dataclass
from transforms.core.documents import ID, SOURCE, TEXT, with_column
from transforms.core.extras import require
from transforms.core.stage import REJECTS, Contract, Stage
from transforms.llm.serving import ServedModelFn, ServingConfig, preflight

STAGE = "lm_perplexity"


@config_dataclass
class LMPerplexityConfig:
    vllm: ServingConfig
    window_tokens: int = 1000   # keep below the server's --max-model-len
    column_prefix: str = "lm_"


class LMPerplexityFn(ServedModelFn, beam.DoFn):
    def __init__(self, config: LMPerplexityConfig):
        self.config = config

    def process(self, batch: pa.RecordBatch):
        texts = batch.column(TEXT).to_pylist()
        windows = [self.chunker.chunks(t, self.config.window_tokens) if t else [] for t in texts]
        owner = [i for i, w in enumerate(windows) for _ in w]
        model = self.config.vllm.model_name
        results = self.client.run([
            (COMPLETIONS, {"model": model, "prompt": window, "max_tokens": 0, "echo": True,
                           "logprobs": 0, "temperature": 0.0})
            for w in windows for window in w])
        self.raise_if_unavailable(results)
        count("lm_perplexity.requests", len(results))
        count("lm_perplexity.failed_requests", sum(r.error is not None for r in results))
        count("lm_perplexity.cache_hits", sum(r.cached for r in results))
        logprob = [0.0] * batch.num_rows
        tokens = [0] * batch.num_rows
        error: dict[int, object] = {}
        for i, result in zip(owner, results):
            if result.error:
                error.setdefault(i, result)
                continue
            values = prompt_logprobs(result.response)
            logprob[i] += math.fsum(values)
            tokens[i] += len(values)
        rejects = Rejects(STAGE)
        if error:
            ids, sources = batch.column(ID).to_pylist(), batch.column(SOURCE).to_pylist()
            for i, result in error.items():
                rejects.fail(f"lm_perplexity_{result.error}", ids[i], sources[i],
                             batch.slice(i, 1).to_pylist()[0], result.detail)
            yield beam.pvalue.TaggedOutput(REJECTS, rejects.take_batch())
        keep = [i for i in range(batch.num_rows) if i not in error]
        if not keep:
            return
        prefix = self.config.column_prefix
        scored = [tokens[i] > 0 for i in keep]
        out = batch.take(pa.array(keep)) if error else batch
        out = with_column(out, f"{prefix}logprob", pa.array(
            [logprob[i] if s else None for i, s in zip(keep, scored)], pa.float64()))
        out = with_column(out, f"{prefix}tokens", pa.array([tokens[i] for i in keep], pa.int64()))
        out = with_column(out, f"{prefix}perplexity", pa.array(
            [math.exp(-logprob[i] / tokens[i]) if s else None for i, s in zip(keep, scored)],
            pa.float64()))
        yield out


class LMPerplexity(Stage):
    Config = LMPerplexityConfig

    def __init__(self, config: LMPerplexityConfig, context=None):
        super().__init__(config, context)
        if not config.vllm.server_tokenizer:  # else it chunks with the server's tokenizer
            require("llm", "transformers", "tokenizers", by="stage 'lm_perplexity'")

    def contract(self) -> Contract:
        prefix = self.config.column_prefix
        return Contract(writes=(f"{prefix}logprob", f"{prefix}tokens", f"{prefix}perplexity"))

    def expand(self, documents):
        preflight(self.config.vllm, documents.pipeline.options)
        out = documents | "ScoreLM" >> beam.ParDo(LMPerplexityFn(self.config)).with_outputs(
            REJECTS, main="documents")
        return out.documents, out[REJECTS]
