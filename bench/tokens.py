"""Tokenization throughput: `sluice tokenize` (Megatron .bin/.idx output) against datatrove's
DocumentTokenizer, same tokenizer, same documents, same worker count, in one run.

    python bench/tokens.py [--repeat 20] [--workers 2] [--vocab 8192] \
        [--datatrove-python /tmp/dtvenv2/bin/python]

The documents are the demo corpus's JSONL and WARC text (data/demo) repeated `--repeat` times
under new ids, written to 4 JSONL files both tools read. The tokenizer is a byte-level BPE of
`--vocab` ids trained here with `tokenizers` on that text (the tests' recipe), EOS `</s>`.
Each tool runs as its own process, timed from start to exit (startup included): Sluice with
Beam's local runner and `--direct_num_workers`, datatrove with LocalPipelineExecutor
(tasks = workers = `--workers`) and `shuffle_documents=False` (Sluice does not shuffle unless
asked). Sluice also writes its documents/ and dead-letter outputs; datatrove writes only tokens.
datatrove needs its own venv: `python -m venv /tmp/dtvenv2 &&
/tmp/dtvenv2/bin/pip install "datatrove[processing]==0.10.1"`.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATATROVE = r"""
import sys
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.tokens import DocumentTokenizer
corpus, tokenizer, out, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
LocalPipelineExecutor(pipeline=[
    JsonlReader(corpus, glob_pattern="*.jsonl"),
    DocumentTokenizer(out + "/tokens", tokenizer_name_or_path=tokenizer, eos_token="</s>",
                      shuffle_documents=False, batch_size=1000),
], tasks=workers, workers=workers, logging_dir=out + "/logs").run()
"""


def corpus(folder: Path, repeat: int) -> list[str]:
    from transforms.io.ingest import READERS, Failure, InputSpec, detect_format, expand_inputs

    texts = []
    for pattern in ("*.jsonl*", "*.warc.gz", "*.warc.wet"):
        for _, path, _ in expand_inputs([InputSpec(path=str(REPO / "data" / "demo" / pattern))]):
            for record in READERS[detect_format(path)](path):
                if not isinstance(record, Failure) and isinstance(record.get("text"), str) \
                        and record["text"].strip():
                    texts.append(record["text"])
    folder.mkdir(parents=True, exist_ok=True)
    files = [open(folder / f"part-{i}.jsonl", "w", encoding="utf-8") for i in range(4)]
    n = 0
    for r in range(repeat):
        for i, text in enumerate(texts):
            files[n % 4].write(json.dumps({"id": f"r{r}-{i}", "text": text}) + "\n")
            n += 1
    for f in files:
        f.close()
    return texts


def train_tokenizer(texts: list[str], path: Path, vocab: int) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tokenizer.save(str(path))
    return path


def timed(command: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    elapsed = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--datatrove-python", default="/tmp/dtvenv2/bin/python")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-tokenize-") as tmp:
        tmp = Path(tmp)
        texts = corpus(tmp / "corpus", args.repeat)
        tokenizer = train_tokenizer(texts, tmp / "tokenizer.json", args.vocab)
        docs = len(texts) * args.repeat
        mb = sum(p.stat().st_size for p in (tmp / "corpus").glob("*.jsonl"))
        print(f"corpus: {docs:,} documents ({mb / 2**20:.1f} MiB JSONL), tokenizer: byte-level "
              f"BPE, {args.vocab:,} ids; {args.workers} worker(s)")

        env = dict(os.environ, SLUICE_QUIET="1")
        sluice_s = timed([sys.executable, "-m", "pipelines", "tokenize",
                          str(tmp / "corpus" / "*.jsonl"), "--tokenizer", str(tokenizer),
                          "--eos", "</s>", "--output", str(tmp / "sluice"),
                          f"--direct_num_workers={args.workers}"], env)
        index = json.loads((tmp / "sluice" / "tokens" / "index.json").read_text())
        sluice = (index["totals"]["docs"], index["totals"]["tokens"], sluice_s)

        dt_s = timed([args.datatrove_python, "-c", DATATROVE, str(tmp / "corpus"),
                      str(tokenizer), str(tmp / "datatrove"), str(args.workers)],
                     dict(os.environ, HF_HUB_OFFLINE="1"))
        itemsize = 2 if args.vocab < 65535 else 4
        ds = glob.glob(str(tmp / "datatrove" / "tokens" / "*.ds"))
        dt_tokens = sum(os.path.getsize(p) for p in ds) // itemsize
        dt_docs = sum(os.path.getsize(p + ".index") for p in ds) // 8
        datatrove = (dt_docs, dt_tokens, dt_s)

    print(f"{'':10} {'docs':>9} {'tokens':>12} {'seconds':>8} {'docs/s':>9} {'tokens/s':>11}")
    for name, (n_docs, n_tokens, seconds) in (("sluice", sluice), ("datatrove", datatrove)):
        print(f"{name:10} {n_docs:>9,} {n_tokens:>12,} {seconds:>8.2f} {n_docs / seconds:>9,.0f} "
              f"{n_tokens / seconds:>11,.0f}")
    print(f"ratio sluice/datatrove: docs/s {sluice[0] / sluice[2] / (datatrove[0] / datatrove[2]):.2f}x, "
          f"tokens/s {sluice[1] / sluice[2] / (datatrove[1] / datatrove[2]):.2f}x")
    if (sluice[0], sluice[1]) != (datatrove[0], datatrove[1]):
        print(f"note: the outputs differ in size (sluice {sluice[:2]}, datatrove {datatrove[:2]})")


if __name__ == "__main__":
    main()
