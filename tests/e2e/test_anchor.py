"""The audit chain anchored outside the database: signed checkpoints in the data directory,
checked by `airlock audit verify` with the public key. A chain cut, or rewritten consistently
by someone who can write the database but does not hold the key, is caught."""

from __future__ import annotations

import http.server
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import delete, update

from airlock.console.standins import Upstream
from airlock.store.anchor import CHECKPOINTS, PUBLIC_FILE, open_checkpoint, read_public_key
from airlock.store.audit import chain_hash
from airlock.store.schema import AuditEvent, AuditHead, Run, open_engine
from tests.e2e.test_gate import CHARGES, airlock, eventually, runs
from tests.helpers.proxy import Proxy

pytestmark = pytest.mark.e2e


def verify(proxy: Proxy, *extra: str) -> tuple[int, str]:
    done = airlock(
        "audit", "verify", "--db", proxy.db_url, "--data-dir", str(proxy.workdir), *extra
    )
    return done.returncode, done.stdout + done.stderr


def test_checkpoints_anchor_the_chain_and_catch_what_the_database_alone_cannot(
    start_proxy: Callable[..., Proxy], upstream: Upstream, tmp_path: Path
) -> None:
    proxy = start_proxy()
    session = proxy.session()
    for amount in (100, 200, 300):
        assert session.post(CHARGES, data={"amount": amount, "currency": "usd"}).status_code == 200
    eventually(lambda: all(r.outcome for r in runs(proxy)))
    assert proxy.stop() is not None  # a last checkpoint is written as the writer stops
    latest = proxy.workdir / CHECKPOINTS / "latest"
    assert latest.is_file()
    note = latest.read_text()
    assert note.startswith("airlock.audit/v1\n") and "\n\n\u2014 airlock-audit " in note
    assert (proxy.workdir / "keys" / "audit-ed25519.pem").stat().st_mode & 0o077 == 0

    code, said = verify(proxy)
    assert code == 0, said
    assert "anchored: the signed checkpoint at event" in said
    assert "sealed: every group of events since sealing began carries its writer's seal" in said
    assert "\nseals-from 1\n" in note  # where the writers' seals begin, signed

    db = Path(proxy.db_url.removeprefix("sqlite:///"))
    intact = tmp_path / "intact.db"
    shutil.copy(db, intact)

    # Cut the tail and move the head back: the chain alone is consistent, the checkpoint is not.
    engine = open_engine(proxy.db_url)
    with engine.begin() as conn:
        last = conn.execute(AuditEvent.__table__.select().order_by(AuditEvent.seq.desc())).first()
        previous = conn.execute(
            AuditEvent.__table__.select().where(AuditEvent.seq == last.seq - 1)
        ).first()
        assert last.kind == "outcome"  # the last charge's answer: undone along with its event
        conn.execute(delete(AuditEvent).where(AuditEvent.seq == last.seq))
        conn.execute(update(AuditHead).values(seq=previous.seq, hash=previous.hash))
        conn.execute(update(Run).where(Run.id == last.run_id)
                     .values(outcome=None, status=None, upstream_ms=None))  # fmt: skip
    engine.dispose()
    code, said = verify(proxy)
    assert code == 1 and "the chain was cut" in said
    alone = airlock("audit", "verify", "--db", proxy.db_url, "--data-dir", str(tmp_path))
    assert alone.returncode == 0  # without the checkpoint the cut chain looks intact

    # Rewrite the last event consistently (a new hash that chains): caught by the checkpoint.
    shutil.copy(intact, db)
    engine = open_engine(proxy.db_url)
    with engine.begin() as conn:
        last = conn.execute(AuditEvent.__table__.select().order_by(AuditEvent.seq.desc())).first()
        forged = last.payload.replace('"outcome":"forwarded"', '"outcome":"blocked"')
        digest = chain_hash(last.prev_hash, last.seq, last.at, last.kind, last.run_id, forged)
        conn.execute(update(AuditEvent).where(AuditEvent.seq == last.seq)
                     .values(payload=forged, hash=digest))  # fmt: skip
        conn.execute(update(AuditHead).values(hash=digest))
        conn.execute(update(Run).where(Run.id == last.run_id).values(outcome="blocked"))
    engine.dispose()
    code, said = verify(proxy)
    assert code == 1 and "rewritten" in said

    # An altered checkpoint file, or another key, is refused.
    shutil.copy(intact, db)
    origin, size, rest = note.split("\n", 2)
    latest.write_text(f"{origin}\n{int(size) - 1}\n{rest}")  # claims a shorter chain
    code, said = verify(proxy)
    assert code == 1 and "signature does not match its content" in said
    latest.write_text(note)
    other_key = "airlock-audit+" + "A" * 43 + "="
    code, said = verify(proxy, "--public-key", other_key)
    assert code == 1 and "which was not given: pass its --public-key" in said  # its seals
    assert (proxy.workdir / PUBLIC_FILE).read_text().startswith("airlock-audit+")


class WitnessServer:
    """A witness elsewhere: keeps every note POSTed to it."""

    def __init__(self) -> None:
        received = self.received = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((self.headers["Content-Type"], body.decode()))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/checkpoints"


def test_checkpoints_also_reach_a_witness(start_proxy: Callable[..., Proxy]) -> None:
    witness = WitnessServer()
    proxy = start_proxy("--witness-url", witness.url)
    assert proxy.session().post(CHARGES, data={"amount": 100, "currency": "usd"}).ok
    eventually(lambda: all(r.outcome for r in runs(proxy)))
    assert proxy.stop() is not None  # the last checkpoint, sent before the decider exits
    witness.server.shutdown()
    assert witness.received, "the witness received no checkpoint"
    kind, note = witness.received[-1]
    assert kind.startswith("text/plain")
    assert note == (proxy.workdir / CHECKPOINTS / "latest").read_text()
    public = read_public_key((proxy.workdir / PUBLIC_FILE).read_text())
    assert open_checkpoint(note, public).size == len(runs(proxy)) * 2  # a decision, an outcome
