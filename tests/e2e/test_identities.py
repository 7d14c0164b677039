"""Agent identities through a real proxy: credentials in HTTPS_PROXY, 407 without them."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from airlock.console.standins import Upstream
from tests.e2e.test_gate import CHARGES, airlock, eventually, runs
from tests.helpers.proxy import Proxy
from tests.test_agents import KEY, agents_dir

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def proxy(start_proxy: Callable[..., Proxy], tmp_path_factory: pytest.TempPathFactory) -> Proxy:
    policies = agents_dir(tmp_path_factory.mktemp("identities"))
    return start_proxy("--policies", str(policies))


def test_an_agent_with_its_key_gets_through(proxy: Proxy, upstream: Upstream) -> None:
    response = proxy.session(agent="billing-bot", key=KEY).post(
        CHARGES, data={"amount": 700, "currency": "usd"}
    )
    assert response.status_code == 200
    assert upstream.count("/v1/charges") == 1


def test_no_or_wrong_credentials_get_407_and_nothing_reaches_upstream(
    proxy: Proxy, upstream: Upstream
) -> None:
    for session in (proxy.session(), proxy.session(agent="billing-bot")):  # key "key" is wrong
        with pytest.raises(requests.exceptions.ProxyError, match="407"):
            session.post(CHARGES, data={"amount": 1, "currency": "usd"})
    assert upstream.count() == 0
    refused = eventually(lambda: [r for r in runs(proxy) if r.status == 407])
    assert {r.agent for r in refused} >= {"anonymous", "billing-bot"}
    assert KEY not in Path(proxy.log_file).read_text()


def test_a_tunnel_opened_before_a_reload_answers_to_the_new_agents_file(
    start_proxy: Callable[..., Proxy], upstream: Upstream, tmp_path: Path
) -> None:
    """The CONNECT named the agent for its whole connection: a reload that disables it (a key
    leaked) must stop the tunnels it already has open, not only new ones."""
    policies = agents_dir(tmp_path)
    proxy = start_proxy("--policies", str(policies))
    session = proxy.session(agent="billing-bot", key=KEY)  # keep-alive: one tunnel
    assert session.post(CHARGES, data={"amount": 700, "currency": "usd"}).status_code == 200
    agents = policies / "agents.yaml"
    disabled = re.sub(r"(\{id: billing-bot, [^}]*)\}", r"\1, enabled: false}", agents.read_text())
    assert disabled != agents.read_text()
    agents.write_text(disabled)
    told = airlock("reload", "--data-dir", str(proxy.workdir))
    assert told.returncode == 0, told.stderr
    assert eventually(lambda: "reloaded: deciding with configuration" in proxy.output())

    sent = upstream.count("/v1/charges")
    again = session.post(CHARGES, data={"amount": 701, "currency": "usd"})
    assert again.status_code == 407
    assert upstream.count("/v1/charges") == sent
    refused = eventually(lambda: [r for r in runs(proxy) if r.status == 407])
    assert [r.agent for r in refused] == ["billing-bot"]


def test_a_held_request_of_an_agent_disabled_meanwhile_is_not_sent_once_approved(
    start_proxy: Callable[..., Proxy], upstream: Upstream, tmp_path: Path
) -> None:
    """Review: an agent revoked by a reload while its request was held still had it sent once
    a reviewer (who did not know) approved it."""
    from tests.e2e.test_gate import Background, pending

    policies = agents_dir(tmp_path)
    proxy = start_proxy("--policies", str(policies), "--hold-timeout", "30")
    session = proxy.session(agent="ops-bot", key=KEY)
    held = Background(lambda: session.delete("https://api.stripe.com/v1/customers/cus_9"))
    [waiting] = eventually(lambda: [p for p in pending(proxy) if p["target"] == "customer/cus_9"])
    agents = policies / "agents.yaml"
    disabled = re.sub(r"(\{id: ops-bot, [^}]*)\}", r"\1, enabled: false}", agents.read_text())
    assert disabled != agents.read_text()
    agents.write_text(disabled)
    assert airlock("reload", "--data-dir", str(proxy.workdir)).returncode == 0
    assert eventually(lambda: "reloaded: deciding with configuration" in proxy.output())

    approved = airlock("approve", waiting["id"], "--reviewer", "alice", *proxy.store)
    assert approved.returncode == 0, approved.stderr
    response = held.result()
    assert response.status_code == 403
    assert "ops-bot is disabled in the agents file" in response.text
    assert upstream.count("/v1/customers/cus_9") == 0
    [run] = [r for r in runs(proxy) if r.target == "customer/cus_9"]
    assert eventually(
        lambda: [r.outcome for r in runs(proxy) if r.id == run.id] == ["agent_refused"]
    )
