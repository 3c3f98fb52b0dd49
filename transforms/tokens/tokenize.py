"""The `tokenize` stage: documents -> token ids with a Hugging Face tokenizer, written as
Megatron-LM indexed datasets (`tokens/`) and/or tokenized Arrow (`tokenized/`).

The tokenizer is a local `tokenizer.json`, a transformers tokenizer folder, or a hub name (when
online). It is resolved once, when the job is built: the configured EOS/BOS (a token string or
an id; EOS defaults to the tokenizer's own `eos_token`) must exist, else the job stops before
anything runs with one line. Workers get the tokenizer's JSON and run it batched through the
Rust `tokenizers` library (`encode_batch_fast`, the same ids as `encode_batch`), with
truncation and padding off and the tokenizer's own post-processor off unless
`add_special_tokens: true`: each document is `[bos] + encode(text).ids + [eos]`.

A batch whose tokenization raises goes through the one failure path (`ScoreBatchFn`): it is
redone row by row and the rows that raise leave as failed `tokenize_error` dead-letter records.
Real token counts (BOS/EOS included) are Beam counters `tokens.<source>`, which `stats.json`
carries and the manifest puts beside each source's whitespace counts.

Outputs (the job stages and commits them with everything else):

- `format: megatron` (default) or `both`: `tokens/<split>-NNNNN-of-MMMMM.{bin,idx,docs.arrow}`
  (`transforms/tokens/megatron.py`) and `tokens/index.json` (dtype, vocabulary, special ids,
  shards with counts and sha256). Without `shuffle`, each worker streams its bundle's batches
  into its own shard pair, rolled at `shard_bytes` of tokens; pieces are named by their first
  document id after the pipeline's committed bundles are known, so names are deterministic for
  given pieces (their number follows the runner's bundling). With `shuffle: {seed, shards}`,
  documents are spread over exactly `shards` shards by a seeded random key and sorted by it in
  bounded memory (`transforms/tokens/shuffle.py`): same input and seed, same shards, whatever
  the worker count.
- `format: arrow` or `both`: `tokenized/` Arrow shards (`id`, `source`, `input_ids`
  list<int32>) through the job's sink, for HF trainers (`datasets.load_dataset("arrow", ...)`).

The documents themselves go on unchanged (no `input_ids` column), so tokenize is usually the last
stage; a stage after it does not change what was tokenized.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Annotated, Literal, Optional, Union

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue
from pydantic import Field

from transforms.core.accounting import count
from transforms.core.config import ConfigError, config_dataclass
from transforms.core.documents import ID, SOURCE, TEXT
from transforms.core.extras import require
from transforms.core.files import write_json_atomic
from transforms.core.scoring import ScoreBatchFn, Scored
from transforms.core.stage import Contract, Stage, documents_and_rejects
from transforms.tokens import shuffle as shuffling
from transforms.tokens.megatron import DTYPE_CODES, EXTENSIONS, MegatronWriter, token_dtype

INPUT_IDS = "input_ids"
TOKENS_COUNTER = "tokens."  # + source: real tokens written per source
INDEX_FILE = "index.json"
# EOS names tried when the tokenizer folder does not name its eos_token
EOS_NAMES = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "[SEP]")


@config_dataclass
class ShuffleConfig:
    seed: int = 0
    shards: Annotated[int, Field(ge=1)] = 8
    run_bytes: Annotated[int, Field(ge=2**16)] = 256 * 2**20  # sorted-run size before a spill


@config_dataclass
class TokenizeConfig:
    tokenizer: Annotated[str, Field(min_length=1)]  # tokenizer.json, a folder, or a hub name
    eos: Optional[Union[int, str]] = "auto"  # token or id appended; "auto": the tokenizer's
    bos: Optional[Union[int, str]] = None    # token or id prepended
    add_special_tokens: bool = False  # also run the tokenizer's own post-processor
    format: Literal["megatron", "arrow", "both"] = "megatron"
    output: Annotated[str, Field(pattern=r"^[\w.-]+$")] = "tokens"
    arrow_output: Annotated[str, Field(pattern=r"^[\w.-]+$")] = "tokenized"
    split: Annotated[str, Field(pattern=r"^[\w.-]+$")] = "train"
    shard_bytes: Annotated[int, Field(ge=2**20)] = 1024 * 2**20  # of .bin per shard
    doc_ids: bool = True  # write <shard>.docs.arrow (id, source of each sequence)
    shuffle: Optional[ShuffleConfig] = None


# --- the tokenizer, resolved in the driver --------------------------------------------------------

@dataclass(frozen=True)
class ResolvedTokenizer:
    json: str
    vocab_size: int
    eos_id: Optional[int]
    bos_id: Optional[int]

    @property
    def dtype(self) -> np.dtype:
        return token_dtype(self.vocab_size)

    @property
    def key(self) -> str:
        return hashlib.sha256(self.json.encode()).hexdigest()


def _special_from_config(folder: str, name: str) -> Optional[str]:
    """`eos_token`/`bos_token` of a transformers folder's tokenizer_config.json or
    special_tokens_map.json (a string or `{"content": ...}`)."""
    for file in ("tokenizer_config.json", "special_tokens_map.json"):
        path = os.path.join(folder, file)
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as f:
            value = json.load(f).get(name)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str) and value:
            return value
    return None


def _load(spec: str):
    """(tokenizers.Tokenizer, folder holding its config files or None) of a path or hub name."""
    from tokenizers import Tokenizer

    if os.path.isfile(spec):
        return Tokenizer.from_file(spec), os.path.dirname(os.path.abspath(spec))
    if os.path.isdir(spec):
        path = os.path.join(spec, "tokenizer.json")
        if os.path.isfile(path):
            return Tokenizer.from_file(path), spec
        try:  # a slow (e.g. SentencePiece-only) folder: transformers converts it
            from transformers import AutoTokenizer
        except ImportError:
            raise ConfigError(f"tokenizer folder '{spec}' has no tokenizer.json; converting it "
                              'needs transformers: pip install "sluice[llm]"') from None
        return AutoTokenizer.from_pretrained(spec, use_fast=True).backend_tokenizer, spec
    if "://" in spec:
        with FileSystems.open(spec) as f:
            return Tokenizer.from_str(f.read().decode("utf-8")), None
    try:
        tokenizer = Tokenizer.from_pretrained(spec)
    except Exception as exc:  # noqa: BLE001  offline, unknown name, no tokenizer.json
        message = " ".join(str(exc).split())[:300]
        raise ConfigError(f"tokenizer '{spec}' is not a local file or folder and could not be "
                          f"loaded from the Hugging Face hub: {message}") from None
    folder = None
    try:
        from huggingface_hub import hf_hub_download

        folder = os.path.dirname(hf_hub_download(spec, "tokenizer_config.json"))
    except Exception:  # noqa: BLE001  no config file: EOS falls back to the known names
        pass
    return tokenizer, folder


def _token_id(tokenizer, spec: str, value: Union[int, str], what: str) -> int:
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if isinstance(value, int):
        if not 0 <= value < size:
            raise ConfigError(f"stage 'tokenize': {what} id {value} is outside the vocabulary "
                              f"of tokenizer '{spec}' ({size} ids)")
        return value
    token_id = tokenizer.token_to_id(value)
    if token_id is None:
        raise ConfigError(f"stage 'tokenize': tokenizer '{spec}' has no {what} token "
                          f"{value!r}; set {what} to one of its tokens or ids, or {what}: null")
    return token_id


@functools.lru_cache(maxsize=8)
def resolve_tokenizer(spec: str, eos: Union[int, str, None], bos: Union[int, str, None]
                      ) -> ResolvedTokenizer:
    """Load the tokenizer and check its special tokens: ConfigError (one line) otherwise."""
    try:
        tokenizer, folder = _load(spec)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001  a corrupt file, say
        raise ConfigError(f"stage 'tokenize': cannot load tokenizer '{spec}': "
                          f"{' '.join(str(exc).split())[:300]}") from None
    if eos == "auto":
        eos = _special_from_config(folder, "eos_token") if folder else None
        if eos is None:
            eos = next((name for name in EOS_NAMES if tokenizer.token_to_id(name) is not None),
                       None)
        if eos is None:
            raise ConfigError(f"stage 'tokenize': tokenizer '{spec}' names no EOS token (no "
                              f"eos_token in its config, none of {', '.join(EOS_NAMES)}); set "
                              "eos to a token or id, or eos: null")
    eos_id = None if eos is None else _token_id(tokenizer, spec, eos, "eos")
    bos_id = None if bos is None else _token_id(tokenizer, spec, bos, "bos")
    return ResolvedTokenizer(tokenizer.to_str(), tokenizer.get_vocab_size(with_added_tokens=True),
                             eos_id, bos_id)


# --- tokenization ---------------------------------------------------------------------------------

class _Model:
    """The worker's tokenizer (a weak-referenceable holder for Beam's `Shared`)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def encode(self, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch_fast(
            texts, add_special_tokens=add_special_tokens)]


