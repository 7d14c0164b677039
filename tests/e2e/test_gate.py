"""End to end: a real `airlock run` (mitmdump + gate), real TLS, a local upstream that counts."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import select, text, update

from airlock.console.standins import Upstream, default_responder
from airlock.store.schema import Run, open_engine
from tests.helpers.proxy import PROJECT_ROOT, Proxy, clean_env, free_port

pytestmark = pytest.mark.e2e

CHARGES = "https://api.stripe.com/v1/charges"


def airlock(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI in its own process, as a reviewer or auditor would."""
    return subprocess.run(
        [sys.executable, "-m", "airlock.console.cli", *args],
        cwd=PROJECT_ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


def pending(proxy: Proxy) -> list[dict[str, Any]]:
    done = airlock("pending", "--json", "--db", proxy.db_url)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


class Background:
    """A request sent from another thread, so the test can act while it is held."""

    def __init__(self, send: Callable[[], requests.Response]) -> None:
        self.response: requests.Response | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(send,), daemon=True)
        self._thread.start()

    def _run(self, send: Callable[[], requests.Response]) -> None:
        try:
            self.response = send()
        except BaseException as e:
            self.error = e

    def result(self, timeout: float = 30) -> requests.Response:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "request still held"
        if self.error:
            raise self.error
        assert self.response is not None
        return self.response

    @property
    def finished(self) -> bool:
        return not self._thread.is_alive()


def runs(proxy: Proxy) -> list[Run]:
    engine = open_engine(proxy.db_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(Run).order_by(Run.at)).all())
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def proxy(start_proxy: Callable[..., Proxy]) -> Proxy:
    return start_proxy("--hold-timeout", "30")


def test_allowed_request_reaches_upstream_and_is_recorded(proxy: Proxy, upstream: Upstream) -> None:
    response = proxy.session(agent="billing-bot").post(
        CHARGES, data={"amount": 500, "currency": "usd", "metadata[order_id]": "6735"}
    )

    assert response.status_code == 200
    assert response.json()["object"] == "charge"
    run_id = response.headers["X-Airlock-Request-Id"]
    assert upstream.count("/v1/charges") == 1
    assert upstream.received[0].body == b"amount=500&currency=usd&metadata%5Border_id%5D=6735"
    record = eventually(
        lambda: next((r for r in runs(proxy) if r.id == run_id and r.outcome), None)
    )
    assert record.decision == "ALLOW"
    assert record.agent == "billing-bot"
    assert record.action == "create_charge"
    assert record.params["amount"] == 500
    assert record.request["body"]["metadata"] == {"order_id": "6735"}
    assert (record.outcome, record.status) == ("forwarded", 200)
    assert record.upstream_ms is not None and record.upstream_ms >= 0


def test_blocked_request_gets_403_json_and_never_reaches_upstream(
    proxy: Proxy, upstream: Upstream
) -> None:
    response = proxy.session().post(CHARGES, data={"amount": 2_000_000, "currency": "usd"})

    assert response.status_code == 403
    assert response.headers["X-Airlock-Decision"] == "BLOCK"
    body = response.json()
    assert body["decision"] == "BLOCK"
    assert body["action"] == "create_charge"
    assert body["rules"] == ["stripe-charge-needs-approval", "stripe-charge-too-large"]
    assert "10,000.00" in body["reason"]
    assert body["request_id"] == response.headers["X-Airlock-Request-Id"]
    time.sleep(0.3)
    assert upstream.count() == 0


def test_unmapped_read_is_allowed_as_http_read(proxy: Proxy, upstream: Upstream) -> None:
    response = proxy.session().get("https://api.example.com/v2/things?page=2&page=3")

    assert response.status_code == 200
    record = eventually(
        lambda: next(
            (r for r in runs(proxy) if r.id == response.headers["X-Airlock-Request-Id"]), None
        )
    )
    assert (record.action, record.target, record.decision) == (
        "http.read",
        "api.example.com",
        "ALLOW",
    )
    assert record.request["query"] == {"page": ["2", "3"]}


