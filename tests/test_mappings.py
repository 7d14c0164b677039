from __future__ import annotations

import base64
import textwrap
from pathlib import Path
from typing import Any

import pytest

from airlock.pipeline.evaluation import Config, evaluate
from airlock.pipeline.mappings import MAX_TARGET, MappingError, load_mappings, shortened
from airlock.pipeline.operations import MAX_CACHED_HOST
from airlock.pipeline.policies import load_policies
from airlock.pipeline.yaml_source import ConfigError
from tests.helpers.proxy import PROJECT_ROOT

SHIPPED = PROJECT_ROOT / "mappings"
BASELINE = Config(load_mappings(SHIPPED), load_policies(PROJECT_ROOT / "policies"))


def doc(method: str, host: str, path: str, body: Any = None, agent: str = "a") -> dict[str, Any]:
    return {
        "method": method,
        "scheme": "https",
        "host": host,
        "port": 443,
        "path": path,
        "query": {},
        "headers": {},
        "body": body,
        "body_format": "form" if body else "empty",
        "body_size": 0,
        "agent": agent,
    }


def write(tmp_path: Path, name: str, text: str) -> Path:
    folder = tmp_path / "mappings"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(textwrap.dedent(text))
    return folder


def test_shipped_stripe_charge_maps_with_typed_params() -> None:
    index = load_mappings(SHIPPED)
    action = index.map(
        doc("POST", "api.stripe.com", "/v1/charges", {"amount": "150000", "currency": "usd"})
    )
    assert action.action == "create_charge"
    assert action.provider == "stripe"
    assert action.category == "payment"
    assert action.params["amount"] == 150000
    assert action.params["currency"] == "usd"
    assert action.mapping_id == "stripe.create_charge"


def test_an_unmapped_write_carries_its_query_in_its_params() -> None:
    """What a reviewer approves for an unknown API is its params: a query that moves money
    (`/v1/payouts?destination=acct_X&amount=9900000`) must be among them (found by review)."""
    request = doc("POST", "api.unknown.io", "/v1/payouts")
    request["query"] = {"destination": ["acct_X"], "amount": ["9900000"]}
    action = load_mappings(SHIPPED).map(request)
    assert action.action == "http.write"
    assert action.params["query"] == {"destination": ["acct_X"], "amount": ["9900000"]}
    assert "query" not in load_mappings(SHIPPED).map(doc("POST", "api.unknown.io", "/x")).params


def test_path_captures_feed_params_and_target() -> None:
    action = load_mappings(SHIPPED).map(doc("DELETE", "api.stripe.com", "/v1/customers/cus_9"))
    assert (action.action, action.target) == ("delete_record", "customer/cus_9")
    assert action.params == {"id": "cus_9", "resource": "customer"}


def test_unmapped_requests_fall_back_to_http_read_and_write() -> None:
    index = load_mappings(SHIPPED)
    read = index.map(doc("GET", "api.unknown.io", "/x"))
    write_ = index.map(doc("PUT", "api.unknown.io", "/x"))
    assert (read.action, read.target, read.category) == ("http.read", "api.unknown.io", "read")
    assert (write_.action, write_.category) == ("http.write", "write")
    assert index.map(doc("GET", "api.stripe.com", "/v1/no_such_thing")).action == "http.read"
    # What the catalog knows is named for what it is, even when no mapping curates it.
    balance = index.map(doc("GET", "api.stripe.com", "/v1/balance"))
    assert (balance.operation, balance.action, balance.category) == (
        "stripe.GetBalance", "get_balance", "read",
    )  # fmt: skip


def test_host_globs_match_one_label_per_star(tmp_path: Path) -> None:
    folder = write(
        tmp_path,
        "m.yaml",
        """
        provider: test
        mappings:
          - {action: any_sub, hosts: "*.example.com"}
          - {action: ec2, hosts: "ec2.*.amazonaws.com"}
          - {action: deep, hosts: "**.deep.io"}
        """,
    )
    index = load_mappings(folder)
    assert index.map(doc("GET", "a.example.com", "/")).action == "any_sub"
    assert index.map(doc("GET", "a.b.example.com", "/")).action == "http.read"
    assert index.map(doc("GET", "example.com", "/")).action == "http.read"
    assert index.map(doc("POST", "ec2.eu-west-1.amazonaws.com", "/")).action == "ec2"
    assert index.map(doc("POST", "ec2.amazonaws.com", "/")).action == "http.write"
    assert index.map(doc("GET", "x.y.deep.io", "/")).action == "deep"


