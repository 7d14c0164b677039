"""A store made by an earlier Airlock opens with this one's schema: what it lacks is added, and
what stands in the way of a new constraint is settled on record first."""

from __future__ import annotations

import time
import uuid

from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine

from airlock.store.records import DecisionRecord, HoldRequest
from airlock.store.schema import Approval, AuditEvent, create_schema
from tests.test_store import run_row, write


def test_a_store_with_two_open_approvals_for_one_call_takes_the_unique_index(
    engine: Engine,
) -> None:
    """Before one approval per call was a unique index, two instances could open two for the
    same call: every start then failed to make the index (UniqueViolation on PostgreSQL), and
    every request was refused. The older is expired on record; the newer stays open."""
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX one_pending_approval_per_call")
    holds = [HoldRequest(uuid.uuid4().hex, time.time() + 600, "h" * 64, retry_key=f"k{i}")
             for i in range(2)]  # fmt: skip
    for hold in holds:
        write(engine, DecisionRecord(run_row("REQUIRE_APPROVAL"), hold))
    older, newer = (hold.approval_id for hold in holds)
    with engine.begin() as conn:  # as the earlier Airlock left them: one call, two approvals
        conn.execute(update(Approval).values(retry_key="agent-a:key-1"))
        conn.execute(update(Approval).where(Approval.id == older).values(created_at=1.0))

    create_schema(engine)

    with engine.connect() as conn:
        states = dict(conn.execute(select(Approval.id, Approval.state)).all())
        events = conn.execute(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.kind == "approval")
        ).scalar_one()
    assert states == {older: "EXPIRED", newer: "PENDING"}
    assert events == 3  # two opened, one expired at the upgrade
