"""Build the engine for a store: the catalog and rules given now, else those it last ran with.

The store remembers them (table `detect_config`), so `tokentrail detect --db PATH` re-runs with
exactly what `ingest --catalog ... --rules ...` used, and gives the same alerts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypeVar

import duckdb
from pydantic import ValidationError

from tokentrail.catalog import Catalog, load_catalog
from tokentrail.detect.engine import Detection
from tokentrail.detect.rules import Rules, parse_rules, read_text
from tokentrail.errors import ConfigError
from tokentrail.store import Store
from tokentrail.store import alerts as sql

M = TypeVar("M", Catalog, Rules)


def detection_for(
    store: Store, *, catalog_path: Path | None = None, rules_path: Path | None = None
) -> Detection:
    """The engine for `store`, remembering a newly given catalog or rules file in it."""
    conn = store.conn
    if catalog_path is not None:
        catalog = load_catalog(catalog_path)
        sql.save_config(conn, name="catalog", content=catalog.model_dump_json(by_alias=True))
    else:
        catalog = remembered_catalog(conn)
    if rules_path is not None:
        rules = parse_rules(read_text(rules_path, "rules file"), origin=str(rules_path))
        sql.save_config(conn, name="rules", content=rules.model_dump_json(by_alias=True))
    else:
        rules = _remembered(conn, "rules", Rules) or Rules()
    return Detection(store, catalog=catalog, rules=rules)


def remembered_catalog(conn: duckdb.DuckDBPyConnection) -> Catalog:
    """The catalog detection last ran with (`ingest --catalog`), else the empty one: the API,
    the graph commands and investigations score reach the way alerts were scored."""
    return _remembered(conn, "catalog", Catalog) or Catalog()


def _remembered(conn: duckdb.DuckDBPyConnection, name: str, model: type[M]) -> M | None:
    text = sql.load_config(conn, name=name)
    if text is None:
        return None
    try:
        return model.model_validate(json.loads(text))
    except (ValidationError, json.JSONDecodeError) as exc:
        raise ConfigError(f"the stored {name} is unreadable: {exc}") from None
