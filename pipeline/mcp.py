"""MCP over streamable HTTP: JSON-RPC 2.0 messages POSTed to an MCP server, recognised by their
shape (MCP servers live on any host and path). The shape alone never overrides what a vendor's
API makes of the request: pipeline/mappings.py (MappingIndex.mcp_messages) decides on which
hosts it counts.

`tools/call` is what acts on a system of record: it maps to an action (pipeline/mappings.py:
`mcp.<server>.<tool>` by default, with the tool's arguments as params; a mapping with `tool:`
can name it canonically). The protocol's own methods (`initialize`, `tools/list`, reads of
resources and prompts, notifications, a client's answers to the server) pass as reads. A
method MCP does not define is a tool call of unknown meaning.
"""

from __future__ import annotations

import json
import re
from typing import Any

from airlock.pipeline.document import Document
from airlock.pipeline.redaction import redacted_prefix

JSONRPC = "2.0"
TOOLS_CALL = "tools/call"
# The client-to-server methods of MCP up to its 2026-07-28 revision (as mcp-types 2.3.0 lists
# them), tools/call aside: the protocol's own, which change nothing on a system of record.
READ_METHODS = frozenset(
    {
        "initialize",
        "server/discover",
        "subscriptions/listen",
        "ping",
        "tools/list",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
        "prompts/list",
        "prompts/get",
        "completion/complete",
        "logging/setLevel",
        "tasks/get",
        "tasks/list",
        "tasks/result",
        "tasks/cancel",
    }
)
_MCP_PREFIXES = (
    "notifications/", "tools/", "resources/", "prompts/", "completion/", "tasks/", "server/",
    "subscriptions/",
)  # fmt: skip
# The name that the `Mcp-Name` header repeats, by method (MCP 2026-07-28 revision).
_NAMED_BY = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}


class McpError(ValueError):
    """A message that claims to be MCP but cannot be read as the protocol defines it."""


# The members JSON-RPC 2.0 defines for a request, a notification and a response. MCP adds none
# (its metadata goes in `params._meta`): a body with other members is some API's own JSON that
# happens to carry `jsonrpc` and `method`, not an MCP message.
JSONRPC_MEMBERS = frozenset({"jsonrpc", "id", "method", "params", "result", "error"})


def jsonrpc_messages(document: Document) -> list[dict[str, Any]] | None:
    """The messages of a request shaped like MCP (a JSON-RPC batch has several), else None.
    The shape only: whether the request is judged as MCP depends on its host too."""
    if document["method"] != "POST" or document.get("body_format") != "json":
        return None
    body = document["body"]
    messages = body if isinstance(body, list) else [body]
    if not messages or not all(
        isinstance(m, dict) and m.get("jsonrpc") == JSONRPC and m.keys() <= JSONRPC_MEMBERS
        for m in messages
    ):
        return None
    return messages if any(_speaks_mcp(m) for m in messages) else None


def extra_members(document: Document) -> list[str]:
    """Members JSON-RPC does not define in a request otherwise shaped like one (`"jsonrpc":
    "2.0"` and a `method`): a server may run the call it names all the same. Sorted, or []."""
    if document["method"] != "POST" or document.get("body_format") != "json":
        return []
    body = document["body"]
    found: set[str] = set()
    for message in body if isinstance(body, list) else [body]:
        if isinstance(message, dict) and message.get("jsonrpc") == JSONRPC and "method" in message:
            found.update(k for k in message if k not in JSONRPC_MEMBERS)
    return sorted(found)


# The params members MCP defines (client requests and notifications, 2026-07-28 revision) and
# `_meta`'s: a key spelt otherwise that a case-insensitive server reads as one is refused.
PARAM_NAMES = frozenset(
    {
        "_meta", "name", "arguments", "task", "uri", "cursor", "protocolVersion", "capabilities",
        "clientInfo", "ref", "argument", "context", "level", "taskId", "requestId", "reason",
        "progressToken", "progress", "total", "message",
    }
)  # fmt: skip
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_ONE_KEY = "which servers that match keys without regard to case read as"


