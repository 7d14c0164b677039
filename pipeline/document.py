"""Stage 1: turn an HTTP request into the plain document that mappings and policies read.

The document is JSON-shaped (dicts, lists, strings, numbers) so JSONPath can address any part:
    {method, scheme, host, port, path, query, headers, body, body_format, body_size, agent}
body_format is json, form, xml, text (anything else, or a body that did not parse: then
body_error says why) or empty. `authority` is what the request itself names as its host (HTTP/2
`:authority`, an absolute-form URL's host; empty otherwise). `request_error`, when present, says
why the request cannot be judged exactly as sent (bytes that are not UTF-8 in its request line):
evaluation refuses it before mapping.
"""

from __future__ import annotations

import functools
import hashlib
import json
import posixpath
import re
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from io import BytesIO
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, unquote
from xml.etree import ElementTree
from xml.parsers import expat

import brotli
import zstandard

if TYPE_CHECKING:  # the decider's worker reads WireRequests: mitmproxy is ~0.17 s to import
    from mitmproxy import http

Document = dict[str, Any]

_BRACKETS = re.compile(r"\[([^\[\]]*)\]")
_MAX_INDEX = 10_000  # a form key like items[99999999] must not allocate a huge list
MAX_FORM_FIELDS = 10_000
# Bounded work per request: the decider is one loop, and every agent's decision waits behind
# the one being made. Decoding stops past MAX_DECODED_BODY (a 50 KB gzip bomb inflates to 50 MB);
# bodies over MAX_PARSED_BODY are not parsed; structures nest at most MAX_DEPTH levels.
MAX_DECODED_BODY = 16 << 20
MAX_PARSED_BODY = 1 << 20
MAX_DEPTH = 64
# Objects and lists (XML elements) a parsed body may hold, whatever their depth: a 1 MiB form of
# 9,000 keys nested 30 levels made 270,000 objects and took 2.4 s to parse (~7 µs each; JSON's
# cost ~0.5 µs). An API's requests hold a few hundred; 50,000 leaves room for bulk calls.
MAX_NODES = 50_000
# A compressed body is decoded only up to this size as sent: what it holds past 1 MiB could not
# be parsed anyway (MAX_PARSED_BODY), and decoding costs grow with the input as well as the
# output (brotli is fed in small steps, below). A JSON, form or XML body over it is refused;
# an upload is recorded as sent.
MAX_ENCODED_BODY = MAX_PARSED_BODY
# gzip members (or zstd frames) in one body: each one costs a decoder and a copy of the rest of
# the body (zlib's unused_data), so 1 MiB of 20-byte empty members took 6.6 s. HTTP clients send
# one; gzip tools concatenate a few.
MAX_MEMBERS = 16
# A request's head: mitmproxy's HTTP/1 reader takes one of any size, and 50,000 fields cost the
# decider 10 s. SDKs send a few dozen fields; servers refuse far less than these (nginx 4 x 8 KiB
# buffers, Node 16 KiB). The proxy refuses past them before the decider sees the request
# (gatekeeper.py); the document refuses what comes another way.
MAX_HEADER_FIELDS = 200
MAX_HEAD = 64 << 10  # the request line and the header fields, in bytes
MAX_QUERY_FIELDS = MAX_FORM_FIELDS  # a 1.3 MB query of 70,000 fields took 2.3 s
_STRUCTURED = ("json", "form", "xml")


class Unreadable(Exception):
    """A body Airlock will not read, whose request is refused rather than judged blind (not a
    ValueError: parsers turn those into body_error and go on)."""


@dataclass(frozen=True, slots=True)
class WireRequest:
    """A request as the decider receives it from the proxy: what a document is built from.
    Not a mitmproxy Request, whose type checks cost ~110 µs per request in the decider.
    Method, scheme and path read as mitmproxy's do; header names and values are latin-1 text,
    so they carry the bytes exactly."""

    method: str
    scheme: str
    host: str
    port: int
    path: str
    headers: list[tuple[str, str]]
    raw_content: bytes
    authority: str = ""
    sni: str = ""  # the TLS server name the client asked for; empty without TLS or SNI
    trailers: tuple[str, ...] = ()  # names of trailer fields (HTTP/2), sent after the body

    @classmethod
    def of(cls, request: http.Request) -> WireRequest:
        return cls(
            request.method,
            request.scheme,
            request.host,
            request.port,
            request.path,
            latin1_headers(request),
            request.raw_content or b"",
            request.authority,
            trailers=tuple(n.decode("latin-1") for n, _ in request.trailers.fields)
            if request.trailers
            else (),
        )


def latin1_headers(request: http.Request) -> list[tuple[str, str]]:
    """Header names and values as text that JSON can carry and that encodes back to the bytes."""
    return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in request.data.headers.fields]


