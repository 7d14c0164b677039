"""`airlock catalog build`: generate catalog/aws/<service>.json from botocore's service models.

The catalog is data a person can read and diff: one file per service, one operation per line,
each naming the source it came from. Only what identification needs is kept: how the operation
shows on the wire (protocol, method, URI template, the query keys and headers that tell it
apart from its neighbours), the request fields a policy reads most (path labels and required
scalar members), and what the operation means by derivation rules (write or read, sensitivity).
Curated meaning (canonical action names, params of the dangerous families) lives in mappings/.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from airlock.store.locations import PACKAGE_ROOT

CATALOG_DIR = PACKAGE_ROOT / "catalog"
SOURCES = CATALOG_DIR / "sources.json"

# Operation names whose verb only reads. Everything else is a write, the safe side to err on.
READ_VERBS = (
    "Describe", "Get", "List", "Head", "Search", "Query", "Scan", "BatchGet", "Select", "Lookup",
    "Filter", "Simulate", "Estimate", "Preview", "Validate", "Check", "Detect", "View", "Poll",
    "Download", "Test", "Verify",
)  # fmt: skip
# Reads by verb that hand out a secret or a credential: judged as writes, not waved through.
SECRET_READS = frozenset(
    {
        "GetSessionToken",
        "GetFederationToken",
        "GetSecretValue",
        "BatchGetSecretValue",
        "GetPasswordData",
        "GetParameter",
        "GetParameters",
        "GetParametersByPath",
        "GetAuthorizationToken",
        "GetAccessKeyInfo",
        "GetCallerIdentity",
    }
)
# Verbs that take something away or open something up: high unless curated otherwise.
REMOVING_VERBS = (
    "Delete", "Terminate", "Remove", "Revoke", "Disable", "Deregister", "Detach", "Purge",
    "Reset", "Stop", "Deactivate", "Leave", "Close", "Authorize",
)  # fmt: skip
# Words in an operation name that touch who can do what, who can see it, or schedule a loss
# (ScheduleKeyDeletion): high sensitivity.
RISKY_WORDS = re.compile(
    r"Policy|Policies|Permission|Acl|PublicAccess|AccessKey|LoginProfile|Password|Grant|"
    r"CreateRole|Credential|Trust|Sharing|Share|SnapshotAttribute|ImageAttribute|Deletion"
)
SERVICE_CATEGORY = {
    "cloudformation": "compute",
    "cloudtrail": "data",
    "dynamodb": "data",
    "ec2": "compute",
    "ecs": "compute",
    "eks": "compute",
    "iam": "identity",
    "kms": "identity",
    "lambda": "compute",
    "logs": "data",
    "organizations": "identity",
    "rds": "data",
    "route53": "network",
    "s3": "storage",
    "secretsmanager": "identity",
    "sns": "messaging",
    "sqs": "messaging",
    "ssm": "compute",
    "sts": "identity",
}
_SCALARS = frozenset({"string", "integer", "long", "boolean", "float", "double", "timestamp"})


def build_aws(sources: dict[str, Any] | None = None, out: Path | None = None) -> list[Path]:
    """Write one catalog file per configured AWS service; returns the files written."""
    import botocore
    import botocore.session

    spec = (sources or json.loads(SOURCES.read_text()))["aws"]
    if botocore.__version__ != spec["version"]:
        raise SystemExit(
            f"catalog/sources.json pins botocore {spec['version']}, this environment has "
            f"{botocore.__version__}: install the pinned version (or update the pin) first"
        )
    session = botocore.session.get_session()
    directory = (out or CATALOG_DIR) / "aws"
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for service in spec["services"]:
        model = session.get_service_model(service)
        path = directory / f"{service}.json"
        path.write_text(render(service_entry(service, model, botocore.__version__)))
        written.append(path)
    return written


def service_entry(service: str, model: Any, version: str) -> dict[str, Any]:
    metadata = model.metadata
    return {
        "source": f"botocore {version}: botocore/data/{service}/{model.api_version}/service-2.json",
        "service": service,
        "protocol": model.protocol,
        "endpoint_prefix": model.endpoint_prefix,
        "signing_name": model.signing_name,
        "target_prefix": metadata.get("targetPrefix"),
        "global_endpoint": metadata.get("globalEndpoint"),
        "category": SERVICE_CATEGORY.get(service, "write"),
        "operations": [
            operation_entry(model, model.operation_model(name)) for name in model.operation_names
        ],
    }


def operation_entry(model: Any, operation: Any) -> dict[str, Any]:
    name = operation.name
    rest = model.protocol in ("rest-json", "rest-xml")
    write = is_write(name, operation.http.get("method", "POST") if rest else None)
    entry: dict[str, Any] = {"name": name, "write": write}
    if operation.deprecated:
        entry["deprecated"] = True
    if rest:
        entry.update(_wire_shape(operation))
    entry["fields"] = _fields(model.protocol, operation)
    secret = sensitive_members(model.protocol, operation)
    if secret:
        entry["sensitive"] = secret  # never stored: pipeline/sensitive.py
    entry["sensitivity"] = sensitivity(name, write)
    if write and operation.output_shape is not None:
        answer = _answer_node(operation.output_shape, 0)
        if answer is not None:
            entry["answer"] = answer  # what a simulated write answers (pipeline/simulation.py)
        wrapper = operation.output_shape.serialization.get("resultWrapper")
        if wrapper:
            entry["result"] = wrapper
    return entry


# Members a simulated answer carries besides the required ones: what an agent reads next.
_IDENTIFYING = re.compile(r"(Id|Ids|Arn|Name|Url|Status|State|Location|ETag|VersionId|Key)$")
_KINDS = {"string": "s", "integer": "i", "long": "i", "float": "f", "double": "f",
          "boolean": "b", "timestamp": "t"}  # fmt: skip
ANSWER_DEPTH = 4


def _answer_node(shape: Any, depth: int) -> dict[str, Any] | None:
    """The output shape, cut to its required and identifying members: each node has its kind
    (k: o structure, l list, s i f b t), its wire name (w) when it differs, a header (h)."""
    node: dict[str, Any] = {}
    kind = shape.type_name
    if kind == "structure":
        if depth > ANSWER_DEPTH:
            return None
        members = {}
        for name, member in shape.members.items():
            wanted = name in shape.required_members or _IDENTIFYING.search(name)
            if not wanted and member.type_name not in ("structure", "list"):
                continue
            child = _answer_node(member, depth + 1)
            if child is None:
                continue
            serialization = member.serialization
            if serialization.get("location") == "header":
                child["h"] = serialization.get("name", name)
            elif serialization.get("location"):
                continue  # a status code, a header map: nothing to echo
            elif serialization.get("name", name) != name:
                child["w"] = serialization["name"]
            members[name] = child
        if not members:
            return None
        node = {"k": "o", "m": members}
    elif kind == "list":
        item = _answer_node(shape.member, depth + 1)
        if item is None:
            return None
        node = {"k": "l", "i": item}
        if shape.serialization.get("flattened"):
            node["flat"] = True
        item_name = shape.member.serialization.get("name")
        if item_name and item_name != "member":
            node["iw"] = item_name
    elif kind in _KINDS:
        node = {"k": _KINDS[kind]}
    else:
        return None  # maps and blobs: left out
    return node


def is_write(name: str, method: str | None) -> bool:
    if name in SECRET_READS:
        return True
    if method is not None:
        return method not in ("GET", "HEAD")
    return not name.startswith(READ_VERBS)


def sensitivity(name: str, write: bool) -> str:
    if not write:
        return "low"
    if name.startswith(REMOVING_VERBS) or RISKY_WORDS.search(name):
        return "high"
    return "medium"


def _wire_shape(operation: Any) -> dict[str, Any]:
    """Method, URI path template, literal query (`?lifecycle`, `?list-type=2`) and the required
    query keys and headers that distinguish operations sharing a path (UploadPart, CopyObject)."""
    path, _, literal = operation.http["requestUri"].partition("?")
    query = {}
    for part in filter(None, literal.split("&")):
        key, sep, value = part.partition("=")
        query[key] = value if sep else None
    required_query, required_headers = [], []
    shape = operation.input_shape
    for member in _required(shape):
        where = shape.members[member].serialization
        if where.get("location") == "querystring":
            required_query.append(where.get("name", member))
        elif where.get("location") == "header":
            required_headers.append(where.get("name", member).lower())
    shape_out: dict[str, Any] = {"method": operation.http["method"], "path": path}
    if query:
        shape_out["query"] = query
    if required_query:
        shape_out["required_query"] = sorted(required_query)
    if required_headers:
        shape_out["required_headers"] = sorted(required_headers)
    return shape_out


def _required(shape: Any) -> list[str]:
    return list(shape.required_members) if shape is not None else []


def _fields(protocol: str, operation: Any) -> dict[str, str]:
    """Request fields read into params, by where the SDK puts them: path labels always, and
    the required scalar members (`uri:Bucket`, `header:x-amz-copy-source`, `body:TableName`)."""
    shape = operation.input_shape
    if shape is None:
        return {}
    fields = {}
    for member, member_shape in shape.members.items():
        where = member_shape.serialization
        location = where.get("location")
        if location == "uri":
            fields[member] = f"uri:{where.get('name', member)}"
        elif member in shape.required_members and member_shape.type_name in _SCALARS:
            fields[member] = _scalar_field(protocol, member, where)
    return {k: v for k, v in fields.items() if v}


def _scalar_field(protocol: str, member: str, where: dict[str, Any]) -> str:
    location = where.get("location")
    if location == "querystring":
        return f"query:{where.get('name', member)}"
    if location == "header":
        return f"header:{where.get('name', member).lower()}"
    if location:
        return ""  # headers maps, status codes: nothing a policy reads by name
    if protocol == "ec2":
        name = where.get("queryName") or _capitalised(where.get("name", member))
        return f"body:{name}"
    if protocol == "rest-xml":
        return ""  # XML payload members: curated mappings read those with JSONPath
    return f"body:{where.get('name', member)}"


def sensitive_members(protocol: str, operation: Any) -> list[str]:
    """Where the request carries the members botocore marks `"sensitive": true` (on the member
    or its shape), as the SDK sends them: `body:` a path into the JSON or XML body (`.` between
    members, `[]` each list item, `{}` each map value; nothing after the colon: the whole body),
    `form:` a query or EC2 form key (`Parameters.member.N.ParameterValue`, N any index),
    `header:`, `header-prefix:` (a headers map), `query:`, `query-map:` and `uri:` for the
    members a REST protocol sends there. A sensitive structure, list or map is named whole."""
    shape = operation.input_shape
    if shape is None:
        return []
    found: list[str] = []
    if protocol in ("query", "ec2"):
        for member, member_shape in shape.members.items():
            key = _form_name(protocol, member_shape, member)
            _secret_paths(protocol, member_shape, key, found, frozenset({shape.name}))
        return [f"form:{path}" for path in found]
    rest = protocol in ("rest-json", "rest-xml")
    payload = shape.serialization.get("payload")
    located: list[str] = []
    for member, member_shape in shape.members.items():
        where = member_shape.serialization
        location = where.get("location") if rest else None
        if location is not None:
            if _is_sensitive(member_shape) or _holds_sensitive(member_shape, frozenset()):
                located.append(_located(location, member_shape, where.get("name", member)))
            continue
        if rest and member == payload:
            if member_shape.type_name != "structure":  # a blob or a string: the body itself
                if _is_sensitive(member_shape):
                    found.append("")
                continue
            root = where.get("name", member) if protocol == "rest-xml" else ""
            if _is_sensitive(member_shape):
                found.append(root)
                continue
            for name, child in member_shape.members.items():
                key = _join(root, child.serialization.get("name", name))
                _secret_paths(protocol, child, key, found, frozenset({member_shape.name}))
            continue
        if rest and payload is not None:
            continue  # not sent: a payload member is the whole body
        key = where.get("name", member)
        if protocol == "rest-xml":
            key = _join(shape.serialization.get("name", shape.name), key)
        _secret_paths(protocol, member_shape, key, found, frozenset({shape.name}))
    return located + [f"body:{path}" for path in found]


def _is_sensitive(shape: Any) -> bool:
    return bool(shape.metadata.get("sensitive"))


def _holds_sensitive(shape: Any, seen: frozenset[str]) -> bool:
    if _is_sensitive(shape):
        return True
    if shape.name in seen:
        return False
    seen = seen | {shape.name}
    if shape.type_name == "structure":
        return any(_holds_sensitive(m, seen) for m in shape.members.values())
    if shape.type_name == "list":
        return _holds_sensitive(shape.member, seen)
    if shape.type_name == "map":
        return _holds_sensitive(shape.key, seen) or _holds_sensitive(shape.value, seen)
    return False


def _located(location: str, shape: Any, name: str) -> str:
    """A REST member sent outside the body: in a header, the query string or the path."""
    if location == "header":
        return f"header:{name.lower()}"
    if location == "headers":
        return f"header-prefix:{name.lower()}"
    if location == "querystring":
        return "query-map:" if shape.type_name == "map" else f"query:{name}"
    if location == "uri":
        return f"uri:{name}"
    raise SystemExit(f"a sensitive member {name!r} is sent in {location!r}: catalog_build "
                     "knows no way to name that place")  # fmt: skip


def _secret_paths(
    protocol: str, shape: Any, path: str, found: list[str], seen: frozenset[str]
) -> None:
    """Append the paths of this value's sensitive parts (itself, when it is sensitive)."""
    if _is_sensitive(shape):
        found.append(path)
        return
    if shape.name in seen:
        return  # a recursive shape: its sensitive members were named on the way down
    seen = seen | {shape.name}
    kind = shape.type_name
    form = protocol in ("query", "ec2")
    if kind == "structure":
        for member, member_shape in shape.members.items():
            if form:
                name = _form_name(protocol, member_shape, member)
            else:
                name = member_shape.serialization.get("name", member)
            _secret_paths(protocol, member_shape, _join(path, name), found, seen)
    elif kind == "list":
        _secret_paths(protocol, shape.member, _list_items(protocol, shape, path), found, seen)
    elif kind == "map":
        if _holds_sensitive(shape.key, seen):
            found.append(path)  # the names themselves are secret: the whole map
            return
        _secret_paths(protocol, shape.value, _map_values(protocol, shape, path), found, seen)


