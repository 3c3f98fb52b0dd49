"""`sluice mixture propose|fit|suggest|predict|schedule|apply|report`: RegMix data-mixture optimisation
(Liu et al. 2024, arXiv:2407.01492) and shards sampled to the chosen mixture.

    propose  token counts (manifests or TOKENS.json) -> proxy-run mixtures (CSV: index, domains)
    fit      mixtures + proxy losses -> models, fit.json, mixture.json (the optimum), report.html
    suggest  runs so far (mixtures + losses) -> the next N mixtures to train (GP, batch EI)
    predict  a fitted model + mixtures -> index,predicted
    schedule mixture.json -> mixture.json with a phase `schedule` (domain upsampling at the end, or
             temperature sampling with a cooldown)
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
from scipy.stats import spearmanr

from classifiers.regmix import (LIGHTGBM, LINEAR, MODEL_KINDS, REGRESSORS, STACK,
                                FitConfig, ProposalConfig, SuggestConfig, bootstrap_spearman,
                                budget_caps, choose_by_scale, correlations, cross_validate,
                                objective_weights, optimum, own_domain, propose,
                                sample_candidates, scale_transfer, suggest, token_prior)
from pipelines.mixture_io import (FIT_FILE, INDEX, MIXTURE_FILE, MODEL_FILE, PER_TARGET,
                                  TRAIN_FILE, join,
                                  load_model, read_csv, read_domain_tokens, short, write_csv)
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


def parse_runs(spec: str, option: str) -> tuple[str, str, str]:
    """`NAME=MIXTURES.csv,LOSSES.csv` -> (name, mixtures, losses)."""
    name, _, paths = spec.partition("=")
    mixtures_path, _, losses_path = paths.partition(",")
    if not name or not mixtures_path or not losses_path:
        raise ConfigError(f"{option} expects NAME=MIXTURES.csv,LOSSES.csv, got '{spec}'")
    return name, mixtures_path, losses_path


def held_out_runs(specs: list[str], domains: list[str], targets: list[str],
                  option: str = "--scale") -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """{target: {name: (mixtures aligned to `domains`, observed losses)}} of runs at other
    scales, which are only scored."""
    held: dict[str, dict] = {t: {} for t in targets}
    for spec in specs:
        name, mixtures_path, losses_path = parse_runs(spec, option)
        _, run_domains, HX, loss_columns, HL = join(mixtures_path, losses_path)
        missing = [d for d in domains if d not in run_domains]
        if missing:
            raise ConfigError(f"{option} {name}: '{mixtures_path}' lacks domain column(s) "
                              f"{', '.join(missing)}")
        HX = HX[:, [run_domains.index(d) for d in domains]]
        for t in targets:
            if t not in loss_columns:
                raise ConfigError(f"{option} {name}: '{losses_path}' has no column '{t}'")
            held[t][name] = (HX, HL[:, loss_columns.index(t)])
    return held


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
        top_k: int = 100, log=print, scales: list[str] | None = None,
        choose: str = "auto", budget: int | None = None, max_epochs: float = 4.0) -> dict:
    """Fit the regressions, choose the model, search its optimum and write model.json, fit.json,
    mixture.json, train.csv.

    `choose`: `cv` the kind with the best cross-validated Spearman on the objective; `scale` per
    target the kind whose fit on these runs ranks the `scales` runs (larger models) best;
    `auto` the stack when fitted, else `cv`. Runs in `scales` are only scored, never fitted.
    With a token `budget` (needs `domains_tokens`) the optimum is searched among mixtures that
    repeat no domain beyond `max_epochs` under that budget."""
    if budget and not domains_tokens:
        raise ConfigError("--budget needs token counts per domain: pass --domains")
    index, domains, X, loss_columns, L = join(mixtures, losses)
    objective = resolve_targets(targets, loss_columns)
    if len(index) < 2 * config.folds:
        raise ConfigError(f"{len(index)} joined runs are too few for {config.folds}-fold CV")
    if choose not in ("auto", "cv", "scale"):
        raise ConfigError(f"unknown --choose '{choose}' (auto, cv, scale)")
    if choose == "scale" and not scales:
        raise ConfigError("--choose scale needs runs at another scale: --scale NAME=M.csv,L.csv")
    held = held_out_runs(scales or [], domains, list(objective))
    os.makedirs(output, exist_ok=True)
    observed = {t: L[:, loss_columns.index(t)] for t in objective}
    observed_objective = sum(w * observed[t] for t, w in objective.items())
    saved_kinds, cv, importances, oof, full = {}, {}, {}, {}, {}
    for kind in kinds:
        saved_kinds[kind], cv[kind], importances[kind] = {}, {}, {}
        for target in objective:
            monotone = own_domain(target, domains)
            oof[(kind, target)] = cross_validate(kind, X, observed[target], config, monotone)
            cv[kind][target] = correlations(oof[(kind, target)], observed[target], config.seed)
            model = full[(kind, target)] = REGRESSORS[kind].fit(X, observed[target], config,
                                                                monotone)
            saved_kinds[kind][target] = model.save(output, f"{kind}-{slug(target)}")
            importances[kind][target] = dict(zip(domains, model.importances().tolist()))
            scores = cv[kind][target]
            log(f"sluice mixture: {kind:8s} {target}: cross-validated Spearman "
                f"{scores['spearman']:.4f} [{scores['low']:.3f}, {scores['high']:.3f}]")
        oof_objective = sum(w * oof[(kind, t)] for t, w in objective.items())
        cv[kind]["objective"] = correlations(oof_objective, observed_objective, config.seed)
    transfer, trivial = {}, {}
    for target in objective if scales else ():
        own = own_domain(target, domains)
        transfer[target] = scale_transfer(kinds, X, observed[target], held[target], config, own,
                                          fitted={k: full[(k, target)] for k in kinds})
        if own is not None:
            trivial[target] = {}
            for name, (HX, hy) in held[target].items():
                low, high = bootstrap_spearman(-HX[:, own], hy, seed=config.seed)
                trivial[target][name] = {"spearman": float(spearmanr(-HX[:, own], hy)[0]),
                                         "low": low, "high": high, "n": int(len(hy))}
        for kind, scores in transfer[target].items():
            log(f"sluice mixture: {kind:8s} {target}: Spearman at "
                + ", ".join(f"{n} {v['spearman']:.4f} [{v['low']:.3f}, {v['high']:.3f}]"
                            for n, v in scores.items()))
    if choose == "scale":
        per_target = {t: choose_by_scale(transfer[t]) for t in objective}
        chosen = (next(iter(per_target.values())) if len(set(per_target.values())) == 1
                  else per_target)
    elif choose == "auto" and STACK in kinds:
        chosen = STACK
    else:
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
    write_json_atomic(os.path.join(output, MODEL_FILE), saved)
    model, _ = load_model(output)
    caps = None
    try:
        if budget:
            caps = budget_caps(np.array([tokens[d] for d in domains]), budget, max_epochs)
        best = optimum(model, prior, proposal, candidates, top_k, config.seed, caps)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if budget:
        best["budget"] = {"tokens": budget, "max_epochs": max_epochs,
                          "caps": dict(zip(domains, caps.tolist())),
                          "epochs": {d: best["weights"][d] * budget / tokens[d]
                                     if tokens[d] else 0.0 for d in domains}}
    # Uncertainty of the optimum's predicted losses: the chosen kind's out-of-fold error.
    best["predicted_rmse"] = {t: cv[model.kind_of(t)][t]["rmse"] for t in objective}
    mixture = {**best, "model": chosen if isinstance(chosen, str) else PER_TARGET,
               "target_models": chosen if isinstance(chosen, dict) else None,
               "targets": objective, "prior": saved["prior"],
               "prior_source": prior_source}
    report = {"runs": len(index), "domains": domains, "targets": objective, "chosen": chosen,
              "cross_validation": cv, "importances": importances,
              "fit_config": asdict(config), "mixtures": mixtures, "losses": losses,
              "optimum_predicted": best["predicted"], "choose": choose,
              "scale_transfer": transfer, "scale_trivial": trivial, "scales": scales or []}
    for name, data in ((FIT_FILE, report), (MIXTURE_FILE, mixture)):
        write_json_atomic(os.path.join(output, name), data)
    oof_columns = [(k, t) for k in kinds for t in objective]
    write_csv(os.path.join(output, TRAIN_FILE),
              [INDEX, *domains, *objective, *(f"cv/{k}/{t}" for k, t in oof_columns)],
              ([i, *X[r], *(observed[t][r] for t in objective),
                *(oof[c][r] for c in oof_columns)] for r, i in enumerate(index)))
    why = {"cv": "cross-validated Spearman", "scale": "Spearman on the held-out scale",
           "auto": "default" if chosen == STACK else "cross-validated Spearman"}[choose]
    log(f"sluice mixture: chose {chosen} ({why}); optimum predicted {best['predicted']:.4f}"
        f" -> {os.path.join(output, MIXTURE_FILE)}")
    return report


def cmd_fit(args) -> int:
    kinds = {"both": [LIGHTGBM, LINEAR], "all": list(MODEL_KINDS)}.get(args.model, [args.model])
    # cross-validation folds and the linear fit, the boosters, the report's figures
    require("mixture", "sklearn",
            *([LIGHTGBM] if {LIGHTGBM, STACK} & set(kinds) else []), "matplotlib",
            by="command 'mixture fit'")
    config = FitConfig(learning_rate=args.learning_rate, rounds=args.rounds,
                       validation_fraction=args.validation_fraction, ensemble=args.ensemble,
                       monotone=args.monotone, folds=args.folds, seed=args.seed,
                       law_starts=args.law_starts, stack_own=args.stack_own)
    if not 0 < config.validation_fraction < 1:
        raise ConfigError("--validation-fraction must be between 0 and 1")
    fit(args.mixtures, args.losses, args.target, kinds, args.output, config, args.domains,
        candidates=args.candidates, top_k=args.top_k, scales=args.scale, choose=args.choose,
        budget=args.budget, max_epochs=args.max_epochs)
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


def cmd_suggest(args) -> int:
    require("mixture", "sklearn", by="command 'mixture suggest'")
    return suggest_runs(args.mixtures, args.losses, args.target, args.n, args.output,
                        pool=args.pool, domains_tokens=args.domains,
                        candidates=args.candidates, seed=args.seed, xi=args.xi,
                        low_fidelity=args.low_fidelity)


def suggest_runs(mixtures: str, losses: str, targets: list[str], n: int, output: str,
                 pool: str | None = None, domains_tokens: list[str] | None = None,
                 candidates: int = 20_000, seed: int = 42, xi: float = 0.01,
                 proposal: ProposalConfig = ProposalConfig(), low_fidelity: str | None = None,
                 log=print) -> int:
    """Ask/tell: the runs so far (mixtures + losses joined on index) -> the next `n` mixtures by
    batch expected improvement of a Gaussian process on the objective. Candidates: the rows of
    `pool` not yet run, else draws from the proposal distribution (token prior from
    `domains_tokens`, or the mean of the runs, untempered and uncapped). `low_fidelity`
    (`MIXTURES.csv,LOSSES.csv`): runs of smaller proxies that inform the GP (multi-fidelity);
    the suggestions are for the fidelity of `mixtures`."""
    index, domains, X, loss_columns, L = join(mixtures, losses)
    objective = resolve_targets(targets, loss_columns)
    y = sum(w * L[:, loss_columns.index(t)] for t, w in objective.items())
    low = None
    if low_fidelity:
        held = held_out_runs([f"low={low_fidelity}"], domains, list(objective),
                             "--low-fidelity")
        LX = held[next(iter(objective))]["low"][0]
        low = (LX, sum(w * held[t]["low"][1] for t, w in objective.items()))
    if n < 1:
        raise ConfigError("--n must be at least 1")
    if pool:
        pool_index, C = mixture_matrix(pool, domains)
        seen = {tuple(np.round(row, 9)) for row in X}
        keep = [k for k, row in enumerate(C) if tuple(np.round(row, 9)) not in seen]
        pool_index, C = [pool_index[k] for k in keep], C[keep]
        source = f"{len(C)} not-yet-run rows of '{pool}'"
    else:
        if domains_tokens:
            prior = aligned_prior(read_domain_tokens(domains_tokens), domains)
        else:
            prior = X.mean(axis=0) / X.mean(axis=0).sum()
            proposal = replace(proposal, temperature=1.0, max_usage=math.inf)
        C = sample_candidates(prior, candidates, proposal, np.random.default_rng(seed))
        C = np.unique(C, axis=0)
        pool_index, source = None, f"{len(C)} proposal draws"
    if len(C) == 0:
        raise ConfigError("no candidate mixtures left to suggest")
    picks = suggest(X, y, C, n, SuggestConfig(xi=xi, seed=seed), low)
    numeric = [int(i) for i in index if re.fullmatch(r"-?\d+", i)]
    first = max(numeric, default=0) + 1
    digits = max(1, -int(math.floor(math.log10(proposal.minimum))))
    rows = []
    for k, pick in enumerate(picks):
        label = pool_index[pick] if pool_index is not None else first + k
        rows.append([label, *(f"{w:.{digits}f}" if pool_index is None else repr(float(w))
                              for w in C[pick])])
    write_csv(output, [INDEX, *domains], rows)
    log(f"sluice mixture: {len(picks)} mixtures suggested from {source} after {len(y)} runs"
        + (f" and {len(low[1])} low-fidelity runs" if low else "") + " "
        f"(best objective so far {y.min():.4f}) -> {output}")
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
    per domain to manifest.json under `mixture`. A mixture with a `schedule` is applied phase by
    phase, each to `OUTPUT/phase-<k>/` with its share of the budget and of the repeat cap;
    `OUTPUT/schedule.json` sums them up."""
    from transforms.mixture.sampling import load_schedule, schedule_epoch_caps

    phases = load_schedule(mixture) if isinstance(mixture, str) else None
    if not phases:
        return _apply_phase(mixture, inputs, tokens, output, beam_args, max_epochs, on_cap,
                            seed, None, log)
    caps = schedule_epoch_caps(phases, max_epochs)
    plans, budgets = [], _split_budget(tokens, [p["fraction"] for p in phases])
    for k, (phase, budget) in enumerate(zip(phases, budgets)):
        log(f"sluice mixture: phase {k}: {phase['fraction']:.0%} of the budget "
            f"({budget:,} tokens)")
        plan = _apply_phase(phase["weights"], inputs, budget, os.path.join(output, f"phase-{k}"),
                            beam_args, max_epochs, on_cap, seed + k, caps[k], log)
        plans.append({"phase": k, "fraction": phase["fraction"], "output": f"phase-{k}", **plan})
    epochs: dict[str, float] = {}
    for plan in plans:
        for domain, entry in plan["domains"].items():
            epochs[domain] = epochs.get(domain, 0.0) + entry["written_epochs"]
    summary = {"tokens": tokens, "max_epochs": max_epochs, "mixture_file": mixture,
               "written_tokens": sum(p["written_tokens"] for p in plans),
               "written_epochs": epochs, "phases": plans}
    write_json_atomic(os.path.join(output, "schedule.json"), summary)
    log(f"sluice mixture: {len(plans)} phases, {summary['written_tokens']:,} tokens -> {output}")
    return summary


