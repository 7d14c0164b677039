"""What mappings and policies must agree on, checked when they are loaded together.

A rule that names an action nothing produces can never fire (a BLOCK that protects nothing),
and a numeric comparison on a param its mapping extracts as text fails on every request it
meets (`'>' not supported between 'str' and 'int'`), refusing them all. Both are configuration
errors, found at load with file:line, never at runtime.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from airlock.pipeline.agents import REVIEWERS_FILE, AgentRegistry, ReviewerRegistry
from airlock.pipeline.conditions import Test
from airlock.pipeline.extraction import ValueSpec
from airlock.pipeline.mappings import CATEGORIES, SENSITIVITIES, Mapping, MappingIndex, snake_case
from airlock.pipeline.operations import OperationIndex
from airlock.pipeline.policies import ENFORCE, RESTRICTIVENESS, PolicySet, Rule
from airlock.pipeline.yaml_source import ConfigError, Node

# Actions that no mapping names but Airlock itself gives.
BUILT_IN_ACTIONS = frozenset(
    {"http.read", "http.write", "proxy.authenticate", "unknown", "mcp.read", "mcp.unknown_method"}
)
MCP_ACTIONS = "mcp."  # mcp.<server>.<tool>: named by the MCP servers agents call
ORDERING = frozenset({"gt", "gte", "lt", "lte", "between"})
NUMERIC_KINDS = frozenset({"int", "float", "decimal"})


def configuration_problems(
    mappings: MappingIndex, policies: PolicySet, agents: AgentRegistry | None = None
) -> list[ConfigError]:
    """agents: the agents file beside the policies, for the roles rules name (None: not
    checked, as `airlock check` on mappings alone)."""
    derived = derived_params(mappings)
    known = known_actions(mappings, derived)
    producers: dict[str, list[Mapping]] = {}
    for mapping in mappings.mappings:
        producers.setdefault(mapping.action, []).append(mapping)
    existing = {
        "action": known,
        "operation": frozenset(mappings.operations.names() if mappings.operations else ()),
        "provider": known_providers(mappings),
        "sensitivity": frozenset(SENSITIVITIES),
        "category": frozenset(CATEGORIES),
    }
    environments = known_environments(mappings)
    if environments is not None:
        existing["environment"] = environments
    if agents is not None:
        existing["role"] = frozenset(agents.roles) | {
            role for agent in agents.agents.values() for role in agent.roles
        }
    if agents is not None and agents.required:  # without an agents file any name is taken
        existing["agent"] = frozenset(agents.agents)
    givers = Givers(mappings)
    problems: list[ConfigError] = []
    for rule in policies.rules:
        problems += _names_nothing(rule, existing)
        problems += _text_compared_with_numbers(rule, producers)
        problems += _never_equal_to_declared_type(rule, producers)
        problems += _params_never_produced(rule, givers)
        problems += _list_where_in_was_meant(rule, givers)
        problems += _budget_param_never_produced(rule, givers)
        problems += _contradictory_conditions(rule)
    return problems


@dataclass(frozen=True)
class Giver:
    """Something that gives an action (a mapping, a catalog operation, Airlock itself), with
    what a rule can tell it by and the params it can have."""

    action: str
    facts: dict[str, Any]  # provider, category, sensitivity, curated
    operations: tuple[str, ...]  # what `operation:` it can have; () none
    any_operation_of: str | None  # a URL mapping: any operation the catalog knows of its provider
    params: frozenset[str] | None  # None: whatever the request holds (not declared)
    lists: frozenset[str] = frozenset()  # the params it can give as a list (`all: true`)


class Givers:
    """Every giver of an action, to find those a rule's `when` can meet."""

    def __init__(self, mappings: MappingIndex) -> None:
        self.all = [_mapping_giver(m) for m in mappings.mappings]
        self.all += list(_operation_givers(mappings.operations))
        self.all += _BUILT_IN_GIVERS
        self._by_action: dict[str, list[Giver]] = {}
        for giver in self.all:
            self._by_action.setdefault(giver.action, []).append(giver)

    def in_scope(self, rule: Rule) -> list[Giver] | None:
        """The givers whose actions the rule can meet (by action, operation, provider,
        category, sensitivity, curated); None when it cannot be said (an MCP tool's action)."""
        names = dict(rule.named).get("action", ())
        if any(name.startswith(MCP_ACTIONS) for name in names):
            return None  # MCP servers name their own tools, with their own arguments
        candidates = self.all
        if rule.actions is not None:
            candidates = [g for action in rule.actions for g in self._by_action.get(action, ())]
        tests = {key: test for key, test in rule.field_tests if key in _GIVER_FACTS}
        operations = dict(rule.named).get("operation")
        return [g for g in candidates if _meets(g, tests, operations)]


