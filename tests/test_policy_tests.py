"""`airlock test`: the shipped baseline passes its tests, and failures say where and why."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from airlock.console.policy_tests import find_test_files, run_files
from airlock.pipeline.evaluation import Config
from tests.helpers.proxy import PROJECT_ROOT, clean_env

CONFIG = Config.load(PROJECT_ROOT / "mappings", PROJECT_ROOT / "policies")


def test_the_baseline_passes_its_own_tests() -> None:
    results = run_files(find_test_files([PROJECT_ROOT / "policies"]), CONFIG)
    failures = [r.line() for r in results if not r.passed]
    assert failures == []
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert f"baseline ships with {len(results)} cases" in readme


def test_failures_name_the_case_its_line_and_what_happened(tmp_path: Path) -> None:
    cases = tmp_path / "mine.test.yaml"
    cases.write_text(
        textwrap.dedent(
            """
            cases:
              - name: wrong decision
                request: curl https://api.stripe.com/v1/charges -d amount=500 -d currency=usd
                expect: BLOCK
              - name: wrong rules
                action: create_charge
                params: {amount: 2000000}
                expect: BLOCK
                rules: [stripe-charge-too-large]
              - name: typo
                action: create_charge
                expcet: BLOCK
              - name: right
                action: delete_bucket
                expect: BLOCK
            """
        ).lstrip()
    )
    results = run_files([cases], CONFIG)

    assert [r.passed for r in results] == [False, False, False, True]
    assert results[0].line().endswith(f"{cases}:2:5: expected BLOCK, got ALLOW (rules fired: none)")
    assert "expected rules ['stripe-charge-too-large'], got [stripe-charge-needs-approval, " in (
        results[1].detail
    )
    assert str(results[1].where) == f"{cases}:9:12"
    assert str(results[2].where) == f"{cases}:12:5" and "unknown key 'expcet'" in results[2].detail


def test_cli_exit_codes_and_summary(tmp_path: Path) -> None:
    def airlock_test(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "airlock.console.cli", "test", *args],
            cwd=PROJECT_ROOT, env=clean_env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    passing = airlock_test("-q")
    assert passing.returncode == 0
    assert passing.stdout.strip().splitlines()[-1].endswith("passed, 0 failed")
    bad = tmp_path / "bad.test.yaml"
    bad.write_text("cases:\n  - {name: n, action: delete_bucket, expect: ALLOW}\n")
    failing = airlock_test(str(bad))
    assert failing.returncode == 1
    assert failing.stdout.strip().splitlines()[-1] == "0 passed, 1 failed"
    assert airlock_test(str(tmp_path / "none")).returncode == 2
