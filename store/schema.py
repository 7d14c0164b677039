"""The database schema and engine: the one module that knows tables exist.

Times are stored as UNIX epoch seconds (float) so that they round-trip exactly on every backend;
the audit chain hashes them, and the CLI formats them for people.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from airlock.store.locations import database_url, default_data_dir, make_private_file

# The embedded default: one SQLite file in the data directory (store/locations.py).
DEFAULT_DB_URL = database_url(default_data_dir())


class Base(DeclarativeBase):
    pass


class Run(Base):
    """One request through the gate: what it meant, what was decided, and what happened.

    Values that come from outside (agent names, hosts, methods) are Text: a length limit that
    only PostgreSQL enforces would turn a long name into a refused request.
    """

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    at: Mapped[float] = mapped_column(Float, index=True)
    instance: Mapped[str] = mapped_column(Text)
    agent: Mapped[str] = mapped_column(Text, index=True)
    method: Mapped[str] = mapped_column(Text)
    host: Mapped[str] = mapped_column(Text)
    path: Mapped[str] = mapped_column(Text)
    provider: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(Text)
    category: Mapped[str] = mapped_column(String(32))
    sensitivity: Mapped[str] = mapped_column(String(16))
    target: Mapped[str] = mapped_column(Text)
    mapping_id: Mapped[str | None] = mapped_column(Text)
    # The vendor's own operation (aws.s3.PutBucketPolicy), when the catalog identified it.
    operation: Mapped[str | None] = mapped_column(Text)
    # sha256 of the configuration's texts that decided it (pipeline/yaml_source.py sources_hash)
    config_hash: Mapped[str | None] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    context: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # derived: environment, region
    undo: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # how the provider undoes it
    request: Mapped[dict[str, Any]] = mapped_column(JSON)  # the redacted request document
    decision: Mapped[str] = mapped_column(String(24))
    reason: Mapped[str] = mapped_column(Text)
    rules: Mapped[list[str]] = mapped_column(JSON)
    risk: Mapped[int | None] = mapped_column(Integer)  # 0-100
    risk_factors: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    # What shadow-mode rules would have decided, when any fired (nothing was enforced by them).
    shadow_decision: Mapped[str | None] = mapped_column(String(24))
    shadow_rules: Mapped[list[str] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)  # why a stage failed (fail-closed blocks)
    decision_ms: Mapped[float] = mapped_column(Float)
    outcome: Mapped[str | None] = mapped_column(String(24))
    status: Mapped[int | None] = mapped_column(Integer)
    upstream_ms: Mapped[float | None] = mapped_column(Float)
    # What the call did, as its answer or its agent says (redacted): an MCP tool's result.
    outcome_detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    # The runs in flight, by instance: what a stopped instance left is found without a scan
    # (a partial index, tiny since almost every run has an outcome).
    __table_args__ = (
        Index(
            "runs_without_outcome",
            "instance",
            sqlite_where=text("outcome IS NULL"),
            postgresql_where=text("outcome IS NULL"),
        ),
    )


class Approval(Base):
    """A held request waiting for a reviewer. PENDING → APPROVED | DENIED | EXPIRED | ABANDONED."""

    __tablename__ = "approvals"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    # indexed: a decider watching its held approvals reads only the recently settled ones
    resolved_at: Mapped[float | None] = mapped_column(Float, index=True)
    reviewer: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)
    request_hash: Mapped[str] = mapped_column(String(64), index=True)
    instance: Mapped[str] = mapped_column(Text)
    # How many distinct reviewers must approve (quorum); one denial ends it. None: one.
    required: Mapped[int | None] = mapped_column(Integer)
    # What makes an SDK's retries of one call the same request (its idempotency key, else the
    # request hash), scoped to the agent: a retry joins the approval instead of opening another.
    retry_key: Mapped[str | None] = mapped_column(String(300), index=True)
    released_at: Mapped[float | None] = mapped_column(Float)  # forwarded, once, at this time
    # The run (attempt) that was forwarded: a retry's, not always the opener's (run_id). None
    # before it was recorded (then taken as run_id's) and while not released.
    released_run: Mapped[str | None] = mapped_column(String(32), index=True)
    reviewer_roles: Mapped[list[str] | None] = mapped_column(JSON)  # who may decide; None: anyone
    # A reviewer's change to the held request, released instead of it (pipeline/edits.py):
    # {"params": {name: value}, "locations": {name: [where, ...]}, "by": reviewer, "at": time}
    edit: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    # One open approval per call, whichever proxy instance sees it first: a second instance's
    # insert finds this one and joins it (store/records.py), in the same transaction.
    __table_args__ = (
        Index(
            "one_pending_approval_per_call",
            "retry_key",
            unique=True,
            sqlite_where=text("state = 'PENDING'"),
            postgresql_where=text("state = 'PENDING'"),
        ),
    )


class ApprovalHolder(Base):
    """The proxy instances that held a flow for an approval: its opener, then every instance a
    retry of the call joined it from. An approval belongs to the call: it is expired when its
    holders are gone, not when the first one is. Not audited: it never decides an outcome."""

    __tablename__ = "approval_holders"

    approval_id: Mapped[str] = mapped_column(ForeignKey("approvals.id"), primary_key=True)
    instance: Mapped[str] = mapped_column(String(200), primary_key=True)
    at: Mapped[float] = mapped_column(Float)


class InstanceLease(Base):
    """A proxy instance's lease (store/instances.py): renewed by its decider while it runs, ended
    when it stops. Tells the other instances, on any host, whether what it holds is still held.
    Not audited: it never decides an outcome."""

    __tablename__ = "instances"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)  # HOST-PID.START
    host: Mapped[str] = mapped_column(Text)
    # Where its pid means something: the machine's boot and the pid namespace (a container).
    namespace: Mapped[str] = mapped_column(Text)
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[float] = mapped_column(Float)
    seen_at: Mapped[float] = mapped_column(Float)  # renewed every sync (2 s)
    stopped_at: Mapped[float | None] = mapped_column(Float)
    # When what it left (approvals only it held, runs without an outcome) was settled.
    cleared_at: Mapped[float | None] = mapped_column(Float)


class ApprovalVote(Base):
    """One reviewer's approval of a held request, while a quorum is being gathered."""

    __tablename__ = "approval_votes"
    __table_args__ = (UniqueConstraint("approval_id", "reviewer"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    approval_id: Mapped[str] = mapped_column(ForeignKey("approvals.id"), index=True)
    reviewer: Mapped[str] = mapped_column(Text)
    at: Mapped[float] = mapped_column(Float)
    reason: Mapped[str | None] = mapped_column(Text)
    # The version of the edit it approves (the approval's edit["version"]; None: no edit): an
    # edit after a vote restarts the count.
    edit_version: Mapped[int | None] = mapped_column(Integer)


class AuditEvent(Base):
    """Append-only and hash-chained: an event's hash covers its content and the previous hash."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[float] = mapped_column(Float)
    kind: Mapped[str] = mapped_column(String(16))
    run_id: Mapped[str | None] = mapped_column(String(32), index=True)
    payload: Mapped[str] = mapped_column(Text)  # canonical JSON, hashed as stored
    # How its hash and payload are made (store/audit.py): None for events of chain format 1,
    # written before RFC 8785; 2 for RFC 8785 canonical JSON throughout.
    format: Mapped[int | None] = mapped_column(Integer)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """The chain's tip, one row: writers lock it to append, and verify checks nothing follows it."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))


class AuditCut(Base):
    """Where retention cut the chain, one row: the last pruned event's position and hash, which
    the first kept event follows. A signed checkpoint outside the database vouches for it."""

    __tablename__ = "audit_cut"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))
    at: Mapped[float] = mapped_column(Float)  # when the cut was made
    # The signed checkpoint of the cut (a C2SP note: not secret), written with the prune, so
    # that every instance's verify finds it and no crash leaves a cut unsigned. None: a cut
    # made before it was stored here (its note is in the data directory's checkpoints/cut).
    note: Mapped[str | None] = mapped_column(Text)