def _form_name(protocol: str, shape: Any, member: str) -> str:
    """A member's name in a query or EC2 form, as botocore's serializers write it."""
    where = shape.serialization
    if protocol == "ec2":
        return where.get("queryName") or _capitalised(where.get("name", member))
    return where.get("name", member)


def _list_items(protocol: str, shape: Any, path: str) -> str:
    item = shape.member.serialization.get("name")
    if protocol == "ec2":
        return f"{path}.N"
    if protocol == "query":
        if shape.serialization.get("flattened"):
            if item:  # `Original.N` becomes `{item}.N`
                path = _join(path.rpartition(".")[0], item)
            return f"{path}.N"
        return f"{path}.{item or 'member'}.N"
    if protocol == "rest-xml":
        if shape.serialization.get("flattened"):
            return f"{path}[]"
        return f"{path}.{item or 'member'}[]"
    return f"{path}[]"


def _map_values(protocol: str, shape: Any, path: str) -> str:
    if protocol in ("query", "ec2"):
        entry = path if shape.serialization.get("flattened") else f"{path}.entry"
        where = shape.value.serialization
        value = where.get("queryName") if protocol == "ec2" else None
        value = value or where.get("name")
        if value and protocol == "ec2":
            value = _capitalised(value)
        return f"{entry}.N.{value or 'value'}"
    if protocol == "rest-xml":
        entry = path if shape.serialization.get("flattened") else f"{path}.entry"
        return f"{entry}[].{shape.value.serialization.get('name', 'value')}"
    return f"{path}{{}}"


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _capitalised(name: str) -> str:
    return name[:1].upper() + name[1:]


