"""Seals on the audit chain, on SQLite and PostgreSQL: each group a writer commits is signed
with the audit key, so that someone who can write the database but does not hold the key
cannot append, rewrite, cut or unseal the chain without `verify_audit` (given the public key)
naming it."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Engine

from airlock.store.anchor import load_or_create_key
from airlock.store.approvals import APPROVED, resolve_approval
from airlock.store.audit import Event, append_events, chain_hash, verify_audit
from airlock.store.prepared import tx_of
from airlock.store.records import DecisionRecord, OutcomeRecord
from airlock.store.retention import prune
from airlock.store.schema import (
    AuditEvent,
    AuditHead,
    AuditSeal,
    Run,
    open_engine,
    write_transaction,
)
from airlock.store.seals import Sealer, seal_with, seals_removed
from airlock.store.writer import GroupWriter, Pending
from tests.test_store import held, run_row


@pytest.fixture
def sealed(engine: Engine, tmp_path: Path) -> tuple[Engine, Ed25519PublicKey]:
    """Decisions, a hold, a reviewer's approval and an outcome, each group sealed by its writer
    (the decider's group writer, a reviewer's CLI holding the key): 9 events in 4 groups."""
    key = load_or_create_key(tmp_path)
    seal_with(engine, Sealer(key))
    writer = GroupWriter(engine)
    rows = [run_row() for _ in range(3)]
    writer.write_group([Pending(i, DecisionRecord(row)) for i, row in enumerate(rows)])
    row, hold = held()
    writer.write_group([Pending(0, DecisionRecord(row, hold))])
    resolve_approval(engine, hold.approval_id, APPROVED, "alice", None)
    outcome = OutcomeRecord(rows[2].id, time.time(), "forwarded", 200, 3.0)
    writer.write_group([Pending(0, outcome)])
    writer.close()
    return engine, key.public_key()


def _problem(engine: Engine, public: Ed25519PublicKey) -> str:
    """The break verify stopped at, then each span it found in no seal."""
    report = verify_audit(engine, [public])
    assert not report.ok
    return "; ".join(filter(None, (report.problem, *report.unsealed)))


def _forger(engine: Engine) -> Engine:
    """Someone who can write the database, with Airlock's own library, but not the key."""
    return open_engine(engine.url.render_as_string(hide_password=False))


def test_every_group_is_sealed_and_an_intact_chain_verifies(sealed: Any) -> None:
    engine, public = sealed
    report = verify_audit(engine, [public])
    assert report.ok, report.problem
    with engine.connect() as conn:
        spans = conn.execute(select(AuditSeal.from_seq, AuditSeal.to_seq)).all()
        head = conn.execute(select(AuditHead.seq)).scalar()
    spans = sorted(spans)
    assert len(spans) >= 4 and spans[0][0] == 1 and spans[-1][1] == head
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(spans))


def test_an_event_appended_without_the_key_is_caught(sealed: Any) -> None:
    """A forwarded write made to look refused: a later outcome event, well chained, and the
    run's row edited to match. Only the seals can tell."""
    engine, public = sealed
    forger = _forger(engine)
    with forger.connect() as conn:
        last = conn.execute(select(AuditEvent).where(AuditEvent.kind == "outcome")).one()
    payload = {**json.loads(last.payload), "outcome": "blocked"}
    with write_transaction(forger) as conn:
        append_events(tx_of(conn), [Event("outcome", last.run_id, time.time(), payload)])
        conn.execute(update(Run).where(Run.id == last.run_id).values(outcome="blocked"))
    forger.dispose()
    assert verify_audit(engine).ok  # the chain and the records alone cannot tell
    assert "(1 outcome) lie in no seal: appended by someone who does not hold the" in _problem(
        engine, public
    )


def test_a_chain_rewritten_consistently_without_the_key_is_caught(sealed: Any) -> None:
    engine, public = sealed
    with engine.begin() as conn:
        events = conn.execute(select(AuditEvent).order_by(AuditEvent.seq)).all()
        prev = events[0].prev_hash
        for event in events:  # every hash recomputed: the chain itself holds
            payload = event.payload.replace('"ALLOW"', '"BLOCK"') if event.seq == 2 else None
            payload = payload or event.payload
            digest = chain_hash(prev, event.seq, event.at, event.kind, event.run_id, payload)
            conn.execute(update(AuditEvent).where(AuditEvent.seq == event.seq)
                         .values(payload=payload, prev_hash=prev, hash=digest))  # fmt: skip
            prev = digest
        conn.execute(update(AuditHead).values(hash=prev))
    problem = _problem(engine, public)
    assert "does not match them: they were rewritten, or the seal forged" in problem


