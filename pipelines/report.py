"""Self-contained HTML reports (one file: CSS inline, matplotlib figures as base64 PNG), and the
RegMix mixture report written by `sluice mixture fit|report`.

The mixture report shows whether the regression can be trusted (predicted vs observed with
Spearman rho, cross-validated and on unseen runs), what it recommends (optimum vs token prior vs
reference mixtures, per domain), why (simplex partial dependence per domain: a domain's weight
set to v, the others scaled to 1 - v in proportion), and what the mixture costs in data (tokens
and epochs per domain under a budget, the repeat cap, what an `apply` run actually wrote).
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
from typing import Optional

import numpy as np
import yaml
from matplotlib.figure import Figure  # the `mixture` extra: `sluice refresh` imports this lazily
from scipy.stats import spearmanr

from classifiers.regmix import bootstrap_spearman, own_domain
from pipelines.mixture_data import (applied_plan, applied_runs, data_sections,
                                    schedule_section)
from pipelines.mixture_io import (FIT_FILE, MIXTURE_FILE, PER_TARGET, REPORT_FILE, TRAIN_FILE,
                                  join, load_model, read_csv, read_domain_tokens, short)
from transforms.core.config import ConfigError
from transforms.core.files import write_bytes_atomic
from transforms.mixture.sampling import load_schedule, plan_sampling

STYLE = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;max-width:1280px;margin:2em auto;
padding:0 1.5em;color:#1d2433;line-height:1.45}
h1{font-size:1.7em;margin-bottom:.2em}h2{font-size:1.3em;margin-top:1.8em;border-bottom:1px solid #d5d9e0;
padding-bottom:.2em}p.lead{color:#566074;margin-top:0}
table{border-collapse:collapse;margin:.8em 0;font-size:.88em}
th,td{border:1px solid #d5d9e0;padding:.25em .6em;text-align:right}th{background:#f2f4f7}
td:first-child,th:first-child{text-align:left}
figure{margin:1em 0}figure img{max-width:100%;height:auto}figcaption{color:#566074;font-size:.9em}
.note{background:#fff6e0;border-left:4px solid #e0a800;padding:.5em .8em;margin:.8em 0}
code{background:#f2f4f7;padding:0 .25em;border-radius:3px}
"""


class HtmlReport:
    """Headings, paragraphs, notes, tables and figures, rendered to one self-contained page."""

    def __init__(self, title: str, lead: str = ""):
        self.title = title
        self.parts = [f"<h1>{html.escape(title)}</h1>"]
        if lead:
            self.parts.append(f'<p class="lead">{html.escape(lead)}</p>')

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def paragraph(self, text: str) -> None:
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def note(self, text: str) -> None:
        self.parts.append(f'<div class="note">{html.escape(text)}</div>')

    def table(self, header: list[str], rows: list[list]) -> None:
        def cell(value) -> str:
            if isinstance(value, float):
                return f"{value:,.4f}" if abs(value) < 1000 else f"{value:,.0f}"
            return html.escape(str(value))

        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>"
                       for row in rows)
        self.parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def figure(self, figure: Figure, caption: str = "") -> None:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
        data = base64.b64encode(buffer.getvalue()).decode("ascii")
        self.parts.append(f'<figure><img alt="{html.escape(caption)}" '
                          f'src="data:image/png;base64,{data}">'
                          f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def render(self) -> str:
        return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
                f"<title>{html.escape(self.title)}</title><style>{STYLE}</style></head>"
                f"<body>{''.join(self.parts)}</body></html>")

    def write(self, path: str) -> str:
        return write_bytes_atomic(path, self.render().encode("utf-8"))