def test_held_request_waits_for_approval_from_another_process(
    proxy: Proxy, upstream: Upstream
) -> None:
    held = Background(
        lambda: proxy.session(agent="ops-bot").delete("https://api.stripe.com/v1/customers/cus_42")
    )

    waiting = eventually(lambda: [p for p in pending(proxy) if p["target"] == "customer/cus_42"])
    assert waiting, "the deletion never showed up as pending"
    assert waiting[0]["agent"] == "ops-bot"
    assert waiting[0]["action"] == "delete_record"
    assert waiting[0]["undo"] is None  # a deleted customer cannot be brought back
    assert upstream.count("/v1/customers") == 0
    assert not held.finished
    queued = len(pending(proxy))  # the store's queue, whichever instance holds what
    assert eventually(lambda: metric(proxy, "airlock_approvals_pending") == queued)

    approved = airlock("approve", waiting[0]["id"][:8], "--reviewer", "alice", *proxy.store)
    assert approved.returncode == 0, approved.stderr

    response = held.result()
    assert response.status_code == 200
    assert response.json()["deleted"] is True
    assert upstream.count("/v1/customers/cus_42") == 1
    assert pending(proxy) == []
    metrics = requests.get(f"http://127.0.0.1:{proxy.metrics_port}/metrics", timeout=5).text
    assert 'airlock_approvals_settled_total{state="APPROVED"}' in metrics
    assert "airlock_approval_decision_seconds_count" in metrics
    assert eventually(lambda: metric(proxy, "airlock_approvals_pending") == 0)


