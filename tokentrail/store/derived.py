"""Derived tables (`tokens`, `token_edges`) merged from newly stored events, batch by batch.

Every merge is order-independent (sums, min/max, and "newest by (ts, event_id)" for metadata),
so a file ingested at once, the same events streamed through Kafka in any batch sizes, and a
migration backfill all end with the same rows.
"""

from __future__ import annotations

from typing import Final

import duckdb

# Token metadata fields taken together from the newest event (by event time) that carried them.
_META: Final = (
    ("kind", "token_kind"),
    ("scopes", "token_scopes"),
    ("issued_at", "token_issued_at"),
    ("expires_at", "token_expires_at"),
    ("parent_token_id", "parent_token_id"),
    ("audience", "token_audience"),
)

_HAS_META: Final = " OR ".join(f"{column} IS NOT NULL" for _, column in _META)


# The incoming first use is earlier (ties broken by event id, so any batching agrees).
_EARLIER_FIRST: Final = (
    "(EXCLUDED.first_seen, EXCLUDED.first_event_id) < (tokens.first_seen, tokens.first_event_id)"
)
# The incoming metadata is newer than the stored metadata.
_NEWER_META: Final = (
    "EXCLUDED.meta_ts IS NOT NULL AND (tokens.meta_ts IS NULL OR"
    " (EXCLUDED.meta_ts, EXCLUDED.meta_event_id) > (tokens.meta_ts, tokens.meta_event_id))"
)
_FIRST_FIELDS: Final = ("identity", "identity_kind", "first_event_id")
_META_FIELDS: Final = (*(name for name, _ in _META), "meta_ts", "meta_event_id")


def _take_if(condition: str, fields: tuple[str, ...]) -> list[str]:
    return [f"{f} = CASE WHEN {condition} THEN EXCLUDED.{f} ELSE tokens.{f} END" for f in fields]


_SET_TOKENS: Final = ",\n    ".join(
    _take_if(_EARLIER_FIRST, _FIRST_FIELDS) + _take_if(_NEWER_META, _META_FIELDS)
)

_MERGE_TOKENS: Final = f"""
INSERT INTO tokens
WITH use AS (
    SELECT token_id,
           arg_min(identity, (ts, event_id)) AS identity,
           arg_min(identity_kind, (ts, event_id)) AS identity_kind,
           min(ts) AS first_seen,
           min((ts, event_id))[2] AS first_event_id,
           max(ts) AS last_seen,
           count(*) AS calls,
           count(*) FILTER (WHERE outcome = 'denied') AS denied,
           count(*) FILTER (WHERE outcome = 'error') AS errors,
           bool_or(coalesce(list_contains(flags, 'token_id_redacted'), false)) AS redacted
    FROM {{new_events}}
    GROUP BY token_id
), meta AS (
    SELECT token_id,
           {", ".join(f"arg_max({col}, (ts, event_id)) AS {name}" for name, col in _META)},
           max(ts) AS meta_ts,
           max((ts, event_id))[2] AS meta_event_id
    FROM {{new_events}}
    WHERE {_HAS_META}
    GROUP BY token_id
)
SELECT use.token_id, use.identity, use.identity_kind,
       {", ".join(f"meta.{name}" for name, _ in _META)},
       meta.meta_ts, meta.meta_event_id,
       use.first_seen, use.first_event_id, use.last_seen,
       use.calls, use.denied, use.errors, use.redacted
FROM use LEFT JOIN meta USING (token_id)
ON CONFLICT (token_id) DO UPDATE SET
    {_SET_TOKENS},
    first_seen = least(tokens.first_seen, EXCLUDED.first_seen),
    last_seen = greatest(tokens.last_seen, EXCLUDED.last_seen),
    calls = tokens.calls + EXCLUDED.calls,
    denied = tokens.denied + EXCLUDED.denied,
    errors = tokens.errors + EXCLUDED.errors,
    redacted = tokens.redacted OR EXCLUDED.redacted
"""

_MERGE_EDGES: Final = """
INSERT INTO token_edges
SELECT token_id, identity, source, target, operation, coalesce(scope, '') AS scope,
       count(*) AS calls,
       count(*) FILTER (WHERE outcome = 'denied') AS denied,
       count(*) FILTER (WHERE outcome = 'error') AS errors,
       coalesce(sum(bytes_out), 0) AS bytes_out,
       coalesce(list_sort(list_distinct(list(environment))), []) AS environments,
       min(ts) AS first_seen,
       max(ts) AS last_seen
FROM {new_events}
GROUP BY ALL
ON CONFLICT DO UPDATE SET
    calls = token_edges.calls + EXCLUDED.calls,
    denied = token_edges.denied + EXCLUDED.denied,
    errors = token_edges.errors + EXCLUDED.errors,
    bytes_out = token_edges.bytes_out + EXCLUDED.bytes_out,
    environments = list_sort(list_distinct(list_concat(token_edges.environments,
                                                       EXCLUDED.environments))),
    first_seen = least(token_edges.first_seen, EXCLUDED.first_seen),
    last_seen = greatest(token_edges.last_seen, EXCLUDED.last_seen)
"""


def merge_derived(conn: duckdb.DuckDBPyConnection, *, new_events: str) -> None:
    """Fold the rows of relation `new_events` (events not merged before) into derived tables."""
    conn.execute(_MERGE_TOKENS.format(new_events=new_events))
    conn.execute(_MERGE_EDGES.format(new_events=new_events))
