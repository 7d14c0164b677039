"""YAML loading that remembers where every value came from, so errors can say file:line:column."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# What a configuration was compiled from: {"files": {path: text}, "folders": {path: [path]}}.
# The proxy records it while it loads and validates; the decider process compiles the same
# snapshot instead of reading the disk again, where files may have been edited since.
Sources = dict[str, dict[str, Any]]
_recording: ContextVar[Sources | None] = ContextVar("airlock_recording", default=None)
_replaying: ContextVar[Sources | None] = ContextVar("airlock_replaying", default=None)


@dataclass(frozen=True)
class Where:
    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class ConfigError(Exception):
    """A problem in a YAML file that a person must fix; the message starts with file:line:column."""

    def __init__(self, where: Where | str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


class Node(dict):
    """A YAML mapping that knows its own position and the position of each of its values."""

    where: Where
    value_where: dict[str, Where]
    key_where: dict[str, Where]

    @classmethod
    def empty(cls, where: Where) -> Node:
        node = cls()
        node.where, node.value_where, node.key_where = where, {}, {}
        return node

    def at(self, key: str) -> Where:
        """Where the value of `key` starts (or the mapping itself, when the key is absent)."""
        return self.value_where.get(key, self.where)

    def key_at(self, key: str) -> Where:
        return self.key_where.get(key, self.where)


class Seq(list):
    """A YAML sequence that knows its own position and the position of each item."""

    where: Where
    item_where: list[Where]


def _where(file: str, mark: yaml.Mark) -> Where:
    return Where(file, mark.line + 1, mark.column + 1)


# libyaml's parser when PyYAML was built with it (its wheels are): the shipped configuration
# parses in 26 ms against 190 ms with the pure-Python one, at every start and reload. The
# constructors below are the same either way, and both give each node its line and column.
_BASE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_BOOL_TAG = "tag:yaml.org,2002:bool"


class _Yaml12Booleans(_BASE_LOADER):  # type: ignore[valid-type,misc]
    """YAML 1.2's booleans: only true and false (any case PyYAML knows). YAML 1.1 also reads
    yes/no/on/off as booleans, so `country: NO` or `description: off` became False and never
    matched the text a request holds."""

    yaml_implicit_resolvers = {
        first: [(tag, regex) for tag, regex in resolvers if tag != _BOOL_TAG]
        for first, resolvers in _BASE_LOADER.yaml_implicit_resolvers.items()
    }


_Yaml12Booleans.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _loader_for(file: str) -> type[yaml.SafeLoader]:
    class PositionLoader(_Yaml12Booleans):
        pass

    def construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> Node:
        result = Node()
        result.where = _where(file, node.start_mark)
        result.value_where = {}
        result.key_where = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise ConfigError(_where(file, key_node.start_mark), "keys must be strings")
            if key in result:
                raise ConfigError(_where(file, key_node.start_mark), f"duplicate key {key!r}")
            result[key] = loader.construct_object(value_node, deep=True)
            result.value_where[key] = _where(file, value_node.start_mark)
            result.key_where[key] = _where(file, key_node.start_mark)
        return result

    def construct_sequence(loader: yaml.SafeLoader, node: yaml.SequenceNode) -> Seq:
        result = Seq(loader.construct_object(item, deep=True) for item in node.value)
        result.where = _where(file, node.start_mark)
        result.item_where = [_where(file, item.start_mark) for item in node.value]
        return result

    def refuse_timestamp(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> None:
        raise ConfigError(
            _where(file, node.start_mark),
            f"{node.value} reads as a date, which no request value is: quote it "
            f'("{node.value}") to mean the text',
        )

    PositionLoader.add_constructor("tag:yaml.org,2002:timestamp", refuse_timestamp)
    PositionLoader.add_constructor(
        yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping
    )
    PositionLoader.add_constructor(
        yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, construct_sequence
    )
    return PositionLoader


@contextmanager
def recording_sources() -> Iterator[Sources]:
    """Keep every file and folder listing the configuration is loaded from, inside."""
    sources: Sources = {"files": {}, "folders": {}}
    token = _recording.set(sources)
    try:
        yield sources
    finally:
        _recording.reset(token)


def sources_hash(sources: Sources) -> str:
    """Names the configuration a decision was made with: sha256 over every file's path and
    text, in a fixed order. Recorded on each run; printed at each (re)load."""
    material = json.dumps(sources["files"], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(material.encode("utf-8", "surrogateescape")).hexdigest()


@contextmanager
def replaying_sources(sources: Sources) -> Iterator[None]:
    """Inside, configuration files are read from a recording, never from the disk."""
    token = _replaying.set(sources)
    try:
        yield
    finally:
        _replaying.reset(token)


def _read_text(path: Path) -> str:
    file = str(path)
    replayed = _replaying.get()
    if replayed is not None:
        if file not in replayed["files"]:
            raise ConfigError(file, "not among the files the proxy loaded")
        return str(replayed["files"][file])
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(file, f"cannot read: {e.strerror}") from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        before = data[: e.start]
        line, column = before.count(b"\n") + 1, e.start - (before.rfind(b"\n") + 1) + 1
        raise ConfigError(
            Where(file, line, column),
            f"is not UTF-8 (byte 0x{data[e.start]:02x}): save the file as UTF-8",
        ) from None
    recording = _recording.get()
    if recording is not None:
        recording["files"][file] = text
    return text


def optional_file_exists(path: Path) -> bool:
    replayed = _replaying.get()
    if replayed is not None:
        return str(path) in replayed["files"]
    return path.parent.is_dir() and path.exists()


def load_yaml(path: Path) -> Any:
    """Parse one YAML file; syntax errors become ConfigError with the file's line and column."""
    file = str(path)
    text = _read_text(path)
    try:
        return yaml.load(text, Loader=_loader_for(file))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = _where(file, mark) if mark else file
        raise ConfigError(where, f"invalid YAML: {e.problem or e.context}") from e
    except yaml.reader.ReaderError as e:  # a control character: said with its place, too
        before = text[: e.position]
        line, column = before.count("\n") + 1, e.position - (before.rfind("\n") + 1) + 1
        raise ConfigError(Where(file, line, column), f"invalid YAML: {e.reason}") from e


