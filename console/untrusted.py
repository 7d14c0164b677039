"""Text that came with a request (an agent's name, a target, params, a tool name, a reason that
quotes them), shown to a person: its characters as they are, never markup, emoji or terminal
control. A target `cus_1[/x]` read as Rich markup ends `airlock pending` and the reviewer console
for every reviewer; an escape sequence in a path would redraw a reviewer's terminal.

`shown(value)` is a Rich `Text` (for tables, Textual widgets and `Text.assemble`); `escaped(value)`
goes inside a markup string; `visible(value)` is the plain string both are made of.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

from rich.text import Text

# What is written as its escape: controls (Cc), format characters (Cf: bidirectional overrides
# that reorder what follows, zero-width spaces and joiners, the BOM, tag characters, the soft
# hyphen), line and paragraph separators, and lone surrogates. Each would show a text other than
# the one sent: `dry_run\u200b` as `dry_run`, a target read backwards, a line of its own.
_UNSEEN = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def visible(value: object, lines: bool = False) -> str:
    """`value` as text with every control character (ESC, CR, BEL, C1 controls, and newlines
    and tabs unless `lines`), invisible format character and bidirectional override written as
    its escape (`\\x1b`, `\\u200b`)."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():  # the common case, and one pass in C
        return text
    kept = "\n\t" if lines else ""
    return "".join(
        ch
        if ch in kept or unicodedata.category(ch) not in _UNSEEN
        else ch.encode("unicode_escape", "backslashreplace").decode("ascii")
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


def cut(text: str, limit: int) -> str:
    """`text` up to `limit` characters, a cut ending in a marker that says how much is not
    shown: a reviewer never takes the start of a body for all of it."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [{len(text) - limit} more characters]"


def compact(value: object, limit: int = 300) -> str:
    """A param's value on one line: a text or number as it is, an object or list as compact
    JSON; controls and invisible characters escaped, cut at `limit` with a marker."""
    if isinstance(value, dict | list | tuple):
        value = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    return cut(visible(value), limit)


def params_text(params: dict[str, Any], limit: int = 300) -> str:
    """`amount=500 metadata={"to":"acct_1"}`: every param on one line, each value as `compact`
    writes it (cut at `limit`)."""
    return " ".join(f"{visible(name)}={compact(value, limit)}" for name, value in params.items())


# The characters that would make a query's fields read otherwise: a `&` or `=` inside a value,
# a `+` read as a space; written as the percent escapes that send them.
_QUERY_SYNTAX = str.maketrans({ch: f"%{ord(ch):02X}" for ch in "%&=#+ "})


def query_text(query: object) -> str:
    """A stored query (`{"amount": ["9900000"]}`, redacted) as the reviewer reads a URL's:
    `?amount=9900000`, each field as sent, its separators unambiguous; "" for none."""
    if not query or not isinstance(query, dict):
        return ""
    fields = []
    for name, values in query.items():
        for value in values if isinstance(values, list) else [values]:
            fields.append(
                f"{str(name).translate(_QUERY_SYNTAX)}={str(value).translate(_QUERY_SYNTAX)}"
            )
    return visible("?" + "&".join(fields))
