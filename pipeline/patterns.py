"""Regular expressions that run on what agents send, in time linear in its length (RE2).

Python's `re` backtracks: a pattern such as `(a+)+$`, or even `Credential=[^/]+/…` on a header
of repeated `Credential=`, takes time that grows with the square (or the exponential) of the
text. Run on a request, in the decider that every request waits for, one such text would stall
every agent's requests behind it (measured before this module: 1.1 s for a 176 KB header
through a shipped mapping's regex, 2 s for 40 KB of body through the redactor). RE2 (google-re2,
Google's maintained binding) matches in linear time, so the patterns security teams write
(mappings' and policies' `regex`) and the maintained secret detectors run through it.

RE2's syntax is Python's without backreferences and lookarounds; `\\d`, `\\w`, `\\s` and `\\b`
are ASCII; `$` matches only at the very end (Python's also before a final newline).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import re2

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # an error is raised to the caller, who says where it came from
# Text Python holds but UTF-8 cannot carry (mitmproxy's escapes for undecodable bytes): matched
# as U+FFFD, one code point for one, so that spans still index the original text.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_UNSUPPORTED = ("invalid perl operator", "invalid escape sequence", "invalid repetition size")


class PatternError(ValueError):
    """A pattern RE2 does not take, said in terms of what the writer can change."""


@dataclass(frozen=True, slots=True)
class LinearPattern:
    text: str
    regexp: Any  # re2._Regexp (the binding ships no type information)

    @property
    def groups(self) -> int:
        return int(self.regexp.groups)

    def found_in(self, subject: str) -> bool:
        return self.regexp.search(_matchable(subject)) is not None

    def search(self, subject: str) -> Found | None:
        """The first match, as `re`'s search finds it."""
        match = self.regexp.search(_matchable(subject))
        return None if match is None else Found(subject, match)

    def replace_all(self, subject: str, replacement: str | Callable[[Found], str]) -> str:
        """`subject` with every non-empty match replaced by `replacement` (taken literally), or
        by what it returns for the match."""
        parts: list[str] = []
        last = 0
        for match in self.regexp.finditer(_matchable(subject)):
            start, end = match.span()
            if end > start:
                found = (
                    replacement
                    if isinstance(replacement, str)
                    else replacement(Found(subject, match))
                )
                parts += (subject[last:start], found)
                last = end
        if not parts:
            return subject
        parts.append(subject[last:])
        return "".join(parts)


@dataclass(frozen=True, slots=True)
class Found:
    subject: str
    match: Any

    def group(self, number: int = 0) -> str | None:
        """The text of a group (0: the whole match); None for one that took no part."""
        start, end = self.match.span(number)
        return None if start < 0 else self.subject[start:end]


def linear(pattern: str) -> LinearPattern:
    """Compile for linear-time matching; PatternError says why RE2 refuses it."""
    try:
        return LinearPattern(pattern, re2.compile(pattern, _OPTIONS))
    except re2.error as e:
        reason = e.args[0].decode() if e.args and isinstance(e.args[0], bytes) else str(e)
        hint = ""
        if reason.startswith(_UNSUPPORTED):
            hint = (" (Airlock matches in linear time, with RE2's syntax: no backreferences, "
                    "lookarounds or repetitions over 1000)")  # fmt: skip
        raise PatternError(f"{reason}{hint}") from None


def _matchable(subject: str) -> str:
    if subject.isascii():
        return subject
    try:
        subject.encode()
    except UnicodeEncodeError:
        return _LONE_SURROGATE.sub("\ufffd", subject)
    return subject
