"""Stage 2a: identify a request as the vendor's own operation, from the generated catalog.

The catalog (catalog/aws/<service>.json, generated from botocore's service models by
`make catalog`) lists every operation with how it shows on the wire. Identification follows
each AWS protocol as botocore writes it:
- query and ec2: `Action=RunInstances` in the form body (or the query string);
- JSON 1.0/1.1: `X-Amz-Target: DynamoDB_20120810.DeleteTable`;
- rest-json and rest-xml: method + URI template + the literal query keys (`?lifecycle`) and the
  required query keys and headers (`uploadId`, `x-amz-copy-source`) that tell apart operations
  sharing a path; the most specific template wins.
The service comes from the host in every AWS form (regional, global, FIPS, dualstack,
virtual-hosted S3 buckets, DynamoDB account endpoints), or, for an interface VPC endpoint
(`vpce-….ec2.us-east-1.vpce.amazonaws.com`), from the SigV4 credential scope. The scope is the
client's to write: on any other host it says nothing (it would make any API an AWS service).

Everything is compiled once at load; a host's service is cached.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from functools import cache, cached_property
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from airlock.pipeline.document import Document
from airlock.pipeline.sensitive import SensitiveMembers, compile_members, remember
from airlock.store.locations import shipped

DEFAULT_CATALOG = shipped("catalog")

AWS_SUFFIXES = (".amazonaws.com", ".amazonaws.com.cn", ".api.aws")
_REGION = re.compile(r"^[a-z]{2}(?:-[a-z]+)+-\d+$")
_S3_LEGACY = re.compile(r"^s3-(?:external-1|fips|[a-z]{2}(?:-[a-z]+)+-\d+)$")
_ENDPOINT_WORDS = frozenset({"dualstack", "fips", "global"})  # iam.global.api.aws (dualstack)
# {account}.ddb.{region}.amazonaws.com; {route}.s3-object-lambda.{region} (WriteGetObjectResponse);
# stream-logs.{region} (StartLiveTail: botocore's endpoint rules give it its own host)
LABEL_ALIASES = {"ddb": "dynamodb", "s3-object-lambda": "s3", "stream-logs": "logs"}
_SCOPE = re.compile(r"Credential=[^/,\s]+/\d{8}/([^/]+)/([^/]+)/aws4_request")
_TEMPLATE_LABEL = re.compile(r"\{([A-Za-z0-9_]+)(\+?)\}")
_REST = frozenset({"rest-json", "rest-xml"})
OPENAPI = "openapi"
_MAX_CACHED_HOSTS = 65_536
# Caches keyed by what a request names hold at most _MAX_CACHED_HOSTS keys, none longer than
# its kind can be: a host of a DNS name's 253 characters (RFC 1035); a longer one is looked up
# uncached (a 64 KB host otherwise stayed as a key: 4 GB at the cap).
MAX_CACHED_HOST = 253
LEADING = 2  # path segments that index an operation template (see rest_candidates)
ANY_METHOD = "*"  # the key of every operation of a service that ignores the method


@dataclass(frozen=True, slots=True)
class Operation:
    """A request identified as a vendor operation: `aws.s3.PutBucketLifecycleConfiguration`."""

    name: str
    provider: str
    service: str
    write: bool
    category: str
    sensitivity: str
    # Request fields by the vendor's member names: path labels, required scalar members.
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def short_name(self) -> str:
        return self.name.rsplit(".", 1)[1]


@dataclass(frozen=True, slots=True)
class OperationSpec:
    """One catalog entry, compiled."""

    name: str
    service: str
    write: bool
    deprecated: bool
    category: str
    sensitivity: str
    fields: tuple[tuple[str, str, str], ...]  # (member, location, wire name)
    method: str = ""
    template: str = ""  # the URI template, as the catalog has it
    path: re.Pattern[str] | None = None
    labels: tuple[str, ...] = ()
    query: tuple[tuple[str, str | None], ...] = ()  # literal query keys, with a value or None
    required_query: tuple[str, ...] = ()
    required_headers: tuple[str, ...] = ()
    specificity: tuple[int, int, int] = (0, 0, 0)
    query_keys: frozenset[str] = frozenset()  # every query key this operation requires
    # the template's leading literal path segments, up to LEADING (`("v1", "charges")`): a
    # request is tried only against templates whose leading segments it has
    leading: tuple[str, ...] = ()
    # AWS: the operation's parameters are in a JSON or XML body (a JSON service's, S3's
    # `?policy` or `?delete`), not an opaque payload (PutObject's object)
    reads_body: bool = False
    # the request members the vendor marks sensitive: never stored (pipeline/sensitive.py)
    sensitive: SensitiveMembers | None = None

    def matches_rest(self, document: Document, path: str) -> dict[str, str] | None:
        """Path labels when this operation's method, path, query keys and headers fit."""
        query, headers = document["query"], document["headers"]
        if not self.query_keys <= query.keys():
            return None
        for key, value in self.query:
            if key not in query or (value is not None and value not in query[key]):
                return None
        if any(key not in query for key in self.required_query):
            return None
        if any(name not in headers for name in self.required_headers):
            return None
        found = self.path.match(path) if self.path is not None else None
        if found is None:
            return None
        return dict(zip(self.labels, found.groups(), strict=True))


