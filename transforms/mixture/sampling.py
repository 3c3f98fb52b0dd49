"""The `mixture` stage: sample documents per `source` to a mixture and a token budget.

Each domain (a document's `source`) gets `weight * tokens` of the budget. A domain smaller than
its share is repeated, at most `max_epochs` times: beyond about 4 epochs repeated tokens lose most
of their value (Muennighoff et al. 2023, "Scaling Data-Constrained Language Models"). What a capped
domain cannot supply is, by default, spread over the other domains in proportion to their weights
(water-filling), so the budget is still met; `on_cap: shortfall` leaves the budget short instead.

Two passes over the input: the first counts the tokens available per source (whitespace tokens,
the manifests' unit, via `sink.shard_stats`), which fixes each domain's sampling rate r (expected
epochs); the second emits each document floor(r) times plus once more with probability frac(r),
decided by a seeded hash of its id, so a run is reproducible. Repeated copies carry
`mixture_copy` = 1, 2, ...; the first is 0. Documents not sampled are dropped as
`mixture_unsampled` (id and source only, no payload); sources outside the mixture as
`mixture_source_not_in_mixture`. Added copies are counted as `input` (and as
`mixture.repeated_copies`), keeping `input = kept + dropped + failed` true of the written rows.
The plan (rates, epochs, cap hits) goes to `OUTPUT/mixture_plan.json`.
"""
from __future__ import annotations

import json
from typing import Literal, Optional, Union

import apache_beam as beam
import numpy as np
import pyarrow as pa
import xxhash
from apache_beam.io.filesystems import FileSystems

from transforms.core.accounting import INPUT, Rejects, count
from transforms.core.columns import MIXTURE_COPY
from transforms.core.config import ConfigError, config_dataclass
from transforms.core.documents import ID, SOURCE, TEXT, with_column
from transforms.core.files import write_json_atomic
from transforms.core.stage import REJECTS, Contract, Stage, documents_and_rejects
from transforms.io.sink import shard_stats

PLAN_FILE = "mixture_plan.json"
UNSAMPLED, UNKNOWN_SOURCE = "mixture_unsampled", "mixture_source_not_in_mixture"


def read_mixture(mixture: Union[str, dict]) -> Union[dict, list]:
    """A mixture.json's content (a path read through FileSystems), or the mapping as given."""
    if not isinstance(mixture, str):
        return mixture
    try:
        with FileSystems.open(mixture) as f:
            return json.loads(f.read())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read mixture '{mixture}': {exc}") from None


def load_weights(mixture: Union[str, dict[str, float]]) -> dict[str, float]:
    """Normalised weights from a mixture.json (path or content: its `weights`) or a mapping."""
    mixture = read_mixture(mixture)
    if isinstance(mixture, dict) and isinstance(mixture.get("weights"), dict):
        mixture = mixture["weights"]
    if not isinstance(mixture, dict) or not mixture or not all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0
            for w in mixture.values()):
        raise ConfigError(f"a mixture must map domains to non-negative weights, got {mixture!r}")
    total = float(sum(mixture.values()))
    if total <= 0:
        raise ConfigError("the mixture's weights are all zero")
    return {str(domain): w / total for domain, w in mixture.items()}


def load_schedule(mixture: Union[str, dict]) -> Optional[list[dict]]:
    """The phases of a mixture.json `schedule` (`[{fraction, weights}, ...]`, fractions of the
    token budget summing to 1, weights normalised), or None when it has none."""
    mixture = read_mixture(mixture)
    schedule = mixture.get("schedule") if isinstance(mixture, dict) else None
    if schedule is None:
        return None
    if not isinstance(schedule, list) or not schedule:
        raise ConfigError("a mixture schedule must be a non-empty list of {fraction, weights}")
    phases = []
    for k, phase in enumerate(schedule):
        fraction = phase.get("fraction") if isinstance(phase, dict) else None
        if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or fraction <= 0:
            raise ConfigError(f"schedule phase {k}: 'fraction' must be a positive number")
        phases.append({"fraction": float(fraction), "weights": load_weights(phase.get("weights"))})
    total = sum(p["fraction"] for p in phases)
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(f"the schedule's fractions sum to {total:g}, not 1")
    return phases


