"""One engine session: the engine options every command takes, declared once, and :func:`open_engine`.

:class:`EngineOptions` (and :class:`JudgeEngineOptions`) are the single declaration: every command's
``--engine``/``--endpoint``/``--base``/... flags are generated from their fields
(:func:`add_option_arguments`), read back with :func:`options_from_args`, and the TUI keeps the same
model in its own options. :func:`plan_engine` is the set-up every command used to spell out itself
(``--engine openai`` needs ``--endpoint``, the base resolved, the adapters checked against it, the
:class:`EngineConfig` sized for them); :func:`open_engine` plans and starts it, and the judge's own
engine with it when one is asked for.

Layering: this module sits in ``bonsai/engine`` and imports nothing above it. It needs the base model
(``bonsai.model.prepare``, a leaf beside the engine) but not personas or the adapter registry: the
callers turn their personas and registry versions into :class:`AdapterRef`\\ s (they already do, for
their own checks) and hand those in. That keeps persona and registry knowledge out of the engine,
at the price of one line per caller.
"""

from __future__ import annotations

import argparse
import contextlib
import types
import typing
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from bonsai.engine import AdapterRef, Engine, EngineConfig, EngineKind, create_engine
from bonsai.engine.adapters import lora_rank_for, validate_adapter
from bonsai.engine.auth import API_KEY_ENV, EngineAuthError, env_api_key
from bonsai.errors import ConfigError, EndpointUnreachable, EngineError, describe_validation
from bonsai.model.chat_template import require_chat_template
from bonsai.model.prepare import BaseModel as PreparedBase
from bonsai.model.prepare import resolve_base, resolve_templated_base

M = TypeVar("M", bound=BaseModel)

#: a context manager shown while something slow runs (the CLI's spinner); given what is starting
Starting = Callable[[str], AbstractContextManager[Any]]


def _env_secret() -> SecretStr | None:
    key = env_api_key()
    return SecretStr(key) if key else None


class EngineOptions(BaseModel):
    """Which engine serves the debaters: the same choices for every command and the TUI."""

    model_config = ConfigDict(extra="forbid")

    kind: EngineKind = Field(
        "vllm", description="in-process vLLM (default), a `bonsai serve` endpoint, or transformers+PEFT", json_schema_extra={"flag": "--engine"}
    )
    endpoints: list[str] = Field(
        default_factory=list, description="OpenAI-compatible server (with --engine openai); repeatable",
        json_schema_extra={"flag": "--endpoint", "metavar": "URL"},
    )
    base: str | None = Field(None, description="base model folder, prepared model name or cached hub id (default: the embedded SmolLM2-135M-Instruct)")
    chat_template: Path | None = Field(
        None, description="Jinja chat template for the base (a base model without one of its own); every prompt is rendered with it",
        json_schema_extra={"metavar": "FILE"},
    )
    max_model_len: int = Field(4096, ge=256, description="context window the engine serves")
    max_lora_rank: int | None = Field(None, ge=1, description="largest adapter rank the engine accepts (default: from the adapters in play, at least 16)")
    # a secret: never dumped (the TUI's and the loop's saved options leave it out), never shown in --help
    api_key: SecretStr | None = Field(
        default_factory=lambda: _env_secret(), exclude=True,
        description=f"API key of the --endpoint servers and of a resident engine started with one (default: ${API_KEY_ENV})",
        json_schema_extra={"metavar": "KEY"},
    )

    def secret(self) -> str | None:
        return self.api_key.get_secret_value() if self.api_key else None

    def resolved_kind(self) -> EngineKind:
        """An endpoint means the OpenAI engine; ``--engine openai`` without one is a mistake."""
        if self.endpoints:
            return "openai"
        if self.kind == "openai":
            raise ConfigError("--engine openai needs --endpoint URL", "start a server with `bonsai serve` and pass its URL")
        return self.kind


