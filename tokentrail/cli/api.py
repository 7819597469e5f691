"""`tokentrail serve` (the query API, optionally with a Kafka consumer) and `tokentrail keys`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tokentrail.api.auth import Role, create_key
from tokentrail.cli.app import DbOption, app, err, open_store, settings
from tokentrail.cli.detect import CatalogOption, RulesOption, out
from tokentrail.errors import StoreError, TokentrailError
from tokentrail.store import Store
from tokentrail.store import api as sql

log = logging.getLogger(__name__)

keys_app = typer.Typer(name="keys", help="API keys of `tokentrail serve`.", no_args_is_help=True)
app.add_typer(keys_app)


def _existing(db: Path, *, serving: bool = False) -> Store:
    if not db.exists():
        raise StoreError(f"no database at {db}; ingest events first (tokentrail ingest ...)")
    return open_store(db, serving=serving)


@app.command()
def serve(
    db: DbOption,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8000,
    kafka: Annotated[
        str | None,
        typer.Option("--kafka", help="Also consume this broker (HOST:PORT) in the background."),
    ] = None,
    topic: Annotated[str | None, typer.Option("--topic", help="Topic to consume.")] = None,
    group: Annotated[str, typer.Option("--group", help="Consumer group id.")] = "tokentrail",
    no_detect: Annotated[
        bool, typer.Option("--no-detect", help="Consume without running detectors.")
    ] = False,
    catalog: CatalogOption = None,
    rules: RulesOption = None,
) -> None:
    """Serve the query API (OpenAPI docs at /docs); with --kafka, ingest and detect too.

    The API reads through cursors of the connection the consumer writes with: DuckDB has one
    writer process. With sinks in the settings, alerts are delivered to them in the background
    too (docs/SINKS.md). SIGTERM stops the consumer after the batch in hand, then delivery, then
    the server.

    Examples:
      tokentrail serve --db audit.duckdb
      tokentrail serve --db audit.duckdb --kafka 127.0.0.1:9092 --topic api-calls --group tt
    """
    import uvicorn

    from tokentrail.api import api_settings, create_app
    from tokentrail.api.consumer import BackgroundConsumer
    from tokentrail.catalog import load_catalog
    from tokentrail.sinks.delivery import Deliverer

    if kafka and not topic:
        raise TokentrailError("--kafka needs --topic")
    store = open_store(db, serving=True) if kafka else _existing(db, serving=True)
    with store:
        consumer = None
        if kafka and topic:
            consumer = BackgroundConsumer(
                store,
                settings(),
                bootstrap=kafka,
                topic=topic,
                group=group,
                detect=not no_detect,
                catalog_path=catalog,
                rules_path=rules,
            )
        sinks = settings().sinks
        api = create_app(
            store,
            api_settings(),
            catalog=load_catalog(catalog) if catalog is not None else None,
            consumer=consumer,
            deliverer=Deliverer.from_settings(sinks) if sinks.outputs else None,
        )
        with store.conn.cursor() as cur:
            if not sql.list_keys(cur):
                err.print("no API keys yet: create one with `tokentrail keys create`")
        err.print(f"serving {db} on http://{host}:{port} (docs at /docs)", highlight=False)
        uvicorn.run(api, host=host, port=port, log_level="warning", timeout_graceful_shutdown=30)


@keys_app.command("create")
def keys_create(
    db: DbOption,
    role: Annotated[Role, typer.Option("--role", help="viewer, analyst or admin.")],
    name: Annotated[str, typer.Option("--name", help="Who or what the key is for.")],
) -> None:
    """Create an API key; it is printed once, as the last line, and stored only as a hash.

    Example: tokentrail keys create --db audit.duckdb --role analyst --name soc-alice
    """
    with _existing(db) as store:
        made = create_key(store.conn, name=name, role=role)
    err.print(f"created {role.value} key {made.key_id} for {name!r}; store it now:")
    typer.echo(made.key)


@keys_app.command("list")
def keys_list(db: DbOption) -> None:
    """The API keys: id, name, role, created, revoked, last used (never the key itself).

    Example: tokentrail keys list --db audit.duckdb
    """
    with _existing(db) as store:
        rows = sql.list_keys(store.conn)
    table = Table("key id", "name", "role", "created", "revoked", "last used")
    for row in rows:
        table.add_row(
            row.key_id,
            row.name,
            row.role,
            f"{row.created_at:%Y-%m-%d %H:%M:%S}",
            f"{row.revoked_at:%Y-%m-%d %H:%M:%S}" if row.revoked_at else "-",
            f"{row.last_used_at:%Y-%m-%d %H:%M:%S}" if row.last_used_at else "-",
        )
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id (from `keys list`).")],
    db: DbOption,
) -> None:
    """Revoke an API key: requests with it get 401 from then on.

    Example: tokentrail keys revoke 3f9a1c2b7d4e --db audit.duckdb
    """
    with _existing(db) as store:
        if not sql.revoke_key(store.conn, key_id=key_id):
            raise TokentrailError(f"no key {key_id!r} in {db}")
    err.print(f"revoked key {key_id}")
