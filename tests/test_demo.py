"""`airlock demo`'s own checks and its scripted agent, without starting the proxy (the demo end
to end: tests/e2e/test_demo.py)."""

from __future__ import annotations

import io
import urllib.error
import urllib.request
from typing import Any

import pytest
from rich.console import Console

from airlock.console import demo, demo_agent


def test_the_demo_says_what_to_install_before_starting_anything(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without boto3 and slack_sdk the agent's calls failed one by one, and the demo exited 0
    after ~45 s of ModuleNotFoundError rows."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("boto3", "slack_sdk")
                        else find_spec(name, *a))  # fmt: skip
    monkeypatch.setattr(demo, "_start_proxy", lambda *a: pytest.fail("the proxy was started"))
    assert demo.run_demo(True, False, Console(file=io.StringIO())) == 2
    assert "boto3, slack_sdk are not installed here: pip install boto3 slack_sdk" in (
        capsys.readouterr().err
    )


def test_the_agents_proxy_url_carries_a_password_so_every_sdk_names_the_agent(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """urllib (and slack_sdk over it) sends proxy credentials only with a password: the demo's
    runs were recorded as `anonymous`."""
    started: dict[str, Any] = {}
    monkeypatch.setattr(demo.subprocess, "Popen", lambda *a, **k: started.update(k))
    demo._start_agent(tmp_path, 8080)
    proxy = started["env"]["HTTPS_PROXY"]
    request = urllib.request.Request("https://api.example.com/v1/tickets")
    urllib.request.ProxyHandler({"https": proxy}).proxy_open(request, proxy, "https")
    assert request.headers.get("Proxy-authorization") == "Basic ZGVtby1hZ2VudDpkZW1v"  # demo-agent


def test_the_agents_retry_goes_out_as_https_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The held call answered 503 is retried: reusing one Request, urllib's proxy handling
    rewrote it, and the third attempt went out as plain http://api.example.com:80."""
    sent: list[str] = []

    def urlopen(request: urllib.request.Request, timeout: float) -> Any:
        request.set_proxy("127.0.0.1:8080", "http")  # what urllib's ProxyHandler does to it
        sent.append(request.type)
        if len(sent) < 3:
            raise urllib.error.HTTPError(request.full_url, 503, "pending", {}, io.BytesIO(b"{}"))  # type: ignore[arg-type]
        return _Answer()

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    assert demo_agent.unknown_write() == "posted: HTTP 201"
    assert sent == ["https", "https", "https"]


class _Answer:
    status = 201

    def __enter__(self) -> _Answer:
        return self

    def __exit__(self, *exc: object) -> None:
        return None