def test_seals_made_with_another_key_are_not_vouched_for(sealed: Any) -> None:
    engine, public = sealed
    forger = _forger(engine)
    seal_with(forger, Sealer(Ed25519PrivateKey.generate()))
    with write_transaction(forger) as conn:
        append_events(tx_of(conn), [Event("vote", None, time.time(), {"approval_id": "y"})])
    forger.dispose()
    assert "which was not given: pass its --public-key" in _problem(engine, public)


def test_a_cut_tail_leaves_its_seal_behind(sealed: Any) -> None:
    engine, public = sealed
    with engine.begin() as conn:
        head = conn.execute(select(AuditHead.seq)).scalar()
        previous = conn.execute(select(AuditEvent).where(AuditEvent.seq == head - 1)).one()
        conn.execute(delete(AuditEvent).where(AuditEvent.seq == head))
        conn.execute(update(AuditHead).values(seq=previous.seq, hash=previous.hash))
    assert f"a seal vouches for events up to #{head}" in _problem(engine, public)


def test_seals_wiped_are_caught_by_the_checkpoint_that_says_where_they_begin(
    sealed: Any,
) -> None:
    engine, _ = sealed
    assert seals_removed(engine, 1) is None
    with engine.begin() as conn:
        conn.execute(delete(AuditSeal))
    assert "the seals from there were removed" in (seals_removed(engine, 1) or "")


def test_retention_keeps_the_seals_of_what_remains(sealed: Any) -> None:
    engine, public = sealed
    with engine.connect() as conn:
        second = conn.execute(select(AuditEvent.at).where(AuditEvent.seq == 2)).scalar()
    pruned = prune(engine, second + 1e-6)  # inside the first group: its seal stays
    assert pruned is not None and pruned.cut >= 1
    with engine.connect() as conn:
        first = conn.execute(select(func.min(AuditSeal.from_seq))).scalar()
    assert first is not None and first <= pruned.cut + 1
    report = verify_audit(engine, [public])
    assert report.ok, report.problem
    assert seals_removed(engine, 1) is None


def test_a_vote_moved_to_another_edit_version_is_caught(sealed: Any) -> None:
    """A vote counts for the version of the edit it approved. Someone who can write the database
    moves alice's vote on the unedited request to edit version 1: verify names the vote; and
    when bob's edit then reaches the quorum with her stale vote and the row is put back, the
    approval is named for lacking the votes it needs."""
    import uuid

    from airlock.store.records import HoldRequest
    from airlock.store.schema import ApprovalVote

    engine, public = sealed
    row = run_row("REQUIRE_APPROVAL")
    hold = HoldRequest(uuid.uuid4().hex, time.time() + 60, "h" * 64, required=2)
    writer = GroupWriter(engine)
    writer.write_group([Pending(0, DecisionRecord(row, hold))])
    writer.close()
    resolve_approval(engine, hold.approval_id, APPROVED, "alice", "fine as it is")
    assert verify_audit(engine, [public]).ok

    forger = _forger(engine)
    with forger.begin() as conn:
        mine = ApprovalVote.approval_id == hold.approval_id
        conn.execute(update(ApprovalVote).where(mine).values(edit_version=1))
    said = f"the vote by alice on {hold.approval_id} was edited: edit_version is 1"
    assert said in _problem(engine, public)

    edit = {"params": {"amount": 999999}, "locations": {"amount": ["body", "amount"]}}
    settled = resolve_approval(engine, hold.approval_id, APPROVED, "bob", "raised", edit=edit)
    assert settled.state == APPROVED  # alice's stale vote was counted
    with forger.begin() as conn:
        alices = (mine, ApprovalVote.reviewer == "alice")
        conn.execute(update(ApprovalVote).where(*alices).values(edit_version=None))
    forger.dispose()
    problem = _problem(engine, public)
    assert f"approves approval {hold.approval_id} with 1 of the 2 distinct" in problem
    assert "version 1 of its edit" in problem