class RequestLine(Protocol):
    """What every request has, whichever form it comes in."""

    @property
    def method(self) -> str: ...
    @property
    def scheme(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def path(self) -> str: ...


def oversized_head(method: str, path: str, fields: Sequence[tuple[Any, Any]]) -> str | None:
    """Why a request's head is past the limits (MAX_HEADER_FIELDS, MAX_HEAD), or None. Fields
    as mitmproxy holds them (bytes) or as the decider receives them (latin-1 text)."""
    if len(fields) > MAX_HEADER_FIELDS:
        return (
            f"the request sends {len(fields)} header fields: Airlock reads at most "
            f"{MAX_HEADER_FIELDS}"
        )
    size = len(method) + len(path) + sum(len(name) + len(value) + 4 for name, value in fields)
    if size > MAX_HEAD:
        return f"the request's URL and headers are {size} bytes: Airlock reads at most {MAX_HEAD}"
    return None


def build_document(request: http.Request | WireRequest, agent: str) -> Document:
    if not isinstance(request, WireRequest):  # mitmproxy's, in the proxy and in tests
        request = WireRequest.of(request)
    if problem := oversized_head(request.method, request.path, request.headers):
        return {**minimal_document(request, agent), "request_error": problem}
    target, method = escape_undecodable(request.path), escape_undecodable(request.method)
    path, _, raw_query = target.partition("?")
    headers, repeated = _headers(request.headers)
    host = normalise_host(request.host)
    reading, lists = vendor_reading(host, headers), repeats_as_lists(host)
    body = _read_body(request.raw_content, headers, reading, lists)
    try:  # parsed once: the query of a form request counts as its form's too
        query_pairs = parse_qsl(raw_query, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS)
    except ValueError:
        query_pairs = []
        body = replace(body, notes={**body.notes, "request_error": (
            f"the query string has more than {MAX_QUERY_FIELDS} fields"
        )})  # fmt: skip
    headers, hoisting = _with_query_headers(headers, query_pairs, host, reading)
    two_actions = _action_beside_another(query_pairs, body.value, headers, host, reading)
    body = _with_query_fields(body, headers, query_pairs, reading, lists)
    if two_actions and "request_error" not in body.notes:  # else refused already: both send it
        body = replace(body, notes={**body.notes, "request_error": two_actions})
    # Where mitmproxy really connects (the CONNECT target), not the Host header the agent wrote:
    # evaluation refuses a request whose Host header or :authority disagrees.
    document: Document = {
        "method": method.upper(),
        "scheme": request.scheme,
        "host": host,
        "port": request.port,
        "authority": escape_undecodable(request.authority),
        "path": document_path(path),
        "query": _multi_valued(query_pairs),
        "headers": headers,
        "body": body.value,
        "body_format": body.format,
        "body_size": body.size,
        "agent": agent,
        **body.notes,
    }
    if "%2f" in path.lower():  # an encoded slash: one segment, not two (GitHub branch names)
        document["raw_path"] = normalise_path(path)
    # What goes upstream byte for byte, which the reading above is not (bytes that are not
    # UTF-8, XML attributes, %2F and dot segments): an approval binds it (request_hash). The
    # body as sent, before its Content-Encoding is undone: the upstream receives (S3 stores)
    # those bytes, and a decoder may skip what follows a gzip member.
    document["target_sha256"] = hashlib.sha256(
        request.path.encode("utf-8", "surrogateescape")
    ).hexdigest()
    document["body_sha256"] = hashlib.sha256(request.raw_content).hexdigest()
    if "raw_path" in document or document["path"] != unquote(path, errors="surrogateescape"):
        document["path_rewritten"] = True  # read as another path would be (request_hash)
    if target != request.path or method != request.method:
        document["request_error"] = (
            f"the request line holds bytes that are not UTF-8 ({method} {target}); "
            "URLs must percent-encode them"
        )
    elif problem := (
        hoisting
        or _unjudged_parts(request, host)
        or _repeated_identity(repeated)
        or _overridden_method(document)
        or _disagreeing_target(document, reading)
    ):
        document["request_error"] = problem
    return document


# How the vendor behind a host reads a request's parameters, whatever the request declares
# (from the catalog's protocols): AWS's query protocol (IAM, EC2, STS, …) reads the query
# string and the body as one form; its JSON and REST services read the body as JSON or XML
# whatever its Content-Type; form APIs (Rack, PHP and the like) merge the query into the form.
AWS_QUERY, AWS_JSON, AWS_REST, FORM_API = "aws-query", "aws-json", "aws-rest", "form-api"
# APIs that read a body as JSON whatever its Content-Type: GitHub's REST API parses
# `curl -d '{"permission": "admin"}'` (sent as a form) as JSON, as its own examples send it.
JSON_API = "json-api"
JSON_APIS = frozenset({"api.github.com"})
FORM_APIS = frozenset({"api.stripe.com", "connect.stripe.com", "files.stripe.com", "slack.com"})
# Every Twilio host reads its parameters alike (as lists below); Slack's Web API at a
# workspace's own host (acme.slack.com) as at slack.com.
FORM_API_DOMAINS = ("twilio.com", "slack.com")
# Where a repeated form key is the vendor's own list notation: twilio-python sends
# `MediaUrl=a&MediaUrl=b` to api.twilio.com and `Identity=a&Identity=b` to notify.twilio.com,
# every Twilio host alike (conversations, verify, messaging, …); elsewhere upstreams differ on
# which of the values counts. A domain covers its subdomains; hosts come normalised
# (normalise_host: lower case, no trailing dot).
REPEATS_AS_LISTS = frozenset({"twilio.com"})


def repeats_as_lists(host: str) -> bool:
    """A repeated form key is a list on this host (REPEATS_AS_LISTS: a domain or under one)."""
    return any(host == d or host.endswith("." + d) for d in REPEATS_AS_LISTS)


_AWS_SCOPE = re.compile(r"Credential=[^/,\s]+/\d{8}/[^/]+/([^/]+)/aws4_request")
_readings: dict[str, str] = {}


def vendor_reading(host: str, headers: dict[str, str]) -> str:
    """AWS_QUERY, AWS_JSON, AWS_REST, FORM_API, or "" for a host read as its requests declare;
    an interface VPC endpoint (an AWS host that names no service) by its SigV4 scope, and no
    other host: the scope is the client's to write (operations.scope_names_service)."""
    from airlock.pipeline.operations import MAX_CACHED_HOST, scope_names_service

    reading = _readings.get(host)
    if reading is None:
        reading = _reading_of_host(host)
        if len(_readings) < 65_536 and len(host) <= MAX_CACHED_HOST:  # keys of bounded size
            _readings[host] = reading
    if (
        not reading
        and "Credential=" in (authorization := headers.get("authorization", ""))
        and scope_names_service(host)
    ):
        scope = _AWS_SCOPE.search(authorization)
        if scope is not None:
            return _aws_protocols()[1].get(scope.group(1), "")
    return reading


def _reading_of_host(host: str) -> str:
    if host in FORM_APIS or any(host.endswith("." + d) for d in FORM_API_DOMAINS):
        return FORM_API
    if host in JSON_APIS:
        return JSON_API
    from airlock.pipeline.operations import LABEL_ALIASES, parse_aws_host

    parsed = parse_aws_host(host)
    if parsed is None:
        return ""
    label = LABEL_ALIASES.get(parsed[0], parsed[0])
    return _aws_protocols()[0].get(label, "")


@functools.cache
def _aws_protocols() -> tuple[dict[str, str], dict[str, str]]:
    """Each AWS catalog service's reading, by endpoint prefix and by signing name."""
    from airlock.store.locations import shipped

    by_label: dict[str, str] = {}
    by_signing: dict[str, str] = {}
    for path in sorted((shipped("catalog") / "aws").glob("*.json")):
        entry = json.loads(path.read_text())
        protocol = entry["protocol"]
        reading = AWS_QUERY if protocol in ("query", "ec2") else AWS_JSON
        reading = AWS_REST if protocol.startswith("rest-") else reading
        by_label[entry["endpoint_prefix"]] = reading
        by_signing[entry["signing_name"]] = reading
    return by_label, by_signing


# A presigned URL's own SigV4 fields: its signature, not headers of the request.
_PRESIGNING_FIELDS = frozenset(
    {"x-amz-algorithm", "x-amz-credential", "x-amz-date", "x-amz-expires",
     "x-amz-signedheaders", "x-amz-signature", "x-amz-security-token"}
)  # fmt: skip


def _with_query_headers(
    headers: dict[str, str], query: list[tuple[str, str]], host: str, reading: str
) -> tuple[dict[str, str], str | None]:
    """The headers with the `x-amz-*` fields of the query, on an AWS host not read as the query
    protocol: S3 acts on `?x-amz-acl=public-read` as on the header (boto3's presigned URLs and
    AWS's JS v3 presigner carry every x-amz-* header in the query; Java v1 the ACL), and mappings
    read headers. Or why the request is refused: a name sent as a header and in the query, or twice
    in the query with different values (which one the service reads is not documented)."""
    fields = [(key.lower(), value) for key, value in query if key[:6].lower() == "x-amz-"]
    fields = [(name, value) for name, value in fields if name not in _PRESIGNING_FIELDS]
    if not fields or reading == AWS_QUERY or not _is_aws_host(host):
        return headers, None
    hoisted: dict[str, str] = {}
    for name, value in fields:
        if name in headers:
            return headers, (
                f"the request sends {name[:60]} both as a header and in the query string: "
                "AWS reads either, and which one counts is not documented"
            )
        if hoisted.setdefault(name, value) != value:
            return headers, (
                f"the query string sends {name[:60]} twice with different values: which one "
                "AWS reads is not documented"
            )
    return {**headers, **hoisted}, None


def _is_aws_host(host: str) -> bool:
    from airlock.pipeline.operations import parse_aws_host

    return parse_aws_host(host) is not None


# Headers that say what a request is, whose it is or how its body reads: sent twice, they
# are joined with ", " here while an upstream may read either one.
_IDENTITY_HEADERS = frozenset(
    {"x-amz-target", "authorization", "content-type", "mcp-session-id", "mcp-method",
     "mcp-name", "host"}
)  # fmt: skip


def _repeated_identity(repeated: list[str]) -> str | None:
    twice = sorted({name for name in repeated if name in _IDENTITY_HEADERS})
    if not twice:
        return None
    return (
        f"the request sends the {', '.join(twice)} header more than once: the upstream could "
        "read another one than Airlock"
    )


_METHOD_OVERRIDES = ("x-http-method-override", "x-http-method", "x-method-override")


def _overridden_method(document: Document) -> str | None:
    """A method override (a header, or a `_method` field as Rails and Laravel read it) that
    names another method than the request's: the upstream may do what it names."""
    method, headers, body = document["method"], document["headers"], document["body"]
    asked = [(f"{name} header", headers[name]) for name in _METHOD_OVERRIDES if name in headers]
    if isinstance(body, dict) and "_method" in body:
        asked.append(("_method field", body["_method"]))
    if "_method" in document["query"]:
        asked += [("_method query field", value) for value in document["query"]["_method"]]
    for where, value in asked:
        if not isinstance(value, str) or value.strip().upper() != method:
            return (
                f"the {where} asks for the method {str(value)[:20]!r} while the request is a "
                f"{method}: the upstream could do what it names"
            )
    return None


def _disagreeing_target(document: Document, reading: str) -> str | None:
    """AWS: `X-Amz-Target` and `Action` naming two operations (the JSON services read the
    target, the query ones the action, and SQS both)."""
    target = document["headers"].get("x-amz-target")
    if target is None or reading not in (AWS_QUERY, AWS_JSON):
        return None
    body = document["body"]
    action = body.get("Action") if isinstance(body, dict) else None
    if action is None and reading == AWS_JSON:
        return None
    if action != target.rpartition(".")[2]:
        return (
            f"the X-Amz-Target header ({target[:80]!r}) and the Action parameter "
            f"({str(action)[:60]!r}) name different operations: AWS's services read one or "
            "the other"
        )
    return None


def _action_beside_another(
    query: list[tuple[str, str]], body: Any, headers: dict[str, str], host: str, reading: str
) -> str | None:
    """AWS: an `Action` in the query string beside another name for the operation (the body's
    Action, an X-Amz-Target) or a second one. SQS serves the query protocol and the JSON one at
    once: `POST /?Action=PurgeQueue` with `Action=ListQueues` (or `X-Amz-Target:
    AmazonSQS.ListQueues`) in the body was judged as ListQueues. An Action in the query alone is
    the query protocol (a GET, a presigned URL); a target with no Action is the JSON one."""
    actions = [value for key, value in query if key == "Action"]
    if not actions or reading == AWS_REST or not _is_aws_host(host):
        return None
    others = [f"Action={value[:60]!r} in the query string" for value in actions[1:]]
    if isinstance(body, dict) and "Action" in body:
        others.append(f"Action={str(body['Action'])[:60]!r} in the body")
    if "x-amz-target" in headers:
        others.append(f"X-Amz-Target {headers['x-amz-target'][:80]!r}")
    if not others:
        return None
    return (
        f"the query string's Action={actions[0][:60]!r} comes with {', '.join(others)}: AWS "
        "services read one or the other, and the upstream could run another operation"
    )


def _unjudged_parts(request: WireRequest, host: str) -> str | None:
    """What reaches the upstream besides the request line, headers and body: the TLS server
    name (mitmproxy sends the client's SNI upstream: an edge that routes by SNI would serve
    another host than the one judged) and trailer fields (sent after the body)."""
    if request.sni and normalise_host(request.sni) != host:
        return (
            f"the TLS server name (SNI) {escape_undecodable(request.sni)[:100]!r} does not name "
            f"the host the request goes to ({host!r})"
        )
    if request.trailers:
        names = ", ".join(sorted({n.lower() for n in request.trailers}))[:200]
        return (
            f"the request carries trailer fields ({names}): sent after the body, they would "
            "reach the upstream unjudged"
        )
    return None


@dataclass(frozen=True, slots=True)
class Body:
    value: Any
    format: str
    size: int
    notes: dict[str, Any]  # body_error, body_truncated or request_error, when they apply


def _read_body(raw: bytes, headers: dict[str, str], reading: str, lists: bool) -> Body:
    """Decoded and parsed within the limits: a body over MAX_PARSED_BODY stands as its size and
    hash (body_truncated when mappings would have read it); one that cannot be read safely
    gives a request_error, which refuses the request. Read as the vendor reads it (`reading`),
    whatever it declares where the vendor does not go by its Content-Type."""
    content_type = headers.get("content-type", "")
    try:
        _one_media_type(content_type)
        declared = media_type(content_type, b"") if content_type.strip() else ""
        kind = _vendor_kind(declared, content_type, raw, reading)
        # Strict when parameters will be read from it; an upload (S3's aws-chunked, an object
        # stored gzipped) is recorded by size and hash whatever its encoding.
        strict = declared in _STRUCTURED or (kind in _STRUCTURED and reading == AWS_QUERY)
        if strict:
            _read_as_utf8(content_type)
        decoded = decoded_body(raw, headers.get("content-encoding"), strict)
    except Unreadable as e:
        return _refused_body(raw, e)
    if len(decoded) > MAX_PARSED_BODY:
        structured = (kind or media_type(content_type, decoded)) in _STRUCTURED
        notes = {"body_truncated": True} if structured else {}
        return Body(_uninspected(decoded), "text", len(decoded), notes)
    try:
        if kind == "sniffed":  # AWS JSON and REST: as JSON or XML if it parses as one
            value, body_format, body_error = _parse_sniffed(decoded)
        else:
            value, body_format, body_error = parse_body(
                content_type, decoded, kind=kind or None, lists=lists
            )
    except Unreadable as e:
        return _refused_body(decoded, e)
    return Body(value, body_format, len(decoded), {"body_error": body_error} if body_error else {})


def _vendor_kind(declared: str, content_type: str, raw: bytes, reading: str) -> str:
    """How the vendor reads the body: json, form, xml, multipart, "sniffed" (as JSON or XML if
    it parses as one, else as sent) or "" (as its Content-Type says)."""
    if not raw:
        return ""
    if reading == AWS_QUERY:
        return "form"  # IAM, EC2, STS read a form whatever the Content-Type
    if reading == JSON_API and declared != "json" and _sniff(raw) == "application/json":
        return "sniffed"  # GitHub reads JSON under any Content-Type (markdown/raw's text stays)
    if (
        reading in (AWS_JSON, AWS_REST)
        and declared == "form"
        and _sniff(raw) in _SNIFFED_STRUCTURES
    ):
        # S3 reads ?versioning's XML or ?policy's JSON labelled as a form too (curl -d's
        # default): read as a form, it had no fields, and every rule on its body was off
        return "sniffed"
    if declared in _STRUCTURED:
        return declared
    if _is_multipart(content_type):
        return "multipart"
    if reading in (AWS_JSON, AWS_REST) and _sniff(raw) in _SNIFFED_STRUCTURES:
        # S3 reads `?delete`'s XML and `?policy`'s JSON sent as text/plain or octet-stream
        return "sniffed" if content_type.strip() else ""
    if reading == FORM_API and not content_type.strip() and not _sniff(raw) and b"=" in raw:
        return "form"  # Rack reads a body without a Content-Type as a form, spaces and all
    return ""


_SNIFFED_STRUCTURES = ("application/xml", "application/json")


def _parse_sniffed(raw: bytes) -> tuple[Any, str, str | None]:
    """A body that declares a type the vendor does not go by, but looks like JSON or XML: parsed
    if it parses (an S3 object may be any text: one that does not parse stays as sent, and
    operations.py notes a body_error where the operation reads a JSON or XML body)."""
    try:
        value, body_format, body_error = parse_body("", raw)
    except Unreadable:
        return raw.decode("utf-8", "replace"), "text", None
    if body_error:
        return value, "text", None
    return value, body_format, None


# Where the query string and a form body are one set of parameters (SQS, an AWS JSON service,
# still serves the query protocol): a field in both is refused.
_ONE_FORM = (AWS_QUERY, AWS_JSON, FORM_API)


def _with_query_fields(
    body: Body, headers: dict[str, str], query: list[tuple[str, str]], reading: str, lists: bool
) -> Body:
    """A request's query fields count as its form's where the vendor merges them: AWS's query
    protocol reads its parameters from both, whatever the method and Content-Type; form servers
    (Rack, PHP's $_REQUEST, …) merge the two, so `POST /v1/charges?amount=…` must be judged
    with its amount whatever its body; the form's own fields win, as they do there. AWS and the
    form APIs (Stripe, Slack, Twilio): a field in both is refused (which one counts there is not
    documented)."""
    if not query or "request_error" in body.notes or not _merges_query(body, headers, reading):
        return body
    try:
        fields = _form_from_pairs(query, lists)
    except (ValueError, Unreadable) as e:
        return replace(body, notes={**body.notes, "request_error": f"the query: {e}"})
    own = body.value if isinstance(body.value, dict) else {}
    both = sorted(fields.keys() & own.keys()) if reading in _ONE_FORM else ()
    if both:
        return replace(body, notes={**body.notes, "request_error": (
            f"the query string and the body both send {', '.join(both)[:80]}: upstreams differ "
            "on which one counts"
        )})  # fmt: skip
    notes = body.notes
    if body.format == "text":  # not read as a form by the vendor: its query is all it reads
        notes = {**notes, "body_error": "the body is not a form: only the query's fields were read"}
    body_format = "json" if body.format == "json" else "form"
    return replace(body, value={**fields, **own}, format=body_format, notes=notes)


def _merges_query(body: Body, headers: dict[str, str], reading: str) -> bool:
    if reading in (AWS_QUERY, FORM_API):
        return body.format in ("form", "empty", "text") or isinstance(body.value, dict)
    if body.format == "form":
        return True
    return body.format == "empty" and media_type(headers.get("content-type", ""), b"") == "form"


def _refused_body(raw: bytes, error: Unreadable) -> Body:
    return Body(_uninspected(raw), "text", len(raw), {"request_error": str(error)})


def _uninspected(raw: bytes) -> str:
    """What stands for a body that was not parsed: its size and hash (approvals bind to it)."""
    return f"[{len(raw)} bytes not inspected, sha256 {hashlib.sha256(raw).hexdigest()}]"


def decoded_body(
    raw: bytes, content_encoding: str | None, strict: bool = True, limit: int = MAX_DECODED_BODY
) -> bytes:
    """The body as the API reads it (gzip and the like undone, as mitmproxy would). Raises
    Unreadable past `limit`, checked while decoding: the bomb is never inflated whole; and for a
    compressed body over MAX_ENCODED_BODY as sent, which is not decoded (not strict: as sent).

    strict (a JSON, form or XML request body): an encoding Airlock does not know (or several,
    or a body that does not decode as its encoding) raises Unreadable too: judged as sent, it
    would be judged without its parameters while the upstream may still read them. Not strict
    (an upload, an answer read for identifiers): as sent.

    S3's `aws-chunked` (boto3's uploads, last in the list) is framing: undone first; what
    precedes it is the object's own encoding, stored as is, so the rest is read leniently."""
    name = (content_encoding or "").strip().lower()
    if name.endswith("aws-chunked") and raw:
        raw = _unframe_aws_chunks(raw)
        name, strict = name.removesuffix("aws-chunked").rstrip(", "), False
    if name in ("", "identity") or not raw:
        return raw
    decode = _DECODERS.get(name)
    if decode is None:
        if strict:
            raise Unreadable(
                f"the body's Content-Encoding {name[:60]!r} is not one Airlock decodes (one of "
                f"{', '.join(_DECODERS)}); Airlock refuses what it cannot inspect"
            )
        return raw
    if len(raw) > MAX_ENCODED_BODY:
        if strict:
            raise Unreadable(
                f"the body is over {MAX_ENCODED_BODY} bytes compressed (Content-Encoding: "
                f"{name}): Airlock decodes and parses bodies up to {MAX_PARSED_BODY} bytes, and "
                "refuses what it cannot inspect"
            )
        return raw
    try:
        return decode(raw, limit)
    except _OverLimit:
        raise Unreadable(
            f"the body decodes to more than {limit} bytes (Content-Encoding: {name}); "
            "Airlock refuses what it cannot inspect"
        ) from None
    except (zlib.error, brotli.error, zstandard.ZstdError, EOFError) as e:
        if strict:
            raise Unreadable(
                f"the body does not decode as its Content-Encoding ({name}: {e}); Airlock "
                "refuses what it cannot inspect"
            ) from None
        return raw


class _OverLimit(Exception):
    """A decoder's output went past its limit: it stops there, and what it decoded is dropped."""


def readable_content(message: http.Message, limit: int = MAX_PARSED_BODY) -> bytes | None:
    """A request's or an answer's body decoded for the proxy to read (an MCP call, a tool's
    result), or None: over `limit` as sent or decoded, streamed, or not decodable. Never
    mitmproxy's get_content(), which decodes without a limit on the event loop every flow shares
    (a 3 MB gzip answer is 3 GB)."""
    raw = message.raw_content
    if raw is None or len(raw) > limit:
        return None
    try:
        return decoded_body(raw, message.headers.get("content-encoding"), True, limit)
    except Unreadable:
        return None


def _unframe_aws_chunks(raw: bytes) -> bytes:
    """`aws-chunked` (S3 streaming uploads): `size-in-hex[;chunk-signature=…]` CRLF, the data,
    CRLF, until a chunk of size 0 and the trailing checksum. Never larger than what was sent (no
    bomb to guard against). Raises Unreadable if it is not framed so: S3 would then read the
    upload otherwise than Airlock."""
    out, position = bytearray(), 0
    while True:
        end = raw.find(b"\r\n", position)
        try:
            size = int(raw[position:end].split(b";", 1)[0], 16) if end >= 0 else -1
        except ValueError:
            size = -1
        if size == 0:
            return bytes(out)
        chunk_end = end + 2 + size
        if size < 0 or raw[chunk_end : chunk_end + 2] != b"\r\n":
            raise Unreadable("the body is not framed as its Content-Encoding aws-chunked says")
        out += raw[end + 2 : chunk_end]
        position = chunk_end + 2


def _inflate(raw: bytes, limit: int, wbits: int = zlib.MAX_WBITS | 32) -> bytes:
    """gzip (every member, as gzip readers do, up to MAX_MEMBERS) or zlib; _OverLimit past
    `limit` bytes."""
    out, rest = bytearray(), memoryview(raw)
    for _ in range(MAX_MEMBERS):
        inflater = zlib.decompressobj(wbits)
        out += inflater.decompress(rest, limit + 1 - len(out))
        if len(out) > limit:
            raise _OverLimit
        if not inflater.eof:
            raise zlib.error("truncated compressed body")
        rest = rest[len(rest) - len(inflater.unused_data) :]
        if not rest:
            return bytes(out)
    raise zlib.error(f"more than {MAX_MEMBERS} compressed members")


def _deflate(raw: bytes, limit: int) -> bytes:
    """zlib-wrapped, or raw DEFLATE as some clients send it (mitmproxy accepts both)."""
    try:
        return _inflate(raw, limit, zlib.MAX_WBITS)
    except zlib.error:
        return _inflate(raw, limit, -zlib.MAX_WBITS)


# Brotli 1.1's decoder takes no output limit (1.2's output_buffer_limit is not available:
# mitmproxy 11 pins Brotli<=1.1.0), and one process() call returns all it can decode: 986 bytes
# of zeros compressed at quality 11 are 600 MiB in one 1 KiB step. A meta-block holds at most
# 16 MiB and takes about 11 bytes at best, so the decoder is fed _BROTLI_STEP bytes at a time:
# measured with bombs of zeros at qualities 0-11 and windows 16-24, one step of 16 bytes gives
# at most 16 MiB (32 bytes: 48 MiB; 1 KiB: 600 MiB), so decoding stops within 16 MiB (two
# meta-blocks at worst: 32 MiB) past the limit. Small steps cost ~2 µs each: ~0.15 s for a
# MAX_ENCODED_BODY of input.
_BROTLI_STEP = 16


def _unbrotli(raw: bytes, limit: int) -> bytes:
    decoder, view = brotli.Decompressor(), memoryview(raw)
    parts, size = [], 0  # joined once: a growing bytearray would hold two copies as it grows
    for start in range(0, len(raw), _BROTLI_STEP):
        part = decoder.process(view[start : start + _BROTLI_STEP])
        if part:
            parts.append(part)
            size += len(part)
            if size > limit:
                raise _OverLimit
    if not decoder.is_finished():
        raise brotli.error("truncated compressed body")
    return b"".join(parts)


def _unzstd(raw: bytes, limit: int) -> bytes:
    reader = zstandard.ZstdDecompressor().stream_reader(BytesIO(raw), read_across_frames=True)
    out = reader.read(limit + 1)
    if len(out) > limit:
        raise _OverLimit
    return out


_DECODERS: dict[str, Callable[[bytes, int], bytes]] = {
    "gzip": _inflate,
    "x-gzip": _inflate,
    "deflate": _deflate,
    "br": _unbrotli,
    "zstd": _unzstd,
}


def minimal_document(request: RequestLine, agent: str) -> Document:
    """Only what cannot fail to read: for recording a request whose full document could not be
    built."""
    return {
        "method": escape_undecodable(request.method).upper(),
        "scheme": request.scheme,
        "host": normalise_host(request.host),
        "port": request.port,
        "authority": "",
        "path": document_path(escape_undecodable(request.path).partition("?")[0]),
        "query": {},
        "headers": {},
        "body": None,
        "body_format": "empty",
        "body_size": 0,
        "agent": agent,
    }


_UNDECODABLE = re.compile("[\udc80-\udcff]")


def escape_undecodable(text: str) -> str:
    """Bytes that were not UTF-8 (held as surrogate escapes, as mitmproxy reads them) as %XX:
    text any database stores, and that still shows the bytes sent."""
    if text.isascii():
        return text
    return _UNDECODABLE.sub(lambda m: f"%{ord(m.group()) - 0xDC00:02X}", text)


def document_path(path: str) -> str:
    """Percent-escapes undone and the path normalised; escaped bytes that are not UTF-8 stay
    `%XX`, as sent (not U+FFFD, which would make `%FE` and `%FF` the same path)."""
    return normalise_path(escape_undecodable(unquote(path, errors="surrogateescape")))


def normalise_host(host: str) -> str:
    return host.lower().rstrip(".")


_SLASHES = re.compile(r"/{2,}")


def normalise_path(path: str) -> str:
    """`//v1/./charges` and `/v1/x/../charges` are `/v1/charges` to most servers: map them so."""
    collapsed = _SLASHES.sub("/", path or "/")
    if "/." not in collapsed:
        return collapsed if collapsed.startswith("/") else "/" + collapsed
    normal = posixpath.normpath("/" + collapsed.lstrip("/"))
    return normal + "/" if collapsed.endswith("/") and normal != "/" else normal


def fold_headers(fields: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """Header fields as mitmproxy's Headers reads them as a dict, in one pass: each name as first
    sent, a repeated one's values joined with ", ", bytes read as UTF-8 with surrogate escapes.
    (mitmproxy's own mapping view looks every name up again across all fields: 56 µs for a
    dozen response headers.)"""
    folded: dict[bytes, tuple[str, list[str]]] = {}
    for name, value in fields:
        text = value.decode("utf-8", "surrogateescape")
        entry = folded.get(name.lower())
        if entry is None:
            folded[name.lower()] = (name.decode("utf-8", "surrogateescape"), [text])
        else:
            entry[1].append(text)
    return {name: ", ".join(values) for name, values in folded.values()}


def _headers(fields: list[tuple[str, str]]) -> tuple[dict[str, str], list[str]]:
    """Lower-cased names; a repeated header's values joined with ", " (as HTTP allows; once, at
    the end: joined as they came, 50,000 fields took 10 s); and the names sent more than
    once."""
    values: dict[str, list[str]] = {}
    repeated: list[str] = []
    for raw_name, raw_value in fields:
        name = raw_name.lower()
        value = raw_value.encode("latin-1").decode("utf-8", "replace")
        if name in values:
            values[name].append(value)
            repeated.append(name)
        else:
            values[name] = [value]
    return {name: ", ".join(sent) for name, sent in values.items()}, repeated


def _multi_valued(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    query: dict[str, list[str]] = {}
    for key, value in pairs:
        query.setdefault(key, []).append(value)
    return query


def parse_body(
    content_type: str,
    raw: bytes,
    strict: bool = True,
    kind: str | None = None,
    lists: bool = False,
) -> tuple[Any, str, str | None]:
    """Parse by declared content type (or as `kind`, how the vendor reads it); a body that does
    not parse is kept as text, with why. strict (a request): JSON that repeats a key, or a form
    that repeats a plain key (unless `lists`: the vendor's own list notation), raises
    Unreadable."""
    if not raw:
        return None, "empty", None
    if kind is None:
        kind = media_type(content_type, raw) or ("multipart" * _is_multipart(content_type))
    text = raw.decode("utf-8", errors="replace")
    if kind == "multipart":
        try:
            return parse_multipart(raw, content_type, lists or not strict, strict), "form", None
        except ValueError as e:
            return text, "text", f"multipart body not parsed: {e}"
    if kind == "json":
        try:
            return within_depth(_parse_json(text, strict)), "json", None
        except ValueError as e:
            return text, "text", f"body is not valid JSON: {e}"
    if kind == "form":
        try:
            return parse_form(text, lists or not strict, strict), "form", None
        except ValueError as e:  # too many fields
            return text, "text", f"form body not parsed: {e}"
    if kind == "xml":
        try:
            return parse_xml(raw), "xml", None
        except ValueError as e:
            return text, "text", f"body is not XML Airlock parses: {e}"
    return text, "text", None


def _one_media_type(content_type: str) -> None:
    """Content-Type names one media type: two (a list, or two headers folded into one) leave
    the upstream to pick the one it reads the body as."""
    if "," in content_type.split(";", 1)[0]:
        raise Unreadable(
            f"the Content-Type {content_type[:80]!r} names several media types: the upstream "
            "could read the body as another one than Airlock"
        )


_UTF8 = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})


def _read_as_utf8(content_type: str) -> None:
    """Airlock reads a JSON, form or XML body as UTF-8. One that declares another charset could
    say something else to an upstream that honours it: in UTF-7 a run inside a JSON string can
    decode to `","method":"tools/call",…` (the MCP TypeScript SDK decodes by the charset)."""
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        charset = value.strip().strip('"').lower()
        if name.strip().lower() == "charset" and charset not in _UTF8:
            raise Unreadable(
                f"the body declares the charset {charset[:40]!r}: Airlock reads JSON, form and "
                "XML bodies as UTF-8, and the upstream could read another request"
            )


def media_type(content_type: str, raw: bytes) -> str:
    """json, form, xml, or "" for a body Airlock does not parse."""
    media_type = content_type.split(";", 1)[0].strip().lower() or _sniff(raw)
    if "json" in media_type:  # application/json, *+json, application/x-amz-json-1.0, …
        return "json"
    if media_type == "application/x-www-form-urlencoded":
        return "form"
    if media_type in ("application/xml", "text/xml") or media_type.endswith("+xml"):
        return "xml"
    return ""


def _too_deep(kind: str) -> Unreadable:
    return Unreadable(f"the {kind} body is nested deeper than {MAX_DEPTH} levels")


def _too_many(kind: str) -> Unreadable:
    return Unreadable(f"the {kind} body holds more than {MAX_NODES} objects and lists")


def _parse_json(text: str, strict: bool = True) -> Any:
    try:
        hook = _object if strict else None
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=hook)
    except RecursionError:
        raise _too_deep("JSON") from None


