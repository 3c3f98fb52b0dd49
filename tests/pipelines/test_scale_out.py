"""Nothing assumes one process: several local worker processes give exactly one worker's output."""
from __future__ import annotations

import pyarrow.dataset as ds
import pytest

from pipelines.job import load_config, run_job
from tests.support import REPO


def outcome(output) -> dict:
    docs = ds.dataset(output / "documents", format="arrow").to_table()
    rejects = ds.dataset(output / "dead_letter", format="arrow").to_table(
        columns=["id", "stage", "reason"])
    return {
        "documents": sorted(map(tuple, zip(*(docs.column(c).to_pylist() for c in ("id", "text"))))),
        "columns": sorted(docs.column_names),
        "rejects": sorted(map(tuple, zip(*(rejects.column(c).to_pylist()
                                           for c in ("id", "stage", "reason"))))),
    }


@pytest.mark.slow
def test_two_worker_processes_match_one_in_process_worker(tmp_path):
    data = load_config(str(REPO / "configs/demo.yaml"))
    data["input"] = [dict(spec, path=str(REPO / spec["path"])) for spec in data["input"]]
    data["stages"] = [{"heuristics": {"rule_sets": ["gopher_repetition", "fineweb"]}},
                      {"dedup": {"threshold": 0.8, "partitions": 4}}]  # default follows workers
    results = {}
    for workers, mode in ((1, "in_memory"), (2, "multi_processing")):
        output = tmp_path / f"workers-{workers}"
        stats = run_job(dict(data, output=str(output)),
                        [f"--direct_num_workers={workers}", f"--direct_running_mode={mode}"],
                        log=lambda *_: None)
        results[workers] = (stats, outcome(output))
    (one_stats, one), (two_stats, two) = results[1], results[2]
    assert one_stats["dropped"] and one_stats["dropped"].get("near_duplicate")
    assert one_stats == two_stats
    assert one == two
