"""The chat template a base renders debates with: found in the model folder, or given as ``--chat-template FILE``.

Every prompt bonsai sends is a conversation (moderator, debaters, judge) rendered by the base's chat
template. A base model (pretrained, not instruction-tuned) usually has none, and transformers only
fails when the first prompt is rendered, long after the engine started and the debate was stored.
So the template is checked before anything starts (:func:`require_chat_template`), and a user's own
template is validated once (:func:`read_chat_template`) and then travels with the base
(``BaseModel.chat_template``): every tokenizer bonsai loads for rendering comes from
:func:`load_tokenizer`, which puts it in place.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from bonsai.errors import ConfigError, ModelError

#: where transformers keeps a tokenizer's chat template (5.x writes the first; older releases the key)
TEMPLATE_FILE = "chat_template.jinja"
FLAG = "--chat-template"

#: a conversation shaped like bonsai's prompts: a system message, turns, and an open assistant turn
_PROBE = [
    {"role": "system", "content": "SYSTEM-PROBE"},
    {"role": "user", "content": "USER-PROBE"},
    {"role": "assistant", "content": "ASSISTANT-PROBE"},
    {"role": "user", "content": "LAST-PROBE"},
]


def has_chat_template(model_dir: Path) -> bool:
    """Whether the tokenizer saved in ``model_dir`` carries a chat template (read from its files, without
    loading it: the same places transformers looks)."""
    if (model_dir / TEMPLATE_FILE).is_file():
        return True
    for name in ("tokenizer_config.json", "chat_template.json"):
        try:
            data = json.loads((model_dir / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("chat_template"):
            return True
    return False


def template_hash(text: str | None) -> str | None:
    """Short identity of a template: a resident engine started with another one is not reused."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16] if text is not None else None


def check_chat_template(text: str, where: str) -> None:
    """Render a debate-shaped conversation with ``text`` (as transformers will), both ways bonsai renders:
    with a generation prompt, and continuing a final assistant message (the judge's verdict prefix)."""
    import jinja2
    from transformers.utils.chat_template_utils import render_jinja_template

    hint = "write a Jinja chat template over `messages` (role, content) and `add_generation_prompt`, e.g. examples/chat-templates/gemma.jinja"
    specials = {"bos_token": "", "eos_token": "", "pad_token": "", "unk_token": ""}
    verdict_prefix = [*_PROBE[:2], {"role": "assistant", "content": "{\"winner\": \""}]
    try:
        rendered = render_jinja_template(conversations=[_PROBE], chat_template=text, add_generation_prompt=True, **specials)[0][0]
        missing = [m["content"] for m in _PROBE if m["content"] not in rendered]
        if not missing:
            render_jinja_template(conversations=[verdict_prefix], chat_template=text, continue_final_message=True, **specials)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"{where} is not a valid Jinja template: line {exc.lineno}: {exc.message}", hint) from None
    except Exception as exc:  # the template's own raise_exception(), undefined names, type errors
        raise ConfigError(f"{where} cannot render a debate's messages: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", hint) from None
    if missing:
        raise ConfigError(f"{where} leaves out message content ({', '.join(missing)} not in its output)", "the template must write every message's content")


def read_chat_template(path: Path) -> str:
    """The template in ``path``, checked (see :func:`check_chat_template`)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"{FLAG} {p}: no such file", "pass a Jinja chat template file, e.g. examples/chat-templates/gemma.jinja")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{FLAG} {p} cannot be read as UTF-8 text: {exc}", "pass a Jinja chat template file") from None
    if not text.strip():
        raise ConfigError(f"{FLAG} {p} is empty", "pass a Jinja chat template file")
    check_chat_template(text, f"{FLAG} {p}")
    return text


def require_chat_template(model_dir: Path, given: str | None, *, what: str = "base model", hint: str | None = None) -> None:
    """Refuse a base that cannot render a conversation, before any engine starts or anything is stored."""
    if given is not None or has_chat_template(model_dir):
        return
    raise ModelError(
        f"the {what} at {model_dir} has no chat template: its tokenizer cannot render a debate's messages "
        "(a base model, not an instruction-tuned one?)",
        hint or f"pass {FLAG} FILE with a Jinja chat template for it (e.g. examples/chat-templates/gemma.jinja), "
        "or prepare it with one: bonsai model prepare --gguf FILE --name NAME --chat-template FILE",
    )


def load_tokenizer(model_dir: Path, chat_template: str | None = None) -> Any:
    """The base's transformers tokenizer, rendering with ``chat_template`` when one was given."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer
