"""Stage 2: map a request document to a canonical action, through the YAML files in mappings/.

Everything is compiled once at load: host globs and path templates to regexes, JSONPath
expressions to parsers (shared between mappings that use the same expression). Lookup goes by
exact host, then method; glob hosts are resolved once per host name and cached.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from airlock.pipeline.conditions import MISSING, Test, compile_condition
from airlock.pipeline.document import Document
from airlock.pipeline.extraction import (
    ExtractionError,
    Finder,
    ValueSpec,
    jsonpath_at,
    load_value_specs,
)
from airlock.pipeline.hosts import host_glob_regex
from airlock.pipeline.mcp import (
    TOOLS_CALL,
    McpError,
    ambiguous_key,
    extra_members,
    is_batch,
    is_read,
    is_session_request,
    jsonrpc_messages,
    mcp_message,
    tool_call,
)
from airlock.pipeline.operations import (
    DEFAULT_CATALOG,
    MAX_CACHED_HOST,
    Operation,
    OperationIndex,
    load_catalog,
)
from airlock.pipeline.prior import PriorSpec, load_prior_spec
from airlock.pipeline.redaction import is_secret_name, redact_path
from airlock.pipeline.undo import UndoSpec, load_undo_spec
from airlock.pipeline.yaml_source import (
    ConfigError,
    Node,
    Seq,
    Where,
    expect_keys,
    expect_type,
    load_yaml,
    optional_node,
    yaml_files,
)

CATEGORIES = frozenset(
    {
        "payment",
        "messaging",
        "compute",
        "storage",
        "identity",
        "data",
        "code",
        "inference",
        "network",
        "read",
        "write",
        "tool",  # a tool call through the Guard API that no mapping describes
    }
)
SENSITIVITIES = ("low", "medium", "high", "critical")
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
HTTP_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"})
# Names an agent chooses (an MCP tool's; a Guard API call's action, provider, tool, server) and
# what names and arguments build (`mcp.<server>.<tool>`, a target rendered from a path or the
# body) are judged up to these lengths and refused past them: every later stage works in
# proportion to them, in the decider every agent shares (redacting a 900 KB tool name took
# 417 ms, ~0.5 µs a character). MCP asks tool names of 1 to 128 characters (specification
# 2025-11-25); a target holds an S3 object's key, up to 1,024 bytes, with its bucket.
MAX_NAME = 256
MAX_TARGET = 2_048  # an action's target, or its action when names built it

_FILE_KEYS = {"provider", "hosts", "mappings", "description", "context", "servers"}
_MAPPING_KEYS = {
    "id",
    "action",
    "method",
    "path",
    "hosts",
    "category",
    "sensitivity",
    "target",
    "params",
    "description",
    "match",
    "context",
    "undo",
    "prior",
    "operation",
    "server",
    "tool",
    "outcome",
}
_UNDO_KEYS = {"action", "description", "params", "request", "aws"}
_TEMPLATE_FIELD_NAMES = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\+?\}")
MCP_CONTEXT = {"protocol": "mcp"}  # answers and outcomes are JSON-RPC (addons/refusals.py)
_TEMPLATE_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(\+?)\}")


class MappingError(Exception):
    """A mapping could not be applied to a request: the request is blocked, never let through.

    `action` is what is known of the request despite the failure (the matched mapping's action,
    with the params read so far), so the block is recorded and counted under the right name.
    """

    def __init__(self, message: str, action: Action | None = None) -> None:
        super().__init__(message)
        self.action = action


@dataclass(frozen=True)
class Action:
    """What a request means, in the canonical vocabulary that policies are written against."""

    action: str
    provider: str
    category: str
    sensitivity: str
    target: str
    params: dict[str, Any]
    mapping_id: str | None  # None: no mapping matched (http.read / http.write fallback)
    # Derived facts about the request, e.g. {"environment": "production", "region": ...}.
    context: dict[str, Any] = field(default_factory=dict)
    # How the provider lets this be undone, when it does: shown to reviewers, used by recovery.
    undo: dict[str, Any] | None = None
    # The vendor's own name for the operation (`aws.s3.PutBucketLifecycleConfiguration`), when
    # the catalog identified it.
    operation: str | None = None


# --- compiled pieces -------------------------------------------------------------------------


def _path_regex(template: str) -> re.Pattern[str]:
    """`/v1/customers/{id}` captures one segment; `{key+}` captures the rest, slashes included."""
    pattern, last = [], 0
    for match in _TEMPLATE_FIELD.finditer(template):
        pattern.append(re.escape(template[last : match.start()]))
        name, greedy = match.group(1), match.group(2)
        pattern.append(f"(?P<{name}>.+)" if greedy else f"(?P<{name}>[^/]+)")
        last = match.end()
    pattern.append(re.escape(template[last:]))
    return re.compile("".join(pattern) + r"/?\Z")


@dataclass(frozen=True)
class Condition:
    """`match:` entry: the first value at a JSONPath must satisfy a condition."""

    expression: str
    finder: Finder
    test: Test

    def holds(self, document: Document) -> bool:
        values = self.finder.find_values(document)
        return self.test(values[0] if values else MISSING)


@dataclass(frozen=True)
class Mapping:
    id: str
    provider: str
    action: str
    category: str
    sensitivity: str
    methods: frozenset[str]  # empty: any method
    host_globs: tuple[str, ...]
    path: re.Pattern[str] | None
    path_template: str | None
    match: tuple[Condition, ...]
    target: str | None
    params: tuple[ValueSpec, ...]
    context: tuple[ValueSpec, ...]  # the file's context specs, then the mapping's own
    undo: dict[str, Any] | None
    where: Where
    order: int = field(compare=False)
    operations: tuple[str, ...] = ()  # `operation:` names: matched by identity, not by URL
    # MCP `tools/call` mappings (`server:` alias or "*", `tool:` name or glob): matched by the
    # call's server and tool, whatever the URL.
    server: str | None = None
    tool: re.Pattern[str] | None = None
    tool_globs: tuple[str, ...] = ()
    # What the upstream's answer says was done (`$.response.body.id`): the run's evidence.
    outcome: tuple[ValueSpec, ...] = ()
    undo_spec: UndoSpec | None = None  # the compensating request `airlock undo` sends
    prior: PriorSpec | None = None  # the read that shows what the write replaces

    def outcome_of(self, response: Document) -> dict[str, Any]:
        """The identifiers a response returned, by the `outcome:` specs (absent ones left out;
        one that does not read as its type is left out too: the response is what it is)."""
        found = {}
        for spec in self.outcome:
            try:
                value = spec.extract(response)
            except ExtractionError:
                continue
            if value is not None and value != []:
                found[spec.name] = value
        return found

    def calls(self, server: str, tool: str) -> bool:
        """This MCP mapping covers the tool of that server."""
        return (
            self.tool is not None
            and self.server in ("*", server)
            and self.tool.match(tool) is not None
        )

    def mismatch(self, document: Document) -> str | None:
        """Why this mapping does not match the request (None when it does): for `explain`."""
        if self.methods and document["method"] not in self.methods:
            return f"method {document['method']} is not {', '.join(sorted(self.methods))}"
        if self.path is not None and self.path.match(document["path"]) is None:
            return f"path {document['path']} does not fit {self.path_template}"
        for condition in self.match:
            values = condition.finder.find_values(document)
            if not condition.test(values[0] if values else MISSING):
                found = repr(values[0]) if values else "nothing"
                return f"match {condition.expression} failed (found {found})"
        return None

    def captures(self, document: Document) -> dict[str, str] | None:
        """Path captures when this mapping matches the request, else None."""
        if self.path is None:
            captures: dict[str, str] = {}
        else:
            found = self.path.match(document["path"])
            if found is None:
                return None
            captures = found.groupdict()
        if all(condition.holds(document) for condition in self.match):
            return captures
        return None

    def apply(
        self,
        document: Document,
        captures: dict[str, str],
        operation: Operation | None = None,
        names: dict[str, str] | None = None,
        arguments: dict[str, Any] | None = None,
    ) -> Action:
        """`names`: what an MCP call's action and target templates may use ({server}, {tool});
        `arguments`: its params when the mapping names none."""
        params: dict[str, Any] = dict(captures)
        if arguments is not None and not self.params:
            params.update(arguments)
        context: dict[str, Any] = {}
        if operation is not None:  # `$.fields.Bucket`: the operation's request fields
            document = {**document, "fields": operation.fields}
        try:
            for spec in self.context:
                value = spec.extract(document)
                if value is not None:
                    context[spec.name] = value
            for spec in self.params:
                params[spec.name] = spec.extract(document)
            params.update(body_notes(document))  # policies can refuse what was not read
        except ExtractionError as e:
            known = Action(
                self.action, self.provider, self.category, self.sensitivity,
                document["host"], params, self.id, context,
                operation=operation.name if operation else None,
            )  # fmt: skip
            raise MappingError(f"mapping {self.id} ({self.where}): {e}", known) from e
        return Action(
            action=render_template(self.action, names) if names else self.action,
            provider=self.provider,
            category=self.category,
            sensitivity=self.sensitivity,
            target=self._render_target(document, {**context, **params, **(names or {})}),
            params=params,
            mapping_id=self.id,
            context=context,
            undo=self._render_undo(params),
            operation=operation.name if operation else None,
        )

    def _render_target(self, document: Document, values: dict[str, Any]) -> str:
        if not self.target:
            return document["host"]
        return render_template(self.target, {**document.get("fields", {}), **values})

    def _render_undo(self, params: dict[str, Any]) -> dict[str, Any] | None:
        if self.undo is None:
            return None
        rendered = dict(self.undo)
        if "params" in rendered:
            rendered["params"] = {
                k: render_template(v, params) if isinstance(v, str) else v
                for k, v in rendered["params"].items()
            }
        return rendered


def render_template(template: str, values: dict[str, Any]) -> str:
    """`customer/{id}`: each {name} from the values; a missing one renders empty."""

    def value(match: re.Match[str]) -> str:
        found = values.get(match.group(1))
        return "" if found is None else str(found)

    return _TEMPLATE_FIELD.sub(value, template)


# --- the index -------------------------------------------------------------------------------


class MappingIndex:
    """Mappings indexed by host then method; first match in file order wins.

    With a catalog, a request is first identified as the vendor's operation: mappings that name
    that operation (`operation:`) come first, then URL mappings, then the meaning the catalog
    derives for the operation; only a request nothing knows falls back to http.read/http.write.
    """

    def __init__(
        self,
        mappings: Iterable[Mapping],
        operations: OperationIndex | None = None,
        servers: dict[str, str] | None = None,
    ) -> None:
        self.mappings: list[Mapping] = sorted(mappings, key=lambda m: m.order)
        self.operations = operations
        self.servers = McpServers(servers or {})
        self._tool_mappings = [m for m in self.mappings if m.tool is not None]
        self._exact: dict[str, list[Mapping]] = {}
        self._globs: list[tuple[re.Pattern[str], Mapping]] = []
        self._by_operation: dict[str, list[Mapping]] = {}
        for mapping in self.mappings:
            for name in mapping.operations:
                self._by_operation.setdefault(name, []).append(mapping)
            for glob in () if mapping.operations or mapping.tool else mapping.host_globs:
                if "*" in glob:
                    self._globs.append((host_glob_regex(glob), mapping))
                else:
                    self._exact.setdefault(glob.lower(), []).append(mapping)
        self._by_host_method: dict[tuple[str, str], list[Mapping]] = {}
        self._mapped_hosts: dict[str, bool] = {}
        self._first_of_action: dict[str, Mapping] = {}
        for mapping in self.mappings:
            self._first_of_action.setdefault(mapping.action, mapping)
        self.by_id = {mapping.id: mapping for mapping in self.mappings}

    def describing(self, action: str) -> Mapping | None:
        """The first mapping that produces this action (its category, sensitivity, provider)."""
        return self._first_of_action.get(action)

    def __len__(self) -> int:
        return len(self.mappings)

    def candidates(self, host: str, method: str) -> list[Mapping]:
        if len(host) > MAX_CACHED_HOST or method not in HTTP_METHODS:  # keys of bounded size
            return self._collect(host, method)
        key = (host, method)
        found = self._by_host_method.get(key)
        if found is None:
            found = self._collect(host, method)
            if len(self._by_host_method) > 65_536:  # hosts are few; bound it anyway
                self._by_host_method.clear()
            self._by_host_method[key] = found
        return found

    def on_host(self, host: str) -> list[Mapping]:
        """Every URL mapping for this host, whatever the method, in the order they are tried."""
        found = list(self._exact.get(host, ()))
        found += [mapping for regex, mapping in self._globs if regex.match(host)]
        return sorted({m.order: m for m in found}.values(), key=lambda m: m.order)

    def for_operation(self, name: str) -> list[Mapping]:
        """The mappings that name this operation, in the order they are tried."""
        return self._by_operation.get(name, [])

    def _collect(self, host: str, method: str) -> list[Mapping]:
        return [m for m in self.on_host(host) if not m.methods or method in m.methods]

    def identify(self, document: Document) -> Operation | None:
        return self.operations.identify(document) if self.operations is not None else None

    def match(
        self, document: Document, operation: Operation | None = None
    ) -> tuple[Mapping, dict[str, str]] | None:
        """The first mapping that matches, with its path captures."""
        if operation is not None:
            for mapping in self.for_operation(operation.name):
                if all(condition.holds(document) for condition in mapping.match):
                    return mapping, {}
        for mapping in self.candidates(document["host"], document["method"]):
            captures = mapping.captures(document)
            if captures is not None:
                return mapping, captures
        return None

    def map(self, document: Document) -> Action:
        """What the request means (MappingError: what it could not be judged as, and why)."""
        action = self._map(document)
        problem = overlong(action)
        if problem is not None:
            raise MappingError(problem, within_limits(action))
        return action

    def _map(self, document: Document) -> Action:
        if self.judged_as_mcp(document):
            messages = jsonrpc_messages(document)
            if messages is None:  # the session's GET stream or DELETE, at a declared endpoint
                server = self.servers.name_of(document["host"])
                method = f"({document['method']} session)"
                return mcp_method_action(server, method, True, document)
            if not is_batch(document):  # a batch: element by element (pipeline/evaluation.py)
                return self.map_mcp(document, messages[0])
        operation = self.identify(document)
        return self._vendor_action(document, operation, self.match(document, operation))

    def _vendor_action(
        self,
        document: Document,
        operation: Operation | None,
        found: tuple[Mapping, dict[str, str]] | None,
    ) -> Action:
        if found is not None:
            mapping, captures = found
            return mapping.apply(document, captures, operation)
        if operation is not None:
            return derived_action(document, operation)
        return fallback_action(document)

    def mcp_messages(self, document: Document) -> list[dict[str, Any]] | None:
        """The JSON-RPC messages of a request judged as MCP, else None (MappingError: one that
        cannot be judged as either, see judged_as_mcp)."""
        messages = jsonrpc_messages(document)
        return messages if messages is not None and self.judged_as_mcp(document) else None

    def judged_as_mcp(self, document: Document) -> bool:
        """Whether a request shaped like MCP (a JSON-RPC body, an `Mcp-Session-Id` GET or
        DELETE) is judged as MCP. The shape is the client's to choose and never overrides what
        the vendor's API makes of the request:

        - a host nothing describes (no mapping, no catalog service, no `servers:` entry): a
          body with a tool call (or a method MCP does not define) is MCP, whatever the host, as
          MCP servers live anywhere; the protocol's own messages (reads, notifications, answers,
          the session's GET and DELETE) are MCP only at a declared server's endpoint (see
          mcp_here): elsewhere they are the plain HTTP request they are, as a server that is not
          MCP may act on its path and ignore the body;
        - a vendor's host (mappings or catalog), not declared: never MCP. What the URL, method
          and catalog identify is judged; a JSON-RPC body that no vendor operation fits cannot
          be judged as either and raises MappingError (an `Mcp-Session-Id` header alone is
          judged as the plain HTTP request it is);
        - a host declared under `servers:` (an MCP server on a vendor's domain too): MCP, unless
          the vendor's API identifies the request, then the vendor operation (a JSON-RPC body
          there is ambiguous and raises MappingError).
        """
        shaped = jsonrpc_messages(document) is not None
        host = document["host"]
        # A JSON-RPC request with members JSON-RPC does not define: a server may run the call
        # all the same. Refused on a declared MCP server or an undescribed host; on a vendor's
        # host the vendor's operation is judged (a Lambda payload may look like anything).
        extra = [] if shaped else extra_members(document)
        if extra and (self.servers.declares(host) or not self.is_vendor_host(document)):
            names = ", ".join(repr(k[:40]) for k in extra[:5])
            raise MappingError(
                f"the body is a JSON-RPC 2.0 request with a method, but it also carries "
                f"{names}, which JSON-RPC does not define: an MCP server may run the call "
                "it names all the same, so it is judged neither as that call nor as a plain "
                "HTTP request",
                fallback_action(document),
            )
        if not shaped and not is_session_request(document):
            return False
        declared = self.servers.declares(host)
        if not declared and not self.is_vendor_host(document):
            return self.mcp_here(document)
        operation = self.identify(document)
        found = self.match(document, operation)
        if found is None and operation is None:
            if declared:
                return self.mcp_here(document)
            if not shaped:
                return False
            raise MappingError(
                f"the body is shaped like MCP (JSON-RPC 2.0), but {host} is a vendor API that "
                f"mappings or the catalog describe, not a declared MCP server, and no operation "
                f"of it fits {document['method']} {document['path']}: it can be judged as "
                "neither. If this host serves MCP, name it under 'servers:' in a mapping file "
                "(mappings/mcp.yaml)",
                fallback_action(document),
            )
        if not (declared and shaped):
            return False
        try:
            known = self._vendor_action(document, operation, found)
        except MappingError as e:
            known = e.action or fallback_action(document)
        raise MappingError(
            f"{host} is declared as the MCP server {self.servers.name_of(host)!r}, but "
            f"{document['method']} {document['path']} is also the vendor operation "
            f"{known.operation or known.action}, and the body is shaped like MCP: which one the "
            "upstream runs is ambiguous",
            known,
        )

    def mcp_here(self, document: Document) -> bool:
        """At a declared server's endpoint every MCP message is MCP; elsewhere only a body that
        acts (a tool call, a method MCP does not define): judged as MCP it is a tool call,
        where its reads would pass a write to any path (`DELETE /customers/cus_42` with an
        `Mcp-Session-Id`, a POST whose body is a notification, a ping or an answer)."""
        if self.servers.serves(document["host"], document["path"]):
            return True
        messages = jsonrpc_messages(document)
        return messages is not None and not all(is_read(m) for m in messages)

    def is_vendor_host(self, document: Document) -> bool:
        """A host that URL mappings or the catalog describe (an interface VPC endpoint by the
        request's SigV4 scope, no other host): its API, not the shape of a body, says what a
        request does."""
        host = document["host"]
        mapped = self._mapped_hosts.get(host)
        if mapped is None:
            mapped = bool(self.on_host(host))
            if len(self._mapped_hosts) > 65_536:  # hosts are few; bound it anyway
                self._mapped_hosts.clear()
            if len(host) <= MAX_CACHED_HOST:
                self._mapped_hosts[host] = mapped
        return mapped or (
            self.operations is not None and self.operations.service_of(document) is not None
        )

    def map_mcp(self, document: Document, message: dict[str, Any]) -> Action:
        """One MCP message: a tool call by the first `tool:` mapping that covers it, else as
        `mcp.<server>.<tool>`; the protocol's own methods as reads."""
        server = self.servers.name_of(document["host"])
        method = message.get("method")
        ambiguous = ambiguous_key(message)
        if ambiguous is not None:
            known = mcp_method_action(server, method, False)
            raise MappingError(
                f"{ambiguous}: the server may run another call than the one judged "
                "(Go's encoding/json, as mark3labs/mcp-go decodes, takes the last such key)",
                known,
            )
        if method != TOOLS_CALL:
            return mcp_method_action(server, method, is_read(message), document)
        try:
            tool, arguments = tool_call(message)
        except McpError as e:
            known = mcp_method_action(server, method, False)
            raise MappingError(str(e), known) from e
        if len(tool) > MAX_NAME:
            raise MappingError(
                f"tools/call: the tool name (params.name) is {len(tool)} characters; Airlock "
                f"judges tool names of at most {MAX_NAME}",
                mcp_method_action(server, method, False),
            )
        return self.map_tool(document, server, tool, arguments)

    def map_tool(
        self, document: Document, server: str, tool: str, arguments: dict[str, Any]
    ) -> Action:
        """A server's tool by the first `tool:` mapping that covers it, else
        `mcp.<server>.<tool>` with its arguments as params."""
        names = {"server": server, "tool": tool}
        for mapping in self._tool_mappings:
            if mapping.calls(server, tool) and all(c.holds(document) for c in mapping.match):
                action = mapping.apply(document, {}, names=names, arguments=arguments)
                return replace(action, context={**action.context, **MCP_CONTEXT})
        return Action(
            action=f"mcp.{server}.{tool}",
            provider="mcp",
            category="tool",
            sensitivity="medium",
            target=f"mcp/{server}/{tool}",
            params={**arguments, **body_notes(document)},
            mapping_id=None,
            context=dict(MCP_CONTEXT),
        )


class McpServers:
    """The names MCP servers take in actions (`servers:` in a mapping file: name → endpoints,
    each a host, or a host and the path the server answers on: `api.githubcopilot.com/mcp`);
    a server without one is named by its host."""

    def __init__(self, hosts_by_name: dict[str, tuple[str, ...]]) -> None:
        self.names = frozenset(hosts_by_name)
        self._exact: dict[str, str] = {}
        self._globs: list[tuple[re.Pattern[str], str, str]] = []  # regex, name, glob
        self._paths: dict[str, set[str | None]] = {}  # by host or glob; None: every path
        for name, endpoints in hosts_by_name.items():
            for endpoint in endpoints:
                host, slash, path = endpoint.partition("/")
                self._paths.setdefault(host, set()).add(slash + path if slash else None)
                if "*" in host:
                    self._globs.append((host_glob_regex(host), name, host))
                else:
                    self._exact[host] = name

    def name_of(self, host: str) -> str:
        return self.declared_name(host) or host

    def declares(self, host: str) -> bool:
        return self.declared_name(host) is not None

    def declared_name(self, host: str) -> str | None:
        found = self._exact.get(host)
        if found is None:
            found = next((name for regex, name, _ in self._globs if regex.match(host)), None)
        return found

    def serves(self, host: str, path: str) -> bool:
        """The request goes to a declared server's endpoint: its host, and its path or below."""
        paths = set(self._paths.get(host, ()))
        for regex, _, glob in self._globs:
            if regex.match(host):
                paths |= self._paths[glob]
        bases = {p.rstrip("/") for p in paths if p is not None}  # `/mcp/` serves `/mcp` too
        return None in paths or any(path == b or path.startswith(b + "/") for b in bases)


def overlong(action: Action) -> str | None:
    """Why an action is past the lengths Airlock judges (MAX_NAME, MAX_TARGET), or None."""
    for field_name, value, limit in (
        ("provider", action.provider, MAX_NAME),
        ("action", action.action, MAX_TARGET),
        ("target", action.target, MAX_TARGET),
    ):
        if len(value) > limit:
            return (
                f"the request's {field_name} would be {len(value)} characters; Airlock judges "
                f"{field_name}s of at most {limit}"
            )
    return None


def within_limits(action: Action) -> Action:
    """The action with its names shortened to the limits, as a refusal records it."""
    return replace(
        action,
        provider=shortened(action.provider, MAX_NAME),
        action=shortened(action.action, MAX_TARGET),
        target=shortened(action.target, MAX_TARGET),
    )


# What a token's characters may be (sk_live_…, ghp_…, AKIA…, xoxb-…): a text is never cut inside
# a run of them, so no part of one is left that redaction would no longer recognise. Path and
# name separators (/ .) end a run: a cut target keeps its `s3://bucket/`.
_SECRET_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+=~%"


def shortened(text: str, limit: int) -> str:
    """A text over limit characters as its start and its length (`mcp.github.… [900011
    characters]`), cut before the run of letters and digits the limit falls in."""
    if len(text) <= limit:
        return text
    return f"{text[:limit].rstrip(_SECRET_CHARS)}… [{len(text)} characters]"


def mcp_method_action(
    server: str, method: Any, read: bool, document: Document | None = None
) -> Action:
    """An MCP message that is not a tool call: the protocol's own methods read; one MCP does not
    define is a tool call whose meaning nobody described. With the request: its path (and what
    could not be read of its body), as a plain request's action has them."""
    where = {} if document is None else fallback_action(document).params
    return Action(
        action="mcp.read" if read else "mcp.unknown_method",
        provider="mcp",
        category="read" if read else "tool",
        sensitivity="low" if read else "medium",
        target=f"mcp/{server}",
        params={
            "method": method if isinstance(method, str) else None,
            **{k: v for k, v in where.items() if k not in ("method", "mcp_message")},
        },
        mapping_id=None,
        context=dict(MCP_CONTEXT),
    )


_WORD = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def derived_action(document: Document, operation: Operation) -> Action:
    """An operation no mapping curates: its action is the operation's name in snake case
    (`PutBucketLifecycleConfiguration` → `put_bucket_lifecycle_configuration`), its params the
    request fields the catalog names (path labels, required members), as the vendor spells them.
    """
    fields = operation.fields
    # Never a field that holds a secret (IAM ChangePassword's first is OldPassword)
    first = next((v for k, v in fields.items() if not is_secret_name(k)), None)
    return Action(
        action=snake_case(operation.short_name),
        provider=operation.provider,
        category=operation.category,
        sensitivity=operation.sensitivity,
        target=f"{operation.service}/{first}" if first is not None else document["host"],
        params={**fields, **body_notes(document)},
        mapping_id=None,
        operation=operation.name,
    )


def snake_case(name: str) -> str:
    """`PutBucketTagging` → `put_bucket_tagging`; `repos/delete-branch-protection` →
    `repos_delete_branch_protection`."""
    return re.sub(r"[^A-Za-z0-9]+", "_", _WORD.sub("_", name)).lower()


def fallback_action(document: Document) -> Action:
    """A request no mapping knows still gets an action, so policy always has something to judge."""
    is_read = document["method"] in READ_METHODS
    return Action(
        action="http.read" if is_read else "http.write",
        provider="http",
        category="read" if is_read else "write",
        sensitivity="low" if is_read else "medium",
        target=document["host"],
        params={
            "method": document["method"],
            # With its host in view: a webhook's path is its credential (hooks.slack.com/
            # services/T…/B…/<secret>), and params are stored and printed as they are.
            "path": redact_path(document["host"], document["path"]),
            # What the reviewer approves must include it: `?amount=9900000` changes the call.
            **({"query": document["query"]} if document["query"] else {}),
            **body_notes(document),
            **_looks_like_mcp(document),
        },
        mapping_id=None,
    )


def _looks_like_mcp(document: Document) -> dict[str, Any]:
    """An MCP message to an endpoint no `servers:` entry declares is judged as the plain
    request; `mcp_message` says what it would be as MCP, so that a rule (the baseline's) can
    say to declare the server."""
    found = mcp_message(document)
    return {"mcp_message": found} if found else {}


def body_notes(document: Document) -> dict[str, Any]:
    """What Airlock could not read of the body: a body that did not parse (body_error), one too
    large to parse whose params are missing (body_truncated)."""
    return {key: document[key] for key in ("body_error", "body_truncated") if key in document}


# --- loading ---------------------------------------------------------------------------------


def load_mappings(directory: Path, catalog: Path | None = DEFAULT_CATALOG) -> MappingIndex:
    """The mapping files in `directory`, over the generated operation catalog (None: without)."""
    operations = load_catalog(catalog) if catalog is not None else None
    mappings: list[Mapping] = []
    servers: dict[str, tuple[str, ...]] = {}
    for path in yaml_files(directory):
        mappings.extend(
            load_mapping_file(path, len(mappings), operations=operations, servers=servers)
        )
    for problem in unknown_servers(mappings, servers):
        raise problem
    seen: dict[str, Mapping] = {}
    for mapping in mappings:
        if mapping.id in seen:
            raise ConfigError(
                mapping.where,
                f"duplicate mapping id {mapping.id!r} (first at {seen[mapping.id].where})",
            )
        seen[mapping.id] = mapping
    return MappingIndex(mappings, operations, servers)


def unknown_servers(
    mappings: Iterable[Mapping], servers: dict[str, tuple[str, ...]]
) -> list[ConfigError]:
    """MCP mappings naming a server no `servers:` entry names: they would never match."""
    return [
        ConfigError(
            m.where,
            f"mapping {m.id!r} names MCP server {m.server!r}, which no 'servers:' entry "
            f"defines (defined: {', '.join(sorted(servers)) or 'none'}); use '*' for any server",
        )
        for m in mappings
        if m.tool is not None and m.server != "*" and m.server not in servers
    ]


def load_mapping_file(
    path: Path,
    start: int = 0,
    errors: list[ConfigError] | None = None,
    operations: OperationIndex | None = None,
    servers: dict[str, tuple[str, ...]] | None = None,
) -> list[Mapping]:
    """With `errors`, a broken mapping is reported there and the rest still load (`check`).
    `servers` collects the file's MCP server names (`servers:`)."""
    root = load_yaml(path)
    if root is None:
        return []
    if not isinstance(root, Node):
        raise ConfigError(f"{path}:1:1", "a mapping file must be a YAML mapping with 'mappings:'")
    for key in ("rules", "default"):
        if key in root and "mappings" not in root:
            raise ConfigError(
                root.key_at(key),
                f"a policy file (it has '{key}:') in the mappings folder, where every file is "
                "read as mappings: move it to the policies folder",
            )
    expect_keys(root, _FILE_KEYS, {"provider", "mappings"}, "mapping file")
    expect_type(root, "provider", root["provider"], str, "a string")
    default_hosts = _hosts(root, "hosts") if "hosts" in root else ()
    file_context = load_value_specs(root, "context")
    _load_servers(root, servers if servers is not None else {})
    entries = root["mappings"]
    if not isinstance(entries, Seq):
        raise ConfigError(root.at("mappings"), "'mappings' must be a list")
    mappings = []
    for i, (entry, where) in enumerate(zip(entries, entries.item_where, strict=True)):
        try:
            mappings.append(
                _load_mapping(
                    entry,
                    where,
                    root["provider"],
                    default_hosts,
                    file_context,
                    path.stem,
                    start + i,
                    operations,
                )
            )
        except ConfigError as e:
            if errors is None:
                raise
            errors.append(e)
    return mappings


_SERVER_NAME = re.compile(r"[a-z][a-z0-9_-]*\Z")


def _load_servers(root: Node, servers: dict[str, tuple[str, ...]]) -> None:
    """`servers: {github: [api.githubcopilot.com]}`: the name each MCP server takes in actions."""
    found = optional_node(root, "servers", "a mapping of MCP server names to their hosts")
    if found is None:
        return
    for name in found:
        if not isinstance(name, str) or not _SERVER_NAME.match(name):
            raise ConfigError(
                found.key_at(name),
                f"MCP server name {name!r} must be lower-case letters, digits, '_' or '-'",
            )
        if name in servers:
            raise ConfigError(found.key_at(name), f"MCP server {name!r} is defined twice")
        # `[]`: a server its callers name (Guard API tool calls), reached by no host.
        servers[name] = () if found[name] == [] else _endpoints(found, name)


def _endpoints(node: Node, key: str) -> tuple[str, ...]:
    """A server's hosts, each with the path it answers on or not (`api.githubcopilot.com/mcp`):
    the host lower-cased and checked as `hosts:` are, the path kept as written."""
    value = node[key]
    entries = [value] if isinstance(value, str) else value
    if not isinstance(entries, list) or not entries or not all(isinstance(e, str) for e in entries):
        raise ConfigError(node.at(key), f"{key!r} must be a host (and path) or a list of them")
    places = entries.item_where if isinstance(entries, Seq) else [node.at(key)]
    found = []
    for entry, where in zip(entries, places, strict=True):
        host, slash, path = entry.partition("/")
        _refuse_url_parts(host, where)
        found.append(host.lower() + slash + path)
    return tuple(found)


def _hosts(node: Node, key: str) -> tuple[str, ...]:
    value = node[key]
    hosts = [value] if isinstance(value, str) else value
    if not isinstance(hosts, list) or not hosts or not all(isinstance(h, str) for h in hosts):
        raise ConfigError(node.at(key), f"{key!r} must be a host name or a list of them")
    places = hosts.item_where if isinstance(hosts, Seq) else [node.at(key)]
    for host, where in zip(hosts, places, strict=True):
        _refuse_url_parts(host, where)
    return tuple(h.lower() for h in hosts)


def _refuse_url_parts(host: str, where: Where) -> None:
    """A request's host is matched without scheme or port: `api.stripe.com:443` or
    `https://api.stripe.com` would never match, and the mapping would silently not apply."""
    if ":" in host or "/" in host:
        name = host.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
        raise ConfigError(
            where,
            f"host {host!r} has a scheme, port or path, which host matching never sees: "
            f"write the name alone ({name!r}; a glob such as '*.{name}' for its subdomains)",
        )


def _load_mapping(
    entry: Any,
    where: Where,
    provider: str,
    default_hosts: tuple[str, ...],
    file_context: tuple[ValueSpec, ...],
    stem: str,
    order: int,
    operations: OperationIndex | None = None,
) -> Mapping:
    if not isinstance(entry, Node):
        raise ConfigError(where, "each mapping must be a YAML mapping (action, method, path, ...)")
    expect_keys(entry, _MAPPING_KEYS, {"action"}, "mapping")
    named = _operations(entry, operations)
    server, tool = _tool(entry)
    hosts = _hosts(entry, "hosts") if "hosts" in entry else default_hosts
    if not hosts and not named and tool is None:
        raise ConfigError(where, "mapping has no hosts: set 'hosts' on the file or the mapping")
    action = entry["action"]
    expect_type(entry, "action", action, str, "a string")
    params = load_value_specs(entry, "params")
    context = file_context + load_value_specs(entry, "context")
    outcome = load_value_specs(entry, "outcome")
    if "{" in action and tool is None:
        raise ConfigError(
            entry.at("action"), "only an MCP mapping ('tool:') can template its action name"
        )
    return Mapping(
        id=str(entry.get("id") or f"{stem}.{action}.{order}"),
        provider=provider,
        action=action,
        category=_choice(entry, "category", CATEGORIES, "write"),
        sensitivity=_choice(entry, "sensitivity", SENSITIVITIES, "medium"),
        methods=_methods(entry),
        host_globs=hosts,
        path=_path(entry),
        path_template=entry.get("path"),
        match=_match(entry),
        target=_target(entry),
        params=params,
        context=context,
        undo=_undo(entry),
        where=where,
        order=order,
        operations=named,
        server=server,
        tool=re.compile("|".join(fnmatch.translate(t) for t in tool)) if tool else None,
        tool_globs=tool or (),
        outcome=outcome,
        undo_spec=_undo_spec(entry, params + context + outcome),
        prior=_prior_spec(entry, params + context),
    )


def _tool(entry: Node) -> tuple[str | None, tuple[str, ...] | None]:
    """`server:` and `tool:` of an MCP mapping: matched by the call, not by URL."""
    if "tool" not in entry:
        if "server" in entry:
            raise ConfigError(entry.at("server"), "'server' needs 'tool' (the MCP tool's name)")
        return None, None
    for key in ("method", "path", "hosts", "operation"):
        if key in entry:
            raise ConfigError(
                entry.at(key),
                f"'{key}' cannot be combined with 'tool': an MCP tool call is matched by its "
                "server and tool name, whatever the URL",
            )
    tool, server = entry["tool"], entry.get("server", "*")
    tools = [tool] if isinstance(tool, str) else tool
    if not isinstance(tools, list) or not tools or not all(isinstance(t, str) for t in tools):
        raise ConfigError(entry.at("tool"), "'tool' must be a tool name or glob, or a list")
    expect_type(entry, "server", server, str, "a server name (see 'servers:') or '*'")
    return server, tuple(tools)


def _operations(entry: Node, operations: OperationIndex | None) -> tuple[str, ...]:
    """`operation:` names, each one the catalog knows: a typo is a load error, not a mapping
    that silently never matches."""
    if "operation" not in entry:
        return ()
    value = entry["operation"]
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(entry.at("operation"), "'operation' must be an operation name or a list")
    for key in ("method", "path", "hosts"):
        if key in entry:
            raise ConfigError(
                entry.at(key),
                f"'{key}' cannot be combined with 'operation': the catalog knows how the "
                "operation looks on the wire",
            )
    for name in names:
        if operations is None or not operations.knows(name):
            hint = operations.suggest(name) if operations is not None else None
            raise ConfigError(
                entry.at("operation"),
                f"unknown operation {name!r}" + (f" (did you mean {hint!r}?)" if hint else ""),
            )
    return tuple(names)


def _choice(entry: Node, key: str, allowed: Iterable[str], default: str) -> str:
    value = entry.get(key, default)
    if value not in allowed:
        raise ConfigError(
            entry.at(key), f"{key} {value!r} is not one of: {', '.join(sorted(allowed))}"
        )
    return value


def _methods(entry: Node) -> frozenset[str]:
    value = entry.get("method", "*")
    methods = [value] if isinstance(value, str) else value
    if not isinstance(methods, list) or not all(isinstance(m, str) for m in methods):
        raise ConfigError(entry.at("method"), "'method' must be a method name or a list of them")
    upper = {m.upper() for m in methods}
    if "*" in upper:
        return frozenset()
    unknown = upper - HTTP_METHODS
    if unknown:
        raise ConfigError(entry.at("method"), f"unknown HTTP method {sorted(unknown)[0]!r}")
    return frozenset(upper)


def _path(entry: Node) -> re.Pattern[str] | None:
    if "path" not in entry:
        return None
    template = entry["path"]
    if not isinstance(template, str) or not template.startswith("/"):
        raise ConfigError(entry.at("path"), "'path' must be a template starting with '/'")
    try:
        return _path_regex(template)
    except re.error as e:  # e.g. the same capture name twice
        raise ConfigError(entry.at("path"), f"bad path template: {e}") from e


def _target(entry: Node) -> str | None:
    value = entry.get("target")
    if value is not None and not isinstance(value, str):
        raise ConfigError(
            entry.at("target"), "'target' must be a string template like 'customer/{id}'"
        )
    return value


def _match(entry: Node) -> tuple[Condition, ...]:
    conditions = optional_node(entry, "match", "a mapping of JSONPath expressions to conditions")
    if conditions is None:
        return ()
    compiled = []
    for expression in conditions:
        if not expression.startswith("$"):
            raise ConfigError(
                conditions.key_at(expression),
                f"match key {expression!r} must be a JSONPath starting with '$'",
            )
        compiled.append(
            Condition(
                expression,
                jsonpath_at(expression, conditions.key_at(expression)),
                compile_condition(
                    conditions[expression], conditions.at(expression), f"match {expression!r}"
                ),
            )
        )
    return tuple(compiled)


def _undo(entry: Node) -> dict[str, Any] | None:
    """What reviewers are shown of how to undo it (the request itself: _undo_spec)."""
    undo = optional_node(entry, "undo", "a mapping naming the action that undoes this one")
    if undo is None:
        return None
    expect_keys(undo, _UNDO_KEYS, {"action"}, "undo")
    shown = {key: undo[key] for key in undo if key not in ("request", "aws")}
    request, aws = undo.get("request"), undo.get("aws")
    if isinstance(request, Node):  # what `airlock undo` will send, for reviewers
        shown["sends"] = f"{str(request.get('method', '')).upper()} {request.get('url', '')}"
    elif isinstance(aws, Node):
        shown["sends"] = f"AWS {aws.get('service', '')} {aws.get('operation', '')}"
    return shown


def _undo_spec(entry: Node, specs: tuple[ValueSpec, ...]) -> UndoSpec | None:
    undo = entry.get("undo")
    if not isinstance(undo, Node):
        return None
    prior = {"prior"} if "prior" in entry else set()  # the values the write replaced
    return load_undo_spec(undo, _known_names(entry, specs) | prior)


def _prior_spec(entry: Node, specs: tuple[ValueSpec, ...]) -> PriorSpec | None:
    prior = optional_node(entry, "prior", "a mapping with the 'url' that reads the object")
    return None if prior is None else load_prior_spec(prior, _known_names(entry, specs))


def _known_names(entry: Node, specs: tuple[ValueSpec, ...]) -> set[str]:
    """Params, context values, outcome identifiers and path captures of a mapping."""
    captures = set(_TEMPLATE_FIELD_NAMES.findall(str(entry.get("path", ""))))
    return {spec.name for spec in specs} | captures


# --- analysis --------------------------------------------------------------------------------


def shadowed_mappings(mappings: Iterable[Mapping]) -> list[tuple[Mapping, Mapping]]:
    """(never reached, because of) pairs: an earlier mapping without `match` conditions that
    covers the same hosts and methods and whose path matches every path the later one can."""
    ordered = sorted(mappings, key=lambda m: m.order)
    found = []
    for i, later in enumerate(ordered):
        sample = _sample_path(later)
        for earlier in ordered[:i]:
            if _covers(earlier, later, sample):
                found.append((later, earlier))
                break
    return found


def _covers(earlier: Mapping, later: Mapping, sample: str | None) -> bool:
    if earlier.tool is not None or later.tool is not None:  # MCP: by server and tool
        return (
            not earlier.match
            and earlier.tool is not None
            and later.tool is not None
            and earlier.server in ("*", later.server)
            and all(earlier.tool.match(glob) for glob in later.tool_globs)
        )
    if earlier.operations or later.operations:  # by identity: the same operations, or none
        return (
            not earlier.match
            and bool(later.operations)
            and (set(later.operations) <= set(earlier.operations))
        )
    if earlier.match or not set(later.host_globs) <= set(earlier.host_globs):
        return False
    if earlier.methods and not (later.methods and later.methods <= earlier.methods):
        return False
    if earlier.path is None:
        return True
    return sample is not None and earlier.path.match(sample) is not None


def _sample_path(mapping: Mapping) -> str | None:
    """A path only this template produces: each capture filled with an unlikely value."""
    if mapping.path_template is None:
        return None
    return _TEMPLATE_FIELD.sub(lambda m: "zq9/zq9" if m.group(2) else "zq9", mapping.path_template)
