"""The gate addon in-process, with mitmproxy's own test helpers (taddons, tflow)."""

from __future__ import annotations

import asyncio
import base64
import json
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy import ctx, exceptions, http
from mitmproxy.test import taddons, tflow, tutils
from sqlalchemy import select, text
from sqlalchemy.engine import Engine

from airlock.addons.gatekeeper import Airlock
from airlock.addons.metrics import Metrics
from airlock.addons.routing import Routing, parse_routes
from airlock.pipeline.run_record import former_request_hashes, request_hash
from airlock.store.audit import verify_audit
from airlock.store.schema import Run, open_engine
from tests.helpers.proxy import PROJECT_ROOT

KEY = bytes(range(32))  # a request key (store/keys.py)


def stripe_flow(body: bytes, path: str = "/v1/charges", method: str = "POST") -> Any:
    flow = tflow.tflow()
    flow.client_conn.timestamp_end = None  # the client is still connected
    flow.client_conn.sni = "api.stripe.com"  # as its TLS client asked (tflow says "address")
    flow.request = tutils.treq(
        method=method.encode(),
        scheme=b"https",
        host="api.stripe.com",
        port=443,
        authority=b"",
        path=path.encode(),
        headers=[(b"content-type", b"application/x-www-form-urlencoded")],
        content=body,
    )
    return flow


def store_of(_gate: Airlock) -> Engine:
    """The gate's store, opened as a reviewer's command opens it: the proxy keeps no connection
    (only its decider process does)."""
    return open_engine(ctx.options.airlock_db)


def with_gate(
    tmp_path: Path, scenario: Callable[[Airlock, Any], Awaitable[None]], **options: Any
) -> Airlock:
    """Run a scenario against a configured, running gate on a fresh SQLite store."""
    gate = Airlock(Metrics())

    async def run() -> None:
        with taddons.context(gate) as tctx:
            settings = {
                # The worker process where a test says so; the same core either way.
                "airlock_decider": "in-process",
                "airlock_db": f"sqlite:///{tmp_path / 'a.db'}",
                "airlock_mappings": str(PROJECT_ROOT / "mappings"),
                "airlock_policies": str(PROJECT_ROOT / "policies"),
            }
            tctx.configure(gate, **(settings | options))
            await gate.runtime.running()
            try:
                await scenario(gate, tctx)
            finally:
                # As mitmproxy stops: the gate's done(), then its log handlers go (a handler
                # left bound to this closed loop would fail the next test's warnings).
                await tctx.master.done()

    asyncio.run(run())
    return gate


async def until_held(gate: Airlock) -> None:
    for _ in range(500):
        if gate.holds.held:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the flow was never held")


def gate_decides(tmp_path: Path, flow: Any) -> Airlock:
    """Pass one flow through the gate's request hook."""

    async def scenario(gate: Airlock, _: Any) -> None:
        await gate.gate.request(flow)

    return with_gate(tmp_path, scenario)


def stored_runs(tmp_path: Path) -> list[Any]:
    engine = open_engine(f"sqlite:///{tmp_path / 'a.db'}")
    with engine.connect() as conn:
        rows = conn.execute(select(Run).order_by(Run.at)).all()
    engine.dispose()
    return rows


def test_allowed_flow_is_left_to_continue_after_its_record_is_committed(tmp_path: Path) -> None:
    flow = stripe_flow(b"amount=500&currency=usd")

    gate_decides(tmp_path, flow)

    assert flow.response is None
    [run] = stored_runs(tmp_path)
    assert run.id == flow.metadata["airlock"]
    assert (run.decision, run.action, run.agent) == ("ALLOW", "create_charge", "anonymous")


def test_blocked_flow_is_answered_403_with_explanation(tmp_path: Path) -> None:
    flow = stripe_flow(b"amount=1000000&currency=usd")

    gate = gate_decides(tmp_path, flow)

    assert flow.response.status_code == 403
    assert flow.response.headers["X-Airlock-Decision"] == "BLOCK"
    body = json.loads(flow.response.content)
    assert body["request_id"] == flow.metadata["airlock"]
    assert body["error"]["code"] == "airlock_blocked"
    assert flow.error is None  # answered, never killed
    [run] = stored_runs(tmp_path)
    assert (run.outcome, run.status) == ("blocked", 403)
    assert gate.metrics.decisions.labels("BLOCK", "create_charge", "stripe")._value.get() == 1


def test_mapping_failure_blocks_records_the_error_and_counts_it(tmp_path: Path) -> None:
    flow = stripe_flow(b"amount=not-a-number&currency=usd")

    gate = gate_decides(tmp_path, flow)

    assert flow.response.status_code == 403
    assert "mapping failed" in json.loads(flow.response.content)["reason"]
    [run] = stored_runs(tmp_path)
    assert run.decision == "BLOCK"
    assert "expected int, got 'not-a-number'" in run.error
    assert gate.metrics.fail_closed.labels("mapping")._value.get() == 1


def test_a_request_the_gate_neither_answered_nor_released_is_refused(tmp_path: Path) -> None:
    """The last line of fail-closed: whatever path forgot to answer or release a request (here
    enforcement does nothing), it is refused, on record, not sent on."""
    flow, gone = stripe_flow(b"amount=5&currency=usd"), stripe_flow(b"amount=6&currency=usd")
    gone.client_conn.timestamp_end = time.time()  # its client left: nothing would be sent

    async def scenario(gate: Airlock, _: Any) -> None:
        async def forgets(*_: Any) -> None:
            return None

        gate.gate._enforce = forgets  # type: ignore[method-assign]
        await gate.gate.request(flow)
        await gate.gate.request(gone)

    gate = with_gate(tmp_path, scenario)
    assert flow.response is not None and flow.response.status_code == 403
    assert "Airlock failed (RuntimeError" in json.loads(flow.response.content)["reason"]
    assert gone.response is None and gate.metrics.fail_closed.labels("gate")._value.get() == 1
    outcomes = {run.id: run.outcome for run in stored_runs(tmp_path)}
    assert outcomes[flow.metadata["airlock"]] == "error"


