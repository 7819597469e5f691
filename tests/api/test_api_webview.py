"""The web view (/ui) in a real headless Chromium (Debian's `chromium`, driven by Playwright),
against a real uvicorn server on a loopback port over the simulated day of conftest.py: what it
draws for an alert, a token and a trace must match what the API answers; and the page and its
files come from the package under a strict Content-Security-Policy."""

from __future__ import annotations

import io
import re
import socket
import threading
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

from tokentrail.api import api_settings, create_app
from tokentrail.api.routes.ui import ASSETS, CSP
from tokentrail.store import Store

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
EVIDENCE_RGB = (0xC0, 0x26, 0xD3)  # COLOUR.evidence in ui.js
browser_only = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (make system-deps)"
)

Hop = tuple[str, str, str, str]  # token, source, target, operation


@pytest.fixture(scope="module")
def server(api_store: Store) -> Iterator[str]:
    """The API served by uvicorn on a free loopback port; its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(api_store, api_settings())
    running = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=running.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(600):  # bounded: 30 s
        if running.started or not thread.is_alive():
            break
        time.sleep(0.05)
    assert running.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    running.should_exit = True
    thread.join(timeout=30)
    sock.close()


@pytest.fixture(scope="module")
def api(server: str, keys: dict[str, str]) -> Iterator[httpx.Client]:
    """The same server, asked directly: what the page should show."""
    headers = {"Authorization": f"Bearer {keys['analyst']}"}
    with httpx.Client(base_url=server, headers=headers, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium (make system-deps)")
    with sync_playwright() as pw:
        launched = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh tab (its own sessionStorage) that fails the test on a script error or anything
    the Content-Security-Policy refused."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    tab = context.new_page()
    tab.set_default_timeout(30_000)
    problems: list[str] = []

    def console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text or "Content-Security-Policy" in message.text:
            problems.append(message.text)

    tab.on("console", console)
    tab.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    yield tab
    context.close()
    assert problems == []


def show(page: Page, server: str, key: str, kind: str, subject: str) -> None:
    """Type the key and the id as an analyst would, and wait for the graph."""
    page.goto(f"{server}/ui")
    page.fill("#key", key)
    page.select_option("#kind", kind)
    page.fill("#subject", subject)
    page.click("#show")
    settled(page)


def settled(page: Page) -> None:
    # A selector, not a predicate: the page's CSP refuses the eval a string predicate needs.
    page.wait_for_selector("body[data-state=ready], body[data-state=error]")
    assert page.get_attribute("body", "data-state") == "ready", page.text_content("#error")


def drawn(page: Page) -> dict[str, Any]:
    """Nodes and edges of the page's cytoscape instance (window.tt_cy), with their classes."""
    result: dict[str, Any] = page.evaluate(
        """() => ({
          nodes: tt_cy.nodes().map((n) => ({ id: n.id(), classes: n.classes() })),
          edges: tt_cy.edges().map((e) => ({
            token: e.data("token_id"), source: e.data("source"), target: e.data("target"),
            operation: e.data("operation"), colour: e.data("colour") ?? null,
            classes: e.classes() })),
        })"""
    )
    return result


def hop(edge: dict[str, Any]) -> Hop:
    return (edge["token"], edge["source"], edge["target"], edge["operation"])


def api_hops(graph: dict[str, Any]) -> list[Hop]:
    return [
        (d["token_id"], d["source"], d["target"], d["operation"])
        for d in (e["data"] for e in graph["elements"]["edges"])
    ]


def graph_of(api: httpx.Client, token: str) -> dict[str, Any]:
    response = api.get(f"/v1/tokens/{token}/graph", params={"format": "cytoscape"})
    assert response.status_code == 200, response.text
    graph: dict[str, Any] = response.json()
    return graph


def screenshot(page: Page, path: Path) -> Image.Image:
    """The graph element as the analyst sees it (kept beside the test's files for a look)."""
    png = page.locator("#graph").screenshot()
    path.write_bytes(png)
    return Image.open(io.BytesIO(png)).convert("RGB")


def near(pixel: object, colour: tuple[int, int, int]) -> bool:
    """An RGB pixel within a small distance of `colour` (antialiasing blends edges)."""
    assert isinstance(pixel, tuple)
    return all(abs(a - b) <= 24 for a, b in zip(pixel, colour, strict=True))


