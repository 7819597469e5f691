"""All detection SQL: the window of a detection pass, its annotation, baselines, alerts.

Detection runs on an event-time watermark (docs/DETECTORS.md). A pass takes the stored events
not processed yet with `ts <= watermark`, in (ts, event_id) order, and annotates each one with
what was known *as of its time*: whether it was the first to show a facet (a target new to its
identity, a second address for a token ...), the token's declared metadata, its identity's
history and the declared policy. Every annotation is a set operation that only depends on the
events before the call (the baselines, updated in the same order, plus the earlier events of
the window), so a file ingested at once, the same events in any batch sizes, and a backfill all
annotate, and therefore detect, alike.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Final, NamedTuple

import duckdb
import pyarrow as pa

from tokentrail.catalog import Catalog
from tokentrail.detect.model import Call, Step
from tokentrail.events import EPOCH, ONE_US
from tokentrail.store.relations import registered

DETECT_TABLES: Final = """
-- One row per finding (deduplicated): the alert an analyst triages.
CREATE TABLE alerts (
    alert_id       VARCHAR PRIMARY KEY,
    detector       VARCHAR NOT NULL,
    dedupe_key     VARCHAR NOT NULL,
    severity       VARCHAR NOT NULL,    -- info | low | medium | high | critical
    score          DOUBLE NOT NULL,
    title          VARCHAR NOT NULL,
    token_id       VARCHAR,
    identity       VARCHAR,
    targets        VARCHAR[] NOT NULL,
    first_seen     TIMESTAMPTZ NOT NULL,  -- event time
    last_seen      TIMESTAMPTZ NOT NULL,
    first_event_id VARCHAR NOT NULL,
    count          BIGINT NOT NULL,
    event_ids      VARCHAR[] NOT NULL,    -- the earliest evidence events, capped
    evidence       JSON NOT NULL,         -- path, baseline broken, reach, ...
    mitre          VARCHAR[] NOT NULL,
    owasp_nhi      VARCHAR[] NOT NULL,
    runbook        VARCHAR NOT NULL,
    status         VARCHAR NOT NULL,      -- open | acknowledged | closed | suppressed
    suppressed_by  VARCHAR,
    created_at     TIMESTAMPTZ NOT NULL,  -- wall clock
    updated_at     TIMESTAMPTZ NOT NULL
);

-- How far detection got: every event up to (ts, event_id) was processed; events stored after
-- `ingested_hwm` with an earlier time are late and taken by the next pass.
CREATE TABLE detect_progress (
    name         VARCHAR PRIMARY KEY,
    ts           TIMESTAMPTZ NOT NULL,
    event_id     VARCHAR NOT NULL,
    ingested_hwm TIMESTAMPTZ NOT NULL,
    passes       BIGINT NOT NULL,
    events       BIGINT NOT NULL,
    late         BIGINT NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL
);

-- Baselines: every (subject, facet, value) seen, e.g. (identity, 'target', 'payments-db'),
-- (token, 'token_ip', '10.0.0.7'), (target, 'caller_class', 'build').
CREATE TABLE detect_seen (
    subject        VARCHAR NOT NULL,
    facet          VARCHAR NOT NULL,
    value          VARCHAR NOT NULL,
    first_seen     TIMESTAMPTZ NOT NULL,
    first_event_id VARCHAR NOT NULL,
    last_seen      TIMESTAMPTZ NOT NULL,
    n              BIGINT NOT NULL,
    PRIMARY KEY (subject, facet, value)
);

-- Identities, tokens and targets: when first and last seen (warm-up, dormancy).
CREATE TABLE detect_subjects (
    kind           VARCHAR NOT NULL,      -- identity | token | target
    subject        VARCHAR NOT NULL,
    first_seen     TIMESTAMPTZ NOT NULL,
    first_event_id VARCHAR NOT NULL,
    last_seen      TIMESTAMPTZ NOT NULL,
    n              BIGINT NOT NULL,
    home           VARCHAR,               -- identity: its first environment
    PRIMARY KEY (kind, subject)
);

