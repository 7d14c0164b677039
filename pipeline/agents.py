"""Agent identities: who may use the proxy, with which key, in which roles, reaching which hosts.

`policies/agents.yaml`:

    agents:
      - id: billing-bot
        roles: [payments]
        key_hash: sha256$<salt>$<hex>     # `airlock agents key` makes a key and this line
        enabled: true
    roles:
      payments:
        egress: [api.stripe.com, "*.stripe.com"]   # hosts the role may reach
      research:
        egress: any                                 # any host, said explicitly

Fail closed: a role an agent names must be defined here (a load error otherwise, file:line); a
role without `egress` reaches no host, and neither does an agent without roles.

With agents configured, every request must carry proxy credentials (HTTPS_PROXY=
http://billing-bot:KEY@host:port); anything else gets 407. Keys are stored only as salted
SHA-256 of a 256-bit random key, which is as strong as the key itself.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airlock.pipeline.hosts import host_glob_regex
from airlock.pipeline.yaml_source import (
    ConfigError,
    Node,
    Seq,
    expect_keys,
    load_yaml,
    names_a_file,
    optional_file_exists,
)
from airlock.store.names import name_key
from airlock.store.records import role_sets

AGENTS_FILE = "agents.yaml"
_AGENT_KEYS = {"id", "roles", "key_hash", "enabled", "description", "simulate"}
_ROLE_KEYS = {"egress", "description", "simulate"}


@dataclass(frozen=True)
class Agent:
    id: str
    roles: tuple[str, ...]
    key_hash: str
    enabled: bool = True
    simulate: bool = False  # its writes are simulated, never forwarded (pipeline/simulation.py)


@dataclass(frozen=True)
class Role:
    name: str
    egress: tuple[str, ...] | None  # host globs; None: any host (`egress: any`); (): none
    simulate: bool = False

    def allows(self, host: str) -> bool:
        return self.egress is None or any(host_glob_regex(g).match(host) for g in self.egress)


@dataclass(frozen=True)
class AgentRegistry:
    agents: dict[str, Agent] = field(default_factory=dict)
    roles: dict[str, Role] = field(default_factory=dict)
    configured: bool = False  # an agents file exists, even one that lists nobody

    @property
    def required(self) -> bool:
        """With no agents file, identities are optional (the proxy-auth name, else anonymous).
        With one, every request needs an agent it lists: an empty list (every agent revoked
        in an incident) lets nobody in, never anybody."""
        return self.configured or bool(self.agents)

    def authenticate(self, name: str, key: str) -> Agent | None:
        agent = self.agents.get(name)
        if agent is None or not agent.enabled or not verify_key(key, agent.key_hash):
            return None
        return agent

    def simulates(self, name: str) -> bool:
        """The agent, or one of its roles, is in simulation (`simulate: true`)."""
        agent = self.agents.get(name)
        if agent is None:
            return False
        return agent.simulate or any(self.roles[r].simulate for r in agent.roles if r in self.roles)

    def standing_refusal(self, name: str) -> str | None:
        """Why this agent may not act at all, or None. Checked where a request is decided, not
        only where it is authenticated: one authenticated just before a reload that disables
        or removes its agent is decided with the new file."""
        if not self.required:
            return None
        agent = self.agents.get(name)
        if agent is None:
            return f"{name} is not an agent the agents file lists"
        return None if agent.enabled else f"{name} is disabled in the agents file"

    def roles_of(self, name: str) -> tuple[str, ...]:
        agent = self.agents.get(name)
        return agent.roles if agent else ()

    def egress_refusal(self, name: str, host: str) -> str | None:
        """Why this agent may not reach this host, or None. An agent reaches a host when any of
        its roles allows it: a role without `egress`, or an agent without roles, reaches none.
        Without an agents file there are no identities to limit."""
        if not self.required:
            return None
        roles = [self.roles[r] for r in self.roles_of(name) if r in self.roles]
        if any(role.allows(host) for role in roles):
            return None
        if not roles:
            return f"{name} has no roles, so it reaches no host (give it a role with egress)"
        names = ", ".join(role.name for role in roles)
        return f"{host} is outside the egress profile of {name}'s roles ({names})"


def hash_key(key: str, salt: str | None = None) -> str:
    salt = salt or secrets.token_hex(8)
    return f"sha256${salt}${hashlib.sha256((salt + key).encode()).hexdigest()}"


def verify_key(key: str, key_hash: str) -> bool:
    scheme, _, rest = key_hash.partition("$")
    salt, _, digest = rest.partition("$")
    if scheme != "sha256" or not salt or not digest:
        return False
    return hmac.compare_digest(hash_key(key, salt), key_hash)


def new_key() -> str:
    return secrets.token_urlsafe(32)


def _optional_file(policies: Path, name: str) -> tuple[Path, Any] | None:
    """(path, parsed root) of an optional file beside the policies (the root None when the file
    is empty: it exists, so what it governs is configured, to nobody); None when absent."""
    path = _folder_of(policies) / name
    if not optional_file_exists(path):
        return None
    return path, load_yaml(path)


def _folder_of(policies: Path) -> Path:
    """`--policies` names a folder or one policy file: the agents and reviewers files are the
    ones beside it either way (a file's own path + "/agents.yaml" would find none, and every
    name would be trusted). A folder is a folder whatever its name ends with (`airlock.yml/`)."""
    return policies.parent if names_a_file(policies) else policies


def load_agents(policies_dir: Path) -> AgentRegistry:
    found = _optional_file(policies_dir, AGENTS_FILE)
    if found is None:
        return AgentRegistry()
    path, root = found
    if root is None:
        return AgentRegistry(configured=True)
    if not isinstance(root, Node):
        raise ConfigError(f"{path}:1:1", "the agents file must be a YAML mapping with 'agents:'")
    expect_keys(root, {"agents", "roles", "description"}, {"agents"}, "agents file")
    roles = _roles(root)
    agents: dict[str, Agent] = {}
    entries = root["agents"]
    if not isinstance(entries, Seq):
        raise ConfigError(root.at("agents"), "'agents' must be a list")
    seen: dict[str, str] = {}  # name_key → id
    for entry, where in zip(entries, entries.item_where, strict=True):
        agent = _agent(entry, where)
        _refuse_undefined_roles(agent, roles, entry)
        _refuse_look_alike(agent.id, seen, "agent", where)
        agents[agent.id] = agent
    return AgentRegistry(agents, roles, configured=True)


def _refuse_look_alike(name: str, seen: dict[str, str], kind: str, where: Any) -> None:
    """Two identities a person cannot tell apart (`alice`, and `alice` spelt with a Cyrillic
    a) are a load error: a reviewer could pass as an agent, or one agent as another. `seen`:
    name_key → the name listed first."""
    key = name_key(name)
    earlier = seen.get(key)
    if earlier is None:
        seen[key] = name
        return
    if earlier == name:
        raise ConfigError(where, f"duplicate {kind} id {name!r}")
    raise ConfigError(
        where, f"{kind} id {name!r} reads the same as {earlier!r} (look-alike characters)"
    )


def _refuse_undefined_roles(agent: Agent, roles: dict[str, Role], entry: Node) -> None:
    """A role nobody defined (a typo: `opps`) must not mean 'no limit': a load error."""
    for role in agent.roles:
        if role not in roles:
            defined = ", ".join(sorted(roles)) or "none"
            raise ConfigError(
                entry.at("roles"),
                f"agent {agent.id!r} has role {role!r}, which 'roles:' does not define "
                f"(defined: {defined})",
            )


def _agent(entry: Any, where: Any) -> Agent:
    if not isinstance(entry, Node):
        raise ConfigError(where, "each agent must be a mapping (id, roles, key_hash)")
    expect_keys(entry, _AGENT_KEYS, {"id", "key_hash"}, "agent")
    key_hash = entry["key_hash"]
    if (
        not isinstance(key_hash, str)
        or key_hash.count("$") != 2
        or not key_hash.startswith("sha256$")
    ):
        raise ConfigError(
            entry.at("key_hash"),
            "key_hash must be 'sha256$SALT$HEX' (make one: airlock agents key)",
        )
    roles = entry.get("roles") or []
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise ConfigError(entry.at("roles"), "'roles' must be a list of role names")
    return Agent(
        str(entry["id"]), tuple(roles), key_hash, _flag(entry, "enabled", default=True),
        _flag(entry, "simulate"),
    )  # fmt: skip


def _flag(entry: Node, key: str, default: bool = False) -> bool:
    """Only true or false: a quoted "false" would read as true (an agent meant to be disabled
    authenticating)."""
    value = entry.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(entry.at(key), f"'{key}' must be true or false")
    return value


def _roles(root: Node) -> dict[str, Role]:
    table = root.get("roles") or Node.empty(root.where)
    if not isinstance(table, Node):
        raise ConfigError(root.at("roles"), "'roles' must map role names to their settings")
    roles = {}
    for name in table:
        spec = table[name] or Node.empty(table.at(name))
        if not isinstance(spec, Node):
            raise ConfigError(table.at(name), f"role {name!r} must be a mapping (egress: [...])")
        expect_keys(spec, _ROLE_KEYS, set(), f"role {name!r}")
        roles[name] = Role(name, _egress(spec), _flag(spec, "simulate"))
    return roles


def _egress(spec: Node) -> tuple[str, ...] | None:
    """`egress: [hosts]`, or `egress: any` for no limit; absent: no host (fail closed)."""
    egress = spec.get("egress")
    if egress == "any":
        return None
    if egress is None:
        return ()
    if not isinstance(egress, list) or not all(isinstance(h, str) for h in egress):
        raise ConfigError(
            spec.at("egress"), "'egress' must be a list of host names or globs, or 'any'"
        )
    return tuple(h.lower() for h in egress)


# --- reviewers ---------------------------------------------------------------------------------

REVIEWERS_FILE = "reviewers.yaml"


@dataclass(frozen=True)
class ReviewerRegistry:
    """`policies/reviewers.yaml`: who may decide approvals, in which roles.

        reviewers:
          - {id: alice, roles: [payments-lead]}
          - {id: bob, roles: [sre]}

    With the file, only listed reviewers may approve or deny; a rule's `reviewers: [roles]`
    narrows its approvals to those roles. Without it, anyone with access to the store may;
    with one that lists nobody, nobody may.
    """

    roles: dict[str, tuple[str, ...]] = field(default_factory=dict)
    configured: bool = False  # a reviewers file exists, even one that lists nobody

    def refusal(self, reviewer: str, stored_roles: Iterable[Any]) -> str | None:
        """Why `reviewer` may not take part in an approval that asks for `stored_roles` (see
        role_sets), or None: a reviewer must hold a role in at least one of its sets."""
        sets = role_sets(stored_roles)
        wanted = sorted({role for roles in sets for role in roles})
        if not self.configured and sets:  # a default path or a typo must not lift the rule
            return (
                f"this approval needs a reviewer in one of {wanted}, and no "
                f"{REVIEWERS_FILE} says who is: pass --policies with the folder that has it"
            )
        if not self.configured:
            return None
        listed = self.roles_of(reviewer)
        if listed is None:
            return f"{reviewer} is not a reviewer ({REVIEWERS_FILE})"
        if sets and not any(roles & set(listed) for roles in sets):
            return f"{reviewer} may not decide this approval: it needs one of {wanted}"
        return None

    def roles_of(self, reviewer: str) -> tuple[str, ...] | None:
        """A listed reviewer's roles, however the name is spelt (` ALICE` is `alice`, as for
        votes); None for someone the file does not list."""
        found = self.roles.get(reviewer)
        if found is not None:
            return found
        key = name_key(reviewer)
        return next((roles for name, roles in self.roles.items() if name_key(name) == key), None)

    def uncovered(self, reviewers: Iterable[str], stored_roles: Iterable[Any]) -> list[list[str]]:
        """The role sets of an approval that none of `reviewers` holds a role of: each fired
        rule's `reviewers:` must be met by someone approving."""
        held = {role for reviewer in reviewers for role in self.roles_of(reviewer) or ()}
        return [sorted(roles) for roles in role_sets(stored_roles) if not roles & held]


