"""`make coverage`: how much of each vendor's published API Airlock identifies.

For every operation of every catalog service, botocore builds the request exactly as boto3
would send it (signed, for us-east-1, with example values for the required members), the
request is captured before it leaves (no network), turned into Airlock's request document and
identified. Counted per service: write operations identified as themselves, identified as
another operation (the error that decides wrongly), not identified, and operations that look
the same on the wire as another (a deprecated alias: reported, not hidden).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from airlock.pipeline.document import WireRequest, build_document
from airlock.pipeline.operations import OPENAPI, OperationIndex, load_catalog

REGION = "us-east-1"
EXAMPLE_STRINGS = {
    "Bucket": "example-bucket",
    "Key": "reports/2026/q4.csv",
    "AccountId": "123456789012",
}
_MAX_DEPTH = 6


class _Captured(Exception):
    def __init__(self, request: Any) -> None:
        super().__init__("captured")
        self.request = request


@dataclass
class ServiceCoverage:
    service: str
    prefix: str  # what operation names start with: aws.s3, github
    writes: int = 0
    identified: int = 0
    wrong: list[tuple[str, str]] = field(default_factory=list)  # (operation, identified as)
    missed: list[str] = field(default_factory=list)
    aliases: list[tuple[str, str]] = field(default_factory=list)  # same on the wire
    unbuildable: list[tuple[str, str]] = field(default_factory=list)

    @property
    def share(self) -> float:
        """Of the writes botocore can send in this endpoint form."""
        sendable = self.writes - len(self.unbuildable)
        return self.identified / sendable if sendable else 1.0


def aws_coverage(
    index: OperationIndex | None = None, client_config: dict[str, Any] | None = None
) -> list[ServiceCoverage]:
    index = index or load_catalog()
    return [
        _service_coverage(index, service, aws_requests(service, client_config or {}))
        for service in sorted(index.services)
        if index.services[service].provider == "aws"
    ]


def openapi_coverage(
    index: OperationIndex | None = None, encode_slashes: bool = True
) -> list[ServiceCoverage]:
    """OpenAPI providers: each operation's request as its SDK writes the URL (Octokit encodes
    a `/` inside a path parameter as %2F; encode_slashes=False is how curl users write it)."""
    index = index or load_catalog()
    return [
        _service_coverage(index, name, openapi_requests(service, encode_slashes))
        for name, service in sorted(index.services.items())
        if service.protocol == OPENAPI
    ]


# Values for path parameters; those that may hold a slash hold one.
OPENAPI_EXAMPLES = {"branch": "release/v1", "ref": "heads/release/v1", "path": "docs/guide.md",
                    "name": "team/config", "file_path": "src/app.py"}  # fmt: skip


def openapi_requests(service: Any, encode_slashes: bool) -> Iterator[tuple[str, WireRequest]]:
    for name, spec in service.operations.items():
        path = spec.template
        for label in spec.labels:
            value = quote(
                OPENAPI_EXAMPLES.get(label, f"x-{label}"), safe="" if encode_slashes else "/"
            )
            path = path.replace("{" + label + "}", value).replace("{" + label + "+}", value)
        if spec.query:  # what tells it apart on the wire (OpenAI's beta=true)
            path += "?" + "&".join(f"{k}={v or ''}" for k, v in spec.query)
        body = b"{}" if spec.write else b""
        yield name, WireRequest(
            method=spec.method, scheme="https", host=service.hosts[0], port=443, path=path,
            headers=[("Host", service.hosts[0]), ("Accept", "application/vnd.github+json"),
                     ("Content-Type", "application/json")],
            raw_content=body,
        )  # fmt: skip


def _service_coverage(
    index: OperationIndex, service: str, requests: Iterator[tuple[str, Any]]
) -> ServiceCoverage:
    catalog = index.services[service]
    coverage = ServiceCoverage(service, catalog.prefix)
    for name, request in requests:
        spec = catalog.operations.get(name)
        if spec is None or not spec.write:
            continue
        coverage.writes += 1
        if isinstance(request, Exception):
            coverage.unbuildable.append((name, f"{type(request).__name__}: {request}"))
            continue
        found = index.identify(build_document(request, "coverage"))
        expected = f"{catalog.prefix}.{name}"
        if found is None:
            coverage.missed.append(name)
        elif found.name == expected:
            coverage.identified += 1
        elif spec.deprecated and _same_on_the_wire(catalog.operations[found.short_name], spec):
            coverage.aliases.append((name, found.short_name))
            coverage.identified += 1
        else:
            coverage.wrong.append((name, found.name))
    return coverage


def _same_on_the_wire(a: Any, b: Any) -> bool:
    return (a.method, getattr(a.path, "pattern", None), a.query, a.required_query) == (
        b.method,
        getattr(b.path, "pattern", None),
        b.query,
        b.required_query,
    )


def aws_requests(
    service: str, client_config: dict[str, Any] | None = None
) -> Iterator[tuple[str, WireRequest | Exception]]:
    """(operation, the request botocore would send for it, or why it could not build one)."""
    client = capturing_client(service, client_config)
    model = client.meta.service_model
    for name in model.operation_names:
        operation = model.operation_model(name)
        params = example_value(operation.input_shape, "", 0) if operation.input_shape else {}
        try:
            yield name, captured_request(client, name, params)
        except Exception as e:  # the model asks for something the examples lack
            yield name, e


def aws_request(
    service: str, operation: str, params: dict[str, Any], **client_config: Any
) -> WireRequest:
    """The request boto3 sends for one call, captured before it leaves."""
    return captured_request(capturing_client(service, client_config), operation, params)


def capturing_client(service: str, client_config: dict[str, Any] | None = None) -> Any:
    """A botocore client whose requests are captured instead of sent (no network)."""
    import botocore.session
    from botocore.config import Config

    client = botocore.session.get_session().create_client(
        service,
        region_name=REGION,
        aws_access_key_id="AKIAIOSFODNN7EXAMPLE",
        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        config=Config(
            parameter_validation=False,
            retries={"max_attempts": 1},
            **(client_config or {}),
        ),
    )

    def capture(request: Any, **_: Any) -> None:
        raise _Captured(request)

    client.meta.events.register("before-send", capture)
    return client


def captured_request(client: Any, operation: str, params: dict[str, Any]) -> WireRequest:
    try:
        client._make_api_call(operation, params)
    except _Captured as captured:
        return wire_request(captured.request)
    raise RuntimeError(f"botocore sent nothing for {operation}")


def example_value(shape: Any, member: str, depth: int) -> Any:
    """A value of this shape botocore can serialise: required members only, one list item."""
    kind = shape.type_name
    if kind == "structure":
        if depth > _MAX_DEPTH:
            return {}
        return {
            name: example_value(shape.members[name], name, depth + 1)
            for name in shape.required_members
        }
    if kind == "list":
        return [example_value(shape.member, member, depth + 1)] if depth <= _MAX_DEPTH else []
    if kind == "map":
        return {"key": example_value(shape.value, member, depth + 1)} if depth <= _MAX_DEPTH else {}
    if kind == "string":
        if shape.enum:
            return shape.enum[0]
        return EXAMPLE_STRINGS.get(member, "example")
    if kind in ("integer", "long"):
        return 1
    if kind in ("float", "double"):
        return 1.0
    if kind == "boolean":
        return True
    if kind == "timestamp":
        return datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    if kind == "blob":
        return b"data"
    return "example"


def wire_request(request: Any) -> WireRequest:
    """botocore's prepared request as the proxy would hand it to the decider."""
    url = urlsplit(request.url)
    path = url.path or "/"
    if url.query:
        path += "?" + url.query
    body = request.body or b""
    if hasattr(body, "read"):
        body = body.read()
    if isinstance(body, str):
        body = body.encode()
    return WireRequest(
        method=request.method,
        scheme=url.scheme,
        host=url.hostname or "",
        port=url.port or 443,
        path=path,
        authority="",
        headers=[(k, v.decode("latin-1") if isinstance(v, bytes) else v)
                 for k, v in request.headers.items()],
        raw_content=body,
    )  # fmt: skip


