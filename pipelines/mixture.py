"""`sluice mixture propose|fit|predict|apply|report`: RegMix data-mixture optimisation
(Liu et al. 2024, arXiv:2407.01492) and shards sampled to the chosen mixture.

    propose  token counts (manifests or TOKENS.json) -> proxy-run mixtures (CSV: index, domains)
    fit      mixtures + proxy losses -> models, fit.json, mixture.json (the optimum), report.html
    predict  a fitted model + mixtures -> index,predicted
    apply    mixture.json + DOMAIN=PATH inputs + a token budget -> Arrow shards (the `mixture`
             stage through `run_job`), with the plan, epochs and repeat-cap hits in manifest.json
    report   re-render DIR/report.html with test sets, reference mixtures, a budget or an apply run
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, replace

import numpy as np

from classifiers.regmix import (LIGHTGBM, LINEAR, REGRESSORS, FitConfig, ProposalConfig,
                                correlations, cross_validate, objective_weights, optimum,
                                own_domain, propose, token_prior)
from pipelines.mixture_io import (FIT_FILE, INDEX, MIXTURE_FILE, MODEL_FILE, TRAIN_FILE, join,
                                  load_model, read_csv, read_domain_tokens, write_csv)
from transforms.core.config import ConfigError
from transforms.core.extras import require
from transforms.core.files import write_json_atomic

# --- tables -------------------------------------------------------------------------------------

def resolve_targets(specs: list[str], columns: list[str]) -> dict[str, float]:
    """`COLUMN[=WEIGHT]` (an exact column or a unique substring of one) -> {column: weight}."""
    targets: dict[str, float] = {}
    for spec in specs:
        name, _, weight = spec.partition("=")
        matches = [c for c in columns if c == name] or [c for c in columns if name in c]
        if len(matches) != 1:
            raise ConfigError(f"target '{name}' matches {len(matches)} loss columns "
                              f"({', '.join(matches or columns)})")
        try:
            targets[matches[0]] = float(weight) if weight else 1.0
        except ValueError:
            raise ConfigError(f"target weight must be a number: '{spec}'") from None
    try:
        return objective_weights(targets)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def aligned_prior(tokens: dict[str, int], domains: list[str]) -> np.ndarray:
    missing = [d for d in domains if d not in tokens]
    if missing:
        raise ConfigError(f"no token counts for domain(s) {', '.join(missing)}")
    prior = token_prior({d: tokens[d] for d in domains})
    return np.array([prior[d] for d in domains])


def mixture_matrix(path: str, domains: list[str]) -> tuple[list[str], np.ndarray]:
    index, columns, X = read_csv(path)
    missing = [d for d in domains if d not in columns]
    if missing:
        raise ConfigError(f"'{path}' lacks domain column(s) {', '.join(missing)}")
    return index, X[:, [columns.index(d) for d in domains]]


# --- commands -----------------------------------------------------------------------------------

def cmd_propose(args) -> int:
    tokens = read_domain_tokens(args.domains)
    domains = sorted(tokens)
    config = ProposalConfig(temperature=args.temperature, max_usage=args.max_usage,
                            min_strength=args.min_strength, max_strength=args.max_strength,
                            minimum=args.minimum, sample_multiplier=args.sample_multiplier)
    try:
        mixtures = propose(aligned_prior(tokens, domains), args.n, config, args.seed)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    digits = max(1, -int(math.floor(math.log10(config.minimum))))
    write_csv(args.output, [INDEX, *domains],
              ([i + 1, *(f"{w:.{digits}f}" for w in row)] for i, row in enumerate(mixtures)))
    print(f"sluice mixture: {len(mixtures)} mixtures of {len(domains)} domains -> {args.output}")
    return 0


def fit(mixtures: str, losses: str, targets: list[str], kinds: list[str], output: str,
        config: FitConfig, domains_tokens: list[str] | None = None,
        proposal: ProposalConfig = ProposalConfig(), candidates: int = 100_000,
        top_k: int = 100, log=print) -> dict:
    """Fit the regressions, pick the kind with the best cross-validated Spearman on the
    objective, search its optimum and write model.json, fit.json, mixture.json, train.csv."""
    index, domains, X, loss_columns, L = join(mixtures, losses)
    objective = resolve_targets(targets, loss_columns)
    if len(index) < 2 * config.folds:
        raise ConfigError(f"{len(index)} joined runs are too few for {config.folds}-fold CV")
    os.makedirs(output, exist_ok=True)
    observed = {t: L[:, loss_columns.index(t)] for t in objective}
    observed_objective = sum(w * observed[t] for t, w in objective.items())
    saved_kinds, cv, importances, oof = {}, {}, {}, {}
    for kind in kinds:
        saved_kinds[kind], cv[kind], importances[kind] = {}, {}, {}
        for target in objective:
            monotone = own_domain(target, domains)
            oof[(kind, target)] = cross_validate(kind, X, observed[target], config, monotone)
            cv[kind][target] = correlations(oof[(kind, target)], observed[target])
            model = REGRESSORS[kind].fit(X, observed[target], config, monotone)
            saved_kinds[kind][target] = model.save(output, f"{kind}-{slug(target)}")
            importances[kind][target] = dict(zip(domains, model.importances().tolist()))
            log(f"sluice mixture: {kind:8s} {target}: cross-validated Spearman "
                f"{cv[kind][target]['spearman']:.4f}")
        oof_objective = sum(w * oof[(kind, t)] for t, w in objective.items())
        cv[kind]["objective"] = correlations(oof_objective, observed_objective)
    chosen = max(kinds, key=lambda k: cv[k]["objective"]["spearman"])
    if domains_tokens:
        tokens = read_domain_tokens(domains_tokens)
        prior, prior_source = aligned_prior(tokens, domains), "token counts"
    else:  # no counts: candidates around the proxy runs' mean, untempered and uncapped
        tokens, prior_source = None, "mean of the training mixtures"
        prior = X.mean(axis=0) / X.mean(axis=0).sum()
        proposal = replace(proposal, temperature=1.0, max_usage=math.inf)
    saved = {"domains": domains, "targets": objective, "kinds": saved_kinds, "chosen": chosen,
             "fit_config": asdict(config), "proposal": asdict(proposal),
             "prior": dict(zip(domains, prior.tolist())), "prior_source": prior_source,
             "tokens": tokens}
    with open(os.path.join(output, MODEL_FILE), "w", encoding="utf-8") as f:
        json.dump(saved, f, indent=2)
    model, _ = load_model(output, chosen)
    try:
        best = optimum(model, prior, proposal, candidates, top_k, config.seed)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    mixture = {**best, "model": chosen, "targets": objective, "prior": saved["prior"],
               "prior_source": prior_source}
    report = {"runs": len(index), "domains": domains, "targets": objective, "chosen": chosen,
              "cross_validation": cv, "importances": importances,
              "fit_config": asdict(config), "mixtures": mixtures, "losses": losses,
              "optimum_predicted": best["predicted"]}
    for name, data in ((FIT_FILE, report), (MIXTURE_FILE, mixture)):
        with open(os.path.join(output, name), "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
    oof_columns = [(k, t) for k in kinds for t in objective]
    write_csv(os.path.join(output, TRAIN_FILE),
              [INDEX, *domains, *objective, *(f"cv/{k}/{t}" for k, t in oof_columns)],
              ([i, *X[r], *(observed[t][r] for t in objective),
                *(oof[c][r] for c in oof_columns)] for r, i in enumerate(index)))
    log(f"sluice mixture: chose {chosen} (objective Spearman "
        f"{cv[chosen]['objective']['spearman']:.4f}); optimum predicted {best['predicted']:.4f}"
        f" -> {os.path.join(output, MIXTURE_FILE)}")
    return report


def cmd_fit(args) -> int:
    kinds = [LIGHTGBM, LINEAR] if args.model == "both" else [args.model]
    # cross-validation folds and the linear fit, the boosters, the report's figures
    require("mixture", "sklearn", *([LIGHTGBM] if LIGHTGBM in kinds else []), "matplotlib",
            by="command 'mixture fit'")
    config = FitConfig(learning_rate=args.learning_rate, rounds=args.rounds,
                       validation_fraction=args.validation_fraction, ensemble=args.ensemble,
                       monotone=args.monotone, folds=args.folds, seed=args.seed)
    if not 0 < config.validation_fraction < 1:
        raise ConfigError("--validation-fraction must be between 0 and 1")
    fit(args.mixtures, args.losses, args.target, kinds, args.output, config, args.domains,
        candidates=args.candidates, top_k=args.top_k)
    from pipelines.report import write_mixture_report

    print(f"sluice mixture: report -> {write_mixture_report(args.output)}")
    return 0


def cmd_predict(args) -> int:
    model, _ = load_model(args.model, args.kind)
    index, X = mixture_matrix(args.mixtures, model.domains)
    per_target = model.predict_targets(X)
    predicted = model.predict(X)
    extra = list(per_target) if len(per_target) > 1 else []
    write_csv(args.output, [INDEX, "predicted", *(f"predicted/{t}" for t in extra)],
              ([i, predicted[r], *(per_target[t][r] for t in extra)]
               for r, i in enumerate(index)))
    print(f"sluice mixture: {len(index)} predictions ({model.kind}) -> {args.output}")
    return 0


def parse_inputs(specs: list[str]) -> list[dict]:
    inputs = []
    for spec in specs:
        domain, sep, path = spec.partition("=")
        if not sep or not domain or not path:
            raise ConfigError(f"--inputs expects DOMAIN=PATH, got '{spec}'")
        inputs.append({"path": path, "source": domain})
    return inputs


def apply(mixture: str, inputs: list[str], tokens: int, output: str, beam_args: list[str],
          max_epochs: float = 4.0, on_cap: str = "redistribute", seed: int = 0,
          log=print) -> dict:
    """Run the `mixture` stage over the inputs; add the plan and the epochs actually written
    per domain to manifest.json under `mixture`."""
    from pipelines.job import run_job
    from transforms.mixture.sampling import PLAN_FILE, load_weights

    weights = load_weights(mixture)
    data = {"input": parse_inputs(inputs), "output": output,
            "stages": [{"mixture": {"mixture": weights, "tokens": tokens,
                                    "max_epochs": max_epochs, "on_cap": on_cap, "seed": seed}}]}
    run_job(data, beam_args, log=log)
    with open(os.path.join(output, PLAN_FILE), encoding="utf-8") as f:
        plan = json.load(f)
    manifest_path = os.path.join(output, "manifest.json")
    with open(manifest_path, encoding="utf-8") as f:
        manifest = json.load(f)
    written = manifest.get("sources", {})
    for domain, entry in plan["domains"].items():
        entry["written_tokens"] = written.get(domain, {}).get("tokens", 0)
        entry["written_docs"] = written.get(domain, {}).get("docs", 0)
        entry["written_epochs"] = (entry["written_tokens"] / entry["available_tokens"]
                                   if entry["available_tokens"] else 0.0)
    plan["mixture_file"] = mixture if isinstance(mixture, str) else None
    plan["written_tokens"] = manifest["totals"]["tokens"]
    manifest["mixture"] = plan
    write_json_atomic(manifest_path, manifest)
    for domain in plan["repeat_cap_hits"]:
        log(f"sluice mixture: '{domain}' hit the repeat cap ({max_epochs:g} epochs); "
            f"its shortfall went to {'the other domains' if on_cap == 'redistribute' else 'nowhere'}")
    for domain in plan["missing_domains"]:
        log(f"sluice mixture: '{domain}' has weight but no documents in the inputs")
    log(f"sluice mixture: wrote {plan['written_tokens']:,} tokens (budget {tokens:,}) -> {output}")
    return plan


def cmd_apply(args) -> int:
    apply(args.mixture, args.inputs, args.tokens, args.output, args.beam_args, args.max_epochs,
          args.on_cap, args.seed)
    return 0


def cmd_report(args) -> int:
    require("mixture", "matplotlib", by="command 'mixture report'")
    from pipelines.report import write_mixture_report

    path = write_mixture_report(args.model, evals=args.eval, compare=args.compare,
                                tokens=args.tokens, max_epochs=args.max_epochs,
                                domains=args.domains, applied=args.applied)
    print(f"sluice mixture: report -> {path}")
    return 0


def register(subparsers) -> None:
    top = subparsers.add_parser("mixture", help="RegMix mixture optimisation and sampling")
    sub = top.add_subparsers(dest="mixture_command", required=True)
    defaults = ProposalConfig()

    p = sub.add_parser("propose", help="sample proxy-run mixtures from the token prior")
    p.add_argument("--domains", nargs="+", required=True, metavar="TOKENS.json|MANIFEST",
                   help="token counts per domain: manifest.json files or {domain: tokens}")
    p.add_argument("--n", type=int, default=512, help="mixtures to propose (default 512)")
    p.add_argument("--output", required=True, metavar="CSV")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--temperature", type=float, default=defaults.temperature)
    p.add_argument("--max-usage", type=float, default=defaults.max_usage,
                   help="cap: weight <= max_usage x token share")
    p.add_argument("--min-strength", type=float, default=defaults.min_strength)
    p.add_argument("--max-strength", type=float, default=defaults.max_strength)
    p.add_argument("--minimum", type=float, default=defaults.minimum,
                   help="weights below are zeroed; the rounding grid")
    p.add_argument("--sample-multiplier", type=int, default=defaults.sample_multiplier)
    p.set_defaults(func=cmd_propose)

    fit_defaults = FitConfig()
    p = sub.add_parser("fit", help="fit loss ~ mixture regressions and find the optimum")
    p.add_argument("--mixtures", required=True, metavar="CSV")
    p.add_argument("--losses", required=True, metavar="CSV")
    p.add_argument("--target", action="append", required=True, metavar="COLUMN[=WEIGHT]",
                   help="loss column (or a unique part of its name); repeat for a weighted "
                        "average of several")
    p.add_argument("--model", choices=[LIGHTGBM, LINEAR, "both"], default="both")
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument("--domains", nargs="+", metavar="TOKENS.json|MANIFEST",
                   help="token counts: the prior and caps of the optimum search")
    p.add_argument("--validation-fraction", type=float,
                   default=fit_defaults.validation_fraction,
                   help="share of the training runs held out for early stopping")
    p.add_argument("--rounds", type=int, default=fit_defaults.rounds)
    p.add_argument("--learning-rate", type=float, default=fit_defaults.learning_rate)
    p.add_argument("--ensemble", type=int, default=fit_defaults.ensemble,
                   help="LightGBM models averaged, each with its own validation split")
    p.add_argument("--monotone", action="store_true",
                   help="constrain a domain's loss not to rise with that domain's weight")
    p.add_argument("--folds", type=int, default=fit_defaults.folds)
    p.add_argument("--candidates", type=int, default=100_000)
    p.add_argument("--top-k", type=int, default=100)
    p.add_argument("--seed", type=int, default=fit_defaults.seed)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("predict", help="predict the objective for mixtures")
    p.add_argument("--model", required=True, metavar="DIR")
    p.add_argument("--mixtures", required=True, metavar="CSV")
    p.add_argument("--output", required=True, metavar="CSV")
    p.add_argument("--kind", choices=[LIGHTGBM, LINEAR], help="default: the one fit chose")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("apply", help="write Arrow shards sampled to a mixture and token budget")
    p.add_argument("--mixture", required=True, metavar="mixture.json")
    p.add_argument("--inputs", nargs="+", required=True, metavar="DOMAIN=PATH")
    p.add_argument("--tokens", type=int, required=True, help="budget in whitespace tokens")
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument("--max-epochs", type=float, default=4.0,
                   help="repeat cap per domain (default 4, Muennighoff et al. 2023)")
    p.add_argument("--on-cap", choices=["redistribute", "shortfall"], default="redistribute")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("report", help="render DIR/report.html for a fitted model")
    p.add_argument("--model", required=True, metavar="DIR")
    p.add_argument("--eval", action="append", default=[], metavar="NAME=MIXTURES.csv,LOSSES.csv",
                   help="unseen runs to score the fit on (repeatable)")
    p.add_argument("--compare", action="append", default=[], metavar="NAME=MIXTURE",
                   help="reference mixture (mixture.json, JSON or RegMix YAML) to plot")
    p.add_argument("--domains", nargs="+", metavar="TOKENS.json|MANIFEST",
                   help="token counts for the budget table (default: those given to fit)")
    p.add_argument("--tokens", type=int, help="token budget for the epochs table")
    p.add_argument("--max-epochs", type=float, default=4.0)
    p.add_argument("--applied", metavar="DIR", help="an `apply` output to report on")
    p.set_defaults(func=cmd_report)