def load_reviewers(policies_dir: Path) -> ReviewerRegistry:
    found = _optional_file(policies_dir, REVIEWERS_FILE)
    if found is None:
        return ReviewerRegistry()
    path, root = found
    if root is None:
        return ReviewerRegistry(configured=True)
    if not isinstance(root, Node) or not isinstance(root.get("reviewers"), Seq):
        raise ConfigError(f"{path}:1:1", "the reviewers file needs 'reviewers:', a list")
    expect_keys(root, {"reviewers", "description"}, {"reviewers"}, "reviewers file")
    roles: dict[str, tuple[str, ...]] = {}
    agents = {name_key(agent): agent for agent in load_agents(policies_dir).agents}
    seen: dict[str, str] = {}
    entries = root["reviewers"]
    for entry, where in zip(entries, entries.item_where, strict=True):
        if not isinstance(entry, Node):
            raise ConfigError(where, "each reviewer must be a mapping (id, roles)")
        expect_keys(entry, {"id", "roles", "description"}, {"id"}, "reviewer")
        listed = entry.get("roles") or []
        if not isinstance(listed, list) or not all(isinstance(r, str) for r in listed):
            raise ConfigError(entry.at("roles"), "'roles' must be a list of role names")
        reviewer = str(entry["id"])
        _refuse_look_alike(reviewer, seen, "reviewer", where)
        agent = agents.get(name_key(reviewer))
        if agent is not None:
            raise ConfigError(
                where, f"reviewer id {reviewer!r} reads as agent {agent!r}: an agent never "
                "reviews (nobody approves their own request)",
            )  # fmt: skip
        roles[reviewer] = tuple(listed)
    return ReviewerRegistry(roles, configured=True)