def render(entry: dict[str, Any]) -> str:
    """Header fields first, then one operation per line: small diffs when a model changes."""
    head = {k: v for k, v in entry.items() if k != "operations"}
    lines = ["{"]
    for key, value in head.items():
        lines.append(f"  {json.dumps(key)}: {json.dumps(value)},")
    lines.append('  "operations": [')
    operations = [json.dumps(op, separators=(", ", ": ")) for op in entry["operations"]]
    lines.append(",\n".join(f"    {op}" for op in operations))
    lines.append("  ]")
    lines.append("}")
    return "\n".join(lines) + "\n"


# --- OpenAPI descriptions --------------------------------------------------------------------

HTTP_VERBS = ("get", "put", "post", "delete", "patch", "head", "options")
# Words in an operationId that touch who can do what, or secrets: high sensitivity. Read inside
# words ("webhooks" has "hook"), except "voice" (cloned voices) inside "invoices" and "token"
# (a credential) where a model's input tokens are counted.
OPENAPI_RISKY = re.compile(
    r"collaborator|permission|protection|secret|key|(?<!input)(?<![^a-z]count_)(?<!^count_)token(?!count)|member|"
    r"admin|transfer|ruleset|hook|"
    r"role|security|visibility|invitation|runner|oidc|credential|password|policy|(?<!in)voice|"
    r"payout|refund|reversal|externalaccount|bankaccount"  # money out, and where it goes
)