@pytest.mark.parametrize(
    ("hosts", "where", "name"),
    [
        ("['api.stripe.com:443']", ":3:9:", "api.stripe.com"),
        ("[api.x.io, 'https://api.stripe.com']", ":3:19:", "api.stripe.com"),
        ("https://api.stripe.com/v1", ":3:8:", "api.stripe.com"),
        ("['*.slack.com:443']", ":3:9:", "*.slack.com"),
    ],
)
def test_a_host_with_a_scheme_or_port_is_refused_not_silently_unmatched(
    tmp_path: Path, hosts: str, where: str, name: str
) -> None:
    """Requests are matched by host name alone: `api.stripe.com:443` matched none, and the
    charges it was meant to map fell to the catalog's derived action, no rule naming them."""
    folder = write(tmp_path, "m.yaml", f"""
        provider: stripe
        hosts: {hosts}
        mappings:
          - {{action: charge_card, method: POST, path: /v1/charges}}
        """)  # fmt: skip
    with pytest.raises(ConfigError) as error:
        load_mappings(folder)
    assert str(error.value).startswith(str(folder / "m.yaml") + where), str(error.value)
    assert f"has a scheme, port or path, which host matching never sees: write the name alone " \
        f"({name!r}" in str(error.value)  # fmt: skip


def test_first_match_in_file_order_wins_and_methods_filter(tmp_path: Path) -> None:
    folder = write(
        tmp_path,
        "a.yaml",
        """
        provider: p
        hosts: [h.io]
        mappings:
          - {action: specific, method: POST, path: /v1/items/special}
          - {action: generic, method: [POST, PUT], path: "/v1/items/{id}"}
          - {action: rest, path: "/files/{key+}"}
        """,
    )
    index = load_mappings(folder)
    assert index.map(doc("POST", "h.io", "/v1/items/special")).action == "specific"
    assert index.map(doc("PUT", "h.io", "/v1/items/special")).action == "generic"
    assert index.map(doc("DELETE", "h.io", "/v1/items/special")).action == "http.write"
    files = index.map(doc("GET", "h.io", "/files/a/b/c.txt"))
    assert (files.action, files.params["key"]) == ("rest", "a/b/c.txt")


def test_param_that_does_not_convert_fails_closed() -> None:
    config = Config.load(SHIPPED, PROJECT_ROOT / "policies")
    document = doc("POST", "api.stripe.com", "/v1/charges", {"amount": "lots", "currency": "usd"})

    with pytest.raises(MappingError, match="expected int, got 'lots'"):
        config.mappings.map(document)
    evaluation = evaluate(document, config)
    assert evaluation.verdict.decision == "BLOCK"
    assert evaluation.failed_stage == "mapping"
    assert "stripe.create_charge" in evaluation.verdict.reason
    assert (evaluation.action.action, evaluation.action.provider) == ("create_charge", "stripe")


def test_a_secret_param_that_does_not_convert_is_not_quoted(tmp_path: Path) -> None:
    """The conversion error is stored and shown (the run's error, the refusal): the value of a
    param named like a secret is said by its length only."""
    folder = write(
        tmp_path,
        "m.yaml",
        """
        provider: p
        hosts: [h.io]
        mappings:
          - action: unlock
            params:
              pin: {path: $.body.pin, type: int}
        """,
    )
    with pytest.raises(MappingError) as failed:
        load_mappings(folder).map(doc("POST", "h.io", "/", {"pin": "S3cret-not-a-number"}))
    assert "expected int, got 19 characters" in str(failed.value)
    assert "S3cret" not in str(failed.value)


