"""The store's writer process: `python -m airlock.store.writer_process FD`, started by
StoreWriter.

FD is its end of a socket pair. The first frame names the store ({"url", "durability"}); then
each read takes every job sent meanwhile and writes them as one group. End of input (the proxy
stopped, or died) means: write what was received, then exit.

A group is one transaction, answered once the database's own commit made it durable (SQLite in
WAL with synchronous=FULL, PostgreSQL's commit; with --durability process, SQLite NORMAL and
PostgreSQL synchronous_commit=off): what is acknowledged is what readers and
`airlock audit verify` see. A record the database refuses fails its own request and no other.

A process may host the writer (`serve(sock, host)`): frames flagged for it (store/wire.py) go
to its `Host`, which turns them into store jobs and answers; the gate's decider does so.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from airlock.store.records import OutcomeRecord
from airlock.store.schema import open_engine
from airlock.store.wire import (
    HOSTED,
    decode,
    decode_job,
    frame,
    job_head,
    result_value,
    split_frames,
)
from airlock.store.writer import READ_SIZE, GroupWriter, Pending

log = logging.getLogger("airlock.store.writer")


Results = dict[int, Any]  # answers by sequence number
RETRY_SECONDS = 1.0  # how often outcomes the store refused are tried again
MAX_UNWRITTEN = 10_000  # outcomes kept for another try; the oldest go past it (logged)


@dataclass
class Taken:
    """What a host made of a batch of frames."""

    frames: list[bytes]  # store jobs to write: the hosted frames replaced by what they became
    # sent once the jobs are written; a callable is given what the write returned first
    results: Results = field(default_factory=dict)
    answers: list[tuple[int, bool, Any]] = field(default_factory=list)  # nothing to write


class Host(Protocol):
    def take(self, frames: list[bytes]) -> Taken: ...

    def tick(self) -> float | None:
        """Periodic work; returns the seconds until it is due again (None: never)."""
        ...

    def pushed(self) -> list[Any]:
        """Messages for the proxy nobody asked for (a reviewer settled a held approval)."""
        ...

    def done(self) -> None:
        """The proxy is gone or stopping: everything received was written."""
        ...


class StoreOnly:
    """No host: a frame meant for one is refused."""

    def take(self, frames: list[bytes]) -> Taken:
        taken = Taken([])
        for whole_frame in frames:
            sequence, flag = job_head(whole_frame)
            if flag == HOSTED:
                taken.answers.append((sequence, False, "this store writer hosts nothing"))
            else:
                taken.frames.append(whole_frame)
        return taken

    def tick(self) -> float | None:
        return None

    def pushed(self) -> list[Any]:
        return []

    def done(self) -> None:
        return None


class Server:
    def __init__(self, sock: socket.socket, writer: GroupWriter, host: Host | None = None) -> None:
        self.sock = sock
        self.writer = writer
        self.host = host or StoreOnly()
        # Outcomes (nobody awaits them) the store could not take: tried again on their own every
        # RETRY_SECONDS, so one that keeps failing never fails the groups behind it.
        self.unwritten: list[Pending] = []
        self.retry_at = 0.0

    def run(self, received: bytearray) -> None:
        while True:
            frames = split_frames(received)
            if frames:
                self._write(frames)
            self._retry_unwritten()
            wait = self._wait()
            self._push()
            self.sock.settimeout(wait)
            try:
                chunk = self.sock.recv(READ_SIZE)
            except TimeoutError:
                continue
            if not chunk:
                break
            received += chunk
        self._retry_unwritten(now=True)

    def _wait(self) -> float | None:
        wait = self.host.tick()
        if self.unwritten:
            due = max(0.0, self.retry_at - time.monotonic())
            wait = due if wait is None else min(wait, due)
        return wait

    def _push(self) -> None:
        messages = self.host.pushed()
        if messages:
            self.sock.sendall(b"".join(frame(message) for message in messages))

    def _write(self, received: list[bytes]) -> None:
        taken = self.host.take(received)
        self._answer(taken.answers, None)
        if taken.frames:
            self._write_durably(pending_jobs(taken.frames), taken.results)

    def _write_durably(self, group: list[Pending], results: Results) -> None:
        """One transaction, committed by the database's own durability (SQLite WAL with
        synchronous=FULL, PostgreSQL's commit), then answered. A job the database refuses fails
        alone (GroupWriter.write_group): its request is refused, the others go on."""
        started = time.perf_counter()
        written = self.writer.write_group(group)
        self._keep_unwritten(group, written)
        answers = [
            _result(seq, results[seq], value) if ok and seq in results else (seq, ok, value)
            for seq, ok, value in written
        ]
        self._answer(answers, (started, len(group)))

    def _keep_unwritten(self, group: list[Pending], written: list[tuple[int, bool, Any]]) -> None:
        failed = [p for p, (_, ok, _) in zip(group, written, strict=True) if not ok]
        unawaited = [p for p in failed if isinstance(p.job, OutcomeRecord)]
        if not unawaited:
            return
        if not self.unwritten:
            self.retry_at = time.monotonic() + RETRY_SECONDS
        self.unwritten += unawaited
        if len(self.unwritten) > MAX_UNWRITTEN:
            dropped = len(self.unwritten) - MAX_UNWRITTEN
            log.error("%d outcomes dropped: the store has refused writes for too long", dropped)
            del self.unwritten[:dropped]

    def _retry_unwritten(self, now: bool = False) -> None:
        if not self.unwritten or (not now and time.monotonic() < self.retry_at):
            return
        group, self.unwritten = self.unwritten, []
        self._write_durably(group, {})
        self.retry_at = time.monotonic() + RETRY_SECONDS

    def _answer(
        self, answers: list[tuple[int, bool, Any]], commit: tuple[float, int] | None
    ) -> None:
        replies = []
        if commit is not None:
            started, size = commit
            replies.append(frame(["commit", time.perf_counter() - started, size]))
        replies += [frame([seq, ok, result_value(value) if ok else value])
                    for seq, ok, value in answers if seq]  # fmt: skip
        if replies:
            self.sock.sendall(b"".join(replies))


def _result(sequence: int, host_result: Any, written: Any) -> tuple[int, bool, Any]:
    """The answer to a written job: the host's, given what the write returned when it asks."""
    if not callable(host_result):
        return sequence, True, host_result
    try:
        return sequence, True, host_result(written)
    except Exception as e:  # its request is refused; the writer and the others go on
        log.exception("answering job %d failed", sequence)
        return sequence, False, f"the answer could not be made: {e!r}"


