"""`tokenize`: a real job on the demo corpus, read back with a Megatron reader written here from
the MMIDIDX v1 specification (not with the writer's code), must give exactly
`tokenizer.encode(text).ids + [eos]` of every kept document, in each shard's order."""
from __future__ import annotations

import glob
import json
import re
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from tests.support import DEMO_DATA, Collected, test_pipeline
from tests.support.tiny_model import build_tiny_model

tokenizers = pytest.importorskip("tokenizers")

IN_PROCESS = ["--direct_num_workers=1"]
DEMO_INPUT = [
    {"path": str(DEMO_DATA / "wikipedia_revisions*"), "source": "wikipedia"},
    {"path": str(DEMO_DATA / "cc_net_en_head-*.jsonl"), "source": "cc_net"},
    {"path": str(DEMO_DATA / "common_crawl_documents.jsonl.gz"), "source": "common_crawl"},
    {"path": str(DEMO_DATA / "*.warc.gz"), "source": "common_crawl"},
    {"path": str(DEMO_DATA / "*.warc.wet"), "source": "common_crawl"},
]
POISON = "zzpoisonzz"


# --- an independent reader of the MMIDIDX v1 format --------------------------------------------

SPEC_DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64,
               7: np.float32, 8: np.uint16}


def read_indexed_dataset(prefix: str) -> tuple[int, list[list[int]]]:
    """(dtype code, sequences) of `prefix.idx` + `prefix.bin`, from the format's description."""
    with open(prefix + ".idx", "rb") as f:
        data = f.read()
    assert data[:9] == b"MMIDIDX\x00\x00"
    version, = struct.unpack_from("<Q", data, 9)
    code, = struct.unpack_from("<B", data, 17)
    n_seq, = struct.unpack_from("<Q", data, 18)
    n_doc, = struct.unpack_from("<Q", data, 26)
    assert version == 1
    offset = 34
    lengths = np.frombuffer(data, dtype="<i4", count=n_seq, offset=offset)
    offset += 4 * n_seq
    pointers = np.frombuffer(data, dtype="<i8", count=n_seq, offset=offset)
    offset += 8 * n_seq
    documents = np.frombuffer(data, dtype="<i8", count=n_doc, offset=offset)
    offset += 8 * n_doc
    assert offset == len(data), "trailing bytes in the .idx"
    assert documents[0] == 0 and documents[-1] == n_seq and np.all(np.diff(documents) >= 0)
    dtype = np.dtype(SPEC_DTYPES[code]).newbyteorder("<")
    with open(prefix + ".bin", "rb") as f:
        tokens = f.read()
    assert len(tokens) == int(lengths.sum()) * dtype.itemsize
    sequences = []
    for length, pointer in zip(lengths, pointers):
        sequences.append(np.frombuffer(tokens, dtype=dtype, count=int(length),
                                       offset=int(pointer)).astype(np.int64).tolist())
    return code, sequences


def shard_prefixes(output: Path) -> list[str]:
    return sorted(p[:-4] for p in glob.glob(str(output / "tokens" / "*.idx")))


def shard_ids(prefix: str) -> list[str]:
    with open(prefix + ".docs.arrow", "rb") as f:
        return pa.ipc.open_stream(f).read_all().column("id").to_pylist()


# --- tokenizers built locally -----------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory) -> Path:
    """The tests' byte-level BPE (384 ids, EOS `</s>`), trained on the demo's cc_net text."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model",
                            sorted(DEMO_DATA.glob("cc_net_en_head-*.jsonl")))


def word_level(path: Path, vocab_size: int, eos: str | None = "[EOS]") -> Path:
    """A word-level tokenizer.json of `vocab_size` ids whose words of the demo text sit above
    id 65,535 (so uint16 could not hold them)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words: dict[str, None] = {}
    for line in open(DEMO_DATA / "cc_net_en_head-0091.jsonl", encoding="utf-8"):
        words.update(dict.fromkeys(re.findall(r"\w+|[^\w\s]+", json.loads(line)["text"])))
    vocab = {"[UNK]": 0, **({eos: 1} if eos else {})}
    top = list(words)[:4000]
    filler = vocab_size - len(vocab) - len(top)
    vocab.update({f"<unused{i}>": len(vocab) + i for i in range(filler)})
    vocab.update({w: len(vocab) + i for i, w in enumerate(top)})
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(path))
    return path