class JudgeEngineOptions(BaseModel):
    """Where the judge runs: by default on the debaters' engine; or on its own (a bigger model, say)."""

    model_config = ConfigDict(extra="forbid")

    judge_endpoint: str | None = Field(
        None, description="judge on this OpenAI-compatible server (any model, e.g. a bigger one on another vLLM); debaters stay on --engine",
        json_schema_extra={"metavar": "URL"},
    )
    judge_model: str | None = Field(
        None, description="the model to judge with on --judge-endpoint (default: the one it serves)", json_schema_extra={"metavar": "NAME"}
    )
    judge_base: str | None = Field(
        None, description="judge with this local base model (folder or cached hub id) on an in-process engine of its own",
        json_schema_extra={"metavar": "DIR"},
    )
    judge_api_key: SecretStr | None = Field(
        None, exclude=True, description="API key of --judge-endpoint (default: the debaters' --api-key)", json_schema_extra={"metavar": "KEY"},
    )

    @model_validator(mode="after")
    def _one_place(self) -> JudgeEngineOptions:
        if self.judge_endpoint and self.judge_base:
            raise ValueError("--judge-endpoint and --judge-base do not go together: pick where the judge runs")
        if self.judge_model and not self.judge_endpoint:
            raise ValueError("--judge-model names a model on --judge-endpoint; pass the endpoint too")
        return self

    @property
    def separate(self) -> bool:
        return bool(self.judge_endpoint or self.judge_base)


# --- flags from the models -------------------------------------------------------------------------


def _flag(name: str, extra: dict[str, Any]) -> str:
    return str(extra.get("flag") or "--" + name.replace("_", "-"))


def _scalar(annotation: Any) -> Any:
    """``int | None`` -> int; the Literal or type argparse converts to."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _scalar(args[0]) if len(args) == 1 else str
    return annotation


def add_option_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, model: type[BaseModel], only: Sequence[str] | None = None,
    defaults: dict[str, Any] | None = None,
) -> None:
    """One flag per field of ``model`` (or of ``only``): its help is the field's description with its
    default, its type and choices come from the annotation. Flags not given stay off the Namespace, so
    :func:`options_from_args` leaves the model's own defaults in place: nothing is declared twice.

    ``defaults``: a command's own defaults for some fields (shown in the help, used when not given).
    A field's ``json_schema_extra`` may name its ``flag``, ``metavar``, or ``split`` (a separator: the
    flag takes one string, e.g. comma-separated names)."""
    defaults = defaults or {}
    for name, info in model.model_fields.items():
        if only is not None and name not in only:
            continue
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS}
        if "metavar" in extra:
            kwargs["metavar"] = extra["metavar"]
        annotation = _scalar(info.annotation)
        default = defaults.get(name, info.get_default(call_default_factory=True))
        if typing.get_origin(annotation) is list and "split" not in extra:
            kwargs["action"] = "append"
        elif typing.get_origin(annotation) is Literal:
            kwargs["choices"] = list(typing.get_args(annotation))
        elif annotation is bool:
            kwargs["action"] = "store_true"
        elif annotation in (int, float):
            kwargs["type"] = annotation
        elif annotation is Path:
            kwargs["type"] = Path
        help_text = info.description or ""
        if default not in (None, [], False) and "(default" not in help_text:
            help_text += f" (default {default})"
        kwargs["help"] = help_text.replace("%", "%%")
        parser.add_argument(_flag(name, extra), **kwargs)


def options_from_args(
    model: type[M], args: argparse.Namespace, *, defaults: dict[str, Any] | None = None, what: str = "options", hint: str = "see --help",
    **fixed: Any,
) -> M:
    """The options given on the command line (flags from :func:`add_option_arguments`) over ``defaults``,
    validated, with one clear message for a bad value (``invalid WHAT: field: problem``)."""
    values: dict[str, Any] = dict(defaults or {})
    for name, info in model.model_fields.items():
        if name in vars(args):
            value = getattr(args, name)
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            if "split" in extra and isinstance(value, str):
                value = [v.strip() for v in value.split(extra["split"]) if v.strip()] or None
            values[name] = value
    values.update(fixed)
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        lines = [line.removeprefix("(top level): ") for line in describe_validation(exc)]
        raise ConfigError(f"invalid {what}: {'; '.join(lines)}", hint) from None


# --- the session -------------------------------------------------------------------------------------


#: how a command says it talks to a resident engine (`bonsai engine start`) rather than starting one
USING_RESIDENT = "using the engine at"


@dataclass(frozen=True)
class EngineSetup:
    """Everything checked and sized, nothing started: an engine's config and the base it runs."""

    config: EngineConfig
    #: the resolved base model (None for an OpenAI engine, unless the caller needed it anyway)
    base: PreparedBase | None
    #: the resident engine (`bonsai engine start`) this setup talks to instead of starting one, if any
    resident: Any = None