def _split_budget(tokens: int, fractions: list[float]) -> list[int]:
    """Integer budgets per phase that sum to `tokens`."""
    edges = np.rint(np.cumsum([0.0, *fractions]) / sum(fractions) * tokens).astype(int)
    return np.diff(edges).tolist()


def _apply_phase(mixture, inputs: list[str], tokens: int, output: str, beam_args: list[str],
                 max_epochs: float, on_cap: str, seed: int, epoch_caps, log) -> dict:
    from pipelines.job import run_job
    from transforms.mixture.sampling import PLAN_FILE, load_weights

    weights = load_weights(mixture)
    stage = {"mixture": weights, "tokens": tokens, "max_epochs": max_epochs, "on_cap": on_cap,
             "seed": seed}
    if epoch_caps is not None:
        stage["epoch_caps"] = epoch_caps
    data = {"input": parse_inputs(inputs), "output": output, "stages": [{"mixture": stage}]}
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
        cap = (epoch_caps or {}).get(domain, max_epochs)
        log(f"sluice mixture: '{domain}' hit the repeat cap ({cap:g} epochs); "
            f"its shortfall went to {'the other domains' if on_cap == 'redistribute' else 'nowhere'}")
    for domain in plan["missing_domains"]:
        log(f"sluice mixture: '{domain}' has weight but no documents in the inputs")
    log(f"sluice mixture: wrote {plan['written_tokens']:,} tokens (budget {tokens:,}) -> {output}")
    return plan