def within_depth(value: Any) -> Any:
    """Refuse structures every later stage (mapping, redaction, the record) would recurse into
    past a sane depth, or walk past MAX_NODES objects and lists; checked without recursion."""
    level, nodes = [value], 0
    for _ in range(MAX_DEPTH + 1):
        containers = [node for node in level if isinstance(node, dict | list)]
        nodes += len(containers)
        if nodes > MAX_NODES:
            raise _too_many("JSON")
        level = [
            child
            for node in containers
            for child in (node.values() if isinstance(node, dict) else node)
        ]
        if not level:
            return value
    raise _too_deep("JSON")


def _sniff(raw: bytes) -> str:
    """No content type claimed (boto3's DeleteObjects, Lambda Invoke): go by the first byte."""
    start = raw.lstrip()[:1]
    if start == b"<":
        return "application/xml"
    if start in (b"{", b"["):
        return "application/json"
    # name=value&…: read as a form, as form APIs' servers may (not past the parsing limit: a
    # large upload of base64 text would look like one)
    if len(raw) <= MAX_PARSED_BODY and _FORM_LIKE.match(raw):
        return "application/x-www-form-urlencoded"
    return ""


_FORM_LIKE = re.compile(rb"[^\s=&]+=\S*\Z")


def parse_xml(raw: bytes) -> dict[str, Any]:
    """Elements become objects, repeated elements lists, leaves their text; namespaces and
    attributes are dropped: <Delete><Object><Key>a</Key></Object>…</Delete> is
    {"Delete": {"Object": [{"Key": "a"}, …]}}. Documents with a DTD are not parsed."""
    root = _xml_tree(raw)
    level, nodes = [root], 1
    for _ in range(MAX_DEPTH):
        level = [child for element in level for child in element]
        nodes += len(level)
        if nodes > MAX_NODES:
            raise _too_many("XML")
        if not level:
            return {_local_name(root.tag): _xml_value(root)}
    raise _too_deep("XML")


