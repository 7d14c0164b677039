"""Values a held request's record hides: the redactor keeps a secret out of the store, and with
it any text a secret's pattern caught (`DELETE FROM sessions WHERE session_id=[REDACTED]`, where
the hidden text was `session_id`). The reviewer cannot see them, so every view of the request
says how many there are, with `hidden_warning`.
"""

from __future__ import annotations

import re
from typing import Any

from airlock.pipeline.redaction import REDACTED, is_secret_name
from airlock.pipeline.sensitive import PATH_NOT_STORED, UNPARSED

# What redaction leaves in place of a value (pipeline/redaction.py, pipeline/sensitive.py): the
# marker, a card number but its last four digits, a body or path the store does not keep.
_MARKERS = re.compile(
    "|".join([re.escape(REDACTED), r"\[CARD …\d{4}\]", re.escape(UNPARSED),
              re.escape(PATH_NOT_STORED)])
)  # fmt: skip


def hidden_values(request: dict[str, Any] | None, *values: Any) -> int:
    """How many values redaction hid in a held request: in its stored request (a credential
    header, hidden on every request and no part of what it does, left out), or else in `values`
    (its params, target, context) when they hide more; they mostly repeat the request's."""
    request = dict(request or {})
    headers = request.pop("headers", None) or {}
    in_request = _count(request) + sum(
        _count(value) for name, value in headers.items() if not is_secret_name(str(name))
    )
    return max(in_request, sum(_count(value) for value in values))


def hidden_warning(request: dict[str, Any] | None, *values: Any) -> str:
    """The warning a view of the request shows, or "" when nothing is hidden."""
    count = hidden_values(request, *values)
    if not count:
        return ""
    if count == 1:
        return "⚠ 1 value hidden by redaction — Airlock cannot show it; deny if it could matter"
    return (
        f"⚠ {count} values hidden by redaction — Airlock cannot show them; "
        "deny if they could matter"
    )


def _count(value: Any) -> int:
    if isinstance(value, str):
        return len(_MARKERS.findall(value))
    if isinstance(value, dict):
        return sum(_count(key) + _count(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return sum(_count(item) for item in value)
    return 0
