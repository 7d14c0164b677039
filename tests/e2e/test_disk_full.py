"""End to end: the store's disk fills up under a running proxy, then has room again.

The SQLite store lives on a small tmpfs. While no record can be written, every request is
refused (403, "could not be recorded") and counted as a fail-closed store refusal; nothing
reaches the upstream without its committed record. Once space is freed, the same proxy (not
restarted) allows and records again, and the audit trail verifies intact afterwards.
"""

from __future__ import annotations

import errno
import itertools
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs

import pytest
import requests

from airlock.console.standins import Upstream
from airlock.store.schema import Run
from tests.e2e.test_gate import CHARGES, airlock, eventually, runs
from tests.helpers.proxy import Proxy

pytestmark = pytest.mark.e2e

DISK_KB = 2048  # room for the empty database, its WAL and index, and some records
HEADROOM = 384 * 1024  # left free by the first filler: the records themselves fill it
PAD = "x" * 4000  # each record carries ~4 KB of request body (and its audit event)
MAX_TO_FILL = 300  # requests sent to fill the headroom before giving up
REFUSED_WHILE_FULL = 5
RECOVERY_TIMEOUT = 10.0
UNRECORDED = "could not be recorded"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A DISK_KB tmpfs of its own, unmounted afterwards (lazily if something still holds it)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_KB}k", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=False)


def free_bytes(directory: Path) -> int:
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize


def fill(filler: Path, leave: int = 0) -> None:
    """Grow the filler until at most `leave` bytes are free (0: until the disk says ENOSPC)."""
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while (room := free_bytes(filler.parent) - leave) > 0:
            try:
                os.write(fd, b"\0" * min(room, 1 << 16))
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                break
    finally:
        os.close(fd)


def metric(proxy: Proxy, name: str) -> float:
    page = requests.get(f"http://127.0.0.1:{proxy.metrics_port}/metrics", timeout=5).text
    for line in page.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def tag_of(body: bytes | dict[str, object] | None) -> str | None:
    """The unique tag a test request carries in its Stripe metadata."""
    if isinstance(body, bytes):
        return parse_qs(body.decode()).get("metadata[tag]", [None])[0]
    metadata = (body or {}).get("metadata")
    return metadata.get("tag") if isinstance(metadata, dict) else None


def test_a_full_disk_refuses_every_request_then_recovers_without_a_restart(
    start_proxy: Callable[..., Proxy], upstream: Upstream, small_disk: Path
) -> None:
    started = time.monotonic()
    proxy = start_proxy(db_url=f"sqlite:///{small_disk / 'airlock.db'}")
    try:
        session = proxy.session(agent="disk-bot")
        tags = (f"df-{i:04d}" for i in itertools.count())
        allowed: dict[str, str] = {}  # tag → request id of each 200
        refused: dict[str, str] = {}  # tag → reason of each "could not be recorded" 403

        def send() -> requests.Response:
            tag = next(tags)
            data = {"amount": 500, "currency": "usd", "metadata[tag]": tag, "metadata[pad]": PAD}
            response = session.post(CHARGES, data=data)
            if response.status_code == 200:
                allowed[tag] = response.headers["X-Airlock-Request-Id"]
            else:
                assert response.status_code == 403, response.text
                reason = response.json()["reason"]
                assert UNRECORDED in reason, reason
                refused[tag] = reason
            return response

        def outcomes_written() -> bool:
            return all(r.outcome for r in runs(proxy))

        # Room to spare: allowed and recorded as usual.
        for _ in range(3):
            assert send().status_code == 200
        baseline = set(allowed)
        assert eventually(outcomes_written)

        # Nearly full, then the records themselves fill the rest: the first refusal.
        filler = small_disk / "filler"
        fill(filler, leave=HEADROOM)
        for _ in range(MAX_TO_FILL):
            if send().status_code == 403:
                break
        assert refused, f"{MAX_TO_FILL} records fit in {HEADROOM} bytes; the disk never filled"
        filled_at = time.monotonic()
        fitted = len(allowed) - len(baseline)

        # Full, to the last byte: every request is refused and none reaches the upstream.
        fill(filler)
        assert free_bytes(small_disk) == 0
        forwarded_before = upstream.count()
        refused_before = len(refused)
        for _ in range(REFUSED_WHILE_FULL):
            assert send().status_code == 403
        assert len(refused) == refused_before + REFUSED_WHILE_FULL
        assert upstream.count() == forwarded_before
        refusals = metric(proxy, 'airlock_fail_closed_total{stage="store"}')
        assert refusals >= len(refused) > 0

        # Room again: the same proxy allows and records again, within a bounded time.
        filler.unlink()
        freed_at = time.monotonic()
        assert eventually(lambda: send().status_code == 200, RECOVERY_TIMEOUT), (
            f"no request was allowed within {RECOVERY_TIMEOUT} s of freeing space:\n"
            + proxy.output()[-4000:]
        )
        recovered_in = time.monotonic() - freed_at
        for _ in range(3):
            assert send().status_code == 200

        def recorded_after_recovery() -> dict[str, Run]:
            """Every allowed request's record, with its outcome: one the full disk refused is
            written once the store takes writes again (tried every second)."""
            found = {tag_of(r.request.get("body")): r for r in runs(proxy)}
            done = all(t in found and found[t].outcome for t in allowed)
            return found if done else {}

        records = eventually(recorded_after_recovery)
        assert records, f"not recorded after recovery:\n{proxy.output()[-4000:]}"

        # Nothing reached the upstream without its committed ALLOW record; nothing refused did.
        forwarded = [tag_of(r.body) for r in upstream.received]
        assert len(forwarded) == len(set(forwarded)) == len(allowed)
        assert set(forwarded) == set(allowed)
        assert not set(forwarded) & set(refused)
        for tag in forwarded:
            assert tag in records, f"{tag} was forwarded without a record"
            assert (records[tag].id, records[tag].decision) == (allowed[tag], "ALLOW")
        for tag in set(records) & set(refused):  # written after all? then never as allowed
            assert records[tag].decision != "ALLOW", f"refused {tag} is recorded as allowed"
        for tag in forwarded:  # none lost, though some met the full disk
            assert (records[tag].outcome, records[tag].status) == ("forwarded", 200), tag
    finally:
        stopped = proxy.stop()

    assert stopped == 0, proxy.output()[-4000:]
    verified = airlock("audit", "verify", "--db", proxy.db_url)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "intact" in verified.stdout
    print(
        f"\n{fitted} records filled {HEADROOM // 1024} KiB; "
        f"allowed {len(allowed)}, refused {len(refused)} (fail_closed store={refusals:.0f}); "
        f"first refusal after {filled_at - started:.1f} s; recovered {recovered_in:.2f} s after "
        f"space was freed; proxy exit {stopped}; total {time.monotonic() - started:.1f} s"
    )
