"""OpenAI and Anthropic calls, made by their official SDKs, are recognised as inference."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from airlock.console.standins import Upstream
from tests.e2e.test_catalog_aws import recorded
from tests.e2e.test_gate import runs
from tests.helpers.proxy import PROJECT_ROOT, Proxy, clean_env

pytestmark = pytest.mark.e2e

# openai and anthropic need h11 >= 0.16, mitmproxy 11 needs h11 <= 0.14: the SDKs run from their
# own virtualenv (`make test` builds it), as they would in an agent's own process.
SDK_PYTHON = Path(
    os.environ.get("AIRLOCK_SDK_PYTHON", PROJECT_ROOT / ".venv-sdk" / "bin" / "python")
)


@pytest.fixture(scope="module")
def proxy(start_proxy: Callable[..., Proxy], session_upstream: Upstream) -> Proxy:
    if not SDK_PYTHON.exists():
        message = f"the model-SDK virtualenv is missing ({SDK_PYTHON}); `make test` builds it"
        if os.environ.get("AIRLOCK_REQUIRE_SDKS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    policies = PROJECT_ROOT / "tests" / "e2e" / "policies-allow-all"
    hosts = ("api.openai.com", "api.anthropic.com")
    return start_proxy(
        "--policies", str(policies), routes={host: session_upstream.port for host in hosts}
    )


def test_openai_and_anthropic_sdk_calls_are_inference(proxy: Proxy) -> None:
    env = clean_env() | {
        "HTTPS_PROXY": f"http://research-agent:x@127.0.0.1:{proxy.port}",
        "SSL_CERT_FILE": str(proxy.ca_cert),
    }
    done = subprocess.run(
        [str(SDK_PYTHON), str(Path(__file__).parent / "sdk_clients" / "model_calls.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == {"openai": "ok", "anthropic": "ok"}

    chat = recorded(proxy, "inference", model="gpt-test")
    assert (chat.provider, chat.category, chat.target) == ("openai", "inference", "openai/gpt-test")
    assert chat.params["max_tokens"] == 300
    assert chat.agent == "research-agent"
    claude = recorded(proxy, "inference", model="claude-test")
    assert (claude.provider, claude.params["max_tokens"], claude.params["tool_count"]) == (
        "anthropic",
        512,
        1,
    )
    stored = str([r.request for r in runs(proxy)])
    assert "PlantedOpenAIKey" not in stored and "PlantedAnthropicKey" not in stored
