"""What the vendor's own API description marks as sensitive, kept out of everything stored.

The catalog names, per operation, where its request carries the members botocore marks
`"sensitive": true` (an SSM SecureString's `Value`, Secrets Manager's `SecretString`, RDS's
`MasterUserPassword`, Lambda's `Environment.Variables`, …): `body:` paths into the parsed JSON or
XML body, `form:` keys of a query or EC2 form (`Parameters.member.N.ParameterValue`), and the
headers, query keys and path labels of REST protocols (console/catalog_build.py writes them).
They are compiled here once, when the catalog loads, into one `SensitiveMembers` per operation.

Decisions see the real values (a policy may read them). What is stored, logged, exported, sent
to a webhook or shown goes through `SensitiveMembers.redact`: the request document with those
members replaced by "[REDACTED]", and the values taken out, so that any param, context, target
or text that carries one of them (a mapping param reading the member, a derived field) loses it
too (`scrub`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

REDACTED = "[REDACTED]"
# A secret found inside a longer text is replaced there from this length on; shorter ones only
# where a value is the secret whole (a 4-character password inside a sentence is likely a word).
MIN_INSIDE = 8
EACH_ITEM, EACH_VALUE = "[]", "{}"
UNPARSED = "[body not stored: it did not parse, and may carry members the vendor marks sensitive]"
PATH_NOT_STORED = "[path not stored: it carries a member the vendor marks sensitive]"
_STEP = re.compile(r"([^.\[\]{}]+)|(\[\])|(\{\})")


@dataclass(frozen=True, slots=True)
class SensitiveMembers:
    """One operation's sensitive request members, compiled for redaction."""

    body: tuple[tuple[str, ...], ...] = ()  # paths into the parsed body; () is the whole body
    query_keys: re.Pattern[str] | None = None  # form keys (query protocol: also in the URL)
    query: frozenset[str] = frozenset()
    any_query: bool = False  # a sensitive query-string map: every query value
    headers: frozenset[str] = frozenset()
    header_prefixes: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()  # path labels (uri:): the path is not stored as sent

    def redact(self, document: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """A copy of the document with these members "[REDACTED]", and the texts taken out.
        The document itself is left as it is: it is still decided on and bound to approvals."""
        taken: list[Any] = []
        changed: dict[str, Any] = {}
        body = document.get("body")
        if self.body:
            if isinstance(body, (dict, list)):
                for path in self.body:
                    body = _cut(body, path, 0, taken)
                changed["body"] = body
            elif body not in (None, ""):  # not parsed: where the members are is unknown
                taken.append(body)
                changed["body"] = UNPARSED
        query = document.get("query") or {}
        if query and (self.query or self.query_keys or self.any_query or self.headers
                      or self.header_prefixes):  # fmt: skip
            kept = {}
            for key, values in query.items():
                if (self.any_query or key in self.query or _matches(self.query_keys, key)
                        or self._header_named(key)):  # fmt: skip
                    taken.append(values)
                    kept[key] = [REDACTED for _ in values]
                else:
                    kept[key] = values
            changed["query"] = kept
        headers = document.get("headers") or {}
        if self.headers or self.header_prefixes:
            kept_headers = {}
            for name, value in headers.items():
                if name in self.headers or name.startswith(self.header_prefixes or ("\0",)):
                    taken.append(value)
                    value = REDACTED
                kept_headers[name] = value
            changed["headers"] = kept_headers
        if self.labels:  # which segment is the label is the operation's template: all go
            changed["path"] = PATH_NOT_STORED
            if "raw_path" in document:
                changed["raw_path"] = PATH_NOT_STORED
        if not changed:
            return document, []
        return {**document, **changed}, sorted(set(_texts(taken)), key=len, reverse=True)

    def _header_named(self, key: str) -> bool:
        """A sensitive header sent as a query field: a presigned AWS URL carries `x-amz-*`
        headers there (an SSE-C key), and the upstream reads them as the headers they name."""
        name = key.lower()
        return name in self.headers or (bool(self.header_prefixes)
                                        and name.startswith(self.header_prefixes))  # fmt: skip


# Operation name → its sensitive members, filled as catalogs load (pipeline/operations.py): the
# record of a decision names its operation, and run_row finds here what to keep out of it.
_BY_OPERATION: dict[str, SensitiveMembers] = {}


def remember(operation: str, members: SensitiveMembers) -> None:
    _BY_OPERATION[operation] = members


def members_of(operation: str | None) -> SensitiveMembers | None:
    """The sensitive members of an operation a loaded catalog knows (None: it marks none)."""
    return _BY_OPERATION.get(operation) if operation else None


def compile_members(places: Iterable[str]) -> SensitiveMembers | None:
    """The catalog's `sensitive` list of one operation; None when it names nothing."""
    body, forms, query, headers, prefixes, labels = [], [], set(), set(), [], []
    any_query = False
    for place in places:
        where, _, name = place.partition(":")
        if where == "body":
            body.append(body_path(name))
        elif where == "form":
            body.append(form_path(name))
            forms.append(re.escape(name).replace(r"\.N", r"\.\d+"))
        elif where == "query":
            query.add(name)
        elif where == "query-map":
            any_query = True
        elif where == "header":
            headers.add(name.lower())
        elif where == "header-prefix":
            prefixes.append(name.lower())
        elif where == "uri":
            labels.append(name)
        else:
            raise ValueError(f"unknown place of a sensitive member: {place!r}")
    if not (body or query or any_query or headers or prefixes or labels):
        return None
    return SensitiveMembers(
        body=tuple(body),
        query_keys=re.compile(rf"(?:{'|'.join(forms)})(?:\..*)?\Z") if forms else None,
        query=frozenset(query),
        any_query=any_query,
        headers=frozenset(headers),
        header_prefixes=tuple(prefixes),
        labels=tuple(labels),
    )


def body_path(text: str) -> tuple[str, ...]:
    """`containerDefinitions[].environment` → ("containerDefinitions", "[]", "environment")."""
    return tuple(found.group(0) for found in _STEP.finditer(text))


def form_path(key: str) -> tuple[str, ...]:
    """A form key as pipeline/document.py nests it: `member` left out, an index each item."""
    return tuple(EACH_ITEM if part == "N" else part for part in key.split(".") if part != "member")


def scrub(value: Any, secrets: list[str]) -> Any:
    """The value with every secret taken out: a text that is one whole becomes "[REDACTED]",
    one inside a longer text (MIN_INSIDE characters or more) is replaced there."""
    if not secrets:
        return value
    whole = frozenset(secrets)
    inside = tuple(s for s in secrets if len(s) >= MIN_INSIDE)
    return _scrub(value, whole, inside)


def _scrub(value: Any, whole: frozenset[str], inside: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        if value in whole:
            return REDACTED
        for secret in inside:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {key: _scrub(item, whole, inside) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub(item, whole, inside) for item in value]
    return value


def _cut(node: Any, path: tuple[str, ...], at: int, taken: list[Any]) -> Any:
    """The node with what `path` reaches from `at` replaced; copies only what it changes."""
    if at == len(path):
        if node is None:
            return None
        taken.append(node)
        return REDACTED
    step = path[at]
    if step == EACH_ITEM:
        if isinstance(node, list):
            return [_cut(item, path, at + 1, taken) for item in node]
        return _cut(node, path, at + 1, taken)  # one XML element, or one form item
    if step == EACH_VALUE:
        if isinstance(node, dict):
            return {key: _cut(item, path, at + 1, taken) for key, item in node.items()}
        if isinstance(node, list):
            return [_cut(item, path, at + 1, taken) for item in node]
        return node
    if isinstance(node, list):  # a member of each item (an XML element sent twice)
        return [_cut(item, path, at, taken) for item in node]
    if isinstance(node, dict) and step in node:
        return {**node, step: _cut(node[step], path, at + 1, taken)}
    return node


def _texts(values: Iterable[Any]) -> Iterable[str]:
    for value in values:
        if isinstance(value, str):
            if value and value != REDACTED:
                yield value
        elif isinstance(value, dict):  # its values: the names of a map are seldom secrets
            yield from _texts(value.values())
        elif isinstance(value, (list, tuple)):
            yield from _texts(value)


def _matches(pattern: re.Pattern[str] | None, key: str) -> bool:
    return pattern is not None and pattern.match(key) is not None
