"""A witness: each signed audit checkpoint is also POSTed (text/plain) to a URL outside this
machine (`airlock run --witness-url`), so that whoever controls this machine, database and data
directory alike, cannot roll the chain back without the copy elsewhere disagreeing.

Best effort and off the decider's loop: a thread sends the newest note (an older one still
waiting is dropped, the newer covers it), with a timeout; failures are logged and counted.
"""

from __future__ import annotations

import logging
import threading
import urllib.request

from airlock.addons.notify import shown_url
from airlock.pipeline.redaction import redact_text

log = logging.getLogger(__name__)
TIMEOUT = 5.0


class Witness:
    def __init__(self, url: str) -> None:
        self.url = url
        self.sent = self.failed = 0
        self._next: str | None = None
        self._busy = False
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="airlock-witness", daemon=True)
        self._thread.start()

    def publish(self, note: str) -> None:
        """Called by the checkpointer: returns at once."""
        with self._ready:
            self._next = note
            self._ready.notify_all()

    def flush(self, timeout: float = TIMEOUT + 1) -> None:
        """Wait (at most `timeout`) until the newest note was sent or failed."""
        with self._ready:
            self._ready.wait_for(lambda: self._next is None and not self._busy, timeout)

    def _run(self) -> None:
        while True:
            with self._ready:
                self._ready.wait_for(lambda: self._next is not None)
                note, self._next, self._busy = self._next, None, True
            try:
                self._send(note or "")
            finally:
                with self._ready:
                    self._busy = False
                    self._ready.notify_all()

    def _send(self, note: str) -> None:
        request = urllib.request.Request(
            self.url, note.encode(), {"Content-Type": "text/plain; charset=utf-8"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
                answer.read()
            self.sent += 1
        except OSError as e:  # URLError, HTTPError, timeouts: all OSError
            self.failed += 1
            # Its path or query may be its credential: scheme and host only
            shown = shown_url(self.url)
            why = redact_text(str(e))
            log.warning("the witness at %s did not take the checkpoint: %s", shown, why)
