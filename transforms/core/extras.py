"""Optional dependencies: `pip install sluice` brings what the core stages need (ingest,
heuristics, dedup, langid, quality, perplexity, buckets, filter, sink); heavy stacks come with
the extra of the stage or command that needs them (setup.py `extras_require`):

    selection  torch, scikit-learn, tokenizers   stages el2n, sensitivity, the pruning stages;
                                              `sluice select`
    mixture    lightgbm, scikit-learn, matplotlib   `sluice mixture fit|predict|report`, the
                                              corpus report of `sluice refresh`
    llm        transformers, tokenizers       chunking for the vLLM stages (rephrase, lm_perplexity)
    tokens     tokenizers                     the `tokenize` stage and `sluice tokenize`

`require` checks before anything runs (a stage's `__init__`, a command's start), so a missing
extra is one line naming the `pip install` that fixes it, not an ImportError on a worker. It also
records the extras a job's stages use (`recording_extras`), so a job for remote workers can have
them installed there (`extra_requirements`: the pinned lines from the installed package's
metadata, i.e. setup.py's `extras_require`).
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import re

from transforms.core.config import ConfigError

# Import name -> the distribution pip installs, where they differ.
DISTRIBUTIONS = {"sklearn": "scikit-learn"}
_RECORDERS: list[set[str]] = []


def missing(*modules: str) -> list[str]:
    """The top-level modules of `modules` that cannot be imported here (checked without
    importing them, so a present torch costs nothing)."""
    absent = []
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a broken parent package, or a spec-less module
            found = False
        if not found:
            absent.append(module)
    return absent


def require(extra: str, *modules: str, by: str) -> None:
    """Raise ConfigError `<by> needs <packages>: pip install "sluice[<extra>]"` unless every
    module imports. `by` names the user: "stage 'el2n'", "command 'mixture fit'"."""
    for recorder in _RECORDERS:
        recorder.add(extra)
    absent = missing(*modules)
    if absent:
        packages = ", ".join(DISTRIBUTIONS.get(m, m) for m in absent)
        raise ConfigError(f'{by} needs {packages}: pip install "sluice[{extra}]"')


@contextlib.contextmanager
def recording_extras():
    """The set of extras `require`d while the block runs (e.g. while a job's stages are built)."""
    extras: set[str] = set()
    _RECORDERS.append(extras)
    try:
        yield extras
    finally:
        _RECORDERS.remove(extras)


def extra_requirements(extras: set[str], distribution: str = "sluice") -> list[str]:
    """The pip requirement lines of `extras`, as the installed distribution declares them (its
    `extra == "..."` markers); empty when the project is not installed as a distribution."""
    try:
        declared = importlib.metadata.requires(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        return []
    lines = set()
    for requirement in declared:
        spec, _, marker = requirement.partition(";")
        extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", marker)
        if extra and extra.group(1) in extras:
            lines.add(spec.strip())
    return sorted(lines)
