"""Debate formats (YAML) and the schedule they expand to for a given cast."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bonsai.debate.formats import DebateFormat, builtin_formats_dir, load_format
from bonsai.debate.schedule import Cast, build_schedule
from bonsai.errors import ConfigError, PersonaNotFound
from bonsai.personas import Persona, PersonaBook

MINIMAL = {"name": "mini", "phases": [{"name": "opening", "instruction": "Open."}]}


def write_format(tmp_path: Path, data: dict | str, name: str = "fmt.yaml") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def book() -> PersonaBook:
    return PersonaBook.load()


# --- loading ------------------------------------------------------------------------------------


def test_every_builtin_format_loads() -> None:
    files = sorted(builtin_formats_dir().glob("*.yaml"))
    assert {f.stem for f in files} >= {"standard", "quick"}
    for f in files:
        fmt = load_format(f.stem)
        assert fmt.name == f.stem
        assert load_format(str(f)) == fmt  # by name and by path alike


def test_standard_format_contents() -> None:
    fmt = load_format("standard")
    assert [p.name for p in fmt.phases] == ["opening", "rebuttal", "closing"]
    assert fmt.moderator != "off"
    assert fmt.judge.criteria == ["evidence", "logic", "rebuttal", "clarity"]
    quick = load_format("quick")
    assert quick.moderator == "off"
    assert all(p.max_tokens for p in quick.phases)


def test_standard_schedule_two_rounds() -> None:
    planned = load_format("standard").schedule(2)
    assert [p.title for p in planned] == ["opening", "rebuttal 1/2", "rebuttal 2/2", "closing"]
    assert [p.round for p in planned] == [1, 1, 2, 1]


@pytest.mark.parametrize("rounds", [1, 3, 5])
def test_schedule_expands_repeated_phases(rounds: int) -> None:
    planned = load_format("standard").schedule(rounds)
    rebuttals = [p for p in planned if p.spec.name == "rebuttal"]
    assert len(planned) == rounds + 2 and len(rebuttals) == rounds
    assert [p.round for p in rebuttals] == list(range(1, rounds + 1))
    if rounds == 1:
        assert rebuttals[0].title == "rebuttal"  # no "1/1"
    else:
        assert rebuttals[-1].title == f"rebuttal {rounds}/{rounds}"


def test_unknown_format_lists_builtins() -> None:
    with pytest.raises(ConfigError) as err:
        load_format("parliamentary")
    assert "'parliamentary'" in err.value.message
    assert "quick" in err.value.hint and "standard" in err.value.hint


def test_missing_format_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_format(str(tmp_path / "nope.yaml"))


def test_unknown_key_in_format_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="timer: unknown key") as err:
        load_format(write_format(tmp_path, {**MINIMAL, "timer": 30}))
    assert "fmt.yaml" in err.value.message
    with pytest.raises(ConfigError, match=r"phases\.0\.speaker: unknown key"):
        load_format(write_format(tmp_path, {**MINIMAL, "phases": [{"name": "a", "instruction": "b", "speaker": ["A"]}]}))


def test_duplicate_phase_names(tmp_path: Path) -> None:
    phases = [{"name": "opening", "instruction": "x"}, {"name": "opening", "instruction": "y"}]
    with pytest.raises(ConfigError, match="phase names must be unique") as err:
        load_format(write_format(tmp_path, {**MINIMAL, "phases": phases}))
    assert "Value error" not in err.value.message


@pytest.mark.parametrize(
    ("patch", "where"),
    [
        ({"phases": []}, "phases"),
        ({"phases": [{"name": "a", "instruction": "b", "speakers": ["C"]}]}, "phases.0.speakers.0"),
        ({"phases": [{"name": "a", "instruction": "b", "speakers": []}]}, "phases.0.speakers"),
        ({"phases": [{"name": "a", "instruction": "b", "repeat": "twice"}]}, "phases.0.repeat"),
        ({"phases": [{"name": "A b", "instruction": "b"}]}, "phases.0.name"),
        ({"moderator": "loud"}, "moderator"),
        ({"judge": {"criteria": []}}, "judge.criteria"),
    ],
)
def test_invalid_format_values(tmp_path: Path, patch: dict, where: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_format(write_format(tmp_path, {**MINIMAL, **patch}))
    assert f"{where}:" in err.value.message


def test_malformed_and_non_mapping_format(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_format(write_format(tmp_path, "name: x\nphases: [\n"))
    with pytest.raises(ConfigError, match="invalid debate format"):
        load_format(write_format(tmp_path, "- just\n- a list\n"))


@pytest.mark.parametrize(("text", "expected"), [('"off"', "off"), ("off", "off"), ("no", "off"), ("false", "off"), ("on", "template"), ("llm", "llm")])
def test_moderator_setting_survives_yaml_booleans(tmp_path: Path, text: str, expected: str) -> None:
    # YAML 1.1 reads unquoted off/no/on as booleans
    src = f"name: mini\nmoderator: {text}\nphases:\n  - name: opening\n    instruction: Open.\n"
    assert load_format(write_format(tmp_path, src)).moderator == expected


# --- the cast -----------------------------------------------------------------------------------


def test_cast_defaults(book: PersonaBook) -> None:
    cast = Cast.from_names(book, None)
    assert cast.seats() == {"A": ["advocate"], "B": ["skeptic"], "judge": ["judge"], "moderator": ["moderator"]}
    assert Cast.from_names(book, []) == cast
    assert [p.name for p in cast.everyone()] == ["advocate", "skeptic", "judge", "moderator"]


def test_cast_fills_empty_seats(book: PersonaBook) -> None:
    cast = Cast.from_names(book, ["ronri", "bianlun"])
    assert cast.seats() == {"A": ["ronri"], "B": ["bianlun"], "judge": ["judge"], "moderator": ["moderator"]}
    cast = Cast.from_names(book, ["bianlun", "ronri", "skeptic", "advocate"])
    assert cast.seats()["A"] == ["ronri", "advocate"]  # in the order named
    assert cast.seats()["B"] == ["bianlun", "skeptic"]


def test_cast_refuses_translator(book: PersonaBook) -> None:
    with pytest.raises(ConfigError, match="'translator' is a translator"):
        Cast.from_names(book, ["advocate", "translator"])


def test_cast_refuses_a_persona_named_twice(book: PersonaBook) -> None:
    with pytest.raises(ConfigError, match="named twice"):
        Cast.from_names(book, ["advocate", "skeptic", "advocate"])


def test_cast_refuses_unknown(book: PersonaBook) -> None:
    with pytest.raises(PersonaNotFound, match="'nobody'"):
        Cast.from_names(book, ["advocate", "nobody"])


def _persona(name: str, team: str, role: str) -> Persona:
    return Persona(name=name, team=team, role=role, system_prompt=f"I am {name}.")


def test_cast_refuses_two_moderators(book: PersonaBook) -> None:
    two = PersonaBook([*book, _persona("moderator2", "none", "moderator")])
    with pytest.raises(ConfigError, match="more than one moderator"):
        Cast.from_names(two, ["moderator", "moderator2"])
    assert Cast.from_names(two, ["moderator2"]).moderator.name == "moderator2"


def test_cast_needs_both_teams_and_a_judge() -> None:
    one_side = PersonaBook([_persona("a1", "A", "debater"), _persona("j", "none", "judge")])
    with pytest.raises(ConfigError, match="team A and one on team B"):
        Cast.from_names(one_side, None)
    no_judge = PersonaBook([_persona("a1", "A", "debater"), _persona("b1", "B", "debater")])
    with pytest.raises(ConfigError, match="needs a judge"):
        Cast.from_names(no_judge, None)
    minimal = PersonaBook([_persona("a1", "A", "debater"), _persona("b1", "B", "debater"), _persona("zz", "none", "judge")])
    cast = Cast.from_names(minimal, None)
    assert cast.moderator is None and [j.name for j in cast.judges] == ["zz"]  # first judge when none is called "judge"


# --- the schedule -------------------------------------------------------------------------------


def test_schedule_rotates_speakers_within_a_team(book: PersonaBook) -> None:
    cast = Cast.from_names(book, ["advocate", "ronri", "skeptic", "bianlun"])
    slots = build_schedule(load_format("standard"), 2, cast)
    assert [s.index for s in slots] == list(range(len(slots)))
    assert [s.kind for s in slots] == ["moderator", "debater", "debater"] * 4
    debaters = [s for s in slots if s.kind == "debater"]
    assert [(s.title, s.team, s.speaker) for s in debaters] == [
        ("opening", "A", "advocate"), ("opening", "B", "skeptic"),
        ("rebuttal 1/2", "B", "bianlun"), ("rebuttal 1/2", "A", "ronri"),
        ("rebuttal 2/2", "B", "skeptic"), ("rebuttal 2/2", "A", "advocate"),
        ("closing", "A", "ronri"), ("closing", "B", "bianlun"),
    ]
    closing = [s for s in debaters if s.phase == "closing"]
    assert all(s.max_tokens == 80 for s in closing)
    assert all(s.max_tokens is None for s in debaters if s.phase != "closing")
    mods = [s for s in slots if s.kind == "moderator"]
    assert all(s.speaker == "moderator" and s.team == "none" and s.max_tokens is None for s in mods)
    assert [s.title for s in mods] == ["opening", "rebuttal 1/2", "rebuttal 2/2", "closing"]


def test_schedule_is_deterministic(book: PersonaBook) -> None:
    cast = Cast.from_names(book, ["advocate", "ronri", "skeptic"])
    fmt = load_format("standard")
    assert build_schedule(fmt, 3, cast) == build_schedule(fmt, 3, cast)


def test_moderator_off_removes_moderator_slots(book: PersonaBook) -> None:
    cast = Cast.from_names(book, None)
    quick = build_schedule(load_format("quick"), 2, cast)
    assert cast.moderator is not None
    assert all(s.kind == "debater" for s in quick)
    assert [s.title for s in quick] == ["opening", "opening", "rebuttal 1/2", "rebuttal 1/2", "rebuttal 2/2", "rebuttal 2/2"]
    standard = load_format("standard")
    off = standard.model_copy(update={"moderator": "off"})
    assert [s for s in build_schedule(off, 2, cast) if s.kind == "moderator"] == []
    llm = standard.model_copy(update={"moderator": "llm"})
    assert len([s for s in build_schedule(llm, 2, cast) if s.kind == "moderator"]) == 4


def test_no_moderator_persona_means_no_moderator_slots() -> None:
    book = PersonaBook([_persona("a1", "A", "debater"), _persona("b1", "B", "debater"), _persona("judge", "none", "judge")])
    slots = build_schedule(load_format("standard"), 1, Cast.from_names(book, None))
    assert [s.kind for s in slots] == ["debater"] * 6


def test_custom_speaker_order(tmp_path: Path, book: PersonaBook) -> None:
    fmt = DebateFormat.model_validate(
        {"name": "x", "moderator": "off", "phases": [{"name": "cross", "instruction": "Ask.", "speakers": ["B", "B", "A"], "repeat": "rounds", "max_tokens": 12}]}
    )
    cast = Cast.from_names(book, ["advocate", "skeptic", "bianlun"])
    slots = build_schedule(fmt, 2, cast)
    assert [(s.round, s.speaker) for s in slots] == [(1, "skeptic"), (1, "bianlun"), (1, "advocate"), (2, "skeptic"), (2, "bianlun"), (2, "advocate")]
    assert {s.max_tokens for s in slots} == {12}
