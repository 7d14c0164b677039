"""Traffic that is not HTTP requests is cut: policies judge HTTP requests only, so anything else
(raw TCP, UDP, WebSocket messages) would pass unjudged if it were relayed."""

from __future__ import annotations

import logging
from typing import Any

from mitmproxy import http, tcp, udp

from airlock.addons.metrics import Metrics

log = logging.getLogger("airlock.addons.gatekeeper")


class Streams:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        self._refuse(flow, "raw TCP")

    def udp_start(self, flow: udp.UDPFlow) -> None:
        self._refuse(flow, "UDP")

    def websocket_start(self, flow: http.HTTPFlow) -> None:
        self._refuse(flow, "WebSocket messages")

    def _refuse(self, flow: Any, kind: str) -> None:
        self.metrics.fail_closed.labels("protocol").inc()
        log.warning("refused %s to %s: Airlock only passes HTTP requests", kind, target(flow))
        flow.kill()


def target(flow: Any) -> str:
    """Where a flow goes, for logs: host and port only (a URL can carry secrets)."""
    server = getattr(flow, "server_conn", None)
    address = getattr(server, "address", None)
    return f"{address[0]}:{address[1]}" if address else "an unknown host"