def run(config: dict, tmp_path: Path, name: str = "out") -> Path:
    from pipelines.job import run_job

    output = tmp_path / name
    run_job({"input": DEMO_INPUT, "output": str(output), "stages": [{"tokenize": config}]},
            IN_PROCESS, log=lambda *_: None)
    return output


def kept_documents(output: Path) -> dict[str, dict]:
    from transforms.io.sink import read_output

    return {row["id"]: row for row in
            read_output(str(output / "documents"), ["id", "text", "source"]).to_pylist()}


# --- tests ----------------------------------------------------------------------------------------

def test_megatron_and_arrow_read_back_the_tokenizers_encoding(tiny_tokenizer, tmp_path):
    from tokenizers import Tokenizer

    from transforms.io.sink import read_output

    output = run({"tokenizer": str(tiny_tokenizer), "format": "both"}, tmp_path)
    tokenizer = Tokenizer.from_file(str(tiny_tokenizer / "tokenizer.json"))
    eos = tokenizer.token_to_id("</s>")
    docs = kept_documents(output)
    assert len(docs) > 500
    expected = {i: tokenizer.encode(d["text"]).ids + [eos] for i, d in docs.items()}

    seen, per_source = [], {}
    prefixes = shard_prefixes(output)
    assert prefixes and [Path(p).name for p in prefixes] == [
        f"train-{i:05d}-of-{len(prefixes):05d}" for i in range(len(prefixes))]
    for prefix in prefixes:
        code, sequences = read_indexed_dataset(prefix)
        assert code == 8  # uint16: 384 ids
        ids = shard_ids(prefix)
        assert len(ids) == len(sequences)
        for doc_id, sequence in zip(ids, sequences):
            assert sequence == expected[doc_id], doc_id
            source = docs[doc_id]["source"]
            per_source[source] = per_source.get(source, 0) + len(sequence)
        seen += ids
    assert sorted(seen) == sorted(docs)  # every kept document, once

    arrow = read_output(str(output / "tokenized")).to_pylist()
    assert sorted(r["id"] for r in arrow) == sorted(docs)
    assert all(r["input_ids"] == expected[r["id"]] for r in arrow)
    assert pa.types.is_int32(read_output(str(output / "tokenized")).schema.field(
        "input_ids").type.value_type)

    manifest = json.loads((output / "manifest.json").read_text())
    assert {s: c["tokenizer_tokens"] for s, c in manifest["sources"].items()} == per_source
    assert all(c["tokens"] > 0 for c in manifest["sources"].values())  # whitespace, beside
    index = json.loads((output / "tokens" / "index.json").read_text())
    assert index["totals"]["tokens"] == sum(per_source.values())
    assert "input_ids" not in read_output(str(output / "documents")).column_names
    assert not list(output.glob(".parts*")) and not list(tmp_path.glob("out.staging-*"))


