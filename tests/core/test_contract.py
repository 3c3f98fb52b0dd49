"""The stage contract: a job whose stages cannot find their columns is refused before anything
runs, naming the stage, the column and the nearest names; the natural chains line up at their
defaults (`buckets` -> `rephrase`, `quality` -> `dedup`, `langid` -> `filter`)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipelines.job import JobConfig, check_job, run_job
from tests.support import DEMO_DATA, REPO
from transforms.core.columns import LANGUAGE, QUALITY_BUCKET, QUALITY_SCORE
from transforms.core.config import ConfigError, parse
from transforms.core.stage import build_stage, check_chain
from transforms.io.sink import read_output
from transforms.llm.rephrase import NEMOTRON_HIGH, RephraseConfig, RephraseFn
from transforms.quality.buckets import BucketsConfig

WIKI = str(DEMO_DATA / "wikipedia_revisions.jsonl.zst")


def job_data(tmp_path, stages: list[dict]) -> dict:
    return {"input": [{"path": WIKI}], "output": str(tmp_path / "out"), "stages": stages}


def test_a_filter_on_a_missing_column_is_refused_before_running(tmp_path):
    data = job_data(tmp_path, [{"heuristics": {}}, {"filter": {"column": "no_such_colunm",
                                                              "min": 0}}])
    with pytest.raises(ConfigError, match=r"stages\.1\.filter reads column 'no_such_colunm'"):
        run_job(data, ["--direct_num_workers=1"], log=lambda *_: None)
    assert not (tmp_path / "out").exists()  # nothing ran, nothing was written


def test_the_command_line_says_it_in_one_line_with_the_nearest_names(tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text(json.dumps(job_data(tmp_path, [{"filter": {"column": "titel",
                                                                 "values": ["x"]}}])))
    for command in ("check", "run"):
        done = subprocess.run([sys.executable, "-m", "pipelines", command, str(config)],
                              capture_output=True, text=True, cwd=REPO, timeout=120)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "'titel'" in lines[0] and "did you mean 'title'" in lines[0]
    assert not (tmp_path / "out").exists()


def test_input_fields_and_earlier_stages_satisfy_later_ones(tmp_path):
    # `title` comes from the input; `gopher_stop_words` from the heuristics stage's columns
    notes = check_job(parse(JobConfig, job_data(tmp_path, [
        {"heuristics": {"drop": False, "columns": True, "rule_sets": ["gopher_quality"]}},
        {"filter": {"column": "gopher_stop_words", "min": 2}},
        {"filter": {"column": "title", "values": ["x"], "missing": "keep"}},
        {"dedup": {}}])))
    assert notes == [f"stages.3.dedup: optional column '{QUALITY_SCORE}' is not provided; "
                     "the stage runs without it"]
    with pytest.raises(ConfigError, match="'gopher_stop_words'"):  # columns: false writes none
        check_job(parse(JobConfig, job_data(tmp_path, [
            {"heuristics": {"rule_sets": ["gopher_quality"]}},
            {"filter": {"column": "gopher_stop_words", "min": 2}}])))


def built(*entries: dict):
    return [build_stage(entry, index, None) for index, entry in enumerate(entries)]


def test_chains_line_up_at_their_defaults(tmp_path, quality_model, langid_model):
    table = str(tmp_path / "table.json")
    stages = built({"quality": {"model": str(quality_model)}},
                   {"buckets": {"columns": [QUALITY_SCORE], "table": table}},
                   {"rephrase": {"vllm": {"endpoint": "http://127.0.0.1:9/v1", "model": "m"}}},
                   {"langid": {"model": str(langid_model)}},
                   {"filter": {"column": LANGUAGE, "values": ["en"]}},
                   {"dedup": {}})
    assert check_chain(stages) == []  # nothing optional is missing: rephrase sees the buckets
    assert stages[2][1].config.bucket_column == BucketsConfig.column == QUALITY_BUCKET
    assert stages[2][1].config.high_min == stages[1][1].config.high_min


def test_rephrase_routes_by_the_buckets_stage_output_at_defaults(tmp_path, quality_model,
                                                                  shared_data):
    """The chain for real: quality -> buckets as a job; its documents, as rephrase reads them."""
    table = tmp_path / "table.json"
    stats = run_job({"input": [{"path": str(shared_data / "dclm_quality" /
                                            "majority_data.jsonl")}],
                     "output": str(tmp_path / "out"),
                     "stages": [{"quality": {"model": str(quality_model)}},
                                {"buckets": {"columns": [QUALITY_SCORE], "table": str(table)}}]},
                    ["--direct_num_workers=1"], log=lambda *_: None)
    assert stats["kept"] == 499
    fn = RephraseFn(parse(RephraseConfig, {"vllm": {"endpoint": "http://127.0.0.1:9/v1",
                                                           "model": "m"}}))
    docs = read_output(str(tmp_path / "out" / "documents")).to_pylist()
    routed = {tuple(fn.styles_for(d.get(fn.config.bucket_column))) for d in docs}
    assert routed == {("nemotron_wikipedia",), tuple(NEMOTRON_HIGH)}


@pytest.mark.parametrize("config", sorted(
    str(p.relative_to(REPO)) for p in [*REPO.glob("configs/*.yaml"),
                                       *REPO.glob("configs/recipes/*.yaml")]
    if p.name != "rephrase.yaml"))  # rephrase.yaml: `sluice rephrase`'s defaults, not a job
def test_every_shipped_config_passes_sluice_check(config, capsys):
    """Also those whose input comes at run time (`input: []`, an earlier job's output): their
    chain is checked from the stages alone, the columns the input must carry listed as notes."""
    from pipelines.cli import main

    assert main(["check", str(REPO / config)]) == 0
    assert f"{REPO / config}: ok (" in capsys.readouterr().out


def test_a_run_time_input_turns_unprovided_columns_into_notes(tmp_path, capsys):
    from pipelines.cli import main

    config = tmp_path / "job.yaml"
    config.write_text(json.dumps({"input": [], "output": str(tmp_path / "out"),
                                  "stages": [{"filter": {"column": "label", "values": [1]}}]}))
    assert main(["check", str(config)]) == 0
    assert "stages.0.filter reads column 'label', which no earlier stage writes: the input must " \
           "carry it" in capsys.readouterr().out


def test_unreadable_input_is_reported_as_unreadable_not_as_a_missing_column(tmp_path):
    """When no sampled record can be read, the check cannot know the input's columns: the stage's
    column becomes a note, and the run reports each unreadable record as a failure."""
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n" * 3)
    data = {"input": [{"path": str(broken)}], "output": str(tmp_path / "out"),
            "stages": [{"filter": {"column": "label", "values": [1]}}]}
    notes = check_job(parse(JobConfig, data))
    assert notes == ["stages.0.filter reads column 'label', which no earlier stage writes: the "
                     "input must carry it"]
    readable = tmp_path / "readable.jsonl"
    readable.write_text('{"id": "a", "text": "some text"}\n')
    data["input"] = [{"path": str(broken)}, {"path": str(readable)}]
    with pytest.raises(ConfigError, match=r"stages\.0\.filter reads column 'label'"):
        check_job(parse(JobConfig, data))
    data["input"] = [{"path": str(broken)}]
    data["allow_empty"] = True
    stats = run_job(data, ["--direct_num_workers=1"], log=lambda *_: None)
    assert stats["input"] == 3 and stats["failed"] == 3


def test_a_column_that_appears_only_after_the_first_records_is_found(tmp_path):
    """JSONL has no schema: when the first records lack a column a stage reads, the check reads
    further before refusing the job (a column nowhere in the file is still refused)."""
    mixed = tmp_path / "mixed.jsonl"
    rows = [{"id": f"w{i}", "text": "plain text"} for i in range(500)]
    rows += [{"id": f"d{i}", "text": "labelled text", "label": 1} for i in range(5)]
    mixed.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = {"input": [{"path": str(mixed)}], "output": str(tmp_path / "out"),
            "stages": [{"filter": {"column": "label", "values": [1]}}]}
    assert check_job(parse(JobConfig, data)) == []
    data["stages"] = [{"filter": {"column": "labl", "values": [1]}}]
    with pytest.raises(ConfigError, match="did you mean 'label'"):
        check_job(parse(JobConfig, data))
