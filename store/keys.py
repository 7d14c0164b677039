"""The request key: approvals are bound to their requests without a guessable hash in the store.

An approval records a hash of the request it is bound to: method, URL, body, agent and the
credentials it carries (pipeline/run_record.py request_hash). A plain SHA-256 of that would let
anyone who can read the database (a backup, a replica, an audit export) test guesses of a weak
password in a Basic header or a body field offline. The hash is an HMAC with this key instead,
kept in the data directory beside the audit key (mode 0600), never in the database.

Every instance writing one store must hold the same key: a retry that reaches another instance
joins its approval by that hash. The store keeps the key's fingerprint (never the key), and an
instance holding another key refuses to start.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
import time
from pathlib import Path

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from airlock.store.approvals import EXPIRED
from airlock.store.audit import append_events
from airlock.store.instances import Here, liveness
from airlock.store.locations import make_private_dir
from airlock.store.prepared import PENDING, tx_of
from airlock.store.records import settle_approval
from airlock.store.schema import Approval, StoreKey, write_transaction

KEY_FILE = "keys/request-hash.key"
PURPOSE = "request-hash"
_KEY_BYTES = 32


class RequestKeyError(Exception):
    """The data directory's request key cannot be read, or it is not the store's."""


def load_or_create_request_key(data_dir: Path, create: bool = True) -> bytes:
    """The data directory's request key, made on first use (64 hex digits, mode 0600)."""
    path = Path(data_dir) / KEY_FILE
    try:
        if not path.exists():
            if not create:
                raise RequestKeyError(f"{path}: no request key (the proxy makes it as it starts)")
            _create(path)
        key = bytes.fromhex(path.read_text().strip())
    except OSError as e:
        raise RequestKeyError(f"{path}: cannot read or make the request key ({e})") from e
    except ValueError:
        key = b""
    if len(key) < _KEY_BYTES:
        raise RequestKeyError(f"{path}: not an Airlock request key ({_KEY_BYTES * 2} hex digits)")
    return key


def _create(path: Path) -> None:
    """Written whole under another name, then linked into place: an instance starting at the
    same moment reads either no key (and makes its own, which loses the race) or all of one."""
    make_private_dir(path.parent)
    descriptor, draft = tempfile.mkstemp(dir=path.parent, prefix=".request-key-")  # mode 0600
    try:
        with os.fdopen(descriptor, "w") as out:
            out.write(secrets.token_bytes(_KEY_BYTES).hex() + "\n")
            out.flush()
            os.fsync(out.fileno())  # on disk before the store is bound to it (fsynced too)
        os.link(draft, path)
    except FileExistsError:
        pass  # another process's key is in place: that one is used
    finally:
        os.unlink(draft)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the name, too
    finally:
        os.close(folder)


def fingerprint(key: bytes) -> str:
    """What the store keeps to recognise the key: it does not reveal the key."""
    return hashlib.sha256(b"airlock.request-key/v1\n" + key).hexdigest()[:16]


def bind_to_store(engine: Engine, key: bytes, data_dir: Path) -> None:
    """The first instance's key becomes the store's; later instances must hold the same one.
    Raises RequestKeyError, saying how to fix it."""
    mine = fingerprint(key)
    found = _stored_fingerprint(engine)
    if found is None:
        try:
            with write_transaction(engine) as conn:
                conn.execute(
                    insert(StoreKey).values(purpose=PURPOSE, fingerprint=mine, since=time.time())
                )
        except IntegrityError:
            pass  # another instance bound its key first: compared below
        found = _stored_fingerprint(engine)
    if found != mine:
        raise RequestKeyError(
            f"this store's approvals are bound with another request key (fingerprint {found}; "
            f"{Path(data_dir) / KEY_FILE} has {mine}). Every instance on one store needs the "
            f"same key: copy {KEY_FILE} from the data directory of an instance that already "
            "uses this store (if none holds it any more: airlock rekey)"
        )


REKEYED = "the store's request key was replaced (airlock rekey): no retry can join it"


def replace_store_key(engine: Engine, key: bytes) -> list[str]:
    """`airlock rekey`, for a store whose request key is lost: `key` becomes the store's. The
    approvals still open were bound with the lost key and no retry can join them any more:
    they are expired, on record. Refused while an instance runs on the store (it decides
    with the old key). Returns the approvals expired."""
    now = time.time()
    with write_transaction(engine) as conn:
        leases = liveness(conn, Here(None))
        running = sorted(i for i in leases.leases if not leases.gone(i))
        if running:
            raise RequestKeyError(
                f"{len(running)} instance(s) still run on this store ({', '.join(running)}) "
                "and decide with its key: stop them first"
            )
        tx, expired = tx_of(conn), []
        pending = select(Approval.id).where(Approval.state == PENDING).order_by(Approval.id)
        for approval_id in conn.execute(pending).scalars().all():
            settlement, events = settle_approval(tx, approval_id, EXPIRED, None, REKEYED, now)
            if settlement.won:
                append_events(tx, events)
                expired.append(approval_id)
        conn.execute(delete(StoreKey).where(StoreKey.purpose == PURPOSE))
        conn.execute(
            insert(StoreKey).values(purpose=PURPOSE, fingerprint=fingerprint(key), since=now)
        )
    return expired


def _stored_fingerprint(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return conn.execute(
            select(StoreKey.fingerprint).where(StoreKey.purpose == PURPOSE)
        ).scalar()