-- Token metadata as first declared (a credential's claims do not change).
CREATE TABLE detect_tokens (
    token_id        VARCHAR PRIMARY KEY,
    kind            VARCHAR,
    scopes          VARCHAR[],
    issued_at       TIMESTAMPTZ,
    expires_at      TIMESTAMPTZ,
    parent_token_id VARCHAR,
    meta_ts         TIMESTAMPTZ NOT NULL,
    meta_event_id   VARCHAR NOT NULL
);

-- A detector that threw: recorded and counted, the stream goes on.
CREATE TABLE detect_errors (
    recorded_at  TIMESTAMPTZ NOT NULL,
    detector     VARCHAR NOT NULL,
    window_start TIMESTAMPTZ,
    window_end   TIMESTAMPTZ,
    events       BIGINT NOT NULL,
    error        VARCHAR NOT NULL
);

-- The catalog and rules file detection last ran with, so a backfill uses the same.
CREATE TABLE detect_config (
    name       VARCHAR PRIMARY KEY,
    content    VARCHAR NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
"""

PROGRESS: Final = "detect"


def utc(us: int) -> datetime:
    return EPOCH + us * ONE_US


def _first(rows: list[Any]) -> Any:
    """The first row of a fully fetched result, or None (DuckDB wants results fetched whole
    before the connection does other work)."""
    return rows[0] if rows else None


class Progress(NamedTuple):
    ts_us: int
    event_id: str
    ingested_hwm_us: int
    passes: int
    events: int
    late: int


def progress(conn: duckdb.DuckDBPyConnection) -> Progress:
    """Where detection stands (the epoch when it never ran)."""
    row = _first(
        conn.execute(
            "SELECT epoch_us(ts), event_id, epoch_us(ingested_hwm), passes, events, late"
            " FROM detect_progress WHERE name = ?",
            [PROGRESS],
        ).fetchall()
    )
    if row is None:
        return Progress(0, "", 0, 0, 0, 0)
    return Progress(*row)


def pending_bounds(conn: duckdb.DuckDBPyConnection) -> tuple[int | None, int | None]:
    """(newest event time stored, newest ingestion time), as epoch micros."""
    row = _first(
        conn.execute("SELECT epoch_us(max(ts)), epoch_us(max(ingested_at)) FROM events").fetchall()
    )
    assert row is not None
    return row[0], row[1]


_WINDOW: Final = """
CREATE OR REPLACE TEMP TABLE detect_window AS
SELECT e.event_id, e.ts, e.token_id, e.identity, e.source, e.target, e.operation,
       coalesce(e.scope, '') AS scope, e.outcome, e.status, e.trace_id, e.environment,
       e.identity_kind, e.resource, e.source_ip, e.user_agent, e.bytes_out, e.task_id,
       e.attributes ->> '$.task_kind' AS task_kind, e.actor, e.token_kind, e.token_scopes,
       e.token_issued_at, e.token_expires_at, e.parent_token_id,
       NOT (e.ts > $p_ts OR (e.ts = $p_ts AND e.event_id > $p_id)) AS late
FROM events e
WHERE (e.ts >= $p_ts AND (e.ts > $p_ts OR e.event_id > $p_id) AND e.ts <= $wm)
   OR (e.ingested_at > $hwm AND (e.ts < $p_ts OR (e.ts = $p_ts AND e.event_id <= $p_id)))
"""


class Window(NamedTuple):
    events: int
    late: int
    first_us: int | None
    last_us: int | None
    last_event_id: str | None


def select_window(conn: duckdb.DuckDBPyConnection, *, after: Progress, watermark_us: int) -> Window:
    """Take the events to process into temp table `detect_window`; returns what it holds."""
    conn.execute(
        _WINDOW,
        {
            "p_ts": utc(after.ts_us),
            "p_id": after.event_id,
            "wm": utc(watermark_us),
            "hwm": utc(after.ingested_hwm_us),
        },
    )
    row = _first(
        conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE late), epoch_us(min(ts)),"
            " epoch_us(max(ts)), max((ts, event_id))[2] FROM detect_window"
        ).fetchall()
    )
    assert row is not None
    return Window(int(row[0]), int(row[1]), row[2], row[3], row[4])


@contextmanager
def catalog_tables(
    conn: duckdb.DuckDBPyConnection, *, catalog: Catalog, tasks: Sequence[Any] = ()
) -> Iterator[None]:
    """Register the catalog's services and the declared policies (per identity, and per
    identity x task kind from the rules file) for the annotation query."""
    policies = [
        (i.name, "", i.environment, list(i.allowed_targets), list(i.allowed_scopes))
        for i in catalog.identities
    ]
    policies += [
        (t.identity, t.kind, None, list(t.allowed_targets), list(t.allowed_scopes)) for t in tasks
    ]
    relations = {
        "tt_det_services": pa.table(
            {
                "name": pa.array([s.name for s in catalog.services], pa.string()),
                "environment": pa.array([s.environment for s in catalog.services], pa.string()),
                "sensitivity": pa.array(
                    [float(s.sensitivity) for s in catalog.services], pa.float64()
                ),
            }
        ),
        "tt_det_policies": pa.table(
            {
                "name": pa.array([p[0] for p in policies], pa.string()),
                "task_kind": pa.array([p[1] for p in policies], pa.string()),
                "environment": pa.array([p[2] for p in policies], pa.string()),
                "targets": pa.array([p[3] for p in policies], pa.list_(pa.string())),
                "scopes": pa.array([p[4] for p in policies], pa.list_(pa.string())),
            }
        ),
    }
    with registered(conn, **relations):
        yield


# Facts the window's calls show, aggregated: (subject, facet, value) with its first call. A fact
# that is not in `detect_seen` is novel, on that first call.
_FACTS: Final = r"""
CREATE OR REPLACE TEMP TABLE detect_facts AS
WITH w AS (
    SELECT d.*, coalesce(p.privilege, 'read') AS privilege,
           CASE d.identity_kind WHEN 'ci' THEN 'build' WHEN 'agent' THEN 'agent'
                ELSE 'runtime' END AS caller_class
    FROM detect_window d
    LEFT JOIN operation_scopes p ON p.operation = d.operation AND p.scope = d.scope
), facts AS (
    SELECT event_id, ts, identity AS subject, 'target' AS facet, target AS value FROM w
    UNION ALL SELECT event_id, ts, identity, 'scope', scope FROM w WHERE scope <> ''
    UNION ALL SELECT event_id, ts, identity, 'privilege', privilege FROM w
    UNION ALL SELECT event_id, ts, identity, 'task_target', task_kind || ' ' || target FROM w
              WHERE task_kind IS NOT NULL
    -- A token's network, not its address: pods, NAT pools and serverless move within one
    -- (an IPv4 /24, an IPv6 /48); a replay from elsewhere lands outside it.
    UNION ALL SELECT event_id, ts, token_id, 'token_ip',
                     coalesce(nullif(regexp_extract(source_ip, '^(\d+\.\d+\.\d+)\.\d+$', 1), '')
                                  || '.0/24',
                              nullif(regexp_extract(lower(source_ip),
                                                    '^([0-9a-f]*:[0-9a-f]*:[0-9a-f]*):', 1), '')
                                  || '::/48',
                              source_ip) FROM w
              WHERE source_ip IS NOT NULL
    UNION ALL SELECT event_id, ts, token_id, 'token_identity', identity FROM w
    UNION ALL SELECT event_id, ts, token_id, 'token_source', source FROM w
    UNION ALL SELECT event_id, ts, token_id, 'token_env', environment FROM w
              WHERE environment IS NOT NULL
    UNION ALL SELECT event_id, ts, target, 'caller_class', caller_class FROM w
)
SELECT subject, facet, value, min(ts) AS first_seen,
       arg_min(event_id, (ts, event_id)) AS first_event_id, max(ts) AS last_seen, count(*) AS n
FROM facts GROUP BY subject, facet, value
"""

# A call against its identity's declared policy (catalog `[[identity]]`, by workload `pt` or by
# identity `pi`) and its actor's (`pa`): shared by the annotation pass and the re-decision.
_POLICY_CHECKS: Final = """
    pi.name IS NOT NULL OR pt.name IS NOT NULL AS declared,
    CASE WHEN len(coalesce(pt.targets, pi.targets, [])) > 0
         THEN list_contains(coalesce(pt.targets, pi.targets), c.target) END AS allowed_target,
    CASE WHEN c.scope = '' THEN NULL
         WHEN len(coalesce(pt.scopes, pi.scopes, [])) > 0
         THEN list_contains(coalesce(pt.scopes, pi.scopes), c.scope) END AS allowed_scope,
    CASE WHEN c.actor IS NOT NULL AND c.actor <> c.identity AND len(pa.targets) > 0
         THEN list_contains(pa.targets, c.target) END AS actor_allowed_target
"""

_ANNOTATE: Final = (
    """
CREATE OR REPLACE TEMP TABLE detect_candidates AS
WITH w AS NOT MATERIALIZED (
    -- Only what the candidate test needs: whole calls are joined back to the candidates
    -- alone (~1% of a pass). Carried through every join below they cost a 50k-call pass
    -- 257 MB of buffers unbounded (spilling ~40 MB under the ingest's 192MB) and 1.5-2x the
    -- time, against ~155 MB; materialized, this CTE adds ~60 MB (docs/PERFORMANCE.md).
    SELECT rowid AS rid, event_id, ts, token_id, identity, target, scope, outcome,
           environment, task_kind, actor, late
    FROM detect_window
), ordered AS (
    -- A window function sorts all of its input: these few columns only.
    SELECT rowid AS rid,
           lag(ts) OVER (PARTITION BY token_id ORDER BY ts, event_id) AS token_prev_here,
           row_number() OVER (PARTITION BY identity ORDER BY ts, event_id) AS identity_nth
    FROM detect_window
), novel AS (
    SELECT f.first_event_id AS event_id, list(f.facet ORDER BY f.facet) AS novel
    FROM detect_facts f
    ANTI JOIN detect_seen s ON s.subject = f.subject AND s.facet = f.facet AND s.value = f.value
    GROUP BY f.first_event_id
), meta AS (
    -- The first metadata each token declared in this window (claims do not change).
    SELECT token_id, arg_min(token_kind, (ts, event_id)) AS kind,
           arg_min(token_scopes, (ts, event_id)) AS scopes,
           arg_min(token_issued_at, (ts, event_id)) AS issued_at,
           arg_min(token_expires_at, (ts, event_id)) AS expires_at,
           arg_min(parent_token_id, (ts, event_id)) AS parent_token_id,
           min(ts) AS meta_ts
    FROM detect_window
    WHERE token_kind IS NOT NULL OR token_scopes IS NOT NULL OR token_expires_at IS NOT NULL
       OR token_issued_at IS NOT NULL OR parent_token_id IS NOT NULL
    GROUP BY token_id
), claims AS (
    -- Each token's claims: as earlier passes stored them (valid for every call), else as
    -- first declared in this window (for calls from then on). Only of the window's tokens
    -- and their parents: `detect_tokens` holds every token ever seen, and a hash table of it
    -- (~270 MB for 400k tokens) does not fit the ingest's memory limit.
    SELECT token_id, true AS stored, kind, scopes, issued_at, expires_at, parent_token_id,
           meta_ts
    FROM detect_tokens
    WHERE token_id IN (SELECT token_id FROM detect_window)
       OR token_id IN (SELECT parent_token_id FROM detect_window)
       OR token_id IN (SELECT parent_token_id FROM detect_tokens
                       WHERE token_id IN (SELECT token_id FROM detect_window))
    UNION ALL
    SELECT m.token_id, false, m.kind, m.scopes, m.issued_at, m.expires_at, m.parent_token_id,
           m.meta_ts
    FROM meta m ANTI JOIN detect_tokens t USING (token_id)
), firsts AS (
    SELECT 'token' AS kind, token_id AS subject, min((ts, event_id))[2] AS first_event_id,
           min(ts) AS first_seen, NULL AS home
    FROM w GROUP BY token_id
    UNION ALL
    SELECT 'identity', identity, NULL, min(ts),
           arg_min(environment, (ts, event_id)) FILTER (WHERE environment IS NOT NULL)
    FROM w GROUP BY identity
    UNION ALL
    SELECT 'target', target, NULL, min(ts), NULL FROM w GROUP BY target
), subjects AS (
    -- The window's tokens, identities and targets with what earlier passes saw of them.
    SELECT f.kind, f.subject, f.first_event_id, s.subject IS NOT NULL AS known, s.last_seen,
           least(s.first_seen, f.first_seen) AS first_seen, coalesce(s.n, 0) AS n,
           coalesce(s.home, f.home) AS home
    FROM firsts f
    LEFT JOIN detect_subjects s ON s.kind = f.kind AND s.subject = f.subject
), tokens AS (
    -- Per token of the window, what every call of it needs: earlier passes' view, its claims
    -- and its parent's. Looked up once per call, as targets below: each join of the calls
    -- costs this query a hash table per thread, and its memory floor with it.
    SELECT st.subject AS token_id, st.known, st.first_event_id, st.last_seen,
           tc.stored, tc.meta_ts, tc.kind, tc.scopes, tc.issued_at, tc.expires_at,
           tc.parent_token_id, pc.stored AS parent_stored, pc.meta_ts AS parent_meta_ts,
           pc.scopes AS parent_scopes
    FROM subjects st
    LEFT JOIN claims tc ON tc.token_id = st.subject
    LEFT JOIN claims pc ON pc.token_id = tc.parent_token_id
    WHERE st.kind = 'token'
), targets AS (
    SELECT sg.subject AS target, sg.first_seen, s.sensitivity, s.environment
    FROM subjects sg LEFT JOIN tt_det_services s ON s.name = sg.subject
    WHERE sg.kind = 'target'
), ctx AS (
    SELECT w.*,
        coalesce(n.novel, []) AS novel_all,
        NOT t.known AND w.event_id = t.first_event_id AS token_first,
        coalesce(o.token_prev_here, t.last_seen) AS token_prev,
        -- Claims stored by earlier passes hold for every call; those first declared in this
        -- window, from then on.
        t.stored OR t.meta_ts <= w.ts AS claimed,
        CASE WHEN claimed THEN t.kind END AS t_kind,
        CASE WHEN claimed THEN t.scopes END AS t_scopes,
        CASE WHEN claimed THEN t.issued_at END AS t_issued,
        CASE WHEN claimed THEN t.expires_at END AS t_expires,
        CASE WHEN claimed THEN t.parent_token_id END AS t_parent,
        CASE WHEN claimed AND (t.parent_stored OR t.parent_meta_ts <= w.ts)
             THEN t.parent_scopes END AS parent_scopes,
        si.first_seen AS identity_first,
        coalesce(si.n, 0) + o.identity_nth - 1 AS identity_events,
        si.home AS seen_home,
        g.first_seen AS target_first,
        g.sensitivity AS target_sensitivity,
        g.environment AS catalog_env
    FROM w
    JOIN ordered o USING (rid)
    LEFT JOIN novel n USING (event_id)
    LEFT JOIN tokens t USING (token_id)
    LEFT JOIN subjects si ON si.kind = 'identity' AND si.subject = w.identity
    LEFT JOIN targets g USING (target)
), annotated AS (
    SELECT c.* EXCLUDE (claimed, target_sensitivity, catalog_env),
        -- A token's own facets are not novel on its first use: every new token has them.
        CASE WHEN c.token_first
             THEN list_filter(c.novel_all, lambda x: NOT starts_with(x, 'token_'))
             ELSE c.novel_all END AS novel,
        coalesce(c.target_sensitivity, $default_sensitivity) AS sensitivity,
        coalesce(c.catalog_env, c.environment) AS target_env,
        coalesce(pi.environment, c.seen_home) AS home_env,
"""
    + _POLICY_CHECKS
    + """    FROM ctx c
    LEFT JOIN tt_det_policies pi ON pi.name = c.identity AND pi.task_kind = ''
    LEFT JOIN tt_det_policies pt ON pt.name = c.identity AND pt.task_kind = c.task_kind
    LEFT JOIN tt_det_policies pa ON pa.name = c.actor AND pa.task_kind = ''
)
SELECT * FROM annotated
WHERE len(novel) > 0
   OR allowed_target = false OR allowed_scope = false OR actor_allowed_target = false
   OR outcome = 'denied' OR late
   OR (t_expires IS NOT NULL AND ts > t_expires)
   OR (token_first AND (t_expires IS NULL OR t_expires - coalesce(t_issued, ts) > $max_ttl))
   OR (token_prev IS NOT NULL AND ts - token_prev > $dormant)
   OR (t_parent IS NOT NULL AND parent_scopes IS NOT NULL AND scope <> ''
       AND NOT list_contains(parent_scopes, scope))
   OR (t_scopes IS NOT NULL AND scope <> '' AND NOT list_contains(t_scopes, scope))
   OR (home_env IS NOT NULL AND target_env IS NOT NULL AND target_env <> home_env
       AND coalesce(allowed_target, false) = false)
"""
)

# The candidates with the whole of their calls, in a statement of its own: with the
# candidates counted, DuckDB builds its hash table of them (~1% of the window), not of the
# window's whole calls.
_CALLS: Final = """
CREATE OR REPLACE TEMP TABLE detect_calls AS
SELECT d.*, coalesce(p.privilege, 'read') AS privilege,
       CASE d.identity_kind WHEN 'ci' THEN 'build' WHEN 'agent' THEN 'agent'
            ELSE 'runtime' END AS caller_class,
       c.novel, c.token_first, c.token_prev, c.t_kind, c.t_scopes, c.t_issued, c.t_expires,
       c.t_parent, c.parent_scopes, c.identity_first, c.identity_events, c.target_first,
       c.sensitivity, c.target_env, c.home_env, c.declared, c.allowed_target, c.allowed_scope,
       c.actor_allowed_target
FROM detect_candidates c
JOIN detect_window d ON d.rowid = c.rid
LEFT JOIN operation_scopes p ON p.operation = d.operation AND p.scope = d.scope
"""

# Lineage of the derived tokens among the candidates: ancestors (as known at the call's time)
# and the credential-access calls they made shortly before it.
_PATHS: Final = """
WITH RECURSIVE cand AS (
    SELECT DISTINCT event_id, ts, token_id FROM detect_calls WHERE t_parent IS NOT NULL
), links AS (
    -- Declared parents (token.parent_token_id), as known before and within this pass.
    SELECT token_id AS child, parent_token_id AS parent, meta_ts AS first_seen
    FROM detect_tokens WHERE parent_token_id IS NOT NULL
    UNION ALL
    SELECT token_id, parent_token_id, min(ts) FROM detect_window
    WHERE parent_token_id IS NOT NULL GROUP BY ALL
), up(event_id, ts, token_id, depth) AS (
    SELECT event_id, ts, token_id, 0 FROM cand
    UNION
    SELECT u.event_id, u.ts, l.parent, u.depth + 1
    FROM up u JOIN links l ON l.child = u.token_id AND l.first_seen <= u.ts
    WHERE u.depth < 8
), ancestors AS (
    SELECT event_id, ts, token_id, min(depth) AS depth FROM up WHERE depth > 0
    GROUP BY ALL
), steps AS (
    SELECT a.event_id, 'call' AS kind, a.depth, e.token_id, e.event_id AS step_event,
           epoch_us(e.ts) AS step_us, e.identity, e.operation, e.target, e.resource
    FROM ancestors a JOIN events e ON e.token_id = a.token_id
    WHERE e.ts BETWEEN a.ts - to_microseconds($window) AND a.ts
      AND e.ts >= $lo AND e.ts <= $hi
      AND (regexp_matches(e.operation, $credential_ops) OR coalesce(e.scope, '') IN
           ('secrets:read', 'token:exchange', 'sts:assume-role'))
    UNION ALL
    SELECT event_id, 'token', depth, token_id, NULL, NULL, NULL, NULL, NULL, NULL
    FROM ancestors
)
SELECT event_id, kind, depth, token_id, step_event, step_us, identity, operation, target,
       resource
FROM steps ORDER BY event_id, kind DESC, depth DESC, step_us, step_event
"""

_CALL_COLUMNS: Final = (
    "event_id, epoch_us(ts), token_id, identity, source, target, operation, scope, outcome,"
    " status, trace_id, environment, identity_kind, resource, source_ip, user_agent, bytes_out,"
    " task_id, task_kind, actor, late, privilege, caller_class, novel, token_first,"
    " epoch_us(token_prev), t_kind, t_scopes, epoch_us(t_issued), epoch_us(t_expires),"
    " t_parent, parent_scopes, epoch_us(identity_first), identity_events,"
    " epoch_us(target_first), sensitivity, target_env, home_env, declared, allowed_target,"
    " allowed_scope, actor_allowed_target"
)

# Operations that access credentials: secret reads, role assumption, key and token minting.
CREDENTIAL_OPS: Final = (
    r"(?i)(secret|assumerole|getsessiontoken|getfederationtoken|createaccesskey|createtoken"
    r"|createserviceaccountkey|generateaccesstoken|oauth2/token|/token\b|token-exchange)"
)


def annotate(
    conn: duckdb.DuckDBPyConnection,
    *,
    default_sensitivity: float,
    max_ttl_us: int,
    dormant_us: int,
    pivot_window_us: int,
) -> list[Call]:
    """Annotate `detect_window` (needs `catalog_tables`) and return its candidate calls, in
    (ts, event_id) order: those showing anything a detector looks at."""
    conn.execute(_FACTS)
    conn.execute(
        _ANNOTATE,
        {
            "default_sensitivity": default_sensitivity,
            "max_ttl": _interval(max_ttl_us),
            "dormant": _interval(dormant_us),
        },
    )
    conn.execute(_CALLS)
    rows = conn.execute(
        f"SELECT {_CALL_COLUMNS} FROM detect_calls ORDER BY ts, event_id"
    ).fetchall()
    paths: dict[str, list[Step]] = {}
    if any(row[30] is not None for row in rows):
        bounds = _first(conn.execute("SELECT min(ts), max(ts) FROM detect_calls").fetchall())
        assert bounds is not None
        lo = bounds[0] - _interval(pivot_window_us)
        for step in conn.execute(
            _PATHS,
            {
                "window": pivot_window_us,
                "lo": lo,
                "hi": bounds[1],
                "credential_ops": CREDENTIAL_OPS,
            },
        ).fetchall():
            paths.setdefault(step[0], []).append(Step(*step[1:]))
    return _calls(rows, paths)


def _calls(rows: list[tuple[Any, ...]], paths: dict[str, list[Step]]) -> list[Call]:
    calls = []
    for row in rows:
        values = list(row)
        values[23] = tuple(values[23])  # novel
        values[27] = tuple(values[27]) if values[27] is not None else None  # token scopes
        values[31] = tuple(values[31]) if values[31] is not None else None  # parent scopes
        calls.append(Call._make([*values, tuple(paths.get(row[0], ()))]))
    return calls


# --- tokens used out of order ------------------------------------------------------------------

# Tokens of which the window holds a late use at or before a use already processed. The topic
# is keyed by identity, so only a token used by several identities (several partitions) gets
# here: which of its uses came first was decided in the order they were read.
_REORDERED: Final = """
SELECT DISTINCT w.token_id FROM detect_window w
JOIN detect_subjects s ON s.kind = 'token' AND s.subject = w.token_id
WHERE w.late AND s.last_seen >= w.ts
ORDER BY 1
"""


def reordered_tokens(conn: duckdb.DuckDBPyConnection) -> list[str]:
    """Tokens whose per-token findings must be decided again (run before `learn`)."""
    return [str(r[0]) for r in conn.execute(_REORDERED).fetchall()]


# The uses of `tt_redo_tokens` that per-token findings can stand on, annotated by event time over
# every processed use (after `learn`, so the baselines hold the window): the token's first use,
# the first use of each value of its facets (`detect_seen` keeps the earliest), uses after a
# dormant gap (the previous use by event time), uses after the declared expiry. Everything else
# as `_ANNOTATE` has it; no lineage (no per-token detector reads it).
_REDECIDE: Final = (
    """
CREATE OR REPLACE TEMP TABLE detect_redo AS
WITH uses AS (
    SELECT e.event_id, e.ts, e.token_id, e.identity, e.source, e.target, e.operation,
           coalesce(e.scope, '') AS scope, e.outcome, e.status, e.trace_id, e.environment,
           e.identity_kind, e.resource, e.source_ip, e.user_agent, e.bytes_out, e.task_id,
           e.attributes ->> '$.task_kind' AS task_kind, e.actor,
           lag(e.ts) OVER (PARTITION BY e.token_id ORDER BY e.ts, e.event_id) AS token_prev
    FROM events e SEMI JOIN tt_redo_tokens t ON t.token_id = e.token_id
), firsts AS (
    SELECT first_event_id AS event_id, list(facet ORDER BY facet) AS novel_all
    FROM detect_seen s SEMI JOIN tt_redo_tokens t ON t.token_id = s.subject
    WHERE facet IN ('token_ip', 'token_identity', 'token_source', 'token_env')
    GROUP BY ALL
), w AS (
    SELECT u.*, f.novel_all, u.event_id = ti.first_event_id AS token_first,
           CASE WHEN tm.meta_ts <= u.ts THEN tm.kind END AS t_kind,
           CASE WHEN tm.meta_ts <= u.ts THEN tm.scopes END AS t_scopes,
           CASE WHEN tm.meta_ts <= u.ts THEN tm.issued_at END AS t_issued,
           CASE WHEN tm.meta_ts <= u.ts THEN tm.expires_at END AS t_expires,
           CASE WHEN tm.meta_ts <= u.ts THEN tm.parent_token_id END AS t_parent
    FROM uses u
    JOIN detect_subjects ti ON ti.kind = 'token' AND ti.subject = u.token_id
    LEFT JOIN firsts f USING (event_id)
    LEFT JOIN detect_tokens tm ON tm.token_id = u.token_id
    WHERE u.ts < $mark_ts OR (u.ts = $mark_ts AND u.event_id <= $mark_id)
), cand AS (
    SELECT * FROM w
    WHERE novel_all IS NOT NULL OR token_first OR w.ts - token_prev > $dormant
       OR w.ts > t_expires
), nth AS (
    -- Events of each identity before each of its events: one sort, not a count per call.
    SELECT event_id, row_number() OVER (PARTITION BY identity ORDER BY ts, event_id) - 1 AS n
    FROM events SEMI JOIN (SELECT DISTINCT identity FROM cand) USING (identity)
)
SELECT c.* EXCLUDE (novel_all), false AS late,
    coalesce(p.privilege, 'read') AS privilege,
    CASE c.identity_kind WHEN 'ci' THEN 'build' WHEN 'agent' THEN 'agent'
         ELSE 'runtime' END AS caller_class,
    -- A token's own facets are not novel on its first use (as in _ANNOTATE).
    CASE WHEN c.token_first THEN [] ELSE c.novel_all END AS novel,
    CASE WHEN ps.meta_ts <= c.ts THEN ps.scopes END AS parent_scopes,
    ii.first_seen AS identity_first, n.n AS identity_events,
    tg.first_seen AS target_first,
    coalesce(s.sensitivity, $default_sensitivity) AS sensitivity,
    coalesce(s.environment, c.environment) AS target_env,
    coalesce(pi.environment, ii.home) AS home_env,
"""
    + _POLICY_CHECKS
    + """FROM cand c
JOIN nth n USING (event_id)
LEFT JOIN operation_scopes p ON p.operation = c.operation AND p.scope = c.scope
LEFT JOIN detect_tokens ps ON ps.token_id = c.t_parent
LEFT JOIN detect_subjects ii ON ii.kind = 'identity' AND ii.subject = c.identity
LEFT JOIN detect_subjects tg ON tg.kind = 'target' AND tg.subject = c.target
LEFT JOIN tt_det_services s ON s.name = c.target
LEFT JOIN tt_det_policies pi ON pi.name = c.identity AND pi.task_kind = ''
LEFT JOIN tt_det_policies pt ON pt.name = c.identity AND pt.task_kind = c.task_kind
LEFT JOIN tt_det_policies pa ON pa.name = c.actor AND pa.task_kind = ''
"""
)


def redecide(
    conn: duckdb.DuckDBPyConnection,
    *,
    tokens: Sequence[str],
    mark_us: int,
    mark_id: str,
    default_sensitivity: float,
    dormant_us: int,
) -> list[Call]:
    """The calls per-token detectors need to decide `tokens` again, as an in-order read would
    have annotated them: every processed use up to the mark (ts, event_id) that was the token's
    first, the first of a facet value, after a dormant gap or after expiry. Needs
    `catalog_tables` and baselines that already hold the pass's window."""
    with registered(conn, tt_redo_tokens=pa.table({"token_id": pa.array(tokens, pa.string())})):
        conn.execute(
            _REDECIDE,
            {
                "mark_ts": utc(mark_us),
                "mark_id": mark_id,
                "default_sensitivity": default_sensitivity,
                "dormant": _interval(dormant_us),
            },
        )
    rows = conn.execute(f"SELECT {_CALL_COLUMNS} FROM detect_redo ORDER BY ts, event_id").fetchall()
    conn.execute("DROP TABLE detect_redo")
    return _calls(rows, {})


def _interval(us: int) -> Any:
    from datetime import timedelta

    return timedelta(microseconds=us)


# --- baselines -------------------------------------------------------------------------------

_LEARN_SEEN: Final = """
INSERT INTO detect_seen
SELECT subject, facet, value, first_seen, first_event_id, last_seen, n FROM detect_facts
ON CONFLICT DO UPDATE SET
    first_event_id = CASE WHEN (EXCLUDED.first_seen, EXCLUDED.first_event_id)
        < (detect_seen.first_seen, detect_seen.first_event_id)
        THEN EXCLUDED.first_event_id ELSE detect_seen.first_event_id END,
    first_seen = least(detect_seen.first_seen, EXCLUDED.first_seen),
    last_seen = greatest(detect_seen.last_seen, EXCLUDED.last_seen),
    n = detect_seen.n + EXCLUDED.n
"""

_LEARN_SUBJECTS: Final = """
INSERT INTO detect_subjects
SELECT kind, subject, min(ts), arg_min(event_id, (ts, event_id)), max(ts), count(*),
       arg_min(environment, (ts, event_id)) FILTER (WHERE environment IS NOT NULL)
FROM (
    SELECT 'identity' AS kind, identity AS subject, ts, event_id, environment FROM detect_window
    UNION ALL SELECT 'token', token_id, ts, event_id, NULL FROM detect_window
    UNION ALL SELECT 'target', target, ts, event_id, NULL FROM detect_window
)
GROUP BY kind, subject
ON CONFLICT DO UPDATE SET
    first_event_id = CASE WHEN (EXCLUDED.first_seen, EXCLUDED.first_event_id)
        < (detect_subjects.first_seen, detect_subjects.first_event_id)
        THEN EXCLUDED.first_event_id ELSE detect_subjects.first_event_id END,
    home = CASE WHEN detect_subjects.home IS NULL OR (EXCLUDED.home IS NOT NULL
                     AND EXCLUDED.first_seen < detect_subjects.first_seen)
        THEN EXCLUDED.home ELSE detect_subjects.home END,
    first_seen = least(detect_subjects.first_seen, EXCLUDED.first_seen),
    last_seen = greatest(detect_subjects.last_seen, EXCLUDED.last_seen),
    n = detect_subjects.n + EXCLUDED.n
"""

_LEARN_TOKENS: Final = """
INSERT INTO detect_tokens
SELECT token_id,
       arg_min(token_kind, (ts, event_id)), arg_min(token_scopes, (ts, event_id)),
       arg_min(token_issued_at, (ts, event_id)), arg_min(token_expires_at, (ts, event_id)),
       arg_min(parent_token_id, (ts, event_id)), min(ts), min((ts, event_id))[2]
FROM detect_window
WHERE token_kind IS NOT NULL OR token_scopes IS NOT NULL OR token_expires_at IS NOT NULL
   OR token_issued_at IS NOT NULL OR parent_token_id IS NOT NULL
GROUP BY token_id
ON CONFLICT DO UPDATE SET
    kind = CASE WHEN EXCLUDED.meta_ts < detect_tokens.meta_ts THEN EXCLUDED.kind
                ELSE detect_tokens.kind END,
    scopes = CASE WHEN EXCLUDED.meta_ts < detect_tokens.meta_ts THEN EXCLUDED.scopes
                  ELSE detect_tokens.scopes END,
    issued_at = CASE WHEN EXCLUDED.meta_ts < detect_tokens.meta_ts THEN EXCLUDED.issued_at
                     ELSE detect_tokens.issued_at END,
    expires_at = CASE WHEN EXCLUDED.meta_ts < detect_tokens.meta_ts THEN EXCLUDED.expires_at
                      ELSE detect_tokens.expires_at END,
    parent_token_id = CASE WHEN EXCLUDED.meta_ts < detect_tokens.meta_ts
                           THEN EXCLUDED.parent_token_id ELSE detect_tokens.parent_token_id END,
    meta_event_id = CASE WHEN EXCLUDED.meta_ts < detect_tokens.meta_ts
                         THEN EXCLUDED.meta_event_id ELSE detect_tokens.meta_event_id END,
    meta_ts = least(detect_tokens.meta_ts, EXCLUDED.meta_ts)
"""


def learn(conn: duckdb.DuckDBPyConnection) -> None:
    """Fold `detect_window` (and its `detect_facts`) into the baselines."""
    conn.execute(_LEARN_SEEN)
    conn.execute(_LEARN_SUBJECTS)
    conn.execute(_LEARN_TOKENS)


def save_progress(
    conn: duckdb.DuckDBPyConnection,
    *,
    ts_us: int,
    event_id: str,
    ingested_hwm_us: int,
    events: int,
    late: int,
) -> None:
    conn.execute(
        "INSERT INTO detect_progress VALUES (?, ?, ?, ?, 1, ?, ?, now())"
        " ON CONFLICT DO UPDATE SET ts = EXCLUDED.ts, event_id = EXCLUDED.event_id,"
        " ingested_hwm = EXCLUDED.ingested_hwm, passes = detect_progress.passes + 1,"
        " events = detect_progress.events + EXCLUDED.events,"
        " late = detect_progress.late + EXCLUDED.late, updated_at = now()",
        [PROGRESS, utc(ts_us), event_id, utc(ingested_hwm_us), events, late],
    )


def drop_window(conn: duckdb.DuckDBPyConnection) -> None:
    for table in ("detect_calls", "detect_candidates", "detect_facts", "detect_window"):
        conn.execute(f"DROP TABLE IF EXISTS {table}")


def reset(conn: duckdb.DuckDBPyConnection) -> dict[str, tuple[str, str | None]]:
    """Forget baselines, progress and alerts (for a rebuild); returns the triage status of
    every alert that was not plain `open`, by alert id, to put back on the rebuilt ones."""
    kept = {
        str(a): (str(s), b)
        for a, s, b in conn.execute(
            "SELECT alert_id, status, suppressed_by FROM alerts WHERE status IN"
            " ('acknowledged', 'closed')"
        ).fetchall()
    }
    for table in ("detect_seen", "detect_subjects", "detect_tokens", "detect_progress", "alerts"):
        conn.execute(f"DELETE FROM {table}")
    return kept


def restore_status(
    conn: duckdb.DuckDBPyConnection, *, statuses: dict[str, tuple[str, str | None]]
) -> None:
    if statuses:
        conn.executemany(
            "UPDATE alerts SET status = ? WHERE alert_id = ?",
            [[status, alert_id] for alert_id, (status, _) in statuses.items()],
        )


# --- custom rules ----------------------------------------------------------------------------


def custom_rule_rows(
    conn: duckdb.DuckDBPyConnection, *, sql: str
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run a custom rule over `window_events` (the annotated window); (columns, rows)."""
    conn.execute(
        "CREATE OR REPLACE TEMP VIEW window_events AS"
        " SELECT w.*, coalesce(p.privilege, 'read') AS privilege FROM detect_window w"
        " LEFT JOIN operation_scopes p ON p.operation = w.operation AND p.scope = w.scope"
    )
    cursor = conn.execute(f"SELECT * FROM ({sql}) ORDER BY ts, event_id")
    columns = [d[0] for d in cursor.description or []]
    return columns, cursor.fetchall()


# --- anomaly features --------------------------------------------------------------------------

ANOMALY_FEATURES: Final = (
    "calls",
    "targets",
    "new_targets",
    "new_target_ratio",
    "denied",
    "depth",
    "fan_out",
    "log_bytes",
    "hour",
    "sensitive",
)

# Per (identity, hour) of event time: what the identity's calls looked like in that hour. A
# target is new in an hour when the identity first reached it then (baselines and this pass).
_HOUR_FEATURES: Final = """
WITH seen AS (
    SELECT subject, value, min(first_seen) AS first_seen FROM (
        SELECT subject, value, first_seen FROM detect_seen WHERE facet = 'target'
        UNION ALL
        SELECT subject, value, first_seen FROM detect_facts WHERE facet = 'target'
    ) GROUP BY ALL
)
SELECT e.identity, epoch_us(time_bucket(INTERVAL 1 HOUR, e.ts)) AS hour_us,
       count(*) AS calls,
       count(DISTINCT e.target) AS targets,
       count(DISTINCT e.target) FILTER (WHERE s.first_seen >= time_bucket(INTERVAL 1 HOUR, e.ts))
           AS new_targets,
       count(*) FILTER (WHERE e.outcome = 'denied') AS denied,
       count(DISTINCT e.trace_id) AS traces,
       count(DISTINCT e.source) AS sources,
       ln(1 + coalesce(sum(e.bytes_out), 0)) AS log_bytes,
       max(coalesce(c.sensitivity, $default_sensitivity)) AS sensitive,
       -- The token of the hour's first event: the evidence (`hour_event_ids`) starts there.
       arg_min(e.token_id, (e.ts, e.event_id)) AS token_id
FROM events e
LEFT JOIN seen s ON s.subject = e.identity AND s.value = e.target
LEFT JOIN tt_det_services c ON c.name = e.target
WHERE e.ts >= $lo AND e.ts < $hi
GROUP BY ALL
ORDER BY hour_us, identity
"""


class HourRow(NamedTuple):
    identity: str
    hour_us: int
    calls: int
    targets: int
    new_targets: int
    denied: int
    traces: int
    sources: int
    log_bytes: float
    sensitive: float
    token_id: str


def hour_features(
    conn: duckdb.DuckDBPyConnection, *, lo_us: int, hi_us: int, default_sensitivity: float
) -> list[HourRow]:
    """Per identity and closed hour in [lo, hi): the window features of the anomaly model."""
    rows = conn.execute(
        _HOUR_FEATURES,
        {"lo": utc(lo_us), "hi": utc(hi_us), "default_sensitivity": default_sensitivity},
    ).fetchall()
    return [HourRow(*row) for row in rows]


def hour_event_ids(
    conn: duckdb.DuckDBPyConnection, *, identity: str, hour_us: int, limit: int
) -> list[str]:
    """The first events of an identity in an hour (evidence of an anomalous hour)."""
    rows = conn.execute(
        "SELECT event_id FROM events WHERE identity = ? AND ts >= ? AND ts < ?"
        " ORDER BY ts, event_id LIMIT ?",
        [identity, utc(hour_us), utc(hour_us + 3_600_000_000), limit],
    ).fetchall()
    return [str(r[0]) for r in rows]


# --- errors, config --------------------------------------------------------------------------


def record_error(
    conn: duckdb.DuckDBPyConnection,
    *,
    detector: str,
    error: str,
    window: Window,
) -> None:
    conn.execute(
        "INSERT INTO detect_errors VALUES (now(), ?, ?, ?, ?, ?)",
        [
            detector,
            utc(window.first_us) if window.first_us is not None else None,
            utc(window.last_us) if window.last_us is not None else None,
            window.events,
            error[:2000],
        ],
    )


def error_counts(conn: duckdb.DuckDBPyConnection) -> dict[str, int]:
    rows = conn.execute("SELECT detector, count(*) FROM detect_errors GROUP BY ALL").fetchall()
    return {str(d): int(n) for d, n in rows}


def save_config(conn: duckdb.DuckDBPyConnection, *, name: str, content: str) -> None:
    conn.execute(
        "INSERT INTO detect_config VALUES (?, ?, now()) ON CONFLICT DO UPDATE SET"
        " content = EXCLUDED.content, updated_at = EXCLUDED.updated_at",
        [name, content],
    )


def load_config(conn: duckdb.DuckDBPyConnection, *, name: str) -> str | None:
    row = _first(
        conn.execute("SELECT content FROM detect_config WHERE name = ?", [name]).fetchall()
    )
    return str(row[0]) if row else None


# --- alerts ----------------------------------------------------------------------------------


class AlertRow(NamedTuple):
    """An alert as stored; times in epoch micros."""

    alert_id: str
    detector: str
    dedupe_key: str
    severity: str
    score: float
    title: str
    token_id: str | None
    identity: str | None
    targets: list[str]
    first_seen_us: int
    last_seen_us: int
    first_event_id: str
    occurrences: int  # the `count` column: findings merged into the alert
    event_ids: list[str]
    evidence: dict[str, Any]
    mitre: list[str]
    owasp_nhi: list[str]
    runbook: str
    status: str
    suppressed_by: str | None


_ALERT_COLUMNS: Final = (
    "alert_id, detector, dedupe_key, severity, score, title, token_id, identity, targets,"
    " epoch_us(first_seen), epoch_us(last_seen), first_event_id, count, event_ids,"
    " evidence, mitre, owasp_nhi, runbook, status, suppressed_by"
)


def _alert(row: tuple[Any, ...]) -> AlertRow:
    values = list(row)
    values[14] = json.loads(values[14]) if values[14] else {}
    return AlertRow(*values)


def token_alerts(
    conn: duckdb.DuckDBPyConnection, *, tokens: Sequence[str], detectors: Sequence[str]
) -> list[AlertRow]:
    """Every alert (any status) of these detectors on these tokens, but those superseded."""
    rows = conn.execute(
        f"SELECT {_ALERT_COLUMNS} FROM alerts"
        " WHERE list_contains($tokens, token_id) AND list_contains($detectors, detector)"
        f" AND alert_id NOT IN ({_SUPERSEDED}) ORDER BY alert_id",
        {"tokens": list(tokens), "detectors": list(detectors)},
    ).fetchall()
    return [_alert(r) for r in rows]


# The history note of an alert closed because re-deciding its token, in event time, gave
# another alert in its place (docs/DETECTORS.md, late events).
_SUPERSEDED_NOTE: Final = "superseded: late events re-decided this finding in event-time order"
_SUPERSEDED: Final = (
    f"SELECT alert_id FROM alert_history WHERE actor = 'tokentrail' AND note = '{_SUPERSEDED_NOTE}'"
)


def supersede_alerts(conn: duckdb.DuckDBPyConnection, *, alert_ids: Sequence[str]) -> None:
    """Close alerts an in-order read would not have raised, with a note in their history.

    Not deleted: a SIEM sink or an analyst may hold them already; the closing is a new version
    that sinks deliver, and the history says why.
    """
    if not alert_ids:
        return
    ids = {"ids": list(alert_ids)}
    conn.execute(
        "INSERT INTO alert_history SELECT alert_id, now(), NULL, 'tokentrail', status, 'closed',"
        " NULL, NULL, $note FROM alerts WHERE list_contains($ids, alert_id)",
        ids | {"note": _SUPERSEDED_NOTE},
    )
    conn.execute(
        "UPDATE alerts SET status = 'closed', updated_at = now()"
        " WHERE list_contains($ids, alert_id)",
        ids,
    )


def superseded_alerts(conn: duckdb.DuckDBPyConnection) -> set[str]:
    """Ids of the alerts closed by `supersede_alerts`."""
    return {str(r[0]) for r in conn.execute(_SUPERSEDED).fetchall()}


def open_alerts(
    conn: duckdb.DuckDBPyConnection, *, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], AlertRow]:
    """The newest alert not closed for each (detector, dedupe key), where there is one."""
    if not keys:
        return {}
    table = pa.table(
        {
            "detector": pa.array([k[0] for k in keys], pa.string()),
            "dedupe_key": pa.array([k[1] for k in keys], pa.string()),
        }
    )
    with registered(conn, tt_alert_keys=table):
        rows = conn.execute(
            f"SELECT {_ALERT_COLUMNS} FROM alerts a"
            " SEMI JOIN tt_alert_keys k USING (detector, dedupe_key)"
            " WHERE a.status <> 'closed'"
            " QUALIFY row_number() OVER (PARTITION BY detector, dedupe_key"
            "                            ORDER BY last_seen DESC, alert_id) = 1"
        ).fetchall()
    return {(r.detector, r.dedupe_key): r for r in map(_alert, rows)}


# `AlertRow` as an Arrow table (times in epoch micros, evidence as JSON text).
_ALERT_ROWS: Final = pa.schema(
    [
        *((name, pa.string()) for name in ("alert_id", "detector", "dedupe_key", "severity")),
        ("score", pa.float64()),
        *((name, pa.string()) for name in ("title", "token_id", "identity")),
        ("targets", pa.list_(pa.string())),
        ("first_seen_us", pa.int64()),
        ("last_seen_us", pa.int64()),
        ("first_event_id", pa.string()),
        ("occurrences", pa.int64()),
        ("event_ids", pa.list_(pa.string())),
        ("evidence", pa.string()),
        ("mitre", pa.list_(pa.string())),
        ("owasp_nhi", pa.list_(pa.string())),
        *((name, pa.string()) for name in ("runbook", "status", "suppressed_by")),
    ]
)


def upsert_alerts(conn: duckdb.DuckDBPyConnection, *, alerts: Sequence[AlertRow]) -> None:
    """Insert new alerts and update the ones that took more findings (status is kept).

    One statement for all of them: row by row (`executemany`) an alert storm cost ~7 ms per
    alert, and 681 alerts in one batch held the consumer at ~300 events/s in `serve`.
    """
    if not alerts:
        return
    # One row per alert (the last given): a statement may not update a row twice.
    columns = [list(c) for c in zip(*{a.alert_id: a for a in alerts}.values(), strict=True)]
    evidence = AlertRow._fields.index("evidence")
    columns[evidence] = [json.dumps(e, sort_keys=True) for e in columns[evidence]]
    table = pa.table(
        [
            pa.array(values, type=column.type)
            for values, column in zip(columns, _ALERT_ROWS, strict=True)
        ],
        schema=_ALERT_ROWS,
    )
    with registered(conn, tt_alert_rows=table):
        conn.execute(
            "INSERT INTO alerts SELECT alert_id, detector, dedupe_key, severity, score, title,"
            " token_id, identity, targets, make_timestamptz(first_seen_us),"
            " make_timestamptz(last_seen_us), first_event_id, occurrences, event_ids, evidence,"
            " mitre, owasp_nhi, runbook, status, suppressed_by, now(), now() FROM tt_alert_rows"
            " ON CONFLICT (alert_id) DO UPDATE SET severity = EXCLUDED.severity,"
            " score = EXCLUDED.score, title = EXCLUDED.title, targets = EXCLUDED.targets,"
            " last_seen = EXCLUDED.last_seen, count = EXCLUDED.count,"
            " event_ids = EXCLUDED.event_ids, evidence = EXCLUDED.evidence,"
            " updated_at = EXCLUDED.updated_at"
        )


def list_alerts(
    conn: duckdb.DuckDBPyConnection,
    *,
    severities: Sequence[str] | None = None,
    statuses: Sequence[str] | None = None,
    detector: str | None = None,
    limit: int | None = None,
) -> list[AlertRow]:
    """Alerts, most severe and newest first."""
    rows = conn.execute(
        f"SELECT {_ALERT_COLUMNS} FROM alerts"
        " WHERE ($sev IS NULL OR list_contains($sev, severity))"
        " AND ($status IS NULL OR list_contains($status, status))"
        " AND ($detector IS NULL OR detector = $detector)"
        " ORDER BY list_position(['critical', 'high', 'medium', 'low', 'info'], severity),"
        " first_seen, alert_id" + (" LIMIT $limit" if limit is not None else ""),
        {
            "sev": list(severities) if severities else None,
            "status": list(statuses) if statuses else None,
            "detector": detector,
            **({"limit": limit} if limit is not None else {}),
        },
    ).fetchall()
    return [_alert(r) for r in rows]


def latest_alerts(conn: duckdb.DuckDBPyConnection, *, limit: int) -> list[AlertRow]:
    """The alerts created last (wall clock), newest first: what a live view shows as they fire.

    Example: ``latest_alerts(cur, limit=5)``.
    """
    rows = conn.execute(
        f"SELECT {_ALERT_COLUMNS} FROM alerts ORDER BY created_at DESC, alert_id LIMIT $limit",
        {"limit": limit},
    ).fetchall()
    return [_alert(r) for r in rows]


def set_status(conn: duckdb.DuckDBPyConnection, *, alert_id: str, status: str) -> bool:
    row = _first(
        conn.execute(
            "UPDATE alerts SET status = ?, updated_at = now() WHERE alert_id = ?"
            " RETURNING alert_id",
            [status, alert_id],
        ).fetchall()
    )
    return row is not None


# --- evaluation ------------------------------------------------------------------------------


def event_times(conn: duckdb.DuckDBPyConnection, *, event_ids: Sequence[str]) -> dict[str, int]:
    """Event id -> event time (epoch micros) for the given ids that are stored."""
    if not event_ids:
        return {}
    ids = pa.table({"event_id": pa.array(list(event_ids), pa.string())})
    with registered(conn, tt_eval_ids=ids):
        rows = conn.execute(
            "SELECT e.event_id, epoch_us(e.ts) FROM events e SEMI JOIN tt_eval_ids USING (event_id)"
        ).fetchall()
    return {str(e): int(t) for e, t in rows}


class HourCount(NamedTuple):
    token_id: str
    identity: str
    hour_us: int
    calls: int
    event_ids: list[str]


def naive_token_hours(
    conn: duckdb.DuckDBPyConnection, *, warmup_end_us: int, percentile: float
) -> tuple[float, list[HourCount]]:
    """The access-count baseline: calls per token per hour; the threshold is the given
    percentile of the token-hours before `warmup_end`; returns it and the token-hours after
    warm-up above it."""
    row = _first(
        conn.execute(
            "SELECT quantile_cont(n, $p) FROM (SELECT count(*) AS n FROM events WHERE ts < $end"
            " GROUP BY token_id, time_bucket(INTERVAL 1 HOUR, ts))",
            {"p": percentile, "end": utc(warmup_end_us)},
        ).fetchall()
    )
    threshold = float(row[0]) if row and row[0] is not None else 0.0
    rows = conn.execute(
        "SELECT token_id, any_value(identity), epoch_us(time_bucket(INTERVAL 1 HOUR, ts)) AS h,"
        " count(*) AS n, list(event_id ORDER BY ts, event_id)"
        " FROM events WHERE ts >= $end GROUP BY token_id, h HAVING count(*) > $t ORDER BY h",
        {"end": utc(warmup_end_us), "t": threshold},
    ).fetchall()
    return threshold, [HourCount(*r) for r in rows]


def time_span(conn: duckdb.DuckDBPyConnection) -> tuple[int | None, int | None]:
    row = _first(conn.execute("SELECT epoch_us(min(ts)), epoch_us(max(ts)) FROM events").fetchall())
    assert row is not None
    return row[0], row[1]