@browser_only
def test_alert_view_highlights_the_evidence_path(
    page: Page, server: str, api: httpx.Client, keys: dict[str, str], tmp_path: Path
) -> None:
    # The credential pivot: its evidence crosses three tokens (a workload's, a role assumed
    # with a stolen secret, an access key created with that role).
    found = api.get("/v1/alerts", params={"detector": "credential_pivot"}).json()["data"]
    assert found, "the simulated day should hold a credential pivot"
    alert = api.get(f"/v1/alerts/{found[0]['alert_id']}").json()
    steps = [(e["token_id"], e["source"], e["target"], e["operation"]) for e in alert["events"]]
    steps += [
        (s["token_id"], None, s["target"], s["operation"])
        for s in alert["evidence"].get("path", [])
        if "target" in s
    ]
    tokens = list(dict.fromkeys([alert["token_id"], *(s[0] for s in steps)]))
    graphs = [graph_of(api, t) for t in tokens]
    hops = [h for g in graphs for h in api_hops(g)]
    on_path = {
        h
        for h in hops
        if any(s[0] == h[0] and s[2:] == h[2:] and s[1] in (None, h[1]) for s in steps)
    }

    show(page, server, keys["viewer"], "alert", alert["alert_id"])
    assert page.locator("#graph canvas").count() >= 1
    view = drawn(page)
    assert sorted(hop(e) for e in view["edges"]) == sorted(hops)
    assert {n["id"] for n in view["nodes"]} == {
        n["data"]["id"] for g in graphs for n in g["elements"]["nodes"]
    }
    highlighted = {hop(e) for e in view["edges"] if "evidence" in e["classes"]}
    assert highlighted == on_path
    assert {(e["token_id"], e["source"], e["target"], e["operation"]) for e in alert["events"]} <= (
        highlighted
    )
    assert len({h[0] for h in highlighted}) == len(tokens) >= 3
    assert {n["id"] for n in view["nodes"] if "evidence" in n["classes"]} == {
        end for h in highlighted for end in h[1:3]
    }
    assert all("faded" in e["classes"] for e in view["edges"] if hop(e) not in on_path)
    assert "evidence path" in (page.text_content("#legend") or "")
    assert page.locator("#table tbody tr").count() == len(alert["events"])
    assert alert["title"] == page.text_content("#title")

    image = screenshot(page, tmp_path / "alert.png")
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50
    assert sum(n for n, pixel in colours if near(pixel, EVIDENCE_RGB)) > 500


@browser_only
def test_token_view_draws_the_blast_radius(
    page: Page, server: str, api: httpx.Client, keys: dict[str, str], tmp_path: Path
) -> None:
    ranked = api.get("/v1/tokens", params={"limit": 1000}).json()["data"]
    token = next(t["token_id"] for t in ranked if t["blast_radius"]["transitive_targets"])
    graph = graph_of(api, token)
    blast = api.get(f"/v1/tokens/{token}/blast-radius").json()
    reached_via: dict[str, set[str]] = {}
    for c in blast["breakdown"]:
        if not c["direct"]:
            reached_via.setdefault(c["via_token"], set()).add(c["target"])
    transitive = [
        h
        for via, targets in reached_via.items()
        for h in api_hops(graph_of(api, via))
        if h[2] in targets
    ]

    show(page, server, keys["viewer"], "token", token)
    assert page.locator("#graph canvas").count() >= 1
    view = drawn(page)
    direct = [hop(e) for e in view["edges"] if "transitive" not in e["classes"]]
    assert sorted(direct) == sorted(api_hops(graph))
    assert sorted(hop(e) for e in view["edges"] if "transitive" in e["classes"]) == sorted(
        transitive
    )
    nodes = {n["id"] for n in view["nodes"]}
    assert {c["target"] for c in blast["breakdown"]} <= nodes
    assert {n["data"]["id"] for n in graph["elements"]["nodes"]} <= nodes
    privileges = {"read", "write", "admin"}
    assert all(len(privileges & set(e["classes"])) == 1 for e in view["edges"])
    score = blast["score"]
    shown = str(int(score)) if score == int(score) else f"{score:.1f}"  # as ui.js writes it
    assert f"blast radius {shown}:" in (page.text_content("#summary") or "")
    assert page.locator("#table tbody tr").count() == len(blast["breakdown"])

    colours = screenshot(page, tmp_path / "token.png").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50


