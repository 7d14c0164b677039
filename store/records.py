"""Recording decisions and outcomes: rows plus the audit events that vouch for them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airlock.store.audit import APPROVAL_ORIGIN_FIELDS, OUTCOME_FIELDS, Event, decision_payload
from airlock.store.prepared import PENDING, Tx

if TYPE_CHECKING:  # the store takes the record as it is made; it does not depend on its maker
    from airlock.pipeline.run_record import RunRecord

# Columns a run may leave out (added after the record's shape was fixed).
RUN_DEFAULTS: dict[str, Any] = {"config_hash": None}


@dataclass(frozen=True)
class HoldRequest:
    """Open an approval for this run: the flow is held until a reviewer settles it."""

    approval_id: str
    expires_at: float
    request_hash: str
    required: int = 1  # distinct reviewers who must approve
    retry_key: str | None = None
    reviewer_roles: tuple[str, ...] = ()  # any one of them may decide (without role sets)
    # One per fired rule that names reviewers, each to be met by an approving reviewer (stored
    # in place of reviewer_roles: a list of lists).
    reviewer_role_sets: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True)
class DecisionRecord:
    run: RunRecord  # already redacted
    hold: HoldRequest | None = None
    joins: str | None = None  # the approval this request joins (a retry of its call)
    # False: it joins only to be refused (its idempotency key was used for another request):
    # its instance holds nothing for the approval
    holds: bool = True


@dataclass(frozen=True)
class OutcomeRecord:
    run_id: str
    at: float
    outcome: str  # forwarded | blocked | denied | expired | abandoned | upstream_error
    status: int | None
    upstream_ms: float | None = None
    detail: dict[str, Any] | None = None  # redacted by whoever reports it


@dataclass(frozen=True)
class SettleRequest:
    """The proxy ends an approval itself: EXPIRED on timeout, ABANDONED on client disconnect.

    With `leaving` (the instance whose hold ends: its client left, or it shuts down), only if no
    other live instance holds a flow for it (store/approvals.py leave_approval): an approval
    belongs to the call, not to the instance that first held it."""

    approval_id: str
    state: str
    reason: str
    at: float
    leaving: str | None = None


@dataclass(frozen=True)
class ReleaseRequest:
    """Forward an approved request: only once, whichever held flow or retry asks first."""

    approval_id: str
    at: float
    run_id: str | None = None  # the attempt that asks: recorded as the one forwarded if it wins


@dataclass(frozen=True)
class WithdrawRelease:
    """A release the proxy gave up waiting for (or failed to act on) did not forward anything:
    undone if it was committed, so that the approval's retry can still be released. `at` is the
    release's own: one that another attempt won since is left as it is."""

    approval_id: str
    at: float


@dataclass(frozen=True)
class Released:
    """What a release request found: whether this caller forwards the request (only the first
    does), and the reviewer's edit to apply to it first, if any."""

    won: bool
    edit: dict[str, Any] | None = None
    request_hash: str | None = None  # of the request as proposed (held)
    run_id: str | None = None  # of the held request
    at: float | None = None  # when it was released: what a withdrawal of it names


@dataclass(frozen=True)
class Joined:
    """A hold that found its call's approval already open (another instance opened it, or the
    same call arrived at two instances at once): the request joins that one."""

    approval_id: str
    expires_at: float
    request_hash: str


def record_decisions(
    tx: Tx, records: list[DecisionRecord]
) -> tuple[list[Event], dict[str, Joined]]:
    """The runs, their events and the approvals they open; returns the events and, by run id,
    the holds that joined an approval already open for their call instead of opening one, and
    the joins redirected to it (they were told to join the approval such a hold meant to open)."""
    rows = [RUN_DEFAULTS | r.run.as_row() for r in records]
    tx.send_many(tx.sql.insert_runs, rows)
    approval_events: list[Event] = []
    joined: dict[str, Joined] = {}
    lost: dict[str, Joined] = {}  # approvals this group meant to open, by what it joined instead
    meant: dict[str, str] = {}  # the request hash each of those was meant for
    holders = []
    for record in records:
        held_for = record.joins
        if record.joins in lost:  # the decider took the lost approval for opened (one batch)
            found = joined[record.run.id] = lost[record.joins]
            # Held only where the hold it followed would have been: the same request.
            same = found.request_hash == meant[record.joins]
            held_for = found.approval_id if same else None
        if record.hold is not None:
            found, opened = _open_or_join(tx, record, record.hold)
            approval_events += opened
            held_for = record.hold.approval_id if found is None else found.approval_id
            if found is not None:
                joined[record.run.id] = lost[record.hold.approval_id] = found
                meant[record.hold.approval_id] = record.hold.request_hash
                if found.request_hash != record.hold.request_hash:
                    held_for = None  # another request under its key: refused, holds nothing
        if held_for is not None and record.holds:
            holders.append({"approval_id": held_for, "instance": record.run.instance,
                            "at": record.run.at})  # fmt: skip
    for holder in holders:
        tx.send(tx.sql.add_holder, holder)
    _say_which_approval_was_joined(tx, rows, joined)
    events = [Event("decision", row["id"], row["at"], decision_payload(row)) for row in rows]
    # Outcomes known at decision time (a block) go in with the decision, in the same commit.
    events += [_outcome_event(row) for row in rows if row.get("outcome")]
    return events + approval_events, joined


