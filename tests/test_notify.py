"""Webhooks: held and settled messages, Slack and generic JSON, retries, never blocking a flow."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

import airlock.addons.notify as notify
from airlock.addons.gatekeeper import Airlock
from airlock.store.approvals import APPROVED, resolve_approval
from tests.test_gatekeeper import store_of, stripe_flow, until_held, with_gate


class Receiver:
    """A local webhook endpoint that fails the first `failures` POSTs."""

    def __init__(self, failures: int = 0) -> None:
        self.messages: list[dict[str, Any]] = []
        self.failures = failures
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.failures > 0:
                    receiver.failures -= 1
                    self.send_response(500)
                else:
                    receiver.messages.append(json.loads(body))
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receivers() -> Iterator[tuple[Receiver, Receiver]]:
    generic, slack = Receiver(), Receiver(failures=2)
    yield generic, slack
    generic.server.shutdown()
    slack.server.shutdown()


def test_held_and_settled_messages_reach_both_kinds_of_webhook(
    tmp_path: Path, receivers: tuple[Receiver, Receiver], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(notify, "FIRST_BACKOFF", 0.05)
    generic, slack = receivers
    flow = stripe_flow(b"", path="/v1/customers/cus_hook", method="DELETE")
    flow.request.headers["Authorization"] = "Bearer sk_live_PlantedWebhookSecret00"

    async def scenario(gate: Airlock, _: Any) -> None:
        held = asyncio.create_task(gate.gate.request(flow))
        await until_held(gate)
        [approval_id] = gate.holds.held
        await asyncio.to_thread(
            resolve_approval, store_of(gate), approval_id, APPROVED, "alice", "ok"
        )
        await asyncio.wait_for(held, 5)
        for _ in range(100):
            if len(generic.messages) == 2 and len(slack.messages) == 2:
                break
            await asyncio.sleep(0.05)

    with_gate(tmp_path, scenario, airlock_webhook=[generic.url, f"slack:{slack.url}"])

    assert [m["event"] for m in generic.messages] == ["held", "settled"]
    held, settled = generic.messages
    assert (held["action"], held["target"], held["agent"]) == (
        "delete_record",
        "customer/cus_hook",
        "anonymous",
    )
    assert (settled["state"], settled["reviewer"], settled["reason"]) == ("APPROVED", "alice", "ok")
    assert slack.failures == 0  # it failed twice and was retried
    assert slack.messages[0]["text"].startswith(":raised_hand: Held for approval: *delete_record*")
    assert "airlock approve" in slack.messages[0]["text"]
    assert "APPROVED by alice" in slack.messages[1]["text"]
    assert "PlantedWebhookSecret" not in json.dumps(generic.messages + slack.messages)


def test_an_unreachable_webhook_is_counted_and_never_delays_the_flow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(notify, "FIRST_BACKOFF", 0.01)
    flow = stripe_flow(b"", path="/v1/customers/cus_dead", method="DELETE")
    dead = "http://127.0.0.1:9/services/T000/B000/PlantedWebhookSecret"

    async def scenario(gate: Airlock, _: Any) -> None:
        held = asyncio.create_task(gate.gate.request(flow))
        await until_held(gate)
        [approval_id] = gate.holds.held
        await asyncio.to_thread(
            resolve_approval, store_of(gate), approval_id, APPROVED, "bob", None
        )
        await asyncio.wait_for(held, 5)  # released at once, webhooks or not
        await gate.runtime.notifier.drain()
        # Labelled by scheme and host: a webhook's path is its secret, and metrics are public.
        exposition = generate_latest(gate.metrics.registry).decode()
        assert 'airlock_webhook_failures_total{target="http://127.0.0.1:9"} 2.0' in exposition
        assert "PlantedWebhookSecret" not in exposition

    with_gate(tmp_path, scenario, airlock_webhook=[dead])
    assert flow.response is None


def test_a_targets_messages_arrive_in_the_order_they_happened(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ "Held" failed once and waited to be tried again while "approved" went out: reviewers
    saw the approval of a request before being told it was held."""
    from airlock.pipeline.run_record import RunSummary

    monkeypatch.setattr(notify, "FIRST_BACKOFF", 0.3)
    receiver = Receiver(failures=1)
    run = RunSummary("run-1", "REQUIRE_APPROVAL", "delete_record", ["r"], agent="a")

    async def scenario() -> None:
        notifier = notify.Notifier([receiver.url], lambda url: None)
        notifier.held(run, "ap-1", 0.0)
        notifier.settled(run, "ap-1", APPROVED, "alice", "ok")
        await notifier.drain()

    try:
        asyncio.run(scenario())
    finally:
        receiver.server.shutdown()
    assert [m["event"] for m in receiver.messages] == ["held", "settled"]
