"""Tool calls that never cross the proxy (a shell command, a query, an internal function), as the
Guard API receives them: the agent names the canonical action itself, and the call becomes a
document and an action that the same policies, risk and budgets judge.

The document stands in for an HTTP request so that one record, one approval queue and one
audit chain hold both: method GUARD, host the provider (`guard` when none is given), path the
action, the target, context and server as its query, the params as its JSON body, the
idempotency key as its header. The request hash covers all of them, so an approval binds the
call's target and context as it binds its params. Its action's context carries `source: guard`,
which rules can match.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from typing import Any

from airlock.pipeline.document import Document
from airlock.pipeline.mappings import Action, MappingIndex
from airlock.pipeline.mcp import TOOLS_CALL

GUARD = "guard"
ACTION_NAME = re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)*\Z")  # run_shell, mcp.github.create_issue
DEFAULT_CATEGORY, DEFAULT_SENSITIVITY = "tool", "high"  # an action no mapping describes


@dataclass(frozen=True, slots=True)
class ToolCall:
    action: str  # with `server`: the name of one of that server's tools, mapped to an action
    target: str
    params: dict[str, Any] = field(default_factory=dict)
    provider: str | None = None
    idempotency_key: str | None = None
    context: dict[str, Any] = field(default_factory=dict)
    server: str | None = None


def tool_document(call: ToolCall, agent: str) -> Document:
    """A named tool of a server reads as an MCP `tools/call` (its arguments at
    `$.body.params.arguments`), so the `tool:` mappings that govern MCP over HTTP apply. What
    else the call names is its query: the request hash covers it (run_record.request_hash), so
    an approval for one target or context never releases the call on another."""
    body: Any = call.params
    if call.server is not None:
        arguments = {"name": call.action, "arguments": call.params}
        body = {"jsonrpc": "2.0", "method": TOOLS_CALL, "params": arguments}
    headers = {"idempotency-key": call.idempotency_key} if call.idempotency_key else {}
    query: dict[str, Any] = {"target": call.target, "context": call.context}
    if call.server is not None:
        query["server"] = call.server
    return {
        "method": "GUARD",
        "scheme": GUARD,
        "host": call.provider or call.server or GUARD,
        "port": 0,
        "authority": "",
        "path": f"/{call.server}/{call.action}" if call.server else f"/{call.action}",
        "query": query,
        "headers": headers,
        "body": body,
        "body_format": "json",
        "body_size": len(json.dumps(body, sort_keys=True)),
        "agent": agent,
    }


def tool_action(call: ToolCall, mappings: MappingIndex, document: Document | None = None) -> Action:
    """The call as policies see it. A server's tool is mapped by the `tool:` mappings (as over
    MCP); a named action takes the category and sensitivity the mappings give the same action
    (so a rule on delete_record governs both), else it is a high-sensitivity tool."""
    if call.server is not None:
        document = document or tool_document(call, "")
        mapped = mappings.map_tool(document, call.server, call.action, call.params)
        # A target the mapping reads from the tool's arguments is what the call acts on: it
        # wins over what the caller says (a merge on acme/prod named "sandbox" stays acme/prod).
        # A mapping that names none leaves the caller's (Claude Code's working directory).
        mapping = mappings.by_id.get(mapped.mapping_id or "")
        reads_target = mapping is not None and bool(mapping.target)
        return replace(
            mapped,
            target=mapped.target if reads_target else (call.target or mapped.target),
            provider=mapped.provider or call.provider or GUARD,
            context={**call.context, **mapped.context, "source": GUARD},
        )
    described = mappings.describing(call.action)
    category = described.category if described else DEFAULT_CATEGORY
    sensitivity = described.sensitivity if described else DEFAULT_SENSITIVITY
    context = {**call.context, "source": GUARD}
    return Action(
        call.action, call.provider or GUARD, category, sensitivity, call.target,
        dict(call.params), GUARD, context,
    )  # fmt: skip