def folded(key: str) -> str:
    """A JSON key as servers that match keys without regard to case read it. Go's encoding/json
    (mark3labs/mcp-go, the official go-sdk before v1.3.1) compares by Unicode simple case
    folding: `Name` is `name`, and U+017F (long s) and U+212A (Kelvin sign) are `s` and `k`;
    .NET's ignore-case compares upper cases (U+0131, dotless i, is `i`). Upper case then
    casefold equates all that either does (checked against every code point); Go reads a lone
    surrogate escape as U+FFFD."""
    return _SURROGATE.sub("\ufffd", key).upper().casefold()


_FOLDED_PARAM_NAMES = {folded(name): name for name in PARAM_NAMES}


def ambiguous_key(message: dict[str, Any]) -> str | None:
    """Why a message cannot be judged as it runs, or None. Such a server takes the last of two
    keys it reads as one (`name` and `Name`) and reads `Arguments` as `arguments`, where Airlock
    judges the exact key: an object at any depth with two such keys is refused, and so are
    params (or their `_meta`) with a key spelt otherwise than the member MCP defines."""
    for where, members in _params_and_meta(message):
        for key in members:
            meant = _FOLDED_PARAM_NAMES.get(folded(key))
            if meant is not None and key != meant:
                return f"{where} has the key {key[:60]!r}, {_ONE_KEY} {meant!r}"
    containers: list[tuple[str, Any]] = [("", message)]
    while containers:  # without recursion: a body may nest as deep as the parser allows
        where, value = containers.pop()
        items = value.items() if isinstance(value, dict) else enumerate(value)
        clash = _colliding_keys(value) if isinstance(value, dict) else None
        if clash is not None:
            keys = f"the keys {clash[0][:60]!r} and {clash[1][:60]!r}"
            return f"{where or 'the message'} has {keys}, {_ONE_KEY} one"
        containers.extend(
            (f"{where}.{key}" if where else str(key), item)
            for key, item in items
            if isinstance(item, dict | list)
        )
    return None


