"""A scripted engine for fast graph-logic tests. Real-engine tests cover the same paths for real."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator

from bonsai.engine import (
    AdapterRef,
    ChatPrompt,
    Completion,
    Engine,
    EngineInfo,
    GenerationRequest,
    Prompt,
    StreamEvent,
    TextDelta,
    TextPrompt,
    TokenLogprob,
)


class FakeEngine(Engine):
    """Answers every request deterministically from its id; can be told to fail on the n-th debater turn."""

    def __init__(
        self,
        *,
        p_a: float = 0.6,
        fail_on_call: int | None = None,
        judge_json: str | None = None,
        max_model_len: int = 4096,
        prefer_team: str | None = None,
    ) -> None:
        """``p_a``: the judge probe's P(label "A") -- a pure label bias, which the judge cancels into a tie.
        ``prefer_team``: instead, P = ``p_a`` for the label the judge's prompt gives that team (a real preference)."""
        self.info = EngineInfo(kind="vllm", base_model="fake", max_model_len=max_model_len, supports_json_schema=True, max_lora_rank=16)
        self.p_a = p_a
        self.fail_on_call = fail_on_call
        self.judge_json = judge_json
        self.prefer_team = prefer_team
        self.calls: list[GenerationRequest] = []
        self.adapters: list[AdapterRef] = []

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def add_adapter(self, adapter: AdapterRef) -> None:
        self.adapters.append(adapter)

    def render(self, prompt: Prompt) -> str:
        if isinstance(prompt, TextPrompt):
            return prompt.text
        return "".join(f"<|{m.role}|>{m.content}\n" for m in prompt.messages)

    def count_tokens(self, prompt: Prompt) -> int:
        return len(self.render(prompt).split())

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        self.calls.append(request)
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise RuntimeError("injected engine failure")
        logprobs = None
        if request.sampling.max_tokens == 1 and isinstance(request.prompt, ChatPrompt) and request.prompt.continue_final_message:
            text = "A"
            p_label_a = self.p_a
            if self.prefer_team is not None:
                user = request.prompt.messages[-2].content
                team_a_is_label_a = user.rstrip().endswith('call the side for the motion "A" and the side against the motion "B".')
                p_label_a = self.p_a if team_a_is_label_a == (self.prefer_team == "A") else 1 - self.p_a
            top = {"A": math.log(p_label_a), "B": math.log(1 - p_label_a), "The": -5.0}
            logprobs = (TokenLogprob("A", top["A"], top),)
        elif request.sampling.json_schema is not None or "-json" in request.request_id:
            text = self.judge_json or json.dumps({"winner": "A", "scores": {"A": {"logic": 7}, "B": {"logic": 5}}, "rationale": "A was clearer."})
        elif isinstance(request.prompt, ChatPrompt) and "Introduce this phase" in request.prompt.messages[-1].content:
            text = f"Welcome, {request.request_id}."
        elif isinstance(request.prompt, TextPrompt):
            text = f"### Reasoning\nthinking about {request.request_id}\n### Answer\nanswer for {request.request_id}"
        elif "<reasoning>" not in request.prompt.messages[-1].content:
            text = f"answer for {request.request_id}"
        else:
            text = f"<reasoning>why {request.request_id}</reasoning><answer>answer for {request.request_id}</answer>"
        for i in range(0, len(text), 7):
            await asyncio.sleep(0)
            yield TextDelta(request.request_id, text[i : i + 7])
        yield Completion(request.request_id, text, self.count_tokens(request.prompt), len(text.split()), "stop", 0.001, 0.002, logprobs, request.adapter.name if request.adapter else None)


class FailingEngine(Engine):
    """Wraps a real engine and raises on its n-th request: a crash in the middle of a debate."""

    def __init__(self, inner: Engine, fail_on_call: int) -> None:
        self.inner = inner
        self.info = inner.info
        self.fail_on_call = fail_on_call
        self.calls = 0

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def add_adapter(self, adapter: AdapterRef) -> None:
        await self.inner.add_adapter(adapter)

    def count_tokens(self, prompt: Prompt) -> int:
        return self.inner.count_tokens(prompt)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        self.calls += 1
        n = 0
        async for ev in self.inner.stream(request):
            n += 1
            if self.calls == self.fail_on_call and n == 3:
                raise RuntimeError("injected engine failure mid-turn")
            yield ev
