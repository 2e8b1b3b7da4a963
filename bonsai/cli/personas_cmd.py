"""``bonsai personas list|show|validate``."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from bonsai.registry import resolve_persona_adapter
from bonsai.cli.common import home_from, json_text
from bonsai.errors import BonsaiError
from bonsai.personas import PersonaBook, default_personas_dir, load_persona


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("personas", help="list, show and validate personas")
    psub = p.add_subparsers(dest="personas_command", metavar="ACTION")
    psub.required = True
    for name, helptext in (("list", "a table of every persona"), ("show", "one persona in full"), ("validate", "check persona files")):
        sp = psub.add_parser(name, help=helptext)
        sp.add_argument("--personas-dir", type=Path, default=None, help="folder of persona YAML files (default: the shipped personas)")
        sp.add_argument("--json", action="store_true", help="JSON output")
        if name == "show":
            sp.add_argument("name")
        if name == "validate":
            sp.add_argument("files", nargs="*", type=Path, help="files to check (default: the whole folder)")
        sp.set_defaults(func={"list": run_list, "show": run_show, "validate": run_validate}[name])


def run_list(args: argparse.Namespace) -> int:
    book = PersonaBook.load(args.personas_dir)
    home = home_from(args)
    rows = []
    for p in book:
        try:
            adapter = resolve_persona_adapter(p, home)
            shown = str(adapter) if adapter else ("base" if p.adapter is None else "base (none trained yet)")
        except BonsaiError as exc:  # one persona's missing adapter must not hide the whole list
            shown = f"error: {exc.message}"
        rows.append({"name": p.name, "team": p.team.value, "role": p.role.value, "style": p.style.value, "language": p.language,
                     "reasoning": p.reasoning.value, "adapter": shown})
    if args.json:
        print(json_text(rows))
        return 0
    table = Table(title=f"personas in {book.source}")
    for col in ("name", "team", "role", "style", "language", "reasoning", "adapter"):
        table.add_column(col)
    for r in rows:
        table.add_row(*(r[c] for c in ("name", "team", "role", "style", "language", "reasoning", "adapter")))
    Console().print(table)
    return 0


def run_show(args: argparse.Namespace) -> int:
    from bonsai.rubric import rubric_for

    persona = PersonaBook.load(args.personas_dir).get(args.name)
    data = persona.model_dump(mode="json")
    rubric = rubric_for(persona)
    # every check with its defaults filled in (its name, the format it checks), not the YAML's nulls
    data["rubric"] = rubric.describe() if rubric is not None else None
    if args.json:
        print(json_text(data))
    else:
        print(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), end="")
    return 0


def run_validate(args: argparse.Namespace) -> int:
    files = args.files or sorted((args.personas_dir or default_personas_dir()).glob("*.y*ml"))
    file_errors: list[str] = []
    for f in files:
        try:
            load_persona(f)
        except BonsaiError as exc:
            file_errors.append(str(exc))
    # Folder-level problems (missing folder, a name defined twice) are not one file's fault: keep
    # them out of the per-file count, which would otherwise go negative or blame a valid file.
    folder_errors: list[str] = []
    if not args.files and not file_errors:
        try:
            PersonaBook.load(args.personas_dir)
        except BonsaiError as exc:
            folder_errors.append(str(exc))
    errors = file_errors + folder_errors
    if args.json:
        print(json_text({"checked": len(files), "errors": errors}))
    else:
        for e in errors:
            print(f"error: {e}")
        print(f"{len(files) - len(file_errors)}/{len(files)} persona files valid")
    return 1 if errors else 0
