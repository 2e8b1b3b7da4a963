"""Loading adapters on the servers at run time, by their content-hash name (vLLM's ``/v1/load_lora_adapter``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx

from bonsai.engine.adapters import validate_adapter
from bonsai.engine.openai.failures import cannot_reach, server_message
from bonsai.engine.openai.pool import Endpoint
from bonsai.engine.types import AdapterRef
from bonsai.errors import AdapterError, EngineError
from bonsai.model.prepare import MANIFEST

log = logging.getLogger(__name__)


class AdapterCheck:
    """Refuses a misfit with a clear sentence before a server does, when the base is here too; each
    adapter name is checked once."""

    def __init__(self, base_model: str | None) -> None:
        self.base_dir = Path(base_model) if base_model else None
        self._checked: set[str] = set()

    def __call__(self, adapter: AdapterRef) -> None:
        if adapter.name in self._checked:
            return
        if self.base_dir is not None and (self.base_dir / "config.json").is_file():
            validate_adapter(adapter, base_dir=self.base_dir, base_hash=_base_hash(self.base_dir), max_rank=None)
        self._checked.add(adapter.name)


async def load_adapter(ep: Endpoint, adapter: AdapterRef) -> None:
    """Load ``adapter`` on ``ep`` by path (the server reads the folder itself, so it must exist on its
    machine at the same path); :class:`EndpointUnreachable` if the server cannot be asked."""
    body = {"lora_name": adapter.name, "lora_path": str(adapter.path)}
    try:
        response = await ep.client.post("/v1/load_lora_adapter", json=body)
    except httpx.HTTPError as exc:
        raise cannot_reach(ep.url, exc) from exc
    message = server_message(response)
    if response.status_code == 200 or (response.status_code == 400 and "already been loaded" in message):
        ep.adapters.add(adapter.name)
        log.info("adapter %s (%s) loaded on %s", adapter.name, adapter.path, ep.url)
        return
    if response.status_code in (404, 405) and message in ("Not Found", "Method Not Allowed"):
        raise EngineError(
            f"the engine at {ep.url} does not load adapters at run time, and does not serve {adapter.name}",
            "restart it with `bonsai serve` (which allows it), or set VLLM_ALLOW_RUNTIME_LORA_UPDATING=True for `vllm serve`",
        )
    raise AdapterError(
        f"the engine at {ep.url} could not load adapter {adapter.path} (HTTP {response.status_code}): {message}",
        "the folder must exist at that path on the server's machine and fit the server's base model and --max-lora-rank",
    )


def _base_hash(base_dir: Path) -> str | None:
    """The content hash ``bonsai model prepare`` recorded for a base folder, if it did."""
    try:
        return json.loads((base_dir / MANIFEST).read_text(encoding="utf-8")).get("content_hash")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
