"""Tool calls that never cross the proxy (a shell command, a query, an internal function), as the
Guard API receives them: the agent names the canonical action itself, and the call becomes a
document and an action that the same policies, risk and budgets judge.

The document stands in for an HTTP request so that one record, one approval queue and one
audit chain hold both: method GUARD, host the provider (`guard` when none is given), path the
action, the params as its JSON body, the idempotency key as its header. Its context carries
`source: guard`, which rules can match.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from airlock.pipeline.document import Document
from airlock.pipeline.mappings import Action, MappingIndex

GUARD = "guard"
ACTION_NAME = re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)*\Z")  # run_shell, mcp.github.create_issue
DEFAULT_CATEGORY, DEFAULT_SENSITIVITY = "tool", "high"  # an action no mapping describes


@dataclass(frozen=True, slots=True)
class ToolCall:
    action: str
    target: str
    params: dict[str, Any] = field(default_factory=dict)
    provider: str | None = None
    idempotency_key: str | None = None
    context: dict[str, Any] = field(default_factory=dict)


def tool_document(call: ToolCall, agent: str) -> Document:
    body = json.dumps(call.params, sort_keys=True)
    headers = {"idempotency-key": call.idempotency_key} if call.idempotency_key else {}
    return {
        "method": "GUARD",
        "scheme": GUARD,
        "host": call.provider or GUARD,
        "port": 0,
        "authority": "",
        "path": f"/{call.action}",
        "query": {},
        "headers": headers,
        "body": call.params,
        "body_format": "json",
        "body_size": len(body),
        "agent": agent,
    }


def tool_action(call: ToolCall, mappings: MappingIndex) -> Action:
    """The call as policies see it; its category and sensitivity are those the mappings give
    the same action (so a rule on delete_record governs both), else a high-sensitivity tool."""
    described = mappings.describing(call.action)
    category = described.category if described else DEFAULT_CATEGORY
    sensitivity = described.sensitivity if described else DEFAULT_SENSITIVITY
    context = {**call.context, "source": GUARD}
    return Action(
        call.action, call.provider or GUARD, category, sensitivity, call.target,
        dict(call.params), GUARD, context,
    )  # fmt: skip
