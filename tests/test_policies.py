from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from airlock.console.explain import parse_request
from airlock.pipeline.document import build_document
from airlock.pipeline.evaluation import Config, evaluate
from airlock.pipeline.history import History
from airlock.pipeline.mappings import Action, load_mappings
from airlock.pipeline.policies import PolicyError, load_policies
from airlock.pipeline.yaml_source import ConfigError
from tests.helpers.proxy import PROJECT_ROOT
from tests.test_mappings import doc

BASELINE = PROJECT_ROOT / "policies"


def action(name: str = "create_charge", provider: str = "stripe", **params: Any) -> Action:
    return Action(name, provider, "payment", "high", "customer/c1", params, "m")


def policies(tmp_path: Path, text: str):
    folder = tmp_path / "policies"
    folder.mkdir(exist_ok=True)
    (folder / "p.yaml").write_text(textwrap.dedent(text))
    return load_policies(folder)


@pytest.mark.parametrize(
    ("amount", "decision", "rules"),
    [
        (99_999, "ALLOW", ()),
        (100_000, "REQUIRE_APPROVAL", ("stripe-charge-needs-approval",)),
        (999_999, "REQUIRE_APPROVAL", ("stripe-charge-needs-approval",)),
        (1_000_000, "BLOCK", ("stripe-charge-needs-approval", "stripe-charge-too-large")),
    ],
)
def test_baseline_charge_thresholds(amount: int, decision: str, rules: tuple[str, ...]) -> None:
    verdict = load_policies(BASELINE).decide(action(amount=amount, currency="usd"), "agent")
    assert (verdict.decision, verdict.rules) == (decision, rules)


def test_baseline_reason_comes_from_the_strictest_rule() -> None:
    verdict = load_policies(BASELINE).decide(action(amount=2_000_000), "agent")
    assert verdict.reason == "Charges of 10,000.00 or more are never made by an agent."


def test_baseline_customer_deletion_needs_approval_through_the_real_mapping() -> None:
    config = Config(load_mappings(PROJECT_ROOT / "mappings"), load_policies(BASELINE))
    evaluation = evaluate(doc("DELETE", "api.stripe.com", "/v1/customers/cus_1"), config)
    assert evaluation.verdict.decision == "REQUIRE_APPROVAL"
    assert evaluation.verdict.rules == ("stripe-customer-deletion-needs-approval",)


def test_baseline_refund_budget_counts_the_refunds_the_mappings_really_read() -> None:
    """Refunds name no currency (the refund API takes none): the budget still adds them up,
    whichever URL they use, and a full refund (no amount) is held rather than never counted."""
    config = Config(load_mappings(PROJECT_ROOT / "mappings"), load_policies(BASELINE))
    now = 1_000_000.0
    history = History(lambda: now)
    live = "-H 'Authorization: Bearer sk_live_abcdefghijkl'"

    def refund(path: str, data: str, agent: str = "refund-bot") -> tuple[str, tuple[str, ...]]:
        request = parse_request(f"curl -X POST https://api.stripe.com{path} {live} {data}")
        evaluation = evaluate(build_document(request, agent), config, history)
        decision, action = evaluation.verdict.decision, evaluation.action
        run_id = f"run-{len(decided)}"
        history.record(run_id, agent, action.action, now, action.params, decision == "ALLOW")
        decided.append(decision)
        return decision, evaluation.verdict.rules

    decided: list[str] = []
    assert refund("/v1/refunds", "-d charge=ch_1 -d amount=150000") == ("ALLOW", ())
    assert refund("/v1/charges/ch_2/refund", "-d amount=40000") == ("ALLOW", ())
    assert refund("/v1/refunds", "-d charge=ch_3 -d amount=10001") == (
        "REQUIRE_APPROVAL", ("stripe-refund-budget",),
    )  # fmt: skip
    assert refund("/v1/refunds", "-d charge=ch_4") == (
        "REQUIRE_APPROVAL", ("stripe-full-refund-needs-approval",),
    )  # fmt: skip
    assert refund("/v1/refunds", "-d charge=ch_5 -d amount=200000", "other-bot") == ("ALLOW", ())


