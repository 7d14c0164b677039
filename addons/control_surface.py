"""Airlock's own listeners and database, refused by address rather than by spelling.

An agent must not reach the proxy's port, the metrics page or the store through the proxy. Host
names are not enough: `127.1`, `2130706433`, `0x7f000001`, `0177.0.0.1`, `0`, `[::ffff:7f00:1]`
and any name that resolves to this machine all reach the same sockets. So a request's host is
turned into addresses (every IPv4 spelling that the C library accepts, IPv4-mapped IPv6, and a
name through the resolver) and compared with the addresses Airlock listens on.

Only requests to a guarded port (the proxy's, the metrics', the database's) are resolved, so
vendor traffic on 443 costs one set lookup. To such a port the name is resolved again just
before mitmproxy connects, and the connection pinned to the address checked (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from dataclasses import dataclass

import psutil
from mitmproxy import ctx
from mitmproxy.proxy.server_hooks import ServerConnectionHookData
from sqlalchemy.engine import make_url

from airlock.pipeline.document import normalise_host

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
RESOLVE_TIMEOUT = 2.0  # seconds; a name that cannot be resolved in time is refused
_SURFACE_OPTIONS = frozenset(
    {"listen_host", "listen_port", "airlock_metrics_port", "airlock_guard_port", "airlock_db"}
)


class OwnSurface:
    """The addon: keeps the control surface in step with the options that name it."""

    def __init__(self) -> None:
        self.surface = ControlSurface(frozenset(), frozenset(), None)

    def configure(self, updated: set[str]) -> None:
        if _SURFACE_OPTIONS & updated:
            self.surface = _surface_from_options()

    async def refusal(self, host: str, port: int) -> str | None:
        """Why a request to host:port is refused as a request to Airlock itself, or None."""
        return await self.surface.refuses(normalise_host(host), port)

    async def server_connect(self, data: ServerConnectionHookData) -> None:
        """Just before mitmproxy connects to a guarded port: the name is resolved again, checked,
        and the connection pinned to the address checked. A name whose answer changed since the
        gate looked (DNS rebinding: a public address for the check, loopback for the connect)
        cannot reach Airlock itself: the connection is killed before it is made."""
        server = data.server
        if server.address is None or server.via is not None:  # an upstream proxy connects
            return
        host, port = server.address
        if port not in self.surface.guarded_ports or literal_address(host) is not None:
            return  # a literal address was checked as such by the gate
        try:
            resolved = await asyncio.wait_for(_resolve(host, port), RESOLVE_TIMEOUT)
        except (OSError, TimeoutError):
            resolved = []
        refusal = self.surface.refuses_addresses({a for a, _ in resolved}, port) if resolved else (
            f"{host} could not be resolved to check it is not Airlock's own address"
        )  # fmt: skip
        if refusal is not None:
            server.error = refusal
            return
        address, resolved_port = resolved[0]
        server.address = (str(address), resolved_port)


def _option(name: str) -> object:
    """An option another addon declares (proxyserver, metrics), or None when it is not loaded."""
    return getattr(ctx.options, name) if name in ctx.options else None


def _surface_from_options() -> ControlSurface:
    """Airlock's listeners and database, from the options (read once per change: ctx.options
    deep-copies a value on every read)."""
    ports = {
        _option("listen_port"),
        _option("airlock_metrics_port"),
        _option("airlock_guard_port"),
    } - {0, None}
    url = make_url(ctx.options.airlock_db)
    database = (url.host, url.port or 5432) if url.host else None
    return ControlSurface.build(ports, str(_option("listen_host") or ""), database)  # type: ignore[arg-type]


def literal_address(host: str) -> Address | None:
    """The address a host spells without the resolver: every form inet_aton takes (as the C
    library, and so the connection, reads it), IPv6, and IPv4-mapped IPv6 as its IPv4."""
    host = host.strip().strip("[]").partition("%")[0]
    try:
        address: Address = ipaddress.ip_address(host)
    except ValueError:
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_this_machine(address: Address, own: frozenset[Address]) -> bool:
    return address.is_loopback or address.is_unspecified or address in own


@dataclass(frozen=True)
class ControlSurface:
    """Where Airlock listens. `own_addresses`: this machine's addresses besides loopback;
    `database`: the store server's addresses and port (None for SQLite)."""

    own_ports: frozenset[int]
    own_addresses: frozenset[Address]
    database: tuple[frozenset[Address], int] | None

    @classmethod
    def build(
        cls, ports: set[int], listen_host: str, database: tuple[str, int] | None
    ) -> ControlSurface:
        """Resolves the machine's own names once, at configuration time."""
        own = _resolved(socket.gethostname()) | _resolved(listen_host) | _interface_addresses()
        db = (_resolved(database[0]), database[1]) if database else None
        return cls(frozenset(ports), frozenset(own), db)

    @property
    def guarded_ports(self) -> frozenset[int]:
        return self.own_ports | ({self.database[1]} if self.database else set())

    async def refuses(self, host: str, port: int) -> str | None:
        """Why a request to host:port would reach Airlock itself; None if it would not."""
        if port not in self.guarded_ports:
            return None
        literal = literal_address(host)
        if literal is not None:
            return self.refuses_addresses({literal}, port)
        try:
            resolved = await asyncio.wait_for(_resolve(host, port), RESOLVE_TIMEOUT)
        except (OSError, TimeoutError):
            return f"{host} could not be resolved to check it is not Airlock's own address"
        return self.refuses_addresses({address for address, _ in resolved}, port)

    def refuses_addresses(self, addresses: set[Address], port: int) -> str | None:
        own = self.own_addresses
        if any(a not in own and not a.is_loopback for a in addresses):
            own = own | _current_interfaces()  # an address taken since start (DHCP, a VPN)
        if port in self.own_ports and any(is_this_machine(a, own) for a in addresses):
            return "requests to Airlock's own proxy, metrics or guard ports are refused"
        if self.database is not None and port == self.database[1]:
            db_addresses, _ = self.database
            local_db = any(is_this_machine(a, own) for a in db_addresses)
            for address in addresses:
                if address in db_addresses or (local_db and is_this_machine(address, own)):
                    return "requests to Airlock's database are refused"
        return None


