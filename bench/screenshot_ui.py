"""Regenerate docs/img/webview.png: the web view showing an alert's evidence path.

Simulates a day (seed 7), ingests it, creates a viewer key and serves the API on a free loopback
port with the real CLI, then opens `/ui#alert=<the credential pivot>` in Debian's headless
Chromium (`apt-get install chromium`; Playwright drives it, nothing is downloaded).

    .venv/bin/python bench/screenshot_ui.py [--out docs/img/webview.png] [--kind token]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The console script installed beside this interpreter (the package has no __main__).
TOKENTRAIL = [str(Path(sys.executable).parent / "tokentrail")]


def run(*args: str) -> str:
    done = subprocess.run([*TOKENTRAIL, *args], check=True, capture_output=True, text=True)
    return done.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def get(url: str, key: str) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def wait_ready(base: str, server: subprocess.Popen[str]) -> None:
    for _ in range(300):  # 30 s
        if server.poll() is not None:
            raise SystemExit(f"the server stopped: {server.stderr.read() if server.stderr else ''}")
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=1):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    raise SystemExit("the server did not become ready")


def subject(base: str, key: str, kind: str) -> str:
    """The credential pivot alert (or its token): the evidence path crosses three tokens."""
    alerts = get(f"{base}/v1/alerts?detector=credential_pivot", key)["data"]
    if not alerts:
        raise SystemExit("the simulated day has no credential pivot alert")
    return str(alerts[0]["alert_id"] if kind == "alert" else alerts[0]["token_id"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "webview.png")
    parser.add_argument("--kind", choices=["alert", "token"], default="alert")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tt-ui-") as tmp:
        work = Path(tmp)
        db = str(work / "audit.duckdb")
        run("simulate", "--out", str(work), "--days", "1", "--scale", "0.2", "--seed", "7")
        catalog = str(work / "catalog.toml")
        run("ingest", str(work / "events.jsonl"), "--db", db, "--catalog", catalog)
        key = run("keys", "create", "--db", db, "--role", "viewer", "--name", "screenshot")
        key = key.strip().splitlines()[-1].strip()
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [*TOKENTRAIL, "serve", "--db", db, "--host", "127.0.0.1", "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_ready(base, server)
            shown = subject(base, key, args.kind)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(
                    executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
                )
                page = browser.new_page(viewport={"width": 1440, "height": 780})
                page.goto(f"{base}/ui#{args.kind}={shown}")
                page.fill("#key", key)
                page.click("#show")
                # A selector, not a predicate: the page's CSP refuses the eval a predicate needs.
                page.wait_for_selector("body[data-state=ready]", timeout=30_000)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                # Down to the end of the content, not the empty viewport below it.
                boxes = [page.locator(s).bounding_box() for s in ("#legend", "#details")]
                bottom = max(b["y"] + b["height"] for b in boxes if b is not None) + 14
                page.screenshot(
                    path=str(args.out), clip={"x": 0, "y": 0, "width": 1440, "height": bottom}
                )
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
