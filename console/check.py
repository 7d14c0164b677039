"""`airlock check`: validate mapping and policy files and print every problem as file:line:col.

Three passes: the JSON Schema that editors also use (console/schemas/), then the loader that
the proxy runs (compiles JSONPath, regexes, templates; finds duplicate ids), then analysis
across files (mappings that can never be reached; rules naming actions nothing produces, or
comparing with numbers a param its mapping extracts as text: pipeline/consistency.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from airlock.pipeline.agents import (
    AGENTS_FILE,
    REVIEWERS_FILE,
    AgentRegistry,
    load_agents,
    load_reviewers,
)
from airlock.pipeline.consistency import (
    configuration_problems,
    reviewer_role_problems,
    shadowed_rules,
)
from airlock.pipeline.mappings import (
    Mapping,
    MappingIndex,
    load_mapping_file,
    shadowed_mappings,
    unknown_servers,
)
from airlock.pipeline.operations import OperationIndex, load_catalog
from airlock.pipeline.policies import PolicySet, Rule, holds_rules, load_policy_file
from airlock.pipeline.yaml_source import (
    ConfigError,
    Node,
    Seq,
    Where,
    load_yaml,
    refuse_nested,
    top_level_yaml,
)

SCHEMAS = Path(__file__).resolve().parent / "schemas"


@dataclass(frozen=True)
class Problem:
    where: Where | str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class Report:
    files: int
    problems: list[Problem]
    warnings: list[Problem] = field(default_factory=list)  # what loads, but is likely a mistake
    # Rules that tell agents apart by a name no agents file makes them prove (names_on_trust)
    names_on_trust: list[Problem] = field(default_factory=list)


@cache
def validator(kind: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{kind}.schema.json").read_text())
    return Draft202012Validator(schema)


MAPPINGS_FOLDER, POLICIES_FOLDER = "mappings", "policies"  # what `airlock run` reads by default


def yaml_paths(paths: Iterable[Path]) -> list[tuple[Path, str | None]]:
    """Each file to check with the kind the proxy would read it as: a folder's files as the
    loader lists them (its top level, no policy tests, no hidden or nested folders), all
    mappings or all policies (and identities) as the folder is one or the other; a file named
    alone, by its content (None)."""
    found: list[tuple[Path, str | None]] = []
    for path in paths:
        if not path.is_dir():
            found.append((path, None))
            continue
        files = top_level_yaml(path)
        role = _folder_role(path, files)
        found += [(file, _kind_in(role, file)) for file in files]
    return found


def _folder_role(folder: Path, files: list[Path]) -> str:
    """Whether the proxy would read the folder as its mappings or its policies: by its name
    when it is one of `airlock run`'s defaults, else by what most of its files hold."""
    if folder.resolve().name in (MAPPINGS_FOLDER, POLICIES_FOLDER):
        return folder.resolve().name
    kinds = []
    for file in files:
        try:
            kinds.append(kind_of(load_yaml(file), file))
        except ConfigError:
            continue  # reported when the file is checked
    mappings = kinds.count("mapping")
    return MAPPINGS_FOLDER if mappings > len(kinds) - mappings else POLICIES_FOLDER


def _kind_in(role: str, file: Path) -> str:
    """What the loader reads a file of that folder as (load_mappings, load_policies)."""
    if role == MAPPINGS_FOLDER:
        return "mapping"
    if holds_rules(file):
        return "policy"
    return "agents" if file.name == AGENTS_FILE else "reviewers"


def kind_of(document: Any, path: Path) -> str:
    """A mapping file has `mappings:`; a policy file has `rules:` or `default:`."""
    if isinstance(document, dict) and "mappings" in document:
        return "mapping"
    if path.name == AGENTS_FILE or (isinstance(document, dict) and "agents" in document):
        return "agents"
    if path.name == REVIEWERS_FILE or (isinstance(document, dict) and "reviewers" in document):
        return "reviewers"
    if isinstance(document, dict) and ({"rules", "default"} & document.keys()):
        return "policy"
    return "mapping" if "mapping" in str(path) else "policy"


