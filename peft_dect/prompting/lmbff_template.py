"""LM-BFF's template strings (princeton-nlp/LM-BFF, ``src/dataset.py: tokenize_multipart_input``) as peft-dect
`Template`s.

LM-BFF writes variables between asterisks and spaces as ``_``; for example ``*cls**sent_0*_It_was*mask*.*sep+*``.
The conversion, variable by variable:

- ``*cls*`` at the start and ``*sep*``/``*sep+*`` at the end: dropped, the tokenizer adds its own special tokens;
- ``*mask*`` -> ``{mask}`` with one space before it (unless at the very start): LM-BFF always scores the
  space-prefixed label word (``Ġgreat``), which is what peft-dect's verbalizer does after a space, and masked LMs'
  mask tokens (RoBERTa's ``<mask>``, BERT's ``[MASK]``) absorb that space, so the token ids do not change;
- ``*sent_i*`` -> ``{text_a}`` (i = 0) or ``{text_b}`` (i = 1); ``*+sent_i*`` puts a space before it;
  ``*sentl_i*`` lower-cases its first character, ``*sentu_i*`` upper-cases it, ``*sent-_i*`` drops its last
  character (LM-BFF deletes the last character, usually the final punctuation); ``*sentl-_i*`` does both, and
  ``+`` combines with each;
- any other text is literal, with ``_`` meaning a space.

Demonstration templates (``*label_i*``, ``*sent_2*`` and beyond) are not query templates: peft-dect builds
demonstrations itself (`Demonstrations`), so such strings are rejected with an explanation. Special tokens in the
middle of a prompt (``*sep+*`` between sentences) are rejected too: a `Template` is tokenizer-independent text.
"""

from __future__ import annotations

import re

from .template import Template


_SENT = re.compile(r"^(\+)?sent(l|u)?(-)?_(\d+)$")
_FIELDS = ("text_a", "text_b")


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def parse_lmbff_template(template: str) -> str:
    """The peft-dect template string equivalent to an LM-BFF template string; ValueError naming the position."""
    if not isinstance(template, str):
        raise TypeError(f"An LM-BFF template must be a string, got {type(template).__name__}.")
    stars = [i for i, ch in enumerate(template) if ch == "*"]
    if len(stars) % 2:
        raise ValueError(
            f"LM-BFF template {template!r}: the '*' at position {stars[-1]} opens a variable that is never closed "
            "(variables are written between two asterisks, e.g. *mask*)."
        )
    # (position, kind, value): kind 'literal' or 'var'
    parts: list[tuple[int, str, str]] = []
    prev = 0
    for open_at, close_at in zip(stars[::2], stars[1::2]):
        if open_at > prev:
            parts.append((prev, "literal", template[prev:open_at]))
        parts.append((open_at, "var", template[open_at + 1 : close_at]))
        prev = close_at + 1
    if prev < len(template):
        parts.append((prev, "literal", template[prev:]))

    out: list[str] = []
    masks = 0
    for index, (pos, kind, value) in enumerate(parts):
        if kind == "literal":
            out.append(_escape(value.replace("_", " ")))
            continue
        if value == "cls":
            if index != 0:
                raise ValueError(f"LM-BFF template {template!r}: *cls* at position {pos} must be at the start.")
            continue
        if value in ("sep", "sep+"):
            if index != len(parts) - 1:
                raise ValueError(
                    f"LM-BFF template {template!r}: *{value}* at position {pos} is inside the prompt; peft-dect "
                    "templates are tokenizer-independent text, so a separator token can only end the template "
                    "(where the tokenizer adds its own)."
                )
            continue
        if value == "mask":
            masks += 1
            rendered = "".join(out)
            out.append("{mask}" if not rendered or rendered.endswith((" ", "\n")) else " {mask}")
            continue
        match = _SENT.match(value)
        if match:
            space, case, drop, number = match.groups()
            sent = int(number)
            if sent >= len(_FIELDS):
                raise ValueError(
                    f"LM-BFF template {template!r}: *{value}* at position {pos} refers to sentence {sent}; a query "
                    "template has sentences 0 and 1 only. Demonstrations (sentences 2 and up, *label_i*) are added "
                    "by peft-dect's Demonstrations: give the query template."
                )
            steps = {"l": ["lower_first"], "u": ["upper_first"], None: []}[case] + (["drop_last"] if drop else [])
            spec = (":" + ",".join(steps)) if steps else ""
            out.append((" " if space else "") + "{" + _FIELDS[sent] + spec + "}")
            continue
        if value.startswith(("label_", "labelx_")):
            raise ValueError(
                f"LM-BFF template {template!r}: *{value}* at position {pos} is a demonstration's label word; "
                "peft-dect adds demonstrations itself (Demonstrations / DecTConfig(demonstrations=...)): give the "
                "query template without them."
            )
        raise ValueError(
            f"LM-BFF template {template!r}: unknown variable *{value}* at position {pos}; known: *cls*, *mask*, "
            "*sep*, *sep+*, *sent_i*, *+sent_i*, *sent-_i*, *sentl_i*, *+sentl_i*, *sentl-_i*, *sentu_i*, "
            "*+sentu_i* (i = 0 or 1)."
        )
    if masks != 1:
        raise ValueError(f"LM-BFF template {template!r} must contain exactly one *mask* (found {masks}).")
    return "".join(out)


def from_lmbff(template: str) -> Template:
    """A peft-dect `Template` from an LM-BFF template string (see the module docstring for the conversion)."""
    return Template(parse_lmbff_template(template))
