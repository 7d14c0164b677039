"""Several proxies on one PostgreSQL: one approval per call whichever instances see it, one
forward per approval, and an approval that outlives the instance that first held it."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import select

from airlock.console.standins import Upstream
from airlock.store.schema import Approval, open_engine
from tests.e2e.test_gate import CHARGES, Background, airlock, eventually, pending, runs
from tests.helpers.proxy import Proxy

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


@pytest.fixture
def three(start_proxy: Callable[..., Proxy], empty_pg_database: str) -> list[Proxy]:
    """Three instances, each with its decider up (its lease taken): a decider still starting
    would settle at once what an instance killed meanwhile left, as a restart does."""
    proxies = [
        start_proxy("--hold-timeout", "60", "--approval-timeout", "120", db_url=empty_pg_database)
        for _ in range(3)
    ]
    # The decider logs this once its store is prepared and its lease taken.
    assert eventually(lambda: all("history loaded" in p.output() for p in proxies))
    return proxies


CUSTOMERS = "https://api.stripe.com/v1/customers/"


def delete_customer(proxy: Proxy, customer: str, key: str) -> requests.Response:
    session = proxy.session(agent="ops-bot")
    session.headers["Idempotency-Key"] = key
    return session.delete(CUSTOMERS + customer, timeout=90)


def test_the_same_call_at_two_instances_opens_one_approval_and_goes_out_once(
    three: list[Proxy], upstream: Upstream
) -> None:
    first, second, _ = three
    at_once = threading.Barrier(2)

    def attempt(proxy: Proxy) -> requests.Response:
        at_once.wait()
        return delete_customer(proxy, "cus_twice", "twice-1")

    with ThreadPoolExecutor(2) as pool:
        answers = [pool.submit(attempt, proxy) for proxy in (first, second)]
        [waiting] = eventually(
            lambda: [p for p in pending(first) if p["target"] == "customer/cus_twice"]
        )
        approved = airlock("approve", waiting["id"], "--reviewer", "alice", *first.store)
        assert approved.returncode == 0, approved.stderr
        statuses = sorted(a.result(timeout=60).status_code for a in answers)

    assert statuses == [200, 409]  # one forward; the other attempt is told it went out once
    assert upstream.count("/v1/customers/cus_twice") == 1
    assert [p for p in pending(first) if p["target"] == "customer/cus_twice"] == []
    assert airlock("audit", "verify", "--db", first.db_url).returncode == 0


def killed_while_holding(proxy: Proxy, customer: str, key: str) -> dict[str, Any]:
    """The call held at `proxy`, then `proxy` killed (kill -9): its client's attempt fails.
    Returns the approval it held, as `airlock pending` listed it."""
    held = Background(lambda: delete_customer(proxy, customer, key))
    [waiting] = eventually(
        lambda: [p for p in pending(proxy) if p["target"] == f"customer/{customer}"]
    )
    assert proxy.process is not None
    proxy.process.send_signal(signal.SIGKILL)
    proxy.process.wait(10)
    with pytest.raises(requests.exceptions.RequestException):
        held.result()
    return waiting


def test_an_instance_killed_while_holding_leaves_the_approval_to_the_retry_on_another(
    three: list[Proxy], upstream: Upstream, start_proxy: Callable[..., Proxy]
) -> None:
    first, second, _ = three
    waiting = killed_while_holding(first, "cus_orphan", "orphan-1")

    retry = Background(lambda: delete_customer(second, "cus_orphan", "orphan-1"))
    # The retry joined the approval on the second instance (no second approval opened) ...
    assert eventually(lambda: len([r for r in _reasons(second) if "joins approval" in r]) == 1)
    # ... so an instance starting on this host (the first one's restart) leaves it open.
    start_proxy("--hold-timeout", "60", db_url=second.db_url)
    [still] = [p for p in pending(second) if p["target"] == "customer/cus_orphan"]
    assert still["id"] == waiting["id"]

    assert airlock("approve", waiting["id"], *second.store).returncode == 0
    assert retry.result(timeout=60).status_code == 200
    assert upstream.count("/v1/customers/cus_orphan") == 1
    assert airlock("audit", "verify", "--db", second.db_url).returncode == 0


def test_an_instance_killed_while_alone_holding_is_settled_by_the_others_without_a_restart(
    three: list[Proxy],
) -> None:
    """kill -9 of the only instance holding a call, never restarted: its decider ends its lease
    as its input ends, and a running instance, once the grace for a retry to join has passed
    (RETRY_GRACE_SECONDS), expires the approval nobody can release and marks the held run not
    sent."""
    first, second, _ = three
    waiting = killed_while_holding(first, "cus_alone", "alone-1")
    engine = open_engine(second.db_url)

    def settled() -> tuple[str, str | None] | None:
        with engine.connect() as conn:
            state, reason = conn.execute(
                select(Approval.state, Approval.reason).where(Approval.id == waiting["id"])
            ).one()
        return (state, reason) if state != "PENDING" else None

    try:
        assert eventually(settled, timeout=40) == ("EXPIRED", "the proxies holding it stopped")
    finally:
        engine.dispose()
    [run] = [r for r in runs(second) if r.target == "customer/cus_alone"]
    assert run.outcome == "not_sent"
    assert airlock("audit", "verify", "--db", second.db_url).returncode == 0


def held_at_both(first: Proxy, second: Proxy, customer: str, key: str) -> Background:
    """The call held at `first` (which opened its approval), then its retry joined at `second`;
    returns the retry."""
    target = f"customer/{customer}"
    assert eventually(lambda: [p for p in pending(first) if p["target"] == target])
    retry = Background(lambda: delete_customer(second, customer, key))
    assert eventually(
        lambda: any("joins approval" in r.reason for r in runs(second) if r.target == target)
    )
    time.sleep(0.5)  # its decision is answered: the retry is held at `second` now
    return retry


def approve_and_forward_once(
    held: Background, proxy: Proxy, upstream: Upstream, customer: str
) -> None:
    """The approval was left open for the held retry: approving it forwards the retry, once."""
    [waiting] = [p for p in pending(proxy) if p["target"] == f"customer/{customer}"]
    assert airlock("approve", waiting["id"], *proxy.store).returncode == 0
    assert held.result(timeout=30).status_code == 200
    assert upstream.count(f"/v1/customers/{customer}") == 1
    assert airlock("audit", "verify", "--db", proxy.db_url).returncode == 0


def test_an_instance_that_stops_leaves_the_approval_to_another_holding_it(
    three: list[Proxy], upstream: Upstream
) -> None:
    first, second, _ = three
    held = Background(lambda: delete_customer(first, "cus_stops", "stops-1"))
    retry = held_at_both(first, second, "cus_stops", "stops-1")

    first.stop()  # graceful: its own held flow is answered 503, its hold ends
    assert held.result(timeout=10).status_code == 503
    time.sleep(1.0)
    assert not retry.finished, "the other instance's held flow was refused"
    approve_and_forward_once(retry, second, upstream, "cus_stops")


def test_a_client_that_leaves_one_instance_leaves_the_approval_to_its_retry_on_another(
    three: list[Proxy], upstream: Upstream
) -> None:
    first, second, _ = three
    session = first.session(agent="ops-bot")
    session.headers["Idempotency-Key"] = "leaves-1"
    gone = Background(lambda: session.delete(CUSTOMERS + "cus_leaves", timeout=4))
    retry = held_at_both(first, second, "cus_leaves", "leaves-1")

    with pytest.raises(requests.exceptions.Timeout):  # the first attempt's SDK gives up
        gone.result(timeout=10)
    assert eventually(lambda: any(
        r.outcome == "abandoned" for r in runs(first) if r.target == "customer/cus_leaves"
    ))  # fmt: skip
    assert not retry.finished, "the retry held at the other instance was refused"
    approve_and_forward_once(retry, second, upstream, "cus_leaves")


def _reasons(proxy: Proxy) -> list[str]:
    return [run.reason for run in runs(proxy) if run.target == "customer/cus_orphan"]


BUDGET = """
rules:
  - id: charge-budget
    when: {action: create_charge}
    budget: {param: amount, limit: 1000, window: 1h, per: agent, currency: usd}
    decision: BLOCK
    reason: At most 10.00 USD of charges per agent per hour, across every instance.
