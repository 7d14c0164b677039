"""`airlock demo` (`make demo`): Airlock at work in two minutes, with no vendor account or agent.

It starts Airlock on a throwaway embedded store with local stand-ins for Stripe, Slack, GitHub
and AWS (served over TLS on loopback, routed as the real hostnames: console/standins.py), then
runs a small scripted agent that uses the official SDKs through it, as any agent would (only
HTTPS_PROXY and the CA set). Three of its calls are held: the reviewer console opens so you can
approve or deny them (or, with --auto, the demo decides: one approved, two denied). It ends with
`airlock audit verify` and a summary of what was decided.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from airlock.console.untrusted import escaped, shown
from airlock.store.locations import running_from_checkout

HOSTS = ("api.stripe.com", "slack.com", "api.github.com", "s3.amazonaws.com", "api.example.com")
AGENT = "demo-agent"
REVIEWER = "demo-reviewer"
HELD_CALLS = 3  # the customer deletion, the channel archive, the unknown write
START_TIMEOUT = 60.0


def run_demo(auto: bool, keep: bool, console: Console) -> int:
    from airlock.console.standins import Upstream

    missing = missing_sdks()
    if missing:  # before anything starts: the agent would fail call after call
        print(f"airlock demo: its agent calls the vendors' own SDKs, and {', '.join(missing)} "
              f"{'is' if len(missing) == 1 else 'are'} not installed here: pip install "
              f"{' '.join(missing)}", file=sys.stderr)  # fmt: skip
        return 2
    work = Path(tempfile.mkdtemp(prefix="airlock-demo-"))
    console.print(f"[bold]Airlock demo[/] (everything lives in {work})")
    upstream = Upstream(work / "standins").start()
    port = _free_port()
    proxy = _start_proxy(work, port, upstream.port, upstream.ca_file)
    agent = None
    try:
        _wait_for_proxy(proxy, port, work / "airlock.log")
        console.print(f"Airlock listens on 127.0.0.1:{port}; the agent starts.\n")
        agent = _start_agent(work, port)
        _wait_for_held(work, HELD_CALLS, agent)
        if auto or not sys.stdin.isatty():
            if not auto:
                console.print("(no terminal for the reviewer console: deciding as --auto does)")
            _decide_for_the_reviewer(work, console)
        else:
            _review(work, console)
        _finish_agent(agent, console)
        return _summary(work, console)
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
        proxy.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proxy.wait(15)
        upstream.stop()
        if not keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)


# --- Airlock and the agent ----------------------------------------------------------------------

AGENT_SDKS = ("stripe", "boto3", "slack_sdk")  # what console/demo_agent.py imports


def missing_sdks() -> list[str]:
    import importlib.util

    return [name for name in AGENT_SDKS if importlib.util.find_spec(name) is None]


def _start_proxy(work: Path, port: int, upstream_port: int, upstream_ca: Path) -> Any:
    routes = [arg for host in HOSTS for arg in ("--route", f"{host}=127.0.0.1:{upstream_port}")]
    log = (work / "airlock.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "airlock.console.cli", "run", "--data-dir", str(work),
         "--port", str(port), "--metrics-port", "0", "--upstream-ca", str(upstream_ca),
         "--hold-timeout", "20", *routes],
        stdout=log, stderr=subprocess.STDOUT, env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


def _wait_for_proxy(proxy: Any, port: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proxy.poll() is not None:
            raise SystemExit(f"Airlock did not start:\n{log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.1)
    raise SystemExit(f"Airlock did not listen within {START_TIMEOUT:.0f} s (see {log})")


def _start_agent(work: Path, port: int) -> Any:
    """The agent is another process, as a real one is: only the proxy and the CA are set."""
    ca = str(work / "certs" / "mitmproxy-ca-cert.pem")
    # A password too, or urllib (slack_sdk's transport) and botocore send no credentials at all
    # and the run is recorded as anonymous; without an agents file the name is taken as given.
    proxy = f"http://{AGENT}:demo@127.0.0.1:{port}"
    env = os.environ | {
        "HTTPS_PROXY": proxy, "https_proxy": proxy, "NO_PROXY": "", "no_proxy": "",
        "SSL_CERT_FILE": ca, "REQUESTS_CA_BUNDLE": ca, "AWS_CA_BUNDLE": ca,
        "CURL_CA_BUNDLE": ca, "AWS_ACCESS_KEY_ID": "AKIADEMODEMODEMODEMO",
        "AWS_SECRET_ACCESS_KEY": "demo-secret", "AWS_DEFAULT_REGION": "us-east-1",
    }  # fmt: skip
    out = (work / "agent.jsonl").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "airlock.console.demo_agent"], stdout=out,
        stderr=(work / "agent.log").open("wb"), env=env,
    )  # fmt: skip


def _wait_for_held(work: Path, count: int, agent: Any, timeout: float = 60.0) -> None:
    from airlock.store.approvals import pending_approvals

    engine = _engine(work)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if len(pending_approvals(engine)) >= count:
                return
            if agent.poll() is not None:
                raise SystemExit(f"the demo agent stopped early:\n{_tail(work / 'agent.log')}")
            time.sleep(0.2)
    finally:
        engine.dispose()
    raise SystemExit(f"the agent's calls were not held within {timeout:.0f} s")


def _decide_for_the_reviewer(work: Path, console: Console) -> None:
    """--auto: what a reviewer would do, with the CLI (`airlock approve` / `airlock deny`)."""
    from airlock.store.approvals import pending_approvals

    engine = _engine(work)
    try:
        held = pending_approvals(engine)
    finally:
        engine.dispose()
    for approval in held:
        verb = "approve" if approval.action == "delete_record" else "deny"
        reason = "demo: looks right" if verb == "approve" else "demo: not today"
        subprocess.run(
            [sys.executable, "-m", "airlock.console.cli", verb, approval.id, "--data-dir",
             str(work), "--reviewer", REVIEWER, "--reason", reason],
            check=True, capture_output=True,
        )  # fmt: skip
        console.print(f"$ airlock {verb} {approval.id[:8]}   # {escaped(approval.action)}")


def _review(work: Path, console: Console) -> None:
    from airlock.console.review import ReviewApp

    console.print(
        "Three of the agent's calls are held. The reviewer console opens now: approve the "
        "customer deletion (a), deny the Slack archive (d), decide the unknown write as you "
        "like, then quit (q). Press Enter to open it."
    )
    with contextlib.suppress(EOFError):
        input()
    engine = _engine(work)
    try:
        ReviewApp(engine, REVIEWER).run()
    finally:
        engine.dispose()


def _finish_agent(agent: Any, console: Console) -> None:
    try:
        agent.wait(90)
    except subprocess.TimeoutExpired:
        console.print("[yellow]the agent was still waiting (held calls left open); stopped it[/]")
        agent.kill()


# --- the summary ----------------------------------------------------------------------------


def _summary(work: Path, console: Console) -> int:
    from airlock.store.audit import verify_audit

    results = [json.loads(line) for line in (work / "agent.jsonl").read_text().splitlines()]
    table = Table(title="What the agent tried, and what Airlock did")
    table.add_column("call", ratio=2)
    table.add_column("SDK", ratio=1)
    table.add_column("outcome", ratio=4, overflow="fold")
    for result in results:
        style = "green" if result["ok"] else "red"
        table.add_row(shown(result["call"]), shown(result["sdk"]),
                      shown(result["outcome"], style=style))  # fmt: skip
    console.print(table)
    engine = _engine(work)
    try:
        report = verify_audit(engine)
        decisions = _decisions(engine)
    finally:
        engine.dispose()
    console.print(
        "Decisions recorded: "
        + ", ".join(f"{count} {decision}" for decision, count in sorted(decisions.items()))
    )
    verdict = "intact" if report.ok else f"BROKEN: {report.problem}"
    console.print(f"airlock audit verify: audit trail {verdict}: {report.events} events")
    start = "make run" if running_from_checkout() else "airlock run"
    console.print(f"Next: `{start}` and point your own agent at it (README: Point an agent at it).")
    return 0 if report.ok else 1


def _decisions(engine: Any) -> dict[str, int]:
    from sqlalchemy import func, select

    from airlock.store.schema import Run

    with engine.connect() as conn:
        rows = conn.execute(select(Run.decision, func.count()).group_by(Run.decision)).all()
    return {decision: count for decision, count in rows}


def _engine(work: Path) -> Any:
    from airlock.store.schema import open_engine

    return open_engine(f"sqlite:///{work / 'airlock.db'}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path) -> str:
    return path.read_text()[-2000:] if path.exists() else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="airlock demo", description=__doc__)
    parser.add_argument("--auto", action="store_true", help="decide the held calls yourself")
    parser.add_argument("--keep", action="store_true", help="keep the demo's folder")
    args = parser.parse_args(argv)
    return run_demo(args.auto, args.keep, Console())


if __name__ == "__main__":
    sys.exit(main())
