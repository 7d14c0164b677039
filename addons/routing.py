"""`airlock_route HOST=ADDR:PORT`: connect to ADDR:PORT for HOST, like curl's --resolve.

The override happens at name resolution, so the upstream connection keeps HOST as its address
and SNI, and mitmproxy reuses it exactly as it would in production. For tests, demos and the
benchmark; production needs no routes.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from typing import Any

from mitmproxy import ctx, exceptions

from airlock.pipeline.hosts import host_glob_regex

log = logging.getLogger(__name__)


def parse_routes(specs: Sequence[str]) -> dict[str, tuple[str, int]]:
    routes: dict[str, tuple[str, int]] = {}
    for spec in specs:
        host, sep, address = spec.partition("=")
        addr, colon, port = address.rpartition(":")
        if not sep or not host or not colon or not addr or not port.isdigit():
            raise exceptions.OptionsError(
                f"bad route {spec!r}: expected HOST=ADDR:PORT, e.g. api.stripe.com=127.0.0.1:8443"
            )
        routes[host.strip().lower()] = (addr.strip("[]"), int(port))
    return routes


class Routing:
    def __init__(self) -> None:
        self.routes: dict[str, tuple[str, int]] = {}
        self._globs: list[tuple[re.Pattern[str], tuple[str, int]]] = []
        self._patched_loop: asyncio.AbstractEventLoop | None = None

    def load(self, loader: Any) -> None:
        loader.add_option(
            "airlock_route",
            Sequence[str],
            [],
            "Connect to ADDR:PORT whenever an upstream connection to HOST is opened "
            "(HOST=ADDR:PORT, repeatable). Host header, SNI and connection reuse are unchanged.",
        )

    def configure(self, updated: set[str]) -> None:
        if "airlock_route" in updated:
            self.routes = parse_routes(ctx.options.airlock_route)
            self._globs = [
                (host_glob_regex(host), address)
                for host, address in self.routes.items()
                if "*" in host
            ]

    def route_for(self, host: str) -> tuple[str, int] | None:
        """Exact hosts first, then globs (`*.s3.amazonaws.com`: one label per star)."""
        host = host.lower()
        route = self.routes.get(host)
        if route is None:
            route = next((address for regex, address in self._globs if regex.match(host)), None)
        return route

    def running(self) -> None:
        loop = asyncio.get_running_loop()
        if self._patched_loop is loop:
            return
        resolve = loop.getaddrinfo

        async def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            route = self.route_for(host) if isinstance(host, str) else None
            if route is not None:
                host, port = route
            return await resolve(host, port, *args, **kwargs)

        loop.getaddrinfo = getaddrinfo  # type: ignore[method-assign]
        self._patched_loop = loop
        for host, (addr, port) in self.routes.items():
            log.info("route: %s → %s:%d", host, addr, port)
