"""Phase schedules for a mixture: which weights to sample at which point of training.

A schedule is a list of phases `{fraction, weights}`: each phase covers `fraction` of the token
budget (the fractions sum to 1) and is sampled to its own weights (`sluice mixture apply` writes
one output per phase; see `sampling.load_schedule`). Two published recipes generate one from a
base mixture (e.g. the optimum of `sluice mixture fit`):

- **Domain upsampling at the end of training** (Blakeney et al. 2024, "Does your data spark joy?
  Performance gains from domain upsampling at the end of training"): over the last 10-20% of the
  tokens, chosen domains (math, code, ...) are sampled `factor` times more often. With
  `keep_overall`, the first phase gives those domains correspondingly less, so that the run as
  a whole still follows the base mixture (and so its token budget and repeat caps).
- **Temperature sampling with a cooldown**: weights proportional to `w_i ** (1 / T)` (T > 1
  flattens the mixture, raising small domains, as in multilingual pretraining), then over the
  last `cooldown` of the tokens T falls in equal steps back to 1, the base mixture itself.

Pure functions over `{domain: weight}` mappings; the mixture stage and `apply` do the sampling.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from transforms.core.config import ConfigError


def _normalised(weights: dict[str, float]) -> dict[str, float]:
    total = float(sum(weights.values()))
    if total <= 0:
        raise ConfigError("a schedule phase's weights are all zero")
    return {d: float(w) / total for d, w in weights.items()}


def overall_weights(phases: list[dict]) -> dict[str, float]:
    """The mixture a schedule samples over the whole run: phase weights averaged by fraction."""
    domains = sorted({d for p in phases for d in p["weights"]})
    return _normalised({d: sum(p["fraction"] * p["weights"].get(d, 0.0) for p in phases)
                        for d in domains})


def upsampling_schedule(base: dict[str, float], factors: dict[str, float],
                        final_fraction: float = 0.15, keep_overall: bool = False) -> list[dict]:
    """Two phases: the base mixture, then the last `final_fraction` of the tokens with each
    domain in `factors` weighted `factor` times more (renormalised). `keep_overall` lowers those
    domains in the first phase so the whole run still samples `base`; it fails when the final
    phase alone would need more of a domain than the base gives the whole run."""
    unknown = sorted(set(factors) - set(base))
    if unknown:
        raise ConfigError(f"upsampling names domains not in the mixture: {', '.join(unknown)} "
                          f"(domains: {', '.join(sorted(base))})")
    if not 0 < final_fraction < 1:
        raise ConfigError(f"the final phase's fraction must be in (0, 1), got {final_fraction:g}")
    if any(f <= 0 for f in factors.values()):
        raise ConfigError("upsampling factors must be positive")
    base = _normalised(base)
    final = _normalised({d: w * factors.get(d, 1.0) for d, w in base.items()})
    first = dict(base)
    if keep_overall:
        head = 1.0 - final_fraction
        first = {d: (base[d] - final_fraction * final[d]) / head for d in base}
        short = sorted(d for d, w in first.items() if w < -1e-12)
        if short:
            most = {d: base[d] / final[d] / final_fraction if final[d] else float("inf")
                    for d in short}
            raise ConfigError(
                f"keep_overall: the final {final_fraction:.0%} alone would sample more of "
                f"{', '.join(short)} than the base mixture gives the whole run; lower the factor "
                f"or the final fraction (it fits while the final fraction is at most "
                f"{min(most.values()):.0%} at these factors)")
        first = _normalised({d: max(w, 0.0) for d, w in first.items()})
    return [{"fraction": 1.0 - final_fraction, "weights": first},
            {"fraction": final_fraction, "weights": final}]


def tempered(base: dict[str, float], temperature: float) -> dict[str, float]:
    """`w_i ** (1 / T)`, renormalised (T = 1: the base; T -> inf: uniform over its domains)."""
    if temperature <= 0:
        raise ConfigError(f"the temperature must be positive, got {temperature:g}")
    return _normalised({d: w ** (1.0 / temperature) if w > 0 else 0.0 for d, w in base.items()})


def temperature_schedule(base: dict[str, float], temperature: float, cooldown: float = 0.2,
                         steps: int = 4) -> list[dict]:
    """The base tempered at `temperature` for the first `1 - cooldown` of the tokens, then
    `steps` equal phases over the cooldown with T falling linearly to 1 (the last phase samples
    the base mixture itself). `cooldown` 0 gives one tempered phase."""
    if not 0 <= cooldown < 1:
        raise ConfigError(f"the cooldown fraction must be in [0, 1), got {cooldown:g}")
    if steps < 1:
        raise ConfigError("the cooldown needs at least one step")
    base = _normalised(base)
    phases = [{"fraction": 1.0 - cooldown, "weights": tempered(base, temperature)}]
    if cooldown > 0:
        for t in np.linspace(temperature, 1.0, steps + 1)[1:]:
            phases.append({"fraction": cooldown / steps, "weights": tempered(base, float(t))})
    return phases


def schedule_document(base: dict[str, float], phases: list[dict],
                      recipe: Optional[dict] = None) -> dict:
    """A mixture.json body: `weights` (what the whole run samples, so tools that read only the
    weights see the run's overall mixture), `schedule`, and the recipe that made it."""
    return {"weights": overall_weights(phases), "base_weights": _normalised(base),
            "schedule": phases, **({"schedule_recipe": recipe} if recipe else {})}
