"""RegMix propose/fit/predict/report on the real RegMix proxy runs, and the `mixture` stage
sampling real files to a mixture and token budget with the repeat cap."""
from __future__ import annotations

import base64
import csv
import json
import re
import shutil
import subprocess

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.testing.util import assert_that
from scipy.stats import spearmanr

from classifiers.regmix import (ProposalConfig, domain_tokens, own_domain, propose,
                                sample_candidates, token_prior)
from pipelines.cli import main
from pipelines.mixture import resolve_targets
from pipelines.mixture_io import read_csv
from tests.support import test_pipeline
from transforms.core.columns import MIXTURE_COPY
from transforms.core.config import ConfigError, parse
from transforms.io.sink import read_output
from transforms.mixture.sampling import (UNKNOWN_SOURCE, UNSAMPLED, MixtureStage, copies_for,
                                         load_weights, plan_sampling)

# RegMix's Pile token shares (sail-sg/regmix mixture_config/synthesize_mixture.py).
PILE_PRIOR = {
    "arxiv": 0.113285273, "freelaw": 0.079608651, "nih_exporter": 0.003913491,
    "pubmed_central": 0.185375901, "wikipedia_en": 0.051081359, "dm_mathematics": 0.015962925,
    "github": 0.101750772, "philpapers": 0.003707518, "stackexchange": 0.066529351,
    "enron_emails": 0.001750772, "gutenberg_pg_19": 0.027085479, "pile_cc": 0.236869207,
    "ubuntu_irc": 0.01184346, "europarl": 0.007929969, "hackernews": 0.008032956,
    "pubmed_abstracts": 0.038825953, "uspto_backgrounds": 0.046446962}
BEAM = ["--direct_num_workers=1", "--direct_running_mode=in_memory"]


def write_json(path, data):
    path.write_text(json.dumps(data))
    return str(path)


# --- proposals ----------------------------------------------------------------------------------

def test_domain_tokens_reads_manifests_and_plain_counts(tmp_path):
    manifest = write_json(tmp_path / "manifest.json", {
        "totals": {"tokens": 30}, "sources": {"web": {"docs": 2, "tokens": 20},
                                              "code": {"docs": 1, "tokens": 10}}})
    plain = write_json(tmp_path / "tokens.json", {"web": 5, "books": {"tokens": 7}})
    assert domain_tokens([manifest, plain]) == {"web": 25, "code": 10, "books": 7}
    bad = write_json(tmp_path / "bad.json", {"web": "many"})
    with pytest.raises(ValueError, match="web"):
        domain_tokens([bad])
    assert token_prior({"a": 1, "b": 3}) == {"a": 0.25, "b": 0.75}


def test_propose_follows_regmix_constraints():
    domains = sorted(PILE_PRIOR)
    prior = np.array([PILE_PRIOR[d] for d in domains])
    prior /= prior.sum()
    config = ProposalConfig()
    mixtures = propose(prior, 256, config, seed=7)
    assert mixtures.shape == (256, len(domains))
    assert np.allclose(mixtures.sum(axis=1), 1.0, atol=len(domains) * config.minimum)
    on_grid = mixtures / config.minimum
    assert np.allclose(on_grid, np.round(on_grid))
    assert len(np.unique(np.round(on_grid).astype(int), axis=0)) == 256
    assert (mixtures <= np.minimum(prior * config.max_usage, 1.0) + config.minimum).all()
    # Small Dirichlet strengths give sparse mixtures, large ones spread out: both must occur.
    nonzero = (mixtures > 0).sum(axis=1)
    assert nonzero.min() <= 4 and nonzero.max() >= 12
    assert np.array_equal(mixtures, propose(prior, 256, config, seed=7))
    assert not np.array_equal(mixtures, propose(prior, 256, config, seed=8))
    with pytest.raises(ValueError, match="distinct"):
        propose(prior, 500, ProposalConfig(sample_multiplier=1), seed=7)