@pytest.mark.parametrize("first", ["ReadOnlyAccess", "AdministratorAccess"])
def test_baseline_blocks_an_admin_policy_among_several_values(first: str) -> None:
    """A PolicyArn that reaches the mapping as a list (a field sent twice, or a JSON array): the
    policy name is read from each item, so the admin one is seen wherever it is."""
    config = Config(load_mappings(PROJECT_ROOT / "mappings"), load_policies(BASELINE))
    arns = [f"arn:aws:iam::aws:policy/{name}" for name in ("ReadOnlyAccess", "AdministratorAccess")]
    document = doc("POST", "iam.amazonaws.com", "/", {
        "Action": "AttachUserPolicy", "Version": "2010-05-08", "UserName": "bot",
        "PolicyArn": arns if first == "ReadOnlyAccess" else arns[::-1],
    })  # fmt: skip
    evaluation = evaluate(document, config)
    assert evaluation.action.params["policy_name"] in (
        ["ReadOnlyAccess", "AdministratorAccess"], ["AdministratorAccess", "ReadOnlyAccess"],
    )  # fmt: skip
    assert (evaluation.verdict.decision, evaluation.verdict.rules) == (
        "BLOCK", ("aws-admin-policy-blocked",),
    )  # fmt: skip


def test_nothing_matched_gives_the_default_and_says_so() -> None:
    verdict = load_policies(BASELINE).decide(action("http.read", "http"), "agent")
    assert verdict.decision == "ALLOW"
    assert verdict.reason == "no rule matched; the default for this action is ALLOW"
    assert verdict.rules == ()


def test_operators(tmp_path: Path) -> None:
    policy = policies(
        tmp_path,
        """
        rules:
          - {id: eq, when: {params: {currency: usd}}, decision: REQUIRE_APPROVAL}
          - {id: ne, when: {params: {currency: {ne: usd}}}, decision: REQUIRE_APPROVAL}
          - {id: in, when: {params: {country: {in: [KP, IR]}}}, decision: BLOCK}
          - {id: not_in, when: {params: {tier: {not_in: [gold]}}}, decision: REQUIRE_APPROVAL}
          - {id: range, when: {params: {amount: {gt: 10, lte: 20}}}, decision: REQUIRE_APPROVAL}
          - {id: lt, when: {params: {amount: {lt: 0}}}, decision: BLOCK}
          - {id: gte, when: {params: {amount: {gte: 1000}}}, decision: BLOCK}
          - {id: regex, when: {params: {email: {regex: "@evil\\\\.com$"}}}, decision: BLOCK}
          - {id: exists, when: {params: {coupon: {exists: true}}}, decision: REQUIRE_APPROVAL}
          - {id: absent, when: {params: {memo: {exists: false}}}, decision: ALLOW}
          - {id: band, when: {params: {score: {between: [3, 5]}}}, decision: REQUIRE_APPROVAL}
        """,
    )

    def fired(**params: Any) -> tuple[str, ...]:
        return policy.decide(action(**params), "a").rules

    assert fired(currency="usd", memo="m") == ("eq",)
    assert fired(currency="eur", memo="m") == ("ne",)
    assert fired(country="KP", memo="m") == ("in",)
    assert fired(tier="silver", memo="m") == ("not_in",)
    assert fired(amount=15, memo="m") == ("range",)
    assert fired(amount=10, memo="m") == ()
    assert fired(amount=-1, memo="m") == ("lt",)
    assert fired(amount=1000, memo="m") == ("gte",)
    assert fired(email="x@evil.com", memo="m") == ("regex",)
    assert fired(coupon="c", memo="m") == ("exists",)
    assert fired() == ("absent",)
    assert fired(score=3, memo="m") == ("band",)
    assert fired(score=5, memo="m") == ("band",)
    assert fired(score=6, memo="m") == ()


def test_fields_agents_and_action_globs(tmp_path: Path) -> None:
    policy = policies(
        tmp_path,
        """
        default: REQUIRE_APPROVAL
        rules:
          - {id: reads, when: {action: "http.*"}, decision: ALLOW}
          - {id: intern, when: {agent: "intern-*", provider: [stripe]}, decision: BLOCK}
          - {id: target, when: {target: "customer/vip-*"}, decision: BLOCK}
        """,
    )
    assert policy.decide(action("http.read", "http"), "a").decision == "ALLOW"
    assert policy.decide(action(), "intern-3").rules == ("intern",)
    assert policy.decide(action(), "senior").decision == "REQUIRE_APPROVAL"
    vip = Action("x", "p", "data", "low", "customer/vip-1", {}, None)
    assert policy.decide(vip, "a").rules == ("target",)


