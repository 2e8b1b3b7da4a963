"""The transformers + PEFT engine, for machines where vLLM cannot be installed.

It serves the same requests as the vLLM engine, LoRA adapters included, with a small decode loop of
its own instead of ``model.generate``: requests that arrive together are decoded together in one
batch even when they name different adapters (PEFT's mixed-adapter batches, ``adapter_names=`` per
row), each with its own sampling settings, stop strings and token budget. A debate asks for both
teams' turns at once, and one batched forward pass costs little more than a single one.

Greedy output equals PEFT's ``generate(do_sample=False)`` for the same adapter and prompt, alone or
batched: rows are left-padded and get position ids counted from their first real token, exactly as
``generate`` does.

All torch work runs on one worker thread, so the event loop stays responsive and the model is never
touched by two threads at once (adapter loading waits for the running batch). Events travel back to
the loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bonsai.engine.adapters import validate_adapter
from bonsai.engine.types import (
    AdapterRef,
    Completion,
    Engine,
    EngineInfo,
    EngineStats,
    GenerationRequest,
    Prompt,
    StreamEvent,
    TextDelta,
    TextPrompt,
    TokenLogprob,
    ensure_room,
)
from bonsai.errors import BonsaiError, EngineError

log = logging.getLogger(__name__)

#: PEFT's name for "no adapter" in a mixed-adapter batch
BASE_ADAPTER = "__base__"
#: prompt tokens the detokenizer starts from, so the first output token decodes with its context
_DETOK_CONTEXT = 5
_REPLACEMENT = "\ufffd"

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def _pick_device_and_dtype(dtype: str) -> tuple[torch.device, torch.dtype]:
    """fp32 on CPU (half precision there is slow and inexact); on CUDA whatever ``dtype`` asks."""
    if dtype != "auto" and dtype not in _DTYPES:
        raise EngineError(f"dtype {dtype!r} is not one the transformers engine knows", f"use one of: auto, {', '.join(_DTYPES)}")
    if not torch.cuda.is_available():
        if dtype not in ("auto", "float32", "fp32"):
            log.info("no CUDA device: running the transformers engine in float32, not %s", dtype)
        return torch.device("cpu"), torch.float32
    if dtype == "auto":
        return torch.device("cuda"), torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.device("cuda"), _DTYPES[dtype]


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text pieces without splitting a character.

    A multi-byte character can span several byte-level tokens; until the last one arrives the
    partial decode ends in U+FFFD, and nothing is released. Each step decodes only a short window
    (the vLLM scheme: text of ``ids[prefix:]`` minus text of ``ids[prefix:read]``), so the cost
    per token stays constant however long the answer grows.
    """

    def __init__(self, tokenizer: Any, context_ids: list[int]) -> None:
        self._tok = tokenizer
        self._ids = list(context_ids[-_DETOK_CONTEXT:])
        self._prefix = 0
        self._read = len(self._ids)

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith(_REPLACEMENT):
            self._prefix, self._read = self._read, len(self._ids)
            return new_text[len(prefix_text) :]
        return ""


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Characters at the end of ``text`` that could be the start of a stop string (not sent yet)."""
    held = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), held, -1):
            if text.endswith(stop[:k]):
                held = k
                break
    return held


@dataclass(eq=False)
class _Row:
    """One request inside the engine: its queue back to the consumer and its decode state."""

    request: GenerationRequest
    prompt_ids: list[int]
    adapter_name: str | None
    submitted: float
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[StreamEvent | BaseException] = field(default_factory=asyncio.Queue)
    #: set on the loop thread when the consumer goes away; the worker drops the row at its next step
    cancelled: bool = False
    done: bool = False
    # decode state, touched only by the worker thread
    output_ids: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0
    first_token_s: float | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    detok: IncrementalDetokenizer | None = None
    generator: torch.Generator | None = None

    def post(self, event: StreamEvent | BaseException) -> None:
        """Hand an event to the consumer from any thread."""
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def fail(self, exc: BaseException) -> None:
        if not self.done:
            self.done = True
            self.post(exc)


class HFEngine(Engine):
    """Base model + LoRA adapters with transformers and PEFT, batched across adapters."""

    def __init__(
        self,
        base_model: Path,
        *,
        base_hash: str | None = None,
        dtype: str = "float32",
        max_model_len: int = 4096,
        max_batch: int = 8,
        chat_template: str | None = None,
    ) -> None:
        if max_batch < 1:
            raise EngineError(f"max_batch must be at least 1, got {max_batch}", "pass max_batch=1 or more")
        self.base_model = Path(base_model)
        self.base_hash = base_hash
        #: rendered with instead of the base's own template (``--chat-template``)
        self.chat_template = chat_template
        self.dtype = dtype
        self.max_batch = max_batch
        self.info = EngineInfo(kind="hf", base_model=str(self.base_model), max_model_len=max_model_len, supports_json_schema=False, max_lora_rank=None)
        #: sizes of the most recent batches, newest last (to see whether requests were batched)
        self.recent_batch_sizes: collections.deque[int] = collections.deque(maxlen=64)
        #: totals for stats(): prompt tokens, generated tokens, finished requests (no prefix cache here)
        self._totals = [0, 0, 0]
        self._model: Any = None  # the base model, later the PeftModel wrapping it
        self._tokenizer: Any = None
        self._device = torch.device("cpu")
        self._adapters: dict[str, AdapterRef] = {}
        self._adapter_locks: dict[str, asyncio.Lock] = {}
        self._eos_ids: frozenset[int] = frozenset()
        self._pad_id = 0
        self._executor: ThreadPoolExecutor | None = None
        self._pending: asyncio.Queue[_Row] | None = None
        self._batcher: asyncio.Task[None] | None = None
        self._closing = False

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self._model is not None:
            return
        if not (self.base_model / "config.json").is_file():
            raise EngineError(f"{self.base_model} is not a model folder (no config.json)", "prepare the base first with `bonsai model prepare`, or pass --base DIR")
        self._closing = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bonsai-hf")
        await self._in_worker(self._load)
        self._pending = asyncio.Queue()
        self._batcher = asyncio.create_task(self._batch_forever(), name="bonsai-hf-batcher")

    def _load(self) -> None:
        from transformers import AutoModelForCausalLM

        from bonsai.model.chat_template import load_tokenizer

        device, dtype = _pick_device_and_dtype(self.dtype)
        started = time.monotonic()
        try:
            tokenizer = load_tokenizer(self.base_model, self.chat_template)
            model = AutoModelForCausalLM.from_pretrained(str(self.base_model), dtype=dtype, trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise EngineError(f"transformers cannot load the base model at {self.base_model} ({exc})", "re-prepare it with `bonsai model prepare`") from exc
        model.to(device).eval()
        self._device = device
        self._tokenizer = tokenizer
        self._model = model
        gen_eos = model.generation_config.eos_token_id
        eos = set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos.add(tokenizer.eos_token_id)  # vLLM stops on both too
        self._eos_ids = frozenset(eos)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else model.generation_config.pad_token_id
        self._pad_id = pad if pad is not None else min(eos, default=0)
        limit = getattr(model.config, "max_position_embeddings", None)
        if limit and limit < self.info.max_model_len:
            log.info("max_model_len %d is above the model's %d positions: using %d", self.info.max_model_len, limit, limit)
            self.info = EngineInfo(kind="hf", base_model=self.info.base_model, max_model_len=limit, supports_json_schema=False, max_lora_rank=None)
        log.info("transformers engine: %s on %s (%s) in %.1f s", self.base_model.name, device, dtype, time.monotonic() - started)

    async def stats(self) -> EngineStats:
        """Tokens and requests this engine finished; it has no prefix cache, so those stay ``None``."""
        prompt, generated, finished = self._totals
        return EngineStats(prompt_tokens=prompt, generation_tokens=generated, requests_finished=finished)

    async def close(self) -> None:
        self._closing = True
        if self._batcher is not None:
            self._batcher.cancel()
            try:
                await self._batcher
            except asyncio.CancelledError:
                pass
            self._batcher = None
        if self._pending is not None:
            while not self._pending.empty():
                self._pending.get_nowait().fail(EngineError("the engine was closed before this request ran", "start the engine again"))
            self._pending = None
        if self._executor is not None:
            executor, self._executor = self._executor, None
            await asyncio.to_thread(executor.shutdown, wait=True)  # the running batch sees _closing and stops
        self._model = None
        self._tokenizer = None
        self._adapters.clear()
        gc.collect()
        if self._device.type == "cuda":
            torch.cuda.empty_cache()

    async def _in_worker(self, fn: Any, *args: Any) -> Any:
        if self._executor is None:
            raise EngineError("the transformers engine is not running", "use it inside `async with engine:` or call start() first")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # --- adapters ---------------------------------------------------------------------------

    async def add_adapter(self, adapter: AdapterRef) -> None:
        if adapter.name in self._adapters:
            return
        lock = self._adapter_locks.setdefault(adapter.name, asyncio.Lock())
        async with lock:
            if adapter.name not in self._adapters:
                await self._in_worker(self._load_adapter, adapter)
                self._adapters[adapter.name] = adapter

    def _load_adapter(self, ref: AdapterRef) -> None:
        from peft import PeftModel

        validate_adapter(ref, base_dir=self.base_model, base_hash=self.base_hash, max_rank=None)
        started = time.monotonic()
        try:
            if isinstance(self._model, PeftModel):
                self._model.load_adapter(str(ref.path), adapter_name=ref.name, is_trainable=False)
            else:
                self._model = PeftModel.from_pretrained(self._model, str(ref.path), adapter_name=ref.name, is_trainable=False)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise EngineError(f"PEFT cannot load adapter {ref.path} ({exc})", "check that it was trained on this base model") from exc
        self._model.to(self._device).eval()
        log.info("adapter %s loaded from %s in %.1f s", ref.name, ref.path, time.monotonic() - started)

    # --- prompts ----------------------------------------------------------------------------

    def _require_tokenizer(self) -> Any:
        if self._tokenizer is None:
            raise EngineError("the transformers engine is not running", "use it inside `async with engine:` or call start() first")
        return self._tokenizer

    def render(self, prompt: Prompt) -> str:
        """The exact text the model sees for ``prompt``."""
        if isinstance(prompt, TextPrompt):
            return prompt.text
        tokenizer = self._require_tokenizer()
        messages = [{"role": m.role, "content": m.content} for m in prompt.messages]
        return tokenizer.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=not prompt.continue_final_message,
            continue_final_message=prompt.continue_final_message,
        )

    def _encode(self, prompt: Prompt) -> list[int]:
        tokenizer = self._require_tokenizer()
        text = self.render(prompt)
        # a chat template writes its own BOS; raw text gets the tokenizer's unless it already has one
        bos = tokenizer.bos_token
        add_special = isinstance(prompt, TextPrompt) and not (bos and text.startswith(bos))
        return list(tokenizer(text, add_special_tokens=add_special).input_ids)

    def count_tokens(self, prompt: Prompt) -> int:
        return len(self._encode(prompt))

    # --- requests ---------------------------------------------------------------------------

    async def stream(self, request: GenerationRequest):  # type: ignore[override]
        submitted = time.monotonic()
        if self._pending is None or self._closing:
            raise EngineError("the transformers engine is not running", "use it inside `async with engine:` or call start() first")
        sampling = request.sampling
        if sampling.max_tokens < 1:
            raise EngineError(f"max_tokens must be at least 1, got {sampling.max_tokens}", "ask for one token or more")
        prompt_ids = self._encode(request.prompt)
        ensure_room(len(prompt_ids), sampling.max_tokens, self.info.max_model_len)
        if request.adapter is not None:
            await self.add_adapter(request.adapter)
        row = _Row(
            request=request,
            prompt_ids=prompt_ids,
            adapter_name=request.adapter.name if request.adapter else None,
            submitted=submitted,
            loop=asyncio.get_running_loop(),
        )
        self._pending.put_nowait(row)
        try:
            while True:
                event = await row.events.get()
                if isinstance(event, BaseException):
                    raise event
                yield event
                if isinstance(event, Completion):
                    return
        finally:
            # consumer gone (cancelled, broke out, or finished): the worker drops the row
            row.cancelled = True

    async def _batch_forever(self) -> None:
        assert self._pending is not None
        while True:
            first = await self._pending.get()
            await asyncio.sleep(0)  # let requests submitted in the same tick join this batch
            rows = [first]
            while len(rows) < self.max_batch and not self._pending.empty():
                rows.append(self._pending.get_nowait())
            rows = [r for r in rows if not r.cancelled]
            if not rows:
                continue
            self.recent_batch_sizes.append(len(rows))
            try:
                await self._in_worker(self._decode_batch, rows)
            except asyncio.CancelledError:
                for row in rows:
                    row.fail(EngineError("the engine was closed while this request ran", "start the engine again"))
                raise
            except BonsaiError as exc:
                for row in rows:
                    row.fail(exc)
            except Exception as exc:
                log.exception("transformers engine batch failed")
                for row in rows:
                    row.fail(EngineError(f"generation failed in the transformers engine ({type(exc).__name__}: {exc})", "see the log for the traceback"))

    # --- the decode loop (worker thread) ----------------------------------------------------

    def _decode_batch(self, rows: list[_Row]) -> None:
        with torch.inference_mode():
            self._decode_batch_inner(rows)

    def _decode_batch_inner(self, rows: list[_Row]) -> None:
        from peft import PeftModel

        model, device = self._model, self._device
        for row in rows:
            row.detok = IncrementalDetokenizer(self._tokenizer, row.prompt_ids)
            seed = row.request.sampling.seed
            if row.request.sampling.temperature > 0:
                row.generator = torch.Generator(device=device).manual_seed(seed if seed is not None else secrets.randbits(63))

        width = max(len(r.prompt_ids) for r in rows)
        input_ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, width - len(row.prompt_ids) :] = torch.tensor(row.prompt_ids, dtype=torch.long)
            attention[i, width - len(row.prompt_ids) :] = 1
        input_ids, attention = input_ids.to(device), attention.to(device)
        # positions count from each row's first real token, as generate() computes them
        positions = (attention.cumsum(-1) - 1).masked_fill(attention == 0, 1)

        active = list(rows)
        mixed = isinstance(model, PeftModel)
        cache = None
        step_inputs = input_ids
        while True:
            if self._closing:
                for row in active:
                    row.fail(EngineError("the engine was closed while this request ran", "start the engine again"))
                return
            kwargs: dict[str, Any] = {}
            if mixed:
                kwargs["adapter_names"] = [r.adapter_name or BASE_ADAPTER for r in active]
            out = model(
                input_ids=step_inputs,
                attention_mask=attention,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
                **kwargs,
            )
            cache = out.past_key_values
            logits = out.logits[:, -1, :].float()
            del out
            next_ids = [self._choose(row, logits[i]) for i, row in enumerate(active)]
            for i, row in enumerate(active):
                if not row.cancelled:
                    self._advance(row, next_ids[i], logits[i])

            keep = [i for i, row in enumerate(active) if not (row.done or row.cancelled)]
            if not keep:
                return
            if len(keep) < len(active):
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                attention, positions = attention[index], positions[index]
                active = [active[i] for i in keep]
                next_ids = [next_ids[i] for i in keep]
            step_inputs = torch.tensor(next_ids, dtype=torch.long, device=device).unsqueeze(1)
            attention = torch.cat([attention, attention.new_ones((len(active), 1))], dim=1)
            positions = positions[:, -1:] + 1

    def _choose(self, row: _Row, logits: torch.Tensor) -> int:
        sampling = row.request.sampling
        if sampling.temperature <= 0 or row.generator is None:
            return int(torch.argmax(logits))
        scaled = logits / sampling.temperature
        if sampling.top_p < 1.0:
            sorted_logits, order = torch.sort(scaled, descending=True)
            probs = torch.softmax(sorted_logits, dim=-1)
            # drop tokens once the ones before them already cover top_p (the first always stays)
            beyond = (torch.cumsum(probs, dim=-1) - probs) > sampling.top_p
            sorted_logits = sorted_logits.masked_fill(beyond, float("-inf"))
            pick = torch.multinomial(torch.softmax(sorted_logits, dim=-1), 1, generator=row.generator)
            return int(order[pick])
        return int(torch.multinomial(torch.softmax(scaled, dim=-1), 1, generator=row.generator))

    def _advance(self, row: _Row, token: int, logits: torch.Tensor) -> None:
        """Record one sampled token: logprobs, text, stop checks, and the events that follow."""
        sampling = row.request.sampling
        now = time.monotonic()
        if row.first_token_s is None:
            row.first_token_s = now - row.submitted
        row.output_ids.append(token)
        if sampling.logprobs is not None:
            row.logprobs.append(self._token_logprob(token, logits, sampling.logprobs))

        finish: str | None = None
        if token in self._eos_ids:
            finish = "stop"
        else:
            assert row.detok is not None
            before = len(row.text)
            row.text += row.detok.push(token)
            if sampling.stop and len(row.text) > before:
                longest = max(len(s) for s in sampling.stop)
                start = max(0, before - longest + 1)
                hits = [i for i in (row.text.find(s, start) for s in sampling.stop) if i >= 0]
                if hits:
                    row.text = row.text[: min(hits)]
                    finish = "stop"
        if finish is None and len(row.output_ids) >= sampling.max_tokens:
            finish = "length"

        end = len(row.text) if finish else len(row.text) - _held_back(row.text, sampling.stop)
        if end > row.sent:
            row.post(TextDelta(row.request.request_id, row.text[row.sent : end]))
            row.sent = end
        if finish:
            row.done = True
            self._totals[0] += len(row.prompt_ids)
            self._totals[1] += len(row.output_ids)
            self._totals[2] += 1
            row.post(
                Completion(
                    request_id=row.request.request_id,
                    text=row.text,
                    prompt_tokens=len(row.prompt_ids),
                    output_tokens=len(row.output_ids),
                    finish_reason=finish,
                    first_token_s=row.first_token_s,
                    total_s=now - row.submitted,
                    logprobs=tuple(row.logprobs) if sampling.logprobs is not None else None,
                    adapter_name=row.adapter_name,
                )
            )

    def _token_logprob(self, token: int, logits: torch.Tensor, k: int) -> TokenLogprob:
        logprobs = torch.log_softmax(logits, dim=-1)
        decode = self._tokenizer.decode
        top: dict[str, float] = {}
        if k > 0:
            values, ids = torch.topk(logprobs, k)
            for value, tid in zip(values.tolist(), ids.tolist(), strict=True):
                text = decode([tid])
                top[text] = max(value, top.get(text, float("-inf")))
        chosen_text, chosen = decode([token]), float(logprobs[token])
        top[chosen_text] = max(chosen, top.get(chosen_text, float("-inf")))
        return TokenLogprob(token=chosen_text, logprob=chosen, top=top)
