"""The decider's core (decider/core.py), called directly: what it makes of the proxy's messages,
and that both deciders (worker process, in-process thread) answer the same."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from mitmproxy.http import Headers
from mitmproxy.test import tutils
from sqlalchemy import select, update

import airlock.decider.core as core_module
from airlock.addons.runtime import raw_request
from airlock.decider.client import InProcessDecider, StoreError, WorkerDecider
from airlock.decider.core import DeciderCore, wire_request
from airlock.decider.messages import (
    AnsweredOutcome,
    Committed,
    Configuration,
    Configure,
    Decide,
    DecideCall,
    Decided,
    Envelope,
    Failure,
    RawRequest,
    Reply,
    Settled,
    Setup,
    StoreAddress,
    Watch,
)
from airlock.decider.wire import Reader, pack
from airlock.decider.worker import SocketLink
from airlock.pipeline.document import MAX_DECODED_BODY, build_document
from airlock.pipeline.evaluation import Config
from airlock.pipeline.run_record import RunSummary, former_request_hashes
from airlock.pipeline.tool_calls import ToolCall
from airlock.pipeline.yaml_source import recording_sources
from airlock.store.audit import verify_audit
from airlock.store.instances import LEASE_SECONDS, RETRY_GRACE_SECONDS
from airlock.store.records import OutcomeRecord, SettleRequest
from airlock.store.schema import (
    Approval,
    ApprovalHolder,
    InstanceLease,
    Run,
    create_schema,
    open_engine,
)
from tests.helpers.proxy import PROJECT_ROOT


@pytest.fixture
def store(tmp_path: Path) -> StoreAddress:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    engine = open_engine(url)
    create_schema(engine)
    engine.dispose()
    return StoreAddress(url, "full")


@pytest.fixture
def core(store: StoreAddress) -> Iterator[DeciderCore]:
    core = DeciderCore(store)
    yield core
    core.finish()


def charge(amount: int, run_id: str | None = None, **headers: str) -> Decide:
    request = tutils.treq(
        method=b"POST", scheme=b"https", host="api.stripe.com", port=443, authority=b"",
        path=b"/v1/charges",
        headers=[(b"content-type", b"application/x-www-form-urlencoded"),
                 *((k.replace("_", "-").encode(), v.encode()) for k, v in headers.items())],
        content=f"amount={amount}&currency=usd".encode(),
    )  # fmt: skip
    return Decide(run_id or f"run-{amount}", "a", None, raw_request(request, None))


def setup() -> Setup:
    mappings, policies = PROJECT_ROOT / "mappings", PROJECT_ROOT / "policies"
    with recording_sources() as sources:
        Config.load(mappings, policies)
    configuration = Configuration(str(mappings), str(policies), sources, "enforce", 600.0)
    return Setup("test-1", 60.0, "", 0, configuration, [])


def setup_with(tmp_path: Path, files: dict[str, str]) -> tuple[Setup, Path]:
    """The setup of a decider deciding with the shipped policies and these files beside them."""
    mappings, policies = PROJECT_ROOT / "mappings", tmp_path / "policies"
    shutil.copytree(PROJECT_ROOT / "policies", policies)
    for name, text in files.items():
        (policies / name).write_text(text)
    with recording_sources() as sources:
        Config.load(mappings, policies)
    configuration = Configuration(str(mappings), str(policies), sources, "enforce", 600.0)
    return Setup("test-1", 60.0, "", 0, configuration, []), policies


def replies(answers: list[Any]) -> dict[int, Any]:
    return {a.sequence: a.value for a in answers if isinstance(a, Reply)}


def stored(core: DeciderCore, run_id: str) -> Any:
    with core.engine.connect() as conn:
        return conn.execute(select(Run).where(Run.id == run_id)).one()


def test_decisions_are_answered_once_written_in_one_commit(core: DeciderCore) -> None:
    answers = core.handle(
        [Envelope(0, setup()), Envelope(1, charge(500)), Envelope(2, charge(5_000_000))]
    )
    assert [a.size for a in answers if isinstance(a, Committed)] == [2]  # one group commit
    small, large = replies(answers)[1], replies(answers)[2]
    assert (small.run.decision, large.run.decision) == ("ALLOW", "BLOCK")
    assert "stripe-charge-too-large" in large.run.rules
    assert not hasattr(small.run, "request")  # the proxy gets a summary, not the document
    assert stored(core, "run-5000000").outcome == "blocked"
    assert stored(core, "run-500").decision == "ALLOW"


def test_a_request_for_approval_is_recorded_with_the_approval_it_opens(core: DeciderCore) -> None:
    decided = replies(core.handle([Envelope(0, setup()), Envelope(7, charge(150_000))]))[7]
    assert decided.run.decision == "REQUIRE_APPROVAL"
    assert stored(core, "run-150000").request["body"] == {"amount": "150000", "currency": "usd"}
    approval = decided.approval
    assert (approval.state, approval.joined) == ("PENDING", False)
    with core.engine.connect() as conn:
        row = conn.execute(select(Approval).where(Approval.id == approval.id)).one()
    assert row.request_hash == decided.request_hash and len(decided.request_hash) == 64


def test_a_held_request_is_answered_with_its_query_as_stored(core: DeciderCore) -> None:
    """What notifications show beside the target (found by review: `?amount=9900000` went
    unsaid): the query as recorded, its secrets redacted."""
    decide = charge(150_000)
    request = replace(decide.request, path=b"/v1/charges?expand=customer&api_key=sk_live_51Xyz")
    decided = replies(
        core.handle([Envelope(0, setup()), Envelope(7, replace(decide, request=request))])
    )[7]
    assert decided.run.decision == "REQUIRE_APPROVAL"
    assert decided.run.query == {"expand": ["customer"], "api_key": "[REDACTED]"}
    assert decided.run.query == stored(core, "run-150000").request["query"]


def test_a_decider_holding_another_request_key_than_its_store_refuses_and_says_why(
    store: StoreAddress, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mitmdump -s` users start no `airlock run` to check it first: the decider finds the
    store bound to another instance's request key, and refuses every request, saying so,
    without reading the store's schema again for each (at most once a second)."""
    first = DeciderCore(store)
    first.handle([Envelope(0, setup())])  # binds the default data directory's key
    first.finish()
    other = DeciderCore(store)
    tries = []
    prepare = core_module.create_schema
    monkeypatch.setattr(core_module, "create_schema", lambda e: tries.append(1) or prepare(e))
    elsewhere = replace(setup(), anchor_dir=str(tmp_path / "elsewhere"))
    batch = [Envelope(0, elsewhere), *(Envelope(n, charge(n, f"run-{n}")) for n in range(1, 6))]
    decided = replies(other.handle(batch))
    other.finish()
    assert {d.run.decision for d in decided.values()} == {"BLOCK"}
    assert all("bound with another request key" in d.run.reason for d in decided.values())
    assert len(tries) == 1


