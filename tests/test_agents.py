"""Agent identities: keys, roles, egress profiles, and 407 for anyone else."""

from __future__ import annotations

import asyncio
import base64
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from mitmproxy.test import tflow

from airlock.addons.gatekeeper import Airlock
from airlock.pipeline.agents import hash_key, load_agents, load_reviewers, new_key, verify_key
from airlock.pipeline.evaluation import Config, evaluate
from airlock.pipeline.yaml_source import ConfigError, recording_sources, replaying_sources
from tests.helpers.proxy import PROJECT_ROOT
from tests.test_gatekeeper import stored_runs, stripe_flow, with_gate
from tests.test_mappings import doc

KEY = "k3y-for-tests-0123456789abcdefghijklmnopqrstuv"


def agents_dir(tmp_path: Path, extra_rules: str = "") -> Path:
    folder = tmp_path / "policies"
    folder.mkdir(exist_ok=True)
    for shipped in (PROJECT_ROOT / "policies").glob("*.yaml"):
        (folder / shipped.name).write_text(shipped.read_text())
    (folder / "agents.yaml").write_text(
        textwrap.dedent(
            f"""
            agents:
              - {{id: billing-bot, roles: [payments], key_hash: "{hash_key(KEY)}"}}
              - {{id: retired-bot, roles: [payments], key_hash: "{hash_key(KEY)}", enabled: false}}
              - {{id: ops-bot, roles: [ops, support], key_hash: "{hash_key(KEY)}"}}
            roles:
              payments: {{egress: [api.stripe.com]}}
              ops: {{egress: ["*.amazonaws.com"]}}
              support: {{egress: any}}
            """
        )
    )
    if extra_rules:
        (folder / "roles.yaml").write_text(textwrap.dedent(extra_rules))
    return folder


def test_keys_are_salted_hashes_that_verify() -> None:
    key = new_key()
    stored = hash_key(key)
    assert key not in stored and stored.startswith("sha256$")
    assert verify_key(key, stored)
    assert not verify_key(key + "x", stored)
    assert hash_key(key) != stored  # a new salt each time


def test_registry_authenticates_and_knows_roles(tmp_path: Path) -> None:
    registry = load_agents(agents_dir(tmp_path))
    assert registry.required
    assert registry.authenticate("billing-bot", KEY).roles == ("payments",)
    assert registry.authenticate("billing-bot", "wrong") is None
    assert registry.authenticate("retired-bot", KEY) is None
    assert registry.authenticate("nobody", KEY) is None


def test_the_agents_file_is_a_validator_mitmproxys_own_proxyauth_can_use(tmp_path: Path) -> None:
    """AgentKeys is a mitmproxy proxyauth Validator: given to mitmproxy's ProxyAuth, a CONNECT
    with an agent's key passes (and names the agent for the connection); a retired agent's or
    a wrong key is answered 407."""
    from mitmproxy.addons.proxyauth import ProxyAuth, mkauth

    from airlock.addons.identity import AgentKeys

    auth = ProxyAuth()
    auth.validator = AgentKeys(load_agents(agents_dir(tmp_path)))
    answers = {}
    for name, key in (("billing-bot", KEY), ("retired-bot", KEY), ("billing-bot", "wrong")):
        flow = tflow.tflow()
        flow.request.headers["Proxy-Authorization"] = mkauth(name, key)
        auth.http_connect(flow)
        answers[name, key] = (flow.response.status_code if flow.response else None,
                              flow.metadata.get("proxyauth", (None,))[0])  # fmt: skip
    assert answers == {
        ("billing-bot", KEY): (None, "billing-bot"),
        ("retired-bot", KEY): (407, None),
        ("billing-bot", "wrong"): (407, None),
    }


def test_egress_profiles_and_role_rules(tmp_path: Path) -> None:
    config = Config.load(
        PROJECT_ROOT / "mappings",
        agents_dir(
            tmp_path,
            """
            rules:
              - {id: ops-no-payments, when: {role: ops, category: payment}, decision: BLOCK}
            """,
        ),
    )
    slack = evaluate(
        {**doc("POST", "slack.com", "/api/chat.postMessage"), "agent": "billing-bot"}, config
    )
    assert (slack.verdict.decision, slack.verdict.rules) == ("BLOCK", ("egress-profile",))
    assert "outside the egress profile of billing-bot's roles (payments)" in slack.verdict.reason
    charge = {**doc("POST", "api.stripe.com", "/v1/charges", {"amount": "5"}), "agent": "ops-bot"}
    # ops-bot's support role says `egress: any`, so it may reach Stripe; the role rule blocks.
    assert evaluate(charge, config).verdict.rules == ("ops-no-payments",)