@dataclass
class Service:
    name: str  # aws: the botocore service (s3); OpenAPI: the provider (github)
    protocol: str
    endpoint_prefix: str
    signing_name: str
    target_prefix: str | None
    category: str
    source: str
    operations: dict[str, OperationSpec]
    rest_by_method: dict[str, list[OperationSpec]]
    provider: str = "aws"
    hosts: tuple[str, ...] = ()  # OpenAPI providers: the hosts that serve the API (`*.` glob)
    # The vendor acts alike whatever the HTTP method (Slack's Web API takes a method's arguments
    # from a GET's query string as from a POST): operations are found by their path alone.
    any_method: bool = False
    # (method, leading path segments) → candidates, most specific first. Two segments, not one:
    # every Stripe, OpenAI or Anthropic path starts with /v1 (measured: one segment left ~300
    # Stripe templates to try per request, 181 µs; two leave a handful).
    _rest_candidates: dict[tuple[str, tuple[str, ...]], list[OperationSpec]] = field(
        default_factory=dict
    )

    def rest_candidates(self, method: str, path: str) -> list[OperationSpec]:
        method = ANY_METHOD if self.any_method else method
        templates = self.rest_by_method.get(method)
        if not templates:  # a method none of its operations has (any token a client sends)
            return []
        # A segment longer than every template's leading literal matches none of them: it is
        # keyed as "", which no template's leading segments hold (they stop at an empty one),
        # so the cache holds no more of a path than the catalog's own segments (a 30 KB
        # segment once made 74 KB a request, 4.8 GB at the cap).
        longest = self._longest_leading
        segments = tuple(
            segment if len(segment) <= longest else ""
            for segment in path.split("/", LEADING + 1)[1 : LEADING + 1]
        )
        key = (method, segments)
        found = self._rest_candidates.get(key)
        if found is None:
            found = [spec for spec in templates if spec.leading == segments[: len(spec.leading)]]
            if len(self._rest_candidates) < _MAX_CACHED_HOSTS:  # segments are mostly few
                self._rest_candidates[key] = found
        return found

    @cached_property
    def _longest_leading(self) -> int:
        """The longest leading literal segment of the service's templates (56 characters in
        the shipped catalog: Slack's admin.conversations.ekm.listOriginalConnectedChannelInfo)."""
        templates = (spec for specs in self.rest_by_method.values() for spec in specs)
        return max((len(s) for spec in templates for s in spec.leading), default=0)

    def identify(self, document: Document, resource: str | None) -> Operation | None:
        spec, labels = self._find(document, resource)
        if spec is None:
            return None
        if spec.reads_body and document["body_format"] == "text" and "body_error" not in document:
            # sent as text/plain or octet-stream (the vendor does not go by it), not parsed:
            # judged without its parameters, it is held for a reviewer (body_error)
            document["body_error"] = (
                f"the body does not parse as the JSON or XML that {spec.name} reads"
            )
        return Operation(
            name=f"{self.prefix}.{spec.name}",
            provider=self.provider,
            service=self.name,
            write=spec.write,
            category=spec.category,
            sensitivity=spec.sensitivity,
            fields=_read_fields(spec, document, labels),
        )

    @property
    def prefix(self) -> str:
        """What operation names start with: `aws.s3`, `github`."""
        return f"aws.{self.name}" if self.provider == "aws" else self.provider

    def _find(
        self, document: Document, resource: str | None
    ) -> tuple[OperationSpec | None, dict[str, str]]:
        if self.protocol == OPENAPI:
            return self._find_openapi(document)
        # Each by what its own servers read: REST services never read X-Amz-Target, query
        # services read Action (document.py refuses a target that disagrees with it), JSON
        # services the target with their exact prefix, or Action (SQS moved from query to JSON
        # and older SDKs still send it).
        if self.protocol in _REST:
            return self._find_rest(document, resource)
        action = _query_action(document)
        target = document["headers"].get("x-amz-target")
        if self.protocol == "json" and target is not None:
            prefix, _, name = target.rpartition(".")
            if prefix != self.target_prefix:
                return None, {}
            return self.operations.get(name), {}
        return (self.operations.get(action) if action is not None else None), {}

    def _find_rest(
        self, document: Document, resource: str | None
    ) -> tuple[OperationSpec | None, dict[str, str]]:
        path = document["path"]
        if resource is not None:  # virtual-hosted S3: the bucket is in the host
            path = "/" + resource + ("" if path == "/" else path)
        candidates = self.rest_candidates(document["method"], path)
        for i, spec in enumerate(candidates):
            labels = spec.matches_rest(document, path)
            if labels is not None:
                _one_subresource(spec, candidates[i + 1 :], document, path)
                return spec, labels
        return None, {}

    def _find_openapi(self, document: Document) -> tuple[OperationSpec | None, dict[str, str]]:
        """By method and path template; on the path as sent when it held an encoded slash
        (a GitHub branch `release%2Fv1` is one segment), label values decoded."""
        raw = document.get("raw_path")
        path = raw or document["path"]
        for spec in self.rest_candidates(document["method"], path):
            labels = spec.matches_rest(document, path)
            if labels is not None:
                if raw:
                    labels = {k: unquote(v) for k, v in labels.items()}
                return spec, labels
        return None, {}


