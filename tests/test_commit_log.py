"""The SQLite store's commit log: what the writer acknowledged is in the database even when the
writer died before SQLite had it, exactly once, and the log leaves nothing behind."""

from __future__ import annotations

import asyncio
import base64
import fcntl
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from store.audit import verify_audit
from store.commit_log import CommitLog, read_records
from store.records import DecisionRecord, OutcomeRecord
from store.schema import CommitLogMark, Run, create_schema, open_engine
from store.wire import StoreError, frame, job_fields, job_frame
from store.writer import GroupWriter, StoreWriter
from store.writer_process import pending_jobs
from tests.test_store import run_row, write


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Any:
    engine = open_engine(f"sqlite:///{tmp_path / 'airlock.db'}")
    create_schema(engine)
    yield engine
    engine.dispose()


def database_of(engine: Engine) -> Path:
    return Path(engine.url.database)


def logged_group(*jobs: Any) -> bytes:
    return b"".join(job_frame(0, job) for job in jobs)


def left_by_a_dead_writer(engine: Engine, *groups: bytes) -> Path:
    """A commit log as a writer killed before applying these groups leaves it."""
    log = CommitLog.create_beside(database_of(engine))
    for group in groups:
        log.append(group)
    os.close(log.fd)  # the process is gone: so is its lock
    return log.path


def stored_ids(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(select(Run.id)).scalars())


def test_records_a_dead_writer_acknowledged_are_replayed_by_the_next_one(
    sqlite_engine: Engine,
) -> None:
    first, second = run_row(), run_row()
    outcome = OutcomeRecord(first["id"], time.time(), "forwarded", 200, 4.0)
    path = left_by_a_dead_writer(
        sqlite_engine,
        logged_group(DecisionRecord(first)),
        logged_group(DecisionRecord(second), outcome),
    )

    write(sqlite_engine, DecisionRecord(third := run_row()))  # the next writer starts

    assert stored_ids(sqlite_engine) == {first["id"], second["id"], third["id"]}
    with sqlite_engine.connect() as conn:
        assert conn.execute(select(Run.outcome).where(Run.id == first["id"])).scalar() == (
            "forwarded"
        )
        assert conn.execute(select(CommitLogMark)).all() == []
    assert not path.exists()
    report = verify_audit(sqlite_engine)
    assert report.ok, report.problem
    assert report.events == 4


def test_a_log_left_by_the_previous_version_is_replayed(sqlite_engine: Engine) -> None:
    """Upgrading after a crash: frames without the binary head ([seq, kind, fields]) still
    decode, so nothing the old writer acknowledged is lost."""
    first = run_row()
    outcome = OutcomeRecord(first["id"], time.time(), "forwarded", 200, 4.0)
    old_frames = b"".join(frame([0, *job_fields(job)]) for job in (DecisionRecord(first), outcome))
    left_by_a_dead_writer(sqlite_engine, old_frames)

    write(sqlite_engine, DecisionRecord(second := run_row()))

    assert stored_ids(sqlite_engine) == {first["id"], second["id"]}
    with sqlite_engine.connect() as conn:
        assert conn.execute(select(Run.status).where(Run.id == first["id"])).scalar() == 200


def test_a_logged_record_that_cannot_be_decoded_is_kept_not_fatal(sqlite_engine: Engine) -> None:
    """A log written by a newer version (a kind this one does not know), replayed after a
    downgrade: the rest is applied, the unknown record kept beside the store, and the writer
    goes on (it would otherwise fail at every start)."""
    known = run_row()
    unknown = job_frame(0, DecisionRecord(run_row())).replace(b'"decision"', b'"decided2"')
    left_by_a_dead_writer(sqlite_engine, logged_group(DecisionRecord(known)) + unknown)

    write(sqlite_engine, DecisionRecord(after := run_row()))

    assert stored_ids(sqlite_engine) == {known["id"], after["id"]}
    refused = database_of(sqlite_engine).with_name("airlock.db-refused.jsonl")
    [kept] = [json.loads(line) for line in refused.read_text().splitlines()]
    assert "cannot decode" in kept["error"]
    assert base64.b64decode(kept["frame"]) == unknown


def test_replay_skips_what_the_database_already_has(sqlite_engine: Engine) -> None:
    """A crash after SQLite took a group but before the log started over: applied once."""
    first, second = run_row(), run_row()
    path = left_by_a_dead_writer(
        sqlite_engine, logged_group(DecisionRecord(first)), logged_group(DecisionRecord(second))
    )
    writer = GroupWriter(sqlite_engine)
    first_group = pending_jobs([job_frame(0, DecisionRecord(first))])
    writer.apply_logged(first_group, (path.name, 1), keep=lambda job, error: pytest.fail(error))
    writer.close()

    write(sqlite_engine, DecisionRecord(run_row()))

    assert {first["id"], second["id"]} <= stored_ids(sqlite_engine)
    report = verify_audit(sqlite_engine)
    assert report.ok, report.problem
    assert report.events == 3, "a record was applied twice"
    refused = database_of(sqlite_engine).with_name("airlock.db-refused.jsonl")
    assert not refused.exists()