def test_store_failure_blocks_the_request_and_says_why(tmp_path: Path) -> None:
    """Acknowledged only once the database committed it: with the tables gone, both requests are
    refused, said why, and counted."""
    first, second = stripe_flow(b"amount=5&currency=usd"), stripe_flow(b"amount=6&currency=usd")

    async def scenario(gate: Airlock, _: Any) -> None:
        await gate.gate.request(stripe_flow(b"amount=4&currency=usd"))  # the decider has its past
        with store_of(gate).begin() as conn:
            conn.execute(text("DROP TABLE approvals"))
            conn.execute(text("DROP TABLE runs"))
        await gate.gate.request(first)
        await gate.gate.request(second)

    gate = with_gate(tmp_path, scenario)

    for refused in (first, second):
        assert refused.response.status_code == 403
        reason = json.loads(refused.response.content)["reason"]
        assert "could not be recorded" in reason
        assert "table" not in reason  # the driver's error stays in the log: it names internals
        # Nothing was recorded, so the answer names no request id (it would name no record).
        assert json.loads(refused.response.content)["request_id"] is None
        assert "X-Airlock-Request-Id" not in refused.response.headers
    assert gate.metrics.fail_closed.labels("store")._value.get() == 2


def test_agent_identity_comes_from_the_connect_credentials(tmp_path: Path) -> None:
    connect = tflow.tflow()
    token = base64.b64encode(b"billing-bot:s3cret").decode()
    connect.request.headers["Proxy-Authorization"] = f"Basic {token}"
    flow = stripe_flow(b"amount=5&currency=usd")
    flow.client_conn = connect.client_conn
    flow.client_conn.sni = "api.stripe.com"
    # Sent again inside the tunnel: the CONNECT named the agent, and the upstream never sees it.
    flow.request.headers["Proxy-Authorization"] = f"Basic {token}"

    async def scenario(gate: Airlock, _: Any) -> None:
        await gate.identity.http_connect(connect)
        await gate.gate.request(flow)

    with_gate(tmp_path, scenario)
    [run] = stored_runs(tmp_path)
    assert run.agent == "billing-bot"
    assert "s3cret" not in json.dumps(run.request)
    assert flow.response is None  # forwarded…
    assert "Proxy-Authorization" not in flow.request.headers  # …without the credentials


def test_plain_http_proxy_credentials_identify_and_are_not_forwarded(tmp_path: Path) -> None:
    flow = stripe_flow(b"amount=5&currency=usd")
    flow.request.headers["Proxy-Authorization"] = "Basic " + base64.b64encode(b"bot:k").decode()

    gate_decides(tmp_path, flow)
    assert "Proxy-Authorization" not in flow.request.headers
    assert stored_runs(tmp_path)[0].agent == "bot"


def test_held_flow_is_released_when_the_store_says_approved(tmp_path: Path) -> None:
    flow = stripe_flow(b"", path="/v1/customers/cus_1", method="DELETE")

    async def scenario(gate: Airlock, _: Any) -> None:
        from airlock.store.approvals import APPROVED, resolve_approval

        hold = asyncio.create_task(gate.gate.request(flow))
        await until_held(gate)
        [approval_id] = gate.holds.held
        await asyncio.to_thread(resolve_approval, store_of(gate), approval_id, APPROVED, "r", None)
        await asyncio.wait_for(hold, 5)

    with_gate(tmp_path, scenario)
    assert flow.response is None  # forwarded
    assert "airlock_released" in flow.metadata


def test_client_disconnect_abandons_the_approval(tmp_path: Path) -> None:
    flow = stripe_flow(b"", path="/v1/customers/cus_2", method="DELETE")

    async def scenario(gate: Airlock, _: Any) -> None:
        hold = asyncio.create_task(gate.gate.request(flow))
        await until_held(gate)
        gate.holds.client_disconnected(flow.client_conn)
        await asyncio.wait_for(hold, 5)

    with_gate(tmp_path, scenario)
    assert json.loads(flow.response.content)["approval"]["state"] == "ABANDONED"
    engine = open_engine(f"sqlite:///{tmp_path / 'a.db'}")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT state FROM approvals")).scalar_one() == "ABANDONED"