def build_openapi(sources: dict[str, Any] | None = None, out: Path | None = None) -> list[Path]:
    """One catalog file per OpenAPI description in sources.json: npm packages fetched with
    `npm pack` at the pinned version, GitHub repositories at the pinned commit."""
    written = []
    directory = (out or CATALOG_DIR) / "openapi"
    directory.mkdir(parents=True, exist_ok=True)
    for spec in (sources or json.loads(SOURCES.read_text())).get("openapi", []):
        kind, _, package = spec["package"].partition(":")
        if kind == "npm":
            description = _from_npm(package, spec["version"], spec["file"])
        elif kind == "github":
            description = _from_github(package, spec["version"], spec["file"])
        elif kind == "pypi" and package == "stripe":
            description = _from_stripe_python(spec["version"])
        elif kind == "pypi" and package == "anthropic":
            description = _from_anthropic_python(spec["version"])
        else:
            raise SystemExit(f"catalog/sources.json: cannot fetch {spec['package']!r}")
        path = directory / f"{spec['provider']}.json"
        source = f"{spec['package']} {spec['version']}: {spec['file']}"
        path.write_text(render(openapi_entry(spec, description, source)))
        written.append(path)
    return written


def _from_npm(package: str, version: str, file: str) -> dict[str, Any]:
    import subprocess
    import tarfile
    import tempfile

    with tempfile.TemporaryDirectory() as temporary:
        subprocess.run(
            ["npm", "pack", f"{package}@{version}", "--pack-destination", temporary],
            check=True, capture_output=True,
        )  # fmt: skip
        [archive] = Path(temporary).glob("*.tgz")
        with tarfile.open(archive) as tar:
            member = tar.extractfile(f"package/{file}")
            assert member is not None
            return json.load(member)


