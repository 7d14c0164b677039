"""Which agent sent a request: its proxy credentials (Basic `AGENT:KEY`, as HTTPS_PROXY carries
them) checked against the agents file; without one, the name is taken as given.

Built as mitmproxy's proxyauth is: the agents file is a proxyauth `Validator` (AgentKeys), a
CONNECT names the agent for the whole connection (remembered per client connection), and
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


class Identity:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._connect_agents: weakref.WeakKeyDictionary[connection.Client, str] = (
            weakref.WeakKeyDictionary()
        )
        self._keys: AgentKeys | None = None  # rebuilt when a reload brings another registry

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        if "proxyauth" in flow.metadata:  # mitmproxy's proxyauth accepted it, taking the header
            self._connect_agents[flow.client_conn] = str(flow.metadata["proxyauth"][0])
            return
        agent = self.identify(flow.request.headers.get("proxy-authorization", ""))
        if agent is None:
            await self.refuse(flow)
        else:
            self._connect_agents[flow.client_conn] = agent

    def identify(self, header: str) -> str | None:
        """The agent these proxy credentials name; None when agents are configured and the
        credentials are missing or wrong. Without an agents file the name is taken as given."""
        name, key = basic_auth(header)
        assert self.runtime.config is not None
        registry = self.runtime.config.agents
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
        if flow.client_conn in self._connect_agents:
            return self._connect_agents[flow.client_conn]
        return self.identify(credentials)

    async def refuse(self, flow: http.HTTPFlow, credentials: str | None = None) -> None:
        """407, so clients can retry with credentials; the attempt is recorded."""
        if credentials is None:
            credentials = flow.request.headers.get("proxy-authorization", "")
        claimed, _ = basic_auth(credentials)
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
        row = run_row(new_id(), runtime.instance, document, refused, 0.0)
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
