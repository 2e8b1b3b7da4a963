"""Plain ecosystem interop (issue 11, part 7): the prepared base and bonsai's datasets work in
transformers and TRL as they are, with no bonsai code in between.

The prepared tokenizer has a pad token distinct from EOS and the model's real context length, and a
folder prepared before that fix gets it in place on its next use (no re-prepare, same content hash).
Then the datasets `bonsai data build` writes from a store of real debates (both layouts: Alpaca text and
conversational) train two steps in TRL's own ``trl.experimental.orpo.ORPOTrainer`` with the base
loaded by plain ``AutoModelForCausalLM`` / ``AutoTokenizer``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from pair_store import debate_store

from bonsai.cli.main import main
from bonsai.model.prepare import EMBEDDED_NAME, MANIFEST, TOKENIZER_REVISION, embedded_model_path, resolve_base

STALE = {"model_max_length": 1000000000000000019884624838656, "pad_token_id": None}  # as bonsai prepared it before


def stale_copy(real: Path, home: Path) -> Path:
    """The embedded model as an older bonsai left it in ``home``: JSON files copied (the tokenizer config
    made stale, the manifest without a tokenizer revision), the weights linked."""
    folder = embedded_model_path(home)
    folder.mkdir(parents=True)
    for f in real.iterdir():
        if f.suffix == ".safetensors":
            os.symlink(f, folder / f.name)
        elif f.is_file():
            (folder / f.name).write_bytes(f.read_bytes())
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    tok.pop("pad_token", None)
    tok.update(STALE)
    (folder / "tokenizer_config.json").write_text(json.dumps(tok, indent=2))
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest.pop("tokenizer_revision", None)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return folder


def test_prepare_fixes_a_stale_tokenizer_in_place_once(base_model, isolated_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = stale_copy(base_model.path, isolated_home)
    old_hash = json.loads((folder / MANIFEST).read_text())["content_hash"]
    assert main(["model", "prepare", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["name"] == EMBEDDED_NAME and out["content_hash"] == old_hash  # same identity: adapters stay valid
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    assert (tok["pad_token"], tok["pad_token_id"], tok["model_max_length"]) == ("<|endoftext|>", 0, 8192)
    assert (tok["eos_token"], tok["eos_token_id"]) == ("<|im_end|>", 2)  # EOS untouched, and not the pad
    assert json.loads((folder / MANIFEST).read_text())["tokenizer_revision"] == TOKENIZER_REVISION
    # idempotent and cheap when nothing changed: no file is written again
    stamps = {f.name: f.stat().st_mtime_ns for f in folder.iterdir()}
    t0 = time.perf_counter()
    assert resolve_base(None, isolated_home).content_hash == old_hash
    assert time.perf_counter() - t0 < 0.5
    assert main(["model", "prepare"]) == 0
    assert {f.name: f.stat().st_mtime_ns for f in folder.iterdir()} == stamps

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    assert (tokenizer.pad_token, tokenizer.pad_token_id, tokenizer.model_max_length) == ("<|endoftext|>", 0, 8192)
    assert tokenizer.eos_token_id == 2 and tokenizer.pad_token_id != tokenizer.eos_token_id
    # the chat template still ends each turn with EOS, which padding never masks
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert 2 in ids and 0 not in ids


def test_a_read_only_prepared_model_still_resolves(base_model, isolated_home: Path, caplog: pytest.LogCaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A model folder the user cannot write (a shared read-only install) still serves debates: the fix is
    skipped with a warning. (Root can write anywhere, so the refusal is injected where the write happens.)"""
    from bonsai.model import prepare

    folder = stale_copy(base_model.path, isolated_home)
    before = (folder / "tokenizer_config.json").read_bytes()

    def refuse(path: Path, text: str) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(prepare.atomic, "write_text", refuse)
    assert resolve_base(None, isolated_home).name == EMBEDDED_NAME
    assert (folder / "tokenizer_config.json").read_bytes() == before and "cannot update the tokenizer" in caplog.text


def test_a_prepared_model_with_a_current_tokenizer_is_left_alone(base_model, isolated_home: Path) -> None:
    folder = stale_copy(base_model.path, isolated_home)
    manifest = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps({**manifest, "tokenizer_revision": TOKENIZER_REVISION}))
    before = (folder / "tokenizer_config.json").read_bytes()
    resolve_base(None, isolated_home)
    assert (folder / "tokenizer_config.json").read_bytes() == before  # the stamp says done: not even read


@pytest.mark.slow
async def test_bonsai_datasets_train_in_plain_trl_orpo(tmp_path_factory: pytest.TempPathFactory, base_model, isolated_home: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    from bonsai.personas import PersonaBook
    from training.dataset import BuildOptions, StrategySpec, build_dataset, load_pairs
    from training.pairs import Engines

    store = await debate_store(tmp_path_factory, base_model)
    stale = stale_copy(base_model.path, tmp_path / "old-home")  # as an older bonsai left it, not fixed
    folder = stale_copy(base_model.path, isolated_home)  # the fix, as an existing user gets it
    prepared = resolve_base(None, isolated_home)
    for persona, layout in (("skeptic", "alpaca"), ("advocate", "conversational")):
        opts = BuildOptions(persona=persona, store=store, strategies=[StrategySpec(name="best-of-n", params={"min_gap": 0.0})],
                            min_pairs=1, out=tmp_path / persona)
        async with Engines() as engines:
            await build_dataset(opts, base=prepared, book=PersonaBook.load(), home=isolated_home, engines=engines)
        pairs, card = load_pairs(tmp_path / persona)
        assert card["format"] == layout and len(pairs["train"]) >= 1

        # nothing of bonsai from here on: the folder and the rows, as any TRL user would take them
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
        before = {n: p.detach().clone() for n, p in model.named_parameters() if "layers.29.mlp" in n}
        args = ORPOConfig(
            output_dir=str(tmp_path / f"out-{persona}"), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-4,
            max_length=512, max_completion_length=128, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
            dataloader_num_workers=0,
        )
        if layout == "alpaca":
            # what a user hit before the fix: the same dataset, the stale tokenizer, no padding token
            with pytest.raises(ValueError, match="padding token"):
                ORPOTrainer(model=model, args=args, train_dataset=pairs["train"], processing_class=AutoTokenizer.from_pretrained(str(stale))).train()
            model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
        trainer = ORPOTrainer(model=model, args=args, train_dataset=pairs["train"], processing_class=tokenizer)
        result = trainer.train()
        assert result.global_step == 2 and torch.isfinite(torch.tensor(result.training_loss))
        changed = [n for n, p in model.named_parameters() if n in before and not torch.equal(p.detach(), before[n])]
        assert changed, f"two ORPO steps on the {layout} dataset changed no weight"