def test_a_torn_last_record_was_never_acknowledged_and_is_ignored(sqlite_engine: Engine) -> None:
    log = CommitLog.create_beside(database_of(sqlite_engine))
    log.append(b"first")
    log.append(b"second")
    os.pwrite(log.fd, b"\xff", log.offset - 1)  # the crash hit while the second was written
    assert [payload for _, payload in read_records(log.fd)] == [b"first"]
    log.start_over()
    log.append(b"third")  # an older record follows it in the file, from before the restart
    assert [(seq, payload) for seq, payload in read_records(log.fd)] == [(3, b"third")]
    log.close_and_remove()


def test_a_live_writers_log_is_left_alone(sqlite_engine: Engine) -> None:
    """Two proxies on one SQLite file: the second must not replay the first one's log."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        one, two = StoreWriter(sqlite_engine), StoreWriter(sqlite_engine)
        one.ensure_started(loop)
        await asyncio.gather(*(one.submit(DecisionRecord(run_row())) for _ in range(50)))
        two.ensure_started(loop)
        await asyncio.gather(
            *(w.submit(DecisionRecord(run_row())) for w in (one, two) for _ in range(50))
        )
        await asyncio.to_thread(one.stop)
        await asyncio.to_thread(two.stop)

    asyncio.run(scenario())
    assert len(stored_ids(sqlite_engine)) == 150
    report = verify_audit(sqlite_engine)
    assert report.ok, report.problem
    assert report.events == 150
    assert list(database_of(sqlite_engine).parent.glob("*commitlog*")) == []


def test_a_log_whose_writer_died_creating_it_is_removed(sqlite_engine: Engine) -> None:
    """Killed between creating its log and naming it: a 2 MB file with nothing in it, left
    behind. The next writer removes it, but not one that a live writer is creating."""
    folder = database_of(sqlite_engine).parent
    dead = folder / ".airlock.db-commitlog-1-dead.new"
    creating = folder / ".airlock.db-commitlog-2-live.new"
    just_now = folder / ".airlock.db-commitlog-3-starting.new"
    for path in (dead, creating, just_now):
        path.write_bytes(bytes(4096))
    hours_ago = time.time() - 3 * 3600
    for path in (dead, creating):
        os.utime(path, (hours_ago, hours_ago))
    held = os.open(creating, os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        write(sqlite_engine, DecisionRecord(run_row()))

        assert not dead.exists()
        assert creating.exists() and just_now.exists()
    finally:
        os.close(held)


def test_a_killed_writer_loses_nothing_it_acknowledged(sqlite_engine: Engine) -> None:
    rows = [run_row() for _ in range(200)]

    async def scenario() -> None:
        writer = StoreWriter(sqlite_engine)
        writer.ensure_started(asyncio.get_running_loop())
        await asyncio.gather(*(writer.submit(DecisionRecord(r)) for r in rows))
        assert writer._process is not None
        writer._process.send_signal(signal.SIGKILL)  # no chance to sync or clean up
        await asyncio.to_thread(writer._process.wait)
        writer._writer_died("killed by the test")
        writer.ensure_started(asyncio.get_running_loop())
        await writer.submit(DecisionRecord(run_row()))
        await asyncio.to_thread(writer.stop)

    asyncio.run(scenario())
    assert {r["id"] for r in rows} <= stored_ids(sqlite_engine)
    report = verify_audit(sqlite_engine)
    assert report.ok, report.problem
    assert report.events == 201


def test_a_database_that_cannot_be_written_stops_new_requests_until_it_can(
    sqlite_engine: Engine,
) -> None:
    """Fail closed: the group already acknowledged is kept and written later; nothing new is
    acknowledged meanwhile."""
    logged, refused, later = run_row(), run_row(), run_row()

    def rename(old: str, new: str) -> None:
        with sqlite_engine.begin() as conn:
            conn.exec_driver_sql(f"ALTER TABLE {old} RENAME TO {new}")

    async def scenario() -> Any:
        writer = StoreWriter(sqlite_engine)
        writer.ensure_started(asyncio.get_running_loop())
        await writer.submit(DecisionRecord(applied := run_row()))
        while applied["id"] not in stored_ids(sqlite_engine):  # acknowledged, then applied
            await asyncio.sleep(0.01)
        await asyncio.to_thread(rename, "runs", "runs_away")  # "no such table" from now on
        await writer.submit(DecisionRecord(logged))  # durable in the log before SQLite fails
        outcome = await asyncio.gather(
            writer.submit(DecisionRecord(refused)), return_exceptions=True
        )
        await asyncio.to_thread(rename, "runs_away", "runs")
        await writer.submit(DecisionRecord(later))
        await asyncio.to_thread(writer.stop)
        return outcome[0]

    error = asyncio.run(scenario())
    assert isinstance(error, StoreError) and "cannot write" in str(error)
    ids = stored_ids(sqlite_engine)
    assert {logged["id"], later["id"]} <= ids and refused["id"] not in ids
    report = verify_audit(sqlite_engine)
    assert report.ok, report.problem
    assert report.events == 3
