"""Prompt templates with `{text_a}`, `{text_b}` and `{mask}` placeholders.

A text field may carry transforms after a colon, applied in order: ``{text_b:lower_first}`` lower-cases its first
character, ``upper_first`` upper-cases it, ``drop_last`` removes its last character (LM-BFF's ``*sentl_1*``,
``*sentu_0*`` and ``*sent-_0*``); combine them with commas, e.g. ``{text_a:lower_first,drop_last}``.

A template is parsed once into literal and placeholder segments. Rendering substitutes the texts and a mask token
(masked LMs) or stops at the mask (causal LMs, whose prediction position is the end of the prompt).
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field


PLACEHOLDERS = ("text_a", "text_b", "mask")
UNICODE_HINT = "an unpaired surrogate such as '\\ud83d', e.g. from a broken JSON escape or a cut emoji"


def is_valid_unicode(text: str) -> bool:
    """False for strings that cannot be encoded as UTF-8 (unpaired surrogates), which tokenizers reject."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


TEXT_FIELDS = ("text_a", "text_b")
TRANSFORMS = {
    "lower_first": lambda t: t[:1].lower() + t[1:],
    "upper_first": lambda t: t[:1].upper() + t[1:],
    "drop_last": lambda t: t[:-1],
}


@dataclass(frozen=True)
class Template:
    """A parsed prompt template such as ``"{text_a} In summary, it was {mask}."``.

    Literal braces are written ``{{`` and ``}}``, as in `str.format`.
    """

    text: str
    segments: tuple[tuple[str, str], ...] = field(init=False, repr=False, compare=False)
    transforms: tuple[tuple[str, ...], ...] = field(init=False, repr=False, compare=False)  # per segment

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise TypeError(f"template must be a string, got {type(self.text).__name__}")
        if not is_valid_unicode(self.text):
            raise ValueError(f"Template {self.text!r} is not valid Unicode: it contains {UNICODE_HINT}.")
        segments: list[tuple[str, str]] = []
        transforms: list[tuple[str, ...]] = []
        try:
            parsed = list(string.Formatter().parse(self.text))
        except ValueError as err:
            raise ValueError(
                f"Template {self.text!r} does not parse ({err}); write literal braces as '{{{{' and '}}}}'."
            ) from None
        for literal, name, spec, conversion in parsed:
            if literal:
                segments.append(("literal", literal))
                transforms.append(())
            if name is None:
                continue
            if conversion or (spec and name not in TEXT_FIELDS):
                raise ValueError(
                    f"Template {self.text!r}: placeholder {{{name}}} takes no format spec or conversion (text fields "
                    "take only transforms, such as {text_a:lower_first})."
                )
            steps = tuple(spec.split(",")) if spec else ()
            unknown = [t for t in steps if t not in TRANSFORMS]
            if unknown:
                raise ValueError(
                    f"Template {self.text!r}: unknown transform(s) {unknown} of {{{name}}}; "
                    f"the known ones are {', '.join(TRANSFORMS)}."
                )
            if name not in PLACEHOLDERS:
                raise ValueError(
                    f"Template {self.text!r} has unknown placeholder {{{name}}}; "
                    f"the known ones are {', '.join('{' + p + '}' for p in PLACEHOLDERS)}."
                )
            segments.append(("field", name))
            transforms.append(steps)
        names = [value for kind, value in segments if kind == "field"]
        if names.count("mask") != 1:
            raise ValueError(
                f"Template {self.text!r} must contain exactly one {{mask}} (found {names.count('mask')}): it marks "
                "where the label word goes, e.g. '{text_a} In summary, it was {mask}.'"
            )
        if not any(n in TEXT_FIELDS for n in names):
            raise ValueError(f"Template {self.text!r} must contain {{text_a}} (and optionally {{text_b}}).")
        if "text_b" in names and "text_a" not in names:
            raise ValueError(f"Template {self.text!r} uses {{text_b}} without {{text_a}}.")
        object.__setattr__(self, "segments", tuple(segments))
        object.__setattr__(self, "transforms", tuple(transforms))

    @property
    def fields(self) -> tuple[str, ...]:
        """The text fields the template uses, in order of first appearance."""
        seen: list[str] = []
        for kind, value in self.segments:
            if kind == "field" and value in TEXT_FIELDS and value not in seen:
                seen.append(value)
        return tuple(seen)

    @property
    def is_pair(self) -> bool:
        return "text_b" in self.fields

    @property
    def _mask_index(self) -> int:
        return self.segments.index(("field", "mask"))

    @property
    def space_before_mask(self) -> bool:
        """Whether the label word follows a space: decides between 'Ġgreat'/'▁great' and 'great' style tokens."""
        i = self._mask_index
        if i == 0:
            return False
        kind, value = self.segments[i - 1]
        # A text field right before the mask: the user wrote '{text_a}{mask}', so no space. After a newline the
        # word starts a line: no space either.
        return kind == "literal" and value.endswith(" ")

    @property
    def answer_prefix(self) -> str:
        """The literal text between the last text field and `{mask}` (`" It was"` in `"{text_a} It was {mask}."`):
        a chat prompt opens the model's answer with its last line, so the label word still follows it."""
        start = i = self._mask_index
        while start > 0 and self.segments[start - 1][0] == "literal":
            start -= 1
        return "".join(value for _, value in self.segments[start:i])

    @property
    def suffix(self) -> str:
        """Everything after `{mask}` rendered as a string with placeholders, for messages and checks."""
        return "".join(
            value if kind == "literal" else "{" + value + "}" for kind, value in self.segments[self._mask_index + 1 :]
        )

    def check_causal(self) -> None:
        """Raise if a causal LM could not see text the template places after the mask.

        A causal LM predicts the label word from the text before it, so the prompt ends at `{mask}`. Literal text after
        the mask (such as the final '.') is dropped; a text field after the mask is an error, because the model would
        never read it.
        """
        if self._mask_index == 0:
            raise ValueError(
                f"Template {self.text!r} starts with {{mask}}: a causal LM predicts the label word from the text "
                "before it, so put {mask} after the input, e.g. '{text_a} It was {mask}.'"
            )
        after = [value for kind, value in self.segments[self._mask_index + 1 :] if kind == "field"]
        if after:
            raise ValueError(
                f"Template {self.text!r} places {', '.join('{' + a + '}' for a in after)} after {{mask}}: a causal "
                "LM reads left to right and would never see it. Move the text before {mask}; literal text after "
                "{mask} is dropped for causal LMs."
            )

    def render(
        self, text_a: str, text_b: str | None = None, *, mask_token: str | None = None, label_word: str | None = None
    ) -> str:
        """Fill the template.

        With `mask_token` (masked LMs) the mask placeholder becomes that token and the whole template is rendered.
        With `label_word` the mask becomes the word (demonstrations). With neither (causal LMs) the prompt stops at
        the mask and trailing spaces are removed: the label word then starts with its own space.
        """
        values = {"text_a": text_a, "text_b": text_b}
        if self.is_pair and text_b is None:
            raise ValueError(
                f"Template {self.text!r} uses {{text_b}} but no second text was given: pass sentence pairs or "
                "use a single-text template."
            )
        out: list[str] = []
        for (kind, value), steps in zip(self.segments, self.transforms):
            if kind == "literal":
                out.append(value)
            elif value == "mask":
                if mask_token is None and label_word is None:
                    return "".join(out).rstrip(" ")
                out.append(mask_token if mask_token is not None else label_word)
            else:
                text = values[value] or ""
                for step in steps:
                    text = TRANSFORMS[step](text)
                out.append(text)
        return "".join(out)