def _xml_tree(raw: bytes) -> ElementTree.Element:
    """The element tree; a document type declaration (where entities are declared) raises
    ValueError as expat meets it, whatever the document's encoding: a byte search for
    `<!DOCTYPE` missed it in UTF-16, where 802 bytes of entities expanded to 8 MB. (expat stops
    at once on a handler's exception; ElementTree's own parser goes on expanding.)"""
    builder = ElementTree.TreeBuilder()
    parser = expat.ParserCreate(namespace_separator="}")
    parser.buffer_text = True
    parser.StartDoctypeDeclHandler = _refuse_dtd
    parser.EntityDeclHandler = _refuse_dtd
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(raw, True)
    except expat.ExpatError as e:
        raise ValueError(str(e)) from e
    return builder.close()


def _refuse_dtd(*_: Any) -> None:
    raise ValueError("documents with a DTD or entities are refused")


def _local_name(tag: str) -> str:
    return tag.rpartition("}")[2]


def _xml_value(element: ElementTree.Element) -> Any:
    children = list(element)
    if not children:
        return (element.text or "").strip()
    value: dict[str, Any] = {}
    for child in children:
        name, child_value = _local_name(child.tag), _xml_value(child)
        if name not in value:
            value[name] = child_value
        elif isinstance(value[name], list):
            value[name].append(child_value)
        else:
            value[name] = [value[name], child_value]
    return value


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object; one that repeats a key is refused: parsers differ on which value counts
    (Python's the last, others the first), so the upstream could act on another one."""
    value = dict(pairs)
    if len(value) == len(pairs):
        return value
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise Unreadable(
                f"the JSON body repeats the key {key[:60]!r}: upstreams differ on which value "
                "counts"
            )
        seen.add(key)
    return value


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON, and NaN would make every threshold comparison false.
    raise ValueError(f"{name} is not a JSON number")


def parse_form(text: str, lists: bool = False, strict: bool = True) -> dict[str, Any]:
    """Form bodies with the bracket notation SDKs send: a[b]=1&l[0]=x&l[]=y → {a:{b:1}, l:[x,y]}.

    A key sent twice (a=1&a=2, a[b]=1&a[b]=2) is refused (Unreadable): upstreams differ on which
    value counts. With `lists` (a vendor whose list notation it is) a plain key repeated becomes
    a list, like the query string. So is a Rack-style `;` between fields (`currency=usd;amount=…`:
    Rack before 3 splits there, Python and Rack 3 do not), and, `strict` (a request), a key
    whose brackets are misplaced (`amount]`). Raises ValueError past MAX_FORM_FIELDS fields.
    """
    return _form_from_pairs(
        parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS), lists, strict
    )


