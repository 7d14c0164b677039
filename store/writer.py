"""Group commit: every write of the decider (decider/core.py), a batch at a time, in one
transaction made durable by the database's own commit (SQLite in WAL with synchronous=FULL,
PostgreSQL's commit; with --durability process, SQLite NORMAL and PostgreSQL
synchronous_commit=off). Under load batches grow by themselves, so durability costs a commit per
group, not per request; what is acknowledged is what readers and `airlock audit verify` see.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from airlock.store.approvals import leave_approval
from airlock.store.audit import Event, append_events
from airlock.store.instances import LEASE_SECONDS, SILENCE_SECONDS, Here
from airlock.store.prepared import raw_transaction
from airlock.store.records import (
    DecisionRecord,
    OutcomeRecord,
    ReleaseRequest,
    SettleRequest,
    WithdrawRelease,
    record_decisions,
    record_outcomes,
    release_approval,
    settle_approval,
    withdraw_release,
)

log = logging.getLogger(__name__)

Job = DecisionRecord | OutcomeRecord | SettleRequest | ReleaseRequest | WithdrawRelease
Change = SettleRequest | ReleaseRequest | WithdrawRelease  # applied one by one, in group order


@dataclass
class Pending:
    sequence: int
    job: Job


class GroupWriter:
    """Writes groups of jobs, each group in one durable transaction, on one pooled DBAPI
    connection (SQLite: synchronous=FULL, set by open_engine on every connection)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._connection: Any = None
        self._file = _database_file(engine)  # SQLite's file: None for PostgreSQL, in memory
        self._identity: tuple[int, int] | None = None  # its (device, inode) when first opened
        # How old another instance's lease may be before it is taken for gone when a hold ends
        # (decider/core.py _lapse_after: without limit until this one has renewed unbroken).
        self.lapse_after: Callable[[], float] = lambda: LEASE_SECONDS

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def write_group(self, group: list[Pending]) -> list[tuple[int, bool, Any]]:
        """Commit durably; (sequence, ok, result or error text) for each job."""
        try:
            results = self._commit(group)
        except Exception:
            # One bad job must not fail the others: write each alone to find it.
            return [self._commit_alone(pending) for pending in group]
        return [(p.sequence, True, r) for p, r in zip(group, results, strict=True)]

    def _commit_alone(self, pending: Pending) -> tuple[int, bool, Any]:
        try:
            return pending.sequence, True, self._commit([pending])[0]
        except Exception as e:
            log.error("store write failed: %s", e)
            return pending.sequence, False, f"the store refused the write: {e}"

    def _open(self) -> Any:
        if self._connection is None:
            self._connection = self.engine.raw_connection()
            if self._file is not None and self._identity is None:
                self._identity = _identity(self._file)
        return self._connection

    def _check_same_file(self) -> None:
        """SQLite writes on into a database file deleted or replaced under it (a clean-up job,
        an operator restoring a copy): each commit would succeed into a file no reader, no
        reviewer and no `audit verify` can see, and the request go out as recorded. A stat
        (~2 µs) before each group: such a store refuses every write until Airlock restarts."""
        if self._file is None or self._identity is None:
            return
        try:
            now: tuple[int, int] | None = _identity(self._file)
        except FileNotFoundError:
            now = None
        if now != self._identity:
            what = "deleted" if now is None else "replaced by another file"
            raise StoreFileGone(
                f"the database file {self._file} was {what} while Airlock ran: nothing is "
                "recorded (and no request passes) until Airlock is restarted on it"
            )

    def _commit(self, group: list[Pending]) -> list[Any]:
        decisions = [p.job for p in group if isinstance(p.job, DecisionRecord)]
        outcomes = [p.job for p in group if isinstance(p.job, OutcomeRecord)]
        results: dict[int, Any] = {}
        db = self._open()
        self._check_same_file()
        started = time.monotonic()

        def lapse_after() -> float:
            # A write that waited long (a lock held, a stalled connection) is a gap as a
            # renewal that did is: the other holders may not have renewed meanwhile either.
            stalled = time.monotonic() - started > SILENCE_SECONDS
            return math.inf if stalled else self.lapse_after()

        try:
            with raw_transaction(self.engine, db) as tx:
                events: list[Event] = []
                if decisions:
                    recorded, joined = record_decisions(tx, decisions)
                    events += recorded
                    for i, pending in enumerate(group):
                        job = pending.job
                        if isinstance(job, DecisionRecord) and job.run.id in joined:
                            results[i] = joined[job.run.id]
                if outcomes:
                    events += record_outcomes(tx, outcomes)
                for i, pending in enumerate(group):
                    if isinstance(pending.job, Change):
                        results[i], settled = _apply(tx, pending.job, lapse_after)
                        events += settled
                append_events(tx, events)
        except Exception:
            # The connection may be broken (database restarted): take a fresh one next time.
            self._connection.invalidate()
            self._connection = None
            raise
        return [results.get(i) for i in range(len(group))]


class StoreFileGone(RuntimeError):
    """The SQLite file being written was deleted or replaced on disk."""


def _database_file(engine: Engine) -> Path | None:
    url = engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    if url.query.get("mode") == "memory":
        return None
    # Absolute, links not resolved: what readers open (a link repointed to another file is a
    # replacement too, seen by stat, which follows it).
    return Path(os.path.abspath(url.database))


def _identity(path: Path) -> tuple[int, int]:
    status = os.stat(path)
    return status.st_dev, status.st_ino


def _apply(tx: Any, job: Change, lapse_after: Callable[[], float]) -> tuple[Any, list[Event]]:
    """A settlement's, release's or withdrawal's statements: (its result, its audit events).
    Decisions and outcomes are written for the whole group at once, in _commit; these in the
    order they came (a withdrawal after the release it undoes)."""
    if isinstance(job, SettleRequest) and job.leaving is not None:
        return leave_approval(tx, job, Here(job.leaving, lease_seconds=lapse_after()))
    if isinstance(job, SettleRequest):
        return settle_approval(tx, job.approval_id, job.state, None, job.reason, job.at)
    if isinstance(job, WithdrawRelease):
        return withdraw_release(tx, job.approval_id, job.at)
    return release_approval(tx, job.approval_id, job.at, job.run_id)
