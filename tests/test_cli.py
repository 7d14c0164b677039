"""Every command answers --help, and the commands that decide approvals know the reviewers."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from airlock.console.cli import build_parser, main
from airlock.store.records import DecisionRecord, HoldRequest
from tests.test_store import run_row, write


@pytest.mark.parametrize(
    "command",
    [["run"], ["pending"], ["approve"], ["deny"], ["review"], ["check"], ["explain"], ["test"],
     ["vocabulary"], ["agents", "key"], ["audit", "verify"], ["audit", "export"], ["reload"],
     ["doctor"], ["rekey"]],
)  # fmt: skip
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args([*command, "--help"])
    assert done.value.code == 0
    assert "usage: airlock" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["approve", "deny"])
def test_deciding_commands_read_the_reviewers_file_the_running_proxy_reads(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The proxy runs with --policies mypolicies, whose reviewers.yaml lists alice alone; a
    reviewer's command without --policies read the shipped folder (no reviewers file) and let
    mallory decide. It reads the folder of the proxy running from its data directory on its
    store, and says which it reads when none runs, or several disagree."""
    from airlock.console.cli import _proxy_folders, _resolve_locations
    from airlock.console.running import Running, announce, store_name
    from airlock.store.locations import shipped as shipped_folder

    url, hold = held_in_a_store(tmp_path, run_row("REQUIRE_APPROVAL"))
    mine, other = tmp_path / "mypolicies", tmp_path / "otherpolicies"
    for folder in (mine, other):
        folder.mkdir()
        (folder / "reviewers.yaml").write_text("reviewers: [{id: alice, roles: [lead]}]\n")
    decide = [command, hold.approval_id[:8], "--db", url, "--data-dir", str(tmp_path),
              *(["--reason", "no"] if command == "deny" else [])]  # fmt: skip
    shipped = str(tmp_path / "shipped-mappings")
    announce(tmp_path, Running(os.getpid(), 8080, shipped, str(mine), store_name(url)))
    assert main([*decide, "--reviewer", "mallory"]) == 1
    assert "mallory is not a reviewer" in capsys.readouterr().err

    (tmp_path / "run" / "airlock-8080.json").unlink()  # no proxy on this store: the shipped
    announce(tmp_path, Running(os.getpid(), 8081, shipped, str(other), "sqlite:///elsewhere.db"))
    assert main([*decide, "--reviewer", "mallory", "--policies", str(mine)]) == 1
    capsys.readouterr()

    def read_from() -> str:
        args = build_parser().parse_args(decide)
        _resolve_locations(args)
        _proxy_folders(args)
        return str(args.policies)

    assert read_from() == str(shipped_folder("policies"))
    said = f"no proxy is running from {tmp_path} on this store: reading the shipped folders"
    assert said in capsys.readouterr().err
    announce(tmp_path, Running(os.getpid(), 8082, shipped, str(mine), store_name(url)))
    announce(tmp_path, Running(os.getpid(), 8083, shipped, str(other), store_name(url)))
    assert read_from() == str(mine)
    said = f"different --policies: {mine} (port 8082), {other} (port 8083); reading {mine}"
    assert said in capsys.readouterr().err


@pytest.mark.parametrize(
    "command",
    [["pending"], ["review"], ["audit", "verify"], ["test", "--replay"], ["approve", "abcd1234"],
     ["deny", "abcd1234", "--reason", "no"]],
)  # fmt: skip
def test_commands_never_create_a_store_that_is_not_there(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    typo = tmp_path / "airlok.db"
    assert main([*command, "--db", f"sqlite:///{typo}"]) == 2
    assert f"no store at {typo}" in capsys.readouterr().err
    assert not typo.exists()


@pytest.mark.parametrize(
    ("db", "says"),
    [("notaurl", "--db (or $AIRLOCK_DB) is not a database URL: expected sqlite:///PATH or "
      "postgresql://"),
     ("postgresql://x:secret@127.0.0.1:1/db", "cannot open the store "
      "postgresql://x:***@127.0.0.1:1/db: connection failed"),
     ("mysql://x@127.0.0.1:1/db", "cannot open the store mysql://x@127.0.0.1:1/db: No module")],
)  # fmt: skip
@pytest.mark.parametrize("command", [["pending"], ["approve", "abcd1234"]])
def test_a_store_that_cannot_be_opened_is_one_line_not_a_traceback(
    command: list[str], db: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*command, "--db", db]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"airlock {command[0]}: {says}") and err.count("\n") == 1, err
    assert "secret" not in err


