"""`airlock test --replay`: decide recorded traffic again with candidate policies (backtesting).

Replays the recorded action, params and context of each decision (not the request: secrets
were redacted before storage, so rules on secret fields cannot be replayed) and reports every
decision that would change.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from airlock.addons.mappings import Action
from airlock.addons.policies import PolicySet
from airlock.store.history import RecordedDecision


@dataclass(frozen=True)
class Change:
    run: RecordedDecision
    decision: str
    rules: tuple[str, ...]

    def line(self) -> str:
        run = self.run
        return (
            f"{run.id} {run.agent} {run.action} → {run.target}: {run.decision} → {self.decision}"
            f" (rules: {', '.join(self.rules) or 'none'})"
        )


@dataclass
class ReplayReport:
    replayed: int = 0
    skipped: int = 0  # blocked by a failed stage, not by policy: nothing to compare
    changes: list[Change] | None = None
    transitions: Counter[tuple[str, str]] | None = None


def replay(runs: Iterable[RecordedDecision], policies: PolicySet) -> ReplayReport:
    report = ReplayReport(changes=[], transitions=Counter())
    assert report.changes is not None and report.transitions is not None
    for run in runs:
        if run.error:
            report.skipped += 1
            continue
        action = Action(
            run.action, run.provider, run.category, run.sensitivity, run.target,
            run.params, run.mapping_id, run.context, operation=run.operation,
        )  # fmt: skip
        verdict = policies.decide(action, run.agent)
        report.replayed += 1
        if verdict.decision != run.decision:
            report.changes.append(Change(run, verdict.decision, verdict.rules))
            report.transitions[(run.decision, verdict.decision)] += 1
    return report