def metric(proxy: Proxy, name: str) -> float | None:
    """One sample of the proxy's Prometheus endpoint (None while it has none)."""
    text = requests.get(f"http://127.0.0.1:{proxy.metrics_port}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return None


def test_denied_request_gets_403_with_the_reviewers_reason(
    proxy: Proxy, upstream: Upstream
) -> None:
    held = Background(lambda: proxy.session().delete("https://api.stripe.com/v1/customers/cus_7"))
    waiting = eventually(lambda: [p for p in pending(proxy) if p["target"] == "customer/cus_7"])

    denied = airlock(
        "deny", waiting[0]["id"], "--reason", "customer has open invoices", "--reviewer", "bob",
        *proxy.store,
    )  # fmt: skip
    assert denied.returncode == 0, denied.stderr

    response = held.result()
    assert response.status_code == 403
    assert response.json()["reason"] == "denied by bob: customer has open invoices"
    assert response.json()["approval"]["state"] == "DENIED"
    assert upstream.count("/v1/customers") == 0
    again = airlock("approve", waiting[0]["id"], *proxy.store)
    assert again.returncode == 1
    assert "already DENIED" in again.stderr


def test_a_held_flow_does_not_delay_flows_on_other_connections(
    proxy: Proxy, upstream: Upstream
) -> None:
    held = Background(lambda: proxy.session().delete("https://api.stripe.com/v1/customers/cus_9"))
    waiting = eventually(lambda: [p for p in pending(proxy) if p["target"] == "customer/cus_9"])
    assert waiting

    other = proxy.session()
    statuses = [
        other.post(CHARGES, data={"amount": 100 + i, "currency": "eur"}).status_code
        for i in range(20)
    ]

    assert statuses == [200] * 20
    assert upstream.count("/v1/charges") == 20
    assert not held.finished, "the held request was released without a decision"
    airlock("deny", waiting[0]["id"], "--reason", "cleanup", *proxy.store)
    assert held.result().status_code == 403


def test_every_decision_is_recorded_with_its_outcome(proxy: Proxy, upstream: Upstream) -> None:
    session = proxy.session()
    session.post(CHARGES, data={"amount": 100, "currency": "usd"})
    session.post(CHARGES, data={"amount": 5_000_000, "currency": "usd"})
    session.get("https://api.example.com/health")

    def all_have_outcomes() -> list[Run]:
        records = runs(proxy)
        return records if all(r.outcome for r in records) else []

    records = eventually(all_have_outcomes)
    assert records, "some decisions have no outcome"
    outcomes = {(r.decision, r.outcome) for r in records}
    assert ("ALLOW", "forwarded") in outcomes
    assert ("BLOCK", "blocked") in outcomes
    assert all(r.decision_ms >= 0 for r in records)


def test_secrets_appear_nowhere_in_the_store_or_the_console(
    proxy: Proxy, upstream: Upstream
) -> None:
    secret_key = "sk_live_51PlantedSecretKeyDoNotStore0000"
    slack_token = "xoxb-1234567890-planted-slack-token"
    session = proxy.session()
    session.headers["Authorization"] = f"Bearer {secret_key}"
    response = session.post(
        CHARGES,
        data={
            "amount": 300,
            "currency": "usd",
            "description": f"note {slack_token}",
            "api_key": "hunter2-planted",
        },
    )
    assert response.status_code == 200
    assert (
        upstream.received[-1].headers["authorization"] == f"Bearer {secret_key}"
    )  # forwarded intact
    eventually(lambda: all(r.outcome for r in runs(proxy)))

    db_file = Path(proxy.db_url.removeprefix("sqlite:///"))
    stored = b"".join(p.read_bytes() for p in db_file.parent.glob(db_file.name + "*"))
    for secret in (secret_key, slack_token, "hunter2-planted"):
        assert secret.encode() not in stored
        assert secret not in proxy.output()
    record = next(r for r in runs(proxy) if r.id == response.headers["X-Airlock-Request-Id"])
    assert record.request["headers"]["authorization"] == "Bearer [REDACTED]"


def test_audit_verify_passes_then_fails_after_a_row_is_edited(
    proxy: Proxy, upstream: Upstream
) -> None:
    proxy.session().post(CHARGES, data={"amount": 2_500_000, "currency": "usd"})
    eventually(lambda: all(r.outcome for r in runs(proxy)))

    intact = airlock("audit", "verify", "--db", proxy.db_url)
    assert intact.returncode == 0, intact.stderr
    assert "audit trail intact" in intact.stdout

    engine = open_engine(proxy.db_url)
    with engine.begin() as conn:
        blocked = conn.execute(select(Run.id).where(Run.decision == "BLOCK")).scalars().first()
        conn.execute(update(Run).where(Run.id == blocked).values(decision="ALLOW"))
    engine.dispose()

    broken = airlock("audit", "verify", "--db", proxy.db_url)
    assert broken.returncode == 1
    assert f"run {blocked} was edited: decision is 'ALLOW'" in broken.stderr


def test_hold_timeout_refuses_the_request(
    start_proxy: Callable[..., Proxy], upstream: Upstream
) -> None:
    proxy = start_proxy("--hold-timeout", "1", "--approval-timeout", "1")

    response = proxy.session().delete("https://api.stripe.com/v1/customers/cus_slow")

    assert response.status_code == 403
    assert response.json()["reason"] == "approval timed out"
    assert response.json()["approval"]["state"] == "EXPIRED"
    assert upstream.count() == 0
    record = eventually(lambda: [r for r in runs(proxy) if r.outcome == "expired"])
    assert record
    late = airlock("approve", response.json()["approval"]["id"], *proxy.store)
    assert late.returncode == 1 and "already EXPIRED" in late.stderr


def test_postgres_store_holds_and_releases_across_processes(
    start_proxy: Callable[..., Proxy], empty_pg_database: str, upstream: Upstream
) -> None:
    pg_database = empty_pg_database
    proxy = start_proxy("--hold-timeout", "30", db_url=pg_database)
    held = Background(lambda: proxy.session().delete("https://api.stripe.com/v1/customers/cus_pg"))
    waiting = eventually(lambda: pending(proxy))
    assert [p["target"] for p in waiting] == ["customer/cus_pg"]

    assert airlock("approve", waiting[0]["id"], *proxy.store).returncode == 0

    assert held.result().status_code == 200
    assert upstream.count("/v1/customers/cus_pg") == 1
    assert airlock("audit", "verify", "--db", pg_database).returncode == 0
    engine = open_engine(pg_database)
    with engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET payload = replace(payload, 'cus_pg', 'cus_xx')"))
    engine.dispose()
    broken = airlock("audit", "verify", "--db", pg_database)
    assert broken.returncode == 1 and "was edited" in broken.stderr


def test_run_refuses_a_bad_policy_with_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("rules:\n  - id: r\n    decision: MAYBE\n")
    done = airlock("run", "--policies", str(tmp_path), "--port", "1", "--metrics-port", "0")
    assert done.returncode == 2
    assert done.stderr.strip().startswith(f"airlock run: {tmp_path / 'p.yaml'}:3:15: decision")


def test_run_refuses_a_mitmproxy_option_its_proxy_lacks_rather_than_ignore_it(
    tmp_path: Path,
) -> None:
    """`airlock run` loads only the mitmproxy addons Airlock uses (console/proxy_master.py): a
    confdir config.yaml asking for another one's feature (headers added behind the gate's
    back) stops the start with the option's name, instead of being silently dropped."""
    confdir = tmp_path / "certs"
    confdir.mkdir()
    (confdir / "config.yaml").write_text('modify_headers:\n  - "/~q/X-Added/1"\n')
    done = airlock(
        "run", "--port", str(free_port()), "--metrics-port", "0", "--guard-port", "0",
        "--confdir", str(confdir), "--data-dir", str(tmp_path / "data"),
    )  # fmt: skip
    assert done.returncode == 1
    assert "unknown mitmproxy options modify_headers" in done.stdout + done.stderr


def test_prometheus_metrics_count_decisions_and_fail_closed_blocks(
    proxy: Proxy, upstream: Upstream
) -> None:
    session = proxy.session()
    session.post(CHARGES, data={"amount": 100, "currency": "usd"})
    session.post(CHARGES, data={"amount": 9_000_000, "currency": "usd"})
    session.post(CHARGES, data={"amount": "ten", "currency": "usd"})  # mapping cannot type it

    metrics = requests.get(f"http://127.0.0.1:{proxy.metrics_port}/metrics", timeout=5).text
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line and not line.startswith("#")
    }
    allowed = 'airlock_decisions_total{action="create_charge",decision="ALLOW",provider="stripe"}'
    blocked = 'airlock_decisions_total{action="create_charge",decision="BLOCK",provider="stripe"}'
    assert samples[allowed] >= 1
    assert samples[blocked] >= 2
    assert samples['airlock_fail_closed_total{stage="mapping"}'] >= 1
    assert samples["airlock_decision_seconds_count"] >= 3
    assert samples["airlock_store_commit_seconds_count"] >= 1
    assert "airlock_held_flows" in samples


