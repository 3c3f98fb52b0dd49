"""Licences as a mixing dimension: the `license` column from ingest (a per-input setting or the
records' own field), the tier table, `license_filter`, tokens by licence in the manifest, and the
apply report's schedule, licence and effective-token sections, on the bundled real corpus
(Wikipedia revisions: CC BY-SA 3.0; dolma's Common Crawl test documents: Apache-2.0)."""
from __future__ import annotations

import base64
import json
import math
import re
from collections import Counter

import pytest
import zstandard

from pipelines.cli import main
from pipelines.job import run_job
from pipelines.mixture_data import R_STAR, effective_tokens
from tests.support import REPO
from transforms.core.config import ConfigError, parse
from transforms.io.sink import read_output
from transforms.mixture.licenses import LicenseFilter, license_tier

DEMO = REPO / "data" / "demo"
IN_PROCESS = ["--direct_num_workers=1"]
ASCII_TOKEN = re.compile(r"[^ \t\n\v\f\r]+")  # the manifests' unit: ASCII-whitespace tokens


def tokens(text: str) -> int:
    return len(ASCII_TOKEN.findall(text))


def wiki_records(n: int) -> list[dict]:
    with zstandard.open(DEMO / "wikipedia_revisions.jsonl.zst", "rt", encoding="utf-8") as f:
        return [json.loads(line) for line, _ in zip(f, range(n))]


