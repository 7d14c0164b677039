"""End to end, a bounded crash campaign: while agents send allowed charges, kill -9 the proxy, its
decider process, or both, round after round, on SQLite and on PostgreSQL. Whatever the timing,
every request that reached the upstream has its committed ALLOW record (one, never two), every
request answered 200 reached the upstream, the proxy serves again after each crash (without a
restart when only the decider died), and the audit trail verifies."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs

import pytest
import requests

from airlock.console.standins import Upstream
from airlock.store.anchor import PUBLIC_FILE
from airlock.store.schema import Run
from tests.e2e.test_gate import CHARGES, airlock, eventually, runs
from tests.helpers.proxy import Proxy

pytestmark = pytest.mark.e2e

CLIENTS = 4
LOAD_SECONDS = 0.5  # of traffic before each kill
AFTER_KILL_SECONDS = 0.2  # clients keep sending this long after the kill
KINDS = ("proxy", "both", "decider")
# 2 per kind in the suite (the suite has a 10-minute budget); AIRLOCK_CRASH_ROUNDS=10 gives
# the 30-round campaign.
ROUNDS_PER_KIND = int(os.environ.get("AIRLOCK_CRASH_ROUNDS", "2"))
TAG = "metadata[tag]"


# --- the clients -----------------------------------------------------------------------------


@dataclass
class Tally:
    """What the clients sent and what came back, by tag (each tag is sent once)."""

    sent: list[str] = field(default_factory=list)
    answered: dict[str, int] = field(default_factory=dict)  # tag → HTTP status
    request_ids: dict[str, str] = field(default_factory=dict)  # tag answered 200 → run id
    errors: dict[str, str] = field(default_factory=dict)  # tag → exception (no answer)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, session: requests.Session, tag: str) -> int | None:
        with self.lock:
            self.sent.append(tag)
        try:
            response = session.post(
                CHARGES, data={"amount": 500, "currency": "usd", TAG: tag}, timeout=20
            )
        except requests.RequestException as e:
            with self.lock:
                self.errors[tag] = type(e).__name__
            return None
        with self.lock:
            self.answered[tag] = response.status_code
            if response.status_code == 200:
                self.request_ids[tag] = response.headers.get("X-Airlock-Request-Id", "")
        return response.status_code

    def ok(self) -> set[str]:
        return {tag for tag, status in self.answered.items() if status == 200}

    def refused(self) -> set[str]:
        return {tag for tag, status in self.answered.items() if status != 200}


class Clients:
    """CLIENTS threads, each sending charges with fresh tags until stopped."""

    def __init__(self, proxy: Proxy, tally: Tally, prefix: str) -> None:
        self.tally = tally
        self.stopping = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(proxy, f"{prefix}-c{i}", i), daemon=True)
            for i in range(CLIENTS)
        ]
        for thread in self.threads:
            thread.start()

    def _run(self, proxy: Proxy, prefix: str, index: int) -> None:
        session = proxy.session(agent=f"crash-bot-{index}")
        n = 0
        while not self.stopping.is_set():
            if self.tally.send(session, f"{prefix}-{n}") is None:
                time.sleep(0.05)  # the proxy is gone: do not spin on refused connections
            n += 1

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)
            assert not thread.is_alive(), "a client is stuck on a request"


# --- processes -------------------------------------------------------------------------------


def alive(pid: int) -> bool:
    """Running (a zombie nobody reaped is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def decider_of(proxy: Proxy) -> int | None:
    """The pid of the proxy's decider child (`python -m airlock.decider.worker FD`), if running."""
    assert proxy.process is not None
    found = subprocess.run(
        ["pgrep", "-P", str(proxy.process.pid)], capture_output=True, text=True, check=False
    )
    for pid in map(int, found.stdout.split()):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"airlock.decider.worker" in argv and alive(pid):
            return pid
    return None


def tag_of_run(request: dict[str, object] | None) -> str | None:
    body = (request or {}).get("body")
    metadata = body.get("metadata") if isinstance(body, dict) else None
    tag = metadata.get("tag") if isinstance(metadata, dict) else None
    return tag if isinstance(tag, str) else None


def log_excerpt(proxies: list[Proxy], limit: int = 40) -> str:
    lines = []
    for proxy in proxies:
        for line in proxy.output().splitlines():
            if any(word in line for word in ("error", "ERROR", "warn", "WARN", "Traceback")):
                lines.append(f"[{proxy.port}] {line}")
    return "\n".join(lines[-limit:])


# --- the campaign ----------------------------------------------------------------------------


@dataclass
class Campaign:
    start_proxy: Callable[..., Proxy]
    proxy: Proxy
    backend: str
    tally: Tally = field(default_factory=Tally)
    proxies: list[Proxy] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    lingering: list[int] = field(default_factory=list)  # deciders that outlived their proxy
    rounds: list[str] = field(default_factory=list)  # one summary line per round

    def __post_init__(self) -> None:
        self.proxies.append(self.proxy)

    @property
    def db_url(self) -> str:
        return self.proxy.db_url

    def public_keys(self) -> list[str]:
        """Each proxy started has its own data directory, so its own audit key: every group
        written, before or after a kill -9, must carry the seal of one of them."""
        keys = [str(p.workdir / PUBLIC_FILE) for p in self.proxies]
        return [arg for key in keys for arg in ("--public-key", key)]

    def round(self, number: int, kind: str) -> None:
        proxy, tally = self.proxy, self.tally
        prefix = f"{self.backend}-r{number}"
        assert proxy.process is not None
        proxy_pid = proxy.process.pid
        decider = eventually(lambda: decider_of(proxy))
        assert decider, f"round {number}: the proxy has no decider process"
        before = len(tally.sent), len(tally.ok()), len(tally.refused()), len(tally.errors)
        clients = Clients(proxy, tally, prefix)
        time.sleep(LOAD_SECONDS)
        if kind in ("decider", "both"):
            os.kill(decider, signal.SIGKILL)
        if kind in ("proxy", "both"):
            proxy.process.send_signal(signal.SIGKILL)
            proxy.process.wait(10)
        time.sleep(AFTER_KILL_SECONDS)
        clients.stop()
        after = len(tally.sent), len(tally.ok()), len(tally.refused()), len(tally.errors)
        sent, ok, refused, errors = (a - b for a, b in zip(after, before, strict=True))
        self.rounds.append(
            f"round {number} kill {kind}: sent {sent}, 200 {ok}, refused {refused}, errors {errors}"
        )

        if kind == "decider":
            if proxy.process.poll() is not None:
                self.problems.append(f"round {number}: the proxy died with its decider")
            if errors:
                self.problems.append(
                    f"round {number}: {errors} requests got no answer though only the decider "
                    f"died: {sorted(set(list(tally.errors.values())[before[3] :]))}"
                )
        else:
            if not eventually(lambda: not alive(decider), 10):
                self.lingering.append(decider)
                self.problems.append(f"round {number}: decider {decider} outlived its proxy")
            self.proxy = proxy = self.start_proxy(db_url=self.db_url)
            self.proxies.append(proxy)

        if not self.serves_again(f"{prefix}-check"):
            self.problems.append(f"round {number} ({kind}): the proxy did not serve again")
        if kind == "decider":
            assert proxy.process is not None and proxy.process.pid == proxy_pid
            now = decider_of(proxy)
            if now in (None, decider):
                self.problems.append(f"round {number}: no new decider (had {decider}, now {now})")
        verified = airlock("audit", "verify", "--db", self.db_url, *self.public_keys())
        if verified.returncode != 0:
            self.problems.append(
                f"round {number} ({kind}): audit verify exited {verified.returncode}: "
                f"{verified.stdout.strip()} {verified.stderr.strip()}"
            )

    def serves_again(self, prefix: str, timeout: float = 20) -> bool:
        """A request is answered 200 (a new decider started, if it had to be)."""
        session = self.proxy.session(agent="crash-bot-check")
        deadline = time.monotonic() + timeout
        for attempt in range(10_000):
            if self.tally.send(session, f"{prefix}-{attempt}") == 200:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return False


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_url(request: pytest.FixtureRequest) -> str | None:
    """None: the first proxy's own SQLite file, reused by the proxies started after it."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("empty_pg_database")


def test_kill_9_rounds_keep_every_forward_recorded_once(
    start_proxy: Callable[..., Proxy], upstream: Upstream, backend_url: str | None
) -> None:
    started = time.monotonic()
    backend = "sqlite" if backend_url is None else "postgresql"
    campaign = Campaign(start_proxy, start_proxy(db_url=backend_url), backend)
    # Ends on a decider kill: the live proxy cannot settle what its dead decider left.
    kinds = [kind for _ in range(ROUNDS_PER_KIND) for kind in KINDS]
    for number, kind in enumerate(kinds):
        campaign.round(number, kind)

    tally, problems = campaign.tally, campaign.problems
    received = Counter(
        parse_qs(r.body.decode()).get(TAG, ["<no tag>"])[0]
        for r in upstream.received
        if r.path.startswith("/v1/charges")
    )
    records = [r for r in runs(campaign.proxy) if tag_of_run(r.request) is not None]
    runs_by_tag: dict[str, list[Run]] = {}
    for record in records:
        runs_by_tag.setdefault(tag_of_run(record.request) or "", []).append(record)

    def shown(tag: str) -> list[tuple[str, str, str | None, str]]:
        return [(r.id, r.decision, r.outcome, r.instance) for r in runs_by_tag.get(tag, [])]

    for tag, count in received.items():
        if count > 1:
            problems.append(f"{tag} reached the upstream {count} times")
        allows = [r for r in runs_by_tag.get(tag, []) if r.decision == "ALLOW"]
        if len(allows) != 1:
            problems.append(
                f"{tag} reached the upstream with {len(allows)} ALLOW runs: {shown(tag)}"
            )
    for tag, tag_runs in runs_by_tag.items():
        if len(tag_runs) > 1:
            problems.append(f"{tag} has {len(tag_runs)} runs: {shown(tag)}")
        for record in tag_runs:
            if record.outcome == "forwarded" and tag not in received:
                problems.append(f"{tag} is on record as forwarded, never reached the upstream")
            if record.outcome in ("not_sent", "blocked") and tag in received:
                problems.append(f"{tag} is on record as {record.outcome}, reached the upstream")
    for tag in sorted(tally.ok()):
        if tag not in received:
            problems.append(f"{tag} was answered 200 but never reached the upstream")
        if tally.request_ids[tag] not in {r.id for r in runs_by_tag.get(tag, [])}:
            problems.append(
                f"{tag} was answered 200 naming {tally.request_ids[tag]!r}: {shown(tag)}"
            )
    for tag in sorted(tally.refused()):
        if tag in received:
            problems.append(f"{tag} was refused {tally.answered[tag]} but reached the upstream")
    unsent = set(received) - set(tally.sent)
    if unsent:
        problems.append(f"the upstream received tags nobody sent: {sorted(unsent)[:5]}")
    final = airlock("audit", "verify", "--db", campaign.db_url, *campaign.public_keys())
    if final.returncode != 0:
        problems.append(f"final audit verify exited {final.returncode}: {final.stderr.strip()}")

    outcomes = Counter(str(r.outcome) for r in records)
    refused_allowed = Counter(
        str(r.outcome)
        for tag in tally.refused()
        for r in runs_by_tag.get(tag, [])
        if r.decision == "ALLOW"
    )
    answered_ok = Counter(str(r.outcome) for tag in tally.ok() for r in runs_by_tag.get(tag, []))
    lost_outcomes = Counter(  # answered 200, yet not on record as forwarded: by round's kill
        (kinds[int(tag.split("-")[1][1:])], str(r.outcome))
        for tag in tally.ok()
        for r in runs_by_tag.get(tag, [])
        if r.outcome != "forwarded"
    )
    # A live proxy whose decider dies resends the outcomes it had not seen committed: none lost.
    # (A killed proxy loses those it held in memory: they become "unknown" at the next start.)
    for (kind, outcome), count in lost_outcomes.items():
        if kind == "decider":
            problems.append(f"{count} outcome(s) lost in decider-only kills, now {outcome}")
    # A request refused because its decider died after committing says so on its record.
    unsaid = {k: v for k, v in refused_allowed.items() if k != "store_failed"}
    if unsaid:
        problems.append(f"refused requests whose ALLOW run does not say so: {unsaid}")
    not_answered = Counter(
        (tag in received, str(r.outcome)) for tag in tally.errors for r in runs_by_tag.get(tag, [])
    )
    print(f"\n[{backend}] {len(kinds)} rounds in {time.monotonic() - started:.1f} s")
    print("\n".join(f"  {line}" for line in campaign.rounds))
    print(
        f"  sent {len(tally.sent)}, 200 {len(tally.ok())}, refused {len(tally.refused())} "
        f"{dict(Counter(tally.answered[t] for t in tally.refused()))}, "
        f"errors {len(tally.errors)} {dict(Counter(tally.errors.values()))}\n"
        f"  received {sum(received.values())} ({len(received)} tags), recorded {len(records)} "
        f"runs ({sum(r.decision == 'ALLOW' for r in records)} ALLOW), outcomes {dict(outcomes)}: "
        f"NULL {outcomes['None']}, unknown {outcomes['unknown']}, "
        f"not_sent {outcomes['not_sent']}\n"
        f"  refused requests with a committed ALLOW run, by outcome: {dict(refused_allowed)}\n"
        f"  runs of requests answered 200, by outcome: {dict(answered_ok)}\n"
        f"  of those not 'forwarded', by (round's kill, outcome): {dict(lost_outcomes)}\n"
        f"  unanswered requests' runs by (reached upstream, outcome): {dict(not_answered)}\n"
        f"  final audit: {final.stdout.strip()}"
    )
    for pid in campaign.lingering:  # descendants of this test's proxies
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    assert not problems, (
        "\n".join(problems[:30]) + "\n--- proxy logs ---\n" + log_excerpt(campaign.proxies)
    )