def _form_from_pairs(
    pairs: Iterable[tuple[str, str]], lists: bool, strict: bool = True
) -> dict[str, Any]:
    root: dict[str, Any] = {}
    next_index: dict[int, int] = {}  # per node, for "a[]" appends: O(1), not a rescan
    nodes = 0
    for key, value in pairs:
        if ";" in key or ";" in value:
            _no_semicolon_fields(key, value)
        if strict and ("[" in key or "]" in key):
            _well_bracketed(key)
        head, _, rest = key.partition("[")
        if rest and key.endswith("]"):
            parts = [head, *_BRACKETS.findall("[" + rest)]
        elif "." in key.strip("."):
            parts = _dotted_parts(key)
        else:
            _add_plain(root, key, value, lists)
            continue
        if len(parts) > MAX_DEPTH:
            raise _too_deep("form")
        nodes += _set_nested(root, parts, value, next_index, key)
        if nodes > MAX_NODES:
            raise _too_many("form")
    return {key: _lists_from_indexes(value) for key, value in root.items()}


_SEMICOLON_FIELD = re.compile(r";[^;&=]*=")


def _no_semicolon_fields(key: str, value: str) -> None:
    if _SEMICOLON_FIELD.search(key) or _SEMICOLON_FIELD.search(value):
        raise Unreadable(
            f"the form field {key[:60]!r} holds a ';' before another 'name=': some servers "
            "(Rack before 3) split fields there, others do not"
        )


