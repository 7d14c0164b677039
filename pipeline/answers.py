"""Answers in the vendor's own error format, so the agent's SDK raises its own error type with
Airlock's reason in it (boto3's ClientError with Code and Message; not ResponseParserError, nor
an S3 "Forbidden" that lost the reason).

The formats are data (catalog/errors.yaml); which one answers a request follows from the
operation the catalog identified: an AWS operation by its service's protocol. Anything else gets
Airlock's generic JSON body, which the JSON SDKs read (Stripe, OpenAI and Anthropic `error`,
Slack `ok: false`, GitHub and Twilio `message`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import yaml

from airlock.pipeline.operations import DEFAULT_CATALOG, parse_aws_host

BLOCKED, PENDING, FAILED = "blocked", "pending", "failed"
_SITUATIONS = (BLOCKED, PENDING, FAILED)


@dataclass(frozen=True)
class ErrorFormat:
    name: str
    content_type: str
    body: str  # a str.format template
    codes: dict[str, str]
    headers: dict[str, str] = field(default_factory=dict)

    def render(
        self, situation: str, message: str, request_id: str | None, approval_id: str | None
    ) -> tuple[dict[str, str], bytes]:
        """(headers, body) for this situation, every value escaped for the body's syntax."""
        values = {
            "code": self.codes[situation],
            "message": message,
            "request_id": request_id or "",
            "approval_id": approval_id or "",
        }
        escaped = {k: _escape_for(self.content_type, v) for k, v in values.items()}
        headers = {name: value.format_map(values) for name, value in self.headers.items()}
        headers["Content-Type"] = self.content_type
        return headers, self.body.format_map(escaped).encode()


def _escape_for(content_type: str, value: str) -> str:
    if "xml" in content_type:
        return escape(value)
    return json.dumps(value)[1:-1]  # the inside of a JSON string


class Answers:
    """Which error format answers a request, by the operation it was identified as."""

    def __init__(
        self, by_service: dict[str, ErrorFormat], by_prefix: dict[str, ErrorFormat] | None = None
    ) -> None:
        self.by_service = by_service
        self.by_prefix = by_prefix or {}  # by the endpoint prefix AWS hosts are named by

    def format_for(self, operation: str | None, host: str = "") -> ErrorFormat | None:
        """By the operation identified; with none (nothing decided: the decider did not answer,
        or the store failed), by the AWS service the host names, so that boto3 still raises its
        own error with the reason (an S3 refusal in JSON read as Code "403", reason lost)."""
        if operation and operation.startswith("aws."):
            return self.by_service.get(operation.split(".", 2)[1])
        if operation or not host:
            return None
        named = parse_aws_host(host.lower().rstrip("."))
        return self.by_prefix.get(named[0]) if named else None


def situation_of(status: int, approval: dict[str, Any] | None, recorded: bool) -> str:
    if not recorded or (status >= 500 and not approval):
        return FAILED
    if approval and approval.get("state") == "PENDING":
        return PENDING
    return BLOCKED


def load_answers(catalog: Path = DEFAULT_CATALOG) -> Answers:
    spec = yaml.safe_load((catalog / "errors.yaml").read_text())
    formats = {name: _format(name, entry) for name, entry in spec["formats"].items()}
    by_protocol = {protocol: formats[name] for protocol, name in spec["aws_protocols"].items()}
    by_service, by_prefix = {}, {}
    for path in sorted((catalog / "aws").glob("*.json")):
        service = json.loads(path.read_text())
        found = by_protocol.get(service["protocol"])
        if found is None:
            raise ValueError(f"{path}: no error format for protocol {service['protocol']!r}")
        by_service[service["service"]] = by_prefix[service["endpoint_prefix"]] = found
    return Answers(by_service, by_prefix)


def _format(name: str, entry: dict[str, Any]) -> ErrorFormat:
    codes = entry["codes"]
    missing = [s for s in _SITUATIONS if s not in codes]
    if missing:
        raise ValueError(f"catalog/errors.yaml: format {name} has no code for {missing}")
    return ErrorFormat(
        name=name,
        content_type=entry["content_type"],
        body=entry["body"],
        codes=dict(codes),
        headers=dict(entry.get("headers") or {}),
    )
