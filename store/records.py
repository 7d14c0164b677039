"""Recording decisions and outcomes: rows plus the audit events that vouch for them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select, update

from store.audit import DECISION_FIELDS, OUTCOME_FIELDS, Event
from store.prepared import statements
from store.schema import Approval

PENDING = "PENDING"


@dataclass(frozen=True)
class HoldRequest:
    """Open an approval for this run: the flow is held until a reviewer settles it."""

    approval_id: str
    expires_at: float
    request_hash: str


@dataclass(frozen=True)
class DecisionRecord:
    run: dict[str, Any]  # column → value for the runs table (already redacted)
    hold: HoldRequest | None = None


@dataclass(frozen=True)
class OutcomeRecord:
    run_id: str
    at: float
    outcome: str  # forwarded | blocked | denied | expired | abandoned | upstream_error
    status: int | None
    upstream_ms: float | None = None


def record_decisions(conn: Connection, records: list[DecisionRecord]) -> list[Event]:
    sql = statements(conn)
    sql.insert_runs.execute_many(conn, [r.run for r in records])
    holds = [(r, r.hold) for r in records if r.hold]
    events = [
        Event("decision", r.run["id"], r.run["at"], {k: r.run.get(k) for k in DECISION_FIELDS})
        for r in records
    ]
    # Outcomes known at decision time (a block) go in with the decision, in the same commit.
    events += [_outcome_event(r.run) for r in records if r.run.get("outcome")]
    if holds:
        sql.insert_approvals.execute_many(conn, [_approval_row(r, hold) for r, hold in holds])
        events += [_approval_event(_approval_row(r, hold), r.run["id"]) for r, hold in holds]
    return events


def _approval_row(record: DecisionRecord, hold: HoldRequest) -> dict[str, Any]:
    return {
        "id": hold.approval_id,
        "run_id": record.run["id"],
        "state": PENDING,
        "created_at": record.run["at"],
        "expires_at": hold.expires_at,
        "resolved_at": None,
        "reviewer": None,
        "reason": None,
        "request_hash": hold.request_hash,
        "instance": record.run["instance"],
    }


def _approval_event(row: dict[str, Any], run_id: str) -> Event:
    at = row["resolved_at"] or row["created_at"]
    payload = {
        "approval_id": row["id"],
        "state": row["state"],
        "reviewer": row["reviewer"],
        "reason": row["reason"],
        "resolved_at": row["resolved_at"],
    }
    return Event("approval", run_id, at, payload)


def _outcome_event(run: dict[str, Any]) -> Event:
    return Event("outcome", run["id"], run["at"], {k: run.get(k) for k in OUTCOME_FIELDS})


def record_outcomes(conn: Connection, records: list[OutcomeRecord]) -> list[Event]:
    rows = [
        {
            "rid": r.run_id,
            "outcome": r.outcome,
            "status": r.status,
            "upstream_ms": r.upstream_ms,
        }
        for r in records
    ]
    statements(conn).set_outcomes.execute_many(conn, rows)
    return [
        Event(
            "outcome",
            r.run_id,
            r.at,
            {"outcome": r.outcome, "status": r.status, "upstream_ms": r.upstream_ms},
        )
        for r in records
    ]


@dataclass(frozen=True)
class Settlement:
    approval_id: str
    state: str  # the state after the attempt: ours if we won, the winner's otherwise
    won: bool
    reviewer: str | None
    reason: str | None


def settle_approval(
    conn: Connection,
    approval_id: str,
    state: str,
    reviewer: str | None,
    reason: str | None,
    at: float,
) -> tuple[Settlement, list[Event]]:
    """Move a PENDING approval to a terminal state; terminal states are final, first writer wins."""
    changed = conn.execute(
        update(Approval)
        .where(Approval.id == approval_id, Approval.state == PENDING)
        .values(state=state, reviewer=reviewer, reason=reason, resolved_at=at)
    ).rowcount
    row = conn.execute(select(Approval).where(Approval.id == approval_id)).one()
    settlement = Settlement(approval_id, row.state, changed == 1, row.reviewer, row.reason)
    if changed != 1:
        return settlement, []
    event_row = {
        "id": approval_id,
        "state": state,
        "reviewer": reviewer,
        "reason": reason,
        "resolved_at": at,
        "created_at": row.created_at,
    }
    return settlement, [_approval_event(event_row, row.run_id)]