def test_params_with_default_all_and_literal(tmp_path: Path) -> None:
    folder = write(
        tmp_path,
        "m.yaml",
        """
        provider: p
        hosts: [h.io]
        mappings:
          - action: send
            params:
              to: {path: "$.body.to[*]", all: true}
              priority: {path: $.body.priority, type: int, default: 3}
              kind: {value: email}
              flag: bulk
        """,
    )
    action = load_mappings(folder).map(doc("POST", "h.io", "/", {"to": ["a", "b"]}))
    assert action.params == {"to": ["a", "b"], "priority": 3, "kind": "email", "flag": "bulk"}


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        (
            "provider: p\nhosts: [h]\nmappings:\n  - action: x\n    methd: GET\n",
            ":5:5:",
            "unknown key 'methd' in mapping",
        ),
        (
            "provider: p\nhosts: [h]\nmappings:\n  - action: x\n    params:\n      a: $.body[\n",
            ":6:10:",
            "JSONPath '$.body[' does not compile",
        ),
        (
            "provider: p\nhosts: [h]\nmappings:\n  - action: x\n    category: money\n",
            ":5:15:",
            "category 'money' is not one of",
        ),
        (
            "provider: p\nhosts: [h]\nmappings:\n  - action: x\n    method: FETCH\n",
            ":5:13:",
            "unknown HTTP method 'FETCH'",
        ),
        ("provider: p\nmappings:\n  - action: x\n", ":3:5:", "mapping has no hosts"),
        ("provider: p\nmappings: [\n", ":3:1:", "invalid YAML"),
        ("provider: p\nmappings:\n  - action: a\x07b\n", ":3:14:", "control characters"),
        (
            "provider: p\nhosts: [h]\nmappings:\n  - method: GET\n",
            ":4:5:",
            "missing required key 'action'",
        ),
        (
            "provider: p\nhosts: [h]\nmappings:\n  - {id: a, action: x}\n  - {id: a, action: y}\n",
            ":5:5:",
            "duplicate mapping id 'a'",
        ),
    ],
)
def test_config_errors_name_file_line_and_column(
    tmp_path: Path, text: str, where: str, message: str
) -> None:
    folder = write(tmp_path, "bad.yaml", text)
    with pytest.raises(ConfigError) as error:
        load_mappings(folder)
    assert str(error.value).startswith(str(folder / "bad.yaml") + where), str(error.value)
    assert message in str(error.value)


def test_a_thousand_mappings_are_indexed_by_host(tmp_path: Path) -> None:
    lines = ["provider: bulk", "mappings:"]
    for i in range(1000):
        lines.append(f'  - {{action: act_{i}, hosts: [h{i % 50}.io], path: "/r{i}/{{id}}"}}')
    folder = write(tmp_path, "bulk.yaml", "\n".join(lines) + "\n")
    index = load_mappings(folder)
    assert len(index) == 1000
    assert len(index.candidates("h7.io", "GET")) == 20
    assert index.map(doc("GET", "h7.io", "/r957/x")).action == "act_957"


@pytest.mark.parametrize(
    "expression",
    ["$.body.amount", "$.body.items[1].name", "$.body.items[5].name", "$.body.amount.x",
     "$.body.items.name", "$.query.page[0]", "$.body.missing", "$.body"],
)  # fmt: skip
def test_direct_field_paths_find_what_jsonpath_ng_finds(expression: str) -> None:
    from jsonpath_ng.ext import parse

    from airlock.pipeline.extraction import FieldPath, compile_jsonpath

    document = {
        "body": {"amount": 5, "items": [{"name": "a"}, {"name": "b"}]},
        "query": {"page": ["2"]},
    }
    finder = compile_jsonpath(expression)
    assert isinstance(finder, FieldPath)
    assert finder.find_values(document) == [m.value for m in parse(expression).find(document)]


def test_complex_paths_use_jsonpath_ng() -> None:
    from airlock.pipeline.extraction import GeneralPath, compile_jsonpath

    finder = compile_jsonpath("$.body.items[*].name")
    assert isinstance(finder, GeneralPath)
    assert finder.find_values({"body": {"items": [{"name": "a"}, {"name": "b"}]}}) == ["a", "b"]


def test_match_conditions_pick_the_mapping_by_body_and_header_values(tmp_path: Path) -> None:
    folder = write(
        tmp_path,
        "aws.yaml",
        """
        provider: aws
        hosts: ["ec2.*.amazonaws.com", "dynamodb.*.amazonaws.com"]
        mappings:
          - action: run_instances
            method: POST
            match: {$.body.Action: RunInstances}
          - action: terminate_instances
            method: POST
            match: {$.body.Action: {in: [TerminateInstances, StopInstances]}}
          - action: delete_table
            method: POST
            match: {"$.headers['x-amz-target']": DynamoDB_20120810.DeleteTable}
        """,
    )
    index = load_mappings(folder, catalog=None)  # these URL mappings alone
    ec2 = "ec2.eu-west-1.amazonaws.com"
    assert index.map(doc("POST", ec2, "/", {"Action": "RunInstances"})).action == "run_instances"
    assert index.map(doc("POST", ec2, "/", {"Action": "StopInstances"})).action == (
        "terminate_instances"
    )
    assert index.map(doc("POST", ec2, "/", {"Action": "DescribeVpcs"})).action == "http.write"
    dynamo = doc("POST", "dynamodb.us-east-1.amazonaws.com", "/", {"TableName": "t"})
    dynamo["headers"]["x-amz-target"] = "DynamoDB_20120810.DeleteTable"
    assert index.map(dynamo).action == "delete_table"


