"""LoRA adapters on disk: identify them by content, and refuse the ones that cannot fit the base.

Every engine (vLLM in-process, an OpenAI-compatible server, transformers+PEFT) serves adapters by the
name derived here, so the same weights get the same name everywhere and different weights never
share one (vLLM's prefix cache is keyed by adapter name). Validation reads only file headers: a
wrong adapter is refused with a sentence before any engine tries to load it and fails obscurely.
No vLLM import here.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from bonsai.engine.types import AdapterRef
from bonsai.errors import AdapterError

log = logging.getLogger(__name__)

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
#: written by bonsai's trainer beside the PEFT files: {"base_hash": ...}
MANIFEST_FILE = "bonsai_adapter.json"

#: the max_lora_rank values vLLM accepts (vllm.config.lora.MaxLoRARanks)
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

#: config fields that change what the adapter computes; anything else (paths, task type) does not
_WEIGHT_FIELDS = ("r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern", "use_rslora", "use_dora", "modules_to_save")

#: model types whose linear layers are named and shaped like Llama's (used when the base has no
#: safetensors to read shapes from)
_LLAMA_LIKE = {"llama", "mistral", "qwen2", "qwen3", "granite", "smollm3"}

_PEFT_PREFIX = "base_model.model."
_LORA_SUFFIX = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")

_HINT_FOLDER = "pass a folder written by PEFT's save_pretrained (adapter_config.json + adapter_model.safetensors)"


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{what} {path} cannot be read ({exc})", _HINT_FOLDER) from exc
    if not isinstance(data, dict):
        raise AdapterError(f"{what} {path} is not a JSON object", _HINT_FOLDER)
    return data


def _read_config(folder: Path) -> dict[str, Any]:
    return _read_json(folder / CONFIG_FILE, "adapter config")


def _tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes from a safetensors header; no tensor data is read."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as fh:
            return {name: tuple(fh.get_slice(name).get_shape()) for name in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types for broken headers
        raise AdapterError(f"{path} is not a readable safetensors file ({exc})", "re-save the adapter, or point at the right folder") from exc


def _rank(config: dict[str, Any]) -> int:
    rank = int(config.get("r") or 0)
    pattern = config.get("rank_pattern") or {}
    return max([rank, *(int(v) for v in pattern.values())])


def _target_modules(config: dict[str, Any]) -> tuple[str, ...]:
    targets = config.get("target_modules")
    if targets is None:
        return ()
    if isinstance(targets, str):
        return (targets,)
    return tuple(sorted(str(t) for t in targets))


def _canonical_config(config: dict[str, Any]) -> bytes:
    fields = {key: config.get(key) for key in _WEIGHT_FIELDS}
    # PEFT saves target_modules from a set: its order changes between saves of the same adapter
    if isinstance(fields["target_modules"], list):
        fields["target_modules"] = sorted(fields["target_modules"])
    if isinstance(fields["modules_to_save"], list):
        fields["modules_to_save"] = sorted(fields["modules_to_save"])
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def _content_hash(config: dict[str, Any], weights: Path) -> str:
    h = hashlib.sha256()
    h.update(_canonical_config(config))
    h.update(b"\0")
    with open(weights, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def inspect_adapter(path: Path) -> AdapterRef:
    """Identify the PEFT LoRA adapter in ``path`` by its content."""
    path = Path(path)
    if not path.is_dir():
        raise AdapterError(f"adapter folder {path} does not exist", _HINT_FOLDER)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (path / name).is_file():
            extra = " (.bin adapters are not supported: re-save with safe_serialization=True)" if name == WEIGHTS_FILE and (path / "adapter_model.bin").exists() else ""
            raise AdapterError(f"adapter folder {path} has no {name}{extra}", _HINT_FOLDER)
    config = _read_config(path)
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise AdapterError(f"adapter {path} is a {peft_type or 'unknown'} adapter, not LoRA", "bonsai serves LoRA adapters only; train one with `bonsai train`")
    rank = _rank(config)
    if rank < 1:
        raise AdapterError(f"adapter {path} has no valid rank r in {CONFIG_FILE}", _HINT_FOLDER)
    _tensor_shapes(path / WEIGHTS_FILE)  # fail here, not in the engine, when the file is broken
    digest = _content_hash(config, path / WEIGHTS_FILE)
    base_hash = None
    if (path / MANIFEST_FILE).is_file():
        base_hash = _read_json(path / MANIFEST_FILE, "adapter manifest").get("base_hash")
    return AdapterRef(
        path=path.resolve(),
        content_hash=digest,
        name="lora-" + digest[:16],
        rank=rank,
        target_modules=_target_modules(config),
        base_model=str(base_hash) if base_hash else None,
    )


class AdapterInspector:
    """``inspect_adapter`` remembered per folder while its files stay the same (size, mtime, inode).

    A sweep starts hundreds of debates on the same few adapters; hashing an 8B-shaped adapter (~84 MB)
    at every start held the event loop for ~0.2 s per debate, which capped a whole GPU sweep. Adapters
    are written by atomic rename (a new inode), so a changed adapter is never served from here. One
    inspector serves a whole command: its pre-flight checks and every debate it then runs.
    """

    def __init__(self) -> None:
        self._refs: dict[tuple[Any, ...], AdapterRef] = {}
        self._pending: dict[tuple[Any, ...], asyncio.Future[AdapterRef]] = {}  # folders being hashed now

    @staticmethod
    def _key(path: Path) -> tuple[Any, ...] | None:
        # not resolved: stat follows a `current` link, so a re-pointed link gives another key
        parts: list[Any] = [os.path.abspath(path)]
        for name in (CONFIG_FILE, WEIGHTS_FILE, MANIFEST_FILE):
            try:
                st = (path / name).stat()
            except FileNotFoundError:
                parts.append(None)
                continue
            except OSError:
                return None  # unreadable: let inspect_adapter say why
            parts.append((st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(parts)

    def inspect(self, path: Path) -> AdapterRef:
        key = self._key(Path(path))
        if key is None:
            return inspect_adapter(Path(path))
        if key not in self._refs:
            self._refs[key] = inspect_adapter(Path(path))
        return self._refs[key]

    async def ainspect(self, path: Path) -> AdapterRef:
        """The same, hashing off the event loop on a miss. Debates that start together share one hashing
        of a folder (a sweep starts hundreds at once: each hashing it again filled the thread pool)."""
        key = self._key(Path(path))
        if key is None:
            return await asyncio.to_thread(inspect_adapter, Path(path))
        if key in self._refs:
            return self._refs[key]
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = asyncio.ensure_future(asyncio.to_thread(inspect_adapter, Path(path)))
            pending.add_done_callback(lambda done: self._settle(key, done))
        # shielded: one debate being cancelled must not cancel the hashing the others wait on
        return await asyncio.shield(pending)

    def _settle(self, key: tuple[Any, ...], done: asyncio.Future[AdapterRef]) -> None:
        self._pending.pop(key, None)
        if not done.cancelled() and done.exception() is None:
            self._refs[key] = done.result()


# --- the base model's linear layers -------------------------------------------------------------


def _base_linears(base_dir: Path) -> dict[str, tuple[int, int]] | None:
    """Module path -> (out_features, in_features) of every 2-D weight in the base.

    Read from the base's safetensors headers when there are any (exact, any architecture), else
    derived from config.json for Llama-like models; ``None`` when neither is possible.
    """
    files = sorted(base_dir.glob("*.safetensors"))
    if files:
        linears: dict[str, tuple[int, int]] = {}
        for file in files:
            for name, shape in _tensor_shapes(file).items():
                if name.endswith(".weight") and len(shape) == 2:
                    linears[name.removesuffix(".weight")] = (shape[0], shape[1])
        return linears
    config_path = base_dir / "config.json"
    if not config_path.is_file():
        return None
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config = config.get("text_config", config)
    if config.get("model_type") not in _LLAMA_LIKE:
        return None
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    inter = int(config["intermediate_size"])
    per_layer = {
        "self_attn.q_proj": (heads * head_dim, hidden),
        "self_attn.k_proj": (kv_heads * head_dim, hidden),
        "self_attn.v_proj": (kv_heads * head_dim, hidden),
        "self_attn.o_proj": (hidden, heads * head_dim),
        "mlp.gate_proj": (inter, hidden),
        "mlp.up_proj": (inter, hidden),
        "mlp.down_proj": (hidden, inter),
    }
    return {f"model.layers.{i}.{mod}": shape for i in range(int(config["num_hidden_layers"])) for mod, shape in per_layer.items()}


def _target_matches(target: str, modules: Iterable[str]) -> bool:
    return any(m == target or m.endswith("." + target) for m in modules)


#: (adapter name = its content hash, base folder, base content hash) already checked to fit: a command's
#: pre-flight check and the engine's check on load read the same files, so the second is skipped
_FITS: set[tuple[str, str, str | None]] = set()


def validate_adapter(ref: AdapterRef, *, base_dir: Path, base_hash: str | None, max_rank: int | None) -> None:
    """Refuse an adapter that the engine could not load or that would compute nonsense on this base."""
    if max_rank is not None and ref.rank > max_rank:
        raise AdapterError(
            f"adapter {ref.path} has rank {ref.rank}, above the engine's max_lora_rank {max_rank}",
            f"raise --max-lora-rank (engine max_lora_rank) to at least {lora_rank_for([ref])}",
        )
    if ref.base_model and base_hash and ref.base_model != base_hash:
        raise AdapterError(
            f"adapter {ref.path} was trained on another base (base hash {ref.base_model[:12]}…, this base is {base_hash[:12]}…)",
            "serve it with the base it was trained on, or retrain it on this base",
        )
    # the rest reads the adapter's files (named by their content hash) and the base's: only a base known
    # by its content hash can be remembered: a folder without one may change under us
    key = (ref.name, str(Path(base_dir).resolve()), base_hash)
    if base_hash is not None and key in _FITS:
        return
    _check_fits(ref, Path(base_dir), base_hash)
    if base_hash is not None:
        _FITS.add(key)


def _check_fits(ref: AdapterRef, base_dir: Path, base_hash: str | None) -> None:
    config = _read_config(ref.path)
    if config.get("use_dora"):
        raise AdapterError(f"adapter {ref.path} is a DoRA adapter, which vLLM cannot serve", "retrain with use_dora=False")
    if config.get("modules_to_save"):
        raise AdapterError(
            f"adapter {ref.path} saves full copies of {config['modules_to_save']}, which vLLM cannot serve",
            "retrain without modules_to_save (LoRA on the linear layers only)",
        )

    linears = _base_linears(Path(base_dir))
    if linears is None:
        log.warning("cannot read the layer shapes of %s: adapter %s is not checked against it", base_dir, ref.name)
        return

    targets = config.get("target_modules")
    if isinstance(targets, str) and targets != "all-linear":
        if not any(re.fullmatch(targets, m) for m in linears):
            raise AdapterError(f"adapter {ref.path} targets modules matching {targets!r}, which the base model does not have", "the adapter was trained for another base model")
    elif isinstance(targets, list):
        missing = [t for t in targets if not _target_matches(t, linears)]
        if missing:
            raise AdapterError(
                f"adapter {ref.path} targets {', '.join(sorted(missing))}, which the base model does not have",
                "the adapter was trained for another base model; use the base it was trained on",
            )

    _check_shapes(ref, linears)


def _check_shapes(ref: AdapterRef, linears: dict[str, tuple[int, int]]) -> None:
    hint = "serve it with the base it was trained on, or retrain it on this base"
    for name, shape in sorted(_tensor_shapes(ref.path / WEIGHTS_FILE).items()):
        match = _LORA_SUFFIX.match(name.removeprefix(_PEFT_PREFIX))
        if match is None:
            if "lora_magnitude_vector" in name:
                raise AdapterError(f"adapter {ref.path} is a DoRA adapter, which vLLM cannot serve", "retrain with use_dora=False")
            if "lora_embedding" in name:
                continue  # embedding LoRA: vLLM checks these itself
            raise AdapterError(f"adapter {ref.path} holds a tensor {name} that is not a LoRA matrix", "retrain without modules_to_save (LoRA on the linear layers only)")
        module, ab = match["module"], match["ab"]
        if module not in linears:
            raise AdapterError(f"adapter was trained for another base model (module {module} does not exist in this base)", hint)
        out_features, in_features = linears[module]
        if len(shape) != 2:
            raise AdapterError(f"adapter was trained for another base model (expected a matrix for {name}, got shape {list(shape)})", hint)
        r = shape[0] if ab == "A" else shape[1]
        expected = [r, in_features] if ab == "A" else [out_features, r]
        if list(shape) != expected:
            raise AdapterError(f"adapter was trained for another base model (expected {module}.lora_{ab} {expected}, got {list(shape)})", hint)
        if r > ref.rank:
            raise AdapterError(f"adapter {ref.path} has a rank-{r} matrix {name} but declares r={ref.rank}", _HINT_FOLDER)


# --- ids and ranks for the engine ---------------------------------------------------------------


def lora_rank_for(adapters: Iterable[AdapterRef]) -> int:
    """Smallest max_lora_rank vLLM accepts that covers every adapter (at least 8)."""
    return supported_lora_rank(max([8, *(a.rank for a in adapters)]))


def supported_lora_rank(rank: int) -> int:
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise AdapterError(f"LoRA rank {rank} is above vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}", "retrain the adapter with a smaller rank")


class AdapterRegistry:
    """Integer ids for vLLM's LoRARequest, one per content hash, never reused.

    vLLM caches loaded adapters by id and trusts the caller to keep ids unique, so two different
    adapters must never share one and one adapter must keep its id for the engine's lifetime.
    """

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._refs: dict[str, AdapterRef] = {}

    def register(self, ref: AdapterRef) -> int:
        adapter_id = self._ids.get(ref.content_hash)
        if adapter_id is None:
            adapter_id = len(self._ids) + 1
            self._ids[ref.content_hash] = adapter_id
        # same weights at a newer path: keep the newest, so vLLM can reload it after an eviction
        self._refs[ref.name] = ref
        return adapter_id

    def id_of(self, name: str) -> int:
        return self._ids[self.get(name).content_hash]

    def get(self, name: str) -> AdapterRef:
        try:
            return self._refs[name]
        except KeyError:
            raise AdapterError(f"adapter {name} is not registered with this engine", "add it with engine.add_adapter first") from None

    def __contains__(self, item: object) -> bool:
        name = item.name if isinstance(item, AdapterRef) else item
        return name in self._refs

    def __len__(self) -> int:
        return len(self._refs)

    def __iter__(self) -> Iterator[AdapterRef]:
        return iter(list(self._refs.values()))
