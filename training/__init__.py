"""Training: preference data from stored debates, adapters trained on it, gated and promoted.

This package is the only place that imports ``trl``; ``bonsai`` itself never needs it to run debates.
Pair strategies live in :mod:`training.pairs`, datasets and their cards in :mod:`training.dataset` and
:mod:`training.card`.
"""
