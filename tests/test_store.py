"""The store on SQLite and PostgreSQL: records, approvals' state machine, the audit chain."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.engine import Engine

from airlock.decider.client import InProcessDecider, StoreError, WorkerDecider
from airlock.decider.messages import Decide, RawRequest, StoreAddress
from airlock.pipeline.run_record import RunRecord, let_through
from airlock.store.approvals import (
    APPROVED,
    DENIED,
    EXPIRED,
    ApprovalError,
    approval_states,
    pending_approvals,
    resolve_approval,
)
from airlock.store.audit import verify_audit
from airlock.store.instances import (
    LEASE_SECONDS,
    Here,
    end_lease,
    gone_uncleared,
    liveness,
    renew_lease,
)
from airlock.store.keys import (
    KEY_FILE,
    REKEYED,
    RequestKeyError,
    bind_to_store,
    fingerprint,
    load_or_create_request_key,
    replace_store_key,
)
from airlock.store.prepared import raw_transaction
from airlock.store.records import (
    DecisionRecord,
    HoldRequest,
    OutcomeRecord,
    ReleaseRequest,
    SettleRequest,
)
from airlock.store.schema import (
    Approval,
    ApprovalHolder,
    ApprovalVote,
    AuditEvent,
    AuditHead,
    InstanceLease,
    Run,
    StoreKey,
    create_schema,
    open_engine,
)
from airlock.store.writer import GroupWriter, Pending


def run_row(decision: str = "ALLOW", **overrides: Any) -> RunRecord:
    row = {
        "id": uuid.uuid4().hex,
        "at": time.time(),
        "instance": "test-1",
        "agent": "agent-a",
        "method": "POST",
        "host": "api.stripe.com",
        "path": "/v1/charges",
        "provider": "stripe",
        "action": "create_charge",
        "category": "payment",
        "sensitivity": "high",
        "target": "customer/cus_1",
        "mapping_id": "stripe.create_charge",
        "operation": "stripe.PostCharges",
        "params": {"amount": 150000, "currency": "usd"},
        "context": {"environment": "test"},
        "shadow_decision": None,
        "shadow_rules": None,
        "risk": 40,
        "risk_factors": [{"factor": "sensitivity", "points": 30, "detail": "high"}],
        "undo": None,
        "request": {"method": "POST", "body": {"amount": "150000"}},
        "decision": decision,
        "reason": "because",
        "rules": ["r1"] if decision != "ALLOW" else [],
        "error": None,
        "decision_ms": 0.2,
        "outcome": None,
        "status": None,
        "upstream_ms": None,
    }
    row.update(overrides)
    return RunRecord(**row)


def held(expires_in: float = 60.0) -> tuple[dict[str, Any], HoldRequest]:
    return run_row("REQUIRE_APPROVAL"), HoldRequest(
        uuid.uuid4().hex, time.time() + expires_in, "h" * 64
    )


def address(engine: Engine) -> StoreAddress:
    return StoreAddress(engine.url.render_as_string(hide_password=False), "full")


async def submit(decider: Any, job: Any) -> Any:
    """A store job through the decider, as the proxy sends it; what the write returned."""
    if isinstance(job, DecisionRecord):
        return await decider.record(job)
    if isinstance(job, SettleRequest):
        return await decider.settle(job.approval_id, job.state, job.reason, job.at, job.leaving)
    if isinstance(job, ReleaseRequest):
        return await decider.release(job.approval_id, job.at, job.run_id)
    decider.record_outcome(job)  # nobody waits for an outcome: written by stop() at the latest
    return None


def write(engine: Engine, *jobs: Any) -> list[Any]:
    """Write jobs through a real decider (its group-commit writer, in a thread of this process:
    the same core as the worker process) and wait for their commits."""

    async def scenario() -> list[Any]:
        decider = InProcessDecider(address(engine))
        await decider.start()
        try:
            return list(await asyncio.gather(*(submit(decider, job) for job in jobs)))
        finally:
            await decider.stop()

    return asyncio.run(scenario())


def test_a_refused_job_fails_alone_and_the_group_behind_it_commits(engine: Engine) -> None:
    """One group: a decision, an outcome, and a decision the store refuses (its id taken).
    The refused one fails alone (on PostgreSQL its error surfaces only when the pipeline syncs,
    after the rest was sent); the others commit, the chain verifies, the writer goes on."""
    first, second = run_row(), run_row()
    writer = GroupWriter(engine)
    try:
        assert writer.write_group([Pending(1, DecisionRecord(first))]) == [(1, True, None)]
        outcome = OutcomeRecord(first.id, time.time(), "forwarded", 200, 1.0)
        group = [Pending(2, DecisionRecord(second)), Pending(0, outcome),
                 Pending(3, DecisionRecord(first))]  # fmt: skip
        written = writer.write_group(group)
        assert [(sequence, ok) for sequence, ok, _ in written] == [(2, True), (0, True), (3, False)]
        assert "the store refused the write" in written[2][2]
        assert writer.write_group([Pending(4, DecisionRecord(run_row()))]) == [(4, True, None)]
    finally:
        writer.close()
    with engine.connect() as conn:
        assert conn.execute(select(Run.outcome).where(Run.id == first.id)).scalar() == "forwarded"
        assert len(conn.execute(select(Run.id)).all()) == 3
    report = verify_audit(engine)
    assert report.ok, report.problem
    assert report.events == 4


@pytest.mark.parametrize("fault", ["deleted", "replaced", "relinked"])
def test_a_database_file_deleted_or_replaced_under_the_writer_takes_no_more_writes(
    tmp_path: Path, fault: str
) -> None:
    """SQLite writes on into a file unlinked under it: decisions "recorded" where no reader or
    `audit verify` could see them, and their requests forwarded (found by review). Each write
    after the file is gone or another stands in its place (or its link points elsewhere) is
    refused, and says why."""
    (tmp_path / "first.db").touch()
    (tmp_path / "a.db").symlink_to(tmp_path / "first.db")
    url = f"sqlite:///{tmp_path / 'a.db'}"
    engine = open_engine(url)
    create_schema(engine)
    writer = GroupWriter(engine)
    try:
        assert writer.write_group([Pending(1, DecisionRecord(run_row()))]) == [(1, True, None)]
        if fault == "relinked":
            create_schema(open_engine(f"sqlite:///{tmp_path / 'restored.db'}"))
            (tmp_path / "a.db").unlink()
            (tmp_path / "a.db").symlink_to(tmp_path / "restored.db")
        else:
            for suffix in ("", "-wal", "-shm"):
                (tmp_path / f"first.db{suffix}").unlink(missing_ok=True)
        if fault == "replaced":
            create_schema(open_engine(f"sqlite:///{tmp_path / 'first.db'}"))  # an empty store
        [(sequence, ok, why)] = writer.write_group([Pending(2, DecisionRecord(run_row()))])
        assert (sequence, ok) == (2, False)
        assert f"the database file {tmp_path / 'a.db'} was " in why
        assert ("deleted" if fault == "deleted" else "replaced by another file") in why
        assert writer.write_group([Pending(3, DecisionRecord(run_row()))])[0][1] is False
    finally:
        writer.close()


def test_postgresql_connections_give_up_on_a_silent_peer(pg_database: str) -> None:
    """Without libpq's keepalive and TCP user timeout a commit to a server gone silent (a
    partition, a failover behind one address) waited ~15 minutes, every request refused
    meanwhile (found by review). They are set unless the URL sets its own."""
    for url, user_timeout in (
        (pg_database, "10000"),
        (f"{pg_database}?tcp_user_timeout=2500", "2500"),
    ):
        engine = open_engine(url)
        connection = engine.raw_connection()
        try:
            dsn = dict(
                part.split("=", 1) for part in connection.driver_connection.info.dsn.split()
                if "=" in part and not part.startswith("options")
            )  # fmt: skip
        finally:
            connection.close()
            engine.dispose()
        assert dsn["tcp_user_timeout"] == user_timeout
        assert (dsn["keepalives"], dsn["keepalives_idle"], dsn["connect_timeout"]) == (
            "1",
            "5",
            "5",
        )


def test_postgresql_group_writes_are_pipelined(engine: Engine) -> None:
    """psycopg's pipeline mode: statements whose result is unread go without a round trip each."""
    pooled = engine.raw_connection()
    try:
        with raw_transaction(engine, pooled) as tx:
            assert (tx.pipeline is not None) == (engine.dialect.name == "postgresql")
    finally:
        pooled.close()


def test_decision_and_outcome_are_one_record(engine: Engine) -> None:
    row = run_row()
    write(engine, DecisionRecord(row))
    write(engine, OutcomeRecord(row.id, time.time(), "forwarded", 201, 12.5))

    with engine.connect() as conn:
        stored = conn.execute(select(Run)).one()
    assert (stored.decision, stored.outcome, stored.status, stored.upstream_ms) == (
        "ALLOW",
        "forwarded",
        201,
        12.5,
    )
    assert stored.params == {"amount": 150000, "currency": "usd"}
    report = verify_audit(engine)
    assert report.ok, report.problem
    assert (report.events, report.runs) == (2, 1)


