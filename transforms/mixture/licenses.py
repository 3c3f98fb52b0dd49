"""Licences as a mixing dimension: licence ids -> tiers, and the `license_filter` stage.

MixtureVitae (Nguyen et al. 2025, arXiv:2509.25531) builds a pretraining corpus "permissive
first": public-domain and permissively licensed text, every source sorted into tiers by legal
risk, with provenance kept per shard so a user can choose how much risk to take. Sluice carries
the licence as a column (`license`, from a per-input `license:` setting or the records' own
`license` field, see `transforms/io/ingest.py`), counts tokens by licence in the manifest
(`outputs.documents.licenses`) and sorts licence ids into five tiers of decreasing freedom:

| tier | meaning | ids (SPDX-style, case and separators ignored) |
|---|---|---|
| `public_domain` | no rights reserved | CC0-*, PDDL-*, CC-PDM-*, Unlicense, public-domain, PD, US government works |
| `permissive` | use with attribution | MIT, Apache-*, BSD-*, ISC, Zlib, CC-BY-* (not SA/NC/ND), ODC-By-*, OGL-*, CDLA-Permissive-* |
| `copyleft` | share-alike terms follow derivatives | CC-BY-SA-*, GPL-*, LGPL-*, AGPL-*, MPL-*, EPL-*, GFDL-*, ODbL-*, CDLA-Sharing-* |
| `restricted` | no commercial use or no derivatives | any CC id with NC or ND |
| `unknown` | no licence, or an id not in this table | |

These are not MixtureVitae's own three tiers (which mix licence and provenance: government
works, EU text-and-data-mining exceptions); they are the licence half of that idea, as a table a
user can read. The first rule that matches an id decides its tier (`RULES`, in order).
"""
from __future__ import annotations

import re
from dataclasses import field
from typing import Literal, Optional

import pyarrow as pa

from transforms.core.columns import LICENSE, LICENSE_TIER
from transforms.core.config import ConfigError, config_dataclass
from transforms.core.scoring import ScoreBatchFn, Scored, ScoringStage
from transforms.core.stage import Contract

PUBLIC_DOMAIN, PERMISSIVE, COPYLEFT, RESTRICTED, UNKNOWN = (
    "public_domain", "permissive", "copyleft", "restricted", "unknown")
TIERS = (PUBLIC_DOMAIN, PERMISSIVE, COPYLEFT, RESTRICTED, UNKNOWN)

# (tier, pattern over the normalised id: upper case, runs of space/_/. turned into "-"), in order
RULES: tuple[tuple[str, re.Pattern], ...] = tuple((tier, re.compile(pattern)) for tier, pattern in (
    (RESTRICTED, r"^CC-BY(-SA)?-(NC|ND)|^CC-BY-NC|^CC-BY-ND|^CC-(NC|ND)"),
    (COPYLEFT, r"^CC-BY-SA|^(A|L)?GPL|^MPL|^EPL|^GFDL|^ODBL|^CDLA-SHARING|^EUPL|^OSL"),
    (PUBLIC_DOMAIN, r"^CC0|^PDDL|^CC-PDM|^UNLICENSE$|^PUBLIC-DOMAIN$|^PD$|^US-GOV"),
    (PERMISSIVE, r"^MIT(-|$)|^APACHE|^BSD|^ISC$|^ZLIB$|^CC-BY(-\d|$)|^ODC-BY|^OGL|"
                 r"^CDLA-PERMISSIVE|^PYTHON-|^PSF-|^BSL-1"),
))


def normalise(license_id: str) -> str:
    """`CC BY-SA 3.0` -> `CC-BY-SA-3-0`; `cc_by_sa_3.0` likewise."""
    return re.sub(r"[\s_.\-]+", "-", license_id.strip().upper()).strip("-")


def license_tier(license_id: Optional[str]) -> str:
    """The tier of a licence id (`unknown` for None, an empty id or one no rule matches)."""
    if not isinstance(license_id, str) or not license_id.strip():
        return UNKNOWN
    key = normalise(license_id)
    return next((tier for tier, pattern in RULES if pattern.search(key)), UNKNOWN)


@config_dataclass
class LicenseFilterConfig:
    """Keep documents whose licence is in a tier of `allow_tiers` or is one of `allow` (ids,
    compared normalised); `deny` ids are dropped whatever their tier. A document without a
    licence (or with an id no rule knows) is in tier `unknown`: kept only when `unknown` is
    allowed. Every kept document gets `tier_column`."""

    allow_tiers: list[Literal["public_domain", "permissive", "copyleft", "restricted",
                              "unknown"]] = field(default_factory=lambda: [PUBLIC_DOMAIN,
                                                                           PERMISSIVE])
    allow: list[str] = field(default_factory=list)
    deny: list[str] = field(default_factory=list)
    column: str = LICENSE
    tier_column: str = LICENSE_TIER


def drop_reason(license_id, config: LicenseFilterConfig) -> tuple[str, Optional[str]]:
    """(tier, drop reason or None) of one licence value. Reasons: `license_denied`,
    `license_missing` (no value), `license_unrecognised` (an id no rule knows),
    `license_tier_<tier>` (a known tier not allowed)."""
    tier = license_tier(license_id)
    key = normalise(license_id) if isinstance(license_id, str) else None
    if key is not None and key in {normalise(d) for d in config.deny}:
        return tier, "license_denied"
    if key is not None and key in {normalise(a) for a in config.allow}:
        return tier, None
    if tier in config.allow_tiers:
        return tier, None
    if tier == UNKNOWN:
        missing = not isinstance(license_id, str) or not license_id.strip()
        return tier, "license_missing" if missing else "license_unrecognised"
    return tier, f"license_tier_{tier}"


class LicenseFilterFn(ScoreBatchFn):
    stage = "license_filter"

    def score(self, batch: pa.RecordBatch) -> Scored:
        index = batch.schema.get_field_index(self.config.column)
        values = batch.column(index).to_pylist() if index >= 0 else [None] * batch.num_rows
        decided = [drop_reason(v, self.config) for v in values]
        return Scored(columns={self.config.tier_column: pa.array([t for t, _ in decided],
                                                                 pa.string())},
                      drop_reasons=[r for _, r in decided],
                      details=[f"{self.config.column}={v!r}" if r else ""
                               for v, (_, r) in zip(values, decided)])


class LicenseFilter(ScoringStage):
    """Drop documents by licence tier (see the module docstring)."""

    Config = LicenseFilterConfig

    def __init__(self, config: LicenseFilterConfig, context=None):
        super().__init__(config, context)
        if not config.allow_tiers and not config.allow:
            raise ConfigError("license_filter: 'allow_tiers' and 'allow' are both empty: "
                              "every document would be dropped")

    def contract(self) -> Contract:
        # a document without the column is tier `unknown`, so the column may be absent
        return Contract(reads=(), optional=(self.config.column,),
                        writes=(self.config.tier_column,))

    def score_fn(self) -> LicenseFilterFn:
        return LicenseFilterFn(self.config)
