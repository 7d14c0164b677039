"""Approvals as reviewers and proxies see them: what is pending, what was decided, deciding."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import and_, func, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, aliased

from airlock.store.audit import Event, append_events
from airlock.store.instances import (
    Here,
    Liveness,
    lease_of,
    liveness,
    lock_uncleared_gone,
    mark_cleared,
)
from airlock.store.names import name_key
from airlock.store.prepared import PENDING, Tx, tx_of
from airlock.store.records import (
    OutcomeRecord,
    Settlement,
    SettleRequest,
    record_outcomes,
    role_sets,
    settle_approval,
)
from airlock.store.schema import (
    Approval,
    ApprovalHolder,
    ApprovalVote,
    AuditEvent,
    AuditHead,
    Run,
    write_transaction,
)

APPROVED, DENIED, EXPIRED, ABANDONED = "APPROVED", "DENIED", "EXPIRED", "ABANDONED"
# Approving a request whose risk score is at least this needs a reason. Enforced here, the one
# path every surface (CLI, reviewer console) decides through.
REASON_FROM_RISK = 70


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
    category: str = "write"
    sensitivity: str = "medium"
    risk: int | None = None
    risk_factors: list[dict[str, Any]] | None = None
    request: dict[str, Any] | None = None  # the redacted request document
    required: int = 1
    voters: tuple[str, ...] = ()
    operation: str | None = None  # the vendor's operation (aws.s3.PutBucketPolicy)
    # A reviewer's edit, when one was made ({"params", "by", "version", …}): what goes out if
    # approved, instead of `params` as held
    edit: dict[str, Any] | None = None


def pending_count(engine: Engine) -> int:
    """How many approvals wait for a reviewer, from every instance (the expired left out)."""
    query = select(func.count()).where(Approval.state == PENDING, Approval.expires_at > time.time())
    with engine.connect() as conn:
        return int(conn.execute(query.select_from(Approval)).scalar() or 0)


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
        votes: dict[str, list[str]] = {}
        for approval_id, reviewer in session.execute(
            select(ApprovalVote.approval_id, ApprovalVote.reviewer)
            .join(Approval, Approval.id == ApprovalVote.approval_id)
            .where(Approval.state == PENDING)
            .order_by(ApprovalVote.at)
        ):
            votes.setdefault(approval_id, []).append(reviewer)
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
                category=run.category,
                sensitivity=run.sensitivity,
                risk=run.risk,
                risk_factors=run.risk_factors,
                request=run.request,
                required=approval.required or 1,
                voters=tuple(votes.get(approval.id, ())),
                operation=run.operation,
                edit=approval.edit,
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


def settled_after(engine: Engine, seq: int | None) -> tuple[int, set[str]]:
    """The audit chain's last position, and the approvals its events after `seq` settled: a
    decider watching many held approvals reads only what was appended since it last looked
    (every settlement appends an approval event; positions commit in order, the chain's head
    being locked until each commit). With `seq` None, only the position."""
    with engine.connect() as conn:
        head = conn.execute(select(AuditHead.seq)).scalar_one()
        if seq is None or head <= seq:
            return head, set()
        payloads = conn.execute(
            select(AuditEvent.payload).where(
                AuditEvent.seq > seq, AuditEvent.seq <= head, AuditEvent.kind == "approval"
            )
        ).scalars()
        settled = set()
        for text in payloads:
            payload = json.loads(text)
            if payload.get("state") != PENDING:
                settled.add(payload["approval_id"])
    return head, settled


def resolve_approval(
    engine: Engine,
    reference: str,
    state: str,
    reviewer: str,
    reason: str | None,
    reviewers: Any = None,
    edit: dict[str, Any] | None = None,
) -> Settlement:
    """A reviewer approves or denies; `reference` is an approval id or an unambiguous prefix.

    With a quorum, each approval is a vote and the request is released when enough distinct
    reviewers have approved; one denial ends it. The agent that sent the request never counts.
    An approval may carry an edit (pipeline/edits.py: params and where they are written): the
    edited request is what is released, and every vote must approve the same edit, so an edit
    after a vote restarts the count.
    """
    if state not in (APPROVED, DENIED):
        raise ApprovalError(f"a reviewer can only approve or deny, not {state}")
    if reason:
        # Stored, chained and sent to webhooks: a credential a reviewer pastes into it ("the
        # new key is sk_live_…") is redacted as everything else at rest. Imported here: the
        # detectors take ~0.2 s to load, which the console's other commands need not wait for.
        from airlock.pipeline.redaction import redact_text

        reason = redact_text(reason)
    now = time.time()
    with write_transaction(engine) as conn:
        approval_id = _full_id(conn, reference)
        # Locked until commit: reviewers voting at once are counted one after the other.
        current = conn.execute(
            select(Approval).where(Approval.id == approval_id).with_for_update()
        ).one()
        agent, risk = conn.execute(
            select(Run.agent, Run.risk).where(Run.id == current.run_id)
        ).one()
        _check_can_decide(current, agent, reviewer, now)
        _check_reason(state, reason, risk)
        refusal = reviewers.refusal(reviewer, current.reviewer_roles or ()) if reviewers else None
        if refusal:
            raise ApprovalError(refusal)
        tx = tx_of(conn)
        if state == DENIED:
            if edit is not None:
                raise ApprovalError("an edit goes with an approval, not a denial")
            settlement, events = settle_approval(tx, approval_id, DENIED, reviewer, reason, now)
        else:
            edit = _as_vote_on(current, approval_id, edit)
            edited = _edit(conn, current, edit, reviewer, now) if edit is not None else []
            version = (edit is not None and edited[0].payload["version"]) or (
                (current.edit or {}).get("version")
            )
            settlement, events = _vote(conn, current, reviewer, reason, now, version, reviewers)
            events = [*edited, *events]
        append_events(tx, events)
    return settlement


def _check_reason(state: str, reason: str | None, risk: int | None) -> None:
    if reason and reason.strip():
        return
    if state == DENIED:
        raise ApprovalError("a denial needs a reason: the agent is told it (--reason)")
    if (risk or 0) >= REASON_FROM_RISK:
        raise ApprovalError(
            f"approving a request of risk {risk} (≥ {REASON_FROM_RISK}) needs a reason, "
            "recorded in the audit trail (--reason)"
        )


def _check_can_decide(approval: Any, agent: str, reviewer: str, now: float) -> None:
    if not name_key(reviewer):
        raise ApprovalError("a decision needs the reviewer's name (--reviewer): it is blank")
    if approval.state != PENDING:
        by = f" (by {approval.reviewer})" if approval.reviewer else ""
        raise ApprovalError(
            f"approval {approval.id} is already {approval.state}{by}; terminal states are final"
        )
    if approval.expires_at <= now:
        raise ApprovalError(
            f"approval {approval.id} expired {now - approval.expires_at:.0f} s ago; "
            "the request was not forwarded and cannot be released now"
        )
    if name_key(reviewer) == name_key(agent):  # as a person reads them: look-alikes too
        raise ApprovalError(
            f"{reviewer!r} reads as {agent!r}, the agent that sent this request: nobody "
            "approves their own request"
        )


def _as_vote_on(
    approval: Any, approval_id: str, edit: dict[str, Any] | None
) -> dict[str, Any] | None:
    """An approval that carries an edit is approved as edited, and only by a reviewer who says
    so: one who approves without the edit has not seen it (`airlock pending` shows the request
    as held), so the vote is refused, saying the edit and how to agree with it; the same edit
    again is a vote for it (None: no new version, the count goes on)."""
    held = approval.edit or {}
    if not held:
        return edit
    if edit is None:
        agree = " ".join(f"--set {name}={value}" for name, value in held["params"].items())
        raise ApprovalError(
            f"{approval_id[:8]} was edited by {held.get('by')} (version {held.get('version')}): "
            f"approving it approves that edit; to agree, approve with the same edit ({agree}), "
            "or deny"
        )
    return None if edit.get("params") == held.get("params") else edit


def _edit(conn: Any, approval: Any, edit: dict[str, Any], reviewer: str, now: float) -> list[Event]:
    """Record a new version of the edit on the approval (and in the chain)."""
    version = ((approval.edit or {}).get("version") or 0) + 1
    record = {**edit, "by": reviewer, "at": now, "version": version}
    conn.execute(update(Approval).where(Approval.id == approval.id).values(edit=record))
    return [Event("edit", approval.run_id, now, {"approval_id": approval.id, **record})]


def _vote(
    conn: Any, approval: Any, reviewer: str, reason: str | None, now: float,
    version: int | None = None, reviewers: Any = None,
) -> tuple[Settlement, list[Event]]:  # fmt: skip
    """A reviewer's approval of the current version of the request (edited or not); votes
    for an earlier version no longer count. The vote that completes the count must leave
    every fired rule's reviewer roles met by someone who voted (the one reviewer, without a
    quorum)."""
    required = approval.required or 1
    votes = conn.execute(
        select(ApprovalVote.reviewer, ApprovalVote.edit_version)
        .where(ApprovalVote.approval_id == approval.id)
        .order_by(ApprovalVote.at)
    ).all()
    voters = [who for who, voted in votes if voted == version]
    # One person, however their name is spelt (" ALICE" is alice): as the self-approval check
    # reads names.
    same = next((who for who, _ in votes if name_key(who) == name_key(reviewer)), None)
    if same is not None and same in voters:
        raise ApprovalError(
            f"{reviewer} already approved {approval.id}: {len(voters)} of {required} distinct "
            "reviewers so far"
        )
    if reviewers is not None and len(voters) + 1 >= required:
        missing = reviewers.uncovered([*voters, reviewer], approval.reviewer_roles)
        if missing:
            _refuse_uncovered(approval.id, reviewer, voters, required, missing)
    values = {"at": now, "reason": reason, "edit_version": version}
    if same is not None:  # their vote was for an earlier version
        reviewer = same
        conn.execute(
            update(ApprovalVote)
            .where(ApprovalVote.approval_id == approval.id, ApprovalVote.reviewer == reviewer)
            .values(**values)
        )
    else:
        conn.execute(
            insert(ApprovalVote).values(approval_id=approval.id, reviewer=reviewer, **values)
        )
    voters.append(reviewer)
    payload = {"approval_id": approval.id, "reviewer": reviewer, "reason": reason, "at": now}
    if version is not None:
        payload["edit_version"] = version
    if reviewers is not None and reviewers.configured:
        # The roles the reviewers file in force gave: an auditor reads what a quorum rested
        # on, whatever the file says later.
        payload["reviewer_roles"] = sorted(reviewers.roles_of(reviewer) or ())
    vote = Event("vote", approval.run_id, now, payload)
    if len(voters) < required:
        waiting = Settlement(approval.id, PENDING, True, reviewer, reason, len(voters), required)
        return waiting, [vote]
    settlement, events = settle_approval(
        tx_of(conn), approval.id, APPROVED, ", ".join(voters), reason, now
    )
    return replace(settlement, votes=len(voters), required=required), [vote, *events]


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


def expire_orphaned_approvals(engine: Engine, here: Here) -> list[str]:
    """PENDING approvals nobody will ever release become EXPIRED: those whose every holder (the
    instance that opened it, and each one a retry of the call joined it from) is gone
    (store/instances.py), and any past its expiry whatever held it. An approval another live
    instance holds a retry for stays. Returns the ids expired."""
    with write_transaction(engine) as conn:
        return _expire_orphaned_approvals(conn, here)


def _expire_orphaned_approvals(conn: Any, here: Here) -> list[str]:
    now = time.time()
    # Locked before their holders are read, as leave_approval does (PostgreSQL: a join that
    # wrote its holder row first is waited for and seen; SQLite's writers are serial).
    pending = select(Approval.id, Approval.instance, Approval.expires_at).where(
        Approval.state == PENDING
    )
    candidates = conn.execute(pending.order_by(Approval.id).with_for_update()).all()
    holders = _holders(conn, [approval_id for approval_id, _, _ in candidates])
    named = {opener for _, opener, _ in candidates} | {
        instance for found in holders.values() for instance in found
    }
    judged = liveness(conn, here, named)

    def gone(approval_id: str, opener: str) -> bool:
        return all(judged.gone(instance) for instance in holders.get(approval_id, [opener]))

    orphaned = [
        (approval_id, "the proxies holding it stopped")
        for approval_id, opener, _ in candidates
        if gone(approval_id, opener)
    ] + [
        (approval_id, "approval timed out")
        for approval_id, opener, expires_at in candidates
        if expires_at <= now and not gone(approval_id, opener)
    ]
    tx = tx_of(conn)
    expired = []
    for approval_id, reason in orphaned:
        settlement, events = settle_approval(tx, approval_id, EXPIRED, None, reason, now)
        if settlement.won:
            append_events(tx, events)
            expired.append(approval_id)
    return expired


def expire_overdue_approvals(engine: Engine, limit: int = 500) -> list[str]:
    """PENDING approvals past their expiry become EXPIRED. A flow held until its approval
    expires settles it itself; one answered "pending" first (its hold window is shorter) leaves
    it for a retry that may never come, and without this the record would say PENDING until
    some instance restarted. Every running instance calls it on its sync; one wins each. A
    read first: usually there are none."""
    now = time.time()
    overdue = select(Approval.id).where(Approval.state == PENDING, Approval.expires_at <= now)
    with engine.connect() as conn:
        ids = conn.execute(overdue.limit(limit)).scalars().all()
    if not ids:
        return []
    expired = []
    with write_transaction(engine) as conn:
        tx = tx_of(conn)
        for approval_id in ids:
            settlement, events = settle_approval(
                tx, approval_id, EXPIRED, None, "approval timed out", now
            )
            if settlement.won:
                append_events(tx, events)
                expired.append(approval_id)
    return expired


def leave_approval(
    tx: Tx, job: SettleRequest, here: Here | None = None
) -> tuple[Settlement, list[Event]]:
    """An instance's hold ends (its client left, or it shuts down): its holder row goes, and the
    approval is settled as asked unless another holder remains that is not gone (as
    expire_orphaned_approvals rules). Then it stays PENDING for the others' flows and its
    reviewers; only this attempt ends (answered with the approval's state, not won).

    On PostgreSQL the approval row is locked first: a join's holder insert (its foreign key takes
    a KEY SHARE lock) waits for this commit, or this for the join's, so a join committed first is
    seen here. Left open: a retry whose decider found the approval PENDING (decider/core.py
    _joinable) just before this commit settles it still joins it after; that attempt is then
    refused with this settlement, as a flow held when it was made would be."""
    assert job.leaving is not None
    here = Here(job.leaving) if here is None else here
    tx.read(tx.sql.lock_approval, {"aid": job.approval_id})
    tx.send(tx.sql.remove_holder, {"aid": job.approval_id, "instance": job.leaving})
    rows = tx.read_all(tx.sql.holders, {"aid": job.approval_id})
    leases = {row[0]: lease_of(row[1:]) for row in rows}
    judged = Liveness(here, {k: v for k, v in leases.items() if v is not None}, time.time())
    if all(judged.gone(instance) for instance in leases):
        return settle_approval(tx, job.approval_id, job.state, None, job.reason, job.at)
    _, row = tx.read(tx.sql.approval, {"aid": job.approval_id})
    if row is None:
        raise LookupError(f"no approval {job.approval_id}")
    state, reviewer, reason, _, _ = row
    return Settlement(job.approval_id, state, False, reviewer, reason), []


def _holders(conn: Any, approval_ids: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    if approval_ids:
        rows = conn.execute(
            select(ApprovalHolder.approval_id, ApprovalHolder.instance).where(
                ApprovalHolder.approval_id.in_(approval_ids)
            )
        )
        for approval_id, instance in rows:
            found.setdefault(approval_id, []).append(instance)
    return found


UNKNOWN = "unknown"  # released for forwarding when its proxy stopped: it may have been sent
NOT_SENT = "not_sent"  # held when its proxy stopped, never released: it was not sent


def settle_orphaned_runs(engine: Engine, here: Here) -> dict[str, int]:
    """After expire_orphaned_approvals: runs a gone instance left without an outcome say what is
    known of them. A decision is committed before its request is released, so an ALLOW, or the
    attempt that won an approval's release, with no outcome is UNKNOWN: it may have reached the
    upstream; an attempt held and never released (the opener of an approval a retry released,
    too) is NOT_SENT. Returns counts by outcome.
    """
    with write_transaction(engine) as conn:
        return _settle_orphaned_runs(conn, here)


def _settle_orphaned_runs(conn: Any, here: Here) -> dict[str, int]:
    now, counts = time.time(), {UNKNOWN: 0, NOT_SENT: 0}
    won, legacy = aliased(Approval), aliased(Approval)
    orphans = conn.execute(
        select(Run.id, Run.instance, Run.decision, won.id, legacy.id)
        .outerjoin(won, won.released_run == Run.id)
        # Released before the winning run was recorded: taken as the opener's, as it was.
        .outerjoin(
            legacy,
            and_(
                legacy.run_id == Run.id,
                legacy.released_run.is_(None),
                legacy.released_at.is_not(None),
            ),
        )
        .where(Run.outcome.is_(None))  # the index runs_without_outcome
    ).all()
    judged = liveness(conn, here, {instance for _, instance, _, _, _ in orphans})
    records = []
    for run_id, instance, decision, released, released_before in orphans:
        if not judged.gone(instance):
            continue
        forwarded = released is not None or released_before is not None
        held = decision == "REQUIRE_APPROVAL" and not forwarded
        outcome = NOT_SENT if held else UNKNOWN
        counts[outcome] += 1
        records.append(OutcomeRecord(run_id, now, outcome, None, None))
    if records:
        tx = tx_of(conn)
        append_events(tx, record_outcomes(tx, records))
    return counts


def settle_what_gone_instances_left(engine: Engine, here: Here) -> tuple[int, dict[str, int]]:
    """Approvals whose every holder is gone (never to be released: no reviewer may approve
    them) expire; runs gone instances left without an outcome say what is known of them; their
    leases are marked cleared. Run at an instance's start, and by every running instance once
    another's lease lapses or ends: in one transaction that first locks the leases not yet
    cleared (PostgreSQL), so two instances doing it at once settle each run once.
    Returns (approvals expired, runs settled by outcome)."""
    with write_transaction(engine) as conn:
        leased = lock_uncleared_gone(conn, here)
        expired = _expire_orphaned_approvals(conn, here)
        counts = _settle_orphaned_runs(conn, here)
        mark_cleared(conn, leased, time.time())
    return len(expired), counts


@dataclass(frozen=True)
class JoinableApproval:
    id: str
    state: str
    reviewer: str | None
    reason: str | None
    expires_at: float
    released_at: float | None
    request_hash: str


def _refuse_uncovered(
    approval_id: str, reviewer: str, voters: list[str], required: int, missing: list[list[str]]
) -> None:
    needs = " and ".join(f"one of {roles}" for roles in missing)
    by = f"{reviewer} and {', '.join(voters)}" if voters else reviewer
    what = "approval" if required == 1 else f"{required} approvals"
    raise ApprovalError(
        f"{approval_id} needs a reviewer in {needs} as well (each rule that holds it names "
        f"its own reviewers): {by} cannot make its {what} alone"
    )


def approval_terms(
    engine: Engine, approval_id: str
) -> tuple[int, tuple[tuple[str, ...], ...]] | None:
    """What an approval asked: the reviewers it required and the role sets they had to meet
    (one per rule that named reviewers; empty: anyone); None when there is no such approval."""
    query = select(Approval.required, Approval.reviewer_roles).where(Approval.id == approval_id)
    with engine.connect() as conn:
        row = conn.execute(query).first()
    if row is None:
        return None
    sets = tuple(tuple(sorted(roles)) for roles in role_sets(row.reviewer_roles or ()))
    return row.required or 1, sets


def find_approval_for_retry(engine: Engine, retry_key: str) -> JoinableApproval | None:
    """The newest approval opened for this retry key (an SDK retrying the same call)."""
    query = (
        select(Approval)
        .where(Approval.retry_key == retry_key)
        .order_by(Approval.created_at.desc())
        .limit(1)
    )
    with engine.connect() as conn:
        row = conn.execute(query).first()
    if row is None:
        return None
    return JoinableApproval(
        row.id, row.state, row.reviewer, row.reason, row.expires_at, row.released_at,
        row.request_hash,
    )  # fmt: skip


def run_of_approval(engine: Engine, reference: str) -> dict[str, Any]:
    """The run an approval holds (for an edit: its mapping and its recorded request)."""
    with engine.connect() as conn:
        approval_id = _full_id(conn, reference)
        row = conn.execute(
            select(Run).join(Approval, Approval.run_id == Run.id).where(Approval.id == approval_id)
        ).one()
    return dict(row._mapping)