def test_bad_config_refuses_to_start_with_file_and_line(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.yaml").write_text(textwrap.dedent("rules:\n  - id: x\n    decison: BLOCK\n"))
    gate = Airlock(Metrics())
    with taddons.context(gate) as tctx, pytest.raises(exceptions.OptionsError) as error:
        tctx.configure(gate, airlock_policies=str(policies))
    assert f"{policies / 'p.yaml'}:3:5: unknown key 'decison'" in str(error.value)


def test_request_hash_binds_method_url_body_and_agent() -> None:
    base = {
        "method": "POST",
        "scheme": "https",
        "host": "h",
        "port": 443,
        "path": "/p",
        "query": {},
        "body": {"b": 1, "a": 2},
        "agent": "x",
    }
    same = dict(base, body={"a": 2, "b": 1})
    assert request_hash(base, KEY) == request_hash(same, KEY)
    for change in ({"agent": "y"}, {"body": {"a": 3}}, {"path": "/q"}, {"method": "PUT"}):
        assert request_hash(base, KEY) != request_hash(dict(base, **change), KEY)


def test_a_stored_request_hash_does_not_let_a_reader_of_the_store_test_password_guesses() -> None:
    """An approval's request_hash is in the database and in audit exports; the request it
    covers is there too, its secrets redacted. Without the request key (in the data directory,
    never in the store) a guess of a Basic password or a body field cannot be checked against
    it; the same request under the same key hashes the same, under another key not."""
    document = {"method": "POST", "scheme": "https", "host": "internal.example", "port": 443,
                "path": "/users", "query": {}, "body": {"name": "ann", "password": "summer24"},
                "agent": "x", "headers": {"authorization": "Basic YW5uOnN1bW1lcjI0"}}  # fmt: skip
    stored = request_hash(document, KEY)
    assert request_hash(dict(document), KEY) == stored
    assert request_hash(document, bytes(32)) != stored
    assert stored not in former_request_hashes(document, KEY)[1:]  # what a reader could compute


def test_request_hash_binds_whose_request_it_is_not_what_each_attempt_changes() -> None:
    """A retry joins its call's approval: a retry with another key or account must not be the
    request the reviewer approved, while an SDK's own retry (new date, signature, attempt
    count) still is."""

    def hashed(**headers: str) -> str:
        sent = {"content-type": "application/x-www-form-urlencoded", "user-agent": "Stripe/v1"}
        sent |= {name.replace("_", "-"): value for name, value in headers.items()}
        document = {"method": "POST", "scheme": "https", "host": "api.stripe.com", "port": 443,
                    "path": "/v1/charges", "query": {}, "body": {"amount": "150000"},
                    "agent": "x", "headers": sent}  # fmt: skip
        return request_hash(document, KEY)

    ours = hashed(authorization="Bearer sk_test_OURS", stripe_account="acct_OURS")
    assert ours == hashed(authorization="Bearer sk_test_OURS", stripe_account="acct_OURS",
                          x_stripe_client_telemetry='{"last_request_metrics": 1}')  # fmt: skip
    for other in (
        {"authorization": "Bearer sk_live_OTHER", "stripe_account": "acct_OURS"},
        {"authorization": "Bearer sk_test_OURS", "stripe_account": "acct_VICTIM"},
        {"authorization": "Bearer sk_test_OURS"},
        {"authorization": "Bearer sk_test_OURS", "stripe_account": "acct_OURS",
         "x_http_method_override": "DELETE"},
    ):  # fmt: skip
        assert hashed(**other) != ours, other

    def signed(key: str, date: str, signature: str) -> str:
        return hashed(authorization=f"AWS4-HMAC-SHA256 Credential={key}/20261204/us-east-1/s3/"
                      f"aws4_request, SignedHeaders=host;x-amz-date, Signature={signature}",
                      x_amz_date=date)  # fmt: skip

    first = signed("AKIAOURS", "20261204T230000Z", "a1")
    assert signed("AKIAOURS", "20261204T230002Z", "b2") == first  # boto3's next attempt
    assert signed("AKIAOTHER", "20261204T230002Z", "b2") != first
    midnight = hashed(authorization="AWS4-HMAC-SHA256 Credential=AKIAOURS/20261205/us-east-1/s3/"
                      "aws4_request, SignedHeaders=host, Signature=c3")  # fmt: skip
    assert midnight == first  # a retry after midnight UTC: the scope's date moved

    def oauth(consumer: str, nonce: str) -> str:
        return hashed(authorization=f'OAuth oauth_consumer_key="{consumer}", oauth_nonce='
                      f'"{nonce}", oauth_signature="{nonce}sig", oauth_token="t-1"')  # fmt: skip

    assert oauth("ours", "n1") == oauth("ours", "n2") != oauth("theirs", "n2")
    azure = hashed(authorization="SharedKey account1:c2lnbmF0dXJl")
    assert azure == hashed(authorization="SharedKey account1:b3RoZXI=")
    assert azure != hashed(authorization="SharedKey account2:b3RoZXI=")
    # What rotates between attempts is not bound: a load balancer's cookie, a session token.
    assert hashed(authorization="Bearer k", cookie="AWSALB=1") == hashed(
        authorization="Bearer k", cookie="AWSALB=2", x_amz_security_token="t"
    )


def test_routes_parse_and_reject_bad_specs() -> None:
    assert parse_routes(["API.stripe.com=127.0.0.1:8443", "h=[::1]:9"]) == {
        "api.stripe.com": ("127.0.0.1", 8443),
        "h": ("::1", 9),
    }
    with pytest.raises(exceptions.OptionsError, match="expected HOST=ADDR:PORT"):
        parse_routes(["api.stripe.com:443"])


def test_routing_overrides_name_resolution_only_for_routed_hosts() -> None:
    routing = Routing()

    async def scenario() -> tuple[Any, Any]:
        with taddons.context(routing) as tctx:
            tctx.configure(
                routing,
                airlock_route=["api.stripe.com=127.0.0.1:8443", "*.s3.amazonaws.com=127.0.0.1:9"],
            )
            routing.running()
            loop = asyncio.get_running_loop()
            routed = await loop.getaddrinfo("api.stripe.com", 443)
            bucket = await loop.getaddrinfo("my-bucket.s3.amazonaws.com", 443)
            other = await loop.getaddrinfo("localhost", 443)
            return routed, bucket, other

    routed, bucket, other = asyncio.run(scenario())
    assert {info[4][:2] for info in routed} == {("127.0.0.1", 8443)}
    assert {info[4][:2] for info in bucket} == {("127.0.0.1", 9)}
    assert all(info[4][1] == 443 for info in other)


def test_an_unexpected_fault_in_the_gate_blocks_instead_of_passing(tmp_path: Path) -> None:
    flow = stripe_flow(b"amount=5&currency=usd")

    async def scenario(gate: Airlock, _: Any) -> None:
        gate.runtime.config = None  # any bug on the path behaves like this one
        await gate.gate.request(flow)

    gate = with_gate(tmp_path, scenario)
    assert flow.response.status_code == 403
    assert "Airlock failed" in json.loads(flow.response.content)["reason"]
    assert gate.metrics.fail_closed.labels("gate")._value.get() == 1
    [run] = stored_runs(tmp_path)  # the refusal is on record too
    assert (run.decision, run.outcome, run.id) == ("BLOCK", "blocked", flow.metadata["airlock"])
    assert "Airlock failed" in run.reason


def approval_state(tmp_path: Path) -> str:
    engine = open_engine(f"sqlite:///{tmp_path / 'a.db'}")
    with engine.connect() as conn:
        state = conn.execute(text("SELECT state FROM approvals")).scalar_one()
    engine.dispose()
    return state


def test_a_client_gone_before_the_hold_begins_abandons_it(tmp_path: Path) -> None:
    flow = stripe_flow(b"", path="/v1/customers/cus_3", method="DELETE")
    flow.client_conn.timestamp_end = 1.0  # disconnected while the decision was committed

    gate_decides(tmp_path, flow)

    assert json.loads(flow.response.content)["approval"]["state"] == "ABANDONED"
    assert approval_state(tmp_path) == "ABANDONED"


def test_a_stream_reset_while_held_abandons_the_approval(tmp_path: Path) -> None:
    flow = stripe_flow(b"", path="/v1/customers/cus_4", method="DELETE")

    async def scenario(gate: Airlock, _: Any) -> None:
        hold = asyncio.create_task(gate.gate.request(flow))
        await until_held(gate)
        gate.holds.error(flow)
        await asyncio.wait_for(hold, 5)

    with_gate(tmp_path, scenario)
    assert approval_state(tmp_path) == "ABANDONED"


def test_shutdown_expires_held_approvals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import airlock.addons.holds as holds

    # Without mitmproxy's connection layer no response hook reports the 503 on its way: done()
    # would wait its whole grace period for it.
    monkeypatch.setattr(holds, "SHUTDOWN_ANSWER", 0.3)
    flow = stripe_flow(b"", path="/v1/customers/cus_5", method="DELETE")

    async def scenario(gate: Airlock, _: Any) -> None:
        held = asyncio.create_task(gate.gate.request(flow))
        await until_held(gate)
        assert not held.done()

    with_gate(tmp_path, scenario)  # with_gate ends with gate.done()
    assert approval_state(tmp_path) == "EXPIRED"
    assert (flow.response.status_code, flow.response.headers["Retry-After"]) == (503, "5")


def test_a_release_the_proxy_gave_up_on_is_withdrawn_and_the_retry_goes_out_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer holds SQLite's write lock (a reviewer's command, retention) longer than
    the proxy waits for a release: the attempt is refused, and the release, committed later,
    is withdrawn (ordered after it), so the SDK's next retry is forwarded, once."""
    import sqlite3
    import threading

    import airlock.addons.runtime as runtime
    from airlock.store.approvals import APPROVED, resolve_approval

    monkeypatch.setattr(runtime, "STORE_TIMEOUT", 0.5)
    first, retry, again, last = (
        stripe_flow(b"", path="/v1/customers/cus_6", method="DELETE") for _ in range(4)
    )
    writers: list[threading.Thread] = []

    def another_writer(locked: threading.Event) -> None:
        db = sqlite3.connect(tmp_path / "a.db", isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        locked.set()
        time.sleep(1.5)
        db.execute("COMMIT")
        db.close()

    async def scenario(gate: Airlock, _: Any) -> None:
        decider = gate.runtime.ask()
        release = decider.release

        async def once_the_lock_is_taken(*args: Any) -> Any:
            decider.release = release  # type: ignore[method-assign]
            locked = threading.Event()
            writers.append(threading.Thread(target=another_writer, args=(locked,)))
            writers[0].start()
            await asyncio.to_thread(locked.wait)
            return await release(*args)

        await gate.gate.request(first)  # held for 1 s, then answered "pending"
        approval_id = first.response.headers["X-Airlock-Approval-Id"]
        await asyncio.to_thread(resolve_approval, store_of(gate), approval_id, APPROVED, "r", "ok")
        decider.release = once_the_lock_is_taken  # type: ignore[method-assign]
        await gate.gate.request(retry)  # its release is not answered in time
        await asyncio.to_thread(writers[0].join)
        await asyncio.sleep(0.5)  # the release and its withdrawal are committed
        await gate.gate.request(again)
        await gate.gate.request(last)

    with_gate(tmp_path, scenario, airlock_hold_timeout=1)
    assert retry.response.status_code == 403 and "airlock_released" not in retry.metadata
    assert again.response is None and "airlock_released" in again.metadata  # forwarded
    assert last.response.status_code == 409  # once
    engine = open_engine(f"sqlite:///{tmp_path / 'a.db'}")
    report = verify_audit(engine)
    engine.dispose()
    assert report.ok, report.problem


@pytest.mark.parametrize("edited", [False, True])
def test_a_released_request_that_never_reached_the_upstream_is_released_to_the_retry(
    tmp_path: Path, edited: bool
) -> None:
    """The approved attempt's client left while it was being released (mitmproxy drops the
    request once the hook returns; an HTTP/2 stream reset is delivered only then), or the
    upstream could not be reached: nothing went out, so its release is withdrawn and the SDK's
    retry is forwarded, once. One that connected may have gone out: its release stands."""
    from mitmproxy import flow as mitmproxy_flow

    from airlock.store.approvals import APPROVED, resolve_approval
    from airlock.store.schema import Approval

    first, lost, again, last = (stripe_flow(b"amount=150000&currency=usd") for _ in range(4))
    edit = {"params": {"amount": 140000}, "locations": {"amount": ["body", "amount"]}}

    def released_at(gate: Airlock, approval_id: str) -> float | None:
        with store_of(gate).connect() as conn:
            query = select(Approval.released_at).where(Approval.id == approval_id)
            return conn.execute(query).scalar_one()

    async def scenario(gate: Airlock, _: Any) -> None:
        await gate.gate.request(first)  # held for 1 s, then answered "pending"
        approval_id = first.response.headers["X-Airlock-Approval-Id"]
        await asyncio.to_thread(
            resolve_approval,
            store_of(gate),
            approval_id,
            APPROVED,
            "r",
            "ok",
            edit=edit if edited else None,
        )
        await gate.gate.request(lost)
        assert lost.response is None and "airlock_released" in lost.metadata
        lost.server_conn.timestamp_tcp_setup = None  # never connected
        lost.error = mitmproxy_flow.Error("client disconnected")
        gate.holds.error(lost)
        gate.outcomes.error(lost)
        deadline = time.monotonic() + 5
        while released_at(gate, approval_id) is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # the withdrawal is written while the proxy idles
        await gate.gate.request(again)
        assert again.response is None and "airlock_released" in again.metadata  # forwarded
        await gate.gate.request(last)  # connected: it may have gone out, the release stands

    with_gate(tmp_path, scenario, airlock_hold_timeout=1)
    assert last.response is not None and last.response.status_code == 409  # once
    engine = open_engine(f"sqlite:///{tmp_path / 'a.db'}")
    report = verify_audit(engine)  # a withdrawn release, edited or not, is no tampering
    engine.dispose()
    assert report.ok, report.problem


@pytest.mark.parametrize(
    ("body", "content_type", "applied"),
    [
        # read as a form by the document (its media type), so edited as one
        (b"amount=150000&currency=usd", "application/x-www-form-urlencoded; profile=json", True),
        # a form that is not UTF-8 cannot be rewritten: refused, and nothing went out
        (b"amount=150000&currency=usd&description=caf\xe9", "application/x-www-form-urlencoded",
         False),
    ],
)  # fmt: skip
def test_an_edit_is_applied_as_the_body_was_read_or_its_release_is_withdrawn(
    tmp_path: Path, body: bytes, content_type: str, applied: bool
) -> None:
    from airlock.store.approvals import APPROVED, resolve_approval

    def flow() -> Any:
        made = stripe_flow(body)
        made.request.headers["content-type"] = content_type
        return made

    first, attempt, retry = flow(), flow(), flow()
    edit = {"params": {"amount": 140000}, "locations": {"amount": ["body", "amount"]}}

    async def scenario(gate: Airlock, _: Any) -> None:
        await gate.gate.request(first)  # held for 1 s, then answered "pending"
        approval_id = first.response.headers["X-Airlock-Approval-Id"]
        await asyncio.to_thread(
            resolve_approval, store_of(gate), approval_id, APPROVED, "r", "ok", edit=edit
        )
        await gate.gate.request(attempt)
        if not applied:
            await gate.gate.request(retry)

    with_gate(tmp_path, scenario, airlock_hold_timeout=1)
    if applied:
        assert attempt.response is None and "airlock_released" in attempt.metadata
        assert b"amount=140000" in attempt.request.content
        return
    assert attempt.response is not None and attempt.response.status_code == 403
    assert "airlock_released" not in attempt.metadata
    # Nothing went out: the retry is released again (and refused again), never told 409.
    assert retry.response is not None and retry.response.status_code == 403


def test_a_replayed_flow_is_judged_again(tmp_path: Path) -> None:
    flow = stripe_flow(b"amount=5000000&currency=usd")
    flow.metadata["airlock"] = "an-earlier-run"
    flow.metadata["airlock_released"] = 1.0

    gate_decides(tmp_path, flow)

    assert flow.response.status_code == 403
    assert flow.metadata["airlock"] != "an-earlier-run"


def test_a_store_that_does_not_answer_blocks_in_bounded_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import airlock.addons.gatekeeper as gatekeeper

    monkeypatch.setattr(gatekeeper, "STORE_TIMEOUT", 0.2)
    flow = stripe_flow(b"amount=5&currency=usd")

    async def scenario(gate: Airlock, _: Any) -> None:
        await gate.runtime.start_decider()
        gate.runtime.decider._link.post = lambda envelopes: None  # nothing reaches it: no answer
        await asyncio.wait_for(gate.gate.request(flow), 5)

    with_gate(tmp_path, scenario)
    assert flow.response.status_code == 403
    assert "did not answer within" in json.loads(flow.response.content)["reason"]


def test_a_fault_in_the_decider_blocks_and_is_recorded_as_the_gates(tmp_path: Path) -> None:
    from airlock.decider.client import DeciderFault

    flow = stripe_flow(b"amount=5&currency=usd")

    async def scenario(gate: Airlock, _: Any) -> None:
        async def fails(*_: Any) -> Any:
            raise DeciderFault("the decider failed: KeyError('x')")

        gate.runtime.decider.decide = fails
        await gate.gate.request(flow)

    gate = with_gate(tmp_path, scenario)
    assert flow.response.status_code == 403
    assert gate.metrics.fail_closed.labels("gate")._value.get() == 1
    assert gate.metrics.fail_closed.labels("store")._value.get() == 0
    [run] = stored_runs(tmp_path)
    assert (run.decision, run.id) == ("BLOCK", flow.metadata["airlock"])


def test_non_http_traffic_is_cut_and_unsafe_options_are_fixed(tmp_path: Path) -> None:
    from mitmproxy.addons import proxyserver

    gate = Airlock(Metrics())
    with taddons.context(gate, proxyserver.Proxyserver()) as tctx:
        tctx.configure(gate, airlock_db=f"sqlite:///{tmp_path / 'a.db'}")
        assert tctx.options.rawtcp is True and tctx.options.connection_strategy == "eager"
        assert tctx.options.websocket is True
        gate.runtime._enforce_gating_options()
        assert tctx.options.rawtcp is False and tctx.options.websocket is False
        assert tctx.options.connection_strategy == "lazy"
        ws_flow = tflow.twebsocketflow()
        gate.streams.websocket_message(ws_flow)  # should one start anyway: nothing relayed
        assert ws_flow.websocket is not None and ws_flow.websocket.messages[-1].dropped
        tcp_flow = tflow.ttcpflow()
        gate.streams.tcp_start(tcp_flow)
        assert tcp_flow.killable is False  # killed
        # mitmproxy 11's TCP layer relays whatever tcp_start did: each message is emptied too.
        gate.streams.tcp_message(tcp_flow)
        assert tcp_flow.messages[-1].content == b""
        for name in ("ignore_hosts", "allow_hosts", "tcp_hosts", "udp_hosts"):
            tctx.options.update(**{name: ["api.stripe.com"]})
            with pytest.raises(exceptions.OptionsError, match=f"relays as raw streams.*{name}"):
                gate.runtime._enforce_gating_options()
            tctx.options.update(**{name: []})
        tctx.options.stream_large_bodies = "1m"
        with pytest.raises(exceptions.OptionsError, match="cannot gate streamed requests"):
            gate.runtime._enforce_gating_options()


class _RewritesRequests:
    """Another script's addon: its request hook could change what the gate judged."""

    def request(self, flow: http.HTTPFlow) -> None:
        flow.request.content = b"amount=99999900&currency=usd"


def test_nothing_that_rewrites_requests_after_the_gate_is_loaded_with_it(tmp_path: Path) -> None:
    """`mitmdump -s addons/gate.py` loads scripts before mitmproxy's own map_remote,
    modify_body, stickyauth and stickycookie, and a later `-s` script after Airlock: their
    request hooks run after the gate's and would send what was not judged."""
    from mitmproxy.addons import mapremote, modifybody, stickyauth, stickycookie

    db = f"sqlite:///{tmp_path / 'a.db'}"
    own = (mapremote.MapRemote(), modifybody.ModifyBody(), stickyauth.StickyAuth(),
           stickycookie.StickyCookie())  # fmt: skip
    gate = Airlock(Metrics())
    with taddons.context(gate, *own) as tctx:
        tctx.configure(gate, airlock_db=db)
        gate.runtime._enforce_gating_options()  # none of them set
        for name, value in (("map_remote", ["|api.stripe.com|evil.example"]),
                            ("modify_body", ["/~q/amount=500/amount=99999900"]),
                            ("stickyauth", ".*"), ("stickycookie", ".*")):  # fmt: skip
            tctx.options.update(**{name: value})
            with pytest.raises(exceptions.OptionsError, match=f"after Airlock judged.*{name}"):
                gate.runtime._enforce_gating_options()
            tctx.options.update(**{name: [] if isinstance(value, list) else None})
    before = Airlock(Metrics())
    with taddons.context(_RewritesRequests(), before) as tctx:  # loaded first: judged after it
        tctx.configure(before, airlock_db=db)
        before.runtime._enforce_gating_options()
    after = Airlock(Metrics())
    with taddons.context(after, _RewritesRequests()) as tctx:
        tctx.configure(after, airlock_db=db)
        with pytest.raises(exceptions.OptionsError, match=r"load addons/gate\.py as the last"):
            after.runtime._enforce_gating_options()
    redirects = Airlock(Metrics())  # wherever loaded: it runs as the judged request goes out
    with taddons.context(_SendsElsewhere(), redirects) as tctx:
        tctx.configure(redirects, airlock_db=db)
        with pytest.raises(exceptions.OptionsError, match="server_connect"):
            redirects.runtime._enforce_gating_options()


class _SendsElsewhere:
    def server_connect(self, data: Any) -> None:
        data.server.address = ("evil.example", 443)


@pytest.mark.parametrize(
    ("mode", "reason", "shadow"),
    [
        ("shadow", "shadow mode (airlock_mode=shadow)", "BLOCK"),
        ("off", "policies are off (airlock_mode=off)", None),
    ],
)
def test_shadow_and_off_modes_forward_and_record(
    tmp_path: Path, mode: str, reason: str, shadow: str | None
) -> None:
    flow = stripe_flow(b"amount=5000000&currency=usd")

    async def scenario(gate: Airlock, _: Any) -> None:
        await gate.gate.request(flow)

    gate = with_gate(tmp_path, scenario, airlock_mode=mode)

    assert flow.response is None  # forwarded
    [run] = stored_runs(tmp_path)
    assert (run.decision, run.reason, run.shadow_decision) == ("ALLOW", reason, shadow)
    if shadow:
        assert run.shadow_rules == ["stripe-charge-needs-approval", "stripe-charge-too-large"]
        assert (
            gate.metrics.shadow_decisions.labels("BLOCK", "create_charge", "stripe")._value.get()
            == 1
        )


def test_a_mapping_failure_still_blocks_in_shadow_mode(tmp_path: Path) -> None:
    flow = stripe_flow(b"amount=lots&currency=usd")

    async def scenario(gate: Airlock, _: Any) -> None:
        await gate.gate.request(flow)

    with_gate(tmp_path, scenario, airlock_mode="shadow")
    assert flow.response.status_code == 403


def test_a_rules_hold_timeout_wins_over_the_default(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.yaml").write_text(
        "rules:\n  - {id: quick, when: {action: delete_record}, decision: REQUIRE_APPROVAL,"
        " hold_timeout: 0.3}\n"
    )
    flow = stripe_flow(b"", path="/v1/customers/cus_6", method="DELETE")

    async def scenario(gate: Airlock, _: Any) -> None:
        await asyncio.wait_for(gate.gate.request(flow), 5)  # the option says 25 s

    with_gate(tmp_path, scenario, airlock_policies=str(policies))
    assert json.loads(flow.response.content)["approval"]["state"] == "EXPIRED"


def test_decisions_another_proxy_commits_late_still_count_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two proxies on one database share budgets: what the other one commits is read in commit
    order, so a decision that reaches the database long after it was made (replayed after a
    crash) is not missed."""
    import airlock.addons.runtime as runtime
    from airlock.store.records import DecisionRecord
    from tests.test_store import run_row, write

    monkeypatch.setattr(runtime, "HISTORY_SYNC_SECONDS", 0.05)
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.yaml").write_text(
        "rules:\n  - {id: charge-budget, when: {action: create_charge}, decision: BLOCK,\n"
        "     budget: {param: amount, limit: 200000, window: 1h, per: agent}}\n"
    )
    credentials = base64.b64encode(b"agent-a:key").decode()
    first, second = (stripe_flow(b"amount=60000&currency=usd") for _ in range(2))
    for flow in (first, second):
        flow.request.headers["proxy-authorization"] = f"Basic {credentials}"

    async def scenario(gate: Airlock, _: Any) -> None:
        await gate.gate.request(first)  # 60,000 of 200,000 spent
        late = run_row(instance="elsewhere-2", at=time.time() - 600)  # 150,000 by agent-a
        await asyncio.to_thread(write, store_of(gate), DecisionRecord(late))
        await asyncio.sleep(0.5)  # ten syncs
        await gate.gate.request(second)  # 60,000 more: over only if the late one counts

    with_gate(tmp_path, scenario, airlock_policies=str(policies))
    assert first.response is None
    assert second.response.status_code == 403
    assert json.loads(second.response.content)["rules"] == ["charge-budget"]


def test_policies_and_mode_reloaded_at_run_time_decide_the_next_request(tmp_path: Path) -> None:
    """The decider process holds its own copy of the configuration: a reload must reach it."""
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.yaml").write_text(
        "rules:\n  - {id: no-charges, when: {action: create_charge}, decision: BLOCK}\n"
    )
    before, after, shadowed = (stripe_flow(b"amount=5&currency=usd") for _ in range(3))

    async def scenario(gate: Airlock, tctx: Any) -> None:
        await gate.gate.request(before)
        tctx.configure(gate, airlock_policies=str(policies))
        await gate.gate.request(after)
        tctx.configure(gate, airlock_mode="shadow")
        await gate.gate.request(shadowed)

    with_gate(tmp_path, scenario)
    assert before.response is None
    assert json.loads(after.response.content)["rules"] == ["no-charges"]
    assert shadowed.response is None
    assert [r.shadow_decision for r in stored_runs(tmp_path)] == [None, None, "BLOCK"]


def test_a_restarted_decider_decides_with_the_same_configuration(tmp_path: Path) -> None:
    """The decider process died: the next request starts a new one, which has the proxy's
    configuration and mode, not none."""
    flow = stripe_flow(b"amount=5000000&currency=usd")

    async def scenario(gate: Airlock, _: Any) -> None:
        first = gate.runtime.decider._link.process
        first.kill()
        await asyncio.to_thread(first.wait)
        await gate.gate.request(flow)
        assert gate.runtime.decider._link.process is not first

    with_gate(tmp_path, scenario, airlock_mode="shadow", airlock_decider="worker")
    assert flow.response is None  # shadow mode, as configured
    [run] = stored_runs(tmp_path)
    assert (run.decision, run.shadow_decision) == ("ALLOW", "BLOCK")


def test_a_restarted_decider_ignores_edits_on_disk_the_proxy_never_loaded(tmp_path: Path) -> None:
    """Policies edited on disk take effect when the proxy reloads them (and validates them
    first), never because the decider process happened to restart."""
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.yaml").write_text(
        "rules:\n  - {id: no-charges, when: {action: create_charge}, decision: BLOCK}\n"
    )
    flow = stripe_flow(b"amount=5&currency=usd")

    async def scenario(gate: Airlock, _: Any) -> None:
        (policies / "p.yaml").write_text("rules: []\n")  # edited, not reloaded
        (policies / "q.yaml").write_text("rules: [{id: broken\n")
        first = gate.runtime.decider._link.process
        first.kill()
        await asyncio.to_thread(first.wait)
        await gate.gate.request(flow)

    with_gate(tmp_path, scenario, airlock_policies=str(policies), airlock_decider="worker")
    assert json.loads(flow.response.content)["rules"] == ["no-charges"]


_NAMES = st.sampled_from([b"Content-Type", b"content-type", b"X-A", b"x-a", b"Set-Cookie"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_NAMES | st.binary(min_size=1, max_size=6), st.binary(max_size=8))))
def test_headers_read_in_one_pass_as_mitmproxy_reads_them(
    fields: list[tuple[bytes, bytes]],
) -> None:
    """The one-pass dict of a message's headers (what outcomes and MCP calls read) is the
    dict mitmproxy's Headers gives: names as first sent, repeated values joined, any bytes."""
    from mitmproxy.http import Headers

    from airlock.addons.runtime import header_dict

    headers = Headers(fields)
    assert header_dict(headers) == dict(headers)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(_NAMES | st.binary(min_size=1, max_size=6), st.binary(max_size=8))),
    st.sampled_from(["X-A", "x-a", "Proxy-Authorization"]),
)
def test_a_header_is_taken_or_added_as_mitmproxy_s_own_mapping_would(
    fields: list[tuple[bytes, bytes]], name: str
) -> None:
    """The request path's header edits (the proxy's credentials and Airlock's undo link taken
    out, the request id added to the answer) leave the fields exactly as Headers.pop and
    Headers.setdefault do, repeated and differently cased names included."""
    from mitmproxy.http import Headers

    from airlock.addons.runtime import add_header_unless_present, pop_header

    ours, theirs = Headers(fields), Headers(fields)
    assert pop_header(ours, name) == theirs.pop(name, "")
    assert ours.fields == theirs.fields
    ours, theirs = Headers(fields), Headers(fields)
    add_header_unless_present(ours, name, "id-1")
    theirs.setdefault(name, "id-1")
    assert ours.fields == theirs.fields


