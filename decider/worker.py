"""The decider's worker process: `python -m airlock.decider.worker FD`, started by the proxy
(decider/client.py WorkerDecider).

FD is its end of a socket pair. The first message names the store (a StoreAddress); then each
read takes every message sent meanwhile as one batch (decider/serve.py). End of input (the
proxy stopped, or died) means: write what was received, then exit.
"""

from __future__ import annotations

import logging
import select
import signal
import socket
import sys

from airlock.decider.core import DeciderCore
from airlock.decider.messages import Answer, Envelope, StoreAddress
from airlock.decider.serve import serve
from airlock.decider.wire import Reader, pack_all
from airlock.pipeline.redaction import redact_logs

READ_SIZE = 1 << 20


class SocketLink:
    """The socket stays blocking: only the wait for input has a limit (poll). A timeout on the
    socket itself would also bound sendall, and a proxy too busy to read for that long (a
    thousand requests arriving to be held) would fail the send and end the decider."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = Reader()
        self.received: list[object] = []
        self._input = select.poll()
        self._input.register(sock, select.POLLIN)

    def first(self) -> StoreAddress | None:
        while not self.received:
            chunk = self.sock.recv(READ_SIZE)
            if not chunk:
                return None
            self.received += self.reader.feed(chunk)
        address = self.received.pop(0)
        if not isinstance(address, StoreAddress):
            raise ValueError(f"expected the store's address first, got {type(address).__name__}")
        return address

    def receive(self, timeout: float | None) -> list[Envelope] | None:
        if self.received:  # sent behind the store's address
            batch, self.received = self.received, []
            return batch  # type: ignore[return-value]
        if not self._input.poll(None if timeout is None else timeout * 1000):
            return []
        chunk = self.sock.recv(READ_SIZE)
        if not chunk:
            return None
        return self.reader.feed(chunk)

    def send(self, answers: list[Answer]) -> None:
        self.sock.sendall(pack_all(answers))


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="airlock decider: %(message)s")
    redact_logs()
    # Ctrl-C reaches the whole process group, and so does a service manager's SIGTERM
    # (systemd's default): the proxy decides when this process ends (by closing the socket),
    # so that what it already sent, and what it sends while it stops, is still written.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = socket.socket(fileno=int(argv[1]))
    sock.setblocking(True)
    link = SocketLink(sock)
    try:
        address = link.first()
        if address is not None:
            serve(DeciderCore(address), link)
    except (BrokenPipeError, ConnectionResetError):
        return 0  # the proxy is gone (stopped or killed); everything received was written
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
