"""Graph results are msgspec structs: encode them with msgspec and publish msgspec's own JSON
Schema for them in the OpenAPI document, rather than mirroring every struct in pydantic."""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi.responses import JSONResponse

REF = "#/components/schemas/{name}"


class MsgspecJSON(JSONResponse):
    """A JSON response encoded by msgspec (structs, datetimes as RFC 3339)."""

    def render(self, content: Any) -> bytes:
        return msgspec.json.encode(content)


def schema_of(kind: type[Any]) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route returning `kind`: its schema by reference."""
    (schema,), _ = msgspec.json.schema_components([kind], ref_template=REF)
    return {200: {"content": {"application/json": {"schema": schema}}}}


def components(kinds: list[type[Any]]) -> dict[str, Any]:
    """The component schemas the given types need, to merge into the OpenAPI document."""
    _, found = msgspec.json.schema_components(kinds, ref_template=REF)
    return found
