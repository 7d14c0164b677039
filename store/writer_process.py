"""The store's writer process: `python -m store.writer_process FD`, started by StoreWriter.

FD is its end of a socket pair. The first frame is the database URL; then each read takes every
job sent meanwhile, writes them as one group (one transaction, one fsync) and answers. End of
input (the proxy stopped, or died) means: write what was received, then exit.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import time

from store.schema import open_engine
from store.wire import frame, job_from, result_value, unframe
from store.writer import READ_SIZE, GroupWriter, Pending

log = logging.getLogger("airlock.store.writer")


def serve(sock: socket.socket) -> None:
    received = bytearray()
    messages: list = []
    while not messages:  # the URL comes first
        chunk = sock.recv(READ_SIZE)
        if not chunk:
            return
        received += chunk
        messages = unframe(received)
    writer = GroupWriter(open_engine(messages.pop(0)))
    try:
        while True:
            if messages:
                _write(sock, writer, messages)
            chunk = sock.recv(READ_SIZE)
            if not chunk:
                break
            received += chunk
            messages = unframe(received)
    finally:
        writer.close()
        writer.engine.dispose()


def _write(sock: socket.socket, writer: GroupWriter, messages: list) -> None:
    group = [Pending(seq, job_from(kind, fields)) for seq, kind, fields in messages]
    started = time.perf_counter()
    answers = writer.write_group(group)
    replies = [frame(["commit", time.perf_counter() - started, len(group)])]
    replies += [frame([seq, ok, result_value(value) if ok else value])
                for seq, ok, value in answers if seq]  # fmt: skip
    sock.sendall(b"".join(replies))


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="airlock store writer: %(message)s")
    # Ctrl-C reaches the whole process group: the proxy decides when this process ends (by
    # closing the socket), so that what it already sent is still written.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=int(argv[1]))
    sock.setblocking(True)
    try:
        serve(sock)
    except BrokenPipeError:
        return 0  # the proxy is gone; everything received was written
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