def test_a_name_that_rebinds_to_airlock_after_the_gate_looked_is_not_connected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DNS rebinding: a name answers a public address when the gate checks it and loopback when
    mitmproxy connects. To a guarded port the name is resolved again just before the connection
    and the connection pinned to the address checked: the rebound one is killed, the steady one
    goes to exactly the address that was checked. Vendor ports are not looked at."""
    import ipaddress

    from mitmproxy.proxy.server_hooks import ServerConnectionHookData

    from airlock.addons import control_surface

    answers = {"rebind.test": ["203.0.113.7", "127.0.0.1"], "steady.test": ["203.0.113.9"] * 2}

    async def resolve(host: str, port: int) -> list[tuple[Any, int]]:
        return [(ipaddress.ip_address(answers[host].pop(0)), port)]

    monkeypatch.setattr(control_surface, "_resolve", resolve)
    own = control_surface.OwnSurface()
    own.surface = control_surface.ControlSurface.build({8080, 9464}, "127.0.0.1", None)

    async def connect(host: str, port: int) -> tuple[str | None, str | None, Any]:
        checked = await own.refusal(host, port) if port != 443 else None
        server = tflow.tserver_conn()
        server.address = (host, port)
        await own.server_connect(ServerConnectionHookData(server, tflow.tclient_conn()))
        return checked, server.error, server.address

    async def three() -> list[tuple[str | None, str | None, Any]]:
        return [await connect("rebind.test", 8080), await connect("steady.test", 9464),
                await connect("rebind.test", 443)]  # fmt: skip

    rebound, steady, vendor = asyncio.run(three())
    assert rebound[0] is None  # the gate saw a public address
    assert rebound[1] == "requests to Airlock's own proxy, metrics or guard ports are refused"
    assert steady == (None, None, ("203.0.113.9", 9464))
    assert vendor == (None, None, ("rebind.test", 443))


def test_an_address_the_machine_takes_after_start_is_airlocks_own_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A VPN or DHCP address that came after the proxy started reaches its ports as the others
    do: interfaces are read again (at most once a second) when a guarded port meets an address
    Airlock does not know."""
    import ipaddress

    from airlock.addons import control_surface

    surface = control_surface.ControlSurface.build({8080}, "127.0.0.1", None)
    later = ipaddress.ip_address("198.51.100.23")
    assert later not in surface.own_addresses
    monkeypatch.setattr(control_surface, "_INTERFACES", (frozenset(), float("-inf")))
    monkeypatch.setattr(control_surface, "_interface_addresses", lambda: {later})
    refusal = surface.refuses_addresses({later}, 8080)
    assert refusal == "requests to Airlock's own proxy, metrics or guard ports are refused"
    assert surface.refuses_addresses({ipaddress.ip_address("203.0.113.5")}, 8080) is None


