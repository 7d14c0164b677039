"""How to undo what a run did, when the vendor offers a way: a mapping's `undo:` names the
compensating request, with values from the original request (its params) and from what the
upstream answered (its `outcome:` identifiers):

    undo:
      action: create_refund
      description: refund the charge
      request:                          # an HTTP request, sent with the operator's credentials
        method: POST
        url: https://api.stripe.com/v1/refunds
        form: {charge: "{charge_id}"}   # or json: {...}; query: {...}
        auth: {env: STRIPE_API_KEY}     # Authorization: Bearer $STRIPE_API_KEY
      aws:                              # or an AWS operation, signed by botocore
        service: ec2
        operation: TerminateInstances
        params: {InstanceIds: "{instance_ids}"}

A value that is exactly one `{name}` keeps its type (a list of instance ids stays a list), so
`form: "{prior}"` sends back every value a write replaced (a mapping's `prior:`,
pipeline/prior.py), nested in bracket notation as the vendor's SDK would.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field
from typing import Any

from airlock.pipeline.redaction import REDACTED
from airlock.pipeline.yaml_source import ConfigError, Node, expect_keys

_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_WHOLE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}\Z")
_REQUEST_KEYS = {"method", "url", "form", "json", "query", "auth"}
_AWS_KEYS = {"service", "operation", "params", "region"}
_AUTH_KEYS = {"env", "scheme", "header"}


@dataclass(frozen=True)
class UndoSpec:
    """A compiled `undo:` with a request: what `airlock undo` sends."""

    action: str
    description: str
    http: dict[str, Any] | None = None  # method, url, form | json, query, auth
    aws: dict[str, Any] | None = None  # service, operation, params, region
    names: frozenset[str] = field(default_factory=frozenset)  # every {name} it uses


@dataclass(frozen=True)
class UndoPlan:
    """The compensating request for one run, rendered."""

    action: str
    description: str
    method: str | None = None
    url: str | None = None
    form: dict[str, Any] | None = None
    json: dict[str, Any] | None = None
    auth: dict[str, str] | None = None
    aws: dict[str, Any] | None = None


class CannotUndo(Exception):
    """Why a run cannot be undone (said as is to the operator)."""


def load_undo_spec(undo: Node, known: set[str]) -> UndoSpec | None:
    """The request part of a mapping's `undo:`; every `{name}` must be a param, a context value
    or an outcome identifier of the mapping, or it is a load error (never a broken undo)."""
    if "request" not in undo and "aws" not in undo:
        return None
    if "request" in undo and "aws" in undo:
        raise ConfigError(undo.at("aws"), "undo has either 'request' or 'aws', not both")
    http = aws = None
    if "request" in undo:
        http = _checked(undo, "request", _REQUEST_KEYS, {"method", "url"})
        if "auth" in http:
            _checked(undo["request"], "auth", _AUTH_KEYS, {"env"})
    else:
        aws = _checked(undo, "aws", _AWS_KEYS, {"service", "operation"})
    for key in ("form", "json"):
        body = (http or {}).get(key)
        if body is not None and not isinstance(body, dict) and not _whole_name(body):
            raise ConfigError(undo["request"].at(key), f"undo '{key}' must be a mapping of "
                              "fields or one {name} whose value is them")  # fmt: skip
    spec = http or aws or {}
    names = frozenset(_names(spec))
    unknown = sorted(names - known)
    if unknown:
        raise ConfigError(
            undo.at("request" if http else "aws"),
            f"undo uses {{{unknown[0]}}}, which is not a param, context value or outcome "
            f"identifier of this mapping (known: {', '.join(sorted(known))})",
        )
    return UndoSpec(str(undo["action"]), str(undo.get("description", "")), http, aws, names)


def _whole_name(value: Any) -> bool:
    return isinstance(value, str) and _WHOLE.match(value) is not None


def _checked(owner: Node, key: str, allowed: set[str], required: set[str]) -> dict[str, Any]:
    value = owner[key]
    if not isinstance(value, Node):
        raise ConfigError(owner.at(key), f"'{key}' must be a mapping")
    expect_keys(value, allowed, required, key)
    return _plain(value)


def _plain(value: Any) -> Any:
    if isinstance(value, Node):
        return {k: _plain(value[k]) for k in value}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _names(value: Any) -> list[str]:
    if isinstance(value, str):
        return _FIELD.findall(value)
    if isinstance(value, dict):
        return [n for v in value.values() for n in _names(v)]
    if isinstance(value, list):
        return [n for v in value for n in _names(v)]
    return []


def plan_undo(spec: UndoSpec | None, values: dict[str, Any]) -> UndoPlan:
    """The compensating request from the run's params, context and outcome identifiers."""
    if spec is None:
        raise CannotUndo("its mapping names no compensating request")
    if "prior" in spec.names:
        _check_prior(values)
    missing = sorted(n for n in spec.names if values.get(n) in (None, "", []))
    if missing:
        raise CannotUndo(
            f"{{{missing[0]}}} is not on record (the run's params and outcome do not have it)"
        )
    if spec.aws is not None:
        return UndoPlan(spec.action, spec.description, aws=_render(spec.aws, values))
    http = _render(spec.http or {}, values)
    return UndoPlan(
        spec.action, spec.description, str(http["method"]).upper(), http["url"],
        http.get("form"), http.get("json"), http.get("auth"),
    )  # fmt: skip


