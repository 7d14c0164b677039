"""Retention: what is older than the window goes, whole runs at a time, and the chain still
proves the rest, from a cut signed outside the database."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Engine

from airlock.console.cli import main
from airlock.store.anchor import Anchoring
from airlock.store.approvals import APPROVED, resolve_approval
from airlock.store.audit import verify_audit
from airlock.store.records import DecisionRecord, HoldRequest
from airlock.store.retention import DAY, prune
from airlock.store.schema import (
    Approval,
    ApprovalHolder,
    ApprovalVote,
    AuditCut,
    AuditEvent,
    Run,
)
from tests.test_store import run_row, write

OLD = time.time() - 200 * DAY


def a_long_history(engine: Engine) -> tuple[list[str], str]:
    """Three old runs, one old request approved today (its events straddle the window), two
    new runs. Returns the old runs' ids and the straddling run's id."""
    old = [run_row("ALLOW", at=OLD + i) for i in range(3)]
    straddling = run_row("REQUIRE_APPROVAL", at=OLD + 10)
    hold = HoldRequest(uuid.uuid4().hex, time.time() + 60, "h" * 64)
    write(engine, *(DecisionRecord(r) for r in old), DecisionRecord(straddling, hold))
    resolve_approval(engine, hold.approval_id, APPROVED, "alice", "late but fine")
    write(engine, DecisionRecord(run_row("ALLOW")), DecisionRecord(run_row("BLOCK")))
    return [r.id for r in old], straddling.id


def count(engine: Engine, table: type) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def test_prune_takes_whole_runs_and_the_rest_still_verifies(engine: Engine) -> None:
    old, straddling = a_long_history(engine)
    pruned = prune(engine, time.time() - 180 * DAY)
    assert pruned is not None and (pruned.runs, pruned.events) == (3, 3)
    with engine.connect() as conn:
        kept = set(conn.execute(select(Run.id)).scalars())
    assert straddling in kept and not kept & set(old)
    assert count(engine, Approval) == 1  # the straddling run's approval stays with it
    report = verify_audit(engine)
    assert report.ok and report.runs == 3, report
    assert prune(engine, time.time() - 180 * DAY) is None  # nothing more is old enough


def test_prune_forgets_instances_stopped_and_settled_before_the_window(engine: Engine) -> None:
    """One lease row per proxy start: those cleared before the window go, a running one and
    one cleared lately stay."""
    from airlock.store.instances import Here, renew_lease
    from airlock.store.schema import InstanceLease

    for name in ("box-1.old", "box-2.lately", "box-3.running"):
        renew_lease(engine, name, Here(name, host="box"))
    with engine.begin() as conn:
        for name, cleared in (("box-1.old", 200 * DAY), ("box-2.lately", DAY)):
            conn.execute(update(InstanceLease).where(InstanceLease.id == name)
                         .values(cleared_at=time.time() - cleared))  # fmt: skip
    prune(engine, time.time() - 180 * DAY)
    with engine.connect() as conn:
        kept = sorted(conn.execute(select(InstanceLease.id)).scalars())
    assert kept == ["box-2.lately", "box-3.running"]


def test_the_cut_is_signed_and_a_deeper_cut_by_hand_is_caught(
    engine: Engine, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_long_history(engine)
    anchoring = Anchoring(engine, tmp_path, retention_days=180)
    anchoring.prune()
    anchoring.checkpoint()
    # The test's decider does not seal (the proxy's does): the key is in tmp_path all the same.
    verify = ["audit", "verify", "--db", db_url, "--data-dir", str(tmp_path), "--before-seals"]
    assert main(verify) == 0
    assert "anchored" in capsys.readouterr().out

    # Someone who can write the database deletes the next run too and moves the cut to match.
    with engine.begin() as conn:
        first = conn.execute(select(AuditEvent).order_by(AuditEvent.seq)).first()
        assert first is not None and first.kind == "decision"
        approvals = select(Approval.id).where(Approval.run_id == first.run_id)
        conn.execute(delete(ApprovalVote).where(ApprovalVote.approval_id.in_(approvals)))
        conn.execute(delete(ApprovalHolder).where(ApprovalHolder.approval_id.in_(approvals)))
        conn.execute(delete(Approval).where(Approval.run_id == first.run_id))
        conn.execute(delete(AuditEvent).where(AuditEvent.run_id == first.run_id))
        conn.execute(delete(Run).where(Run.id == first.run_id))
        new_first = conn.execute(select(AuditEvent).order_by(AuditEvent.seq)).first()
        assert new_first is not None
        conn.execute(update(AuditCut).values(seq=new_first.seq - 1, hash=new_first.prev_hash))
    assert verify_audit(engine).ok  # consistent inside the database...
    assert main(verify) == 1  # ...but not with the signed cut
    assert "no signed retention cut vouches for that" in capsys.readouterr().err


def test_the_cut_moves_back_until_no_kept_event_belongs_to_a_pruned_run(engine: Engine) -> None:
    """Moving the cut back before a straddling run can put another run across it: a request
    held long ago (its approval denied a little later), then a long call decided between the
    two and answered today. Both are kept whole, the run wholly before them is pruned, and the
    store still verifies."""
    from airlock.store.records import OutcomeRecord, SettleRequest
    from airlock.store.writer import GroupWriter, Pending

    long_ago, held, long_call = (run_row("ALLOW", at=OLD - 10), run_row("REQUIRE_APPROVAL", at=OLD),
                                 run_row("ALLOW", at=OLD + 60))  # fmt: skip
    hold = HoldRequest(uuid.uuid4().hex, OLD + 600, "h" * 64)
    writer = GroupWriter(engine)
    for job in (
        DecisionRecord(long_ago),  # 1
        DecisionRecord(held, hold),  # 2, and 3: its approval opens
        DecisionRecord(long_call),  # 4
        SettleRequest(hold.approval_id, "DENIED", "no", OLD + 120),  # 5
        OutcomeRecord(long_call.id, time.time(), "forwarded", 200, 5.0),  # 6: today
    ):
        assert all(ok for _, ok, _ in writer.write_group([Pending(0, job)]))
    writer.close()

    pruned = prune(engine, time.time() - 180 * DAY)
    report = verify_audit(engine)
    assert report.ok and (report.runs, report.approvals) == (2, 1), report.problem
    assert pruned is not None and (pruned.cut, pruned.runs, pruned.events) == (1, 1, 1)
    with engine.connect() as conn:
        assert set(conn.execute(select(Run.id)).scalars()) == {held.id, long_call.id}


def test_a_store_idle_longer_than_the_window_is_pruned_whole_and_still_verifies(
    engine: Engine, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every event is older than the window: the cut is the head, and the checkpoints signed
    before (and again after) name an event retention deleted. They are at or before the cut,
    which is signed: the store is intact, and verify says the checkpoint predates the cut."""
    from airlock.store.seals import Sealer, seal_with

    anchoring = Anchoring(engine, tmp_path, retention_days=180)
    seal_with(engine, Sealer(anchoring.key))
    write(engine, *(DecisionRecord(run_row("ALLOW", at=OLD + i)) for i in range(3)))
    anchoring.checkpoint()  # when the proxy stopped, long ago
    anchoring.prune()
    verify = ["audit", "verify", "--db", db_url, "--data-dir", str(tmp_path)]
    assert main(verify) == 0, capsys.readouterr().err
    assert "checkpoint at event 3" in capsys.readouterr().out
    Anchoring(engine, tmp_path).checkpoint()  # restarted: the head, unchanged, signed again
    assert main(verify) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "is the retention cut at event 3: the events it vouches for were pruned" in out