def test_a_restarted_proxy_expires_what_the_stopped_one_held(
    start_proxy: Callable[..., Proxy], upstream: Upstream
) -> None:
    """After a crash the record tells what was sent from what was not: a held request is
    marked not sent (its approval expired), a released one whose answer never came is marked
    outcome unknown (it reached the upstream)."""
    import signal

    first = start_proxy("--hold-timeout", "60")
    held = Background(
        lambda: first.session().delete("https://api.stripe.com/v1/customers/cus_crash")
    )
    [waiting] = eventually(lambda: pending(first))
    answer = threading.Event()
    upstream.responder = lambda request: (answer.wait(20), default_responder(request))[1]
    try:
        in_flight = Background(
            lambda: first.session().post(CHARGES, data={"amount": 700, "currency": "usd"})
        )
        assert eventually(lambda: upstream.count("/v1/charges") == 1)
        assert first.process is not None
        first.process.send_signal(signal.SIGKILL)  # a crash: no graceful shutdown
        first.process.wait(10)
    finally:
        answer.set()
        upstream.responder = default_responder
    for lost in (held, in_flight):
        with pytest.raises(requests.exceptions.RequestException):
            lost.result()

    start_proxy("--hold-timeout", "60", db_url=first.db_url)

    late = airlock("approve", waiting["id"], *first.store)
    assert late.returncode == 1 and "already EXPIRED" in late.stderr
    outcomes = eventually(
        lambda: {r.path: r.outcome for r in runs(first) if r.outcome is not None} or None
    )
    assert outcomes == {"/v1/customers/cus_crash": "not_sent", "/v1/charges": "unknown"}
    assert upstream.count() == 1  # the charge, once; the held deletion never
    assert airlock("audit", "verify", "--db", first.db_url).returncode == 0


