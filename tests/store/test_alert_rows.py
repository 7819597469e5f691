"""Alerts are written in one statement per pass (`upsert_alerts`), however many there are."""

from __future__ import annotations

from pathlib import Path

from tokentrail.sinks.ocsf import example_alert
from tokentrail.store import Store
from tokentrail.store import alerts as sql


def test_a_storm_of_alerts_is_stored_whole_and_updates_keep_the_status(tmp_path: Path) -> None:
    with Store.open(tmp_path / "a.duckdb") as store:
        storm = [example_alert(alert_id=f"al-{i}", dedupe_key=f"k{i}") for i in range(700)]
        sql.upsert_alerts(store.conn, alerts=storm)
        assert sql.set_status(store.conn, alert_id="al-3", status="acknowledged")

        grown = storm[3]._replace(occurrences=9, score=0.99, evidence={"path": ["a", "b"]})
        sql.upsert_alerts(store.conn, alerts=[storm[3]._replace(occurrences=5), grown])

        stored = {a.alert_id: a for a in sql.list_alerts(store.conn)}
        assert len(stored) == 700
        # The last row given for an id wins; the analyst's status stays.
        assert stored["al-3"].occurrences == 9 and stored["al-3"].score == 0.99
        assert stored["al-3"].evidence == {"path": ["a", "b"]}
        assert stored["al-3"].status == "acknowledged"
        assert stored["al-4"] == storm[4]
