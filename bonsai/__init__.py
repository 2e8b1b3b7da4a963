"""bonsai: LLM debates whose debaters learn."""

__version__ = "0.1.0"
