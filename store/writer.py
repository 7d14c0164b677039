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
from store.records import (
    DecisionRecord,
    OutcomeRecord,
    record_decisions,
    record_outcomes,
    settle_approval,
)

log = logging.getLogger(__name__)

MAX_GROUP = 512


@dataclass(frozen=True)
class SettleRequest:
    """The proxy ends an approval itself: EXPIRED on timeout, ABANDONED on client disconnect."""

    approval_id: str
    state: str
    reason: str
    at: float


Job = DecisionRecord | OutcomeRecord | SettleRequest
CommitObserver = Callable[[float, int], None]  # (seconds, group size)


@dataclass
class _Pending:
    job: Job
    future: asyncio.Future[Any] | None


class StoreWriter:
    def __init__(self, engine: Engine, on_commit: CommitObserver | None = None) -> None:
        self.engine = engine
        self.on_commit = on_commit
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="airlock-store-writer", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None

    def ensure_started(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._thread.is_alive():
            self._loop = loop
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write everything already queued, then stop."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def submit(self, job: Job) -> asyncio.Future[Any]:
        """Queue a job; the future resolves once it is committed (or fails with the error)."""
        assert self._loop is not None, "StoreWriter.start() was not called"
        future: asyncio.Future[Any] = self._loop.create_future()
        self._queue.put(_Pending(job, future))
        return future

    def submit_nowait(self, job: Job) -> None:
        """Queue a job nobody waits for (an outcome): still written, in the next group."""
        self._queue.put(_Pending(job, None))

    # --- the writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            group: list[_Pending] = []
            if first is None:
                stopping = True
            else:
                group.append(first)
            while len(group) < MAX_GROUP:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                else:
                    group.append(item)
            if group:
                self._write_group(group)

    def _write_group(self, group: list[_Pending]) -> None:
        started = time.perf_counter()
        try:
            results = self._commit(group)
        except Exception:
            # One bad job must not fail the others: write each alone to find it.
            for pending in group:
                try:
                    self._resolve(pending, self._commit([pending])[0], None)
                except Exception as e:
                    log.error("store write failed: %s", e)
                    self._resolve(pending, None, e)
            return
        if self.on_commit:
            self.on_commit(time.perf_counter() - started, len(group))
        for pending, result in zip(group, results, strict=True):
            self._resolve(pending, result, None)

    def _commit(self, group: list[_Pending]) -> list[Any]:
        decisions = [p.job for p in group if isinstance(p.job, DecisionRecord)]
        outcomes = [p.job for p in group if isinstance(p.job, OutcomeRecord)]
        results: dict[int, Any] = {}
        with self.engine.begin() as conn:
            events: list[Event] = []
            if decisions:
                events += record_decisions(conn, decisions)
            if outcomes:
                events += record_outcomes(conn, outcomes)
            for i, pending in enumerate(group):
                if isinstance(pending.job, SettleRequest):
                    job = pending.job
                    results[i], settled = settle_approval(
                        conn, job.approval_id, job.state, None, job.reason, job.at
                    )
                    events += settled
            append_events(conn, events)
        return [results.get(i) for i in range(len(group))]

    def _resolve(self, pending: _Pending, result: Any, error: Exception | None) -> None:
        future, loop = pending.future, self._loop
        if future is None or loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(_settle_future, future, result, error)


def _settle_future(future: asyncio.Future[Any], result: Any, error: Exception | None) -> None:
    if future.done():  # the awaiting flow was cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
