"""Stage `rephrase`: synthetic rewrites of documents by an LLM served with vLLM.

WRAP (Maini et al. 2024, "Rephrasing the Web") rewrites ~300-token chunks of web text in four
styles; Nemotron-CC (Su et al. 2024) rewrites low-quality documents Wikipedia-style and turns
high-quality ones into QA pairs, distillations, extracted knowledge and knowledge lists. Here
each document is routed to templates (by its ensemble quality bucket, the `buckets` stage's
`quality_bucket`, when that column exists: buckets below `high_min` go to `low_styles`, the others to `high_styles`; otherwise every
document gets `styles`), chunked to each template's input limit in the served model's tokens,
and every (document, template, chunk) becomes one request to the server.

Outputs: the input documents pass through unchanged; the synthetic documents go to their own
output folder (`OUTPUT/synthetic/`, `source` suffixed `_synthetic`) with provenance columns
`parent_id, style, family, model, prompt_hash, chunk_index, chunk_count, sampling` and token
counts. Each request counts as one `input` record of that output and ends kept, dropped
(`rephrase_truncated`, `rephrase_missing_prefix`, `rephrase_no_qa_pairs`,
`rephrase_empty`) or failed (`rephrase_<error>`
once retries are spent, with the request body in the dead-letter output), so the job's
accounting identity covers the synthetic documents too. A server that is unreachable at the
start or dies mid-run fails the job instead (`ServerUnavailable`, transforms/llm/serving.py). Finished requests are cached by
(model, prompt, params): a re-run resumes, and synthetic ids are derived from the request, so a
re-run writes the same documents, never a second copy.
"""
from __future__ import annotations

import collections
import hashlib
import json
import random
import re
from dataclasses import field
from typing import Optional

import apache_beam as beam
import pyarrow as pa
import xxhash
from apache_beam.transforms.window import GlobalWindows

from classifiers.vllm_client import CHAT, completion_text, usage_tokens
from transforms.core.accounting import INPUT, Drop, Rejects, count
from transforms.core.columns import HIGH_QUALITY_MIN_BUCKET, QUALITY_BUCKET
from transforms.core.config import ConfigError, config_dataclass
from transforms.core.documents import ID, SOURCE, TEXT, URL, batch_from_rows
from transforms.core.extras import require
from transforms.core.stage import REJECTS, Contract, Stage
from transforms.llm.prompts import DEFAULT_PROMPTS, Template, load_templates
from transforms.llm.serving import ServedModelFn, ServingConfig, preflight

STAGE = "rephrase"
SYNTHETIC = "synthetic"
WRAP_STYLES = ["wrap_simple", "wrap_wikipedia", "wrap_scholarly", "wrap_qa"]
NEMOTRON_HIGH = ["nemotron_qa", "nemotron_distill", "nemotron_extract", "nemotron_list"]
QUEUED_PER_SLOT = 4  # unfinished requests per concurrency slot before `process` waits


@config_dataclass
class Sampling:
    """Nemotron-CC samples at temperature 0.5, top-p 0.9; a fixed seed makes outputs (and so
    the cache) reproducible. `max_tokens` caps every template's `max_output_tokens`."""

    temperature: float = 0.5
    top_p: float = 0.9
    seed: Optional[int] = 0
    max_tokens: Optional[int] = None


@config_dataclass
class RephraseConfig:
    vllm: ServingConfig
    prompts: str = DEFAULT_PROMPTS
    templates: dict[str, dict] = field(default_factory=dict)  # inline, added to / over `prompts`
    styles: list[str] = field(default_factory=lambda: list(WRAP_STYLES))
    bucket_column: str = QUALITY_BUCKET   # written by the `buckets` stage
    high_min: int = HIGH_QUALITY_MIN_BUCKET  # the `buckets` stage's name for the same threshold
    low_styles: list[str] = field(default_factory=lambda: ["nemotron_wikipedia"])
    high_styles: list[str] = field(default_factory=lambda: list(NEMOTRON_HIGH))
    sampling: Sampling = field(default_factory=Sampling)
    source_suffix: str = "_synthetic"
    output: str = SYNTHETIC             # output folder name of the synthetic documents
    split: str = "train"

    def __post_init__(self):
        known = load_templates(self.prompts, self.templates)
        unknown = sorted({*self.styles, *self.low_styles, *self.high_styles} - set(known))
        if unknown:
            raise ValueError(f"unknown template(s) {unknown}; known: {sorted(known)}")


