"""Host name globs, shared by mappings and routes: `*` is one DNS label, `**` one or more."""

from __future__ import annotations

import re
from functools import cache


@cache
def host_glob_regex(glob: str) -> re.Pattern[str]:
    """`*.example.com`, `ec2.*.amazonaws.com`, `**.example.com`; `api-*.x.io` stays in a label."""
    parts = []
    for label in glob.lower().split("."):
        if label == "**":
            parts.append(r"[^.]+(?:\.[^.]+)*")
        elif label == "*":
            parts.append(r"[^.]+")
        else:
            parts.append("[^.]*".join(re.escape(piece) for piece in label.split("*")))
    return re.compile(r"\.".join(parts) + r"\Z")
