"""`airlock demo --auto`, as a newcomer runs it (make demo, without the console): the agent's
calls end as README says they do, and the audit trail verifies."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers.proxy import PROJECT_ROOT, clean_env

pytestmark = pytest.mark.e2e


def test_the_demo_shows_allow_block_approve_and_deny_end_to_end() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "airlock.console.cli", "demo", "--auto"],
        cwd=PROJECT_ROOT, env=clean_env() | {"COLUMNS": "200"}, capture_output=True, text=True,
        timeout=240,
    )  # fmt: skip
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    lines = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") >= 4}
    assert "charged: " in lines["a $5 charge"]
    assert "refused create_charge" in lines["a $50,000 charge"]
    assert "refused delete_bucket" in lines["delete the S3 bucket customer-backups"]
    assert "deleted: " in lines["delete customer cus_demo"]  # approved, then run once
    assert "denied by demo-reviewer" in lines["archive Slack #general"]
    assert "denied by demo-reviewer" in lines["POST to an API no mapping knows"]
    assert "audit trail intact" in out
