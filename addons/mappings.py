"""Stage 2: map a request document to a canonical action, through the YAML files in mappings/.

Everything is compiled once at load: host globs and path templates to regexes, JSONPath
expressions to parsers (shared between mappings that use the same expression). Lookup goes by
exact host, then method; glob hosts are resolved once per host name and cached.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from jsonpath_ng import JSONPath
from jsonpath_ng.exceptions import JsonPathLexerError, JsonPathParserError
from jsonpath_ng.ext import parse as parse_jsonpath

from addons.document import Document
from addons.yaml_source import (
    ConfigError,
    Node,
    Seq,
    Where,
    expect_keys,
    expect_type,
    load_yaml,
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
    }
)
SENSITIVITIES = ("low", "medium", "high", "critical")
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
HTTP_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"})

_FILE_KEYS = {"provider", "hosts", "mappings", "description"}
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
}
_PARAM_KEYS = {"path", "type", "default", "all", "value"}
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


# --- compiled pieces -------------------------------------------------------------------------


class FieldPath:
    """A plain path like `$.body.items[0].name`, walked directly: ~0.5 µs instead of ~6 µs.

    Finds exactly what jsonpath-ng would (at most one value); anything with wildcards, filters or
    slices is left to jsonpath-ng.
    """

    _STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+)\]")

    def __init__(self, steps: tuple[str | int, ...]) -> None:
        self.steps = steps

    @classmethod
    def parse(cls, expression: str) -> FieldPath | None:
        if not expression.startswith("$"):
            return None
        steps: list[str | int] = []
        position = 1
        while position < len(expression):
            match = cls._STEP.match(expression, position)
            if not match:
                return None
            name, index = match.groups()
            steps.append(name if name is not None else int(index))
            position = match.end()
        return cls(tuple(steps))

    def find_values(self, document: Any) -> list[Any]:
        node = document
        for step in self.steps:
            if isinstance(step, str):
                if not isinstance(node, dict) or step not in node:
                    return []
            elif not isinstance(node, list) or step >= len(node):
                return []
            node = node[step]
        return [node]


class GeneralPath:
    def __init__(self, path: JSONPath) -> None:
        self.path = path

    def find_values(self, document: Any) -> list[Any]:
        return [match.value for match in self.path.find(document)]


Finder = FieldPath | GeneralPath


@cache
def compile_jsonpath(expression: str) -> Finder:
    """Parsing costs ~0.4 ms, finding ~6 µs: parse each distinct expression once per process."""
    parsed = parse_jsonpath(expression)  # always: it validates the expression
    return FieldPath.parse(expression) or GeneralPath(parsed)


def _host_regex(glob: str) -> re.Pattern[str]:
    """`*` is one DNS label (`*.example.com`, `ec2.*.amazonaws.com`); `**` is one or more."""
    parts = []
    for label in glob.lower().split("."):
        if label == "**":
            parts.append(r"[^.]+(?:\.[^.]+)*")
        elif label == "*":
            parts.append(r"[^.]+")
        else:
            parts.append("[^.]*".join(re.escape(piece) for piece in label.split("*")))
    return re.compile(r"\.".join(parts) + r"\Z")


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


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "str": str,
    "int": lambda v: int(v) if not isinstance(v, bool) else _bad(v),
    "float": lambda v: float(v) if not isinstance(v, bool) else _bad(v),
    "bool": lambda v: v if isinstance(v, bool) else _parse_bool(v),
}


def _bad(value: Any) -> Any:
    raise ValueError(f"unexpected {value!r}")


def _parse_bool(value: Any) -> bool:
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


@dataclass(frozen=True)
class ParamSpec:
    name: str
    path: Finder | None
    expression: str | None
    literal: Any = None
    kind: str | None = None
    default: Any = None
    all_matches: bool = False

    def extract(self, document: Document) -> Any:
        if self.path is None:
            return self.literal
        values = self.path.find_values(document)
        if not values:
            return self.default
        if self.kind:
            try:
                values = [_CONVERTERS[self.kind](v) for v in values]
            except (TypeError, ValueError) as e:
                raise MappingError(
                    f"param {self.name!r} ({self.expression}): expected {self.kind}, "
                    f"got {values[0]!r}"
                ) from e
        return values if self.all_matches else values[0]


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
    target: str | None
    params: tuple[ParamSpec, ...]
    where: Where
    order: int = field(compare=False)

    def match_path(self, path: str) -> dict[str, str] | None:
        if self.path is None:
            return {}
        match = self.path.match(path)
        return match.groupdict() if match else None

    def apply(self, document: Document, captures: dict[str, str]) -> Action:
        params: dict[str, Any] = dict(captures)
        try:
            for spec in self.params:
                params[spec.name] = spec.extract(document)
        except MappingError as e:
            known = Action(
                self.action, self.provider, self.category, self.sensitivity,
                document["host"], params, self.id,
            )  # fmt: skip
            raise MappingError(f"mapping {self.id} ({self.where}): {e}", known) from e
        return Action(
            action=self.action,
            provider=self.provider,
            category=self.category,
            sensitivity=self.sensitivity,
            target=self._render_target(document, params),
            params=params,
            mapping_id=self.id,
        )

    def _render_target(self, document: Document, params: dict[str, Any]) -> str:
        if not self.target:
            return document["host"]

        def value(match: re.Match[str]) -> str:
            found = params.get(match.group(1))
            return "" if found is None else str(found)

        return _TEMPLATE_FIELD.sub(value, self.target)


# --- the index -------------------------------------------------------------------------------


class MappingIndex:
    """Mappings indexed by host then method; first match in file order wins."""

    def __init__(self, mappings: Iterable[Mapping]) -> None:
        self.mappings: list[Mapping] = sorted(mappings, key=lambda m: m.order)
        self._exact: dict[str, list[Mapping]] = {}
        self._globs: list[tuple[re.Pattern[str], Mapping]] = []
        for mapping in self.mappings:
            for glob in mapping.host_globs:
                if "*" in glob:
                    self._globs.append((_host_regex(glob), mapping))
                else:
                    self._exact.setdefault(glob.lower(), []).append(mapping)
        self._by_host_method: dict[tuple[str, str], list[Mapping]] = {}

    def __len__(self) -> int:
        return len(self.mappings)

    def candidates(self, host: str, method: str) -> list[Mapping]:
        key = (host, method)
        found = self._by_host_method.get(key)
        if found is None:
            found = self._collect(host, method)
            if len(self._by_host_method) > 65_536:  # hosts are few; bound it anyway
                self._by_host_method.clear()
            self._by_host_method[key] = found
        return found

    def _collect(self, host: str, method: str) -> list[Mapping]:
        on_host = list(self._exact.get(host, ()))
        on_host += [mapping for regex, mapping in self._globs if regex.match(host)]
        return sorted(
            {m.order: m for m in on_host if not m.methods or method in m.methods}.values(),
            key=lambda m: m.order,
        )

    def map(self, document: Document) -> Action:
        for mapping in self.candidates(document["host"], document["method"]):
            captures = mapping.match_path(document["path"])
            if captures is not None:
                return mapping.apply(document, captures)
        return fallback_action(document)


def fallback_action(document: Document) -> Action:
    """A request no mapping knows still gets an action, so policy always has something to judge."""
    is_read = document["method"] in READ_METHODS
    return Action(
        action="http.read" if is_read else "http.write",
        provider="http",
        category="read" if is_read else "write",
        sensitivity="low" if is_read else "medium",
        target=document["host"],
        params={"method": document["method"], "path": document["path"]},
        mapping_id=None,
    )


# --- loading ---------------------------------------------------------------------------------


def load_mappings(directory: Path) -> MappingIndex:
    mappings: list[Mapping] = []
    for path in yaml_files(directory):
        mappings.extend(_load_file(path, start=len(mappings)))
    seen: dict[str, Mapping] = {}
    for mapping in mappings:
        if mapping.id in seen:
            raise ConfigError(
                mapping.where,
                f"duplicate mapping id {mapping.id!r} (first at {seen[mapping.id].where})",
            )
        seen[mapping.id] = mapping
    return MappingIndex(mappings)


def _load_file(path: Path, start: int) -> list[Mapping]:
    root = load_yaml(path)
    if root is None:
        return []
    if not isinstance(root, Node):
        raise ConfigError(f"{path}:1:1", "a mapping file must be a YAML mapping with 'mappings:'")
    expect_keys(root, _FILE_KEYS, {"provider", "mappings"}, "mapping file")
    expect_type(root, "provider", root["provider"], str, "a string")
    default_hosts = _hosts(root, "hosts") if "hosts" in root else ()
    entries = root["mappings"]
    if not isinstance(entries, Seq):
        raise ConfigError(root.at("mappings"), "'mappings' must be a list")
    return [
        _load_mapping(entry, where, root["provider"], default_hosts, path.stem, start + i)
        for i, (entry, where) in enumerate(zip(entries, entries.item_where, strict=True))
    ]


def _hosts(node: Node, key: str) -> tuple[str, ...]:
    value = node[key]
    hosts = [value] if isinstance(value, str) else value
    if not isinstance(hosts, list) or not hosts or not all(isinstance(h, str) for h in hosts):
        raise ConfigError(node.at(key), f"{key!r} must be a host name or a list of them")
    return tuple(h.lower() for h in hosts)


def _load_mapping(
    entry: Any, where: Where, provider: str, default_hosts: tuple[str, ...], stem: str, order: int
) -> Mapping:
    if not isinstance(entry, Node):
        raise ConfigError(where, "each mapping must be a YAML mapping (action, method, path, ...)")
    expect_keys(entry, _MAPPING_KEYS, {"action"}, "mapping")
    hosts = _hosts(entry, "hosts") if "hosts" in entry else default_hosts
    if not hosts:
        raise ConfigError(where, "mapping has no hosts: set 'hosts' on the file or the mapping")
    action = entry["action"]
    expect_type(entry, "action", action, str, "a string")
    return Mapping(
        id=str(entry.get("id") or f"{stem}.{action}.{order}"),
        provider=provider,
        action=action,
        category=_choice(entry, "category", CATEGORIES, "write"),
        sensitivity=_choice(entry, "sensitivity", SENSITIVITIES, "medium"),
        methods=_methods(entry),
        host_globs=hosts,
        path=_path(entry),
        target=_target(entry),
        params=_params(entry),
        where=where,
        order=order,
    )


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


def _params(entry: Node) -> tuple[ParamSpec, ...]:
    params = entry.get("params")
    if params is None:
        return ()
    if not isinstance(params, Node):
        raise ConfigError(entry.at("params"), "'params' must map names to JSONPath expressions")
    return tuple(_param(params, name) for name in params)


def _param(params: Node, name: str) -> ParamSpec:
    spec, where = params[name], params.at(name)
    if isinstance(spec, str) and spec.startswith("$"):
        return ParamSpec(name, _jsonpath(spec, where), spec)
    if not isinstance(spec, Node):
        return ParamSpec(name, None, None, literal=spec)
    expect_keys(spec, _PARAM_KEYS, set(), f"param {name!r}")
    if "value" in spec:
        return ParamSpec(name, None, None, literal=spec["value"])
    expression = spec.get("path")
    if not isinstance(expression, str) or not expression.startswith("$"):
        raise ConfigError(where, f"param {name!r} needs 'path' (a JSONPath starting with '$')")
    kind = spec.get("type")
    if kind is not None and kind not in _CONVERTERS:
        raise ConfigError(spec.at("type"), f"type must be one of: {', '.join(_CONVERTERS)}")
    return ParamSpec(
        name,
        _jsonpath(expression, spec.at("path")),
        expression,
        kind=kind,
        default=spec.get("default"),
        all_matches=bool(spec.get("all", False)),
    )


def _jsonpath(expression: str, where: Where) -> Finder:
    try:
        return compile_jsonpath(expression)
    except (JsonPathLexerError, JsonPathParserError) as e:
        raise ConfigError(where, f"JSONPath {expression!r} does not compile: {e}") from e
    except Exception as e:  # jsonpath-ng raises bare exceptions for some malformed input
        raise ConfigError(where, f"JSONPath {expression!r} does not compile: {e}") from e
