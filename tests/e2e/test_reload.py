"""`airlock reload` (SIGHUP): the configuration changes without a restart; a broken edit is
refused with file:line and the last good configuration stays in force; each decision records
the configuration that made it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from airlock.console.standins import Upstream
from tests.e2e.test_gate import CHARGES, airlock, eventually, runs
from tests.helpers.proxy import PROJECT_ROOT, Proxy, clean_env, share_request_key, wait_for_port

pytestmark = pytest.mark.e2e

NO_CHARGES = """rules:
  - {id: no-charges-today, when: {action: create_charge}, decision: BLOCK, reason: frozen}
"""
BROKEN = """rules:
  - {id: no-charges-today, when: {action: create_charge}, decision: BLOK}
"""


def test_reload_applies_a_good_edit_and_refuses_a_broken_one(
    start_proxy: Callable[..., Proxy], upstream: Upstream, tmp_path: Path
) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(PROJECT_ROOT / "policies", policies)
    proxy = start_proxy("--policies", str(policies))
    session = proxy.session()

    def charge() -> int:
        return session.post(CHARGES, data={"amount": 500, "currency": "usd"}).status_code

    assert charge() == 200
    # Compiled once by `airlock run`, its proxy took that compilation, not the disk's again.
    assert "took the" in proxy.output() and "policy rules in" not in proxy.output()
    (policies / "freeze.yaml").write_text(BROKEN)
    refused = airlock("reload", "--data-dir", str(proxy.workdir))
    assert refused.returncode == 2
    assert f"{policies / 'freeze.yaml'}:2" in refused.stderr and "BLOK" in refused.stderr
    assert "nothing was reloaded" in refused.stderr
    assert charge() == 200  # the last good configuration decides

    (policies / "freeze.yaml").write_text(NO_CHARGES)
    told = airlock("reload", "--data-dir", str(proxy.workdir))
    assert told.returncode == 0, told.stderr
    assert f"port {proxy.port}" in told.stdout
    assert eventually(lambda: "reloaded: deciding with configuration" in proxy.output())
    blocked = session.post(CHARGES, data={"amount": 500, "currency": "usd"})
    assert blocked.status_code == 403
    assert "no-charges-today" in blocked.json()["rules"]

    recorded = [run.config_hash for run in runs(proxy)]
    assert all(recorded) and len(recorded) == 3
    assert recorded[0] == recorded[1] != recorded[2]
    assert told.stdout.split("configuration ")[1][:12] == recorded[2][:12]
    assert upstream.count("/v1/charges") == 2


def test_reload_with_no_proxy_running_says_so(tmp_path: Path) -> None:
    done = airlock("reload", "--data-dir", str(tmp_path))
    assert done.returncode == 1
    assert "no Airlock proxy is running" in done.stderr


def test_two_reloads_in_quick_succession_leave_the_newer_configuration(
    start_proxy: Callable[..., Proxy], upstream: Upstream, tmp_path: Path
) -> None:
    """A reload still reading the older files when a second one comes: each compiled on its own
    and the slower finished last, its older files deciding. The first reload's files include a
    named pipe, so that it is still reading (blocked on the pipe) while the second runs."""
    policies = tmp_path / "policies"
    shutil.copytree(PROJECT_ROOT / "policies", policies)
    proxy = start_proxy("--policies", str(policies))
    assert proxy.process is not None
    session = proxy.session()
    # SIGHUP before the proxy listens for it would end the process (its default action).
    assert eventually(lambda: "deciding with configuration" in proxy.output(), timeout=30)
    pipe = policies / "later.yaml"
    os.mkfifo(pipe)
    proxy.process.send_signal(signal.SIGHUP)  # the first reload opens the pipe and waits
    # Opened for writing once the first reload is reading it (not waiting forever if it never
    # does: without a reader, a non-blocking open fails).
    descriptor = eventually(lambda: _open_for_writing(pipe), timeout=30)
    assert descriptor, proxy.output()[-2000:]
    with os.fdopen(descriptor, "w") as writer:
        pipe.unlink()
        (policies / "freeze.yaml").write_text(NO_CHARGES)
        proxy.process.send_signal(signal.SIGHUP)  # the second reads the newer files
        # Without one reload at a time, the second is applied now, before the first ends.
        eventually(lambda: "reloaded: deciding" in proxy.output(), timeout=3)
        writer.write("rules: []\n")

    def reloads_ended() -> int:
        return sum(proxy.output().count(said) for said in ("reloaded: deciding", "reload refused"))

    assert eventually(lambda: reloads_ended() == 2, timeout=30)
    blocked = session.post(CHARGES, data={"amount": 500, "currency": "usd"})
    assert blocked.status_code == 403
    assert "no-charges-today" in blocked.json()["rules"]


def _open_for_writing(pipe: Path) -> int | None:
    try:
        return os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # ENXIO: nobody reads it yet
        return None


def test_a_reload_while_the_proxy_starts_does_not_end_it(
    tmp_path: Path, upstream: Upstream
) -> None:
    """`airlock reload` finds a proxy as soon as it names itself in its data directory, before
    mitmproxy runs and listens for SIGHUP: the signal's default action ended the proxy."""
    proxy = Proxy(tmp_path, f"sqlite:///{tmp_path / 'airlock.db'}", {}, upstream.ca_file,
                  tmp_path / "certs", [])  # fmt: skip
    tmp_path.mkdir(exist_ok=True)
    share_request_key(tmp_path)
    with proxy.log_file.open("wb") as log:
        proxy.process = subprocess.Popen(
            proxy.command(), cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
            env=clean_env(),
        )  # fmt: skip
    try:
        named = tmp_path / "run" / f"airlock-{proxy.port}.json"
        assert eventually(named.exists, timeout=30), proxy.log_file.read_text()
        proxy.process.send_signal(signal.SIGHUP)
        wait_for_port(proxy.port, proxy.process, proxy.log_file)
        assert proxy.process.poll() is None
    finally:
        proxy.stop()