_GIVER_FACTS = frozenset({"action", "operation", "provider", "category", "sensitivity", "curated"})


def _meets(giver: Giver, tests: dict[str, Test], operations: tuple[str, ...] | None) -> bool:
    facts = {**giver.facts, "action": giver.action}
    if not all(tests[key](facts[key]) for key in tests.keys() - {"operation"}):
        return False
    if operations is None:
        return True
    if any(tests["operation"](name) for name in giver.operations):
        return True
    return giver.any_operation_of is not None and any(
        _of_provider(pattern, giver.any_operation_of) for pattern in operations
    )


def _of_provider(pattern: str, provider: str) -> bool:
    """Whether an operation name or glob can name an operation of this provider
    (aws.s3.PutObject, github.repos/delete)."""
    first = pattern.split(".", 1)[0]
    return _names_some(first, frozenset({provider})) if first else False


def _mapping_giver(mapping: Mapping) -> Giver:
    undeclared = mapping.tool is not None and not mapping.params  # an MCP tool's arguments
    names = {spec.name for spec in mapping.params} | set(
        _CAPTURE.findall(mapping.path_template or "")
    )
    return Giver(
        _TEMPLATE.sub("x", mapping.action),
        {"provider": mapping.provider, "category": mapping.category,
         "sensitivity": mapping.sensitivity, "curated": True},
        mapping.operations,
        mapping.provider if not (mapping.operations or mapping.tool) else None,
        None if undeclared else frozenset(names),
        frozenset(spec.name for spec in mapping.params if _gives_a_list(spec)),
    )  # fmt: skip


def _gives_a_list(spec: ValueSpec) -> bool:
    """`all: true` or a literal list. Any other extraction gives one value: count and sum a
    number, otherwise the first match (a list only where a request sends one in place of a
    value); path captures and the catalog's fields are one value too."""
    if spec.finder is None:
        return isinstance(spec.literal, list)
    return spec.aggregate == "all"


def _operation_givers(operations: OperationIndex | None) -> Iterator[Giver]:
    """The actions the catalog derives (pipeline/mappings.py derived_action): the request
    fields of the operation are its params."""
    for service in operations.services.values() if operations is not None else ():
        for name, spec in service.operations.items():
            yield Giver(
                snake_case(name.rsplit(".", 1)[-1]),
                {"provider": service.provider, "category": spec.category,
                 "sensitivity": spec.sensitivity, "curated": False},
                (f"{service.prefix}.{name}",),
                None,
                frozenset(member for member, _, _ in spec.fields),
            )  # fmt: skip


def _built_in(action: str, provider: str, category: str, sensitivity: str) -> Giver:
    facts = {"provider": provider, "category": category, "sensitivity": sensitivity,
             "curated": False}  # fmt: skip
    return Giver(action, facts, (), None, None)


