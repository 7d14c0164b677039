"""Approve with an edit: a reviewer changes a held request's params before it is released.

A param can be edited when its mapping reads it from one place in the body or the query string
(`$.body.amount`, `$.body.metadata.order_id`, `$.query.limit[0]`) of a JSON or form body, with
no transform but its type: Airlock then knows where to write the new value, encoded as the SDK
encoded the rest (JSON stays JSON, a form keeps its bracket notation). Anything else is refused
with why. The edited request is decided again before it is forwarded: a BLOCK refuses the
release; a REQUIRE_APPROVAL is the approval just given.
"""

from __future__ import annotations

import itertools
import json
import re
import urllib.parse
from dataclasses import replace
from typing import Any

from airlock.pipeline.document import Document, media_type
from airlock.pipeline.evaluation import Evaluation
from airlock.pipeline.extraction import ValueSpec
from airlock.pipeline.mappings import Mapping
from airlock.pipeline.policies import ALLOW, BLOCK, REQUIRE_APPROVAL, Verdict
from airlock.pipeline.redaction import is_secret_name, redact_value

_SIMPLE = re.compile(r"\$\.(body|query)((?:\.[A-Za-z_][A-Za-z0-9_]*|\[\d+\])+)\Z")
_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")
_TYPES = {"int": int, "float": float, "str": str}


class EditError(ValueError):
    """Why a param cannot be edited, or a value does not fit it (said as is)."""


def plan_edit(
    mapping: Mapping | None, request: Document, assignments: dict[str, str]
) -> dict[str, Any]:
    """{"params": {name: value}, "locations": {name: ["body", "amount"]}} for the proxy."""
    if mapping is None:
        raise EditError("no mapping in use describes this request, so no param can be edited")
    if request.get("method") == "GUARD":
        raise EditError("a Guard API tool call runs in the agent's process: edit the call there")
    specs = {spec.name: spec for spec in mapping.params}
    params, locations = {}, {}
    for name, text in assignments.items():
        spec = specs.get(name)
        if spec is None:
            known = ", ".join(sorted(specs)) or "none"
            raise EditError(f"{mapping.id} has no param {name!r} (its params: {known})")
        where = _location(spec, request)
        params[name], locations[name] = _typed(spec, text), where
        if is_secret_name(name) or redact_value(params[name]) != params[name]:
            # The edit is stored (the approval, its audit event) and shown to other reviewers.
            raise EditError(
                f"the value set for {name} is, or reads as, a secret: Airlock stores every edit "
                "and stores no secret; deny the request and let the agent send it so"
            )
    planned: dict[str, Any] = {"params": params, "locations": locations}
    if any(where[0] == "body" for where in locations.values()):
        # As the document read it (a vendor's reading: AWS's query protocol reads a form
        # whatever the Content-Type says), so the proxy writes the edit the same way.
        planned["body_format"] = request.get("body_format")
    return planned


def _location(spec: ValueSpec, request: Document) -> list[Any]:
    plain = (
        spec.finder is not None
        and spec.aggregate == "first"
        and not (spec.split or spec.regex or spec.lookup)
    )
    found = _SIMPLE.match(spec.expression or "") if plain else None
    if found is None:
        raise EditError(
            f"param {spec.name!r} is read as {spec.expression or 'a literal'!r} with transforms "
            "or from several places: only a param read from one body or query location can be "
            "edited"
        )
    steps = [name or int(index) for name, index in _STEP.findall(found.group(2))]
    if found.group(1) == "query":
        if len(steps) > 2 or (len(steps) == 2 and steps[1] != 0):
            raise EditError(f"param {spec.name!r} is not one query parameter")
        return ["query", steps[0]]
    if request.get("body_format") not in ("json", "form"):
        raise EditError(
            f"param {spec.name!r} is in a {request.get('body_format')} body: only JSON and "
            "form bodies are rewritten"
        )
    return ["body", *steps]


def _typed(spec: ValueSpec, text: str) -> Any:
    kind = _TYPES.get(spec.kind or "str")
    if spec.kind == "bool":
        if text.lower() not in ("true", "false"):
            raise EditError(f"{spec.name} must be true or false, not {text!r}")
        return text.lower() == "true"
    try:
        return kind(text) if kind else text
    except ValueError:
        raise EditError(f"{spec.name} must be {spec.kind}, not {text!r}") from None


# --- rewriting the request as the SDK encoded it -----------------------------------------------


def edited_body(content_type: str, body: bytes, edit: dict[str, Any]) -> bytes:
    """The body with each edited param written where its mapping reads it."""
    body_edits = {
        name: where[1:] for name, where in edit["locations"].items() if where[0] == "body"
    }
    if not body_edits:
        return body
    # As the request's document read it (planned by plan_edit); an edit planned before that was
    # recorded, by its media type.
    kind = edit.get("body_format") or media_type(content_type, body)
    if kind == "json":
        value = json.loads(body or b"{}")
        for name, steps in body_edits.items():
            _set(value, steps, edit["params"][name])
        return json.dumps(value).encode()
    if kind != "form":
        raise ValueError(f"a {kind or 'body'} Airlock reads no params from cannot be edited")
    pairs = urllib.parse.parse_qsl(body.decode(), keep_blank_values=True)
    for name, steps in body_edits.items():
        key = str(steps[0]) + "".join(f"[{step}]" for step in steps[1:])
        value = _form_value(edit["params"][name])
        if any(k == key for k, _ in pairs):
            pairs = [(k, value if k == key else v) for k, v in pairs]
        else:
            pairs.append((key, value))
    return urllib.parse.urlencode(pairs).encode()


