"""`airlock`: run the proxy, decide held requests, verify the audit trail.

The console never talks to the proxy: every command here reads and writes the store, which is
what lets any number of proxies and reviewers share one database.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import signal
import sys
import time
import urllib.parse
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from airlock.console.redacted import hidden_warning
from airlock.console.running import Running, announce, running_proxies, store_name
from airlock.console.untrusted import escaped, params_text, query_text, shown, visible
from airlock.store.anchor import PUBLIC_FILE
from airlock.store.locations import (
    PACKAGE_ROOT,
    ca_dir,
    database_url,
    default_data_dir,
    loose_modes,
    make_private_dir,
    shipped,
)

ADDON_SCRIPT = PACKAGE_ROOT / "addons" / "gate.py"
CA_CERT_NAME = "mitmproxy-ca-cert.pem"
SHIPPED_MAPPINGS, SHIPPED_POLICIES = shipped("mappings"), shipped("policies")


def _db_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        default=None,
        metavar="URL",
        help="SQLAlchemy URL of the store, the same the proxy uses "
        "(default: $AIRLOCK_DB, else the embedded SQLite file airlock.db in the data directory)",
    )
    _data_dir_argument(parser)


def _data_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="where the embedded store and the CA live (default: $AIRLOCK_DATA_DIR, else this "
        "checkout when run from one, else ./airlock-data)",
    )


def _resolve_locations(args: argparse.Namespace) -> None:
    """--db and --confdir default to places inside the data directory (store/locations.py)."""
    if "data_dir" not in args:
        return
    data_dir = Path(args.data_dir).resolve() if args.data_dir else default_data_dir()
    args.data_dir = data_dir
    if "db" in args and args.db is None:
        args.db = os.environ.get("AIRLOCK_DB") or database_url(data_dir)
    if "confdir" in args and args.confdir is None:
        args.confdir = str(ca_dir(data_dir))


def _reviewers_argument(parser: argparse.ArgumentParser, mappings: bool = False) -> None:
    parser.add_argument(
        "--policies",
        default=None,
        metavar="DIR",
        help="where reviewers.yaml is, when reviewers are restricted (default: the folder the "
        "proxy running from --data-dir on this store runs with, else the shipped policies/)",
    )
    if mappings:
        parser.add_argument(
            "--mappings",
            default=None,
            metavar="DIR",
            help="the mappings that say where a held request's params are, to edit them "
            "(default: the proxy's, as for --policies, else the shipped mappings/)",
        )


def _proxy_folders(args: argparse.Namespace) -> None:
    """--policies and --mappings not given: the folders of the proxy running from the data
    directory on this store. The shipped ones would read no reviewers file and let anyone
    decide what the proxy restricts. Says which it reads when no proxy, or several that
    disagree, run."""
    from airlock.console.running import proxies_on

    unset = [name for name in ("policies", "mappings") if getattr(args, name, "") is None]
    if not unset:
        return
    proxies = proxies_on(args.data_dir, args.db)
    if not proxies:
        print(f"airlock {args.command}: no proxy is running from {args.data_dir} on this store: "
              "reading the shipped folders (give --policies DIR, the folder the proxy runs "
              "with, or the proxy's --data-dir)", file=sys.stderr)  # fmt: skip
    for name in unset:
        folders = list(dict.fromkeys(getattr(p, name) for p in proxies))
        setattr(args, name, folders[0] if folders else str(shipped(name)))
        if len(folders) > 1:
            ports = ", ".join(f"{getattr(p, name)} (port {p.port})" for p in proxies)
            print(f"airlock {args.command}: the proxies on this store run with different "
                  f"--{name}: {ports}; reading {folders[0]} (give --{name} to choose)",
                  file=sys.stderr)  # fmt: skip


def _unsealed_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-unsealed",
        action="store_true",
        help="write decisions without the audit key (keys/audit-ed25519.pem in --data-dir) to "
        "a store whose events are sealed; refused otherwise, as `airlock audit verify` with the "
        "key then reports them as unsealed for good",
    )


def _reviewers(args: argparse.Namespace) -> Any:
    from airlock.pipeline.agents import load_reviewers

    if not Path(args.policies).is_dir():  # a typo would read as "no reviewers file"
        raise SystemExit(f"airlock: --policies {args.policies}: no such folder")
    return load_reviewers(Path(args.policies))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="airlock",
        description="A policy gate between AI agents and the APIs they write to.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="start the proxy",
        description="Start the Airlock proxy (mitmproxy with the gate addon, and only the "
        "mitmproxy addons it uses). Agents point HTTPS_PROXY at it and trust the CA it prints.",
    )
    run.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    run.add_argument(
        "--port", type=int, default=8080, help="port to listen on (default: %(default)s)"
    )
    _db_argument(run)
    run.add_argument(
        "--mappings",
        default=str(SHIPPED_MAPPINGS),
        metavar="DIR",
        help="folder of YAML mappings (default: the shipped mappings/)",
    )
    run.add_argument(
        "--policies",
        default=str(SHIPPED_POLICIES),
        metavar="DIR",
        help="folder of YAML policies (default: the shipped policies/)",
    )
    run.add_argument(
        "--durability",
        choices=["full", "process"],
        default="full",
        help="what a decision's commit survives before its request is released: full, a power "
        "loss (an fsync per commit group); process, a crash of the proxy or its decider but "
        "not a power loss, nor on PostgreSQL a crash of the server (its last ~0.6 s of "
        "commits), for less latency (default: %(default)s)",
    )
    run.add_argument(
        "--guard-port",
        type=int,
        default=0,
        metavar="PORT",
        help="also serve the Guard API here (JSON over HTTP: tool calls that are not HTTP "
        "requests, judged by the same policies and queue; README: Guard API); 0: off",
    )
    run.add_argument(
        "--guard-host",
        default="127.0.0.1",
        metavar="ADDR",
        help="address the Guard API listens on (default: %(default)s)",
    )
    run.add_argument(
        "--decider",
        choices=["worker", "in-process"],
        default="worker",
        help="where requests are decided and recorded: worker, a process beside the proxy on "
        "another core (throughput); in-process, a thread of the proxy's own process (one "
        "process, small setups); the same decisions either way (default: %(default)s)",
    )
    run.add_argument(
        "--retention",
        type=int,
        default=0,
        metavar="DAYS",
        help="prune runs, approvals and audit events older than this, hourly, leaving a signed "
        "checkpoint at the cut (default: 0, keep everything; the EU AI Act asks deployers to "
        "keep logs at least 180 days)",
    )
    run.add_argument(
        "--witness-url",
        metavar="URL",
        help="also POST every signed audit checkpoint (text/plain) to this URL: a copy outside "
        "this machine that whoever controls it cannot rewrite",
    )
    run.add_argument(
        "--confdir",
        default=None,
        metavar="DIR",
        help="where the proxy's CA lives; generated on first start (default: certs/ in the "
        "data directory)",
    )
    run.add_argument(
        "--route",
        action="append",
        default=[],
        metavar="HOST=ADDR:PORT",
        help="connect to ADDR:PORT for HOST, keeping Host, SNI and connection reuse "
        "(like curl --resolve; repeatable; for tests and demos)",
    )
    run.add_argument(
        "--upstream-ca", metavar="FILE", help="also trust this CA (PEM) for upstream servers"
    )
    run.add_argument(
        "--hold-timeout",
        type=int,
        default=25,
        metavar="SECONDS",
        help="how long one attempt awaiting approval is held before it is answered 503 "
        "'approval pending' (below SDK timeouts; default: %(default)s)",
    )
    run.add_argument(
        "--max-held-per-agent",
        type=int,
        default=32,  # addons/runtime.py MAX_HELD_PER_AGENT, for mitmdump -s users
        metavar="N",
        help="requests of one agent held at once; past it, a request that needs approval is "
        "answered 503 'approval pending' at once (its retry joins the approval) rather than "
        "held in memory (0: no limit; default: %(default)s)",
    )
    run.add_argument(
        "--mcp-keepalive",
        type=int,
        default=10,
        metavar="SECONDS",
        help="a held MCP tool call's event stream is renewed this often, with a progress "
        "notification, so the client keeps waiting (default: %(default)s)",
    )
    run.add_argument(
        "--approval-timeout",
        type=int,
        default=600,
        metavar="SECONDS",
        help="how long an approval stays open across the SDK's retries (default: %(default)s)",
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        default=9464,
        metavar="PORT",
        help="Prometheus /metrics port on loopback; 0 turns it off (default: %(default)s)",
    )
    run.add_argument(
        "--body-size-limit",
        default="10m",
        metavar="SIZE",
        help="largest request body accepted, e.g. 10m (default: %(default)s)",
    )
    run.add_argument(
        "--mode",
        choices=["enforce", "shadow", "off", "simulate"],
        default="enforce",
        help="enforce decisions (default); shadow: decide and record but forward everything; "
        "off: record only; simulate: writes are decided, recorded and answered by Airlock in "
        "the vendor's format, never forwarded (reads go upstream)",
    )
    run.add_argument("--webhook", action="append", default=[], metavar="URL",
                     help="notify reviewers at URL when a request is held and settled; "
                     "slack:URL for a Slack incoming webhook (repeatable)")  # fmt: skip
    run.add_argument("--quiet", action="store_true", help="do not print the set-up banner")

    pending = commands.add_parser(
        "pending",
        help="list requests waiting for approval",
        description="List held requests waiting for a reviewer, oldest first.",
    )
    _db_argument(pending)
    pending.add_argument("--json", action="store_true", help="print JSON (one array) for scripts")

    approve = commands.add_parser(
        "approve",
        help="approve a held request",
        description="Approve a held request: the proxy holding it forwards it to the upstream.",
    )
    approve.add_argument(
        "id", help="approval id (or an unambiguous prefix of at least 4 characters)"
    )
    approve.add_argument(
        "--reviewer", default=getpass.getuser(), help="your name (default: OS user)"
    )
    approve.add_argument("--reason", help="why (recorded in the audit trail)")
    approve.add_argument(
        "--set", action="append", default=[], metavar="PARAM=VALUE",
        help="approve it with this param changed (repeatable): the edited request is decided "
        "again and released instead; only params read from one body or query location can be "
        "edited",
    )  # fmt: skip
    _db_argument(approve)
    _reviewers_argument(approve, mappings=True)
    _unsealed_argument(approve)

    deny = commands.add_parser(
        "deny",
        help="deny a held request",
        description="Deny a held request: the agent receives 403 with your reason.",
    )
    deny.add_argument("id", help="approval id (or an unambiguous prefix of at least 4 characters)")
    deny.add_argument("--reason", required=True, help="why (shown to the agent, recorded)")
    deny.add_argument("--reviewer", default=getpass.getuser(), help="your name (default: OS user)")
    _db_argument(deny)
    _reviewers_argument(deny)
    _unsealed_argument(deny)

    runs = commands.add_parser(
        "runs", help="read the record of one run", description="Read the record of one run."
    )
    runs_commands = runs.add_subparsers(dest="runs_command", required=True)
    show = runs_commands.add_parser(
        "show",
        help="one run as an auditor reads it",
        description="One run: its request (redacted, as recorded), decision and why, approvals "
        "and votes, what the upstream answered and the identifiers it returned, and how to "
        "undo it.",
    )
    show.add_argument("id", help="run (request) id, or an unambiguous prefix of 6+ characters")
    show.add_argument("--json", action="store_true", help="print JSON for scripts")
    show.add_argument("--mappings", default=str(SHIPPED_MAPPINGS), metavar="DIR")
    _db_argument(show)

    undo = commands.add_parser(
        "undo",
        help="print (or send) the request that undoes a run",
        description="Print the compensating request for a run (a refund of a charge, the "
        "termination of the instances it launched, the deletion of the message it posted), "
        "from the run's params and the identifiers its upstream returned. With --execute it "
        "is sent through Airlock, decided by policy (it may need approval) and recorded as the "
        "undo of the run, with credentials from your environment (never stored).",
    )
    undo.add_argument("id", help="run (request) id, or an unambiguous prefix of 6+ characters")
    undo.add_argument("--execute", action="store_true", help="send it through Airlock")
    undo.add_argument(
        "--proxy",
        default=os.environ.get("AIRLOCK_PROXY", "http://127.0.0.1:8080"),
        help="Airlock's proxy (default: $AIRLOCK_PROXY, else %(default)s)",
    )
    undo.add_argument(
        "--agent", default=os.environ.get("AIRLOCK_AGENT"),
        help="the identity to send it as, when agents authenticate (default: $AIRLOCK_AGENT; "
        "the key from $AIRLOCK_AGENT_KEY)",
    )  # fmt: skip
    undo.add_argument("--mappings", default=str(SHIPPED_MAPPINGS), metavar="DIR")
    undo.add_argument(
        "--confdir", default=None, metavar="DIR", help="where Airlock's CA is (as for run)"
    )
    _db_argument(undo)

    report = commands.add_parser(
        "report",
        help="what a simulated trial of an agent would have done",
        description="Summarise an agent's simulated writes (airlock run --mode simulate, "
        "simulate: true in the agents file, or a SIMULATE rule): writes per action and "
        "operation, money per currency, recipients, instances, deletions, what would have been "
        "blocked or held, and the riskiest writes.",
    )
    report.add_argument("--agent", required=True, help="the agent whose trial to summarise")
    report.add_argument("--since", metavar="TIME", help="from this time on (ISO 8601, UTC)")
    report.add_argument("--json", action="store_true", help="print JSON for scripts")
    _db_argument(report)

    check = commands.add_parser(
        "check",
        help="validate mapping and policy files",
        description="Validate mapping and policy YAML: schema, unknown keys, JSONPath and regexes "
        "that do not compile, duplicate ids, mappings that can never be reached. Prints each "
        "problem as file:line:column: message; exits 1 when there is any.",
    )
    check.add_argument(
        "paths",
        nargs="*",
        type=Path,
        metavar="PATH",
        help="files or folders (default: the shipped mappings/ and policies/)",
    )

    explain = commands.add_parser(
        "explain",
        help="show what Airlock would decide for a request",
        description="Run one request through mapping and policy without the proxy: prints the "
        "request document (redacted), the mapping that matched and why the others for that host "
        "did not, the action, params and the decision with the rules that fired.",
    )
    explain.add_argument(
        "request",
        help="a curl command line (quoted), a file holding a raw HTTP request or a HAR, "
        "or - to read one of those from standard input",
    )
    explain.add_argument("--har-entry", type=int, default=0, metavar="N",
                         help="which entry of a HAR file (default: the first)")  # fmt: skip
    explain.add_argument("--agent", default="anonymous", help="the agent sending it")
    explain.add_argument("--mappings", default=str(SHIPPED_MAPPINGS), metavar="DIR")
    explain.add_argument("--policies", default=str(SHIPPED_POLICIES), metavar="DIR")
    explain.add_argument("--json", action="store_true", help="print JSON for scripts")

    test = commands.add_parser(
        "test",
        help="run the policy tests",
        description="Run the policy test files (*.test.yaml) offline against the mappings and "
        "policies, pytest-like; exits 1 when a case fails.",
    )
    test.add_argument("paths", nargs="*", type=Path, metavar="PATH",
                      help="test files or folders (default: the policies folder)")  # fmt: skip
    test.add_argument("--mappings", default=str(SHIPPED_MAPPINGS), metavar="DIR")
    test.add_argument("--policies", default=str(SHIPPED_POLICIES), metavar="DIR")
    test.add_argument("-q", "--quiet", action="store_true", help="print failures only")
    test.add_argument(
        "--replay",
        action="store_true",
        help="instead of the test files: decide the decisions recorded in the store (--db) "
        "again with --policies, and print every one that would change",
    )
    test.add_argument("--since", type=float, metavar="HOURS",
                      help="with --replay: only decisions of the last HOURS hours")  # fmt: skip
    test.add_argument("--limit", type=int, metavar="N",
                      help="with --replay: only the newest N decisions")  # fmt: skip
    _db_argument(test)

    review = commands.add_parser(
        "review",
        help="the reviewer console (full-screen)",
        description="Held requests, live: a = approve, e = edit a param and approve the edited "
        "request, d = deny (reason required), / = filter, h = history, r = refresh, q = quit. "
        "Talks to the store only, like the proxy.",
    )
    review.add_argument(
        "--reviewer", default=getpass.getuser(), help="your name (default: OS user)"
    )
    _db_argument(review)
    _reviewers_argument(review, mappings=True)
    _unsealed_argument(review)

    agents = commands.add_parser(
        "agents", help="manage agent identities",
        description="Agent identities live in policies/agents.yaml (see README).",
    )  # fmt: skip
    agents_commands = agents.add_subparsers(dest="agents_command", required=True, metavar="COMMAND")
    key = agents_commands.add_parser(
        "key",
        help="make a new key for an agent",
        description="Print a new random key for AGENT (give it to the agent, once) and the line "
        "to put in policies/agents.yaml, which holds only its salted hash.",
    )
    key.add_argument("agent", help="the agent's id, e.g. billing-bot")
    key.add_argument("--role", action="append", default=[], help="a role (repeatable)")

    vocabulary = commands.add_parser(
        "vocabulary",
        help="print the canonical action vocabulary as a Markdown table",
        description="List every canonical action the mappings produce, with its category, "
        "sensitivity and the mappings that produce it (the table in README.md).",
    )
    vocabulary.add_argument("--mappings", default=str(SHIPPED_MAPPINGS), metavar="DIR")

    mappings = commands.add_parser(
        "mappings", help="draft mappings", description="Commands that write mapping files."
    )
    mappings_commands = mappings.add_subparsers(
        dest="mappings_command", required=True, metavar="COMMAND"
    )
    draft = mappings_commands.add_parser(
        "import",
        help="draft a mapping file from an OpenAPI 3 description",
        description="Turn every write operation (POST, PUT, PATCH, DELETE) of an OpenAPI 3 "
        "description into a URL mapping: action from the operationId in snake case, "
        "sensitivity from the verb and words touching access or secrets, path parameters as "
        "captures, top-level JSON body properties as params. Review the draft, then put it in "
        "mappings/ and run `airlock check`.",
    )
    draft.add_argument(
        "--openapi", required=True, metavar="FILE", help="the description (.json or .yaml)"
    )
    draft.add_argument(
        "--provider", required=True, help="provider name for the mappings, e.g. billing"
    )
    draft.add_argument(
        "--host", required=True, action="append", help="host that serves the API (repeatable)"
    )
    draft.add_argument(
        "--category", default="write", help="category of its writes (default: %(default)s)"
    )
    draft.add_argument("--out", metavar="FILE", help="write here instead of to standard output")

    doctor = commands.add_parser(
        "doctor",
        help="check that this shell's clients will go through Airlock",
        description="Check, line by line, what an agent's machine needs: the proxy variables "
        "(upper and lower case) and the proxy answering, each client family's CA variable "
        "holding Airlock's CA (requests, httpx/urllib, boto3, Node, curl), Node's proxy switch, "
        "stripe-python's settings, and the store. Prints what to run to fix each; exit 1 if "
        "anything needs fixing.",
    )
    _db_argument(doctor)

    demo = commands.add_parser(
        "demo",
        help="see Airlock work in two minutes: local stand-ins, a scripted agent, the console",
        description="Start Airlock on a throwaway store with local stand-ins for Stripe, Slack, "
        "GitHub and AWS (TLS on loopback, routed as the real hostnames), run a scripted agent "
        "that uses the official SDKs through it, open the reviewer console for the three calls "
        "it holds, then verify the audit trail and summarise what was decided. Needs the SDKs "
        "the tests use (make demo installs them).",
    )
    demo.add_argument(
        "--auto", action="store_true",
        help="decide the held calls without the console: approve the customer deletion, deny "
        "the rest",
    )  # fmt: skip
    demo.add_argument("--keep", action="store_true", help="keep the demo's folder afterwards")

    hook = commands.add_parser(
        "hook",
        help="agent hooks that guard tool calls through the Guard API",
        description="claude-code: a Claude Code PreToolUse hook (reads the event on stdin, "
        "answers in the hook's JSON). Guards shell commands (run_shell), file edits (edit_file) "
        "and MCP tools (mcp.<server>.<tool>) with the Guard API at AIRLOCK_GUARD_URL, as "
        "AIRLOCK_AGENT with AIRLOCK_AGENT_KEY. Needs the SDK (pip install ./sdk).",
    )
    hook.add_argument("kind", choices=["claude-code"])
    hook.add_argument("--wait", type=float, default=50.0,
                      help="seconds to wait for a reviewer (below the hook's timeout)")  # fmt: skip

    reload = commands.add_parser(
        "reload",
        help="make running proxies re-read their configuration",
        description="Check the mappings, policies, agents and reviewers each running proxy "
        "(started from the data directory) was started with, then tell it to re-read them "
        "(SIGHUP). A broken edit is reported with file:line and nothing is reloaded: the proxy "
        "keeps deciding with its last good configuration.",
    )
    _data_dir_argument(reload)

    rekey = commands.add_parser(
        "rekey",
        help="make this data directory's request key the store's (its old one lost)",
        description="Approvals are bound to their requests with the request key "
        "(keys/request-hash.key in the data directory), and every instance on one store must "
        "hold the same one. When no copy of the store's key is left, this makes the data "
        "directory's key the store's (made if missing): approvals still open were bound with "
        "the lost key and no retry can join them, so they are expired, on record. Refused "
        "while an instance runs on the store. Then give every instance a copy of the key.",
    )
    _db_argument(rekey)

    audit = commands.add_parser(
        "audit", help="check the audit trail", description="Commands for auditors."
    )
    audit_commands = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    verify = audit_commands.add_parser(
        "verify",
        help="verify the hash chain and every record against it",
        description="Check that no audit event was edited, deleted or reordered and that every "
        "run and approval matches the event that recorded it. With --export FILE, check an "
        "export offline instead (no database). Exit 0 when intact, 1 otherwise.",
    )
    _db_argument(verify)
    verify.add_argument(
        "--export", metavar="FILE", help="a JSON-lines export to check, without the database"
    )
    verify.add_argument(
        "--checkpoint", metavar="FILE",
        help="a signed checkpoint to check the chain against (default: the data directory's "
        "checkpoints/latest, when there is one); with --export, checked in place of the one "
        "the export carries (a witness's copy, say)",
    )  # fmt: skip
    verify.add_argument(
        "--public-key", metavar="KEY|FILE", action="append",
        help="the audit key (airlock-audit+BASE64, or a file holding it; default: the data "
        "directory's keys/audit-ed25519.pub); repeat it for instances with keys of their own. "
        "With a key, every group of events must carry its writer's seal",
    )  # fmt: skip
    verify.add_argument(
        "--before-seals", action="store_true",
        help="the store was written before seals (an Airlock older than them): a chain with no "
        "seal at all is not refused for that",
    )  # fmt: skip
    export = audit_commands.add_parser(
        "export",
        help="write the audit trail out, for auditors and SIEMs",
        description="Stream every audit event (decisions, outcomes, approvals, votes) in chain "
        "order, each with its position, hash and the hash before it; redacted as stored. "
        "`airlock audit verify --export FILE` checks a JSON-lines export offline.",
    )
    _db_argument(export)
    export.add_argument(
        "--format", choices=["jsonl", "csv", "ocsf"], default="jsonl",
        help="jsonl (verifiable offline), csv, or ocsf (an OCSF API Activity event per "
        "decision, as JSON lines) (default: %(default)s)",
    )  # fmt: skip
    export.add_argument("--since", metavar="TIME", help="from this time on (ISO 8601, UTC)")
    export.add_argument("--until", metavar="TIME", help="before this time (ISO 8601, UTC)")
    export.add_argument("--out", metavar="FILE", help="write here instead of standard output")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _resolve_locations(args)
    handlers = {
        "run": cmd_run,
        "pending": cmd_pending,
        "approve": cmd_decide,
        "deny": cmd_decide,
        "audit": cmd_audit_verify,
        "check": cmd_check,
        "explain": cmd_explain,
        "vocabulary": cmd_vocabulary,
        "test": cmd_test,
        "agents": cmd_agents_key,
        "review": cmd_review,
        "mappings": cmd_mappings_import,
        "reload": cmd_reload,
        "rekey": cmd_rekey,
        "doctor": cmd_doctor,
        "demo": cmd_demo,
        "hook": cmd_hook,
        "runs": cmd_runs_show,
        "undo": cmd_undo,
        "report": cmd_report,
    }
    try:
        return handlers[args.command](args)
    except (NoStore, Refused) as e:
        print(f"airlock {args.command}: {e}", file=sys.stderr)
        return 2


# --- run -------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from airlock.addons.runtime import compile_config, precompiled
    from airlock.console.proxy_master import run_proxy
    from airlock.pipeline.yaml_source import ConfigError

    mappings, policies = Path(args.mappings).resolve(), Path(args.policies).resolve()
    try:  # the proxy would refuse to start too; say why in one line, before any banner
        config, sources = compile_config(mappings, policies)
    except ConfigError as e:
        print(f"airlock run: {e}", file=sys.stderr)
        return 2
    problem = (
        _ports_taken(args)
        or _unusable_upstream_ca(args.upstream_ca)
        or _unusable_witness(args.witness_url)
        or _unwritable(args.data_dir, "--data-dir")
        or _unwritable(Path(args.confdir), "--confdir")
        or _store_unprepared(args.db, args.data_dir)
    )
    if problem:
        print(f"airlock run: {problem}", file=sys.stderr)
        return 2
    _warn_names_on_trust("airlock run", config)  # once it will start: a refusal is one line
    for loose in _loose_modes(args):
        print(f"airlock run: warning: {loose}", file=sys.stderr)
    confdir = Path(args.confdir).resolve()
    ca_cert = ensure_ca(confdir)
    audit_key = _audit_public_key(args.data_dir)
    if not args.quiet:
        print_agent_setup(args.host, args.port, ca_cert)
        print(
            f"Audit checkpoints are signed with {audit_key}\n  (give it to auditors: "
            f"airlock audit verify --public-key; it is in {args.data_dir / PUBLIC_FILE})\n"
        )
    # `airlock reload` finds this process from now on; until the proxy listens for SIGHUP
    # (addons/runtime.py), one would end it (the signal's default): it is ignored meanwhile,
    # the configuration being read as the proxy starts anyway.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    running = Running(os.getpid(), args.port, str(mappings), str(policies), store_name(args.db))
    announce(args.data_dir, running)
    precompiled(config, sources, mappings, policies)  # the proxy below takes it, not the disk
    run_proxy(proxy_arguments(args, confdir))
    return 0


def _warn_names_on_trust(command: str, config: Any) -> None:
    """Per-agent budgets, rates, agent and role conditions and reviewer roles, said at start and
    reload when no agents file makes agents prove their names (console/check.py)."""
    from airlock.console.check import names_on_trust

    for problem in names_on_trust(config.policies.rules, config.agents):
        print(f"{command}: {problem}", file=sys.stderr)


def _ports_taken(args: argparse.Namespace) -> str | None:
    """Said with the flag that fixes it, before mitmproxy prints a traceback about its option."""
    import socket

    wanted = [(args.port, "--port")]
    if args.metrics_port:
        wanted.append((args.metrics_port, "--metrics-port"))
    if args.guard_port:
        wanted.append((args.guard_port, "--guard-port"))
    for port, flag in wanted:
        with socket.socket() as probe:
            # as servers bind: a port left in TIME_WAIT by a stopped proxy is free
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                host = {"--port": args.host, "--guard-port": args.guard_host}.get(flag, "127.0.0.1")
                probe.bind((host, port))
            except OSError as e:
                extra = ", or 0 to turn metrics off" if flag == "--metrics-port" else ""
                return (f"port {port} is taken ({e.strerror}): another Airlock or program "
                        f"listens there; choose another with {flag} PORT{extra}")  # fmt: skip
    return None


def _unusable_witness(url: str | None) -> str | None:
    parts = urllib.parse.urlsplit(url or "")
    if url and (parts.scheme not in ("http", "https") or not parts.hostname):
        return f"--witness-url {url}: not an http(s) URL"
    return None


def _unusable_upstream_ca(path: str | None) -> str | None:
    if not path:
        return None
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as e:
        return f"--upstream-ca {path}: cannot be read ({e.strerror})"
    if "-----BEGIN CERTIFICATE-----" not in text:
        return f"--upstream-ca {path}: not a PEM certificate (no BEGIN CERTIFICATE line)"
    return None


def _unwritable(folder: Path, flag: str) -> str | None:
    """The store, the CA and the audit keys are written here: say so before mitmproxy fails."""
    import tempfile

    try:
        make_private_dir(folder)  # 0700 when made here; an existing one is named by _loose_modes
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        return f"{flag} {folder}: cannot write there ({e.strerror}); choose a folder you can write"
    return None


def _loose_modes(args: argparse.Namespace) -> list[str]:
    """The data directory, the SQLite store and the keys where other OS users can read them:
    said at start, never changed (an operator may share them on purpose)."""
    from sqlalchemy.engine import make_url

    from airlock.store.anchor import KEY_FILE as AUDIT_KEY
    from airlock.store.keys import KEY_FILE as REQUEST_KEY
    from airlock.store.schema import normalise_url

    private = [args.data_dir / AUDIT_KEY, args.data_dir / REQUEST_KEY,
               Path(args.confdir) / "mitmproxy-ca.pem"]  # fmt: skip
    try:
        parsed = make_url(normalise_url(args.db))
    except Exception:  # said by the checks before, in their words
        parsed = None
    if parsed is not None and parsed.get_backend_name() == "sqlite" and parsed.database:
        database = Path(parsed.database)
        private += [database, Path(f"{database}-wal"), Path(f"{database}-shm")]
    return loose_modes(args.data_dir, private)


def _store_unreachable(url: str) -> str | None:
    """Why the store cannot be opened, or None (nothing is written)."""
    from airlock.store.schema import open_engine

    try:
        engine = open_engine(url)
        with engine.connect():
            pass
        engine.dispose()
    except Exception as e:
        return _cannot_open(url, e)
    return None


def _store_unprepared(url: str, data_dir: Path) -> str | None:
    """Why the store cannot be used, or None. Before the proxy starts, its tables are made and
    what stopped proxy processes of this host left is settled (sealed with the audit key), as
    the decider does again when it starts (for `mitmdump -s` users): `airlock pending` and the
    console work from the proxy's first second, and no reviewer can approve an approval whose
    holders are gone."""
    import socket

    from airlock.store.anchor import load_or_create_key
    from airlock.store.approvals import settle_what_gone_instances_left
    from airlock.store.instances import Here
    from airlock.store.keys import RequestKeyError, bind_to_store, load_or_create_request_key
    from airlock.store.schema import create_schema, open_engine
    from airlock.store.seals import Sealer, seal_with

    try:
        engine = open_engine(url)
        create_schema(engine)
        seal_with(engine, Sealer(load_or_create_key(data_dir)))
        bind_to_store(engine, load_or_create_request_key(data_dir), data_dir)
        # Not yet the proxy's own instance name: any earlier instance with this pid is gone.
        here = Here(f"{socket.gethostname()}-{os.getpid()}.start")
        settle_what_gone_instances_left(engine, here)
        engine.dispose()
    except RequestKeyError as e:
        return str(e)
    except Exception as e:
        return _cannot_open(url, e)
    return None


def _cannot_open(url: str, error: Exception) -> str:
    from sqlalchemy.engine import make_url

    shown = make_url(url).render_as_string(hide_password=True)
    cause = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
    return f"cannot open the store {shown}: {cause} (--db URL, or $AIRLOCK_DB)"


def cmd_rekey(args: argparse.Namespace) -> int:
    from airlock.store.keys import (
        KEY_FILE,
        RequestKeyError,
        fingerprint,
        load_or_create_request_key,
        replace_store_key,
    )

    engine = _reviewing_engine(args)  # expiring approvals writes audit events: sealed
    try:
        key = load_or_create_request_key(args.data_dir)
        expired = replace_store_key(engine, key)
    except RequestKeyError as e:
        print(f"airlock rekey: {e}", file=sys.stderr)
        return 1
    finally:
        _checkpoint_reviewed(engine)
        engine.dispose()
    path = args.data_dir / KEY_FILE
    print(f"the store's request key is now {path} (fingerprint {fingerprint(key)})")
    print(f"expired {len(expired)} open approvals bound with the lost key"
          + "".join(f"\n  {approval_id}" for approval_id in expired))  # fmt: skip
    print(f"give every instance on this store a copy of {path} before it starts")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from airlock.console.doctor import diagnose

    def store_problem() -> str | None:
        try:
            _engine(args.db).dispose()
        except NoStore as e:
            return str(e)
        except Exception:
            return _store_unreachable(args.db) or "the store cannot be read"
        return None

    ca_cert = ca_dir(args.data_dir) / CA_CERT_NAME
    findings = diagnose(os.environ, ca_cert, store_problem)
    for finding in findings:
        print(finding)
    needed = sum(not f.ok for f in findings)
    print(f"\n{needed} to fix" if needed else "\nall set: agents in this shell go through Airlock")
    return 1 if needed else 0


def _audit_public_key(data_dir: Path) -> str:
    """Made on first start beside the CA: the decider signs checkpoints with it."""
    from airlock.store.anchor import load_or_create_key, public_key_text

    return public_key_text(load_or_create_key(data_dir).public_key())


def cmd_reload(args: argparse.Namespace) -> int:
    from airlock.pipeline.evaluation import Config
    from airlock.pipeline.yaml_source import ConfigError, recording_sources, sources_hash

    proxies = running_proxies(args.data_dir)
    if not proxies:
        print(f"airlock reload: no Airlock proxy is running from {args.data_dir}",
              file=sys.stderr)  # fmt: skip
        return 1
    checked = []
    for proxy in proxies:  # all checked before any is told: a broken edit reloads nothing
        try:
            with recording_sources() as sources:
                config = Config.load(Path(proxy.mappings), Path(proxy.policies))
        except ConfigError as e:
            print(f"airlock reload: {e}\nnothing was reloaded: the proxies keep deciding with "
                  "their last good configuration", file=sys.stderr)  # fmt: skip
            return 2
        checked.append((proxy, sources_hash(sources)))
        _warn_names_on_trust("airlock reload", config)
    for proxy, config_hash in checked:
        os.kill(proxy.pid, signal.SIGHUP)
        print(f"proxy on port {proxy.port} (pid {proxy.pid}) told to reload: configuration "
              f"{config_hash[:12]} (its log says when it is in force)")  # fmt: skip
    return 0


def proxy_arguments(args: argparse.Namespace, confdir: Path) -> list[str]:
    settings = {
        "confdir": str(confdir),
        "listen_host": args.host,
        "listen_port": str(args.port),
        "connection_strategy": "lazy",  # a blocked or held request never opens an upstream
        "body_size_limit": args.body_size_limit,
        "airlock_db": args.db,
        "airlock_durability": args.durability,
        "airlock_decider": args.decider,
        "airlock_guard_port": str(args.guard_port),
        "airlock_guard_host": args.guard_host,
        "airlock_anchor_dir": str(args.data_dir),
        "airlock_retention_days": str(args.retention),
        "airlock_witness_url": args.witness_url or "",
        "airlock_mappings": str(Path(args.mappings).resolve()),
        "airlock_policies": str(Path(args.policies).resolve()),
        "airlock_hold_timeout": str(args.hold_timeout),
        "airlock_approval_timeout": str(args.approval_timeout),
        "airlock_mcp_keepalive": str(args.mcp_keepalive),
        "airlock_max_held_per_agent": str(args.max_held_per_agent),
        "airlock_mode": args.mode,
        "airlock_metrics_port": str(args.metrics_port),
    }
    if args.upstream_ca:
        settings["ssl_verify_upstream_trusted_ca"] = str(Path(args.upstream_ca).resolve())
    argv = ["-s", str(ADDON_SCRIPT)]
    for name, value in settings.items():
        argv += ["--set", f"{name}={value}"]
    for route in args.route:
        argv += ["--set", f"airlock_route={route}"]
    for webhook in args.webhook:
        argv += ["--set", f"airlock_webhook={webhook}"]
    return argv


def ensure_ca(confdir: Path) -> Path:
    """Generate the CA on first start (mitmproxy's own format), so its path can be printed now."""
    from mitmproxy.certs import CertStore

    confdir.mkdir(parents=True, exist_ok=True)
    CertStore.from_store(confdir, "mitmproxy", 2048)
    return confdir / CA_CERT_NAME


def print_agent_setup(host: str, port: int, ca_cert: Path) -> None:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    proxy = f"http://{shown}:{port}"
    console = Console(highlight=False, soft_wrap=True)  # lines to copy are never broken
    console.print(f"[bold]Airlock[/] on {proxy}. In an agent's shell:\n")
    for line in (
        f"export HTTPS_PROXY={proxy} HTTP_PROXY={proxy} https_proxy={proxy} http_proxy={proxy}",
        f"export REQUESTS_CA_BUNDLE={ca_cert}   # requests",
        f"export SSL_CERT_FILE={ca_cert}        # httpx, slack_sdk, urllib",
        f"export AWS_CA_BUNDLE={ca_cert}        # boto3",
        f"export NODE_EXTRA_CA_CERTS={ca_cert}  # Node ≥ 22.21 / 24.5, with NODE_USE_ENV_PROXY=1",
        f"export CURL_CA_BUNDLE={ca_cert}       # curl",
    ):
        console.print(f"  {line}")
    console.print(f'  stripe.ca_bundle_path = "{ca_cert}"  # stripe-python ignores the variables')
    console.print("  Identify an agent with HTTPS_PROXY=http://AGENT-NAME:x@host:port")
    console.print("  Then `airlock doctor` in that shell checks every setting.")
    console.print("  [bold]Run agents as another OS user[/] (or in a container or on another "
                  "machine) than this proxy and its reviewers: as your user an agent can run "
                  "`airlock approve` itself, under any reviewer's name, and edit the store "
                  "(README: Reviewers, who can approve).\n")  # fmt: skip
    command = _command_hint()
    console.print(f"Reviewers: [bold]{command} review[/] (the console), {command} pending, "
                  f"{command} approve ID.")  # fmt: skip
    if command != "airlock":
        console.print(f"  ({command} is not on PATH: export PATH=\"{Path(command).parent}:$PATH\" "
                      "to type airlock)")  # fmt: skip
    console.print()


def _command_hint() -> str:
    """How to run `airlock` from another shell: its name when it is on PATH, else its path."""
    import shutil

    installed = Path(sys.executable).parent / "airlock"
    on_path = shutil.which("airlock")
    if on_path and Path(on_path).resolve() == installed.resolve():
        return "airlock"
    return str(installed)


# --- reviewers -------------------------------------------------------------------------------


class NoStore(Exception):
    """A command that reads the store was pointed at one that does not exist."""


def _engine(url: str) -> Any:
    """An existing store, brought up to this version's columns. Commands that read or decide
    never create one: a typo in --db would otherwise look like an empty, intact store."""
    from sqlalchemy import inspect
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    from airlock.store.schema import create_schema, normalise_url, open_engine

    try:
        parsed = make_url(normalise_url(url))
    except ArgumentError:  # not echoed: a mistyped URL may hold a password
        raise NoStore("--db (or $AIRLOCK_DB) is not a database URL: expected sqlite:///PATH or "
                      "postgresql://USER@HOST:PORT/DATABASE") from None  # fmt: skip
    shown = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
        raise NoStore(f"no store at {parsed.database} (start the proxy there first, or "
                      "give --db or --data-dir)")  # fmt: skip
    engine = None
    try:
        engine = open_engine(url)
        if not inspect(engine).has_table("runs"):
            raise NoStore(f"{shown} holds no Airlock store (no runs table)")
        create_schema(engine)
    except (NoStore, SQLAlchemyError, ImportError) as e:  # ImportError: a driver not installed
        if engine is not None:
            engine.dispose()
        raise e if isinstance(e, NoStore) else NoStore(_cannot_open(url, e)) from None
    return engine


def _reviewing_engine(args: argparse.Namespace) -> Any:
    """The store a reviewer's decisions are written to. Their audit events are sealed with the
    audit key when the data directory holds it (the proxy's own), and signed in a checkpoint
    after each write (_checkpoint_reviewed: the decider signs only while the proxy runs), sent
    to $AIRLOCK_WITNESS_URL when set. Without the key, a store whose events are sealed is not
    written to unless --allow-unsealed says so (_unsealed_writes)."""
    from airlock.decider.witness import Witness
    from airlock.store.anchor import KEY_FILE, Anchoring, head_of
    from airlock.store.seals import Sealer, seal_with

    engine = _engine(args.db)
    key_file = args.data_dir / KEY_FILE
    if not key_file.is_file():
        _unsealed_writes(engine, args, f"no audit key at {key_file}")
        return engine
    try:
        url = os.environ.get("AIRLOCK_WITNESS_URL")
        witness = Witness(url) if url else None
        publish = witness.publish if witness else None
        anchoring = Anchoring(engine, args.data_dir, publish=publish)
        anchoring.signed = head_of(engine)[0]  # what this command writes is signed
        seal_with(engine, Sealer(anchoring.key))
        _REVIEW_ANCHORS[engine] = (anchoring, witness)
    except (OSError, ValueError) as e:
        _unsealed_writes(engine, args, f"cannot read the audit key {key_file}: {e}", said=True)
    return engine


class Refused(Exception):
    """A command that would leave the store in a state it should not, without being told to."""


def _unsealed_writes(engine: Any, args: argparse.Namespace, why: str, said: bool = False) -> None:
    """Refuse, unless --allow-unsealed, to write unsealed events to a store whose events are
    sealed. A warning comes too late: the events stay in the chain for good, every later
    `audit verify` with the key exits 1 on them, and an auditor cannot tell them from a forgery;
    rerunning with the proxy's --data-dir costs nothing. `said`: say `why` even when the store
    is not sealed (a key that is there but unreadable)."""
    from airlock.store.seals import any_seal

    if not any_seal(engine):
        if said:
            print(f"airlock: {why}: decisions go unsealed", file=sys.stderr)
        return
    if getattr(args, "allow_unsealed", False):
        print(f"airlock {args.command}: {why}: decisions go unsealed (--allow-unsealed), and "
              "`airlock audit verify` with the key will report them", file=sys.stderr)  # fmt: skip
        return
    engine.dispose()
    raise Refused(
        f"{why}, and this store's audit events are sealed: a decision written without the "
        "key lies in no seal, and every `airlock audit verify` with the key reports it (exit 1). "
        "Give the proxy's data directory (--data-dir DIR, the one holding keys/), or "
        "--allow-unsealed to write it unsealed anyway"
    )


_REVIEW_ANCHORS: Any = weakref.WeakKeyDictionary()  # engine -> (Anchoring, Witness | None)


def _checkpoint_reviewed(engine: Any) -> None:
    """A signed checkpoint of what a reviewer's command wrote (when it holds the key): without
    one, its events could be cut from the end, seals and all, until the proxy next signs."""
    anchoring, witness = _REVIEW_ANCHORS.get(engine, (None, None))
    if anchoring is None:
        return
    try:
        anchoring.checkpoint()
    except Exception as e:  # the decision stands; say it is not anchored yet
        print(f"airlock: cannot write an audit checkpoint: {e}", file=sys.stderr)
    if witness is not None:
        witness.flush()


def cmd_pending(args: argparse.Namespace) -> int:
    from airlock.store.approvals import pending_approvals

    items = pending_approvals(_engine(args.db))
    if args.json:
        print(json.dumps([item.__dict__ for item in items], indent=2))
        return 0
    console = Console(highlight=False, emoji=False)
    if not items:
        console.print("No requests are waiting for approval.")
        return 0
    if console.width < WIDE_TABLE:
        _print_pending_cards(console, items)
        return 0
    table = Table("approval", "agent", "action", "target", "params", "why held", "undo", "left")
    now = time.time()
    for item in items:  # every cell a Text: a str cell is read as markup (`[/x]` in a target)
        table.add_row(
            Text(item.id[:12]),
            shown(item.agent),
            shown(item.action),
            shown(item.target),
            shown(
                _flat_params(item.params) + _query(item) + _edited(item) + _hidden(item, "\n"),
                lines=True,
            ),
            shown(item.reason),
            shown(item.undo["action"] if item.undo else "none known"),
            Text(f"{max(0, item.expires_at - now):.0f}s"),
        )
    console.print(table)
    return 0


WIDE_TABLE = 120  # columns below which approvals print as blocks: a table would cut every cell


PARAM_SHOWN = 300  # characters of one param's value in `airlock pending`; --json has it all


def _flat_params(params: dict[str, Any]) -> str:
    return params_text(params, PARAM_SHOWN)


def _query(item: Any) -> str:
    """The held request's query string, which the params may not read (`?amount=9900000`)."""
    query = query_text((item.request or {}).get("query"))
    return f"\n  query: {query}" if query else ""


def _hidden(item: Any, before: str = "") -> str:
    """The warning that redaction hides values of this request, after `before`; or ""."""
    warning = hidden_warning(item.request, item.params, item.target, item.context)
    return f"{before}{warning}" if warning else ""


def _edited(item: Any) -> str:
    """A reviewer's edit, said with how to agree to it: approving means approving the edit."""
    if not item.edit:
        return ""
    agree = " ".join(f"--set {name}={value}" for name, value in item.edit["params"].items())
    by, version = item.edit.get("by"), item.edit.get("version")
    return f"\n  edited by {visible(by)} (version {version}): {visible(agree)}"


def _print_pending_cards(console: Console, items: list[Any]) -> None:
    """One block per approval, nothing cut: its id first (what `airlock approve` takes)."""
    now = time.time()
    for item in items:
        left = f"{max(0, item.expires_at - now):.0f}s left"
        console.print(Text.assemble((item.id[:12], "bold"), f"  {visible(item.agent)}  "
                                    f"{visible(item.action)} → {visible(item.target)}"
                                    f"  ({left}, risk {item.risk})"))  # fmt: skip
        console.print(f"  params: {_flat_params(item.params) or 'none'}{_query(item)}"
                      f"{_edited(item)}", markup=False)  # fmt: skip
        if warning := _hidden(item, "  "):
            console.print(warning, style="yellow", markup=False)
        console.print(f"  why held: {visible(item.reason)}", markup=False)
        console.print(f"  undo: {visible(item.undo['action']) if item.undo else 'none known'}\n",
                      markup=False)  # fmt: skip


def _store_errors() -> tuple[type[Exception], ...]:
    """What the store's drivers raise (the store writes through their connections, not only
    SQLAlchemy's): a refused write is one line, not a traceback."""
    import sqlite3

    import psycopg
    from sqlalchemy.exc import SQLAlchemyError

    return SQLAlchemyError, sqlite3.Error, psycopg.Error


def cmd_decide(args: argparse.Namespace) -> int:
    from airlock.store.approvals import APPROVED, DENIED, ApprovalError, resolve_approval

    state = APPROVED if args.command == "approve" else DENIED
    engine = _reviewing_engine(args)
    _proxy_folders(args)
    try:
        edit = _edit_of(engine, args) if getattr(args, "set", None) else None
        settled = resolve_approval(
            engine, args.id, state, args.reviewer, args.reason, _reviewers(args), edit
        )
    except (ApprovalError, ValueError) as e:
        print(f"airlock {args.command}: {e}", file=sys.stderr)
        return 1
    except _store_errors() as e:  # a full disk, a locked or unreachable store: nothing decided
        cause = getattr(e, "orig", None) or e
        why = f"{type(cause).__name__}: {str(cause).splitlines()[0]}"
        print(f"airlock {args.command}: the store could not be written, nothing was decided "
              f"({why})", file=sys.stderr)  # fmt: skip
        return 1
    finally:
        _checkpoint_reviewed(engine)
    if settled.state == "PENDING":
        print(
            f"approved {settled.approval_id} as {args.reviewer}: {settled.votes} of "
            f"{settled.required} distinct reviewers so far; still held"
        )
    else:
        print(f"{settled.state.lower()} {settled.approval_id} as {args.reviewer}")
    return 0


def _run_view(args: argparse.Namespace) -> Any:
    from airlock.store.runs import RunNotFound, find_run

    try:
        return find_run(_engine(args.db), args.id)
    except RunNotFound as e:
        raise NoStore(str(e)) from None


def cmd_runs_show(args: argparse.Namespace) -> int:
    from airlock.console.runs import show_run, undo_plan
    from airlock.pipeline.mappings import load_mappings
    from airlock.pipeline.undo import CannotUndo

    view, mappings = _run_view(args), load_mappings(Path(args.mappings))
    if args.json:
        try:
            plan: Any = undo_plan(view, mappings).__dict__
        except CannotUndo as e:
            plan = {"cannot": str(e)}
        print(json.dumps({**view.__dict__, "undo": plan}, indent=2, default=str))
        return 0
    show_run(Console(highlight=False, emoji=False), view, mappings)
    return 0


def cmd_undo(args: argparse.Namespace) -> int:
    from airlock.console.runs import UndoFailed, execute, print_plan, proxy_url, undo_plan
    from airlock.pipeline.mappings import load_mappings
    from airlock.pipeline.undo import CannotUndo
    from airlock.store.keys import RequestKeyError, load_or_create_request_key

    view = _run_view(args)
    run_id = view.run["id"]
    try:
        plan = undo_plan(view, load_mappings(Path(args.mappings)))
    except CannotUndo as e:
        print(f"airlock undo: run {run_id} cannot be undone: {e}", file=sys.stderr)
        return 1
    console = Console(highlight=False, emoji=False)
    console.print(f"Undo run {run_id} ({visible(view.run['action'])} → "
                  f"{visible(view.run['target'])}):", markup=False)  # fmt: skip
    print_plan(console, plan, run_id)
    if not args.execute:
        return 0
    proxy = proxy_url(args.proxy, args.agent, os.environ.get("AIRLOCK_AGENT_KEY"))
    try:  # the proxy records the link to this run only when its request key signed it
        key = load_or_create_request_key(args.data_dir, create=False)
    except RequestKeyError as e:
        print(f"airlock undo: {e}: give the proxy's --data-dir", file=sys.stderr)
        return 2
    try:
        said = execute(plan, run_id, proxy, Path(args.confdir) / CA_CERT_NAME, key)
    except UndoFailed as e:
        print(f"airlock undo: {e}", file=sys.stderr)
        return 1
    console.print(f"sent: {said}", markup=False)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from airlock.console.report import print_report, trial_report
    from airlock.store.runs import simulated_runs

    since = 0.0
    if args.since:
        try:
            since = _instant(args.since)
        except ValueError as e:
            print(f"airlock report: --since: {e}", file=sys.stderr)
            return 2
    report = trial_report(simulated_runs(_engine(args.db), args.agent, since))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(Console(highlight=False, emoji=False), args.agent, report)
    return 0


def _edit_of(engine: Any, args: argparse.Namespace) -> dict[str, Any]:
    """`--set amount=50000`: where each value is written in the held request (EditError, a
    ValueError, says why a param cannot be edited)."""
    from airlock.pipeline.edits import EditError, plan_edit
    from airlock.pipeline.mappings import load_mappings
    from airlock.store.approvals import run_of_approval

    assignments = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise EditError(f"--set {item!r}: expected PARAM=VALUE, e.g. amount=50000")
        assignments[name.strip()] = value
    run = run_of_approval(engine, args.id)
    mapping = load_mappings(Path(args.mappings)).by_id.get(run["mapping_id"] or "")
    return plan_edit(mapping, run["request"] or {}, assignments)


def cmd_check(args: argparse.Namespace) -> int:
    from airlock.console.check import check

    paths = args.paths or [SHIPPED_MAPPINGS, SHIPPED_POLICIES]
    missing = [p for p in paths if not p.exists()]
    if missing:
        print(f"airlock check: no such file or folder: {missing[0]}", file=sys.stderr)
        return 2
    report = check(paths)
    warnings = report.warnings + report.names_on_trust
    for problem in report.problems + warnings:
        print(problem)
    warned = f", {len(warnings)} warning(s)" if warnings else ""
    if report.problems:
        print(f"{len(report.problems)} problem(s){warned} in {report.files} file(s)",
              file=sys.stderr)  # fmt: skip
        return 1
    print(f"{report.files} file(s) checked: no problems{warned}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from airlock.console.explain import RequestFormatError, explain, parse_request
    from airlock.pipeline.evaluation import Config
    from airlock.pipeline.yaml_source import ConfigError

    source = args.request
    if source == "-":
        text = sys.stdin.read()
    elif not source.lstrip().startswith("curl") and Path(source).is_file():
        text = Path(source).read_text()
    else:
        text = source
    try:
        config = Config.load(Path(args.mappings), Path(args.policies))
        result = explain(parse_request(text, args.har_entry), config, args.agent)
    except (ConfigError, RequestFormatError) as e:
        print(f"airlock explain: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.as_json(), indent=2))
    else:
        print_explanation(result.as_json())
    return 0


def print_explanation(report: dict) -> None:  # type: ignore[type-arg]
    """Every value from the request (or derived from it) escaped: the request may be an agent's."""
    console = Console(highlight=False, emoji=False)
    request = report["request"]
    said = f"{request['method']} {request['scheme']}://{request['host']}{request['path']}"
    console.print(f"[bold]Request[/] {escaped(said)}  (agent {escaped(request['agent'])})")
    console.print_json(json.dumps(request))
    if report["not_matched"]:
        console.print("[bold]Mappings tried first[/]")
        for item in report["not_matched"]:
            console.print(f"  {escaped(item['mapping'])}: {escaped(item['why'])}")
    console.print(f"[bold]Operation[/] {escaped(report['operation'] or 'not identified')}")
    fallback = "none (derived from the operation)" if report["operation"] else "none (fallback)"
    console.print(f"[bold]Mapping[/] {escaped(report['mapping'] or fallback)}")
    console.print(
        f"[bold]Action[/] {escaped(report['action'])} ({escaped(report['provider'])}, "
        f"{report['category']}, {report['sensitivity']}) → {escaped(report['target'])}"
    )
    console.print(f"[bold]Params[/] {escaped(json.dumps(report['params']))}")
    if report["context"]:
        console.print(f"[bold]Context[/] {escaped(json.dumps(report['context']))}")
    if report["undo"]:
        console.print(f"[bold]Undo[/] {escaped(json.dumps(report['undo']))}")
    style = {"ALLOW": "green", "BLOCK": "red", "REQUIRE_APPROVAL": "yellow"}[report["decision"]]
    console.print(
        f"[bold]Decision[/] [{style}]{report['decision']}[/] — {escaped(report['reason'])}"
    )
    console.print(f"[bold]Rules fired[/] {', '.join(report['rules']) or 'none'}")


def cmd_test(args: argparse.Namespace) -> int:
    from airlock.console.policy_tests import find_test_files, run_files
    from airlock.pipeline.evaluation import Config
    from airlock.pipeline.yaml_source import ConfigError

    try:
        config = Config.load(Path(args.mappings), Path(args.policies))
    except ConfigError as e:
        print(f"airlock test: {e}", file=sys.stderr)
        return 2
    if args.replay:
        return replay_recorded(args, config)
    missing = [p for p in args.paths if not p.exists()]
    if missing:
        print(f"airlock test: no such file or folder: {missing[0]}", file=sys.stderr)
        return 2
    files = find_test_files(args.paths or [Path(args.policies)])
    if not files:
        print("airlock test: no *.test.yaml files found", file=sys.stderr)
        return 2
    results = run_files(files, config)
    for result in results:
        if not (args.quiet and result.passed):
            print(result.line())
    failed = sum(not r.passed for r in results)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


def replay_recorded(args: argparse.Namespace, config: Any) -> int:
    from airlock.console.replay import replay
    from airlock.store.history import recorded_decisions

    since = time.time() - args.since * 3600 if args.since else None
    runs = recorded_decisions(_engine(args.db), since=since, limit=args.limit)
    report = replay(runs, config.policies, config.agents)
    assert report.changes is not None and report.transitions is not None
    for change in report.changes:
        print(change.line())
    print(
        f"replayed {report.replayed} decisions with {args.policies}: {len(report.changes)} would "
        f"change; {report.skipped} skipped (blocked by a failed stage, not by policy), "
        f"{report.not_policy} not replayed (refused before any policy: proxy credentials, "
        "Airlock's own ports)"
    )
    for (before, after), count in sorted(report.transitions.items()):
        print(f"  {before} → {after}: {count}")
    return 0


def cmd_hook(args: argparse.Namespace) -> int:
    try:
        from airlock_guard.claude_code import main as claude_code_hook
    except ImportError:
        print("airlock hook: the Guard SDK is not installed here: pip install ./sdk (from "
              "Airlock's checkout)", file=sys.stderr)  # fmt: skip
        return 2  # Claude Code blocks the call: fail closed
    return claude_code_hook(["--wait", str(args.wait)])


def cmd_demo(args: argparse.Namespace) -> int:
    from airlock.console.demo import run_demo

    return run_demo(args.auto, args.keep, Console())


def cmd_review(args: argparse.Namespace) -> int:
    import threading

    from airlock.console.review import ReviewApp

    engine = _reviewing_engine(args)
    _proxy_folders(args)
    done = threading.Event()

    def checkpoints() -> None:  # each decision signed within a second of its commit
        while not done.wait(1.0):
            _checkpoint_reviewed(engine)

    signer = threading.Thread(target=checkpoints, name="airlock-review-checkpoints", daemon=True)
    signer.start()
    try:
        ReviewApp(engine, args.reviewer, reviewers=_reviewers(args),
                  mappings=Path(args.mappings)).run()  # fmt: skip
    finally:
        done.set()
        signer.join()
        _checkpoint_reviewed(engine)
    return 0


def cmd_agents_key(args: argparse.Namespace) -> int:
    from airlock.pipeline.agents import hash_key, new_key

    key = new_key()
    roles = ", ".join(args.role)
    print(f"key for {args.agent} (shown once; Airlock keeps only its hash):\n  {key}\n")
    print(f"the agent's proxy: HTTPS_PROXY=http://{args.agent}:{key}@127.0.0.1:8080\n")
    print("add to policies/agents.yaml under agents:")
    print(f'  - {{id: {args.agent}, roles: [{roles}], key_hash: "{hash_key(key)}"}}')
    return 0


def cmd_mappings_import(args: argparse.Namespace) -> int:
    from airlock.console.openapi_import import main_import

    return main_import(args)


def cmd_vocabulary(args: argparse.Namespace) -> int:
    from airlock.pipeline.mappings import SENSITIVITIES, load_mappings

    by_action: dict[str, list] = {}  # type: ignore[type-arg]
    for mapping in load_mappings(Path(args.mappings)).mappings:
        by_action.setdefault(mapping.action, []).append(mapping)
    print("| action | category | sensitivity | what maps to it |")
    print("| --- | --- | --- | --- |")
    for action in sorted(by_action, key=lambda a: (by_action[a][0].category, a)):
        mappings = by_action[action]
        levels = sorted({m.sensitivity for m in mappings}, key=SENSITIVITIES.index)
        sources = ", ".join(sorted({m.id for m in mappings}))
        print(f"| `{action}` | {mappings[0].category} | {', '.join(levels)} | {sources} |")
    print("| `http.read` | read | low | any GET, HEAD or OPTIONS no mapping knows |")
    print("| `http.write` | write | medium | any other request no mapping knows |")
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from airlock.store.audit import audit_snapshot, verify_audit

    if args.audit_command == "export":
        return cmd_audit_export(args)
    try:
        keys = _public_keys(args)
    except (OSError, ValueError) as e:
        print(f"airlock audit verify: --public-key: {e}", file=sys.stderr)
        return 2
    if args.export:
        return _verify_export(Path(args.export), keys, args.checkpoint)
    engine = _engine(args.db)
    # The chain and the checks against signed checkpoints read the store as of one moment.
    with audit_snapshot(engine) as snapshot:
        report = verify_audit(snapshot, keys)
        anchored = _check_anchor(snapshot, args, keys) if report.problem is None else None
    if report.problem is not None:
        print(f"audit trail BROKEN: {report.problem}", file=sys.stderr)
        print(f"(checked {report.events} events before the break)", file=sys.stderr)
        _print_unsealed(report.unsealed)
        return 1
    if anchored is not None and anchored.startswith("BROKEN"):
        print(f"audit trail {anchored}", file=sys.stderr)
        _print_unsealed(report.unsealed)
        return 1
    counted = f"{report.events} events, {report.runs} runs and {report.approvals} approvals"
    if report.unsealed:  # the rest was checked, and holds: say so, but it is not sealed
        print(f"audit trail NOT SEALED: {counted} verified, but not every event carries its "
              "writer's seal", file=sys.stderr)  # fmt: skip
        _print_unsealed(report.unsealed)
        print(anchored or "not anchored: no signed checkpoint to check the chain against",
              file=sys.stderr)  # fmt: skip
        return 1
    print(f"audit trail intact: {counted} verified")
    print(anchored or "not anchored: no signed checkpoint to check the chain against")
    if keys and args.before_seals and _no_seals(engine):
        print("not sealed: no event carries a seal (--before-seals: written before seals)")
    elif keys:
        print("sealed: every group of events since sealing began carries its writer's seal")
    return 0


def _print_unsealed(spans: Sequence[str]) -> None:
    for span in spans:
        print(f"unsealed: {span}", file=sys.stderr)


def _no_seals(engine: Any) -> bool:
    from airlock.store.seals import no_seals

    return no_seals(engine) is not None


def _public_keys(args: argparse.Namespace) -> list[Any]:
    """The audit keys given (--public-key, each a key or a file), else the data directory's."""
    from airlock.store.anchor import read_public_key

    given = list(args.public_key or [])
    if not given and (args.data_dir / PUBLIC_FILE).is_file():
        given = [str(args.data_dir / PUBLIC_FILE)]
    return [read_public_key(Path(k).read_text() if Path(k).is_file() else k) for k in given]


def _check_anchor(engine: Any, args: argparse.Namespace, keys: list[Any]) -> str | None:
    """The chain against the latest signed checkpoint: "BROKEN: why", a line saying it holds,
    or None when there is no checkpoint to check against."""
    from airlock.store.anchor import (
        CHECKPOINTS,
        chain_against,
        cut_against,
        retention_cut,
        signed_cut,
    )
    from airlock.store.seals import no_seals, seals_removed

    note = Path(args.checkpoint) if args.checkpoint else args.data_dir / CHECKPOINTS / "latest"
    # Stored with the prune; the data directory's checkpoints/cut for a cut made before that.
    cut_signed = signed_cut(engine, args.data_dir, keys)
    unsealed = None if args.before_seals or not keys else no_seals(engine)
    if not note.is_file():
        if args.checkpoint:
            return f"BROKEN: no checkpoint at {note}"
        problem = (cut_against(engine, cut_signed) if keys else None) or unsealed
        return f"BROKEN: {problem}" if problem else None
    if not keys:
        return f"BROKEN: checkpoint {note}: no public key to check it with (--public-key)"
    try:
        checkpoint = _opened(note, keys)
    except ValueError as e:
        return f"BROKEN: checkpoint {note}: {e}"
    problem = (
        chain_against(engine, checkpoint)
        or cut_against(engine, cut_signed)
        or (seals_removed(engine, checkpoint.seals_from) if checkpoint.seals_from else None)
        or unsealed
    )
    if problem:
        return f"BROKEN: {problem}"
    cut = retention_cut(engine)
    if cut is not None and checkpoint.size <= cut[0]:
        where = "is" if checkpoint.size == cut[0] else "predates"
        return (
            f"anchored: the signed checkpoint at event {checkpoint.size} ({note}) {where} "
            f"the retention cut at event {cut[0]}: the events it vouches for were pruned"
        )
    return f"anchored: the signed checkpoint at event {checkpoint.size} ({note}) matches the chain"


def _opened(note: Path, keys: list[Any]) -> Any:
    """The checkpoint a note vouches for, signed by one of the keys (ValueError if none)."""
    from airlock.store.anchor import open_checkpoint

    problems = []
    for key in keys:
        try:
            return open_checkpoint(note.read_text(), key)
        except ValueError as e:
            problems.append(str(e))
    raise ValueError("; ".join(dict.fromkeys(problems)))


def cmd_audit_export(args: argparse.Namespace) -> int:
    from airlock.store.export import events, write_export

    try:
        since, until = _instant(args.since), _instant(args.until)
    except ValueError as e:
        print(f"airlock audit export: {e}", file=sys.stderr)
        return 2
    engine = _engine(args.db)
    from airlock.store.anchor import CHECKPOINTS, cut_note, retention_cut

    latest = args.data_dir / CHECKPOINTS / "latest"
    # The latest signed checkpoint travels with a whole export (a slice ends before it may).
    checkpoint = latest.read_text() if latest.is_file() and until is None else None
    # Where it starts: the signed retention cut, or the chain's first event; a slice says it is
    # one, or its missing start would read as events removed.
    cut = cut_note(engine, args.data_dir) if since is None else None
    sliced = None
    if since is not None or until is not None:
        sliced = {"since": _iso(since), "until": _iso(until)}
    from_genesis = since is None and retention_cut(engine) is None
    out = open(args.out, "w", newline="", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115
    try:
        written = write_export(events(engine, since, until), out, args.format, checkpoint, cut,
                               sliced, from_genesis)  # fmt: skip
    finally:
        if args.out:
            out.close()
        engine.dispose()
    if args.out:
        print(f"exported {written} events to {args.out}", file=sys.stderr)
    return 0


def _iso(instant: float | None) -> str | None:
    from datetime import UTC, datetime

    return None if instant is None else datetime.fromtimestamp(instant, UTC).isoformat()


def _instant(text: str | None) -> float | None:
    """ISO 8601, read as UTC when it names no zone: 2026-12-01, 2026-12-01T09:30Z."""
    if text is None:
        return None
    from datetime import UTC, datetime

    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        example = "2026-12-01 or 2026-12-01T09:30Z"
        raise ValueError(f"{text!r} is not an ISO 8601 time ({example})") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _verify_export(path: Path, keys: list[Any], checkpoint: str | None = None) -> int:
    """`checkpoint`: a signed checkpoint file the auditor holds (a witness's, say), checked in
    place of the one the export carries."""
    from airlock.store.export import verify_export

    for given in (path, Path(checkpoint) if checkpoint else None):
        if given is not None and not given.is_file():
            print(f"airlock audit verify: no file at {given}", file=sys.stderr)
            return 2
    note = Path(checkpoint).read_text() if checkpoint else None
    with path.open(encoding="utf-8") as lines:
        check = verify_export(lines, keys, note)
    if check.ok:
        parts = (check.sliced, check.starts, check.anchored, check.sealed)
        said = "".join(f"; {part}" for part in parts if part)
        what = "export slice intact" if check.sliced else "export intact"
        print(f"{what}: {check.events} events (chain positions {check.first} to "
              f"{check.last}) verified offline{said}")  # fmt: skip
        return 0
    print(f"export BROKEN: {check.problem}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