# What Airlock itself gives (pipeline/mappings.py fallback_action, mcp_method_action, map_tool;
# addons/identity.py): their params are not declared.
_BUILT_IN_GIVERS = [
    _built_in("http.read", "http", "read", "low"),
    _built_in("http.write", "http", "write", "medium"),
    _built_in("proxy.authenticate", "airlock", "identity", "high"),
    _built_in("mcp.read", "mcp", "read", "low"),
    _built_in("mcp.unknown_method", "mcp", "tool", "medium"),
    _built_in("mcp.x.x", "mcp", "tool", "medium"),  # a tool call no mapping describes
]
_TEMPLATE = re.compile(r"\{[^}]*\}")


def shadowed_rules(rules: Iterable[Rule]) -> Iterator[ConfigError]:
    """A rule whose every condition another rule also has, while that one is stricter and fires
    on its conditions alone (no budget, rate, time window or risk): whenever it fires, the other
    fires too and wins, so it never decides anything. A warning, not a load error: a blanket
    freeze (`BLOCK` every charge today) overrules narrower rules on purpose, and must load."""
    enforced = [r for r in rules if r.mode == ENFORCE and r.decision in RESTRICTIVENESS]
    unconditional = [r for r in enforced if not (r.budget or r.rate or r.time_window
                                                 or r.risk_test)]  # fmt: skip
    for rule in enforced:
        wider = next((other for other in unconditional
                      if other is not rule and other.written <= rule.written
                      and RESTRICTIVENESS[other.decision] > RESTRICTIVENESS[rule.decision]),
                     None)  # fmt: skip
        if wider is not None:
            yield ConfigError(
                rule.where,
                f"rule {rule.id!r} can never decide: whenever it fires, rule {wider.id!r} "
                f"({wider.where}) fires too, and its {wider.decision} wins",
            )


def derived_params(mappings: MappingIndex) -> dict[str, set[str]]:
    """Each action the catalog derives (pipeline/mappings.py derived_action), with the params
    it can have: the request fields of the operations it stands for."""
    derived: dict[str, set[str]] = {}
    if mappings.operations is not None:
        for name, fields in mappings.operations.fields_by_operation():
            derived.setdefault(snake_case(name.rsplit(".", 1)[-1]), set()).update(fields)
    return derived


def known_actions(
    mappings: MappingIndex, derived: dict[str, set[str]] | None = None
) -> frozenset[str]:
    """What a rule can name: curated actions, those the catalog derives, Airlock's own."""
    derived = derived_params(mappings) if derived is None else derived
    curated = {m.action for m in mappings.mappings if "{" not in m.action}
    return frozenset(curated | derived.keys() | BUILT_IN_ACTIONS)


# Providers Airlock itself gives: requests no mapping knows (http), MCP calls no mapping names
# (mcp), its own refusals (airlock), Guard API calls that name none (guard).
BUILT_IN_PROVIDERS = frozenset({"http", "mcp", "airlock", "guard"})
# What the caller of the Guard API names itself (pipeline/tool_calls.py): its rules say so.
CALLER_NAMED = frozenset({"action", "provider", "environment"})


def known_providers(mappings: MappingIndex) -> frozenset[str]:
    """What a rule's `provider:` can name: the mappings' providers, the catalog's, Airlock's."""
    catalog = mappings.operations.services.values() if mappings.operations else ()
    return frozenset(
        {m.provider for m in mappings.mappings}
        | {service.provider for service in catalog}
        | BUILT_IN_PROVIDERS
    )


def known_environments(mappings: MappingIndex) -> frozenset[str] | None:
    """The values the mappings' `environment` context can take, when each one says them all (a
    literal, or a `lookup:` table whose values are kept as they are); None when one can give
    any text it reads (then no value of a rule can be said to be impossible)."""
    values: set[str] = set()
    for mapping in mappings.mappings:
        for spec in mapping.context:
            if spec.name != "environment":
                continue
            if spec.finder is None:
                values.add(str(spec.literal))
            elif spec.lookup is not None and spec.kind is None and spec.aggregate == "first":
                values |= {str(v) for v in spec.lookup.values()}
            else:
                return None
            if spec.default is not None:
                values.add(str(spec.default))
    return frozenset(values)