def cc_net_records() -> list[dict]:
    with open(DEMO / "cc_net_en_head-0174.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Three inputs: Wikipedia revisions with a per-input licence, dolma's Common Crawl documents
    with another, and a file whose records carry their own `license` (Apache-2.0 for the cc_net
    documents, CC BY-SA 3.0 spelt two ways for Wikipedia revisions, none for two of them)."""
    tmp = tmp_path_factory.mktemp("licence")
    wiki = wiki_records(40)
    mixed = ([dict(r, license="Apache-2.0") for r in cc_net_records()]
             + [dict(r, id=f"own-{r['id']}", license=lic) for r, lic in
                zip(wiki[:4], ["CC-BY-SA-3.0", "CC BY-SA 3.0", "CC-BY-SA-3.0", "cc_by_sa_3.0"])]
             + [dict(r, id=f"bare-{r['id']}") for r in wiki[4:6]])
    return [
        {"path": write_jsonl(tmp / "wiki.jsonl", wiki[6:]), "source": "wikipedia",
         "license": "CC-BY-SA-3.0"},
        {"path": str(DEMO / "common_crawl_documents.jsonl.gz"), "source": "common_crawl",
         "license": "Apache-2.0"},
        {"path": write_jsonl(tmp / "mixed.jsonl", mixed), "source": "mixed"},
    ]


def test_tiers_of_real_licence_ids():
    assert license_tier("CC-BY-SA-3.0") == license_tier("CC BY-SA 3.0") == "copyleft"
    assert license_tier("Apache-2.0") == license_tier("MIT") == "permissive"
    assert license_tier("CC-BY-4.0") == "permissive"
    assert license_tier("CC0-1.0") == "public_domain"
    assert license_tier("CC-BY-NC-SA-4.0") == license_tier("CC-BY-ND-4.0") == "restricted"
    assert license_tier("GPL-3.0-only") == "copyleft"
    assert license_tier(None) == license_tier("") == license_tier("all rights?") == "unknown"
    with pytest.raises(ConfigError, match="allow_tiers"):
        parse(LicenseFilter.Config, {"allow_tiers": ["free"]})
    with pytest.raises(ConfigError, match="every document would be dropped"):
        LicenseFilter(parse(LicenseFilter.Config, {"allow_tiers": []}))


def test_ingest_carries_the_licence_and_the_manifest_counts_its_tokens(inputs, tmp_path):
    out = tmp_path / "out"
    stats = run_job({"input": inputs, "output": str(out), "stages": []}, IN_PROCESS,
                    log=lambda *_: None)
    assert stats["balanced"] and stats["failed"] == 0 and not stats["dropped"]
    table = read_output(str(out / "documents"), ["id", "text", "source", "license"])
    rows = table.to_pylist()
    by_source = Counter((r["source"], r["license"]) for r in rows)
    assert by_source == {("wikipedia", "CC-BY-SA-3.0"): 34, ("common_crawl", "Apache-2.0"): 10,
                         ("mixed", "Apache-2.0"): 10, ("mixed", "CC-BY-SA-3.0"): 2,
                         ("mixed", "CC BY-SA 3.0"): 1, ("mixed", "cc_by_sa_3.0"): 1,
                         ("mixed", None): 2}
    expected: dict[str, dict] = {}
    for r in rows:
        entry = expected.setdefault(r["license"] or "(none)", {"docs": 0, "tokens": 0})
        entry["docs"] += 1
        entry["tokens"] += tokens(r["text"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["outputs"]["documents"]["licenses"] == expected
    assert expected["Apache-2.0"]["docs"] == 20 and expected["Apache-2.0"]["tokens"] > 1000


def test_license_filter_keeps_permissive_and_counts_every_drop(inputs, tmp_path):
    out = tmp_path / "out"
    stage = {"license_filter": {"allow_tiers": ["public_domain", "permissive"]}}
    stats = run_job({"input": inputs, "output": str(out), "stages": [stage]}, IN_PROCESS,
                    log=lambda *_: None)
    assert stats["input"] == 60
    assert stats["dropped"] == {"license_tier_copyleft": 34 + 4, "license_missing": 2}
    assert stats["kept"] == 20 and stats["failed"] == 0
    assert stats["input"] == stats["kept"] + sum(stats["dropped"].values()) + stats["failed"]
    table = read_output(str(out / "documents"), ["license", "license_tier"])
    assert set(table.column("license").to_pylist()) == {"Apache-2.0"}
    assert set(table.column("license_tier").to_pylist()) == {"permissive"}
    # `unknown` allowed explicitly keeps the two records without a licence; an id allowed by
    # name keeps one copyleft spelling, whatever its tier.
    out2 = tmp_path / "out2"
    stage = {"license_filter": {"allow_tiers": ["permissive", "unknown"],
                                "allow": ["cc-by-sa-3.0"], "deny": ["CC BY-SA 3.0"]}}
    stats = run_job({"input": inputs, "output": str(out2), "stages": [stage]}, IN_PROCESS,
                    log=lambda *_: None)
    # CC-BY-SA-3.0, CC BY-SA 3.0 and cc_by_sa_3.0 normalise alike: deny wins over allow
    assert stats["dropped"] == {"license_denied": 38}
    assert stats["kept"] == 22


def test_effective_tokens_follow_muennighoff():
    assert effective_tokens(100, 100) == 100
    assert effective_tokens(100, 200) == pytest.approx(100 + 100 * 15.4 * (1 - math.exp(-1 / 15.4)))
    assert effective_tokens(100, 100 * 10**6) == pytest.approx(100 * (1 + R_STAR), rel=1e-6)
    assert effective_tokens(0, 0) == 0


@pytest.fixture(scope="module")
def scheduled(inputs, tmp_path_factory):
    """A two-phase schedule applied to the Wikipedia revisions and dolma's documents, whose
    records carry their licences; `sluice mixture report --applied` on the output."""
    tmp = tmp_path_factory.mktemp("schedule")
    wiki = write_jsonl(tmp / "wiki.jsonl", [dict(r, license="CC-BY-SA-3.0")
                                            for r in wiki_records(60)])
    web = write_jsonl(tmp / "web.jsonl", [dict(r, license="Apache-2.0") for r in cc_net_records()])
    mixture = tmp / "mixture.json"
    mixture.write_text(json.dumps({"weights": {"wiki": 0.5, "web": 0.5}, "schedule": [
        {"fraction": 0.75, "weights": {"wiki": 0.8, "web": 0.2}},
        {"fraction": 0.25, "weights": {"wiki": 0.2, "web": 0.8}}]}))
    out = tmp / "out"
    assert main(["mixture", "apply", "--mixture", str(mixture), "--inputs", f"wiki={wiki}",
                 f"web={web}", "--tokens", "60000", "--output", str(out), *IN_PROCESS,
                 "--direct_running_mode=in_memory"]) == 0
    assert main(["mixture", "report", "--applied", str(out)]) == 0
    return out


def test_report_draws_the_schedule_and_what_each_phase_wrote(scheduled):
    page = (scheduled / "report.html").read_text()
    assert "<h2>Schedule</h2>" in page
    images = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]+)"', page)
    captions = [alt for alt, _ in images]
    assert any("Mixture schedule" in c and "written" in c for c in captions)
    png = base64.b64decode(images[0][1])
    assert png.startswith(b"\x89PNG")
    summary = json.loads((scheduled / "schedule.json").read_text())
    written = [p["written_tokens"] for p in summary["phases"]]
    for tokens_written in written:  # the per-phase table shows what each phase wrote
        assert f"{tokens_written:,}" in page or f"{float(tokens_written):,.4f}" in page


def _cell(page: str, label: str) -> list[str]:
    row = re.search(rf"<tr><td>{re.escape(label)}</td>(.*?)</tr>", page)
    assert row, label
    return re.findall(r"<td>([^<]*)</td>", row.group(1))


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def test_report_tables_licence_tokens_and_effective_tokens(scheduled):
    page = (scheduled / "report.html").read_text()
    assert "Tokens by licence" in page and "Effective training tokens" in page
    manifests = [json.loads((scheduled / f"phase-{k}" / "manifest.json").read_text())
                 for k in (0, 1)]
    for licence, tier in (("CC-BY-SA-3.0", "copyleft"), ("Apache-2.0", "permissive")):
        cells = _cell(page, licence)
        assert cells[0] == tier
        assert _number(cells[2]) == sum(m["outputs"]["documents"]["licenses"][licence]["tokens"]
                                        for m in manifests)
    # By hand from the written shards: tokens of all rows (D) and of distinct ids (U) per
    # domain over both phases, then D' = U + U R* (1 - exp(-R/R*)), R = D/U - 1.
    seen: dict[str, dict] = {}
    for k in (0, 1):
        for row in read_output(str(scheduled / f"phase-{k}" / "documents"),
                               ["id", "text", "source"]).to_pylist():
            entry = seen.setdefault(row["source"], {"D": 0, "U": 0, "ids": set()})
            entry["D"] += tokens(row["text"])
            if row["id"] not in entry["ids"]:
                entry["ids"].add(row["id"])
                entry["U"] += tokens(row["text"])
    wiki = seen["wiki"]
    assert wiki["D"] > wiki["U"]  # the schedule repeats Wikipedia revisions
    repeats = wiki["D"] / wiki["U"] - 1
    by_hand = wiki["U"] + wiki["U"] * 15.4 * (1 - math.exp(-repeats / 15.4))
    cells = _cell(page, "wiki")
    assert _number(cells[0]) == wiki["D"] and _number(cells[1]) == wiki["U"]
    assert _number(cells[3]) == pytest.approx(by_hand, abs=0.5)  # the table rounds to a token
    overall = _cell(page, "overall")
    assert _number(overall[0]) == sum(e["D"] for e in seen.values())
    assert float(overall[6].replace(",", "")) == 0.0  # no synthetic documents in this corpus


def test_report_without_a_model_or_an_apply_is_refused(tmp_path):
    assert main(["mixture", "report"]) == 2
    assert main(["mixture", "report", "--applied", str(tmp_path)]) == 2


def test_a_fitted_mixture_with_a_schedule_is_drawn(shared_data, tmp_path):
    regmix = shared_data / "regmix"
    out = tmp_path / "linear"
    assert main(["mixture", "fit", "--mixtures", str(regmix / "train_mixture_1m.csv"),
                 "--losses", str(regmix / "train_pile_loss_1m.csv"), "--model", "linear",
                 "--candidates", "2000", "--target", "pile_cc", "--output", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert "<h2>Schedule</h2>" not in page
    mixture = json.loads((out / "mixture.json").read_text())
    code_heavy = {d: (0.3 if "github" in d else 0.7 / (len(mixture["weights"]) - 1))
                  for d in mixture["weights"]}
    mixture["schedule"] = [{"fraction": 0.9, "weights": mixture["weights"]},
                           {"fraction": 0.1, "weights": code_heavy}]
    (out / "mixture.json").write_text(json.dumps(mixture))
    assert main(["mixture", "report", "--model", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert "<h2>Schedule</h2>" in page and 'alt="Mixture schedule' in page
    assert "written by the apply run" not in page  # planned only: nothing was applied
