"""The demo's world: where attacks go, where a reused database's world starts, how long it is."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from tokentrail.demo import DemoPlan, continue_after, demo_attacks, world_days, world_seed
from tokentrail.simulate import FAMILIES
from tokentrail.simulate.core import DAY, DEFAULT_START_MS, HOUR


def test_every_family_attacks_early_on_day_one_and_again_after_the_warm_up() -> None:
    plans = demo_attacks(DEFAULT_START_MS, DEFAULT_START_MS + 7 * DAY)

    early = [p for p in plans if p.at_ms is not None and p.at_ms < DEFAULT_START_MS + 12 * HOUR]
    later = [p for p in plans if p.at_ms is not None and p.at_ms >= DEFAULT_START_MS + DAY]
    assert sorted(p.family for p in early) == sorted(FAMILIES)
    assert sorted(p.family for p in later) == sorted(FAMILIES)
    assert len(plans) == 2 * len(FAMILIES)


def test_attacks_past_the_end_of_a_short_world_are_left_out() -> None:
    plans = demo_attacks(DEFAULT_START_MS, DEFAULT_START_MS + DAY)

    assert sorted(p.family for p in plans) == sorted(FAMILIES)


def test_a_reused_database_continues_on_the_monday_after_its_last_event() -> None:
    last = DEFAULT_START_MS + 6 * DAY + 5 * HOUR  # a Sunday morning
    start = continue_after(last * 1000)

    assert start > last
    assert datetime.fromtimestamp(start / 1000, UTC).strftime("%a %H:%M") == "Mon 00:00"
    assert start - last < 7 * DAY
    assert continue_after(None) == DEFAULT_START_MS


def test_a_continued_world_gets_other_tokens_from_the_same_seed() -> None:
    assert world_seed(7, DEFAULT_START_MS) == 7
    assert world_seed(7, DEFAULT_START_MS + 7 * DAY) != 7
    assert world_seed(7, DEFAULT_START_MS + 7 * DAY) == world_seed(7, DEFAULT_START_MS + 7 * DAY)


def test_a_bounded_run_gets_a_world_that_outlasts_it() -> None:
    plan = DemoPlan(db=Path("d.duckdb"), rate=2000, duration_s=600)

    assert world_days(plan) * 25_000 >= 2000 * 600
    assert world_days(DemoPlan(db=Path("d.duckdb"))) == 7
    assert world_days(DemoPlan(db=Path("d.duckdb"), days=2)) == 2
