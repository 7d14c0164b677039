"""Policy features through a running proxy: quorum, budgets and shadow rules."""

from __future__ import annotations

import textwrap
from collections.abc import Callable

import pytest

from airlock.console.standins import Upstream
from tests.e2e.test_gate import CHARGES, Background, airlock, eventually, pending, runs
from tests.helpers.proxy import Proxy

pytestmark = pytest.mark.e2e

POLICIES = """
default: ALLOW
rules:
  - {id: two-reviewers, when: {action: delete_record}, decision: REQUIRE_APPROVAL, approvals: 2}
  - id: refund-budget
    when: {action: create_refund}
    budget: {param: amount, limit: 1000, window: 1h}
    decision: BLOCK
    reason: Refunds beyond 10.00 an hour are blocked.
  - {id: trial, when: {action: create_charge}, decision: BLOCK, mode: shadow}
"""


@pytest.fixture(scope="module")
def proxy(start_proxy: Callable[..., Proxy], tmp_path_factory: pytest.TempPathFactory) -> Proxy:
    folder = tmp_path_factory.mktemp("live-policies")
    (folder / "rules.yaml").write_text(textwrap.dedent(POLICIES))
    return start_proxy("--policies", str(folder), "--hold-timeout", "30")


def test_a_quorum_of_two_distinct_reviewers_releases_the_request(
    proxy: Proxy, upstream: Upstream
) -> None:
    held = Background(
        lambda: proxy.session(agent="ops-bot").delete("https://api.stripe.com/v1/customers/cus_q")
    )
    [waiting] = eventually(lambda: pending(proxy))

    first = airlock("approve", waiting["id"], "--reviewer", "alice", *proxy.store)
    assert "1 of 2 distinct reviewers so far; still held" in first.stdout
    # The agent itself, and under names that read the same (a Unicode hyphen, a zero-width space).
    for name in ("ops-bot", "ops\u2010bot", "ops-\u200bbot"):
        self_approval = airlock("approve", waiting["id"], "--reviewer", name, *proxy.store)
        assert self_approval.returncode == 1, name
        assert "nobody approves their own request" in self_approval.stderr, name
    assert not held.finished and upstream.count() == 0

    second = airlock("approve", waiting["id"], "--reviewer", "bob", *proxy.store)
    assert second.returncode == 0 and second.stdout.startswith("approved")
    assert held.result().status_code == 200
    assert upstream.count("/v1/customers/cus_q") == 1


def test_budgets_count_what_went_through_and_shadow_rules_only_record(
    proxy: Proxy, upstream: Upstream
) -> None:
    session = proxy.session(agent="refund-bot")
    statuses = [
        session.post(
            "https://api.stripe.com/v1/refunds", data={"charge": "ch_1", "amount": 400}
        ).status_code
        for _ in range(3)
    ]
    assert statuses == [200, 200, 403]  # 400, 800, then 1,200 > 1,000
    assert upstream.count("/v1/refunds") == 2

    charge = session.post(CHARGES, data={"amount": 100, "currency": "usd"})
    assert charge.status_code == 200  # the shadow rule only records
    record = eventually(
        lambda: next(
            (r for r in runs(proxy) if r.id == charge.headers["X-Airlock-Request-Id"]), None
        )
    )
    assert (record.decision, record.shadow_decision, record.shadow_rules) == (
        "ALLOW",
        "BLOCK",
        ["trial"],
    )
    assert record.risk is not None and record.risk_factors
    assert "shadow: would BLOCK (trial)" in eventually(
        lambda: "shadow: would" in proxy.output() and proxy.output()
    )