def test_a_rule_that_cannot_be_evaluated_blocks_and_names_itself(tmp_path: Path) -> None:
    policy = policies(
        tmp_path,
        """
        rules:
          - {id: big, when: {params: {amount: {gt: 100}}}, decision: REQUIRE_APPROVAL}
        """,
    )
    with pytest.raises(PolicyError, match=r"rule big \(.*p.yaml:3:5\) failed to evaluate"):
        policy.decide(action(amount="a string"), "a")


def test_policy_errors_block_through_evaluate(tmp_path: Path) -> None:
    policy = policies(
        tmp_path,
        """
        rules:
          - {id: by-path, when: {params: {path: {gt: 3}}}, decision: BLOCK}
        """,
    )
    config = Config(load_mappings(PROJECT_ROOT / "mappings"), policy)
    evaluation = evaluate(doc("POST", "api.x.io", "/write"), config)
    assert evaluation.verdict.decision == "BLOCK"
    assert evaluation.failed_stage == "policy"
    assert "rule by-path" in evaluation.verdict.reason


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        (
            "rules:\n  - id: r\n    when: {params: {a: {greater: 1}}}\n    decision: BLOCK\n",
            ":3:25:",
            "unknown operator 'greater'",
        ),
        ("rules:\n  - id: r\n    decision: DENY\n", ":3:15:", "decision must be one of"),
        (
            "rules:\n  - id: r\n    when: {acton: x}\n    decision: BLOCK\n",
            ":3:12:",
            "unknown key 'acton'",
        ),
        (
            "rules:\n  - {id: r, decision: BLOCK}\n  - {id: r, decision: ALLOW}\n",
            ":3:5:",
            "duplicate rule id",
        ),
        (
            "rules:\n  - {id: r, decision: BLOCK, when: {params: {a: {in: 3}}}}\n",
            ":2:54:",
            "'in' needs a list",
        ),
        ("default: MAYBE\n", ":1:10:", "default must be one of"),
        # Every condition commented out: the rule would fire for every request.
        (
            "rules:\n  - id: r\n    when:\n      # action: run_shell\n    decision: ALLOW\n",
            ":3:",
            "'when' is empty",
        ),
        # Conditions under `params:` (time, risk, budget, rate) all commented out: without
        # them the ALLOW would cover every charge, the BLOCK fire never.
        *(
            (
                f"rules:\n  - id: r\n    when:\n      action: create_charge\n      {key}:\n"
                f"        # {key} conditions\n    decision: {decision}\n",
                ":5:7:",
                f"'{key}' is empty (its conditions commented out?)",
            )
            for key, decision in (("params", "ALLOW"), ("time", "ALLOW"), ("risk", "BLOCK"))
        ),
        *(
            (
                f"rules:\n  - id: r\n    when: {{action: create_charge}}\n    {key}:\n"
                f"      # limit: 1\n    decision: BLOCK\n",
                ":4:5:",
                f"'{key}' is empty (its conditions commented out?)",
            )
            for key in ("budget", "rate")
        ),
        # An ordering operator with a text bound (YAML reads 1e5 as text): every request's
        # number would fail to compare with it, and be blocked.
        (
            "rules:\n  - {id: r, decision: BLOCK, when: {params: {amount: {gte: 1e5}}}}\n",
            ":2:60:",
            "'gte' compares with a number, not text '1e5': write it as a number, 100000",
        ),
        (
            "rules:\n  - {id: r, decision: BLOCK, when: {params: {n: {between: [1, '9.5']}}}}\n",
            ":2:59:",
            "'between' compares with a number, not text '9.5': write it as a number, 9.5",
        ),
        (
            "rules:\n  - {id: r, decision: BLOCK, when: {risk: {gt: high}}}\n",
            ":2:48:",
            "'gt' compares with a number, not text 'high': compare text with eq, in or regex",
        ),
        (
            "rules:\n  - {id: r, decision: BLOCK, when: {params: {a: {lt: true}}}}\n",
            ":2:",
            "'lt' compares with a number, not bool True",
        ),
        # A quoted "false" is text, which reads as true: the rule would test the opposite.
        (
            "rules:\n  - {id: r, decision: BLOCK, when: {params: {a: {exists: 'false'}}}}\n",
            ":2:",
            "'exists' needs true or false",
        ),
    ],
)
def test_policy_errors_name_file_line_and_column(
    tmp_path: Path, text: str, where: str, message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        policies(tmp_path, text)
    assert where in str(error.value), str(error.value)
    assert message in str(error.value)


def test_five_hundred_rules_are_indexed_by_action(tmp_path: Path) -> None:
    lines = ["rules:"]
    for i in range(500):
        lines.append(
            f"  - {{id: r{i}, when: {{action: act_{i % 100}, params: {{amount: {{gte: {i}}}}}}},"
            " decision: REQUIRE_APPROVAL}"
        )
    policy = policies(tmp_path, "\n".join(lines) + "\n")
    assert len(policy) == 500
    assert len(policy.candidates("act_7")) == 5
    assert policy.decide(action("act_7", amount=250), "a").rules == ("r7", "r107", "r207")


@pytest.mark.parametrize(
    ("host_header", "path"),
    [
        ("api.stripe.com.", "/v1/charges"),
        ("API.Stripe.com:443", "//v1/charges"),
        (None, "/v1/./charges"),
        (None, "/v1/x/../charges/"),
    ],
)
def test_disguised_requests_still_map_to_what_they_do(host_header: str | None, path: str) -> None:
    from airlock.pipeline.document import normalise_path

    config = Config(load_mappings(PROJECT_ROOT / "mappings"), load_policies(BASELINE))
    document = doc("POST", "api.stripe.com", normalise_path(path), {"amount": "5000000"})
    if host_header:
        document["headers"]["host"] = host_header
    evaluation = evaluate(document, config)
    assert (evaluation.action.action, evaluation.verdict.decision) == ("create_charge", "BLOCK")
    assert evaluation.verdict.rules  # blocked by the rule, not by a failure


def test_a_host_header_that_disagrees_with_the_target_is_refused() -> None:
    config = Config(load_mappings(PROJECT_ROOT / "mappings"), load_policies(BASELINE))
    document = doc("POST", "api.stripe.com", "/v1/charges", {"amount": "5"})
    document["headers"]["host"] = "evil.example"
    evaluation = evaluate(document, config)
    assert evaluation.verdict.decision == "BLOCK"
    assert evaluation.failed_stage == "request"
    assert "does not name the host" in evaluation.verdict.reason


def test_a_host_longer_than_a_dns_name_is_refused_before_it_is_mapped() -> None:
    """No server has such a name; its text would be every key and record it reached."""
    config = Config(load_mappings(PROJECT_ROOT / "mappings"), load_policies(BASELINE))
    document = doc("GET", "a" * 254, "/x")
    evaluation = evaluate(document, config)
    assert (evaluation.verdict.decision, evaluation.failed_stage) == ("BLOCK", "request")
    assert evaluation.verdict.reason.endswith(
        "the host name has 254 characters: DNS names have at most 253"
    )
    assert evaluate(doc("GET", "a" * 253, "/x"), config).verdict.decision == "ALLOW"


def test_environment_condition_reads_the_derived_context(tmp_path: Path) -> None:
    policy = policies(
        tmp_path,
        """
        rules:
          - {id: live-payouts, when: {action: create_payout, environment: production},
             decision: REQUIRE_APPROVAL}
        """,
    )
    live = Action(
        "create_payout", "stripe", "payment", "high", "t", {}, "m", {"environment": "production"}
    )
    test = Action(
        "create_payout", "stripe", "payment", "high", "t", {}, "m", {"environment": "test"}
    )
    unknown = Action("create_payout", "stripe", "payment", "high", "t", {}, "m")
    assert policy.decide(live, "a").rules == ("live-payouts",)
    assert policy.decide(test, "a").rules == ()
    assert policy.decide(unknown, "a").rules == ()


def test_a_policy_file_may_set_only_the_default(tmp_path: Path) -> None:
    policy = policies(tmp_path, "default: REQUIRE_APPROVAL\n")
    assert (len(policy), policy.default) == (0, "REQUIRE_APPROVAL")


def test_shadow_rules_say_what_they_would_decide_without_deciding(tmp_path: Path) -> None:
    policy = policies(
        tmp_path,
        """
        rules:
          - {id: big, when: {params: {amount: {gte: 100}}}, decision: REQUIRE_APPROVAL}
          - {id: trial, when: {params: {amount: {gte: 50}}}, decision: BLOCK, mode: shadow}
          - {id: retired, when: {params: {amount: {gte: 1}}}, decision: BLOCK, mode: off}
        """,
    )
    verdict = policy.decide(action(amount=60), "a")
    assert (verdict.decision, verdict.rules) == ("ALLOW", ())
    assert verdict.shadow is not None
    assert (verdict.shadow.decision, verdict.shadow.rules) == ("BLOCK", ("trial",))
    both = policy.decide(action(amount=500), "a")
    assert (both.decision, both.rules, both.shadow.decision) == (
        "REQUIRE_APPROVAL",
        ("big",),
        "BLOCK",
    )
    assert policy.decide(action(amount=10), "a").shadow is None
    assert len(policy) == 2  # the rule that is off is not even loaded


def test_default_posture_by_category_and_sensitivity(tmp_path: Path) -> None:
    policy = policies(
        tmp_path,
        """
        default:
          decision: ALLOW
          by_category: {identity: REQUIRE_APPROVAL}
          by_sensitivity: {critical: BLOCK}
        """,
    )
    identity = Action("create_user", "aws", "identity", "high", "t", {}, "m")
    critical = Action("drop", "x", "data", "critical", "t", {}, "m")
    plain = Action("write_file", "github", "code", "medium", "t", {}, "m")
    assert policy.decide(identity, "a").decision == "REQUIRE_APPROVAL"
    assert policy.decide(critical, "a").decision == "BLOCK"
    assert policy.decide(plain, "a").decision == "ALLOW"


def test_a_rule_can_set_its_own_hold_timeout(tmp_path: Path) -> None:
    policy = policies(
        tmp_path,
        """
        rules:
          - {id: slow, when: {action: create_charge}, decision: REQUIRE_APPROVAL,
             hold_timeout: 20}
          - {id: fast, when: {params: {amount: {gte: 5}}}, decision: REQUIRE_APPROVAL,
             hold_timeout: 5}
        """,
    )
    assert policy.decide(action(amount=1), "a").hold_timeout == 20
    assert policy.decide(action(amount=9), "a").hold_timeout == 5


def test_mode_and_hold_timeout_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mode must be one of enforce, shadow, off"):
        policies(tmp_path, "rules:\n  - {id: r, decision: BLOCK, mode: dry-run}\n")
    with pytest.raises(ConfigError, match="REQUIRE_APPROVAL rules only"):
        policies(tmp_path, "rules:\n  - {id: r, decision: BLOCK, hold_timeout: 5}\n")
    with pytest.raises(ConfigError, match="'money' is not one of"):
        policies(tmp_path, "default: {by_category: {money: BLOCK}}\n")


def test_rules_name_the_reviewer_roles_that_decide(tmp_path: Path) -> None:
    policy = policies(
        tmp_path,
        """
        rules:
          - {id: money, when: {action: create_charge}, decision: REQUIRE_APPROVAL,
             reviewers: [payments-lead]}
          - {id: big, when: {params: {amount: {gte: 10}}}, decision: REQUIRE_APPROVAL,
             reviewers: [cfo], approvals: 2}
        """,
    )
    verdict = policy.decide(action(amount=50), "a")
    assert (verdict.reviewer_roles, verdict.approvals) == (("cfo", "payments-lead"), 2)
    assert policy.decide(action(amount=1), "a").reviewer_roles == ("payments-lead",)


def test_each_fired_rule_keeps_its_own_reviewer_roles(tmp_path: Path) -> None:
    """Two rules that hold one request for different roles: both must be met, so the verdict
    keeps one role set per rule (a merged list would let either role approve alone)."""
    policy = policies(
        tmp_path,
        """
        rules:
          - {id: finance, when: {action: create_charge}, decision: REQUIRE_APPROVAL,
             reviewers: [payments-lead, cfo]}
          - {id: security, when: {params: {amount: {gte: 10}}}, decision: REQUIRE_APPROVAL,
             reviewers: [security]}
          - {id: anyone, when: {action: create_charge}, decision: REQUIRE_APPROVAL}
        """,
    )
    verdict = policy.decide(action(amount=50), "a")
    assert verdict.reviewer_role_sets == (("cfo", "payments-lead"), ("security",))
    assert verdict.reviewer_roles == ("cfo", "payments-lead", "security")
    assert policy.decide(action(amount=1), "a").reviewer_role_sets == (("cfo", "payments-lead"),)


def test_action_names_a_request_makes_up_do_not_grow_the_rule_index() -> None:
    """An MCP call's action is mcp.<host>.<tool>, both from the request: ten thousand made-up
    tool names are decided by the rules for any action, and cache nothing each."""
    baseline = load_policies(BASELINE)
    for n in range(10_000):
        verdict = baseline.decide(action(f"mcp.evil.example.tool_{n}", "mcp"), "a")
        assert verdict.decision in ("ALLOW", "BLOCK", "REQUIRE_APPROVAL")
    named = {name for rule in baseline.rules for name in rule.actions or ()}
    assert set(baseline._candidates) <= named


def test_a_list_param_meets_eq_in_and_regex_when_any_item_does(tmp_path: Path) -> None:
    """Params read with `all: true` (grants, cidrs) are lists: a rule on one of their items
    fires, where it used to compare the whole list and never fire."""
    policy = policies(
        tmp_path,
        """
        rules:
          - {id: no-public-grants, when: {params: {grants: {regex: AllUsers}}}, decision: BLOCK}
          - {id: no-world, when: {params: {cidrs: "0.0.0.0/0"}}, decision: BLOCK}
          - {id: no-ssh, when: {params: {ports: {in: [22, 3389]}}}, decision: BLOCK}
          - {id: internal-only, when: {params: {cidrs: {not_in: ["0.0.0.0/0", "::/0"]}}},
             decision: REQUIRE_APPROVAL}
        """,
    )
    everyone = 'uri="http://acs.amazonaws.com/groups/global/AllUsers"'
    assert policy.decide(action("a", grants=["id=1", everyone]), "a").rules == ("no-public-grants",)
    assert policy.decide(action("a", grants=["id=1"]), "a").decision == "ALLOW"
    assert policy.decide(action("a", cidrs=["10.0.0.0/8", "0.0.0.0/0"]), "a").rules == ("no-world",)
    assert policy.decide(action("a", cidrs=["10.0.0.0/8"]), "a").rules == ("internal-only",)
    assert policy.decide(action("a", cidrs="0.0.0.0/0"), "a").rules == ("no-world",)
    assert policy.decide(action("a", ports=[443, 22]), "a").rules == ("no-ssh",)
    assert policy.decide(action("a", ports=[443]), "a").decision == "ALLOW"


def test_malformed_policy_files_are_errors_at_their_line_not_tracebacks(tmp_path: Path) -> None:
    """A number among action names, a date where a param's text was meant, a file saved in
    Latin-1: each names the file, line and column, and what to do."""
    with pytest.raises(ConfigError, match=r"p\.yaml:2:.*'action' must be a name, a glob or a list"):
        policies(
            tmp_path, "rules:\n  - {id: r, when: {action: [create_charge, 5]}, decision: BLOCK}\n"
        )
    with pytest.raises(
        ConfigError, match=r'p\.yaml:2:.*2024-01-01 reads as a date.*quote it \("2024-01-01"\)'
    ):
        policies(
            tmp_path, "rules:\n  - {id: r, when: {params: {day: 2024-01-01}}, decision: BLOCK}\n"
        )
    quoted = policies(
        tmp_path, "rules:\n  - {id: r, when: {params: {day: '2024-01-01'}}, decision: BLOCK}\n"
    )
    assert quoted.decide(action(day="2024-01-01"), "a").decision == "BLOCK"
    folder = tmp_path / "policies"
    (folder / "p.yaml").write_bytes("rules:\n  - id: café\n    decision: BLOCK\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"p\.yaml:2:12: is not UTF-8 \(byte 0xe9\)"):
        load_policies(folder)


def test_hosts_longer_than_a_dns_name_are_not_kept_by_the_document_reader() -> None:
    """A request's host is a cache key: past a DNS name's length it is read, not kept (64 KB
    hosts, 65,536 of them, would be 4 GB; found by review)."""
    from airlock.pipeline import document as document_module

    for n in range(200):
        host = f"{n}-" + "h" * 10_000
        assert document_module.vendor_reading(host, {}) == ""
    assert all(len(host) <= 253 for host in document_module._readings)
