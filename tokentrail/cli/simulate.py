"""`tokentrail simulate`: traffic of a machine-identity estate with labelled attacks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from tokentrail.cli.app import app, err
from tokentrail.errors import TokentrailError
from tokentrail.simulate import (
    FAMILIES,
    Summary,
    World,
    WorldSpec,
    parse_attacks,
    stream_kafka,
    write_world,
)
from tokentrail.simulate.core import DEFAULT_START_MS, fmt_ts, parse_ts


@app.command()
def simulate(
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Directory for events.jsonl, labels.json and catalog.toml.",
            file_okay=False,
        ),
    ] = None,
    days: Annotated[float, typer.Option("--days", help="Length of the world in days.")] = 3.0,
    scale: Annotated[
        float, typer.Option("--scale", help="Multiplies instances, identities and call volume.")
    ] = 1.0,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same bytes.")] = 7,
    attacks: Annotated[
        str,
        typer.Option(
            "--attacks",
            help="`all`, `none`, or families separated by commas, each optionally"
            " `@HOURSh` after the start or `@RFC3339`: " + ", ".join(FAMILIES) + ".",
        ),
    ] = "all",
    start: Annotated[
        str,
        typer.Option("--start", help="World start, RFC 3339 (a Monday suits office hours)."),
    ] = fmt_ts(DEFAULT_START_MS),
    kafka: Annotated[
        str | None, typer.Option("--kafka", help="Produce to this broker (HOST:PORT).")
    ] = None,
    topic: Annotated[str | None, typer.Option("--topic", help="Topic to produce to.")] = None,
    rate: Annotated[
        float | None,
        typer.Option("--rate", help="Events per second to Kafka; as fast as possible if unset."),
    ] = None,
) -> None:
    """Simulate an estate of services, agents and CI jobs, with attacks of known ground truth.

    Writes events.jsonl (the event contract), labels.json (per attack: family, title,
    malicious event ids, tokens, identities, time window; benign-change windows) and
    catalog.toml (services, sensitivity, declared policy).

    With --kafka the same stream goes to a topic, keyed by identity, and --out (optional)
    receives labels.json and catalog.toml.

    Examples:
      tokentrail simulate --out sim --days 3 --scale 1 --seed 7
      tokentrail simulate --out sim --attacks token_replay@30h,expired_token
      tokentrail simulate --kafka 127.0.0.1:9092 --topic api-calls --rate 2000 --out sim
    """
    if out is None and kafka is None:
        raise TokentrailError("give --out DIR, --kafka HOST:PORT --topic T, or both")
    if kafka is not None and not topic:
        raise TokentrailError("--kafka needs --topic")
    if topic is not None and kafka is None:
        raise TokentrailError("--topic needs --kafka HOST:PORT")
    start_ms = parse_ts(start)
    spec = WorldSpec(
        seed=seed,
        days=days,
        scale=scale,
        start_ms=start_ms,
        attacks=parse_attacks(attacks, start_ms=start_ms),
    )
    world = World(spec)
    with _progress(world) as progress:
        if kafka is not None and topic:
            summary = stream_kafka(world, kafka, topic, rate=rate, out=out, progress=progress)
            where = f"{kafka}/{topic}" + (f" (labels in {out})" if out else "")
        else:
            assert out is not None
            summary = write_world(world, out, progress=progress)
            where = str(out)
    _summary(spec, summary, where)


@contextmanager
def _progress(world: World) -> Iterator[Callable[[int, int], None]]:
    """A bar of simulated time on a terminal; nothing when stderr is piped."""
    if not err.is_terminal:
        yield lambda events, ts: None
        return
    span = world.end_ms - world.start_ms
    columns = (
        TextColumn("[bold]simulate"),
        BarColumn(),
        TextColumn("{task.fields[at]}"),
        TextColumn("{task.fields[events]:>12,} events"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("simulate", total=span, at="", events=0)

        def advance(events: int, ts: int) -> None:
            progress.update(
                task,
                completed=min(span, ts - world.start_ms),
                at=fmt_ts(min(ts, world.end_ms))[:16] + "Z",
                events=events,
            )

        yield advance


def _summary(spec: WorldSpec, summary: Summary, where: str) -> None:
    days = f"{spec.days:g} day" + ("" if spec.days == 1 else "s")
    err.print(
        f"simulated {days} at scale {spec.scale:g} (seed {spec.seed}): {summary.events:,} events,"
        f" {summary.malicious:,} malicious in {summary.attacks} attacks, {summary.changes} benign"
        f" changes -> {where} ({summary.rate:,.0f} events/s)",
        highlight=False,
        markup=False,
    )
