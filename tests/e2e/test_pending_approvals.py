"""Approvals that outlive one attempt: the hold window is shorter than SDK timeouts, the SDK is
told "approval pending", and its retry joins the same approval and is forwarded exactly once."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import stripe
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from airlock.console.standins import Upstream
from tests.e2e.test_gate import Background, airlock, eventually, pending, runs
from tests.helpers.proxy import Proxy

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def proxy(start_proxy: Callable[..., Proxy], session_upstream: Upstream) -> Proxy:
    return start_proxy(
        "--hold-timeout", "1", "--approval-timeout", "120",
        routes={"slack.com": session_upstream.port},
    )  # fmt: skip


def approve_when_pending(proxy: Proxy, target: str) -> None:
    """Wait until the first attempt was answered 'pending', then approve from another process."""
    [waiting] = eventually(lambda: [p for p in pending(proxy) if p["target"] == target])
    assert eventually(
        lambda: any(r.outcome == "pending" for r in runs(proxy) if r.target == target)
    )
    assert airlock("approve", waiting["id"], "--reviewer", "alice", *proxy.store).returncode == 0


def test_a_retry_joins_the_approval_and_is_forwarded_exactly_once(
    proxy: Proxy, upstream: Upstream
) -> None:
    session = proxy.session(agent="ops-bot")
    session.headers["Idempotency-Key"] = "retry-me-1"
    url = "https://api.stripe.com/v1/customers/cus_retry"

    first = session.delete(url)
    assert first.status_code == 503
    assert first.headers["Retry-After"] == "2" and first.headers["Stripe-Should-Retry"] == "true"
    approval_id = first.headers["X-Airlock-Approval-Id"]
    assert first.json()["approval"]["state"] == "PENDING"
    assert "approval pending" in first.json()["reason"]
    assert [p["id"] for p in pending(proxy) if p["target"] == "customer/cus_retry"] == [approval_id]

    second = session.delete(url)  # still pending: held again, then pending again
    assert second.status_code == 503 and second.headers["X-Airlock-Approval-Id"] == approval_id
    assert airlock("approve", approval_id, *proxy.store).returncode == 0

    third = session.delete(url)
    assert third.status_code == 200
    fourth = session.delete(url)
    assert fourth.status_code == 409
    assert "already been forwarded once" in fourth.json()["reason"]
    assert upstream.count("/v1/customers/cus_retry") == 1
    assert len([p for p in pending(proxy) if p["target"] == "customer/cus_retry"]) == 0
    assert airlock("audit", "verify", "--db", proxy.db_url).returncode == 0


def test_attempts_sent_at_once_share_one_approval(proxy: Proxy, upstream: Upstream) -> None:
    """An agent that sends one call several times at once (one idempotency key, separate
    connections): one approval for a reviewer, and the call goes out once."""
    url = "https://api.stripe.com/v1/customers/cus_at_once"
    at_once = threading.Barrier(4)

    def attempt(_: int) -> Any:
        session = proxy.session(agent="ops-bot")
        session.headers["Idempotency-Key"] = "at-once-1"
        at_once.wait()
        return session.delete(url)

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(attempt, range(4)))

    assert [a.status_code for a in answers] == [503] * 4, [a.json()["reason"] for a in answers]
    [approval_id] = {a.headers["X-Airlock-Approval-Id"] for a in answers}
    assert [p["id"] for p in pending(proxy) if p["target"] == "customer/cus_at_once"] == [
        approval_id
    ]
    assert airlock("approve", approval_id, *proxy.store).returncode == 0
    session = proxy.session(agent="ops-bot")
    session.headers["Idempotency-Key"] = "at-once-1"
    assert session.delete(url).status_code == 200
    assert upstream.count("/v1/customers/cus_at_once") == 1


@pytest.fixture
def stripe_defaults(proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """stripe-python at its default retry settings, pointed at the proxy."""
    monkeypatch.setattr(stripe, "api_key", "sk_test_defaults00000000000000")
    monkeypatch.setattr(stripe, "proxy", proxy.url)
    monkeypatch.setattr(stripe, "ca_bundle_path", str(proxy.ca_cert))
    monkeypatch.setattr(stripe, "default_http_client", None)
    yield


def test_stripe_retries_by_itself_and_its_retry_is_released(
    proxy: Proxy, upstream: Upstream, stripe_defaults: None
) -> None:
    assert stripe.max_network_retries >= 1, "stripe-python's default retries changed"
    call = Background(lambda: stripe.Customer.delete("cus_sdk_pending"))  # type: ignore[arg-type,return-value]
    approve_when_pending(proxy, "customer/cus_sdk_pending")

    deleted = call.result(timeout=30)
    assert deleted.deleted is True  # type: ignore[attr-defined]
    assert upstream.count("/v1/customers/cus_sdk_pending") == 1
    attempts = [r for r in runs(proxy) if r.target == "customer/cus_sdk_pending"]
    assert len({r.reason for r in attempts if "joins approval" in r.reason}) >= 1


def slack_through(proxy: Proxy, token: str) -> WebClient:
    return WebClient(
        token=token, proxy=proxy.url, ssl=ssl.create_default_context(cafile=str(proxy.ca_cert))
    )


def test_slack_sdk_raises_an_error_that_says_what_is_going_on(
    proxy: Proxy, upstream: Upstream
) -> None:
    slack = slack_through(proxy, "xoxb-1-2-pending")
    with pytest.raises(SlackApiError) as pending_error:
        slack.chat_delete(channel="C0PENDING", ts="1.1")
    assert "approval pending" in str(pending_error.value)
    assert pending_error.value.response.status_code == 503
    approval_id = pending_error.value.response.data["approval"]["id"]
    assert airlock("approve", approval_id, *proxy.store).returncode == 0

    retried = slack.chat_delete(channel="C0PENDING", ts="1.1")  # the same call, later
    assert retried["ok"] is True
    assert upstream.count("/api/chat.delete") == 1


def test_slack_refusals_are_slack_errors_that_carry_the_reason_and_are_not_retried(
    proxy: Proxy, upstream: Upstream
) -> None:
    """Slack answers refusals 200 with ok false and the text in `error`: @slack/web-api retried
    Airlock's 403 for about 30 minutes with only "statusCode = 403" to show (found by review);
    slack_sdk raises SlackApiError, the reason in `error`, after one attempt."""
    slack = slack_through(proxy, "xoxb-1-2-denied")
    with pytest.raises(SlackApiError) as pending_error:
        slack.chat_delete(channel="C0DENIED", ts="2.2")
    assert pending_error.value.response.status_code == 503  # pending: retried, as it should be
    approval_id = pending_error.value.response.data["approval"]["id"]
    assert airlock("deny", approval_id, "--reason", "not that one", *proxy.store).returncode == 0

    with pytest.raises(SlackApiError) as denied:
        slack.chat_delete(channel="C0DENIED", ts="2.2")
    answer = denied.value.response
    assert answer.status_code == 200 and answer.data["ok"] is False
    assert answer.data["error"].startswith("Airlock refused delete_message: denied by ")
    assert "not that one" in answer.data["error"]
    assert {k.lower() for k in answer.headers} >= {"x-airlock-decision", "x-airlock-request-id"}
    attempts = [r for r in runs(proxy) if r.target and "C0DENIED" in r.target]
    assert len(attempts) == 2 and upstream.count("/api/chat.delete") == 0


def test_boto3_retries_by_itself_and_its_retry_is_released(
    start_proxy: Callable[..., Proxy], moto_port: int, session_upstream: Upstream
) -> None:
    import boto3

    from tests.e2e.test_catalog_aws import AWS_HOSTS

    aws_proxy = start_proxy(
        "--hold-timeout", "1", "--approval-timeout", "120",
        routes={host: moto_port for host in AWS_HOSTS},
    )  # fmt: skip
    dynamodb = boto3.client(
        "dynamodb", region_name="us-east-1", aws_access_key_id="AKIAIOSFODNN7EXAMPLE",
        aws_secret_access_key="secret", verify=str(aws_proxy.ca_cert),
        config=boto3.session.Config(proxies={"https": aws_proxy.url}),  # default retries
    )  # fmt: skip
    direct = boto3.client(  # straight to moto: creating the table is not what is tested
        "dynamodb", region_name="us-east-1", aws_access_key_id="AKIAIOSFODNN7EXAMPLE",
        aws_secret_access_key="secret", endpoint_url=f"https://localhost:{moto_port}",
        verify=str(session_upstream.ca_file),
    )  # fmt: skip
    direct.create_table(
        TableName="pending-orders",
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    call = Background(lambda: dynamodb.delete_table(TableName="pending-orders"))
    approve_when_pending(aws_proxy, "dynamodb/pending-orders")

    deleted = call.result(timeout=60)
    assert deleted["TableDescription"]["TableName"] == "pending-orders"

    def forwarded() -> list[Any]:
        return [
            r for r in runs(aws_proxy) if r.action == "delete_table" and r.outcome == "forwarded"
        ]

    assert len(eventually(forwarded)) == 1


def test_the_same_request_after_the_approval_window_is_a_new_request(
    start_proxy: Callable[..., Proxy], upstream: Upstream
) -> None:
    import time

    short = start_proxy("--hold-timeout", "1", "--approval-timeout", "4")  # room for a slow CLI
    session = short.session(agent="ops-bot")
    session.headers["Idempotency-Key"] = "daily-cleanup"
    url = "https://api.stripe.com/v1/customers/cus_daily"
    first = session.delete(url)
    assert first.status_code == 503
    assert airlock("approve", first.headers["X-Airlock-Approval-Id"], *short.store).returncode == 0
    assert session.delete(url).status_code == 200
    assert session.delete(url).status_code == 409  # within the window: released once
    time.sleep(4.2)
    later = session.delete(url)  # past the window: a new approval, not a refusal
    assert later.status_code in (403, 503)
    assert later.headers["X-Airlock-Approval-Id"] != first.headers["X-Airlock-Approval-Id"]


def test_an_idempotency_key_cannot_carry_an_approval_to_another_request(
    proxy: Proxy, upstream: Upstream
) -> None:
    session = proxy.session(agent="ops-bot")
    session.headers["Idempotency-Key"] = "reused-key"
    first = session.delete("https://api.stripe.com/v1/customers/cus_small")
    assert airlock("approve", first.headers["X-Airlock-Approval-Id"], *proxy.store).returncode == 0

    other = session.delete("https://api.stripe.com/v1/customers/cus_OTHER")

    assert other.status_code == 409
    assert "used for a different request" in other.json()["reason"]
    assert upstream.count("/v1/customers/cus_OTHER") == 0


def test_one_agent_holds_at_most_its_limit_and_the_rest_wait_as_pending(
    start_proxy: Callable[..., Proxy], upstream: Upstream
) -> None:
    """An agent in a loop cannot hold without bound (each held request keeps its connection
    and body in memory, found by review): past --max-held-per-agent its request opens its
    approval and is answered "pending" at once, and its retry is released once approved;
    another agent's request is still held."""
    capped = start_proxy("--hold-timeout", "30", "--max-held-per-agent", "2")
    bot, other = capped.session(agent="loop-bot"), capped.session(agent="other-bot")
    base = "https://api.stripe.com/v1/customers/"
    held = [Background(lambda n=n: bot.delete(f"{base}cus_cap_{n}")) for n in range(2)]
    assert eventually(lambda: len([p for p in pending(capped) if p["agent"] == "loop-bot"]) == 2)

    third = bot.delete(f"{base}cus_cap_2")
    assert third.status_code == 503
    assert "2 of this agent's requests are held already" in third.json()["reason"]
    assert not any(h.finished for h in held)  # the first two are still held

    others = Background(lambda: other.delete(f"{base}cus_cap_other"))
    assert eventually(lambda: [p for p in pending(capped) if p["agent"] == "other-bot"])
    for approval in pending(capped):
        assert airlock("approve", approval["id"], *capped.store).returncode == 0
    assert [h.result().status_code for h in held] == [200, 200]
    assert others.result().status_code == 200  # held, then released without a retry
    assert bot.delete(f"{base}cus_cap_2").status_code == 200  # the retry joins and is released
    assert all(upstream.count(f"/v1/customers/cus_cap_{n}") == 1 for n in range(3))
