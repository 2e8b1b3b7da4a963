"""Make bonsai's plugin commands (``bonsai.commands`` entry points: train, loop, eval, tui...) visible to a
checkout run from ``PYTHONPATH`` without installing it, as on the GPU machine (no build backend, no
network): writes a minimal ``bonsai-VERSION.dist-info`` with the entry points of ``pyproject.toml``
into a folder on ``sys.path``.

    python3 bench/register_entry_points.py /tmp/site
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def main(site: Path) -> Path:
    project = tomllib.loads(Path("pyproject.toml").read_text(encoding="utf-8"))["project"]
    info = site / f"bonsai-{project['version']}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: bonsai\nVersion: {project['version']}\n", encoding="utf-8")
    lines: list[str] = []
    for group, items in project.get("entry-points", {}).items():
        lines += [f"[{group}]", *(f"{name} = {target}" for name, target in items.items()), ""]
    (info / "entry_points.txt").write_text("\n".join(lines), encoding="utf-8")
    return info


if __name__ == "__main__":
    print(main(Path(sys.argv[1])))
