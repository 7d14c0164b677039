"""What happened to each request Airlock let through: the upstream's status and time, or its
error, recorded on the request's run (refusals are recorded where they are made)."""

from __future__ import annotations

import json
import time
from typing import Any

from mitmproxy import http

from airlock.addons.runtime import Runtime, add_header_unless_present
from airlock.pipeline.document import MAX_PARSED_BODY, readable_content
from airlock.pipeline.mcp import tool_outcome
from airlock.pipeline.outcome import SUCCESS


def mcp_outcome(flow: http.HTTPFlow) -> dict[str, Any] | None:
    """An MCP tool call's result (or error), read from the server's JSON or event stream; None
    for an answer streamed, over MAX_PARSED_BODY (as sent or decoded) or not decodable: it is
    read on the event loop every flow shares."""
    response = flow.response
    if response is None:
        return None
    request, content = readable_content(flow.request), readable_content(response)
    if request is None or content is None:
        return None
    try:
        call = json.loads(request or b"")
    except ValueError:
        return None
    return tool_outcome(call, content, response.headers.get("content-type", ""))


class Outcomes:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def response(self, flow: http.HTTPFlow) -> None:
        run_id = flow.metadata.get("airlock")
        if not run_id or not flow.response:
            return
        add_header_unless_present(flow.response.headers, "X-Airlock-Request-Id", run_id)
        if flow.metadata.get("airlock_answered"):
            return
        released = flow.metadata.get("airlock_released", flow.response.timestamp_start)
        upstream_ms = ((flow.response.timestamp_end or time.time()) - released) * 1000
        detail = mcp_outcome(flow) if flow.metadata.get("airlock_protocol") == "mcp" else None
        if "airlock_prior" in flow.metadata:  # what the write replaced (priors.py)
            detail = {**(detail or {}), **flow.metadata["airlock_prior"]}
        self.runtime.record_outcome(
            run_id, "forwarded", flow.response.status_code, upstream_ms, detail,
            self._answer_to_read(flow),
        )  # fmt: skip

    def _answer_to_read(self, flow: http.HTTPFlow) -> tuple[str, http.Response] | None:
        """The answer with the run's mapping id, when that mapping reads identifiers from it
        (`outcome:`): the decider reads them (pipeline/outcome.py), off this event loop."""
        config, response = self.runtime.config, flow.response
        mapping_id = flow.metadata.get("airlock_mapping")
        if config is None or response is None or mapping_id is None:
            return None
        mapping = config.mappings.by_id.get(mapping_id)
        if mapping is None or not mapping.outcome or response.status_code not in SUCCESS:
            return None
        raw = response.raw_content
        if raw is None or len(raw) > MAX_PARSED_BODY:  # larger answers are not read for ids
            return None
        return mapping_id, response

    def error(self, flow: http.HTTPFlow) -> None:
        """No answer. Once connected, the request was on its way: the upstream may have acted
        on it (AMBIGUOUS: check before trying again); before that, it was never sent."""
        run_id = flow.metadata.get("airlock")
        if run_id and "airlock_released" in flow.metadata and flow.response is None:
            server = flow.server_conn
            connected = server is not None and server.timestamp_tcp_setup is not None
            outcome = "ambiguous" if connected else "upstream_error"
            self.runtime.record_outcome(
                run_id, outcome, None, None, flow.metadata.get("airlock_prior")
            )
