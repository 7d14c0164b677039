"""Group commit in a writer process: the proxy's event loop never blocks on the database, and
never waits for the interpreter lock while the database is written.

The proxy sends each job over a socket pair (one non-blocking send) and awaits its own future.
The writer process (store/writer_process.py) reads everything sent meanwhile, makes it durable
with one commit for the group (the database's own durability) and answers each awaited job.
Under load groups grow by themselves, so durability costs a commit per group, not per request.
A separate process rather than a thread: the writer's Python work then runs on another core
instead of taking turns with the proxy for the interpreter lock (measured: store commits 3.4 ms
per group under load in a thread, see README's Performance).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine

from airlock.store.audit import Event, append_events
from airlock.store.prepared import raw_transaction
from airlock.store.records import (
    DecisionRecord,
    OutcomeRecord,
    ReleaseRequest,
    SettleRequest,
    record_decisions,
    record_outcomes,
    release_approval,
    settle_approval,
)
from airlock.store.schema import FULL
from airlock.store.wire import StoreError, frame, hosted_frame, job_frame, result_from, unframe

log = logging.getLogger(__name__)

IDLE_WRITE_DELAY = 0.05  # seconds an outcome may wait to share a commit with a decision
READ_SIZE = 1 << 20
STABLE_SECONDS = 5.0  # a writer process that lived this long is restarted at once
FIRST_RESTART_PAUSE, MAX_RESTART_PAUSE = 0.1, 5.0  # doubling pauses for one that keeps dying
MAX_UNCONFIRMED = 10_000  # outcomes kept until committed; the oldest go past it (logged)


Job = DecisionRecord | OutcomeRecord | SettleRequest | ReleaseRequest
CommitObserver = Callable[[float, int], None]  # (seconds, group size)


class StoreWriter:
    """The proxy's side: sends jobs, resolves futures from the writer process's answers."""

    def __init__(
        self,
        engine: Engine,
        on_commit: CommitObserver | None = None,
        program: str = "airlock.store.writer_process",
        greeting: Callable[[], list[bytes]] | None = None,
        on_push: Callable[[list[Any]], None] | None = None,
        durability: str = FULL,
    ) -> None:
        """program: the module the writer process runs (the gate's decider hosts the writer);
        greeting: frames sent after the database URL each time the process starts."""
        if engine.url.get_backend_name() == "sqlite" and engine.url.database in (
            None,
            "",
            ":memory:",
        ):
            raise ValueError("the store writer needs a database file or server, not :memory:")
        self.engine = engine
        self.on_commit = on_commit
        self.program = program
        self.greeting = greeting
        self.on_push = on_push  # messages the host sends unasked (a settlement it watched)
        self.durability = durability  # what a commit survives (store/schema.py open_engine)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._socket: socket.socket | None = None
        self._sequence = itertools.count(1)
        self._waiting: dict[int, tuple[str, asyncio.Future[Any]]] = {}
        self._unsent = bytearray()  # what the socket would not take yet
        self._received = bytearray()
        self._deferred: list[bytes] = []  # outcomes waiting to ride with the next decision
        # Outcomes sent but not yet confirmed committed, by sequence: sent again to a restarted
        # writer (writing one twice is harmless: the same values, the last event wins).
        self._unconfirmed: dict[int, bytes] = {}
        self._flush_timer: asyncio.TimerHandle | None = None
        self._started_at = 0.0
        self._restart_at = 0.0  # monotonic time before which a dead process is not restarted
        self._quick_deaths = 0  # in a row, each within STABLE_SECONDS of its start

    # --- lifecycle ---------------------------------------------------------------------------

    def ensure_started(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the writer process (again, if it died: its waiting jobs have failed). One that
        keeps dying at start (an unwritable store) is restarted with a growing pause, meanwhile
        its jobs fail at once (their requests are refused)."""
        if self._socket is not None or time.monotonic() < self._restart_at:
            return
        self._started_at = time.monotonic()
        self._loop = loop
        ours, theirs = socket.socketpair()
        self._process = subprocess.Popen(
            [sys.executable, "-m", self.program, str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
        )
        theirs.close()
        ours.setblocking(False)
        self._socket = ours
        url = self.engine.url.render_as_string(hide_password=False)
        # Over the socket, not argv: a password must not show in ps.
        self._send(frame({"url": url, "durability": self.durability}))
        for greeting in self.greeting() if self.greeting else ():
            self._send(greeting)
        if self._unconfirmed:  # what the previous process may not have written
            self._send(b"".join(self._unconfirmed.values()))
        loop.add_reader(ours, self._on_readable)

    def stop(self, timeout: float = 10.0) -> None:
        """Write everything already sent or deferred, then stop the writer process."""
        loop = self._loop
        if self._socket is None or loop is None:
            return
        if loop.is_running() and not _in_loop_thread(loop):
            stopped = threading.Event()
            loop.call_soon_threadsafe(self._stop_here, timeout, stopped)
            stopped.wait(timeout + 5)
        else:
            self._stop_here(timeout, None)

    def _stop_here(self, timeout: float, stopped: threading.Event | None) -> None:
        sock, process = self._socket, self._process
        try:
            if sock is None or process is None:
                return
            self._detach(sock)
            sock.setblocking(True)
            sock.settimeout(timeout)
            try:
                sock.sendall(bytes(self._unsent) + b"".join(self._deferred))
                self._unsent.clear()
                self._deferred.clear()
                sock.shutdown(socket.SHUT_WR)  # end of jobs: the process writes them and exits
                while chunk := sock.recv(READ_SIZE):
                    self._received += chunk
                    self._answer(unframe(self._received))
            except OSError as e:
                log.error("the store writer did not finish cleanly: %s", e)
            sock.close()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
            self._fail_waiting("the store writer stopped")
        finally:
            if stopped is not None:
                stopped.set()

    def _detach(self, sock: socket.socket) -> None:
        assert self._loop is not None
        self._loop.remove_reader(sock)
        self._loop.remove_writer(sock)
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        self._socket = None

    @property
    def running(self) -> bool:
        return self._socket is not None

    # --- jobs --------------------------------------------------------------------------------

    def submit(self, job: Job) -> asyncio.Future[Any]:
        """Send a job; the future resolves once it is committed (or fails with the error)."""
        return self._expect(type(job).__name__, lambda sequence: job_frame(sequence, job))

    def ask(self, message: Any, tail: bytes = b"") -> asyncio.Future[Any]:
        """Send a message to the writer's host process; the future resolves with its answer."""
        return self._expect("hosted", lambda sequence: hosted_frame(sequence, message, tail))

    def _expect(self, kind: str, make_frame: Callable[[int], bytes]) -> asyncio.Future[Any]:
        assert self._loop is not None, "StoreWriter.ensure_started() was not called"
        future: asyncio.Future[Any] = self._loop.create_future()
        if self._socket is None:
            future.set_exception(StoreError("the store writer is not running"))
            return future
        sequence = next(self._sequence)
        self._waiting[sequence] = (kind, future)
        deferred, self._deferred = self._deferred, []
        self._send(b"".join(deferred) + make_frame(sequence))
        return future

    def tell(self, message: Any) -> None:
        """A message to the host process nobody waits for (dropped while it is not running:
        the greeting brings a new process up to date)."""
        if self._socket is not None:
            self._send(hosted_frame(0, message))

    def submit_nowait(self, job: Job) -> None:
        """A job nobody waits for (an outcome) rides with the next decision, sharing its commit;
        with no decision coming, it is written within IDLE_WRITE_DELAY. It is kept until the
        writer confirms it, so a writer that dies or cannot write yet does not lose it."""
        assert self._loop is not None, "StoreWriter.ensure_started() was not called"
        sequence = next(self._sequence)
        self._unconfirmed[sequence] = job_frame(sequence, job)
        if len(self._unconfirmed) > MAX_UNCONFIRMED:
            del self._unconfirmed[next(iter(self._unconfirmed))]
            log.error("an outcome was dropped: the store has not confirmed one for too long")
        self._deferred.append(self._unconfirmed[sequence])
        if self._flush_timer is None:
            self._flush_timer = self._loop.call_later(IDLE_WRITE_DELAY, self._flush_deferred)

    def _flush_deferred(self) -> None:
        self._flush_timer = None
        deferred, self._deferred = self._deferred, []
        if deferred and self._socket is not None:
            self._send(b"".join(deferred))

    # --- the socket (event loop side, never blocking) ------------------------------------------

    def _send(self, data: bytes) -> None:
        assert self._socket is not None and self._loop is not None
        if self._unsent:
            self._unsent += data
            return
        try:
            sent = self._socket.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as e:
            self._writer_died(f"the store writer is unreachable: {e}")
            return
        if sent < len(data):
            self._unsent += data[sent:]
            self._loop.add_writer(self._socket, self._on_writable)

    def _on_writable(self) -> None:
        assert self._socket is not None and self._loop is not None
        try:
            sent = self._socket.send(self._unsent)
        except BlockingIOError:
            return
        except OSError as e:
            self._writer_died(f"the store writer is unreachable: {e}")
            return
        del self._unsent[:sent]
        if not self._unsent:
            self._loop.remove_writer(self._socket)

    def _on_readable(self) -> None:
        assert self._socket is not None
        try:
            chunk = self._socket.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError as e:
            chunk, reason = b"", str(e)
        else:
            reason = "exited"
        if not chunk:
            self._writer_died(f"the store writer process {reason}")
            return
        self._received += chunk
        self._answer(unframe(self._received))

    def _answer(self, messages: list[Any]) -> None:
        for message in messages:
            if message[0] == "commit":
                if self.on_commit:
                    self.on_commit(message[1], message[2])
                continue
            if isinstance(message[0], str):
                if self.on_push:
                    self.on_push(message)
                continue
            sequence, ok, value = message
            if sequence in self._unconfirmed:
                if ok:  # a refused one stays: the writer tries it again, and so would the next
                    del self._unconfirmed[sequence]
                continue
            kind, future = self._waiting.pop(sequence, (None, None))
            if future is None or future.done():  # the awaiting flow was cancelled meanwhile
                continue
            if ok:
                future.set_result(result_from(kind, value))
            else:
                future.set_exception(StoreError(value))

    def _writer_died(self, reason: str) -> None:
        """Every waiting job fails (its request is refused); the next job starts a new process."""
        log.error("%s; %d waiting writes failed", reason, len(self._waiting))
        # Once is an accident (restarted at once); again and again is a store it cannot open.
        quick = time.monotonic() - self._started_at < STABLE_SECONDS
        self._quick_deaths = self._quick_deaths + 1 if quick else 0
        if self._quick_deaths > 1:
            pause = FIRST_RESTART_PAUSE * 2 ** (self._quick_deaths - 2)
            self._restart_at = time.monotonic() + min(MAX_RESTART_PAUSE, pause)
        if self._socket is not None:
            sock = self._socket
            self._detach(sock)
            sock.close()
        self._unsent.clear()
        self._deferred.clear()
        self._fail_waiting(reason)
        if self._process is not None and self._process.poll() is None:
            self._process.kill()

    def _fail_waiting(self, reason: str) -> None:
        waiting, self._waiting = self._waiting, {}
        for _, future in waiting.values():
            if not future.done():
                future.set_exception(StoreError(reason))


def _in_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


# --- the writer process's side ---------------------------------------------------------------


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
        return self._connection

    def _commit(self, group: list[Pending]) -> list[Any]:
        decisions = [p.job for p in group if isinstance(p.job, DecisionRecord)]
        outcomes = [p.job for p in group if isinstance(p.job, OutcomeRecord)]
        results: dict[int, Any] = {}
        db = self._open()
        try:
            with raw_transaction(self.engine, db) as tx:
                events: list[Event] = []
                if decisions:
                    recorded, joined = record_decisions(tx, decisions)
                    events += recorded
                    for i, pending in enumerate(group):
                        job = pending.job
                        if isinstance(job, DecisionRecord) and job.run["id"] in joined:
                            results[i] = joined[job.run["id"]]
                if outcomes:
                    events += record_outcomes(tx, outcomes)
                for i, pending in enumerate(group):
                    if isinstance(pending.job, SettleRequest | ReleaseRequest):
                        results[i], settled = _apply(tx, pending.job)
                        events += settled
                append_events(tx, events)
        except Exception:
            # The connection may be broken (database restarted): take a fresh one next time.
            self._connection.invalidate()
            self._connection = None
            raise
        return [results.get(i) for i in range(len(group))]


def _apply(tx: Any, job: SettleRequest | ReleaseRequest) -> tuple[Any, list[Event]]:
    """A settlement's or release's statements: (its result, its audit events). Decisions and
    outcomes are written for the whole group at once, in _commit."""
    if isinstance(job, SettleRequest):
        return settle_approval(tx, job.approval_id, job.state, None, job.reason, job.at)
    return release_approval(tx, job.approval_id, job.at)
