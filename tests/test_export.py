"""`airlock audit export`: the chain out of the database, and checked again without it."""

from __future__ import annotations

import csv
import json
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from airlock.console.cli import main
from airlock.store.approvals import APPROVED, resolve_approval
from airlock.store.records import DecisionRecord, HoldRequest, OutcomeRecord
from airlock.store.schema import AuditEvent
from tests.test_store import run_row, write


def record_a_day(engine: Engine) -> int:
    """Decisions, a hold approved by a reviewer, outcomes: returns the events on the chain."""
    allowed, held = run_row("ALLOW"), run_row("REQUIRE_APPROVAL")
    hold = HoldRequest(uuid.uuid4().hex, time.time() + 60, "h" * 64)
    write(
        engine,
        DecisionRecord(allowed),
        DecisionRecord(held, hold),
        DecisionRecord(run_row("BLOCK")),
    )
    resolve_approval(engine, hold.approval_id, APPROVED, "alice", "checked")
    write(engine, OutcomeRecord(allowed.id, time.time(), "forwarded", 200, 12.0))
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(AuditEvent)).scalar_one()


def test_a_jsonl_export_holds_every_event_and_verifies_offline(
    engine: Engine, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    total = record_a_day(engine)
    out = tmp_path / "trail.jsonl"
    assert (
        main(["audit", "export", "--db", db_url, "--data-dir", str(tmp_path), "--out", str(out)])
        == 0
    )
    starts, *lines = out.read_text().splitlines()
    assert json.loads(starts) == {"starts": "genesis"} and len(lines) == total
    first = json.loads(lines[0])
    assert (first["seq"], first["kind"]) == (1, "decision") and len(first["hash"]) == 64
    assert {json.loads(line)["kind"] for line in lines} >= {"decision", "approval", "outcome"}

    assert main(["audit", "verify", "--export", str(out)]) == 0
    said = capsys.readouterr().out
    assert f"export intact: {total} events (chain positions 1 to {total})" in said
    assert "it starts at the chain's first event" in said


def test_an_edited_or_shortened_export_is_caught_offline(
    engine: Engine, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record_a_day(engine)
    out = tmp_path / "trail.jsonl"
    assert (
        main(["audit", "export", "--db", db_url, "--data-dir", str(tmp_path), "--out", str(out)])
        == 0
    )
    lines = out.read_text().splitlines()

    edited = [json.loads(line) for line in lines]
    blocked = next(e for e in edited if e.get("payload", {}).get("decision") == "BLOCK")
    blocked["payload"]["decision"] = "ALLOW"
    (tmp_path / "edited.jsonl").write_text("\n".join(json.dumps(e) for e in edited) + "\n")
    assert main(["audit", "verify", "--export", str(tmp_path / "edited.jsonl")]) == 1
    assert f"event {blocked['seq']}" in capsys.readouterr().err

    (tmp_path / "cut.jsonl").write_text("\n".join(lines[:2] + lines[3:]) + "\n")  # event 2
    assert main(["audit", "verify", "--export", str(tmp_path / "cut.jsonl")]) == 1
    assert "does not follow event 1" in capsys.readouterr().err


def test_csv_and_time_slices(engine: Engine, db_url: str, tmp_path: Path) -> None:
    total = record_a_day(engine)
    out = tmp_path / "trail.csv"
    assert main(["audit", "export", "--db", db_url, "--format", "csv", "--out", str(out)]) == 0
    with out.open(newline="") as rows:
        table = list(csv.DictReader(rows))
    assert len(table) == total
    assert table[0]["decision"] == "ALLOW" and table[0]["agent"] == "agent-a"
    assert json.loads(table[0]["payload"])["decision"] == "ALLOW"

    future = tmp_path / "none.jsonl"
    assert (
        main(["audit", "export", "--db", db_url, "--since", "2999-01-01", "--out", str(future)])
        == 0
    )
    assert [json.loads(line) for line in future.read_text().splitlines()] == [
        {"slice": {"since": "2999-01-01T00:00:00+00:00", "until": None}}
    ]
    assert main(["audit", "export", "--db", db_url, "--since", "yesterday"]) == 2


def test_ocsf_gives_one_api_activity_event_per_decision(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    record_a_day(engine)
    out = tmp_path / "trail.ocsf.jsonl"
    assert main(["audit", "export", "--db", db_url, "--format", "ocsf", "--out", str(out)]) == 0
    events = [json.loads(line) for line in out.read_text().splitlines()]
    with engine.connect() as conn:
        decisions = conn.execute(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.kind == "decision")
        ).scalar_one()
    assert len(events) == decisions == 3
    assert {e["class_uid"] for e in events} == {6003}
    dispositions = sorted(e["disposition"] for e in events)
    assert dispositions == ["Allowed", "Blocked", "Delayed"]
    first = events[0]
    assert first["type_uid"] == 6003 * 100 + first["activity_id"]
    assert first["actor"]["user"]["name"] == "agent-a"
    assert len(first["unmapped"]["hash"]) == 64 and first["unmapped"]["seq"] >= 1


def test_an_export_carries_the_signed_checkpoint_and_is_anchored_offline(
    engine: Engine, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The latest checkpoint travels first in a whole export: with the audit public key the
    export must reach the event it vouches for, and that event must be the one signed."""
    from airlock.store.anchor import (
        head_of,
        load_or_create_key,
        public_key_text,
        sign_checkpoint,
        write_checkpoint,
    )

    total = record_a_day(engine)
    key = load_or_create_key(tmp_path)
    size, root = head_of(engine)
    write_checkpoint(tmp_path, sign_checkpoint(key, size, root), size)
    public = public_key_text(key.public_key())
    out = tmp_path / "trail.jsonl"
    assert main(["audit", "export", "--db", db_url, "--data-dir", str(tmp_path),
                 "--out", str(out)]) == 0  # fmt: skip
    lines = out.read_text().splitlines()
    assert "checkpoint" in json.loads(lines[0]) and len(lines) == total + 2  # and where it starts

    assert main(["audit", "verify", "--export", str(out), "--public-key", public]) == 0
    assert f"the signed checkpoint at event {size} matches" in capsys.readouterr().out
    assert main(["audit", "verify", "--export", str(out)]) == 0
    assert "give --public-key to check it" in capsys.readouterr().out

    (tmp_path / "cut.jsonl").write_text("\n".join(lines[:-1]) + "\n")  # the last event dropped
    assert main(["audit", "verify", "--export", str(tmp_path / "cut.jsonl"),
                 "--public-key", public]) == 1  # fmt: skip
    assert "events were removed from its end" in capsys.readouterr().err
    other = public_key_text(load_or_create_key(tmp_path / "elsewhere").public_key())
    assert main(["audit", "verify", "--export", str(out), "--public-key", other]) == 1
    assert "no signature by this public key" in capsys.readouterr().err


def test_a_rewritten_export_is_refused_wherever_its_checkpoint_line_is_put(
    engine: Engine, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Someone rewrites every event of an export consistently (each BLOCK made ALLOW, every hash
    recomputed) and keeps the genuine signed checkpoint: first, it does not match its event;
    moved to the end, or given twice, it is refused for where it is."""
    from airlock.store.anchor import Anchoring, load_or_create_key, public_key_text
    from airlock.store.audit import chain_hash, jcs

    record_a_day(engine)
    Anchoring(engine, tmp_path).checkpoint()
    public = public_key_text(load_or_create_key(tmp_path).public_key())
    out = tmp_path / "trail.jsonl"
    assert main(["audit", "export", "--db", db_url, "--data-dir", str(tmp_path),
                 "--out", str(out)]) == 0  # fmt: skip
    checkpoint, _, *lines = out.read_text().splitlines(keepends=True)
    rewritten, prev = [], "0" * 64
    for event in map(json.loads, lines):
        if event["payload"].get("decision") == "BLOCK":
            event["payload"]["decision"] = "ALLOW"
        event["prev_hash"] = prev
        payload = jcs(event["payload"])
        fields = (event["seq"], event["at"], event["kind"], event["run_id"], payload)
        event["hash"] = prev = chain_hash(prev, *fields, event["format"])
        rewritten.append(json.dumps(event) + "\n")
    forged = tmp_path / "forged.jsonl"
    for arrangement, said in (
        ([checkpoint, *rewritten], "is not the one the signed checkpoint vouches for"),
        ([*rewritten, checkpoint], f"line {len(rewritten) + 1} is a checkpoint"),
        ([*rewritten[:2], checkpoint, *rewritten[2:]], "line 3 is a checkpoint"),
        ([checkpoint, checkpoint, *lines], "line 2 is a checkpoint"),
    ):
        forged.write_text("".join(arrangement))
        assert main(["audit", "verify", "--export", str(forged), "--public-key", public]) == 1
        assert said in capsys.readouterr().err
    forged.write_text("".join([*lines, checkpoint]))  # genuine events, but the line moved
    assert main(["audit", "verify", "--export", str(forged), "--public-key", public]) == 1
    assert main(["audit", "verify", "--export", str(out), "--public-key", public]) == 0


def test_a_time_slice_is_every_position_between_its_ends_and_verifies(
    engine: Engine, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Events are not in time order along the chain: a decision carries its request's arrival,
    an outcome its answer's. A slice runs from the first event at or after --since to the last
    before --until, every position between, so it verifies offline."""
    from datetime import UTC, datetime

    start = time.time() - 100
    first = run_row(at=start)
    write(engine, DecisionRecord(first))  # 1: at start
    write(engine, OutcomeRecord(first.id, start + 2, "forwarded", 200, 3.0))  # 2: start + 2
    write(engine, DecisionRecord(run_row(at=start + 1)))  # 3: arrived at start + 1
    write(engine, DecisionRecord(run_row(at=start + 3)))  # 4: start + 3
    middle = datetime.fromtimestamp(start + 1.5, UTC).isoformat()
    out = tmp_path / "slice.jsonl"
    export = ["audit", "export", "--db", db_url, "--data-dir", str(tmp_path), "--out", str(out)]
    for bound, positions in (("--since", [2, 3, 4]), ("--until", [1, 2, 3])):
        assert main([*export, bound, middle]) == 0
        exported = [json.loads(line) for line in out.read_text().splitlines()]
        assert [event["seq"] for event in exported if "seq" in event] == positions
        assert main(["audit", "verify", "--export", str(out)]) == 0
        said = capsys.readouterr().out
        assert (
            f"export slice intact: {len(positions)} events (chain positions {positions[0]} "
            f"to {positions[-1]}) verified offline; a time slice ({bound[2:]} " in said
        )


def test_verify_export_tries_every_key_and_says_when_there_is_no_checkpoint(
    engine: Engine, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Instances with keys of their own: the export's checkpoint is checked with whichever of
    the keys given signed it. An export with --until carries none: not anchored, not broken."""
    from airlock.store.anchor import Anchoring, load_or_create_key, public_key_text

    record_a_day(engine)
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    Anchoring(engine, here).checkpoint()  # signed by this instance's key
    keys = [public_key_text(load_or_create_key(d).public_key()) for d in (elsewhere, here)]
    out = tmp_path / "trail.jsonl"
    export = ["audit", "export", "--db", db_url, "--data-dir", str(here), "--out", str(out)]
    verify = ["audit", "verify", "--export", str(out), "--public-key", keys[0],
              "--public-key", keys[1]]  # fmt: skip
    assert main(export) == 0
    assert main(verify) == 0
    assert "the signed checkpoint at event" in capsys.readouterr().out

    assert main([*export, "--until", "2999-01-01"]) == 0
    assert main(verify) == 0  # a slice need not carry one
    said = capsys.readouterr().out
    assert said.startswith("export slice intact:")
    assert "; not anchored: it carries no signed checkpoint" in said


def test_an_export_carries_its_seals_and_is_vouched_for_to_its_last_event(
    engine: Engine, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Events after the export's checkpoint, or after an older checkpoint put in its place,
    are vouched for by the seals it carries: rewritten, their seals no longer match; their
    seals dropped too, they lie in no seal. A checkpoint the auditor holds (--checkpoint) is
    checked in place of the one the export carries."""
    from airlock.store.anchor import Anchoring, public_key_text
    from airlock.store.audit import chain_hash, jcs
    from airlock.store.seals import Sealer, seal_with
    from airlock.store.writer import GroupWriter, Pending

    anchoring = Anchoring(engine, tmp_path)
    seal_with(engine, Sealer(anchoring.key))
    writer = GroupWriter(engine)

    def decide() -> None:
        row = DecisionRecord(run_row("BLOCK"))
        assert all(ok for _, ok, _ in writer.write_group([Pending(0, row)]))

    decide(), decide()
    anchoring.checkpoint()  # at event 2
    older = tmp_path / "checkpoints" / "000000000002.checkpoint"
    decide(), decide()
    anchoring.checkpoint()  # latest: at event 4
    decide()  # 5: after it
    writer.close()
    public = public_key_text(anchoring.key.public_key())
    out = tmp_path / "trail.jsonl"
    assert main(["audit", "export", "--db", db_url, "--data-dir", str(tmp_path),
                 "--out", str(out)]) == 0  # fmt: skip
    verify = ["audit", "verify", "--public-key", public, "--export"]
    assert main([*verify, str(out)]) == 0
    said = capsys.readouterr().out
    assert "the signed checkpoint at event 4 matches (the export runs to event 5)" in said
    assert "sealed: every event from #1 to #5 carries its writer's seal" in said

    def rewritten(lines: list[str], start: int, keep_seals: bool) -> list[str]:
        out, prev = [], None
        for event in map(json.loads, lines):
            if "seq" in event and event["seq"] >= start:
                event["payload"]["decision"] = "ALLOW"
                event["prev_hash"] = prev
                fields = (event["seq"], event["at"], event["kind"], event["run_id"])
                event["hash"] = chain_hash(prev, *fields, jcs(event["payload"]), event["format"])
                if not keep_seals:
                    event.pop("seal", None)
            prev = event.get("hash", prev)
            out.append(json.dumps(event) + "\n")
        return out

    checkpoint, _, *events = out.read_text().splitlines()
    forged = tmp_path / "forged.jsonl"
    for lines, problem in (
        (rewritten([checkpoint, *events], 5, True), "the seal of events #5..#5 does not match"),
        (rewritten([checkpoint, *events], 5, False), "events #5..#5 lie in no seal"),
        # an older checkpoint put in, the events after it rewritten and their seals dropped
        ([json.dumps({"checkpoint": older.read_text()}) + "\n",
          *rewritten(events[:4], 3, False)], "events #3..#4 lie in no seal"),
    ):  # fmt: skip
        forged.write_text("".join(lines))
        assert main([*verify, str(forged)]) == 1
        assert problem in capsys.readouterr().err

    forged.write_text("".join(line + "\n" for line in events[:4]))
    latest = str(tmp_path / "checkpoints" / "latest")
    assert main([*verify, str(forged), "--checkpoint", latest]) == 0  # the events before it
    assert "the signed checkpoint at event 4 matches" in capsys.readouterr().out
    forged.write_text("".join(line + "\n" for line in events[:3]))  # cut short of it
    assert main([*verify, str(forged), "--checkpoint", latest]) == 1
    assert "the export ends at event 3, but its signed checkpoint vouches for 4" in (
        capsys.readouterr().err
    )


def test_an_export_from_any_instance_carries_the_signed_cut_stored_with_the_prune(
    engine: Engine, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One instance prunes; an export made from another's data directory (no checkpoints/cut
    there) carries the signed cut from the store, and starts where it says."""
    from airlock.store.anchor import Anchoring, public_key_text
    from airlock.store.retention import DAY

    write(engine, *(DecisionRecord(run_row("ALLOW", at=time.time() - 200 * DAY + i))
                    for i in range(3)))  # fmt: skip
    write(engine, DecisionRecord(run_row("BLOCK")))
    pruner, other = Anchoring(engine, tmp_path / "a", 180), Anchoring(engine, tmp_path / "b")
    pruner.prune()
    other.checkpoint()
    out = tmp_path / "trail.jsonl"
    assert main(["audit", "export", "--db", db_url, "--data-dir", str(tmp_path / "b"),
                 "--out", str(out)]) == 0  # fmt: skip
    assert '{"cut": ' in out.read_text()
    keys = [public_key_text(a.key.public_key()) for a in (pruner, other)]
    assert main(["audit", "verify", "--export", str(out), "--public-key", keys[0],
                 "--public-key", keys[1]]) == 0  # fmt: skip
    assert "it starts after the signed retention cut at event 3" in capsys.readouterr().out


def test_an_export_with_its_first_events_removed_is_refused(
    engine: Engine, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A whole export starts at the chain's first event, after the all-zero hash, and says so;
    one with its first events deleted (with its header lines or without) is refused, as is one
    with its checkpoint line removed and its end cut; a slice says it is one."""
    from airlock.store.anchor import Anchoring, public_key_text

    record_a_day(engine)
    anchoring = Anchoring(engine, tmp_path)
    anchoring.checkpoint()
    key = public_key_text(anchoring.key.public_key())
    out = tmp_path / "trail.jsonl"
    export = ["audit", "export", "--db", db_url, "--data-dir", str(tmp_path), "--out", str(out)]
    assert main(export) == 0
    checkpoint, starts, *events = out.read_text().splitlines(keepends=True)
    forged = tmp_path / "forged.jsonl"
    for lines in ([checkpoint, starts, *events[2:]], [starts, *events[2:]], events[2:]):
        forged.write_text("".join(lines))
        for keys in ([], ["--public-key", key]):
            assert main(["audit", "verify", "--export", str(forged), *keys]) == 1
            err = capsys.readouterr().err
            assert "export BROKEN: the export starts at event 3, not at the chain's first" in err
            assert "events were removed from its start" in err

    forged.write_text("".join([starts, *events[:-2]]))  # its end cut, and the checkpoint removed
    assert main(["audit", "verify", "--export", str(forged), "--public-key", key]) == 1
    assert "it carries no signed checkpoint, and it is not a slice" in capsys.readouterr().err
    forged.write_text("".join([checkpoint, starts, *events[:-2]]))  # checked without the key
    assert main(["audit", "verify", "--export", str(forged)]) == 1
    assert f"the checkpoint it carries names {len(events)} events" in capsys.readouterr().err

    assert main([*export, "--since", "2000-01-01"]) == 0  # a slice: every event, and says so
    assert main(["audit", "verify", "--export", str(out), "--public-key", key]) == 0
    said = capsys.readouterr().out
    assert said.startswith("export slice intact:") and "not that the trail is whole" in said


def test_an_export_cut_after_the_retention_cut_is_refused(
    engine: Engine, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a prune, a whole export starts right after the signed cut: not an event later."""
    from airlock.store.anchor import Anchoring, public_key_text
    from airlock.store.retention import DAY

    write(engine, *(DecisionRecord(run_row("ALLOW", at=time.time() - 200 * DAY + i))
                    for i in range(3)))  # fmt: skip
    write(engine, *(DecisionRecord(run_row("BLOCK")) for _ in range(3)))
    anchoring = Anchoring(engine, tmp_path, 180)
    anchoring.prune()
    anchoring.checkpoint()
    out = tmp_path / "trail.jsonl"
    assert main(["audit", "export", "--db", db_url, "--data-dir", str(tmp_path),
                 "--out", str(out)]) == 0  # fmt: skip
    checkpoint, cut, first, *rest = out.read_text().splitlines(keepends=True)
    assert '"cut"' in cut and json.loads(first)["seq"] == 4
    (tmp_path / "forged.jsonl").write_text("".join([checkpoint, cut, *rest]))
    key = public_key_text(anchoring.key.public_key())
    assert main(["audit", "verify", "--export", str(tmp_path / "forged.jsonl"),
                 "--public-key", key]) == 1  # fmt: skip
    assert "event 5 does not follow the signed retention cut at event 3" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize("fmt", ["csv", "ocsf"])
def test_verify_says_only_json_lines_exports_can_be_verified(
    fmt: str, engine: Engine, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record_a_day(engine)
    out = tmp_path / f"trail.{fmt}"
    assert main(["audit", "export", "--db", db_url, "--format", fmt, "--out", str(out)]) == 0
    assert main(["audit", "verify", "--export", str(out)]) == 1
    assert (
        "only JSON-lines exports (`airlock audit export`, --format jsonl, the default) can "
        "be verified" in capsys.readouterr().err
    )
