"""The transformers + PEFT engine on the real tiny model and real LoRA adapters.

The reference for correctness is PEFT itself: greedy output must equal ``PeftModel.generate``, and a
request batched with others (other adapters, other prompt lengths) must produce what it produces alone.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from bonsai.registry.identity import inspect_adapter
from bonsai.engine.hf_peft import HFEngine, IncrementalDetokenizer
from bonsai.engine.types import (
    AdapterRef,
    ChatPrompt,
    Completion,
    GenerationRequest,
    Prompt,
    Sampling,
    TextDelta,
    TextPrompt,
)
from bonsai.errors import AdapterError, EngineError, PromptTooLong

pytestmark = pytest.mark.slow

MAX_TOKENS = 16
STORY = ChatPrompt.of([{"role": "user", "content": "Write a short story about a dragon."}])
PARIS = ChatPrompt.of([{"role": "user", "content": "What is the capital of France? Explain in detail why it matters so much to Europe."}])
HELLO = ChatPrompt.of([{"role": "user", "content": "Hi"}])


@pytest.fixture(scope="session")
async def hf_engine(base_model):
    engine = HFEngine(base_model.path, base_hash=base_model.content_hash, max_model_len=512, max_batch=8)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.close()


@pytest.fixture(scope="session")
async def adapter_refs(hf_engine: HFEngine, lora_adapters: list[Path]) -> list[AdapterRef]:
    refs = [inspect_adapter(p) for p in lora_adapters]
    for ref in refs:
        await hf_engine.add_adapter(ref)
        await hf_engine.add_adapter(ref)  # idempotent
    return refs


@dataclass
class Streamed:
    deltas: list[str]
    completion: Completion


async def run(engine: HFEngine, request: GenerationRequest) -> Streamed:
    deltas: list[str] = []
    final: Completion | None = None
    async for event in engine.stream(request):
        if isinstance(event, TextDelta):
            assert final is None, "delta after the Completion"
            assert event.request_id == request.request_id
            deltas.append(event.text)
        else:
            final = event
    assert final is not None
    return Streamed(deltas, final)


def max_logprob_gap(a: Completion, b: Completion) -> float:
    """Largest logprob difference between two greedy runs that chose the same tokens."""
    assert a.logprobs is not None and b.logprobs is not None
    assert [lp.token for lp in a.logprobs] == [lp.token for lp in b.logprobs]
    return max(abs(x.logprob - y.logprob) for x, y in zip(a.logprobs, b.logprobs, strict=True))


def adapter_changed_the_model(base: Completion, tuned: Completion) -> bool:
    """The first token's distribution (same context in both runs) differs: another token or another logprob."""
    assert base.logprobs and tuned.logprobs
    x, y = base.logprobs[0], tuned.logprobs[0]
    return x.token != y.token or abs(x.logprob - y.logprob) > 1e-3


def greedy(request_id: str, prompt: Prompt, adapter: AdapterRef | None, **kw) -> GenerationRequest:
    return GenerationRequest(request_id, prompt, Sampling(temperature=0.0, max_tokens=MAX_TOKENS, **kw), adapter)


@pytest.fixture(scope="session")
async def mixed_requests(adapter_refs: list[AdapterRef]) -> list[GenerationRequest]:
    """Same prompt with base and adapter 0, a longer one with adapter 1, a short one on the base that ends on EOS."""
    a0, a1 = adapter_refs
    return [
        greedy("base-story", STORY, None, logprobs=1),
        greedy("a0-story", STORY, a0, logprobs=1),
        greedy("a1-paris", PARIS, a1, logprobs=1),
        greedy("base-hello", HELLO, None, logprobs=1),
    ]


@pytest.fixture(scope="session")
async def solo_results(hf_engine: HFEngine, mixed_requests: list[GenerationRequest]) -> dict[str, Streamed]:
    results = {}
    for request in mixed_requests:
        results[request.request_id] = await run(hf_engine, request)
        assert hf_engine.recent_batch_sizes[-1] == 1
    return results


async def test_greedy_equals_peft_generate(hf_engine: HFEngine, adapter_refs, lora_adapters, base_model, solo_results) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tokenizer = hf_engine._tokenizer
    model = AutoModelForCausalLM.from_pretrained(str(base_model.path), dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(model, str(lora_adapters[0])).eval()
    ids = tokenizer(hf_engine.render(STORY), add_special_tokens=False, return_tensors="pt").input_ids
    assert ids.shape[1] == hf_engine.count_tokens(STORY)
    with torch.inference_mode():
        out = peft_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=MAX_TOKENS)
    expected_ids = out[0, ids.shape[1] :].tolist()

    got = solo_results["a0-story"].completion
    assert got.logprobs is not None
    assert [lp.token for lp in got.logprobs] == [tokenizer.decode([t]) for t in expected_ids]
    assert got.text == tokenizer.decode(expected_ids, skip_special_tokens=True)
    assert got.output_tokens == len(expected_ids) == MAX_TOKENS
    assert got.finish_reason == "length"
    assert got.prompt_tokens == ids.shape[1]
    assert got.adapter_name == adapter_refs[0].name
    # the adapter really changes the model (its A matrices are random, so compare probabilities, not text)
    assert adapter_changed_the_model(solo_results["base-story"].completion, got)


