"""What a write replaces: a mapping's `prior:` names the read that shows the object before the
write is forwarded, so that its undo can set back what the write changed:

    prior:
      url: "https://api.stripe.com/v1/customers/{id}"   # GET, with the write's own credentials
      headers: [authorization, stripe-account]          # sent as the write sent them
      ignore: [expand]                                   # request fields that change nothing

Of the object read, only the values at the fields the request sets are kept (redacted as any
record), under the same nesting: `metadata[tier]=gold` keeps `{"metadata": {"tier": old}}`.
A field the object does not have cannot be set back; it is named, and the undo refuses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from airlock.pipeline.yaml_source import ConfigError, Node, expect_keys

_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_KEYS = {"url", "headers", "ignore"}
DEFAULT_HEADERS = ("authorization",)


@dataclass(frozen=True)
class PriorSpec:
    url: str  # with {param} fields
    headers: tuple[str, ...] = DEFAULT_HEADERS  # lower-case names copied from the write
    ignore: frozenset[str] = frozenset()  # top-level request fields that are not changes


@dataclass(frozen=True)
class Prior:
    """The values a write replaced, and the fields it set that the read did not show."""

    values: dict[str, Any]
    unread: tuple[str, ...] = ()


def load_prior_spec(node: Node, known: set[str]) -> PriorSpec:
    expect_keys(node, _KEYS, {"url"}, "prior")
    url = node["url"]
    if not isinstance(url, str) or not url.startswith(("https://", "http://")):
        raise ConfigError(node.at("url"), "prior 'url' must be an http(s) URL template")
    unknown = sorted(set(_FIELD.findall(url)) - known)
    if unknown:
        raise ConfigError(
            node.at("url"),
            f"prior url uses {{{unknown[0]}}}, which is not a param or path capture of this "
            f"mapping (known: {', '.join(sorted(known))})",
        )
    return PriorSpec(
        url, _names(node, "headers") or DEFAULT_HEADERS, frozenset(_names(node, "ignore"))
    )


def _names(node: Node, key: str) -> tuple[str, ...]:
    value = node.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(node.at(key), f"prior {key!r} must be a list of names")
    return tuple(v.lower() if key == "headers" else v for v in value)


def prior_url(spec: PriorSpec, params: dict[str, Any]) -> str | None:
    """The read's URL for this write, or None when a field it needs is not in the request."""
    missing = [n for n in _FIELD.findall(spec.url) if params.get(n) in (None, "")]
    if missing:
        return None
    return _FIELD.sub(lambda m: str(params[m.group(1)]), spec.url)


def replaced_values(spec: PriorSpec, changes: Any, before: Any) -> Prior:
    """The object's values (`before`) at each field the request body (`changes`) sets."""
    if not isinstance(changes, dict):
        return Prior({}, ("(body)",)) if changes else Prior({})
    fields = {k: v for k, v in changes.items() if k not in spec.ignore}
    unread: list[str] = []
    values = _at_fields(fields, before if isinstance(before, dict) else {}, "", unread)
    return Prior(values, tuple(unread))


def _at_fields(
    changes: dict[str, Any], before: dict[str, Any], prefix: str, unread: list[str]
) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for name, change in changes.items():
        if name not in before and not prefix:
            unread.append(name)  # the object has no such field: nothing to set back
            continue
        old = before.get(name)
        if isinstance(change, dict) and (old is None or isinstance(old, dict)):
            kept[name] = _at_fields(change, old or {}, f"{prefix}{name}.", unread)
        else:
            kept[name] = old  # a scalar, or a list replaced whole
    return kept