def test_agents_cannot_reach_airlock_itself_through_the_proxy(
    proxy: Proxy, upstream: Upstream
) -> None:
    """By address, not by spelling: every way of writing loopback, and this machine's name."""
    session = proxy.session()
    spellings = ("127.0.0.1", "localhost", "127.1", "127.0.1", "2130706433", "0x7f000001",
                 "0177.0.0.1", "0", "[::ffff:127.0.0.1]", "[::1]",
                 socket.gethostname())  # fmt: skip
    for host in spellings:
        for url in (f"http://{host}:{proxy.metrics_port}/metrics", f"http://{host}:{proxy.port}/"):
            response = session.get(url)
            assert response.status_code == 403, url
            assert response.json()["rules"] == ["control-surface"], url
    assert upstream.count() == 0


def test_on_every_interface_each_address_of_this_machine_is_airlocks_own(
    start_proxy: Callable[..., Proxy], upstream: Upstream
) -> None:
    """Listening on 0.0.0.0, the proxy is reached at this machine's LAN addresses as at
    loopback: a request through it to one of them is refused like one to 127.0.0.1."""
    import ipaddress

    import psutil

    addresses = [
        entry.address
        for entries in psutil.net_if_addrs().values()
        for entry in entries
        if entry.family in (socket.AF_INET, socket.AF_INET6) and "%" not in entry.address
        and not ipaddress.ip_address(entry.address).is_loopback
    ]  # fmt: skip
    if not addresses:
        pytest.skip("this machine has no address but loopback")
    proxy = start_proxy("--host", "0.0.0.0")
    session = proxy.session()
    for address in addresses:
        host = f"[{address}]" if ":" in address else address
        for url in (f"http://{host}:{proxy.metrics_port}/metrics", f"http://{host}:{proxy.port}/"):
            response = session.get(url, timeout=10)
            assert response.status_code == 403, url
            assert response.json()["rules"] == ["control-surface"], url
    assert upstream.count() == 0


def test_agents_cannot_reach_the_postgresql_store_through_the_proxy(
    start_proxy: Callable[..., Proxy], empty_pg_database: str
) -> None:
    proxy = start_proxy(db_url=empty_pg_database)
    session = proxy.session()
    for host in ("127.0.0.1", "127.1", "2130706433", "0", "[::ffff:127.0.0.1]", "localhost"):
        response = session.get(f"http://{host}:5432/")
        assert response.status_code == 403, host
        body = response.json()
        assert body["rules"] == ["control-surface"], host
        assert "database" in body["reason"] and "5432" not in body["reason"]


def test_graceful_shutdown_answers_held_requests_503_with_retry_after(
    start_proxy: Callable[..., Proxy], upstream: Upstream
) -> None:
    import shutil
    import signal
    import subprocess

    proxy = start_proxy("--hold-timeout", "30")
    held = Background(lambda: proxy.session().delete("https://api.stripe.com/v1/customers/cus_bye"))
    curl = shutil.which("curl")
    over_http2 = None
    if curl:  # the same over HTTP/2, as curl speaks it
        over_http2 = subprocess.Popen(
            [curl, "-s", "--http2", "-x", proxy.url, "--cacert", str(proxy.ca_cert), "-X",
             "DELETE", "-D", "-", "https://api.stripe.com/v1/customers/cus_h2"],
            stdout=subprocess.PIPE, text=True, env=clean_env(),
        )  # fmt: skip
    need = 2 if over_http2 is not None else 1

    def all_held() -> list[Any] | None:
        found = pending(proxy)
        return found if len(found) >= need else None

    [waiting, *_] = eventually(all_held)
    assert proxy.process is not None
    proxy.process.send_signal(signal.SIGINT)

    response = held.result(timeout=20)
    assert (response.status_code, response.headers["Retry-After"]) == (503, "5")
    assert "shutting down" in response.json()["reason"]
    if over_http2 is not None:
        answer, _ = over_http2.communicate(timeout=20)
        assert "HTTP/2 503" in answer and "retry-after: 5" in answer.lower(), answer
    assert proxy.process.wait(15) == 0
    output = proxy.output()
    assert "Traceback" not in output and "CancelledError" not in output, output[-3000:]
    late = airlock("approve", waiting["id"], *proxy.store)
    assert late.returncode == 1 and "already EXPIRED" in late.stderr
    assert upstream.count() == 0