def _names_nothing(rule: Rule, existing: dict[str, frozenset[str]]) -> Iterator[ConfigError]:
    """Each name a rule matches (exact, or a glob) must name something that exists: an action
    a mapping or the catalog produces, an operation in the catalog, a provider the mappings
    give, an environment their context can take, a role the agents file gives, a known
    sensitivity or category (`source:` is checked as its rule loads). A typo would make a BLOCK
    that protects nothing."""
    for key, values in rule.named:
        names = existing.get(key)
        if names is None:
            continue
        for value in values:
            if key in CALLER_NAMED and rule.source == "guard":
                continue  # tool calls name their own actions, providers and context
            if key == "action" and value.startswith(MCP_ACTIONS):
                continue  # MCP servers name their own tools
            if _names_some(value, names):
                continue
            near = difflib.get_close_matches(value, names, n=1, cutoff=_HINT_CUTOFF.get(key, 0.6))
            hint = f"; did you mean {near[0]!r}?" if near else ""
            yield ConfigError(rule.where, f"rule {rule.id!r} names {key} {value!r}, "
                              f"{_NOTHING[key]}, so it can never fire{hint}")  # fmt: skip


_NOTHING = {
    "action": "which no mapping or catalog operation produces",
    "agent": "which agents.yaml does not define (only its agents get through)",
    "role": "which no agent or role in agents.yaml has",
    "operation": "which is not an operation in the catalog",
    "provider": "which no mapping or catalog operation gives",
    "environment": "which no mapping's context can give",
    "sensitivity": f"which is not one of {', '.join(SENSITIVITIES)}",
    "category": "which no mapping can give",
}


_HINT_CUTOFF = {"operation": 0.8}  # thousands of names: only a close one is a hint


def _names_some(pattern: str, names: frozenset[str]) -> bool:
    if not any(c in pattern for c in "*?["):
        return pattern in names
    matches = re.compile(fnmatch.translate(pattern)).match
    return any(matches(name) for name in names)


def _budget_param_never_produced(rule: Rule, givers: Givers) -> Iterator[ConfigError]:
    """A budget sums a param; one its actions never have sums nothing, so it never fires."""
    if rule.budget is None or rule.source == "guard":
        return
    produced = _produced_in_scope(rule, givers)
    if produced is None or rule.budget.param in produced:
        return
    near = difflib.get_close_matches(rule.budget.param, produced, n=1)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    yield ConfigError(
        rule.where,
        f"rule {rule.id!r} budgets param {rule.budget.param!r}, which "
        f"{_never_produced_by(rule)}, so it can never fire{hint}",
    )


def _list_where_in_was_meant(rule: Rule, givers: Givers) -> Iterator[ConfigError]:
    """`currency: [usd, eur]` compares the value with the whole list: a param every action in
    scope gives as one value never equals it (`ne`: always differs), so the rule never fires
    (or always does). `in:` was meant."""
    if rule.source == "guard":
        return
    for name, spec, where in rule.param_specs:
        for op, operand in _equality_with_a_list(spec):
            if not _always_one_value(rule, givers, name):
                break
            meant = "in" if op == "eq" else "not_in"
            shown = f"{name}: {{{meant}: {_flow(operand)}}}"
            yield ConfigError(
                where,
                f"rule {rule.id!r} compares param {name!r} with the list {_flow(operand)} as a "
                f"whole ({op}), but the actions it applies to give {name!r} as one value, never "
                f"a list: to match any of them, write `{shown}`",
            )


def _equality_with_a_list(spec: Any) -> list[tuple[str, list[Any]]]:
    if isinstance(spec, list):
        return [("eq", spec)]
    if isinstance(spec, Node):
        return [(op, spec[op]) for op in ("eq", "ne") if isinstance(spec.get(op), list)]
    return []