@dataclass(frozen=True)
class JudgeSetup:
    config: EngineConfig
    base: PreparedBase | None
    #: the model asked for on the endpoint (None: whatever it serves)
    model: str | None


@dataclass
class EngineSession:
    """A started engine (and the judge's, when it runs apart); what debates are run with."""

    engine: Engine
    base: PreparedBase | None
    #: the judge's own engine, or None: the judge runs on ``engine``
    judge: Engine | None = None

    @property
    def base_name(self) -> str:
        """The name debates record as their base model."""
        return self.base.name if self.base is not None else self.engine.info.base_model


def plan_engine(
    options: EngineOptions, home: Path, refs: Iterable[AdapterRef | None] = (), *, need_base: bool = False, min_loras: int = 1,
    **updates: Any,
) -> EngineSetup:
    """Check and size the engine for ``refs`` (the adapters it will serve) without starting it.

    The base is resolved for an in-process engine (or whenever ``need_base``: training needs it even
    when an endpoint generates); every adapter is checked against it before anything starts.
    ``updates``: EngineConfig fields a command sets itself (a sweep's KV cache, say)."""
    kind = options.resolved_kind()
    in_process = kind != "openai"
    # with --chat-template when given; a base that has no template either way is refused here, before
    # anything starts or is stored (it used to fail at the first prompt, after the engine had started)
    base = resolve_templated_base(options.base, home, options.chat_template) if in_process or need_base else None
    live = [r for r in refs if r is not None]
    if in_process and base is not None:
        for ref in live:
            validate_adapter(ref, base_dir=base.path, base_hash=base.content_hash, max_rank=options.max_lora_rank)
    config = EngineConfig(
        kind=kind,
        base_model=base.path if in_process and base else None,
        base_hash=base.content_hash if in_process and base else None,
        endpoints=list(options.endpoints),
        max_model_len=options.max_model_len,
        max_loras=max(min_loras, len({r.name for r in live})),
        max_lora_rank=options.max_lora_rank or max(16, lora_rank_for(live) if live else 16),
        chat_template=base.chat_template if in_process and base else None,
        api_key=options.api_key,
    )
    config = config.model_copy(update=updates) if updates else config
    resident = None
    if kind == "vllm" and "kind" not in options.model_fields_set:
        # no engine asked for: a running `bonsai engine` for this base serves it (adapters load by their
        # content-hash names); --engine vllm always starts one in-process
        from bonsai.engine.resident import use_resident

        config, resident = use_resident(home, config)
    return EngineSetup(config, base, resident)


def plan_judge(judge: JudgeEngineOptions, options: EngineOptions, home: Path) -> JudgeSetup | None:
    """The judge's own engine, or None when it judges on the debaters' engine. A local judge base runs
    on an in-process engine of the debaters' kind (vLLM when the debaters are on an endpoint)."""
    if judge.judge_endpoint:
        config = EngineConfig(
            kind="openai", endpoints=[judge.judge_endpoint], max_model_len=options.max_model_len, api_key=judge.judge_api_key or options.api_key
        )
        return JudgeSetup(config, None, judge.judge_model)
    if judge.judge_base:
        base = resolve_base(judge.judge_base, home)
        # --chat-template is the debaters' base's; the judge's base must render with its own
        require_chat_template(base.path, None, what="judge's base model", hint=f"copy a Jinja chat template to {base.path}/chat_template.jinja")
        kind: EngineKind = options.kind if options.kind != "openai" and not options.endpoints else "vllm"
        config = EngineConfig(kind=kind, base_model=base.path, base_hash=base.content_hash, max_model_len=options.max_model_len, max_loras=1)
        return JudgeSetup(config, base, None)
    return None


