"""The store's writer process: `python -m store.writer_process FD`, started by StoreWriter.

FD is its end of a socket pair. The first frame is the database URL; then each read takes every
job sent meanwhile and writes them as one group. End of input (the proxy stopped, or died)
means: write what was received, then exit.

On PostgreSQL (and SQLite without a file) a group is one durable transaction, answered after
its commit. On a SQLite file, a group of decisions and outcomes is first made durable in the
commit log (store/commit_log.py: one small fdatasync), answered, and then applied to SQLite
unsynced; a synced commit every second lets the log start over. Holds, settlements and releases
are always answered after a durable commit: their answers depend on the database.

A process may host the writer (`serve(sock, host)`): frames flagged for it (store/wire.py) go
to its `Host`, which turns them into store jobs and answers; the gate's decider does so.
"""

from __future__ import annotations

import base64
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import orjson

from store.commit_log import (
    SUFFIX,
    CommitLog,
    orphaned_logs,
    read_records,
    remove_locked,
    remove_unfinished_logs,
    sync_directory,
)
from store.schema import open_engine
from store.wire import (
    HOSTED,
    LOGGABLE,
    decode,
    decode_job,
    frame,
    job_fields,
    job_head,
    result_value,
    split_frames,
)
from store.writer import READ_SIZE, GroupWriter, Job, Pending

log = logging.getLogger("airlock.store.writer")

SYNC_INTERVAL = 1.0  # seconds logged groups may wait for SQLite's own fsync
LOG_LIMIT = 1 << 20  # bytes of log after which SQLite is synced at once


Results = dict[int, Any]  # answers by sequence number


@dataclass
class Taken:
    """What a host made of a batch of frames."""

    frames: list[bytes]  # store jobs to write: the hosted frames replaced by what they became
    results: Results = field(default_factory=dict)  # sent once the jobs are written
    answers: list[tuple[int, bool, Any]] = field(default_factory=list)  # nothing to write


class Host(Protocol):
    def take(self, frames: list[bytes]) -> Taken: ...

    def tick(self) -> float | None:
        """Periodic work; returns the seconds until it is due again (None: never)."""
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


class Server:
    def __init__(
        self,
        sock: socket.socket,
        writer: GroupWriter,
        commit_log: CommitLog | None,
        host: Host | None = None,
    ) -> None:
        self.sock = sock
        self.writer = writer
        self.log = commit_log
        self.host = host or StoreOnly()
        self.applied = 0  # sequence of the log's last record in the database
        self.stalled: tuple[list[Pending], int] | None = None  # logged, not yet in the database
        self.synced_at = time.monotonic()

    def run(self, received: bytearray) -> None:
        while True:
            frames = split_frames(received)
            if frames:
                self._write(frames)
            wait = self.host.tick()
            if self._owes_sync():
                wait = SYNC_INTERVAL if wait is None else min(wait, SYNC_INTERVAL)
            self.sock.settimeout(wait)
            try:
                chunk = self.sock.recv(READ_SIZE)
            except TimeoutError:
                self._catch_up()
                continue
            if not chunk:
                break
            received += chunk
        self._catch_up()
        self._retire_log()

    def _write(self, received: list[bytes]) -> None:
        taken = self.host.take(received)
        self._answer(taken.answers, None)
        frames, results = taken.frames, taken.results
        if not frames:
            return
        heads = [job_head(f) for f in frames]
        if self.stalled is not None and not self._retry_stalled():
            reason = "the store cannot write (records are waiting in its commit log)"
            self._answer([(seq, False, reason) for seq, _ in heads], None)
        elif not (
            self.log
            and all(flag == LOGGABLE for _, flag in heads)
            and self._log(frames, heads, results)
        ):
            self._write_durably(pending_jobs(frames), results)

    def _log(self, frames: list[bytes], heads: list[tuple[int, int]], results: Results) -> bool:
        """Durable in the log, acknowledged, then decoded and applied: decoding is not on the
        path of the requests waiting for the acknowledgement."""
        assert self.log is not None
        started = time.perf_counter()
        try:
            sequence = self.log.append(b"".join(frames))
        except OSError as e:
            log.error("the commit log could not be written (%s): writing to SQLite directly", e)
            self._abandon_log()
            return False
        awaited = [seq for seq, _ in heads if seq and seq not in results]
        logged = ["logged", time.perf_counter() - started, len(frames), awaited]
        answers = [frame([seq, True, value]) for seq, value in results.items()]
        self.sock.sendall(b"".join([frame(logged), *answers]))
        self._apply(logged_jobs(frames, self.log.path), sequence)
        if self.stalled is None and (
            self.log.offset > LOG_LIMIT or time.monotonic() - self.synced_at > SYNC_INTERVAL
        ):
            self._sync()
        return True

    def _apply(self, group: list[Pending], sequence: int) -> bool:
        assert self.log is not None
        try:
            keep = partial(keep_refused, self.log.path)
            self.writer.apply_logged(group, (self.log.path.name, sequence), keep)
        except Exception as e:
            log.error("the database refused a logged group (kept, tried again): %s", e)
            self.stalled = (group, sequence)
            return False
        self.applied, self.stalled = sequence, None
        return True

    def _retry_stalled(self) -> bool:
        assert self.stalled is not None
        return self._apply(*self.stalled)

    def _write_durably(self, group: list[Pending], results: Results) -> None:
        started = time.perf_counter()
        answers = [
            (seq, ok, results[seq] if ok and seq in results else value)
            for seq, ok, value in self.writer.write_group(group)
        ]
        self._answer(answers, (started, len(group)))

    def _owes_sync(self) -> bool:
        return self.stalled is not None or (self.log is not None and self.log.holds_records)

    def _catch_up(self) -> None:
        """Idle (or stopping): apply what is stalled, then sync SQLite so the log starts over."""
        if self.stalled is not None and not self._retry_stalled():
            return
        if self.log is not None and self.log.holds_records:
            self._sync()

    def _sync(self) -> bool:
        """One synced commit with the mark of the last record applied: the log starts over."""
        assert self.log is not None and self.stalled is None
        try:
            self.writer.make_durable((self.log.path.name, self.applied))
        except Exception as e:
            log.error("the store could not sync (the commit log keeps the records): %s", e)
            return False
        self.log.start_over()
        self.synced_at = time.monotonic()
        return True

    def _abandon_log(self) -> None:
        """The log failed a write (which may be half on disk): sync what it vouches for and go
        on without it. If even that fails, this process ends; the log is replayed at restart."""
        assert self.log is not None
        if self.stalled is not None or not self._sync():
            raise RuntimeError("the commit log failed and the database cannot be synced")
        self._retire_log()
        self.log = None

    def _retire_log(self) -> None:
        """Stopping with everything synced: the log goes, then its mark (in that order: a mark
        without its log is harmless, a log without its mark would be replayed twice)."""
        if self.log is None or self.stalled is not None or self.log.holds_records:
            return  # kept: the next writer replays it
        self.log.close_and_remove()
        self.writer.forget_mark(self.log.path.name)

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