def _always_one_value(rule: Rule, givers: Givers, name: str) -> bool:
    scope = givers.in_scope(rule)
    if not scope or any(giver.params is None for giver in scope):
        return False  # params nobody declares: a list may be what they hold
    giving = [giver for giver in scope if name in (giver.params or ())]
    return bool(giving) and not any(name in giver.lists for giver in giving)


def _flow(values: list[Any]) -> str:
    return "[" + ", ".join(str(v) for v in values) + "]"


def _produced_in_scope(rule: Rule, givers: Givers) -> set[str] | None:
    """The params the actions a rule can meet may have; None when that cannot be said (a
    giver that does not declare them, or nothing in scope: then the rule names nothing, which
    _names_nothing says)."""
    scope = givers.in_scope(rule)
    if not scope or any(giver.params is None for giver in scope):
        return None
    return {name for giver in scope for name in giver.params or ()}


def _never_produced_by(rule: Rule) -> str:
    """Who never produces a param, as the rule says its actions: `send_message never
    produces`, `no action of provider stripe produces`."""
    if rule.actions:
        return f"{', '.join(sorted(rule.actions))} never produces"
    said = [f"{key} {'|'.join(values)}" for key, values in rule.named
            if key in _GIVER_FACTS]  # fmt: skip
    return f"no action{' of ' + ', '.join(said) if said else ''} produces"


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


EQUALITY = ("eq", "ne", "in", "not_in")


def _never_equal_to_declared_type(
    rule: Rule, producers: dict[str, list[Mapping]]
) -> Iterator[ConfigError]:
    """`from_port: {in: ["22"]}` where the mapping declares `type: int`: text never equals a
    number (nor a number text), so the condition never holds (`ne`, `not_in`: always), and
    `regex` never matches a number or a bool; silently, where an ordering operator would fail."""
    for name, spec, where in rule.param_specs:
        conditions = spec if isinstance(spec, Node) else {"eq": spec}
        for action in sorted(rule.actions or ()):
            for mapping in producers.get(action, ()):
                extracted = _spec_named(mapping.params, name)
                kind = _declared_kind(extracted) if extracted is not None else None
                if kind is None:
                    continue
                for op, operand in conditions.items():
                    if op not in (*EQUALITY, "regex"):
                        continue
                    written = (
                        operand
                        if op in ("in", "not_in") and isinstance(operand, list)
                        else [operand]
                    )
                    if op == "regex":
                        fits = kind == "str"
                    else:
                        fits = any(_of_kind(value, kind) for value in written)
                    if fits:
                        continue
                    shown = "a regex" if op == "regex" else f"{_type_name(written)} ({op})"
                    yield ConfigError(
                        where,
                        f"rule {rule.id!r} compares param {name!r} with {shown}, but mapping "
                        f"{mapping.id!r} ({mapping.where}) declares it type {kind}: "
                        f"{_NEVER[op]}; {_advice(op, kind)}",
                    )


_NEVER = {
    "eq": "it never equals, so the rule can never fire",
    "in": "it never equals any of them, so the rule can never fire",
    "ne": "it never equals, so the condition always holds",
    "not_in": "it never equals any of them, so the condition always holds",
    "regex": "a regex matches only text, so the rule can never fire",
}
_KIND_NAMES = {"int": "a number", "float": "a number", "decimal": "a number", "str": "text",
               "bool": "true or false"}  # fmt: skip


def _advice(op: str, kind: str) -> str:
    if op == "regex":
        return f"compare it with {_KIND_NAMES[kind]} (eq, in, or an ordering operator)"
    return f"write the value as {_KIND_NAMES[kind]}"


def _declared_kind(spec: ValueSpec) -> str | None:
    """The type a param always has, when the mapping says so: `type:`, or a count or sum."""
    if spec.finder is None:
        return None
    if spec.aggregate in ("count", "sum"):
        return "int" if spec.aggregate == "count" else spec.kind or "float"
    return spec.kind


