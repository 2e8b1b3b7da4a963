"""Names that become paths (personas, versions, sweeps) are checked before any path is built: nothing
outside $BONSAI_HOME is read or written, whatever the command line says."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from trainkit import cli, register_version, small_adapter

from bonsai.registry import current_version, persona_dir, resolve_persona_adapter
from bonsai.errors import AdapterError, ConfigError
from bonsai.personas import Persona, check_persona_name
from bonsai import registry


@pytest.fixture
def outside(isolated_home: Path, tmp_path: Path) -> Path:
    """An adapter folder at $BONSAI_HOME/adapters/../../x/v1: where `../../x` would have led."""
    target = tmp_path / "x"
    shutil.copytree(small_adapter(tmp_path / "src", seed=0), target / "v1")
    assert (isolated_home / "adapters" / ".." / ".." / "x" / "v1").resolve() == (target / "v1").resolve()
    return target


def _untouched(outside: Path) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["v1"]


@pytest.mark.parametrize(
    "argv",
    [
        ["adapters", "rollback", "../../x", "--to", "v1"],
        ["adapters", "promote", "../../x", "v1", "--force"],
        ["adapters", "list", "../../x"],
        ["adapters", "show", "../../x", "v1"],
        ["adapters", "show", "/etc", "v1"],
        ["adapters", "list", "Advocate"],
        ["adapters", "list", ""],
    ],
)
def test_persona_names_are_checked_on_every_adapters_command(outside: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert cli(argv, monkeypatch) == 2
    err = capsys.readouterr().err
    assert "is not a valid persona name" in err and "lower-case letters" in err and "Traceback" not in err
    _untouched(outside)


def test_version_names_are_checked(isolated_home: Path, outside: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    v1 = register_version(isolated_home, "advocate", small_adapter(tmp_path / "a1", seed=1))
    assert cli(["adapters", "promote", "advocate", v1, "--force"], monkeypatch) == 0
    capsys.readouterr()
    for argv in (
        ["adapters", "rollback", "advocate", "--to", "../../../x/v1"],
        ["adapters", "show", "advocate", "../../../x/v1"],
        ["adapters", "promote", "advocate", "..", "--force"],
    ):
        assert cli(argv, monkeypatch) == 2, argv
        assert "is not a valid adapter version name" in capsys.readouterr().err
    assert current_version(isolated_home, "advocate") == v1
    _untouched(outside)
    with pytest.raises(AdapterError, match="not a valid adapter version"):
        registry.evaluation_path(isolated_home, "advocate", "../../../x/v1")


def test_a_tampered_current_pointer_does_not_lead_outside(isolated_home: Path, outside: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    register_version(isolated_home, "advocate", small_adapter(tmp_path / "a1", seed=1))
    (persona_dir(isolated_home, "advocate") / "current").write_text("../../../x/v1\n")
    assert cli(["adapters", "show", "advocate"], monkeypatch) == 2
    assert "which is not a version" in capsys.readouterr().err
    book_persona = Persona(name="advocate", team="A", role="debater", system_prompt="argue", adapter="registry")
    with pytest.raises(AdapterError, match="not a version"):
        resolve_persona_adapter(book_persona, isolated_home)
    _untouched(outside)


def test_registry_spec_in_a_persona_file_is_checked(isolated_home: Path, outside: Path) -> None:
    persona = Persona(name="advocate", team="A", role="debater", system_prompt="argue", adapter="registry:../../x@v1")
    with pytest.raises(ConfigError, match="not a valid persona name"):
        resolve_persona_adapter(persona, isolated_home)


def test_hand_made_folders_that_are_no_persona_are_not_listed(isolated_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    register_version(isolated_home, "advocate", small_adapter(tmp_path / "a1", seed=1))
    (isolated_home / "adapters" / "Not A Persona").mkdir()
    assert cli(["adapters", "list", "--json"], monkeypatch) == 0
    assert '"persona": "advocate"' in capsys.readouterr().out


def test_ratings_refuses_a_sweep_name_that_is_a_path(isolated_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["ratings", "../../../escaped"], monkeypatch) == 2
    assert "is not a sweep name" in capsys.readouterr().err
    assert not (tmp_path / "escaped").exists() and not (isolated_home / "sweeps").exists()


@pytest.mark.parametrize("name", ["advocate", "a", "ronri-2", "x_y", "0" * 64])
def test_valid_persona_names_pass(name: str) -> None:
    assert check_persona_name(name) == name


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "A", "-x", "_x", "a" * 65, "a\x00", "é"])
def test_invalid_persona_names_fail(name: str) -> None:
    with pytest.raises(ConfigError):
        check_persona_name(name)
