"""What an upstream's answer says was done: the response as a document that a mapping's
`outcome:` specs read (`$.response.status`, `$.response.headers`, `$.response.body`, parsed as
request bodies are: JSON, forms, XML), for the identifiers a run's evidence and its undo need
(the charge id, the created instance ids, the message ts)."""

from __future__ import annotations

from typing import Any

from airlock.pipeline.document import (
    MAX_PARSED_BODY,
    Document,
    Unreadable,
    decoded_body,
    fold_headers,
    parse_body,
)
from airlock.pipeline.mappings import Mapping

SUCCESS = range(200, 300)


def response_document(status: int, headers: dict[str, str], raw: bytes) -> Document:
    body = None
    if len(raw) <= MAX_PARSED_BODY:  # larger answers are not read for identifiers
        # An answer's repeated key is the upstream's own: read, not refused.
        body = parse_body(headers.get("content-type", ""), raw, strict=False)[0]
    lowered = {name.lower(): value for name, value in headers.items()}
    return {"response": {"status": status, "headers": lowered, "body": body}}


def outcome_ids(
    mapping: Mapping | None, status: int, headers: dict[str, str], raw: bytes
) -> dict[str, Any] | None:
    """The identifiers a successful answer returned, by the run's mapping; None when there is
    nothing to read (no `outcome:`, an error status)."""
    if mapping is None or not mapping.outcome or status not in SUCCESS:
        return None
    found = mapping.outcome_of(response_document(status, headers, raw))
    return found or None


def answer_ids(
    mapping: Mapping | None, status: int, fields: list[tuple[bytes, bytes]], raw: bytes
) -> dict[str, Any] | None:
    """outcome_ids of an answer as received: header fields as bytes, the body with its
    Content-Encoding still on (undone here, within the same limits as a request's body)."""
    if mapping is None or not mapping.outcome or status not in SUCCESS:
        return None
    headers = fold_headers(fields)
    encoding = next((v for k, v in headers.items() if k.lower() == "content-encoding"), None)
    try:
        body = decoded_body(raw, encoding, strict=False)
    except Unreadable:
        return None  # a body that inflates past the limit is not read for identifiers
    return outcome_ids(mapping, status, headers, body)
