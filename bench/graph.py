"""Graph queries: tokentrail (DuckDB, derived tables) against pandas + networkx on the same events.

The four questions of issue #5, asked of the same simulated estate by both sides:
  chain        rebuild one trace's chain (span tree, paths, token switches)
  blast        one token's blast radius (direct + chain + lineage reach, scored by the catalog)
  top100       the 100 tokens with the largest blast radius: the first ranking after an ingest
               that kept the scores (ScoreKeeper, as `ingest --catalog` does), later ones, one
               right after a batch lands, and the first with a new catalog (every token rescored)
  paths        how access flowed from service A to service B (shortest first, with evidence)

The events are ingested by the pipeline `tokentrail ingest FILE --catalog` runs, without the
detectors; `--ingest-sample N` also ingests the first N events without ScoreKeeper and the
`service_hops` merge, with the merge only, and with both, to price each.

Each side runs in its own process, so its peak RSS is its own. The baseline is what an analyst
would write: pandas loads the events (from Parquet, its fastest input), groups them into the same
edges, propagates tokens down the span trees with merges, and uses networkx for lineage, chains
and paths. Both sides compute the same score, and the run checks that their top-100 agree.

    .venv/bin/python bench/graph.py                      # ~1M simulated events
    .venv/bin/python bench/graph.py --events 10000000    # the issue's 10M target

Needs pandas and networkx in the venv (the baseline only): pip install pandas==3.1.1
networkx==3.6.1. Work files go to bench/out/graph-<events>/ and are reused by later runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from itertools import islice, pairwise
from pathlib import Path
from typing import Any

import duckdb

QUESTIONS = "questions.json"
EVENTS_PER_SCALE_DAY = 31_800  # what `tokentrail simulate` makes per day at scale 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="about this many events")
    parser.add_argument("--days", type=float, default=7.0, help="simulated days")
    parser.add_argument("--out", type=Path, help="work folder (default bench/out/graph-N)")
    parser.add_argument("--chains", type=int, default=200, help="chain lookups to time")
    parser.add_argument("--tokens", type=int, default=100, help="blast radius lookups to time")
    parser.add_argument("--pairs", type=int, default=20, help="path queries to time")
    parser.add_argument("--rank-repeat", type=int, default=5, help="top-100 runs to time")
    parser.add_argument(
        "--baseline-repeat", type=int, default=2, help="top-100 runs of the (slow) baseline"
    )
    parser.add_argument(
        "--skip-baseline",
        action="store_true",
        help="do not run pandas + networkx (an earlier run's answers to the same questions are"
        " reused when the folder has them)",
    )
    parser.add_argument(
        "--ingest-sample",
        type=int,
        default=300_000,
        help="ingest this many events three ways to price ScoreKeeper and service_hops (0: skip)",
    )
    parser.add_argument(
        "--side", choices=["tokentrail", "baseline", "ingest"], help=argparse.SUPPRESS
    )
    parser.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=INGEST_VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = args.out or Path(__file__).parent / "out" / f"graph-{args.events}"
    if args.side == "tokentrail":
        return _emit(tokentrail_side(work, args.rank_repeat))
    if args.side == "baseline":
        return _emit(baseline_side(work, args.baseline_repeat))
    if args.side == "ingest":
        return _emit(ingest_side(work, args.db, args.variant, args.limit))
    orchestrate(args, work)


# --- orchestration -------------------------------------------------------------------------------


def orchestrate(args: argparse.Namespace, work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    # A rerun reuses the folder's events and database: keep what building them measured.
    earlier = (
        json.loads((work / "results.json").read_text()) if (work / "results.json").exists() else {}
    )
    setup: dict[str, float] = earlier.get("setup", {})
    events_file = work / "events.jsonl"
    if not events_file.exists():
        from tokentrail.simulate import World, WorldSpec, write_world

        scale = args.events / (EVENTS_PER_SCALE_DAY * args.days)
        print(f"simulating {args.days:g} days at scale {scale:.2f} ...", file=sys.stderr)
        started = time.perf_counter()
        write_world(World(WorldSpec(days=args.days, scale=scale, seed=7)), work)
        setup["simulate_s"] = time.perf_counter() - started
    db = work / "graph.duckdb"
    if not db.exists():
        print("ingesting (the pipeline of `tokentrail ingest --catalog`) ...", file=sys.stderr)
        ingested = _ingest(work, db, "keeper", None)
        setup["ingest_s"] = ingested["seconds"]
        setup["ingest_peak_rss_mb"] = ingested["peak_rss_mb"]
        # ScoreKeeper's share: its refreshes run on the writer thread, between batches.
        setup["ingest_refreshes"] = ingested["refreshes"]
        setup["ingest_refresh_s"] = ingested["refresh_s"]
        setup["ingest_final_refresh_s"] = ingested["last_refresh_s"]
    # A database ingested before `traces` was kept in key order gets sorted by its next batch;
    # done here once, so that lookups measure what a live store has.
    from tokentrail.store import Store
    from tokentrail.store.graph import sort_traces

    with Store.open(db) as store:
        if sort_traces(store.conn):
            print("sorted traces by key (as the next batch would)", file=sys.stderr)
    if args.ingest_sample and not (work / INGEST_COST).exists():
        (work / INGEST_COST).write_text(json.dumps(ingest_cost(work, args.ingest_sample)))
    if (work / INGEST_COST).exists():
        setup |= json.loads((work / INGEST_COST).read_text())
    parquet = work / "events.parquet"
    with duckdb.connect(str(db), read_only=True) as conn:
        counts = {
            t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[index]
            for t in (
                "events",
                "tokens",
                "token_edges",
                "traces",
                "chain_reach",
                "token_links",
                "service_hops",
            )
        }
        if counts["events"] and not counts["traces"]:
            sys.exit("graph tables are empty: is merge_graph called in Store.write_batch?")
        if not parquet.exists():
            conn.execute(f"COPY (SELECT * EXCLUDE (ingested_at) FROM events) TO '{parquet}'")
        questions = pick_questions(conn, args.chains, args.tokens, args.pairs)
    (work / QUESTIONS).write_text(json.dumps(questions))
    print(f"{counts['events']:,} events; {json.dumps(counts)}", file=sys.stderr)
    asked = hashlib.sha256(json.dumps(questions).encode()).hexdigest()
    results: dict[str, Any] = {"counts": counts, "setup": setup, "questions": asked}
    results["tokentrail"] = _side(work, "tokentrail", args.rank_repeat)
    (work / "results.json").write_text(json.dumps(results, indent=2))
    if args.skip_baseline and earlier.get("questions") == asked and "baseline" in earlier:
        # The baseline does not change with tokentrail's code: an earlier run's answers to the
        # same questions on the same events still compare.
        print("reusing the baseline of an earlier run (same events, same questions)")
        results["baseline"] = earlier["baseline"]
        (work / "results.json").write_text(json.dumps(results, indent=2))
    if not args.skip_baseline:
        try:
            results["baseline"] = _side(work, "baseline", args.baseline_repeat)
        except SideFailedError as exc:
            print(f"the baseline did not finish: {exc}", file=sys.stderr)
        (work / "results.json").write_text(json.dumps(results, indent=2))
    report(results, counts, setup)


INGEST_COST = "ingest-cost.json"
# plain: no ScoreKeeper, no service_hops merge; hops: the graph merge as shipped, no ScoreKeeper;
# keeper: what `tokentrail ingest --catalog` runs (both).
INGEST_VARIANTS = ("plain", "hops", "keeper")


def _ingest(work: Path, db: Path, variant: str, limit: int | None) -> dict[str, float]:
    """Ingest the simulated events (the first `limit`) into a new `db`, in its own process."""
    command = [sys.executable, __file__, "--side", "ingest", "--out", str(work), "--db", str(db)]
    command += ["--variant", variant] + (["--limit", str(limit)] if limit else [])
    process = subprocess.Popen(command, stdout=subprocess.PIPE)
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SideFailedError(f"ingest ({variant}) exited with status {status}")
    result: dict[str, float] = json.loads(output)
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    return result


def ingest_cost(work: Path, events: int) -> dict[str, float]:
    """Ingest time of the first `events` events without ScoreKeeper and the service_hops merge,
    with the merge only, and with both: what each adds to ingest."""
    cost = {}
    for variant in INGEST_VARIANTS:
        db = work / f"ingest-{variant}.duckdb"
        print(f"pricing ingest: {events:,} events, {variant} ...", file=sys.stderr)
        try:
            measured = _ingest(work, db, variant, events)
            cost[f"sample_{variant}_s"] = measured["seconds"]
        finally:
            db.unlink(missing_ok=True)
            Path(f"{db}.wal").unlink(missing_ok=True)
    cost["sample_events"] = events
    cost["sample_refresh_s"] = measured["refresh_s"]  # the keeper variant runs last
    return cost


def ingest_side(work: Path, db: Path, variant: str, limit: int | None) -> dict[str, float]:
    """What `tokentrail ingest FILE --catalog` runs, minus the detectors (the CLI keeps scores
    only when detection is on; detection would double the time measured here)."""
    from itertools import islice

    from tokentrail.batch import Batch
    from tokentrail.catalog import load_catalog
    from tokentrail.config import Settings
    from tokentrail.graph.scores import ScoreKeeper
    from tokentrail.ingest.pipeline import BatchHook, Pipeline
    from tokentrail.store import Store
    from tokentrail.store import graph as store_graph

    if variant == "plain":
        # Price the service_hops merge: the bench process only, never the shipped code path.
        store_graph.merge_service_hops = lambda conn, *, new_events: None  # type: ignore[assignment]
    settings = Settings()
    refreshes: list[float] = []

    class TimedKeeper(ScoreKeeper):
        def refresh(self) -> bool:
            started = time.perf_counter()
            try:
                return super().refresh()
            finally:
                refreshes.append(time.perf_counter() - started)

    started = time.perf_counter()
    with Store.open(db) as store:
        keeper = TimedKeeper(store, load_catalog(work / "catalog.toml"))
        hooks: list[BatchHook] = [keeper.on_batch] if variant == "keeper" else []
        with (
            Pipeline(store, settings, hooks=hooks) as pipeline,
            (work / "events.jsonl").open("rb") as lines,
        ):
            feed = pipeline.feeder()
            batch = Batch("file", "bench")
            for position, raw in enumerate(islice(lines, limit), start=1):
                feed(batch, raw, None, position)
                if len(batch) >= settings.file_batch_size:
                    pipeline.submit(batch)
                    batch = Batch("file", "bench")
            if len(batch):
                pipeline.submit(batch)
        if variant == "keeper":
            keeper.refresh()
    return {
        "seconds": time.perf_counter() - started,
        "refreshes": len(refreshes),
        "refresh_s": sum(refreshes),
        "first_refresh_s": refreshes[0] if refreshes else 0.0,
        "last_refresh_s": refreshes[-1] if refreshes else 0.0,
    }


def pick_questions(
    conn: duckdb.DuckDBPyConnection, chains: int, tokens: int, pairs: int
) -> dict[str, Any]:
    """The same random traces, tokens and service pairs for both sides (fixed seed)."""
    rng = random.Random(11)
    traces = [r[0] for r in conn.execute("SELECT trace_id FROM traces ORDER BY 1").fetchall()]
    token_ids = [r[0] for r in conn.execute("SELECT token_id FROM tokens ORDER BY 1").fetchall()]
    # Path pairs from real multi-hop chains: a service holding a token, and a target reached
    # downstream of that token's hops, so a path of two or more steps exists.
    deep = conn.execute(
        "SELECT DISTINCT e.source, c.target FROM chain_reach c"
        " JOIN token_edges e ON e.token_id = c.token_id"
        " WHERE e.source <> c.target ORDER BY 1, 2"
    ).fetchall()
    return {
        "chains": rng.sample(traces, min(chains, len(traces))),
        "tokens": rng.sample(token_ids, min(tokens, len(token_ids))),
        "pairs": [list(p) for p in rng.sample(deep, min(pairs, len(deep)))],
    }


class SideFailedError(Exception):
    """A side's process failed (the baseline runs out of memory on large inputs)."""