def token_ids(texts: list[str], model: _Model, resolved: ResolvedTokenizer,
              add_special_tokens: bool = False) -> pa.ListArray:
    """`[bos] + ids + [eos]` of every text as one list<int32> array."""
    ids = model.encode(texts, add_special_tokens)
    head = [] if resolved.bos_id is None else [resolved.bos_id]
    tail = [] if resolved.eos_id is None else [resolved.eos_id]
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    lengths += len(head) + len(tail)
    offsets = np.zeros(len(ids) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.empty(int(offsets[-1]), dtype=np.int32)
    for i, row in enumerate(ids):
        start = offsets[i]
        if head:
            flat[start] = head[0]
        flat[start + len(head):offsets[i + 1] - len(tail)] = row
        if tail:
            flat[offsets[i + 1] - 1] = tail[0]
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))


class TokenizeFn(ScoreBatchFn):
    """Adds `input_ids` to each batch and counts the tokens per source."""

    stage = "tokenize"

    def __init__(self, config: TokenizeConfig, resolved: ResolvedTokenizer):
        self.resolved = resolved
        super().__init__(config)

    def model_key(self) -> str:
        return self.resolved.key

    def load_model(self) -> _Model:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_str(self.resolved.json)
        tokenizer.no_truncation()
        tokenizer.no_padding()
        return _Model(tokenizer)

    def score(self, batch: pa.RecordBatch) -> Scored:
        texts = batch.column(TEXT).to_pylist()
        ids = token_ids(texts, self.model, self.resolved, self.config.add_special_tokens)
        lengths = np.diff(ids.offsets.to_numpy())
        sources = (batch.column(SOURCE).to_pylist() if SOURCE in batch.schema.names
                   else [None] * batch.num_rows)
        per_source: dict[str, int] = {}
        for source, n in zip(sources, lengths.tolist()):
            key = "none" if source is None else str(source)
            per_source[key] = per_source.get(key, 0) + n
        for source, n in per_source.items():
            count(TOKENS_COUNTER + source, n)
        return Scored(columns={INPUT_IDS: ids})


