"""Approvals as reviewers and proxies see them: what is pending, what was decided, deciding."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from store.audit import append_events
from store.prepared import PENDING, tx_of
from store.records import Settlement, settle_approval
from store.schema import Approval, Run, write_transaction

APPROVED, DENIED, EXPIRED, ABANDONED = "APPROVED", "DENIED", "EXPIRED", "ABANDONED"
TERMINAL_STATES = frozenset({APPROVED, DENIED, EXPIRED, ABANDONED})


class ApprovalError(Exception):
    """A reviewer's request that cannot be carried out; the message says why."""


@dataclass(frozen=True)
class PendingApproval:
    id: str
    run_id: str
    created_at: float
    expires_at: float
    agent: str
    action: str
    provider: str
    target: str
    params: dict[str, Any]
    reason: str
    rules: list[str]
    method: str
    host: str
    path: str
    context: dict[str, Any] | None
    undo: dict[str, Any] | None  # how to undo it, when the provider offers a way


def pending_approvals(engine: Engine, now: float | None = None) -> list[PendingApproval]:
    """Approvals still waiting, oldest first (those past their expiry are left out)."""
    now = time.time() if now is None else now
    query = (
        select(Approval, Run)
        .join(Run, Run.id == Approval.run_id)
        .where(Approval.state == PENDING, Approval.expires_at > now)
        .order_by(Approval.created_at)
    )
    with Session(engine) as session:
        return [
            PendingApproval(
                id=approval.id,
                run_id=run.id,
                created_at=approval.created_at,
                expires_at=approval.expires_at,
                agent=run.agent,
                action=run.action,
                provider=run.provider,
                target=run.target,
                params=run.params,
                reason=run.reason,
                rules=run.rules,
                method=run.method,
                host=run.host,
                path=run.path,
                context=run.context,
                undo=run.undo,
            )
            for approval, run in session.execute(query)
        ]


def approval_states(engine: Engine, ids: Iterable[str]) -> dict[str, Settlement]:
    """The current state of each approval asked about (the proxy polls its held flows)."""
    ids = list(ids)
    if not ids:
        return {}
    with engine.connect() as conn:
        rows = conn.execute(select(Approval).where(Approval.id.in_(ids))).all()
    return {row.id: Settlement(row.id, row.state, False, row.reviewer, row.reason) for row in rows}


def resolve_approval(
    engine: Engine, reference: str, state: str, reviewer: str, reason: str | None
) -> Settlement:
    """A reviewer approves or denies; `reference` is an approval id or an unambiguous prefix."""
    if state not in (APPROVED, DENIED):
        raise ApprovalError(f"a reviewer can only approve or deny, not {state}")
    now = time.time()
    with write_transaction(engine) as conn:
        approval_id = _full_id(conn, reference)
        current = conn.execute(select(Approval).where(Approval.id == approval_id)).one()
        if current.state == PENDING and current.expires_at <= now:
            raise ApprovalError(
                f"approval {approval_id} expired {now - current.expires_at:.0f} s ago; "
                "the request was not forwarded and cannot be released now"
            )
        tx = tx_of(conn)
        settlement, events = settle_approval(tx, approval_id, state, reviewer, reason, now)
        append_events(tx, events)
    if not settlement.won:
        raise ApprovalError(
            f"approval {approval_id} is already {settlement.state}"
            + (f" (by {settlement.reviewer})" if settlement.reviewer else "")
            + "; terminal states are final"
        )
    return settlement


def _full_id(conn: Any, reference: str) -> str:
    reference = reference.strip().lower()
    if len(reference) < 4:
        raise ApprovalError("give at least 4 characters of the approval id")
    matches = (
        conn.execute(
            select(Approval.id).where(Approval.id.startswith(reference, autoescape=True)).limit(2)
        )
        .scalars()
        .all()
    )
    if not matches:
        raise ApprovalError(f"no approval with id {reference!r}")
    if len(matches) > 1:
        raise ApprovalError(f"approval id {reference!r} is ambiguous: give more characters")
    return matches[0]
