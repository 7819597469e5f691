"""The `tokentrail` command: one Typer app; each command group lives in its own module."""

from __future__ import annotations

import logging
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tokentrail.config import Settings, load_settings
from tokentrail.store import Store

app = typer.Typer(
    name="tokentrail",
    help="Call-chain audit pipeline and lateral-movement detector for non-human identities.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

# Progress and summaries go to stderr, so stdout stays clean for JSON and pipes.
err = Console(stderr=True, soft_wrap=True)

DbOption = Annotated[
    Path, typer.Option("--db", help="The tokentrail DuckDB file.", envvar="TOKENTRAIL_DB")
]


class Output(StrEnum):
    """How a command prints its result on stdout."""

    json = "json"
    table = "table"


FormatOption = Annotated[Output, typer.Option("--format", help="Output format.")]


class State:
    config: Path | None = None


def settings() -> Settings:
    """The settings for this invocation (file from --config, then TOKENTRAIL_* variables)."""
    return load_settings(State.config)


def open_store(db: Path, *, serving: bool = False) -> Store:
    """The store at `db` for a long-running command, its DuckDB memory bounded by the settings
    (`duckdb.serve_memory_limit` when `serving`)."""
    duck = settings().duckdb
    limit = duck.serve_memory_limit if serving else duck.memory_limit
    return Store.open(db, memory_limit=limit, temp_directory=duck.temp_directory)


@app.callback()
def _root(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="A TOML settings file.", envvar="TOKENTRAIL_CONFIG", dir_okay=False
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens.")] = False,
) -> None:
    """tokentrail: measure blast radius, not access count.

    Example: tokentrail ingest events.jsonl --db audit.duckdb
    """
    State.config = config
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # kafka-python logs every refused connection as an error; tokentrail reports what matters.
    logging.getLogger("kafka").setLevel(logging.INFO if verbose else logging.CRITICAL)