def pending_jobs(frames: list[bytes]) -> list[Pending]:
    return [Pending(*decode_job(f)) for f in frames]


HostFactory = Callable[[GroupWriter], Host]


def serve(sock: socket.socket, make_host: HostFactory | None = None) -> None:
    received = bytearray()
    frames: list[bytes] = []
    while not frames:  # the URL comes first
        chunk = sock.recv(READ_SIZE)
        if not chunk:
            return
        received += chunk
        frames = split_frames(received)
    received[0:0] = b"".join(frames[1:])  # jobs already sent behind it
    store = decode(frames[0])
    writer = GroupWriter(open_engine(store["url"], store["durability"]))
    host = make_host(writer) if make_host else None
    try:
        Server(sock, writer, host).run(received)
    finally:
        if host is not None:
            host.done()
        writer.close()
        writer.engine.dispose()


def main(argv: list[str], make_host: HostFactory | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="airlock store writer: %(message)s")
    # Ctrl-C reaches the whole process group: the proxy decides when this process ends (by
    # closing the socket), so that what it already sent is still written.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=int(argv[1]))
    sock.setblocking(True)
    try:
        serve(sock, make_host)
    except (BrokenPipeError, ConnectionResetError):
        return 0  # the proxy is gone (stopped or killed); everything received was written
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
