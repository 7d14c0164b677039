"""`airlock test`: policy test files (`*.test.yaml` next to the policies), run offline.

A case is either a whole request (a curl command line or a raw HTTP request, mapped by the real
mappings) or an action with its params (for rules, without building a request):

    cases:
      - name: a small charge is allowed
        request: curl https://api.stripe.com/v1/charges -d amount=500 -d currency=usd
        expect: ALLOW
      - name: live payouts need approval
        action: create_payout
        environment: production
        params: {amount: 5000, currency: usd}
        expect: REQUIRE_APPROVAL
        rules: [stripe-live-money-out-needs-approval]   # optional: exactly these fire
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airlock.console.explain import RequestFormatError, parse_request
from airlock.pipeline.evaluation import Config, evaluate
from airlock.pipeline.mappings import Action
from airlock.pipeline.policies import RESTRICTIVENESS
from airlock.pipeline.tool_calls import GUARD, ToolCall, tool_action
from airlock.pipeline.yaml_source import ConfigError, Node, Seq, Where, expect_keys, load_yaml

_CASE_KEYS = {
    "name",
    "request",
    "agent",
    "action",
    "provider",
    "category",
    "sensitivity",
    "target",
    "environment",
    "source",
    "params",
    "expect",
    "rules",
}


@dataclass(frozen=True)
class CaseResult:
    file: Path
    name: str
    where: Where | str
    passed: bool
    detail: str  # what was decided, or why the case could not run

    def line(self) -> str:
        status = "PASSED" if self.passed else "FAILED"
        text = f"{self.file}::{self.name} {status}"
        return text if self.passed else f"{text}\n    {self.where}: {self.detail}"


def find_test_files(paths: Iterable[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(path.rglob("*.test.yaml")) + sorted(path.rglob("*.test.yml"))
        else:
            found.append(path)
    return found


def run_files(files: Iterable[Path], config: Config) -> list[CaseResult]:
    results: list[CaseResult] = []
    for path in files:
        results += run_file(path, config)
    return results


def run_file(path: Path, config: Config) -> list[CaseResult]:
    try:
        root = load_yaml(path)
        cases = _cases(root, path)
    except ConfigError as e:
        return [CaseResult(path, "(file)", e.where, False, e.message)]
    return [_run_case(path, case, where, config) for case, where in cases]


def _cases(root: Any, path: Path) -> list[tuple[Node, Where]]:
    if not isinstance(root, Node) or not isinstance(root.get("cases"), Seq):
        raise ConfigError(f"{path}:1:1", "a policy test file needs 'cases:', a list of cases")
    expect_keys(root, {"cases", "description"}, {"cases"}, "policy test file")
    cases = root["cases"]
    return list(zip(cases, cases.item_where, strict=True))


def _run_case(path: Path, case: Any, where: Where, config: Config) -> CaseResult:
    name = str(case.get("name", f"case at line {where.line}")) if isinstance(case, Node) else "?"
    try:
        _validate(case, where)
        decision, rules = _decide(case, config)
    except (ConfigError, RequestFormatError) as e:
        return CaseResult(path, name, getattr(e, "where", where), False, str(e))
    expected = case["expect"]
    expected_rules = case.get("rules")
    fired = ", ".join(rules) or "none"
    if decision != expected:
        return CaseResult(
            path, name, where, False, f"expected {expected}, got {decision} (rules fired: {fired})"
        )
    if expected_rules is not None and list(expected_rules) != list(rules):
        return CaseResult(
            path, name, case.at("rules"), False, f"expected rules {expected_rules}, got [{fired}]"
        )
    return CaseResult(path, name, where, True, f"{decision} ({fired})")


def _validate(case: Any, where: Where) -> None:
    if not isinstance(case, Node):
        raise ConfigError(
            where, "each case must be a mapping with 'expect' and a request or action"
        )
    expect_keys(case, _CASE_KEYS, {"expect"}, "test case")
    if ("request" in case) == ("action" in case):
        raise ConfigError(where, "a case needs exactly one of 'request' and 'action'")
    if case["expect"] not in RESTRICTIVENESS:
        raise ConfigError(case.at("expect"), "expect must be one of ALLOW, REQUIRE_APPROVAL, BLOCK")


def _decide(case: Node, config: Config) -> tuple[str, tuple[str, ...]]:
    agent = str(case.get("agent", "anonymous"))
    if "request" in case:
        try:
            request = parse_request(str(case["request"]))
        except RequestFormatError as e:
            raise ConfigError(case.at("request"), str(e)) from e
        from airlock.pipeline.document import build_document

        evaluation = evaluate(build_document(request, agent), config)
        if evaluation.error:
            raise ConfigError(case.at("request"), evaluation.error)
        return evaluation.verdict.decision, evaluation.verdict.rules
    verdict = config.policies.decide(_action(case, config), agent)
    return verdict.decision, verdict.rules


def _action(case: Node, config: Config) -> Action:
    """Category, sensitivity and provider default to what the mappings say of this action."""
    name = str(case["action"])
    if case.get("source") == GUARD:  # a Guard API tool call, judged as the decider judges it
        call = ToolCall(name, str(case.get("target", "")), dict(case.get("params") or {}),
                        str(case["provider"]) if "provider" in case else None)  # fmt: skip
        return tool_action(call, config.mappings)
    known = config.mappings.describing(name)
    context = {"environment": case["environment"]} if "environment" in case else {}
    return Action(
        action=name,
        provider=str(case.get("provider", known.provider if known else "test")),
        category=str(case.get("category", known.category if known else "write")),
        sensitivity=str(case.get("sensitivity", known.sensitivity if known else "medium")),
        target=str(case.get("target", "")),
        params=dict(case.get("params") or {}),
        mapping_id=known.id if known else None,
        context=context,
    )