def check(paths: Iterable[Path]) -> Report:
    paths = list(paths)
    files = yaml_paths(paths)
    problems = _unread_subfolders(paths)
    mappings: list[Mapping] = []
    rules: list[Rule] = []
    operations = load_catalog()
    servers: dict[str, tuple[str, ...]] = {}  # MCP server names, from every mapping file
    for path, kind in files:
        if path.name.endswith((".test.yaml", ".test.yml")):
            continue  # policy tests are checked by `airlock test`
        problems += _check_file(path, kind, mappings, rules, operations, servers)
    problems += _duplicates(mappings, rules)
    problems += [Problem(e.where, e.message) for e in unknown_servers(mappings, servers)]
    agents, unreadable = _agents_beside(rules)
    if mappings and rules:  # what they must agree on, when both are being checked
        together = configuration_problems(
            MappingIndex(mappings, operations, servers), PolicySet(rules, "ALLOW"), agents
        )
        problems += [Problem(e.where, e.message) for e in together]
    warnings = [Problem(e.where, f"warning: {e.message}") for e in shadowed_rules(rules)]
    problems += _reviewer_roles([path for path, _ in files], rules)
    problems += [
        Problem(
            later.where,
            f"mapping {later.id!r} is never reached: mapping {earlier.id!r} ({earlier.where}) "
            "matches every request it would",
        )
        for later, earlier in shadowed_mappings(mappings)
    ]
    # An agents file that does not load is reported as such, not as "no agents file".
    trusted = names_on_trust(rules, agents) if rules and not unreadable else []
    problems = list(dict.fromkeys(problems))  # one error reached twice (reviewers load agents)
    return Report(len(files), sorted(problems, key=_position), sorted(warnings, key=_position),
                  sorted(trusted, key=_position))  # fmt: skip


def names_on_trust(rules: Iterable[Rule], agents: AgentRegistry | None) -> list[Problem]:
    """Rules that count or match per agent or role, or name reviewer roles, while no agents file
    makes agents prove who they are: a name is then whatever the agent claims
    (HTTPS_PROXY=http://NAME:x@…), and a new one has a fresh budget and rate, matches no
    `agent:` condition and is not the agent the self-approval check compares reviewers with."""
    if agents is not None and agents.required:
        return []
    found = []
    for rule in rules:
        uses = [f"a {kind} per {counter.per}"
                for kind, counter in (("budget", rule.budget), ("rate", rule.rate))
                if counter is not None and counter.per in ("agent", "role")]  # fmt: skip
        uses += [f"`when: {key}`" for key, _ in rule.field_tests if key in ("agent", "role")]
        if rule.reviewer_roles:
            uses.append("reviewer roles")
        if uses:
            found.append(Problem(rule.where, f"warning: rule {rule.id!r} uses {', '.join(uses)}, "
                                 "but no agents file is configured: an agent's name is what it "
                                 "claims, so another name escapes it; give each agent a key in "
                                 f"{AGENTS_FILE} beside the policies "
                                 "(airlock agents key NAME)"))  # fmt: skip
    return found


def _unread_subfolders(paths: list[Path]) -> list[Problem]:
    """YAML in a subfolder, which `check` reads and the proxy refuses (yaml_source.py)."""
    problems = []
    for path in paths:
        try:
            if path.is_dir():
                refuse_nested(path)
        except ConfigError as e:
            problems.append(Problem(e.where, e.message))
    return problems


def _agents_beside(rules: list[Rule]) -> tuple[AgentRegistry | None, bool]:
    """The agents file beside the policies, for the roles rules name, when they come from one
    folder (as `airlock run --policies` reads them), None when roles are not checked; and
    whether that file exists but does not load (reported with its own file)."""
    folders = {Path(rule.where.file).parent for rule in rules}
    if len(folders) != 1:
        return None, False
    try:
        return load_agents(folders.pop()), False
    except ConfigError:
        return None, True


def _reviewer_roles(files: list[Path], rules: list[Rule]) -> list[Problem]:
    """Rules that narrow who decides, against the reviewers file beside the policies."""
    folders = {path.parent for path in files}
    found = []
    for folder in sorted(folders):
        try:
            reviewers = load_reviewers(folder)
        except ConfigError:
            continue  # reported with its own file
        beside = [r for r in rules if str(r.where).startswith(str(folder))]
        found += [Problem(e.where, e.message) for e in reviewer_role_problems(beside, reviewers)]
    return found


def _position(problem: Problem) -> tuple[str, int, int]:
    where = problem.where
    if isinstance(where, Where):
        return (where.file, where.line, where.column)
    return (str(where), 0, 0)