def names_a_file(path: Path) -> bool:
    """A config path that names one file rather than a folder, as yaml_files reads it (from
    the recording when replaying: the decider does not look at the disk)."""
    replayed = _replaying.get()
    if replayed is not None:
        return replayed["folders"].get(str(path)) == [str(path)]
    return path.is_file()


def yaml_files(directory: Path) -> list[Path]:
    """The YAML files of a config folder in a stable order (the order rules are tried in)."""
    replayed = _replaying.get()
    if replayed is not None:
        if str(directory) not in replayed["folders"]:
            raise ConfigError(str(directory), "not among the folders the proxy loaded")
        return [Path(p) for p in replayed["folders"][str(directory)]]
    if directory.is_file():
        files = [directory]
    elif not directory.is_dir():
        raise ConfigError(str(directory), "no such directory")
    else:
        files = top_level_yaml(directory)
        refuse_nested(directory)
    recording = _recording.get()
    if recording is not None:
        recording["folders"][str(directory)] = [str(p) for p in files]
    return files


def top_level_yaml(directory: Path) -> list[Path]:
    """The YAML files a folder's configuration is read from (policy tests are not)."""
    return sorted(
        p
        for p in directory.iterdir()
        if p.suffix in (".yaml", ".yml") and not p.name.endswith((".test.yaml", ".test.yml"))
    )


def refuse_nested(directory: Path) -> None:
    """A folder's YAML is read from its top level only: a rule filed in a subfolder would be
    shown by an editor, and never enforced (hidden folders, such as .github, are not looked in)."""
    for sub in sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")):
        nested = next((p for p in sorted(sub.rglob("*")) if p.suffix in (".yaml", ".yml")), None)
        if nested is not None:
            raise ConfigError(
                str(nested), f"is in a subfolder of {directory}, which Airlock does not read: "
                "move it up to the folder itself, or out of it",
            )  # fmt: skip


def expect_keys(node: Node, allowed: set[str], required: set[str], what: str) -> None:
    """Reject unknown keys (typos must not silently disable a rule) and missing required ones."""
    for key in node:
        if key not in allowed:
            expected = ", ".join(sorted(allowed))
            raise ConfigError(
                node.key_at(key), f"unknown key {key!r} in {what} (expected {expected})"
            )
    for key in sorted(required - node.keys()):
        raise ConfigError(node.where, f"{what} is missing required key {key!r}")


def expect_type(node: Any, key: str, value: Any, kind: type | tuple[type, ...], desc: str) -> None:
    if not isinstance(value, kind):
        where = node.at(key) if isinstance(node, Node) else "?"
        raise ConfigError(where, f"{key!r} must be {desc}, got {type(value).__name__}")


def optional_node(owner: Node, key: str, expected: str) -> Node | None:
    """The mapping under `key`, or None when absent; anything else is an error naming the key."""
    value = owner.get(key)
    if value is None:
        return None
    if not isinstance(value, Node):
        raise ConfigError(owner.at(key), f"{key!r} must be {expected}")
    return value
