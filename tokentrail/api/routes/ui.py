"""The web view: the page at `/ui` and its files at `/ui/static/<name>`, all read from the
package (`tokentrail/api/static`: the page, its script and styles, and cytoscape.js), so it
works offline and loads nothing from other hosts. No key is needed to load them; the page asks
for one and sends it to the API as a bearer token."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Final

from fastapi import APIRouter, HTTPException, Response, status

router = APIRouter(tags=["ui"], include_in_schema=False)

# Scripts, styles and requests from this origin only, no inline script or style: a string from
# the API that slipped into the page as markup could not run.
CSP: Final = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidate, so an upgraded package never runs with a cached older script.
    "Cache-Control": "no-cache",
}

# What /ui/static serves, by name: nothing else in the folder, or outside it, can be asked for.
ASSETS: Final = {
    "ui.js": "text/javascript; charset=utf-8",
    "ui.css": "text/css; charset=utf-8",
    "cytoscape.min.js": "text/javascript; charset=utf-8",
    "cytoscape.LICENSE": "text/plain; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}


@cache
def asset(name: str) -> bytes:
    """One file of the web view, as packaged."""
    return (resources.files("tokentrail.api") / "static" / name).read_bytes()


@router.get("/ui")
def page() -> Response:
    """The page: pick alert, token or trace, paste its id (or link to `/ui#alert=ID`)."""
    return Response(asset("ui.html"), media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get("/ui/static/{name}")
def static(name: str) -> Response:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no file {name!r}")
    return Response(asset(name), media_type=media_type, headers=HEADERS)
