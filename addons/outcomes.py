"""What happened to each request Airlock let through: the upstream's status and time, or its
error, recorded on the request's run (refusals are recorded where they are made)."""

from __future__ import annotations

import json
import time
from typing import Any

from mitmproxy import http

from airlock.addons.runtime import Runtime
from airlock.pipeline.mcp import tool_outcome


def mcp_outcome(flow: http.HTTPFlow) -> dict[str, Any] | None:
    """An MCP tool call's result (or error), read from the server's JSON or event stream."""
    response = flow.response
    if response is None or response.raw_content is None:  # streamed: not kept to read
        return None
    try:
        request = json.loads(flow.request.get_content(strict=False) or b"")
        content = response.get_content(strict=False) or b""
    except ValueError:
        return None
    return tool_outcome(request, content, response.headers.get("content-type", ""))


class Outcomes:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def response(self, flow: http.HTTPFlow) -> None:
        run_id = flow.metadata.get("airlock")
        if not run_id or not flow.response:
            return
        flow.response.headers.setdefault("X-Airlock-Request-Id", run_id)
        if flow.metadata.get("airlock_answered"):
            return
        released = flow.metadata.get("airlock_released", flow.response.timestamp_start)
        upstream_ms = ((flow.response.timestamp_end or time.time()) - released) * 1000
        detail = mcp_outcome(flow) if flow.metadata.get("airlock_protocol") == "mcp" else None
        self.runtime.record_outcome(
            run_id, "forwarded", flow.response.status_code, upstream_ms, detail
        )

    def error(self, flow: http.HTTPFlow) -> None:
        run_id = flow.metadata.get("airlock")
        if run_id and "airlock_released" in flow.metadata and flow.response is None:
            self.runtime.record_outcome(run_id, "upstream_error", None)