async def test_logprobs_are_log_softmax_of_the_chosen_token(solo_results) -> None:
    for streamed in solo_results.values():
        logprobs = streamed.completion.logprobs
        assert logprobs is not None and len(logprobs) == streamed.completion.output_tokens
        for lp in logprobs:
            assert lp.logprob <= 0.0
            assert lp.token in lp.top and lp.top[lp.token] == lp.logprob
            # greedy: the chosen token is the most likely one, and it is in the top-1
            assert lp.logprob == max(lp.top.values())
            assert 1 <= len(lp.top) <= 2


async def test_short_answer_stops_on_eos(solo_results) -> None:
    hello = solo_results["base-hello"].completion
    assert hello.finish_reason == "stop"
    assert hello.output_tokens < MAX_TOKENS
    assert hello.first_token_s is not None and 0 < hello.first_token_s <= hello.total_s


async def test_mixed_adapter_batch_matches_each_request_alone(hf_engine: HFEngine, mixed_requests, solo_results) -> None:
    together = await asyncio.gather(*(run(hf_engine, r) for r in mixed_requests))
    assert hf_engine.recent_batch_sizes[-1] == len(mixed_requests), "the requests were not decoded in one batch"
    for request, streamed in zip(mixed_requests, together, strict=True):
        alone = solo_results[request.request_id]
        assert streamed.completion.request_id == request.request_id
        assert streamed.completion.text == alone.completion.text, request.request_id
        assert streamed.completion.output_tokens == alone.completion.output_tokens
        assert streamed.completion.finish_reason == alone.completion.finish_reason
        assert "".join(streamed.deltas) == streamed.completion.text
        assert streamed.completion.adapter_name == (request.adapter.name if request.adapter else None)
        # each row used its own adapter: its probabilities are those it gets alone (to float noise)
        assert max_logprob_gap(streamed.completion, alone.completion) < 1e-4, request.request_id
    # base and adapter 0 had the same prompt in the same batch and still computed different probabilities
    assert adapter_changed_the_model(together[0].completion, together[1].completion)


async def test_deltas_concatenate_to_the_text(solo_results) -> None:
    for streamed in solo_results.values():
        assert len(streamed.deltas) > 1
        assert all(streamed.deltas)
        assert "".join(streamed.deltas) == streamed.completion.text


async def test_stop_string_truncates_and_is_not_streamed(hf_engine: HFEngine, mixed_requests, solo_results) -> None:
    full = solo_results["base-story"].completion.text
    stop = full[12:17]  # a piece that straddles token boundaries
    assert stop in full and len(stop) == 5
    request = GenerationRequest("stop", STORY, Sampling(temperature=0.0, max_tokens=MAX_TOKENS, stop=("never appears", stop)))
    streamed = await run(hf_engine, request)
    assert streamed.completion.finish_reason == "stop"
    assert streamed.completion.text == full[: full.index(stop)]
    assert "".join(streamed.deltas) == streamed.completion.text


async def test_cancelled_consumer_does_not_disturb_the_batch(hf_engine: HFEngine, mixed_requests, solo_results) -> None:
    keep = mixed_requests[2]
    doomed = GenerationRequest("doomed", STORY, Sampling(temperature=0.0, max_tokens=128))
    first_delta = asyncio.Event()

    async def consume_doomed() -> None:
        async for event in hf_engine.stream(doomed):
            if isinstance(event, TextDelta):
                first_delta.set()

    doomed_task = asyncio.create_task(consume_doomed())
    keep_task = asyncio.create_task(run(hf_engine, keep))
    await first_delta.wait()
    doomed_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed_task
    kept = await keep_task
    assert hf_engine.recent_batch_sizes[-1] == 2
    assert kept.completion.text == solo_results[keep.request_id].completion.text
    assert "".join(kept.deltas) == kept.completion.text


