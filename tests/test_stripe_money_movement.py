"""No Stripe operation that moves money, or decides where it goes, is let through unasked.

Measured against the whole catalog, not a few examples: every Stripe write operation whose name
meets the criteria written above the Stripe money rules in policies/baseline.yaml is sent, as a
live-mode request of 5,000.00, to the shipped mappings and policies, and none may be ALLOWed.
The operations are chosen from catalog/openapi/stripe.json by those criteria, so one a newer
catalog adds (or a rule that stops naming one) fails here until a rule holds it.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from airlock.pipeline.document import WireRequest, build_document
from airlock.pipeline.evaluation import Config, Evaluation, evaluate
from airlock.pipeline.policies import ALLOW
from tests.helpers.proxy import PROJECT_ROOT

CONFIG = Config.load(PROJECT_ROOT / "mappings", PROJECT_ROOT / "policies")
CATALOG = json.loads((PROJECT_ROOT / "catalog" / "openapi" / "stripe.json").read_text())

# The criteria, by Stripe's operationId (`Post` + the path's words + the action's), each matched
# against the whole name.
MONEY_MOVEMENT = {
    "money out of the account, between accounts, or back to a customer": (
        r"Post(Treasury|V2MoneyManagement)?"
        r"(OutboundPayments|OutboundTransfers|InboundTransfers|Transfers|Payouts|PayoutIntents"
        r"|PayoutIntentsIdConfirm|Topups)"
        r"|Post(?!Tax)\w*(Refunds|Reversals|Reverse|RefundPayment)"
        r"|PostClimateOrders"
    ),
    "credits to a customer": (
        r"PostCreditNotes|PostCustomersCustomerBalanceTransactions|PostBillingCreditGrants"
        r"|PostDisputesDisputeClose"
    ),
    "taking a payment, or raising what it takes": (
        r"PostCharges|PostPaymentIntents"
        r"|PostPaymentIntentsIntentConfirm|PostInvoicesInvoice(Pay|Finalize)"
        r"|Post\w*(Capture|ApplyCustomerBalance|IncrementAuthorization|(Confirm|Process)PaymentIntent)"
    ),
    "an invoice Stripe charges without the finalize call, or more on one": (
        r"PostInvoices(Invoice)?|PostInvoiceitems(Invoiceitem)?"
        r"|PostInvoicesInvoice(AddLines|UpdateLines|LinesLineItemId|AttachPayment)"
    ),
    "a spending instrument created, enabled or loosened": (
        r"PostIssuingCards\w*|PostIssuingCardholdersCardholder|PostIssuing\w*Approve"
        r"|PostTreasuryFinancialAccounts\w*"
    ),
    "where money goes": (
        r"PostAccountsAccount|PostV2CoreAccountsId|PostBalanceSettings"
        r"|Post\w*(ExternalAccounts|BankAccounts|OutboundSetupIntents|PayoutMethods)\w*"
    ),
}
CRITERIA = {why: re.compile(pattern) for why, pattern in MONEY_MOVEMENT.items()}
# What stops or takes back a movement moves nothing itself.
STOPS_IT = re.compile(r"\w*(Cancel|Expire|Void|Decline)")

LIVE_KEY = "sk_live_51PlantedLiveKeyForTests00000000"
IDS = {
    "account": "acct_1", "account_id": "acct_1", "authorization": "iauth_1", "card": "ic_1",
    "cardholder": "ich_1", "charge": "ch_1", "customer": "cus_1", "dispute": "dp_1",
    "fee": "fee_1", "financial_account": "fa_1", "intent": "pi_1", "invoice": "in_1",
    "payout": "po_1", "reader": "tmr_1", "refund": "re_1", "transfer": "tr_1",
}  # fmt: skip
LABEL = re.compile(r"\{(\w+)\}")


def why_it_moves_money(operation: dict[str, Any]) -> str | None:
    # Test helpers act on test-mode objects only: a live key has none to act on.
    if not operation["write"] or "/test_helpers/" in operation["path"]:
        return None
    if STOPS_IT.fullmatch(operation["name"]):
        return None
    return next((why for why, name in CRITERIA.items() if name.fullmatch(operation["name"])), None)


MOVING_MONEY = [
    pytest.param(operation, why, id=operation["name"])
    for operation in CATALOG["operations"]
    if (why := why_it_moves_money(operation))
]


def live_request(operation: dict[str, Any]) -> WireRequest:
    """The operation as an agent with a live key sends it, moving 5,000.00."""
    path = LABEL.sub(lambda label: IDS.get(label[1], f"{label[1]}_1"), operation["path"])
    if path.startswith("/v2/"):  # Stripe's v2 API takes JSON
        kind = "application/json"
        body = json.dumps({"amount": {"value": 500000, "currency": "usd"}}).encode()
    else:
        kind, body = "application/x-www-form-urlencoded", b"amount=500000&currency=usd"
    headers = [("content-type", kind), ("authorization", f"Bearer {LIVE_KEY}")]
    return WireRequest(operation["method"], "https", "api.stripe.com", 443, path, headers, body)


def test_the_criteria_find_what_they_are_about() -> None:
    """A typo in a pattern must not leave the test below with nothing to check."""
    found = {param.values[0]["name"] for param in MOVING_MONEY}
    assert {
        "PostTreasuryOutboundPayments", "PostCreditNotes", "PostTopups",
        "PostCustomersCustomerBalanceTransactions", "PostInvoicesInvoicePay", "PostIssuingCards",
    } <= found  # fmt: skip
    assert not {"PostTreasuryOutboundPaymentsIdCancel", "PostSetupIntentsIntentConfirm"} & found


# Invoice operations that charge nothing more: the customer pays a sent invoice; voiding,
# marking uncollectible, removing lines and previews take back or charge nothing; rendering
# templates are layouts. Each is let through in live mode.
INVOICES_CHARGING_NOTHING_MORE = [
    "PostInvoicesInvoiceSend",
    "PostInvoicesInvoiceVoid",
    "PostInvoicesInvoiceMarkUncollectible",
    "PostInvoicesInvoiceRemoveLines",
    "PostInvoicesCreatePreview",
    "PostInvoiceRenderingTemplatesTemplateArchive",
    "PostInvoiceRenderingTemplatesTemplateUnarchive",
]


def decided_live(operation: dict[str, Any]) -> Evaluation:
    """The shipped policies' decision on the operation sent with a live key, identified as it."""
    evaluation = evaluate(build_document(live_request(operation), "billing-bot"), CONFIG)
    assert evaluation.action.operation == f"stripe.{operation['name']}"
    return evaluation


