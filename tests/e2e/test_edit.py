"""Approve with an edit through a running Airlock: a reviewer lowers a held Stripe charge, the
upstream receives the edited amount once, and the record and the audit chain keep both request
hashes and who edited it; an edit that makes the request blocked is refused."""

from __future__ import annotations

import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Callable
from typing import Any

import pytest
import stripe
from sqlalchemy import select

from airlock.console.standins import Upstream
from airlock.store.schema import Approval, open_engine
from tests.e2e.test_gate import eventually, pending, runs
from tests.helpers.console import review_in_console
from tests.helpers.proxy import PROJECT_ROOT, Proxy, clean_env
from tests.helpers.sdks import stripe_through

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def proxy(start_proxy: Callable[..., Proxy]) -> Proxy:
    return start_proxy("--hold-timeout", "30")


@pytest.fixture
def stripe_agent(proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    stripe_through(proxy, monkeypatch, "billing-agent")


def airlock(proxy: Proxy, *args: str) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "airlock.console.cli", *args, *proxy.store],
        cwd=PROJECT_ROOT, env=clean_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip


class Charge:
    """A charge the agent makes from another thread, held until a reviewer decides."""

    def __init__(self, amount: int) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(amount,), daemon=True)
        self.thread.start()

    def _run(self, amount: int) -> None:
        try:
            self.result = stripe.Charge.create(
                amount=amount, currency="usd", customer="cus_edit", description="quarterly"
            )
        except BaseException as e:
            self.error = e

    def join(self) -> None:
        self.thread.join(60)
        assert not self.thread.is_alive(), "the charge is still held"


def charges_sent(upstream: Upstream) -> list[dict[str, str]]:
    return [
        dict(urllib.parse.parse_qsl(r.body.decode()))
        for r in upstream.received
        if r.path == "/v1/charges"
    ]


def test_a_reviewer_lowers_a_charge_and_the_upstream_receives_the_edit_once(
    proxy: Proxy, upstream: Upstream, stripe_agent: None
) -> None:
    charge = Charge(150000)  # over 1,000.00: held by the baseline
    [held] = eventually(lambda: pending(proxy), timeout=30)
    approved = airlock(proxy, "approve", held["id"][:12], "--reviewer", "alice",
                       "--reason", "half now", "--set", "amount=50000")  # fmt: skip
    assert approved.returncode == 0, approved.stderr
    charge.join()
    assert charge.error is None, charge.error
    [sent] = charges_sent(upstream)
    assert (sent["amount"], sent["currency"], sent["description"]) == ("50000", "usd", "quarterly")
    [received] = [r for r in upstream.received if r.path == "/v1/charges"]
    assert int(received.headers["content-length"]) == len(received.body)

    def edited() -> Any:
        found = [r for r in runs(proxy) if (r.context or {}).get("edit_of") == held["run_id"]]
        return found[0] if found and found[0].outcome else None

    released = eventually(edited)
    original = next(r for r in runs(proxy) if r.id == held["run_id"])
    assert original.outcome == "edited"
    assert (released.decision, released.params["amount"], released.outcome) == (
        "ALLOW",
        50000,
        "forwarded",
    )
    context = released.context
    assert context["edit"] == {"amount": 50000} and context["edited_by"] == "alice"
    assert context["proposed_hash"] and context["released_hash"]
    assert context["proposed_hash"] != context["released_hash"]
    verified = airlock(proxy, "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def approval_of(proxy: Proxy, approval_id: str) -> Any:
    engine = open_engine(proxy.db_url)
    try:
        with engine.connect() as conn:
            return conn.execute(select(Approval).where(Approval.id == approval_id)).one()
    finally:
        engine.dispose()


def test_an_edit_that_makes_the_request_blocked_is_refused(
    proxy: Proxy, upstream: Upstream, stripe_agent: None
) -> None:
    charge = Charge(150000)
    [held] = eventually(lambda: pending(proxy), timeout=30)
    approved = airlock(proxy, "approve", held["id"][:12], "--reviewer", "alice",
                       "--reason", "typo", "--set", "amount=2000000")  # fmt: skip
    assert approved.returncode == 0, approved.stderr
    charge.join()
    assert isinstance(charge.error, stripe.error.PermissionError)
    assert "never made by an agent" in str(charge.error)
    assert charges_sent(upstream) == []
    original = next(r for r in runs(proxy) if r.id == held["run_id"])
    assert original.outcome == "edit_refused"
    # Nothing went out: the release is withdrawn, not left to say it was forwarded once.
    assert eventually(lambda: approval_of(proxy, held["id"]).released_at is None)
    verified = airlock(proxy, "audit", "verify")  # the withdrawal is on the chain, named
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_params_that_cannot_be_edited_are_refused_with_why(
    proxy: Proxy, upstream: Upstream, stripe_agent: None
) -> None:
    charge = Charge(150000)
    [held] = eventually(lambda: pending(proxy), timeout=30)
    literal = airlock(proxy, "approve", held["id"][:12], "--set", "kind=refund")
    assert literal.returncode == 1
    assert "param 'kind' is read as 'a literal'" in literal.stderr
    unknown = airlock(proxy, "approve", held["id"][:12], "--set", "amout=5")
    assert unknown.returncode == 1 and "has no param 'amout'" in unknown.stderr
    typed = airlock(proxy, "approve", held["id"][:12], "--set", "amount=lots")
    assert typed.returncode == 1 and "amount must be int, not 'lots'" in typed.stderr
    assert airlock(proxy, "deny", held["id"][:12], "--reason", "no").returncode == 0
    charge.join()
    assert charges_sent(upstream) == []


def test_the_console_edits_and_approves_through_the_same_rules(
    proxy: Proxy, upstream: Upstream, stripe_agent: None
) -> None:
    """`e` in the reviewer console: the same store function as `airlock approve --set`."""
    charge = Charge(150000)
    eventually(lambda: pending(proxy), timeout=30)
    keys = ["e", "type:amount=40000", "enter", "type:a smaller first charge", "enter"]
    review_in_console(proxy.db_url, keys, lambda: not charge.thread.is_alive())
    charge.join()
    assert charge.error is None, charge.error
    assert [sent["amount"] for sent in charges_sent(upstream)] == ["40000"]