# --- writing ---------------------------------------------------------------------------------------

def _tokens_only(batch: pa.RecordBatch) -> pa.RecordBatch:
    """id, source, input_ids: what the token outputs carry."""
    source = (batch.column(SOURCE) if SOURCE in batch.schema.names
              else pa.nulls(batch.num_rows, pa.string()))
    return pa.record_batch([batch.column(ID).cast(pa.string()), source.cast(pa.string()),
                            batch.column(INPUT_IDS)], names=[ID, SOURCE, INPUT_IDS])


def _without_ids(batch: pa.RecordBatch) -> pa.RecordBatch:
    keep = [i for i, name in enumerate(batch.schema.names) if name != INPUT_IDS]
    return pa.RecordBatch.from_arrays([batch.column(i) for i in keep],
                                      schema=pa.schema([batch.schema.field(i) for i in keep]))


class WriteMegatronFn(beam.DoFn):
    """Batches -> shard pairs of about `shard_bytes`, streamed as they come (no shuffle)."""

    def __init__(self, parts: str, split: str, dtype: np.dtype, shard_bytes: int,
                 doc_ids: bool):
        self.parts, self.split, self.dtype = parts, split, dtype
        self.shard_bytes, self.doc_ids = shard_bytes, doc_ids

    def start_bundle(self):
        self.writer: Optional[MegatronWriter] = None

    def process(self, batch: pa.RecordBatch):
        if not batch.num_rows:
            return
        try:
            if self.writer is None:
                self.writer = MegatronWriter(FileSystems.join(
                    self.parts, f"{self.split}-part-{os.urandom(16).hex()}"), self.dtype,
                    self.doc_ids)
            self.writer.write(batch.column(INPUT_IDS), batch.column(ID), batch.column(SOURCE))
            if self.writer.bytes >= self.shard_bytes:
                self.writer, writer = None, self.writer
                yield writer.close()
        except BaseException:
            if self.writer is not None:
                self.writer, writer = None, self.writer
                writer.abort()
            raise

    def finish_bundle(self):
        if self.writer is not None:
            self.writer, writer = None, self.writer
            yield WindowedValue(writer.close(), MIN_TIMESTAMP, [GlobalWindow()])


class WriteShuffledShardFn(beam.DoFn):
    """(shard, its batches) -> the shard pair, in shuffle-key order (sorted runs, spilled)."""

    def __init__(self, parts: str, split: str, dtype: np.dtype, shuffle: ShuffleConfig,
                 doc_ids: bool):
        self.parts, self.split, self.dtype = parts, split, dtype
        self.shuffle, self.doc_ids = shuffle, doc_ids

    def process(self, element):
        shard, batches = element
        writer = MegatronWriter(FileSystems.join(
            self.parts, f"{self.split}-shuffled-{shard:05d}-{os.urandom(8).hex()}"), self.dtype,
            self.doc_ids)
        try:
            for batch in shuffling.sorted_batches(batches, self.shuffle.run_bytes,
                                                  FileSystems.join(self.parts, "runs")):
                writer.write(batch.column(INPUT_IDS), batch.column(ID), batch.column(SOURCE))
        except BaseException:
            writer.abort()
            raise
        yield writer.close() | {"shard": shard}