def test_propose_cli_writes_the_regmix_csv_layout(tmp_path):
    tokens = write_json(tmp_path / "tokens.json",
                        {f"train_the_pile_{d}": int(share * 1e9) for d, share in PILE_PRIOR.items()})
    out = tmp_path / "mixtures.csv"
    assert main(["mixture", "propose", "--domains", tokens, "--n", "64", "--output", str(out),
                 "--seed", "1"]) == 0
    index, columns, values = read_csv(str(out))
    assert index == [str(i) for i in range(1, 65)]
    assert columns == sorted(f"train_the_pile_{d}" for d in PILE_PRIOR)
    assert np.allclose(values.sum(axis=1), 1.0, atol=0.01)


def test_candidates_reject_rows_over_a_cap():
    rng = np.random.default_rng(0)
    prior = np.array([0.02, 0.49, 0.49])
    drawn = sample_candidates(prior, 2000, ProposalConfig(max_usage=5.0), rng)
    assert 0 < len(drawn) < 2000
    assert (drawn[:, 0] <= 0.1 + 1e-9).all()


# --- regression on the real RegMix proxy runs ---------------------------------------------------

def test_targets_and_own_domain_resolve_regmix_names(shared_data):
    _, domains, _ = read_csv(str(shared_data / "regmix" / "train_mixture_1m.csv"))
    _, losses, _ = read_csv(str(shared_data / "regmix" / "train_pile_loss_1m.csv"))
    assert resolve_targets(["pile_cc"], losses) == {"metric/the_pile_pile_cc_val_loss": 1.0}
    assert resolve_targets(["pile_cc=3", "hackernews=1"], losses) == {
        "metric/the_pile_pile_cc_val_loss": 0.75, "metric/the_pile_hackernews_val_loss": 0.25}
    with pytest.raises(ConfigError, match="matches 0"):
        resolve_targets(["no_such_domain"], losses)
    with pytest.raises(ConfigError, match="matches 2"):  # pubmed_central and pubmed_abstracts
        resolve_targets(["pubmed"], losses)
    assert domains[own_domain("metric/the_pile_pubmed_central_val_loss", domains)] == \
        "train_the_pile_pubmed_central"
    assert own_domain("metric/something_else", domains) is None


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One LightGBM + linear fit on the 512 real 1M-parameter runs (Pile-CC target)."""
    from tests.support import SHARED_DATA

    if not SHARED_DATA.is_dir():
        pytest.skip("real sample data not found")
    regmix = SHARED_DATA / "regmix"
    out = tmp_path_factory.mktemp("fit") / "model"
    tokens = tmp_path_factory.mktemp("tokens") / "tokens.json"
    write_json(tokens, {f"train_the_pile_{d}": int(s * 1e10) for d, s in PILE_PRIOR.items()})
    assert main(["mixture", "fit", "--mixtures", str(regmix / "train_mixture_1m.csv"),
                 "--losses", str(regmix / "train_pile_loss_1m.csv"), "--target", "pile_cc",
                 "--model", "both", "--output", str(out), "--folds", "3",
                 "--candidates", "20000", "--domains", str(tokens)]) == 0
    return regmix, out, tokens


def test_fit_beats_linear_and_finds_a_pile_cc_heavy_optimum(fitted):
    regmix, out, _ = fitted
    fit = json.loads((out / "fit.json").read_text())
    cv = fit["cross_validation"]
    target = "metric/the_pile_pile_cc_val_loss"
    assert cv["lightgbm"][target]["spearman"] > 0.95
    assert cv["linear"][target]["spearman"] < cv["lightgbm"][target]["spearman"]
    assert fit["chosen"] == "lightgbm"
    gains = fit["importances"]["lightgbm"][target]
    assert max(gains, key=gains.get) == "train_the_pile_pile_cc"
    mixture = json.loads((out / "mixture.json").read_text())
    weights = mixture["weights"]
    assert abs(sum(weights.values()) - 1) < 1e-9
    assert max(weights, key=weights.get) == "train_the_pile_pile_cc"
    assert weights["train_the_pile_pile_cc"] > 3 * PILE_PRIOR["pile_cc"]
    # The optimum respects the caps (15 x token share) the candidates were drawn under.
    assert all(weights[f"train_the_pile_{d}"] <= min(15 * s, 1) + 1e-9
               for d, s in PILE_PRIOR.items())
    observed = np.loadtxt(out / "train.csv", delimiter=",", skiprows=1, usecols=18)
    assert mixture["predicted"] < np.percentile(observed, 5)


def test_predict_ranks_unseen_runs(fitted, tmp_path):
    regmix, out, _ = fitted
    predictions = tmp_path / "predicted.csv"
    assert main(["mixture", "predict", "--model", str(out), "--mixtures",
                 str(regmix / "test_mixture_1m.csv"), "--output", str(predictions)]) == 0
    with open(predictions) as f:
        predicted = {row["index"]: float(row["predicted"]) for row in csv.DictReader(f)}
    with open(regmix / "test_pile_loss_1m.csv") as f:
        observed = {row["index"]: float(row["metric/the_pile_pile_cc_val_loss"])
                    for row in csv.DictReader(f)}
    assert len(predicted) == 256
    rho = spearmanr([predicted[i] for i in observed], list(observed.values()))[0]
    assert rho > 0.97


def test_fit_a_weighted_objective_and_reject_bad_inputs(shared_data, tmp_path):
    regmix = shared_data / "regmix"
    out = tmp_path / "linear"
    args = ["mixture", "fit", "--mixtures", str(regmix / "train_mixture_1m.csv"), "--losses",
            str(regmix / "train_pile_loss_1m.csv"), "--model", "linear", "--candidates", "5000"]
    assert main([*args, "--target", "pile_cc=2", "--target", "hackernews", "--output",
                 str(out)]) == 0
    saved = json.loads((out / "model.json").read_text())
    assert saved["targets"] == pytest.approx({"metric/the_pile_pile_cc_val_loss": 2 / 3,
                                              "metric/the_pile_hackernews_val_loss": 1 / 3})
    assert saved["prior_source"] == "mean of the training mixtures"
    assert "objective" in json.loads((out / "fit.json").read_text())["cross_validation"]["linear"]
    predictions = tmp_path / "p.csv"
    assert main(["mixture", "predict", "--model", str(out), "--mixtures",
                 str(regmix / "test_mixture_1B.csv"), "--output", str(predictions)]) == 0
    with open(predictions) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 64
    row = rows[0]
    assert float(row["predicted"]) == pytest.approx(
        2 / 3 * float(row["predicted/metric/the_pile_pile_cc_val_loss"])
        + 1 / 3 * float(row["predicted/metric/the_pile_hackernews_val_loss"]))
    # A losses file that shares no index, and one with a non-numeric column, are refused.
    other = tmp_path / "other.csv"
    other.write_text("index,metric/x\n9999,1.0\n")
    assert main([*args[:4], "--losses", str(other), "--model", "linear", "--target", "x", "--output",
                 str(tmp_path / "x")]) == 2
    broken = tmp_path / "broken.csv"
    broken.write_text("index,metric/x\n1,abc\n")
    assert main([*args[:4], "--losses", str(broken), "--target", "x", "--output", str(tmp_path / "y")]) == 2


def test_report_is_self_contained_with_the_requested_sections(fitted, tmp_path):
    regmix, out, tokens = fitted
    human = tmp_path / "human.yaml"  # RegMix's human (Pile) mixture, in its YAML layout
    human.write_text("train:\n" + "".join(f"  train_the_pile_{d}: {s}\n"
                                          for d, s in PILE_PRIOR.items() if d != "pile_cc")
                     + "  train_the_pile_pile_cc: 0.1121\n")
    assert main(["mixture", "report", "--model", str(out), "--eval",
                 f"1B={regmix / 'test_mixture_1B.csv'},{regmix / 'test_pile_loss_1B.csv'}",
                 "--compare", f"human={human}", "--tokens", str(10**11)]) == 0
    page = (out / "report.html").read_text()
    for section in ("Fit quality", "Recommended mixture", "Partial dependence",
                    "Token budget and epochs per domain", "trivial Spearman", "human"):
        assert section in page
    images = re.findall(r'src="([^"]+)"', page)
    assert len(images) >= 4 and all(i.startswith("data:image/png;base64,") for i in images)
    assert base64.b64decode(images[0].split(",", 1)[1]).startswith(b"\x89PNG")
    assert "http://" not in page and "https://" not in page
    # Per-target uncertainty: bootstrap intervals on the CV Spearman, ± RMSE on the prediction.
    assert re.search(r"0\.\d{3} \[0\.\d{3}, 0\.\d{3}\]", page)
    assert re.search(r"pile_cc \d\.\d{4} ± 0\.\d{4}", page)
    # A budget far beyond the tokens available caps small domains at 4 epochs.
    assert "Repeat cap hit by" in page
    assert main(["mixture", "report", "--model", str(out), "--tokens", "1000"]) == 0


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_report_renders_in_headless_chromium(fitted, tmp_path):
    _, out, _ = fitted
    png = tmp_path / "report.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}",
                    "--window-size=1400,3000", (out / "report.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    import matplotlib.image

    pixels = matplotlib.image.imread(str(png))
    assert pixels.shape[:2] == (3000, 1400)
    assert pixels[..., :3].std() > 0.05  # text and plots, not a blank page


# --- sampling to a mixture ----------------------------------------------------------------------

def test_plan_water_fills_capped_domains():
    weights = {"web": 0.5, "code": 0.3, "books": 0.2}
    available = {"web": 10_000, "code": 1_000, "books": 400}
    plan = plan_sampling(weights, available, 10_000, max_epochs=4)
    books, code, web = (plan["domains"][d] for d in ("books", "code", "web"))
    assert books["repeat_cap_hit"] and books["planned_tokens"] == 1_600 and books["epochs"] == 4
    assert not code["repeat_cap_hit"] and not web["repeat_cap_hit"]
    # The 0.2 share books cannot fill goes to web and code in their 5:3 proportion.
    assert web["planned_tokens"] == pytest.approx(8_400 * 5 / 8)
    assert code["planned_tokens"] == pytest.approx(8_400 * 3 / 8)
    assert plan["planned_tokens"] == pytest.approx(10_000) and plan["shortfall_tokens"] == 0
    short = plan_sampling(weights, available, 10_000, max_epochs=4, on_cap="shortfall")
    assert short["shortfall_tokens"] == pytest.approx(0.2 * 10_000 - 1_600)
    assert short["domains"]["web"]["planned_tokens"] == pytest.approx(5_000)
    missing = plan_sampling({"web": 0.5, "math": 0.5}, {"web": 100}, 100, max_epochs=4)
    assert missing["missing_domains"] == ["math"]
    assert missing["domains"]["web"]["planned_tokens"] == pytest.approx(100)


def test_copies_are_seeded_and_unbiased():
    ids = [f"doc-{i}" for i in range(20_000)]
    rate = np.full(len(ids), 2.3)
    copies = copies_for(ids, rate, seed=3)
    assert set(np.unique(copies)) == {2, 3}
    assert copies.mean() == pytest.approx(2.3, abs=0.02)
    assert np.array_equal(copies, copies_for(ids, rate, seed=3))
    assert not np.array_equal(copies, copies_for(ids, rate, seed=4))


def _corpus(tmp_path):
    """Real files: a big 'web' domain (400 docs x 50 tokens), a small 'books' domain (20 docs x
    100 tokens) and an 'other' domain the mixture leaves out; one malformed line."""
    paths = {}
    for domain, n_docs, n_words in (("web", 400, 50), ("books", 20, 100), ("other", 30, 10)):
        path = tmp_path / f"{domain}.jsonl"
        lines = [json.dumps({"id": f"{domain}-{i}", "text": " ".join([f"w{i}"] * n_words)})
                 for i in range(n_docs)]
        if domain == "web":
            lines.append("{not json")
        path.write_text("\n".join(lines) + "\n")
        paths[domain] = str(path)
    return paths


def test_stage_samples_documents_to_the_mixture():
    batch = pa.RecordBatch.from_pylist(
        [{"id": f"web-{i}", "text": "a b c d", "source": "web"} for i in range(300)]
        + [{"id": f"books-{i}", "text": "a b c d", "source": "books"} for i in range(10)]
        + [{"id": f"x-{i}", "text": "a b", "source": "other"} for i in range(5)])
    config = parse(MixtureStage.Config, {"mixture": {"web": 0.5, "books": 0.5},
                                         "tokens": 400, "max_epochs": 4})
    with test_pipeline() as p:
        documents, rejects = p | beam.Create([batch]) | MixtureStage(config)

        def check_documents(batches):
            table = pa.Table.from_batches(batches)
            sources = table.column("source").to_pylist()
            # books: 40 tokens available, capped at 4 epochs = 160 tokens = 40 copies of 10 docs.
            assert sources.count("books") == 40
            assert sorted(set(table.column(MIXTURE_COPY).to_pylist())) == [0, 1, 2, 3]
            # web takes the rest of the budget: 240 tokens = about 60 of its 300 docs.
            assert 40 <= sources.count("web") <= 80
            assert max(table.column(MIXTURE_COPY).to_pylist()[i] for i, s in enumerate(sources)
                       if s == "web") == 0

        def check_rejects(batches):
            table = pa.Table.from_batches(batches)
            reasons = table.column("reason").to_pylist()
            assert reasons.count(UNKNOWN_SOURCE) == 5
            assert 220 <= reasons.count(UNSAMPLED) <= 260
            assert all(p == b"" for p in table.column("payload").to_pylist())

        assert_that(documents, check_documents, label="documents")
        assert_that(rejects, check_rejects, label="rejects")


def test_apply_writes_shards_and_a_manifest_with_the_mixture(tmp_path):
    paths = _corpus(tmp_path)
    mixture = write_json(tmp_path / "mixture.json", {"weights": {"web": 0.6, "books": 0.4}})
    out = tmp_path / "out"
    assert main(["mixture", "apply", "--mixture", mixture, "--inputs",
                 f"web={paths['web']}", f"books={paths['books']}", f"other={paths['other']}",
                 "--tokens", "25000", "--output", str(out), "--seed", "5", *BEAM]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    plan = manifest["mixture"]
    assert plan["repeat_cap_hits"] == ["books"]
    books, web = plan["domains"]["books"], plan["domains"]["web"]
    assert books["available_tokens"] == 2000 and books["written_tokens"] == 8000
    assert books["written_epochs"] == 4.0
    assert web["planned_tokens"] == pytest.approx(25_000 - 8_000)  # books' shortfall goes to web
    assert abs(web["written_tokens"] - 17_000) < 1_500
    assert manifest["config"]["stages"][0]["mixture"]["mixture"] == {"web": 0.6, "books": 0.4}
    stats = manifest["stats"]
    assert stats["balanced"]
    assert stats["failed"] == 1  # the malformed line
    assert stats["dropped"]["mixture_source_not_in_mixture"] == 30
    assert stats["counters"]["mixture.repeat_cap_hit.books"] == 1
    assert stats["counters"]["mixture.repeated_copies"] == 60
    table = read_output(str(out / "documents"))
    assert table.num_rows == manifest["totals"]["rows"]
    assert set(table.column("source").to_pylist()) == {"web", "books"}


def test_mixture_config_is_validated(tmp_path):
    with pytest.raises(ConfigError, match="unknown key"):
        parse(MixtureStage.Config, {"mixture": {"a": 1.0}, "tokens": 5, "epochs": 3})
    with pytest.raises(ConfigError, match="cannot read"):
        MixtureStage(parse(MixtureStage.Config, {"mixture": str(tmp_path / "nope.json"),
                                                 "tokens": 5}))
    with pytest.raises(ConfigError, match="non-negative"):
        load_weights({"a": -1.0})
    bad = tmp_path / "bad.json"
    bad.write_text("{broken")
    with pytest.raises(ConfigError, match="cannot read"):
        load_weights(str(bad))
    assert load_weights(write_json(tmp_path / "m.json", {"weights": {"a": 1, "b": 3}})) == \
        {"a": 0.25, "b": 0.75}
