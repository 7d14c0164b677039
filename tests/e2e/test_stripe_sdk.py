"""The official stripe-python SDK, pointed at Airlock the way an agent builder would do it."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import stripe

from airlock.console.standins import Upstream
from tests.e2e.test_gate import Background, airlock, eventually, pending, runs
from tests.helpers.proxy import Proxy
from tests.helpers.sdks import stripe_through

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def proxy(start_proxy: Callable[..., Proxy]) -> Proxy:
    return start_proxy("--hold-timeout", "30")


@pytest.fixture
def stripe_via_airlock(proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    stripe_through(proxy, monkeypatch, "stripe-agent", "sk_test_4eC39HqLyjWDarjtT1zdp7dc")
    yield


def test_small_charge_passes_with_brackets_parsed(
    proxy: Proxy, upstream: Upstream, stripe_via_airlock: None
) -> None:
    charge = stripe.Charge.create(
        amount=2000,
        currency="usd",
        customer="cus_sdk",
        metadata={"order_id": "6735"},
        expand=["customer"],
    )

    assert charge.object == "charge"
    assert upstream.count("/v1/charges") == 1
    record = eventually(lambda: [r for r in runs(proxy) if r.params.get("customer") == "cus_sdk"])[
        0
    ]
    assert record.agent == "stripe-agent"
    assert (record.action, record.decision, record.target) == (
        "create_charge",
        "ALLOW",
        "customer/cus_sdk",
    )
    assert record.params["amount"] == 2000
    assert record.request["body"]["metadata"] == {"order_id": "6735"}
    assert record.request["body"]["expand"] == ["customer"]
    assert record.request["headers"]["authorization"] == "Bearer [REDACTED]"


def test_huge_charge_raises_permission_error_that_says_why(
    proxy: Proxy, upstream: Upstream, stripe_via_airlock: None
) -> None:
    with pytest.raises(stripe.PermissionError) as refused:
        stripe.Charge.create(amount=5_000_000, currency="usd")

    assert refused.value.http_status == 403
    assert "Charges of 10,000.00 or more are never made by an agent" in str(refused.value)
    assert upstream.count() == 0


def test_customer_deletion_is_held_until_approved(
    proxy: Proxy, upstream: Upstream, stripe_via_airlock: None
) -> None:
    held = Background(lambda: stripe.Customer.delete("cus_sdk_del"))  # type: ignore[arg-type,return-value]
    waiting = eventually(
        lambda: [p for p in pending(proxy) if p["target"] == "customer/cus_sdk_del"]
    )
    assert waiting and upstream.count() == 0

    assert airlock("approve", waiting[0]["id"], *proxy.store).returncode == 0

    deleted = held.result()
    assert deleted.deleted is True  # type: ignore[attr-defined]
    assert upstream.count("/v1/customers/cus_sdk_del") == 1