def assert_not_allowed_live(operation: dict[str, Any], why: str) -> None:
    evaluation = decided_live(operation)
    assert evaluation.verdict.decision != ALLOW, (
        f"{operation['method']} {operation['path']} ({why}) is allowed in live mode: "
        f"{evaluation.verdict.reason}"
    )


@pytest.mark.parametrize(("operation", "why"), MOVING_MONEY)
def test_a_live_money_movement_is_not_allowed(operation: dict[str, Any], why: str) -> None:
    assert_not_allowed_live(operation, why)


def test_every_invoice_write_is_judged() -> None:
    """A newer catalog's invoice write (a new way to charge one) fails here until it is judged."""
    invoices = {
        operation["name"]
        for operation in CATALOG["operations"]
        if operation["write"] and operation["path"].startswith(("/v1/invoice", "/v2/invoice"))
        and operation["method"] == "POST"
    }  # fmt: skip
    held = {param.values[0]["name"] for param in MOVING_MONEY}
    assert invoices - held == set(INVOICES_CHARGING_NOTHING_MORE)


@pytest.mark.parametrize("name", INVOICES_CHARGING_NOTHING_MORE)
def test_an_invoice_operation_that_charges_nothing_more_stays_allowed(name: str) -> None:
    operation = next(o for o in CATALOG["operations"] if o["name"] == name)
    assert decided_live(operation).verdict.decision == ALLOW
