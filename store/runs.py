"""One run as an auditor reads it: its row, its approvals with their votes, and the runs that
undo it (`airlock runs show`, `airlock undo`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, Text, cast, select

from airlock.store.schema import Approval, ApprovalVote, Run

SIMULATED = "SIMULATED"  # the decision of a simulated write (pipeline/simulation.py)


class RunNotFound(LookupError):
    """No run, or more than one, has this id or prefix."""


@dataclass
class RunView:
    run: dict[str, Any]  # the runs row, column by column
    approvals: list[dict[str, Any]] = field(default_factory=list)  # each with its "votes"
    undone_by: list[dict[str, Any]] = field(default_factory=list)  # runs linked as its undo


def find_run(engine: Engine, reference: str) -> RunView:
    """The run with this id, or an unambiguous prefix of it (at least 6 characters)."""
    reference = reference.strip().lower()
    if len(reference) < 6:
        raise RunNotFound("give at least 6 characters of the run (request) id")
    with engine.connect() as conn:
        rows = conn.execute(
            select(Run).where(Run.id.startswith(reference, autoescape=True)).limit(2)
        ).all()
        if not rows:
            raise RunNotFound(f"no run with id {reference!r}")
        if len(rows) > 1:
            raise RunNotFound(f"run id {reference!r} is ambiguous: give more characters")
        run = dict(rows[0]._mapping)
        approvals = []
        for approval in conn.execute(select(Approval).where(Approval.run_id == run["id"])):
            found = dict(approval._mapping)
            votes = conn.execute(
                select(ApprovalVote).where(ApprovalVote.approval_id == found["id"])
            ).all()
            found["votes"] = [dict(vote._mapping) for vote in votes]
            approvals.append(found)
        # Later runs whose context names this one (a text match narrows, the JSON decides).
        linked = select(Run).where(
            Run.at >= run["at"], cast(Run.context, Text).contains(run["id"], autoescape=True)
        )
        undone_by = [
            dict(other._mapping)
            for other in conn.execute(linked.order_by(Run.at))
            if (other.context or {}).get("undo_of") == run["id"]
        ]
    return RunView(run, approvals, undone_by)


def simulated_runs(engine: Engine, agent: str, since: float = 0.0) -> list[dict[str, Any]]:
    """An agent's simulated writes since a time, oldest first (`airlock report`): SIMULATED,
    and those a rule held for a reviewer in the trial (`simulated` in their context)."""
    with engine.connect() as conn:
        found = conn.execute(
            select(Run).where(Run.agent == agent, Run.at >= since).order_by(Run.at)
        )
        rows = [dict(row._mapping) for row in found]
    return [r for r in rows if r["decision"] == SIMULATED or (r["context"] or {}).get("simulated")]