def test_a_cut_by_hand_is_caught_with_the_key_alone_no_checkpoint_at_hand(
    engine: Engine, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An auditor with the public key and no checkpoints/latest: the start of the chain deleted
    and the cut moved to match is refused all the same (no signed cut vouches for it)."""
    from airlock.store.anchor import public_key_text

    anchoring = Anchoring(engine, tmp_path)
    write(engine, *(DecisionRecord(run_row("ALLOW")) for _ in range(3)))
    with engine.begin() as conn:
        first = conn.execute(select(AuditEvent).where(AuditEvent.seq == 1)).one()
        conn.execute(delete(AuditEvent).where(AuditEvent.seq == 1))
        conn.execute(delete(Run).where(Run.id == first.run_id))
        conn.execute(AuditCut.__table__.insert().values(id=1, seq=1, hash=first.hash, at=0.0))
    public = public_key_text(anchoring.key.public_key())
    verify = ["audit", "verify", "--db", db_url, "--data-dir", str(tmp_path / "elsewhere"),
              "--public-key", public, "--before-seals"]  # fmt: skip
    assert main(verify) == 1
    assert "no signed retention cut vouches for that" in capsys.readouterr().err


def test_a_prune_on_postgresql_gives_way_to_a_reviewer_settling_what_it_prunes(
    engine: Engine, db_url: str
) -> None:
    """A reviewer approves an old request while retention prunes it (the prune paused after
    it chose its cut): the prune held the chain's head, so the reviewer's event could not land
    between its reads and its deletes; it gives way, and the approval and its run stay whole."""
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite's writers are serial (BEGIN IMMEDIATE)")
    import threading

    from sqlalchemy import event

    from airlock.store.schema import open_engine

    old = run_row("REQUIRE_APPROVAL", at=OLD)
    hold = HoldRequest(uuid.uuid4().hex, time.time() + 3600, "h" * 64)
    write(engine, DecisionRecord(old, hold), DecisionRecord(run_row("ALLOW", at=OLD + 1)))
    write(engine, DecisionRecord(run_row("ALLOW")))
    pruner = open_engine(db_url)

    @event.listens_for(pruner, "after_cursor_execute")
    def pause(*args: object) -> None:
        if "min(audit_events.seq)" in str(args[2]):  # the cut chosen: a reviewer acts now
            time.sleep(2.0)

    pruned: list[object] = []
    thread = threading.Thread(target=lambda: pruned.append(prune(pruner, time.time() - DAY)))
    thread.start()
    time.sleep(0.3)
    assert resolve_approval(engine, hold.approval_id, APPROVED, "alice", "late").state == APPROVED
    thread.join()
    pruner.dispose()
    report = verify_audit(engine)
    assert report.ok, report.problem
    with engine.connect() as conn:
        assert conn.execute(select(Approval.state)).scalars().all() == [APPROVED]
    assert pruned == [None] and count(engine, Run) == 3  # the next prune takes it


class Crash(BaseException):
    """The process dies: nothing after this point runs."""


def test_a_crash_after_the_prune_commits_leaves_the_cut_signed(
    engine: Engine, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The decider dies between the prune's commit and writing checkpoints/cut: the restarted
    prune finds nothing left to prune, and the signed cut stored with the prune vouches for
    where the chain starts all the same."""
    import airlock.store.anchor as anchor

    a_long_history(engine)

    def die(*args: object) -> None:
        raise Crash

    monkeypatch.setattr(anchor, "write_cut", die)
    with pytest.raises(Crash):
        Anchoring(engine, tmp_path, retention_days=180).prune()
    monkeypatch.undo()
    restarted = Anchoring(engine, tmp_path, retention_days=180)
    restarted.prune()
    restarted.checkpoint()
    assert not (tmp_path / "checkpoints" / "cut").exists()  # nothing was left to prune
    verify = ["audit", "verify", "--db", db_url, "--data-dir", str(tmp_path), "--before-seals"]
    assert main(verify) == 0, capsys.readouterr().err
    assert "anchored" in capsys.readouterr().out


def test_verify_from_another_instances_data_directory_finds_the_signed_cut(
    engine: Engine, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two instances on one store, each with its own data directory and key; the first prunes.
    Verify from the second's data directory, with both public keys, finds the signed cut in
    the store (its own checkpoints/ has none)."""
    from airlock.store.anchor import public_key_text

    a_long_history(engine)
    first, second = tmp_path / "first", tmp_path / "second"
    pruner = Anchoring(engine, first, retention_days=180)
    pruner.prune()
    pruner.checkpoint()
    other = Anchoring(engine, second)
    other.checkpoint()
    assert not (second / "checkpoints" / "cut").exists()
    keys = [public_key_text(a.key.public_key()) for a in (pruner, other)]
    verify = ["audit", "verify", "--db", db_url, "--data-dir", str(second), "--before-seals",
              "--public-key", keys[0], "--public-key", keys[1]]  # fmt: skip
    assert main(verify) == 0, capsys.readouterr().err
    assert "anchored" in capsys.readouterr().out


def test_a_stored_cut_signed_by_another_key_is_no_signed_cut(
    engine: Engine, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The note stored with the cut is checked against the keys: one signed by a key the
    auditor was not given vouches for nothing, even with the data directory's checkpoints/cut
    at hand. A cut stored before its note was (none in the row) is checked against that file."""
    from airlock.store.anchor import load_or_create_key, sign_checkpoint

    a_long_history(engine)
    anchoring = Anchoring(engine, tmp_path, retention_days=180)
    anchoring.prune()
    anchoring.checkpoint()
    stranger = load_or_create_key(tmp_path / "stranger")
    with engine.begin() as conn:
        seq, hash_hex = conn.execute(select(AuditCut.seq, AuditCut.hash)).one()
        conn.execute(update(AuditCut).values(note=sign_checkpoint(stranger, seq, hash_hex)))
    verify = ["audit", "verify", "--db", db_url, "--data-dir", str(tmp_path), "--before-seals"]
    assert main(verify) == 1
    assert "no signed retention cut vouches for that" in capsys.readouterr().err

    with engine.begin() as conn:  # as written before the note was stored: the file vouches
        conn.execute(update(AuditCut).values(note=None))
    assert main(verify) == 0, capsys.readouterr().err