async def _start(engine: Engine, what: str, starting: Starting | None) -> None:
    try:
        with starting(what) if starting is not None else contextlib.nullcontext():
            await engine.start()
    except BaseException:
        with contextlib.suppress(Exception):
            await engine.close()
        raise


@contextlib.asynccontextmanager
async def open_judge(judge: JudgeSetup, *, starting: Starting | None = None) -> AsyncIterator[Engine]:
    """Start the judge's own engine; an unreachable endpoint or a model it does not list fails here,
    with the judge's flags named."""
    if judge.config.kind == "openai":
        from bonsai.engine.openai import OpenAIEngine

        api_key = judge.config.api_key.get_secret_value() if judge.config.api_key else None
        engine: Engine = OpenAIEngine(judge.config.endpoints, base_model=judge.model, endpoint_retry_s=judge.config.endpoint_retry_s, api_key=api_key)
    else:
        engine = create_engine(judge.config)
    try:
        await _start(engine, f"starting the judge's {judge.config.kind} engine", starting)
    except EngineError as exc:
        if judge.config.kind != "openai":
            raise
        # the OpenAI engine's hints speak of --endpoint and --base: say which flags this is about
        if isinstance(exc, EndpointUnreachable):
            hint = "pass a running OpenAI-compatible server (e.g. `bonsai serve`) as --judge-endpoint"
        elif isinstance(exc, EngineAuthError):
            hint = f"pass the judge server's key as --judge-api-key KEY (or the debaters' --api-key / {API_KEY_ENV} when it is the same)"
        else:
            hint = "pass one of the models it lists as --judge-model, or leave --judge-model out"
        raise type(exc)(f"the judge's engine: {exc.message}", hint) from exc
    try:
        yield engine
    finally:
        await engine.close()


@contextlib.asynccontextmanager
async def start_engine(setup: EngineSetup, judge: JudgeSetup | None = None, *, starting: Starting | None = None) -> AsyncIterator[EngineSession]:
    """Start what :func:`plan_engine` (and :func:`plan_judge`) set up; both are closed on the way out.

    The judge's engine starts first: an unreachable judge endpoint, or a model it does not serve,
    fails in a second, before the debaters' engine takes minutes to load and before any debate is stored."""
    async with contextlib.AsyncExitStack() as stack:
        judge_engine = await stack.enter_async_context(open_judge(judge, starting=starting)) if judge is not None else None
        engine = create_engine(setup.config)
        what = f"starting the {setup.config.kind} engine"
        if setup.resident is not None:
            what = f"{USING_RESIDENT} {setup.resident.url} (pid {setup.resident.pid}; `bonsai engine status`)"
        await _start(engine, what, starting)
        stack.push_async_callback(engine.close)
        yield EngineSession(engine, setup.base, judge_engine)


@contextlib.asynccontextmanager
async def open_engine(
    options: EngineOptions, home: Path, refs: Iterable[AdapterRef | None] = (), *, judge: JudgeEngineOptions | None = None,
    starting: Starting | None = None, need_base: bool = False, min_loras: int = 1, **updates: Any,
) -> AsyncIterator[EngineSession]:
    """Plan (see :func:`plan_engine`), start, and close on the way out: the whole engine set-up of a command."""
    setup = plan_engine(options, home, refs, need_base=need_base, min_loras=min_loras, **updates)
    judge_setup = plan_judge(judge, options, home) if judge is not None else None
    async with start_engine(setup, judge_setup, starting=starting) as session:
        yield session
