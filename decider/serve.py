"""The decider's loop, whatever carries its messages (a socket from the proxy's worker process,
a queue in the proxy's own process): take everything sent meanwhile as one batch, answer it,
push settlements, do periodic work when due; at the end of input, finish and stop."""

from __future__ import annotations

from typing import Protocol

from airlock.decider.core import DeciderCore
from airlock.decider.messages import Answer, Envelope


class Link(Protocol):
    def receive(self, timeout: float | None) -> list[Envelope] | None:
        """Every message sent since the last call, waiting at most timeout seconds for one
        (None: without limit); [] when none came, None at the end of input."""
        ...

    def send(self, answers: list[Answer]) -> None: ...


def serve(core: DeciderCore, link: Link) -> None:
    try:
        while True:
            wait = core.wait()
            pushed = core.pushed()
            if pushed:
                link.send(pushed)
            batch = link.receive(wait)
            if batch is None:
                break
            if batch:
                link.send(core.handle(batch))
    finally:
        answers = core.finish()
        if answers:
            link.send(answers)