def test_bad_agents_files_name_the_place(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "agents.yaml").write_text("agents:\n  - {id: a, key_hash: plaintext}\n")
    with pytest.raises(ConfigError, match=r"agents.yaml:2:\d+: key_hash must be"):
        load_agents(folder)
    # A quoted "false" is text, which Python reads as true: the agent would still authenticate.
    key_hash = hash_key("k")
    (folder / "agents.yaml").write_text(
        f'agents:\n  - {{id: a, key_hash: "{key_hash}", enabled: "false"}}\n'
    )
    with pytest.raises(ConfigError, match=r"agents.yaml:2:\d+: 'enabled' must be true or false"):
        load_agents(folder)


AGENTS = """agents:
  - {id: ops-bot, roles: [opps], key_hash: "sha256$00$00"}
roles:
  ops: {egress: [api.stripe.com]}
"""


def test_a_role_nobody_defined_is_a_load_error_not_an_open_door(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "agents.yaml").write_text(AGENTS)
    with pytest.raises(ConfigError) as raised:
        load_agents(folder)
    assert str(raised.value).startswith(f"{folder / 'agents.yaml'}:2:")
    assert "role 'opps', which 'roles:' does not define (defined: ops)" in str(raised.value)


@pytest.mark.parametrize(
    ("agents", "stripe", "slack"),
    [
        ('{id: a, key_hash: "sha256$00$00"}', False, False),  # no roles: no host
        ('{id: a, roles: [quiet], key_hash: "sha256$00$00"}', False, False),  # no egress
        ('{id: a, roles: [open], key_hash: "sha256$00$00"}', True, True),  # egress: any
        ('{id: a, roles: [quiet, pay], key_hash: "sha256$00$00"}', True, False),
    ],
)
def test_only_an_explicit_egress_reaches_a_host(
    tmp_path: Path, agents: str, stripe: bool, slack: bool
) -> None:
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "agents.yaml").write_text(
        f"agents:\n  - {agents}\nroles:\n  quiet: {{}}\n  open: {{egress: any}}\n"
        "  pay: {egress: [api.stripe.com]}\n"
    )
    registry = load_agents(folder)
    assert (registry.egress_refusal("a", "api.stripe.com") is None) is stripe
    assert (registry.egress_refusal("a", "slack.com") is None) is slack


