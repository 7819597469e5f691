"""All graph SQL: chains, token edges, lineage, reach and blast radius, paths and exposure.

Four derived tables serve the graph (migration 3), merged per batch by `merge_graph`, in an
order-independent way like `tokens` and `token_edges`:

- `traces`: where each trace lies in event time, so reading a chain touches a few row groups;
- `chain_reach`: for each token, the targets reached *downstream* of its hops by other tokens
  (transitive reach over chains), recomputed for every trace a batch touches, so a late parent
  span links the hops below it the moment it lands;
- `token_links`: child -> parent token, from `token.parent_token_id` and from calls that issued
  a token (`attributes.issued_token`: token exchange, AssumeRole, GetSessionToken ...);
- `operation_scopes`: every (operation, scope) pair with its privilege class, classified once
  when first stored (a change to `privilege_of` comes with a migration that reclassifies).

Migration 7 adds `service_hops`, the service graph path searches walk (service -> service in one
step), merged per batch by `merge_graph` too.

Reads return small typed rows; `tokentrail.graph` turns them into chains, graphs and scores.
Timestamps come back as UTC microseconds (`*_us`) so no time zone setting can shift them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Final, NamedTuple

import duckdb
import pyarrow as pa

from tokentrail.catalog import PRIVILEGES, Catalog, privilege_of
from tokentrail.events import EPOCH, ONE_US
from tokentrail.store.relations import registered, transaction

GRAPH_TABLES: Final = """
-- Every trace seen: its span of event time (to read a chain from a few row groups).
CREATE TABLE traces (
    trace_id   VARCHAR PRIMARY KEY,
    first_seen TIMESTAMPTZ NOT NULL,
    last_seen  TIMESTAMPTZ NOT NULL,
    events     BIGINT NOT NULL
);

-- Transitive reach over chains: `token_id` was used at a hop, and below that hop, in the same
-- trace, another token reached `target`. The first such hop is kept as evidence.
CREATE TABLE chain_reach (
    token_id       VARCHAR NOT NULL,
    target         VARCHAR NOT NULL,
    operation      VARCHAR NOT NULL,
    scope          VARCHAR NOT NULL,    -- '' when the call named none
    environments   VARCHAR[] NOT NULL,
    first_seen     TIMESTAMPTZ NOT NULL,
    last_seen      TIMESTAMPTZ NOT NULL,
    first_event_id VARCHAR NOT NULL,    -- the earliest downstream hop ...
    first_trace_id VARCHAR NOT NULL,    -- ... its trace
    first_token_id VARCHAR NOT NULL,    -- ... and the token that made it
    PRIMARY KEY (token_id, target, operation, scope)
);

-- Every (operation, scope) stored, with its class by `tokentrail.catalog.privilege_of`: scores
-- weigh privilege in SQL without classifying millions of edges per query.
CREATE TABLE operation_scopes (
    operation VARCHAR NOT NULL,
    scope     VARCHAR NOT NULL,         -- '' when the call named none
    privilege VARCHAR NOT NULL,         -- read | write | admin
    PRIMARY KEY (operation, scope)
);

-- Token lineage: `child_token_id` was derived from `parent_token_id`.
CREATE TABLE token_links (
    child_token_id  VARCHAR NOT NULL,
    parent_token_id VARCHAR NOT NULL,
    via             VARCHAR NOT NULL,   -- 'token.parent_token_id' or the issuing operation
    first_seen      TIMESTAMPTZ NOT NULL,
    event_id        VARCHAR NOT NULL,   -- the earliest event that showed the link
    PRIMARY KEY (child_token_id, parent_token_id)
);

-- Tokens whose reach may have changed, and in which merged batch (`meta.graph_batch`) last.
CREATE TABLE reach_changes (
    token_id VARCHAR PRIMARY KEY,
    batch    BIGINT NOT NULL
);

-- Blast radius scores of every token under one catalog (its fingerprint), refreshed on read
-- for the tokens whose reach changed since `blast_state.batch`. (Version 8 drops its key.)
CREATE TABLE blast_scores (
    catalog            VARCHAR NOT NULL,
    token_id           VARCHAR NOT NULL,
    score              DOUBLE NOT NULL,
    direct_targets     BIGINT NOT NULL,
    transitive_targets BIGINT NOT NULL,
    environments       VARCHAR[] NOT NULL,
    PRIMARY KEY (catalog, token_id)
);
CREATE TABLE blast_state (
    catalog VARCHAR PRIMARY KEY,
    batch   BIGINT NOT NULL
);

-- One token's (or identity's) reach is read by index, not by scanning millions of edges.
CREATE INDEX token_edges_token ON token_edges (token_id);
CREATE INDEX token_edges_identity ON token_edges (identity);
CREATE INDEX chain_reach_token ON chain_reach (token_id);
CREATE INDEX token_links_parent ON token_links (parent_token_id);
"""

# Version 8: `blast_scores` without its primary key. Maintaining that index cost 2-3 s of the
# 3.5 s it took to store a new catalog's 208k scores at 5M events; the scores are a cache, so the
# table starts empty and the next ranking refills it. `blast_state` keeps its key: two writers
# refreshing at once collide on its row, so one of them retries instead of both storing.
UNKEYED_SCORES: Final = """
DROP TABLE blast_scores;
CREATE TABLE blast_scores (
    catalog            VARCHAR NOT NULL,
    token_id           VARCHAR NOT NULL,
    score              DOUBLE NOT NULL,
    direct_targets     BIGINT NOT NULL,
    transitive_targets BIGINT NOT NULL,
    environments       VARCHAR[] NOT NULL
);
DELETE FROM blast_state;
"""


def trace_key(trace_id: str) -> str:
    """SQL for the `trace_key` of the trace id expression `trace_id` (version 9): 64 bits of its
    md5, stable across DuckDB versions (unlike `hash`). `traces` has no index: finding a trace
    reads this 8-byte column (one row group of it, the table being kept in key order:
    `sort_traces`), and then the strings of the rows whose key matched."""
    return f"md5_number_lower({trace_id})"


def _traces_table(name: str) -> str:
    return f"""
