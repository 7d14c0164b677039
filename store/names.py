"""Names compared as a person reads them, not as bytes: reviewer and agent identities.

`alice-bot` spelt with U+2010 HYPHEN, with a zero-width space after the hyphen, or with a
fullwidth `a` (U+FF41) reads as `alice-bot`. A reviewer must not approve their own agent's
request under such a name, and a configuration must not list two identities a person cannot
tell apart.

The key: NFKC (compatibility forms such as fullwidth letters), case-folded, invisible and
combining characters removed, then each character replaced by one prototype of its group in
Unicode's confusables data (TR39's skeleton idea), taken from the maintained
confusable-homoglyphs package rather than a hand-made table.
"""

from __future__ import annotations

import json
import unicodedata
from functools import cache
from importlib.resources import files

_DROPPED = frozenset({"Cf", "Cc", "Cs", "Co", "Cn", "Mn", "Me", "Zs", "Zl", "Zp"})


def name_key(name: str) -> str:
    """Equal for names a person cannot tell apart."""
    folded = unicodedata.normalize("NFKC", name).casefold()
    visible = (
        c for c in unicodedata.normalize("NFD", folded) if unicodedata.category(c) not in _DROPPED
    )
    prototypes = _prototypes()
    return "".join(prototypes.get(c, c) for c in visible)


@cache
def _prototypes() -> dict[str, str]:
    """Each confusable character → the prototype of its group: ASCII first, then the lowest
    code point, case-folded. Loaded once per process (~10,000 characters)."""
    data = json.loads(files("confusable_homoglyphs").joinpath("confusables.json").read_text())
    prototypes: dict[str, str] = {}
    for char, homoglyphs in data.items():
        if len(char) != 1:
            continue
        # Right-to-left characters come wrapped in LEFT-TO-RIGHT MARKs; sequences are skipped.
        members = {char} | {c for h in homoglyphs if len(c := h["c"].strip("\u200e")) == 1}
        prototype = min(members, key=lambda c: (not c.isascii(), ord(c))).casefold()
        if prototype != char:
            prototypes[char] = prototype
    return prototypes
