"""The Kafka sink against the embedded broker: a topic of OCSF findings keyed by alert id."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from conftest import AddAlerts, ocsf_errors
from kafka import KafkaConsumer

from tokentrail.broker import EmbeddedBroker
from tokentrail.config import SinksSettings
from tokentrail.sinks.delivery import Deliverer
from tokentrail.sinks.ocsf import OCSF_VERSION
from tokentrail.store import Store

pytestmark = pytest.mark.kafka


def test_findings_land_on_the_topic_keyed_by_alert_id(
    store: Store, add_alerts: AddAlerts, broker: EmbeddedBroker, topic: Callable[..., str]
) -> None:
    name = topic(partitions=2)
    rows = add_alerts(4)
    output = {"type": "kafka", "name": "kafka", "bootstrap_servers": broker.bootstrap,
              "topic": name, "timeout_s": 20}  # fmt: skip
    deliverer = Deliverer.from_settings(SinksSettings.model_validate({"outputs": [output]}))
    try:
        report = deliverer.run_once(store.conn)[0]
    finally:
        deliverer.close()
    assert (report.delivered, report.failed) == (4, False), report.error
    consumer = KafkaConsumer(
        name,
        bootstrap_servers=broker.bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
        enable_auto_commit=False,
    )
    try:
        records = []
        for record in consumer:
            records.append(record)
            if len(records) == len(rows):
                break
    finally:
        consumer.close()
    assert sorted(r.key.decode() for r in records) == [r.alert_id for r in rows]
    for record in records:
        finding = json.loads(record.value)
        assert finding["finding_info"]["uid"] == record.key.decode()
        assert ocsf_errors(finding) == []
        assert dict(record.headers)["ocsf.version"] == OCSF_VERSION.encode()


def test_an_unreachable_broker_fails_the_batch(store: Store, add_alerts: AddAlerts) -> None:
    from tokentrail.broker import free_port

    add_alerts(1)
    output = {"type": "kafka", "name": "kafka", "timeout_s": 1,
              "bootstrap_servers": f"127.0.0.1:{free_port()}"}  # fmt: skip
    deliverer = Deliverer.from_settings(SinksSettings.model_validate({"outputs": [output]}))
    try:
        report = deliverer.run_once(store.conn)[0]
    finally:
        deliverer.close()
    assert (report.failed, report.backlog) == (True, 1)
