"""Which agent sent a request: its proxy credentials (Basic `AGENT:KEY`, as HTTPS_PROXY carries
them) checked against the agents file; without one, the name is taken as given.

Built as mitmproxy's proxyauth is: the agents file is a proxyauth `Validator` (AgentKeys), a
CONNECT names the agent for the whole connection (remembered per client connection, and checked
again after a reload), and
plain-HTTP proxying carries the credentials on each request. When mitmproxy's own `proxyauth`
option is set (htpasswd, LDAP), its answer is taken. What differs: the header is read by
basic_auth below, and wrong or missing credentials are answered with a 407 whose JSON says why
(clients can retry with credentials), and the attempt is recorded.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import weakref
from dataclasses import dataclass

from mitmproxy import connection, ctx, http
from mitmproxy.addons.proxyauth import Validator

from airlock.addons.runtime import STORE_TIMEOUT, Runtime
from airlock.pipeline.agents import AgentRegistry
from airlock.pipeline.document import minimal_document
from airlock.pipeline.evaluation import Evaluation
from airlock.pipeline.mappings import Action
from airlock.pipeline.policies import BLOCK, Verdict
from airlock.pipeline.run_record import run_row
from airlock.store.records import DecisionRecord
from airlock.store.schema import new_id

log = logging.getLogger("airlock.addons.gatekeeper")

ANONYMOUS = "anonymous"
WRONG_CREDENTIALS = (
    "proxy credentials are missing or wrong (HTTPS_PROXY=http://AGENT:KEY@host:port)"
)


UNKNOWN_AGENT = "(a name the agents file does not know)"


class AgentKeys(Validator):
    """The agents file as a mitmproxy proxyauth validator: an enabled agent and its key."""

    def __init__(self, registry: AgentRegistry) -> None:
        self.registry = registry

    def __call__(self, username: str, password: str) -> bool:
        return self.registry.authenticate(username, password) is not None


@dataclass(frozen=True)
class Tunnel:
    """Who a CONNECT named, by which credentials, checked against which agents file: a reload
    that disables an agent, changes its key or starts asking for keys holds for the tunnels
    already open too (checked again on their next request)."""

    agent: str
    credentials: str
    registry: AgentRegistry | None  # None: mitmproxy's own proxyauth named it


class Identity:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._tunnels: weakref.WeakKeyDictionary[connection.Client, Tunnel] = (
            weakref.WeakKeyDictionary()
        )
        self._keys: AgentKeys | None = None  # rebuilt when a reload brings another registry

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        if "proxyauth" in flow.metadata:  # mitmproxy's proxyauth accepted it, taking the header
            named = str(flow.metadata["proxyauth"][0])
            self._tunnels[flow.client_conn] = Tunnel(named, "", None)
            return
        credentials = flow.request.headers.get("proxy-authorization", "")
        agent = self.identify(credentials)
        if agent is None:
            await self.refuse(flow)
        else:
            self._tunnels[flow.client_conn] = Tunnel(agent, credentials, self._registry())

    def _registry(self) -> AgentRegistry:
        assert self.runtime.config is not None
        return self.runtime.config.agents

    def identify(self, header: str) -> str | None:
        """The agent these proxy credentials name; None when agents are configured and the
        credentials are missing or wrong. Without an agents file the name is taken as given."""
        name, key = basic_auth(header)
        registry = self._registry()
        if not registry.required:
            theirs = _mitmproxys_own_validator()
            if theirs is not None:  # the Guard API, beside `mitmdump --set proxyauth=…`
                return name if name and theirs(name, key) else None
            return name or ANONYMOUS
        if self._keys is None or self._keys.registry is not registry:
            self._keys = AgentKeys(registry)
        return name if name and self._keys(name, key) else None

    def agent_of(self, flow: http.HTTPFlow, credentials: str) -> str | None:
        """credentials: the request's own Proxy-Authorization (plain-HTTP proxying); inside a
        tunnel the CONNECT named the agent."""
        if "proxyauth" in flow.metadata:  # mitmproxy's own proxyauth option checked them
            return str(flow.metadata["proxyauth"][0])
        tunnel = self._tunnels.get(flow.client_conn)
        if tunnel is None:
            return self.identify(credentials)
        if tunnel.registry is None or tunnel.registry is self._registry():
            return tunnel.agent
        # Reloaded since the CONNECT: its credentials are checked against the new agents file.
        agent = self.identify(tunnel.credentials)
        if agent is None:
            del self._tunnels[flow.client_conn]
            flow.metadata["airlock_claimed"] = tunnel.agent  # recorded with the refusal
            return None
        self._tunnels[flow.client_conn] = Tunnel(agent, tunnel.credentials, self._registry())
        return agent

    async def refuse(self, flow: http.HTTPFlow, credentials: str | None = None) -> None:
        """407, so clients can retry with credentials; the attempt is recorded."""
        if credentials is None:
            credentials = flow.request.headers.get("proxy-authorization", "")
        claimed, _ = basic_auth(credentials)
        claimed = claimed or flow.metadata.get("airlock_claimed")
        # Only a name the agents file knows is recorded: a client that put its key where the
        # name goes (no colon) would otherwise have it stored and printed as the agent.
        config = self.runtime.config
        if claimed and (config is None or claimed not in config.agents.agents):
            claimed = UNKNOWN_AGENT
        flow.metadata["airlock_answered"] = True
        flow.response = http.Response.make(
            407,
            json.dumps({"decision": BLOCK, "reason": WRONG_CREDENTIALS}) + "\n",
            {"Content-Type": "application/json", "Proxy-Authenticate": 'Basic realm="airlock"'},
        )
        runtime = self.runtime
        runtime.metrics.fail_closed.labels("identity").inc()
        document = minimal_document(flow.request, claimed or ANONYMOUS)
        refused = Evaluation(
            Action("proxy.authenticate", "airlock", "identity", "high", document["host"], {}, None),
            Verdict(BLOCK, WRONG_CREDENTIALS, ("agent-identity",)),
        )
        row = run_row(new_id(), runtime.instance, document, refused, 0.0, runtime.config_hash())
        row.outcome, row.status = "blocked", 407
        runtime.log.decision(BLOCK, row.summary(), 0.0, note="407 proxy authentication required")
        try:
            await runtime.start_decider()
            async with asyncio.timeout(STORE_TIMEOUT):
                await runtime.ask().record(DecisionRecord(row))
        except Exception as e:
            log.error("could not record a refused proxy authentication: %s", e)


def _mitmproxys_own_validator() -> Validator | None:
    """mitmproxy's proxyauth, when its option is set (`mitmdump -s addons/gate.py --set
    proxyauth=…`; `airlock run` does not load it). It checks the proxy's requests before this
    addon sees them; what reaches Airlock otherwise (the Guard API) is checked with it too, so
    that no name is taken as given where the proxy asks for credentials."""
    master = getattr(ctx, "master", None)
    addon = master.addons.get("proxyauth") if master is not None else None
    return getattr(addon, "validator", None)


def basic_auth(header: str) -> tuple[str | None, str]:
    """(user, password) from a Basic Proxy-Authorization header; (None, "") when absent. By hand,
    not mitmproxy's parse_http_basic_auth: that one splits at every ':' (a key may hold one)
    and replaces undecodable bytes (two different keys would read the same)."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None, ""
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None, ""
    user, _, password = decoded.partition(":")
    return (user or None), password