def pending_jobs(frames: list[bytes]) -> list[Pending]:
    return [Pending(*decode_job(f)) for f in frames]


def logged_jobs(frames: list[bytes], log_path: Path) -> list[Pending]:
    """The jobs of a logged (so acknowledged) group. One that cannot be decoded (say, written
    by a newer version) is kept in the refused file: it must neither be lost nor stop the
    writer, which would then fail at every start replaying it."""
    jobs = []
    for whole_frame in frames:
        try:
            jobs.append(Pending(*decode_job(whole_frame)))
        except Exception as e:
            frame_text = base64.b64encode(whole_frame).decode()
            _keep(log_path, {"error": f"cannot decode: {e!r}", "frame": frame_text})
    return jobs


def keep_refused(log_path: Path, job: Job, error: str) -> None:
    """A logged record the database refuses is not lost: it goes to a file beside the store,
    durably, before the commit that leaves it out."""
    kind, fields = job_fields(job)
    _keep(log_path, {"error": error, "kind": kind, "fields": fields})


def _keep(log_path: Path, entry: dict[str, Any]) -> None:
    path = log_path.with_name(log_path.name.split(SUFFIX)[0] + "-refused.jsonl")
    log.error("a logged record was not written to the database (kept in %s): %s", path,
              entry["error"])  # fmt: skip
    line = orjson.dumps({"at": time.time(), **entry})
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        sync_directory(path.parent)


def replay_orphaned_logs(writer: GroupWriter, database: Path) -> None:
    """Apply what writers that died left in their logs, before taking new jobs."""
    for path, fd in orphaned_logs(database):
        try:
            _replay(writer, path, fd)
            remove_locked(path)  # before the lock goes: see orphaned_logs
        finally:
            os.close(fd)
        writer.forget_mark(path.name)


def _replay(writer: GroupWriter, path: Path, fd: int) -> None:
    mark = writer.mark_of(path.name)
    last, count = mark, 0
    keep = partial(keep_refused, path)
    for sequence, payload in read_records(fd):
        if sequence <= mark:
            continue
        group = logged_jobs(split_frames(bytearray(payload)), path)
        writer.apply_logged(group, (path.name, sequence), keep)
        last, count = sequence, count + 1
    # Synced even with nothing to replay: the dead writer's own last commits may not be yet.
    writer.make_durable((path.name, last))
    if count:
        log.warning("replayed %d groups a stopped writer left in %s", count, path.name)


def commit_log_for(writer: GroupWriter) -> CommitLog | None:
    url = writer.engine.url
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    database = Path(url.database).resolve()
    if remove_unfinished_logs(database):
        log.warning("removed unfinished commit logs (their writers died creating them)")
    replay_orphaned_logs(writer, database)
    return CommitLog.create_beside(database)


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
    writer = GroupWriter(open_engine(decode(frames[0])))
    try:
        commit_log = commit_log_for(writer)  # replayed before the host reads the database
        server = Server(sock, writer, commit_log, make_host(writer) if make_host else None)
        server.run(received)
    finally:
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
    except BrokenPipeError:
        return 0  # the proxy is gone; everything received was written
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