class AmbiguousRequest(ValueError):
    """A request that fits two operations the catalog tells apart: which one the vendor runs
    is not for Airlock to guess."""


def _one_subresource(
    found: OperationSpec, rest: list[OperationSpec], document: Document, path: str
) -> None:
    """`PUT /bucket?acl&policy`: two sub-resources named, the operation the catalog lists first
    is not necessarily the one S3 runs. Raises AmbiguousRequest when another candidate with a
    sub-resource of its own (not one of the found operation's) fits too."""
    if not found.query:
        return
    keys = {key for key, _ in found.query}
    for other in rest:
        if (
            not other.query
            or {key for key, _ in other.query} <= keys
            or other.matches_rest(document, path) is None
        ):
            continue
        raise AmbiguousRequest(
            f"the request names the sub-resources of both {found.name} and {other.name} "
            f"({', '.join(sorted(keys | {k for k, _ in other.query}))}): the upstream could "
            "run either"
        )


def _query_action(document: Document) -> str | None:
    body = document["body"]
    if isinstance(body, dict) and isinstance(body.get("Action"), str):
        return body["Action"]
    values = document["query"].get("Action")
    return values[0] if values else None


def _read_fields(spec: OperationSpec, document: Document, labels: dict[str, str]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    body = document["body"] if isinstance(document["body"], dict) else {}
    for member, location, wire in spec.fields:
        if location == "uri":
            value: Any = labels.get(wire)
        elif location == "query":
            values = document["query"].get(wire)
            value = values[0] if values else None
        elif location == "header":
            value = document["headers"].get(wire)
        else:
            value = body.get(wire)
        if value is not None:
            fields[member] = value
    return fields


class OperationIndex:
    """Every catalog service, reachable by host and by SigV4 credential scope."""

    def __init__(self, services: Iterable[Service]) -> None:
        self.services = {s.name: s for s in services}
        self._by_label = {s.endpoint_prefix: s for s in self.services.values()}
        for alias, name in LABEL_ALIASES.items():
            if name in self.services:
                self._by_label[alias] = self.services[name]
        self._by_signing = {s.signing_name: s for s in self.services.values() if s.signing_name}
        self._by_host = {host: s for s in self.services.values() for host in s.hosts}
        self._by_domain = [(h[1:], s) for s in self.services.values() for h in s.hosts
                           if h.startswith("*.")]  # fmt: skip
        self._hosts: dict[str, tuple[Service, str | None] | None] = {}

    def __len__(self) -> int:
        return sum(len(s.operations) for s in self.services.values())

    def names(self) -> Iterator[str]:
        for service in self.services.values():
            for name in service.operations:
                yield f"{service.prefix}.{name}"

    def _named(self, name: str) -> tuple[str, Service | None, str]:
        """(provider, its service, the operation) an operation's name names: aws.<service>.<op>
        or <provider>.<op>."""
        provider, _, rest = name.partition(".")
        if provider == "aws":
            service_name, _, operation = rest.partition(".")
            return provider, self.services.get(service_name), operation
        return provider, self.services.get(provider), rest

    def sensitive(self, name: str) -> SensitiveMembers | None:
        """Where this operation's request carries members the vendor marks sensitive."""
        _, service, operation = self._named(name)
        spec = service.operations.get(operation) if service is not None else None
        return spec.sensitive if spec is not None else None

    def fields_by_operation(self) -> Iterator[tuple[str, list[str]]]:
        """Each operation's name with the request fields it names (a derived action's params)."""
        for service in self.services.values():
            for name, spec in service.operations.items():
                yield f"{service.prefix}.{name}", [member for member, _, _ in spec.fields]

    def knows(self, name: str) -> bool:
        provider, service, operation = self._named(name)
        return (
            service is not None
            and service.provider == provider
            and (operation in service.operations)
        )

    def suggest(self, name: str) -> str | None:
        """The closest known operation name, for a load error."""
        close = difflib.get_close_matches(name, list(self.names()), n=1, cutoff=0.8)
        return close[0] if close else None

    def identify(self, document: Document) -> Operation | None:
        found = self.service_of(document)
        if found is None:
            return None
        service, resource = found
        return service.identify(document, resource)

    def service_of(self, document: Document) -> tuple[Service, str | None] | None:
        """The service a request is for, and the resource its host names (an S3 bucket)."""
        host = document["host"]
        if len(host) > MAX_CACHED_HOST:
            found = self._service_of_host(host)
        elif host in self._hosts:
            found = self._hosts[host]
        else:
            if len(self._hosts) > _MAX_CACHED_HOSTS:
                self._hosts.clear()
            found = self._hosts[host] = self._service_of_host(host)
        if found is not None or not scope_names_service(host):
            return found
        scope = _credential_scope(document)
        service = self._by_signing.get(scope) if scope else None
        return (service, None) if service is not None else None

    def _service_of_host(self, host: str) -> tuple[Service, str | None] | None:
        if host in self._by_host:
            return self._by_host[host], None
        for domain, service in self._by_domain:  # `*.slack.com`: a workspace's own host
            if host.endswith(domain):
                return service, None
        parsed = parse_aws_host(host)
        if parsed is None:
            return None
        label, resource = parsed
        service = self._by_label.get(label)
        if service is None:  # vpce-1.ec2.….vpce.amazonaws.com: left to the credential scope
            return None
        # Left of the service label: an S3 bucket, else an account id or a host prefix.
        return service, (resource or None) if label == "s3" else None


def parse_aws_host(host: str) -> tuple[str, str] | None:
    """(service label, what stands left of it) for an AWS host, read from the right so that a
    bucket named like a service (`ec2.s3.amazonaws.com`) is still a bucket."""
    suffix = next((s for s in AWS_SUFFIXES if host.endswith(s)), None)
    if suffix is None:
        return None
    labels = host[: -len(suffix)].split(".")
    while labels and (_REGION.match(labels[-1]) or labels[-1] in _ENDPOINT_WORDS):
        labels.pop()
    if not labels:
        return None
    label = labels.pop()
    if label.endswith("-fips"):
        label = label[: -len("-fips")]
    if _S3_LEGACY.match(label):
        label = "s3"
    return label, ".".join(labels)


def scope_names_service(host: str) -> bool:
    """Whether a SigV4 credential scope may say which AWS service a request to `host` is for:
    only on an interface VPC endpoint, an AWS host that names no service by its form. Elsewhere
    the scope is text the client chose: `api.internal.example/…?X-Amz-Credential=…/dynamodb/…`
    is not DynamoDB, and neither is a customer's own server on an AWS name (`*.elb.`,
    `*.compute.amazonaws.com`)."""
    parsed = parse_aws_host(host)
    return parsed is not None and parsed[0] == "vpce"


def _credential_scope(document: Document) -> str | None:
    """The service a SigV4 signature is scoped to (Authorization header or presigned URL)."""
    authorization = document["headers"].get("authorization", "")
    found = _SCOPE.search(authorization)
    if found is not None:
        return found.group(2)
    credential = document["query"].get("X-Amz-Credential")
    if credential:
        parts = credential[0].split("/")
        if len(parts) == 5:
            return parts[3]
    return None


# --- loading ---------------------------------------------------------------------------------


class CatalogError(Exception):
    pass


def load_catalog(directory: Path = DEFAULT_CATALOG) -> OperationIndex:
    services = []
    paths = sorted((directory / "aws").glob("*.json")) + sorted(
        (directory / "openapi").glob("*.json")
    )
    for path in paths:
        try:
            entry = json.loads(path.read_text())
            loaded = _load_openapi(entry) if entry["protocol"] == OPENAPI else _load_service(entry)
            services.append(loaded)
        except (ValueError, KeyError, TypeError, re.error) as e:
            raise CatalogError(f"{path}: not a catalog file this Airlock can read ({e})") from e
    index = OperationIndex(services)
    for service in index.services.values():  # what run_row keeps out of the record
        for name, spec in service.operations.items():
            if spec.sensitive is not None:
                remember(f"{service.prefix}.{name}", spec.sensitive)
    return index


def _load_openapi(entry: dict[str, Any]) -> Service:
    """An OpenAPI provider's operations: one service named for the provider."""
    provider = entry["provider"]
    service = _load_service(
        {**entry, "service": provider, "endpoint_prefix": "", "signing_name": "",
         "target_prefix": None}
    )  # fmt: skip
    any_method = bool(entry.get("any_method"))
    if any_method:
        every = [spec for specs in service.rest_by_method.values() for spec in specs]
        every.sort(key=lambda s: s.specificity, reverse=True)
        service = replace(service, rest_by_method={ANY_METHOD: every})
    return replace(service, provider=provider, hosts=tuple(entry["hosts"]), any_method=any_method)


def _load_service(entry: dict[str, Any]) -> Service:
    operations = {
        op["name"]: _compile(op, entry["service"], entry["category"], entry["protocol"])
        for op in entry["operations"]
    }
    rest_by_method: dict[str, list[OperationSpec]] = {}
    for spec in operations.values():
        if spec.path is not None:
            rest_by_method.setdefault(spec.method, []).append(spec)
    for candidates in rest_by_method.values():
        candidates.sort(key=lambda s: s.specificity, reverse=True)
    return Service(
        name=entry["service"],
        protocol=entry["protocol"],
        endpoint_prefix=entry["endpoint_prefix"],
        signing_name=entry["signing_name"],
        target_prefix=entry["target_prefix"],
        category=entry["category"],
        source=entry["source"],
        operations=operations,
        rest_by_method=rest_by_method,
    )


def _compile(op: dict[str, Any], service: str, category: str, protocol: str) -> OperationSpec:
    fields = tuple((member, *where.split(":", 1)) for member, where in op.get("fields", {}).items())
    spec = OperationSpec(
        name=op["name"],
        service=service,
        write=op["write"],
        deprecated=op.get("deprecated", False),
        category=category if op["write"] else "read",
        sensitivity=op["sensitivity"],
        fields=fields,  # type: ignore[arg-type]
        sensitive=compile_members(op.get("sensitive", ())),
    )
    if protocol not in _REST and protocol != OPENAPI:
        return replace(spec, reads_body=protocol == "json")
    path, labels = _path_regex(op["path"])
    query = tuple(op.get("query", {}).items())
    required_query = tuple(op.get("required_query", ()))
    required_headers = tuple(op.get("required_headers", ()))
    literal = len(_TEMPLATE_LABEL.sub("", op["path"]))
    leading = []
    for segment in op["path"].split("/")[1 : LEADING + 1]:
        if not segment or "{" in segment or "?" in segment:
            break
        leading.append(segment)
    distinguishing = len(query) + len(required_query) + len(required_headers)
    return replace(
        spec,
        method=op["method"],
        template=op["path"],
        path=path,
        labels=labels,
        query=query,
        required_query=required_query,
        required_headers=required_headers,
        query_keys=frozenset(key for key, _ in query) | frozenset(required_query),
        leading=tuple(leading),
        reads_body=protocol in _REST
        and (
            any(location == "body" for _, location, _ in fields)
            or (bool(query) and op["method"] in ("PUT", "POST"))
        ),
        # Most distinguishing keys first, then the longest literal path, then the current
        # operation before a deprecated one that looks the same on the wire.
        specificity=(distinguishing, literal, 0 if spec.deprecated else 1),
    )


@cache
def _path_regex(template: str) -> tuple[re.Pattern[str], tuple[str, ...]]:
    """`/{Bucket}/{Key+}`: a label is one segment, a greedy label the rest of the path. Cached:
    the catalog's 3,508 REST operations share 2,274 templates (compiling is most of its load)."""
    pattern, labels, last = [], [], 0
    for match in _TEMPLATE_LABEL.finditer(template):
        pattern.append(re.escape(template[last : match.start()]))
        pattern.append("(.+)" if match.group(2) else "([^/]+)")
        labels.append(match.group(1))
        last = match.end()
    tail = template[last:].rstrip("/")
    pattern.append(re.escape(tail))
    return re.compile("".join(pattern) + r"/?\Z"), tuple(labels)