def query_edits(edit: dict[str, Any]) -> dict[str, str]:
    return {
        where[1]: _form_value(edit["params"][name])
        for name, where in edit["locations"].items()
        if where[0] == "query"
    }


def _form_value(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _set(container: Any, steps: list[Any], value: Any) -> None:
    for step, following in itertools.pairwise(steps):
        if isinstance(container, dict):
            container = container.setdefault(step, [] if isinstance(following, int) else {})
        else:
            container = container[step]
    container[steps[-1]] = value


# --- deciding the edited request ------------------------------------------------------------


def as_approved_edit(
    evaluation: Evaluation,
    edit: dict[str, Any],
    released_hash: str,
    approved: tuple[int, tuple[str, ...]] | None,
) -> Evaluation:
    """The edited request as decided again: a REQUIRE_APPROVAL is the approval just given (the
    edit was made in it), unless it asks more than that approval had (`approved`: its reviewers
    required and roles; None: not found); BLOCK stays BLOCK. A request that does not read as the
    edit (the reviewer's mappings located a param where the proxy's do not read it) is refused.
    Its record keeps the edit, who made it, and the proposed and released request hashes."""
    verdict = evaluation.verdict
    differs = _not_as_edited(evaluation.action.params, edit.get("params") or {})
    if differs:
        reason = (f"the edited request does not read as the approved edit: {differs} (were the "
                  "reviewer's mappings the proxy's?)")  # fmt: skip
        verdict = Verdict(BLOCK, reason, (*verdict.rules, EDIT_RULE))
    elif verdict.decision == REQUIRE_APPROVAL:
        more = _asks_more(verdict, approved)
        by, approval = edit.get("by", "a reviewer"), str(edit.get("approval_id", ""))[:8]
        if more:
            reason = f"the edited request needs an approval of its own: {more}"
            verdict = Verdict(BLOCK, reason, (*verdict.rules, EDIT_RULE))
        else:
            reason = f"approved with an edit by {by} (approval {approval}): {verdict.reason}"
            verdict = Verdict(ALLOW, reason, verdict.rules)
    context = {
        **evaluation.action.context,
        "edit_of": edit.get("run_id"),
        "approval_id": edit.get("approval_id"),
        "edit": edit.get("params"),
        "edited_by": edit.get("by"),
        "proposed_hash": edit.get("proposed_hash"),
        "released_hash": released_hash,
    }
    return replace(evaluation, verdict=verdict, action=replace(evaluation.action, context=context))


EDIT_RULE = "approved-edit"  # the rule named when an edited request is refused for its edit


def _not_as_edited(params: dict[str, Any], edited: dict[str, Any]) -> str:
    """The first edited param the request does not carry as edited, said; "" when all do."""
    for name, value in edited.items():
        found = params.get(name)
        if not _same(found, value):
            if is_secret_name(name):  # the reason is stored and shown: no values of secrets
                return f"{name} does not read as the edit set it"
            return f"{name} reads {found!r}, the edit set {value!r}"
    return ""


def _same(found: Any, value: Any) -> bool:
    """A form body carries every value as text: 140000 and "140000" are the same."""
    if found == value or str(found) == str(value):
        return True
    try:
        return float(str(found)) == float(str(value))
    except ValueError:
        return False


def _asks_more(verdict: Verdict, approved: tuple[int, tuple[Any, ...]] | None) -> str:
    """What the edited request's approval asks beyond the one given, said; "" when nothing.
    Roles are sets, one per rule that asked for reviewers (a flat list: one set): each set the
    edited request asks for must hold one the approval asked for, so that the reviewers who
    met the approval also meet it."""
    if approved is None:
        return "the approval it was edited in is not in the store"
    required, roles = approved
    if verdict.approvals > required:
        return f"{verdict.approvals} reviewers, where it had {required}"
    wanted = [frozenset(s) for s in verdict.reviewer_role_sets] or _role_sets(
        verdict.reviewer_roles
    )
    had = _role_sets(roles)
    uncovered = [need for need in wanted if not any(given <= need for given in had)]
    if uncovered:
        said = "; ".join(", ".join(sorted(given)) for given in had) or "any reviewer"
        return f"a reviewer in {', '.join(sorted(uncovered[0]))}, where it had {said}"
    return ""


def _role_sets(roles: Any) -> list[frozenset[str]]:
    items = list(roles or ())
    if not items:
        return []
    if all(isinstance(role, str) for role in items):
        return [frozenset(items)]
    return [frozenset(role_set) for role_set in items if role_set]