def held_in_a_store(tmp_path: Path, run: Any, required: int = 1) -> tuple[str, HoldRequest]:
    """A store holding one request for approval: its URL and the hold."""
    from airlock.store.schema import create_schema, open_engine

    url = f"sqlite:///{tmp_path / 'airlock.db'}"
    engine = open_engine(url)
    create_schema(engine)
    hold = HoldRequest(uuid.uuid4().hex, time.time() + 60, "h" * 64, required=required)
    write(engine, DecisionRecord(run, hold))
    engine.dispose()
    return url, hold


def test_approve_from_the_cli_needs_a_reason_for_a_risky_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, hold = held_in_a_store(tmp_path, run_row("REQUIRE_APPROVAL", risk=90))

    assert main(["approve", hold.approval_id, "--db", url, "--reviewer", "alice"]) == 1
    assert "risk 90 (≥ 70) needs a reason" in capsys.readouterr().err
    approved = ["approve", hold.approval_id, "--db", url, "--reviewer", "alice", "--reason", "ok"]
    assert main(approved) == 0


def test_approve_on_a_store_that_refuses_the_write_is_one_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A full disk (or any refused write) gave a reviewer a 49-line traceback (found by
    review): one line says nothing was decided and why."""
    from sqlalchemy import text

    from airlock.store.schema import open_engine

    url, hold = held_in_a_store(tmp_path, run_row("REQUIRE_APPROVAL"))
    engine = open_engine(url)
    with engine.begin() as conn:  # the store refuses every change to an approval
        refuse = "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
        conn.execute(text(f"CREATE TRIGGER full BEFORE UPDATE ON approvals {refuse}"))
    engine.dispose()
    assert main(["approve", hold.approval_id, "--db", url, "--reviewer", "alice"]) == 1
    err = capsys.readouterr().err
    said = "airlock approve: the store could not be written, nothing was decided (IntegrityError: "
    assert f"{said}database or disk is full)\n" in err and "Traceback" not in err


def test_pending_shows_an_edit_and_how_to_agree_with_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With a quorum, what goes out is the edit: reviewers see it, and the --set that agrees."""
    from airlock.store.approvals import APPROVED, resolve_approval
    from airlock.store.schema import open_engine

    url, hold = held_in_a_store(tmp_path, run_row("REQUIRE_APPROVAL"), required=2)
    edit = {"params": {"amount": 900000}, "locations": {"amount": ["body", "amount"]}}
    engine = open_engine(url)
    resolve_approval(engine, hold.approval_id, APPROVED, "alice", "more", edit=edit)
    engine.dispose()
    assert main(["pending", "--db", url]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "edited by alice (version 1): --set amount=900000" in said


def test_run_says_which_flag_fixes_a_taken_port_or_an_unreachable_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        base = ["run", "--data-dir", str(tmp_path), "--quiet"]
        assert main([*base, "--port", str(port), "--metrics-port", "0"]) == 2
        assert f"port {port} is taken" in capsys.readouterr().err
        assert main([*base, "--port", "0", "--metrics-port", str(port)]) == 2
        err = capsys.readouterr().err
        assert "choose another with --metrics-port PORT, or 0 to turn metrics off" in err
        assert "Traceback" not in err
    unreachable = "postgresql://nobody@127.0.0.1:9/none"
    assert main([*base, "--port", "0", "--metrics-port", "0", "--db", unreachable]) == 2
    err = capsys.readouterr().err
    assert err.startswith("airlock run: cannot open the store postgresql://nobody@127.0.0.1:9/none")
    assert len(err.strip().splitlines()) == 1


def test_run_refuses_a_store_another_request_key_binds_until_it_is_rekeyed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second instance on one store with its own request key would not join the approvals
    the first opened: it does not start, and says which file to copy."""
    from airlock.store.keys import KEY_FILE, bind_to_store, load_or_create_request_key
    from airlock.store.schema import create_schema, open_engine

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    engine = open_engine(url)
    create_schema(engine)
    bind_to_store(engine, load_or_create_request_key(tmp_path / "first"), tmp_path / "first")
    engine.dispose()
    second = ["run", "--data-dir", str(tmp_path / "second"), "--db", url, "--quiet"]
    assert main([*second, "--port", "0", "--metrics-port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("airlock run: this store's approvals are bound with another request key")
    assert f"copy {KEY_FILE} from the data directory" in err and "Traceback" not in err
    assert "if none holds it any more: airlock rekey" in err

    assert main(["rekey", "--data-dir", str(tmp_path / "second"), "--db", url]) == 0
    said = capsys.readouterr().out
    assert f"the store's request key is now {tmp_path / 'second' / KEY_FILE}" in said
    assert "expired 0 open approvals" in said
    engine = open_engine(url)
    bind_to_store(engine, load_or_create_request_key(tmp_path / "second"), tmp_path / "second")
    engine.dispose()


def test_run_says_which_flag_fixes_a_bad_ca_an_unwritable_folder_or_a_taken_guard_port(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    base = ["run", "--data-dir", str(tmp_path), "--quiet", "--port", "0", "--metrics-port", "0"]
    assert main([*base, "--upstream-ca", str(tmp_path / "missing.pem")]) == 2
    assert "--upstream-ca" in capsys.readouterr().err
    assert main([*base, "--witness-url", "ftp://witness.example/"]) == 2
    assert "--witness-url ftp://witness.example/: not an http(s) URL" in capsys.readouterr().err
    (tmp_path / "not-a-cert.pem").write_text("hello")
    assert main([*base, "--upstream-ca", str(tmp_path / "not-a-cert.pem")]) == 2
    assert "not a PEM certificate" in capsys.readouterr().err
    a_file = tmp_path / "a-file"  # a folder cannot be made inside a file, even by root
    a_file.write_text("")
    data = ["run", "--data-dir", str(a_file / "data"), "--quiet", "--port", "0"]
    assert main([*data, "--metrics-port", "0"]) == 2
    err = capsys.readouterr().err
    assert "--data-dir" in err and "cannot write there" in err and "Traceback" not in err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main([*base, "--guard-port", str(port)]) == 2
        err = capsys.readouterr().err
        assert "choose another with --guard-port PORT" in err and "Traceback" not in err


def test_pending_at_80_columns_cuts_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from airlock.store.schema import create_schema, open_engine

    url = f"sqlite:///{tmp_path / 'airlock.db'}"
    engine = open_engine(url)
    create_schema(engine)
    hold = HoldRequest(uuid.uuid4().hex, time.time() + 60, "h" * 64)
    row = run_row("REQUIRE_APPROVAL", params={"amount": 150000, "currency": "usd",
                                               "customer": "cus_LongCustomerId0123"})  # fmt: skip
    write(engine, DecisionRecord(row, hold))
    engine.dispose()
    monkeypatch.setenv("COLUMNS", "80")

    assert main(["pending", "--db", url]) == 0
    out = capsys.readouterr().out
    assert all(len(line) <= 80 for line in out.splitlines())
    assert hold.approval_id[:12] in out
    assert "amount=150000 currency=usd customer=cus_LongCustomerId0123" in out
    assert "…" not in out


def test_a_reviewers_decision_is_checkpointed_so_it_cannot_be_cut_from_the_end_unseen(
    engine: Any, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A denial made while the proxy is stopped, with the key: the command signs a checkpoint
    of it. Cut from the end, seal and all, with the approval set back to PENDING, it is missed
    no longer."""
    from sqlalchemy import delete, select, update

    from airlock.store.anchor import Anchoring
    from airlock.store.schema import Approval, AuditEvent, AuditHead, AuditSeal
    from airlock.store.seals import Sealer, seal_with
    from airlock.store.writer import GroupWriter, Pending
    from tests.test_store import held

    anchoring = Anchoring(engine, tmp_path)
    seal_with(engine, Sealer(anchoring.key))
    row, hold = held()
    writer = GroupWriter(engine)
    assert all(ok for _, ok, _ in writer.write_group([Pending(0, DecisionRecord(row, hold))]))
    writer.close()
    anchoring.checkpoint()  # the proxy's last, when it stopped
    stopped = anchoring.signed
    where = ["--db", db_url, "--data-dir", str(tmp_path)]
    assert main(["deny", hold.approval_id, "--reason", "no", "--reviewer", "alice", *where]) == 0
    latest = (tmp_path / "checkpoints" / "latest").read_text().splitlines()[1]
    assert int(latest) > stopped  # the denial is signed
    capsys.readouterr()

    with engine.begin() as conn:  # the denial erased by someone who can write the database
        kept = conn.execute(select(AuditEvent.hash).where(AuditEvent.seq == stopped)).scalar()
        conn.execute(delete(AuditEvent).where(AuditEvent.seq > stopped))
        conn.execute(delete(AuditSeal).where(AuditSeal.to_seq > stopped))
        conn.execute(update(AuditHead).values(seq=stopped, hash=kept))
        conn.execute(update(Approval).values(state="PENDING", reviewer=None, reason=None,
                                             resolved_at=None))  # fmt: skip
    assert main(["audit", "verify", *where]) == 1
    assert "the chain was cut" in capsys.readouterr().err


# What an agent sent is shown as sent: a `[/x]` in a Stripe id (cus_1%5B%2Fx%5D) is not markup,
# an escape sequence does not reach the reviewer's terminal.
MARKUP_TARGET = "customers/cus_1[/x] [bold]:smiley:"


@pytest.mark.parametrize("columns", ["200", "80"])
def test_pending_shows_markup_from_a_request_as_text(
    columns: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    row = run_row("REQUIRE_APPROVAL", agent="mal[/]lory", action="read_docs[/b]",
                  target=MARKUP_TARGET + "\x1b[2J", reason="held [red]x[/red]",
                  params={"note": "[/i]\x1b]8;;https://evil.example\x07"})  # fmt: skip
    url, _hold = held_in_a_store(tmp_path, row)
    monkeypatch.setenv("COLUMNS", columns)

    assert main(["pending", "--db", url]) == 0
    out = capsys.readouterr().out
    said = "".join(out.split())  # a narrow table wraps cells
    for sent in ("mal[/]lory", "read_docs[/b]", "cus_1[/x][bold]:smiley:", "held[red]x[/red]",
                 "note=[/i]"):  # fmt: skip
        assert sent in said, sent
    assert "\x1b" not in out and "\\x1b[2J" in said and "\\x07" in said


def test_runs_show_and_explain_show_markup_from_a_request_as_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from airlock.store.approvals import APPROVED, resolve_approval
    from airlock.store.schema import open_engine

    row = run_row("REQUIRE_APPROVAL", agent="mal[/]lory", target=MARKUP_TARGET,
                  action="read_docs[/b]", provider="guard[/u]")  # fmt: skip
    url, hold = held_in_a_store(tmp_path, row)
    engine = open_engine(url)
    resolve_approval(engine, hold.approval_id, APPROVED, "[/]eve", None)
    engine.dispose()

    assert main(["runs", "show", row.id, "--db", url]) == 0
    out = capsys.readouterr().out
    for sent in ("mal[/]lory", MARKUP_TARGET, "read_docs[/b]", "guard[/u]", "by [/]eve"):
        assert sent in out, sent

    request = tmp_path / "request.http"
    request.write_text("DELETE https://api.stripe.com/v1/customers/cus_1%5B%2Fx%5D HTTP/1.1\n\n")
    assert main(["explain", str(request), "--agent", "a[/]b"]) == 0
    out = capsys.readouterr().out
    assert "cus_1[/x]" in out and "(agent a[/]b)" in out


def test_the_banner_says_to_run_agents_as_another_user(capsys: pytest.CaptureFixture[str]) -> None:
    """Review H1: as the operator's user an agent runs `airlock approve` itself."""
    from airlock.console.cli import print_agent_setup

    print_agent_setup("127.0.0.1", 8080, Path("/tmp/ca.pem"))
    said = " ".join(capsys.readouterr().out.split())
    assert "export HTTPS_PROXY=http://127.0.0.1:8080" in said
    assert "Run agents as another OS user (or in a container or on another machine)" in said
    assert "`airlock approve` itself, under any reviewer's name" in said


def test_a_reviewer_without_the_audit_key_is_refused_on_a_sealed_store_unless_they_say_so(
    engine: Any, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A reviewer in another folder, the store named by --db, the proxy's key not beside them.
    Their vote, written unsealed, stays in the chain for good and fails every later `audit
    verify` with the key: so the command refuses, naming the fix. With --allow-unsealed it is
    written, and verify names it as a reviewer's unsealed write, then goes on checking: a run's
    decision edited after it is still found."""
    from sqlalchemy import select, update

    from airlock.store.anchor import Anchoring
    from airlock.store.schema import Approval, Run
    from airlock.store.seals import Sealer, seal_with
    from airlock.store.writer import GroupWriter, Pending
    from tests.test_store import held

    proxy_dir, elsewhere = tmp_path / "proxy", tmp_path / "elsewhere"
    elsewhere.mkdir()
    seal_with(engine, Sealer(Anchoring(engine, proxy_dir).key))  # the proxy, which seals
    row, hold = held()
    writer = GroupWriter(engine)
    writer.write_group([Pending(0, DecisionRecord(row, hold))])
    approve = ["approve", hold.approval_id, "--reviewer", "alice", "--db", db_url,
               "--data-dir", str(elsewhere)]  # fmt: skip
    assert main(approve) == 2
    err = capsys.readouterr().err
    assert "no audit key at" in err and "this store's audit events are sealed" in err
    assert "--data-dir" in err and "--allow-unsealed" in err
    with engine.connect() as conn:
        assert conn.execute(select(Approval.state)).scalar() == "PENDING"

    assert main([*approve, "--allow-unsealed"]) == 0
    assert "decisions go unsealed (--allow-unsealed)" in capsys.readouterr().err
    later = run_row()  # the proxy goes on deciding, sealed
    writer.write_group([Pending(0, DecisionRecord(later))])
    writer.close()
    verify = ["audit", "verify", "--db", db_url, "--data-dir", str(proxy_dir)]
    assert main(verify) == 1
    err = capsys.readouterr().err
    assert "audit trail NOT SEALED: 5 events, 2 runs and 1 approvals verified" in err
    assert ("unsealed: events #3..#4 (1 vote, 1 approval) lie in no seal: a reviewer's decision "
            "written without the audit key") in err  # fmt: skip

    with engine.begin() as conn:  # the later run's decision turned, by someone without the key
        conn.execute(update(Run).where(Run.id == later.id).values(decision="BLOCK"))
    assert main(verify) == 1
    err = capsys.readouterr().err
    assert f"run {later.id} was edited: decision is 'BLOCK'" in err
    assert "unsealed: events #3..#4 (1 vote, 1 approval)" in err


def test_runs_show_names_each_risk_factor_with_its_signed_points(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The factors as the risk score records them (factor, points, detail): they printed as
    `None +30:`, the name and detail read from keys nothing writes."""
    factors = [{"factor": "first_time_action", "points": 30, "detail": "agent-a never did this"},
               {"factor": "test_mode", "points": -10, "detail": "a test key"}]  # fmt: skip
    row = run_row("REQUIRE_APPROVAL", risk=20, risk_factors=factors)
    url, _ = held_in_a_store(tmp_path, row)
    assert main(["runs", "show", row.id, "--db", url]) == 0
    out = capsys.readouterr().out
    assert "first_time_action +30: agent-a never did this" in out
    assert "test_mode -10: a test key" in out and "None +" not in out


def test_review_and_approve_help_name_every_key_and_flag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for command in ("review", "approve"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "e = edit a param and approve the edited request" in out and "r = refresh" in out
    assert "--mappings DIR the mappings that say where a held request's params are" in out


def test_airlock_run_raises_the_open_files_limit_held_requests_need() -> None:
    """Each held request keeps its client's connection (one file descriptor) open for the hold
    window: with the usual soft limit of 1,024 a thousand holds would refuse new connections
    (found by review: 10,000 held used 10,009 descriptors). `airlock run` raises the soft limit
    to the hard one."""
    import resource
    import subprocess
    import sys

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    script = (
        "import resource\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit("
        "resource.RLIMIT_NOFILE)[1]))\n"
        "from airlock.console.proxy_master import raise_open_files_limit\n"
        "print(*raise_open_files_limit())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    before, after = map(int, done.stdout.split())
    assert before == 256
    assert after == (hard if hard != resource.RLIM_INFINITY else 1 << 20)


# Review: what decides a held request but was shown nowhere, or cut or dropped unsaid.
PAYOUT_QUERY = {"destination": ["acct_ATTACKER"], "amount": ["9900000"]}
HIDDEN_SQL = "DELETE FROM sessions WHERE [REDACTED]=[REDACTED]"  # the hidden text: session_id


@pytest.mark.parametrize("columns", ["200", "80"])
def test_pending_shows_the_query_string_and_values_hidden_by_redaction(
    columns: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """`POST /v1/payouts?destination=acct_ATTACKER&amount=9900000` showed as its body alone; a
    statement whose column name redaction hid showed no sign of it. The credential header,
    hidden on every request, is not counted."""
    request = {"method": "POST", "host": "api.example.com", "path": "/v1/payouts",
               "query": PAYOUT_QUERY, "headers": {"authorization": "Bearer [REDACTED]"},
               "body": {"note": "monthly report", "sql": HIDDEN_SQL}}  # fmt: skip
    row = run_row("REQUIRE_APPROVAL", action="http.write", target="api.example.com",
                  params={"method": "POST", "path": "/v1/payouts"}, request=request)  # fmt: skip
    url, _ = held_in_a_store(tmp_path, row)
    monkeypatch.setenv("COLUMNS", columns)

    assert main(["pending", "--db", url]) == 0
    said = "".join(capsys.readouterr().out.split())  # a narrow table wraps cells
    assert "query:?destination=acct_ATTACKER&amount=9900000" in said
    assert "⚠2valueshiddenbyredaction—Airlockcannotshowthem;denyiftheycouldmatter" in said


def test_pending_shows_params_that_are_objects_or_lists_cut_with_a_marker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A param whose value was an object or a list was left out of `airlock pending`."""
    params = {"amount": 500, "metadata": {"to": "acct_[/b]1\u200b"}, "items": [1, "two"],
              "memo": "x" * 1000}  # fmt: skip
    url, _ = held_in_a_store(tmp_path, run_row("REQUIRE_APPROVAL", params=params))
    monkeypatch.setenv("COLUMNS", "80")

    assert main(["pending", "--db", url]) == 0
    said = "".join(capsys.readouterr().out.split())
    assert 'metadata={"to":"acct_[/b]1\\u200b"}' in said and 'items=[1,"two"]' in said
    assert "memo=" + "x" * 300 + "…[700morecharacters]" in said


def test_runs_show_shows_the_query_a_cut_body_and_values_hidden_by_redaction(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The body was cut at 2,000 characters without a sign; the query was not shown."""
    request = {"method": "POST", "scheme": "https", "host": "api.example.com",
               "path": "/v1/payouts", "query": {**PAYOUT_QUERY, "memo": ["a&b=c d"]},
               "headers": {"authorization": "Bearer [REDACTED]"},
               "body": {"sql": HIDDEN_SQL, "pad": "y" * 3000}}  # fmt: skip
    row = run_row("REQUIRE_APPROVAL", request=request, params={"sql": HIDDEN_SQL})
    url, _ = held_in_a_store(tmp_path, row)
    monkeypatch.setenv("COLUMNS", "5000")  # one line each

    assert main(["runs", "show", row.id, "--db", url]) == 0
    out = capsys.readouterr().out
    assert ("POST https://api.example.com/v1/payouts"
            "?destination=acct_ATTACKER&amount=9900000&memo=a%26b%3Dc%20d") in out  # fmt: skip
    assert "⚠ 2 values hidden by redaction — Airlock cannot show them" in out
    body = out[out.index('{"sql"') :].splitlines()[0]
    more = len(json.dumps(request["body"])) - 2000
    assert body.endswith(f"y… [{more} more characters]") and len(body) < 2100
