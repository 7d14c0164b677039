"""Retention: records older than the window are pruned, and the chain still proves the rest.

Runs are pruned whole, with their approvals, votes, holders and every event that names them
(and proxy instances' leases settled before the window go too):
the cut moves back until no kept run has an event before it. The cut (the last pruned event's
position and hash, which the first kept event follows) is stored in `audit_cut` with its signed
checkpoint, made by the decider's key (store/anchor.py) in the prune's own transaction: no
crash leaves a cut unsigned, and `airlock audit verify` from any instance's data directory can
tell a retention cut from events deleted by hand.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError

from airlock.store.schema import (
    Approval,
    ApprovalHolder,
    ApprovalVote,
    AuditCut,
    AuditEvent,
    AuditHead,
    AuditSeal,
    InstanceLease,
    Run,
    write_transaction,
)

DAY = 86_400.0


@dataclass(frozen=True)
class Pruned:
    cut: int  # the last pruned event's position
    hash: str  # its hash: the first kept event names it as the one before
    runs: int
    events: int
    note: str | None = None  # the cut's signed checkpoint, stored with it (audit_cut.note)


def prune(
    engine: Engine, older_than: float, sign: Callable[[int, str], str] | None = None
) -> Pruned | None:
    """Prune what is older than `older_than` (a time); None when nothing is, or when a writer
    holds a run or approval to be pruned (PostgreSQL: the next prune takes it). `sign` makes
    the cut's signed checkpoint from its position and hash (store/anchor.py), stored with it in
    the same transaction."""
    try:
        return _prune(engine, older_than, sign)
    except OperationalError as e:
        if type(e.orig).__name__ == "LockNotAvailable":  # psycopg's, for NOWAIT
            return None
        raise


def _prune(
    engine: Engine, older_than: float, sign: Callable[[int, str], str] | None
) -> Pruned | None:
    with write_transaction(engine) as conn:
        if conn.dialect.name == "postgresql":
            # Writers append under the head's lock: none commits between what is read here
            # and what is deleted (SQLite's BEGIN IMMEDIATE serialises writers already).
            conn.execute(select(AuditHead.seq).where(AuditHead.id == 1).with_for_update())
        # Leases of instances stopped, and their leftovers settled, before the window.
        conn.execute(delete(InstanceLease).where(InstanceLease.cleared_at < older_than))
        cut = conn.execute(select(func.max(AuditEvent.seq)).where(AuditEvent.at < older_than))
        cut_seq = cut.scalar()
        if not cut_seq:
            return None
        # A run with events on both sides of the cut is kept whole: cut before its first one,
        # and again for the runs the events kept so put across it, until none straddles.
        while (first_kept := _first_event_of_a_run_across(conn, cut_seq)) is not None:
            cut_seq = first_kept - 1
        done = conn.execute(select(AuditCut.seq)).scalar() or 0
        if cut_seq <= done:
            return None
        cut_hash = conn.execute(select(AuditEvent.hash).where(AuditEvent.seq == cut_seq)).scalar()
        runs = select(AuditEvent.run_id).where(
            AuditEvent.seq <= cut_seq, AuditEvent.run_id.is_not(None)
        )
        approvals = select(Approval.id).where(Approval.run_id.in_(runs))
        if conn.dialect.name == "postgresql":
            # A writer that took one of these rows first waits for the head we hold: give way
            # rather than deadlock (a reviewer settling an old approval as it is pruned).
            conn.execute(select(Approval.id).where(Approval.id.in_(approvals))
                         .with_for_update(nowait=True))  # fmt: skip
            conn.execute(select(Run.id).where(Run.id.in_(runs)).with_for_update(nowait=True))
        conn.execute(delete(ApprovalVote).where(ApprovalVote.approval_id.in_(approvals)))
        conn.execute(delete(ApprovalHolder).where(ApprovalHolder.approval_id.in_(approvals)))
        conn.execute(delete(Approval).where(Approval.run_id.in_(runs)))
        pruned_runs = conn.execute(delete(Run).where(Run.id.in_(runs))).rowcount
        pruned_events = conn.execute(delete(AuditEvent).where(AuditEvent.seq <= cut_seq)).rowcount
        conn.execute(delete(AuditSeal).where(AuditSeal.to_seq <= cut_seq))  # theirs are gone
        note = sign(cut_seq, cut_hash) if sign is not None else None
        conn.execute(delete(AuditCut))
        conn.execute(AuditCut.__table__.insert().values(id=1, seq=cut_seq, hash=cut_hash,
                                                        at=time.time(), note=note))  # fmt: skip
    return Pruned(cut_seq, cut_hash, pruned_runs, pruned_events, note)


def _first_event_of_a_run_across(conn: Connection, cut_seq: int) -> int | None:
    """The position of the first event, up to the cut, of a run with events after it."""
    after = select(AuditEvent.run_id).where(
        AuditEvent.seq > cut_seq, AuditEvent.run_id.is_not(None)
    )
    return conn.execute(
        select(func.min(AuditEvent.seq)).where(
            AuditEvent.seq <= cut_seq, AuditEvent.run_id.in_(after)
        )
    ).scalar()
