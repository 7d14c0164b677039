"""`airlock explain`: what Airlock would make of one request, without running the proxy.

The request comes as a curl command line, a raw HTTP request, or a HAR file entry. It goes
through the same stages as in the proxy (document, mapping, policy), and the report says which
mapping matched and why the others for that host did not.
"""

from __future__ import annotations

import base64
import json
import shlex
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from mitmproxy import http

from airlock.pipeline.document import Document, build_document
from airlock.pipeline.evaluation import Config, Evaluation, evaluate
from airlock.pipeline.redaction import redact_document, redact_value


class RequestFormatError(ValueError):
    """The input is not a request this command can read; the message says what was expected."""


# --- reading requests ------------------------------------------------------------------------


def parse_request(text: str, har_entry: int = 0) -> http.Request:
    stripped = text.lstrip()
    if stripped.startswith("curl ") or stripped == "curl":
        return from_curl(stripped)
    if stripped.startswith("{"):
        return from_har(stripped, har_entry)
    return from_raw_http(text)


_DATA_FLAGS = {"-d", "--data", "--data-raw", "--data-ascii", "--data-binary", "--data-urlencode"}
_IGNORED_WITH_VALUE = {
    "-o", "--output", "-m", "--max-time", "--connect-timeout", "-x", "--proxy",
    "--cacert", "-A", "--user-agent", "-e", "--referer", "-w", "--write-out",
}  # fmt: skip


def from_curl(command: str) -> http.Request:
    try:
        words = shlex.split(command.replace("\\\n", " "))
    except ValueError as e:
        raise RequestFormatError(f"cannot split the curl command: {e}") from e
    method, url, headers, data, json_body, as_query = None, None, [], [], None, False
    i = 1
    while i < len(words):
        word = words[i]
        value = words[i + 1] if i + 1 < len(words) else None
        if word in ("-X", "--request"):
            method, i = value, i + 2
        elif word in ("-H", "--header"):
            name, _, header_value = (value or "").partition(":")
            headers.append((name.strip(), header_value.strip()))
            i += 2
        elif word in _DATA_FLAGS:
            data.append(value or "")
            i += 2
        elif word == "--json":
            json_body, i = value or "", i + 2
        elif word in ("-u", "--user"):
            token = base64.b64encode((value or "").encode()).decode()
            headers.append(("Authorization", f"Basic {token}"))
            i += 2
        elif word in ("-G", "--get"):
            as_query, i = True, i + 1
        elif word == "--url":
            url, i = value, i + 2
        elif word in _IGNORED_WITH_VALUE:
            i += 2
        elif word.startswith("-"):
            i += 1  # flags without a value: -s, -v, -k, --compressed, ...
        else:
            url, i = word, i + 1
    if not url:
        raise RequestFormatError("the curl command has no URL")
    if "://" not in url:
        url = "https://" + url
    body = b""
    names = {name.lower() for name, _ in headers}
    if json_body is not None:
        body = json_body.encode()
        if "content-type" not in names:
            headers.append(("Content-Type", "application/json"))
    elif data and as_query:
        url += ("&" if "?" in url else "?") + "&".join(data)
    elif data:
        body = "&".join(data).encode()
        if "content-type" not in names:
            headers.append(("Content-Type", "application/x-www-form-urlencoded"))
    method = method or ("POST" if body else "GET")
    return _request(method, url, body, headers)


def _request(method: str, url: str, body: bytes, headers: list[tuple[str, str]]) -> http.Request:
    if not urlsplit(url).hostname:
        raise RequestFormatError(f"no host in the URL {url!r}")
    try:
        encoded = [(n.encode("latin-1"), v.encode("utf-8")) for n, v in headers if n]
        return http.Request.make(method.upper(), url, body, encoded)
    except ValueError as e:  # UnicodeError too: a host label over 63 characters, say
        raise RequestFormatError(f"cannot read the URL {url[:200]!r}: {e}") from e


def from_raw_http(text: str) -> http.Request:
    head, _, body = text.replace("\r\n", "\n").partition("\n\n")
    lines = head.strip("\n").split("\n")
    try:
        method, target, _version = lines[0].split(" ", 2)
    except ValueError as e:
        raise RequestFormatError(
            "expected a raw HTTP request starting with a line like 'POST /v1/charges HTTP/1.1'"
        ) from e
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    host = next((v for n, v in headers if n.lower() == "host"), None)
    if target.startswith(("http://", "https://")):
        url = target
    elif host:
        url = f"https://{host}{target}"
    else:
        raise RequestFormatError("the raw request has neither an absolute URL nor a Host header")
    return _request(method, url, body.encode(), headers)


def from_har(text: str, entry: int) -> http.Request:
    try:
        entries = json.loads(text)["log"]["entries"]
        request = entries[entry]["request"]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise RequestFormatError(f"not a HAR file with an entry {entry}: {e}") from e
    headers = [(h["name"], h["value"]) for h in request.get("headers", [])]
    headers = [(n, v) for n, v in headers if not n.startswith(":")]  # HTTP/2 pseudo-headers
    post = request.get("postData") or {}
    body = post.get("text")
    if body is None and post.get("params"):
        body = urlencode([(p["name"], p.get("value", "")) for p in post["params"]])
    if post.get("mimeType") and not any(n.lower() == "content-type" for n, _ in headers):
        headers.append(("Content-Type", post["mimeType"]))
    return _request(request["method"], request["url"], (body or "").encode(), headers)


# --- explaining ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Explanation:
    document: Document  # redacted
    evaluation: Evaluation
    matched: str | None  # mapping id
    others: list[tuple[str, str]]  # (mapping id, why it did not match), in the order tried

    def as_json(self) -> dict[str, Any]:
        action, verdict = self.evaluation.action, self.evaluation.verdict
        return {
            "request": self.document,
            "operation": action.operation,
            "mapping": self.matched,
            "not_matched": [{"mapping": m, "why": why} for m, why in self.others],
            "action": action.action,
            "provider": action.provider,
            "category": action.category,
            "sensitivity": action.sensitivity,
            "target": action.target,
            "params": redact_value(action.params),
            "context": redact_value(action.context),
            "undo": action.undo,
            "decision": verdict.decision,
            "reason": verdict.reason,
            "rules": list(verdict.rules),
            "error": self.evaluation.error,
        }


def explain(request: http.Request, config: Config, agent: str = "anonymous") -> Explanation:
    document = build_document(request, agent)
    if "host" not in document["headers"]:
        document["headers"]["host"] = document["host"]
    evaluation = evaluate(document, config)
    others: list[tuple[str, str]] = []
    matched = evaluation.action.mapping_id
    by_operation = {m.id for m in config.mappings.mappings if m.operations}
    if matched in by_operation:  # matched by the operation's identity, before any URL mapping
        return Explanation(redact_document(document), evaluation, matched, others)
    matched = None
    for mapping in config.mappings.on_host(document["host"]):
        why = mapping.mismatch(document)
        if why is None:
            matched = mapping.id
            break
        others.append((mapping.id, why))
    return Explanation(redact_document(document), evaluation, matched, others)
