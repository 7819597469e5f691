"""Graph results are msgspec structs: encode them with msgspec and publish msgspec's own JSON
Schema for them in the OpenAPI document, rather than mirroring every struct in pydantic."""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi.responses import JSONResponse
from pydantic import BaseModel

REF = "#/components/schemas/{name}"


class MsgspecJSON(JSONResponse):
    """A JSON response encoded by msgspec (structs, datetimes as RFC 3339)."""

    def render(self, content: Any) -> bytes:
        return msgspec.json.encode(content)


class ModelJSON(JSONResponse):
    """A pydantic model encoded in the route's own thread. Returned as a response, FastAPI takes
    it as it is; a returned model would be validated again and encoded after a second hop to
    the thread pool, where under load it waits in line once more (`response_model=` still
    documents the schema)."""

    def render(self, content: Any) -> bytes:
        assert isinstance(content, BaseModel)
        return content.model_dump_json().encode()


class JSON(JSONResponse):
    """JSON encoded already (an answer kept by tokentrail.api.reads)."""

    def render(self, content: Any) -> bytes:
        assert isinstance(content, bytes)
        return content


def schema_of(kind: type[Any]) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route returning `kind`: its schema by reference."""
    (schema,), _ = msgspec.json.schema_components([kind], ref_template=REF)
    return {200: {"content": {"application/json": {"schema": schema}}}}


def components(kinds: list[type[Any]]) -> dict[str, Any]:
    """The component schemas the given types need, to merge into the OpenAPI document."""
    _, found = msgspec.json.schema_components(kinds, ref_template=REF)
    return found
