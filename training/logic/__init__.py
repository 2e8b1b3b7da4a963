"""Logic problems with checkable answers, the rewards GRPO trains on, and held-out accuracy.

``problems`` generates arithmetic word problems, syllogisms and orderings in en/ja/zh from a seed;
``answers`` normalises and checks an answer; ``rewards`` scores completions (format + correctness);
``evaluate`` measures an adapter's held-out correctness; ``grpo`` trains a logic teacher with TRL.
Everything but ``grpo`` and ``evaluate`` is pure Python.
"""