@browser_only
def test_trace_view_draws_the_chain(
    page: Page, server: str, api: httpx.Client, keys: dict[str, str]
) -> None:
    busiest = api.post(
        "/v1/query",
        json={
            "sql": "SELECT trace_id FROM events WHERE trace_id IS NOT NULL GROUP BY trace_id"
            " ORDER BY count(DISTINCT token_id) DESC, count(*) DESC, trace_id LIMIT 1"
        },
    )
    assert busiest.status_code == 200, busiest.text
    trace = busiest.json()["rows"][0][0]
    chain = api.get(f"/v1/chains/{trace}").json()

    show(page, server, keys["viewer"], "trace", trace)
    view = drawn(page)
    assert {n["id"] for n in view["nodes"]} == set(chain["services"])
    assert sorted(hop(e) for e in view["edges"]) == sorted(
        (s["token_id"], s["source"], s["target"], s["operation"]) for s in chain["spans"]
    )
    # One colour per token, so the token switches show.
    colour_of = {e["token"]: e["colour"] for e in view["edges"]}
    assert len(set(colour_of.values())) == min(len(chain["tokens"]), 8) > 1
    legend = page.text_content("#legend") or ""
    assert all(t in legend for t in chain["tokens"])
    assert page.locator("#table tbody tr").count() == len(chain["spans"])


@browser_only
def test_deep_links_and_errors(
    page: Page, server: str, api: httpx.Client, keys: dict[str, str]
) -> None:
    alert_id = api.get("/v1/alerts", params={"limit": 1}).json()["data"][0]["alert_id"]
    key = keys["viewer"]

    # A link without a key in the tab asks for one; the id is filled in from the link.
    page.goto(f"{server}/ui#token=no-such-token")
    page.wait_for_selector("body[data-state=error]")
    assert page.input_value("#subject") == "no-such-token"
    assert page.input_value("#kind") == "token"
    assert "enter the API key" in (page.text_content("#error") or "")

    page.fill("#key", "tt_wrong_key")
    page.click("#show")
    page.wait_for_selector("body[data-state=error]")
    assert "401" in (page.text_content("#error") or "")

    page.fill("#key", key)
    page.click("#show")
    page.wait_for_selector("body[data-state=error]")
    error = page.text_content("#error") or ""
    assert "404" in error and "no-such-token" in error and "\n" not in error
    assert page.evaluate("() => tt_cy.elements().length") == 0

    # Following a link in the same tab (the key kept in sessionStorage) shows it at once, and so
    # does a reload; the key is never part of the URL.
    page.goto(f"{server}/ui#alert={alert_id}")
    settled(page)
    assert page.input_value("#kind") == "alert"
    page.reload()
    settled(page)
    assert page.evaluate("() => tt_cy.nodes().length") > 0
    assert page.url.endswith(f"/ui#alert={alert_id}")
    assert key not in page.url


def test_page_and_files_come_from_the_package_under_a_strict_csp(client: TestClient) -> None:
    page = client.get("/ui")  # no key needed for the page itself
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CSP
    directives = dict(d.split(" ", 1) for d in CSP.split("; "))
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert "unsafe" not in CSP

    html = page.text
    # No inline script: every <script> has a src and nothing inside.
    assert re.findall(r"<script\b[^>]*>(.*?)</script>", html, re.S) == ["", ""]
    linked = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sorted(linked) == sorted(
        f"/ui/static/{name}" for name in ASSETS if name != "cytoscape.LICENSE"
    )

    packaged = resources.files("tokentrail.api") / "static"
    for name in ASSETS:
        served = client.get(f"/ui/static/{name}")
        assert served.status_code == 200, name
        assert served.headers["content-security-policy"] == CSP
        assert served.headers["x-content-type-options"] == "nosniff"
        assert served.content == (packaged / name).read_bytes()
    assert "Cytoscape Consortium" in client.get("/ui/static/cytoscape.LICENSE").text

    # Our own page, script and styles name no other host: nothing is loaded from a CDN.
    for name in ("ui.html", "ui.js", "ui.css"):
        assert not re.search(r"https?://", (packaged / name).read_text()), name

    for missing in ("nope.js", "README.md", "..%2Froutes%2Fui.py", "ui.html"):
        assert client.get(f"/ui/static/{missing}").status_code == 404, missing
