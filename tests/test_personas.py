"""Personas: the shipped set, the YAML edge (every way a file can be wrong), and `bonsai personas`."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from bonsai.cli.main import main
from bonsai.errors import ConfigError, PersonaNotFound
from bonsai.personas import Persona, PersonaBook, ReasoningFormat, Role, Team, default_personas_dir, load_persona

VALID = {
    "name": "probe",
    "team": "A",
    "role": "debater",
    "system_prompt": "You argue for the motion.",
}


def write_persona(folder: Path, data: dict | str, stem: str | None = None, suffix: str = ".yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    stem = stem or (data["name"] if isinstance(data, dict) else "probe")
    path = folder / f"{stem}{suffix}"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


@pytest.fixture
def shipped_copy(tmp_path: Path) -> Path:
    """A writable copy of the shipped personas folder."""
    dst = tmp_path / "personas"
    dst.mkdir()
    for f in default_personas_dir().glob("*.yaml"):
        shutil.copy(f, dst / f.name)
    return dst


@pytest.fixture(autouse=True)
def _keep_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # main() sets these with setdefault; keep them from leaking into later tests, and widen rich tables.
    for k in ("VLLM_LOGGING_LEVEL", "TRANSFORMERS_VERBOSITY"):
        monkeypatch.setenv(k, os.environ.get(k, "WARNING"))
    monkeypatch.setenv("COLUMNS", "200")


# --- the shipped personas ----------------------------------------------------------------------


def test_every_shipped_persona_file_validates() -> None:
    files = sorted(default_personas_dir().glob("*.y*ml"))
    assert len(files) >= 7
    for f in files:
        p = load_persona(f)
        assert p.name == f.stem
        assert p.system_prompt.strip()
    assert len(PersonaBook.load()) == len(files)


def test_shipped_set_covers_every_seat_and_language() -> None:
    book = PersonaBook.load()
    assert len(book.by_role(Role.DEBATER, Team.A)) >= 2
    assert len(book.by_role(Role.DEBATER, Team.B)) >= 2
    assert book.by_role(Role.JUDGE) and book.by_role(Role.MODERATOR) and book.by_role(Role.TRANSLATOR)
    languages = {p.language for p in book}
    assert {"en", "ja", "zh"} <= languages
    # the defaults Cast.from_names prefers exist under their names
    assert book.get("advocate").team == Team.A and book.get("skeptic").team == Team.B
    assert book.get("judge").role == Role.JUDGE and book.get("moderator").role == Role.MODERATOR
    # every reasoning format is exercised by some debater
    assert {p.reasoning for p in book.by_role(Role.DEBATER)} == set(ReasoningFormat)
    for p in book:
        assert (p.team == Team.NONE) == (p.role != Role.DEBATER), p.name


# --- one file at a time -------------------------------------------------------------------------


def test_minimal_persona_gets_defaults(tmp_path: Path) -> None:
    p = load_persona(write_persona(tmp_path, VALID))
    assert p.style.value == "assistant" and p.language == "en" and p.reasoning == ReasoningFormat.NONE
    assert p.adapter is None and p.sampling.max_tokens == 96
    assert p.label == "probe (A)"


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = write_persona(tmp_path, {**VALID, "colour": "blue"})
    with pytest.raises(ConfigError) as err:
        load_persona(path)
    assert "colour: unknown key" in err.value.message
    assert str(path) in err.value.message
    assert err.value.hint


def test_unknown_nested_key_is_named(tmp_path: Path) -> None:
    path = write_persona(tmp_path, {**VALID, "sampling": {"temprature": 0.3}})
    with pytest.raises(ConfigError, match=r"sampling\.temprature: unknown key"):
        load_persona(path)


@pytest.mark.parametrize(
    ("patch", "where"),
    [
        ({"sampling": {"temperature": 5}}, "sampling.temperature"),
        ({"sampling": {"max_tokens": 0}}, "sampling.max_tokens"),
        ({"language": "fr"}, "language"),
        ({"reasoning": "cot"}, "reasoning"),
        ({"role": "coach"}, "role"),
        ({"system_prompt": ""}, "system_prompt"),
        ({"name": "Bad Name"}, "name"),
    ],
)
def test_bad_values_name_the_field(tmp_path: Path, patch: dict, where: str) -> None:
    data = {**VALID, **patch}
    path = write_persona(tmp_path, data, stem="probe")
    with pytest.raises(ConfigError) as err:
        load_persona(path)
    assert f"{where}:" in err.value.message


def test_missing_required_field(tmp_path: Path) -> None:
    data = {k: v for k, v in VALID.items() if k != "system_prompt"}
    with pytest.raises(ConfigError, match="system_prompt: Field required"):
        load_persona(write_persona(tmp_path, data))


def test_malformed_yaml(tmp_path: Path) -> None:
    path = write_persona(tmp_path, "name: probe\nteam: [A\nrole: debater\n")
    with pytest.raises(ConfigError, match="not valid YAML") as err:
        load_persona(path)
    assert str(path) in err.value.message


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "probe.yaml"
    path.write_bytes(b"name: probe\nsystem_prompt: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_persona(path)


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "list"), ("just a string\n", "str"), ("", "NoneType"), ("42\n", "int")])
def test_non_mapping_yaml(tmp_path: Path, text: str, kind: str) -> None:
    with pytest.raises(ConfigError, match=f"must be a YAML mapping, got {kind}"):
        load_persona(write_persona(tmp_path, text))


def test_debater_needs_a_team(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="a debater needs team A or B") as err:
        load_persona(write_persona(tmp_path, {**VALID, "team": "none"}))
    assert "Value error" not in err.value.message  # reads as a sentence, not pydantic's wording


@pytest.mark.parametrize("role", ["judge", "moderator", "translator"])
@pytest.mark.parametrize("team", ["A", "B"])
def test_non_debaters_take_no_side(tmp_path: Path, role: str, team: str) -> None:
    with pytest.raises(ConfigError, match=f"a {role} takes no side"):
        load_persona(write_persona(tmp_path, {**VALID, "role": role, "team": team}))


def test_team_role_check_does_not_depend_on_key_order(tmp_path: Path) -> None:
    # role after team in the file (the order the shipped files use) and before it
    for data in ({"name": "probe", "team": "none", "role": "debater", "system_prompt": "x"},
                 {"name": "probe", "role": "debater", "team": "none", "system_prompt": "x"}):
        with pytest.raises(ConfigError, match="debater needs team"):
            load_persona(write_persona(tmp_path, data))


def test_name_must_match_file_stem(tmp_path: Path) -> None:
    path = write_persona(tmp_path, VALID, stem="other")
    with pytest.raises(ConfigError, match="must match the file name 'other'"):
        load_persona(path)


def test_missing_file_is_persona_not_found(tmp_path: Path) -> None:
    with pytest.raises(PersonaNotFound, match="does not exist"):
        load_persona(tmp_path / "ghost.yaml")


def test_relative_adapter_path_is_resolved_against_the_yaml_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "deep" / "personas"
    monkeypatch.chdir(tmp_path)  # must not matter
    p = load_persona(write_persona(folder, {**VALID, "adapter": "../adapters/probe-v1"}))
    assert p.adapter == str((tmp_path / "deep" / "adapters" / "probe-v1").resolve())
    assert Path(p.adapter).is_absolute()


def test_absolute_home_and_registry_adapters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "userhome"))
    assert load_persona(write_persona(tmp_path / "a", {**VALID, "adapter": "/srv/adapters/x"})).adapter == "/srv/adapters/x"
    assert load_persona(write_persona(tmp_path / "b", {**VALID, "adapter": "~/lora"})).adapter == str(tmp_path / "userhome" / "lora")
    assert load_persona(write_persona(tmp_path / "c", {**VALID, "adapter": "registry"})).adapter == "registry"
    assert load_persona(write_persona(tmp_path / "d", {**VALID, "adapter": "registry:advocate@v3"})).adapter == "registry:advocate@v3"
    assert load_persona(write_persona(tmp_path / "e", {**VALID, "adapter": None})).adapter is None


# --- the book -----------------------------------------------------------------------------------


def test_duplicate_names_in_one_book() -> None:
    p = Persona.model_validate(VALID)
    with pytest.raises(ConfigError, match="'probe' is defined twice"):
        PersonaBook([p, p])


def test_duplicate_names_across_yaml_and_yml(tmp_path: Path) -> None:
    write_persona(tmp_path, VALID, suffix=".yaml")
    write_persona(tmp_path, VALID, suffix=".yml")
    with pytest.raises(ConfigError, match="defined twice"):
        PersonaBook.load(tmp_path)


def test_book_from_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist") as err:
        PersonaBook.load(tmp_path / "nope")
    assert "--personas-dir" in err.value.hint


def test_one_bad_file_fails_the_whole_book(shipped_copy: Path) -> None:
    write_persona(shipped_copy, {**VALID, "oops": 1})
    with pytest.raises(ConfigError, match="oops: unknown key"):
        PersonaBook.load(shipped_copy)


def test_get_unknown_lists_known_names() -> None:
    book = PersonaBook.load()
    with pytest.raises(PersonaNotFound) as err:
        book.get("nobody")
    assert "'nobody'" in err.value.message
    for name in book.names():
        assert name in err.value.hint
    with pytest.raises(PersonaNotFound, match=r"\(none\)"):
        PersonaBook([]).get("x")


def test_by_role_filters() -> None:
    book = PersonaBook.load()
    assert {p.name for p in book.by_role(Role.DEBATER, Team.A)} == {"advocate", "ronri"}
    assert {p.name for p in book.by_role(Role.DEBATER, Team.B)} == {"skeptic", "bianlun"}
    assert [p.name for p in book.by_role(Role.JUDGE)] == ["judge"]


# --- bonsai personas ... ------------------------------------------------------------------------


def test_cli_list_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["personas", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {r["name"]: r for r in rows}
    assert set(by_name) == set(PersonaBook.load().names())
    assert by_name["advocate"]["team"] == "A" and by_name["advocate"]["role"] == "debater"
    assert by_name["advocate"]["adapter"] == "base (none trained yet)"  # registry, nothing trained in this home
    assert by_name["judge"]["adapter"] == "base"
    assert by_name["ronri"]["language"] == "ja" and by_name["ronri"]["reasoning"] == "xml-tags"


def test_cli_list_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["personas", "list"]) == 0
    out = capsys.readouterr().out
    for name in PersonaBook.load().names():
        assert name in out
    assert "alpaca-reasoning" in out


def test_cli_list_shows_a_trained_adapter_and_survives_a_missing_one(shipped_copy: Path, capsys: pytest.CaptureFixture[str], isolated_home: Path) -> None:
    version = isolated_home / "adapters" / "advocate" / "v1"
    version.mkdir(parents=True)
    (isolated_home / "adapters" / "advocate" / "current").write_text("v1\n")
    write_persona(shipped_copy, {**VALID, "adapter": str(shipped_copy / "no-such-adapter")})
    assert main(["personas", "list", "--json", "--personas-dir", str(shipped_copy)]) == 0
    by_name = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert by_name["advocate"]["adapter"] == str(version)
    assert by_name["probe"]["adapter"].startswith("error:") and "does not exist" in by_name["probe"]["adapter"]


def test_cli_show_yaml_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    ronri = PersonaBook.load().get("ronri")
    expected = ronri.model_dump(mode="json")
    # the rubric is shown with every default filled in: each check's name, the language and format it checks
    expected["rubric"] = [
        {"name": "language", "type": "language", "weight": 2.0, "language": "ja"},
        {"name": "reasoning_format", "type": "reasoning_format", "weight": 2.0, "format": "xml-tags"},
        {"name": "length", "type": "length", "weight": 1.0, "budget": 150, "unit": "auto", "minimum": 20, "tolerance": 1.0},
        {"name": "repetition", "type": "repetition", "weight": 1.0, "n": 3},
    ]
    assert main(["personas", "show", "ronri"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown == expected
    # what is shown is still a valid persona, with the same rubric
    from bonsai.rubric import rubric_for

    assert rubric_for(Persona.model_validate(shown)).describe() == expected["rubric"]  # type: ignore[union-attr]
    assert main(["personas", "show", "ronri", "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out) == expected
    assert "論理" in out  # not \u-escaped


def test_cli_show_unknown(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["personas", "show", "nobody"]) == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    assert "error: unknown persona 'nobody'" in cap.err
    assert "hint: known personas: advocate" in cap.err


def test_cli_validate_shipped(capsys: pytest.CaptureFixture[str]) -> None:
    n = len(list(default_personas_dir().glob("*.y*ml")))
    assert main(["personas", "validate"]) == 0
    assert f"{n}/{n} persona files valid" in capsys.readouterr().out
    assert main(["personas", "validate", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"checked": n, "errors": []}


def test_cli_validate_folder_with_bad_file(shipped_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write_persona(shipped_copy, "name: broken\nteam: [A\n", stem="broken")
    n = len(list(shipped_copy.glob("*.yaml")))
    assert main(["personas", "validate", "--personas-dir", str(shipped_copy)]) == 1
    out = capsys.readouterr().out
    assert str(bad) in out and "not valid YAML" in out
    assert f"{n - 1}/{n} persona files valid" in out
    assert main(["personas", "validate", "--personas-dir", str(shipped_copy), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["checked"] == n and len(report["errors"]) == 1 and str(bad) in report["errors"][0]


def test_cli_validate_named_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write_persona(tmp_path, VALID)
    bad = write_persona(tmp_path, {**VALID, "name": "wrong"}, stem="mismatch")
    assert main(["personas", "validate", str(good)]) == 0
    capsys.readouterr()
    assert main(["personas", "validate", str(good), str(bad)]) == 1
    out = capsys.readouterr().out
    assert str(bad) in out and "1/2 persona files valid" in out


def test_cli_validate_duplicate_names_is_a_folder_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_persona(tmp_path, VALID, suffix=".yaml")
    write_persona(tmp_path, VALID, suffix=".yml")
    assert main(["personas", "validate", "--personas-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "defined twice" in out and "2/2 persona files valid" in out


def test_cli_validate_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["personas", "validate", "--personas-dir", str(tmp_path / "nope")]) == 1
    out = capsys.readouterr().out
    assert "does not exist" in out and "0/0 persona files valid" in out


def test_cli_list_bad_folder_exits_2(shipped_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_persona(shipped_copy, {**VALID, "oops": 1})
    assert main(["personas", "list", "--personas-dir", str(shipped_copy)]) == 2
    cap = capsys.readouterr()
    assert "oops: unknown key" in cap.err and cap.out == ""