def load_reference(path: str, domains: list[str]) -> dict[str, float]:
    """A reference mixture: mixture.json (`weights`), a JSON mapping, or a RegMix YAML config
    (`train:` mapping), normalised over `domains` (absent domains count as 0)."""
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)  # YAML is a superset of JSON
    if isinstance(data, dict):
        data = data.get("weights", data.get("train", data))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a mixture mapping")
    weights = {d: float(data.get(d, 0.0)) for d in domains}
    total = sum(weights.values())
    if total <= 0:
        raise ValueError(f"{path}: none of the model's domains has weight")
    return {d: w / total for d, w in weights.items()}


def simplex_partial_dependence(model, base: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Mean prediction over `base` mixtures with domain d set to each grid value and the other
    domains rescaled to fill the rest: shape (domains, grid)."""
    n, d = base.shape
    curves = np.empty((d, len(grid)))
    for j in range(d):
        others = base.copy()
        others[:, j] = 0.0
        rest = others.sum(axis=1, keepdims=True)
        rest[rest == 0] = 1.0
        probes = (others / rest)[None, :, :] * (1.0 - grid)[:, None, None]
        probes[:, :, j] = grid[:, None]
        curves[j] = model.predict(probes.reshape(-1, d)).reshape(len(grid), n).mean(axis=1)
    return curves


def _scatter_grid(panels: list[tuple[str, np.ndarray, np.ndarray]]) -> Figure:
    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    figure = Figure(figsize=(3.4 * columns, 3.2 * rows))
    for k, (title, predicted, observed) in enumerate(panels):
        ax = figure.add_subplot(rows, columns, k + 1)
        ax.scatter(observed, predicted, s=9, alpha=0.6, color="#2f6db5", edgecolors="none")
        low, high = min(observed.min(), predicted.min()), max(observed.max(), predicted.max())
        ax.plot([low, high], [low, high], color="#999", linewidth=0.8, linestyle="--")
        rho = spearmanr(predicted, observed)[0]
        ax.set_title(f"{title}\nSpearman ρ = {rho:.3f} (n={len(observed)})", fontsize=9)
        ax.set_xlabel("observed loss", fontsize=8)
        ax.set_ylabel("predicted loss", fontsize=8)
        ax.tick_params(labelsize=7)
    figure.tight_layout()
    return figure


def _weights_figure(domains: list[str], series: dict[str, np.ndarray]) -> Figure:
    order = np.argsort(series["prior"])
    figure = Figure(figsize=(11, 0.38 * len(domains) + 1.2))
    ax = figure.add_subplot(1, 1, 1)
    height = 0.8 / len(series)
    for k, (name, weights) in enumerate(series.items()):
        ax.barh(np.arange(len(domains)) + k * height, weights[order], height, label=name)
    ax.set_yticks(np.arange(len(domains)) + 0.4 - height / 2)
    ax.set_yticklabels([short(domains[i]) for i in order], fontsize=8)
    ax.set_xlabel("weight")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    return figure


def _pd_figure(domains: list[str], grid: np.ndarray, curves: np.ndarray,
               optimum: np.ndarray, prior: np.ndarray, ylabel: str) -> Figure:
    columns = 5
    rows = -(-len(domains) // columns)
    figure = Figure(figsize=(2.6 * columns, 2.2 * rows))
    for j, domain in enumerate(domains):
        ax = figure.add_subplot(rows, columns, j + 1)
        ax.plot(grid, curves[j], color="#2f6db5")
        ax.axvline(optimum[j], color="#d62728", linewidth=1, label="optimum")
        ax.axvline(prior[j], color="#555", linewidth=1, linestyle=":", label="prior")
        ax.set_title(short(domain), fontsize=9)
        ax.tick_params(labelsize=7)
        if j == 0:
            ax.legend(fontsize=7)
            ax.set_ylabel(ylabel, fontsize=8)
    figure.tight_layout()
    return figure


def _epochs_figure(plan: dict) -> Figure:
    domains = list(plan["domains"])
    epochs = [plan["domains"][d].get("written_epochs", plan["domains"][d]["epochs"])
              for d in domains]
    figure = Figure(figsize=(11, 3.6))
    ax = figure.add_subplot(1, 1, 1)
    colors = ["#d62728" if plan["domains"][d]["repeat_cap_hit"] else "#2f6db5" for d in domains]
    ax.bar(range(len(domains)), epochs, color=colors)
    ax.axhline(plan["max_epochs"], color="#d62728", linestyle="--", linewidth=1,
               label=f"repeat cap ({plan['max_epochs']:g} epochs)")
    ax.set_xticks(range(len(domains)))
    ax.set_xticklabels([short(d) for d in domains], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("epochs")
    ax.legend(fontsize=8)
    figure.tight_layout()
    return figure


def _budget_section(report: HtmlReport, plan: dict, applied: bool) -> None:
    report.heading("Token budget and epochs per domain")
    where = "written by the apply run" if applied else "planned"
    report.paragraph(
        f"Budget {plan['tokens']:,} tokens (whitespace tokens, as in manifests); {where}: "
        f"{plan.get('written_tokens', plan['planned_tokens']):,.0f}. Repeats are capped at "
        f"{plan['max_epochs']:g} epochs per domain: beyond about 4 epochs repeated data loses "
        "most of its value (Muennighoff et al. 2023).")
    if plan["repeat_cap_hits"]:
        report.note(f"Repeat cap hit by {', '.join(plan['repeat_cap_hits'])}: these domains "
                    "supply fewer tokens than the mixture asks; with on_cap=" + plan["on_cap"]
                    + (" the rest of their share went to the other domains."
                       if plan["on_cap"] == "redistribute" else " the budget is left short."))
    if plan["missing_domains"]:
        report.note(f"No documents for {', '.join(plan['missing_domains'])}.")
    header = ["domain", "weight", "available tokens", "target tokens", "planned tokens",
              "planned epochs", "cap hit"]
    if applied:
        header += ["written tokens", "written epochs"]
    rows = []
    for domain, entry in plan["domains"].items():
        row = [domain, entry["weight"], float(entry["available_tokens"]),
               float(entry["target_tokens"]), float(entry["planned_tokens"]), entry["epochs"],
               "yes" if entry["repeat_cap_hit"] else ""]
        if applied:
            row += [float(entry["written_tokens"]), entry["written_epochs"]]
        rows.append(row)
    report.table(header, rows)
    report.figure(_epochs_figure(plan), "Epochs per domain under the mixture (red: capped).")


def write_mixture_report(model_dir: str, evals: Optional[list[str]] = None,
                         compare: Optional[list[str]] = None, tokens: Optional[int] = None,
                         max_epochs: float = 4.0, domains: Optional[list[str]] = None,
                         applied: Optional[str] = None) -> str:
    """Render `model_dir/report.html`; returns its path."""
    model, saved = load_model(model_dir)
    with open(os.path.join(model_dir, FIT_FILE), encoding="utf-8") as f:
        fit = json.load(f)
    with open(os.path.join(model_dir, MIXTURE_FILE), encoding="utf-8") as f:
        mixture = json.load(f)
    doms, targets = model.domains, model.targets
    _, train_columns, train = read_csv(os.path.join(model_dir, TRAIN_FILE))
    column = {c: train[:, k] for k, c in enumerate(train_columns)}
    X = np.column_stack([column[d] for d in doms])
    label = " + ".join(f"{w:.2g}·{short(t)}" for t, w in targets.items()) \
        if len(targets) > 1 else short(next(iter(targets)))

    model_label = model.kind if model.kind != PER_TARGET else ", ".join(
        f"{short(t)}: {k}" for t, k in model.target_kinds.items())
    chosen_by = {"scale": "by Spearman on the held-out scale",
                 "cv": "by cross-validated Spearman"}.get(
        fit.get("choose", "cv"), "as the default" if model.kind == "stack"
        else "by cross-validated Spearman")
    report = HtmlReport("RegMix mixture report",
                        f"Objective: {label} · {fit['runs']} proxy runs · model: {model_label} "
                        f"(chosen {chosen_by}) · {len(doms)} domains")

    report.heading("Fit quality")
    report.paragraph(f"{saved['fit_config']['folds']}-fold cross-validation on the proxy runs; "
                     f"LightGBM stops early on a {saved['fit_config']['validation_fraction']:.0%} "
                     "validation split of each training fold, never on evaluation data.")
    kinds = list(fit["cross_validation"])

    def spearman(scores: dict) -> str:  # fits before the intervals were recorded have none
        interval = f" [{scores['low']:.3f}, {scores['high']:.3f}]" if "low" in scores else ""
        return f"{scores['spearman']:.3f}{interval}"

    rows = [[short(t), *(spearman(fit["cross_validation"][k][t]) for k in kinds),
             *(fit["cross_validation"][k][t]["pearson"] for k in kinds)]
            for t in [*targets, "objective"] if len(targets) > 1 or t != "objective"]
    report.table(["target", *(f"{k} Spearman [95% bootstrap]" for k in kinds),
                  *(f"{k} Pearson" for k in kinds)], rows)
    predicted = mixture.get("predicted_targets")
    if predicted:
        rmse = mixture.get("predicted_rmse", {})
        report.paragraph("Predicted loss of the chosen mixture per target, ± the chosen model's "
                         "out-of-fold RMSE on the proxy runs (its typical error on a mixture it "
                         "was not fit on): " + "; ".join(
                             f"{short(t)} {v:.4f}" + (f" ± {rmse[t]:.4f}" if t in rmse else "")
                             for t, v in predicted.items()) + ".")
    panels = [(f"CV · {short(t)}", column[f"cv/{model.kind_of(t)}/{t}"], column[t])
              for t in targets]
    transfer = fit.get("scale_transfer") or {}
    if transfer:
        report.heading("Transfer across scale")
        report.paragraph("Each kind fit on these runs only, scored on runs of larger models "
                         f"({', '.join(s.partition('=')[0] for s in fit.get('scales', []))}), "
                         "which are never fitted: Spearman rho [95% bootstrap interval over "
                         "the runs], beside the ranking by minus the target's own weight.")
        rows = []
        for t, kinds_scores in transfer.items():
            entries = dict(kinds_scores)
            if t in fit.get("scale_trivial", {}):
                entries["-own weight"] = fit["scale_trivial"][t]
            for k, scores in entries.items():
                rows.append([short(t), k + (" (chosen)" if k == model.kind_of(t) else ""),
                             *(f"{v['spearman']:.3f} [{v['low']:.3f}, {v['high']:.3f}]"
                               for v in scores.values())])
        scale_names = list(next(iter(next(iter(transfer.values())).values())))
        report.table(["target", "model", *scale_names], rows)
    eval_rows = []
    for spec in evals or []:
        name, _, paths = spec.partition("=")
        mixtures_path, _, losses_path = paths.partition(",")
        if not losses_path:
            raise ConfigError(f"--eval expects NAME=MIXTURES.csv,LOSSES.csv, got '{spec}'")
        _, eval_domains, EX, loss_columns, EL = join(mixtures_path, losses_path)
        EX = EX[:, [eval_domains.index(d) for d in doms]]
        predicted = model.predict_targets(EX)
        for t in targets:
            observed = EL[:, loss_columns.index(t)]
            own = own_domain(t, doms)
            trivial = spearmanr(-EX[:, own], observed)[0] if own is not None else float("nan")
            low, high = bootstrap_spearman(predicted[t], observed)
            eval_rows.append([name, short(t), len(observed), spearmanr(predicted[t], observed)[0],
                              f"[{low:.3f}, {high:.3f}]", trivial])
            panels.append((f"{name} · {short(t)}", predicted[t], observed))
    if eval_rows:
        report.paragraph("Unseen runs: Spearman rho of the model beside the trivial ranking by "
                         "minus the target domain's own weight.")
        report.table(["runs", "target", "n", f"{model.kind} Spearman", "95% bootstrap",
                      "trivial Spearman"],
                     eval_rows)
    report.figure(_scatter_grid(panels), "Predicted vs observed loss (dashed: y = x).")

    report.heading("Recommended mixture")
    optimum = np.array([mixture["weights"][d] for d in doms])
    prior = np.array([saved["prior"][d] for d in doms])
    series = {"optimum (RegMix)": optimum, f"prior ({saved['prior_source']})": prior}
    for spec in compare or []:
        name, _, path = spec.partition("=")
        try:
            reference = load_reference(path, doms)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise ConfigError(f"--compare {spec}: {exc}") from None
        series[name] = np.array([reference[d] for d in doms])
    references = np.array(list(series.values()))
    predicted = model.predict(references)
    report.paragraph(f"Mean of the top {mixture['top_k']} of {mixture['candidates']:,} simulated "
                     "mixtures by predicted objective. Predicted objective per mixture: "
                     + "; ".join(f"{n}: {p:.4f}" for n, p in zip(series, predicted)) + ".")
    report.figure(_weights_figure(doms, {"prior": prior} | {
        n: w for n, w in series.items() if not n.startswith("prior")}),
        "Weight per domain: prior, RegMix optimum and reference mixtures.")
    report.table(["domain", *series], [[d, *references[:, j]] for j, d in enumerate(doms)])

    report.heading("Partial dependence per domain")
    report.paragraph("Mean predicted objective over the proxy mixtures when one domain's weight is "
                     "set to v and the others are scaled to share 1 - v: the effect of giving a "
                     "domain more of the mixture.")
    grid = np.linspace(0.0, 0.8, 33)
    base = X[np.random.default_rng(0).choice(len(X), min(len(X), 128), replace=False)]
    curves = simplex_partial_dependence(model, base, grid)
    report.figure(_pd_figure(doms, grid, curves, optimum, prior, "predicted " + label),
                  "Partial dependence (red: optimum weight; dotted: prior).")
    gains = fit["importances"].get("lightgbm")
    if gains:
        rows = sorted(([d, *(gains[t][d] for t in targets)] for d in doms),
                      key=lambda r: -sum(r[1:]))
        report.table(["domain", *(f"gain share · {short(t)}" for t in targets)], rows)

    plan = None
    if applied:
        plan = applied_plan(applied)  # None for a scheduled apply: its phases are drawn below
    elif tokens:
        counts = read_domain_tokens(domains) if domains else saved.get("tokens")
        if not counts:
            raise ConfigError("a budget table needs token counts: pass --domains")
        plan = plan_sampling(mixture["weights"], counts, tokens, max_epochs)
    if plan:
        _budget_section(report, plan, applied is not None)
    elif not applied:
        report.paragraph("No token budget given: run `sluice mixture report --tokens N` (with "
                         "token counts) or `--applied DIR` for the epochs per domain.")
    if applied:
        data_sections(report, applied)
    elif mixture.get("schedule"):
        schedule_section(report, load_schedule(os.path.join(model_dir, MIXTURE_FILE)))
    return report.write(os.path.join(model_dir, REPORT_FILE))


def write_applied_report(applied: str) -> str:
    """Render `applied/report.html` for an apply output alone (no fitted model): the budget
    and epochs (or the schedule), tokens by licence, effective tokens; returns its path."""
    summary, _ = applied_runs(applied)
    report = HtmlReport("Mixture apply report",
                        f"{applied} · " + (f"{len(summary['phases'])}-phase schedule"
                                           if summary else "one mixture"))
    plan = applied_plan(applied)
    if plan:
        _budget_section(report, plan, True)
    data_sections(report, applied)
    return report.write(os.path.join(applied, REPORT_FILE))