_JOINS = re.compile(r" \(a retry: joins approval [0-9a-f]+\)$")


def joins_reason(reason: str, approval_id: str) -> str:
    """A decision's reason once its request joined an approval already open for its call."""
    return f"{_JOINS.sub('', reason)} (a retry: joins approval {approval_id})"


def _say_which_approval_was_joined(
    tx: Tx, rows: list[dict[str, Any]], joined: dict[str, Joined]
) -> None:
    """Runs that joined another approval than the decider said (another instance opened the
    call's first): their reason names the one joined, in the row and in its decision event."""
    for row in rows:
        found = joined.get(row["id"])
        if found is not None:
            row["reason"] = joins_reason(row["reason"], found.approval_id)
            tx.send(tx.sql.set_reason, {"rid": row["id"], "reason": row["reason"]})


def _open_or_join(
    tx: Tx, record: DecisionRecord, hold: HoldRequest
) -> tuple[Joined | None, list[Event]]:
    """Open the hold's approval, or join the one open for the same call: one approval per call
    across instances (the unique index one_pending_approval_per_call decides, in this
    transaction). An open approval past its expiry is expired first: the call starts anew."""
    events: list[Event] = []
    if hold.retry_key is not None:
        _, stale = tx.read(tx.sql.open_for_call, {"key": hold.retry_key})
        if stale is not None and stale[1] <= record.run.at:
            _, events = settle_approval(
                tx, stale[0], "EXPIRED", None, "approval timed out", record.run.at
            )
    row = _approval_row(record, hold)
    inserted, _ = tx.read(tx.sql.insert_approval_once, row)
    if inserted == 1:
        return None, [*events, _approval_event(row, record.run.id)]
    _, open_one = tx.read(tx.sql.open_for_call, {"key": hold.retry_key})
    if open_one is None:  # the conflict was not on the call's key: a real fault
        raise RuntimeError(f"approval {hold.approval_id} could not be opened")
    return Joined(*open_one), events


def _approval_row(record: DecisionRecord, hold: HoldRequest) -> dict[str, Any]:
    return {
        "id": hold.approval_id,
        "run_id": record.run.id,
        "state": PENDING,
        "created_at": record.run.at,
        "expires_at": hold.expires_at,
        "resolved_at": None,
        "reviewer": None,
        "reason": None,
        "request_hash": hold.request_hash,
        "instance": record.run.instance,
        "required": hold.required,
        "retry_key": hold.retry_key,
        "reviewer_roles": _stored_roles(hold),
        "released_at": None,
        "released_run": None,
        "edit": None,
    }


def _stored_roles(hold: HoldRequest) -> list[Any] | None:
    if hold.reviewer_role_sets:
        return [list(roles) for roles in hold.reviewer_role_sets]
    return list(hold.reviewer_roles) or None


def role_sets(stored_roles: Iterable[Any]) -> list[frozenset[str]]:
    """An approval's reviewer roles as the sets it must cover: a list of lists holds one set per
    fired rule (each to be met by an approving reviewer); a flat list of names, as approvals
    opened before the sets were kept, is one set (any of them)."""
    stored = list(stored_roles or ())
    if not stored:
        return []
    if all(isinstance(role, str) for role in stored):
        return [frozenset(stored)]
    return [frozenset([roles] if isinstance(roles, str) else roles) for roles in stored if roles]


def _approval_event(row: dict[str, Any], run_id: str) -> Event:
    at = row["resolved_at"] or row["created_at"]
    payload = {
        "approval_id": row["id"],
        "state": row["state"],
        "reviewer": row["reviewer"],
        "reason": row["reason"],
        "resolved_at": row["resolved_at"],
        "released_at": row.get("released_at"),
    }
    if row.get("released_run") is not None:  # absent otherwise: older events stay as they were
        payload["released_run"] = row["released_run"]
    if row["state"] == PENDING:  # the opening event also vouches for what never changes
        payload.update({name: row[name] for name in APPROVAL_ORIGIN_FIELDS})
    return Event("approval", run_id, at, payload)


def _outcome_event(run: dict[str, Any]) -> Event:
    payload = {k: run.get(k) for k in OUTCOME_FIELDS}
    if payload.get("outcome_detail") is None:
        payload.pop("outcome_detail", None)  # as _outcome_payload: absent when there is none
    return Event("outcome", run["id"], run["at"], payload)