def report(results: list[ServiceCoverage]) -> str:
    lines = [f"{'service':<16}{'identified':>12}{'writes':>8}{'share':>9}  wrong  missed"]
    total = identified = 0
    for r in results:
        total = total + r.writes - len(r.unbuildable)
        identified += r.identified
        lines.append(
            f"{r.service:<16}{r.identified:>12}{r.writes:>8}{r.share:>9.1%}"
            f"  {len(r.wrong):>5}  {len(r.missed):>6}"
        )
    share = identified / total if total else 1.0
    lines.append(f"{'all':<16}{identified:>12}{total:>8}{share:>9.1%}")
    for r in results:
        for name, other in r.wrong:
            lines.append(f"  WRONG   {r.prefix}.{name} identified as {other}")
        for name in r.missed:
            lines.append(f"  MISSED  {r.prefix}.{name}")
        for name, why in r.unbuildable:
            lines.append(f"  NO REQUEST  {r.prefix}.{name}: {why[:120]}")
        for name, other in r.aliases:
            lines.append(f"  ALIAS   {r.prefix}.{name} (deprecated) is {other} on the wire")
    return "\n".join(lines)


def main() -> int:
    """Every endpoint form botocore writes; exit 1 when any is below 99% or misidentified."""

    forms = {
        "regional": {},
        "fips": {"use_fips_endpoint": True},
        "dualstack": {"use_dualstack_endpoint": True},
        "s3 path-style": {"s3": {"addressing_style": "path"}},
    }
    index, failed = load_catalog(), False
    for label, config in forms.items():
        results = aws_coverage(index, config)
        print(f"\n== AWS write operations, {label} endpoints ==")
        print(report(results))
        failed |= any(r.wrong or r.share < 0.99 for r in results)
    results = openapi_coverage(index)
    print("\n== OpenAPI write operations, path parameters encoded as the SDKs send them ==")
    print(report(results))
    failed |= any(r.wrong or r.share < 0.99 for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
