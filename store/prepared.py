"""The request path's few statements, compiled once per dialect and run on the DBAPI cursor.

Building and compiling a SQLAlchemy statement costs ~50 µs per execution; a decision needs five.
These are compiled from the same table definitions (schema.py stays the single source), then
executed inside the caller's SQLAlchemy transaction with the driver's own executemany.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import JSON, Connection, bindparam, insert, literal_column, select, update
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement

from store.schema import Approval, AuditEvent, AuditHead, Run


@dataclass(frozen=True)
class Prepared:
    sql: str
    positional_names: tuple[str, ...] | None  # None: the driver takes named parameters
    json_columns: frozenset[str]

    def _parameters(self, values: dict[str, Any]) -> Sequence[Any] | dict[str, Any]:
        if self.json_columns:
            values = {k: json.dumps(v) if k in self.json_columns else v for k, v in values.items()}
        if self.positional_names is None:
            return values
        return tuple(values[name] for name in self.positional_names)

    def execute_many(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.executemany(self.sql, [self._parameters(row) for row in rows])
        finally:
            cursor.close()

    def fetch_one(self, conn: Connection) -> tuple[Any, ...]:
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(self.sql, () if self.positional_names is not None else {})
            return tuple(cursor.fetchone())
        finally:
            cursor.close()


def _prepare(statement: ClauseElement, dialect: Dialect) -> Prepared:
    compiled = statement.compile(dialect=dialect)
    table = getattr(statement, "table", None)
    json_columns = frozenset(
        c.name for c in (table.columns if table is not None else ()) if isinstance(c.type, JSON)
    )
    names = tuple(compiled.positiontup or ()) if compiled.positional else None
    return Prepared(compiled.string, names, json_columns)


@dataclass(frozen=True)
class Statements:
    insert_runs: Prepared
    insert_approvals: Prepared
    insert_events: Prepared
    lock_head: Prepared
    move_head: Prepared
    set_outcomes: Prepared


_HEAD = AuditHead.id == literal_column("1")


@cache
def _statements_for(dialect_name: str, dialect: Dialect) -> Statements:
    return Statements(
        insert_runs=_prepare(insert(Run), dialect),
        insert_approvals=_prepare(insert(Approval), dialect),
        insert_events=_prepare(insert(AuditEvent), dialect),
        lock_head=_prepare(
            select(AuditHead.seq, AuditHead.hash).where(_HEAD).with_for_update(), dialect
        ),
        move_head=_prepare(
            update(AuditHead).where(_HEAD).values(seq=bindparam("seq"), hash=bindparam("hash")),
            dialect,
        ),
        set_outcomes=_prepare(
            update(Run)
            .where(Run.id == bindparam("rid"))
            .values(
                outcome=bindparam("outcome"),
                status=bindparam("status"),
                upstream_ms=bindparam("upstream_ms"),
            ),
            dialect,
        ),
    )


def statements(conn: Connection) -> Statements:
    return _statements_for(conn.dialect.name, conn.dialect)
