"""An edited request, decided again before it is released (pipeline/edits.py as_approved_edit)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from airlock.pipeline.edits import EDIT_RULE, as_approved_edit
from airlock.pipeline.evaluation import Evaluation
from airlock.pipeline.mappings import Action
from airlock.pipeline.policies import REQUIRE_APPROVAL, Verdict

EDIT = {"params": {"amount": 140000}, "locations": {"amount": ["body", "amount"]},
        "by": "rita", "approval_id": "a1b2c3d4e5", "run_id": "run-1"}  # fmt: skip
ONE_REVIEWER = (1, ())


def decided_again(amount: object, approvals: int = 1, roles: tuple[str, ...] = ()) -> Evaluation:
    """The edited request as the proxy's own mappings and policies read it."""
    action = Action("create_charge", "stripe", "payment", "high", "customer/", {"amount": amount},
                    "stripe-charge")  # fmt: skip
    verdict = Verdict(REQUIRE_APPROVAL, "large charge", ("stripe-charge-needs-approval",),
                      approvals=approvals, reviewer_roles=roles)  # fmt: skip
    return Evaluation(action, verdict)


@pytest.mark.parametrize("as_read", [140000, "140000", 140000.0])
def test_the_edit_as_approved_is_released(as_read: object) -> None:
    """A form body carries the edited amount as text: it is the same value."""
    released = as_approved_edit(decided_again(as_read), EDIT, "h", ONE_REVIEWER)
    assert released.verdict.decision == "ALLOW"
    assert released.verdict.reason.startswith("approved with an edit by rita (approval a1b2c3d4)")
    assert released.action.context["edit"] == {"amount": 140000}


def test_a_request_that_does_not_read_as_the_edit_is_refused() -> None:
    """The reviewer's mappings put the value where the proxy's do not read it: what would go
    out is not what was approved."""
    refused = as_approved_edit(decided_again("150000"), EDIT, "h", ONE_REVIEWER)
    assert refused.verdict.decision == "BLOCK" and EDIT_RULE in refused.verdict.rules
    assert "amount reads '150000', the edit set 140000" in refused.verdict.reason


@pytest.mark.parametrize(
    ("approvals", "roles", "given", "said"),
    [
        (2, (), (1, ()), "2 reviewers, where it had 1"),
        (1, ("finance",), (1, ()), "a reviewer in finance, where it had any reviewer"),
        (1, ("finance",), (1, ("finance", "ops")), "a reviewer in finance, where it had finance"),
    ],
)
def test_an_edit_into_a_stricter_approval_needs_its_own(
    approvals: int, roles: tuple[str, ...], given: tuple[int, tuple[str, ...]], said: str
) -> None:
    """A reviewer's edit cannot carry a request past what its approval asked: more reviewers,
    or reviewers of a role the one given did not need."""
    refused = as_approved_edit(decided_again(140000, approvals, roles), EDIT, "h", given)
    assert refused.verdict.decision == "BLOCK"
    assert refused.verdict.reason.startswith(
        f"the edited request needs an approval of its own: {said}"
    )


def test_an_edit_within_what_its_approval_asked_is_released() -> None:
    as_asked = decided_again(140000, 2, ("finance",))
    released = as_approved_edit(as_asked, EDIT, "h", (2, ("finance",)))
    assert released.verdict.decision == "ALLOW"
    assert as_approved_edit(as_asked, EDIT, "h", None).verdict.decision == "BLOCK"


def test_a_secret_param_that_does_not_read_as_edited_is_not_quoted() -> None:
    """The reason is stored and shown to reviewers: no value of a secret goes into it."""
    edit = {"params": {"api_key": "new-S3cret-value"}, "locations": {"api_key": ["body", "k"]}}
    evaluation = decided_again(140000)
    evaluation = Evaluation(
        Action("rotate", "x", "identity", "high", "t", {"api_key": "old-S3cret-value"}, "m"),
        evaluation.verdict,
    )
    refused = as_approved_edit(evaluation, edit, "h", ONE_REVIEWER)
    assert refused.verdict.decision == "BLOCK"
    assert (
        "S3cret" not in refused.verdict.reason and "api_key does not read" in refused.verdict.reason
    )


def test_an_edit_that_adds_a_rules_reviewers_needs_its_own_approval() -> None:
    """Approved by the payments leads; edited, the request also fires a rule for the CFO: the
    reviewers who met the first approval did not meet that one."""
    given = (1, (("payments-lead",),))
    stricter = decided_again(140000, 1, ("cfo", "payments-lead"))
    stricter = Evaluation(stricter.action, replace(
        stricter.verdict, reviewer_role_sets=(("payments-lead",), ("cfo",))
    ))  # fmt: skip
    refused = as_approved_edit(stricter, EDIT, "h", given)
    assert refused.verdict.decision == "BLOCK" and "a reviewer in cfo" in refused.verdict.reason
    same = Evaluation(stricter.action, replace(
        stricter.verdict, reviewer_role_sets=(("payments-lead",),)
    ))  # fmt: skip
    assert as_approved_edit(same, EDIT, "h", given).verdict.decision == "ALLOW"


def test_an_edit_is_written_as_the_vendor_reads_the_body_whatever_its_content_type() -> None:
    """EC2's query protocol reads a form whatever the Content-Type says: an edit planned on that
    request is written as a form, not refused for the declared type."""
    from pathlib import Path

    from airlock.pipeline.document import WireRequest, build_document
    from airlock.pipeline.edits import edited_body, plan_edit
    from airlock.pipeline.mappings import load_mappings

    mappings = load_mappings(Path(__file__).resolve().parents[1] / "mappings")
    body = b"Action=RunInstances&Version=2016-11-15&ImageId=ami-1&MinCount=1&MaxCount=50"
    headers = [("content-type", "text/plain"),
               ("authorization", "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/"
                                 "ec2/aws4_request, SignedHeaders=host, Signature=00")]  # fmt: skip
    request = WireRequest("POST", "https", "ec2.us-east-1.amazonaws.com", 443, "/", headers, body)
    document = build_document(request, "agent")
    assert document["body_format"] == "form"
    mapping = mappings.by_id["aws.ec2.run_instances"]
    planned = plan_edit(mapping, document, {"instance_count": "2"})
    assert planned["body_format"] == "form"
    edited = edited_body("text/plain", body, planned)
    assert b"MaxCount=2" in edited and b"ImageId=ami-1" in edited


def test_an_edit_that_would_store_a_secret_is_refused() -> None:
    """`--set description="rotate to sk-ant-api03-…"` was stored as typed in the approval and its
    audit event (found by review): an edit is stored, so one that is or reads as a secret is
    refused, saying why; a plain one is planned."""
    from pathlib import Path

    from airlock.pipeline.document import WireRequest, build_document
    from airlock.pipeline.edits import EditError, plan_edit
    from airlock.pipeline.mappings import load_mappings

    mapping = load_mappings(Path(__file__).resolve().parents[1] / "mappings").by_id[
        "stripe.create_charge"
    ]
    body = b"amount=150000&currency=usd&customer=cus_1&description=order"
    headers = [("content-type", "application/x-www-form-urlencoded")]
    request = WireRequest("POST", "https", "api.stripe.com", 443, "/v1/charges", headers, body)
    document = build_document(request, "agent")
    secret = "rotate to sk-ant-api03-" + "A1b2C3d4" * 10
    with pytest.raises(EditError, match="is, or reads as, a secret"):
        plan_edit(mapping, document, {"description": secret})
    planned = plan_edit(mapping, document, {"description": "order 7", "amount": "90000"})
    assert planned["params"] == {"description": "order 7", "amount": 90000}
