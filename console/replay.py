"""`airlock test --replay`: decide recorded traffic again with candidate policies (backtesting).

Replays the recorded action, params and context of each decision (not the request: secrets
were redacted before storage, so rules on secret fields cannot be replayed) and reports every
decision that would change.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace

from airlock.pipeline.agents import AgentRegistry
from airlock.pipeline.mappings import Action
from airlock.pipeline.policies import ALLOW, BLOCK, REQUIRE_APPROVAL, PolicySet
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
    # refused before any policy (proxy credentials, Airlock's own ports): nothing to replay
    not_policy: int = 0
    changes: list[Change] | None = None
    transitions: Counter[tuple[str, str]] | None = None


# Refusals that no policy made: credentials are not stored, and Airlock's own ports stay shut.
NOT_POLICY_RULES = frozenset({"agent-identity", "control-surface"})
EGRESS_RULE = "egress-profile"


def replay(
    runs: Iterable[RecordedDecision], policies: PolicySet, agents: AgentRegistry | None = None
) -> ReplayReport:
    """`agents`: the candidate agents file; an egress refusal is judged again with it (and
    stays a refusal while it still refuses), never reported as a policy change."""
    report = ReplayReport(changes=[], transitions=Counter())
    assert report.changes is not None and report.transitions is not None
    for run in runs:
        if run.error:
            report.skipped += 1
            continue
        if NOT_POLICY_RULES & set(run.rules):
            report.not_policy += 1
            continue
        run = _as_policy_decided(run)
        decision, rules = _decide_again(run, policies, agents)
        report.replayed += 1
        if decision != run.decision:
            report.changes.append(Change(run, decision, rules))
            report.transitions[(run.decision, decision)] += 1
    return report


def _as_policy_decided(run: RecordedDecision) -> RecordedDecision:
    """A request a reviewer approved with an edit is recorded again, as released: ALLOW, the
    policies having held it (pipeline/edits.py as_approved_edit). Compared as held, or every
    such run would read as a change to REQUIRE_APPROVAL."""
    if run.decision == ALLOW and (run.context or {}).get("edit_of"):
        return replace(run, decision=REQUIRE_APPROVAL)
    return run


def _decide_again(
    run: RecordedDecision, policies: PolicySet, agents: AgentRegistry | None
) -> tuple[str, tuple[str, ...]]:
    if agents is not None and (EGRESS_RULE in run.rules or agents.required):
        if agents.egress_refusal(run.agent, run.host):
            return BLOCK, (EGRESS_RULE,)
    elif EGRESS_RULE in run.rules:
        return run.decision, tuple(run.rules)  # no agents file to judge it with: as recorded
    action = Action(
        run.action, run.provider, run.category, run.sensitivity, run.target,
        run.params, run.mapping_id, run.context, operation=run.operation,
    )  # fmt: skip
    verdict = policies.decide(action, run.agent)
    return verdict.decision, verdict.rules
