"""EL2N from the default text proxy: a token-level LM over a BPE tokenizer trained on the sample,
scored early in training on the documents it trains on, averaged over seeds (Paul et al. 2021),
with the seeds' rank stability reported. Real Wikipedia revisions and DCLM pages throughout."""
from __future__ import annotations

import collections
import json
import math
import re

import numpy as np
import pyarrow.dataset as ds
import pytest
from scipy.stats import spearmanr

from classifiers.proxy import ProxyConfig, seed_rank_stability, train_proxy
from pipelines.cli import main
from tests.selection.test_select import ONE_PROCESS, TINY_LM, dclm_rows, wiki_rows
from transforms.core.config import parse

PRINTABLE = [chr(c) for c in range(33, 127)]


def noise_documents(count: int, length: int = 1500) -> list[str]:
    rng = np.random.default_rng(0)
    return ["".join(rng.choice(PRINTABLE, length)) for _ in range(count)]


def test_default_text_proxy_is_a_token_lm_trained_on_the_corpus(shared_data):
    """Every default (4 seeds, 2 epochs, d 256 x 4 layers, 4,096 BPE tokens), on 40 documents."""
    texts = [r["text"] for r in wiki_rows(shared_data, 12)][:40]
    config = parse(ProxyConfig, {})
    assert config.label_field is None and config.lm == "tokens"
    proxy = train_proxy(texts, None, config)
    report = proxy.report
    assert len(proxy.models) == 4 and report.train_docs == 40
    assert report.vocab == 4096 and report.parameters == 4_273_664  # as docs/selection.md says
    # the tokenizer was trained on this corpus: its most frequent long words are single tokens
    words = collections.Counter(w for t in texts for w in re.findall(r"\b[a-z]{8,}\b", t))
    vocab = proxy.tokenizer.tokenizer.get_vocab()
    assert all(f"Ġ{word}" in vocab for word, _ in words.most_common(5))
    # EL2N is the mean over the seeds' models, which differ but rank the documents alike
    scores = proxy.score(texts + noise_documents(1))
    per_model = proxy.per_model_scores(texts[:8])
    assert np.allclose(scores["el2n"][:8], per_model.mean(0))
    assert not np.allclose(per_model[0], per_model[1])
    assert 0.5 < report.rank_stability <= 1 and report.rank_stability_of_mean >= report.rank_stability
    # trained, early: below the untrained model's log(vocab) nats per token, far from memorised
    assert 1 < scores["lm_loss"][:-1].mean() < math.log(4096) - 0.5
    # unseen random characters are harder than every training document
    assert scores["lm_loss"][-1] > scores["lm_loss"][:-1].max()
    assert scores["el2n"][-1] > np.median(scores["el2n"][:-1])


def test_el2n_ranks_repeated_boilerplate_below_prose_below_noise(shared_data):
    """All three kinds in the training sample: the page repeated 5 times is learnt first, random
    characters cannot be learnt (Paul et al.: high EL2N = hard or noisy)."""
    prose = [r["text"] for r in wiki_rows(shared_data, 40)[::3]][:40]
    boilerplate = [dclm_rows(shared_data)[0]["text"]] * 5
    texts = prose + boilerplate + noise_documents(5)
    proxy = train_proxy(texts, None, parse(ProxyConfig, TINY_LM | {"epochs": 12}))
    el2n = proxy.score(texts)["el2n"]
    prose_el2n, boilerplate_el2n, noise_el2n = el2n[:40], el2n[40:45], el2n[45:]
    assert boilerplate_el2n.max() < np.quantile(prose_el2n, 0.1)
    assert noise_el2n.min() > np.quantile(prose_el2n, 0.9)
    assert proxy.report.rank_stability > 0.5


def test_seed_rank_stability_is_the_mean_pairwise_spearman():
    rng = np.random.default_rng(5)
    truth = rng.random(200)
    per_model = truth + rng.normal(0, 0.3, (4, 200))
    per_model[2, 7] = np.nan  # a document one model could not score is left out for all
    pairwise, of_mean = seed_rank_stability(per_model)
    kept = np.delete(per_model, 7, axis=1)
    expected = np.mean([spearmanr(kept[i], kept[j])[0] for i in range(4) for j in range(i + 1, 4)])
    assert pairwise == pytest.approx(expected)
    assert of_mean == pytest.approx(4 * expected / (1 + 3 * expected))
    assert seed_rank_stability(per_model[:1]) == (None, None)
    two = seed_rank_stability(per_model[:2])[0]  # rows 0 and 1 scored every document
    assert two == pytest.approx(spearmanr(per_model[0], per_model[1])[0])


def test_select_command_el2n_reports_rank_stability_and_training_documents(shared_data, tmp_path):
    rows = wiki_rows(shared_data, 25)
    path = tmp_path / "wiki.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    sets = [f"stages.0.el2n.proxy.{k}={v}" for k, v in TINY_LM.items()]
    code = main(["select", str(path), "--method", "el2n", "--keep", "all", "--train-docs", "40",
                 "--output", str(out), *sum([["--set", s] for s in sets], []), *ONE_PROCESS])
    assert code == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["balanced"] and stats["kept"] == len(rows)
    assert stats["counters"]["el2n.proxy_train_docs"] == 40
    assert 500 < stats["counters"]["el2n.rank_stability_permille"] <= 1000
    assert (stats["counters"]["el2n.rank_stability_of_mean_permille"]
            >= stats["counters"]["el2n.rank_stability_permille"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["stages"][0]["el2n"]["proxy"]["lm"] == "tokens"
    table = ds.dataset(out / "documents", format="arrow").to_table().to_pandas()
    assert table["proxy_trained"].sum() == 40
    assert table["el2n"].notna().all() and np.allclose(table["proxy_perplexity"],
                                                       np.exp(table["proxy_loss"]))
