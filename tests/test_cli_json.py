"""JSON on the terminal: readable UTF-8, but no raw control characters from untrusted text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from bonsai.cli import main as cli_main
from bonsai.cli.common import json_text
from bonsai.personas import default_personas_dir

#: C1 CSI (a one-byte terminal escape on some terminals), NEL, the two Unicode line separators, ESC
UNSAFE = "\u009b31m\u0085\u2028\u2029\u001b["


def test_json_text_escapes_controls_and_keeps_text_readable() -> None:
    data = {"text": f"日本語 ça 中文 {UNSAFE}", "n": [1, 2.5, None]}
    line = json_text(data)
    assert json.loads(line) == data
    assert "日本語 ça 中文" in line and "\n" not in line
    assert not any(0x80 <= ord(ch) <= 0x9F or ch in "\u2028\u2029\u001b" for ch in line)
    assert "\\u009b" in line and "\\u2028" in line


def test_personas_list_json_escapes_a_personas_control_characters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Through the CLI: a persona file's text with a C1 control comes out escaped, and parses back."""
    folder = tmp_path / "personas"
    folder.mkdir()
    data = yaml.safe_load((default_personas_dir() / "advocate.yaml").read_text(encoding="utf-8"))
    data["description"] = f"evil {UNSAFE}"
    (folder / "advocate.yaml").write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    assert cli_main.main(["--home", str(tmp_path / "home"), "personas", "show", "advocate", "--personas-dir", str(folder), "--json"]) == 0
    out = capsys.readouterr().out
    assert "\u009b" not in out and "\u2028" not in out and "\\u009b" in out
    assert json.loads(out)["description"] == f"evil {UNSAFE}"
