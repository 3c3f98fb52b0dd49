"""The `filter` stage: keep documents whose score column is within bounds (or in a set of values).

Scoring stages only add columns; this stage thresholds any of them, so a corpus scored once can be
re-filtered at other thresholds without re-scoring. Each dropped document is counted under
`reason` (default `<column>_below_min`, `<column>_above_max`, `<column>_not_allowed`,
`<column>_missing`) and written to the dead-letter output.
"""
from __future__ import annotations

from typing import Literal, Optional, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.core.config import ConfigError, config_dataclass
from transforms.core.scoring import ScoreBatchFn, Scored, ScoringStage
from transforms.core.stage import Contract


@config_dataclass
class FilterConfig:
    """Keep rows with `min <= column <= max` (either bound optional), or `column in values`."""

    column: str
    min: Optional[float] = None
    max: Optional[float] = None
    values: Optional[list[Union[str, int]]] = None
    reason: Optional[str] = None
    missing: Literal["drop", "keep"] = "drop"   # rows without the column or with a null value


def _mask(array) -> np.ndarray:
    return np.asarray(array.to_numpy(zero_copy_only=False), dtype=bool)


def drop_reasons(column: Optional[pa.Array], n: int, config: FilterConfig) -> list[Optional[str]]:
    """The drop reason of every row (None = keep), vectorised over the column."""
    name = config.column
    reasons = np.full(n, None, dtype=object)
    if column is None or pa.types.is_null(column.type):
        if config.missing == "drop":
            reasons[:] = config.reason or f"{name}_missing"
        return reasons.tolist()
    if config.values is not None:
        allowed = pc.or_(pc.is_in(column, value_set=pa.array(config.values)), column.is_null())
        reasons[~_mask(allowed)] = config.reason or f"{name}_not_allowed"
    if config.min is not None:
        reasons[_mask(pc.less(column, config.min).fill_null(False))] = \
            config.reason or f"{name}_below_min"
    if config.max is not None:
        reasons[_mask(pc.greater(column, config.max).fill_null(False))] = \
            config.reason or f"{name}_above_max"
    if config.missing == "drop":
        reasons[_mask(column.is_null())] = config.reason or f"{name}_missing"
    return reasons.tolist()


class FilterFn(ScoreBatchFn):
    stage = "filter"

    def score(self, batch) -> Scored:
        index = batch.schema.get_field_index(self.config.column)
        column = batch.column(index) if index >= 0 else None
        reasons = drop_reasons(column, batch.num_rows, self.config)
        value = column.to_pylist() if column is not None else [None] * batch.num_rows
        details = [f"{self.config.column}={v!r}" if r else "" for v, r in zip(value, reasons)]
        return Scored(drop_reasons=reasons, details=details)


class FilterStage(ScoringStage):
    """Threshold a score column (see the module docstring)."""

    Config = FilterConfig

    def __init__(self, config: FilterConfig, context=None):
        super().__init__(config, context)
        if config.min is None and config.max is None and config.values is None:
            raise ConfigError(f"filter on '{config.column}': give min, max or values")

    def contract(self) -> Contract:
        if self.config.missing == "keep":  # rows without the column are kept: it may be absent
            return Contract(reads=(), optional=(self.config.column,))
        return Contract(reads=(self.config.column,))

    def score_fn(self) -> FilterFn:
        return FilterFn(self.config)
