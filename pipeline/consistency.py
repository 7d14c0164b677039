"""What mappings and policies must agree on, checked when they are loaded together.

A rule that names an action nothing produces can never fire (a BLOCK that protects nothing),
and a numeric comparison on a param its mapping extracts as text fails on every request it
meets (`'>' not supported between 'str' and 'int'`), refusing them all. Both are configuration
errors, found at load with file:line, never at runtime.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from typing import Any

from airlock.pipeline.agents import REVIEWERS_FILE, ReviewerRegistry
from airlock.pipeline.extraction import ValueSpec
from airlock.pipeline.mappings import Mapping, MappingIndex, snake_case
from airlock.pipeline.policies import PolicySet, Rule
from airlock.pipeline.yaml_source import ConfigError, Node

# Actions that no mapping names but Airlock itself gives.
BUILT_IN_ACTIONS = frozenset(
    {"http.read", "http.write", "proxy.authenticate", "unknown", "mcp.read", "mcp.unknown_method"}
)
MCP_ACTIONS = "mcp."  # mcp.<server>.<tool>: named by the MCP servers agents call
ORDERING = frozenset({"gt", "gte", "lt", "lte", "between"})
NUMERIC_KINDS = frozenset({"int", "float", "decimal"})


def configuration_problems(mappings: MappingIndex, policies: PolicySet) -> list[ConfigError]:
    known = known_actions(mappings)
    producers: dict[str, list[Mapping]] = {}
    for mapping in mappings.mappings:
        producers.setdefault(mapping.action, []).append(mapping)
    problems: list[ConfigError] = []
    for rule in policies.rules:
        problems += _unknown_actions(rule, known)
        problems += _text_compared_with_numbers(rule, producers)
    return problems


def known_actions(mappings: MappingIndex) -> frozenset[str]:
    """What a rule can name: curated actions, those the catalog derives, Airlock's own."""
    derived: set[str] = set()
    if mappings.operations is not None:
        derived = {snake_case(name.rsplit(".", 1)[-1]) for name in mappings.operations.names()}
    curated = {m.action for m in mappings.mappings if "{" not in m.action}
    return frozenset(curated | derived | BUILT_IN_ACTIONS)


def _unknown_actions(rule: Rule, known: frozenset[str]) -> Iterator[ConfigError]:
    if rule.source == "guard":
        return  # tool calls name their own actions (pipeline/tool_calls.py)
    for action in sorted(rule.actions or ()):
        if action not in known and not action.startswith(MCP_ACTIONS):
            near = difflib.get_close_matches(action, known, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            yield ConfigError(
                rule.where,
                f"rule {rule.id!r} names action {action!r}, which no mapping or catalog "
                f"operation produces, so it can never fire{hint}",
            )


def _text_compared_with_numbers(
    rule: Rule, producers: dict[str, list[Mapping]]
) -> Iterator[ConfigError]:
    for name, spec, where in rule.param_specs:
        ops = _numeric_ordering(spec)
        if not ops:
            continue
        for action in sorted(rule.actions or ()):
            for mapping in producers.get(action, ()):
                extracted = _spec_named(mapping.params, name)
                if extracted is not None and not _numeric(extracted):
                    yield ConfigError(
                        where,
                        f"rule {rule.id!r} compares param {name!r} with a number ({ops[0]}), "
                        f"but mapping {mapping.id!r} ({mapping.where}) extracts it as text: "
                        "declare `type: int` (or float) there, or compare with text",
                    )


def _numeric_ordering(spec: Any) -> list[str]:
    if not isinstance(spec, Node):
        return []
    return [op for op in spec if op in ORDERING and _is_number(spec[op])]


def _is_number(operand: Any) -> bool:
    values = operand if isinstance(operand, list) else [operand]
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _spec_named(specs: Iterable[ValueSpec], name: str) -> ValueSpec | None:
    return next((spec for spec in specs if spec.name == name), None)


def _numeric(spec: ValueSpec) -> bool:
    """Whether a param is a number whatever the request holds."""
    if spec.finder is None:
        return _is_number(spec.literal)
    if spec.aggregate in ("count", "sum") or spec.kind in NUMERIC_KINDS:
        return True
    if spec.lookup is not None:
        return all(_is_number(v) for v in spec.lookup.values())
    return False


def reviewer_role_problems(rules: Iterable[Rule], reviewers: ReviewerRegistry) -> list[ConfigError]:
    """A rule that narrows who decides its approvals must name roles reviewers.yaml gives
    someone: without the file anyone may decide (the restriction would not hold), and a role
    nobody has leaves its approvals undecidable."""
    problems = []
    held = {role for roles in reviewers.roles.values() for role in roles}
    for rule in rules:
        if not rule.reviewer_roles:
            continue
        if not reviewers.configured:
            problems.append(ConfigError(rule.where, (
                f"rule {rule.id!r} lets only reviewers in {list(rule.reviewer_roles)} decide, "
                f"but there is no {REVIEWERS_FILE} listing reviewers and their roles: without "
                "it anyone may decide, so the restriction would not hold"
            )))  # fmt: skip
            continue
        for role in sorted(set(rule.reviewer_roles) - held):
            problems.append(ConfigError(rule.where, (
                f"rule {rule.id!r} names reviewer role {role!r}, which no reviewer in "
                f"{REVIEWERS_FILE} has: its approvals could never be decided"
            )))  # fmt: skip
    return problems