def test_context_is_derived_before_redaction_and_feeds_target_and_policy(tmp_path: Path) -> None:
    folder = write(
        tmp_path,
        "stripe.yaml",
        """
        provider: stripe
        hosts: [api.stripe.com]
        context:
          environment:
            path: $.headers.authorization
            regex: "Bearer [sr]k_(live|test)_"
            lookup: {live: production, test: test}
        mappings:
          - action: create_charge
            method: POST
            path: /v1/charges
            target: "{environment}/charges"
        """,
    )
    document = doc("POST", "api.stripe.com", "/v1/charges", {"amount": "1"})
    document["headers"]["authorization"] = "Bearer sk_live_abcdefghijkl"
    action = load_mappings(folder).map(document)
    assert action.context == {"environment": "production"}
    assert action.target == "production/charges"
    assert "sk_live" not in str(action.context)


@pytest.mark.parametrize(
    ("authorization", "environment"),
    [
        ("Bearer sk_live_abcdefghijkl", "production"),
        ("bearer sk_live_abcdefghijkl", "production"),  # the scheme is case-insensitive
        ("BEARER  rk_test_abcdefghijkl", "test"),
        ("Basic " + base64.b64encode(b"sk_live_abcdefghijkl:").decode(), "production"),  # curl -u
        ("basic " + base64.b64encode(b"rk_live_abcdefghijkl:").decode(), "production"),
        ("Basic " + base64.b64encode(b"sk_test_abcdefghijkl:").decode(), "test"),
        ("Basic " + base64.b64encode(b"sk_test_x:").decode().rstrip("="), "test"),  # unpadded
        ("Token sk_live_abcdefghijkl", "production"),  # any other scheme: its token
        # What cannot be read is `unknown`: no key, bad base64, a key in the password (Stripe
        # reads the user name), two credentials folded into one header.
        ("Token abcdefghijkl", "unknown"),
        ("Basic not base64!", "unknown"),
        ("Basic " + base64.b64encode(b":sk_live_abcdefghijkl").decode(), "unknown"),
        ("Bearer sk_test_abcdefghijkl, Bearer sk_live_abcdefghijkl", "unknown"),
        ("", "unknown"),
        (None, "unknown"),
    ],
)
def test_shipped_stripe_environment_reads_the_key_however_it_is_sent(
    authorization: str | None, environment: str
) -> None:
    document = doc("POST", "api.stripe.com", "/v1/transfers", {"amount": "100"})
    if authorization is not None:
        document["headers"]["authorization"] = authorization
    action = load_mappings(SHIPPED).map(document)
    assert action.context == {"environment": environment}


def test_decode_reads_an_authorization_credential_or_base64(tmp_path: Path) -> None:
    folder = write(
        tmp_path,
        "m.yaml",
        """
        provider: p
        hosts: [h.io]
        mappings:
          - action: send
            params:
              user: {path: $.headers.authorization, decode: authorization, regex: "^([^:]*):"}
              token: {path: "$.headers['x-token']", decode: authorization}
              note: {path: $.body.note, decode: base64}
              bad: {path: $.body.bad, decode: base64, default: none}
        """,
    )
    document = doc("POST", "h.io", "/", {"note": "aGVsbG8gd29ybGQ", "bad": "%%%"})
    document["headers"] = {
        "authorization": "BASIC " + base64.b64encode(b"bot:pw").decode(),
        "x-token": "Bearer abc",
    }
    params = load_mappings(folder).map(document).params
    assert params == {"user": "bot", "token": "abc", "note": "hello world", "bad": "none"}