def test_large_vocabulary_is_int32_and_the_shuffle_is_seeded(tmp_path, capsys):
    from tokenizers import Tokenizer

    from pipelines.cli import main
    from transforms.tokens.shuffle import shard_of, shuffle_key

    path = word_level(tmp_path / "words.json", 70_000)
    output = tmp_path / "out"
    inputs = [str(DEMO_DATA / "cc_net_en_head-*.jsonl"), str(DEMO_DATA / "wikipedia_revisions*")]
    code = main(["tokenize", *inputs, "--tokenizer", str(path), "--output", str(output),
                 "--eos", "[EOS]", "--shuffle-seed", "7", "--shuffle-shards", "3",
                 "--set", "shuffle.run_bytes=65536", *IN_PROCESS])
    assert code == 0, capsys.readouterr().err
    tokenizer = Tokenizer.from_file(str(path))
    docs = kept_documents(output)
    prefixes = shard_prefixes(output)
    assert len(prefixes) == 3
    seen, above = [], 0
    for shard, prefix in enumerate(prefixes):
        code, sequences = read_indexed_dataset(prefix)
        assert code == 4  # int32: 70,000 ids
        ids = shard_ids(prefix)
        for doc_id, sequence in zip(ids, sequences):
            assert sequence == tokenizer.encode(docs[doc_id]["text"]).ids + [1]
            above += sum(t > 65535 for t in sequence)
        keys = [shuffle_key(i, 7) for i in ids]
        assert keys == sorted(keys) and {shard_of(k, 3) for k in keys} == {shard}
        seen += ids
    assert above > 1000 and sorted(seen) == sorted(docs)


def test_a_tokenizer_without_the_eos_fails_before_running(tmp_path, capsys):
    from pipelines.cli import main
    from pipelines.job import run_job
    from transforms.core.config import ConfigError

    path = word_level(tmp_path / "no_eos.json", 5000, eos=None)
    for eos, message in (("auto", "names no EOS token"), ("</s>", "has no eos token '</s>'"),
                         (7000, "eos id 7000 is outside")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            run_job({"input": DEMO_INPUT, "output": str(tmp_path / "out"),
                     "stages": [{"tokenize": {"tokenizer": str(path), "eos": eos}}]}, IN_PROCESS)
    assert main(["tokenize", str(DEMO_DATA / "*.jsonl"), "--tokenizer", str(path),
                 "--output", str(tmp_path / "out"), *IN_PROCESS]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "names no EOS token" in err
    assert not (tmp_path / "out").exists()


class _Poisoned:
    def __init__(self, model):
        self.model = model

    def encode(self, texts, add_special_tokens):
        if any(POISON in t for t in texts):
            raise RuntimeError("tokenizer failed")
        return self.model.encode(texts, add_special_tokens)


def _poisoned_fn():
    from transforms.tokens.tokenize import TokenizeFn

    class PoisonedTokenizeFn(TokenizeFn):
        def load_model(self):
            return _Poisoned(super().load_model())
    return PoisonedTokenizeFn


def test_a_failure_inside_tokenization_is_a_tokenize_error(tiny_tokenizer):
    import apache_beam as beam
    from tokenizers import Tokenizer

    from transforms.core.config import parse
    from transforms.core.documents import batch_from_rows
    from transforms.core.stage import documents_and_rejects
    from transforms.tokens.tokenize import TokenizeConfig, resolve_tokenizer

    config = parse(TokenizeConfig, {"tokenizer": str(tiny_tokenizer)})
    resolved = resolve_tokenizer(config.tokenizer, config.eos, config.bos)
    rows = [{"id": f"d{i}", "source": "demo",
             "text": f"document {i} text" + (f" {POISON}" if i in (3, 7) else "")}
            for i in range(12)]
    with test_pipeline() as p:
        batches = p | beam.Create([batch_from_rows(rows[:6]), batch_from_rows(rows[6:])])
        kept, rejects = documents_and_rejects(batches, "Tokenize",
                                              _poisoned_fn()(config, resolved))
        kept_rows, reject_rows = Collected(kept, "kept"), Collected(rejects, "rejects")
    tokenizer = Tokenizer.from_file(str(tiny_tokenizer / "tokenizer.json"))
    failed = {r["id"]: r for r in reject_rows.rows()}
    assert set(failed) == {"d3", "d7"}
    assert {r["reason"] for r in failed.values()} == {"tokenize_error"}
    assert {r["kind"] for r in failed.values()} == {"failed"}
    assert all("tokenizer failed" in r["detail"] for r in failed.values())
    kept = kept_rows.rows()
    assert sorted(r["id"] for r in kept) == sorted(f"d{i}" for i in range(12) if i not in (3, 7))
    assert all(r["input_ids"] == tokenizer.encode(r["text"]).ids + [1] for r in kept)