def finalize_tokens(entries: list[dict], parts: str, final_dir: str, split: str,
                    meta: dict) -> dict:
    """Move the committed shard pairs into `final_dir` as `<split>-NNNNN-of-MMMMM.*` (in shard
    order when shuffled, else by first document id) and write `index.json`. Runs once, after
    every writer; a rerun finds the files already moved and redoes nothing else."""
    entries = sorted(entries, key=lambda e: (e.get("shard", -1), e["first_id"], e["sha256"]))
    try:
        FileSystems.mkdirs(final_dir)
    except IOError:
        pass  # already there
    exts = [ext for ext in EXTENSIONS if ext != ".docs.arrow" or meta["doc_ids"]]
    sources: dict[str, dict] = {}
    for i, entry in enumerate(entries):
        name = f"{split}-{i:05d}-of-{len(entries):05d}"
        sources_done = entry.pop("sources")
        for source, counts in sources_done.items():
            total = sources.setdefault(source, {"docs": 0, "tokens": 0})
            total["docs"] += counts["docs"]
            total["tokens"] += counts["tokens"]
        old = [FileSystems.join(parts, entry["name"] + ext) for ext in exts]
        new = [FileSystems.join(final_dir, name + ext) for ext in exts]
        moving = [(o, n) for o, n in zip(old, new) if FileSystems.exists(o)]
        if moving:
            FileSystems.rename([o for o, _ in moving], [n for _, n in moving])
        entry["name"] = name
        del entry["first_id"]
    index = meta | {
        "shards": entries,
        "totals": {key: sum(e[key] for e in entries) for key in ("docs", "tokens", "bytes")},
        "sources": dict(sorted(sources.items())),
    }
    write_json_atomic(FileSystems.join(final_dir, INDEX_FILE), index)
    return index


class Tokenize(Stage):
    """Tokenize documents into Megatron and/or Arrow token outputs (see the module doc)."""

    Config = TokenizeConfig

    def __init__(self, config: TokenizeConfig, context=None):
        super().__init__(config, context)
        require("tokens", "tokenizers", by="stage 'tokenize'")
        if config.format != "megatron" and config.output == config.arrow_output:
            raise ConfigError("stage 'tokenize': output and arrow_output must differ")
        self.resolved = resolve_tokenizer(config.tokenizer, config.eos, config.bos)

    def contract(self) -> Contract:
        return Contract(reads=(TEXT,))

    def meta(self) -> dict:
        config, resolved = self.config, self.resolved
        return {"format": "MMIDIDX", "version": 1, "tokenizer": config.tokenizer,
                "vocab_size": resolved.vocab_size, "dtype": resolved.dtype.name,
                "dtype_code": DTYPE_CODES[resolved.dtype], "eos_id": resolved.eos_id,
                "bos_id": resolved.bos_id, "add_special_tokens": config.add_special_tokens,
                "shuffle": (None if config.shuffle is None else
                            {"seed": config.shuffle.seed, "shards": config.shuffle.shards}),
                "doc_ids": config.doc_ids}

    def expand(self, documents):
        config, context = self.config, self.context
        tokenized, rejects = documents_and_rejects(documents, "Tokenize",
                                                   TokenizeFn(config, self.resolved))
        tokens = tokenized | "TokenColumns" >> beam.Map(_tokens_only)
        if config.format in ("megatron", "both"):
            parts = FileSystems.join(context.staging_dir, f"{config.output}-megatron")
            dtype = self.resolved.dtype
            if config.shuffle is None:
                entries = tokens | "WriteMegatron" >> beam.ParDo(WriteMegatronFn(
                    parts, config.split, dtype, config.shard_bytes, config.doc_ids))
            else:
                entries = (tokens
                           | "KeyByShard" >> beam.ParDo(shuffling.KeyByShardFn(
                               config.shuffle.seed, config.shuffle.shards))
                           | "Shuffle" >> beam.GroupByKey()
                           | "WriteShuffled" >> beam.ParDo(WriteShuffledShardFn(
                               parts, config.split, dtype, config.shuffle, config.doc_ids)))
            _ = (entries
                 | "CollectTokenShards" >> beam.combiners.ToList()
                 | "FinalizeTokens" >> beam.Map(
                     finalize_tokens, parts, FileSystems.join(context.output_dir, config.output),
                     config.split, self.meta()))
        if config.format in ("arrow", "both"):
            tokens | "WriteTokenized" >> context.sink(config.arrow_output, config.split)
        return tokenized | "Documents" >> beam.Map(_without_ids), rejects
