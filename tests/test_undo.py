"""Evidence and undo in the pipeline: the identifiers a response returns, read by the shipped
mappings' `outcome:`, and the compensating request their `undo:` renders from them."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from airlock.pipeline.mappings import load_mappings
from airlock.pipeline.outcome import outcome_ids
from airlock.pipeline.prior import prior_url, replaced_values
from airlock.pipeline.redaction import REDACTED
from airlock.pipeline.undo import CannotUndo, form_fields, plan_undo
from airlock.pipeline.yaml_source import ConfigError
from tests.helpers.proxy import PROJECT_ROOT

SHIPPED = load_mappings(PROJECT_ROOT / "mappings")
JSON = {"Content-Type": "application/json"}


def load_error(folder: Path, mapping: str) -> str:
    """The load error of one mapping (YAML, indented as a list item) in a pay.yaml, checked to
    name the file and line."""
    (folder / "pay.yaml").write_text(
        "provider: pay\nhosts: [api.pay.example]\nmappings:\n" + textwrap.dedent(mapping)
    )
    with pytest.raises(ConfigError) as raised:
        load_mappings(folder, catalog=None)
    assert str(raised.value).startswith(f"{folder / 'pay.yaml'}:")
    return str(raised.value)


def _run_instances(*ids: str) -> bytes:
    items = "".join(f"<item><instanceId>{i}</instanceId></item>" for i in ids)
    return (
        '<RunInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
        f"<reservationId>r-1</reservationId><instancesSet>{items}</instancesSet>"
        "</RunInstancesResponse>"
    ).encode()


def test_the_identifiers_each_answer_returns_are_read_by_the_shipped_mappings() -> None:
    by_id = SHIPPED.by_id
    charge = json.dumps({"id": "ch_1", "object": "charge", "amount": 2500}).encode()
    assert outcome_ids(by_id["stripe.create_charge"], 200, JSON, charge) == {"charge_id": "ch_1"}
    xml = {"Content-Type": "text/xml;charset=UTF-8"}
    ec2 = by_id["aws.ec2.run_instances"]
    assert outcome_ids(ec2, 200, xml, _run_instances("i-1", "i-2")) == {
        "instance_ids": ["i-1", "i-2"],
        "reservation_id": "r-1",
    }
    assert outcome_ids(ec2, 200, xml, _run_instances("i-9"))["instance_ids"] == ["i-9"]
    put = by_id["aws.s3.put_object"]
    versioned = {"ETag": '"abc"', "x-amz-version-id": "v3"}
    assert outcome_ids(put, 200, versioned, b"") == {"version_id": "v3", "etag": '"abc"'}
    slack = json.dumps({"ok": True, "channel": "C1", "ts": "1.2"}).encode()
    assert outcome_ids(by_id["slack.chat.post_message"], 200, JSON, slack) == {
        "posted_channel": "C1",
        "ts": "1.2",
    }
    failed = json.dumps({"error": {"message": "card declined"}}).encode()
    assert outcome_ids(by_id["stripe.create_charge"], 402, JSON, failed) is None


def test_the_compensating_request_is_rendered_from_params_and_identifiers() -> None:
    refund = plan_undo(
        SHIPPED.by_id["stripe.create_charge"].undo_spec, {"charge_id": "ch_1", "amount": 2500}
    )
    assert (refund.method, refund.url, refund.form) == (
        "POST",
        "https://api.stripe.com/v1/refunds",
        {"charge": "ch_1", "amount": 2500},
    )
    assert refund.auth == {"env": "STRIPE_API_KEY"}
    terminate = plan_undo(
        SHIPPED.by_id["aws.ec2.run_instances"].undo_spec,
        {"instance_ids": ["i-1", "i-2"], "region": "eu-west-1"},
    )
    assert terminate.aws == {
        "service": "ec2",
        "region": "eu-west-1",
        "operation": "TerminateInstances",
        "params": {"InstanceIds": ["i-1", "i-2"]},  # a whole {name} keeps its type
    }
    release = plan_undo(
        SHIPPED.by_id["github.create_release"].undo_spec,
        {"owner": "acme", "repo": "api", "release_id": 42},
    )
    assert (release.method, release.url) == (
        "DELETE",
        "https://api.github.com/repos/acme/api/releases/42",
    )
    with pytest.raises(CannotUndo, match=r"\{version_id\} is not on record"):
        plan_undo(SHIPPED.by_id["aws.s3.put_object"].undo_spec, {"bucket": "b", "key": "k"})
    with pytest.raises(CannotUndo, match="names no compensating request"):
        plan_undo(None, {})


def test_reviewers_are_shown_what_the_undo_sends() -> None:
    undo = SHIPPED.by_id["stripe.create_charge"].undo
    assert undo == {
        "action": "create_refund",
        "description": "refund the charge",
        "sends": "POST https://api.stripe.com/v1/refunds",
    }


@pytest.mark.parametrize(
    ("undo", "message"),
    [
        (
            "{action: create_refund, request: {method: POST, url: 'https://x/{charge_idd}'}}",
            "undo uses {charge_idd}, which is not a param, context value or outcome identifier",
        ),
        (
            "{action: a, request: {method: POST, url: u}, aws: {service: s, operation: o}}",
            "undo has either 'request' or 'aws', not both",
        ),
        ("{action: a, request: {method: POST, url: u, auth: {scheme: Bearer}}}", "env"),
    ],
)
def test_an_undo_naming_something_undefined_is_a_load_error(
    tmp_path: Path, undo: str, message: str
) -> None:
    said = load_error(
        tmp_path,
        f"""\
        - id: pay.charge
          action: create_charge
          method: POST
          path: /charges
          outcome:
            charge_id: $.response.body.id
          undo: {undo}
        """,
    )
    assert message in said


# --- setting back what an update replaced (`prior:`) -------------------------------------------

UPDATE = SHIPPED.by_id["stripe.update_customer"]


def test_only_the_fields_an_update_sets_are_kept_of_the_object_read_before_it() -> None:
    assert UPDATE.prior is not None
    changes = {"email": "new@x", "metadata": {"tier": "gold", "note": "vip"}, "expand": ["x"],
               "address": {"city": "Oslo"}}  # fmt: skip
    before = {"id": "cus_1", "email": "old@x", "name": "Ada", "metadata": {"tier": "silver"},
              "address": None}  # fmt: skip
    prior = replaced_values(UPDATE.prior, changes, before)
    assert prior.values == {
        "email": "old@x",
        "metadata": {"tier": "silver", "note": None},  # absent before: unset by the undo
        "address": {"city": None},
    }
    assert prior.unread == ()
    assert replaced_values(UPDATE.prior, {"coupon": "SPRING"}, before).unread == ("coupon",)
    assert prior_url(UPDATE.prior, {"id": "cus_1"}) == "https://api.stripe.com/v1/customers/cus_1"
    assert prior_url(UPDATE.prior, {}) is None


def test_the_undo_of_an_update_sends_back_what_it_replaced_in_bracket_notation() -> None:
    values = {"id": "cus_1", "prior": {"email": "old@x", "metadata": {"tier": "silver",
              "note": None}, "preferred_locales": ["en", "fr"], "tax_exempt": False}}  # fmt: skip
    plan = plan_undo(UPDATE.undo_spec, values)
    assert (plan.method, plan.url) == ("POST", "https://api.stripe.com/v1/customers/cus_1")
    assert form_fields(plan.form) == [
        ("email", "old@x"),
        ("metadata[tier]", "silver"),
        ("metadata[note]", ""),
        ("preferred_locales[0]", "en"),
        ("preferred_locales[1]", "fr"),
        ("tax_exempt", "false"),
    ]


@pytest.mark.parametrize(
    ("recorded", "said"),
    [
        ({"prior_error": "the read of u answered 404"}, "was not read: the read of u answered 404"),
        ({"prior": {"coupon": None}, "prior_unread": ["coupon"]}, "has no field 'coupon'"),
        ({"prior": {"description": REDACTED}}, "was a secret, redacted"),
        ({}, "{prior} is not on record"),
    ],
)
def test_an_update_whose_prior_values_are_not_whole_cannot_be_undone(
    recorded: dict[str, object], said: str
) -> None:
    with pytest.raises(CannotUndo) as refused:
        plan_undo(UPDATE.undo_spec, {"id": "cus_1", **recorded})
    assert said in str(refused.value)


@pytest.mark.parametrize(
    ("prior", "message"),
    [
        ("{url: 'https://api.pay.example/customers/{customer}'}", "prior url uses {customer}"),
        ("{url: '/customers/{id}'}", "must be an http(s) URL template"),
        ("{url: 'https://x/{id}', headers: authorization}", "must be a list of names"),
        ("{url: 'https://x/{id}', method: GET}", "unknown key 'method' in prior"),
    ],
)
def test_a_prior_read_naming_something_undefined_is_a_load_error(
    tmp_path: Path, prior: str, message: str
) -> None:
    said = load_error(
        tmp_path,
        f"""\
        - id: pay.update_customer
          action: update_record
          method: POST
          path: /customers/{{id}}
          prior: {prior}
        """,
    )
    assert message in said


def test_an_undo_body_that_is_text_but_not_one_name_is_a_load_error(tmp_path: Path) -> None:
    said = load_error(
        tmp_path,
        """\
        - id: pay.update_customer
          action: update_record
          method: POST
          path: /customers/{id}
          undo: {action: a, request: {method: POST, url: 'https://x/{id}', form: 'id={id}'}}
        """,
    )
    assert "undo 'form' must be a mapping of fields or one {name} whose value is them" in said


def test_how_a_run_is_undone_is_stored_without_its_secrets() -> None:
    """An undo's params come from the request's own: a secret among them is redacted in the
    record like the params themselves (that undo then cannot be replayed with it)."""
    from airlock.pipeline.evaluation import Evaluation
    from airlock.pipeline.mappings import Action
    from airlock.pipeline.policies import Verdict
    from airlock.pipeline.run_record import run_row

    undo = {"method": "DELETE", "path": "/v1/keys/k1", "params": {"api_key": "S3cret-Pa55word!"}}
    action = Action("create_key", "x", "identity", "high", "key/k1", {}, "m", undo=undo)
    document = {"method": "POST", "scheme": "https", "host": "api.x.example", "port": 443,
                "path": "/v1/keys", "query": {}, "headers": {}, "body": {}, "agent": "a",
                "body_size": 0}  # fmt: skip
    row = run_row("r1", "i", document, Evaluation(action, Verdict("ALLOW", "ok", ())), 1.0)
    assert row.undo is not None and row.undo["params"]["api_key"] == REDACTED
    assert "S3cret" not in json.dumps(row.as_row(), default=str)


def test_an_undo_link_holds_only_for_its_run_and_the_request_it_was_signed_for() -> None:
    """`airlock undo` signs X-Airlock-Undo-Of over the run and the request as sent: an agent
    cannot mark its own request as an undo, nor reuse a link on another request."""
    from airlock.pipeline.document import WireRequest, build_document
    from airlock.pipeline.evaluation import UNDO_OF
    from airlock.pipeline.redaction import REDACTED, redact_headers
    from airlock.pipeline.undo import linked_run, undo_link

    key, other = b"k" * 32, b"o" * 32
    body = b"charge=ch_1&amount=2500"
    link = undo_link(key, "0190aa", "POST", "api.stripe.com", "/v1/refunds", body)

    def document(
        host: str = "api.stripe.com",
        target: str = "/v1/refunds",
        sent: bytes = body,
        method: str = "POST",
    ) -> dict[str, object]:
        return build_document(WireRequest(method, "https", host, 443, target, [], sent), "a")

    assert linked_run(key, link, document()) == "0190aa"
    assert linked_run(key, link, document(host="API.Stripe.com.")) == "0190aa"
    assert linked_run(other, link, document()) is None  # another Airlock's key
    assert linked_run(None, link, document()) is None  # offline: nothing to check with
    assert linked_run(key, link, document(host="hooks.slack.com")) is None
    assert linked_run(key, link, document(target="/v1/refunds?amount=9")) is None
    assert linked_run(key, link, document(sent=b"charge=ch_2&amount=2500")) is None
    assert linked_run(key, link, document(method="DELETE")) is None
    assert linked_run(key, link.replace("0190aa", "0190ab"), document()) is None
    assert linked_run(key, "0190aa", document()) is None  # unsigned
    assert linked_run(key, "0190aa." + "é" * 32, document()) is None  # not hex: refused, no error
    assert redact_headers({UNDO_OF: link}) == {UNDO_OF: REDACTED}  # never stored for readers
