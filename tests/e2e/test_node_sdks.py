"""Airlock's refusals as the official Node SDKs read them: each raises its own error with
Airlock's reason, and none retries a refusal (tests/e2e/node/refused.mjs, pinned in its
package-lock.json; `make test` installs them when Node is there)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from airlock.console.standins import Upstream
from tests.e2e.test_gate import runs
from tests.helpers.proxy import PROJECT_ROOT, Proxy, clean_env

pytestmark = pytest.mark.e2e

NODE_TESTS = PROJECT_ROOT / "tests" / "e2e" / "node"
HOSTS = ("api.openai.com", "api.anthropic.com", "slack.com", "s3.amazonaws.com")
BLOCKS = """
rules:
  - id: node-test-models-blocked
    when: {action: inference, params: {model: {in: [gpt-blocked, claude-blocked]}}}
    decision: BLOCK
    reason: This model is never used by an agent.
  - id: node-test-channel-blocked
    when: {action: send_message, params: {channel: C0BLOCKED}}
    decision: BLOCK
    reason: Nobody posts to C0BLOCKED.
"""


@pytest.fixture(scope="module")
def proxy(
    start_proxy: Callable[..., Proxy], session_upstream: Upstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Proxy:  # fmt: skip
    node = shutil.which("node")
    if node is None or not (NODE_TESTS / "node_modules").is_dir():
        message = "Node or its SDKs are missing here (`make test` installs them when node is)"
        if os.environ.get("AIRLOCK_REQUIRE_NODE") == "1":
            pytest.fail(message)
        pytest.skip(message)
    policies = tmp_path_factory.mktemp("node-policies")
    shutil.copy(PROJECT_ROOT / "policies" / "baseline.yaml", policies / "baseline.yaml")
    (policies / "node.yaml").write_text(BLOCKS)
    return start_proxy(
        "--policies", str(policies), routes={host: session_upstream.port for host in HOSTS}
    )


def refused(proxy: Proxy, sdk: str) -> dict[str, Any]:
    env = clean_env() | {"NODE_EXTRA_CA_CERTS": str(proxy.ca_cert)}
    done = subprocess.run(
        ["node", "refused.mjs", sdk, f"http://node-agent:x@127.0.0.1:{proxy.port}"],
        cwd=NODE_TESTS, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("sdk", "raised", "reason"),
    [
        ("openai", "PermissionDeniedError", "This model is never used by an agent."),
        ("anthropic", "PermissionDeniedError", "This model is never used by an agent."),
        ("stripe", "StripePermissionError", "Charges of 10,000.00 or more are never made"),
        ("slack", "WebAPIPlatformError", "Nobody posts to C0BLOCKED."),
        ("s3", "AccessDenied", "Agents never delete S3 buckets."),
    ],
)
def test_each_node_sdk_raises_its_own_error_with_the_reason_once(
    proxy: Proxy, upstream: Upstream, sdk: str, raised: str, reason: str
) -> None:
    before = len(runs(proxy))
    answer = refused(proxy, sdk)
    assert answer["raised"] is not None, f"{sdk}: the refused call succeeded"
    assert reason in answer["message"] and "Airlock refused" in answer["message"], answer
    assert answer["raised"] == raised, answer
    assert answer["attempts"] == 1, f"{sdk} retried a refusal: {answer}"
    assert len(runs(proxy)) == before + 1  # one decision, none forwarded