def credentials(name: str, key: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{key}".encode()).decode()


@pytest.mark.parametrize(
    ("header", "claimed"),
    [
        (None, "anonymous"),
        (credentials("billing-bot", "wrong"), "billing-bot"),
        # A key pasted where the name goes (no colon): not stored or printed as the agent.
        (
            "Basic " + base64.b64encode(b"S3cretAgentKey-no-colon").decode(),
            "(a name the agents file does not know)",
        ),
    ],
    ids=["none", "wrong-key", "key-as-name"],
)
def test_connect_without_valid_credentials_gets_407_and_is_recorded(
    tmp_path: Path, header: str | None, claimed: str
) -> None:
    connect = tflow.tflow()
    if header:
        connect.request.headers["Proxy-Authorization"] = header

    async def scenario(gate: Airlock, _: Any) -> None:
        await gate.identity.http_connect(connect)

    with_gate(tmp_path, scenario, airlock_policies=str(agents_dir(tmp_path)))
    assert connect.response.status_code == 407
    assert connect.response.headers["Proxy-Authenticate"] == 'Basic realm="airlock"'
    [run] = stored_runs(tmp_path)
    assert (run.action, run.decision, run.status, run.agent) == (
        "proxy.authenticate",
        "BLOCK",
        407,
        claimed,
    )
    assert "wrong" not in json.dumps(run.request)
    assert "S3cretAgentKey" not in json.dumps(run.request) + run.agent
    assert run.config_hash  # the agents file that refused it is named (found by review)


def test_an_authenticated_agent_is_identified_and_its_key_never_stored(tmp_path: Path) -> None:
    connect = tflow.tflow()
    connect.request.headers["Proxy-Authorization"] = credentials("billing-bot", KEY)
    flow = stripe_flow(b"amount=5&currency=usd")
    flow.client_conn = connect.client_conn
    flow.client_conn.sni = "api.stripe.com"  # the tunnel's, as its TLS client asked

    async def scenario(gate: Airlock, _: Any) -> None:
        await gate.identity.http_connect(connect)
        await asyncio.wait_for(gate.gate.request(flow), 5)

    with_gate(tmp_path, scenario, airlock_policies=str(agents_dir(tmp_path)))
    assert connect.response is None and flow.response is None
    [run] = stored_runs(tmp_path)
    assert (run.agent, run.decision) == ("billing-bot", "ALLOW")
    assert KEY not in json.dumps(run.request)


def test_mitmproxys_own_proxyauth_names_the_agent_when_it_is_set(tmp_path: Path) -> None:
    """An operator who runs mitmproxy's proxyauth (htpasswd, LDAP; here one user) instead of
    Airlock's keys: the name it accepted at CONNECT is the agent of the tunnel's requests, with
    that agent's roles from the agents file."""
    from mitmproxy.addons.proxyauth import ProxyAuth, SingleUser

    auth = ProxyAuth()
    auth.validator = SingleUser("billing-bot:an-ldap-password")
    connect = tflow.tflow()
    connect.request.headers["Proxy-Authorization"] = credentials("billing-bot", "an-ldap-password")
    flow = stripe_flow(b"amount=5&currency=usd")
    flow.client_conn = connect.client_conn
    flow.client_conn.sni = "api.stripe.com"  # the tunnel's, as its TLS client asked

    async def scenario(gate: Airlock, _: Any) -> None:
        auth.http_connect(connect)  # mitmproxy's addons run before Airlock's
        await gate.identity.http_connect(connect)
        auth.requestheaders(flow)
        await asyncio.wait_for(gate.gate.request(flow), 5)

    with_gate(tmp_path, scenario, airlock_policies=str(agents_dir(tmp_path)))
    assert connect.response is None and flow.response is None
    [run] = stored_runs(tmp_path)
    assert (run.agent, run.decision) == ("billing-bot", "ALLOW")


def test_plain_http_requests_need_credentials_too(tmp_path: Path) -> None:
    flow = stripe_flow(b"amount=5&currency=usd")

    async def scenario(gate: Airlock, _: Any) -> None:
        await gate.gate.request(flow)

    with_gate(tmp_path, scenario, airlock_policies=str(agents_dir(tmp_path)))
    assert flow.response.status_code == 407


def test_a_recorded_configuration_compiles_the_same_after_its_files_change(
    tmp_path: Path,
) -> None:
    """What the decider process compiles (decider/core.py): the files as the proxy read them,
    agents included, whatever happened on disk since."""
    policies = agents_dir(tmp_path)
    with recording_sources() as sources:
        loaded = Config.load(PROJECT_ROOT / "mappings", policies)
    (policies / "agents.yaml").unlink()
    (policies / "late.yaml").write_text("rules: [{id: late, decision: BLOCK}]\n")
    with replaying_sources(json.loads(json.dumps(sources))):  # as it crosses the socket
        replayed = Config.load(PROJECT_ROOT / "mappings", policies)

    assert replayed.agents.authenticate("billing-bot", KEY) is not None
    assert [r.id for r in replayed.policies.rules] == [r.id for r in loaded.policies.rules]
    assert len(replayed.mappings.mappings) == len(loaded.mappings.mappings)
    assert "late" not in {r.id for r in replayed.policies.rules}
    missing = pytest.raises(ConfigError, match="not among the folders the proxy loaded")
    with missing, replaying_sources(sources):
        Config.load(tmp_path / "elsewhere", policies)


@pytest.mark.parametrize(
    ("agents", "reviewers", "expected"),
    [
        (["ops-bot", "ops\u2010bot"], [], "reads the same as 'ops-bot'"),
        (["ops-bot", "ops-bot"], [], "duplicate agent id 'ops-bot'"),
        (["ops-bot"], ["alice", "\u0430lice"], "reads the same as 'alice'"),
        (["ops-bot"], ["\uff4fps-bot"], "reads as agent 'ops-bot'"),
    ],
    ids=["agents", "duplicate", "reviewers", "reviewer-as-agent"],
)
def test_identities_a_person_cannot_tell_apart_are_a_load_error(
    tmp_path: Path, agents: list[str], reviewers: list[str], expected: str
) -> None:
    from airlock.pipeline.agents import load_reviewers

    key_hash = hash_key(new_key())
    listed = "".join(
        f"  - {{id: {json.dumps(a)}, roles: [ops], key_hash: {json.dumps(key_hash)}}}\n"
        for a in agents
    )
    (tmp_path / "agents.yaml").write_text(
        f"roles:\n  ops: {{egress: [api.stripe.com]}}\nagents:\n{listed}"
    )
    if reviewers:
        listed = "".join(f"  - {{id: {json.dumps(r)}}}\n" for r in reviewers)
        (tmp_path / "reviewers.yaml").write_text(f"reviewers:\n{listed}")
    with pytest.raises(ConfigError, match=expected) as raised:
        load_reviewers(tmp_path) if reviewers else load_agents(tmp_path)
    assert ".yaml:" in str(raised.value)  # file:line for the person to fix


@pytest.mark.parametrize("listed", ["agents: []\n", "# every agent revoked\n", ""])
def test_an_agents_file_that_lists_nobody_lets_nobody_in(tmp_path: Path, listed: str) -> None:
    """Review: `agents: []` (every agent revoked in an incident) read as "no agents file", so
    any name, with any key or none, got through; the file exists, so nobody does."""
    folder = agents_dir(tmp_path)
    (folder / "agents.yaml").write_text(listed)
    registry = load_agents(folder)
    assert registry.required and registry.authenticate("billing-bot", KEY) is None
    connect = tflow.tflow()
    connect.request.headers["Proxy-Authorization"] = credentials("billing-bot", KEY)

    async def scenario(gate: Airlock, _: Any) -> None:
        await gate.identity.http_connect(connect)

    with_gate(tmp_path, scenario, airlock_policies=str(folder))
    assert connect.response.status_code == 407


def test_policies_named_as_one_file_read_the_agents_file_beside_it(tmp_path: Path) -> None:
    """Review: `--policies policies/baseline.yaml` looked for baseline.yaml/agents.yaml, found
    none, and trusted every name; `airlock check` read the agents file beside it."""
    folder = agents_dir(tmp_path)
    registry = load_agents(folder / "baseline.yaml")
    assert registry.required and registry.authenticate("billing-bot", KEY) is not None
    flow = stripe_flow(b"amount=5&currency=usd")

    async def scenario(gate: Airlock, _: Any) -> None:
        await gate.gate.request(flow)

    with_gate(tmp_path, scenario, airlock_policies=str(folder / "baseline.yaml"))
    assert flow.response.status_code == 407


@pytest.mark.parametrize("listed", ["reviewers: []\n", ""])
def test_a_reviewers_file_that_lists_nobody_lets_nobody_decide(tmp_path: Path, listed: str) -> None:
    """Review: `reviewers: []` let anyone approve, as if there were no reviewers file."""
    folder = agents_dir(tmp_path)
    (folder / "reviewers.yaml").write_text(listed)
    reviewers = load_reviewers(folder)
    assert reviewers.configured
    assert reviewers.refusal("mallory", []) == "mallory is not a reviewer (reviewers.yaml)"
    assert load_reviewers(tmp_path / "elsewhere").refusal("mallory", []) is None  # no file


def test_a_disabled_or_unlisted_agent_is_refused_where_it_is_decided(tmp_path: Path) -> None:
    """Review: a request authenticated just before a reload that disabled its agent was decided
    with the new file, which still gave it its roles: the decider refuses it too, for a request
    through the proxy and for a Guard API call."""
    from airlock.pipeline.evaluation import evaluate_call
    from airlock.pipeline.mappings import Action

    config = Config.load(PROJECT_ROOT / "mappings", agents_dir(tmp_path))
    charge = doc("POST", "api.stripe.com", "/v1/charges", {"amount": "5", "currency": "usd"})
    decided = {
        agent: evaluate({**charge, "agent": agent}, config).verdict
        for agent in ("billing-bot", "retired-bot", "stranger")
    }
    assert decided["billing-bot"].decision == "ALLOW"
    assert (decided["retired-bot"].decision, decided["retired-bot"].rules) == (
        "BLOCK",
        ("agent-identity",),
    )
    assert "retired-bot is disabled in the agents file" in decided["retired-bot"].reason
    assert "stranger is not an agent the agents file lists" in decided["stranger"].reason
    call = Action("create_charge", "stripe", "payment", "high", "t", {"amount": 5}, None)
    assert evaluate_call(call, "retired-bot", config, None).verdict.rules == ("agent-identity",)


def test_a_listed_reviewer_is_known_however_the_name_is_spelt(tmp_path: Path) -> None:
    """Review: README says ` ALICE` is `alice`; with a reviewers file, `--reviewer ALICE` was
    refused as not a reviewer."""
    folder = agents_dir(tmp_path)
    (folder / "reviewers.yaml").write_text("reviewers:\n  - {id: alice, roles: [payments-lead]}\n")
    reviewers = load_reviewers(folder)
    assert reviewers.refusal(" ALICE", [["payments-lead"]]) is None
    assert reviewers.uncovered([" ALICE"], [["payments-lead"]]) == []
    assert reviewers.refusal("alice2", []) == "alice2 is not a reviewer (reviewers.yaml)"


def test_a_policies_folder_named_like_a_yaml_file_keeps_its_agents_file(tmp_path: Path) -> None:
    """Review: the agents file was looked for beside a folder named `airlock.yml/` rather than
    in it, and every name was trusted."""
    folder = agents_dir(tmp_path)
    named = folder.rename(tmp_path / "airlock.yml")
    registry = load_agents(named)
    assert registry.required and registry.authenticate("billing-bot", KEY) is not None
    with recording_sources() as sources:
        Config.load(PROJECT_ROOT / "mappings", named)
    with replaying_sources(sources):  # as the decider compiles what the proxy read
        assert load_agents(named).required
