"""Graph commands: chains, tokens ranked by blast radius, one token or identity, paths, exposure."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Final

import msgspec
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from tokentrail.catalog import Catalog, load_catalog
from tokentrail.cli.app import DbOption, FormatOption, Output, app
from tokentrail.detect.setup import remembered_catalog
from tokentrail.errors import StoreError, TokentrailError
from tokentrail.graph import (
    find_paths,
    identity_report,
    load_chain,
    rank_tokens,
    service_exposure,
    token_report,
)
from tokentrail.graph.blast import BlastRadius
from tokentrail.graph.chains import Chain, Span, TokenSwitch
from tokentrail.store import Store


def _console() -> Console:
    """Stdout for humans: on a terminal its width; piped, wide enough never to cut a line."""
    return Console(highlight=False, width=None if sys.stdout.isatty() else 1000)


out = _console()

CatalogOption = Annotated[
    Path | None,
    typer.Option(
        "--catalog",
        help="Service catalog (TOML): sensitivity per service, privilege weights, scopes.",
        envvar="TOKENTRAIL_CATALOG",
        dir_okay=False,
    ),
]


class ChainFormat(StrEnum):
    json = "json"
    tree = "tree"


@contextmanager
def _store(db: Path) -> Iterator[Store]:
    """An existing database (a query must not create an empty one by mistake)."""
    if not db.exists():
        raise StoreError(f"no database at {db}; ingest events first (tokentrail ingest ...)")
    with Store.open(db) as store:
        yield store


def _catalog(path: Path | None, store: Store) -> Catalog:
    """The catalog given, else the one the database was ingested with (as the API uses)."""
    return load_catalog(path) if path is not None else remembered_catalog(store.conn)


def _time(value: str | None, option: str) -> datetime | None:
    """RFC 3339 (naive means UTC), a date (midnight UTC) or epoch milliseconds."""
    if value is None:
        return None
    text = value.strip()
    try:
        if text.isdigit():
            return datetime.fromtimestamp(int(text) / 1000, UTC)
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise TokentrailError(
            f"{option} {value!r}: expected RFC 3339 (2026-03-02T09:00:00Z), a date or epoch ms"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _json(value: object) -> None:
    typer.echo(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())


@app.command()
def chain(
    trace_id: Annotated[str, typer.Argument(help="The trace to rebuild.")],
    db: DbOption,
    fmt: Annotated[ChainFormat, typer.Option("--format", help="Output format.")] = (
        ChainFormat.tree
    ),
) -> None:
    """The call chain of a trace: hops, service paths, token switches, orphans, duplicates.

    Example: tokentrail chain 4bf92f3577b34da6a3ce929d0e0e4736 --db audit.duckdb --format tree
    """
    with _store(db) as store:
        result = load_chain(store.conn, trace_id=trace_id)
    if not result.spans:
        raise TokentrailError(f"no trace {trace_id!r} in {db}")
    if fmt is ChainFormat.json:
        typer.echo(result.to_json())
        return
    out.print(_chain_tree(result))


def _chain_tree(result: Chain) -> Tree:
    summary = Text.assemble(
        ("trace ", "bold"),
        (result.trace_id, "bold cyan"),
        f"  {len(result.spans)} hops, {len(result.tokens)} tokens,"
        f" {len(result.token_switches)} token switches",
    )
    for label, items in (
        ("orphans", result.orphans),
        ("duplicates", result.duplicates),
        ("cycles", result.cycles),
    ):
        if items:
            summary.append(f", {len(items)} {label}", style="yellow")
    tree = Tree(summary)
    switches = {(s.span_id, s.parent_span_id): s for s in result.token_switches}
    parents: list[tuple[int, Tree]] = []
    gaps: dict[str, Tree] = {}
    for span in result.spans:
        while parents and parents[-1][0] >= span.depth:
            parents.pop()
        if span.orphan:
            missing = span.parent_span_id or ""
            if missing not in gaps:
                gaps[missing] = tree.add(
                    Text(f"⋯ gap: parent span {missing} never arrived", style="yellow")
                )
            parent = gaps[missing]
        else:
            parent = parents[-1][1] if parents else tree
        node = parent.add(_span_label(span, switches))
        parents.append((span.depth, node))
    return tree


def _span_label(span: Span, switches: dict[tuple[str | None, str], TokenSwitch]) -> Text:
    style = {"success": "green", "denied": "red", "error": "yellow"}.get(span.outcome, "")
    label = Text.assemble(
        (span.source, "bold"),
        " → ",
        (span.target, "bold"),
        f"  {span.operation}  ",
        (span.token_id, "cyan"),
        "  ",
        (span.outcome, style),
        f"  {span.ts.strftime('%Y-%m-%d %H:%M:%S.%f')[:-3]}Z",
    )
    switch = switches.get((span.span_id, span.parent_span_id or ""))
    if switch is not None:
        derived = ", derived" if switch.derived else ""
        label.append(f"  ⇄ token switch ({switch.relation}{derived})", style="magenta")
    if span.cycle:
        label.append("  ↻ cycle cut here", style="yellow")
    return label


@app.command()
def tokens(
    db: DbOption,
    top: Annotated[int | None, typer.Option("--top", min=1, help="Show the N highest.")] = None,
    identity: Annotated[
        str | None, typer.Option("--identity", help="Only the tokens this identity used.")
    ] = None,
    catalog: CatalogOption = None,
    fmt: FormatOption = Output.table,
) -> None:
    """Tokens ranked by blast radius (what they reached, weighted), highest first.

    Example: tokentrail tokens --db audit.duckdb --top 20 --catalog catalog.toml
    """
    # A terminal table of every token of a large store helps nobody: 50 unless asked.
    shown = top if top is not None or fmt is Output.json else _TABLE_TOP
    with _store(db) as store:
        ranked = rank_tokens(
            store.conn, catalog=_catalog(catalog, store), top=shown, identity=identity
        )
    if fmt is Output.json:
        _json(ranked)
        return
    table = Table("#", "token", "identity", "calls", "score", "direct", "transitive", "envs")
    for number, row in enumerate(ranked, start=1):
        radius = row.blast_radius
        table.add_row(
            str(number),
            Text(row.token_id),
            Text(row.identity),
            f"{row.calls:,}",
            f"{radius.score:,.2f}",
            str(radius.direct_targets),
            str(radius.transitive_targets),
            Text(",".join(radius.environments)),
        )
    out.print(table)
    if top is None and len(ranked) == _TABLE_TOP:
        out.print(f"(the {_TABLE_TOP} highest; --top N for more, --format json for all)")


_TABLE_TOP: Final = 50


def _breakdown(radius: BlastRadius, limit: int = 20) -> Table:
    table = Table("target", "adds", "sensitivity", "privilege", "via", "token", "envs", "calls")
    for item in radius.breakdown[:limit]:
        table.add_row(
            Text(item.target),
            f"{item.contribution:g}",
            f"{item.sensitivity:g}",
            f"{item.privilege} x{item.privilege_weight:g}",
            item.via,
            Text(item.via_token),
            Text(",".join(item.environments) + (" (crossing)" if item.crossing else "")),
            f"{item.successes:,}",
        )
    return table


def _radius_lines(radius: BlastRadius) -> None:
    out.print(
        Text.assemble(
            ("blast radius ", "bold"),
            (f"{radius.score:g}", "bold red"),
            f"  {radius.direct_targets} direct, {radius.transitive_targets} transitive targets;"
            f" environments {', '.join(radius.environments) or '-'}"
            f" (home {radius.home_environment or 'unknown'})",
        )
    )
    out.print(_breakdown(radius))
    if len(radius.breakdown) > 20:
        out.print(f"... and {len(radius.breakdown) - 20} more targets (use --format json)")
    potential = radius.potential
    if potential is not None:
        out.print(
            f"potential (granted scopes): score {potential.score:g},"
            f" unreached {', '.join(potential.unreached) or '-'};"
            f" unused scopes {', '.join(potential.unused_scopes) or '-'}"
            f" (least-privilege gap {potential.gap_score:g})",
            markup=False,
        )
    if radius.policy is not None and (
        radius.policy.targets_outside or radius.policy.scopes_outside
    ):
        out.print(
            f"outside declared policy: targets {', '.join(radius.policy.targets_outside) or '-'};"
            f" scopes {', '.join(radius.policy.scopes_outside) or '-'}",
            markup=False,
            style="yellow",
        )


@app.command()
def token(
    token_id: Annotated[str, typer.Argument(help="The token id (fingerprint) to explain.")],
    db: DbOption,
    catalog: CatalogOption = None,
    fmt: FormatOption = Output.table,
) -> None:
    """One token: registry entry, token graph, lineage and blast radius with its breakdown.

    Example: tokentrail token tok-invoicer-1 --db audit.duckdb --format json
    """
    with _store(db) as store:
        report = token_report(store.conn, token_id=token_id, catalog=_catalog(catalog, store))
    if fmt is Output.json:
        typer.echo(report.to_json())
        return
    info = report.token
    out.print(
        Text.assemble(
            ("token ", "bold"),
            (info.token_id, "bold cyan"),
            f"  identity {info.identity}  kind {info.kind or '-'}"
            f"  scopes {', '.join(info.scopes or []) or '-'}",
        )
    )
    out.print(
        f"{info.calls:,} calls ({info.denied:,} denied, {info.errors:,} errors)"
        f" from {info.first_seen:%Y-%m-%d %H:%M:%S} to {info.last_seen:%Y-%m-%d %H:%M:%S} UTC",
        markup=False,
    )
    lineage = report.lineage
    if len(lineage.tokens) > 1:
        out.print(
            f"lineage: roots {', '.join(lineage.roots)}; ancestors"
            f" {' <- '.join(lineage.ancestors) or '-'}; {len(lineage.descendants)} derived;"
            f" family reach {len(lineage.reach.targets)} targets (score {lineage.reach.score:g})",
            markup=False,
        )
    _radius_lines(report.blast_radius)


@app.command()
def identity(
    name: Annotated[str, typer.Argument(help="The workload identity (SPIFFE id, account ...).")],
    db: DbOption,
    catalog: CatalogOption = None,
    fmt: FormatOption = Output.table,
) -> None:
    """One identity over all its tokens: combined graph and blast radius.

    Example: tokentrail identity spiffe://prod/ns/billing/sa/invoicer --db audit.duckdb
    """
    with _store(db) as store:
        report = identity_report(store.conn, identity=name, catalog=_catalog(catalog, store))
    if fmt is Output.json:
        typer.echo(report.to_json())
        return
    out.print(
        Text.assemble(("identity ", "bold"), (name, "bold cyan"), f"  {len(report.tokens)} tokens")
    )
    _radius_lines(report.blast_radius)


@app.command()
def paths(
    source: Annotated[str, typer.Option("--from", help="Service access flowed from.")],
    target: Annotated[str, typer.Option("--to", help="Service access flowed to.")],
    db: DbOption,
    since: Annotated[
        str | None, typer.Option("--since", help="From this time (RFC 3339, date, epoch ms).")
    ] = None,
    until: Annotated[str | None, typer.Option("--until", help="Up to this time.")] = None,
    max_hops: Annotated[int, typer.Option("--max-hops", min=1, max=12)] = 6,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Paths to show.")] = 10,
    fmt: FormatOption = Output.table,
) -> None:
    """How access flowed from service A to service B: shortest first, each step proven.

    Example: tokentrail paths --from ci-runner --to payments-db --db audit.duckdb --since 2026-03-01
    """
    start, end = _time(since, "--since"), _time(until, "--until")
    with _store(db) as store:
        result = find_paths(
            store.conn,
            source=source,
            target=target,
            since=start,
            until=end,
            max_hops=max_hops,
            limit=limit,
        )
    if fmt is Output.json:
        typer.echo(result.to_json())
        return
    if not result.paths:
        out.print(f"no path from {source} to {target} within {max_hops} hops", markup=False)
        return
    for number, path in enumerate(result.paths, start=1):
        order = "in time order" if path.time_ordered else "not in time order"
        out.print(
            Text.assemble(
                (f"{number}. ", "bold"),
                (" → ".join(path.services), "bold"),
                f"  ({path.hops} hops, {order})",
            )
        )
        for step in path.steps:
            via = (
                step.token_id if step.kind == "call" else f"{step.token_id} ⇒ {step.call_token_id}"
            )
            out.print(
                Text(
                    f"   {step.source} → {step.target}  [{step.kind}] {via}"
                    f"  {step.proof.operation}  {step.proof.ts:%Y-%m-%d %H:%M:%S}Z"
                    f"  event {step.proof.event_id}"
                )
            )


@app.command()
def exposure(
    service: Annotated[str, typer.Argument(help="The service to look at.")],
    db: DbOption,
    catalog: CatalogOption = None,
    fmt: FormatOption = Output.table,
) -> None:
    """Every token and identity that reached a service, directly or transitively.

    Example: tokentrail exposure payments-db --db audit.duckdb
    """
    with _store(db) as store:
        result = service_exposure(store.conn, service=service, catalog=_catalog(catalog, store))
    if fmt is Output.json:
        typer.echo(result.to_json())
        return
    out.print(
        Text.assemble(
            ("exposure of ", "bold"),
            (service, "bold cyan"),
            f"  sensitivity {result.sensitivity}; {len(result.identities)} identities,"
            f" {sum(t.reached for t in result.tokens)} tokens reached it",
        )
    )
    table = Table("token", "identity", "via", "privilege", "calls", "denied", "last seen")
    for item in result.tokens:
        table.add_row(
            Text(item.token_id),
            Text(item.identity or "-"),
            item.via if item.reached else "tried",
            item.privilege,
            f"{item.successes:,}",
            f"{item.denied:,}",
            f"{item.last_seen:%Y-%m-%d %H:%M:%S}",
        )
    out.print(table)
