"""Training's and the TUI's commands reach `bonsai` through entry points: bonsai/ never imports them."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

from bonsai.cli import main as cli_main
from bonsai.cli import plugins

REPO = Path(__file__).resolve().parent.parent


def _declared() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return project["entry-points"][plugins.GROUP]


def test_the_installed_metadata_registers_what_pyproject_declares() -> None:
    installed = {ep.name: ep.value for ep in plugins.command_entry_points()}
    assert installed == _declared(), "the installed metadata is older than pyproject.toml: reinstall (make install)"


def test_every_plugin_command_is_registered_and_training_is_not_imported_before() -> None:
    parser = cli_main.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert set(_declared()) <= set(commands) and "debate" in commands
    # each plugin's parser is its own module's: `bonsai train --help` is training's
    assert commands["train"].get_default("func").__module__ == "training.cli.train_cmd"
    assert commands["tui"].get_default("func").__module__ == "tui.command"


def test_nothing_in_bonsai_imports_training_or_tui() -> None:
    """Not even lazily, inside a function: the plugins are found through their entry points."""
    found = []
    for path in sorted((REPO / "bonsai").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            found += [f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names if n.split(".")[0] in ("training", "tui")]
    assert found == []


def test_a_stale_install_says_how_to_mend_it(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Metadata written before the entry points existed lists none: bonsai's own commands still run,
    and asking for a plugin command says to reinstall instead of only "invalid choice"."""
    monkeypatch.setattr(plugins, "entry_points", lambda group: [])
    commands = next(a for a in cli_main.build_parser()._actions if a.dest == "command").choices
    assert "debate" in commands and "train" not in commands
    with pytest.raises(SystemExit) as exc:
        cli_main.main(["train", "advocate"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'train'" in err and "reinstall bonsai" in err
