"""Commands from other packages, registered as plugins are: through the ``bonsai.commands`` entry points.

``bonsai`` is the host: it knows only its own commands (:data:`bonsai.cli.main.SUBCOMMANDS`). Training's
and the TUI's commands name themselves in ``pyproject.toml`` (``[project.entry-points."bonsai.commands"]``,
``name = "module:register"``), and are found here through the installed package metadata, so nothing
in ``bonsai/`` imports ``training`` or ``tui``. The metadata is written when the package is installed:
after an entry point is added to ``pyproject.toml``, reinstall (``make install``) to see it.
"""

from __future__ import annotations

import argparse
from importlib.metadata import EntryPoint, entry_points

GROUP = "bonsai.commands"

#: said after argparse's "invalid choice" when the metadata lists no plugin command at all
STALE_HINT = (
    f"bonsai's training and TUI commands are registered as entry points ({GROUP}), and this environment's "
    "installed metadata lists none: reinstall bonsai (`make install`, or `pip install --no-deps -e .`)"
)


def command_entry_points() -> list[EntryPoint]:
    """The plugin commands the installed metadata lists (by name: setuptools writes them sorted)."""
    return list(entry_points(group=GROUP))


def register_plugins(sub: argparse._SubParsersAction) -> list[str]:
    """Add every plugin command to ``sub``; returns their names (empty: none is registered)."""
    names = []
    for ep in command_entry_points():
        # a plugin's module imports only bonsai at its top: its own heavy imports wait for its run()
        ep.load()(sub)
        names.append(ep.name)
    return names