async def _resolve(host: str, port: int) -> list[tuple[Address, int]]:
    """(address, port) in the resolver's order, off the event loop (asyncio runs getaddrinfo in
    a thread; `airlock_route` answers through it too)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [
        (address, info[4][1])
        for info in infos
        if (address := literal_address(str(info[4][0]))) is not None
    ]


# The interfaces' addresses as last read, and when (monotonic): read again at most once a
# second (~0.3 ms each), for requests to a guarded port only (an internal API on port 8080 shares
# the proxy's port number, so such requests can be frequent).
_INTERFACES: tuple[frozenset[Address], float] = (frozenset(), float("-inf"))
_REREAD_SECONDS = 1.0


def _current_interfaces() -> frozenset[Address]:
    global _INTERFACES
    addresses, read_at = _INTERFACES
    now = time.monotonic()
    if now - read_at >= _REREAD_SECONDS:
        addresses = frozenset(_interface_addresses())
        _INTERFACES = addresses, now
    return addresses


def _interface_addresses() -> set[Address]:
    """Every address of this machine's interfaces (a LAN address reaches a proxy listening on
    0.0.0.0 as loopback does); link-local ones with their zone dropped."""
    found = set()
    for addresses in psutil.net_if_addrs().values():
        for entry in addresses:
            if entry.family in (socket.AF_INET, socket.AF_INET6):
                address = literal_address(entry.address)
                if address is not None:
                    found.add(address)
    return found


def _resolved(host: str) -> set[Address]:
    """Addresses of a name at start-up (blocking is fine there); none if it does not resolve."""
    if not host:
        return set()
    literal = literal_address(host)
    if literal is not None:
        return {literal}
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return set()
    return {a for info in infos if (a := literal_address(str(info[4][0]))) is not None}
