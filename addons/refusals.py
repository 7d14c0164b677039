"""Refusals as the agent's SDK reads them: a 403 (or 503, 409) whose body carries the reason in
the shapes SDKs take an error message from, or in the vendor's own error format when the
operation is known (pipeline/answers.py), so the SDK raises its own error with Airlock's reason.
"""

from __future__ import annotations

import json
from typing import Any

from mitmproxy import http

from airlock.pipeline.answers import load_answers, situation_of
from airlock.pipeline.document import readable_content
from airlock.pipeline.mcp import refusal_answers
from airlock.pipeline.run_record import RunSummary

# Slack's Web API answers every refusal 200 with `ok: false` and `error` a text, and its SDKs
# read it so: @slack/web-api raises its platform error carrying the text, and retries any other
# status (a 403 for ~30 minutes, its message only "statusCode = 403"; measured with 8.2.0);
# slack_sdk raises SlackApiError either way. Pending and failed answers stay 503: retried, as
# they should be.
SLACK_WEB_API = "slack."


class Refusals:
    def __init__(self) -> None:
        self.answers = load_answers()  # vendors' error formats, by operation

    def refuse(
        self,
        flow: http.HTTPFlow,
        run: RunSummary,
        reason: str,
        approval: dict[str, Any] | None = None,
        status: int = 403,
        headers: dict[str, str] | None = None,
        recorded: bool = True,
    ) -> None:
        """recorded=False: the store failed, so no request id is given (it names no record)."""
        request_id = run.id if recorded else None
        message = f"Airlock refused {run.action}: {reason}" + (
            f" (request {request_id})" if request_id else " (not recorded)"
        )
        flow.metadata["airlock_answered"] = True
        if not recorded:
            flow.metadata.pop("airlock", None)  # no id on the answer (outcomes.py)
        vendor_headers = {"Content-Type": "application/json"}
        body = airlock_body(run, reason, request_id, approval, status, message)
        content = (json.dumps(body, indent=2) + "\n").encode()
        vendor = self.answers.format_for(run.operation, flow.request.pretty_host)
        answers = mcp_answers(flow, run, message, request_id, approval)
        if answers is not None:  # an MCP client: a result the model reads, not an HTTP error
            status, content = 200, (json.dumps(answers) + "\n").encode()
        elif (run.operation or "").startswith(SLACK_WEB_API) and status < 500:
            status, content = (
                200,
                (json.dumps({**body, "error": message}, indent=2) + "\n").encode(),
            )
        elif vendor is not None:  # the SDK's own error type, with the reason in its message
            vendor_headers, content = vendor.render(
                situation_of(status, approval, recorded),
                message,
                request_id,
                approval["id"] if approval else None,
            )
        flow.response = http.Response.make(
            status,
            content,
            {
                **vendor_headers,
                "X-Airlock-Decision": run.decision,
                **({"X-Airlock-Request-Id": request_id} if request_id else {}),
                **({"X-Airlock-Approval-Id": approval["id"]} if approval else {}),
                **(headers or {}),
            },
        )


def mcp_body(flow: http.HTTPFlow, run: RunSummary) -> Any:
    """The JSON-RPC body of an MCP request, None for anything else (read only when needed:
    a refusal, a hold, an outcome), or one that cannot be read within MAX_PARSED_BODY (a
    refused bomb: decoded on the event loop, it would stall every flow)."""
    if run.protocol != "mcp":
        return None
    content = readable_content(flow.request)
    if content is None:
        return None
    try:
        return json.loads(content or b"")
    except ValueError:
        return None


def mcp_answers(
    flow: http.HTTPFlow, run: RunSummary, message: str, request_id: str | None,
    approval: dict[str, Any] | None,
) -> Any:  # fmt: skip
    """JSON-RPC answers for a refused MCP request (pipeline/mcp.py), None for anything else."""
    body = mcp_body(flow, run)
    if body is None:
        return None
    meta = {"decision": run.decision, "request_id": request_id}
    if approval:
        meta |= {"approval_id": approval["id"], "approval_state": approval["state"]}
    return refusal_answers(body, message, {"airlock": meta})


def airlock_body(
    run: RunSummary, reason: str, request_id: str | None, approval: dict[str, Any] | None,
    status: int, message: str,
) -> dict[str, Any]:  # fmt: skip
    """Airlock's own refusal, for an operation without a vendor format."""
    body: dict[str, Any] = {
        "decision": run.decision,
        "action": run.action,
        "reason": reason,
        "rules": run.rules,
        "request_id": request_id,
    }
    if approval:
        body["approval"] = approval
    # The shape most API SDKs (Stripe, OpenAI, Anthropic, ...) read an error message from,
    # so the agent's exception says why it was refused.
    body["error"] = {
        "type": "airlock_refusal",
        "code": "airlock_" + (approval["state"].lower() if approval else "blocked"),
        "message": message,
    }
    body["ok"] = False  # what Slack's SDK reads
    body["message"] = message  # what GitHub's and Twilio's read
    body["code"] = status  # what Twilio's exception shows as its code
    body["errors"] = [{"message": message, "field": None, "help": None}]  # SendGrid's
    return body
