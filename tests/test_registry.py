"""The adapter registry: versions named by content and written whole, an atomic `current` pointer,
promote/rollback, tamper detection, and `bonsai adapters list|show|promote|rollback`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from trainkit import cli, register_version, small_adapter

from bonsai.registry import current_version, persona_dir, resolve_persona_adapter, version_path
from bonsai.registry.identity import inspect_adapter
from bonsai.registry.manifest import MANIFEST_FILE
from bonsai.errors import AdapterError
from bonsai.personas import PersonaBook
from bonsai import registry


@pytest.fixture(autouse=True)
def _keep_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("VLLM_LOGGING_LEVEL", "TRANSFORMERS_VERBOSITY"):
        monkeypatch.setenv(k, os.environ.get(k, "WARNING"))


@pytest.fixture
def adapters(tmp_path: Path) -> list[Path]:
    return [small_adapter(tmp_path / f"src{i}", seed=i) for i in range(3)]


def test_version_is_named_by_content_and_records_every_file(isolated_home: Path, adapters: list[Path]) -> None:
    version = register_version(isolated_home, "advocate", adapters[0], base_hash="b" * 64, dataset_hash="d" * 64)
    ref = inspect_adapter(adapters[0])
    assert version == ref.content_hash[:12]
    folder = persona_dir(isolated_home, "advocate") / version
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert manifest["version"] == version and manifest["adapter_name"] == ref.name
    assert set(manifest["files"]) == {"adapter_config.json", "adapter_model.safetensors"}
    assert manifest["base_hash"] == "b" * 64 and manifest["dataset_hash"] == "d" * 64
    # the engine reads the base hash from the same manifest to refuse the adapter on another base
    assert inspect_adapter(folder).base_model == "b" * 64
    # the same weights again: the same version, no duplicate, nothing staged left behind
    assert register_version(isolated_home, "advocate", adapters[0]) == version
    assert registry.versions(isolated_home, "advocate")[0].version == version
    assert len(list(persona_dir(isolated_home, "advocate").iterdir())) == 1


@pytest.mark.parametrize("exc", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_an_interrupted_write_leaves_no_version(isolated_home: Path, adapters: list[Path], exc: BaseException) -> None:
    with pytest.raises(type(exc)):
        with registry.new_version(isolated_home, "advocate") as draft:
            (draft.path / "adapter_config.json").write_text((adapters[0] / "adapter_config.json").read_text())
            raise exc
    root = persona_dir(isolated_home, "advocate")
    assert list(root.iterdir()) == []
    assert registry.versions(isolated_home, "advocate") == []


def test_promote_and_rollback_move_the_pointer(isolated_home: Path, adapters: list[Path]) -> None:
    v1, v2, v3 = (register_version(isolated_home, "advocate", a) for a in adapters)
    assert current_version(isolated_home, "advocate") is None
    assert registry.promote(isolated_home, "advocate", v1) is None
    assert registry.promote(isolated_home, "advocate", v2[:6]) == v1  # a unique prefix is enough
    registry.promote(isolated_home, "advocate", v3)
    assert current_version(isolated_home, "advocate") == v3
    assert registry.rollback(isolated_home, "advocate") == (v3, v2)
    assert registry.rollback(isolated_home, "advocate") == (v2, v1)
    with pytest.raises(AdapterError, match="no earlier version"):
        registry.rollback(isolated_home, "advocate")
    assert registry.rollback(isolated_home, "advocate", to=v3) == (v1, v3)
    actions = [e["action"] for e in registry.history(isolated_home, "advocate")]
    assert actions == ["promote", "promote", "promote", "rollback", "rollback", "rollback"]
    # the pointer is one small file replaced in one step: no temp files are left beside it
    files = persona_dir(isolated_home, "advocate").iterdir()
    assert sorted(p.name for p in files if p.is_file() and p.name != registry.LOCK) == ["current", "history.json"]


def test_a_failed_pointer_write_keeps_the_old_version(isolated_home: Path, adapters: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    v1, v2 = (register_version(isolated_home, "advocate", a) for a in adapters[:2])
    registry.promote(isolated_home, "advocate", v1)

    def crash(src: str, dst: str) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        registry.promote(isolated_home, "advocate", v2)
    monkeypatch.undo()
    assert current_version(isolated_home, "advocate") == v1
    assert [p.name for p in persona_dir(isolated_home, "advocate").iterdir() if p.name.startswith(".")] == []


def test_rollback_trusts_the_pointer_when_history_lags(isolated_home: Path, adapters: list[Path]) -> None:
    v1, v2 = (register_version(isolated_home, "advocate", a) for a in adapters[:2])
    registry.promote(isolated_home, "advocate", v1)
    registry.set_current(isolated_home, "advocate", v2)  # a crash between the pointer and the history
    assert registry.rollback(isolated_home, "advocate") == (v2, v1)


@pytest.mark.parametrize("tamper", ["modify", "add", "remove", "rename"])
def test_a_tampered_version_is_refused_everywhere(isolated_home: Path, adapters: list[Path], tamper: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    v1 = register_version(isolated_home, "advocate", adapters[0])
    v2 = register_version(isolated_home, "advocate", adapters[1])
    registry.promote(isolated_home, "advocate", v1)
    root = persona_dir(isolated_home, "advocate")
    folder = root / v1
    if tamper == "modify":
        data = bytearray((folder / "adapter_model.safetensors").read_bytes())
        data[-1] ^= 0xFF
        (folder / "adapter_model.safetensors").write_bytes(bytes(data))
        expected = "adapter_model.safetensors was modified"
    elif tamper == "add":
        (folder / "adapter_model.bin").write_bytes(b"\0")
        expected = "adapter_model.bin was added"
    elif tamper == "remove":
        (folder / "adapter_model.safetensors").unlink()
        expected = "adapter_model.safetensors is missing"
    else:
        folder.rename(root / "v-renamed")
        registry.set_current(isolated_home, "advocate", "v-renamed")
        folder = root / "v-renamed"
        v1 = "v-renamed"
        expected = "renamed"
    with pytest.raises(AdapterError, match=expected):
        version_path(isolated_home, "advocate", "current")
    persona = PersonaBook.load().get("advocate")  # adapter: registry
    with pytest.raises(AdapterError, match="changed after it was written"):
        resolve_persona_adapter(persona, isolated_home)
    with pytest.raises(AdapterError, match=expected):
        registry.promote(isolated_home, "advocate", v1)
    # the registry lists it as tampered; `show` fails with the reason
    assert cli(["adapters", "list", "advocate"], monkeypatch) == 0
    out = capsys.readouterr().out
    assert "TAMPERED" in out and v2 in out
    assert cli(["adapters", "show", "advocate", v1], monkeypatch) == 2
    assert expected in capsys.readouterr().err


def test_a_hand_placed_folder_still_resolves(isolated_home: Path, adapters: list[Path]) -> None:
    import shutil

    shutil.copytree(adapters[0], persona_dir(isolated_home, "advocate") / "v1")
    registry.set_current(isolated_home, "advocate", "v1")
    persona = PersonaBook.load().get("advocate")
    assert resolve_persona_adapter(persona, isolated_home) == persona_dir(isolated_home, "advocate") / "v1"


def test_unknown_versions_name_the_known_ones(isolated_home: Path, adapters: list[Path]) -> None:
    v1 = register_version(isolated_home, "advocate", adapters[0])
    with pytest.raises(AdapterError, match=v1):
        registry.promote(isolated_home, "advocate", "nope")
    with pytest.raises(AdapterError, match="no current adapter version"):
        registry.resolve_version(isolated_home, "skeptic", "current")


def test_cli_list_show_promote_rollback(isolated_home: Path, adapters: list[Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    v1 = register_version(isolated_home, "advocate", adapters[0], recipe={"name": "orpo"})
    v2 = register_version(isolated_home, "advocate", adapters[1], recipe={"name": "orpo"}, parent=v1)
    assert cli(["adapters", "promote", "advocate", v1, "--force"], monkeypatch) == 0
    assert "current is now " + v1 in capsys.readouterr().out
    # without an evaluation the gate refuses, and nothing moves
    assert cli(["adapters", "promote", "advocate", v2], monkeypatch) == 2
    err = capsys.readouterr().err
    assert "has not been evaluated" in err and "bonsai adapters evaluate advocate" in err
    assert current_version(isolated_home, "advocate") == v1
    assert cli(["adapters", "promote", "advocate", v2, "--force", "--json"], monkeypatch) == 0
    promoted = json.loads(capsys.readouterr().out)
    assert (promoted["version"], promoted["previous"], promoted["forced"]) == (v2, v1, True)
    assert cli(["adapters", "list", "--json"], monkeypatch) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["version"]: r["current"] for r in rows} == {v1: False, v2: True}
    assert [r["parent"] for r in rows if r["version"] == v2] == [v1]
    assert cli(["adapters", "show", "advocate", "--json"], monkeypatch) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == v2 and shown["ok"] and shown["manifest"]["files"]
    assert cli(["adapters", "rollback", "advocate"], monkeypatch) == 0
    assert f"current is now {v1}" in capsys.readouterr().out
    assert cli(["adapters", "rollback", "advocate"], monkeypatch) == 2
    assert "no earlier version" in capsys.readouterr().err
