"""Stage 1: turn an HTTP request into the plain document that mappings and policies read.

The document is JSON-shaped (dicts, lists, strings, numbers) so JSONPath can address any part:
    {method, scheme, host, port, path, query, headers, body, body_format, body_size, agent}
body_format is json, form, xml, text (anything else, or a body that did not parse: then
body_error says why) or empty.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote
from xml.etree import ElementTree

from mitmproxy import http
from mitmproxy.net import encoding

Document = dict[str, Any]

_BRACKETS = re.compile(r"\[([^\[\]]*)\]")
_MAX_INDEX = 10_000  # a form key like items[99999999] must not allocate a huge list
MAX_FORM_FIELDS = 10_000


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


def build_document(request: http.Request | WireRequest, agent: str) -> Document:
    if isinstance(request, http.Request):
        request = WireRequest.of(request)
    path, _, raw_query = request.path.partition("?")
    headers = _headers(request.headers)
    # Where mitmproxy really connects (the CONNECT target), not the Host header the agent wrote:
    # evaluation refuses a request whose Host header disagrees.
    raw_body = _decoded(request.raw_content, headers.get("content-encoding"))
    body, body_format, body_error = parse_body(headers.get("content-type", ""), raw_body)
    document: Document = {
        "method": request.method.upper(),
        "scheme": request.scheme,
        "host": normalise_host(request.host),
        "port": request.port,
        "path": normalise_path(unquote(path)),
        "query": parse_query(raw_query),
        "headers": headers,
        "body": body,
        "body_format": body_format,
        "body_size": len(raw_body),
        "agent": agent,
    }
    if body_error:
        document["body_error"] = body_error
    return document


def _decoded(raw: bytes, content_encoding: str | None) -> bytes:
    """The body as the API reads it (gzip and the like undone); as sent if it does not decode."""
    if not content_encoding:
        return raw
    try:
        decoded = encoding.decode(raw, content_encoding)
    except ValueError:
        return raw
    return decoded if isinstance(decoded, bytes) else raw  # "utf8" is not a content encoding


def minimal_document(request: RequestLine, agent: str) -> Document:
    """Only what cannot fail to read: for recording a request whose full document could not be
    built."""
    return {
        "method": request.method.upper(),
        "scheme": request.scheme,
        "host": normalise_host(request.host),
        "port": request.port,
        "path": normalise_path(unquote(request.path.partition("?")[0])),
        "query": {},
        "headers": {},
        "body": None,
        "body_format": "empty",
        "body_size": 0,
        "agent": agent,
    }


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


def _headers(fields: list[tuple[str, str]]) -> dict[str, str]:
    """Lower-cased names; a repeated header's values joined with ", " (as HTTP allows)."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in fields:
        name = raw_name.lower()
        value = raw_value.encode("latin-1").decode("utf-8", "replace")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


def parse_query(raw: str) -> dict[str, list[str]]:
    """Query strings are multi-valued: ?a=1&a=2 gives {"a": ["1", "2"]}."""
    query: dict[str, list[str]] = {}
    for key, value in parse_qsl(raw, keep_blank_values=True):
        query.setdefault(key, []).append(value)
    return query


def parse_body(content_type: str, raw: bytes) -> tuple[Any, str, str | None]:
    """Parse by declared content type; a body that does not parse is kept as text, with why."""
    if not raw:
        return None, "empty", None
    media_type = content_type.split(";", 1)[0].strip().lower() or _sniff(raw)
    text = raw.decode("utf-8", errors="replace")
    if "json" in media_type:  # application/json, *+json, application/x-amz-json-1.0, …
        try:
            return json.loads(text, parse_constant=_reject_constant), "json", None
        except ValueError as e:
            return text, "text", f"body is not valid JSON: {e}"
    if media_type == "application/x-www-form-urlencoded":
        try:
            return parse_form(text), "form", None
        except ValueError as e:  # too many fields
            return text, "text", f"form body not parsed: {e}"
    if media_type in ("application/xml", "text/xml") or media_type.endswith("+xml"):
        try:
            return parse_xml(raw), "xml", None
        except ValueError as e:
            return text, "text", f"body is not XML Airlock parses: {e}"
    return text, "text", None