def schedule_epoch_caps(phases: list[dict], max_epochs: float) -> list[dict[str, float]]:
    """Per-phase repeat caps that keep each domain's epochs over all phases <= `max_epochs`:
    a domain's cap is split over the phases in proportion to its target tokens in each
    (weight x fraction)."""
    domains = sorted({d for p in phases for d in p["weights"]})
    target = [{d: p["weights"].get(d, 0.0) * p["fraction"] for d in domains} for p in phases]
    totals = {d: sum(t[d] for t in target) for d in domains}
    return [{d: max_epochs * t[d] / totals[d] if totals[d] > 0 else 0.0 for d in domains}
            for t in target]


def plan_sampling(weights: dict[str, float], available: dict[str, int], budget: int,
                  max_epochs: float, on_cap: str = "redistribute",
                  epoch_caps: Optional[dict[str, float]] = None) -> dict:
    """Tokens and epochs per domain for a budget, with repeats capped at `max_epochs` (or
    `epoch_caps[domain]` where given, e.g. a schedule phase's share of the cap).

    `redistribute` water-fills: capped domains take their cap x their tokens and the rest of
    the budget is shared by the others in proportion to their weights, again and again until no
    new domain hits the cap. `shortfall` just caps.
    """
    cap = {d: (epoch_caps or {}).get(d, max_epochs) for d in weights}
    domains = sorted(weights)
    target = {d: weights[d] * budget for d in domains}
    planned = {d: 0.0 for d in domains}
    capped: set[str] = set()
    active = [d for d in domains if weights[d] > 0 and available.get(d, 0) > 0]
    remaining = float(budget)
    while active:
        total_weight = sum(weights[d] for d in active)
        share = {d: (remaining * weights[d] / total_weight if on_cap == "redistribute"
                     else target[d]) for d in active}
        over = [d for d in active if share[d] > cap[d] * available[d]]
        if not over:
            planned.update(share)
            break
        for d in over:
            planned[d] = cap[d] * available[d]
            remaining -= planned[d]
            capped.add(d)
        active = [d for d in active if d not in over]
    domains_plan = {}
    for d in domains:
        tokens = available.get(d, 0)
        domains_plan[d] = {
            "weight": weights[d], "available_tokens": int(tokens),
            "target_tokens": target[d], "planned_tokens": planned[d],
            "epochs": planned[d] / tokens if tokens else 0.0,
            "repeat_cap_hit": d in capped,
            "missing": weights[d] > 0 and not tokens,
        }
    total_planned = sum(planned.values())
    return {
        "tokens": budget, "max_epochs": max_epochs, "on_cap": on_cap,
        **({"epoch_caps": {d: cap[d] for d in domains}} if epoch_caps else {}),
        "planned_tokens": total_planned, "shortfall_tokens": max(0.0, budget - total_planned),
        "repeat_cap_hits": sorted(capped),
        "missing_domains": [d for d in domains if domains_plan[d]["missing"]],
        "domains": domains_plan,
    }


def copies_for(ids: list, rate: np.ndarray, seed: int) -> np.ndarray:
    """How many times each document is emitted: floor(r), plus one with probability frac(r),
    the coin being a seeded hash of the id (reproducible across runs and workers)."""
    coins = np.array([xxhash.xxh64_intdigest(f"{seed}\0{i}".encode()) for i in ids],
                     dtype=np.float64) / 2.0**64
    whole = np.floor(rate)
    return (whole + (coins < rate - whole)).astype(np.int64)


def _add_counts(into: dict, counts: dict) -> dict:
    for source, entry in counts.items():
        total = into.setdefault(source, {"docs": 0, "tokens": 0})
        total["docs"] += entry["docs"]
        total["tokens"] += entry["tokens"]
    return into


class SourceTokens(beam.CombineFn):
    """{source: {"docs", "tokens"}} over all batches."""

    def create_accumulator(self):
        return {}

    def add_input(self, accumulator, batch):
        return _add_counts(accumulator, shard_stats(pa.Table.from_batches([batch]))["sources"])

    def merge_accumulators(self, accumulators):
        merged: dict = {}
        for accumulator in accumulators:
            _add_counts(merged, accumulator)
        return merged

    def extract_output(self, accumulator):
        return accumulator


def _write_plan(plan: dict, output_dir: Optional[str]) -> None:
    if not output_dir:
        return
    write_json_atomic(FileSystems.join(output_dir, PLAN_FILE), plan)


