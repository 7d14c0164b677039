"""Stripe live mode through a running Airlock, however stripe-python's HTTP layer sends the key:
a live transfer is held for a reviewer and never reaches Stripe until one decides."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
import stripe

from airlock.console.standins import Upstream
from tests.e2e.test_gate import Background, airlock, eventually, pending
from tests.helpers.proxy import Proxy

pytestmark = pytest.mark.e2e

LIVE_KEY = "sk_live_51PlantedLiveKeyForTests00000000"


class AuthorizationAs(stripe.RequestsClient):
    """stripe-python with an HTTP layer that sends the key another way Stripe accepts: as HTTP
    Basic's user name (`curl -u sk_live_…:`, Stripe's documented default) or with the bearer
    scheme in lower case."""

    def __init__(self, style: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.style = style

    def request(
        self, method: str, url: str, headers: Mapping[str, str] | None, post_data: Any = None
    ) -> Any:
        sent = dict(headers or {})
        key = sent.pop("Authorization").removeprefix("Bearer ")
        if self.style == "basic":
            sent["Authorization"] = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
        else:
            sent["Authorization"] = f"bearer {key}"
        return super().request(method, url, sent, post_data)


@pytest.fixture(scope="module")
def proxy(start_proxy: Callable[..., Proxy]) -> Proxy:
    return start_proxy("--hold-timeout", "30")


@pytest.fixture
def ca_bundle(proxy: Proxy) -> Iterator[None]:
    previous = stripe.ca_bundle_path
    stripe.ca_bundle_path = str(proxy.ca_cert)  # stripe-python ignores the CA variables
    yield
    stripe.ca_bundle_path = previous


@pytest.mark.parametrize("style", ["basic", "lowercase-bearer"])
def test_a_live_transfer_is_held_and_never_forwarded_when_denied(
    proxy: Proxy, upstream: Upstream, ca_bundle: None, style: str
) -> None:
    http_client = AuthorizationAs(style, proxy=f"http://stripe-bot:x@127.0.0.1:{proxy.port}")
    client = stripe.StripeClient(LIVE_KEY, http_client=http_client, max_network_retries=0)
    destination = f"acct_{style.replace('-', '_')}"

    held = Background(
        lambda: client.v1.transfers.create(  # type: ignore[arg-type,return-value]
            params={"amount": 900000, "currency": "usd", "destination": destination}
        )
    )
    waiting = eventually(
        lambda: [p for p in pending(proxy) if p["target"] == f"account/{destination}"], timeout=30
    )
    assert waiting, "the live transfer was not held"
    assert upstream.count("/v1/transfers") == 0
    assert waiting[0]["rules"] == ["stripe-live-money-out-needs-approval"]
    denial = airlock("deny", waiting[0]["id"], "--reason", "no live transfers", *proxy.store)
    assert denial.returncode == 0, denial.stderr

    with pytest.raises(stripe.PermissionError) as refused:
        held.result()
    assert "no live transfers" in str(refused.value)
    assert upstream.count("/v1/transfers") == 0