def test_the_same_call_twice_opens_one_approval(core: DeciderCore) -> None:
    """In one batch (sent at once), and in the next (the first is committed by then)."""
    first, again = charge(150_000), charge(150_000, "run-again")
    answered = replies(core.handle([Envelope(0, setup()), Envelope(1, first),
                                    Envelope(2, again)]))  # fmt: skip
    opened, joined = answered[1].approval, answered[2].approval
    assert (opened.joined, joined.joined, joined.id) == (False, True, opened.id)
    assert f"joins approval {opened.id}" in answered[2].run.reason

    later = replies(core.handle([Envelope(3, charge(150_000, "run-3"))]))[3]
    assert later.approval.id == opened.id and later.approval.joined
    with core.engine.connect() as conn:
        assert len(conn.execute(select(Approval.id)).all()) == 1


@pytest.mark.parametrize("former", [0, 1, 2], ids=["newline-joined", "unkeyed", "without-headers"])
@pytest.mark.parametrize("key", [None, "idem-1"])
def test_a_call_joins_the_approval_an_older_airlock_opened_for_it(
    core: DeciderCore, key: str | None, former: int
) -> None:
    """Approvals opened by an older Airlock (a store upgraded while one was open, an older
    instance beside this one) hold the hash as it made them: fields joined by newlines, earlier
    unkeyed, and earlier still without the request's identity headers. The same call still
    joins, found by the key and compared with the hash that approval was made with; another
    request with the same key still does not."""
    headers = {"idempotency_key": key} if key else {}
    first = replies(core.handle([Envelope(0, setup()), Envelope(1, charge(150_000, **headers))]))
    opened = first[1].approval
    document = build_document(wire_request(charge(150_000, **headers).request), "a")
    before = former_request_hashes(document, core.request_key)[former]
    assert opened.request_hash not in former_request_hashes(document, core.request_key)
    retry_key = f"a:api.stripe.com:{key}" if key else f"a:{before}"
    with core.engine.begin() as conn:  # as an older Airlock wrote it
        opened_row = update(Approval).where(Approval.id == opened.id)
        conn.execute(opened_row.values(request_hash=before, retry_key=retry_key))

    again = replies(core.handle([Envelope(2, charge(150_000, "run-2", **headers))]))[2]
    assert (again.approval.id, again.request_hash) == (opened.id, before)
    if key:
        other = replies(core.handle([Envelope(3, charge(150_001, "run-3", **headers))]))[3]
        assert other.approval.id == opened.id and other.request_hash != before  # 409 at the proxy