def _side(work: Path, side: str, repeat: int) -> dict[str, Any]:
    """Run one side in a fresh process; its peak RSS comes from the kernel (wait4)."""
    print(f"running the {side} side ...", file=sys.stderr)
    command = [sys.executable, __file__, "--side", side, "--out", str(work)]
    command += ["--rank-repeat", str(repeat)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE)
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SideFailedError(
            f"the {side} side exited with status {status} (killed when out of memory?)"
        )
    result: dict[str, Any] = json.loads(output)
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    return result


def _emit(result: dict[str, Any]) -> None:
    json.dump(result, sys.stdout)


def _timed(calls: Iterable[Callable[[], Any]]) -> tuple[list[float], list[Any]]:
    times, answers = [], []
    for call in calls:
        started = time.perf_counter()
        answers.append(call())
        times.append((time.perf_counter() - started) * 1000)
    return times, answers


def _stats(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50_ms": statistics.median(ordered), "p95_ms": p95, "n": len(ordered)}


def report(results: dict[str, Any], counts: dict[str, int], setup: dict[str, float]) -> None:
    ours, theirs = results["tokentrail"], results.get("baseline")
    targets = {
        "chain": 50,
        "blast": 200,
        "top100_first": 2000,
        "top100": 2000,
        "top100_after_batch": 2000,
        "top100_new_catalog": 2000,
        "paths": 1000,
    }
    print(
        f"\n{counts['events']:,} events, {counts['tokens']:,} tokens, {counts['traces']:,} traces"
    )
    for name, value in setup.items():
        print(f"  setup {name}: {value:,.1f}")
    if "sample_plain_s" in setup:
        plain, hops, keeper = (setup[f"sample_{v}_s"] for v in INGEST_VARIANTS)
        print(
            f"  ingest of {setup['sample_events']:,.0f} events: {plain:,.1f} s plain,"
            f" {hops:,.1f} s with the service_hops merge, {keeper:,.1f} s with ScoreKeeper too"
        )
    # What the keeper's refreshes took inside an ingest: the differences between whole ingests
    # above move with the machine's load by more than the keeper costs.
    for label, total, spent in (
        ("sample ingest", "sample_keeper_s", "sample_refresh_s"),
        ("ingest", "ingest_s", "ingest_refresh_s"),
    ):
        if spent in setup:
            print(
                f"  ScoreKeeper refreshes in the {label}: {setup[spent]:,.1f} s of"
                f" {setup[total]:,.1f} s ({100 * setup[spent] / setup[total]:.0f}%)"
            )
    print(f"  tokentrail open: {ours['open_ms']:.0f} ms", end="")
    if theirs:
        print(f"; baseline load + prepare: {theirs['load_ms'] / 1000:,.1f} s", end="")
    print()
    header = f"{'query':18} {'target':>8} {'tt p50':>9} {'tt p95':>9}"
    if theirs:
        header += f" {'pd+nx p50':>10} {'pd+nx p95':>10} {'ratio p50':>10}"
    print(header)
    for query, target in targets.items():
        mine = ours[query]
        line = f"{query:18} {target:>6}ms {mine['p50_ms']:>7.1f}ms {mine['p95_ms']:>7.1f}ms"
        # pandas + networkx keeps nothing between runs: every ranking of it is a full one.
        compared = "top100" if query.startswith("top100") else query
        if theirs and compared in theirs:
            base = theirs[compared]
            ratio = base["p50_ms"] / max(mine["p50_ms"], 1e-9)
            line += f" {base['p50_ms']:>8.1f}ms {base['p95_ms']:>8.1f}ms {ratio:>9.1f}x"
        print(line)
    rss = f"peak RSS: tokentrail {ours['peak_rss_mb']:,.0f} MB"
    if theirs:
        rss += f", pandas+networkx {theirs['peak_rss_mb']:,.0f} MB"
        agree = _same_ranking(ours["top100_answer"], theirs["top100_answer"])
        paths_agree = ours["paths_answer"] == theirs["paths_answer"]
        blast_agree = ours["blast_answer"] == theirs["blast_answer"]
        print(f"answers agree: top100 {agree}, blast {blast_agree}, shortest hops {paths_agree}")
    print(rss)


def _same_ranking(ours: list[list[Any]], theirs: list[list[Any]]) -> bool:
    """Same scores in order, and the same tokens above the cut (ties at it may differ)."""
    if [s for _, s in ours] != [s for _, s in theirs]:
        return False
    cut = ours[-1][1] if ours else 0
    return {t for t, s in ours if s > cut} == {t for t, s in theirs if s > cut}


# --- tokentrail side -----------------------------------------------------------------------------


def tokentrail_side(work: Path, repeat: int) -> dict[str, Any]:
    from tokentrail.catalog import load_catalog
    from tokentrail.graph import blast_radius, find_paths, load_chain, rank_tokens
    from tokentrail.store import Store

    questions = json.loads((work / QUESTIONS).read_text())
    catalog = load_catalog(work / "catalog.toml")
    started = time.perf_counter()
    store = Store.open(work / "graph.duckdb")
    conn = store.conn
    open_ms = (time.perf_counter() - started) * 1000
    chain_times, _ = _timed((lambda t=t: load_chain(conn, trace_id=t)) for t in questions["chains"])
    blast_times, radii = _timed(
        (lambda t=t: blast_radius(conn, catalog=catalog, token_id=t)) for t in questions["tokens"]
    )
    # Ingest ran with this catalog (ScoreKeeper), so the analyst's first ranking reads stored
    # scores; later ones rescore only what changed since.
    first_times, ranks = _timed([lambda: rank_tokens(conn, catalog=catalog, top=100)])
    rank_times, _ = _timed(
        (lambda: rank_tokens(conn, catalog=catalog, top=100)) for _ in range(repeat)
    )
    path_times, found = _timed(
        (lambda a=a, b=b: find_paths(conn, source=a, target=b, limit=10))
        for a, b in questions["pairs"]
    )
    store.close()
    return {
        "open_ms": open_ms,
        "chain": _stats(chain_times),
        "blast": _stats(blast_times),
        "top100_first": _stats(first_times),
        "top100": _stats(rank_times),
        "top100_after_batch": _stats(_rank_after_batch(work, catalog, repeat)),
        "top100_new_catalog": _stats(_rank_new_catalog(work, catalog)),
        "paths": _stats(path_times),
        "top100_answer": [[r.token_id, round(r.blast_radius.score, 1)] for r in ranks[0]],
        "blast_answer": [round(r.score, 1) for r in radii],
        "paths_answer": [p.paths[0].hops if p.paths else None for p in found],
    }


def _rank_new_catalog(work: Path, catalog: Any) -> list[float]:
    """The first ranking after the catalog changed (in a copy of the database, so the work
    folder keeps the scores of its own catalog): every token is rescored."""
    import shutil

    from tokentrail.graph import rank_tokens
    from tokentrail.store import Store

    changed = catalog.model_copy(
        update={"score": catalog.score.model_copy(update={"chain": catalog.score.chain / 2})}
    )
    copy = work / "graph-catalog.duckdb"
    shutil.copyfile(work / "graph.duckdb", copy)
    try:
        with Store.open(copy) as store:
            times, _ = _timed([lambda: rank_tokens(store.conn, catalog=changed, top=100)])
    finally:
        copy.unlink(missing_ok=True)
        Path(str(copy) + ".wal").unlink(missing_ok=True)
    return times


def _rank_after_batch(work: Path, catalog: Any, repeat: int) -> list[float]:
    """The ranking right after a 1,000-event batch lands (in a copy of the database): the
    steady state of a live store, where only the tokens the batch touched are rescored."""
    import shutil

    from tokentrail.batch import Batch
    from tokentrail.config import Settings
    from tokentrail.graph import rank_tokens
    from tokentrail.ingest.pipeline import Pipeline
    from tokentrail.store import Store

    copy = work / "graph-refresh.duckdb"
    shutil.copyfile(work / "graph.duckdb", copy)
    with (work / "events.jsonl").open("rb") as source:
        source.seek(max(0, (work / "events.jsonl").stat().st_size - 20_000_000))
        tail = source.read().splitlines()[1:]
    times = []
    try:
        with Store.open(copy) as store:
            pipeline = Pipeline(store, Settings())
            for round_ in range(repeat):
                batch = Batch("file", "bench")
                for position, raw in enumerate(tail[-1000 * (round_ + 1) :][:1000], start=1):
                    event = json.loads(raw)
                    event["event_id"] += f"-again-{round_}"
                    pipeline.feed(batch, json.dumps(event).encode(), None, position)
                pipeline.write(batch)
                started = time.perf_counter()
                rank_tokens(store.conn, catalog=catalog, top=100)
                times.append((time.perf_counter() - started) * 1000)
    finally:
        copy.unlink(missing_ok=True)
        Path(str(copy) + ".wal").unlink(missing_ok=True)
    return times


# --- the baseline: pandas + networkx -------------------------------------------------------------


def baseline_side(work: Path, repeat: int) -> dict[str, Any]:
    import networkx as nx
    import pandas as pd

    from tokentrail.catalog import load_catalog, privilege_of

    questions = json.loads((work / QUESTIONS).read_text())
    catalog = load_catalog(work / "catalog.toml")
    started = time.perf_counter()
    columns = [
        "event_id", "ts", "token_id", "identity", "source", "target", "operation", "scope",
        "outcome", "trace_id", "span_id", "parent_span_id", "environment", "parent_token_id",
        "attributes",
    ]  # fmt: skip
    df = pd.read_parquet(work / "events.parquet", columns=columns)
    df["scope"] = df["scope"].fillna("")
    df["ok"] = df["outcome"] == "success"
    pairs = df[["operation", "scope"]].drop_duplicates()
    pairs["weight"] = [
        catalog.weight(privilege_of(o, s))
        for o, s in zip(pairs.operation, pairs.scope, strict=True)
    ]
    df = df.merge(pairs, on=["operation", "scope"], how="left")
    # The token graph: the same edges tokentrail keeps in token_edges.
    key = ["token_id", "identity", "source", "target", "operation", "scope"]
    edges = (
        df.groupby(key, sort=False)
        .agg(
            successes=("ok", "sum"),
            weight=("weight", "first"),
            envs=("environment", lambda s: sorted(set(s.dropna()))),
        )
        .reset_index()
    )
    edges = edges[edges.successes > 0]
    # Lineage: parent_token_id, and tokens issued by a call (attributes.issued_token).
    lineage = nx.DiGraph()
    links = df.loc[df.parent_token_id.notna(), ["parent_token_id", "token_id"]].drop_duplicates()
    lineage.add_edges_from(links.itertuples(index=False, name=None))
    issued = df[df.attributes.notna() & df.attributes.str.contains("issued_token", regex=False)]
    for parent, attributes in zip(issued.token_id, issued.attributes, strict=True):
        value = json.loads(attributes).get("issued_token")
        child = value.get("token_id") if isinstance(value, dict) else value
        if isinstance(child, str) and child != parent:
            lineage.add_edge(parent, child)
    first = df.sort_values(["ts", "event_id"]).drop_duplicates("token_id")
    owner = dict(zip(first.token_id, first.identity, strict=True))
    services = pd.DataFrame(
        [(s.name, s.environment, float(s.sensitivity)) for s in catalog.services],
        columns=["target", "svc_env", "sensitivity"],
    )
    declared = {i.name: i.environment for i in catalog.identities if i.environment}
    hops = df[df.trace_id.notna()].copy()
    hops["node"] = hops.span_id.fillna("\0" + hops.event_id)
    load_ms = (time.perf_counter() - started) * 1000

    def chain(trace: str) -> int:
        spans = df[df.trace_id == trace].sort_values(["ts", "event_id"])
        kept = spans.drop_duplicates("span_id")
        tree = nx.DiGraph()
        tree.add_nodes_from(kept.span_id.dropna())
        ids = set(tree.nodes)
        for span, parent in zip(kept.span_id, kept.parent_span_id, strict=True):
            if span is not None and parent in ids and parent != span:
                tree.add_edge(parent, span)
        roots = [n for n in tree.nodes if tree.in_degree(n) == 0]
        leaves = [n for n in tree.nodes if tree.out_degree(n) == 0]
        paths = [p for r in roots for leaf in leaves for p in nx.all_simple_paths(tree, r, leaf)]
        tokens = dict(zip(kept.span_id, kept.token_id, strict=True))
        switches = [(u, v) for u, v in tree.edges if tokens[u] != tokens[v]]
        return len(paths) + len(switches) + len(roots)

    def chain_reach(subset: pd.DataFrame) -> pd.DataFrame:
        """(ancestor token, downstream hop) pairs, by merging children onto parents per level."""
        nodes = subset[["trace_id", "node", "token_id"]].drop_duplicates()
        children = subset[["trace_id", "parent_span_id", "node"]].dropna()
        children = children.rename(columns={"parent_span_id": "up", "node": "down"})
        frontier = nodes.rename(columns={"node": "up"})
        found = []
        seen = set()
        for _ in range(64):
            step = frontier.merge(children, on=["trace_id", "up"])[["trace_id", "down", "token_id"]]
            step = step.rename(columns={"down": "up"}).drop_duplicates()
            fresh = [
                (t, n, k) not in seen
                for t, n, k in zip(step.trace_id, step.up, step.token_id, strict=True)
            ]
            step = step[fresh]
            if step.empty:
                break
            seen.update(zip(step.trace_id, step.up, step.token_id, strict=True))
            found.append(step)
            frontier = step
        if not found:
            return pd.DataFrame(columns=["token_id", "target", "weight", "envs"])
        pairs = pd.concat(found).rename(columns={"up": "node", "token_id": "ancestor"})
        down = pairs.merge(subset, on=["trace_id", "node"])
        down = down[(down.ancestor != down.token_id) & down.ok]
        reach = (
            down.groupby(["ancestor", "target", "operation", "scope"], sort=False)
            .agg(
                weight=("weight", "first"), envs=("environment", lambda s: sorted(set(s.dropna())))
            )
            .reset_index()
        )
        return reach.rename(columns={"ancestor": "token_id"})

    def score(subjects: list[str], chains: pd.DataFrame) -> dict[str, float]:
        """Blast radius per token: the same formula tokentrail documents (docs/GRAPH.md)."""
        ways = []
        for token in subjects:
            family = [token, *nx.descendants(lineage, token)] if token in lineage else [token]
            own = edges[edges.token_id == token].assign(via="direct", subject=token)
            derived = edges[edges.token_id.isin(family[1:])].assign(via="derived", subject=token)
            chained = chains[chains.token_id.isin(family)].assign(via="chain", subject=token)
            ways += [own, derived, chained]
        return _score(pd.concat(ways), owner, declared, services, catalog)

    def blast(token: str) -> float:
        family = [token, *nx.descendants(lineage, token)] if token in lineage else [token]
        traces = df.loc[df.token_id.isin(family) & df.trace_id.notna(), "trace_id"].unique()
        subset = hops[hops.trace_id.isin(traces)]
        return score([token], chain_reach(subset)).get(token, 0.0)

    def top100() -> list[list[Any]]:
        chains = chain_reach(hops)
        everyone = list(first.token_id)
        # Scoring 100k tokens one by one is what pandas makes easy; vectorise the direct part.
        totals = _score_all(edges, chains, lineage, owner, declared, services, catalog, everyone)
        ranked = sorted(totals.items(), key=lambda kv: (-round(kv[1], 2), kv[0]))[:100]
        return [[t, round(s, 1)] for t, s in ranked]

    graph = nx.DiGraph()
    held = df[["source", "token_id"]].drop_duplicates()
    graph.add_edges_from(((s, ("tok", t)) for s, t in held.itertuples(index=False, name=None)))
    used = edges[["token_id", "target"]].drop_duplicates()
    graph.add_edges_from(((("tok", t), g) for t, g in used.itertuples(index=False, name=None)))
    graph.add_edges_from(((("tok", a), ("tok", b)) for a, b in lineage.edges))

    def paths(source: str, target: str) -> int | None:
        """Up to 10 shortest paths in the service/token graph, each step proven by an event."""
        if source not in graph or target not in graph:
            return None
        found: list[int] = []
        if not nx.has_path(graph, source, target):
            return None
        for path in islice(nx.shortest_simple_paths(graph, source, target), 10):
            services = [n for n in path if not isinstance(n, tuple)]
            if len(services) - 1 > 6:
                break
            for u, v in pairwise(path):
                if isinstance(u, tuple) and not isinstance(v, tuple):
                    df[(df.token_id == u[1]) & (df.target == v) & df.ok].head(1)
            found.append(len(services) - 1)
        return min(found) if found else None

    chain_times, _ = _timed((lambda t=t: chain(t)) for t in questions["chains"])
    blast_times, radii = _timed((lambda t=t: blast(t)) for t in questions["tokens"])
    rank_times, ranks = _timed(top100 for _ in range(repeat))
    path_times, found = _timed((lambda a=a, b=b: paths(a, b)) for a, b in questions["pairs"])
    return {
        "load_ms": load_ms,
        "chain": _stats(chain_times),
        "blast": _stats(blast_times),
        "top100": _stats(rank_times),
        "paths": _stats(path_times),
        "top100_answer": ranks[0],
        "blast_answer": [round(r, 1) for r in radii],
        "paths_answer": found,
        "self_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _score(ways: Any, owner: dict[str, str], declared: dict[str, str], services: Any,
           catalog: Any) -> dict[str, float]:  # fmt: skip
    """Sum over targets of the best sensitivity x privilege x crossing x chain per subject."""
    if ways.empty:
        return {}
    ways = ways.merge(services, on="target", how="left")
    ways["sensitivity"] = ways["sensitivity"].fillna(float(catalog.score.default_sensitivity))
    direct = ways[ways.via == "direct"].explode("envs").dropna(subset=["envs"])
    observed = (
        direct.groupby(["subject", "envs"]).successes.sum().reset_index()
        .sort_values(["subject", "successes", "envs"]).drop_duplicates("subject", keep="last")
    )  # fmt: skip
    home = dict(zip(observed.subject, observed.envs, strict=True))
    for subject in ways.subject.unique():
        identity = owner.get(subject)
        if identity in declared:
            home[subject] = declared[identity]
    crossing_factor = catalog.score.environment_crossing
    values = []
    for subject, via, svc_env, envs, sensitivity, weight in zip(
        ways.subject, ways.via, ways.svc_env, ways.envs, ways.sensitivity, ways.weight, strict=True
    ):
        where = [svc_env] if isinstance(svc_env, str) else envs
        own_home = home.get(subject)
        crossing = own_home is not None and any(e != own_home for e in where)
        value = sensitivity * weight * (crossing_factor if crossing else 1.0)
        values.append(value * (catalog.score.chain if via == "chain" else 1.0))
    ways["contribution"] = values
    best = ways.groupby(["subject", "target"]).contribution.max().reset_index()
    return {s: round(v, 2) for s, v in best.groupby("subject").contribution.sum().items()}


def _score_all(edges: Any, chains: Any, lineage: Any, owner: dict[str, str],
               declared: dict[str, str], services: Any, catalog: Any,
               tokens: list[str]) -> dict[str, float]:  # fmt: skip
    import networkx as nx
    import pandas as pd

    family = pd.DataFrame(
        [(t, d) for t in lineage.nodes for d in nx.descendants(lineage, t)],
        columns=["subject", "token_id"],
    )
    selves = pd.DataFrame({"subject": tokens, "token_id": tokens})
    own = edges.merge(selves, on="token_id").assign(via="direct")
    derived = edges.merge(family, on="token_id").assign(via="derived")
    chained = chains.merge(pd.concat([selves, family]), on="token_id").assign(via="chain")
    return _score(pd.concat([own, derived, chained]), owner, declared, services, catalog)


if __name__ == "__main__":
    main()
