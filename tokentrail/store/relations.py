"""Blocks of statements on one connection: Arrow tables as named relations, and transactions."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import duckdb
import pyarrow as pa

log = logging.getLogger(__name__)


@contextmanager
def registered(conn: duckdb.DuckDBPyConnection, **tables: pa.Table) -> Iterator[None]:
    """Each table as a relation named by its keyword while the block runs.

    >>> conn = duckdb.connect()
    >>> with registered(conn, tt_ids=pa.table({"id": [1, 2]})):
    ...     conn.execute("SELECT sum(id) FROM tt_ids").fetchall()
    [(3,)]
    """
    for name, table in tables.items():
        conn.register(name, table)
    try:
        yield
    finally:
        for name in tables:
            # A failed statement aborts the block's transaction, which then refuses even this:
            # that statement's error is the one to report, and the rollback drops the name.
            with suppress(duckdb.TransactionException):
                conn.unregister(name)


@contextmanager
def transaction(conn: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """The block's statements in one transaction, committed at its end, rolled back if it
    raises (or if the commit itself fails).

    >>> conn = duckdb.connect()
    >>> with transaction(conn):
    ...     _ = conn.execute("CREATE TABLE t AS SELECT 1 AS x")
    >>> conn.execute("SELECT x FROM t").fetchall()
    [(1,)]
    """
    conn.begin()
    try:
        yield
        conn.commit()
    except BaseException:
        try:
            conn.rollback()
        except duckdb.Error:
            # A failed commit has rolled back already, or the database was invalidated and
            # refuses even the rollback: what went wrong first is the error to report.
            log.debug("rollback failed", exc_info=True)
        raise