def test_a_reload_while_the_decider_is_down_is_taken_by_the_one_started_next(
    start_proxy: Callable[..., Proxy], upstream: Upstream, tmp_path: Path
) -> None:
    """Review: with the decider killed, a reload was refused ("the decider is not running")
    after `airlock reload` had said it was told, and the next request started a decider with
    the old configuration: a freeze never took. The proxy switches, and its next decider is
    set up with what it switched to."""
    from tests.e2e.test_crash_rounds import decider_of

    policies = tmp_path / "policies"
    shutil.copytree(PROJECT_ROOT / "policies", policies)
    proxy = start_proxy("--policies", str(policies))
    session = proxy.session()
    assert session.post(CHARGES, data={"amount": 500, "currency": "usd"}).status_code == 200
    worker = decider_of(proxy)
    assert worker is not None
    os.kill(worker, signal.SIGKILL)
    assert eventually(lambda: decider_of(proxy) is None)
    (policies / "freeze.yaml").write_text(NO_CHARGES)
    told = airlock("reload", "--data-dir", str(proxy.workdir))
    assert told.returncode == 0, told.stderr
    assert eventually(lambda: "reloaded: deciding with configuration" in proxy.output())
    blocked = session.post(CHARGES, data={"amount": 500, "currency": "usd"})
    assert blocked.status_code == 403, proxy.output()
    assert "no-charges-today" in blocked.json()["rules"]
    assert upstream.count("/v1/charges") == 1


NO_DELETIONS = """rules:
  - {id: no-deletions-today, when: {action: delete_record}, decision: BLOCK, reason: frozen}
"""


def held_reloaded_approved(
    start_proxy: Callable[..., Proxy], tmp_path: Path, customer: str, reloaded: str
) -> tuple[Proxy, requests.Response]:
    """A customer deletion held for a reviewer, `reloaded` (a policy file) reloaded meanwhile,
    then approved: the proxy, and the held request's answer."""
    from tests.e2e.test_gate import Background, pending

    policies = tmp_path / "policies"
    shutil.copytree(PROJECT_ROOT / "policies", policies)
    proxy = start_proxy("--policies", str(policies), "--hold-timeout", "30")
    session = proxy.session(agent="ops-bot")
    held = Background(lambda: session.delete(f"https://api.stripe.com/v1/customers/{customer}"))
    target = f"customer/{customer}"
    [waiting] = eventually(lambda: [p for p in pending(proxy) if p["target"] == target])
    (policies / "freeze.yaml").write_text(reloaded)
    assert airlock("reload", "--data-dir", str(proxy.workdir)).returncode == 0
    assert eventually(lambda: "reloaded: deciding with configuration" in proxy.output())
    approved = airlock("approve", waiting["id"], "--reviewer", "alice", *proxy.store)
    assert approved.returncode == 0, approved.stderr
    return proxy, held.result()


def test_a_held_request_a_reload_now_blocks_is_not_sent_once_approved(
    start_proxy: Callable[..., Proxy], upstream: Upstream, tmp_path: Path
) -> None:
    """Review: an operator's emergency BLOCK, reloaded while a request waited for a reviewer,
    did not stop it: approved, the held request went out (while its retry, decided again, was
    blocked). It is judged again with the configuration in force before its release."""
    proxy, response = held_reloaded_approved(start_proxy, tmp_path, "cus_frozen", NO_DELETIONS)
    assert response.status_code == 403, response.text
    assert "no-deletions-today" in response.json()["rules"]
    assert upstream.count("/v1/customers/cus_frozen") == 0
    [run] = [r for r in runs(proxy) if r.target == "customer/cus_frozen"]
    assert eventually(
        lambda: [r.outcome for r in runs(proxy) if r.id == run.id] == ["blocked_after_reload"]
    )


def test_a_held_request_a_reload_does_not_block_goes_out_once_approved(
    start_proxy: Callable[..., Proxy], upstream: Upstream, tmp_path: Path
) -> None:
    """Judged again after an unrelated reload, still held by its rule: the approval releases it."""
    _, response = held_reloaded_approved(start_proxy, tmp_path, "cus_kept", NO_CHARGES)
    assert response.status_code == 200
    assert upstream.count("/v1/customers/cus_kept") == 1