def test_transforms_count_sum_regex_lookup_and_decimal(tmp_path: Path) -> None:
    folder = write(
        tmp_path,
        "m.yaml",
        """
        provider: p
        hosts: [h.io]
        mappings:
          - action: send
            params:
              recipients: {path: "$.body.personalizations[*].to[*]", count: true}
              objects: {path: $.body.Delete.Object, count: true}
              total: {path: "$.body.items[*].amount", type: int, sum: true}
              domain: {path: $.body.from, regex: "@(.+)$"}
              tier: {path: $.body.plan, lookup: {p1: gold, p2: silver}, default: unknown}
              price: {path: $.body.price, type: decimal}
              nothing: {path: "$.body.none[*]", count: true}
              users: {path: $.body.users, split: ",", count: true}
              size: {path: [$.body.decoded_size, $.body.size], type: int}
        """,
    )
    body = {
        "personalizations": [{"to": ["a", "b"]}, {"to": ["c"]}],
        "Delete": {"Object": {"Key": "only-one"}},
        "items": [{"amount": "5"}, {"amount": "7"}],
        "from": "bot@example.com",
        "plan": "p9",
        "price": "12.50",
        "users": "U1,U2,,U3",
        "size": "42",
    }
    params = load_mappings(folder).map(doc("POST", "h.io", "/", body)).params
    assert params == {
        "recipients": 3,
        "objects": 1,
        "total": 12,
        "domain": "example.com",
        "tier": "unknown",
        "price": 12.5,
        "nothing": 0,
        "users": 3,
        "size": 42,
    }


def test_a_matched_list_is_transformed_item_by_item_and_stays_a_list(tmp_path: Path) -> None:
    """A field sent twice reaches the mapping as a list: each item goes through the transforms
    (never the list's text, which a regex would read as "AdministratorAccess']")."""
    folder = write(
        tmp_path,
        "m.yaml",
        """
        provider: p
        hosts: [h.io]
        mappings:
          - action: attach
            params:
              name: {path: $.body.arn, regex: "policy/(?:.*/)?([^/]+)$"}
              kind: {path: $.body.kind, lookup: {u: user, r: role}, default: none}
              users: {path: $.body.users, split: ",", count: true}
              shared: {path: $.body.values, regex: "^all$", count: true}
              gone: {path: $.body.kind, regex: "^x$", default: nothing}
        """,
    )
    body = {
        "arn": ["arn:aws:iam::aws:policy/ReadOnlyAccess", "arn:aws:iam::aws:policy/Admin"],
        "kind": ["u", "g", "r"],
        "users": ["U1,U2", "U3"],
        "values": ["123456789012", "all"],
    }
    params = load_mappings(folder).map(doc("POST", "h.io", "/", body)).params
    assert params == {
        "name": ["ReadOnlyAccess", "Admin"],
        "kind": ["user", "role"],
        "users": 3,
        "shared": 1,
        "gone": "nothing",  # nothing left of the list: the default
    }


def test_undo_is_rendered_from_the_params(tmp_path: Path) -> None:
    folder = write(
        tmp_path,
        "m.yaml",
        """
        provider: stripe
        hosts: [api.stripe.com]
        mappings:
          - action: create_charge
            path: /v1/charges/{id}/capture
            undo: {action: create_refund, description: refund the charge, params: {charge: "{id}"}}
        """,
    )
    action = load_mappings(folder).map(doc("POST", "api.stripe.com", "/v1/charges/ch_1/capture"))
    assert action.undo == {
        "action": "create_refund",
        "description": "refund the charge",
        "params": {"charge": "ch_1"},
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("  - {action: x, match: {body.Action: X}}\n", "must be a JSONPath starting with '$'"),
        ("  - {action: x, match: {$.body.a: {above: 1}}}\n", "unknown operator 'above'"),
        ("  - {action: x, undo: {params: {}}}\n", "missing required key 'action'"),
        ("  - {action: x, params: {a: {path: $.a, count: true, sum: true}}}\n", "choose one of"),
        ("  - {action: x, params: {a: {path: $.a, regex: '('}}}\n", "bad regex"),
        ("  - {action: x, params: {a: {path: $.a, decode: rot13}}}\n", "'decode' must be one of"),
    ],
)
def test_extended_language_errors(tmp_path: Path, text: str, message: str) -> None:
    folder = write(tmp_path, "bad.yaml", "provider: p\nhosts: [h]\nmappings:\n" + text)
    with pytest.raises(ConfigError) as error:
        load_mappings(folder)
    assert message in str(error.value)
    assert str(error.value).startswith(f"{folder / 'bad.yaml'}:4:")


def test_every_shipped_action_is_in_the_readme_vocabulary_with_one_category() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    categories: dict[str, set[str]] = {}
    for mapping in load_mappings(SHIPPED).mappings:
        categories.setdefault(mapping.action, set()).add(mapping.category)
        assert f"`{mapping.action}` | {mapping.category} |" in readme, mapping.action
        assert mapping.id in readme, mapping.id
    assert {action: c for action, c in categories.items() if len(c) > 1} == {}


