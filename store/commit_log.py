"""The writer process's commit log: a small fdatasync'd file that makes a group of records
durable before SQLite has written them, so that a decision waits for one small write instead of
SQLite's commit (~10 pages and an fsync per group).

SQLite behind it runs at `synchronous=NORMAL` (its commits are ordered but not yet on disk).
Every commit stores the log's last applied sequence number (`commit_log_marks`); after a
`synchronous=FULL` commit everything before it is on disk and the log starts over at offset 0.
After a crash, the next writer replays the records above the mark, in order, from every log
whose owner is gone (each live writer holds an exclusive lock on its own log).

Record: magic, CRC-32 of the rest, sequence number, length, payload (the group's frames).
Reading stops at the first record that is torn, corrupt or out of sequence; records after a
restart at offset 0 are never mistaken for new ones, because sequence numbers only grow.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

MAGIC = b"ALCL"
_HEADER = struct.Struct("!4sIQI")  # magic, crc32, sequence, payload length
PREALLOCATED = 2 << 20  # bytes written once at creation: later writes overwrite, never extend
SUFFIX = "-commitlog-"
# An unnamed log this old was left by a writer that died creating it. An hour, not less: the
# clocks of a network filesystem may disagree, and a writer may pause between create and lock.
UNFINISHED_AFTER = 3600.0


class CommitLog:
    """This writer's own log: created empty, locked for the writer's lifetime."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Locked before it has the name other writers look for: they must never take a live
        # log for a dead writer's.
        unnamed = path.with_name(f".{path.name}.new")
        self.fd = os.open(unnamed, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.pwrite(self.fd, bytes(PREALLOCATED), 0)
        os.fsync(self.fd)
        os.rename(unnamed, path)
        sync_directory(path.parent)
        self.offset = 0
        self.next_sequence = 1

    @classmethod
    def create_beside(cls, database: Path) -> CommitLog:
        return cls(
            database.with_name(f"{database.name}{SUFFIX}{os.getpid()}-{secrets.token_hex(4)}")
        )

    @property
    def holds_records(self) -> bool:
        return self.offset > 0

    def append(self, payload: bytes) -> int:
        """Write one group's record and wait until it is on disk; returns its sequence."""
        sequence = self.next_sequence
        record = _record(sequence, payload)
        if os.pwrite(self.fd, record, self.offset) != len(record):
            raise OSError("short write to the commit log")
        os.fdatasync(self.fd)
        self.offset += _HEADER.size + len(payload)
        self.next_sequence += 1
        return sequence

    def start_over(self) -> None:
        """Everything written so far is durable in the database: reuse the file from the start."""
        self.offset = 0

    def close_and_remove(self) -> None:
        remove_locked(self.path)
        os.close(self.fd)


def _record(sequence: int, payload: bytes) -> bytes:
    tail = struct.pack("!QI", sequence, len(payload)) + payload
    return MAGIC + struct.pack("!I", zlib.crc32(tail)) + tail


def read_records(fd: int) -> Iterator[tuple[int, bytes]]:
    """(sequence, payload) of each intact record from the start, in order."""
    size = os.fstat(fd).st_size
    offset, expected = 0, None
    while offset + _HEADER.size <= size:
        magic, crc, sequence, length = _HEADER.unpack(os.pread(fd, _HEADER.size, offset))
        if magic != MAGIC or offset + _HEADER.size + length > size:
            return
        payload = os.pread(fd, length, offset + _HEADER.size)
        if zlib.crc32(struct.pack("!QI", sequence, length) + payload) != crc:
            return  # torn by a crash while it was written: it was never acknowledged
        if expected is not None and sequence != expected:
            return  # an older record, left from before the log started over
        yield sequence, payload
        offset += _HEADER.size + length
        expected = sequence + 1


def orphaned_logs(database: Path) -> Iterator[tuple[Path, int]]:
    """(path, locked fd) of every log beside this database whose writer is gone. Logs are removed
    while still locked, so a log found unlinked once locked was already replayed."""
    for path in sorted(database.parent.glob(f"{database.name}{SUFFIX}*")):
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            continue  # removed meanwhile by its writer
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # a live writer's own log
            continue
        if os.fstat(fd).st_nlink == 0:
            os.close(fd)  # replayed and removed by another writer while we waited for it
            continue
        yield path, fd


def remove_unfinished_logs(database: Path) -> int:
    """Remove logs whose writer died while creating them (before the rename that names them):
    nothing was ever written to those. Returns how many."""
    removed = 0
    for path in database.parent.glob(f".{database.name}{SUFFIX}*.new"):
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            continue
        try:
            # Recent ones may be between creation and lock: their writer is starting now.
            if time.time() - os.fstat(fd).st_mtime > UNFINISHED_AFTER:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                path.unlink(missing_ok=True)
                removed += 1
        except BlockingIOError:
            pass  # a writer is creating it right now
        finally:
            os.close(fd)
    return removed


def remove_locked(path: Path) -> None:
    """Remove a log while its lock is held (see orphaned_logs), durably: its mark is deleted
    next, and a log that came back without its mark would be replayed again."""
    path.unlink(missing_ok=True)
    sync_directory(path.parent)


def sync_directory(folder: Path) -> None:
    """A new file's name is durable only once its directory is synced."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