def test_made_up_action_names_do_not_grow_the_metrics_without_bound() -> None:
    """An MCP tool's name, a Guard call's provider: labels from the request. Past a bound new
    ones are counted as "other", every decision still counted."""
    from airlock.addons import metrics as metrics_module

    metrics = Metrics()
    total = metrics_module.MAX_SERIES + 3_000
    for n in range(total):
        metrics.count_decision("ALLOW", f"mcp.evil.example.tool_{n}", "mcp")
    series = [s for family in metrics.decisions.collect() for s in family.samples
              if s.name.endswith("_total")]  # fmt: skip
    assert len(series) <= metrics_module.MAX_SERIES + 1
    assert sum(s.value for s in series) == total
    assert any(s.labels["action"] == "other" for s in series)


def test_a_long_action_name_is_cut_in_its_metric_label() -> None:
    """A 900 KB MCP tool name was a 900 KB series, kept and written at every scrape (found by
    review): its label is cut, and the decision still counted."""
    from airlock.addons import metrics as metrics_module

    metrics = Metrics()
    metrics.count_decision("BLOCK", "mcp.gh." + "x" * 900_000, "p" * 10_000)
    [sample] = [s for family in metrics.decisions.collect() for s in family.samples
                if s.name.endswith("_total")]  # fmt: skip
    assert len(sample.labels["action"]) == len(sample.labels["provider"])
    assert len(sample.labels["action"]) == metrics_module.MAX_LABEL_CHARS
    assert sample.labels["action"].startswith("mcp.gh.xxx") and sample.value == 1
