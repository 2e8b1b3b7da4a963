"""Will an adapter fit this base and this engine? And the ids vLLM serves adapters under.

An adapter is identified by its content in :mod:`bonsai.registry.identity`; here it is checked
against the base before any engine tries to load it (reading only file headers), so a wrong adapter
is refused with a sentence instead of failing obscurely inside vLLM. No vLLM import here.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from bonsai.errors import AdapterError
from bonsai.registry.identity import AdapterRef
from bonsai.registry.peft import HINT_FOLDER, WEIGHTS_FILE, read_config, tensor_shapes

log = logging.getLogger(__name__)

#: the max_lora_rank values vLLM accepts (vllm.config.lora.MaxLoRARanks)
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

#: model types whose linear layers are named and shaped like Llama's (used when the base has no
#: safetensors to read shapes from)
_LLAMA_LIKE = {"llama", "mistral", "qwen2", "qwen3", "granite", "smollm3"}

_PEFT_PREFIX = "base_model.model."
_LORA_SUFFIX = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


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
            for name, shape in tensor_shapes(file).items():
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
    config = read_config(ref.path)
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
    for name, shape in sorted(tensor_shapes(ref.path / WEIGHTS_FILE).items()):
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
            raise AdapterError(f"adapter {ref.path} has a rank-{r} matrix {name} but declares r={ref.rank}", HINT_FOLDER)


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