def _from_github(repository: str, commit: str, file: str) -> dict[str, Any]:
    """The file at the pinned commit: from a local mirror of the repository when
    $AIRLOCK_SPEC_MIRROR names one (<dir>/<owner>+<name>/repo, a bare clone), else downloaded."""
    import os
    import subprocess
    import urllib.request

    mirror = os.environ.get("AIRLOCK_SPEC_MIRROR")
    if mirror:
        clone = Path(mirror) / repository.replace("/", "+") / "repo"
        shown = subprocess.run(["git", "-C", str(clone), "show", f"{commit}:{file}"],
                               check=True, capture_output=True)  # fmt: skip
        return json.loads(shown.stdout)
    url = f"https://raw.githubusercontent.com/{repository}/{commit}/{file}"
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.load(response)


# stripe-python's services call `self._request("post", "/v1/charges/{charge}/capture".format(`.
_STRIPE_CALL = re.compile(r'self\._request\(\s*"(get|post|delete)",\s*"(/v[12]/[^"]*)"')


def _from_stripe_python(version: str) -> dict[str, Any]:
    """Stripe publishes its OpenAPI description in a repository whose large files this
    project's machines cannot fetch; stripe-python, generated from it, carries every operation
    as a (method, path) call in its services. The operationIds are Stripe's own, derived as
    Stripe derives them: the method, then each path segment in PascalCase, `/v1` left out
    (`POST /v1/payouts/{payout}/reverse` → `PostPayoutsPayoutReverse`)."""
    import importlib.metadata

    import stripe

    installed = importlib.metadata.version("stripe")
    if installed != version:
        raise SystemExit(f"catalog/sources.json pins stripe {version}; {installed} is installed")
    paths: dict[str, dict[str, Any]] = {}
    for module in sorted(Path(stripe.__file__).parent.rglob("*_service.py")):
        for method, path in _STRIPE_CALL.findall(module.read_text()):
            paths.setdefault(path, {})[method] = {"operationId": _stripe_operation_id(method, path)}
    return {"servers": [{"url": "https://api.stripe.com"}], "paths": paths}