class AuditSeal(Base):
    """A writer's signature over one group of events it committed (store/seals.py): the span
    from_seq..to_seq and the last event's hash, signed with a key the database does not hold."""

    __tablename__ = "audit_seals"

    to_seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    from_seq: Mapped[int] = mapped_column(Integer)
    key_id: Mapped[str] = mapped_column(String(8))
    signature: Mapped[str] = mapped_column(String(88))


class StoreKey(Base):
    """The fingerprint of a key every instance writing this store must hold (store/keys.py):
    one row per purpose. Never the key itself."""

    __tablename__ = "store_keys"

    purpose: Mapped[str] = mapped_column(String(32), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    since: Mapped[float] = mapped_column(Float)  # when the first instance holding it wrote here


GENESIS_HASH = "0" * 64


def new_id() -> str:
    """32 hex characters, time-ordered like UUIDv7 (48-bit milliseconds, then 80 random bits).

    New rows land at the end of each B-tree instead of on a random page: fewer pages written
    per commit, and ids sort by time.
    """
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(10)}"


def normalise_url(url: str) -> str:
    """Plain postgresql:// URLs use psycopg 3, the driver Airlock installs."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


# libpq's limits on a peer gone silent (a partition, a dead host, a failover behind an address,
# a firewall dropping the connection): without them a commit waits on the socket for the
# kernel's retransmission limit (~15 minutes), every request refused meanwhile and after. With
# them the write fails within ~10 s, its requests are refused, and the next one reconnects.
_SILENT_PEER_LIMITS = {
    "connect_timeout": 5,  # seconds
    "tcp_user_timeout": 10_000,  # ms that sent data may go unacknowledged
    "keepalives": 1,
    "keepalives_idle": 5,  # seconds idle before the first probe
    "keepalives_interval": 2,
    "keepalives_count": 3,
}

WAL_SIZE_LIMIT = 64 * 1024 * 1024  # bytes SQLite's WAL file is cut back to after a checkpoint

FULL, PROCESS = "full", "process"
DURABILITY_MODES = (FULL, PROCESS)


def open_engine(url: str = DEFAULT_DB_URL, durability: str = FULL) -> Engine:
    """durability: what a commit survives. full: a power loss (SQLite synchronous=FULL, an
    fsync per commit; PostgreSQL's commit). process: the proxy or its decider crashing, not the
    machine's power loss (SQLite synchronous=NORMAL in WAL); on PostgreSQL
    synchronous_commit=off, whose last ~0.6 s of commits a crash of the server or a power loss
    can take."""
    if durability not in DURABILITY_MODES:
        raise ValueError(f"durability is one of {', '.join(DURABILITY_MODES)}, not {durability!r}")
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        # A write that waits 5 s for a lock fails (and its request is refused) instead of hanging.
        settings = "-c lock_timeout=5000"
        if durability == PROCESS:
            settings += " -c synchronous_commit=off"
        options: dict[str, Any] = {}
        if parsed.drivername.endswith("psycopg"):
            options = {"options": settings}
            # The URL's own settings (?tcp_user_timeout=…) stand; these are the defaults.
            options |= {k: v for k, v in _SILENT_PEER_LIMITS.items() if k not in parsed.query}
        return create_engine(
            url, pool_pre_ping=True, pool_size=5, max_overflow=5, connect_args=options
        )
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        make_private_file(Path(parsed.database))  # 0600 in a new 0700 folder: runs are private
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
    _make_sqlite_durable_and_serial(engine, "FULL" if durability == FULL else "NORMAL")
    return engine


def _make_sqlite_durable_and_serial(engine: Engine, synchronous: str) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        # FULL: committed means on disk (an fsync per group); NORMAL: in the WAL, which survives
        # a process crash but not a power loss (--durability process)
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        # A reader that holds its snapshot long (a shell left in a transaction) stops
        # checkpoints from reaching the WAL's end, which then grows with every write (63 KB a
        # request, measured); once it ends, the WAL is cut back to this rather than kept.
        cursor.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection: Any) -> None:
        # Writers take the write lock up front: a deferred transaction that reads the audit head
        # and then writes could fail to upgrade its lock when another process writes meanwhile.
        # Readers stay deferred, so a long `audit verify` never holds up the proxy's writes.
        writes = connection.get_execution_options().get("airlock_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")


def write_transaction(engine: Engine) -> Any:
    """`with write_transaction(engine) as conn:` — a transaction that will write."""
    return engine.execution_options(airlock_write=True).begin()


def _add_missing_columns(engine: Engine) -> None:
    """Columns added since a store was created are added to it (all such columns are nullable),
    so a newer Airlock opens an older store instead of refusing every write."""
    existing = inspect(engine)
    with write_transaction(engine) as conn:
        for table in Base.metadata.sorted_tables:
            present = {column["name"] for column in existing.get_columns(table.name)}
            for column in table.columns:
                if column.name not in present:
                    kind = column.type.compile(dialect=engine.dialect)
                    conn.exec_driver_sql(
                        f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {kind}'
                    )


# Any fixed number: the PostgreSQL advisory lock under which instances make missing tables.
_SCHEMA_LOCK = 0x41_49_52_4C  # "AIRL"


def create_schema(engine: Engine) -> None:
    """Create missing tables and the chain's head row; safe to run at every start."""
    with _one_at_a_time(engine):
        _create_schema(engine)


@contextmanager
def _one_at_a_time(engine: Engine) -> Iterator[None]:
    """PostgreSQL: instances started together (an upgrade rolled out to all at once) make
    what is missing one after the other; create_all checks, then creates, and two at once
    collide on the same table. The lock is the holding transaction's, released at its end.
    SQLite's writers are serial already (BEGIN IMMEDIATE)."""
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.connect() as holding:
        holding.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
        yield


def _expire_duplicate_pending_approvals(engine: Engine) -> None:
    """Before one approval per call was a unique index, two instances could open two for one
    call: a store holding such a pair cannot take the index, and every start failed. All but
    the newest of each pair are expired, on record, before the index is made."""
    if "one_pending_approval_per_call" in {i["name"] for i in inspect(engine).get_indexes(
        "approvals"
    )}:  # fmt: skip
        return
    from airlock.store.audit import append_events  # here: they import this module
    from airlock.store.prepared import tx_of
    from airlock.store.records import settle_approval

    newest = (
        select(Approval.retry_key, func.max(Approval.created_at).label("created_at"))
        .where(Approval.state == "PENDING", Approval.retry_key.is_not(None))
        .group_by(Approval.retry_key)
        .having(func.count() > 1)
        .subquery()
    )
    older = select(Approval.id).join(newest, Approval.retry_key == newest.c.retry_key).where(
        Approval.state == "PENDING", Approval.created_at < newest.c.created_at
    )  # fmt: skip
    reason = "expired at upgrade: another approval for the same call was open"
    with write_transaction(engine) as conn:
        tx = tx_of(conn)
        events = []
        for approval_id in conn.execute(older).scalars().all():
            events += settle_approval(tx, approval_id, "EXPIRED", None, reason, time.time())[1]
        append_events(tx, events)


def _create_schema(engine: Engine) -> None:
    writable = engine.execution_options(airlock_write=True)
    Base.metadata.create_all(writable)
    _add_missing_columns(engine)
    _expire_duplicate_pending_approvals(engine)
    with writable.begin() as conn:  # indexes added since a store was created
        for index in (*Run.__table__.indexes, *Approval.__table__.indexes):
            index.create(conn, checkfirst=True)
        # The same index under its first name (stores made 2026-12-02 to 05): one page less
        # to write per decision on the stores that have it.
        conn.exec_driver_sql("DROP INDEX IF EXISTS ix_runs_without_outcome")
    with write_transaction(engine) as conn:
        if conn.execute(select(AuditHead.id).where(AuditHead.id == 1)).first() is None:
            conn.execute(insert(AuditHead).values(id=1, seq=0, hash=GENESIS_HASH))
