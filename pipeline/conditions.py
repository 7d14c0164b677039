"""Value conditions shared by policies (`params:`) and mappings (`match:`).

A condition is a bare value (equality) or a mapping of operators that must all hold:
    amount: {gte: 100000, lt: 1000000}
Every operator but `exists` needs the value to be present: an absent value never matches.
A list value (a param read with `all: true`: grants, cidrs, recipients) meets `eq`, `in` and
`regex` when the list itself or any one of its items does; `ne` and `not_in` are their
negations (no item equals); ordering operators (gt, gte, lt, lte, between) compare the value
itself, with numbers only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from airlock.pipeline.patterns import PatternError, linear
from airlock.pipeline.yaml_source import ConfigError, Node, Where

Test = Callable[[Any], bool]
MISSING = object()  # the value is not there at all (distinct from an explicit null)


def _present(op: Callable[[Any, Any], bool], expected: Any) -> Test:
    def test(actual: Any) -> bool:
        return actual is not MISSING and actual is not None and op(actual, expected)

    return test


def _itemwise(op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    """The value, or when it is a list any one of its items, meets `op`."""
    return lambda a, b: (
        op(a, b) or (isinstance(a, list) and any(item is not None and op(item, b) for item in a))
    )


_equals = _itemwise(lambda a, b: a == b)
_among = _itemwise(lambda a, b: a in b)

OPERATORS: dict[str, Callable[[Any], Test]] = {
    "eq": lambda x: _present(_equals, x),
    "ne": lambda x: _present(lambda a, b: not _equals(a, b), x),
    "in": lambda xs: _present(_among, xs),
    "not_in": lambda xs: _present(lambda a, b: not _among(a, b), xs),
    "gt": lambda x: _present(lambda a, b: a > b, x),
    "gte": lambda x: _present(lambda a, b: a >= b, x),
    "lt": lambda x: _present(lambda a, b: a < b, x),
    "lte": lambda x: _present(lambda a, b: a <= b, x),
    "between": lambda bounds: _present(lambda a, b: b[0] <= a <= b[1], bounds),
    "exists": lambda flag: lambda a: (a is not MISSING and a is not None) == bool(flag),
    "regex": lambda pattern: _regex_test(pattern),
}


def _regex_test(pattern: Any) -> Test:
    """RE2 (pipeline/patterns.py): time linear in the value's length, whatever an agent sends."""
    if not isinstance(pattern, str):
        raise PatternError(f"a regex is text, not {type(pattern).__name__}")
    compiled = linear(pattern)
    found = _itemwise(lambda a, _: isinstance(a, str) and compiled.found_in(a))
    return lambda actual: found(actual, None)


ORDERING = ("gt", "gte", "lt", "lte", "between")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _refuse_text_bounds(op: str, operand: Any, where: Where) -> None:
    """An ordering operator compares with numbers: a text bound (`gte: 1e5`, which YAML reads
    as text) would fail against every number a request holds, and block every one of them."""
    bounds = operand if op == "between" else [operand]
    for bound in bounds:
        if _is_number(bound):
            continue
        hint = ""
        if isinstance(bound, str):
            try:
                hint = f": write it as a number, {_as_number(bound)}"
            except ValueError:
                hint = ": compare text with eq, in or regex"
        raise ConfigError(
            where, f"{op!r} compares with a number, not {_kind(bound)} {bound!r}{hint}"
        )


def _kind(value: Any) -> str:
    return "text" if isinstance(value, str) else type(value).__name__


def _as_number(text: str) -> int | float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(text)
    return int(number) if number.is_integer() else number


def compile_condition(spec: Any, where: Where, subject: str) -> Test:
    """`subject` names what is tested, for error messages ("param 'amount'")."""
    if not isinstance(spec, Node):
        return OPERATORS["eq"](spec)
    tests: list[Test] = []
    for op, operand in spec.items():
        if op not in OPERATORS:
            raise ConfigError(
                spec.key_at(op),
                f"unknown operator {op!r} for {subject} (expected {', '.join(OPERATORS)})",
            )
        if op in ("in", "not_in") and not isinstance(operand, list):
            raise ConfigError(spec.at(op), f"{op!r} needs a list")
        if op == "exists" and not isinstance(operand, bool):  # "false" would read as true
            raise ConfigError(spec.at(op), "'exists' needs true or false")
        if op == "between" and not (isinstance(operand, list) and len(operand) == 2):
            raise ConfigError(spec.at(op), "'between' needs [low, high] (both included)")
        if op in ORDERING:
            _refuse_text_bounds(op, operand, spec.at(op))
        try:
            tests.append(OPERATORS[op](operand))
        except PatternError as e:
            raise ConfigError(spec.at(op), f"bad regex: {e}") from e
    return lambda actual: all(test(actual) for test in tests)
