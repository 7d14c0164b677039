"""Agent identities through a real proxy: credentials in HTTPS_PROXY, 407 without them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from airlock.console.standins import Upstream
from tests.e2e.test_gate import CHARGES, eventually, runs
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
