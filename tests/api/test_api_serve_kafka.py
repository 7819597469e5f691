"""`serve --kafka`: the consumer writes on a background thread while the API reads."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from factories import call, encode
from fastapi.testclient import TestClient
from kafka import KafkaProducer

from tokentrail.api import api_settings, create_app
from tokentrail.api.auth import Role, create_key
from tokentrail.api.consumer import BackgroundConsumer
from tokentrail.broker import EmbeddedBroker
from tokentrail.config import load_settings
from tokentrail.store import Store

pytestmark = pytest.mark.kafka


def produce(broker: EmbeddedBroker, topic: str, events: list[dict[str, Any]]) -> None:
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    for event in events:
        producer.send(topic, key=event["identity"].encode(), value=encode(event))
    producer.flush(timeout=60)
    producer.close()


def test_consumer_and_api_share_one_store(
    broker: EmbeddedBroker, topic: Any, tmp_path: Path
) -> None:
    name = topic()
    events = [call(event_id=f"live-{i}", token_id=f"tok-{i % 3}") for i in range(40)]
    with Store.open(tmp_path / "live.duckdb") as store:
        key = create_key(store.conn, name="t", role=Role.viewer).key
        consumer = BackgroundConsumer(
            store, load_settings(None), bootstrap=broker.bootstrap, topic=name, group="api"
        )
        headers = {"Authorization": f"Bearer {key}"}
        with TestClient(create_app(store, api_settings(), consumer=consumer)) as client:
            produce(broker, name, events)
            deadline = time.monotonic() + 120
            count = 0
            while count < len(events) and time.monotonic() < deadline:
                time.sleep(0.2)
                page = client.get("/v1/events", params={"limit": 1000}, headers=headers)
                count = page.json()["count"]
            assert count == len(events)
            # Ranked from the scores the consumer keeps (ScoreKeeper), not rescored per request.
            ranked = client.get("/v1/tokens", headers=headers).json()["data"]
            assert sorted(t["token_id"] for t in ranked) == ["tok-0", "tok-1", "tok-2"]
            assert client.get("/readyz").json()["consumer"] == "running"
            caught_up = 'tokentrail_consumer_lag{partition="0"} 0'
            metrics = client.get("/metrics", headers=headers).text
            while caught_up not in metrics and time.monotonic() < deadline:
                time.sleep(0.2)  # lag is measured once the poll's batches are committed
                metrics = client.get("/metrics", headers=headers).text
            assert 'tokentrail_consumer_records{outcome="stored"} 40' in metrics
            assert caught_up in metrics
            assert re.search(r"^tokentrail_batch_seconds_count [1-9]", metrics, re.M)
        # Leaving the client stopped the consumer after its batch: offsets are stored.
        assert consumer.state == "stopped"
        assert store.stored_offsets(topic=name) == {0: len(events)}