def parse_factors(specs: list[str]) -> dict[str, float]:
    factors = {}
    for spec in specs:
        domain, sep, value = spec.rpartition("=")
        try:
            factors[domain] = float(value)
        except ValueError:
            sep = ""
        if not sep or not domain:
            raise ConfigError(f"--upsample expects DOMAIN=FACTOR, got '{spec}'")
    return factors


def cmd_schedule(args) -> int:
    from transforms.mixture.sampling import load_schedule, load_weights, read_mixture
    from transforms.mixture.schedule import (schedule_document, temperature_schedule,
                                             upsampling_schedule)

    if bool(args.upsample) == (args.temperature is not None):
        raise ConfigError("give one recipe: --upsample DOMAIN=FACTOR ... or --temperature T")
    source = read_mixture(args.mixture)
    if load_schedule(source):
        raise ConfigError(f"'{args.mixture}' already has a schedule; start from a plain mixture")
    # a mixture.json keeps its other keys (fit's prediction, prior, ...); a bare mapping has none
    carried = ({k: v for k, v in source.items() if k not in ("weights", "schedule")}
               if isinstance(source, dict) and "weights" in source else {})
    base = load_weights(source)
    if args.upsample:
        recipe = {"recipe": "upsample_end", "factors": parse_factors(args.upsample),
                  "final_fraction": args.final_fraction, "keep_overall": args.keep_overall}
        phases = upsampling_schedule(base, recipe["factors"], args.final_fraction,
                                     args.keep_overall)
    else:
        recipe = {"recipe": "temperature", "temperature": args.temperature,
                  "cooldown": args.cooldown, "steps": args.steps}
        phases = temperature_schedule(base, args.temperature, args.cooldown, args.steps)
    document = {**carried, **schedule_document(base, phases, recipe)}
    write_json_atomic(args.output, document)
    print(f"sluice mixture: {len(phases)}-phase schedule ({recipe['recipe']}) -> {args.output}")
    for k, phase in enumerate(phases):
        top = sorted(phase["weights"].items(), key=lambda kv: -kv[1])[:3]
        print(f"  phase {k}: {phase['fraction']:.1%} of the tokens; top "
              + ", ".join(f"{short(d)} {w:.3f}" for d, w in top))
    return 0


