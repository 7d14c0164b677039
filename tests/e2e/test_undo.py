"""Evidence and undo through a running Airlock: the identifiers each write's answer returned are
on its run, and `airlock undo` sends the compensating request (a refund of the charge, the
termination of the instances, the deletion of the message) through the proxy, decided by the
baseline's policies (a termination and a deletion need a reviewer), recorded as the undo of
the run, with the operator's credentials from the environment."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import pytest
import stripe
from slack_sdk import WebClient

from airlock.console.standins import Received, Upstream, default_responder
from airlock.store.approvals import pending_approvals
from airlock.store.schema import open_engine
from tests.e2e.test_catalog_aws import AWS_HOSTS, client
from tests.e2e.test_gate import CHARGES, eventually, runs
from tests.helpers.proxy import PROJECT_ROOT, Proxy, clean_env
from tests.helpers.sdks import stripe_through

pytestmark = pytest.mark.e2e

STRIPE_KEY = "sk_test_UndoOperatorKey000000000000"
SLACK_TOKEN = "xoxb-0000000000-undo-operator-token"


@pytest.fixture(scope="module")
def proxy(start_proxy: Callable[..., Proxy], moto_port: int, session_upstream: Upstream) -> Proxy:
    routes = {host: moto_port for host in AWS_HOSTS} | {"slack.com": session_upstream.port}
    return start_proxy("--hold-timeout", "30", routes=routes)


def airlock(proxy: Proxy, *args: str, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "airlock.console.cli", *args, *proxy.store],
        cwd=PROJECT_ROOT, env=clean_env() | (env or {}), capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def undo(proxy: Proxy, run_id: str, env: dict[str, str]) -> Any:
    return airlock(
        proxy, "undo", run_id, "--execute", "--proxy", proxy.url, "--agent", "operator",
        "--confdir", str(proxy.confdir), "--data-dir", str(proxy.workdir), env=env,
    )  # fmt: skip


def evidence(proxy: Proxy, action: str) -> Any:
    """The newest run of this action, once its outcome's identifiers are recorded."""

    def found() -> Any:
        done = [r for r in runs(proxy) if r.action == action and r.outcome_detail]
        return done[-1] if done else None

    run = eventually(found)
    assert run is not None, f"no {action} run with its outcome's identifiers"
    return run


def approve_when_held(proxy: Proxy, action: str) -> threading.Thread:
    """A reviewer approves the undo once the proxy holds it (the baseline asks for one)."""

    def review() -> None:
        engine = open_engine(proxy.db_url)
        deadline, held = time.monotonic() + 60, []
        while not held and time.monotonic() < deadline:
            held = [a for a in pending_approvals(engine) if a.action == action]
            time.sleep(0.05)
        engine.dispose()
        assert held, f"the undo ({action}) was never held"
        approved = airlock(proxy, "approve", held[0].id[:12], "--reviewer", "alice",
                           "--reason", "undoing the agent's mistake")  # fmt: skip
        assert approved.returncode == 0, approved.stderr

    thread = threading.Thread(target=review, daemon=True)
    thread.start()
    return thread