CREATE TABLE {name} (
    trace_id   VARCHAR NOT NULL,
    first_seen TIMESTAMPTZ NOT NULL,
    last_seen  TIMESTAMPTZ NOT NULL,
    events     BIGINT NOT NULL,
    trace_key  UBIGINT NOT NULL     -- {trace_key("trace_id")}
);
"""


# Version 9: `traces` without its primary key. DuckDB's ART indexes cannot spill to disk, and
# each batch's merge of random trace ids loaded most of that index back into memory (~100 bytes
# a trace): an ingest grew with the store and failed under any fixed `memory_limit` (128MB: at
# ~850k single-span traces). Rows are merged by `merge_graph` with an anti-join and an update
# instead, and found by `trace_key`.
TRACES_WITHOUT_KEY: Final = f"""
{_traces_table("traces_v9")}
INSERT INTO traces_v9
SELECT trace_id, first_seen, last_seen, events, {trace_key("trace_id")} FROM traces;
DROP TABLE traces;
ALTER TABLE traces_v9 RENAME TO traces;
"""

# `meta` key of how many `traces` rows were stored in `trace_key` order when it was last sorted;
# the rows appended since (new traces) follow them unsorted.
SORTED_TRACES_KEY: Final = "traces_sorted"

# Sorted by key, each row group of `traces` (122,880 rows) holds a narrow range of keys, and a
# lookup by key reads the one row group whose range holds it (DuckDB's zone maps) plus the
# unsorted tail: at 3.5M traces, 2.5 ms against 13 ms for a scan of every key. The table is
# sorted again once its tail reaches this many rows and a quarter of the sorted part, so the
# tail stays a small share and the rewrites (~0.8 µs a row) cost a few µs per trace in all.
SORT_MIN_TAIL: Final = 250_000
_SORT_TAIL_SHARE: Final = 0.25

_SORT_TRACES: Final = f"""
{_traces_table("traces_sorted")}
INSERT INTO traces_sorted SELECT * FROM traces ORDER BY trace_key;
DROP TABLE traces;
ALTER TABLE traces_sorted RENAME TO traces;
"""


def sort_traces(
    conn: duckdb.DuckDBPyConnection, *, min_tail: int | None = None, force: bool = False
) -> bool:
    """Rewrite `traces` in `trace_key` order (in one transaction) when its unsorted tail has
    grown to `min_tail` rows and a quarter of the sorted part, or with `force` (after a prune
    deleted rows, which leaves the count of sorted rows unknown); True when it did."""
    [(rows,)] = conn.execute("SELECT count(*) FROM traces").fetchall()
    found = conn.execute("SELECT value FROM meta WHERE key = ?", [SORTED_TRACES_KEY]).fetchall()
    done = int(found[0][0]) if found else 0
    least = SORT_MIN_TAIL if min_tail is None else min_tail
    if rows == 0 or not (force or rows - done >= max(least, done * _SORT_TAIL_SHARE, 1)):
        return False
    with transaction(conn):
        conn.execute(_SORT_TRACES)
        conn.execute(
            "INSERT INTO meta VALUES (?, ?) ON CONFLICT DO UPDATE SET value = EXCLUDED.value",
            [SORTED_TRACES_KEY, str(rows)],
        )
    return True


# Migration 7: the service graph that path searches walk, kept per batch by `merge_graph`.
HOP_TABLES: Final = """
-- `source` held a token (made a call with it) and that token, or one derived from it at most
-- 32 links below, reached `target` (a successful call from anywhere): access can flow from
-- `source` to `target` in one step. A few thousand rows however many events: a path search
-- walks it in memory, then reads the details of the steps on its candidate paths only.
CREATE TABLE service_hops (
    source VARCHAR NOT NULL,
    target VARCHAR NOT NULL,
    PRIMARY KEY (source, target)
);
"""


def utc(us: int) -> datetime:
    """A UTC datetime from epoch microseconds: times are read as `epoch_us(ts)`, since reading
    a TIMESTAMPTZ back into Python needs pytz.

    >>> utc(1_772_442_000_000_000).isoformat()
    '2026-03-02T09:00:00+00:00'
    """
    return EPOCH + us * ONE_US


# `meta` key of the number of batches merged into the graph: the clock of `reach_changes`.
BATCH_KEY: Final = "graph_batch"

# Links followed at most this deep, so a lineage cycle written by a buggy producer terminates.
MAX_LINEAGE_DEPTH: Final = 32

# --- per-batch maintenance -------------------------------------------------------------------

# Traces the batch touched, and whether the store had seen them before (then their older events
# take part in the recomputation, so late spans link to what was there), with the stored row's
# id to update. Stored rows are found by key first, then read by row id: a join on the strings
# would read every stored id each batch.
_TOUCHED: Final = f"""
CREATE OR REPLACE TEMP TABLE graph_touched AS
WITH batch AS (
    SELECT trace_id, {trace_key("trace_id")} AS trace_key, min(ts) AS lo, max(ts) AS hi,
           count(*) AS n
    FROM {{new_events}} WHERE trace_id IS NOT NULL GROUP BY trace_id
), stored AS ({{stored}})
SELECT b.trace_id, b.trace_key, s.rid, s.rid IS NOT NULL AS known,
       least(b.lo, coalesce(s.first_seen, b.lo)) AS lo,
       greatest(b.hi, coalesce(s.last_seen, b.hi)) AS hi, b.n
FROM batch b LEFT JOIN stored s USING (trace_id)
"""

_STORED_TRACES: Final = """
    SELECT rowid AS rid, trace_id, first_seen, last_seen FROM traces
    WHERE rowid IN (SELECT t.rowid FROM traces t JOIN batch b USING (trace_key))
"""

# Migration 3's backfill: `traces` is still empty (and has no `trace_key` yet).
_NO_STORED_TRACES: Final = """
    SELECT CAST(NULL AS BIGINT) AS rid, CAST(NULL AS VARCHAR) AS trace_id,
           CAST(NULL AS TIMESTAMPTZ) AS first_seen, CAST(NULL AS TIMESTAMPTZ) AS last_seen
    WHERE false
"""

# A hop of a chain; spans without `span_id` get a key of their own (they cannot be parents).
_HOP: Final = (
    "trace_id, coalesce(span_id, chr(0) || event_id) AS node, parent_span_id AS parent,"
    " token_id, target, operation, coalesce(scope, '') AS scope, outcome, environment, ts,"
    " event_id"
)

_HOPS: Final = f"""
CREATE OR REPLACE TEMP TABLE graph_hops AS
SELECT {_HOP} FROM {{new_events}}
WHERE trace_id IN (SELECT trace_id FROM graph_touched WHERE NOT known)
"""

_OLD_HOPS: Final = f"""
INSERT INTO graph_hops
SELECT {_HOP} FROM events
WHERE ts BETWEEN ? AND ? AND trace_id IN (SELECT trace_id FROM graph_touched WHERE known)
"""

# Push each hop's token down to every hop below it; UNION (not ALL) makes cycles terminate.
# Copies of one span share a node, so duplicates neither add nor lose reach.
_MERGE_CHAIN_REACH: Final = """
INSERT INTO chain_reach
WITH RECURSIVE walk(trace_id, node, token_id) AS (
    SELECT trace_id, node, token_id FROM graph_hops
    UNION
    SELECT h.trace_id, h.node, w.token_id
    FROM walk w JOIN graph_hops h ON h.trace_id = w.trace_id AND h.parent = w.node
), reach AS (
    SELECT w.token_id, h.target, h.operation, h.scope, h.environment, h.ts, h.event_id,
           h.trace_id, h.token_id AS hop_token
    FROM walk w JOIN graph_hops h ON h.trace_id = w.trace_id AND h.node = w.node
    WHERE h.token_id <> w.token_id AND h.outcome = 'success'
)
SELECT token_id, target, operation, scope,
       coalesce(list_sort(list_distinct(list(environment))), []) AS environments,
       min(ts) AS first_seen, max(ts) AS last_seen,
       arg_min(event_id, (ts, event_id)) AS first_event_id,
       arg_min(trace_id, (ts, event_id)) AS first_trace_id,
       arg_min(hop_token, (ts, event_id)) AS first_token_id
FROM reach
GROUP BY token_id, target, operation, scope
ON CONFLICT DO UPDATE SET
    environments = list_sort(list_distinct(list_concat(chain_reach.environments,
                                                       EXCLUDED.environments))),
    first_event_id = CASE WHEN (EXCLUDED.first_seen, EXCLUDED.first_event_id)
        < (chain_reach.first_seen, chain_reach.first_event_id)
        THEN EXCLUDED.first_event_id ELSE chain_reach.first_event_id END,
    first_trace_id = CASE WHEN (EXCLUDED.first_seen, EXCLUDED.first_event_id)
        < (chain_reach.first_seen, chain_reach.first_event_id)
        THEN EXCLUDED.first_trace_id ELSE chain_reach.first_trace_id END,
    first_token_id = CASE WHEN (EXCLUDED.first_seen, EXCLUDED.first_event_id)
        < (chain_reach.first_seen, chain_reach.first_event_id)
        THEN EXCLUDED.first_token_id ELSE chain_reach.first_token_id END,
    first_seen = least(chain_reach.first_seen, EXCLUDED.first_seen),
    last_seen = greatest(chain_reach.last_seen, EXCLUDED.last_seen)
