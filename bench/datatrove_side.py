"""The datatrove side of the benches that run it as their baseline, shared by bench/dedup.py,
bench/large_dedup.py and bench/decontaminate.py. Imports nothing of Sluice: it runs in
datatrove's own venv (datatrove 0.10.1 pins other versions of fasttext and xxhash)."""
from __future__ import annotations

import re
from pathlib import Path


def word_pattern():
    """datatrove's WordTokenizer over `\\w+` words: like for like with Sluice's tokenisation
    (datatrove's default needs spaCy)."""
    from datatrove.utils.word_tokenizers import WordTokenizer

    class WordPattern(WordTokenizer):
        def word_tokenize(self, text):
            return re.findall(r"\w+", text)

        def sent_tokenize(self, text):
            return [text]

        def span_tokenize(self, text):
            return [m.span() for m in re.finditer(r"\w+", text)]

    return WordPattern()


def encode_strings_for_xxhash4() -> None:
    """datatrove pins xxhash<4, which hashed str; xxhash 4 needs bytes."""
    import xxhash
    from datatrove.utils.hashes import xxhash as datatrove_xxhash

    def encoded(hash_fn):
        return lambda data: hash_fn(data.encode() if isinstance(data, str) else data)

    datatrove_xxhash.xxhash32 = encoded(xxhash.xxh32_intdigest)
    datatrove_xxhash.xxhash64 = encoded(xxhash.xxh64_intdigest)


def minhash_dedup(corpus: str, out: str, workers: int) -> None:
    """datatrove's documented four-step MinHash dedup, default MinhashConfig (14 x 8), `\\w+`
    words, one task per JSONL file of `corpus`."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets,
                                                  MinhashDedupCluster, MinhashDedupFilter,
                                                  MinhashDedupSignature)
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    encode_strings_for_xxhash4()
    files = len(list(Path(corpus).glob("*.jsonl")))
    config = MinhashConfig()
    out = Path(out)
    logs = str(out / "logs")
    steps = [
        ([JsonlReader(corpus), MinhashDedupSignature(str(out / "signatures"), config=config,
                                                     language=word_pattern())], files),
        ([MinhashDedupBuckets(str(out / "signatures"), str(out / "buckets"), config=config)],
         config.num_buckets),
        ([MinhashDedupCluster(str(out / "buckets"), str(out / "remove"), config=config,
                              save_cluster_id=True)], 1),
        ([JsonlReader(corpus),
          MinhashDedupFilter(str(out / "remove"), load_cluster_ids=True,
                             exclusion_writer=JsonlWriter(str(out / "removed"))),
          JsonlWriter(str(out / "kept"))], files),
    ]
    for i, (pipeline, tasks) in enumerate(steps):
        LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=workers,
                              logging_dir=f"{logs}/{i}").run()


if __name__ == "__main__":  # `python bench/datatrove_side.py CORPUS OUT WORKERS`: no Sluice imports
    import sys

    minhash_dedup(sys.argv[1], sys.argv[2], int(sys.argv[3]))
