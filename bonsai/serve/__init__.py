"""``bonsai serve`` and resident engines: a vLLM server for the base and every persona's adapter.

Above the engine: it resolves personas' adapters through :mod:`bonsai.registry`, which the engine
itself never does.
"""