# A name, then any number of [segments]: `amount`, `metadata[a]`, `items[0][price]`, `expand[]`.
_BRACKETED_KEY = re.compile(r"[^\[\]]+(?:\[[^\[\]]*\])*\Z")


def _well_bracketed(key: str) -> None:
    """Brackets anywhere else are read differently upstream: Rack 2 reads `amount]`, `[amount]`
    and `amount]]` as `amount` (the last value counts) and `a[b` as `a[b]`, where Airlock
    read other keys, so `amount=500&amount]=5000000` charged 5,000,000."""
    if not _BRACKETED_KEY.match(key):
        raise Unreadable(
            f"the form field {key[:60]!r} has misplaced brackets: form servers read it as "
            "another field (Rack reads `amount]` and `[amount]` as `amount`); a name's "
            "brackets close each segment, as in `metadata[key]` or `items[0][price]`"
        )


def _repeated(key: str) -> Unreadable:
    return Unreadable(
        f"the form repeats the key {key[:60]!r}: upstreams differ on which value counts"
    )


def _is_multipart(content_type: str) -> bool:
    return content_type.lstrip()[:19].lower() == "multipart/form-data"


_BOUNDARY = re.compile(r';\s*boundary=(?:"([^"]+)"|([^\s;]+))', re.IGNORECASE)
_BOUNDARY_PARAMETER = re.compile(r"(?:^|[;\s])boundary\s*=", re.IGNORECASE)
# Every `name` or `name*` parameter, quoted or not, wherever it stands (inside another
# parameter's quotes too: Rack's `.*;\s*name=` finds it there): a part must have one.
_NAME_PARAMETER = re.compile(rb"(?:^|[;\s])name\*?\s*=", re.IGNORECASE)
_PART_NAME = re.compile(rb';\s*name="([^"\\]*)"\s*(?:;|$)', re.IGNORECASE)
_PART_FILE = re.compile(rb"(?:^|;)\s*filename\*?=", re.IGNORECASE)


