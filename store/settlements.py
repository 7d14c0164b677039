"""Which held approvals a reviewer (or another instance) settled, noticed without polling tables.

The decider watches the approvals its proxy holds flows for and pushes each settlement to the
proxy as it lands. It reads approval rows only when the database says something changed:
PostgreSQL notifies on SETTLED_CHANNEL in the settling transaction (delivered at its commit,
store/records.py settle_approval); SQLite's `PRAGMA data_version` changes whenever another
connection commits, a check that costs microseconds and no table read, and then only the audit
chain's approval events appended since the last look are read. A full read of what is watched
also runs every SAFETY_SECONDS, for a notification lost with a broken connection.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from sqlalchemy.engine import Engine

from airlock.store.approvals import approval_states, settled_after
from airlock.store.prepared import PENDING, SETTLED_CHANNEL
from airlock.store.records import Settlement

log = logging.getLogger(__name__)

CHECK_SECONDS = 0.02  # how often the change marker is looked at while anything is watched
SAFETY_SECONDS = 1.0


class SettlementWatch:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.postgres = engine.dialect.name == "postgresql"
        self.watched: set[str] = set()
        self._connection: Any = None  # a pooled connection kept for the marker, or LISTEN
        self._marker: Any = None  # SQLite's data_version last seen
        self._read_all_at = 0.0  # monotonic: when everything watched is read again
        self._named: set[str] = set()  # notified since the last read
        self._seq: int | None = None  # the audit chain's position at the last look (SQLite)

    def watch(self, ids: list[str]) -> None:
        """Newly watched approvals are read at the next check: one may be settled already."""
        self.watched.update(ids)
        self._read_all_at = 0.0

    def unwatch(self, approval_id: str) -> None:
        self.watched.discard(approval_id)

    def due(self) -> float | None:
        return CHECK_SECONDS if self.watched else None

    def settled(self) -> list[dict[str, Any]]:
        """Settlements of watched approvals since the last call (each reported once)."""
        if not self.watched:
            return []
        changed = self._changed()
        try:
            found = self._read(changed)
        except Exception as e:  # held flows time out meanwhile, which refuses them
            log.warning("cannot read approvals from the store: %s", e)
            return []
        found = [s for s in found if s.state != PENDING and s.approval_id in self.watched]
        for settlement in found:
            self.watched.discard(settlement.approval_id)
        return [
            {"id": s.approval_id, "state": s.state, "reviewer": s.reviewer, "reason": s.reason}
            for s in found
        ]

    def _read(self, changed: bool) -> list[Settlement]:
        """Every watched approval once a second (and when newly watched); otherwise, when the
        database says something changed, only what was named (PostgreSQL) or settled by events
        appended since the last look (SQLite)."""
        if time.monotonic() >= self._read_all_at:
            self._read_all_at = time.monotonic() + SAFETY_SECONDS
            self._named.clear()
            if not self.postgres:  # what settles after this read is in later events
                self._seq, _ = settled_after(self.engine, None)
            return list(approval_states(self.engine, self.watched).values())
        if self.postgres:
            named, self._named = self._named & self.watched, set()
        elif changed:
            self._seq, named = settled_after(self.engine, self._seq)
            named &= self.watched
        else:
            return []
        return list(approval_states(self.engine, named).values()) if named else []

    def _changed(self) -> bool:
        try:
            if self._connection is None:
                self._connect()
            return self._notified() if self.postgres else self._data_version_moved()
        except Exception as e:
            log.warning("cannot watch the store for settlements (reading every %.0f s): %s",
                        SAFETY_SECONDS, e)  # fmt: skip
            self.close()
            return False

    def _connect(self) -> None:
        self._connection = self.engine.raw_connection()
        if self.postgres:
            driver = self._connection.driver_connection
            driver.autocommit = True
            driver.execute(f"LISTEN {SETTLED_CHANNEL}")
        self._marker = None

    def _notified(self) -> bool:
        driver = self._connection.driver_connection
        for notification in driver.notifies(timeout=0):
            self._named.add(notification.payload)
        return bool(self._named)

    def _data_version_moved(self) -> bool:
        cursor = self._connection.cursor()
        try:
            cursor.execute("PRAGMA data_version")
            marker = cursor.fetchone()[0]
        finally:
            cursor.close()
        moved, self._marker = marker != self._marker, marker
        return moved

    def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):  # already broken: nothing to give back
                self._connection.invalidate()
            self._connection = None
