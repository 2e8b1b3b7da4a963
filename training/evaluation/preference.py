"""Held-out preference: does the adapter find the chosen answer likelier than the rejected one?

For each pair of a dataset's test split (motions never trained on) the adapter scores both completions
the way ORPO does: the mean log-probability of the completion's tokens given the prompt, turned into
log-odds ``log p - log(1 - p)``. The pair counts as preferred when the chosen completion has the
higher log-odds; the margin is the difference. The reference (the bare base or another version) is
scored on the same pairs by the same model with its adapter switched, so the two are comparable.

Runs on transformers + PEFT (GPU when there is one): it needs each completion's token
log-probabilities under teacher forcing, which a serving engine does not give for an arbitrary text.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bonsai.errors import ConfigError
from bonsai.model.prepare import BaseModel as PreparedBase
from training.evaluation.stats import Estimate, mean_interval, proportion

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PairScore:
    motion: str
    chosen: float  # log-odds of the chosen completion
    rejected: float

    @property
    def margin(self) -> float:
        return self.chosen - self.rejected


@dataclass(frozen=True)
class PreferenceResult:
    accuracy: Estimate
    margin: Estimate
    pairs: int

    def as_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy.as_dict(), "margin": self.margin.as_dict(), "pairs": self.pairs}


def summarize_pairs(scores: Sequence[PairScore]) -> PreferenceResult:
    wins = sum(1.0 if s.margin > 0 else 0.5 if s.margin == 0 else 0.0 for s in scores)
    return PreferenceResult(proportion(wins, len(scores)), mean_interval([s.margin for s in scores]), len(scores))


def log_odds(mean_logprob: float) -> float:
    """ORPO's odds of a completion from its mean token log-probability (clamped away from p = 1)."""
    lp = min(mean_logprob, -1e-6)
    return lp - math.log1p(-math.exp(lp))


def _texts(row: dict[str, Any], tok: Any, fmt: str) -> tuple[str, str, str]:
    """(prompt text, chosen completion, rejected completion) as the trainer tokenizes them."""
    if fmt == "alpaca":
        eos = tok.eos_token or ""
        return row["prompt"], row["chosen"] + eos, row["rejected"] + eos
    prompt = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)

    def completion(messages: list[dict[str, str]]) -> str:
        full = tok.apply_chat_template(list(row["prompt"]) + list(messages), tokenize=False)
        if full.startswith(prompt):
            return full[len(prompt):]
        return messages[0]["content"] + (tok.eos_token or "")

    return prompt, completion(row["chosen"]), completion(row["rejected"])


def _mean_logprob(model: Any, tok: Any, prompt: str, completion: str, *, max_length: int, device: str) -> float:
    import torch

    p_ids = tok(prompt, add_special_tokens=False).input_ids
    c_ids = tok(completion, add_special_tokens=False).input_ids
    if not c_ids:
        raise ConfigError("a held-out pair has an empty completion", "rebuild the dataset")
    ids = (p_ids + c_ids)[-max_length:]
    n_completion = min(len(c_ids), len(ids) - 1)
    x = torch.tensor([ids], device=device)
    with torch.no_grad():
        logits = model(input_ids=x).logits[0, :-1].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    targets = x[0, 1:]
    token_lp = logprobs.gather(1, targets.unsqueeze(1)).squeeze(1)[-n_completion:]
    return float(token_lp.mean())


def load_test_split(dataset: Path) -> tuple[list[dict[str, Any]], str]:
    from datasets import load_from_disk

    from training.card import read_card

    card = read_card(dataset)
    try:
        dd = load_from_disk(str(dataset))
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"cannot read the dataset at {dataset}: {exc}", "point --dataset at a folder written by `bonsai data build`") from None
    if "test" not in dd:
        return [], card.format
    return [dict(r) for r in dd["test"]], card.format


def score_preferences(
    base: PreparedBase, rows: Sequence[dict[str, Any]], fmt: str, adapters: dict[str, Path | None], *, max_length: int = 1024
) -> dict[str, list[PairScore]]:
    """Every pair scored under each named adapter (None: the bare base), one model load for all."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from training.train import training_device, training_tokenizer

    device = training_device()
    tok = training_tokenizer(base.path, base.chat_template)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model: Any = AutoModelForCausalLM.from_pretrained(str(base.path), dtype=dtype).to(device)
    loaded: list[str] = []
    for name, path in adapters.items():
        if path is None:
            continue
        if not loaded:
            model = PeftModel.from_pretrained(model, str(path), adapter_name=name)
        else:
            model.load_adapter(str(path), adapter_name=name)
        loaded.append(name)
    model.eval()
    texts = [_texts(r, tok, fmt) for r in rows]
    out: dict[str, list[PairScore]] = {}
    for name, path in adapters.items():
        scores = []
        for row, (prompt, chosen, rejected) in zip(rows, texts, strict=True):
            if path is None and loaded:
                with model.disable_adapter():
                    c = _mean_logprob(model, tok, prompt, chosen, max_length=max_length, device=device)
                    r = _mean_logprob(model, tok, prompt, rejected, max_length=max_length, device=device)
            else:
                if loaded:
                    model.set_adapter(name)
                c = _mean_logprob(model, tok, prompt, chosen, max_length=max_length, device=device)
                r = _mean_logprob(model, tok, prompt, rejected, max_length=max_length, device=device)
            scores.append(PairScore(str(row.get("motion", "")), log_odds(c), log_odds(r)))
        out[name] = scores
    return out
