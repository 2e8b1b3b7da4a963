"""``bonsai model prepare``: make the base model servable (once)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bonsai.cli.common import home_from, progress
from bonsai.errors import ConfigError
from bonsai.model.chat_template import has_chat_template, read_chat_template, require_chat_template
from bonsai.model.prepare import prepare_embedded, prepare_gguf, resolve_base


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="prepare the base model")
    msub = p.add_subparsers(dest="model_command", metavar="ACTION")
    msub.required = True
    prep = msub.add_parser(
        "prepare", help="dequantize the embedded SmolLM2 (or a --gguf FILE, or check --base) and save safetensors",
        description="Dequantize the embedded SmolLM2 GGUF, or any GGUF file transformers reads (--gguf FILE --name NAME, "
                    "then used as --base NAME), into $BONSAI_HOME/models; or check a --base folder.",
    )
    prep.add_argument("--base", help="a local model folder or a cached hub id instead of the embedded model")
    prep.add_argument("--gguf", type=Path, metavar="FILE", help="prepare this GGUF file instead of the embedded model (needs --name)")
    prep.add_argument("--name", help="the prepared model's name with --gguf: its folder under $BONSAI_HOME/models, and what --base takes")
    prep.add_argument(
        "--chat-template", type=Path, metavar="FILE",
        help="Jinja chat template: with --gguf, saved as the model's own (for a base model that has none); with --base, checked",
    )
    prep.add_argument("--force", action="store_true", help="prepare the embedded (or --gguf) model again")
    prep.add_argument("--json", action="store_true", help="print the result as JSON")
    prep.set_defaults(func=run_prepare)


def run_prepare(args: argparse.Namespace) -> int:
    if args.gguf is not None and args.base is not None:
        raise ConfigError("--gguf and --base do not go together", "--gguf FILE --name NAME prepares a GGUF; --base DIR checks a folder")
    if (args.gguf is None) != (args.name is None):
        raise ConfigError("--gguf FILE and --name NAME go together", "for example: bonsai model prepare --gguf gemma.gguf --name gemma3-270m")
    # read (and checked) before anything is dequantized or written
    template = read_chat_template(args.chat_template) if args.chat_template is not None else None
    home = home_from(args)
    with progress("preparing the base model", enabled=not args.json):
        if args.gguf is not None:
            model = prepare_gguf(args.gguf, home, args.name, force=args.force, chat_template=template,
                                 chat_template_source=str(args.chat_template.expanduser().resolve()) if template else None)
        elif args.base is None and args.force:
            model = prepare_embedded(home, force=True)
        else:
            model = resolve_base(args.base, home)
            require_chat_template(model.path, template)
    templated = template is not None or has_chat_template(model.path)
    if args.json:
        print(json.dumps({"path": str(model.path), "name": model.name, "content_hash": model.content_hash, "chat_template": templated}))
    else:
        print(f"base model {model.name} ready at {model.path} (hash {model.content_hash[:12]})")
        if args.gguf is not None and not templated:
            print("it has no chat template: pass --chat-template FILE to the commands that use it (or prepare it again with one, --force)")
    return 0