"""

# `traces` has no key (version 9): new traces are appended, known ones updated by row id. One
# writer merges at a time (`Store.write_batch`), so no two batches append the same trace.
_NEW_TRACES: Final = """
INSERT INTO traces (trace_id, first_seen, last_seen, events, trace_key)
SELECT trace_id, lo, hi, n, trace_key FROM graph_touched WHERE NOT known
"""

_KNOWN_TRACES: Final = """
UPDATE traces SET first_seen = g.lo, last_seen = g.hi, events = traces.events + g.n
FROM graph_touched g WHERE g.known AND traces.rowid = g.rid
"""

# Migration 3's shape of `traces` (no `trace_key`), filled once from every stored event.
V3_TRACES_BACKFILL: Final = """
INSERT INTO traces
SELECT trace_id, min(ts), max(ts), count(*) FROM events WHERE trace_id IS NOT NULL
GROUP BY trace_id
"""

# A call that minted a credential (token exchange, AssumeRole, GetSessionToken, CreateAccessKey)
# names it in `attributes.issued_token`: an object with `token_id` (as the CloudTrail adapter
# writes it) or the token id itself.
_ISSUED: Final = (
    "coalesce(attributes ->> '$.issued_token.token_id',"
    " CASE WHEN json_type(attributes, '$.issued_token') = 'VARCHAR'"
    " THEN attributes ->> '$.issued_token' END)"
)

_MERGE_LINKS: Final = f"""
INSERT INTO token_links
WITH claimed AS (
    SELECT token_id AS child, parent_token_id AS parent, 'token.parent_token_id' AS via,
           ts, event_id
    FROM {{new_events}} WHERE parent_token_id IS NOT NULL
    UNION ALL
    SELECT {_ISSUED} AS child, token_id AS parent, operation AS via, ts, event_id
    FROM {{new_events}}
    WHERE attributes IS NOT NULL AND {_ISSUED} IS NOT NULL
)
SELECT child, parent, arg_min(via, (ts, event_id)), min(ts), min((ts, event_id))[2]
FROM claimed WHERE child <> parent AND child <> ''
GROUP BY child, parent
ON CONFLICT DO UPDATE SET
    via = CASE WHEN (EXCLUDED.first_seen, EXCLUDED.event_id)
        < (token_links.first_seen, token_links.event_id)
        THEN EXCLUDED.via ELSE token_links.via END,
    event_id = CASE WHEN (EXCLUDED.first_seen, EXCLUDED.event_id)
        < (token_links.first_seen, token_links.event_id)
        THEN EXCLUDED.event_id ELSE token_links.event_id END,
    first_seen = least(token_links.first_seen, EXCLUDED.first_seen)