def _sniff(raw: bytes) -> str:
    """No content type claimed (boto3's DeleteObjects, Lambda Invoke): go by the first byte."""
    start = raw.lstrip()[:1]
    if start == b"<":
        return "application/xml"
    if start in (b"{", b"["):
        return "application/json"
    return ""


def parse_xml(raw: bytes) -> dict[str, Any]:
    """Elements become objects, repeated elements lists, leaves their text; namespaces and
    attributes are dropped: <Delete><Object><Key>a</Key></Object>…</Delete> is
    {"Delete": {"Object": [{"Key": "a"}, …]}}. Documents with a DTD are not parsed."""
    if b"<!doctype" in raw[:4096].lower() or b"<!entity" in raw.lower():
        raise ValueError("documents with a DTD or entities are refused")
    try:
        root = ElementTree.fromstring(raw)
    except ElementTree.ParseError as e:
        raise ValueError(str(e)) from e
    return {_local_name(root.tag): _xml_value(root)}


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


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON, and NaN would make every threshold comparison false.
    raise ValueError(f"{name} is not a JSON number")


def parse_form(text: str) -> dict[str, Any]:
    """Form bodies with the bracket notation SDKs send: a[b]=1&l[0]=x&l[]=y → {a:{b:1}, l:[x,y]}.

    A plain key repeated (a=1&a=2) becomes a list, like the query string. Raises ValueError past
    MAX_FORM_FIELDS fields.
    """
    root: dict[str, Any] = {}
    next_index: dict[int, int] = {}  # per node, for "a[]" appends: O(1), not a rescan
    for key, value in parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS):
        head, _, rest = key.partition("[")
        if rest and key.endswith("]"):
            _set_nested(root, [head, *_BRACKETS.findall("[" + rest)], value, next_index)
        elif "." in key.strip("."):
            _set_nested(root, _dotted_parts(key), value, next_index)
        else:
            _add_plain(root, key, value)
    return {key: _lists_from_indexes(value) for key, value in root.items()}


def _dotted_parts(key: str) -> list[str]:
    """AWS query protocol: `TagSpecification.1.Tag.1.Key` and `Tags.member.1.Key` are lists,
    numbered from 1; other dotted names are nested objects (`LaunchTemplate.Version`)."""
    parts = []
    for part in key.split("."):
        if part == "member":
            continue
        parts.append(str(int(part) - 1) if part.isdigit() and int(part) > 0 else part)
    return parts


def _add_plain(root: dict[str, Any], key: str, value: str) -> None:
    if key not in root:
        root[key] = value
    elif isinstance(root[key], list):
        root[key].append(value)
    else:
        root[key] = [root[key], value]


def _set_nested(
    root: dict[str, Any], parts: list[str], value: str, next_index: dict[int, int]
) -> None:
    node = root
    for i, part in enumerate(parts):
        if part == "":  # "a[]" appends: take the next free index so order is kept
            index = next_index.get(id(node))
            if index is None:  # first append here: after any explicit indexes
                index = sum(1 for k in node if k.isdigit())
            next_index[id(node)] = index + 1
            part = str(index)
        if i == len(parts) - 1:
            node[part] = value
            return
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child


def _lists_from_indexes(node: Any) -> Any:
    """Dicts whose keys are all small integers were arrays in the SDK: make them lists again."""
    if not isinstance(node, dict):
        return node
    converted = {key: _lists_from_indexes(value) for key, value in node.items()}
    if converted and all(k.isdigit() and int(k) < _MAX_INDEX for k in converted):
        return [converted[k] for k in sorted(converted, key=int)]
    return converted
