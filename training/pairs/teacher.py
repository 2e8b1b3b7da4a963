"""``teacher``: a stronger model's answer to the persona's exact prompt, chosen over the persona's own.

The teacher is one of: a LoRA adapter on the persona's base (served by the main engine), another
local base model (started in an engine of its own, rendering the messages with its own chat
template), or a model on an OpenAI-compatible server (``bonsai serve`` or ``vllm serve``), named by
its base id or by a served adapter's name.
"""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
from pydantic import Field, model_validator

from bonsai.engine import AdapterRef, Engine, EngineConfig, GenerationRequest
from bonsai.engine.auth import env_api_key
from bonsai.registry.identity import inspect_adapter
from bonsai.engine.openai import OpenAIEngine, normalize_endpoint
from bonsai.errors import ConfigError, EndpointUnreachable
from bonsai.model.chat_template import require_chat_template
from bonsai.model.prepare import resolve_base
from training.pairs.base import Pair, PairContext, Strategy, StrategyParams, generate_all, pair_seed, turn_sampling

log = logging.getLogger(__name__)


class TeacherParams(StrategyParams):
    adapter: Path | None = Field(None, description="A LoRA adapter folder on the persona's base.")
    endpoint: str | None = Field(None, description="URL of an OpenAI-compatible server.")
    model: str | None = Field(None, description="Model on the endpoint: its base id or a served adapter (default: its base).")
    base: Path | None = Field(None, description="Another local base model folder.")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="Teacher's sampling temperature (default: the turn's own).")

    @model_validator(mode="after")
    def _one_teacher(self) -> TeacherParams:
        given = [name for name in ("adapter", "endpoint", "base") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                "name exactly one teacher: --teacher-adapter DIR, --teacher-endpoint URL (with --teacher-model NAME) or --teacher-base DIR"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.model is not None and self.endpoint is None:
            raise ValueError("--teacher-model only goes with --teacher-endpoint")
        return self


class Teacher(Strategy):
    name = "teacher"
    Params = TeacherParams
    params: TeacherParams

    def describe(self) -> dict:
        described = super().describe()
        if self.params.adapter is not None:
            # the folder's path says little; its content hash says which weights taught
            described["params"]["adapter_hash"] = inspect_adapter(self.params.adapter).content_hash
        return described

    async def _teacher(self, ctx: PairContext) -> tuple[Engine, AdapterRef | None, str]:
        p = self.params
        if p.adapter is not None:
            ref = inspect_adapter(p.adapter)
            return await ctx.engines.main([ref], why="the teacher strategy"), ref, f"adapter {ref.name}"
        if p.base is not None:
            base = resolve_base(str(p.base), ctx.home)
            require_chat_template(base.path, None, what="teacher's base model", hint=f"copy a Jinja chat template to {base.path}/chat_template.jinja")
            main = ctx.engines.config
            kind = main.kind if main is not None and main.kind in ("vllm", "hf") else "hf"
            config = EngineConfig(
                kind=kind,
                base_model=base.path,
                base_hash=base.content_hash,
                max_model_len=main.max_model_len if main is not None else 4096,
            )
            return await ctx.engines.start(config), None, f"base {base.name}"
        assert p.endpoint is not None
        url = normalize_endpoint(p.endpoint)
        engine = await ctx.engines.adopt(OpenAIEngine([url], api_key=env_api_key()))
        if p.model is None or p.model in (engine.info.base_model, Path(engine.info.base_model).name):
            return engine, None, f"{url} {engine.info.base_model}"
        served = await _served_adapters(url)
        if p.model not in served:
            raise ConfigError(
                f"the endpoint {url} serves no model {p.model!r}",
                f"pass --teacher-model with its base ({engine.info.base_model}) or one of its adapters: {', '.join(sorted(served)) or '(none)'}",
            )
        # already served under that name, so the engine never needs the (remote) folder
        ref = AdapterRef(path=Path(p.model), content_hash=p.model, name=p.model, rank=0, target_modules=())
        return engine, ref, f"{url} {p.model}"

    async def build(self, ctx: PairContext) -> list[Pair]:
        if not ctx.sources:
            return []
        engine, ref, who = await self._teacher(ctx)
        requests = [
            GenerationRequest(
                f"teacher-{src.key}",
                src.prompt,
                turn_sampling(src.turn, seed=pair_seed(ctx.seed, self.name, src.key), max_tokens=ctx.max_tokens, temperature=self.params.temperature),
                ref,
            )
            for src in ctx.sources
        ]
        log.info("teacher (%s): answering %d prompts", who, len(requests))
        results = await generate_all(engine, requests, concurrency=ctx.concurrency)
        pairs = []
        for src, result in zip(ctx.sources, results, strict=True):
            if result is None:
                ctx.drop("generation_prompt_too_long")
                continue
            pairs.append(
                Pair(
                    source=src,
                    strategy=self.name,
                    chosen=result.text,
                    rejected=src.turn.text,
                    meta={"teacher": who, "finish_reason": result.finish_reason},
                )
            )
        return pairs


async def _served_adapters(url: str) -> set[str]:
    try:
        key = env_api_key()
        async with httpx.AsyncClient(base_url=url, timeout=30, headers={"Authorization": f"Bearer {key}"} if key else {}) as client:
            response = await client.get("/v1/models")
            response.raise_for_status()
            data = response.json().get("data", [])
    except (httpx.HTTPError, ValueError) as exc:
        raise EndpointUnreachable(f"cannot list the models at {url}: {exc}", "check --teacher-endpoint") from exc
    return {m["id"] for m in data if isinstance(m, dict) and m.get("parent") and "id" in m}


STRATEGY = Teacher
