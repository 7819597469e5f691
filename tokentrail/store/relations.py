"""Arrow tables as named DuckDB relations for the statements of one block."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress

import duckdb
import pyarrow as pa


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
