"""Commands that describe: the event schema and a database's row counts."""

from __future__ import annotations

import json
from importlib import resources

import typer

from tokentrail.cli.app import DbOption, FormatOption, Output, app, err
from tokentrail.store import Store


@app.command()
def schema() -> None:
    """Print the event contract as JSON Schema.

    Example: tokentrail schema > event.schema.json
    """
    typer.echo(resources.files("tokentrail").joinpath("schema/event.schema.json").read_text())


@app.command()
def stats(
    db: DbOption,
    fmt: FormatOption = Output.table,
) -> None:
    """Row counts of a database: events, dead letters, tokens, token edges, alerts.

    Example: tokentrail stats --db audit.duckdb --format json
    """
    with Store.open(db) as store:
        counts = store.stats()
        reasons = store.dead_letter_reasons()
    if fmt is Output.json:
        typer.echo(json.dumps(counts | {"dead_letter_reasons": dict(reasons)}))
        return
    for name, value in counts.items():
        typer.echo(f"{name:>14}  {value:,}")
    for reason, count in reasons[:10]:
        err.print(f"  dead letters: {count:,} x {reason}", highlight=False, markup=False)