def accept(text: str, finish_reason: Optional[str], prefix: Optional[str],
           prefix_required: bool = True) -> str:
    """Nemotron-CC post-filters: the kept text of an output, or `Drop` with the reason. The
    `prefix` line is removed; an output without it is dropped when `prefix_required`."""
    if finish_reason == "length":
        raise Drop("rephrase_truncated", "output reached max_tokens")
    text = text.strip()
    if prefix:
        if text[: len(prefix)].lower() == prefix.lower():
            text = text[len(prefix):].strip()
        elif prefix_required:
            raise Drop("rephrase_missing_prefix", text[:200])
    if not text:
        raise Drop("rephrase_empty")
    return text


# "Question:" / "Answer:" markers as models write them: optionally bulleted ("- ", "* "),
# numbered ("1. ", "Question 1:"), or in markdown bold ("**Question:**").
_MARK = r"^(?:[-*\u2022]\s*|\d+[.)]\s*)?(?:\*\*)?\s*{word}(?:\s*\d+)?\s*(?:\*\*)?\s*:\s*(?:\*\*)?\s*"
QUESTION = re.compile(_MARK.format(word="question"), re.IGNORECASE)
ANSWER = re.compile(_MARK.format(word="answer"), re.IGNORECASE)
INLINE_ANSWER = re.compile(r"\s(?:\*\*)?answer\s*:(?:\*\*)?\s*", re.IGNORECASE)


def qa_pairs(text: str) -> list[str]:
    """The question-answer pairs of a diverse-QA output, each `Question: ...\nAnswer: ...`.

    The output is split into lines; a line starting with a Question marker starts a pair, one
    starting with an Answer marker starts its answer, other lines continue the question (e.g.
    multiple-choice options) or the answer. Lines before the first question (the prefix line, a
    preamble) are not part of any pair; a question without an answer is left out."""
    pairs: list[tuple[list[str], Optional[list[str]]]] = []
    for raw in text.split("\n"):
        line = raw.strip()
        if not line:
            continue
        question = QUESTION.match(line)
        if question:
            line = line[question.end():]
            inline = INLINE_ANSWER.search(line)  # "Question: ...? Answer: ..." on one line
            pairs.append(([line[:inline.start()].strip()], [line[inline.end():].strip()])
                         if inline else ([line], None))
            continue
        if not pairs:
            continue
        answer = ANSWER.match(line)
        if answer and pairs[-1][1] is None:
            pairs[-1] = (pairs[-1][0], [line[answer.end():]])
        else:
            (pairs[-1][0] if pairs[-1][1] is None else pairs[-1][1]).append(line)
    return ["Question: " + "\n".join(q).strip() + "\nAnswer: " + "\n".join(a).strip()
            for q, a in pairs if a is not None and "".join(a).strip() and "".join(q).strip()]


def diverse_qa(chunk: str, output: str, max_pairs: int, seed_key: str) -> str:
    """Nemotron-CC diverse-QA post-processing, as we read NeMo Curator's: a random number
    (1..max_pairs) of the output's QA pairs, drawn at random, after the text the model was
    given. Deterministic: the draw is seeded by `seed_key` (seed, document id, chunk)."""
    pairs = qa_pairs(output)
    if not pairs:
        raise Drop("rephrase_no_qa_pairs", output[:200])
    rng = random.Random(int.from_bytes(hashlib.sha256(seed_key.encode()).digest()[:8], "big"))
    kept = rng.sample(pairs, rng.randint(1, min(max_pairs, len(pairs))))
    return chunk.strip() + "\n\n" + "\n\n".join(kept)