"""


# Tokens whose reach may have grown: those that made calls, every token of a touched trace (its
# chain reach), and parents of new links (their derived reach); ancestors are added on refresh.
_MARK_CHANGES: Final = f"""
INSERT INTO reach_changes
WITH batch AS (
    SELECT CAST(value AS BIGINT) AS n FROM meta WHERE key = '{BATCH_KEY}'
)
SELECT token_id, (SELECT n FROM batch) FROM (
    SELECT token_id FROM {{new_events}}
    UNION SELECT token_id FROM graph_hops
    UNION SELECT parent_token_id FROM {{new_events}} WHERE parent_token_id IS NOT NULL
)
ON CONFLICT DO UPDATE SET batch = EXCLUDED.batch
"""


# A step needs a held token (any call), lineage down to a call token, and a successful call with
# it; a batch can add any of the three. Every new step has its held token among the ancestors (or
# self) of a token the batch used or named as a parent, so only those are walked down again.
# Steps only appear (token_edges and token_links are never pruned), hence DO NOTHING.
_MERGE_HOPS: Final = f"""
INSERT INTO service_hops
WITH RECURSIVE {{seeds}}, closure(token_id, descendant, depth) AS (
    SELECT token_id, token_id, 0 FROM seeds
    UNION
    SELECT c.token_id, l.child_token_id, c.depth + 1
    FROM closure c JOIN token_links l ON l.parent_token_id = c.descendant
    WHERE c.depth < {MAX_LINEAGE_DEPTH}
)
SELECT DISTINCT h.source, e.target
FROM closure c
JOIN (SELECT DISTINCT source, token_id FROM token_edges) h ON h.token_id = c.token_id
JOIN token_edges e ON e.token_id = c.descendant
WHERE e.calls > e.denied + e.errors AND e.target <> h.source
ON CONFLICT DO NOTHING
"""

# The held tokens to walk down from: ancestors (and self) of what the batch touched.
_BATCH_SEEDS: Final = f"""touched AS (
    SELECT token_id FROM {{new_events}}
    UNION SELECT parent_token_id FROM {{new_events}} WHERE parent_token_id IS NOT NULL
), up(token_id, depth) AS (
    SELECT token_id, 0 FROM touched
    UNION
    SELECT l.parent_token_id, u.depth + 1
    FROM up u JOIN token_links l ON l.child_token_id = u.token_id
    WHERE u.depth < {MAX_LINEAGE_DEPTH}
), seeds AS (SELECT DISTINCT token_id FROM up)"""

_ALL_SEEDS: Final = "seeds AS (SELECT DISTINCT token_id FROM token_edges)"


def merge_service_hops(conn: duckdb.DuckDBPyConnection, *, new_events: str | None) -> None:
    """Add the service steps that the rows of `new_events` made possible; every step the stored
    edges allow when None (migration 7's backfill, and the reference its tests compare with)."""
    seeds = _ALL_SEEDS if new_events is None else _BATCH_SEEDS.format(new_events=new_events)
    conn.execute(_MERGE_HOPS.format(seeds=seeds))


def last_reach_changes(conn: duckdb.DuckDBPyConnection) -> set[str]:
    """The tokens whose reach the last merged batch may have changed (`reach_changes` marked
    at the current `graph_batch`): its callers, every token of a trace it touched, parents of
    its new links."""
    rows = conn.execute(
        "SELECT token_id FROM reach_changes WHERE batch ="
        f" (SELECT CAST(value AS BIGINT) FROM meta WHERE key = '{BATCH_KEY}')"
    ).fetchall()
    return {str(token) for (token,) in rows}


def merge_graph(
    conn: duckdb.DuckDBPyConnection, *, new_events: str, hops: bool = True, traces: bool = True
) -> None:
    """Fold the rows of relation `new_events` (already in `events`) into the graph tables.

    Called by `Store.write_batch` in the batch's transaction, after the events are inserted,
    and by migration 3 over all stored events (before `service_hops` exists: migration 7 fills
    it, hence `hops=False` there; its `traces` has migration 3's shape and is filled by the
    migration itself, hence `traces=False`).
    """
    conn.execute(
        f"INSERT INTO meta VALUES ('{BATCH_KEY}', '1')"
        " ON CONFLICT DO UPDATE SET value = CAST(CAST(meta.value AS BIGINT) + 1 AS VARCHAR)"
    )
    stored = _STORED_TRACES if traces else _NO_STORED_TRACES
    conn.execute(_TOUCHED.format(new_events=new_events, stored=stored))
    conn.execute(_HOPS.format(new_events=new_events))
    # fetchall, not fetchone: an unfinished result would block the registers that follow.
    [(lo, hi)] = conn.execute(
        "SELECT epoch_us(min(lo)), epoch_us(max(hi)) FROM graph_touched WHERE known"
    ).fetchall()
    if lo is not None:
        conn.execute(_OLD_HOPS, [utc(lo), utc(hi)])
    conn.execute(_MERGE_CHAIN_REACH)
    if traces:
        conn.execute(_NEW_TRACES)
        if lo is not None:
            conn.execute(_KNOWN_TRACES)
    conn.execute(_MERGE_LINKS.format(new_events=new_events))
    _classify_operations(conn, new_events=new_events)
    conn.execute(_MARK_CHANGES.format(new_events=new_events))
    if hops:
        merge_service_hops(conn, new_events=new_events)
    conn.execute("DROP TABLE graph_hops")
    conn.execute("DROP TABLE graph_touched")


def _classify_operations(conn: duckdb.DuckDBPyConnection, *, new_events: str) -> None:
    """Classify the (operation, scope) pairs the store has not seen before (a few per batch)."""
    fresh = conn.execute(
        f"SELECT DISTINCT operation, coalesce(scope, '') FROM {new_events}"
        " EXCEPT SELECT operation, scope FROM operation_scopes"
    ).fetchall()
    if not fresh:
        return
    table = pa.table(
        {
            "operation": pa.array([op for op, _ in fresh], pa.string()),
            "scope": pa.array([scope for _, scope in fresh], pa.string()),
            "privilege": pa.array([privilege_of(op, scope) for op, scope in fresh], pa.string()),
        }
    )
    with registered(conn, graph_fresh_operations=table):
        conn.execute("INSERT INTO operation_scopes SELECT * FROM graph_fresh_operations")


# --- chains ----------------------------------------------------------------------------------


class HopRow(NamedTuple):
    """One stored event of a trace, as a chain needs it."""

    event_id: str
    ts_us: int
    trace_id: str
    span_id: str | None
    parent_span_id: str | None
    token_id: str
    identity: str
    source: str
    target: str
    operation: str
    scope: str | None
    outcome: str
    status: int | None
    environment: str | None
    resource: str | None
    parent_token_id: str | None


_HOP_COLUMNS: Final = (
    "event_id, epoch_us(ts), trace_id, span_id, parent_span_id, token_id, identity, source,"
    " target, operation, scope, outcome, status, environment, resource, parent_token_id"
)


def chain_hops(conn: duckdb.DuckDBPyConnection, *, trace_id: str) -> list[HopRow]:
    """Every stored event of a trace, oldest first (empty when the trace is unknown)."""
    span = trace_span(conn, trace_id=trace_id)
    return [] if span is None else trace_hops(conn, trace_id=trace_id, span=span)


class TraceSpan(NamedTuple):
    """A row of `traces`: where a trace lies in event time, and how many events it has."""

    first_us: int
    last_us: int
    events: int


def trace_span(conn: duckdb.DuckDBPyConnection, *, trace_id: str) -> TraceSpan | None:
    """The span of a stored trace, or None when the trace is unknown."""
    found = conn.execute(
        "SELECT epoch_us(first_seen), epoch_us(last_seen), events FROM traces"
        f" WHERE trace_key = {trace_key('$trace')} AND trace_id = $trace",
        {"trace": trace_id},
    ).fetchall()
    return TraceSpan(*found[0]) if found else None


def trace_hops(conn: duckdb.DuckDBPyConnection, *, trace_id: str, span: TraceSpan) -> list[HopRow]:
    """The stored events of a trace within its `span`, oldest first (then by event id)."""
    # Constant time bounds let DuckDB skip the row groups outside the trace (zone maps).
    rows = conn.execute(
        f"SELECT {_HOP_COLUMNS} FROM events WHERE trace_id = ? AND ts BETWEEN ? AND ?",
        [trace_id, utc(span.first_us), utc(span.last_us)],
    ).fetchall()
    # Ordered here: an ORDER BY costs DuckDB ~1 ms of set-up however few the rows.
    rows.sort(key=lambda r: (r[1], r[0]))
    return [HopRow(*row) for row in rows]


# --- tokens, edges, lineage ------------------------------------------------------------------


class TokenRow(NamedTuple):
    """A row of the token registry."""

    token_id: str
    identity: str
    identity_kind: str | None
    kind: str | None
    scopes: list[str] | None
    issued_at_us: int | None
    expires_at_us: int | None
    parent_token_id: str | None
    audience: str | None
    first_seen_us: int
    last_seen_us: int
    calls: int
    denied: int
    errors: int
    redacted: bool


_TOKEN_COLUMNS: Final = (
    "token_id, identity, identity_kind, kind, scopes, epoch_us(issued_at), epoch_us(expires_at),"
    " parent_token_id, audience, epoch_us(first_seen), epoch_us(last_seen), calls, denied,"
    " errors, redacted"
)


def token_rows(conn: duckdb.DuckDBPyConnection, *, token_ids: Sequence[str]) -> list[TokenRow]:
    """Registry rows of the given tokens (those the store knows), by token id."""
    rows = conn.execute(
        f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE list_contains(?, token_id) ORDER BY token_id",
        [list(token_ids)],
    ).fetchall()
    return [TokenRow(*row) for row in rows]


def token_scopes(
    conn: duckdb.DuckDBPyConnection, *, token_ids: Sequence[str]
) -> dict[str, list[str] | None]:
    """Token id -> its registered scopes (None: not known), for the given tokens the store
    knows. Two columns of `token_rows`, for chains: reading all fifteen costs ~2x."""
    rows = conn.execute(
        "SELECT token_id, scopes FROM tokens WHERE list_contains(?, token_id)", [list(token_ids)]
    ).fetchall()
    return {str(t): s for t, s in rows}


def identity_token_ids(conn: duckdb.DuckDBPyConnection, *, identity: str) -> list[str]:
    """Tokens an identity used (from its edges: a shared token counts for each identity)."""
    rows = conn.execute(
        "SELECT DISTINCT token_id FROM token_edges WHERE identity = ? ORDER BY token_id",
        [identity],
    ).fetchall()
    return [str(r[0]) for r in rows]


class EdgeRow(NamedTuple):
    """A row of `token_edges`: the calls a token made from a source to a target."""

    token_id: str
    identity: str
    source: str
    target: str
    operation: str
    scope: str
    calls: int
    denied: int
    errors: int
    bytes_out: int
    environments: list[str]
    first_seen_us: int
    last_seen_us: int


_EDGE_COLUMNS: Final = (
    "token_id, identity, source, target, operation, scope, calls, denied, errors, bytes_out,"
    " environments, epoch_us(first_seen), epoch_us(last_seen)"
)


def edge_rows(
    conn: duckdb.DuckDBPyConnection,
    *,
    token_ids: Sequence[str],
    identity: str | None = None,
    until_us: int | None = None,
) -> list[EdgeRow]:
    """The edges of the given tokens (only those made as `identity`, when it is given); with
    `until_us`, aggregated from the events at or before that time."""
    edges = "token_edges" if until_us is None else _EDGES_AS_OF
    rows = conn.execute(
        f"SELECT {_EDGE_COLUMNS} FROM {edges} WHERE list_contains(?, token_id)"
        " AND (CAST(? AS VARCHAR) IS NULL OR identity = ?)"
        " ORDER BY target, source, operation, scope, token_id",
        [*([list(token_ids), utc(until_us)] if until_us is not None else []),
         list(token_ids), identity, identity],
    ).fetchall()  # fmt: skip
    return [EdgeRow(*row) for row in rows]


# `token_edges` of the `?` tokens as of the `?` time, from the events themselves.
_EDGES_AS_OF: Final = """(
    SELECT token_id, identity, source, target, operation, coalesce(scope, '') AS scope,
           count(*) AS calls,
           count(*) FILTER (WHERE outcome = 'denied') AS denied,
           count(*) FILTER (WHERE outcome = 'error') AS errors,
           coalesce(sum(bytes_out), 0) AS bytes_out,
           coalesce(list_sort(list_distinct(list(environment))), []) AS environments,
           min(ts) AS first_seen, max(ts) AS last_seen
    FROM events WHERE list_contains(?, token_id) AND ts <= ?
    GROUP BY ALL
)"""


def resource_counts(
    conn: duckdb.DuckDBPyConnection, *, token_ids: Sequence[str], identity: str | None = None
) -> dict[str, int]:
    """Target -> distinct resources touched successfully by the given tokens (from events)."""
    rows = conn.execute(
        "SELECT target, count(DISTINCT resource) FROM events"
        " WHERE list_contains(?, token_id) AND resource IS NOT NULL AND outcome = 'success'"
        " AND (CAST(? AS VARCHAR) IS NULL OR identity = ?) GROUP BY target",
        [list(token_ids), identity, identity],
    ).fetchall()
    return {str(t): int(n) for t, n in rows}


class LinkRow(NamedTuple):
    """A lineage link: `child_token_id` derived from `parent_token_id`."""

    child_token_id: str
    parent_token_id: str
    via: str
    first_seen_us: int
    event_id: str


def family_links(conn: duckdb.DuckDBPyConnection, *, token_id: str) -> list[LinkRow]:
    """The links of a token's whole family: its ancestors, and everything derived from them."""
    rows = conn.execute(
        f"""
        WITH RECURSIVE up(token_id, depth) AS (
            SELECT CAST(? AS VARCHAR), 0
            UNION
            SELECT l.parent_token_id, u.depth + 1 FROM up u
            JOIN token_links l ON l.child_token_id = u.token_id
            WHERE u.depth < {MAX_LINEAGE_DEPTH}
        ), down(token_id, depth) AS (
            SELECT token_id, 0 FROM up
            UNION
            SELECT l.child_token_id, d.depth + 1 FROM down d
            JOIN token_links l ON l.parent_token_id = d.token_id
            WHERE d.depth < {MAX_LINEAGE_DEPTH}
        )
        SELECT child_token_id, parent_token_id, via, epoch_us(first_seen), event_id
        FROM token_links
        WHERE child_token_id IN (SELECT token_id FROM down)
           OR parent_token_id IN (SELECT token_id FROM up)
        ORDER BY first_seen, child_token_id, parent_token_id
        """,
        [token_id],
    ).fetchall()
    return [LinkRow(*row) for row in rows]


# --- reach and blast radius ------------------------------------------------------------------


class ReachRow(NamedTuple):
    """One target a subject (a token or an identity) reached, with its best-scoring way there."""

    subject: str
    target: str
    contribution: float
    via: str  # direct | derived | chain
    via_token: str  # the token that made the call
    privilege: str
    weight: float
    sensitivity: float
    environments: list[str]
    crossing: bool
    home: str | None
    direct: bool  # also reached with the subject's own tokens
    successes: int  # successful direct calls (0 when only reached transitively)
    first_seen_us: int
    last_seen_us: int
    evidence_event_id: str | None  # for chain reach: the first downstream hop
    evidence_trace_id: str | None


# Subjects whose reach is measured: `(subject, token_id, identity)`; `identity` restricts the
# direct edges of a shared token to those the identity made itself.
_ALL_TOKENS: Final = (
    "SELECT token_id AS subject, token_id, CAST(NULL AS VARCHAR) AS identity FROM tokens"
)
_SOME_TOKENS: Final = (
    "SELECT token_id AS subject, token_id, CAST(NULL AS VARCHAR) AS identity"
    " FROM (SELECT unnest(CAST($tokens AS VARCHAR[])) AS token_id)"
)
_ONE_IDENTITY: Final = (
    "SELECT DISTINCT identity AS subject, token_id, identity FROM token_edges"
    " WHERE identity = $identity"
)

# The tokens whose reach counts for a subject: its own, and every token derived from them.
_HELD_BY_SQL: Final = f"""descendants(token_id, descendant, depth) AS (
    SELECT parent_token_id, child_token_id, 1 FROM token_links
    WHERE parent_token_id IN (SELECT token_id FROM subjects)
    UNION
    SELECT d.token_id, l.child_token_id, d.depth + 1
    FROM descendants d JOIN token_links l ON l.parent_token_id = d.descendant
    WHERE d.depth < {MAX_LINEAGE_DEPTH}
), held AS (
    SELECT subject, token_id AS reach_token, identity, 'direct' AS via FROM subjects
    UNION ALL
    SELECT DISTINCT s.subject, d.descendant, CAST(NULL AS VARCHAR), 'derived'
    FROM subjects s JOIN descendants d ON d.token_id = s.token_id AND d.descendant <> s.token_id
)"""
# The same, worked out beforehand for a few subjects and passed as constants.
_HELD_GIVEN: Final = """held AS (
    SELECT unnest(CAST($held_subject AS VARCHAR[])) AS subject,
           unnest(CAST($held_token AS VARCHAR[])) AS reach_token,
           unnest(CAST($held_identity AS VARCHAR[])) AS identity,
           unnest(CAST($held_via AS VARCHAR[])) AS via
)"""

_REACH: Final = """
WITH RECURSIVE subjects AS ({subjects}),
{held}, {as_of} ways AS (
    -- One row per way to a target and environment it was reached in.
    SELECT h.subject, e.target, e.operation, e.scope, h.via, e.token_id AS via_token,
           unnest(CASE WHEN len(e.environments) = 0 THEN [CAST(NULL AS VARCHAR)]
                       ELSE e.environments END) AS env,
           CASE WHEN h.via = 'direct' THEN e.calls - e.denied - e.errors ELSE 0 END AS successes,
           e.first_seen, e.last_seen,
           CAST(NULL AS VARCHAR) AS evidence_event_id, CAST(NULL AS VARCHAR) AS evidence_trace_id
    FROM held h JOIN {edges} e
      ON e.token_id = h.reach_token AND (h.identity IS NULL OR e.identity = h.identity)
    WHERE e.calls > e.denied + e.errors {edges_of_reach}
    UNION ALL
    SELECT h.subject, r.target, r.operation, r.scope, 'chain', r.first_token_id,
           unnest(CASE WHEN len(r.environments) = 0 THEN [CAST(NULL AS VARCHAR)]
                       ELSE r.environments END),
           0, r.first_seen, r.last_seen, r.first_event_id, r.first_trace_id
    FROM held h JOIN {chain} r ON r.token_id = h.reach_token
    {chain_of_reach}
), home AS (
    -- Where a subject lives: its identity's declared environment, else where it called most.
    SELECT s.subject, coalesce(any_value(p.environment), any_value(o.env)) AS env
    FROM (SELECT DISTINCT s.subject, coalesce(s.identity, t.identity) AS identity
          FROM subjects s LEFT JOIN tokens t USING (token_id) {tokens_of_reach}) s
    LEFT JOIN tt_identities p ON p.name = s.identity
    LEFT JOIN (
        SELECT subject, arg_max(env, (n, env)) AS env
        FROM (SELECT subject, env, sum(successes) AS n FROM ways
              WHERE via = 'direct' AND env IS NOT NULL GROUP BY subject, env)
        GROUP BY subject
    ) o ON o.subject = s.subject
    GROUP BY s.subject
), joined AS (
    SELECT w.*, p.privilege, h.env AS home,
           CASE p.privilege WHEN 'admin' THEN $admin_weight WHEN 'write' THEN $write_weight
                ELSE $read_weight END AS weight,
           coalesce(c.sensitivity, $default_sensitivity) AS sensitivity,
           coalesce(c.environment, w.env) AS place
    FROM ways w
    JOIN operation_scopes p USING (operation, scope)
    LEFT JOIN tt_services c ON c.name = w.target
    LEFT JOIN home h USING (subject)
), scored AS (
    SELECT *,
           coalesce(place <> home, false) AS crossing,
           sensitivity * weight
               * CASE WHEN crossing THEN $crossing_factor ELSE 1.0 END
               * CASE WHEN via = 'chain' THEN $chain_factor ELSE 1.0 END AS contribution,
           CASE via WHEN 'direct' THEN 3 WHEN 'derived' THEN 2 ELSE 1 END AS rank
    FROM joined
)
"""

# One target per row, with the way that scored highest (direct before derived before chain
# on a tie) and what explains it.
_REACH_ROWS: Final = (
    _REACH
    + """, per_target AS (
    SELECT subject, target,
           arg_max(struct_pack(via := via, via_token := via_token, privilege := privilege,
                               weight := weight, crossing := crossing,
                               evidence_event_id := evidence_event_id,
                               evidence_trace_id := evidence_trace_id),
                   (contribution, rank, privilege)) AS best,
           max(contribution) AS contribution,
           max(sensitivity) AS sensitivity,
           list_sort(list(DISTINCT place) FILTER (WHERE place IS NOT NULL)) AS environments,
           any_value(home) AS home,
           bool_or(via = 'direct') AS direct,
           sum(successes) AS successes,
           epoch_us(min(first_seen)) AS first_seen_us,
           epoch_us(max(last_seen)) AS last_seen_us
    FROM scored
    GROUP BY subject, target
)
SELECT subject, target, contribution, best.via, best.via_token, best.privilege, best.weight,
       sensitivity, coalesce(environments, []), best.crossing, home, direct, successes,
       first_seen_us, last_seen_us, best.evidence_event_id, best.evidence_trace_id
FROM per_target ORDER BY subject, contribution DESC, target
"""
)

# Totals only: the ranking needs no explanation per target, so it skips building one.
_SCORES: Final = (
    _REACH
    + """, per_target AS (
    SELECT subject, target, max(contribution) AS contribution, bool_or(via = 'direct') AS direct
    FROM scored GROUP BY subject, target
), scores AS (
    SELECT subject, round(sum(contribution), 2) AS score,
           count(*) FILTER (WHERE direct) AS direct_targets,
           count(*) FILTER (WHERE NOT direct) AS transitive_targets
    FROM per_target GROUP BY subject
), places AS (
    SELECT subject, list_sort(list(DISTINCT place)) AS environments
    FROM (SELECT subject, place FROM scored UNION ALL SELECT subject, env FROM home)
    WHERE place IS NOT NULL
    GROUP BY subject
)
SELECT s.subject, coalesce(c.score, 0.0), coalesce(c.direct_targets, 0),
       coalesce(c.transitive_targets, 0), coalesce(p.environments, [])
FROM (SELECT DISTINCT subject FROM subjects) s
LEFT JOIN scores c USING (subject) LEFT JOIN places p USING (subject)
"""
)


@contextmanager
def _catalog_relations(conn: duckdb.DuckDBPyConnection, *, catalog: Catalog) -> Iterator[None]:
    """Register the catalog's services and identities for one reach query."""
    relations = {
        "tt_services": pa.table(
            {
                "name": pa.array([s.name for s in catalog.services], pa.string()),
                "environment": pa.array([s.environment for s in catalog.services], pa.string()),
                "sensitivity": pa.array(
                    [float(s.sensitivity) for s in catalog.services], pa.float64()
                ),
            }
        ),
        "tt_identities": pa.table(
            {
                "name": pa.array([i.name for i in catalog.identities], pa.string()),
                "environment": pa.array([i.environment for i in catalog.identities], pa.string()),
            }
        ),
    }
    with registered(conn, **relations):
        yield


def _subjects(
    token_ids: Sequence[str] | None, identity: str | None
) -> tuple[str, dict[str, object]]:
    if identity is not None:
        return _ONE_IDENTITY, {"identity": identity}
    if token_ids is not None:
        return _SOME_TOKENS, {"tokens": list(token_ids)}
    return _ALL_TOKENS, {}


def _score_params(catalog: Catalog) -> dict[str, object]:
    return {
        "default_sensitivity": float(catalog.score.default_sensitivity),
        "crossing_factor": catalog.score.environment_crossing,
        "chain_factor": catalog.score.chain,
        **{f"{p}_weight": catalog.weight(p) for p in PRIVILEGES},
    }


def reach_rows(
    conn: duckdb.DuckDBPyConnection,
    *,
    catalog: Catalog,
    token_ids: Sequence[str] | None = None,
    identity: str | None = None,
    until_us: int | None = None,
) -> list[ReachRow]:
    """Every target the given tokens (or one identity, over all its tokens) reached, scored.

    Direct reach comes from `token_edges`, derived reach from the edges of tokens linked below
    them in `token_links`, chain reach from `chain_reach`; the best way to each target counts.
    With `until_us`, the reach as it stood then: edges and chain hops are rebuilt from the
    events at or before it, and only links shown by then count (an incident's "before").
    """
    if until_us is not None and token_ids is None and identity is None:
        raise ValueError("reach as of a time needs token_ids or an identity")
    subjects, params = _subjects(token_ids, identity)
    params |= _score_params(catalog)
    holdings: list[tuple[str, str, str | None]]
    if identity is not None:
        mine = identity_token_ids(conn, identity=identity)
        holdings = [(identity, t, identity) for t in mine]
        parts = _given(conn, holdings=holdings, params=params, until_us=until_us)
    elif token_ids is not None:
        holdings = [(t, t, None) for t in token_ids]
        parts = _given(conn, holdings=holdings, params=params, until_us=until_us)
    else:
        parts = _ALL_OF_THEM
    query = _REACH_ROWS.format(subjects=subjects, **parts)
    with _catalog_relations(conn, catalog=catalog):
        rows = conn.execute(query, params).fetchall()
    return [ReachRow(*row) for row in rows]


_REACH_FILTERS: Final = {
    "edges_of_reach": "AND list_contains($reach, e.token_id)",
    "chain_of_reach": "WHERE list_contains($reach, r.token_id)",
    "tokens_of_reach": "WHERE list_contains($reach, t.token_id)",
}
# Where the reach query reads edges and chain reach: the derived tables, kept current per batch.
_STORED: Final = {"as_of": "", "edges": "token_edges", "chain": "chain_reach"}
_ALL_OF_THEM: Final = {"held": _HELD_BY_SQL} | dict.fromkeys(_REACH_FILTERS, "") | _STORED

# The same relations as of `$until`, rebuilt from the events of the `$reach` tokens: the
# derived tables only keep first/last seen per edge, which cannot tell whether a success came
# before a time. Chain reach is walked as `_MERGE_CHAIN_REACH` does, over the traces the tokens
# took part in by then. Only for a few tokens (an investigation), never for a ranking.
_AS_OF: Final = f"""edges_as_of AS (
    SELECT token_id, identity, source, target, operation, coalesce(scope, '') AS scope,
           count(*) AS calls,
           count(*) FILTER (WHERE outcome = 'denied') AS denied,
           count(*) FILTER (WHERE outcome = 'error') AS errors,
           coalesce(list_sort(list_distinct(list(environment))), []) AS environments,
           min(ts) AS first_seen, max(ts) AS last_seen
    FROM events WHERE list_contains($reach, token_id) AND ts <= $until
    GROUP BY ALL
), hops_as_of AS (
    SELECT {_HOP} FROM events
    WHERE ts <= $until AND trace_id IN (
        SELECT trace_id FROM events
        WHERE list_contains($reach, token_id) AND ts <= $until AND trace_id IS NOT NULL)
), walk_as_of(trace_id, node, token_id) AS (
    SELECT trace_id, node, token_id FROM hops_as_of WHERE list_contains($reach, token_id)
    UNION
    SELECT h.trace_id, h.node, w.token_id
    FROM walk_as_of w JOIN hops_as_of h ON h.trace_id = w.trace_id AND h.parent = w.node
), chain_as_of AS (
    SELECT w.token_id, h.target, h.operation, h.scope,
           coalesce(list_sort(list_distinct(list(h.environment))), []) AS environments,
           min(h.ts) AS first_seen, max(h.ts) AS last_seen,
           arg_min(h.event_id, (h.ts, h.event_id)) AS first_event_id,
           arg_min(h.trace_id, (h.ts, h.event_id)) AS first_trace_id,
           arg_min(h.token_id, (h.ts, h.event_id)) AS first_token_id
    FROM walk_as_of w JOIN hops_as_of h ON h.trace_id = w.trace_id AND h.node = w.node
    WHERE h.token_id <> w.token_id AND h.outcome = 'success'
    GROUP BY w.token_id, h.target, h.operation, h.scope
),"""
_AS_OF_PARTS: Final = {"as_of": _AS_OF, "edges": "edges_as_of", "chain": "chain_as_of"}


def _given(
    conn: duckdb.DuckDBPyConnection,
    *,
    holdings: Sequence[tuple[str, str, str | None]],
    params: dict[str, object],
    until_us: int | None = None,
) -> dict[str, str]:
    """For a few subjects, `(subject, token, identity or None)`: their tokens and descendants as
    constants, so DuckDB reads just their rows, by index, instead of joining whole tables; with
    `until_us`, as they stood at that time."""
    below = lineage_below(conn, token_ids=[token for _, token, _ in holdings], until_us=until_us)
    held = [(subject, token, identity, "direct") for subject, token, identity in holdings]
    held += sorted(
        {(subject, child, None, "derived") for subject, token, _ in holdings
         for child in below[token] if child != token}
    )  # fmt: skip
    params |= {
        "held_subject": [h[0] for h in held],
        "held_token": [h[1] for h in held],
        "held_identity": [h[2] for h in held],
        "held_via": [h[3] for h in held],
        "reach": sorted({h[1] for h in held}),
    }
    if until_us is not None:
        params["until"] = utc(until_us)
        return {"held": _HELD_GIVEN} | _REACH_FILTERS | _AS_OF_PARTS
    return {"held": _HELD_GIVEN} | _REACH_FILTERS | _STORED


def lineage_below(
    conn: duckdb.DuckDBPyConnection, *, token_ids: Sequence[str], until_us: int | None = None
) -> dict[str, set[str]]:
    """Each given token -> the tokens derived from it at any depth (breadth-first, one indexed
    query per generation; a lineage cycle ends where it repeats); with `until_us`, only links
    shown by then."""
    below: dict[str, set[str]] = {token: set() for token in token_ids}
    frontier = {(token, token) for token in token_ids}
    for _ in range(MAX_LINEAGE_DEPTH):
        parents = sorted({current for _, current in frontier})
        if not parents:
            break
        children: dict[str, list[str]] = {}
        for parent, child in conn.execute(
            "SELECT parent_token_id, child_token_id FROM token_links"
            " WHERE list_contains(?, parent_token_id)"
            " AND (CAST(? AS BIGINT) IS NULL OR epoch_us(first_seen) <= ?)",
            [parents, until_us, until_us],
        ).fetchall():
            children.setdefault(parent, []).append(child)
        frontier = {
            (root, child)
            for root, current in frontier
            for child in children.get(current, [])
            if child not in below[root] and child != root
        }
        for root, child in frontier:
            below[root].add(child)
    return below


class RankedToken(NamedTuple):
    """A token in the blast radius ranking."""

    token_id: str
    identity: str
    calls: int
    score: float
    direct_targets: int
    transitive_targets: int
    environments: list[str]


def rank_tokens(
    conn: duckdb.DuckDBPyConnection,
    *,
    catalog: Catalog,
    top: int | None = None,
    identity: str | None = None,
) -> list[RankedToken]:
    """Tokens by blast radius score, highest first (those one identity used, when given).

    All tokens are ranked from `blast_scores`, refreshed first for the tokens whose reach changed
    since the last ranking with this catalog (all of them the first time); a read-only
    connection computes the scores without keeping them.
    """
    if identity is not None:
        mine = identity_token_ids(conn, identity=identity)
        scores = _scores(conn, catalog=catalog, token_ids=mine)
    elif _read_only(conn):
        scores = _every_score(conn, catalog=catalog)
    else:
        scores = None
        fingerprint = refresh_scores(conn, catalog=catalog)
    order = "ORDER BY s.score DESC, t.calls DESC, t.token_id" + (
        f" LIMIT {int(top)}" if top is not None else ""
    )
    columns = (
        "t.token_id, t.identity, t.calls, s.score, s.direct_targets, s.transitive_targets,"
        " s.environments"
    )
    if scores is None:
        rows = conn.execute(
            f"SELECT {columns} FROM blast_scores s JOIN tokens t USING (token_id)"
            f" WHERE s.catalog = ? {order}",
            [fingerprint],
        ).fetchall()
    else:
        with registered(conn, tt_scores=scores):
            rows = conn.execute(
                f"SELECT {columns} FROM tt_scores s JOIN tokens t USING (token_id) {order}"
            ).fetchall()
    return [RankedToken(*row) for row in rows]


# Up to this many tokens are scored with their rows read by index; more, by joining tables.
_FEW: Final = 200


def _scores(
    conn: duckdb.DuckDBPyConnection, *, catalog: Catalog, token_ids: Sequence[str] | None
) -> pa.Table:
    """Blast radius totals of the given tokens (all tokens when None), as an Arrow table."""
    params = _score_params(catalog)
    if token_ids is None:
        subjects, parts = _ALL_TOKENS, _ALL_OF_THEM
    elif len(token_ids) <= _FEW:
        params["tokens"] = list(token_ids)
        subjects = _SOME_TOKENS
        parts = _given(conn, holdings=[(t, t, None) for t in token_ids], params=params)
    else:
        params["tokens"] = list(token_ids)
        subjects, parts = _SOME_TOKENS, _ALL_OF_THEM
    with _catalog_relations(conn, catalog=catalog):
        table = conn.sql(_SCORES.format(subjects=subjects, **parts), params=params).to_arrow_table()
    return table.rename_columns(
        ["token_id", "score", "direct_targets", "transitive_targets", "environments"]
    )


# Tokens scored per query when all of them at once do not fit DuckDB's memory limit: a new
# catalog at 9.5M events (404k tokens) needs more than 192MB in one query, 50k at a time fits.
_SCORE_CHUNK: Final = 50_000


def _every_score(
    conn: duckdb.DuckDBPyConnection, *, catalog: Catalog, chunk: int = _SCORE_CHUNK
) -> pa.Table:
    """Every token's blast radius totals: in one query (~4 s at 9.5M events), else, when that
    query runs out of memory, `chunk` tokens at a time (~4x slower, in bounded memory)."""
    try:
        return _scores(conn, catalog=catalog, token_ids=None)
    except duckdb.OutOfMemoryException:
        return scores_in_parts(conn, catalog=catalog, chunk=chunk)


def scores_in_parts(conn: duckdb.DuckDBPyConnection, *, catalog: Catalog, chunk: int) -> pa.Table:
    """Every token's blast radius totals, `chunk` tokens per query."""
    tokens = sorted(str(r[0]) for r in conn.execute("SELECT token_id FROM tokens").fetchall())
    parts = [
        _scores(conn, catalog=catalog, token_ids=tokens[i : i + chunk])
        for i in range(0, len(tokens), chunk)
    ]
    return pa.concat_tables(parts) if parts else _scores(conn, catalog=catalog, token_ids=None)


def _read_only(conn: duckdb.DuckDBPyConnection) -> bool:
    rows = conn.execute(
        "SELECT readonly FROM duckdb_databases() WHERE database_name = current_database()"
    ).fetchall()
    return bool(rows and rows[0][0])


# Two writers refreshing at once (the consumer's ScoreKeeper and a first ranking in the API)
# conflict on the same rows; the loser finds the scores current when it looks again. DuckDB
# reports the conflict as a transaction conflict on a row both saw, and as a duplicate key when
# the other writer committed a new catalog's `blast_state` row after this one's transaction
# began (invisible to it, yet in the key's index): the first ranking of a fresh database.
_REFRESH_ATTEMPTS: Final = 3
_CONFLICTS: Final = (duckdb.TransactionException, duckdb.ConstraintException)


def refresh_scores(conn: duckdb.DuckDBPyConnection, *, catalog: Catalog) -> str:
    """Bring `blast_scores` up to date for `catalog`; returns the catalog's fingerprint."""
    fingerprint = catalog.fingerprint
    for attempt in range(_REFRESH_ATTEMPTS):
        try:
            _refresh(conn, catalog=catalog, fingerprint=fingerprint)
        except _CONFLICTS:
            if attempt == _REFRESH_ATTEMPTS - 1:
                raise
        else:
            break
    return fingerprint


def _refresh(conn: duckdb.DuckDBPyConnection, *, catalog: Catalog, fingerprint: str) -> None:
    rows = conn.execute(f"SELECT value FROM meta WHERE key = '{BATCH_KEY}'").fetchall()
    now = int(rows[0][0]) if rows else 0
    found = conn.execute(
        "SELECT batch FROM blast_state WHERE catalog = ?", [fingerprint]
    ).fetchall()
    state = int(found[0][0]) if found else None
    if state is not None and state >= now:
        return
    # Computed before the write transaction (a read of the batches up to `now`: a batch landing
    # meanwhile is in `reach_changes` after `now`, for the next refresh), so that a query that
    # does not fit DuckDB's memory limit can be run again in parts.
    if state is None:
        table = _every_score(conn, catalog=catalog)
    else:
        changed = [
            str(r[0])
            for r in conn.execute(
                "SELECT token_id FROM reach_changes WHERE batch > ?", [state]
            ).fetchall()
        ]
        table = _scores(
            conn, catalog=catalog, token_ids=sorted(lineage_above(conn, token_ids=changed))
        )
    with transaction(conn):
        if state is None:
            # Scores are kept for one catalog at a time: a new one starts over.
            conn.execute("DELETE FROM blast_scores")
            conn.execute("DELETE FROM blast_state")
        with registered(conn, tt_fresh_scores=table):
            if state is not None:
                conn.execute(
                    "DELETE FROM blast_scores WHERE token_id IN"
                    " (SELECT token_id FROM tt_fresh_scores)"
                )
            conn.execute("INSERT INTO blast_scores SELECT ?, * FROM tt_fresh_scores", [fingerprint])
        conn.execute("INSERT OR REPLACE INTO blast_state VALUES (?, ?)", [fingerprint, now])


def lineage_above(conn: duckdb.DuckDBPyConnection, *, token_ids: Sequence[str]) -> set[str]:
    """The given tokens and every token they derive from, at any depth (their reach includes
    what the given tokens reached)."""
    found = set(token_ids)
    frontier = sorted(found)
    for _ in range(MAX_LINEAGE_DEPTH):
        if not frontier:
            break
        parents = {
            str(r[0])
            for r in conn.execute(
                "SELECT DISTINCT parent_token_id FROM token_links"
                " WHERE child_token_id IN (SELECT unnest(CAST(? AS VARCHAR[])))",
                [frontier],
            ).fetchall()
        }
        frontier = sorted(parents - found)
        found |= parents
    return found


# --- paths and exposure ----------------------------------------------------------------------


class StepRow(NamedTuple):
    """One way access went on from a service: a token it held (or one derived from that token,
    `lineage_depth` links below) was used from `call_source` to reach `target`."""

    from_service: str
    held_token: str
    call_token: str
    lineage_depth: int
    call_source: str
    target: str
    successes: int
    first_seen_us: int
    last_seen_us: int
    ways: int  # how many ways in all lead from `from_service` to `target`


# The ways to take a step, best first: with the held token itself from the same service, then
# through a derived token, then the held token used elsewhere; then nearer lineage, more use.
_STEP_KIND: Final = (
    "CASE WHEN call_token <> held_token THEN 1 WHEN call_source = from_service THEN 0 ELSE 2 END"
)


def path_steps(
    conn: duckdb.DuckDBPyConnection,
    *,
    services: Sequence[str],
    targets: Sequence[str] | None = None,
    since_us: int | None = None,
    until_us: int | None = None,
    ways: int = 3,
) -> list[StepRow]:
    """Steps out of the given services (only those into `targets`, when given), from edges active
    in the time range: the best `ways` ways for each pair of services, and how many there are."""
    rows = conn.execute(
        f"""
        WITH RECURSIVE held AS (
            SELECT DISTINCT source, token_id FROM token_edges
            WHERE list_contains($services, source)
              AND ($since IS NULL OR epoch_us(last_seen) >= $since)
              AND ($until IS NULL OR epoch_us(first_seen) <= $until)
        ), closure(source, token_id, descendant, depth) AS (
            SELECT source, token_id, token_id, 0 FROM held
            UNION
            SELECT c.source, c.token_id, l.child_token_id, c.depth + 1
            FROM closure c JOIN token_links l ON l.parent_token_id = c.descendant
            WHERE c.depth < {MAX_LINEAGE_DEPTH}
        ), nearest AS (
            SELECT source, token_id, descendant, min(depth) AS depth
            FROM closure GROUP BY source, token_id, descendant
        ), steps AS (
            SELECT n.source AS from_service, n.token_id AS held_token,
                   n.descendant AS call_token, n.depth, e.source AS call_source, e.target,
                   e.calls - e.denied - e.errors AS successes,
                   epoch_us(e.first_seen) AS first_us, epoch_us(e.last_seen) AS last_us
            FROM nearest n JOIN token_edges e ON e.token_id = n.descendant
            WHERE e.calls > e.denied + e.errors AND e.target <> n.source
              AND ($targets IS NULL OR list_contains($targets, e.target))
              AND ($since IS NULL OR epoch_us(e.last_seen) >= $since)
              AND ($until IS NULL OR epoch_us(e.first_seen) <= $until)
        ), best AS (
            SELECT from_service, target, count(*) AS ways,
                   unnest(arg_min(
                       struct_pack(held_token, call_token, depth, call_source, successes,
                                   first_us, last_us),
                       struct_pack(kind := {_STEP_KIND}, depth, fewer := -successes,
                                   call_token, held_token, call_source),
                       $ways)) AS way
            FROM steps GROUP BY from_service, target
        )
        SELECT from_service, way.held_token, way.call_token, way.depth, way.call_source, target,
               way.successes, way.first_us, way.last_us, ways
        FROM best
        """,
        {
            "services": list(services),
            "targets": None if targets is None else list(targets),
            "since": since_us,
            "until": until_us,
            "ways": ways,
        },
    ).fetchall()
    return [StepRow(*row) for row in rows]


def service_hops(conn: duckdb.DuckDBPyConnection) -> dict[str, list[str]] | None:
    """Each service -> the services access can flow to from it in one step, whenever (None when
    the database predates `service_hops`, e.g. an older file opened read-only)."""
    try:
        rows = conn.execute("SELECT source, target FROM service_hops ORDER BY 1, 2").fetchall()
    except duckdb.CatalogException:
        return None
    hops: dict[str, list[str]] = {}
    for source, target in rows:
        hops.setdefault(source, []).append(target)
    return hops


class ProofRow(NamedTuple):
    """A successful call that proves a step: `token_id` used from `source` to `target`."""

    token_id: str
    source: str
    target: str
    ts_us: int
    event_id: str
    operation: str
    trace_id: str | None


def step_events(
    conn: duckdb.DuckDBPyConnection,
    *,
    keys: Sequence[tuple[str, str, str, int, int]],
    since_us: int | None = None,
    until_us: int | None = None,
) -> list[ProofRow]:
    """Successful events of the given steps `(token, source, target, first_us, last_us)`,
    oldest first. Each step is read within its own time span, from the few row groups that hold
    it (credentials are short-lived, so the spans are narrow), in one statement."""
    parts, params = [], []
    for token, source, target, first_us, last_us in keys:
        lo = first_us if since_us is None else max(first_us, since_us)
        hi = last_us if until_us is None else min(last_us, until_us)
        if lo > hi:
            continue
        parts.append(
            "SELECT token_id, source, target, epoch_us(ts), event_id, operation, trace_id"
            " FROM events WHERE token_id = ? AND source = ? AND target = ?"
            " AND outcome = 'success' AND ts BETWEEN ? AND ?"
        )
        params += [token, source, target, utc(lo), utc(hi)]
    if not parts:
        return []
    rows = conn.execute(
        " UNION ALL ".join(f"({p})" for p in parts) + " ORDER BY 4, 5", params
    ).fetchall()
    return [ProofRow(*row) for row in rows]


class ExposureRow(NamedTuple):
    """A token that reached a service: directly, downstream in a chain, or through a token
    derived from it (`via_token` is the token that made the call)."""

    token_id: str
    identity: str | None
    via: str  # direct | chain | derived
    via_token: str
    operation: str
    scope: str
    calls: int
    successes: int
    denied: int
    first_seen_us: int
    last_seen_us: int
    evidence_event_id: str | None


def exposure_rows(conn: duckdb.DuckDBPyConnection, *, service: str) -> list[ExposureRow]:
    """Every token that reached (or tried to reach) `service`, and how."""
    rows = conn.execute(
        f"""
        WITH RECURSIVE hits AS (
            SELECT token_id, 'direct' AS via, token_id AS via_token, operation, scope, calls,
                   calls - denied - errors AS successes, denied, first_seen, last_seen,
                   CAST(NULL AS VARCHAR) AS evidence_event_id
            FROM token_edges WHERE target = $service
            UNION ALL
            SELECT token_id, 'chain', first_token_id, operation, scope, 0, 0, 0, first_seen,
                   last_seen, first_event_id
            FROM chain_reach WHERE target = $service
        ), up(token_id, hit, depth) AS (
            SELECT DISTINCT token_id, token_id, 0 FROM hits WHERE via = 'chain' OR successes > 0
            UNION
            SELECT l.parent_token_id, u.hit, u.depth + 1
            FROM up u JOIN token_links l ON l.child_token_id = u.token_id
            WHERE u.depth < {MAX_LINEAGE_DEPTH}
        ), derived AS (
            SELECT u.token_id, 'derived' AS via, h.via_token, h.operation, h.scope, 0, 0, 0,
                   h.first_seen, h.last_seen, h.evidence_event_id
            FROM (SELECT DISTINCT token_id, hit FROM up WHERE depth > 0) u
            JOIN hits h ON h.token_id = u.hit AND (h.via = 'chain' OR h.successes > 0)
        ), found AS (
            SELECT * FROM hits UNION ALL SELECT * FROM derived
        )
        SELECT f.token_id, t.identity, f.via, f.via_token, f.operation, f.scope, f.calls,
               f.successes, f.denied, epoch_us(f.first_seen), epoch_us(f.last_seen),
               f.evidence_event_id
        FROM found f LEFT JOIN tokens t USING (token_id)
        ORDER BY f.token_id, f.via, f.via_token, f.operation, f.scope
        """,
        {"service": service},
    ).fetchall()
    return [ExposureRow(*row) for row in rows]
