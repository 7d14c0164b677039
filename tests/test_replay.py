"""`airlock test --replay`: candidate policies against decisions already recorded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sqlalchemy.engine import Engine

from airlock.console.replay import replay
from airlock.pipeline.policies import load_policies
from airlock.store.history import recorded_decisions
from airlock.store.records import DecisionRecord
from tests.helpers.proxy import PROJECT_ROOT, clean_env
from tests.test_store import run_row, write

STRICTER = """
rules:
  - {id: charges-over-1000, when: {action: create_charge, params: {amount: {gte: 100000}}},
     decision: BLOCK, reason: no big charges}
"""


def record_history(engine: Engine) -> None:
    write(
        engine,
        DecisionRecord(run_row("ALLOW", params={"amount": 500})),
        DecisionRecord(run_row("REQUIRE_APPROVAL", params={"amount": 150000})),
        DecisionRecord(run_row("ALLOW", agent="bot-2", params={"amount": 200000})),
        DecisionRecord(run_row("BLOCK", params={"amount": "x"}, error="mapping failed: ...")),
    )


def test_replay_reports_what_would_change(engine: Engine, tmp_path: Path) -> None:
    record_history(engine)
    candidate = tmp_path / "candidate"
    candidate.mkdir()
    (candidate / "p.yaml").write_text(STRICTER)

    report = replay(recorded_decisions(engine), load_policies(candidate))

    assert (report.replayed, report.skipped) == (3, 1)
    assert [(c.run.params["amount"], c.run.decision, c.decision) for c in report.changes] == [
        (150000, "REQUIRE_APPROVAL", "BLOCK"),
        (200000, "ALLOW", "BLOCK"),
    ]
    assert report.changes[1].rules == ("charges-over-1000",)
    assert report.transitions == {("REQUIRE_APPROVAL", "BLOCK"): 1, ("ALLOW", "BLOCK"): 1}
    newest = list(recorded_decisions(engine, limit=2))
    assert [r.params["amount"] for r in newest] == [200000, "x"]


def test_replay_from_the_command_line(engine: Engine, db_url: str, tmp_path: Path) -> None:
    record_history(engine)
    candidate = tmp_path / "candidate"
    candidate.mkdir()
    (candidate / "p.yaml").write_text(STRICTER)

    done = subprocess.run(
        [sys.executable, "-m", "airlock.console.cli", "test", "--replay",
         "--policies", str(candidate), "--db", db_url],
        cwd=PROJECT_ROOT, env=clean_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert "replayed 3 decisions" in done.stdout and "2 would change; 1 skipped" in done.stdout
    assert "REQUIRE_APPROVAL → BLOCK (rules: charges-over-1000)" in done.stdout
    assert "  ALLOW → BLOCK: 1" in done.stdout


def test_refusals_no_policy_made_are_not_reported_as_changes(
    engine: Engine, tmp_path: Path
) -> None:
    """A 407 (no credentials) and an egress refusal, replayed with the same agents file:
    nothing would change."""
    from airlock.pipeline.agents import load_agents
    from tests.test_agents import agents_dir

    folder = agents_dir(tmp_path)
    write(
        engine,
        DecisionRecord(run_row("BLOCK", action="proxy.authenticate", rules=["agent-identity"])),
        DecisionRecord(
            run_row(
                "BLOCK",
                agent="billing-bot",
                host="slack.com",
                action="send_message",
                rules=["egress-profile"],
            )
        ),
        DecisionRecord(run_row("ALLOW", agent="billing-bot", params={"amount": 500})),
    )
    report = replay(recorded_decisions(engine), load_policies(folder), load_agents(folder))
    assert report.changes == []
    assert (report.replayed, report.not_policy) == (2, 1)

    # Once the agents file lets billing-bot reach Slack, the refusal would change.
    (folder / "agents.yaml").write_text(
        (folder / "agents.yaml")
        .read_text()
        .replace("[api.stripe.com]", "[api.stripe.com, slack.com]")
    )
    changed = replay(recorded_decisions(engine), load_policies(folder), load_agents(folder))
    assert [(c.run.decision, c.decision) for c in changed.changes or []] == [("BLOCK", "ALLOW")]


def test_a_release_a_reviewer_edited_is_no_change(engine: Engine, tmp_path: Path) -> None:
    """An edited request approved is recorded again as released (ALLOW, context edit_of); the
    policies held it and still do: it was listed as ALLOW → REQUIRE_APPROVAL."""
    held = run_row("REQUIRE_APPROVAL", params={"amount": 150000})
    edited = run_row("ALLOW", params={"amount": 50000}, context={"edit_of": held.id})
    write(engine, DecisionRecord(held), DecisionRecord(edited))
    candidate = tmp_path / "candidate"
    candidate.mkdir()
    (candidate / "p.yaml").write_text(
        "rules:\n  - {id: charges-held, when: {action: create_charge}, "
        "decision: REQUIRE_APPROVAL, reason: every charge is held}\n"
    )
    report = replay(recorded_decisions(engine), load_policies(candidate))
    assert report.replayed == 2 and report.changes == []
