"""Traffic that is not HTTP requests is cut: policies judge HTTP requests only, so anything else
(raw TCP, UDP, DNS, WebSocket messages) would pass unjudged if it were relayed."""

from __future__ import annotations

import logging
from typing import Any

from mitmproxy import dns, http, tcp, udp
from mitmproxy.net.dns import response_codes

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

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        """Never reached while Airlock forces mitmproxy's `websocket` option off (runtime.py);
        should a WebSocket start anyway, none of its messages is relayed."""
        assert flow.websocket is not None
        flow.websocket.messages[-1].drop()

    def tcp_message(self, flow: tcp.TCPFlow) -> None:
        """mitmproxy 11 relays a raw TCP stream after tcp_start whatever that hook did (its TCP
        layer does not look at kill()): every message is emptied before it is relayed."""
        flow.messages[-1].content = b""

    def udp_message(self, flow: udp.UDPFlow) -> None:
        flow.messages[-1].content = b""

    def dns_request(self, flow: dns.DNSFlow) -> None:
        """A tunnel to port 53 or 5353 is DNS to mitmproxy, relayed without an HTTP request: a
        query can carry anything in its names. Answered REFUSED, never sent on."""
        self.metrics.fail_closed.labels("protocol").inc()
        log.warning("refused DNS to %s: Airlock only passes HTTP requests", target(flow))
        flow.response = flow.request.fail(response_codes.REFUSED)

    def _refuse(self, flow: Any, kind: str) -> None:
        self.metrics.fail_closed.labels("protocol").inc()
        log.warning("refused %s to %s: Airlock only passes HTTP requests", kind, target(flow))
        flow.kill()


def target(flow: Any) -> str:
    """Where a flow goes, for logs: host and port only (a URL can carry secrets)."""
    server = getattr(flow, "server_conn", None)
    address = getattr(server, "address", None)
    return f"{address[0]}:{address[1]}" if address else "an unknown host"
