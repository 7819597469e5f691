"""`tokentrail contain`: the containment list of an alert, for a responder outside a notebook."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tokentrail.cli.app import DbOption, FormatOption, Output, app
from tokentrail.errors import StoreError
from tokentrail.investigate import containment, pick_alert
from tokentrail.store import Store


@app.command()
def contain(
    db: DbOption,
    alert_id: Annotated[
        str | None,
        typer.Argument(help="The alert to contain (default: the most severe open one)."),
    ] = None,
    fmt: FormatOption = Output.table,
) -> None:
    """What to revoke and rotate for an alert: the alerted token and its lineage (still valid
    ones to revoke), the identities holding them or acting with them in a chain, and the
    credentials they read or minted; each with its reason.

    Example: tokentrail contain ac88fe4399f9f2e0043a --db audit.duckdb --format json
    """
    if not db.exists():
        raise StoreError(f"no database at {db}; ingest events first (tokentrail ingest ...)")
    with Store.open(db) as store:
        chosen = alert_id if alert_id is not None else pick_alert(store.conn)
        result = containment(store.conn, alert_id=chosen)
    if fmt is Output.json:
        typer.echo(result.to_json())
        return
    out = Console(highlight=False, width=None if sys.stdout.isatty() else 1000)
    out.print(
        Text.assemble(
            ("containment for alert ", "bold"),
            (result.alert_id, "bold cyan"),
            f"  (validity as of {result.as_of:%Y-%m-%d %H:%M:%S}Z, the newest stored event)",
        )
    )
    tokens = Table("action", "token", "relation", "identity", "kind", "expires", "reason")
    for t in result.tokens:
        tokens.add_row(
            Text(t.action, style="bold red" if t.action == "revoke" else "dim"),
            Text(t.token_id),
            t.relation,
            Text(t.identity or "-"),
            Text(t.kind or "-"),
            f"{t.expires_at:%Y-%m-%d %H:%M}Z" if t.expires_at else "never",
            Text(t.reason),
        )
    out.print(tokens)
    identities = Table("rotate identity", "tokens", "reason")
    for i in result.identities:
        identities.add_row(Text(i.identity), Text(", ".join(i.tokens) or "-"), Text(i.reason))
    out.print(identities)
    if result.credentials:
        credentials = Table("exposed credential", "action", "reason")
        for c in result.credentials:
            credentials.add_row(Text(c.credential), c.action, Text(c.reason))
        out.print(credentials)
