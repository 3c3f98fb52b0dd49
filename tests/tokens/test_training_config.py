"""configs/training.yaml, the README's training-ready job: from the bundled files alone it
decontaminates against HumanEval and tokenizes the demo corpus into Megatron shards."""
from __future__ import annotations

import json

import numpy as np
from tokenizers import Tokenizer

from pipelines.job import load_config, run_job
from tests.support import REPO
from transforms.core.files import read_arrow


def test_training_config_decontaminates_and_tokenizes_the_demo(tmp_path):
    data = load_config(str(REPO / "configs/training.yaml"), output=str(tmp_path / "out"))
    for spec in data["input"]:
        spec["path"] = str(REPO / spec["path"])
    for entry in data["stages"]:
        for name, params in entry.items():
            if name == "decontaminate":
                params["eval_sets"][0]["path"] = str(REPO / params["eval_sets"][0]["path"])
            if name == "tokenize":
                params["tokenizer"] = str(REPO / params["tokenizer"])
    stats = run_job(data, ["--direct_num_workers=2"], log=lambda *_: None)
    out = tmp_path / "out"
    assert stats["balanced"] and stats["kept"] > 0
    report = json.loads((out / "decontamination.json").read_text())
    assert report["eval_sets"]["humaneval"]["items"] == 164
    index = json.loads((out / "tokens" / "index.json").read_text())
    assert index["dtype"] == "uint16"
    tokenizer = Tokenizer.from_file(str(REPO / "data/tokenizers/all-MiniLM-L6-v2/tokenizer.json"))
    sep = tokenizer.token_to_id("[SEP]")
    tokens = np.concatenate([np.fromfile(path, dtype=np.uint16)
                             for path in sorted((out / "tokens").glob("*.bin"))])
    ids = [row["id"] for path in sorted((out / "tokens").glob("*.docs.arrow"))
           for row in read_arrow(str(path)).to_pylist()]
    assert len(ids) == stats["kept"] and int((tokens == sep).sum()) == len(ids)
    manifest = json.loads((out / "manifest.json").read_text())
    assert sum(s.get("tokenizer_tokens", 0) for s in manifest["sources"].values()) == len(tokens)