def test_verify_reads_the_store_as_of_one_moment_while_a_proxy_writes(
    sealed: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy commits a group while verify walks the chain. On PostgreSQL, READ COMMITTED gave
    each of verify's queries a snapshot of its own: the head (or the runs) read after the walk
    saw the new group, and an untouched store was reported BROKEN. verify vouches for the store
    as it was when it began; the group is verified the next time."""
    import airlock.store.audit as audit

    engine, public = sealed
    before = verify_audit(engine, [public]).events
    walk = audit._events

    def walk_while_a_proxy_writes(conn: Any) -> Any:
        for number, event in enumerate(walk(conn)):
            if number == 1:
                writer = GroupWriter(engine)
                writer.write_group([Pending(0, DecisionRecord(run_row()))])
                writer.close()
            yield event

    monkeypatch.setattr(audit, "_events", walk_while_a_proxy_writes)
    report = verify_audit(engine, [public])
    assert report.ok and report.events == before, report.problem
    monkeypatch.undo()
    report = verify_audit(engine, [public])
    assert report.ok and report.events == before + 1, report.problem


def test_seals_wiped_are_caught_with_the_key_alone_no_checkpoint_at_hand(
    sealed: Any, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An auditor with the public key but not the proxy's data directory (no checkpoint saying
    where sealing began): every seal deleted and an outcome forged is still refused, unless
    the store is said to be from before seals."""
    from airlock.console.cli import main
    from airlock.store.anchor import public_key_text

    engine, public = sealed
    forger = _forger(engine)
    with forger.connect() as conn:
        last = conn.execute(select(AuditEvent).where(AuditEvent.kind == "outcome")).one()
    with write_transaction(forger) as conn:
        conn.execute(delete(AuditSeal))
        payload = {**json.loads(last.payload), "outcome": "blocked"}
        append_events(tx_of(conn), [Event("outcome", last.run_id, time.time(), payload)])
        conn.execute(update(Run).where(Run.id == last.run_id).values(outcome="blocked"))
    forger.dispose()
    elsewhere = tmp_path / "auditor"
    elsewhere.mkdir()
    verify = ["audit", "verify", "--db", db_url, "--data-dir", str(elsewhere),
              "--public-key", public_key_text(public)]  # fmt: skip
    assert main(verify) == 1
    assert "carry no seal, and no event does: the seals were removed" in capsys.readouterr().err
    assert main([*verify, "--before-seals"]) == 0
    assert "not sealed: no event carries a seal" in capsys.readouterr().out


def test_an_unsealed_span_is_reported_and_everything_after_it_still_checked(sealed: Any) -> None:
    """An outcome appended without the key, then a group the proxy sealed, then that group's
    run edited: verify names the span, and goes past it to the edit (it stopped at the span)."""
    engine, public = sealed
    forger = _forger(engine)
    with forger.connect() as conn:
        last = conn.execute(select(AuditEvent).where(AuditEvent.kind == "outcome")).one()
    with write_transaction(forger) as conn:
        payload = {**json.loads(last.payload), "outcome": "blocked"}
        append_events(tx_of(conn), [Event("outcome", last.run_id, time.time(), payload)])
        conn.execute(update(Run).where(Run.id == last.run_id).values(outcome="blocked"))
    later = run_row()
    writer = GroupWriter(engine)
    writer.write_group([Pending(0, DecisionRecord(later))])
    writer.close()
    report = verify_audit(engine, [public])
    assert report.problem is None and report.events == 10 and report.runs == 5
    assert report.unsealed == ("events #9..#9 (1 outcome) lie in no seal: appended by someone "
                               "who does not hold the audit key",)  # fmt: skip

    with write_transaction(forger) as conn:
        conn.execute(update(Run).where(Run.id == later.id).values(decision="BLOCK"))
    forger.dispose()
    report = verify_audit(engine, [public])
    assert report.problem == (f"run {later.id} was edited: decision is 'BLOCK' but the audit "
                              "chain recorded 'ALLOW'")  # fmt: skip
    assert len(report.unsealed) == 1 and not report.ok


def test_a_checkpoint_cut_short_by_a_full_disk_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk left an empty `000000000502.checkpoint` (found by review): a checkpoint is
    whole or not there, its `latest` untouched."""
    import errno

    from airlock.store.anchor import CHECKPOINTS, write_checkpoint

    write_checkpoint(tmp_path, "first note", 10)
    real_write = Path.write_text

    def full_after_a_few_bytes(path: Path, text: str, *args: Any, **kwargs: Any) -> int:
        real_write(path, text[:3], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_after_a_few_bytes)
    with pytest.raises(OSError, match="No space left"):
        write_checkpoint(tmp_path, "second note", 20)
    monkeypatch.undo()
    folder = tmp_path / CHECKPOINTS
    assert sorted(p.name for p in folder.iterdir()) == ["000000000010.checkpoint", "latest"]
    assert (folder / "latest").read_text() == "first note"
