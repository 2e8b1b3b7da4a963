"""Pair strategies: ways to turn a persona's stored turns into same-prompt preference pairs.

Each strategy is one module; this registry maps the names users type (``--strategy best-of-n,stance``)
to them, importing a module only when its strategy is asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from bonsai.errors import ConfigError, describe_validation
from training.pairs.base import Engines, Pair, PairContext, Strategy, StrategyParams, TurnSource

#: strategy name -> module holding its ``STRATEGY`` class
STRATEGY_MODULES: Mapping[str, str] = {
    "best-of-n": "training.pairs.best_of_n",
    "stance": "training.pairs.stance",
    "cross-lingual": "training.pairs.cross_lingual",
    "teacher": "training.pairs.teacher",
    "rubric": "training.pairs.rubric",
}


def strategy_names() -> list[str]:
    return list(STRATEGY_MODULES)


def strategy_class(name: str) -> type[Strategy]:
    module = STRATEGY_MODULES.get(name)
    if module is None:
        raise ConfigError(f"unknown pair strategy {name!r}", f"use one of: {', '.join(STRATEGY_MODULES)}")
    return importlib.import_module(module).STRATEGY


def make_strategy(name: str, params: Mapping[str, Any] | None = None) -> Strategy:
    """The strategy ``name`` with ``params`` validated against its parameter model."""
    cls = strategy_class(name)
    try:
        validated = cls.Params.model_validate(dict(params or {}))
    except ValidationError as exc:
        problems = "; ".join(describe_validation(exc, top="params"))
        raise ConfigError(f"invalid parameters for the {name} strategy: {problems}", "see `bonsai data build --help`") from None
    return cls(validated)


def parse_strategy_list(text: str) -> list[str]:
    """``"best-of-n, stance"`` -> ["best-of-n", "stance"], each checked and named once."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ConfigError("no pair strategy given", f"pass --strategy with one or more of: {', '.join(STRATEGY_MODULES)}")
    for name in names:
        strategy_class(name)
    if len(set(names)) != len(names):
        raise ConfigError(f"a strategy is named twice in {text!r}", "name each strategy once")
    return names


__all__ = [
    "STRATEGY_MODULES",
    "Engines",
    "Pair",
    "PairContext",
    "Strategy",
    "StrategyParams",
    "TurnSource",
    "make_strategy",
    "parse_strategy_list",
    "strategy_class",
    "strategy_names",
]
