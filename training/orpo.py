"""The one module that imports ``trl.experimental.orpo``.

TRL moved ORPO to its experimental namespace, where the API may change between minor releases; keeping
the import here means a move touches one line, and the rest of ``training`` only sees these names.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    # importing trl.experimental warns that the API is experimental: we know, and pin trl
    warnings.simplefilter("ignore")
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

__all__ = ["ORPOConfig", "ORPOTrainer"]
