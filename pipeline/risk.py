"""The risk score: 0 to 100 on every decision, with each factor's contribution recorded.

Factors: the action's inherent risk (its sensitivity; whether it moves money, grants privilege,
reaches outside or cannot be undone), the magnitude of its params (amounts, counts), the
environment (production or test), and this agent's history (a first time, a burst against its
own baseline, recent denials). Policies may escalate on it (`risk: {gte: 70}`); a rule that
reads the risk can never ALLOW, so risk alone never lets anything through.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from airlock.pipeline.mappings import Action

_SENSITIVITY_POINTS = {"low": 5, "medium": 15, "high": 30, "critical": 45}
_CATEGORY_POINTS = {"payment": 10, "identity": 10, "messaging": 5, "network": 5}
_IRREVERSIBLE_VERBS = ("delete", "terminate", "remove", "void", "drop", "destroy", "purge")
_COUNT_PARAMS = (
    "instance_count",
    "object_count",
    "recipient_count",
    "item_count",
    "user_count",
    "delete_count",
)


@dataclass(frozen=True)
class RiskFactor:
    name: str
    points: int
    detail: str


@dataclass(frozen=True)
class Risk:
    score: int
    factors: tuple[RiskFactor, ...]

    def as_json(self) -> list[dict[str, object]]:
        return [{"factor": f.name, "points": f.points, "detail": f.detail} for f in self.factors]


class AgentHistory(Protocol):
    """What the score needs to know of the past: kept in memory, in step with the store."""

    def has_done(self, agent: str, action: str) -> bool: ...

    def has_touched(self, agent: str, target: str) -> bool: ...

    def recent_count(self, agent: str, action: str, seconds: float) -> int: ...

    def recent_denials(self, agent: str, seconds: float) -> int: ...


def score(action: Action, agent: str, history: AgentHistory | None = None) -> Risk:
    factors = [
        *_inherent(action),
        *_magnitude(action),
        *_environment(action),
        *(_history(action, agent, history) if history else ()),
    ]
    total = max(0, min(100, sum(f.points for f in factors)))
    return Risk(total, tuple(factors))


def _inherent(action: Action) -> list[RiskFactor]:
    factors = [
        RiskFactor(
            "sensitivity",
            _SENSITIVITY_POINTS.get(action.sensitivity, 15),
            f"{action.action} is rated {action.sensitivity}",
        )
    ]
    if action.category in _CATEGORY_POINTS:
        what = {
            "payment": "moves money",
            "identity": "changes who can do what",
            "messaging": "reaches people outside",
            "network": "changes what can connect",
        }[action.category]
        factors.append(RiskFactor("category", _CATEGORY_POINTS[action.category], what))
    if action.undo is None and action.action.startswith(_IRREVERSIBLE_VERBS):
        factors.append(RiskFactor("irreversible", 10, "no known way to undo it"))
    return factors


def _magnitude(action: Action) -> list[RiskFactor]:
    factors = []
    amount = action.params.get("amount")
    if isinstance(amount, int | float) and not isinstance(amount, bool) and amount >= 100_000:
        points = 20 if amount >= 1_000_000 else 10
        factors.append(RiskFactor("amount", points, f"amount {amount} (minor units)"))
    for name in _COUNT_PARAMS:
        count = action.params.get(name)
        if isinstance(count, int) and not isinstance(count, bool) and count > 10:
            points = 20 if count > 1000 else 10 if count > 100 else 5
            factors.append(RiskFactor("count", points, f"{name} {count}"))
            break
    return factors


def _environment(action: Action) -> list[RiskFactor]:
    environment = action.context.get("environment")
    if environment == "production":
        return [RiskFactor("environment", 10, "production")]
    if environment == "test":
        return [RiskFactor("environment", -15, "test mode")]
    return []


def _history(action: Action, agent: str, history: AgentHistory) -> list[RiskFactor]:
    factors = []
    if action.category != "read" and not history.has_done(agent, action.action):
        factors.append(RiskFactor("first_time", 10, f"first {action.action} by {agent}"))
    elif action.category != "read" and not history.has_touched(agent, action.target):
        factors.append(RiskFactor("new_target", 5, f"first time {agent} touches {action.target}"))
    last_minute = history.recent_count(agent, action.action, 60)
    last_hour = history.recent_count(agent, action.action, 3600)
    baseline = last_hour / 60  # per minute over the hour
    if last_minute >= 10 and last_minute > 5 * max(baseline, 1):
        factors.append(
            RiskFactor("burst", 10, f"{last_minute} in the last minute ({baseline:.1f}/min usual)")
        )
    denials = history.recent_denials(agent, 3600)
    if denials:
        factors.append(
            RiskFactor(
                "recent_denials", min(20, 10 * denials), f"{denials} denied in the last hour"
            )
        )
    return factors
