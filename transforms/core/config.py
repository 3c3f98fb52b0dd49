"""Validated configuration dataclasses.

Every stage and job setting is a pydantic dataclass with `extra="forbid"` and strict types, so an
unknown key or a wrong type in YAML fails before anything runs, with a message naming the key.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, TypeVar

import pydantic
from pydantic import ConfigDict, TypeAdapter

T = TypeVar("T")

STRICT = ConfigDict(extra="forbid", strict=True)


def config_dataclass(cls):
    """Decorator: a dataclass validated strictly, rejecting unknown keys."""
    return pydantic.dataclasses.dataclass(cls, config=STRICT)


class ConfigError(ValueError):
    """A job configuration that cannot run; the message names the offending key."""


def parse(cls: type[T], data: Any, where: str = "") -> T:
    """Validate `data` (a mapping from YAML) into `cls`, naming the offending key on error."""
    if data is None:
        data = {}
    try:
        # JSON mode: strict types (no "5" -> 5), yet mappings are accepted for dataclasses.
        return TypeAdapter(cls).validate_json(json.dumps(data, default=str))
    except pydantic.ValidationError as exc:
        problems = []
        for error in exc.errors():
            key = ".".join(str(p) for p in (where, *error["loc"]) if p != "")
            if error["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
                problems.append(f"unknown key '{key}'")
            else:
                problems.append(f"'{key}': {error['msg']} (got {error.get('input')!r})")
        raise ConfigError("invalid config: " + "; ".join(problems)) from None


def to_dict(config: Any) -> Any:
    """A config dataclass back to plain data (for manifests and config hashes)."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    if isinstance(config, dict):
        return {k: to_dict(v) for k, v in config.items()}
    return config


def is_local(options) -> bool:
    """Whether the job runs on Beam's local runner (the FnApiRunner Sluice pins)."""
    from apache_beam.options.pipeline_options import StandardOptions
    return options.view_as(StandardOptions).runner in (None, "FnApiRunner", "DirectRunner")


def local_workers(options) -> int | None:
    """The local runner's worker processes, or None on a remote runner (Dataflow, Flink...),
    where the stages size their work for a cluster instead."""
    from apache_beam.options.pipeline_options import DirectOptions
    if not is_local(options):
        return None
    return options.view_as(DirectOptions).direct_num_workers or 1
