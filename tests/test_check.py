"""`airlock check`: every problem, each as file:line:column: message."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from airlock.console.check import check
from tests.helpers.proxy import PROJECT_ROOT, clean_env


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def lines(paths: list[Path]) -> list[str]:
    return [str(problem) for problem in check(paths).problems]


def assert_reported_and_refused(tmp_path: Path, when: str, says: str, loaded: str) -> None:
    """A rule with this `when` is one problem for `airlock check`, at its line, and the proxy
    refuses to load it."""
    from airlock.pipeline.evaluation import Config
    from airlock.pipeline.yaml_source import ConfigError

    policies = write(tmp_path / "policies", "p.yaml", f"""
        rules:
          - {{id: r, when: {when}, decision: BLOCK}}
        """)  # fmt: skip
    found = lines([PROJECT_ROOT / "mappings", policies])
    assert len(found) == 1 and says in found[0], (when, found)
    assert found[0].startswith(f"{policies}:2:")
    with pytest.raises(ConfigError) as error:
        Config.load(PROJECT_ROOT / "mappings", policies.parent)
    assert loaded in str(error.value), (when, str(error.value))


def test_the_shipped_files_are_clean() -> None:
    report = check([PROJECT_ROOT / "mappings", PROJECT_ROOT / "policies"])
    assert report.problems == []
    assert report.files >= 2


def test_schema_loader_and_analysis_problems_are_all_reported(tmp_path: Path) -> None:
    mapping = write(
        tmp_path,
        "m.yaml",
        """
        provider: shop
        hosts: [api.shop.io]
        mappings:
          - action: create_order
            methd: POST
          - action: update_item
            method: PUT
            path: /items/{id}
            category: money
          - action: bad_path
            params:
              amount: $.body[
          - action: any_item
            method: POST
            path: /items/{id}
          - action: special_item
            method: POST
            path: /items/special
        """,
    )
    policy = write(
        tmp_path,
        "p.yaml",
        """
        rules:
          - id: r1
            decision: DENY
          - id: r2
            decision: BLOCK
            when: {params: {amount: {above: 5}}}
        """,
    )

    problems = lines([mapping, policy])

    assert f"{mapping}:5:5: unknown key 'methd' in mappings[0]" in "\n".join(problems)
    assert any(
        p.startswith(f"{mapping}:9:15: mappings[1].category: 'money' is not one of")
        for p in problems
    )
    assert any(
        p.startswith(f"{mapping}:12:15: JSONPath '$.body[' does not compile") for p in problems
    )
    assert (
        f"{mapping}:16:5: mapping 'm.special_item.4' is never reached: mapping 'm.any_item.3'"
        in ("\n".join(problems))
    )
    assert any(
        p.startswith(f"{policy}:3:15: rules[0].decision: 'DENY' is not one of") for p in problems
    )
    assert any(p.startswith(f"{policy}:6:30: unknown key 'above'") for p in problems)
    assert len(problems) == 6
    assert problems == sorted(problems, key=lambda p: (p.split(":")[0], int(p.split(":")[1])))


def test_duplicate_ids_across_files(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", "provider: p\nhosts: [h]\nmappings:\n  - {id: same, action: x}\n")
    b = write(
        tmp_path, "b.yaml", "provider: p\nhosts: [h2]\nmappings:\n  - {id: same, action: y}\n"
    )
    assert lines([a, b]) == [f"{b}:4:5: duplicate mapping id 'same' (first at {a}:4:5)"]


def test_yaml_syntax_errors_have_positions(tmp_path: Path) -> None:
    broken = write(tmp_path, "x.yaml", "rules: [\n")
    [problem] = lines([broken])
    assert problem.startswith(f"{broken}:2:1: invalid YAML")


def test_cli_exit_codes(tmp_path: Path) -> None:
    def airlock_check(*paths: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "airlock.console.cli", "check", *map(str, paths)],
            cwd=PROJECT_ROOT, env=clean_env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    clean = airlock_check()
    assert clean.returncode == 0 and "no problems" in clean.stdout
    bad = write(tmp_path, "bad.yaml", "default: MAYBE\n")
    dirty = airlock_check(bad)
    assert dirty.returncode == 1
    assert dirty.stdout.startswith(f"{bad}:1:10: default: 'MAYBE' is not one of")
    assert airlock_check(tmp_path / "missing.yaml").returncode == 2


def test_agents_that_reach_nothing_and_undefined_roles_are_reported(tmp_path: Path) -> None:
    (tmp_path / "agents.yaml").write_text(
        "agents:\n"
        '  - {id: idle-bot, key_hash: "sha256$00$00"}\n'
        '  - {id: quiet-bot, roles: [quiet], key_hash: "sha256$00$00"}\n'
        "roles:\n"
        "  quiet: {description: forgot the hosts}\n"
    )
    problems = [str(p) for p in check([tmp_path]).problems]
    assert problems == [
        f"{tmp_path / 'agents.yaml'}:2:5: agent 'idle-bot' has no roles, so it reaches no host: "
        "give it a role with egress (or `enabled: false`)",
        f"{tmp_path / 'agents.yaml'}:5:3: role 'quiet' has no egress, so it reaches no host: "
        "list its hosts, or say `egress: any`",
    ]
    (tmp_path / "agents.yaml").write_text(
        'agents:\n  - {id: ops-bot, roles: [opps], key_hash: "sha256$00$00"}\n'
        "roles:\n  ops: {egress: any}\n"
    )
    [problem] = check([tmp_path]).problems
    assert "role 'opps', which 'roles:' does not define (defined: ops)" in str(problem)
    # With a reviewers file and a rule per agent beside it: the typo once (the reviewers file
    # loads the agents file too), and no warning that there is no agents file (found by review).
    (tmp_path / "reviewers.yaml").write_text("reviewers:\n  - {id: alice}\n")
    (tmp_path / "p.yaml").write_text(
        "rules:\n  - {id: per-agent, when: {agent: ops-bot}, decision: BLOCK}\n"
    )
    report = check([tmp_path])
    [problem] = report.problems
    assert "role 'opps'" in str(problem) and report.names_on_trust == []


def test_rules_that_break_or_never_fire_at_runtime_are_all_reported(tmp_path: Path) -> None:
    """The shipped SendGrid mapping extracts `sender` as text: comparing it with a number
    would refuse every mail at runtime; `delete_repo` is nobody's action (a typo)."""
    policies = write(tmp_path / "policies", "p.yaml", """
        rules:
          - {id: many-senders, when: {action: send_message, params: {sender: {gt: 10}}},
             decision: BLOCK}
          - {id: no-repo-deletes, when: {action: delete_repo}, decision: BLOCK}
          - {id: big-charges, when: {action: create_charge, params: {amount: {gte: 5}}},
             decision: BLOCK}
        """)  # fmt: skip
    found = lines([PROJECT_ROOT / "mappings", policies])
    assert len(found) == 3, found  # every problem in one run; the charge rule is fine
    senders = ("sendgrid.mail_send", "twilio.messages.create")
    for line, mapping in zip(found, senders, strict=False):
        assert line.startswith(f"{policies}:2:")
        assert f"compares param 'sender' with a number (gt), but mapping {mapping!r}" in line
    assert found[2].startswith(f"{policies}:4:")
    assert "names action 'delete_repo', which no mapping or catalog operation produces" in found[2]
    assert "; did you mean 'delete_re" in found[2]  # one of the delete_re… actions


def test_the_proxy_refuses_to_load_what_would_break_at_runtime(tmp_path: Path) -> None:
    from airlock.pipeline.evaluation import Config
    from airlock.pipeline.yaml_source import ConfigError

    policies = write(tmp_path / "policies", "p.yaml", """
        rules:
          - {id: many-senders, when: {action: send_message, params: {sender: {gt: 10}}},
             decision: BLOCK}
        """)  # fmt: skip
    try:
        Config.load(PROJECT_ROOT / "mappings", policies.parent)
    except ConfigError as e:
        assert str(e).startswith(f"{policies}:2:")
    else:
        raise AssertionError("loaded a rule that refuses every SendGrid mail")


def test_an_ordering_operator_with_a_text_bound_is_refused_by_check_and_proxy_alike(
    tmp_path: Path,
) -> None:
    """The proxy loaded `gte: 1e5` (text, to YAML) and then blocked every charge, failing to
    compare a number with it; check said only that a condition was of the wrong type."""
    assert_reported_and_refused(
        tmp_path, "{action: create_charge, params: {amount: {gte: 1e5}}}",
        says="rules[0].when.params.amount.gte: '1e5' is not of type 'number'",
        loaded="'gte' compares with a number, not text '1e5': write it as a number, 100000",
    )  # fmt: skip


def test_rules_that_narrow_reviewers_need_roles_someone_has(tmp_path: Path) -> None:
    """Without reviewers.yaml anyone may decide: `reviewers: [sre]` would not hold. With it, a
    role nobody has would leave the approvals undecidable. Both refuse to load; check lists both."""
    from airlock.pipeline.evaluation import Config
    from airlock.pipeline.yaml_source import ConfigError

    folder = tmp_path / "policies"
    rules = write(folder, "p.yaml", """
        rules:
          - {id: prod-deletes, when: {action: delete_record}, decision: REQUIRE_APPROVAL,
             reviewers: [sre]}
        """)  # fmt: skip
    try:
        Config.load(PROJECT_ROOT / "mappings", folder)
    except ConfigError as e:
        assert str(e).startswith(f"{rules}:2:") and "no reviewers.yaml" in str(e)
    else:
        raise AssertionError("a reviewer restriction that would not hold was loaded")
    [found] = lines([PROJECT_ROOT / "mappings", folder])
    assert "anyone may decide, so the restriction would not hold" in found

    write(folder, "reviewers.yaml", "reviewers:\n  - {id: alice, roles: [payments-lead]}\n")
    [found] = lines([PROJECT_ROOT / "mappings", folder])
    assert found.startswith(f"{rules}:2:")
    assert "reviewer role 'sre', which no reviewer in reviewers.yaml has" in found

    write(folder, "reviewers.yaml", "reviewers:\n  - {id: bob, roles: [sre]}\n")
    assert lines([PROJECT_ROOT / "mappings", folder]) == []
    assert Config.load(PROJECT_ROOT / "mappings", folder).policies.rules


def test_conditions_on_params_an_action_never_produces_are_reported(tmp_path: Path) -> None:
    """A typo in a param name makes a rule that can never fire; each is named with its place
    and the closest param the actions do produce (curated or derived from the catalog)."""
    policy = write(
        tmp_path,
        "p.yaml",
        """
        rules:
          - id: mass-mail
            when: {action: send_message, params: {recipients_count: {gt: 10}}}
            decision: REQUIRE_APPROVAL
          - id: mass-mail-right
            when: {action: send_message, params: {recipient_count: {gt: 10}, x: {exists: false}}}
            decision: REQUIRE_APPROVAL
          - id: tagging
            when: {action: put_bucket_tagging, params: {bucket: logs}}
            decision: BLOCK
          - id: tagging-right
            when: {action: put_bucket_tagging, params: {Bucket: logs}}
            decision: BLOCK
          - id: any-mcp-tool
            when: {action: mcp.crm.lookup, params: {email: {exists: true}}}
            decision: ALLOW
        """,
    )
    found = lines([PROJECT_ROOT / "mappings", policy])
    assert found == [
        f"{policy}:3:61: rule 'mass-mail' has a condition on param 'recipients_count', which "
        "send_message never produces, so it can never fire; did you mean 'recipient_count'?",
        f"{policy}:9:57: rule 'tagging' has a condition on param 'bucket', which "
        "put_bucket_tagging never produces, so it can never fire; did you mean 'Bucket'?",
    ]


def test_param_typos_are_reported_when_a_rule_scopes_its_actions_without_naming_them(
    tmp_path: Path,
) -> None:
    """A glob, a provider, a category or an operation stands for the actions it matches: a
    param none of them produces is a typo, as under an action named exactly (the check was
    skipped, and the BLOCK never fired). Params of actions the catalog derives count."""
    policy = write(tmp_path / "policies", "p.yaml", """
        rules:
          - {id: by-glob, when: {action: "create_*", params: {amuont: {gte: 1}}}, decision: BLOCK}
          - {id: by-provider, when: {provider: stripe, params: {amuont: {gte: 1}}},
             decision: BLOCK}
          - {id: by-category, when: {category: messaging, params: {recipients_count: {gt: 1}}},
             decision: BLOCK}
          - {id: by-operation, when: {operation: aws.s3.DeleteObjects,
                                      params: {bypass_governanse: true}}, decision: BLOCK}
          - {id: glob-right, when: {action: "create_*", params: {amount: {gte: 1}}},
             decision: BLOCK}
          - {id: derived-right, when: {operation: "aws.s3.PutBucketTag*", params: {Bucket: x}},
             decision: BLOCK}
          - {id: any-action, when: {params: {amuont: {gte: 1}}}, decision: BLOCK}
        """)  # fmt: skip
    found = lines([PROJECT_ROOT / "mappings", policy])
    assert [line.split(": ", 1)[1] for line in found] == [
        "rule 'by-glob' has a condition on param 'amuont', which no action of action create_* "
        "produces, so it can never fire; did you mean 'amount'?",
        "rule 'by-provider' has a condition on param 'amuont', which no action of provider "
        "stripe produces, so it can never fire; did you mean 'amount'?",
        "rule 'by-category' has a condition on param 'recipients_count', which no action of "
        "category messaging produces, so it can never fire; did you mean 'recipient_count'?",
        "rule 'by-operation' has a condition on param 'bypass_governanse', which no action of "
        "operation "
        "aws.s3.DeleteObjects produces, so it can never fire; did you mean "
        "'bypass_governance'?",
    ], found  # any-action: a request no mapping knows has params nobody declares
    assert [line.split(":")[1] for line in found] == ["2", "3", "5", "8"]
    from airlock.pipeline.evaluation import Config
    from airlock.pipeline.yaml_source import ConfigError

    with pytest.raises(ConfigError, match="param 'amuont', which no action of action create_"):
        Config.load(PROJECT_ROOT / "mappings", policy.parent)


def test_a_bare_list_where_in_was_meant_is_reported_and_refused(tmp_path: Path) -> None:
    """`currency: [usd, eur]` compared the charge's one currency with the whole list: never
    equal, so the BLOCK never fired. A param read with `all: true` may be compared whole."""
    assert_reported_and_refused(
        tmp_path, "{action: create_charge, params: {currency: [usd, eur]}}",
        says="compares param 'currency' with the list [usd, eur] as a whole (eq), but the "
        "actions it applies to give 'currency' as one value, never a list: to match any of "
        "them, write `currency: {in: [usd, eur]}`",
        loaded="write `currency: {in: [usd, eur]}`",
    )  # fmt: skip
    assert_reported_and_refused(
        tmp_path, "{provider: stripe, params: {currency: {ne: [usd]}}}",
        says="with the list [usd] as a whole (ne)", loaded="`currency: {not_in: [usd]}`",
    )  # fmt: skip
    fine = write(tmp_path / "fine", "p.yaml", """
        rules:
          - {id: exactly-these, when: {action: terminate_instances,
                                       params: {instance_ids: [i-1, i-2]}}, decision: BLOCK}
          - {id: any-of, when: {action: create_charge, params: {currency: {in: [usd, eur]}}},
             decision: BLOCK}
        """)  # fmt: skip
    assert lines([PROJECT_ROOT / "mappings", fine]) == []


def test_conditions_no_value_satisfies_are_reported(tmp_path: Path) -> None:
    policy = write(
        tmp_path,
        "p.yaml",
        """
        rules:
          - id: impossible
            when: {action: create_charge, params: {amount: {gt: 100, lt: 50}}}
            decision: BLOCK
          - id: edge
            when: {action: create_charge, params: {amount: {gte: 10, lt: 10}}}
            decision: BLOCK
          - id: absent-and-big
            when: {action: create_charge, params: {amount: {exists: false, gte: 10}}}
            decision: BLOCK
          - id: equal-outside
            when: {action: create_charge, params: {amount: {in: [1, 2], gte: 10}}}
            decision: BLOCK
          - id: satisfiable
            when: {action: create_charge, params: {amount: {between: [10, 20], in: [15, 99]}}}
            decision: BLOCK
        """,
    )
    found = lines([PROJECT_ROOT / "mappings", policy])
    assert [line.split(": rule ")[1].split(":")[0] for line in found] == [
        "'impossible'",
        "'edge'",
        "'absent-and-big'",
        "'equal-outside'",
    ]
    assert all(line.endswith("so the rule can never fire") for line in found)


def test_rules_another_stricter_rule_always_overrules_are_reported(tmp_path: Path) -> None:
    """All rules that hold fire and the strictest wins: a rule whose conditions include a
    stricter rule's, which fires on its conditions alone, never decides anything."""
    policy = write(
        tmp_path,
        "p.yaml",
        """
        rules:
          - id: no-live-charges
            when: {action: create_charge, environment: production}
            decision: BLOCK
          - id: big-live-charges-held
            when: {action: create_charge, environment: production,
                   params: {amount: {gt: 100000}}}
            decision: REQUIRE_APPROVAL
          - id: big-charges-held
            when: {action: create_charge, params: {amount: {gt: 100000}}}
            decision: REQUIRE_APPROVAL
          - id: live-charges-over-budget
            when: {action: create_charge, environment: production}
            decision: REQUIRE_APPROVAL
            budget: {param: amount, limit: 500000, window: 24h, per: agent}
          - id: tried-in-shadow
            when: {action: create_charge, environment: production}
            decision: BLOCK
            mode: shadow
        """,
    )
    report = check([PROJECT_ROOT / "mappings", policy])
    assert report.problems == []  # it loads: a freeze overrules narrower rules on purpose
    found = [str(warning) for warning in report.warnings]
    assert len(found) == 2, found
    assert found[0].startswith(f"{policy}:") and ": warning: rule " in found[0]
    assert "rule 'big-live-charges-held' can never decide: whenever it fires, rule " in found[0]
    assert "'no-live-charges'" in found[0] and found[0].endswith("and its BLOCK wins")
    assert "rule 'live-charges-over-budget' can never decide" in found[1]


def test_rules_naming_what_does_not_exist_are_load_errors(tmp_path: Path) -> None:
    """Each names something misspelt: a role no agent has, an agent agents.yaml does not define,
    a sensitivity, a category, a source, an action inside a list that also holds a glob, a glob
    that matches no action, a budget's param. Each would be a BLOCK that protects nothing;
    `airlock check` and the proxy's load both refuse them, with file:line."""
    from airlock.pipeline.agents import hash_key

    write(tmp_path / "policies", "agents.yaml", f"""
        agents:
          - {{id: billing-bot, roles: [payments], key_hash: "{hash_key("k")}"}}
        roles:
          payments: {{egress: any}}
        """)  # fmt: skip
    typos = [
        ("{role: paymnets, action: create_charge}", "role 'paymnets', which no agent or role"),
        ("{agent: biling-bot}", "agent 'biling-bot', which agents.yaml does not define"),
        ("{sensitivity: hihg}", "sensitivity 'hihg', which is not one of low, medium"),
        ("{category: paymnet}", "category 'paymnet', which no mapping can give"),
        ("{source: Guard}", "'Guard' is not one of ['proxy', 'guard']"),
        ('{action: [create_chrage, "delete_*"]}', "action 'create_chrage', which no mapping"),
        ('{action: "creat_charge*"}', "action 'creat_charge*', which no mapping"),
    ]
    for when, says in typos:
        loaded = "source is one of proxy, guard, not 'Guard'" if "Guard" in when else says
        assert_reported_and_refused(tmp_path, when, says, loaded)
    budget = write(tmp_path / "policies", "p.yaml", """
        rules:
          - id: r
            when: {action: create_refund}
            budget: {param: amout, limit: 10, window: 1h}
            decision: BLOCK
        """)  # fmt: skip
    [found] = lines([PROJECT_ROOT / "mappings", budget])
    assert "budgets param 'amout', which create_refund never produces" in found
    assert "did you mean 'amount'?" in found


def test_rules_naming_an_operation_provider_or_environment_that_is_not_are_errors(
    tmp_path: Path,
) -> None:
    """`operation: aws.iam.AttachUserPolcy`, `provider: Stripe` or `environment: prod` (Stripe's
    context gives production or test) would be BLOCKs that protect nothing: `airlock check` and
    the proxy's load refuse them with file:line and a hint, as for a mapping's operation."""

    typos = [
        ("{operation: aws.iam.AttachUserPolcy}", "operation 'aws.iam.AttachUserPolcy', which is "
         "not an operation in the catalog, so it can never fire; did you mean "
         "'aws.iam.AttachUserPolicy'?"),
        ('{operation: "aws.iam.Atach*"}', "operation 'aws.iam.Atach*', which is not an operation"),
        ("{provider: Stripe, action: delete_record}", "provider 'Stripe', which no mapping or "
         "catalog operation gives, so it can never fire; did you mean 'stripe'?"),
        ("{environment: prod, action: create_payout}", "environment 'prod', which no mapping's "
         "context can give"),
    ]  # fmt: skip
    for when, says in typos:
        assert_reported_and_refused(tmp_path, when, says, says)
    fine = write(tmp_path / "policies", "p.yaml", """
        rules:
          - {id: a, when: {operation: ["aws.iam.Attach*", aws.s3.DeleteBucket]}, decision: BLOCK}
          - {id: b, when: {provider: [stripe, "git*", http], environment: production},
             decision: BLOCK}
          - {id: c, when: {source: guard, provider: internal-db, environment: staging},
             decision: BLOCK}
        """)  # fmt: skip
    assert lines([PROJECT_ROOT / "mappings", fine]) == []


def test_equality_with_a_value_of_another_type_than_the_mapping_declares_is_reported(
    tmp_path: Path,
) -> None:
    """The EC2 ingress mapping declares from_port `type: int`: `in: ["22"]` never equals it, so
    the BLOCK never fires (an ordering operator would fail every request instead)."""
    policies = write(tmp_path / "policies", "p.yaml", """
        rules:
          - id: no-ssh
            when: {action: open_network_ingress, params: {from_port: {in: ["22", "3389"]}}}
            decision: BLOCK
          - {id: fine, when: {action: open_network_ingress, params: {from_port: {in: [22, "x"]}}},
             decision: BLOCK}
          - id: port-text
            when: {action: open_network_ingress, params: {from_port: {regex: "^22$"}}}
            decision: BLOCK
        """)  # fmt: skip
    found = lines([PROJECT_ROOT / "mappings", policies])
    assert len(found) == 2, found
    assert found[0].startswith(f"{policies}:3:")
    assert (
        "rule 'no-ssh' compares param 'from_port' with text (in), but mapping "
        "'aws.ec2.authorize_ingress'"
    ) in found[0]
    assert "declares it type int: it never equals any of them, so the rule can never fire; " \
        "write the value as a number" in found[0]  # fmt: skip
    assert found[1].startswith(f"{policies}:8:")
    assert "a regex matches only text, so the rule can never fire; compare it with a number" \
        in found[1]  # fmt: skip


def test_a_policy_filed_in_a_subfolder_is_a_load_error_not_ignored(tmp_path: Path) -> None:
    """The proxy reads a folder's top level; `check` walks subfolders: a freeze rule filed in
    policies/team/ was reported by check and never enforced."""
    from airlock.pipeline.evaluation import Config
    from airlock.pipeline.yaml_source import ConfigError

    policies = tmp_path / "policies"
    write(policies, "base.yaml", "default: ALLOW\n")
    nested = write(policies / "team", "freeze.yaml", """
        rules:
          - {id: freeze-charges, when: {action: create_charge}, decision: BLOCK}
    """)  # fmt: skip
    (policies / ".github").mkdir()
    write(policies / ".github", "ci.yml", "on: push\n")  # hidden folders are not looked in
    with pytest.raises(ConfigError) as error:
        Config.load(PROJECT_ROOT / "mappings", policies)
    assert str(nested) in str(error.value) and "subfolder" in str(error.value)
    assert any(str(nested) in problem and "subfolder" in problem
               for problem in lines([PROJECT_ROOT / "mappings", policies]))  # fmt: skip


def test_check_reads_a_folder_as_the_proxy_does(tmp_path: Path) -> None:
    """A mapping file left among the policies passed check (classified by its content) while
    the proxy, reading every file there as policies, refused to start; a hidden folder's YAML
    (.github) was checked, though the proxy never reads it."""
    from airlock.pipeline.evaluation import Config
    from airlock.pipeline.yaml_source import ConfigError

    policies = tmp_path / "policies"
    write(policies, "p.yaml", "rules:\n  - {id: r, when: {action: create_charge}, "
          "decision: BLOCK}\n")  # fmt: skip
    write(policies / ".github", "ci.yaml", "on: {push: {branches: [main]}}\njobs: 3\n")
    assert lines([PROJECT_ROOT / "mappings", policies]) == []
    stray = write(policies, "acme.yaml", """
        provider: acme
        hosts: [api.acme.test]
        mappings:
          - {id: acme.x, action: acme_x, method: POST, path: /x}
        """)  # fmt: skip
    says = (f"{stray}:3:1: a mapping file (it has 'mappings:') in the policies folder, where "
            "every file is read as policies: move it to the mappings folder")  # fmt: skip
    assert says in lines([PROJECT_ROOT / "mappings", policies])
    with pytest.raises(ConfigError) as error:
        Config.load(PROJECT_ROOT / "mappings", policies)
    assert str(error.value) == says


def test_rules_that_tell_agents_apart_by_name_warn_without_an_agents_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Review M4: with no agents file an agent's name is what it claims, so a per-agent budget
    or rate, or an `agent:`/`role:` condition, is escaped by another name. Said by `airlock
    check`, `airlock run` and `airlock reload`; loaded all the same."""
    from airlock.console.cli import _warn_names_on_trust, main
    from airlock.pipeline.agents import hash_key
    from airlock.pipeline.evaluation import Config

    policies = write(tmp_path / "policies", "p.yaml", """
        rules:
          - id: refund-budget
            when: {action: create_refund}
            decision: REQUIRE_APPROVAL
            budget: {param: amount, limit: 200000, window: 24h}
          - id: charges-per-role
            when: {action: create_charge}
            decision: REQUIRE_APPROVAL
            rate: {limit: 5, window: 1h, per: role}
          - id: ops-bot-no-deletes
            when: {agent: ops-bot, action: delete_record}
            decision: BLOCK
          - id: everyone-rate
            when: {action: create_charge}
            decision: REQUIRE_APPROVAL
            rate: {limit: 500, window: 1h, per: all}
        """)  # fmt: skip
    mappings = PROJECT_ROOT / "mappings"
    report = check([mappings, policies])
    assert report.problems == []
    said = [str(w) for w in report.names_on_trust]
    assert len(said) == 3, said  # not the rate over all agents
    assert said[0].startswith(f"{policies}:2:")
    assert "rule 'refund-budget' uses a budget per agent, " in said[0]
    assert "but no agents file is configured" in said[0] and "agents key NAME" in said[0]
    assert "rule 'charges-per-role' uses a rate per role" in said[1]
    assert "rule 'ops-bot-no-deletes' uses `when: agent`" in said[2]

    assert main(["check", str(mappings), str(policies)]) == 0
    out = capsys.readouterr().out
    assert "rule 'refund-budget' uses a budget per agent" in out and "3 warning(s)" in out
    _warn_names_on_trust("airlock run", Config.load(mappings, policies.parent))
    err = capsys.readouterr().err
    assert err.count("airlock run: ") == 3 and "rule 'ops-bot-no-deletes'" in err

    write(policies.parent, "agents.yaml", f"""
        agents:
          - {{id: ops-bot, roles: [ops], key_hash: "{hash_key("k")}"}}
        roles:
          ops: {{egress: any}}
        """)  # fmt: skip
    assert check([mappings, policies.parent]).names_on_trust == []
    _warn_names_on_trust("airlock run", Config.load(mappings, policies.parent))
    assert capsys.readouterr().err == ""
