"""Reading recorded decisions back: for replaying policies against real traffic."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from airlock.store.schema import Approval, AuditEvent, Run


@dataclass(frozen=True)
class RecordedDecision:
    id: str
    at: float
    agent: str
    action: str
    provider: str
    category: str
    sensitivity: str
    target: str
    mapping_id: str | None
    params: dict[str, Any]  # as stored: redacted
    context: dict[str, Any]
    decision: str
    rules: list[str]
    error: str | None  # set when a stage failed (the request was blocked for it)
    outcome: str | None
    instance: str
    reason: str = ""
    status: int | None = None
    risk: int | None = None
    operation: str | None = None
    host: str = ""


def recorded_decisions(
    engine: Engine,
    since: float | None = None,
    limit: int | None = None,
    other_than_instance: str | None = None,
    agent: str | None = None,
) -> Iterator[RecordedDecision]:
    """Oldest first; `limit` keeps the newest N."""
    query = select(Run).order_by(Run.at.desc() if limit else Run.at)
    if agent is not None:
        query = query.where(Run.agent == agent)
    if since is not None:
        query = query.where(Run.at >= since)
    if other_than_instance is not None:
        query = query.where(Run.instance != other_than_instance)
    if limit:
        query = query.limit(limit)
    with engine.connect() as conn:
        rows = list(conn.execute(query))
    for row in reversed(rows) if limit else rows:
        yield RecordedDecision(
            id=row.id,
            at=row.at,
            agent=row.agent,
            action=row.action,
            provider=row.provider,
            category=row.category,
            sensitivity=row.sensitivity,
            target=row.target,
            mapping_id=row.mapping_id,
            operation=row.operation,
            host=row.host,
            params=row.params or {},
            context=row.context or {},
            decision=row.decision,
            rules=row.rules or [],
            error=row.error,
            outcome=row.outcome,
            instance=row.instance,
            reason=row.reason,
            status=row.status,
            risk=row.risk,
        )


def agent_actions(engine: Engine) -> set[tuple[str, str]]:
    """Every (agent, action) ever let through: for 'the first time' in the risk score."""
    query = select(Run.agent, Run.action).where(Run.decision != "BLOCK").distinct()
    with engine.connect() as conn:
        return {(agent, action) for agent, action in conn.execute(query)}


@dataclass(frozen=True)
class PastDecision:
    """The few columns the in-memory history needs (not the stored request)."""

    id: str
    agent: str
    action: str
    at: float
    params: dict[str, Any]
    decision: str
    outcome: str | None
    target: str


_PAST_COLUMNS = (
    Run.id,
    Run.agent,
    Run.action,
    Run.at,
    Run.params,
    Run.decision,
    Run.outcome,
    Run.target,
)


def past_decisions(
    engine: Engine, since: float, other_than_instance: str | None = None
) -> list[PastDecision]:
    query = select(*_PAST_COLUMNS).where(Run.at >= since)
    if other_than_instance is not None:
        query = query.where(Run.instance != other_than_instance)
    with engine.connect() as conn:
        return [PastDecision(*row) for row in conn.execute(query.order_by(Run.at))]


def audit_position(engine: Engine) -> int:
    """The sequence number of the newest audit event: a cursor for committed_since."""
    with engine.connect() as conn:
        return conn.execute(select(func.coalesce(func.max(AuditEvent.seq), 0))).scalar_one()


def committed_since(
    engine: Engine, cursor: int, other_than_instance: str | None = None
) -> tuple[list[PastDecision], int]:
    """Decisions committed, or given an outcome, after the audit event `cursor`, in commit
    order; and the cursor to ask from next time. Commit order, not decision time: a record
    applied late (replayed after a crash, kept through a store outage) is still found."""
    newest = audit_position(engine)  # first: whatever commits meanwhile is read next time
    query = (
        select(*_PAST_COLUMNS)
        .join(AuditEvent, AuditEvent.run_id == Run.id)
        .where(AuditEvent.seq > cursor, AuditEvent.seq <= newest)
        .where(AuditEvent.kind.in_(("decision", "outcome")))
        .order_by(AuditEvent.seq)
    )
    if other_than_instance is not None:
        query = query.where(Run.instance != other_than_instance)
    with engine.connect() as conn:
        found = {row.id: PastDecision(*row) for row in conn.execute(query)}  # latest state
        released = _released_since(conn, cursor, newest, other_than_instance)
    # A request released after approval counts from its release, not from its outcome (which
    # comes once the upstream answered, if ever) nor at the time it was held.
    return [*released, *(d for d in found.values() if d.id not in {r.id for r in released})], newest


def _released_since(
    conn: Any, cursor: int, newest: int, other_than_instance: str | None
) -> list[PastDecision]:
    """The runs approvals were released to between the two positions, at their release."""
    events = select(AuditEvent.payload).where(
        AuditEvent.seq > cursor, AuditEvent.seq <= newest, AuditEvent.kind == "approval"
    )
    releases: dict[str, float] = {}
    approvals: set[str] = set()
    for (payload,) in conn.execute(events):
        event = json.loads(payload)
        run_id, at = event.get("released_run"), event.get("released_at")
        if isinstance(run_id, str) and isinstance(at, int | float) and "withdrawn" not in event:
            releases[run_id] = float(at)
            approvals.add(event.get("approval_id"))
    # Released with a reviewer's edit, the held run goes out as another run, decided (and
    # counted, at its edited params) on its own: counted here too, it would count twice.
    # (Read in Python: an approval without an edit may hold JSON null or SQL NULL.)
    edits = select(Approval.released_run, Approval.edit).where(Approval.id.in_(approvals))
    for run_id, edit in conn.execute(edits) if releases else ():
        if edit:
            releases.pop(run_id, None)
    if not releases:
        return []
    query = select(*_PAST_COLUMNS).where(Run.id.in_(releases))
    if other_than_instance is not None:
        query = query.where(Run.instance != other_than_instance)
    return [
        replace(PastDecision(*row), at=releases[row.id], outcome="forwarded")
        for row in conn.execute(query)
    ]