def _wheel(package: str, version: str) -> Path:
    """The package's wheel at the pinned version, unpacked in a temporary folder (no install:
    an SDK need not be importable beside mitmproxy)."""
    import subprocess
    import sys
    import tempfile
    import zipfile

    folder = Path(tempfile.mkdtemp(prefix=f"airlock-{package}-"))
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         f"{package}=={version}", "-d", str(folder)],
        check=True, capture_output=True,
    )  # fmt: skip
    [wheel] = folder.glob("*.whl")
    zipfile.ZipFile(wheel).extractall(folder / "unpacked")
    return folder / "unpacked"  # left for the system's temporary-file cleanup


# anthropic's resources: `def create(` … `return self._post("/v1/messages/batches", …`, or
# `path_template("/v1/messages/batches/{message_batch_id}/cancel", …)` for one with parameters.
_ANTHROPIC_CALL = re.compile(
    r"^    (?:async )?def (\w+)\("
    r'|self\._(post|delete|patch|put|get|get_api_list)\(\s*(?:path_template\(\s*)?f?"(/v1/[^"]*)"',
    re.M,
)


def _from_anthropic_python(version: str) -> dict[str, Any]:
    """Anthropic publishes no OpenAPI description; its SDK, generated from its API reference,
    calls each operation as a method and path. Each is named as the reference names it: the
    resource path and the method (`messages.batches.create`, `beta.files.upload`)."""
    resources = _wheel("anthropic", version) / "anthropic" / "resources"
    paths: dict[str, dict[str, Any]] = {}
    # The released API first: its names win over the beta's for the same path.
    modules = sorted(
        resources.rglob("*.py"), key=lambda m: ("beta" in m.relative_to(resources).parts, m)
    )
    for module in modules:
        parts = list(module.relative_to(resources).with_suffix("").parts)
        if parts[-1] == "__init__" or (len(parts) > 1 and parts[-1] == parts[-2]):
            parts = parts[:-1]  # messages/messages.py is the messages resource itself
        function = ""
        for found in _ANTHROPIC_CALL.finditer(module.read_text()):
            if found.group(1):
                function = found.group(1)
                continue
            method = "get" if found.group(2) == "get_api_list" else found.group(2)
            name = ".".join([*parts, function])
            paths.setdefault(found.group(3), {}).setdefault(method, {"operationId": name})
    return {"servers": [{"url": "https://api.anthropic.com"}], "paths": paths}


def _stripe_operation_id(method: str, path: str) -> str:
    segments = [s.strip("{}") for s in path.split("/")[1:] if s]
    if segments[0] == "v1":
        segments = segments[1:]
    words = [part for segment in segments for part in re.split(r"[_.]", segment) if part]
    return method.capitalize() + "".join(word[:1].upper() + word[1:] for word in words)


def openapi_entry(spec: dict[str, Any], description: dict[str, Any], source: str) -> dict[str, Any]:
    from urllib.parse import parse_qsl, urlsplit

    operations = []
    # Paths are relative to the server's URL (OpenAPI 3: OpenAI's are under /v1) or the
    # basePath (Swagger 2: Slack's under /api).
    server = (description.get("servers") or [{}])[0].get("url", "")
    base = (urlsplit(server).path or description.get("basePath", "")).rstrip("/")
    for template, item in description["paths"].items():
        for method in HTTP_VERBS:
            operation = item.get(method)
            if operation is None or "operationId" not in operation:
                continue
            write = method not in ("get", "head", "options")
            # Slack names its operations by the path (`chat.postMessage`), its description by
            # an id (`chat_postMessage`): `"names": "path"` keeps the vendor's own name.
            name = template.strip("/") if spec.get("names") == "path" else operation["operationId"]
            labels = re.findall(r"\{([^}]+)\}", template)
            # A query in the path key tells an operation apart (OpenAI's `?beta=true`).
            route, _, literal_query = template.partition("?")
            entry: dict[str, Any] = {
                "name": name,
                "write": write,
                "method": method.upper(),
                "path": base + _multi_segment(route, description, item, operation),
                "fields": {label: f"uri:{label}" for label in labels},
                "sensitivity": openapi_sensitivity(name, method, write),
            }
            secret = openapi_sensitive(description, [*item.get("parameters", []),
                                                     *operation.get("parameters", [])],
                                       operation.get("requestBody"))  # fmt: skip
            if secret:
                entry["sensitive"] = secret
            if literal_query:
                entry["query"] = dict(parse_qsl(literal_query, keep_blank_values=True))
            if operation.get("deprecated"):
                entry["deprecated"] = True
            operations.append(entry)
    entry = {
        "source": source,
        "provider": spec["provider"],
        "protocol": "openapi",
        "hosts": spec["hosts"],
        "category": spec["category"],
        "operations": sorted(operations, key=lambda op: (op["path"], op["method"])),
    }
    if spec.get("methods") == "any":  # the vendor acts alike whatever the HTTP method
        entry["any_method"] = True
    return entry


