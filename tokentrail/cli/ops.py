"""Operating the DuckDB file: `tokentrail prune` (retention) and `tokentrail backup`."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from tokentrail.cli.app import DbOption, app, err
from tokentrail.errors import StoreError, TokentrailError
from tokentrail.store import Store
from tokentrail.store import retention as sql

_UNITS = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1)}
_UNITS["w"] = 7 * _UNITS["d"]


def parse_age(text: str) -> timedelta:
    """`90d`, `12h`, `2w`, `30m` as a timedelta.

    >>> parse_age("2w")
    datetime.timedelta(days=14)
    """
    found = re.fullmatch(r"\s*(\d+)\s*([mhdw])\s*", text)
    if found is None or int(found[1]) == 0:
        raise TokentrailError(f"--older-than {text!r}: expected a positive age such as 90d or 12h")
    return int(found[1]) * _UNITS[found[2]]


def _parse_before(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise TokentrailError(
            f"--before {text!r}: expected RFC 3339, e.g. 2026-01-01T00:00:00Z"
        ) from None
    if moment.tzinfo is None:
        raise TokentrailError(f"--before {text!r}: give an offset, e.g. Z or +02:00")
    return moment.astimezone(UTC)


def _existing(db: Path) -> Store:
    if not db.exists():
        raise StoreError(f"no database at {db}")
    return Store.open(db)


@app.command()
def prune(
    db: DbOption,
    older_than: Annotated[
        str | None,
        typer.Option("--older-than", help="Age of the oldest rows to keep: 90d, 12h, 2w."),
    ] = None,
    before: Annotated[
        str | None, typer.Option("--before", help="Or a cutoff in RFC 3339 (event time).")
    ] = None,
    archive: Annotated[
        Path | None,
        typer.Option("--archive", help="Write what is deleted to Parquet files in this folder."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would go; change nothing.")
    ] = False,
    force: Annotated[
        bool,
        typer.Option("--force", help="Prune events that detection has not processed yet."),
    ] = False,
) -> None:
    """Delete events, trace index rows, dead letters and API audit records older than a cutoff.

    Token graphs, lineage, blast radius aggregates, baselines and alerts stay. Events older
    than the cutoff that arrive later are dead-lettered, so a replay cannot count them twice.

    Examples:
      tokentrail prune --db audit.duckdb --older-than 90d --archive /backups/tokentrail
      tokentrail prune --db audit.duckdb --before 2026-01-01T00:00:00Z --dry-run
    """
    if (older_than is None) == (before is None):
        raise TokentrailError("give one of --older-than or --before")
    cutoff = (
        _parse_before(before)
        if before is not None
        else datetime.now(UTC) - parse_age(older_than or "")
    )
    with _existing(db) as store:
        through = sql.detected_through(store.conn)
        if not force and not dry_run and (through is None or through < cutoff):
            seen = "never ran" if through is None else f"has processed events up to {through}"
            raise TokentrailError(
                f"detection {seen}; pruning to {cutoff:%Y-%m-%dT%H:%M:%SZ} would delete events"
                " it has not seen: run `tokentrail detect` first, or pass --force"
            )
        if archive is not None and not dry_run:
            archive.mkdir(parents=True, exist_ok=True)
        result = sql.prune(store.conn, cutoff=cutoff, archive=archive, dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    err.print(f"cutoff {result.cutoff:%Y-%m-%dT%H:%M:%SZ}:", highlight=False)
    for table, count in result.rows.items():
        typer.echo(f"{verb} {count:,} {table}")
    for path in result.archived:
        err.print(f"archived to {path}", highlight=False)


@app.command()
def backup(
    db: DbOption,
    out: Annotated[Path, typer.Argument(help="The new DuckDB file to write.", dir_okay=False)],
) -> None:
    """Copy the database into a new, compacted DuckDB file (a consistent snapshot).

    DuckDB lets one process open the file: stop `serve`/`ingest` first, or back up from a
    file-system snapshot (docs/OPERATIONS.md).

    Example: tokentrail backup --db audit.duckdb /backups/audit-2026-11-28.duckdb
    """
    if out.exists():
        raise TokentrailError(f"{out} exists; backups never overwrite")
    if not out.parent.is_dir():
        raise TokentrailError(f"cannot write {out}: folder {out.parent} does not exist")
    with _existing(db) as store:
        sql.backup(store.conn, out=out)
    err.print(f"backed up {db} to {out} ({out.stat().st_size / 1e6:,.1f} MB)", highlight=False)
