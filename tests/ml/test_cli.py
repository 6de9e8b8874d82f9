"""The `python -m ml` command line: each workflow stage registers its commands, every command has a handler,
and a failing command answers with a message and exit status 2, not a traceback."""
import argparse

import pytest

from ml import cli
from ml.cli import evaluation, serving, training

COMMANDS = {
    training: {"split", "models", "train", "tta", "benchmark", "screening"},
    evaluation: {"evaluate", "fit-domain", "robustness", "calibrate", "explain-eval"},
    serving: {"predict", "explain", "export", "bench", "ship"},
}


def registered(stage):
    commands = argparse.ArgumentParser().add_subparsers(dest="command")
    stage.add_commands(commands)
    return commands.choices


@pytest.mark.parametrize("stage", list(COMMANDS), ids=lambda stage: stage.__name__.rsplit(".", 1)[-1])
def test_each_stage_registers_its_commands_with_a_handler_of_its_own(stage):
    parsers = registered(stage)
    assert set(parsers) == COMMANDS[stage]
    for name, parser in parsers.items():
        handler = parser.get_default("handler")
        assert callable(handler) and handler.__module__ == stage.__name__, name


def test_models_lists_the_registry(capsys):
    assert cli.main(["models"]) == 0
    assert "efficientnet_lite0_probe" in capsys.readouterr().out


def test_a_failing_command_prints_an_error_and_exits_2(tmp_path, capsys):
    assert cli.main(["evaluate", "--data", str(tmp_path), "--model", str(tmp_path / "missing.pt")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