def _multi_segment(
    template: str, description: dict[str, Any], item: dict[str, Any], operation: dict[str, Any]
) -> str:
    """`{branch}` becomes `{branch+}` where the description says the parameter may hold
    slashes (GitHub's `x-multi-segment: true`: branch names, file paths, refs)."""
    shared = description.get("components", {}).get("parameters", {})
    for parameter in [*item.get("parameters", []), *operation.get("parameters", [])]:
        if "$ref" in parameter:
            parameter = shared.get(parameter["$ref"].rsplit("/", 1)[1], {})
        if parameter.get("in") == "path" and parameter.get("x-multi-segment"):
            template = template.replace(
                "{" + parameter["name"] + "}", "{" + parameter["name"] + "+}"
            )
    return template


def _marked_secret(schema: dict[str, Any]) -> bool:
    """OpenAPI's `format: password`, or an `x-sensitive: true` extension."""
    return schema.get("format") == "password" or schema.get("x-sensitive") is True


def openapi_sensitive(
    description: dict[str, Any], parameters: list[dict[str, Any]], body: dict[str, Any] | None
) -> list[str]:
    """Where an operation's request carries what its description marks secret: parameters
    (`query:`, `header:`) and request-body properties (`body:` paths, as for AWS)."""

    def resolved(node: Any) -> Any:
        seen = 0
        while isinstance(node, dict) and "$ref" in node and seen < 20:
            node, seen = _pointer(description, node["$ref"]), seen + 1
        return node

    found: list[str] = []
    for parameter in map(resolved, parameters):
        schema = resolved(parameter.get("schema", parameter))
        if not isinstance(schema, dict) or not _marked_secret(schema):
            continue
        if parameter.get("in") == "query":
            found.append(f"query:{parameter['name']}")
        elif parameter.get("in") == "header":
            found.append(f"header:{parameter['name'].lower()}")
        elif parameter.get("in") == "path":
            found.append(f"uri:{parameter['name']}")
        elif parameter.get("in") in ("body", "formData"):  # Swagger 2
            found.append(f"body:{'' if parameter['in'] == 'body' else parameter['name']}")
    schemas = [media.get("schema") for media in (resolved(body) or {}).get("content", {}).values()]
    schemas += [p.get("schema") for p in map(resolved, parameters) if p.get("in") == "body"]
    paths: list[str] = []
    for schema in schemas:
        _openapi_secret_paths(resolved, schema, "", paths, 0)
    found += [f"body:{path}" for path in dict.fromkeys(paths)]
    return found


def _openapi_secret_paths(
    resolved: Any, schema: Any, path: str, found: list[str], depth: int
) -> None:
    schema = resolved(schema)
    if not isinstance(schema, dict) or depth > 12:
        return
    if _marked_secret(schema):
        found.append(path)
        return
    for combined in ("allOf", "anyOf", "oneOf"):
        for part in schema.get(combined, ()):
            _openapi_secret_paths(resolved, part, path, found, depth + 1)
    for name, child in (schema.get("properties") or {}).items():
        _openapi_secret_paths(resolved, child, _join(path, name), found, depth + 1)
    if isinstance(schema.get("items"), dict):
        _openapi_secret_paths(resolved, schema["items"], f"{path}[]", found, depth + 1)
    if isinstance(schema.get("additionalProperties"), dict):
        extra = schema["additionalProperties"]
        _openapi_secret_paths(resolved, extra, f"{path}{{}}", found, depth + 1)


def _pointer(description: dict[str, Any], ref: str) -> Any:
    node: Any = description
    for part in ref.removeprefix("#/").split("/"):
        node = (
            node.get(part.replace("~1", "/").replace("~0", "~"), {})
            if isinstance(node, dict)
            else {}
        )
    return node


def openapi_sensitivity(name: str, method: str, write: bool) -> str:
    if not write:
        return "low"
    if method == "delete" or OPENAPI_RISKY.search(name.lower()):
        return "high"
    return "medium"


def main() -> int:
    for path in build_aws() + build_openapi():
        print(f"wrote {path.relative_to(PACKAGE_ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