class RephraseFn(ServedModelFn, beam.DoFn):
    """Per batch: plan requests, queue them on the client (cache first) and yield the batch at
    once; a batch's synthetic documents and rejects follow when all its requests have finished
    (in a later `process` call, or at `finish_bundle`). Requests of consecutive batches share
    one queue, so the server sees `concurrency` requests in flight across batch boundaries."""

    def __init__(self, config: RephraseConfig):
        self.config = config
        self.templates = load_templates(config.prompts, config.templates)

    def styles_for(self, bucket) -> list[str]:
        if isinstance(bucket, int) and not isinstance(bucket, bool):
            return (self.config.high_styles if bucket >= self.config.high_min
                    else self.config.low_styles)
        return self.config.styles

    def sampling(self, template: Template) -> dict:
        s = self.config.sampling
        params = {"temperature": s.temperature, "top_p": s.top_p,
                  "max_tokens": min(template.max_output_tokens, s.max_tokens or 1 << 30)}
        return params | ({"seed": s.seed} if s.seed is not None else {})

    def plan(self, batch: pa.RecordBatch) -> list[dict]:
        """One entry per (document, style, chunk) with its request body."""
        columns = [c for c in (ID, TEXT, SOURCE, URL, self.config.bucket_column)
                   if c in batch.schema.names]
        model = self.config.vllm.model_name
        planned = []
        docs = batch.select(columns).to_pylist()
        texts = [doc.get(TEXT) or "" for doc in docs]
        # one tokenizer call for the batch's lines (the server's tokenizer: all queued at once)
        measures = iter(self.chunker.measure_all([t for t in texts if t.strip()]))
        for doc, text in zip(docs, texts):
            measured = next(measures) if text.strip() else ([], [])
            for style in self.styles_for(doc.get(self.config.bucket_column)):
                template = self.templates[style]
                chunks = self.chunker.chunks(text, template.max_input_tokens, measured)
                params = self.sampling(template)
                for index, chunk in enumerate(chunks):
                    planned.append({
                        "doc": doc, "style": style, "template": template, "chunk": chunk,
                        "chunk_index": index,
                        "chunk_count": len(chunks), "params": params,
                        "body": {"model": model, "messages": template.messages(chunk), **params}})
        return planned

    def start_bundle(self):
        self.pending: collections.deque = collections.deque()  # (planned, futures) per batch
        self.unfinished: collections.deque = collections.deque()  # futures, submission order

    def process(self, batch: pa.RecordBatch):
        self.raise_if_unavailable()
        planned = self.plan(batch)
        yield batch
        if planned:
            count(INPUT, len(planned))
            count("rephrase.requests", len(planned))
            futures = self.client.submit([(CHAT, p["body"]) for p in planned])
            self.pending.append((planned, futures))
            self.unfinished.extend(futures)
        # Back-pressure without a batch barrier: wait only while more than QUEUED_PER_SLOT x
        # concurrency requests are unfinished, so the next batch is planned and queued while
        # this one's tail is still generating.
        self.wait_until(QUEUED_PER_SLOT * self.config.vllm.concurrency)
        yield from self.finished()

    def finish_bundle(self):
        self.wait_until(0)
        for output in self.finished():
            yield beam.pvalue.TaggedOutput(output.tag, GlobalWindows.windowed_value(output.value))

    def wait_until(self, unfinished: int) -> None:
        while self.unfinished and (self.unfinished[0].done()
                                   or len(self.unfinished) > unfinished):
            self.unfinished.popleft().result()

    def finished(self):
        """Outputs of the oldest batches whose requests have all finished, in batch order."""
        while self.pending and all(f.done() for f in self.pending[0][1]):
            planned, futures = self.pending.popleft()
            yield from self.outputs(planned, [f.result() for f in futures])

    def outputs(self, planned: list[dict], results: list) -> list[beam.pvalue.TaggedOutput]:
        self.raise_if_unavailable(results)
        count("rephrase.failed_requests", sum(r.error is not None for r in results))
        count("rephrase.cache_hits", sum(r.cached for r in results))
        count("rephrase.retries", sum(max(0, r.attempts - 1) for r in results))
        rejects = Rejects(STAGE)
        synthetic = []
        for p, result in zip(planned, results):
            doc = p["doc"]
            where = {"parent_id": doc.get(ID), "style": p["style"], "chunk_index": p["chunk_index"]}
            if result.error:
                rejects.fail(f"rephrase_{result.error}", doc.get(ID), doc.get(SOURCE),
                             where | {"request": p["body"]}, result.detail)
                continue
            text, finish_reason = completion_text(result.response)
            prompt_tokens, completion_tokens = usage_tokens(result.response)
            count("rephrase.completion_tokens", completion_tokens)
            template = p["template"]
            try:
                kept = accept(text, finish_reason, template.prefix, template.prefix_required)
                if template.postprocess == "diverse_qa":
                    kept = diverse_qa(p["chunk"], kept, template.max_pairs, self.qa_seed_key(p))
            except Drop as drop:
                rejects.drop(drop.reason, doc.get(ID), doc.get(SOURCE),
                             where | {"output": text, "finish_reason": finish_reason}, drop.detail)
                continue
            synthetic.append(self.synthetic_doc(p, result.key, kept, prompt_tokens,
                                                completion_tokens))
        outputs = []
        if synthetic:
            outputs.append(beam.pvalue.TaggedOutput(SYNTHETIC, batch_from_rows(synthetic)))
        if len(rejects):
            outputs.append(beam.pvalue.TaggedOutput(REJECTS, rejects.take_batch()))
        return outputs

    def qa_seed_key(self, p: dict) -> str:
        """What seeds a chunk's diverse-QA draw: the sampling seed, document id, style, chunk."""
        seed = self.config.sampling.seed
        return f"{0 if seed is None else seed}\0{p['doc'].get(ID)}\0{p['style']}\0{p['chunk_index']}"

    def synthetic_doc(self, p: dict, request_key: str, text: str, prompt_tokens: int,
                      completion_tokens: int) -> dict:
        doc = p["doc"]
        return {
            ID: xxhash.xxh3_128_hexdigest(f"{doc.get(ID)}\0{request_key}".encode()),
            TEXT: text,
            SOURCE: f"{doc.get(SOURCE) or 'unknown'}{self.config.source_suffix}",
            URL: doc.get(URL),
            "parent_id": doc.get(ID),
            "style": p["style"],
            "family": p["template"].family,
            "model": self.config.vllm.model_name,
            "prompt_hash": p["template"].prompt_hash(),
            "chunk_index": p["chunk_index"],
            "chunk_count": p["chunk_count"],
            "sampling": json.dumps(p["params"], sort_keys=True),
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
        }


class Generate(beam.PTransform):
    """(documents, synthetic, rejects): the stage's work without its output sink."""

    def __init__(self, config: RephraseConfig):
        super().__init__()
        self.config = config

    def expand(self, batches):
        out = batches | "Rephrase" >> beam.ParDo(RephraseFn(self.config)).with_outputs(
            SYNTHETIC, REJECTS, main="documents")
        return out.documents, out[SYNTHETIC], out[REJECTS]


class Rephrase(Stage):
    Config = RephraseConfig

    def __init__(self, config: RephraseConfig, context=None):
        super().__init__(config, context)
        if not config.vllm.server_tokenizer:  # else it chunks with the server's tokenizer
            require("llm", "transformers", "tokenizers", by="stage 'rephrase'")

    def contract(self) -> Contract:
        return Contract(optional=(self.config.bucket_column,))

    def expand(self, documents):
        if self.context is None:
            raise ConfigError("the rephrase stage writes its own output: it needs a job context")
        preflight(self.config.vllm, documents.pipeline.options)
        documents, synthetic, rejects = documents | "Generate" >> Generate(self.config)
        synthetic | "WriteSynthetic" >> self.context.sink(self.config.output, self.config.split,
                                                          count_kept=True)
        return documents, rejects