"""


def test_a_budget_counts_what_another_instance_let_through(
    start_proxy: Callable[..., Proxy], empty_pg_database: str, upstream: Upstream,
    tmp_path: Path,
) -> None:  # fmt: skip
    """Each decider reads the others' committed decisions every 2 s (HISTORY_SYNC_SECONDS):
    a charge let through by one instance counts in the budget at the other within that bound,
    and the other's own small charges never reach the limit by themselves."""
    (tmp_path / "budget.yaml").write_text(BUDGET)
    first, second = (
        start_proxy("--policies", str(tmp_path), db_url=empty_pg_database) for _ in range(2)
    )
    charge = {"currency": "usd", "customer": "cus_budget"}
    at_second = second.session(agent="biller")  # its decider is up and has read the past
    assert at_second.post(CHARGES, data={**charge, "amount": 1}).ok
    assert first.session(agent="biller").post(CHARGES, data={**charge, "amount": 998}).ok
    spent_at = time.monotonic()
    answers = []
    while time.monotonic() - spent_at < 10 and (not answers or answers[-1] == 200):
        answers.append(at_second.post(CHARGES, data={**charge, "amount": 1}).status_code)
        time.sleep(0.05)
    seen_after = time.monotonic() - spent_at
    assert answers[-1] == 403, f"the second instance never counted the first's charge: {answers}"
    blocked = [r for r in runs(second) if r.decision == "BLOCK"]
    assert blocked and blocked[-1].rules == ["charge-budget"]
    # The bound is the refresh interval (2 s) plus a commit: said, not timed, here.
    print(
        f"budget saw the other instance's charge after {seen_after:.2f} s, "
        f"{len(answers) - 1} small charges let through meanwhile"
    )