def test_group_commit_writes_many_flows_in_few_transactions(engine: Engine) -> None:
    groups: list[int] = []

    async def scenario() -> None:
        decider = WorkerDecider(address(engine), on_commit=lambda _s, size: groups.append(size))
        await decider.start()
        await asyncio.gather(*(decider.record(DecisionRecord(run_row())) for _ in range(300)))
        await decider.stop()

    asyncio.run(scenario())

    assert sum(groups) == 300
    assert len(groups) < 300, "every record took its own commit"
    with engine.connect() as conn:
        assert len(conn.execute(select(Run.id)).all()) == 300
    assert verify_audit(engine).ok


def test_a_decider_without_configuration_blocks_on_record(engine: Engine) -> None:
    """Fail closed: a decider that was given nothing to decide with refuses, and says why in the
    record; the job beside it is written as usual."""
    form = [(b"content-type", b"application/x-www-form-urlencoded")]
    raw = RawRequest(b"POST", b"https", "api.stripe.com", 443, b"/v1/charges", b"", form, b"a=5")
    other = run_row()

    async def scenario() -> Any:
        decider = WorkerDecider(address(engine))
        await decider.start()
        try:
            return await asyncio.gather(
                decider.decide(Decide("run-1", "agent-a", None, raw)),
                decider.record(DecisionRecord(other)),
            )
        finally:
            await decider.stop()

    decided, written = asyncio.run(scenario())
    assert decided.run.decision == "BLOCK"
    assert "no configuration" in decided.run.reason
    assert written is None
    with engine.connect() as conn:
        assert set(conn.execute(select(Run.id)).scalars()) == {"run-1", other.id}


def test_a_dead_decider_process_fails_its_waiting_writes_and_the_next_write_restarts_it(
    engine: Engine,
) -> None:
    """Fail closed: a write that was never committed must not look committed."""
    first, second = run_row(), run_row()

    async def scenario() -> tuple[Any, Any]:
        decider = WorkerDecider(address(engine))
        await decider.start()
        await decider.record(DecisionRecord(run_row()))  # the process is up and writing
        process = decider._link.process  # type: ignore[union-attr]
        process.kill()
        await asyncio.to_thread(process.wait)
        lost = await asyncio.gather(decider.record(DecisionRecord(first)), return_exceptions=True)
        await decider.start()
        try:
            return lost[0], await decider.record(DecisionRecord(second))
        finally:
            await decider.stop()

    lost, written = asyncio.run(scenario())
    assert isinstance(lost, StoreError)
    assert written is None
    with engine.connect() as conn:
        ids = set(conn.execute(select(Run.id)).scalars())
    assert second.id in ids and first.id not in ids
    assert verify_audit(engine).ok


def test_a_writer_that_keeps_dying_at_start_is_restarted_with_growing_pauses(
    tmp_path: Path,
) -> None:
    """An unusable store (here: a writer program that cannot start) must not be restarted in a
    tight loop; meanwhile every write fails at once (its request is refused)."""
    engine = open_engine(f"sqlite:///{tmp_path / 'airlock.db'}")
    starts = 0

    class Unstartable(WorkerDecider):
        program = "airlock.store.no_such_module"

        async def _open(self) -> Any:
            nonlocal starts
            starts += 1
            return await super()._open()

    decider = Unstartable(address(engine))

    async def scenario() -> tuple[int, int]:
        loop, failed = asyncio.get_running_loop(), 0
        deadline = loop.time() + 2.0
        while loop.time() < deadline:
            await decider.start()
            try:
                await asyncio.wait_for(decider.record(DecisionRecord(run_row())), 1)
            except StoreError:
                failed += 1
            await asyncio.sleep(0.01)
        return starts, failed

    starts, failed = asyncio.run(scenario())
    engine.dispose()
    # Pauses of 0, 0, 0.1, 0.2, 0.4, 0.8 s: about 6 starts in 2 s (no pause: over 20 here).
    assert 3 <= starts <= 8, starts
    assert failed > starts  # writes during a pause fail at once, without a process


def test_stopping_writes_the_outcomes_still_waiting_for_a_decision(engine: Engine) -> None:
    row = run_row()

    async def scenario() -> None:
        decider = WorkerDecider(address(engine))
        await decider.start()
        await decider.record(DecisionRecord(row))
        decider.record_outcome(OutcomeRecord(row.id, time.time(), "forwarded", 200, 3.0))
        await decider.stop()  # before the idle delay would have sent it

    asyncio.run(scenario())
    with engine.connect() as conn:
        assert conn.execute(select(Run.outcome)).scalar_one() == "forwarded"


def test_the_writer_needs_a_database_other_processes_can_open() -> None:
    with pytest.raises(ValueError, match="memory"):
        WorkerDecider(StoreAddress("sqlite://", "full"))


def test_one_bad_record_does_not_fail_the_rest_of_its_group(engine: Engine, db_url: str) -> None:
    good, duplicate = run_row(), run_row()
    write(engine, DecisionRecord(duplicate))

    async def scenario() -> list[Any]:
        decider = WorkerDecider(address(engine))
        await decider.start()
        results = await asyncio.gather(
            decider.record(DecisionRecord(good)),
            decider.record(DecisionRecord(duplicate)),
            return_exceptions=True,
        )
        await decider.stop()
        return list(results)

    ok, failed = asyncio.run(scenario())
    assert ok is None
    # Refused by the database: its own request fails; the record beside it is committed.
    assert isinstance(failed, Exception)
    with engine.connect() as conn:
        assert len(conn.execute(select(Run.id)).all()) == 2
    assert verify_audit(engine).ok


@pytest.mark.parametrize(
    "reviewer",
    [
        "agent-a",
        "AGENT-A",
        " agent-a ",
        "agent\u2010a",
        "agent-\u200ba",
        "\uff41gent-a",
        "\u0430gent-a",
    ],
    ids=["exact", "case", "padding", "unicode-hyphen", "zero-width", "fullwidth", "cyrillic"],
)
def test_nobody_approves_their_own_request_under_a_look_alike_name(
    engine: Engine, reviewer: str
) -> None:
    row, hold = held()  # sent by agent-a
    write(engine, DecisionRecord(row, hold))

    with pytest.raises(ApprovalError, match="the agent that sent this request: nobody approves"):
        resolve_approval(engine, hold.approval_id, APPROVED, reviewer, None)
    [still] = pending_approvals(engine)
    assert still.id == hold.approval_id
    settled = resolve_approval(engine, hold.approval_id, APPROVED, "agent-b", None)
    assert settled.state == APPROVED  # a different name is not refused


def test_hold_approve_and_terminal_states_are_final(engine: Engine) -> None:
    row, hold = held()
    write(engine, DecisionRecord(row, hold))

    [waiting] = pending_approvals(engine)
    assert (waiting.id, waiting.action, waiting.params["amount"]) == (
        hold.approval_id,
        "create_charge",
        150000,
    )

    settled = resolve_approval(engine, hold.approval_id[:6], APPROVED, "alice", "ok")
    assert (settled.state, settled.won, settled.reviewer) == (APPROVED, True, "alice")
    assert approval_states(engine, [hold.approval_id])[hold.approval_id].state == APPROVED
    assert pending_approvals(engine) == []

    with pytest.raises(ApprovalError, match="already APPROVED \\(by alice\\)"):
        resolve_approval(engine, hold.approval_id, DENIED, "bob", "no")
    [late_expiry] = write(engine, SettleRequest(hold.approval_id, EXPIRED, "timeout", time.time()))
    assert (late_expiry.won, late_expiry.state) == (False, APPROVED)
    assert verify_audit(engine).ok


def test_a_withdrawal_undoes_only_its_own_release_and_the_chain_names_it(engine: Engine) -> None:
    """A release the proxy gave up on is withdrawn: the approval can be released again, once.
    A withdrawal of a release another attempt made since (another `at`) changes nothing."""
    from airlock.store.records import WithdrawRelease

    row, hold = held()
    write(engine, DecisionRecord(row, hold))
    resolve_approval(engine, hold.approval_id, APPROVED, "alice", "ok")
    given_up, retried = time.time(), time.time() + 1
    [released] = write(engine, ReleaseRequest(hold.approval_id, given_up))
    write(engine, WithdrawRelease(hold.approval_id, given_up))
    [again, twice] = write(
        engine, ReleaseRequest(hold.approval_id, retried), ReleaseRequest(hold.approval_id, retried)
    )
    write(engine, WithdrawRelease(hold.approval_id, given_up))  # sent again: not its release
    assert (released.won, sorted([again.won, twice.won])) == (True, [False, True])
    with engine.connect() as conn:
        assert conn.execute(select(Approval.released_at)).scalar_one() == retried
    assert verify_audit(engine).ok

    from airlock.store.audit import Event

    forged = {"approval_id": hold.approval_id, "state": APPROVED, "reviewer": "alice",
              "reason": "ok", "resolved_at": None, "released_at": None}  # fmt: skip
    with engine.begin() as conn:
        conn.execute(update(Approval).values(released_at=None))
    problem = _append_well_chained(engine, Event("approval", row.id, time.time(), forged))
    assert f"moves approval {hold.approval_id} from APPROVED to APPROVED" in problem


