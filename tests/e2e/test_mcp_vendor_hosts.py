"""MCP's shape through a real proxy, with the shipped mappings and policies: an `Mcp-Session-Id`
header or a JSON-RPC body never makes a vendor's request pass as an MCP read; the request is
judged as the vendor's operation (or refused when it can be neither), and the upstream never
sees what was refused. On a host nothing describes, a tool call is still recognised by its shape
(its reads are MCP only at a server declared under `servers:`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest
import requests

from airlock.console.standins import Upstream
from tests.e2e.test_catalog_aws import recorded
from tests.helpers.proxy import Proxy

pytestmark = pytest.mark.e2e

HOSTS = ("api.github.com", "api.sendgrid.com")
SESSION = {"Mcp-Session-Id": "s1"}


@pytest.fixture(scope="module")
def proxy(start_proxy: Callable[..., Proxy], session_upstream: Upstream) -> Proxy:
    return start_proxy(routes={host: session_upstream.port for host in HOSTS})


def refused(proxy: Proxy, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
    answer = proxy.session(agent="release-bot").request(method, url, timeout=20, **kwargs)
    assert answer.status_code == 403, answer.text[:300]
    assert answer.headers["X-Airlock-Decision"] == "BLOCK"
    return answer.json()


def test_a_session_header_on_a_vendors_delete_is_that_delete(
    proxy: Proxy, upstream: Upstream
) -> None:
    refused(proxy, "DELETE", "https://api.github.com/repos/acme/prod", headers=SESSION)
    refused(proxy, "DELETE", "https://api.stripe.com/v1/accounts/acct_1", headers=SESSION)
    assert upstream.received == []
    assert recorded(proxy, "delete_repository").decision == "BLOCK"
    assert recorded(proxy, "delete_account").decision == "BLOCK"


def test_jsonrpc_in_a_vendors_body_is_judged_as_the_vendors_operation(
    proxy: Proxy, upstream: Upstream
) -> None:
    mass = {
        "jsonrpc": "2.0",
        "method": "ping",
        "personalizations": [{"to": [{"email": f"a{i}@x.com"} for i in range(10_001)]}],
        "from": {"email": "a@b.c"},
        "subject": "s",
        "content": [{"type": "text/plain", "value": "x"}],
    }
    refused(proxy, "POST", "https://api.sendgrid.com/v3/mail/send", json=mass)
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    answer = refused(proxy, "POST", "https://api.github.com/graphql", json=ping)
    assert "name it under 'servers:'" in str(answer)
    assert upstream.received == []
    assert recorded(proxy, "send_message").decision == "BLOCK"
    assert recorded(proxy, "http.write", path="/graphql").decision == "BLOCK"


def test_on_a_host_nothing_describes_a_tool_call_is_mcp_and_a_ping_is_no_read(
    proxy: Proxy, upstream: Upstream
) -> None:
    """A tool call is recognised by its shape anywhere (judged as the tool, held for a reviewer);
    the protocol's own messages are MCP reads only at a server declared under `servers:`, as a
    server that is not MCP may act on the path and ignore the body."""
    url = "https://api.example.com/v1/customers/cus_42/delete"
    session = proxy.session(agent="release-bot")
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    lookup = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "lookup"}}
    for body in (ping, lookup):
        with contextlib.suppress(requests.Timeout):  # held: the hold outlasts the test
            session.post(url, json=body, timeout=2)
    assert upstream.received == []
    write = recorded(proxy, "http.write", path="/v1/customers/cus_42/delete")
    assert write.decision == "REQUIRE_APPROVAL"
    tool = recorded(proxy, "mcp.api.example.com.lookup")
    assert (tool.decision, tool.target) == ("REQUIRE_APPROVAL", "mcp/api.example.com/lookup")