def test_a_charge_is_undone_by_refunding_it(
    proxy: Proxy, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    stripe_through(proxy, monkeypatch, "billing-agent")
    charge = stripe.Charge.create(amount=2500, currency="usd", customer="cus_undo")
    run = evidence(proxy, "create_charge")
    assert run.outcome_detail == {"ids": {"charge_id": charge.id}}

    printed = airlock(proxy, "undo", run.id)
    assert printed.returncode == 0, printed.stderr
    assert "POST https://api.stripe.com/v1/refunds" in printed.stdout
    assert f"charge={charge.id}&amount=2500" in printed.stdout
    assert "Authorization: Bearer $STRIPE_API_KEY" in printed.stdout

    missing = undo(proxy, run.id, {})
    assert missing.returncode == 1 and "set STRIPE_API_KEY" in missing.stderr
    upstream.clear()
    sent = undo(proxy, run.id, {"STRIPE_API_KEY": STRIPE_KEY})
    assert sent.returncode == 0, sent.stderr
    [refund] = [r for r in upstream.received if r.path == "/v1/refunds"]
    assert refund.body.decode() == f"charge={charge.id}&amount=2500"
    assert "x-airlock-undo-of" not in {name.lower() for name in refund.headers}
    [undone] = [r for r in runs(proxy) if r.action == "create_refund"]
    assert undone.context["undo_of"] == run.id and undone.agent == "operator"
    assert STRIPE_KEY not in json.dumps([r.request for r in runs(proxy)])

    shown = airlock(proxy, "runs", "show", run.id[:10])
    assert shown.returncode == 0, shown.stderr
    assert f"undone by run {undone.id}" in shown.stdout
    assert f'"charge_id": "{charge.id}"' in shown.stdout


def test_an_undo_link_airlock_undo_did_not_sign_is_refused_and_links_nothing(
    proxy: Proxy, upstream: Upstream
) -> None:
    """X-Airlock-Undo-Of records a request as the undo of a run (`airlock runs show`: "undone
    by"): an agent setting it itself, bare or with a made-up signature, is refused."""
    session = proxy.session("billing-agent")
    charged = session.post(CHARGES, data={"amount": 700, "currency": "usd"}, timeout=10)
    assert charged.status_code == 200
    run_id = charged.headers["X-Airlock-Request-Id"]
    upstream.clear()
    for forged in (run_id, f"{run_id}.{'0' * 32}"):
        refused = session.post(
            "https://api.stripe.com/v1/refunds", data={"charge": "ch_forged"},
            headers={"X-Airlock-Undo-Of": forged}, timeout=10,
        )  # fmt: skip
        assert refused.status_code == 403 and "undo-link" in refused.json()["rules"]
        assert "signed by `airlock undo`" in refused.json()["error"]["message"]
    assert not [r for r in upstream.received if r.path == "/v1/refunds"]
    assert not [r for r in runs(proxy) if (r.context or {}).get("undo_of") == run_id]
    shown = airlock(proxy, "runs", "show", run_id)
    assert shown.returncode == 0 and "undone by" not in shown.stdout


class CustomerStandIn:
    """Stripe's customer endpoint with state: GET shows the customer, POST changes it (as
    Stripe does: bracket fields, an empty value unsets a metadata key)."""

    def __init__(self, customer_id: str) -> None:
        self.path = f"/v1/customers/{customer_id}"
        self.customer: dict[str, Any] = {
            "id": customer_id, "object": "customer", "email": "old@example.com",
            "name": "Ada Old", "phone": None, "metadata": {"tier": "silver"},
        }  # fmt: skip

    def __call__(self, request: Received) -> tuple[int, dict[str, str], bytes]:
        if request.path.split("?")[0] != self.path:
            return default_responder(request)
        if request.method == "POST":
            for name, value in urllib.parse.parse_qsl(request.body.decode(), True):
                if name.startswith("metadata["):
                    key = name[len("metadata[") : -1]
                    if value:
                        self.customer["metadata"][key] = value
                    else:
                        self.customer["metadata"].pop(key, None)
                elif name != "expand[0]":
                    self.customer[name] = value or None
        body = json.dumps(self.customer).encode()
        return 200, {"Content-Type": "application/json"}, body


def test_a_customer_update_is_undone_by_setting_back_what_it_replaced(
    proxy: Proxy, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The customer is read (with the agent's own key, never kept) just before the update is
    forwarded; the undo sets back exactly the fields the update changed."""
    stand_in = CustomerStandIn("cus_undo_update")
    monkeypatch.setattr(upstream, "responder", stand_in)
    agent_key = "sk_test_AgentKeyForPreImage0000"
    stripe_through(proxy, monkeypatch, "billing-agent", key=agent_key)
    before = dict(stand_in.customer, metadata=dict(stand_in.customer["metadata"]))
    stripe.Customer.modify(
        "cus_undo_update", email="new@example.com", metadata={"tier": "gold", "note": "vip"},
        expand=["default_source"],
    )  # fmt: skip
    assert stand_in.customer["email"] == "new@example.com"
    run = eventually(lambda: next((r for r in runs(proxy) if r.action == "update_record"
                                   and r.outcome_detail), None))  # fmt: skip
    assert run is not None and run.outcome == "forwarded"
    assert run.outcome_detail == {
        "prior": {"email": "old@example.com", "metadata": {"tier": "silver", "note": None}}
    }
    [read, write] = [r for r in upstream.received if r.path.startswith(stand_in.path)]
    assert (read.method, write.method) == ("GET", "POST")  # read first, then forwarded
    assert read.headers["authorization"] == f"Bearer {agent_key}"
    assert agent_key not in json.dumps([r.request for r in runs(proxy)])

    printed = airlock(proxy, "undo", run.id)
    assert printed.returncode == 0, printed.stderr
    assert "POST https://api.stripe.com/v1/customers/cus_undo_update" in printed.stdout
    assert "email=old%40example.com&metadata%5Btier%5D=silver&metadata%5Bnote%5D=" in (
        printed.stdout
    )
    sent = undo(proxy, run.id, {"STRIPE_API_KEY": STRIPE_KEY})
    assert sent.returncode == 0, sent.stderr
    assert stand_in.customer == before
    undone = [r for r in runs(proxy) if (r.context or {}).get("undo_of") == run.id]
    assert [r.action for r in undone] == ["update_record"]

    # A field the customer does not have (a coupon is applied, not stored): nothing to set back.
    stripe.Customer.modify("cus_undo_update", coupon="SPRING")
    latest = eventually(lambda: next((r for r in reversed(runs(proxy)) if r.action ==
                                      "update_record" and r.outcome_detail and r.id != run.id
                                      and not (r.context or {}).get("undo_of")), None))  # fmt: skip
    assert latest is not None and latest.outcome_detail["prior_unread"] == ["coupon"]
    refused = airlock(proxy, "undo", latest.id)
    assert refused.returncode == 1 and "no field 'coupon'" in refused.stderr


def test_an_instance_launch_is_undone_by_terminating_what_it_started(proxy: Proxy) -> None:
    ec2 = client(proxy, "ec2")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    started = ec2.run_instances(ImageId=image, MinCount=2, MaxCount=2, InstanceType="t3.micro")
    ids = sorted(i["InstanceId"] for i in started["Instances"])
    run = evidence(proxy, "create_instances")
    assert sorted(run.outcome_detail["ids"]["instance_ids"]) == ids

    reviewer = approve_when_held(proxy, "terminate_instances")
    credentials = {
        "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    }
    sent = undo(proxy, run.id, credentials)
    reviewer.join(60)
    assert sent.returncode == 0, sent.stderr
    states = ec2.describe_instances(InstanceIds=ids)["Reservations"][0]["Instances"]
    assert {i["State"]["Name"] for i in states} <= {"shutting-down", "terminated"}
    [undone] = [r for r in runs(proxy) if r.action == "terminate_instances"]
    assert undone.context["undo_of"] == run.id
    assert sorted(undone.params["instance_ids"]) == ids


def test_a_slack_message_is_undone_by_deleting_it(proxy: Proxy, upstream: Upstream) -> None:
    slack = WebClient(
        token="xoxb-agent-token", proxy=proxy.url.replace("//", "//ops-bot:x@"),
        ssl=ssl.create_default_context(cafile=str(proxy.ca_cert)),
    )  # fmt: skip
    posted = slack.chat_postMessage(channel="#ops", text="deploying to production now")
    run = evidence(proxy, "send_message")
    assert run.outcome_detail["ids"] == {"posted_channel": posted["channel"], "ts": posted["ts"]}

    upstream.clear()
    reviewer = approve_when_held(proxy, "delete_message")
    sent = undo(proxy, run.id, {"SLACK_BOT_TOKEN": SLACK_TOKEN})
    reviewer.join(60)
    assert sent.returncode == 0, sent.stderr
    [deleted] = [r for r in upstream.received if r.path == "/api/chat.delete"]
    assert json.loads(deleted.body) == {"channel": posted["channel"], "ts": posted["ts"]}
    assert deleted.headers.get("authorization") == f"Bearer {SLACK_TOKEN}"


def test_what_cannot_be_undone_says_why(proxy: Proxy) -> None:
    session = proxy.session(agent="ops-bot")
    session.get("https://api.stripe.com/v1/customers/cus_read", timeout=10)
    [read] = [r for r in runs(proxy) if r.target and "cus_read" in str(r.request)]
    refused = airlock(proxy, "undo", read.id)
    assert refused.returncode == 1
    assert f"run {read.id} cannot be undone" in refused.stderr
    unknown = airlock(proxy, "undo", "ffffffffffff")
    assert unknown.returncode == 2 and "no run with id" in unknown.stderr


def test_a_write_whose_connection_fails_after_it_was_sent_is_ambiguous(
    start_proxy: Callable[..., Proxy], session_upstream: Upstream
) -> None:
    """The upstream read the request and hung up: it may have acted on it. A connection that
    was never made is an upstream error: nothing was sent."""
    hangs_up = socket.create_server(("127.0.0.1", 0))
    hangs_up_port = hangs_up.getsockname()[1]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certs = session_upstream.cert_dir
    context.load_cert_chain(certs / "server.pem", certs / "server.key")

    def serve() -> None:
        with context.wrap_socket(hangs_up, server_side=True) as server:
            connection, _ = server.accept()
            with connection:
                received = b""
                while b"\r\n\r\n" not in received:
                    received += connection.recv(65536)

    threading.Thread(target=serve, daemon=True).start()
    closed = socket.create_server(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    policies = PROJECT_ROOT / "tests" / "e2e" / "policies-allow-all"
    proxy = start_proxy(
        "--policies", str(policies),
        routes={"pay.example.com": hangs_up_port, "gone.example.com": closed_port},
    )  # fmt: skip
    session = proxy.session(agent="ops-bot")
    for host in ("pay.example.com", "gone.example.com"):
        answer = session.post(f"https://{host}/v1/transfers", json={"amount": 5}, timeout=30)
        assert answer.status_code == 502

    def outcomes() -> dict[str, str] | None:
        found = {r.host: r.outcome for r in runs(proxy) if r.outcome}
        return found if len(found) == 2 else None

    assert eventually(outcomes) == {
        "pay.example.com": "ambiguous",
        "gone.example.com": "upstream_error",
    }
