"""The proxy's side of the decider: typed calls on the event loop, never blocking it.

Two implementations with the same semantics, because both send the same messages to the same
DeciderCore (decider/core.py) and read the same answers:
- WorkerDecider (the default): the core in a worker process, over a socket pair, msgpack
  (decider/wire.py) through an asyncio protocol. Its Python work runs on another core instead of
  taking turns with mitmproxy for the interpreter lock (measured in README's Performance).
- InProcessDecider: the core in a thread of the proxy, over queues; for `mitmdump -s` users who
  want one process, small setups and tests.

A call's future resolves once its answer is durable; a decider that died fails every waiting
call (their requests are refused) and the next call starts a new one, greeted with the proxy's
setup and what it holds. Outcomes (and withdrawals of releases) nobody waits for ride with the
next call and are kept until the decider confirms them, so a decider that dies first does not
lose them.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from sqlalchemy.engine import make_url

from airlock.decider.core import DeciderCore
from airlock.decider.messages import (
    DECIDER,
    Answer,
    AnsweredOutcome,
    Committed,
    Configuration,
    Configure,
    Decide,
    DecideCall,
    Decided,
    Envelope,
    Failure,
    Message,
    Queue,
    Recheck,
    Rechecked,
    Remember,
    Reply,
    Settled,
    Setup,
    StoreAddress,
    Unwatch,
    Watch,
)
from airlock.decider.serve import serve
from airlock.decider.wire import Reader, pack, pack_all
from airlock.pipeline.run_record import RunSummary
from airlock.store.records import (
    DecisionRecord,
    Joined,
    OutcomeRecord,
    Released,
    ReleaseRequest,
    Settlement,
    SettleRequest,
    WithdrawRelease,
)

log = logging.getLogger(__name__)

IDLE_WRITE_DELAY = 0.05  # seconds an outcome may wait to share a commit with a decision
STABLE_SECONDS = 5.0  # a decider that lived this long is restarted at once
# A worker that answers nothing this long while calls wait is stuck (a store connection gone
# silent, a lock never released): killed and started again, or the gate refused every request
# until someone restarted it. Long enough for any batch, reload or store preparation.
HUNG_SECONDS = 60.0
FIRST_RESTART_PAUSE, MAX_RESTART_PAUSE = 0.1, 5.0  # doubling pauses for one that keeps dying
# A call with no timeout of its own is forgotten this long after it was sent, answered or not:
# its caller gave up long before (each bounds its wait), and a stuck decider must not
# leave one entry per call behind.
UNANSWERED_SECONDS = 60.0
MAX_UNCONFIRMED = 10_000  # unawaited writes kept until committed; the oldest go past it (logged)


class StoreError(RuntimeError):
    """A write the store refused or could not make, or a decider that is not running."""


class DeciderFault(RuntimeError):
    """The decider failed on a message: a fault in Airlock, not in the store."""


class Decider(Protocol):
    """What the proxy asks of its decider. Every write goes through it: the proxy never opens
    the database."""

    @property
    def running(self) -> bool: ...
    async def start(self) -> None: ...
    async def stop(self, timeout: float = 10.0) -> None: ...
    async def decide(self, request: Decide, timeout: float | None = None) -> Decided: ...
    async def decide_call(self, call: DecideCall, timeout: float | None = None) -> Decided: ...
    async def recheck(self, recheck: Recheck) -> Rechecked: ...
    def configure(self, configuration: Configuration) -> asyncio.Future[None]: ...
    async def record(self, record: DecisionRecord) -> Joined | None: ...
    async def release(self, approval_id: str, at: float, run_id: str | None = None) -> Released: ...
    async def settle(
        self, approval_id: str, state: str, reason: str, at: float, leaving: str | None = None
    ) -> Settlement: ...
    def withdraw_release(self, approval_id: str, at: float) -> None: ...
    def record_outcome(self, outcome: OutcomeRecord | AnsweredOutcome) -> None: ...
    def remember(self, run: RunSummary, passed: bool) -> None: ...
    def watch(self, ids: list[str]) -> None: ...
    def unwatch(self, approval_id: str) -> None: ...


class _Link(Protocol):
    """The proxy's end of one decider's life."""

    def post(self, envelopes: list[Envelope]) -> None: ...
    def alive(self) -> bool: ...
    async def close(self, timeout: float) -> None: ...
    def kill(self) -> None: ...


SettledObserver = Callable[[Settled], None]
CommitObserver = Callable[[float, int], None]  # (seconds, group size)


class DeciderClient:
    def __init__(
        self,
        store: StoreAddress,
        setup: Callable[[], Setup] | None = None,
        on_settled: SettledObserver | None = None,
        on_commit: CommitObserver | None = None,
        on_queue: Callable[[int], None] | None = None,
    ) -> None:
        """setup: what a (re)started decider is told first (without one it writes what it is
        sent, and refuses to decide: it has no configuration)."""
        url = make_url(store.url)
        if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
            raise ValueError("the decider needs a database file or server, not :memory:")
        self.store = store
        self.setup = setup
        self.on_settled = on_settled
        self.on_commit = on_commit
        self.on_queue = on_queue  # approvals pending in the store, from every instance
        self._link: _Link | None = None
        self._starting = asyncio.Lock()
        self._sequence = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._deferred: list[Envelope] = []  # outcomes waiting to ride with the next call
        # Outcomes and withdrawals sent but not yet confirmed committed, by sequence: sent again
        # to a restarted decider (writing one twice is harmless: the same values, the last event
        # wins; a withdrawal undoes only its own release).
        self._unconfirmed: dict[int, Envelope] = {}
        self._flush_timer: asyncio.Handle | None = None
        # Calls that fail with TimeoutError when unanswered by then: (monotonic deadline,
        # sequence, seconds), watched by one timer rather than one per call.
        self._deadlines: list[tuple[float, int, float]] = []
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._started_at = 0.0
        # Monotonic: since when calls have gone unanswered (None: the decider answered since the
        # last call was sent); counted only once this decider has answered anything, so that
        # its start (preparing a large store, loading history, pruning) is never taken for stuck.
        self._unanswered_since: float | None = None
        self._answered_once = False
        self._restart_at = 0.0  # monotonic time before which a dead decider is not restarted
        self._quick_deaths = 0  # in a row, each within STABLE_SECONDS of its start
        self._restarting: asyncio.Future[None] | None = None  # for held flows (_on_lost)
        self._restart_timer: asyncio.TimerHandle | None = None
        self._stopped = False  # stop() was called: nothing starts it again by itself

    killable = False  # whether a stuck decider can be stopped (a process) or not (a thread)

    async def _open(self) -> _Link:
        raise NotImplementedError

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._link is not None

    async def start(self) -> None:
        """Start the decider (again, if it died: its waiting calls have failed). One that keeps
        dying at start (an unwritable store) is restarted with a growing pause; meanwhile calls
        fail at once (their requests are refused)."""
        self._stopped = False
        await self._start()

    async def _start(self, by_itself: bool = False) -> None:
        """by_itself: restarted for held flows, not asked by a call: not once it is stopped."""
        if self._link is not None and not self._link.alive():
            # Died, and the loop has not read its end of the socket yet: a call sent now
            # would be lost with it.
            self._on_lost(self._link, "the decider exited")
        if self._link is not None or time.monotonic() < self._restart_at:
            return
        async with self._starting:
            if self._link is not None or (by_itself and self._stopped):
                return
            self._started_at = time.monotonic()
            link = await self._open()
            if by_itself and self._stopped:  # stopped while it started: nobody would stop it
                link.kill()
                return
            self._link = link
            self._unanswered_since, self._answered_once = None, False
            setup = [Envelope(0, self.setup())] if self.setup else []
            link.post([*setup, *self._unconfirmed.values()])
            self._deferred = []  # each is unconfirmed: sent just now

    async def stop(self, timeout: float = 10.0) -> None:
        """Write everything already sent or deferred, then stop the decider. One that died
        with outcomes or withdrawals still unconfirmed is started once more to write them."""
        self._stopped = True
        if self._restart_timer is not None:
            self._restart_timer.cancel()
            self._restart_timer = None
        if self._link is None and self._unconfirmed:
            self._restart_at = 0.0  # not the pause between restarts: this is the last one
            try:
                await self._start()
            except Exception as e:
                log.error("%d outcomes or withdrawals could not be written: the decider did "
                          "not start again (%s)", len(self._unconfirmed), e)  # fmt: skip
        link = self._link
        if link is None:
            return
        self._detach()
        link.post(self._deferred)
        self._deferred = []
        await link.close(timeout)
        self._fail_waiting("the decider stopped")

    def _detach(self) -> None:
        self._link = None
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._deadline_timer is not None:  # every waiting call fails with the link
            self._deadline_timer.cancel()
            self._deadline_timer = None
        self._deadlines.clear()

    # --- calls -------------------------------------------------------------------------------

    async def decide(self, request: Decide, timeout: float | None = None) -> Decided:
        """timeout: as _ask's (the proxy refuses a request whose decision did not come); the
        decider is told when that is, so that it does not judge what was refused already."""
        if timeout is not None and request.refuse_after is None:
            request = replace(request, refuse_after=time.time() + timeout)
        return await self._ask(request, timeout)

    async def decide_call(self, call: DecideCall, timeout: float | None = None) -> Decided:
        """timeout: as decide's."""
        if timeout is not None and call.refuse_after is None:
            call = replace(call, refuse_after=time.time() + timeout)
        return await self._ask(call, timeout)

    def configure(self, configuration: Configuration) -> asyncio.Future[None]:
        """Sent at once, ahead of every later call; resolves once the decider decides with it
        (fails with why it cannot)."""
        return self._ask(Configure(configuration))

    async def recheck(self, recheck: Recheck) -> Rechecked:
        """A held request judged again with the configuration in force (nothing recorded)."""
        return await self._ask(recheck)

    async def record(self, record: DecisionRecord) -> Joined | None:
        """A decision the proxy made itself; with a hold, the approval it joined, if any."""
        return await self._ask(record)

    async def release(self, approval_id: str, at: float, run_id: str | None = None) -> Released:
        """run_id: the attempt that asks, recorded as the one forwarded if it wins."""
        return await self._ask(ReleaseRequest(approval_id, at, run_id))

    async def settle(
        self, approval_id: str, state: str, reason: str, at: float, leaving: str | None = None
    ) -> Settlement:
        """leaving: this proxy's instance, when its own hold ends (SettleRequest)."""
        request = SettleRequest(approval_id, state, reason, at, leaving)
        return await self._ask(request)

    def remember(self, run: RunSummary, passed: bool) -> None:
        self._tell(Remember(run, passed))

    def watch(self, ids: list[str]) -> None:
        self._tell(Watch(ids))

    def unwatch(self, approval_id: str) -> None:
        self._tell(Unwatch(approval_id))

    def withdraw_release(self, approval_id: str, at: float) -> None:
        """The release asked for at `at` forwarded nothing (its answer did not come in time, or
        the flow was cancelled): undone if it commits, so that a retry can be released. Sent
        after the release (the decider takes messages in order) and kept as outcomes are; sent
        at once, since until it commits a retry is told "sent"."""
        self._keep(WithdrawRelease(approval_id, at), at_once=True)

    def record_outcome(self, outcome: OutcomeRecord | AnsweredOutcome) -> None:
        """Nobody waits for an outcome. While calls are in flight it rides with the next one,
        sharing its commit (under load: a commit per group, not per request); with none in
        flight it is sent at once, so the decider writes it while idle rather than in the
        next decision's commit (at concurrency 1 that commit is on the next request's path);
        either way it is sent within IDLE_WRITE_DELAY. It is kept until the decider confirms
        it, so a decider that dies or cannot write yet does not lose it."""
        self._keep(outcome, at_once=not self._waiting)

    def _keep(
        self, message: OutcomeRecord | AnsweredOutcome | WithdrawRelease, at_once: bool
    ) -> None:
        sequence = next(self._sequence)
        envelope = self._unconfirmed[sequence] = Envelope(sequence, message)
        if len(self._unconfirmed) > MAX_UNCONFIRMED:
            del self._unconfirmed[next(iter(self._unconfirmed))]
            log.error("an outcome or withdrawal was dropped: the store has not confirmed one "
                      "for too long")  # fmt: skip
        self._deferred.append(envelope)
        loop = asyncio.get_running_loop()
        if at_once:
            # On the loop's next turn: the response this outcome is of goes to its client first.
            if self._flush_timer is not None:
                self._flush_timer.cancel()
            self._flush_timer = loop.call_soon(self._flush_deferred)
        elif self._flush_timer is None:
            self._flush_timer = loop.call_later(IDLE_WRITE_DELAY, self._flush_deferred)

    def _ask(self, message: Message, timeout: float | None = None) -> asyncio.Future[Any]:
        """timeout: seconds after which the call fails with TimeoutError if unanswered (a late
        answer is then dropped)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._link is None:
            future.set_exception(StoreError("the decider is not running"))
            return future
        sequence = next(self._sequence)
        if self._unanswered_since is None:
            self._unanswered_since = time.monotonic()
        self._waiting[sequence] = future
        self._expire_after(sequence, UNANSWERED_SECONDS if timeout is None else timeout)
        deferred, self._deferred = self._deferred, []
        self._link.post([*deferred, Envelope(sequence, message)])
        return future

    def _expire_after(self, sequence: int, seconds: float) -> None:
        """One timer for every timed call: asyncio.timeout costs ~4 µs a call back to back,
        on the event loop that is the proxy's bottleneck under load."""
        deadline = time.monotonic() + seconds
        heapq.heappush(self._deadlines, (deadline, sequence, seconds))
        if self._deadlines[0][1] == sequence:  # the earliest now: the timer is for it
            self._arm(deadline)

    def _arm(self, deadline: float) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        wait = max(0.0, deadline - time.monotonic())
        self._deadline_timer = asyncio.get_running_loop().call_later(wait, self._expire)

    def _expire(self) -> None:
        """Calls past their deadline fail; answered calls' deadlines, left in the heap, are
        dropped on the way to the next one still waiting, so the timer wakes once per timeout
        rather than once per call (at concurrency 1, 17 µs per request of timer wake-ups)."""
        self._deadline_timer = None
        now, deadlines = time.monotonic(), self._deadlines
        expired = False
        while deadlines and (deadlines[0][0] <= now or deadlines[0][1] not in self._waiting):
            _, sequence, seconds = heapq.heappop(deadlines)
            future = self._waiting.pop(sequence, None)
            if future is not None and not future.done():
                future.set_exception(TimeoutError(f"no answer within {seconds:g} s"))
                expired = True
        if expired and self._unless_hung(now):
            return
        if deadlines:
            self._arm(deadlines[0][0])

    def _unless_hung(self, now: float) -> bool:
        """A call just went unanswered: a worker that answered nothing for HUNG_SECONDS since
        a call was sent to it (idle time does not count, nor its start, before its first answer)
        is killed (its calls fail, their requests refused) and the next call, or a held flow,
        starts another. True when it was. A thread (in-process) cannot be killed: it is left,
        and said."""
        since = self._unanswered_since
        if self._link is None or not self._answered_once or since is None:
            return False
        silent = now - since
        if silent < HUNG_SECONDS:
            return False
        reason = (f"the decider answered nothing for {silent:.0f} s while calls waited (a store "
                  "gone silent, a lock never released)")  # fmt: skip
        if not self.killable:
            log.error("%s; an in-process decider cannot be stopped: restart Airlock", reason)
            self._unanswered_since = now  # said once per HUNG_SECONDS, not at every call
            return False
        self._on_lost(self._link, f"{reason}: stopped, and started again")
        return True

    def _tell(self, message: Message) -> None:
        """Nobody waits: dropped while no decider runs (the setup brings a new one up to date)."""
        if self._link is not None:
            self._link.post([Envelope(0, message)])

    def _flush_deferred(self) -> None:
        self._flush_timer = None
        deferred, self._deferred = self._deferred, []
        if deferred and self._link is not None:
            self._link.post(deferred)

    # --- answers -----------------------------------------------------------------------------

    def _on_answers(self, answers: list[Answer]) -> None:
        self._unanswered_since, self._answered_once = None, True
        for answer in answers:
            if isinstance(answer, Reply):
                self._on_reply(answer)
            elif isinstance(answer, Committed) and self.on_commit:
                self.on_commit(answer.seconds, answer.size)
            elif isinstance(answer, Settled) and self.on_settled:
                self.on_settled(answer)
            elif isinstance(answer, Queue) and self.on_queue:
                self.on_queue(answer.pending)

    def _on_reply(self, reply: Reply) -> None:
        failed = isinstance(reply.value, Failure)
        unconfirmed = self._unconfirmed.get(reply.sequence)
        if unconfirmed is not None:
            if not failed:
                del self._unconfirmed[reply.sequence]
            elif isinstance(unconfirmed.message, AnsweredOutcome):
                # Refused: the decider keeps it, ids read, and tries again; kept here too, for
                # a decider that dies meanwhile, but without the answer's body (up to 1 MB
                # each, while a store refuses writes for long), its ids then lost.
                plain = Envelope(reply.sequence, unconfirmed.message.outcome)
                self._unconfirmed[reply.sequence] = plain
            return
        future = self._waiting.pop(reply.sequence, None)
        if future is None or future.done():  # the awaiting flow was cancelled meanwhile
            return
        if failed:
            error = DeciderFault if reply.value.by == DECIDER else StoreError
            future.set_exception(error(reply.value.message))
        else:
            future.set_result(reply.value)

    def _on_lost(self, link: _Link, reason: str) -> None:
        """Every waiting call fails (its request is refused); the next call starts a new one."""
        if link is not self._link:
            return  # stopped on purpose, or already replaced
        log.error("%s; %d waiting calls failed", reason, len(self._waiting))
        # Once is an accident (restarted at once); again and again is a store it cannot open.
        quick = time.monotonic() - self._started_at < STABLE_SECONDS
        self._quick_deaths = self._quick_deaths + 1 if quick else 0
        if self._quick_deaths > 1:
            pause = FIRST_RESTART_PAUSE * 2 ** (self._quick_deaths - 2)
            self._restart_at = time.monotonic() + min(MAX_RESTART_PAUSE, pause)
        self._detach()
        self._deferred.clear()  # still unconfirmed: sent again to the next one
        self._fail_waiting(reason)
        link.kill()
        self._restart_for_held_flows()

    def _restart_for_held_flows(self) -> None:
        """Flows are held: their settlements come only from a running decider, and with no
        request coming none would start it; once the pause between restarts is over, it is
        (unless the client was stopped meanwhile, or nothing is held any more)."""
        if self._stopped or self.setup is None or not self.setup().watched:
            return
        if self._restart_timer is not None:
            self._restart_timer.cancel()
        wait = max(0.0, self._restart_at - time.monotonic())
        self._restart_timer = asyncio.get_running_loop().call_later(wait, self._restart_now)

    def _restart_now(self) -> None:
        self._restart_timer = None
        if not self._stopped and self._link is None:
            self._restarting = asyncio.ensure_future(self._start_quietly())

    async def _start_quietly(self) -> None:
        try:
            await self._start(by_itself=True)
        except Exception as e:  # tried again after the pause, while flows are still held
            log.error("the decider could not be started again for held flows: %s", e)
            self._restart_for_held_flows()

    def _unsendable(self, envelope: Envelope, error: Exception) -> None:
        """A message the link cannot carry fails alone, not the batch it was sent with: a call
        fails (its request is refused); an outcome is dropped, said in the log."""
        log.error("a %s could not be sent to the decider: %r",
                  type(envelope.message).__name__, error)  # fmt: skip
        self._unconfirmed.pop(envelope.sequence, None)
        future = self._waiting.pop(envelope.sequence, None)
        if future is not None and not future.done():
            future.set_exception(StoreError(f"cannot be sent to the decider: {error!r}"))

    def _fail_waiting(self, reason: str) -> None:
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(StoreError(reason))


