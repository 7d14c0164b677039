"""Value conditions shared by policies (`params:`) and mappings (`match:`).

A condition is a bare value (equality) or a mapping of operators that must all hold:
    amount: {gte: 100000, lt: 1000000}
Every operator but `exists` needs the value to be present: an absent value never matches.
"""

from __future__ import annotations

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


OPERATORS: dict[str, Callable[[Any], Test]] = {
    "eq": lambda x: _present(lambda a, b: a == b, x),
    "ne": lambda x: _present(lambda a, b: a != b, x),
    "in": lambda xs: _present(lambda a, b: a in b, xs),
    "not_in": lambda xs: _present(lambda a, b: a not in b, xs),
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
    return lambda actual: isinstance(actual, str) and compiled.found_in(actual)


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
        try:
            tests.append(OPERATORS[op](operand))
        except PatternError as e:
            raise ConfigError(spec.at(op), f"bad regex: {e}") from e
    return lambda actual: all(test(actual) for test in tests)
