"""`bonsai tui` as a command: its options, its errors, and the rule that nothing in `bonsai/` needs Textual."""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tui import command as tui_cmd
from bonsai.cli.common import engine_options
from bonsai.debate.spec import DebateSpec
from bonsai.engine.session import EngineOptions, options_from_args
from tui.options import FormDefaults
from bonsai.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bonsai")
    parser.add_argument("--home")
    sub = parser.add_subparsers(dest="command")
    tui_cmd.register(sub)
    return parser.parse_args(["tui", *argv])


def test_options_mirror_bonsai_debate() -> None:
    args = parse("--engine", "hf", "--base", "/m", "--max-model-len", "2048", "--format", "quick", "--rounds", "3",
                 "--candidates", "2", "--max-tokens", "32", "--seed", "5", "--personas", "advocate, skeptic", "--replay", "abc")
    assert engine_options(args) == EngineOptions(kind="hf", base="/m", max_model_len=2048)
    form = options_from_args(FormDefaults, args, motion="")
    assert (form.format, form.rounds, form.candidates, form.max_tokens, form.seed, form.personas) == ("quick", 3, 2, 32, 5, ["advocate", "skeptic"])
    assert args.replay == "abc" and args.func is tui_cmd.run
    # flags left out take the models' own defaults, the ones `bonsai debate` has
    plain = parse()
    assert engine_options(plain) == EngineOptions() and options_from_args(FormDefaults, plain).rounds == DebateSpec.model_fields["rounds"].default


def test_openai_without_endpoint_is_refused_before_the_ui_starts(isolated_home: Path) -> None:
    with pytest.raises(ConfigError, match="needs --endpoint"):
        tui_cmd.run(parse("--engine", "openai"))
    with pytest.raises(ConfigError, match="invalid options"):
        tui_cmd.run(parse("--rounds", "0"))


def test_help_runs() -> None:
    done = subprocess.run([sys.executable, "-m", "bonsai", "tui", "--help"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--engine {vllm,openai,hf}" in done.stdout and "--replay ID" in done.stdout


def test_nothing_in_bonsai_imports_textual() -> None:
    """Textual stays an optional extra: only `bonsai tui` reaches it, from inside its run()."""
    for path in sorted((REPO / "bonsai").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top_level = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                root = name.split(".")[0]
                assert root != "textual", f"{path} imports textual"
                if root == "tui":
                    assert path.name == "tui_cmd.py" and id(node) not in top_level, f"{path} imports the tui package at module level"