def record_outcomes(tx: Tx, records: list[OutcomeRecord]) -> list[Event]:
    rows = [
        {
            "rid": r.run_id,
            "outcome": r.outcome,
            "status": r.status,
            "upstream_ms": r.upstream_ms,
            "outcome_detail": r.detail,
        }
        for r in records
    ]
    tx.send_many(tx.sql.set_outcomes, rows)
    return [Event("outcome", r.run_id, r.at, _outcome_payload(r)) for r in records]


def _outcome_payload(record: OutcomeRecord) -> dict[str, Any]:
    payload = {
        "outcome": record.outcome,
        "status": record.status,
        "upstream_ms": record.upstream_ms,
    }
    if record.detail is not None:  # absent, not null: older stores' events stay as they were
        payload["outcome_detail"] = record.detail
    return payload


@dataclass(frozen=True)
class Settlement:
    approval_id: str
    state: str  # the state after the attempt: ours if we won, the winner's otherwise
    won: bool
    reviewer: str | None
    reason: str | None
    votes: int = 0  # approvals gathered so far, when a quorum is required
    required: int = 1


def settle_approval(
    tx: Tx,
    approval_id: str,
    state: str,
    reviewer: str | None,
    reason: str | None,
    at: float,
) -> tuple[Settlement, list[Event]]:
    """Move a PENDING approval to a terminal state; terminal states are final, first writer wins."""
    changed, _ = tx.read(
        tx.sql.settle_pending,
        {"aid": approval_id, "state": state, "reviewer": reviewer, "reason": reason,
         "resolved_at": at},
    )  # fmt: skip
    _, row = tx.read(tx.sql.approval, {"aid": approval_id})
    if row is None:
        raise LookupError(f"no approval {approval_id}")
    now_state, now_reviewer, now_reason, run_id, created_at = row
    settlement = Settlement(approval_id, now_state, changed == 1, now_reviewer, now_reason)
    if changed != 1:
        return settlement, []
    if tx.sql.notify_settled is not None:  # delivered at commit to deciders watching it
        tx.send(tx.sql.notify_settled, {"aid": approval_id})
    event_row = {
        "id": approval_id,
        "state": state,
        "reviewer": reviewer,
        "reason": reason,
        "resolved_at": at,
        "created_at": created_at,
    }
    return settlement, [_approval_event(event_row, run_id)]


def release_approval(
    tx: Tx, approval_id: str, at: float, run_id: str | None = None
) -> tuple[Released, list[Event]]:
    """Mark an APPROVED request forwarded, by the run `run_id`; only the first caller wins
    (released exactly once). The same request again (its release committed, the answer lost:
    a group written again after its commit's acknowledgement failed) finds its own release and
    wins again, without a second event: otherwise "released" would stand for a request its
    proxy refused."""
    changed, _ = tx.read(
        tx.sql.release_once, {"aid": approval_id, "released_at": at, "released_run": run_id}
    )
    _, found = tx.read(tx.sql.approval_edit, {"aid": approval_id})
    edit, proposed, held_run, released_at, released_run = found or (None,) * 5
    if isinstance(edit, str):  # SQLite hands JSON back as text
        edit = json.loads(edit)
    if changed != 1:
        if released_at == at and released_run == run_id and run_id is not None:
            return Released(True, edit, proposed, held_run, at), []
        return Released(False), []
    event = _released_event(tx, approval_id, at, run_id)
    return Released(True, edit, proposed, held_run, at), [event]


def withdraw_release(tx: Tx, approval_id: str, at: float) -> tuple[None, list[Event]]:
    """Undo the release made at `at`, if it is still the approval's: "released" must mean
    forwarded. The chain records it (`withdrawn`: the release undone), so verify accepts it."""
    changed, _ = tx.read(tx.sql.withdraw_release, {"aid": approval_id, "at": at})
    if changed != 1:
        return None, []
    event = _released_event(tx, approval_id, None)
    event.payload["withdrawn"] = at
    return None, [event]


def _released_event(
    tx: Tx, approval_id: str, released_at: float | None, released_run: str | None = None
) -> Event:
    """The approval's event once its release changed: its state, as it now is."""
    _, row = tx.read(tx.sql.approval, {"aid": approval_id})
    assert row is not None
    state, reviewer, reason, run_id, created_at = row
    _, resolved = tx.read(tx.sql.resolved_at, {"aid": approval_id})
    event_row = {
        "id": approval_id,
        "state": state,
        "reviewer": reviewer,
        "reason": reason,
        "resolved_at": resolved[0] if resolved else None,
        "released_at": released_at,
        "released_run": released_run,
        "created_at": created_at,
    }
    return _approval_event(event_row, run_id)