def parse_multipart(
    raw: bytes, content_type: str, lists: bool = False, strict: bool = True
) -> dict[str, Any]:
    """A multipart/form-data body's fields, as a form's (`amount`, `metadata[order]`); a file
    part stands as its size and hash. Raises ValueError for a body not framed as its boundary
    says, Unreadable (strict: a request) for a field sent twice or a part whose name upstreams
    read differently: two `name` parameters (the first counts here, the last in Rack), an
    unquoted one, two Content-Disposition lines, a boundary given twice."""
    ambiguous = Unreadable if strict else ValueError
    found = _BOUNDARY.search(content_type)
    if found is None:
        raise ValueError("no boundary in its Content-Type")
    if len(_BOUNDARY_PARAMETER.findall(content_type)) > 1:
        raise ambiguous("the multipart Content-Type gives its boundary twice")
    # A delimiter starts a line (RFC 2046): `--b` inside a value or after a preamble's text
    # on its line is content.
    delimiter = b"\r\n--" + (found.group(1) or found.group(2)).encode("latin-1")
    chunks = (b"\r\n" + raw).split(delimiter)
    if len(chunks) < 3 or not chunks[-1].startswith(b"--"):
        raise ValueError("its closing boundary is missing")
    if len(chunks) > MAX_FORM_FIELDS + 2:
        raise ValueError(f"more than {MAX_FORM_FIELDS} parts")
    pairs = []
    for chunk in chunks[1:-1]:
        if not chunk.startswith(b"\r\n"):
            raise ValueError("a delimiter is followed by more than its line's end")
        head, separator, content = chunk[2:].partition(b"\r\n\r\n")
        if not separator:
            raise ValueError("a part is not framed as a part")
        lines = head.split(b"\r\n")
        if any(line[:1] in (b" ", b"\t") for line in lines):
            raise ambiguous("a multipart part folds a header line")
        dispositions = [
            line.split(b":", 1)[1] for line in lines
            if line.split(b":", 1)[0].strip().lower() == b"content-disposition"
        ]  # fmt: skip
        if not dispositions:
            raise ValueError("a part has no Content-Disposition name")
        if len(dispositions) > 1:
            raise ambiguous("a multipart part has two Content-Disposition lines")
        disposition = dispositions[0]
        names = len(_NAME_PARAMETER.findall(disposition))
        if names > 1:
            raise ambiguous(
                "a multipart part names its field twice: upstreams differ on which name counts"
            )
        name = _PART_NAME.search(disposition)
        if names == 1 and name is None:
            raise ambiguous(
                "a multipart part's name is not one quoted string: upstreams read it differently"
            )
        if name is None:
            raise ValueError("a part has no Content-Disposition name")
        field = name.group(1).decode("utf-8", "replace")
        if _PART_FILE.search(disposition):
            pairs.append((field, _uninspected(content)))
        else:
            pairs.append((field, content.decode("utf-8", "replace")))
    return _form_from_pairs(pairs, lists, strict)


