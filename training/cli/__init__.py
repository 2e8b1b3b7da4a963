"""Training's commands (``bonsai data|train|adapters|loop|eval``), registered with ``bonsai`` through the
``bonsai.commands`` entry points in ``pyproject.toml`` (see :mod:`bonsai.cli.plugins`)."""
