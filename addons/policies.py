"""Stage 3: decide ALLOW, BLOCK or REQUIRE_APPROVAL for an action, through policies/*.yaml.

Every rule whose conditions hold fires; the most restrictive decision among them wins, and every
fired rule is reported. Rules are compiled at load and indexed by action name.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from addons.conditions import MISSING, Test, compile_condition
from addons.mappings import Action
from addons.yaml_source import (
    ConfigError,
    Node,
    Seq,
    Where,
    expect_keys,
    expect_type,
    load_yaml,
    yaml_files,
)

ALLOW, REQUIRE_APPROVAL, BLOCK = "ALLOW", "REQUIRE_APPROVAL", "BLOCK"
RESTRICTIVENESS = {ALLOW: 0, REQUIRE_APPROVAL: 1, BLOCK: 2}

_FILE_KEYS = {"default", "rules", "description"}
_RULE_KEYS = {"id", "description", "when", "decision", "reason"}
_WHEN_KEYS = {
    "action",
    "provider",
    "category",
    "sensitivity",
    "agent",
    "target",
    "environment",
    "params",
}


class PolicyError(Exception):
    """A rule could not be evaluated for a request: the request is blocked and the rule named."""


@dataclass(frozen=True)
class Verdict:
    decision: str
    reason: str
    rules: tuple[str, ...]


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

    def fires(self, action: Action, agent: str) -> bool:
        facts = {
            "action": action.action,
            "provider": action.provider,
            "category": action.category,
            "sensitivity": action.sensitivity,
            "agent": agent,
            "target": action.target,
            "environment": action.context.get("environment"),
        }
        try:
            if not all(test(facts[name]) for name, test in self.field_tests):
                return False
            return all(test(action.params.get(name, MISSING)) for name, test in self.param_tests)
        except Exception as e:  # e.g. comparing a string param with a number
            raise PolicyError(f"rule {self.id} ({self.where}) failed to evaluate: {e}") from e


class PolicySet:
    def __init__(self, rules: Iterable[Rule], default: str) -> None:
        self.rules = sorted(rules, key=lambda r: r.order)
        self.default = default
        self._by_action: dict[str, list[Rule]] = {}
        self._any_action = [r for r in self.rules if r.actions is None]
        for rule in self.rules:
            for name in rule.actions or ():
                self._by_action.setdefault(name, []).append(rule)
        self._candidates: dict[str, list[Rule]] = {}

    def __len__(self) -> int:
        return len(self.rules)

    def candidates(self, action: str) -> list[Rule]:
        found = self._candidates.get(action)
        if found is None:
            merged = {r.order: r for r in self._by_action.get(action, []) + self._any_action}
            found = [merged[k] for k in sorted(merged)]
            self._candidates[action] = found
        return found

    def decide(self, action: Action, agent: str) -> Verdict:
        fired = [r for r in self.candidates(action.action) if r.fires(action, agent)]
        if not fired:
            return Verdict(self.default, f"no rule matched; default is {self.default}", ())
        strictest = max(fired, key=lambda r: RESTRICTIVENESS[r.decision])
        return Verdict(strictest.decision, strictest.reason, tuple(r.id for r in fired))


# --- loading ---------------------------------------------------------------------------------


def load_policies(directory: Path) -> PolicySet:
    rules: list[Rule] = []
    defaults: list[str] = []
    for path in yaml_files(directory):
        file_rules, default = load_policy_file(path, start=len(rules))
        rules.extend(file_rules)
        if default:
            defaults.append(default)
    seen: dict[str, Rule] = {}
    for rule in rules:
        if rule.id in seen:
            raise ConfigError(
                rule.where, f"duplicate rule id {rule.id!r} (first at {seen[rule.id].where})"
            )
        seen[rule.id] = rule
    # Several files may set a default; like rules, the most restrictive one wins.
    default = max(defaults, key=RESTRICTIVENESS.__getitem__, default=ALLOW)
    return PolicySet(rules, default)


def load_policy_file(
    path: Path, start: int = 0, errors: list[ConfigError] | None = None
) -> tuple[list[Rule], str | None]:
    """With `errors`, a broken rule is reported there and the rest still load (`check`)."""
    root = load_yaml(path)
    if root is None:
        return [], None
    if not isinstance(root, Node):
        raise ConfigError(f"{path}:1:1", "a policy file must be a YAML mapping with 'rules:'")
    expect_keys(root, _FILE_KEYS, set(), "policy file")
    default = _decision(root, "default") if "default" in root else None
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


def _decision(node: Node, key: str) -> str:
    value = node[key]
    if value not in RESTRICTIVENESS:
        raise ConfigError(
            node.at(key), f"{key} must be one of ALLOW, REQUIRE_APPROVAL, BLOCK, got {value!r}"
        )
    return value


def _load_rule(entry: Any, where: Where, order: int) -> Rule:
    if not isinstance(entry, Node):
        raise ConfigError(where, "each rule must be a YAML mapping (id, when, decision, reason)")
    expect_keys(entry, _RULE_KEYS, {"id", "decision"}, "rule")
    expect_type(entry, "id", entry["id"], str, "a string")
    when = entry.get("when")
    if when is None:
        when = Node.empty(entry.where)
    if not isinstance(when, Node):
        raise ConfigError(entry.at("when"), "'when' must be a mapping of conditions")
    expect_keys(when, _WHEN_KEYS, set(), "condition ('when')")
    decision = _decision(entry, "decision")
    return Rule(
        id=entry["id"],
        decision=decision,
        reason=str(entry.get("reason") or f"rule {entry['id']}: {decision}"),
        actions=_indexable_actions(when),
        field_tests=tuple(
            (key, _glob_test(when, key)) for key in sorted(_WHEN_KEYS - {"params"}) if key in when
        ),
        param_tests=_param_tests(when),
        where=where,
        order=order,
    )


def _indexable_actions(when: Node) -> frozenset[str] | None:
    value = when.get("action")
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or any(_is_glob(n) for n in names):
        return None
    return frozenset(names)


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