def test_a_body_that_did_not_parse_is_visible_to_policies() -> None:
    document = doc("POST", "api.stripe.com", "/v1/charges")
    document["body"], document["body_format"] = "{amount: 5", "text"
    document["body_error"] = "body is not valid JSON: Expecting property name"
    action = load_mappings(SHIPPED).map(document)
    assert action.action == "create_charge"
    assert action.params["body_error"].startswith("body is not valid JSON")
    assert action.params["amount"] is None
    unknown = load_mappings(SHIPPED).map({**document, "host": "api.unknown.io"})
    assert "body_error" in unknown.params


def test_a_target_longer_than_airlock_judges_is_refused_and_recorded_short() -> None:
    """A target built from the request (an S3 object's key, up to 1,024 bytes, with its bucket)
    is judged up to MAX_TARGET characters; past it the request is refused, recorded under its
    action with the target cut where no part of a secret is left."""
    index = load_mappings(SHIPPED)
    key = "reports/" + "k" * 1_016  # S3's longest key
    assert index.map(doc("PUT", "acme.s3.amazonaws.com", f"/{key}")).target == f"s3://acme/{key}"
    with pytest.raises(MappingError) as refused:
        index.map(doc("PUT", "acme.s3.amazonaws.com", "/reports/" + "k" * 900_000))
    assert str(refused.value) == (
        f"the request's target would be 900018 characters; Airlock judges targets of at most "
        f"{MAX_TARGET}"
    )
    known = refused.value.action
    assert known is not None and known.action == "write_object"
    assert known.target == "s3://acme/reports/… [900018 characters]"
    evaluation = evaluate(doc("PUT", "acme.s3.amazonaws.com", "/x" + "k" * MAX_TARGET), BASELINE)
    assert evaluation.verdict.decision == "BLOCK"
    assert evaluation.failed_stage == "mapping"


def test_a_text_is_cut_where_no_part_of_a_secret_is_left() -> None:
    token = "sk_live_" + "a1B2c3D4e5F6g7H8"
    cut = shortened(f"mcp.github.create_{token}", 24)
    assert cut == "mcp.github.… [42 characters]"
    assert shortened("short", 24) == "short"


def test_hosts_longer_than_a_dns_name_are_mapped_as_before_and_not_cached() -> None:
    index = load_mappings(SHIPPED)
    host = "x" * 1_000 + ".example.com"  # longer than a DNS name, shorter than a target
    assert index.map(doc("POST", host, "/v1/charges")).action == "http.write"
    assert index.map(doc("X" * 10_000, "api.stripe.com", "/v1/charges")).action == "http.write"
    assert index.map(doc("POST", "api.stripe.com", "/v1/charges")).action == "create_charge"
    cached = [*index._mapped_hosts, *(h + m for h, m in index._by_host_method)]
    assert cached and max(len(key) for key in cached) <= MAX_CACHED_HOST + len("OPTIONS")


@pytest.mark.parametrize(("sent", "read"), [(4096, 4096), ("4096", 4096), (4096.0, 4096)])
def test_an_int_param_reads_whole_numbers(sent: object, read: int) -> None:
    config = Config.load(SHIPPED, PROJECT_ROOT / "policies")
    document = doc("POST", "api.anthropic.com", "/v1/messages",
                   {"model": "claude-x", "max_tokens": sent, "messages": []})  # fmt: skip
    document["body_format"] = "json"
    assert evaluate(document, config).action.params["max_tokens"] == read


def test_an_int_param_refuses_a_fraction_rather_than_cutting_it() -> None:
    """4096.9 was read as 4096: a rule would judge a value the request does not hold (found by
    review); the mapping refuses it, and the request is blocked saying so."""
    config = Config.load(SHIPPED, PROJECT_ROOT / "policies")
    document = doc("POST", "api.anthropic.com", "/v1/messages",
                   {"model": "claude-x", "max_tokens": 4096.9, "messages": []})  # fmt: skip
    document["body_format"] = "json"
    evaluation = evaluate(document, config)
    assert (evaluation.verdict.decision, evaluation.failed_stage) == ("BLOCK", "mapping")
    said = "'max_tokens' ($.body.max_tokens): expected int, got '4096.9'"
    assert said in evaluation.verdict.reason
