"""Several proxies on one PostgreSQL: one approval per call whichever instances see it, one
forward per approval, and an approval that outlives the instance that first held it."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from airlock.console.standins import Upstream
from tests.e2e.test_gate import Background, airlock, eventually, pending, runs
from tests.helpers.proxy import Proxy

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


@pytest.fixture
def three(start_proxy: Callable[..., Proxy], empty_pg_database: str) -> list[Proxy]:
    return [
        start_proxy("--hold-timeout", "60", "--approval-timeout", "120", db_url=empty_pg_database)
        for _ in range(3)
    ]


def delete_customer(proxy: Proxy, customer: str, key: str) -> requests.Response:
    session = proxy.session(agent="ops-bot")
    session.headers["Idempotency-Key"] = key
    return session.delete(f"https://api.stripe.com/v1/customers/{customer}", timeout=90)


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
        approved = airlock("approve", waiting["id"], "--reviewer", "alice", "--db", first.db_url)
        assert approved.returncode == 0, approved.stderr
        statuses = sorted(a.result(timeout=60).status_code for a in answers)

    assert statuses == [200, 409]  # one forward; the other attempt is told it went out once
    assert upstream.count("/v1/customers/cus_twice") == 1
    assert [p for p in pending(first) if p["target"] == "customer/cus_twice"] == []
    assert airlock("audit", "verify", "--db", first.db_url).returncode == 0


def test_an_instance_killed_while_holding_leaves_the_approval_to_the_retry_on_another(
    three: list[Proxy], upstream: Upstream, start_proxy: Callable[..., Proxy]
) -> None:
    first, second, _ = three
    held = Background(lambda: delete_customer(first, "cus_orphan", "orphan-1"))
    [waiting] = eventually(
        lambda: [p for p in pending(first) if p["target"] == "customer/cus_orphan"]
    )
    assert first.process is not None
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    with pytest.raises(requests.exceptions.RequestException):
        held.result()

    retry = Background(lambda: delete_customer(second, "cus_orphan", "orphan-1"))
    # The retry joined the approval on the second instance (no second approval opened) ...
    assert eventually(lambda: len([r for r in _reasons(second) if "joins approval" in r]) == 1)
    # ... so an instance starting on this host (the first one's restart) leaves it open.
    start_proxy("--hold-timeout", "60", db_url=second.db_url)
    [still] = [p for p in pending(second) if p["target"] == "customer/cus_orphan"]
    assert still["id"] == waiting["id"]

    assert airlock("approve", waiting["id"], "--db", second.db_url).returncode == 0
    assert retry.result(timeout=60).status_code == 200
    assert upstream.count("/v1/customers/cus_orphan") == 1
    assert airlock("audit", "verify", "--db", second.db_url).returncode == 0


def _reasons(proxy: Proxy) -> list[str]:
    return [run.reason for run in runs(proxy) if run.target == "customer/cus_orphan"]