def test_a_call_racing_an_older_instance_joins_its_approval_as_that_instance_bound_it(
    core: DeciderCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older Airlock beside this one (unkeyed hashes) opens the approval for a call while
    this decider takes the same call: its read found nothing, and its insert finds the other's
    approval (records.py). It joins, bound with the hash that approval was made with, so the
    proxy does not answer 409 for the very call that approval holds."""
    headers = {"idempotency_key": "idem-race"}
    first = replies(core.handle([Envelope(0, setup()), Envelope(1, charge(150_000, **headers))]))
    document = build_document(wire_request(charge(150_000, **headers).request), "a")
    unkeyed = former_request_hashes(document, core.request_key)[1]
    with core.engine.begin() as conn:  # as the older instance wrote it
        conn.execute(update(Approval).values(request_hash=unkeyed))
    monkeypatch.setattr(core_module, "find_approval_for_retry", lambda engine, key: None)

    raced = replies(core.handle([Envelope(2, charge(150_000, "run-2", **headers))]))[2]
    assert (raced.approval.id, raced.approval.joined) == (first[1].approval.id, True)
    assert raced.request_hash == raced.approval.request_hash == unkeyed


def test_a_request_refused_for_reusing_a_key_holds_nothing_for_the_approval(
    store: StoreAddress,
) -> None:
    """Another instance gets a different request under the same idempotency key: it is
    answered 409 and holds no flow for the approval, so it is not recorded as a holder (which
    would keep the approval open after its real holder is gone)."""
    here, there = DeciderCore(store), DeciderCore(store)
    headers = {"idempotency_key": "idem-reused"}
    try:
        first = [Envelope(0, setup()), Envelope(1, charge(150_000, **headers))]
        opened = replies(here.handle(first))
        there.handle([Envelope(0, replace(setup(), instance="there-2.x"))])
        reused = replies(there.handle([Envelope(1, charge(150_001, "run-2", **headers))]))[1]
        with here.engine.connect() as conn:
            holders = conn.execute(select(ApprovalHolder.instance)).scalars().all()
    finally:
        here.finish()
        there.finish()
    assert reused.approval.id == opened[1].approval.id
    assert reused.request_hash != reused.approval.request_hash  # the proxy answers 409
    assert holders == ["test-1"]


def test_a_running_decider_settles_what_a_stopped_instance_left_on_its_next_sync(
    db_url: str,
) -> None:
    """Another proxy instance on the same store holds a call, then stops (its decider ends its
    lease): this decider, running, leaves the approval open while a retry of the call could
    still join it, then expires it on a sync, without waiting for a restart, and says the run
    that was held was not sent."""
    other, this = (DeciderCore(StoreAddress(db_url, "full")) for _ in range(2))
    other.handle([Envelope(0, replace(setup(), instance="elsewhere-5.x"))])
    held = replies(other.handle([Envelope(1, charge(150_000, "run-held"))]))[1]
    this.handle([Envelope(0, setup())])
    other.finish()

    def synced() -> tuple[str, str | None, str | None]:
        this.next_sync = time.monotonic()  # its sync is due
        this.wait()
        with this.engine.connect() as conn:
            state, reason = conn.execute(
                select(Approval.state, Approval.reason).where(Approval.id == held.approval.id)
            ).one()
            outcome = conn.execute(select(Run.outcome).where(Run.id == "run-held")).scalar_one()
        return state, reason, outcome

    try:
        assert synced() == ("PENDING", None, None)
        with this.engine.begin() as conn:  # the grace for a retry has passed since it stopped
            stopped = time.time() - RETRY_GRACE_SECONDS - 1
            conn.execute(update(InstanceLease).values(stopped_at=stopped))
        assert synced() == ("EXPIRED", "the proxies holding it stopped", "not_sent")
    finally:
        this.finish()


def test_after_a_store_outage_a_decider_does_not_take_the_others_for_gone(db_url: str) -> None:
    """The store was unreachable for longer than a lease lasts: every instance's lease looks
    lapsed, and the first one back expired what the others held. Now an instance judges others
    by their lease only once it has itself renewed unbroken for as long as a lease lasts."""
    other, this = (DeciderCore(StoreAddress(db_url, "full")) for _ in range(2))
    other.handle([Envelope(0, replace(setup(), instance="elsewhere-5.x"))])
    held = replies(other.handle([Envelope(1, charge(150_000, "run-held"))]))[1]
    this.handle([Envelope(0, setup())])

    def after_sync() -> str:
        this.next_sync = time.monotonic()  # its sync is due
        this.wait()
        with this.engine.connect() as conn:
            query = select(Approval.state).where(Approval.id == held.approval.id)
            return conn.execute(query).scalar_one()

    try:
        with this.engine.begin() as conn:  # an outage: nobody renewed for over a lease
            conn.execute(update(InstanceLease).values(seen_at=time.time() - LEASE_SECONDS - 5))
            conn.execute(  # the other runs on another machine: its pid says nothing here
                update(InstanceLease)
                .where(InstanceLease.id == "elsewhere-5.x")
                .values(namespace="another-machine")
            )
        this.renewing_since = None  # this one's renewals failed meanwhile too
        assert after_sync() == "PENDING"
        assert this.renewing_since is not None  # renewed again: from now on, unbroken
        # The other never came back: once this one has renewed for a lease's length, its
        # lapsed lease says it is gone.
        this.renewing_since = time.monotonic() - LEASE_SECONDS
        with this.engine.begin() as conn:
            conn.execute(
                update(InstanceLease)
                .where(InstanceLease.id == "elsewhere-5.x")
                .values(seen_at=time.time() - LEASE_SECONDS - RETRY_GRACE_SECONDS - 5)
            )
        assert after_sync() == "EXPIRED"
    finally:
        other.finish()
        this.finish()


def test_a_decider_started_while_the_store_was_down_takes_its_lease_without_a_request(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Restarted during a short outage, with flows held and no request coming: the store is
    tried again by the decider's own periodic work, and its lease renewed, not left to lapse
    (the other instances would take it for gone and expire what it holds)."""
    prepare, tries = DeciderCore._prepare_store, []

    def down_at_first(self: DeciderCore) -> None:
        tries.append(time.monotonic())
        if len(tries) == 1:
            raise OSError("the store is unreachable")
        prepare(self)

    monkeypatch.setattr(DeciderCore, "_prepare_store", down_at_first)
    core = DeciderCore(StoreAddress(db_url, "full"))
    assert core.wait() is None and not tries  # before its setup: no data directory to use yet
    core.handle([Envelope(0, replace(setup(), sync_every=0.2))])
    try:
        assert not core.prepared
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not core.prepared:
            time.sleep(min(core.wait() or 0.05, 0.05))  # serve()'s loop, with nothing sent
            core.pushed()
        first = lease_seen(core, "test-1")
        assert first is not None and len(tries) == 2
        while time.monotonic() < deadline and lease_seen(core, "test-1") == first:
            time.sleep(min(core.wait() or 0.05, 0.05))
        assert lease_seen(core, "test-1") != first  # renewed by its syncs, still no request
    finally:
        core.finish()


def test_a_decider_whose_history_cannot_be_loaded_still_renews_its_lease(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store is prepared (the lease taken once) but the recent past keeps failing to load
    (a read that times out): each try renews the lease, or the others would take this live
    instance for gone while it refuses every request."""

    def times_out(*args: Any, **kwargs: Any) -> list[Any]:
        raise OSError("canceling statement due to statement timeout")

    monkeypatch.setattr(core_module, "past_decisions", times_out)
    core = DeciderCore(StoreAddress(db_url, "full"))
    core.handle([Envelope(0, replace(setup(), sync_every=0.2))])
    try:
        assert core.prepared and core.next_sync is None
        first = lease_seen(core, "test-1")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and lease_seen(core, "test-1") == first:
            time.sleep(min(core.wait() or 0.05, 0.05))
        assert lease_seen(core, "test-1") != first
    finally:
        core.finish()


def lease_seen(core: DeciderCore, instance: str) -> float | None:
    with core.engine.connect() as conn:
        query = select(InstanceLease.seen_at).where(InstanceLease.id == instance)
        return conn.execute(query).scalar()


@contextmanager
def held_on_two_instances(url: str) -> Iterator[tuple[DeciderCore, DeciderCore, str]]:
    """One call held on two instances, "elsewhere-5.x" (on another machine: only its lease says
    whether it is alive) and "test-1": (elsewhere, here, the approval's id)."""
    other, this = (DeciderCore(StoreAddress(url, "full")) for _ in range(2))
    other.handle([Envelope(0, replace(setup(), instance="elsewhere-5.x"))])
    this.handle([Envelope(0, setup())])
    try:
        held = replies(other.handle([Envelope(1, charge(150_000, "run-held"))]))[1]
        joined = replies(this.handle([Envelope(1, charge(150_000, "run-retry"))]))[1]
        assert joined.approval.id == held.approval.id
        with this.engine.begin() as conn:
            conn.execute(
                update(InstanceLease)
                .where(InstanceLease.id == "elsewhere-5.x")
                .values(namespace="another-machine")  # its pid says nothing here
            )
        yield other, this, held.approval.id
    finally:
        other.finish()
        this.finish()


def test_after_a_store_outage_a_client_leaving_here_leaves_the_others_hold_open(
    db_url: str,
) -> None:
    """The call is held on two instances; the store was unreachable for longer than a lease and
    is back. This one's client leaves before the other renewed: the other's lapsed lease is no
    evidence it is gone (as for the sweeps), so the approval stays open for its flow."""
    with held_on_two_instances(db_url) as (_, this, approval_id):
        with this.engine.begin() as conn:  # an outage: nobody renewed for over a lease
            conn.execute(update(InstanceLease).values(seen_at=time.time() - LEASE_SECONDS - 10))
        this.renewing_since = None  # this one's renewals failed meanwhile too
        leaving = SettleRequest(approval_id, "ABANDONED", "client left", time.time(), "test-1")
        settlement = replies(this.handle([Envelope(2, leaving)]))[2]
        assert settlement.state == "PENDING" and not settlement.won


def test_after_the_store_hung_a_decider_does_not_take_the_others_for_gone(db_url: str) -> None:
    """The store hung rather than failed (a network blackhole, a stalled failover): no renewal
    raised, this one's came back first, late. Its own lease's silence is the gap: the others,
    whose renewals are still on their way, are not taken for gone."""
    other, this = (DeciderCore(StoreAddress(db_url, "full")) for _ in range(2))
    other.handle([Envelope(0, replace(setup(), instance="elsewhere-5.x"))])
    held = replies(other.handle([Envelope(1, charge(150_000, "run-held"))]))[1]
    this.handle([Envelope(0, setup())])
    try:
        this.renewing_since = time.monotonic() - 2 * LEASE_SECONDS  # renewing unbroken, long
        with this.engine.begin() as conn:  # then nobody's renewal returned for 45 s
            conn.execute(update(InstanceLease).values(seen_at=time.time() - 45))
            conn.execute(
                update(InstanceLease)
                .where(InstanceLease.id == "elsewhere-5.x")
                .values(namespace="another-machine")
            )
        this.next_sync = time.monotonic()  # its sync is due
        this.wait()
        with this.engine.connect() as conn:
            query = select(Approval.state).where(Approval.id == held.approval.id)
            assert conn.execute(query).scalar_one() == "PENDING"
        assert time.monotonic() - (this.renewing_since or 0) < LEASE_SECONDS  # a gap
    finally:
        other.finish()
        this.finish()


@pytest.mark.parametrize("where", ["before a sync", "inside the renewal", "inside a leave"])
def test_a_store_that_hangs_for_longer_than_a_lease_takes_no_live_instance_for_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """The store hangs for everyone (SQLite's write lock held, PostgreSQL stalled) for longer
    than a lease, before this instance's sync, inside its renewal, or inside the very write of a
    leave: the other instance's lease, which could not be renewed either, is no evidence it is
    gone, and the approval it holds a flow for stays open. Lease, silence and grace scaled down
    (30 s, 10 s, 10 s → 1.5 s, 0.5 s, 0.25 s), the hang 2 s."""
    import sqlite3

    import airlock.store.writer as writer_module

    monkeypatch.setattr(core_module, "LEASE_SECONDS", 1.5)
    monkeypatch.setattr(core_module, "SILENCE_SECONDS", 0.5)
    monkeypatch.setattr(writer_module, "SILENCE_SECONDS", 0.5)
    monkeypatch.setattr(core_module, "RETRY_GRACE_SECONDS", 0.25)
    path = tmp_path / "airlock.db"
    with held_on_two_instances(f"sqlite:///{path}") as (_, this, approval_id):
        with this.engine.begin() as conn:
            conn.execute(update(InstanceLease).values(seen_at=time.time()))
        this.renewing_since = time.monotonic() - 100  # healthy, renewing unbroken for long
        if where == "before a sync":
            with this.engine.begin() as conn:
                conn.execute(update(InstanceLease).values(seen_at=time.time() - 2.0))
            this.next_sync = time.monotonic()
            this.wait()
        else:
            locked = threading.Event()

            def hold_the_lock() -> None:
                db = sqlite3.connect(path, isolation_level=None)
                db.execute("BEGIN IMMEDIATE")
                locked.set()
                time.sleep(2.0)  # the hang: nobody renews meanwhile
                db.execute("COMMIT")
                db.close()

            hang = threading.Thread(target=hold_the_lock)
            hang.start()
            locked.wait()
            if where == "inside the renewal":
                this.next_sync = time.monotonic()
                this.wait()  # its renewal waits for the lock
            else:
                leaving = SettleRequest(approval_id, "ABANDONED", "left", time.time(), "test-1")
                assert replies(this.handle([Envelope(2, leaving)]))[2].state == "PENDING"
            hang.join()
        with this.engine.connect() as conn:
            query = select(Approval.state).where(Approval.id == approval_id)
            assert conn.execute(query).scalar_one() == "PENDING"


def test_a_running_decider_expires_an_approval_nobody_waits_for_once_it_is_overdue(
    db_url: str,
) -> None:
    """A hold answered "pending" leaves its approval open for a retry. If none comes before the
    approval's expiry, a sync expires it: the record does not say PENDING until a restart."""
    from airlock.store.audit import verify_audit

    core = DeciderCore(StoreAddress(db_url, "full"))
    short = replace(setup().configuration, approval_timeout=1.0)
    core.handle([Envelope(0, replace(setup(), configuration=short))])
    held = replies(core.handle([Envelope(1, charge(150_000, "run-open"))]))[1]

    def synced() -> tuple[str, str | None]:
        core.next_sync = time.monotonic()  # its sync is due
        core.wait()
        with core.engine.connect() as conn:
            return tuple(conn.execute(  # type: ignore[return-value]
                select(Approval.state, Approval.reason).where(Approval.id == held.approval.id)
            ).one())  # fmt: skip

    try:
        assert synced() == ("PENDING", None)
        deadline = time.monotonic() + 10
        while (found := synced()) == ("PENDING", None) and time.monotonic() < deadline:
            time.sleep(0.05)  # the approval's own second passes; each sync looks again
        assert found == ("EXPIRED", "approval timed out")
        assert verify_audit(core.engine).ok
    finally:
        core.finish()


def test_copies_of_a_call_in_one_batch_join_the_approval_another_instance_opened_meanwhile(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another instance commits the call's approval between this batch's look for one and its
    commit: the copy that meant to open one joins it, and so does the copy told to join that
    copy's approval (never opened), instead of being refused."""
    engine = open_engine(db_url)
    create_schema(engine)
    engine.dispose()
    other, this = (DeciderCore(StoreAddress(db_url, "full")) for _ in range(2))
    other.handle([Envelope(0, setup())])
    this.handle([Envelope(0, setup())])
    look_up, opened = core_module.find_approval_for_retry, {}

    def another_instance_commits_after_the_look(engine: Any, key: str) -> Any:
        found = look_up(engine, key)
        if not opened:  # once, and not when the other instance looks (patched for it too)
            opened[9] = None
            opened.update(replies(other.handle([Envelope(9, charge(150_000, "run-9"))])))
        return found

    monkeypatch.setattr(
        core_module, "find_approval_for_retry", another_instance_commits_after_the_look
    )
    try:
        answered = replies(this.handle([Envelope(1, charge(150_000, "run-1")),
                                        Envelope(2, charge(150_000, "run-2"))]))  # fmt: skip
        with this.engine.connect() as conn:
            approvals = conn.execute(select(Approval.id)).scalars().all()
        reasons = [stored(this, run_id).reason for run_id in ("run-1", "run-2")]
        verified = verify_audit(this.engine)
    finally:
        other.finish()
        this.finish()
    winner = opened[9].approval.id
    for sequence in (1, 2):
        assert not isinstance(answered[sequence], Failure), answered[sequence]
        assert (answered[sequence].approval.id, answered[sequence].approval.joined) == (
            winner,
            True,
        )
    assert approvals == [winner]
    # The record and the answers name the approval joined, not the one that was never opened.
    for sequence, reason in zip((1, 2), reasons, strict=True):
        assert reason.endswith(f"(a retry: joins approval {winner})"), reason
        assert reason.count("joins approval") == 1
        assert answered[sequence].run.reason == reason
    assert verified.ok, verified.problem


def test_without_configuration_a_request_is_blocked_and_recorded(core: DeciderCore) -> None:
    decided = replies(core.handle([Envelope(1, charge(500))]))[1]  # no setup came
    assert decided.run.decision == "BLOCK"
    assert "no configuration" in decided.run.reason
    assert decided.failed_stage == "gate"
    assert stored(core, "run-500").decision == "BLOCK"


def test_a_reload_the_decider_cannot_load_leaves_no_configuration_in_force(
    core: DeciderCore,
) -> None:
    """Review: a reload the proxy had switched to, refused by its decider, left the decider on
    the previous configuration while the proxy authenticated with the new one. It now leaves
    none: every request is refused, saying why, until a configuration loads."""
    core.handle([Envelope(0, setup())])
    good = setup().configuration
    broken = replace(good, sources={"files": {}, "folders": {}})  # files it cannot read
    refused = replies(core.handle([Envelope(1, Configure(broken)), Envelope(2, charge(500))]))
    assert isinstance(refused[1], Failure) and refused[1].by == "decider"
    assert refused[2].run.decision == "BLOCK"
    assert "cannot load the configuration the proxy reloaded" in refused[2].run.reason
    answers = replies(core.handle([Envelope(3, Configure(good)), Envelope(4, charge(501))]))
    assert answers[3] is None and answers[4].run.decision == "ALLOW"


def test_an_agent_the_agents_file_lists_is_recorded_by_its_name_whatever_it_looks_like(
    core: DeciderCore, tmp_path: Path
) -> None:
    """A listed agent whose id looks like a key was recorded redacted: the run named nobody, and
    its approved hold was then refused at release as an unlisted agent (found by review)."""
    from airlock.pipeline.agents import hash_key

    name = "AKIAIOSFODNN7EXAMPLE"
    agents = (f'agents:\n  - {{id: {name}, roles: [pay], key_hash: "{hash_key("k")}"}}\n'
              "roles:\n  pay: {egress: any}\n")  # fmt: skip
    configured, _ = setup_with(tmp_path, {"agents.yaml": agents})
    decided = replies(
        core.handle([Envelope(0, configured), Envelope(1, replace(charge(500), agent=name))])
    )
    assert decided[1].run.agent == name and decided[1].run.decision == "ALLOW"
    assert stored(core, "run-500").agent == name


def test_a_message_the_decider_cannot_take_is_refused_not_dropped(core: DeciderCore) -> None:
    answers = core.handle([Envelope(5, "not a message"), Envelope(6, Watch(["x"]))])  # type: ignore[arg-type]
    refused = replies(answers)[5]
    assert isinstance(refused, Failure) and refused.by == "decider"
    assert 6 not in replies(answers)  # a watch is not answered
    assert core.watch.watched == {"x"}


def test_the_request_crosses_to_the_decider_byte_for_byte() -> None:
    request = tutils.treq(
        method=b"PATCH", path=b"/a%20b/\xc3\xa9?q=\xff", authority=b"",
        headers=[(b"X-Raw", b"\xfe\x00v"), (b"x-raw", b"second")], content=b"\x00\x01",
    )  # fmt: skip
    [decide] = Reader().feed(pack(Decide("r", "a", None, raw_request(request, None))))
    assert isinstance(decide.request, RawRequest)
    assert [tuple(h) for h in decide.request.headers] == list(request.headers.fields)
    crossed = wire_request(decide.request)

    assert (crossed.method, crossed.path) == (request.method, request.path)
    assert (crossed.host, crossed.port, crossed.raw_content) == (
        request.host, request.port, b"\x00\x01",
    )  # fmt: skip
    assert build_document(crossed, "a") == build_document(request, "a")


def test_what_else_reaches_the_upstream_crosses_and_is_judged() -> None:
    """The client's TLS server name and HTTP/2 trailer fields go upstream as sent: a request
    whose SNI names another host, or that carries trailers, is refused."""
    request = tutils.treq(host="api.stripe.com", authority=b"", headers=[], content=b"")

    def crossed(sni: str | None) -> dict[str, Any]:
        [decide] = Reader().feed(pack(Decide("r", "a", None, raw_request(request, sni))))
        return build_document(wire_request(decide.request), "a")

    assert "request_error" not in crossed("API.Stripe.com.")
    assert "request_error" not in crossed(None)
    assert "does not name the host" in crossed("evil.example")["request_error"]
    request.trailers = Headers([(b"Stripe-Account", b"acct_other")])
    assert "trailer fields (stripe-account)" in crossed("api.stripe.com")["request_error"]


def test_values_json_cannot_carry_cross_as_they_are() -> None:
    """An integer beyond 64 bits in a body, a lone surrogate (an undecodable byte as mitmproxy
    holds it), bytes: the decider's answers carry params of any request."""
    params = {"n": 10**30, "s": "caf\udce9", "b": b"\xff"}
    value = Decided(RunSummary("r", "ALLOW", "create_charge", [], params=params), None)
    [back] = Reader().feed(pack(value))
    assert back == value


def test_budgets_never_decide_without_their_past(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store could not be prepared nor the recent past read (here: a view stands where the
    runs table should be): decisions fail closed, and the decider tries again before a later
    one (at most once every PREPARE_SECONDS; here at once) instead of deciding on an empty
    history."""
    monkeypatch.setattr(core_module, "PREPARE_SECONDS", 0.0)
    url = f"sqlite:///{tmp_path / 'a.db'}"
    broken = open_engine(url)
    with broken.begin() as conn:
        conn.exec_driver_sql("CREATE VIEW runs AS SELECT 1 AS id")
    core = DeciderCore(StoreAddress(url, "full"))
    try:
        core.handle([Envelope(0, setup())])
        assert core.next_sync is None and not core.prepared
        blocked = replies(core.handle([Envelope(1, charge(500))]))[1]
        with broken.begin() as conn:
            conn.exec_driver_sql("DROP VIEW runs")
        allowed = replies(core.handle([Envelope(2, charge(500, "run-2"))]))[2]
    finally:
        core.finish()
        broken.dispose()
    # The first could not be written either (no runs table): refused as the store's failure.
    assert isinstance(blocked, Failure) and blocked.by == "store"
    assert allowed.run.decision == "ALLOW" and core.prepared


def test_every_call_of_a_batch_let_through_counts_in_rates(
    core: DeciderCore, tmp_path: Path
) -> None:
    """A JSON-RPC batch of two refunds let through counts two, not only the call that decided
    it: the next refund meets a rate of two an hour."""
    setup, _ = setup_with(tmp_path, {"refunds.yaml": (
        "rules:\n  - {id: refunds, when: {action: 'mcp.*.issue_refund'}, decision: ALLOW}\n"
        "  - {id: two-refunds-an-hour, when: {action: 'mcp.*.issue_refund'},\n"
        "     rate: {limit: 2, window: 1h}, decision: BLOCK}\n"
    )})  # fmt: skip

    def refunds(run_id: str, count: int) -> Decide:
        calls = [{"jsonrpc": "2.0", "id": i, "method": "tools/call",
                  "params": {"name": "issue_refund", "arguments": {"amount": 1500}}}
                 for i in range(count)]  # fmt: skip
        request = tutils.treq(
            method=b"POST", scheme=b"https", host="mcp.internal.example.com", port=443,
            authority=b"", path=b"/mcp", headers=[(b"content-type", b"application/json")],
            content=json.dumps(calls).encode(),
        )  # fmt: skip
        return Decide(run_id, "a", None, raw_request(request, None))

    batch = replies(core.handle([Envelope(0, setup), Envelope(1, refunds("run-two", 2))]))[1]
    assert batch.run.decision == "ALLOW"
    after = replies(core.handle([Envelope(2, refunds("run-one", 1))]))[2]
    assert after.run.decision == "BLOCK" and "two-refunds-an-hour" in after.run.rules


def test_a_record_keeps_large_values_as_their_start_length_and_hash(core: DeciderCore) -> None:
    """Policies see the whole value; the store keeps a bounded record of it."""
    description = "d" * 500_000
    request = tutils.treq(
        method=b"POST", scheme=b"https", host="api.stripe.com", port=443, authority=b"",
        path=b"/v1/charges", headers=[(b"content-type", b"application/x-www-form-urlencoded"),
                                      (b"x-trace", b"t" * 50_000)],
        content=f"amount=5&currency=usd&description={description}".encode(),
    )  # fmt: skip
    decide = Decide("run-big", "a", None, raw_request(request, None))
    decided = replies(core.handle([Envelope(0, setup()), Envelope(1, decide)]))[1]
    assert decided.run.decision == "ALLOW"
    run = stored(core, "run-big")
    assert len(json.dumps(run.params) + json.dumps(run.request)) < 100_000
    text = run.params["description"]
    digest = hashlib.sha256(description.encode()).hexdigest()
    assert text.startswith("d" * 256) and f"[500000 characters, sha256 {digest}]" in text
    assert "[50000 characters, sha256 " in run.request["headers"]["x-trace"]


@pytest.mark.parametrize("kind", [WorkerDecider, InProcessDecider])
def test_both_deciders_answer_the_same(store: StoreAddress, kind: type) -> None:
    """The worker process and the in-process thread run the same core over the same messages:
    the same decisions, rules and approvals, each durable when answered."""
    calls = [charge(500), charge(5_000_000), charge(150_000), charge(150_000, "run-retry")]

    async def scenario() -> list[Decided]:
        decider = kind(store, setup)
        await decider.start()
        try:
            return [await decider.decide(call) for call in calls]
        finally:
            await decider.stop()

    decided = asyncio.run(scenario())
    assert [(d.run.decision, d.run.rules) for d in decided] == [
        ("ALLOW", []),
        ("BLOCK", ["stripe-charge-needs-approval", "stripe-charge-too-large"]),
        ("REQUIRE_APPROVAL", ["stripe-charge-needs-approval"]),
        ("REQUIRE_APPROVAL", ["stripe-charge-needs-approval"]),
    ]
    assert decided[3].approval.joined and decided[3].approval.id == decided[2].approval.id
    engine = open_engine(store.url)
    with engine.connect() as conn:
        assert len(conn.execute(select(Run.id)).all()) == 4
    engine.dispose()


def test_the_worker_waits_for_a_busy_proxy_to_read_its_answers() -> None:
    """The worker's wait for input has a limit (it has periodic work: watching held approvals
    every 20 ms); its answers do not. A proxy busy for longer than that wait (a thousand
    requests arriving to be held) once made the worker's send time out and end the decider,
    failing every call in flight."""
    ours, proxy = socket.socketpair()
    link = SocketLink(ours)
    assert link.receive(0.02) == []  # a wait with a limit, nothing sent
    answers = [Committed(float(i), i) for i in range(100_000)]  # far beyond a socket's buffer
    received: list[object] = []

    def busy_then_read() -> None:
        time.sleep(0.3)  # the proxy's loop busy elsewhere, longer than the worker's wait
        reader, data = Reader(), b""
        while len(received) < len(answers):
            data = proxy.recv(1 << 20)
            received.extend(reader.feed(data))

    reading = threading.Thread(target=busy_then_read, daemon=True)
    reading.start()
    try:
        link.send(answers)
        reading.join(30)
    finally:
        ours.close()
        proxy.close()
    assert received == answers


def test_an_outcome_the_store_refused_is_written_again_without_another_request(
    core: DeciderCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once it is due, the decider writes a refused outcome again on its own (pushed() runs
    whenever its wait ends): with no request coming after the store recovers, it once stayed
    unwritten until the next one."""
    from sqlalchemy import text

    from airlock.decider import core as core_module
    from airlock.store.records import OutcomeRecord

    monkeypatch.setattr(core_module, "RETRY_SECONDS", 0.05)
    core.handle([Envelope(0, setup()), Envelope(1, charge(500))])
    refuse = "SELECT RAISE(ABORT, 'database or disk is full')"
    with core.engine.begin() as conn:  # the store refuses outcomes, as a full disk would
        conn.execute(text(f"CREATE TRIGGER refuse BEFORE UPDATE ON runs BEGIN {refuse}; END"))
    outcome = OutcomeRecord("run-500", time.time(), "forwarded", 200, 12.0)
    refused = replies(core.handle([Envelope(2, outcome)]))[2]
    assert isinstance(refused, Failure) and "disk is full" in refused.message
    with core.engine.begin() as conn:  # room again
        conn.execute(text("DROP TRIGGER refuse"))
    assert stored(core, "run-500").outcome is None
    deadline, written = time.monotonic() + 5, {}
    while not written and time.monotonic() < deadline:
        time.sleep(core.wait() or 0.01)  # as serve() waits for input that never comes
        written = replies(core.pushed())
    assert written == {2: None}
    assert (stored(core, "run-500").outcome, stored(core, "run-500").status) == ("forwarded", 200)


def _answered(run_id: str, body: bytes, *headers: tuple[bytes, bytes]) -> AnsweredOutcome:
    outcome = OutcomeRecord(run_id, time.time(), "forwarded", 200, 9.0, {"prior": {"x": 1}})
    return AnsweredOutcome(outcome, "stripe.create_charge", list(headers), body)


def test_the_decider_reads_the_identifiers_an_answer_returned(core: DeciderCore) -> None:
    """The proxy sends the answer as received (gzip on, headers as bytes) and the decider reads
    the ids its mapping's `outcome:` names, beside what the proxy already put in the detail;
    the message crosses the worker's wire unchanged."""
    core.handle([Envelope(0, setup()), Envelope(1, charge(500))])
    body = gzip.compress(json.dumps({"id": "ch_42", "object": "charge"}).encode())
    answered = _answered("run-500", body, (b"Content-Type", b"application/json"),
                         (b"Content-Encoding", b"gzip"))  # fmt: skip
    [crossed] = Reader().feed(pack(answered))  # pairs arrive as msgpack arrays (lists)
    assert replace(crossed, headers=[tuple(pair) for pair in crossed.headers]) == answered
    answered = crossed
    assert replies(core.handle([Envelope(2, answered)])) == {2: None}
    detail = stored(core, "run-500").outcome_detail
    assert detail == {"prior": {"x": 1}, "ids": {"charge_id": "ch_42"}}


def test_an_answer_that_cannot_be_read_still_records_its_outcome(core: DeciderCore) -> None:
    """A body inflating past the decoding limit, or one that is not what the mapping reads,
    leaves the ids out; the outcome itself is written."""
    core.handle([Envelope(0, setup()), Envelope(1, charge(500)), Envelope(2, charge(501))])
    bomb = gzip.compress(b"{" + b" " * (MAX_DECODED_BODY + 10) + b"}")
    answered = _answered("run-500", bomb, (b"content-encoding", b"gzip"),
                         (b"content-type", b"application/json"))  # fmt: skip
    garbled = _answered("run-501", b"not json", (b"content-type", b"application/json"))
    assert replies(core.handle([Envelope(3, answered), Envelope(4, garbled)])) == {3: None, 4: None}
    for run_id in ("run-500", "run-501"):
        run = stored(core, run_id)
        assert (run.outcome, run.status, run.outcome_detail) == (
            "forwarded",
            200,
            {"prior": {"x": 1}},
        )


def test_a_refused_answered_outcome_is_kept_without_its_body(store: StoreAddress) -> None:
    """While a store refuses writes, the proxy keeps each outcome for a decider that might die
    (up to 10,000): what it keeps of an answered one is the outcome, not the answer's body
    (up to 1 MB each). Confirmed, it goes."""
    from airlock.decider.messages import STORE

    client = WorkerDecider(store)
    answered = _answered("run-1", b"x" * 100_000, (b"content-type", b"application/json"))
    client._unconfirmed[7] = Envelope(7, answered)
    client._on_reply(Reply(7, Failure(STORE, "the store refused the write: disk full")))
    assert client._unconfirmed[7] == Envelope(7, answered.outcome)
    client._on_reply(Reply(7, None))
    assert 7 not in client._unconfirmed


def outcome_of(store: StoreAddress, run_id: str) -> str | None:
    engine = open_engine(store.url)
    with engine.connect() as conn:
        outcome = conn.execute(select(Run.outcome).where(Run.id == run_id)).scalar_one()
    engine.dispose()
    return outcome


def test_a_message_the_link_cannot_carry_fails_alone(store: StoreAddress) -> None:
    """A call msgpack cannot encode (nested past its limit) fails, and its request is refused;
    the outcomes sent in the same write still reach the store, and nothing waits forever."""
    deep: dict[str, Any] = {}
    for _ in range(600):
        deep = {"a": deep}

    async def scenario() -> None:
        client = WorkerDecider(store, setup=setup)
        await client.start()
        decided = await client.decide(charge(500))
        client.record_outcome(OutcomeRecord(decided.run.id, time.time(), "forwarded", 200))
        call = DecideCall("run-deep", "a", ToolCall("run_sql", "db", deep))
        with pytest.raises(StoreError, match="cannot be sent to the decider"):
            await client.decide_call(call)  # sent with the outcome, in one write
        assert client._waiting == {}
        await client.stop()

    asyncio.run(scenario())
    assert outcome_of(store, "run-500") == "forwarded"


def test_stopping_after_the_worker_died_still_writes_what_was_kept(store: StoreAddress) -> None:
    """The worker died (killed: out of memory, a signal to the whole process group) and the
    proxy stops before any request would restart it: the outcomes recorded meanwhile are kept,
    and stopping starts the decider once more to write them."""

    async def scenario() -> None:
        client = WorkerDecider(store, setup=setup)
        await client.start()
        decided = await client.decide(charge(500))
        client._link.process.kill()  # type: ignore[union-attr]
        deadline = time.monotonic() + 10
        while client.running and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # until the proxy side sees the socket close
        assert not client.running
        client.record_outcome(OutcomeRecord(decided.run.id, time.time(), "forwarded", 200))
        await client.stop()

    asyncio.run(scenario())
    assert outcome_of(store, "run-500") == "forwarded"


def test_a_worker_that_died_while_flows_are_held_is_started_again_without_a_request(
    store: StoreAddress,
) -> None:
    """Flows wait for a reviewer, no request comes, and the worker dies: it is started again
    by itself, so that the reviewer's decision still reaches the held flow (pushed)."""
    from airlock.store.approvals import APPROVED, resolve_approval

    watched: list[str] = []

    async def scenario() -> list[Settled]:
        settled: list[Settled] = []
        client = WorkerDecider(
            store, setup=lambda: replace(setup(), watched=list(watched)), on_settled=settled.append
        )
        await client.start()
        held = await client.decide(charge(150_000, "run-held"))
        assert held.approval is not None
        watched.append(held.approval.id)
        client.watch([held.approval.id])
        client._link.process.kill()  # type: ignore[union-attr]
        deadline = time.monotonic() + 10
        while client.running and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # the proxy side sees the socket close
        while not client.running and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # and starts a new worker, no call made
        assert client.running
        engine = open_engine(store.url)
        await asyncio.to_thread(resolve_approval, engine, held.approval.id, APPROVED, "r", "ok")
        engine.dispose()
        while not settled and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await client.stop()
        return settled

    [settled] = asyncio.run(scenario())
    assert settled.state == APPROVED


def test_a_client_stopped_while_its_worker_is_down_starts_none_by_itself(
    store: StoreAddress,
) -> None:
    """The worker died twice quickly (its restart waits a pause) while flows are held, and the
    proxy stops (or drops this client for another store): no worker is started after that,
    which nobody would stop."""
    from airlock.decider import client as client_module

    async def scenario() -> bool:
        client = WorkerDecider(store, setup=lambda: replace(setup(), watched=["a" * 32]))
        deadline = time.monotonic() + 20
        for _ in range(2):
            await client.start()
            while not client.running and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            client._link.process.kill()  # type: ignore[union-attr]
            while client.running and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
        await client.stop()
        # Past the pause its restart would have waited: nothing started meanwhile.
        await asyncio.sleep(client_module.FIRST_RESTART_PAUSE * 5)
        started = client.running
        await client.stop()
        return started

    assert asyncio.run(scenario()) is False


def test_a_call_its_caller_gave_up_on_is_forgotten_while_the_decider_is_stuck(
    store: StoreAddress, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decider is alive but stuck (a store that hangs): callers time out on their own, and
    their calls do not pile up, one entry each, until it answers."""
    from airlock.decider import client as client_module

    monkeypatch.setattr(client_module, "UNANSWERED_SECONDS", 0.05)

    async def scenario() -> dict[int, Any]:
        client = WorkerDecider(store)
        client._link = Silent()  # type: ignore[assignment]
        for n in range(20):
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(client.release(f"approval-{n}", 1.0), 0.001)
        deadline = time.monotonic() + 5
        while client._waiting and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return client._waiting

    assert asyncio.run(scenario()) == {}


class Silent:
    """A decider that hears everything and answers nothing by itself."""

    def __init__(self) -> None:
        self.posts: list[list[Envelope]] = []

    @property
    def posted(self) -> list[Envelope]:
        return [envelope for post in self.posts for envelope in post]

    def post(self, envelopes: list[Envelope]) -> None:
        self.posts.append(envelopes)


def test_an_outcome_rides_with_the_next_call_only_while_calls_are_in_flight(
    store: StoreAddress,
) -> None:
    """Under load an outcome shares the next decision's commit; with nothing in flight it goes
    at once, to be written while the decider is idle, not in the next request's commit."""

    async def scenario() -> list[list[str]]:
        client = WorkerDecider(store)
        link = client._link = Silent()  # type: ignore[assignment]
        client.record_outcome(OutcomeRecord("run-0", 1.0, "sent", 200))  # idle: at once
        first = asyncio.ensure_future(client.decide(charge(1)))
        await asyncio.sleep(0)
        client.record_outcome(OutcomeRecord("run-x", 2.0, "sent", 200))  # run-1 in flight
        second = asyncio.ensure_future(client.decide(charge(2)))
        await asyncio.sleep(0)
        for future in (first, second):
            future.cancel()
        return [[getattr(e.message, "id", None) or e.message.run_id for e in post]
                for post in link.posts]  # fmt: skip

    assert asyncio.run(scenario()) == [["run-0"], ["run-1"], ["run-x", "run-2"]]


def test_timed_calls_fail_at_their_own_deadline_and_answered_ones_do_not(
    store: StoreAddress,
) -> None:
    """One timer watches every timed call (the proxy's request path): a call answered in time
    gets its answer, unanswered ones fail with TimeoutError at their own deadline, in any order
    of timeouts, and a late answer is dropped."""

    async def scenario() -> dict[str, Any]:
        client = WorkerDecider(store)
        link = client._link = Silent()  # type: ignore[assignment]
        loop = asyncio.get_running_loop()
        started = loop.time()
        slow = asyncio.ensure_future(client.decide(charge(1), 0.4))
        quick = asyncio.ensure_future(client.decide(charge(2), 0.1))
        answered = asyncio.ensure_future(client.decide(charge(3), 0.1))
        await asyncio.sleep(0)
        by_run = {e.message.id: e.sequence for e in link.posted}
        client._on_answers([Reply(by_run["run-3"], "decided")])
        ended: dict[str, Any] = {}
        for name, call in (("quick", quick), ("slow", slow), ("answered", answered)):
            try:
                ended[name] = await call
            except TimeoutError as e:
                ended[name] = (str(e), round(loop.time() - started, 1))
        client._on_answers([Reply(by_run["run-1"], "too late")])  # dropped, no error
        ended["left"] = len(client._deadlines)
        return ended

    assert asyncio.run(scenario()) == {
        "answered": "decided",
        "quick": ("no answer within 0.1 s", 0.1),
        "slow": ("no answer within 0.4 s", 0.4),
        "left": 0,
    }


def test_a_held_request_keeps_each_rules_reviewer_roles(core: DeciderCore, tmp_path: Path) -> None:
    """Two rules hold a live charge, one for payments leads, one for security: the approval the
    decider opens asks for both, not for either (before, alice alone could approve it)."""
    from airlock.pipeline.agents import load_reviewers
    from airlock.store.approvals import APPROVED, ApprovalError, resolve_approval

    setup, policies = setup_with(tmp_path, {
        "two.yaml": "rules:\n"
        "  - {id: finance, when: {action: create_charge}, decision: REQUIRE_APPROVAL,\n"
        "     reviewers: [payments-lead]}\n"
        "  - {id: security, when: {action: create_charge}, decision: REQUIRE_APPROVAL,\n"
        "     reviewers: [security]}\n",
        "reviewers.yaml": "reviewers:\n  - {id: alice, roles: [payments-lead]}\n"
        "  - {id: carol, roles: [payments-lead, security]}\n",
    })  # fmt: skip
    held = replies(core.handle([Envelope(0, setup), Envelope(1, charge(500, "run-h"))]))[1]
    assert held.run.decision == "REQUIRE_APPROVAL"
    reviewers = load_reviewers(policies)
    with pytest.raises(ApprovalError, match="security"):
        resolve_approval(core.engine, held.approval.id, APPROVED, "alice", None, reviewers)
    settled = resolve_approval(core.engine, held.approval.id, APPROVED, "carol", None, reviewers)
    assert settled.state == "APPROVED"


def test_a_worker_that_answers_nothing_while_calls_wait_is_stopped_and_started_again(
    store: StoreAddress, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker stuck in a write (a store connection gone silent, a lock never released) left
    the gate refusing every request until someone restarted it (found by review): once it has
    answered nothing for HUNG_SECONDS while calls waited, it is killed and another started."""
    import airlock.decider.client as client_module
    from airlock.store.schema import write_transaction

    monkeypatch.setattr(client_module, "HUNG_SECONDS", 1.5)
    engine = open_engine(store.url)

    async def scenario() -> None:
        decider = WorkerDecider(store)
        await decider.start()
        try:
            stuck = decider._link.process  # type: ignore[union-attr]
            assert (await decider.decide(charge(1), 10)).run.decision == "BLOCK"  # answered
            with write_transaction(engine):  # another process's write lock, never released
                for attempt in range(2, 12):
                    with pytest.raises((TimeoutError, StoreError)):
                        await decider.decide(charge(attempt), 1.0)
                    if decider._link is None:
                        break
                assert decider._link is None, "the stuck worker was kept"
                assert stuck.wait(10) is not None
            await decider.start()
            assert decider._link.process.pid != stuck.pid  # type: ignore[union-attr]
            assert (await decider.decide(charge(99), 10)).run.decision == "BLOCK"
        finally:
            await decider.stop()

    asyncio.run(scenario())
    engine.dispose()


def test_a_decision_taken_after_the_proxy_gave_up_is_recorded_unjudged(core: DeciderCore) -> None:
    """Behind a backlog, requests the proxy has refused already were judged in full, making
    every request behind them late too (found by review): one taken past its refuse_after is
    recorded as refused, without documenting, mapping or deciding it."""
    core.handle([Envelope(0, setup())])
    late = replace(charge(500, "run-late"), refuse_after=time.time() - 1)
    in_time = replace(charge(500, "run-in-time"), refuse_after=time.time() + 60)
    answers = replies(core.handle([Envelope(1, late), Envelope(2, in_time)]))
    assert answers[1].run.decision == "BLOCK" and answers[1].run.action == "http.write"  # unmapped
    assert "waited past the proxy's limit behind other decisions" in answers[1].run.reason
    assert stored(core, "run-late").decision == "BLOCK"
    assert answers[2].run.decision == "ALLOW" and answers[2].run.action == "create_charge"


def test_the_client_tells_the_decider_when_it_stops_waiting(store: StoreAddress) -> None:
    """A call that times out in the proxy is recorded by the decider as refused, unjudged."""

    async def scenario() -> None:
        decider = InProcessDecider(store)
        await decider.start()
        try:
            with pytest.raises(TimeoutError):
                await decider.decide(charge(500, "run-gone"), -1.0)  # given up at once
        finally:
            await decider.stop()

    asyncio.run(scenario())
    engine = open_engine(store.url)
    with engine.connect() as conn:
        decision, reason = conn.execute(
            select(Run.decision, Run.reason).where(Run.id == "run-gone")
        ).one()
    engine.dispose()
    assert decision == "BLOCK" and "waited past the proxy's limit" in reason


def test_idle_time_and_a_slow_start_are_not_taken_for_a_stuck_worker(
    store: StoreAddress, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Silence counts from a call sent to a worker that had answered before: a worker idle for
    longer than HUNG_SECONDS, then slowed by a short lock, and one whose start waits on the
    store, are kept (a review found both killed, one at every start)."""
    import airlock.decider.client as client_module
    from airlock.store.schema import write_transaction

    monkeypatch.setattr(client_module, "HUNG_SECONDS", 1.5)
    engine = open_engine(store.url)

    async def scenario() -> None:
        decider = WorkerDecider(store)
        try:
            with write_transaction(engine):  # its start waits on the store: nothing answered
                await decider.start()
                worker = decider._link.process  # type: ignore[union-attr]
                for attempt in range(3):
                    with pytest.raises(TimeoutError):
                        await decider.decide(charge(attempt), 1.0)
            assert (await decider.decide(charge(10), 30)).run.decision == "BLOCK"
            await asyncio.sleep(2.0)  # idle past HUNG_SECONDS: that is not silence
            with write_transaction(engine), pytest.raises(TimeoutError):
                await decider.decide(charge(11), 1.0)
            assert (await decider.decide(charge(12), 30)).run.decision == "BLOCK"
            assert decider._link.process is worker  # type: ignore[union-attr]
        finally:
            await decider.stop()

    asyncio.run(scenario())
    engine.dispose()


def test_a_guard_call_taken_after_the_guard_api_gave_up_is_recorded_unjudged(
    core: DeciderCore,
) -> None:
    """The Guard API answered 503 ("must not run"), and the call was later judged anyway and
    recorded REQUIRE_APPROVAL with an approval nobody had been told of (found by review)."""
    core.handle([Envelope(0, setup())])
    call = ToolCall("delete_record", "customer/cus_1", {})
    late = DecideCall("run-late-call", "a", call, refuse_after=time.time() - 1)
    decided = replies(core.handle([Envelope(1, late)]))[1]
    assert decided.run.decision == "BLOCK" and decided.approval is None
    assert "waited past the proxy's limit" in decided.run.reason
    with core.engine.connect() as conn:
        assert conn.execute(select(Approval.id)).all() == []