def stage_weights(config: "MixtureConfig") -> dict[str, float]:
    """The weights the stage samples: the mixture's, or phase `config.phase` of its schedule.
    A scheduled mixture without `phase` is an error rather than its overall weights, which would
    silently drop the schedule."""
    mixture = read_mixture(config.mixture)  # once: both the schedule and the weights come from it
    phases = load_schedule(mixture)
    if phases and config.phase is None:
        raise ConfigError(
            f"mixture: the mixture has a {len(phases)}-phase schedule; run `sluice mixture "
            f"apply`, which writes every phase, or set 'phase' (0-{len(phases) - 1}) with that "
            f"phase's 'tokens'")
    if config.phase is None:
        return load_weights(mixture)
    if not phases:
        raise ConfigError("mixture: 'phase' is set but the mixture has no schedule")
    if not 0 <= config.phase < len(phases):
        raise ConfigError(f"mixture: 'phase' must be in 0-{len(phases) - 1}, got {config.phase}")
    return phases[config.phase]["weights"]


def make_plan(sources: dict, config: "MixtureConfig", output_dir: Optional[str]) -> dict:
    plan = plan_sampling(stage_weights(config),
                         {s: c["tokens"] for s, c in sources.items()},
                         config.tokens, config.max_epochs, config.on_cap, config.epoch_caps)
    plan["seed"] = config.seed
    plan["available"] = sources
    for domain in plan["repeat_cap_hits"]:
        count(f"mixture.repeat_cap_hit.{domain}")
    _write_plan(plan, output_dir)
    return plan


class SampleToMixtureFn(beam.DoFn):
    def __init__(self, stage: str, seed: int):
        self.stage = stage
        self.seed = seed

    def process(self, batch: pa.RecordBatch, plan: dict):
        domains = plan["domains"]
        sources = batch.column(SOURCE).to_pylist() if SOURCE in batch.schema.names \
            else [None] * batch.num_rows
        ids = batch.column(ID).to_pylist()
        rate = np.array([domains[s]["epochs"] if s in domains else 0.0 for s in sources])
        copies = copies_for(ids, rate, self.seed)
        rejects = Rejects(self.stage)
        for row in np.flatnonzero(copies == 0):
            reason = UNSAMPLED if sources[row] in domains else UNKNOWN_SOURCE
            rejects.drop(reason, ids[row], sources[row], None)
        extra = int(copies.sum() - np.count_nonzero(copies))
        count(INPUT, extra)
        count("mixture.repeated_copies", extra)
        if copies.any():
            starts = np.cumsum(copies) - copies
            take = np.repeat(np.arange(batch.num_rows), copies)
            copy_index = np.arange(len(take)) - np.repeat(starts, copies)
            yield with_column(batch.take(pa.array(take)), MIXTURE_COPY, pa.array(copy_index, pa.int32()))
        if len(rejects):
            yield beam.pvalue.TaggedOutput(REJECTS, rejects.take_batch())


@config_dataclass
class MixtureConfig:
    """`mixture`: a mixture.json path or `{source: weight}`; `tokens`: the budget (whitespace
    tokens, as in manifests); `max_epochs`: the repeat cap; `on_cap`: redistribute | shortfall;
    `epoch_caps`: per-source repeat caps overriding `max_epochs` (`apply` sets them per phase of
    a schedule so that the phases together stay within `max_epochs`); `phase`: which phase of a
    scheduled mixture to sample (required when the mixture has a `schedule`)."""

    mixture: Union[str, dict[str, float]]
    tokens: int
    max_epochs: float = 4.0
    on_cap: Literal["redistribute", "shortfall"] = "redistribute"
    seed: int = 0
    epoch_caps: Optional[dict[str, float]] = None
    phase: Optional[int] = None


class MixtureStage(Stage):
    """Sample documents per source to a mixture and token budget, with capped repeats."""

    Config = MixtureConfig

    def __init__(self, config: MixtureConfig, context=None):
        super().__init__(config, context)
        stage_weights(config)  # fail at build time, not inside the pipeline
        if config.tokens <= 0 or config.max_epochs <= 0:
            raise ConfigError("mixture: 'tokens' and 'max_epochs' must be positive")

    def contract(self) -> Contract:
        return Contract(reads=(SOURCE, TEXT), writes=(MIXTURE_COPY,))

    def expand(self, documents):
        output_dir = self.context.output_dir if self.context else None
        plan = (documents
                | "CountSourceTokens" >> beam.CombineGlobally(SourceTokens())
                | "Plan" >> beam.Map(make_plan, self.config, output_dir))
        return documents_and_rejects(documents, "Sample",
                                     SampleToMixtureFn("mixture", self.config.seed),
                                     beam.pvalue.AsSingleton(plan))
