"""Kept answers given before routing: the cheapest way through the event loop.

Under load the event loop is one thread for every request, and FastAPI spends ~2 ms of it per
request on routing, dependencies and parameters before a route runs (py-spy, docs/
PERFORMANCE.md). An answer kept in memory (tokentrail.api.reads) needs none of that. This
middleware answers `GET /v1/chains/{trace_id}`, `GET /v1/alerts/{alert_id}` and
`GET /v1/tokens/{token_id}/blast-radius` from the kept answers when the caller's key is one
the key cache holds as valid and its role may read; anything else (no key, a key to check
again, a refused role, an answer not kept, `Cache-Control: no-cache`, another path) goes on to
the app unchanged, which decides as it always does. The request log and metrics wrap this
middleware, so a request answered here is logged and counted like any other.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from tokentrail.api.auth import Principal, Role
from tokentrail.api.reads import fresh_asked
from tokentrail.api.state import ApiState

# (path prefix, suffix) -> the read model's kind (as the routes key their answers), the route's
# template.
_KEPT = {
    ("/v1/chains/", ""): ("chain", "/v1/chains/{trace_id}"),
    ("/v1/alerts/", ""): ("alert", "/v1/alerts/{alert_id}"),
    ("/v1/tokens/", "/blast-radius"): ("blast-radius", "/v1/tokens/{token_id}/blast-radius"),
}
_HEADERS = [(b"content-type", b"application/json")]
# Scope key for the route template of a request answered here (the router sets `route`).
ROUTE_TEMPLATE = "tokentrail.route_template"


class KeptAnswers:
    """ASGI middleware answering kept chain and alert reads of viewers (and above)."""

    def __init__(self, app: ASGIApp, state: ApiState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            body = self._kept(scope)
            if body is not None:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [*_HEADERS, (b"content-length", str(len(body)).encode())],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    def _kept(self, scope: Scope) -> bytes | None:
        path: str = scope["path"]
        found = next(
            (
                (path[len(prefix) : len(path) - len(suffix)], read)
                for (prefix, suffix), read in _KEPT.items()
                if path.startswith(prefix) and path.endswith(suffix)
            ),
            None,
        )
        if found is None:
            return None
        ident, (kind, template) = found
        if not ident or "/" in ident:  # e.g. /v1/alerts/{id}/containment: the app's
            return None
        if fresh_asked(scope["headers"]):
            return None
        principal = self._viewer(scope)
        if principal is None:
            return None
        body = self.state.reads.get((kind, ident), count_miss=False)  # the route counts it
        if body is not None:
            scope.setdefault("state", {})["principal"] = principal  # for the request log
            scope[ROUTE_TEMPLATE] = template
        return body

    def _viewer(self, scope: Scope) -> Principal | None:
        """The caller if the key cache holds their key as valid and they may read; else None
        (the app then authenticates as usual: 401, 403, or a check against the store)."""
        header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        if header is None:
            return None
        scheme, _, key = header.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not key:
            return None
        principal = self.state.keys.cached(key)
        if principal is None or not principal.role.allows(Role.viewer):
            return None
        return principal