def _params_and_meta(message: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    params = message.get("params")
    if not isinstance(params, dict):
        return []
    meta = params.get("_meta")
    return [("params", params)] + ([("params._meta", meta)] if isinstance(meta, dict) else [])


def _colliding_keys(value: dict[str, Any]) -> tuple[str, str] | None:
    seen: dict[str, str] = {}
    for key in value:
        first = seen.setdefault(folded(key), key)
        if first != key:
            return first, key
    return None


def is_session_request(document: Document) -> bool:
    """Shaped like a client opening the server's event stream (GET) or ending its session
    (DELETE): the header only, which any request can carry."""
    return document["method"] in ("GET", "DELETE") and "mcp-session-id" in document["headers"]


def mcp_message(document: Document) -> str | None:
    """What a request would be as MCP, for one judged as the plain request it is (a server no
    mapping declares): the first message's method, "(answer)", or the session's GET or
    DELETE; None when it does not look like MCP."""
    if is_session_request(document):
        return f"({document['method']} session)"
    messages = jsonrpc_messages(document)
    if not messages:
        return None
    method = messages[0].get("method")
    return method if isinstance(method, str) else "(answer)"


def is_batch(document: Document) -> bool:
    return isinstance(document["body"], list)


def _speaks_mcp(message: dict[str, Any]) -> bool:
    method = message.get("method")
    if isinstance(method, str):
        return method in READ_METHODS or method.startswith(_MCP_PREFIXES)
    # A client's answer to a server's request (sampling, elicitation, roots).
    return "id" in message and ("result" in message or "error" in message)


def is_read(message: dict[str, Any]) -> bool:
    method = message.get("method")
    if method is None:
        return True  # an answer to the server
    if not isinstance(method, str):
        return False
    return method in READ_METHODS or method.startswith("notifications/")


def tool_call(message: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(tool name, arguments) of a `tools/call`."""
    params = message.get("params")
    if not isinstance(params, dict):
        raise McpError("tools/call without params")
    name = params.get("name")
    if not isinstance(name, str) or not name:
        raise McpError("tools/call without a tool name (params.name)")
    arguments = params.get("arguments", {})
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise McpError(f"tools/call {name!r}: arguments must be an object")
    return name, arguments


def header_problem(headers: dict[str, str], messages: list[dict[str, Any]]) -> str | None:
    """`Mcp-Method` / `Mcp-Name` say what the body does, for gateways that do not read bodies;
    an upstream may route by them. Headers that disagree with the body are refused: what is
    judged must be what runs."""
    said_method, said_name = headers.get("mcp-method"), headers.get("mcp-name")
    if said_method is None and said_name is None:
        return None
    for message in messages:
        method = message.get("method")
        if said_method is not None and said_method != method:
            return f"the Mcp-Method header {said_method!r} does not match the body's {method!r}"
        if said_name is not None:
            key = _NAMED_BY.get(method) if isinstance(method, str) else None
            params = message.get("params")
            name = params.get(key) if key and isinstance(params, dict) else None
            if said_name != name:
                return f"the Mcp-Name header {said_name!r} does not match the body's {name!r}"
    return None


def without_ids(body: Any) -> Any:
    """The body without what changes when a client calls the same tool again (the JSON-RPC id,
    a progress token): an approval binds to the call, and the call's retry joins it."""
    if isinstance(body, list):
        return [without_ids(message) for message in body]
    if not isinstance(body, dict):
        return body
    kept = {key: value for key, value in body.items() if key != "id"}
    params = kept.get("params")
    if isinstance(params, dict) and "_meta" in params:
        kept["params"] = {key: value for key, value in params.items() if key != "_meta"}
    return kept


# --- answers the model reads -----------------------------------------------------------------

REFUSED = -32001  # JSON-RPC's range for implementation-defined errors: Airlock refused it
MAX_OUTCOME_TEXT = 1_000  # characters of a tool's answer kept as the run's evidence


def refusal_answers(body: Any, text: str, meta: dict[str, Any]) -> Any:
    """What an MCP client hands the model for a refused request: a tool call's result with
    `isError: true` and Airlock's reason as its text (the model reads it and can adapt), a JSON-RPC
    error for any other request; notifications and client answers get none. None when nothing
    in the body expects an answer."""
    messages = body if isinstance(body, list) else [body]
    answers = [
        _refusal(message, text, meta)
        for message in messages
        if isinstance(message, dict) and "method" in message and "id" in message
    ]
    if not answers:
        return None
    return answers if isinstance(body, list) else answers[0]


def _refusal(message: dict[str, Any], text: str, meta: dict[str, Any]) -> dict[str, Any]:
    if message["method"] == TOOLS_CALL:
        # resultType: required from the 2026-07-28 revision; earlier ones allow extra fields.
        result = {
            "content": [{"type": "text", "text": text}],
            "isError": True,
            "resultType": "complete",
        }
        return {"jsonrpc": JSONRPC, "id": message["id"], "result": {**result, "_meta": meta}}
    error = {"code": REFUSED, "message": text, "data": meta}
    return {"jsonrpc": JSONRPC, "id": message["id"], "error": error}


def tool_outcome(
    request_body: Any, response_body: bytes, content_type: str
) -> dict[str, Any] | None:
    """What the server answered to a request's tool calls, read from its JSON or its event
    stream: succeeded or failed (a result with `isError`, a JSON-RPC error) and the start of
    its text, as the run's evidence. None for a request without tool calls."""
    calls = request_body if isinstance(request_body, list) else [request_body]
    ids = [m.get("id") for m in calls if isinstance(m, dict) and m.get("method") == TOOLS_CALL]
    if not ids:
        return None
    answers = {
        json.dumps(a.get("id")): a for a in _answers(response_body, content_type)
    }  # by id: JSON-RPC ids are strings or numbers
    found = [_outcome_of(answers.get(json.dumps(call_id))) for call_id in ids]
    if len(found) == 1:
        return found[0]
    return {"result": _overall(found), "calls": found}


def _answers(body: bytes, content_type: str) -> list[dict[str, Any]]:
    if "text/event-stream" in content_type:
        values = [_json(event) for event in _sse_data(body.decode("utf-8", "replace"))]
    else:
        values = [_json(body.decode("utf-8", "replace"))]
    answers: list[dict[str, Any]] = []
    for value in values:
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict) and ("result" in item or "error" in item):
                answers.append(item)
    return answers


def _sse_data(text: str) -> list[str]:
    """The data of each server-sent event (its `data:` lines joined, as EventSource does)."""
    events, data = [], []
    for line in text.splitlines():
        if not line:
            if data:
                events.append("\n".join(data))
            data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    if data:
        events.append("\n".join(data))
    return events


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # nested past Python's stack: read as no answer
        return None


def _outcome_of(answer: dict[str, Any] | None) -> dict[str, Any]:
    if answer is None:
        return {"result": "unknown"}  # no answer to this call in the response
    if "error" in answer:
        error = answer["error"] if isinstance(answer["error"], dict) else {}
        message = redacted_prefix(str(error.get("message", "")), MAX_OUTCOME_TEXT)
        return {"result": "failed", "error": {"code": error.get("code"), "message": message}}
    result = answer["result"] if isinstance(answer["result"], dict) else {}
    content = result.get("content") if isinstance(result.get("content"), list) else []
    texts = [c.get("text") for c in content if isinstance(c, dict) and c.get("type") == "text"]
    text = redacted_prefix("\n".join(t for t in texts if isinstance(t, str)), MAX_OUTCOME_TEXT)
    outcome = {"result": "failed" if result.get("isError") is True else "succeeded"}
    return {**outcome, "text": text} if text else outcome


def _overall(found: list[dict[str, Any]]) -> str:
    results = {f["result"] for f in found}
    return results.pop() if len(results) == 1 else "mixed"


# --- held calls kept alive (SSE polling, MCP 2025-11-25 and later) ----------------------------

RESUMABLE_SINCE = "2025-11-25"  # the revision where clients resume a closed stream (GET)
_VERSION_META = "io.modelcontextprotocol/protocolVersion"


def resumable_call(headers: dict[str, str], body: Any) -> Any:
    """The progress token (or True) of a single tool call whose client can be kept waiting on
    an event stream it resumes (it accepts text/event-stream and speaks a revision with SSE
    polling); None when the call must be answered in one piece."""
    if "text/event-stream" not in headers.get("accept", ""):
        return None
    if not isinstance(body, dict) or body.get("method") != TOOLS_CALL or "id" not in body:
        return None
    params = body.get("params") if isinstance(body.get("params"), dict) else {}
    meta = params.get("_meta") if isinstance(params.get("_meta"), dict) else {}
    version = headers.get("mcp-protocol-version") or meta.get(_VERSION_META)
    if not isinstance(version, str) or version < RESUMABLE_SINCE:
        return None
    token = meta.get("progressToken")
    return token if isinstance(token, str | int) and not isinstance(token, bool) else True


def keepalive_stream(event_id: str, token: Any, progress: int, message: str) -> bytes:
    """One leg of a held call's stream: a progress notification when the client gave a token,
    then a priming event (an id and no data) before the stream closes: the client reconnects
    with Last-Event-ID and waits on the next leg."""
    events = []
    if token is not True:
        params = {"progressToken": token, "progress": progress, "message": message}
        notification = {"jsonrpc": JSONRPC, "method": "notifications/progress", "params": params}
        events.append(sse_event(json.dumps(notification)))
    events.append(f"id: {event_id}\nretry: 100\ndata: \n\n".encode())
    return b"".join(events)


def sse_event(data: str) -> bytes:
    """A message event (one `data:` line per line of the data)."""
    lines = "".join(f"data: {line}\n" for line in data.splitlines() or [""])
    return f"event: message\n{lines}\n".encode()
