"""The reviewer console against a running proxy: in the pilot, and in a real terminal (tmux)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from airlock.console.standins import Upstream
from tests.e2e.test_gate import Background, eventually, pending
from tests.helpers.console import review_in_console
from tests.helpers.proxy import PROJECT_ROOT, Proxy

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def proxy(start_proxy: Callable[..., Proxy]) -> Proxy:
    return start_proxy("--hold-timeout", "60")


def test_a_held_request_approved_in_the_console_reaches_the_upstream(
    proxy: Proxy, upstream: Upstream
) -> None:
    held = Background(
        lambda: proxy.session(agent="ops-bot").delete("https://api.stripe.com/v1/customers/cus_tui")
    )
    assert eventually(lambda: pending(proxy))
    review_in_console(proxy.db_url, ["a", "enter"], lambda: held.finished)
    assert held.result().status_code == 200
    assert upstream.count("/v1/customers/cus_tui") == 1


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_the_console_renders_and_responds_in_a_real_terminal(
    proxy: Proxy, upstream: Upstream
) -> None:
    held = Background(
        lambda: proxy.session(agent="ops-bot").delete(
            "https://api.stripe.com/v1/customers/cus_tmux"
        )
    )
    assert eventually(lambda: [p for p in pending(proxy) if p["target"] == "customer/cus_tmux"])
    session = f"airlock-review-{proxy.port}"
    command = (
        f"{sys.executable} -m airlock.console.cli review --reviewer bob {' '.join(proxy.store)}"
    )

    def tmux(*args: str) -> str:
        return subprocess.run(
            ["tmux", *args], capture_output=True, text=True, check=True, cwd=PROJECT_ROOT
        ).stdout

    tmux(
        "new-session",
        "-d",
        "-s",
        session,
        "-x",
        "80",
        "-y",
        "24",
        f"cd {PROJECT_ROOT} && {command}",
    )
    try:

        def drawn() -> str | None:
            screen = tmux("capture-pane", "-p", "-t", session)
            wanted = ("Airlock review", "customer/cus_tmux", "delete_record", "Approve")
            return screen if all(text in screen for text in wanted) else None

        assert eventually(drawn, timeout=20), tmux("capture-pane", "-p", "-t", session)
        tmux("send-keys", "-t", session, "d")
        time.sleep(0.5)
        tmux("send-keys", "-t", session, "-l", "checked in tmux")
        tmux("send-keys", "-t", session, "Enter")
        response = held.result(timeout=20)
        assert response.status_code == 403
        assert response.json()["reason"] == "denied by bob: checked in tmux"
        tmux("send-keys", "-t", session, "h")  # the history, at 80 columns: the outcome shows

        def history() -> str | None:
            screen = tmux("capture-pane", "-p", "-t", session)
            return screen if "outcome" in screen and "denied" in screen else None

        assert eventually(history, timeout=20), tmux("capture-pane", "-p", "-t", session)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
