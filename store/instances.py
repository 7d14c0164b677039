"""Which proxy instances are still running, for what they hold (approvals, runs in flight).

Each instance's decider keeps a lease (table `instances`): taken at start, renewed on its sync
(every 2 s), ended when it stops. An instance is gone when it said it stopped, when its lease is
older than LEASE_SECONDS (clocks of instances on one database must agree within that, as
approvals' expiry times already ask), or, when it ran in the judge's own pid namespace (same
machine boot, same container), when its process is not running or its pid is now another
instance's. A pid says nothing across namespaces: two containers with the same hostname each
have a pid 1, so neither takes the other for dead. Instances recorded before leases existed
(no row) are judged as they were: a process of this host that is not running.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Engine

from airlock.store.schema import InstanceLease, write_transaction

LEASE_SECONDS = 30.0  # fifteen missed renewals: a stalled decider is not taken for dead
# How long running instances leave a stopped one's approvals open: an SDK's retry of a call whose
# connection dropped comes within seconds and joins the approval rather than opening another.
RETRY_GRACE_SECONDS = 10.0
# A lease renewed after this long a silence (the store hung, or its decider was stuck), or a
# write that took this long, is a gap, as a failed renewal is: the other instances may not have
# renewed theirs either, and their leases are no evidence they are gone.
SILENCE_SECONDS = LEASE_SECONDS / 3


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


@cache
def pid_namespace() -> str:
    """This machine's boot and this process's pid namespace (Linux); elsewhere the host name."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return f"host:{socket.gethostname()}"


def pid_of(instance: str) -> str:
    """Instances are named HOST-PID.START (HOST-PID before START was added)."""
    return instance.rpartition("-")[2].partition(".")[0]


@dataclass(frozen=True)
class Here:
    """The instance judging (None: none running yet) and what it can see of its machine."""

    current: str | None
    host: str = field(default_factory=socket.gethostname)
    namespace: str = field(default_factory=pid_namespace)
    alive: Callable[[int], bool] = process_alive
    lease_seconds: float = LEASE_SECONDS
    # An instance with a lease is gone only this long after its last sign of life (its last
    # renewal, or the end of its lease): 0 at a start, RETRY_GRACE_SECONDS on a running sync.
    grace: float = 0.0


@dataclass(frozen=True)
class Lease:
    namespace: str
    pid: int
    seen_at: float
    stopped_at: float | None


@dataclass(frozen=True)
class Liveness:
    here: Here
    leases: dict[str, Lease]
    now: float

    def gone(self, instance: str) -> bool:
        here = self.here
        if instance == here.current:
            return False
        lease = self.leases.get(instance)
        if lease is None:
            return self._gone_before_leases(instance)
        if self.now - (lease.stopped_at or lease.seen_at) < here.grace:
            return False
        if lease.stopped_at is not None or self.now - lease.seen_at > here.lease_seconds:
            return True
        if lease.namespace != here.namespace:
            return False  # its pid means nothing here: the lease says it runs
        if here.current is not None and str(lease.pid) == pid_of(here.current):
            return True  # an earlier process that had the judging one's pid
        return not here.alive(lease.pid)

    def _gone_before_leases(self, instance: str) -> bool:
        here = self.here
        name, _, process = instance.rpartition("-")
        pid = process.partition(".")[0]
        if name != here.host or not pid.isdigit():
            return False  # another host's: taken as alive
        if here.current is not None and pid == pid_of(here.current):
            return True
        return not here.alive(int(pid))


def lease_of(row: Iterable[Any]) -> Lease | None:
    """A Lease from (namespace, pid, seen_at, stopped_at) columns; None when there is no row."""
    namespace, pid, seen_at, stopped_at = row
    return None if namespace is None else Lease(namespace, pid, seen_at, stopped_at)


def liveness(conn: Any, here: Here, instances: Iterable[str] | None = None) -> Liveness:
    """Judged from the leases of these instances (None: every instance's)."""
    query = select(
        InstanceLease.id, InstanceLease.namespace, InstanceLease.pid, InstanceLease.seen_at,
        InstanceLease.stopped_at,
    )  # fmt: skip
    if instances is not None:
        query = query.where(InstanceLease.id.in_(sorted(set(instances))))
    leases = {row[0]: lease_of(row[1:]) for row in conn.execute(query)}
    return Liveness(here, {k: v for k, v in leases.items() if v is not None}, time.time())


@dataclass(frozen=True)
class Renewal:
    kept: bool  # False: another instance had taken this one for gone (and settled what it held)
    silent_for: float  # seconds since this lease was renewed before (0 when taken just now)


def renew_lease(engine: Engine, instance: str, here: Here) -> Renewal:
    """Take or renew this instance's lease. Not kept when another instance had taken it for
    gone (its lease had lapsed, and what it held was settled): the caller should say so. A long
    silence (a store that hung rather than failed, a decider stuck) is a gap in which the other
    instances may not have renewed either."""
    with write_transaction(engine) as conn:
        now = time.time()  # once the transaction has begun: not before a wait for its lock
        row = conn.execute(
            select(InstanceLease.cleared_at, InstanceLease.seen_at)
            .where(InstanceLease.id == instance)
        ).first()  # fmt: skip
        if row is None:
            conn.execute(insert(InstanceLease).values(
                id=instance, host=here.host, namespace=here.namespace,
                pid=int(pid_of(instance) or 0), started_at=now, seen_at=now,
            ))  # fmt: skip
            return Renewal(True, 0.0)
        conn.execute(
            update(InstanceLease)
            .where(InstanceLease.id == instance)
            .values(seen_at=now, stopped_at=None, cleared_at=None)
        )
    return Renewal(row.cleared_at is None, max(0.0, now - row.seen_at))


def end_lease(engine: Engine, instance: str) -> None:
    """This instance stops: the others need not wait for its lease to lapse."""
    with write_transaction(engine) as conn:
        conn.execute(
            update(InstanceLease).where(InstanceLease.id == instance).values(stopped_at=time.time())
        )


def gone_uncleared(engine: Engine, here: Here) -> list[str]:
    """Instances gone whose leftovers nobody has settled yet (usually none: one small read)."""
    with engine.connect() as conn:
        return _gone_uncleared(conn, here)


def lock_uncleared_gone(conn: Any, here: Here) -> list[str]:
    """As gone_uncleared, in a write transaction, with their leases locked in one order
    (PostgreSQL: another instance settling the same leftovers waits, then finds them cleared;
    live instances' leases are not locked, so their renewals never wait)."""
    gone = _gone_uncleared(conn, here)
    if not gone:
        return []
    locked = (
        select(InstanceLease.id)
        .where(InstanceLease.id.in_(gone), InstanceLease.cleared_at.is_(None))
        .order_by(InstanceLease.id)
        .with_for_update()
    )
    return list(conn.execute(locked).scalars())


def _gone_uncleared(conn: Any, here: Here) -> list[str]:
    query = select(InstanceLease.id).where(InstanceLease.cleared_at.is_(None))
    ids = conn.execute(query).scalars().all()
    found = liveness(conn, here, ids)
    return [instance for instance in ids if found.gone(instance)]


def mark_cleared(conn: Any, instances: list[str], at: float) -> None:
    if instances:
        conn.execute(
            update(InstanceLease).where(InstanceLease.id.in_(instances)).values(cleared_at=at)
        )
