"""``bonsai model prepare``: make the base model servable (once)."""

from __future__ import annotations

import argparse
import json

from bonsai.cli.common import home_from, progress
from bonsai.model.prepare import prepare_embedded, resolve_base


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="prepare the base model")
    msub = p.add_subparsers(dest="model_command", metavar="ACTION")
    msub.required = True
    prep = msub.add_parser("prepare", help="dequantize the embedded SmolLM2 (or check --base) and save safetensors")
    prep.add_argument("--base", help="a local model folder or a cached hub id instead of the embedded model")
    prep.add_argument("--force", action="store_true", help="prepare the embedded model again")
    prep.add_argument("--json", action="store_true", help="print the result as JSON")
    prep.set_defaults(func=run_prepare)


def run_prepare(args: argparse.Namespace) -> int:
    home = home_from(args)
    with progress("preparing the base model", enabled=not args.json):
        if args.base is None and args.force:
            model = prepare_embedded(home, force=True)
        else:
            model = resolve_base(args.base, home)
    if args.json:
        print(json.dumps({"path": str(model.path), "name": model.name, "content_hash": model.content_hash}))
    else:
        print(f"base model {model.name} ready at {model.path} (hash {model.content_hash[:12]})")
    return 0