def test_a_release_written_again_after_a_lost_acknowledgement_is_still_its_own(
    engine: Engine,
) -> None:
    """A group whose commit succeeded but whose acknowledgement was lost is written again, job
    by job (GroupWriter): the same release request (same attempt, same time) finds its own
    release and is told it won, so its proxy forwards what the record says was released; the
    chain has one release. Another attempt still loses."""
    row, hold = held()
    retry = run_row("REQUIRE_APPROVAL")
    write(engine, DecisionRecord(row, hold), DecisionRecord(retry, joins=hold.approval_id))
    resolve_approval(engine, hold.approval_id, APPROVED, "alice", "ok")
    at = time.time()
    [first] = write(engine, ReleaseRequest(hold.approval_id, at, retry.id))
    [again] = write(engine, ReleaseRequest(hold.approval_id, at, retry.id))
    [other] = write(engine, ReleaseRequest(hold.approval_id, at, row.id))
    assert (first.won, again.won, other.won) == (True, True, False)
    assert (again.at, again.run_id) == (at, row.id)  # as the first answer said
    with engine.connect() as conn:
        kinds = conn.execute(select(AuditEvent.kind).order_by(AuditEvent.seq)).scalars().all()
    assert kinds.count("approval") == 3  # opened, approved, released: once
    assert verify_audit(engine).ok


def test_verify_names_a_withdrawal_of_a_release_that_was_forwarded(engine: Engine) -> None:
    """Airlock withdraws a release only when nothing went out: a chain where the withdrawn run
    was forwarded, and the approval then released to another, shows a request sent twice."""
    from airlock.store.records import WithdrawRelease

    row, hold = held()
    write(engine, DecisionRecord(row, hold))
    resolve_approval(engine, hold.approval_id, APPROVED, "alice", "ok")
    first = time.time()
    write(engine, ReleaseRequest(hold.approval_id, first, row.id))
    write(engine, OutcomeRecord(row.id, time.time(), "forwarded", 200, 12.0))
    write(engine, WithdrawRelease(hold.approval_id, first))
    retry = run_row("REQUIRE_APPROVAL")
    write(engine, DecisionRecord(retry, None, hold.approval_id))
    write(engine, ReleaseRequest(hold.approval_id, time.time(), retry.id))

    problem = verify_audit(engine).problem
    assert problem and f"by run {row.id}, whose outcome says it was forwarded" in problem


@pytest.mark.parametrize("edited_outcome", ["upstream_error", "forwarded"])
def test_an_edited_release_is_withdrawn_only_when_its_edited_request_did_not_go_out(
    engine: Engine, edited_outcome: str
) -> None:
    """A reviewer's edit sends the approval out as another run (the held run's outcome says
    `edited`): when that run never reached the upstream, its release is withdrawn and the chain
    verifies; when it was forwarded, a withdrawal is named as for any release."""
    from airlock.store.records import WithdrawRelease

    row, hold = held()
    write(engine, DecisionRecord(row, hold))
    edit = {"params": {"amount": 100}, "locations": {"amount": [["body", "amount"]]}}
    resolve_approval(engine, hold.approval_id, APPROVED, "alice", "ok", edit=edit)
    at = time.time()
    [released] = write(engine, ReleaseRequest(hold.approval_id, at, row.id))
    assert released.won and released.edit
    edited = run_row("ALLOW")
    write(engine, DecisionRecord(edited))
    detail = {"released_as": edited.id}
    write(engine, OutcomeRecord(row.id, time.time(), "edited", None, None, detail))
    write(engine, OutcomeRecord(edited.id, time.time(), edited_outcome, None))
    write(engine, WithdrawRelease(hold.approval_id, at))

    report = verify_audit(engine)
    if edited_outcome == "forwarded":
        assert report.problem and "whose outcome says it was forwarded" in report.problem
    else:
        assert report.ok, report.problem


def test_a_retry_refused_for_another_request_under_its_key_holds_nothing(engine: Engine) -> None:
    """One batch holds a call (meant to open approval A1) and its retry (told to join A1); at
    commit another instance's A0 is open for the key with another request's hash: both are
    refused 409, and neither is recorded as holding A0, which ends with its own holder."""
    there, here = "elsewhere-9.a", "here-9.b"
    now = time.time()
    a0 = HoldRequest("a0" * 16, now + 600, "0" * 64, retry_key="K")
    write(engine, DecisionRecord(replace(run_row("REQUIRE_APPROVAL"), instance=there), a0))
    a1 = HoldRequest("a1" * 16, now + 600, "1" * 64, retry_key="K")
    first = DecisionRecord(replace(run_row("REQUIRE_APPROVAL"), instance=here), a1)
    retry = DecisionRecord(
        replace(run_row("REQUIRE_APPROVAL"), instance=here), None, a1.approval_id, True
    )
    GroupWriter(engine).write_group([Pending(1, first), Pending(2, retry)])
    with engine.connect() as conn:
        query = select(ApprovalHolder.instance).where(ApprovalHolder.approval_id == a0.approval_id)
        assert set(conn.execute(query).scalars()) == {there}


def test_a_withdrawal_the_decider_did_not_confirm_is_sent_to_the_next_one(engine: Engine) -> None:
    """Kept like an outcome: a decider that dies before committing it does not lose it."""
    row, hold = held()
    write(engine, DecisionRecord(row, hold))
    resolve_approval(engine, hold.approval_id, APPROVED, "alice", "ok")
    at = time.time()
    write(engine, ReleaseRequest(hold.approval_id, at))

    async def scenario() -> None:
        decider = WorkerDecider(address(engine))
        await decider.start()
        process = decider._link.process  # type: ignore[union-attr]
        process.kill()
        await asyncio.to_thread(process.wait)
        decider.withdraw_release(hold.approval_id, at)  # the dead decider never gets it
        await asyncio.sleep(0.1)
        await decider.start()
        await decider.stop()

    asyncio.run(scenario())
    with engine.connect() as conn:
        assert conn.execute(select(Approval.released_at)).scalar_one() is None
    assert verify_audit(engine).ok


def test_expired_approval_cannot_be_approved(engine: Engine) -> None:
    row, hold = held(expires_in=-1)
    write(engine, DecisionRecord(row, hold))

    assert pending_approvals(engine) == []
    with pytest.raises(ApprovalError, match=r"expired .* cannot be released"):
        resolve_approval(engine, hold.approval_id, APPROVED, "alice", None)


def test_ids_must_be_unambiguous(engine: Engine) -> None:
    for _ in range(2):
        write(engine, DecisionRecord(*held()))
    with pytest.raises(ApprovalError, match="no approval"):
        resolve_approval(engine, "ffffffffff", APPROVED, "a", None)
    with pytest.raises(ApprovalError, match="at least 4"):
        resolve_approval(engine, "ab", APPROVED, "a", None)


