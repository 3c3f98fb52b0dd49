"""Peak memory of a 2-worker quality job: models shared per worker process vs one per DoFn.

The job scores the 499 DCLM pages (`../shared/data/dclm_quality`, repeated `--copies` times)
with two `quality` stages on the same fastText model (the DCLM recipe at fastText's default
2M buckets, ~800 MB in memory): P(hq) and P(cc), as an ensemble's members or a re-labelled
score would. The baseline is the same job whose stages load the model in every DoFn instance
(`setup` calling `load_model` directly), which is what every scoring stage did before models
went through Beam's `Shared`. Peak memory is the whole process tree's (driver and the two SDK
worker processes), sampled every 0.1 s; the ratio is from the same run.

    python bench/model_memory.py [--copies 4] [--bucket 2000000]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("SLUICE_QUIET", "1")

from measure import measured  # noqa: E402  (bench/measure.py)

from transforms.quality.classifier import QualityFn, QualityStage  # noqa: E402

SHARED = Path(os.environ.get("SLUICE_SHARED_DATA", REPO.parent / "shared" / "data"))


class PerInstanceQualityFn(QualityFn):
    """The baseline: every DoFn instance loads its own copy."""

    def setup(self):
        super().setup()
        self.model = self.load_model()


class PerInstanceQualityStage(QualityStage):
    def score_fn(self):
        return PerInstanceQualityFn(self.config)


def run(mode: str, data: str, model: str, output: str) -> None:
    """One job, in this process (the driver) with two SDK worker processes."""
    from pipelines.job import run_job
    from transforms.core import stage

    name = "quality" if mode == "shared" else "quality_per_instance"
    stage.STAGES["quality_per_instance"] = "__main__:PerInstanceQualityStage"
    stats = run_job({"input": [{"path": data}], "output": output, "stages": [
        {name: {"model": model, "label": "hq", "column": "p_hq"}},
        {name: {"model": model, "label": "cc", "column": "p_cc"}}]},
        ["--direct_num_workers=2", "--direct_running_mode=multi_processing"], log=lambda *_: None)
    assert stats["balanced"], stats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--bucket", type=int, default=2_000_000, help="fastText hash buckets")
    parser.add_argument("--run", choices=["shared", "per_instance"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        run(args.run, args.data, args.model, args.output)
        return
    from classifiers import fasttext_quality

    rows = [json.loads(line) for line in (SHARED / "dclm_quality" / "majority_data.jsonl").open()]
    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as work:
        data, model = os.path.join(work, "pages.jsonl"), os.path.join(work, "dclm.bin")
        with open(data, "w", encoding="utf-8") as f:
            for copy in range(args.copies):
                for row in rows:
                    f.write(json.dumps(row | {"id": f"{copy}-{row.get('id', '')}-{len(row['text'])}"})
                            + "\n")
        fasttext_quality.train([r["text"] for r in rows],
                               ["hq" if r["label"] else "cc" for r in rows], model,
                               bucket=args.bucket)
        print(f"model {os.path.getsize(model) / 2**20:.0f} MiB on disk; "
              f"{len(rows) * args.copies} documents; 2 worker processes")
        results = {}
        for mode in ("per_instance", "shared"):
            wall, peak = measured([sys.executable, __file__, "--run", mode, "--data", data,
                                   "--model", model, "--output", os.path.join(work, mode)])
            results[mode] = peak
            print(f"{mode:>12}: wall {wall:6.1f} s, peak {peak:7.0f} MiB (process tree)")
        print(f"shared / per-instance peak memory: {results['shared'] / results['per_instance']:.2f}")


if __name__ == "__main__":
    main()
