"""Promotion: the gate's verdict, the running servers, then the ``current`` pointer, in that order.

A running ``bonsai serve`` gets the new version through ``/v1/load_lora_adapter`` under the version's
content-hash name (``lora-<hash>``), so different weights are never loaded under a name a server
already serves (vLLM's prefix cache is keyed by it). Servers are loaded before the pointer moves: if
one cannot take the adapter, nothing has changed. The in-process engine needs nothing here: every new
debate resolves ``current`` when it starts and adds that adapter to the engine, while debates already
running keep the adapter folders pinned in their spec.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bonsai import registry
from bonsai.engine import EngineConfig, create_engine
from bonsai.registry import AdapterRef
from training.gate import check_gate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Promotion:
    persona: str
    version: str
    previous: str | None
    adapter_name: str
    endpoints: tuple[str, ...]
    forced: bool
    evaluation: dict[str, Any] | None
    #: the gate's threshold given on the command line in place of the evaluation's, if any
    threshold_override: float | None = None


async def load_on_endpoints(endpoints: Sequence[str], adapter: AdapterRef, *, base_model: Path | None = None, api_key: str | None = None) -> str:
    """Register ``adapter`` on every server; returns the name it is served under.
    ``api_key``: the servers' key (None: $BONSAI_API_KEY)."""
    engine = create_engine(EngineConfig(kind="openai", endpoints=list(endpoints), base_model=base_model, api_key=api_key))
    async with engine:
        await engine.add_adapter(adapter)
    log.info("adapter %s loaded on %s", adapter.name, ", ".join(endpoints))
    return adapter.name


def _evaluation_summary(evaluation: dict[str, Any] | None) -> dict[str, Any] | None:
    if evaluation is None:
        return None
    keys = ("candidate", "current", "wins", "n", "win_rate", "ci_low", "ci_high", "threshold", "passed", "created_at")
    return {k: evaluation.get(k) for k in keys}


async def promote_version(
    home: Path,
    persona: str,
    version: str,
    *,
    force: bool = False,
    threshold: float | None = None,
    endpoints: Sequence[str] = (),
    base_model: Path | None = None,
    api_key: str | None = None,
) -> Promotion:
    """Gate, hot-load, then move ``current``. Raises (changing nothing) if any step refuses."""
    # the version's files are read once, here: the gate, the servers and the pointer all use what this found
    target = registry.open_version(home, persona, version)
    version = target.version
    evaluation = check_gate(home, persona, version, threshold=threshold, force=force)
    name = target.adapter.name
    if endpoints:
        name = await load_on_endpoints(endpoints, target.adapter, base_model=base_model, api_key=api_key)
    summary = _evaluation_summary(evaluation)
    override = None
    if force:
        reason = "forced"
    elif threshold is not None and evaluation is not None and threshold != evaluation.get("threshold"):
        # a lowered (or raised) bar is a decision someone made, not the gate's verdict: say so in the log
        override = threshold
        reason = f"threshold override: passed at {threshold:g} (the evaluation's threshold was {evaluation.get('threshold')})"
        summary = {**(summary or {}), "threshold_override": threshold}
        log.warning("%s@%s promoted with the gate threshold overridden to %g (evaluated at %s)", persona, version, threshold, evaluation.get("threshold"))
    else:
        reason = "passed the gate"
    previous = registry.promote(home, persona, target, reason=reason, evaluation=summary)
    return Promotion(persona, version, previous, name, tuple(endpoints), force, evaluation, override)


async def rollback_version(
    home: Path, persona: str, *, to: str | None = None, endpoints: Sequence[str] = (), base_model: Path | None = None, api_key: str | None = None
) -> tuple[str | None, str]:
    """Step ``current`` back (see :func:`bonsai.registry.rollback`), loading the target on servers first."""
    if not endpoints:
        return registry.rollback(home, persona, to=to)
    target = registry.open_version(home, persona, to if to else registry.rollback_target(home, persona))
    await load_on_endpoints(endpoints, target.adapter, base_model=base_model, api_key=api_key)
    return registry.rollback(home, persona, to=target)
