"""The Stripe catalog, proven with stripe-python through a running Airlock."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import stripe

from tests.e2e.test_catalog_aws import recorded
from tests.helpers.proxy import PROJECT_ROOT, Proxy

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def proxy(start_proxy: Callable[..., Proxy]) -> Proxy:
    return start_proxy("--policies", str(PROJECT_ROOT / "tests" / "e2e" / "policies-allow-all"))


@pytest.fixture
def client(proxy: Proxy) -> Iterator[Callable[[str], stripe.StripeClient]]:
    """StripeClient per API key, going through the proxy and trusting its CA."""

    def make(api_key: str) -> stripe.StripeClient:
        http_client = stripe.RequestsClient(proxy=f"http://stripe-bot:x@127.0.0.1:{proxy.port}")
        return stripe.StripeClient(api_key, http_client=http_client, max_network_retries=0)

    previous = stripe.ca_bundle_path
    stripe.ca_bundle_path = str(proxy.ca_cert)  # stripe-python ignores the CA variables
    yield make
    stripe.ca_bundle_path = previous


def test_payments_refunds_transfers_payouts(proxy: Proxy, client: Callable) -> None:
    test = client("sk_test_4eC39HqLyjWDarjtT1zdp7dc")
    test.v1.payment_intents.create(
        params={"amount": 125000, "currency": "eur", "customer": "cus_pi", "confirm": True}
    )
    test.v1.payment_intents.confirm("pi_1")
    test.v1.payment_intents.capture("pi_1", params={"amount_to_capture": 100000})
    test.v1.payment_intents.cancel("pi_2", params={"cancellation_reason": "duplicate"})
    test.v1.charges.capture("ch_9")
    test.v1.refunds.create(params={"charge": "ch_9", "amount": 2500, "reason": "duplicate"})
    live = client("sk_live_51PlantedLiveKeyForTests00000000")
    live.v1.transfers.create(params={"amount": 90000, "currency": "usd", "destination": "acct_1"})
    live.v1.payouts.create(params={"amount": 400000, "currency": "usd"})

    intent = recorded(proxy, "create_charge", kind="payment_intent")
    assert (intent.params["amount"], intent.params["currency"]) == (125000, "eur")
    assert intent.params["confirm"] is True
    assert intent.context == {"environment": "test"}
    assert intent.agent == "stripe-bot"
    assert recorded(proxy, "confirm_payment").target == "payment_intent/pi_1"
    assert recorded(proxy, "capture_charge", kind="payment_intent").params["amount"] == 100000
    assert recorded(proxy, "cancel_payment").params["reason"] == "duplicate"
    assert recorded(proxy, "capture_charge", id="ch_9").undo == {
        "action": "create_refund",
        "params": {"charge": "ch_9"},
    }
    refund = recorded(proxy, "create_refund")
    assert (refund.params["amount"], refund.target) == (2500, "charge/ch_9")
    transfer = recorded(proxy, "create_transfer")
    assert transfer.context == {"environment": "production"}
    assert transfer.target == "account/acct_1"
    payout = recorded(proxy, "create_payout")
    assert (payout.params["amount"], payout.context["environment"]) == (400000, "production")


def test_customers_subscriptions_invoices_and_catalog(proxy: Proxy, client: Callable) -> None:
    test = client("rk_test_51RestrictedKeyForTests0000000")
    test.v1.customers.create(params={"email": "ada@example.com"})
    test.v1.customers.update("cus_7", params={"metadata": {"tier": "gold"}})
    test.v1.customers.delete("cus_7")
    test.v1.subscriptions.update(
        "sub_1", params={"cancel_at_period_end": True, "items": [{"price": "price_9"}]}
    )
    test.v1.subscriptions.cancel("sub_2")
    test.v1.invoices.pay("in_1")
    test.v1.invoices.void_invoice("in_2")
    test.v1.products.create(params={"name": "Pro plan"})
    test.v1.prices.create(params={"product": "prod_1", "unit_amount": 4900, "currency": "usd"})

    assert recorded(proxy, "create_customer").params["email"] == "ada@example.com"
    updated = recorded(proxy, "update_record", resource="customer")
    assert updated.request["body"]["metadata"] == {"tier": "gold"}
    assert recorded(proxy, "delete_record", resource="customer").target == "customer/cus_7"
    subscription = recorded(proxy, "update_subscription")
    assert subscription.params["cancel_at_period_end"] is True
    assert subscription.params["price"] == "price_9"
    assert recorded(proxy, "cancel_subscription").target == "subscription/sub_2"
    assert recorded(proxy, "pay_invoice").target == "invoice/in_1"
    assert recorded(proxy, "void_invoice").target == "invoice/in_2"
    assert recorded(proxy, "create_product").params["name"] == "Pro plan"
    price = recorded(proxy, "create_price")
    assert (price.params["unit_amount"], price.target) == (4900, "product/prod_1")
    assert price.context == {"environment": "test"}


def test_where_money_goes_and_who_reaches_the_account(proxy: Proxy, client: Callable) -> None:
    """Identified by the catalog's operation, curated by mappings that name it."""
    live = client("sk_live_51PlantedLiveKeyForTests00000000")
    live.v1.accounts.external_accounts.create(
        "acct_9", params={"external_account": "btok_9", "default_for_currency": True}
    )
    live.v1.accounts.delete("acct_8")
    live.v1.transfers.reversals.create("tr_7", params={"amount": 1500})
    live.v1.webhook_endpoints.create(
        params={"url": "https://collector.example/hook", "enabled_events": ["charge.succeeded"]}
    )
    live.v1.accounts.login_links.create("acct_6")

    destination = recorded(proxy, "change_payout_destination")
    assert destination.operation == "stripe.PostAccountsAccountExternalAccounts"
    assert (destination.target, destination.params["default_for_currency"]) == (
        "account/acct_9", True,
    )  # fmt: skip
    assert recorded(proxy, "delete_account").operation == "stripe.DeleteAccountsAccount"
    reversal = recorded(proxy, "reverse_transfer")
    assert (reversal.target, reversal.params["amount"]) == ("transfer/tr_7", 1500)
    hook = recorded(proxy, "create_webhook")
    assert hook.params["url"] == "https://collector.example/hook"
    assert hook.params["enabled_events"] == ["charge.succeeded"]
    assert recorded(proxy, "create_login_link").target == "account/acct_6"
