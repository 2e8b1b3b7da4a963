"""A base without a chat template is refused before anything starts; ``--chat-template FILE`` is checked
once and then renders every prompt (both in-process engines, the server's command line, training).

The bases here are the embedded SmolLM2's real files in a folder without its template; the Gemma 3
base model prepared from its GGUF is in tests/test_gemma_base.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import bonsai.engine.session as session
from bonsai.cli.main import main
from bonsai.engine import ChatMessage, ChatPrompt, EngineConfig
from bonsai.engine.session import EngineOptions, plan_engine
from bonsai.errors import ConfigError, ModelError
from bonsai.model.chat_template import has_chat_template, read_chat_template, template_hash
from bonsai.model.prepare import BaseModel, prepare_gguf, resolve_templated_base

GEMMA_TEMPLATE = Path(__file__).resolve().parents[1] / "examples" / "chat-templates" / "gemma.jinja"


def bare_copy(base: BaseModel, folder: Path) -> Path:
    """The embedded model's files without its chat template (weights linked, not copied)."""
    folder.mkdir()
    for item in base.path.iterdir():
        if item.name in ("chat_template.jinja", "bonsai_model.json"):
            continue
        if item.suffix == ".safetensors":
            os.symlink(item, folder / item.name)
        else:
            (folder / item.name).write_bytes(item.read_bytes())
    return folder


@pytest.fixture
def bare_base(base_model: BaseModel, tmp_path: Path) -> Path:
    return bare_copy(base_model, tmp_path / "bare-base")


@pytest.fixture
def no_engine(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    created: list[object] = []

    def refuse(config):  # type: ignore[no-untyped-def]
        created.append(config)
        raise AssertionError("an engine was created before the base was checked")

    monkeypatch.setattr(session, "create_engine", refuse)
    for k in ("VLLM_LOGGING_LEVEL", "TRANSFORMERS_VERBOSITY"):  # main() setdefaults these
        monkeypatch.setenv(k, os.environ.get(k, "WARNING"))
    return created


# --- the template file ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("{% for m in messages %}{{ m.content }", "not a valid Jinja template: line 1"),
        ("{{ raise_exception('System role not supported') }}", "cannot render a debate's messages: TemplateError: System role not supported"),
        ("{% for m in messages %}{{ m.role }}{% endfor %}", "leaves out message content"),
        ("{{ messages[0].content }}{{ messages[1].content }}", "leaves out message content (ASSISTANT-PROBE, LAST-PROBE"),
        ("   \n", "is empty"),
    ],
)
def test_a_bad_template_file_is_refused_with_what_is_wrong(text: str, needle: str, tmp_path: Path) -> None:
    path = tmp_path / "t.jinja"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        read_chat_template(path)
    assert needle in err.value.message and str(path) in err.value.message
    assert err.value.hint


def test_a_missing_or_binary_template_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        read_chat_template(tmp_path / "nope.jinja")
    (tmp_path / "bin.jinja").write_bytes(b"\xff\xfe\x00junk")
    with pytest.raises(ConfigError, match="cannot be read as UTF-8"):
        read_chat_template(tmp_path / "bin.jinja")


def test_the_shipped_gemma_template_renders_debate_prompts() -> None:
    from transformers.utils.chat_template_utils import render_jinja_template

    text = read_chat_template(GEMMA_TEMPLATE)
    messages = [{"role": "system", "content": "You judge."}, {"role": "user", "content": "Who won?"}]
    out = render_jinja_template(conversations=[messages], chat_template=text, add_generation_prompt=True, bos_token="<bos>")[0][0]
    assert out == "<bos><start_of_turn>user\nYou judge.\n\nWho won?<end_of_turn>\n<start_of_turn>model\n"


