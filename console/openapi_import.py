"""`airlock mappings import --openapi FILE`: a mapping file drafted from an OpenAPI 3 description
(an internal API, a SaaS Airlock does not ship), for a person to review before it is used.

Each write operation (POST, PUT, PATCH, DELETE) becomes a URL mapping, derived the same way the
catalog derives meaning: the action from the operationId in snake case (or the method and path
when there is none), sensitivity from the verb and from words that touch access or secrets, the
path parameters as captures, and the JSON body's top-level scalar properties as params. Reads
are left out: they fall to `http.read`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from airlock.console.catalog_build import HTTP_VERBS, openapi_sensitivity
from airlock.pipeline.mappings import CATEGORIES, snake_case

_WRITE_VERBS = ("post", "put", "patch", "delete")
_SCALAR_TYPES = {"string": None, "integer": "int", "number": "float", "boolean": "bool"}
_NOT_A_NAME = re.compile(r"[^A-Za-z0-9_]")


class DescriptionError(ValueError):
    """The file is not an OpenAPI 3 description this command can read."""


def read_description(path: Path) -> dict[str, Any]:
    text = path.read_text()
    try:
        description = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        raise DescriptionError(f"{path}: not JSON or YAML: {e}") from e
    if not isinstance(description, dict) or "paths" not in description:
        raise DescriptionError(f"{path}: not an OpenAPI description (no 'paths')")
    if not str(description.get("openapi", "")).startswith("3"):
        raise DescriptionError(
            f"{path}: only OpenAPI 3 is read (this says {description.get('openapi')!r})"
        )
    return description


def import_openapi(
    description: dict[str, Any], provider: str, hosts: list[str], category: str, source: str
) -> tuple[str, int]:
    """The mapping file's text, and how many write operations it maps."""
    if category not in CATEGORIES:
        raise DescriptionError(
            f"category {category!r} is not one of {', '.join(sorted(CATEGORIES))}"
        )
    mappings = []
    seen: set[str] = set()
    for template, item in description["paths"].items():
        for method in HTTP_VERBS:
            operation = item.get(method)
            if method not in _WRITE_VERBS or not isinstance(operation, dict):
                continue
            mapping = _mapping(provider, category, template, method, item, operation, description)
            while mapping["id"] in seen:  # two operations deriving one name: keep both
                mapping["id"] += "_"
            seen.add(mapping["id"])
            mappings.append(mapping)
    head = (
        "# yaml-language-server: $schema=../console/schemas/mapping.schema.json\n"
        f"# Drafted by `airlock mappings import` from {source}: review every action, category,\n"
        "# sensitivity and param before use (`airlock check`, then `airlock explain` a request).\n"
    )
    body = {"provider": provider, "hosts": hosts, "mappings": mappings}
    text = head + yaml.safe_dump(body, sort_keys=False, width=100, allow_unicode=True)
    return text, len(mappings)


def _mapping(
    provider: str,
    category: str,
    template: str,
    method: str,
    item: dict[str, Any],
    operation: dict[str, Any],
    description: dict[str, Any],
) -> dict[str, Any]:
    operation_id = operation.get("operationId") or f"{method} {template}"
    action = snake_case(operation_id).strip("_") or method
    path = re.sub(r"\{([^}]+)\}", lambda m: "{" + _NOT_A_NAME.sub("_", m.group(1)) + "}", template)
    mapping: dict[str, Any] = {
        "id": f"{provider}.{action}",
        "action": action,
        "method": method.upper(),
        "path": path,
        "category": category,
        "sensitivity": openapi_sensitivity(operation_id, method, True),
    }
    summary = operation.get("summary")
    if summary:
        mapping["description"] = " ".join(str(summary).split())
    params = _body_params(operation, description)
    if params:
        mapping["params"] = params
    return mapping


def _body_params(operation: dict[str, Any], description: dict[str, Any]) -> dict[str, Any]:
    """Top-level scalar properties of the JSON (or form) request body: `$.body.<name>`."""
    content = (_resolve(operation.get("requestBody") or {}, description)).get("content", {})
    media = content.get("application/json") or content.get("application/x-www-form-urlencoded")
    if not media:
        return {}
    schema = _resolve(media.get("schema") or {}, description)
    params: dict[str, Any] = {}
    for name, prop in (schema.get("properties") or {}).items():
        prop = _resolve(prop, description)
        kind = prop.get("type")
        if kind not in _SCALAR_TYPES or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            continue
        converted = _SCALAR_TYPES[kind]
        params[name] = (
            {"path": f"$.body.{name}", "type": converted} if converted else f"$.body.{name}"
        )
    return params


def _resolve(node: dict[str, Any], description: dict[str, Any]) -> dict[str, Any]:
    """Follow a local `$ref` (#/components/...) once or more."""
    seen = 0
    while isinstance(node, dict) and "$ref" in node and seen < 16:
        reference = node["$ref"]
        if not reference.startswith("#/"):
            return {}
        found: Any = description
        for part in reference[2:].split("/"):
            found = found.get(part, {}) if isinstance(found, dict) else {}
        node, seen = found, seen + 1
    return node if isinstance(node, dict) else {}


def main_import(args: Any) -> int:
    import sys

    try:
        description = read_description(Path(args.openapi))
        text, count = import_openapi(
            description, args.provider, args.host, args.category, Path(args.openapi).name
        )
    except DescriptionError as e:
        print(f"airlock mappings import: {e}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}: {count} write operations; review it, then "
              "run `airlock check`", file=sys.stderr)  # fmt: skip
    else:
        sys.stdout.write(text)
    return 0