def _dotted_parts(key: str) -> list[str]:
    """AWS query protocol: `TagSpecification.1.Tag.1.Key` and `Tags.member.1.Key` are lists,
    numbered from 1; other dotted names are nested objects (`LaunchTemplate.Version`)."""
    parts = []
    for part in key.split("."):
        if part == "member":
            continue
        parts.append(str(int(part) - 1) if part.isdigit() and int(part) > 0 else part)
    return parts


def _add_plain(root: dict[str, Any], key: str, value: str, lists: bool) -> None:
    if key not in root:
        root[key] = value
    elif not lists or isinstance(root[key], dict):
        raise _repeated(key)
    elif isinstance(root[key], list):
        root[key].append(value)
    else:
        root[key] = [root[key], value]


def _set_nested(
    root: dict[str, Any], parts: list[str], value: str, next_index: dict[int, int], key: str
) -> int:
    """Set the value; how many objects that made."""
    node, made = root, 0
    for i, part in enumerate(parts):
        if part == "":  # "a[]" appends: take the next free index so order is kept
            index = next_index.get(id(node))
            if index is None:  # first append here: after any explicit indexes
                index = sum(1 for k in node if k.isdigit())
            next_index[id(node)] = index + 1
            part = str(index)
        if i == len(parts) - 1:
            if part in node:  # a[b]=1&a[b]=2, or a[b][c]=1&a[b]=2
                raise _repeated(key)
            node[part] = value
            return made
        child = node.get(part)
        if child is None:
            child = {}
            node[part] = child
            made += 1
        elif not isinstance(child, dict):  # a=1&a[b]=2: a value and an object
            raise _repeated(key)
        node = child


def _lists_from_indexes(node: Any) -> Any:
    """Dicts whose keys are all small integers were arrays in the SDK: make them lists again."""
    if not isinstance(node, dict):
        return node
    converted = {key: _lists_from_indexes(value) for key, value in node.items()}
    if converted and all(k.isdigit() and int(k) < _MAX_INDEX for k in converted):
        return [converted[k] for k in sorted(converted, key=int)]
    return converted
