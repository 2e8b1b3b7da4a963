"""``bonsai eval``: measurable evidence that a regenerated adapter is better (see :mod:`training.evaluation.run`)."""