def _check_file(
    path: Path,
    kind: str | None,
    mappings: list[Mapping],
    rules: list[Rule],
    operations: OperationIndex,
    servers: dict[str, tuple[str, ...]],
) -> list[Problem]:
    try:
        document = load_yaml(path)
    except ConfigError as e:
        return [Problem(e.where, e.message)]
    if document is None:
        return []
    kind = kind or kind_of(document, path)
    if kind in ("agents", "reviewers"):
        try:
            (load_agents if kind == "agents" else load_reviewers)(path.parent)
        except ConfigError as e:
            return [Problem(e.where, e.message)]
        return list(_reaches_nothing(document)) if kind == "agents" else []
    problems = list(_schema_problems(document, kind, path))
    errors: list[ConfigError] = []
    try:
        if kind == "mapping":
            mappings += load_mapping_file(path, len(mappings), errors, operations, servers)
        else:
            rules += load_policy_file(path, len(rules), errors)[0]
    except ConfigError as e:  # a problem with the file as a whole
        errors.append(e)
    reported = {str(p.where) for p in problems}
    return problems + [Problem(e.where, e.message) for e in errors if str(e.where) not in reported]


def _reaches_nothing(document: Node) -> Iterator[Problem]:
    """Valid, but most likely a mistake: configuration fails closed, so an agent without roles,
    or a role without `egress`, reaches no host at all."""
    agents = document.get("agents")
    for entry, where in zip(agents or [], getattr(agents, "item_where", []), strict=False):
        if isinstance(entry, Node) and not entry.get("roles"):
            yield Problem(where, f"agent {entry.get('id')!r} has no roles, so it reaches no "
                          "host: give it a role with egress (or `enabled: false`)")  # fmt: skip
    roles = document.get("roles")
    if isinstance(roles, Node):
        for name in roles:
            spec = roles[name]
            if not isinstance(spec, Node) or spec.get("egress") is None:
                yield Problem(roles.key_at(name), f"role {name!r} has no egress, so it reaches no "
                              "host: list its hosts, or say `egress: any`")  # fmt: skip


def _schema_problems(document: Any, kind: str, path: Path) -> Iterator[Problem]:
    for error in validator(kind).iter_errors(document):
        specific = _most_specific(error)
        yield Problem(_where(document, specific, path), _message(specific))


def _most_specific(error: ValidationError) -> ValidationError:
    """Of a oneOf's failures, the one from the branch of the right type says what is wrong."""
    if not error.context:
        return error
    # An error below the oneOf's own value comes from the branch its type fits: `gte: "1e5"`
    # is a condition whose operand is wrong, not a value of the wrong type.
    shaped = [e for e in error.context if e.validator != "type" or e.relative_path]
    return _most_specific(best_match(shaped or error.context))


def _message(error: ValidationError) -> str:
    location = "".join(
        f"[{step}]" if isinstance(step, int) else f".{step}" for step in error.absolute_path
    ).lstrip(".")
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        return (
            f"unknown key {extra[0]!r}"
            + (f" in {location}" if location else "")
            + f" (expected {', '.join(allowed)})"
        )
    return f"{location}: {error.message}" if location else error.message


def _where(document: Any, error: ValidationError, path: Path) -> Where | str:
    node, where = document, getattr(document, "where", f"{path}:1:1")
    for step in error.absolute_path:
        if isinstance(node, Node) and step in node:
            where, node = node.at(step), node[step]
        elif isinstance(node, Seq) and isinstance(step, int) and step < len(node):
            where, node = node.item_where[step], node[step]
        else:
            break
    if error.validator == "additionalProperties" and isinstance(node, Node):
        allowed = set(error.schema.get("properties", {}))
        extra = sorted(set(node) - allowed)
        if extra:
            where = node.key_at(extra[0])
    return where


def _duplicates(mappings: list[Mapping], rules: list[Rule]) -> list[Problem]:
    problems = []
    for kind, items in (("mapping", mappings), ("rule", rules)):
        first: dict[str, Any] = {}
        for item in items:
            if item.id in first:
                problems.append(
                    Problem(
                        item.where,
                        f"duplicate {kind} id {item.id!r} (first at {first[item.id].where})",
                    )
                )
            else:
                first[item.id] = item
    return problems
