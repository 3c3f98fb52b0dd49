"""transforms/core/extras.py: a stage or command whose optional extra is missing stops before
anything runs, with one line naming the `pip install` that fixes it."""
from __future__ import annotations

import importlib.util
import json

import pytest

from pipelines.cli import main
from transforms.core.config import ConfigError
from transforms.core.extras import missing, require


def hide(monkeypatch, *names: str) -> None:
    """Make `names` look uninstalled to the check (every other module is looked up as usual)."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in names else find_spec(name, *a))


def test_a_missing_module_is_one_line_with_the_pip_install():
    ran = []

    def stage():
        require("selection", "numpy", "sluice_no_such_module", by="stage 'el2n'")
        ran.append(True)

    with pytest.raises(ConfigError) as raised:
        stage()
    assert str(raised.value) == ("stage 'el2n' needs sluice_no_such_module: "
                                 'pip install "sluice[selection]"')
    assert ran == []


def test_present_modules_pass_and_are_not_imported():
    require("mixture", "numpy", "json", by="command 'mixture fit'")
    assert missing("numpy", "sluice_no_such_module", "sluice_no.such_child") == [
        "sluice_no_such_module", "sluice_no.such_child"]


def test_the_message_names_the_distribution_to_install(monkeypatch):
    hide(monkeypatch, "sklearn", "lightgbm")
    with pytest.raises(ConfigError, match=r"^command 'mixture fit' needs scikit-learn, lightgbm: "
                                          r'pip install "sluice\[mixture\]"$'):
        require("mixture", "sklearn", "lightgbm", "matplotlib", by="command 'mixture fit'")


def test_a_job_with_a_stage_whose_extra_is_missing_stops_before_running(monkeypatch, tmp_path,
                                                                        capsys):
    hide(monkeypatch, "torch")
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(3)))
    out = tmp_path / "out"
    assert main(["select", str(data), "--method", "el2n", "--output", str(out)]) == 2
    assert capsys.readouterr().err == \
        'sluice: stage \'el2n\' needs torch: pip install "sluice[selection]"\n'
    assert not out.exists()  # no pipeline, no output folder
