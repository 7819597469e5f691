"""The read endpoints and alert triage over a simulated day."""

from __future__ import annotations

import base64
import re
import xml.etree.ElementTree as ET
from typing import Any

import jsonschema
import msgspec
import pytest
from fastapi.testclient import TestClient

from tokentrail.investigate import containment

Auth = dict[str, dict[str, str]]


def get(client: TestClient, auth: Auth, path: str, **params: Any) -> Any:
    response = client.get(path, params=params, headers=auth["viewer"])
    assert response.status_code == 200, response.text
    return response.json()


def test_probes_and_docs_need_no_key(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["consumer"] == "none"
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/alerts", "/v1/tokens/{token_id}/graph", "/v1/query"} <= paths.keys()
    assert client.get("/docs").status_code == 200
    assert 'id="graph"' in client.get("/ui").text  # the web view: tests/api/test_api_webview.py


def test_openapi_documents_graph_results(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    schema = document["paths"]["/v1/chains/{trace_id}"]["get"]["responses"]["200"]
    assert schema["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Chain"}
    assert "Chain" in document["components"]["schemas"]


def test_alerts_list_filters_and_counts(client: TestClient, auth: Auth) -> None:
    every = get(client, auth, "/v1/alerts", limit=1000)
    assert every["count"] == len(every["data"]) > 0
    high = get(client, auth, "/v1/alerts", min_severity="high", limit=1000)
    assert 0 < high["count"] <= every["count"]
    assert {a["severity"] for a in high["data"]} <= {"high", "critical"}
    one = every["data"][0]
    page = get(client, auth, "/v1/alerts", detector=one["detector"], limit=1)
    assert page["count"] >= len(page["data"]) == 1
    mine = get(client, auth, "/v1/alerts", token_id=one["token_id"], limit=1000)
    assert {a["token_id"] for a in mine["data"]} == {one["token_id"]}


def test_alert_detail_has_evidence(client: TestClient, auth: Auth) -> None:
    first = get(client, auth, "/v1/alerts", limit=1)["data"][0]
    alert = get(client, auth, f"/v1/alerts/{first['alert_id']}")
    assert alert["evidence"] and alert["event_ids"]
    assert {e["event_id"] for e in alert["events"]} == set(alert["event_ids"])
    assert client.get("/v1/alerts/nope", headers=auth["viewer"]).status_code == 404


def test_alert_containment_matches_the_cli(client: TestClient, auth: Auth, api_store: Any) -> None:
    first = get(client, auth, "/v1/alerts", limit=1, min_severity="high")["data"][0]
    answer = get(client, auth, f"/v1/alerts/{first['alert_id']}/containment")
    with api_store.conn.cursor() as cur:
        expected = containment(cur, alert_id=first["alert_id"])
    assert answer == msgspec.json.decode(msgspec.json.encode(expected))
    assert first["token_id"] in {t["token_id"] for t in answer["tokens"]}
    missing = client.get("/v1/alerts/nope/containment", headers=auth["viewer"])
    assert missing.status_code == 404 and missing.json() == {"detail": "no alert 'nope'"}


def test_alert_triage_keeps_history(client: TestClient, auth: Auth) -> None:
    alert_id = get(client, auth, "/v1/alerts", limit=1, status="open")["data"][0]["alert_id"]
    url = f"/v1/alerts/{alert_id}"
    first = client.patch(
        url, json={"status": "acknowledged", "assignee": "alice", "note": "on it"},
        headers=auth["analyst"],
    )  # fmt: skip
    assert first.status_code == 200, first.text
    second = client.patch(url, json={"status": "closed", "note": "benign"},
                          headers=auth["analyst"]).json()  # fmt: skip
    assert (second["status"], second["assignee"]) == ("closed", "alice")
    changes = [(h["status_from"], h["status_to"], h["assignee_to"], h["note"])
               for h in second["history"]]  # fmt: skip
    assert changes == [
        ("open", "acknowledged", "alice", "on it"),
        ("acknowledged", "closed", "alice", "benign"),
    ]
    assert all(h["actor"] == "test-analyst" for h in second["history"])
    bad = client.patch(url, json={"status": "deleted"}, headers=auth["analyst"])
    assert bad.status_code == 422


def test_chain_of_a_trace(client: TestClient, auth: Auth) -> None:
    events = get(client, auth, "/v1/events", limit=200)["data"]
    trace = next(e["trace_id"] for e in events if e["trace_id"])
    chain = get(client, auth, f"/v1/chains/{trace}")
    assert chain["trace_id"] == trace and chain["spans"]
    assert client.get("/v1/chains/no-such-trace", headers=auth["viewer"]).status_code == 404


def test_tokens_ordered_by_blast_radius(client: TestClient, auth: Auth) -> None:
    ranked = get(client, auth, "/v1/tokens", limit=20)
    scores = [t["blast_radius"]["score"] for t in ranked["data"]]
    assert ranked["count"] == len(scores) == 20
    assert scores == sorted(scores, reverse=True)


@pytest.fixture(scope="module")
def top_token(client: TestClient, auth: Auth) -> str:
    token: str = get(client, auth, "/v1/tokens", limit=1)["data"][0]["token_id"]
    return token


def test_token_report_blast_radius_and_lineage(
    client: TestClient, auth: Auth, top_token: str
) -> None:
    report = get(client, auth, f"/v1/tokens/{top_token}")
    assert report["token"]["token_id"] == top_token
    radius = get(client, auth, f"/v1/tokens/{top_token}/blast-radius")
    assert radius == report["blast_radius"]
    lineage = get(client, auth, f"/v1/tokens/{top_token}/lineage")
    assert lineage["token_id"] == top_token
    for suffix in ("", "/blast-radius", "/lineage", "/graph"):
        missing = client.get(f"/v1/tokens/nope{suffix}", headers=auth["viewer"])
        assert missing.status_code == 404, suffix


def test_token_graph_formats(client: TestClient, auth: Auth, top_token: str) -> None:
    url = f"/v1/tokens/{top_token}/graph"
    graph = get(client, auth, url)
    cyto = get(client, auth, url, format="cytoscape")
    # The document describes the Cytoscape answer too (schemathesis found it did not).
    document = client.get("/openapi.json").json()
    content = document["paths"]["/v1/tokens/{token_id}/graph"]["get"]["responses"]["200"]["content"]
    documented = {**content["application/json"]["schema"], "components": document["components"]}
    jsonschema.validate(cyto, documented)
    jsonschema.validate(graph, documented)
    assert {n["data"]["id"] for n in cyto["elements"]["nodes"]} == set(graph["services"])
    assert len(cyto["elements"]["edges"]) == len(graph["edges"])
    graphml = client.get(url, params={"format": "graphml"}, headers=auth["viewer"])
    root = ET.fromstring(graphml.text)
    ns = "{http://graphml.graphdrawing.org/xmlns}"
    assert len(root.findall(f"{ns}graph/{ns}edge")) == len(graph["edges"])
    dot = client.get(url, params={"format": "dot"}, headers=auth["viewer"])
    assert dot.headers["content-type"].startswith("text/vnd.graphviz")
    assert dot.text.startswith("digraph") and dot.text.count(" -> ") == len(graph["edges"])


def test_events_cursor_pages_do_not_overlap(client: TestClient, auth: Auth) -> None:
    first = get(client, auth, "/v1/events", limit=50, outcome="success")
    second = get(client, auth, "/v1/events", limit=50, outcome="success",
                 cursor=first["next_cursor"])  # fmt: skip
    ids = [e["event_id"] for e in first["data"] + second["data"]]
    assert len(ids) == len(set(ids)) == 100
    stamps = [e["ts"] for e in first["data"] + second["data"]]
    assert stamps == sorted(stamps, reverse=True)
    assert all(e["outcome"] == "success" for e in first["data"] + second["data"])


def test_events_page_has_a_hard_limit(client: TestClient, auth: Auth) -> None:
    page = get(client, auth, "/v1/events", limit=100_000)
    assert page["count"] == 1000 and page["next_cursor"]
    bad = client.get("/v1/events", params={"cursor": "%%%"}, headers=auth["viewer"])
    assert bad.status_code == 400
    # A forged cursor whose timestamp no datetime can hold was a 500 (OverflowError).
    for us in ("9" * 30, "-" + "9" * 18):
        forged = base64.urlsafe_b64encode(f"{us}:x".encode()).decode()
        response = client.get("/v1/events", params={"cursor": forged}, headers=auth["viewer"])
        assert response.json() == {"detail": "bad cursor"}


def test_paths_exposure_and_identity(client: TestClient, auth: Auth) -> None:
    paths = get(client, auth, "/v1/paths", **{"from": "edge-gateway", "to": "payments-db"})
    assert paths["paths"] and paths["paths"][0]["services"][0] == "edge-gateway"
    exposure = get(client, auth, "/v1/services/payments-db/exposure")
    assert exposure["sensitivity"] == 10 and exposure["tokens"]
    identity = exposure["tokens"][0]["identity"]
    report = get(client, auth, f"/v1/identities/{identity}")
    assert report["identity"] == identity and report["tokens"]
    missing = client.get("/v1/identities/spiffe://nowhere/x", headers=auth["viewer"])
    assert missing.status_code == 404


def test_metrics(client: TestClient, auth: Auth) -> None:
    text = client.get("/metrics", headers=auth["viewer"]).text
    stored = re.search(r"^tokentrail_events_stored (\d+)$", text, re.MULTILINE)
    assert stored and int(stored.group(1)) > 10_000  # the simulated day
    assert "\ntokentrail_dead_letters 0\n" in text
    assert 'tokentrail_alerts{severity="' in text
    assert "tokentrail_api_request_duration_seconds_bucket{" in text