def cmd_apply(args) -> int:
    apply(args.mixture, args.inputs, args.tokens, args.output, args.beam_args, args.max_epochs,
          args.on_cap, args.seed)
    return 0


def cmd_report(args) -> int:
    require("mixture", "matplotlib", by="command 'mixture report'")
    from pipelines.report import write_applied_report, write_mixture_report

    if not args.model and not args.applied:
        raise ConfigError("mixture report needs --model DIR (a fit) or --applied DIR "
                          "(an apply output), or both")
    if not args.model:
        if args.eval or args.compare or args.tokens or args.domains:
            raise ConfigError("--eval, --compare, --tokens and --domains need --model")
        path = write_applied_report(args.applied)
    else:
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
    p.add_argument("--model", choices=[*MODEL_KINDS, "both", "all"], default="all",
                   help="regressors to fit: one kind, both (lightgbm, linear) or all (default)")
    p.add_argument("--choose", choices=["auto", "cv", "scale"], default="auto",
                   help="auto: the stack when fitted, else cv; cv: best cross-validated "
                        "Spearman on the objective; scale: per target the kind that ranks the "
                        "--scale runs best")
    p.add_argument("--scale", action="append", default=[], metavar="NAME=MIXTURES.csv,LOSSES.csv",
                   help="runs of larger proxy models, only scored: Spearman with bootstrap "
                        "intervals per kind and target; --choose scale picks by them")
    p.add_argument("--law-starts", type=int, default=fit_defaults.law_starts,
                   help="least-squares starts of the mixing law")
    p.add_argument("--stack-own", type=float, default=fit_defaults.stack_own,
                   help="share of the own-weight prior in the stack (0: LightGBM alone)")
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
    p.add_argument("--budget", type=int, metavar="TOKENS",
                   help="token budget of the large run: the optimum repeats no domain beyond "
                        "--max-epochs (needs --domains)")
    p.add_argument("--max-epochs", type=float, default=4.0,
                   help="repeat cap per domain under --budget (default 4)")
    p.add_argument("--seed", type=int, default=fit_defaults.seed)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("suggest", help="the next proxy mixtures to train (Bayesian optimisation)")
    p.add_argument("--mixtures", required=True, metavar="CSV", help="mixtures run so far")
    p.add_argument("--losses", required=True, metavar="CSV", help="their losses")
    p.add_argument("--target", action="append", required=True, metavar="COLUMN[=WEIGHT]")
    p.add_argument("--n", type=int, default=8, help="mixtures to suggest (default 8)")
    p.add_argument("--output", required=True, metavar="CSV")
    p.add_argument("--pool", metavar="CSV", help="choose among these mixtures (not yet run)")
    p.add_argument("--domains", nargs="+", metavar="TOKENS.json|MANIFEST",
                   help="token counts: the prior and caps of the candidate draws")
    p.add_argument("--candidates", type=int, default=20_000,
                   help="proposal draws to choose among when there is no --pool")
    p.add_argument("--low-fidelity", metavar="MIXTURES.csv,LOSSES.csv",
                   help="runs of smaller proxy models to inform the GP (multi-fidelity)")
    p.add_argument("--xi", type=float, default=SuggestConfig().xi,
                   help="expected-improvement margin (standardised loss units)")
    p.add_argument("--seed", type=int, default=42)
    p.set_defaults(func=cmd_suggest)

    p = sub.add_parser("predict", help="predict the objective for mixtures")
    p.add_argument("--model", required=True, metavar="DIR")
    p.add_argument("--mixtures", required=True, metavar="CSV")
    p.add_argument("--output", required=True, metavar="CSV")
    p.add_argument("--kind", choices=list(MODEL_KINDS), help="default: the one fit chose")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("schedule", help="a phase schedule from a mixture (upsampling at the end, "
                                        "or temperature sampling with a cooldown)")
    p.add_argument("--mixture", required=True, metavar="mixture.json",
                   help="the base mixture, e.g. fit's optimum")
    p.add_argument("--output", required=True, metavar="mixture.json")
    p.add_argument("--upsample", action="append", default=[], metavar="DOMAIN=FACTOR",
                   help="sample DOMAIN FACTOR times more in the final phase (Blakeney et al. "
                        "2024); repeatable")
    p.add_argument("--final-fraction", type=float, default=0.15,
                   help="share of the tokens in the upsampled final phase (default 0.15)")
    p.add_argument("--keep-overall", action="store_true",
                   help="lower the upsampled domains earlier so the run as a whole still "
                        "samples the base mixture")
    p.add_argument("--temperature", type=float,
                   help="sample w ** (1/T), then cool down to the base mixture")
    p.add_argument("--cooldown", type=float, default=0.2,
                   help="share of the tokens over which T falls to 1 (default 0.2)")
    p.add_argument("--steps", type=int, default=4, help="phases of the cooldown (default 4)")
    p.set_defaults(func=cmd_schedule)

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

    p = sub.add_parser("report", help="render DIR/report.html for a fitted model and/or an "
                                      "apply output")
    p.add_argument("--model", metavar="DIR",
                   help="a fitted model (its report.html); without it, --applied DIR gets one")
    p.add_argument("--eval", action="append", default=[], metavar="NAME=MIXTURES.csv,LOSSES.csv",
                   help="unseen runs to score the fit on (repeatable)")
    p.add_argument("--compare", action="append", default=[], metavar="NAME=MIXTURE",
                   help="reference mixture (mixture.json, JSON or RegMix YAML) to plot")
    p.add_argument("--domains", nargs="+", metavar="TOKENS.json|MANIFEST",
                   help="token counts for the budget table (default: those given to fit)")
    p.add_argument("--tokens", type=int, help="token budget for the epochs table")
    p.add_argument("--max-epochs", type=float, default=4.0)
    p.add_argument("--applied", metavar="DIR",
                   help="an `apply` output to report on: budget or schedule, tokens by "
                        "licence, effective tokens")
    p.set_defaults(func=cmd_report)