def test_where_a_folder_keeps_its_template(bare_base: Path, base_model: BaseModel) -> None:
    assert has_chat_template(base_model.path) and not has_chat_template(bare_base)
    config = json.loads((bare_base / "tokenizer_config.json").read_text())
    (bare_base / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": "{{ messages }}"}))
    assert has_chat_template(bare_base)  # the older transformers layout
    assert template_hash(None) is None and template_hash("a") != template_hash("b")


# --- refused before anything starts ------------------------------------------------------------------


def test_a_base_without_template_is_refused_before_the_engine(bare_base: Path, tmp_path: Path, no_engine: list[object], capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    code = main(["--home", str(home), "debate", "Tea beats coffee", "--base", str(bare_base), "--engine", "vllm"])
    cap = capsys.readouterr()
    assert code == 2 and cap.out == "" and "Traceback" not in cap.err
    errors = [line for line in cap.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "has no chat template" in errors[0] and str(bare_base) in errors[0], cap.err
    assert "--chat-template FILE" in cap.err
    assert no_engine == []
    # nothing written: no store, no (empty) checkpoint file
    assert not (home / "transcripts.sqlite").exists() and not (home / "checkpoints.sqlite").exists()


@pytest.mark.parametrize("command", [["serve", "--dry-run"], ["train", "advocate", "--recipe", "orpo"], ["model", "prepare"]])
def test_every_command_that_renders_refuses_it_too(command: list[str], bare_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    argv = ["--home", str(home), *command, "--base", str(bare_base)]
    if command[0] == "train":  # a dataset so that the base is what fails
        (tmp_path / "ds").mkdir()
        argv += ["--dataset", str(tmp_path / "ds")]
    code = main(argv)
    cap = capsys.readouterr()
    assert code == 2 and "has no chat template" in cap.err and "--chat-template FILE" in cap.err, cap.err
    assert "Traceback" not in cap.err


def test_a_bad_template_flag_is_refused_before_the_engine(bare_base: Path, tmp_path: Path, no_engine: list[object], capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% if %}", encoding="utf-8")
    code = main(["--home", str(tmp_path / "home"), "debate", "Tea beats coffee", "--base", str(bare_base), "--chat-template", str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and "not a valid Jinja template" in err and no_engine == []


def test_the_flag_travels_to_the_engine_config_and_the_server(bare_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = GEMMA_TEMPLATE.read_text(encoding="utf-8")
    setup = plan_engine(EngineOptions(kind="vllm", base=str(bare_base), chat_template=GEMMA_TEMPLATE), tmp_path / "home")
    assert setup.config.chat_template == text and setup.base is not None and setup.base.chat_template == text
    # the OpenAI engine renders on its server: the text is not sent anywhere
    remote = plan_engine(EngineOptions(endpoints=["http://127.0.0.1:9"], base=str(bare_base), chat_template=GEMMA_TEMPLATE), tmp_path / "home")
    assert remote.config.chat_template is None
    code = main(["--home", str(tmp_path / "home"), "serve", "--dry-run", "--json", "--base", str(bare_base), "--chat-template", str(GEMMA_TEMPLATE)])
    assert code == 0
    command = json.loads(capsys.readouterr().out)["command"]
    assert command[command.index("--chat-template") + 1] == str(GEMMA_TEMPLATE)


def test_every_renderer_uses_the_given_template(bare_base: Path, tmp_path: Path) -> None:
    """The vLLM engine's renderer, the trainer's tokenizer and the dataset's length check all render
    with ``--chat-template`` (the folder has no template of its own, so anything else would fail)."""
    from bonsai.engine.vllm_local import VLLMEngine
    from training.dataset import LengthCheck
    from training.train import training_tokenizer

    base = resolve_templated_base(str(bare_base), tmp_path / "home", GEMMA_TEMPLATE)
    prompt = ChatPrompt((ChatMessage("system", "Be brief."), ChatMessage("user", "Speak.")))
    engine = VLLMEngine(base.path, chat_template=base.chat_template)  # renders without starting
    rendered = engine.render(prompt)
    # SmolLM2's tokenizer (its bos_token is <|im_start|>) in Gemma's turn format: the flag's template, not the folder's
    assert rendered == "<|im_start|><start_of_turn>user\nBe brief.\n\nSpeak.<end_of_turn>\n<start_of_turn>model\n"
    assert engine.count_tokens(prompt) > 5
    assert training_tokenizer(base.path, base.chat_template).chat_template == base.chat_template
    row = {"prompt": [{"role": "user", "content": "Speak."}], "chosen": [{"role": "assistant", "content": "Yes."}],
           "rejected": [{"role": "assistant", "content": "No."}]}
    assert all(n > 0 for n in LengthCheck.for_base(base, 256, 8).measure(row))
    config = EngineConfig(kind="hf", base_model=base.path, chat_template=base.chat_template)
    from bonsai.engine import create_engine

    assert create_engine(config).chat_template == base.chat_template  # type: ignore[attr-defined]


def test_a_resident_engine_with_another_template_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bonsai.engine import resident

    engine = resident.ResidentEngine(
        pid=os.getpid(), port=8123, host="127.0.0.1", url="http://127.0.0.1:8123", base_path=str(tmp_path), base_name="b", base_hash="h",
        started_at=0.0, log_path="", bonsai_version="", max_model_len=4096, max_lora_rank=16, dtype="float32", chat_template_hash=template_hash("T"),
    )
    monkeypatch.setattr(resident, "list_states", lambda home: [engine])
    monkeypatch.setattr(resident, "check", lambda home, e, **_: resident.Checked(e, resident.Health.RUNNING))
    assert resident.find_resident(tmp_path, "h", chat_template_hash=template_hash("T")) is engine
    assert resident.find_resident(tmp_path, "h", chat_template_hash=None) is None
    assert resident.find_resident(tmp_path, "h", chat_template_hash=template_hash("U")) is None


# --- preparing a GGUF: input checked first -----------------------------------------------------------


@pytest.mark.parametrize("name", ["../x", "a/b", "", ".hidden", "smollm2-135m-instruct"])
def test_a_bad_model_name_is_refused(name: str, tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(ModelError):
        prepare_gguf(gguf, tmp_path / "home", name)
    assert not (tmp_path / "home" / "models").exists()


def test_prepare_flags_are_checked_before_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    assert main(["--home", str(home), "model", "prepare", "--gguf", str(tmp_path / "x.gguf")]) == 2
    assert "--gguf FILE and --name NAME go together" in capsys.readouterr().err
    assert main(["--home", str(home), "model", "prepare", "--gguf", str(tmp_path / "x.gguf"), "--name", "x"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not (home / "models").exists()


def test_a_prepared_name_is_a_base_and_preparing_it_again_is_a_no_op(base_model: BaseModel, tmp_path: Path) -> None:
    """``--base NAME`` finds ``$BONSAI_HOME/models/NAME``; the same GGUF again returns it without work,
    another GGUF under the same name is refused (nothing replaced without --force)."""
    from bonsai.model.prepare import resolve_base

    home = tmp_path / "home"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    (home / "models").mkdir(parents=True)
    folder = bare_copy(base_model, home / "models" / "mine")
    manifest = {"name": "mine", "source": str(gguf.resolve()), "content_hash": "h" * 64}
    (folder / "bonsai_model.json").write_text(json.dumps(manifest))
    found = resolve_base("mine", home)
    assert found.path == folder.resolve() and found.name == "mine" and found.content_hash == "h" * 64
    assert prepare_gguf(gguf, home, "mine").path == folder  # no dequantizing: it would fail on these 4 bytes
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF")
    with pytest.raises(ModelError, match="was prepared from"):
        prepare_gguf(other, home, "mine")
    with pytest.raises(ModelError, match="prepared without a chat template"):
        prepare_gguf(gguf, home, "mine", chat_template="{{ messages }}")
    with pytest.raises(ModelError, match="neither a local folder"):
        resolve_base("../models/mine", tmp_path / "elsewhere")