async def test_seeded_sampling_is_reproducible(hf_engine: HFEngine, adapter_refs) -> None:
    prompt = ChatPrompt.of([{"role": "user", "content": "Write a poem about the sea."}])

    def sampled(seed: int) -> GenerationRequest:
        return GenerationRequest(f"s{seed}", prompt, Sampling(temperature=1.0, top_p=0.9, max_tokens=12, seed=seed), adapter_refs[1])

    first = await hf_engine.generate(sampled(7))
    again = await hf_engine.generate(sampled(7))
    other = await hf_engine.generate(sampled(8))
    assert first.text == again.text
    assert first.output_tokens == again.output_tokens
    assert first.text != other.text


async def test_prompt_too_long_is_refused(hf_engine: HFEngine) -> None:
    long_prompt = TextPrompt("word " * 600)
    assert hf_engine.count_tokens(long_prompt) > 512
    with pytest.raises(PromptTooLong):
        await hf_engine.generate(GenerationRequest("long", long_prompt, Sampling(max_tokens=8)))
    # fits alone, but not with the answer it asks for
    fits = TextPrompt("word " * 480)
    assert hf_engine.count_tokens(fits) < 512
    with pytest.raises(PromptTooLong):
        await hf_engine.generate(GenerationRequest("long2", fits, Sampling(max_tokens=64)))


async def test_render_and_count_without_a_second_bos(hf_engine: HFEngine) -> None:
    judge = ChatPrompt.of(
        [{"role": "user", "content": "Who won?"}, {"role": "assistant", "content": "Winner: team"}],
        continue_final_message=True,
    )
    text = hf_engine.render(judge)
    assert text.endswith("<|im_start|>assistant\nWinner: team")
    assert text.count("<|im_start|>") == 3  # default system message, user, assistant
    # the same text sent raw counts the same tokens: no BOS is added on top of the template's
    assert hf_engine.count_tokens(TextPrompt(text)) == hf_engine.count_tokens(judge)
    assert hf_engine.render(HELLO).endswith("<|im_start|>assistant\n")


async def test_japanese_streams_whole_characters(hf_engine: HFEngine) -> None:
    prompt = ChatPrompt.of([{"role": "user", "content": "日本語で答えてください。富士山について教えてください。"}])
    streamed = await run(hf_engine, GenerationRequest("ja", prompt, Sampling(temperature=0.0, max_tokens=MAX_TOKENS)))
    text = streamed.completion.text
    assert "".join(streamed.deltas) == text
    assert "\ufffd" not in text and all("\ufffd" not in d for d in streamed.deltas)
    assert any(ord(ch) > 0x3000 for ch in text), f"expected Japanese output, got {text!r}"


def test_detokenizer_never_splits_a_character(hf_engine: HFEngine) -> None:
    tokenizer = hf_engine._tokenizer
    text = "富士山は日本一高い山です 🗻 and then some English."
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert len(ids) > len(text.split()), "expected several tokens per character for this text"
    detok = IncrementalDetokenizer(tokenizer, tokenizer("Prompt:", add_special_tokens=False).input_ids)
    pieces = [detok.push(i) for i in ids]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert pieces.count("") > 0  # some tokens were held back until their character was complete


async def test_close_ends_running_and_waiting_requests(base_model) -> None:
    engine = HFEngine(base_model.path, max_model_len=512, max_batch=1)
    await engine.start()
    running = engine.stream(GenerationRequest("running", STORY, Sampling(temperature=0.0, max_tokens=128)))
    first = await anext(running)
    assert isinstance(first, TextDelta)
    waiting = asyncio.create_task(engine.generate(GenerationRequest("waiting", HELLO, Sampling(max_tokens=8))))
    await asyncio.sleep(0)
    await engine.close()
    with pytest.raises(EngineError):
        async for _ in running:
            pass
    with pytest.raises(EngineError):
        await waiting
    with pytest.raises(EngineError):
        await engine.generate(GenerationRequest("late", HELLO))


async def test_adapter_for_another_base_is_refused(hf_engine: HFEngine, adapter_refs, lora_adapters, tmp_path: Path) -> None:
    other = tmp_path / "other-base"
    shutil.copytree(lora_adapters[0], other)
    config = json.loads((other / "adapter_config.json").read_text())
    config["lora_alpha"] = 32  # other weights in effect, so another name
    (other / "adapter_config.json").write_text(json.dumps(config))
    (other / "bonsai_adapter.json").write_text(json.dumps({"base_hash": "0" * 64}))
    ref = inspect_adapter(other)
    with pytest.raises(AdapterError):
        await hf_engine.generate(GenerationRequest("refused", HELLO, Sampling(max_tokens=4), ref))
    # the engine still serves the adapters it has
    ok = await hf_engine.generate(GenerationRequest("ok", HELLO, Sampling(temperature=0.0, max_tokens=2), adapter_refs[0]))
    assert ok.output_tokens == 2