def test_racing_reviewers_produce_exactly_one_outcome(engine: Engine) -> None:
    row, hold = held()
    write(engine, DecisionRecord(row, hold))
    outcomes: list[str] = []
    barrier = threading.Barrier(4)

    def decide(state: str, reviewer: str) -> None:
        barrier.wait()
        try:
            resolve_approval(engine, hold.approval_id, state, reviewer, "race")
            outcomes.append(f"won:{reviewer}")
        except ApprovalError:
            outcomes.append("lost")

    threads = [
        threading.Thread(target=decide, args=(APPROVED if i % 2 else DENIED, f"r{i}"))
        for i in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert sorted(o.startswith("won") for o in outcomes) == [False, False, False, True]
    assert verify_audit(engine).ok


def test_concurrent_writers_keep_one_unbroken_chain(engine: Engine) -> None:
    """Proxies and reviewers append from several connections at once."""
    holds = [held() for _ in range(8)]
    write(engine, *(DecisionRecord(r, h) for r, h in holds))

    def writer_process() -> None:
        write(engine, *(DecisionRecord(run_row()) for _ in range(40)))

    def reviewer(i: int) -> None:
        resolve_approval(engine, holds[i][1].approval_id, APPROVED, f"r{i}", None)

    threads = [threading.Thread(target=writer_process) for _ in range(3)]
    threads += [threading.Thread(target=reviewer, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    report = verify_audit(engine)
    assert report.ok, report.problem
    assert report.runs == 8 + 120
    assert report.events == 8 * 2 + 120 + 8 * 2  # each approval: a vote, then the decision


# --- tampering -------------------------------------------------------------------------------


@pytest.fixture
def audited(engine: Engine) -> Engine:
    """Four decisions (one blocked), a held one approved (a vote, then APPROVED), an outcome:
    10 events."""
    rows = [run_row() for _ in range(3)] + [run_row("BLOCK", outcome="blocked", status=403)]
    write(engine, *(DecisionRecord(r) for r in rows))
    row, hold = held()
    write(engine, DecisionRecord(row, hold))
    resolve_approval(engine, hold.approval_id, APPROVED, "alice", None)
    write(engine, OutcomeRecord(rows[0].id, time.time(), "forwarded", 200, 3.0))
    report = verify_audit(engine)
    assert report.ok and report.events == 10, report
    return engine


def _tamper(engine: Engine, statement: Any) -> str:
    with engine.begin() as conn:
        conn.execute(statement)
    report = verify_audit(engine)
    assert not report.ok
    return report.problem or ""


def test_edited_event_is_named(audited: Engine) -> None:
    problem = _tamper(
        audited, update(AuditEvent).where(AuditEvent.seq == 3).values(payload='{"decision":"x"}')
    )
    assert problem.startswith("event #3 (decision) was edited")


def test_deleted_event_is_named(audited: Engine) -> None:
    problem = _tamper(audited, delete(AuditEvent).where(AuditEvent.seq == 4))
    assert problem.startswith("event #4 is missing")


def test_deleted_last_event_is_caught_by_the_head(audited: Engine) -> None:
    problem = _tamper(audited, delete(AuditEvent).where(AuditEvent.seq == 10))
    assert "the chain ends at event #9 but its head says #10" in problem


def test_reordered_events_are_caught(audited: Engine) -> None:
    with audited.begin() as conn:
        two, three = (
            conn.execute(select(AuditEvent).where(AuditEvent.seq == n)).one() for n in (2, 3)
        )
        conn.execute(delete(AuditEvent).where(AuditEvent.seq.in_([2, 3])))
        for seq, event in ((2, three), (3, two)):
            values = {c: getattr(event, c) for c in ("at", "kind", "run_id", "payload")}
            values |= {"prev_hash": event.prev_hash, "hash": event.hash}
            conn.execute(AuditEvent.__table__.insert().values(seq=seq, **values))
    report = verify_audit(audited)
    assert report.problem == (
        "event #2 does not follow event #1: the chain was reordered or an earlier event "
        "was replaced"
    )


def test_edited_run_is_named(audited: Engine) -> None:
    problem = _tamper(audited, update(Run).where(Run.decision == "BLOCK").values(decision="ALLOW"))
    assert "was edited: decision is 'ALLOW' but the audit chain recorded 'BLOCK'" in problem


def test_edited_outcome_is_named(audited: Engine) -> None:
    problem = _tamper(audited, update(Run).where(Run.outcome == "forwarded").values(status=500))
    assert "was edited: status is 500 but the audit chain recorded 200" in problem


def test_deleted_run_is_named(audited: Engine) -> None:
    with audited.begin() as conn:
        victim = (
            conn.execute(select(Run.id).where(Run.decision == "ALLOW").order_by(Run.at))
            .scalars()
            .all()[-1]
        )
    problem = _tamper(audited, delete(Run).where(Run.id == victim))
    assert problem == f"run {victim} is recorded in the chain but its row was deleted"


def test_edited_approval_is_named(audited: Engine) -> None:
    problem = _tamper(audited, update(Approval).values(reviewer="mallory"))
    assert "reviewer is 'mallory' but the audit chain recorded 'alice'" in problem


def test_rewritten_head_is_caught(audited: Engine) -> None:
    problem = _tamper(audited, update(AuditHead).values(seq=4))
    assert "its head says #4" in problem


def test_edited_stored_request_is_named(audited: Engine) -> None:
    with audited.begin() as conn:
        victim = conn.execute(select(Run.id).order_by(Run.at)).scalars().first()
    problem = _tamper(
        audited, update(Run).where(Run.id == victim).values(request={"method": "GET"})
    )
    assert problem == f"run {victim} was edited: its stored request is not the one recorded"


def test_edited_instance_is_named(audited: Engine) -> None:
    problem = _tamper(audited, update(Run).values(instance="elsewhere"))
    assert "instance is 'elsewhere' but the audit chain recorded 'test-1'" in problem


def test_deleted_approval_is_named(audited: Engine) -> None:
    with audited.begin() as conn:
        victim = conn.execute(select(Approval.id)).scalar_one()
    with audited.begin() as conn:  # what refers to it goes first, as a tamperer would do
        conn.execute(delete(ApprovalVote))
        conn.execute(delete(ApprovalHolder))
    problem = _tamper(audited, delete(Approval))
    assert problem == f"approval {victim} is recorded in the chain but its row was deleted"


def test_deleted_or_edited_votes_are_named(audited: Engine) -> None:
    problem = _tamper(audited, update(ApprovalVote).values(reason="rubber stamp"))
    assert "the vote by alice" in problem and "reason is 'rubber stamp'" in problem
    with audited.begin() as conn:
        conn.execute(update(ApprovalVote).values(reason=None))
    problem = _tamper(audited, delete(ApprovalVote))
    assert problem.startswith("the vote by alice on approval") and problem.endswith("was deleted")


def test_a_quorum_needs_distinct_reviewers_and_one_denial_ends_it(engine: Engine) -> None:
    row, hold = held()
    hold = HoldRequest(hold.approval_id, hold.expires_at, hold.request_hash, required=2)
    write(engine, DecisionRecord(row, hold))

    first = resolve_approval(engine, hold.approval_id, APPROVED, "alice", "fine")
    assert (first.state, first.votes, first.required) == ("PENDING", 1, 2)
    with pytest.raises(ApprovalError, match=r"alice already approved .*1 of 2"):
        resolve_approval(engine, hold.approval_id, APPROVED, "alice", None)
    # One person however spelt (as the self-approval check reads names), and never nobody.
    with pytest.raises(ApprovalError, match=r"already approved .*1 of 2"):
        resolve_approval(engine, hold.approval_id, APPROVED, " ALICE", None)
    with pytest.raises(ApprovalError, match="it is blank"):
        resolve_approval(engine, hold.approval_id, APPROVED, " ", None)
    second = resolve_approval(engine, hold.approval_id, APPROVED, "bob", "agreed")
    assert (second.state, second.reviewer, second.votes) == ("APPROVED", "alice, bob", 2)
    assert verify_audit(engine).ok

    row, hold = held()
    hold = HoldRequest(hold.approval_id, hold.expires_at, hold.request_hash, required=3)
    write(engine, DecisionRecord(row, hold))
    resolve_approval(engine, hold.approval_id, APPROVED, "alice", None)
    denied = resolve_approval(engine, hold.approval_id, DENIED, "carol", "not today")
    assert (denied.state, denied.reviewer) == ("DENIED", "carol")
    assert verify_audit(engine).ok


def test_an_edit_after_a_vote_restarts_the_count_and_is_in_the_chain(engine: Engine) -> None:
    row, hold = held()
    hold = HoldRequest(hold.approval_id, hold.expires_at, hold.request_hash, required=2)
    write(engine, DecisionRecord(row, hold))
    lowered = {"params": {"amount": 50000}, "locations": {"amount": ["body", "amount"]}}
    resolve_approval(engine, hold.approval_id, APPROVED, "alice", "fine as it is")
    edited = resolve_approval(engine, hold.approval_id, APPROVED, "bob", "lower", edit=lowered)
    assert (edited.state, edited.votes) == ("PENDING", 1)  # alice approved another version
    with pytest.raises(ApprovalError, match="was edited by bob"):  # as held: not what goes out
        resolve_approval(engine, hold.approval_id, APPROVED, "alice", "ok, lower")
    again = resolve_approval(engine, hold.approval_id, APPROVED, "alice", "ok", edit=lowered)
    assert (again.state, again.reviewer, again.votes) == ("APPROVED", "bob, alice", 2)
    with engine.connect() as conn:
        stored = conn.execute(select(Approval.edit).where(Approval.id == hold.approval_id))
        assert stored.scalar_one() | {"at": 0} == {**lowered, "by": "bob", "version": 1, "at": 0}
    assert verify_audit(engine).ok
    problem = _tamper(engine, update(Approval).values(edit={**lowered, "by": "mallory"}))
    assert problem.endswith("was edited: its edit is not the one recorded")


def test_extended_approval_expiry_is_named(audited: Engine) -> None:
    problem = _tamper(audited, update(Approval).values(expires_at=4102444800.0))
    assert "expires_at is 4102444800.0 but the audit chain recorded" in problem


def test_reading_does_not_block_a_writer_on_sqlite(tmp_path: Any) -> None:
    """A long `audit verify` or `pending` must not hold the proxy's writes up."""
    from airlock.store.schema import create_schema, open_engine

    engine = open_engine(f"sqlite:///{tmp_path / 'r.db'}")
    create_schema(engine)
    with engine.connect() as reader:
        reader.execute(select(Run.id)).all()  # a read transaction stays open
        write(engine, DecisionRecord(run_row()))  # the writer still commits
    engine.dispose()


def test_an_older_store_gains_new_columns_when_opened(tmp_path: Any) -> None:
    from sqlalchemy import inspect, text

    from airlock.store.schema import create_schema, open_engine

    engine = open_engine(f"sqlite:///{tmp_path / 'old.db'}")
    create_schema(engine)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE runs DROP COLUMN undo"))
        conn.execute(text("DROP INDEX ix_approvals_released_run"))
        conn.execute(text("ALTER TABLE approvals DROP COLUMN released_run"))
        # The index of runs in flight under the name it had first (2026-12-02 to 05).
        conn.execute(text("CREATE INDEX ix_runs_without_outcome ON runs (instance) "
                          "WHERE outcome IS NULL"))  # fmt: skip
    assert "undo" not in {c["name"] for c in inspect(engine).get_columns("runs")}

    create_schema(engine)  # what the proxy and the CLI do at start

    assert "undo" in {c["name"] for c in inspect(engine).get_columns("runs")}
    assert "released_run" in {c["name"] for c in inspect(engine).get_columns("approvals")}
    assert "ix_approvals_released_run" in {
        i["name"] for i in inspect(engine).get_indexes("approvals")
    }
    run_indexes = {i["name"] for i in inspect(engine).get_indexes("runs")}
    assert "runs_without_outcome" in run_indexes  # one copy: a page less per write
    assert "ix_runs_without_outcome" not in run_indexes
    write(engine, DecisionRecord(run_row(undo={"action": "create_refund"})))
    engine.dispose()


def test_orphaned_approvals_are_expired_at_start(engine: Engine) -> None:
    from airlock.store.approvals import expire_orphaned_approvals

    dead, alive_here, elsewhere, overdue, same_pid = (held() for _ in range(5))
    for (row, hold), instance in zip(
        (dead, alive_here, elsewhere, same_pid),
        ("box-111", "box-222.b2", "other-333", "box-1.a1"),
        strict=True,
    ):
        write(engine, DecisionRecord(replace(row, instance=instance), hold))
    row, hold = overdue
    write(engine, DecisionRecord(replace(row, instance="other-444"), HoldRequest(
        hold.approval_id, time.time() - 1, hold.request_hash)))  # fmt: skip

    # Starting as box-1.c3 (a restarted container: pid 1 again), with 1 and 222 alive.
    expired = expire_orphaned_approvals(
        engine, Here("box-1.c3", host="box", alive=lambda pid: pid in (1, 222))
    )

    assert sorted(expired) == sorted(
        [dead[1].approval_id, overdue[1].approval_id, same_pid[1].approval_id]
    )
    states = approval_states(engine, [h.approval_id for _, h in (dead, alive_here, elsewhere)])
    assert [states[h.approval_id].state for _, h in (dead, alive_here, elsewhere)] == [
        "EXPIRED",
        "PENDING",
        "PENDING",
    ]
    assert states[dead[1].approval_id].reason == "the proxies holding it stopped"
    assert verify_audit(engine).ok


def test_an_approval_a_live_instance_holds_a_retry_for_outlives_its_opener(
    engine: Engine,
) -> None:
    """Opened by box-111 (since gone); the call's retry joined it from box-222, alive: the
    approval belongs to the call, so box-111's restart does not expire it."""
    from airlock.store.approvals import expire_orphaned_approvals

    row, hold = held()
    write(engine, DecisionRecord(replace(row, instance="box-111"), hold))
    retry = run_row("REQUIRE_APPROVAL", instance="box-222")
    write(engine, DecisionRecord(retry, joins=hold.approval_id))

    assert expire_orphaned_approvals(engine, box("box-333.x", lambda pid: pid == 222)) == []
    assert approval_states(engine, [hold.approval_id])[hold.approval_id].state == "PENDING"
    # Once the joining instance is gone too, nobody can release it.
    assert expire_orphaned_approvals(engine, box("box-444.y", lambda pid: False)) == [
        hold.approval_id
    ]


def test_a_join_committing_while_gone_instances_are_cleared_keeps_the_approval(
    empty_pg_database: str,
) -> None:
    """PostgreSQL: box-111 (gone) opened the approval; box-222 (alive) is joining it, its
    holder row written and not yet committed, when box-333 settles what gone instances left.
    The approval is locked before its holders are read: the join is waited for and seen, and
    the approval stays open for box-222's flow."""
    from airlock.store.approvals import expire_orphaned_approvals

    engine = open_engine(empty_pg_database)
    create_schema(engine)
    row, hold = held()
    write(engine, DecisionRecord(replace(row, instance="box-111"), hold))
    expired: list[str] = []

    def judge() -> None:
        expired.extend(expire_orphaned_approvals(engine, box("box-333.x", lambda p: p == 222)))

    waiting = text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                   "AND datname = current_database()")  # fmt: skip
    with engine.connect() as joining, engine.connect() as watching:
        holder = {"approval_id": hold.approval_id, "instance": "box-222", "at": time.time()}
        joining.execute(insert(ApprovalHolder).values(**holder))
        judging = threading.Thread(target=judge)
        judging.start()
        deadline = time.monotonic() + 10
        while judging.is_alive() and time.monotonic() < deadline:
            if watching.execute(waiting).scalar():
                break  # the judge waits for the join
            watching.rollback()  # a fresh snapshot of the activity next time
            time.sleep(0.01)
        joining.commit()
    judging.join()
    state = approval_states(engine, [hold.approval_id])[hold.approval_id].state
    engine.dispose()
    assert (expired, state) == ([], "PENDING")


def test_an_instance_leaving_an_approval_another_live_one_holds_leaves_it_open(
    engine: Engine,
) -> None:
    """An approval belongs to the call: an instance whose client left (or that shuts down)
    ends its own hold, and the approval stays PENDING while another live instance holds a flow
    for it; the last one to leave settles it. Holders known dead (a gone process of this host,
    or an earlier process that had the leaving one's pid) keep nothing open."""
    import os
    import socket

    from airlock.store.approvals import ABANDONED

    host = socket.gethostname()
    here, elsewhere = f"{host}-{os.getpid()}.now", "box-111"  # another host: taken as alive
    row, hold = held()
    write(engine, DecisionRecord(replace(row, instance=elsewhere), hold))
    write(
        engine, DecisionRecord(run_row("REQUIRE_APPROVAL", instance=here), joins=hold.approval_id)
    )

    [left] = write(engine, SettleRequest(hold.approval_id, ABANDONED, "client disconnected",
                                         time.time(), leaving=here))  # fmt: skip
    assert (left.state, left.won) == ("PENDING", False)
    with engine.connect() as conn:
        assert conn.execute(select(ApprovalHolder.instance)).scalars().all() == [elsewhere]
    [ended] = write(engine, SettleRequest(hold.approval_id, EXPIRED, "proxy shut down",
                                          time.time(), leaving=elsewhere))  # fmt: skip
    assert (ended.state, ended.won) == (EXPIRED, True)

    row, hold = held()
    write(engine, DecisionRecord(replace(row, instance=here), hold))
    for gone in (f"{host}-99999999.old", f"{host}-{os.getpid()}.old"):
        retry = run_row("REQUIRE_APPROVAL", instance=gone)
        write(engine, DecisionRecord(retry, joins=hold.approval_id))
    [abandoned] = write(engine, SettleRequest(hold.approval_id, ABANDONED, "client disconnected",
                                              time.time(), leaving=here))  # fmt: skip
    assert (abandoned.state, abandoned.won) == (ABANDONED, True)
    assert verify_audit(engine).ok


def box(current: str, alive: Callable[[int], bool], namespace: str = "box-ns") -> Here:
    """An instance on host "box" judging the others."""
    return Here(current, host="box", namespace=namespace, alive=alive)


def outcome_of(engine: Engine, run_id: str) -> str | None:
    with engine.connect() as conn:
        return conn.execute(select(Run.outcome).where(Run.id == run_id)).scalar_one()


def test_containers_sharing_a_hostname_and_pid_1_do_not_take_each_other_for_stopped(
    engine: Engine,
) -> None:
    """Two containers named alike on one database, each box-1.<start> in its own pid namespace:
    the second's start settles nothing the first holds while the first renews its lease. Once
    that lease lapses, what the first left is settled, once; if it was only stalled, it is told
    when it renews."""
    from airlock.store.approvals import NOT_SENT, UNKNOWN, settle_what_gone_instances_left

    first, second = "box-1.aaa", "box-1.bbb"
    renew_lease(engine, first, box(first, lambda pid: True, "ns-a"))
    row, hold = held()
    in_flight = run_row("ALLOW", instance=first)
    write(engine, DecisionRecord(replace(row, instance=first), hold), DecisionRecord(in_flight))
    judge = box(second, lambda pid: True, "ns-b")  # its own pid 1 is alive
    renew_lease(engine, second, judge)

    assert settle_what_gone_instances_left(engine, judge) == (0, {UNKNOWN: 0, NOT_SENT: 0})
    assert approval_states(engine, [hold.approval_id])[hold.approval_id].state == "PENDING"
    assert outcome_of(engine, in_flight.id) is None

    with engine.begin() as conn:  # the first container stops without a word
        lapsed = time.time() - LEASE_SECONDS - 1
        conn.execute(update(InstanceLease).where(InstanceLease.id == first).values(seen_at=lapsed))
    assert gone_uncleared(engine, judge) == [first]
    assert settle_what_gone_instances_left(engine, judge) == (1, {UNKNOWN: 1, NOT_SENT: 1})
    assert approval_states(engine, [hold.approval_id])[hold.approval_id].state == EXPIRED
    assert (outcome_of(engine, in_flight.id), outcome_of(engine, row.id)) == (UNKNOWN, NOT_SENT)
    assert gone_uncleared(engine, judge) == []
    assert settle_what_gone_instances_left(engine, judge) == (0, {UNKNOWN: 0, NOT_SENT: 0})
    assert verify_audit(engine).ok
    # It had only stalled: its next renewal says it was taken for stopped, the one after not.
    assert renew_lease(engine, first, box(first, lambda pid: True, "ns-a")).kept is False
    assert renew_lease(engine, first, box(first, lambda pid: True, "ns-a")).kept is True


def test_an_ended_lease_or_a_stopped_process_of_this_namespace_needs_no_lapse(
    engine: Engine,
) -> None:
    """A pid is asked about only in the namespace it belongs to: a fresh lease from elsewhere
    stands whatever that pid is here; an older process that had the judge's own pid is gone."""
    ended, crashed, elsewhere, reused = "box-7.a", "box-8.b", "other-9.c", "box-1.old"
    for name, namespace in ((ended, "ns"), (crashed, "ns"), (elsewhere, "ns-2"), (reused, "ns")):
        renew_lease(engine, name, box(name, lambda pid: True, namespace))
    end_lease(engine, ended)
    judge = box("box-1.new", lambda pid: pid not in (8, 9), "ns")
    with engine.connect() as conn:
        judged = liveness(conn, judge)
    assert [judged.gone(name) for name in (ended, crashed, elsewhere, reused)] == [
        True, True, False, True
    ]  # fmt: skip
    assert sorted(gone_uncleared(engine, judge)) == sorted([ended, crashed, reused])


def test_after_a_crash_the_run_that_won_the_release_is_unknown_and_the_others_not_sent(
    engine: Engine,
) -> None:
    """Released by a retry (another run than the one that opened the approval): that retry may
    have reached the upstream (unknown), the opener was never forwarded (not sent). An approval
    released before Airlock recorded which run won it is taken as the opener's, as it was."""
    from airlock.store.approvals import NOT_SENT, UNKNOWN, settle_orphaned_runs

    opener, hold = held()
    opener = replace(opener, instance="box-111")
    retry = run_row("REQUIRE_APPROVAL", instance="box-111")
    write(engine, DecisionRecord(opener, hold), DecisionRecord(retry, joins=hold.approval_id))
    resolve_approval(engine, hold.approval_id, APPROVED, "alice", "ok")
    write(engine, ReleaseRequest(hold.approval_id, time.time(), retry.id))
    older, old_hold = held()
    older = replace(older, instance="box-111")
    write(engine, DecisionRecord(older, old_hold))
    resolve_approval(engine, old_hold.approval_id, APPROVED, "alice", "ok")
    write(engine, ReleaseRequest(old_hold.approval_id, time.time()))  # no run: as before

    counts = settle_orphaned_runs(engine, box("box-222.x", lambda pid: False))

    with engine.connect() as conn:
        outcomes = dict(conn.execute(select(Run.id, Run.outcome)).all())
    assert (outcomes[retry.id], outcomes[opener.id], outcomes[older.id]) == (
        UNKNOWN, NOT_SENT, UNKNOWN
    )  # fmt: skip
    assert counts == {UNKNOWN: 2, NOT_SENT: 1}
    assert verify_audit(engine).ok
    with engine.begin() as conn:  # the chain vouches for which run was forwarded
        conn.execute(update(Approval).values(released_run=opener.id).where(
            Approval.id == hold.approval_id))  # fmt: skip
    assert "released_run is" in (verify_audit(engine).problem or "")


def test_only_listed_reviewers_with_an_allowed_role_decide(engine: Engine, tmp_path: Any) -> None:
    from airlock.pipeline.agents import load_reviewers

    (tmp_path / "reviewers.yaml").write_text(
        "reviewers:\n  - {id: alice, roles: [payments-lead]}\n  - {id: bob, roles: [sre]}\n"
    )
    reviewers = load_reviewers(tmp_path)
    row, hold = held()
    hold = HoldRequest(
        hold.approval_id, hold.expires_at, hold.request_hash, reviewer_roles=("payments-lead",)
    )
    write(engine, DecisionRecord(row, hold))

    with pytest.raises(ApprovalError, match="mallory is not a reviewer"):
        resolve_approval(engine, hold.approval_id, APPROVED, "mallory", None, reviewers)
    # Without the reviewers file (a default path, a typo), an approval that names roles is not
    # open to anyone.
    nowhere = load_reviewers(tmp_path / "elsewhere")
    with pytest.raises(ApprovalError, match=r"needs a reviewer in one of \['payments-lead'\]"):
        resolve_approval(engine, hold.approval_id, APPROVED, "mallory", None, nowhere)
    with pytest.raises(ApprovalError, match=r"bob may not decide this approval: .*payments-lead"):
        resolve_approval(engine, hold.approval_id, DENIED, "bob", "no", reviewers)
    settled = resolve_approval(engine, hold.approval_id, APPROVED, "alice", None, reviewers)
    assert settled.state == "APPROVED"
    assert verify_audit(engine).ok
    # The vote records the roles the reviewers file in force gave, whatever it says later.
    with engine.connect() as conn:
        votes = [p for kind, p in conn.execute(select(AuditEvent.kind, AuditEvent.payload))
                 if kind == "vote"]  # fmt: skip
    assert [json.loads(vote)["reviewer_roles"] for vote in votes] == [["payments-lead"]]


def test_each_fired_rules_reviewer_roles_must_be_met(engine: Engine, tmp_path: Any) -> None:
    """Two rules held the request, one for payments-lead and one for security: a payments lead
    alone cannot approve what security must also see; with a quorum the votes must cover both."""
    from airlock.pipeline.agents import load_reviewers

    (tmp_path / "reviewers.yaml").write_text(
        "reviewers:\n  - {id: alice, roles: [payments-lead]}\n  - {id: sam, roles: [security]}\n"
        "  - {id: carol, roles: [payments-lead, security]}\n"
        "  - {id: dave, roles: [payments-lead]}\n"
    )
    reviewers = load_reviewers(tmp_path)
    sets = (("payments-lead",), ("security",))

    def hold_for(required: int) -> str:
        row, hold = held()
        hold = replace(hold, required=required, reviewer_role_sets=sets)
        write(engine, DecisionRecord(row, hold))
        return hold.approval_id

    one = hold_for(1)
    with pytest.raises(ApprovalError, match=r"needs a reviewer in one of \['security'\] as well"):
        resolve_approval(engine, one, APPROVED, "alice", None, reviewers)
    with pytest.raises(ApprovalError, match=r"one of \['payments-lead'\] as well"):
        resolve_approval(engine, one, APPROVED, "sam", None, reviewers)
    assert approval_states(engine, [one])[one].state == "PENDING"
    assert resolve_approval(engine, one, APPROVED, "carol", None, reviewers).state == APPROVED

    quorum = hold_for(2)
    assert resolve_approval(engine, quorum, APPROVED, "alice", None, reviewers).state == "PENDING"
    with pytest.raises(ApprovalError, match=r"one of \['security'\] as well"):
        resolve_approval(engine, quorum, APPROVED, "dave", None, reviewers)
    assert resolve_approval(engine, quorum, APPROVED, "sam", None, reviewers).state == APPROVED
    # Either role may refuse: one denial ends it.
    denied = hold_for(1)
    assert resolve_approval(engine, denied, DENIED, "sam", "no", reviewers).state == DENIED
    assert verify_audit(engine).ok


def test_other_instances_decisions_are_read_in_commit_order_from_a_cursor(engine: Engine) -> None:
    """What another proxy instance's budgets see: a decision committed late (its time is
    long past, say replayed after a crash) is still read, once, with its latest outcome."""
    from airlock.store.history import audit_position, committed_since

    cursor = audit_position(engine)
    mine = run_row(instance="here-1")
    late = run_row(instance="there-2", at=time.time() - 3600)
    held_row, hold = held()
    held_row.instance = "there-2"
    write(engine, DecisionRecord(mine), DecisionRecord(late), DecisionRecord(held_row, hold))

    found, cursor = committed_since(engine, cursor, other_than_instance="here-1")
    assert {(d.id, d.outcome) for d in found} == {(late.id, None), (held_row.id, None)}

    write(engine, OutcomeRecord(held_row.id, time.time(), "forwarded", 200, 3.0))
    found, cursor = committed_since(engine, cursor, other_than_instance="here-1")
    assert [(d.id, d.outcome) for d in found] == [(held_row.id, "forwarded")]

    assert committed_since(engine, cursor, other_than_instance="here-1") == ([], cursor)


def test_another_instances_release_counts_from_its_release(engine: Engine) -> None:
    """A request held an hour ago, approved and released now by another instance: budgets and
    rates here count it from now, as soon as the release is read, not once the upstream
    answered (never, for a Guard call whose agent reports nothing) nor at the hour it was
    held (which a one-minute rate no longer looks at)."""
    from airlock.store.history import audit_position, committed_since

    row, hold = held()
    row.instance, row.at = "there-2", time.time() - 3600
    write(engine, DecisionRecord(row, hold))
    cursor = audit_position(engine)
    resolve_approval(engine, hold.approval_id, APPROVED, "alice", None)
    released_at = time.time()
    write(engine, ReleaseRequest(hold.approval_id, released_at, row.id))
    found, cursor = committed_since(engine, cursor, other_than_instance="here-1")
    assert [(d.id, d.at, let_through(d.decision, d.outcome)) for d in found] == [
        (row.id, released_at, True)
    ]


def test_another_instances_edited_release_counts_once_at_the_edited_params(
    engine: Engine,
) -> None:
    """Review: released with a reviewer's edit, the held run (at its own params) counted at its
    release and the edited run again at its decision: another instance's budgets saw both."""
    from airlock.store.history import audit_position, committed_since

    row, hold = held()
    row.instance = "there-2"
    write(engine, DecisionRecord(row, hold))
    cursor = audit_position(engine)
    edit = {"params": {"amount": 100}, "locations": {"amount": [["body", "amount"]]}}
    resolve_approval(engine, hold.approval_id, APPROVED, "alice", "ok", edit=edit)
    write(engine, ReleaseRequest(hold.approval_id, time.time(), row.id))
    edited = run_row("ALLOW", instance="there-2")
    write(engine, DecisionRecord(edited))
    write(engine, OutcomeRecord(row.id, time.time(), "edited", None, None,
                                {"released_as": edited.id}))  # fmt: skip
    found, cursor = committed_since(engine, cursor, other_than_instance="here-1")
    counted = [d.id for d in found if let_through(d.decision, d.outcome)]
    assert counted == [edited.id]


# --- one approval per call, across proxy instances ---------------------------------------------


def call_held(key: str, expires_in: float = 60.0) -> DecisionRecord:
    row = run_row("REQUIRE_APPROVAL")
    hold = HoldRequest(uuid.uuid4().hex, time.time() + expires_in, "h" * 64, retry_key=key)
    return DecisionRecord(row, hold)


def test_the_same_call_from_two_instances_at_once_opens_one_approval(engine: Engine) -> None:
    """Two writer processes (two proxies' deciders) record the same call's hold at the same
    time: the database lets one open the approval; the other's record joins it."""
    first, second = call_held("agent-a:key-1"), call_held("agent-a:key-1")

    async def both_at_once() -> list[Any]:
        deciders = [WorkerDecider(address(engine)), WorkerDecider(address(engine))]
        for decider in deciders:
            await decider.start()
        try:
            return list(await asyncio.gather(deciders[0].record(first), deciders[1].record(second)))
        finally:
            for decider in deciders:
                await decider.stop()

    results = asyncio.run(both_at_once())
    [opened] = pending_approvals(engine)
    assert opened.id in (first.hold.approval_id, second.hold.approval_id)  # type: ignore[union-attr]
    [joined] = [r for r in results if r is not None]
    assert joined.approval_id == opened.id
    with engine.connect() as conn:  # both decisions are on record, each with its run
        assert conn.execute(select(Run.id).where(Run.decision == "REQUIRE_APPROVAL")).all()
        assert len(conn.execute(select(Approval.id)).all()) == 1
    assert verify_audit(engine).ok


def test_a_join_of_an_approval_its_group_lost_to_another_instance_joins_the_winner(
    engine: Engine,
) -> None:
    """One group holds a call twice: the first copy opens an approval, the second is told to
    join it. Another instance opened the call's approval meanwhile, so the first copy's insert
    becomes a join; the second copy joins that approval too, instead of the one never opened
    (its holder row would break the foreign key and its request be refused)."""
    key = "agent-a:key-lost"
    winner, first = call_held(key), call_held(key)
    write(engine, winner)
    lost = first.hold.approval_id  # type: ignore[union-attr]
    second = DecisionRecord(run_row("REQUIRE_APPROVAL"), joins=lost)
    writer = GroupWriter(engine)
    try:
        written = writer.write_group([Pending(1, first), Pending(2, second)])
    finally:
        writer.close()
    assert [(sequence, ok) for sequence, ok, _ in written] == [(1, True), (2, True)]
    opened = winner.hold.approval_id  # type: ignore[union-attr]
    assert [joined.approval_id for _, _, joined in written] == [opened, opened]
    with engine.connect() as conn:
        assert conn.execute(select(Approval.id)).scalars().all() == [opened]
        holders = conn.execute(select(ApprovalHolder.approval_id)).scalars().all()
    assert set(holders) == {opened}
    assert verify_audit(engine).ok


def test_a_call_whose_open_approval_expired_opens_a_new_one(engine: Engine) -> None:
    stale, fresh = call_held("agent-a:key-2", expires_in=-1), call_held("agent-a:key-2")
    write(engine, stale)
    [joined] = write(engine, fresh)
    assert joined is None  # opened, not joined: the stale one is past its window
    states = approval_states(engine, [stale.hold.approval_id, fresh.hold.approval_id])  # type: ignore[union-attr]
    assert states[stale.hold.approval_id].state == EXPIRED  # type: ignore[union-attr]
    assert states[fresh.hold.approval_id].state == "PENDING"  # type: ignore[union-attr]
    assert verify_audit(engine).ok


def test_a_settlement_is_seen_by_a_watch_without_reading_unchanged_tables(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the decider pushes to its proxy: the settlement once, then nothing. Found by what
    changed (SQLite: the chain's events since the last look; PostgreSQL: its notification), not
    by the once-a-second read of everything watched (turned off here); another approval settled
    meanwhile, not watched, is not reported."""
    from airlock.store import settlements
    from airlock.store.settlements import SettlementWatch

    monkeypatch.setattr(settlements, "SAFETY_SECONDS", 3600.0)
    record, other = call_held("agent-a:key-3"), call_held("agent-b:key-3")
    write(engine, record, other)
    approval_id = record.hold.approval_id  # type: ignore[union-attr]
    watch = SettlementWatch(engine)
    watch.watch([approval_id])
    assert watch.settled() == []  # read once at watch: still pending
    resolve_approval(engine, other.hold.approval_id, DENIED, "bob", "no")  # type: ignore[union-attr]
    resolve_approval(engine, approval_id, APPROVED, "alice", "fine")
    deadline, seen = time.monotonic() + 5, []
    while not seen and time.monotonic() < deadline:
        seen = watch.settled()
        time.sleep(0.005)
    watch.close()
    assert seen == [{"id": approval_id, "state": APPROVED, "reviewer": "alice", "reason": "fine"}]
    assert watch.watched == set()


@pytest.mark.parametrize(("durability", "sqlite_level", "postgres_commit"),
                         [("full", 2, "on"), ("process", 1, "off")])  # fmt: skip
def test_durability_sets_what_a_commit_survives(
    db_url: str, durability: str, sqlite_level: int, postgres_commit: str
) -> None:
    """full: an fsync per commit (survives a power loss); process: survives a crash of the
    proxy or its decider only (SQLite NORMAL = 1 in WAL; PostgreSQL synchronous_commit off, whose
    last commits a crash of the server can also take)."""
    engine = open_engine(db_url, durability)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == sqlite_level
            else:
                assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == postgres_commit
    finally:
        engine.dispose()


def test_an_unknown_durability_is_refused() -> None:
    with pytest.raises(ValueError, match="durability is one of full, process"):
        open_engine("sqlite:///x.db", "sometimes")


def test_every_surface_needs_a_reason_for_a_risky_approval_and_any_denial(engine: Engine) -> None:
    """The rule lives in the store's one decision path: the CLI and the console both meet it."""
    risky, hold = run_row("REQUIRE_APPROVAL", risk=85), None
    hold = HoldRequest(uuid.uuid4().hex, time.time() + 60, "h" * 64)
    write(engine, DecisionRecord(risky, hold))
    with pytest.raises(ApprovalError, match=r"risk 85 \(≥ 70\) needs a reason"):
        resolve_approval(engine, hold.approval_id, APPROVED, "alice", None)
    with pytest.raises(ApprovalError, match="a denial needs a reason"):
        resolve_approval(engine, hold.approval_id, DENIED, "alice", "  ")
    settled = resolve_approval(engine, hold.approval_id, APPROVED, "alice", "checked the invoice")
    assert settled.state == APPROVED


def _append_well_chained(engine: Engine, *events: Any) -> str:
    """What someone who can write the database does: append with the library, rows to match."""
    from airlock.store.audit import append_events
    from airlock.store.prepared import tx_of
    from airlock.store.schema import write_transaction

    with write_transaction(engine) as conn:
        append_events(tx_of(conn), list(events))
    report = verify_audit(engine)
    assert not report.ok
    return report.problem or ""


def test_a_second_decision_appended_for_an_old_run_is_caught(audited: Engine) -> None:
    from airlock.store.audit import Event, decision_payload

    with audited.connect() as conn:
        blocked = conn.execute(select(Run).where(Run.decision == "BLOCK")).one()
    row = {c.name: getattr(blocked, c.name) for c in Run.__table__.columns}
    row["decision"] = "ALLOW"
    with audited.begin() as conn:
        conn.execute(update(Run).where(Run.id == blocked.id).values(decision="ALLOW"))
    problem = _append_well_chained(
        audited, Event("decision", blocked.id, blocked.at, decision_payload(row))
    )
    assert problem == (
        f"event #11 records a second decision for run {blocked.id}: a request is decided once"
    )


def test_an_approval_event_moving_a_denial_to_approved_is_caught(engine: Engine) -> None:
    from airlock.store.audit import Event

    row, hold = held()
    write(engine, DecisionRecord(row, hold))
    resolve_approval(engine, hold.approval_id, DENIED, "alice", "no")
    with engine.begin() as conn:
        conn.execute(update(Approval).values(state=APPROVED, reviewer="mallory", reason="yes"))
    flipped = {"approval_id": hold.approval_id, "state": APPROVED, "reviewer": "mallory",
               "reason": "yes", "resolved_at": time.time(), "released_at": None}  # fmt: skip
    problem = _append_well_chained(engine, Event("approval", row.id, time.time(), flipped))
    assert f"moves approval {hold.approval_id} from DENIED to APPROVED" in problem


def test_a_chain_begun_before_rfc_8785_still_verifies_and_goes_on_in_it(engine: Engine) -> None:
    """Events of chain format 1 (orjson text, repr of the time) verify as they were written;
    events appended after them are format 2 (RFC 8785 throughout)."""
    from airlock.store.audit import canonical_json, chain_hash, decision_payload, request_digest
    from airlock.store.schema import GENESIS_HASH, AuditEvent, AuditHead

    first = run_row(params={"amount": 2500, "ratio": 0.1})
    write(engine, DecisionRecord(first))
    with engine.begin() as conn:  # rewrite it as Airlock wrote it before format 2
        event = conn.execute(select(AuditEvent)).one()
        row = dict(conn.execute(select(Run).where(Run.id == first.id)).one()._mapping)
        payload = decision_payload(row) | {"request_sha256": request_digest(row["request"], None)}
        text = canonical_json(payload)
        digest = chain_hash(GENESIS_HASH, 1, event.at, "decision", first.id, text, None)
        conn.execute(update(AuditEvent).values(payload=text, hash=digest, format=None))
        conn.execute(update(AuditHead).values(hash=digest))
    write(engine, DecisionRecord(run_row()))
    assert verify_audit(engine).ok
    with engine.connect() as conn:
        formats = conn.execute(select(AuditEvent.format).order_by(AuditEvent.seq)).scalars().all()
    assert formats == [None, 2]


def test_canonical_json_has_one_form_for_every_value() -> None:
    from airlock.store.audit import jcs

    assert jcs({"b": 1.0, "a": [1e21, 0.1, 3]}) == '{"a":[1e+21,0.1,3],"b":1}'
    assert jcs(2**64) == '"18446744073709551616"'  # beyond a double: as its digits
    assert jcs(float("nan")) == '"nan"'
    assert jcs("caf\udce9") == '"caf\\\\xed\\\\xb3\\\\xa9"'  # an undecodable byte, spelled out
    assert jcs({"é": "ü"}) == '{"é":"ü"}'


_JSON_LIKE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=600, deadline=None)
@given(_JSON_LIKE)
@example({"é": 1, "z": 2, "\ue000": 3, "😀": 4})  # RFC 8785 sorts keys by UTF-16 units
@example([5.0, -0.0, 1e15 + 0.5, 1e-7, 2.0**60, 2**60, "\x7f\u2028\udcff"])
@example([1e-6, 9.99999e-6, 1e-5, 1.5e-5, 999999999999999.9])  # where orjson turns to 1e-6
def test_the_fast_canonical_form_is_rfc8785s(value: Any) -> None:
    """jcs writes most values with orjson: the same text rfc8785 writes, on any value."""
    import rfc8785

    from airlock.store.audit import _representable, jcs

    assert jcs(value) == rfc8785.dumps(_representable(value)).decode()


@settings(max_examples=400, deadline=None)
@given(st.text(), st.text(max_size=5), st.floats(allow_nan=False, allow_infinity=False))
@example("undecodable \udcff byte", "vote", 1.5)
@example('"quoted"\\ \x00\x1f\x7f \u2028 é 日本 😀', "decision", 1e21)
def test_the_fast_string_form_is_rfc8785s_and_so_is_the_chain_hash(
    text: str, kind: str, at: float
) -> None:
    """The chain hash serialises its strings with the stdlib's C encoder: the same text as
    rfc8785, on any string (controls, quotes, non-ASCII, lone surrogates)."""
    import hashlib

    from airlock.store.audit import CHAIN_FORMAT, chain_hash, jcs, jcs_string

    assert jcs_string(text) == jcs(text)
    material = jcs([CHAIN_FORMAT, "p" * 64, 7, at, kind, "run", text])
    assert chain_hash("p" * 64, 7, at, kind, "run", text) == (
        hashlib.sha256(material.encode()).hexdigest()
    )


def test_instances_on_one_store_must_hold_the_same_request_key(
    engine: Engine, tmp_path: Path
) -> None:
    """Approvals are bound to requests by an HMAC with the data directory's request key: an
    instance with another key would not find the approvals the others opened. The first key
    is the store's; another is refused, saying which file to copy; a copy of it is accepted."""
    first, other, copied = (tmp_path / name for name in ("first", "other", "copied"))
    key = load_or_create_request_key(first)
    bind_to_store(engine, key, first)
    bind_to_store(engine, load_or_create_request_key(first), first)  # restarted: the same key

    with pytest.raises(RequestKeyError) as refused:
        bind_to_store(engine, load_or_create_request_key(other), other)
    said = str(refused.value)
    assert f"fingerprint {fingerprint(key)}" in said and str(other / KEY_FILE) in said
    assert f"copy {KEY_FILE} from the data directory of an instance" in said

    (copied / "keys").mkdir(parents=True)
    (copied / KEY_FILE).write_bytes((first / KEY_FILE).read_bytes())
    bind_to_store(engine, load_or_create_request_key(copied), copied)
    with engine.connect() as conn:
        stored = conn.execute(select(StoreKey.fingerprint)).scalars().all()
    assert stored == [fingerprint(key)] and key.hex() not in stored[0]


def test_the_request_key_is_made_once_private_and_a_damaged_one_is_refused(
    tmp_path: Path,
) -> None:
    key = load_or_create_request_key(tmp_path)
    path = tmp_path / KEY_FILE
    assert len(key) == 32 and path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_request_key(tmp_path) == key
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no draft left behind
    path.write_text("not hex\n")
    with pytest.raises(RequestKeyError, match=f"{path}: not an Airlock request key"):
        load_or_create_request_key(tmp_path)


def test_rekey_replaces_a_lost_request_key_and_expires_what_only_it_could_join(
    engine: Engine, tmp_path: Path
) -> None:
    """No copy of the store's request key is left: `airlock rekey` makes another the store's.
    Not while an instance runs on the store (it decides with the old key); then the approvals
    still open, which no retry can join any more, are expired on record, and the chain still
    verifies."""
    lost, new = tmp_path / "lost", tmp_path / "new"
    bind_to_store(engine, load_or_create_request_key(lost), lost)
    row, hold = held()
    write(engine, DecisionRecord(row, hold))
    running = f"{socket.gethostname()}-{os.getpid()}.rekey"
    renew_lease(engine, running, Here(running))
    key = load_or_create_request_key(new)
    with pytest.raises(RequestKeyError, match=f"still run on this store \\({running}\\)"):
        replace_store_key(engine, key)

    end_lease(engine, running)
    assert replace_store_key(engine, key) == [hold.approval_id]
    bind_to_store(engine, key, new)
    with pytest.raises(RequestKeyError):
        bind_to_store(engine, load_or_create_request_key(lost), lost)
    with engine.connect() as conn:
        state, reason = conn.execute(select(Approval.state, Approval.reason)).one()
    assert (state, reason) == ("EXPIRED", REKEYED)
    assert verify_audit(engine).ok


def test_instances_starting_together_on_a_new_store_make_its_tables_once(
    empty_pg_database: str,
) -> None:
    """PostgreSQL, an upgrade rolled out to every instance at once: each makes the tables it
    finds missing (create_all checks, then creates) and the chain's head row. Together they
    must not collide on a duplicate table or type; every one of them starts. (Several
    instances share PostgreSQL, not an SQLite file.)"""
    engines = [open_engine(empty_pg_database) for _ in range(4)]
    start = threading.Barrier(len(engines))
    failures: list[BaseException] = []

    def start_instance(engine: Engine) -> None:
        start.wait()
        try:
            create_schema(engine)
        except BaseException as e:
            failures.append(e)

    threads = [threading.Thread(target=start_instance, args=(e,)) for e in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with engines[0].connect() as conn:
        heads = conn.execute(select(AuditHead.seq)).all()
    for engine in engines:
        engine.dispose()
    assert failures == [] and heads == [(0,)]


def test_with_a_quorum_an_edit_is_approved_only_by_reviewers_who_say_so(engine: Engine) -> None:
    """Two reviewers must approve; the first approves with an edit. The second, approving the
    request as `airlock pending` showed it (as held), has not seen the edit: refused, told the
    edit and how to agree. Approving with the same edit is a vote for it, and releases it."""
    row, hold = held()
    write(engine, DecisionRecord(row, replace(hold, required=2)))
    edit = {"params": {"amount": 900000}, "locations": {"amount": ["body", "amount"]}}
    first = resolve_approval(engine, hold.approval_id, APPROVED, "alice", "more", edit=edit)
    assert (first.state, first.votes) == ("PENDING", 1)
    [waiting] = pending_approvals(engine)  # what `airlock pending` and the console show
    assert (waiting.edit or {}).get("params") == edit["params"] and waiting.edit["by"] == "alice"

    with pytest.raises(ApprovalError, match=r"edited by alice .* \(--set amount=900000\)"):
        resolve_approval(engine, hold.approval_id, APPROVED, "bob", "ok")
    second = resolve_approval(engine, hold.approval_id, APPROVED, "bob", "ok", edit=dict(edit))
    assert (second.state, second.votes) == (APPROVED, 2)
    with engine.connect() as conn:
        stored = conn.execute(select(Approval.edit)).scalar_one()
    assert (stored["version"], stored["by"], stored["params"]) == (1, "alice", edit["params"])
    assert verify_audit(engine).ok


def test_the_sqlite_wal_is_cut_back_once_a_long_reader_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader left in a transaction let the WAL grow with every write and it stayed that size
    after (228 MB after 45 s of load, found by review): once the reader is gone and a checkpoint
    ran, it is cut back to WAL_SIZE_LIMIT."""
    import airlock.store.schema as schema_module

    monkeypatch.setattr(schema_module, "WAL_SIZE_LIMIT", 64 * 1024)
    engine = open_engine(f"sqlite:///{tmp_path / 'a.db'}")
    create_schema(engine)
    wal = tmp_path / "a.db-wal"
    writer = GroupWriter(engine)
    try:
        with engine.connect() as reader:
            reader.execute(select(Run.id)).all()  # its snapshot is held until it ends
            for n in range(300):
                assert writer.write_group([Pending(n + 1, DecisionRecord(run_row()))])[0][1]
            assert wal.stat().st_size > 512 * 1024  # grown past the limit while it reads
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
        assert writer.write_group([Pending(999, DecisionRecord(run_row()))])[0][1]
        assert wal.stat().st_size <= 64 * 1024
    finally:
        writer.close()
        engine.dispose()
