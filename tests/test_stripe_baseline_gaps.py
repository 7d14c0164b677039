"""No Stripe write that sends the account's events or data out, or opens the account to someone,
is let through unasked; and no account is closed, as none is deleted.

Measured against the whole catalog, not a few examples: every Stripe write whose name meets the
criteria written above the rules on who can reach a Stripe account (policies/baseline.yaml) is
sent, as a live-mode request, to the shipped mappings and policies, and none may be ALLOWed. A
name the words pick that the criteria leave out is listed below with why, so one a newer catalog
adds (a new kind of link, session or token) fails here until a rule holds it or it is judged and
listed.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from airlock.pipeline.policies import BLOCK
from tests.test_stripe_money_movement import CATALOG, assert_not_allowed_live, decided_live

# The criteria, by Stripe's operationId (`Post` + the path's words + the action's), each matched
# against the whole name; the first that matches says why.
REACH = {
    "makes the account's files readable by anyone with a URL": r"PostFileLinks\w*",
    "sends the account's events or data where the request says": (
        r"Post(WebhookEndpoints|V2CoreEventDestinations|Forwarding)\w*"
    ),
    "hands someone a way into the account": r"Post\w*(Links?|Sessions?|Keys|Tokens?|Installs)\w*",
}
CRITERIA = {why: re.compile(pattern) for why, pattern in REACH.items()}
# What stops the sending or takes the access back opens nothing.
STOPS_IT = re.compile(r"\w*(Cancel|Expire|Disable|Uninstall|Redact)")
# Names the words above pick that open nothing of the account, each judged.
JUDGED_HARMLESS = {
    "PostCheckoutSessions": "the customer pays",
    "PostCheckoutSessionsSession": "the customer pays",
    "PostPaymentLinks": "the customer pays",
    "PostPaymentLinksPaymentLink": "the customer pays",
    "PostBillingPortalSessions": "one customer's own billing, for that customer",
    "PostCustomerSessions": "one customer's own payment methods, for that customer",
    "PostIdentityVerificationSessions": "a person gives an identity document, takes nothing",
    "PostIdentityVerificationSessionsSession": "a person gives an identity document",
    "PostFinancialConnectionsSessions": "a customer links a bank account, takes nothing",
    "PostTokens": "carries card, bank or person data into Stripe",
    "PostV2CoreAccountTokens": "carries account data into Stripe",
    "PostV2CoreAccountsAccountIdPersonTokens": "carries a person's data into Stripe",
    "PostIssuingTokensToken": "a card's wallet token: a spending instrument, not the account",
    "PostFileLinksLink": "changes only when a link expires (`now` revokes it)",
    "PostV2CoreEventDestinationsIdPing": "a test event, no account data, to the destination set",
    "PostShippingRatesShippingRateToken": "updates a shipping rate (its id is called a token)",
}
# Deleting an account is blocked; closing one is its v2 twin.
CLOSES_AN_ACCOUNT = re.compile(
    r"Delete(V2Core)?Accounts(Account|Id)|Post(V2Core)?Accounts(Account|Id)Close"
)


def why_it_reaches_out(operation: dict[str, Any]) -> str | None:
    # Test helpers act on test-mode objects only: a live key has none to act on.
    if not operation["write"] or "/test_helpers/" in operation["path"]:
        return None
    name = operation["name"]
    if STOPS_IT.fullmatch(name) or name in JUDGED_HARMLESS:
        return None
    return next((why for why, pattern in CRITERIA.items() if pattern.fullmatch(name)), None)


REACHING_OUT = [
    pytest.param(operation, why, id=operation["name"])
    for operation in CATALOG["operations"]
    if (why := why_it_reaches_out(operation))
]
CLOSING = [
    pytest.param(operation, id=operation["name"])
    for operation in CATALOG["operations"]
    if CLOSES_AN_ACCOUNT.fullmatch(operation["name"])
]


def test_the_criteria_find_what_they_are_about() -> None:
    """A typo in a pattern, or a judged name the catalog lost, must not go unnoticed."""
    found = {param.values[0]["name"] for param in REACHING_OUT}
    assert {
        "PostWebhookEndpoints", "PostV2CoreEventDestinations",
        "PostV2CoreEventDestinationsIdEnable", "PostForwardingRequests",
        "PostAccountsAccountLoginLinks", "PostAccountLinks", "PostV2CoreAccountLinks",
        "PostAccountSessions", "PostFileLinks", "PostAppsInstalls",
    } <= found  # fmt: skip
    assert not {"PostV2CoreEventDestinationsIdDisable", "PostAppsInstallsIdUninstall"} & found
    names = {operation["name"] for operation in CATALOG["operations"]}
    assert set(JUDGED_HARMLESS) <= names
    assert {param.values[0]["name"] for param in CLOSING} == {
        "DeleteAccountsAccount", "PostV2CoreAccountsIdClose",
    }  # fmt: skip


@pytest.mark.parametrize(("operation", "why"), REACHING_OUT)
def test_a_live_write_that_reaches_out_is_not_allowed(operation: dict[str, Any], why: str) -> None:
    assert_not_allowed_live(operation, why)


@pytest.mark.parametrize("operation", CLOSING)
def test_closing_an_account_is_blocked_as_deleting_one_is(operation: dict[str, Any]) -> None:
    evaluation = decided_live(operation)
    assert evaluation.verdict.decision == BLOCK, (
        f"{operation['method']} {operation['path']} is {evaluation.verdict.decision}: "
        f"{evaluation.verdict.reason}"
    )
