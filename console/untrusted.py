"""Text that came with a request (an agent's name, a target, params, a tool name, a reason that
quotes them), shown to a person: its characters as they are, never markup, emoji or terminal
control. A target `cus_1[/x]` read as Rich markup ends `airlock pending` and the reviewer console
for every reviewer; an escape sequence in a path would redraw a reviewer's terminal.

`shown(value)` is a Rich `Text` (for tables, Textual widgets and `Text.assemble`); `escaped(value)`
goes inside a markup string; `visible(value)` is the plain string both are made of.
"""

from __future__ import annotations

import re
import unicodedata

from rich.text import Text

# Bidirectional overrides and isolates reorder what follows them on screen (a target read
# backwards); they are format characters, not controls, so named here.
_REORDERING = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def visible(value: object, lines: bool = False) -> str:
    """`value` as text with every control character (ESC, CR, BEL, C1 controls, and newlines
    and tabs unless `lines`) and bidirectional override written as its escape (`\\x1b`)."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():  # the common case, and one pass in C
        return text
    kept = "\n\t" if lines else ""
    return "".join(
        ch
        if ch in kept or (ch not in _REORDERING and unicodedata.category(ch) != "Cc")
        else ch.encode("unicode_escape").decode("ascii")
        for ch in text
    )


def shown(value: object, style: str = "", lines: bool = False) -> Text:
    """A Rich Text of `value`'s characters: a table cell or widget never reads it as markup."""
    return Text(visible(value, lines), style=style)


# What Rich reads as a tag, with the backslashes before it (rich.markup.escape's pattern).
_TAG = re.compile(r"(\\*)(\[[a-z#/@][^[]*?])")


def escaped(value: object) -> str:
    """`value` to put inside a Rich markup string, not directly before a tag: every tag-like
    `[…]` escaped, controls made visible. (rich.markup.escape also doubles a trailing
    backslash, right before a tag and one too many anywhere else.)"""
    return _TAG.sub(lambda m: f"{m[1]}{m[1]}\\{m[2]}", visible(value))
