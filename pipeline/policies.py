"""Stage 3: decide ALLOW, BLOCK or REQUIRE_APPROVAL for an action, through policies/*.yaml.

Every rule whose conditions hold fires; the most restrictive decision among them wins, and every
fired rule is reported. A rule in `mode: shadow` fires without deciding anything: the verdict
says what it would have decided, so a team can trial a rule on live traffic. Rules are compiled
at load and indexed by action name.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from airlock.pipeline.agents import AGENTS_FILE, REVIEWERS_FILE
from airlock.pipeline.conditions import MISSING, Test, compile_condition
from airlock.pipeline.history import HORIZON, History
from airlock.pipeline.mappings import CATEGORIES, SENSITIVITIES, Action
from airlock.pipeline.yaml_source import (
    ConfigError,
    Node,
    Seq,
    Where,
    expect_keys,
    expect_type,
    load_yaml,
    optional_node,
    yaml_files,
)

ALLOW, REQUIRE_APPROVAL, BLOCK = "ALLOW", "REQUIRE_APPROVAL", "BLOCK"
RESTRICTIVENESS = {ALLOW: 0, REQUIRE_APPROVAL: 1, BLOCK: 2}

SIMULATE = "SIMULATE"  # a rule's decision: simulate the writes it matches, never forward them
ENFORCE, SHADOW, OFF = "enforce", "shadow", "off"
MODES = (ENFORCE, SHADOW, OFF)

_FILE_KEYS = {"default", "rules", "description"}
_RULE_KEYS = {
    "id",
    "description",
    "when",
    "decision",
    "reason",
    "mode",
    "hold_timeout",
    "approvals",
    "reviewers",
    "budget",
    "rate",
    "in_simulation",
}
_BUDGET_KEYS = {"param", "limit", "window", "per", "currency"}
_RATE_KEYS = {"limit", "window", "per"}
_PER = ("agent", "role", "all")
_DEFAULT_KEYS = {"decision", "by_category", "by_sensitivity"}
_WHEN_KEYS = {
    "action",
    "operation",
    "curated",
    "provider",
    "category",
    "sensitivity",
    "agent",
    "target",
    "environment",
    "source",
    "role",
    "risk",
    "time",
    "params",
}
_TIME_KEYS = {"days", "hours", "timezone"}
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class PolicyError(Exception):
    """A rule could not be evaluated for a request: the request is blocked and the rule named."""


@dataclass(frozen=True)
class Shadow:
    """What shadow-mode rules would have decided, had they been enforced."""

    decision: str
    reason: str
    rules: tuple[str, ...]  # the shadow rules that fired


@dataclass(frozen=True)
class Verdict:
    decision: str
    reason: str
    rules: tuple[str, ...]
    shadow: Shadow | None = None
    hold_timeout: float | None = None  # set by a REQUIRE_APPROVAL rule's own `hold_timeout`
    approvals: int = 1  # distinct reviewers who must approve (the largest any fired rule asks)
    reviewer_roles: tuple[str, ...] = ()  # every role named by a fired rule (shown, edits)
    # one per fired rule that names reviewers: each set must be met by an approving reviewer
    reviewer_role_sets: tuple[tuple[str, ...], ...] = ()
    simulate: tuple[str, ...] = ()  # SIMULATE rules that fired (pipeline/simulation.py)
    hold_in_simulation: bool = False  # a fired rule says `in_simulation: hold`


@dataclass(frozen=True)
class DefaultPosture:
    """The decision when no rule fires, optionally stricter for some categories/sensitivities."""

    decision: str = ALLOW
    by_category: dict[str, str] = field(default_factory=dict)
    by_sensitivity: dict[str, str] = field(default_factory=dict)

    def for_action(self, action: Action) -> str:
        candidates = [
            self.decision,
            self.by_category.get(action.category, ALLOW),
            self.by_sensitivity.get(action.sensitivity, ALLOW),
        ]
        return max(candidates, key=RESTRICTIVENESS.__getitem__)

    def merged(self, other: DefaultPosture) -> DefaultPosture:
        """Several files may set defaults: like rules, the most restrictive wins."""

        def strictest(a: str, b: str) -> str:
            return max(a, b, key=RESTRICTIVENESS.__getitem__)

        def merge(a: dict[str, str], b: dict[str, str]) -> dict[str, str]:
            return {k: strictest(a.get(k, ALLOW), b.get(k, ALLOW)) for k in a.keys() | b.keys()}

        return DefaultPosture(
            strictest(self.decision, other.decision),
            merge(self.by_category, other.by_category),
            merge(self.by_sensitivity, other.by_sensitivity),
        )


# --- conditions on the action's fields ----------------------------------------------------


def _glob_test(node: Node, key: str) -> Test:
    value = node[key]
    patterns = [value] if isinstance(value, str) else value
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        raise ConfigError(node.at(key), f"{key!r} must be a name, a glob or a list of them")
    exact = frozenset(p for p in patterns if not _is_glob(p))
    globs = [re.compile(fnmatch.translate(p)) for p in patterns if _is_glob(p)]
    return lambda actual: (
        isinstance(actual, str) and (actual in exact or any(g.match(actual) for g in globs))
    )


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


# --- rules -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    id: str
    decision: str
    reason: str
    actions: frozenset[str] | None  # exact action names for indexing; None: any / globbed
    field_tests: tuple[tuple[str, Test], ...]
    param_tests: tuple[tuple[str, Test], ...]
    where: Where
    order: int
    mode: str = ENFORCE
    hold_timeout: float | None = None
    approvals: int = 1
    reviewer_roles: tuple[str, ...] = ()
    holds_in_simulation: bool = False  # `in_simulation: hold`: a reviewer decides, even in a trial
    risk_test: Test | None = None
    budget: Budget | None = None
    rate: Rate | None = None
    time_window: TimeWindow | None = None
    # the `params:` conditions as written, for checks across mappings (pipeline/consistency.py)
    param_specs: tuple[tuple[str, Any, Where], ...] = ()
    source: str | None = None  # `source:` as written: guard rules name the caller's actions
    # Each `when` condition as written (params one by one), as canonical text: a rule whose
    # conditions include another's is fired whenever that one is (pipeline/consistency.py).
    written: frozenset[tuple[str, str]] = frozenset()
    # The names it matches, as written (exact names and globs): action, operation, provider,
    # environment, agent, role, sensitivity, category, source; each must name something that
    # exists (consistency.py).
    named: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def fires(self, situation: Situation) -> bool:
        try:
            return self._holds(situation)
        except Exception as e:  # e.g. comparing a string param with a number
            raise PolicyError(f"rule {self.id} ({self.where}) failed to evaluate: {e}") from e

    def _holds(self, situation: Situation) -> bool:
        for name, test in self.field_tests:
            if name == "role":
                if not any(test(role) for role in situation.roles):
                    return False
            elif not test(situation.facts[name]):
                return False
        params = situation.action.params
        if not all(test(params.get(name, MISSING)) for name, test in self.param_tests):
            return False
        risk = situation.risk
        if self.risk_test is not None and not self.risk_test(MISSING if risk is None else risk):
            return False
        if self.time_window is not None and not self.time_window.holds(situation.history.clock()):
            return False
        if self.budget is not None and not self.budget.exceeded(situation):
            return False
        return self.rate is None or self.rate.exceeded(situation)


@dataclass(frozen=True)
class Situation:
    """Everything a rule may look at, gathered once per decision (not once per rule)."""

    action: Action
    agent: str
    roles: tuple[str, ...]
    risk: int | None
    history: History
    facts: dict[str, Any]

    @classmethod
    def of(
        cls,
        action: Action,
        agent: str,
        roles: tuple[str, ...],
        risk: int | None,
        history: History | None,
    ) -> Situation:
        facts = {
            "action": action.action,
            "operation": action.operation,
            # A mapping in mappings/ gave the action (False: derived from the catalog's
            # operation, or the http.read/http.write fallback).
            "curated": action.mapping_id is not None,
            "provider": action.provider,
            "category": action.category,
            "sensitivity": action.sensitivity,
            "agent": agent,
            "target": action.target,
            "environment": action.context.get("environment"),
            # guard: a tool call through the Guard API (pipeline/tool_calls.py)
            "source": action.context.get("source", "proxy"),
        }
        return cls(action, agent, roles, risk, history or History(), facts)


@dataclass(frozen=True)
class TimeWindow:
    """`time: {days: [mon, fri], hours: "09:00-18:00", timezone: Europe/Paris}`: the rule
    holds only then (an overnight range like 22:00-06:00 wraps)."""

    days: frozenset[int]  # 0 = Monday
    start_minute: int
    end_minute: int
    zone: ZoneInfo

    def holds(self, now: float) -> bool:
        local = datetime.fromtimestamp(now, self.zone)
        minute = local.hour * 60 + local.minute
        if self.start_minute <= self.end_minute:
            in_hours = self.start_minute <= minute < self.end_minute
            day = local.weekday()
        else:  # wraps midnight: the early hours belong to the previous day's window
            in_hours = minute >= self.start_minute or minute < self.end_minute
            day = local.weekday() if minute >= self.start_minute else (local.weekday() - 1) % 7
        return in_hours and day in self.days


@dataclass(frozen=True)
class Budget:
    """Fires when what was let through in the window, plus this request, goes over the limit."""

    param: str
    limit: float
    window: float
    per: str
    currency: str | None

    def exceeded(self, situation: Situation) -> bool:
        action = situation.action
        this = action.params.get(self.param)
        if not isinstance(this, int | float) or isinstance(this, bool):
            return False  # nothing to count against the budget
        if self.currency and str(action.params.get("currency", "")).lower() != self.currency:
            return False
        spent = situation.history.total(
            self.per, situation.agent, situation.roles, action.action, self.window, self.param,
            self.currency,
        )  # fmt: skip
        return spent + this > self.limit


@dataclass(frozen=True)
class Rate:
    """Fires when this request would be more than `limit` in the window."""

    limit: int
    window: float
    per: str

    def exceeded(self, situation: Situation) -> bool:
        done = situation.history.count(
            self.per, situation.agent, situation.roles, situation.action.action, self.window
        )
        return done + 1 > self.limit


class PolicySet:
    def __init__(self, rules: Iterable[Rule], default: str | DefaultPosture) -> None:
        self.rules = sorted((r for r in rules if r.mode != OFF), key=lambda r: r.order)
        self.posture = default if isinstance(default, DefaultPosture) else DefaultPosture(default)
        self.default = self.posture.decision
        self._by_action: dict[str, list[Rule]] = {}
        self._any_action = [r for r in self.rules if r.actions is None]
        for rule in self.rules:
            for name in rule.actions or ():
                self._by_action.setdefault(name, []).append(rule)
        # Only actions some rule names are cached: an MCP action's name comes from the request
        # (mcp.<host>.<tool>), and one entry per name sent would grow without bound.
        self._candidates: dict[str, list[Rule]] = {}
        self._for_other_actions = sorted(self._any_action, key=lambda r: r.order)

    def __len__(self) -> int:
        return len(self.rules)

    @property
    def longest_window(self) -> float:
        """How far back any budget or rate looks: what the history must keep."""
        windows = [r.budget.window for r in self.rules if r.budget]
        windows += [r.rate.window for r in self.rules if r.rate]
        return max(windows, default=0.0)

    def candidates(self, action: str) -> list[Rule]:
        if action not in self._by_action:
            return self._for_other_actions
        found = self._candidates.get(action)
        if found is None:
            merged = {r.order: r for r in self._by_action.get(action, []) + self._any_action}
            found = [merged[k] for k in sorted(merged)]
            self._candidates[action] = found
        return found

    def decide(
        self,
        action: Action,
        agent: str,
        roles: tuple[str, ...] = (),
        risk: int | None = None,
        history: History | None = None,
    ) -> Verdict:
        situation = Situation.of(action, agent, roles, risk, history)
        fired = [r for r in self.candidates(action.action) if r.fires(situation)]
        simulating = tuple(r.id for r in fired if r.decision == SIMULATE and r.mode == ENFORCE)
        fired = [r for r in fired if r.decision != SIMULATE]
        enforced = [r for r in fired if r.mode == ENFORCE]
        verdict = self._verdict(enforced, action)
        if simulating:
            verdict = replace(verdict, simulate=simulating)
        shadowed = [r for r in fired if r.mode == SHADOW]
        if not shadowed:
            return verdict
        would = self._verdict(enforced + shadowed, action)
        return replace(
            verdict, shadow=Shadow(would.decision, would.reason, tuple(r.id for r in shadowed))
        )

    def _verdict(self, fired: list[Rule], action: Action) -> Verdict:
        if not fired:
            default = self.posture.for_action(action)
            reason = f"no rule matched; the default for this action is {default}"
            return Verdict(default, reason, ())
        strictest = max(fired, key=lambda r: RESTRICTIVENESS[r.decision])
        timeouts = [
            r.hold_timeout for r in fired if r.decision == REQUIRE_APPROVAL and r.hold_timeout
        ]
        approvals = [r.approvals for r in fired if r.decision == REQUIRE_APPROVAL]
        role_sets = sorted(
            {
                tuple(sorted(set(r.reviewer_roles)))
                for r in fired
                if r.decision == REQUIRE_APPROVAL and r.reviewer_roles
            }
        )
        roles = sorted({role for roles in role_sets for role in roles})
        return Verdict(
            strictest.decision,
            strictest.reason,
            tuple(r.id for r in fired),
            hold_timeout=min(timeouts) if timeouts else None,
            approvals=max(approvals, default=1),
            reviewer_roles=tuple(roles),
            reviewer_role_sets=tuple(role_sets),
            hold_in_simulation=any(r.holds_in_simulation for r in fired),
        )


# --- loading ---------------------------------------------------------------------------------


def load_policies(directory: Path) -> PolicySet:
    rules: list[Rule] = []
    posture = DefaultPosture()
    for path in yaml_files(directory):
        if not holds_rules(path):
            continue
        file_rules, default = load_policy_file(path, start=len(rules))
        rules.extend(file_rules)
        if default:
            posture = posture.merged(default)
    seen: dict[str, Rule] = {}
    for rule in rules:
        if rule.id in seen:
            raise ConfigError(
                rule.where, f"duplicate rule id {rule.id!r} (first at {seen[rule.id].where})"
            )
        seen[rule.id] = rule
    return PolicySet(rules, posture)


def holds_rules(path: Path) -> bool:
    """Every file of the policies folder holds rules, but the identities (pipeline/agents.py
    reads them)."""
    return path.name not in (AGENTS_FILE, REVIEWERS_FILE)


def load_policy_file(
    path: Path, start: int = 0, errors: list[ConfigError] | None = None
) -> tuple[list[Rule], DefaultPosture | None]:
    """With `errors`, a broken rule is reported there and the rest still load (`check`)."""
    root = load_yaml(path)
    if root is None:
        return [], None
    if not isinstance(root, Node):
        raise ConfigError(f"{path}:1:1", "a policy file must be a YAML mapping with 'rules:'")
    if "mappings" in root:
        raise ConfigError(
            root.key_at("mappings"),
            "a mapping file (it has 'mappings:') in the policies folder, where every file is "
            "read as policies: move it to the mappings folder",
        )
    expect_keys(root, _FILE_KEYS, set(), "policy file")
    default = _default_posture(root) if "default" in root else None
    entries = root.get("rules")
    if entries is None:
        return [], default
    if not isinstance(entries, Seq):
        raise ConfigError(root.at("rules"), "'rules' must be a list")
    rules = []
    for i, (entry, where) in enumerate(zip(entries, entries.item_where, strict=True)):
        try:
            rules.append(_load_rule(entry, where, start + i))
        except ConfigError as e:
            if errors is None:
                raise
            errors.append(e)
    return rules, default


def _default_posture(root: Node) -> DefaultPosture:
    spec = root["default"]
    if not isinstance(spec, Node):
        return DefaultPosture(_decision(root, "default"))
    expect_keys(spec, _DEFAULT_KEYS, set(), "default")
    return DefaultPosture(
        _decision(spec, "decision") if "decision" in spec else ALLOW,
        _decisions_by(spec, "by_category", CATEGORIES),
        _decisions_by(spec, "by_sensitivity", SENSITIVITIES),
    )


def _decisions_by(spec: Node, key: str, known: Iterable[str]) -> dict[str, str]:
    table = spec.get(key)
    if table is None:
        return {}
    if not isinstance(table, Node):
        raise ConfigError(spec.at(key), f"{key!r} must map names to decisions")
    for name in table:
        if name not in known:
            raise ConfigError(
                table.key_at(name), f"{name!r} is not one of: {', '.join(sorted(known))}"
            )
    return {name: _decision(table, name) for name in table}


def _decision(node: Node, key: str, rule: bool = False) -> str:
    value = node[key]
    if rule and value == SIMULATE:
        return value  # a rule may put what it matches in simulation (pipeline/simulation.py)
    if value not in RESTRICTIVENESS:
        allowed = "ALLOW, REQUIRE_APPROVAL, BLOCK" + (", SIMULATE" if rule else "")
        raise ConfigError(node.at(key), f"{key} must be one of {allowed}, got {value!r}")
    return value


def _load_rule(entry: Any, where: Where, order: int) -> Rule:
    if not isinstance(entry, Node):
        raise ConfigError(where, "each rule must be a YAML mapping (id, when, decision, reason)")
    expect_keys(entry, _RULE_KEYS, {"id", "decision"}, "rule")
    expect_type(entry, "id", entry["id"], str, "a string")
    when = entry.get("when")
    if when is None and "when" in entry:  # every condition commented out: not "every request"
        raise ConfigError(
            entry.at("when"),
            "'when' is empty: a rule for every request says `when: {}` (or leaves `when` out)",
        )
    if when is None:
        when = Node.empty(entry.where)
    if not isinstance(when, Node):
        raise ConfigError(entry.at("when"), "'when' must be a mapping of conditions")
    expect_keys(when, _WHEN_KEYS, set(), "condition ('when')")
    _refuse_emptied(when, _WHEN_KEYS)
    _refuse_emptied(entry, {"budget", "rate"})
    decision = _decision(entry, "decision", rule=True)
    mode = entry.get("mode", ENFORCE)
    if mode not in MODES:
        raise ConfigError(entry.at("mode"), f"mode must be one of {', '.join(MODES)}")
    hold_timeout = entry.get("hold_timeout")
    if hold_timeout is not None and (
        decision != REQUIRE_APPROVAL
        or not isinstance(hold_timeout, int | float)
        or isinstance(hold_timeout, bool)
        or hold_timeout <= 0
    ):
        raise ConfigError(
            entry.at("hold_timeout"),
            "hold_timeout is a positive number of seconds, on REQUIRE_APPROVAL rules only",
        )
    source = when.get("source")
    if source is not None and source not in SOURCES:
        raise ConfigError(
            when.at("source"), f"source is one of {', '.join(SOURCES)}, not {source!r}"
        )
    return Rule(
        id=entry["id"],
        decision=decision,
        reason=str(entry.get("reason") or f"rule {entry['id']}: {decision}"),
        actions=_indexable_actions(when),
        field_tests=tuple(
            (key, _glob_test(when, key))
            for key in sorted(_WHEN_KEYS - {"params", "risk", "time", "curated"})
            if key in when
        )
        + _curated_test(when),
        risk_test=_risk_test(when, entry, decision),
        time_window=_time_window(when),
        budget=_budget(entry),
        rate=_rate(entry),
        param_tests=_param_tests(when),
        param_specs=_param_specs(when),
        where=where,
        order=order,
        mode=mode,
        hold_timeout=float(hold_timeout) if hold_timeout is not None else None,
        approvals=_approvals(entry, decision),
        reviewer_roles=_reviewer_roles(entry),
        source=when.get("source") if isinstance(when.get("source"), str) else None,
        named=_named(when),
        holds_in_simulation=_in_simulation(entry, decision),
        written=_written(when),
    )


def _refuse_emptied(node: Node, keys: set[str]) -> None:
    """A key written with nothing under it (its conditions commented out) would read as no
    condition at all: an ALLOW wider than written, or a BLOCK that never fires."""
    for key in sorted(keys & node.keys()):
        if node[key] is None:
            raise ConfigError(
                node.key_at(key),
                f"{key!r} is empty (its conditions commented out?): write them, or remove "
                f"{key!r} itself",
            )


def _written(when: Node) -> frozenset[tuple[str, str]]:
    conditions = {(key, json.dumps(when[key], sort_keys=True)) for key in when if key != "params"}
    params = when.get("params")
    if isinstance(params, dict):
        conditions |= {(f"params.{name}", json.dumps(spec, sort_keys=True))
                       for name, spec in params.items()}  # fmt: skip
    return frozenset(conditions)


def _in_simulation(entry: Node, decision: str) -> bool:
    """`in_simulation: hold` on a REQUIRE_APPROVAL rule: in a simulated trial, its writes wait
    for a reviewer too (then are answered by Airlock); by default they are answered at once."""
    value = entry.get("in_simulation", "answer")
    if value not in ("answer", "hold") or (value == "hold" and decision != REQUIRE_APPROVAL):
        raise ConfigError(
            entry.at("in_simulation"),
            "in_simulation is 'answer' (the default) or 'hold', on REQUIRE_APPROVAL rules only",
        )
    return value == "hold"


def _curated_test(when: Node) -> tuple[tuple[str, Test], ...]:
    if "curated" not in when:
        return ()
    expected = when["curated"]
    if not isinstance(expected, bool):
        raise ConfigError(when.at("curated"), "'curated' must be true or false")
    return (("curated", lambda actual: actual is expected),)


def _reviewer_roles(entry: Node) -> tuple[str, ...]:
    roles = entry.get("reviewers", [])
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise ConfigError(entry.at("reviewers"), "'reviewers' must be a list of reviewer roles")
    return tuple(roles)


def _approvals(entry: Node, decision: str) -> int:
    count = entry.get("approvals", 1)
    if (
        not isinstance(count, int)
        or isinstance(count, bool)
        or count < 1
        or (count > 1 and decision != REQUIRE_APPROVAL)
    ):
        raise ConfigError(
            entry.at("approvals"),
            "approvals is how many distinct reviewers must approve: 1 or more, on "
            "REQUIRE_APPROVAL rules",
        )
    return count


def _risk_test(when: Node, entry: Node, decision: str) -> Test | None:
    if "risk" not in when:
        return None
    if decision == ALLOW:
        raise ConfigError(
            when.key_at("risk"), "a rule on the risk score cannot ALLOW: risk never grants access"
        )
    return compile_condition(when["risk"], when.at("risk"), "risk")


def _time_window(when: Node) -> TimeWindow | None:
    spec = optional_node(when, "time", "a mapping (days, hours, timezone)")
    if spec is None:
        return None
    expect_keys(spec, _TIME_KEYS, set(), "time")
    days = spec.get("days", list(_DAYS))
    if not isinstance(days, list) or any(str(d).lower()[:3] not in _DAYS for d in days):
        raise ConfigError(spec.at("days"), f"days must be a list of {', '.join(_DAYS)}")
    hours = str(spec.get("hours", "00:00-24:00"))
    match = re.fullmatch(r"(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})", hours)
    minutes = [int(g) for g in match.groups()] if match else []
    if not match or minutes[0] * 60 + minutes[1] > 1440 or minutes[2] * 60 + minutes[3] > 1440:
        raise ConfigError(spec.at("hours"), "hours must be like 09:00-18:00")
    try:
        zone = ZoneInfo(str(spec.get("timezone", "UTC")))
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise ConfigError(spec.at("timezone"), f"unknown timezone: {e}") from e
    return TimeWindow(
        frozenset(_DAYS.index(str(d).lower()[:3]) for d in days),
        minutes[0] * 60 + minutes[1],
        minutes[2] * 60 + minutes[3],
        zone,
    )


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _window(spec: Node) -> float:
    value = spec.get("window")
    text = str(value).strip()
    try:
        seconds = float(text[:-1]) * _UNITS[text[-1]] if text[-1:] in _UNITS else float(text)
    except (ValueError, KeyError):
        seconds = -1
    if seconds <= 0 or seconds > HORIZON:
        raise ConfigError(
            spec.at("window"), "window must be like 90s, 15m, 24h or 7d (at most 7 days)"
        )
    return seconds


def _limit_and_per(spec: Node, kind: str) -> tuple[float, str]:
    limit = spec.get("limit")
    if not isinstance(limit, int | float) or isinstance(limit, bool) or limit < 0:
        raise ConfigError(spec.at("limit"), f"{kind} limit must be a number ≥ 0")
    per = spec.get("per", "agent")
    if per not in _PER:
        raise ConfigError(spec.at("per"), f"per must be one of {', '.join(_PER)}")
    return float(limit), per


def _budget(entry: Node) -> Budget | None:
    spec = optional_node(entry, "budget", "a mapping (param, limit, window)")
    if spec is None:
        return None
    expect_keys(spec, _BUDGET_KEYS, {"param", "limit", "window"}, "budget")
    limit, per = _limit_and_per(spec, "budget")
    currency = spec.get("currency")
    return Budget(
        str(spec["param"]), limit, _window(spec), per, str(currency).lower() if currency else None
    )


def _rate(entry: Node) -> Rate | None:
    spec = optional_node(entry, "rate", "a mapping (limit, window)")
    if spec is None:
        return None
    expect_keys(spec, _RATE_KEYS, {"limit", "window"}, "rate")
    limit, per = _limit_and_per(spec, "rate")
    return Rate(int(limit), _window(spec), per)


NAMED_KEYS = (
    "action", "operation", "provider", "environment", "agent", "role", "sensitivity", "category",
    "source",
)  # fmt: skip
SOURCES = ("proxy", "guard")  # what `source:` can be: a proxied request, a Guard API call


def _named(when: Node) -> tuple[tuple[str, tuple[str, ...]], ...]:
    named = []
    for key in NAMED_KEYS:
        value = when.get(key)
        values = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        if values:
            named.append((key, tuple(str(v) for v in values)))
    return tuple(named)


def _indexable_actions(when: Node) -> frozenset[str] | None:
    value = when.get("action")
    if value is None:
        return None
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(when.at("action"), "'action' must be a name, a glob or a list of them")
    if any(_is_glob(n) for n in names):
        return None
    return frozenset(names)


def _param_specs(when: Node) -> tuple[tuple[str, Any, Where], ...]:
    params = when.get("params")
    if not isinstance(params, Node):
        return ()
    return tuple((name, params[name], params.at(name)) for name in params)


def _param_tests(when: Node) -> tuple[tuple[str, Test], ...]:
    params = when.get("params")
    if params is None:
        return ()
    if not isinstance(params, Node):
        raise ConfigError(when.at("params"), "'params' must map param names to conditions")
    return tuple(
        (name, compile_condition(params[name], params.at(name), f"param {name!r}"))
        for name in params
    )
