"""Shared by the sink tests: alerts in a real DuckDB file, the OCSF validators, a CEF parser."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema
from py_ocsf_models.events.findings.detection_finding import DetectionFinding
from typer.testing import CliRunner

from tokentrail.cli import app
from tokentrail.simulate import World, WorldSpec, write_world
from tokentrail.sinks.ocsf import OCSF_VERSION, example_alert
from tokentrail.store import Store
from tokentrail.store import alerts as sql
from tokentrail.store.alerts import AlertRow


@cache
def _schema_validator() -> jsonschema.Draft202012Validator:
    """The JSON Schema of Detection Finding generated from the official OCSF schema export
    that `ocsf-json-schema` packages (not a hand-written copy)."""
    with warnings.catch_warnings():
        # ocsf-json-schema 1.2.0 reads its packaged files with importlib's deprecated open_text.
        warnings.simplefilter("ignore", DeprecationWarning)
        schema = OcsfJsonSchemaEmbedded(get_ocsf_schema(version=OCSF_VERSION))
    return jsonschema.Draft202012Validator(schema.get_class_schema("detection_finding"))


def ocsf_errors(finding: dict[str, Any]) -> list[str]:
    """Everything wrong with a finding, by the OCSF schema and by py-ocsf-models.

    py-ocsf-models 0.10.0 models OCSF 1.5.0 only in part: it has no `attack_graph` nor
    `anomaly_analyses` (unknown attributes are ignored, not checked), and its observable
    `type_id` enum stops at 30, so it refuses 19 (User Credential ID) and 31 (User Object
    uid), both valid in 1.6.0. It validates the rest; the JSON Schema validates all.
    """
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in _schema_validator().iter_errors(finding)
    ]
    modelled = {k: v for k, v in finding.items() if k != "observables"}
    try:
        DetectionFinding.model_validate(modelled)
    except ValueError as exc:
        errors.append(f"py-ocsf-models: {exc}")
    return errors


def parse_cef(line: str) -> tuple[list[str], dict[str, str]]:
    """A CEF line back into its 7 header fields and its extension (unescaped)."""
    assert line.startswith("CEF:0|")
    header: list[str] = []
    field, i = "", 0
    while len(header) < 7:
        c = line[i]
        if c == "\\" and line[i + 1] in "\\|":
            field += line[i + 1]
            i += 2
            continue
        if c == "|":
            header.append(field)
            field = ""
        else:
            field += c
        i += 1
    ext = line[i:]
    # A key starts after a space and runs to the next unescaped '='.
    starts = [m.start(1) for m in re.finditer(r"(?:^| )([A-Za-z0-9_]+)=", ext)]
    starts = [s for s in starts if not _escaped(ext, ext.index("=", s))]
    values: dict[str, str] = {}
    for n, s in enumerate(starts):
        end = starts[n + 1] - 1 if n + 1 < len(starts) else len(ext)
        key, raw = ext[s:end].split("=", 1)
        values[key] = _unescape(raw)
    return header, values


def _escaped(text: str, at: int) -> bool:
    slashes = 0
    while at - slashes - 1 >= 0 and text[at - slashes - 1] == "\\":
        slashes += 1
    return slashes % 2 == 1


def _unescape(raw: str) -> str:
    out, i = "", 0
    while i < len(raw):
        if raw[i] == "\\" and i + 1 < len(raw):
            out += {"n": "\n", "r": "\r"}.get(raw[i + 1], raw[i + 1])
            i += 2
        else:
            out += raw[i]
            i += 1
    return out


@pytest.fixture(scope="session")
def simulated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DuckDB file with the alerts of a small simulated world (every detector fires)."""
    path = tmp_path_factory.mktemp("sinks-sim")
    write_world(World(WorldSpec(seed=11, days=3, scale=0.2)), path)
    db = path / "a.duckdb"
    done = CliRunner().invoke(
        app,
        ["ingest", str(path / "events.jsonl"), "--db", str(db), "--catalog",
         str(path / "catalog.toml")],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    return db


@pytest.fixture(scope="session")
def simulated_alerts(simulated_db: Path) -> list[AlertRow]:
    with Store.open(simulated_db) as store:
        return sql.list_alerts(store.conn)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "sinks.duckdb") as opened:
        yield opened


AddAlerts = Callable[..., list[AlertRow]]


@pytest.fixture
def add_alerts(store: Store) -> AddAlerts:
    """`add_alerts(n, **overrides)`: upsert n example alerts al-0 … al-(n-1) (one transaction
    each, so each gets its own version)."""

    def add(n: int, start: int = 0, **overrides: Any) -> list[AlertRow]:
        rows = [
            example_alert(alert_id=f"al-{i}", dedupe_key=f"k{i}", **overrides)
            for i in range(start, start + n)
        ]
        for row in rows:
            sql.upsert_alerts(store.conn, alerts=[row])
        return rows

    return add
