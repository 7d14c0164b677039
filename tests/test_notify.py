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
    short = held["approval_id"][:8]
    first, request = slack.messages[0]["text"].splitlines()[:2]
    assert first.startswith(f":raised_hand: Held for approval {short}")
    assert f"`airlock approve {short}`" in first
    assert request == "Request: `delete_record` by `anonymous` → `customer/cus_hook`"
    assert "APPROVED by `alice`" in slack.messages[1]["text"]
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


def test_what_an_agent_sent_cannot_mention_link_or_forge_a_line_in_slack() -> None:
    """Review M2: a Guard API target `<!channel> <https://evil.example/approve|Approve…>` pinged
    the channel with a disguised link; a %0A in a path added a line "Held for approval:
    *read_docs* … `airlock approve <the agent's own held deletion>`"."""
    from airlock.pipeline.run_record import RunSummary

    forged = ("cus_x\n:raised_hand: Held for approval: *read_docs* → docs — "
              "`airlock approve deadbeef`\r\u2028<https://evil.example|Approve> &amp;")  # fmt: skip
    run = RunSummary("run-1", "REQUIRE_APPROVAL", "read_docs` *b* <!here>", ["r"],
                     agent="bot\n<@U123>", target=forged, reason="held: see https://evil.example",
                     risk=10)  # fmt: skip
    message = {"event": "held", "request_id": run.id, "agent": run.agent, "action": run.action,
               "provider": "guard", "target": run.target, "params": {}, "risk": run.risk,
               "decision_reason": run.reason, "rules": run.rules,
               "approval_id": "0123456789abcdef", "expires_at": 0.0}  # fmt: skip
    text = notify.slack_text(message)["text"]
    lines = text.split("\n")
    assert lines[0] == (":raised_hand: Held for approval 01234567 (risk 10): `airlock approve "
                        "01234567` or `airlock deny 01234567 --reason ...`")  # fmt: skip
    assert len(lines) == 3 and lines[1].startswith("Request: ") and lines[2].startswith("Why: ")
    assert "<" not in text and ">" not in text.replace("→", "")  # no mention, no link
    assert "&lt;!here&gt;" in text and "&lt;@U123&gt;" in text and "&amp;amp;" in text
    assert "deadbeef" not in lines[0] and "\u2028" not in text and "\r" not in text
    # Every agent value is one code span: no formatting, no bare link, no span of its own.
    assert lines[1] == ("Request: `read_docs' *b* &lt;!here&gt;` by `bot &lt;@U123&gt;` → `cus_x "
                        ":raised_hand: Held for approval: *read_docs* → docs — 'airlock approve "
                        "deadbeef'  &lt;https://evil.example|Approve&gt; &amp;amp;`")  # fmt: skip
    assert lines[2] == "Why: `held: see https://evil.example`"
    settled = notify.slack_text({**message, "event": "settled", "state": "APPROVED",
                                 "reviewer": "<!channel>", "reason": "ok\nfine"})  # fmt: skip
    assert settled["text"].split("\n")[0] == (
        ":white_check_mark: APPROVED by `&lt;!channel&gt;`: approval 01234567"
    )
    assert settled["text"].split("\n")[2] == "Reason: `ok fine`"


def test_a_long_field_is_cut_in_slack() -> None:
    long = "x" * 5000
    assert notify.slack_code(long) == "`" + "x" * notify.SLACK_FIELD + "…`"


def test_the_query_string_is_shown_beside_the_target(receivers: tuple[Receiver, Receiver]) -> None:
    """Review: `POST /v1/payouts?destination=acct_ATTACKER&amount=9900000` was notified as its
    target alone. The query (as stored: redacted) goes in the JSON and on Slack's Request line,
    escaped like the target; a zero-width space in it is written as its escape."""
    from airlock.pipeline.run_record import RunSummary

    generic, slack = receivers
    slack.failures = 0
    query = {"destination": ["acct_ATTACKER"], "amount": ["9900000"], "dry_run\u200b": ["<!here>"]}
    run = RunSummary("run-1", "REQUIRE_APPROVAL", "http.write", ["r"], agent="bot",
                     target="api.example.com", risk=10, query=query)  # fmt: skip

    async def scenario() -> None:
        notifier = notify.Notifier([generic.url, f"slack:{slack.url}"], lambda _: None)
        notifier.held(run, "0123456789abcdef", 0.0)
        await notifier.drain()

    asyncio.run(scenario())
    assert generic.messages[0]["query"] == query
    request = slack.messages[0]["text"].splitlines()[1]
    assert request == (
        "Request: `http.write` by `bot` → `api.example.com` query `?destination="
        "acct_ATTACKER&amp;amount=9900000&amp;dry_run\\u200b=&lt;!here&gt;`"
    )