# --- in a worker process -------------------------------------------------------------------------


class WorkerDecider(DeciderClient):
    program = "airlock.decider.worker"  # the module the worker process runs
    killable = True

    async def _open(self) -> _Link:
        return await _ProcessLink.open(self, self.program)


class _ProcessLink(asyncio.Protocol):
    def __init__(self, client: DeciderClient, process: subprocess.Popen[bytes]) -> None:
        self.client = client
        self.process = process
        self.reader = Reader()
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @classmethod
    async def open(cls, client: DeciderClient, program: str) -> _ProcessLink:
        ours, theirs = socket.socketpair()
        process = subprocess.Popen(
            [sys.executable, "-m", program, str(theirs.fileno())], pass_fds=[theirs.fileno()]
        )
        theirs.close()
        loop = asyncio.get_running_loop()
        _, link = await loop.create_connection(lambda: cls(client, process), sock=ours)
        # Over the socket, not argv: a password must not show in ps.
        link.transport.write(pack(client.store))  # type: ignore[union-attr]
        return link

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.client._on_answers(self.reader.feed(data))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        reason = f"the decider process is unreachable: {exc}" if exc else "the decider exited"
        self.client._on_lost(self, reason)

    def post(self, envelopes: list[Envelope]) -> None:
        if envelopes and self.transport is not None and not self.transport.is_closing():
            self.transport.write(self._packed(envelopes))

    def _packed(self, envelopes: list[Envelope]) -> bytes:
        try:
            return pack_all(envelopes)
        except Exception:  # one msgpack cannot carry (nested too deep): it alone fails
            return b"".join(self._packed_or_failed(envelope) for envelope in envelopes)

    def _packed_or_failed(self, envelope: Envelope) -> bytes:
        try:
            return pack(envelope)
        except Exception as e:
            self.client._unsendable(envelope, e)
            return b""

    def alive(self) -> bool:
        return self.process.poll() is None

    async def close(self, timeout: float) -> None:
        """End of input: the worker writes what it received, answers, and exits."""
        assert self.transport is not None
        if not self.transport.is_closing():
            self.transport.write_eof()
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), timeout)
            await asyncio.wait_for(asyncio.to_thread(self.process.wait), timeout)
        except TimeoutError:
            log.error("the decider did not finish within %.0f s and was stopped", timeout)
            self.kill()

    def kill(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        if self.process.poll() is None:
            self.process.kill()


# --- in the proxy's process ---------------------------------------------------------------------

_END = None  # end of input


class InProcessDecider(DeciderClient):
    async def _open(self) -> _Link:
        return _ThreadLink(self)


class _ThreadLink:
    """The core in a thread: the same messages and answers, carried by a queue one way and the
    event loop's call_soon_threadsafe the other."""

    def __init__(self, client: DeciderClient) -> None:
        self.client = client
        self.loop = asyncio.get_running_loop()
        self.inbox: queue.SimpleQueue[list[Envelope] | None] = queue.SimpleQueue()
        self.ended = False
        self.thread = threading.Thread(target=self._run, name="airlock-decider", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        reason = "the decider thread stopped"
        try:
            serve(DeciderCore(self.client.store), self)
        except Exception as e:
            log.exception("the decider thread failed")
            reason = f"the decider thread failed: {e!r}"
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self.loop.call_soon_threadsafe(self.client._on_lost, self, reason)

    # the core's side (decider/serve.py Link)

    def receive(self, timeout: float | None) -> list[Envelope] | None:
        if self.ended:
            return None
        try:
            items = [self.inbox.get(timeout=timeout)]
        except queue.Empty:
            return []
        while not self.inbox.empty():
            items.append(self.inbox.get_nowait())
        batch: list[Envelope] = []
        for item in items:
            if item is _END:
                self.ended = True
                break
            batch += item
        return batch if batch or not self.ended else None

    def send(self, answers: list[Answer]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self.loop.call_soon_threadsafe(self.client._on_answers, answers)

    # the proxy's side

    def post(self, envelopes: list[Envelope]) -> None:
        if envelopes:
            self.inbox.put(envelopes)

    def alive(self) -> bool:
        return self.thread.is_alive()

    async def close(self, timeout: float) -> None:
        self.inbox.put(_END)
        await asyncio.to_thread(self.thread.join, timeout)
        if self.thread.is_alive():
            log.error("the decider thread did not finish within %.0f s", timeout)

    def kill(self) -> None:
        self.inbox.put(_END)  # a thread cannot be killed: it ends after what it was sent


WORKER, IN_PROCESS = "worker", "in-process"
DECIDER_KINDS = (WORKER, IN_PROCESS)  # airlock_decider's choices


def decider_for(kind: str) -> type[DeciderClient]:
    return {WORKER: WorkerDecider, IN_PROCESS: InProcessDecider}[kind]