def _check_prior(values: dict[str, Any]) -> None:
    """Setting back needs every value the write replaced, read before it and kept whole."""
    if values.get("prior_error"):
        raise CannotUndo(f"what it replaced was not read: {values['prior_error']}")
    if values.get("prior_unread"):
        raise CannotUndo(
            f"the object read before it has no field {values['prior_unread'][0]!r}, which the "
            "write set: there is no value to set back"
        )
    if REDACTED in json.dumps(values.get("prior")):
        raise CannotUndo("a value it replaced was a secret, redacted when it was recorded")


def form_fields(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Form fields in bracket notation (metadata[tier]=gold, locales[0]=en), as Stripe's SDKs
    encode them; None and an empty list are sent empty, which unsets the field."""
    if isinstance(value, dict):
        return [
            pair
            for key, item in value.items()
            for pair in form_fields(item, f"{prefix}[{key}]" if prefix else str(key))
        ]
    if isinstance(value, list) and value:
        return [
            pair for i, item in enumerate(value) for pair in form_fields(item, f"{prefix}[{i}]")
        ]
    if value is None or value == []:
        return [(prefix, "")]
    if isinstance(value, bool):
        return [(prefix, "true" if value else "false")]
    return [(prefix, str(value))]


def _render(value: Any, values: dict[str, Any]) -> Any:
    if isinstance(value, str):
        whole = _WHOLE.match(value)
        if whole:
            return values.get(whole.group(1))
        return _FIELD.sub(lambda m: str(values.get(m.group(1), "")), value)
    if isinstance(value, dict):
        return {k: _render(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_render(v, values) for v in value]
    return value


# --- the link from an undo to the run it undoes ----------------------------------------------
# `airlock undo` marks its request X-Airlock-Undo-Of: RUN_ID.MAC, the MAC an HMAC with the data
# directory's request key (store/keys.py) over the run and the request as sent: method, host,
# target (path and query) and body. The proxy records the link only when the MAC holds: any
# agent could otherwise mark its own request as an undo, and a run as undone that never was
# (`airlock runs show`), to a reviewer's leniency. The header is not stored (redaction.py).
_UNDO_MAC = re.compile(r"[0-9a-f]{32}")


def undo_link(key: bytes, run_id: str, method: str, host: str, target: str, body: bytes) -> str:
    """The header value `airlock undo` sends on the request that undoes `run_id`."""
    digests = _sha256(target.encode("utf-8", "surrogateescape")), _sha256(body)
    return f"{run_id}.{_undo_mac(key, run_id, method, host, *digests)}"


def linked_run(key: bytes | None, value: str, document: dict[str, Any]) -> str | None:
    """The run an X-Airlock-Undo-Of value names, if its MAC is this key's for this request."""
    run_id, _, mac = value.strip().rpartition(".")
    if key is None or not run_id or not _UNDO_MAC.fullmatch(mac):
        return None
    expected = _undo_mac(
        key, run_id, document["method"], document["host"],
        str(document.get("target_sha256")), str(document.get("body_sha256")),
    )  # fmt: skip
    return run_id if hmac.compare_digest(mac, expected) else None


def _undo_mac(
    key: bytes, run_id: str, method: str, host: str, target_sha256: str, body_sha256: str
) -> str:
    fields = ["airlock-undo-of", run_id, method.upper(), host.lower(), target_sha256, body_sha256]
    return hmac.new(key, json.dumps(fields).encode(), hashlib.sha256).hexdigest()[:32]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
