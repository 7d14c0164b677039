"""Group commit: one thread writes for the whole proxy, so the event loop never blocks on the DB.

Flows submit records and await their own future; the thread takes everything queued, writes it
in one transaction (one fsync for the group) and then resolves each future. Under load, groups
grow by themselves, so durability costs a commit per group, not per request.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine

from store.audit import Event, append_events
from store.prepared import raw_transaction
from store.records import (
    DecisionRecord,
    OutcomeRecord,
    record_decisions,
    record_outcomes,
    release_approval,
    settle_approval,
)

log = logging.getLogger(__name__)

MAX_GROUP = 512
IDLE_WRITE_DELAY = 0.05  # seconds an outcome may wait to share a commit with a decision


@dataclass(frozen=True)
class SettleRequest:
    """The proxy ends an approval itself: EXPIRED on timeout, ABANDONED on client disconnect."""

    approval_id: str
    state: str
    reason: str
    at: float


@dataclass(frozen=True)
class ReleaseRequest:
    """Forward an approved request: only once, whichever held flow or retry asks first."""

    approval_id: str
    at: float


Job = DecisionRecord | OutcomeRecord | SettleRequest | ReleaseRequest
CommitObserver = Callable[[float, int], None]  # (seconds, group size)


@dataclass
class _Pending:
    job: Job
    future: asyncio.Future[Any] | None


_Settled = tuple[asyncio.Future[Any] | None, Any, Exception | None]


class StoreWriter:
    def __init__(self, engine: Engine, on_commit: CommitObserver | None = None) -> None:
        self.engine = engine
        self.on_commit = on_commit
        self._queue: queue.SimpleQueue[list[_Pending] | None] = queue.SimpleQueue()
        self._deferred: list[_Pending] = []  # outcomes waiting to ride with the next decision
        self._flush_timer: asyncio.TimerHandle | None = None
        self._thread = threading.Thread(target=self._run, name="airlock-store-writer", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connection: Any = None  # the writer thread's own pooled DBAPI connection

    def ensure_started(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._thread.is_alive():
            self._loop = loop
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write everything already queued, then stop."""
        if self._thread.is_alive():
            deferred, self._deferred = self._deferred, []
            if deferred:
                self._queue.put(deferred)
            self._queue.put(None)
            self._thread.join(timeout)
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def submit(self, job: Job) -> asyncio.Future[Any]:
        """Queue a job; the future resolves once it is committed (or fails with the error)."""
        assert self._loop is not None, "StoreWriter.start() was not called"
        future: asyncio.Future[Any] = self._loop.create_future()
        batch, self._deferred = self._deferred, []
        batch.append(_Pending(job, future))
        self._queue.put(batch)
        return future

    def submit_nowait(self, job: Job) -> None:
        """A job nobody waits for (an outcome) rides with the next decision, sharing its commit
        and its thread wake-up; with no decision coming, it is written within IDLE_WRITE_DELAY."""
        assert self._loop is not None, "StoreWriter.start() was not called"
        self._deferred.append(_Pending(job, None))
        if self._flush_timer is None:
            self._flush_timer = self._loop.call_later(IDLE_WRITE_DELAY, self._flush_deferred)

    def _flush_deferred(self) -> None:
        self._flush_timer = None
        batch, self._deferred = self._deferred, []
        if batch:
            self._queue.put(batch)

    # --- the writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            group, stopping = self._collect_group()
            if group:
                self._write_group(group)

    def _collect_group(self) -> tuple[list[_Pending], bool]:
        """Wait for work, then take everything queued meanwhile: that is the group."""
        first = self._queue.get()
        if first is None:
            return [], True
        group = list(first)
        while len(group) < MAX_GROUP:
            try:
                more = self._queue.get_nowait()
            except queue.Empty:
                break
            if more is None:
                return group, True
            group.extend(more)
        return group, False

    def _write_group(self, group: list[_Pending]) -> None:
        started = time.perf_counter()
        try:
            results = self._commit(group)
        except Exception:
            # One bad job must not fail the others: write each alone to find it.
            settled = [self._commit_alone(pending) for pending in group]
        else:
            if self.on_commit:
                self.on_commit(time.perf_counter() - started, len(group))
            settled = [(p.future, r, None) for p, r in zip(group, results, strict=True)]
        self._resolve([s for s in settled if s[0] is not None])

    def _commit_alone(self, pending: _Pending) -> _Settled:
        try:
            return pending.future, self._commit([pending])[0], None
        except Exception as e:
            log.error("store write failed: %s", e)
            return pending.future, None, e

    def _commit(self, group: list[_Pending]) -> list[Any]:
        decisions = [p.job for p in group if isinstance(p.job, DecisionRecord)]
        outcomes = [p.job for p in group if isinstance(p.job, OutcomeRecord)]
        results: dict[int, Any] = {}
        if self._connection is None:
            self._connection = self.engine.raw_connection()
        try:
            with raw_transaction(self.engine, self._connection) as tx:
                events: list[Event] = []
                if decisions:
                    events += record_decisions(tx, decisions)
                if outcomes:
                    events += record_outcomes(tx, outcomes)
                for i, pending in enumerate(group):
                    if isinstance(pending.job, SettleRequest):
                        job = pending.job
                        results[i], settled = settle_approval(
                            tx, job.approval_id, job.state, None, job.reason, job.at
                        )
                        events += settled
                    elif isinstance(pending.job, ReleaseRequest):
                        results[i], released = release_approval(
                            tx, pending.job.approval_id, pending.job.at
                        )
                        events += released
                append_events(tx, events)
        except Exception:
            # The connection may be broken (database restarted): take a fresh one next time.
            self._connection.invalidate()
            self._connection = None
            raise
        return [results.get(i) for i in range(len(group))]

    def _resolve(self, settled: list[_Settled]) -> None:
        """Wake the event loop once per group, not once per flow."""
        loop = self._loop
        if settled and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(_settle_futures, settled)


def _settle_futures(settled: list[_Settled]) -> None:
    for future, result, error in settled:
        if future is None or future.done():  # the awaiting flow was cancelled meanwhile
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