def _of_kind(value: Any, kind: str) -> bool:
    if value is None or isinstance(value, list | dict):
        return True  # null tests absence; a whole list or object is compared as a whole
    if kind in NUMERIC_KINDS:
        return _is_number(value)
    if kind == "bool":
        return isinstance(value, bool)
    return isinstance(value, str)


def _type_name(values: list[Any]) -> str:
    kinds = sorted({"text" if isinstance(v, str) else type(v).__name__ for v in values})
    return " and ".join(kinds)


def _contradictory_conditions(rule: Rule) -> Iterator[ConfigError]:
    """A param condition no value satisfies (`{gt: 100, lt: 50}`, `{exists: false, gte: 1}`,
    an `eq` or every `in` value outside the bounds): the rule can never fire."""
    for name, spec, where in rule.param_specs:
        why = _unsatisfiable(spec) if isinstance(spec, Node) else None
        if why:
            yield ConfigError(
                where,
                f"rule {rule.id!r}: no value of param {name!r} satisfies {why}, so the rule "
                "can never fire",
            )


def _unsatisfiable(spec: Node) -> str | None:
    ops = {op: spec[op] for op in spec}
    if ops.get("exists") is False and set(ops) - {"exists", "ne", "not_in"}:
        return "exists: false together with a test that needs a value"
    low, high = _bounds(ops)
    if low is not None and high is not None:
        (lo, lo_inclusive), (hi, hi_inclusive) = low, high
        if lo > hi or (lo == hi and not (lo_inclusive and hi_inclusive)):
            return f"a lower bound of {lo} and an upper bound of {hi}"
    candidates = [ops["eq"]] if "eq" in ops else ops.get("in")
    if (
        isinstance(candidates, list)
        and candidates
        and all(_is_number(c) and not _within(c, low, high) for c in candidates)
    ):
        return "its bounds and the values it must equal"
    return None


Bound = tuple[float, bool] | None  # (value, inclusive)


def _bounds(ops: dict[str, Any]) -> tuple[Bound, Bound]:
    lows: list[tuple[float, bool]] = []
    highs: list[tuple[float, bool]] = []
    for op, inclusive, into in (("gt", False, lows), ("gte", True, lows),
                                ("lt", False, highs), ("lte", True, highs)):  # fmt: skip
        if op in ops and _is_number(ops[op]):
            into.append((ops[op], inclusive))
    between = ops.get("between")
    if isinstance(between, list) and len(between) == 2 and _is_number(between):
        lows.append((between[0], True))
        highs.append((between[1], True))
    low = max(lows, key=lambda b: (b[0], not b[1])) if lows else None
    high = min(highs, key=lambda b: (b[0], b[1])) if highs else None
    return low, high


def _within(value: float, low: Bound, high: Bound) -> bool:
    if low is not None and (value < low[0] or (value == low[0] and not low[1])):
        return False
    return not (high is not None and (value > high[0] or (value == high[0] and not high[1])))


ALWAYS_POSSIBLE = frozenset({"body_error", "body_truncated"})  # any request may carry these


def _params_never_produced(rule: Rule, givers: Givers) -> Iterator[ConfigError]:
    """A condition on a param that none of the actions the rule can meet ever has can never
    hold (a typo such as recipients_count for recipient_count): the rule silently never fires.
    The actions are those it names, its globs match, or its provider, category, operation
    (...) scope."""
    if rule.source == "guard" or not rule.param_specs:
        return
    produced = _produced_in_scope(rule, givers)
    if produced is None:
        return
    produced |= ALWAYS_POSSIBLE
    for name, spec, where in rule.param_specs:
        if name in produced or (isinstance(spec, Node) and spec.get("exists") is False):
            continue
        near = difflib.get_close_matches(name, produced, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        yield ConfigError(
            where,
            f"rule {rule.id!r} has a condition on param {name!r}, which "
            f"{_never_produced_by(rule)}, so it can never fire{hint}",
        )


_CAPTURE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\+?\}")


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
